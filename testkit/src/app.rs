//! The real `grandstand` binary under test: started on port 0 against a chosen backend, and
//! typed requests as its clients make them (zero2prod's `spawn_app`, for a whole platform).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::eventually;
use crate::process::{grandstand_bin, listening_url, START_LIMIT};

pub const NATS_URL: &str = "nats://127.0.0.1:4222";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn unique() -> String {
    format!(
        "{}{:06x}",
        std::process::id(),
        rand::random::<u32>() & 0xffffff
    )
}

/// Where a test's platform keeps its state. Kept across restarts of the process.
pub enum Backend {
    Embedded {
        data_dir: PathBuf,
    },
    Real {
        data_dir: PathBuf,
        stream: String,
        subject_root: String,
        redis_prefix: String,
        database: String,
    },
}

impl Backend {
    pub fn embedded() -> Backend {
        let data_dir = std::env::temp_dir().join(format!("gs-test-{}", unique()));
        std::fs::create_dir_all(&data_dir).unwrap();
        Backend::Embedded { data_dir }
    }

    /// Fresh, isolated names on the real NATS, Redis and PostgreSQL of this machine.
    pub async fn real() -> Backend {
        let id = unique();
        let data_dir = std::env::temp_dir().join(format!("gs-test-{id}"));
        std::fs::create_dir_all(&data_dir).unwrap();
        let database = format!("gs_test_{id}");
        let admin = sqlx::PgPool::connect(PG_ADMIN_URL)
            .await
            .expect("PostgreSQL on 127.0.0.1:5432");
        sqlx::query(&format!("CREATE DATABASE {database}"))
            .execute(&admin)
            .await
            .unwrap();
        Backend::Real {
            data_dir,
            stream: format!("GS_TEST_{id}"),
            subject_root: format!("gstest{id}"),
            redis_prefix: format!("gs-test-{id}:"),
            database,
        }
    }

    pub fn data_dir(&self) -> &PathBuf {
        match self {
            Backend::Embedded { data_dir } | Backend::Real { data_dir, .. } => data_dir,
        }
    }

    pub fn database(&self) -> Option<&str> {
        match self {
            Backend::Real { database, .. } => Some(database),
            Backend::Embedded { .. } => None,
        }
    }

    pub fn redis_prefix(&self) -> Option<&str> {
        match self {
            Backend::Real { redis_prefix, .. } => Some(redis_prefix),
            Backend::Embedded { .. } => None,
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![(
            "GRANDSTAND_DATA_DIR".to_string(),
            self.data_dir().display().to_string(),
        )];
        if let Backend::Real {
            stream,
            subject_root,
            redis_prefix,
            database,
            ..
        } = self
        {
            env.extend([
                ("NATS_URL".into(), NATS_URL.into()),
                ("NATS_STREAM".into(), stream.clone()),
                ("NATS_SUBJECT_ROOT".into(), subject_root.clone()),
                ("NATS_MAX_AGE_SECS".into(), "900".into()),
                ("NATS_MAX_BYTES".into(), (64 << 20).to_string()),
                ("REDIS_URL".into(), REDIS_URL.into()),
                ("REDIS_PREFIX".into(), redis_prefix.clone()),
                (
                    "DATABASE_URL".into(),
                    format!("postgres://postgres@127.0.0.1:5432/{database}"),
                ),
            ]);
        }
        env
    }

    /// Removes what the test created on the shared servers.
    pub async fn cleanup(self) {
        if let Backend::Real {
            stream,
            redis_prefix,
            database,
            data_dir,
            ..
        } = &self
        {
            if let Ok(client) = async_nats::connect(NATS_URL).await {
                let _ = async_nats::jetstream::new(client)
                    .delete_stream(stream)
                    .await;
            }
            if let Ok(client) = redis::Client::open(REDIS_URL) {
                if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                    let keys: Vec<String> = redis::cmd("KEYS")
                        .arg(format!("{redis_prefix}*"))
                        .query_async(&mut c)
                        .await
                        .unwrap_or_default();
                    if !keys.is_empty() {
                        let _: Result<(), _> =
                            redis::cmd("DEL").arg(&keys).query_async(&mut c).await;
                    }
                }
            }
            if let Ok(admin) = sqlx::PgPool::connect(PG_ADMIN_URL).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
                    .execute(&admin)
                    .await;
            }
            let _ = std::fs::remove_dir_all(data_dir);
        }
        if let Backend::Embedded { data_dir } = &self {
            let _ = std::fs::remove_dir_all(data_dir);
        }
    }
}

