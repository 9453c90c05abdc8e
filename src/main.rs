//! `grandstand`: one binary, many roles. With no subcommand (or `all`) every role runs in this
//! process on the embedded backends, unless NATS_URL / REDIS_URL / DATABASE_URL point at real
//! ones. `grandstand game-server|gateway|aggregator|snapshot-api` runs one role, for production.
//!
//! `main` only parses configuration, connects backends, binds sockets and wires signals; each
//! role is a library with its own entry point.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use axum::Router;
use backends::{
    History, Leaderboards, MatchLog, MemoryLeaderboards, MemoryLog, MemoryLogLimits, NatsLog,
    NatsLogConfig, RedisLeaderboards, SqlHistory,
};
use clap::{Parser, Subcommand};
use httpkit::Shutdown;
use protocol::TokenSigner;

#[derive(Parser, Debug)]
#[command(
    name = "grandstand",
    version,
    about = "Live multiplayer matches and leaderboards, in real time"
)]
struct Cli {
    #[command(subcommand)]
    role: Option<Role>,

    /// HTTP address: API, viewer streams, dashboard, /healthz and /metrics. Port 0 picks one.
    #[arg(
        long,
        env = "GRANDSTAND_HTTP_ADDR",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    http_addr: SocketAddr,
    /// UDP address players connect to (game-server). Port 0 picks one.
    #[arg(
        long,
        env = "GRANDSTAND_UDP_ADDR",
        default_value = "127.0.0.1:7777",
        global = true
    )]
    udp_addr: SocketAddr,

    /// NATS server with JetStream for the match log; the embedded in-process log when unset.
    #[arg(long, env = "NATS_URL", global = true)]
    nats_url: Option<String>,
    /// JetStream stream holding every match's log.
    #[arg(long, env = "NATS_STREAM", default_value = "MATCHES", global = true)]
    nats_stream: String,
    /// Copies of the stream kept by a NATS cluster (1 on a single server; 3 on a 3-node
    /// cluster, so losing one node loses nothing).
    #[arg(long, env = "NATS_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5), global = true)]
    nats_replicas: u8,
    /// First token of match log subjects (`<root>.<match>.delta|event|keyframe`).
    #[arg(
        long,
        env = "NATS_SUBJECT_ROOT",
        default_value = "match",
        global = true
    )]
    nats_subject_root: String,
    /// How long the match log keeps messages, in seconds.
    #[arg(long, env = "NATS_MAX_AGE_SECS", default_value_t = 24 * 3600, global = true)]
    nats_max_age_secs: u64,
    /// Bytes the match log stream may hold (and reserves on the NATS server).
    #[arg(long, env = "NATS_MAX_BYTES", default_value_t = 8 << 30, global = true)]
    nats_max_bytes: i64,
    /// Redis for leaderboards; embedded in-memory leaderboards when unset.
    #[arg(long, env = "REDIS_URL", global = true)]
    redis_url: Option<String>,
    /// Prefix of every Redis key Grandstand writes.
    #[arg(long, env = "REDIS_PREFIX", default_value = "gs:", global = true)]
    redis_prefix: String,
    /// PostgreSQL for match history; a SQLite file under --data-dir when unset.
    #[arg(long, env = "DATABASE_URL", global = true)]
    database_url: Option<String>,
    /// Where the embedded defaults keep files (the SQLite history).
    #[arg(
        long,
        env = "GRANDSTAND_DATA_DIR",
        default_value = "./data",
        global = true
    )]
    data_dir: PathBuf,
    /// Secret signing bearer tokens. Required when roles run in separate processes; `all`
    /// makes up one per process when unset (tokens then die with the process).
    #[arg(
        long,
        env = "GRANDSTAND_TOKEN_SECRET",
        hide_env_values = true,
        global = true
    )]
    token_secret: Option<String>,

    /// Matches each game server keeps running.
    #[arg(long, env = "GRANDSTAND_MATCHES", default_value_t = 2, global = true)]
    matches: usize,
    /// Bots per match.
    #[arg(long, env = "GRANDSTAND_BOTS", default_value_t = 8, global = true)]
    bots: usize,
    /// Simulation rate (10-128 Hz).
    #[arg(long, env = "GRANDSTAND_TICK_HZ", default_value_t = 30, value_parser = clap::value_parser!(u32).range(10..=128), global = true)]
    tick_hz: u32,
    /// Spectator feed rate (deltas per second).
    #[arg(long, env = "GRANDSTAND_SPECTATOR_HZ", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=60), global = true)]
    spectator_hz: u32,
    /// Length of a match in seconds.
    #[arg(
        long,
        env = "GRANDSTAND_MATCH_SECS",
        default_value_t = 300,
        global = true
    )]
    match_secs: u64,
    /// Seconds between keyframes.
    #[arg(
        long,
        env = "GRANDSTAND_KEYFRAME_SECS",
        default_value_t = 5,
        global = true
    )]
    keyframe_secs: u64,
    /// Seconds between a match's end and the next one in its slot.
    #[arg(
        long,
        env = "GRANDSTAND_INTERMISSION_SECS",
        default_value_t = 5,
        global = true
    )]
    intermission_secs: u64,
    /// Seed for the matches' simulations (random when unset).
    #[arg(long, env = "GRANDSTAND_SEED", global = true)]
    seed: Option<u64>,

    /// Frames queued per viewer before its backlog is replaced by a snapshot.
    #[arg(
        long,
        env = "GRANDSTAND_VIEWER_QUEUE",
        default_value_t = 64,
        global = true
    )]
    viewer_queue: usize,
    /// Recent frames each match hub keeps for resuming viewers.
    #[arg(
        long,
        env = "GRANDSTAND_RESUME_WINDOW",
        default_value_t = 256,
        global = true
    )]
    resume_window: usize,
    /// Hold every match of this game server back this long for viewers (competitive play,
    /// against ghosting); 0 broadcasts live. At most 10 minutes.
    #[arg(long, env = "GRANDSTAND_BROADCAST_DELAY_MS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=600_000), global = true)]
    broadcast_delay_ms: u64,
    /// Records a match hub holds for its broadcast delay; at the limit the hub stops reading
    /// the log until the oldest is due (the log keeps the rest).
    #[arg(
        long,
        env = "GRANDSTAND_DELAY_LINE",
        default_value_t = 16_384,
        global = true
    )]
    delay_line: usize,
    /// Put each record's log publish time (`published_us`) in viewer messages: a debugging aid
    /// for measuring publish -> screen latency, off in production.
    #[arg(long, env = "GRANDSTAND_STAMP_PUBLISH_TIME", global = true)]
    stamp_publish_time: bool,
    /// Seconds a viewer may leave frames unread before it is closed.
    #[arg(
        long,
        env = "GRANDSTAND_STALL_SECS",
        default_value_t = 30,
        global = true
    )]
    stall_secs: u64,

    /// Seconds between WebSocket pings to a viewer (one that misses three pongs is closed).
    #[arg(
        long,
        env = "GRANDSTAND_PING_MS",
        default_value_t = 20_000,
        global = true
    )]
    ping_ms: u64,
    /// Open HTTP connections at most; beyond, new ones wait in the kernel's backlog.
    #[arg(
        long,
        env = "GRANDSTAND_MAX_CONNECTIONS",
        default_value_t = 250_000,
        global = true
    )]
    max_connections: usize,
    /// Seconds a client has to send a request head (slowloris protection).
    #[arg(
        long,
        env = "GRANDSTAND_HEADER_TIMEOUT_SECS",
        default_value_t = 10,
        global = true
    )]
    header_timeout_secs: u64,
    /// Kernel send buffer per connection in bytes (bounds what a slow viewer costs in kernel
    /// memory); the kernel's autotuning when unset.
    #[arg(long, env = "GRANDSTAND_SEND_BUFFER", global = true)]
    send_buffer: Option<usize>,

    /// With `aggregator`: rebuild every leaderboard from history and the match log into fresh
    /// keys, swap them in atomically, and exit (after a Redis loss). Aggregators may keep running.
    #[arg(long, global = true)]
    rebuild: bool,

    /// Days a past day's leaderboard is kept after the day ends.
    #[arg(
        long,
        env = "GRANDSTAND_DAILY_RETENTION_DAYS",
        default_value_t = 7,
        global = true
    )]
    daily_retention_days: u64,
    /// Weeks a past week's leaderboard is kept after the week ends.
    #[arg(
        long,
        env = "GRANDSTAND_WEEKLY_RETENTION_WEEKS",
        default_value_t = 5,
        global = true
    )]
    weekly_retention_weeks: u64,
    /// Hours a match's scoreboard is kept after its last score.
    #[arg(
        long,
        env = "GRANDSTAND_MATCH_BOARD_HOURS",
        default_value_t = 24,
        global = true
    )]
    match_board_hours: u64,

    /// Concurrent viewer streams per user on one gateway.
    #[arg(
        long,
        env = "GRANDSTAND_MAX_STREAMS_PER_USER",
        default_value_t = 8,
        global = true
    )]
    max_streams_per_user: usize,
    /// Concurrent viewer streams per IP address on one gateway.
    #[arg(
        long,
        env = "GRANDSTAND_MAX_STREAMS_PER_ADDRESS",
        default_value_t = 1000,
        global = true
    )]
    max_streams_per_address: usize,
    /// Stream handshakes per second per IP address (bursts of four times as many pass).
    #[arg(
        long,
        env = "GRANDSTAND_HANDSHAKES_PER_SEC",
        default_value_t = 50,
        global = true
    )]
    handshakes_per_sec: u32,

    /// The URL viewers reach this gateway at (announced to the other gateways); by default
    /// http://<bound HTTP address>.
    #[arg(long, env = "GRANDSTAND_PUBLIC_URL", global = true)]
    public_url: Option<String>,

    /// Real players per room.
    #[arg(long, env = "GRANDSTAND_SEATS", default_value_t = 16, global = true)]
    seats: usize,
    /// Snapshots per second sent to each player (at most the tick rate).
    #[arg(long, env = "GRANDSTAND_SNAPSHOT_HZ", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=128), global = true)]
    snapshot_hz: u32,
    /// The most a shot is rewound for lag compensation, in milliseconds.
    #[arg(
        long,
        env = "GRANDSTAND_REWIND_CAP_MS",
        default_value_t = 200,
        global = true
    )]
    rewind_cap_ms: u32,
    /// The player address put in connect tokens (the bound UDP address when unset).
    #[arg(long, env = "GRANDSTAND_ADVERTISE_UDP", global = true)]
    advertise_udp: Option<String>,
    /// Matchmaking regions, comma separated.
    #[arg(
        long,
        env = "GRANDSTAND_REGIONS",
        default_value = "eu,us,asia",
        value_delimiter = ',',
        global = true
    )]
    regions: Vec<String>,
    /// With `snapshot-api`: the game server (HTTP) whose matchmaker serves
    /// `POST /v1/matchmaking/join`.
    #[arg(long, env = "GRANDSTAND_MATCHMAKER_URL", global = true)]
    matchmaker_url: Option<String>,

    /// Durable consumer name of the aggregator (aggregators with one name share the work).
    #[arg(
        long,
        env = "GRANDSTAND_AGGREGATOR",
        default_value = "aggregator",
        global = true
    )]
    aggregator_name: String,
}

