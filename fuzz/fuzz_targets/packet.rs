//! Every datagram a game server or client reads goes through `Packet::decode`; a decoded
//! snapshot is applied to a baseline. Neither may panic, and what decodes must re-encode to
//! something that decodes to the same packet.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::net::{EntityState, Packet};

fuzz_target!(|data: &[u8]| {
    let Ok(p) = Packet::decode(data) else { return };
    if let Packet::Server(s) = &p {
        let base: Vec<(u16, EntityState)> = (0..20)
            .map(|i| (i * 3, EntityState { x: 100 * i, y: 50, angle: 1, hp: 100, flags: 1, score: i }))
            .collect();
        let _ = s.snapshot.apply(&base);
        let _ = s.snapshot.apply(&[]);
    }
    let again = Packet::decode(&p.encode()).expect("a decoded packet re-encodes validly");
    assert_eq!(again, p);
});
