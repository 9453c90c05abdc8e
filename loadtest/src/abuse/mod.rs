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
use futures::StreamExt;
use game_client::{Intent, LinkConditioner, UdpClient};
use hdrhistogram::Histogram;
use protocol::{Claims, TokenSigner};
use serde::Serialize;
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

mod attacks;

use crate::process::{free_port, log_file, open_socket, wait_listening, Service};
use attacks::{Attack, AttackChoice};

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
    /// Attacks to run (comma separated), or `all`: forged-tokens, expired-tokens,
    /// replayed-connect-token, stream-flood-one-user, handshake-flood-one-ip, slowloris-http,
    /// slowloris-sse, oversized-frames, malformed-udp.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    attacks: Vec<AttackChoice>,
    /// The grandstand binary (default: the one next to this loadtest binary).
    #[arg(long)]
    bin: Option<std::path::PathBuf>,
}

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
            exp: protocol::now_secs() + 3600,
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
    let server: Service = wait_listening(child, log)?;
    let http = reqwest::Client::new();
    let match_id = crate::process::live_match_ids(&http, &server.url, 1)
        .await?
        .remove(0);
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

    let mut attacks: Vec<Attack> = Vec::new();
    for choice in &args.attacks {
        for attack in choice.attacks() {
            if !attacks.contains(&attack) {
                attacks.push(attack);
            }
        }
    }
    let mut rows = Vec::new();
    for attack in attacks {
        let outcome = Arc::new(Outcome::default());
        let until = Instant::now() + window;
        let how = attack.run(&target, &outcome, until).await?;
        // Whatever the attack left over finishes within the window's end.
        let rest = until.saturating_duration_since(Instant::now());
        tokio::time::sleep(rest).await;
        let figures = honest.take();
        let row = AttackRow {
            attack: attack.name().into(),
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
