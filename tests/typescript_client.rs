//! `@grandstand/client` (clients/typescript) from Node against the real binary: its example
//! follows a live match and prints every message as received, and what it prints is a version
//! line a viewer can trust (a snapshot first, then each version once, in order).

mod common;

use std::process::Command;

use common::{App, Backend};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_example_prints_the_version_line() {
    let client = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/typescript");
    assert!(
        client.join("dist/index.js").exists(),
        "build the client first: `npm ci && npm run build` in clients/typescript (scripts/test does)"
    );
    let backend = Backend::embedded();
    let app = App::spawn(&backend, &["--matches", "1", "--bots", "6"]).await;
    let id = app.live_match_ids(1).await.remove(0);
    let (base, dir) = (app.base.clone(), client.clone());
    let id2 = id.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .args(["examples/follow.mjs", &base, &id2, "4"])
            .current_dir(&dir)
            .output()
            .expect("run node")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "follow.mjs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 10, "only {} messages in 4 s", lines.len());
    assert_eq!(lines[0]["type"], "snapshot", "{}", lines[0]);
    let (mut epoch, mut version) = (
        lines[0]["epoch"].as_u64().unwrap(),
        lines[0]["version"].as_u64().unwrap(),
    );
    let mut kinds = std::collections::BTreeSet::new();
    for l in &lines[1..] {
        assert_eq!(l["match"], id.as_str(), "{l}");
        let (e, v) = (l["epoch"].as_u64().unwrap(), l["version"].as_u64().unwrap());
        kinds.insert(l["type"].as_str().unwrap().to_string());
        if l["type"] == "snapshot" {
            assert!((e, v) > (epoch, version), "a snapshot back in time: {l}");
        } else {
            assert_eq!((e, v), (epoch, version + 1), "not the next version: {l}");
        }
        (epoch, version) = (e, v);
    }
    assert!(kinds.contains("delta"), "{kinds:?}");
    // The package's messages are feed v2 (compact: players by small ids).
    let delta = lines.iter().find(|l| l["type"] == "delta").unwrap();
    assert!(
        delta.get("p").is_some() || delta.get("t").is_some(),
        "{delta}"
    );
    backend.cleanup().await;
}
