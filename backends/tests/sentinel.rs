//! Redis behind Sentinel, for real: a primary, one replica and three Sentinels started by the
//! test (this machine's `redis-server`), the leaderboards connected with a
//! `redis+sentinel://` URL, the primary killed with SIGKILL in the middle of a stream of
//! scores and started again 2 s later (empty: Sentinel makes it a replica of the promoted
//! one). Every score acknowledged before or after the failover is on the board exactly once,
//! and acknowledged writes resume within seconds (a batch counts as durable once it is on a
//! replica too, so they wait for the old primary to come back as one).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backends::{BoardChange, Leaderboards, RedisConn, RedisLeaderboards, ScoredEvent};

/// Processes killed when the test ends, however it ends.
struct Servers(Vec<Child>);

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Redis server (or Sentinel) working in `dir`: a replica writes the copy it syncs to
/// dump.rdb in its directory, which must not be one another Redis would load at start.
fn redis(dir: &std::path::Path, args: &[&str]) -> Child {
    Command::new("redis-server")
        .current_dir(dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server on PATH")
}

async fn query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    cmd.query_async(&mut conn).await
}

async fn until(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether every Sentinel names `replica` as the primary and it says it is one.
async fn failed_over(sentinels: &[u16], replica: u16) -> bool {
    for &s in sentinels {
        let named: Option<(String, u16)> = query(
            s,
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg("gsm"),
        )
        .await
        .ok();
        if named.is_none_or(|(_, port)| port != replica) {
            return false;
        }
    }
    query::<String>(replica, redis::cmd("INFO").arg("replication"))
        .await
        .is_ok_and(|info| info.contains("role:master"))
}

fn kill(seq: u64, player: &str) -> ScoredEvent {
    ScoredEvent {
        match_id: "sentinel-m".into(),
        epoch: 1,
        seq,
        at_ms: 1_800_000_000_000 + seq,
        changes: vec![BoardChange::new("global", player, 1)],
        names: vec![(player.into(), player.to_uppercase())],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaderboards_follow_a_sentinel_failover_without_losing_or_doubling_a_score() {
    let dir = std::env::temp_dir().join(format!("gs-sentinel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (primary, replica) = (free_port(), free_port());
    let no_disk = [
        "--save",
        "",
        "--appendonly",
        "no",
        "--repl-diskless-sync-delay",
        "0",
    ];
    let mut servers = Servers(Vec::new());
    let p = primary.to_string();
    let mut args = vec!["--port", &p, "--bind", "127.0.0.1"];
    args.extend(no_disk);
    servers.0.push(redis(&dir, &args));
    let r = replica.to_string();
    let primary_arg = primary.to_string();
    let mut args = vec![
        "--port",
        &r,
        "--bind",
        "127.0.0.1",
        "--replicaof",
        "127.0.0.1",
        &primary_arg,
    ];
    args.extend(no_disk);
    servers.0.push(redis(&dir, &args));
    let mut sentinels = Vec::new();
    for i in 0..3 {
        let port = free_port();
        let conf = dir.join(format!("sentinel-{i}.conf"));
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor gsm 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds gsm 1000\nsentinel failover-timeout gsm 5000\n\
                 sentinel parallel-syncs gsm 1\n",
                dir.display()
            ),
        )
        .unwrap();
        servers
            .0
            .push(redis(&dir, &[conf.to_str().unwrap(), "--sentinel"]));
        sentinels.push(port);
    }
    until("the replica in sync", Duration::from_secs(10), async || {
        query::<String>(replica, redis::cmd("INFO").arg("replication"))
            .await
            .is_ok_and(|info| info.contains("master_link_status:up"))
    })
    .await;
    for &s in &sentinels {
        until(
            "every Sentinel sees the replica",
            Duration::from_secs(15),
            async || {
                query::<Vec<redis::Value>>(s, redis::cmd("SENTINEL").arg("replicas").arg("gsm"))
                    .await
                    .is_ok_and(|r| !r.is_empty())
            },
        )
        .await;
        // And the other two Sentinels (they find each other through the primary every 2 s):
        // without them no quorum agrees the primary is gone, and no failover starts.
        until(
            "every Sentinel knows the others",
            Duration::from_secs(20),
            async || {
                query::<Vec<redis::Value>>(s, redis::cmd("SENTINEL").arg("sentinels").arg("gsm"))
                    .await
                    .is_ok_and(|r| r.len() >= 2)
            },
        )
        .await;
    }

    let url = format!(
        "redis+sentinel://{}/gsm",
        sentinels
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let lb = RedisLeaderboards::connect(&url, "sentinel-test:")
        .await
        .expect("connected through Sentinel");
    let conn = RedisConn::connect(&url).await.unwrap();

    // Scores go in as an aggregator sends them: a batch is retried until `apply` says it is
    // durable (on the replica too), and only then counts as acknowledged.
    let players = ["ann", "bob", "cat"];
    let mut killed_at = None;
    let mut resumed_after = None;
    for seq in 1..=60u64 {
        if seq == 21 {
            servers.0[0].kill().unwrap();
            let _ = servers.0[0].wait();
            killed_at = Some(Instant::now());
        }
        let event = kill(seq, players[(seq % 3) as usize]);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Once the Sentinels have promoted the replica, the old primary comes back as a
            // replica of it (as an operator or an orchestrator brings it back).
            let promoted_since = match killed_at {
                Some(at) if servers.0.len() == 5 => {
                    failed_over(&sentinels, replica).await.then_some(at)
                }
                _ => None,
            };
            if let Some(at) = promoted_since {
                eprintln!("promoted after {:?}", at.elapsed());
                let mut args = vec![
                    "--port",
                    &p,
                    "--bind",
                    "127.0.0.1",
                    "--replicaof",
                    "127.0.0.1",
                    &r,
                ];
                args.extend(no_disk);
                servers.0.push(redis(&dir, &args));
            }
            match lb.apply(std::slice::from_ref(&event)).await {
                Ok(_) => break,
                Err(e) => {
                    eprintln!("{:?} seq {seq}: {e}", killed_at.map(|a| a.elapsed()));
                    assert!(
                        Instant::now() < deadline,
                        "seq {seq} never became durable: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        if let (Some(at), None) = (killed_at, resumed_after) {
            resumed_after = Some(at.elapsed());
        }
    }
    let resumed_after = resumed_after.unwrap();
    eprintln!("writes resumed {resumed_after:?} after the primary was killed");
    assert!(
        resumed_after < Duration::from_secs(15),
        "writes resumed only {resumed_after:?} after the kill"
    );

    // The promoted replica is the primary now, and it holds every score once.
    let now_primary: (String, u16) = query(
        sentinels[0],
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg("gsm"),
    )
    .await
    .unwrap();
    assert_eq!(now_primary.1, replica);
    let page = lb.top("global", 0, 10).await.unwrap().unwrap();
    let total: i64 = page.entries.iter().map(|e| e.score).sum();
    assert_eq!(total, 60, "{:?}", page.entries);
    for e in &page.entries {
        assert_eq!(e.score, 20, "{e:?}");
    }
    // Every other Redis user shares the same connection type: it moved too.
    let mut c = conn.clone();
    let pong: String = redis::cmd("PING")
        .query_async(&mut c)
        .await
        .unwrap_or_default();
    let pong = if pong == "PONG" {
        pong
    } else {
        // The first command after the move may meet the dead server; the next goes to the new one.
        redis::cmd("PING").query_async(&mut c).await.unwrap()
    };
    assert_eq!(pong, "PONG");
    let _: () = redis::cmd("SET")
        .arg("sentinel-test:written")
        .arg(1)
        .query_async(&mut c)
        .await
        .expect("writes go to the new primary");
    let _ = std::fs::remove_dir_all(&dir);
}
