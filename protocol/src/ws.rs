//! The server side of WebSocket (RFC 6455) and permessage-deflate (RFC 7692), as pure codecs:
//! the opening handshake's answers, frames built once and shared as bytes, and an incremental
//! reader of what a viewer sends.
//!
//! The gateway writes pre-built frames (header and payload encoded once per match message,
//! compressed once when the viewer negotiated deflate) straight to the socket, so nothing here
//! is per viewer but the reader, which holds no buffer while the viewer is idle.
//!
//! Viewers only ever send pings, pongs, a close and (ignored) small data messages: the reader
//! checks each against the contract (masked, a known opcode, at most `max_message` bytes, also
//! once inflated, valid UTF-8 for text) and says how to close when it is not.

use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use sha1::{Digest, Sha1};

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;
const RSV2_3: u8 = 0x30;
const MASKED: u8 = 0x80;

/// What a `Sec-WebSocket-Key` is answered with (`Sec-WebSocket-Accept`).
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.trim().as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// The header of a server frame (unmasked, final) of `len` payload bytes.
fn header(opcode: u8, len: usize, compressed: bool) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = FIN | opcode | if compressed { RSV1 } else { 0 };
    let n = if len < 126 {
        h[1] = len as u8;
        2
    } else if len <= u16::MAX as usize {
        h[1] = 126;
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    (h, n)
}

/// A complete server frame: header and payload in one buffer, built once and written to every
/// viewer as is. `compressed` sets RSV1 (the payload is a permessage-deflate message).
pub fn server_frame(opcode: u8, payload: &[u8], compressed: bool) -> Bytes {
    let (h, n) = header(opcode, payload.len(), compressed);
    let mut out = BytesMut::with_capacity(n + payload.len());
    out.put_slice(&h[..n]);
    out.put_slice(payload);
    out.freeze()
}

/// The length of a server frame's header, so the payload can be sliced back out of it.
pub fn header_len(payload_len: usize) -> usize {
    header(OP_TEXT, payload_len, false).1
}

/// A close frame with a status code and a reason (cut to what a control frame holds).
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut payload = code.to_be_bytes().to_vec();
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    server_frame(OP_CLOSE, &payload, false)
}

/// Compresses one message for permessage-deflate without context takeover: raw DEFLATE ending
/// in an empty stored block, whose last four bytes (`00 00 ff ff`) are left off (RFC 7692,
/// 7.2.1). Each message stands alone, so every viewer can be sent the same bytes.
pub fn deflate_message(payload: &[u8]) -> Vec<u8> {
    thread_local! {
        // One compressor per thread, reset for every message: a fresh one allocates and zeroes
        // its ~300 KB of tables each time (page faults on every message of every match).
        static COMPRESSOR: std::cell::RefCell<flate2::Compress> =
            std::cell::RefCell::new(flate2::Compress::new(flate2::Compression::new(6), false));
    }
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        // A reset compressor starts with no history: the message stands alone.
        c.reset();
        let mut out = Vec::with_capacity(payload.len() / 2 + 64);
        loop {
            let consumed = c.total_in() as usize;
            c.compress_vec(&payload[consumed..], &mut out, flate2::FlushCompress::Sync)
                .expect("deflating to memory");
            // All taken and the sync flush fitted (room left over): the message is complete.
            if c.total_in() as usize == payload.len() && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity().max(64));
        }
        if out.ends_with(&[0, 0, 0xff, 0xff]) {
            out.truncate(out.len() - 4);
        }
        out
    })
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    #[error("message inflates past {0} bytes")]
    TooLarge(usize),
    #[error("malformed compressed message")]
    Malformed,
}

