//! The aggregator role: two durable consumers of every match's events.
//!
//! - `<name>-leaderboards` applies score changes to the leaderboards exactly once (the
//!   leaderboard backend checks each event's gapless seq atomically with the change) and acks
//!   only after the change is durable.
//! - `<name>-history` writes match history in batches; while the history store is down it
//!   retries the same batch (nothing is acked, so nothing is lost) without holding back the
//!   leaderboards, which have their own consumer.

use std::sync::Arc;
use std::time::Duration;

use backends::leaderboard::periods;
use backends::{
    ApplyOutcome, BoardChange, DeliveredEvent, EventConsumer, History, HistoryRecord, Leaderboards,
    MatchLog, ScoredEvent, TickBus,
};
use httpkit::Shutdown;
use protocol::{EventRecord, LogRecord, MatchEvent};
use tracing::Instrument;

mod metrics;
pub use metrics::register as register_metrics;
pub mod rebuild;

#[derive(Debug, Clone)]
pub struct AggregatorConfig {
    /// Durable consumer name prefix; aggregators with the same name share the work.
    pub consumer: String,
    /// Events per batch at most.
    pub batch_size: usize,
    /// How long a batch waits to fill (the batch goes out at the size or this, whichever first).
    pub batch_wait: Duration,
    pub retention: BoardRetention,
}

/// How long boards that end are kept: past days and weeks, and finished matches' scoreboards.
#[derive(Debug, Clone, Copy)]
pub struct BoardRetention {
    /// Kept this long after their day ends.
    pub daily: Duration,
    /// Kept this long after their week ends.
    pub weekly: Duration,
    /// Kept this long after the match's last score.
    pub per_match: Duration,
}

impl Default for BoardRetention {
    fn default() -> Self {
        BoardRetention {
            daily: Duration::from_secs(7 * 86_400),
            weekly: Duration::from_secs(5 * 7 * 86_400),
            per_match: Duration::from_secs(86_400),
        }
    }
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        AggregatorConfig {
            consumer: "aggregator".into(),
            batch_size: 5000,
            batch_wait: Duration::from_millis(50),
            retention: BoardRetention::default(),
        }
    }
}

/// The leaderboard changes an event makes: each point counts on `global`, the event's day and
/// ISO week (`daily:<date>`, `weekly:<week>`, UTC), its match (`match:<id>`) and its region
/// (`region:<region>`).
pub fn scored_event(
    record: &LogRecord,
    event: &EventRecord,
    retention: &BoardRetention,
    now_ms: u64,
) -> ScoredEvent {
    let at = event.at_ms;
    // Keep a period board until its end plus the retention, counted from now (a replayed old
    // event must not extend it); a board already past that gets no change at all.
    let keep = |end_ms: u64, keep: Duration| {
        let until = end_ms + keep.as_millis() as u64;
        (until > now_ms).then(|| (until - now_ms).div_ceil(1000))
    };
    let mut changes = Vec::new();
    for (player, points) in event.event.score_changes() {
        changes.push(BoardChange::new("global", player, points));
        if let Some(k) = keep(periods::day_end_ms(at), retention.daily) {
            changes.push(BoardChange {
                keep_secs: Some(k),
                ..BoardChange::new(periods::daily_board(at), player, points)
            });
        }
        if let Some(k) = keep(periods::week_end_ms(at), retention.weekly) {
            changes.push(BoardChange {
                keep_secs: Some(k),
                ..BoardChange::new(periods::weekly_board(at), player, points)
            });
        }
        if let Some(k) = keep(at, retention.per_match) {
            changes.push(BoardChange {
                keep_secs: Some(k),
                ..BoardChange::new(format!("match:{}", record.match_id), player, points)
            });
        }
        if !event.region.is_empty() {
            changes.push(BoardChange::new(
                format!("region:{}", event.region),
                player,
                points,
            ));
        }
    }
    let names = match &event.event {
        MatchEvent::PlayerJoined { player, name, .. } => vec![(player.clone(), name.clone())],
        _ => Vec::new(),
    };
    ScoredEvent {
        match_id: record.match_id.clone(),
        epoch: record.epoch,
        seq: event.seq,
        at_ms: event.at_ms,
        changes,
        names,
    }
}

