//! Feeds for broadcasters and data partners: partner keys (added, listed, revoked with the
//! CLI against the history store) with their own delay, stream cap and matches.

use std::time::{Duration, Instant};

use testkit::wsclient::{Offer, RawWs, BROWSER_DEFLATE};

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

/// Reads a stream to its `close` event: every message's (type, kind, epoch, version), and the
/// close's data. Status messages (not on the version line) are left out.
async fn read_to_close(sse: &mut Sse) -> (Vec<(String, String, u64, u64)>, serde_json::Value) {
    let mut seen = Vec::new();
    loop {
        let ev = sse
            .next()
            .await
            .expect("the stream ended without a close event");
        let v: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
        if ev.event == "close" {
            return (seen, v);
        }
        if ev.event == "status" {
            continue;
        }
        seen.push((
            v["type"].as_str().unwrap().to_string(),
            v["kind"].as_str().unwrap_or("").to_string(),
            v["epoch"].as_u64().unwrap(),
            v["version"].as_u64().unwrap(),
        ));
    }
}

/// A whole match on one version line: a snapshot at version 0, then every version after it
/// once, in order, through `match_ended`.
fn assert_whole_match(seen: &[(String, String, u64, u64)]) {
    assert_eq!(
        (seen[0].0.as_str(), seen[0].3),
        ("snapshot", 0),
        "{:?}",
        &seen[..3.min(seen.len())]
    );
    for pair in seen.windows(2) {
        assert_eq!(pair[1].2, pair[0].2, "one epoch: {pair:?}");
        assert_eq!(pair[1].3, pair[0].3 + 1, "consecutive: {pair:?}");
        assert_ne!(pair[1].0, "snapshot", "{pair:?}");
    }
    assert!(
        seen.iter().any(|m| m.1 == "match_ended"),
        "match_ended was not replayed"
    );
}

/// `?from=start`: a viewer who tunes in late gets the match from version 0 and goes on into
/// the live line without a gap until the match ends; an ended match replays whole at the
/// reader's pace (or at match speed with `pace=realtime`) and closes with `match ended`;
/// replays past `--max-replays` are refused with 429 while live streams go on; bad values
/// are refused naming the field.
pub async fn replay_from_start(backend: &Backend) {
    let app = App::spawn(
        backend,
        &[
            "--matches",
            "1",
            "--bots",
            "4",
            "--match-secs",
            "8",
            "--keyframe-secs",
            "1",
            "--max-replays",
            "2",
        ],
    )
    .await;
    let token = app.guest_token().await;
    let id = app.live_match_ids(1).await.remove(0);
    let live_path = format!("/v1/matches/{id}/stream");
    let path = format!("{live_path}?from=start");
    // Late: keyframes have been published since the match started.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut live = Sse::connect(&app.http, &app.url(&live_path), &token, None)
        .await
        .unwrap();
    let live_first = live.json().await;
    assert!(live_first["version"].as_u64().unwrap() > 0, "{live_first}");
    drop(live);

    let mut late = Sse::connect(&app.http, &app.url(&path), &token, None)
        .await
        .unwrap();
    let (seen, close) = read_to_close(&mut late).await;
    assert_whole_match(&seen);
    assert!(
        seen.last().unwrap().3 > live_first["version"].as_u64().unwrap() + 20,
        "the replay stopped near where it started rather than running into the live line"
    );
    assert_eq!(
        (close["code"].as_u64(), close["reason"].as_str()),
        (Some(1000), Some("match ended")),
        "{close}"
    );
    let whole = seen.len();

    // The ended match, again: the whole of it, as fast as it is read (it took 8 s to play).
    let opened = Instant::now();
    let mut again = Sse::connect(&app.http, &app.url(&path), &token, None)
        .await
        .unwrap();
    let (seen, close) = read_to_close(&mut again).await;
    assert_whole_match(&seen);
    assert_eq!(seen.len(), whole, "the same match, the same versions");
    assert_eq!(close["reason"], "match ended");
    let took = opened.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "replaying an ended match took {took:?}"
    );

    // At match speed: after 1.5 s it is early in the match, not at its end.
    let mut paced: Vec<Sse> = Vec::new();
    for _ in 0..2 {
        paced.push(
            Sse::connect(
                &app.http,
                &app.url(&format!("{path}&pace=realtime")),
                &token,
                None,
            )
            .await
            .unwrap(),
        );
    }
    let started = Instant::now();
    let mut last = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        let ev = paced[0].next().await.unwrap();
        assert_ne!(ev.event, "close", "a paced replay ended within 1.5 s");
        let v: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
        last = v["version"].as_u64().unwrap_or(last);
    }
    assert!(
        last < (whole as u64) / 2,
        "at version {last} of {whole} after 1.5 s of an 8 s match"
    );

    // Both slots are taken by the paced replays: a third is refused, live streams are not.
    let refused = Sse::connect(&app.http, &app.url(&path), &token, None).await;
    let (status, body) = refused.err().expect("a third replay was accepted");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("replay_cap")),
        "{body}"
    );
    let next_id = app.live_match_ids(1).await.remove(0);
    let mut watching = Sse::connect(
        &app.http,
        &app.url(&format!("/v1/matches/{next_id}/stream")),
        &token,
        None,
    )
    .await
    .unwrap();
    assert_eq!(watching.json().await["type"], "snapshot");

    for (query, field) in [
        ("from=middle", "from"),
        ("from=start&pace=slow", "pace"),
        ("pace=realtime", "pace"),
    ] {
        let refused = Sse::connect(
            &app.http,
            &app.url(&format!("{live_path}?{query}")),
            &token,
            None,
        )
        .await;
        let (status, body) = refused.err().expect("accepted");
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with(field),
            "{query}: {body}"
        );
    }
    drop(paced);
    drop(app);
}

