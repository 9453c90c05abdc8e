//! Leaderboards: top-N pages and a player's neighbourhood, read through a short cache, served
//! with how fresh they are (and the last known board, marked stale, while the store is down).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use backends::{BoardError, BoardPage};
use httpkit::ApiError;

use crate::{metrics, ApiState};

pub const MAX_LIMIT: u64 = 1000;
pub const MAX_OFFSET: u64 = 1_000_000;
pub const MAX_RADIUS: u64 = 100;

/// Parses an optional unsigned query parameter within `0..=max`, naming the field on error.
fn bounded(
    q: &HashMap<String, String>,
    field: &str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ApiError> {
    let Some(raw) = q.get(field) else {
        return Ok(default);
    };
    let v: u64 = raw.parse().map_err(|_| {
        ApiError::invalid(
            field,
            format!("expected a whole number from {min} to {max}"),
        )
    })?;
    if v < min || v > max {
        return Err(ApiError::invalid(
            field,
            format!("must be from {min} to {max}"),
        ));
    }
    Ok(v)
}

fn board_error(e: &BoardError) -> ApiError {
    tracing::warn!(error = %e, "leaderboard read failed");
    ApiError::unavailable("leaderboards unavailable; retry")
}

/// The aggregator counts as behind when it has not reported for this long...
pub const HEARTBEAT_STALE_MS: u64 = 5_000;
/// ...or has more than this many events left to apply.
pub const BACKLOG_STALE: u64 = 1_000;

/// Reads a board through the short cache; when the store is down, falls back to the last
/// good answer and says since when it is stale.
async fn read_board<F>(
    s: &ApiState,
    key: String,
    fetch: F,
) -> Result<(Arc<Option<BoardPage>>, Option<u64>), ApiError>
where
    F: std::future::Future<Output = Result<Option<BoardPage>, BoardError>>,
{
    let fetched = s
        .inner
        .board_reads
        .try_get_with(key.clone(), async move { fetch.await.map(Arc::new) })
        .await;
    match fetched {
        Ok(page) => {
            s.inner
                .last_good
                .insert(key, (page.clone(), protocol::now_ms()))
                .await;
            Ok((page, None))
        }
        Err(e) => match s.inner.last_good.get(&key).await {
            Some((page, fetched_ms)) => {
                metrics::STALE_SERVED.inc();
                tracing::warn!(error = %e, "leaderboard store unavailable; serving the last known board");
                Ok((page, Some(fetched_ms)))
            }
            None => Err(board_error(&e)),
        },
    }
}

/// A board as clients see it, with how fresh it is: `updated_at` (last applied event),
/// `age_ms`, and `stale` with the reason (see [`staleness`]).
fn board_response(board: &str, page: &BoardPage, store_down_since: Option<u64>) -> Response {
    let now = protocol::now_ms();
    let reason = staleness(now, page, store_down_since);
    Json(Board {
        board,
        updated_at: page.updated_at_ms,
        age_ms: page.updated_at_ms.map(|u| now.saturating_sub(u)),
        stale: reason.is_some(),
        stale_reason: reason,
        behind_events: page.aggregator_backlog,
        total: page.total,
        entries: &page.entries,
    })
    .into_response()
}

/// A page of a leaderboard, with how fresh it is.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Board<'a> {
    #[schema(example = "daily:2026-11-21")]
    board: &'a str,
    /// When an event was last applied (ms since the Unix epoch).
    updated_at: Option<u64>,
    age_ms: Option<u64>,
    stale: bool,
    /// Why the board is stale: the store is down (the last known value is served), the
    /// aggregator is not reporting, or it is behind.
    stale_reason: Option<String>,
    /// Events the aggregator has yet to apply.
    behind_events: Option<u64>,
    /// Players on the board.
    total: u64,
    entries: &'a [backends::leaderboard::Entry],
}

/// Why a board read at `now_ms` is stale, if it is: the store is down and the last known value
/// (fetched at `store_down_since`) is served; or the aggregator has not reported for
/// [`HEARTBEAT_STALE_MS`]; or it has more than [`BACKLOG_STALE`] events left to apply.
pub fn staleness(now_ms: u64, page: &BoardPage, store_down_since: Option<u64>) -> Option<String> {
    if let Some(since) = store_down_since {
        return Some(format!(
            "leaderboard store unavailable; last known value from {} ms ago",
            now_ms.saturating_sub(since)
        ));
    }
    if page
        .aggregator_heartbeat_ms
        .is_none_or(|h| now_ms.saturating_sub(h) > HEARTBEAT_STALE_MS)
    {
        return Some("aggregator not reporting".to_string());
    }
    let backlog = page.aggregator_backlog.unwrap_or(0);
    (backlog > BACKLOG_STALE).then(|| format!("aggregator is {backlog} events behind"))
}

/// The board a request names: `daily` and `weekly` mean the current period. Returns the name
/// and whether the board exists even while empty (global and the current periods).
pub fn resolve_board(board: &str, now_ms: u64) -> Result<(String, bool), ApiError> {
    backends::leaderboard::resolve_board(board, now_ms).ok_or_else(|| {
        ApiError::not_found(format!(
            "no leaderboard {board:?}; boards are global, daily, weekly, daily:<YYYY-MM-DD>, \
             weekly:<YYYY-Www>, match:<id>, region:<region>"
        ))
    })
}

