//! `drain`: what a gateway's audience does when the gateway gets SIGTERM. Starts `grandstand`
//! (embedded backends), attaches `--viewers` WebSocket viewers (events-only streams, so the
//! load generator reads little and measures the drain, not itself), sends SIGTERM and records
//! when each viewer is closed and with which retry hint. A viewer that follows the hint comes
//! back at close + hint: the report gives both as histograms and the busiest 100 ms of
//! returns, side by side with `--drain-secs 0` (everyone closed at once, spread only by the
//! hint's jitter) in the same run.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use testkit::wsclient::{Offer, RawWs, Received};

use crate::process::{
    embedded_grandstand, live_match_ids, log_file, open_socket, spawn_logged, wait_listening,
};
use crate::report::{machine, Latency, Results, Row};

const SECRET: &str = "loadtest-drain-secret-0123456789";

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[arg(long, default_value_t = 10_000)]
    viewers: usize,
    /// Matches the viewers are spread over.
    #[arg(long, default_value_t = 10)]
    matches: usize,
    /// The gateway's `--drain-secs`.
    #[arg(long, default_value_t = 10)]
    drain_secs: u64,
    /// Skip the `--drain-secs 0` baseline.
    #[arg(long)]
    no_baseline: bool,
}

/// One viewer's end: when it was closed after the signal, and the hint it was given.
struct Closed {
    after: Duration,
    retry_after: Option<Duration>,
}

struct Run {
    drain_secs: u64,
    closed: Vec<Closed>,
    /// Viewers whose socket ended without a close frame (or never ended).
    unclosed: usize,
    exited_after: Option<Duration>,
    attach_secs: f64,
}

fn retry_hint(reason: &str) -> Option<Duration> {
    let ms = reason.split("retry-after=").nth(1)?.trim_end_matches("ms");
    ms.parse().ok().map(Duration::from_millis)
}