#[derive(Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Every role in one process (the default).
    All,
    /// Rooms and the player port.
    GameServer,
    /// Viewer streams (WebSocket and SSE).
    Gateway,
    /// Leaderboards and history from the match events.
    Aggregator,
    /// The HTTP API.
    SnapshotApi,
}

struct Backends {
    log: Arc<dyn MatchLog>,
    boards: Option<Arc<dyn Leaderboards>>,
    history: Option<Arc<dyn History>>,
}

async fn match_log(cli: &Cli, role: Role) -> anyhow::Result<Arc<dyn MatchLog>> {
    match &cli.nats_url {
        Some(url) => {
            let mut config = NatsLogConfig::new(url.clone());
            config.stream = cli.nats_stream.clone();
            config.subject_root = cli.nats_subject_root.clone();
            config.max_age = Duration::from_secs(cli.nats_max_age_secs);
            config.max_bytes = cli.nats_max_bytes;
            config.replicas = usize::from(cli.nats_replicas);
            let log = NatsLog::connect(config).await.context("connecting to NATS JetStream")?;
            tracing::info!(%url, stream = %cli.nats_stream, "match log: NATS JetStream");
            Ok(Arc::new(log))
        }
        None if role == Role::All => {
            tracing::info!("match log: embedded (in-process)");
            Ok(Arc::new(MemoryLog::new(MemoryLogLimits::default())))
        }
        None => bail!("{role:?} runs in its own process and needs NATS_URL; the embedded log only works with `grandstand all`"),
    }
}

