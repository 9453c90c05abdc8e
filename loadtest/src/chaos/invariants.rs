//! After the faults: the log the game servers wrote, drained once the consumers caught up, and
//! every invariant checked against it (leaderboards, history, results, matches going on).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use backends::History;

use super::cluster::Probe;
use super::fleet::Fleet;
use super::{FaultRecord, Invariant};
use testkit::Break;

/// After the game servers stopped: waits until the leaderboards and the history hold every
/// event of the log (or `limit`), then returns the log.
pub(super) async fn drain(
    probe: &Probe,
    limit: Duration,
) -> anyhow::Result<Vec<protocol::LogRecord>> {
    let deadline = Instant::now() + limit;
    loop {
        let events = probe.log_events().await?;
        let reference = super::audit::reference(&events);
        let (boards, history) = probe.stores_caught_up().await;
        let exact = probe
            .board("global")
            .await
            .map(|b| b.values().sum::<i64>() == reference.kill_count() as i64)
            .unwrap_or(false);
        if (boards && history && exact) || Instant::now() > deadline {
            return Ok(events);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub(super) fn invariant(name: &str, problems: &[String], ok_detail: String) -> Invariant {
    Invariant {
        name: name.into(),
        held: problems.is_empty(),
        detail: if problems.is_empty() {
            ok_detail
        } else {
            let mut d = format!("{} problem(s): ", problems.len());
            d.push_str(
                &problems
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; "),
            );
            d
        },
    }
}

pub(super) async fn audit_run(
    probe: &Probe,
    fleet: &Fleet,
    records: &[FaultRecord],
    events: &[protocol::LogRecord],
) -> Vec<Invariant> {
    let reference = super::audit::reference(events);
    let mut out = Vec::new();

    // Viewers.
    let mut breaks: Vec<String> = Vec::new();
    let (mut messages, mut snapshots, mut resumes, mut reconnects, mut epochs, mut watched) =
        (0, 0, 0, 0, 0, 0);
    for (i, v) in fleet.viewers.iter().enumerate() {
        let t = v.tally.lock().unwrap();
        messages += t.messages;
        snapshots += t.snapshots;
        resumes += t.resumes;
        reconnects += t.reconnects;
        epochs += t.epochs_entered;
        watched += t.matches;
        breaks.extend(
            t.breaks
                .iter()
                .map(|b: &Break| format!("viewer {i}: {b:?}")),
        );
    }
    out.push(invariant(
        "viewer version lines: no gap a snapshot did not cover, no duplicate",
        &breaks,
        format!(
            "{} viewers, {messages} messages, {snapshots} snapshots, {reconnects} reconnects \
             ({resumes} resumed from their position), {epochs} new epochs entered, {watched} \
             matches followed",
            fleet.viewers.len()
        ),
    ));
    let silent_viewers = fleet
        .viewers
        .iter()
        .filter(|v| v.tally.lock().unwrap().messages == 0)
        .count();
    out.push(invariant(
        "every viewer and player was served",
        &(if silent_viewers > 0 {
            vec![format!("{silent_viewers} viewers got no message")]
        } else {
            Vec::new()
        })
        .into_iter()
        .chain(
            fleet
                .players
                .iter()
                .enumerate()
                .filter(|(_, p)| p.tally.lock().unwrap().ticks == 0)
                .map(|(i, _)| format!("player {i} never played")),
        )
        .collect::<Vec<_>>(),
        {
            let (joins, ticks) = fleet.players.iter().fold((0, 0), |(j, t), p| {
                let p = p.tally.lock().unwrap();
                (j + p.joins, t + p.ticks)
            });
            format!(
                "{} players joined {joins} times and played {ticks} ticks",
                fleet.players.len()
            )
        },
    ));

    // The log itself.
    out.push(invariant(
        "the log: one event per (match, epoch, seq)",
        &reference.conflicts,
        format!(
            "{} events in {} matches, {} kills ({} redelivered copies, each counted once)",
            reference.events,
            reference.matches.len(),
            reference.kill_count(),
            reference.redelivered
        ),
    ));

    // Matches.
    let mut match_problems = Vec::new();
    let mut takeovers = 0;
    for (id, m) in &reference.matches {
        takeovers += m.epochs.len().saturating_sub(1);
        match &m.ended {
            None => match_problems.push(format!("{id} never ended")),
            Some(results) => match_problems.extend(
                super::audit::results_differences(m, results)
                    .into_iter()
                    .map(|d| format!("{id}: {d}")),
            ),
        }
    }
    for r in records {
        for id in &r.matches_lost {
            match_problems.push(format!("{id} stopped after {} of {}", r.fault, r.target));
        }
    }
    out.push(invariant(
        "every match ran on through the faults and ended with results equal to its kills in the log",
        &match_problems,
        format!(
            "{} matches, {takeovers} taken over in a new epoch, every one ended with exact results",
            reference.matches.len()
        ),
    ));

    // Leaderboards.
    let mut board_problems = Vec::new();
    match probe.board("global").await {
        Ok(global) => board_problems.extend(
            super::audit::board_differences(&reference.points, &global)
                .into_iter()
                .map(|d| format!("global {d}")),
        ),
        Err(e) => board_problems.push(format!("global board unreadable: {e}")),
    }
    for (id, m) in &reference.matches {
        let expected: BTreeMap<String, i64> = m
            .kills
            .iter()
            .map(|(p, k)| (p.clone(), *k as i64))
            .collect();
        match probe.board(&format!("match:{id}")).await {
            Ok(actual) => board_problems.extend(
                super::audit::board_differences(&expected, &actual)
                    .into_iter()
                    .map(|d| format!("match:{id} {d}")),
            ),
            Err(e) => board_problems.push(format!("match:{id} unreadable: {e}")),
        }
    }
    out.push(invariant(
        "leaderboards (Redis) equal the log: global and every match board",
        &board_problems,
        format!(
            "{} players, {} points on the global board, {} match boards exact",
            reference.points.len(),
            reference.points.values().sum::<i64>(),
            reference.matches.len()
        ),
    ));

    // History.
    let mut history_problems = Vec::new();
    for (id, m) in &reference.matches {
        match probe.history.match_summary(id).await {
            Ok(Some(s)) => {
                if s.ended_ms.is_none() {
                    history_problems.push(format!("{id}: not ended in PostgreSQL"));
                }
                if let Some(results) = &m.ended {
                    let mut a = s.results.clone();
                    let mut b = results.clone();
                    a.sort_by(|x, y| x.player.cmp(&y.player));
                    b.sort_by(|x, y| x.player.cmp(&y.player));
                    if a != b {
                        history_problems.push(format!("{id}: results differ from the log's"));
                    }
                }
            }
            Ok(None) => history_problems.push(format!("{id}: missing in PostgreSQL")),
            Err(e) => history_problems.push(format!("{id}: {e}")),
        }
    }
    let players: std::collections::BTreeSet<&String> = reference
        .kills
        .keys()
        .chain(reference.deaths.keys())
        .collect();
    for p in &players {
        let (k, d) = (
            reference.kills.get(*p).copied().unwrap_or(0),
            reference.deaths.get(*p).copied().unwrap_or(0),
        );
        match probe.history.player_stats(p).await {
            Ok(Some(s)) if s.kills == k && s.deaths == d => {}
            Ok(Some(s)) => history_problems.push(format!(
                "{p}: {} kills {} deaths in PostgreSQL, the log says {k} and {d}",
                s.kills, s.deaths
            )),
            Ok(None) => history_problems.push(format!("{p}: no stats in PostgreSQL")),
            Err(e) => history_problems.push(format!("{p}: {e}")),
        }
    }
    out.push(invariant(
        "PostgreSQL results and player totals equal the log",
        &history_problems,
        format!(
            "{} match results and {} players' kill/death totals exact",
            reference.matches.len(),
            players.len()
        ),
    ));

    let unrecovered: Vec<String> = records
        .iter()
        .filter(|r| r.recovered_ms.is_none())
        .map(|r| {
            format!(
                "{} of {}: still missing {}",
                r.fault, r.target, r.unrecovered
            )
        })
        .collect();
    out.push(invariant(
        "every fault recovered within the limit",
        &unrecovered,
        format!("{} faults, all recovered", records.len()),
    ));
    out
}
