//! `?from=start`: a match from its first retained keyframe, then on into the live line.
//!
//! A replay is one viewer's: it reads the log with a follower of its own (never the match's
//! hub, so live viewers are not held up by someone reading an hour of history), builds the
//! state with a feed of its own, and queues frames only when its viewer's queue has room, so
//! it goes as fast as the viewer reads (or at match speed with `?pace=realtime`). What the
//! viewer is sent obeys the viewer protocol like a live stream: a snapshot first, then
//! consecutive versions, a snapshot again only on a new epoch or a gap, never anything older
//! than what it was sent. A replay resumed with `since` (or `Last-Event-ID`) skips what the
//! viewer already has. The match's broadcast delay (or the partner's) holds back every
//! record as it does for live viewers. When the match ends (`match_ended`, then its final
//! delta) the stream closes normally with the reason `match ended`.
//!
//! Bounded: at most `max_replays` per gateway (a semaphore; past it 429), each with one
//! viewer queue of `viewer_queue` frames and one log follower.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backends::{LogError, LogItem, LogStream};
use futures::{FutureExt, StreamExt};
use protocol::{now_us, Applied, LogKind, MatchFeed, MatchStatus, StreamPosition};
use tokio::sync::OwnedSemaphorePermit;

use crate::queue::{CloseReason, ViewerQueue, Wire};
use crate::Gateway;

/// How a replay is played out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pace {
    /// As fast as the viewer reads.
    AsRead,
    /// At the speed the match was played (publish times), from the first record sent.
    Realtime,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ReplayError {
    #[error("every replay slot of this gateway is taken")]
    Full,
    #[error("unknown match")]
    UnknownMatch,
    #[error("match log unavailable")]
    Unavailable,
}

/// Starts a replay of `match_id` for one viewer: its queue, fed by a task of its own.
pub(crate) async fn start(
    gw: &Gateway,
    match_id: &str,
    delay_override_ms: Option<u64>,
    since: Option<StreamPosition>,
    wire: Wire,
    pace: Pace,
) -> Result<Arc<ViewerQueue>, ReplayError> {
    let slot = gw
        .replays
        .clone()
        .try_acquire_owned()
        .map_err(|_| ReplayError::Full)?;
    if !protocol::valid_match_id(match_id) {
        return Err(ReplayError::UnknownMatch);
    }
    let records = match gw.log.replay(match_id).await {
        Ok(s) => s,
        Err(LogError::UnknownMatch) => return Err(ReplayError::UnknownMatch),
        Err(e) => {
            tracing::warn!(%match_id, error = %e, "cannot replay match");
            return Err(ReplayError::Unavailable);
        }
    };
    let queue = ViewerQueue::new(gw.config.viewer_queue, wire);
    let replay = Replay {
        gw: gw.clone(),
        feed: MatchFeed::new(match_id, 1).with_publish_stamps(gw.config.publish_stamps),
        queue: queue.clone(),
        viewer_at: since,
        delay_override_us: delay_override_ms.map(|d| d.saturating_mul(1000)),
        delay_us: 0,
        pace,
        clock: None,
        last_ping: Instant::now(),
        ending: None,
        _slot: slot,
    };
    tokio::spawn(replay.run(records));
    Ok(queue)
}

struct Replay {
    gw: Gateway,
    feed: MatchFeed,
    queue: Arc<ViewerQueue>,
    /// Where the viewer is on the version line (what it was sent, or resumed from).
    viewer_at: Option<StreamPosition>,
    delay_override_us: Option<u64>,
    /// The match's broadcast delay as its latest keyframe states it.
    delay_us: u64,
    pace: Pace,
    /// For `Pace::Realtime`: (wall time, publish time) of the first record sent.
    clock: Option<(u64, u64)>,
    last_ping: Instant,
    /// Set once `match_ended` was sent: the stream closes when the final delta is sent, or at
    /// this instant if it never comes.
    ending: Option<Instant>,
    _slot: OwnedSemaphorePermit,
}

/// Why a replay stops feeding its viewer.
enum Stop {
    /// The viewer left or was closed.
    Gone,
    /// The match ended: close normally once everything queued is written.
    Ended,
}

fn is_after(a: StreamPosition, b: Option<StreamPosition>) -> bool {
    b.is_none_or(|b| (a.epoch, a.version) > (b.epoch, b.version))
}

