//! `GET /v1/matches/{id}/stream`: WebSocket when the request asks to upgrade, Server-Sent
//! Events when it accepts `text/event-stream`. Both go through the same checks (token, resume
//! position, match) and the same hub attach; only the framing differs.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use httpkit::{authenticate_caller, ApiError};
use protocol::{parse_position, Format, StreamPosition};
use rand::Rng;
use serde::Deserialize;

use crate::limits::{CapExceeded, CapGuard, SharedPlace, SharedRefusal};
use crate::metrics;
use crate::queue::{CloseReason, Filter, Transport, ViewerQueue, Wire};
use crate::replay::{Pace, ReplayError};
use crate::websocket::{self, Handshake};
use crate::{AttachError, Gateway};

#[derive(Debug, Deserialize, Default)]
pub(crate) struct StreamQuery {
    pub(crate) since: Option<String>,
    pub(crate) token: Option<String>,
    pub(crate) format: Option<String>,
    pub(crate) types: Option<String>,
    pub(crate) kinds: Option<String>,
    pub(crate) from: Option<String>,
    pub(crate) pace: Option<String>,
    /// Multi-match streams: the matches (comma separated), or a region whose live matches
    /// join as they start.
    pub(crate) matches: Option<String>,
    pub(crate) region: Option<String>,
}

/// `?from=start[&pace=realtime]`: whether the viewer asked for a replay from the start, and
/// at which pace; the field is named when a value is not understood.
pub(crate) fn replay_pace(
    from: Option<&str>,
    pace: Option<&str>,
) -> Result<Option<Pace>, ApiError> {
    let replay = match from {
        None => false,
        Some("start") => true,
        Some(_) => return Err(ApiError::invalid("from", "expected start")),
    };
    match (replay, pace) {
        (_, Some(p)) if p != "realtime" && p != "read" => {
            Err(ApiError::invalid("pace", "expected realtime or read"))
        }
        (false, Some(_)) => Err(ApiError::invalid("pace", "only with from=start")),
        (false, None) => Ok(None),
        (true, Some("realtime")) => Ok(Some(Pace::Realtime)),
        (true, _) => Ok(Some(Pace::AsRead)),
    }
}

pub(crate) fn wants_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

pub(crate) fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

fn too_many_handshakes() -> Response {
    reject(
        "rate_limited",
        ApiError::too_many("too many connection attempts from this address; retry later"),
    )
}

fn refuse_cap(gw: &Gateway, cap: CapExceeded) -> Response {
    match cap {
        CapExceeded::User => reject(
            "user_cap",
            ApiError::too_many(format!(
                "at most {} concurrent streams per user",
                gw.config.max_streams_per_user
            )),
        ),
        CapExceeded::Address => reject(
            "address_cap",
            ApiError::too_many(format!(
                "at most {} concurrent streams per address",
                gw.config.max_streams_per_address
            )),
        ),
    }
}

/// A stream's admission under the connection caps: its place on this gateway, and in the
/// fleet when caps are shared; both are given back when the stream ends.
pub(crate) struct Admission {
    _local: CapGuard,
    _shared: Option<SharedPlace>,
}

pub(crate) fn reject(reason: &'static str, e: ApiError) -> Response {
    metrics::REJECTED.with_label_values(&[reason]).inc();
    e.into_response()
}

