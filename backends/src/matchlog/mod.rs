//! The versioned match log (its contract: docs/architecture.md, "The match log").

mod memory;
mod nats;

use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use futures::{Stream, StreamExt};
use protocol::{LogRecord, MatchFeed};

pub use memory::{MemoryLog, MemoryLogLimits};
pub use nats::{NatsLog, NatsLogConfig};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("unknown match")]
    UnknownMatch,
    #[error("follower fell behind the live log and must resubscribe")]
    Lagged,
    #[error("match log unavailable: {0}")]
    Unavailable(String),
}

impl LogError {
    pub(crate) fn unavailable(e: impl std::fmt::Display) -> LogError {
        LogError::Unavailable(e.to_string())
    }
}

/// A record read while following a match. `caught_up` is true once the follower has read
/// everything the log held when it subscribed; from then on records are live.
#[derive(Debug, Clone)]
pub struct LogItem {
    pub record: LogRecord,
    pub caught_up: bool,
    /// When the log accepted the record (µs since the Unix epoch), where the backend knows.
    pub published_us: Option<u64>,
}

pub type LogStream = Pin<Box<dyn Stream<Item = Result<LogItem, LogError>> + Send>>;

/// Live leaderboard ticks of one board, each a complete encoded message (latest wins).
pub type TickStream = Pin<Box<dyn Stream<Item = bytes::Bytes> + Send>>;

/// The subject of a board's ticks: `leaderboard.<board>` next to the production match log,
/// `<root>-leaderboard.<board>` beside any other subject root (tests), never under the match
/// log's own root, which the stream captures.
pub fn tick_subject(subject_root: &str, board: &str) -> String {
    if subject_root == "match" {
        format!("leaderboard.{board}")
    } else {
        format!("{subject_root}-leaderboard.{board}")
    }
}

#[async_trait]
pub trait MatchLog: Send + Sync + 'static {
    /// Whether the log answers now (readiness); the in-process log always does.
    async fn ready(&self) -> Result<(), LogError> {
        Ok(())
    }

    /// Appends a record. Publishing the same (match, epoch, version, kind) twice stores it once.
    async fn publish(&self, record: LogRecord) -> Result<(), LogError>;

    /// Follows one match from its latest keyframe: the keyframe, every record after it, then
    /// live records. `UnknownMatch` when the match has no keyframe.
    async fn follow(&self, match_id: &str) -> Result<LogStream, LogError>;

    /// Follows one match from its first retained keyframe (the start of the match while the
    /// log still holds it): every record from there, then live records, like `follow`.
    /// `UnknownMatch` when the match has no keyframe.
    async fn replay(&self, match_id: &str) -> Result<LogStream, LogError>;

    /// Sends a record on the live line too: fire-and-forget, never stored, delivered only to
    /// those listening now (core NATS beside JetStream). Followers take the live line when the
    /// stored log cannot hand out records for a while (a JetStream stream leader election),
    /// so viewers do not wait for it. The in-process log has no such gap: nothing to do.
    async fn publish_live(&self, _record: &LogRecord) {}

    /// Whether `publish_live` goes anywhere (publishers skip the work of live keyframes
    /// otherwise).
    fn has_live_line(&self) -> bool {
        false
    }

    /// The live line of one match from now on (what `publish_live` sends), where the log has
    /// one. Records may be lost or arrive twice; a follower applies one only when it is the
    /// next on the version line.
    async fn live(&self, _match_id: &str) -> Result<Option<LogStream>, LogError> {
        Ok(None)
    }

    /// The latest keyframe of a match.
    async fn latest_keyframe(&self, match_id: &str) -> Result<LogRecord, LogError>;

    /// Every match that has a keyframe in the retained log.
    async fn match_ids(&self) -> Result<Vec<String>, LogError>;

    /// A durable consumer of every match's events, named `name`; consumers with the same name
    /// share (compete for) the work and resume where the last one acknowledged.
    async fn event_consumer(&self, name: &str) -> Result<Box<dyn EventConsumer>, LogError>;

    /// Every retained event record of one match (all epochs), oldest first: what a server
    /// taking over a crashed room replays past its checkpoint.
    async fn match_events(&self, match_id: &str) -> Result<Vec<LogRecord>, LogError>;

    /// Every retained event of every match, oldest first, ending once caught up (the last item
    /// has `caught_up`); empty when there are none. For rebuilds.
    async fn all_events(&self) -> Result<LogStream, LogError>;
}

/// The live line's subject root: `live` beside the production match log, `<root>-live` beside
/// any other subject root (tests); never under the match log's own root, which the stream
/// captures (live records are not stored).
pub fn live_root(subject_root: &str) -> String {
    if subject_root == "match" {
        "live".to_string()
    } else {
        format!("{subject_root}-live")
    }
}

/// Leaderboard ticks, from the aggregator to the gateways: not part of the match log (never
/// stored, no versions, latest wins), they travel beside it on the same connection, so the
/// match log's two implementations carry them too.
#[async_trait]
pub trait TickBus: Send + Sync + 'static {
    /// Publishes a leaderboard tick. Ticks are not stored: a subscriber gets the ones published
    /// while it listens.
    async fn publish_tick(&self, board: &str, tick: bytes::Bytes) -> Result<(), LogError>;

    /// Subscribes to a board's ticks.
    async fn ticks(&self, board: &str) -> Result<TickStream, LogError>;
}

/// An event handed to a consumer, to be acknowledged once its effect is durable.
pub struct DeliveredEvent {
    pub record: LogRecord,
    /// How many times this event has been delivered (1 the first time).
    pub delivered: u64,
    pub(crate) handle: AckHandle,
}

pub(crate) enum AckHandle {
    Memory(u64),
    Nats(Box<async_nats::jetstream::Message>),
}

#[async_trait]
pub trait EventConsumer: Send {
    /// Up to `max` events, waiting at most `wait` for the first one. Empty on time-out.
    async fn next_batch(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<DeliveredEvent>, LogError>;

    /// The event's effect is durable: never deliver it again.
    async fn ack(&mut self, event: &DeliveredEvent) -> Result<(), LogError>;

    /// Events not yet delivered to this consumer (its backlog), where the backend can tell.
    async fn backlog(&mut self) -> Option<u64>;

    /// Deliver the event again after `delay` (it arrived before an event it depends on, or its
    /// effect could not be made durable).
    async fn retry_later(
        &mut self,
        event: &DeliveredEvent,
        delay: Duration,
    ) -> Result<(), LogError>;
}

/// Reads a match's log from its latest keyframe up to the present into a fresh feed: the cold
/// load behind snapshot requests.
pub async fn load_feed(
    log: &dyn MatchLog,
    match_id: &str,
    ring_capacity: usize,
) -> Result<MatchFeed, LogError> {
    let mut stream = log.follow(match_id).await?;
    let mut feed = MatchFeed::new(match_id, ring_capacity);
    while let Some(item) = stream.next().await {
        let item = item?;
        feed.apply(&item.record);
        if item.caught_up {
            return Ok(feed);
        }
    }
    Err(LogError::Unavailable("log ended while loading".into()))
}