impl Replay {
    async fn run(mut self, mut records: LogStream) {
        crate::metrics::REPLAYS.inc();
        let stop = loop {
            if let Err(stop) = self.keep_alive() {
                break stop;
            }
            if !self.queue.has_room() {
                // The viewer reads slower than the log: wait for it (the stall rule in
                // `keep_alive` closes one that stopped reading).
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(2)) => {}
                    _ = self.gw.shutdown.cancelled() => break self.shut_down(),
                }
                continue;
            }
            let item = tokio::select! {
                item = records.next() => item,
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                _ = self.gw.shutdown.cancelled() => break self.shut_down(),
            };
            let mut flow = self.take(item).await;
            // What the log has ready goes in one write.
            let mut more = 0;
            while matches!(flow, Ok(Flow::Continue)) && more < 64 && self.queue.has_room() {
                let Some(item) = records.next().now_or_never() else {
                    break;
                };
                flow = self.take(item).await;
                more += 1;
            }
            crate::metrics::VIEWER_WRITES.inc_by(self.queue.wake());
            match flow {
                Ok(Flow::Continue) => {}
                Ok(Flow::Reopen) => records = self.reopen(false).await,
                Ok(Flow::Jump) => records = self.reopen(true).await,
                Err(stop) => break stop,
            }
            // The final delta (status ended) follows `match_ended`; a viewer resumed past the
            // event still gets its close when the state says the match is over.
            if self.feed.state().status == MatchStatus::Ended
                || self.ending.is_some_and(|at| Instant::now() >= at)
            {
                break Stop::Ended;
            }
        };
        if let Stop::Ended = stop {
            self.end().await;
        }
        crate::metrics::REPLAYS.dec();
    }

    /// Pings a WebSocket viewer on the gateway's interval and closes one that is silent or
    /// stopped reading (what the hub's sweep does for live viewers).
    fn keep_alive(&mut self) -> Result<(), Stop> {
        let config = &self.gw.config;
        if self.queue.is_closed() {
            return Err(Stop::Gone);
        }
        if self.queue.stalled_for(config.stall_deadline) {
            crate::metrics::STALLED_CLOSED.inc();
            self.queue.close(CloseReason {
                code: 1008,
                reason: "viewer stopped reading".into(),
                retry_after_ms: 1000,
            });
            return Err(Stop::Gone);
        }
        if self.queue.silent_for(config.ping_interval * 3) {
            self.queue.close(CloseReason {
                code: 1001,
                reason: "idle: no pong".into(),
                retry_after_ms: config.retry_after_ms,
            });
            return Err(Stop::Gone);
        }
        if self.last_ping.elapsed() >= config.ping_interval {
            self.last_ping = Instant::now();
            self.queue.ping();
        }
        if self.ending.is_some_and(|at| Instant::now() >= at) {
            return Err(Stop::Ended);
        }
        Ok(())
    }

    fn shut_down(&self) -> Stop {
        self.queue.close(CloseReason {
            code: 1012,
            reason: "server shutting down".into(),
            retry_after_ms: self.gw.config.retry_after_ms,
        });
        Stop::Gone
    }

    /// Reads the log again after its follower was lost: from the start (records the feed has
    /// are ignored, so the replay goes on where it was), or from the latest keyframe after a
    /// gap in the log itself (the viewer gets a snapshot there: reading from the start again
    /// would meet the same gap).
    async fn reopen(&mut self, jump: bool) -> LogStream {
        let match_id = self.feed.match_id().to_string();
        loop {
            let opened = if jump {
                self.gw.log.follow(&match_id).await
            } else {
                self.gw.log.replay(&match_id).await
            };
            match opened {
                Ok(s) => return s,
                Err(e) => {
                    tracing::warn!(%match_id, error = %e, "replay: reopening the log failed");
                    if self.queue.is_closed() {
                        return futures::stream::empty().boxed();
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = self.gw.shutdown.cancelled() => return futures::stream::empty().boxed(),
                    }
                }
            }
        }
    }

    /// Waits until `due_us`, looking after the viewer meanwhile.
    async fn wait_until(&mut self, due_us: u64) -> Result<(), Stop> {
        loop {
            let now = now_us();
            if due_us <= now {
                return Ok(());
            }
            let wait = Duration::from_micros(due_us - now).min(Duration::from_secs(1));
            // What is queued goes out before the wait.
            crate::metrics::VIEWER_WRITES.inc_by(self.queue.wake());
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.gw.shutdown.cancelled() => return Err(self.shut_down()),
            }
            self.keep_alive()?;
        }
    }

    /// Takes one item of the log: applies it, and queues what the viewer must be sent.
    async fn take(&mut self, item: Option<Result<LogItem, LogError>>) -> Result<Flow, Stop> {
        let item = match item {
            Some(Ok(item)) => item,
            Some(Err(e)) => {
                tracing::debug!(match_id = %self.feed.match_id(), error = %e, "replay follower lost; reopening");
                return Ok(Flow::Reopen);
            }
            None => return Ok(Flow::Reopen),
        };
        let record = &item.record;
        if record.kind == LogKind::Keyframe {
            self.delay_us = self.delay_override_us.unwrap_or_else(|| {
                crate::hub::broadcast_delay_ms(&record.body).saturating_mul(1000)
            });
        }
        let position = StreamPosition {
            epoch: record.epoch,
            version: record.version,
        };
        // Records the viewer already has are applied without waiting or sending.
        let news = is_after(position, self.viewer_at);
        if news {
            let published = item.published_us.unwrap_or_else(now_us);
            let mut due = published.saturating_add(self.delay_us);
            if self.pace == Pace::Realtime {
                let (wall, first) = *self.clock.get_or_insert((now_us(), published));
                due = due.max(wall + published.saturating_sub(first));
            }
            self.wait_until(due).await?;
        }
        match self.feed.apply_published(record, item.published_us) {
            Applied::Appended(frame) => {
                if !news {
                    return Ok(Flow::Continue);
                }
                let successor = self.viewer_at.is_some_and(|at| {
                    at.epoch == frame.position.epoch && at.version + 1 == frame.position.version
                });
                let ends = frame.event_kind == Some("match_ended");
                let send = if successor {
                    Some(frame)
                } else {
                    self.feed.snapshot_frame()
                };
                self.send(send)?;
                if ends {
                    self.ending = Some(Instant::now() + Duration::from_secs(1));
                }
                Ok(Flow::Continue)
            }
            Applied::Reset => {
                if self
                    .feed
                    .position()
                    .is_some_and(|p| is_after(p, self.viewer_at))
                {
                    let snapshot = self.feed.snapshot_frame();
                    self.send(snapshot)?;
                }
                Ok(Flow::Continue)
            }
            Applied::Ignored => Ok(Flow::Continue),
            Applied::Gap { expected, got } => {
                tracing::warn!(match_id = %self.feed.match_id(), %expected, %got, "gap in match log during a replay; jumping to the latest keyframe");
                Ok(Flow::Jump)
            }
        }
    }

    fn send(&mut self, frame: Option<Arc<protocol::Frame>>) -> Result<(), Stop> {
        let Some(frame) = frame else { return Ok(()) };
        let position = frame.position;
        // The queue has room (checked before each read), so this never substitutes.
        if self.queue.push(frame, || None) == crate::queue::Pushed::Closed {
            return Err(Stop::Gone);
        }
        self.viewer_at = Some(position);
        Ok(())
    }

    /// The match ended: everything queued is written, then the stream closes normally.
    async fn end(self) {
        crate::metrics::VIEWER_WRITES.inc_by(self.queue.wake());
        let deadline = Instant::now() + self.gw.config.stall_deadline;
        while self.queue.has_pending() && !self.queue.is_closed() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.queue.close(CloseReason {
            code: 1000,
            reason: "match ended".into(),
            retry_after_ms: 0,
        });
    }
}

