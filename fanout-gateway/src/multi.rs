//! `GET /v1/streams?matches=a,b,c` or `?region=eu`: several matches on one connection, for
//! broadcasters and data partners who follow a whole tournament or region.
//!
//! Each match is followed exactly as a single-match stream is (its hub, its queue, the same
//! resume rules and slow-viewer substitution); the connection merges their frames. Every
//! message names its match (`match` in the envelope), so a client keeps one position per
//! match. An SSE event's `id` is the position of every match on the stream, so the
//! `Last-Event-ID` a browser sends back resumes each of them without gap or duplicate:
//!
//! `id: eu-1:3:120,eu-2:7:15` (match `:` epoch `:` version, comma separated; match ids never
//! hold `:` or `,`). A WebSocket client sends the same text as `?since=`.
//!
//! With `region`, the region's live matches join when they start and leave when they end,
//! announced with `{"type":"stream","match":ID,"status":"match_started"|"match_ended"}`
//! (no `epoch`/`version`: not on any match's version line).
//!
//! Bounded: at most `max_matches_per_stream` matches per stream (a longer `matches` list is
//! refused; a region's further matches wait for a place), frames leave through a channel of
//! [`OUT_BUFFER`] writes (a viewer that reads slower has its matches' queues substituted by
//! snapshots, as for any viewer).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::response::Response;
use futures::StreamExt;
use httpkit::ApiError;
use protocol::{parse_position, FrameKind, MatchStatus, SpectatorState, StreamPosition};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::queue::{CloseReason, Transport, ViewerQueue, Wire};
use crate::stream::{refuse_attach, reject, Admission, Admitted, StreamQuery};
use crate::{metrics, Gateway};

/// Writes waiting for a multi-match viewer's connection.
const OUT_BUFFER: usize = 64;

/// How often a region stream looks for matches that started or ended.
const REGION_POLL: Duration = Duration::from_secs(2);

/// Every match's position on a multi-match stream, as one `Last-Event-ID`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Positions(pub BTreeMap<String, StreamPosition>);

impl Positions {
    /// Parses `match:epoch:version,...` (empty: no positions).
    pub fn parse(text: &str, max: usize) -> Result<Positions, String> {
        let mut out = BTreeMap::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (id, position) = part
                .split_once(':')
                .ok_or_else(|| format!("{part:?} is not match:epoch:version"))?;
            if !protocol::valid_match_id(id) {
                return Err(format!("{id:?} is not a match id"));
            }
            let position = parse_position(position).map_err(|e| format!("{id}: {e}"))?;
            if out.insert(id.to_string(), position).is_some() {
                return Err(format!("match {id:?} twice"));
            }
            if out.len() > max {
                return Err(format!("more than {max} matches"));
            }
        }
        Ok(Positions(out))
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        for (id, p) in &self.0 {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(&format!("{id}:{p}"));
        }
        out
    }
}

/// What a multi-match stream follows.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scope {
    Matches(Vec<String>),
    Region(String),
}

fn scope_of(query: &StreamQuery, max: usize) -> Result<Scope, ApiError> {
    match (query.matches.as_deref(), query.region.as_deref()) {
        (Some(_), Some(_)) => Err(ApiError::invalid(
            "matches",
            "give matches or region, not both",
        )),
        (None, None) => Err(ApiError::invalid(
            "matches",
            "name the matches (matches=a,b) or a region (region=eu)",
        )),
        (None, Some(region)) => {
            if region.is_empty()
                || region.len() > 32
                || !region
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(ApiError::invalid("region", "not a region name"));
            }
            Ok(Scope::Region(region.to_string()))
        }
        (Some(list), None) => {
            let mut ids: Vec<String> = Vec::new();
            for id in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                if !protocol::valid_match_id(id) {
                    return Err(ApiError::invalid(
                        "matches",
                        format!("{id:?} is not a match id"),
                    ));
                }
                if !ids.iter().any(|x| x == id) {
                    ids.push(id.to_string());
                }
            }
            if ids.is_empty() {
                return Err(ApiError::invalid("matches", "no match named"));
            }
            if ids.len() > max {
                return Err(ApiError::invalid(
                    "matches",
                    format!("at most {max} matches per stream (--max-matches-per-stream)"),
                ));
            }
            Ok(Scope::Matches(ids))
        }
    }
}

