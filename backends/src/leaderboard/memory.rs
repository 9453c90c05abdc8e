//! Embedded leaderboards. Bounded by the players and matches it has seen: one entry per player
//! per board and one `last applied` per match epoch (a few bytes each).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{
    points_of, rank_key, ApplyOutcome, BoardError, BoardPage, Entry, Leaderboards, ScoredEvent,
};

#[derive(Default)]
struct Board {
    keys: HashMap<String, i64>,
    order: BTreeSet<(i64, String)>,
    expires_at_ms: Option<u64>,
}

impl Board {
    fn live(&self, now_ms: u64) -> bool {
        !self.order.is_empty() && self.expires_at_ms.is_none_or(|t| t > now_ms)
    }
}

#[derive(Default)]
struct Inner {
    boards: HashMap<String, Board>,
    names: HashMap<String, String>,
    applied: HashMap<(String, u64), u64>,
    updated_at_ms: Option<u64>,
    heartbeat: Option<(u64, u64)>,
}

#[derive(Default)]
pub struct MemoryLeaderboards {
    inner: Mutex<Inner>,
}

impl MemoryLeaderboards {
    pub fn new() -> MemoryLeaderboards {
        MemoryLeaderboards::default()
    }
}

impl Inner {
    fn page(&self, board: &Board, start: usize, len: usize) -> BoardPage {
        let entries = board
            .order
            .iter()
            .enumerate()
            .skip(start)
            .take(len)
            .map(|(i, (key, player))| Entry {
                rank: i as u64 + 1,
                player: player.clone(),
                name: self.names.get(player).cloned().unwrap_or_default(),
                score: points_of(*key),
            })
            .collect();
        BoardPage {
            entries,
            total: board.order.len() as u64,
            updated_at_ms: self.updated_at_ms,
            aggregator_heartbeat_ms: self.heartbeat.map(|h| h.0),
            aggregator_backlog: self.heartbeat.map(|h| h.1),
        }
    }
}

#[async_trait]
impl Leaderboards for MemoryLeaderboards {
    async fn apply(&self, events: &[ScoredEvent]) -> Result<Vec<ApplyOutcome>, BoardError> {
        let mut inner = self.inner.lock().unwrap();
        let mut outcomes = Vec::with_capacity(events.len());
        for ev in events {
            let last = inner
                .applied
                .get(&(ev.match_id.clone(), ev.epoch))
                .copied()
                .unwrap_or(0);
            if ev.seq <= last {
                outcomes.push(ApplyOutcome::Duplicate);
                continue;
            }
            if ev.seq != last + 1 {
                outcomes.push(ApplyOutcome::TooEarly);
                continue;
            }
            inner
                .applied
                .insert((ev.match_id.clone(), ev.epoch), ev.seq);
            for (player, name) in &ev.names {
                inner.names.insert(player.clone(), name.clone());
            }
            let now = protocol::now_ms();
            for c in &ev.changes {
                let (board, player, points) = (&c.board, &c.player, &c.points);
                let b = inner.boards.entry(board.clone()).or_default();
                b.expires_at_ms = c.keep_secs.map(|k| now + k * 1000);
                let old = b.keys.get(player).copied();
                let current = old.map(points_of).unwrap_or(0);
                let key = rank_key(current + points, ev.at_ms);
                if let Some(old) = old {
                    b.order.remove(&(old, player.clone()));
                }
                b.order.insert((key, player.clone()));
                b.keys.insert(player.clone(), key);
            }
            inner.updated_at_ms = Some(now);
            outcomes.push(ApplyOutcome::Applied);
        }
        let now = protocol::now_ms();
        inner
            .boards
            .retain(|_, b| b.expires_at_ms.is_none_or(|t| t > now));
        Ok(outcomes)
    }

    async fn top(
        &self,
        board: &str,
        offset: u64,
        limit: u64,
    ) -> Result<Option<BoardPage>, BoardError> {
        let inner = self.inner.lock().unwrap();
        match inner.boards.get(board) {
            Some(b) if b.live(protocol::now_ms()) => {
                Ok(Some(inner.page(b, offset as usize, limit as usize)))
            }
            _ => Ok(None),
        }
    }

    async fn heartbeat(&self, backlog: u64) -> Result<(), BoardError> {
        self.inner.lock().unwrap().heartbeat = Some((protocol::now_ms(), backlog));
        Ok(())
    }

    async fn around(
        &self,
        board: &str,
        player: &str,
        radius: u64,
    ) -> Result<Option<BoardPage>, BoardError> {
        let inner = self.inner.lock().unwrap();
        let Some(b) = inner
            .boards
            .get(board)
            .filter(|b| b.live(protocol::now_ms()))
        else {
            return Ok(None);
        };
        let Some(key) = b.keys.get(player) else {
            return Ok(None);
        };
        let rank = b.order.range(..(*key, player.to_string())).count();
        let start = rank.saturating_sub(radius as usize);
        Ok(Some(inner.page(
            b,
            start,
            rank - start + radius as usize + 1,
        )))
    }
}

// Held to the same rules as the Redis implementation by the shared suite in
// `backends/tests/real_adapters.rs` (`memory_leaderboards_follow_the_rules`).
