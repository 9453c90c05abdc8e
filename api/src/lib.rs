//! The public HTTP API (the `snapshot-api` role): cold loads of match state, leaderboards,
//! players and match results, guest tokens, matchmaking, the embedded dashboard and the
//! OpenAPI document (docs/architecture.md, "HTTP API"). Every read of match state goes
//! through a short-lived moka cache whose misses are single-flight, so a reconnect storm of N
//! viewers costs one backend read per match per TTL.
//!
//! Routes by resource: [`matches`], [`leaderboards`], [`players`], [`auth`]; [`dashboard`]
//! serves the page; [`matchmaker`] says where matchmaking goes.

mod audience;
mod auth;
mod dashboard;
pub mod leaderboards;
mod matches;
mod matchmaker;
mod metrics;
pub use metrics::register as register_metrics;
mod players;

use std::sync::Arc;
use std::time::Duration;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use backends::{BoardPage, History, Leaderboards, MatchLog};
use bytes::Bytes;
use moka::future::Cache;
use protocol::TokenSigner;

pub use audience::fleet_viewer_counts;
pub use httpkit::RateLimiter;
pub use leaderboards::{resolve_board, MAX_LIMIT, MAX_OFFSET, MAX_RADIUS};
pub use matchmaker::RemoteMatchmaker;

use matches::{MatchListing, Snapshot};
use matchmaker::NoMatchmaker;

/// Viewer counts per match, from the gateways this API knows about.
pub type ViewerCounts = Arc<dyn Fn(&str) -> u64 + Send + Sync>;

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub guest_token_ttl: Duration,
    /// How long a cached snapshot is served (and the `max-age` clients are told).
    pub snapshot_ttl: Duration,
    /// Guest tokens per IP: burst, then one per this interval.
    pub guest_burst: u32,
    pub guest_refill: Duration,
    /// Origins whose pages may read the API (CORS).
    pub cors: httpkit::CorsOrigins,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            guest_token_ttl: Duration::from_secs(24 * 3600),
            snapshot_ttl: Duration::from_secs(1),
            guest_burst: 30,
            guest_refill: Duration::from_secs(2),
            cors: httpkit::CorsOrigins::default(),
        }
    }
}

#[derive(Clone)]
pub struct ApiState {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: ApiConfig,
    pub(crate) log: Arc<dyn MatchLog>,
    pub(crate) boards: Arc<dyn Leaderboards>,
    pub(crate) history: Arc<dyn History>,
    pub(crate) signer: TokenSigner,
    pub(crate) snapshots: Cache<String, Arc<Snapshot>>,
    pub(crate) match_list: Cache<(), Arc<Vec<MatchListing>>>,
    /// The last listing read from the log and when (ms), served marked stale while the log
    /// does not answer (a JetStream leader election): viewers whose match ended still find
    /// the next one. One listing, replaced on every good read.
    pub(crate) last_listing: std::sync::Mutex<Option<(Arc<Vec<MatchListing>>, u64)>>,
    /// Board reads, shared by concurrent requests for a quarter of a second.
    pub(crate) board_reads: Cache<String, Arc<Option<BoardPage>>>,
    /// The last good answer per board read and when it was fetched, served (marked stale)
    /// while the leaderboard store is unavailable.
    pub(crate) last_good: Cache<String, (Arc<Option<BoardPage>>, u64)>,
    /// Player stats and match results, encoded, for a second (errors are not cached).
    pub(crate) history_reads: Cache<String, Bytes>,
    pub(crate) viewers: Option<ViewerCounts>,
    pub(crate) guests: RateLimiter,
    pub(crate) matchmaker: std::sync::OnceLock<Arc<dyn httpkit::Matchmaking>>,
    pub(crate) partners: httpkit::PartnerDirectory,
}

