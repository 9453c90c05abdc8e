//! Leaderboards in Redis sorted sets (client: the `redis` crate, see docs/architecture.md for
//! why). Keys, under a configurable prefix:
//! `lb:<board>` (ZSET, member = player, score = rank key), `lb:names` (HASH player -> name),
//! `lb:applied` (HASH `<match>:<epoch>` -> last applied event seq), `lb:updated_at`.
//!
//! A run of consecutive events of a match is applied by one Lua script, so the exactly-once
//! check, the `last applied` update and the score changes are one atomic step; a batch is one
//! pipelined round trip.

use std::collections::HashMap;

use crate::redis_link::RedisConn;
use async_trait::async_trait;
use redis::{AsyncCommands, Script};

use super::{
    achievement_time, points_of, ApplyOutcome, BoardError, BoardPage, Entry, Leaderboards,
    ScoredEvent,
};

/// Applies a run of consecutive events of one match epoch (seqs `first..=last`) in one step:
/// the exactly-once check on the whole range (`last` applied so far must be `first - 1`), then
/// each player's points on each board summed over the run and stamped with the time of the
/// player's last gain in it. A single event is a run of one.
const APPLY_RUN: &str = r#"
-- KEYS: applied hash, names hash, updated_at, then one board key per (board, player) change
-- ARGV: field, first seq, last seq, now_ms, name count, (player, name)*,
--       (player, points, achievement time, keep seconds or 0)* one per board key
local last = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local first = tonumber(ARGV[2])
local upto = tonumber(ARGV[3])
if upto <= last then return 0 end
if first <= last then return -2 end
if first ~= last + 1 then return -1 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
local span = 2147483648
local i = 6
for _ = 1, tonumber(ARGV[5]) do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  i = i + 2
end
for k = 4, #KEYS do
  local member = ARGV[i]
  local delta = tonumber(ARGV[i + 1])
  local t = tonumber(ARGV[i + 2])
  local keep = tonumber(ARGV[i + 3])
  i = i + 4
  local cur = redis.call('ZSCORE', KEYS[k], member)
  local points = 0
  if cur then points = math.floor(-tonumber(cur) / span) end
  points = math.max(0, math.min(points + delta, 4194303))
  redis.call('ZADD', KEYS[k], -(points * span + (span - 1 - t)), member)
  if keep > 0 then redis.call('EXPIRE', KEYS[k], keep) end
end
redis.call('SET', KEYS[3], ARGV[4])
return 1
"#;

fn outcome(reply: i64) -> ApplyOutcome {
    match reply {
        1 => ApplyOutcome::Applied,
        0 => ApplyOutcome::Duplicate,
        _ => ApplyOutcome::TooEarly,
    }
}

/// Splits a batch into runs: for each match epoch (in order of first appearance), its events in
/// delivery order, cut wherever seqs stop being consecutive. Different matches are independent,
/// so gathering each match's events across the batch changes no outcome and no board, while it
/// turns a stream of interleaved matches into a few long runs.
fn runs(events: &[ScoredEvent]) -> Vec<Vec<usize>> {
    let mut by_match: HashMap<(&str, u64), usize> = HashMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, ev) in events.iter().enumerate() {
        let g = *by_match
            .entry((ev.match_id.as_str(), ev.epoch))
            .or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
        groups[g].push(i);
    }
    let mut out: Vec<Vec<usize>> = Vec::new();
    for group in groups {
        let mut run: Vec<usize> = Vec::new();
        for i in group {
            if let Some(&prev) = run.last() {
                if events[prev].seq + 1 != events[i].seq {
                    out.push(std::mem::take(&mut run));
                }
            }
            run.push(i);
        }
        out.push(run);
    }
    out
}

pub struct RedisLeaderboards {
    conn: RedisConn,
    prefix: String,
    run_script: Script,
    /// Replicas a batch's writes must reach before `apply` returns (1 behind Sentinel): the
    /// caller acknowledges the events to the log only then, so a failover to that replica
    /// cannot take back a score whose event will never be delivered again.
    wait_replicas: i64,
}

/// How long a batch waits for its replica before it is reported as not durable.
const REPLICA_WAIT_MS: u64 = 1000;

fn unavailable(e: redis::RedisError) -> BoardError {
    BoardError::Unavailable(e.to_string())
}