/// Runs `grandstand <args>` to completion against `backend`; returns whether it succeeded and
/// what it printed.
pub fn run_to_completion(backend: &Backend, args: &[&str]) -> (bool, String) {
    let out = Command::new(grandstand_bin())
        .args(args)
        .envs(backend.env())
        .env("RUST_LOG", "info,sqlx=warn,async_nats=warn")
        .stdin(Stdio::null())
        .output()
        .expect("run grandstand");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

pub struct App {
    pub base: String,
    pub http: reqwest::Client,
    child: Child,
    log_path: PathBuf,
    args: Vec<String>,
}

impl App {
    /// Starts `grandstand` (all roles) on port 0 and waits for its bound address.
    pub async fn spawn(backend: &Backend, args: &[&str]) -> App {
        App::spawn_with(backend, args, &[], None).await
    }

    /// Starts a role (`None`: all) with extra environment overriding the backend's.
    pub async fn spawn_with(
        backend: &Backend,
        args: &[&str],
        env: &[(&str, String)],
        role: Option<&str>,
    ) -> App {
        let n = std::fs::read_dir(backend.data_dir())
            .map(|d| d.count())
            .unwrap_or(0);
        let log_path = backend.data_dir().join(format!("grandstand-{n}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        // A test that must come back on the same player port passes it as the env entry.
        let udp = env
            .iter()
            .find(|(k, _)| *k == "GRANDSTAND_UDP_ADDR")
            .map_or("127.0.0.1:0".to_string(), |(_, v)| v.clone());
        // Role first: each role takes only its own flags, and only the roles with a player
        // port take `--udp-addr`.
        let mut cmd = Command::new(grandstand_bin());
        cmd.args(role).args(["--http-addr", "127.0.0.1:0"]);
        if matches!(role, None | Some("all") | Some("game-server")) {
            cmd.args(["--udp-addr", &udp]);
        }
        let child = cmd
            .args(args)
            // Stopping with viewers attached would otherwise spread their closes over the
            // default 10 s; a test that measures the drain sets its own.
            .env("GRANDSTAND_DRAIN_SECS", "1")
            .envs(backend.env())
            .envs(env.iter().map(|(k, v)| (k.to_string(), v.clone())))
            .env("RUST_LOG", "info,sqlx=warn,async_nats=warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn grandstand");
        let deadline = Instant::now() + START_LIMIT;
        let base = loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Some(url) = listening_url(&text) {
                break url;
            }
            if Instant::now() > deadline {
                panic!("grandstand did not start:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        App {
            base,
            http: reqwest::Client::new(),
            child,
            log_path,
            args: args.iter().map(|s| s.to_string()).collect(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("{}{path}", self.base.replacen("http://", "ws://", 1))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics_text(&self) -> String {
        let r = self.http.get(self.url("/metrics")).send().await.unwrap();
        r.text().await.unwrap()
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn guest_token(&self) -> String {
        let r = self
            .http
            .post(self.url("/v1/auth/guest"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Live matches, waiting until at least `n` are listed.
    pub async fn live_matches(&self, n: usize) -> Vec<Value> {
        eventually(Duration::from_secs(20), || async {
            let (status, body) = self.get("/v1/matches").await;
            let live: Vec<Value> = body["matches"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter(|m| m["status"] == "live")
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            (status == 200 && live.len() >= n).then_some(live)
        })
        .await
        .unwrap_or_else(|| panic!("fewer than {n} live matches\n{}", self.log()))
    }

    /// Kills the process with SIGKILL: a crash, nothing flushed, nothing said goodbye.
    pub fn crash(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A guest token and the room the matchmaker assigns it.
    pub async fn matchmake(&self, region: &str, skill: u32) -> (String, Value) {
        let token = self.guest_token().await;
        let r = self
            .http
            .post(self.url("/v1/matchmaking/join"))
            .bearer_auth(&token)
            .json(&serde_json::json!({ "region": region, "skill": skill }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", self.log());
        (token, r.json().await.unwrap())
    }

    /// The ids of at least `n` live matches.
    pub async fn live_match_ids(&self, n: usize) -> Vec<String> {
        self.live_matches(n)
            .await
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    }

    /// Stops the process with SIGTERM (graceful shutdown) and waits for it; returns the
    /// arguments it was started with (after the role), to start it again.
    pub async fn stop(self) -> Vec<String> {
        self.terminate();
        self.exited(Duration::from_secs(20)).await
    }

    /// Sends SIGTERM and returns at once (the process drains, then stops).
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Waits up to `limit` for the process to exit successfully; the arguments it was started
    /// with.
    pub async fn exited(mut self, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(
                    status.success(),
                    "grandstand exited with {status}\n{}",
                    self.log()
                );
                break;
            }
            if Instant::now() > deadline {
                panic!("grandstand did not stop within {limit:?}\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        std::mem::take(&mut self.args)
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
