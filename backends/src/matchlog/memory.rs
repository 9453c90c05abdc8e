//! The embedded match log: one process, bounded retention, nothing on disk.
//!
//! Limits (see [`MemoryLogLimits`]): per match, its history from the first retained keyframe
//! (what a replay from the start reads; past `max_history_per_match` records, or all matches'
//! histories past `max_history_bytes`, the oldest keyframe's stretch is dropped, oldest match
//! first, down to the latest keyframe); past `max_records_per_match` records since the latest
//! keyframe the backlog is dropped and followers resync at the next keyframe; at most
//! `max_matches` matches (the oldest is forgotten first); the most recent `max_events` events
//! for event consumers (a consumer that falls further behind skips ahead and the loss is
//! logged).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use protocol::{LogKind, LogRecord};
use tokio::sync::{broadcast, watch};
use tokio_stream::wrappers::{errors::BroadcastStreamRecvError, BroadcastStream};

use super::{
    AckHandle, DeliveredEvent, EventConsumer, LogError, LogItem, LogStream, MatchLog, TickBus,
};

#[derive(Debug, Clone)]
pub struct MemoryLogLimits {
    pub max_matches: usize,
    pub max_records_per_match: usize,
    /// Records of one match kept for replays from the start (about an hour of a 10 Hz match).
    pub max_history_per_match: usize,
    /// Payload bytes of every match's history together.
    pub max_history_bytes: usize,
    pub max_events: usize,
    /// Live records buffered per follower before it is told it lagged.
    pub follower_buffer: usize,
}

impl Default for MemoryLogLimits {
    fn default() -> Self {
        MemoryLogLimits {
            max_matches: 1024,
            max_records_per_match: 65_536,
            max_history_per_match: 65_536,
            max_history_bytes: 256 << 20,
            max_events: 200_000,
            follower_buffer: 4096,
        }
    }
}

struct MatchEntry {
    /// The retained records (with their publish time) from the first retained keyframe on.
    history: VecDeque<(LogRecord, u64)>,
    /// Where in `history` the latest keyframe is: followers start there.
    latest_keyframe: Option<usize>,
    /// Payload bytes in `history`.
    bytes: usize,
    last: Option<(u64, u64)>,
    live: broadcast::Sender<(LogRecord, u64)>,
}

impl MatchEntry {
    /// The records from `start` on, as a follower reads them: `caught_up` on the last.
    fn items_from(&self, start: usize) -> Vec<Result<LogItem, LogError>> {
        let n = self.history.len();
        self.history
            .iter()
            .enumerate()
            .skip(start)
            .map(|(i, (record, published))| {
                Ok(LogItem {
                    record: record.clone(),
                    caught_up: i + 1 == n,
                    published_us: Some(*published),
                })
            })
            .collect()
    }

    /// Drops the oldest keyframe and the records up to the next one, if that is not the latest
    /// keyframe's stretch. Returns the bytes freed.
    fn drop_oldest_stretch(&mut self) -> Option<usize> {
        let latest = self.latest_keyframe.filter(|&k| k > 0)?;
        let next = self
            .history
            .iter()
            .skip(1)
            .position(|(r, _)| r.kind == LogKind::Keyframe)
            .map_or(latest, |i| i + 1);
        let freed: usize = self.history.drain(..next).map(|(r, _)| r.body.len()).sum();
        self.latest_keyframe = Some(latest - next);
        self.bytes -= freed;
        Some(freed)
    }

    fn clear(&mut self) -> usize {
        self.history.clear();
        self.latest_keyframe = None;
        std::mem::take(&mut self.bytes)
    }
}

struct Inner {
    matches: HashMap<String, MatchEntry>,
    /// Payload bytes of every match's history.
    history_bytes: usize,
    created: VecDeque<String>,
    events: VecDeque<(u64, LogRecord)>,
    next_event: u64,
    consumers: HashMap<String, u64>,
}

struct Shared {
    inner: Mutex<Inner>,
    /// Tick channels per board; a board without subscribers is dropped on the next publish.
    ticks: Mutex<HashMap<String, broadcast::Sender<bytes::Bytes>>>,
    limits: MemoryLogLimits,
    latest_event: watch::Sender<u64>,
}

/// Cheap to clone: clones share one log.
#[derive(Clone)]
pub struct MemoryLog {
    shared: Arc<Shared>,
}

