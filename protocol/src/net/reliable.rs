//! The reliable, ordered channel for what needs order and exactly-once: the roster, chat, the
//! end of the match (time-critical events ride [`super::urgent`]).
//!
//! Messages get consecutive 16-bit ids. The sender keeps each one until the peer's `ack_next`
//! (the next id it expects) passes it, and repeats it in outgoing packets whenever it has gone
//! unacknowledged for a resend interval (about one round trip). The receiver buffers what
//! arrives early and delivers strictly in id order, each id once. The receiver's ack rides in
//! its packets only for the next [`ACK_REPEATS`] after a message arrived: the sender resends
//! until acknowledged, and each copy that arrives starts the repeats again, so the ack is never
//! missing when it matters and costs nothing when nothing is in flight (nearly always).
//!
//! Bounds: at most `MAX_UNACKED` messages in flight; a sender at that limit refuses new ones
//! (the session treats it as a dead link and disconnects), which also keeps every id the
//! receiver can see within its `MAX_UNACKED` window.

use std::collections::{HashMap, VecDeque};

use super::acks::seq_newer;
use super::{Message, MAX_MESSAGES};

pub const MAX_UNACKED: usize = 256;
/// Packets that carry the ack after a message arrives: at 5% loss all of them are lost once in
/// 10^20, and a resend would start them again anyway.
pub const ACK_REPEATS: u8 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("reliable channel full: the peer has not acknowledged {MAX_UNACKED} messages")]
pub struct ChannelFull;

#[derive(Debug)]
struct Pending {
    id: u16,
    msg: Message,
    len: usize,
    last_sent_ms: Option<u64>,
}

#[derive(Debug, Default)]
pub struct ReliableSender {
    next_id: u16,
    queue: VecDeque<Pending>,
}

impl ReliableSender {
    pub fn send(&mut self, msg: Message) -> Result<(), ChannelFull> {
        if self.queue.len() >= MAX_UNACKED {
            return Err(ChannelFull);
        }
        let len = msg.encoded_len();
        self.queue.push_back(Pending {
            id: self.next_id,
            msg,
            len,
            last_sent_ms: None,
        });
        self.next_id = self.next_id.wrapping_add(1);
        Ok(())
    }

    /// The peer has everything before `ack_next`.
    pub fn on_ack(&mut self, ack_next: u16) {
        while let Some(p) = self.queue.front() {
            if seq_newer(ack_next, p.id) {
                self.queue.pop_front();
            } else {
                break;
            }
        }
    }

    /// Messages to put in the next packet: those never sent, and those unacknowledged for
    /// `resend_after_ms`, oldest first, within `budget` bytes.
    pub fn outgoing(
        &mut self,
        now_ms: u64,
        resend_after_ms: u64,
        budget: usize,
    ) -> Vec<(u16, Message)> {
        let mut out = Vec::new();
        let mut used = 0;
        for p in self.queue.iter_mut() {
            let due = p.last_sent_ms.is_none_or(|t| now_ms >= t + resend_after_ms);
            if !due {
                continue;
            }
            if used + p.len > budget || out.len() >= MAX_MESSAGES {
                break;
            }
            used += p.len;
            p.last_sent_ms = Some(now_ms);
            out.push((p.id, p.msg.clone()));
        }
        out
    }

    /// Messages sent or queued but not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.queue.len()
    }
}

#[derive(Debug, Default)]
pub struct ReliableReceiver {
    next: u16,
    early: HashMap<u16, Message>,
    /// Outgoing packets that should still carry the ack.
    ack_repeats: u8,
}

impl ReliableReceiver {
    /// Takes a received message; returns the messages now deliverable, in order.
    pub fn receive(&mut self, id: u16, msg: Message) -> Vec<Message> {
        self.ack_repeats = ACK_REPEATS;
        let ahead = id.wrapping_sub(self.next) as usize;
        if ahead >= MAX_UNACKED {
            // Already delivered (a resend we had acknowledged), or outside any honest window.
            return Vec::new();
        }
        self.early.entry(id).or_insert(msg);
        let mut ready = Vec::new();
        while let Some(m) = self.early.remove(&self.next) {
            ready.push(m);
            self.next = self.next.wrapping_add(1);
        }
        ready
    }

    /// The id we expect next: everything before it arrived.
    pub fn ack_next(&self) -> u16 {
        self.next
    }

