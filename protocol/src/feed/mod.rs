//! The per-match feed: follows a match log, keeps the spectator state and a bounded ring of the
//! most recent viewer frames, and encodes every viewer message exactly once per format.
//!
//! This is the pure core of a gateway hub. It never blocks and does no I/O; the hub feeds it
//! log records and hands the frames it returns to viewers.
//!
//! Viewers get the documented viewer contract and nothing more: every body is decoded into its
//! typed form and re-encoded (once per message, not per viewer), so whatever a room puts in the
//! log for other consumers (an event's `seq` and `region`, fields a future room version adds for
//! the aggregator, debugging data) never reaches a browser.
//!
//! Each message is encoded in both feed formats ([`Format::V1`], the default, and the compact
//! [`v2`]), each as a ready WebSocket frame and a Server-Sent Event, and v2 once more as a
//! permessage-deflate frame: whatever a viewer asked for, the bytes it is sent were built once
//! for the whole match.

pub mod v2;

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::event::{EventRecord, MatchEvent};
use crate::log::{LogKind, LogRecord};
use crate::state::{Delta, SpectatorState};
use crate::viewer::{decide_resume, Resume, StreamPosition};
use crate::ws;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    Snapshot,
    Delta,
    Event,
    /// Not on the version line: what the gateway knows of the match's producer (see
    /// [`MatchFeed::status_frame`]).
    Status,
}

impl FrameKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FrameKind::Snapshot => "snapshot",
            FrameKind::Delta => "delta",
            FrameKind::Event => "event",
            FrameKind::Status => "status",
        }
    }
}

/// The viewer feed formats: v1 (JSON with player ids and whole player views, the default) and
/// v2 (small ids, changed fields only; see [`v2`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    V1,
    V2,
}

impl Format {
    /// `?format=` values and WebSocket subprotocols (`grandstand.v1`, `grandstand.v2`).
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "v1" => Some(Format::V1),
            "v2" => Some(Format::V2),
            _ => None,
        }
    }

    pub fn subprotocol(self) -> &'static str {
        match self {
            Format::V1 => "grandstand.v1",
            Format::V2 => "grandstand.v2",
        }
    }

    pub fn from_subprotocol(s: &str) -> Option<Format> {
        s.strip_prefix("grandstand.").and_then(Format::parse)
    }
}

/// One message in one format, encoded once: a WebSocket text frame (header and JSON in one
/// buffer), the JSON alone (a slice of it), and a Server-Sent Event (`id: E:V`), built the
/// first time an SSE viewer is sent it: a hub's ring holds its last frames in every form, and
/// an SSE copy of each that no viewer asked for was about a third of that.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub ws: Bytes,
    pub json: Bytes,
    /// The event's lines before its data (`id: E:V\nevent: K\ndata: `).
    sse_head: Bytes,
    sse: std::sync::OnceLock<Bytes>,
}

/// Whether the SSE form was built yet is not part of the message.
impl PartialEq for Encoded {
    fn eq(&self, other: &Encoded) -> bool {
        (&self.ws, &self.json, &self.sse_head) == (&other.ws, &other.json, &other.sse_head)
    }
}

impl Eq for Encoded {}

impl Encoded {
    fn new(kind: FrameKind, position: StreamPosition, json: Vec<u8>) -> Encoded {
        let ws = ws::server_frame(ws::OP_TEXT, &json, false);
        let json = ws.slice(ws::header_len(json.len())..);
        Encoded {
            ws,
            json,
            sse_head: Bytes::from(format!("id: {position}\nevent: {}\ndata: ", kind.as_str())),
            sse: std::sync::OnceLock::new(),
        }
    }

    /// The Server-Sent Event: built once, on first use, then shared like the other forms.
    pub fn sse(&self) -> &Bytes {
        self.sse.get_or_init(|| {
            let mut sse = BytesMut::with_capacity(self.sse_head.len() + self.json.len() + 2);
            sse.put_slice(&self.sse_head);
            sse.put_slice(&self.json);
            sse.put_slice(b"\n\n");
            sse.freeze()
        })
    }
}

