//! The arena simulation: deterministic (seeded RNG, fixed timestep), so the same seed and
//! inputs always give the same states. Bots are driven from inside the step.

use std::collections::BTreeMap;

use protocol::{Arena, PlayerView, SpectatorState};

pub const ARENA: f32 = 1000.0;
const MAX_SPEED: f32 = 150.0;
const ACCEL: f32 = 600.0;
const RADIUS: f32 = 12.0;
const RANGE: f32 = 380.0;
const DAMAGE: u8 = 34;
const FIRE_COOLDOWN_S: f32 = 0.45;
const RESPAWN_S: f32 = 2.0;

/// Obstacles as (x, y, w, h) in arena units.
pub const OBSTACLES: [(f32, f32, f32, f32); 4] = [
    (200.0, 200.0, 120.0, 60.0),
    (680.0, 220.0, 60.0, 160.0),
    (260.0, 650.0, 160.0, 60.0),
    (640.0, 700.0, 120.0, 120.0),
];

/// SplitMix64: tiny, fast and stable across library versions, which keeps replays exact.
#[derive(Debug, Clone)]
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

#[derive(Debug, Clone, PartialEq)]
pub struct Player {
    pub id: String,
    pub name: String,
    pub bot: bool,
    pub x: f32,
    pub y: f32,
    pub vx: f32,
    pub vy: f32,
    pub angle: f32,
    pub hp: u8,
    pub alive: bool,
    pub respawn_in: f32,
    pub cooldown: f32,
    pub score: u32,
    pub kills: u32,
    pub deaths: u32,
    /// Where a bot is heading when it has no one to fight.
    pub waypoint: (f32, f32),
}

#[derive(Debug, Clone, PartialEq)]
pub enum SimEvent {
    Kill {
        killer: String,
        victim: String,
    },
    Shot {
        from: String,
        x0: f32,
        y0: f32,
        x1: f32,
        y1: f32,
        hit: bool,
    },
}

#[derive(Debug, Clone)]
pub struct World {
    pub tick: u64,
    pub dt: f32,
    pub players: Vec<Player>,
    rng: Rng,
}

fn blocked(x: f32, y: f32) -> bool {
    OBSTACLES.iter().any(|&(ox, oy, w, h)| {
        x > ox - RADIUS && x < ox + w + RADIUS && y > oy - RADIUS && y < oy + h + RADIUS
    })
}

impl World {
    pub fn new(seed: u64, tick_hz: u32) -> World {
        World {
            tick: 0,
            dt: 1.0 / tick_hz as f32,
            players: Vec::new(),
            rng: Rng::new(seed),
        }
    }

    fn spawn_point(&mut self) -> (f32, f32) {
        loop {
            let x = 40.0 + self.rng.unit() * (ARENA - 80.0);
            let y = 40.0 + self.rng.unit() * (ARENA - 80.0);
            if !blocked(x, y) {
                return (x, y);
            }
        }
    }

    pub fn add_bot(&mut self, id: String, name: String) {
        let (x, y) = self.spawn_point();
        let waypoint = self.spawn_point();
        self.players.push(Player {
            id,
            name,
            bot: true,
            x,
            y,
            vx: 0.0,
            vy: 0.0,
            angle: 0.0,
            hp: 100,
            alive: true,
            respawn_in: 0.0,
            cooldown: 0.0,
            score: 0,
            kills: 0,
            deaths: 0,
            waypoint,
        });
    }

