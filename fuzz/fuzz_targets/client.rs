//! A client fed hostile datagrams (a spoofed or broken server) keeps its state machine sane:
//! errors, never panics.
#![no_main]

use game_client::{ClientCore, Intent};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut c = ClientCore::new("t".into(), 100);
    let mut now = 0;
    for chunk in data.split(|b| *b == 0xff) {
        now += 33;
        let _ = c.on_datagram(chunk, now);
        let _ = c.input_packet(Intent::default(), now);
        let _ = c.interpolated(now);
    }
});