/// The history rows an event makes.
pub fn history_records(record: &LogRecord, event: &EventRecord) -> Vec<HistoryRecord> {
    let match_id = record.match_id.clone();
    let seen = HistoryRecord::EventSeen {
        match_id: match_id.clone(),
        epoch: record.epoch,
        seq: event.seq,
    };
    let mut records = vec![seen];
    records.extend(match &event.event {
        MatchEvent::MatchStarted {} => vec![HistoryRecord::MatchStarted {
            match_id,
            epoch: record.epoch,
            region: event.region.clone(),
            at_ms: event.at_ms,
        }],
        MatchEvent::PlayerJoined { player, name, .. } => vec![HistoryRecord::PlayerSeen {
            player: player.clone(),
            name: name.clone(),
        }],
        MatchEvent::PlayerLeft { .. } => Vec::new(),
        MatchEvent::Kill { killer, victim } => vec![HistoryRecord::Kill {
            match_id,
            epoch: record.epoch,
            seq: event.seq,
            killer: killer.clone(),
            victim: victim.clone(),
            at_ms: event.at_ms,
        }],
        MatchEvent::MatchEnded { results } => vec![HistoryRecord::MatchEnded {
            match_id,
            at_ms: event.at_ms,
            results: results.clone(),
        }],
    });
    records
}

/// Decodes a batch; events that cannot be decoded are acked and logged (they can never apply).
async fn decode(
    consumer: &mut dyn EventConsumer,
    batch: Vec<DeliveredEvent>,
) -> Vec<(DeliveredEvent, EventRecord)> {
    let mut out = Vec::with_capacity(batch.len());
    for d in batch {
        match serde_json::from_slice::<EventRecord>(&d.record.body) {
            Ok(ev) => out.push((d, ev)),
            Err(e) => {
                tracing::error!(match_id = %d.record.match_id, version = d.record.version, error = %e, "undecodable event dropped");
                metrics::UNDECODABLE.inc();
                let _ = consumer.ack(&d).await;
            }
        }
    }
    out
}

/// The next decoded batch: `None` at shutdown, empty when nothing came in time (or the fetch
/// failed, after a short pause).
async fn next_events(
    consumer: &mut dyn EventConsumer,
    config: &AggregatorConfig,
    shutdown: &Shutdown,
) -> Option<Vec<(DeliveredEvent, EventRecord)>> {
    let batch = tokio::select! {
        b = consumer.next_batch(config.batch_size, config.batch_wait) => b,
        _ = shutdown.cancelled() => return None,
    };
    match batch {
        Ok(b) if b.is_empty() => Some(Vec::new()),
        Ok(b) => Some(decode(consumer, b).await),
        Err(e) => {
            tracing::warn!(error = %e, "fetching events failed");
            tokio::time::sleep(Duration::from_millis(500)).await;
            Some(Vec::new())
        }
    }
}

async fn open_consumer(
    log: &dyn MatchLog,
    name: &str,
    shutdown: &Shutdown,
) -> Option<Box<dyn EventConsumer>> {
    loop {
        match log.event_consumer(name).await {
            Ok(c) => return Some(c),
            Err(e) => {
                tracing::warn!(consumer = name, error = %e, "cannot open event consumer; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.cancelled() => return None,
                }
            }
        }
    }
}

/// Runs both consumers until `shutdown`.
pub async fn run(
    config: AggregatorConfig,
    log: Arc<dyn MatchLog>,
    ticks: Arc<dyn TickBus>,
    boards: Arc<dyn Leaderboards>,
    history: Arc<dyn History>,
    shutdown: Shutdown,
) {
    let lb = tokio::spawn(run_leaderboards(
        config.clone(),
        log.clone(),
        ticks,
        boards,
        shutdown.clone(),
    ));
    let hist = tokio::spawn(run_history(config, log, history, shutdown));
    let _ = tokio::join!(lb, hist);
}

/// Publishes each board that changed, at most once a second per board, with its top 100: the
/// latest state wins, so a burst of changes costs one tick.
#[derive(Default)]
struct Ticker {
    pending: std::collections::HashSet<String>,
    last_sent: std::collections::HashMap<String, std::time::Instant>,
}

impl Ticker {
    const EVERY: Duration = Duration::from_secs(1);

