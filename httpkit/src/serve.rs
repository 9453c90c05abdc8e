//! The HTTP accept loop every role uses, with limits on each connection that `axum::serve`
//! does not set: a cap on open connections, a deadline for the request head (slowloris), a
//! deadline on writes that make no progress (a peer that stopped reading, half-open sockets),
//! TCP keepalive, and an optional send-buffer size so a slow viewer's kernel buffer is bounded.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::Shutdown;

#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Open connections at most. At the limit the loop stops accepting (new clients wait in
    /// the kernel's backlog, then time out) instead of running out of file descriptors.
    pub max_connections: usize,
    /// A request head must arrive within this (answered with 408 and closed otherwise).
    pub header_read_timeout: Duration,
    /// A connection whose pending write makes no progress for this long is dropped: the peer
    /// stopped reading or vanished. Streams close slow viewers earlier, with a reason; this is
    /// the backstop when not even the close can be written.
    pub write_stall: Duration,
    /// TCP keepalive probes after this much silence, so half-open peers are found.
    pub keepalive: Option<Duration>,
    /// `SO_SNDBUF` for accepted connections (`None`: the kernel's autotuning, up to megabytes
    /// per connection).
    pub send_buffer: Option<usize>,
    /// Request bodies larger than this are refused with 413: at once when `Content-Length`
    /// says so (before any of it is read, so a client that sent `Expect: 100-continue` never
    /// uploads it), or when a chunked body grows past it. Grandstand's requests are small
    /// JSON documents.
    pub max_body: usize,
    /// Peers whose `Forwarded`/`X-Forwarded-For` name the client (see [`crate::client`]);
    /// handlers see the client's address in `ConnectInfo`.
    pub trusted_proxies: crate::TrustedProxies,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 250_000,
            header_read_timeout: Duration::from_secs(10),
            write_stall: Duration::from_secs(45),
            keepalive: Some(Duration::from_secs(30)),
            send_buffer: None,
            max_body: 64 * 1024,
            trusted_proxies: crate::TrustedProxies::default(),
        }
    }
}

/// The connection a request arrived on, in its extensions: the socket itself, shared, so a
/// handler that takes the connection over (a WebSocket) can write to it without going through
/// hyper, and the connection's place under `max_connections`, held for as long as anyone holds
/// this (an upgraded connection keeps counting after hyper is done with it).
pub struct Connection {
    pub socket: Arc<TcpStream>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// A shared socket as hyper's I/O (reads and writes through readiness + `try_*`, which tokio
/// allows on `&TcpStream`).
struct SharedSocket(Arc<TcpStream>);

impl AsyncRead for SharedSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write))
    }
}

/// Serves `router` on `listener` until `shutdown` fires, then drains in-flight requests.
/// Pending connections the kernel may queue for one listener (it caps this at
/// `net.core.somaxconn`, 4096 here). Tokio's default is 1024: a reconnect storm of 10k
/// viewers arriving in the same millisecond overflowed it and most waited out SYN retries
/// (1 s, 3 s, 7 s); a deeper queue lets the accept loop take them as fast as it can.
pub const LISTEN_BACKLOG: u32 = 65_535;

/// Binds a listener with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, like tokio's `bind`).
pub fn listen(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

pub async fn serve(listener: TcpListener, router: Router, shutdown: Shutdown) -> io::Result<()> {
    serve_with(listener, router, shutdown, ConnectionLimits::default()).await
}

/// [`serve`] with explicit connection limits.
/// One span per HTTP request, named by its route (not its path: ids stay out of span names),
/// for the OpenTelemetry exporter. A viewer's stream is one request: its span ends when the
/// upgrade or the SSE response starts, so nothing is traced per viewer message.
async fn request_span(
    route: Option<axum::extract::MatchedPath>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument;
    let span = tracing::info_span!(
        target: "grandstand::trace",
        "http.request",
        otel.name = tracing::field::Empty,
        http.request.method = %request.method(),
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    );
    if span.is_disabled() {
        return next.run(request).await;
    }
    if let Some(route) = &route {
        span.record(
            "otel.name",
            format!("{} {}", request.method(), route.as_str()),
        );
        span.record("http.route", route.as_str());
    }
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    shutdown: Shutdown,
    limits: ConnectionLimits,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let router = if router.has_routes() {
        router.route_layer(axum::middleware::from_fn(request_span))
    } else {
        router
    };
    let router = router.layer(axum::extract::DefaultBodyLimit::max(limits.max_body));
    let connections = TaskTracker::new();
    let limits = Arc::new(limits);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: keep serving
                    // the connections we have and try again shortly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        if let Err(e) = tune(&stream, &limits) {
            tracing::debug!(error = %e, "could not set socket options");
        }
        let socket = Arc::new(stream);
        let connection = Arc::new(Connection {
            socket: socket.clone(),
            _permit: permit,
        });
        let io = TokioIo::new(WriteDeadline::new(SharedSocket(socket), limits.write_stall));
        let (router, shutdown, limits) = (router.clone(), shutdown.clone(), limits.clone());
        let max_body = limits.max_body;
        let proxies = limits.clone();
        connections.spawn(async move {
            let service =
                hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                    let client = proxies.trusted_proxies.client(peer, request.headers());
                    request.extensions_mut().insert(ConnectInfo(client));
                    request.extensions_mut().insert(connection.clone());
                    let too_large = declared_body(&request).is_some_and(|n| n > max_body);
                    let router = router.clone();
                    async move {
                        if too_large {
                            return Ok(body_too_large(max_body));
                        }
                        router.oneshot(request.map(Body::new)).await
                    }
                });
            // HTTP/1 only: an HTTP/2 prior-knowledge preface (`PRI * HTTP/2.0`) is refused
            // as a malformed request instead of opening a connection that the request-head
            // deadline does not cover. Viewers stream over WebSocket or SSE on HTTP/1.1; TLS
            // and HTTP/2 towards browsers are the reverse proxy's job.
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(io, service)
                .with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::trace!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = shutdown.cancelled() => connection.as_mut().graceful_shutdown(),
            }
            let _ = connection.await;
        });
    }
    connections.close();
    // Streams close themselves at shutdown; do not wait forever on a peer that will not go.
    let _ = tokio::time::timeout(Duration::from_secs(5), connections.wait()).await;
    Ok(())
}

