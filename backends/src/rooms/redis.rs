use std::time::Duration;

use ::redis::aio::ConnectionManager;
use ::redis::{AsyncCommands, Script};
use async_trait::async_trait;
use bytes::Bytes;

use super::{CheckpointStore, RoomInfo, RoomRegistry, RoomStoreError};

fn unavailable(e: impl std::fmt::Display) -> RoomStoreError {
    RoomStoreError::Unavailable(e.to_string())
}

async fn connect(url: &str) -> Result<ConnectionManager, RoomStoreError> {
    let client = ::redis::Client::open(url).map_err(unavailable)?;
    client.get_connection_manager().await.map_err(unavailable)
}

/// A Redis hash whose entries lapse: each field holds `{"value":..,"until_ms":..}`; readers
/// skip lapsed entries and remove them as they see them. Shared by the room registry and the
/// gateway membership.
#[derive(Clone)]
pub(crate) struct ExpiringHash {
    conn: ConnectionManager,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Entry<T> {
    value: T,
    until_ms: u64,
}

impl ExpiringHash {
    pub(crate) async fn connect(url: &str) -> Result<ExpiringHash, RoomStoreError> {
        Ok(ExpiringHash {
            conn: connect(url).await?,
        })
    }

    pub(crate) async fn put<T: serde::Serialize>(
        &self,
        entries: &[(String, String, T)],
        ttl: Duration,
    ) -> Result<(), RoomStoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let until_ms = protocol::now_ms() + ttl.as_millis() as u64;
        let mut pipe = ::redis::pipe();
        for (key, field, value) in entries {
            let json = serde_json::to_string(&Entry { value, until_ms }).expect("entry serializes");
            pipe.hset(key, field, json).ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await.map_err(unavailable)
    }

    pub(crate) async fn remove(&self, key: &str, field: &str) -> Result<(), RoomStoreError> {
        let mut conn = self.conn.clone();
        conn.hdel::<_, _, ()>(key, field).await.map_err(unavailable)
    }

    /// Live entries, ordered by field.
    pub(crate) async fn live<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Vec<T>, RoomStoreError> {
        let mut conn = self.conn.clone();
        let mut all: Vec<(String, String)> = conn.hgetall(key).await.map_err(unavailable)?;
        all.sort();
        let now = protocol::now_ms();
        let mut live = Vec::new();
        let mut lapsed = Vec::new();
        for (field, json) in all {
            match serde_json::from_str::<Entry<T>>(&json) {
                Ok(e) if e.until_ms > now => live.push(e.value),
                _ => lapsed.push(field),
            }
        }
        if !lapsed.is_empty() {
            let _: Result<(), _> = conn.hdel(key, lapsed).await;
        }
        Ok(live)
    }
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
    conn: ConnectionManager,
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
