//! A viewer's outbound queue: bounded, shared between the match hub (producer) and the
//! viewer's connection task (consumer).
//!
//! At the limit the queued frames are dropped and replaced by one snapshot at the current
//! version (docs/architecture.md, "Viewer protocol"): the viewer stays connected, memory stays bounded, and its
//! version line stays valid because a snapshot may replace any run of deltas.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use protocol::Frame;
use tokio::sync::Notify;

/// Why a viewer's stream ends, as told to the viewer (WS close reason, SSE final event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: String,
    /// When the client should try again, in milliseconds (it adds its own jitter).
    pub retry_after_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// The queue was full: its deltas were replaced by a snapshot.
    Substituted,
    Closed,
}

struct State {
    frames: VecDeque<Arc<Frame>>,
    closed: Option<CloseReason>,
    last_drained: Instant,
}

pub struct ViewerQueue {
    state: Mutex<State>,
    notify: Notify,
    capacity: usize,
}

impl ViewerQueue {
    pub fn new(capacity: usize) -> Arc<ViewerQueue> {
        Arc::new(ViewerQueue {
            state: Mutex::new(State {
                frames: VecDeque::new(),
                closed: None,
                last_drained: Instant::now(),
            }),
            notify: Notify::new(),
            capacity: capacity.max(2),
        })
    }

    /// Queues `frame`; on overflow queues `snapshot()` instead of everything waiting.
    pub fn push(&self, frame: Arc<Frame>, snapshot: impl FnOnce() -> Option<Arc<Frame>>) -> Pushed {
        let mut s = self.state.lock().unwrap();
        if s.closed.is_some() {
            return Pushed::Closed;
        }
        let outcome = if s.frames.len() >= self.capacity {
            s.frames.clear();
            if let Some(snap) = snapshot() {
                s.frames.push_back(snap);
            }
            Pushed::Substituted
        } else {
            s.frames.push_back(frame);
            Pushed::Queued
        };
        drop(s);
        self.notify.notify_one();
        outcome
    }

    /// Queues frames a (re)connecting viewer must see first. Never substitutes.
    pub fn push_initial(&self, frames: Vec<Arc<Frame>>) {
        let mut s = self.state.lock().unwrap();
        s.frames.extend(frames);
        drop(s);
        self.notify.notify_one();
    }

    /// Waits for frames and takes all of them (one batched write), or the close reason once
    /// the queue is closed and drained.
    pub async fn next_batch(&self) -> Result<Vec<Arc<Frame>>, CloseReason> {
        loop {
            {
                let mut s = self.state.lock().unwrap();
                s.last_drained = Instant::now();
                if !s.frames.is_empty() {
                    return Ok(s.frames.drain(..).collect());
                }
                if let Some(reason) = &s.closed {
                    return Err(reason.clone());
                }
            }
            // One consumer per queue: a notification sent while we were checking is kept as a
            // permit, so nothing is missed between the check and the wait.
            self.notify.notified().await;
        }
    }

    pub fn close(&self, reason: CloseReason) {
        let mut s = self.state.lock().unwrap();
        if s.closed.is_none() {
            s.closed = Some(reason);
        }
        drop(s);
        self.notify.notify_one();
    }

    pub fn is_closed(&self) -> bool {
        self.state.lock().unwrap().closed.is_some()
    }

    /// Whether frames have waited unread for longer than `deadline`: the viewer stopped reading.
    pub fn stalled_for(&self, deadline: std::time::Duration) -> bool {
        let s = self.state.lock().unwrap();
        !s.frames.is_empty() && s.last_drained.elapsed() > deadline
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{FrameKind, StreamPosition};

    fn frame(kind: FrameKind, version: u64) -> Arc<Frame> {
        Arc::new(Frame {
            kind,
            position: StreamPosition { epoch: 1, version },
            json: bytes::Bytes::new(),
            sse: bytes::Bytes::new(),
            published_us: None,
        })
    }

    #[tokio::test]
    async fn overflow_replaces_the_backlog_with_one_snapshot() {
        let q = ViewerQueue::new(3);
        for v in 1..=3 {
            assert_eq!(q.push(frame(FrameKind::Delta, v), || None), Pushed::Queued);
        }
        let out = q.push(frame(FrameKind::Delta, 4), || {
            Some(frame(FrameKind::Snapshot, 4))
        });
        assert_eq!(out, Pushed::Substituted);
        assert_eq!(q.push(frame(FrameKind::Delta, 5), || None), Pushed::Queued);
        let batch = q.next_batch().await.unwrap();
        let got: Vec<_> = batch.iter().map(|f| (f.kind, f.position.version)).collect();
        assert_eq!(got, vec![(FrameKind::Snapshot, 4), (FrameKind::Delta, 5)]);
        q.close(CloseReason {
            code: 1001,
            reason: "bye".into(),
            retry_after_ms: 1000,
        });
        assert_eq!(q.push(frame(FrameKind::Delta, 6), || None), Pushed::Closed);
        assert_eq!(q.next_batch().await.unwrap_err().reason, "bye");
    }
}
