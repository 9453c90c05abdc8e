//! `GET /v1/matches/{id}/stream`: WebSocket when the request asks to upgrade, Server-Sent
//! Events when it accepts `text/event-stream`. Both go through the same checks (token, resume
//! position, match) and the same hub attach; only the framing differs.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use httpkit::{authenticate, ApiError};
use protocol::{parse_position, StreamPosition};
use rand::Rng;
use serde::Deserialize;
use tokio_tungstenite::tungstenite;

use crate::limits::{CapExceeded, CapGuard, SharedPlace, SharedRefusal};
use crate::metrics;
use crate::queue::{CloseReason, ViewerQueue};
use crate::{AttachError, Gateway};

#[derive(Debug, Deserialize, Default)]
pub(crate) struct StreamQuery {
    since: Option<String>,
    token: Option<String>,
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

fn reject(reason: &'static str, e: ApiError) -> Response {
    metrics::REJECTED.with_label_values(&[reason]).inc();
    e.into_response()
}

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
    // Floods are shed before any work: a handshake rate per address, then the token, then
    // the concurrent connection caps per user and per address.
    let address = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    if !gw.handshakes.allow(address) {
        return too_many_handshakes();
    }
    let claims = match authenticate(&gw.signer, &parts.headers, query.token.as_deref()) {
        Ok(c) => c,
        Err(e) => return reject("unauthorized", e),
    };
    let local = match gw.caps.acquire(&claims.sub, address) {
        Ok(g) => g,
        Err(cap) => return refuse_cap(&gw, cap),
    };
    let shared = match &gw.shared {
        None => None,
        Some(shared) => {
            let caps = (
                gw.config.max_streams_per_user,
                gw.config.max_streams_per_address,
            );
            match shared
                .take(&claims.sub, address, caps, gw.config.handshakes_per_sec)
                .await
            {
                Ok(place) => place,
                Err(SharedRefusal::Rate) => return too_many_handshakes(),
                Err(SharedRefusal::Cap(cap)) => return refuse_cap(&gw, cap),
            }
        }
    };
    let admission = Admission {
        _local: local,
        _shared: shared,
    };
    let websocket = wants_websocket(&parts.headers);
    if !websocket && !wants_sse(&parts.headers) {
        return reject(
            "bad_request",
            ApiError::new(
                StatusCode::NOT_ACCEPTABLE,
                "not_acceptable",
                "ask for a WebSocket upgrade or send Accept: text/event-stream",
            ),
        );
    }
    // SSE clients resume with Last-Event-ID (what EventSource sends by itself); both
    // transports also take ?since= for the first connection.
    let last_event_id = (!websocket)
        .then(|| parts.headers.get("last-event-id"))
        .flatten()
        .map(|v| v.to_str().unwrap_or("\u{0}").to_string());
    let (field, raw_since) = match last_event_id {
        Some(id) => ("Last-Event-ID", Some(id)),
        None => ("since", query.since),
    };
    let since: Option<StreamPosition> = match raw_since.as_deref().map(parse_position) {
        None => None,
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => return reject("bad_request", ApiError::invalid(field, e)),
    };
    let upgrade = if websocket {
        match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(u) => Some(u),
            Err(e) => return reject("bad_request", ApiError::invalid("upgrade", e.body_text())),
        }
    } else {
        None
    };
    let queue = match gw.attach(&match_id, since).await {
        Ok(q) => q,
        Err(AttachError::UnknownMatch) => {
            return reject(
                "unknown_match",
                ApiError::not_found(format!("no match {match_id:?}")),
            )
        }
        Err(AttachError::Unavailable) => {
            return reject(
                "unavailable",
                ApiError::unavailable("match log unavailable; retry"),
            )
        }
        Err(AttachError::Behind) => {
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
            return res;
        }
    };
    match upgrade {
        Some(upgrade) => {
            let max = gw.config.max_inbound_frame;
            // Viewers send only pings and small control text, so a small read buffer does
            // (tungstenite's default is 128 KiB per connection); writes are flushed per batch.
            upgrade
                .read_buffer_size(4 * 1024)
                .write_buffer_size(8 * 1024)
                .max_message_size(max)
                .max_frame_size(max)
                .on_upgrade(move |socket| websocket_viewer(gw, socket, queue, admission))
        }
        None => sse_viewer(gw, queue, admission),
    }
}

/// What ends a viewer's connection, as a close reason; `None` when the client went away.
fn close_for_read_error(e: axum::Error) -> Option<CloseReason> {
    let inner = e.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => Some(CloseReason {
            code: 1009,
            reason: "frame too large".into(),
            retry_after_ms: 0,
        }),
        Some(tungstenite::Error::Utf8(_)) => Some(CloseReason {
            code: 1007,
            reason: "text frame is not valid UTF-8".into(),
            retry_after_ms: 0,
        }),
        Some(tungstenite::Error::Protocol(p)) => Some(CloseReason {
            code: 1002,
            reason: format!("protocol error: {p}").chars().take(100).collect(),
            retry_after_ms: 0,
        }),
        _ => None,
    }
}

