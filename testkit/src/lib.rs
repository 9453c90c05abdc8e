//! The kit the workspace's tests and `loadtest` share, so each rule is written once:
//!
//! - [`process`]: start a server (the `grandstand` binary, or any peer that logs where it
//!   listens) on port 0 with its output in a log file, and wait until it says where it
//!   listens;
//! - [`app`]: the real binary on a chosen backend (embedded, or isolated names on the real
//!   NATS, Redis and PostgreSQL of this machine) with typed requests as a client makes them;
//! - [`line`]: the one checker of what a viewer receives (the viewer protocol's version-line
//!   guarantee), used by the end-to-end tests and the chaos runner alike;
//! - [`wsclient`]: a WebSocket client that speaks what a browser does (permessage-deflate
//!   included) and can send what a browser never would.

pub mod app;
pub mod line;
pub mod process;
pub mod wsclient;

use std::time::{Duration, Instant};

pub use app::{App, Backend};
pub use line::{Break, MessageKind, VersionLine};
pub use process::{grandstand_bin, listening_url, Service};

/// Polls `f` until it returns `Some`, or gives up after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
