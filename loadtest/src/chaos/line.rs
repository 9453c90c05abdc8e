//! What one viewer's stream must look like, as a pure rule: per epoch, every delta or event
//! follows the previous message's version by exactly one; only a snapshot may jump (forward, or
//! to a new epoch). Breaks are counted, not fatal: the chaos run reports them all.

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
}

/// One viewer's version line for one match.
#[derive(Debug, Default, Clone)]
pub struct VersionLine {
    position: Option<(u64, u64)>,
    pub messages: u64,
    pub snapshots: u64,
    /// Snapshots that moved the viewer to a new epoch (a match taken over after a crash).
    pub epochs_entered: u64,
}

impl VersionLine {
    /// Where the viewer is: `epoch:version`, for `since=` / `Last-Event-ID` on a reconnect.
    pub fn position(&self) -> Option<(u64, u64)> {
        self.position
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
}
