//! `POST /v1/render-health`: viewers' pages report how smoothly they draw (frame intervals,
//! dropped frames) and how far their stream runs behind, at most once per 10 s per page, so a
//! fleet dashboard shows when viewers' screens stutter. The reports only feed fixed histograms
//! and counters: nothing is kept per page or per report, no personal data is asked for, and
//! abuse costs a 4xx, never memory. Bounds: a 4 KiB body, 64 samples per series, per address
//! a burst of 20 then one a second, and per gateway a burst of 1000 then 500 a second.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use httpkit::ApiError;

use crate::{metrics, Gateway};

/// The largest report accepted; a longer body is a 413 without being read further.
pub const MAX_BODY_BYTES: usize = 4096;
/// The most samples of one series in one report.
pub const MAX_SAMPLES: usize = 64;

/// One page's report of the period since its previous one.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenderReport {
    /// Frames drawn in the period (at most 10,000).
    pub frames: u32,
    /// Frames the screen refreshed without a new one drawn (at most 10,000).
    pub dropped: u32,
    /// Up to 64 frame intervals sampled from the period, ms (0..10,000).
    pub frame_ms: Vec<f64>,
    /// Up to 64 samples of how far the stream ran behind the match, ms (0..600,000).
    pub lag_ms: Vec<f64>,
}

impl RenderReport {
    fn check(&self) -> Result<(), ApiError> {
        for (field, n) in [("frames", self.frames), ("dropped", self.dropped)] {
            if n > 10_000 {
                return Err(ApiError::invalid(field, "at most 10000 in one report"));
            }
        }
        for (field, samples, max) in [
            ("frame_ms", &self.frame_ms, 10_000.0),
            ("lag_ms", &self.lag_ms, 600_000.0),
        ] {
            if samples.len() > MAX_SAMPLES {
                return Err(ApiError::invalid(field, "at most 64 samples"));
            }
            if let Some(bad) = samples.iter().find(|v| !(0.0..=max).contains(*v)) {
                return Err(ApiError::invalid(
                    field,
                    format!("{bad} is outside 0..={max}"),
                ));
            }
        }
        Ok(())
    }
}

/// The report's rate limits (fixed memory: the per-address table is bounded by
/// `httpkit::RateLimiter`, the gateway-wide budget is one bucket).
pub(crate) struct ReportLimits {
    per_address: httpkit::RateLimiter,
    per_gateway: httpkit::RateLimiter,
}

impl Default for ReportLimits {
    fn default() -> Self {
        ReportLimits {
            per_address: httpkit::RateLimiter::new(20, Duration::from_secs(1), 10_000),
            per_gateway: httpkit::RateLimiter::new(1000, Duration::from_millis(2), 1),
        }
    }
}

fn refused(result: &str, e: ApiError) -> ApiError {
    metrics::RENDER_REPORTS.with_label_values(&[result]).inc();
    e
}

/// A page's render health: frame intervals, dropped frames, stream lag.
#[utoipa::path(post, path = "/v1/render-health", tag = "streams", operation_id = "render_health",
    request_body(content = RenderReport, description = "At most 4 KiB; any content type (pages send it with `navigator.sendBeacon`)"),
    responses(
        (status = 204, description = "Counted"),
        (status = 400, description = "Not a report (the message names the field)", body = httpkit::openapi::ErrorBody),
        (status = 413, description = "Longer than 4 KiB", body = httpkit::openapi::ErrorBody),
        (status = 429, description = "Too many reports from this address, or to this gateway", body = httpkit::openapi::ErrorBody),
    ))]
pub(crate) async fn report(
    State(gw): State<Gateway>,
    request: Request,
) -> Result<StatusCode, ApiError> {
    // Absent when the router is driven without a socket (tests with `oneshot`).
    let ip = httpkit::limit_key_of(request.extensions());
    if let Some(ip) = ip {
        if !gw.reports.per_address.allow(ip) {
            return Err(refused(
                "rate_limited",
                ApiError::too_many("too many render reports from this address"),
            ));
        }
    }
    if !gw
        .reports
        .per_gateway
        .allow(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    {
        return Err(refused(
            "rate_limited",
            ApiError::too_many("too many render reports to this gateway"),
        ));
    }
    let body = axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            refused(
                "too_large",
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!("a render report is at most {MAX_BODY_BYTES} bytes"),
                ),
            )
        })?;
    let report: RenderReport = serde_json::from_slice(&body)
        .map_err(|e| refused("malformed", ApiError::invalid("body", e)))?;
    report.check().map_err(|e| refused("malformed", e))?;
    metrics::RENDER_REPORTS
        .with_label_values(&["accepted"])
        .inc();
    metrics::RENDER_FRAMES.inc_by(report.frames.into());
    metrics::RENDER_DROPPED_FRAMES.inc_by(report.dropped.into());
    for ms in &report.frame_ms {
        metrics::RENDER_FRAME_SECONDS.observe(ms / 1000.0);
    }
    for ms in &report.lag_ms {
        metrics::RENDER_STREAM_LAG_SECONDS.observe(ms / 1000.0);
    }
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(frame_ms: Vec<f64>, lag_ms: Vec<f64>) -> RenderReport {
        RenderReport {
            frames: 600,
            dropped: 3,
            frame_ms,
            lag_ms,
        }
    }

    #[test]
    fn a_report_in_bounds_passes() {
        assert!(report(vec![16.7; 64], vec![120.0; 64]).check().is_ok());
        assert!(report(vec![], vec![]).check().is_ok());
    }

    #[test]
    fn out_of_bounds_reports_name_their_field() {
        for (r, field) in [
            (report(vec![16.7; 65], vec![]), "frame_ms"),
            (report(vec![f64::NAN], vec![]), "frame_ms"),
            (report(vec![-1.0], vec![]), "frame_ms"),
            (report(vec![], vec![600_001.0]), "lag_ms"),
            (report(vec![], vec![f64::INFINITY]), "lag_ms"),
            (
                RenderReport {
                    frames: 10_001,
                    ..report(vec![], vec![])
                },
                "frames",
            ),
        ] {
            let e = r.check().unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(e.message.starts_with(field), "{}", e.message);
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = serde_json::from_str::<RenderReport>(
            r#"{"frames":1,"dropped":0,"frame_ms":[],"lag_ms":[],"user":"me@example.com"}"#,
        );
        assert!(e.is_err());
    }
}
