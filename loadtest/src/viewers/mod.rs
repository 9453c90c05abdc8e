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
//!
//! [`worker`] holds the viewers (in worker processes), [`servers`] the systems under test and
//! the publisher; this module plans a run and measures it (long because the plan, the
//! measurement window and the report with its side-by-side ratios are one sequence).

pub mod feed;
mod servers;
pub mod worker;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use backends::{NatsLog, NatsLogConfig};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::process::Service;
use crate::report::{machine, proc_usage, Latency, Results, Row};
use protocol::now_us;
use servers::{publish, start_nats_ws, start_server, start_snapshot_api, start_worker, wait_line};
use worker::histogram;

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
    /// Approximate size of each delta, bytes (synthetic workload).
    #[arg(long, default_value_t = 200)]
    payload: usize,
    /// What the matches publish: `synthetic` deltas of `--payload` bytes at `--rate`, or
    /// `match`, a recorded real 50-player match (deltas and events as its room published them,
    /// at its pace; `--rate` and `--payload` do not apply). With `match`, Grandstand's viewers
    /// ask for feed v2 with permessage-deflate, as a browser does; the peers forward the same
    /// feed as v1 JSON, uncompressed.
    #[arg(long, value_enum, default_value_t = Workload::Synthetic)]
    workload: Workload,
    /// The recording `--workload match` replays.
    #[arg(long, default_value = feed::REFERENCE)]
    feed: PathBuf,
    /// What Grandstand's WebSocket viewers ask for with `--workload match`: feed v2 with
    /// permessage-deflate (what a browser does), v2 uncompressed, or v1.
    #[arg(long, value_enum, default_value_t = GrandstandWire::V2Deflate)]
    grandstand_wire: GrandstandWire,
    /// One viewer in this many has every message opened and timed (latency, gaps,
    /// snapshots); the others only count what they receive, so the load generator, which shares
    /// the cores with the servers, spends its CPU reading sockets. The same for every system.
    #[arg(long, default_value_t = 10)]
    latency_sample: usize,
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
    /// node-ws, socketio, nats-ws, raw, floor, uws.
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
pub enum Workload {
    Synthetic,
    Match,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum GrandstandWire {
    V2Deflate,
    V2,
    V1,
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
    /// The same gateways with JSON logs and OpenTelemetry traces exported over OTLP (to a
    /// sink in the harness): what observability costs the fan-out.
    GrandstandJsonOtlp,
    /// Node.js, the `ws` package, a loop over each match's sockets.
    NodeWs,
    /// Node.js, Socket.IO rooms.
    Socketio,
    /// nats-server's own WebSocket listener; viewers subscribe to the match subject.
    NatsWs,
    /// A minimal Rust writer of pre-framed bytes (`loadtest peer-raw`).
    Raw,
    /// The floor under every fan-out server: the same pre-framed bytes written straight to
    /// each viewer's socket by the loop that reads the feed (`loadtest peer-raw --direct`:
    /// one `write` per viewer per message, no queue, no task, no timer per viewer).
    Floor,
    /// Node.js, uWebSockets.js pub/sub (`app.publish` to a topic per match).
    Uws,
}

impl System {
    fn is_grandstand(self) -> bool {
        matches!(self, System::Grandstand | System::GrandstandJsonOtlp)
    }

    /// What the viewers of this system are (the observed gateway's are Grandstand's).
    fn viewers_of(self) -> System {
        if self.is_grandstand() {
            System::Grandstand
        } else {
            self
        }
    }

    fn name(self) -> &'static str {
        match self {
            System::Grandstand => "grandstand",
            System::GrandstandJsonOtlp => "grandstand-json-otlp",
            System::NodeWs => "node-ws",
            System::Socketio => "socketio",
            System::NatsWs => "nats-ws",
            System::Raw => "raw",
            System::Floor => "floor",
            System::Uws => "uws",
        }
    }
}

