//! The reference a chaos run is judged against: every event the game servers wrote to the match
//! log, each counted once by its `(match, epoch, seq)`, folded into what the leaderboards and
//! the history must say. Pure functions; the runner feeds them what it read back.

use std::collections::{BTreeMap, BTreeSet};

use protocol::{EventRecord, LogKind, LogRecord, MatchEvent, PlayerResult};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MatchReference {
    pub epochs: BTreeSet<u64>,
    pub started: bool,
    /// The results the match ended with, as its last room wrote them.
    pub ended: Option<Vec<PlayerResult>>,
    pub kills: BTreeMap<String, u64>,
    pub deaths: BTreeMap<String, u64>,
}

#[derive(Debug, Default, Clone)]
pub struct Reference {
    pub matches: BTreeMap<String, MatchReference>,
    /// Points on the global board per player.
    pub points: BTreeMap<String, i64>,
    pub kills: BTreeMap<String, u64>,
    pub deaths: BTreeMap<String, u64>,
    pub events: u64,
    /// Records delivered twice under one `(match, epoch, seq)` with the same body (the log's
    /// own dedupe window should make this 0; the reference counts them once either way).
    pub redelivered: u64,
    /// Two different events under one `(match, epoch, seq)`: the log itself is inconsistent.
    pub conflicts: Vec<String>,
}

impl Reference {
    pub fn kill_count(&self) -> u64 {
        self.kills.values().sum()
    }

    /// Matches whose end is in the log.
    pub fn ended(&self) -> impl Iterator<Item = (&String, &Vec<PlayerResult>)> {
        self.matches
            .iter()
            .filter_map(|(id, m)| m.ended.as_ref().map(|r| (id, r)))
    }
}

pub fn reference(records: &[LogRecord]) -> Reference {
    let mut r = Reference::default();
    let mut seen: BTreeMap<(String, u64, u64), EventRecord> = BTreeMap::new();
    for record in records.iter().filter(|r| r.kind == LogKind::Event) {
        let Ok(ev) = serde_json::from_slice::<EventRecord>(&record.body) else {
            r.conflicts.push(format!(
                "{}:{}: an event body that does not parse",
                record.match_id, record.epoch
            ));
            continue;
        };
        let key = (record.match_id.clone(), record.epoch, ev.seq);
        if let Some(first) = seen.get(&key) {
            if first.event == ev.event {
                r.redelivered += 1;
            } else {
                r.conflicts.push(format!(
                    "{}:{} seq {}: {:?} and {:?}",
                    key.0, key.1, key.2, first.event, ev.event
                ));
            }
            continue;
        }
        r.events += 1;
        let m = r.matches.entry(record.match_id.clone()).or_default();
        m.epochs.insert(record.epoch);
        match &ev.event {
            MatchEvent::MatchStarted {} => m.started = true,
            MatchEvent::Kill { killer, victim } => {
                *m.kills.entry(killer.clone()).or_default() += 1;
                *m.deaths.entry(victim.clone()).or_default() += 1;
                *r.kills.entry(killer.clone()).or_default() += 1;
                *r.deaths.entry(victim.clone()).or_default() += 1;
            }
            MatchEvent::MatchEnded { results } => m.ended = Some(results.clone()),
            MatchEvent::PlayerJoined { .. } | MatchEvent::PlayerLeft { .. } => {}
        }
        for (player, points) in ev.event.score_changes() {
            *r.points.entry(player.to_string()).or_default() += points;
        }
        seen.insert(key, ev);
    }
    r
}

/// Differences between a board as read and the points it must hold (players with 0 points may
/// be absent from either).
pub fn board_differences(
    expected: &BTreeMap<String, i64>,
    actual: &BTreeMap<String, i64>,
) -> Vec<String> {
    let players: BTreeSet<&String> = expected.keys().chain(actual.keys()).collect();
    players
        .into_iter()
        .filter_map(|p| {
            let (e, a) = (
                expected.get(p).copied().unwrap_or(0),
                actual.get(p).copied().unwrap_or(0),
            );
            (e != a).then(|| format!("{p}: {a} points, the log says {e}"))
        })
        .collect()
}

