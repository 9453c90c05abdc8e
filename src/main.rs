//! `grandstand`: one binary, many roles. With no role (or `all`) every role runs in this
//! process on the embedded backends, unless NATS_URL / REDIS_URL / DATABASE_URL point at real
//! ones. `grandstand game-server|gateway|aggregator|snapshot-api` runs one role, for
//! production.
//!
//! This file is wiring only: the command line lives in `cli` (by concern), backends are
//! opened in `connect`, and each role is a library with its own entry point.

mod cli;
mod connect;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use axum::Router;
use clap::Parser;
use httpkit::Shutdown;

use cli::{AggregatorArgs, AllArgs, ApiArgs, Cli, GameServerArgs, GatewayArgs, Role};
use connect::Backends;

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
    let shutdown = Shutdown::new();
    tokio::spawn(wait_for_signal(shutdown.clone()));
    match cli.role {
        None => all(cli.all, shutdown).await,
        Some(Role::All(args)) => all(args, shutdown).await,
        Some(Role::GameServer(args)) => game_server(args, shutdown).await,
        Some(Role::Gateway(args)) => gateway(args, shutdown).await,
        Some(Role::Aggregator(args)) => aggregator(args, shutdown).await,
        Some(Role::SnapshotApi(args)) => snapshot_api(args, shutdown).await,
    }
}

/// Binds the HTTP port and says where (tests and scripts read `http_addr=` from the log).
fn listen(http: &cli::HttpArgs, role: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = httpkit::listen(http.http_addr)
        .with_context(|| format!("binding HTTP on {}", http.http_addr))?;
    let http_addr = listener.local_addr()?;
    tracing::info!(%http_addr, role, "HTTP listening");
    Ok(listener)
}

/// Waits for the role's background tasks after shutdown (rooms end their matches and flush
/// their feeds), at most 10 s.
async fn drain(mut tasks: tokio::task::JoinSet<()>) {
    let all = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(10), all)
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop within 10 s");
    }
}

/// Every role in one process, one HTTP port for the API, the streams and the dashboard.
async fn all(args: AllArgs, shutdown: Shutdown) -> anyhow::Result<()> {
    let embedded = true;
    let (log, ticks) = connect::match_log(&args.nats, embedded).await?;
    let boards = connect::leaderboards(&args.redis, embedded).await?;
    let history = connect::history(&args.history).await?;
    if args.redis.redis_url.is_none() {
        // Embedded leaderboards live in memory: restore them from the history on disk.
        let (epochs, events) =
            aggregator::rebuild::load_history(&*history, &*boards, &args.boards.retention())
                .await
                .context("restoring leaderboards from history")?;
        tracing::info!(epochs, events, "leaderboards restored from history");
    }
    let http = listen(&args.http, "all")?;
    let http_addr = http.local_addr()?;
    let signer = connect::signer(&args.secret, embedded)?;
    let backends = Backends {
        log,
        ticks,
        boards: Some(boards),
        history: Some(history),
    };
    let mut tasks = tokio::task::JoinSet::new();

    let game = connect::start_game_server(
        &args.game,
        &args.redis,
        &backends,
        &signer,
        &shutdown,
        &mut tasks,
    )
    .await?;
    let limits = args.http.limits(args.viewers.stall());
    let gateway = connect::gateway(
        &args.viewers,
        &args.redis,
        limits.clone(),
        &backends,
        &signer,
        &shutdown,
    )
    .await?;
    gateway.announce(
        args.viewers
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{http_addr}")),
    );
    tasks.spawn(aggregator::run(
        args.boards.config(),
        backends.log.clone(),
        backends.ticks.clone(),
        backends.boards.clone().expect("opened above"),
        backends.history.clone().expect("opened above"),
        shutdown.clone(),
    ));
    let viewers: api::ViewerCounts = {
        let gw = gateway.clone();
        Arc::new(move |id: &str| gw.viewers(id))
    };
    let api = connect::api_state(&backends, &signer, Some(viewers))
        .with_matchmaker(Arc::new(game_server::LocalMatchmaker(game)));
    let router: Router = httpkit::ops_router()
        .merge(gateway.router())
        .merge(api::router(api));
    let result = httpkit::serve_with(
        http,
        router.fallback(httpkit::no_such_route),
        shutdown.clone(),
        limits,
    )
    .await;
    shutdown.cancel();
    drain(tasks).await;
    result.context("HTTP server")?;
    tracing::info!("stopped");
    Ok(())
}

