//! Feed format v2 end to end: asked for with `?format=v2` or the `grandstand.v2` subprotocol,
//! compressed with permessage-deflate when offered (the same bytes for every viewer), decoded
//! by a client into the same state a fresh snapshot shows, resumable like v1; bad formats,
//! subprotocols and compressed frames refused with the documented errors.

use std::time::Duration;

use protocol::feed::v2::V2View;
use protocol::ws;
use serde_json::Value;
use testkit::wsclient::{Offer, RawWs, BROWSER_DEFLATE};

use crate::common::clients::Sse;
use crate::common::{App, Backend, VersionLine};

const WAIT: Duration = Duration::from_secs(10);

async fn open(app: &App, path: &str, offer: Offer) -> RawWs {
    RawWs::connect(&app.base, path, &offer)
        .await
        .unwrap()
        .unwrap_or_else(|r| panic!("refused {}: {}", r.status, r.body))
}

async fn refused(app: &App, path: &str, offer: Offer) -> (u16, Value) {
    match RawWs::connect(&app.base, path, &offer).await.unwrap() {
        Ok(_) => panic!("{path} was let in"),
        Err(r) => (
            r.status,
            serde_json::from_str(&r.body).unwrap_or(Value::Null),
        ),
    }
}

pub async fn feed_v2(backend: &Backend) {
    let app = App::spawn(backend, &["--matches", "1", "--bots", "12"]).await;
    let token = app.guest_token().await;
    let id = app.live_match_ids(1).await.remove(0);
    let path = format!("/v1/matches/{id}/stream");
    let offer = |extensions: Option<&str>, protocol: Option<&str>| Offer {
        extensions: extensions.map(str::to_string),
        protocol: protocol.map(str::to_string),
        token: Some(token.clone()),
    };

    // A browser-like viewer: v2 with permessage-deflate.
    let mut a = open(
        &app,
        &format!("{path}?format=v2"),
        offer(Some(BROWSER_DEFLATE), None),
    )
    .await;
    assert!(a.deflate, "permessage-deflate accepted for v2");
    assert_eq!(a.protocol, None, "no subprotocol asked, none chosen");
    let first = a.json(WAIT).await.unwrap();
    assert_eq!(first["type"], "snapshot", "{first}");
    assert!(
        first["state"]["roster"]
            .as_array()
            .is_some_and(|r| r.len() == 12),
        "{first}"
    );
    let mut view = V2View::from_snapshot(&first).unwrap();
    let mut line = VersionLine::default();
    line.observe_message(&first).unwrap();
    let mut text_bytes = 0usize;
    for _ in 0..40 {
        let m = a.json(WAIT).await.unwrap();
        text_bytes += m.to_string().len();
        line.observe_message(&m).unwrap();
        view.apply(&m).unwrap();
    }
    assert!(
        (a.wire_bytes as usize) < text_bytes,
        "compressed on the wire: {} bytes for {} of JSON",
        a.wire_bytes,
        text_bytes
    );

    // A second v2 viewer, by subprotocol: its fresh snapshot is the state the first one
    // decoded, once the first reaches the same version.
    let mut b = open(&app, &path, offer(None, Some("chat.v1, grandstand.v2"))).await;
    assert_eq!(b.protocol.as_deref(), Some("grandstand.v2"));
    assert!(!b.deflate, "nothing offered, nothing compressed");
    let snap = b.json(WAIT).await.unwrap();
    let fresh = V2View::from_snapshot(&snap).unwrap();
    let target = (
        snap["epoch"].as_u64().unwrap(),
        snap["version"].as_u64().unwrap(),
    );
    while line.position().unwrap() < target {
        let m = a.json(WAIT).await.unwrap();
        line.observe_message(&m).unwrap();
        view.apply(&m).unwrap();
    }
    assert_eq!(
        line.position().unwrap(),
        target,
        "a fresh snapshot is on the version line"
    );
    assert_eq!(
        view.players, fresh.players,
        "deltas applied == a fresh snapshot"
    );
    assert_eq!(view.present_roster(), fresh.present_roster());

    // Resume in v2 from a position inside the window: the retained deltas, no snapshot.
    let resume = format!("{path}?format=v2&since={}", line.since());
    drop(a);
    let mut c = open(&app, &resume, offer(Some(BROWSER_DEFLATE), None)).await;
    let m = c.json(WAIT).await.unwrap();
    assert_ne!(m["type"], "snapshot", "{m}");
    line.observe_message(&m).unwrap();
    view.apply(&m).unwrap();

    // SSE speaks v2 too (uncompressed).
    let mut sse = Sse::connect(
        &app.http,
        &app.url(&format!("{path}?format=v2")),
        &token,
        None,
    )
    .await
    .unwrap();
    let s = sse.json().await;
    assert_eq!(s["type"], "snapshot");
    assert!(s["state"]["roster"].is_array(), "{s}");

    // A v1 viewer that offers deflate is served v1, uncompressed.
    let mut v1 = open(&app, &path, offer(Some(BROWSER_DEFLATE), None)).await;
    assert!(!v1.deflate);
    let s = v1.json(WAIT).await.unwrap();
    assert!(s["state"]["players"].is_object(), "v1 by default: {s}");

    // Bad input, refused before any upgrade and naming the field.
    let (status, body) = refused(&app, &format!("{path}?format=v9"), offer(None, None)).await;
    assert_eq!(
        (
            status,
            body["error"]["message"]
                .as_str()
                .map(|m| m.contains("format"))
        ),
        (400, Some(true)),
        "{body}"
    );
    let (status, body) = refused(&app, &path, offer(None, Some("chat"))).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Sec-WebSocket-Protocol"),
        "{body}"
    );
    let (status, _) = refused(
        &app,
        &format!("{path}?format=v1"),
        offer(None, Some("grandstand.v2")),
    )
    .await;
    assert_eq!(status, 400, "a query and a subprotocol that disagree");
    let r = app
        .http
        .get(app.url(&format!("{path}?format=v3")))
        .header("accept", "text/event-stream")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "SSE checks the format too");

    // A compressed frame that inflates past the 4 KiB cap: 1009, that socket only.
    let mut bomb = open(
        &app,
        &format!("{path}?format=v2"),
        offer(Some(BROWSER_DEFLATE), None),
    )
    .await;
    bomb.json(WAIT).await.unwrap();
    bomb.send(
        ws::OP_TEXT,
        &ws::deflate_message(&vec![b'a'; 64 * 1024]),
        true,
    )
    .await
    .unwrap();
    assert_eq!(bomb.closed_with(WAIT).await.unwrap(), Some(1009));
    // A compressed frame that does not inflate: 1007.
    let mut garbage = open(
        &app,
        &format!("{path}?format=v2"),
        offer(Some(BROWSER_DEFLATE), None),
    )
    .await;
    garbage.json(WAIT).await.unwrap();
    garbage
        .send(ws::OP_BINARY, &[0xff, 0xfe, 0x00, 0x12], true)
        .await
        .unwrap();
    assert_eq!(garbage.closed_with(WAIT).await.unwrap(), Some(1007));
    // Compressed without having negotiated deflate: a protocol error.
    let mut rogue = open(&app, &format!("{path}?format=v2"), offer(None, None)).await;
    rogue.json(WAIT).await.unwrap();
    rogue
        .send(ws::OP_TEXT, &ws::deflate_message(b"hi"), true)
        .await
        .unwrap();
    assert_eq!(rogue.closed_with(WAIT).await.unwrap(), Some(1002));
    // Meanwhile the other viewers streamed on without a break.
    for _ in 0..5 {
        let m = b.json(WAIT).await.unwrap();
        assert!(m["type"] == "delta" || m["type"] == "event", "{m}");
    }
    let metrics = app.metrics_text().await;
    for code in ["1002", "1007", "1009"] {
        assert!(
            metrics.contains(&format!(
                "gw_viewer_frames_refused_total{{code=\"{code}\"}} 1"
            )),
            "{code} counted"
        );
    }
    drop(app);
}

