//! Cross-origin access to the public read API and the streams (an overlay page a broadcaster
//! loads from its own origin, say): which origins may read, as one rule for the CORS headers
//! (tower-http's layer answers preflights and sets them) and for WebSocket handshakes, whose
//! `Origin` browsers send but CORS does not cover.

use axum::http::{header, HeaderMap, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The origins allowed to read cross-origin: `--cors-origins`, comma separated, `*` for any.
/// Empty (the default): same-origin pages and clients that send no `Origin` only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CorsOrigins {
    #[default]
    SameOrigin,
    Any,
    List(Vec<String>),
}

impl CorsOrigins {
    /// Parses the flag's value; an origin must be `scheme://host[:port]`.
    pub fn parse(values: &[String]) -> Result<CorsOrigins, String> {
        let values: Vec<&str> = values
            .iter()
            .map(|v| v.trim().trim_end_matches('/'))
            .filter(|v| !v.is_empty())
            .collect();
        if values.is_empty() {
            return Ok(CorsOrigins::SameOrigin);
        }
        if values.contains(&"*") {
            return Ok(CorsOrigins::Any);
        }
        for v in &values {
            let ok = (v.starts_with("http://") || v.starts_with("https://"))
                && !v
                    .split_once("://")
                    .is_some_and(|(_, rest)| rest.is_empty() || rest.contains('/'));
            if !ok || HeaderValue::from_str(v).is_err() {
                return Err(format!("{v:?} is not an origin (scheme://host[:port])"));
            }
        }
        Ok(CorsOrigins::List(
            values.iter().map(|v| v.to_ascii_lowercase()).collect(),
        ))
    }

    fn allows(&self, origin: &str) -> bool {
        match self {
            CorsOrigins::SameOrigin => false,
            CorsOrigins::Any => true,
            CorsOrigins::List(list) => list.iter().any(|o| o.eq_ignore_ascii_case(origin)),
        }
    }

    /// Whether a WebSocket handshake with these headers may proceed: no `Origin` (not a
    /// browser), the page's own origin (`Origin` naming the `Host` it connects to), or an
    /// allowed one.
    pub fn allows_handshake(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
            return true;
        };
        let same = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .zip(origin.split_once("://").map(|(_, host)| host))
            .is_some_and(|(host, origin_host)| host.eq_ignore_ascii_case(origin_host));
        same || self.allows(origin)
    }

    /// The layer that answers preflights and sets the CORS headers; `None` when no other
    /// origin may read.
    pub fn layer(&self) -> Option<CorsLayer> {
        let allow = match self {
            CorsOrigins::SameOrigin => return None,
            CorsOrigins::Any => AllowOrigin::any(),
            CorsOrigins::List(list) => AllowOrigin::list(
                list.iter()
                    .map(|o| HeaderValue::from_str(o).expect("checked when parsed")),
            ),
        };
        Some(
            CorsLayer::new()
                .allow_origin(allow)
                .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
                .allow_headers([
                    header::AUTHORIZATION,
                    header::CONTENT_TYPE,
                    header::IF_NONE_MATCH,
                    header::HeaderName::from_static("last-event-id"),
                ])
                .expose_headers([header::ETAG, header::RETRY_AFTER, header::CACHE_CONTROL])
                .max_age(std::time::Duration::from_secs(600)),
        )
    }

    /// `router` with the CORS layer when any other origin may read.
    pub fn apply<S: Clone + Send + Sync + 'static>(
        &self,
        router: axum::Router<S>,
    ) -> axum::Router<S> {
        match self.layer() {
            Some(layer) => router.layer(layer),
            None => router,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, o.parse().unwrap());
        }
        h
    }

    #[test]
    fn origins_are_parsed_strictly() {
        assert_eq!(CorsOrigins::parse(&[]), Ok(CorsOrigins::SameOrigin));
        assert_eq!(CorsOrigins::parse(&["*".into()]), Ok(CorsOrigins::Any));
        assert_eq!(
            CorsOrigins::parse(&[
                "https://Overlay.example/".into(),
                " http://localhost:3000".into()
            ]),
            Ok(CorsOrigins::List(vec![
                "https://overlay.example".into(),
                "http://localhost:3000".into()
            ]))
        );
        assert!(CorsOrigins::parse(&["overlay.example".into()]).is_err());
        assert!(CorsOrigins::parse(&["https://overlay.example/path".into()]).is_err());
    }

    #[test]
    fn websocket_handshakes_follow_the_same_rule() {
        let list = CorsOrigins::parse(&["https://overlay.example".into()]).unwrap();
        assert!(
            list.allows_handshake(&headers(None, "gw:8080")),
            "not a browser"
        );
        assert!(
            list.allows_handshake(&headers(Some("http://gw:8080"), "gw:8080")),
            "same origin"
        );
        assert!(list.allows_handshake(&headers(Some("https://overlay.example"), "gw:8080")));
        assert!(!list.allows_handshake(&headers(Some("https://evil.example"), "gw:8080")));
        assert!(!CorsOrigins::SameOrigin
            .allows_handshake(&headers(Some("https://overlay.example"), "gw:8080")));
        assert!(
            CorsOrigins::Any.allows_handshake(&headers(Some("https://anyone.example"), "gw:8080"))
        );
    }
}
