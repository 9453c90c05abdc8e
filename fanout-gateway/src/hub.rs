//! The per-match hub: one task per match with local viewers. It follows the match log from the
//! latest keyframe, keeps the spectator state and a ring of recent frames (in a
//! [`MatchFeed`]), and hands every frame, encoded once, to each viewer's queue. It starts with
//! the first viewer and stops after the last one leaves and a short linger.
//!
//! A match with a broadcast delay (its keyframes say how long) goes through a bounded
//! [`DelayLine`] first: each record is applied and sent when its log publish time plus the
//! delay has passed, so no viewer of this gateway sees the match earlier than that; the first
//! viewer of a fresh hub waits out the delay once.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backends::{LogError, LogItem, LogStream, MatchLog};
use futures::{FutureExt, StreamExt};
use httpkit::Shutdown;
use protocol::{now_us, Applied, Frame, LogKind, MatchFeed, StreamPosition};
use tokio::sync::{mpsc, oneshot};

use crate::delay::DelayLine;
use crate::metrics;
use crate::queue::{CloseReason, ViewerQueue, Wire};
use crate::GatewayConfig;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    #[error("unknown match")]
    UnknownMatch,
    #[error("match log unavailable")]
    Unavailable,
    /// The viewer has seen more of the match than this hub reached within the park limit
    /// (this gateway's follower is behind: recreating a lost consumer, or reading a lagging
    /// log). Serving it the hub's older state would send it back in time, so it is refused
    /// and told to retry, here or on another gateway.
    #[error("this gateway has not reached the viewer's position yet")]
    Behind,
    /// Every replay slot (`?from=start`) is taken.
    #[error("every replay slot is taken")]
    ReplaysFull,
}

/// Events wait for their frame's delta (when `--event-coalesce-ms` is set) only in a hub with
/// at least this many viewers. Holding them saves writes, one per viewer per event, which
/// matters only when a match has an audience (in the viewer benchmark, 500 viewers a match,
/// 25 ms of waiting gave 1.62 messages per write against 1.48 without, about 4% of CPU); a
/// match watched by a few costs next to nothing to write to, and its viewers would only see
/// the kill feed late.
pub const COALESCE_FROM_VIEWERS: usize = 64;

pub(crate) struct Attach {
    pub since: Option<StreamPosition>,
    pub wire: Wire,
    pub reply: oneshot::Sender<Result<Arc<ViewerQueue>, AttachError>>,
}

#[derive(Clone)]
pub(crate) struct HubHandle {
    pub attach: mpsc::Sender<Attach>,
    pub viewers: Arc<AtomicUsize>,
}

pub(crate) type Registry = Arc<Mutex<HashMap<String, HubHandle>>>;

pub(crate) struct Hub {
    /// The registry key (the match id, or `id@DELAY` for a partner's delay).
    pub key: String,
    /// The delay this hub serves at instead of the match's own (a partner's), when set.
    pub delay_override_ms: Option<u64>,
    pub draining: Arc<Mutex<Option<(std::time::Instant, Duration)>>>,
    pub match_id: String,
    pub config: Arc<GatewayConfig>,
    pub log: Arc<dyn MatchLog>,
    pub registry: Registry,
    pub attach_rx: mpsc::Receiver<Attach>,
    pub viewer_count: Arc<AtomicUsize>,
    pub shutdown: Shutdown,
}

fn going_away(reason: &str, retry_after_ms: u64) -> CloseReason {
    CloseReason {
        code: 1012,
        reason: reason.to_string(),
        retry_after_ms,
    }
}

impl Hub {
    pub async fn run(mut self) {
        metrics::HUBS.inc();
        self.follow_and_serve().await;
        metrics::HUBS.dec();
    }

    async fn subscribe(&self) -> Result<LogStream, LogError> {
        self.log.follow(&self.match_id).await
    }

    /// Leaves the registry unless an attach is already waiting. Returns whether it left.
    fn try_leave(&mut self) -> bool {
        let mut registry = self.registry.lock().unwrap();
        if !self.attach_rx.is_empty() {
            return false;
        }
        registry.remove(&self.key);
        self.attach_rx.close();
        true
    }

    /// Refuses every waiting and future attach with `error`, then leaves.
    fn refuse_all(&mut self, error: AttachError) {
        {
            let mut registry = self.registry.lock().unwrap();
            registry.remove(&self.key);
        }
        self.attach_rx.close();
        while let Ok(a) = self.attach_rx.try_recv() {
            let _ = a.reply.send(Err(error.clone()));
        }
    }

    /// Follows the log again from its latest keyframe after `delay`, without holding up the
    /// hub: while the stored log does not answer (a leader election), the live line and the
    /// viewers go on.
    fn resubscribe_after(&self, delay: Duration) -> Resubscription {
        let (log, match_id) = (self.log.clone(), self.match_id.clone());
        async move {
            tokio::time::sleep(delay).await;
            log.follow(&match_id).await
        }
        .boxed()
    }

    /// Takes one item of the followed log: straight to the viewers, or into the delay line.
    fn take_item(
        &self,
        item: Option<Result<LogItem, LogError>>,
        served: &mut ServedMatch,
        line: &mut DelayLine<LogItem>,
        delay_us: &mut u64,
    ) -> Flow {
        match item {
            Some(Ok(item)) => {
                served.last_stored = Instant::now();
                if item.record.kind == LogKind::Keyframe {
                    let delay_ms = self
                        .delay_override_ms
                        .unwrap_or_else(|| broadcast_delay_ms(&item.record.body));
                    *delay_us = delay_ms.saturating_mul(1000);
                }
                if *delay_us == 0 && line.is_empty() {
                    served.take(&self.match_id, item, &self.config)
                } else {
                    let published = item.published_us.unwrap_or_else(now_us);
                    line.push(published.saturating_add(*delay_us), item);
                    Flow::Continue
                }
            }
            Some(Err(LogError::UnknownMatch)) => Flow::Resubscribe,
            Some(Err(e)) => {
                tracing::warn!(match_id = %self.match_id, error = %e, "match log follow interrupted; resubscribing");
                Flow::Resubscribe
            }
            None => Flow::Resubscribe,
        }
    }