/// Inflates one permessage-deflate message (a fresh context: the server asks clients for no
/// context takeover), refusing to produce more than `limit` bytes.
pub fn inflate_message(payload: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
    let mut inflater = flate2::Decompress::new(false);
    let mut input = Vec::with_capacity(payload.len() + 4);
    input.extend_from_slice(payload);
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out: Vec<u8> = Vec::with_capacity((payload.len() * 4).clamp(64, limit + 1));
    loop {
        let consumed = inflater.total_in() as usize;
        // Room to grow, at most one byte more than allowed: producing that byte proves the
        // message is too large. Grown as needed, so a large limit costs nothing up front.
        if out.len() == out.capacity() {
            let room = out.capacity().max(4096).min(limit + 1 - out.len());
            out.reserve_exact(room);
        }
        let before = out.len();
        let status = inflater
            .decompress_vec(&input[consumed..], &mut out, flate2::FlushDecompress::Sync)
            .map_err(|_| InflateError::Malformed)?;
        if out.len() > limit {
            return Err(InflateError::TooLarge(limit));
        }
        if status == flate2::Status::StreamEnd {
            return Ok(out);
        }
        let all_in = inflater.total_in() as usize == input.len();
        let room_left = out.len() < out.capacity();
        // Everything read and room to spare: nothing more will come out.
        if all_in && room_left {
            return Ok(out);
        }
        if room_left && out.len() == before && inflater.total_in() as usize == consumed {
            // No progress with room and input left: the stream is cut or corrupt.
            return Err(InflateError::Malformed);
        }
    }
}

/// What the server answers to a permessage-deflate offer it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeflateAccepted {
    /// The `Sec-WebSocket-Extensions` value of the 101 response.
    pub response: String,
}

/// Picks the first permessage-deflate offer in the `Sec-WebSocket-Extensions` values the server
/// can honour: every message compressed on its own (`server_no_context_takeover`, which the
/// server may add unasked), the server's full 32 KiB window. Offers that insist on a smaller
/// server window, or carry unknown or malformed parameters, are passed over; `None` when no
/// offer fits (the connection is then uncompressed).
pub fn negotiate_deflate<'a>(offers: impl IntoIterator<Item = &'a str>) -> Option<DeflateAccepted> {
    for offer in offers.into_iter().flat_map(|v| v.split(',')) {
        let mut params = offer.split(';').map(str::trim);
        if !params
            .next()
            .is_some_and(|n| n.eq_ignore_ascii_case("permessage-deflate"))
        {
            continue;
        }
        let mut client_no_context = false;
        let mut acceptable = true;
        for p in params {
            let (name, value) = match p.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                None => (p, None),
            };
            match (name.to_ascii_lowercase().as_str(), value) {
                ("server_no_context_takeover", None) => {}
                ("client_no_context_takeover", None) => client_no_context = true,
                // The client may shrink its own window; our inflater takes any window.
                ("client_max_window_bits", None) => {}
                ("client_max_window_bits", Some(v))
                    if v.parse::<u8>().is_ok_and(|b| (8..=15).contains(&b)) => {}
                ("server_max_window_bits", Some("15")) => {}
                _ => acceptable = false,
            }
        }
        if acceptable {
            let mut response = "permessage-deflate; server_no_context_takeover".to_string();
            if client_no_context {
                response.push_str("; client_no_context_takeover");
            }
            return Some(DeflateAccepted { response });
        }
    }
    None
}

/// Why the server closes a viewer's connection over what it sent, as a close code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// 1009: a message (or a frame announcing one) larger than allowed, also once inflated.
    #[error("message too large")]
    TooLarge,
    /// 1007: text that is not UTF-8, or a compressed message that does not inflate.
    #[error("{0}")]
    BadPayload(&'static str),
    /// 1002: anything else the protocol forbids.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
}

impl ReadError {
    pub fn close_code(&self) -> u16 {
        match self {
            ReadError::TooLarge => 1009,
            ReadError::BadPayload(_) => 1007,
            ReadError::Protocol(_) => 1002,
        }
    }
}

/// What a viewer sent, once a frame is complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// Answer with a pong carrying the same bytes.
    Ping(Bytes),
    Pong,
    /// The viewer closes (with its status code, if it gave one).
    Close(Option<u16>),
    /// A complete data message, checked and ignored (viewers cannot publish).
    Message,
}

/// A data message being received across frames.
#[derive(Debug)]
struct Partial {
    text: bool,
    compressed: bool,
    len: usize,
    /// Kept only when it must be checked whole (text, or compressed).
    body: Option<Vec<u8>>,
}