/// The position of each match in a multi-match event id (`a:E:V,b:E:V`).
fn positions(id: &str) -> std::collections::BTreeMap<String, (u64, u64)> {
    id.split(',')
        .map(|p| {
            let mut parts = p.split(':');
            let m = parts.next().unwrap().to_string();
            let e = parts.next().unwrap().parse().unwrap();
            let v = parts.next().unwrap().parse().unwrap();
            (m, (e, v))
        })
        .collect()
}

/// Per match, a version line that never repeats or skips: snapshots start (or restart) it,
/// everything else is the next version.
fn check_lines(lines: &mut std::collections::BTreeMap<String, (u64, u64)>, v: &serde_json::Value) {
    let m = v["match"].as_str().unwrap().to_string();
    let at = (v["epoch"].as_u64().unwrap(), v["version"].as_u64().unwrap());
    match (v["type"].as_str().unwrap(), lines.get(&m)) {
        ("snapshot", Some(prev)) => assert!(at > *prev, "{m}: snapshot {at:?} after {prev:?}"),
        ("snapshot", None) => {}
        (_, Some(prev)) => assert_eq!(at, (prev.0, prev.1 + 1), "{m}: {v}"),
        (t, None) => panic!("{m}: a {t} before any snapshot"),
    }
    lines.insert(m, at);
}

