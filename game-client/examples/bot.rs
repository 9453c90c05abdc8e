//! A bot that plays like a player: signs in as a guest, asks the matchmaker for a room,
//! connects over UDP and plays (runs around, shoots at whoever is near), printing its round
//! trip, prediction corrections and packet loss every second.
//!
//! cargo run --release -p game-client --example bot -- [API_URL] [REGION] [SECONDS] [RTT_MS] [LOSS]
//! e.g.  cargo run --release -p game-client --example bot -- http://127.0.0.1:8080 eu 30 100 0.05

use std::time::{Duration, Instant};

use game_client::{ClientEvent, Intent, LinkConditioner, UdpClient};
use protocol::net::Message;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let api = args
        .first()
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let region = args.get(1).cloned().unwrap_or_else(|| "eu".into());
    let secs: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(30);
    let rtt: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(0);
    let loss: f64 = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(0.0);

    let http = reqwest::Client::new();
    let guest: serde_json::Value = http
        .post(format!("{api}/v1/auth/guest"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let token = guest["token"].as_str().unwrap_or_default().to_string();
    let ticket: serde_json::Value = http
        .post(format!("{api}/v1/matchmaking/join"))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "region": region, "skill": 1200 }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let server: std::net::SocketAddr = ticket["server"].as_str().unwrap_or_default().parse()?;
    println!(
        "matched into {} on {server} as {}",
        ticket["match"], guest["player"]
    );
    let link = LinkConditioner::new(rtt, rtt / 5, loss);
    let mut c = UdpClient::connect(
        server,
        ticket["connect_token"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        link,
        rand_seed(),
        Duration::from_secs(5),
    )
    .await?;
    println!("connected as entity {}", c.core.entity);

    let end = Instant::now() + Duration::from_secs(secs);
    let mut next_report = Instant::now() + Duration::from_secs(1);
    let mut waypoint = (500.0f32, 500.0f32);
    let mut step = 0u64;
    let mut kills = 0;
    while Instant::now() < end {
        step += 1;
        let me = c.core.predicted();
        if (me.x - waypoint.0).abs() + (me.y - waypoint.1).abs() < 30.0 {
            let r = rand_seed();
            waypoint = (60.0 + (r % 880) as f32, 60.0 + ((r >> 16) % 880) as f32);
        }
        let (dx, dy) = (waypoint.0 - me.x, waypoint.1 - me.y);
        let len = (dx * dx + dy * dy).sqrt().max(1.0);
        let now = c.now_ms();
        let target = c
            .core
            .interpolated(now)
            .into_iter()
            .filter(|(id, _, _)| *id != c.core.entity)
            .map(|(_, x, y)| (x, y, (x - me.x).powi(2) + (y - me.y).powi(2)))
            .min_by(|a, b| a.2.total_cmp(&b.2));
        let (aim, fire) = match target {
            Some((x, y, d2)) if d2 < 350.0 * 350.0 => (
                arena::physics::radians_to_aim((y - me.y).atan2(x - me.x)),
                true,
            ),
            _ => (0, false),
        };
        let intent = Intent {
            move_x: (dx / len * 127.0) as i8,
            move_y: (dy / len * 127.0) as i8,
            aim,
            fire: fire && step.is_multiple_of(3),
        };
        for e in c.step(intent).await? {
            if let ClientEvent::Message(Message::Death { killer, .. }) = e {
                if killer == c.core.entity {
                    kills += 1;
                }
            }
        }
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(1);
            let s = &c.core.stats;
            let total = s.snapshots + s.snapshots_lost;
            println!(
                "rtt {:.0} ms | corrections {} (max {:.2} units) | snapshot loss {:.1}% | down {:.0} B/s | kills {kills}",
                s.rtt_ms,
                s.corrections,
                s.max_correction,
                100.0 * s.snapshots_lost as f64 / total.max(1) as f64,
                s.bytes_in as f64 / (c.now_ms() as f64 / 1000.0),
            );
        }
    }
    c.disconnect().await;
    Ok(())
}

fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}
