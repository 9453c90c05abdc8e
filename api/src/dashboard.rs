//! The dashboard, embedded in the binary at build time (see `build.rs`): the page, never cached
//! for long, and its content-hashed assets, cached for good. Text files are served brotli- or
//! gzip-compressed (compressed once, at build time) to browsers that accept it.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{Html, IntoResponse, Response};
use httpkit::ApiError;

mod assets {
    include!(concat!(env!("OUT_DIR"), "/dashboard.rs"));
}

/// One embedded file in each form it exists in (an empty form does not exist).
struct Asset {
    identity: &'static [u8],
    brotli: &'static [u8],
    gzip: &'static [u8],
}

fn dashboard_file(path: &str) -> Option<Asset> {
    assets::DASHBOARD
        .iter()
        .find(|(p, ..)| *p == path)
        .map(|(_, identity, brotli, gzip)| Asset {
            identity,
            brotli,
            gzip,
        })
}

/// Whether `accept` (an `Accept-Encoding` value) takes `coding` (not with `q=0`).
fn accepts(accept: &str, coding: &str) -> bool {
    accept.split(',').any(|part| {
        let mut fields = part.split(';').map(str::trim);
        let name = fields.next().unwrap_or_default();
        let refused = fields.any(|f| {
            f.strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        name.eq_ignore_ascii_case(coding) && !refused
    })
}

/// The form of `asset` to send for `headers`: brotli, then gzip, then as is.
fn negotiate(asset: &Asset, headers: &HeaderMap) -> (&'static [u8], Option<&'static str>) {
    let accept = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !asset.brotli.is_empty() && accepts(accept, "br") {
        (asset.brotli, Some("br"))
    } else if !asset.gzip.is_empty() && accepts(accept, "gzip") {
        (asset.gzip, Some("gzip"))
    } else {
        (asset.identity, None)
    }
}

fn respond(
    asset: &Asset,
    headers: &HeaderMap,
    content_type: &'static str,
    cache: &'static str,
) -> Response {
    let (body, encoding) = negotiate(asset, headers);
    let mut res = (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, cache),
        ],
        body,
    )
        .into_response();
    if !asset.brotli.is_empty() || !asset.gzip.is_empty() {
        res.headers_mut()
            .insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    if let Some(coding) = encoding {
        res.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding));
    }
    res
}

/// The dashboard page. Never cached for long: it names the current hashed assets.
pub(crate) async fn dashboard_index(headers: HeaderMap) -> Response {
    let Some(asset) = dashboard_file("/index.html") else {
        // A build without the dashboard assets (they are committed, so only a hand-made tree).
        return Html(include_str!("../../web-dashboard/placeholder.html")).into_response();
    };
    respond(&asset, &headers, "text/html; charset=utf-8", "no-cache")
}

/// Hashed assets: their names change with their content, so browsers may keep them forever.
pub(crate) async fn dashboard_asset(
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let asset = dashboard_file(&format!("/assets/{file}"))
        .ok_or_else(|| ApiError::not_found("no such asset"))?;
    let content_type = match file.rsplit('.').next() {
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("woff2") => "font/woff2",
        _ => "application/octet-stream",
    };
    Ok(respond(
        &asset,
        &headers,
        content_type,
        "public, max-age=31536000, immutable",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_encoding_is_read_with_its_weights() {
        assert!(accepts("gzip, deflate, br, zstd", "br"));
        assert!(accepts("gzip;q=0.8, br;q=1.0", "br"));
        assert!(!accepts("gzip, br;q=0", "br"));
        assert!(!accepts("gzip", "br"));
        assert!(!accepts("", "gzip"));
        assert!(accepts("GZIP", "gzip"));
    }

    #[test]
    fn the_bundle_is_embedded_compressed() {
        let Some(js) = assets::DASHBOARD
            .iter()
            .find(|(p, ..)| p.starts_with("/assets/") && p.ends_with(".js"))
        else {
            panic!("no script in the embedded dashboard");
        };
        let (_, identity, brotli, gzip) = js;
        assert!(!brotli.is_empty() && brotli.len() < identity.len() / 2);
        assert!(!gzip.is_empty() && gzip.len() < identity.len() / 2);
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        let asset = dashboard_file(js.0).unwrap();
        assert_eq!(negotiate(&asset, &headers).1, Some("gzip"));
        assert_eq!(negotiate(&asset, &HeaderMap::new()).1, None);
    }
}
