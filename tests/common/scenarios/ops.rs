//! Operating the platform: `/readyz` answers for the role's backends, and SIGTERM drains a
//! gateway's viewers spread over `--drain-secs` (readiness turning 503 first) before the
//! process exits cleanly; logs are JSON lines when asked.

use std::time::{Duration, Instant};

use testkit::wsclient::{Offer, RawWs, Received};

use crate::common::{App, Backend};

const VIEWERS: usize = 30;

pub async fn readiness_and_drain(backend: &Backend) {
    let app = App::spawn_with(
        backend,
        &["--matches", "1", "--bots", "4", "--log-format", "json"],
        &[("GRANDSTAND_DRAIN_SECS", "3".to_string())],
        None,
    )
    .await;
    // JSON logs: one object per line, with the fields a log pipeline indexes.
    let log = app.log();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let entry: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            entry["level"].is_string() && entry["timestamp"].is_string(),
            "{line}"
        );
    }
    assert!(log.contains("\"http_addr\""), "{log}");

    let (status, ready) = app.get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    for check in ["match_log", "leaderboards", "history"] {
        assert_eq!(ready["checks"][check], "ok", "{ready}");
    }
    // With real backends, the Redis server is pinged as well.
    assert_eq!(
        ready["checks"]["redis"].as_str(),
        backend.redis_prefix().map(|_| "ok"),
        "{ready}"
    );

    let id = app.live_match_ids(1).await.remove(0);
    let mut viewers = Vec::new();
    for _ in 0..VIEWERS {
        // One guest per viewer: a single user is held to a few concurrent streams.
        let offer = Offer {
            extensions: None,
            protocol: None,
            token: Some(app.guest_token().await),
        };
        let mut ws = RawWs::connect(&app.base, &format!("/v1/matches/{id}/stream"), &offer)
            .await
            .unwrap()
            .unwrap_or_else(|r| panic!("refused {}: {}", r.status, r.body));
        assert_eq!(
            ws.json(Duration::from_secs(10)).await.unwrap()["type"],
            "snapshot"
        );
        viewers.push(ws);
    }

    let signalled = Instant::now();
    app.terminate();
    // Each viewer: how long after the signal it was closed, and with what.
    let closes: Vec<_> = viewers
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                loop {
                    match ws.next(Duration::from_secs(10)).await.unwrap() {
                        Some(Received::Text(_)) => continue,
                        Some(Received::Close(code, reason)) => {
                            return (signalled.elapsed(), code, reason)
                        }
                        other => panic!("no close frame: {other:?}"),
                    }
                }
            })
        })
        .collect();

    // Readiness turns first, while the viewers are still being served.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let (status, body) = app.get("/readyz").await;
        if status == 503 {
            assert_eq!(body["error"]["code"], "not_ready", "{body}");
            assert!(body["checks"]["draining"].is_string(), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {status} after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut at = Vec::new();
    for close in closes {
        let (after, code, reason) = close.await.unwrap();
        assert_eq!(code, Some(1012), "{reason}");
        assert!(reason.contains("draining"), "{reason}");
        at.push(after);
    }
    at.sort();
    let (first, last) = (at[0], at[VIEWERS - 1]);
    // Spread over the 3 s period, not all at once: the first leave early, the last near the end.
    assert!(
        first < Duration::from_millis(1500),
        "first close after {first:?}"
    );
    assert!(
        last - first >= Duration::from_millis(1500),
        "closes spread over only {:?}: {at:?}",
        last - first
    );
    let stopped = app.exited(Duration::from_secs(10)).await;
    assert!(stopped.contains(&"--matches".to_string()));
    assert!(signalled.elapsed() < Duration::from_secs(10));
}
