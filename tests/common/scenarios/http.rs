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
