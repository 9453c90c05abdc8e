//! The snapshot-api role: cold loads and reads over HTTP (DESIGN.md section 5). Every read of
//! match state goes through a short-lived moka cache whose misses are single-flight, so a
//! reconnect storm of N viewers costs one backend read per match per TTL.

mod metrics;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use backends::{load_feed, BoardError, BoardPage, History, Leaderboards, LogError, MatchLog};
use bytes::Bytes;
use httpkit::ApiError;
use moka::future::Cache;
use protocol::{Claims, MatchStatus, SpectatorState, TokenSigner};
use serde::Serialize;

pub use httpkit::RateLimiter;

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
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            guest_token_ttl: Duration::from_secs(24 * 3600),
            snapshot_ttl: Duration::from_secs(1),
            guest_burst: 30,
            guest_refill: Duration::from_secs(2),
        }
    }
}

/// A match state as served: the JSON body, encoded once per cache fill, and its position.
#[derive(Debug)]
struct Snapshot {
    etag: HeaderValue,
    body: Bytes,
}

#[derive(Clone)]
pub struct ApiState {
    inner: Arc<Inner>,
}

struct Inner {
    config: ApiConfig,
    log: Arc<dyn MatchLog>,
    boards: Arc<dyn Leaderboards>,
    history: Arc<dyn History>,
    signer: TokenSigner,
    snapshots: Cache<String, Arc<Snapshot>>,
    match_list: Cache<(), Arc<Vec<MatchListing>>>,
    /// Board reads, shared by concurrent requests for a quarter of a second.
    board_reads: Cache<String, Arc<Option<BoardPage>>>,
    /// The last good answer per board read and when it was fetched, served (marked stale)
    /// while the leaderboard store is unavailable.
    last_good: Cache<String, (Arc<Option<BoardPage>>, u64)>,
    /// Player stats and match results, encoded, for a second (errors are not cached).
    history_reads: Cache<String, Bytes>,
    viewers: Option<ViewerCounts>,
    guests: RateLimiter,
    matchmaker: std::sync::OnceLock<Arc<dyn httpkit::Matchmaking>>,
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
                board_reads,
                last_good,
                history_reads,
                viewers,
                guests,
                matchmaker: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Serves `POST /v1/matchmaking/join` through this matchmaker (set once, before `router`).
    pub fn with_matchmaker(self, mm: Arc<dyn httpkit::Matchmaking>) -> ApiState {
        let _ = self.inner.matchmaker.set(mm);
        self
    }
}

/// A matchmaker in another process: forwards the player's request to a game server's HTTP
/// port (`--matchmaker-url`), which answers with the same contract.
pub struct RemoteMatchmaker {
    url: String,
    http: reqwest::Client,
}

impl RemoteMatchmaker {
    pub fn new(base_url: &str) -> RemoteMatchmaker {
        RemoteMatchmaker {
            url: format!("{}/v1/matchmaking/join", base_url.trim_end_matches('/')),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("HTTP client"),
        }
    }
}

#[async_trait::async_trait]
impl httpkit::Matchmaking for RemoteMatchmaker {
    async fn join(
        &self,
        bearer: &str,
        _player: &protocol::Claims,
        region: &str,
        skill: u32,
    ) -> Result<httpkit::Assignment, ApiError> {
        let res = self
            .http
            .post(&self.url)
            .bearer_auth(bearer)
            .json(&serde_json::json!({ "region": region, "skill": skill }))
            .send()
            .await
            .map_err(|e| ApiError::unavailable(format!("matchmaker unreachable: {e}")))?;
        let status = res.status();
        let body: serde_json::Value = res
            .json()
            .await
            .map_err(|e| ApiError::unavailable(format!("matchmaker answer: {e}")))?;
        if status.is_success() {
            return serde_json::from_value(body)
                .map_err(|e| ApiError::unavailable(format!("matchmaker answer: {e}")));
        }
        // The matchmaker's own error (400 naming a field, 503) passes through.
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or("matchmaking failed");
        let code = match body["error"]["code"].as_str() {
            Some("invalid_request") => "invalid_request",
            Some("unauthorized") => "unauthorized",
            _ => "unavailable",
        };
        Err(ApiError::new(
            axum::http::StatusCode::from_u16(status.as_u16())
                .unwrap_or(axum::http::StatusCode::BAD_GATEWAY),
            code,
            message,
        ))
    }
}