/// What the parent tells a worker (as JSON in its arguments).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerPlan {
    system: System,
    workload: Workload,
    grandstand_wire: GrandstandWire,
    sample_every: usize,
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
    /// Bytes the viewers' sockets received in the window.
    wire_bytes: u64,
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
    /// RSS growth from before the first viewer to all connected, per viewer: with whatever
    /// the matches' own state grew by meanwhile.
    rss_per_connection_bytes: f64,
    /// RSS growth while the second half of the viewers connected, per viewer: what one more
    /// connection costs once the matches are warm.
    rss_marginal_per_connection_bytes: f64,
    gaps: u64,
    snapshots: u64,
    /// Bytes one viewer's socket received per second (frames and framing; not TCP/IP).
    wire_bytes_per_viewer_per_s: f64,
    /// Grandstand: CPU its hubs spent decoding records and encoding frames (both formats and
    /// the compressed one), once per message per match, in cores.
    encode_cpu_cores: f64,
    /// Grandstand: messages per vectored write to a WebSocket viewer.
    messages_per_write: f64,
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

/// Grandstand's own counters, summed over its gateways: encode time (once per message per
/// match), vectored writes to WebSocket viewers and messages handed to viewers.
async fn gateway_counters(urls: &[String]) -> (f64, f64, f64) {
    let http = reqwest::Client::new();
    let mut sums = (0.0, 0.0, 0.0);
    for url in urls {
        let Ok(r) = http.get(format!("{url}/metrics")).send().await else {
            continue;
        };
        let text = r.text().await.unwrap_or_default();
        let value = |name: &str| {
            text.lines()
                .find_map(|l| {
                    l.strip_prefix(name)?
                        .strip_prefix(' ')?
                        .trim()
                        .parse::<f64>()
                        .ok()
                })
                .unwrap_or(0.0)
        };
        sums.0 += value("gw_encode_seconds_total");
        sums.1 += value("gw_viewer_writes_total");
        sums.2 += value("gw_messages_out_total");
    }
    sums
}

