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
        }
    }
}

impl<T: Clone> SentPackets<T> {
    /// Remembers a sent packet; the one sent `WINDOW` packets ago is forgotten.
    pub fn record(&mut self, seq: u16, at_ms: u64, payload: T) {
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
        for back in 0..=32u16 {
            if back > 0 && bits & (1 << (back - 1)) == 0 {
                continue;
            }
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
