//! The channel for time-critical events (fire, death, pickup): unordered, repeated in every packet
//! until acknowledged.
//!
//! A fire that arrives late is worth little, and one that waits behind a lost earlier message
//! (head-of-line blocking) or for a resend timer is late. So each event gets an id, rides in
//! every packet the sender sends until the receiver's ack covers it, and the receiver hands it
//! on the moment the first copy arrives, in whatever order that is. A lost packet costs one
//! packet interval, not a round trip.
//!
//! "Every packet" has a limit ([`Repeats`]): on a link losing 5% of packets, two copies a
//! packet interval apart leave an event unseen 1 time in 400; the third and fourth copies an
//! event used to get while its ack was on the way were a third of the bytes a player received
//! for events. So after the copies the link's loss calls for, the next waits until an ack for
//! them would have been back.
//!
//! Acks use the packet-ack scheme on event ids: the newest id received and a bitfield of the 32
//! before it. An event more than 32 ids behind the newest one the receiver has is past its
//! window: the receiver would refuse it as a duplicate, so the sender drops it (counted), as it
//! does an event older than [`URGENT_TTL_MS`] (it would be shown too late to matter). The
//! ordered channel ([`super::reliable`]) keeps what needs order and exactly-once: the roster,
//! chat, the end of the match.

use std::collections::VecDeque;

use super::acks::{seq_newer, ReceivedPackets};
use super::Message;

/// Events waiting for an ack at most; at the limit the oldest is dropped.
pub const MAX_URGENT: usize = 32;
/// An event not acknowledged after this long is dropped: by then it is history.
pub const URGENT_TTL_MS: u64 = 1_000;
/// An event's second copy may leave in a datagram of its own this long after the first (one
/// 30 Hz tick, less a margin for the tick timer's jitter).
pub const SECOND_COPY_AFTER_MS: u64 = 30;
/// How far behind the newest received id the receiver still takes an event (the ack bitfield).
const WINDOW: u16 = 32;

/// How an event is repeated: in every packet for its first `back_to_back` copies (a loss then
/// costs one packet interval), then only when `then_after_ms` has passed since its last copy
/// with no ack (the ack of a copy that arrived would be back by then).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repeats {
    pub back_to_back: u8,
    pub then_after_ms: u64,
}

impl Default for Repeats {
    /// Every packet until acknowledged.
    fn default() -> Self {
        Repeats {
            back_to_back: u8::MAX,
            then_after_ms: 0,
        }
    }
}

impl Repeats {
    /// The share of events whose back-to-back copies may all be lost.
    const ALL_LOST: f32 = 0.005;

    /// For a link that loses `loss` of its packets with a round trip of `rtt_ms`: at least two
    /// copies back to back, more while all of them would be lost for more than 1 event in 200
    /// (5% loss: 2; 10%: 3; 20%: 4; at most 8), then one a round trip (and a margin) after the
    /// last.
    pub fn for_link(loss: f32, rtt_ms: f32) -> Repeats {
        let loss = loss.clamp(0.0, 0.9);
        let mut back_to_back = 2;
        while loss.powi(i32::from(back_to_back)) > Self::ALL_LOST && back_to_back < 8 {
            back_to_back += 1;
        }
        Repeats {
            back_to_back,
            then_after_ms: (rtt_ms + 20.0).clamp(40.0, 500.0) as u64,
        }
    }

    fn due(&self, p: &Pending, now_ms: u64) -> bool {
        p.copies < self.back_to_back || now_ms.saturating_sub(p.last_sent_ms) >= self.then_after_ms
    }
}

#[derive(Debug, Clone)]
struct Pending {
    id: u16,
    msg: Message,
    len: usize,
    queued_ms: u64,
    /// Packets it has gone out in (saturating).
    copies: u8,
    /// When the first of them left.
    first_sent_ms: u64,
    /// When the latest of them left.
    last_sent_ms: u64,
}

