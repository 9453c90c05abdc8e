//! `GET /v1/players/{id}`: a player's totals and recent matches, from the history.

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use httpkit::ApiError;

use crate::matches::history_error;
use crate::ApiState;

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
