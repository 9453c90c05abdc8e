//! How many people watch each match, fleet-wide: every gateway states its viewers per match in
//! its membership heartbeat (each second); the API sums the live gateways' statements once a
//! second in the background, so `GET /v1/matches` reads a map and never waits on Redis.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use backends::Membership;

use crate::ViewerCounts;

/// Viewer counts summed over every live gateway of `membership`, refreshed every second until
/// `shutdown`. A failed read keeps the last counts (they lag, they do not drop to zero).
pub fn fleet_viewer_counts(
    membership: Arc<dyn Membership>,
    shutdown: httpkit::Shutdown,
) -> ViewerCounts {
    let counts: Arc<RwLock<HashMap<String, u64>>> = Arc::default();
    let writer = counts.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            match membership.members().await {
                Ok(gateways) => *writer.write().unwrap() = sum(&gateways),
                Err(e) => tracing::warn!(error = %e, "reading gateway viewer counts failed"),
            }
        }
    });
    Arc::new(move |match_id: &str| counts.read().unwrap().get(match_id).copied().unwrap_or(0))
}

fn sum(gateways: &[backends::GatewayInfo]) -> HashMap<String, u64> {
    let mut total = HashMap::new();
    for g in gateways {
        for (m, n) in &g.viewers {
            *total.entry(m.clone()).or_default() += n;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_are_summed_over_the_live_gateways() {
        let membership = Arc::new(backends::MemoryMembership::default());
        let gateway = |id: &str, viewers: &[(&str, u64)]| backends::GatewayInfo {
            id: id.into(),
            url: format!("http://{id}"),
            viewers: viewers.iter().map(|(m, n)| (m.to_string(), *n)).collect(),
        };
        let ttl = Duration::from_secs(30);
        membership
            .heartbeat(&gateway("a", &[("eu-1", 3), ("eu-2", 1)]), ttl)
            .await
            .unwrap();
        membership
            .heartbeat(&gateway("b", &[("eu-1", 4)]), ttl)
            .await
            .unwrap();
        let shutdown = httpkit::Shutdown::new();
        let counts = fleet_viewer_counts(membership, shutdown.clone());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!((counts("eu-1"), counts("eu-2"), counts("na-1")), (7, 1, 0));
        shutdown.cancel();
    }
}
