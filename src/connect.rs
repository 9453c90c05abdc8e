//! Opening the backends a role needs (real ones when their URL is set, the embedded ones when
//! every role shares this process) and starting the roles that run beside the HTTP server.

use std::sync::Arc;

use anyhow::{bail, Context};
use backends::{
    History, Leaderboards, MatchLog, MemoryLeaderboards, MemoryLog, MemoryLogLimits, NatsLog,
    RedisLeaderboards, SqlHistory, TickBus,
};
use httpkit::Shutdown;
use protocol::TokenSigner;

use crate::cli::{GameArgs, HistoryArgs, NatsArgs, RedisArgs, SecretArgs, ViewerArgs};

/// What a role reads and writes. The leaderboards and history are opened only by the roles
/// that use them.
pub struct Backends {
    pub log: Arc<dyn MatchLog>,
    /// Leaderboard ticks travel beside the match log, on the same connection.
    pub ticks: Arc<dyn TickBus>,
    pub boards: Option<Arc<dyn Leaderboards>>,
    pub history: Option<Arc<dyn History>>,
}

/// The match log and the tick bus beside it: JetStream when `NATS_URL` is set; the in-process
/// log when `embedded` (every role in this process), an error otherwise (other processes could
/// not read it).
pub async fn match_log(
    nats: &NatsArgs,
    embedded: bool,
) -> anyhow::Result<(Arc<dyn MatchLog>, Arc<dyn TickBus>)> {
    match &nats.nats_url {
        Some(url) => {
            let log = Arc::new(
                NatsLog::connect(nats.config(url))
                    .await
                    .context("connecting to NATS JetStream")?,
            );
            tracing::info!(%url, stream = %nats.nats_stream, "match log: NATS JetStream");
            Ok((log.clone(), log))
        }
        None if embedded => {
            tracing::info!("match log: embedded (in-process)");
            let log = Arc::new(MemoryLog::new(MemoryLogLimits::default()));
            Ok((log.clone(), log))
        }
        None => bail!("this role runs in its own process and needs NATS_URL; the embedded log only works with `grandstand all`"),
    }
}

/// Leaderboards: Redis when `REDIS_URL` is set; in memory when `embedded`.
pub async fn leaderboards(
    redis: &RedisArgs,
    embedded: bool,
) -> anyhow::Result<Arc<dyn Leaderboards>> {
    match &redis.redis_url {
        Some(url) => {
            let lb = RedisLeaderboards::connect(url, &redis.redis_prefix)
                .await
                .context("connecting to Redis")?;
            tracing::info!(%url, prefix = %redis.redis_prefix, "leaderboards: Redis");
            Ok(Arc::new(lb))
        }
        None if embedded => {
            tracing::info!("leaderboards: embedded (in-memory)");
            Ok(Arc::new(MemoryLeaderboards::new()))
        }
        None => {
            bail!(
                "this role needs REDIS_URL; embedded leaderboards only work with `grandstand all`"
            )
        }
    }
}

/// Match history: PostgreSQL when `DATABASE_URL` is set, else a SQLite file under the data
/// directory (migrations run either way).
pub async fn history(args: &HistoryArgs) -> anyhow::Result<Arc<SqlHistory>> {
    let url = match &args.database_url {
        Some(url) => url.clone(),
        None => {
            std::fs::create_dir_all(&args.data_dir)
                .with_context(|| format!("creating {}", args.data_dir.display()))?;
            format!(
                "sqlite://{}",
                args.data_dir.join("history.sqlite").display()
            )
        }
    };
    let h = SqlHistory::connect(&url)
        .await
        .context("opening the history store")?;
    // (The partner keys live in the same store.)
    let shown = if url.starts_with("sqlite:") {
        url.clone()
    } else {
        "PostgreSQL (DATABASE_URL)".into()
    };
    tracing::info!(store = %shown, "history ready (migrations applied)");
    Ok(Arc::new(h))
}

