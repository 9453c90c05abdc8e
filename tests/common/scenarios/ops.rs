//! Operating the platform: `/readyz` answers for the role's backends, and SIGTERM drains a
//! gateway's viewers spread over `--drain-secs` (readiness turning 503 first) before the
//! process exits cleanly; logs are JSON lines when asked.

use std::time::{Duration, Instant};

use testkit::process::stdout_of;
use testkit::wsclient::{Offer, RawWs, Received};

use crate::common::clients::guests_allowed;
use crate::common::{App, Backend};

const VIEWERS: usize = 30;

/// `n` WebSocket viewers of match `id`, each past its snapshot; one guest per viewer (a single
/// user is held to a few concurrent streams).
async fn ws_viewers(app: &App, id: &str, n: usize) -> Vec<RawWs> {
    let mut viewers = Vec::new();
    for _ in 0..n {
        let offer = Offer {
            extensions: None,
            protocol: None,
            token: Some(app.guest_token().await),
        };
        let mut ws = RawWs::connect(&app.base, &format!("/v1/matches/{id}/stream"), &offer)
            .await
            .unwrap()
            .unwrap_or_else(|r| panic!("refused {}: {}", r.status, r.body));
        assert_eq!(
            ws.json(Duration::from_secs(10)).await.unwrap()["type"],
            "snapshot"
        );
        viewers.push(ws);
    }
    viewers
}