/// Reads what a viewer sends, incrementally: feed it what the socket returned, take the events.
/// It buffers only an incomplete frame (at most a header and `max_message` bytes) and drops the
/// buffer once it is drained, so an idle viewer costs nothing here.
#[derive(Debug)]
pub struct ClientReader {
    max_message: usize,
    deflate: bool,
    buf: Vec<u8>,
    partial: Option<Partial>,
}

impl ClientReader {
    /// `deflate`: the connection negotiated permessage-deflate (RSV1 allowed on data messages).
    pub fn new(max_message: usize, deflate: bool) -> ClientReader {
        ClientReader {
            max_message,
            deflate,
            buf: Vec::new(),
            partial: None,
        }
    }

    /// Takes bytes read from the socket; returns the events of every frame they complete, or
    /// the error that must close the connection.
    pub fn push(&mut self, input: &[u8]) -> Result<Vec<ClientEvent>, ReadError> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.extend_from_slice(input);
        let mut events = Vec::new();
        let mut at = 0;
        while let Some((event, used)) = self.frame(&buf[at..])? {
            at += used;
            if let Some(e) = event {
                let close = matches!(e, ClientEvent::Close(_));
                events.push(e);
                if close {
                    break;
                }
            }
        }
        // Nothing pending leaves `self.buf` empty and unallocated while the viewer is idle.
        if at < buf.len() {
            buf.drain(..at);
            self.buf = buf;
        }
        Ok(events)
    }

    /// Parses one complete frame at the start of `b`: `None` when more bytes are needed.
    #[allow(clippy::type_complexity)]
    fn frame(&mut self, b: &[u8]) -> Result<Option<(Option<ClientEvent>, usize)>, ReadError> {
        if b.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (b[0], b[1]);
        let fin = b0 & FIN != 0;
        let rsv1 = b0 & RSV1 != 0;
        let opcode = b0 & 0x0f;
        if b0 & RSV2_3 != 0 {
            return Err(ReadError::Protocol("reserved bits set"));
        }
        if b1 & MASKED == 0 {
            return Err(ReadError::Protocol("client frames must be masked"));
        }
        let (len, mut at) = match b1 & 0x7f {
            126 => {
                if b.len() < 4 {
                    return Ok(None);
                }
                (u16::from_be_bytes([b[2], b[3]]) as u64, 4)
            }
            127 => {
                if b.len() < 10 {
                    return Ok(None);
                }
                let mut n = [0u8; 8];
                n.copy_from_slice(&b[2..10]);
                let n = u64::from_be_bytes(n);
                // RFC 6455 5.2: the most significant bit of a 64-bit length must be 0.
                if n >> 63 != 0 {
                    return Err(ReadError::Protocol("a frame length past 2^63"));
                }
                (n, 10)
            }
            n => (u64::from(n), 2),
        };
        let control = opcode & 0x8 != 0;
        if control {
            if !fin || len > 125 {
                return Err(ReadError::Protocol("control frames are final and short"));
            }
            if rsv1 {
                return Err(ReadError::Protocol("control frames are never compressed"));
            }
        } else {
            // Refuse a message that would exceed the cap as soon as a header says so.
            let so_far = self.partial.as_ref().map_or(0, |p| p.len) as u64;
            // Saturating: a declared length near 2^63 must not wrap past the cap (the fuzzer
            // found the wrap; release builds would then slice with a wrapped range).
            if so_far.saturating_add(len) > self.max_message as u64 {
                return Err(ReadError::TooLarge);
            }
        }
        let len = len as usize;
        if b.len() < at + 4 + len {
            return Ok(None);
        }
        let mask = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        at += 4;
        let payload: Vec<u8> = b[at..at + len]
            .iter()
            .enumerate()
            .map(|(i, byte)| byte ^ mask[i % 4])
            .collect();
        let used = at + len;
        let event = match opcode {
            OP_PING => Some(ClientEvent::Ping(Bytes::from(payload))),
            OP_PONG => Some(ClientEvent::Pong),
            OP_CLOSE => {
                let code = match payload.len() {
                    0 => None,
                    1 => return Err(ReadError::Protocol("a close payload of one byte")),
                    _ => Some(u16::from_be_bytes([payload[0], payload[1]])),
                };
                if payload.len() > 2 && std::str::from_utf8(&payload[2..]).is_err() {
                    return Err(ReadError::BadPayload("close reason is not UTF-8"));
                }
                Some(ClientEvent::Close(code))
            }
            OP_TEXT | OP_BINARY => {
                if self.partial.is_some() {
                    return Err(ReadError::Protocol("a new message inside a fragmented one"));
                }
                if rsv1 && !self.deflate {
                    return Err(ReadError::Protocol("compressed without permessage-deflate"));
                }
                let text = opcode == OP_TEXT;
                let keep = text || rsv1;
                self.partial = Some(Partial {
                    text,
                    compressed: rsv1,
                    len,
                    body: keep.then_some(payload),
                });
                if fin {
                    self.finish()?;
                    Some(ClientEvent::Message)
                } else {
                    None
                }
            }
            OP_CONTINUATION => {
                if rsv1 {
                    return Err(ReadError::Protocol("RSV1 on a continuation frame"));
                }
                let Some(p) = self.partial.as_mut() else {
                    return Err(ReadError::Protocol("continuation without a message"));
                };
                p.len += len;
                if let Some(body) = p.body.as_mut() {
                    body.extend_from_slice(&payload);
                }
                if fin {
                    self.finish()?;
                    Some(ClientEvent::Message)
                } else {
                    None
                }
            }
            _ => return Err(ReadError::Protocol("unknown opcode")),
        };
        Ok(Some((event, used)))
    }

    /// Checks a complete data message: inflated within the cap, UTF-8 if text.
    fn finish(&mut self) -> Result<(), ReadError> {
        let p = self.partial.take().expect("a message in progress");
        let Some(body) = p.body else {
            return Ok(());
        };
        let body = if p.compressed {
            inflate_message(&body, self.max_message).map_err(|e| match e {
                InflateError::TooLarge(_) => ReadError::TooLarge,
                InflateError::Malformed => ReadError::BadPayload("malformed compressed message"),
            })?
        } else {
            body
        };
        if p.text && std::str::from_utf8(&body).is_err() {
            return Err(ReadError::BadPayload("text is not valid UTF-8"));
        }
        Ok(())
    }
}

