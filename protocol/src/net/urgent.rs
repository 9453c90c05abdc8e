//! The channel for time-critical events (fire, death, pickup): unordered, repeated in every packet
//! until acknowledged.
//!
//! A fire that arrives late is worth little, and one that waits behind a lost earlier message
//! (head-of-line blocking) or for a resend timer is late. So each event gets an id, rides in
//! every packet the sender sends until the receiver's ack covers it, and the receiver hands it
//! on the moment the first copy arrives, in whatever order that is. A lost packet costs one
//! packet interval, not a round trip.
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
}

/// The sending side: events not yet acknowledged.
#[derive(Debug, Default)]
pub struct UrgentSender {
    next_id: u16,
    pending: VecDeque<Pending>,
    /// Events given up on (window passed, too old, or pushed out at the limit).
    pub dropped: u64,
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

    /// The events to put in the next packet: every pending one younger than the TTL, oldest
    /// first, within `budget` bytes. Expired ones are dropped here.
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
        for p in self.pending.iter_mut() {
            if used + p.len > budget {
                break;
            }
            used += p.len;
            if p.copies == 0 {
                p.first_sent_ms = now_ms;
            }
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
    /// when a snapshot leaves within it. Later copies ride the snapshots.
    pub fn wants_a_packet(&self, now_ms: u64) -> bool {
        self.pending.iter().any(|p| {
            p.copies == 0
                || (p.copies == 1 && now_ms.saturating_sub(p.first_sent_ms) >= SECOND_COPY_AFTER_MS)
        })
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

    fn pickup(entity: u16) -> Message {
        Message::Pickup { entity }
    }

    use crate::net::test_rng::Rng;

    #[test]
    fn each_event_is_delivered_once_a_packet_after_a_loss_not_a_round_trip_after() {
        // 30 packets a second each way, 20% loss each way, 25 ms one way plus up to 10 ms.
        let mut latencies: Vec<u64> = Vec::new();
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
                // About one event every other packet, a burst now and then.
                if (sent_at.len() as u16) < total && rng.unit() < 0.6 {
                    tx.send(pickup(sent_at.len() as u16), now);
                    sent_at.push(now);
                }
                let out = tx.outgoing(now, 10_000);
                if !out.is_empty() && rng.unit() >= 0.2 {
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
                if rng.unit() >= 0.2 {
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
        // Each loss costs one packet interval (33 ms): three losses in a row are rarer than
        // 1 in 100 at 20% loss, so the p99 is at most the one-way delay and two intervals.
        latencies.sort_unstable();
        let p99 = latencies[latencies.len() * 99 / 100];
        assert!(p99 <= 35 + 2 * 33, "p99 {p99} ms");
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
