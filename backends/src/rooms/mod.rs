//! Game-server coordination state: the room registry the matchmaker picks from (entries
//! expire unless their server heartbeats them) and room checkpoints for crash recovery (each
//! held under a lease its owner renews; a checkpoint whose lease lapsed is an orphan another
//! server may claim).

mod memory;
mod redis;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use self::memory::{MemoryCheckpoints, MemoryRegistry};
pub use self::redis::{RedisCheckpoints, RedisRegistry};

#[derive(Debug, thiserror::Error)]
pub enum RoomStoreError {
    #[error("room store unavailable: {0}")]
    Unavailable(String),
}

/// A room open to matchmaking, as its game server reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomInfo {
    #[serde(rename = "match")]
    pub match_id: String,
    pub region: String,
    /// Skill bucket; `None` for showcase rooms not open to matchmaking.
    pub bucket: Option<u32>,
    /// The game server's UDP address.
    pub server: String,
    pub seats: usize,
    pub humans: usize,
}

#[async_trait]
pub trait RoomRegistry: Send + Sync + 'static {
    /// Announces (or refreshes) rooms; each entry lapses `ttl` after its last heartbeat.
    async fn heartbeat(&self, rooms: &[RoomInfo], ttl: Duration) -> Result<(), RoomStoreError>;
    async fn remove(&self, region: &str, match_id: &str) -> Result<(), RoomStoreError>;
    /// Live rooms of a region.
    async fn rooms(&self, region: &str) -> Result<Vec<RoomInfo>, RoomStoreError>;
}

#[async_trait]
pub trait CheckpointStore: Send + Sync + 'static {
    /// Saves a room's checkpoint and renews `owner`'s lease on it. False when another server
    /// holds the lease (this one lost the match and must stop).
    async fn save(
        &self,
        match_id: &str,
        owner: &str,
        body: Bytes,
        lease: Duration,
    ) -> Result<bool, RoomStoreError>;
    /// The match ended: forget its checkpoint.
    async fn delete(&self, match_id: &str) -> Result<(), RoomStoreError>;
    /// Claims every checkpoint whose lease has lapsed (its owner died) for `owner`.
    async fn claim_orphans(
        &self,
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<(String, Bytes)>, RoomStoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) async fn registry_contract(r: &dyn RoomRegistry) {
        let room = |id: &str, region: &str| RoomInfo {
            match_id: id.into(),
            region: region.into(),
            bucket: Some(2),
            server: "127.0.0.1:7777".into(),
            seats: 8,
            humans: 1,
        };
        r.heartbeat(
            &[room("a", "eu"), room("b", "us")],
            Duration::from_millis(300),
        )
        .await
        .unwrap();
        assert_eq!(r.rooms("eu").await.unwrap(), vec![room("a", "eu")]);
        r.remove("eu", "a").await.unwrap();
        assert!(r.rooms("eu").await.unwrap().is_empty());
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            r.rooms("us").await.unwrap().is_empty(),
            "lapsed without heartbeat"
        );
    }

    pub(crate) async fn checkpoint_contract(c: &dyn CheckpointStore, m: &str) {
        let lease = Duration::from_millis(300);
        assert!(c
            .save(m, "a", Bytes::from_static(b"1"), lease)
            .await
            .unwrap());
        assert!(c
            .claim_orphans("b", lease)
            .await
            .unwrap()
            .iter()
            .all(|(id, _)| id != m));
        assert!(
            !c.save(m, "b", Bytes::from_static(b"x"), lease)
                .await
                .unwrap(),
            "held by a"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        let got = c.claim_orphans("b", lease).await.unwrap();
        let mine: Vec<_> = got.into_iter().filter(|(id, _)| id == m).collect();
        assert_eq!(mine, vec![(m.to_string(), Bytes::from_static(b"1"))]);
        assert!(
            !c.save(m, "a", Bytes::from_static(b"2"), lease)
                .await
                .unwrap(),
            "a lost it"
        );
        assert!(c
            .save(m, "b", Bytes::from_static(b"3"), lease)
            .await
            .unwrap());
        c.delete(m).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(c
            .claim_orphans("c", lease)
            .await
            .unwrap()
            .iter()
            .all(|(id, _)| id != m));
    }

    #[tokio::test]
    async fn memory_registry() {
        registry_contract(&MemoryRegistry::default()).await;
    }

    #[tokio::test]
    async fn memory_checkpoints() {
        checkpoint_contract(&MemoryCheckpoints::default(), "m1").await;
    }

    /// The same contracts against the machine's real Redis (unique key prefix per run; the
    /// test cleanup in scripts/services.sh removes `gs-adapter-*` keys left by a crash).
    fn prefix() -> String {
        format!("gs-adapter-rooms-{}-", rand::random::<u32>())
    }

    #[tokio::test]
    async fn redis_registry() {
        let r = RedisRegistry::connect("redis://127.0.0.1:6379", &prefix())
            .await
            .expect("Redis on 127.0.0.1:6379");
        registry_contract(&r).await;
    }

    #[tokio::test]
    async fn redis_checkpoints() {
        let c = RedisCheckpoints::connect("redis://127.0.0.1:6379", &prefix())
            .await
            .expect("Redis on 127.0.0.1:6379");
        checkpoint_contract(&c, "m1").await;
    }
}
