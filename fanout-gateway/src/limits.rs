//! Abuse limits at the viewer handshake: concurrent connections per user and per address, and
//! a handshake rate per address. Counted per gateway process (a user spreading connections
//! over several gateways gets the cap on each).

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
        let mut counts = self.counts.lock().unwrap();
        let u = Key::User(user.to_string());
        let a = Key::Address(address);
        if counts.get(&u).copied().unwrap_or(0) >= self.per_user {
            return Err(CapExceeded::User);
        }
        if counts.get(&a).copied().unwrap_or(0) >= self.per_address {
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