    async fn follow_and_serve(&mut self) {
        let mut stream = match self.subscribe().await {
            Ok(s) => s,
            Err(LogError::UnknownMatch) => return self.refuse_all(AttachError::UnknownMatch),
            Err(e) => {
                tracing::warn!(match_id = %self.match_id, error = %e, "cannot follow match");
                return self.refuse_all(AttachError::Unavailable);
            }
        };
        let mut served = ServedMatch {
            feed: MatchFeed::new(self.match_id.clone(), self.config.ring_capacity)
                .with_publish_stamps(self.config.publish_stamps),
            viewers: Vec::new(),
            outgoing: Vec::new(),
            waiting: Vec::new(),
            caught_up: false,
            parked: Vec::new(),
            held_since: None,
            flush_now: false,
            last_record: Instant::now(),
            producer_down: false,
            live_ahead: BTreeMap::new(),
            last_stored: Instant::now(),
            last_live: None,
            live_gap_since: None,
        };
        // The live line beside the stored log, where the log has one (NATS).
        let mut live = match self.log.live(&self.match_id).await {
            Ok(live) => live,
            Err(e) => {
                tracing::warn!(match_id = %self.match_id, error = %e, "no live line; following the stored log only");
                None
            }
        };
        let mut resubscribing: Option<Resubscription> = None;
        // The match's broadcast delay, as its latest keyframe states it.
        let mut delay_us = 0u64;
        let mut line: DelayLine<LogItem> = DelayLine::new(self.config.delay_line);
        let mut empty_since = Some(Instant::now());
        let mut sweep = tokio::time::interval(Duration::from_millis(500));
        let mut last_ping = Instant::now();
        // While draining: the viewers there were when it began, and how many were closed.
        let mut drained: Option<(usize, usize)> = None;
        loop {
            let next_due = line.next_due().map(|due| {
                tokio::time::Instant::now() + Duration::from_micros(due.saturating_sub(now_us()))
            });
            tokio::select! {
                // A full delay line stops reading: the log holds what is not due yet.
                item = stream.next(), if !line.is_full() => {
                    // Everything the log has ready is fanned out before any viewer is woken,
                    // so a tick's events and its delta leave in one write. One span per read
                    // (per match, never per viewer).
                    let span = tracing::info_span!(
                        target: "grandstand::trace",
                        "match_log.consume",
                        match_id = %self.match_id,
                        records = tracing::field::Empty
                    )
                    .entered();
                    let mut flow = self.take_item(item, &mut served, &mut line, &mut delay_us);
                    let mut more = 0;
                    while flow == Flow::Continue && more < READY_BATCH && !line.is_full() {
                        let Some(item) = stream.next().now_or_never() else { break };
                        flow = self.take_item(item, &mut served, &mut line, &mut delay_us);
                        more += 1;
                    }
                    span.record("records", more + 1);
                    drop(span);
                    if flow == Flow::Resubscribe {
                        served.wake_all();
                        line.clear();
                        stream = futures::stream::pending().boxed();
                        resubscribing = Some(self.resubscribe_after(Duration::ZERO));
                    } else {
                        served.settle(self.config.event_coalesce);
                    }
                }
                followed = async { resubscribing.as_mut().expect("checked").await }, if resubscribing.is_some() => {
                    match followed {
                        Ok(s) => {
                            stream = s;
                            resubscribing = None;
                            served.last_stored = Instant::now();
                        }
                        Err(e) => {
                            tracing::warn!(match_id = %self.match_id, error = %e, "resubscribe failed");
                            resubscribing = Some(self.resubscribe_after(Duration::from_millis(500)));
                        }
                    }
                }
                item = async { live.as_mut().expect("checked").next().await }, if live.is_some() => {
                    match item {
                        // A delayed match is served from the stored log alone: its viewers are
                        // seconds behind anyway, and the delay line releases what is stored.
                        Some(Ok(item)) if delay_us == 0 && line.is_empty() => {
                            served.take_live(&self.match_id, item, &self.config);
                            let mut more = 0;
                            while more < READY_BATCH {
                                let Some(Some(Ok(item))) = live.as_mut().expect("checked").next().now_or_never() else { break };
                                served.take_live(&self.match_id, item, &self.config);
                                more += 1;
                            }
                            served.settle(self.config.event_coalesce);
                        }
                        Some(_) => {}
                        None => {
                            tracing::warn!(match_id = %self.match_id, "live line ended; following the stored log only");
                            live = None;
                        }
                    }
                }
                _ = tokio::time::sleep_until(served.wake_at(self.config.event_coalesce)), if served.held_since.is_some() => {
                    served.wake_all();
                }
                _ = tokio::time::sleep_until(next_due.unwrap_or_else(tokio::time::Instant::now)), if next_due.is_some() => {
                    let now = now_us();
                    while let Some(item) = line.pop_due(now) {
                        if served.take(&self.match_id, item, &self.config) == Flow::Resubscribe {
                            line.clear();
                            served.wake_all();
                            stream = futures::stream::pending().boxed();
                            resubscribing = Some(self.resubscribe_after(Duration::ZERO));
                            break;
                        }
                    }
                    served.wake_all();
                }
                a = self.attach_rx.recv() => {
                    let Some(a) = a else { return };
                    if served.caught_up {
                        served.attach_or_park(a, &self.config);
                    } else {
                        served.waiting.push(a);
                    }
                }
                _ = sweep.tick() => {
                    served.release_parked(&self.config);
                    served.check_producer();
                    // A stored log that went quiet while the live line goes on lost its
                    // follower (its leader moved): recreate it now rather than when the
                    // client's heartbeats notice. Quiet on both lines: look again every few
                    // seconds (the producer may be down; that is told to viewers apart).
                    if live.is_some() && resubscribing.is_none() && served.caught_up {
                        let quiet = served.last_stored.elapsed();
                        let live_ahead = served.last_live.is_some_and(|at| at > served.last_stored);
                        if (live_ahead && quiet >= STORED_SILENCE) || quiet >= STORED_SILENCE * 4 {
                            metrics::FOLLOWER_RECREATED.inc();
                            tracing::info!(match_id = %self.match_id, quiet_ms = quiet.as_millis() as u64, live_ahead, "stored log quiet; recreating its follower");
                            served.last_stored = Instant::now();
                            stream = futures::stream::pending().boxed();
                            resubscribing = Some(self.resubscribe_after(Duration::ZERO));
                        }
                    }
                    let draining = *self.draining.lock().unwrap();
                    if let Some((since, period)) = draining {
                        served.drain_step(since, period, self.config.retry_after_ms, &mut drained);
                    }
                    let stall = self.config.stall_deadline;
                    // WebSocket viewers are pinged from here, all of a hub's at once, instead
                    // of by a timer per connection; one that stayed silent for three intervals
                    // is closed.
                    let ping_round = last_ping.elapsed() >= self.config.ping_interval;
                    if ping_round {
                        last_ping = Instant::now();
                    }
                    served.viewers.retain(|v| {
                        if v.stalled_for(stall) {
                            metrics::STALLED_CLOSED.inc();
                            v.close(CloseReason { code: 1008, reason: "viewer stopped reading".into(), retry_after_ms: 1000 });
                        } else if v.silent_for(self.config.ping_interval * 3) {
                            v.close(CloseReason { code: 1001, reason: "idle: no pong".into(), retry_after_ms: self.config.retry_after_ms });
                        } else if ping_round {
                            v.ping();
                        }
                        !v.is_closed()
                    });
                    if served.viewers.is_empty() && served.waiting.is_empty() && served.parked.is_empty() {
                        let since = *empty_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= self.config.hub_linger && self.try_leave() {
                            return;
                        }
                    } else {
                        empty_since = None;
                    }
                }
                _ = self.shutdown.cancelled() => {
                    served.wake_all();
                    for v in &served.viewers {
                        v.close(going_away("server shutting down", self.config.retry_after_ms));
                    }
                    self.refuse_all(AttachError::Unavailable);
                    return;
                }
            }
            self.viewer_count
                .store(served.viewers.len(), Ordering::Relaxed);
        }
    }
}

