//! Viewers that misbehave (stop reading, vanish, dribble their request) and the viewers next to
//! them, who must not notice.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::clients::{ws_connect, ws_json, Sse};
use super::{App, Backend, VersionLine};

/// A counter or gauge from the app's `/metrics`, summed over its labels.
pub async fn metric(app: &App, name: &str) -> f64 {
    let text = app.metrics_text().await;
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A guest token and the stream path of the app's one live match.
async fn viewer_of_one_match(app: &App) -> (String, String) {
    let token = app.guest_token().await;
    let id = app.live_match_ids(1).await.remove(0);
    (token, format!("/v1/matches/{id}/stream"))
}

fn host_port(app: &App) -> String {
    app.base.trim_start_matches("http://").to_string()
}

/// A TCP connection whose receive buffer is as small as the kernel allows, so a viewer that
/// stops reading backs up the gateway within a few kilobytes.
async fn tiny_window(app: &App) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    socket
        .connect(host_port(app).parse().unwrap())
        .await
        .unwrap()
}

async fn slow_ws(app: &App, path: &str, token: &str) -> WebSocketStream<TcpStream> {
    let mut req = app.ws_url(path).into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, _) = tokio_tungstenite::client_async(req, tiny_window(app).await)
        .await
        .unwrap();
    ws
}

/// A viewer that stops reading fills its bounded queue and gets one snapshot instead of the
/// backlog once it reads again; a viewer next to it streams every version on time meanwhile.
pub async fn slow_viewer(backend: &Backend) {
    let app = App::spawn(
        backend,
        &[
            "--matches",
            "1",
            "--spectator-hz",
            "30",
            "--viewer-queue",
            "8",
            "--send-buffer",
            "4096",
        ],
    )
    .await;
    let (token, path) = viewer_of_one_match(&app).await;

    let mut slow = slow_ws(&app, &path, &token).await;
    let mut slow_line = VersionLine::default();
    let first = match slow.next().await {
        Some(Ok(Message::Text(t))) => serde_json::from_str::<Value>(&t).unwrap(),
        other => panic!("no snapshot: {other:?}"),
    };
    slow_line.observe_message(&first).unwrap();

    // The bystander reads while the slow viewer does not read at all.
    let mut fast = ws_connect(&app.ws_url(&path), Some(&token)).await.unwrap();
    let mut line = VersionLine::default();
    let mut worst_gap = Duration::ZERO;
    let substitutions_before = metric(&app, "gw_snapshot_substitutions_total").await;
    let started = Instant::now();
    let mut last = Instant::now();
    loop {
        line.observe_message(&ws_json(&mut fast).await).unwrap();
        worst_gap = worst_gap.max(last.elapsed());
        last = Instant::now();
        if line.messages % 30 == 0
            && metric(&app, "gw_snapshot_substitutions_total").await > substitutions_before
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the slow viewer's queue never overflowed"
        );
    }
    // Spectator deltas come every 33 ms; a bystander held up by the slow viewer would see a
    // pause of the slow viewer's write deadline or more.
    assert_eq!(line.snapshots, 1, "the bystander never needed a snapshot");
    assert!(
        worst_gap < Duration::from_secs(2),
        "the bystander waited {worst_gap:?} for a message"
    );
    assert_eq!(
        metric(&app, "gw_stalled_viewers_closed_total").await,
        0.0,
        "the slow viewer is still within its deadline"
    );

    // Reading again, the slow viewer gets a valid line: what was in flight, then a snapshot
    // that replaces the dropped backlog, then live deltas.
    let deadline = Instant::now() + Duration::from_secs(20);
    while slow_line.snapshots < 2 || slow_line.messages < 60 {
        assert!(Instant::now() < deadline, "no snapshot after the overflow");
        let msg = tokio::time::timeout(Duration::from_secs(5), slow.next())
            .await
            .unwrap();
        match msg {
            Some(Ok(Message::Text(t))) => slow_line
                .observe_message(&serde_json::from_str(&t).unwrap())
                .unwrap(),
            Some(Ok(_)) => {}
            other => panic!("slow viewer's stream ended: {other:?}"),
        }
    }
    // And the bystander is still on its unbroken line.
    for _ in 0..10 {
        line.observe_message(&ws_json(&mut fast).await).unwrap();
    }
    assert_eq!(line.snapshots, 1);
    app.stop().await;
}

