//! The Redis connection every Redis user holds (leaderboards, checkpoints, the room registry,
//! gateway membership, stream leases, readiness): one server from a `redis://` or `rediss://`
//! URL, or the current primary that Redis Sentinel names from
//! `redis+sentinel://host:26379,host:26380,host:26381/mymaster`.
//!
//! With Sentinel, a command that fails (the server it went to is gone, or has become a replica:
//! `READONLY`) makes the connection ask the Sentinels for the primary again (at most every
//! 250 ms, one asker at a time) and move every clone of it there; the failed command
//! returns its error, which each user already treats as "Redis unavailable, retry". A failover
//! therefore costs its users the Sentinels' detection time (`down-after-milliseconds`) plus
//! the promotion, then carries on.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// A Redis URL, read: a single server, or Sentinels and the name of the primary they watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    Server(String),
    Sentinel {
        /// `redis://host:port` of each Sentinel.
        sentinels: Vec<String>,
        master: String,
    },
}

impl RedisTarget {
    /// Reads `redis://…`, `rediss://…` or `redis+sentinel://h:p[,h:p…]/master`.
    pub fn parse(url: &str) -> Result<RedisTarget, String> {
        let Some(rest) = url.strip_prefix("redis+sentinel://") else {
            return Ok(RedisTarget::Server(url.to_string()));
        };
        let (hosts, master) = rest
            .split_once('/')
            .ok_or("a Sentinel URL names the primary after the hosts: redis+sentinel://h:26379,h:26380/mymaster")?;
        let master = master.split('?').next().unwrap_or_default();
        if master.is_empty() {
            return Err("a Sentinel URL needs the primary's name after the hosts".into());
        }
        let sentinels: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| format!("redis://{h}"))
            .collect();
        if sentinels.is_empty() {
            return Err("a Sentinel URL needs at least one Sentinel host".into());
        }
        Ok(RedisTarget::Sentinel {
            sentinels,
            master: master.to_string(),
        })
    }

    /// Whether writes should wait for a replica (`WAIT`) before they count as durable: with
    /// Sentinel, a promoted replica has every write that was acknowledged.
    pub fn replicated(&self) -> bool {
        matches!(self, RedisTarget::Sentinel { .. })
    }
}

/// A connection to the Redis primary that follows failovers (see the module docs). Cheap to
/// clone; clones share the connection and move together.
#[derive(Clone)]
pub struct RedisConn {
    current: Arc<RwLock<ConnectionManager>>,
    sentinel: Option<Arc<Failover>>,
}

struct Failover {
    sentinels: Vec<String>,
    master: String,
    /// The primary's address as last found, and when the Sentinels were last asked.
    found: Mutex<(String, Option<Instant>)>,
    asking: tokio::sync::Mutex<()>,
}

/// How often a failing connection may ask the Sentinels again.
const ASK_EVERY: Duration = Duration::from_millis(250);

/// Behind Sentinel a server that stops answering is given up on quickly (the Sentinels say
/// where to go instead) rather than reconnected to for seconds; answers may take up to 2 s
/// (a `WAIT` for a replica takes up to 1 s).
fn failover_manager_config() -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(100))
        .set_max_delay(Duration::from_millis(500))
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(2)))
}