impl MemoryLog {
    pub fn new(limits: MemoryLogLimits) -> MemoryLog {
        MemoryLog {
            shared: Arc::new(Shared {
                ticks: Mutex::new(HashMap::new()),
                inner: Mutex::new(Inner {
                    matches: HashMap::new(),
                    history_bytes: 0,
                    created: VecDeque::new(),
                    events: VecDeque::new(),
                    next_event: 0,
                    consumers: HashMap::new(),
                }),
                limits,
                latest_event: watch::channel(0).0,
            }),
        }
    }
}

/// Stored records, then the live ones (the subscription is taken under the same lock as the
/// copy, so nothing falls between them).
fn with_live(backlog: Vec<Result<LogItem, LogError>>, entry: &MatchEntry) -> LogStream {
    let live = BroadcastStream::new(entry.live.subscribe()).map(|r| match r {
        Ok((record, published)) => Ok(LogItem {
            record,
            caught_up: true,
            published_us: Some(published),
        }),
        Err(BroadcastStreamRecvError::Lagged(_)) => Err(LogError::Lagged),
    });
    Box::pin(futures::stream::iter(backlog).chain(live))
}

impl Inner {
    /// Drops the oldest stretches of the oldest matches' histories while all of them hold more
    /// than `max_bytes` (every match keeps its latest keyframe's stretch).
    fn trim_histories(&mut self, max_bytes: usize) {
        let mut i = 0;
        while self.history_bytes > max_bytes && i < self.created.len() {
            let id = &self.created[i];
            match self
                .matches
                .get_mut(id)
                .and_then(|e| e.drop_oldest_stretch())
            {
                Some(freed) => self.history_bytes -= freed,
                None => i += 1,
            }
        }
    }
}

#[async_trait]
impl MatchLog for MemoryLog {
    async fn publish(&self, record: LogRecord) -> Result<(), LogError> {
        let published = protocol::now_us();
        let mut inner = self.shared.inner.lock().unwrap();
        let inner = &mut *inner;
        let limits = &self.shared.limits;
        if !inner.matches.contains_key(&record.match_id) {
            if inner.matches.len() >= limits.max_matches {
                if let Some(oldest) = inner.created.pop_front() {
                    if let Some(gone) = inner.matches.remove(&oldest) {
                        inner.history_bytes -= gone.bytes;
                    }
                }
            }
            inner.created.push_back(record.match_id.clone());
            inner.matches.insert(
                record.match_id.clone(),
                MatchEntry {
                    history: VecDeque::new(),
                    latest_keyframe: None,
                    bytes: 0,
                    last: None,
                    live: broadcast::channel(limits.follower_buffer.max(1)).0,
                },
            );
        }
        let entry = inner.matches.get_mut(&record.match_id).expect("inserted");
        // Dedupe like JetStream's Nats-Msg-Id: a record at or before the last one of its kind
        // in the same epoch was already stored.
        let key = (record.epoch, record.version);
        if record.kind != LogKind::Keyframe {
            if let Some(last) = entry.last {
                if key <= last {
                    return Ok(());
                }
            }
            entry.last = Some(key);
        }
        let mut freed = 0;
        let since_keyframe = entry.latest_keyframe.map_or(0, |k| entry.history.len() - k);
        if record.kind != LogKind::Keyframe && since_keyframe >= limits.max_records_per_match {
            tracing::error!(match_id = %record.match_id, "match backlog over its limit; dropped until the next keyframe");
            freed += entry.clear();
        }
        // Records before a match's first keyframe are not kept: nothing could start from them.
        let stored = record.kind == LogKind::Keyframe || entry.latest_keyframe.is_some();
        if stored {
            if record.kind == LogKind::Keyframe {
                entry.latest_keyframe = Some(entry.history.len());
            }
            entry.bytes += record.body.len();
            entry.history.push_back((record.clone(), published));
            while entry.history.len() > limits.max_history_per_match {
                match entry.drop_oldest_stretch() {
                    Some(n) => freed += n,
                    None => break,
                }
            }
        }
        inner.history_bytes =
            inner.history_bytes + if stored { record.body.len() } else { 0 } - freed;
        let entry = inner.matches.get(&record.match_id).expect("inserted");
        let _ = entry.live.send((record.clone(), published));
        inner.trim_histories(limits.max_history_bytes);
        if record.kind == LogKind::Event {
            let seq = inner.next_event;
            inner.next_event += 1;
            inner.events.push_back((seq, record));
            if inner.events.len() > self.shared.limits.max_events {
                inner.events.pop_front();
            }
            self.shared.latest_event.send_replace(seq + 1);
        }
        Ok(())
    }

