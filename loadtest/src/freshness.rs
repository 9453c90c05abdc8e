//! Leaderboard freshness: from a kill (its event time) to the moment the leaderboard API shows
//! it. A viewer watches a live match over WebSocket; for each kill, a poller asks the API for
//! the killer's row on the match board every 5 ms until the new score is there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use hdrhistogram::Histogram;
use tokio_tungstenite::tungstenite::Message;

use crate::report::{machine, Latency, Results, Row};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    base: String,
    /// Kills to measure.
    #[arg(long, default_value_t = 100)]
    kills: usize,
    /// The server's process id, to record its CPU and memory next to the client figures.
    #[arg(long)]
    server_pid: Option<u32>,
}

pub async fn run(args: Args) -> anyhow::Result<Results> {
    let usage = crate::report::ServerUsage::start(args.server_pid);
    let bar = crate::report::count_bar(args.kills as u64, "kills");
    let http = reqwest::Client::new();
    let guest: serde_json::Value = http
        .post(format!("{}/v1/auth/guest", args.base))
        .send()
        .await?
        .json()
        .await?;
    let token = guest["token"].as_str().unwrap_or_default().to_string();
    let matches: serde_json::Value = http
        .get(format!("{}/v1/matches", args.base))
        .send()
        .await?
        .json()
        .await?;
    let id = matches["matches"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["status"] == "live"))
        .and_then(|m| m["id"].as_str())
        .ok_or_else(|| anyhow::anyhow!("no live match"))?
        .to_string();
    let ws_url = format!(
        "{}/v1/matches/{id}/stream?token={token}",
        args.base.replacen("http", "ws", 1)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await?;
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let mut scores: HashMap<String, u64> = HashMap::new();
    let mut pollers = Vec::new();
    let mut timeouts = 0usize;
    while pollers.len() < args.kills {
        let Some(msg) = tokio::time::timeout(Duration::from_secs(30), ws.next()).await? else {
            break;
        };
        let Message::Text(text) = msg? else { continue };
        let v: serde_json::Value = serde_json::from_str(&text)?;
        match v["type"].as_str() {
            Some("snapshot") => {
                if let Some(players) = v["state"]["players"].as_object() {
                    for (p, view) in players {
                        scores.insert(p.clone(), view["score"].as_u64().unwrap_or(0));
                    }
                }
            }
            Some("event") if v["kind"] == "kill" => {
                let killer = v["killer"].as_str().unwrap_or_default().to_string();
                let at_ms = v["at_ms"].as_u64().unwrap_or(0);
                let expected = {
                    let s = scores.entry(killer.clone()).or_insert(0);
                    *s += 1;
                    *s
                };
                let url = format!(
                    "{}/v1/leaderboards/match:{id}/around/{killer}?radius=0",
                    args.base
                );
                let (http, hist) = (http.clone(), hist.clone());
                pollers.push(tokio::spawn(async move {
                    for _ in 0..2000 {
                        if let Ok(r) = http.get(&url).send().await {
                            if let Ok(b) = r.json::<serde_json::Value>().await {
                                if b["entries"][0]["score"].as_u64().unwrap_or(0) >= expected {
                                    let lag = protocol::now_ms().saturating_sub(at_ms).max(1);
                                    if lag > 1000 && std::env::var("FRESHNESS_DEBUG").is_ok() {
                                        eprintln!(
                                            "slow: {url} expected {expected} lag {lag} ms body {b}"
                                        );
                                    }
                                    hist.lock().unwrap().record(lag * 1000).ok();
                                    return true;
                                }
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    false
                }));
            }
            _ => {}
        }
    }
    for p in pollers {
        if !p.await.unwrap_or(false) {
            timeouts += 1;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let h = hist.lock().unwrap().clone();
    Ok(Results {
        summary: usage.map(|u| u.line()).into_iter().collect(),
        systems: Vec::new(),
        scenario: "leaderboard freshness: kill -> visible in the leaderboard API".into(),
        machine: machine(),
        command: format!(
            "loadtest freshness --base {} --kills {}",
            args.base, args.kills
        ),
        rows: vec![Row {
            name: "event -> API".into(),
            throughput_per_s: 0.0,
            unit: "-".into(),
            latency: Latency::of(&h),
            latency_of: "kill event time -> first API read showing it (5 ms polls)".into(),
            notes: format!("{} kills, {} never seen within 10 s", h.len(), timeouts),
        }],
    })
}