/// Until a matchmaker is configured, matchmaking answers 503 with the reason.
struct NoMatchmaker;

#[async_trait::async_trait]
impl httpkit::Matchmaking for NoMatchmaker {
    async fn join(
        &self,
        _: &str,
        _: &protocol::Claims,
        _: &str,
        _: u32,
    ) -> Result<httpkit::Assignment, ApiError> {
        Err(ApiError::unavailable(
            "matchmaking is not configured on this API (set GRANDSTAND_MATCHMAKER_URL)",
        ))
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
        .route("/", get(dashboard_index))
        .route("/assets/{*file}", get(dashboard_asset))
        .route("/openapi.json", get(openapi))
        .route("/v1/auth/guest", post(guest))
        .route("/v1/matches", get(list_matches))
        .route("/v1/matches/{id}/snapshot", get(snapshot))
        .route("/v1/matches/{id}/results", get(results))
        .route("/v1/leaderboards/{board}", get(leaderboard))
        .route("/v1/leaderboards/{board}/around/{player}", get(around))
        .route("/v1/players/{id}", get(player))
        .with_state(state)
        .merge(matchmaking)
}

/// Serves the API alone (plus `/healthz` and `/metrics`) on `listener` until `shutdown`.
pub async fn run(
    state: ApiState,
    listener: tokio::net::TcpListener,
    shutdown: httpkit::Shutdown,
) -> std::io::Result<()> {
    let router = router(state)
        .merge(httpkit::ops_router())
        .fallback(httpkit::no_such_route);
    httpkit::serve(listener, router, shutdown).await
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}

mod dashboard {
    include!(concat!(env!("OUT_DIR"), "/dashboard.rs"));
}

fn dashboard_file(path: &str) -> Option<&'static [u8]> {
    dashboard::DASHBOARD
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, body)| *body)
}

/// The dashboard page. Never cached for long: it names the current hashed assets.
async fn dashboard_index() -> Response {
    let Some(body) = dashboard_file("/index.html") else {
        // A build without the dashboard assets (they are committed, so only a hand-made tree).
        return Html(include_str!("../../web-dashboard/placeholder.html")).into_response();
    };
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Hashed assets: their names change with their content, so browsers may keep them forever.
async fn dashboard_asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    let body = dashboard_file(&format!("/assets/{file}"))
        .ok_or_else(|| ApiError::not_found("no such asset"))?;
    let content_type = match file.rsplit('.').next() {
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("woff2") => "font/woff2",
        _ => "application/octet-stream",
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        body,
    )
        .into_response())
}

#[derive(Serialize)]
struct GuestResponse {
    token: String,
    player: String,
    name: String,
    expires_at: u64,
}

async fn guest(
    State(s): State<ApiState>,
    request: axum::extract::Request,
) -> Result<Json<GuestResponse>, ApiError> {
    // Absent when the router is driven without a socket (tests with `oneshot`).
    let ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.ip());
    if let Some(ip) = ip {
        if !s.inner.guests.allow(ip) {
            metrics::GUESTS_LIMITED.inc();
            return Err(ApiError::too_many(
                "too many guest sign-ins from this address; slow down",
            ));
        }
    }
    let suffix: u32 = rand::random();
    let player = format!("g-{suffix:08x}");
    let exp = httpkit::now_secs() + s.inner.config.guest_token_ttl.as_secs();
    let name = format!("Guest-{:04X}", suffix & 0xffff);
    let token = s.inner.signer.sign(&Claims {
        sub: player.clone(),
        name: name.clone(),
        exp,
    });
    Ok(Json(GuestResponse {
        token,
        player,
        name,
        expires_at: exp,
    }))
}

#[derive(Debug, Clone, Serialize)]
struct ScoreLine {
    player: String,
    name: String,
    score: u32,
}

