//! What a room has produced for its publisher but could not hand over yet. The room never
//! waits on the publisher: outputs go through a bounded channel without blocking, and what does
//! not fit waits here, in order. Consecutive deltas are merged while they wait (a delta carries
//! absolute values, so the merge is the later state), so only events accumulate; past
//! [`OUTBOX_LIMIT`] the room pauses its simulation rather than drop an event.

use std::collections::VecDeque;

use protocol::{now_ms, MatchEvent};

use crate::publisher::RoomOutput;

/// Outputs that may wait for a slow publisher before the room pauses its simulation.
pub const OUTBOX_LIMIT: usize = 4096;

#[derive(Default)]
pub struct Outbox {
    waiting: VecDeque<RoomOutput>,
    /// Events handed over so far: the publisher numbers them 1, 2, ... in this order, so this
    /// is also the seq of the last one (what a checkpoint says the world reflects).
    events: u64,
}

/// Whether the publisher's channel took an output.
pub enum Handed {
    Taken,
    /// Full for now: the output comes back and waits.
    Full(RoomOutput),
    /// The publisher is gone (the match is ending): nothing will take it.
    Closed,
}

impl Outbox {
    pub fn push(&mut self, out: RoomOutput) {
        if matches!(out, RoomOutput::Event { .. }) {
            self.events += 1;
        }
        if let (RoomOutput::Delta(later), Some(RoomOutput::Delta(earlier))) =
            (&out, self.waiting.back_mut())
        {
            earlier.merge(later.clone());
            return;
        }
        self.waiting.push_back(out);
    }

    /// Queues an event that happened now.
    pub fn event(&mut self, event: MatchEvent) {
        self.push(RoomOutput::Event {
            at_ms: now_ms(),
            event,
        });
    }

    /// Hands over what waits, oldest first, until `hand` says the channel is full or closed.
    pub fn flush(&mut self, mut hand: impl FnMut(RoomOutput) -> Handed) {
        while let Some(out) = self.waiting.pop_front() {
            match hand(out) {
                Handed::Taken => {}
                Handed::Full(out) => {
                    self.waiting.push_front(out);
                    return;
                }
                Handed::Closed => {
                    self.waiting.clear();
                    return;
                }
            }
        }
    }

    /// Everything still waiting, oldest first (the match is over: it may now wait on the
    /// publisher).
    pub fn drain(&mut self) -> impl Iterator<Item = RoomOutput> + '_ {
        self.waiting.drain(..)
    }

    pub fn full(&self) -> bool {
        self.waiting.len() >= OUTBOX_LIMIT
    }

    /// The seq of the last event handed to the outbox.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Outputs waiting.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use protocol::Delta;

    use super::*;

    fn delta(tick: u64) -> RoomOutput {
        RoomOutput::Delta(Delta {
            tick,
            ..Delta::default()
        })
    }

    fn kinds(outbox: &mut Outbox) -> Vec<String> {
        outbox
            .drain()
            .map(|o| match o {
                RoomOutput::Start(_) => "start".to_string(),
                RoomOutput::Delta(d) => format!("delta@{}", d.tick),
                RoomOutput::Event { .. } => "event".to_string(),
            })
            .collect()
    }

    #[test]
    fn consecutive_deltas_merge_while_events_keep_their_place() {
        let mut outbox = Outbox::default();
        outbox.push(delta(1));
        outbox.push(delta(2));
        outbox.event(MatchEvent::MatchStarted {});
        outbox.push(delta(3));
        outbox.push(delta(4));
        assert_eq!(outbox.events(), 1);
        assert_eq!(kinds(&mut outbox), ["delta@2", "event", "delta@4"]);
    }

    #[test]
    fn a_full_channel_keeps_the_order_and_a_closed_one_drops_everything() {
        let mut outbox = Outbox::default();
        for tick in 1..=3 {
            outbox.push(delta(tick));
            outbox.event(MatchEvent::MatchStarted {});
        }
        let mut taken = 0;
        outbox.flush(|out| {
            if taken == 2 {
                return Handed::Full(out);
            }
            taken += 1;
            Handed::Taken
        });
        assert_eq!(outbox.len(), 4);
        assert_eq!(kinds(&mut outbox), ["delta@2", "event", "delta@3", "event"]);

        outbox.push(delta(9));
        outbox.flush(|_| Handed::Closed);
        assert_eq!(outbox.len(), 0);
        // Event seqs are what was handed to the outbox, whatever became of them.
        assert_eq!(outbox.events(), 3);
    }

    #[test]
    fn the_outbox_is_full_at_its_limit_of_events() {
        let mut outbox = Outbox::default();
        for _ in 0..OUTBOX_LIMIT - 1 {
            outbox.event(MatchEvent::MatchStarted {});
        }
        assert!(!outbox.full());
        // Deltas merge into the last waiting one only when it is a delta: one more output.
        outbox.push(delta(1));
        assert!(outbox.full());
    }
}
