//! The adapters against the real servers of this machine (NATS JetStream on 4222, Redis on
//! 6379), each test under unique names; the leaderboard suite also runs on the in-memory
//! implementation so both are held to the same rules.

use std::time::Duration;

use backends::{
    ApplyOutcome, BoardChange, Leaderboards, LogKind, MatchLog, MemoryLeaderboards, NatsLog,
    NatsLogConfig, RedisLeaderboards, ScoredEvent,
};
use bytes::Bytes;
use futures::StreamExt;
use protocol::LogRecord;

fn unique() -> String {
    format!(
        "{}{:06x}",
        std::process::id(),
        rand::random::<u32>() & 0xffffff
    )
}

fn rec(match_id: &str, version: u64, kind: LogKind) -> LogRecord {
    LogRecord {
        match_id: match_id.into(),
        epoch: 7,
        version,
        kind,
        body: Bytes::from(format!("{{\"v\":{version}}}")),
    }
}

async fn nats_log() -> (NatsLog, NatsLogConfig) {
    let id = unique();
    let mut config = NatsLogConfig::new("nats://127.0.0.1:4222");
    config.stream = format!("GS_ADAPTER_{id}");
    config.subject_root = format!("gsadapter{id}");
    config.max_age = Duration::from_secs(600);
    config.max_bytes = 64 << 20;
    (
        NatsLog::connect(config.clone())
            .await
            .expect("NATS JetStream on 127.0.0.1:4222"),
        config,
    )
}

async fn drop_stream(config: &NatsLogConfig) {
    let client = async_nats::connect(&config.url).await.unwrap();
    let _ = async_nats::jetstream::new(client)
        .delete_stream(&config.stream)
        .await;
}

#[tokio::test]
async fn nats_follow_reads_one_match_from_its_latest_keyframe() {
    let (log, config) = nats_log().await;
    assert!(matches!(
        log.follow("m1").await,
        Err(backends::LogError::UnknownMatch)
    ));
    for (m, v, k) in [
        ("m1", 0, LogKind::Keyframe),
        ("m2", 0, LogKind::Keyframe),
        ("m1", 1, LogKind::Delta),
        ("m2", 1, LogKind::Delta),
        ("m1", 2, LogKind::Event),
        ("m1", 2, LogKind::Keyframe),
        ("m2", 2, LogKind::Delta),
        ("m1", 3, LogKind::Delta),
        ("m1", 3, LogKind::Delta), // re-publish: deduplicated by Nats-Msg-Id
    ] {
        log.publish(rec(m, v, k)).await.unwrap();
    }
    let mut s = log.follow("m1").await.unwrap();
    let mut got = Vec::new();
    loop {
        let item = tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got.push((
            item.record.match_id.clone(),
            item.record.version,
            item.record.kind,
        ));
        if item.caught_up {
            break;
        }
    }
    assert_eq!(
        got,
        vec![
            ("m1".to_string(), 2, LogKind::Keyframe),
            ("m1".to_string(), 3, LogKind::Delta)
        ]
    );
    // Live records follow, still only this match's.
    log.publish(rec("m2", 3, LogKind::Delta)).await.unwrap();
    log.publish(rec("m1", 4, LogKind::Event)).await.unwrap();
    let item = tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (item.record.match_id.as_str(), item.record.version),
        ("m1", 4)
    );
    let kf = log.latest_keyframe("m1").await.unwrap();
    assert_eq!((kf.epoch, kf.version), (7, 2));
    assert_eq!(
        log.match_ids().await.unwrap(),
        vec!["m1".to_string(), "m2".to_string()]
    );
    drop_stream(&config).await;
}

/// Every record of `s` up to the one that caught up.
async fn read_caught_up(s: &mut backends::LogStream) -> Vec<(u64, LogKind)> {
    let mut got = Vec::new();
    loop {
        let item = tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got.push((item.record.version, item.record.kind));
        if item.caught_up {
            return got;
        }
    }
}

