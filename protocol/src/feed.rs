//! The per-match feed: follows a match log, keeps the spectator state and a bounded ring of the
//! most recent viewer frames, and encodes every viewer message exactly once.
//!
//! This is the pure core of a gateway hub. It never blocks and does no I/O; the hub feeds it
//! log records and hands the frames it returns to viewers.
//!
//! Viewers get the documented viewer contract and nothing more: every body is decoded into its
//! typed form and re-encoded (once per message, not per viewer), so whatever a room puts in the
//! log for other consumers (an event's `seq` and `region`, fields a future room version adds for
//! the aggregator, debugging data) never reaches a browser.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::event::{EventRecord, MatchEvent};
use crate::log::{LogKind, LogRecord};
use crate::state::{Delta, SpectatorState};
use crate::viewer::{decide_resume, Resume, StreamPosition};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    Snapshot,
    Delta,
    Event,
}

impl FrameKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FrameKind::Snapshot => "snapshot",
            FrameKind::Delta => "delta",
            FrameKind::Event => "event",
        }
    }
}

/// One viewer message, encoded once and shared by every viewer: `json` is the WebSocket text
/// payload, `sse` the same message framed as a Server-Sent Event (`id: E:V`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub position: StreamPosition,
    pub json: Bytes,
    pub sse: Bytes,
    /// When the log accepted the record, if known (µs since the Unix epoch); for lag metrics,
    /// sent to viewers only by a feed built [`MatchFeed::with_publish_stamps`].
    pub published_us: Option<u64>,
}

impl Frame {
    fn new(kind: FrameKind, position: StreamPosition, json: Bytes) -> Frame {
        let mut sse = BytesMut::with_capacity(json.len() + 48);
        sse.put_slice(format!("id: {position}\nevent: {}\ndata: ", kind.as_str()).as_bytes());
        sse.put_slice(&json);
        sse.put_slice(b"\n\n");
        Frame {
            kind,
            position,
            json,
            sse: sse.freeze(),
            published_us: None,
        }
    }
}

/// Builds `{"type":T,"match":M,"epoch":E,"version":V[,"published_us":P],<fields of body>}` from
/// an already encoded JSON object `body`, without decoding it again.
fn envelope(
    kind: FrameKind,
    match_id: &str,
    position: StreamPosition,
    published_us: Option<u64>,
    body: &[u8],
) -> Bytes {
    let mut head = format!(
        "{{\"type\":\"{}\",\"match\":{},\"epoch\":{},\"version\":{}",
        kind.as_str(),
        serde_json::to_string(match_id).expect("string serializes"),
        position.epoch,
        position.version
    );
    if let Some(p) = published_us {
        head.push_str(&format!(",\"published_us\":{p}"));
    }
    let mut out = BytesMut::with_capacity(head.len() + body.len() + 2);
    out.put_slice(head.as_bytes());
    let inner = body
        .strip_prefix(b"{")
        .and_then(|b| b.strip_suffix(b"}"))
        .unwrap_or(b"");
    if inner.iter().any(|b| !b.is_ascii_whitespace()) {
        out.put_u8(b',');
        out.put_slice(inner);
    }
    out.put_u8(b'}');
    out.freeze()
}

/// What applying one log record did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The next version: this frame goes to every viewer.
    Appended(Arc<Frame>),
    /// The state was replaced from a keyframe (new epoch, or a gap healed by a keyframe):
    /// every viewer must get a fresh snapshot.
    Reset,
    /// Old news (a duplicate, an earlier keyframe, or a keyframe matching our state).
    Ignored,
    /// A record past the next version with no keyframe to heal it: the follower must
    /// resubscribe from the latest keyframe.
    Gap {
        expected: StreamPosition,
        got: StreamPosition,
    },
}

pub struct MatchFeed {
    match_id: String,
    position: Option<StreamPosition>,
    state: SpectatorState,
    ring: VecDeque<Arc<Frame>>,
    ring_capacity: usize,
    snapshot: Option<Arc<Frame>>,
    publish_stamps: bool,
}

/// An event as viewers see it: the fact and when it happened. The consumers' bookkeeping
/// (`seq`, `region`) stays in the log.
#[derive(serde::Serialize)]
struct ViewerEvent<'a> {
    at_ms: u64,
    #[serde(flatten)]
    event: &'a MatchEvent,
}

