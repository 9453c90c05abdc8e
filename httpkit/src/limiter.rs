//! A token-bucket rate limiter per client address, bounded in memory: at `max_clients` tracked
//! addresses the table is cleared (every address starts again with a full bucket), which errs
//! on the side of letting honest clients in after a flood of distinct addresses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct RateLimiter {
    burst: f64,
    per_token: Duration,
    max_clients: usize,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(burst: u32, per_token: Duration, max_clients: usize) -> RateLimiter {
        RateLimiter {
            burst: burst.max(1) as f64,
            per_token,
            max_clients,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn allow(&self, ip: IpAddr) -> bool {
        self.allow_at(ip, Instant::now())
    }

    fn allow_at(&self, ip: IpAddr, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap();
        if buckets.len() >= self.max_clients && !buckets.contains_key(&ip) {
            buckets.clear();
        }
        let (tokens, last) = buckets.entry(ip).or_insert((self.burst, now));
        let refill = now.duration_since(*last).as_secs_f64() / self.per_token.as_secs_f64();
        *tokens = (*tokens + refill).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills() {
        let l = RateLimiter::new(2, Duration::from_secs(1), 10);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t = Instant::now();
        assert!(l.allow_at(ip, t));
        assert!(l.allow_at(ip, t));
        assert!(!l.allow_at(ip, t));
        assert!(l.allow_at(ip, t + Duration::from_millis(1100)));
        // Another address has its own bucket.
        assert!(l.allow_at("10.0.0.2".parse().unwrap(), t));
    }
}