/// A future following the match log again (see [`Hub::resubscribe_after`]).
type Resubscription = futures::future::BoxFuture<'static, Result<LogStream, LogError>>;

/// A stored log silent this long while the live line goes on has its follower recreated.
const STORED_SILENCE: Duration = Duration::from_millis(1500);

/// How long a gap on the live line may wait for the stored log before a live keyframe past it
/// is taken instead (the viewers get a snapshot there).
const LIVE_GAP_PATIENCE: Duration = Duration::from_millis(500);

/// Live records kept while they wait for the one before them (lost on the live line, it comes
/// from the stored log); past this, further ones are left to the stored log.
const LIVE_AHEAD: usize = 1024;

/// Log items a hub takes in one go (what the log has ready) before it wakes its viewers.
const READY_BATCH: usize = 256;

/// Frames a hub holds for its viewers before it wakes them whatever the coalescing says: the
/// outgoing batch is bounded even when a burst of events arrives inside one coalescing wait.
const OUTGOING_LIMIT: usize = 512;

/// What the hub does after applying a log record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// The version line holds: read the next record.
    Continue,
    /// A record past the next version arrived with nothing to heal the gap: follow the log
    /// again from its latest keyframe.
    Resubscribe,
}

/// How long a viewer who has seen more of the match than this hub waits for the hub to get
/// there before it is refused with [`AttachError::Behind`] (a retry hint, never an older
/// snapshot: that would send it back in time). This bounds the parked list in time; its length
/// is bounded by the connection caps (per user, per address, handshake rate) that every viewer
/// passed before attaching.
const PARK_LIMIT: Duration = Duration::from_secs(2);

/// The match as a hub serves it: the feed at the (possibly delayed) release point, its
/// viewers, the viewers waiting for it to catch up, and those parked until it reaches what
/// they have seen.
struct ServedMatch {
    feed: MatchFeed,
    viewers: Vec<Arc<ViewerQueue>>,
    /// Frames applied to the feed since the viewers were last woken, handed to each viewer in
    /// one pass when they are (see `wake_all`). At most a read's worth of records
    /// ([`READY_BATCH`]) or the events of one coalescing wait; past [`OUTGOING_LIMIT`] the
    /// viewers are woken at once.
    outgoing: Vec<Arc<Frame>>,
    waiting: Vec<Attach>,
    caught_up: bool,
    parked: Vec<(Attach, Instant)>,
    /// Events fanned out but not yet written: since when they wait (see `settle`).
    held_since: Option<tokio::time::Instant>,
    /// A delta (or a fresh snapshot) was fanned out: wake the viewers now.
    flush_now: bool,
    /// When the last record was taken, and whether the viewers were told the producer is down.
    last_record: Instant,
    producer_down: bool,
    /// Live records past the next version, waiting for the ones before them.
    live_ahead: BTreeMap<(u64, u64), LogItem>,
    /// When the stored log last handed the hub a record, and the live line one it lacked.
    last_stored: Instant,
    last_live: Option<Instant>,
    /// Since when live records have waited for an earlier one.
    live_gap_since: Option<Instant>,
}

/// A live match silent for this long has its viewers told `producer_down` (its game server
/// died and no server took it over yet, or the log stopped delivering): a live match sends a
/// delta every tenth of a second (every second at the slowest `--spectator-hz`). Checked on
/// the hub's 500 ms sweep, so a viewer waits at most 2 s for a word.
pub(crate) const PRODUCER_SILENCE: Duration = Duration::from_millis(1500);