pub async fn run(args: Args) -> anyhow::Result<Results> {
    let mut rows = Vec::new();
    let mut measured = Vec::new();
    for &system in &args.systems {
        eprintln!("== {}", system.name());
        let m = match measure(system, &args).await {
            Ok(m) => m,
            Err(e) => {
                // One system that cannot be measured does not cost the others their figures.
                eprintln!("{}: not measured: {e:#}", system.name());
                rows.push(Row {
                    name: format!("{}: {} viewers", system.name(), args.viewers),
                    throughput_per_s: 0.0,
                    unit: "msgs/s delivered".into(),
                    latency: Latency::of(&histogram()),
                    latency_of: "publish (harness clock) -> received by the viewer".into(),
                    notes: format!("not measured: {e:#}"),
                });
                continue;
            }
        };
        let transport = if !system.is_grandstand() || args.sse <= 0.0 {
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
                "held {}/{} (connect {:.1} s, {} failed); server CPU {:.2} cores ({:.0} msgs per CPU-second); RSS {:.0} MiB total, {:.1} KiB per connection ({:.1} KiB for each of the second half); {:.1} KB/s per viewer on the wire; {} gaps, {} snapshots",
                m.held,
                args.viewers,
                m.connect_secs,
                m.failed,
                m.server_cpu_cores,
                m.msgs_per_cpu_second,
                m.rss_total_bytes as f64 / 1048576.0,
                m.rss_per_connection_bytes / 1024.0,
                m.rss_marginal_per_connection_bytes / 1024.0,
                m.wire_bytes_per_viewer_per_s / 1000.0,
                m.gaps,
                m.snapshots,
            ),
        });
        if let (true, Some(row)) = (system == System::GrandstandJsonOtlp, rows.last_mut()) {
            use std::sync::atomic::Ordering::Relaxed;
            row.notes += &format!(
                "; JSON logs, traces exported over OTLP: the sink took {} exports, {} KiB",
                servers::OTLP_REQUESTS.load(Relaxed),
                servers::OTLP_BYTES.load(Relaxed) / 1024
            );
        }
        if let (true, Some(row)) = (system.is_grandstand(), rows.last_mut()) {
            row.notes += &format!(
                "; encoding {:.3} cores (once per message per match); {:.2} messages per write",
                m.encode_cpu_cores, m.messages_per_write
            );
        }
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
                "grandstand / {}: {:.2}x msgs per CPU-second, {:.2}x p99 latency (lower is better), {:.2}x memory per connection (lower is better; {:.2}x for the second half's), {:.2}x bytes per viewer (lower is better), held {} vs {}",
                peer.system,
                gs.msgs_per_cpu_second / peer.msgs_per_cpu_second.max(1e-9),
                gs.latency.p99_us as f64 / peer.latency.p99_us.max(1) as f64,
                gs.rss_per_connection_bytes / peer.rss_per_connection_bytes.max(1.0),
                gs.rss_marginal_per_connection_bytes
                    / peer.rss_marginal_per_connection_bytes.max(1.0),
                gs.wire_bytes_per_viewer_per_s / peer.wire_bytes_per_viewer_per_s.max(1e-9),
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
            "loadtest viewers --systems {} --workload {} --storm {} --viewers {} --matches {} --rate {} --payload {} --duration {} --gateways {} --sse {}",
            systems.join(","), match args.workload { Workload::Synthetic => "synthetic", Workload::Match => "match" }, args.storm.name(), args.viewers, args.matches, args.rate, args.payload, args.duration, args.gateways, args.sse
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
    let mut servers: Vec<Service> = Vec::new();
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
        args.storm == Storm::None || system.is_grandstand(),
        "storms are measured on grandstand only (the peers have no resume)"
    );
    let api = if args.storm == Storm::ColdLoad {
        Some(start_snapshot_api(&bin, args, &nats_url, &stream, &root)?)
    } else {
        None
    };
    let recording = match args.workload {
        Workload::Match => Some(Arc::new(feed::load(&args.feed)?)),
        Workload::Synthetic => None,
    };
    let mut publishers = Vec::new();
    for id in &match_ids {
        publishers.push(match &recording {
            Some(r) => tokio::spawn(feed::replay(
                log.clone(),
                id.clone(),
                r.clone(),
                stop.clone(),
            )),
            None => tokio::spawn(publish(
                log.clone(),
                id.clone(),
                args.rate,
                args.payload,
                stop.clone(),
            )),
        });
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
            system: system.viewers_of(),
            workload: args.workload,
            grandstand_wire: args.grandstand_wire,
            sample_every: args.latency_sample,
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
    let mut half_connected = 0u64;
    for w in &workers {
        let line = wait_line(w, "half", Duration::from_secs(600))?;
        half_connected += line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let at_half: Vec<(f64, u64)> = servers.iter().map(|g| proc_usage(g.child.id())).collect();
    for w in &mut workers {
        writeln!(w.stdin, "continue")?;
        w.stdin.flush()?;
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
    // Memory per connection is read here, with everyone connected: what the window adds later
    // is per match (Grandstand's resume rings fill with the match's last 256 messages), and is
    // in the total at the end.
    let settled: Vec<(f64, u64)> = servers.iter().map(|g| proc_usage(g.child.id())).collect();

    let from = now_us();
    let to = from + args.duration * 1_000_000;
    let start_usage: Vec<(f64, u64)> = servers.iter().map(|g| proc_usage(g.child.id())).collect();
    let urls: Vec<String> = servers.iter().map(|s| s.url.clone()).collect();
    let counters_before = if system.is_grandstand() {
        gateway_counters(&urls).await
    } else {
        (0.0, 0.0, 0.0)
    };
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
    let counters_after = if system.is_grandstand() {
        gateway_counters(&urls).await
    } else {
        (0.0, 0.0, 0.0)
    };
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
        total.wire_bytes += r.wire_bytes;
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
        .zip(&settled)
        .map(|(a, b)| b.1.saturating_sub(a.1))
        .sum();
    let second_half_growth: u64 = at_half
        .iter()
        .zip(&settled)
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
        rss_marginal_per_connection_bytes: second_half_growth as f64
            / connected.saturating_sub(half_connected).max(1) as f64,
        gaps: total.gaps,
        snapshots: total.snapshots,
        wire_bytes_per_viewer_per_s: total.wire_bytes as f64 / secs / total.held.max(1) as f64,
        encode_cpu_cores: (counters_after.0 - counters_before.0) / secs,
        messages_per_write: (counters_after.2 - counters_before.2)
            / (counters_after.1 - counters_before.1).max(1.0),
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
