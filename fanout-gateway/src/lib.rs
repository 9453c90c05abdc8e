//! The fan-out gateway role: viewers connect to `GET /v1/matches/{id}/stream` over WebSocket
//! or Server-Sent Events and get a snapshot, then strictly consecutive versions (docs/architecture.md,
//! "Viewer protocol"). One hub per match encodes each message once; every viewer has a bounded queue.

mod boards;
mod delay;
mod hub;
pub mod limits;
mod metrics;
pub use metrics::register as register_metrics;
mod multi;
pub mod queue;
mod render_health;
mod replay;
mod stream;
mod websocket;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::Json;
use axum::Router;
use backends::{GatewayInfo, MatchLog, Membership, MemoryMembership, TickBus};
use httpkit::ApiError;
use httpkit::Shutdown;
use protocol::{StreamPosition, TokenSigner};
use tokio::sync::{mpsc, oneshot};

pub use hub::AttachError;
use hub::{Attach, Hub, HubHandle, Registry};
use queue::ViewerQueue;

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Recent frames kept per match for resuming viewers (about 25 s at 10 Hz).
    pub ring_capacity: usize,
    /// Records a hub holds back for a match's broadcast delay; when full it stops reading the
    /// log until the oldest is due (the log keeps the rest, so nothing is dropped).
    pub delay_line: usize,
    /// Viewer messages carry the log's publish time (`published_us`): a debugging aid.
    pub publish_stamps: bool,
    /// Frames queued per viewer before its backlog is replaced by a snapshot.
    pub viewer_queue: usize,
    /// A viewer whose frames wait unread this long is closed.
    pub stall_deadline: Duration,
    /// A hub with no viewers stays subscribed this long before it stops.
    pub hub_linger: Duration,
    /// Largest frame a viewer may send (viewers only ever send pings and small control text).
    pub max_inbound_frame: usize,
    pub ping_interval: Duration,
    /// The retry hint sent to clients (SSE `retry:` and WS close reasons), before jitter.
    pub retry_after_ms: u64,
    /// How long fanned-out events may wait for the next delta before the viewers are woken:
    /// events that arrive close together (and just before a delta) leave in one write, which
    /// is most of the gateway's cost per message. The wait is latency, though, for the kill
    /// feed, overlays and data partners, and more than half of a real match's messages are
    /// events. Off by default: on the recorded 50-player match with 5,000 viewers
    /// (docs/benchmarks.md) waiting saved less CPU than the run-to-run noise of this 2-core
    /// machine (a tick's events and its delta that arrive together leave in one write anyway,
    /// the hub drains what the log has ready before waking anyone) while every waited
    /// millisecond showed in the p99. Operators who pay for writes can turn it on.
    pub event_coalesce: Duration,
    /// Concurrent streams one user (token subject) may hold on this gateway.
    pub max_streams_per_user: usize,
    /// Concurrent streams from one IP address on this gateway.
    pub max_streams_per_address: usize,
    /// Concurrent replays (`?from=start`), each with a log follower of its own.
    pub max_replays: usize,
    /// Matches one multi-match stream may follow.
    pub max_matches_per_stream: usize,
    /// Gateways that own each match (clients prefer the first; any gateway serves any match).
    pub owners: usize,
    /// Stream handshakes one address may make in a burst, and per second after it.
    pub handshake_burst: u32,
    pub handshakes_per_sec: u32,
    /// Limits on every connection to this gateway (head deadline, write stall, count).
    pub connections: httpkit::ConnectionLimits,
    /// Origins allowed to open streams from their pages (CORS and the WebSocket `Origin`).
    pub cors: httpkit::CorsOrigins,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            ring_capacity: 256,
            delay_line: 16_384,
            publish_stamps: false,
            viewer_queue: 64,
            stall_deadline: Duration::from_secs(30),
            hub_linger: Duration::from_secs(10),
            max_inbound_frame: 4096,
            ping_interval: Duration::from_secs(20),
            retry_after_ms: 1000,
            event_coalesce: Duration::ZERO,
            owners: 2,
            max_replays: 16,
            max_matches_per_stream: 32,
            max_streams_per_user: 8,
            max_streams_per_address: 1000,
            handshake_burst: 200,
            handshakes_per_sec: 50,
            connections: httpkit::ConnectionLimits::default(),
            cors: httpkit::CorsOrigins::default(),
        }
    }
}

