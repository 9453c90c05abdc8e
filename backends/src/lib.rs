//! The edges of Grandstand: the match log, the leaderboards and the match history, each a
//! small trait with an embedded implementation (no external service) and a real one
//! (NATS JetStream, Redis, PostgreSQL). Everything else in the platform depends only on the
//! traits.

mod expiring;
pub mod history;
pub mod leaderboard;
pub mod leases;
pub mod matchlog;
pub mod membership;
mod probe;
pub mod redis_link;
pub mod rooms;
pub mod tls;

/// The prefix of every Redis key Grandstand writes unless told otherwise (tests and
/// benchmarks use their own, so runs never collide).
pub const DEFAULT_REDIS_PREFIX: &str = "gs:";

pub use history::{
    EpochHistory, History, HistoryError, HistoryRecord, MatchSummary, PartnerEntry, PartnerError,
    PartnerStore, PlayerStats, RebuildSource, SqlHistory,
};
pub use leaderboard::{
    ApplyOutcome, BoardChange, BoardError, BoardPage, Entry, Leaderboards, MemoryLeaderboards,
    RedisLeaderboards, ScoredEvent,
};
pub use leases::{RedisStreamLeases, Refusal};
pub use matchlog::{
    load_feed, tick_subject, DeliveredEvent, EventConsumer, LogError, LogItem, LogStream, MatchLog,
    MemoryLog, MemoryLogLimits, NatsLog, NatsLogConfig, TickBus, TickStream,
};
pub use membership::{GatewayInfo, Membership, MemoryMembership, RedisMembership};
pub use probe::RedisProbe;
pub use protocol::LogKind;
pub use redis_link::{RedisConn, RedisTarget};
pub use rooms::{
    CheckpointStore, MemoryCheckpoints, MemoryRegistry, RedisCheckpoints, RedisRegistry, RoomInfo,
    RoomRegistry, RoomStoreError,
};