/// A WebSocket viewer that stops answering pings is closed as idle; an SSE viewer that stops
/// reading is closed at the stall deadline and its connection torn down; a client dribbling
/// its request head is cut off. The bystander streams on throughout.
pub async fn stalled_and_half_open(backend: &Backend) {
    let app = App::spawn(
        backend,
        &[
            "--matches",
            "1",
            "--spectator-hz",
            "30",
            "--ping-ms",
            "300",
            "--stall-secs",
            "2",
            "--header-timeout-secs",
            "2",
            "--send-buffer",
            "4096",
        ],
    )
    .await;
    let (token, path) = viewer_of_one_match(&app).await;
    let mut bystander = ws_connect(&app.ws_url(&path), Some(&token)).await.unwrap();
    let mut line = VersionLine::default();
    line.observe_message(&ws_json(&mut bystander).await)
        .unwrap();

    // Half-open WebSocket: it never reads, so it never answers a ping. It is closed as idle,
    // and the close (with its reason) is what it finds when it reads again.
    let mut silent = raw_ws(&app, &path, &token).await;
    // SSE viewer that stops reading, on a small receive window.
    let mut sse_socket = tiny_window(&app).await;
    sse_socket
        .write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nAuthorization: Bearer {token}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // Slowloris: a request head that never ends.
    let mut dribble = TcpStream::connect(host_port(&app)).await.unwrap();
    dribble
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n").as_bytes())
        .await
        .unwrap();
    let dribbler = tokio::spawn(async move {
        let started = Instant::now();
        for i in 0.. {
            let header = format!("X-Dribble-{i}: y\r\n");
            if dribble.write_all(header.as_bytes()).await.is_err() {
                break;
            }
            let mut buf = [0u8; 512];
            match tokio::time::timeout(Duration::from_millis(500), dribble.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => {
                    let text = String::from_utf8_lossy(&buf[..n]).to_string();
                    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
                    break;
                }
                Err(_) => {}
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "a dribbled request head is never cut off"
            );
        }
        started.elapsed()
    });

    let stalled_before = metric(&app, "gw_stalled_viewers_closed_total").await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        line.observe_message(&ws_json(&mut bystander).await)
            .unwrap();
    }
    let cut_after = dribbler.await.unwrap();
    assert!(cut_after < Duration::from_secs(6), "{cut_after:?}");

    // The silent WebSocket finds frames, then the idle close.
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut bytes)).await;
    let (code, reason) = close_frame(&bytes).expect("a close frame after the frames");
    assert_eq!(code, 1001);
    assert!(reason.contains("no pong"), "{reason}");
    assert!(reason.contains("retry-after="), "{reason}");

    // The stalled SSE viewer was closed and its connection dropped: reading it now ends.
    assert!(
        metric(&app, "gw_stalled_viewers_closed_total").await > stalled_before,
        "the SSE viewer that stopped reading was not closed"
    );
    // Reading again, it finds what was in flight and then the close event with its reason
    // (or, had it waited past the connection's write deadline, a dropped connection).
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let outcome = loop {
        assert!(
            Instant::now() < deadline,
            "the stalled SSE viewer was never closed"
        );
        let mut buf = vec![0u8; 64 * 1024];
        match tokio::time::timeout(Duration::from_secs(5), sse_socket.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break "dropped",
            Ok(Ok(n)) => {
                seen.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&seen);
                if let Some(at) = text.find("event: close") {
                    assert!(text[at..].contains("stopped reading"), "{}", &text[at..]);
                    break "closed";
                }
            }
            Err(_) => panic!("the stalled SSE viewer's connection went quiet without a close"),
        }
    };
    assert!(matches!(outcome, "closed" | "dropped"));

    // Through all of it the bystander's line had no gap and needed no snapshot.
    for _ in 0..10 {
        line.observe_message(&ws_json(&mut bystander).await)
            .unwrap();
    }
    assert_eq!(line.snapshots, 1);
    // A fresh SSE viewer is served normally afterwards.
    let mut sse = Sse::connect(&app.http, &app.url(&path), &token, None)
        .await
        .unwrap();
    assert_eq!(sse.json().await["type"], "snapshot");
    app.stop().await;
}

