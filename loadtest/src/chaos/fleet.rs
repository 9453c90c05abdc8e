//! The honest users of a chaos run: viewers following live matches through the gateways (over
//! WebSocket and SSE, resuming from their last version on another gateway when theirs fails or
//! falls silent) and UDP players placed by the matchmaker (joining again when their server is
//! gone). Each keeps its own tallies; the runner reads when each last heard from the platform.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use game_client::{Intent, LinkConditioner, UdpClient};
use protocol::{Claims, TokenSigner};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use super::Topology;
use testkit::{Break, MessageKind, VersionLine};

/// A stream this long without a message is taken as failed (deltas come 10 times a second).
const SILENCE: Duration = Duration::from_secs(2);

#[derive(Debug, Default, Clone)]
pub struct ViewerTally {
    pub messages: u64,
    pub snapshots: u64,
    pub epochs_entered: u64,
    /// Connections after the first one (failovers, silences, matches that ended).
    pub reconnects: u64,
    /// Reconnects that continued a match from the viewer's position.
    pub resumes: u64,
    pub matches: u64,
    pub breaks: Vec<Break>,
    /// Refused or failed connection attempts.
    pub refused: u64,
}

pub struct Viewer {
    pub tally: Mutex<ViewerTally>,
    last_heard: Mutex<Instant>,
}

impl Viewer {
    pub fn silence(&self) -> Duration {
        self.last_heard.lock().unwrap().elapsed()
    }

    fn heard(&self) {
        *self.last_heard.lock().unwrap() = Instant::now();
    }
}

#[derive(Debug, Default, Clone)]
pub struct PlayerTally {
    pub joins: u64,
    pub join_failures: u64,
    pub ticks: u64,
}

pub struct Player {
    pub tally: Mutex<PlayerTally>,
    last_heard: Mutex<Instant>,
}

impl Player {
    pub fn silence(&self) -> Duration {
        self.last_heard.lock().unwrap().elapsed()
    }
}

pub struct Fleet {
    pub viewers: Vec<Arc<Viewer>>,
    pub players: Vec<Arc<Player>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Fleet {
    pub fn start(topology: &Arc<Topology>, viewers: usize, players: usize) -> Fleet {
        let stop = Arc::new(AtomicBool::new(false));
        let mut fleet = Fleet {
            viewers: Vec::new(),
            players: Vec::new(),
            stop: stop.clone(),
            tasks: Vec::new(),
        };
        for i in 0..viewers {
            let v = Arc::new(Viewer {
                tally: Mutex::default(),
                last_heard: Mutex::new(Instant::now()),
            });
            fleet.viewers.push(v.clone());
            fleet.tasks.push(tokio::spawn(run_viewer(
                i,
                v,
                topology.clone(),
                stop.clone(),
            )));
        }
        for i in 0..players {
            let p = Arc::new(Player {
                tally: Mutex::default(),
                last_heard: Mutex::new(Instant::now()),
            });
            fleet.players.push(p.clone());
            fleet.tasks.push(tokio::spawn(run_player(
                i,
                p,
                topology.clone(),
                stop.clone(),
            )));
        }
        fleet
    }

    /// Stops every viewer and player (players say goodbye to their server).
    pub async fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

fn token(topology: &Topology, who: &str) -> String {
    TokenSigner::new(topology.secret.as_bytes()).sign(&Claims {
        sub: who.to_string(),
        name: who.to_string(),
        exp: protocol::now_secs() + 86_400,
    })
}

/// A live match for viewer `i`, spread over what the listing shows.
async fn pick_match(http: &reqwest::Client, topology: &Topology, i: usize) -> Option<String> {
    let body: Value = http
        .get(format!("{}/v1/matches", topology.api))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let mut live: Vec<String> = body["matches"]
        .as_array()?
        .iter()
        .filter(|m| m["status"] == "live")
        .filter_map(|m| m["id"].as_str().map(str::to_string))
        .collect();
    live.sort();
    (!live.is_empty()).then(|| live[i % live.len()].clone())
}

enum SessionEnd {
    /// The match ended (its status said so, or the gateway no longer knows it).
    MatchOver,
    /// The connection failed, closed or fell silent: resume elsewhere.
    Lost,
    /// Could not connect at all.
    Refused,
}

struct Session<'a> {
    viewer: &'a Viewer,
    line: &'a mut VersionLine,
}

impl Session<'_> {
    /// Takes one frame; `true` when it says the match is over.
    fn frame(&mut self, text: &str) -> bool {
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            return false;
        };
        if v["type"] == "status" {
            // Told the producer is down (or back): the viewer is not left in silence.
            self.viewer.heard();
            return false;
        }
        let (Some(kind), Some(epoch), Some(version)) = (
            v["type"].as_str().and_then(MessageKind::parse),
            v["epoch"].as_u64(),
            v["version"].as_u64(),
        ) else {
            return false;
        };
        let outcome = self.line.observe(kind, epoch, version);
        let mut t = self.viewer.tally.lock().unwrap();
        t.messages += 1;
        if let Err(b) = outcome {
            t.breaks.push(b);
        }
        let status = match kind {
            MessageKind::Snapshot => &v["state"]["status"],
            _ => &v["status"],
        };
        let ended = status == "ended";
        // The snapshot of a match that is already over does not count as being served: a
        // viewer is healthy when it is watching something live.
        if !ended {
            self.viewer.heard();
        }
        ended
    }
}

