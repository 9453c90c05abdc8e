//! `POST /v1/auth/guest`: a guest identity and its bearer token, rate limited per address.

use axum::extract::State;
use axum::Json;
use httpkit::ApiError;
use protocol::Claims;
use serde::Serialize;

use crate::{metrics, ApiState};

/// A guest identity and its bearer token.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct GuestResponse {
    token: String,
    player: String,
    name: String,
    /// Seconds since the Unix epoch.
    expires_at: u64,
}

/// A guest identity and its bearer token, rate limited per client address.
#[utoipa::path(post, path = "/v1/auth/guest", tag = "auth", responses(
    (status = 200, description = "The guest and its token", body = GuestResponse),
    (status = 429, description = "Too many sign-ins from this address", body = httpkit::openapi::ErrorBody),
))]
pub(crate) async fn guest(
    State(s): State<ApiState>,
    request: axum::extract::Request,
) -> Result<Json<GuestResponse>, ApiError> {
    // Absent when the router is driven without a socket (tests with `oneshot`).
    let ip = httpkit::limit_key_of(request.extensions());
    if let Some(ip) = ip {
        if !s.inner.guests.allow(ip) {
            metrics::GUESTS_LIMITED.inc();
            return Err(ApiError::too_many(
                "too many guest sign-ins from this address; slow down",
            ));
        }
    }
    let suffix: u32 = rand::random();
    let player = format!("g-{suffix:08x}");
    let exp = protocol::now_secs() + s.inner.config.guest_token_ttl.as_secs();
    let name = format!("Guest-{:04X}", suffix & 0xffff);
    let token = s.inner.signer.sign(&Claims {
        sub: player.clone(),
        name: name.clone(),
        exp,
    });
    Ok(Json(GuestResponse {
        token,
        player,
        name,
        expires_at: exp,
    }))
}
