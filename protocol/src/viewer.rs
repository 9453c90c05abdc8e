//! The resume rule of the viewer protocol (docs/architecture.md, "Viewer protocol"), as a pure decision.

use std::fmt;

/// A point on a match's version line: `<epoch>:<version>`, as sent in SSE ids, `since=` and
/// `Last-Event-ID`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct StreamPosition {
    pub epoch: u64,
    pub version: u64,
}

impl fmt::Display for StreamPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.version)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PositionError {
    #[error("expected <epoch>:<version>, two unsigned integers separated by ':'")]
    Malformed,
}

/// Parses `<epoch>:<version>` strictly: ASCII digits only, no sign, no spaces, at most 20
/// digits each, and nothing else.
pub fn parse_position(s: &str) -> Result<StreamPosition, PositionError> {
    let (e, v) = s.split_once(':').ok_or(PositionError::Malformed)?;
    let num = |t: &str| -> Result<u64, PositionError> {
        if t.is_empty() || t.len() > 20 || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PositionError::Malformed);
        }
        t.parse().map_err(|_| PositionError::Malformed)
    };
    Ok(StreamPosition {
        epoch: num(e)?,
        version: num(v)?,
    })
}

/// What a (re)connecting viewer gets first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Send the retained messages with versions `from..=current`, then live ones.
    Replay { from: u64 },
    /// The viewer is already at the current version: send live messages only.
    UpToDate,
    /// Send a snapshot at the current version, then live messages.
    Snapshot,
}

/// Decides how to resume a viewer that last saw `since`, given the feed's current position and
/// the oldest version still retained in its delta ring (`None` when the ring is empty).
pub fn decide_resume(
    since: Option<StreamPosition>,
    current: StreamPosition,
    oldest_retained: Option<u64>,
) -> Resume {
    let Some(since) = since else {
        return Resume::Snapshot;
    };
    if since.epoch != current.epoch || since.version > current.version {
        return Resume::Snapshot;
    }
    if since.version == current.version {
        return Resume::UpToDate;
    }
    match oldest_retained {
        Some(oldest) if since.version + 1 >= oldest => Resume::Replay {
            from: since.version + 1,
        },
        _ => Resume::Snapshot,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(epoch: u64, version: u64) -> StreamPosition {
        StreamPosition { epoch, version }
    }

    #[test]
    fn parses_positions_strictly() {
        assert_eq!(parse_position("3:17"), Ok(pos(3, 17)));
        assert_eq!(parse_position("0:0"), Ok(pos(0, 0)));
        for bad in [
            "",
            ":",
            "3:",
            ":4",
            "3:4:5",
            "-1:2",
            "+1:2",
            " 1:2",
            "1:2 ",
            "a:b",
            "1.0:2",
            "99999999999999999999999:1",
            "18446744073709551616:1",
            "1;2",
            "１:2",
        ] {
            assert_eq!(
                parse_position(bad),
                Err(PositionError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn resume_decisions() {
        let cur = pos(5, 100);
        // No position: snapshot.
        assert_eq!(decide_resume(None, cur, Some(50)), Resume::Snapshot);
        // Same epoch, inside the window: replay the rest.
        assert_eq!(
            decide_resume(Some(pos(5, 60)), cur, Some(50)),
            Resume::Replay { from: 61 }
        );
        // Exactly one before the oldest retained: still covered.
        assert_eq!(
            decide_resume(Some(pos(5, 49)), cur, Some(50)),
            Resume::Replay { from: 50 }
        );
        // Outside the window.
        assert_eq!(
            decide_resume(Some(pos(5, 48)), cur, Some(50)),
            Resume::Snapshot
        );
        // Up to date.
        assert_eq!(
            decide_resume(Some(pos(5, 100)), cur, Some(50)),
            Resume::UpToDate
        );
        // Other epoch, older or newer.
        assert_eq!(
            decide_resume(Some(pos(4, 100)), cur, Some(50)),
            Resume::Snapshot
        );
        assert_eq!(
            decide_resume(Some(pos(6, 1)), cur, Some(50)),
            Resume::Snapshot
        );
        // A version from the future (another gateway ahead of us, or a forged one).
        assert_eq!(
            decide_resume(Some(pos(5, 101)), cur, Some(50)),
            Resume::Snapshot
        );
        // Empty ring: only an up-to-date viewer avoids the snapshot.
        assert_eq!(decide_resume(Some(pos(5, 99)), cur, None), Resume::Snapshot);
        assert_eq!(
            decide_resume(Some(pos(5, 100)), cur, None),
            Resume::UpToDate
        );
    }
}