async fn run_once(args: &Args, drain_secs: u64) -> anyhow::Result<Run> {
    let data = std::env::temp_dir().join(format!(
        "gs-loadtest-drain-{}-{drain_secs}",
        std::process::id()
    ));
    let (log, _) = log_file("drain")?;
    let mut cmd = embedded_grandstand(&data);
    cmd.args(["--http-addr", "127.0.0.1:0", "--udp-addr", "127.0.0.1:0"])
        .args(["--matches", &args.matches.to_string(), "--bots", "4"])
        .args(["--drain-secs", &drain_secs.to_string()])
        .args(["--max-streams-per-user", "4", "--max-streams-per-address"])
        .arg((args.viewers + 1).to_string())
        .args(["--handshakes-per-sec", "1000000"])
        .args(["--max-connections", "1000000"])
        .env("GRANDSTAND_TOKEN_SECRET", SECRET)
        .env("RUST_LOG", "warn,grandstand=info");
    let mut server = wait_listening(spawn_logged(&mut cmd, &log)?, log)?;
    let http = reqwest::Client::new();
    let matches = live_match_ids(&http, &server.url, args.matches).await?;
    let signer = protocol::TokenSigner::new(SECRET.as_bytes());
    let host = server.url.trim_start_matches("http://").to_string();
    let started = Instant::now();
    let attach = (0..args.viewers).map(|i| {
        let token = signer.sign(&protocol::Claims {
            sub: format!("drain-viewer-{i}"),
            name: format!("Viewer {i}"),
            exp: protocol::now_secs() + 3600,
        });
        let path = format!(
            "/v1/matches/{}/stream?types=event",
            matches[i % matches.len()]
        );
        let (host, source) = (
            host.clone(),
            format!("127.0.{}.{}", 1 + i / 250 % 200, 1 + i % 250),
        );
        async move {
            let socket = open_socket(&source, &host).await?;
            let offer = Offer {
                extensions: None,
                protocol: None,
                token: Some(token),
            };
            let mut ws = RawWs::handshake(socket, &host, &path, &offer)
                .await?
                .map_err(|r| anyhow::anyhow!("refused {}: {}", r.status, r.body))?;
            let first = ws.json(Duration::from_secs(30)).await?;
            anyhow::ensure!(first["type"] == "snapshot", "first message {first}");
            anyhow::Ok(ws)
        }
    });
    let viewers: Vec<RawWs> = futures::stream::iter(attach)
        .buffer_unordered(256)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .context("attaching the viewers")?;
    let attach_secs = started.elapsed().as_secs_f64();

    let signalled = Instant::now();
    // SAFETY: a signal to the child this function started and still owns.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    let limit = Duration::from_secs(drain_secs + 20);
    let ends = viewers.into_iter().map(|mut ws| {
        tokio::spawn(async move {
            loop {
                match ws.next(limit).await {
                    Ok(Some(Received::Text(_))) => continue,
                    Ok(Some(Received::Close(_, reason))) => {
                        return Some(Closed {
                            after: signalled.elapsed(),
                            retry_after: retry_hint(&reason),
                        })
                    }
                    _ => return None,
                }
            }
        })
    });
    let mut closed = Vec::new();
    let mut unclosed = 0;
    for end in futures::future::join_all(ends).await {
        match end? {
            Some(c) => closed.push(c),
            None => unclosed += 1,
        }
    }
    let exited_after = loop {
        if server.child.try_wait()?.is_some() {
            break Some(signalled.elapsed());
        }
        if signalled.elapsed() > limit {
            let _ = server.child.kill();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _ = std::fs::remove_dir_all(&data);
    Ok(Run {
        drain_secs,
        closed,
        unclosed,
        exited_after,
        attach_secs,
    })
}

/// The most returns in any 100 ms window.
fn busiest_100ms(mut at: Vec<Duration>) -> usize {
    at.sort();
    let mut best = 0;
    let mut start = 0;
    for end in 0..at.len() {
        while at[end] - at[start] > Duration::from_millis(100) {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

pub async fn run(args: Args) -> anyhow::Result<Results> {
    let mut runs = Vec::new();
    if !args.no_baseline {
        runs.push(run_once(&args, 0).await?);
    }
    runs.push(run_once(&args, args.drain_secs).await?);
    let mut rows = Vec::new();
    let mut summary = Vec::new();
    for run in &runs {
        let mut closes = crate::viewers::worker::histogram();
        let mut returns = crate::viewers::worker::histogram();
        let mut back_at = Vec::new();
        for c in &run.closed {
            closes.record(c.after.as_micros() as u64)?;
            if let Some(hint) = c.retry_after {
                let back = c.after + hint;
                returns.record(back.as_micros() as u64)?;
                back_at.push(back);
            }
        }
        let peak = busiest_100ms(back_at.clone());
        let name = format!("--drain-secs {}", run.drain_secs);
        rows.push(Row {
            name: format!("{name}: closed"),
            throughput_per_s: run.closed.len() as f64,
            unit: "viewers closed".into(),
            latency: Latency::of(&closes),
            latency_of: "SIGTERM -> close frame".into(),
            notes: format!(
                "{} without a close frame; process exited after {}; {} viewers attached in {:.1} s",
                run.unclosed,
                run.exited_after
                    .map_or("(still running)".into(), |d| format!(
                        "{:.1} s",
                        d.as_secs_f64()
                    )),
                run.closed.len() + run.unclosed,
                run.attach_secs
            ),
        });
        rows.push(Row {
            name: format!("{name}: back"),
            throughput_per_s: peak as f64,
            unit: "most returns in 100 ms".into(),
            latency: Latency::of(&returns),
            latency_of: "SIGTERM -> close + retry hint".into(),
            notes: format!(
                "{} of {} closes carried a retry hint",
                back_at.len(),
                run.closed.len()
            ),
        });
        summary.push(format!(
            "{name}: returns spread from {:.2} s to {:.2} s after SIGTERM, at most {peak} in any 100 ms ({:.1}% of the audience)",
            returns.value_at_quantile(0.0) as f64 / 1e6,
            returns.max() as f64 / 1e6,
            100.0 * peak as f64 / run.closed.len().max(1) as f64
        ));
    }
    Ok(Results {
        scenario: "drain".into(),
        machine: machine(),
        command: format!(
            "loadtest drain --viewers {} --matches {} --drain-secs {}{}",
            args.viewers,
            args.matches,
            args.drain_secs,
            if args.no_baseline {
                " --no-baseline"
            } else {
                ""
            }
        ),
        rows,
        summary,
        systems: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_hint_is_read_from_the_close_reason() {
        assert_eq!(
            retry_hint("server draining; retry-after=1173ms"),
            Some(Duration::from_millis(1173))
        );
        assert_eq!(retry_hint("match ended"), None);
    }

    #[test]
    fn the_busiest_window_counts_returns_within_100_ms() {
        let ms = |v: &[u64]| v.iter().map(|&m| Duration::from_millis(m)).collect();
        assert_eq!(busiest_100ms(ms(&[0, 50, 100, 101, 300])), 3);
        assert_eq!(busiest_100ms(ms(&[0, 200, 400])), 1);
        assert_eq!(busiest_100ms(Vec::new()), 0);
    }
}