#[derive(Clone)]
pub struct Gateway {
    pub(crate) config: Arc<GatewayConfig>,
    pub(crate) log: Arc<dyn MatchLog>,
    pub(crate) ticks: Arc<dyn TickBus>,
    pub(crate) signer: TokenSigner,
    registry: Registry,
    pub(crate) boards: Arc<boards::BoardFeeds>,
    pub(crate) shutdown: Shutdown,
    pub(crate) caps: Arc<limits::ConnectionCaps>,
    pub(crate) handshakes: Arc<httpkit::RateLimiter>,
    membership: Arc<dyn Membership>,
    me: Arc<Mutex<Option<GatewayInfo>>>,
    pub(crate) shared: Option<Arc<limits::SharedPlaces>>,
    /// Set when the gateway drains: since when, and over how long its viewers are moved off.
    pub(crate) draining: Arc<Mutex<Option<(std::time::Instant, Duration)>>>,
    pub(crate) partners: httpkit::PartnerDirectory,
    /// Replay slots (`?from=start`), `max_replays` of them.
    pub(crate) replays: Arc<tokio::sync::Semaphore>,
    pub(crate) reports: Arc<render_health::ReportLimits>,
}

impl Gateway {
    pub fn new(
        config: GatewayConfig,
        log: Arc<dyn MatchLog>,
        ticks: Arc<dyn TickBus>,
        signer: TokenSigner,
        shutdown: Shutdown,
    ) -> Gateway {
        let caps = limits::ConnectionCaps::new(
            config.max_streams_per_user,
            config.max_streams_per_address,
        );
        // At most 100,000 addresses tracked: beyond, the table starts over (see RateLimiter).
        let handshakes = Arc::new(httpkit::RateLimiter::new(
            config.handshake_burst,
            Duration::from_secs_f64(1.0 / f64::from(config.handshakes_per_sec.max(1))),
            100_000,
        ));
        let replays = Arc::new(tokio::sync::Semaphore::new(config.max_replays));
        Gateway {
            caps,
            handshakes,
            membership: Arc::new(MemoryMembership::default()),
            me: Arc::default(),
            shared: None,
            config: Arc::new(config),
            log,
            ticks,
            signer,
            registry: Arc::new(Mutex::new(HashMap::new())),
            draining: Arc::default(),
            partners: httpkit::PartnerDirectory::default(),
            replays,
            reports: Arc::default(),
            boards: Arc::new(boards::BoardFeeds::default()),
            shutdown,
        }
    }

    /// Uses `membership` to find the other gateways (Redis in production).
    pub fn with_membership(mut self, membership: Arc<dyn Membership>) -> Gateway {
        self.membership = membership;
        self
    }

    /// Counts stream caps and the handshake rate across every gateway sharing `leases`
    /// (Redis in production), on top of this gateway's own counts.
    pub fn with_shared_caps(mut self, leases: backends::RedisStreamLeases) -> Gateway {
        self.shared = Some(limits::SharedPlaces::start(
            leases,
            Duration::from_secs(30),
            self.shutdown.clone(),
        ));
        self
    }