/// The sending side: events not yet acknowledged.
#[derive(Debug, Default)]
pub struct UrgentSender {
    next_id: u16,
    pending: VecDeque<Pending>,
    /// Events given up on (window passed, too old, or pushed out at the limit).
    pub dropped: u64,
    /// Set by whoever knows the link (the server's session of the player).
    pub repeats: Repeats,
}

impl UrgentSender {
    /// Queues an event; it goes out with the next packet and every one after until acked.
    pub fn send(&mut self, msg: Message, now_ms: u64) {
        if self.pending.len() >= MAX_URGENT {
            self.pending.pop_front();
            self.dropped += 1;
        }
        let len = msg.encoded_len();
        self.pending.push_back(Pending {
            id: self.next_id,
            msg,
            len,
            queued_ms: now_ms,
            copies: 0,
            first_sent_ms: 0,
            last_sent_ms: 0,
        });
        self.next_id = self.next_id.wrapping_add(1);
    }

    /// The receiver's ack: `latest` event id received and the 32 before it as bits.
    pub fn on_ack(&mut self, latest: u16, bits: u32) {
        let mut lost = 0;
        self.pending.retain(|p| {
            if p.id == latest {
                return false;
            }
            if seq_newer(p.id, latest) {
                return true;
            }
            let back = latest.wrapping_sub(p.id);
            if back > WINDOW {
                // Behind the window and never acked: the receiver would refuse it.
                lost += 1;
                return false;
            }
            bits & (1 << (back - 1)) == 0
        });
        self.dropped += lost;
    }

    /// The events to put in the next packet: every pending one younger than the TTL whose next
    /// copy is due ([`Repeats`]), oldest first, within `budget` bytes. Expired ones are
    /// dropped here.
    pub fn outgoing(&mut self, now_ms: u64, budget: usize) -> Vec<(u16, Message)> {
        let mut out = Vec::new();
        self.outgoing_into(now_ms, budget, &mut out);
        out
    }

    /// [`UrgentSender::outgoing`] into `out` (cleared first), reusing its capacity.
    pub fn outgoing_into(&mut self, now_ms: u64, budget: usize, out: &mut Vec<(u16, Message)>) {
        out.clear();
        while self
            .pending
            .front()
            .is_some_and(|p| now_ms.saturating_sub(p.queued_ms) > URGENT_TTL_MS)
        {
            self.pending.pop_front();
            self.dropped += 1;
        }
        let mut used = 0;
        let repeats = self.repeats;
        for p in self.pending.iter_mut() {
            if !repeats.due(p, now_ms) {
                continue;
            }
            if used + p.len > budget {
                break;
            }
            used += p.len;
            if p.copies == 0 {
                p.first_sent_ms = now_ms;
            }
            p.last_sent_ms = now_ms;
            p.copies = p.copies.saturating_add(1);
            out.push((p.id, p.msg.clone()));
        }
    }

    /// Whether an event waits that no packet has carried yet, or only one has, at least
    /// [`SECOND_COPY_AFTER_MS`] ago: the room then sends the events at once, between snapshots
    /// if need be. So when snapshots are rarer than ticks, a lost first copy still costs about
    /// one 30 Hz interval, not a snapshot interval (15 snapshots a second on 30 Hz ticks: p99
    /// fire -> seen 129-131 ms against 142-149 when repeats waited for the snapshot, for 6% more
    /// bytes); on faster ticks the wait keeps the second copy from costing a datagram of its own
    /// when a snapshot leaves within it. Later back-to-back copies ride the snapshots; a copy
    /// after them (all of them lost, or their acks) leaves at once when due.
    pub fn wants_a_packet(&self, now_ms: u64) -> bool {
        let r = self.repeats;
        self.pending.iter().any(|p| {
            p.copies == 0
                || (p.copies == 1 && now_ms.saturating_sub(p.first_sent_ms) >= SECOND_COPY_AFTER_MS)
                || (p.copies >= r.back_to_back
                    && now_ms.saturating_sub(p.last_sent_ms) >= r.then_after_ms)
        })
    }

