//! Leaderboards and history: exactly once, across restarts, outages and rebuilds.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use super::*;
use crate::common::clients::{ws_connect, ws_json, Sse};
use crate::common::{eventually, App, Backend};

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
    // Someone not on the board: 404, or with if_absent=empty no rows and the board's total.
    let (status, _) = app.get("/v1/leaderboards/global/around/nobody-here").await;
    assert_eq!(status, 404);
    let (status, absent) = app
        .get("/v1/leaderboards/global/around/nobody-here?if_absent=empty")
        .await;
    assert_eq!(status, 200, "{absent}");
    assert_eq!(
        absent["entries"].as_array().map(Vec::len),
        Some(0),
        "{absent}"
    );
    assert!(absent["total"].as_u64().unwrap() > 0, "{absent}");
    let (status, _) = app
        .get("/v1/leaderboards/global/around/nobody-here?if_absent=maybe")
        .await;
    assert_eq!(status, 400);

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

/// The history store (PostgreSQL) disappears for a while as matches end: the leaderboards keep
/// flowing, and once it is back every result and every kill is in it, counted once.
pub async fn history_outage(backend: &Backend) {
    use crate::common::proxy::Proxy;
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
    let redis_client = redis::Client::open(crate::common::REDIS_URL).unwrap();
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

    let client = redis::Client::open(crate::common::REDIS_URL).unwrap();
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

    let (ok, out) = crate::common::run_to_completion(backend, &["aggregator", "--rebuild"]);
    assert!(ok, "rebuild failed:\n{out}");
    assert!(out.contains("unrecoverable: 0"), "{out}");

    let app = App::spawn(backend, &["--matches", "0"]).await;
    let after = boards_of(&app, &ids).await;
    assert_eq!(after, before, "rebuilt boards must equal the lost ones");
    drop(app);
}