/// A client frame as a browser sends it (masked): for tests, fuzzing and the load generator.
pub fn client_frame(
    opcode: u8,
    payload: &[u8],
    fin: bool,
    compressed: bool,
    mask: [u8; 4],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(if fin { FIN } else { 0 } | if compressed { RSV1 } else { 0 } | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(MASKED | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(MASKED | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(MASKED | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Reads one server frame at the start of `b` (a client's view: tests and the load generator):
/// `(opcode, compressed, payload, bytes used)`, or `None` when incomplete.
pub fn read_server_frame(b: &[u8]) -> Option<(u8, bool, &[u8], usize)> {
    if b.len() < 2 {
        return None;
    }
    let (len, at) = match b[1] & 0x7f {
        126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
        127 if b.len() >= 10 => {
            let mut n = [0u8; 8];
            n.copy_from_slice(&b[2..10]);
            (u64::from_be_bytes(n) as usize, 10)
        }
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    if b.len() < at + len {
        return None;
    }
    Some((b[0] & 0x0f, b[0] & RSV1 != 0, &b[at..at + len], at + len))
}

#[cfg(test)]
mod tests {

    /// The fuzzer's find (ws_reader, 2026-12-02): a continuation frame declaring a 64-bit length
    /// that, added to the fragment already held, overflowed the cap check.
    #[test]
    fn fuzz_regression_a_huge_continuation_length_is_refused_not_wrapped() {
        let mut reader = ClientReader::new(4096, false);
        // A non-final text fragment of one byte, masked.
        assert!(reader
            .push(&[0x01, 0x81, 1, 2, 3, 4, b'a' ^ 1])
            .unwrap()
            .is_empty());
        // A continuation declaring 2^64 - 1 bytes, then 2^63 - 1 bytes.
        let mut huge = vec![0x80, 0x80 | 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        huge.extend_from_slice(&[0, 0, 0, 0]);
        assert!(matches!(reader.push(&huge), Err(ReadError::Protocol(_))));
        let mut reader = ClientReader::new(4096, false);
        assert!(reader
            .push(&[0x01, 0x81, 1, 2, 3, 4, b'a' ^ 1])
            .unwrap()
            .is_empty());
        let mut big = vec![0x80, 0x80 | 127];
        big.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
        big.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(reader.push(&big).unwrap_err().close_code(), 1009);
        // The fuzzer's bytes themselves (after its flags byte).
        let crash: &[u8] = &[
            0x02, 0x81, 0x89, 0x81, 0xa7, 0x81, 0x0b, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff,
        ];
        let mut reader = ClientReader::new(4096, false);
        let mut tail = crash.to_vec();
        tail.extend(std::iter::repeat_n(0xff, 36));
        tail.extend_from_slice(&[0xa7, 0xa7, 0x81, 0x83]);
        match reader.push(&tail) {
            Ok(_) => {}
            Err(e) => assert!([1002, 1007, 1009].contains(&e.close_code()), "{e:?}"),
        }
    }
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_accept_key_is_the_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn frames_carry_their_length_in_the_shortest_form() {
        for len in [0usize, 125, 126, 65_535, 65_536] {
            let payload = vec![b'x'; len];
            let f = server_frame(OP_TEXT, &payload, false);
            assert_eq!(f.len(), header_len(len) + len);
            let (op, compressed, body, used) = read_server_frame(&f).unwrap();
            assert_eq!(
                (op, compressed, body.len(), used),
                (OP_TEXT, false, len, f.len())
            );
        }
        let c = close_frame(1008, "viewer stopped reading");
        let (op, _, body, _) = read_server_frame(&c).unwrap();
        assert_eq!(op, OP_CLOSE);
        assert_eq!(&body[..2], &1008u16.to_be_bytes());
        assert_eq!(&body[2..], b"viewer stopped reading");
        // A reason cut to fit a control frame never splits a character.
        let long = close_frame(1000, &"é".repeat(100));
        assert!(read_server_frame(&long).unwrap().2.len() <= 125);
    }

    #[test]
    fn offers_are_accepted_only_as_the_server_can_honour_them() {
        let chrome = negotiate_deflate(["permessage-deflate; client_max_window_bits"]).unwrap();
        assert_eq!(
            chrome.response,
            "permessage-deflate; server_no_context_takeover"
        );
        let lean = negotiate_deflate([
            "permessage-deflate; server_max_window_bits=10, permessage-deflate; client_no_context_takeover",
        ])
        .unwrap();
        assert_eq!(
            lean.response,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        assert_eq!(negotiate_deflate(["x-webkit-deflate-frame"]), None);
        assert_eq!(negotiate_deflate(["permessage-deflate; bogus=1"]), None);
        assert_eq!(negotiate_deflate(Vec::<&str>::new()), None);
    }

    fn reader(deflate: bool) -> ClientReader {
        ClientReader::new(4096, deflate)
    }

    const MASK: [u8; 4] = [1, 2, 3, 4];

    #[test]
    fn control_frames_are_answered_and_data_is_checked_then_ignored() {
        let mut r = reader(false);
        let mut bytes = client_frame(OP_PING, b"hi", true, false, MASK);
        bytes.extend(client_frame(OP_TEXT, "héllo".as_bytes(), true, false, MASK));
        bytes.extend(client_frame(OP_BINARY, &[0xff; 10], false, false, MASK));
        bytes.extend(client_frame(OP_PONG, b"", true, false, MASK));
        bytes.extend(client_frame(
            OP_CONTINUATION,
            &[0xfe; 10],
            true,
            false,
            MASK,
        ));
        bytes.extend(client_frame(
            OP_CLOSE,
            &1000u16.to_be_bytes(),
            true,
            false,
            MASK,
        ));
        // One byte at a time: frames split anywhere still parse.
        let mut events = Vec::new();
        for b in &bytes {
            events.extend(r.push(std::slice::from_ref(b)).unwrap());
        }
        assert_eq!(
            events,
            vec![
                ClientEvent::Ping(Bytes::from_static(b"hi")),
                ClientEvent::Message,
                ClientEvent::Pong,
                ClientEvent::Message,
                ClientEvent::Close(Some(1000)),
            ]
        );
        assert!(r.buf.capacity() == 0, "no buffer kept once drained");
    }

    #[test]
    fn each_bad_input_gets_its_close_code() {
        let err = |deflate: bool, bytes: Vec<u8>| reader(deflate).push(&bytes).unwrap_err();
        let big = vec![b'a'; 4097];
        assert_eq!(
            err(false, client_frame(OP_TEXT, &big, true, false, MASK)).close_code(),
            1009
        );
        // Announced too large: refused before the payload arrives.
        let header_only = client_frame(OP_BINARY, &big, true, false, MASK)[..8].to_vec();
        assert_eq!(err(false, header_only).close_code(), 1009);
        // Fragments adding up past the cap.
        let mut frags = client_frame(OP_BINARY, &[0; 3000], false, false, MASK);
        frags.extend(client_frame(OP_CONTINUATION, &[0; 3000], true, false, MASK));
        assert_eq!(err(false, frags).close_code(), 1009);
        assert_eq!(
            err(
                false,
                client_frame(OP_TEXT, &[0xc3, 0x28], true, false, MASK)
            )
            .close_code(),
            1007
        );
        let unmasked = vec![FIN | OP_TEXT, 1, b'a'];
        assert_eq!(err(false, unmasked).close_code(), 1002);
        assert_eq!(
            err(false, client_frame(0x3, b"", true, false, MASK)).close_code(),
            1002
        );
        assert_eq!(
            err(false, client_frame(OP_PING, b"", false, false, MASK)).close_code(),
            1002
        );
        assert_eq!(
            err(
                false,
                client_frame(OP_CONTINUATION, b"x", true, false, MASK)
            )
            .close_code(),
            1002
        );
        assert_eq!(
            err(false, client_frame(OP_TEXT, b"x", true, true, MASK)).close_code(),
            1002,
            "compressed without having negotiated it"
        );
    }

    #[test]
    fn compressed_messages_are_inflated_within_the_cap() {
        let ok = deflate_message("hello, hello, hello".as_bytes());
        assert_eq!(
            reader(true)
                .push(&client_frame(OP_TEXT, &ok, true, true, MASK))
                .unwrap(),
            vec![ClientEvent::Message]
        );
        // A small frame that inflates past 4 KiB (a deflate bomb) is 1009.
        let bomb = deflate_message(&vec![b'a'; 64 * 1024]);
        assert!(bomb.len() < 4096, "{}", bomb.len());
        let e = reader(true)
            .push(&client_frame(OP_BINARY, &bomb, true, true, MASK))
            .unwrap_err();
        assert_eq!(e.close_code(), 1009);
        // Garbage that does not inflate is 1007.
        let e = reader(true)
            .push(&client_frame(
                OP_BINARY,
                &[0xff, 0xfe, 0x00, 0x12],
                true,
                true,
                MASK,
            ))
            .unwrap_err();
        assert_eq!(e.close_code(), 1007);
    }

    proptest! {
        /// What the server compresses, a client inflates back exactly: random bytes, and text
        /// as repetitive as a match feed (which inflates to many times its size).
        #[test]
        fn deflate_then_inflate_is_the_identity(
            payload in prop::collection::vec(any::<u8>(), 0..6000),
            row in "[0-9,\\[\\]]{1,20}",
            repeats in 1usize..2000,
        ) {
            let packed = deflate_message(&payload);
            prop_assert_eq!(inflate_message(&packed, 6000).unwrap(), payload);
            let text = row.repeat(repeats).into_bytes();
            let packed = deflate_message(&text);
            prop_assert_eq!(inflate_message(&packed, 1 << 20).unwrap(), text);
        }

        /// Whatever bytes arrive, the reader answers with events or a close code, never a panic,
        /// and keeps at most one frame's worth of bytes.
        #[test]
        fn the_reader_never_panics(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..8), deflate in any::<bool>()) {
            let mut r = ClientReader::new(4096, deflate);
            for c in chunks {
                if r.push(&c).is_err() {
                    break;
                }
                prop_assert!(r.buf.len() <= 4096 + 14);
            }
        }
    }
}