/// Differences between a match's results and its kills and deaths in the log (a result line
/// per player who took part; score is one point per kill).
pub fn results_differences(m: &MatchReference, results: &[PlayerResult]) -> Vec<String> {
    let mut out = Vec::new();
    let mut listed = BTreeSet::new();
    for line in results {
        listed.insert(line.player.as_str());
        let kills = m.kills.get(&line.player).copied().unwrap_or(0);
        let deaths = m.deaths.get(&line.player).copied().unwrap_or(0);
        if u64::from(line.kills) != kills
            || u64::from(line.deaths) != deaths
            || u64::from(line.score) != kills
        {
            out.push(format!(
                "{}: score {} kills {} deaths {}, the log says {kills} kills {deaths} deaths",
                line.player, line.score, line.kills, line.deaths
            ));
        }
    }
    for p in m.kills.keys().chain(m.deaths.keys()) {
        if !listed.contains(p.as_str()) {
            out.push(format!("{p}: in the log's kills but not in the results"));
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(match_id: &str, epoch: u64, seq: u64, event: MatchEvent) -> LogRecord {
        LogRecord {
            match_id: match_id.into(),
            epoch,
            version: seq * 3,
            kind: LogKind::Event,
            body: serde_json::to_vec(&EventRecord {
                seq,
                region: "eu".into(),
                at_ms: 1,
                event,
            })
            .unwrap()
            .into(),
        }
    }

    fn kill(k: &str, v: &str) -> MatchEvent {
        MatchEvent::Kill {
            killer: k.into(),
            victim: v.into(),
        }
    }

    fn line(p: &str, kills: u32, deaths: u32) -> PlayerResult {
        PlayerResult {
            player: p.into(),
            name: p.into(),
            score: kills,
            kills,
            deaths,
        }
    }

    #[test]
    fn counts_each_event_once_across_epochs() {
        let log = vec![
            event("m", 1, 1, MatchEvent::MatchStarted {}),
            event("m", 1, 2, kill("a", "b")),
            event("m", 1, 2, kill("a", "b")),
            // Taken over: epoch 2 numbers its events from 1 again.
            event("m", 2, 1, kill("b", "a")),
            event("m", 2, 2, kill("a", "b")),
            event(
                "m",
                2,
                3,
                MatchEvent::MatchEnded {
                    results: vec![line("a", 2, 1), line("b", 1, 2)],
                },
            ),
        ];
        let r = reference(&log);
        assert_eq!(r.redelivered, 1);
        assert!(r.conflicts.is_empty());
        assert_eq!(r.kill_count(), 3);
        assert_eq!(r.points["a"], 2);
        let m = &r.matches["m"];
        assert_eq!(m.epochs.len(), 2);
        assert!(results_differences(m, m.ended.as_ref().unwrap()).is_empty());
        // A result that lost a kill is caught.
        let wrong = vec![line("a", 1, 1), line("b", 1, 2)];
        assert_eq!(results_differences(m, &wrong).len(), 1);
        // So is a player missing from the results.
        assert_eq!(results_differences(m, &[line("a", 2, 1)]).len(), 1);
    }

    #[test]
    fn a_conflicting_event_under_one_seq_is_reported() {
        let log = vec![
            event("m", 1, 1, kill("a", "b")),
            event("m", 1, 1, kill("b", "a")),
        ];
        assert_eq!(reference(&log).conflicts.len(), 1);
    }

    #[test]
    fn board_differences_name_each_player() {
        let expected = BTreeMap::from([("a".to_string(), 2), ("b".to_string(), 1)]);
        let actual = BTreeMap::from([("a".to_string(), 2), ("c".to_string(), 1)]);
        let d = board_differences(&expected, &actual);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(board_differences(&expected, &expected).is_empty());
    }
}