pub async fn readiness_and_drain(backend: &Backend) {
    let app = App::spawn_with(
        backend,
        &["--matches", "1", "--bots", "4", "--log-format", "json"],
        &[("GRANDSTAND_DRAIN_SECS", "3".to_string())],
        None,
    )
    .await;
    // JSON logs: one object per line, with the fields a log pipeline indexes.
    let log = app.log();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let entry: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            entry["level"].is_string() && entry["timestamp"].is_string(),
            "{line}"
        );
    }
    assert!(log.contains("\"http_addr\""), "{log}");

    let (status, ready) = app.get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    for check in ["match_log", "leaderboards", "history"] {
        assert_eq!(ready["checks"][check], "ok", "{ready}");
    }
    // With real backends, the Redis server is pinged as well.
    assert_eq!(
        ready["checks"]["redis"].as_str(),
        backend.redis_prefix().map(|_| "ok"),
        "{ready}"
    );

    let id = app.live_match_ids(1).await.remove(0);
    let viewers = ws_viewers(&app, &id, VIEWERS).await;

    let signalled = Instant::now();
    app.terminate();
    // Each viewer: how long after the signal it was closed, and with what.
    let closes: Vec<_> = viewers
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                loop {
                    match ws.next(Duration::from_secs(10)).await.unwrap() {
                        Some(Received::Text(_)) => continue,
                        Some(Received::Close(code, reason)) => {
                            return (signalled.elapsed(), code, reason)
                        }
                        other => panic!("no close frame: {other:?}"),
                    }
                }
            })
        })
        .collect();

    // Readiness turns first, while the viewers are still being served.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let (status, body) = app.get("/readyz").await;
        if status == 503 {
            assert_eq!(body["error"]["code"], "not_ready", "{body}");
            assert!(body["checks"]["draining"].is_string(), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {status} after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut at = Vec::new();
    for close in closes {
        let (after, code, reason) = close.await.unwrap();
        assert_eq!(code, Some(1012), "{reason}");
        assert!(reason.contains("draining"), "{reason}");
        at.push(after);
    }
    at.sort();
    let (first, last) = (at[0], at[VIEWERS - 1]);
    // Spread over the 3 s period, not all at once: the first leave early, the last near the end.
    assert!(
        first < Duration::from_millis(1500),
        "first close after {first:?}"
    );
    assert!(
        last - first >= Duration::from_millis(1500),
        "closes spread over only {:?}: {at:?}",
        last - first
    );
    let stopped = app.exited(Duration::from_secs(10)).await;
    assert!(stopped.contains(&"--matches".to_string()));
    assert!(signalled.elapsed() < Duration::from_secs(10));
}

/// Behind a trusted proxy the per-address limits count the client named by the forwarding
/// headers (the rightmost untrusted hop, IPv6 per /64); from an untrusted peer the headers are
/// ignored and every request counts as the peer's.
pub async fn behind_a_proxy(backend: &Backend) {
    // 40 sign-ins from one address: past the 30-sign-in burst for one address.
    const N: usize = 40;
    let proxied = App::spawn(
        backend,
        &["--matches", "1", "--trusted-proxies", "127.0.0.0/8"],
    )
    .await;
    let distinct = guests_allowed(&proxied.http, &proxied.base, N, |i| {
        format!("203.0.113.{i}")
    })
    .await;
    assert_eq!(
        distinct, N,
        "distinct clients behind the proxy share no limit"
    );
    // The client forges first hops; the proxy appends the real address, which is the one counted.
    let forged = guests_allowed(&proxied.http, &proxied.base, N, |i| {
        format!("6.6.{i}.6, 198.51.100.7")
    })
    .await;
    assert!(
        forged < N,
        "a forged first hop escaped the limit ({forged} of {N})"
    );
    // IPv6 clients are one client per /64, whatever their interface id.
    let same_64 = guests_allowed(&proxied.http, &proxied.base, N, |i| {
        format!("2001:db8:5:6::{i:x}")
    })
    .await;
    assert!(
        same_64 < N,
        "addresses of one /64 escaped the limit ({same_64} of {N})"
    );
    proxied.stop().await;

    let direct = App::spawn(
        backend,
        &["--matches", "1", "--trusted-proxies", "10.0.0.0/8"],
    )
    .await;
    let ignored = guests_allowed(&direct.http, &direct.base, N, |i| format!("203.0.113.{i}")).await;
    assert!(
        ignored < N,
        "an untrusted peer's X-Forwarded-For was believed ({ignored} of {N})"
    );
    direct.stop().await;
}

/// `--config FILE.toml` configures a role (flag > env > file > default), `config print` shows
/// the effective values with their sources and secrets masked, and an unknown key stops the
/// start with a message naming it.
pub async fn config_file(backend: &Backend) {
    let dir = backend.data_dir().join("config-test");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("grandstand.toml");
    std::fs::write(
        &path,
        "# one file for the whole deployment\n\
         matches = 1\n\
         bots = 3\n\
         log_format = \"json\"\n\
         cors_origins = [\"https://overlay.example\"]\n\
         drain_secs = 7\n\
         max_connections = 5000\n\
         token_secret = \"file-secret-that-is-long-enough\"\n",
    )
    .unwrap();
    let path_arg = path.to_str().unwrap();

    let print = |env: &[(&str, &str)]| {
        stdout_of(
            std::process::Command::new(testkit::grandstand_bin())
                .args(["config", "print", "gateway", "--config", path_arg])
                .envs(env.iter().copied()),
        )
    };
    let printed = print(&[]);
    for line in [
        "drain_secs = \"7\"  # file",
        "max_connections = \"5000\"  # file",
        "cors_origins = \"https://overlay.example\"  # file",
        "token_secret = \"********\"  # file",
        "header_timeout_secs = \"10\"  # default",
    ] {
        assert!(printed.contains(line), "no {line:?} in:\n{printed}");
    }
    assert!(!printed.contains("file-secret"), "{printed}");
    // `matches` is not a gateway option: ignored there.
    assert!(!printed.contains("matches ="), "{printed}");
    // The environment beats the file.
    let printed = print(&[("GRANDSTAND_MAX_CONNECTIONS", "42")]);
    assert!(
        printed.contains("max_connections = \"42\"  # env"),
        "{printed}"
    );

    // A running platform takes its settings from the file.
    let app = App::spawn(backend, &["--config", path_arg]).await;
    let log = app.log();
    let first = log.lines().find(|l| !l.trim().is_empty()).unwrap();
    assert!(
        serde_json::from_str::<serde_json::Value>(first).is_ok(),
        "not JSON: {first}"
    );
    let id = app.live_match_ids(1).await.remove(0);
    let preflight = app
        .http
        .request(
            reqwest::Method::OPTIONS,
            app.url(&format!("/v1/matches/{id}/snapshot")),
        )
        .header("origin", "https://overlay.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://overlay.example"
    );
    app.stop().await;

    // An unknown key is an error that names it, before anything starts.
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "matchs = 3\n").unwrap();
    let (ok, out) = crate::common::run_to_completion(backend, &["--config", bad.to_str().unwrap()]);
    assert!(!ok && out.contains("unknown key `matchs`"), "{out}");
}

