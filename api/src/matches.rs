//! Matches: the listing, cold loads of a match's state (cached, single-flight, with ETags), and
//! the results of ended matches.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use backends::{load_feed, LogError, MatchLog};
use bytes::Bytes;
use httpkit::ApiError;
use protocol::{MatchStatus, SpectatorState};
use serde::Serialize;

use crate::{metrics, ApiState};

/// A match state as served: the JSON body, encoded once per cache fill, and its position.
#[derive(Debug)]
pub(crate) struct Snapshot {
    etag: HeaderValue,
    body: Bytes,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct ScoreLine {
    player: String,
    name: String,
    score: u32,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct MatchListing {
    id: String,
    region: String,
    status: MatchStatus,
    players: usize,
    /// Viewers on every live gateway (from their heartbeats).
    viewers: u64,
    epoch: u64,
    version: u64,
    /// The top scores, as of the latest keyframe (a few seconds old at most); empty for a
    /// match broadcast with a delay.
    top: Vec<ScoreLine>,
    #[serde(skip_serializing_if = "is_zero")]
    broadcast_delay_ms: u64,
}

/// `GET /v1/matches`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct MatchList {
    /// Live matches first, then the most recent ended ones (at most 20).
    matches: Vec<MatchListing>,
    /// Present (true) when the match log does not answer and the last listing read is served.
    #[serde(skip_serializing_if = "Option::is_none")]
    stale: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stale_reason: Option<String>,
    /// When the served listing was read (ms since the Unix epoch), when stale.
    #[serde(skip_serializing_if = "Option::is_none")]
    listed_at_ms: Option<u64>,
}

/// `GET /v1/matches/{id}/snapshot`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct MatchSnapshot<'a> {
    #[serde(rename = "match")]
    match_id: &'a str,
    epoch: u64,
    version: u64,
    state: &'a SpectatorState,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn log_error(e: LogError) -> ApiError {
    match e {
        LogError::UnknownMatch => ApiError::not_found("no such match"),
        other => {
            tracing::warn!(error = %other, "match log read failed");
            ApiError::unavailable("match log unavailable; retry")
        }
    }
}

async fn load_listings(log: &dyn MatchLog) -> Result<Vec<MatchListing>, ApiError> {
    let ids = log.match_ids().await.map_err(log_error)?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let Ok(kf) = log.latest_keyframe(&id).await else {
            continue;
        };
        let Ok(state) = serde_json::from_slice::<SpectatorState>(&kf.body) else {
            continue;
        };
        // A delayed match's live scores would give its players away: list it without them.
        let delayed = state.broadcast_delay_ms > 0;
        let mut top: Vec<ScoreLine> = state
            .players
            .iter()
            .filter(|_| !delayed)
            .map(|(p, v)| ScoreLine {
                player: p.clone(),
                name: v.name.clone(),
                score: v.score,
            })
            .collect();
        top.sort_by(|a, b| b.score.cmp(&a.score).then_with(|| a.player.cmp(&b.player)));
        top.truncate(5);
        out.push(MatchListing {
            id,
            region: state.region.clone(),
            status: state.status,
            players: state.players.len(),
            viewers: 0,
            epoch: kf.epoch,
            version: kf.version,
            top,
            broadcast_delay_ms: state.broadcast_delay_ms,
        });
    }
    // Live matches first, the most recent first within each status.
    out.sort_by(|a, b| {
        (a.status != MatchStatus::Live)
            .cmp(&(b.status != MatchStatus::Live))
            .then(b.epoch.cmp(&a.epoch))
    });
    Ok(out)
}

