//! The dashboard, embedded in the binary at build time (see `build.rs`): the page, never cached
//! for long, and its content-hashed assets, cached for good.

use axum::extract::Path;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use httpkit::ApiError;

mod assets {
    include!(concat!(env!("OUT_DIR"), "/dashboard.rs"));
}

fn dashboard_file(path: &str) -> Option<&'static [u8]> {
    assets::DASHBOARD
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, body)| *body)
}

/// The dashboard page. Never cached for long: it names the current hashed assets.
pub(crate) async fn dashboard_index() -> Response {
    let Some(body) = dashboard_file("/index.html") else {
        // A build without the dashboard assets (they are committed, so only a hand-made tree).
        return Html(include_str!("../../web-dashboard/placeholder.html")).into_response();
    };
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Hashed assets: their names change with their content, so browsers may keep them forever.
pub(crate) async fn dashboard_asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    let body = dashboard_file(&format!("/assets/{file}"))
        .ok_or_else(|| ApiError::not_found("no such asset"))?;
    let content_type = match file.rsplit('.').next() {
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("woff2") => "font/woff2",
        _ => "application/octet-stream",
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        body,
    )
        .into_response())
}
