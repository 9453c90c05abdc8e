//! Packet acknowledgement: every packet carries the latest sequence received from the peer
//! and a bitfield of the 32 before it, so one arriving packet acknowledges many sent ones.

/// `a` is more recent than `b`, across the 16-bit wrap.
pub fn seq_newer(a: u16, b: u16) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000
}

/// What we received from the peer, for the ack fields of the packets we send.
#[derive(Debug, Clone, Default)]
pub struct ReceivedPackets {
    latest: Option<u16>,
    bits: u32,
}

impl ReceivedPackets {
    /// Records an arrival; false for a duplicate or a packet too old to acknowledge.
    pub fn record(&mut self, seq: u16) -> bool {
        let Some(latest) = self.latest else {
            self.latest = Some(seq);
            return true;
        };
        if seq_newer(seq, latest) {
            let shift = u32::from(seq.wrapping_sub(latest));
            self.bits = if shift > 32 {
                0
            } else {
                // The old latest becomes bit `shift - 1`.
                (((u64::from(self.bits) << 1) | 1) << (shift - 1)) as u32
            };
            self.latest = Some(seq);
            return true;
        }
        let back = u32::from(latest.wrapping_sub(seq));
        if back == 0 || back > 32 {
            return false;
        }
        let bit = 1u32 << (back - 1);
        let fresh = self.bits & bit == 0;
        self.bits |= bit;
        fresh
    }

    /// `(ack, ack_bits)` for the next outgoing header.
    pub fn ack_fields(&self) -> (u16, u32) {
        (self.latest.unwrap_or(u16::MAX), self.bits)
    }

    pub fn latest(&self) -> Option<u16> {
        self.latest
    }
}

const WINDOW: usize = 64;

/// What we sent, to learn which packets arrived (and what they carried) and the round trip.
#[derive(Debug)]
pub struct SentPackets<T> {
    slots: Vec<Option<Sent<T>>>,
    /// The acks already applied: the newest ack seen and a bit per packet before it (bit k is
    /// `newest - k`). A peer repeats its last 33 acks in every packet; only the bits this lacks
    /// need their slot visited. Each visit is a cache miss (the slot was last touched when the
    /// packet went out), and 33 of them were most of what a packet from a player cost.
    applied: Option<(u16, u64)>,
    /// The newest packet recorded: an ack past it names a packet never sent and is ignored
    /// (else its bits would mark packets not yet sent as applied).
    newest: Option<u16>,
}

#[derive(Debug)]
struct Sent<T> {
    seq: u16,
    at_ms: u64,
    payload: T,
    acked: bool,
}

impl<T: Clone> Default for SentPackets<T> {
    fn default() -> Self {
        SentPackets {
            slots: (0..WINDOW).map(|_| None).collect(),
            applied: None,
            newest: None,
        }
    }
}

impl<T: Clone> SentPackets<T> {
    /// Remembers a sent packet; the one sent `WINDOW` packets ago is forgotten.
    pub fn record(&mut self, seq: u16, at_ms: u64, payload: T) {
        self.newest = Some(seq);
        self.slots[seq as usize % WINDOW] = Some(Sent {
            seq,
            at_ms,
            payload,
            acked: false,
        });
    }

    /// Applies a peer's ack fields; returns each newly acknowledged packet's payload and round
    /// trip in milliseconds.
    pub fn on_ack(&mut self, ack: u16, bits: u32, now_ms: u64) -> Vec<(u16, T, u64)> {
        let mut out = Vec::new();
        self.on_ack_each(ack, bits, now_ms, |seq, payload, rtt| {
            out.push((seq, payload, rtt))
        });
        out
    }