    /// Whether an event waits that no packet has carried yet. The events no packet has carried
    /// are always the newest ones (events are queued at the back, a packet takes every unsent
    /// one oldest first until its budget runs out, and acks and expiry remove, never reorder),
    /// so the newest tells: a room asks this of every player each time it acts between ticks,
    /// and a scan of the queue was 2-3% of the server's thread.
    pub fn has_unsent(&self) -> bool {
        self.pending.back().is_some_and(|p| p.copies == 0)
    }

    /// Events sent but not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.pending.len()
    }
}

/// The receiving side: which event ids arrived, to deliver each once and to ack them.
#[derive(Debug, Default, Clone)]
pub struct UrgentReceiver {
    seen: ReceivedPackets,
}

impl UrgentReceiver {
    /// Takes an arriving event: `Some` the first time its id is seen, `None` for a repeat (or
    /// an id past the window).
    pub fn receive(&mut self, id: u16, msg: Message) -> Option<Message> {
        self.seen.record(id).then_some(msg)
    }

    /// `(latest, bits)` for the next outgoing packet.
    pub fn ack_fields(&self) -> (u16, u32) {
        self.seen.ack_fields()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What an `UrgentSender` is asked to do, in any order.
    #[derive(Debug, Clone)]
    enum Step {
        Send,
        Packet { budget: usize },
        Ack { back: u16, bits: u32 },
        Wait { ms: u64 },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => Just(Step::Send),
            3 => (0usize..40).prop_map(|budget| Step::Packet { budget }),
            2 => (0u16..40, any::<u32>()).prop_map(|(back, bits)| Step::Ack { back, bits }),
            1 => (0u64..1500).prop_map(|ms| Step::Wait { ms }),
        ]
    }

    proptest! {
        /// The events no packet has carried are always the newest, so `has_unsent` may look
        /// at the newest alone: it agrees with a scan of the whole queue after any steps.
        #[test]
        fn unsent_events_are_always_the_newest(steps in proptest::collection::vec(step(), 0..120)) {
            let mut tx = UrgentSender {
                repeats: Repeats::for_link(0.05, 70.0),
                ..UrgentSender::default()
            };
            let mut now = 0;
            for (i, s) in steps.into_iter().enumerate() {
                match s {
                    Step::Send => tx.send(pickup(i as u16), now),
                    Step::Packet { budget } => {
                        tx.outgoing(now, budget);
                    }
                    Step::Ack { back, bits } => {
                        tx.on_ack(tx.next_id.wrapping_sub(1).wrapping_sub(back), bits)
                    }
                    Step::Wait { ms } => now += ms,
                }
                let copies: Vec<u8> = tx.pending.iter().map(|p| p.copies).collect();
                let first_unsent = copies.iter().position(|&c| c == 0).unwrap_or(copies.len());
                prop_assert!(copies[first_unsent..].iter().all(|&c| c == 0), "{copies:?}");
                prop_assert_eq!(tx.has_unsent(), copies.contains(&0));
            }
        }
    }

    fn pickup(entity: u16) -> Message {
        Message::Pickup { entity }
    }

    use crate::net::test_rng::Rng;