async fn leaderboards(cli: &Cli, role: Role) -> anyhow::Result<Arc<dyn Leaderboards>> {
    match &cli.redis_url {
        Some(url) => {
            let lb = RedisLeaderboards::connect(url, &cli.redis_prefix)
                .await
                .context("connecting to Redis")?;
            tracing::info!(%url, prefix = %cli.redis_prefix, "leaderboards: Redis");
            Ok(Arc::new(lb))
        }
        None if role == Role::All => {
            tracing::info!("leaderboards: embedded (in-memory)");
            Ok(Arc::new(MemoryLeaderboards::new()))
        }
        None => {
            bail!("{role:?} needs REDIS_URL; embedded leaderboards only work with `grandstand all`")
        }
    }
}

async fn history(cli: &Cli) -> anyhow::Result<Arc<dyn History>> {
    let url = match &cli.database_url {
        Some(url) => url.clone(),
        None => {
            std::fs::create_dir_all(&cli.data_dir)
                .with_context(|| format!("creating {}", cli.data_dir.display()))?;
            format!("sqlite://{}", cli.data_dir.join("history.sqlite").display())
        }
    };
    let h = SqlHistory::connect(&url)
        .await
        .context("opening the history store")?;
    let shown = if url.starts_with("sqlite:") {
        url.clone()
    } else {
        "PostgreSQL (DATABASE_URL)".into()
    };
    tracing::info!(store = %shown, "history ready (migrations applied)");
    Ok(Arc::new(h))
}