/// Whether a viewer that has seen `since` is ahead of a feed at `at`: it resumes from another
/// gateway that read further (this hub is catching up after a freeze, a resubscribe or a slow
/// read), and a snapshot at `at` would take it back in time.
fn ahead_of(since: Option<StreamPosition>, at: Option<StreamPosition>) -> bool {
    match (since, at) {
        (Some(s), Some(at)) => {
            s.epoch > at.epoch || (s.epoch == at.epoch && s.version > at.version)
        }
        _ => false,
    }
}

impl ServedMatch {
    /// Applies one released log item, then the live records it made next.
    fn take(&mut self, match_id: &str, item: LogItem, config: &GatewayConfig) -> Flow {
        let flow = self.take_one(match_id, item, config);
        while flow == Flow::Continue && !self.live_ahead.is_empty() {
            let Some(at) = self.feed.position() else {
                break;
            };
            self.drop_live_behind();
            let Some(next) = self.live_ahead.remove(&(at.epoch, at.version + 1)) else {
                break;
            };
            metrics::LIVE_RECORDS.inc();
            if self.take_one(match_id, next, config) != Flow::Continue {
                break;
            }
        }
        self.drop_live_behind();
        if self.live_ahead.is_empty() {
            self.live_gap_since = None;
        }
        flow
    }

    /// Forgets the waiting live records the feed has reached.
    fn drop_live_behind(&mut self) {
        let Some(at) = self.feed.position() else {
            return;
        };
        let had = (at.epoch, at.version);
        while self
            .live_ahead
            .first_key_value()
            .is_some_and(|(k, _)| *k <= had)
        {
            self.live_ahead.pop_first();
        }
    }

    /// A record of the live line: taken when it is the next version, kept when it is further
    /// ahead (the stored log brings what is missing), dropped when the hub has it already.
    ///
    /// Live keyframes (the state, about once a second) are used only to get past a gap: when a
    /// live record has waited `LIVE_GAP_PATIENCE` for the ones before it (lost on the live
    /// line while the stored log cannot bring them), the hub starts again from the keyframe and
    /// its viewers get a snapshot there, as on any gap, instead of waiting for the log.
    fn take_live(&mut self, match_id: &str, item: LogItem, config: &GatewayConfig) {
        if !self.caught_up {
            return;
        }
        let Some(at) = self.feed.position() else {
            return;
        };
        let got = (item.record.epoch, item.record.version);
        if got <= (at.epoch, at.version) {
            return;
        }
        if item.record.kind == LogKind::Keyframe {
            if self
                .live_gap_since
                .is_some_and(|since| since.elapsed() >= LIVE_GAP_PATIENCE)
            {
                metrics::LIVE_GAP_JUMPS.inc();
                tracing::info!(%match_id, from = %at, to_epoch = got.0, to_version = got.1, "live line gap not filled by the stored log; starting again from a live keyframe");
                self.take(match_id, item, config);
            }
            return;
        }
        self.last_live = Some(Instant::now());
        // The producer is alive even when this record has to wait for an earlier one.
        self.last_record = Instant::now();
        if got == (at.epoch, at.version + 1) {
            metrics::LIVE_RECORDS.inc();
            self.take(match_id, item, config);
        } else if self.live_ahead.len() < LIVE_AHEAD {
            self.live_ahead.insert(got, item);
            self.live_gap_since.get_or_insert_with(Instant::now);
        }
    }

    /// Applies one released log item.
    fn take_one(&mut self, match_id: &str, item: LogItem, config: &GatewayConfig) -> Flow {
        self.last_record = Instant::now();
        if self.producer_down {
            self.producer_down = false;
            self.tell_status("producer_up");
        }
        if item.record.kind == LogKind::Event {
            self.held_since
                .get_or_insert_with(tokio::time::Instant::now);
        } else {
            self.flush_now = true;
        }
        let flow = deliver(match_id, &mut self.feed, &mut self.outgoing, &item);
        if self.outgoing.len() >= OUTGOING_LIMIT {
            self.wake_all();
        }
        if flow == Flow::Continue && item.caught_up && !self.caught_up {
            self.caught_up = true;
            for a in std::mem::take(&mut self.waiting) {
                self.attach_or_park(a, config);
            }
        }
        self.release_parked(config);
        flow
    }

    /// Attaches a viewer (its first frames queued), telling it too if the producer is down.
    fn attach_viewer(&mut self, a: Attach, config: &GatewayConfig) {
        // A new viewer's first frames are the feed as it is now: what was fanned out before it
        // came goes to the viewers there were, not to it.
        self.wake_all();
        let before = self.viewers.len();
        attach(&mut self.feed, &mut self.viewers, a, config);
        if self.producer_down && self.viewers.len() > before {
            if let (Some(v), Some(frame)) = (
                self.viewers.last(),
                self.feed.status_frame("producer_down", protocol::now_ms()),
            ) {
                v.push(frame, || None);
                metrics::VIEWER_WRITES.inc_by(v.wake());
            }
        }
    }

    /// Tells every viewer what the gateway knows of the producer (a `status` message, not on
    /// the version line).
    fn tell_status(&mut self, status: &str) {
        metrics::PRODUCER_STATUS.with_label_values(&[status]).inc();
        if let Some(frame) = self.feed.status_frame(status, protocol::now_ms()) {
            self.outgoing.push(frame);
            self.flush_now = true;
        }
    }

