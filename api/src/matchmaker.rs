//! Where `POST /v1/matchmaking/join` goes: a game server in this process (the `all` role
//! wires its matchmaker in), a game server in another process over HTTP, or nowhere yet (503
//! with the reason).

use std::time::Duration;

use httpkit::ApiError;

/// A matchmaker in another process: forwards the player's request to a game server's HTTP
/// port (`--matchmaker-url`), which answers with the same contract.
pub struct RemoteMatchmaker {
    url: String,
    http: reqwest::Client,
}

impl RemoteMatchmaker {
    pub fn new(base_url: &str) -> RemoteMatchmaker {
        RemoteMatchmaker {
            url: format!("{}/v1/matchmaking/join", base_url.trim_end_matches('/')),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("HTTP client"),
        }
    }
}

#[async_trait::async_trait]
impl httpkit::Matchmaking for RemoteMatchmaker {
    async fn join(
        &self,
        bearer: &str,
        _player: &protocol::Claims,
        region: &str,
        skill: u32,
    ) -> Result<httpkit::Assignment, ApiError> {
        let res = self
            .http
            .post(&self.url)
            .bearer_auth(bearer)
            .json(&serde_json::json!({ "region": region, "skill": skill }))
            .send()
            .await
            .map_err(|e| ApiError::unavailable(format!("matchmaker unreachable: {e}")))?;
        let status = res.status();
        let body: serde_json::Value = res
            .json()
            .await
            .map_err(|e| ApiError::unavailable(format!("matchmaker answer: {e}")))?;
        if status.is_success() {
            return serde_json::from_value(body)
                .map_err(|e| ApiError::unavailable(format!("matchmaker answer: {e}")));
        }
        // The matchmaker's own error (400 naming a field, 503) passes through.
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or("matchmaking failed");
        let code = match body["error"]["code"].as_str() {
            Some("invalid_request") => "invalid_request",
            Some("unauthorized") => "unauthorized",
            _ => "unavailable",
        };
        Err(ApiError::new(
            axum::http::StatusCode::from_u16(status.as_u16())
                .unwrap_or(axum::http::StatusCode::BAD_GATEWAY),
            code,
            message,
        ))
    }
}

/// Until a matchmaker is configured, matchmaking answers 503 with the reason.
pub(crate) struct NoMatchmaker;

#[async_trait::async_trait]
impl httpkit::Matchmaking for NoMatchmaker {
    async fn join(
        &self,
        _: &str,
        _: &protocol::Claims,
        _: &str,
        _: u32,
    ) -> Result<httpkit::Assignment, ApiError> {
        Err(ApiError::unavailable(
            "matchmaking is not configured on this API (set GRANDSTAND_MATCHMAKER_URL)",
        ))
    }
}
