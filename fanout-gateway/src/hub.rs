//! The per-match hub: one task per match with local viewers. It follows the match log from the
//! latest keyframe, keeps the spectator state and a ring of recent frames (in a
//! [`MatchFeed`]), and hands every frame, encoded once, to each viewer's queue. It starts with
//! the first viewer and stops after the last one leaves and a short linger.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backends::{LogError, LogItem, LogStream, MatchLog};
use futures::StreamExt;
use httpkit::Shutdown;
use protocol::{now_ms, Applied, MatchFeed, StreamPosition};
use tokio::sync::{mpsc, oneshot};

use crate::metrics;
use crate::queue::{CloseReason, Pushed, ViewerQueue};
use crate::GatewayConfig;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    #[error("unknown match")]
    UnknownMatch,
    #[error("match log unavailable")]
    Unavailable,
}

pub(crate) struct Attach {
    pub since: Option<StreamPosition>,
    pub reply: oneshot::Sender<Result<Arc<ViewerQueue>, AttachError>>,
}

#[derive(Clone)]
pub(crate) struct HubHandle {
    pub attach: mpsc::Sender<Attach>,
    pub viewers: Arc<AtomicUsize>,
}

pub(crate) type Registry = Arc<Mutex<HashMap<String, HubHandle>>>;

pub(crate) struct Hub {
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
        registry.remove(&self.match_id);
        self.attach_rx.close();
        true
    }

    /// Refuses every waiting and future attach with `error`, then leaves.
    fn refuse_all(&mut self, error: AttachError) {
        {
            let mut registry = self.registry.lock().unwrap();
            registry.remove(&self.match_id);
        }
        self.attach_rx.close();
        while let Ok(a) = self.attach_rx.try_recv() {
            let _ = a.reply.send(Err(error.clone()));
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
        let mut feed = MatchFeed::new(self.match_id.clone(), self.config.ring_capacity);
        let mut viewers: Vec<Arc<ViewerQueue>> = Vec::new();
        let mut waiting: Vec<Attach> = Vec::new();
        let mut caught_up = false;
        let mut empty_since = Some(Instant::now());
        let mut sweep = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                item = stream.next() => {
                    let resubscribe = match item {
                        Some(Ok(item)) => {
                            let gap = deliver(&self.match_id, &mut feed, &mut viewers, &item);
                            if !gap && item.caught_up && !caught_up {
                                caught_up = true;
                                for a in waiting.drain(..) {
                                    attach(&mut feed, &mut viewers, a, &self.config);
                                }
                            }
                            gap
                        }
                        Some(Err(LogError::UnknownMatch)) => true,
                        Some(Err(e)) => {
                            tracing::warn!(match_id = %self.match_id, error = %e, "match log follow interrupted; resubscribing");
                            true
                        }
                        None => true,
                    };
                    if resubscribe {
                        stream = loop {
                            match self.subscribe().await {
                                Ok(s) => break s,
                                Err(e) => {
                                    tracing::warn!(match_id = %self.match_id, error = %e, "resubscribe failed");
                                    tokio::select! {
                                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                                        _ = self.shutdown.cancelled() => break futures::stream::empty().boxed(),
                                    }
                                }
                            }
                        };
                    }
                }
                a = self.attach_rx.recv() => {
                    let Some(a) = a else { return };
                    if caught_up {
                        attach(&mut feed, &mut viewers, a, &self.config);
                    } else {
                        waiting.push(a);
                    }
                }
                _ = sweep.tick() => {
                    let stall = self.config.stall_deadline;
                    viewers.retain(|v| {
                        if v.stalled_for(stall) {
                            metrics::STALLED_CLOSED.inc();
                            v.close(CloseReason { code: 1008, reason: "viewer stopped reading".into(), retry_after_ms: 1000 });
                        }
                        !v.is_closed()
                    });
                    if viewers.is_empty() && waiting.is_empty() {
                        let since = *empty_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= self.config.hub_linger && self.try_leave() {
                            return;
                        }
                    } else {
                        empty_since = None;
                    }
                }
                _ = self.shutdown.cancelled() => {
                    for v in &viewers {
                        v.close(going_away("server shutting down", self.config.retry_after_ms));
                    }
                    self.refuse_all(AttachError::Unavailable);
                    return;
                }
            }
            self.viewer_count.store(viewers.len(), Ordering::Relaxed);
        }
    }
}

/// Applies one log item and fans out what it produced. Returns true on a gap (the caller
/// resubscribes from the latest keyframe).
fn deliver(
    match_id: &str,
    feed: &mut MatchFeed,
    viewers: &mut Vec<Arc<ViewerQueue>>,
    item: &LogItem,
) -> bool {
    match feed.apply_published(&item.record, item.published_ms) {
        Applied::Appended(frame) => {
            if let Some(p) = item.published_ms {
                metrics::LOG_TO_HUB.observe(now_ms().saturating_sub(p) as f64 / 1000.0);
            }
            viewers.retain(|v| match v.push(frame.clone(), || feed.snapshot_frame()) {
                Pushed::Queued => true,
                Pushed::Substituted => {
                    metrics::SUBSTITUTIONS.inc();
                    true
                }
                Pushed::Closed => false,
            });
            false
        }
        Applied::Reset => {
            // A new epoch (or a healed gap): everyone starts over from a snapshot, which is
            // how a new epoch always begins for a viewer.
            if let Some(snap) = feed.snapshot_frame() {
                viewers.retain(|v| v.push(snap.clone(), || Some(snap.clone())) != Pushed::Closed);
            }
            false
        }
        Applied::Ignored => false,
        Applied::Gap { expected, got } => {
            tracing::warn!(%match_id, %expected, %got, "gap in match log; resubscribing");
            true
        }
    }
}

fn attach(
    feed: &mut MatchFeed,
    viewers: &mut Vec<Arc<ViewerQueue>>,
    a: Attach,
    config: &GatewayConfig,
) {
    let queue = ViewerQueue::new(config.viewer_queue);
    queue.push_initial(feed.resume_frames(a.since));
    if a.reply.send(Ok(queue.clone())).is_ok() {
        viewers.push(queue);
    }
}
