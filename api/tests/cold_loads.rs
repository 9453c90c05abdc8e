//! The API as a router, driven with `oneshot` over an embedded match log that counts reads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use api::{router, ApiConfig, ApiState};
use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use backends::{
    EventConsumer, LogError, LogStream, MatchLog, MemoryLeaderboards, MemoryLog, MemoryLogLimits,
    SqlHistory,
};
use bytes::Bytes;
use http_body_util::BodyExt;
use protocol::{Delta, LogKind, LogRecord, SpectatorState, TokenSigner};
use tower::ServiceExt;

/// The embedded log, counting how often a match's log is read from its keyframe.
struct CountingLog {
    inner: MemoryLog,
    follows: AtomicUsize,
    /// Set: listing the matches fails as a log in a leader election does.
    down: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl MatchLog for CountingLog {
    async fn publish(&self, record: LogRecord) -> Result<(), LogError> {
        self.inner.publish(record).await
    }
    async fn follow(&self, match_id: &str) -> Result<LogStream, LogError> {
        self.follows.fetch_add(1, Ordering::SeqCst);
        // Make the read slow enough that every request arrives while it is in flight.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        self.inner.follow(match_id).await
    }
    async fn replay(&self, match_id: &str) -> Result<LogStream, LogError> {
        self.inner.replay(match_id).await
    }
    async fn latest_keyframe(&self, match_id: &str) -> Result<LogRecord, LogError> {
        self.inner.latest_keyframe(match_id).await
    }
    async fn match_ids(&self) -> Result<Vec<String>, LogError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(LogError::Unavailable("no stream leader".into()));
        }
        self.inner.match_ids().await
    }
    async fn event_consumer(&self, name: &str) -> Result<Box<dyn EventConsumer>, LogError> {
        self.inner.event_consumer(name).await
    }
    async fn all_events(&self) -> Result<LogStream, LogError> {
        self.inner.all_events().await
    }
    async fn match_events(&self, match_id: &str) -> Result<Vec<LogRecord>, LogError> {
        self.inner.match_events(match_id).await
    }
}

