//! The active partner keys as a running role knows them: refreshed from the store every few
//! seconds (an added or revoked key takes effect within one refresh), looked up by key hash on
//! every handshake without touching the store.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use protocol::partner::{self, Partner};

/// How often roles re-read the active keys (a revoked key stops working within this).
pub const PARTNER_REFRESH: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Clone, Default)]
pub struct PartnerDirectory {
    by_hash: Arc<RwLock<HashMap<String, Arc<Partner>>>>,
    /// Whether a store backs this directory at all (without one, keys are refused as such).
    enabled: Arc<std::sync::atomic::AtomicBool>,
}

impl PartnerDirectory {
    /// Replaces the known keys with `active` (key hash, partner).
    pub fn replace(&self, active: Vec<(String, Partner)>) {
        let map = active.into_iter().map(|(h, p)| (h, Arc::new(p))).collect();
        *self.by_hash.write().unwrap() = map;
        self.enabled
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The partner a key belongs to, if it is active.
    pub fn lookup(&self, key: &str) -> Option<Arc<Partner>> {
        self.by_hash
            .read()
            .unwrap()
            .get(&partner::key_hash(key))
            .cloned()
    }
}
