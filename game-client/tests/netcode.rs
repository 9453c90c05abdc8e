//! The player protocol end to end: a real game server on a UDP port, real clients, and an
//! in-process link conditioner for latency, jitter and loss.

use std::sync::Arc;
use std::time::Duration;

use backends::{MemoryCheckpoints, MemoryLog, MemoryLogLimits, MemoryRegistry};
use game_client::{ClientError, ClientEvent, Intent, LinkConditioner, UdpClient};
use game_server::{GameServer, GameServerConfig, GameServerStores};
use httpkit::{Assignment, Shutdown};
use protocol::net::{DenyReason, Message};
use protocol::{Claims, ConnectClaims, TokenSigner};

struct Harness {
    server: Arc<GameServer>,
    rest: TokenSigner,
    shutdown: Shutdown,
}

impl Harness {
    async fn start(bots: usize) -> Harness {
        Harness::start_with(bots, GameServerConfig::default().snapshot_hz).await
    }

    async fn start_with(bots: usize, snapshot_hz: u32) -> Harness {
        Harness::start_with_rates(bots, GameServerConfig::default().tick_hz, snapshot_hz).await
    }

    async fn start_with_rates(bots: usize, tick_hz: u32, snapshot_hz: u32) -> Harness {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let rest = TokenSigner::new(b"netcode-test-secret-0123456789");
        let shutdown = Shutdown::new();
        let config = GameServerConfig {
            matches: 0,
            bots_per_match: bots,
            tick_hz,
            snapshot_hz,
            match_duration: Duration::from_secs(120),
            checkpoints: false,
            ..Default::default()
        };
        let stores = GameServerStores {
            log: Arc::new(MemoryLog::new(MemoryLogLimits::default())),
            registry: Arc::new(MemoryRegistry::default()),
            checkpoints: Arc::new(MemoryCheckpoints::default()),
        };
        let server = GameServer::new(config, udp, stores, &rest, shutdown.clone()).unwrap();
        tokio::spawn(server.clone().run());
        Harness {
            server,
            rest,
            shutdown,
        }
    }

    async fn ticket(&self, player: &str, skill: u32) -> Assignment {
        let claims = Claims {
            sub: player.into(),
            name: player.to_uppercase(),
            exp: protocol::now_secs() + 600,
        };
        self.server.matchmake(&claims, "eu", skill).await.unwrap()
    }

