//! Smoke-sized runs of every loadtest scenario, so the harness never rots. The full runs stay
//! out of CI (see docs/benchmarks.md for the commands).

use std::process::Command;

#[test]
fn aggregator_scenario_runs_against_real_redis() {
    let json = std::env::temp_dir().join(format!("gs-loadtest-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args([
            "--json",
            json.to_str().unwrap(),
            "aggregator",
            "--events",
            "3000",
            "--matches",
            "20",
            "--batch",
            "500",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("batched pipeline") && stdout.contains("x throughput"),
        "{stdout}"
    );
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let rows = results["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for row in rows {
        assert!(row["throughput_per_s"].as_f64().unwrap() > 0.0);
        assert!(
            row["latency"]["p99_us"].as_u64().unwrap()
                >= row["latency"]["p50_us"].as_u64().unwrap()
        );
    }
    std::fs::remove_file(json).ok();
}
