//! The cluster under test, from both sides: [`Cluster`] drives `scripts/cluster.sh` and signals
//! its processes; [`Probe`] polls the platform as its users see it ([`Health`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use backends::{
    History, Leaderboards, MatchLog, NatsLog, NatsLogConfig, RedisLeaderboards, SqlHistory,
};
use futures::StreamExt;
use serde_json::Value;

use super::fleet::Fleet;
use super::Topology;

/// Drives `scripts/cluster.sh` and signals its processes.
pub(super) struct Cluster {
    pub(super) script: PathBuf,
    pub(super) dir: PathBuf,
    pub(super) bin: PathBuf,
    pub(super) match_secs: u64,
    pub(super) up: bool,
}

impl Cluster {
    pub(super) fn command(&self, args: &[&str]) -> anyhow::Result<()> {
        let out = Command::new("bash")
            .arg(&self.script)
            .args(args)
            .env("CLUSTER_DIR", &self.dir)
            .env("GRANDSTAND_BIN", &self.bin)
            .env("GRANDSTAND_MATCH_SECS", self.match_secs.to_string())
            .env("GRANDSTAND_KEYFRAME_SECS", "1")
            .env("GRANDSTAND_INTERMISSION_SECS", "2")
            .env("GRANDSTAND_SPECTATOR_HZ", "10")
            .output()
            .with_context(|| format!("running {}", self.script.display()))?;
        if !out.status.success() {
            bail!(
                "cluster.sh {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    pub(super) fn pid(&self, name: &str) -> anyhow::Result<i32> {
        let path = self.dir.join("pids").join(format!("{name}.pid"));
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
        Ok(text.trim().parse()?)
    }

    pub(super) fn signal(&self, name: &str, signal: libc::c_int) -> anyhow::Result<()> {
        let pid = self.pid(name)?;
        // SAFETY: kill(2) with a pid this cluster started and a valid signal number.
        if unsafe { libc::kill(pid, signal) } != 0 {
            bail!(
                "signal {signal} to {name} (pid {pid}): {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// Waits for a process this cluster started (and signalled) to be gone.
    pub(super) async fn wait_gone(&self, name: &str, limit: Duration) -> bool {
        let Ok(pid) = self.pid(name) else { return true };
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            // SAFETY: signal 0 only checks that the process exists.
            if unsafe { libc::kill(pid, 0) } != 0 {
                return true;
            }
            // Reap it if it is our child's child that exited (it is not ours: just poll).
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    pub(super) async fn run(&self, args: &[&str]) -> anyhow::Result<()> {
        let me = Cluster {
            script: self.script.clone(),
            dir: self.dir.clone(),
            bin: self.bin.clone(),
            match_secs: self.match_secs,
            up: false,
        };
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            me.command(&args)
        })
        .await?
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.up {
            let _ = self.command(&["down"]);
        }
    }
}

/// What a poll of the platform found, from the users' side.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Health {
    pub(super) viewers: bool,
    pub(super) players: bool,
    pub(super) api: bool,
    pub(super) boards: bool,
    pub(super) history: bool,
}

impl Health {
    pub(super) fn all(self) -> bool {
        self.viewers && self.players && self.api && self.boards && self.history
    }

    pub(super) fn missing(self) -> String {
        let mut m = Vec::new();
        for (ok, what) in [
            (self.viewers, "viewers"),
            (self.players, "players"),
            (self.api, "api"),
            (self.boards, "leaderboards"),
            (self.history, "history"),
        ] {
            if !ok {
                m.push(what);
            }
        }
        m.join(",")
    }
}

/// A user is healthy when it heard from the platform this recently.
pub(super) const FRESH: Duration = Duration::from_millis(1500);

pub(super) struct Probe {
    pub(super) topology: Arc<Topology>,
    pub(super) http: reqwest::Client,
    pub(super) log: NatsLog,
    pub(super) boards: RedisLeaderboards,
    pub(super) history: SqlHistory,
}

impl Probe {
    pub(super) async fn connect(topology: Arc<Topology>) -> anyhow::Result<Probe> {
        let mut config = NatsLogConfig::new(topology.nats.clone());
        config.replicas = 3;
        Ok(Probe {
            http: reqwest::Client::new(),
            log: NatsLog::connect(config).await.context("NATS")?,
            boards: RedisLeaderboards::connect(&topology.redis, backends::DEFAULT_REDIS_PREFIX)
                .await
                .context("Redis")?,
            history: SqlHistory::connect(&topology.database)
                .await
                .context("PostgreSQL")?,
            topology,
        })
    }

    /// Every event in the log (a bounded replay).
    pub(super) async fn log_events(&self) -> anyhow::Result<Vec<protocol::LogRecord>> {
        let read = async {
            let mut stream = self.log.all_events().await?;
            let mut out = Vec::new();
            while let Some(item) = stream.next().await {
                out.push(item?.record);
            }
            Ok::<_, backends::LogError>(out)
        };
        Ok(tokio::time::timeout(Duration::from_secs(10), read).await??)
    }

    pub(super) async fn board(&self, board: &str) -> anyhow::Result<BTreeMap<String, i64>> {
        let page = tokio::time::timeout(Duration::from_secs(3), self.boards.top(board, 0, 100_000))
            .await??;
        Ok(page
            .map(|p| p.entries.into_iter().map(|e| (e.player, e.score)).collect())
            .unwrap_or_default())
    }

    pub(super) async fn listing(&self) -> Option<Vec<Value>> {
        let res = self
            .http
            .get(format!("{}/v1/matches", self.topology.api))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        if !res.status().is_success() {
            return None;
        }
        let body: Value = res.json().await.ok()?;
        body["matches"].as_array().cloned()
    }

    /// Whether the leaderboards hold at least every kill the log held a moment ago, and the
    /// history every match the log saw end.
    pub(super) async fn stores_caught_up(&self) -> (bool, bool) {
        let Ok(events) = self.log_events().await else {
            return (false, false);
        };
        let reference = super::audit::reference(&events);
        let boards = match self.board("global").await {
            Ok(b) => b.values().sum::<i64>() >= reference.kill_count() as i64,
            Err(_) => false,
        };
        let mut history = true;
        for (id, _) in reference.ended() {
            match tokio::time::timeout(Duration::from_secs(2), self.history.match_summary(id)).await
            {
                Ok(Ok(Some(s))) if s.ended_ms.is_some() => {}
                _ => {
                    history = false;
                    break;
                }
            }
        }
        (boards, history)
    }

    pub(super) async fn health(&self, fleet: &Fleet) -> Health {
        let (boards, history) = self.stores_caught_up().await;
        Health {
            viewers: fleet.viewers.iter().all(|v| v.silence() < FRESH),
            players: fleet.players.iter().all(|p| p.silence() < FRESH),
            api: self.listing().await.is_some(),
            boards,
            history,
        }
    }
}
