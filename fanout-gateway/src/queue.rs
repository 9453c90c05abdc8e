//! A viewer's outbound queue: bounded, shared between the match hub (producer) and the
//! viewer's connection task (consumer).
//!
//! At the limit the queued frames are dropped and replaced by one snapshot at the current
//! version (docs/architecture.md, "Viewer protocol"): the viewer stays connected, memory stays bounded, and its
//! version line stays valid because a snapshot may replace any run of deltas.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures::task::AtomicWaker;
use protocol::{Format, Frame};

/// How a viewer is sent frames: the feed format and the transport (a WebSocket viewer may have
/// negotiated permessage-deflate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wire {
    pub format: Format,
    pub transport: Transport,
    pub filter: Filter,
}

/// What a viewer asked to be sent (`?types=`, `?kinds=`): snapshots and status messages
/// always; deltas unless `types` leaves them out; events of the kinds asked for (all by
/// default). A filtered viewer's versions skip what it did not ask for; everything it is sent
/// is still on the match's version line, and resuming from its last `epoch:version` works the
/// same (the retained frames are filtered too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filter {
    pub(crate) deltas: bool,
    /// One bit per `MatchEvent::KINDS` entry.
    pub(crate) kinds: u8,
}

impl Default for Filter {
    fn default() -> Self {
        Filter {
            deltas: true,
            kinds: u8::MAX,
        }
    }
}

impl Filter {
    /// Parses `types` (`delta`, `event`, comma separated) and `kinds` (event kinds), naming
    /// the field that is wrong.
    pub fn parse(
        types: Option<&str>,
        kinds: Option<&str>,
    ) -> Result<Filter, (&'static str, String)> {
        let mut filter = Filter::default();
        if let Some(types) = types {
            let (mut deltas, mut events) = (false, false);
            for t in types.split(',').map(str::trim) {
                match t {
                    "delta" => deltas = true,
                    "event" => events = true,
                    other => return Err(("types", format!("{other:?} is not delta or event"))),
                }
            }
            filter.deltas = deltas;
            if !events {
                filter.kinds = 0;
            }
        }
        if let Some(kinds) = kinds {
            let mut mask = 0u8;
            for k in kinds.split(',').map(str::trim) {
                let Some(i) = protocol::MatchEvent::KINDS.iter().position(|x| *x == k) else {
                    return Err((
                        "kinds",
                        format!(
                            "{k:?} is not an event kind ({})",
                            protocol::MatchEvent::KINDS.join(", ")
                        ),
                    ));
                };
                mask |= 1 << i;
            }
            filter.kinds &= mask;
        }
        Ok(filter)
    }

    pub fn accepts(&self, frame: &Frame) -> bool {
        match frame.kind {
            protocol::FrameKind::Delta => self.deltas,
            // Every kind (most viewers): no name to look up, per viewer and event.
            protocol::FrameKind::Event if self.kinds == u8::MAX => true,
            protocol::FrameKind::Event => match frame.event_kind {
                Some(k) => protocol::MatchEvent::KINDS
                    .iter()
                    .position(|x| *x == k)
                    .is_some_and(|i| self.kinds & (1 << i) != 0),
                None => false,
            },
            protocol::FrameKind::Snapshot | protocol::FrameKind::Status => true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    WebSocket { deflate: bool },
    Sse,
}

impl Wire {
    /// The bytes this viewer is sent for `frame` (one pre-built buffer, shared by every viewer
    /// on the same wire).
    pub fn bytes(self, frame: &Frame) -> &bytes::Bytes {
        match self.transport {
            Transport::WebSocket { deflate } => frame.ws_frame(self.format, deflate),
            Transport::Sse => frame.encoded(self.format).sse(),
        }
    }
}

/// Why a viewer's stream ends, as told to the viewer (WS close reason, SSE final event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: String,
    /// When the client should try again, in milliseconds (it adds its own jitter).
    pub retry_after_ms: u64,
}

/// What handing a viewer one fan-out batch did (summed by the hub, counted once per batch).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Frames queued for the viewer (its filter's share of the batch, or the one snapshot).
    pub frames: u64,
    pub bytes: u64,
    /// Socket writes made.
    pub writes: u64,
    /// The batch did not fit: the viewer's backlog was replaced by a snapshot.
    pub substituted: bool,
    /// The viewer is gone: the hub forgets it.
    pub closed: bool,
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
    /// Frames were queued since the viewer's task was last woken.
    unwoken: bool,
    /// Direct writes: the rest of a frame a short write left half sent (it goes out before
    /// anything else), and control frames (pongs, pings, the close) to send before the next
    /// queued frame.
    partial: Option<Bytes>,
    control: VecDeque<Bytes>,
    /// The last write found the socket full: until one goes through, writes ask tokio first
    /// whether the socket drained (no system call while it has not, however many batches
    /// arrive for a slow viewer).
    socket_full: bool,
}