/// One viewer message, encoded once in every form a viewer may ask for and shared by every
/// viewer of the match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub position: StreamPosition,
    pub v1: Encoded,
    pub v2: Encoded,
    /// `v2` as a compressed WebSocket frame (permessage-deflate, no context takeover).
    pub v2_deflated: Bytes,
    /// An event's kind (`kill`, `player_joined`, ...), for feeds filtered by kind.
    pub event_kind: Option<&'static str>,
    /// When the log accepted the record, if known (µs since the Unix epoch); for lag metrics,
    /// sent to viewers only by a feed built [`MatchFeed::with_publish_stamps`].
    pub published_us: Option<u64>,
}

impl Frame {
    fn new(kind: FrameKind, position: StreamPosition, v1: Vec<u8>, v2: Vec<u8>) -> Frame {
        let deflated = ws::deflate_message(&v2);
        Frame {
            kind,
            position,
            v1: Encoded::new(kind, position, v1),
            v2: Encoded::new(kind, position, v2),
            v2_deflated: ws::server_frame(ws::OP_TEXT, &deflated, true),
            event_kind: None,
            published_us: None,
        }
    }

    /// The message in `format`.
    pub fn encoded(&self, format: Format) -> &Encoded {
        match format {
            Format::V1 => &self.v1,
            Format::V2 => &self.v2,
        }
    }

    /// The WebSocket frame for a viewer of `format`, compressed when it negotiated deflate
    /// (only v2 is compressed).
    pub fn ws_frame(&self, format: Format, deflate: bool) -> &Bytes {
        match (format, deflate) {
            (Format::V2, true) => &self.v2_deflated,
            _ => &self.encoded(format).ws,
        }
    }
}

/// Builds `{"type":T,"match":M,"epoch":E,"version":V[,"published_us":P],<fields>}` from the
/// already encoded inside of a JSON object (`fields`, no braces; may be empty).
fn envelope(
    kind: FrameKind,
    match_id: &str,
    position: StreamPosition,
    published_us: Option<u64>,
    fields: &[u8],
) -> Vec<u8> {
    let mut out = format!(
        "{{\"type\":\"{}\",\"match\":{},\"epoch\":{},\"version\":{}",
        kind.as_str(),
        serde_json::to_string(match_id).expect("string serializes"),
        position.epoch,
        position.version
    )
    .into_bytes();
    out.reserve(fields.len() + 32);
    if let Some(p) = published_us {
        out.extend_from_slice(format!(",\"published_us\":{p}").as_bytes());
    }
    if fields.iter().any(|b| !b.is_ascii_whitespace()) {
        out.push(b',');
        out.extend_from_slice(fields);
    }
    out.push(b'}');
    out
}

/// The inside of an encoded JSON object (what is between its braces).
fn inside(object: &[u8]) -> &[u8] {
    object
        .strip_prefix(b"{")
        .and_then(|b| b.strip_suffix(b"}"))
        .unwrap_or(b"")
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
    roster: v2::Roster,
    ring: VecDeque<Arc<Frame>>,
    ring_capacity: usize,
    snapshot: Option<Arc<Frame>>,
    publish_stamps: bool,
}

