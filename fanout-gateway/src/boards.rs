//! `GET /v1/leaderboards/{board}/stream`: leaderboard ticks (at most one a second per board,
//! published by the aggregator) to viewers over SSE or WebSocket. One subscription per board
//! per gateway feeds a watch channel: every viewer reads the latest tick, a slow one simply
//! skips the ticks it missed. Leaderboards are public, so no token is needed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use httpkit::ApiError;
use tokio::sync::watch;

use crate::stream::{wants_sse, wants_websocket};
use crate::Gateway;

/// Boards followed at once by one gateway; past it new boards get a 503.
const MAX_BOARD_FEEDS: usize = 1000;

#[derive(Default)]
pub(crate) struct BoardFeeds {
    feeds: Mutex<HashMap<String, watch::Receiver<Option<Bytes>>>>,
}

impl Gateway {
    fn board_feed(&self, board: &str) -> Result<watch::Receiver<Option<Bytes>>, ApiError> {
        let mut feeds = self.boards.feeds.lock().unwrap();
        if let Some(rx) = feeds.get(board) {
            if rx.has_changed().is_ok() {
                return Ok(rx.clone());
            }
        }
        if feeds.len() >= MAX_BOARD_FEEDS {
            return Err(ApiError::unavailable(
                "too many leaderboards followed; retry later",
            ));
        }
        let (tx, rx) = watch::channel(None);
        feeds.insert(board.to_string(), rx.clone());
        let (gw, board) = (self.clone(), board.to_string());
        tokio::spawn(async move {
            let mut ticks = match gw.ticks.ticks(&board).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, %board, "cannot follow leaderboard ticks");
                    gw.boards.feeds.lock().unwrap().remove(&board);
                    return;
                }
            };
            let mut idle = tokio::time::interval(Duration::from_secs(10));
            loop {
                tokio::select! {
                    t = ticks.next() => match t {
                        Some(t) => { tx.send_replace(Some(t)); }
                        None => break,
                    },
                    _ = idle.tick() => {
                        // Only the registry's own receiver left: nobody watches this board.
                        let mut feeds = gw.boards.feeds.lock().unwrap();
                        if tx.receiver_count() <= 1 {
                            feeds.remove(&board);
                            return;
                        }
                    }
                    _ = gw.shutdown.cancelled() => break,
                }
            }
            gw.boards.feeds.lock().unwrap().remove(&board);
        });
        Ok(rx)
    }
}

/// Leaderboard ticks (top 100, at most one a second, latest wins) over SSE (`event:
/// leaderboard`) or WebSocket.
#[utoipa::path(get, path = "/v1/leaderboards/{board}/stream", tag = "streams", operation_id = "board_stream",
    params(("board" = String, Path, description = "global, daily, weekly, daily:<YYYY-MM-DD>, weekly:<YYYY-Www>, match:<id>, region:<region>")),
    responses(
        (status = 101, description = "WebSocket"),
        (status = 200, description = "Server-Sent Events", content_type = "text/event-stream", body = String),
        (status = 404, description = "No such leaderboard", body = httpkit::openapi::ErrorBody),
        (status = 406, description = "Neither a WebSocket upgrade nor `Accept: text/event-stream`", body = httpkit::openapi::ErrorBody),
        (status = 429, description = "rate_limited or address_cap", body = httpkit::openapi::ErrorBody),
        (status = 503, description = "The leaderboard ticks are unavailable", body = httpkit::openapi::ErrorBody),
    ))]
pub(crate) async fn handle(
    State(gw): State<Gateway>,
    Path(board): Path<String>,
    req: Request,
) -> Response {
    let (mut parts, _) = req.into_parts();
    let Some((board, _)) = backends::leaderboard::resolve_board(&board, protocol::now_ms()) else {
        return ApiError::not_found(format!("no leaderboard {board:?}")).into_response();
    };
    let websocket = wants_websocket(&parts.headers);
    if !websocket && !wants_sse(&parts.headers) {
        return ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "not_acceptable",
            "ask for a WebSocket upgrade or send Accept: text/event-stream",
        )
        .into_response();
    }
    let rx = match gw.board_feed(&board) {
        Ok(rx) => rx,
        Err(e) => return e.into_response(),
    };
    if websocket {
        return match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(up) => up
                .max_message_size(gw.config.max_inbound_frame)
                .on_upgrade(move |ws| websocket_watcher(ws, rx)),
            Err(e) => ApiError::invalid("upgrade", e.body_text()).into_response(),
        };
    }
    let retry = format!("retry: {}\n\n", gw.config.retry_after_ms);
    let first =
        futures::stream::once(async move { Ok::<Bytes, std::io::Error>(Bytes::from(retry)) });
    let ticks = futures::stream::unfold((rx, true), |(mut rx, first)| async move {
        if !first && rx.changed().await.is_err() {
            return None;
        }
        let tick = rx.borrow_and_update().clone();
        let frame = match tick {
            Some(t) => {
                let mut f = b"event: leaderboard\ndata: ".to_vec();
                f.extend_from_slice(&t);
                f.extend_from_slice(b"\n\n");
                Bytes::from(f)
            }
            None => Bytes::from_static(b": waiting for the first tick\n\n"),
        };
        Some((Ok(frame), (rx, false)))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(first.chain(ticks)))
        .expect("static response parts")
}

async fn websocket_watcher(ws: WebSocket, mut rx: watch::Receiver<Option<Bytes>>) {
    let (mut sink, mut incoming) = ws.split();
    let mut pending = rx.borrow_and_update().clone();
    loop {
        if let Some(t) = pending.take() {
            let Ok(text) = Utf8Bytes::try_from(t) else {
                break;
            };
            if sink.send(Message::Text(text)).await.is_err() {
                break;
            }
        }
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() { break }
                pending = rx.borrow_and_update().clone();
            }
            msg = incoming.next() => match msg {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
}