/// `GET /v1/streams`.
/// Several matches on one stream: every message names its match; the SSE id (and `since`)
/// is every match's position, `match:epoch:version` comma separated.
#[utoipa::path(get, path = "/v1/streams", tag = "streams", operation_id = "multi_match_stream",
    security(("bearer" = [])),
    params(
        ("matches" = Option<String>, Query, description = "The matches to follow, comma separated (at most --max-matches-per-stream, 32 by default)"),
        ("region" = Option<String>, Query, description = "Instead of matches: the region's live matches, joining as they start and leaving as they end, each announced with a message of type stream (status match_started or match_ended)"),
        ("since" = Option<String>, Query, description = "Resume positions `match:epoch:version,...`"),
        ("token" = Option<String>, Query, description = "Bearer token for clients that cannot set headers"),
        ("format" = Option<String>, Query, description = "`v1` (default) or `v2`"),
        ("types" = Option<String>, Query, description = "`delta,event`"),
        ("kinds" = Option<String>, Query, description = "Event kinds"),
        ("Last-Event-ID" = Option<String>, Header, description = "SSE resume positions `match:epoch:version,...`"),
    ),
    responses(
        (status = 101, description = "WebSocket (on an upgrade request; subprotocols grandstand.v1 and grandstand.v2; permessage-deflate when offered)"),
        (status = 200, description = "Server-Sent Events (with `Accept: text/event-stream`)", content_type = "text/event-stream", body = String),
        (status = 400, description = "A query parameter, subprotocol or `since` is malformed (the message names it)", body = httpkit::openapi::ErrorBody),
        (status = 401, description = "Missing, forged or expired token", body = httpkit::openapi::ErrorBody),
        (status = 403, description = "forbidden_origin (WebSocket from an origin not in --cors-origins) or forbidden (a partner key that does not cover this match)", body = httpkit::openapi::ErrorBody),
        (status = 404, description = "No such match", body = httpkit::openapi::ErrorBody),
        (status = 406, description = "Neither a WebSocket upgrade nor `Accept: text/event-stream`", body = httpkit::openapi::ErrorBody),
        (status = 429, description = "rate_limited, user_cap or address_cap", body = httpkit::openapi::ErrorBody),
        (status = 503, description = "unavailable (match log down) or behind (Retry-After)", body = httpkit::openapi::ErrorBody),
    ))]