    /// Joins the membership as reachable at `url` (heartbeat every second, lapsing 3 s after
    /// the last one), and leaves it at shutdown.
    pub fn announce(&self, url: String) {
        let mut me = GatewayInfo {
            id: format!("gw-{:08x}", rand::random::<u32>()),
            url,
            viewers: Default::default(),
        };
        *self.me.lock().unwrap() = Some(me.clone());
        let (membership, shutdown) = (self.membership.clone(), self.shutdown.clone());
        let registry = self.registry.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = every.tick() => {
                        me.viewers = viewers_by_match(&registry);
                        if let Err(e) = membership.heartbeat(&me, Duration::from_secs(3)).await {
                            tracing::warn!(error = %e, "gateway membership heartbeat failed");
                        }
                    }
                    _ = shutdown.cancelled() => {
                        let _ = membership.leave(&me.id).await;
                        return;
                    }
                }
            }
        });
    }

    /// The gateways that own a match (rendezvous hashing over the live members), preferred
    /// first; this gateway alone when membership is unknown.
    pub async fn owners(&self, match_id: &str) -> Vec<String> {
        let members = self.membership.members().await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "gateway membership unavailable");
            Vec::new()
        });
        let ids: Vec<String> = members.iter().map(|m| m.id.clone()).collect();
        let owners: Vec<String> = protocol::placement::owners(match_id, &ids, self.config.owners)
            .into_iter()
            .filter_map(|id| members.iter().find(|m| &m.id == id).map(|m| m.url.clone()))
            .collect();
        if owners.is_empty() {
            return self
                .me
                .lock()
                .unwrap()
                .iter()
                .map(|m| m.url.clone())
                .collect();
        }
        owners
    }

    /// The gateway's routes (the stream endpoint); ops routes are added by the caller.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/matches/{id}/gateway", get(where_to_connect))
            .route("/v1/matches/{id}/stream", get(stream::handle))
            .route("/v1/streams", get(multi::handle))
            .route("/v1/leaderboards/{board}/stream", get(boards::handle))
            .route("/v1/render-health", post(render_health::report))
            .with_state(self.clone())
    }

    /// Serves the gateway alone (its routes plus the ops routes answering for `readiness`) on
    /// `listener` until `shutdown`.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        readiness: httpkit::Readiness,
    ) -> std::io::Result<()> {
        let shutdown = self.shutdown.clone();
        let limits = self.config.connections.clone();
        let router = self.config.cors.apply(
            self.router()
                .merge(httpkit::ops_router(readiness))
                .fallback(httpkit::no_such_route),
        );
        httpkit::serve_with(listener, router, shutdown, limits).await
    }

    /// The signer checking viewers' tokens (shared with the API in `all`).
    pub fn signer(&self) -> TokenSigner {
        self.signer.clone()
    }

    /// Starts moving the viewers off, spread over `period`: each hub closes its viewers a few
    /// at a time (1012 with a retry hint), so the audience comes back (to other gateways) spread
    /// out rather than all in the same second. New viewers are still served meanwhile (a
    /// load balancer stops sending them once readiness says draining).
    pub fn drain(&self, period: Duration) {
        metrics::DRAINING.set(1);
        *self.draining.lock().unwrap() = Some((std::time::Instant::now(), period));
    }

    /// Viewers connected to this gateway, all matches.
    pub fn total_viewers(&self) -> u64 {
        self.registry
            .lock()
            .unwrap()
            .values()
            .map(|h| h.viewers.load(Ordering::Relaxed) as u64)
            .sum()
    }

    /// Viewers of `match_id` connected to this gateway (at every delay).
    pub fn viewers(&self, match_id: &str) -> u64 {
        self.registry
            .lock()
            .unwrap()
            .iter()
            .filter(|(key, _)| hub_match(key) == match_id)
            .map(|(_, h)| h.viewers.load(Ordering::Relaxed) as u64)
            .sum()
    }

    /// The partner keys this gateway accepts (the role keeps it fresh from the store).
    pub fn with_partners(mut self, partners: httpkit::PartnerDirectory) -> Gateway {
        self.partners = partners;
        self
    }

    /// Joins the match's hub (starting it if needed) and returns the viewer's queue, already
    /// holding what the viewer must see first.
    #[cfg(test)]
    pub(crate) async fn attach(
        &self,
        match_id: &str,
        since: Option<StreamPosition>,
        wire: queue::Wire,
    ) -> Result<Arc<ViewerQueue>, AttachError> {
        self.attach_at(match_id, None, since, wire).await
    }

    /// [`Gateway::attach`] at a delay of the viewer's own (a partner's): `None` is the match's
    /// public delay. Each distinct delay in use is one hub with one delay line, shared by every
    /// viewer at that delay.
    pub(crate) async fn attach_at(
        &self,
        match_id: &str,
        delay_ms: Option<u64>,
        since: Option<StreamPosition>,
        wire: queue::Wire,
    ) -> Result<Arc<ViewerQueue>, AttachError> {
        if !protocol::valid_match_id(match_id) {
            return Err(AttachError::UnknownMatch);
        }
        // A hub may be leaving just as we send to it; then start a new one and try again.
        for _ in 0..3 {
            let handle = self.hub(match_id, delay_ms);
            let (reply, answer) = oneshot::channel();
            if handle
                .attach
                .send(Attach { since, wire, reply })
                .await
                .is_err()
            {
                continue;
            }
            match answer.await {
                Ok(result) => return result,
                Err(_) => continue,
            }
        }
        Err(AttachError::Unavailable)
    }

    fn hub(&self, match_id: &str, delay_ms: Option<u64>) -> HubHandle {
        let key = hub_key(match_id, delay_ms);
        let mut registry = self.registry.lock().unwrap();
        if let Some(h) = registry.get(&key) {
            if !h.attach.is_closed() {
                return h.clone();
            }
        }
        let (tx, rx) = mpsc::channel(1024);
        let handle = HubHandle {
            attach: tx,
            viewers: Arc::new(AtomicUsize::new(0)),
        };
        registry.insert(key.clone(), handle.clone());
        let hub = Hub {
            key,
            delay_override_ms: delay_ms,
            draining: self.draining.clone(),
            match_id: match_id.to_string(),
            config: self.config.clone(),
            log: self.log.clone(),
            registry: self.registry.clone(),
            attach_rx: rx,
            viewer_count: handle.viewers.clone(),
            shutdown: self.shutdown.clone(),
        };
        tokio::spawn(hub.run());
        handle
    }
}