/// A WebSocket handshake by hand, for a client that then does nothing at all (no pongs, no
/// close reply): the half-open peer.
async fn raw_ws(app: &App, path: &str, token: &str) -> TcpStream {
    let mut socket = TcpStream::connect(host_port(app)).await.unwrap();
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket
}

/// The code and reason of the first close frame in a server's byte stream (after the HTTP
/// response head); server frames are never masked.
fn close_frame(bytes: &[u8]) -> Option<(u16, String)> {
    let head = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    assert!(bytes.starts_with(b"HTTP/1.1 101"), "handshake refused");
    let mut at = head + 4;
    while at + 2 <= bytes.len() {
        let opcode = bytes[at] & 0x0f;
        let (len, header) = match bytes[at + 1] & 0x7f {
            126 => (
                u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize,
                4,
            ),
            127 => (
                u64::from_be_bytes(bytes[at + 2..at + 10].try_into().ok()?) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        let payload = bytes.get(at + header..at + header + len)?;
        if opcode == 0x8 {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            return Some((code, String::from_utf8_lossy(&payload[2..]).to_string()));
        }
        at += header + len;
    }
    None
}

/// A match broadcast with a delay: the first viewer waits it out, every message it gets left
/// the log at least the delay earlier (the debug publish stamp says when), a second viewer
/// joins at once on the same delayed line, events arrive without the log's bookkeeping fields,
/// and neither the cold-load API nor the match list gives the live game away.
pub async fn broadcast_delay(backend: &Backend) {
    let delay = Duration::from_millis(1500);
    let app = App::spawn(
        backend,
        &[
            "--matches",
            "1",
            "--bots",
            "6",
            "--broadcast-delay-ms",
            "1500",
            "--stamp-publish-time",
        ],
    )
    .await;
    let listed = app.live_matches(1).await.remove(0);
    let id = listed["id"].as_str().unwrap().to_string();
    assert_eq!(listed["broadcast_delay_ms"], 1500, "{listed}");
    assert_eq!(listed["top"], serde_json::json!([]), "{listed}");
    let (status, body) = app.get(&format!("/v1/matches/{id}/snapshot")).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "delayed_broadcast");

    let token = app.guest_token().await;
    let path = format!("/v1/matches/{id}/stream");
    let opened = Instant::now();
    let mut ws = ws_connect(&app.ws_url(&path), Some(&token)).await.unwrap();
    let first = ws_json(&mut ws).await;
    assert_eq!(first["type"], "snapshot", "{first}");
    assert_eq!(first["state"]["broadcast_delay_ms"], 1500);
    assert!(
        opened.elapsed() >= delay - Duration::from_millis(100),
        "the first viewer of a fresh hub waits the delay, got {:?}",
        opened.elapsed()
    );
    let mut line = VersionLine::default();
    line.observe_message(&first).unwrap();

    let behind = |m: &Value| {
        let published = m["published_us"].as_u64().expect("stamped");
        Duration::from_micros(protocol::now_us().saturating_sub(published))
    };
    let mut least = Duration::MAX;
    let mut event = None;
    let started = Instant::now();
    while event.is_none() || line.messages < 30 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no event within 30 s"
        );
        let m = ws_json(&mut ws).await;
        line.observe_message(&m).unwrap();
        least = least.min(behind(&m));
        if m["type"] == "event" {
            event = Some(m);
        }
    }
    assert!(
        least >= delay,
        "a message reached the viewer {least:?} after its publication"
    );
    assert!(least < delay + Duration::from_secs(1), "{least:?}");
    let event = event.unwrap();
    assert!(
        event["kind"].is_string() && event["at_ms"].is_u64(),
        "{event}"
    );
    assert!(
        event.get("seq").is_none() && event.get("region").is_none(),
        "the log's bookkeeping reached a viewer: {event}"
    );

    // The hub is warm: the next viewer gets the delayed snapshot right away.
    let opened = Instant::now();
    let mut second = ws_connect(&app.ws_url(&path), Some(&token)).await.unwrap();
    let snap = ws_json(&mut second).await;
    assert_eq!(snap["type"], "snapshot");
    assert!(opened.elapsed() < delay, "{:?}", opened.elapsed());
    let next = ws_json(&mut second).await;
    assert!(behind(&next) >= delay, "{next}");
    app.stop().await;
}