#[derive(Debug, Clone, Serialize)]
struct MatchListing {
    id: String,
    region: String,
    status: MatchStatus,
    players: usize,
    viewers: u64,
    epoch: u64,
    version: u64,
    /// The top scores, as of the latest keyframe (a few seconds old at most); empty for a
    /// match broadcast with a delay.
    top: Vec<ScoreLine>,
    #[serde(skip_serializing_if = "is_zero")]
    broadcast_delay_ms: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn log_error(e: LogError) -> ApiError {
    match e {
        LogError::UnknownMatch => ApiError::not_found("no such match"),
        other => {
            tracing::warn!(error = %other, "match log read failed");
            ApiError::unavailable("match log unavailable; retry")
        }
    }
}

async fn load_listings(log: &dyn MatchLog) -> Result<Vec<MatchListing>, ApiError> {
    let ids = log.match_ids().await.map_err(log_error)?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let Ok(kf) = log.latest_keyframe(&id).await else {
            continue;
        };
        let Ok(state) = serde_json::from_slice::<SpectatorState>(&kf.body) else {
            continue;
        };
        // A delayed match's live scores would give its players away: list it without them.
        let delayed = state.broadcast_delay_ms > 0;
        let mut top: Vec<ScoreLine> = state
            .players
            .iter()
            .filter(|_| !delayed)
            .map(|(p, v)| ScoreLine {
                player: p.clone(),
                name: v.name.clone(),
                score: v.score,
            })
            .collect();
        top.sort_by(|a, b| b.score.cmp(&a.score).then_with(|| a.player.cmp(&b.player)));
        top.truncate(5);
        out.push(MatchListing {
            id,
            region: state.region.clone(),
            status: state.status,
            players: state.players.len(),
            viewers: 0,
            epoch: kf.epoch,
            version: kf.version,
            top,
            broadcast_delay_ms: state.broadcast_delay_ms,
        });
    }
    // Live matches first, the most recent first within each status.
    out.sort_by(|a, b| {
        (a.status != MatchStatus::Live)
            .cmp(&(b.status != MatchStatus::Live))
            .then(b.epoch.cmp(&a.epoch))
    });
    Ok(out)
}

async fn list_matches(State(s): State<ApiState>) -> Result<Response, ApiError> {
    let inner = s.inner.clone();
    let listings = s
        .inner
        .match_list
        .try_get_with(
            (),
            async move { load_listings(&*inner.log).await.map(Arc::new) },
        )
        .await
        .map_err(|e| (*e).clone())?;
    let mut listings = (*listings).clone();
    // Ended matches stay listed for their retention; show the most recent few.
    let mut ended = 0;
    listings.retain(|m| {
        m.status == MatchStatus::Live || {
            ended += 1;
            ended <= 20
        }
    });
    if let Some(viewers) = &s.inner.viewers {
        for m in &mut listings {
            m.viewers = viewers(&m.id);
        }
    }
    let mut res = Json(serde_json::json!({ "matches": listings })).into_response();
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=1"),
    );
    Ok(res)
}

async fn load_snapshot(log: &dyn MatchLog, match_id: &str) -> Result<Arc<Snapshot>, ApiError> {
    metrics::SNAPSHOT_LOADS.inc();
    let feed = load_feed(log, match_id, 1).await.map_err(log_error)?;
    let position = feed
        .position()
        .ok_or_else(|| ApiError::not_found("no such match"))?;
    // The cold load reads the live log; a match broadcast with a delay must come from a
    // gateway, which holds it back. Saying so beats serving the live state.
    let delay = feed.state().broadcast_delay_ms;
    if delay > 0 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "delayed_broadcast",
            format!(
                "this match is broadcast {} s behind the game; open its stream without `since` (the first message is a delayed snapshot)",
                delay as f64 / 1000.0
            ),
        ));
    }
    let body = serde_json::to_vec(&serde_json::json!({
        "match": match_id,
        "epoch": position.epoch,
        "version": position.version,
        "state": feed.state(),
    }))
    .map_err(ApiError::internal)?;
    Ok(Arc::new(Snapshot {
        etag: HeaderValue::from_str(&format!("\"{position}\"")).map_err(ApiError::internal)?,
        body: body.into(),
    }))
}

