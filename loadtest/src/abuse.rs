//! `loadtest abuse`: hostile clients against a running Grandstand (the real binary, all roles in
//! one process on its embedded backends) while honest viewers, players and HTTP readers go on.
//! Each attack runs alone for `--secs` after a baseline of the same length; for each, the table
//! says how many attempts were made, how many were refused the way the contract says (401,
//! 429, 413, a close code, a UDP deny, a cut connection), how many were not, and the honest
//! clients' latency percentiles in that same window, next to the baseline's.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use game_client::{Intent, LinkConditioner, UdpClient};
use hdrhistogram::Histogram;
use protocol::net::{DenyReason, Packet};
use protocol::{Claims, ConnectClaims, TokenSigner};
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::viewers::{free_port, log_file, open_socket, wait_listening, Server};

const SECRET: &str = "abuse-run-secret-shared-with-the-server";

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Length of the baseline and of each attack.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    #[arg(long, default_value_t = 50)]
    honest_viewers: usize,
    #[arg(long, default_value_t = 4)]
    honest_players: usize,
    /// Attacks to run (comma separated), or `all`.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    attacks: Vec<String>,
    /// The grandstand binary (default: the one next to this loadtest binary).
    #[arg(long)]
    bin: Option<std::path::PathBuf>,
}

const ATTACKS: [&str; 9] = [
    "forged-tokens",
    "expired-tokens",
    "replayed-connect-token",
    "stream-flood-one-user",
    "handshake-flood-one-ip",
    "slowloris-http",
    "slowloris-sse",
    "oversized-frames",
    "malformed-udp",
];

/// What one attack got back.
#[derive(Debug, Default)]
struct Outcome {
    attempts: AtomicU64,
    refused: AtomicU64,
    /// Let in, or answered in a way the contract does not name (a 500, a hang, no close).
    unexpected: AtomicU64,
    notes: Mutex<Vec<String>>,
}

impl Outcome {
    fn refused(&self) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    fn unexpected(&self, what: String) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        self.unexpected.fetch_add(1, Ordering::Relaxed);
        let mut n = self.notes.lock().unwrap();
        if n.len() < 3 && !n.contains(&what) {
            n.push(what);
        }
    }

    /// Counted as neither: attempts that only load the server (malformed datagrams).
    fn sent(&self, n: u64) {
        self.attempts.fetch_add(n, Ordering::Relaxed);
    }
}

/// Honest clients' latencies in the current window.
struct Honest {
    viewer_us: Mutex<Histogram<u64>>,
    player_rtt_ms: Mutex<Histogram<u64>>,
    http_us: Mutex<Histogram<u64>>,
    http_errors: AtomicU64,
    viewer_drops: AtomicU64,
}

impl Honest {
    fn new() -> Honest {
        let h = || Mutex::new(Histogram::new(3).expect("histogram"));
        Honest {
            viewer_us: h(),
            player_rtt_ms: h(),
            http_us: h(),
            http_errors: AtomicU64::new(0),
            viewer_drops: AtomicU64::new(0),
        }
    }

