//! A Redis connection kept only to answer readiness probes, for roles whose Redis use sits
//! behind several stores (registry, checkpoints, membership, leases): one PING says whether
//! the server they all share answers.

use crate::redis_link::RedisConn;

#[derive(Clone)]
pub struct RedisProbe {
    conn: RedisConn,
}

impl RedisProbe {
    pub async fn connect(url: &str) -> Result<RedisProbe, String> {
        let conn = RedisConn::connect(url).await.map_err(|e| e.to_string())?;
        Ok(RedisProbe { conn })
    }

    /// PING; the error says why Redis did not answer.
    pub async fn ping(&self) -> Result<(), String> {
        let mut conn = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs the real Redis on 127.0.0.1:6379 (this machine runs it; CI starts it).
    #[tokio::test]
    async fn a_running_redis_answers() {
        let probe = RedisProbe::connect("redis://127.0.0.1:6379")
            .await
            .expect("Redis on 127.0.0.1:6379");
        probe.ping().await.unwrap();
    }
}