/// A page of a leaderboard (ranked by score, ties by who got there first), with its freshness.
#[utoipa::path(get, path = "/v1/leaderboards/{board}", tag = "leaderboards",
    params(
        ("board" = String, Path, description = "global, daily, weekly, daily:<YYYY-MM-DD>, weekly:<YYYY-Www>, match:<id>, region:<region>"),
        ("limit" = Option<u64>, Query, description = "1 to 1000 (default 100)"),
        ("offset" = Option<u64>, Query, description = "0 to 1,000,000 (default 0)"),
    ),
    responses(
        (status = 200, description = "The page", body = Board),
        (status = 400, description = "limit or offset out of range (named in the message)", body = httpkit::openapi::ErrorBody),
        (status = 404, description = "No such leaderboard", body = httpkit::openapi::ErrorBody),
        (status = 503, description = "The leaderboard store does not answer and nothing is known yet", body = httpkit::openapi::ErrorBody),
    ))]
pub(crate) async fn leaderboard(
    State(s): State<ApiState>,
    Path(board): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let limit = bounded(&q, "limit", 100, 1, MAX_LIMIT)?;
    let offset = bounded(&q, "offset", 0, 0, MAX_OFFSET)?;
    let (board, standing) = resolve_board(&board, protocol::now_ms())?;
    let key = format!("top:{board}:{offset}:{limit}");
    let boards = s.inner.boards.clone();
    let name = board.clone();
    let (page, down) = read_board(
        &s,
        key,
        async move { boards.top(&name, offset, limit).await },
    )
    .await?;
    match (&*page, standing) {
        (Some(page), _) => Ok(board_response(&board, page, down)),
        (None, true) => Ok(board_response(&board, &BoardPage::default(), down)),
        (None, false) => Err(ApiError::not_found(format!("no leaderboard {board:?}"))),
    }
}

/// A player's neighbourhood on a leaderboard.
#[utoipa::path(get, path = "/v1/leaderboards/{board}/around/{player}", tag = "leaderboards",
    params(
        ("board" = String, Path, description = "As for the board's page"),
        ("player" = String, Path, description = "The player id"),
        ("radius" = Option<u64>, Query, description = "Rows above and below, 0 to 100 (default 10)"),
        ("if_absent" = Option<String>, Query, description = "`empty`: a player not on an existing board gets 200 with no entries instead of 404 (a page showing its viewer's neighbourhood then asks without provoking an error)"),
    ),
    responses(
        (status = 200, description = "The neighbourhood", body = Board),
        (status = 400, description = "radius or if_absent invalid", body = httpkit::openapi::ErrorBody),
        (status = 404, description = "No such leaderboard, or the player is not on it", body = httpkit::openapi::ErrorBody),
        (status = 503, description = "The leaderboard store does not answer and nothing is known yet", body = httpkit::openapi::ErrorBody),
    ))]
pub(crate) async fn around(
    State(s): State<ApiState>,
    Path((board, player)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let radius = bounded(&q, "radius", 10, 0, MAX_RADIUS)?;
    let empty_if_absent = match q.get("if_absent").map(String::as_str) {
        None => false,
        Some("empty") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "if_absent",
                format!("{other:?}: the only value is empty"),
            ))
        }
    };
    let (board, _) = resolve_board(&board, protocol::now_ms())?;
    let key = format!("around:{board}:{player}:{radius}");
    let (boards, name, who) = (s.inner.boards.clone(), board.clone(), player.clone());
    let (page, down) = read_board(
        &s,
        key,
        async move { boards.around(&name, &who, radius).await },
    )
    .await?;
    match &*page {
        Some(page) => Ok(board_response(&board, page, down)),
        None if empty_if_absent => {
            // The board's own figures (total, freshness), without rows.
            let key = format!("top:{board}:0:1");
            let (boards, name) = (s.inner.boards.clone(), board.clone());
            let (page, down) =
                read_board(&s, key, async move { boards.top(&name, 0, 1).await }).await?;
            let mut page = (*page).clone().unwrap_or_default();
            page.entries.clear();
            Ok(board_response(&board, &page, down))
        }
        None => Err(ApiError::not_found(format!(
            "{player:?} is not on leaderboard {board:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(heartbeat_ms: Option<u64>, backlog: Option<u64>) -> BoardPage {
        BoardPage {
            aggregator_heartbeat_ms: heartbeat_ms,
            aggregator_backlog: backlog,
            ..BoardPage::default()
        }
    }

    #[test]
    fn a_board_is_fresh_while_the_aggregator_reports_and_keeps_up() {
        let now = 1_000_000;
        assert_eq!(staleness(now, &page(Some(now - 100), Some(3)), None), None);
        assert_eq!(
            staleness(
                now,
                &page(Some(now - HEARTBEAT_STALE_MS), Some(BACKLOG_STALE)),
                None
            ),
            None,
            "both limits are inclusive"
        );
    }

    #[test]
    fn each_reason_for_staleness_is_named_the_store_first() {
        let now = 1_000_000;
        let silent = page(Some(now - HEARTBEAT_STALE_MS - 1), Some(0));
        assert_eq!(
            staleness(now, &silent, None).as_deref(),
            Some("aggregator not reporting")
        );
        assert_eq!(
            staleness(now, &page(None, None), None).as_deref(),
            Some("aggregator not reporting"),
            "never reported"
        );
        let behind = page(Some(now), Some(BACKLOG_STALE + 1));
        assert_eq!(
            staleness(now, &behind, None).as_deref(),
            Some("aggregator is 1001 events behind")
        );
        assert_eq!(
            staleness(now, &behind, Some(now - 2_500)).as_deref(),
            Some("leaderboard store unavailable; last known value from 2500 ms ago")
        );
    }
}