    /// The ack for the next outgoing packet, if it should carry one (called once per packet).
    pub fn ack_to_send(&mut self) -> Option<u16> {
        if self.ack_repeats == 0 {
            return None;
        }
        self.ack_repeats -= 1;
        Some(self.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::net::test_rng::Rng;

    #[test]
    fn every_message_arrives_once_in_order_under_20_percent_loss() {
        for seed in 0..20 {
            let mut rng = Rng(seed);
            let mut tx = ReliableSender::default();
            let mut rx = ReliableReceiver::default();
            let total = 2000u32;
            let mut queued = 0u32;
            let mut delivered = Vec::new();
            // In flight: (arrival time, messages) one way, (arrival time, ack_next) the other.
            let mut data: Vec<(u64, Vec<(u16, Message)>)> = Vec::new();
            let mut acks: Vec<(u64, u16)> = Vec::new();
            for now in (0..200_000u64).step_by(33) {
                while queued < total && tx.unacked() < MAX_UNACKED && rng.unit() < 0.7 {
                    tx.send(Message::Chat {
                        entity: 1,
                        text: queued.to_string(),
                    })
                    .unwrap();
                    queued += 1;
                }
                let out = tx.outgoing(now, 100, 1000);
                if !out.is_empty() && rng.unit() >= 0.2 {
                    data.push((now + 20 + (rng.unit() * 40.0) as u64, out));
                }
                // Deliver what has arrived (jitter reorders packets).
                let (arrived, rest): (Vec<_>, Vec<_>) =
                    data.drain(..).partition(|(t, _)| *t <= now);
                data = rest;
                for (_, msgs) in arrived {
                    for (id, m) in msgs {
                        delivered.extend(rx.receive(id, m));
                    }
                }
                // Acks only as the receiver's packets carry them.
                if let Some(ack) = rx.ack_to_send() {
                    if rng.unit() >= 0.2 {
                        acks.push((now + 20 + (rng.unit() * 40.0) as u64, ack));
                    }
                }
                let (arrived, rest): (Vec<_>, Vec<_>) =
                    acks.drain(..).partition(|(t, _)| *t <= now);
                acks = rest;
                for (_, a) in arrived {
                    tx.on_ack(a);
                }
                if delivered.len() == total as usize && tx.unacked() == 0 {
                    break;
                }
            }
            let texts: Vec<String> = delivered
                .into_iter()
                .map(|m| match m {
                    Message::Chat { text, .. } => text,
                    other => panic!("{other:?}"),
                })
                .collect();
            let want: Vec<String> = (0..total).map(|i| i.to_string()).collect();
            assert_eq!(texts, want, "seed {seed}");
            assert_eq!(tx.unacked(), 0, "seed {seed}: sender still holds messages");
        }
    }

    #[test]
    fn the_ack_rides_a_few_packets_after_each_arrival_and_then_stops() {
        let mut rx = ReliableReceiver::default();
        assert_eq!(rx.ack_to_send(), None, "nothing to acknowledge yet");
        rx.receive(0, Message::MatchEnded);
        for _ in 0..ACK_REPEATS {
            assert_eq!(rx.ack_to_send(), Some(1));
        }
        assert_eq!(rx.ack_to_send(), None);
        // A resend of what was delivered (its ack was lost) starts the repeats again.
        rx.receive(0, Message::MatchEnded);
        assert_eq!(rx.ack_to_send(), Some(1));
    }

    #[test]
    fn a_full_channel_refuses_instead_of_growing() {
        let mut tx = ReliableSender::default();
        for _ in 0..MAX_UNACKED {
            tx.send(Message::MatchEnded).unwrap();
        }
        assert_eq!(tx.send(Message::MatchEnded), Err(ChannelFull));
        tx.on_ack(10);
        assert_eq!(tx.unacked(), MAX_UNACKED - 10);
        assert!(tx.send(Message::MatchEnded).is_ok());
    }

    #[test]
    fn resends_wait_for_the_interval_and_respect_the_budget() {
        let mut tx = ReliableSender::default();
        for i in 0..10 {
            tx.send(Message::Pickup { entity: i }).unwrap();
        }
        let first = tx.outgoing(0, 100, 5 * Message::Pickup { entity: 0 }.encoded_len());
        assert_eq!(
            first.iter().map(|m| m.0).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4]
        );
        assert_eq!(tx.outgoing(50, 100, 10_000).len(), 5, "the rest go next");
        assert!(tx.outgoing(60, 100, 10_000).is_empty(), "nothing due yet");
        tx.on_ack(3);
        let again = tx.outgoing(100, 100, 10_000);
        assert_eq!(again.iter().map(|m| m.0).collect::<Vec<_>>(), vec![3, 4]);
    }
}
