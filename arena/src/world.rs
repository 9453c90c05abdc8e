//! The arena simulation: deterministic (seeded RNG, fixed timestep), so the same seed and
//! inputs always give the same states. Bots are driven from inside the step; real players only
//! by their inputs, one input moving them by one tick, exactly as their client predicts.

use std::collections::BTreeMap;

use protocol::net::{EntityState, Input};
use protocol::{Arena, PlayerView, SpectatorState};
use serde::{Deserialize, Serialize};

use crate::physics::{
    self, aim_to_radians, blocked, move_body, ray_to_circle, ray_to_obstacle, Body, ARENA,
    OBSTACLES,
};
use crate::rewind::{History, Pose};

pub const RANGE: f32 = 380.0;
pub const DAMAGE: u8 = 34;
pub const FIRE_COOLDOWN_S: f32 = 0.45;
pub const RESPAWN_S: f32 = 2.0;
/// Health pickups: where they sit, how much they heal, how long until one comes back.
pub const PICKUPS: [(f32, f32); 4] = [
    (500.0, 120.0),
    (120.0, 500.0),
    (880.0, 500.0),
    (500.0, 880.0),
];
const PICKUP_HEAL: u8 = 40;
const PICKUP_RESPAWN_S: f32 = 10.0;
const PICKUP_REACH: f32 = 24.0;

/// SplitMix64: tiny, fast and stable across library versions, which keeps replays exact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Player {
    /// The small id this player has on the wire within the room.
    pub entity: u16,
    pub id: String,
    pub name: String,
    pub bot: bool,
    pub body: Body,
    pub angle: f32,
    pub hp: u8,
    pub alive: bool,
    /// Counts respawns: lag compensation never hits a body from an earlier life.
    pub life: u32,
    pub respawn_in: f32,
    pub cooldown: f32,
    pub score: u32,
    pub kills: u32,
    pub deaths: u32,
    /// Where a bot is heading when it has no one to fight.
    pub waypoint: (f32, f32),
    /// The last input applied (real players), for client reconciliation.
    pub last_input: u32,
}

