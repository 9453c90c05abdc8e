//! Gateway membership: which gateways are alive and where viewers reach them. Each gateway
//! heartbeats its entry; an entry lapses a few seconds after its gateway stops (or dies).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::expiring::ExpiringHash;
use crate::rooms::RoomStoreError;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayInfo {
    pub id: String,
    /// Where viewers connect (scheme, host and port).
    pub url: String,
    /// Viewers connected to this gateway, by match (those with at least one), as of its last
    /// heartbeat: summed over the live gateways, the fleet's audience of each match.
    #[serde(default)]
    pub viewers: std::collections::BTreeMap<String, u64>,
}

#[async_trait]
pub trait Membership: Send + Sync + 'static {
    async fn heartbeat(&self, me: &GatewayInfo, ttl: Duration) -> Result<(), RoomStoreError>;
    async fn leave(&self, id: &str) -> Result<(), RoomStoreError>;
    /// Live gateways, ordered by id.
    async fn members(&self) -> Result<Vec<GatewayInfo>, RoomStoreError>;
}

#[derive(Default)]
pub struct MemoryMembership {
    members: Mutex<HashMap<String, (GatewayInfo, Instant)>>,
}

#[async_trait]
impl Membership for MemoryMembership {
    async fn heartbeat(&self, me: &GatewayInfo, ttl: Duration) -> Result<(), RoomStoreError> {
        self.members
            .lock()
            .unwrap()
            .insert(me.id.clone(), (me.clone(), Instant::now() + ttl));
        Ok(())
    }

    async fn leave(&self, id: &str) -> Result<(), RoomStoreError> {
        self.members.lock().unwrap().remove(id);
        Ok(())
    }

    async fn members(&self) -> Result<Vec<GatewayInfo>, RoomStoreError> {
        let now = Instant::now();
        let mut m = self.members.lock().unwrap();
        m.retain(|_, (_, until)| *until > now);
        let mut v: Vec<GatewayInfo> = m.values().map(|(g, _)| g.clone()).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(v)
    }
}

/// Members in one expiring hash, `{prefix}gateways`.
pub struct RedisMembership {
    hash: ExpiringHash,
    key: String,
}

impl RedisMembership {
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisMembership, RoomStoreError> {
        Ok(RedisMembership {
            hash: ExpiringHash::connect(url).await?,
            key: format!("{prefix}gateways"),
        })
    }
}

#[async_trait]
impl Membership for RedisMembership {
    async fn heartbeat(&self, me: &GatewayInfo, ttl: Duration) -> Result<(), RoomStoreError> {
        self.hash
            .put(&[(self.key.clone(), me.id.clone(), me)], ttl)
            .await
    }

    async fn leave(&self, id: &str) -> Result<(), RoomStoreError> {
        self.hash.remove(&self.key, id).await
    }

    async fn members(&self) -> Result<Vec<GatewayInfo>, RoomStoreError> {
        self.hash.live(&self.key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn contract(m: &dyn Membership) {
        let g = |id: &str| GatewayInfo {
            viewers: Default::default(),
            id: id.into(),
            url: format!("http://{id}"),
        };
        m.heartbeat(&g("b"), Duration::from_millis(300))
            .await
            .unwrap();
        m.heartbeat(&g("a"), Duration::from_secs(30)).await.unwrap();
        assert_eq!(m.members().await.unwrap(), vec![g("a"), g("b")]);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(m.members().await.unwrap(), vec![g("a")], "b lapsed");
        m.leave("a").await.unwrap();
        assert!(m.members().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn memory_membership() {
        contract(&MemoryMembership::default()).await;
    }

    #[tokio::test]
    async fn redis_membership() {
        let prefix = format!("gs-adapter-members-{}-", rand::random::<u32>());
        let m = RedisMembership::connect("redis://127.0.0.1:6379", &prefix)
            .await
            .expect("Redis on 127.0.0.1:6379");
        contract(&m).await;
    }
}