/// Control frames (pongs, pings, the close) that may wait for a viewer's socket.
pub const CONTROL_LIMIT: usize = 16;

/// What a direct write of the queue did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Everything queued is written.
    Done,
    /// The socket is full: the viewer's task waits until it is writable and flushes again.
    Blocked,
    /// The connection is gone.
    Failed,
}

pub struct ViewerQueue {
    state: Mutex<State>,
    /// The one consumer's waker (the viewer's task, an SSE body, a multi-match merge). A
    /// consumer registers, then checks the state, so a wake between the two is never lost;
    /// unlike a `Notify`, waiting needs no future of its own in every idle viewer's task.
    consumer: AtomicWaker,
    capacity: usize,
    pub wire: Wire,
    /// One viewer in 64 has its publish -> written latency recorded.
    pub sampled: bool,
    /// A WebSocket viewer's socket, once its 101 went out: the hub then writes the viewer's
    /// frames itself, without waking the viewer's task (see [`ViewerQueue::flush`]).
    direct: std::sync::OnceLock<Arc<tokio::net::TcpStream>>,
    /// When the viewer was last heard from (ms since the queue was made), for pings.
    heard_ms: std::sync::atomic::AtomicU64,
    born: Instant,
}

impl ViewerQueue {
    pub fn new(capacity: usize, wire: Wire) -> Arc<ViewerQueue> {
        Arc::new(ViewerQueue {
            state: Mutex::new(State {
                frames: VecDeque::new(),
                closed: None,
                last_drained: Instant::now(),
                unwoken: false,
                partial: None,
                control: VecDeque::new(),
                socket_full: false,
            }),
            consumer: AtomicWaker::new(),
            capacity: capacity.max(2),
            wire,
            sampled: rand::random::<u8>() < 4,
            direct: std::sync::OnceLock::new(),
            heard_ms: std::sync::atomic::AtomicU64::new(0),
            born: Instant::now(),
        })
    }