/// JWTs minted by a deployment's own backend are bearer tokens everywhere: HS256 with either
/// of two rotating secrets, RS256 with a key from a JWKS file; expired, unknown-key and
/// `alg: none` tokens get a 401 before any stream opens.
pub async fn jwt_tokens(backend: &Backend) {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

    let dir = backend.data_dir().join("jwt-test");
    std::fs::create_dir_all(&dir).unwrap();
    let (rsa_key, jwk) = rsa_key(&dir, "k1");
    let jwks = serde_json::json!({ "keys": [jwk] });
    let jwks_path = dir.join("jwks.json");
    std::fs::write(&jwks_path, jwks.to_string()).unwrap();

    let app = App::spawn(
        backend,
        &[
            "--matches",
            "1",
            "--jwt-secrets",
            "first-secret-0000001,second-secret-000002",
            "--jwt-jwks-file",
            jwks_path.to_str().unwrap(),
        ],
    )
    .await;
    let id = app.live_match_ids(1).await.remove(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let hs = |secret: &str, sub: &str, exp: u64| {
        encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": sub, "exp": exp, "name": "Acme player"}),
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let rs = rs256(&rsa_key, "k1", "acme-rs", now + 300);
    let stream = |token: String| sse_with_token(&app, id.clone(), token);
    for (what, token) in [
        (
            "HS256, first secret",
            hs("first-secret-0000001", "acme-1", now + 300),
        ),
        (
            "HS256, second secret",
            hs("second-secret-000002", "acme-2", now + 300),
        ),
        ("RS256 from the JWKS", rs.clone()),
    ] {
        let (status, body) = stream(token).await;
        assert_eq!(status, 200, "{what}: {body}");
        assert!(body.contains("event: snapshot"), "{what}: {body}");
    }
    // Matchmaking takes them too (the player is the JWT's `sub`).
    let r = app
        .http
        .post(app.url("/v1/matchmaking/join"))
        .bearer_auth(hs("second-secret-000002", "acme-3", now + 300))
        .json(&serde_json::json!({"region": "eu", "skill": 1000}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    for (what, token, says) in [
        (
            "expired",
            hs("first-secret-0000001", "acme-1", now - 5),
            "expired",
        ),
        (
            "unknown secret",
            hs("not-a-secret-we-know", "acme-1", now + 300),
            "invalid",
        ),
        (
            "alg none",
            "eyJhbGciOiJub25lIn0.eyJzdWIiOiJwIiwiZXhwIjo5OTk5OTk5OTk5fQ.".to_string(),
            "invalid",
        ),
    ] {
        let (status, body) = stream(token).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert!(body.contains(says), "{what}: {body}");
    }
    app.stop().await;
}

/// An RSA key made by openssl in `dir`, and its public half as a JWK named `kid`.
fn rsa_key(dir: &std::path::Path, kid: &str) -> (jsonwebtoken::EncodingKey, serde_json::Value) {
    use base64::Engine;
    let key = dir.join(format!("{kid}.pem"));
    let openssl = |args: &[&str]| stdout_of(std::process::Command::new("openssl").args(args));
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        key.to_str().unwrap(),
    ]);
    let modulus = openssl(&["rsa", "-in", key.to_str().unwrap(), "-noout", "-modulus"]);
    let modulus = modulus.trim().trim_start_matches("Modulus=");
    let n: Vec<u8> = (0..modulus.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&modulus[i..i + 2], 16).unwrap())
        .collect();
    let jwk = serde_json::json!({
        "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
        "n": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(n), "e": "AQAB"
    });
    let encoding = jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(&key).unwrap()).unwrap();
    (encoding, jwk)
}

fn rs256(key: &jsonwebtoken::EncodingKey, kid: &str, sub: &str, exp: u64) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, &serde_json::json!({"sub": sub, "exp": exp}), key).unwrap()
}