/// The signer of bearer tokens. Roles in separate processes must share a secret; every role
/// in one process may make one up (tokens then die with the process).
pub async fn signer(args: &SecretArgs, embedded: bool) -> anyhow::Result<TokenSigner> {
    let signer = own_signer(args, embedded)?;
    let jwt = args.jwt();
    if !jwt.enabled() {
        return Ok(signer);
    }
    if let Some(short) = jwt.secrets.iter().find(|s| s.len() < 16) {
        bail!(
            "--jwt-secrets: each secret at least 16 characters ({} given)",
            short.len()
        );
    }
    let verifier = httpkit::JwtVerifier::new(jwt)
        .await
        .context("the JWKS (--jwt-jwks-file, --jwt-jwks-url)")?;
    // Re-read until the process ends.
    verifier.keep_fresh(httpkit::Shutdown::new());
    tracing::info!("JWTs accepted as bearer tokens");
    Ok(signer.with_external(verifier))
}

fn own_signer(args: &SecretArgs, embedded: bool) -> anyhow::Result<TokenSigner> {
    match &args.token_secret {
        Some(s) if s.len() >= 16 => Ok(TokenSigner::new(s.as_bytes())),
        Some(_) => bail!("GRANDSTAND_TOKEN_SECRET must be at least 16 characters"),
        None if embedded => {
            let secret: [u8; 32] = rand::random();
            Ok(TokenSigner::new(&secret))
        }
        None => bail!("this role needs GRANDSTAND_TOKEN_SECRET, shared by the gateways, the API and the game servers"),
    }
}

/// Binds the player port and starts the game server (its run loop joins `tasks`).
pub async fn start_game_server(
    game: &GameArgs,
    redis: &RedisArgs,
    backends: &Backends,
    signer: &TokenSigner,
    shutdown: &Shutdown,
    tasks: &mut tokio::task::JoinSet<()>,
) -> anyhow::Result<Arc<game_server::GameServer>> {
    let udp = tokio::net::UdpSocket::bind(game.udp_addr)
        .await
        .with_context(|| format!("binding UDP on {}", game.udp_addr))?;
    tracing::info!(udp_addr = %udp.local_addr()?, "UDP listening");
    let (registry, checkpoints): (
        Arc<dyn backends::RoomRegistry>,
        Arc<dyn backends::CheckpointStore>,
    ) = match &redis.redis_url {
        Some(url) => (
            Arc::new(
                backends::RedisRegistry::connect(url, &redis.redis_prefix)
                    .await
                    .context("connecting the room registry to Redis")?,
            ),
            Arc::new(
                backends::RedisCheckpoints::connect(url, &redis.redis_prefix)
                    .await
                    .context("connecting room checkpoints to Redis")?,
            ),
        ),
        None => (
            Arc::new(backends::MemoryRegistry::default()),
            Arc::new(backends::MemoryCheckpoints::default()),
        ),
    };
    let stores = game_server::GameServerStores {
        log: backends.log.clone(),
        registry,
        checkpoints,
    };
    // Takeover needs checkpoints another process can read: Redis.
    let config = game.config(redis.redis_url.is_some());
    let server = game_server::GameServer::new(config, udp, stores, signer, shutdown.clone())?;
    let running = server.clone();
    tasks.spawn(async move {
        if let Err(e) = running.run().await {
            tracing::error!(error = %e, "game server stopped");
        }
    });
    Ok(server)
}

/// The viewer gateway; with Redis it finds the other gateways and shares the stream caps.
pub async fn gateway(
    viewers: &ViewerArgs,
    redis: &RedisArgs,
    connections: httpkit::ConnectionLimits,
    cors: httpkit::CorsOrigins,
    backends: &Backends,
    signer: &TokenSigner,
    shutdown: &Shutdown,
) -> anyhow::Result<fanout_gateway::Gateway> {
    let gw = fanout_gateway::Gateway::new(
        fanout_gateway::GatewayConfig {
            cors,
            ..viewers.config(connections)
        },
        backends.log.clone(),
        backends.ticks.clone(),
        signer.clone(),
        shutdown.clone(),
    );
    Ok(match &redis.redis_url {
        Some(url) => gw
            .with_membership(Arc::new(
                backends::RedisMembership::connect(url, &redis.redis_prefix)
                    .await
                    .context("connecting gateway membership to Redis")?,
            ))
            .with_shared_caps(
                backends::RedisStreamLeases::connect(url, &redis.redis_prefix)
                    .await
                    .context("connecting shared stream caps to Redis")?,
            ),
        None => gw,
    })
}

