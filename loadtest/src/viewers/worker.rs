//! A viewers worker: one process holding its share of the viewers (WebSocket, SSE, Socket.IO
//! or NATS-over-WebSocket clients, from its own source address), reporting what each received
//! to the parent.
//!
//! Long because it holds one client per kind of peer (each with its own handshake and framing)
//! and the connect, sampling and reporting loop they share; the clients are small and alike,
//! and splitting them would scatter one protocol of parent and worker over several files.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use futures::{SinkExt, StreamExt};
use hdrhistogram::serialization::{Serializer, V2Serializer};
use hdrhistogram::Histogram;
use protocol::{Claims, TokenSigner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use super::{GrandstandWire, Storm, System, WorkerPlan, WorkerReport, Workload, SECRET};
use crate::process::open_socket;
use protocol::now_us;
use testkit::wsclient::{Offer, RawWs, BROWSER_DEFLATE};

/// A viewer's socket, counting the bytes it receives inside the measuring window.
struct Counted {
    inner: TcpStream,
    tally: Arc<Tally>,
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.tally.received(n as u64);
        }
        r
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How long a worker waits for its viewers to connect before it reports who did.
const CONNECT_LIMIT: Duration = Duration::from_secs(300);

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds")
}

/// A number that follows `key` in a JSON text, without parsing the rest.
fn number_after(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let digits: &str = &text[at..];
    let end = digits
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// One viewer's accounting, shared by all viewers of a worker through sharded histograms.
struct Tally {
    shards: Vec<Mutex<Histogram<u64>>>,
    window: Mutex<(u64, u64)>,
    messages: AtomicU64,
    gaps: AtomicU64,
    snapshots: AtomicU64,
    held: AtomicU64,
    storm: tokio::sync::watch::Receiver<bool>,
    storm_at: AtomicU64,
    resume: Mutex<Histogram<u64>>,
    cold_load: Mutex<Histogram<u64>>,
    resumed: AtomicU64,
    resume_replays: AtomicU64,
    resume_snapshots: AtomicU64,
    resume_failed: AtomicU64,
    /// Viewers that dropped in the storm (each then resumes or fails).
    stormed: AtomicU64,
    /// Bytes the viewers' sockets received inside the window.
    wire_bytes: AtomicU64,
    /// One viewer in this many has its messages opened and timed.
    sample_every: usize,
    /// Whether messages carry a version line to check (Grandstand, or the synthetic feed
    /// whose ticks are versions; the peers forward a recorded match's bodies as they are).
    versioned: bool,
}

impl Tally {
    fn received(&self, n: u64) {
        let now = now_us();
        let (from, to) = *self.window.lock().unwrap();
        if now >= from && now < to {
            self.wire_bytes.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn new(
        versioned: bool,
        sample_every: usize,
        storm: tokio::sync::watch::Receiver<bool>,
    ) -> Tally {
        Tally {
            shards: (0..32).map(|_| Mutex::new(histogram())).collect(),
            window: Mutex::new((u64::MAX, u64::MAX)),
            messages: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            snapshots: AtomicU64::new(0),
            held: AtomicU64::new(0),
            storm,
            storm_at: AtomicU64::new(0),
            resume: Mutex::new(histogram()),
            cold_load: Mutex::new(histogram()),
            resumed: AtomicU64::new(0),
            resume_replays: AtomicU64::new(0),
            resume_snapshots: AtomicU64::new(0),
            resume_failed: AtomicU64::new(0),
            stormed: AtomicU64::new(0),
            wire_bytes: AtomicU64::new(0),
            versioned,
            sample_every,
        }
    }

    /// Whether this viewer's messages are opened and timed (the others are counted only, so
    /// the load generator's CPU goes to reading sockets, not to parsing every message).
    fn sampled(&self, viewer: usize) -> bool {
        viewer.is_multiple_of(self.sample_every.max(1))
    }

    /// Counts a message received now, inside the window (a viewer that is not sampled).
    fn count(&self) {
        let now = now_us();
        let (from, to) = *self.window.lock().unwrap();
        if now >= from && now < to {
            self.messages.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Accounts one message: `text` is a delta as the system sent it (JSON, or for Socket.IO
    /// its event packet, where the delta is an escaped string).
    fn observe(&self, viewer: usize, text: &str, last_version: &mut Option<u64>) {
        if !self.sampled(viewer) {
            return self.count();
        }
        let now = now_us();
        let unescaped;
        let text = if text.contains("\\\"") {
            unescaped = text.replace("\\\"", "\"");
            unescaped.as_str()
        } else {
            text
        };
        // A `status` (the producer went quiet or came back) carries the current position but is
        // not on the version line: taking it for a version would count a gap that is not one.
        if text.starts_with("{\"type\":\"status\"") {
            return;
        }
        // Grandstand numbers its messages; the peers forward the delta, whose tick is the
        // version in this harness.
        let version =
            number_after(text, "\"version\":").or_else(|| number_after(text, "\"tick\":"));
        if text.starts_with("{\"type\":\"snapshot\"") {
            self.snapshots.fetch_add(1, Ordering::Relaxed);
        } else if !self.versioned {
        } else if let (Some(v), Some(last)) = (version, *last_version) {
            if v != last + 1 {
                self.gaps.fetch_add(1, Ordering::Relaxed);
            }
        }
        *last_version = version.or(*last_version);
        // When the message left the publisher: the gateway's stamp (the log's publish time),
        // the recorded feed's own stamp as the peers forward it, or the synthetic delta's name.
        let Some(sent) = number_after(text, "\"published_us\":")
            .or_else(|| number_after(text, "\"sent_us\":"))
            .or_else(|| number_after(text, "\"name\":\"t"))
        else {
            return;
        };
        let (from, to) = *self.window.lock().unwrap();
        if sent < from || sent >= to {
            return;
        }
        self.messages.fetch_add(1, Ordering::Relaxed);
        let shard = &self.shards[viewer % self.shards.len()];
        shard
            .lock()
            .unwrap()
            .saturating_record(now.saturating_sub(sent).max(1));
    }
}

/// Tells the worker whether a viewer got in.
fn report_open<T>(
    opened: anyhow::Result<T>,
    connected: tokio::sync::oneshot::Sender<bool>,
) -> Option<T> {
    let _ = connected.send(opened.is_ok());
    opened.ok()
}

/// One viewer to open: who it is, where from, where to, and who to tell once it is in.
struct Slot {
    tally: Arc<Tally>,
    viewer: usize,
    system: System,
    source: String,
    gateway: String,
    match_id: String,
    subject_root: String,
    token: String,
    connected: tokio::sync::oneshot::Sender<bool>,
    storm: Storm,
    /// The snapshot API and a client bound to the worker's source address (cold-load storms).
    api: Option<(String, reqwest::Client)>,
}

async fn websocket_viewer(slot: Slot) {
    let Slot {
        tally,
        viewer,
        system,
        source,
        gateway,
        match_id,
        subject_root,
        token,
        connected,
        ..
    } = slot;
    let base = gateway.replacen("http://", "ws://", 1);
    let url = match system {
        System::Grandstand | System::GrandstandJsonOtlp => {
            format!("{base}/v1/matches/{match_id}/stream")
        }
        System::NodeWs | System::Raw | System::Floor | System::Uws => {
            format!("{base}/?match={match_id}")
        }
        System::Socketio => format!("{base}/socket.io/?EIO=4&transport=websocket"),
        System::NatsWs => format!("{base}/"),
    };
    let opened = async {
        let stream = Counted {
            inner: open_socket(&source, &gateway).await?,
            tally: tally.clone(),
        };
        let mut req = url.into_client_request()?;
        if system == System::Grandstand {
            req.headers_mut()
                .insert("authorization", format!("Bearer {token}").parse()?);
        }
        // Small buffers: viewers only receive, and a load generator holds many of them.
        let config = WebSocketConfig::default()
            .read_buffer_size(8 * 1024)
            .write_buffer_size(0);
        let (mut ws, _) =
            tokio_tungstenite::client_async_with_config(req, stream, Some(config)).await?;
        match system {
            System::Socketio => socketio_join(&mut ws, &match_id).await?,
            System::NatsWs => {
                let hello = format!(
                    "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true,\"protocol\":1}}\r\nSUB {subject_root}.{match_id}.delta 1\r\nSUB {subject_root}.{match_id}.event 2\r\nPING\r\n"
                );
                ws.send(Message::binary(hello.into_bytes())).await?;
            }
            _ => {}
        }
        anyhow::Ok(ws)
    };
    let Some(mut ws) = report_open(opened.await, connected) else {
        return;
    };
    tally.held.fetch_add(1, Ordering::Relaxed);
    let mut last = None;
    let mut nats = NatsReader::default();
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Text(t)) if system == System::Socketio => {
                if t.as_str() == "2" {
                    let _ = ws.send(Message::text("3")).await;
                } else if t.starts_with("42") {
                    tally.observe(viewer, &t, &mut last);
                }
            }
            Ok(m @ (Message::Binary(_) | Message::Text(_))) if system == System::NatsWs => {
                let mut ping = false;
                nats.feed(&m.into_data(), |item| match item {
                    NatsItem::Ping => ping = true,
                    NatsItem::Payload(p) => {
                        tally.observe(viewer, &String::from_utf8_lossy(p), &mut last)
                    }
                });
                if ping {
                    let _ = ws.send(Message::binary(b"PONG\r\n".to_vec())).await;
                }
            }
            Ok(Message::Text(t)) => tally.observe(viewer, &t, &mut last),
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    tally.held.fetch_sub(1, Ordering::Relaxed);
}

type Ws = tokio_tungstenite::WebSocketStream<Counted>;

/// A Grandstand viewer as a browser opens it on a real match: feed v2 with permessage-deflate
/// (or what `--grandstand-wire` says). It reads frames straight from its socket with one
/// buffer, one inflater and one output buffer reused for every message, so the load generator
/// spends little per message next to the server it measures.
async fn v2_viewer(slot: Slot, wire: GrandstandWire) {
    let Slot {
        tally,
        viewer,
        source,
        gateway,
        match_id,
        token,
        connected,
        ..
    } = slot;
    let opened = async {
        let stream = open_socket(&source, &gateway).await?;
        let offer = Offer {
            extensions: (wire == GrandstandWire::V2Deflate).then(|| BROWSER_DEFLATE.into()),
            protocol: None,
            token: Some(token),
        };
        let host = gateway.trim_start_matches("http://");
        let format = if wire == GrandstandWire::V1 {
            "v1"
        } else {
            "v2"
        };
        let path = format!("/v1/matches/{match_id}/stream?format={format}");
        RawWs::handshake(stream, host, &path, &offer)
            .await?
            .map_err(|r| anyhow::anyhow!("refused {}: {}", r.status, r.body))
    };
    let Some(ws) = report_open(opened.await, connected) else {
        return;
    };
    tally.held.fetch_add(1, Ordering::Relaxed);
    let (mut stream, mut buf) = ws.into_parts();
    let mut at = 0;
    // Only a sampled viewer opens its messages, so only it holds an inflater.
    let mut inflater = tally.sampled(viewer).then(Inflater::default);
    let mut last = None;
    let mut chunk = vec![0u8; 16384];
    'read: loop {
        while let Some((op, compressed, payload, used)) =
            protocol::ws::read_server_frame(&buf[at..])
        {
            if op == protocol::ws::OP_TEXT && !tally.sampled(viewer) {
                tally.count();
            } else if op == protocol::ws::OP_TEXT {
                let message = match (compressed, inflater.as_mut()) {
                    (false, _) => payload,
                    (true, Some(inflater)) => match inflater.message(payload) {
                        Some(text) => text,
                        None => break 'read,
                    },
                    (true, None) => break 'read,
                };
                if let Ok(t) = std::str::from_utf8(message) {
                    tally.observe(viewer, t, &mut last);
                }
            } else if op == protocol::ws::OP_CLOSE {
                break 'read;
            } else if op == protocol::ws::OP_PING {
                let pong = protocol::ws::client_frame(
                    protocol::ws::OP_PONG,
                    payload,
                    true,
                    false,
                    [7, 7, 7, 7],
                );
                if stream.write_all(&pong).await.is_err() {
                    break 'read;
                }
            }
            at += used;
        }
        if at > 0 {
            buf.drain(..at);
            at = 0;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tally.received(n as u64);
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
    tally.held.fetch_sub(1, Ordering::Relaxed);
}

/// A sampled viewer's permessage-deflate reader: one decompressor and one output buffer for
/// every message. Each message stands alone (the server takes no context over), so the
/// decompressor's state is set back to the start, not its tables zeroed (a `flate2` reset
/// zeroes ~43 KB per message, load-generator CPU that is not the server's).
struct Inflater {
    state: Box<miniz_oxide::inflate::core::DecompressorOxide>,
    input: Vec<u8>,
    out: Vec<u8>,
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater {
            state: Box::default(),
            input: Vec::new(),
            out: vec![0; 16 * 1024],
        }
    }
}

impl Inflater {
    /// The message `payload` inflates to, or `None` when it is not valid DEFLATE.
    fn message(&mut self, payload: &[u8]) -> Option<&[u8]> {
        use miniz_oxide::inflate::core::inflate_flags::{
            TINFL_FLAG_HAS_MORE_INPUT, TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF,
        };
        use miniz_oxide::inflate::TINFLStatus;
        self.state.init();
        self.input.clear();
        self.input.extend_from_slice(payload);
        // RFC 7692: the sender left off the sync flush's empty block; put it back.
        self.input.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let (mut read, mut written) = (0, 0);
        loop {
            let (status, r, w) = miniz_oxide::inflate::core::decompress(
                &mut self.state,
                &self.input[read..],
                &mut self.out,
                written,
                TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF | TINFL_FLAG_HAS_MORE_INPUT,
            );
            read += r;
            written += w;
            match status {
                TINFLStatus::HasMoreOutput => {
                    let grown = self.out.len() * 2;
                    self.out.resize(grown, 0);
                }
                TINFLStatus::NeedsMoreInput | TINFLStatus::Done if read == self.input.len() => {
                    return Some(&self.out[..written]);
                }
                _ => return None,
            }
        }
    }
}

async fn grandstand_ws(
    tally: Arc<Tally>,
    source: &str,
    gateway: &str,
    match_id: &str,
    token: &str,
    since: Option<(u64, u64)>,
) -> anyhow::Result<Ws> {
    let stream = Counted {
        inner: open_socket(source, gateway).await?,
        tally,
    };
    let mut url = format!(
        "{}/v1/matches/{match_id}/stream",
        gateway.replacen("http://", "ws://", 1)
    );
    if let Some((epoch, version)) = since {
        url += &format!("?since={epoch}:{version}");
    }
    let mut req = url.into_client_request()?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0);
    let (ws, _) = tokio_tungstenite::client_async_with_config(req, stream, Some(config)).await?;
    Ok(ws)
}

/// A Grandstand viewer that also takes part in storms: when told, it drops its connection and
/// comes back from its last version (or from a freshly fetched snapshot), timing how long until
/// the new connection is up; its version line must go on without a gap.
async fn storming_viewer(slot: Slot) {
    let Slot {
        tally,
        viewer,
        source,
        gateway,
        match_id,
        token,
        connected,
        storm,
        api,
        ..
    } = slot;
    let opened = grandstand_ws(tally.clone(), &source, &gateway, &match_id, &token, None).await;
    let Some(mut ws) = report_open(opened, connected) else {
        return;
    };
    tally.held.fetch_add(1, Ordering::Relaxed);
    let mut signal = tally.storm.clone();
    let mut stormed = false;
    let mut resuming = false;
    let mut last = None;
    let mut epoch = None;
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if resuming {
                        resuming = false;
                        if t.starts_with("{\"type\":\"snapshot\"") {
                            tally.resume_snapshots.fetch_add(1, Ordering::Relaxed);
                        } else {
                            tally.resume_replays.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    epoch = number_after(&t, "\"epoch\":").or(epoch);
                    tally.observe(viewer, &t, &mut last);
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            _ = signal.changed(), if !stormed => {
                stormed = true;
                tally.stormed.fetch_add(1, Ordering::Relaxed);
                let _ = ws.close(None).await;
                drop(ws);
                resuming = true;
                let mut since = epoch.zip(last);
                if let (Storm::ColdLoad, Some((base, client))) = (storm, &api) {
                    let started = now_us();
                    let snap = async {
                        let r = client.get(format!("{base}/v1/matches/{match_id}/snapshot")).send().await?;
                        anyhow::ensure!(r.status().is_success(), "snapshot {}", r.status());
                        let v: serde_json::Value = r.json().await?;
                        anyhow::Ok((v["epoch"].as_u64().unwrap_or(0), v["version"].as_u64().unwrap_or(0)))
                    };
                    match snap.await {
                        Ok(pos) => {
                            tally.cold_load.lock().unwrap().saturating_record(now_us().saturating_sub(started).max(1));
                            // The page applied the snapshot: its version line continues from it.
                            since = Some(pos);
                            last = Some(pos.1);
                        }
                        Err(_) => {
                            tally.resume_failed.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
                match grandstand_ws(tally.clone(), &source, &gateway, &match_id, &token, since).await {
                    Ok(w) => {
                        ws = w;
                        let at = tally.storm_at.load(Ordering::Relaxed);
                        tally.resume.lock().unwrap().saturating_record(now_us().saturating_sub(at).max(1));
                        tally.resumed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        tally.resume_failed.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
        }
    }
    tally.held.fetch_sub(1, Ordering::Relaxed);
}

/// Engine.IO open, Socket.IO namespace connect, then a `join` event for the match's room.
async fn socketio_join(ws: &mut Ws, match_id: &str) -> anyhow::Result<()> {
    loop {
        let Some(msg) = ws.next().await else {
            bail!("closed during the Socket.IO handshake");
        };
        let Message::Text(t) = msg? else { continue };
        if t.starts_with('0') {
            ws.send(Message::text("40")).await?;
        } else if t.starts_with("40") {
            ws.send(Message::text(format!("42[\"join\",\"{match_id}\"]")))
                .await?;
            return Ok(());
        } else if t.as_str() == "2" {
            ws.send(Message::text("3")).await?;
        }
    }
}

enum NatsItem<'a> {
    Ping,
    Payload(&'a [u8]),
}

/// The NATS client protocol as it arrives over WebSocket: lines and sized payloads, which may
/// be split across frames.
#[derive(Default)]
struct NatsReader {
    buf: Vec<u8>,
}

impl NatsReader {
    fn feed(&mut self, data: &[u8], mut on: impl FnMut(NatsItem<'_>)) {
        self.buf.extend_from_slice(data);
        let mut at = 0;
        loop {
            let rest = &self.buf[at..];
            let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
                break;
            };
            let line = &rest[..eol];
            let fields: Vec<&[u8]> = line
                .split(|b| *b == b' ')
                .filter(|f| !f.is_empty())
                .collect();
            let sized = |f: &[u8]| std::str::from_utf8(f).ok()?.parse::<usize>().ok();
            match fields.first().copied() {
                Some(b"MSG") | Some(b"HMSG") => {
                    let headers = fields[0] == b"HMSG";
                    let total = fields.last().and_then(|f| sized(f)).unwrap_or(0);
                    let header_len = if headers {
                        fields
                            .get(fields.len() - 2)
                            .and_then(|f| sized(f))
                            .unwrap_or(0)
                    } else {
                        0
                    };
                    let start = eol + 2;
                    if rest.len() < start + total + 2 {
                        break;
                    }
                    on(NatsItem::Payload(&rest[start + header_len..start + total]));
                    at += start + total + 2;
                }
                Some(b"PING") => {
                    on(NatsItem::Ping);
                    at += eol + 2;
                }
                _ => at += eol + 2,
            }
        }
        self.buf.drain(..at);
    }
}

async fn sse_viewer(slot: Slot) {
    let Slot {
        tally,
        viewer,
        source,
        gateway,
        match_id,
        token,
        connected,
        ..
    } = slot;
    let path = format!("/v1/matches/{match_id}/stream");
    // HTTP/1.0: the body is delimited by the connection's end, so there are no chunk
    // headers between events.
    let opened = async {
        let mut stream = open_socket(&source, &gateway).await?;
        let head = format!(
            "GET {path} HTTP/1.0\r\nAccept: text/event-stream\r\nAuthorization: Bearer {token}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await?;
        let mut buf = Vec::with_capacity(4096);
        loop {
            let mut chunk = [0u8; 2048];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("closed during the handshake");
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                if !buf.starts_with(b"HTTP/1.1 200") && !buf.starts_with(b"HTTP/1.0 200") {
                    bail!("refused: {}", String::from_utf8_lossy(&buf[..end]));
                }
                buf.drain(..end + 4);
                return anyhow::Ok((stream, buf));
            }
        }
    };
    let Some((mut stream, mut buf)) = report_open(opened.await, connected) else {
        return;
    };
    tally.held.fetch_add(1, Ordering::Relaxed);
    let mut last = None;
    let mut chunk = vec![0u8; 8192];
    loop {
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let event = String::from_utf8_lossy(&buf[..end]).to_string();
            buf.drain(..end + 2);
            if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
                tally.observe(viewer, data, &mut last);
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tally.received(n as u64);
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
    tally.held.fetch_sub(1, Ordering::Relaxed);
}

/// A worker process: connects its viewers, says so on stdout, waits for the measuring window
/// on stdin, and prints its report.
pub async fn worker(plan_json: String) -> anyhow::Result<()> {
    let plan: WorkerPlan = serde_json::from_str(&plan_json)?;
    let (storm_tx, storm_rx) = tokio::sync::watch::channel(false);
    let tally = Arc::new(Tally::new(
        plan.system == System::Grandstand || plan.workload == Workload::Synthetic,
        plan.sample_every,
        storm_rx,
    ));
    let api = match &plan.api {
        Some(base) => Some((
            base.clone(),
            reqwest::Client::builder()
                .local_address(plan.source.parse::<std::net::IpAddr>()?)
                // One connection per request: a storm must not leave thousands of idle
                // sockets next to the viewers' (the process's open-file limit).
                .pool_max_idle_per_host(0)
                .build()?,
        )),
        None => None,
    };
    let signer = TokenSigner::new(SECRET.as_bytes());
    let limit = Arc::new(tokio::sync::Semaphore::new(plan.connect_concurrency.max(1)));
    // A system that cannot take its audience within the connect limit is measured with whom
    // it took (the rest count as failed), rather than not at all. The limit counts from the
    // first attempt: starting viewers waits on the connect concurrency too.
    let deadline = tokio::time::Instant::now() + CONNECT_LIMIT;
    let mut report = WorkerReport::default();
    // Two halves, with a pause between them in which the coordinator reads the server's
    // memory: the second half's growth is what a connection costs once the matches' own
    // state is in place.
    let half = plan.viewers / 2;
    for (phase, viewers) in [(0, 0..half), (1, half..plan.viewers)] {
        let mut waits = Vec::with_capacity(viewers.len());
        let mut never_started = 0u64;
        for i in viewers.clone() {
            let viewer = plan.first_viewer + i;
            let (gateway, match_id) = plan.targets[viewer % plan.targets.len()].clone();
            let token = signer.sign(&Claims {
                sub: format!("viewer-{viewer}"),
                name: format!("Viewer {viewer}"),
                exp: now_us() / 1_000_000 + 3600,
            });
            let (tx, rx) = tokio::sync::oneshot::channel();
            let Ok(permit) = tokio::time::timeout_at(deadline, limit.clone().acquire_owned()).await
            else {
                never_started = (viewers.end - i) as u64;
                break;
            };
            let permit = permit?;
            let sse = (viewer as f64 * plan.sse).fract() + plan.sse >= 1.0
                && plan.sse > 0.0
                && plan.system == System::Grandstand;
            let (tally, source) = (tally.clone(), plan.source.clone());
            let (gated_tx, gated_rx) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                let done = rx.await.unwrap_or(false);
                drop(permit);
                let _ = gated_tx.send(done);
            });
            let slot = Slot {
                tally,
                viewer,
                system: plan.system,
                source,
                gateway,
                match_id,
                subject_root: plan.subject_root.clone(),
                token,
                connected: tx,
                storm: plan.storm,
                api: api.clone(),
            };
            if sse {
                tokio::spawn(sse_viewer(slot));
            } else if plan.system == System::Grandstand && plan.storm != Storm::None {
                tokio::spawn(storming_viewer(slot));
            } else if plan.system == System::Grandstand && plan.workload == Workload::Match {
                tokio::spawn(v2_viewer(slot, plan.grandstand_wire));
            } else {
                tokio::spawn(websocket_viewer(slot));
            }
            waits.push(gated_rx);
        }
        report.failed += never_started;
        for w in waits {
            match tokio::time::timeout_at(deadline, w).await {
                Ok(Ok(true)) => report.connected += 1,
                _ => report.failed += 1,
            }
        }
        if phase == 0 {
            println!("half {} {}", report.connected, report.failed);
            std::io::stdout().flush()?;
            tokio::task::spawn_blocking(|| std::io::stdin().read_line(&mut String::new()))
                .await??;
        }
    }
    println!("connected {} {}", report.connected, report.failed);
    std::io::stdout().flush()?;
    let mut line = String::new();
    tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut line).map(|_| line))
        .await??
        .split_whitespace()
        .skip(1)
        .map(|n| n.parse::<u64>())
        .collect::<Result<Vec<_>, _>>()
        .map(|w| {
            *tally.window.lock().unwrap() = (w[0], w[1]);
            if let Some(&at) = w.get(2) {
                // Every worker storms at the same wall-clock instant.
                let tally = tally.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_micros(at.saturating_sub(now_us()))).await;
                    tally.storm_at.store(now_us(), Ordering::Relaxed);
                    let _ = storm_tx.send(true);
                });
            }
        })?;
    let (_, to) = *tally.window.lock().unwrap();
    // Messages published in the window may still be in flight when it ends.
    let until = Duration::from_micros(to.saturating_sub(now_us())) + Duration::from_secs(2);
    tokio::time::sleep(until).await;
    // A storm is over when every viewer it dropped has come back or given up; on a loaded
    // machine that can outlast the window, and a report before it would miscount.
    let settle = Instant::now() + Duration::from_secs(30);
    while plan.storm != Storm::None && Instant::now() < settle {
        let done =
            tally.resumed.load(Ordering::Relaxed) + tally.resume_failed.load(Ordering::Relaxed);
        if tally.stormed.load(Ordering::Relaxed) > 0
            && done >= tally.stormed.load(Ordering::Relaxed)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut merged = histogram();
    for s in &tally.shards {
        merged.add(&*s.lock().unwrap())?;
    }
    V2Serializer::new().serialize(&merged, &mut report.histogram)?;
    report.messages = tally.messages.load(Ordering::Relaxed);
    report.gaps = tally.gaps.load(Ordering::Relaxed);
    report.snapshots = tally.snapshots.load(Ordering::Relaxed);
    report.held = tally.held.load(Ordering::Relaxed);
    report.wire_bytes = tally.wire_bytes.load(Ordering::Relaxed);
    V2Serializer::new().serialize(&*tally.resume.lock().unwrap(), &mut report.resume_histogram)?;
    V2Serializer::new().serialize(
        &*tally.cold_load.lock().unwrap(),
        &mut report.cold_load_histogram,
    )?;
    report.resumed = tally.resumed.load(Ordering::Relaxed);
    report.resume_replays = tally.resume_replays.load(Ordering::Relaxed);
    report.resume_snapshots = tally.resume_snapshots.load(Ordering::Relaxed);
    report.resume_failed = tally.resume_failed.load(Ordering::Relaxed);
    println!("report {}", serde_json::to_string(&report)?);
    std::io::stdout().flush()?;
    std::process::exit(0);
}

#[cfg(test)]
mod tests {
    use super::{number_after, Inflater, Tally};

    #[test]
    fn the_inflater_reads_each_message_on_its_own_and_refuses_garbage() {
        let mut inflater = Inflater::default();
        let small = br#"{"type":"delta","version":7}"#.to_vec();
        // Larger than the output buffer it starts with, and barely compressible.
        let large: Vec<u8> = (0..40_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for message in [&small, &large, &small] {
            let deflated = protocol::ws::deflate_message(message);
            assert_eq!(inflater.message(&deflated), Some(&message[..]));
        }
        assert_eq!(inflater.message(&[0xff, 0xfe, 0xfd]), None);
        let deflated = protocol::ws::deflate_message(&small);
        assert_eq!(
            inflater.message(&deflated),
            Some(&small[..]),
            "usable after an error"
        );
    }

    #[test]
    fn a_status_message_is_not_a_gap_but_a_skipped_version_is() {
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let tally = Tally::new(true, 1, rx);
        let mut last = None;
        for line in [
            r#"{"type":"snapshot","match":"m","epoch":1,"version":1,"state":{}}"#,
            r#"{"type":"delta","match":"m","epoch":1,"version":2,"tick":2}"#,
            r#"{"type":"status","match":"m","epoch":1,"version":2,"status":"producer_down","at_ms":1}"#,
            r#"{"type":"status","match":"m","epoch":1,"version":2,"status":"producer_up","at_ms":2}"#,
            r#"{"type":"delta","match":"m","epoch":1,"version":3,"tick":3}"#,
        ] {
            tally.observe(0, line, &mut last);
        }
        assert_eq!(tally.gaps.load(std::sync::atomic::Ordering::Relaxed), 0);
        tally.observe(
            0,
            r#"{"type":"delta","match":"m","epoch":1,"version":5,"tick":5}"#,
            &mut last,
        );
        assert_eq!(tally.gaps.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[test]
    fn reads_numbers_out_of_frames() {
        let t = r#"{"type":"delta","match":"m","epoch":1,"version":42,"published_us":1700000000123456,"tick":42}"#;
        assert_eq!(number_after(t, "\"version\":"), Some(42));
        assert_eq!(
            number_after(t, "\"published_us\":"),
            Some(1_700_000_000_123_456)
        );
        assert_eq!(number_after(t, "\"missing\":"), None);
    }
}