    /// Advances one fixed step and returns what happened.
    pub fn step(&mut self) -> Vec<SimEvent> {
        self.tick += 1;
        let dt = self.dt;
        let mut events = Vec::new();
        let n = self.players.len();
        for i in 0..n {
            if !self.players[i].alive {
                self.players[i].respawn_in -= dt;
                if self.players[i].respawn_in <= 0.0 {
                    let (x, y) = self.spawn_point();
                    let p = &mut self.players[i];
                    (p.x, p.y, p.vx, p.vy, p.hp, p.alive) = (x, y, 0.0, 0.0, 100, true);
                }
                continue;
            }
            // Nearest living opponent.
            let me = &self.players[i];
            let target = (0..n)
                .filter(|&j| j != i && self.players[j].alive)
                .map(|j| {
                    let (dx, dy) = (self.players[j].x - me.x, self.players[j].y - me.y);
                    (j, dx * dx + dy * dy)
                })
                .min_by(|a, b| a.1.total_cmp(&b.1));
            let (mut want_x, mut want_y) = (me.waypoint.0 - me.x, me.waypoint.1 - me.y);
            let mut fire_at = None;
            if let Some((j, d2)) = target {
                let d = d2.sqrt();
                if d < RANGE * 1.5 {
                    let (tx, ty) = (self.players[j].x, self.players[j].y);
                    // Close in, but strafe once in range.
                    let (dx, dy) = (tx - me.x, ty - me.y);
                    if d > RANGE * 0.6 {
                        (want_x, want_y) = (dx, dy);
                    } else {
                        (want_x, want_y) = (-dy, dx);
                    }
                    if d < RANGE {
                        fire_at = Some((j, d));
                    }
                }
            }
            if (me.waypoint.0 - me.x).abs() + (me.waypoint.1 - me.y).abs() < 30.0 {
                let wp = self.spawn_point();
                self.players[i].waypoint = wp;
            }
            let len = (want_x * want_x + want_y * want_y).sqrt().max(1e-3);
            let p = &mut self.players[i];
            let (dvx, dvy) = (
                want_x / len * MAX_SPEED - p.vx,
                want_y / len * MAX_SPEED - p.vy,
            );
            let dv = (dvx * dvx + dvy * dvy).sqrt().max(1e-3);
            let step = (ACCEL * dt).min(dv);
            p.vx += dvx / dv * step;
            p.vy += dvy / dv * step;
            let (nx, ny) = (
                (p.x + p.vx * dt).clamp(RADIUS, ARENA - RADIUS),
                (p.y + p.vy * dt).clamp(RADIUS, ARENA - RADIUS),
            );
            // Slide along obstacles: take whichever axis is free.
            if !blocked(nx, ny) {
                (p.x, p.y) = (nx, ny);
            } else if !blocked(nx, p.y) {
                p.x = nx;
                p.vy = 0.0;
            } else if !blocked(p.x, ny) {
                p.y = ny;
                p.vx = 0.0;
            } else {
                (p.vx, p.vy) = (0.0, 0.0);
            }
            p.cooldown = (p.cooldown - dt).max(0.0);
            if let Some((j, d)) = fire_at {
                let (tx, ty) = (self.players[j].x, self.players[j].y);
                let p = &mut self.players[i];
                p.angle = (ty - p.y).atan2(tx - p.x);
                if p.cooldown <= 0.0 {
                    p.cooldown = FIRE_COOLDOWN_S;
                    let hit = self.rng.unit() < 0.75 - 0.5 * d / RANGE;
                    let (x0, y0) = (self.players[i].x, self.players[i].y);
                    events.push(SimEvent::Shot {
                        from: self.players[i].id.clone(),
                        x0,
                        y0,
                        x1: tx,
                        y1: ty,
                        hit,
                    });
                    if hit {
                        let victim = &mut self.players[j];
                        victim.hp = victim.hp.saturating_sub(DAMAGE);
                        if victim.hp == 0 {
                            victim.alive = false;
                            victim.deaths += 1;
                            victim.respawn_in = RESPAWN_S;
                            let victim_id = victim.id.clone();
                            let killer = &mut self.players[i];
                            killer.kills += 1;
                            killer.score += 1;
                            events.push(SimEvent::Kill {
                                killer: killer.id.clone(),
                                victim: victim_id,
                            });
                        }
                    }
                }
            } else if p_speed(&self.players[i]) > 1.0 {
                let p = &mut self.players[i];
                p.angle = p.vy.atan2(p.vx);
            }
        }
        events
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
                        name: p.name.clone(),
                        x: (p.x * 10.0).round() as i32,
                        y: (p.y * 10.0).round() as i32,
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
        }
    }
}

fn p_speed(p: &Player) -> f32 {
    (p.vx * p.vx + p.vy * p.vy).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world(seed: u64) -> World {
        let mut w = World::new(seed, 30);
        for i in 0..6 {
            w.add_bot(format!("b{i}"), format!("Bot {i}"));
        }
        w
    }

    #[test]
    fn same_seed_gives_identical_matches() {
        let (mut a, mut b) = (world(7), world(7));
        let mut events_a = Vec::new();
        let mut events_b = Vec::new();
        for _ in 0..900 {
            events_a.extend(a.step());
            events_b.extend(b.step());
        }
        assert_eq!(a.players, b.players);
        assert_eq!(events_a, events_b);
        assert_eq!(
            serde_json::to_vec(&a.spectator_state("eu")).unwrap(),
            serde_json::to_vec(&b.spectator_state("eu")).unwrap()
        );
        // And bots actually fight: 30 s of play produces kills.
        assert!(events_a.iter().any(|e| matches!(e, SimEvent::Kill { .. })));
    }

    #[test]
    fn players_stay_in_the_arena_and_out_of_obstacles() {
        let mut w = world(3);
        for _ in 0..3000 {
            w.step();
            for p in &w.players {
                assert!(
                    p.x >= RADIUS
                        && p.x <= ARENA - RADIUS
                        && p.y >= RADIUS
                        && p.y <= ARENA - RADIUS
                );
                assert!(
                    !blocked(p.x, p.y),
                    "{} inside an obstacle at {},{}",
                    p.id,
                    p.x,
                    p.y
                );
            }
        }
    }

    #[test]
    fn scores_add_up_to_deaths() {
        let mut w = world(11);
        let mut kills = 0;
        for _ in 0..1800 {
            kills += w
                .step()
                .iter()
                .filter(|e| matches!(e, SimEvent::Kill { .. }))
                .count();
        }
        let total_score: u32 = w.players.iter().map(|p| p.score).sum();
        let total_deaths: u32 = w.players.iter().map(|p| p.deaths).sum();
        assert_eq!(total_score as usize, kills);
        assert_eq!(total_deaths as usize, kills);
    }
}