    async fn follow(&self, match_id: &str) -> Result<LogStream, LogError> {
        let inner = self.shared.inner.lock().unwrap();
        let entry = inner.matches.get(match_id).ok_or(LogError::UnknownMatch)?;
        let start = entry.latest_keyframe.ok_or(LogError::UnknownMatch)?;
        Ok(with_live(entry.items_from(start), entry))
    }

    async fn replay(&self, match_id: &str) -> Result<LogStream, LogError> {
        let inner = self.shared.inner.lock().unwrap();
        let entry = inner.matches.get(match_id).ok_or(LogError::UnknownMatch)?;
        if entry.latest_keyframe.is_none() {
            return Err(LogError::UnknownMatch);
        }
        Ok(with_live(entry.items_from(0), entry))
    }

    async fn latest_keyframe(&self, match_id: &str) -> Result<LogRecord, LogError> {
        let inner = self.shared.inner.lock().unwrap();
        inner
            .matches
            .get(match_id)
            .and_then(|e| e.history.get(e.latest_keyframe?))
            .map(|(r, _)| r.clone())
            .ok_or(LogError::UnknownMatch)
    }

    async fn match_ids(&self) -> Result<Vec<String>, LogError> {
        let inner = self.shared.inner.lock().unwrap();
        Ok(inner
            .created
            .iter()
            .filter(|id| {
                inner
                    .matches
                    .get(*id)
                    .is_some_and(|e| e.latest_keyframe.is_some())
            })
            .cloned()
            .collect())
    }

    async fn match_events(&self, match_id: &str) -> Result<Vec<LogRecord>, LogError> {
        let inner = self.shared.inner.lock().unwrap();
        Ok(inner
            .events
            .iter()
            .filter(|(_, r)| r.match_id == match_id)
            .map(|(_, r)| r.clone())
            .collect())
    }

    async fn all_events(&self) -> Result<LogStream, LogError> {
        let inner = self.shared.inner.lock().unwrap();
        let n = inner.events.len();
        let items: Vec<Result<LogItem, LogError>> = inner
            .events
            .iter()
            .enumerate()
            .map(|(i, (_, record))| {
                Ok(LogItem {
                    record: record.clone(),
                    caught_up: i + 1 == n,
                    published_us: None,
                })
            })
            .collect();
        Ok(Box::pin(futures::stream::iter(items)))
    }

    async fn event_consumer(&self, name: &str) -> Result<Box<dyn EventConsumer>, LogError> {
        let committed = {
            let mut inner = self.shared.inner.lock().unwrap();
            *inner.consumers.entry(name.to_string()).or_insert(0)
        };
        Ok(Box::new(MemoryConsumer {
            log: self.clone(),
            name: name.to_string(),
            cursor: committed,
            deliveries: HashMap::new(),
        }))
    }
}

#[async_trait]
impl TickBus for MemoryLog {
    async fn publish_tick(&self, board: &str, tick: bytes::Bytes) -> Result<(), LogError> {
        let mut ticks = self.shared.ticks.lock().unwrap();
        if let Some(tx) = ticks.get(board) {
            if tx.send(tick).is_err() {
                ticks.remove(board);
            }
        }
        Ok(())
    }

    async fn ticks(&self, board: &str) -> Result<super::TickStream, LogError> {
        let rx = {
            let mut ticks = self.shared.ticks.lock().unwrap();
            ticks
                .entry(board.to_string())
                .or_insert_with(|| broadcast::channel(16).0)
                .subscribe()
        };
        // A subscriber that falls behind skips to the latest ticks: each one is complete.
        Ok(Box::pin(
            BroadcastStream::new(rx).filter_map(|r| async move { r.ok() }),
        ))
    }
}

/// A consumer of the embedded log. Delivery is in order; `retry_later` rewinds the cursor so
/// the event (and everything after it) is delivered again, which keeps order without a
/// separate redelivery queue.
struct MemoryConsumer {
    log: MemoryLog,
    name: String,
    cursor: u64,
    deliveries: HashMap<u64, u64>,
}

