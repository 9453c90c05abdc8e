//! `loadtest chaos`: real viewers and players on the multi-node cluster of
//! `scripts/cluster.sh`, faults injected one at a time (each kind once, then `--random` more),
//! recovery timed from the users' side, and at the end every invariant checked against the
//! match log the game servers wrote:
//!
//! - every viewer's version line per epoch: no gap a snapshot did not cover, no duplicate;
//! - the global and per-match leaderboards (Redis) and the results and player totals in
//!   PostgreSQL equal what the log's events add up to, each event counted once;
//! - every match that was running before a fault runs on after it (possibly in a new epoch)
//!   or ended with results, and every match ends with results equal to its kills in the log.
//!
//! The cluster's ports and secret are the ones `scripts/cluster.sh` sets.

mod audit;
mod cluster;
mod faults;
mod fleet;
mod invariants;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use cluster::{Cluster, Health, Probe};
use faults::{Fault, FaultKind, FaultSpec};
use fleet::Fleet;
use invariants::{audit_run, drain};

/// Where the cluster's pieces listen (as `scripts/cluster.sh` starts them).
pub struct Topology {
    pub api: String,
    pub gateways: Vec<String>,
    pub matchmakers: Vec<String>,
    pub secret: String,
    nats: String,
    redis: String,
    database: String,
}

