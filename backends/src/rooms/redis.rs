use std::time::Duration;

use crate::redis_link::RedisConn;
use ::redis::{AsyncCommands, Script};
use async_trait::async_trait;
use bytes::Bytes;

use super::{CheckpointStore, RoomInfo, RoomRegistry, RoomStoreError};
use crate::expiring::ExpiringHash;

fn unavailable(e: impl std::fmt::Display) -> RoomStoreError {
    RoomStoreError::Unavailable(e.to_string())
}

async fn connect(url: &str) -> Result<RedisConn, RoomStoreError> {
    RedisConn::connect(url).await.map_err(unavailable)
}

/// Rooms per region in one expiring hash, `{prefix}rooms:<region>`.
#[derive(Clone)]
pub struct RedisRegistry {
    hash: ExpiringHash,
    prefix: String,
}

impl RedisRegistry {
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisRegistry, RoomStoreError> {
        Ok(RedisRegistry {
            hash: ExpiringHash::connect(url).await?,
            prefix: prefix.to_string(),
        })
    }

    fn key(&self, region: &str) -> String {
        format!("{}rooms:{region}", self.prefix)
    }
}

#[async_trait]
impl RoomRegistry for RedisRegistry {
    async fn heartbeat(&self, rooms: &[RoomInfo], ttl: Duration) -> Result<(), RoomStoreError> {
        let entries: Vec<(String, String, &RoomInfo)> = rooms
            .iter()
            .map(|r| (self.key(&r.region), r.match_id.clone(), r))
            .collect();
        self.hash.put(&entries, ttl).await
    }

    async fn remove(&self, region: &str, match_id: &str) -> Result<(), RoomStoreError> {
        self.hash.remove(&self.key(region), match_id).await
    }

    async fn rooms(&self, region: &str) -> Result<Vec<RoomInfo>, RoomStoreError> {
        self.hash.live(&self.key(region)).await
    }
}

/// Checkpoints at `{prefix}ckpt:<match>` (kept 10 minutes), leases at `{prefix}lease:<match>`
/// (the owner's name, expiring), and the set of matches with a checkpoint, `{prefix}ckpts`.
#[derive(Clone)]
pub struct RedisCheckpoints {
    conn: RedisConn,
    prefix: String,
    save_script: Script,
}

/// Saves only while the caller holds (or can take an unheld) lease, atomically.
const SAVE: &str = r#"
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', 600)
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
redis.call('SADD', KEYS[3], ARGV[4])
return 1
"#;

impl RedisCheckpoints {
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisCheckpoints, RoomStoreError> {
        Ok(RedisCheckpoints {
            conn: connect(url).await?,
            prefix: prefix.to_string(),
            save_script: Script::new(SAVE),
        })
    }

    fn ckpt(&self, m: &str) -> String {
        format!("{}ckpt:{m}", self.prefix)
    }
    fn lease(&self, m: &str) -> String {
        format!("{}lease:{m}", self.prefix)
    }
    fn set(&self) -> String {
        format!("{}ckpts", self.prefix)
    }
}

#[async_trait]
impl CheckpointStore for RedisCheckpoints {
    async fn save(
        &self,
        match_id: &str,
        owner: &str,
        body: Bytes,
        lease: Duration,
    ) -> Result<bool, RoomStoreError> {
        let mut conn = self.conn.clone();
        let ok: i64 = self
            .save_script
            .key(self.ckpt(match_id))
            .key(self.lease(match_id))
            .key(self.set())
            .arg(owner)
            .arg(body.as_ref())
            .arg(lease.as_millis() as u64)
            .arg(match_id)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(ok == 1)
    }

    async fn delete(&self, match_id: &str) -> Result<(), RoomStoreError> {
        let mut conn = self.conn.clone();
        ::redis::pipe()
            .del(self.ckpt(match_id))
            .ignore()
            .del(self.lease(match_id))
            .ignore()
            .srem(self.set(), match_id)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn claim_orphans(
        &self,
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<(String, Bytes)>, RoomStoreError> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = conn.smembers(self.set()).await.map_err(unavailable)?;
        let mut out = Vec::new();
        for id in ids {
            let claimed: Option<String> = ::redis::cmd("SET")
                .arg(self.lease(&id))
                .arg(owner)
                .arg("NX")
                .arg("PX")
                .arg(lease.as_millis() as u64)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            if claimed.is_none() {
                continue;
            }
            let body: Option<Vec<u8>> = conn.get(self.ckpt(&id)).await.map_err(unavailable)?;
            match body {
                Some(b) => out.push((id, Bytes::from(b))),
                None => {
                    // Expired checkpoint: nothing to take over.
                    let _: Result<(), _> = conn.srem(self.set(), &id).await;
                    let _: Result<(), _> = conn.del(self.lease(&id)).await;
                }
            }
        }
        Ok(out)
    }
}