pub(crate) async fn handle(State(gw): State<Gateway>, req: Request) -> Response {
    let (mut parts, _) = req.into_parts();
    let query = match Query::<StreamQuery>::try_from_uri(&parts.uri) {
        Ok(Query(q)) => q,
        Err(e) => return reject("bad_request", ApiError::invalid("query", e.body_text())),
    };
    let max = gw.config.max_matches_per_stream;
    let scope = match scope_of(&query, max) {
        Ok(s) => s,
        Err(e) => return reject("bad_request", e),
    };
    if query.from.is_some() || query.pace.is_some() {
        return reject(
            "bad_request",
            ApiError::invalid("from", "replays are per match (/v1/matches/{id}/stream)"),
        );
    }
    let named: Vec<&str> = match &scope {
        Scope::Matches(ids) => ids.iter().map(String::as_str).collect(),
        Scope::Region(_) => Vec::new(),
    };
    let admitted = match crate::stream::admit(&gw, &mut parts, &query, &named).await {
        Ok(a) => a,
        Err(res) => return res,
    };
    let (field, raw) = &admitted.since;
    let positions = match raw.as_deref().map(|t| Positions::parse(t, max)) {
        None => Positions::default(),
        Some(Ok(p)) => p,
        Some(Err(e)) => return reject("bad_request", ApiError::invalid(field, e)),
    };
    let mut multi = Multi {
        gw: gw.clone(),
        wire: admitted.wire,
        delay_ms: admitted.delay_ms(),
        partner: admitted.caller.partner.clone(),
        followed: Vec::new(),
        positions,
        ended: HashMap::new(),
        regions: HashMap::new(),
        notes: Vec::new(),
    };
    // The named matches (or the region's live ones, and any the client resumes) are attached
    // before the answer, so an unknown match is a 404 rather than a stream that closes.
    let initial = match &scope {
        Scope::Matches(ids) => ids.clone(),
        Scope::Region(region) => {
            let mut ids = multi.live_in(region).await;
            for id in multi.positions.0.keys() {
                if !ids.contains(id) {
                    ids.push(id.clone());
                }
            }
            ids.truncate(max);
            ids
        }
    };
    let announce = matches!(scope, Scope::Region(_));
    for id in initial {
        match multi.join(&id, announce).await {
            Ok(note) => multi.notes.extend(note),
            Err(e) if !announce => return refuse_attach(&id, e),
            Err(e) => {
                tracing::debug!(match_id = %id, error = %e, "region stream: match not joined")
            }
        }
    }
    let Admitted {
        admission,
        handshake,
        connection,
        ..
    } = admitted;
    let (tx, rx) = mpsc::channel(OUT_BUFFER);
    let region = match scope {
        Scope::Region(r) => Some(r),
        Scope::Matches(_) => None,
    };
    match handshake {
        Some(handshake) => {
            if connection.is_none() {
                return crate::stream::upgrade_required();
            }
            let config = gw.config.clone();
            handshake.accept(move |io, deflate| async move {
                let live = Live::new("multi-ws", admission);
                tokio::spawn(multi.run(region, tx));
                serve_websocket(config, io, rx, deflate).await;
                drop(live);
            })
        }
        None => {
            let live = Live::new("multi-sse", admission);
            tokio::spawn(multi.run(region, tx));
            let retry = Bytes::from(format!(
                "retry: {}\n\n",
                crate::stream::jittered(gw.config.retry_after_ms)
            ));
            let body = futures::stream::once(async move { Ok::<_, std::io::Error>(retry) }).chain(
                tokio_stream::wrappers::ReceiverStream::new(rx).map(move |b| {
                    let _ = &live;
                    Ok(match b {
                        Out::Bytes(b) => b,
                        Out::Close(r) => sse_close(&r),
                    })
                }),
            );
            crate::stream::sse_response(Body::from_stream(body))
        }
    }
}

/// A connected multi-match viewer (counted, holding its places under the caps).
struct Live {
    _admission: Admission,
}

impl Live {
    fn new(transport: &str, admission: Admission) -> Live {
        metrics::MULTI_STREAMS.inc();
        metrics::CONNECTS.with_label_values(&[transport]).inc();
        Live {
            _admission: admission,
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        metrics::MULTI_STREAMS.dec();
        metrics::DISCONNECTS.inc();
    }
}

fn sse_close(r: &CloseReason) -> Bytes {
    let data =
        serde_json::json!({"code": r.code, "reason": r.reason, "retry_after_ms": r.retry_after_ms});
    Bytes::from(format!("event: close\ndata: {data}\n\n"))
}

/// What the merging task hands the connection.
enum Out {
    Bytes(Bytes),
    Close(CloseReason),
}

/// The merging side of a multi-match stream: one queue per followed match.
struct Multi {
    gw: Gateway,
    wire: Wire,
    delay_ms: Option<u64>,
    partner: Option<Arc<protocol::partner::Partner>>,
    followed: Vec<(String, Arc<ViewerQueue>)>,
    positions: Positions,
    /// Matches whose `match_ended` went out, and when they leave the stream.
    ended: HashMap<String, Instant>,
    /// Regions of matches looked up so far (a match's region never changes).
    regions: HashMap<String, (String, MatchStatus)>,
    /// Announcements of the matches a region stream starts with (sent first).
    notes: Vec<Bytes>,
}

impl Drop for Multi {
    fn drop(&mut self) {
        for (_, q) in &self.followed {
            q.close(CloseReason {
                code: 1000,
                reason: "viewer left".into(),
                retry_after_ms: 0,
            });
        }
    }
}

impl Multi {
    /// Attaches to `id`'s hub from the client's position for it; `announce` tells the client
    /// a match joined.
    async fn join(
        &mut self,
        id: &str,
        announce: bool,
    ) -> Result<Option<Bytes>, crate::AttachError> {
        if self.followed.iter().any(|(m, _)| m == id) {
            return Ok(None);
        }
        let since = self.positions.0.get(id).copied();
        let queue = self
            .gw
            .attach_at(id, self.delay_ms, since, self.wire)
            .await?;
        self.followed.push((id.to_string(), queue));
        Ok(announce.then(|| self.announcement(id, "match_started")))
    }

