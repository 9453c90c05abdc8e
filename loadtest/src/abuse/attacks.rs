//! The attacks, one function each, named by [`Attack`]. Each runs until its window ends and
//! counts every attempt as refused the way the contract says, or as unexpected with a note.
//! Long because there are nine attacks, each a small client of its own.

use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use game_client::{LinkConditioner, UdpClient};
use protocol::net::{DenyReason, Packet};
use protocol::{Claims, ConnectClaims, TokenSigner};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use super::{Outcome, Target};
use crate::process::open_socket;
type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// Opens a viewer WebSocket on the match's stream from `source` (`None`: no socket).
async fn open_stream(
    t: &Target,
    source: &str,
    token: Option<&str>,
) -> Option<Result<Ws, tokio_tungstenite::tungstenite::Error>> {
    let mut req = format!("ws://{}{}", t.addr, t.stream_path())
        .into_client_request()
        .unwrap();
    if let Some(token) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let socket = open_socket(source, &t.http).await.ok()?;
    Some(
        tokio_tungstenite::client_async(req, socket)
            .await
            .map(|(ws, _)| ws),
    )
}

/// The status of a WebSocket handshake on the stream (`Ok(())` when it was let in).
async fn ws_handshake(t: &Target, source: &str, token: Option<&str>) -> Result<(), u16> {
    match open_stream(t, source, token).await {
        None => Err(0),
        Some(Ok(_)) => Ok(()),
        Some(Err(tokio_tungstenite::tungstenite::Error::Http(res))) => Err(res.status().as_u16()),
        Some(Err(_)) => Err(0),
    }
}

/// Sends a connect request and waits for the answer.
async fn udp_connect(t: &Target, token: &str) -> Option<Packet> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.ok()?;
    let p = Packet::ConnectRequest {
        token: token.to_string(),
    };
    socket.send_to(&p.encode(), t.udp).await.ok()?;
    let mut buf = [0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    Packet::decode(&buf[..n]).ok()
}

fn udp_denied(outcome: &Outcome, answer: Option<Packet>, want: DenyReason) {
    match answer {
        Some(Packet::ConnectDenied { reason }) if reason == want => outcome.refused(),
        other => outcome.unexpected(format!("UDP connect answered {other:?}, wanted {want:?}")),
    }
}

fn http_status(outcome: &Outcome, status: Result<(), u16>, want: &[u16]) {
    match status {
        Err(s) if want.contains(&s) => outcome.refused(),
        Ok(()) => outcome.unexpected("let in".into()),
        Err(s) => outcome.unexpected(format!("status {s}")),
    }
}

async fn forged_tokens(t: &Target, outcome: &Arc<Outcome>, until: Instant) -> &'static str {
    let wrong = TokenSigner::new(b"not-the-server-secret-at-all-000000");
    let good = t.token("forger");
    let http = reqwest::Client::new();
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let token = match n % 3 {
            // Signed with another key.
            0 => wrong.sign(&Claims {
                sub: "admin".into(),
                name: "admin".into(),
                exp: u64::MAX / 2,
            }),
            // A real token with its claims edited.
            1 => {
                let (claims, sig) = good.rsplit_once('.').unwrap_or((&good, ""));
                format!("{}x.{sig}", claims)
            }
            // Garbage.
            _ => format!("{n:x}.{n:x}"),
        };
        let source = format!("127.0.4.{}", 1 + n % 200);
        http_status(
            outcome,
            ws_handshake(t, &source, Some(&token)).await,
            &[401],
        );
        let status = http
            .post(format!("{}/v1/matchmaking/join", t.http))
            .bearer_auth(&token)
            .json(&serde_json::json!({"region": "eu", "skill": 1}))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        http_status(outcome, Err(status), &[401]);
        let connect = wrong.derive("connect").sign(&ConnectClaims {
            sub: "x".into(),
            name: "x".into(),
            match_id: t.match_id.clone(),
            server: t.udp.to_string(),
            exp: u64::MAX / 2,
            nonce: n,
        });
        udp_denied(
            outcome,
            udp_connect(t, &connect).await,
            DenyReason::BadToken,
        );
    }
    "WS 401, REST 401, UDP deny BadToken"
}

