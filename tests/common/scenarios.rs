//! End-to-end scenarios, run against each backend pair.

use std::collections::HashMap;
use std::time::Duration;

use futures::SinkExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

use super::clients::{ws_close, ws_connect, ws_json, ws_next, Sse, WsNext};
use super::{eventually, App, Backend, VersionLine};

/// A WebSocket viewer and an SSE viewer each get a snapshot, then strictly consecutive
/// versions; each disconnects and resumes from its last version with no gap and no duplicate;
/// bad input is refused cleanly without disturbing other viewers.
pub async fn stream_contract(backend: &Backend) {
    let app = App::spawn(backend, &["--matches", "2"]).await;
    let token = app.guest_token().await;
    let matches = app.live_matches(2).await;
    let id = matches[0]["id"].as_str().unwrap().to_string();
    let path = format!("/v1/matches/{id}/stream");

    // WebSocket: snapshot, then consecutive versions; resume with ?since=.
    let mut line = VersionLine::default();
    let mut ws = ws_connect(&app.ws_url(&path), Some(&token)).await.unwrap();
    let first = ws_json(&mut ws).await;
    assert_eq!(first["type"], "snapshot", "{first}");
    assert_eq!(first["match"], id.as_str());
    assert!(first["state"]["players"]
        .as_object()
        .is_some_and(|p| !p.is_empty()));
    line.observe_message(&first).unwrap();
    for _ in 0..20 {
        line.observe_message(&ws_json(&mut ws).await).unwrap();
    }
    ws_close(ws).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resume = format!("{path}?since={}", line.since());
    let mut ws = ws_connect(&app.ws_url(&resume), Some(&token))
        .await
        .unwrap();
    let m = ws_json(&mut ws).await;
    assert_ne!(
        m["type"], "snapshot",
        "a resume inside the window replays, not re-snapshots: {m}"
    );
    line.observe_message(&m).unwrap();
    for _ in 0..10 {
        line.observe_message(&ws_json(&mut ws).await).unwrap();
    }
    assert_eq!(line.snapshots, 1);

    // SSE: the same contract, resuming with Last-Event-ID like EventSource does.
    let mut sse_line = VersionLine::default();
    let url = app.url(&path);
    let mut sse = Sse::connect(&app.http, &url, &token, None).await.unwrap();
    let first = sse.json().await;
    assert_eq!(first["type"], "snapshot");
    assert!(
        sse.retry_ms.is_some_and(|r| r > 0),
        "SSE sends a retry hint"
    );
    sse_line.observe_message(&first).unwrap();
    for _ in 0..15 {
        sse_line.observe_message(&sse.json().await).unwrap();
    }
    let last = sse.last_event_id.clone().unwrap();
    drop(sse);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut sse = Sse::connect(&app.http, &url, &token, Some(&last))
        .await
        .unwrap();
    let m = sse.json().await;
    assert_ne!(m["type"], "snapshot", "SSE resume replays: {m}");
    sse_line.observe_message(&m).unwrap();
    for _ in 0..10 {
        sse_line.observe_message(&sse.json().await).unwrap();
    }

    // Bad input, while the WebSocket viewer above keeps watching.
    let (status, body) = Sse::connect(
        &app.http,
        &app.url("/v1/matches/no-such-match/stream"),
        &token,
        None,
    )
    .await
    .err()
    .unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    assert_eq!(
        ws_connect(
            &app.ws_url("/v1/matches/no-such-match/stream"),
            Some(&token)
        )
        .await
        .err(),
        Some(404)
    );
    assert_eq!(ws_connect(&app.ws_url(&path), None).await.err(), Some(401));
    let forged = format!("{}x", &token[..token.len() - 1]);
    assert_eq!(
        ws_connect(&app.ws_url(&path), Some(&forged)).await.err(),
        Some(401)
    );
    assert_eq!(
        ws_connect(&app.ws_url(&path), Some("not-a-token"))
            .await
            .err(),
        Some(401)
    );
    assert_eq!(
        ws_connect(&app.ws_url(&format!("{path}?since=12:x")), Some(&token))
            .await
            .err(),
        Some(400)
    );
    let (status, body) = Sse::connect(&app.http, &url, &token, Some("garbage"))
        .await
        .err()
        .unwrap();
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Last-Event-ID"),
        "{body}"
    );
    let r = app
        .http
        .get(app.url(&path))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 406, "neither WebSocket nor SSE");

    // Oversized and non-UTF-8 frames close that socket with a reason...
    let mut big = ws_connect(&app.ws_url(&path), Some(&token)).await.unwrap();
    ws_json(&mut big).await;
    big.send(Message::text("x".repeat(64 * 1024)))
        .await
        .unwrap();
    let code = closed_with(&mut big).await;
    assert_eq!(code, Some(1009), "oversized frame closes with 1009");
    let mut bad = ws_connect(&app.ws_url(&path), Some(&token)).await.unwrap();
    ws_json(&mut bad).await;
    let frame = Frame::message(vec![0xff, 0xfe, 0xfd], OpCode::Data(Data::Text), true);
    bad.send(Message::Frame(frame)).await.unwrap();
    assert_eq!(
        closed_with(&mut bad).await,
        Some(1007),
        "invalid UTF-8 closes with 1007"
    );
    // ...and the bystander kept streaming without a gap.
    for _ in 0..10 {
        line.observe_message(&ws_json(&mut ws).await).unwrap();
    }
    assert_eq!(line.snapshots, 1, "the bystander never needed a snapshot");
    drop(app);
}

