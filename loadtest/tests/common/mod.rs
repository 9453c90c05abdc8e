//! The one way the loadtest's tests run it.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Runs `loadtest --json FILE ARGS...` (on the default local services); returns its stdout and
/// the JSON results, failing with both outputs when it does not succeed.
pub fn loadtest(args: &[&str]) -> (String, serde_json::Value) {
    static RUN: AtomicUsize = AtomicUsize::new(0);
    let json = std::env::temp_dir().join(format!(
        "gs-loadtest-smoke-{}-{}.json",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    ));
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .arg("--json")
        .arg(&json)
        .args(args)
        .env_remove("NATS_URL")
        .env_remove("REDIS_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "loadtest {args:?}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    std::fs::remove_file(json).ok();
    (stdout, results)
}