/// Counts a connected viewer while alive (and holds its places under the connection caps);
/// closes its queue on the way out so the hub drops it.
struct Connected {
    queue: Arc<ViewerQueue>,
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

fn record_sent(frames: &[Arc<protocol::Frame>], bytes: usize) {
    metrics::MESSAGES_OUT.inc_by(frames.len() as u64);
    metrics::BYTES_OUT.inc_by(bytes as u64);
    let now = protocol::now_us();
    for f in frames {
        if let Some(p) = f.published_us {
            metrics::PUBLISH_TO_SEND.observe(now.saturating_sub(p) as f64 / 1e6);
        }
    }
}

fn jittered(ms: u64) -> u64 {
    let spread = ms / 5;
    ms - spread + rand::rng().random_range(0..=2 * spread)
}

async fn websocket_viewer(
    gw: Gateway,
    socket: WebSocket,
    queue: Arc<ViewerQueue>,
    admission: Admission,
) {
    let _connected = Connected::new(queue.clone(), "ws", admission);
    let config = gw.config.clone();
    let (mut sink, mut incoming) = socket.split();
    let mut ping = tokio::time::interval(config.ping_interval);
    ping.tick().await;
    let mut last_heard = Instant::now();
    let close = loop {
        tokio::select! {
            batch = queue.next_batch() => match batch {
                Ok(frames) => {
                    // Everything queued goes out as one flush.
                    let write = async {
                        let mut bytes = 0;
                        for f in &frames {
                            bytes += f.json.len();
                            let text = Utf8Bytes::try_from(f.json.clone()).expect("frames are JSON text");
                            sink.feed(Message::Text(text)).await?;
                        }
                        sink.flush().await.map(|_| bytes)
                    };
                    match tokio::time::timeout(config.stall_deadline, write).await {
                        Ok(Ok(bytes)) => record_sent(&frames, bytes),
                        Ok(Err(_)) => break None,
                        Err(_) => {
                            metrics::STALLED_CLOSED.inc();
                            break Some(CloseReason { code: 1008, reason: "viewer stopped reading".into(), retry_after_ms: config.retry_after_ms });
                        }
                    }
                }
                Err(reason) => break Some(reason),
            },
            msg = incoming.next() => match msg {
                None | Some(Ok(Message::Close(_))) => break None,
                // Viewers cannot publish: their text and binary frames are read and ignored.
                Some(Ok(_)) => last_heard = Instant::now(),
                Some(Err(e)) => break close_for_read_error(e),
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > config.ping_interval * 3 {
                    break Some(CloseReason { code: 1001, reason: "idle: no pong".into(), retry_after_ms: config.retry_after_ms });
                }
                if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                    break None;
                }
            }
        }
    };
    if let Some(reason) = close {
        let text = if reason.retry_after_ms > 0 {
            format!(
                "{}; retry-after={}ms",
                reason.reason,
                jittered(reason.retry_after_ms)
            )
        } else {
            reason.reason.clone()
        };
        let frame = CloseFrame {
            code: reason.code,
            reason: Utf8Bytes::from(text.chars().take(120).collect::<String>()),
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            sink.send(Message::Close(Some(frame))),
        )
        .await;
    }
}

fn sse_viewer(gw: Gateway, queue: Arc<ViewerQueue>, admission: Admission) -> Response {
    let connected = Connected::new(queue.clone(), "sse", admission);
    let retry = Bytes::from(format!("retry: {}\n\n", jittered(gw.config.retry_after_ms)));
    struct Sse {
        queue: Arc<ViewerQueue>,
        _connected: Connected,
        head: Option<Bytes>,
        done: bool,
        retry_after_ms: u64,
    }
    let state = Sse {
        queue,
        _connected: connected,
        head: Some(retry),
        done: false,
        retry_after_ms: gw.config.retry_after_ms,
    };
    let body = futures::stream::unfold(state, |mut s| async move {
        if let Some(head) = s.head.take() {
            return Some((Ok::<Bytes, std::io::Error>(head), s));
        }
        if s.done {
            return None;
        }
        tokio::select! {
            batch = s.queue.next_batch() => match batch {
                Ok(frames) => {
                    let mut out = Vec::with_capacity(frames.iter().map(|f| f.sse.len()).sum());
                    for f in &frames {
                        out.extend_from_slice(&f.sse);
                    }
                    record_sent(&frames, out.len());
                    Some((Ok(Bytes::from(out)), s))
                }
                Err(reason) => {
                    s.done = true;
                    let retry = reason.retry_after_ms.max(s.retry_after_ms);
                    let data = serde_json::json!({"code": reason.code, "reason": reason.reason, "retry_after_ms": retry});
                    Some((Ok(Bytes::from(format!("event: close\ndata: {data}\n\n"))), s))
                }
            },
            // A comment line keeps proxies from timing the stream out.
            _ = tokio::time::sleep(Duration::from_secs(15)) => Some((Ok(Bytes::from_static(b": keepalive\n\n")), s)),
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(Body::from_stream(body))
        .expect("static response parts")
}