async fn snapshot(
    State(s): State<ApiState>,
    Path(match_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !protocol::valid_match_id(&match_id) {
        return Err(ApiError::not_found("no such match"));
    }
    let inner = s.inner.clone();
    let key = match_id.clone();
    let snap = s
        .inner
        .snapshots
        .try_get_with(
            key,
            async move { load_snapshot(&*inner.log, &match_id).await },
        )
        .await
        .map_err(|e| (*e).clone())?;
    let max_age = s.inner.config.snapshot_ttl.as_secs().max(1);
    let cache_control = HeaderValue::from_str(&format!(
        "public, max-age={max_age}, stale-while-revalidate=5"
    ))
    .expect("ascii");
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim() == snap.etag || t.trim() == "*")
        });
    let mut res = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(header::CONTENT_TYPE, "application/json")],
            snap.body.clone(),
        )
            .into_response()
    };
    res.headers_mut().insert(header::ETAG, snap.etag.clone());
    res.headers_mut()
        .insert(header::CACHE_CONTROL, cache_control);
    Ok(res)
}

fn history_error(e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "history read failed");
    ApiError::unavailable("history unavailable; retry")
}

async fn results(
    State(s): State<ApiState>,
    Path(match_id): Path<String>,
) -> Result<Response, ApiError> {
    let inner = s.inner.clone();
    let key = format!("results:{match_id}");
    let body = s
        .inner
        .history_reads
        .try_get_with(key, async move {
            let summary = inner
                .history
                .match_summary(&match_id)
                .await
                .map_err(history_error)?;
            let summary = summary
                .ok_or_else(|| ApiError::not_found(format!("no recorded match {match_id:?}")))?;
            serde_json::to_vec(&summary)
                .map(Bytes::from)
                .map_err(ApiError::internal)
        })
        .await
        .map_err(|e| (*e).clone())?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn player(State(s): State<ApiState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let inner = s.inner.clone();
    let key = format!("player:{id}");
    let body = s
        .inner
        .history_reads
        .try_get_with(key, async move {
            let stats = inner
                .history
                .player_stats(&id)
                .await
                .map_err(history_error)?;
            let stats = stats.ok_or_else(|| ApiError::not_found(format!("no player {id:?}")))?;
            serde_json::to_vec(&stats)
                .map(Bytes::from)
                .map_err(ApiError::internal)
        })
        .await
        .map_err(|e| (*e).clone())?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

pub const MAX_LIMIT: u64 = 1000;
pub const MAX_OFFSET: u64 = 1_000_000;
pub const MAX_RADIUS: u64 = 100;

/// Parses an optional unsigned query parameter within `0..=max`, naming the field on error.
fn bounded(
    q: &HashMap<String, String>,
    field: &str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ApiError> {
    let Some(raw) = q.get(field) else {
        return Ok(default);
    };
    let v: u64 = raw.parse().map_err(|_| {
        ApiError::invalid(
            field,
            format!("expected a whole number from {min} to {max}"),
        )
    })?;
    if v < min || v > max {
        return Err(ApiError::invalid(
            field,
            format!("must be from {min} to {max}"),
        ));
    }
    Ok(v)
}

fn board_error(e: &BoardError) -> ApiError {
    tracing::warn!(error = %e, "leaderboard read failed");
    ApiError::unavailable("leaderboards unavailable; retry")
}

/// The aggregator counts as behind when it has not reported for this long...
const HEARTBEAT_STALE_MS: u64 = 5_000;
/// ...or has more than this many events left to apply.
const BACKLOG_STALE: u64 = 1_000;

/// Reads a board through the short cache; when the store is down, falls back to the last
/// good answer and says since when it is stale.
async fn read_board<F>(
    s: &ApiState,
    key: String,
    fetch: F,
) -> Result<(Arc<Option<BoardPage>>, Option<u64>), ApiError>
where
    F: std::future::Future<Output = Result<Option<BoardPage>, BoardError>>,
{
    let fetched = s
        .inner
        .board_reads
        .try_get_with(key.clone(), async move { fetch.await.map(Arc::new) })
        .await;
    match fetched {
        Ok(page) => {
            s.inner
                .last_good
                .insert(key, (page.clone(), protocol::now_ms()))
                .await;
            Ok((page, None))
        }
        Err(e) => match s.inner.last_good.get(&key).await {
            Some((page, fetched_ms)) => {
                metrics::STALE_SERVED.inc();
                tracing::warn!(error = %e, "leaderboard store unavailable; serving the last known board");
                Ok((page, Some(fetched_ms)))
            }
            None => Err(board_error(&e)),
        },
    }
}

/// A board as clients see it, with how fresh it is: `updated_at` (last applied event),
/// `age_ms`, and `stale` with the reason when the aggregator is behind or silent, or when the
/// store is down and the last known value is served.
fn board_response(board: &str, page: &BoardPage, store_down_since: Option<u64>) -> Response {
    let now = protocol::now_ms();
    let reason = if let Some(since) = store_down_since {
        Some(format!(
            "leaderboard store unavailable; last known value from {} ms ago",
            now.saturating_sub(since)
        ))
    } else if page
        .aggregator_heartbeat_ms
        .is_none_or(|h| now.saturating_sub(h) > HEARTBEAT_STALE_MS)
    {
        Some("aggregator not reporting".to_string())
    } else if page.aggregator_backlog.unwrap_or(0) > BACKLOG_STALE {
        Some(format!(
            "aggregator is {} events behind",
            page.aggregator_backlog.unwrap_or(0)
        ))
    } else {
        None
    };
    Json(serde_json::json!({
        "board": board,
        "updated_at": page.updated_at_ms,
        "age_ms": page.updated_at_ms.map(|u| now.saturating_sub(u)),
        "stale": reason.is_some(),
        "stale_reason": reason,
        "behind_events": page.aggregator_backlog,
        "total": page.total,
        "entries": page.entries,
    }))
    .into_response()
}

/// The board a request names: `daily` and `weekly` mean the current period. Returns the name
/// and whether the board exists even while empty (global and the current periods).
pub fn resolve_board(board: &str, now_ms: u64) -> Result<(String, bool), ApiError> {
    backends::leaderboard::resolve_board(board, now_ms).ok_or_else(|| {
        ApiError::not_found(format!(
            "no leaderboard {board:?}; boards are global, daily, weekly, daily:<YYYY-MM-DD>, \
             weekly:<YYYY-Www>, match:<id>, region:<region>"
        ))
    })
}

async fn leaderboard(
    State(s): State<ApiState>,
    Path(board): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let limit = bounded(&q, "limit", 100, 1, MAX_LIMIT)?;
    let offset = bounded(&q, "offset", 0, 0, MAX_OFFSET)?;
    let (board, standing) = resolve_board(&board, protocol::now_ms())?;
    let key = format!("top:{board}:{offset}:{limit}");
    let boards = s.inner.boards.clone();
    let name = board.clone();
    let (page, down) = read_board(
        &s,
        key,
        async move { boards.top(&name, offset, limit).await },
    )
    .await?;
    match (&*page, standing) {
        (Some(page), _) => Ok(board_response(&board, page, down)),
        (None, true) => Ok(board_response(&board, &BoardPage::default(), down)),
        (None, false) => Err(ApiError::not_found(format!("no leaderboard {board:?}"))),
    }
}

async fn around(
    State(s): State<ApiState>,
    Path((board, player)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let radius = bounded(&q, "radius", 10, 0, MAX_RADIUS)?;
    let (board, _) = resolve_board(&board, protocol::now_ms())?;
    let key = format!("around:{board}:{player}:{radius}");
    let (boards, name, who) = (s.inner.boards.clone(), board.clone(), player.clone());
    let (page, down) = read_board(
        &s,
        key,
        async move { boards.around(&name, &who, radius).await },
    )
    .await?;
    match &*page {
        Some(page) => Ok(board_response(&board, page, down)),
        None => Err(ApiError::not_found(format!(
            "{player:?} is not on leaderboard {board:?}"
        ))),
    }
}
