use std::sync::LazyLock;

use prometheus::{register_int_counter, IntCounter};

pub static SNAPSHOT_LOADS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "api_snapshot_backend_reads_total",
        "Snapshot cache misses that read the match log"
    )
    .unwrap()
});
pub static STALE_SERVED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "api_stale_boards_served_total",
        "Board reads answered from the last known value while the store was down"
    )
    .unwrap()
});
pub static GUESTS_LIMITED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "api_guest_rate_limited_total",
        "Guest sign-ins refused by the per-IP limit"
    )
    .unwrap()
});

/// Registers every metric of this role at start, so each series is exported (at zero) from
/// the first scrape: a dashboard or an alert rule reading a counter that has not moved yet
/// sees 0, not "no data".
pub fn register() {
    LazyLock::force(&SNAPSHOT_LOADS);
    LazyLock::force(&STALE_SERVED);
    LazyLock::force(&GUESTS_LIMITED);
}
