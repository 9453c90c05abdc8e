//! The CI-sized fault suite: one fault of each kind on the real multi-node cluster under a
//! small audience, and every hostile-input attack for a few seconds against the real binary.
//! The long runs are recorded in docs/reliability.md. The two runs take turns: both measure
//! recovery and latency, which a neighbour on the same two cores would distort.

mod common;

use std::sync::Mutex;

use common::loadtest;

static ALONE: Mutex<()> = Mutex::new(());

#[test]
fn one_fault_of_each_kind_on_the_cluster() {
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join(format!("gs-chaos-ci-{}", std::process::id()));
    let (stdout, report) = loadtest(&[
        "chaos",
        "--cluster-dir",
        dir.to_str().unwrap(),
        "--viewers",
        "12",
        "--players",
        "2",
        "--faults",
        "all",
        "--postgres-down-secs",
        "5",
        "--freeze-secs",
        "3",
        "--settle-secs",
        "2",
        "--match-secs",
        "25",
        "--recovery-limit-secs",
        "60",
    ]);
    let faults = report["faults"].as_array().unwrap();
    let kinds: Vec<&str> = faults
        .iter()
        .map(|f| f["fault"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "kill-game",
            "kill-gateway",
            "kill-aggregator",
            "kill-api",
            "kill-nats",
            "redis-failover",
            "redis-empty",
            "postgres-down",
            "freeze-gateway"
        ],
        "{stdout}"
    );
    for f in faults {
        assert!(f["recovered_ms"].is_u64(), "{f}\n{stdout}");
        assert_eq!(f["matches_lost"].as_array().unwrap().len(), 0, "{f}");
    }
    let invariants = report["invariants"].as_array().unwrap();
    assert!(invariants.len() >= 7, "{stdout}");
    for i in invariants {
        assert_eq!(i["held"], true, "{i}\n{stdout}");
    }
    // The run really exercised what it judged: viewers resumed, matches were taken over.
    let viewers = &invariants[0]["detail"];
    assert!(
        !viewers.as_str().unwrap().contains(" 0 reconnects"),
        "{viewers}"
    );
    assert!(!dir.exists(), "the cluster was not torn down");
}

#[test]
fn every_attack_is_refused_while_honest_clients_play_on() {
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    let (stdout, report) = loadtest(&[
        "abuse",
        "--secs",
        "3",
        "--honest-viewers",
        "10",
        "--honest-players",
        "2",
    ]);
    assert_eq!(report["server_alive"], true, "{stdout}");
    let attacks = report["attacks"].as_array().unwrap();
    assert_eq!(attacks.len(), 9, "{stdout}");
    for a in attacks {
        assert!(a["refused"].as_u64().unwrap() > 0, "{a}\n{stdout}");
        assert_eq!(a["unexpected"], 0, "{a}\n{stdout}");
        // Honest viewers were served through every attack.
        assert!(a["honest"]["viewer_messages"].as_u64().unwrap() > 0, "{a}");
    }
    assert!(
        report["baseline"]["player_rtts"].as_u64().unwrap() > 0,
        "{stdout}"
    );
}
