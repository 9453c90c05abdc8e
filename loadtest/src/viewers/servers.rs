//! The systems under test (Grandstand's gateways and the peers), the snapshot API for
//! cold-load storms, the match publisher that feeds them all, and the worker processes.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use backends::{MatchLog, NatsLog};
use bytes::Bytes;
use protocol::{LogKind, LogRecord};

use super::{Args, System, WorkerPlan, Workload, SECRET};
use crate::process::{free_port, log_file, wait_listening, Service};
use protocol::now_us;

pub(super) fn start_server(
    system: System,
    bin: &PathBuf,
    args: &Args,
    nats_url: &str,
    stream: &str,
    root: &str,
) -> anyhow::Result<Service> {
    let (log, file) = log_file(system.name())?;
    // A replayed match is published as a room publishes (the live line first, then the stored
    // log, one record at a time): the peers forward the live line, the fastest copy, as
    // Grandstand's gateways do; the synthetic feed is published on the stored subjects only.
    let peer_root = match args.workload {
        Workload::Match => backends::matchlog::live_root(root),
        Workload::Synthetic => root.to_string(),
    };
    let mut cmd = match system {
        System::Grandstand | System::GrandstandJsonOtlp => {
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
                // The match workload's latency is read from the log's publish time.
                .args(if args.workload == Workload::Match {
                    &["--stamp-publish-time"][..]
                } else {
                    &[]
                })
                .env("GRANDSTAND_TOKEN_SECRET", SECRET)
                .env("RUST_LOG", "warn,grandstand=info");
            if system == System::GrandstandJsonOtlp {
                c.args(["--log-format", "json"])
                    .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_sink()?)
                    .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf");
            }
            c
        }
        System::NodeWs | System::Socketio | System::Uws => {
            ensure_node_peers(&args.peers_dir)?;
            let script = match system {
                System::NodeWs => "node-ws.mjs",
                System::Socketio => "socketio.mjs",
                _ => "uws.mjs",
            };
            let mut c = Command::new("node");
            c.arg(args.peers_dir.join(script))
                .current_dir(&args.peers_dir)
                .env("SUBJECT_ROOT", &peer_root)
                .env("PORT", "0");
            c
        }
        System::Raw | System::Floor => {
            let mut c = Command::new(std::env::current_exe()?);
            c.args([
                "peer-raw",
                "--nats-url",
                nats_url,
                "--subject-root",
                &peer_root,
            ]);
            if system == System::Floor {
                c.arg("--direct");
            }
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
    wait_listening(child, log)
}

/// What the harness's OTLP sink has received: export requests and their bytes.
pub(super) static OTLP_REQUESTS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);
pub(super) static OTLP_BYTES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A collector stand-in that takes OTLP/HTTP exports and counts them (started once).
fn otlp_sink() -> anyhow::Result<String> {
    static SINK: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(url) = SINK.get() {
        return Ok(url.clone());
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let url = format!("http://{}", listener.local_addr()?);
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(|body: axum::body::Bytes| async move {
            use std::sync::atomic::Ordering::Relaxed;
            OTLP_REQUESTS.fetch_add(1, Relaxed);
            OTLP_BYTES.fetch_add(body.len() as u64, Relaxed);
            axum::http::StatusCode::OK
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(SINK.get_or_init(|| url).clone())
}

fn ensure_node_peers(dir: &PathBuf) -> anyhow::Result<()> {
    let installed = || {
        ["ws", "socket.io", "uwebsockets"]
            .iter()
            .all(|m| dir.join("node_modules").join(m).exists())
    };
    if installed() {
        return Ok(());
    }
    // One install at a time: `npm ci` starts by deleting node_modules, so a second run (another
    // test of the same binary, on a fresh clone) would pull the peers from under the first.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".npm-ci.lock"))
        .context("opening the npm lock file")?;
    // SAFETY: flock on a file descriptor this function owns; released when `lock` drops.
    let locked = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
    anyhow::ensure!(locked == 0, "locking {}", dir.display());
    if installed() {
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

/// A nats-server of its own for the nats-ws system: JetStream (the publisher writes the same
/// stream into it) and a WebSocket listener the viewers subscribe through. Returns the server
/// (its `url` is the WebSocket listener) and its client URL.
pub(super) fn start_nats_ws() -> anyhow::Result<(Service, String, PathBuf)> {
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
        Service {
            child,
            url: format!("http://127.0.0.1:{ws}"),
            log,
        },
        format!("nats://127.0.0.1:{client}"),
        dir,
    ))
}

/// Publishes every match's records: a keyframe now and every 5 s, deltas at `rate`.
pub(super) async fn publish(
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

pub(super) struct Worker {
    child: Child,
    pub(super) stdin: ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) fn start_worker(plan: &WorkerPlan) -> anyhow::Result<Worker> {
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

pub(super) fn wait_line(worker: &Worker, prefix: &str, limit: Duration) -> anyhow::Result<String> {
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

/// `grandstand snapshot-api` on the same stream, for cold-load storms.
pub(super) fn start_snapshot_api(
    bin: &PathBuf,
    args: &Args,
    nats_url: &str,
    stream: &str,
    root: &str,
) -> anyhow::Result<Service> {
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
    wait_listening(child, log)
}
