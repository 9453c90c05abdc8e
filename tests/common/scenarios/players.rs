//! Players: matchmaking over HTTP, play over UDP, a game server crash taken over.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use super::*;
use crate::common::{eventually, App, Backend};

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
    assert!(ticket["expires_at"].as_u64().unwrap() > protocol::now_secs());
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