    fn take(&self) -> HonestFigures {
        let take = |m: &Mutex<Histogram<u64>>| {
            let mut h = m.lock().unwrap();
            let f = (h.len(), h.value_at_quantile(0.5), h.value_at_quantile(0.99));
            h.reset();
            f
        };
        let v = take(&self.viewer_us);
        let p = take(&self.player_rtt_ms);
        let w = take(&self.http_us);
        HonestFigures {
            viewer_messages: v.0,
            viewer_p50_ms: v.1 as f64 / 1000.0,
            viewer_p99_ms: v.2 as f64 / 1000.0,
            player_rtts: p.0,
            player_rtt_p50_ms: p.1,
            player_rtt_p99_ms: p.2,
            http_requests: w.0,
            http_p50_ms: w.1 as f64 / 1000.0,
            http_p99_ms: w.2 as f64 / 1000.0,
            http_errors: self.http_errors.swap(0, Ordering::Relaxed),
            viewer_drops: self.viewer_drops.swap(0, Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct HonestFigures {
    pub viewer_messages: u64,
    pub viewer_p50_ms: f64,
    pub viewer_p99_ms: f64,
    pub player_rtts: u64,
    pub player_rtt_p50_ms: u64,
    pub player_rtt_p99_ms: u64,
    pub http_requests: u64,
    pub http_p50_ms: f64,
    pub http_p99_ms: f64,
    pub http_errors: u64,
    /// Honest viewer connections that ended (they reconnect and resume).
    pub viewer_drops: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AttackRow {
    pub attack: String,
    pub attempts: u64,
    pub refused: u64,
    pub unexpected: u64,
    pub how: String,
    pub notes: Vec<String>,
    pub honest: HonestFigures,
}

#[derive(Debug, Clone, Serialize)]
pub struct AbuseReport {
    pub secs: u64,
    pub baseline: HonestFigures,
    pub attacks: Vec<AttackRow>,
    pub server_alive: bool,
}

struct Target {
    http: String,
    addr: SocketAddr,
    udp: SocketAddr,
    signer: TokenSigner,
    match_id: String,
}

impl Target {
    fn token(&self, sub: &str) -> String {
        self.signer.sign(&Claims {
            sub: sub.into(),
            name: sub.into(),
            exp: httpkit::now_secs() + 3600,
        })
    }

    fn stream_path(&self) -> String {
        format!("/v1/matches/{}/stream", self.match_id)
    }
}

pub async fn run(args: Args, json: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let bin = match &args.bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("grandstand"),
    };
    let udp_port = std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let http_port = free_port()?;
    let data = std::env::temp_dir().join(format!("gs-abuse-{}", std::process::id()));
    let (log, file) = log_file("abuse")?;
    let child = std::process::Command::new(&bin)
        .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
        .args(["--udp-addr", &format!("127.0.0.1:{udp_port}")])
        .args(["--matches", "1", "--bots", "8", "--stamp-publish-time"])
        .args(["--spectator-hz", "30"])
        .args(["--header-timeout-secs", "3", "--stall-secs", "3"])
        .args(["--ping-ms", "1000", "--send-buffer", "4096"])
        .arg("--data-dir")
        .arg(&data)
        .env("GRANDSTAND_TOKEN_SECRET", SECRET)
        .env("RUST_LOG", "warn,grandstand=info")
        .env_remove("NATS_URL")
        .env_remove("REDIS_URL")
        .env_remove("DATABASE_URL")
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .context("starting grandstand")?;
    let server: Server = wait_listening(child, &log)?;
    let http = reqwest::Client::new();
    let match_id = loop {
        let body: Value = http
            .get(format!("{}/v1/matches", server.url))
            .send()
            .await?
            .json()
            .await?;
        if let Some(id) = body["matches"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["status"] == "live"))
            .and_then(|m| m["id"].as_str())
        {
            break id.to_string();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let target = Arc::new(Target {
        http: server.url.clone(),
        addr: server.url.trim_start_matches("http://").parse()?,
        udp: format!("127.0.0.1:{udp_port}").parse()?,
        signer: TokenSigner::new(SECRET.as_bytes()),
        match_id,
    });

    let honest = Arc::new(Honest::new());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..args.honest_viewers {
        tasks.push(tokio::spawn(honest_viewer(
            i,
            target.clone(),
            honest.clone(),
            stop.clone(),
        )));
    }
    for i in 0..args.honest_players {
        tasks.push(tokio::spawn(honest_player(
            i,
            target.clone(),
            honest.clone(),
            stop.clone(),
        )));
    }
    tasks.push(tokio::spawn(honest_reader(
        target.clone(),
        honest.clone(),
        stop.clone(),
    )));

    let window = Duration::from_secs(args.secs);
    // Let the honest clients connect, then measure the baseline.
    tokio::time::sleep(Duration::from_secs(2)).await;
    honest.take();
    tokio::time::sleep(window).await;
    let baseline = honest.take();
    println!(
        "abuse: baseline: viewers p50 {:.1} ms p99 {:.1} ms, players RTT p50 {} ms p99 {} ms, HTTP p50 {:.2} ms p99 {:.2} ms",
        baseline.viewer_p50_ms, baseline.viewer_p99_ms, baseline.player_rtt_p50_ms,
        baseline.player_rtt_p99_ms, baseline.http_p50_ms, baseline.http_p99_ms
    );

    let attacks: Vec<&str> = if args.attacks.iter().any(|a| a == "all") {
        ATTACKS.to_vec()
    } else {
        args.attacks.iter().map(String::as_str).collect()
    };
    let mut rows = Vec::new();
    for attack in attacks {
        let outcome = Arc::new(Outcome::default());
        let until = Instant::now() + window;
        let how = match attack {
            "forged-tokens" => forged_tokens(&target, &outcome, until).await,
            "expired-tokens" => expired_tokens(&target, &outcome, until).await,
            "replayed-connect-token" => replayed_token(&target, &outcome, until).await?,
            "stream-flood-one-user" => stream_flood(&target, &outcome, until).await,
            "handshake-flood-one-ip" => handshake_flood(&target, &outcome, until).await,
            "slowloris-http" => slowloris_http(&target, &outcome, until).await,
            "slowloris-sse" => slowloris_sse(&target, &outcome, until).await,
            "oversized-frames" => oversized(&target, &outcome, until).await,
            "malformed-udp" => malformed_udp(&target, &outcome, until).await?,
            other => anyhow::bail!("unknown attack {other:?}; one of {}", ATTACKS.join(", ")),
        };
        // Whatever the attack left over finishes within the window's end.
        let rest = until.saturating_duration_since(Instant::now());
        tokio::time::sleep(rest).await;
        let figures = honest.take();
        let row = AttackRow {
            attack: attack.into(),
            attempts: outcome.attempts.load(Ordering::Relaxed),
            refused: outcome.refused.load(Ordering::Relaxed),
            unexpected: outcome.unexpected.load(Ordering::Relaxed),
            how: how.into(),
            notes: outcome.notes.lock().unwrap().clone(),
            honest: figures,
        };
        println!(
            "abuse: {:<24} {:>7} attempts, {:>7} refused, {:>3} unexpected; honest viewers p99 {:.1} ms, players RTT p99 {} ms, HTTP p99 {:.2} ms",
            row.attack, row.attempts, row.refused, row.unexpected, row.honest.viewer_p99_ms,
            row.honest.player_rtt_p99_ms, row.honest.http_p99_ms
        );
        rows.push(row);
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(3), t).await;
    }
    let server_alive = http
        .get(format!("{}/healthz", target.http))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    drop(server);
    let _ = std::fs::remove_dir_all(&data);
    let report = AbuseReport {
        secs: args.secs,
        baseline,
        attacks: rows,
        server_alive,
    };
    print_report(&report);
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
        println!("results written to {}", path.display());
    }
    let failed: Vec<&str> = report
        .attacks
        .iter()
        .filter(|r| r.unexpected > 0 || r.refused == 0)
        .map(|r| r.attack.as_str())
        .collect();
    anyhow::ensure!(server_alive, "the server did not survive the abuse run");
    anyhow::ensure!(
        failed.is_empty(),
        "attacks not refused cleanly: {}",
        failed.join(", ")
    );
    Ok(())
}

fn print_report(r: &AbuseReport) {
    println!();
    println!("| attack | attempts | refused as the contract says | unexpected | how | honest viewers p50 / p99 | honest players RTT p50 / p99 | honest HTTP p50 / p99 |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    let h = |f: &HonestFigures| {
        (
            format!("{:.1} / {:.1} ms", f.viewer_p50_ms, f.viewer_p99_ms),
            format!("{} / {} ms", f.player_rtt_p50_ms, f.player_rtt_p99_ms),
            format!("{:.2} / {:.2} ms", f.http_p50_ms, f.http_p99_ms),
        )
    };
    let (v, p, w) = h(&r.baseline);
    println!("| (baseline, no attack) | - | - | - | - | {v} | {p} | {w} |");
    for a in &r.attacks {
        let (v, p, w) = h(&a.honest);
        println!(
            "| {} | {} | {} | {}{} | {} | {v} | {p} | {w} |",
            a.attack,
            a.attempts,
            a.refused,
            a.unexpected,
            if a.notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", a.notes.join("; ").replace('|', "/"))
            },
            a.how
        );
    }
}

// ---- honest clients ----

async fn honest_viewer(i: usize, t: Arc<Target>, honest: Arc<Honest>, stop: Arc<AtomicBool>) {
    let token = t.token(&format!("honest-viewer-{i}"));
    let source = format!("127.0.3.{}", 1 + i % 250);
    let mut since: Option<String> = None;
    while !stop.load(Ordering::Relaxed) {
        let path = match &since {
            Some(s) => format!("{}?since={s}", t.stream_path()),
            None => t.stream_path(),
        };
        let Ok(mut req) = format!("ws://{}{path}", t.addr).into_client_request() else {
            return;
        };
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let ws = match open_socket(&source, &t.http).await {
            Ok(s) => tokio_tungstenite::client_async(req, s).await.ok(),
            Err(_) => None,
        };
        let Some((mut ws, _)) = ws else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while !stop.load(Ordering::Relaxed) {
            match tokio::time::timeout(Duration::from_secs(3), ws.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    let Ok(v) = serde_json::from_str::<Value>(&text) else {
                        continue;
                    };
                    if let (Some(e), Some(ver)) = (v["epoch"].as_u64(), v["version"].as_u64()) {
                        since = Some(format!("{e}:{ver}"));
                    }
                    if let Some(p) = v["published_us"].as_u64() {
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap()
                            .as_micros() as u64;
                        let _ = honest
                            .viewer_us
                            .lock()
                            .unwrap()
                            .record(now.saturating_sub(p).max(1));
                    }
                }
                Ok(Some(Ok(_))) => {}
                _ => {
                    honest.viewer_drops.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
}

async fn honest_player(i: usize, t: Arc<Target>, honest: Arc<Honest>, stop: Arc<AtomicBool>) {
    let token = t.token(&format!("honest-player-{i}"));
    let http = reqwest::Client::new();
    let mut step = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let joined: Option<Value> = async {
            http.post(format!("{}/v1/matchmaking/join", t.http))
                .bearer_auth(&token)
                .json(&serde_json::json!({"region": "eu", "skill": 1000}))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()
        }
        .await;
        let Some(a) = joined else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        };
        let (Some(server), Some(connect)) = (a["server"].as_str(), a["connect_token"].as_str())
        else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        };
        let Ok(addr) = server.parse() else { return };
        let Ok(mut c) = UdpClient::connect(
            addr,
            connect.to_string(),
            LinkConditioner::perfect(),
            i as u64,
            Duration::from_secs(3),
        )
        .await
        else {
            continue;
        };
        while !stop.load(Ordering::Relaxed) {
            step += 1;
            let intent = Intent {
                move_x: ((step / 40) % 3) as i8 * 60 - 60,
                move_y: ((step / 55) % 3) as i8 * 60 - 60,
                aim: (step * 1500) as u16,
                fire: step.is_multiple_of(20),
            };
            if c.step(intent).await.is_err() || c.silence() > Duration::from_secs(3) {
                break;
            }
            let samples = std::mem::take(&mut c.core.stats.rtt_samples);
            let mut h = honest.player_rtt_ms.lock().unwrap();
            for s in samples {
                let _ = h.record(u64::from(s).max(1));
            }
        }
        c.disconnect().await;
    }
}

async fn honest_reader(t: Arc<Target>, honest: Arc<Honest>, stop: Arc<AtomicBool>) {
    let http = reqwest::Client::new();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        match http
            .get(format!("{}/v1/leaderboards/global?limit=10", t.http))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => {
                let _ = r.bytes().await;
                let _ = honest
                    .http_us
                    .lock()
                    .unwrap()
                    .record(started.elapsed().as_micros() as u64);
            }
            _ => {
                honest.http_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- attacks ----

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// Opens a viewer WebSocket on the match's stream from `source` (`None`: no socket).
async fn open_stream(
    t: &Target,
    source: &str,
    token: Option<&str>,
) -> Option<Result<Ws, tokio_tungstenite::tungstenite::Error>> {
    let mut req = format!("ws://{}{}", t.addr, t.stream_path())
        .into_client_request()
        .unwrap();
    if let Some(token) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let socket = open_socket(source, &t.http).await.ok()?;
    Some(
        tokio_tungstenite::client_async(req, socket)
            .await
            .map(|(ws, _)| ws),
    )
}

/// The status of a WebSocket handshake on the stream (`Ok(())` when it was let in).
async fn ws_handshake(t: &Target, source: &str, token: Option<&str>) -> Result<(), u16> {
    match open_stream(t, source, token).await {
        None => Err(0),
        Some(Ok(_)) => Ok(()),
        Some(Err(tokio_tungstenite::tungstenite::Error::Http(res))) => Err(res.status().as_u16()),
        Some(Err(_)) => Err(0),
    }
}

/// Sends a connect request and waits for the answer.
async fn udp_connect(t: &Target, token: &str) -> Option<Packet> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.ok()?;
    let p = Packet::ConnectRequest {
        token: token.to_string(),
    };
    socket.send_to(&p.encode(), t.udp).await.ok()?;
    let mut buf = [0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    Packet::decode(&buf[..n]).ok()
}

fn udp_denied(outcome: &Outcome, answer: Option<Packet>, want: DenyReason) {
    match answer {
        Some(Packet::ConnectDenied { reason }) if reason == want => outcome.refused(),
        other => outcome.unexpected(format!("UDP connect answered {other:?}, wanted {want:?}")),
    }
}

fn http_status(outcome: &Outcome, status: Result<(), u16>, want: &[u16]) {
    match status {
        Err(s) if want.contains(&s) => outcome.refused(),
        Ok(()) => outcome.unexpected("let in".into()),
        Err(s) => outcome.unexpected(format!("status {s}")),
    }
}

async fn forged_tokens(t: &Target, outcome: &Arc<Outcome>, until: Instant) -> &'static str {
    let wrong = TokenSigner::new(b"not-the-server-secret-at-all-000000");
    let good = t.token("forger");
    let http = reqwest::Client::new();
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let token = match n % 3 {
            // Signed with another key.
            0 => wrong.sign(&Claims {
                sub: "admin".into(),
                name: "admin".into(),
                exp: u64::MAX / 2,
            }),
            // A real token with its claims edited.
            1 => {
                let (claims, sig) = good.rsplit_once('.').unwrap_or((&good, ""));
                format!("{}x.{sig}", claims)
            }
            // Garbage.
            _ => format!("{n:x}.{n:x}"),
        };
        let source = format!("127.0.4.{}", 1 + n % 200);
        http_status(
            outcome,
            ws_handshake(t, &source, Some(&token)).await,
            &[401],
        );
        let status = http
            .post(format!("{}/v1/matchmaking/join", t.http))
            .bearer_auth(&token)
            .json(&serde_json::json!({"region": "eu", "skill": 1}))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        http_status(outcome, Err(status), &[401]);
        let connect = wrong.derive("connect").sign(&ConnectClaims {
            sub: "x".into(),
            name: "x".into(),
            match_id: t.match_id.clone(),
            server: t.udp.to_string(),
            exp: u64::MAX / 2,
            nonce: n,
        });
        udp_denied(
            outcome,
            udp_connect(t, &connect).await,
            DenyReason::BadToken,
        );
    }
    "WS 401, REST 401, UDP deny BadToken"
}

async fn expired_tokens(t: &Target, outcome: &Arc<Outcome>, until: Instant) -> &'static str {
    // From many addresses, so it is the expiry that refuses them, not the per-address
    // handshake rate.
    let clients: Vec<reqwest::Client> = (1..=50)
        .filter_map(|n| {
            reqwest::Client::builder()
                .local_address(format!("127.0.9.{n}").parse::<std::net::IpAddr>().ok())
                .build()
                .ok()
        })
        .collect();
    let connect_signer = t.signer.derive("connect");
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let past = httpkit::now_secs() - 1 - n % 3600;
        let token = t.signer.sign(&Claims {
            sub: format!("old-{n}"),
            name: "old".into(),
            exp: past,
        });
        let source = format!("127.0.5.{}", 1 + n % 200);
        http_status(
            outcome,
            ws_handshake(t, &source, Some(&token)).await,
            &[401],
        );
        let status = clients[n as usize % clients.len()]
            .get(format!("{}{}", t.http, t.stream_path()))
            .header("accept", "text/event-stream")
            .bearer_auth(&token)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        http_status(outcome, Err(status), &[401]);
        let connect = connect_signer.sign(&ConnectClaims {
            sub: format!("old-{n}"),
            name: "old".into(),
            match_id: t.match_id.clone(),
            server: t.udp.to_string(),
            exp: past,
            nonce: n,
        });
        udp_denied(outcome, udp_connect(t, &connect).await, DenyReason::Expired);
    }
    "WS/SSE 401 expired, UDP deny Expired"
}

