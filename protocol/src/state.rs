//! The spectator view of a match and the deltas between two views.
//!
//! Deltas carry absolute values for what changed (upserts and removals), never increments, so
//! applying the same delta twice is harmless and `apply(diff(a, b), a) == b` always holds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::PlayerId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MatchStatus {
    #[default]
    Live,
    Ended,
}

/// One player as spectators see them. Positions are quantized to tenths of an arena unit
/// (the arena is 1000 x 1000 units) and angles to whole degrees, which is what viewers can
/// render and keeps messages small.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlayerView {
    /// The player's small id within the match epoch (its game-server entity number), which the
    /// v2 viewer feed names players by; 0 in records of game servers older than v2.
    #[serde(default, skip_serializing_if = "is_zero_u16")]
    pub id: u16,
    pub name: String,
    pub x: i32,
    pub y: i32,
    pub angle: i16,
    pub hp: u8,
    pub alive: bool,
    pub score: u32,
    pub kills: u32,
    pub deaths: u32,
    pub bot: bool,
}

/// The full state a viewer needs to draw a match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
pub struct SpectatorState {
    pub region: String,
    pub status: MatchStatus,
    pub tick: u64,
    pub arena: Arena,
    /// Keyed by player id.
    pub players: BTreeMap<PlayerId, PlayerView>,
    /// How long after the live game viewers see it (competitive matches, against ghosting);
    /// gateways hold the stream back this long and the cold-load API does not serve it live.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub broadcast_delay_ms: u64,
    /// Simulation ticks per second, so clients can place each `tick` on a timeline (for
    /// interpolation and for telling how far behind the game their stream is).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tick_hz: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero_u16(n: &u16) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Arena {
    pub width: i32,
    pub height: i32,
    /// Obstacles as `[x, y, w, h]` in tenths of a unit, like positions.
    pub obstacles: Vec<[i32; 4]>,
}

impl Default for Arena {
    fn default() -> Self {
        Arena {
            width: 10_000,
            height: 10_000,
            obstacles: Vec::new(),
        }
    }
}

/// A hitscan shot, drawn by viewers as a tracer. Shots are transient: they are part of the
/// delta that carries them, never of the state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shot {
    pub from: PlayerId,
    pub x0: i32,
    pub y0: i32,
    pub x1: i32,
    pub y1: i32,
    pub hit: bool,
}

/// Spectator-visible changes between two versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Delta {
    pub tick: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<MatchStatus>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub players: BTreeMap<PlayerId, PlayerView>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<PlayerId>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shots: Vec<Shot>,
}

impl SpectatorState {
    /// Applies `delta` in place.
    pub fn apply(&mut self, delta: &Delta) {
        self.tick = delta.tick;
        if let Some(status) = delta.status {
            self.status = status;
        }
        for id in &delta.removed {
            self.players.remove(id);
        }
        for (id, view) in &delta.players {
            self.players.insert(id.clone(), view.clone());
        }
    }

    /// The delta that turns `self` into `next` (shots are not state and are left empty).
    pub fn diff(&self, next: &SpectatorState) -> Delta {
        let players = next
            .players
            .iter()
            .filter(|(id, view)| self.players.get(*id) != Some(view))
            .map(|(id, view)| (id.clone(), view.clone()))
            .collect();
        let removed = self
            .players
            .keys()
            .filter(|id| !next.players.contains_key(*id))
            .cloned()
            .collect();
        Delta {
            tick: next.tick,
            status: (self.status != next.status).then_some(next.status),
            players,
            removed,
            shots: Vec::new(),
        }
    }
}

impl Delta {
    /// Folds `later` into `self`, so one delta stands for both. Used when a backlog of deltas
    /// must be published as one; shots of the earlier delta are dropped (they are stale).
    pub fn merge(&mut self, later: Delta) {
        self.tick = later.tick;
        if later.status.is_some() {
            self.status = later.status;
        }
        for id in &later.removed {
            self.players.remove(id);
            if !self.removed.contains(id) {
                self.removed.push(id.clone());
            }
        }
        for (id, view) in later.players {
            self.removed.retain(|r| r != &id);
            self.players.insert(id, view);
        }
        self.shots = later.shots;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_view() -> impl Strategy<Value = PlayerView> {
        (
            0..10_000i32,
            0..10_000i32,
            -180..180i16,
            0..=100u8,
            any::<bool>(),
            0..50u32,
        )
            .prop_map(|(x, y, angle, hp, alive, score)| PlayerView {
                id: 0,
                name: "p".into(),
                x,
                y,
                angle,
                hp,
                alive,
                score,
                kills: score,
                deaths: 0,
                bot: true,
            })
    }

    fn arb_state() -> impl Strategy<Value = SpectatorState> {
        (
            prop::collection::btree_map("p[0-9]", arb_view(), 0..8),
            any::<bool>(),
            0..1_000u64,
        )
            .prop_map(|(players, ended, tick)| SpectatorState {
                region: "eu".into(),
                status: if ended {
                    MatchStatus::Ended
                } else {
                    MatchStatus::Live
                },
                tick,
                arena: Arena::default(),
                players,
                broadcast_delay_ms: 0,
                tick_hz: 0,
            })
    }

    proptest! {
        /// Applying the deltas v+1..v+n to the snapshot at v gives the snapshot at v+n.
        #[test]
        fn deltas_replay_to_the_latest_snapshot(states in prop::collection::vec(arb_state(), 1..12)) {
            let mut replayed = states[0].clone();
            for pair in states.windows(2) {
                replayed.apply(&pair[0].diff(&pair[1]));
            }
            prop_assert_eq!(&replayed, states.last().unwrap());
        }

        /// A merged delta has the same effect as its parts applied in order.
        #[test]
        fn merged_deltas_equal_their_sequence(states in prop::collection::vec(arb_state(), 2..8)) {
            let mut merged = states[0].diff(&states[1]);
            for pair in states[1..].windows(2) {
                merged.merge(pair[0].diff(&pair[1]));
            }
            let mut via_merge = states[0].clone();
            via_merge.apply(&merged);
            prop_assert_eq!(&via_merge, states.last().unwrap());
        }
    }
}
