//! The spectator feed of one match: owns the match's version line. Off the tick hot path, it
//! numbers what the room hands it (versions, event seqs), keeps the spectator state to cut
//! keyframes, encodes every record once and publishes it, retrying until the log accepts it.

use std::sync::Arc;
use std::time::Duration;

use backends::MatchLog;
use bytes::Bytes;
use protocol::{Delta, EventRecord, LogKind, LogRecord, MatchEvent, SpectatorState};
use tokio::sync::mpsc;

use crate::metrics;
use httpkit::Shutdown;

/// What a room hands its publisher.
#[derive(Debug)]
pub enum RoomOutput {
    /// The state the match starts from; published as the epoch's first keyframe (version 0).
    Start(Box<SpectatorState>),
    Delta(Delta),
    Event {
        at_ms: u64,
        event: MatchEvent,
    },
}

pub struct Publisher {
    log: Arc<dyn MatchLog>,
    match_id: String,
    region: String,
    epoch: u64,
    version: u64,
    event_seq: u64,
    state: SpectatorState,
    since_keyframe: u64,
    keyframe_every: u64,
}

impl Publisher {
    pub fn new(
        log: Arc<dyn MatchLog>,
        match_id: String,
        region: String,
        epoch: u64,
        keyframe_every: u64,
    ) -> Publisher {
        Publisher {
            log,
            match_id,
            region,
            epoch,
            version: 0,
            event_seq: 0,
            state: SpectatorState::default(),
            since_keyframe: 0,
            keyframe_every: keyframe_every.max(1),
        }
    }

    /// Publishes everything the room sends until the room hangs up, then a final keyframe.
    /// Publishing retries with backoff while the log is down; `shutdown` only cuts retries
    /// short after the room is gone.
    pub async fn run(mut self, mut rx: mpsc::Receiver<RoomOutput>, shutdown: Shutdown) {
        while let Some(out) = rx.recv().await {
            match out {
                RoomOutput::Start(state) => {
                    self.state = *state;
                    self.publish_keyframe(&shutdown).await;
                }
                RoomOutput::Delta(delta) => {
                    self.version += 1;
                    self.state.apply(&delta);
                    let body = serde_json::to_vec(&delta).expect("delta serializes");
                    self.publish(LogKind::Delta, body.into(), &shutdown).await;
                    self.since_keyframe += 1;
                    if self.since_keyframe >= self.keyframe_every {
                        self.publish_keyframe(&shutdown).await;
                    }
                }
                RoomOutput::Event { at_ms, event } => {
                    self.version += 1;
                    self.event_seq += 1;
                    let record = EventRecord {
                        seq: self.event_seq,
                        region: self.region.clone(),
                        at_ms,
                        event,
                    };
                    let body = serde_json::to_vec(&record).expect("event serializes");
                    self.publish(LogKind::Event, body.into(), &shutdown).await;
                }
            }
        }
        if self.version > 0 {
            self.publish_keyframe(&shutdown).await;
        }
    }

    async fn publish_keyframe(&mut self, shutdown: &Shutdown) {
        let body = serde_json::to_vec(&self.state).expect("state serializes");
        self.publish(LogKind::Keyframe, body.into(), shutdown).await;
        self.since_keyframe = 0;
    }

    async fn publish(&self, kind: LogKind, body: Bytes, shutdown: &Shutdown) {
        let record = LogRecord {
            match_id: self.match_id.clone(),
            epoch: self.epoch,
            version: self.version,
            kind,
            body,
        };
        // Capped at half a second: a JetStream cluster electing a new stream leader answers
        // again within seconds, and a match that waits out a long backoff after that is
        // silent for nothing (one publisher per match, so the retries cost little).
        let mut backoff = Duration::from_millis(50);
        let failing_since = std::time::Instant::now();
        loop {
            match self.log.publish(record.clone()).await {
                Ok(()) => {
                    metrics::PUBLISHED.with_label_values(&[kind.as_str()]).inc();
                    return;
                }
                Err(e) => {
                    metrics::PUBLISH_ERRORS.inc();
                    tracing::warn!(match_id = %self.match_id, error = %e, "publish failed; retrying");
                    if shutdown.is_cancelled() && failing_since.elapsed() >= Duration::from_secs(4)
                    {
                        tracing::error!(match_id = %self.match_id, version = self.version, "giving up publishing at shutdown");
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
            }
        }
    }
}