impl RedisLeaderboards {
    /// Connects (reconnecting on its own later) and loads the apply script.
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisLeaderboards, BoardError> {
        let conn = RedisConn::connect(url).await.map_err(unavailable)?;
        let replicated = crate::RedisTarget::parse(url).is_ok_and(|t| t.replicated());
        let lb = RedisLeaderboards {
            conn,
            prefix: prefix.to_string(),
            run_script: Script::new(APPLY_RUN),
            wait_replicas: i64::from(replicated),
        };
        lb.load_script().await?;
        Ok(lb)
    }

    async fn load_script(&self) -> Result<(), BoardError> {
        let mut conn = self.conn.clone();
        self.run_script
            .prepare_invoke()
            .load_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}lb:{suffix}", self.prefix)
    }

    /// One script call per run, with each (board, player)'s points summed over the run.
    fn run_pipeline(
        &self,
        events: &[ScoredEvent],
        runs: &[Vec<usize>],
        now_ms: u64,
    ) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        for run in runs {
            let evs: Vec<&ScoredEvent> = run.iter().map(|&i| &events[i]).collect();
            // (board, player) -> (points, time of the last gain, keep seconds), in first-seen order.
            let mut order: Vec<(&str, &str)> = Vec::new();
            let mut sums: HashMap<(&str, &str), (i64, u64, Option<u64>)> = HashMap::new();
            for ev in &evs {
                for c in &ev.changes {
                    let key = (c.board.as_str(), c.player.as_str());
                    let entry = sums.entry(key).or_insert_with(|| {
                        order.push(key);
                        (0, 0, None)
                    });
                    entry.0 += c.points;
                    entry.1 = entry.1.max(ev.at_ms);
                    entry.2 = c.keep_secs;
                }
            }
            let mut inv = self.run_script.prepare_invoke();
            inv.key(self.key("applied"))
                .key(self.key("names"))
                .key(self.key("updated_at"));
            for (board, _) in &order {
                inv.key(self.key(board));
            }
            let (first, last) = (evs[0], evs[evs.len() - 1]);
            let names: Vec<&(String, String)> = evs.iter().flat_map(|e| &e.names).collect();
            inv.arg(format!("{}:{}", first.match_id, first.epoch))
                .arg(first.seq)
                .arg(last.seq)
                .arg(now_ms)
                .arg(names.len());
            for (player, name) in names {
                inv.arg(player).arg(name);
            }
            for key in &order {
                let (points, at_ms, keep) = sums[key];
                inv.arg(key.1)
                    .arg(points)
                    .arg(achievement_time(at_ms))
                    .arg(keep.unwrap_or(0));
            }
            pipe.invoke_script(&inv);
        }
        pipe
    }

    /// Runs a pipeline of script calls, reloading the scripts once if Redis lost them (after a
    /// restart). Calls before the failure either did not run or ran atomically and will be
    /// reported as duplicates on the retry.
    async fn query(&self, pipe: &redis::Pipeline) -> Result<Vec<i64>, BoardError> {
        let mut conn = self.conn.clone();
        match pipe.query_async(&mut conn).await {
            Ok(r) => Ok(r),
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.load_script().await?;
                pipe.query_async(&mut conn).await.map_err(unavailable)
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn page(&self, board: &str, start: i64, stop: i64) -> Result<BoardPage, BoardError> {
        let mut conn = self.conn.clone();
        let key = self.key(board);
        type Reply = (
            Vec<(String, f64)>,
            u64,
            Option<u64>,
            (Option<u64>, Option<u64>),
        );
        let (rows, total, updated, (heartbeat, backlog)): Reply = redis::pipe()
            .zrange_withscores(&key, start as isize, stop as isize)
            .zcard(&key)
            .get(self.key("updated_at"))
            .cmd("HMGET")
            .arg(self.key("aggregator"))
            .arg("heartbeat_ms")
            .arg("backlog")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let names: Vec<Option<String>> = if rows.is_empty() {
            Vec::new()
        } else {
            let players: Vec<&str> = rows.iter().map(|(p, _)| p.as_str()).collect();
            redis::cmd("HMGET")
                .arg(self.key("names"))
                .arg(&players)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?
        };
        let entries = rows
            .into_iter()
            .zip(names.into_iter().chain(std::iter::repeat(None)))
            .enumerate()
            .map(|(i, ((player, key), name))| Entry {
                rank: start as u64 + i as u64 + 1,
                player,
                name: name.unwrap_or_default(),
                score: points_of(key as i64),
            })
            .collect();
        Ok(BoardPage {
            entries,
            total,
            updated_at_ms: updated,
            aggregator_heartbeat_ms: heartbeat,
            aggregator_backlog: backlog,
        })
    }
}

impl RedisLeaderboards {
    /// Atomically replaces the leaderboards under `live_prefix` with these (built under this
    /// instance's own prefix): one MULTI deletes the live keys (but the aggregators' heartbeat)
    /// and renames these into their place. Returns how many keys were swapped in.
    pub async fn swap_into(&self, live_prefix: &str) -> Result<usize, BoardError> {
        let mut conn = self.conn.clone();
        let scan = |pattern: String| {
            let mut conn = conn.clone();
            async move {
                let mut keys: Vec<String> = Vec::new();
                let mut iter = conn
                    .scan_match::<_, String>(pattern)
                    .await
                    .map_err(unavailable)?;
                while let Some(k) = futures::StreamExt::next(&mut iter).await {
                    keys.push(k.map_err(unavailable)?);
                }
                Ok::<_, BoardError>(keys)
            }
        };
        let fresh = scan(format!("{}lb:*", self.prefix)).await?;
        let live = scan(format!("{live_prefix}lb:*")).await?;
        let heartbeat = format!("{live_prefix}lb:aggregator");
        let mut tx = redis::pipe();
        tx.atomic();
        for k in live.iter().filter(|k| **k != heartbeat) {
            tx.del(k).ignore();
        }
        for k in &fresh {
            let suffix = &k[self.prefix.len()..];
            tx.rename(k, format!("{live_prefix}{suffix}")).ignore();
        }
        let _: () = tx.query_async(&mut conn).await.map_err(unavailable)?;
        Ok(fresh.len())
    }
}

#[async_trait]
impl Leaderboards for RedisLeaderboards {
    async fn ready(&self) -> Result<(), BoardError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn apply(&self, events: &[ScoredEvent]) -> Result<Vec<ApplyOutcome>, BoardError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let now = protocol::now_ms();
        let runs = runs(events);
        let replies = self.query(&self.run_pipeline(events, &runs, now)).await?;
        let mut outcomes = vec![ApplyOutcome::TooEarly; events.len()];
        let mut straddling: Vec<usize> = Vec::new();
        for (run, reply) in runs.iter().zip(replies) {
            match reply {
                -2 => straddling.extend(run),
                r => run.iter().for_each(|&i| outcomes[i] = outcome(r)),
            }
        }
        // A run that straddles the last applied seq (a redelivery overlapping new events) is
        // applied event by event, which sorts out which of its events are duplicates.
        if !straddling.is_empty() {
            let singles: Vec<Vec<usize>> = straddling.iter().map(|&i| vec![i]).collect();
            let replies = self
                .query(&self.run_pipeline(events, &singles, now))
                .await?;
            for (i, r) in straddling.into_iter().zip(replies) {
                outcomes[i] = outcome(r);
            }
        }
        if self.wait_replicas > 0 {
            let mut conn = self.conn.clone();
            let reached: i64 = redis::cmd("WAIT")
                .arg(self.wait_replicas)
                .arg(REPLICA_WAIT_MS)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            if reached < self.wait_replicas {
                // Applied on the primary only: not durable yet. The events are delivered
                // again; the primary (or a replica promoted with these writes) reports them
                // as duplicates, a replica promoted without them applies them.
                return Err(BoardError::Unavailable(format!(
                    "the batch reached {reached} of {} replicas within {REPLICA_WAIT_MS} ms",
                    self.wait_replicas
                )));
            }
        }
        Ok(outcomes)
    }

    async fn top(
        &self,
        board: &str,
        offset: u64,
        limit: u64,
    ) -> Result<Option<BoardPage>, BoardError> {
        if limit == 0 {
            return Ok(Some(BoardPage::default()));
        }
        let page = self
            .page(board, offset as i64, (offset + limit - 1) as i64)
            .await?;
        if page.total == 0 {
            return Ok(None);
        }
        Ok(Some(page))
    }

    async fn heartbeat(&self, backlog: u64) -> Result<(), BoardError> {
        let mut conn = self.conn.clone();
        let _: () = conn
            .hset_multiple(
                self.key("aggregator"),
                &[("heartbeat_ms", protocol::now_ms()), ("backlog", backlog)],
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn around(
        &self,
        board: &str,
        player: &str,
        radius: u64,
    ) -> Result<Option<BoardPage>, BoardError> {
        let mut conn = self.conn.clone();
        let rank: Option<u64> = conn
            .zrank(self.key(board), player)
            .await
            .map_err(unavailable)?;
        let Some(rank) = rank else {
            return Ok(None);
        };
        let start = rank.saturating_sub(radius);
        Ok(Some(
            self.page(board, start as i64, (rank + radius) as i64)
                .await?,
        ))
    }
}
