use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;

use super::{CheckpointStore, RoomInfo, RoomRegistry, RoomStoreError};

/// The embedded registry: one process, so one map.
#[derive(Default)]
pub struct MemoryRegistry {
    rooms: Mutex<HashMap<String, (RoomInfo, Instant)>>,
}

#[async_trait]
impl RoomRegistry for MemoryRegistry {
    async fn heartbeat(&self, rooms: &[RoomInfo], ttl: Duration) -> Result<(), RoomStoreError> {
        let until = Instant::now() + ttl;
        let mut map = self.rooms.lock().unwrap();
        map.retain(|_, (_, t)| *t > Instant::now());
        for r in rooms {
            map.insert(r.match_id.clone(), (r.clone(), until));
        }
        Ok(())
    }

    async fn remove(&self, _region: &str, match_id: &str) -> Result<(), RoomStoreError> {
        self.rooms.lock().unwrap().remove(match_id);
        Ok(())
    }

    async fn rooms(&self, region: &str) -> Result<Vec<RoomInfo>, RoomStoreError> {
        let now = Instant::now();
        let mut v: Vec<RoomInfo> = self
            .rooms
            .lock()
            .unwrap()
            .values()
            .filter(|(r, t)| *t > now && r.region == region)
            .map(|(r, _)| r.clone())
            .collect();
        v.sort_by(|a, b| a.match_id.cmp(&b.match_id));
        Ok(v)
    }
}

/// Embedded checkpoints: they die with the process, so they only serve rooms handed between
/// tasks of one process (and the contract tests); real recovery needs Redis.
#[derive(Default)]
pub struct MemoryCheckpoints {
    map: Mutex<HashMap<String, (String, Instant, Bytes)>>,
}

#[async_trait]
impl CheckpointStore for MemoryCheckpoints {
    async fn save(
        &self,
        match_id: &str,
        owner: &str,
        body: Bytes,
        lease: Duration,
    ) -> Result<bool, RoomStoreError> {
        let mut map = self.map.lock().unwrap();
        let now = Instant::now();
        if let Some((o, until, _)) = map.get(match_id) {
            if o != owner && *until > now {
                return Ok(false);
            }
            if o != owner {
                // Lapsed: whoever claims it first owns it; a save is not a claim.
                return Ok(false);
            }
        }
        map.insert(match_id.to_string(), (owner.to_string(), now + lease, body));
        Ok(true)
    }

    async fn delete(&self, match_id: &str) -> Result<(), RoomStoreError> {
        self.map.lock().unwrap().remove(match_id);
        Ok(())
    }

    async fn claim_orphans(
        &self,
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<(String, Bytes)>, RoomStoreError> {
        let now = Instant::now();
        let mut out = Vec::new();
        for (id, (o, until, body)) in self.map.lock().unwrap().iter_mut() {
            if *until <= now {
                *o = owner.to_string();
                *until = now + lease;
                out.push((id.clone(), body.clone()));
            }
        }
        Ok(out)
    }
}