    fn leave(&mut self, id: &str) -> Bytes {
        if let Some(i) = self.followed.iter().position(|(m, _)| m == id) {
            let (_, q) = self.followed.swap_remove(i);
            q.close(CloseReason {
                code: 1000,
                reason: "match ended".into(),
                retry_after_ms: 0,
            });
        }
        self.ended.remove(id);
        let note = self.announcement(id, "match_ended");
        self.positions.0.remove(id);
        note
    }

    /// `{"type":"stream","match":ID,"status":S}`, framed for this viewer.
    fn announcement(&self, id: &str, status: &str) -> Bytes {
        let json = serde_json::json!({"type": "stream", "match": id, "status": status}).to_string();
        match self.wire.transport {
            Transport::WebSocket { .. } => {
                protocol::ws::server_frame(protocol::ws::OP_TEXT, json.as_bytes(), false)
            }
            Transport::Sse => Bytes::from(format!(
                "event: stream\ndata: {json}\nid: {}\n\n",
                self.positions.encode()
            )),
        }
    }

    /// The live matches of `region` this caller may watch (oldest looked-up first).
    async fn live_in(&mut self, region: &str) -> Vec<String> {
        let log = self.gw.log.clone();
        let Ok(ids) = log.match_ids().await else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for id in ids {
            if self.partner.as_deref().is_some_and(|p| !p.covers(&id)) {
                continue;
            }
            // A live match's region is looked up once; its status again on every poll while
            // it is followed or not yet seen to end.
            let known = self.regions.get(&id).cloned();
            let fresh = match known {
                Some((r, MatchStatus::Ended)) => (r, MatchStatus::Ended),
                Some((r, _)) if r != region => continue,
                _ => match log.latest_keyframe(&id).await {
                    Ok(kf) => match serde_json::from_slice::<SpectatorState>(&kf.body) {
                        Ok(s) => (s.region, s.status),
                        Err(_) => continue,
                    },
                    Err(_) => continue,
                },
            };
            let live = fresh.0 == region && fresh.1 == MatchStatus::Live;
            if self.regions.len() > 10_000 {
                self.regions.clear();
            }
            self.regions.insert(id.clone(), fresh);
            if live {
                out.push(id);
            }
        }
        out
    }

