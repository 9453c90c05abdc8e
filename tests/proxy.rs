//! The sample nginx configuration (`deploy/nginx/grandstand.conf`) with a real nginx in front
//! of the platform: WebSocket upgrades pass, SSE events arrive as they are sent (not held in
//! nginx's buffers), and with `--trusted-proxies` the per-address limits count each viewer's
//! own address, which a forged `X-Forwarded-For` does not change.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::clients::guests_allowed;
use common::{App, Backend};
use testkit::process::wait_for_port;
use testkit::wsclient::{Offer, RawWs};

struct Nginx {
    child: Child,
    url: String,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx_bin() -> &'static str {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("nginx is not installed (scripts/services.sh installs it)")
}

/// Starts nginx with the sample snippet, its upstreams pointed at `upstream`.
async fn nginx(dir: &Path, upstream: SocketAddr) -> Nginx {
    let sample = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx/grandstand.conf"),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let snippet = sample
        .replace("server 127.0.0.1:8080;", &format!("server {upstream};"))
        .replace("server 127.0.0.1:8081;", &format!("server {upstream};"))
        .replace("listen 80;", &format!("listen 127.0.0.1:{port};"));
    assert_ne!(
        snippet, sample,
        "the sample's addresses moved: update this test"
    );
    std::fs::write(dir.join("grandstand.conf"), snippet).unwrap();
    let d = dir.display();
    let main = format!(
        "daemon off; master_process off; user root;\n\
         pid {d}/nginx.pid; error_log {d}/error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
         include {d}/grandstand.conf;\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), main).unwrap();
    let check = Command::new(nginx_bin())
        .args(["-t", "-q", "-p"])
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "nginx -t: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let child = Command::new(nginx_bin())
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    wait_for_port(port, "nginx", Duration::from_secs(10)).await;
    Nginx { child, url }
}

