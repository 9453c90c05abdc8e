//! Viewer stream places shared by every gateway (Redis), so a user or an address gets its
//! concurrent-stream cap across the whole fleet, not once per gateway, and a handshake rate
//! per address that no number of gateways multiplies.
//!
//! Each capped thing (a user, an address) is a sorted set of leases scored by when they lapse.
//! A gateway renews the leases of its live streams every few seconds; a crashed gateway's
//! leases lapse on their own, so a crash never locks a user out for longer than one lease.

use std::time::Duration;

use crate::redis_link::RedisConn;
use ::redis::Script;

use crate::rooms::RoomStoreError;

fn unavailable(e: impl std::fmt::Display) -> RoomStoreError {
    RoomStoreError::Unavailable(e.to_string())
}

/// What a take refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The handshake rate of the address.
    Rate,
    /// The cap of the capped thing at this index.
    Cap(usize),
}

#[derive(Clone)]
pub struct RedisStreamLeases {
    conn: RedisConn,
    prefix: String,
    take: Script,
}

// KEYS[1] the rate counter, KEYS[2..] the capped things.
// ARGV: now_ms, lapse_ms, lease id, rate limit per window, window ms, then one cap per capped key.
const TAKE: &str = r#"
local now = tonumber(ARGV[1])
local lapse = tonumber(ARGV[2])
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[5])) end
if n > tonumber(ARGV[4]) then return -1 end
for i = 2, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  if redis.call('ZCARD', KEYS[i]) >= tonumber(ARGV[4 + i]) then return i - 1 end
end
for i = 2, #KEYS do
  redis.call('ZADD', KEYS[i], now + lapse, ARGV[3])
  redis.call('PEXPIRE', KEYS[i], lapse)
end
return 0
"#;

impl RedisStreamLeases {
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisStreamLeases, RoomStoreError> {
        Ok(RedisStreamLeases {
            conn: RedisConn::connect(url).await.map_err(unavailable)?,
            prefix: prefix.to_string(),
            take: Script::new(TAKE),
        })
    }

    fn key(&self, thing: &str) -> String {
        format!("{}streams:{thing}", self.prefix)
    }

    /// Takes one place under each `(thing, cap)` for `lease`, after counting a handshake of
    /// `address` against `rate` per `window`. All or nothing.
    pub async fn take(
        &self,
        address: &str,
        rate: (u32, Duration),
        capped: &[(&str, usize)],
        lease: &str,
        lapse: Duration,
    ) -> Result<Result<(), Refusal>, RoomStoreError> {
        let window_ms = rate.1.as_millis().max(1) as u64;
        let now = protocol::now_ms();
        let mut call = self.take.prepare_invoke();
        call.key(format!(
            "{}handshakes:{address}:{}",
            self.prefix,
            now / window_ms
        ));
        for (thing, _) in capped {
            call.key(self.key(thing));
        }
        call.arg(now)
            .arg(lapse.as_millis() as u64)
            .arg(lease)
            .arg(rate.0)
            .arg(window_ms * 2);
        for (_, cap) in capped {
            call.arg(*cap);
        }
        let mut conn = self.conn.clone();
        // `invoke_async` reloads a script Redis forgot (a restart, a SCRIPT FLUSH); a flush
        // landing between that reload and the retry fails again, so try a few times.
        let mut attempts = 0;
        let outcome: i64 = loop {
            match call.invoke_async(&mut conn).await {
                Err(e)
                    if attempts < 3
                        && e.kind()
                            == ::redis::ErrorKind::Server(::redis::ServerErrorKind::NoScript) =>
                {
                    attempts += 1;
                }
                other => break other.map_err(unavailable)?,
            }
        };
        Ok(match outcome {
            0 => Ok(()),
            -1 => Err(Refusal::Rate),
            i => Err(Refusal::Cap(i as usize - 1)),
        })
    }

    /// Gives `lease`'s places back.
    pub async fn give_back(&self, things: &[&str], lease: &str) -> Result<(), RoomStoreError> {
        let mut pipe = ::redis::pipe();
        for thing in things {
            pipe.zrem(self.key(thing), lease).ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await.map_err(unavailable)
    }

    /// Pushes the lapse time of live leases forward (only leases still present: one given
    /// back in the meantime stays gone).
    pub async fn renew(
        &self,
        leases: &[(Vec<String>, String)],
        lapse: Duration,
    ) -> Result<(), RoomStoreError> {
        if leases.is_empty() {
            return Ok(());
        }
        let until = protocol::now_ms() + lapse.as_millis() as u64;
        let mut pipe = ::redis::pipe();
        for (things, lease) in leases {
            for thing in things {
                let key = self.key(thing);
                pipe.cmd("ZADD")
                    .arg(&key)
                    .arg("XX")
                    .arg(until)
                    .arg(lease)
                    .ignore();
                pipe.pexpire(&key, lapse.as_millis() as i64).ignore();
            }
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await.map_err(unavailable)
    }
}