/// What a replay does after a record.
enum Flow {
    Continue,
    /// The follower was lost: read again from the start, skipping what was sent.
    Reopen,
    /// The log has a gap: carry on from its latest keyframe.
    Jump,
}

#[cfg(test)]
mod tests {
    use backends::{MatchLog, MemoryLog, MemoryLogLimits};
    use httpkit::Shutdown;
    use protocol::{Delta, EventRecord, FrameKind, LogRecord, MatchEvent, TokenSigner};

    use super::*;
    use crate::queue::{Filter, Transport};
    use crate::GatewayConfig;

    const WIRE: Wire = Wire {
        format: protocol::Format::V1,
        transport: Transport::Sse,
        filter: Filter {
            deltas: true,
            kinds: u8::MAX,
        },
    };

    fn record(version: u64, kind: LogKind, body: Vec<u8>) -> LogRecord {
        LogRecord {
            match_id: "m1".into(),
            epoch: 5,
            version,
            kind,
            body: body.into(),
        }
    }

    fn keyframe(version: u64) -> LogRecord {
        let body = serde_json::to_vec(&protocol::SpectatorState::default()).unwrap();
        record(version, LogKind::Keyframe, body)
    }

    fn delta(version: u64, status: Option<MatchStatus>) -> LogRecord {
        let body = serde_json::to_vec(&Delta {
            tick: version,
            status,
            ..Delta::default()
        })
        .unwrap();
        record(version, LogKind::Delta, body)
    }

