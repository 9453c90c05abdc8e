//! A viewer's WebSocket, without a general-purpose WebSocket library in the way: the gateway
//! writes the frames its hub built once per match (header and payload, compressed once when
//! the viewer negotiated permessage-deflate) straight to the socket, a batch per vectored
//! write, and reads what the viewer sends with the pure [`protocol::ws::ClientReader`].
//!
//! Per viewer this holds no read or write buffer while idle (a small stack buffer for reads,
//! the reader's own buffer only while a frame is incomplete), arms no timer per message (one
//! ping interval per connection; a viewer that stops reading is found by the hub's sweep and,
//! if even its close cannot be written, by the connection's write deadline) and checks no
//! UTF-8 of what the gateway itself produced.

use std::future::Future;
use std::io::IoSlice;
use std::time::{Duration, Instant};

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
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::metrics;
use crate::queue::CloseReason;
use crate::stream::{jittered, sample_latency, Connected};
use crate::Gateway;

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

/// Writes every buffer, as few vectored writes as the socket takes.
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    w: &mut W,
    bufs: &mut [Bytes],
) -> std::io::Result<()> {
    let mut first = 0;
    while first < bufs.len() {
        let slices: Vec<IoSlice<'_>> = bufs[first..]
            .iter()
            .take(64)
            .map(|b| IoSlice::new(b))
            .collect();
        let mut n = w.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 && first < bufs.len() {
            let len = bufs[first].len();
            if n >= len {
                n -= len;
                first += 1;
            } else {
                let rest = bufs[first].slice(n..);
                bufs[first] = rest;
                n = 0;
            }
        }
    }
    Ok(())
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

/// What the read half found.
enum Heard {
    Frames(Vec<ClientEvent>),
    /// The viewer's bytes broke the protocol: close with this code and reason.
    Refused(u16, String),
    Gone,
}

fn heard(reader: &mut ClientReader, read: std::io::Result<usize>, buf: &[u8]) -> Heard {
    match read {
        Ok(0) | Err(_) => Heard::Gone,
        Ok(n) => match reader.push(&buf[..n]) {
            Ok(events) => Heard::Frames(events),
            Err(e) => Heard::Refused(e.close_code(), e.to_string()),
        },
    }
}

/// Serves one viewer until it leaves, the gateway closes its stream, or it breaks the protocol.
pub(crate) async fn serve<S>(gw: Gateway, mut io: S, connected: Connected, deflate: bool)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = gw.config.clone();
    let queue = connected.queue.clone();
    let mut reader = ClientReader::new(config.max_inbound_frame, deflate);
    let mut ping = tokio::time::interval(config.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut last_heard = Instant::now();
    // Viewers send only pongs and the odd small message: a small buffer reads them.
    let mut buf = [0u8; 512];
    let close: Option<Bytes> = loop {
        enum Next {
            Batch(Result<Vec<std::sync::Arc<protocol::Frame>>, CloseReason>),
            Read(std::io::Result<usize>),
            Heard(Heard),
            Ping,
        }
        let mut next = tokio::select! {
            batch = queue.next_batch() => Next::Batch(batch),
            read = io.read(&mut buf) => Next::Read(read),
            _ = ping.tick() => Next::Ping,
        };
        if let Next::Read(read) = next {
            next = Next::Heard(heard(&mut reader, read, &buf));
        }
        match next {
            Next::Batch(Ok(frames)) => {
                let mut bufs: Vec<Bytes> =
                    frames.iter().map(|f| queue.wire.bytes(f).clone()).collect();
                if write_all_vectored(&mut io, &mut bufs).await.is_err() {
                    break None;
                }
                metrics::VIEWER_WRITES.inc();
                sample_latency(&queue, &frames);
            }
            Next::Batch(Err(reason)) => {
                break Some(ws::close_frame(reason.code, &close_text(&reason)))
            }
            Next::Heard(Heard::Gone) => break None,
            Next::Heard(Heard::Refused(code, reason)) => {
                metrics::REFUSED_FRAMES
                    .with_label_values(&[&code.to_string()])
                    .inc();
                break Some(ws::close_frame(code, &reason));
            }
            Next::Heard(Heard::Frames(events)) => {
                last_heard = Instant::now();
                let mut reply = None;
                for e in events {
                    match e {
                        ClientEvent::Ping(payload) => {
                            if io
                                .write_all(&ws::server_frame(ws::OP_PONG, &payload, false))
                                .await
                                .is_err()
                            {
                                reply = Some(None);
                            }
                        }
                        ClientEvent::Close(code) => {
                            // Answer with the viewer's code (or a normal close) and stop.
                            let code = code.filter(|c| (1000..5000).contains(c)).unwrap_or(1000);
                            reply = Some(Some(ws::close_frame(code, "")));
                        }
                        ClientEvent::Pong | ClientEvent::Message => {}
                    }
                    if reply.is_some() {
                        break;
                    }
                }
                if let Some(close) = reply {
                    break close;
                }
            }
            Next::Read(_) => unreachable!("turned into Heard above"),
            Next::Ping => {
                if last_heard.elapsed() > config.ping_interval * 3 {
                    break Some(ws::close_frame(
                        1001,
                        &close_text(&CloseReason {
                            code: 1001,
                            reason: "idle: no pong".into(),
                            retry_after_ms: config.retry_after_ms,
                        }),
                    ));
                }
                if io
                    .write_all(&ws::server_frame(ws::OP_PING, b"", false))
                    .await
                    .is_err()
                {
                    break None;
                }
            }
        }
    };
    if let Some(frame) = close {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            io.write_all(&frame).await?;
            io.flush().await?;
            io.shutdown().await
        })
        .await;
    }
    drop(connected);
}