/// A stream request that passed every check common to the single- and multi-match streams:
/// handshake rate, credentials, connection caps, transport, origin, format and filter.
pub(crate) struct Admitted {
    pub(crate) caller: httpkit::Caller,
    pub(crate) admission: Admission,
    pub(crate) wire: Wire,
    pub(crate) handshake: Option<Handshake>,
    pub(crate) connection: Option<Arc<httpkit::Connection>>,
    /// The resume position as sent (`Last-Event-ID` for SSE, else `?since=`), with the name of
    /// the field it came from.
    pub(crate) since: (&'static str, Option<String>),
}

impl Admitted {
    /// The delay this caller watches at instead of a match's own (a partner's), if any.
    pub(crate) fn delay_ms(&self) -> Option<u64> {
        self.caller.partner.as_deref().and_then(|p| p.delay_ms)
    }
}

/// Checks a stream request up to the point where it needs its match(es). `matches` are the
/// matches named in the request, which a partner key must cover.
pub(crate) async fn admit(
    gw: &Gateway,
    parts: &mut axum::http::request::Parts,
    query: &StreamQuery,
    matches: &[&str],
) -> Result<Admitted, Response> {
    let connection = parts.extensions.get::<Arc<httpkit::Connection>>().cloned();
    // Floods are shed before any work: a handshake rate per address, then the token, then
    // the concurrent connection caps per user and per address.
    let address = httpkit::limit_key_of(&parts.extensions).unwrap_or(IpAddr::from([0, 0, 0, 0]));
    if !gw.handshakes.allow(address) {
        return Err(too_many_handshakes());
    }
    let caller = match authenticate_caller(
        &gw.signer,
        &gw.partners,
        &parts.headers,
        query.token.as_deref(),
    ) {
        Ok(c) => c,
        Err(e) => return Err(reject("unauthorized", e)),
    };
    let claims = &caller.claims;
    // A partner key carries its own stream cap (in place of the per-user one, and the
    // per-address one when larger: a partner's consumers often share one address).
    let caps = match caller.partner.as_deref() {
        None => (
            gw.config.max_streams_per_user,
            gw.config.max_streams_per_address,
        ),
        Some(partner) => {
            if let Some(m) = matches.iter().find(|m| !partner.covers(m)) {
                return Err(reject(
                    "forbidden",
                    ApiError::new(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        format!("token: this partner key does not cover match {m:?}"),
                    ),
                ));
            }
            let cap = partner
                .max_streams
                .map_or(gw.config.max_streams_per_user, |n| n as usize);
            (cap, cap.max(gw.config.max_streams_per_address))
        }
    };
    let local = match gw.caps.acquire_within(&claims.sub, address, caps) {
        Ok(g) => g,
        Err(cap) => return Err(refuse_cap(gw, cap)),
    };
    let shared = match &gw.shared {
        None => None,
        Some(shared) => {
            match shared
                .take(&claims.sub, address, caps, gw.config.handshakes_per_sec)
                .await
            {
                Ok(place) => place,
                Err(SharedRefusal::Rate) => return Err(too_many_handshakes()),
                Err(SharedRefusal::Cap(cap)) => return Err(refuse_cap(gw, cap)),
            }
        }
    };
    let admission = Admission {
        _local: local,
        _shared: shared,
    };
    let websocket = wants_websocket(&parts.headers);
    if !websocket && !wants_sse(&parts.headers) {
        return Err(reject(
            "bad_request",
            ApiError::new(
                StatusCode::NOT_ACCEPTABLE,
                "not_acceptable",
                "ask for a WebSocket upgrade or send Accept: text/event-stream",
            ),
        ));
    }
    // SSE clients resume with Last-Event-ID (what EventSource sends by itself); both
    // transports also take ?since= for the first connection.
    let last_event_id = (!websocket)
        .then(|| parts.headers.get("last-event-id"))
        .flatten()
        .map(|v| v.to_str().unwrap_or("\u{0}").to_string());
    let since = match last_event_id {
        Some(id) => ("Last-Event-ID", Some(id)),
        None => ("since", query.since.clone()),
    };
    if websocket && !gw.config.cors.allows_handshake(&parts.headers) {
        return Err(reject(
            "origin",
            ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_origin",
                "pages of this Origin may not open streams here (see --cors-origins)",
            ),
        ));
    }
    let format = match choose_format(query.format.as_deref(), websocket.then_some(&parts.headers)) {
        Ok(f) => f,
        Err(e) => return Err(reject("bad_request", e)),
    };
    let filter = match Filter::parse(query.types.as_deref(), query.kinds.as_deref()) {
        Ok(f) => f,
        Err((field, why)) => return Err(reject("bad_request", ApiError::invalid(field, why))),
    };
    let handshake = if websocket {
        match Handshake::check(parts, format) {
            Ok(h) => Some(h),
            Err(e) => return Err(reject("bad_request", e)),
        }
    } else {
        None
    };
    let wire = Wire {
        format,
        filter,
        transport: match &handshake {
            Some(h) => Transport::WebSocket {
                deflate: h.deflate(),
            },
            None => Transport::Sse,
        },
    };
    if let Some(partner) = caller.partner.as_deref() {
        metrics::PARTNER_STREAMS
            .with_label_values(&[partner.name.as_str()])
            .inc();
        tracing::info!(partner = %partner.name, ?matches, delay_ms = ?partner.delay_ms, "partner stream");
    }
    Ok(Admitted {
        caller,
        admission,
        wire,
        handshake,
        connection,
        since,
    })
}

