//! Abuse limits at the viewer handshake: concurrent connections per user and per address, and
//! a handshake rate per address. Counted per gateway process first (cheap, sheds floods
//! before any network call), then, when the gateways share Redis, across the fleet
//! ([`SharedPlaces`]), so spreading connections over gateways does not multiply the caps.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapExceeded {
    User,
    Address,
}

/// Live connection counts by user and by address; entries go when they reach zero, so the map
/// holds at most one entry per live connection twice over.
pub struct ConnectionCaps {
    per_user: usize,
    per_address: usize,
    counts: Mutex<HashMap<Key, usize>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    User(String),
    Address(IpAddr),
}

/// Holds one connection's place under both caps until dropped.
pub struct CapGuard {
    caps: Arc<ConnectionCaps>,
    user: String,
    address: IpAddr,
}

impl ConnectionCaps {
    pub fn new(per_user: usize, per_address: usize) -> Arc<ConnectionCaps> {
        Arc::new(ConnectionCaps {
            per_user: per_user.max(1),
            per_address: per_address.max(1),
            counts: Mutex::default(),
        })
    }

    pub fn acquire(self: &Arc<Self>, user: &str, address: IpAddr) -> Result<CapGuard, CapExceeded> {
        self.acquire_within(user, address, (self.per_user, self.per_address))
    }

    /// [`ConnectionCaps::acquire`] under caps of the caller's own (a partner key's).
    pub fn acquire_within(
        self: &Arc<Self>,
        user: &str,
        address: IpAddr,
        (per_user, per_address): (usize, usize),
    ) -> Result<CapGuard, CapExceeded> {
        let mut counts = self.counts.lock().unwrap();
        let u = Key::User(user.to_string());
        let a = Key::Address(address);
        if counts.get(&u).copied().unwrap_or(0) >= per_user {
            return Err(CapExceeded::User);
        }
        if counts.get(&a).copied().unwrap_or(0) >= per_address {
            return Err(CapExceeded::Address);
        }
        *counts.entry(u).or_default() += 1;
        *counts.entry(a).or_default() += 1;
        Ok(CapGuard {
            caps: self.clone(),
            user: user.to_string(),
            address,
        })
    }

    fn release(&self, user: &str, address: IpAddr) {
        let mut counts = self.counts.lock().unwrap();
        for key in [Key::User(user.to_string()), Key::Address(address)] {
            if let Some(n) = counts.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&key);
                }
            }
        }
    }

    pub fn tracked(&self) -> usize {
        self.counts.lock().unwrap().len()
    }
}

impl Drop for CapGuard {
    fn drop(&mut self) {
        self.caps.release(&self.user, self.address);
    }
}

/// Fleet-wide places: a lease per stream in Redis, renewed while the stream lives.
pub struct SharedPlaces {
    leases: backends::RedisStreamLeases,
    live: Mutex<HashMap<String, Vec<String>>>,
    lapse: std::time::Duration,
}

/// Why the fleet refused a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedRefusal {
    Rate,
    Cap(CapExceeded),
}

/// Holds one stream's fleet-wide places until dropped.
pub struct SharedPlace {
    places: Arc<SharedPlaces>,
    lease: String,
}

impl SharedPlaces {
    /// Starts renewing live leases every third of `lapse` until `shutdown`.
    pub fn start(
        leases: backends::RedisStreamLeases,
        lapse: std::time::Duration,
        shutdown: httpkit::Shutdown,
    ) -> Arc<SharedPlaces> {
        let places = Arc::new(SharedPlaces {
            leases,
            live: Mutex::default(),
            lapse,
        });
        let renewing = places.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(lapse / 3);
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = shutdown.cancelled() => return,
                }
                let live: Vec<(Vec<String>, String)> = renewing
                    .live
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(lease, things)| (things.clone(), lease.clone()))
                    .collect();
                for chunk in live.chunks(5_000) {
                    if let Err(e) = renewing.leases.renew(chunk, lapse).await {
                        tracing::warn!(error = %e, "renewing stream leases failed");
                    }
                }
            }
        });
        places
    }

    /// Takes the stream's places across the fleet. When Redis cannot answer, the stream is let
    /// in on the local caps alone (an outage of the shared store must not turn viewers away).
    pub async fn take(
        self: &Arc<Self>,
        user: &str,
        address: IpAddr,
        caps: (usize, usize),
        rate: u32,
    ) -> Result<Option<SharedPlace>, SharedRefusal> {
        let lease = format!("{:016x}", rand::random::<u64>());
        let things = vec![format!("user:{user}"), format!("addr:{address}")];
        let capped = [(things[0].as_str(), caps.0), (things[1].as_str(), caps.1)];
        let window = std::time::Duration::from_secs(1);
        match self
            .leases
            .take(
                &address.to_string(),
                (rate, window),
                &capped,
                &lease,
                self.lapse,
            )
            .await
        {
            Ok(Ok(())) => {
                self.live.lock().unwrap().insert(lease.clone(), things);
                Ok(Some(SharedPlace {
                    places: self.clone(),
                    lease,
                }))
            }
            Ok(Err(backends::Refusal::Rate)) => Err(SharedRefusal::Rate),
            Ok(Err(backends::Refusal::Cap(0))) => Err(SharedRefusal::Cap(CapExceeded::User)),
            Ok(Err(backends::Refusal::Cap(_))) => Err(SharedRefusal::Cap(CapExceeded::Address)),
            Err(e) => {
                tracing::warn!(error = %e, "shared stream caps unavailable; local caps only");
                crate::metrics::SHARED_CAPS_UNAVAILABLE.inc();
                Ok(None)
            }
        }
    }
}

impl Drop for SharedPlace {
    fn drop(&mut self) {
        let things = self.places.live.lock().unwrap().remove(&self.lease);
        let (places, lease) = (self.places.clone(), std::mem::take(&mut self.lease));
        if let (Some(things), Ok(runtime)) = (things, tokio::runtime::Handle::try_current()) {
            runtime.spawn(async move {
                let things: Vec<&str> = things.iter().map(String::as_str).collect();
                if let Err(e) = places.leases.give_back(&things, &lease).await {
                    // The lease lapses by itself within one lapse period.
                    tracing::debug!(error = %e, "giving back a stream lease failed");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_per_user_and_per_address_and_free_on_drop() {
        let caps = ConnectionCaps::new(2, 3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let g1 = caps.acquire("ann", a).unwrap();
        let _g2 = caps.acquire("ann", b).unwrap();
        assert_eq!(caps.acquire("ann", a).err(), Some(CapExceeded::User));
        let _g3 = caps.acquire("bob", a).unwrap();
        let _g4 = caps.acquire("cid", a).unwrap();
        assert_eq!(caps.acquire("dan", a).err(), Some(CapExceeded::Address));
        drop(g1);
        assert!(caps.acquire("ann", a).is_ok(), "a freed place is reusable");
    }

    #[test]
    fn the_table_forgets_finished_connections() {
        let caps = ConnectionCaps::new(5, 5);
        let guards: Vec<_> = (0..4)
            .map(|i| {
                caps.acquire(&format!("u{i}"), "10.0.0.9".parse().unwrap())
                    .unwrap()
            })
            .collect();
        assert_eq!(caps.tracked(), 5);
        drop(guards);
        assert_eq!(caps.tracked(), 0);
    }
}