/// A client whose connections come from `local` (another loopback address: another viewer).
fn client_from(local: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(local.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sample_nginx_config_serves_streams_and_names_the_client() {
    let backend = Backend::embedded();
    // nginx connects from 127.0.0.1; viewers come from 127.0.0.2 and 127.0.0.3.
    let app = App::spawn(
        &backend,
        &[
            "--matches",
            "1",
            "--bots",
            "6",
            "--trusted-proxies",
            "127.0.0.1",
        ],
    )
    .await;
    let upstream: SocketAddr = app.base.trim_start_matches("http://").parse().unwrap();
    let dir = backend.data_dir().join("nginx");
    std::fs::create_dir_all(&dir).unwrap();
    let proxy = nginx(&dir, upstream).await;
    let id = app.live_match_ids(1).await.remove(0);

    // A cold load through the API location.
    let viewer = client_from("127.0.0.2");
    let r = viewer
        .get(format!("{}/v1/matches/{id}/snapshot", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    // A page's render-health report through the gateways' location (a body as browsers send
    // it with sendBeacon: text/plain).
    let r = viewer
        .post(format!("{}/v1/render-health", proxy.url))
        .header("content-type", "text/plain;charset=UTF-8")
        .body(r#"{"frames":60,"dropped":0,"frame_ms":[16.7],"lag_ms":[40]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());

    // SSE: the snapshot, then deltas as the match plays, each arriving on its own (a buffering
    // proxy would hold them and deliver them in lumps, or not before its buffer fills).
    let token = app.guest_token().await;
    let mut sse = viewer
        .get(format!(
            "{}/v1/matches/{id}/stream?token={token}",
            proxy.url
        ))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    let started = Instant::now();
    let mut text = String::new();
    let mut arrivals = Vec::new();
    while arrivals.len() < 10 && started.elapsed() < Duration::from_secs(10) {
        let chunk = tokio::time::timeout(Duration::from_secs(5), sse.chunk())
            .await
            .expect("no SSE event within 5 s through nginx")
            .unwrap()
            .expect("the stream ended");
        text.push_str(&String::from_utf8_lossy(&chunk));
        arrivals.push(started.elapsed());
    }
    assert!(text.contains("event: snapshot"), "{text}");
    assert!(text.contains("event: delta"), "{text}");
    // Ten separate arrivals spread over time: events are not held back and sent in one lump.
    let spread = *arrivals.last().unwrap() - arrivals[0];
    assert!(
        arrivals.len() >= 10 && spread > Duration::from_millis(200),
        "{arrivals:?}"
    );
    drop(sse);

    // WebSocket: the upgrade passes through and the snapshot arrives.
    let offer = Offer {
        extensions: None,
        protocol: None,
        token: Some(app.guest_token().await),
    };
    let mut ws = RawWs::connect(&proxy.url, &format!("/v1/matches/{id}/stream"), &offer)
        .await
        .unwrap()
        .unwrap_or_else(|r| panic!("upgrade through nginx refused {}: {}", r.status, r.body));
    assert_eq!(
        ws.json(Duration::from_secs(5)).await.unwrap()["type"],
        "snapshot"
    );
    drop(ws);

    // Per-address limits: 127.0.0.2 is limited as one client whatever it forges in
    // X-Forwarded-For (nginx appends the real address, the rightmost untrusted hop) ...
    const N: usize = 40;
    let forging = guests_allowed(&viewer, &proxy.url, N, |i| format!("203.0.113.{i}")).await;
    assert!(
        forging < N,
        "a forged X-Forwarded-For escaped the limit ({forging} of {N})"
    );
    // ... and another viewer behind the same proxy is not held to 127.0.0.2's count.
    let other = client_from("127.0.0.3");
    assert_eq!(
        guests_allowed(&other, &proxy.url, 5, |i| format!("203.0.113.{i}")).await,
        5
    );

    drop(proxy);
    app.stop().await;
    backend.cleanup().await;
}

/// Paths routed in a crate's non-test source: the string literal after each `.route(`.
fn routes_in(dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join(dir)];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                let code = text.split("#[cfg(test)]").next().unwrap();
                for piece in code.split(".route(").skip(1) {
                    if let Some(rest) = piece.trim_start().strip_prefix('"') {
                        out.push(rest.split('"').next().unwrap().to_string());
                    }
                }
            }
        }
    }
    out
}

/// Which upstream the sample config sends `path` to, by nginx's rules: an exact `location =`
/// first, then the first `location ~` regex that matches, then the longest prefix.
fn upstream_for(conf: &str, path: &str) -> String {
    let block = regex_lite::Regex::new(r"(?s)location\s+(=|~)?\s*(\S+)\s*\{(.*?)\}").unwrap();
    let pass = regex_lite::Regex::new(r"proxy_pass\s+http://(\w+)").unwrap();
    let (mut exact, mut regex, mut prefix): (
        Option<String>,
        Option<String>,
        Option<(usize, String)>,
    ) = (None, None, None);
    for c in block.captures_iter(conf) {
        let upstream = pass
            .captures(&c[3])
            .map(|p| p[1].to_string())
            .unwrap_or_default();
        match c.get(1).map(|m| m.as_str()) {
            Some("=") if &c[2] == path => exact = Some(upstream),
            Some("~")
                if regex.is_none() && regex_lite::Regex::new(&c[2]).unwrap().is_match(path) =>
            {
                regex = Some(upstream)
            }
            None if path.starts_with(&c[2])
                && prefix.as_ref().is_none_or(|(n, _)| c[2].len() > *n) =>
            {
                prefix = Some((c[2].len(), upstream))
            }
            _ => {}
        }
    }
    exact
        .or(regex)
        .or(prefix.map(|(_, u)| u))
        .unwrap_or_default()
}

/// In production the gateways and the snapshot API are separate processes behind the proxy:
/// every route a gateway serves must reach the gateways and every other route the API (an
/// all-in-one upstream, as in the test above, would hide a route sent to the wrong one).
#[test]
fn the_sample_config_sends_each_route_to_the_role_that_serves_it() {
    let conf = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx/grandstand.conf"),
    )
    .unwrap();
    let sample = |route: &str| {
        route
            .replace("{id}", "eu-1a2b")
            .replace("{board}", "global")
            .replace("{player}", "p1")
            .replace("{*file}", "index-abc.js")
    };
    let gateway = routes_in("fanout-gateway/src");
    assert!(gateway.len() >= 5, "{gateway:?}");
    for route in &gateway {
        assert_eq!(
            upstream_for(&conf, &sample(route)),
            "grandstand_gateway",
            "{route} is served by gateways"
        );
    }
    let api = routes_in("api/src");
    assert!(api.len() >= 8, "{api:?}");
    for route in api.iter().filter(|r| !gateway.contains(r)) {
        assert_eq!(
            upstream_for(&conf, &sample(route)),
            "grandstand_api",
            "{route} is served by the snapshot API"
        );
    }
}