impl Player {
    /// The quantized state clients receive.
    pub fn entity_state(&self) -> EntityState {
        use protocol::net::snapshot::{FLAG_ALIVE, FLAG_BOT};
        let flags = if self.alive { FLAG_ALIVE } else { 0 } | if self.bot { FLAG_BOT } else { 0 };
        EntityState {
            x: self.body.x.round() as u16,
            y: self.body.y.round() as u16,
            angle: (self.angle.rem_euclid(std::f32::consts::TAU) / std::f32::consts::TAU * 256.0)
                .round() as u32 as u8,
            hp: self.hp,
            flags,
            score: self.score.min(u32::from(u16::MAX)) as u16,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum SimEvent {
    Kill {
        killer: u16,
        victim: u16,
    },
    Shot {
        from: u16,
        x0: f32,
        y0: f32,
        x1: f32,
        y1: f32,
        victim: Option<u16>,
    },
    Pickup {
        entity: u16,
    },
}

/// The outcome of a lag-compensated shot, for tests and metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShotOutcome {
    pub victim: Option<u16>,
    /// Ticks the world was rewound.
    pub rewound: u64,
    /// The shooter asked for more rewind than the cap allows.
    pub capped: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorldConfig {
    pub tick_hz: u32,
    /// The most a shot is rewound; older views are judged at this age.
    pub rewind_cap_ms: u32,
}

impl Default for WorldConfig {
    fn default() -> Self {
        WorldConfig {
            tick_hz: 30,
            rewind_cap_ms: 200,
        }
    }
}

/// A player's part in a match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub id: String,
    pub name: String,
    pub score: u32,
    pub kills: u32,
    pub deaths: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct World {
    pub tick: u64,
    pub dt: f32,
    pub config: WorldConfig,
    pub players: Vec<Player>,
    /// What players who left took part in: a match's results list everyone who played it, and
    /// a player who comes back carries on from their tally (their kills are in the log either
    /// way; results that forgot them disagreed with the leaderboards).
    #[serde(default)]
    pub departed: Vec<Tally>,
    /// Seconds until each pickup of `PICKUPS` is back (0 = available).
    pub pickups: Vec<f32>,
    rng: Rng,
    next_entity: u16,
    #[serde(skip, default = "empty_history")]
    history: History,
    #[serde(skip)]
    pending: Vec<SimEvent>,
}

fn empty_history() -> History {
    History::new(2)
}

impl World {
    pub fn new(seed: u64, config: WorldConfig) -> World {
        let tick_hz = config.tick_hz.max(1);
        World {
            tick: 0,
            dt: 1.0 / tick_hz as f32,
            history: History::new(tick_hz as usize + 1),
            config,
            players: Vec::new(),
            departed: Vec::new(),
            pickups: vec![0.0; PICKUPS.len()],
            rng: Rng::new(seed),
            next_entity: 1,
            pending: Vec::new(),
        }
    }

    /// After restoring a checkpoint: the history is not checkpointed (it is one second long
    /// and the epoch changes anyway), so it starts empty.
    pub fn restored(mut self) -> World {
        self.history = History::new(self.config.tick_hz.max(1) as usize + 1);
        self.pending.clear();
        self
    }

    fn spawn_point(&mut self) -> (f32, f32) {
        loop {
            let x = 40.0 + self.rng.unit() * (ARENA - 80.0);
            let y = 40.0 + self.rng.unit() * (ARENA - 80.0);
            // On the protocol's grid from the first tick (see `physics::snap`).
            let (x, y) = (physics::snap_position(x), physics::snap_position(y));
            if !blocked(x, y) {
                return (x, y);
            }
        }
    }

    fn add(&mut self, id: String, name: String, bot: bool) -> u16 {
        let earlier = self
            .departed
            .iter()
            .position(|t| t.id == id)
            .map(|i| self.departed.remove(i))
            .unwrap_or_default();
        let (x, y) = self.spawn_point();
        let waypoint = self.spawn_point();
        let entity = self.next_entity;
        self.next_entity = self.next_entity.wrapping_add(1).max(1);
        self.players.push(Player {
            entity,
            id,
            name,
            bot,
            body: Body {
                x,
                y,
                ..Body::default()
            },
            angle: 0.0,
            hp: 100,
            alive: true,
            life: 0,
            respawn_in: 0.0,
            cooldown: 0.0,
            score: earlier.score,
            kills: earlier.kills,
            deaths: earlier.deaths,
            waypoint,
            last_input: 0,
        });
        entity
    }

    pub fn add_bot(&mut self, id: String, name: String) -> u16 {
        self.add(id, name, true)
    }

    pub fn add_human(&mut self, id: String, name: String) -> u16 {
        self.add(id, name, false)
    }

    /// Takes a player out of the arena; their tally stays for the results.
    pub fn remove(&mut self, entity: u16) -> Option<Player> {
        let i = self.players.iter().position(|p| p.entity == entity)?;
        let p = self.players.remove(i);
        if p.score > 0 || p.kills > 0 || p.deaths > 0 {
            self.departed.push(Tally {
                id: p.id.clone(),
                name: p.name.clone(),
                score: p.score,
                kills: p.kills,
                deaths: p.deaths,
            });
        }
        Some(p)
    }

    /// Everyone who took part in the match and what they did: the players here now and those
    /// who left with something to their name.
    pub fn tallies(&self) -> Vec<Tally> {
        self.players
            .iter()
            .map(|p| Tally {
                id: p.id.clone(),
                name: p.name.clone(),
                score: p.score,
                kills: p.kills,
                deaths: p.deaths,
            })
            .chain(self.departed.iter().cloned())
            .collect()
    }

    pub fn player(&self, entity: u16) -> Option<&Player> {
        self.players.iter().find(|p| p.entity == entity)
    }

    pub fn player_mut(&mut self, entity: u16) -> Option<&mut Player> {
        self.players.iter_mut().find(|p| p.entity == entity)
    }

    pub fn cap_ticks(&self) -> u64 {
        u64::from(self.config.rewind_cap_ms) * u64::from(self.config.tick_hz) / 1000
    }

    /// Applies one input of a real player: one tick of movement, and a lag-compensated shot
    /// if it fires. Inputs at or before the last applied one are ignored (redundant copies).
    pub fn apply_input(&mut self, entity: u16, input: &Input) -> Option<ShotOutcome> {
        let dt = self.dt;
        let i = self.players.iter().position(|p| p.entity == entity)?;
        let p = &mut self.players[i];
        if p.bot || input.seq <= p.last_input {
            return None;
        }
        p.last_input = input.seq;
        if !p.alive {
            return None;
        }
        physics::apply_input(&mut p.body, input, dt);
        p.cooldown = (p.cooldown - dt).max(0.0);
        p.angle = aim_to_radians(input.aim);
        if input.fire && p.cooldown <= 0.0 {
            p.cooldown = FIRE_COOLDOWN_S;
            return Some(self.fire(i, input.aim, u64::from(input.view_tick), input.view_frac));
        }
        None
    }

    /// Resolves a shot from player `i` against the world as it was at `view_tick` + frac.
    fn fire(&mut self, i: usize, aim: u16, view_tick: u64, frac: u8) -> ShotOutcome {
        let now = self.tick;
        let requested = now.saturating_sub(view_tick);
        let capped = requested > self.cap_ticks();
        let (mut at, mut frac) = if capped {
            (now - self.cap_ticks(), 0)
        } else {
            (view_tick.min(now), frac)
        };
        if let Some(oldest) = self.history.oldest_tick() {
            if at < oldest {
                (at, frac) = (oldest, 0);
            }
        }
        let shooter = &self.players[i];
        let (x0, y0) = (shooter.body.x, shooter.body.y);
        let angle = aim_to_radians(aim);
        let (dx, dy) = (angle.cos(), angle.sin());
        let reach = ray_to_obstacle(x0, y0, dx, dy, RANGE).unwrap_or(RANGE);
        let mut best: Option<(usize, f32)> = None;
        for (j, target) in self.players.iter().enumerate() {
            if j == i || !target.alive {
                continue;
            }
            let Some(pose) = self.history.pose_at(target.entity, at, frac) else {
                continue;
            };
            if !pose.alive || pose.life != target.life {
                continue;
            }
            if let Some(d) = ray_to_circle(x0, y0, dx, dy, pose.x, pose.y) {
                if d <= reach && best.is_none_or(|(_, b)| d < b) {
                    best = Some((j, d));
                }
            }
        }
        let end = best.map_or(reach, |(_, d)| d);
        let from = self.players[i].entity;
        let victim = best.map(|(j, _)| self.players[j].entity);
        self.pending.push(SimEvent::Shot {
            from,
            x0,
            y0,
            x1: x0 + dx * end,
            y1: y0 + dy * end,
            victim,
        });
        if let Some((j, _)) = best {
            self.damage(i, j);
        }
        ShotOutcome {
            victim,
            rewound: now - at,
            capped,
        }
    }

    fn damage(&mut self, shooter: usize, victim: usize) {
        let v = &mut self.players[victim];
        v.hp = v.hp.saturating_sub(DAMAGE);
        if v.hp > 0 {
            return;
        }
        v.alive = false;
        v.deaths += 1;
        v.respawn_in = RESPAWN_S;
        v.body.vx = 0.0;
        v.body.vy = 0.0;
        let victim_entity = v.entity;
        let k = &mut self.players[shooter];
        k.kills += 1;
        k.score += 1;
        self.pending.push(SimEvent::Kill {
            killer: k.entity,
            victim: victim_entity,
        });
    }

    /// What happened since the last step (or the last call): the shots and kills of inputs
    /// applied between steps, which the room tells players as they happen.
    pub fn take_events(&mut self) -> Vec<SimEvent> {
        std::mem::take(&mut self.pending)
    }

    /// Advances one fixed step (after this tick's inputs) and returns what happened.
    pub fn step(&mut self) -> Vec<SimEvent> {
        self.tick += 1;
        let dt = self.dt;
        let n = self.players.len();
        for i in 0..n {
            if !self.players[i].alive {
                self.players[i].respawn_in -= dt;
                if self.players[i].respawn_in <= 0.0 {
                    let (x, y) = self.spawn_point();
                    let p = &mut self.players[i];
                    p.body = Body {
                        x,
                        y,
                        ..Body::default()
                    };
                    (p.hp, p.alive) = (100, true);
                    p.life += 1;
                }
                continue;
            }
            if self.players[i].bot {
                self.step_bot(i);
            }
        }
        self.step_pickups();
        let poses = self
            .players
            .iter()
            .map(|p| Pose {
                entity: p.entity,
                x: p.body.x,
                y: p.body.y,
                alive: p.alive,
                life: p.life,
            })
            .collect();
        self.history.record(self.tick, poses);
        std::mem::take(&mut self.pending)
    }

    fn step_bot(&mut self, i: usize) {
        let dt = self.dt;
        let n = self.players.len();
        let me = &self.players[i];
        let target = (0..n)
            .filter(|&j| j != i && self.players[j].alive)
            .map(|j| {
                let (dx, dy) = (
                    self.players[j].body.x - me.body.x,
                    self.players[j].body.y - me.body.y,
                );
                (j, dx * dx + dy * dy)
            })
            .min_by(|a, b| a.1.total_cmp(&b.1));
        let (mut want_x, mut want_y) = (me.waypoint.0 - me.body.x, me.waypoint.1 - me.body.y);
        let mut fire_at = None;
        if let Some((j, d2)) = target {
            let d = d2.sqrt();
            if d < RANGE * 1.5 {
                let (dx, dy) = (
                    self.players[j].body.x - me.body.x,
                    self.players[j].body.y - me.body.y,
                );
                // Close in, but strafe once in range.
                (want_x, want_y) = if d > RANGE * 0.6 { (dx, dy) } else { (-dy, dx) };
                if d < RANGE {
                    fire_at = Some((j, d));
                }
            }
        }
        if (me.waypoint.0 - me.body.x).abs() + (me.waypoint.1 - me.body.y).abs() < 30.0 {
            let wp = self.spawn_point();
            self.players[i].waypoint = wp;
        }
        let len = (want_x * want_x + want_y * want_y).sqrt().max(1e-3);
        let p = &mut self.players[i];
        move_body(&mut p.body, (want_x / len, want_y / len), dt);
        p.cooldown = (p.cooldown - dt).max(0.0);
        if let Some((j, d)) = fire_at {
            let (tx, ty) = (self.players[j].body.x, self.players[j].body.y);
            let p = &mut self.players[i];
            p.angle = (ty - p.body.y).atan2(tx - p.body.x);
            if p.cooldown <= 0.0 {
                p.cooldown = FIRE_COOLDOWN_S;
                let hit = self.rng.unit() < 0.75 - 0.5 * d / RANGE;
                let (x0, y0) = (self.players[i].body.x, self.players[i].body.y);
                self.pending.push(SimEvent::Shot {
                    from: self.players[i].entity,
                    x0,
                    y0,
                    x1: tx,
                    y1: ty,
                    victim: hit.then_some(self.players[j].entity),
                });
                if hit {
                    self.damage(i, j);
                }
            }
        } else {
            let p = &mut self.players[i];
            if (p.body.vx * p.body.vx + p.body.vy * p.body.vy) > 1.0 {
                p.angle = p.body.vy.atan2(p.body.vx);
            }
        }
    }

    fn step_pickups(&mut self) {
        let dt = self.dt;
        for (k, &(px, py)) in PICKUPS.iter().enumerate() {
            if self.pickups[k] > 0.0 {
                self.pickups[k] = (self.pickups[k] - dt).max(0.0);
                continue;
            }
            let taker = self.players.iter_mut().find(|p| {
                p.alive
                    && p.hp < 100
                    && (p.body.x - px).powi(2) + (p.body.y - py).powi(2)
                        < PICKUP_REACH * PICKUP_REACH
            });
            if let Some(p) = taker {
                p.hp = p.hp.saturating_add(PICKUP_HEAL).min(100);
                self.pickups[k] = PICKUP_RESPAWN_S;
                self.pending.push(SimEvent::Pickup { entity: p.entity });
            }
        }
    }

    /// The spectator view: quantized to tenths of a unit and whole degrees.
    pub fn spectator_state(&self, region: &str) -> SpectatorState {
        let players: BTreeMap<String, PlayerView> = self
            .players
            .iter()
            .map(|p| {
                (
                    p.id.clone(),
                    PlayerView {
                        id: p.entity,
                        name: p.name.clone(),
                        x: (p.body.x * 10.0).round() as i32,
                        y: (p.body.y * 10.0).round() as i32,
                        angle: p.angle.to_degrees().round() as i16,
                        hp: p.hp,
                        alive: p.alive,
                        score: p.score,
                        kills: p.kills,
                        deaths: p.deaths,
                        bot: p.bot,
                    },
                )
            })
            .collect();
        SpectatorState {
            region: region.to_string(),
            status: protocol::MatchStatus::Live,
            tick: self.tick,
            arena: Arena {
                width: (ARENA * 10.0) as i32,
                height: (ARENA * 10.0) as i32,
                obstacles: OBSTACLES
                    .iter()
                    .map(|&(x, y, w, h)| {
                        [
                            (x * 10.0) as i32,
                            (y * 10.0) as i32,
                            (w * 10.0) as i32,
                            (h * 10.0) as i32,
                        ]
                    })
                    .collect(),
            },
            players,
            broadcast_delay_ms: 0,
            tick_hz: 0,
        }
    }
}

/// Puts a body at (x, y) at rest (spawns are random; tests want a known spot).
pub fn place(world: &mut World, entity: u16, x: f32, y: f32) {
    if let Some(p) = world.player_mut(entity) {
        p.body = Body {
            x: physics::snap_position(x),
            y: physics::snap_position(y),
            ..Body::default()
        };
    }
}

#[cfg(test)]
mod tests;
