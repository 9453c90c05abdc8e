//! The end-to-end scenarios both backends run (embedded, and the real NATS, Redis and
//! PostgreSQL), by area: [`streams`] (the viewer contract, caps, gateway failover), [`scores`]
//! (leaderboards and history, outages, rebuilds), [`http`] (bad input), [`players`]
//! (matchmaking, UDP play, crash recovery). The helpers they share are here.

mod broadcast;
mod feed_v2;
mod http;
mod ops;
mod players;
mod scores;
mod streams;

// Each test binary runs some of the scenarios; the others are unused there.
#[allow(unused_imports)]
pub use broadcast::{multi_match_streams, partner_keys, replay_from_start};
#[allow(unused_imports)]
pub use feed_v2::{feed_v2, filtered_streams};
#[allow(unused_imports)]
pub use http::{http_errors, render_reports};
#[allow(unused_imports)]
pub use ops::{
    behind_a_proxy, config_file, internal_addr, jwks_url_rotation, jwt_tokens, otlp_traces,
    readiness_and_drain,
};
#[allow(unused_imports)]
pub use players::{crash_recovery, matchmaking};
#[allow(unused_imports)]
pub use scores::{history_outage, rebuild_after_redis_loss, scores_and_history};
#[allow(unused_imports)]
pub use streams::{connection_caps, gateway_failover, producer_status, stream_contract};

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use crate::common::clients::{ws_next, WsNext};
use crate::common::App;

pub(super) async fn closed_with(ws: &mut crate::common::clients::Ws) -> Option<u16> {
    loop {
        match ws_next(ws, Duration::from_secs(10)).await {
            WsNext::Json(_) => continue,
            WsNext::Closed(frame) => return frame.map(|f| u16::from(f.code)),
        }
    }
}

pub(super) async fn results(app: &App, id: &str) -> Option<Value> {
    let (status, body) = app.get(&format!("/v1/matches/{id}/results")).await;
    (status == 200
        && body["ended_ms"].is_u64()
        && body["results"].as_array().is_some_and(|r| !r.is_empty()))
    .then_some(body)
}

/// Everything one would compare between two states of the leaderboards.
pub(super) async fn boards_of(app: &App, ids: &[String]) -> Vec<(String, Value)> {
    let mut names: Vec<String> = ["global", "daily", "weekly", "region:eu", "region:us"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    names.extend(ids.iter().map(|id| format!("match:{id}")));
    let mut out = Vec::new();
    for name in names {
        let (status, b) = app
            .get(&format!("/v1/leaderboards/{name}?limit=1000"))
            .await;
        assert_eq!(status, 200, "{name}: {b}");
        out.push((name, b["entries"].clone()));
    }
    out
}

pub(super) async fn post_join(app: &App, token: Option<&str>, body: &str) -> (u16, Value) {
    let mut req = app
        .http
        .post(app.url("/v1/matchmaking/join"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

pub(super) fn udp_server(ticket: &Value) -> std::net::SocketAddr {
    ticket["server"].as_str().unwrap().parse().unwrap()
}

/// The player id inside a guest token's claims.
pub(super) fn guest_id(token: &str) -> String {
    use base64::Engine;
    let body = token.split('.').next().unwrap();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .unwrap();
    serde_json::from_slice::<Value>(&json).unwrap()["sub"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A leaderboard response's scores by player.
pub(super) fn board_scores(board: &Value) -> Option<HashMap<String, i64>> {
    Some(
        board["entries"]
            .as_array()?
            .iter()
            .map(|e| {
                (
                    e["player"].as_str().unwrap().to_string(),
                    e["score"].as_i64().unwrap(),
                )
            })
            .collect(),
    )
}