    /// One drain step: closes as many viewers as the time elapsed in `period` says (of those
    /// there were when draining began), with a retry hint, so they come back spread out.
    fn drain_step(
        &mut self,
        since: std::time::Instant,
        period: Duration,
        retry_after_ms: u64,
        drained: &mut Option<(usize, usize)>,
    ) {
        // What was fanned out reaches the viewers before any of them is closed.
        self.wake_all();
        let (at_start, closed) = drained.get_or_insert((self.viewers.len(), 0));
        let share = if period.is_zero() {
            1.0
        } else {
            (since.elapsed().as_secs_f64() / period.as_secs_f64()).min(1.0)
        };
        let due = ((*at_start as f64 * share).ceil() as usize).saturating_sub(*closed);
        for v in self.viewers.iter().filter(|v| !v.is_closed()).take(due) {
            v.close(going_away("server draining", retry_after_ms));
            *closed += 1;
            metrics::DRAINED.inc();
        }
    }

    /// On the sweep: a live match that stopped sending records has its viewers told.
    fn check_producer(&mut self) {
        let live = self.feed.state().status == protocol::MatchStatus::Live;
        if self.caught_up
            && live
            && !self.producer_down
            && self.last_record.elapsed() >= PRODUCER_SILENCE
        {
            self.producer_down = true;
            self.tell_status("producer_down");
            self.wake_all();
        }
    }

    /// Hands every viewer the frames fanned out since the last wake, in one pass (one lock
    /// and, for a WebSocket viewer, one write per viewer), and forgets the viewers that are
    /// gone. The counters are added to once per batch, not once per viewer.
    fn wake_all(&mut self) {
        self.held_since = None;
        self.flush_now = false;
        if self.outgoing.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.outgoing);
        let feed = &mut self.feed;
        let mut total = crate::queue::Delivered::default();
        let mut substitutions = 0;
        let mut any_closed = false;
        for (i, v) in self.viewers.iter().enumerate() {
            // Each viewer's state is a cache miss of its own (5,000 viewers' states do not stay
            // in cache between batches), which stalls the lock at the start of its delivery;
            // asking for the viewer after next now overlaps that miss with this viewer's write.
            if let Some(next) = self.viewers.get(i + 2) {
                next.prefetch();
            }
            let d = v.deliver(&batch, || feed.snapshot_frame());
            total.frames += d.frames;
            total.bytes += d.bytes;
            total.writes += d.writes;
            substitutions += u64::from(d.substituted);
            any_closed |= d.closed;
        }
        if any_closed {
            self.viewers.retain(|v| !v.is_closed());
        }
        metrics::MESSAGES_OUT.inc_by(total.frames);
        metrics::BYTES_OUT.inc_by(total.bytes);
        metrics::VIEWER_WRITES.inc_by(total.writes);
        metrics::SUBSTITUTIONS.inc_by(substitutions);
        // The batch's buffer is kept for the next one.
        self.outgoing = batch;
        self.outgoing.clear();
    }

    /// How long events may wait for a delta in this hub: `coalesce` once it has
    /// [`COALESCE_FROM_VIEWERS`] viewers, else not at all.
    fn coalesce(&self, coalesce: Duration) -> Duration {
        if self.viewers.len() >= COALESCE_FROM_VIEWERS {
            coalesce
        } else {
            Duration::ZERO
        }
    }

    /// After a fan-out: a delta ends a spectator frame, so the viewers are woken now and the
    /// frame's events leave in the same write as its delta; events alone wait at most
    /// `coalesce` for it (a match that stops sending deltas still has its events delivered).
    fn settle(&mut self, coalesce: Duration) {
        let coalesce = self.coalesce(coalesce);
        let waited_enough = self
            .held_since
            .is_some_and(|since| since.elapsed() >= coalesce);
        if self.flush_now || coalesce.is_zero() || waited_enough {
            self.wake_all();
        }
    }

    fn wake_at(&self, coalesce: Duration) -> tokio::time::Instant {
        let coalesce = self.coalesce(coalesce);
        self.held_since
            .map_or_else(tokio::time::Instant::now, |since| since + coalesce)
    }

    fn attach_or_park(&mut self, a: Attach, config: &GatewayConfig) {
        if ahead_of(a.since, self.feed.position()) {
            metrics::PARKED_RESUMES.inc();
            self.parked.push((a, Instant::now() + PARK_LIMIT));
        } else {
            self.attach_viewer(a, config);
        }
    }

    /// Attaches the parked viewers the feed has caught up with, and refuses those that waited
    /// out the park limit while the feed stayed behind them.
    fn release_parked(&mut self, config: &GatewayConfig) {
        if self.parked.is_empty() {
            return;
        }
        let now = Instant::now();
        for (a, until) in std::mem::take(&mut self.parked) {
            if !ahead_of(a.since, self.feed.position()) {
                self.attach_viewer(a, config);
            } else if now >= until {
                metrics::BEHIND_REFUSALS.inc();
                let _ = a.reply.send(Err(AttachError::Behind));
            } else {
                self.parked.push((a, until));
            }
        }
    }
}

/// The broadcast delay a keyframe states (0 when absent or unreadable).
pub(crate) fn broadcast_delay_ms(keyframe: &[u8]) -> u64 {
    #[derive(serde::Deserialize)]
    struct Delay {
        #[serde(default)]
        broadcast_delay_ms: u64,
    }
    serde_json::from_slice::<Delay>(keyframe).map_or(0, |d| d.broadcast_delay_ms)
}

/// Applies one log item and adds what it produced to the outgoing batch.
fn deliver(
    match_id: &str,
    feed: &mut MatchFeed,
    outgoing: &mut Vec<Arc<Frame>>,
    item: &LogItem,
) -> Flow {
    let encoding = Instant::now();
    let applied = feed.apply_published(&item.record, item.published_us);
    metrics::ENCODE_SECONDS.inc_by(encoding.elapsed().as_secs_f64());
    match applied {
        Applied::Appended(frame) => {
            if let Some(p) = item.published_us {
                metrics::LOG_TO_HUB.observe(now_us().saturating_sub(p) as f64 / 1e6);
            }
            outgoing.push(frame);
            Flow::Continue
        }
        Applied::Reset => {
            // A new epoch (or a healed gap): everyone starts over from a snapshot, which is
            // how a new epoch always begins for a viewer.
            if let Some(snap) = feed.snapshot_frame() {
                outgoing.push(snap);
            }
            Flow::Continue
        }
        Applied::Ignored => Flow::Continue,
        Applied::Gap { expected, got } => {
            tracing::warn!(%match_id, %expected, %got, "gap in match log; resubscribing");
            Flow::Resubscribe
        }
    }
}

