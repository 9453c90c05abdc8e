//! Connect tokens (UDP handshake) and REST bearer tokens: arbitrary strings must be refused
//! without panicking, and never verify without the key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::{Claims, ConnectClaims, TokenSigner};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let rest = TokenSigner::new(b"fuzz-secret-0123456789abcdef");
    let connect = rest.derive("connect");
    assert!(rest.verify_as::<Claims>(s, 0).is_err());
    assert!(connect.verify_as::<ConnectClaims>(s, 0).is_err());
});