/// A viewer's stream of one match: a snapshot, then deltas and events in version order
/// (resumable from a position; a gap or an older position gets a fresh snapshot). The
/// message contract is in docs/architecture.md.
#[utoipa::path(get, path = "/v1/matches/{id}/stream", tag = "streams", operation_id = "match_stream",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The match id"),
        ("since" = Option<String>, Query, description = "`<epoch>:<version>` to resume from"),
        ("token" = Option<String>, Query, description = "Bearer token for clients that cannot set headers (it reaches proxy logs: prefer the header)"),
        ("Last-Event-ID" = Option<String>, Header, description = "SSE resume position `<epoch>:<version>`"),
        ("format" = Option<String>, Query, description = "`v1` (default) or `v2`, the compact feed (WebSocket clients may ask with the subprotocol grandstand.v2)"),
        ("types" = Option<String>, Query, description = "`delta,event`: which message types follow the snapshot (default both)"),
        ("kinds" = Option<String>, Query, description = "Event kinds to send: match_started,player_joined,player_left,kill,match_ended (default all)"),
        ("from" = Option<String>, Query, description = "`start`: replay the match from its first retained keyframe, then on into the live line; on an ended match the stream closes after match_ended (close 1000, reason: match ended)"),
        ("pace" = Option<String>, Query, description = "With from=start: `read` (default, as fast as the viewer reads) or `realtime` (at match speed)"),
    ),
    responses(
        (status = 101, description = "WebSocket (on an upgrade request; subprotocols grandstand.v1 and grandstand.v2; permessage-deflate when offered)"),
        (status = 200, description = "Server-Sent Events (with `Accept: text/event-stream`)", content_type = "text/event-stream", body = String),
        (status = 400, description = "A query parameter, subprotocol or `since` is malformed (the message names it)", body = httpkit::openapi::ErrorBody),
        (status = 401, description = "Missing, forged or expired token", body = httpkit::openapi::ErrorBody),
        (status = 403, description = "forbidden_origin (WebSocket from an origin not in --cors-origins) or forbidden (a partner key that does not cover this match)", body = httpkit::openapi::ErrorBody),
        (status = 404, description = "No such match", body = httpkit::openapi::ErrorBody),
        (status = 406, description = "Neither a WebSocket upgrade nor `Accept: text/event-stream`", body = httpkit::openapi::ErrorBody),
        (status = 429, description = "rate_limited (handshakes per address), user_cap/address_cap (concurrent streams) or replay_cap (every replay slot taken; Retry-After)", body = httpkit::openapi::ErrorBody),
        (status = 503, description = "unavailable (match log down) or behind (this gateway has not reached the resume position yet; Retry-After)", body = httpkit::openapi::ErrorBody),
    ))]
