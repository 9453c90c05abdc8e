//! A viewer's WebSocket, without a general-purpose WebSocket library in the way: the hub
//! writes the frames it built once per match (header and payload, compressed once when the
//! viewer negotiated permessage-deflate) straight to the viewer's socket, a batch per vectored
//! write, and this module reads what the viewer sends with the pure
//! [`protocol::ws::ClientReader`].
//!
//! Per viewer this holds no read or write buffer while idle (a small stack buffer for reads,
//! the reader's own buffer only while a frame is incomplete), no timer (the hub pings its
//! viewers and finds silent or stalled ones on its sweep) and checks no UTF-8 of what the
//! gateway itself produced.

use std::future::Future;
use std::time::Duration;

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use httpkit::ApiError;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use protocol::ws::{self, ClientEvent, ClientReader};
use protocol::Format;
use tokio::io::AsyncReadExt;

use crate::metrics;
use crate::queue::{CloseReason, Flushed, ViewerQueue};
use crate::stream::{jittered, Connected};

/// A checked opening handshake, not yet answered.
pub(crate) struct Handshake {
    on_upgrade: OnUpgrade,
    accept: String,
    subprotocol: Option<&'static str>,
    deflate: Option<String>,
}

impl Handshake {
    /// Checks the upgrade request (RFC 6455 section 4.2.1) and negotiates: the subprotocol is
    /// echoed when the client named one, permessage-deflate is accepted for v2 (the format the
    /// hub compresses).
    pub(crate) fn check(parts: &mut Parts, format: Format) -> Result<Handshake, ApiError> {
        let headers = &parts.headers;
        let connection_upgrade = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
        if !connection_upgrade {
            return Err(ApiError::invalid("Connection", "expected `upgrade`"));
        }
        if headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .and_then(|v| v.to_str().ok())
            != Some("13")
        {
            return Err(ApiError::invalid("Sec-WebSocket-Version", "expected 13"));
        }
        let key = headers
            .get(header::SEC_WEBSOCKET_KEY)
            .and_then(|v| v.to_str().ok())
            .filter(|k| !k.trim().is_empty())
            .ok_or_else(|| ApiError::invalid("Sec-WebSocket-Key", "missing"))?;
        let accept = ws::accept_key(key);
        let subprotocol = headers
            .contains_key(header::SEC_WEBSOCKET_PROTOCOL)
            .then_some(format.subprotocol());
        let deflate = match format {
            Format::V2 => ws::negotiate_deflate(
                headers
                    .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
                    .iter()
                    .filter_map(|v| v.to_str().ok()),
            )
            .map(|d| d.response),
            Format::V1 => None,
        };
        let on_upgrade = parts.extensions.remove::<OnUpgrade>().ok_or_else(|| {
            ApiError::new(
                StatusCode::UPGRADE_REQUIRED,
                "upgrade_required",
                "this connection cannot be upgraded to a WebSocket (use HTTP/1.1)",
            )
        })?;
        Ok(Handshake {
            on_upgrade,
            accept,
            subprotocol,
            deflate,
        })
    }

    pub(crate) fn deflate(&self) -> bool {
        self.deflate.is_some()
    }

    /// Answers `101 Switching Protocols` and runs `serve` on the upgraded connection.
    pub(crate) fn accept<F, Fut>(self, serve: F) -> Response
    where
        F: FnOnce(TokioIo<Upgraded>, bool) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let deflate = self.deflate.is_some();
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => serve(TokioIo::new(upgraded), deflate).await,
                Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
            }
        });
        let mut res = Response::new(Body::empty());
        *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = res.headers_mut();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(
            header::SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_str(&self.accept).expect("base64 is a header value"),
        );
        if let Some(p) = self.subprotocol {
            h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
        }
        if let Some(d) = self.deflate {
            h.insert(
                header::SEC_WEBSOCKET_EXTENSIONS,
                HeaderValue::from_str(&d).expect("ASCII"),
            );
        }
        res
    }
}