/// The live line carries records to whoever listens now, one match per subscription, and
/// stores nothing.
#[tokio::test]
async fn nats_live_line_reaches_listeners_and_stores_nothing() {
    let (log, config) = nats_log().await;
    let mut live = log.live("m1").await.unwrap().expect("NATS has a live line");
    let before = protocol::now_us();
    log.publish_live(&rec("m2", 1, LogKind::Delta)).await;
    log.publish_live(&rec("m1", 1, LogKind::Delta)).await;
    log.publish_live(&rec("m1", 2, LogKind::Event)).await;
    let sent = protocol::now_us();
    // A record someone else published 5 s ago (by its stamp): followers time it from then.
    let client = async_nats::connect(&config.url).await.unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Match-Epoch", "1");
    headers.insert("Match-Version", "3");
    headers.insert(
        "Match-Published-Us",
        (before - 5_000_000).to_string().as_str(),
    );
    let subject = format!(
        "{}.m1.delta",
        backends::matchlog::live_root(&config.subject_root)
    );
    client
        .publish_with_headers(subject, headers, "{}".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let mut got = Vec::new();
    let mut stamps = Vec::new();
    for _ in 0..3 {
        let item = tokio::time::timeout(Duration::from_secs(5), live.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got.push((item.record.match_id, item.record.version, item.record.kind));
        stamps.push(item.published_us.expect("live records are stamped"));
    }
    assert_eq!(
        got,
        vec![
            ("m1".to_string(), 1, LogKind::Delta),
            ("m1".to_string(), 2, LogKind::Event),
            ("m1".to_string(), 3, LogKind::Delta)
        ]
    );
    assert!(
        stamps[..2].iter().all(|&at| before <= at && at <= sent),
        "stamped when published, not when received: {stamps:?} outside {before}..{sent}"
    );
    assert_eq!(
        stamps[2],
        before - 5_000_000,
        "the publisher's stamp is kept"
    );
    assert!(matches!(
        log.follow("m1").await,
        Err(backends::LogError::UnknownMatch)
    ));
    assert!(log.match_events("m1").await.unwrap().is_empty());
    drop_stream(&config).await;
}

/// A replay reads one match from its first keyframe (skipping anything before it), every
/// record after it across later keyframes, then live records.
#[tokio::test]
async fn nats_replay_reads_one_match_from_its_first_keyframe() {
    let (log, config) = nats_log().await;
    assert!(matches!(
        log.replay("m1").await,
        Err(backends::LogError::UnknownMatch)
    ));
    for (m, v, k) in [
        ("m1", 4, LogKind::Delta), // before any keyframe: nothing can start from it
        ("m1", 5, LogKind::Keyframe),
        ("m2", 0, LogKind::Keyframe),
        ("m1", 6, LogKind::Delta),
        ("m1", 7, LogKind::Event),
        ("m1", 7, LogKind::Keyframe),
        ("m1", 8, LogKind::Delta),
    ] {
        log.publish(rec(m, v, k)).await.unwrap();
    }
    let mut s = log.replay("m1").await.unwrap();
    assert_eq!(
        read_caught_up(&mut s).await,
        vec![
            (5, LogKind::Keyframe),
            (6, LogKind::Delta),
            (7, LogKind::Event),
            (7, LogKind::Keyframe),
            (8, LogKind::Delta)
        ]
    );
    log.publish(rec("m2", 1, LogKind::Delta)).await.unwrap();
    log.publish(rec("m1", 9, LogKind::Delta)).await.unwrap();
    let item = tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (item.record.match_id.as_str(), item.record.version),
        ("m1", 9)
    );
    drop_stream(&config).await;
}

/// The bounded replay of every event ends at the last one even when nothing more is published
/// (a rebuild on a quiet log must not wait for the next match).
#[tokio::test]
async fn nats_all_events_ends_on_a_quiet_log() {
    let (log, config) = nats_log().await;
    for (m, v, k) in [
        ("m1", 1, LogKind::Event),
        ("m1", 2, LogKind::Delta),
        ("m2", 1, LogKind::Event),
        ("m1", 3, LogKind::Event),
        ("m1", 4, LogKind::Delta),
    ] {
        log.publish(rec(m, v, k)).await.unwrap();
    }
    let read = async {
        let mut s = log.all_events().await.unwrap();
        let mut got = Vec::new();
        while let Some(item) = s.next().await {
            let item = item.unwrap();
            got.push((item.record.match_id.clone(), item.record.version));
        }
        got
    };
    let got = tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("the replay ended without waiting for another event");
    assert_eq!(
        got,
        vec![
            ("m1".to_string(), 1),
            ("m2".to_string(), 1),
            ("m1".to_string(), 3)
        ]
    );
    drop_stream(&config).await;
}

#[tokio::test]
async fn nats_event_consumers_are_durable_and_redeliver_what_was_not_acked() {
    let (log, config) = nats_log().await;
    log.publish(rec("m1", 0, LogKind::Keyframe)).await.unwrap();
    for v in 1..=4 {
        log.publish(rec("m1", v, LogKind::Event)).await.unwrap();
    }
    log.publish(rec("m1", 5, LogKind::Delta)).await.unwrap();
    let mut c = log.event_consumer("agg").await.unwrap();
    // A batch holds what has arrived so far: gather until all four are in (or time runs out).
    let mut batch = Vec::new();
    for _ in 0..10 {
        batch.extend(
            c.next_batch(10 - batch.len(), Duration::from_secs(1))
                .await
                .unwrap(),
        );
        if batch.len() >= 4 {
            break;
        }
    }
    assert_eq!(
        batch.iter().map(|e| e.record.version).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    for e in &batch[..2] {
        c.ack(e).await.unwrap();
    }
    c.retry_later(&batch[2], Duration::from_millis(10))
        .await
        .unwrap();
    drop(c);
    // A new consumer under the same durable name gets what was not acknowledged; event 4 is
    // still pending on the old delivery until its ack wait runs out, so only 3 comes now.
    let mut c2 = log.event_consumer("agg").await.unwrap();
    let again = c2.next_batch(10, Duration::from_secs(1)).await.unwrap();
    let versions: Vec<_> = again
        .iter()
        .map(|e| (e.record.version, e.delivered))
        .collect();
    assert_eq!(versions.first(), Some(&(3, 2)), "{versions:?}");
    drop_stream(&config).await;
}

fn kill(match_id: &str, seq: u64, at_ms: u64, killer: &str) -> ScoredEvent {
    ScoredEvent {
        match_id: match_id.into(),
        epoch: 1,
        seq,
        at_ms,
        changes: vec![BoardChange::new("global", killer, 1)],
        names: vec![(killer.into(), format!("Name {killer}"))],
    }
}

async fn leaderboard_suite(lb: &dyn Leaderboards) {
    let t = 1_800_000_000_000;
    let out = lb
        .apply(&[
            kill("m", 1, t, "a"),
            kill("m", 1, t, "a"),
            kill("m", 3, t, "b"),
            kill("m", 2, t, "b"),
        ])
        .await
        .unwrap();
    use ApplyOutcome::*;
    assert_eq!(out, vec![Applied, Duplicate, TooEarly, Applied]);
    assert_eq!(
        lb.apply(&[kill("m", 3, t + 5000, "b")]).await.unwrap(),
        vec![Applied]
    );
    // Ties: equal points rank the earlier achievement first, whatever the names.
    lb.apply(&[
        kill("n", 1, t + 9000, "zed"),
        kill("n", 2, t - 1000, "amy"),
        kill("n", 3, t + 1000, "bob"),
    ])
    .await
    .unwrap();
    let page = lb.top("global", 0, 10).await.unwrap().unwrap();
    let rows: Vec<_> = page
        .entries
        .iter()
        .map(|e| (e.rank, e.player.as_str(), e.score))
        .collect();
    assert_eq!(
        rows,
        vec![
            (1, "b", 2),
            (2, "amy", 1),
            (3, "a", 1),
            (4, "bob", 1),
            (5, "zed", 1)
        ]
    );
    assert_eq!(page.entries[0].name, "Name b");
    assert_eq!(page.total, 5);
    assert!(page.updated_at_ms.is_some());
    let page = lb.top("global", 1, 2).await.unwrap().unwrap();
    assert_eq!(
        page.entries.iter().map(|e| e.rank).collect::<Vec<_>>(),
        vec![2, 3]
    );
    let around = lb.around("global", "a", 1).await.unwrap().unwrap();
    let rows: Vec<_> = around
        .entries
        .iter()
        .map(|e| (e.rank, e.player.as_str()))
        .collect();
    assert_eq!(rows, vec![(2, "amy"), (3, "a"), (4, "bob")]);
    assert!(lb.around("global", "nobody", 1).await.unwrap().is_none());
    assert!(lb.top("no-such-board", 0, 10).await.unwrap().is_none());

    // A redelivered batch that straddles what was applied: only the new events count.
    let run = |seqs: std::ops::RangeInclusive<u64>| -> Vec<ScoredEvent> {
        seqs.map(|s| {
            kill(
                "r",
                s,
                t + s * 1000,
                if s % 2 == 0 { "even" } else { "odd" },
            )
        })
        .collect()
    };
    assert_eq!(lb.apply(&run(1..=3)).await.unwrap(), vec![Applied; 3]);
    assert_eq!(
        lb.apply(&run(2..=5)).await.unwrap(),
        vec![Duplicate, Duplicate, Applied, Applied]
    );
    assert_eq!(
        lb.apply(&run(7..=8)).await.unwrap(),
        vec![TooEarly, TooEarly]
    );
    assert_eq!(lb.apply(&run(1..=5)).await.unwrap(), vec![Duplicate; 5]);
    let odd = lb.around("global", "odd", 0).await.unwrap().unwrap();
    let even = lb.around("global", "even", 0).await.unwrap().unwrap();
    assert_eq!((odd.entries[0].score, even.entries[0].score), (3, 2));
}

#[tokio::test]
async fn memory_leaderboards_follow_the_rules() {
    leaderboard_suite(&MemoryLeaderboards::new()).await;
}

#[tokio::test]
async fn redis_leaderboards_follow_the_same_rules() {
    let prefix = format!("gs-adapter-{}:", unique());
    let lb = RedisLeaderboards::connect("redis://127.0.0.1:6379", &prefix)
        .await
        .expect("Redis on 127.0.0.1:6379");
    leaderboard_suite(&lb).await;
    // A script cache flush (as after a Redis restart) is survived by reloading the script.
    let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        lb.apply(&[kill("m", 4, 1_800_000_100_000, "a")])
            .await
            .unwrap(),
        vec![ApplyOutcome::Applied]
    );
    // Boards that end expire on their own.
    let mut ev = kill("m", 5, 1_800_000_200_000, "a");
    ev.changes = vec![BoardChange {
        keep_secs: Some(100),
        ..BoardChange::new("daily:2027-01-15", "a", 1)
    }];
    assert_eq!(lb.apply(&[ev]).await.unwrap(), vec![ApplyOutcome::Applied]);
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("{prefix}lb:daily:2027-01-15"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!((90..=100).contains(&ttl), "ttl {ttl}");
    let global_ttl: i64 = redis::cmd("TTL")
        .arg(format!("{prefix}lb:global"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(global_ttl, -1, "global never expires");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut c)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut c)
        .await
        .unwrap();
}

/// Two gateways sharing stream places through the real Redis: caps hold across them, places
/// given back are free again, a crashed gateway's unrenewed leases lapse, renewed ones stay,
/// and the handshake rate is counted once for the fleet.
#[tokio::test]
async fn redis_stream_leases_cap_across_gateways() {
    use backends::{RedisStreamLeases, Refusal};
    let prefix = format!("gs-adapter-{}:", unique());
    let a = RedisStreamLeases::connect("redis://127.0.0.1:6379", &prefix)
        .await
        .expect("Redis on 127.0.0.1:6379");
    let b = RedisStreamLeases::connect("redis://127.0.0.1:6379", &prefix)
        .await
        .unwrap();
    let rate = (100, Duration::from_secs(1));
    let long = Duration::from_secs(30);
    let caps = |user| [(user, 2usize), ("addr:10.0.0.1", 3usize)];
    assert_eq!(
        a.take("10.0.0.1", rate, &caps("user:ann"), "a-1", long)
            .await
            .unwrap(),
        Ok(())
    );
    assert_eq!(
        b.take("10.0.0.1", rate, &caps("user:ann"), "b-1", long)
            .await
            .unwrap(),
        Ok(())
    );
    assert_eq!(
        a.take("10.0.0.1", rate, &caps("user:ann"), "a-2", long)
            .await
            .unwrap(),
        Err(Refusal::Cap(0)),
        "the user's third stream, on either gateway"
    );
    assert_eq!(
        b.take("10.0.0.1", rate, &caps("user:bob"), "b-2", long)
            .await
            .unwrap(),
        Ok(())
    );
    assert_eq!(
        b.take("10.0.0.1", rate, &caps("user:cat"), "b-3", long)
            .await
            .unwrap(),
        Err(Refusal::Cap(1)),
        "the address's fourth stream"
    );
    // A refused take left nothing behind: giving one back makes exactly one place.
    b.give_back(&["user:ann", "addr:10.0.0.1"], "b-1")
        .await
        .unwrap();
    assert_eq!(
        a.take("10.0.0.1", rate, &caps("user:ann"), "a-3", long)
            .await
            .unwrap(),
        Ok(())
    );
    assert_eq!(
        a.take("10.0.0.1", rate, &caps("user:ann"), "a-4", long)
            .await
            .unwrap(),
        Err(Refusal::Cap(0))
    );

    // Lapsing: gateway b "crashes" holding dan's lease; a keeps renewing eve's.
    let short = Duration::from_millis(400);
    let one = |user| [(user, 1usize)];
    assert_eq!(
        b.take("10.0.0.2", rate, &one("user:dan"), "b-9", short)
            .await
            .unwrap(),
        Ok(())
    );
    assert_eq!(
        a.take("10.0.0.2", rate, &one("user:eve"), "a-9", short)
            .await
            .unwrap(),
        Ok(())
    );
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        a.renew(&[(vec!["user:eve".into()], "a-9".into())], short)
            .await
            .unwrap();
    }
    assert_eq!(
        a.take("10.0.0.2", rate, &one("user:dan"), "a-10", short)
            .await
            .unwrap(),
        Ok(()),
        "the crashed gateway's lease lapsed"
    );
    assert_eq!(
        a.take("10.0.0.2", rate, &one("user:eve"), "a-11", short)
            .await
            .unwrap(),
        Err(Refusal::Cap(0)),
        "a renewed lease holds its place"
    );

    // The handshake rate is shared: 3 per window across both gateways.
    let tight = (3, Duration::from_secs(60));
    let mut outcomes = Vec::new();
    for (i, g) in [&a, &b, &a, &b].iter().enumerate() {
        outcomes.push(
            g.take("10.0.0.3", tight, &[], &format!("r-{i}"), long)
                .await
                .unwrap(),
        );
    }
    assert_eq!(outcomes, vec![Ok(()), Ok(()), Ok(()), Err(Refusal::Rate)]);

    let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}