pub(crate) async fn handle(
    State(gw): State<Gateway>,
    Path(match_id): Path<String>,
    req: Request,
) -> Response {
    let (mut parts, _) = req.into_parts();
    let query = match Query::<StreamQuery>::try_from_uri(&parts.uri) {
        Ok(Query(q)) => q,
        Err(e) => return reject("bad_request", ApiError::invalid("query", e.body_text())),
    };
    let admitted = match admit(&gw, &mut parts, &query, &[match_id.as_str()]).await {
        Ok(a) => a,
        Err(res) => return res,
    };
    let (field, raw_since) = &admitted.since;
    let since: Option<StreamPosition> = match raw_since.as_deref().map(parse_position) {
        None => None,
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => return reject("bad_request", ApiError::invalid(field, e)),
    };
    let pace = match replay_pace(query.from.as_deref(), query.pace.as_deref()) {
        Ok(p) => p,
        Err(e) => return reject("bad_request", e),
    };
    let (wire, delay_ms) = (admitted.wire, admitted.delay_ms());
    let attached = match pace {
        None => gw.attach_at(&match_id, delay_ms, since, wire).await,
        Some(pace) => crate::replay::start(&gw, &match_id, delay_ms, since, wire, pace)
            .await
            .map_err(|e| match e {
                ReplayError::Full => AttachError::ReplaysFull,
                ReplayError::UnknownMatch => AttachError::UnknownMatch,
                ReplayError::Unavailable => AttachError::Unavailable,
            }),
    };
    let queue = match attached {
        Ok(q) => q,
        Err(e) => return refuse_attach(&match_id, e),
    };
    let Admitted {
        admission,
        handshake,
        connection,
        ..
    } = admitted;
    match handshake {
        Some(handshake) => match connection {
            Some(connection) => {
                let connected = Connected::new(queue, "ws", admission);
                let config = gw.config.clone();
                handshake.accept(move |io, deflate| {
                    websocket::serve(config, io, connected, deflate, connection)
                })
            }
            None => upgrade_required(),
        },
        None => sse_viewer(gw, queue, admission),
    }
}

pub(crate) fn upgrade_required() -> Response {
    reject(
        "bad_request",
        ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "this connection cannot be upgraded to a WebSocket",
        ),
    )
}

/// The answer to a stream its hub (or its replay) could not take.
pub(crate) fn refuse_attach(match_id: &str, e: AttachError) -> Response {
    match e {
        AttachError::UnknownMatch => reject(
            "unknown_match",
            ApiError::not_found(format!("no match {match_id:?}")),
        ),
        AttachError::Unavailable => reject(
            "unavailable",
            ApiError::unavailable("match log unavailable; retry"),
        ),
        AttachError::ReplaysFull => {
            let mut res = reject(
                "replay_cap",
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "replay_cap",
                    "every replay slot of this gateway is taken (see --max-replays); retry later, or watch live without from=start",
                ),
            );
            res.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
            res
        }
        AttachError::Behind => {
            let mut res = reject(
                "behind",
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "behind",
                    "this gateway has not reached the position you resume from yet; retry (here or on another gateway)",
                ),
            );
            res.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            res
        }
    }
}

/// The feed format a viewer asked for: `?format=`, or (WebSocket) the subprotocol
/// `grandstand.v1|v2`; v1 when neither says. Unknown values are refused naming the field.
fn choose_format(query: Option<&str>, ws_headers: Option<&HeaderMap>) -> Result<Format, ApiError> {
    let from_query = match query {
        None => None,
        Some(f) => {
            Some(Format::parse(f).ok_or_else(|| ApiError::invalid("format", "expected v1 or v2"))?)
        }
    };
    let offered: Vec<&str> = ws_headers
        .into_iter()
        .flat_map(|h| h.get_all(header::SEC_WEBSOCKET_PROTOCOL))
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let from_subprotocol = if offered.is_empty() {
        None
    } else {
        // The last known one the client lists (a client lists newer formats last or alone).
        let known = offered
            .iter()
            .rev()
            .find_map(|p| Format::from_subprotocol(p));
        Some(known.ok_or_else(|| {
            ApiError::invalid(
                "Sec-WebSocket-Protocol",
                "expected grandstand.v1 or grandstand.v2",
            )
        })?)
    };
    match (from_query, from_subprotocol) {
        (Some(q), Some(p)) if q != p => Err(ApiError::invalid(
            "format",
            format!(
                "?format={} but the subprotocol asks for {}",
                format_name(q),
                format_name(p)
            ),
        )),
        (q, p) => Ok(q.or(p).unwrap_or_default()),
    }
}

