//! What viewers and the match log hand the gateway: `since=` / `Last-Event-ID` positions and
//! log bodies (deltas, events, keyframes) as JSON. Nothing may panic; a position that parses
//! must print back to itself; every frame the feed emits must be valid JSON with its envelope,
//! in both formats; a v2 frame must apply to the v2 snapshot it follows (or be refused with an
//! error, never a panic), and its compressed form must inflate back to it.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use protocol::feed::v2::V2View;
use protocol::{parse_position, ws, Applied, LogKind, LogRecord, MatchFeed, StreamPosition};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(p) = parse_position(s) {
            assert_eq!(parse_position(&p.to_string()), Ok(p));
        }
    }
    let (kind, body) = match data.split_first() {
        Some((k, rest)) => (k % 3, rest),
        None => return,
    };
    let mut feed = MatchFeed::new("m\"1", 8).with_publish_stamps(true);
    // A valid start, then the fuzzed record at the next version (and again, as a duplicate).
    let start = LogRecord {
        match_id: "m\"1".into(),
        epoch: 1,
        version: 0,
        kind: LogKind::Keyframe,
        body: Bytes::from_static(br#"{"region":"eu","status":"live","tick":0,"arena":{"width":10,"height":10,"obstacles":[]},"players":{}}"#),
    };
    assert_eq!(feed.apply(&start), Applied::Reset);
    let first = feed.snapshot_frame().expect("a snapshot after a keyframe");
    let mut view = V2View::from_snapshot(&serde_json::from_slice(&first.v2.json).unwrap())
        .expect("our own v2 snapshot decodes");
    let record = LogRecord {
        match_id: "m\"1".into(),
        epoch: 1,
        version: 1,
        kind: [LogKind::Delta, LogKind::Event, LogKind::Keyframe][kind as usize],
        body: Bytes::copy_from_slice(body),
    };
    for _ in 0..2 {
        if let Applied::Appended(f) = feed.apply_published(&record, Some(42)) {
            for json in [&f.v1.json, &f.v2.json] {
                let v: serde_json::Value = serde_json::from_slice(json).expect("frame is JSON");
                assert_eq!(v["version"], 1);
                assert_eq!(v["match"], "m\"1");
            }
            let v2: serde_json::Value = serde_json::from_slice(&f.v2.json).unwrap();
            view.apply(&v2).expect("our own v2 frame applies to our own v2 snapshot");
            let (_, compressed, payload, _) = ws::read_server_frame(&f.v2_deflated).unwrap();
            assert!(compressed);
            assert_eq!(ws::inflate_message(payload, 1 << 24).unwrap(), f.v2.json.to_vec());
        }
    }
    if let Some(snap) = feed.snapshot_frame() {
        serde_json::from_slice::<serde_json::Value>(&snap.v1.json).expect("snapshot is JSON");
        let v2 = serde_json::from_slice::<serde_json::Value>(&snap.v2.json).expect("v2 snapshot is JSON");
        V2View::from_snapshot(&v2).expect("our own v2 snapshot decodes");
    }
    let _ = feed.resume_frames(Some(StreamPosition { epoch: 1, version: 0 }));
});
