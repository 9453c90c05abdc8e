//! The game-server role: authoritative rooms with a fixed-rate tick loop, played by bots,
//! each publishing its match's versioned spectator feed to the match log.

mod metrics;
pub mod publisher;
pub mod room;
pub mod sim;

use std::sync::Arc;
use std::time::Duration;

use backends::MatchLog;
use httpkit::Shutdown;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::publisher::Publisher;
use crate::room::{run_room, RoomConfig};

#[derive(Debug, Clone)]
pub struct GameServerConfig {
    /// Matches kept running at all times (a finished one is replaced by a new one).
    pub matches: usize,
    pub regions: Vec<String>,
    pub bots_per_match: usize,
    pub tick_hz: u32,
    pub spectator_hz: u32,
    pub keyframe_every: Duration,
    pub match_duration: Duration,
    /// Pause between a match's end and the next one in its slot.
    pub intermission: Duration,
    /// Seed of the first match; `None` draws one.
    pub seed: Option<u64>,
}

impl Default for GameServerConfig {
    fn default() -> Self {
        GameServerConfig {
            matches: 2,
            regions: vec!["eu".into(), "us".into(), "asia".into()],
            bots_per_match: 8,
            tick_hz: 30,
            spectator_hz: 10,
            keyframe_every: Duration::from_secs(5),
            match_duration: Duration::from_secs(300),
            intermission: Duration::from_secs(5),
            seed: None,
        }
    }
}

/// Runs the rooms until `shutdown`, ending every match cleanly (with results) on the way out.
/// `udp` is the player port; the player protocol arrives with the game-server issue, until then
/// datagrams are counted and dropped.
pub async fn run(
    config: GameServerConfig,
    udp: UdpSocket,
    log: Arc<dyn MatchLog>,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let config = Arc::new(config);
    let mut slots = Vec::new();
    for slot in 0..config.matches {
        let region = config.regions[slot % config.regions.len().max(1)].clone();
        slots.push(tokio::spawn(run_slot(
            slot,
            region,
            config.clone(),
            log.clone(),
            shutdown.clone(),
        )));
    }
    let udp_task = tokio::spawn(drain_udp(udp, shutdown.clone()));
    for s in slots {
        let _ = s.await;
    }
    udp_task.abort();
    Ok(())
}

async fn drain_udp(udp: UdpSocket, shutdown: Shutdown) {
    let mut buf = vec![0u8; 2048];
    loop {
        tokio::select! {
            r = udp.recv_from(&mut buf) => if r.is_ok() { metrics::UDP_DATAGRAMS.inc(); },
            _ = shutdown.cancelled() => return,
        }
    }
}

/// One match slot: plays matches back to back until shutdown.
async fn run_slot(
    slot: usize,
    region: String,
    config: Arc<GameServerConfig>,
    log: Arc<dyn MatchLog>,
    shutdown: Shutdown,
) {
    let mut round = 0u64;
    while !shutdown.is_cancelled() {
        let match_id = format!("{region}-{:08x}", rand::random::<u32>());
        let epoch = protocol::now_ms();
        let seed = config
            .seed
            .map(|s| s.wrapping_add(slot as u64 * 1_000_003 + round))
            .unwrap_or_else(rand::random);
        let spectator_hz = config.spectator_hz.clamp(1, config.tick_hz);
        let keyframe_every = (config.keyframe_every.as_secs_f64() * spectator_hz as f64)
            .round()
            .max(1.0) as u64;
        let (tx, rx) = mpsc::channel(1024);
        let publisher = Publisher::new(
            log.clone(),
            match_id.clone(),
            region.clone(),
            epoch,
            keyframe_every,
        );
        let publishing = tokio::spawn(publisher.run(rx, shutdown.clone()));
        tracing::info!(%match_id, %region, epoch, "match starting");
        metrics::LIVE_MATCHES.inc();
        run_room(
            RoomConfig {
                match_id: match_id.clone(),
                region: region.clone(),
                seed,
                bots: config.bots_per_match,
                tick_hz: config.tick_hz,
                spectator_hz,
                duration: config.match_duration,
            },
            tx,
            shutdown.clone(),
        )
        .await;
        metrics::LIVE_MATCHES.dec();
        let _ = publishing.await;
        tracing::info!(%match_id, "match ended");
        round += 1;
        tokio::select! {
            _ = tokio::time::sleep(config.intermission) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}