    async fn join(&self, player: &str, link: LinkConditioner, seed: u64) -> UdpClient {
        let t = self.ticket(player, 1000).await;
        UdpClient::connect(
            t.server.parse().unwrap(),
            t.connect_token,
            link,
            seed,
            Duration::from_secs(5),
        )
        .await
        .unwrap()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn circling(step: u32) -> Intent {
    let a = step as f32 * 0.07;
    Intent {
        move_x: (a.cos() * 127.0) as i8,
        move_y: (a.sin() * 127.0) as i8,
        aim: 0,
        fire: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prediction_converges_with_zero_corrections_over_a_bad_link() {
    let h = Harness::start(0).await;
    // 100 ms round trip, up to 30 ms jitter each way, 5% loss each way.
    let mut c = h
        .join("p-pred", LinkConditioner::new(100, 30, 0.05), 7)
        .await;
    for step in 0..150 {
        c.step(circling(step)).await.unwrap();
    }
    for _ in 0..30 {
        c.step(Intent::default()).await.unwrap();
    }
    let s = c.core.stats.clone();
    assert!(s.snapshots > 100, "{s:?}");
    assert!(s.snapshots_lost > 0, "the link did lose packets: {s:?}");
    assert_eq!(s.corrections, 0, "prediction diverged: {s:?}");
    // Every step after the first snapshot is a frame; with 30 snapshots a second and 100 ms
    // of interpolation delay, few of them run past the newest snapshot even over this link.
    assert!(s.frames >= 150, "{s:?}");
    assert!(s.frames_past_newest * 10 < s.frames, "{s:?}");
    // At rest, the prediction is where the server has the player (the snapshot's own entry,
    // rebuilt from the exact body, is in whole units: within the rounding).
    let me = c.core.entity;
    let (_, entities) = c.core.latest().unwrap();
    let server = entities.iter().find(|e| e.0 == me).unwrap().1;
    let p = c.core.predicted();
    assert!(
        (p.x - f32::from(server.x)).abs() <= 0.501,
        "{p:?} vs {server:?}"
    );
    assert!(
        (p.y - f32::from(server.y)).abs() <= 0.501,
        "{p:?} vs {server:?}"
    );
    assert!(s.rtt_ms > 60.0 && s.rtt_ms < 300.0, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misprediction_is_measured_and_repaired() {
    // Control for the test above: a client whose physics disagree with the server (it
    // predicts from a body the server moved) must record corrections, or the zero above
    // proves nothing.
    let h = Harness::start(0).await;
    let mut c = h.join("p-ctrl", LinkConditioner::new(60, 0, 0.0), 3).await;
    for step in 0..30 {
        c.step(circling(step)).await.unwrap();
    }
    c.core.perturb_prediction(25.0);
    for step in 30..60 {
        c.step(circling(step)).await.unwrap();
    }
    assert!(c.core.stats.corrections > 0, "{:?}", c.core.stats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reliable_chat_arrives_once_in_order_under_20_percent_loss() {
    let h = Harness::start(0).await;
    let lossy = LinkConditioner::new(40, 20, 0.2);
    let mut a = h.join("p-a", lossy, 1).await;
    let mut b = h.join("p-b", lossy, 2).await;
    let mut got = Vec::new();
    for step in 0..300u32 {
        if step < 40 {
            assert!(a.chat(&format!("line {step}")));
        }
        a.step(Intent::default()).await.unwrap();
        for e in b.step(Intent::default()).await.unwrap() {
            if let ClientEvent::Message(Message::Chat { text, .. }) = e {
                got.push(text);
            }
        }
        if got.len() == 40 {
            break;
        }
    }
    let want: Vec<String> = (0..40).map(|i| format!("line {i}")).collect();
    assert_eq!(got, want);
}

/// Fire rides the urgent channel: repeated in every packet until acknowledged, handed on at
/// first sight. Over a link losing 20% each way, every shot a player fires comes back to it
/// exactly once (the shooter is always told of its own shots), and none waits for a resend
/// timer: each arrives within the round trip, a tick, and a few packet intervals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shot_is_told_once_and_promptly_over_a_lossy_link() {
    let h = Harness::start(0).await;
    let lossy = LinkConditioner::new(60, 10, 0.2);
    let mut c = h.join("p-fire", lossy, 11).await;
    let mut fired = Vec::new();
    let mut told = Vec::new();
    for step in 0..400u32 {
        // Every 20 steps (0.67 s): past the weapon's cooldown, so each one is a real shot.
        let fire = step % 20 == 5 && step < 340;
        if fire {
            fired.push(std::time::Instant::now());
        }
        let intent = Intent {
            fire,
            ..circling(step)
        };
        for (at, e) in c.step_timed(intent).await.unwrap() {
            if let ClientEvent::Message(Message::Fire { entity, .. }) = e {
                assert_eq!(entity, c.core.entity, "no one else is in the room");
                told.push(at);
            }
        }
    }
    assert_eq!(told.len(), fired.len(), "each shot told exactly once");
    let slowest = fired
        .iter()
        .zip(&told)
        .map(|(f, t)| t.duration_since(*f))
        .max()
        .unwrap();
    // Floor: 60 ms round trip + 20 ms jitter + a tick. Each loss, up or down, costs a packet
    // interval; seven of them for one shot is a 1-in-15,000 event at 20% loss.
    assert!(
        slowest < Duration::from_millis(80 + 34 + 7 * 34),
        "slowest shot {slowest:?}"
    );
}

/// At 10 snapshots a second on a 30 Hz tick, shots still leave on the tick they are simulated
/// (an events datagram between snapshots), not at the next snapshot 100 ms later; prediction
/// still reconciles with zero corrections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_15_snapshots_a_second_a_lost_snapshot_does_not_freeze_the_others() {
    // One bot to watch; 10% loss each way, so about one snapshot in ten is lost. With the
    // default 100 ms delay each loss left a 133 ms gap, a third of it drawn held (~5% of
    // frames, measured); the delay the accept asks for (159 ms) covers it, and only two
    // losses in a row hold anything.
    let h = Harness::start_with(1, 15).await;
    let mut c = h
        .join("p-15hz", LinkConditioner::new(50, 10, 0.10), 21)
        .await;
    assert_eq!(c.core.interp_delay_ms(), 159);
    for step in 0..240 {
        c.step(circling(step)).await.unwrap();
    }
    let s = c.core.stats.clone();
    assert!(s.snapshots_lost > 0, "the link did lose packets: {s:?}");
    assert!(s.frames >= 200, "{s:?}");
    assert!(s.frames_past_newest * 40 < s.frames, "{s:?}");
    assert_eq!(s.corrections, 0, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lower_snapshot_rate_never_delays_a_shot() {
    let h = Harness::start_with(0, 10).await;
    let mut c = h.join("p-slow", LinkConditioner::perfect(), 12).await;
    // The accept told the client the rate: others drawn two intervals and a jitter allowance
    // behind, not the default 100 ms.
    assert_eq!(c.core.interp_delay_ms(), 225);
    // Each tell's arrival stamp and every snapshot's (one stamp per datagram): a tell that
    // shares no snapshot's stamp came in a datagram of its own, not with a snapshot.
    let mut tells = Vec::new();
    let mut snapshot_stamps = Vec::new();
    for step in 0..200u32 {
        let intent = Intent {
            fire: step % 20 == 5,
            ..circling(step)
        };
        for (at, e) in c.step_timed(intent).await.unwrap() {
            match e {
                ClientEvent::Message(Message::Fire { .. }) => tells.push(at),
                ClientEvent::Snapshot(_) => snapshot_stamps.push(at),
                _ => {}
            }
        }
    }
    assert_eq!(tells.len(), 10, "one tell per shot");
    // 200 steps of 33 ms at 10 snapshots a second: about 67 snapshots, not 200.
    let snapshots = snapshot_stamps.len();
    assert!((50..=80).contains(&snapshots), "{snapshots} snapshots");
    // Not waiting for the next snapshot: a shot's tell leaves in an events datagram (between
    // ticks, or on a tick without a snapshot). Measured: 9 of 10; held for the tick
    // (`act_on_arrival: false`), 7 of 10 (a shot resolved on a snapshot tick rides that
    // snapshot); with no events datagrams every tell would ride a snapshot.
    let own = tells
        .iter()
        .filter(|t| !snapshot_stamps.contains(t))
        .count();
    assert!(own >= 5, "{own} of 10 tells in a datagram of their own");
    assert_eq!(c.core.stats.corrections, 0, "{:?}", c.core.stats);
}

/// A shot is resolved and told when the server reads it, not at the next tick: on a 10 Hz
/// tick (100 ms apart), shots fired at every phase of the tick are told in a datagram of their
/// own, ahead of the next snapshot. Held for the tick, the tell rides that snapshot's datagram
/// (urgent events go in the snapshot packet on a snapshot tick). Which datagram carried the
/// tell is told apart by its arrival stamp (one per datagram), not by how long it took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shot_is_told_as_it_arrives_not_at_the_next_tick() {
    let h = Harness::start_with_rates(0, 10, 10).await;
    let mut c = h.join("p-arrival", LinkConditioner::perfect(), 13).await;
    let mut ahead_of_the_tick = 0;
    for shot in 0..12u64 {
        // A different phase of the tick for each shot (the client steps at the tick rate, so
        // without this every shot would land at the same phase).
        tokio::time::sleep(Duration::from_millis(shot * 37 % 100)).await;
        let mut told = None;
        let mut own_datagram = None;
        // Five steps of 100 ms: past the 0.45 s cooldown before the next shot.
        for step in 0..5u32 {
            let intent = Intent {
                fire: step == 0,
                ..circling(step)
            };
            for (at, e) in c.step_timed(intent).await.unwrap() {
                match e {
                    ClientEvent::Message(Message::Fire { .. }) => {
                        assert!(told.is_none(), "one tell per shot");
                        told = Some(at);
                    }
                    ClientEvent::Snapshot(_) if own_datagram.is_none() => {
                        own_datagram = told.map(|t| t != at);
                    }
                    _ => {}
                }
            }
        }
        assert!(told.is_some(), "every shot is told");
        if own_datagram == Some(true) {
            ahead_of_the_tick += 1;
        }
    }
    // Measured: 11 of 12 in two runs (a shot that reaches the server just before a tick goes
    // with that tick's snapshot); held for the tick (`act_on_arrival: false`), 0 of 12.
    assert!(
        ahead_of_the_tick >= 9,
        "{ahead_of_the_tick} of 12 shots told ahead of the next tick"
    );
    assert_eq!(c.core.stats.corrections, 0, "{:?}", c.core.stats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entities_out_of_view_are_never_sent() {
    let h = Harness::start(14).await;
    let mut c = h.join("p-aoi", LinkConditioner::perfect(), 5).await;
    let cfg = arena::aoi::InterestConfig::default();
    let mut fewest = usize::MAX;
    let mut most = 0;
    let mut last_mine: Option<(f32, f32)> = None;
    let mut settling = 0u32;
    for _ in 0..120 {
        c.step(Intent::default()).await.unwrap();
        let me = c.core.entity;
        let Some((_, entities)) = c.core.latest() else {
            continue;
        };
        let Some(mine) = entities.iter().find(|e| e.0 == me).map(|e| e.1) else {
            continue;
        };
        fewest = fewest.min(entities.len());
        most = most.max(entities.len());
        // After our own respawn (a jump across the arena) the entities that were near the old
        // spot stay in the snapshot until the next interest refresh drops them: judge the view
        // again once it has settled.
        let here = (f32::from(mine.x), f32::from(mine.y));
        if let Some(before) = last_mine {
            if (here.0 - before.0).hypot(here.1 - before.1) > 50.0 {
                settling = 10;
            }
        }
        last_mine = Some(here);
        if settling > 0 {
            settling -= 1;
            continue;
        }
        for (id, s) in entities {
            let d = ((f32::from(s.x) - f32::from(mine.x)).powi(2)
                + (f32::from(s.y) - f32::from(mine.y)).powi(2))
            .sqrt();
            // Far entities may be a couple of refreshes stale: allow their travel.
            assert!(
                d <= cfg.radius + cfg.margin + 20.0,
                "entity {id} sent at {d} units"
            );
        }
    }
    assert!(
        fewest < 15,
        "someone was out of view at some point ({fewest}..{most} of 15)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_with_bad_tokens_are_refused_with_a_reason() {
    let h = Harness::start(2).await;
    let t = h.ticket("p-tok", 1000).await;
    let server: std::net::SocketAddr = t.server.parse().unwrap();
    let connect = |token: String| async move {
        UdpClient::connect(
            server,
            token,
            LinkConditioner::perfect(),
            9,
            Duration::from_secs(2),
        )
        .await
    };
    let denied = |r: Result<UdpClient, ClientError>| match r {
        Err(ClientError::Denied(reason)) => reason,
        Err(e) => panic!("expected a denial, got {e}"),
        Ok(_) => panic!("expected a denial, got a connection"),
    };
    let connect_signer = game_server::connect_signer(&h.rest);
    let claims = |match_id: &str, exp: u64, nonce: u64| ConnectClaims {
        sub: "p-x".into(),
        name: "X".into(),
        match_id: match_id.into(),
        server: t.server.clone(),
        exp,
        nonce,
    };
    let later = protocol::now_secs() + 60;
    // Forged: signed with another secret.
    let forged = game_server::connect_signer(&TokenSigner::new(b"another-secret-0123456789"))
        .sign(&claims(&t.match_id, later, 1));
    assert_eq!(denied(connect(forged).await), DenyReason::BadToken);
    // A REST token is not a connect token.
    let rest = h.rest.sign(&Claims {
        sub: "p-x".into(),
        name: "X".into(),
        exp: later,
    });
    assert_eq!(denied(connect(rest).await), DenyReason::BadToken);
    assert_eq!(
        denied(connect(connect_signer.sign(&claims(&t.match_id, 1, 2))).await),
        DenyReason::Expired
    );
    assert_eq!(
        denied(connect(connect_signer.sign(&claims("eu-nosuch", later, 3))).await),
        DenyReason::UnknownMatch
    );
    // The real ticket works once; the same token from another address is a replay.
    let first = connect(t.connect_token.clone()).await.unwrap();
    assert_eq!(
        denied(connect(t.connect_token.clone()).await),
        DenyReason::Replayed
    );
    drop(first);
}

fn track(events: Vec<ClientEvent>, roster: &mut std::collections::BTreeMap<u16, bool>) {
    for e in events {
        match e {
            ClientEvent::Message(Message::PlayerInfo { entity, bot, .. }) => {
                roster.insert(entity, bot);
            }
            ClientEvent::Message(Message::PlayerGone { entity }) => {
                roster.remove(&entity);
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_give_up_their_seats_to_real_players() {
    let h = Harness::start(4).await;
    let mut roster = std::collections::BTreeMap::new();
    let mut a = h.join("p-seat-a", LinkConditioner::perfect(), 1).await;
    for _ in 0..20 {
        track(a.step(Intent::default()).await.unwrap(), &mut roster);
    }
    let bots = |r: &std::collections::BTreeMap<u16, bool>| r.values().filter(|b| **b).count();
    assert_eq!((roster.len(), bots(&roster)), (4, 3), "{roster:?}");
    let mut b = h.join("p-seat-b", LinkConditioner::perfect(), 2).await;
    for _ in 0..20 {
        b.step(Intent::default()).await.unwrap();
        track(a.step(Intent::default()).await.unwrap(), &mut roster);
    }
    assert_eq!((roster.len(), bots(&roster)), (4, 2), "{roster:?}");
    // When a player leaves, a bot takes the seat back.
    b.disconnect().await;
    for _ in 0..20 {
        track(a.step(Intent::default()).await.unwrap(), &mut roster);
    }
    assert_eq!((roster.len(), bots(&roster)), (4, 3), "{roster:?}");
}
