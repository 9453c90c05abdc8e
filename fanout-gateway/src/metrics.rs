use std::sync::LazyLock;

use prometheus::{
    register_histogram, register_int_counter, register_int_counter_vec, register_int_gauge,
    Histogram, IntCounter, IntCounterVec, IntGauge,
};

pub static VIEWERS: LazyLock<IntGauge> =
    LazyLock::new(|| register_int_gauge!("gw_viewers", "Connected viewers").unwrap());
pub static HUBS: LazyLock<IntGauge> =
    LazyLock::new(|| register_int_gauge!("gw_match_hubs", "Matches with a running hub").unwrap());
pub static CONNECTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gw_connects_total",
        "Viewer connections accepted",
        &["transport"]
    )
    .unwrap()
});
pub static DISCONNECTS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("gw_disconnects_total", "Viewer connections ended").unwrap()
});
pub static REJECTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gw_rejected_total",
        "Stream requests refused before streaming",
        &["reason"]
    )
    .unwrap()
});
/// Streams opened with a partner key, by partner (partners are few: added by an operator).
pub static PARTNER_STREAMS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gw_partner_streams_total",
        "Streams opened with a partner key",
        &["partner"]
    )
    .unwrap()
});
pub static REPLAYS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "gw_replays",
        "Replays from the start running (each with a log follower of its own)"
    )
    .unwrap()
});
pub static MULTI_STREAMS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("gw_multi_match_streams", "Multi-match streams connected").unwrap()
});
pub static LIVE_RECORDS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "gw_live_records_total",
        "Records hubs took from the live line (before the stored log delivered them)"
    )
    .unwrap()
});
pub static LIVE_GAP_JUMPS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "gw_live_gap_jumps_total",
        "Live-line gaps the stored log did not fill in time, passed with a live keyframe"
    )
    .unwrap()
});
pub static FOLLOWER_RECREATED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "gw_follower_recreated_total",
        "Stored-log followers recreated because the stored log went quiet"
    )
    .unwrap()
});
pub static MESSAGES_OUT: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("gw_messages_out_total", "Messages sent to viewers").unwrap()
});
pub static BYTES_OUT: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("gw_bytes_out_total", "Payload bytes sent to viewers").unwrap()
});
pub static SUBSTITUTIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "gw_snapshot_substitutions_total",
        "Full viewer queues replaced by a snapshot"
    )
    .unwrap()
});
pub static PARKED_RESUMES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "gw_parked_resumes_total",
        "Resuming viewers held until the hub reached the position they had already seen"
    )
    .unwrap()
});
pub static BEHIND_REFUSALS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "gw_behind_refusals_total",
        "Resuming viewers refused (retry) because the hub did not reach their position in time"
    )
    .unwrap()
});
pub static ENCODE_SECONDS: LazyLock<prometheus::Counter> = LazyLock::new(|| {
    prometheus::register_counter!(
        "gw_encode_seconds_total",
        "Time hubs spent applying log records and encoding their frames (v1, v2 and the compressed v2), once per message per match whatever the audience"
    )
    .unwrap()
});
pub static PRODUCER_STATUS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gw_producer_status_total",
        "Status messages fanned out: producer_down (a live match silent for 2 s), producer_up",
        &["status"]
    )
    .unwrap()
});
pub static DRAINING: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "gw_draining",
        "1 while the gateway moves its viewers off before stopping"
    )
    .unwrap()
});
pub static DRAINED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "gw_drained_viewers_total",
        "Viewers closed by a drain, a few at a time"
    )
    .unwrap()
});
pub static VIEWER_WRITES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "gw_viewer_writes_total",
        "Batches written to WebSocket viewers (each one vectored write; messages per write = gw_messages_out_total / this, for WebSocket-only gateways)"
    )
    .unwrap()
});
pub static REFUSED_FRAMES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gw_viewer_frames_refused_total",
        "Viewer connections closed over what the viewer sent, by close code (1002 protocol, 1007 bad payload, 1009 too large)",
        &["code"]
    )
    .unwrap()
});
pub static STALLED_CLOSED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "gw_stalled_viewers_closed_total",
        "Viewers closed for not reading"
    )
    .unwrap()
});
pub static LOG_TO_HUB: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "gw_log_to_hub_seconds",
        "Match log accept -> hub fan-out",
        vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]
    )
    .unwrap()
});
pub static PUBLISH_TO_SEND: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "gw_publish_to_send_seconds",
        "Match log accept -> written to a viewer (one viewer in 64 sampled)",
        vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]
    )
    .unwrap()
});

