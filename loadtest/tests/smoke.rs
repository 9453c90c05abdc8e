//! Smoke-sized runs of every loadtest scenario, so the harness never rots. The full runs stay
//! out of CI (see docs/benchmarks.md for the commands).

mod common;

use common::loadtest;
use std::process::Command;

#[test]
fn aggregator_scenario_runs_against_real_redis() {
    let (stdout, results) = loadtest(&[
        "aggregator",
        "--events",
        "3000",
        "--matches",
        "20",
        "--batch",
        "500",
    ]);
    assert!(
        stdout.contains("batched pipeline") && stdout.contains("x throughput"),
        "{stdout}"
    );
    let rows = results["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for row in rows {
        assert!(row["throughput_per_s"].as_f64().unwrap() > 0.0);
        assert!(
            row["latency"]["p99_us"].as_u64().unwrap()
                >= row["latency"]["p50_us"].as_u64().unwrap()
        );
    }
}

#[test]
fn players_scenario_runs_over_a_lossy_link() {
    let (_, results) = loadtest(&[
        "players",
        "--players",
        "6",
        "--room-size",
        "3",
        "--duration",
        "2",
        "--compare",
    ]);
    let rows = results["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 8, "four variants, two latencies each");
    for row in rows {
        assert!(row["throughput_per_s"].as_f64().unwrap() > 0.0, "{row}");
    }
    // The round trip includes the 50 ms the link adds.
    assert!(
        rows[0]["latency"]["p50_us"].as_u64().unwrap() >= 50_000,
        "{}",
        rows[0]
    );
    // Delta compression and AOI cut bandwidth: the full-state, full-world variant costs more.
    let bytes = |i: usize| rows[i]["throughput_per_s"].as_f64().unwrap();
    assert!(bytes(6) > bytes(0), "{} vs {}", bytes(6), bytes(0));
    // Each variant's datagrams were replayed with no game, and that replay cost some CPU.
    for row in rows {
        let notes = row["notes"].as_str().unwrap();
        let floor = notes
            .split("I/O floor")
            .nth(1)
            .and_then(|rest| rest.split(") ").nth(1))
            .and_then(|rest| rest.split(' ').next())
            .and_then(|us| us.parse::<f64>().ok());
        assert!(floor.is_some_and(|us| us > 0.0), "{notes}");
    }
}

/// Viewers through two real gateway processes following the real NATS JetStream: every viewer
/// (half WebSocket, half SSE, from two load-generator processes) is held and sees an unbroken
/// version line.
#[test]
fn viewers_scenario_fans_out_through_real_gateways() {
    let (_, results) = loadtest(&[
        "viewers",
        "--viewers",
        "20",
        "--matches",
        "3",
        "--rate",
        "10",
        "--duration",
        "2",
        "--gateways",
        "2",
        "--sse",
        "0.5",
        "--per-worker",
        "10",
        // Every viewer opens and times its messages (a full run samples one in ten).
        "--latency-sample",
        "1",
    ]);
    let row = &results["rows"][0];
    let notes = row["notes"].as_str().unwrap();
    assert!(notes.contains("held 20/20"), "{notes}");
    assert!(notes.contains(" 0 gaps"), "{notes}");
    // 20 viewers x 10 messages/s for 2 s, give or take the window's edges.
    let delivered = row["latency"]["count"].as_u64().unwrap();
    assert!(
        (300..=500).contains(&delivered),
        "{delivered} messages measured"
    );
}

/// The gateway with JSON logs and traces exported over OTLP (the observability comparison)
/// holds its viewers like the plain one, and its spans reach the harness's sink.
#[test]
fn observed_gateway_exports_traces() {
    let (_, results) = loadtest(&[
        "viewers",
        "--systems",
        "grandstand-json-otlp",
        "--viewers",
        "10",
        "--matches",
        "2",
        "--duration",
        "3",
    ]);
    let notes = results["rows"][0]["notes"].as_str().unwrap();
    assert!(
        notes.contains("held 10/10") && notes.contains(" 0 gaps"),
        "{notes}"
    );
    let exports: u64 = notes
        .split("the sink took ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no OTLP figure: {notes}"));
    assert!(exports > 0, "{notes}");
}