/// `GET /v1/streams`: several matches on one SSE connection, each message naming its match;
/// the event id holds every match's position, so a browser's Last-Event-ID resumes each of
/// them without gap or duplicate after a cut; the same over WebSocket; a region stream
/// announces matches joining and leaving; bad lists and ids are refused naming the field.
pub async fn multi_match_streams(backend: &Backend) {
    let app = App::spawn(
        backend,
        &["--matches", "2", "--bots", "4", "--match-secs", "10"],
    )
    .await;
    let token = app.guest_token().await;
    let live = app.live_matches(2).await;
    let ids: Vec<String> = live
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    let path = format!("/v1/streams?matches={},{}", ids[0], ids[1]);

    let mut sse = Sse::connect(&app.http, &app.url(&path), &token, None)
        .await
        .unwrap();
    let mut lines = std::collections::BTreeMap::new();
    let mut last_id = String::new();
    for _ in 0..40 {
        let ev = sse.next().await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
        if ev.event == "status" {
            continue;
        }
        check_lines(&mut lines, &v);
        last_id = ev.id.clone().expect("every event carries the positions");
        assert_eq!(
            positions(&last_id),
            lines,
            "the id is every match's position"
        );
    }
    assert_eq!(lines.len(), 2, "both matches on the stream: {lines:?}");
    drop(sse);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut resumed = Sse::connect(&app.http, &app.url(&path), &token, Some(&last_id))
        .await
        .unwrap();
    let mut deltas_after = 0;
    for _ in 0..20 {
        let ev = resumed.next().await.unwrap();
        if ev.event == "status" {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
        if v["type"] != "snapshot" {
            deltas_after += 1;
        }
        check_lines(&mut lines, &v);
    }
    assert!(
        deltas_after > 0,
        "the resumed stream carried on from the positions"
    );
    drop(resumed);

    // The same matches over WebSocket as a browser opens it (v2, compressed), resumed with
    // ?since=.
    let since = positions(&last_id);
    let ws_path = format!("{path}&format=v2&since={last_id}");
    let offer = Offer {
        extensions: Some(BROWSER_DEFLATE.to_string()),
        token: Some(token.clone()),
        ..Offer::default()
    };
    let mut ws = RawWs::connect(&app.base, &ws_path, &offer)
        .await
        .unwrap()
        .unwrap_or_else(|r| panic!("refused {}: {}", r.status, r.body));
    assert!(ws.deflate);
    let mut ws_lines = since.clone();
    let mut seen_matches = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let v = ws.json(Duration::from_secs(10)).await.unwrap();
        if v["type"] == "status" {
            continue;
        }
        seen_matches.insert(v["match"].as_str().unwrap().to_string());
        check_lines(&mut ws_lines, &v);
    }
    assert_eq!(seen_matches.len(), 2, "{seen_matches:?}");
    drop(ws);

    // A region stream: its live matches, announced; when one ends it leaves, announced, and
    // the match that replaces it joins. Frames only ever come from joined matches.
    let region = live[0]["region"].as_str().unwrap();
    let mut by_region = Sse::connect(
        &app.http,
        &app.url(&format!("/v1/streams?region={region}")),
        &token,
        None,
    )
    .await
    .unwrap();
    let (mut started, mut ended) = (Vec::<String>::new(), Vec::<String>::new());
    let mut joined_after_an_end = false;
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline && (!joined_after_an_end || ended.is_empty()) {
        let ev = by_region.next().await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
        let m = v["match"].as_str().unwrap().to_string();
        if ev.event == "stream" {
            match v["status"].as_str().unwrap() {
                "match_started" => {
                    assert!(!started.contains(&m), "{m} joined twice");
                    joined_after_an_end |= !ended.is_empty();
                    started.push(m);
                }
                "match_ended" => {
                    assert!(started.contains(&m), "{m} left without joining");
                    ended.push(m);
                }
                other => panic!("announcement {other}"),
            }
        } else {
            assert!(
                started.contains(&m) && !ended.contains(&m),
                "a {} of {m}, which is not on the stream",
                ev.event
            );
        }
    }
    assert!(!started.is_empty(), "no match joined");
    assert!(!ended.is_empty(), "no match left: {started:?}");
    assert!(
        joined_after_an_end,
        "no match joined after one ended: {started:?} {ended:?}"
    );
    drop(by_region);

    let too_many: Vec<String> = (0..33).map(|i| format!("m{i}")).collect();
    for (query, last_event_id, status, field) in [
        (
            format!("matches={}", too_many.join(",")),
            None,
            400,
            "matches",
        ),
        ("matches=a,b&region=eu".to_string(), None, 400, "matches"),
        (
            format!("matches={}", ids[0]),
            Some("garbage"),
            400,
            "Last-Event-ID",
        ),
        (format!("matches={},no-such-match", ids[0]), None, 404, ""),
    ] {
        let refused = Sse::connect(
            &app.http,
            &app.url(&format!("/v1/streams?{query}")),
            &token,
            last_event_id,
        )
        .await;
        let (got, body) = refused.err().expect("accepted");
        assert_eq!(got, status, "{query}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with(field),
            "{query}: {body}"
        );
    }
    drop(app);
}
