//! A recorded match feed: what a real room publishes (its first keyframe, then every delta and
//! event with when it was published), so `viewers --workload match` replays the bytes a real
//! match produces instead of synthetic deltas.
//!
//! `loadtest record-match` plays a match of bots on an in-process game server and writes the
//! recording (JSON lines, gzip): `{"t_ms":..,"kind":"keyframe|delta|event","body":{...}}`.
//! The reference recording, `loadtest/feeds/match-50.jsonl.gz`, is a 50-player match at 10 Hz.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use backends::{MatchLog, MemoryCheckpoints, MemoryLog, MemoryLogLimits, MemoryRegistry, NatsLog};
use bytes::Bytes;
use futures::StreamExt;
use game_server::{GameServer, GameServerConfig, GameServerStores};
use httpkit::Shutdown;
use protocol::{Delta, LogKind, LogRecord, SpectatorState, TokenSigner};
use serde::{Deserialize, Serialize};

/// The reference recording, next to the loadtest sources.
pub const REFERENCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/feeds/match-50.jsonl.gz");

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recorded {
    /// Milliseconds since the match started.
    pub t_ms: u64,
    pub kind: String,
    pub body: Box<serde_json::value::RawValue>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct RecordArgs {
    #[arg(long, default_value_t = 50)]
    bots: usize,
    #[arg(long, default_value_t = 30)]
    secs: u64,
    #[arg(long, default_value_t = 10)]
    spectator_hz: u32,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    #[arg(long, default_value = REFERENCE)]
    out: PathBuf,
}

/// Plays a match of bots in-process and writes what its room published.
pub async fn record(args: RecordArgs) -> anyhow::Result<()> {
    let log = Arc::new(MemoryLog::new(MemoryLogLimits::default()));
    let config = GameServerConfig {
        matches: 1,
        bots_per_match: args.bots,
        spectator_hz: args.spectator_hz,
        match_duration: Duration::from_secs(args.secs + 30),
        seed: Some(args.seed),
        checkpoints: false,
        ..Default::default()
    };
    let stores = GameServerStores {
        log: log.clone(),
        registry: Arc::new(MemoryRegistry::default()),
        checkpoints: Arc::new(MemoryCheckpoints::default()),
    };
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let shutdown = Shutdown::new();
    let server = GameServer::new(
        config,
        udp,
        stores,
        &TokenSigner::new(b"record-match-0123456789"),
        shutdown.clone(),
    )?;
    let running = tokio::spawn(server.run());
    let match_id = loop {
        if let Some(id) = log.match_ids().await?.into_iter().next() {
            break id;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let mut follow = log.follow(&match_id).await?;
    let started = Instant::now();
    let mut lines = Vec::new();
    while started.elapsed() < Duration::from_secs(args.secs) {
        let Ok(Some(item)) = tokio::time::timeout(Duration::from_secs(5), follow.next()).await
        else {
            anyhow::bail!("the match stopped publishing");
        };
        let item = item?;
        let kind = match item.record.kind {
            LogKind::Keyframe if !lines.is_empty() => continue,
            LogKind::Keyframe => "keyframe",
            LogKind::Delta => "delta",
            LogKind::Event => "event",
        };
        let body = serde_json::value::RawValue::from_string(String::from_utf8(
            item.record.body.to_vec(),
        )?)?;
        lines.push(Recorded {
            t_ms: started.elapsed().as_millis() as u64,
            kind: kind.into(),
            body,
        });
    }
    shutdown.cancel();
    let _ = running.await;
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::File::create(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::best());
    for l in &lines {
        serde_json::to_writer(&mut gz, l)?;
        gz.write_all(b"\n")?;
    }
    gz.finish()?;
    let (deltas, events) = (
        lines.iter().filter(|l| l.kind == "delta").count(),
        lines.iter().filter(|l| l.kind == "event").count(),
    );
    println!(
        "recorded {} s of a {}-bot match: {deltas} deltas, {events} events -> {}",
        args.secs,
        args.bots,
        args.out.display()
    );
    Ok(())
}

/// Reads a recording.
pub fn load(path: &Path) -> anyhow::Result<Vec<Recorded>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for line in BufReader::new(flate2::read::GzDecoder::new(file)).lines() {
        let line = line?;
        if !line.trim().is_empty() {
            out.push(serde_json::from_str(&line)?);
        }
    }
    anyhow::ensure!(
        out.first().is_some_and(|r: &Recorded| r.kind == "keyframe"),
        "a recording starts with its keyframe"
    );
    Ok(out)
}

/// Adds `"sent_us":<now>` to a JSON object body, so the peers (which forward bodies as they
/// are) carry the publish time to their viewers, as Grandstand's stamps do.
fn stamped(body: &str) -> Bytes {
    let now = protocol::now_us();
    let mut s = String::with_capacity(body.len() + 32);
    s.push_str(&format!("{{\"sent_us\":{now},"));
    s.push_str(body.trim_start().strip_prefix('{').unwrap_or(body));
    Bytes::from(s)
}

/// Replays `feed` as match `match_id` into the log at its recorded pace, looping, with a
/// keyframe of the current state every 5 s; stops at `stop`. It publishes as a room does
/// (`game_server`'s publisher): each record on the live line at once, then into the stored
/// log in order by a task of its own, so one record's store acknowledgement never delays the
/// next record (a replay that awaited each store in turn published a tick's burst of kills
/// one round trip apart, and Grandstand, left without the live line, got every record from
/// the stored log only: neither is what a room does).
pub async fn replay(log: Arc<NatsLog>, match_id: String, feed: Arc<Vec<Recorded>>, stop: Shutdown) {
    // The room's store queue: bounded; at the limit the replay waits, as a room does.
    let (store, mut stored) = tokio::sync::mpsc::channel::<LogRecord>(4096);
    let storer = {
        let log = log.clone();
        tokio::spawn(async move {
            while let Some(record) = stored.recv().await {
                if let Err(e) = log.publish(record).await {
                    eprintln!("publish failed: {e}");
                }
            }
        })
    };
    replay_into(&log, &store, match_id, &feed, &stop).await;
    drop(store);
    let _ = storer.await;
}

async fn replay_into(
    log: &NatsLog,
    store: &tokio::sync::mpsc::Sender<LogRecord>,
    match_id: String,
    feed: &[Recorded],
    stop: &Shutdown,
) {
    let mut state: SpectatorState = match serde_json::from_str(feed[0].body.get()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("the recording's keyframe does not parse: {e}");
            return;
        }
    };
    let record = |version: u64, kind: LogKind, body: Bytes| LogRecord {
        match_id: match_id.clone(),
        epoch: 1,
        version,
        kind,
        body,
    };
    let mut version = 0u64;
    let _ = store
        .send(record(
            0,
            LogKind::Keyframe,
            Bytes::from(feed[0].body.get().to_string()),
        ))
        .await;
    // Matches are not in step with each other: each starts at a random point of the recording.
    let len = feed.len() - 1;
    let offset = 1 + rand::random::<u64>() as usize % len;
    let span = feed.last().map_or(1, |r| r.t_ms.max(1));
    let started = Instant::now();
    let mut last_keyframe = Instant::now();
    // The records before the first delta start the match (match_started, a player_joined per
    // player). A loop goes on with the same match and its players: it does not start it again,
    // so after the first lap they are left out (republished, they were a burst of 51 events
    // every 30 s that no live match has).
    let start = feed[1..]
        .iter()
        .position(|r| r.kind == "delta")
        .unwrap_or(0);
    for n in 0.. {
        let i = 1 + (offset - 1 + n) % len;
        let lap = ((offset - 1 + n) / len) as u64;
        if lap > 0 && i <= start {
            continue;
        }
        let r = &feed[i];
        let base = feed[offset].t_ms;
        let due_ms = (lap * span + r.t_ms).saturating_sub(base);
        let due = started + Duration::from_millis(due_ms);
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()) => {}
            _ = stop.cancelled() => return,
        }
        version += 1;
        let kind = if r.kind == "delta" {
            LogKind::Delta
        } else {
            LogKind::Event
        };
        if kind == LogKind::Delta {
            if let Ok(d) = serde_json::from_str::<Delta>(r.body.get()) {
                state.apply(&d);
            }
        }
        let published = record(version, kind, stamped(r.body.get()));
        log.publish_live(&published).await;
        if store.send(published).await.is_err() {
            return;
        }
        if last_keyframe.elapsed() >= Duration::from_secs(5) {
            let body = Bytes::from(serde_json::to_vec(&state).expect("state serializes"));
            if store
                .send(record(version, LogKind::Keyframe, body))
                .await
                .is_err()
            {
                return;
            }
            last_keyframe = Instant::now();
        }
    }
}
