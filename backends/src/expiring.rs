//! A Redis hash whose entries lapse: what the room registry and the gateway membership are
//! made of (each entry heartbeated by its owner, gone a few seconds after the owner stops).

use std::time::Duration;

use crate::redis_link::RedisConn;
use ::redis::AsyncCommands;

use crate::rooms::RoomStoreError;

fn unavailable(e: impl std::fmt::Display) -> RoomStoreError {
    RoomStoreError::Unavailable(e.to_string())
}

/// A Redis hash whose entries lapse: each field holds `{"value":..,"until_ms":..}`; readers
/// skip lapsed entries and remove them as they see them. Shared by the room registry and the
/// gateway membership.
#[derive(Clone)]
pub(crate) struct ExpiringHash {
    conn: RedisConn,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Entry<T> {
    value: T,
    until_ms: u64,
}

impl ExpiringHash {
    pub(crate) async fn connect(url: &str) -> Result<ExpiringHash, RoomStoreError> {
        Ok(ExpiringHash {
            conn: RedisConn::connect(url).await.map_err(unavailable)?,
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
