//! counter: counts the messages on counter.inc, publishes each new count on counter.value,
//! answers GET /m/counter (compat mode) with the count, and hands the count to its next
//! version across a hot swap (state version 1: the count as 8 bytes little-endian).

use std::sync::atomic::{AtomicU64, Ordering};

const STATE_VERSION: u32 = 1;
static COUNT: AtomicU64 = AtomicU64::new(0);

tinywasm::init!(|| {
    tinywasm::subscribe("counter.inc");
    tinywasm::log("rust counter ready");
});

tinywasm::on_message!(|_payload: &[u8]| {
    let count = COUNT.fetch_add(1, Ordering::Relaxed) + 1;
    tinywasm::publish("counter.value", count.to_string().as_bytes());
});

tinywasm::handle!(|_method: &str, _path: &str| Some(COUNT.load(Ordering::Relaxed).to_string()));

tinywasm::save_state!(|| (STATE_VERSION, COUNT.load(Ordering::Relaxed).to_le_bytes().to_vec()));

tinywasm::restore_state!(|version: Option<u32>, data: &[u8]| {
    match (version, <[u8; 8]>::try_from(data)) {
        (Some(STATE_VERSION), Ok(bytes)) => {
            COUNT.store(u64::from_le_bytes(bytes), Ordering::Relaxed);
            true
        }
        _ => false, // another layout: the host logs it, we start from 0
    }
});