impl MatchFeed {
    /// A feed that keeps at most `ring_capacity` recent frames for resuming viewers.
    pub fn new(match_id: impl Into<String>, ring_capacity: usize) -> MatchFeed {
        MatchFeed {
            match_id: match_id.into(),
            position: None,
            state: SpectatorState::default(),
            ring: VecDeque::with_capacity(ring_capacity.min(1024)),
            ring_capacity: ring_capacity.max(1),
            snapshot: None,
            publish_stamps: false,
        }
    }

    /// A feed whose delta and event frames carry `published_us`, when the log accepted them:
    /// a debugging aid for measuring publish -> screen latency in clients, off by default.
    pub fn with_publish_stamps(mut self, on: bool) -> MatchFeed {
        self.publish_stamps = on;
        self
    }

    pub fn match_id(&self) -> &str {
        &self.match_id
    }

    /// The current position, once a keyframe has been seen.
    pub fn position(&self) -> Option<StreamPosition> {
        self.position
    }

    pub fn state(&self) -> &SpectatorState {
        &self.state
    }

    pub fn oldest_retained(&self) -> Option<u64> {
        self.ring.front().map(|f| f.position.version)
    }

    pub fn apply(&mut self, record: &LogRecord) -> Applied {
        self.apply_published(record, None)
    }

    /// Like [`MatchFeed::apply`], stamping the frame with when the log accepted the record.
    pub fn apply_published(&mut self, record: &LogRecord, published_us: Option<u64>) -> Applied {
        let got = StreamPosition {
            epoch: record.epoch,
            version: record.version,
        };
        match record.kind {
            LogKind::Keyframe => self.apply_keyframe(record, got),
            LogKind::Delta | LogKind::Event => {
                let Some(current) = self.position else {
                    // Nothing to apply a delta to: only a keyframe can start a feed.
                    return Applied::Gap { expected: got, got };
                };
                if got.epoch < current.epoch
                    || (got.epoch == current.epoch && got.version <= current.version)
                {
                    return Applied::Ignored;
                }
                let expected = StreamPosition {
                    epoch: current.epoch,
                    version: current.version + 1,
                };
                if got != expected {
                    return Applied::Gap { expected, got };
                }
                let (kind, body) = if record.kind == LogKind::Delta {
                    let body = match serde_json::from_slice::<Delta>(&record.body) {
                        Ok(delta) => {
                            self.state.apply(&delta);
                            serde_json::to_vec(&delta).expect("delta serializes")
                        }
                        // A malformed delta from our own room is a bug: skip its effect but
                        // keep the version line, so viewers are not stalled by it.
                        Err(e) => {
                            tracing::error!(match_id = %self.match_id, at = %got, error = %e, "malformed delta");
                            b"{}".to_vec()
                        }
                    };
                    (FrameKind::Delta, body)
                } else {
                    let body = match serde_json::from_slice::<EventRecord>(&record.body) {
                        Ok(e) => serde_json::to_vec(&ViewerEvent {
                            at_ms: e.at_ms,
                            event: &e.event,
                        })
                        .expect("event serializes"),
                        Err(e) => {
                            tracing::error!(match_id = %self.match_id, at = %got, error = %e, "malformed event");
                            b"{}".to_vec()
                        }
                    };
                    (FrameKind::Event, body)
                };
                self.position = Some(got);
                self.snapshot = None;
                let stamp = published_us.filter(|_| self.publish_stamps);
                let mut frame =
                    Frame::new(kind, got, envelope(kind, &self.match_id, got, stamp, &body));
                frame.published_us = published_us;
                let frame = Arc::new(frame);
                if self.ring.len() == self.ring_capacity {
                    self.ring.pop_front();
                }
                self.ring.push_back(frame.clone());
                Applied::Appended(frame)
            }
        }
    }

    fn apply_keyframe(&mut self, record: &LogRecord, got: StreamPosition) -> Applied {
        if let Some(current) = self.position {
            if got.epoch < current.epoch
                || (got.epoch == current.epoch && got.version <= current.version)
            {
                return Applied::Ignored;
            }
        }
        let Ok(state) = serde_json::from_slice::<SpectatorState>(&record.body) else {
            return Applied::Ignored;
        };
        self.state = state;
        self.position = Some(got);
        self.ring.clear();
        self.snapshot = None;
        Applied::Reset
    }

    /// The snapshot frame at the current version, encoded at most once per version.
    pub fn snapshot_frame(&mut self) -> Option<Arc<Frame>> {
        let position = self.position?;
        if let Some(s) = &self.snapshot {
            return Some(s.clone());
        }
        let body = serde_json::to_vec(&SnapshotBody { state: &self.state }).ok()?;
        let frame = Arc::new(Frame::new(
            FrameKind::Snapshot,
            position,
            envelope(FrameKind::Snapshot, &self.match_id, position, None, &body),
        ));
        self.snapshot = Some(frame.clone());
        Some(frame)
    }

