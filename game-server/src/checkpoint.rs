//! Crash recovery. About once a second a room hands a copy of its world to its checkpoint
//! writer (latest wins, off the tick), which saves it to the checkpoint store under this
//! server's lease. When a server dies, its leases lapse; another server (or the restarted one)
//! claims the orphaned checkpoints, replays the match's events logged after the checkpoint
//! (scores are durable in the log the moment they happen), and resumes the match in a new
//! epoch. Players reconnect with their still-valid connect token.

use std::sync::Arc;
use std::time::Duration;

use arena::World;
use backends::{CheckpointStore, MatchLog};
use protocol::{EventRecord, LogKind, MatchEvent};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::metrics;

/// How long a checkpoint's owner may stay silent before another server takes the match.
pub const LEASE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoint {
    #[serde(rename = "match")]
    pub match_id: String,
    pub region: String,
    pub bucket: Option<u32>,
    pub seats: usize,
    pub bots: usize,
    pub epoch: u64,
    /// Events of `epoch` the world already reflects (seqs 1..=this).
    pub events_through: u64,
    pub ends_at_tick: u64,
    pub server: String,
    pub saved_ms: u64,
    pub world: World,
}

/// Saves what the room hands over until the room is done; `None` from the room means the
/// match ended cleanly and the checkpoint goes.
pub async fn write_checkpoints(
    match_id: String,
    owner: String,
    store: Arc<dyn CheckpointStore>,
    mut rx: watch::Receiver<Option<Arc<Checkpoint>>>,
) {
    let mut ended = false;
    while rx.changed().await.is_ok() {
        let Some(cp) = rx.borrow_and_update().clone() else {
            ended = true;
            break;
        };
        let body = serde_json::to_vec(&*cp).expect("checkpoint serializes");
        match store.save(&match_id, &owner, body.into(), LEASE).await {
            Ok(true) => metrics::CHECKPOINTS.with_label_values(&["saved"]).inc(),
            Ok(false) => {
                metrics::CHECKPOINTS
                    .with_label_values(&["lease_lost"])
                    .inc();
                tracing::warn!(%match_id, "another server holds this match's checkpoint lease");
            }
            Err(e) => {
                metrics::CHECKPOINTS.with_label_values(&["failed"]).inc();
                tracing::warn!(%match_id, error = %e, "checkpoint not saved");
            }
        }
    }
    if ended || rx.borrow().is_none() {
        if let Err(e) = store.delete(&match_id).await {
            tracing::warn!(%match_id, error = %e, "checkpoint not deleted");
        }
    }
}

/// Brings a checkpoint's world up to date with the events logged after it, in its epoch and
/// any later ones (a match may have been taken over before). `None` when the log shows the
/// match already ended (nothing to resume).
pub async fn catch_up(
    cp: &mut Checkpoint,
    log: &dyn MatchLog,
) -> Result<Option<usize>, backends::LogError> {
    let records = log.match_events(&cp.match_id).await?;
    let mut applied = 0;
    for r in records {
        if r.kind != LogKind::Event || r.epoch < cp.epoch {
            continue;
        }
        let Ok(ev) = serde_json::from_slice::<EventRecord>(&r.body) else {
            continue;
        };
        if r.epoch == cp.epoch && ev.seq <= cp.events_through {
            continue;
        }
        if matches!(ev.event, MatchEvent::MatchEnded { .. }) {
            return Ok(None);
        }
        apply_event(&mut cp.world, &ev.event);
        applied += 1;
    }
    Ok(Some(applied))
}

fn apply_event(world: &mut World, event: &MatchEvent) {
    match event {
        MatchEvent::Kill { killer, victim } => {
            if let Some(k) = world.players.iter_mut().find(|p| &p.id == killer) {
                k.kills += 1;
                k.score += 1;
            }
            if let Some(v) = world.players.iter_mut().find(|p| &p.id == victim) {
                v.deaths += 1;
            }
        }
        MatchEvent::PlayerJoined {
            player, name, bot, ..
        } => {
            if !world.players.iter().any(|p| &p.id == player) {
                if *bot {
                    world.add_bot(player.clone(), name.clone());
                } else {
                    world.add_human(player.clone(), name.clone());
                }
            }
        }
        MatchEvent::PlayerLeft { player } => {
            if let Some(e) = world
                .players
                .iter()
                .find(|p| &p.id == player)
                .map(|p| p.entity)
            {
                world.remove(e);
            }
        }
        MatchEvent::MatchStarted {} | MatchEvent::MatchEnded { .. } => {}
    }
}
