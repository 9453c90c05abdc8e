//! `wire`: what one viewer of a real match costs on the network, per format and transport.
//! Starts `grandstand` (embedded backends, one match of `--bots` bots at the spectator rate),
//! then watches the match for `--secs` with one viewer of each kind side by side: v1 and v2
//! over WebSocket (v2 with and without permessage-deflate, as a browser offers it) and over SSE,
//! counting every byte the viewer's socket received after the handshake (frame headers, SSE
//! framing and HTTP chunking included; TCP/IP headers not).

use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use serde_json::json;
use testkit::wsclient::{Offer, RawWs, Received, BROWSER_DEFLATE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::process::{embedded_grandstand, live_match_ids, log_file, spawn_logged, wait_listening};
use crate::report::{machine, Latency, Results, Row};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Bots in the match (a 50-player match is the reference workload).
    #[arg(long, default_value_t = 50)]
    bots: usize,
    /// Spectator deltas per second.
    #[arg(long, default_value_t = 10)]
    spectator_hz: u32,
    /// How long each viewer watches.
    #[arg(long, default_value_t = 10)]
    secs: u64,
}

struct Kind {
    name: &'static str,
    query: &'static str,
    sse: bool,
    extensions: Option<&'static str>,
}

const KINDS: [Kind; 5] = [
    Kind {
        name: "ws v1",
        query: "",
        sse: false,
        extensions: None,
    },
    Kind {
        name: "ws v2",
        query: "?format=v2",
        sse: false,
        extensions: None,
    },
    Kind {
        name: "ws v2 + deflate",
        query: "?format=v2",
        sse: false,
        extensions: Some(BROWSER_DEFLATE),
    },
    Kind {
        name: "sse v1",
        query: "",
        sse: true,
        extensions: None,
    },
    Kind {
        name: "sse v2",
        query: "?format=v2",
        sse: true,
        extensions: None,
    },
];

/// Bytes and messages one viewer received in the window.
struct Watched {
    bytes: u64,
    messages: u64,
    secs: f64,
}

async fn watch_ws(
    base: &str,
    path: &str,
    token: &str,
    kind: &Kind,
    secs: u64,
) -> anyhow::Result<Watched> {
    let offer = Offer {
        extensions: kind.extensions.map(str::to_string),
        protocol: None,
        token: Some(token.to_string()),
    };
    let mut ws = RawWs::connect(base, path, &offer)
        .await?
        .map_err(|r| anyhow::anyhow!("refused {}: {}", r.status, r.body))?;
    // The first message is the snapshot; the steady state is what follows.
    ws.next(Duration::from_secs(10)).await?;
    let start_bytes = ws.wire_bytes;
    let started = Instant::now();
    let mut messages = 0;
    while started.elapsed() < Duration::from_secs(secs) {
        match ws.next(Duration::from_secs(secs)).await? {
            Some(Received::Text(_)) => messages += 1,
            other => anyhow::bail!("{}: stream ended: {other:?}", kind.name),
        }
    }
    Ok(Watched {
        bytes: ws.wire_bytes - start_bytes,
        messages,
        secs: started.elapsed().as_secs_f64(),
    })
}

async fn watch_sse(base: &str, path: &str, token: &str, secs: u64) -> anyhow::Result<Watched> {
    // A raw socket, so HTTP chunk framing counts too.
    let host = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(host).await?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = vec![0u8; 65536];
    // Skip the head and the snapshot: wait for the second event.
    let mut seen = Vec::new();
    while seen.windows(2).filter(|w| w == b"\n\n").count() < 2 {
        let n = s.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "SSE stream ended early");
        seen.extend_from_slice(&buf[..n]);
    }
    let started = Instant::now();
    let (mut bytes, mut messages) = (0u64, 0u64);
    while started.elapsed() < Duration::from_secs(secs) {
        match tokio::time::timeout(Duration::from_secs(secs), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                bytes += n as u64;
                messages += buf[..n].windows(6).filter(|w| w == b"\ndata:").count() as u64;
            }
            _ => anyhow::bail!("SSE stream ended"),
        }
    }
    Ok(Watched {
        bytes,
        messages,
        secs: started.elapsed().as_secs_f64(),
    })
}

pub async fn run(args: Args) -> anyhow::Result<Results> {
    let data = std::env::temp_dir().join(format!("gs-loadtest-wire-{}", std::process::id()));
    let (log, _) = log_file("wire")?;
    let mut cmd = embedded_grandstand(&data);
    cmd.args(["--http-addr", "127.0.0.1:0", "--udp-addr", "127.0.0.1:0"])
        .args(["--matches", "1", "--bots", &args.bots.to_string()])
        .args(["--spectator-hz", &args.spectator_hz.to_string()]);
    let server = wait_listening(spawn_logged(&mut cmd, &log)?, log)?;
    let http = reqwest::Client::new();
    let token: serde_json::Value = http
        .post(format!("{}/v1/auth/guest", server.url))
        .send()
        .await?
        .json()
        .await?;
    let token = token["token"]
        .as_str()
        .context("a guest token")?
        .to_string();
    let match_id = live_match_ids(&http, &server.url, 1).await?.remove(0);
    let watchers = KINDS.iter().map(|kind| {
        let (base, token) = (server.url.clone(), token.clone());
        let path = format!("/v1/matches/{match_id}/stream{}", kind.query);
        async move {
            let w = if kind.sse {
                watch_sse(&base, &path, &token, args.secs).await
            } else {
                watch_ws(&base, &path, &token, kind, args.secs).await
            };
            (kind, w)
        }
    });
    let watched = futures::stream::iter(watchers)
        .buffer_unordered(KINDS.len())
        .collect::<Vec<_>>()
        .await;
    let mut rows = Vec::new();
    let mut systems = Vec::new();
    let v1_ws = watched
        .iter()
        .find(|(k, _)| k.name == "ws v1")
        .and_then(|(_, w)| w.as_ref().ok())
        .map(|w| w.bytes as f64 / w.secs);
    for kind in &KINDS {
        let (_, w) = watched
            .iter()
            .find(|(k, _)| k.name == kind.name)
            .expect("every kind ran");
        let w = w
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{}: {e}", kind.name))?;
        let per_s = w.bytes as f64 / w.secs;
        let vs = v1_ws.map_or(String::new(), |v| {
            format!(", {:.0}% of ws v1", 100.0 * per_s / v)
        });
        rows.push(Row {
            name: kind.name.to_string(),
            throughput_per_s: per_s / 1000.0,
            unit: "KB/s per viewer".into(),
            latency: Latency {
                count: w.messages,
                p50_us: 0,
                p95_us: 0,
                p99_us: 0,
                p999_us: 0,
                max_us: 0,
            },
            latency_of: "messages".into(),
            notes: format!(
                "{} messages in {:.1} s, {:.0} B per message{vs}",
                w.messages,
                w.secs,
                w.bytes as f64 / w.messages.max(1) as f64
            ),
        });
        systems.push(json!({
            "system": kind.name,
            "bytes_per_s": per_s,
            "messages": w.messages,
            "bytes_per_message": w.bytes as f64 / w.messages.max(1) as f64,
        }));
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&data);
    Ok(Results {
        scenario: "wire".into(),
        machine: machine(),
        command: format!("loadtest wire --bots {} --spectator-hz {} --secs {}", args.bots, args.spectator_hz, args.secs),
        rows,
        summary: vec![format!(
            "one viewer of each kind on the same live match of {} bots at {} Hz; bytes after the handshake and the first snapshot",
            args.bots, args.spectator_hz
        )],
        systems,
    })
}
