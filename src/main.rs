//! `grandstand`: one binary, many roles. With no role (or `all`) every role runs in this
//! process on the embedded backends, unless NATS_URL / REDIS_URL / DATABASE_URL point at real
//! ones. `grandstand game-server|gateway|aggregator|snapshot-api` runs one role, for
//! production.
//!
//! This file is wiring only: the command line lives in `cli` (by concern), backends are
//! opened in `connect`, and each role is a library with its own entry point.

mod cli;
mod config_file;
mod connect;
mod partners;
mod telemetry;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use axum::Router;
use clap::Parser;
use httpkit::Shutdown;

use cli::{AggregatorArgs, AllArgs, ApiArgs, Cli, GameServerArgs, GatewayArgs, Role};
use connect::Backends;

/// Waits for SIGTERM or ctrl-c, then stops the role gracefully: readiness turns 503 first (load
/// balancers stop sending new clients), a gateway moves its viewers off spread over `drain`,
/// then `shutdown` stops everything. A second signal, or `drain` running out, stops at once.
async fn stop_on_signal(
    shutdown: Shutdown,
    readiness: httpkit::Readiness,
    gateway: Option<fanout_gateway::Gateway>,
    drain: Duration,
) {
    let mut signals = Signals::new();
    tokio::select! {
        what = signals.next() => tracing::info!(signal = what, drain_secs = drain.as_secs(), "draining"),
        _ = shutdown.cancelled() => return,
    }
    readiness.drain();
    let moved_off = async {
        if let Some(gw) = &gateway {
            gw.drain(drain);
            // The hubs close their viewers over `drain`; stop as soon as the last is gone.
            while gw.total_viewers() > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    tokio::select! {
        _ = moved_off => tracing::info!("drained: stopping"),
        _ = tokio::time::sleep(drain + Duration::from_secs(1)) => tracing::info!("drain period over: stopping"),
        what = signals.next() => tracing::info!(signal = what, "second signal: stopping now"),
        _ = shutdown.cancelled() => {}
    }
    shutdown.cancel();
}

/// SIGTERM and ctrl-c as one stream of "stop" requests.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Signals {
        Signals {
            #[cfg(unix)]
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok(),
        }
    }

    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        let term = async {
            match &mut self.term {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => "ctrl-c",
            _ = term => "SIGTERM",
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let applied = config_file::apply(std::env::args_os().collect())?;
    let cli = Cli::parse_from(applied.argv);
    if let Some(Role::Config(cli::ConfigCommand::Print { role, config })) = &cli.role {
        print!(
            "{}",
            config_file::print(role.as_deref(), config.as_deref())?
        );
        return Ok(());
    }
    if let Some(Role::Partners(command)) = cli.role {
        print!("{}", partners::run(command).await?);
        return Ok(());
    }
    let role = match &cli.role {
        None | Some(Role::All(_)) => "all",
        Some(Role::GameServer(_)) => "game-server",
        Some(Role::Gateway(_)) => "gateway",
        Some(Role::Aggregator(_)) => "aggregator",
        Some(Role::SnapshotApi(_)) => "snapshot-api",
        Some(Role::Config(_)) | Some(Role::Partners(_)) => "tool",
    };
    // Flushes the last spans when main returns.
    let _telemetry = telemetry::init(cli.log().log_format, role)?;
    let shutdown = Shutdown::new();
    match cli.role {
        None => all(cli.all, shutdown).await,
        Some(Role::All(args)) => all(args, shutdown).await,
        Some(Role::GameServer(args)) => game_server(args, shutdown).await,
        Some(Role::Gateway(args)) => gateway(args, shutdown).await,
        Some(Role::Aggregator(args)) => aggregator(args, shutdown).await,
        Some(Role::SnapshotApi(args)) => snapshot_api(args, shutdown).await,
        Some(Role::Config(_)) | Some(Role::Partners(_)) => Ok(()),
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

/// What every role does with its readiness: serves it (on `--internal-addr` when set) and
/// drains on SIGTERM (`gateway`'s viewers over `--drain-secs`). Returns the readiness the
/// public routes take.
fn operate(
    http: &cli::HttpArgs,
    readiness: httpkit::Readiness,
    gateway: Option<fanout_gateway::Gateway>,
    shutdown: &Shutdown,
) -> anyhow::Result<httpkit::Readiness> {
    let public = internal_ops(http, readiness.clone(), shutdown)?;
    tokio::spawn(stop_on_signal(
        shutdown.clone(),
        readiness,
        gateway,
        http.drain(),
    ));
    Ok(public)
}

/// With `--internal-addr`, `/metrics` and `/readyz` are served on a listener of their own (for
/// the orchestrator and the scraper, off the public port); the public listener keeps
/// `/healthz`. Returns the readiness the public routes take.
fn internal_ops(
    http: &cli::HttpArgs,
    readiness: httpkit::Readiness,
    shutdown: &Shutdown,
) -> anyhow::Result<httpkit::Readiness> {
    let Some(addr) = http.internal_addr else {
        return Ok(readiness);
    };
    let listener =
        httpkit::listen(addr).with_context(|| format!("binding the internal address {addr}"))?;
    let internal_addr = listener.local_addr()?;
    tracing::info!(%internal_addr, "internal HTTP listening (metrics, readiness)");
    let router = httpkit::ops_router(readiness.clone()).fallback(httpkit::no_such_route);
    tokio::spawn(httpkit::serve(listener, router, shutdown.clone()));
    Ok(readiness.served_elsewhere())
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
    args.tls.apply()?;
    game_server::register_metrics();
    fanout_gateway::register_metrics();
    aggregator::register_metrics();
    api::register_metrics();
    let embedded = true;
    let (log, ticks) = connect::match_log(&args.nats, embedded).await?;
    let boards = connect::leaderboards(&args.redis, embedded).await?;
    let store = connect::history(&args.history).await?;
    let history: Arc<dyn backends::History> = store.clone();
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
    let signer = connect::signer(&args.secret, embedded).await?;
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
        args.http.cors(),
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
    // With Redis the gateways may be many processes: count every gateway's viewers.
    let viewers: api::ViewerCounts = match connect::fleet_viewers(&args.redis, &shutdown).await? {
        Some(fleet) => fleet,
        None => {
            let gw = gateway.clone();
            Arc::new(move |id: &str| gw.viewers(id))
        }
    };
    let api = connect::api_state(&backends, &signer, Some(viewers), args.http.cors())
        .with_matchmaker(Arc::new(game_server::LocalMatchmaker(game)));
    // One set of partner keys for the API and the streams of this process.
    connect::keep_partners_fresh(store, api.partners(), shutdown.clone()).await;
    let gateway = gateway.with_partners(api.partners());
    let readiness = connect::readiness(&backends, Some(&args.redis)).await?;
    let readiness = operate(&args.http, readiness, Some(gateway.clone()), &shutdown)?;
    let router: Router = httpkit::ops_router(readiness)
        .merge(gateway.router())
        .merge(api::router(api))
        .fallback(httpkit::no_such_route);
    let result = httpkit::serve_with(
        http,
        args.http.cors().apply(router),
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
    args.tls.apply()?;
    game_server::register_metrics();
    let (log, ticks) = connect::match_log(&args.nats, false).await?;
    let http = listen(&args.http, "game-server")?;
    let signer = connect::signer(&args.secret, false).await?;
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
    let readiness = connect::readiness(&backends, Some(&args.redis)).await?;
    let readiness = operate(&args.http, readiness, None, &shutdown)?;
    // A game server's HTTP port: its matchmaker (for APIs in other processes) and ops.
    let router = httpkit::ops_router(readiness).merge(httpkit::matchmaking_router(
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
    args.tls.apply()?;
    fanout_gateway::register_metrics();
    let (log, ticks) = connect::match_log(&args.nats, false).await?;
    let http = listen(&args.http, "gateway")?;
    let http_addr = http.local_addr()?;
    let signer = connect::signer(&args.secret, false).await?;
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
        args.http.cors(),
        &backends,
        &signer,
        &shutdown,
    )
    .await?;
    let gw = match &args.partners.database_url {
        Some(url) => {
            let store = backends::SqlHistory::connect(url)
                .await
                .context("opening the partner keys' store (DATABASE_URL)")?;
            let partners = httpkit::PartnerDirectory::default();
            connect::keep_partners_fresh(Arc::new(store), partners.clone(), shutdown.clone()).await;
            gw.with_partners(partners)
        }
        None => {
            tracing::info!("no DATABASE_URL: this gateway accepts no partner keys");
            gw
        }
    };
    gw.announce(
        args.viewers
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{http_addr}")),
    );
    let readiness = connect::readiness(&backends, Some(&args.redis)).await?;
    let readiness = operate(&args.http, readiness, Some(gw.clone()), &shutdown)?;
    let result = gw.run(http, readiness).await;
    shutdown.cancel();
    result.context("HTTP server")
}

async fn aggregator(args: AggregatorArgs, shutdown: Shutdown) -> anyhow::Result<()> {
    args.tls.apply()?;
    aggregator::register_metrics();
    let (log, ticks) = connect::match_log(&args.nats, false).await?;
    let boards = connect::leaderboards(&args.redis, false).await?;
    let history: Arc<dyn backends::History> = connect::history(&args.history).await?;
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
    let backends = Backends {
        log,
        ticks,
        boards: Some(boards),
        history: Some(history),
    };
    let readiness = connect::readiness(&backends, None).await?;
    let readiness = operate(&args.http, readiness, None, &shutdown)?;
    let Backends {
        log,
        ticks,
        boards,
        history,
    } = backends;
    let (boards, history) = (boards.expect("opened"), history.expect("opened"));
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
        httpkit::ops_router(readiness).fallback(httpkit::no_such_route),
        shutdown.clone(),
        limits,
    )
    .await;
    shutdown.cancel();
    drain(tasks).await;
    result.context("HTTP server")
}

async fn snapshot_api(args: ApiArgs, shutdown: Shutdown) -> anyhow::Result<()> {
    args.tls.apply()?;
    api::register_metrics();
    let (log, ticks) = connect::match_log(&args.nats, false).await?;
    let boards = connect::leaderboards(&args.redis, false).await?;
    let store = connect::history(&args.history).await?;
    let history: Arc<dyn backends::History> = store.clone();
    let http = listen(&args.http, "snapshot-api")?;
    let signer = connect::signer(&args.secret, false).await?;
    let backends = Backends {
        log,
        ticks,
        boards: Some(boards),
        history: Some(history),
    };
    // The match list's viewer counts: every gateway's, from their membership heartbeats.
    let viewers = connect::fleet_viewers(&args.redis, &shutdown).await?;
    let state = connect::api_state(&backends, &signer, viewers, args.http.cors());
    let state = match &args.matchmaker_url {
        Some(url) => state.with_matchmaker(Arc::new(api::RemoteMatchmaker::new(url))),
        None => state,
    };
    connect::keep_partners_fresh(store, state.partners(), shutdown.clone()).await;
    let limits = args
        .http
        .limits(fanout_gateway::GatewayConfig::default().stall_deadline);
    let readiness = connect::readiness(&backends, None).await?;
    let readiness = operate(&args.http, readiness, None, &shutdown)?;
    let result = api::run(state, http, shutdown.clone(), limits, readiness).await;
    shutdown.cancel();
    result.context("HTTP server")
}