fn declared_body<B>(request: &hyper::Request<B>) -> Option<usize> {
    request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// 413 with the JSON error body every route uses; the connection closes after it, since the
/// body it announced is never read.
fn body_too_large(max_body: usize) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut response = crate::ApiError::new(
        axum::http::StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("request bodies are limited to {max_body} bytes"),
    )
    .into_response();
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

fn tune(stream: &TcpStream, limits: &ConnectionLimits) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let socket = socket2::SockRef::from(stream);
    if let Some(idle) = limits.keepalive {
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(idle)
            .with_interval(Duration::from_secs(10))
            .with_retries(3);
        socket.set_tcp_keepalive(&keepalive)?;
    }
    if let Some(size) = limits.send_buffer {
        socket.set_send_buffer_size(size)?;
    }
    Ok(())
}

/// An I/O stream whose writes fail with `TimedOut` once one has been pending, without any
/// progress, for longer than the deadline.
pub struct WriteDeadline<S> {
    inner: S,
    deadline: Duration,
    // Allocated on the first write that has to wait, then reused.
    timer: Option<Pin<Box<Sleep>>>,
    waiting: bool,
}

impl<S> WriteDeadline<S> {
    pub fn new(inner: S, deadline: Duration) -> WriteDeadline<S> {
        WriteDeadline {
            inner,
            deadline,
            timer: None,
            waiting: false,
        }
    }

    fn on_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let deadline = self.deadline;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(deadline)));
        if !self.waiting {
            self.waiting = true;
            timer.as_mut().reset(Instant::now() + deadline);
        }
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            "the peer stopped reading",
        ))
    }

    fn guard<T>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match result {
            Poll::Pending => self.on_pending(cx).map(Err),
            done => {
                self.waiting = false;
                done
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.guard(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.guard(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.guard(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.guard(cx, result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_write_the_peer_never_reads_times_out() {
        let (a, _b) = tokio::io::duplex(1024);
        let mut guarded = WriteDeadline::new(a, Duration::from_millis(200));
        let started = std::time::Instant::now();
        let err = guarded.write_all(&[0u8; 64 * 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn a_slow_but_progressing_reader_is_not_cut_off() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut guarded = WriteDeadline::new(a, Duration::from_millis(300));
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut buf = [0u8; 512];
            while got < 16 * 1024 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                got += tokio::io::AsyncReadExt::read(&mut b, &mut buf)
                    .await
                    .unwrap();
            }
        });
        // 32 reads of 512 bytes at 20 ms each: 640 ms in all, longer than the deadline, but
        // never 300 ms without progress.
        guarded.write_all(&[0u8; 16 * 1024]).await.unwrap();
        reader.await.unwrap();
    }
}

#[cfg(test)]
mod edge_tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn server(limits: ConnectionLimits) -> (std::net::SocketAddr, Shutdown) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let router = Router::new().route(
            "/echo",
            axum::routing::post(|body: axum::body::Bytes| async move { body.len().to_string() }),
        );
        tokio::spawn(serve_with(listener, router, shutdown.clone(), limits));
        (addr, shutdown)
    }

    /// Reads until the server closes (or `limit` passes: `None`).
    async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> Option<String> {
        let mut got = Vec::new();
        tokio::time::timeout(limit, stream.read_to_end(&mut got))
            .await
            .ok()?
            .ok()?;
        Some(String::from_utf8_lossy(&got).into_owned())
    }

    #[tokio::test]
    async fn an_http2_prior_knowledge_preface_is_refused_and_closed() {
        let (addr, shutdown) = server(ConnectionLimits {
            header_read_timeout: Duration::from_secs(30),
            ..Default::default()
        })
        .await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .unwrap();
        // Well inside the 30 s head deadline: the preface is not a request we serve.
        let answer = read_to_close(&mut stream, Duration::from_secs(3))
            .await
            .expect("the connection is closed at once, not left open");
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
            "{answer:?}"
        );
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_with_413_before_it_is_sent() {
        let (addr, shutdown) = server(ConnectionLimits {
            max_body: 1000,
            ..Default::default()
        })
        .await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        // Announces 50 MB and waits, as a client with `Expect: 100-continue` does.
        stream
            .write_all(
                b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 50000000\r\n\
                  expect: 100-continue\r\n\r\n",
            )
            .await
            .unwrap();
        let answer = read_to_close(&mut stream, Duration::from_secs(3))
            .await
            .expect("answered and closed");
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("\"body_too_large\""), "{answer}");

        // A chunked body that grows past the limit is refused too; a small one is served.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let chunk = vec![b'a'; 1500];
        let mut request =
            b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(&chunk);
        request.extend_from_slice(b"\r\n0\r\n\r\n");
        stream.write_all(&request).await.unwrap();
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 413");

        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello")
            .await
            .unwrap();
        let answer = read_to_close(&mut stream, Duration::from_secs(3))
            .await
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("\r\n\r\n5"), "{answer}");
        shutdown.cancel();
    }
}