/// Opens the match's SSE stream with `token`: the status, and the body up to the snapshot
/// (or the error body).
async fn sse_with_token(app: &App, id: String, token: String) -> (u16, String) {
    let r = app
        .http
        .get(app.url(&format!("/v1/matches/{id}/stream")))
        .header("accept", "text/event-stream")
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    if status != 200 {
        return (status, r.text().await.unwrap());
    }
    // Read until the snapshot (a `retry:` line may come first).
    let mut r = r;
    let mut text = String::new();
    while !text.contains("event: snapshot") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), r.chunk())
            .await
            .expect("no snapshot within 5 s")
            .unwrap()
            .expect("the stream ended");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    (status, text)
}

/// Keys from an identity provider's JWKS URL: read at start (an unreachable URL stops the
/// start with an error naming it), and a key published later is taken within seconds of the
/// first token naming it, without a restart.
pub async fn jwks_url_rotation(backend: &Backend) {
    let dir = backend.data_dir().join("jwks-url-test");
    std::fs::create_dir_all(&dir).unwrap();
    let (first_key, first_jwk) = rsa_key(&dir, "first");
    let (second_key, second_jwk) = rsa_key(&dir, "second");

    // The identity provider: serves whatever set `published` holds, counting requests.
    let published = std::sync::Arc::new(std::sync::Mutex::new(
        serde_json::json!({ "keys": [first_jwk.clone()] }),
    ));
    let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let provider = {
        let published = published.clone();
        let fetches = fetches.clone();
        axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let set = published.lock().unwrap().clone();
                fetches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                async move { axum::Json(set) }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, provider).await });

    // Nothing listening there: the start fails, naming the JWKS and the URL.
    let closed = format!(
        "http://127.0.0.1:{}/jwks.json",
        testkit::process::free_port().unwrap()
    );
    let (ok, out) =
        crate::common::run_to_completion(backend, &["--matches", "1", "--jwt-jwks-url", &closed]);
    assert!(!ok, "started with an unreachable JWKS: {out}");
    assert!(out.contains("JWKS") && out.contains(&closed), "{out}");

    let app = App::spawn(backend, &["--matches", "1", "--jwt-jwks-url", &url]).await;
    let id = app.live_match_ids(1).await.remove(0);
    let now = protocol::now_secs();
    let (status, body) = sse_with_token(
        &app,
        id.clone(),
        rs256(&first_key, "first", "idp-1", now + 300),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // The provider rotates: the second key is published. The first token naming it is
    // refused (not known yet) and asks for an early re-read; within seconds it is taken.
    *published.lock().unwrap() = serde_json::json!({ "keys": [first_jwk, second_jwk] });
    let second = rs256(&second_key, "second", "idp-2", now + 300);
    let before = fetches.load(std::sync::atomic::Ordering::Relaxed);
    let accepted = testkit::eventually(Duration::from_secs(8), || {
        let (app, id, token) = (&app, id.clone(), second.clone());
        async move {
            let (status, _) = sse_with_token(app, id, token).await;
            (status == 200).then_some(())
        }
    })
    .await;
    // 8 s after the rotation: only an early re-read (the periodic one is every 60 s).
    assert!(
        accepted.is_some(),
        "the rotated key was not taken within 8 s"
    );
    // A flood of unknown key ids costs the provider at most one early re-read per 10 s.
    for _ in 0..50 {
        let forged = rs256(&second_key, "nobody-knows-me", "idp-3", now + 300);
        let (status, _) = sse_with_token(&app, id.clone(), forged).await;
        assert_eq!(status, 401);
    }
    let extra = fetches.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert!(
        extra <= 2,
        "{extra} JWKS fetches for one rotation and a flood"
    );
    app.stop().await;
}