/// Live matches, then the most recent ended ones; while the match log does not answer, the
/// last listing read, marked stale.
#[utoipa::path(get, path = "/v1/matches", tag = "matches",
    params(("If-None-Match" = Option<String>, Header, description = "The ETag of an earlier listing")),
    responses(
    (status = 200, description = "The listing (Cache-Control: max-age=1; ETag: a digest of the body)", body = MatchList),
    (status = 304, description = "Unchanged since the ETag given: a page polling the list moves no body while nothing changes"),
    (status = 503, description = "The match log does not answer and no listing was read yet", body = httpkit::openapi::ErrorBody),
))]
pub(crate) async fn list_matches(
    State(s): State<ApiState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let inner = s.inner.clone();
    let read = s
        .inner
        .match_list
        .try_get_with(
            (),
            async move { load_listings(&*inner.log).await.map(Arc::new) },
        )
        .await;
    let (listings, stale_since) = match read {
        Ok(listings) => {
            *s.inner.last_listing.lock().unwrap() = Some((listings.clone(), protocol::now_ms()));
            (listings, None)
        }
        Err(e) => match s.inner.last_listing.lock().unwrap().clone() {
            // The log does not answer: the last listing, marked, rather than nothing.
            Some((listings, at_ms)) => (listings, Some(at_ms)),
            None => return Err((*e).clone()),
        },
    };
    let mut listings = (*listings).clone();
    // Ended matches stay listed for their retention; show the most recent few.
    let mut ended = 0;
    listings.retain(|m| {
        m.status == MatchStatus::Live || {
            ended += 1;
            ended <= 20
        }
    });
    if let Some(viewers) = &s.inner.viewers {
        for m in &mut listings {
            m.viewers = viewers(&m.id);
        }
    }
    let body = MatchList {
        matches: listings,
        stale: stale_since.map(|_| true),
        stale_reason: stale_since.map(|_| "match log unavailable; the last listing read".into()),
        listed_at_ms: stale_since,
    };
    let body = serde_json::to_vec(&body).map_err(ApiError::internal)?;
    let etag = listing_etag(&body);
    let mut res = if if_none_match(&headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, "application/json")], body).into_response()
    };
    res.headers_mut().insert(header::ETAG, etag);
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=1"),
    );
    Ok(res)
}

/// A strong validator of a listing: a digest of its exact bytes (the viewer counts and scores
/// in it change often, so no position would do).
fn listing_etag(body: &[u8]) -> HeaderValue {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut h);
    HeaderValue::from_str(&format!("\"l{:016x}\"", h.finish())).expect("ascii")
}

/// Whether `If-None-Match` names `etag` (or `*`).
fn if_none_match(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
}

/// The match's current state; `live` serves it even when the match is broadcast with a delay
/// (a partner whose key says delay 0).
async fn load_snapshot(
    log: &dyn MatchLog,
    match_id: &str,
    live: bool,
) -> Result<Arc<Snapshot>, ApiError> {
    metrics::SNAPSHOT_LOADS.inc();
    let feed = load_feed(log, match_id, 1).await.map_err(log_error)?;
    let position = feed
        .position()
        .ok_or_else(|| ApiError::not_found("no such match"))?;
    // The cold load reads the live log; a match broadcast with a delay must come from a
    // gateway, which holds it back. Saying so beats serving the live state.
    let delay = feed.state().broadcast_delay_ms;
    if delay > 0 && !live {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "delayed_broadcast",
            format!(
                "this match is broadcast {} s behind the game; open its stream without `since` (the first message is a delayed snapshot)",
                delay as f64 / 1000.0
            ),
        ));
    }
    let body = serde_json::to_vec(&MatchSnapshot {
        match_id,
        epoch: position.epoch,
        version: position.version,
        state: feed.state(),
    })
    .map_err(ApiError::internal)?;
    Ok(Arc::new(Snapshot {
        etag: HeaderValue::from_str(&format!("\"{position}\"")).map_err(ApiError::internal)?,
        body: body.into(),
    }))
}