/// A hub's registry key: the match id for the public line, `id@DELAY` for a partner's delay.
fn hub_key(match_id: &str, delay_ms: Option<u64>) -> String {
    match delay_ms {
        None => match_id.to_string(),
        Some(d) => format!("{match_id}@{d}"),
    }
}

/// This gateway's viewers by match (every delay summed), matches without viewers left out.
fn viewers_by_match(registry: &Registry) -> std::collections::BTreeMap<String, u64> {
    let mut counts = std::collections::BTreeMap::new();
    for (key, hub) in registry.lock().unwrap().iter() {
        let n = hub.viewers.load(Ordering::Relaxed) as u64;
        if n > 0 {
            *counts.entry(hub_match(key).to_string()).or_default() += n;
        }
    }
    counts
}

/// The match a registry key is for.
fn hub_match(key: &str) -> &str {
    key.split('@').next().unwrap_or(key)
}

/// `GET /v1/matches/{id}/gateway`: where a viewer of this match should connect. Owners are a
/// preference: every gateway serves every match, so a client that cannot reach the first tries
/// the next (or any gateway) and resumes.
#[utoipa::path(get, path = "/v1/matches/{id}/gateway", tag = "streams",
    params(("id" = String, Path, description = "The match id")),
    responses(
        (status = 200, description = "The gateways that own the match, preferred first", body = GatewayChoice),
        (status = 400, description = "Not a match id", body = httpkit::openapi::ErrorBody),
        (status = 503, description = "No gateway is announced yet", body = httpkit::openapi::ErrorBody),
    ))]
async fn where_to_connect(
    State(gw): State<Gateway>,
    Path(match_id): Path<String>,
) -> Result<Json<GatewayChoice>, ApiError> {
    if !protocol::valid_match_id(&match_id) {
        return Err(ApiError::invalid("id", "not a match id"));
    }
    let gateways = gw.owners(&match_id).await;
    if gateways.is_empty() {
        return Err(ApiError::unavailable("no gateway is announced yet"));
    }
    Ok(Json(GatewayChoice {
        match_id,
        url: gateways[0].clone(),
        gateways,
    }))
}

/// Where a viewer of a match should connect.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct GatewayChoice {
    #[serde(rename = "match")]
    pub match_id: String,
    /// The preferred gateway's base URL.
    pub url: String,
    /// Every owner, preferred first: a client that cannot reach one tries the next.
    pub gateways: Vec<String>,
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        where_to_connect,
        stream::handle,
        multi::handle,
        boards::handle,
        render_health::report
    ),
    components(schemas(GatewayChoice, render_health::RenderReport))
)]
struct StreamsDoc;

/// The document of the gateway's routes (merged into `/openapi.json` by the API).
pub fn openapi() -> utoipa::openapi::OpenApi {
    <StreamsDoc as utoipa::OpenApi>::openapi()
}
