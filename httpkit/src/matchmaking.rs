//! `POST /v1/matchmaking/join`: the HTTP face of the game server's matchmaker, served by the
//! game server itself and by the snapshot API (which delegates to it).

use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use protocol::{Claims, TokenSigner};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{authenticate, ApiError};

/// Where a player should connect to play.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The game server's UDP address.
    pub server: String,
    #[serde(rename = "match")]
    pub match_id: String,
    pub connect_token: String,
    /// Seconds since the Unix epoch.
    pub expires_at: u64,
}

#[async_trait]
pub trait Matchmaking: Send + Sync + 'static {
    /// Finds (or opens) a room for `player`. `bearer` is the caller's REST token, for
    /// implementations that forward the request.
    async fn join(
        &self,
        bearer: &str,
        player: &Claims,
        region: &str,
        skill: u32,
    ) -> Result<Assignment, ApiError>;
}

#[derive(Clone)]
struct MatchmakingState {
    mm: Arc<dyn Matchmaking>,
    signer: TokenSigner,
}

pub fn matchmaking_router(mm: Arc<dyn Matchmaking>, signer: TokenSigner) -> Router {
    Router::new()
        .route("/v1/matchmaking/join", post(join))
        .with_state(MatchmakingState { mm, signer })
}

/// The highest skill rating accepted.
pub const MAX_SKILL: u64 = 100_000;

async fn join(
    State(s): State<MatchmakingState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Assignment>, ApiError> {
    // Who asks comes first: no token is a 401 whatever the body.
    let player = authenticate(&s.signer, &headers, None)?;
    let body: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid("body", format!("not JSON: {e}")))?;
    if !body.is_object() {
        return Err(ApiError::invalid("body", "must be a JSON object"));
    }
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .trim()
        .to_string();
    let region = match body.get("region") {
        Some(Value::String(r)) if !r.is_empty() => r.clone(),
        Some(_) => return Err(ApiError::invalid("region", "must be a non-empty string")),
        None => return Err(ApiError::invalid("region", "is required")),
    };
    let skill = match body.get("skill") {
        Some(v) => v.as_u64().filter(|s| *s <= MAX_SKILL).ok_or_else(|| {
            ApiError::invalid("skill", format!("must be an integer 0..={MAX_SKILL}"))
        })?,
        None => return Err(ApiError::invalid("skill", "is required")),
    };
    Ok(Json(
        s.mm.join(&bearer, &player, &region, skill as u32).await?,
    ))
}