    fn ended(version: u64, seq: u64) -> LogRecord {
        let body = serde_json::to_vec(&EventRecord {
            seq,
            region: "eu".into(),
            at_ms: 1,
            event: MatchEvent::MatchEnded { results: vec![] },
        })
        .unwrap();
        record(version, LogKind::Event, body)
    }

    fn gateway(log: Arc<MemoryLog>, max_replays: usize) -> Gateway {
        Gateway::new(
            GatewayConfig {
                max_replays,
                ..GatewayConfig::default()
            },
            log.clone(),
            log,
            TokenSigner::new(b"test-secret-0123456789abcdef"),
            Shutdown::new(),
        )
    }

    /// Every frame the queue gets within `wait`, and how it closed if it did.
    async fn read(q: &ViewerQueue, wait: Duration) -> (Vec<(FrameKind, u64)>, Option<CloseReason>) {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, q.next_batch()).await {
                Ok(Ok(batch)) => out.extend(batch.iter().map(|f| (f.kind, f.position.version))),
                Ok(Err(reason)) => return (out, Some(reason)),
                Err(_) => return (out, None),
            }
        }
    }

    async fn publish(log: &MemoryLog, records: impl IntoIterator<Item = LogRecord>) {
        for r in records {
            log.publish(r).await.unwrap();
        }
    }

    fn deltas(range: std::ops::RangeInclusive<u64>) -> Vec<(FrameKind, u64)> {
        range.map(|v| (FrameKind::Delta, v)).collect()
    }

    /// A late viewer gets the match from its first keyframe (version 0) where a live viewer
    /// starts at the latest one, reads every version after it, and goes on into live records.
    #[tokio::test]
    async fn a_replay_starts_at_the_first_keyframe_and_runs_into_the_live_line() {
        let log = Arc::new(MemoryLog::new(MemoryLogLimits::default()));
        publish(&log, [keyframe(0)]).await;
        publish(&log, (1..=10).map(|v| delta(v, None))).await;
        publish(&log, [keyframe(10)]).await;
        publish(&log, (11..=20).map(|v| delta(v, None))).await;
        let gw = gateway(log.clone(), 4);
        let live = gw.attach("m1", None, WIRE).await.unwrap();
        assert_eq!(
            read(&live, Duration::from_millis(200)).await.0[0],
            (FrameKind::Snapshot, 20)
        );

        let q = start(&gw, "m1", None, None, WIRE, Pace::AsRead)
            .await
            .unwrap();
        let (seen, closed) = read(&q, Duration::from_millis(300)).await;
        let mut expected = vec![(FrameKind::Snapshot, 0)];
        expected.extend(deltas(1..=20));
        assert_eq!(seen, expected);
        assert_eq!(closed, None);
        publish(&log, (21..=22).map(|v| delta(v, None))).await;
        assert_eq!(
            read(&q, Duration::from_millis(300)).await.0,
            deltas(21..=22)
        );
    }

    /// An ended match still in the log plays through `match_ended` and its final delta, then
    /// the stream closes normally with the reason `match ended`.
    #[tokio::test]
    async fn a_replay_of_an_ended_match_closes_after_match_ended() {
        let log = Arc::new(MemoryLog::new(MemoryLogLimits::default()));
        publish(
            &log,
            [keyframe(0), delta(1, None), delta(2, None), ended(3, 1)],
        )
        .await;
        publish(&log, [delta(4, Some(MatchStatus::Ended))]).await;
        let gw = gateway(log, 4);
        let q = start(&gw, "m1", None, None, WIRE, Pace::AsRead)
            .await
            .unwrap();
        let (seen, closed) = read(&q, Duration::from_secs(3)).await;
        assert_eq!(
            seen,
            vec![
                (FrameKind::Snapshot, 0),
                (FrameKind::Delta, 1),
                (FrameKind::Delta, 2),
                (FrameKind::Event, 3),
                (FrameKind::Delta, 4)
            ]
        );
        let closed = closed.expect("closed");
        assert_eq!((closed.code, closed.reason.as_str()), (1000, "match ended"));
    }

    /// A replay resumed from a position skips what the viewer has: no snapshot, no repeat.
    #[tokio::test]
    async fn a_resumed_replay_carries_on_after_the_viewers_position() {
        let log = Arc::new(MemoryLog::new(MemoryLogLimits::default()));
        publish(&log, [keyframe(0)]).await;
        publish(&log, (1..=12).map(|v| delta(v, None))).await;
        let gw = gateway(log, 4);
        let since = Some(StreamPosition {
            epoch: 5,
            version: 7,
        });
        let q = start(&gw, "m1", None, since, WIRE, Pace::AsRead)
            .await
            .unwrap();
        assert_eq!(read(&q, Duration::from_millis(300)).await.0, deltas(8..=12));
    }

    /// Replays are bounded per gateway; a slot comes back when its viewer leaves.
    #[tokio::test]
    async fn replays_past_the_cap_are_refused_until_one_ends() {
        let log = Arc::new(MemoryLog::new(MemoryLogLimits::default()));
        publish(&log, [keyframe(0), delta(1, None)]).await;
        let gw = gateway(log, 1);
        let first = start(&gw, "m1", None, None, WIRE, Pace::AsRead)
            .await
            .unwrap();
        let second = start(&gw, "m1", None, None, WIRE, Pace::AsRead).await;
        assert_eq!(second.err(), Some(ReplayError::Full));
        assert_eq!(
            start(&gw, "nope", None, None, WIRE, Pace::AsRead)
                .await
                .err(),
            Some(ReplayError::Full),
            "the cap is checked before any work"
        );
        first.close(CloseReason {
            code: 1000,
            reason: "viewer left".into(),
            retry_after_ms: 0,
        });
        let again = testkit_eventually(|| {
            let gw = gw.clone();
            async move { start(&gw, "m1", None, None, WIRE, Pace::AsRead).await.ok() }
        })
        .await;
        assert!(again.is_some(), "the slot was not given back");
        drop(again);
        let unknown = loop {
            match start(&gw, "nope", None, None, WIRE, Pace::AsRead).await {
                Err(ReplayError::Full) => tokio::time::sleep(Duration::from_millis(50)).await,
                other => break other,
            }
        };
        assert_eq!(unknown.err(), Some(ReplayError::UnknownMatch));
    }

    async fn testkit_eventually<T, F, Fut>(mut f: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        for _ in 0..60 {
            if let Some(v) = f().await {
                return Some(v);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// `pace=realtime` spaces records as they were published; the default reads at once.
    #[tokio::test]
    async fn a_realtime_replay_keeps_the_matchs_own_spacing() {
        let log = Arc::new(MemoryLog::new(MemoryLogLimits::default()));
        publish(&log, [keyframe(0)]).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        publish(&log, [delta(1, None)]).await;
        let gw = gateway(log, 4);
        for (pace, at_least, at_most) in [(Pace::Realtime, 300, 1500), (Pace::AsRead, 0, 150)] {
            let q = start(&gw, "m1", None, None, WIRE, pace).await.unwrap();
            let opened = Instant::now();
            let mut seen = Vec::new();
            while seen.len() < 2 {
                let batch = tokio::time::timeout(Duration::from_secs(3), q.next_batch())
                    .await
                    .unwrap()
                    .unwrap();
                seen.extend(batch.iter().map(|f| f.position.version));
            }
            let took = opened.elapsed().as_millis();
            assert_eq!(seen, vec![0, 1]);
            assert!(
                (at_least..=at_most).contains(&took),
                "{pace:?}: the second record came after {took} ms"
            );
        }
    }
}
