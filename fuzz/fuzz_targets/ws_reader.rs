//! What a viewer can send a gateway over a WebSocket: arbitrary bytes, split anywhere, through
//! the frame reader, with and without permessage-deflate (so the inflate path, too). Nothing may
//! panic; every refusal carries one of the documented close codes; the reader never holds more
//! than one frame's worth of bytes; compressed messages never inflate past the cap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::ws::ClientReader;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut reader = ClientReader::new(4096, flags & 1 == 1);
    let step = 1 + usize::from(flags >> 1);
    for chunk in rest.chunks(step) {
        match reader.push(chunk) {
            Ok(_) => {}
            Err(e) => {
                assert!([1002, 1007, 1009].contains(&e.close_code()), "{e:?}");
                return;
            }
        }
    }
});
