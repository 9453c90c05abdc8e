//! Rebuilding leaderboards after the leaderboard store lost them.
//!
//! 1. From history: for each match epoch, the events it holds without a gap (seq 1..=n) become
//!    synthetic events (kills with their points, every other seq empty) applied through the
//!    same exactly-once path into fresh keys, so the rebuilt `last applied` is exactly n.
//! 2. The fresh keys replace the live ones in one atomic step.
//! 3. The match log is replayed onto the live keys: what history already counted is a
//!    duplicate, what it had not yet written is applied. Running aggregators may keep applying
//!    meanwhile: the same exactly-once check keeps each event counted once.

use backends::{
    ApplyOutcome, History, Leaderboards, LogKind, MatchLog, RedisLeaderboards, ScoredEvent,
};
use bytes::Bytes;
use futures::StreamExt;
use protocol::{EventRecord, LogRecord, MatchEvent};

use crate::{scored_event, BoardRetention};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RebuildReport {
    pub match_epochs: usize,
    pub from_history: usize,
    pub replayed: usize,
    pub replay_applied: usize,
    /// Replayed events that could not apply because an earlier event of their match epoch is
    /// in neither history nor the retained log: those epochs' boards are short by them.
    pub unrecoverable: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error(transparent)]
    History(#[from] backends::HistoryError),
    #[error(transparent)]
    Boards(#[from] backends::BoardError),
    #[error(transparent)]
    Log(#[from] backends::LogError),
}

const CHUNK: usize = 5000;

/// Applies what history holds to `target` (step 1). Returns (match epochs, events).
pub async fn load_history(
    history: &dyn History,
    target: &dyn Leaderboards,
    retention: &BoardRetention,
) -> Result<(usize, usize), RebuildError> {
    let source = history.rebuild_source().await?;
    let now = protocol::now_ms();
    let mut events: Vec<ScoredEvent> = Vec::new();
    for e in &source.epochs {
        let mut kills = e.kills.iter().peekable();
        for seq in 1..=e.complete_through {
            let record = LogRecord {
                match_id: e.match_id.clone(),
                epoch: e.epoch,
                version: 0,
                kind: LogKind::Event,
                body: Bytes::new(),
            };
            let scored = match kills.next_if(|k| k.0 == seq) {
                Some((_, killer, victim, at_ms)) => {
                    let event = EventRecord {
                        seq,
                        region: e.region.clone(),
                        at_ms: *at_ms,
                        event: MatchEvent::Kill {
                            killer: killer.clone(),
                            victim: victim.clone(),
                        },
                    };
                    scored_event(&record, &event, retention, now)
                }
                None => ScoredEvent {
                    match_id: e.match_id.clone(),
                    epoch: e.epoch,
                    seq,
                    at_ms: now,
                    changes: Vec::new(),
                    names: Vec::new(),
                },
            };
            events.push(scored);
        }
    }
    // Names ride along, a hundred per event.
    for (event, names) in events.iter_mut().zip(source.names.chunks(100)) {
        event.names = names.to_vec();
    }
    for chunk in events.chunks(CHUNK) {
        target.apply(chunk).await?;
    }
    Ok((source.epochs.len(), events.len()))
}

/// Replays every retained event of the match log onto `target` (step 3).
pub async fn replay_log(
    log: &dyn MatchLog,
    target: &dyn Leaderboards,
    retention: &BoardRetention,
) -> Result<(usize, usize, usize), RebuildError> {
    let mut stream = log.all_events().await?;
    let (mut replayed, mut applied, mut too_early) = (0, 0, 0);
    let mut batch: Vec<ScoredEvent> = Vec::new();
    let now = protocol::now_ms();
    loop {
        let item = stream.next().await;
        let done = match &item {
            None => true,
            Some(Err(e)) => {
                return Err(RebuildError::Log(backends::LogError::Unavailable(
                    e.to_string(),
                )))
            }
            Some(Ok(item)) => {
                if let Ok(ev) = serde_json::from_slice::<EventRecord>(&item.record.body) {
                    batch.push(scored_event(&item.record, &ev, retention, now));
                }
                item.caught_up
            }
        };
        if batch.len() >= CHUNK || (done && !batch.is_empty()) {
            replayed += batch.len();
            for outcome in target.apply(&batch).await? {
                match outcome {
                    ApplyOutcome::Applied => applied += 1,
                    ApplyOutcome::Duplicate => {}
                    ApplyOutcome::TooEarly => too_early += 1,
                }
            }
            batch.clear();
        }
        if done {
            return Ok((replayed, applied, too_early));
        }
    }
}

/// Rebuilds the Redis leaderboards under `prefix` from history and the match log.
pub async fn rebuild_redis(
    redis_url: &str,
    prefix: &str,
    history: &dyn History,
    log: &dyn MatchLog,
    retention: &BoardRetention,
) -> Result<RebuildReport, RebuildError> {
    let fresh_prefix = format!("{prefix}rebuild-{}:", protocol::now_ms());
    let fresh = RedisLeaderboards::connect(redis_url, &fresh_prefix).await?;
    let (match_epochs, from_history) = load_history(history, &fresh, retention).await?;
    let swapped = fresh.swap_into(prefix).await?;
    tracing::info!(
        match_epochs,
        from_history,
        swapped,
        "history loaded and swapped in"
    );
    let live = RedisLeaderboards::connect(redis_url, prefix).await?;
    let (replayed, replay_applied, unrecoverable) = replay_log(log, &live, retention).await?;
    Ok(RebuildReport {
        match_epochs,
        from_history,
        replayed,
        replay_applied,
        unrecoverable,
    })
}