/// The public API's state over this process's backends.
pub fn api_state(
    backends: &Backends,
    signer: &TokenSigner,
    viewers: Option<api::ViewerCounts>,
    cors: httpkit::CorsOrigins,
) -> api::ApiState {
    api::ApiState::new(
        api::ApiConfig {
            cors,
            ..api::ApiConfig::default()
        },
        backends.log.clone(),
        backends
            .boards
            .clone()
            .expect("the API opens the leaderboards"),
        backends.history.clone().expect("the API opens the history"),
        signer.clone(),
        viewers,
    )
}

/// The role's readiness: every backend it opened must answer (and the Redis server behind its
/// room store or gateway membership, when it has one).
pub async fn readiness(
    backends: &Backends,
    redis: Option<&RedisArgs>,
) -> anyhow::Result<httpkit::Readiness> {
    let log = backends.log.clone();
    let mut ready = httpkit::Readiness::default().check("match_log", move || {
        let log = log.clone();
        async move { log.ready().await.map_err(|e| e.to_string()) }
    });
    if let Some(boards) = backends.boards.clone() {
        ready = ready.check("leaderboards", move || {
            let boards = boards.clone();
            async move { boards.ready().await.map_err(|e| e.to_string()) }
        });
    }
    if let Some(history) = backends.history.clone() {
        ready = ready.check("history", move || {
            let history = history.clone();
            async move { history.ready().await.map_err(|e| e.to_string()) }
        });
    }
    if let Some(url) = redis.and_then(|r| r.redis_url.as_deref()) {
        let probe = backends::RedisProbe::connect(url)
            .await
            .map_err(|e| anyhow::anyhow!("connecting the readiness probe to Redis: {e}"))?;
        ready = ready.check("redis", move || {
            let probe = probe.clone();
            async move { probe.ping().await }
        });
    }
    Ok(ready)
}

/// Keeps `directory` in step with the active partner keys in `store`: loaded once before the
/// role serves (so keys work from its first request), then every [`httpkit::PARTNER_REFRESH`]
/// until `shutdown`. A failed read keeps the keys known so far (an outage of the store must
/// not lock partners out) and is logged.
pub async fn keep_partners_fresh(
    store: Arc<dyn backends::PartnerStore>,
    directory: httpkit::PartnerDirectory,
    shutdown: httpkit::Shutdown,
) {
    match store.active_keys().await {
        Ok(keys) => directory.replace(keys),
        Err(e) => tracing::warn!(error = %e, "reading partner keys failed; retrying"),
    }
    tokio::spawn(async move {
        let mut every = tokio::time::interval(httpkit::PARTNER_REFRESH);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            match store.active_keys().await {
                Ok(keys) => directory.replace(keys),
                Err(e) => {
                    tracing::warn!(error = %e, "reading partner keys failed; keeping the last ones")
                }
            }
        }
    });
}

/// Viewer counts summed over every gateway of the fleet (their Redis membership heartbeats);
/// `None` without Redis, where this process's own gateway is the only one.
pub async fn fleet_viewers(
    redis: &RedisArgs,
    shutdown: &Shutdown,
) -> anyhow::Result<Option<api::ViewerCounts>> {
    let Some(url) = &redis.redis_url else {
        return Ok(None);
    };
    let membership = backends::RedisMembership::connect(url, &redis.redis_prefix)
        .await
        .context("connecting to Redis (gateway membership)")?;
    Ok(Some(api::fleet_viewer_counts(
        Arc::new(membership),
        shutdown.clone(),
    )))
}