/// The match state at its latest version (cached; ETag `"epoch:version"`).
#[utoipa::path(get, path = "/v1/matches/{id}/snapshot", tag = "matches",
    params(
        ("id" = String, Path, description = "The match id"),
        ("If-None-Match" = Option<String>, Header, description = "An ETag from an earlier answer"),
    ),
    responses(
        (status = 200, description = "The state (Cache-Control: public, max-age=1; private for a partner reading a delayed match live)", body = MatchSnapshot),
        (status = 304, description = "Unchanged since the ETag given"),
        (status = 401, description = "A partner key that is unknown or revoked", body = httpkit::openapi::ErrorBody),
        (status = 403, description = "A partner key that does not cover this match", body = httpkit::openapi::ErrorBody),
        (status = 404, description = "No such match", body = httpkit::openapi::ErrorBody),
        (status = 409, description = "delayed_broadcast: the match is broadcast behind the game; open its stream without `since` instead (its first message is a delayed snapshot)", body = httpkit::openapi::ErrorBody),
        (status = 503, description = "The match log does not answer", body = httpkit::openapi::ErrorBody),
    ))]
pub(crate) async fn snapshot(
    State(s): State<ApiState>,
    Path(match_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !protocol::valid_match_id(&match_id) {
        return Err(ApiError::not_found("no such match"));
    }
    // A partner key at delay 0 reads the live state of a delayed match (other callers,
    // partners at a delay included, get the 409: the cold load has no delayed state to give).
    let live = match httpkit::bearer(&headers, None) {
        Some(key) if protocol::partner::is_key(key) => {
            let partner = s.inner.partners.lookup(key).ok_or_else(|| {
                ApiError::unauthorized("token: partner key is unknown or revoked")
            })?;
            if !partner.covers(&match_id) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "token: this partner key does not cover this match",
                ));
            }
            partner.delay_ms == Some(0)
        }
        _ => false,
    };
    let inner = s.inner.clone();
    let key = if live {
        format!("{match_id}@live")
    } else {
        match_id.clone()
    };
    let snap = s
        .inner
        .snapshots
        .try_get_with(key, async move {
            load_snapshot(&*inner.log, &match_id, live).await
        })
        .await
        .map_err(|e| (*e).clone())?;
    let max_age = s.inner.config.snapshot_ttl.as_secs().max(1);
    // What a partner sees live must not be kept by shared caches for the public.
    let scope = if live { "private" } else { "public" };
    let cache_control = HeaderValue::from_str(&format!(
        "{scope}, max-age={max_age}, stale-while-revalidate=5"
    ))
    .expect("ascii");
    let mut res = if if_none_match(&headers, &snap.etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(header::CONTENT_TYPE, "application/json")],
            snap.body.clone(),
        )
            .into_response()
    };
    res.headers_mut().insert(header::ETAG, snap.etag.clone());
    res.headers_mut()
        .insert(header::CACHE_CONTROL, cache_control);
    Ok(res)
}

pub(crate) fn history_error(e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "history read failed");
    ApiError::unavailable("history unavailable; retry")
}

/// The final results of an ended match, from the history.
#[utoipa::path(get, path = "/v1/matches/{id}/results", tag = "matches",
    params(("id" = String, Path, description = "The match id")),
    responses(
        (status = 200, description = "The results", body = backends::MatchSummary),
        (status = 404, description = "No recorded match", body = httpkit::openapi::ErrorBody),
        (status = 503, description = "The history does not answer", body = httpkit::openapi::ErrorBody),
    ))]
pub(crate) async fn results(
    State(s): State<ApiState>,
    Path(match_id): Path<String>,
) -> Result<Response, ApiError> {
    let inner = s.inner.clone();
    let key = format!("results:{match_id}");
    let body = s
        .inner
        .history_reads
        .try_get_with(key, async move {
            let summary = inner
                .history
                .match_summary(&match_id)
                .await
                .map_err(history_error)?;
            let summary = summary
                .ok_or_else(|| ApiError::not_found(format!("no recorded match {match_id:?}")))?;
            serde_json::to_vec(&summary)
                .map(Bytes::from)
                .map_err(ApiError::internal)
        })
        .await
        .map_err(|e| (*e).clone())?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}
