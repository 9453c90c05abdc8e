//! Discrete, score-affecting facts of a match: the `event` messages of the match log.

use serde::{Deserialize, Serialize};

use crate::ids::PlayerId;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MatchEvent {
    /// The match's region is on every event record (`EventRecord::region`).
    MatchStarted {},
    PlayerJoined {
        player: PlayerId,
        name: String,
        bot: bool,
        /// The player's small id within the epoch (see `PlayerView::id`); 0 when unknown.
        #[serde(default, skip_serializing_if = "is_zero_u16")]
        id: u16,
    },
    PlayerLeft {
        player: PlayerId,
    },
    Kill {
        killer: PlayerId,
        victim: PlayerId,
    },
    MatchEnded {
        results: Vec<PlayerResult>,
    },
}

fn is_zero_u16(n: &u16) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlayerResult {
    pub player: PlayerId,
    pub name: String,
    pub score: u32,
    pub kills: u32,
    pub deaths: u32,
}

/// The body of an `event` message. `seq` numbers the events of one match epoch 1, 2, 3, ...
/// without gaps (unlike `version`, which deltas share), so a consumer can tell a duplicate
/// (`seq <= last applied`) from an event that arrived early (`seq > last + 1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub seq: u64,
    /// The region the match is played in (boards per region are kept from it).
    #[serde(default)]
    pub region: String,
    /// When the event happened (ms since the Unix epoch); leaderboard ties are broken by it.
    pub at_ms: u64,
    #[serde(flatten)]
    pub event: MatchEvent,
}

impl MatchEvent {
    /// Every event kind, as `kind` names it on the wire.
    pub const KINDS: [&'static str; 5] = [
        "match_started",
        "player_joined",
        "player_left",
        "kill",
        "match_ended",
    ];

    /// This event's kind, as `kind` names it on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            MatchEvent::MatchStarted {} => "match_started",
            MatchEvent::PlayerJoined { .. } => "player_joined",
            MatchEvent::PlayerLeft { .. } => "player_left",
            MatchEvent::Kill { .. } => "kill",
            MatchEvent::MatchEnded { .. } => "match_ended",
        }
    }

    /// Points each player gains from this event on the score leaderboards.
    pub fn score_changes(&self) -> Vec<(&str, i64)> {
        match self {
            MatchEvent::Kill { killer, .. } => vec![(killer.as_str(), 1)],
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_round_trips_through_its_record() {
        let events = [
            MatchEvent::MatchStarted {},
            MatchEvent::PlayerJoined {
                player: "p".into(),
                name: "P".into(),
                bot: false,
                id: 4,
            },
            MatchEvent::PlayerLeft { player: "p".into() },
            MatchEvent::Kill {
                killer: "a".into(),
                victim: "b".into(),
            },
            MatchEvent::MatchEnded {
                results: vec![PlayerResult {
                    player: "a".into(),
                    name: "A".into(),
                    score: 1,
                    kills: 1,
                    deaths: 0,
                }],
            },
        ];
        for (i, event) in events.into_iter().enumerate() {
            let record = EventRecord {
                seq: i as u64 + 1,
                region: "eu".into(),
                at_ms: 5,
                event,
            };
            let json = serde_json::to_vec(&record).unwrap();
            assert_eq!(
                serde_json::from_slice::<EventRecord>(&json).unwrap(),
                record
            );
        }
    }
}
