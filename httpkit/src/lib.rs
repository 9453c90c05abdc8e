//! The HTTP edge every role shares: JSON errors (`{"error":{"code","message"}}`, opaque 500s
//! with the cause logged), bearer-token auth, the accept loop with its connection limits and
//! the [`Shutdown`] token it drains on (which every role's entry point takes for that reason),
//! `/healthz` and Prometheus `/metrics`, and the `POST /v1/matchmaking/join` route, whose
//! contract is shared by the game server that serves it and the API that forwards it.

pub mod client;
mod cors;
mod jwt;
mod limiter;
mod matchmaking;
pub mod openapi;
mod partners;
mod ready;

pub use client::{limit_key, limit_key_of, TrustedProxies};
pub use cors::CorsOrigins;
pub use jwt::{JwtConfig, JwtVerifier, JWKS_REFRESH};
pub use partners::{PartnerDirectory, PARTNER_REFRESH};
pub use ready::Readiness;

pub use limiter::RateLimiter;
pub use matchmaking::{matchmaking_router, Assignment, Matchmaking, MAX_SKILL};

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use protocol::{Claims, TokenError, TokenSigner};
use serde::de::DeserializeOwned;

pub use tokio_util::sync::CancellationToken as Shutdown;

mod serve;
pub use serve::{
    listen, serve, serve_with, Connection, ConnectionLimits, WriteDeadline, LISTEN_BACKLOG,
};

/// An error as clients see it: a status, a stable machine-readable code and a message.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn not_found(what: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    /// A 400 naming the offending field.
    pub fn invalid(field: &str, why: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("{field}: {why}"),
        )
    }

    pub fn unauthorized(why: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", why)
    }

    pub fn too_many(why: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", why)
    }

    pub fn unavailable(why: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why)
    }

    /// An opaque 500: the cause goes to the log, never to the client.
    pub fn internal(cause: impl std::fmt::Display) -> ApiError {
        tracing::error!(%cause, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = openapi::ErrorBody {
            error: openapi::ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        let mut res = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                "Bearer".parse().expect("static header"),
            );
        }
        res
    }
}

/// A JSON body whose rejections (wrong content type, syntax, shape, size) are JSON errors too.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(e @ JsonRejection::JsonDataError(_)) => {
                Err(ApiError::invalid("body", e.body_text()))
            }
            Err(e) => Err(ApiError::new(e.status(), "invalid_request", e.body_text())),
        }
    }
}

/// The fallback for unknown paths.
pub async fn no_such_route() -> ApiError {
    ApiError::not_found("no such route")
}

/// Checks the bearer token of a request: the `Authorization: Bearer` header, or the `token`
/// query parameter for browser clients that cannot set headers.
pub fn authenticate(
    signer: &TokenSigner,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Claims, ApiError> {
    let from_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let token = from_header
        .or(query_token)
        .ok_or_else(|| ApiError::unauthorized("a bearer token is required"))?;
    signer
        .verify(token.trim(), protocol::now_secs())
        .map_err(|e| match e {
            TokenError::Expired => ApiError::unauthorized("token has expired"),
            TokenError::BadSignature | TokenError::Malformed => {
                ApiError::unauthorized("token is invalid")
            }
        })
}

/// Who is asking: a signed token's claims, and the partner when the credential is a partner
/// key (its claims then name `partner:NAME`).
#[derive(Debug, Clone)]
pub struct Caller {
    pub claims: Claims,
    pub partner: Option<std::sync::Arc<protocol::partner::Partner>>,
}

/// The request's bearer credential, if any: `Authorization: Bearer`, else `?token=`.
pub fn bearer<'a>(headers: &'a HeaderMap, query_token: Option<&'a str>) -> Option<&'a str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or(query_token)
        .map(str::trim)
}

/// [`authenticate`], also taking partner keys (`gsp_...`) that `partners` knows.
pub fn authenticate_caller(
    signer: &TokenSigner,
    partners: &PartnerDirectory,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Caller, ApiError> {
    match bearer(headers, query_token) {
        Some(key) if protocol::partner::is_key(key) => {
            let partner = partners.lookup(key).ok_or_else(|| {
                ApiError::unauthorized("token: partner key is unknown or revoked")
            })?;
            Ok(Caller {
                claims: Claims {
                    sub: partner.subject(),
                    name: partner.name.clone(),
                    exp: u64::MAX,
                },
                partner: Some(partner),
            })
        }
        _ => Ok(Caller {
            claims: authenticate(signer, headers, query_token)?,
            partner: None,
        }),
    }
}

/// `/healthz` (liveness), `/readyz` (the role's `readiness`) and `/metrics` (Prometheus text
/// format, the process-wide registry); only `/healthz` when `readiness` is served elsewhere
/// (an internal listener).
pub fn ops_router<S: Clone + Send + Sync + 'static>(readiness: Readiness) -> Router<S> {
    let healthz = get(healthz);
    if readiness.is_served_elsewhere() {
        return Router::new().route("/healthz", healthz);
    }
    readiness
        .router()
        .route("/healthz", healthz)
        .route("/metrics", get(metrics))
}

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = openapi::Health)))]
async fn healthz() -> Json<openapi::Health> {
    Json(openapi::Health {
        status: "ok".into(),
    })
}

/// Prometheus metrics of the process (text format 0.0.4); on `--internal-addr` when set.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String)))]
async fn metrics() -> Response {
    let families = prometheus::gather();
    let mut out = String::new();
    match prometheus::TextEncoder::new().encode_utf8(&families, &mut out) {
        Ok(()) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}
