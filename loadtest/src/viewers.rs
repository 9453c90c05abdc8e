//! `viewers`: N WebSocket (and SSE) viewers over M matches against real fan-out servers that
//! follow a real NATS JetStream match log: Grandstand's gateways (`grandstand gateway`), or
//! the peers people would deploy instead (`--systems`): a Node.js server on `ws`, Socket.IO,
//! nats-server's own WebSocket listener, and a minimal Rust writer (the physical limit).
//!
//! The harness publishes every match's records itself (a keyframe every 5 s, deltas at
//! `--rate` per match; each delta is a real spectator delta whose player name starts with its
//! publish time in microseconds, so every system carries the same bytes and the same clock),
//! starts `--gateways` server processes, and spreads the viewers over worker processes, each on
//! its own 127.0.0.x source address (one process may hold at most `ulimit -n` sockets, one
//! source address about 28k ports). A match's viewers all go to one server process, as
//! Grandstand's owner rule does.
//!
//! Measured in a window after everyone is connected: connections held, delivered messages per
//! second, publish -> receive latency (HDR, every message), gaps in the version lines, and
//! each gateway's CPU and resident memory from `/proc` (RSS per connection is the growth from
//! before the viewers connected).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use backends::{MatchLog, NatsLog, NatsLogConfig};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use protocol::{Claims, LogKind, LogRecord, TokenSigner};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::report::{machine, proc_usage, Latency, Results, Row};
use protocol::now_us;

const SECRET: &str = "loadtest-secret-shared-with-the-gateways";

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Viewers in all.
    #[arg(long, default_value_t = 1000)]
    viewers: usize,
    /// Matches the viewers are spread over.
    #[arg(long, default_value_t = 10)]
    matches: usize,
    /// Deltas per second per match.
    #[arg(long, default_value_t = 10)]
    rate: u32,
    /// Approximate size of each delta, bytes.
    #[arg(long, default_value_t = 200)]
    payload: usize,
    /// Seconds measured once everyone is connected.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Gateway processes (each holds at most `ulimit -n` connections).
    #[arg(long, default_value_t = 1)]
    gateways: usize,
    /// Share of viewers on SSE instead of WebSocket, 0..1.
    #[arg(long, default_value_t = 0.0)]
    sse: f64,
    /// Viewers per load-generator process.
    #[arg(long, default_value_t = 15_000)]
    per_worker: usize,
    /// Handshakes in flight per worker while connecting.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// A storm in the middle of the window (Grandstand only): every viewer drops at once and
    /// resumes from its last version (`reconnect`), or first fetches the cached snapshot and
    /// connects from it (`cold-load`), like a page reload of the whole audience.
    #[arg(long, value_enum, default_value_t = Storm::None)]
    storm: Storm,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Systems measured one after the other in this run, comma separated: grandstand,
    /// node-ws, socketio, nats-ws, raw.
    #[arg(long, default_value = "grandstand", value_delimiter = ',')]
    systems: Vec<System>,
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Where the Node.js peers live (`npm ci` runs there when needed).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/peers"))]
    peers_dir: PathBuf,
    /// The `grandstand` binary (by default, next to this one).
    #[arg(long)]
    grandstand: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Storm {
    None,
    Reconnect,
    ColdLoad,
}

impl Storm {
    fn name(self) -> &'static str {
        match self {
            Storm::None => "none",
            Storm::Reconnect => "reconnect",
            Storm::ColdLoad => "cold-load",
        }
    }
}

impl Args {
    pub fn with_storm(mut self, storm: Storm) -> Args {
        self.storm = storm;
        self
    }
}

/// A fan-out server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    /// `grandstand gateway` processes.
    Grandstand,
    /// Node.js, the `ws` package, a loop over each match's sockets.
    NodeWs,
    /// Node.js, Socket.IO rooms.
    Socketio,
    /// nats-server's own WebSocket listener; viewers subscribe to the match subject.
    NatsWs,
    /// A minimal Rust writer of pre-framed bytes (`loadtest peer-raw`).
    Raw,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Grandstand => "grandstand",
            System::NodeWs => "node-ws",
            System::Socketio => "socketio",
            System::NatsWs => "nats-ws",
            System::Raw => "raw",
        }
    }
}

