//! Feeds for broadcasters and data partners: partner keys (added, listed, revoked with the
//! CLI against the history store) with their own delay, stream cap and matches.

use std::time::{Duration, Instant};

use crate::common::clients::Sse;
use crate::common::{run_to_completion, App, Backend};

/// The key `partners add` printed (the last word of its output).
fn add_partner(backend: &Backend, args: &[&str]) -> String {
    let mut full = vec!["partners", "add"];
    full.extend_from_slice(args);
    let (ok, out) = run_to_completion(backend, &full);
    assert!(ok, "{out}");
    let key = out.split_whitespace().last().unwrap().to_string();
    assert!(key.starts_with("gsp_"), "{out}");
    key
}

/// Opens an SSE stream with `credential`, retrying while `refused(status)` holds, for at most
/// `limit`; returns the stream or the last refusal.
async fn stream_within(
    app: &App,
    path: &str,
    credential: &str,
    limit: Duration,
    retry_while: impl Fn(u16) -> bool,
) -> Result<Sse, (u16, serde_json::Value)> {
    let deadline = Instant::now() + limit;
    loop {
        match Sse::connect(&app.http, &app.url(path), credential, None).await {
            Err((status, body)) if retry_while(status) && Instant::now() < deadline => {
                let _ = body;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => return other,
        }
    }
}

/// A match held 3 s for the public: a partner key at delay 0 gets it live (stream and cold
/// load), a guest only after the delay; the key's cap and coverage hold; `partners list` never
/// shows a key; a revoked key is refused within 5 s; bad keys and names are refused clearly.
pub async fn partner_keys(backend: &Backend) {
    let app = App::spawn(
        backend,
        &[
            "--matches",
            "1",
            "--bots",
            "4",
            "--broadcast-delay-ms",
            "3000",
        ],
    )
    .await;
    let id = app.live_match_ids(1).await.remove(0);
    let path = format!("/v1/matches/{id}/stream");

    let live = add_partner(
        backend,
        &["live-odds", "--delay-ms", "0", "--max-streams", "2"],
    );
    let elsewhere = add_partner(backend, &["other-region", "--matches", "zz-*"]);
    let (ok, out) = run_to_completion(backend, &["partners", "add", "live-odds"]);
    assert!(!ok && out.contains("exists already"), "{out}");
    let (ok, out) = run_to_completion(backend, &["partners", "add", "bad name"]);
    assert!(!ok && out.contains("name:"), "{out}");
    let (ok, listed) = run_to_completion(backend, &["partners", "list"]);
    assert!(
        ok && listed.contains("live-odds") && listed.contains("active"),
        "{listed}"
    );
    assert!(
        !listed.contains(&live) && !listed.contains("gsp_"),
        "{listed}"
    );

    // The running platform picks the new key up within 5 s, and the partner is live.
    let started = Instant::now();
    let mut partner = stream_within(&app, &path, &live, Duration::from_secs(5), |s| s == 401)
        .await
        .unwrap_or_else(|e| panic!("partner key refused: {e:?}"));
    assert!(started.elapsed() < Duration::from_secs(5));
    let opened = Instant::now();
    let partner_first = partner.next().await.unwrap();
    assert_eq!(partner_first.event, "snapshot");
    assert!(
        opened.elapsed() < Duration::from_secs(1),
        "the partner's first message took {:?}",
        opened.elapsed()
    );

    // A guest on the same match waits out the delay (the public line starts cold).
    let guest_token = app.guest_token().await;
    let opened = Instant::now();
    let mut guest = Sse::connect(&app.http, &app.url(&path), &guest_token, None)
        .await
        .unwrap();
    let guest_first = guest.next().await.unwrap();
    let guest_waited = opened.elapsed();
    assert_eq!(guest_first.event, "snapshot");
    assert!(
        guest_waited >= Duration::from_millis(2500),
        "the guest's first message came after {guest_waited:?}, inside the 3 s delay"
    );

    // A second partner stream, opened now, starts where the match is: about the delay ahead
    // of what the guest was first shown.
    let tick = |data: &str| -> (u64, u64) {
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        let state = &v["state"];
        (
            state["tick"].as_u64().unwrap(),
            state["tick_hz"].as_u64().unwrap_or(30),
        )
    };
    let (guest_tick, tick_hz) = tick(&guest_first.data);
    let mut second = Sse::connect(&app.http, &app.url(&path), &live, None)
        .await
        .unwrap();
    let (live_tick, _) = tick(&second.next().await.unwrap().data);
    assert!(
        live_tick >= guest_tick + 2 * tick_hz,
        "live tick {live_tick}, the guest's first tick {guest_tick} ({tick_hz} Hz)"
    );
    // Cold loads: 409 for the public, the live state for the partner at delay 0.
    let snapshot = format!("/v1/matches/{id}/snapshot");
    let (status, body) = app.get(&snapshot).await;
    assert_eq!(status, 409, "{body}");
    let r = app
        .http
        .get(app.url(&snapshot))
        .bearer_auth(&live)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["cache-control"]
        .to_str()
        .unwrap()
        .starts_with("private"));
    let state: serde_json::Value = r.json().await.unwrap();
    assert!(
        state["state"]["tick"].as_u64().unwrap() >= live_tick,
        "{state}"
    );
    let r = app
        .http
        .get(app.url(&snapshot))
        .bearer_auth(&elsewhere)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // The key's own cap: 2 streams (both open).
    let third = Sse::connect(&app.http, &app.url(&path), &live, None).await;
    assert_eq!(third.err().map(|e| e.0), Some(429));
    drop(second);

    // A key for other matches only.
    let refused = Sse::connect(&app.http, &app.url(&path), &elsewhere, None).await;
    let (status, body) = refused.err().unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("token"),
        "{body}"
    );
    // An unknown key.
    let (status, body) = Sse::connect(&app.http, &app.url(&path), "gsp_unknown", None)
        .await
        .err()
        .unwrap();
    assert_eq!(status, 401);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("partner key"),
        "{body}"
    );

    // Metrics name the partner.
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("gw_partner_streams_total{partner=\"live-odds\"}"),
        "{metrics}"
    );

    // Revocation: refused within 5 s.
    drop(partner);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, out) = run_to_completion(backend, &["partners", "revoke", "live-odds"]);
    assert!(ok, "{out}");
    let (ok, out) = run_to_completion(backend, &["partners", "revoke", "live-odds"]);
    assert!(!ok && out.contains("no active partner"), "{out}");
    let revoked_at = Instant::now();
    // Until the roles re-read the keys the stream is still served; then 401.
    let refused = loop {
        match Sse::connect(&app.http, &app.url(&path), &live, None).await {
            Ok(stream) => drop(stream),
            Err(refusal) => break refusal,
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(5),
            "still served 5 s after revoking"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(refused.0, 401, "{:?}", refused.1);
    let (_, listed) = run_to_completion(backend, &["partners", "list"]);
    assert!(listed.contains("revoked"), "{listed}");
    app.stop().await;
}
