//! What one viewer's stream must look like, as a pure rule (the viewer protocol's guarantee,
//! docs/architecture.md): the first message is a snapshot; per epoch, every delta or event
//! follows the previous message's version by exactly one; only a snapshot may jump, and only
//! forward (a later version, or a later epoch). A snapshot from an older epoch goes back too.
//!
//! One checker for every client that judges a stream: the end-to-end tests fail on the first
//! break, the chaos runner counts them all.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Snapshot,
    Delta,
    Event,
}

impl MessageKind {
    pub fn parse(s: &str) -> Option<MessageKind> {
        match s {
            "snapshot" => Some(MessageKind::Snapshot),
            "delta" => Some(MessageKind::Delta),
            "event" => Some(MessageKind::Event),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Break {
    /// A delta or event skipped versions without a snapshot covering them.
    Gap { after: (u64, u64), got: (u64, u64) },
    /// A delta or event at or before a version already seen.
    Duplicate { after: (u64, u64), got: (u64, u64) },
    /// A delta or event of another epoch with no snapshot in between.
    EpochWithoutSnapshot { after: (u64, u64), got: (u64, u64) },
    /// A snapshot older than what the viewer already had (an earlier version, or epoch).
    SnapshotWentBack { after: (u64, u64), got: (u64, u64) },
    /// The stream of a match started with something other than a snapshot.
    NoSnapshotFirst { got: (u64, u64) },
    /// Not a viewer message: no `type`, `epoch` or `version`, or an unknown type.
    NotAMessage(String),
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = |p: &(u64, u64)| format!("{}:{}", p.0, p.1);
        match self {
            Break::Gap { after, got } => write!(f, "gap: after {} got {}", at(after), at(got)),
            Break::Duplicate { after, got } => {
                write!(f, "duplicate: after {} got {}", at(after), at(got))
            }
            Break::EpochWithoutSnapshot { after, got } => write!(
                f,
                "epoch changed without a snapshot: after {} got {}",
                at(after),
                at(got)
            ),
            Break::SnapshotWentBack { after, got } => {
                write!(f, "snapshot at {} went back from {}", at(got), at(after))
            }
            Break::NoSnapshotFirst { got } => {
                write!(f, "stream did not start with a snapshot (got {})", at(got))
            }
            Break::NotAMessage(why) => write!(f, "not a viewer message: {why}"),
        }
    }
}

impl std::error::Error for Break {}

/// One viewer's version line for one match.
#[derive(Debug, Default, Clone)]
pub struct VersionLine {
    position: Option<(u64, u64)>,
    pub messages: u64,
    pub snapshots: u64,
    /// Snapshots that moved the viewer to a new epoch (a match taken over after a crash).
    pub epochs_entered: u64,
    /// `status` messages (not on the version line).
    pub statuses: u64,
}

impl VersionLine {
    /// Where the viewer is: `epoch:version`, for `since=` / `Last-Event-ID` on a reconnect.
    pub fn position(&self) -> Option<(u64, u64)> {
        self.position
    }

    /// `since=` for a resume: `epoch:version` of the last message taken.
    pub fn since(&self) -> String {
        let (e, v) = self.position.expect("seen something");
        format!("{e}:{v}")
    }

    /// Takes one message as the viewer received it (its JSON envelope). A `status` message
    /// (the producer went down or came back) is not on the version line: it is counted and
    /// leaves the position where it is.
    pub fn observe_message(&mut self, message: &serde_json::Value) -> Result<(), Break> {
        let kind = message["type"].as_str();
        if kind == Some("status") {
            self.statuses += 1;
            return Ok(());
        }
        let (Some(kind), Some(epoch), Some(version)) = (
            kind.and_then(MessageKind::parse),
            message["epoch"].as_u64(),
            message["version"].as_u64(),
        ) else {
            let shown: String = message.to_string().chars().take(200).collect();
            return Err(Break::NotAMessage(shown));
        };
        self.observe(kind, epoch, version)
    }

    pub fn observe(&mut self, kind: MessageKind, epoch: u64, version: u64) -> Result<(), Break> {
        self.messages += 1;
        let got = (epoch, version);
        let verdict = match (kind, self.position) {
            (MessageKind::Snapshot, Some(after))
                if epoch < after.0 || (after.0 == epoch && version < after.1) =>
            {
                Err(Break::SnapshotWentBack { after, got })
            }
            (MessageKind::Snapshot, previous) => {
                self.snapshots += 1;
                if previous.is_some_and(|p| p.0 != epoch) {
                    self.epochs_entered += 1;
                }
                Ok(())
            }
            (_, None) => Err(Break::NoSnapshotFirst { got }),
            (_, Some(after)) if after.0 != epoch => Err(Break::EpochWithoutSnapshot { after, got }),
            (_, Some(after)) if version <= after.1 => Err(Break::Duplicate { after, got }),
            (_, Some(after)) if version > after.1 + 1 => Err(Break::Gap { after, got }),
            _ => Ok(()),
        };
        // After a break, follow what arrived so one hole is counted once, not on every later
        // message; a duplicate leaves the position where it was.
        match &verdict {
            Err(Break::Duplicate { .. }) | Err(Break::SnapshotWentBack { .. }) => {}
            _ => self.position = Some(got),
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MessageKind::*;

    #[test]
    fn an_unbroken_line_with_a_takeover_passes() {
        let mut l = VersionLine::default();
        l.observe(Snapshot, 1, 10).unwrap();
        l.observe(Delta, 1, 11).unwrap();
        l.observe(Event, 1, 12).unwrap();
        // A resume that found the viewer behind the ring: a snapshot covers the hole.
        l.observe(Snapshot, 1, 40).unwrap();
        l.observe(Delta, 1, 41).unwrap();
        // The match was taken over: a new epoch, entered by its snapshot.
        l.observe(Snapshot, 7, 1).unwrap();
        l.observe(Delta, 7, 2).unwrap();
        assert_eq!((l.messages, l.snapshots, l.epochs_entered), (7, 3, 1));
        assert_eq!(l.position(), Some((7, 2)));
    }

    #[test]
    fn every_kind_of_break_is_named() {
        let mut l = VersionLine::default();
        assert_eq!(
            l.observe(Delta, 1, 1),
            Err(Break::NoSnapshotFirst { got: (1, 1) })
        );
        let mut l = VersionLine::default();
        l.observe(Snapshot, 1, 5).unwrap();
        assert_eq!(
            l.observe(Delta, 1, 7),
            Err(Break::Gap {
                after: (1, 5),
                got: (1, 7)
            })
        );
        // The gap is counted once; the line goes on from what arrived.
        l.observe(Delta, 1, 8).unwrap();
        assert_eq!(
            l.observe(Delta, 1, 8),
            Err(Break::Duplicate {
                after: (1, 8),
                got: (1, 8)
            })
        );
        l.observe(Delta, 1, 9).unwrap();
        assert_eq!(
            l.observe(Delta, 2, 10),
            Err(Break::EpochWithoutSnapshot {
                after: (1, 9),
                got: (2, 10)
            })
        );
        assert_eq!(
            l.observe(Snapshot, 2, 3),
            Err(Break::SnapshotWentBack {
                after: (2, 10),
                got: (2, 3)
            })
        );
        assert_eq!(
            l.observe(Snapshot, 1, 30),
            Err(Break::SnapshotWentBack {
                after: (2, 10),
                got: (1, 30)
            })
        );
    }

    #[test]
    fn messages_are_read_from_their_json_envelope() {
        let mut l = VersionLine::default();
        let msg =
            |t: &str, e: u64, v: u64| serde_json::json!({"type": t, "epoch": e, "version": v});
        l.observe_message(&msg("snapshot", 3, 7)).unwrap();
        l.observe_message(&msg("event", 3, 8)).unwrap();
        assert_eq!(l.since(), "3:8");
        assert!(matches!(
            l.observe_message(&serde_json::json!({"type": "heartbeat", "epoch": 3})),
            Err(Break::NotAMessage(_))
        ));
        // A producer status is counted and leaves the position alone.
        l.observe_message(&serde_json::json!({"type": "status", "state": "producer_down"}))
            .unwrap();
        assert_eq!((l.since().as_str(), l.statuses), ("3:8", 1));
        // The rule the end-to-end tests used to miss: an older epoch's snapshot goes back.
        assert_eq!(
            l.observe_message(&msg("snapshot", 2, 100)),
            Err(Break::SnapshotWentBack {
                after: (3, 8),
                got: (2, 100)
            })
        );
        assert_eq!(
            Break::SnapshotWentBack {
                after: (3, 8),
                got: (2, 100)
            }
            .to_string(),
            "snapshot at 2:100 went back from 3:8"
        );
    }
}
