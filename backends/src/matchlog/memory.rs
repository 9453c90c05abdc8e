//! The embedded match log: one process, bounded retention, nothing on disk.
//!
//! Limits (see [`MemoryLogLimits`]): per match, the latest keyframe and every record after it
//! (a room publishes a keyframe every few seconds, so this stays small; past
//! `max_records_per_match` the backlog is dropped and followers resync at the next keyframe);
//! at most `max_matches` matches (the oldest is forgotten first); the most recent
//! `max_events` events for event consumers (a consumer that falls further behind skips ahead
//! and the loss is logged).

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
    pub max_events: usize,
    /// Live records buffered per follower before it is told it lagged.
    pub follower_buffer: usize,
}

impl Default for MemoryLogLimits {
    fn default() -> Self {
        MemoryLogLimits {
            max_matches: 1024,
            max_records_per_match: 65_536,
            max_events: 200_000,
            follower_buffer: 4096,
        }
    }
}

struct MatchEntry {
    /// The latest keyframe followed by every record after it.
    since_keyframe: Vec<(LogRecord, u64)>,
    last: Option<(u64, u64)>,
    live: broadcast::Sender<(LogRecord, u64)>,
}

struct Inner {
    matches: HashMap<String, MatchEntry>,
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

#[async_trait]
impl MatchLog for MemoryLog {
    async fn publish(&self, record: LogRecord) -> Result<(), LogError> {
        let published = protocol::now_us();
        let mut inner = self.shared.inner.lock().unwrap();
        let inner = &mut *inner;
        if !inner.matches.contains_key(&record.match_id) {
            if inner.matches.len() >= self.shared.limits.max_matches {
                if let Some(oldest) = inner.created.pop_front() {
                    inner.matches.remove(&oldest);
                }
            }
            inner.created.push_back(record.match_id.clone());
            inner.matches.insert(
                record.match_id.clone(),
                MatchEntry {
                    since_keyframe: Vec::new(),
                    last: None,
                    live: broadcast::channel(self.shared.limits.follower_buffer.max(1)).0,
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
        if record.kind == LogKind::Keyframe {
            entry.since_keyframe.clear();
        } else if entry.since_keyframe.len() >= self.shared.limits.max_records_per_match {
            tracing::error!(match_id = %record.match_id, "match backlog over its limit; dropped until the next keyframe");
            entry.since_keyframe.clear();
        }
        if record.kind == LogKind::Keyframe || !entry.since_keyframe.is_empty() {
            entry.since_keyframe.push((record.clone(), published));
        }
        let _ = entry.live.send((record.clone(), published));
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
        if entry.since_keyframe.is_empty() {
            return Err(LogError::UnknownMatch);
        }
        let n = entry.since_keyframe.len();
        let backlog: Vec<Result<LogItem, LogError>> = entry
            .since_keyframe
            .iter()
            .enumerate()
            .map(|(i, (record, published))| {
                Ok(LogItem {
                    record: record.clone(),
                    caught_up: i + 1 == n,
                    published_us: Some(*published),
                })
            })
            .collect();
        let live = BroadcastStream::new(entry.live.subscribe()).map(|r| match r {
            Ok((record, published)) => Ok(LogItem {
                record,
                caught_up: true,
                published_us: Some(published),
            }),
            Err(BroadcastStreamRecvError::Lagged(_)) => Err(LogError::Lagged),
        });
        Ok(Box::pin(futures::stream::iter(backlog).chain(live)))
    }

    async fn latest_keyframe(&self, match_id: &str) -> Result<LogRecord, LogError> {
        let inner = self.shared.inner.lock().unwrap();
        inner
            .matches
            .get(match_id)
            .and_then(|e| e.since_keyframe.first())
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
                    .is_some_and(|e| !e.since_keyframe.is_empty())
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