async fn expired_tokens(t: &Target, outcome: &Arc<Outcome>, until: Instant) -> &'static str {
    // From many addresses, so it is the expiry that refuses them, not the per-address
    // handshake rate.
    let clients: Vec<reqwest::Client> = (1..=50)
        .filter_map(|n| {
            reqwest::Client::builder()
                .local_address(format!("127.0.9.{n}").parse::<std::net::IpAddr>().ok())
                .build()
                .ok()
        })
        .collect();
    let connect_signer = t.signer.derive("connect");
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let past = protocol::now_secs() - 1 - n % 3600;
        let token = t.signer.sign(&Claims {
            sub: format!("old-{n}"),
            name: "old".into(),
            exp: past,
        });
        let source = format!("127.0.5.{}", 1 + n % 200);
        http_status(
            outcome,
            ws_handshake(t, &source, Some(&token)).await,
            &[401],
        );
        let status = clients[n as usize % clients.len()]
            .get(format!("{}{}", t.http, t.stream_path()))
            .header("accept", "text/event-stream")
            .bearer_auth(&token)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        http_status(outcome, Err(status), &[401]);
        let connect = connect_signer.sign(&ConnectClaims {
            sub: format!("old-{n}"),
            name: "old".into(),
            match_id: t.match_id.clone(),
            server: t.udp.to_string(),
            exp: past,
            nonce: n,
        });
        udp_denied(outcome, udp_connect(t, &connect).await, DenyReason::Expired);
    }
    "WS/SSE 401 expired, UDP deny Expired"
}

async fn replayed_token(
    t: &Target,
    outcome: &Arc<Outcome>,
    until: Instant,
) -> anyhow::Result<&'static str> {
    let http = reqwest::Client::new();
    let mut k = 0;
    while Instant::now() < until {
        k += 1;
        // A real player joins...
        let a: Value = http
            .post(format!("{}/v1/matchmaking/join", t.http))
            .bearer_auth(t.token(&format!("victim-{k}")))
            .json(&serde_json::json!({"region": "eu", "skill": 1000}))
            .send()
            .await?
            .json()
            .await?;
        let token = a["connect_token"].as_str().unwrap_or_default().to_string();
        let Ok(mut victim) = UdpClient::connect(
            a["server"].as_str().unwrap_or_default().parse()?,
            token.clone(),
            LinkConditioner::perfect(),
            k,
            Duration::from_secs(3),
        )
        .await
        else {
            outcome.unexpected("the victim could not connect".into());
            continue;
        };
        // ...and someone who sniffed its token replays it from elsewhere.
        for _ in 0..20 {
            udp_denied(outcome, udp_connect(t, &token).await, DenyReason::Replayed);
        }
        victim.disconnect().await;
    }
    Ok("UDP deny Replayed (the token is bound to the first address)")
}

async fn stream_flood(t: &Target, outcome: &Arc<Outcome>, until: Instant) -> &'static str {
    let token = t.token("one-greedy-user");
    while Instant::now() < until {
        let mut held = Vec::new();
        let mut admitted = 0;
        for n in 0..40u32 {
            let source = format!("127.0.6.{}", 1 + n);
            let Some(opened) = open_stream(t, &source, Some(&token)).await else {
                continue;
            };
            match opened {
                Ok(ws) => {
                    admitted += 1;
                    // Up to the per-user cap (8) is the contract; more is a leak.
                    if admitted > 8 {
                        outcome.unexpected(format!("stream {admitted} of one user let in"));
                    } else {
                        outcome.attempts.fetch_add(1, Ordering::Relaxed);
                    }
                    held.push(ws);
                }
                Err(tokio_tungstenite::tungstenite::Error::Http(r))
                    if r.status().as_u16() == 429 =>
                {
                    outcome.refused()
                }
                Err(e) => outcome.unexpected(format!("{e}")),
            }
        }
        for mut ws in held {
            let _ = ws.close(None).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    "8 streams per user admitted, the rest 429"
}

async fn handshake_flood(t: &Target, outcome: &Arc<Outcome>, until: Instant) -> &'static str {
    // One address, many users, as fast as it can: past the burst, 429s.
    let mut n = 0u64;
    while Instant::now() < until {
        let mut batch = Vec::new();
        for _ in 0..50 {
            n += 1;
            let token = t.token(&format!("flood-{n}"));
            batch.push(async move { ws_handshake(t, "127.0.7.1", Some(&token)).await });
        }
        for r in futures::future::join_all(batch).await {
            match r {
                // Within the rate: admitted, as the contract says.
                Ok(()) => {
                    outcome.attempts.fetch_add(1, Ordering::Relaxed);
                }
                Err(429) => outcome.refused(),
                Err(s) => outcome.unexpected(format!("status {s}")),
            }
        }
    }
    "past a 200 burst, 50 handshakes/s per address; the rest 429"
}

