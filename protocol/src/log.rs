//! Records of the versioned match log (docs/architecture.md, "The match log").

use bytes::Bytes;

use crate::ids::MatchId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogKind {
    /// Spectator-visible changes since the previous version; body is a [`crate::Delta`].
    Delta,
    /// A discrete fact; body is an [`crate::EventRecord`].
    Event,
    /// The full spectator state at `version` (after that version was applied); body is a
    /// [`crate::SpectatorState`]. Keyframes are not on the version line themselves.
    Keyframe,
}

impl LogKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LogKind::Delta => "delta",
            LogKind::Event => "event",
            LogKind::Keyframe => "keyframe",
        }
    }

    pub fn parse(s: &str) -> Option<LogKind> {
        match s {
            "delta" => Some(LogKind::Delta),
            "event" => Some(LogKind::Event),
            "keyframe" => Some(LogKind::Keyframe),
            _ => None,
        }
    }
}

/// One message of a match's log. `body` is the JSON of the payload, encoded once by the room's
/// publisher and shared from then on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub match_id: MatchId,
    pub epoch: u64,
    pub version: u64,
    pub kind: LogKind,
    pub body: Bytes,
}

impl LogRecord {
    /// The JetStream dedupe id, `<match>:<epoch>:<version>` (plus `:k` for keyframes, which
    /// share the version of the message they follow).
    pub fn msg_id(&self) -> String {
        match self.kind {
            LogKind::Keyframe => format!("{}:{}:{}:k", self.match_id, self.epoch, self.version),
            _ => format!("{}:{}:{}", self.match_id, self.epoch, self.version),
        }
    }

    /// The subject under `root` (`match` in production): `<root>.<match>.<kind>`.
    pub fn subject(&self, root: &str) -> String {
        format!("{root}.{}.{}", self.match_id, self.kind.as_str())
    }
}

/// Splits `<root>.<match>.<kind>` back into its match id and kind.
pub fn parse_subject<'a>(root: &str, subject: &'a str) -> Option<(&'a str, LogKind)> {
    let rest = subject.strip_prefix(root)?.strip_prefix('.')?;
    let (match_id, kind) = rest.rsplit_once('.')?;
    Some((match_id, LogKind::parse(kind)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_round_trip() {
        let r = LogRecord {
            match_id: "eu-1".into(),
            epoch: 7,
            version: 9,
            kind: LogKind::Event,
            body: Bytes::from_static(b"{}"),
        };
        assert_eq!(r.subject("t1.match"), "t1.match.eu-1.event");
        assert_eq!(
            parse_subject("t1.match", "t1.match.eu-1.event"),
            Some(("eu-1", LogKind::Event))
        );
        assert_eq!(parse_subject("match", "other.eu-1.event"), None);
        assert_eq!(parse_subject("match", "match.eu-1.bogus"), None);
        assert_eq!(r.msg_id(), "eu-1:7:9");
    }
}
