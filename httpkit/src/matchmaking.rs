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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Assignment {
    /// The game server's UDP address.
    #[schema(example = "127.0.0.1:7777")]
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
pub(crate) struct MatchmakingState {
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

/// Finds (or opens) a room for the caller in a region and skill bucket. Returns the game
/// server's UDP address and a connect token bound to the player, the match and that server;
/// it is accepted once per client address until it expires (players reconnect after a
/// server crash with the same token).
#[utoipa::path(post, path = "/v1/matchmaking/join", tag = "matchmaking",
    request_body = crate::openapi::JoinRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Where to connect", body = Assignment),
        (status = 400, description = "The body is not a JSON object, or a field is missing or invalid (the message starts with the field's name: region, skill or body)", body = crate::openapi::ErrorBody),
        (status = 401, description = "No bearer token, or an invalid or expired one", body = crate::openapi::ErrorBody),
        (status = 413, description = "A body over the size limit (body_too_large)", body = crate::openapi::ErrorBody),
        (status = 503, description = "The room registry or the matchmaker is unavailable", body = crate::openapi::ErrorBody),
    ))]
pub(crate) async fn join(
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use proptest::prelude::*;
    use tower::ServiceExt;

    struct Placed;

    #[async_trait]
    impl Matchmaking for Placed {
        async fn join(
            &self,
            _bearer: &str,
            player: &Claims,
            region: &str,
            _skill: u32,
        ) -> Result<Assignment, ApiError> {
            Ok(Assignment {
                server: "127.0.0.1:7777".into(),
                match_id: format!("{region}-1"),
                connect_token: player.sub.clone(),
                expires_at: 1,
            })
        }
    }

    /// The body's answer: its status and JSON.
    fn answer(body: Vec<u8>) -> (StatusCode, Value) {
        let signer = TokenSigner::new(b"test-secret-0123456789abcdef");
        let bearer = signer.sign(&Claims {
            sub: "p1".into(),
            name: "P1".into(),
            exp: u64::MAX / 2,
        });
        let router = matchmaking_router(Arc::new(Placed), signer);
        let req = Request::post("/v1/matchmaking/join")
            .header("authorization", format!("Bearer {bearer}"))
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(async {
                let res = router.oneshot(req).await.unwrap();
                let status = res.status();
                let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
                    .await
                    .unwrap();
                (
                    status,
                    serde_json::from_slice(&bytes).expect("a JSON answer"),
                )
            })
    }

    #[test]
    fn a_good_body_is_placed_and_each_bad_field_is_named() {
        let (s, v) = answer(br#"{"region":"eu","skill":1000}"#.to_vec());
        assert_eq!((s, v["match"].as_str()), (StatusCode::OK, Some("eu-1")));
        for (body, field) in [
            (&br#"{"skill":1}"#[..], "region"),
            (br#"{"region":"","skill":1}"#, "region"),
            (br#"{"region":"eu","skill":-1}"#, "skill"),
            (br#"{"region":"eu","skill":100001}"#, "skill"),
            (br#"[1,2]"#, "body"),
            (br#"{"region":"eu""#, "body"),
        ] {
            let (s, v) = answer(body.to_vec());
            assert_eq!(
                s,
                StatusCode::BAD_REQUEST,
                "{}",
                String::from_utf8_lossy(body)
            );
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with(&format!("{field}:")),
                "{v}"
            );
        }
    }

    proptest! {
        /// The json_bodies fuzz target's contract in CI-sized form: whatever the body, a 200
        /// or a JSON 400, never a 500 or a panic.
        #[test]
        fn any_body_gets_a_200_or_a_json_400(
            junk in proptest::collection::vec(any::<u8>(), 0..200),
            region in "\\PC{0,12}",
            skill in any::<i64>(),
        ) {
            for body in [junk, format!(r#"{{"region":{region:?},"skill":{skill}}}"#).into_bytes()] {
                let (s, v) = answer(body);
                prop_assert!(s == StatusCode::OK || s == StatusCode::BAD_REQUEST, "{s}");
                if s == StatusCode::BAD_REQUEST {
                    prop_assert!(v.get("error").is_some(), "{v}");
                }
            }
        }
    }
}
