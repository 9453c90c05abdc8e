use super::*;
use crate::physics::RADIUS;

fn world(seed: u64) -> World {
    let mut w = World::new(seed, WorldConfig::default());
    for i in 0..6 {
        w.add_bot(format!("b{i}"), format!("Bot {i}"));
    }
    w
}

/// A scripted real player: circles and fires now and then.
fn scripted_input(seq: u32, view_tick: u32) -> Input {
    Input {
        seq,
        move_x: ((seq as f32 * 0.05).cos() * 127.0) as i8,
        move_y: ((seq as f32 * 0.05).sin() * 127.0) as i8,
        aim: (seq * 997) as u16,
        fire: seq.is_multiple_of(7),
        view_tick,
        view_frac: (seq * 31) as u8,
    }
}

fn run(seed: u64, ticks: u32) -> (World, Vec<SimEvent>) {
    let mut w = world(seed);
    let human = w.add_human("p-1".into(), "Ann".into());
    let mut events = Vec::new();
    for seq in 1..=ticks {
        let view = (w.tick as u32).saturating_sub(3);
        w.apply_input(human, &scripted_input(seq, view));
        events.extend(w.step());
    }
    (w, events)
}

#[test]
fn same_seed_and_inputs_give_byte_identical_states() {
    let (a, events_a) = run(7, 900);
    let (b, events_b) = run(7, 900);
    assert_eq!(
        serde_json::to_vec(&a).unwrap(),
        serde_json::to_vec(&b).unwrap()
    );
    assert_eq!(events_a, events_b);
    // And the match is a match: kills happen, and a different seed plays differently.
    assert!(events_a.iter().any(|e| matches!(e, SimEvent::Kill { .. })));
    let (c, _) = run(8, 900);
    assert_ne!(
        serde_json::to_vec(&a).unwrap(),
        serde_json::to_vec(&c).unwrap()
    );
}

#[test]
fn players_stay_in_the_arena_and_out_of_obstacles() {
    let mut w = world(3);
    let human = w.add_human("p-1".into(), "Ann".into());
    for seq in 1..3000 {
        w.apply_input(human, &scripted_input(seq, 0));
        w.step();
        for p in &w.players {
            let b = p.body;
            assert!(
                b.x >= RADIUS && b.x <= ARENA - RADIUS && b.y >= RADIUS && b.y <= ARENA - RADIUS
            );
            assert!(
                !blocked(b.x, b.y),
                "{} inside an obstacle at {},{}",
                p.id,
                b.x,
                b.y
            );
        }
    }
}

#[test]
fn scores_add_up_to_deaths() {
    let (w, events) = run(11, 1800);
    let kills = events
        .iter()
        .filter(|e| matches!(e, SimEvent::Kill { .. }))
        .count();
    let total_score: u32 = w.players.iter().map(|p| p.score).sum();
    let total_deaths: u32 = w.players.iter().map(|p| p.deaths).sum();
    assert_eq!(total_score as usize, kills);
    assert_eq!(total_deaths as usize, kills);
}

#[test]
fn redundant_inputs_apply_once() {
    let mut w = World::new(1, WorldConfig::default());
    let me = w.add_human("p".into(), "P".into());
    place(&mut w, me, 500.0, 100.0);
    let right = Input {
        seq: 1,
        move_x: 127,
        ..Input::default()
    };
    w.apply_input(me, &right);
    let after_one = w.player(me).unwrap().body;
    w.apply_input(me, &right);
    w.apply_input(me, &Input { seq: 0, ..right });
    assert_eq!(w.player(me).unwrap().body, after_one);
    assert_eq!(w.player(me).unwrap().last_input, 1);
}

/// A shooter standing still at (100, 500) and a target running north along x = 300.
struct Range {
    w: World,
    shooter: u16,
    target: u16,
    seq: u32,
    /// Target's position after each tick.
    trail: Vec<(u64, f32, f32)>,
}

impl Range {
    fn new() -> Range {
        let mut w = World::new(5, WorldConfig::default());
        let shooter = w.add_human("shooter".into(), "S".into());
        let target = w.add_human("target".into(), "T".into());
        place(&mut w, shooter, 100.0, 500.0);
        place(&mut w, target, 300.0, 420.0);
        let mut r = Range {
            w,
            shooter,
            target,
            seq: 0,
            trail: Vec::new(),
        };
        // Run long enough to reach top speed and fill the history.
        for _ in 0..40 {
            r.tick(None);
        }
        r
    }

