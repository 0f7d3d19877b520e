//! Write tinywasm-wasi modules in Rust: the host imports as safe functions, the HTTP request
//! and answer as types (no CBOR by hand), state handoff with a version tag, and macros that
//! write the `extern "C"` exports (docs/abi.md is the contract).
//!
//! ```ignore
//! tinywasm::init!(|| tinywasm::subscribe("ping"));
//! tinywasm::on_topic_message!(|_topic: &str, payload: &[u8]| tinywasm::publish("pong", payload));
//! ```
//!
//! Build for `wasm32-wasi` (`wasm32-wasip1` on newer Rust) as a `cdylib`, exporting libc's
//! allocator (`tinywasm build` does this):
//!
//! ```text
//! rustc --target wasm32-wasi --crate-type cdylib -O \
//!     -C link-arg=--export=malloc -C link-arg=--export=free ...
//! ```
//!
//! A Rust `#[no_mangle] fn malloc` or `fn free` would clash with wasi-libc's own
//! (`duplicate symbol: malloc`); Rust's standard library allocates with wasi-libc's malloc
//! on this target, so exporting those two is exactly the allocator the host needs.

pub mod http;
pub mod state;

mod host {
    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn publish(topic: *const u8, topic_len: usize, payload: *const u8, payload_len: usize);
        pub fn subscribe(topic: *const u8, topic_len: usize, handler_idx: u32);
        pub fn unsubscribe(topic: *const u8, topic_len: usize);
        pub fn ws_broadcast(
            topic: *const u8,
            topic_len: usize,
            payload: *const u8,
            payload_len: usize,
        );
        pub fn log(msg: *const u8, msg_len: usize);
        pub fn message_sender(buf: *mut u8, buf_len: usize) -> i32; // version 2
    }
}

/// Guest interface version this SDK follows.
pub const ABI_VERSION: u32 = 2;

/// Publish `payload` on the concrete bus topic `topic` (no wildcards).
pub fn publish(topic: &str, payload: &[u8]) {
    unsafe { host::publish(topic.as_ptr(), topic.len(), payload.as_ptr(), payload.len()) }
}

/// Subscribe to a topic pattern (`*` one token, `>` the rest). Twice is a no-op.
pub fn subscribe(pattern: &str) {
    unsafe { host::subscribe(pattern.as_ptr(), pattern.len(), 0) }
}

/// Remove the subscription to exactly this pattern.
pub fn unsubscribe(pattern: &str) {
    unsafe { host::unsubscribe(pattern.as_ptr(), pattern.len()) }
}

/// Send `payload` as one binary frame to every WebSocket client on `topic`.
pub fn ws_broadcast(topic: &str, payload: &[u8]) {
    unsafe { host::ws_broadcast(topic.as_ptr(), topic.len(), payload.as_ptr(), payload.len()) }
}

/// Write one line to the server log, tagged with the module name.
pub fn log(line: &str) {
    unsafe { host::log(line.as_ptr(), line.len()) }
}

/// Version 2: who published the message being delivered (`user:<sub>`, `conn:c<N>`,
/// `module:<name>`), or `None` outside a delivery and for the server's own messages.
/// The host sets it: a publisher cannot forge it. A module that calls it needs a
/// version-2 server; one that does not imports nothing new.
pub fn message_sender() -> Option<String> {
    let mut buf = vec![0u8; 256];
    let mut n = unsafe { host::message_sender(buf.as_mut_ptr(), buf.len()) };
    if n < 0 {
        return None;
    }
    if n as usize > buf.len() {
        buf = vec![0u8; n as usize];
        n = unsafe { host::message_sender(buf.as_mut_ptr(), buf.len()) };
        if n < 0 || n as usize > buf.len() {
            return None;
        }
    }
    buf.truncate(n as usize);
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// A block as one i64 result: pointer in the high 32 bits, length in the low 32.
pub fn pack(ptr: *const u8, len: usize) -> u64 {
    ((ptr as usize as u64) << 32) | (len as u32 as u64)
}

/// The bytes the host placed at `ptr` for this call (valid only during the call).
///
/// # Safety
/// `ptr`/`len` must be what the host passed to the current export.
pub unsafe fn bytes<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if len == 0 {
        &[]
    } else {
        core::slice::from_raw_parts(ptr, len)
    }
}

