//! The tick loop: the room's only I/O. Player commands are taken as they arrive (inputs
//! applied, shots resolved and told at once); each tick then steps the world, queues every
//! player's snapshot (at the snapshot rate) and a spectator delta (at the spectator rate),
//! then sends the queued datagrams and hands the outputs to the publisher, never waiting for
//! either.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arena::{World, WorldConfig};
use protocol::net::Message;
use protocol::{now_ms, Delta, MatchEvent, MatchStatus, PlayerResult};
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

use super::outbox::Handed;
use super::{Room, RoomConfig, RoomIo, RoomStart};
use crate::metrics;
use crate::port::RoomCommand;
use crate::publisher::RoomOutput;
use httpkit::Shutdown;

/// Commands handled per tick at most; the rest wait for the next tick (the channel is bounded,
/// so a flood is shed at the socket, not here).
const COMMANDS_PER_TICK: usize = 4096;

/// Sends what the room queued and hands its outputs on, without waiting.
fn hand_on(room: &mut Room, tx: &mpsc::Sender<RoomOutput>) {
    room.send_datagrams();
    room.outbox.flush(|out| match tx.try_send(out) {
        Ok(()) => Handed::Taken,
        Err(mpsc::error::TrySendError::Full(out)) => Handed::Full(out),
        Err(mpsc::error::TrySendError::Closed(_)) => Handed::Closed,
    });
}

/// Handles `first` (a command just received between ticks; `None` when a tick begins) and what
/// else waits, up to [`COMMANDS_PER_TICK`] in all, applies the inputs they brought, and queues
/// what that caused (shots, kills) for the players.
fn take_commands(room: &mut Room, io: &mut RoomIo, first: Option<RoomCommand>) {
    let wall = now_ms();
    let new_tick = first.is_none();
    let mut taken = 0;
    if let Some(cmd) = first {
        room.handle(cmd, wall);
        taken += 1;
    }
    while taken < COMMANDS_PER_TICK {
        match io.commands.try_recv() {
            Ok(cmd) => room.handle(cmd, wall),
            Err(_) => break,
        }
        taken += 1;
    }
    room.apply_inputs(new_tick);
    let events = room.world.take_events();
    if !events.is_empty() {
        room.on_sim_events(events);
    }
}

/// Whether the tick is a snapshot tick: `snapshot_hz` of every `tick_hz` ticks, spread evenly
/// (20 of 30: two ticks in every three), so any rate up to the tick rate is honoured, not
/// only its divisors.
fn snapshot_due(tick: u64, tick_hz: u32, snapshot_hz: u32) -> bool {
    let (tick_hz, snapshot_hz) = (u64::from(tick_hz.max(1)), u64::from(snapshot_hz.max(1)));
    if snapshot_hz >= tick_hz {
        return true;
    }
    tick * snapshot_hz / tick_hz != tick.saturating_sub(1) * snapshot_hz / tick_hz
}

/// The configured rewind cap, widened by whatever the snapshot rate adds to the clients'
/// interpolation delay: players at 15 snapshots/s look ~60 ms further back than at 30, and
/// their shots at what they see must not be judged at the cap for it.
fn rewind_cap_ms(configured_ms: u32, snapshot_hz: u32) -> u32 {
    use protocol::net::{interpolation_delay_ms, DEFAULT_INTERPOLATION_DELAY_MS};
    let delay = interpolation_delay_ms(snapshot_hz, DEFAULT_INTERPOLATION_DELAY_MS);
    configured_ms + (delay - DEFAULT_INTERPOLATION_DELAY_MS)
}