/// The peers of the side-by-side comparison (Node `ws`, Socket.IO, nats-server's WebSocket
/// listener, the minimal Rust writer, the same writer with no queue or task per viewer) each take the same viewers and deliver the same
/// messages; `loadtest report` turns the run into tables, ratios and SVG plots.
/// The recorded real match replayed to Grandstand (feed v2 + permessage-deflate, as a browser
/// asks) and to the uWebSockets.js peer (the same feed as v1): both deliver it without a break,
/// and Grandstand's viewers receive fewer bytes.
#[test]
fn match_workload_replays_a_recorded_match() {
    let (stdout, results) = loadtest(&[
        "viewers",
        "--workload",
        "match",
        "--systems",
        "grandstand,uws",
        "--viewers",
        "10",
        "--matches",
        "1",
        "--duration",
        "3",
        "--latency-sample",
        "1",
    ]);
    let systems = results["systems"].as_array().unwrap();
    let by = |name: &str| {
        systems
            .iter()
            .find(|s| s["system"] == name)
            .unwrap_or_else(|| panic!("{name} was not measured:\n{stdout}"))
            .clone()
    };
    let (gs, uws) = (by("grandstand"), by("uws"));
    for s in [&gs, &uws] {
        assert_eq!(s["held"], 10, "{s}");
        assert!(s["latency"]["count"].as_u64().unwrap() > 100, "{s}");
    }
    assert_eq!(gs["gaps"], 0, "{gs}");
    let bytes = |s: &serde_json::Value| s["wire_bytes_per_viewer_per_s"].as_f64().unwrap();
    assert!(
        bytes(&gs) > 0.0 && bytes(&gs) * 3.0 < bytes(&uws),
        "{} vs {}",
        bytes(&gs),
        bytes(&uws)
    );
}

/// SIGTERM with viewers attached: every viewer gets a close frame with a retry hint, and the
/// drain spreads their returns (its busiest 100 ms holds fewer than closing all at once).
#[test]
fn drain_spreads_the_audience() {
    let (_, results) = loadtest(&[
        "drain",
        "--viewers",
        "200",
        "--matches",
        "2",
        "--drain-secs",
        "2",
    ]);
    let rows = results["rows"].as_array().unwrap();
    let row = |name: &str| {
        rows.iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no row {name}: {results}"))
    };
    for secs in [0, 2] {
        let closed = row(&format!("--drain-secs {secs}: closed"));
        assert_eq!(closed["throughput_per_s"], 200.0, "{closed}");
        let back = row(&format!("--drain-secs {secs}: back"));
        assert!(
            back["notes"].as_str().unwrap().starts_with("200 of 200"),
            "{back}"
        );
    }
    let peak = |secs: u64| {
        row(&format!("--drain-secs {secs}: back"))["throughput_per_s"]
            .as_f64()
            .unwrap()
    };
    assert!(
        peak(2) < peak(0),
        "busiest 100 ms: {} drained vs {} at once",
        peak(2),
        peak(0)
    );
}

/// Bytes per viewer on a live match, per format and transport: v2 is smaller than v1 and
/// deflate smaller still.
#[test]
fn wire_scenario_compares_formats_on_a_live_match() {
    let (_, results) = loadtest(&["wire", "--bots", "20", "--secs", "3"]);
    let rate = |name: &str| {
        results["systems"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["system"] == name)
            .unwrap()["bytes_per_s"]
            .as_f64()
            .unwrap()
    };
    assert!(rate("ws v2") < rate("ws v1"));
    assert!(rate("ws v2 + deflate") < rate("ws v2"));
    assert!(rate("sse v2") < rate("sse v1"));
}