async fn ws_session(
    topology: &Topology,
    gateway: &str,
    source: &str,
    path: &str,
    token: &str,
    mut s: Session<'_>,
) -> SessionEnd {
    let url = format!("ws://{}{path}", gateway.trim_start_matches("http://"));
    let Ok(mut req) = url.into_client_request() else {
        return SessionEnd::Refused;
    };
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header value"),
    );
    let connect = async {
        let socket = crate::process::open_socket(source, gateway).await?;
        Ok::<_, anyhow::Error>(tokio_tungstenite::client_async(req, socket).await?)
    };
    let mut ws = match tokio::time::timeout(Duration::from_secs(3), connect).await {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => {
            let not_found = e.to_string().contains("404");
            return if not_found {
                SessionEnd::MatchOver
            } else {
                SessionEnd::Refused
            };
        }
        Err(_) => return SessionEnd::Refused,
    };
    let _ = topology;
    loop {
        match tokio::time::timeout(SILENCE, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                if s.frame(&t) {
                    return SessionEnd::MatchOver;
                }
            }
            Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) | Err(_) => {
                return SessionEnd::Lost
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

async fn sse_session(
    http: &reqwest::Client,
    gateway: &str,
    path: &str,
    token: &str,
    since: Option<(u64, u64)>,
    mut s: Session<'_>,
) -> SessionEnd {
    let mut req = http
        .get(format!("{gateway}{path}"))
        .header("accept", "text/event-stream")
        .bearer_auth(token);
    if let Some((e, v)) = since {
        req = req.header("last-event-id", format!("{e}:{v}"));
    }
    let res = match tokio::time::timeout(Duration::from_secs(3), req.send()).await {
        Ok(Ok(r)) => r,
        _ => return SessionEnd::Refused,
    };
    if res.status() == 404 {
        return SessionEnd::MatchOver;
    }
    if !res.status().is_success() {
        return SessionEnd::Refused;
    }
    let mut body = res.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let chunk = match tokio::time::timeout(SILENCE, body.next()).await {
            Ok(Some(Ok(c))) => c,
            _ => return SessionEnd::Lost,
        };
        buf.extend_from_slice(&chunk);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&block);
            let mut event = "message";
            let mut data = String::new();
            for line in text.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    event = e.trim();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                }
            }
            if event == "close" {
                return SessionEnd::Lost;
            }
            if !data.is_empty() && s.frame(&data) {
                return SessionEnd::MatchOver;
            }
        }
    }
}

