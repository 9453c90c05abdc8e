//! A room: one match, simulated at a fixed tick rate. Each tick drains inputs, steps the world
//! and, at the spectator rate, hands a delta to the publisher. The room never awaits the bus:
//! hand-offs go through a bounded channel, and what does not fit waits in a bounded outbox.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use protocol::{now_ms, Delta, MatchEvent, MatchStatus, PlayerResult, Shot};
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

use crate::metrics;
use crate::publisher::RoomOutput;
use crate::sim::{SimEvent, World};
use httpkit::Shutdown;

/// Outputs that may wait for a slow publisher. Consecutive deltas are merged while they wait,
/// so only events accumulate; past this many the room pauses its simulation (no event is ever
/// dropped) until the publisher catches up.
const OUTBOX_LIMIT: usize = 4096;

#[derive(Debug, Clone)]
pub struct RoomConfig {
    pub match_id: String,
    pub region: String,
    pub seed: u64,
    pub bots: usize,
    pub tick_hz: u32,
    pub spectator_hz: u32,
    pub duration: Duration,
}

struct Outbox {
    tx: mpsc::Sender<RoomOutput>,
    waiting: VecDeque<RoomOutput>,
}

impl Outbox {
    fn push(&mut self, out: RoomOutput) {
        if let (RoomOutput::Delta(later), Some(RoomOutput::Delta(earlier))) =
            (&out, self.waiting.back_mut())
        {
            earlier.merge(later.clone());
            return;
        }
        self.waiting.push_back(out);
        self.flush();
    }

    fn flush(&mut self) {
        while let Some(out) = self.waiting.pop_front() {
            match self.tx.try_send(out) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(out)) => {
                    self.waiting.push_front(out);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.waiting.clear();
                    return;
                }
            }
        }
    }

    fn full(&self) -> bool {
        self.waiting.len() >= OUTBOX_LIMIT
    }
}

fn quantize(v: f32) -> i32 {
    (v * 10.0).round() as i32
}

/// Runs one match to its end (or until shutdown, which ends it early with results).
pub async fn run_room(config: RoomConfig, tx: mpsc::Sender<RoomOutput>, shutdown: Shutdown) {
    let mut world = World::new(config.seed, config.tick_hz);
    for i in 0..config.bots {
        world.add_bot(
            format!("{}-bot{i}", config.match_id),
            format!("Bot {}", i + 1),
        );
    }
    let mut outbox = Outbox {
        tx,
        waiting: VecDeque::new(),
    };
    let mut view = world.spectator_state(&config.region);
    outbox.push(RoomOutput::Start(Box::new(view.clone())));
    let started = now_ms();
    outbox.push(RoomOutput::Event {
        at_ms: started,
        event: MatchEvent::MatchStarted {},
    });
    for p in &world.players {
        outbox.push(RoomOutput::Event {
            at_ms: started,
            event: MatchEvent::PlayerJoined {
                player: p.id.clone(),
                name: p.name.clone(),
                bot: p.bot,
            },
        });
    }

    let period = Duration::from_secs_f64(1.0 / config.tick_hz as f64);
    let ticks_per_frame = (config.tick_hz / config.spectator_hz.max(1)).max(1) as u64;
    let total_ticks = (config.duration.as_secs_f64() * config.tick_hz as f64) as u64;
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut shots: Vec<Shot> = Vec::new();
    let mut last_tick_at = Instant::now();
    while world.tick < total_ticks {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        let now = Instant::now();
        // A gap of more than one and a half periods means ticks were skipped: count them.
        let late = now.duration_since(last_tick_at);
        if late > period + period / 2 {
            metrics::TICK_OVERRUNS.inc_by((late.as_secs_f64() / period.as_secs_f64()) as u64 - 1);
        }
        last_tick_at = now;
        outbox.flush();
        if outbox.full() {
            metrics::STALLED_TICKS.inc();
            continue;
        }
        let at_ms = now_ms();
        for ev in world.step() {
            match ev {
                SimEvent::Kill { killer, victim } => outbox.push(RoomOutput::Event {
                    at_ms,
                    event: MatchEvent::Kill { killer, victim },
                }),
                SimEvent::Shot {
                    from,
                    x0,
                    y0,
                    x1,
                    y1,
                    hit,
                } => shots.push(Shot {
                    from,
                    x0: quantize(x0),
                    y0: quantize(y0),
                    x1: quantize(x1),
                    y1: quantize(y1),
                    hit,
                }),
            }
        }
        if world.tick.is_multiple_of(ticks_per_frame) {
            let next = world.spectator_state(&config.region);
            let mut delta = view.diff(&next);
            delta.shots = std::mem::take(&mut shots);
            outbox.push(RoomOutput::Delta(delta));
            view = next;
        }
        metrics::TICKS.inc();
        metrics::TICK_SECONDS.observe(now.elapsed().as_secs_f64());
    }
    end_match(&world, &mut outbox).await;
}

async fn end_match(world: &World, outbox: &mut Outbox) {
    let mut results: Vec<PlayerResult> = world
        .players
        .iter()
        .map(|p| PlayerResult {
            player: p.id.clone(),
            name: p.name.clone(),
            score: p.score,
            kills: p.kills,
            deaths: p.deaths,
        })
        .collect();
    results.sort_by(|a, b| b.score.cmp(&a.score).then_with(|| a.player.cmp(&b.player)));
    outbox.push(RoomOutput::Event {
        at_ms: now_ms(),
        event: MatchEvent::MatchEnded { results },
    });
    outbox.push(RoomOutput::Delta(Delta {
        tick: world.tick,
        status: Some(MatchStatus::Ended),
        ..Delta::default()
    }));
    // The match is over: what is left may now wait on the publisher.
    while let Some(out) = outbox.waiting.pop_front() {
        if outbox.tx.send(out).await.is_err() {
            break;
        }
    }
}