    /// [`SentPackets::on_ack`], handing each newly acknowledged packet to `f` (no allocation).
    pub fn on_ack_each(
        &mut self,
        ack: u16,
        bits: u32,
        now_ms: u64,
        mut f: impl FnMut(u16, T, u64),
    ) {
        if self.newest.is_none_or(|newest| seq_newer(ack, newest)) {
            return;
        }
        // Bit k: packet `ack - k` arrived.
        let acked = 1 | (u64::from(bits) << 1);
        let (todo, applied) = match self.applied {
            None => (acked, (ack, acked)),
            Some((newest, mask)) => {
                let ahead = ack.wrapping_sub(newest) as i16;
                if ahead >= 0 {
                    let known = mask.checked_shl(ahead as u32).unwrap_or(0);
                    (acked & !known, (ack, known | acked))
                } else {
                    // A late packet with older acks: compare in the newest ack's terms.
                    let behind = u32::from(ahead.unsigned_abs());
                    let known = mask.checked_shr(behind).unwrap_or(0);
                    let merged = mask | acked.checked_shl(behind).unwrap_or(0);
                    (acked & !known, (newest, merged))
                }
            }
        };
        self.applied = Some(applied);
        let mut todo = todo;
        while todo != 0 {
            let back = todo.trailing_zeros() as u16;
            todo &= todo - 1;
            let seq = ack.wrapping_sub(back);
            if let Some(s) = &mut self.slots[seq as usize % WINDOW] {
                if s.seq == seq && !s.acked {
                    s.acked = true;
                    f(seq, s.payload.clone(), now_ms.saturating_sub(s.at_ms));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraparound_ordering() {
        assert!(seq_newer(1, 0));
        assert!(seq_newer(0, u16::MAX));
        assert!(!seq_newer(u16::MAX, 0));
        assert!(!seq_newer(5, 5));
    }

    #[test]
    fn acks_cover_the_last_33_packets_and_survive_wrap() {
        let mut got = ReceivedPackets::default();
        let mut sent = SentPackets::<u16>::default();
        let start = u16::MAX - 20;
        let mut acked = Vec::new();
        for i in 0..60u16 {
            let seq = start.wrapping_add(i);
            sent.record(seq, u64::from(i), seq);
            // Every third packet is lost.
            if i % 3 != 1 {
                assert!(got.record(seq));
            }
            let (ack, bits) = got.ack_fields();
            acked.extend(sent.on_ack(ack, bits, 100).into_iter().map(|(s, _, _)| s));
        }
        let mut want: Vec<u16> = (0..60u16)
            .filter(|i| i % 3 != 1)
            .map(|i| start.wrapping_add(i))
            .collect();
        acked.sort();
        want.sort();
        assert_eq!(acked, want);
        // Duplicates and ancient packets are refused.
        assert!(!got.record(start.wrapping_add(59)));
        assert!(!got.record(start));
    }

    proptest::proptest! {
        /// Skipping the acks already applied changes nothing: each packet is reported once,
        /// when its first ack arrives, with the payload and round trip it would have had if
        /// every ack visited all 33 slots, through reordered, duplicated and lost acks and
        /// sequence wrap.
        #[test]
        fn applying_only_new_acks_reports_what_visiting_every_slot_does(
            start in proptest::prelude::any::<u16>(),
            steps in proptest::collection::vec((0u8..4, proptest::prelude::any::<u32>(), -3i32..80), 1..200),
        ) {
            let mut sent = SentPackets::<u32>::default();
            // The reference: every ack visits all of its 33 slots.
            let mut every: Vec<Option<(u16, u64, u32, bool)>> = vec![None; WINDOW];
            let mut next = start;
            let (mut got, mut want) = (Vec::new(), Vec::new());
            for (i, (kind, bits, back)) in steps.into_iter().enumerate() {
                let now = i as u64 * 10;
                if kind < 2 {
                    sent.record(next, now, u32::from(next) * 3);
                    every[next as usize % WINDOW] = Some((next, now, u32::from(next) * 3, false));
                    next = next.wrapping_add(1);
                    continue;
                }
                // An ack from somewhere behind the newest sent (late or reordered ones too), or
                // past it (a packet never sent: ignored).
                let ack = next.wrapping_sub(1).wrapping_sub(back as u16);
                let sent_any = next != start;
                if back < 0 || !sent_any {
                    sent.on_ack_each(ack, bits, now, |seq, payload, rtt| got.push((seq, payload, rtt)));
                    continue;
                }
                sent.on_ack_each(ack, bits, now, |seq, payload, rtt| got.push((seq, payload, rtt)));
                for k in 0..=32u16 {
                    if k > 0 && bits & (1 << (k - 1)) == 0 {
                        continue;
                    }
                    let seq = ack.wrapping_sub(k);
                    if let Some(slot) = &mut every[seq as usize % WINDOW] {
                        if slot.0 == seq && !slot.3 {
                            slot.3 = true;
                            want.push((seq, slot.2, now - slot.1));
                        }
                    }
                }
            }
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn late_packets_fill_their_bit() {
        let mut got = ReceivedPackets::default();
        assert!(got.record(10));
        assert!(got.record(12));
        assert_eq!(got.ack_fields(), (12, 0b10));
        assert!(got.record(11));
        assert_eq!(got.ack_fields(), (12, 0b11));
        assert!(got.record(100));
        assert_eq!(got.ack_fields(), (100, 0));
    }
}