async fn replayed_token(
    t: &Target,
    outcome: &Arc<Outcome>,
    until: Instant,
) -> anyhow::Result<&'static str> {
    let http = reqwest::Client::new();
    let mut k = 0;
    while Instant::now() < until {
        k += 1;
        // A real player joins...
        let a: Value = http
            .post(format!("{}/v1/matchmaking/join", t.http))
            .bearer_auth(t.token(&format!("victim-{k}")))
            .json(&serde_json::json!({"region": "eu", "skill": 1000}))
            .send()
            .await?
            .json()
            .await?;
        let token = a["connect_token"].as_str().unwrap_or_default().to_string();
        let Ok(mut victim) = UdpClient::connect(
            a["server"].as_str().unwrap_or_default().parse()?,
            token.clone(),
            LinkConditioner::perfect(),
            k,
            Duration::from_secs(3),
        )
        .await
        else {
            outcome.unexpected("the victim could not connect".into());
            continue;
        };
        // ...and someone who sniffed its token replays it from elsewhere.
        for _ in 0..20 {
            udp_denied(outcome, udp_connect(t, &token).await, DenyReason::Replayed);
        }
        victim.disconnect().await;
    }
    Ok("UDP deny Replayed (the token is bound to the first address)")
}

async fn stream_flood(t: &Target, outcome: &Arc<Outcome>, until: Instant) -> &'static str {
    let token = t.token("one-greedy-user");
    while Instant::now() < until {
        let mut held = Vec::new();
        let mut admitted = 0;
        for n in 0..40u32 {
            let source = format!("127.0.6.{}", 1 + n);
            let Some(opened) = open_stream(t, &source, Some(&token)).await else {
                continue;
            };
            match opened {
                Ok(ws) => {
                    admitted += 1;
                    // Up to the per-user cap (8) is the contract; more is a leak.
                    if admitted > 8 {
                        outcome.unexpected(format!("stream {admitted} of one user let in"));
                    } else {
                        outcome.attempts.fetch_add(1, Ordering::Relaxed);
                    }
                    held.push(ws);
                }
                Err(tokio_tungstenite::tungstenite::Error::Http(r))
                    if r.status().as_u16() == 429 =>
                {
                    outcome.refused()
                }
                Err(e) => outcome.unexpected(format!("{e}")),
            }
        }
        for mut ws in held {
            let _ = ws.close(None).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    "8 streams per user admitted, the rest 429"
}

async fn handshake_flood(t: &Target, outcome: &Arc<Outcome>, until: Instant) -> &'static str {
    // One address, many users, as fast as it can: past the burst, 429s.
    let mut n = 0u64;
    while Instant::now() < until {
        let mut batch = Vec::new();
        for _ in 0..50 {
            n += 1;
            let token = t.token(&format!("flood-{n}"));
            batch.push(async move { ws_handshake(t, "127.0.7.1", Some(&token)).await });
        }
        for r in futures::future::join_all(batch).await {
            match r {
                // Within the rate: admitted, as the contract says.
                Ok(()) => {
                    outcome.attempts.fetch_add(1, Ordering::Relaxed);
                }
                Err(429) => outcome.refused(),
                Err(s) => outcome.unexpected(format!("status {s}")),
            }
        }
    }
    "past a 200 burst, 50 handshakes/s per address; the rest 429"
}

