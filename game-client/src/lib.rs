//! The Grandstand player client: the protocol state machine with prediction, reconciliation
//! and interpolation (`core`, no I/O), and a UDP driver with an optional link conditioner that
//! adds latency, jitter and loss in process (`udp`). Used by `loadtest` and the example bot.

pub mod core;
pub mod link;
pub mod udp;

pub use crate::core::{ClientCore, ClientEvent, ClientStats, Intent, Phase};
pub use link::LinkConditioner;
pub use udp::{ClientError, UdpClient};
