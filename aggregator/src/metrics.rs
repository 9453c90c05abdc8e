use std::sync::LazyLock;

use prometheus::{
    register_histogram, register_int_counter, register_int_gauge, Histogram, IntCounter, IntGauge,
};

pub static TICKS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("agg_leaderboard_ticks_total", "Leaderboard ticks published").unwrap()
});
pub static BACKLOG: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "agg_leaderboard_backlog",
        "Events not yet applied to the leaderboards"
    )
    .unwrap()
});

pub static APPLIED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "agg_events_applied_total",
        "Events applied to the leaderboards"
    )
    .unwrap()
});
pub static DUPLICATES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "agg_events_duplicate_total",
        "Re-delivered events recognised and skipped"
    )
    .unwrap()
});
pub static TOO_EARLY: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "agg_events_too_early_total",
        "Events delivered before their predecessor (retried)"
    )
    .unwrap()
});
pub static APPLY_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "agg_apply_errors_total",
        "Batches the leaderboard store refused (retried)"
    )
    .unwrap()
});
pub static UNDECODABLE: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "agg_events_undecodable_total",
        "Events that could not be decoded"
    )
    .unwrap()
});
pub static HISTORY_WRITTEN: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("agg_history_records_total", "History records written").unwrap()
});
pub static HISTORY_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "agg_history_errors_total",
        "Failed history writes (retried)"
    )
    .unwrap()
});
pub static APPLY_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "agg_apply_batch_seconds",
        "Time to apply one batch to the leaderboards"
    )
    .unwrap()
});

/// Registers every metric of this role at start, so each series is exported (at zero) from
/// the first scrape: a dashboard or an alert rule reading a counter that has not moved yet
/// sees 0, not "no data".
pub fn register() {
    LazyLock::force(&TICKS);
    LazyLock::force(&BACKLOG);
    LazyLock::force(&APPLIED);
    LazyLock::force(&DUPLICATES);
    LazyLock::force(&TOO_EARLY);
    LazyLock::force(&APPLY_ERRORS);
    LazyLock::force(&UNDECODABLE);
    LazyLock::force(&HISTORY_WRITTEN);
    LazyLock::force(&HISTORY_ERRORS);
    LazyLock::force(&APPLY_SECONDS);
}