async fn slowloris_http(t: &Target, outcome: &Arc<Outcome>, until: Instant) -> &'static str {
    // Connections that send a request head one header a second, never finishing it. Each must
    // be cut by the server at the header timeout (3 s here), not held.
    let mut tasks = Vec::new();
    // At least one wave, however short the window.
    loop {
        for _ in 0..50 {
            let (addr, path, o) = (t.addr, t.stream_path(), outcome.clone());
            tasks.push(tokio::spawn(async move {
                let Ok(mut s) = TcpStream::connect(addr).await else {
                    return o.unexpected("connect failed".into());
                };
                let started = Instant::now();
                let _ = s
                    .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n").as_bytes())
                    .await;
                for i in 0..30 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if s.write_all(format!("X-Slow-{i}: y\r\n").as_bytes())
                        .await
                        .is_err()
                    {
                        break;
                    }
                    let mut buf = [0u8; 256];
                    if let Ok(Ok(0)) | Ok(Err(_)) =
                        tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await
                    {
                        break;
                    }
                }
                if started.elapsed() < Duration::from_secs(8) {
                    o.refused()
                } else {
                    o.unexpected(format!("held {:?}", started.elapsed()))
                }
            }));
        }
        if Instant::now() + Duration::from_secs(5) >= until {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for task in tasks {
        let _ = task.await;
    }
    "cut at the 3 s header timeout"
}