impl RedisConn {
    /// Connects to the server or (Sentinel) the current primary.
    pub async fn connect(url: &str) -> RedisResult<RedisConn> {
        match RedisTarget::parse(url).map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "REDIS_URL", e))
        })? {
            RedisTarget::Server(url) => {
                let manager = crate::tls::redis_client(&url)?
                    .get_connection_manager()
                    .await?;
                Ok(RedisConn {
                    current: Arc::new(RwLock::new(manager)),
                    sentinel: None,
                })
            }
            RedisTarget::Sentinel { sentinels, master } => {
                let (address, client) = find_primary(&sentinels, &master).await?;
                let manager = client
                    .get_connection_manager_with_config(failover_manager_config())
                    .await?;
                tracing::info!(%master, %address, "Redis primary found by Sentinel");
                Ok(RedisConn {
                    current: Arc::new(RwLock::new(manager)),
                    sentinel: Some(Arc::new(Failover {
                        sentinels,
                        master,
                        found: Mutex::new((address, Some(Instant::now()))),
                        asking: tokio::sync::Mutex::new(()),
                    })),
                })
            }
        }
    }

    fn manager(&self) -> ConnectionManager {
        self.current.read().unwrap().clone()
    }

    /// After a failed command, with Sentinel: asks the Sentinels where the primary is and
    /// moves there if it moved.
    async fn after_error(&self) {
        let Some(failover) = &self.sentinel else {
            return;
        };
        // Any error may be the first sign (a refused connection, `READONLY`, `WAIT` refused
        // on a replica, a timeout): asking costs one small request, at most every 250 ms.
        let _one_at_a_time = failover.asking.lock().await;
        {
            let found = failover.found.lock().unwrap();
            if found.1.is_some_and(|at| at.elapsed() < ASK_EVERY) {
                return;
            }
        }
        let asked = find_primary(&failover.sentinels, &failover.master).await;
        let mut found_address = None;
        if let Ok((address, client)) = asked {
            let known = failover.found.lock().unwrap().0.clone();
            if address != known {
                match client
                    .get_connection_manager_with_config(failover_manager_config())
                    .await
                {
                    Ok(manager) => {
                        tracing::warn!(master = %failover.master, from = %known, to = %address, "Redis primary moved; following it");
                        *self.current.write().unwrap() = manager;
                        found_address = Some(address);
                    }
                    Err(e) => {
                        tracing::warn!(%address, error = %e, "cannot reach the new Redis primary yet")
                    }
                }
            }
        }
        let mut found = failover.found.lock().unwrap();
        if let Some(address) = found_address {
            found.0 = address;
        }
        found.1 = Some(Instant::now());
    }
}

/// Asks each Sentinel in turn for the primary of `master`: its address and a client for it.
async fn find_primary(sentinels: &[String], master: &str) -> RedisResult<(String, redis::Client)> {
    let mut last = None;
    for sentinel in sentinels {
        let asked = async {
            let client = redis::Client::open(sentinel.as_str())?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(master)
                .query_async(&mut conn)
                .await?;
            addr.ok_or_else(|| {
                redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "Sentinel does not know the primary",
                    master.to_string(),
                ))
            })
        };
        match tokio::time::timeout(Duration::from_secs(2), asked).await {
            Ok(Ok((host, port))) => {
                let address = format!("{host}:{port}");
                let client = crate::tls::redis_client(&format!("redis://{address}"))?;
                return Ok((address, client));
            }
            Ok(Err(e)) => last = Some(e),
            Err(_) => {
                last = Some(redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("Sentinel {sentinel} did not answer in 2 s"),
                )))
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "no Sentinel given"))
    }))
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut manager = self.manager();
            let result = manager.req_packed_command(cmd).await;
            // A server's error answer (`READONLY`, `WAIT` refused on a replica) is a value here;
            // it fails only when the caller converts it.
            if matches!(result, Err(_) | Ok(Value::ServerError(_))) {
                self.after_error().await;
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let mut manager = self.manager();
            let result = manager.req_packed_commands(pipeline, offset, count).await;
            let refused = match &result {
                Err(_) => true,
                Ok(values) => values.iter().any(|v| matches!(v, Value::ServerError(_))),
            };
            if refused {
                self.after_error().await;
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.manager().get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sentinel_url_names_its_sentinels_and_primary() {
        assert_eq!(
            RedisTarget::parse("redis+sentinel://127.0.0.1:26379, 127.0.0.1:26380/mymaster"),
            Ok(RedisTarget::Sentinel {
                sentinels: vec![
                    "redis://127.0.0.1:26379".into(),
                    "redis://127.0.0.1:26380".into()
                ],
                master: "mymaster".into()
            })
        );
        assert_eq!(
            RedisTarget::parse("rediss://cache:6380"),
            Ok(RedisTarget::Server("rediss://cache:6380".into()))
        );
        assert!(!RedisTarget::parse("redis://h:1").unwrap().replicated());
        for bad in [
            "redis+sentinel://h:26379",
            "redis+sentinel://h:26379/",
            "redis+sentinel:///mymaster",
        ] {
            assert!(RedisTarget::parse(bad).is_err(), "{bad}");
        }
    }
}