    /// Merges the followed matches' frames into `tx` until the viewer leaves or a queue is
    /// closed by its hub (shutdown, drain, a stall), whose reason then closes the stream.
    async fn run(mut self, region: Option<String>, tx: mpsc::Sender<Out>) {
        for note in std::mem::take(&mut self.notes) {
            if tx.send(Out::Bytes(note)).await.is_err() {
                return;
            }
        }
        let mut poll = tokio::time::interval(REGION_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // An SSE comment every 15 s keeps proxies from timing out a quiet stream (a region
        // with no live match); WebSocket viewers are pinged instead.
        let mut keepalive = tokio::time::interval(Duration::from_secs(15));
        keepalive.tick().await;
        let sse = self.wire.transport == Transport::Sse;
        loop {
            let queues: Vec<Arc<ViewerQueue>> =
                self.followed.iter().map(|(_, q)| q.clone()).collect();
            let next = async move {
                if queues.is_empty() {
                    return futures::future::pending().await;
                }
                let waits = queues.iter().map(|q| Box::pin(q.next_batch()));
                let (batch, i, _) = futures::future::select_all(waits).await;
                (i, batch)
            };
            tokio::select! {
                (i, batch) = next => {
                    let id = self.followed[i].0.clone();
                    match batch {
                        Ok(frames) => {
                            let mut ended = false;
                            for f in &frames {
                                if f.kind != FrameKind::Status {
                                    self.positions.0.insert(id.clone(), f.position);
                                }
                                ended |= f.event_kind == Some("match_ended");
                                let out = self.frame_bytes(f);
                                if tx.send(Out::Bytes(out)).await.is_err() {
                                    return;
                                }
                            }
                            if ended && region.is_some() {
                                // Its final delta follows the event; then it leaves.
                                self.ended.entry(id).or_insert_with(|| Instant::now() + Duration::from_secs(1));
                            }
                        }
                        Err(reason) => {
                            let _ = tx.send(Out::Close(reason)).await;
                            return;
                        }
                    }
                }
                _ = poll.tick(), if region.is_some() => {
                    let region = region.as_deref().expect("checked");
                    let due: Vec<String> = self.ended.iter().filter(|(_, at)| Instant::now() >= **at).map(|(id, _)| id.clone()).collect();
                    for id in due {
                        let note = self.leave(&id);
                        if tx.send(Out::Bytes(note)).await.is_err() {
                            return;
                        }
                    }
                    let live = self.live_in(region).await;
                    // Followed matches no longer live (ended without our seeing the event).
                    let gone: Vec<String> = self.followed.iter().map(|(m, _)| m.clone()).filter(|m| !live.contains(m) && !self.ended.contains_key(m)).collect();
                    for id in gone {
                        if self.regions.get(&id).is_some_and(|(_, s)| *s == MatchStatus::Ended) {
                            let note = self.leave(&id);
                            if tx.send(Out::Bytes(note)).await.is_err() {
                                return;
                            }
                        }
                    }
                    for id in live {
                        if self.followed.len() >= self.gw.config.max_matches_per_stream {
                            break;
                        }
                        if let Ok(Some(note)) = self.join(&id, true).await {
                            if tx.send(Out::Bytes(note)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                _ = keepalive.tick(), if sse => {
                    if tx.send(Out::Bytes(Bytes::from_static(b": keepalive\n\n"))).await.is_err() {
                        return;
                    }
                }
                _ = tx.closed() => return,
            }
        }
    }

    /// A frame as this viewer is sent it: the pre-built bytes, and for SSE the position of
    /// every match as the event's id (the last `id` field of an event wins, so it follows the
    /// frame's own).
    fn frame_bytes(&self, f: &protocol::Frame) -> Bytes {
        let bytes = self.wire.bytes(f);
        match self.wire.transport {
            Transport::WebSocket { .. } => bytes.clone(),
            Transport::Sse => {
                let body = bytes.slice(..bytes.len().saturating_sub(1));
                let mut out = Vec::with_capacity(body.len() + 64);
                out.extend_from_slice(&body);
                out.extend_from_slice(b"id: ");
                out.extend_from_slice(self.positions.encode().as_bytes());
                out.extend_from_slice(b"\n\n");
                Bytes::from(out)
            }
        }
    }
}

/// A multi-match WebSocket viewer: writes what the merging task hands over, answers pings,
/// pings on the gateway's interval and closes a viewer silent for three of them.
async fn serve_websocket(
    config: Arc<crate::GatewayConfig>,
    io: hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>,
    mut rx: mpsc::Receiver<Out>,
    deflate: bool,
) {
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut reader = protocol::ws::ClientReader::new(config.max_inbound_frame, deflate);
    let mut buf = [0u8; 512];
    let mut ping = tokio::time::interval(config.ping_interval);
    ping.tick().await;
    let mut heard = Instant::now();
    let close = loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(Out::Bytes(b)) => {
                    match tokio::time::timeout(config.stall_deadline, wr.write_all(&b)).await {
                        Ok(Ok(())) => {}
                        _ => return,
                    }
                }
                Some(Out::Close(r)) => break Some((r.code, r.reason)),
                None => break Some((1011, "stream ended".to_string())),
            },
            n = rd.read(&mut buf) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    heard = Instant::now();
                    match reader.push(&buf[..n]) {
                        Ok(events) => {
                            let mut closed = false;
                            for e in events {
                                match e {
                                    protocol::ws::ClientEvent::Ping(p) => {
                                        let pong = protocol::ws::server_frame(protocol::ws::OP_PONG, &p, false);
                                        if wr.write_all(&pong).await.is_err() {
                                            return;
                                        }
                                    }
                                    protocol::ws::ClientEvent::Close(_) => closed = true,
                                    _ => {}
                                }
                            }
                            if closed {
                                break None;
                            }
                        }
                        Err(e) => {
                            metrics::REFUSED_FRAMES.with_label_values(&[&e.close_code().to_string()]).inc();
                            break Some((e.close_code(), e.to_string()));
                        }
                    }
                }
            },
            _ = ping.tick() => {
                if heard.elapsed() > config.ping_interval * 3 {
                    break Some((1001, "idle: no pong".into()));
                }
                let frame = protocol::ws::server_frame(protocol::ws::OP_PING, b"", false);
                if wr.write_all(&frame).await.is_err() {
                    return;
                }
            }
        }
    };
    let (code, reason) = close.unwrap_or((1000, String::new()));
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = wr
            .write_all(&protocol::ws::close_frame(code, &reason))
            .await;
        let _ = wr.shutdown().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_through_one_event_id() {
        let text = "eu-1:3:120,eu-2:7:15";
        let p = Positions::parse(text, 32).unwrap();
        assert_eq!(p.0.len(), 2);
        assert_eq!(
            p.0["eu-2"],
            StreamPosition {
                epoch: 7,
                version: 15
            }
        );
        assert_eq!(p.encode(), text);
        assert_eq!(Positions::parse("", 32).unwrap(), Positions::default());
    }