/// The text of a close frame: the reason, and when to come back.
fn close_text(reason: &CloseReason) -> String {
    if reason.retry_after_ms > 0 {
        format!(
            "{}; retry-after={}ms",
            reason.reason,
            jittered(reason.retry_after_ms)
        )
    } else {
        reason.reason.clone()
    }
}

/// Answers what a viewer sent: pongs for pings (queued as control frames), and for a close,
/// the close to send back.
fn answer(events: Vec<ClientEvent>, queue: &ViewerQueue) -> Option<Bytes> {
    for e in events {
        match e {
            ClientEvent::Ping(payload) => {
                queue.push_control(ws::server_frame(ws::OP_PONG, &payload, false))
            }
            // Answer with the viewer's code (or a normal close) and stop.
            ClientEvent::Close(code) => {
                let code = code.filter(|c| (1000..5000).contains(c)).unwrap_or(1000);
                return Some(ws::close_frame(code, ""));
            }
            ClientEvent::Pong | ClientEvent::Message => {}
        }
    }
    None
}

/// Serves one viewer until it leaves, the gateway closes its stream, or it breaks the protocol.
///
/// The viewer's frames are written by the hub straight to the socket (see
/// [`ViewerQueue::flush`]), and the hub pings it; this task reads what the viewer sends and
/// finishes the writes the hub could not (a full socket buffer).
pub(crate) async fn serve(
    config: std::sync::Arc<crate::GatewayConfig>,
    mut upgraded: TokioIo<Upgraded>,
    connected: Connected,
    deflate: bool,
    connection: std::sync::Arc<httpkit::Connection>,
) {
    let queue = connected.queue.clone();
    let socket = connection.socket.clone();
    let mut reader = ClientReader::new(config.max_inbound_frame, deflate);
    // Viewers send only pongs and the odd small message: a small buffer reads them (a larger
    // frame arrives over several reads; the reader keeps what is incomplete).
    let mut buf = [0u8; 128];
    let mut close: Option<Bytes> = None;
    // Whatever hyper read past the request (a client may not send before the 101, but if it
    // did), then the socket is read and written directly.
    if let Some(Ok(n)) = futures::FutureExt::now_or_never(upgraded.read(&mut buf)) {
        match reader.push(&buf[..n]) {
            Ok(events) => close = answer(events, &queue),
            Err(e) => close = Some(ws::close_frame(e.close_code(), &e.to_string())),
        }
    }
    drop(upgraded);
    queue.write_directly(socket.clone());
    queue.heard();
    let mut blocked;
    while close.is_none() {
        match queue.flush() {
            Flushed::Done => blocked = false,
            Flushed::Blocked => blocked = true,
            Flushed::Failed => break,
        }
        if let Some(reason) = queue.closed() {
            close = Some(ws::close_frame(reason.code, &close_text(&reason)));
            break;
        }
        // No timer here: the hub pings and finds silent viewers on its sweep.
        tokio::select! {
            _ = queue.notified() => {}
            _ = socket.writable(), if blocked => {}
            readable = socket.readable() => {
                if readable.is_err() {
                    break;
                }
                match socket.try_read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        queue.heard();
                        match reader.push(&buf[..n]) {
                            Ok(events) => close = answer(events, &queue),
                            Err(e) => {
                                metrics::REFUSED_FRAMES.with_label_values(&[&e.close_code().to_string()]).inc();
                                close = Some(ws::close_frame(e.close_code(), &e.to_string()));
                            }
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => break,
                }
            }
        }
    }
    if let Some(frame) = close {
        // The close goes after what is already on its way, then the socket is shut.
        queue.push_control(frame);
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while queue.flush() == Flushed::Blocked {
                if socket.writable().await.is_err() {
                    break;
                }
            }
        })
        .await;
        let _ = socket2::SockRef::from(&*socket).shutdown(std::net::Shutdown::Write);
    }
    drop(connected);
    drop(connection);
}