/// An event as v1 viewers see it: the fact and when it happened. The consumers' bookkeeping
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
            roster: v2::Roster::default(),
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
                let (kind, v1, v2, event_kind) = if record.kind == LogKind::Delta {
                    let (k, v1, v2) = self.delta_bodies(record, got);
                    (k, v1, v2, None)
                } else {
                    self.event_bodies(record, got)
                };
                self.position = Some(got);
                self.snapshot = None;
                let stamp = published_us.filter(|_| self.publish_stamps);
                let mut frame = Frame::new(
                    kind,
                    got,
                    envelope(kind, &self.match_id, got, stamp, &v1),
                    envelope(kind, &self.match_id, got, stamp, &v2),
                );
                frame.published_us = published_us;
                frame.event_kind = event_kind;
                let frame = Arc::new(frame);
                if self.ring.len() == self.ring_capacity {
                    self.ring.pop_front();
                }
                self.ring.push_back(frame.clone());
                Applied::Appended(frame)
            }
        }
    }

    /// A delta's v1 and v2 bodies (object insides), and the state moved past it. A malformed
    /// delta from our own room is a bug: its effect is skipped but the version line kept, so
    /// viewers are not stalled by it.
    fn delta_bodies(
        &mut self,
        record: &LogRecord,
        at: StreamPosition,
    ) -> (FrameKind, Vec<u8>, Vec<u8>) {
        match serde_json::from_slice::<Delta>(&record.body) {
            Ok(delta) => {
                let v1 = serde_json::to_vec(&delta).expect("delta serializes");
                let mut v2 = Vec::with_capacity(v1.len() / 3);
                v2::write_delta(&mut v2, &self.state, &delta, &mut self.roster);
                self.state.apply(&delta);
                (FrameKind::Delta, inside(&v1).to_vec(), v2)
            }
            Err(e) => {
                tracing::error!(match_id = %self.match_id, %at, error = %e, "malformed delta");
                (FrameKind::Delta, Vec::new(), Vec::new())
            }
        }
    }

    /// An event's v1 and v2 bodies (object insides), and its kind.
    #[allow(clippy::type_complexity)]
    fn event_bodies(
        &mut self,
        record: &LogRecord,
        at: StreamPosition,
    ) -> (FrameKind, Vec<u8>, Vec<u8>, Option<&'static str>) {
        match serde_json::from_slice::<EventRecord>(&record.body) {
            Ok(e) => {
                let v1 = serde_json::to_vec(&ViewerEvent {
                    at_ms: e.at_ms,
                    event: &e.event,
                })
                .expect("event serializes");
                let mut v2 = Vec::with_capacity(64);
                v2::write_event(&mut v2, e.at_ms, &e.event, &mut self.roster);
                if let MatchEvent::PlayerLeft { player } = &e.event {
                    if !self.state.players.contains_key(player) {
                        self.roster.forget(player);
                    }
                }
                (
                    FrameKind::Event,
                    inside(&v1).to_vec(),
                    v2,
                    Some(e.event.kind()),
                )
            }
            Err(e) => {
                tracing::error!(match_id = %self.match_id, %at, error = %e, "malformed event");
                (FrameKind::Event, Vec::new(), Vec::new(), None)
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
        self.roster.reset(&self.state);
        self.position = Some(got);
        self.ring.clear();
        self.snapshot = None;
        Applied::Reset
    }

    /// A `status` message: `{"type":"status","match","epoch","version","status":S,"at_ms":..}`
    /// with the current position (a status is not on the version line: it does not move a
    /// viewer's position and is never replayed). `producer_down` when the match's game server
    /// has been silent for a while (it died and nothing took the match over yet),
    /// `producer_up` on its first record after that. The same in both formats; the SSE event
    /// carries no `id`, so a browser's `Last-Event-ID` stays on the version line.
    pub fn status_frame(&self, status: &str, at_ms: u64) -> Option<Arc<Frame>> {
        let position = self.position?;
        let mut fields = b"\"status\":".to_vec();
        serde_json::to_writer(&mut fields, status).expect("a string serializes");
        fields.extend_from_slice(format!(",\"at_ms\":{at_ms}").as_bytes());
        let json = envelope(FrameKind::Status, &self.match_id, position, None, &fields);
        let mut frame = Frame::new(FrameKind::Status, position, json.clone(), json);
        for e in [&mut frame.v1, &mut frame.v2] {
            e.sse_head = Bytes::from_static(b"event: status\ndata: ");
        }
        Some(Arc::new(frame))
    }

    /// The snapshot frame at the current version, encoded at most once per version.
    pub fn snapshot_frame(&mut self) -> Option<Arc<Frame>> {
        let position = self.position?;
        if let Some(s) = &self.snapshot {
            return Some(s.clone());
        }
        let v1 = serde_json::to_vec(&SnapshotBody { state: &self.state }).ok()?;
        let mut v2 = Vec::with_capacity(v1.len() / 2);
        v2::write_snapshot_state(&mut v2, &self.state, &self.roster);
        let frame = Arc::new(Frame::new(
            FrameKind::Snapshot,
            position,
            envelope(
                FrameKind::Snapshot,
                &self.match_id,
                position,
                None,
                inside(&v1),
            ),
            envelope(FrameKind::Snapshot, &self.match_id, position, None, &v2),
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
    use crate::state::{MatchStatus, PlayerView, Shot};

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
                id: 1,
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
        let v: serde_json::Value = serde_json::from_slice(&f.v1.json).unwrap();
        assert_eq!(v["type"], "delta");
        assert_eq!(v["match"], "m1");
        assert_eq!(v["version"], 1);
        assert_eq!(v["players"]["p1"]["x"], 5);
        // The SSE form exists only once an SSE viewer is sent it, and then it is kept.
        assert!(f.v1.sse.get().is_none() && f.v2.sse.get().is_none());
        assert!(f.v1.sse().starts_with(b"id: 1:1\nevent: delta\ndata: {"));
        assert!(f.v1.sse.get().is_some() && f.v2.sse.get().is_none());
        assert!(f.v1.sse().ends_with(b"}\n\n"));
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
        let v: serde_json::Value = serde_json::from_slice(&snap.v1.json).unwrap();
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
        let v: serde_json::Value = serde_json::from_slice(&f.v1.json).unwrap();
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
        let v: serde_json::Value = serde_json::from_slice(&f.v1.json).unwrap();
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
        let v: serde_json::Value = serde_json::from_slice(&f.v1.json).unwrap();
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
        let v: serde_json::Value = serde_json::from_slice(&f.v1.json).unwrap();
        assert_eq!(v["published_us"], 42);
        assert_eq!(v["version"], 1);
    }

    #[test]
    fn empty_bodies_still_make_valid_json() {
        let e = envelope(FrameKind::Event, "m\"1", pos(1, 2), None, inside(b"{}"));
        let v: serde_json::Value = serde_json::from_slice(&e).unwrap();
        assert_eq!(v["match"], "m\"1");
    }

    /// Found by the `viewer` fuzz target (2026-12-05): an event record the gateway cannot
    /// read keeps its version with the envelope alone, and the v2 decoder refused that frame.
    #[test]
    fn an_unreadable_record_keeps_its_version_and_v2_clients_take_it() {
        let mut feed = MatchFeed::new("m1", 4);
        feed.apply(&keyframe(1, 0, &SpectatorState::default()));
        let first = feed.snapshot_frame().unwrap();
        let mut view =
            super::v2::V2View::from_snapshot(&serde_json::from_slice(&first.v2.json).unwrap())
                .unwrap();
        for (version, kind, body) in [
            (1, LogKind::Event, &b""[..]),
            (2, LogKind::Event, &b"{\"kind\":\"nonsense\"}"[..]),
            (3, LogKind::Delta, &b"not json"[..]),
        ] {
            let record = LogRecord {
                match_id: "m1".into(),
                epoch: 1,
                version,
                kind,
                body: Bytes::copy_from_slice(body),
            };
            let Applied::Appended(f) = feed.apply(&record) else {
                panic!("version {version} not appended")
            };
            let v2: serde_json::Value = serde_json::from_slice(&f.v2.json).unwrap();
            assert_eq!(v2["version"], version);
            view.apply(&v2).unwrap();
        }
        assert_eq!(feed.position(), Some(pos(1, 3)));
    }

    mod format_v2 {
        use proptest::prelude::*;

        use super::super::v2::{angle_256, V2View};
        use super::*;

        fn arb_view(id: u16) -> impl Strategy<Value = PlayerView> {
            (
                0..10_000i32,
                0..10_000i32,
                -180..180i16,
                0..=100u8,
                any::<bool>(),
                0..50u32,
                0..9u32,
            )
                .prop_map(move |(x, y, angle, hp, alive, score, deaths)| PlayerView {
                    id,
                    name: format!("P\"{id}"),
                    x,
                    y,
                    angle,
                    hp,
                    alive,
                    score,
                    kills: score,
                    deaths,
                    bot: id.is_multiple_of(2),
                })
        }

        /// States of one epoch: players come and go (ids are stable per player), move, score.
        fn arb_states() -> impl Strategy<Value = Vec<SpectatorState>> {
            prop::collection::vec(
                (
                    prop::collection::btree_set(1u16..12, 0..10)
                        .prop_flat_map(|ids| ids.into_iter().map(arb_view).collect::<Vec<_>>()),
                    any::<bool>(),
                ),
                1..10,
            )
            .prop_map(|steps| {
                let n = steps.len();
                steps
                    .into_iter()
                    .enumerate()
                    .map(|(i, (views, ended))| SpectatorState {
                        region: "eu".into(),
                        status: if ended && i + 1 == n {
                            MatchStatus::Ended
                        } else {
                            MatchStatus::Live
                        },
                        tick: i as u64 * 3,
                        players: views
                            .into_iter()
                            .map(|v| (format!("player-{}", v.id), v))
                            .collect(),
                        tick_hz: 30,
                        ..SpectatorState::default()
                    })
                    .collect()
            })
        }

        fn json(b: &Bytes) -> serde_json::Value {
            serde_json::from_slice(b).expect("v2 frames are JSON")
        }

        /// A feed at the first state, then one delta per later state; the frames in v2.
        fn feed_of(states: &[SpectatorState]) -> (MatchFeed, Vec<Arc<Frame>>) {
            let mut feed = MatchFeed::new("m1", 64);
            feed.apply(&keyframe(7, 0, &states[0]));
            let mut frames = vec![feed.snapshot_frame().unwrap()];
            for (i, pair) in states.windows(2).enumerate() {
                let mut d = pair[0].diff(&pair[1]);
                d.shots = pair[1]
                    .players
                    .keys()
                    .take(1)
                    .map(|p| Shot {
                        from: p.clone(),
                        x0: 1,
                        y0: 2,
                        x1: 3,
                        y1: 4,
                        hit: true,
                    })
                    .collect();
                let Applied::Appended(f) = feed.apply(&delta(7, i as u64 + 1, &d)) else {
                    panic!("delta {i} not appended");
                };
                frames.push(f);
                frames.push(feed.snapshot_frame().unwrap());
            }
            (feed, frames)
        }

        proptest! {
            /// Applying the v2 deltas to the v2 snapshot at any version gives the v2 snapshot
            /// at the last one: a viewer that resumes at any position ends up where a fresh
            /// one starts.
            #[test]
            fn v2_deltas_replay_to_the_latest_snapshot_from_every_position(states in arb_states()) {
                let (_, frames) = feed_of(&states);
                // frames: snapshot@0, then (delta@v, snapshot@v) for each later version.
                let last = V2View::from_snapshot(&json(&frames.last().unwrap().v2.json)).unwrap();
                for start in (0..frames.len()).step_by(2) {
                    let mut view = V2View::from_snapshot(&json(&frames[start].v2.json)).unwrap();
                    for f in frames[start + 1..].iter().filter(|f| f.kind == FrameKind::Delta) {
                        view.apply_delta(&json(&f.v2.json)).unwrap();
                    }
                    prop_assert_eq!(&view.players, &last.players);
                    prop_assert_eq!(view.present_roster(), last.present_roster());
                    prop_assert_eq!(&view.status, &last.status);
                    prop_assert_eq!(view.tick, last.tick);
                }
            }

            /// A v2 snapshot says what the v1 state says, quantized as documented.
            #[test]
            fn v2_snapshots_agree_with_the_state(states in arb_states()) {
                let (feed, frames) = feed_of(&states);
                let view = V2View::from_snapshot(&json(&frames.last().unwrap().v2.json)).unwrap();
                let state = feed.state();
                prop_assert_eq!(view.players.len(), state.players.len());
                for (player, v) in &state.players {
                    let p = &view.players[&u64::from(v.id)];
                    prop_assert_eq!((p.x, p.y), (i64::from(v.x), i64::from(v.y)));
                    prop_assert_eq!(p.angle, i64::from(angle_256(v.angle)));
                    prop_assert_eq!((p.hp, p.alive, p.score, p.kills, p.deaths), (i64::from(v.hp), v.alive, i64::from(v.score), i64::from(v.kills), i64::from(v.deaths)));
                    let r = &view.roster[&u64::from(v.id)];
                    prop_assert_eq!((&r.player, &r.name, r.bot), (player, &v.name, v.bot));
                }
            }
        }

        #[test]
        fn v2_is_smaller_and_every_form_is_built_once() {
            let mut before = SpectatorState {
                tick_hz: 30,
                ..SpectatorState::default()
            };
            for id in 1..=50u16 {
                before.players.insert(
                    format!("us-8dd9b854-bot{id}"),
                    PlayerView {
                        id,
                        name: format!("Bot {id}"),
                        x: 1000 + i32::from(id) * 100,
                        y: 5000,
                        angle: 90,
                        hp: 100,
                        alive: true,
                        score: 3,
                        kills: 3,
                        deaths: 1,
                        bot: true,
                    },
                );
            }
            let mut after = before.clone();
            for v in after.players.values_mut() {
                v.x += 7;
                v.y -= 3;
                v.angle = 95;
            }
            after.tick = 3;
            let mut feed = MatchFeed::new("us-8dd9b854", 8);
            feed.apply(&keyframe(1, 0, &before));
            let Applied::Appended(f) = feed.apply(&delta(1, 1, &before.diff(&after))) else {
                panic!()
            };
            // 50 moving players: v2 carries x, y and angle only, small ids, no names.
            assert!(
                f.v2.json.len() * 4 < f.v1.json.len(),
                "v2 {} vs v1 {}",
                f.v2.json.len(),
                f.v1.json.len()
            );
            let row = &json(&f.v2.json)["p"][0];
            assert_eq!(row, &serde_json::json!([1, 7, 7, -3, angle_256(95)]));
            // Each form is a complete frame: the WebSocket frames carry the JSON, the
            // compressed one inflates back to it.
            let (_, compressed, payload, _) = crate::ws::read_server_frame(&f.v2_deflated).unwrap();
            assert!(compressed);
            assert_eq!(
                crate::ws::inflate_message(payload, 1 << 20).unwrap(),
                f.v2.json.to_vec()
            );
            assert!(f.v2_deflated.len() < f.v2.ws.len());
            assert!(f
                .v2
                .sse()
                .starts_with(b"id: 1:1\nevent: delta\ndata: {\"type\":\"delta\""));
            assert_eq!(
                f.ws_frame(Format::V1, true),
                &f.v1.ws,
                "v1 is never compressed"
            );
        }

        #[test]
        fn events_name_players_by_id_and_joins_carry_the_roster() {
            let mut state = SpectatorState::default();
            state.players.insert(
                "alice".into(),
                PlayerView {
                    id: 4,
                    name: "Alice".into(),
                    x: 0,
                    y: 0,
                    angle: 0,
                    hp: 100,
                    alive: true,
                    score: 0,
                    kills: 0,
                    deaths: 0,
                    bot: false,
                },
            );
            let mut feed = MatchFeed::new("m1", 8);
            feed.apply(&keyframe(1, 0, &state));
            let event = |version: u64, event: MatchEvent| LogRecord {
                match_id: "m1".into(),
                epoch: 1,
                version,
                kind: LogKind::Event,
                body: serde_json::to_vec(&EventRecord {
                    seq: version,
                    region: "eu".into(),
                    at_ms: 9,
                    event,
                })
                .unwrap()
                .into(),
            };
            let Applied::Appended(j) = feed.apply(&event(
                1,
                MatchEvent::PlayerJoined {
                    player: "bob".into(),
                    name: "Bob".into(),
                    bot: true,
                    id: 9,
                },
            )) else {
                panic!()
            };
            assert_eq!(json(&j.v2.json)["id"], 9);
            assert_eq!(json(&j.v2.json)["player"], "bob");
            let Applied::Appended(k) = feed.apply(&event(
                2,
                MatchEvent::Kill {
                    killer: "bob".into(),
                    victim: "alice".into(),
                },
            )) else {
                panic!()
            };
            let k = json(&k.v2.json);
            assert_eq!(
                (
                    k["kind"].as_str(),
                    k["killer"].as_u64(),
                    k["victim"].as_u64()
                ),
                (Some("kill"), Some(9), Some(4))
            );
            // Unknown to the roster (a record from before v2 ids): the player id itself.
            let Applied::Appended(u) = feed.apply(&event(
                3,
                MatchEvent::Kill {
                    killer: "carol".into(),
                    victim: "alice".into(),
                },
            )) else {
                panic!()
            };
            assert_eq!(json(&u.v2.json)["killer"], "carol");
        }
    }
}
