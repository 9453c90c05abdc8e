//! The viewer contract end to end: both transports, resume, bad input, caps, failover.

use std::time::Duration;

use futures::SinkExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

use super::*;
use crate::common::clients::{ws_close, ws_connect, ws_json, Sse};
use crate::common::{eventually, App, Backend, VersionLine};

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
/// dead gateway drops out of the membership. The API counts the viewers of every gateway.
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
        exp: protocol::now_secs() + 600,
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
        exp: protocol::now_secs() + 600,
    });
    let ann_on = ws_connect(&on.ws_url(&stream), Some(&ann)).await.unwrap();
    let ann_other = ws_connect(&other.ws_url(&stream), Some(&ann))
        .await
        .unwrap();
    // The API, a process of its own, counts the match's viewers on both gateways (from their
    // membership heartbeats): viewer-1 and ann on one, ann on the other.
    let api = App::spawn_with(backend, &[], &env, Some("snapshot-api")).await;
    let counted = eventually(Duration::from_secs(10), || async {
        let (_, list) = api.get("/v1/matches").await;
        let listed = list["matches"]
            .as_array()?
            .iter()
            .find(|m| m["id"] == match_id.as_str())?
            .clone();
        (listed["viewers"] == 3).then_some(listed)
    })
    .await;
    assert!(
        counted.is_some(),
        "the API never counted 3 viewers over both gateways"
    );
    api.stop().await;
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

/// A game server killed mid-match: its viewers (on a gateway of their own) are told
/// `producer_down` within a few seconds instead of silence, then `producer_up` when another
/// server takes the match over, right before the new epoch's snapshot.
pub async fn producer_status(backend: &Backend) {
    let secret = "producer-status-test-secret".to_string();
    let env = [("GRANDSTAND_TOKEN_SECRET", secret.clone())];
    let args = ["--matches", "1", "--keyframe-secs", "2"];
    let game = App::spawn_with(backend, &args, &env, Some("game-server")).await;
    let gateway = App::spawn_with(backend, &[], &env, Some("gateway")).await;
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
    // Checkpoints are written once a second: let one be saved before the crash.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let token = protocol::TokenSigner::new(secret.as_bytes()).sign(&protocol::Claims {
        sub: "viewer-1".into(),
        name: "Viewer".into(),
        exp: protocol::now_secs() + 600,
    });
    let stream = format!("/v1/matches/{match_id}/stream");
    let mut ws = ws_connect(&gateway.ws_url(&stream), Some(&token))
        .await
        .unwrap();
    let mut line = VersionLine::default();
    for _ in 0..5 {
        line.observe_message(&ws_json(&mut ws).await).unwrap();
    }
    let epoch = line.position().unwrap().0;
    game.crash();
    let crashed = std::time::Instant::now();
    let down = loop {
        let m = ws_json(&mut ws).await;
        line.observe_message(&m).unwrap();
        if m["type"] == "status" {
            break m;
        }
        assert!(
            crashed.elapsed() < Duration::from_secs(10),
            "no status after the crash"
        );
    };
    assert_eq!(down["status"], "producer_down", "{down}");
    assert_eq!(down["epoch"], epoch, "{down}");
    let told_after = crashed.elapsed();
    assert!(
        told_after < Duration::from_secs(5),
        "told after {told_after:?}"
    );
    // Another server takes the match over from its checkpoint, in a new epoch.
    let taker = App::spawn_with(backend, &args, &env, Some("game-server")).await;
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let m = ws_json(&mut ws).await;
        line.observe_message(&m).unwrap();
        seen.push(format!("{}:{}", m["type"], m["status"]));
        if m["type"] == "snapshot" && m["epoch"].as_u64() > Some(epoch) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no takeover: {seen:?}"
        );
    }
    let up = seen.iter().position(|s| s == "\"status\":\"producer_up\"");
    assert_eq!(
        up,
        Some(seen.len() - 2),
        "producer_up right before the new epoch's snapshot: {seen:?}"
    );
    drop(taker);
    drop(gateway);
}