async fn slowloris_sse(t: &Target, outcome: &Arc<Outcome>, until: Instant) -> &'static str {
    // SSE viewers on tiny receive windows that never read: each must be closed at the stall
    // deadline (3 s here) so it holds no queue or buffer.
    let mut tasks = Vec::new();
    let mut n = 0u32;
    loop {
        for _ in 0..20 {
            n += 1;
            let token = t.token(&format!("sse-sloth-{n}"));
            let (addr, path, o) = (t.addr, t.stream_path(), outcome.clone());
            tasks.push(tokio::spawn(async move {
                let Ok(socket) = TcpSocket::new_v4() else { return };
                let _ = socket.set_recv_buffer_size(2048);
                let Ok(mut s) = socket.connect(addr).await else {
                    return o.unexpected("connect failed".into());
                };
                let _ = s
                    .write_all(
                        format!("GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nAuthorization: Bearer {token}\r\n\r\n")
                            .as_bytes(),
                    )
                    .await;
                let started = Instant::now();
                // Not reading for a while (the buffers fill in about a second at 30 Hz, then
                // the 3 s stall deadline runs)...
                tokio::time::sleep(Duration::from_secs(8)).await;
                // ...then what was buffered must end in the stream's close (the `close` event
                // with its reason, then the end of the response or of the connection), with
                // nothing live after it.
                let mut buf = vec![0u8; 65536];
                let mut seen: Vec<u8> = Vec::new();
                let outcome = loop {
                    match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => break Ok("connection closed"),
                        Ok(Ok(n)) => {
                            seen.extend_from_slice(&buf[..n]);
                            if started.elapsed() > Duration::from_secs(20) {
                                break Err("still streaming 20 s after it stopped reading");
                            }
                        }
                        // Quiet: the response must have ended with the close event, and the
                        // idle connection must then be let go (the header timeout, 3 s here,
                        // runs while the server waits for a next request that never comes).
                        Err(_) => {
                            let text = String::from_utf8_lossy(&seen);
                            if !(text.contains("event: close") && text.ends_with("0\r\n\r\n")) {
                                break Err("silent but not closed");
                            }
                            break match tokio::time::timeout(Duration::from_secs(6), s.read(&mut buf)).await {
                                Ok(Ok(0)) | Ok(Err(_)) => Ok("stream closed, then the idle connection"),
                                _ => Err("stream closed but the idle connection kept"),
                            };
                        }
                    }
                };
                match outcome {
                    Ok(_) => o.refused(),
                    Err(why) => o.unexpected(why.into()),
                }
            }));
        }
        if Instant::now() + Duration::from_secs(9) >= until {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for task in tasks {
        let _ = task.await;
    }
    "closed at the 3 s stall deadline"
}