impl ApiState {
    pub fn new(
        config: ApiConfig,
        log: Arc<dyn MatchLog>,
        boards: Arc<dyn Leaderboards>,
        history: Arc<dyn History>,
        signer: TokenSigner,
        viewers: Option<ViewerCounts>,
    ) -> ApiState {
        let snapshots = Cache::builder()
            .max_capacity(10_000)
            .time_to_live(config.snapshot_ttl)
            .build();
        let match_list = Cache::builder()
            .max_capacity(1)
            .time_to_live(Duration::from_secs(1))
            .build();
        let board_reads = Cache::builder()
            .max_capacity(10_000)
            .time_to_live(Duration::from_millis(250))
            .build();
        let last_good = Cache::builder()
            .max_capacity(10_000)
            .time_to_live(Duration::from_secs(600))
            .build();
        let history_reads = Cache::builder()
            .max_capacity(10_000)
            .time_to_live(Duration::from_secs(1))
            .build();
        let guests = RateLimiter::new(config.guest_burst, config.guest_refill, 100_000);
        ApiState {
            inner: Arc::new(Inner {
                config,
                log,
                boards,
                history,
                signer,
                snapshots,
                match_list,
                last_listing: std::sync::Mutex::new(None),
                board_reads,
                last_good,
                history_reads,
                viewers,
                guests,
                matchmaker: std::sync::OnceLock::new(),
                partners: httpkit::PartnerDirectory::default(),
            }),
        }
    }

    /// The partner keys this API accepts; the role keeps it fresh from the store (the
    /// all-in-one process shares it with its gateway).
    pub fn partners(&self) -> httpkit::PartnerDirectory {
        self.inner.partners.clone()
    }

    /// Serves `POST /v1/matchmaking/join` through this matchmaker (set once, before `router`).
    pub fn with_matchmaker(self, mm: Arc<dyn httpkit::Matchmaking>) -> ApiState {
        let _ = self.inner.matchmaker.set(mm);
        self
    }
}

pub fn router(state: ApiState) -> Router {
    let mm = state
        .inner
        .matchmaker
        .get()
        .cloned()
        .unwrap_or_else(|| Arc::new(NoMatchmaker));
    let matchmaking = httpkit::matchmaking_router(mm, state.inner.signer.clone());
    Router::new()
        .route("/", get(dashboard::dashboard_index))
        .route("/assets/{*file}", get(dashboard::dashboard_asset))
        .route("/overlay/match/{id}", get(dashboard::dashboard_index))
        .route("/openapi.json", get(openapi))
        .route("/v1/auth/guest", post(auth::guest))
        .route("/v1/matches", get(matches::list_matches))
        .route("/v1/matches/{id}/snapshot", get(matches::snapshot))
        .route("/v1/matches/{id}/results", get(matches::results))
        .route("/v1/leaderboards/{board}", get(leaderboards::leaderboard))
        .route(
            "/v1/leaderboards/{board}/around/{player}",
            get(leaderboards::around),
        )
        .route("/v1/players/{id}", get(players::player))
        .with_state(state)
        .merge(matchmaking)
}

/// Serves the API alone (plus the ops routes answering for `readiness`) on `listener` until
/// `shutdown`.
pub async fn run(
    state: ApiState,
    listener: tokio::net::TcpListener,
    shutdown: httpkit::Shutdown,
    limits: httpkit::ConnectionLimits,
    readiness: httpkit::Readiness,
) -> std::io::Result<()> {
    let cors = state.inner.config.cors.clone();
    let router = cors.apply(
        router(state)
            .merge(httpkit::ops_router(readiness))
            .fallback(httpkit::no_such_route),
    );
    httpkit::serve_with(listener, router, shutdown, limits).await
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Grandstand API",
        version = "1",
        description = "Cold loads, leaderboards, players, results, guest tokens and matchmaking; \
            viewer streams (WebSocket and Server-Sent Events) under /v1/matches/{id}/stream and \
            /v1/streams, whose message contract is in docs/architecture.md. Errors are \
            `{\"error\": {\"code\", \"message\"}}`."
    ),
    paths(
        auth::guest,
        matches::list_matches,
        matches::snapshot,
        matches::results,
        leaderboards::leaderboard,
        leaderboards::around,
        players::player,
        openapi,
    )
)]
struct ApiDoc;

/// The platform's public HTTP document: the API's routes, the gateway's streams and what every
/// role serves (probes, metrics, matchmaking), generated from the handlers and their types.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let mut doc = <ApiDoc as utoipa::OpenApi>::openapi();
    doc.merge(fanout_gateway::openapi());
    doc.merge(httpkit::openapi::openapi());
    doc
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object)))]
async fn openapi() -> Response {
    static DOCUMENT: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    let body = DOCUMENT.get_or_init(|| {
        openapi_document()
            .to_json()
            .expect("the document serializes")
            .into()
    });
    ([(header::CONTENT_TYPE, "application/json")], body.clone()).into_response()
}