/// With `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans reach an OTLP/HTTP collector (served by the
/// test, reading OTLP JSON): HTTP requests named by route, match log publishes and reads,
/// aggregator batches; with ten viewers attached there is still no span per viewer message.
pub async fn otlp_traces(backend: &Backend) {
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::<serde_json::Value>::new()));
    let collector = {
        let bodies = bodies.clone();
        axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let bodies = bodies.clone();
                async move {
                    match serde_json::from_slice::<serde_json::Value>(&body) {
                        Ok(v) => {
                            bodies.lock().unwrap().push(v);
                            axum::http::StatusCode::OK
                        }
                        Err(_) => axum::http::StatusCode::BAD_REQUEST,
                    }
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, collector).await });

    let app = App::spawn_with(
        backend,
        &["--matches", "1", "--bots", "8"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json".into()),
            ("OTEL_SERVICE_NAME", "grandstand-under-test".into()),
            ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
        ],
        None,
    )
    .await;
    let id = app.live_match_ids(1).await.remove(0);
    const TRACED_VIEWERS: usize = 10;
    let viewers = ws_viewers(&app, &id, TRACED_VIEWERS).await;
    let (status, _) = app.get(&format!("/v1/matches/{id}/snapshot")).await;
    assert_eq!(status, 200);

    // Spans as the collector holds them: (service, name, attributes).
    let spans = |bodies: &[serde_json::Value]| {
        let mut out = Vec::new();
        for body in bodies {
            for rs in body["resourceSpans"].as_array().into_iter().flatten() {
                let service = rs["resource"]["attributes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|a| a["key"] == "service.name")
                    .and_then(|a| a["value"]["stringValue"].as_str())
                    .unwrap_or_default()
                    .to_string();
                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                    for span in ss["spans"].as_array().into_iter().flatten() {
                        let name = span["name"].as_str().unwrap_or_default().to_string();
                        out.push((service.clone(), name, span["attributes"].clone()));
                    }
                }
            }
        }
        out
    };
    let wanted = [
        "GET /v1/matches/{id}/stream",
        "GET /v1/matches/{id}/snapshot",
        "POST /v1/auth/guest",
        "match_log.publish",
        "match_log.consume",
        "aggregator.leaderboard_batch",
        "aggregator.history_batch",
    ];
    let seen = testkit::eventually(Duration::from_secs(30), || {
        let bodies = bodies.clone();
        async move {
            let all = spans(&bodies.lock().unwrap());
            wanted
                .iter()
                .all(|w| all.iter().any(|(_, name, _)| name == w))
                .then_some(all)
        }
    })
    .await;
    let Some(all) = seen else {
        let names: std::collections::BTreeSet<String> = spans(&bodies.lock().unwrap())
            .into_iter()
            .map(|(_, n, _)| n)
            .collect();
        panic!("never saw all of {wanted:?}; saw {names:?}");
    };
    assert!(all
        .iter()
        .all(|(service, _, _)| service == "grandstand-under-test"));
    // Nothing else is traced: no span per viewer message, no log event as a span.
    for (_, name, _) in &all {
        assert!(
            wanted.contains(&name.as_str())
                || name.starts_with("GET ")
                || name.starts_with("POST "),
            "unexpected span {name}"
        );
    }
    let count = |n: &str| all.iter().filter(|(_, name, _)| name == n).count();
    assert_eq!(count("GET /v1/matches/{id}/stream"), TRACED_VIEWERS);
    // Each read of the log is one span per match, whatever the audience: at most one per
    // record published (one per viewer would make that ten times more).
    assert!(
        count("match_log.consume") <= count("match_log.publish") + 5,
        "{} reads for {} publishes",
        count("match_log.consume"),
        count("match_log.publish")
    );
    let publish = all
        .iter()
        .find(|(_, n, _)| n == "match_log.publish")
        .unwrap();
    assert!(publish.2.to_string().contains("match_id"), "{}", publish.2);
    drop(viewers);
    app.stop().await;
}

/// `--internal-addr` moves `/metrics` and `/readyz` off the public port (which keeps
/// `/healthz`) onto a listener of their own.
pub async fn internal_addr(backend: &Backend) {
    let app = App::spawn(
        backend,
        &["--matches", "1", "--internal-addr", "127.0.0.1:0"],
    )
    .await;
    let log = app.log();
    let at = log
        .find("internal_addr=")
        .unwrap_or_else(|| panic!("no internal_addr in the log: {log}"));
    let internal: String = log[at + "internal_addr=".len()..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    let internal = format!("http://{internal}");
    let status = |url: String| {
        let http = app.http.clone();
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(app.url("/healthz")).await, 200);
    assert_eq!(status(app.url("/metrics")).await, 404);
    assert_eq!(status(app.url("/readyz")).await, 404);
    assert_eq!(status(format!("{internal}/readyz")).await, 200);
    let metrics = app
        .http
        .get(format!("{internal}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("gw_viewers"), "{metrics}");
    // The API stays on the public port only.
    assert_eq!(status(format!("{internal}/v1/matches")).await, 404);
    app.stop().await;
}