async fn slowloris_http(t: &Target, outcome: &Arc<Outcome>, until: Instant) -> &'static str {
    // Connections that send a request head one header a second, never finishing it. Each must
    // be cut by the server at the header timeout (3 s here), not held.
    let mut tasks = Vec::new();
    // At least one wave, however short the window.
    loop {
        for _ in 0..50 {
            let (addr, path, o) = (t.addr, t.stream_path(), outcome.clone());
            tasks.push(tokio::spawn(async move {
                let Ok(mut s) = TcpStream::connect(addr).await else {
                    return o.unexpected("connect failed".into());
                };
                let started = Instant::now();
                let _ = s
                    .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n").as_bytes())
                    .await;
                for i in 0..30 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if s.write_all(format!("X-Slow-{i}: y\r\n").as_bytes())
                        .await
                        .is_err()
                    {
                        break;
                    }
                    let mut buf = [0u8; 256];
                    if let Ok(Ok(0)) | Ok(Err(_)) =
                        tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await
                    {
                        break;
                    }
                }
                if started.elapsed() < Duration::from_secs(8) {
                    o.refused()
                } else {
                    o.unexpected(format!("held {:?}", started.elapsed()))
                }
            }));
        }
        if Instant::now() + Duration::from_secs(5) >= until {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for task in tasks {
        let _ = task.await;
    }
    "cut at the 3 s header timeout"
}

async fn slowloris_sse(t: &Target, outcome: &Arc<Outcome>, until: Instant) -> &'static str {
    // SSE viewers on tiny receive windows that never read: each must be closed at the stall
    // deadline (3 s here) so it holds no queue or buffer.
    let mut tasks = Vec::new();
    let mut n = 0u32;
    loop {
        for _ in 0..20 {
            n += 1;
            let token = t.token(&format!("sse-sloth-{n}"));
            let (addr, path, o) = (t.addr, t.stream_path(), outcome.clone());
            tasks.push(tokio::spawn(async move {
                let Ok(socket) = TcpSocket::new_v4() else { return };
                let _ = socket.set_recv_buffer_size(2048);
                let Ok(mut s) = socket.connect(addr).await else {
                    return o.unexpected("connect failed".into());
                };
                let _ = s
                    .write_all(
                        format!("GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nAuthorization: Bearer {token}\r\n\r\n")
                            .as_bytes(),
                    )
                    .await;
                let started = Instant::now();
                // Not reading for a while (the buffers fill in about a second at 30 Hz, then
                // the 3 s stall deadline runs)...
                tokio::time::sleep(Duration::from_secs(8)).await;
                // ...then what was buffered must end in the stream's close (the `close` event
                // with its reason, then the end of the response or of the connection), with
                // nothing live after it.
                let mut buf = vec![0u8; 65536];
                let mut seen: Vec<u8> = Vec::new();
                let outcome = loop {
                    match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => break Ok("connection closed"),
                        Ok(Ok(n)) => {
                            seen.extend_from_slice(&buf[..n]);
                            if started.elapsed() > Duration::from_secs(20) {
                                break Err("still streaming 20 s after it stopped reading");
                            }
                        }
                        // Quiet: the response must have ended with the close event, and the
                        // idle connection must then be let go (the header timeout, 3 s here,
                        // runs while the server waits for a next request that never comes).
                        Err(_) => {
                            let text = String::from_utf8_lossy(&seen);
                            if !(text.contains("event: close") && text.ends_with("0\r\n\r\n")) {
                                break Err("silent but not closed");
                            }
                            break match tokio::time::timeout(Duration::from_secs(6), s.read(&mut buf)).await {
                                Ok(Ok(0)) | Ok(Err(_)) => Ok("stream closed, then the idle connection"),
                                _ => Err("stream closed but the idle connection kept"),
                            };
                        }
                    }
                };
                match outcome {
                    Ok(_) => o.refused(),
                    Err(why) => o.unexpected(why.into()),
                }
            }));
        }
        if Instant::now() + Duration::from_secs(9) >= until {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for task in tasks {
        let _ = task.await;
    }
    "closed at the 3 s stall deadline"
}

