//! An in-process link conditioner: delays, jitters and drops datagrams, each direction
//! independently, from a seeded generator (reproducible runs).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkConditioner {
    /// One-way delay.
    pub delay: Duration,
    /// Extra one-way delay, uniform in [0, jitter).
    pub jitter: Duration,
    /// Probability a datagram is lost.
    pub loss: f64,
}

impl LinkConditioner {
    pub fn perfect() -> LinkConditioner {
        LinkConditioner {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
        }
    }

    /// A round trip of `rtt_ms` (half each way), `jitter_ms` more each way at most, `loss`.
    pub fn new(rtt_ms: u64, jitter_ms: u64, loss: f64) -> LinkConditioner {
        LinkConditioner {
            delay: Duration::from_millis(rtt_ms / 2),
            jitter: Duration::from_millis(jitter_ms),
            loss,
        }
    }

    pub fn is_perfect(&self) -> bool {
        self.delay.is_zero() && self.jitter.is_zero() && self.loss == 0.0
    }
}

/// Datagrams in flight through a conditioner, released when due.
pub struct Lane {
    link: LinkConditioner,
    rng: u64,
    queue: BinaryHeap<Reverse<(Instant, u64, Vec<u8>)>>,
    serial: u64,
    pub dropped: u64,
}

impl Lane {
    pub fn new(link: LinkConditioner, seed: u64) -> Lane {
        Lane {
            link,
            rng: seed,
            queue: BinaryHeap::new(),
            serial: 0,
            dropped: 0,
        }
    }

    fn unit(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn push(&mut self, bytes: Vec<u8>, now: Instant) {
        if self.unit() < self.link.loss {
            self.dropped += 1;
            return;
        }
        let jitter = self.link.jitter.mul_f64(self.unit());
        self.serial += 1;
        self.queue.push(Reverse((
            now + self.link.delay + jitter,
            self.serial,
            bytes,
        )));
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse((t, _, _))| *t)
    }

    pub fn pop_due(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.next_due()? <= now {
            self.queue.pop().map(|Reverse((_, _, b))| b)
        } else {
            None
        }
    }
}
