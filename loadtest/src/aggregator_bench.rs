//! How fast the aggregator can apply events to Redis leaderboards exactly once.
//!
//! Both variants run the same Lua script per event (so both are exactly-once and produce the
//! same boards); they differ only in round trips: `batched` pipelines a batch per round trip,
//! like the aggregator does, `naive` waits for each event before sending the next.

use std::time::Instant;

use backends::{Leaderboards, RedisLeaderboards, ScoredEvent};
use bytes::Bytes;
use hdrhistogram::Histogram;
use protocol::{EventRecord, LogKind, LogRecord, MatchEvent};

use crate::report::{machine, Latency, Results, Row};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Events per variant.
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    /// Matches the events are spread over.
    #[arg(long, default_value_t = 200)]
    matches: usize,
    /// Events per pipelined batch (the aggregator's batch size).
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Redis's process id, to record its CPU and memory per variant.
    #[arg(long)]
    server_pid: Option<u32>,
}

/// Kill events as rooms emit them, in per-match seq order, scored on all five boards.
fn events(n: usize, matches: usize, run: &str) -> Vec<ScoredEvent> {
    let retention = aggregator::BoardRetention::default();
    let now = protocol::now_ms();
    let mut seqs = vec![0u64; matches];
    (0..n)
        .map(|i| {
            let m = i % matches;
            seqs[m] += 1;
            let record = LogRecord {
                match_id: format!("{run}-m{m}"),
                epoch: 1,
                version: seqs[m],
                kind: LogKind::Event,
                body: Bytes::new(),
            };
            let event = EventRecord {
                seq: seqs[m],
                region: ["eu", "us", "asia"][m % 3].into(),
                at_ms: now + i as u64,
                event: MatchEvent::Kill {
                    killer: format!("{run}-m{m}-p{}", i % 16),
                    victim: format!("{run}-m{m}-p{}", (i + 1) % 16),
                },
            };
            aggregator::scored_event(&record, &event, &retention, now)
        })
        .collect()
}

async fn cleanup(url: &str, prefix: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(url)?;
    let mut c = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut c)
        .await?;
    for chunk in keys.chunks(1000) {
        let _: () = redis::cmd("DEL").arg(chunk).query_async(&mut c).await?;
    }
    Ok(())
}

pub async fn run(args: Args) -> anyhow::Result<Results> {
    let run_id = format!("lt{:06x}", rand::random::<u32>() & 0xffffff);
    let mut rows = Vec::new();
    for (name, batch) in [
        ("batched pipeline", args.batch),
        ("naive, one round trip per event", 1),
    ] {
        let prefix = format!("gs-loadtest-{run_id}-{batch}:");
        let lb = RedisLeaderboards::connect(&args.redis_url, &prefix).await?;
        let evs = events(args.events, args.matches, &run_id);
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        let usage = crate::report::ServerUsage::start(args.server_pid);
        let bar = crate::report::count_bar(evs.len() as u64, name);
        let started = Instant::now();
        let mut applied = 0usize;
        for chunk in evs.chunks(batch) {
            let t = Instant::now();
            let outcomes = lb.apply(chunk).await?;
            hist.record(t.elapsed().as_micros().max(1) as u64)?;
            applied += outcomes
                .iter()
                .filter(|o| **o == backends::ApplyOutcome::Applied)
                .count();
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        let secs = started.elapsed().as_secs_f64();
        let redis = usage
            .map(|u| format!("; Redis {}", u.line()))
            .unwrap_or_default();
        anyhow::ensure!(
            applied == evs.len(),
            "{name}: applied {applied} of {}",
            evs.len()
        );
        // Re-delivering everything must change nothing.
        let again = lb.apply(&evs[..batch.min(evs.len())]).await?;
        anyhow::ensure!(
            again
                .iter()
                .all(|o| *o == backends::ApplyOutcome::Duplicate),
            "re-delivery applied twice"
        );
        let top = lb.top("global", 0, 1).await?.map(|p| p.total).unwrap_or(0);
        rows.push(Row {
            name: name.to_string(),
            throughput_per_s: evs.len() as f64 / secs,
            unit: "events/s".into(),
            latency: Latency::of(&hist),
            latency_of: format!("one round trip ({batch} events)"),
            notes: format!(
                "{} events, 5 boards each, {} players on global{redis}",
                evs.len(),
                top
            ),
        });
        cleanup(&args.redis_url, &prefix).await?;
    }
    Ok(Results {
        summary: Vec::new(),
        systems: Vec::new(),
        scenario: "aggregator: exactly-once leaderboard applies into Redis".into(),
        machine: machine(),
        command: format!(
            "loadtest aggregator --events {} --matches {} --batch {}",
            args.events, args.matches, args.batch
        ),
        rows,
    })
}
