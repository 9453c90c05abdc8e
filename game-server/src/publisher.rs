//! The spectator feed of one match: owns the match's version line. Off the tick hot path, it
//! numbers what the room hands it (versions, event seqs), keeps the spectator state to cut
//! keyframes, encodes every record once, sends it on the live line at once and hands it to a
//! task that stores it in the log in order, retrying until the log accepts it. While the log
//! refuses records (a JetStream leader election takes seconds) the live line keeps going:
//! gateways feed their viewers from it and fill any gap from the log once it answers.

use std::sync::Arc;
use std::time::Duration;

use backends::MatchLog;
use bytes::Bytes;
use protocol::{Delta, EventRecord, LogKind, LogRecord, MatchEvent, SpectatorState};
use tokio::sync::mpsc;
use tracing::Instrument;

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
    /// When the state last went out on the live line (see `LIVE_KEYFRAME_EVERY`).
    live_keyframe_at: std::time::Instant,
}

/// How often the state goes out on the live line as a keyframe (not stored): a gateway whose
/// live line lost a record while the stored log cannot fill the gap (a JetStream election)
/// starts again from the next one instead of waiting for the log.
const LIVE_KEYFRAME_EVERY: Duration = Duration::from_secs(1);

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
            live_keyframe_at: std::time::Instant::now(),
        }
    }

    /// Publishes everything the room sends until the room hangs up, then a final keyframe.
    /// Storing retries with backoff while the log is down; `shutdown` only cuts retries
    /// short after the room is gone.
    pub async fn run(mut self, mut rx: mpsc::Receiver<RoomOutput>, shutdown: Shutdown) {
        let (store_tx, store_rx) = mpsc::channel(STORE_QUEUE);
        let storing = tokio::spawn(store(
            self.log.clone(),
            self.match_id.clone(),
            store_rx,
            shutdown.clone(),
        ));
        self.run_feed(&mut rx, &store_tx).await;
        drop(store_tx);
        let _ = storing.await;
    }

    async fn run_feed(&mut self, rx: &mut mpsc::Receiver<RoomOutput>, store: &Store) {
        while let Some(out) = rx.recv().await {
            match out {
                RoomOutput::Start(state) => {
                    self.state = *state;
                    self.publish_keyframe(store).await;
                }
                RoomOutput::Delta(delta) => {
                    self.version += 1;
                    self.state.apply(&delta);
                    let body = serde_json::to_vec(&delta).expect("delta serializes");
                    self.publish(LogKind::Delta, body.into(), store).await;
                    self.since_keyframe += 1;
                    if self.since_keyframe >= self.keyframe_every {
                        self.publish_keyframe(store).await;
                    } else if self.log.has_live_line()
                        && self.live_keyframe_at.elapsed() >= LIVE_KEYFRAME_EVERY
                    {
                        self.live_keyframe_at = std::time::Instant::now();
                        let record = LogRecord {
                            match_id: self.match_id.clone(),
                            epoch: self.epoch,
                            version: self.version,
                            kind: LogKind::Keyframe,
                            body: serde_json::to_vec(&self.state)
                                .expect("state serializes")
                                .into(),
                        };
                        self.log.publish_live(&record).await;
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
                    self.publish(LogKind::Event, body.into(), store).await;
                }
            }
        }
        if self.version > 0 {
            self.publish_keyframe(store).await;
        }
    }

    async fn publish_keyframe(&mut self, store: &Store) {
        let body = serde_json::to_vec(&self.state).expect("state serializes");
        self.publish(LogKind::Keyframe, body.into(), store).await;
        self.since_keyframe = 0;
    }

    /// Sends the record on the live line (keyframes stay off it: followers start from stored
    /// ones) and queues it for the log; waits only when the store queue is full.
    async fn publish(&self, kind: LogKind, body: Bytes, store: &Store) {
        let record = LogRecord {
            match_id: self.match_id.clone(),
            epoch: self.epoch,
            version: self.version,
            kind,
            body,
        };
        if kind != LogKind::Keyframe {
            self.log.publish_live(&record).await;
        }
        let _ = store.send(record).await;
    }
}

type Store = mpsc::Sender<LogRecord>;

/// Records waiting to be stored in the log, in order. At the limit the publisher waits, and
/// behind it the room keeps outputs in its outbox (merging consecutive deltas): about 100 s
/// of a 10 Hz match, longer than any leader election.
const STORE_QUEUE: usize = 1024;

/// Stores each record in the log, in order, each retried until the log accepts it.
async fn store(
    log: Arc<dyn MatchLog>,
    match_id: String,
    mut records: mpsc::Receiver<LogRecord>,
    shutdown: Shutdown,
) {
    while let Some(record) = records.recv().await {
        let kind = record.kind;
        let version = record.version;
        // Capped at half a second: a JetStream cluster electing a new stream leader answers
        // again within seconds, and a match that waits out a long backoff after that is
        // silent for nothing (one publisher per match, so the retries cost little).
        let mut backoff = Duration::from_millis(50);
        let failing_since = std::time::Instant::now();
        loop {
            let span = tracing::info_span!(
                target: "grandstand::trace",
                "match_log.publish",
                match_id = %match_id,
                kind = kind.as_str(),
                version
            );
            match log.publish(record.clone()).instrument(span).await {
                Ok(()) => {
                    metrics::PUBLISHED.with_label_values(&[kind.as_str()]).inc();
                    break;
                }
                Err(e) => {
                    metrics::PUBLISH_ERRORS.inc();
                    tracing::warn!(%match_id, error = %e, "publish failed; retrying");
                    if shutdown.is_cancelled() && failing_since.elapsed() >= Duration::from_secs(4)
                    {
                        tracing::error!(%match_id, version, "giving up publishing at shutdown");
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
            }
        }
    }
}
