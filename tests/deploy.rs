//! The deploy files (`deploy/`) kept true: Docker is not available here, so this checks what
//! can be checked without it. Every option and env variable the Dockerfile, the compose file
//! and the Kubernetes manifests give a role is one that role takes (`grandstand <role>
//! --help`), the probes answer, the ports match the addresses the roles bind, and every metric
//! the Grafana dashboard and the alert rules query is exported by a running platform.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{App, Backend};
use serde::Deserialize;
use serde_yaml::Value;

const ROLES: [&str; 4] = ["game-server", "gateway", "aggregator", "snapshot-api"];

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// What one role takes: its long options and env variables, from its own `--help`.
#[derive(Default)]
struct Takes {
    flags: BTreeSet<String>,
    env: BTreeSet<String>,
}

fn takes(role: Option<&str>) -> Takes {
    let out = Command::new(testkit::grandstand_bin())
        .args(role)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let flag = regex_lite::Regex::new(r"(?m)^\s+(?:-\w, )?(--[a-z][a-z0-9-]*)").unwrap();
    let env = regex_lite::Regex::new(r"\[env: ([A-Z0-9_]+)").unwrap();
    Takes {
        flags: flag
            .captures_iter(&help)
            .map(|c| c[1].to_string())
            .collect(),
        env: env.captures_iter(&help).map(|c| c[1].to_string()).collect(),
    }
}