#[async_trait]
impl EventConsumer for MemoryConsumer {
    async fn next_batch(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<DeliveredEvent>, LogError> {
        let mut latest = self.log.shared.latest_event.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            {
                let inner = self.log.shared.inner.lock().unwrap();
                if let Some((oldest, _)) = inner.events.front() {
                    if self.cursor < *oldest {
                        tracing::error!(consumer = %self.name, lost = oldest - self.cursor, "event consumer fell behind the retained events");
                        self.cursor = *oldest;
                    }
                }
                let start = inner
                    .events
                    .front()
                    .map(|(first, _)| self.cursor.saturating_sub(*first) as usize)
                    .unwrap_or(0);
                let batch: Vec<DeliveredEvent> = inner
                    .events
                    .iter()
                    .skip(start)
                    .take(max)
                    .map(|(seq, record)| {
                        let n = self.deliveries.entry(*seq).or_insert(0);
                        *n += 1;
                        DeliveredEvent {
                            record: record.clone(),
                            delivered: *n,
                            handle: AckHandle::Memory(*seq),
                        }
                    })
                    .collect();
                if let Some(last) = batch.last() {
                    if let AckHandle::Memory(seq) = last.handle {
                        self.cursor = seq + 1;
                    }
                    return Ok(batch);
                }
            }
            if tokio::time::timeout_at(deadline, latest.changed())
                .await
                .is_err()
            {
                return Ok(Vec::new());
            }
        }
    }

    async fn backlog(&mut self) -> Option<u64> {
        let latest = *self.log.shared.latest_event.borrow();
        Some(latest.saturating_sub(self.cursor))
    }

    async fn ack(&mut self, event: &DeliveredEvent) -> Result<(), LogError> {
        if let AckHandle::Memory(seq) = event.handle {
            self.deliveries.remove(&seq);
            let mut inner = self.log.shared.inner.lock().unwrap();
            let committed = inner.consumers.entry(self.name.clone()).or_insert(0);
            *committed = (*committed).max(seq + 1);
        }
        Ok(())
    }

