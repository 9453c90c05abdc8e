//! Cached HTTP reads against a running Grandstand, side by side with the uncached path: the
//! backend read each request would cost without the cache (the match log cold load for a
//! snapshot, a Redis range read for a board), done by this process at the same concurrency.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backends::{Leaderboards, MatchLog, NatsLog, NatsLogConfig, RedisLeaderboards};
use hdrhistogram::Histogram;

use crate::report::{machine, window_bar, Latency, Results, Row, ServerUsage};

#[derive(clap::Args)]
pub struct Args {
    /// The server to load (all-in-one or snapshot-api).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    base: String,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// For the uncached comparison: the server's NATS, stream and subject root...
    #[arg(long, env = "NATS_URL")]
    nats_url: Option<String>,
    #[arg(long, env = "NATS_STREAM", default_value = "MATCHES")]
    nats_stream: String,
    #[arg(long, env = "NATS_SUBJECT_ROOT", default_value = "match")]
    nats_subject_root: String,
    /// ...and its Redis and key prefix.
    #[arg(long, env = "REDIS_URL")]
    redis_url: Option<String>,
    #[arg(long, env = "REDIS_PREFIX", default_value = backends::DEFAULT_REDIS_PREFIX)]
    redis_prefix: String,
    /// The server's process id, to record its CPU and memory next to the client figures.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Leaderboard reads only (the `leaderboard` scenario).
    #[arg(skip)]
    pub leaderboards_only: bool,
}

/// Runs `op` from `concurrency` tasks for `duration`; returns requests/s and latencies.
async fn hammer<F, Fut>(
    concurrency: usize,
    duration: Duration,
    op: F,
) -> anyhow::Result<(f64, Histogram<u64>, u64)>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let bar = window_bar(duration.as_secs(), "measuring");
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (op, stop) = (op.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut errors = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                if !op().await {
                    errors += 1;
                }
                h.record(t.elapsed().as_micros().max(1) as u64).unwrap();
            }
            (h, errors)
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await?;
        total.add(&h)?;
        errors += e;
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    Ok((total.len() as f64 / secs, total, errors))
}

pub async fn run(args: Args) -> anyhow::Result<Results> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let matches: serde_json::Value = http
        .get(format!("{}/v1/matches", args.base))
        .send()
        .await?
        .json()
        .await?;
    let id = matches["matches"][0]["id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no match to load"))?
        .to_string();
    let duration = Duration::from_secs(args.duration_secs);
    let usage = ServerUsage::start(args.server_pid);
    // A player in the middle of the global board, for neighbourhood reads.
    let board: serde_json::Value = http
        .get(format!("{}/v1/leaderboards/global?limit=1000", args.base))
        .send()
        .await?
        .json()
        .await?;
    let entries = board["entries"].as_array().cloned().unwrap_or_default();
    let player = entries
        .get(entries.len() / 2)
        .and_then(|e| e["player"].as_str())
        .unwrap_or("nobody")
        .to_string();
    let mut rows = Vec::new();
    let mut reads = vec![
        (
            "GET leaderboard top 100 (cached)",
            "/v1/leaderboards/global?limit=100".to_string(),
        ),
        (
            "GET leaderboard around a player, radius 10 (cached)",
            format!("/v1/leaderboards/global/around/{player}?radius=10"),
        ),
    ];
    if !args.leaderboards_only {
        reads.insert(
            0,
            (
                "GET snapshot (cached)",
                format!("/v1/matches/{id}/snapshot"),
            ),
        );
    }
    for (name, path) in reads {
        let (http, url) = (http.clone(), format!("{}{path}", args.base));
        let (rate, h, errors) = hammer(args.concurrency, duration, move || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                match http.get(&url).send().await {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                }
            }
        })
        .await?;
        rows.push(Row {
            name: name.into(),
            throughput_per_s: rate,
            unit: "req/s".into(),
            latency: Latency::of(&h),
            latency_of: "one request".into(),
            notes: format!("{} errors, concurrency {}", errors, args.concurrency),
        });
    }
    if let (Some(url), false) = (&args.nats_url, args.leaderboards_only) {
        let mut config = NatsLogConfig::new(url.clone());
        config.stream = args.nats_stream.clone();
        config.subject_root = args.nats_subject_root.clone();
        let log: Arc<dyn MatchLog> = Arc::new(NatsLog::connect(config).await?);
        let id = id.clone();
        let (rate, h, errors) = hammer(args.concurrency, duration, move || {
            let (log, id) = (log.clone(), id.clone());
            async move { backends::load_feed(&*log, &id, 1).await.is_ok() }
        })
        .await?;
        rows.push(Row {
            name: "uncached: snapshot cold load from JetStream".into(),
            throughput_per_s: rate,
            unit: "loads/s".into(),
            latency: Latency::of(&h),
            latency_of: "one load".into(),
            notes: format!("{errors} errors, concurrency {}", args.concurrency),
        });
    }
    if let Some(url) = &args.redis_url {
        let lb: Arc<dyn Leaderboards> =
            Arc::new(RedisLeaderboards::connect(url, &args.redis_prefix).await?);
        let (rate, h, errors) = hammer(args.concurrency, duration, move || {
            let lb = lb.clone();
            async move { lb.top("global", 0, 100).await.is_ok() }
        })
        .await?;
        rows.push(Row {
            name: "uncached: top 100 from Redis".into(),
            throughput_per_s: rate,
            unit: "reads/s".into(),
            latency: Latency::of(&h),
            latency_of: "one read".into(),
            notes: format!("{errors} errors, concurrency {}", args.concurrency),
        });
        let lb: Arc<dyn Leaderboards> =
            Arc::new(RedisLeaderboards::connect(url, &args.redis_prefix).await?);
        let (rate, h, errors) = hammer(args.concurrency, duration, move || {
            let (lb, player) = (lb.clone(), player.clone());
            async move { lb.around("global", &player, 10).await.is_ok() }
        })
        .await?;
        rows.push(Row {
            name: "uncached: around a player from Redis".into(),
            throughput_per_s: rate,
            unit: "reads/s".into(),
            latency: Latency::of(&h),
            latency_of: "one read".into(),
            notes: format!("{errors} errors, concurrency {}", args.concurrency),
        });
    }
    Ok(Results {
        summary: usage.map(|u| u.line()).into_iter().collect(),
        systems: Vec::new(),
        scenario: if args.leaderboards_only {
            "leaderboard reads (top-N and a player's neighbourhood), cached vs Redis".into()
        } else {
            "HTTP cold-load and leaderboard reads, cached vs the backend read".into()
        },
        machine: machine(),
        command: format!(
            "loadtest {} --base {} --concurrency {} --duration-secs {}",
            if args.leaderboards_only {
                "leaderboard"
            } else {
                "http"
            },
            args.base,
            args.concurrency,
            args.duration_secs
        ),
        rows,
    })
}
