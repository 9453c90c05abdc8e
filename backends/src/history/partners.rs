//! Partner keys in the history store (SQLite embedded, PostgreSQL in production): the CLI adds
//! and revokes them, gateways and the API read the active ones every few seconds.

use async_trait::async_trait;
use protocol::partner::Partner;
use sqlx::Row;

use super::{HistoryError, SqlHistory};

/// A partner as `partners list` shows it (never the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerEntry {
    pub partner: Partner,
    pub created_ms: u64,
    pub revoked_ms: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum PartnerError {
    #[error("a partner named {0:?} exists already (revoked partners keep their name)")]
    Exists(String),
    #[error(transparent)]
    Store(#[from] HistoryError),
}

#[async_trait]
pub trait PartnerStore: Send + Sync + 'static {
    /// Adds a partner with the hash of its new key.
    async fn add_partner(
        &self,
        partner: &Partner,
        key_hash: &str,
        now_ms: u64,
    ) -> Result<(), PartnerError>;
    /// Revokes a partner's key; false when there is no such active partner.
    async fn revoke_partner(&self, name: &str, now_ms: u64) -> Result<bool, HistoryError>;
    /// Every partner, revoked ones too, by name.
    async fn partners(&self) -> Result<Vec<PartnerEntry>, HistoryError>;
    /// The active partners by key hash.
    async fn active_keys(&self) -> Result<Vec<(String, Partner)>, HistoryError>;
}

fn partner_of(row: &sqlx::any::AnyRow) -> Result<Partner, sqlx::Error> {
    Ok(Partner {
        name: row.try_get("name")?,
        delay_ms: row
            .try_get::<Option<i64>, _>("delay_ms")?
            .map(|v| v.max(0) as u64),
        max_streams: row
            .try_get::<Option<i64>, _>("max_streams")?
            .map(|v| v.clamp(0, u32::MAX as i64) as u32),
        matches: row.try_get("matches")?,
    })
}

#[async_trait]
impl PartnerStore for SqlHistory {
    async fn add_partner(
        &self,
        partner: &Partner,
        key_hash: &str,
        now_ms: u64,
    ) -> Result<(), PartnerError> {
        let exists = sqlx::query(&self.sql("SELECT 1 FROM partners WHERE name = $1"))
            .bind(&partner.name)
            .fetch_optional(&self.pool)
            .await
            .map_err(HistoryError::from)?;
        if exists.is_some() {
            return Err(PartnerError::Exists(partner.name.clone()));
        }
        let inserted = sqlx::query(&self.sql(
            "INSERT INTO partners (name, key_hash, delay_ms, max_streams, matches, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        ))
        .bind(&partner.name)
        .bind(key_hash)
        .bind(partner.delay_ms.map(|v| v as i64))
        .bind(partner.max_streams.map(|v| v as i64))
        .bind(partner.matches.clone())
        .bind(now_ms as i64)
        .execute(&self.pool)
        .await;
        match inserted {
            Ok(_) => Ok(()),
            // Two adds of one name racing: the primary key decides.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(PartnerError::Exists(partner.name.clone()))
            }
            Err(e) => Err(HistoryError::from(e).into()),
        }
    }

    async fn revoke_partner(&self, name: &str, now_ms: u64) -> Result<bool, HistoryError> {
        let done = sqlx::query(
            &self.sql("UPDATE partners SET revoked_ms = $1 WHERE name = $2 AND revoked_ms IS NULL"),
        )
        .bind(now_ms as i64)
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn partners(&self) -> Result<Vec<PartnerEntry>, HistoryError> {
        let rows = sqlx::query(
            "SELECT name, delay_ms, max_streams, matches, created_ms, revoked_ms \
             FROM partners ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(PartnerEntry {
                    partner: partner_of(row)?,
                    created_ms: row.try_get::<i64, _>("created_ms")?.max(0) as u64,
                    revoked_ms: row
                        .try_get::<Option<i64>, _>("revoked_ms")?
                        .map(|v| v.max(0) as u64),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(HistoryError::from)
    }

    async fn active_keys(&self) -> Result<Vec<(String, Partner)>, HistoryError> {
        let rows = sqlx::query(
            "SELECT name, key_hash, delay_ms, max_streams, matches FROM partners \
             WHERE revoked_ms IS NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("key_hash")?, partner_of(row)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(HistoryError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn exercise(store: &SqlHistory) {
        let p = Partner {
            name: format!("odds-{:x}", rand::random::<u32>()),
            delay_ms: Some(0),
            max_streams: Some(40),
            matches: Some("eu-*".into()),
        };
        store.add_partner(&p, "hash-a", 1_000).await.unwrap();
        assert!(matches!(
            store.add_partner(&p, "hash-b", 2_000).await,
            Err(PartnerError::Exists(_))
        ));
        let active = store.active_keys().await.unwrap();
        assert!(
            active.contains(&("hash-a".to_string(), p.clone())),
            "{active:?}"
        );
        let listed = store.partners().await.unwrap();
        let entry = listed.iter().find(|e| e.partner.name == p.name).unwrap();
        assert_eq!((entry.created_ms, entry.revoked_ms), (1_000, None));

        assert!(store.revoke_partner(&p.name, 3_000).await.unwrap());
        assert!(!store.revoke_partner(&p.name, 4_000).await.unwrap());
        assert!(!store
            .active_keys()
            .await
            .unwrap()
            .iter()
            .any(|(_, q)| q.name == p.name));
        let listed = store.partners().await.unwrap();
        let entry = listed.iter().find(|e| e.partner.name == p.name).unwrap();
        assert_eq!(entry.revoked_ms, Some(3_000));
        // A partner with no overrides round-trips its NULLs.
        let plain = Partner {
            name: format!("plain-{:x}", rand::random::<u32>()),
            delay_ms: None,
            max_streams: None,
            matches: None,
        };
        let hash = format!("hash-{}", plain.name);
        store.add_partner(&plain, &hash, 5_000).await.unwrap();
        assert!(store.active_keys().await.unwrap().contains(&(hash, plain)));
    }

    #[tokio::test]
    async fn partners_in_sqlite() {
        let dir = std::env::temp_dir().join(format!("gs-partners-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = SqlHistory::connect(&format!("sqlite://{}/h.db", dir.display()))
            .await
            .unwrap();
        exercise(&store).await;
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Against this machine's PostgreSQL (scripts/services.sh starts it).
    #[tokio::test]
    async fn partners_in_postgres() {
        sqlx::any::install_default_drivers();
        let admin = sqlx::AnyPool::connect("postgres://postgres@127.0.0.1:5432/postgres")
            .await
            .expect("PostgreSQL on 127.0.0.1:5432 (scripts/services.sh starts it)");
        let database = format!("gs_test_partners_{:08x}", rand::random::<u32>());
        sqlx::query(&format!("CREATE DATABASE {database}"))
            .execute(&admin)
            .await
            .unwrap();
        let url = format!("postgres://postgres@127.0.0.1:5432/{database}");
        let store = SqlHistory::connect(&url).await.unwrap();
        exercise(&store).await;
        drop(store);
        let _ = sqlx::query(&format!("DROP DATABASE {database} WITH (FORCE)"))
            .execute(&admin)
            .await;
    }
}
