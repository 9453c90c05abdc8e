//! Every JSON body that crosses a trust boundary: the matchmaking request body (REST, from any
//! player) through the real router, and event bodies from the match log through the
//! aggregator's scoring and history rules. Whatever arrives, the answer is a 200 or a JSON 400
//! naming the field (never a 500 or a panic), and an event that parses scores without panicking.
#![no_main]

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use httpkit::{matchmaking_router, Assignment, Matchmaking};
use httpkit::ApiError;
use libfuzzer_sys::fuzz_target;
use protocol::{Claims, EventRecord, LogKind, LogRecord, TokenSigner};
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

struct Fixture {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    bearer: String,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let signer = TokenSigner::new(b"fuzz-secret-0123456789abcdef");
        let bearer = signer.sign(&Claims {
            sub: "p1".into(),
            name: "P1".into(),
            exp: u64::MAX / 2,
        });
        Fixture {
            runtime: tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap(),
            router: matchmaking_router(Arc::new(Placed), signer),
            bearer,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let req = Request::post("/v1/matchmaking/join")
        .header("authorization", format!("Bearer {}", f.bearer))
        .header("content-type", "application/json")
        .body(Body::from(data.to_vec()))
        .unwrap();
    let res = f.runtime.block_on(f.router.clone().oneshot(req)).unwrap();
    let status = res.status();
    assert!(
        status == StatusCode::OK || status == StatusCode::BAD_REQUEST,
        "join answered {status}"
    );
    let body = f
        .runtime
        .block_on(axum::body::to_bytes(res.into_body(), 1 << 20))
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&body).expect("a JSON answer");
    if status == StatusCode::BAD_REQUEST {
        assert!(json.get("error").is_some(), "a 400 names its error: {json}");
    }

    // The same bytes as a log event body.
    if let Ok(event) = serde_json::from_slice::<EventRecord>(data) {
        let record = LogRecord {
            match_id: "eu-1".into(),
            epoch: 1,
            version: 1,
            kind: LogKind::Event,
            body: bytes::Bytes::copy_from_slice(data),
        };
        let scored = aggregator::scored_event(
            &record,
            &event,
            &aggregator::BoardRetention::default(),
            1_700_000_000_000,
        );
        assert_eq!(scored.seq, event.seq);
        let _ = aggregator::history_records(&record, &event);
    }
});
