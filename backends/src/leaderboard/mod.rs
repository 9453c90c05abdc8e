//! Score leaderboards, applied exactly once per match event.
//!
//! Ranking rule, identical on every backend and every read: more points first; on equal points
//! the player who reached that total earlier ranks higher; on the same second, the smaller
//! player id first. All three are folded into one sorted-set score (see [`rank_key`]) so a single
//! ascending range read gives the final order.
//!
//! Exactly once: every event of a match epoch carries a gapless `seq`. A backend applies an event
//! only if `seq == last_applied(match, epoch) + 1`, and records the new `seq` atomically with the
//! score change; `seq <= last` is a duplicate, `seq > last + 1` arrived early and is retried.

mod memory;
pub mod periods;
mod redis;

use async_trait::async_trait;

pub use self::memory::MemoryLeaderboards;
pub use self::redis::RedisLeaderboards;

/// Seconds from the Unix epoch to 2025-01-01, the origin of achievement times.
const TIME_ORIGIN_SECS: u64 = 1_735_689_600;
/// Achievement times take the low 31 bits of the key (68 years of seconds), points the rest:
/// keys stay exact in a double (53 bits) up to 2^22 = 4,194,304 points.
const TIME_SPAN: i64 = 1 << 31;
pub const MAX_POINTS: i64 = (1 << 22) - 1;

/// The sorted-set score of a player with `points` reached at `achieved_ms`: ascending order of
/// keys is the ranking order.
pub fn rank_key(points: i64, achieved_ms: u64) -> i64 {
    let t = achievement_time(achieved_ms);
    -(points.clamp(0, MAX_POINTS) * TIME_SPAN + (TIME_SPAN - 1 - t))
}

/// Seconds from the time origin, clamped into the 31 bits the rank key gives them.
pub fn achievement_time(achieved_ms: u64) -> i64 {
    let t = (achieved_ms / 1000).saturating_sub(TIME_ORIGIN_SECS) as i64;
    t.clamp(0, TIME_SPAN - 1)
}

/// The points stored in a rank key.
pub fn points_of(key: i64) -> i64 {
    (-key).div_euclid(TIME_SPAN)
}

/// An event, reduced to what the leaderboards need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoredEvent {
    pub match_id: String,
    pub epoch: u64,
    pub seq: u64,
    pub at_ms: u64,
    pub changes: Vec<BoardChange>,
    /// `(player, display name)` learnt from this event.
    pub names: Vec<(String, String)>,
}

/// Points added to a player on a board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardChange {
    pub board: String,
    pub player: String,
    pub points: i64,
    /// How long the board is kept after this change, for boards that expire (past periods,
    /// finished matches); `None` keeps it forever.
    pub keep_secs: Option<u64>,
}

impl BoardChange {
    pub fn new(board: impl Into<String>, player: impl Into<String>, points: i64) -> BoardChange {
        BoardChange {
            board: board.into(),
            player: player.into(),
            points,
            keep_secs: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    Applied,
    Duplicate,
    /// An earlier event of the same match epoch has not been applied yet: retry later.
    TooEarly,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[schema(as = BoardEntry)]
pub struct Entry {
    pub rank: u64,
    pub player: String,
    pub name: String,
    pub score: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BoardPage {
    pub entries: Vec<Entry>,
    /// Players on the board.
    pub total: u64,
    /// When any event was last applied (ms since the Unix epoch).
    pub updated_at_ms: Option<u64>,
    /// When an aggregator last reported in, and how many events it had yet to apply.
    pub aggregator_heartbeat_ms: Option<u64>,
    pub aggregator_backlog: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    #[error("leaderboard store unavailable: {0}")]
    Unavailable(String),
}

/// A board name is short and made of `[A-Za-z0-9:_-]` (e.g. `global`, `match:eu-1`).
pub fn valid_board(board: &str) -> bool {
    !board.is_empty()
        && board.len() <= 80
        && board
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'))
}

/// The board a client names: `daily` and `weekly` mean the current period. Returns the board's
/// name and whether it exists even while empty (global and the current periods), or `None` for
/// a name that is not a board.
pub fn resolve_board(board: &str, now_ms: u64) -> Option<(String, bool)> {
    let resolved = match board {
        "daily" => periods::daily_board(now_ms),
        "weekly" => periods::weekly_board(now_ms),
        other => other.to_string(),
    };
    let known = matches!(board, "global" | "daily" | "weekly")
        || ["daily:", "weekly:", "match:", "region:"]
            .iter()
            .any(|p| board.starts_with(p));
    if !known || !valid_board(&resolved) {
        return None;
    }
    let standing = matches!(board, "global" | "daily" | "weekly")
        || resolved == periods::daily_board(now_ms)
        || resolved == periods::weekly_board(now_ms);
    Some((resolved, standing))
}

#[async_trait]
pub trait Leaderboards: Send + Sync + 'static {
    /// Whether the store answers now (readiness); the in-memory boards always do.
    async fn ready(&self) -> Result<(), BoardError> {
        Ok(())
    }

    /// Applies a batch, each event atomically and exactly once; one outcome per event.
    async fn apply(&self, events: &[ScoredEvent]) -> Result<Vec<ApplyOutcome>, BoardError>;

    /// Entries `offset..offset+limit` in rank order, or `None` for a board that has no entries
    /// (never scored, or expired).
    async fn top(
        &self,
        board: &str,
        offset: u64,
        limit: u64,
    ) -> Result<Option<BoardPage>, BoardError>;

    /// An aggregator reports that it is alive and how many events it has yet to apply, so
    /// readers can tell a quiet board from a stale one.
    async fn heartbeat(&self, backlog: u64) -> Result<(), BoardError>;

    /// The `radius` entries above and below `player`, with the player; `None` when the board or
    /// the player is not on it.
    async fn around(
        &self,
        board: &str,
        player: &str,
        radius: u64,
    ) -> Result<Option<BoardPage>, BoardError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_keys_order_by_points_then_earlier_achievement() {
        let t0 = TIME_ORIGIN_SECS * 1000 + 5_000;
        let later = t0 + 60_000;
        // More points first.
        assert!(rank_key(3, later) < rank_key(2, t0));
        // Equal points: earlier first.
        assert!(rank_key(2, t0) < rank_key(2, later));
        // Round trip of the points and exactness near the limit.
        for p in [0, 1, 17, MAX_POINTS] {
            assert_eq!(points_of(rank_key(p, later)), p);
            let k = rank_key(p, later);
            assert_eq!((k as f64) as i64, k, "key must be exact as a double");
        }
        // Times before the origin clamp instead of wrapping.
        assert_eq!(rank_key(1, 0), rank_key(1, TIME_ORIGIN_SECS * 1000));
    }
}