    async fn retry_later(
        &mut self,
        event: &DeliveredEvent,
        delay: Duration,
    ) -> Result<(), LogError> {
        if let AckHandle::Memory(seq) = event.handle {
            self.cursor = self.cursor.min(seq);
            tokio::time::sleep(delay).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn rec(version: u64, kind: LogKind) -> LogRecord {
        LogRecord {
            match_id: "m1".into(),
            epoch: 1,
            version,
            kind,
            body: Bytes::from_static(b"{}"),
        }
    }

    #[tokio::test]
    async fn follow_starts_at_the_latest_keyframe_then_goes_live() {
        let log = MemoryLog::new(MemoryLogLimits::default());
        assert!(matches!(
            log.follow("m1").await,
            Err(LogError::UnknownMatch)
        ));
        log.publish(rec(0, LogKind::Keyframe)).await.unwrap();
        log.publish(rec(1, LogKind::Delta)).await.unwrap();
        log.publish(rec(2, LogKind::Delta)).await.unwrap();
        log.publish(rec(2, LogKind::Keyframe)).await.unwrap();
        log.publish(rec(3, LogKind::Event)).await.unwrap();
        log.publish(rec(3, LogKind::Event)).await.unwrap(); // duplicate, stored once
        let mut s = log.follow("m1").await.unwrap();
        let mut seen = Vec::new();
        for _ in 0..2 {
            let item = s.next().await.unwrap().unwrap();
            seen.push((item.record.version, item.record.kind, item.caught_up));
        }
        assert_eq!(
            seen,
            vec![(2, LogKind::Keyframe, false), (3, LogKind::Event, true)]
        );
        log.publish(rec(4, LogKind::Delta)).await.unwrap();
        let item = s.next().await.unwrap().unwrap();
        assert_eq!((item.record.version, item.caught_up), (4, true));
        assert_eq!(log.match_ids().await.unwrap(), vec!["m1".to_string()]);
    }

    async fn versions(s: &mut LogStream, n: usize) -> Vec<(u64, LogKind)> {
        let mut out = Vec::new();
        for _ in 0..n {
            let item = s.next().await.unwrap().unwrap();
            out.push((item.record.version, item.record.kind));
        }
        out
    }

    #[tokio::test]
    async fn replay_starts_at_the_first_keyframe_then_goes_live() {
        let log = MemoryLog::new(MemoryLogLimits::default());
        log.publish(rec(0, LogKind::Delta)).await.unwrap(); // before any keyframe: not kept
        assert!(matches!(
            log.replay("m1").await,
            Err(LogError::UnknownMatch)
        ));
        log.publish(rec(1, LogKind::Keyframe)).await.unwrap();
        log.publish(rec(2, LogKind::Delta)).await.unwrap();
        log.publish(rec(2, LogKind::Keyframe)).await.unwrap();
        log.publish(rec(3, LogKind::Event)).await.unwrap();
        let mut s = log.replay("m1").await.unwrap();
        assert_eq!(
            versions(&mut s, 4).await,
            vec![
                (1, LogKind::Keyframe),
                (2, LogKind::Delta),
                (2, LogKind::Keyframe),
                (3, LogKind::Event)
            ]
        );
        log.publish(rec(4, LogKind::Delta)).await.unwrap();
        assert_eq!(versions(&mut s, 1).await, vec![(4, LogKind::Delta)]);
        // Followers still start at the latest keyframe.
        let mut f = log.follow("m1").await.unwrap();
        assert_eq!(versions(&mut f, 1).await, vec![(2, LogKind::Keyframe)]);
    }

    #[tokio::test]
    async fn history_past_its_limits_loses_its_oldest_keyframe_stretch_first() {
        let log = MemoryLog::new(MemoryLogLimits {
            max_history_per_match: 5,
            ..MemoryLogLimits::default()
        });
        for (v, k) in [
            (0, LogKind::Keyframe),
            (1, LogKind::Delta),
            (2, LogKind::Delta),
            (2, LogKind::Keyframe),
            (3, LogKind::Delta),
            (4, LogKind::Delta),
        ] {
            log.publish(rec(v, k)).await.unwrap();
        }
        let mut s = log.replay("m1").await.unwrap();
        assert_eq!(
            versions(&mut s, 3).await,
            vec![
                (2, LogKind::Keyframe),
                (3, LogKind::Delta),
                (4, LogKind::Delta)
            ]
        );

        // Across matches: past the byte budget the oldest match gives up its oldest stretch,
        // never its latest keyframe's.
        let log = MemoryLog::new(MemoryLogLimits {
            max_history_bytes: 10,
            ..MemoryLogLimits::default()
        });
        for (v, k) in [
            (0, LogKind::Keyframe),
            (1, LogKind::Delta),
            (1, LogKind::Keyframe),
        ] {
            log.publish(rec(v, k)).await.unwrap();
        }
        for (v, k) in [
            (0, LogKind::Keyframe),
            (1, LogKind::Delta),
            (2, LogKind::Delta),
        ] {
            log.publish(LogRecord {
                match_id: "m2".into(),
                ..rec(v, k)
            })
            .await
            .unwrap();
        }
        let mut s = log.replay("m1").await.unwrap();
        assert_eq!(versions(&mut s, 1).await, vec![(1, LogKind::Keyframe)]);
        let mut s = log.replay("m2").await.unwrap();
        assert_eq!(versions(&mut s, 1).await, vec![(0, LogKind::Keyframe)]);
    }

    #[tokio::test]
    async fn consumers_resume_from_their_acknowledged_position() {
        let log = MemoryLog::new(MemoryLogLimits::default());
        log.publish(rec(0, LogKind::Keyframe)).await.unwrap();
        for v in 1..=3 {
            log.publish(rec(v, LogKind::Event)).await.unwrap();
        }
        let mut c = log.event_consumer("agg").await.unwrap();
        let batch = c.next_batch(2, Duration::from_millis(10)).await.unwrap();
        assert_eq!(
            batch.iter().map(|e| e.record.version).collect::<Vec<_>>(),
            vec![1, 2]
        );
        c.ack(&batch[0]).await.unwrap();
        c.retry_later(&batch[1], Duration::ZERO).await.unwrap();
        let again = c.next_batch(10, Duration::from_millis(10)).await.unwrap();
        assert_eq!(
            again
                .iter()
                .map(|e| (e.record.version, e.delivered))
                .collect::<Vec<_>>(),
            vec![(2, 2), (3, 1)]
        );
        drop(c);
        // A new consumer with the same name starts after the last acknowledged event.
        let mut c2 = log.event_consumer("agg").await.unwrap();
        let b = c2.next_batch(10, Duration::from_millis(10)).await.unwrap();
        assert_eq!(b.first().map(|e| e.record.version), Some(2));
        assert!(c2
            .next_batch(10, Duration::from_millis(10))
            .await
            .unwrap()
            .is_empty());
    }
}
