//! __NAME__: a tinywasm module in Rust. Every message on topic "__NAME__" goes back to the
//! browsers watching that topic, numbered. Edit and save: `tinywasm dev` rebuilds it and
//! swaps it in; the count survives the swap. The SDK (crate `tinywasm`) writes the exports.

use std::sync::atomic::{AtomicU32, Ordering};

static COUNT: AtomicU32 = AtomicU32::new(0);

tinywasm::init!(|| {
    tinywasm::subscribe("__NAME__");
    tinywasm::log("__NAME__ started");
});

tinywasm::on_message!(|payload: &[u8]| {
    let count = COUNT.fetch_add(1, Ordering::Relaxed) + 1;
    let mut line = format!("#{}: ", count).into_bytes();
    line.extend_from_slice(payload);
    tinywasm::ws_broadcast("__NAME__", &line);
});

// The count, handed to the next version on a hot swap (version tag 1).
tinywasm::save_state!(|| (1, COUNT.load(Ordering::Relaxed).to_le_bytes().to_vec()));

tinywasm::restore_state!(|version: Option<u32>, data: &[u8]| {
    match (version, <[u8; 4]>::try_from(data)) {
        (Some(1), Ok(bytes)) => {
            COUNT.store(u32::from_le_bytes(bytes), Ordering::Relaxed);
            true
        }
        _ => false, // another version's layout: the host logs it; start afresh
    }
});
