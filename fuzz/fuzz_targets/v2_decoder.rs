//! What a v2 client decodes: arbitrary JSON messages (snapshots, deltas, events) through the
//! Rust v2 decoder the tests and the load generator use. Errors are fine; panics are not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::feed::v2::V2View;

fuzz_target!(|data: &[u8]| {
    let mut view = V2View::default();
    for line in data.split(|b| *b == b'\n') {
        if let Ok(msg) = serde_json::from_slice::<serde_json::Value>(line) {
            let _ = view.apply(&msg);
        }
    }
});
