//! The OpenAPI description of what every role serves alike (errors, probes, metrics) and of
//! matchmaking, generated from the handlers and the types they serialize. The API role merges
//! it with the gateway's and its own into `/openapi.json`.

use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// Every error response: a stable machine-readable code and a message for people.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// `not_found`, `invalid_request` (the message starts with the field's name),
    /// `unauthorized`, `forbidden`, `forbidden_origin`, `rate_limited`, `user_cap`,
    /// `address_cap`, `replay_cap`, `unavailable`, `behind`, `not_acceptable`,
    /// `body_too_large`, `delayed_broadcast`, `not_ready`, `internal`.
    #[schema(example = "not_found")]
    pub code: String,
    pub message: String,
}

/// `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: String,
}

/// `GET /readyz`: each check's outcome (`ok` or why not) by name (`match_log`,
/// `leaderboards`, `history`, `redis`, `draining`...).
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadyBody {
    pub ready: bool,
    pub checks: std::collections::BTreeMap<String, String>,
    /// Present when not ready (`not_ready`, naming the failing checks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

/// `POST /v1/matchmaking/join`.
#[derive(Debug, serde::Deserialize, ToSchema)]
pub struct JoinRequest {
    #[schema(example = "eu")]
    pub region: String,
    /// 0 to 100,000.
    #[schema(example = 1200)]
    pub skill: u32,
}

/// Adds the bearer scheme that guarded operations name.
pub struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A guest token (POST /v1/auth/guest), a JWT of the deployment's own \
                         backend, or a partner key (gsp_...)",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    paths(crate::healthz, crate::ready::readyz, crate::metrics, crate::matchmaking::join),
    components(schemas(ErrorBody, ErrorDetail, Health, ReadyBody, JoinRequest, crate::Assignment)),
    modifiers(&BearerAuth)
)]
struct Shared;

/// The shared routes' document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    Shared::openapi()
}