/// Runs one match to its end (or until shutdown, which ends it early with results).
pub async fn run_room(
    config: RoomConfig,
    start: RoomStart,
    tx: mpsc::Sender<RoomOutput>,
    mut io: RoomIo,
    shutdown: Shutdown,
) {
    let world_config = WorldConfig {
        tick_hz: config.tick_hz,
        rewind_cap_ms: rewind_cap_ms(config.rewind_cap_ms, config.snapshot_hz),
    };
    let (world, fresh) = match start {
        RoomStart::Fresh => (World::new(config.seed, world_config), true),
        RoomStart::Restored(w) => {
            // The rewind cap is this server's policy (and follows the snapshot rate its accepts
            // announce), not the crashed server's.
            let mut world = w.restored();
            world.config.rewind_cap_ms = world_config.rewind_cap_ms;
            (world, false)
        }
    };
    let mut room = Room::new(config, world, fresh, io.port.clone());
    let mut view = room.world.spectator_state(&room.config.region);
    let mut start = view.clone();
    start.broadcast_delay_ms = room.config.broadcast_delay.as_millis() as u64;
    start.tick_hz = u64::from(room.config.tick_hz);
    room.outbox.push(RoomOutput::Start(Box::new(start)));
    if fresh {
        room.outbox.event(MatchEvent::MatchStarted {});
        let joined: Vec<MatchEvent> = room
            .world
            .players
            .iter()
            .map(|p| MatchEvent::PlayerJoined {
                player: p.id.clone(),
                name: p.name.clone(),
                bot: p.bot,
                id: p.entity,
            })
            .collect();
        for e in joined {
            room.outbox.event(e);
        }
    }
    hand_on(&mut room, &tx);
    let config = room.config.clone();

    let period = Duration::from_secs_f64(1.0 / config.tick_hz as f64);
    let ticks_per_frame = u64::from((config.tick_hz / config.spectator_hz.max(1)).max(1));
    let total_ticks = (config.duration.as_secs_f64() * config.tick_hz as f64) as u64;
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut last_tick_at = Instant::now();
    let act_on_arrival = config.act_on_arrival;
    while room.world.tick < total_ticks {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = interval.tick() => {}
            // Between ticks, what players send is acted on as it arrives: a shot is resolved
            // (against the world as its shooter saw it, as at the tick) and told to the others
            // now, not up to a tick later. Nothing else of the world moves until the tick, so
            // the tick finds the same world as if it had applied these inputs itself. While
            // the publisher is full, commands wait for the tick's stall handling.
            Some(cmd) = io.commands.recv(), if act_on_arrival && !room.outbox.full() => {
                let cpu_at_start = metrics::thread_cpu();
                take_commands(&mut room, &mut io, Some(cmd));
                room.send_events(true);
                hand_on(&mut room, &tx);
                metrics::TICK_CPU_SECONDS.inc_by(
                    metrics::thread_cpu()
                        .saturating_sub(cpu_at_start)
                        .as_secs_f64(),
                );
                continue;
            }
        }
        // What the players sent since the port's last poll goes into this tick. Counted as the
        // port's CPU, not the tick's.
        room.port.drain();
        let now = Instant::now();
        let cpu_at_start = metrics::thread_cpu();
        // A gap of more than one and a half periods means ticks were skipped: count them.
        let late = now.duration_since(last_tick_at);
        if late > period + period / 2 {
            metrics::TICK_OVERRUNS.inc_by((late.as_secs_f64() / period.as_secs_f64()) as u64 - 1);
        }
        last_tick_at = now;
        hand_on(&mut room, &tx);
        if room.outbox.full() {
            metrics::STALLED_TICKS.inc();
            continue;
        }
        take_commands(&mut room, &mut io, None);
        let events = room.world.step();
        room.on_sim_events(events);
        if snapshot_due(room.world.tick, config.tick_hz, config.snapshot_hz) {
            room.send_snapshots();
        } else {
            // Between snapshots, urgent events still leave on the tick they happen.
            room.send_events(false);
        }
        if room.world.tick.is_multiple_of(ticks_per_frame) {
            let next = room.world.spectator_state(&config.region);
            let mut delta = view.diff(&next);
            delta.shots = std::mem::take(&mut room.shots);
            room.outbox.push(RoomOutput::Delta(delta));
            view = next;
        }
        if room.world.tick.is_multiple_of(u64::from(config.tick_hz)) {
            room.expire_quiet_players();
            if let Some(checkpoints) = &io.checkpoints {
                let _ = checkpoints.send(Some(Arc::new(room.checkpoint(io.epoch, total_ticks))));
            }
        }
        hand_on(&mut room, &tx);
        metrics::TICKS.inc();
        metrics::PLAYER_TICKS.inc_by(room.world.players.len() as u64);
        let busy = now.elapsed().as_secs_f64();
        metrics::TICK_SECONDS.observe(busy);
        metrics::TICK_BUSY_SECONDS.inc_by(busy);
        // Nothing above awaits, so the thread ran only this tick in between.
        metrics::TICK_CPU_SECONDS.inc_by(
            metrics::thread_cpu()
                .saturating_sub(cpu_at_start)
                .as_secs_f64(),
        );
    }
    end_match(&mut room, &tx).await;
    // Ended, cleanly: nothing left to take over.
    if let Some(checkpoints) = &io.checkpoints {
        let _ = checkpoints.send(None);
    }
}

async fn end_match(room: &mut Room, tx: &mpsc::Sender<RoomOutput>) {
    room.broadcast(Message::MatchEnded);
    room.send_snapshots();
    let mut results: Vec<PlayerResult> = room
        .world
        .tallies()
        .into_iter()
        .map(|t| PlayerResult {
            player: t.id,
            name: t.name,
            score: t.score,
            kills: t.kills,
            deaths: t.deaths,
        })
        .collect();
    results.sort_by(|a, b| b.score.cmp(&a.score).then_with(|| a.player.cmp(&b.player)));
    room.outbox.event(MatchEvent::MatchEnded { results });
    room.outbox.push(RoomOutput::Delta(Delta {
        tick: room.world.tick,
        status: Some(MatchStatus::Ended),
        ..Delta::default()
    }));
    room.send_datagrams();
    for addr in room.roster.addresses() {
        room.drop_session(addr);
    }
    // The match is over: what is left may now wait on the publisher.
    let waiting: Vec<RoomOutput> = room.outbox.drain().collect();
    for out in waiting {
        if tx.send(out).await.is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{rewind_cap_ms, snapshot_due};

    #[test]
    fn the_rewind_cap_grows_with_the_interpolation_delay_a_lower_snapshot_rate_asks_for() {
        let cap = |snapshot_hz| rewind_cap_ms(200, snapshot_hz);
        assert_eq!(cap(30), 200);
        assert_eq!(cap(20), 225);
        assert_eq!(cap(15), 259);
    }

    #[test]
    fn snapshot_ticks_honour_any_rate_up_to_the_tick_rate_spread_evenly() {
        for (tick_hz, snapshot_hz) in [(30, 30), (30, 20), (30, 15), (30, 10), (60, 20), (60, 45)] {
            let due: Vec<u64> = (1..=u64::from(tick_hz) * 4)
                .filter(|&t| snapshot_due(t, tick_hz, snapshot_hz))
                .collect();
            assert_eq!(due.len() as u32, snapshot_hz * 4, "{tick_hz}/{snapshot_hz}");
            let most_apart = due.windows(2).map(|w| w[1] - w[0]).max().unwrap();
            let period = u64::from(tick_hz.div_ceil(snapshot_hz));
            assert!(most_apart <= period, "{tick_hz}/{snapshot_hz}: {due:?}");
        }
        assert!(
            (1..100).all(|t| snapshot_due(t, 30, 60)),
            "capped at the tick rate"
        );
    }
}