    #[test]
    fn malformed_positions_are_refused_with_the_reason() {
        for (bad, why) in [
            ("eu-1", "not match:epoch:version"),
            ("eu 1:1:2", "not a match id"),
            ("eu-1:x:2", "eu-1"),
            ("eu-1:1:2,eu-1:1:3", "twice"),
            ("a:1:1,b:1:1,c:1:1", "more than 2"),
        ] {
            let e = Positions::parse(bad, 2).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    fn query(matches: Option<&str>, region: Option<&str>) -> StreamQuery {
        StreamQuery {
            matches: matches.map(str::to_string),
            region: region.map(str::to_string),
            ..StreamQuery::default()
        }
    }

    #[test]
    fn a_stream_names_its_matches_or_a_region_within_the_cap() {
        assert_eq!(
            scope_of(&query(Some("a, b,a"), None), 2).unwrap(),
            Scope::Matches(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            scope_of(&query(None, Some("eu")), 2).unwrap(),
            Scope::Region("eu".into())
        );
        for (q, field) in [
            (query(Some("a,b,c"), None), "matches"),
            (query(Some("a,b c"), None), "matches"),
            (query(Some(","), None), "matches"),
            (query(None, None), "matches"),
            (query(Some("a"), Some("eu")), "matches"),
            (query(None, Some("e/u")), "region"),
        ] {
            let e = scope_of(&q, 2).unwrap_err();
            let body = format!("{e:?}");
            assert!(body.contains(field), "{q:?}: {body}");
        }
    }
}
