//! Readiness: `/readyz` answers 200 only while this role's backends answer (each a named
//! check) and it is not draining; otherwise 503 with a JSON body saying which check failed.
//! `/healthz` stays a liveness probe (the process serves HTTP at all).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

type Check =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// The checks a role's readiness is made of, and whether it is draining.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(&'static str, Check)>,
    draining: Arc<AtomicBool>,
    /// `/readyz` and `/metrics` are served on an internal listener, not beside the API.
    internal_only: bool,
}

impl Readiness {
    /// The same readiness (draining shared), for a public listener when `/readyz` and
    /// `/metrics` are served on an internal one (`--internal-addr`).
    pub fn served_elsewhere(&self) -> Readiness {
        Readiness {
            internal_only: true,
            ..self.clone()
        }
    }

    pub(crate) fn is_served_elsewhere(&self) -> bool {
        self.internal_only
    }

    /// Adds a named check (each is given 2 s per probe).
    pub fn check<F, Fut>(mut self, name: &'static str, f: F) -> Readiness
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks.push((name, Arc::new(move || Box::pin(f()))));
        self
    }

    /// From now on the role reports not ready (it is shutting down: load balancers stop
    /// sending it new clients while its current ones are moved off).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Runs every check; `(ready, per-check outcome)`.
    pub async fn probe(&self) -> (bool, serde_json::Map<String, serde_json::Value>) {
        let mut out = serde_json::Map::new();
        let mut ready = !self.is_draining();
        if self.is_draining() {
            out.insert("draining".into(), "shutting down".into());
        }
        for (name, check) in &self.checks {
            let result = tokio::time::timeout(Duration::from_secs(2), check()).await;
            let verdict = match result {
                Ok(Ok(())) => "ok".to_string(),
                Ok(Err(e)) => e,
                Err(_) => "no answer in 2 s".to_string(),
            };
            ready &= verdict == "ok";
            out.insert((*name).to_string(), verdict.into());
        }
        (ready, out)
    }

    /// `/readyz`.
    pub fn router<S: Clone + Send + Sync + 'static>(self) -> Router<S> {
        Router::new().route("/readyz", get(readyz)).with_state(self)
    }
}

/// Readiness: 200 only while this role's backends answer and it is not draining; on
/// `--internal-addr` when set.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Ready: every check ok", body = crate::openapi::ReadyBody),
    (status = 503, description = "Not ready: `checks` says which backend does not answer, or `draining`", body = crate::openapi::ReadyBody),
))]
pub(crate) async fn readyz(State(r): State<Readiness>) -> Response {
    let (ready, checks) = r.probe().await;
    let checks: std::collections::BTreeMap<String, String> = checks
        .into_iter()
        .map(|(k, v)| (k, v.as_str().unwrap_or("?").to_string()))
        .collect();
    let error = (!ready).then(|| crate::openapi::ErrorDetail {
        code: "not_ready".into(),
        message: checks
            .iter()
            .filter(|(_, v)| v.as_str() != "ok")
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join("; "),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(crate::openapi::ReadyBody {
            ready,
            checks,
            error,
        }),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get_readyz(r: &Readiness) -> (StatusCode, serde_json::Value) {
        let response = r
            .clone()
            .router::<()>()
            .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn ready_only_while_every_check_answers_and_not_draining() {
        let up = Arc::new(AtomicBool::new(true));
        let flag = up.clone();
        let r = Readiness::default()
            .check("match_log", || async { Ok(()) })
            .check("redis", move || {
                let up = flag.load(Ordering::Relaxed);
                async move {
                    if up {
                        Ok(())
                    } else {
                        Err("connection refused".to_string())
                    }
                }
            });
        let (status, body) = get_readyz(&r).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["checks"]["redis"], "ok");

        up.store(false, Ordering::Relaxed);
        let (status, body) = get_readyz(&r).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"]["code"], "not_ready");
        assert_eq!(body["error"]["message"], "redis: connection refused");
        assert_eq!(body["checks"]["match_log"], "ok");

        up.store(true, Ordering::Relaxed);
        r.drain();
        let (status, body) = get_readyz(&r).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("draining"));
    }

    #[tokio::test]
    async fn a_check_that_hangs_is_reported_not_waited_for() {
        let r = Readiness::default().check("history", std::future::pending);
        let (status, body) = get_readyz(&r).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["checks"]["history"], "no answer in 2 s");
    }
}