/// Env variables that name Grandstand options (the rest, like `POD_IP`, are the platform's).
fn is_option_env(name: &str) -> bool {
    ["GRANDSTAND_", "NATS_", "REDIS_", "DATABASE_URL"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// Checks a role's command line (role first) and env variables against what it takes.
fn check_role(
    whence: &str,
    args: &[String],
    env: &[String],
    shared: &BTreeSet<String>,
    roles: &HashMap<&str, Takes>,
) {
    let role = args[0].as_str();
    let takes = roles
        .get(role)
        .unwrap_or_else(|| panic!("{whence}: `{role}` is not a role"));
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        let flag = flag.split('=').next().unwrap();
        assert!(
            takes.flags.contains(flag),
            "{whence}: {role} takes no {flag}"
        );
    }
    for name in env.iter().filter(|n| is_option_env(n)) {
        // The backends' block is given to every role; a role ignores the backends it does not
        // use, but each name must be an option of some role.
        let known = takes.env.contains(name)
            || (shared.contains(name) && roles.values().any(|t| t.env.contains(name)));
        assert!(known, "{whence}: {role} reads no env variable {name}");
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .map(|x| x.as_str().expect("a string").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The port of `--http-addr HOST:PORT` in a command line.
fn http_port(args: &[String]) -> u16 {
    let i = args.iter().position(|a| a == "--http-addr").unwrap();
    args[i + 1].rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn deploy_files_use_only_options_the_roles_take() {
    let roles: HashMap<&str, Takes> = ROLES.iter().map(|r| (*r, takes(Some(r)))).collect();

    // The image's default command runs every role.
    let dockerfile = read("deploy/Dockerfile");
    let all = takes(None);
    let cmd = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("CMD "))
        .expect("a CMD");
    let cmd: Vec<String> = serde_json::from_str(cmd).unwrap();
    for flag in cmd.iter().filter(|a| a.starts_with("--")) {
        assert!(all.flags.contains(flag), "Dockerfile: no {flag}");
    }
    for name in regex_lite::Regex::new(r"ENV ([A-Z_]+)=")
        .unwrap()
        .captures_iter(&dockerfile)
    {
        assert!(
            all.env.contains(&name[1]),
            "Dockerfile: no env {}",
            &name[1]
        );
    }
    assert!(
        dockerfile.contains("USER 10001"),
        "the image runs as non-root"
    );

    // Compose: anchors merged, each role service checked.
    let mut compose: Value = serde_yaml::from_str(&read("deploy/compose.yaml")).unwrap();
    compose.apply_merge().unwrap();
    let shared: BTreeSet<String> = compose["x-backends"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    let mut roles_seen = BTreeSet::new();
    for (name, service) in compose["services"].as_mapping().unwrap() {
        let name = name.as_str().unwrap();
        let args = strings(&service["command"]);
        if !ROLES.contains(&name) {
            continue;
        }
        let mut env_block = service["environment"].clone();
        env_block.apply_merge().unwrap();
        let env: Vec<String> = env_block
            .as_mapping()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap().to_string())
            .collect();
        assert_eq!(args[0], name, "compose: service {name} runs another role");
        check_role(&format!("compose {name}"), &args, &env, &shared, &roles);
        roles_seen.insert(name.to_string());
    }
    assert_eq!(roles_seen.len(), ROLES.len(), "compose runs every role");

    // Kubernetes: every Deployment's container, its ports and probes.
    let manifests = read("deploy/k8s/grandstand.yaml");
    let mut deployments = 0;
    let mut gateway_budget = false;
    for doc in serde_yaml::Deserializer::from_str(&manifests) {
        let doc = Value::deserialize(doc).unwrap();
        match doc["kind"].as_str().unwrap() {
            "Deployment" => {
                deployments += 1;
                let container = &doc["spec"]["template"]["spec"]["containers"][0];
                let args = strings(&container["args"]);
                let env: Vec<String> = container["env"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .map(|e| e["name"].as_str().unwrap().to_string())
                    .collect();
                let whence = format!("k8s {}", doc["metadata"]["name"].as_str().unwrap());
                check_role(&whence, &args, &env, &shared, &roles);
                let http = container["ports"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .find(|p| p["name"] == "http")
                    .unwrap();
                assert_eq!(
                    http["containerPort"].as_u64(),
                    Some(http_port(&args) as u64),
                    "{whence}: the http port is the one --http-addr binds"
                );
                assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
                assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
            }
            "PodDisruptionBudget" => {
                gateway_budget |= doc["spec"]["selector"]["matchLabels"]
                    ["app.kubernetes.io/component"]
                    == "gateway";
            }
            "Service" => {}
            other => panic!("unexpected kind {other}"),
        }
    }
    assert_eq!(deployments, ROLES.len());
    assert!(gateway_budget, "gateways have a PodDisruptionBudget");
}

/// Metric names a Prometheus expression reads (Grandstand's own prefixes).
fn metrics_in(expr: &str) -> Vec<String> {
    regex_lite::Regex::new(r"\b((?:gw|gs|agg|api)_[a-z_]+)\b")
        .unwrap()
        .captures_iter(expr)
        .map(|c| c[1].to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_alerts_query_exported_metrics() {
    let backend = Backend::embedded();
    let app = App::spawn(&backend, &["--matches", "1", "--bots", "4"]).await;
    for probe in ["/healthz", "/readyz"] {
        let r = app.http.get(app.url(probe)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{probe}");
    }
    // A viewer and a refused stream, so the labelled series exist too.
    let id = app.live_match_ids(1).await.remove(0);
    let token = app.guest_token().await;
    let mut sse = app
        .http
        .get(app.url(&format!("/v1/matches/{id}/stream?token={token}")))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(3), sse.chunk()).await;
    let refused = app
        .http
        .get(app.url(&format!("/v1/matches/{id}/stream")))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let exported: BTreeSet<String> = app
        .metrics_text()
        .await
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect();
    drop(sse);
    app.stop().await;
    backend.cleanup().await;

    let mut queried = Vec::new();
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/grandstand.json")).unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            queried.push(("grafana", target["expr"].as_str().unwrap().to_string()));
        }
    }
    let rules: Value = serde_yaml::from_str(&read("deploy/prometheus/alerts.yaml")).unwrap();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            queried.push(("alerts", rule["expr"].as_str().unwrap().to_string()));
        }
    }
    assert!(queried.len() > 10);
    for (file, expr) in &queried {
        let names = metrics_in(expr);
        assert!(
            !names.is_empty(),
            "{file}: {expr} reads no Grandstand metric"
        );
        for name in names {
            assert!(
                exported.contains(&name),
                "{file}: {name} (in {expr}) is not exported; exported: {exported:?}"
            );
        }
    }
}