    fn tick(&mut self, shot: Option<(f32, f32, u64)>) -> Option<ShotOutcome> {
        self.seq += 1;
        self.w.apply_input(
            self.target,
            &Input {
                seq: self.seq,
                move_y: 127,
                ..Input::default()
            },
        );
        let outcome = shot.and_then(|(x, y, view_tick)| {
            let s = self.w.player(self.shooter).unwrap().body;
            let aim = physics::radians_to_aim((y - s.y).atan2(x - s.x));
            self.w.apply_input(
                self.shooter,
                &Input {
                    seq: self.seq,
                    aim,
                    fire: true,
                    view_tick: view_tick as u32,
                    ..Input::default()
                },
            )
        });
        if shot.is_none() {
            self.w.apply_input(
                self.shooter,
                &Input {
                    seq: self.seq,
                    ..Input::default()
                },
            );
        }
        self.w.step();
        let t = self.w.player(self.target).unwrap().body;
        self.trail.push((self.w.tick, t.x, t.y));
        outcome
    }

    fn seen(&self, ticks_ago: u64) -> (f32, f32, u64) {
        let (tick, x, y) = self.trail[self.trail.len() - 1 - ticks_ago as usize];
        (x, y, tick)
    }
}

#[test]
fn a_shot_at_where_the_target_was_100ms_ago_hits() {
    let mut r = Range::new();
    // 100 ms at 30 Hz is 3 ticks: the shooter's screen showed the target there.
    let outcome = r.tick(Some(r.seen(3))).unwrap();
    assert_eq!(outcome.victim, Some(r.target));
    assert_eq!((outcome.rewound, outcome.capped), (3, false));
    assert_eq!(r.w.player(r.target).unwrap().hp, 100 - DAMAGE);
    // Without compensation the same shot would miss: the target has moved on by 15 units.
    let mut r = Range::new();
    let (x, y, _) = r.seen(3);
    let now = r.w.tick;
    assert_eq!(r.tick(Some((x, y, now))).unwrap().victim, None);
}

#[test]
fn a_shot_at_where_the_target_was_300ms_ago_is_refused_by_the_cap() {
    let mut r = Range::new();
    let outcome = r.tick(Some(r.seen(9))).unwrap();
    assert!(outcome.capped);
    assert_eq!(outcome.rewound, 6, "judged at the 200 ms cap");
    assert_eq!(outcome.victim, None);
    assert_eq!(r.w.player(r.target).unwrap().hp, 100);
}

#[test]
fn a_respawned_target_is_not_hit_at_its_old_spot() {
    let mut r = Range::new();
    let (x, y, seen_at) = r.seen(0);
    // The target dies right after the tick the shooter is looking at, and respawns quickly
    // elsewhere (a life later), all inside the rewind window.
    let shooter_i =
        r.w.players
            .iter()
            .position(|p| p.entity == r.shooter)
            .unwrap();
    let target_i =
        r.w.players
            .iter()
            .position(|p| p.entity == r.target)
            .unwrap();
    r.w.players[target_i].hp = 1;
    r.w.damage(shooter_i, target_i);
    r.w.players[target_i].respawn_in = 1.5 / 30.0;
    r.tick(None);
    r.tick(None);
    let t = r.w.player(r.target).unwrap();
    assert!(t.alive && t.life == 1, "respawned");
    assert!((t.body.x - x).abs() + (t.body.y - y).abs() > 2.0 * RADIUS);
    let hp = t.hp;
    // The shooter still sees the old body at its old spot: that body is gone, no hit.
    let outcome = r.tick(Some((x, y, seen_at))).unwrap();
    assert!(!outcome.capped);
    assert_eq!(
        outcome.victim, None,
        "an earlier life's body must not be hit"
    );
    // Nor is anything hit halfway between the old spot and the new one (no blending
    // across a respawn).
    let pose_dead = r.w.history.pose_at(r.target, seen_at + 1, 128).unwrap();
    assert!(!pose_dead.alive);
    assert_eq!(r.w.player(r.target).unwrap().hp, hp);
}

#[test]
fn results_keep_players_who_left_and_a_returning_player_carries_on() {
    let (mut w, _) = run(11, 3000);
    let total_kills = |w: &World| w.tallies().iter().map(|t| t.kills).sum::<u32>();
    let total_deaths = |w: &World| w.tallies().iter().map(|t| t.deaths).sum::<u32>();
    let kills = total_kills(&w);
    assert!(kills > 0, "3000 ticks without a kill");
    assert_eq!(kills, total_deaths(&w));
    // The busiest player leaves: their tally stays in the results.
    let top = w.players.iter().max_by_key(|p| p.kills).unwrap().clone();
    w.remove(top.entity).unwrap();
    assert_eq!(total_kills(&w), kills);
    let kept = w.tallies().into_iter().find(|t| t.id == top.id).unwrap();
    assert_eq!((kept.kills, kept.deaths), (top.kills, top.deaths));
    // They come back and carry on from it, listed once.
    let back = w.add_bot(top.id.clone(), top.name.clone());
    assert_eq!(w.player(back).unwrap().kills, top.kills);
    assert_eq!(w.tallies().iter().filter(|t| t.id == top.id).count(), 1);
    // The tally survives a checkpoint.
    let copy: World = serde_json::from_str(&serde_json::to_string(&w).unwrap()).unwrap();
    assert_eq!(copy.tallies(), w.tallies());
}