async fn app() -> (axum::Router, Arc<CountingLog>) {
    let log = Arc::new(CountingLog {
        inner: MemoryLog::new(MemoryLogLimits::default()),
        follows: AtomicUsize::new(0),
        down: Default::default(),
    });
    let record = |version, kind, body: Vec<u8>| LogRecord {
        match_id: "eu-1".into(),
        epoch: 9,
        version,
        kind,
        body: Bytes::from(body),
    };
    let state = SpectatorState {
        region: "eu".into(),
        ..Default::default()
    };
    log.publish(record(
        0,
        LogKind::Keyframe,
        serde_json::to_vec(&state).unwrap(),
    ))
    .await
    .unwrap();
    let delta = Delta {
        tick: 3,
        ..Default::default()
    };
    log.publish(record(
        1,
        LogKind::Delta,
        serde_json::to_vec(&delta).unwrap(),
    ))
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!(
        "gs-api-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let history = SqlHistory::connect(&format!("sqlite://{}", dir.join("h.sqlite").display()))
        .await
        .unwrap();
    let state = ApiState::new(
        ApiConfig::default(),
        log.clone(),
        Arc::new(MemoryLeaderboards::new()),
        Arc::new(history),
        TokenSigner::new(b"0123456789abcdef"),
        None,
    );
    (router(state), log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_cold_loads_cost_one_backend_read() {
    let (app, log) = app().await;
    let requests = (0..1000).map(|_| {
        let app = app.clone();
        tokio::spawn(async move {
            let res = app
                .oneshot(
                    Request::get("/v1/matches/eu-1/snapshot")
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            let etag = res.headers()["etag"].to_str().unwrap().to_string();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (etag, body)
        })
    });
    let responses = futures::future::join_all(requests).await;
    assert_eq!(
        log.follows.load(Ordering::SeqCst),
        1,
        "concurrent misses must coalesce"
    );
    let (etag, body) = responses[0].as_ref().unwrap();
    assert_eq!(etag, "\"9:1\"");
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(
        (
            v["epoch"].as_u64(),
            v["version"].as_u64(),
            v["state"]["tick"].as_u64()
        ),
        (Some(9), Some(1), Some(3))
    );
    assert!(
        responses.iter().all(|r| r.as_ref().unwrap().1 == *body),
        "everyone gets the same bytes"
    );
    // Unknown matches are 404s and are not cached as hits.
    let res = app
        .clone()
        .oneshot(
            Request::get("/v1/matches/eu-2/snapshot")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn not_modified_when_the_etag_matches() {
    let (app, _) = app().await;
    let res = app
        .clone()
        .oneshot(
            Request::get("/v1/matches/eu-1/snapshot")
                .header("if-none-match", "\"9:1\"")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(res.headers()["etag"], "\"9:1\"");
    let res = app
        .oneshot(
            Request::get("/v1/matches/eu-1/snapshot")
                .header("if-none-match", "\"9:0\"")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

/// In-memory leaderboards that can be made to fail like an unreachable Redis.
struct Flaky {
    inner: MemoryLeaderboards,
    down: std::sync::atomic::AtomicBool,
}

impl Flaky {
    fn check(&self) -> Result<(), backends::BoardError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(backends::BoardError::Unavailable(
                "connection refused".into(),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl backends::Leaderboards for Flaky {
    async fn apply(
        &self,
        events: &[backends::ScoredEvent],
    ) -> Result<Vec<backends::ApplyOutcome>, backends::BoardError> {
        self.check()?;
        self.inner.apply(events).await
    }
    async fn top(
        &self,
        board: &str,
        offset: u64,
        limit: u64,
    ) -> Result<Option<backends::BoardPage>, backends::BoardError> {
        self.check()?;
        self.inner.top(board, offset, limit).await
    }
    async fn heartbeat(&self, backlog: u64) -> Result<(), backends::BoardError> {
        self.check()?;
        self.inner.heartbeat(backlog).await
    }
    async fn around(
        &self,
        board: &str,
        player: &str,
        radius: u64,
    ) -> Result<Option<backends::BoardPage>, backends::BoardError> {
        self.check()?;
        self.inner.around(board, player, radius).await
    }
}

async fn get_json(app: &axum::Router, path: &str) -> (StatusCode, serde_json::Value) {
    let res = app
        .clone()
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or_default())
}

#[tokio::test]
async fn leaderboards_say_how_fresh_they_are_and_survive_a_store_outage() {
    use backends::{BoardChange, Leaderboards, ScoredEvent};
    let boards = Arc::new(Flaky {
        inner: MemoryLeaderboards::new(),
        down: Default::default(),
    });
    let kill = ScoredEvent {
        match_id: "m".into(),
        epoch: 1,
        seq: 1,
        at_ms: protocol::now_ms(),
        changes: vec![BoardChange::new("global", "ann", 1)],
        names: vec![("ann".into(), "Ann".into())],
    };
    boards.apply(&[kill]).await.unwrap();
    let dir = std::env::temp_dir().join(format!(
        "gs-api-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let history = SqlHistory::connect(&format!("sqlite://{}", dir.join("h.sqlite").display()))
        .await
        .unwrap();
    let state = ApiState::new(
        ApiConfig::default(),
        Arc::new(MemoryLog::new(MemoryLogLimits::default())),
        boards.clone(),
        Arc::new(history),
        TokenSigner::new(b"0123456789abcdef"),
        None,
    );
    let app = router(state);
    let wait_cache = || tokio::time::sleep(std::time::Duration::from_millis(300));

    // No aggregator has reported: the board is served, and marked stale.
    let (status, b) = get_json(&app, "/v1/leaderboards/global").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (b["stale"].as_bool(), b["stale_reason"].as_str()),
        (Some(true), Some("aggregator not reporting"))
    );
    assert_eq!(b["entries"][0]["player"], "ann");
    assert!(b["updated_at"].is_u64() && b["age_ms"].is_u64());

    // A live aggregator, caught up: fresh.
    boards.heartbeat(0).await.unwrap();
    wait_cache().await;
    let (_, b) = get_json(&app, "/v1/leaderboards/global").await;
    assert_eq!(b["stale"], false, "{b}");
    // Far behind: stale, with the backlog.
    boards.heartbeat(50_000).await.unwrap();
    wait_cache().await;
    let (_, b) = get_json(&app, "/v1/leaderboards/global").await;
    assert_eq!(
        (b["stale"].as_bool(), b["behind_events"].as_u64()),
        (Some(true), Some(50_000))
    );

    // The store goes down: the last known board is served, marked stale with its age...
    boards.heartbeat(0).await.unwrap();
    wait_cache().await;
    get_json(&app, "/v1/leaderboards/global").await;
    boards.down.store(true, Ordering::SeqCst);
    wait_cache().await;
    let (status, b) = get_json(&app, "/v1/leaderboards/global").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(b["stale"], true);
    assert!(
        b["stale_reason"]
            .as_str()
            .unwrap()
            .starts_with("leaderboard store unavailable"),
        "{b}"
    );
    assert_eq!(b["entries"][0]["player"], "ann");
    // ...and a read never answered before is a clear 503.
    let (status, b) = get_json(&app, "/v1/leaderboards/global?limit=7").await;
    assert_eq!(
        (status, b["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable"))
    );
}

/// While the log cannot list matches (a JetStream election), the last listing is served,
/// marked stale, so a viewer whose match ended still finds the next one; with none read yet
/// the answer is a 503.
#[tokio::test]
async fn the_match_listing_outlives_a_log_outage_marked_stale() {
    let (app, log) = app().await;
    let (status, fresh) = get_json(&app, "/v1/matches").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fresh["matches"][0]["id"], "eu-1");
    assert!(fresh.get("stale").is_none(), "{fresh}");
    log.down.store(true, Ordering::SeqCst);
    // Past the listing cache's second.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, stale) = get_json(&app, "/v1/matches").await;
    assert_eq!(status, StatusCode::OK, "{stale}");
    assert_eq!(stale["stale"], true, "{stale}");
    assert_eq!(stale["matches"], fresh["matches"]);

    let (cold, log) = app_with_log_down().await;
    let (status, body) = get_json(&cold, "/v1/matches").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    drop(log);
}

async fn app_with_log_down() -> (axum::Router, Arc<CountingLog>) {
    let (app, log) = app().await;
    log.down.store(true, Ordering::SeqCst);
    (app, log)
}
