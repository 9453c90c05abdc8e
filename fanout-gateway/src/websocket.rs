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
use std::task::Poll;
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
/// [`ViewerQueue::flush`]), and the hub pings it; the viewer's own task ([`ViewerSocket`]) reads
/// what the viewer sends and finishes the writes the hub could not (a full socket buffer).
pub(crate) async fn serve(
    config: std::sync::Arc<crate::GatewayConfig>,
    mut upgraded: TokioIo<Upgraded>,
    connected: Connected,
    deflate: bool,
    connection: std::sync::Arc<httpkit::Connection>,
) {
    let queue = connected.queue.clone();
    let mut reader = ClientReader::new(config.max_inbound_frame, deflate);
    let mut close: Option<Bytes> = None;
    // Whatever hyper read past the request (a client may not send before the 101, but if it
    // did), then the socket is read and written directly.
    let mut buf = [0u8; READ_CHUNK];
    if let Some(Ok(n)) = futures::FutureExt::now_or_never(upgraded.read(&mut buf)) {
        match reader.push(&buf[..n]) {
            Ok(events) => close = answer(events, &queue),
            Err(e) => close = Some(ws::close_frame(e.close_code(), &e.to_string())),
        }
    }
    // hyper's half of the connection (its buffers, the write deadline's timer) goes now.
    drop(upgraded);
    queue.write_directly(connection.socket.clone());
    queue.heard();
    let mut viewer = ViewerSocket {
        connected,
        connection,
        reader,
        closing: None,
    };
    if let Some(frame) = close {
        viewer.start_closing(frame);
    }
    // A task of its own, sized to what a connected viewer holds: this one (the upgrade, the
    // handshake's leftovers) ends here.
    tokio::spawn(viewer);
}

/// Viewers send only pongs and the odd small message: reads take this much at a time (a
/// larger frame arrives over several reads; the reader keeps what is incomplete).
const READ_CHUNK: usize = 128;

/// A connected WebSocket viewer, as a hand-written future: what it holds is what an idle
/// viewer costs. The async loop it replaces kept a select over three futures (the queue's
/// notification, read and write readiness), the close path's timer and a read buffer in every
/// viewer's task, about 1 KiB each; here the wakers live where they already are (the queue's
/// consumer slot, the socket's readiness slots) and the close timer exists only while closing.
struct ViewerSocket {
    connected: Connected,
    connection: std::sync::Arc<httpkit::Connection>,
    reader: ClientReader,
    /// Set once a close frame is queued: how long it may take to write it out.
    closing: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

/// Rounds of flush-and-read one poll may take before it yields: a viewer flooding pings gets
/// its turn and no more.
const ROUNDS_PER_POLL: usize = 32;

/// How long the close (and what is queued before it) may take to leave.
const CLOSE_WRITE: Duration = Duration::from_secs(1);

impl ViewerSocket {
    fn start_closing(&mut self, frame: Bytes) {
        // The close goes after what is already on its way, then the socket is shut.
        self.connected.queue.push_control(frame);
        self.closing = Some(Box::pin(tokio::time::sleep(CLOSE_WRITE)));
    }

    /// Flushes and reads until nothing is ready. `Ready(Some(close))`: the stream must close
    /// with this frame; `Ready(None)`: the connection is gone.
    fn poll_serve(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Option<Bytes>> {
        let queue = &self.connected.queue;
        let socket = &self.connection.socket;
        // Registered before the queue is looked at: a frame queued after the look wakes us.
        queue.register(cx.waker());
        for _ in 0..ROUNDS_PER_POLL {
            match queue.flush() {
                Flushed::Done => {}
                Flushed::Failed => return Poll::Ready(None),
                Flushed::Blocked => match socket.poll_write_ready(cx) {
                    Poll::Ready(Ok(())) => continue,
                    Poll::Ready(Err(_)) => return Poll::Ready(None),
                    Poll::Pending => {}
                },
            }
            if let Some(reason) = queue.closed() {
                return Poll::Ready(Some(ws::close_frame(reason.code, &close_text(&reason))));
            }
            match socket.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(None),
                Poll::Ready(Ok(())) => {}
            }
            let mut buf = [0u8; READ_CHUNK];
            match socket.try_read(&mut buf) {
                Ok(0) => return Poll::Ready(None),
                Ok(n) => {
                    queue.heard();
                    match self.reader.push(&buf[..n]) {
                        Ok(events) => {
                            if let Some(close) = answer(events, queue) {
                                return Poll::Ready(Some(close));
                            }
                        }
                        Err(e) => {
                            metrics::REFUSED_FRAMES
                                .with_label_values(&[&e.close_code().to_string()])
                                .inc();
                            return Poll::Ready(Some(ws::close_frame(
                                e.close_code(),
                                &e.to_string(),
                            )));
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return Poll::Ready(None),
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Writes out what is queued and the close, until done, the socket fails or the close
    /// deadline passes; then shuts the socket.
    fn poll_close(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let socket = &self.connection.socket;
        while self.connected.queue.flush() == Flushed::Blocked {
            match socket.poll_write_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => break,
                Poll::Pending => {
                    let waiting = self
                        .closing
                        .as_mut()
                        .is_some_and(|deadline| deadline.as_mut().poll(cx).is_pending());
                    if waiting {
                        return Poll::Pending;
                    }
                    break;
                }
            }
        }
        let _ = socket2::SockRef::from(&**socket).shutdown(std::net::Shutdown::Write);
        Poll::Ready(())
    }
}

impl Future for ViewerSocket {
    type Output = ();

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.closing.is_none() {
            match this.poll_serve(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Ready(Some(frame)) => this.start_closing(frame),
            }
        }
        this.poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    /// What an idle connected viewer's task holds, kept small on purpose (see
    /// [`super::ViewerSocket`]); the bound leaves room for a field or two, not for a buffer.
    #[test]
    fn a_connected_viewer_holds_no_buffer_in_its_task() {
        let size = std::mem::size_of::<super::ViewerSocket>();
        assert!(size <= 256, "ViewerSocket is {size} bytes");
    }
}
