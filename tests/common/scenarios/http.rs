//! HTTP bad input: JSON errors with the right status, never a stack trace.

use serde_json::Value;

use crate::common::{App, Backend};

/// HTTP bad input: JSON errors with the right status, never a stack trace.
pub async fn http_errors(backend: &Backend) {
    let app = App::spawn(backend, &["--matches", "1"]).await;
    let cases = [
        ("/v1/matches/nope/snapshot", 404, "not_found"),
        ("/v1/matches/bad.id/snapshot", 404, "not_found"),
        ("/v1/leaderboards/nope", 404, "not_found"),
        ("/v1/leaderboards/match:nope", 404, "not_found"),
        (
            "/v1/leaderboards/global?limit=100000",
            400,
            "invalid_request",
        ),
        ("/v1/leaderboards/global?offset=-1", 400, "invalid_request"),
        (
            "/v1/leaderboards/global/around/p?radius=abc",
            400,
            "invalid_request",
        ),
        ("/v1/players/nobody", 404, "not_found"),
        ("/v1/no/such/route", 404, "not_found"),
    ];
    for (path, status, code) in cases {
        let (got, body) = app.get(path).await;
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{path}: {body}"
        );
    }
    let (_, body) = app.get("/v1/leaderboards/global?limit=100000").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("limit"),
        "names the field: {body}"
    );

    // The listing: an ETag, and a 304 with no body while it has not changed (a page polling
    // it every 2 s moves nothing while nothing changes).
    let r = app.http.get(app.url("/v1/matches")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let listed: Value = r.json().await.unwrap();
    assert!(listed["matches"].as_array().is_some_and(|m| !m.is_empty()));
    let mut unchanged = 0;
    for _ in 0..20 {
        let r = app
            .http
            .get(app.url("/v1/matches"))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            304 => {
                assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
                assert!(r.bytes().await.unwrap().is_empty());
                unchanged += 1;
            }
            // The listing moved on (a score, a viewer count): a new body with a new tag.
            200 => assert_ne!(r.headers()["etag"].to_str().unwrap(), etag),
            s => panic!("listing: {s}"),
        }
    }
    assert!(unchanged > 0, "never a 304 in 20 polls");
    let r = app
        .http
        .get(app.url("/v1/matches"))
        .header("if-none-match", "\"stale\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Cold load: ETag and Cache-Control, then 304 on If-None-Match.
    let id = app.live_matches(1).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = app
        .http
        .get(app.url(&format!("/v1/matches/{id}/snapshot")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert!(r.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("max-age=1"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(etag, format!("\"{}:{}\"", body["epoch"], body["version"]));
    let r = app
        .http
        .get(app.url(&format!("/v1/matches/{id}/snapshot")))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert!(
        r.status() == 304 || r.status() == 200,
        "304 while the version holds"
    );
    let (status, health) = app.get("/healthz").await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let metrics = app.metrics_text().await;
    assert!(metrics.contains("gs_ticks_total"), "metrics exposed");
    // Every documented path is routed (parameters filled with something that exists or not),
    // and answers with a status the document lists.
    let (status, doc) = app.get("/openapi.json").await;
    assert_eq!(status, 200);
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 10);
    for (path, ops) in paths {
        let concrete = path
            .replace("{id}", &id)
            .replace("{board}", "global")
            .replace("{player}", "nobody");
        let res = if ops.get("post").is_some() {
            app.http.post(app.url(&concrete)).send().await.unwrap()
        } else {
            app.http.get(app.url(&concrete)).send().await.unwrap()
        };
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        assert_ne!(
            body["error"]["message"], "no such route",
            "{path} is documented but not routed"
        );
        let documented = ops
            .as_object()
            .unwrap()
            .values()
            .any(|op| op["responses"].get(status.to_string()).is_some());
        assert!(
            documented,
            "{path} answered {status}, which the document does not list"
        );
    }
    let page = app
        .http
        .get(app.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Grandstand"));
    // The dashboard is embedded in the binary: its page names hashed assets that are served
    // from memory with a long cache lifetime.
    let script = page
        .split("src=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the page loads a script");
    assert!(script.starts_with("/assets/"), "{script}");
    let r = app.http.get(app.url(script)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    assert!(r.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("immutable"));
    let identity = r.bytes().await.unwrap();
    assert!(identity.len() > 10_000);
    // Compressed once at build time: brotli to browsers that take it, else gzip, else as is.
    let get = |encoding: &'static str| {
        let (http, url) = (app.http.clone(), app.url(script));
        async move {
            let r = http
                .get(url)
                .header("accept-encoding", encoding)
                .send()
                .await
                .unwrap();
            let coding = r
                .headers()
                .get("content-encoding")
                .map(|v| v.to_str().unwrap().to_string());
            let vary = r
                .headers()
                .get("vary")
                .map(|v| v.to_str().unwrap().to_string());
            (coding, vary, r.bytes().await.unwrap())
        }
    };
    let (coding, vary, br) = get("gzip, deflate, br").await;
    assert_eq!(coding.as_deref(), Some("br"));
    assert_eq!(vary.as_deref(), Some("accept-encoding"));
    assert!(
        br.len() < identity.len() / 3,
        "{} of {}",
        br.len(),
        identity.len()
    );
    let (coding, _, gz) = get("gzip").await;
    assert_eq!(coding.as_deref(), Some("gzip"));
    let mut inflated = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut inflated).unwrap();
    assert_eq!(inflated, identity.to_vec(), "gzip form is the same script");
    let (coding, _, plain) = get("identity").await;
    assert_eq!((coding, plain.len()), (None, identity.len()));
    let (status, body) = app.get("/assets/nope.js").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    drop(app);
}

/// `POST /v1/render-health`: a page's report lands in the gateway's histograms; bad, huge and
/// flooding reports get a 4xx naming why, and none of them is counted as a report.
pub async fn render_reports(backend: &Backend) {
    let app = App::spawn(backend, &["--matches", "1"]).await;
    let post = |body: String| {
        let req = app
            .http
            .post(app.url("/v1/render-health"))
            .header("content-type", "text/plain;charset=UTF-8")
            .body(body);
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            (status, body)
        }
    };
    let accepted = r#"gw_render_reports_total{result="accepted"}"#;
    let report = serde_json::json!({
        "frames": 600, "dropped": 4,
        "frame_ms": [16.6, 16.7, 50.1], "lag_ms": [120.0, 95.5],
    });
    assert_eq!(post(report.to_string()).await.0, 204);
    assert_eq!(crate::common::viewers::metric(&app, accepted).await, 1.0);
    assert_eq!(
        crate::common::viewers::metric(&app, "gw_render_frames_total").await,
        600.0
    );
    assert_eq!(
        crate::common::viewers::metric(&app, "gw_render_frame_seconds_count").await,
        3.0
    );
    assert_eq!(
        crate::common::viewers::metric(&app, "gw_render_stream_lag_seconds_count").await,
        2.0
    );

    let too_many_samples = serde_json::json!({
        "frames": 1, "dropped": 0, "frame_ms": vec![16.0; 65], "lag_ms": [],
    });
    for (body, status, code, field) in [
        ("{not json".to_string(), 400, "invalid_request", "body"),
        (
            r#"{"frames":1,"dropped":0,"frame_ms":[],"lag_ms":[],"email":"a@b.c"}"#.into(),
            400,
            "invalid_request",
            "body",
        ),
        (
            too_many_samples.to_string(),
            400,
            "invalid_request",
            "frame_ms",
        ),
        (
            r#"{"frames":1,"dropped":0,"frame_ms":[],"lag_ms":[-5]}"#.into(),
            400,
            "invalid_request",
            "lag_ms",
        ),
        ("x".repeat(5000), 413, "body_too_large", ""),
    ] {
        let (got, err) = post(body).await;
        assert_eq!(
            (got, err["error"]["code"].as_str()),
            (status, Some(code)),
            "{err}"
        );
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(field), "{message}");
    }
    assert_eq!(crate::common::viewers::metric(&app, accepted).await, 1.0);

    // A flood from one address: past the address's burst every report is a 429, and what was
    // refused is counted as refused, not as a report.
    let mut statuses = Vec::new();
    for _ in 0..40 {
        statuses.push(post(report.to_string()).await.0);
    }
    assert!(
        statuses.iter().all(|s| *s == 204 || *s == 429),
        "{statuses:?}"
    );
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert!(refused >= 15, "{statuses:?}");
    let counted = crate::common::viewers::metric(&app, accepted).await;
    assert_eq!(counted as usize, 1 + statuses.len() - refused);
    assert_eq!(
        crate::common::viewers::metric(&app, r#"gw_render_reports_total{result="rate_limited"}"#)
            .await as usize,
        refused
    );
}
