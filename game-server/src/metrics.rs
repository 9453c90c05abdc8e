use std::sync::LazyLock;

use prometheus::{
    register_histogram, register_int_counter, register_int_counter_vec, register_int_gauge,
    Histogram, IntCounter, IntCounterVec, IntGauge,
};

pub static TICKS: LazyLock<IntCounter> =
    LazyLock::new(|| register_int_counter!("gs_ticks_total", "Simulation ticks run").unwrap());
pub static TICK_OVERRUNS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "gs_tick_overruns_total",
        "Ticks skipped because a room ran late"
    )
    .unwrap()
});
pub static STALLED_TICKS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "gs_stalled_ticks_total",
        "Ticks paused because the publisher fell behind"
    )
    .unwrap()
});
pub static TICK_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "gs_tick_duration_seconds",
        "Time to run one tick",
        vec![
            0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
            0.05
        ]
    )
    .unwrap()
});
pub static PUBLISHED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gs_published_total",
        "Match log records published",
        &["kind"]
    )
    .unwrap()
});
pub static PUBLISH_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "gs_publish_errors_total",
        "Failed publish attempts (retried)"
    )
    .unwrap()
});
pub static LIVE_MATCHES: LazyLock<IntGauge> =
    LazyLock::new(|| register_int_gauge!("gs_live_matches", "Matches being played").unwrap());
pub static UDP_DATAGRAMS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "gs_udp_datagrams_total",
        "Datagrams received on the player port"
    )
    .unwrap()
});
pub static UDP_REJECTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gs_udp_rejected_total",
        "Datagrams refused, by reason (malformed, unknown session, denied handshake, flood)",
        &["reason"]
    )
    .unwrap()
});
pub static UDP_BYTES_OUT: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "gs_udp_bytes_out_total",
        "Bytes sent to players, UDP payload plus 28 bytes of IPv4+UDP headers per datagram"
    )
    .unwrap()
});
pub static UDP_DATAGRAMS_OUT: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "gs_udp_datagrams_out_total",
        "Datagrams handed to the kernel for players (snapshots, events datagrams, replies)"
    )
    .unwrap()
});
pub static UDP_BYTES_IN: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "gs_udp_bytes_in_total",
        "Bytes received on the player port, UDP payload only"
    )
    .unwrap()
});
pub static SNAPSHOTS_SENT: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("gs_snapshots_sent_total", "Snapshots sent to players").unwrap()
});
pub static PLAYER_TICKS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "gs_player_ticks_total",
        "Sum over ticks of the players (bots and humans) in the room"
    )
    .unwrap()
});
pub static TICK_BUSY_SECONDS: LazyLock<prometheus::Counter> = LazyLock::new(|| {
    prometheus::register_counter!(
        "gs_tick_busy_seconds_total",
        "Time spent running ticks (simulation, interest, encoding, sending)"
    )
    .unwrap()
});
pub static TICK_CPU_SECONDS: LazyLock<prometheus::Counter> = LazyLock::new(|| {
    prometheus::register_counter!(
        "gs_tick_cpu_seconds_total",
        "CPU time of the threads running rooms, counted only while a tick (or the handling of \
         commands between ticks) runs (unlike the busy time, not inflated by other work \
         preempting the thread)"
    )
    .unwrap()
});
pub static SEND_CPU_SECONDS: LazyLock<prometheus::Counter> = LazyLock::new(|| {
    prometheus::register_counter!(
        "gs_send_cpu_seconds_total",
        "CPU time rooms spend handing datagrams to the kernel (part of gs_tick_cpu_seconds_total; \
         on loopback it includes delivering them to the receiving socket)"
    )
    .unwrap()
});
pub static PORT_CPU_SECONDS: LazyLock<prometheus::Counter> = LazyLock::new(|| {
    prometheus::register_counter!(
        "gs_port_cpu_seconds_total",
        "CPU time the player port spends reading, decoding and routing datagrams"
    )
    .unwrap()
});
pub static URGENT_DROPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "gs_urgent_dropped_total",
        "Urgent events (fire, death, pickup) given up on unacknowledged: too old, or past \
         the ack window"
    )
    .unwrap()
});
pub static CONNECTED_PLAYERS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("gs_connected_players", "Real players connected over UDP").unwrap()
});
pub static REWINDS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gs_lag_compensated_shots_total",
        "Shots by real players, by whether the rewind was capped",
        &["capped"]
    )
    .unwrap()
});
pub static CHECKPOINTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gs_checkpoints_total",
        "Room checkpoints written, by outcome",
        &["outcome"]
    )
    .unwrap()
});

/// Registers every metric of this role at start, so each series is exported (at zero) from
/// the first scrape: a dashboard or an alert rule reading a counter that has not moved yet
/// sees 0, not "no data".
pub fn register() {
    LazyLock::force(&TICKS);
    LazyLock::force(&TICK_OVERRUNS);
    LazyLock::force(&STALLED_TICKS);
    LazyLock::force(&TICK_SECONDS);
    LazyLock::force(&PUBLISHED);
    LazyLock::force(&PUBLISH_ERRORS);
    LazyLock::force(&LIVE_MATCHES);
    LazyLock::force(&UDP_DATAGRAMS);
    LazyLock::force(&UDP_REJECTED);
    LazyLock::force(&UDP_BYTES_OUT);
    LazyLock::force(&UDP_DATAGRAMS_OUT);
    LazyLock::force(&UDP_BYTES_IN);
    LazyLock::force(&SNAPSHOTS_SENT);
    LazyLock::force(&PLAYER_TICKS);
    LazyLock::force(&TICK_BUSY_SECONDS);
    LazyLock::force(&TICK_CPU_SECONDS);
    LazyLock::force(&PORT_CPU_SECONDS);
    LazyLock::force(&SEND_CPU_SECONDS);
    LazyLock::force(&URGENT_DROPPED);
    LazyLock::force(&CONNECTED_PLAYERS);
    LazyLock::force(&REWINDS);
    LazyLock::force(&CHECKPOINTS);
}

/// CPU time the calling thread has used so far. Differences of it around synchronous work
/// measure that work's own CPU: unlike wall time, it does not count the time another process
/// (the load generator on the same cores) held the CPU.
pub fn thread_cpu() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
