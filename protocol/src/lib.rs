//! Pure shared types and codecs of Grandstand: the spectator state and its deltas, the
//! versioned match log records, the viewer feed state machine (snapshot + delta + resume) and
//! signed tokens. No I/O lives here, so every rule can be unit- and property-tested.

pub mod event;
pub mod feed;
pub mod ids;
pub mod log;
pub mod net;
pub mod partner;
pub mod placement;
pub mod state;
pub mod token;
pub mod viewer;
pub mod ws;

pub use event::{EventRecord, MatchEvent, PlayerResult};
pub use feed::{Applied, Encoded, Format, Frame, FrameKind, MatchFeed};
pub use ids::{valid_match_id, MatchId, PlayerId};
pub use log::{LogKind, LogRecord};
pub use state::{Arena, Delta, MatchStatus, PlayerView, Shot, SpectatorState};
pub use token::{Claims, ConnectClaims, ExternalTokens, TokenError, TokenSigner};
pub use viewer::{decide_resume, parse_position, PositionError, Resume, StreamPosition};

/// Milliseconds since the Unix epoch; the one clock every role stamps records with.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Microseconds since the Unix epoch: publish times, so sub-millisecond lags stay visible.
/// Seconds since the Unix epoch (token expiry is in seconds).
pub fn now_secs() -> u64 {
    now_ms() / 1000
}

pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