/// What the parent tells a worker (as JSON in its arguments).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerPlan {
    system: System,
    storm: Storm,
    /// The snapshot API, for cold-load storms.
    api: Option<String>,
    /// The subject root, for viewers that subscribe to NATS themselves.
    subject_root: String,
    /// (gateway base URL, match id) per viewer slot, cycled.
    targets: Vec<(String, String)>,
    viewers: usize,
    first_viewer: usize,
    source: String,
    sse: f64,
    connect_concurrency: usize,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct WorkerReport {
    connected: u64,
    failed: u64,
    /// Viewers still connected at the end of the window.
    held: u64,
    messages: u64,
    gaps: u64,
    snapshots: u64,
    histogram: Vec<u8>,
    /// Storm: drop -> the new connection's handshake done (resumed), per viewer.
    resume_histogram: Vec<u8>,
    /// Cold-load storm: the snapshot GET, per viewer.
    cold_load_histogram: Vec<u8>,
    resumed: u64,
    resume_replays: u64,
    resume_snapshots: u64,
    resume_failed: u64,
}

fn histogram() -> Histogram<u64> {
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
}

impl Tally {
    /// Accounts one message: `text` is a delta as the system sent it (JSON, or for Socket.IO
    /// its event packet, where the delta is an escaped string).
    fn observe(&self, viewer: usize, text: &str, last_version: &mut Option<u64>) {
        let now = now_us();
        let unescaped;
        let text = if text.contains("\\\"") {
            unescaped = text.replace("\\\"", "\"");
            unescaped.as_str()
        } else {
            text
        };
        // Grandstand numbers its messages; the peers forward the delta, whose tick is the
        // version in this harness.
        let version =
            number_after(text, "\"version\":").or_else(|| number_after(text, "\"tick\":"));
        if text.starts_with("{\"type\":\"snapshot\"") {
            self.snapshots.fetch_add(1, Ordering::Relaxed);
        } else if let (Some(v), Some(last)) = (version, *last_version) {
            if v != last + 1 {
                self.gaps.fetch_add(1, Ordering::Relaxed);
            }
        }
        *last_version = version.or(*last_version);
        let Some(sent) = number_after(text, "\"name\":\"t") else {
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

fn bind_address_no_port(socket: &TcpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

pub(crate) async fn open_socket(source: &str, gateway: &str) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    // The port is picked at connect time, per destination: binding to port 0 makes the kernel
    // search for a port free for every destination, which turns slow and serial once thousands
    // of closed connections sit in TIME_WAIT (a reconnect storm measured the load generator,
    // not the gateway, without this).
    bind_address_no_port(&socket)?;
    socket.bind(format!("{source}:0").parse()?)?;
    let addr = gateway.trim_start_matches("http://").parse()?;
    Ok(socket.connect(addr).await?)
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
        System::Grandstand => format!("{base}/v1/matches/{match_id}/stream"),
        System::NodeWs | System::Raw => format!("{base}/?match={match_id}"),
        System::Socketio => format!("{base}/socket.io/?EIO=4&transport=websocket"),
        System::NatsWs => format!("{base}/"),
    };
    let opened = async {
        let stream = open_socket(&source, &gateway).await?;
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
                    "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true,\"protocol\":1}}\r\nSUB {subject_root}.{match_id}.delta 1\r\nPING\r\n"
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

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn grandstand_ws(
    source: &str,
    gateway: &str,
    match_id: &str,
    token: &str,
    since: Option<(u64, u64)>,
) -> anyhow::Result<Ws> {
    let stream = open_socket(source, gateway).await?;
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
    let opened = grandstand_ws(&source, &gateway, &match_id, &token, None).await;
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
                match grandstand_ws(&source, &gateway, &match_id, &token, since).await {
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
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    tally.held.fetch_sub(1, Ordering::Relaxed);
}

/// A worker process: connects its viewers, says so on stdout, waits for the measuring window
/// on stdin, and prints its report.
pub async fn worker(plan_json: String) -> anyhow::Result<()> {
    let plan: WorkerPlan = serde_json::from_str(&plan_json)?;
    let (storm_tx, storm_rx) = tokio::sync::watch::channel(false);
    let tally = Arc::new(Tally {
        shards: (0..32).map(|_| Mutex::new(histogram())).collect(),
        window: Mutex::new((u64::MAX, u64::MAX)),
        messages: AtomicU64::new(0),
        gaps: AtomicU64::new(0),
        snapshots: AtomicU64::new(0),
        held: AtomicU64::new(0),
        storm: storm_rx,
        storm_at: AtomicU64::new(0),
        resume: Mutex::new(histogram()),
        cold_load: Mutex::new(histogram()),
        resumed: AtomicU64::new(0),
        resume_replays: AtomicU64::new(0),
        resume_snapshots: AtomicU64::new(0),
        resume_failed: AtomicU64::new(0),
        stormed: AtomicU64::new(0),
    });
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
    let mut waits = Vec::with_capacity(plan.viewers);
    for i in 0..plan.viewers {
        let viewer = plan.first_viewer + i;
        let (gateway, match_id) = plan.targets[viewer % plan.targets.len()].clone();
        let token = signer.sign(&Claims {
            sub: format!("viewer-{viewer}"),
            name: format!("Viewer {viewer}"),
            exp: now_us() / 1_000_000 + 3600,
        });
        let (tx, rx) = tokio::sync::oneshot::channel();
        let permit = limit.clone().acquire_owned().await?;
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
        } else {
            tokio::spawn(websocket_viewer(slot));
        }
        waits.push(gated_rx);
    }
    let mut report = WorkerReport::default();
    for w in waits {
        if w.await.unwrap_or(false) {
            report.connected += 1;
        } else {
            report.failed += 1;
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

/// One fan-out server process under test.
pub(crate) struct Server {
    child: Child,
    pub(crate) url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn log_file(what: &str) -> anyhow::Result<(PathBuf, std::fs::File)> {
    let path = std::env::temp_dir().join(format!(
        "gs-loadtest-{what}-{}-{}.log",
        std::process::id(),
        rand::random::<u32>()
    ));
    let file = std::fs::File::create(&path)?;
    Ok((path, file))
}

/// Waits until the process's log says where it listens: `http_addr=<addr>` (grandstand) or
/// `listening <port>` (the peers).
pub(crate) fn wait_listening(child: Child, log: &PathBuf) -> anyhow::Result<Server> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(i) = text.find("http_addr=") {
            let addr: String = text[i + 10..]
                .chars()
                .take_while(|c| !c.is_whitespace())
                .collect();
            return Ok(Server {
                child,
                url: format!("http://{addr}"),
            });
        }
        if let Some(port) = text
            .lines()
            .find_map(|l| l.strip_prefix("listening "))
            .and_then(|p| p.trim().parse::<u16>().ok())
        {
            return Ok(Server {
                child,
                url: format!("http://127.0.0.1:{port}"),
            });
        }
        if Instant::now() > deadline {
            bail!("server did not start:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start_server(
    system: System,
    bin: &PathBuf,
    args: &Args,
    nats_url: &str,
    stream: &str,
    root: &str,
) -> anyhow::Result<Server> {
    let (log, file) = log_file(system.name())?;
    let mut cmd = match system {
        System::Grandstand => {
            let mut c = Command::new(bin);
            c.args(["gateway", "--http-addr", "127.0.0.1:0"])
                .args(["--nats-stream", stream, "--nats-subject-root", root])
                .args(["--max-streams-per-user", "4", "--max-streams-per-address"])
                // Twice the audience: in a storm every viewer is back before the gateway has
                // torn down all the connections it dropped (the cap counts both for a moment,
                // and refused resumes were a flaky harness, not the gateway).
                .arg((2 * args.viewers + 1).to_string())
                .args(["--handshakes-per-sec", "1000000"])
                .args(["--max-connections", "1000000"])
                .env("GRANDSTAND_TOKEN_SECRET", SECRET)
                .env("RUST_LOG", "warn,grandstand=info");
            c
        }
        System::NodeWs | System::Socketio => {
            ensure_node_peers(&args.peers_dir)?;
            let script = if system == System::NodeWs {
                "node-ws.mjs"
            } else {
                "socketio.mjs"
            };
            let mut c = Command::new("node");
            c.arg(args.peers_dir.join(script))
                .current_dir(&args.peers_dir)
                .env("SUBJECT_ROOT", root)
                .env("PORT", "0");
            c
        }
        System::Raw => {
            let mut c = Command::new(std::env::current_exe()?);
            c.args(["peer-raw", "--nats-url", nats_url, "--subject-root", root]);
            c
        }
        System::NatsWs => bail!("nats-ws is started with its own nats-server"),
    };
    let child = cmd
        .env("NATS_URL", nats_url)
        .stdout(file.try_clone()?)
        .stderr(file)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", system.name()))?;
    wait_listening(child, &log)
}

fn ensure_node_peers(dir: &PathBuf) -> anyhow::Result<()> {
    if dir.join("node_modules/ws").exists() && dir.join("node_modules/socket.io").exists() {
        return Ok(());
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(dir)
        .status()
        .context("running npm ci for the Node.js peers")?;
    anyhow::ensure!(status.success(), "npm ci failed in {}", dir.display());
    Ok(())
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A nats-server of its own for the nats-ws system: JetStream (the publisher writes the same
/// stream into it) and a WebSocket listener the viewers subscribe through. Returns the server
/// (its `url` is the WebSocket listener) and its client URL.
fn start_nats_ws() -> anyhow::Result<(Server, String, PathBuf)> {
    let (client, ws) = (free_port()?, free_port()?);
    let dir = std::env::temp_dir().join(format!("gs-loadtest-nats-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir)?;
    let conf = dir.join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:{client}\njetstream {{ store_dir: \"{}\" }}\nwebsocket {{ listen: \"127.0.0.1:{ws}\", no_tls: true }}\nmax_connections: 1000000\n",
            dir.join("js").display()
        ),
    )?;
    let (log, file) = log_file("nats-ws")?;
    let bin = if std::path::Path::new("/usr/sbin/nats-server").exists() {
        "/usr/sbin/nats-server"
    } else {
        "nats-server"
    };
    let child = Command::new(bin)
        .args(["-c", conf.to_str().context("path")?])
        .stdout(file.try_clone()?)
        .stderr(file)
        .stdin(Stdio::null())
        .spawn()
        .context("starting nats-server")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", ws)).is_err() {
        if Instant::now() > deadline {
            bail!(
                "nats-server did not start:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((
        Server {
            child,
            url: format!("http://127.0.0.1:{ws}"),
        },
        format!("nats://127.0.0.1:{client}"),
        dir,
    ))
}

/// Publishes every match's records: a keyframe now and every 5 s, deltas at `rate`.
async fn publish(
    log: Arc<NatsLog>,
    match_id: String,
    rate: u32,
    payload: usize,
    stop: httpkit::Shutdown,
) {
    let state = serde_json::json!({
        "region": "eu", "status": "live", "tick": 0,
        "arena": {"width": 10000, "height": 10000, "obstacles": []},
        "players": {},
    });
    let mut version = 1u64;
    let keyframe = |version| LogRecord {
        match_id: match_id.clone(),
        epoch: 1,
        version,
        kind: LogKind::Keyframe,
        body: Bytes::from(serde_json::to_vec(&state).expect("json")),
    };
    let _ = log.publish(keyframe(version)).await;
    // A real delta (gateways send only the viewer contract): one player moving, whose name
    // starts with the publish time (µs) and pads the message to `payload` bytes.
    let pad = "x".repeat(payload.saturating_sub(206));
    // Matches are not in step with each other: each starts at a random phase of the period.
    let period = 1.0 / f64::from(rate.max(1));
    tokio::time::sleep(Duration::from_secs_f64(period * rand::random::<f64>())).await;
    let mut every = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    let mut last_keyframe = Instant::now();
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.cancelled() => return,
        }
        version += 1;
        let body = format!(
            "{{\"tick\":{version},\"players\":{{\"p1\":{{\"name\":\"t{}{pad}\",\"x\":{},\"y\":{},\"angle\":0,\"hp\":100,\"alive\":true,\"score\":0,\"kills\":0,\"deaths\":0,\"bot\":true}}}}}}",
            now_us(),
            version % 10_000,
            (version * 7) % 10_000
        );
        let record = LogRecord {
            match_id: match_id.clone(),
            epoch: 1,
            version,
            kind: LogKind::Delta,
            body: Bytes::from(body),
        };
        if let Err(e) = log.publish(record).await {
            eprintln!("publish failed: {e}");
        }
        if last_keyframe.elapsed() >= Duration::from_secs(5) {
            let _ = log.publish(keyframe(version)).await;
            last_keyframe = Instant::now();
        }
    }
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_worker(plan: &WorkerPlan) -> anyhow::Result<Worker> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["viewers-worker", "--plan", &serde_json::to_string(plan)?])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdin = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    Ok(Worker {
        child,
        stdin,
        lines,
    })
}

fn wait_line(worker: &Worker, prefix: &str, limit: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = worker
            .lines
            .recv_timeout(left)
            .with_context(|| format!("a worker never said {prefix:?}"))?;
        if let Some(rest) = line.strip_prefix(prefix) {
            return Ok(rest.trim().to_string());
        }
    }
}

/// What one system did in its window.
#[derive(Debug, Clone, Serialize)]
struct Measured {
    system: &'static str,
    viewers: usize,
    held: u64,
    failed: u64,
    connect_secs: f64,
    delivered_per_s: f64,
    server_cpu_cores: f64,
    msgs_per_cpu_second: f64,
    rss_total_bytes: u64,
    rss_per_connection_bytes: f64,
    gaps: u64,
    snapshots: u64,
    latency: Latency,
    /// The latency distribution as (microseconds, fraction at or below), for CDF plots.
    cdf: Vec<(u64, f64)>,
    /// Storms: every viewer's drop -> its new connection up (after the snapshot GET for
    /// cold loads).
    #[serde(skip_serializing_if = "Option::is_none")]
    storm: Option<StormMeasured>,
}

#[derive(Debug, Clone, Serialize)]
struct StormMeasured {
    kind: Storm,
    resumed: u64,
    failed: u64,
    /// The first message after resuming: retained deltas (replay) or a snapshot.
    replays: u64,
    snapshots: u64,
    resume: Latency,
    #[serde(skip_serializing_if = "Option::is_none")]
    cold_load: Option<Latency>,
}

pub async fn run(args: Args) -> anyhow::Result<Results> {
    let mut rows = Vec::new();
    let mut measured = Vec::new();
    for &system in &args.systems {
        eprintln!("== {}", system.name());
        let m = measure(system, &args).await?;
        let transport = if system != System::Grandstand || args.sse <= 0.0 {
            "WS".to_string()
        } else if args.sse >= 1.0 {
            "SSE".to_string()
        } else {
            format!("WS + {:.0}% SSE", args.sse * 100.0)
        };
        rows.push(Row {
            name: format!(
                "{}: {} {transport} viewers, {} process(es)",
                system.name(),
                args.viewers,
                args.gateways
            ),
            throughput_per_s: m.delivered_per_s,
            unit: "msgs/s delivered".into(),
            latency: m.latency.clone(),
            latency_of: "publish (harness clock) -> received by the viewer".into(),
            notes: format!(
                "held {}/{} (connect {:.1} s, {} failed); server CPU {:.2} cores ({:.0} msgs per CPU-second); RSS {:.0} MiB total, {:.1} KiB per connection; {} gaps, {} snapshots",
                m.held,
                args.viewers,
                m.connect_secs,
                m.failed,
                m.server_cpu_cores,
                m.msgs_per_cpu_second,
                m.rss_total_bytes as f64 / 1048576.0,
                m.rss_per_connection_bytes / 1024.0,
                m.gaps,
                m.snapshots,
            ),
        });
        if let (Some(st), Some(row)) = (&m.storm, rows.last_mut()) {
            row.notes += &format!(
                "; {} storm: {}/{} resumed ({} failed), first message a replay for {} and a snapshot for {}, drop -> reconnected p50 {:.1} ms p99 {:.1} ms max {:.1} ms{}",
                st.kind.name(),
                st.resumed,
                m.held,
                st.failed,
                st.replays,
                st.snapshots,
                st.resume.p50_us as f64 / 1000.0,
                st.resume.p99_us as f64 / 1000.0,
                st.resume.max_us as f64 / 1000.0,
                st.cold_load.as_ref().map_or(String::new(), |c| format!(
                    "; snapshot GET p50 {:.1} ms p99 {:.1} ms",
                    c.p50_us as f64 / 1000.0,
                    c.p99_us as f64 / 1000.0
                )),
            );
        }
        measured.push(m);
    }
    let mut summary = Vec::new();
    if let Some(gs) = measured.iter().find(|m| m.system == "grandstand") {
        for peer in measured.iter().filter(|m| m.system != "grandstand") {
            summary.push(format!(
                "grandstand / {}: {:.2}x msgs per CPU-second, {:.2}x p99 latency (lower is better), {:.2}x memory per connection (lower is better), held {} vs {}",
                peer.system,
                gs.msgs_per_cpu_second / peer.msgs_per_cpu_second.max(1e-9),
                gs.latency.p99_us as f64 / peer.latency.p99_us.max(1) as f64,
                gs.rss_per_connection_bytes / peer.rss_per_connection_bytes.max(1.0),
                gs.held,
                peer.held,
            ));
        }
    }
    let systems: Vec<&str> = args.systems.iter().map(|s| s.name()).collect();
    Ok(Results {
        summary,
        systems: measured
            .iter()
            .map(|m| serde_json::to_value(m).expect("json"))
            .collect(),
        scenario: "viewers: fan-out through real server processes following NATS JetStream".into(),
        machine: machine(),
        command: format!(
            "loadtest viewers --systems {} --storm {} --viewers {} --matches {} --rate {} --payload {} --duration {} --gateways {} --sse {}",
            systems.join(","), args.storm.name(), args.viewers, args.matches, args.rate, args.payload, args.duration, args.gateways, args.sse
        ),
        rows,
    })
}

async fn measure(system: System, args: &Args) -> anyhow::Result<Measured> {
    let bin = match &args.grandstand {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory")?
            .join("grandstand"),
    };
    let tag = format!("{}{}", std::process::id(), rand::random::<u16>());
    let (stream, root) = (format!("GS_LOADTEST_{tag}"), format!("gsload{tag}"));
    // nats-ws brings its own nats-server, which is also the fan-out server under test;
    // everyone else follows the shared one.
    let mut servers: Vec<Server> = Vec::new();
    let mut nats_dir = None;
    let nats_url = if system == System::NatsWs {
        anyhow::ensure!(
            args.gateways <= 1,
            "nats-ws runs one nats-server (a cluster is not set up by this harness)"
        );
        let (server, url, dir) = start_nats_ws()?;
        servers.push(server);
        nats_dir = Some(dir);
        url
    } else {
        args.nats_url.clone()
    };
    let mut config = NatsLogConfig::new(nats_url.clone());
    config.stream = stream.clone();
    config.subject_root = root.clone();
    config.max_age = Duration::from_secs(600);
    config.max_bytes = 1 << 30;
    let log = Arc::new(
        NatsLog::connect(config)
            .await
            .context("connecting to NATS")?,
    );

    let stop = httpkit::Shutdown::new();
    let match_ids: Vec<String> = (0..args.matches)
        .map(|i| format!("load-{tag}-{i}"))
        .collect();
    if servers.is_empty() {
        for _ in 0..args.gateways.max(1) {
            servers.push(start_server(system, &bin, args, &nats_url, &stream, &root)?);
        }
    }
    anyhow::ensure!(
        args.storm == Storm::None || system == System::Grandstand,
        "storms are measured on grandstand only (the peers have no resume)"
    );
    let api = if args.storm == Storm::ColdLoad {
        Some(start_snapshot_api(&bin, args, &nats_url, &stream, &root)?)
    } else {
        None
    };
    let mut publishers = Vec::new();
    for id in &match_ids {
        publishers.push(tokio::spawn(publish(
            log.clone(),
            id.clone(),
            args.rate,
            args.payload,
            stop.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before: Vec<(f64, u64)> = servers.iter().map(|g| proc_usage(g.child.id())).collect();

    // A match's viewers all go to one server process.
    let targets: Vec<(String, String)> = match_ids
        .iter()
        .enumerate()
        .map(|(i, id)| (servers[i % servers.len()].url.clone(), id.clone()))
        .collect();
    let workers_n = args.viewers.div_ceil(args.per_worker.max(1)).max(1);
    let connecting = Instant::now();
    let mut workers = Vec::new();
    for w in 0..workers_n {
        let first = w * args.viewers / workers_n;
        let last = (w + 1) * args.viewers / workers_n;
        let plan = WorkerPlan {
            system,
            storm: args.storm,
            api: api.as_ref().map(|a| a.url.clone()),
            subject_root: root.clone(),
            targets: targets.clone(),
            viewers: last - first,
            first_viewer: first,
            source: format!("127.0.0.{}", 10 + w),
            sse: args.sse,
            connect_concurrency: args.connect_concurrency,
        };
        workers.push(start_worker(&plan)?);
    }
    let (mut connected, mut failed) = (0u64, 0u64);
    for w in &workers {
        let line = wait_line(w, "connected", Duration::from_secs(600))?;
        let mut n = line
            .split_whitespace()
            .map(|n| n.parse::<u64>().unwrap_or(0));
        connected += n.next().unwrap_or(0);
        failed += n.next().unwrap_or(0);
    }
    let connect_secs = connecting.elapsed().as_secs_f64();
    eprintln!(
        "{connected} viewers connected ({failed} failed) in {connect_secs:.1} s; measuring {} s",
        args.duration
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    let from = now_us();
    let to = from + args.duration * 1_000_000;
    let start_usage: Vec<(f64, u64)> = servers.iter().map(|g| proc_usage(g.child.id())).collect();
    let storm_at = if args.storm != Storm::None {
        format!(" {}", from + args.duration * 500_000)
    } else {
        Default::default()
    };
    for w in &mut workers {
        writeln!(w.stdin, "measure {from} {to}{storm_at}")?;
        w.stdin.flush()?;
    }
    let bar = crate::report::window_bar(args.duration, system.name());
    tokio::time::sleep(Duration::from_micros(to - from)).await;
    bar.finish_and_clear();
    let end_usage: Vec<(f64, u64)> = servers.iter().map(|g| proc_usage(g.child.id())).collect();
    let mut merged = histogram();
    let (mut resume, mut cold_load) = (histogram(), histogram());
    let mut total = WorkerReport::default();
    for w in &workers {
        let line = wait_line(w, "report", Duration::from_secs(120))?;
        let r: WorkerReport = serde_json::from_str(&line)?;
        let h: Histogram<u64> = Deserializer::new().deserialize(&mut r.histogram.as_slice())?;
        merged.add(&h)?;
        if args.storm != Storm::None {
            let h: Histogram<u64> =
                Deserializer::new().deserialize(&mut r.resume_histogram.as_slice())?;
            resume.add(&h)?;
            let h: Histogram<u64> =
                Deserializer::new().deserialize(&mut r.cold_load_histogram.as_slice())?;
            cold_load.add(&h)?;
        }
        total.resumed += r.resumed;
        total.resume_replays += r.resume_replays;
        total.resume_snapshots += r.resume_snapshots;
        total.resume_failed += r.resume_failed;
        total.messages += r.messages;
        total.gaps += r.gaps;
        total.snapshots += r.snapshots;
        total.held += r.held;
    }
    stop.cancel();
    for p in publishers {
        let _ = p.await;
    }
    drop(workers);
    let _ = log.delete_stream().await;
    drop(servers);
    if let Some(dir) = nats_dir {
        let _ = std::fs::remove_dir_all(dir);
    }

    let secs = args.duration as f64;
    let cpu: f64 = start_usage
        .iter()
        .zip(&end_usage)
        .map(|(a, b)| b.0 - a.0)
        .sum::<f64>()
        / secs;
    let rss_growth: u64 = before
        .iter()
        .zip(&end_usage)
        .map(|(a, b)| b.1.saturating_sub(a.1))
        .sum();
    let rate = total.messages as f64 / secs;
    let cdf = [
        0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999, 1.0,
    ]
    .iter()
    .map(|&q| (merged.value_at_quantile(q), q))
    .collect();
    Ok(Measured {
        system: system.name(),
        viewers: args.viewers,
        held: total.held,
        failed,
        connect_secs,
        delivered_per_s: rate,
        server_cpu_cores: cpu,
        msgs_per_cpu_second: rate / cpu.max(1e-9),
        rss_total_bytes: end_usage.iter().map(|u| u.1).sum(),
        rss_per_connection_bytes: rss_growth as f64 / connected.max(1) as f64,
        gaps: total.gaps,
        snapshots: total.snapshots,
        latency: Latency::of(&merged),
        cdf,
        storm: (args.storm != Storm::None).then(|| StormMeasured {
            kind: args.storm,
            resumed: total.resumed,
            failed: total.resume_failed,
            replays: total.resume_replays,
            snapshots: total.resume_snapshots,
            resume: Latency::of(&resume),
            cold_load: (args.storm == Storm::ColdLoad).then(|| Latency::of(&cold_load)),
        }),
    })
}

/// `grandstand snapshot-api` on the same stream, for cold-load storms.
fn start_snapshot_api(
    bin: &PathBuf,
    args: &Args,
    nats_url: &str,
    stream: &str,
    root: &str,
) -> anyhow::Result<Server> {
    let (log, file) = log_file("snapshot-api")?;
    let data = std::env::temp_dir().join(format!("gs-loadtest-api-{}", rand::random::<u32>()));
    let child = Command::new(bin)
        .args(["snapshot-api", "--http-addr", "127.0.0.1:0"])
        .args(["--nats-stream", stream, "--nats-subject-root", root])
        .arg("--data-dir")
        .arg(&data)
        .env("NATS_URL", nats_url)
        .env("REDIS_URL", &args.redis_url)
        .env("REDIS_PREFIX", format!("gs-loadtest-{root}:"))
        .env("GRANDSTAND_TOKEN_SECRET", SECRET)
        .env("RUST_LOG", "warn,grandstand=info")
        .stdout(file.try_clone()?)
        .stderr(file)
        .stdin(Stdio::null())
        .spawn()
        .context("starting the snapshot API")?;
    wait_listening(child, &log)
}

#[cfg(test)]
mod tests {
    use super::number_after;

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