fn format_name(f: Format) -> &'static str {
    match f {
        Format::V1 => "v1",
        Format::V2 => "v2",
    }
}

/// Counts a connected viewer while alive (and holds its places under the connection caps);
/// closes its queue on the way out so the hub drops it.
pub(crate) struct Connected {
    pub(crate) queue: Arc<ViewerQueue>,
    _admission: Admission,
}

impl Connected {
    fn new(queue: Arc<ViewerQueue>, transport: &str, admission: Admission) -> Connected {
        metrics::VIEWERS.inc();
        metrics::CONNECTS.with_label_values(&[transport]).inc();
        Connected {
            queue,
            _admission: admission,
        }
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.queue.close(CloseReason {
            code: 1000,
            reason: "viewer left".into(),
            retry_after_ms: 0,
        });
        metrics::VIEWERS.dec();
        metrics::DISCONNECTS.inc();
    }
}

/// Records publish -> written for a sampled viewer's batch (one viewer in 64: a histogram per
/// viewer and message would cost more than the write it measures).
pub(crate) fn sample_latency(queue: &ViewerQueue, frames: &[Arc<protocol::Frame>]) {
    if !queue.sampled {
        return;
    }
    if let Some(p) = frames.iter().find_map(|f| f.published_us) {
        metrics::PUBLISH_TO_SEND.observe(protocol::now_us().saturating_sub(p) as f64 / 1e6);
    }
}

pub(crate) fn jittered(ms: u64) -> u64 {
    let spread = ms / 5;
    ms - spread + rand::rng().random_range(0..=2 * spread)
}

/// An SSE viewer: the response body yields each queued frame's pre-built event (shared bytes,
/// no copy; hyper gathers what is ready into one vectored write), a keepalive comment after
/// 15 s without one (one timer per viewer, not per message), and a final `close` event.
fn sse_viewer(gw: Gateway, queue: Arc<ViewerQueue>, admission: Admission) -> Response {
    let connected = Connected::new(queue.clone(), "sse", admission);
    let retry = Bytes::from(format!("retry: {}\n\n", jittered(gw.config.retry_after_ms)));
    struct Sse {
        connected: Connected,
        head: Option<Bytes>,
        ready: std::vec::IntoIter<Arc<protocol::Frame>>,
        done: bool,
        retry_after_ms: u64,
        keepalive: tokio::time::Interval,
    }
    let mut keepalive = tokio::time::interval(Duration::from_secs(15));
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = Sse {
        connected,
        head: Some(retry),
        ready: Vec::new().into_iter(),
        done: false,
        retry_after_ms: gw.config.retry_after_ms,
        keepalive,
    };
    let body = futures::stream::unfold(state, |mut s| async move {
        if let Some(head) = s.head.take() {
            s.keepalive.reset();
            return Some((Ok::<Bytes, std::io::Error>(head), s));
        }
        loop {
            let queue = &s.connected.queue;
            if let Some(f) = s.ready.next() {
                let bytes = queue.wire.bytes(&f).clone();
                return Some((Ok(bytes), s));
            }
            if s.done {
                return None;
            }
            tokio::select! {
                batch = queue.next_batch() => match batch {
                    Ok(frames) => {
                        sample_latency(queue, &frames);
                        s.keepalive.reset();
                        s.ready = frames.into_iter();
                    }
                    Err(reason) => {
                        s.done = true;
                        let retry = reason.retry_after_ms.max(s.retry_after_ms);
                        let data = serde_json::json!({"code": reason.code, "reason": reason.reason, "retry_after_ms": retry});
                        return Some((Ok(Bytes::from(format!("event: close\ndata: {data}\n\n"))), s));
                    }
                },
                // A comment line keeps proxies from timing the stream out.
                _ = s.keepalive.tick() => return Some((Ok(Bytes::from_static(b": keepalive\n\n")), s)),
            }
        }
    });
    sse_response(Body::from_stream(body))
}

/// An SSE answer: never cached, never buffered by a proxy.
pub(crate) fn sse_response(body: Body) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(body)
        .expect("static response parts")
}