pub static SHARED_CAPS_UNAVAILABLE: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "gw_shared_caps_unavailable_total",
        "Handshakes let in on local caps alone because the shared store did not answer"
    )
    .unwrap()
});

/// Registers every metric of this role at start, so each series is exported (at zero) from
/// the first scrape: a dashboard or an alert rule reading a counter that has not moved yet
/// sees 0, not "no data".
pub fn register() {
    LazyLock::force(&VIEWERS);
    LazyLock::force(&HUBS);
    LazyLock::force(&CONNECTS);
    LazyLock::force(&DISCONNECTS);
    LazyLock::force(&REJECTED);
    LazyLock::force(&PARTNER_STREAMS);
    LazyLock::force(&REPLAYS);
    LazyLock::force(&MULTI_STREAMS);
    LazyLock::force(&LIVE_RECORDS);
    LazyLock::force(&FOLLOWER_RECREATED);
    LazyLock::force(&LIVE_GAP_JUMPS);
    LazyLock::force(&MESSAGES_OUT);
    LazyLock::force(&BYTES_OUT);
    LazyLock::force(&SUBSTITUTIONS);
    LazyLock::force(&PARKED_RESUMES);
    LazyLock::force(&BEHIND_REFUSALS);
    LazyLock::force(&ENCODE_SECONDS);
    LazyLock::force(&PRODUCER_STATUS);
    LazyLock::force(&DRAINING);
    LazyLock::force(&DRAINED);
    LazyLock::force(&VIEWER_WRITES);
    LazyLock::force(&REFUSED_FRAMES);
    LazyLock::force(&STALLED_CLOSED);
    LazyLock::force(&LOG_TO_HUB);
    LazyLock::force(&PUBLISH_TO_SEND);
    LazyLock::force(&SHARED_CAPS_UNAVAILABLE);
    for result in ["accepted", "malformed", "too_large", "rate_limited"] {
        RENDER_REPORTS.with_label_values(&[result]);
    }
    LazyLock::force(&RENDER_FRAMES);
    LazyLock::force(&RENDER_DROPPED_FRAMES);
    LazyLock::force(&RENDER_FRAME_SECONDS);
    LazyLock::force(&RENDER_STREAM_LAG_SECONDS);
}

pub static RENDER_REPORTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gw_render_reports_total",
        "Viewers' render-health reports, by result (accepted, malformed, too_large, rate_limited)",
        &["result"]
    )
    .unwrap()
});
pub static RENDER_FRAMES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "gw_render_frames_total",
        "Frames viewers' pages reported drawn"
    )
    .unwrap()
});
pub static RENDER_DROPPED_FRAMES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "gw_render_dropped_frames_total",
        "Screen refreshes viewers' pages reported without a new frame"
    )
    .unwrap()
});
pub static RENDER_FRAME_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "gw_render_frame_seconds",
        "Frame intervals sampled by viewers' pages (up to 64 per report)",
        vec![0.0085, 0.017, 0.025, 0.034, 0.05, 0.1, 0.25, 0.5, 1.0]
    )
    .unwrap()
});
pub static RENDER_STREAM_LAG_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "gw_render_stream_lag_seconds",
        "How far viewers' streams ran behind their match, sampled by their pages",
        vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
    )
    .unwrap()
});