fn attach(
    feed: &mut MatchFeed,
    viewers: &mut Vec<Arc<ViewerQueue>>,
    a: Attach,
    config: &GatewayConfig,
) {
    let queue = ViewerQueue::new(config.viewer_queue, a.wire);
    queue.push_initial(feed.resume_frames(a.since));
    if a.reply.send(Ok(queue.clone())).is_ok() {
        viewers.push(queue);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use backends::{MemoryLog, MemoryLogLimits};
    use protocol::{Delta, FrameKind, LogRecord, SpectatorState, TokenSigner};

    use super::*;
    use crate::queue::ViewerQueue;
    use crate::{Gateway, GatewayConfig};

    fn record(version: u64, kind: LogKind) -> LogRecord {
        let body = match kind {
            LogKind::Keyframe => serde_json::to_vec(&SpectatorState::default()),
            _ => serde_json::to_vec(&Delta {
                tick: version,
                ..Delta::default()
            }),
        }
        .unwrap();
        LogRecord {
            match_id: "m1".into(),
            epoch: 5,
            version,
            kind,
            body: body.into(),
        }
    }

    const WIRE: Wire = Wire {
        format: protocol::Format::V1,
        transport: crate::queue::Transport::Sse,
        filter: crate::queue::Filter {
            deltas: true,
            kinds: u8::MAX,
        },
    };

    fn at(version: u64) -> Option<StreamPosition> {
        Some(StreamPosition { epoch: 5, version })
    }

    async fn publish(log: &MemoryLog, versions: std::ops::RangeInclusive<u64>) {
        for v in versions {
            log.publish(record(v, LogKind::Delta)).await.unwrap();
        }
    }

    async fn first(q: &ViewerQueue) -> (FrameKind, u64) {
        let batch = tokio::time::timeout(Duration::from_secs(5), q.next_batch())
            .await
            .expect("a frame in time")
            .expect("open");
        (batch[0].kind, batch[0].position.version)
    }

    /// A gateway following the in-memory log `log`.
    fn gateway_on(log: Arc<MemoryLog>) -> Gateway {
        Gateway::new(
            GatewayConfig::default(),
            log.clone(),
            log,
            TokenSigner::new(b"test-secret-0123456789abcdef"),
            Shutdown::new(),
        )
    }

    /// A viewer resuming from a position this gateway's hub has not reached yet (it read it on
    /// another gateway) waits for the hub instead of getting an older snapshot: the chaos run
    /// caught viewers sent back from version 55 to 46 after a frozen gateway thawed.
    #[tokio::test]
    async fn a_viewer_ahead_of_the_hub_waits_for_it_instead_of_going_back() {
        let log = Arc::new(MemoryLog::new(MemoryLogLimits::default()));
        log.publish(record(10, LogKind::Keyframe)).await.unwrap();
        publish(&log, 11..=20).await;
        let gw = gateway_on(log.clone());
        // Warm the hub: a viewer from scratch gets the snapshot at 20.
        let fresh = gw.attach("m1", None, WIRE).await.unwrap();
        assert_eq!(first(&fresh).await, (FrameKind::Snapshot, 20));

        let ahead = {
            let gw = gw.clone();
            tokio::spawn(async move { gw.attach("m1", at(25), WIRE).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!ahead.is_finished(), "served before the hub reached 25");
        publish(&log, 21..=26).await;
        let q = ahead.await.unwrap().unwrap();
        // Up to date at 25: the next thing it sees is 26, no snapshot from the past.
        assert_eq!(first(&q).await, (FrameKind::Delta, 26));

        // A position the match never reaches: refused with a retry after the park limit (not
        // a hang, and not the hub's older snapshot).
        let started = Instant::now();
        let liar = gw.attach("m1", at(1000), WIRE).await;
        assert_eq!(liar.err(), Some(AttachError::Behind));
        assert!(started.elapsed() >= PARK_LIMIT - Duration::from_millis(600));
    }

    /// A match log whose followers are scripted: each follow yields the next script's records
    /// (the last script repeats), then waits until `cut` is notified and fails as a lost
    /// consumer does. What a hub meets when it recreates a lost consumer while the log elects
    /// a leader or a lagging node answers (the chaos run's `kill-nats` faults).
    struct LaggingLog {
        inner: Arc<MemoryLog>,
        scripts: Mutex<Vec<Vec<LogRecord>>>,
        cut: Arc<tokio::sync::Notify>,
        /// The live line, when the test gives one.
        live: Mutex<Option<mpsc::UnboundedReceiver<LogRecord>>>,
    }

    impl LaggingLog {
        fn new(scripts: Vec<Vec<LogRecord>>) -> Arc<LaggingLog> {
            Arc::new(LaggingLog {
                inner: Arc::new(MemoryLog::new(MemoryLogLimits::default())),
                scripts: Mutex::new(scripts),
                cut: Arc::default(),
                live: Mutex::new(None),
            })
        }
    }

    fn line_from(keyframe: u64, last: u64) -> Vec<LogRecord> {
        std::iter::once(record(keyframe, LogKind::Keyframe))
            .chain((keyframe + 1..=last).map(|v| record(v, LogKind::Delta)))
            .collect()
    }

    #[async_trait::async_trait]
    impl MatchLog for LaggingLog {
        async fn publish(&self, record: LogRecord) -> Result<(), LogError> {
            self.inner.publish(record).await
        }
        async fn follow(&self, _match_id: &str) -> Result<LogStream, LogError> {
            let records = {
                let mut scripts = self.scripts.lock().unwrap();
                if scripts.len() > 1 {
                    scripts.remove(0)
                } else {
                    scripts[0].clone()
                }
            };
            let n = records.len();
            let items = records.into_iter().enumerate().map(move |(i, record)| {
                Ok(LogItem {
                    record,
                    caught_up: i + 1 == n,
                    published_us: None,
                })
            });
            let cut = self.cut.clone();
            let lost = futures::stream::once(async move {
                cut.notified().await;
                Err(LogError::Lagged)
            });
            Ok(futures::stream::iter(items).chain(lost).boxed())
        }
        async fn replay(&self, match_id: &str) -> Result<LogStream, LogError> {
            self.follow(match_id).await
        }
        async fn live(&self, _match_id: &str) -> Result<Option<LogStream>, LogError> {
            let Some(rx) = self.live.lock().unwrap().take() else {
                return Ok(None);
            };
            let items = tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(|record| {
                Ok(LogItem {
                    record,
                    caught_up: true,
                    published_us: None,
                })
            });
            Ok(Some(items.boxed()))
        }
        async fn latest_keyframe(&self, match_id: &str) -> Result<LogRecord, LogError> {
            self.inner.latest_keyframe(match_id).await
        }
        async fn match_ids(&self) -> Result<Vec<String>, LogError> {
            self.inner.match_ids().await
        }
        async fn event_consumer(
            &self,
            name: &str,
        ) -> Result<Box<dyn backends::EventConsumer>, LogError> {
            self.inner.event_consumer(name).await
        }
        async fn match_events(&self, match_id: &str) -> Result<Vec<LogRecord>, LogError> {
            self.inner.match_events(match_id).await
        }
        async fn all_events(&self) -> Result<LogStream, LogError> {
            self.inner.all_events().await
        }
    }

    fn lagging_gateway(log: Arc<LaggingLog>) -> Gateway {
        let ticks = log.inner.clone();
        Gateway::new(
            GatewayConfig::default(),
            log,
            ticks,
            TokenSigner::new(b"test-secret-0123456789abcdef"),
            Shutdown::new(),
        )
    }

    /// Every frame a queue holds within `wait`.
    async fn drain(q: &ViewerQueue, wait: Duration) -> Vec<(FrameKind, u64)> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Ok(batch)) = tokio::time::timeout_at(deadline, q.next_batch()).await {
            out.extend(batch.iter().map(|f| (f.kind, f.position.version)));
        }
        out
    }

    fn kill(version: u64) -> LogRecord {
        let body = serde_json::to_vec(&protocol::EventRecord {
            seq: version,
            region: "eu".into(),
            at_ms: 1,
            event: protocol::MatchEvent::Kill {
                killer: "a".into(),
                victim: "b".into(),
            },
        })
        .unwrap();
        LogRecord {
            kind: LogKind::Event,
            body: body.into(),
            ..record(version, LogKind::Event)
        }
    }

    /// Events wait for their frame's delta only where a match has an audience: with a wait of
    /// 10 s, a hub of one viewer still writes a kill at once, while a hub of
    /// `COALESCE_FROM_VIEWERS` holds it and sends it in one batch with the next delta.
    #[tokio::test]
    async fn events_wait_for_the_delta_only_in_a_hub_with_an_audience() {
        let hold = GatewayConfig {
            event_coalesce: Duration::from_secs(10),
            ..GatewayConfig::default()
        };
        for audience in [1, COALESCE_FROM_VIEWERS] {
            let log = Arc::new(MemoryLog::new(MemoryLogLimits::default()));
            log.publish(record(10, LogKind::Keyframe)).await.unwrap();
            let gw = Gateway::new(
                hold.clone(),
                log.clone(),
                log.clone(),
                TokenSigner::new(b"test-secret-0123456789abcdef"),
                Shutdown::new(),
            );
            let mut viewers = Vec::new();
            for _ in 0..audience {
                let q = gw.attach("m1", None, WIRE).await.unwrap();
                assert_eq!(first(&q).await, (FrameKind::Snapshot, 10));
                viewers.push(q);
            }
            // The viewer is waiting when the kill comes: only a wake gives it the frame.
            let waiting = {
                let q = viewers[0].clone();
                tokio::spawn(async move { q.next_batch().await })
            };
            tokio::time::sleep(Duration::from_millis(50)).await;
            log.publish(kill(11)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
            if audience == 1 {
                assert!(
                    waiting.is_finished(),
                    "one viewer: the kill is written at once"
                );
                let batch = waiting.await.unwrap().unwrap();
                assert_eq!(batch.len(), 1);
                assert_eq!(batch[0].kind, FrameKind::Event);
            } else {
                assert!(
                    !waiting.is_finished(),
                    "an audience: the kill waits for its delta"
                );
                publish(&log, 12..=12).await;
                let batch = tokio::time::timeout(Duration::from_secs(5), waiting)
                    .await
                    .expect("the delta wakes the viewer")
                    .unwrap()
                    .unwrap();
                let seen: Vec<_> = batch.iter().map(|f| (f.kind, f.position.version)).collect();
                assert_eq!(seen, vec![(FrameKind::Event, 11), (FrameKind::Delta, 12)]);
            }
        }
    }

    /// The chaos run's `SnapshotWentBack { after: (E, 250), got: (E, 100) }`: a viewer that had
    /// read to 30 resumes on a gateway whose follower starts from an older keyframe (10) and
    /// stalls at 20. It must be refused with a retry, never handed the state at 20.
    #[tokio::test]
    async fn a_follower_recreated_from_an_older_position_never_sends_a_viewer_back() {
        let gw = lagging_gateway(LaggingLog::new(vec![line_from(10, 20)]));
        let resumed = gw.attach("m1", at(30), WIRE).await;
        assert_eq!(resumed.err(), Some(AttachError::Behind));
        // A viewer from scratch is served what the hub has: it has seen nothing newer.
        let fresh = gw.attach("m1", None, WIRE).await.unwrap();
        assert_eq!(first(&fresh).await, (FrameKind::Snapshot, 20));
    }

    /// The same fault under a hub's own viewers: its follower is lost at 30 and recreated from
    /// the keyframe at 10. The viewers, who saw 30, get nothing older; the hub reads forward
    /// until it is past where it was, then carries on from 31 without a gap.
    #[tokio::test]
    async fn a_hub_that_resubscribes_behind_itself_reads_forward_without_going_back() {
        let log = LaggingLog::new(vec![line_from(10, 30), line_from(10, 34)]);
        let gw = lagging_gateway(log.clone());
        let viewer = gw.attach("m1", None, WIRE).await.unwrap();
        assert_eq!(first(&viewer).await, (FrameKind::Snapshot, 30));
        log.cut.notify_one();
        let seen = drain(&viewer, Duration::from_millis(800)).await;
        assert_eq!(
            seen,
            (31..=34).map(|v| (FrameKind::Delta, v)).collect::<Vec<_>>()
        );
    }

    /// A stored log that goes quiet (its JetStream leader is being elected) while the live
    /// line goes on: viewers get the live records that follow on; one that arrives past a
    /// lost one waits for it; the hub recreates its quiet follower, which fills the gap, and
    /// every version reaches the viewer once, in order.
    #[tokio::test]
    async fn the_live_line_feeds_viewers_while_the_stored_log_is_quiet() {
        let log = LaggingLog::new(vec![line_from(10, 20), line_from(10, 25)]);
        let (live, rx) = mpsc::unbounded_channel();
        *log.live.lock().unwrap() = Some(rx);
        let gw = lagging_gateway(log.clone());
        let viewer = gw.attach("m1", None, WIRE).await.unwrap();
        assert_eq!(first(&viewer).await, (FrameKind::Snapshot, 20));
        for v in [21, 22, 22, 24] {
            live.send(record(v, LogKind::Delta)).unwrap();
        }
        let seen = drain(&viewer, Duration::from_millis(400)).await;
        assert_eq!(seen, vec![(FrameKind::Delta, 21), (FrameKind::Delta, 22)]);
        let started = Instant::now();
        // The producer really is silent after 24 here, so a `producer_down` (and its
        // `producer_up`) may come first: not on the version line, left out.
        let seen: Vec<_> = drain(&viewer, Duration::from_millis(2600))
            .await
            .into_iter()
            .filter(|(kind, _)| *kind != FrameKind::Status)
            .collect();
        assert_eq!(
            seen,
            (23..=25).map(|v| (FrameKind::Delta, v)).collect::<Vec<_>>(),
            "the gap filled from the recreated follower, after {:?}",
            started.elapsed()
        );
    }

    /// A gap on the live line that the stored log cannot fill (it stays behind, as during a
    /// JetStream election): after a short wait the hub starts again from the next live
    /// keyframe, so its viewers get a snapshot there and carry on instead of waiting.
    #[tokio::test]
    async fn a_live_gap_the_stored_log_cannot_fill_is_passed_at_a_live_keyframe() {
        let log = LaggingLog::new(vec![line_from(10, 20)]);
        let (live, rx) = mpsc::unbounded_channel();
        *log.live.lock().unwrap() = Some(rx);
        let gw = lagging_gateway(log.clone());
        let viewer = gw.attach("m1", None, WIRE).await.unwrap();
        assert_eq!(first(&viewer).await, (FrameKind::Snapshot, 20));
        live.send(record(21, LogKind::Delta)).unwrap();
        live.send(record(23, LogKind::Delta)).unwrap();
        // A keyframe right away is not used: the stored log may still bring 22.
        live.send(record(23, LogKind::Keyframe)).unwrap();
        let seen = drain(&viewer, Duration::from_millis(600)).await;
        assert_eq!(seen, vec![(FrameKind::Delta, 21)]);
        live.send(record(24, LogKind::Keyframe)).unwrap();
        live.send(record(25, LogKind::Delta)).unwrap();
        let seen = drain(&viewer, Duration::from_millis(400)).await;
        assert_eq!(
            seen,
            vec![(FrameKind::Snapshot, 24), (FrameKind::Delta, 25)]
        );
    }

    /// A live match whose producer goes silent: its viewers are told `producer_down` (not on
    /// the version line) instead of silence, and `producer_up` right before its next record.
    #[tokio::test]
    async fn viewers_are_told_when_the_producer_stops_and_comes_back() {
        let log = Arc::new(MemoryLog::new(MemoryLogLimits::default()));
        log.publish(record(10, LogKind::Keyframe)).await.unwrap();
        publish(&log, 11..=12).await;
        let gw = gateway_on(log.clone());
        let viewer = gw.attach("m1", None, WIRE).await.unwrap();
        assert_eq!(first(&viewer).await, (FrameKind::Snapshot, 12));
        let started = Instant::now();
        let status = first(&viewer).await;
        assert_eq!(
            status,
            (FrameKind::Status, 12),
            "told, at its current position"
        );
        assert!(started.elapsed() >= PRODUCER_SILENCE - Duration::from_millis(100));
        // A viewer arriving meanwhile is told too.
        let late = gw.attach("m1", None, WIRE).await.unwrap();
        let got = drain(&late, Duration::from_millis(300)).await;
        assert_eq!(
            got,
            vec![(FrameKind::Snapshot, 12), (FrameKind::Status, 12)]
        );
        publish(&log, 13..=13).await;
        let got = drain(&viewer, Duration::from_millis(500)).await;
        assert_eq!(got, vec![(FrameKind::Status, 12), (FrameKind::Delta, 13)]);
        let batch = tokio::time::timeout(Duration::from_secs(1), viewer.next_batch()).await;
        assert!(batch.is_err(), "nothing more");
    }
}