    async fn flush(&mut self, ticks: &dyn TickBus, boards: &dyn Leaderboards) {
        let due: Vec<String> = self
            .pending
            .iter()
            .filter(|b| {
                self.last_sent
                    .get(*b)
                    .is_none_or(|t| t.elapsed() >= Self::EVERY)
            })
            .cloned()
            .collect();
        for board in due {
            self.pending.remove(&board);
            self.last_sent
                .insert(board.clone(), std::time::Instant::now());
            let page = match boards.top(&board, 0, 100).await {
                Ok(Some(page)) => page,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, %board, "cannot read board for its tick");
                    continue;
                }
            };
            let tick = serde_json::json!({
                "type": "leaderboard",
                "board": board,
                "version": page.updated_at_ms.unwrap_or_else(protocol::now_ms),
                "updated_at": page.updated_at_ms,
                "total": page.total,
                "entries": page.entries,
            });
            match ticks
                .publish_tick(&board, serde_json::to_vec(&tick).expect("json").into())
                .await
            {
                Ok(()) => metrics::TICKS.inc(),
                Err(e) => tracing::warn!(error = %e, %board, "tick publish failed"),
            }
        }
        // Forget boards that have been quiet for a while (bounds the map by recent activity).
        self.last_sent
            .retain(|_, t| t.elapsed() < Duration::from_secs(10));
    }
}