async fn closed_with(ws: &mut super::clients::Ws) -> Option<u16> {
    loop {
        match ws_next(ws, Duration::from_secs(10)).await {
            WsNext::Json(_) => continue,
            WsNext::Closed(frame) => return frame.map(|f| u16::from(f.code)),
        }
    }
}

async fn results(app: &App, id: &str) -> Option<Value> {
    let (status, body) = app.get(&format!("/v1/matches/{id}/results")).await;
    (status == 200
        && body["ended_ms"].is_u64()
        && body["results"].as_array().is_some_and(|r| !r.is_empty()))
    .then_some(body)
}

/// Bots play short matches; the global leaderboard ends up equal to the sum of the recorded
/// results (every kill counted exactly once), and a restart of the process keeps the history.
pub async fn scores_and_history(backend: &Backend) {
    let args = [
        "--matches",
        "2",
        "--bots",
        "6",
        "--match-secs",
        "6",
        "--intermission-secs",
        "600",
    ];
    let app = App::spawn(backend, &args).await;
    let ids = app.live_match_ids(2).await;
    // The leaderboard reflects kills within seconds, while the matches are still live.
    eventually(Duration::from_secs(10), || async {
        let (_, b) = app.get("/v1/leaderboards/global?limit=5").await;
        b["entries"]
            .as_array()
            .filter(|e| !e.is_empty())
            .map(|_| ())
    })
    .await
    .expect("kills reach the leaderboard");

    // Leaderboard ticks: SSE and WebSocket, at most one a second, the latest state each time.
    let token = app.guest_token().await;
    let mut sse = Sse::connect(
        &app.http,
        &app.url("/v1/leaderboards/global/stream"),
        &token,
        None,
    )
    .await
    .unwrap();
    let tick = loop {
        let ev = sse.next().await.expect("tick stream open");
        if ev.event == "leaderboard" {
            break serde_json::from_str::<Value>(&ev.data).unwrap();
        }
    };
    assert_eq!(
        (tick["type"].as_str(), tick["board"].as_str()),
        (Some("leaderboard"), Some("global"))
    );
    assert!(
        tick["entries"].as_array().is_some_and(|e| !e.is_empty()),
        "{tick}"
    );
    let mut ws = ws_connect(&app.ws_url("/v1/leaderboards/daily/stream"), None)
        .await
        .unwrap();
    let tick = ws_json(&mut ws).await;
    assert!(
        tick["board"].as_str().unwrap().starts_with("daily:20"),
        "{tick}"
    );
    drop((sse, ws));

    let mut expected: HashMap<String, i64> = HashMap::new();
    let mut recorded = Vec::new();
    for id in &ids {
        let r = eventually(Duration::from_secs(30), || results(&app, id))
            .await
            .unwrap_or_else(|| panic!("match {id} never recorded results\n{}", app.log()));
        for row in r["results"].as_array().unwrap() {
            let score = row["score"].as_i64().unwrap();
            if score > 0 {
                expected.insert(row["player"].as_str().unwrap().to_string(), score);
            }
        }
        recorded.push(r);
    }
    assert!(!expected.is_empty(), "bots scored");
    let board = eventually(Duration::from_secs(10), || async {
        let (_, b) = app.get("/v1/leaderboards/global?limit=1000").await;
        let got = board_scores(&b)?;
        (got == expected).then_some(b)
    })
    .await;
    let (_, now) = app.get("/v1/leaderboards/global?limit=1000").await;
    assert!(
        board.is_some(),
        "global board must equal the results exactly\nexpected {expected:?}\ngot {now}"
    );
    assert_eq!(
        now["stale"], false,
        "a running aggregator keeps the board fresh: {now}"
    );
    // Ranks follow the scores.
    let entries = now["entries"].as_array().unwrap();
    for w in entries.windows(2) {
        assert!(w[0]["score"].as_i64() >= w[1]["score"].as_i64());
        assert_eq!(
            w[0]["rank"].as_u64().unwrap() + 1,
            w[1]["rank"].as_u64().unwrap()
        );
    }
    // Every point also lands on the day's, the week's, the match's and the region's board.
    for board in ["daily", "weekly", "region:eu", "region:us"] {
        let (status, b) = app
            .get(&format!("/v1/leaderboards/{board}?limit=1000"))
            .await;
        assert_eq!(status, 200, "{board}: {b}");
    }
    let (_, daily) = app.get("/v1/leaderboards/daily?limit=1000").await;
    assert!(daily["board"].as_str().unwrap().starts_with("daily:20"));
    assert_eq!(
        daily["total"], now["total"],
        "today's board holds everyone who scored today"
    );
    for id in &ids {
        let (status, b) = app
            .get(&format!("/v1/leaderboards/match:{id}?limit=100"))
            .await;
        assert_eq!(status, 200, "{b}");
        let sum: i64 = b["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["score"].as_i64().unwrap())
            .sum();
        let want: i64 = expected
            .iter()
            .filter(|(p, _)| p.starts_with(id.as_str()))
            .map(|(_, s)| s)
            .sum();
        assert_eq!(sum, want, "match board of {id}");
    }
    let top = entries[0]["player"].as_str().unwrap();
    let (status, around) = app
        .get(&format!("/v1/leaderboards/global/around/{top}?radius=2"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(around["entries"][0]["player"], top);

    // Restart on the same store: the history is still there.
    let args = app.stop().await;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let app = App::spawn(backend, &args).await;
    for (id, before) in ids.iter().zip(&recorded) {
        let after = results(&app, id)
            .await
            .unwrap_or_else(|| panic!("history of {id} lost on restart"));
        assert_eq!(&after, before);
    }
    // The old matches' players keep their points on the board across the restart (embedded:
    // restored from the SQLite history; real: Redis kept them).
    let board = eventually(Duration::from_secs(10), || async {
        let (_, b) = app.get("/v1/leaderboards/global?limit=1000").await;
        let got = board_scores(&b)?;
        expected
            .iter()
            .all(|(p, s)| got.get(p) == Some(s))
            .then_some(())
    })
    .await;
    assert!(board.is_some(), "leaderboards lost on restart");
    let (player, score) = expected.iter().next().unwrap();
    let (status, stats) = app.get(&format!("/v1/players/{player}")).await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(
        stats["kills"].as_i64(),
        Some(*score),
        "stats count each kill once"
    );
    // Recent matches: the finished matches this player was in, with their kills.
    let recent = stats["recent"].as_array().expect("recent matches");
    assert!(!recent.is_empty(), "{stats}");
    assert!(
        recent
            .iter()
            .all(|m| ids.iter().any(|id| m["id"] == id.as_str())),
        "{stats}"
    );
    let kills: i64 = recent.iter().filter_map(|m| m["kills"].as_i64()).sum();
    assert_eq!(kills, *score, "{stats}");
    drop(app);
}

/// HTTP bad input: JSON errors with the right status, never a stack trace.
pub async fn http_errors(backend: &Backend) {
    let app = App::spawn(backend, &["--matches", "1"]).await;
    let cases = [
        ("/v1/matches/nope/snapshot", 404, "not_found"),
        ("/v1/matches/bad.id/snapshot", 404, "not_found"),
        ("/v1/leaderboards/nope", 404, "not_found"),
        ("/v1/leaderboards/match:nope", 404, "not_found"),
        (
            "/v1/leaderboards/global?limit=100000",
            400,
            "invalid_request",
        ),
        ("/v1/leaderboards/global?offset=-1", 400, "invalid_request"),
        (
            "/v1/leaderboards/global/around/p?radius=abc",
            400,
            "invalid_request",
        ),
        ("/v1/players/nobody", 404, "not_found"),
        ("/v1/no/such/route", 404, "not_found"),
    ];
    for (path, status, code) in cases {
        let (got, body) = app.get(path).await;
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{path}: {body}"
        );
    }
    let (_, body) = app.get("/v1/leaderboards/global?limit=100000").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("limit"),
        "names the field: {body}"
    );

    // Cold load: ETag and Cache-Control, then 304 on If-None-Match.
    let id = app.live_matches(1).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = app
        .http
        .get(app.url(&format!("/v1/matches/{id}/snapshot")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert!(r.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("max-age=1"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(etag, format!("\"{}:{}\"", body["epoch"], body["version"]));
    let r = app
        .http
        .get(app.url(&format!("/v1/matches/{id}/snapshot")))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert!(
        r.status() == 304 || r.status() == 200,
        "304 while the version holds"
    );
    let (status, health) = app.get("/healthz").await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let metrics = app.metrics_text().await;
    assert!(metrics.contains("gs_ticks_total"), "metrics exposed");
    // Every documented path is routed (parameters filled with something that exists or not),
    // and answers with a status the document lists.
    let (status, doc) = app.get("/openapi.json").await;
    assert_eq!(status, 200);
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 10);
    for (path, ops) in paths {
        let concrete = path
            .replace("{id}", &id)
            .replace("{board}", "global")
            .replace("{player}", "nobody");
        let res = if ops.get("post").is_some() {
            app.http.post(app.url(&concrete)).send().await.unwrap()
        } else {
            app.http.get(app.url(&concrete)).send().await.unwrap()
        };
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        assert_ne!(
            body["error"]["message"], "no such route",
            "{path} is documented but not routed"
        );
        let documented = ops
            .as_object()
            .unwrap()
            .values()
            .any(|op| op["responses"].get(status.to_string()).is_some());
        assert!(
            documented,
            "{path} answered {status}, which the document does not list"
        );
    }
    let page = app
        .http
        .get(app.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Grandstand"));
    // The dashboard is embedded in the binary: its page names hashed assets that are served
    // from memory with a long cache lifetime.
    let script = page
        .split("src=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the page loads a script");
    assert!(script.starts_with("/assets/"), "{script}");
    let r = app.http.get(app.url(script)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    assert!(r.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("immutable"));
    assert!(r.bytes().await.unwrap().len() > 10_000);
    let (status, body) = app.get("/assets/nope.js").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    drop(app);
}

/// The history store (PostgreSQL) disappears for a while as matches end: the leaderboards keep
/// flowing, and once it is back every result and every kill is in it, counted once.
pub async fn history_outage(backend: &Backend) {
    use super::proxy::Proxy;
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let db = backend.database().expect("a real backend");
    let via_proxy = vec![(
        "DATABASE_URL",
        format!("postgres://postgres@127.0.0.1:{}/{db}", proxy.port),
    )];
    let args = [
        "--matches",
        "2",
        "--bots",
        "6",
        "--match-secs",
        "4",
        "--intermission-secs",
        "1",
    ];
    let app = App::spawn_with(backend, &args, &via_proxy, None).await;
    app.live_matches(2).await;
    proxy.cut();
    // Matches end and new ones start while PostgreSQL is unreachable...
    tokio::time::sleep(Duration::from_secs(7)).await;
    // ...and the leaderboards did not wait for it.
    let (_, during) = app.get("/v1/leaderboards/global?limit=1000").await;
    assert!(
        during["total"].as_u64().unwrap_or(0) > 0,
        "boards kept updating: {during}"
    );
    assert_eq!(during["stale"], false, "{during}");
    assert!(
        app.log().contains("history write failed"),
        "the outage must have been felt by the history writer\n{}",
        app.log()
    );
    proxy.restore();
    tokio::time::sleep(Duration::from_secs(2)).await;
    app.stop().await;
    // A lone aggregator drains whatever the stopped process had not written yet.
    let drain = App::spawn_with(backend, &[], &via_proxy, Some("aggregator")).await;
    let pg = sqlx::PgPool::connect(&format!("postgres://postgres@127.0.0.1:5432/{db}"))
        .await
        .unwrap();
    let redis_client = redis::Client::open(super::REDIS_URL).unwrap();
    let redis = redis_client
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let board_key = format!("{}lb:global", backend.redis_prefix().unwrap());
    let settled = eventually(Duration::from_secs(20), || {
        let (pg, mut redis, board_key) = (pg.clone(), redis.clone(), board_key.clone());
        async move {
            let kills: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM kills")
                .fetch_one(&pg)
                .await
                .ok()?;
            let (matches, ended, with_results): (i64, i64, i64) = sqlx::query_as(
                "SELECT COUNT(*), COUNT(ended_ms), \
                 (SELECT COUNT(DISTINCT match_id) FROM results) FROM matches",
            )
            .fetch_one(&pg)
            .await
            .ok()?;
            let scores: Vec<(String, f64)> = redis::cmd("ZRANGE")
                .arg(&board_key)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query_async(&mut redis)
                .await
                .ok()?;
            let points: i64 = scores
                .iter()
                .map(|(_, s)| (-(*s as i64)).div_euclid(1 << 31))
                .sum();
            (matches >= 4
                && ended == matches
                && with_results == matches
                && kills == points
                && kills > 0)
                .then_some((matches, kills))
        }
    })
    .await;
    assert!(
        settled.is_some(),
        "after the outage, every match, result and kill must be in PostgreSQL exactly once\n{}",
        drain.log()
    );
    drop(drain);
}

/// Everything one would compare between two states of the leaderboards.
async fn boards_of(app: &App, ids: &[String]) -> Vec<(String, Value)> {
    let mut names: Vec<String> = ["global", "daily", "weekly", "region:eu", "region:us"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    names.extend(ids.iter().map(|id| format!("match:{id}")));
    let mut out = Vec::new();
    for name in names {
        let (status, b) = app
            .get(&format!("/v1/leaderboards/{name}?limit=1000"))
            .await;
        assert_eq!(status, 200, "{name}: {b}");
        out.push((name, b["entries"].clone()));
    }
    out
}

/// Redis loses every leaderboard; `grandstand aggregator --rebuild` brings back exactly what
/// was there, from PostgreSQL and the match log.
pub async fn rebuild_after_redis_loss(backend: &Backend) {
    let args = [
        "--matches",
        "2",
        "--bots",
        "6",
        "--match-secs",
        "4",
        "--intermission-secs",
        "600",
    ];
    let app = App::spawn(backend, &args).await;
    let ids = app.live_match_ids(2).await;
    for id in &ids {
        eventually(Duration::from_secs(30), || results(&app, id))
            .await
            .expect("match ended");
    }
    // Let the aggregator settle, then record every board.
    let before = eventually(Duration::from_secs(10), || async {
        let a = boards_of(&app, &ids).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        let b = boards_of(&app, &ids).await;
        (a == b && a[0].1.as_array().is_some_and(|e| !e.is_empty())).then_some(a)
    })
    .await
    .expect("boards settle");
    app.stop().await;

    let client = redis::Client::open(super::REDIS_URL).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", backend.redis_prefix().unwrap()))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut c)
        .await
        .unwrap();

    let (ok, out) = super::run_to_completion(backend, &["aggregator", "--rebuild"]);
    assert!(ok, "rebuild failed:\n{out}");
    assert!(out.contains("unrecoverable: 0"), "{out}");

    let app = App::spawn(backend, &["--matches", "0"]).await;
    let after = boards_of(&app, &ids).await;
    assert_eq!(after, before, "rebuilt boards must equal the lost ones");
    drop(app);
}

async fn post_join(app: &App, token: Option<&str>, body: &str) -> (u16, Value) {
    let mut req = app
        .http
        .post(app.url("/v1/matchmaking/join"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn udp_server(ticket: &Value) -> std::net::SocketAddr {
    ticket["server"].as_str().unwrap().parse().unwrap()
}

/// Matchmaking over HTTP, then playing over UDP: bad requests are refused naming the field,
/// players of one region and skill share a room, and a connected player is in the match.
pub async fn matchmaking(backend: &Backend) {
    let app = App::spawn(backend, &["--matches", "1", "--bots", "4"]).await;
    let token = app.guest_token().await;
    let ok = r#"{"region":"eu","skill":1200}"#;
    assert_eq!(post_join(&app, None, ok).await.0, 401);
    assert_eq!(post_join(&app, Some("forged.token"), ok).await.0, 401);
    for (body, field) in [
        (r#"{"skill":1200}"#, "region"),
        (r#"{"region":"mars","skill":1200}"#, "region"),
        (r#"{"region":"eu"}"#, "skill"),
        (r#"{"region":"eu","skill":-3}"#, "skill"),
        (r#"{"region":"eu","skill":"high"}"#, "skill"),
        ("[1,2]", "body"),
        ("{not json", "body"),
    ] {
        let (status, err) = post_join(&app, Some(&token), body).await;
        assert_eq!(status, 400, "{body}: {err}");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(field), "{body}: {message}");
    }
    let (status, ticket) = post_join(&app, Some(&token), ok).await;
    assert_eq!(status, 200, "{ticket}");
    assert!(ticket["expires_at"].as_u64().unwrap() > httpkit_now());
    let match_id = ticket["match"].as_str().unwrap().to_string();
    // Same region and skill bucket: the same room. Another bucket: another room.
    let (_, same) = app.matchmake("eu", 1300).await;
    assert_eq!(same["match"], match_id.as_str());
    let (_, other) = app.matchmake("eu", 4000).await;
    assert_ne!(other["match"], match_id.as_str());

    let mut player = game_client::UdpClient::connect(
        udp_server(&ticket),
        ticket["connect_token"].as_str().unwrap().to_string(),
        game_client::LinkConditioner::perfect(),
        1,
        Duration::from_secs(5),
    )
    .await
    .expect("the ticket's token connects");
    for step in 0..60u32 {
        let a = step as f32 * 0.1;
        player
            .step(game_client::Intent {
                move_x: (a.cos() * 127.0) as i8,
                move_y: (a.sin() * 127.0) as i8,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    assert!(player.core.stats.snapshots > 30, "{:?}", player.core.stats);
    assert_eq!(player.core.stats.corrections, 0, "{:?}", player.core.stats);
    // Viewers see the player in the match.
    let guest = guest_id(&token);
    let seen = eventually(Duration::from_secs(5), || async {
        let (_, snap) = app.get(&format!("/v1/matches/{match_id}/snapshot")).await;
        snap["state"]["players"][&guest]["bot"]
            .as_bool()
            .filter(|bot| !bot)
    })
    .await;
    assert!(seen.is_some(), "player {guest} not in the match");
    player.disconnect().await;
    app.stop().await;
}

fn httpkit_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The player id inside a guest token's claims.
fn guest_id(token: &str) -> String {
    use base64::Engine;
    let body = token.split('.').next().unwrap();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .unwrap();
    serde_json::from_slice::<Value>(&json).unwrap()["sub"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A game server killed with SIGKILL mid-match: the restarted server takes its rooms over
/// from the Redis checkpoints and the events logged after them, in a new epoch; the player
/// reconnects with the same connect token; and when the match ends its results equal the
/// match leaderboard (every kill counted once, none lost).
pub async fn crash_recovery(backend: &Backend) {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Tokens outlive the process: both servers share the secret, as a deployment does.
    let env = [
        ("GRANDSTAND_UDP_ADDR", format!("127.0.0.1:{port}")),
        (
            "GRANDSTAND_TOKEN_SECRET",
            "crash-recovery-test-secret".to_string(),
        ),
    ];
    let args = [
        "--matches",
        "1",
        "--bots",
        "6",
        "--match-secs",
        "24",
        "--keyframe-secs",
        "1",
    ];
    let app = App::spawn_with(backend, &args, &env, None).await;
    let showcase = app.live_matches(1).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, ticket) = app.matchmake("eu", 800).await;
    let mut player = game_client::UdpClient::connect(
        udp_server(&ticket),
        ticket["connect_token"].as_str().unwrap().to_string(),
        game_client::LinkConditioner::perfect(),
        2,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    for _ in 0..30 {
        player.step(game_client::Intent::default()).await.unwrap();
    }
    // Let kills happen and a checkpoint land.
    let before = eventually(Duration::from_secs(20), || async {
        let (_, snap) = app.get(&format!("/v1/matches/{showcase}/snapshot")).await;
        let kills: u64 = snap["state"]["players"]
            .as_object()?
            .values()
            .map(|p| p["kills"].as_u64().unwrap_or(0))
            .sum();
        (kills >= 3).then_some(snap)
    })
    .await
    .expect("kills in the showcase match");
    // Crash right after a fresh kill: likely newer than the last checkpoint (at most a second
    // old), so the takeover must replay it from the log.
    let total_kills = |snap: &Value| -> u64 {
        snap["state"]["players"]
            .as_object()
            .map(|ps| ps.values().map(|p| p["kills"].as_u64().unwrap_or(0)).sum())
            .unwrap_or(0)
    };
    let seen = total_kills(&before);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before = eventually(Duration::from_secs(20), || async {
        let (_, snap) = app.get(&format!("/v1/matches/{showcase}/snapshot")).await;
        (total_kills(&snap) > seen).then_some(snap)
    })
    .await
    .expect("another kill");
    let old_epoch = before["epoch"].as_u64().unwrap();
    app.crash();

    let app = App::spawn_with(backend, &args, &env, None).await;
    // The takeover: same match, a newer epoch.
    let resumed = eventually(Duration::from_secs(20), || async {
        let (status, snap) = app.get(&format!("/v1/matches/{showcase}/snapshot")).await;
        (status == 200 && snap["epoch"].as_u64()? > old_epoch).then_some(snap)
    })
    .await
    .unwrap_or_else(|| panic!("match {showcase} not taken over\n{}", app.log()));
    assert_eq!(resumed["state"]["status"], "live");
    // The player comes back with the same token (the room is taken over a moment later).
    let mut back = false;
    let mut errors = Vec::new();
    for _ in 0..40 {
        match player.handshake(Duration::from_secs(1)).await {
            Ok(()) => {
                back = true;
                break;
            }
            Err(e) => errors.push(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        back,
        "player could not reconnect: {errors:?}\n{}",
        app.log()
    );
    let seen = player.core.stats.snapshots;
    for _ in 0..30 {
        player.step(game_client::Intent::default()).await.unwrap();
    }
    assert!(
        player.core.stats.snapshots > seen + 10,
        "snapshots flow again"
    );

    // Let the match end; its results must equal its leaderboard (one count per kill).
    let results = eventually(Duration::from_secs(40), || async {
        let (status, r) = app.get(&format!("/v1/matches/{showcase}/results")).await;
        (status == 200 && r["results"].as_array().is_some_and(|a| !a.is_empty())).then_some(r)
    })
    .await
    .unwrap_or_else(|| panic!("no results for {showcase}\n{}", app.log()));
    let board = eventually(Duration::from_secs(10), || async {
        let (_, b) = app
            .get(&format!("/v1/leaderboards/match:{showcase}?limit=100"))
            .await;
        let entries: HashMap<String, i64> = board_scores(&b)?;
        let want: HashMap<String, i64> = results["results"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["score"].as_i64().unwrap() > 0)
            .map(|r| {
                (
                    r["player"].as_str().unwrap().to_string(),
                    r["score"].as_i64().unwrap(),
                )
            })
            .collect();
        (entries == want).then_some(entries)
    })
    .await;
    assert!(
        board.is_some(),
        "results {results} differ from the match board\n{}",
        app.log()
    );
    app.stop().await;
}

/// A leaderboard response's scores by player.
fn board_scores(board: &Value) -> Option<HashMap<String, i64>> {
    Some(
        board["entries"]
            .as_array()?
            .iter()
            .map(|e| {
                (
                    e["player"].as_str().unwrap().to_string(),
                    e["score"].as_i64().unwrap(),
                )
            })
            .collect(),
    )
}

/// Stream caps: one user cannot hold more than its share of streams (429, others unaffected,
/// a freed place is reusable).
pub async fn connection_caps(backend: &Backend) {
    let app = App::spawn(backend, &["--matches", "1", "--max-streams-per-user", "2"]).await;
    let id = app.live_matches(1).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let url = app.ws_url(&format!("/v1/matches/{id}/stream"));
    let (ann, bob) = (app.guest_token().await, app.guest_token().await);
    let first = ws_connect(&url, Some(&ann)).await.unwrap();
    let _second = ws_connect(&url, Some(&ann)).await.unwrap();
    let refused = ws_connect(&url, Some(&ann)).await.err();
    assert_eq!(refused, Some(429), "third stream refused");
    // Over SSE too, with a JSON error naming the cap.
    let r = app
        .http
        .get(app.url(&format!("/v1/matches/{id}/stream")))
        .header("accept", "text/event-stream")
        .bearer_auth(&ann)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("per user"),
        "{body}"
    );
    // Another user is not affected.
    let mut other = ws_connect(&url, Some(&bob)).await.unwrap();
    assert_eq!(ws_json(&mut other).await["type"], "snapshot");
    // Closing one stream frees its place.
    ws_close(first).await;
    let again = eventually(Duration::from_secs(5), || async {
        ws_connect(&url, Some(&ann)).await.ok()
    })
    .await;
    assert!(again.is_some(), "a freed place is reusable");
    app.stop().await;
}

/// Two gateways share the matches by rendezvous hashing over their Redis membership; a viewer
/// connects where `GET /v1/matches/{id}/gateway` says, that gateway is killed (SIGKILL), the
/// viewer resumes on the other from its last version with no gap and no duplicate, and the
/// dead gateway drops out of the membership.
pub async fn gateway_failover(backend: &Backend) {
    let secret = "gateway-failover-test-secret".to_string();
    let env = [("GRANDSTAND_TOKEN_SECRET", secret.clone())];
    let game = App::spawn_with(
        backend,
        &["--matches", "1", "--keyframe-secs", "2"],
        &env,
        Some("game-server"),
    )
    .await;
    let caps = ["--max-streams-per-user", "2"];
    let a = App::spawn_with(backend, &caps, &env, Some("gateway")).await;
    let b = App::spawn_with(backend, &caps, &env, Some("gateway")).await;
    let match_id = eventually(Duration::from_secs(10), || async {
        let log = game.log();
        let i = log.find("match starting match_id=")?;
        Some(
            log[i + 24..]
                .chars()
                .take_while(|c| !c.is_whitespace())
                .collect::<String>(),
        )
    })
    .await
    .expect("a match started");
    let path = format!("/v1/matches/{match_id}/gateway");
    let placement = eventually(Duration::from_secs(10), || async {
        let (_, from_a) = a.get(&path).await;
        let (_, from_b) = b.get(&path).await;
        (from_a["gateways"].as_array().is_some_and(|g| g.len() == 2) && from_a == from_b)
            .then_some(from_a)
    })
    .await
    .expect("both gateways agree on the match's owners");
    let preferred = placement["url"].as_str().unwrap().to_string();
    let (on, other) = if preferred == a.base { (a, b) } else { (b, a) };
    assert_eq!(on.base, preferred);

    let token = protocol::TokenSigner::new(secret.as_bytes()).sign(&protocol::Claims {
        sub: "viewer-1".into(),
        name: "Viewer".into(),
        exp: httpkit_now() + 600,
    });
    let stream = format!("/v1/matches/{match_id}/stream");
    let mut line = VersionLine::default();
    let mut ws = ws_connect(&on.ws_url(&stream), Some(&token)).await.unwrap();
    for _ in 0..15 {
        line.observe_message(&ws_json(&mut ws).await).unwrap();
    }
    // The per-user cap holds across the two gateways (Redis leases): two streams, one on
    // each, and a third is refused by either; closing one frees a place.
    let ann = protocol::TokenSigner::new(secret.as_bytes()).sign(&protocol::Claims {
        sub: "ann".into(),
        name: "Ann".into(),
        exp: httpkit_now() + 600,
    });
    let ann_on = ws_connect(&on.ws_url(&stream), Some(&ann)).await.unwrap();
    let ann_other = ws_connect(&other.ws_url(&stream), Some(&ann))
        .await
        .unwrap();
    assert_eq!(
        ws_connect(&other.ws_url(&stream), Some(&ann)).await.err(),
        Some(429)
    );
    assert_eq!(
        ws_connect(&on.ws_url(&stream), Some(&ann)).await.err(),
        Some(429)
    );
    ws_close(ann_other).await;
    let again = eventually(Duration::from_secs(5), || async {
        ws_connect(&other.ws_url(&stream), Some(&ann)).await.ok()
    })
    .await;
    assert!(
        again.is_some(),
        "a place freed on one gateway is free fleet-wide"
    );
    drop(ann_on);

    on.crash();
    drop(ws);
    // The viewer resumes on the surviving gateway.
    let resume = format!("{stream}?since={}", line.since());
    let mut ws = ws_connect(&other.ws_url(&resume), Some(&token))
        .await
        .unwrap();
    for _ in 0..15 {
        line.observe_message(&ws_json(&mut ws).await).unwrap();
    }
    assert_eq!(
        line.snapshots, 1,
        "resumed within the window: no second snapshot"
    );
    ws_close(ws).await;
    // The dead gateway lapses from the membership.
    let alone = eventually(Duration::from_secs(10), || async {
        let (_, p) = other.get(&path).await;
        (p["gateways"].as_array()?.len() == 1).then_some(p)
    })
    .await
    .expect("the killed gateway left the membership");
    assert_eq!(alone["url"], other.base.as_str());
    other.stop().await;
    game.stop().await;
}