    /// 30 packets a second each way, `loss` each way, 25 ms one way plus up to 10 ms; about
    /// one event every other packet. Checks every event is delivered exactly once and nothing
    /// is held or dropped at the end; returns each event's latency and the copies sent.
    fn simulate(loss: f64, repeats: Option<Repeats>) -> (Vec<u64>, u64) {
        let mut latencies: Vec<u64> = Vec::new();
        let mut copies = 0u64;
        for seed in 0..20 {
            let mut rng = Rng(seed);
            let mut tx = UrgentSender::default();
            let mut rx = UrgentReceiver::default();
            let mut delivered: Vec<(u16, u64)> = Vec::new();
            let mut sent_at: Vec<u64> = Vec::new();
            let mut data: Vec<(u64, Vec<(u16, Message)>)> = Vec::new();
            let mut acks: Vec<(u64, (u16, u32))> = Vec::new();
            let total = 600u16;
            for step in 0..3_000u64 {
                let now = step * 33;
                if let Some(r) = repeats {
                    tx.repeats = r;
                }
                // About one event every other packet, a burst now and then.
                if (sent_at.len() as u16) < total && rng.unit() < 0.6 {
                    tx.send(pickup(sent_at.len() as u16), now);
                    sent_at.push(now);
                }
                let out = tx.outgoing(now, 10_000);
                copies += out.len() as u64;
                if !out.is_empty() && rng.unit() >= loss {
                    data.push((now + 25 + (rng.unit() * 10.0) as u64, out));
                }
                let (arrived, rest): (Vec<_>, Vec<_>) =
                    data.drain(..).partition(|(t, _)| *t <= now + 33);
                data = rest;
                for (t, msgs) in arrived {
                    for (id, m) in msgs {
                        if let Some(Message::Pickup { entity }) = rx.receive(id, m) {
                            delivered.push((entity, t));
                        }
                    }
                }
                if rng.unit() >= loss {
                    acks.push((now + 25 + (rng.unit() * 10.0) as u64, rx.ack_fields()));
                }
                let (arrived, rest): (Vec<_>, Vec<_>) =
                    acks.drain(..).partition(|(t, _)| *t <= now);
                acks = rest;
                for (_, (latest, bits)) in arrived {
                    tx.on_ack(latest, bits);
                }
            }
            let mut ids: Vec<u16> = delivered.iter().map(|d| d.0).collect();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(
                ids.len(),
                delivered.len(),
                "seed {seed}: a repeat was delivered"
            );
            assert_eq!(tx.dropped, 0, "seed {seed}: an event was given up on");
            assert_eq!(
                ids.len(),
                total as usize,
                "seed {seed}: an event never arrived"
            );
            latencies.extend(delivered.iter().map(|&(id, at)| at - sent_at[id as usize]));
            assert_eq!(
                tx.unacked(),
                0,
                "seed {seed}: the sender still holds events"
            );
        }
        latencies.sort_unstable();
        (latencies, copies)
    }

    fn quantile(sorted: &[u64], q: f64) -> u64 {
        sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
    }

    #[test]
    fn each_event_is_delivered_once_a_packet_after_a_loss_not_a_round_trip_after() {
        // Each loss costs one packet interval (33 ms): three losses in a row are rarer than
        // 1 in 100 at 20% loss, so the p99 is at most the one-way delay and two intervals.
        let (latencies, _) = simulate(0.2, None);
        let p99 = quantile(&latencies, 0.99);
        assert!(p99 <= 35 + 2 * 33, "p99 {p99} ms");
        // The same with as many copies back to back as 20% loss calls for (4), then a round
        // trip apart.
        let (latencies, _) = simulate(0.2, Some(Repeats::for_link(0.2, 70.0)));
        let p99 = quantile(&latencies, 0.99);
        assert!(p99 <= 35 + 2 * 33, "p99 {p99} ms");
    }

    #[test]
    fn copies_back_to_back_as_the_loss_calls_for_cost_no_p99_and_fewer_copies() {
        assert_eq!(Repeats::for_link(0.0, 80.0).back_to_back, 2);
        assert_eq!(Repeats::for_link(0.05, 80.0).back_to_back, 2);
        assert_eq!(Repeats::for_link(0.1, 80.0).back_to_back, 3);
        assert_eq!(Repeats::for_link(0.2, 80.0).back_to_back, 4);
        assert_eq!(Repeats::for_link(1.0, 80.0).back_to_back, 8);
        assert_eq!(Repeats::for_link(0.05, 80.0).then_after_ms, 100);
        // At 5% loss each way and the round trip above (about 70 ms): every packet until the
        // ack against two back to back and then a round trip apart.
        // Here an ack is turned around within the packet interval, so every packet meant
        // about 2.2 copies an event (in a real room the client's next packet and the server's
        // next tick add up to two intervals: 3 copies or more).
        let (every, every_copies) = simulate(0.05, None);
        let (two, two_copies) = simulate(0.05, Some(Repeats::for_link(0.05, 70.0)));
        assert_eq!(quantile(&two, 0.99), quantile(&every, 0.99));
        assert!(
            two_copies * 100 < every_copies * 95,
            "{two_copies} copies against {every_copies}"
        );
        // Only the rare event whose two copies were both lost waits a round trip.
        let late = two.iter().filter(|&&l| l > 35 + 33).count();
        assert!(late * 200 < two.len(), "{late} of {} late", two.len());
    }