impl Topology {
    fn local_cluster() -> Topology {
        Topology {
            api: "http://127.0.0.28:18081".into(),
            gateways: (23..=25)
                .map(|n| format!("http://127.0.0.{n}:18080"))
                .collect(),
            matchmakers: vec![
                "http://127.0.0.21:19101".into(),
                "http://127.0.0.22:19101".into(),
            ],
            secret: "cluster-secret-cluster-secret-cluster".into(),
            nats: "nats://127.0.0.1:14222,nats://127.0.0.1:14223,nats://127.0.0.1:14224".into(),
            redis: "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380,127.0.0.1:26381/gsm".into(),
            database: "postgres://postgres@127.0.0.1:15432/grandstand".into(),
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The cluster script (started with `up`, torn down with `down` unless --keep).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/cluster.sh"))]
    cluster_script: PathBuf,
    #[arg(long, default_value = "/tmp/grandstand-chaos")]
    cluster_dir: PathBuf,
    /// The grandstand binary the cluster runs (default: the one next to this loadtest binary).
    #[arg(long)]
    bin: Option<PathBuf>,
    #[arg(long, default_value_t = 60)]
    viewers: usize,
    #[arg(long, default_value_t = 6)]
    players: usize,
    /// Faults to inject one at a time, in order (comma separated), or `all` for one of each:
    /// kill-game, kill-gateway, kill-aggregator, kill-api, kill-nats, redis-failover, redis-empty,
    /// postgres-down, freeze-gateway; `kind:N` picks its N-th target (`kill-nats:3`).
    #[arg(long, value_delimiter = ',', default_value = "all")]
    faults: Vec<FaultSpec>,
    /// Further faults after those, each of a random kind on a random target.
    #[arg(long, default_value_t = 0)]
    random: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How long PostgreSQL stays stopped.
    #[arg(long, default_value_t = 30)]
    postgres_down_secs: u64,
    /// How long a gateway stays frozen (SIGSTOP).
    #[arg(long, default_value_t = 10)]
    freeze_secs: u64,
    /// How long a killed process stays dead before it is started again.
    #[arg(long, default_value_t = 2)]
    restart_after_secs: u64,
    /// Quiet time with everything healthy before and between faults.
    #[arg(long, default_value_t = 5)]
    settle_secs: u64,
    /// A fault not recovered from within this is a failed invariant.
    #[arg(long, default_value_t = 90)]
    recovery_limit_secs: u64,
    /// Match length on the game servers (matches end and new ones start during the run).
    #[arg(long, default_value_t = 45)]
    match_secs: u64,
    /// Leave the cluster up at the end (for a look at its logs).
    #[arg(long)]
    keep: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    pub fault: String,
    pub target: String,
    /// How long the fault itself lasted (a process's downtime, a freeze, an outage).
    pub held_ms: u64,
    /// From injecting the fault until every user was served again and the stores caught up.
    pub recovered_ms: Option<u64>,
    /// The part of that after the fault was lifted (the process restarted, unfrozen...).
    pub after_lift_ms: Option<u64>,
    /// What was still failing when the limit ran out, if it did.
    pub unrecovered: String,
    /// The longest any viewer went without a message during the fault and its recovery.
    pub worst_viewer_silence_ms: u64,
    /// What came back last (empty when nothing was ever missing after the fault was lifted).
    pub slowest: String,
    /// Matches running before the fault that neither ran on nor ended with results after it.
    pub matches_lost: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Invariant {
    pub name: String,
    pub held: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChaosReport {
    pub viewers: usize,
    pub players: usize,
    pub seconds: u64,
    pub faults: Vec<FaultRecord>,
    pub recovery_by_kind: Vec<(String, u64, u64, u64)>,
    pub invariants: Vec<Invariant>,
}

fn grandstand_bin(args: &Args) -> anyhow::Result<PathBuf> {
    if let Some(b) = &args.bin {
        return Ok(b.clone());
    }
    let me = std::env::current_exe()?;
    Ok(me.with_file_name("grandstand"))
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

pub async fn run(args: Args, json: Option<PathBuf>) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut faults: Vec<Fault> = args.faults.iter().flat_map(FaultSpec::faults).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    for _ in 0..args.random {
        let kind = FaultKind::ALL[rng.random_range(0..FaultKind::ALL.len())];
        faults.push(Fault::of(kind, rng.random()));
    }

    let mut cluster = Cluster {
        script: args.cluster_script.clone(),
        dir: args.cluster_dir.clone(),
        bin: grandstand_bin(&args)?,
        match_secs: args.match_secs,
        up: false,
    };
    // A cluster left over by an interrupted run holds the ports.
    let _ = cluster.run(&["down"]).await;
    println!(
        "chaos: starting the cluster ({})",
        args.cluster_dir.display()
    );
    // Torn down on the way out, also on an error (unless --keep, for a look at its logs).
    cluster.up = !args.keep;
    cluster.run(&["up"]).await?;

    let topology = Arc::new(Topology::local_cluster());
    let probe = Probe::connect(topology.clone()).await?;
    let mut fleet = Fleet::start(&topology, args.viewers, args.players);
    println!(
        "chaos: {} viewers, {} players; {} faults",
        args.viewers,
        args.players,
        faults.len()
    );

    let limit = Duration::from_secs(args.recovery_limit_secs);
    let settle = Duration::from_secs(args.settle_secs);
    if !wait_healthy(&probe, &fleet, Duration::from_secs(60), settle).await {
        let h = probe.health(&fleet).await;
        bail!(
            "the cluster never became healthy before any fault (missing: {})",
            h.missing()
        );
    }

    println!("chaos: healthy after {:.0?}; injecting", started.elapsed());
    let mut records = Vec::new();
    for fault in faults {
        let record = inject(&cluster, &probe, &fleet, fault, &args, limit).await?;
        println!(
            "  {:<16} {:<13} held {:>6} ms  recovered {:>8}  after lift {:>8}  worst viewer silence {:>6} ms{}",
            fault.kind(),
            record.target,
            record.held_ms,
            record.recovered_ms.map_or("NEVER".into(), |m| format!("{m} ms")),
            record.after_lift_ms.map_or("-".into(), |m| format!("{m} ms")),
            record.worst_viewer_silence_ms,
            if record.matches_lost.is_empty() {
                String::new()
            } else {
                format!("  LOST {:?}", record.matches_lost)
            }
        );
        records.push(record);
        wait_healthy(&probe, &fleet, limit, settle).await;
    }

    println!(
        "chaos: faults done after {:.0?}; shutting the game servers down",
        started.elapsed()
    );
    // The end: users leave, the game servers shut down cleanly (every room ends its match with
    // results), and the aggregators drain what is left.
    fleet.stop().await;
    for g in ["game-1", "game-2"] {
        cluster.signal(g, libc::SIGTERM)?;
    }
    for g in ["game-1", "game-2"] {
        if !cluster.wait_gone(g, Duration::from_secs(30)).await {
            bail!("{g} did not shut down within 30 s");
        }
    }
    let events = drain(&probe, limit).await?;
    let invariants = audit_run(&probe, &fleet, &records, &events).await;

    let mut by_kind: BTreeMap<&str, Histogram<u64>> = BTreeMap::new();
    for r in &records {
        if let Some(m) = r.recovered_ms {
            by_kind
                .entry(r.fault.as_str())
                .or_insert_with(|| Histogram::new(3).expect("histogram"))
                .record(m.max(1))?;
        }
    }
    let recovery_by_kind = by_kind
        .iter()
        .map(|(k, h)| (k.to_string(), h.len(), h.value_at_quantile(0.5), h.max()))
        .collect();
    let report = ChaosReport {
        viewers: args.viewers,
        players: args.players,
        seconds: started.elapsed().as_secs(),
        faults: records,
        recovery_by_kind,
        invariants,
    };
    print_report(&report);
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
        println!("results written to {}", path.display());
    }
    // Down here (its errors reported) rather than in Drop; --keep leaves it up.
    cluster.up = false;
    if !args.keep {
        cluster.run(&["down"]).await?;
    }
    let failed: Vec<&str> = report
        .invariants
        .iter()
        .filter(|i| !i.held)
        .map(|i| i.name.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("invariants broken: {}", failed.join("; "));
    }
    Ok(())
}

/// Waits until everything is healthy and stays so for `settle`; false at `limit`.
async fn wait_healthy(probe: &Probe, fleet: &Fleet, limit: Duration, settle: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut healthy_since: Option<Instant> = None;
    while Instant::now() < deadline {
        if probe.health(fleet).await.all() {
            let since = *healthy_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= settle {
                return true;
            }
        } else {
            healthy_since = None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

/// Live matches and their log position, from the listing.
async fn live_matches(probe: &Probe) -> BTreeMap<String, (u64, u64)> {
    probe
        .listing()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|m| m["status"] == "live")
        .filter_map(|m| {
            Some((
                m["id"].as_str()?.to_string(),
                (m["epoch"].as_u64()?, m["version"].as_u64()?),
            ))
        })
        .collect()
}

async fn inject(
    cluster: &Cluster,
    probe: &Probe,
    fleet: &Fleet,
    fault: Fault,
    args: &Args,
    limit: Duration,
) -> anyhow::Result<FaultRecord> {
    let before = live_matches(probe).await;
    let t0 = Instant::now();
    let restart = Duration::from_secs(args.restart_after_secs);
    let target = fault.target();
    // Watches the viewers while the fault is on, so the silence it causes is measured even
    // when the fault lasts longer than any one poll.
    let worst = Arc::new(std::sync::Mutex::new(Duration::ZERO));
    let watching = {
        let worst = worst.clone();
        let viewers = fleet.viewers.clone();
        tokio::spawn(async move {
            loop {
                let w = viewers
                    .iter()
                    .map(|v| v.silence())
                    .max()
                    .unwrap_or_default();
                {
                    let mut m = worst.lock().unwrap();
                    *m = (*m).max(w);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    match fault {
        Fault::KillGame(_) | Fault::KillGateway(_) | Fault::KillAggregator(_) | Fault::KillApi => {
            cluster.signal(&target, libc::SIGKILL)?;
            tokio::time::sleep(restart).await;
            cluster.run(&["start-role", &target]).await?;
        }
        Fault::KillNats(n) => {
            cluster.signal(&target, libc::SIGKILL)?;
            tokio::time::sleep(restart.max(Duration::from_secs(5))).await;
            cluster.run(&["start-nats", &n.to_string()]).await?;
        }
        Fault::RedisFailover => {
            cluster.run(&["redis-failover"]).await?;
        }
        Fault::RedisEmpty => {
            // Both Redis servers, primary and replica: nothing to fail over to.
            cluster
                .run(&["redis-empty", &restart.as_secs_f64().to_string()])
                .await?;
            // What an operator does after a Redis loss.
            cluster.run(&["rebuild"]).await?;
        }
        Fault::PostgresDown => {
            cluster.run(&["stop-postgres"]).await?;
            tokio::time::sleep(Duration::from_secs(args.postgres_down_secs)).await;
            cluster.run(&["start-postgres"]).await?;
        }
        Fault::FreezeGateway(_) => {
            cluster.signal(&target, libc::SIGSTOP)?;
            tokio::time::sleep(Duration::from_secs(args.freeze_secs)).await;
            cluster.signal(&target, libc::SIGCONT)?;
        }
    }
    let held = t0.elapsed();
    let mut recovered = None;
    let mut last = Health::default();
    // What was still missing at the last poll before recovery: the slowest part.
    let mut slowest = String::new();
    while t0.elapsed() < held + limit {
        last = probe.health(fleet).await;
        if last.all() {
            recovered = Some(t0.elapsed());
            break;
        }
        slowest = last.missing();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    watching.abort();
    let worst_viewer_silence = *worst.lock().unwrap();

    // Every match live before the fault has moved on since (a later position or a new epoch)
    // or ended with its end in the log.
    let mut lost: Vec<String> = before.keys().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !lost.is_empty() && Instant::now() < deadline {
        let now = live_matches(probe).await;
        let ended: Vec<String> = match probe.log_events().await {
            Ok(events) => audit::reference(&events)
                .ended()
                .map(|(id, _)| id.clone())
                .collect(),
            Err(_) => Vec::new(),
        };
        lost.retain(|id| {
            let moved = now.get(id).is_some_and(|p| *p > before[id]);
            !(moved || ended.contains(id))
        });
        if !lost.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Ok(FaultRecord {
        fault: fault.kind().name().into(),
        target,
        held_ms: ms(held),
        recovered_ms: recovered.map(ms),
        after_lift_ms: recovered.map(|r| ms(r.saturating_sub(held))),
        unrecovered: if recovered.is_some() {
            String::new()
        } else {
            last.missing()
        },
        worst_viewer_silence_ms: ms(worst_viewer_silence),
        slowest,
        matches_lost: lost,
    })
}

fn print_report(r: &ChaosReport) {
    println!();
    println!("| fault | target | held | recovered (from injection) | after lift | came back last | worst viewer silence | matches lost |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for f in &r.faults {
        println!(
            "| {} | {} | {:.1} s | {} | {} | {} | {:.1} s | {} |",
            f.fault,
            f.target,
            f.held_ms as f64 / 1000.0,
            f.recovered_ms
                .map_or(format!("NOT RECOVERED ({})", f.unrecovered), |m| format!(
                    "{:.1} s",
                    m as f64 / 1000.0
                )),
            f.after_lift_ms
                .map_or("-".into(), |m| format!("{:.1} s", m as f64 / 1000.0)),
            if f.slowest.is_empty() {
                "-"
            } else {
                &f.slowest
            },
            f.worst_viewer_silence_ms as f64 / 1000.0,
            f.matches_lost.len()
        );
    }
    println!();
    println!("| fault kind | runs | recovery p50 | recovery max |");
    println!("| --- | --- | --- | --- |");
    for (k, n, p50, max) in &r.recovery_by_kind {
        println!(
            "| {k} | {n} | {:.1} s | {:.1} s |",
            *p50 as f64 / 1000.0,
            *max as f64 / 1000.0
        );
    }
    println!();
    println!("| invariant | held | detail |");
    println!("| --- | --- | --- |");
    for i in &r.invariants {
        println!(
            "| {} | {} | {} |",
            i.name,
            if i.held { "yes" } else { "**NO**" },
            i.detail.replace('|', "/")
        );
    }
}