async fn run_viewer(i: usize, viewer: Arc<Viewer>, topology: Arc<Topology>, stop: Arc<AtomicBool>) {
    let who = format!("chaos-viewer-{i}");
    let token = token(&topology, &who);
    // Viewers come from many addresses, as they would: the per-address handshake limit is for
    // floods, not for an audience failing over together.
    let source = format!("127.0.{}.{}", 1 + i / 250, 1 + i % 250);
    let Ok(http) = reqwest::Client::builder()
        .local_address(source.parse::<std::net::IpAddr>().ok())
        .build()
    else {
        return;
    };
    // Every third viewer uses SSE, the rest WebSocket.
    let sse = i % 3 == 2;
    let mut watching: Option<(String, VersionLine)> = None;
    let mut attempt = i;
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        let (match_id, line) = match &mut watching {
            Some((m, l)) => (m.clone(), l),
            None => match pick_match(&http, &topology, i).await {
                Some(m) => {
                    viewer.tally.lock().unwrap().matches += 1;
                    watching = Some((m, VersionLine::default()));
                    let (m, l) = watching.as_mut().expect("just set");
                    (m.clone(), l)
                }
                None => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let gateway = topology.gateways[attempt % topology.gateways.len()].clone();
        attempt += 1;
        let since = line.position();
        {
            let mut t = viewer.tally.lock().unwrap();
            if !first {
                t.reconnects += 1;
                if since.is_some() {
                    t.resumes += 1;
                }
            }
        }
        first = false;
        let path = match (sse, since) {
            (false, Some((e, v))) => format!("/v1/matches/{match_id}/stream?since={e}:{v}"),
            _ => format!("/v1/matches/{match_id}/stream"),
        };
        let before = (line.messages, line.snapshots, line.epochs_entered);
        let session = Session {
            viewer: &viewer,
            line,
        };
        let end = if sse {
            sse_session(&http, &gateway, &path, &token, since, session).await
        } else {
            ws_session(&topology, &gateway, &source, &path, &token, session).await
        };
        if let Some((_, l)) = &watching {
            let mut t = viewer.tally.lock().unwrap();
            t.snapshots += l.snapshots - before.1;
            t.epochs_entered += l.epochs_entered - before.2;
        }
        match end {
            SessionEnd::MatchOver => {
                watching = None;
                // The listing is cached for a second; do not pick the same ended match again.
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            SessionEnd::Lost => {}
            SessionEnd::Refused => {
                viewer.tally.lock().unwrap().refused += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Places a player through the game servers' matchmakers (the first that answers).
async fn join(
    http: &reqwest::Client,
    topology: &Topology,
    token: &str,
    i: usize,
) -> Option<(String, String, String)> {
    for k in 0..topology.matchmakers.len() {
        let mm = &topology.matchmakers[(i + k) % topology.matchmakers.len()];
        let Ok(res) = http
            .post(format!("{mm}/v1/matchmaking/join"))
            .bearer_auth(token)
            .json(&serde_json::json!({ "region": "eu", "skill": 1000 }))
            .timeout(Duration::from_secs(2))
            .send()
            .await
        else {
            continue;
        };
        let Ok(a) = res.json::<Value>().await else {
            continue;
        };
        if let (Some(s), Some(m), Some(t)) = (
            a["server"].as_str(),
            a["match"].as_str(),
            a["connect_token"].as_str(),
        ) {
            return Some((s.to_string(), m.to_string(), t.to_string()));
        }
    }
    None
}

async fn run_player(i: usize, player: Arc<Player>, topology: Arc<Topology>, stop: Arc<AtomicBool>) {
    let who = format!("chaos-player-{i}");
    let token = token(&topology, &who);
    let http = reqwest::Client::new();
    let mut step = i as u64 * 7;
    while !stop.load(Ordering::Relaxed) {
        let Some((server, _match_id, connect)) = join(&http, &topology, &token, i).await else {
            player.tally.lock().unwrap().join_failures += 1;
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        };
        let Ok(addr) = server.parse() else {
            player.tally.lock().unwrap().join_failures += 1;
            continue;
        };
        let client = UdpClient::connect(
            addr,
            connect,
            LinkConditioner::perfect(),
            i as u64 + 1,
            Duration::from_secs(2),
        )
        .await;
        let Ok(mut c) = client else {
            player.tally.lock().unwrap().join_failures += 1;
            continue;
        };
        player.tally.lock().unwrap().joins += 1;
        while !stop.load(Ordering::Relaxed) {
            step += 1;
            let r = step.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
            let intent = Intent {
                move_x: (r % 255) as i8,
                move_y: ((r >> 8) % 255) as i8,
                aim: (step * 2000) as u16,
                fire: step.is_multiple_of(15),
            };
            if c.step(intent).await.is_err() || c.silence() > SILENCE {
                break;
            }
            if c.silence() < Duration::from_millis(200) {
                *player.last_heard.lock().unwrap() = Instant::now();
            }
            player.tally.lock().unwrap().ticks += 1;
        }
        if stop.load(Ordering::Relaxed) {
            c.disconnect().await;
        }
    }
}