    /// The frames a viewer that last saw `since` must get before live ones, following the
    /// resume rule: the retained deltas after `since`, or one snapshot. Empty when there is no
    /// state yet or the viewer is up to date.
    pub fn resume_frames(&mut self, since: Option<StreamPosition>) -> Vec<Arc<Frame>> {
        let Some(current) = self.position else {
            return Vec::new();
        };
        match decide_resume(since, current, self.oldest_retained()) {
            Resume::UpToDate => Vec::new(),
            Resume::Replay { from } => self
                .ring
                .iter()
                .filter(|f| f.position.version >= from)
                .cloned()
                .collect(),
            Resume::Snapshot => self.snapshot_frame().into_iter().collect(),
        }
    }
}

#[derive(serde::Serialize)]
struct SnapshotBody<'a> {
    state: &'a SpectatorState,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::PlayerView;

    fn keyframe(epoch: u64, version: u64, state: &SpectatorState) -> LogRecord {
        LogRecord {
            match_id: "m1".into(),
            epoch,
            version,
            kind: LogKind::Keyframe,
            body: serde_json::to_vec(state).unwrap().into(),
        }
    }

    fn delta(epoch: u64, version: u64, d: &Delta) -> LogRecord {
        LogRecord {
            match_id: "m1".into(),
            epoch,
            version,
            kind: LogKind::Delta,
            body: serde_json::to_vec(d).unwrap().into(),
        }
    }

    fn moved(tick: u64, x: i32) -> Delta {
        let mut d = Delta {
            tick,
            ..Delta::default()
        };
        d.players.insert(
            "p1".into(),
            PlayerView {
                name: "a".into(),
                x,
                y: 0,
                angle: 0,
                hp: 100,
                alive: true,
                score: 0,
                kills: 0,
                deaths: 0,
                bot: true,
            },
        );
        d
    }

    fn pos(epoch: u64, version: u64) -> StreamPosition {
        StreamPosition { epoch, version }
    }

    #[test]
    fn follows_the_version_line_and_encodes_envelopes() {
        let mut feed = MatchFeed::new("m1", 4);
        assert_eq!(
            feed.apply(&delta(1, 1, &moved(1, 1))),
            Applied::Gap {
                expected: pos(1, 1),
                got: pos(1, 1)
            }
        );
        assert_eq!(
            feed.apply(&keyframe(1, 0, &SpectatorState::default())),
            Applied::Reset
        );
        let Applied::Appended(f) = feed.apply(&delta(1, 1, &moved(1, 5))) else {
            panic!()
        };
        let v: serde_json::Value = serde_json::from_slice(&f.json).unwrap();
        assert_eq!(v["type"], "delta");
        assert_eq!(v["match"], "m1");
        assert_eq!(v["version"], 1);
        assert_eq!(v["players"]["p1"]["x"], 5);
        assert!(f.sse.starts_with(b"id: 1:1\nevent: delta\ndata: {"));
        assert!(f.sse.ends_with(b"}\n\n"));
        assert_eq!(feed.state().players["p1"].x, 5);
        // Duplicate and gap.
        assert_eq!(feed.apply(&delta(1, 1, &moved(1, 9))), Applied::Ignored);
        assert_eq!(
            feed.apply(&delta(1, 3, &moved(3, 9))),
            Applied::Gap {
                expected: pos(1, 2),
                got: pos(1, 3)
            }
        );
        // A keyframe at our own version changes nothing; a newer epoch resets.
        assert_eq!(
            feed.apply(&keyframe(1, 1, &SpectatorState::default())),
            Applied::Ignored
        );
        assert_eq!(
            feed.apply(&keyframe(2, 0, &SpectatorState::default())),
            Applied::Reset
        );
        assert_eq!(feed.position(), Some(pos(2, 0)));
        assert!(feed.state().players.is_empty());
    }

    #[test]
    fn resume_replays_the_ring_or_sends_one_snapshot() {
        let mut feed = MatchFeed::new("m1", 3);
        feed.apply(&keyframe(1, 0, &SpectatorState::default()));
        for v in 1..=5 {
            feed.apply(&delta(1, v, &moved(v, v as i32)));
        }
        // Ring holds 3..=5.
        let versions = |fs: Vec<Arc<Frame>>| {
            fs.iter()
                .map(|f| (f.kind, f.position.version))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            versions(feed.resume_frames(Some(pos(1, 3)))),
            vec![(FrameKind::Delta, 4), (FrameKind::Delta, 5)]
        );
        assert_eq!(
            versions(feed.resume_frames(Some(pos(1, 2)))),
            vec![
                (FrameKind::Delta, 3),
                (FrameKind::Delta, 4),
                (FrameKind::Delta, 5)
            ]
        );
        assert_eq!(
            versions(feed.resume_frames(Some(pos(1, 1)))),
            vec![(FrameKind::Snapshot, 5)]
        );
        assert_eq!(versions(feed.resume_frames(Some(pos(1, 5)))), vec![]);
        assert_eq!(
            versions(feed.resume_frames(Some(pos(0, 5)))),
            vec![(FrameKind::Snapshot, 5)]
        );
        let snap = feed.snapshot_frame().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&snap.json).unwrap();
        assert_eq!(v["type"], "snapshot");
        assert_eq!(v["state"]["players"]["p1"]["x"], 5);
        // Encoded once per version.
        assert!(Arc::ptr_eq(&snap, &feed.snapshot_frame().unwrap()));
    }

    #[test]
    fn viewers_get_the_contract_not_what_else_the_log_carries() {
        let mut feed = MatchFeed::new("m1", 4);
        feed.apply(&keyframe(1, 0, &SpectatorState::default()));
        let mut record = delta(1, 1, &moved(1, 5));
        let mut body: serde_json::Value = serde_json::from_slice(&record.body).unwrap();
        body["internal_rtt_ms"] = 12.into();
        body["players"]["p1"]["ip"] = "10.0.0.7".into();
        record.body = serde_json::to_vec(&body).unwrap().into();
        let Applied::Appended(f) = feed.apply_published(&record, Some(1_700_000_000_000_123))
        else {
            panic!()
        };
        let v: serde_json::Value = serde_json::from_slice(&f.json).unwrap();
        assert_eq!(v["players"]["p1"]["x"], 5);
        assert!(v.get("internal_rtt_ms").is_none(), "{v}");
        assert!(v["players"]["p1"].get("ip").is_none(), "{v}");
        // The publish time is kept for metrics but not sent unless stamps are on.
        assert!(v.get("published_us").is_none());
        assert_eq!(f.published_us, Some(1_700_000_000_000_123));

        let event = EventRecord {
            seq: 7,
            region: "eu".into(),
            at_ms: 1_700_000_000_000,
            event: MatchEvent::Kill {
                killer: "p1".into(),
                victim: "p2".into(),
            },
        };
        let record = LogRecord {
            match_id: "m1".into(),
            epoch: 1,
            version: 2,
            kind: LogKind::Event,
            body: serde_json::to_vec(&event).unwrap().into(),
        };
        let Applied::Appended(f) = feed.apply(&record) else {
            panic!()
        };
        let v: serde_json::Value = serde_json::from_slice(&f.json).unwrap();
        assert_eq!(v["type"], "event");
        assert_eq!(v["kind"], "kill");
        assert_eq!(v["killer"], "p1");
        assert_eq!(v["at_ms"], 1_700_000_000_000u64);
        assert!(v.get("seq").is_none() && v.get("region").is_none(), "{v}");

        // A malformed body keeps the version line with an empty message.
        let mut bad = delta(1, 3, &moved(3, 1));
        bad.body = bytes::Bytes::from_static(b"{\"tick\":\"not a number\"}");
        let Applied::Appended(f) = feed.apply(&bad) else {
            panic!()
        };
        let v: serde_json::Value = serde_json::from_slice(&f.json).unwrap();
        assert_eq!(v["version"], 3);
        assert!(v.get("tick").is_none());
    }

    #[test]
    fn publish_stamps_are_opt_in() {
        let mut feed = MatchFeed::new("m1", 4).with_publish_stamps(true);
        feed.apply(&keyframe(1, 0, &SpectatorState::default()));
        let Applied::Appended(f) = feed.apply_published(&delta(1, 1, &moved(1, 5)), Some(42))
        else {
            panic!()
        };
        let v: serde_json::Value = serde_json::from_slice(&f.json).unwrap();
        assert_eq!(v["published_us"], 42);
        assert_eq!(v["version"], 1);
    }

    #[test]
    fn empty_bodies_still_make_valid_json() {
        let e = envelope(FrameKind::Event, "m\"1", pos(1, 2), None, b"{}");
        let v: serde_json::Value = serde_json::from_slice(&e).unwrap();
        assert_eq!(v["match"], "m\"1");
    }
}
