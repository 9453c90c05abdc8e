//! Match history in SQL: SQLite for the embedded default, PostgreSQL in production, one
//! implementation over sqlx's `Any` driver with the portable migrations in `migrations/`.
//!
//! Every write is idempotent (keyed by the event's identity), so a batch can be retried or
//! re-delivered without counting anything twice.

mod partners;

use async_trait::async_trait;

pub use partners::{PartnerEntry, PartnerError, PartnerStore};
use protocol::PlayerResult;
use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history store unavailable: {0}")]
    Unavailable(#[from] sqlx::Error),
    #[error("history migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// One fact to keep, derived from a match event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryRecord {
    /// Every event is recorded by its identity (see `RebuildSource`).
    EventSeen {
        match_id: String,
        epoch: u64,
        seq: u64,
    },
    MatchStarted {
        match_id: String,
        epoch: u64,
        region: String,
        at_ms: u64,
    },
    PlayerSeen {
        player: String,
        name: String,
    },
    Kill {
        match_id: String,
        epoch: u64,
        seq: u64,
        killer: String,
        victim: String,
        at_ms: u64,
    },
    MatchEnded {
        match_id: String,
        at_ms: u64,
        results: Vec<PlayerResult>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct MatchSummary {
    pub id: String,
    pub region: String,
    pub epoch: u64,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    pub results: Vec<PlayerResult>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PlayerStats {
    pub player: String,
    pub name: String,
    pub kills: u64,
    pub deaths: u64,
    pub matches: u64,
    /// The player's most recent finished matches, newest first (at most 10).
    pub recent: Vec<RecentMatch>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RecentMatch {
    pub id: String,
    pub region: String,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    pub score: u64,
    pub kills: u64,
    pub deaths: u64,
}

#[async_trait]
pub trait History: Send + Sync + 'static {
    /// Writes a batch in one transaction; idempotent.
    async fn write(&self, batch: &[HistoryRecord]) -> Result<(), HistoryError>;
    async fn match_summary(&self, match_id: &str) -> Result<Option<MatchSummary>, HistoryError>;
    async fn player_stats(&self, player: &str) -> Result<Option<PlayerStats>, HistoryError>;
    /// How many matches are recorded (for health and tests).
    async fn match_count(&self) -> Result<u64, HistoryError>;

    /// Whether the store answers now (readiness).
    async fn ready(&self) -> Result<(), HistoryError> {
        self.match_count().await.map(|_| ())
    }

    /// What a leaderboard rebuild needs from history.
    async fn rebuild_source(&self) -> Result<RebuildSource, HistoryError>;
}

/// For each match epoch, the longest prefix of its events (seq 1..=`complete_through`) that
/// history holds with no gap, and the kills in it; plus every player's name.
#[derive(Debug, Clone, Default)]
pub struct RebuildSource {
    pub epochs: Vec<EpochHistory>,
    pub names: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct EpochHistory {
    pub match_id: String,
    pub epoch: u64,
    pub region: String,
    pub complete_through: u64,
    /// `(seq, killer, victim, at_ms)` with `seq <= complete_through`, in seq order.
    pub kills: Vec<(u64, String, String, u64)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Sqlite,
    Postgres,
}

pub struct SqlHistory {
    pool: AnyPool,
    dialect: Dialect,
}

impl SqlHistory {
    /// Connects to `url` (`sqlite://path`, created when missing, or `postgres://...`) and runs
    /// the migrations.
    pub async fn connect(url: &str) -> Result<SqlHistory, HistoryError> {
        sqlx::any::install_default_drivers();
        let (url, dialect) = if url.starts_with("sqlite:") {
            let url = if url.contains('?') {
                url.to_string()
            } else {
                format!("{url}?mode=rwc")
            };
            (url, Dialect::Sqlite)
        } else {
            crate::tls::install_crypto();
            (crate::tls::postgres_url(url), Dialect::Postgres)
        };
        let pool = AnyPoolOptions::new()
            // SQLite has one writer; more connections would only contend for its lock.
            .max_connections(if dialect == Dialect::Sqlite { 1 } else { 8 })
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect(&url)
            .await?;
        sqlx::migrate!("../migrations").run(&pool).await?;
        Ok(SqlHistory { pool, dialect })
    }

    /// The statement in this store's dialect: PostgreSQL's `$n` placeholders become SQLite's
    /// `?n`.
    fn sql(&self, statement: &'static str) -> std::borrow::Cow<'static, str> {
        match self.dialect {
            Dialect::Postgres => statement.into(),
            Dialect::Sqlite => statement.replace('$', "?").into(),
        }
    }
}

impl SqlHistory {
    /// Adds one to a player's counter in the maintained stats.
    async fn bump(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        player: &str,
        counter: &'static str,
    ) -> Result<(), HistoryError> {
        let statement = format!(
            "INSERT INTO player_stats (player_id, {counter}) VALUES ($1, 1) \
             ON CONFLICT (player_id) DO UPDATE SET {counter} = player_stats.{counter} + 1"
        );
        let statement = match self.dialect {
            Dialect::Postgres => statement,
            Dialect::Sqlite => statement.replace('$', "?"),
        };
        sqlx::query(&statement)
            .bind(player)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

fn u(v: i64) -> u64 {
    v.max(0) as u64
}

#[async_trait]
impl History for SqlHistory {
    async fn write(&self, batch: &[HistoryRecord]) -> Result<(), HistoryError> {
        let mut tx = self.pool.begin().await?;
        for record in batch {
            match record {
                HistoryRecord::EventSeen {
                    match_id,
                    epoch,
                    seq,
                } => {
                    sqlx::query(&self.sql(
                        "INSERT INTO event_seqs (match_id, epoch, seq) VALUES ($1, $2, $3) \
                         ON CONFLICT DO NOTHING",
                    ))
                    .bind(match_id)
                    .bind(*epoch as i64)
                    .bind(*seq as i64)
                    .execute(&mut *tx)
                    .await?;
                }
                HistoryRecord::MatchStarted {
                    match_id,
                    epoch,
                    region,
                    at_ms,
                } => {
                    sqlx::query(&self.sql(
                        "INSERT INTO matches (match_id, region, epoch, started_ms) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (match_id) DO UPDATE SET epoch = excluded.epoch",
                    ))
                    .bind(match_id)
                    .bind(region)
                    .bind(*epoch as i64)
                    .bind(*at_ms as i64)
                    .execute(&mut *tx)
                    .await?;
                }
                HistoryRecord::PlayerSeen { player, name } => {
                    sqlx::query(&self.sql(
                        "INSERT INTO players (player_id, name) VALUES ($1, $2) \
                         ON CONFLICT (player_id) DO UPDATE SET name = excluded.name",
                    ))
                    .bind(player)
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
                }
                HistoryRecord::Kill {
                    match_id,
                    epoch,
                    seq,
                    killer,
                    victim,
                    at_ms,
                } => {
                    let inserted = sqlx::query(&self.sql(
                        "INSERT INTO kills (match_id, epoch, seq, killer, victim, at_ms) \
                         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                    ))
                    .bind(match_id)
                    .bind(*epoch as i64)
                    .bind(*seq as i64)
                    .bind(killer)
                    .bind(victim)
                    .bind(*at_ms as i64)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if inserted == 1 {
                        self.bump(&mut tx, killer, "kills").await?;
                        self.bump(&mut tx, victim, "deaths").await?;
                    }
                }
                HistoryRecord::MatchEnded {
                    match_id,
                    at_ms,
                    results,
                } => {
                    sqlx::query(&self.sql("UPDATE matches SET ended_ms = $1 WHERE match_id = $2"))
                        .bind(*at_ms as i64)
                        .bind(match_id)
                        .execute(&mut *tx)
                        .await?;
                    for r in results {
                        let inserted = sqlx::query(&self.sql(
                            "INSERT INTO results (match_id, player_id, name, score, kills, deaths) \
                             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                        ))
                        .bind(match_id)
                        .bind(&r.player)
                        .bind(&r.name)
                        .bind(r.score as i64)
                        .bind(r.kills as i64)
                        .bind(r.deaths as i64)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                        if inserted == 1 {
                            self.bump(&mut tx, &r.player, "matches").await?;
                        }
                    }
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn match_summary(&self, match_id: &str) -> Result<Option<MatchSummary>, HistoryError> {
        let Some(row) = sqlx::query(&self.sql(
            "SELECT match_id, region, epoch, started_ms, ended_ms FROM matches WHERE match_id = $1",
        ))
        .bind(match_id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let results = sqlx::query(&self.sql(
            "SELECT player_id, name, score, kills, deaths FROM results WHERE match_id = $1 \
             ORDER BY score DESC, player_id",
        ))
        .bind(match_id)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r: AnyRow| PlayerResult {
            player: r.get(0),
            name: r.get(1),
            score: u(r.get(2)) as u32,
            kills: u(r.get(3)) as u32,
            deaths: u(r.get(4)) as u32,
        })
        .collect();
        Ok(Some(MatchSummary {
            id: row.get(0),
            region: row.get(1),
            epoch: u(row.get(2)),
            started_ms: u(row.get(3)),
            ended_ms: row.get::<Option<i64>, _>(4).map(u),
            results,
        }))
    }

    async fn player_stats(&self, player: &str) -> Result<Option<PlayerStats>, HistoryError> {
        let row = sqlx::query(&self.sql(
            "SELECT p.player_id, p.name, COALESCE(s.kills, 0), COALESCE(s.deaths, 0), \
               COALESCE(s.matches, 0) \
             FROM players p LEFT JOIN player_stats s ON s.player_id = p.player_id \
             WHERE p.player_id = $1",
        ))
        .bind(player)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let recent = sqlx::query(&self.sql(
            "SELECT r.match_id, m.region, m.started_ms, m.ended_ms, r.score, r.kills, r.deaths \
             FROM results r JOIN matches m ON m.match_id = r.match_id \
             WHERE r.player_id = $1 ORDER BY m.started_ms DESC, r.match_id LIMIT 10",
        ))
        .bind(player)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|m: AnyRow| RecentMatch {
            id: m.get(0),
            region: m.get(1),
            started_ms: u(m.get(2)),
            ended_ms: m.get::<Option<i64>, _>(3).map(u),
            score: u(m.get(4)),
            kills: u(m.get(5)),
            deaths: u(m.get(6)),
        })
        .collect();
        Ok(Some(PlayerStats {
            player: r.get(0),
            name: r.get(1),
            kills: u(r.get(2)),
            deaths: u(r.get(3)),
            matches: u(r.get(4)),
            recent,
        }))
    }

    async fn rebuild_source(&self) -> Result<RebuildSource, HistoryError> {
        use std::collections::BTreeMap;
        let mut seqs: BTreeMap<(String, u64), Vec<u64>> = BTreeMap::new();
        for r in
            sqlx::query("SELECT match_id, epoch, seq FROM event_seqs ORDER BY match_id, epoch, seq")
                .fetch_all(&self.pool)
                .await?
        {
            seqs.entry((r.get(0), u(r.get(1))))
                .or_default()
                .push(u(r.get(2)));
        }
        let regions: BTreeMap<String, String> = sqlx::query("SELECT match_id, region FROM matches")
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let mut kills: BTreeMap<(String, u64), Vec<(u64, String, String, u64)>> = BTreeMap::new();
        for r in sqlx::query(
            "SELECT match_id, epoch, seq, killer, victim, at_ms FROM kills ORDER BY match_id, epoch, seq",
        )
        .fetch_all(&self.pool)
        .await?
        {
            kills
                .entry((r.get(0), u(r.get(1))))
                .or_default()
                .push((u(r.get(2)), r.get(3), r.get(4), u(r.get(5))));
        }
        let epochs = seqs
            .into_iter()
            .map(|((match_id, epoch), seqs)| {
                // Seqs are sorted and distinct: the prefix ends before the first hole.
                let complete_through = seqs
                    .iter()
                    .enumerate()
                    .take_while(|(i, s)| **s == *i as u64 + 1)
                    .count() as u64;
                let kills = kills
                    .remove(&(match_id.clone(), epoch))
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|k| k.0 <= complete_through)
                    .collect();
                EpochHistory {
                    region: regions.get(&match_id).cloned().unwrap_or_default(),
                    match_id,
                    epoch,
                    complete_through,
                    kills,
                }
            })
            .collect();
        let names = sqlx::query("SELECT player_id, name FROM players")
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        Ok(RebuildSource { epochs, names })
    }

    async fn match_count(&self) -> Result<u64, HistoryError> {
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM matches")
            .fetch_one(&self.pool)
            .await?
            .get(0);
        Ok(u(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sqlite_history_is_idempotent_and_survives_reopen() {
        let dir = std::env::temp_dir().join(format!(
            "gs-hist-{}-{}",
            std::process::id(),
            protocol::now_ms()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}", dir.join("h.sqlite").display());
        let batch = vec![
            HistoryRecord::MatchStarted {
                match_id: "m1".into(),
                epoch: 1,
                region: "eu".into(),
                at_ms: 10,
            },
            HistoryRecord::PlayerSeen {
                player: "a".into(),
                name: "Ann".into(),
            },
            HistoryRecord::PlayerSeen {
                player: "b".into(),
                name: "Bob".into(),
            },
            HistoryRecord::Kill {
                match_id: "m1".into(),
                epoch: 1,
                seq: 3,
                killer: "a".into(),
                victim: "b".into(),
                at_ms: 11,
            },
            HistoryRecord::MatchEnded {
                match_id: "m1".into(),
                at_ms: 20,
                results: vec![PlayerResult {
                    player: "a".into(),
                    name: "Ann".into(),
                    score: 1,
                    kills: 1,
                    deaths: 0,
                }],
            },
        ];
        {
            let h = SqlHistory::connect(&url).await.unwrap();
            h.write(&batch).await.unwrap();
            h.write(&batch).await.unwrap(); // re-delivery changes nothing
        }
        let h = SqlHistory::connect(&url).await.unwrap();
        assert_eq!(h.match_count().await.unwrap(), 1);
        let m = h.match_summary("m1").await.unwrap().unwrap();
        assert_eq!((m.ended_ms, m.results.len()), (Some(20), 1));
        let a = h.player_stats("a").await.unwrap().unwrap();
        assert_eq!((a.kills, a.deaths, a.matches), (1, 0, 1));
        assert!(h.player_stats("zz").await.unwrap().is_none());
        std::fs::remove_dir_all(dir).ok();
    }
}