async fn game_server(args: GameServerArgs, shutdown: Shutdown) -> anyhow::Result<()> {
    let (log, ticks) = connect::match_log(&args.nats, false).await?;
    let http = listen(&args.http, "game-server")?;
    let signer = connect::signer(&args.secret, false)?;
    let backends = Backends {
        log,
        ticks,
        boards: None,
        history: None,
    };
    let mut tasks = tokio::task::JoinSet::new();
    let game = connect::start_game_server(
        &args.game,
        &args.redis,
        &backends,
        &signer,
        &shutdown,
        &mut tasks,
    )
    .await?;
    // A game server's HTTP port: its matchmaker (for APIs in other processes) and ops.
    let router = httpkit::ops_router().merge(httpkit::matchmaking_router(
        Arc::new(game_server::LocalMatchmaker(game)),
        signer,
    ));
    let limits = args
        .http
        .limits(fanout_gateway::GatewayConfig::default().stall_deadline);
    let result = httpkit::serve_with(
        http,
        router.fallback(httpkit::no_such_route),
        shutdown.clone(),
        limits,
    )
    .await;
    shutdown.cancel();
    drain(tasks).await;
    result.context("HTTP server")
}

async fn gateway(args: GatewayArgs, shutdown: Shutdown) -> anyhow::Result<()> {
    let (log, ticks) = connect::match_log(&args.nats, false).await?;
    let http = listen(&args.http, "gateway")?;
    let http_addr = http.local_addr()?;
    let signer = connect::signer(&args.secret, false)?;
    let backends = Backends {
        log,
        ticks,
        boards: None,
        history: None,
    };
    let limits = args.http.limits(args.viewers.stall());
    let gw = connect::gateway(
        &args.viewers,
        &args.redis,
        limits,
        &backends,
        &signer,
        &shutdown,
    )
    .await?;
    gw.announce(
        args.viewers
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{http_addr}")),
    );
    let result = gw.run(http).await;
    shutdown.cancel();
    result.context("HTTP server")
}

async fn aggregator(args: AggregatorArgs, shutdown: Shutdown) -> anyhow::Result<()> {
    let (log, ticks) = connect::match_log(&args.nats, false).await?;
    let boards = connect::leaderboards(&args.redis, false).await?;
    let history = connect::history(&args.history).await?;
    if args.rebuild {
        let Some(url) = &args.redis.redis_url else {
            bail!("--rebuild needs REDIS_URL, DATABASE_URL and NATS_URL");
        };
        let report = aggregator::rebuild::rebuild_redis(
            url,
            &args.redis.redis_prefix,
            &*history,
            &*log,
            &args.boards.retention(),
        )
        .await
        .context("rebuilding leaderboards")?;
        tracing::info!(?report, "leaderboards rebuilt");
        println!("rebuilt: {report:?}");
        return Ok(());
    }
    let http = listen(&args.http, "aggregator")?;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(aggregator::run(
        args.boards.config(),
        log,
        ticks,
        boards,
        history,
        shutdown.clone(),
    ));
    let limits = args
        .http
        .limits(fanout_gateway::GatewayConfig::default().stall_deadline);
    let result = httpkit::serve_with(
        http,
        httpkit::ops_router().fallback(httpkit::no_such_route),
        shutdown.clone(),
        limits,
    )
    .await;
    shutdown.cancel();
    drain(tasks).await;
    result.context("HTTP server")
}

async fn snapshot_api(args: ApiArgs, shutdown: Shutdown) -> anyhow::Result<()> {
    let (log, ticks) = connect::match_log(&args.nats, false).await?;
    let boards = connect::leaderboards(&args.redis, false).await?;
    let history = connect::history(&args.history).await?;
    let http = listen(&args.http, "snapshot-api")?;
    let signer = connect::signer(&args.secret, false)?;
    let backends = Backends {
        log,
        ticks,
        boards: Some(boards),
        history: Some(history),
    };
    let state = connect::api_state(&backends, &signer, None);
    let state = match &args.matchmaker_url {
        Some(url) => state.with_matchmaker(Arc::new(api::RemoteMatchmaker::new(url))),
        None => state,
    };
    let result = api::run(state, http, shutdown.clone()).await;
    shutdown.cancel();
    result.context("HTTP server")
}