#[test]
fn peers_and_report() {
    let dir = std::env::temp_dir().join(format!("gs-loadtest-peers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (_, results) = loadtest(&[
        "viewers",
        "--systems",
        "grandstand,node-ws,socketio,nats-ws,raw,floor,uws",
        "--viewers",
        "12",
        "--matches",
        "2",
        "--rate",
        "10",
        "--duration",
        "2",
        "--latency-sample",
        "1",
    ]);
    // The report reads results from a folder of its own.
    std::fs::write(dir.join("peers.json"), results.to_string()).unwrap();
    let systems = results["systems"].as_array().unwrap();
    assert_eq!(systems.len(), 7);
    for s in systems {
        let name = s["system"].as_str().unwrap();
        assert_eq!(s["held"], 12, "{name}: {s}");
        assert_eq!(s["gaps"], 0, "{name}: {s}");
        // 12 viewers x 10 messages/s for 2 s, give or take the window's edges.
        let n = s["latency"]["count"].as_u64().unwrap();
        assert!((180..=300).contains(&n), "{name}: {n} messages measured");
    }
    assert_eq!(results["summary"].as_array().unwrap().len(), 6);

    let template = dir.join("template.md");
    std::fs::write(
        &template,
        "# Run\n{{table peers.json}}\n{{ratios peers.json}}\n{{cdf peers.json}}\n{{scaling peers.json}}\n",
    )
    .unwrap();
    let doc = dir.join("out.md");
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .arg("report")
        .args(["--template", template.to_str().unwrap()])
        .args(["--results", dir.to_str().unwrap()])
        .args(["--out", doc.to_str().unwrap()])
        .args(["--plots", dir.join("plots").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&doc).unwrap();
    for system in [
        "grandstand",
        "node-ws",
        "socketio",
        "nats-ws",
        "raw",
        "floor",
    ] {
        assert!(text.contains(&format!("| {system} |")), "{text}");
    }
    assert!(text.contains("plots/peers-cdf.svg"), "{text}");
    for plot in ["peers-cdf.svg", "viewers-per-cpu.svg", "viewers-memory.svg"] {
        let svg = std::fs::read_to_string(dir.join("plots").join(plot)).unwrap();
        assert!(svg.contains("<svg") && svg.contains("grandstand"), "{plot}");
    }
    std::fs::remove_dir_all(dir).ok();
}

/// Storms: every viewer drops at once and comes back, from its last version or from a fresh
/// snapshot of the snapshot API, without a gap in its version line.
#[test]
fn storms_resume_every_viewer() {
    // The scenario names `reconnect-storm` and `cold-load-storm` are `viewers --storm ...`.
    for storm in ["reconnect", "cold-load"] {
        let scenario = format!("{storm}-storm");
        let (_, results) = loadtest(&[
            &scenario,
            "--viewers",
            "20",
            "--matches",
            "2",
            "--rate",
            "10",
            "--duration",
            "3",
        ]);
        let s = &results["systems"][0];
        assert_eq!(s["gaps"], 0, "{storm}: {s}");
        assert_eq!(s["storm"]["resumed"], 20, "{storm}: {s}");
        assert_eq!(s["storm"]["failed"], 0, "{storm}: {s}");
        if storm == "cold-load" {
            assert_eq!(s["storm"]["cold_load"]["count"], 20, "{s}");
        }
    }
}

/// The scenarios that load a running server (cached reads, leaderboard reads, freshness)
/// against the real binary on its embedded backends, with the server's CPU and memory read
/// from /proc next to the client figures.
#[test]
fn server_scenarios_against_a_running_grandstand() {
    let data = std::env::temp_dir().join(format!("gs-loadtest-server-{}", std::process::id()));
    std::fs::create_dir_all(&data).unwrap();
    let log = data.join("server.log");
    let mut grandstand = Command::new(testkit::grandstand_bin());
    grandstand
        .args(["--http-addr", "127.0.0.1:0", "--udp-addr", "127.0.0.1:0"])
        .args(["--matches", "1", "--bots", "8", "--data-dir"])
        .arg(&data)
        .env_remove("NATS_URL")
        .env_remove("REDIS_URL")
        .env_remove("DATABASE_URL");
    let child = testkit::process::spawn_logged(&mut grandstand, &log).unwrap();
    let server = testkit::process::wait_listening(child, log).unwrap();
    let base = server.url.clone();
    // Bots need a moment to score.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let pid = server.pid().to_string();
    for (scenario, extra) in [
        ("http", vec!["--duration-secs", "1", "--concurrency", "4"]),
        (
            "leaderboard",
            vec!["--duration-secs", "1", "--concurrency", "4"],
        ),
        ("freshness", vec!["--kills", "2"]),
    ] {
        let mut args = vec![scenario, "--base", &base, "--server-pid", &pid];
        args.extend(extra);
        let (_, r) = loadtest(&args);
        let rows = r["rows"].as_array().unwrap();
        assert!(!rows.is_empty(), "{scenario}: {r}");
        for row in rows {
            assert!(
                row["latency"]["count"].as_u64().unwrap() > 0,
                "{scenario}: {row}"
            );
        }
        let summary = r["summary"][0].as_str().unwrap_or_default();
        assert!(summary.contains(&format!("pid {pid}")), "{scenario}: {r}");
    }
    drop(server);
    std::fs::remove_dir_all(data).ok();
}