    /// The viewer sent something (a pong, anything): it is alive.
    pub fn heard(&self) {
        self.heard_ms.store(
            self.born.elapsed().as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// A direct (WebSocket) viewer not heard from for `limit`. SSE viewers are never silent
    /// here: they cannot answer, and their stream's own keepalive and stall rules apply.
    pub fn silent_for(&self, limit: std::time::Duration) -> bool {
        self.direct.get().is_some() && {
            let heard = self.heard_ms.load(std::sync::atomic::Ordering::Relaxed);
            self.born.elapsed().as_millis() as u64 > heard + limit.as_millis() as u64
        }
    }

    /// Pings a direct (WebSocket) viewer.
    pub fn ping(&self) {
        if self.direct.get().is_some() {
            self.push_control(protocol::ws::server_frame(
                protocol::ws::OP_PING,
                b"",
                false,
            ));
            let mut s = self.state.lock().unwrap();
            s.unwoken = true;
            drop(s);
            crate::metrics::VIEWER_WRITES.inc_by(self.wake());
        }
    }

    /// From now on frames are written to `socket` by whoever wakes the viewer (the hub), not by
    /// the viewer's task.
    pub fn write_directly(&self, socket: Arc<tokio::net::TcpStream>) {
        let _ = self.direct.set(socket);
    }

    /// Queues a control frame (pong, ping, close) for the direct writes. At most
    /// [`CONTROL_LIMIT`] wait: a viewer that floods pings without reading gets no more pongs
    /// (RFC 6455 lets a pong answer only the latest ping), and the stall rule closes it.
    pub fn push_control(&self, frame: Bytes) {
        let mut s = self.state.lock().unwrap();
        if s.control.len() < CONTROL_LIMIT {
            s.control.push_back(frame);
        }
    }

    /// Writes what is queued (the half-sent rest, control frames, then queued frames) to the
    /// direct socket, as few vectored writes as the socket takes without waiting.
    pub fn flush(&self) -> Flushed {
        let Some(socket) = self.direct.get() else {
            return Flushed::Blocked;
        };
        let mut s = self.state.lock().unwrap();
        let mut writes = 0;
        let flushed = flush_locked(&mut s, socket, self.wire, self.sampled, &mut writes);
        crate::metrics::VIEWER_WRITES.inc_by(writes);
        flushed
    }

    /// Whether anything waits to be written directly.
    pub fn has_pending(&self) -> bool {
        let s = self.state.lock().unwrap();
        s.partial.is_some() || !s.control.is_empty() || !s.frames.is_empty()
    }

    /// Whether a frame can be queued without replacing the backlog by a snapshot (a replay
    /// waits for this instead: it goes as fast as its viewer reads).
    pub fn has_room(&self) -> bool {
        self.state.lock().unwrap().frames.len() < self.capacity
    }

    /// The reason the queue was closed, once it is.
    pub fn closed(&self) -> Option<CloseReason> {
        self.state.lock().unwrap().closed.clone()
    }

    /// Registers the consumer's waker: it is woken when frames wait that the hub could not
    /// write, and on a close. Register before checking the state.
    pub fn register(&self, waker: &std::task::Waker) {
        self.consumer.register(waker);
    }

    /// Queues `frame` without waking the viewer's task (a replay queues what fits, then wakes
    /// it with [`ViewerQueue::wake`]; the hub's fan-out hands whole batches with
    /// [`ViewerQueue::deliver`]); on overflow queues `snapshot()` instead of everything waiting.
    pub fn push(&self, frame: Arc<Frame>, snapshot: impl FnOnce() -> Option<Arc<Frame>>) -> Pushed {
        let mut s = self.state.lock().unwrap();
        if s.closed.is_some() {
            return Pushed::Closed;
        }
        if !self.wire.filter.accepts(&frame) {
            return Pushed::Queued;
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
        s.unwoken = true;
        outcome
    }

    /// Hands the viewer a fan-out batch (everything the hub applied since it last delivered)
    /// and writes it at once: in one pass, under one lock, instead of a push per frame and a
    /// wake after them (two visits of every viewer's state per batch). A direct viewer's socket
    /// is written here; its task is woken only if the socket is full or gone. A batch that
    /// would overflow the queue replaces everything waiting by `snapshot()`, the match as of
    /// the batch's last frame.
    pub fn deliver(
        &self,
        batch: &[Arc<Frame>],
        snapshot: impl FnOnce() -> Option<Arc<Frame>>,
    ) -> Delivered {
        let mut out = Delivered::default();
        let mut s = self.state.lock().unwrap();
        if s.closed.is_some() {
            out.closed = true;
            return out;
        }
        let filter = self.wire.filter;
        let accepted = batch.iter().filter(|f| filter.accepts(f)).count();
        if accepted == 0 {
            return out;
        }
        if s.frames.len() + accepted > self.capacity {
            s.frames.clear();
            if let Some(snap) = snapshot() {
                out.bytes += self.wire.bytes(&snap).len() as u64;
                out.frames += 1;
                s.frames.push_back(snap);
            }
            out.substituted = true;
        } else {
            for f in batch.iter().filter(|f| filter.accepts(f)) {
                out.bytes += self.wire.bytes(f).len() as u64;
                s.frames.push_back(f.clone());
            }
            out.frames = accepted as u64;
        }
        s.unwoken = false;
        out.closed = self.write_or_wake(s, &mut out.writes);
        out
    }

    /// Asks the CPU to bring this viewer's state into cache ahead of its delivery (a hint: no
    /// effect on what happens, only on when the memory arrives).
    pub fn prefetch(&self) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let at = (self as *const ViewerQueue).cast::<i8>();
            for line in 0..std::mem::size_of::<ViewerQueue>().div_ceil(64) {
                // SAFETY: a prefetch never faults and reads nothing the program sees; SSE is
                // part of every x86_64 CPU.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(line * 64)) };
            }
        }
    }

    /// Writes what is queued straight to a direct viewer's socket, and wakes the viewer's task
    /// unless all of it went out (the socket is full or gone, or the viewer has no direct
    /// socket). True when the connection is lost.
    fn write_or_wake(&self, mut s: std::sync::MutexGuard<'_, State>, writes: &mut u64) -> bool {
        let mut lost = false;
        if let Some(socket) = self.direct.get() {
            match flush_locked(&mut s, socket, self.wire, self.sampled, writes) {
                Flushed::Done => return false,
                Flushed::Blocked => {}
                Flushed::Failed => {
                    s.closed.get_or_insert(CloseReason {
                        code: 1006,
                        reason: "connection lost".into(),
                        retry_after_ms: 0,
                    });
                    lost = true;
                }
            }
        }
        drop(s);
        self.consumer.wake();
        lost
    }

    /// Delivers what was queued since the last wake: written straight to a direct viewer's
    /// socket (its task is woken only if the socket is full or gone), otherwise the viewer's
    /// task is woken to write it. Returns the writes it made, for the caller to count once
    /// per fan-out (a shared counter per viewer and message was a contended cache line).
    #[must_use = "count the writes (metrics::VIEWER_WRITES)"]
    pub fn wake(&self) -> u64 {
        let mut s = self.state.lock().unwrap();
        if !std::mem::take(&mut s.unwoken) {
            return 0;
        }
        let mut writes = 0;
        self.write_or_wake(s, &mut writes);
        writes
    }

    /// Queues frames a (re)connecting viewer must see first. Never substitutes.
    pub fn push_initial(&self, frames: Vec<Arc<Frame>>) {
        let mut s = self.state.lock().unwrap();
        s.frames
            .extend(frames.into_iter().filter(|f| self.wire.filter.accepts(f)));
        drop(s);
        self.consumer.wake();
    }

    /// Waits for frames and takes all of them (one batched write), or the close reason once
    /// the queue is closed and drained.
    pub async fn next_batch(&self) -> Result<Vec<Arc<Frame>>, CloseReason> {
        std::future::poll_fn(|cx| {
            // Registered before the check: a push after the check wakes this waker.
            self.consumer.register(cx.waker());
            let mut s = self.state.lock().unwrap();
            s.last_drained = Instant::now();
            if !s.frames.is_empty() {
                return std::task::Poll::Ready(Ok(s.frames.drain(..).collect()));
            }
            if let Some(reason) = &s.closed {
                return std::task::Poll::Ready(Err(reason.clone()));
            }
            std::task::Poll::Pending
        })
        .await
    }

    pub fn close(&self, reason: CloseReason) {
        let mut s = self.state.lock().unwrap();
        if s.closed.is_none() {
            s.closed = Some(reason);
        }
        drop(s);
        self.consumer.wake();
    }

    pub fn is_closed(&self) -> bool {
        self.state.lock().unwrap().closed.is_some()
    }

    /// Whether frames have waited unread for longer than `deadline`: the viewer stopped reading.
    pub fn stalled_for(&self, deadline: std::time::Duration) -> bool {
        let s = self.state.lock().unwrap();
        (!s.frames.is_empty() || s.partial.is_some()) && s.last_drained.elapsed() > deadline
    }
}

/// One vectored write to a viewer's socket as `sendmsg`, not `writev`: the same bytes, without
/// the file layer's work (`writev` goes through the VFS and its file-position lock on every
/// call, several percent of the gateway's CPU at a write per viewer per message). No SIGPIPE:
/// a viewer that went away is an error like any other.
///
/// A live viewer's write goes straight to the socket, without first asking tokio whether it
/// believes the socket writable (its readiness record is one more cache miss per viewer per
/// batch, and a live viewer's socket nearly always is). A full socket is reported to tokio, so
/// that a task waiting for it to drain is woken: its readiness is cleared, then the write is
/// tried once more, because space freed between the first failure and the clear would
/// otherwise be forgotten; a second failure leaves the socket marked full in the kernel, whose
/// next freed space sets the readiness again. From then on (`socket_full`) writes go through
/// tokio's readiness until one succeeds: a slow viewer costs no system call per batch.
fn send(
    socket: &tokio::net::TcpStream,
    iov: &[std::io::IoSlice<'_>],
    socket_full: &mut bool,
) -> std::io::Result<usize> {
    let attempt =
        || socket2::SockRef::from(socket).send_vectored_with_flags(iov, libc::MSG_NOSIGNAL);
    let sent = if *socket_full {
        socket.try_io(tokio::io::Interest::WRITABLE, attempt)
    } else {
        match attempt() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let _ = socket.try_io(tokio::io::Interest::WRITABLE, || {
                    Err::<(), _>(std::io::Error::from(std::io::ErrorKind::WouldBlock))
                });
                attempt()
            }
            other => other,
        }
    };
    *socket_full = matches!(&sent, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    sent
}

/// The direct write itself (the state is locked by the caller): builds one vectored write of
/// the half-sent rest, the control frames and the queued frames' pre-built bytes, and takes off
/// the queue whatever the socket accepted.
fn flush_locked(
    s: &mut State,
    socket: &tokio::net::TcpStream,
    wire: Wire,
    sampled: bool,
    writes: &mut u64,
) -> Flushed {
    // A live viewer's batch is a few frames (a tick's events and its delta); a longer backlog
    // (a resume's frames) takes a few writes.
    const MAX_IOV: usize = 16;
    loop {
        if s.partial.is_none() && s.control.is_empty() && s.frames.is_empty() {
            return Flushed::Done;
        }
        let mut iov = [std::io::IoSlice::new(&[]); MAX_IOV];
        let mut n = 0;
        if let Some(p) = &s.partial {
            iov[n] = std::io::IoSlice::new(p);
            n += 1;
        }
        for c in s.control.iter().take(MAX_IOV - n) {
            iov[n] = std::io::IoSlice::new(c);
            n += 1;
        }
        let frames_in = s.frames.len().min(MAX_IOV - n);
        for f in s.frames.iter().take(frames_in) {
            iov[n] = std::io::IoSlice::new(wire.bytes(f));
            n += 1;
        }
        let written = match send(socket, &iov[..n], &mut s.socket_full) {
            Ok(0) => return Flushed::Failed,
            Ok(w) => w,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Flushed::Blocked,
            Err(_) => return Flushed::Failed,
        };
        *writes += 1;
        s.last_drained = Instant::now();
        if sampled {
            if let Some(p) = s.frames.iter().take(frames_in).find_map(|f| f.published_us) {
                crate::metrics::PUBLISH_TO_SEND
                    .observe(protocol::now_us().saturating_sub(p) as f64 / 1e6);
            }
        }
        take_off(s, wire, written);
    }
}

/// Takes off the queue what a write sent, in the order it was laid out: the half-sent rest,
/// the control frames, the queued frames; a frame the write ended inside becomes the rest.
fn take_off(s: &mut State, wire: Wire, mut written: usize) {
    if let Some(p) = s.partial.take() {
        if written < p.len() {
            s.partial = Some(p.slice(written..));
            return;
        }
        written -= p.len();
    }
    while written > 0 {
        if let Some(c) = s.control.pop_front() {
            if written < c.len() {
                s.partial = Some(c.slice(written..));
                written = 0;
            } else {
                written -= c.len();
            }
            continue;
        }
        let Some(f) = s.frames.pop_front() else { break };
        let bytes = wire.bytes(&f);
        if written < bytes.len() {
            s.partial = Some(bytes.slice(written..));
            written = 0;
        } else {
            written -= bytes.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{FrameKind, StreamPosition};

    fn frame(kind: FrameKind, version: u64) -> Arc<Frame> {
        let mut feed = protocol::MatchFeed::new("m", 2);
        feed.apply(&protocol::LogRecord {
            match_id: "m".into(),
            epoch: 1,
            version,
            kind: protocol::LogKind::Keyframe,
            body: bytes::Bytes::from_static(b"{\"region\":\"eu\",\"status\":\"live\",\"tick\":0,\"arena\":{\"width\":1,\"height\":1,\"obstacles\":[]},\"players\":{}}"),
        });
        let mut f = (*feed.snapshot_frame().unwrap()).clone();
        f.kind = kind;
        assert_eq!(f.position, StreamPosition { epoch: 1, version });
        Arc::new(f)
    }

    fn wire() -> Wire {
        Wire {
            format: Format::V2,
            transport: Transport::WebSocket { deflate: true },
            filter: Filter::default(),
        }
    }

    #[test]
    fn filters_name_what_they_refuse() {
        assert_eq!(Filter::parse(None, None), Ok(Filter::default()));
        let events = Filter::parse(Some("event"), None).unwrap();
        assert!(!events.deltas && events.kinds == u8::MAX);
        let kills = Filter::parse(Some("event"), Some("kill,match_ended")).unwrap();
        assert_eq!(kills.kinds.count_ones(), 2);
        assert_eq!(Filter::parse(Some("deltas"), None).unwrap_err().0, "types");
        assert_eq!(
            Filter::parse(None, Some("kill,goal")).unwrap_err().0,
            "kinds"
        );
    }

    #[tokio::test]
    async fn overflow_replaces_the_backlog_with_one_snapshot() {
        let q = ViewerQueue::new(3, wire());
        for v in 1..=3 {
            assert_eq!(q.push(frame(FrameKind::Delta, v), || None), Pushed::Queued);
        }
        let out = q.push(frame(FrameKind::Delta, 4), || {
            Some(frame(FrameKind::Snapshot, 4))
        });
        assert_eq!(out, Pushed::Substituted);
        assert_eq!(q.push(frame(FrameKind::Delta, 5), || None), Pushed::Queued);
        let _ = q.wake();
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

    #[tokio::test]
    async fn frames_wait_for_one_wake_and_leave_together() {
        let q = ViewerQueue::new(8, wire());
        let waiting = {
            let q = q.clone();
            tokio::spawn(async move { q.next_batch().await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        q.push(frame(FrameKind::Event, 1), || None);
        q.push(frame(FrameKind::Delta, 2), || None);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "pushing alone does not wake the viewer"
        );
        let _ = q.wake();
        let batch = waiting.await.unwrap().unwrap();
        assert_eq!(batch.len(), 2, "the tick's event and delta in one write");
        let f = &batch[1];
        assert!(
            std::ptr::eq(q.wire.bytes(f), &f.v2_deflated),
            "the wire picks the shared bytes"
        );
    }

    #[tokio::test]
    async fn a_batch_is_delivered_whole_or_replaced_by_the_snapshot_at_its_end() {
        let q = ViewerQueue::new(4, wire());
        let batch: Vec<_> = (1..=3).map(|v| frame(FrameKind::Delta, v)).collect();
        let d = q.deliver(&batch, || panic!("no snapshot when the batch fits"));
        assert_eq!(
            (d.frames, d.substituted, d.closed, d.writes),
            (3, false, false, 0)
        );
        assert_eq!(
            d.bytes,
            batch
                .iter()
                .map(|f| q.wire.bytes(f).len() as u64)
                .sum::<u64>()
        );
        // Three wait, two more come: five do not fit in four, so the viewer is given the match
        // as of the batch's last frame instead of everything waiting.
        let more = vec![frame(FrameKind::Event, 4), frame(FrameKind::Delta, 5)];
        let d = q.deliver(&more, || Some(frame(FrameKind::Snapshot, 5)));
        assert!(d.substituted);
        assert_eq!(d.frames, 1);
        let got: Vec<_> = q
            .next_batch()
            .await
            .unwrap()
            .iter()
            .map(|f| (f.kind, f.position.version))
            .collect();
        assert_eq!(got, vec![(FrameKind::Snapshot, 5)]);
        q.close(CloseReason {
            code: 1001,
            reason: "bye".into(),
            retry_after_ms: 1000,
        });
        assert!(
            q.deliver(&more, || None).closed,
            "a closed viewer is dropped"
        );
    }

    /// The hub's direct writes, through a socket whose buffers fill: batches written whole
    /// straight from the hub's frames, short writes, a blocked socket whose batches queue, and
    /// the flushes that follow must put every frame's bytes on the wire once, in order.
    #[tokio::test]
    async fn direct_writes_put_every_frame_on_the_wire_once_in_order_through_short_writes() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        // Small buffers at both ends (the reader's before it connects, so the window stays
        // small): a few batches fill them.
        let reader = tokio::net::TcpSocket::new_v4().unwrap();
        reader.set_recv_buffer_size(4096).unwrap();
        let mut client = reader
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        socket2::SockRef::from(&server)
            .set_send_buffer_size(4096)
            .unwrap();
        let q = ViewerQueue::new(100_000, wire());
        q.write_directly(Arc::new(server));
        let mut expected = Vec::new();
        let mut received = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut version = 0;
        for round in 0..400u64 {
            let batch: Vec<Arc<Frame>> = (0..1 + round % 4)
                .map(|_| {
                    version += 1;
                    frame(FrameKind::Delta, version)
                })
                .collect();
            for f in &batch {
                expected.extend_from_slice(wire().bytes(f));
            }
            let d = q.deliver(&batch, || None);
            assert!(!d.substituted && !d.closed);
            // Read only now and then, so the socket fills and writes come up short or block.
            if round % 100 == 99 {
                while q.has_pending() || received.len() < expected.len() {
                    let n = tokio::time::timeout(
                        std::time::Duration::from_secs(5),
                        client.read(&mut buf),
                    )
                    .await
                    .expect("the bytes arrive")
                    .unwrap();
                    received.extend_from_slice(&buf[..n]);
                    q.flush();
                }
            }
        }
        assert_eq!(received.len(), expected.len());
        assert!(received == expected, "the bytes on the wire differ");
    }

    #[tokio::test]
    async fn a_batch_skips_what_the_viewer_filtered_out() {
        let q = ViewerQueue::new(
            4,
            Wire {
                filter: Filter::parse(Some("delta"), None).unwrap(),
                ..wire()
            },
        );
        let only_event = vec![frame(FrameKind::Event, 1)];
        assert_eq!(q.deliver(&only_event, || None), Delivered::default());
        let d = q.deliver(
            &[frame(FrameKind::Event, 2), frame(FrameKind::Delta, 3)],
            || None,
        );
        assert_eq!(d.frames, 1);
        let batch = q.next_batch().await.unwrap();
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].kind, FrameKind::Delta);
    }
}