/// Export `init`: `tinywasm::init!(|| { ... })` or `tinywasm::init!(setup)`.
#[macro_export]
macro_rules! init {
    ($f:expr) => {
        #[no_mangle]
        pub extern "C" fn init() {
            ($f)()
        }
    };
}

/// Export `on_topic_message`: the closure gets the topic and the payload.
#[macro_export]
macro_rules! on_topic_message {
    ($f:expr) => {
        #[no_mangle]
        pub extern "C" fn on_topic_message(tp: *const u8, tl: usize, pp: *const u8, pl: usize) {
            let topic = unsafe { $crate::bytes(tp, tl) };
            let payload = unsafe { $crate::bytes(pp, pl) };
            ($f)(core::str::from_utf8(topic).unwrap_or(""), payload)
        }
    };
}

/// Export `on_message`: the closure gets the payload (the reference's handler).
#[macro_export]
macro_rules! on_message {
    ($f:expr) => {
        #[no_mangle]
        pub extern "C" fn on_message(pp: *const u8, pl: usize) {
            ($f)(unsafe { $crate::bytes(pp, pl) })
        }
    };
}

/// Export `drain`: the closure returns milliseconds to wait, 0 when idle.
#[macro_export]
macro_rules! drain {
    ($f:expr) => {
        #[no_mangle]
        pub extern "C" fn drain() -> i32 {
            ($f)()
        }
    };
}

/// Export `handle` (compat HTTP): the closure gets method and path and returns the body
/// text, or `None` for no answer (204).
#[macro_export]
macro_rules! handle {
    ($f:expr) => {
        #[no_mangle]
        pub extern "C" fn handle(rp: *const u8, rl: usize) -> *const u8 {
            let request = unsafe { $crate::bytes(rp, rl) };
            let (method, path) = $crate::http::compat_request(request);
            $crate::http::compat_answer(($f)(method, path))
        }
    };
}

/// Export `handle_http` (full HTTP): the closure gets a `http::Request` and returns a
/// `http::Answer` (`Answer::respond(..)`, `Answer::next(..)` or `Answer::None`).
#[macro_export]
macro_rules! handle_http {
    ($f:expr) => {
        #[no_mangle]
        pub extern "C" fn handle_http(rp: *const u8, rl: usize) -> u64 {
            let request = unsafe { $crate::bytes(rp, rl) };
            match $crate::http::Request::parse(request) {
                Some(request) => $crate::http::answer(($f)(&request)),
                None => $crate::http::answer($crate::http::Answer::text(
                    400,
                    "unreadable request\n",
                )),
            }
        }
    };
}

/// Export `save_state`: the closure returns `(version, bytes)`.
#[macro_export]
macro_rules! save_state {
    ($f:expr) => {
        #[no_mangle]
        pub extern "C" fn save_state() -> u64 {
            let (version, data): (u32, Vec<u8>) = ($f)();
            $crate::state::save(version, &data)
        }
    };
}

/// Export `restore_state`: the closure gets `(version, bytes)` of the old version's state
/// (`version` is `None` if the bytes carry no tag) and returns whether it took them; the
/// host logs state it did not take as dropped.
#[macro_export]
macro_rules! restore_state {
    ($f:expr) => {
        #[no_mangle]
        pub extern "C" fn restore_state(sp: *const u8, sl: usize) -> i32 {
            let (version, data) = $crate::state::open(unsafe { $crate::bytes(sp, sl) });
            let taken: bool = ($f)(version, data);
            if taken {
                0
            } else {
                1
            }
        }
    };
}
