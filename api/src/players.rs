//! `GET /v1/players/{id}`: a player's totals and recent matches, from the history.

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use httpkit::ApiError;

use crate::matches::history_error;
use crate::ApiState;

/// A player's kills, deaths, matches and most recent finished matches.
#[utoipa::path(get, path = "/v1/players/{id}", tag = "players",
    params(("id" = String, Path, description = "The player id")),
    responses(
        (status = 200, description = "The player's totals", body = backends::PlayerStats),
        (status = 404, description = "No such player", body = httpkit::openapi::ErrorBody),
        (status = 503, description = "The history does not answer", body = httpkit::openapi::ErrorBody),
    ))]
pub(crate) async fn player(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let inner = s.inner.clone();
    let key = format!("player:{id}");
    let body = s
        .inner
        .history_reads
        .try_get_with(key, async move {
            let stats = inner
                .history
                .player_stats(&id)
                .await
                .map_err(history_error)?;
            let stats = stats.ok_or_else(|| ApiError::not_found(format!("no player {id:?}")))?;
            serde_json::to_vec(&stats)
                .map(Bytes::from)
                .map_err(ApiError::internal)
        })
        .await
        .map_err(|e| (*e).clone())?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}