    #[test]
    fn after_the_back_to_back_copies_the_next_waits_a_round_trip() {
        let mut tx = UrgentSender {
            repeats: Repeats {
                back_to_back: 2,
                then_after_ms: 100,
            },
            ..UrgentSender::default()
        };
        tx.send(pickup(1), 0);
        assert_eq!(tx.outgoing(0, 10_000).len(), 1);
        assert_eq!(tx.outgoing(33, 10_000).len(), 1, "the second, back to back");
        assert!(
            tx.outgoing(66, 10_000).is_empty(),
            "its ack may be on the way"
        );
        assert!(!tx.wants_a_packet(120));
        assert!(tx.outgoing(120, 10_000).is_empty());
        assert!(tx.wants_a_packet(133), "a round trip after the last: due");
        assert_eq!(tx.outgoing(133, 10_000).len(), 1);
        assert!(tx.outgoing(166, 10_000).is_empty());
        tx.on_ack(0, 0);
        assert_eq!(tx.unacked(), 0);
    }

    #[test]
    fn events_past_the_window_the_ttl_or_the_limit_are_dropped_and_counted() {
        let mut tx = UrgentSender::default();
        for i in 0..(MAX_URGENT as u16 + 3) {
            tx.send(pickup(i), 0);
        }
        assert_eq!(tx.unacked(), MAX_URGENT);
        assert_eq!(tx.dropped, 3, "the oldest made room");
        // Acked newest, nothing else: everything more than 32 behind it goes too.
        tx.on_ack(MAX_URGENT as u16 + 2, 0);
        assert_eq!(
            tx.unacked(),
            31,
            "ids 3..=33 are within the window, unacked"
        );
        tx.on_ack(MAX_URGENT as u16 + 5, 0);
        assert_eq!(tx.unacked(), 29, "ids 3 and 4 fell behind the window");
        assert_eq!(tx.dropped, 5);
        assert_eq!(
            tx.outgoing(URGENT_TTL_MS + 1, 10_000).len(),
            0,
            "all expired"
        );
        assert_eq!(tx.dropped, 5 + 29);
    }

    #[test]
    fn the_budget_limits_a_packet_and_a_repeat_is_not_delivered_twice() {
        let mut tx = UrgentSender::default();
        for i in 0..10 {
            tx.send(pickup(i), 0);
        }
        let one = pickup(0).encoded_len();
        assert!(tx.wants_a_packet(0));
        assert_eq!(tx.outgoing(0, 4 * one).len(), 4);
        assert!(tx.wants_a_packet(0), "six never went");
        assert_eq!(
            tx.outgoing(0, 10_000).len(),
            10,
            "all again: repeated until acked"
        );
        assert!(
            !tx.wants_a_packet(SECOND_COPY_AFTER_MS - 1),
            "too soon for a second copy of the six that went once"
        );
        assert!(
            tx.wants_a_packet(SECOND_COPY_AFTER_MS),
            "six went once: their second copy is due"
        );
        tx.outgoing(SECOND_COPY_AFTER_MS, 10_000);
        assert!(
            !tx.wants_a_packet(10 * SECOND_COPY_AFTER_MS),
            "every one went twice: further copies wait for a snapshot"
        );
        let mut rx = UrgentReceiver::default();
        assert_eq!(rx.receive(5, pickup(5)), Some(pickup(5)));
        assert_eq!(rx.receive(5, pickup(5)), None);
        assert_eq!(
            rx.receive(3, pickup(3)),
            Some(pickup(3)),
            "late, still once"
        );
        assert_eq!(rx.ack_fields(), (5, 0b10));
        tx.on_ack(5, 0b10);
        let left: Vec<u16> = tx.outgoing(0, 10_000).iter().map(|m| m.0).collect();
        assert_eq!(left, vec![0, 1, 2, 4, 6, 7, 8, 9]);
    }
}