async fn oversized(t: &Target, outcome: &Arc<Outcome>, until: Instant) -> &'static str {
    let http = reqwest::Client::new();
    let token = t.token("big-sender");
    let mut n = 0;
    while Instant::now() < until {
        n += 1;
        // A 1 MiB WebSocket message from a viewer (inbound frames are capped at 4 KiB).
        let source = format!("127.0.8.{}", 1 + n % 200);
        if let Some(opened) = open_stream(t, &source, Some(&token)).await {
            match opened {
                Ok(mut ws) => {
                    let _ = ws.send(Message::text("x".repeat(1 << 20))).await;
                    let mut code = None;
                    let deadline = Instant::now() + Duration::from_secs(3);
                    while Instant::now() < deadline {
                        match tokio::time::timeout(Duration::from_secs(3), ws.next()).await {
                            Ok(Some(Ok(Message::Close(c)))) => {
                                code = Some(c.map(|c| u16::from(c.code)).unwrap_or(0));
                                break;
                            }
                            Ok(Some(Ok(_))) => {}
                            _ => {
                                code = Some(0);
                                break;
                            }
                        }
                    }
                    match code {
                        Some(1009) => outcome.refused(),
                        other => outcome.unexpected(format!("WS close {other:?}, wanted 1009")),
                    }
                }
                Err(e) => outcome.unexpected(format!("handshake: {e}")),
            }
        }
        // A 4 MiB REST body.
        let status = http
            .post(format!("{}/v1/matchmaking/join", t.http))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(vec![b' '; 4 << 20])
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        // 413, or the upload cut short once the server has answered it.
        http_status(outcome, Err(status), &[413, 0]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    "WS close 1009, REST 413 (or the upload cut once answered)"
}

async fn malformed_udp(
    t: &Target,
    outcome: &Arc<Outcome>,
    until: Instant,
) -> anyhow::Result<&'static str> {
    let rejected_before = udp_rejected(t).await;
    let sockets = 4;
    let mut tasks = Vec::new();
    for k in 0..sockets {
        let (udp, o) = (t.udp, outcome.clone());
        tasks.push(tokio::spawn(async move {
            let s = UdpSocket::bind("127.0.0.1:0").await?;
            let mut x: u64 = 0x2545_F491_4F6C_DD1D ^ k;
            // Up to 9000 bytes: past the largest packet, too.
            let mut buf = [0u8; 9000];
            let mut sent = 0u64;
            let mut answers = 0u64;
            let mut rx = [0u8; 2048];
            while Instant::now() < until {
                for _ in 0..64 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let len = 1 + (x % 9000) as usize;
                    for (i, b) in buf[..len].iter_mut().enumerate() {
                        *b = (x >> (i % 8 * 8)) as u8 ^ i as u8;
                    }
                    if s.send_to(&buf[..len], udp).await.is_ok() {
                        sent += 1;
                    }
                }
                while let Ok(n) = s.try_recv(&mut rx) {
                    // Garbage earns no answer but a deny for a handshake that decoded.
                    if !matches!(Packet::decode(&rx[..n]), Ok(Packet::ConnectDenied { .. })) {
                        answers += 1;
                    }
                }
                tokio::task::yield_now().await;
            }
            o.sent(sent);
            if answers > 0 {
                o.unexpected(format!(
                    "{answers} datagrams answered with something other than a deny"
                ));
            }
            Ok::<_, std::io::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    // Refused = what the server counted as rejected; the rest never reached it (the kernel
    // drops datagrams when the socket buffer is full).
    let rejected = udp_rejected(t).await.saturating_sub(rejected_before);
    outcome.refused.fetch_add(rejected, Ordering::Relaxed);
    Ok("dropped and counted (gs_udp_rejected_total)")
}

/// The server's count of refused datagrams.
async fn udp_rejected(t: &Target) -> u64 {
    let Ok(r) = reqwest::get(format!("{}/metrics", t.http)).await else {
        return 0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("gs_udp_rejected_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
