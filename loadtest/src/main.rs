//! Load generator and benchmarks. Every latency goes into an HDR histogram and is printed as
//! p50/p95/p99/p999/max; comparisons run side by side in one invocation.

mod abuse;
mod aggregator_bench;
mod chaos;
mod docs_report;
mod drain;
mod freshness;
mod http_bench;
mod io_floor;
mod players;
mod process;
mod raw_peer;
mod report;
mod viewers;
mod wire;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "loadtest", about = "Grandstand load generator and benchmarks")]
struct Cli {
    /// Write the results as JSON to this file too.
    #[arg(long, global = true)]
    json: Option<std::path::PathBuf>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Exactly-once leaderboard applies into real Redis: batched pipeline vs one round trip
    /// per event, same events, same run.
    Aggregator(aggregator_bench::Args),
    /// Cached snapshot and leaderboard GETs against a running server, with the uncached
    /// backend reads side by side.
    Http(http_bench::Args),
    /// Leaderboard reads (top 100, a player's neighbourhood) against a running server, with
    /// the uncached Redis reads side by side.
    Leaderboard(http_bench::Args),
    /// Kill event -> visible in the leaderboard API, against a running server.
    Freshness(freshness::Args),
    /// UDP bot players against an in-process game server through a lossy link.
    Players(players::Args),
    /// WebSocket/SSE viewers through real gateway processes following NATS JetStream.
    Viewers(viewers::Args),
    /// `viewers --storm reconnect`: every viewer drops at once mid-window and resumes from its
    /// last version.
    ReconnectStorm(viewers::Args),
    /// `viewers --storm cold-load`: every viewer drops at once, fetches the cached snapshot
    /// and connects from it (a reload of every page).
    ColdLoadStorm(viewers::Args),
    /// Faults injected into the multi-node cluster of scripts/cluster.sh under real viewers and
    /// players; recovery times and the invariants (version lines, leaderboards and history
    /// against the match log) as tables.
    Chaos(chaos::Args),
    /// Hostile clients (forged, expired and replayed tokens, floods, slowloris, oversized
    /// frames, malformed UDP) against a running server while honest clients' latency is measured.
    Abuse(abuse::Args),
    /// Bytes per viewer per second on a real match, per feed format and transport.
    Wire(wire::Args),
    /// A gateway's viewers when it gets SIGTERM: when each is closed and when it comes back
    /// (close + retry hint), against `--drain-secs 0` in the same run.
    Drain(drain::Args),
    /// Records a real match of bots (what its room publishes) for `viewers --workload match`.
    RecordMatch(viewers::feed::RecordArgs),
    /// Regenerates docs/benchmarks.md (tables and SVG plots) from a template and JSON results.
    Report(docs_report::Args),
    /// The minimal fan-out peer of `viewers --systems raw` (started by it).
    #[command(hide = true)]
    PeerRaw {
        #[arg(long)]
        nats_url: String,
        #[arg(long)]
        subject_root: String,
        /// Write each frame straight to every viewer's socket from the feed's loop (the
        /// `floor` system) instead of through a queue and a task per viewer.
        #[arg(long)]
        direct: bool,
    },
    /// One load-generator process of `viewers` (started by it).
    #[command(hide = true)]
    ViewersWorker {
        #[arg(long)]
        plan: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let results = match cli.scenario {
        Scenario::Aggregator(args) => aggregator_bench::run(args).await?,
        Scenario::Http(args) => http_bench::run(args).await?,
        Scenario::Leaderboard(mut args) => {
            args.leaderboards_only = true;
            http_bench::run(args).await?
        }
        Scenario::Freshness(args) => freshness::run(args).await?,
        Scenario::Players(args) => players::run(args).await?,
        Scenario::Viewers(args) => viewers::run(args).await?,
        Scenario::Wire(args) => wire::run(args).await?,
        Scenario::Drain(args) => drain::run(args).await?,
        Scenario::ReconnectStorm(args) => {
            viewers::run(args.with_storm(viewers::Storm::Reconnect)).await?
        }
        Scenario::ColdLoadStorm(args) => {
            viewers::run(args.with_storm(viewers::Storm::ColdLoad)).await?
        }
        Scenario::ViewersWorker { plan } => return viewers::worker::worker(plan).await,
        Scenario::Report(args) => return docs_report::run(args),
        Scenario::RecordMatch(args) => return viewers::feed::record(args).await,
        Scenario::Chaos(args) => return chaos::run(args, cli.json).await,
        Scenario::Abuse(args) => return abuse::run(args, cli.json).await,
        Scenario::PeerRaw {
            nats_url,
            subject_root,
            direct,
        } => return raw_peer::run(nats_url, subject_root, direct).await,
    };
    println!("{}", report::table(&results));
    if let Some(path) = cli.json {
        std::fs::write(&path, serde_json::to_vec_pretty(&results)?)?;
        println!("results written to {}", path.display());
    }
    Ok(())
}