async fn run_leaderboards(
    config: AggregatorConfig,
    log: Arc<dyn MatchLog>,
    ticks: Arc<dyn TickBus>,
    boards: Arc<dyn Leaderboards>,
    shutdown: Shutdown,
) {
    let name = format!("{}-leaderboards", config.consumer);
    let Some(mut consumer) = open_consumer(&*log, &name, &shutdown).await else {
        return;
    };
    let mut last_heartbeat = std::time::Instant::now() - Duration::from_secs(60);
    let mut ticker = Ticker::default();
    loop {
        ticker.flush(&*ticks, &*boards).await;
        // Tell readers we are alive and how far behind, about once a second.
        if last_heartbeat.elapsed() >= Duration::from_secs(1) {
            last_heartbeat = std::time::Instant::now();
            let backlog = consumer.backlog().await.unwrap_or(0);
            metrics::BACKLOG.set(backlog as i64);
            if let Err(e) = boards.heartbeat(backlog).await {
                tracing::warn!(error = %e, "leaderboard heartbeat failed");
            }
        }
        let Some(events) = next_events(&mut *consumer, &config, &shutdown).await else {
            return;
        };
        if events.is_empty() {
            continue;
        }
        let span = tracing::info_span!(
            target: "grandstand::trace",
            "aggregator.leaderboard_batch",
            events = events.len()
        );
        async {
            let scored: Vec<ScoredEvent> = events
                .iter()
                .map(|(d, e)| scored_event(&d.record, e, &config.retention, protocol::now_ms()))
                .collect();
            let started = std::time::Instant::now();
            match boards.apply(&scored).await {
                Ok(outcomes) => {
                    metrics::APPLY_SECONDS.observe(started.elapsed().as_secs_f64());
                    for ((scored, (delivered, _)), outcome) in scored.iter().zip(&events).zip(outcomes)
                    {
                        let result = match outcome {
                            ApplyOutcome::Applied => {
                                metrics::APPLIED.inc();
                                ticker
                                    .pending
                                    .extend(scored.changes.iter().map(|c| c.board.clone()));
                                consumer.ack(delivered).await
                            }
                            ApplyOutcome::Duplicate => {
                                metrics::DUPLICATES.inc();
                                consumer.ack(delivered).await
                            }
                            ApplyOutcome::TooEarly => {
                                metrics::TOO_EARLY.inc();
                                consumer
                                    .retry_later(delivered, Duration::from_millis(200))
                                    .await
                            }
                        };
                        if let Err(e) = result {
                            // Not acked: it will be redelivered and then found to be a duplicate.
                            tracing::warn!(error = %e, "ack failed");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "leaderboard store unavailable; batch will be redelivered");
                    metrics::APPLY_ERRORS.inc();
                    for (delivered, _) in &events {
                        let _ = consumer
                            .retry_later(delivered, Duration::from_secs(1))
                            .await;
                    }
                }
            }
        }
        .instrument(span)
        .await;
    }
}

async fn run_history(
    config: AggregatorConfig,
    log: Arc<dyn MatchLog>,
    history: Arc<dyn History>,
    shutdown: Shutdown,
) {
    let name = format!("{}-history", config.consumer);
    let Some(mut consumer) = open_consumer(&*log, &name, &shutdown).await else {
        return;
    };
    loop {
        let Some(events) = next_events(&mut *consumer, &config, &shutdown).await else {
            return;
        };
        if events.is_empty() {
            continue;
        }
        let span = tracing::info_span!(
            target: "grandstand::trace",
            "aggregator.history_batch",
            events = events.len()
        );
        let written = async {
            let records: Vec<HistoryRecord> = events
                .iter()
                .flat_map(|(d, e)| history_records(&d.record, e))
                .collect();
            // Retry the same batch until the store takes it: a history outage pauses this consumer
            // only, and nothing is acked (so nothing is lost) until the write is durable.
            let mut backoff = Duration::from_millis(200);
            loop {
                match history.write(&records).await {
                    Ok(()) => {
                        metrics::HISTORY_WRITTEN.inc_by(records.len() as u64);
                        for (d, _) in &events {
                            if let Err(e) = consumer.ack(d).await {
                                tracing::warn!(error = %e, "ack failed; the write is idempotent");
                            }
                        }
                        return true;
                    }
                    Err(e) => {
                        metrics::HISTORY_ERRORS.inc();
                        tracing::warn!(error = %e, "history write failed; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = shutdown.cancelled() => {
                                // Hand the unwritten events back now, so the next aggregator gets
                                // them at once instead of after the ack wait runs out.
                                for (d, _) in &events {
                                    let _ = consumer.retry_later(d, Duration::ZERO).await;
                                }
                                return false;
                            }
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
        }
        .instrument(span)
        .await;
        if !written {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use protocol::LogKind;

    #[test]
    fn kills_score_the_killer_on_every_board() {
        let rec = LogRecord {
            match_id: "m".into(),
            epoch: 3,
            version: 9,
            kind: LogKind::Event,
            body: Bytes::new(),
        };
        // 2026-11-21 12:00 UTC, a Saturday.
        let at = 1_795_262_400_000;
        let kill = MatchEvent::Kill {
            killer: "a".into(),
            victim: "b".into(),
        };
        let ev = EventRecord {
            seq: 4,
            region: "eu".into(),
            at_ms: at,
            event: kill,
        };
        let r = BoardRetention::default();
        let s = scored_event(&rec, &ev, &r, at);
        assert_eq!((s.epoch, s.seq, s.at_ms), (3, 4, at));
        let boards: Vec<_> = s
            .changes
            .iter()
            .map(|c| (c.board.as_str(), c.player.as_str(), c.points, c.keep_secs))
            .collect();
        assert_eq!(
            boards,
            vec![
                ("global", "a", 1, None),
                ("daily:2026-11-21", "a", 1, Some(12 * 3600 + 7 * 86_400)),
                ("weekly:2026-W47", "a", 1, Some(36 * 3600 + 35 * 86_400)),
                ("match:m", "a", 1, Some(86_400)),
                ("region:eu", "a", 1, None),
            ]
        );
        assert_eq!(
            history_records(&rec, &ev).len(),
            2,
            "the kill and its event identity"
        );
        // Replayed long after: the day and the match are past their retention, the week not.
        let later = scored_event(&rec, &ev, &r, at + 9 * 86_400_000);
        let boards: Vec<_> = later.changes.iter().map(|c| c.board.as_str()).collect();
        assert_eq!(boards, vec!["global", "weekly:2026-W47", "region:eu"]);
        let joined = MatchEvent::PlayerJoined {
            player: "c".into(),
            name: "Cy".into(),
            bot: true,
            id: 3,
        };
        let join = EventRecord {
            seq: 5,
            region: "eu".into(),
            at_ms: 1,
            event: joined,
        };
        let s = scored_event(&rec, &join, &r, at);
        assert_eq!(s.names, vec![("c".to_string(), "Cy".to_string())]);
        assert!(s.changes.is_empty());
    }
}