async fn connect(cli: &Cli, role: Role) -> anyhow::Result<Backends> {
    let log = match_log(cli, role).await?;
    let needs_reads = matches!(role, Role::All | Role::Aggregator | Role::SnapshotApi);
    let (boards, history) = if needs_reads {
        (
            Some(leaderboards(cli, role).await?),
            Some(history(cli).await?),
        )
    } else {
        (None, None)
    };
    Ok(Backends {
        log,
        boards,
        history,
    })
}

fn signer(cli: &Cli, role: Role) -> anyhow::Result<TokenSigner> {
    match &cli.token_secret {
        Some(s) if s.len() >= 16 => Ok(TokenSigner::new(s.as_bytes())),
        Some(_) => bail!("GRANDSTAND_TOKEN_SECRET must be at least 16 characters"),
        None if role == Role::All => {
            let secret: [u8; 32] = rand::random();
            Ok(TokenSigner::new(&secret))
        }
        None => bail!("{role:?} needs GRANDSTAND_TOKEN_SECRET, shared by the gateways and the API"),
    }
}

async fn wait_for_signal(shutdown: Shutdown) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("ctrl-c: shutting down"),
        _ = term => tracing::info!("SIGTERM: shutting down"),
        _ = shutdown.cancelled() => {}
    }
    shutdown.cancel();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn,async_nats=warn".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let role = cli.role.unwrap_or(Role::All);
    let shutdown = Shutdown::new();
    tokio::spawn(wait_for_signal(shutdown.clone()));

    let backends = connect(&cli, role).await?;
    let retention = aggregator::BoardRetention {
        daily: Duration::from_secs(cli.daily_retention_days * 86_400),
        weekly: Duration::from_secs(cli.weekly_retention_weeks * 7 * 86_400),
        per_match: Duration::from_secs(cli.match_board_hours * 3600),
    };
    if cli.rebuild {
        let (Role::Aggregator, Some(url), Some(history)) =
            (role, &cli.redis_url, &backends.history)
        else {
            bail!("--rebuild goes with `grandstand aggregator` and needs REDIS_URL, DATABASE_URL and NATS_URL");
        };
        let report = aggregator::rebuild::rebuild_redis(
            url,
            &cli.redis_prefix,
            &**history,
            &*backends.log,
            &retention,
        )
        .await
        .context("rebuilding leaderboards")?;
        tracing::info!(?report, "leaderboards rebuilt");
        println!("rebuilt: {report:?}");
        return Ok(());
    }
    if let (Role::All, None, Some(boards), Some(history)) =
        (role, &cli.redis_url, &backends.boards, &backends.history)
    {
        // Embedded leaderboards live in memory: restore them from the history on disk.
        let (epochs, events) = aggregator::rebuild::load_history(&**history, &**boards, &retention)
            .await
            .context("restoring leaderboards from history")?;
        tracing::info!(epochs, events, "leaderboards restored from history");
    }
    let http = httpkit::listen(cli.http_addr)
        .with_context(|| format!("binding HTTP on {}", cli.http_addr))?;
    let http_addr = http.local_addr()?;
    tracing::info!(%http_addr, role = ?role, "HTTP listening");

    let mut tasks = tokio::task::JoinSet::new();
    let mut router: Router = httpkit::ops_router();

    // One signer for every role of this process (in `all` a random secret is drawn once).
    let rest_signer = signer(&cli, role)?;
    let mut game = None;
    if matches!(role, Role::All | Role::GameServer) {
        let udp = tokio::net::UdpSocket::bind(cli.udp_addr)
            .await
            .with_context(|| format!("binding UDP on {}", cli.udp_addr))?;
        tracing::info!(udp_addr = %udp.local_addr()?, "UDP listening");
        let config = game_server::GameServerConfig {
            matches: cli.matches,
            regions: cli.regions.clone(),
            bots_per_match: cli.bots,
            seats: cli.seats.max(1),
            tick_hz: cli.tick_hz,
            spectator_hz: cli.spectator_hz,
            snapshot_hz: cli.snapshot_hz,
            match_duration: Duration::from_secs(cli.match_secs),
            keyframe_every: Duration::from_secs(cli.keyframe_secs.max(1)),
            intermission: Duration::from_secs(cli.intermission_secs),
            seed: cli.seed,
            rewind_cap_ms: cli.rewind_cap_ms,
            advertise: cli.advertise_udp.clone(),
            // Takeover needs checkpoints another process can read: Redis.
            checkpoints: cli.redis_url.is_some(),
            broadcast_delay: Duration::from_millis(cli.broadcast_delay_ms),
            ..Default::default()
        };
        let stores = game_server::GameServerStores {
            log: backends.log.clone(),
            registry: match &cli.redis_url {
                Some(url) => Arc::new(
                    backends::RedisRegistry::connect(url, &cli.redis_prefix)
                        .await
                        .context("connecting the room registry to Redis")?,
                ),
                None => Arc::new(backends::MemoryRegistry::default()),
            },
            checkpoints: match &cli.redis_url {
                Some(url) => Arc::new(
                    backends::RedisCheckpoints::connect(url, &cli.redis_prefix)
                        .await
                        .context("connecting room checkpoints to Redis")?,
                ),
                None => Arc::new(backends::MemoryCheckpoints::default()),
            },
        };
        let server =
            game_server::GameServer::new(config, udp, stores, &rest_signer, shutdown.clone())?;
        let running = server.clone();
        tasks.spawn(async move {
            if let Err(e) = running.run().await {
                tracing::error!(error = %e, "game server stopped");
            }
        });
        game = Some(server);
    }

    let connection_limits = httpkit::ConnectionLimits {
        max_connections: cli.max_connections,
        header_read_timeout: Duration::from_secs(cli.header_timeout_secs.max(1)),
        // A backstop behind the stream's own stall deadline, which closes with a reason.
        write_stall: Duration::from_secs(cli.stall_secs.max(1) + 15),
        send_buffer: cli.send_buffer,
        ..Default::default()
    };
    let mut gateway = None;
    if matches!(role, Role::All | Role::Gateway) {
        let config = fanout_gateway::GatewayConfig {
            viewer_queue: cli.viewer_queue,
            ring_capacity: cli.resume_window,
            delay_line: cli.delay_line.max(16),
            publish_stamps: cli.stamp_publish_time,
            stall_deadline: Duration::from_secs(cli.stall_secs.max(1)),
            max_streams_per_user: cli.max_streams_per_user,
            max_streams_per_address: cli.max_streams_per_address,
            handshakes_per_sec: cli.handshakes_per_sec,
            handshake_burst: cli.handshakes_per_sec.saturating_mul(4),
            ping_interval: Duration::from_millis(cli.ping_ms.max(100)),
            connections: connection_limits.clone(),
            ..Default::default()
        };
        let gw = fanout_gateway::Gateway::new(
            config,
            backends.log.clone(),
            rest_signer.clone(),
            shutdown.clone(),
        );
        let gw = match &cli.redis_url {
            Some(url) => gw
                .with_membership(Arc::new(
                    backends::RedisMembership::connect(url, &cli.redis_prefix)
                        .await
                        .context("connecting gateway membership to Redis")?,
                ))
                .with_shared_caps(
                    backends::RedisStreamLeases::connect(url, &cli.redis_prefix)
                        .await
                        .context("connecting shared stream caps to Redis")?,
                ),
            None => gw,
        };
        gw.announce(
            cli.public_url
                .clone()
                .unwrap_or_else(|| format!("http://{http_addr}")),
        );
        router = router.merge(gw.router());
        gateway = Some(gw);
    }

    if matches!(role, Role::All | Role::Aggregator) {
        let config = aggregator::AggregatorConfig {
            consumer: cli.aggregator_name.clone(),
            retention,
            ..Default::default()
        };
        let (log, boards, history, shutdown) = (
            backends.log.clone(),
            backends.boards.clone().expect("connected for this role"),
            backends.history.clone().expect("connected for this role"),
            shutdown.clone(),
        );
        tasks.spawn(aggregator::run(config, log, boards, history, shutdown));
    }

    let mut api = None;
    if matches!(role, Role::All | Role::SnapshotApi) {
        let viewers: Option<snapshot_api::ViewerCounts> = gateway
            .clone()
            .map(|gw| Arc::new(move |id: &str| gw.viewers(id)) as snapshot_api::ViewerCounts);
        let state = snapshot_api::ApiState::new(
            snapshot_api::ApiConfig::default(),
            backends.log.clone(),
            backends.boards.clone().expect("connected for this role"),
            backends.history.clone().expect("connected for this role"),
            rest_signer.clone(),
            viewers,
        );
        let state = match (&game, &cli.matchmaker_url) {
            (Some(gs), _) => {
                state.with_matchmaker(Arc::new(game_server::LocalMatchmaker(gs.clone())))
            }
            (None, Some(url)) => {
                state.with_matchmaker(Arc::new(snapshot_api::RemoteMatchmaker::new(url)))
            }
            (None, None) => state,
        };
        router = router.merge(snapshot_api::router(state.clone()));
        api = Some(state);
    }

    if let (Role::GameServer, Some(gs)) = (role, &game) {
        router = router.merge(httpkit::matchmaking_router(
            Arc::new(game_server::LocalMatchmaker(gs.clone())),
            rest_signer.clone(),
        ));
    }

    // A single-role process serves that role's own entry point; `all` serves every router on
    // one port (and game-server / aggregator processes only /healthz and /metrics).
    let result = match (role, gateway, api) {
        (Role::Gateway, Some(gw), _) => gw.run(http).await,
        (Role::SnapshotApi, _, Some(state)) => {
            snapshot_api::run(state, http, shutdown.clone()).await
        }
        _ => {
            httpkit::serve_with(
                http,
                router.fallback(httpkit::no_such_route),
                shutdown.clone(),
                connection_limits,
            )
            .await
        }
    };
    shutdown.cancel();
    // Give the rooms a moment to end their matches and flush their feeds.
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop within 10 s");
    }
    result.context("HTTP server")?;
    tracing::info!("stopped");
    Ok(())
}