async fn oversized(t: &Target, outcome: &Arc<Outcome>, until: Instant) -> &'static str {
    let http = reqwest::Client::new();
    let token = t.token("big-sender");
    let mut n = 0;
    while Instant::now() < until {
        n += 1;
        // A 1 MiB WebSocket message from a viewer (inbound frames are capped at 4 KiB).
        let source = format!("127.0.8.{}", 1 + n % 200);
        if let Some(opened) = open_stream(t, &source, Some(&token)).await {
            match opened {
                Ok(mut ws) => {
                    let _ = ws.send(Message::text("x".repeat(1 << 20))).await;
                    let mut code = None;
                    let deadline = Instant::now() + Duration::from_secs(3);
                    while Instant::now() < deadline {
                        match tokio::time::timeout(Duration::from_secs(3), ws.next()).await {
                            Ok(Some(Ok(Message::Close(c)))) => {
                                code = Some(c.map(|c| u16::from(c.code)).unwrap_or(0));
                                break;
                            }
                            Ok(Some(Ok(_))) => {}
                            _ => {
                                code = Some(0);
                                break;
                            }
                        }
                    }
                    match code {
                        Some(1009) => outcome.refused(),
                        other => outcome.unexpected(format!("WS close {other:?}, wanted 1009")),
                    }
                }
                Err(e) => outcome.unexpected(format!("handshake: {e}")),
            }
        }
        // A 4 MiB REST body.
        let status = http
            .post(format!("{}/v1/matchmaking/join", t.http))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(vec![b' '; 4 << 20])
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        // 413, or the upload cut short once the server has answered it.
        http_status(outcome, Err(status), &[413, 0]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    "WS close 1009, REST 413 (or the upload cut once answered)"
}

async fn malformed_udp(
    t: &Target,
    outcome: &Arc<Outcome>,
    until: Instant,
) -> anyhow::Result<&'static str> {
    let rejected_before = udp_rejected(t).await;
    let sockets = 4;
    let mut tasks = Vec::new();
    for k in 0..sockets {
        let (udp, o) = (t.udp, outcome.clone());
        tasks.push(tokio::spawn(async move {
            let s = UdpSocket::bind("127.0.0.1:0").await?;
            let mut x: u64 = 0x2545_F491_4F6C_DD1D ^ k;
            // Up to 9000 bytes: past the largest packet, too.
            let mut buf = [0u8; 9000];
            let mut sent = 0u64;
            let mut answers = 0u64;
            let mut rx = [0u8; 2048];
            while Instant::now() < until {
                for _ in 0..64 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let len = 1 + (x % 9000) as usize;
                    for (i, b) in buf[..len].iter_mut().enumerate() {
                        *b = (x >> (i % 8 * 8)) as u8 ^ i as u8;
                    }
                    if s.send_to(&buf[..len], udp).await.is_ok() {
                        sent += 1;
                    }
                }
                while let Ok(n) = s.try_recv(&mut rx) {
                    // Garbage earns no answer but a deny for a handshake that decoded.
                    if !matches!(Packet::decode(&rx[..n]), Ok(Packet::ConnectDenied { .. })) {
                        answers += 1;
                    }
                }
                tokio::task::yield_now().await;
            }
            o.sent(sent);
            if answers > 0 {
                o.unexpected(format!(
                    "{answers} datagrams answered with something other than a deny"
                ));
            }
            Ok::<_, std::io::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    // Refused = what the server counted as rejected; the rest never reached it (the kernel
    // drops datagrams when the socket buffer is full).
    let rejected = udp_rejected(t).await.saturating_sub(rejected_before);
    outcome.refused.fetch_add(rejected, Ordering::Relaxed);
    Ok("dropped and counted (gs_udp_rejected_total)")
}

/// The server's count of refused datagrams.
async fn udp_rejected(t: &Target) -> u64 {
    let Ok(r) = reqwest::get(format!("{}/metrics", t.http)).await else {
        return 0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("gs_udp_rejected_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// One attack of the abuse run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    ForgedTokens,
    ExpiredTokens,
    ReplayedConnectToken,
    StreamFloodOneUser,
    HandshakeFloodOneIp,
    SlowlorisHttp,
    SlowlorisSse,
    OversizedFrames,
    MalformedUdp,
}

impl Attack {
    pub const ALL: [Attack; 9] = [
        Attack::ForgedTokens,
        Attack::ExpiredTokens,
        Attack::ReplayedConnectToken,
        Attack::StreamFloodOneUser,
        Attack::HandshakeFloodOneIp,
        Attack::SlowlorisHttp,
        Attack::SlowlorisSse,
        Attack::OversizedFrames,
        Attack::MalformedUdp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Attack::ForgedTokens => "forged-tokens",
            Attack::ExpiredTokens => "expired-tokens",
            Attack::ReplayedConnectToken => "replayed-connect-token",
            Attack::StreamFloodOneUser => "stream-flood-one-user",
            Attack::HandshakeFloodOneIp => "handshake-flood-one-ip",
            Attack::SlowlorisHttp => "slowloris-http",
            Attack::SlowlorisSse => "slowloris-sse",
            Attack::OversizedFrames => "oversized-frames",
            Attack::MalformedUdp => "malformed-udp",
        }
    }

    /// Runs the attack until `until`; says how the server is expected to refuse it.
    pub async fn run(
        self,
        t: &Target,
        outcome: &Arc<Outcome>,
        until: Instant,
    ) -> anyhow::Result<&'static str> {
        Ok(match self {
            Attack::ForgedTokens => forged_tokens(t, outcome, until).await,
            Attack::ExpiredTokens => expired_tokens(t, outcome, until).await,
            Attack::ReplayedConnectToken => replayed_token(t, outcome, until).await?,
            Attack::StreamFloodOneUser => stream_flood(t, outcome, until).await,
            Attack::HandshakeFloodOneIp => handshake_flood(t, outcome, until).await,
            Attack::SlowlorisHttp => slowloris_http(t, outcome, until).await,
            Attack::SlowlorisSse => slowloris_sse(t, outcome, until).await,
            Attack::OversizedFrames => oversized(t, outcome, until).await,
            Attack::MalformedUdp => malformed_udp(t, outcome, until).await?,
        })
    }
}

/// What `--attacks` asks for: every attack, or one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttackChoice {
    All,
    One(Attack),
}

impl AttackChoice {
    pub fn attacks(&self) -> Vec<Attack> {
        match self {
            AttackChoice::All => Attack::ALL.to_vec(),
            AttackChoice::One(a) => vec![*a],
        }
    }
}

impl FromStr for AttackChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<AttackChoice, String> {
        if s == "all" {
            return Ok(AttackChoice::All);
        }
        Attack::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .map(AttackChoice::One)
            .ok_or_else(|| {
                let names: Vec<&str> = Attack::ALL.iter().map(|a| a.name()).collect();
                format!("unknown attack {s:?}; one of all, {}", names.join(", "))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attacks_are_chosen_by_name() {
        assert_eq!(
            AttackChoice::from_str("all").unwrap().attacks(),
            Attack::ALL.to_vec()
        );
        assert_eq!(
            AttackChoice::from_str("slowloris-sse").unwrap().attacks(),
            vec![Attack::SlowlorisSse]
        );
        let err = AttackChoice::from_str("ddos").unwrap_err();
        assert!(err.contains("one of all, forged-tokens"), "{err}");
    }
}
