//! State handoff across a hot swap: the SDK state envelope, the same in every language's
//! SDK (the version tag as 4 bytes little-endian, then the data).

use std::cell::RefCell;

thread_local! {
    static SAVED: RefCell<Vec<u8>> = RefCell::new(Vec::new());
}

/// `save_state`'s result for `data` tagged `version` (the block lives until the next call).
pub fn save(version: u32, data: &[u8]) -> u64 {
    SAVED.with(|saved| {
        let mut saved = saved.borrow_mut();
        saved.clear();
        saved.extend_from_slice(&version.to_le_bytes());
        saved.extend_from_slice(data);
        crate::pack(saved.as_ptr(), saved.len())
    })
}

/// The version tag and the data of `restore_state`'s bytes (`None`: too short for a tag).
pub fn open(bytes: &[u8]) -> (Option<u32>, &[u8]) {
    if bytes.len() < 4 {
        return (None, bytes);
    }
    let tag = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    (Some(tag), &bytes[4..])
}