/// Events-only feeds for overlays: `?types=event` sends the snapshot, then events only (each
/// still on the match's version line), `?kinds=` narrows them; a filtered viewer resumes from
/// its last event's position with nothing missed and nothing repeated; bad values are refused
/// naming the field.
pub async fn filtered_streams(backend: &Backend) {
    let app = App::spawn(backend, &["--matches", "1", "--bots", "16"]).await;
    let token = app.guest_token().await;
    let id = app.live_match_ids(1).await.remove(0);
    let path = format!("/v1/matches/{id}/stream");
    let offer = Offer {
        extensions: None,
        protocol: None,
        token: Some(token.clone()),
    };
    // A reference viewer sees everything; the filtered one only events.
    let mut all = open(&app, &path, offer.clone()).await;
    let mut events = open(&app, &format!("{path}?types=event"), offer.clone()).await;
    let first = events.json(WAIT).await.unwrap();
    assert_eq!(first["type"], "snapshot");
    let start = first["version"].as_u64().unwrap();
    let mut seen = Vec::new();
    while seen.len() < 6 {
        let m = events.json(WAIT).await.unwrap();
        assert_eq!(m["type"], "event", "{m}");
        seen.push(m["version"].as_u64().unwrap());
    }
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]) && seen[0] > start,
        "{seen:?}"
    );
    // Resume after a cut: the events in between, none twice.
    let last = *seen.last().unwrap();
    let epoch = first["epoch"].as_u64().unwrap();
    drop(events);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut resumed = open(
        &app,
        &format!("{path}?types=event&since={epoch}:{last}"),
        offer.clone(),
    )
    .await;
    let mut after = Vec::new();
    while after.len() < 4 {
        let m = resumed.json(WAIT).await.unwrap();
        assert_eq!(
            m["type"], "event",
            "a resume inside the window replays events: {m}"
        );
        after.push(m["version"].as_u64().unwrap());
    }
    assert!(after[0] > last, "{after:?} after {last}");
    // Against the reference line: every event the filtered viewer was sent, and nothing else.
    let mut reference = Vec::new();
    while reference.last().is_none_or(|&(v, _)| v < after[3]) {
        let m = all.json(WAIT).await.unwrap();
        if let (Some(v), Some(t)) = (m["version"].as_u64(), m["type"].as_str()) {
            reference.push((v, t.to_string()));
        }
    }
    let expected: Vec<u64> = reference
        .iter()
        .filter(|(v, t)| t == "event" && *v > last && *v <= after[3])
        .map(|(v, _)| *v)
        .collect();
    assert_eq!(
        after, expected,
        "the filtered resume skipped only what the filter drops"
    );
    // Kinds narrow the events; bad values are 400s naming the field.
    let mut kills = open(
        &app,
        &format!("{path}?types=event&kinds=kill"),
        offer.clone(),
    )
    .await;
    assert_eq!(kills.json(WAIT).await.unwrap()["type"], "snapshot");
    let k = kills.json(Duration::from_secs(20)).await.unwrap();
    assert_eq!(
        (k["type"].as_str(), k["kind"].as_str()),
        (Some("event"), Some("kill")),
        "{k}"
    );
    for (query, field) in [("types=goals", "types"), ("kinds=kill,goal", "kinds")] {
        let (status, body) = refused(&app, &format!("{path}?{query}"), offer.clone()).await;
        assert_eq!(status, 400);
        assert!(
            body["error"]["message"].as_str().unwrap().contains(field),
            "{body}"
        );
    }
    drop(app);
}
