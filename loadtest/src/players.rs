//! `players`: N UDP bot players (the real client library) against an in-process game server,
//! through an in-process link conditioner (latency, jitter, loss). Measures, from HDR
//! histograms: input -> acknowledged round trip, input -> seen by the other clients (a shot
//! fired, delivered as a reliable `Fire` event to everyone who has the shooter in view),
//! downstream bytes per player per second, prediction corrections, and the server's tick
//! duration, and its CPU per player-tick. The server runs on a thread of its own (a
//! current-thread runtime: ticks, port, publisher, timers), apart from the bots' runtime, so
//! its CPU is that thread's CPU time, everything included; the thread CPU of its ticks and of
//! its port (from its own metrics) and the wall-clock busy time (which counts whatever else
//! held the two cores meanwhile) are kept next to it. Fire latencies are stamped when the
//! datagram comes off the link, not when the client's step ends. With `--compare`, the same
//! load runs again without area of interest and/or without delta compression.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arena::aoi::InterestConfig;
use backends::{MemoryCheckpoints, MemoryLog, MemoryLogLimits, MemoryRegistry};
use game_client::{ClientEvent, Intent, LinkConditioner, UdpClient};
use game_server::{GameServer, GameServerConfig, GameServerStores};
use hdrhistogram::Histogram;
use httpkit::Shutdown;
use protocol::net::Message;
use protocol::{Claims, TokenSigner};

use crate::report::{machine, Latency, Results, Row};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Bot players.
    #[arg(long, default_value_t = 50)]
    players: usize,
    /// Players per room.
    #[arg(long, default_value_t = 50)]
    room_size: usize,
    /// Seconds of play per variant.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    #[arg(long, default_value_t = 30)]
    tick_hz: u32,
    /// Snapshots per second to each player (at most the tick rate; urgent events leave on
    /// the tick they happen either way). Defaults to the game server's default.
    #[arg(long, default_value_t = GameServerConfig::default().snapshot_hz)]
    snapshot_hz: u32,
    /// Round trip added by the link conditioner, ms.
    #[arg(long, default_value_t = 50)]
    rtt_ms: u64,
    /// Extra one-way delay, up to this many ms.
    #[arg(long, default_value_t = 10)]
    jitter_ms: u64,
    /// Loss each way, 0..1.
    #[arg(long, default_value_t = 0.05)]
    loss: f64,
    /// Also run without AOI, without delta compression, and without both.
    #[arg(long)]
    compare: bool,
    /// Also run with one `sendto` per datagram instead of batched `sendmmsg`.
    #[arg(long)]
    compare_sends: bool,
    /// Also run with player commands held for the next tick (the game server's
    /// `--act-on-arrival false`): what acting on them as they arrive costs and saves.
    #[arg(long)]
    compare_arrival: bool,
    /// After each variant, replay its datagrams (same counts, sizes, system calls and wakes)
    /// with no game around them, and report that replay's CPU per player-tick: the floor
    /// under the server's figure on this machine.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    io_floor: bool,
}

#[derive(Clone, Copy)]
struct Variant {
    name: &'static str,
    aoi: bool,
    delta: bool,
    batch_sends: bool,
    act_on_arrival: bool,
}

/// The server's counters, read from its Prometheus registry (same process).
#[derive(Default, Clone, Copy)]
struct ServerCounters {
    busy_s: f64,
    tick_cpu_s: f64,
    port_cpu_s: f64,
    send_cpu_s: f64,
    player_ticks: f64,
    ticks: f64,
    bytes_out: f64,
    datagrams_out: f64,
    datagrams_in: f64,
    bytes_in: f64,
    snapshots_sent: f64,
}

fn counters() -> (ServerCounters, Vec<(f64, u64)>) {
    let mut c = ServerCounters::default();
    let mut buckets = Vec::new();
    for mf in prometheus::gather() {
        let m = mf.get_metric();
        let Some(first) = m.first() else { continue };
        match mf.name() {
            "gs_tick_busy_seconds_total" => c.busy_s = first.get_counter().value(),
            "gs_tick_cpu_seconds_total" => c.tick_cpu_s = first.get_counter().value(),
            "gs_port_cpu_seconds_total" => c.port_cpu_s = first.get_counter().value(),
            "gs_send_cpu_seconds_total" => c.send_cpu_s = first.get_counter().value(),
            "gs_player_ticks_total" => c.player_ticks = first.get_counter().value(),
            "gs_ticks_total" => c.ticks = first.get_counter().value(),
            "gs_udp_bytes_out_total" => c.bytes_out = first.get_counter().value(),
            "gs_snapshots_sent_total" => c.snapshots_sent = first.get_counter().value(),
            "gs_udp_datagrams_out_total" => c.datagrams_out = first.get_counter().value(),
            "gs_udp_datagrams_total" => c.datagrams_in = first.get_counter().value(),
            "gs_udp_bytes_in_total" => c.bytes_in = first.get_counter().value(),
            "gs_tick_duration_seconds" => {
                buckets = first
                    .get_histogram()
                    .get_bucket()
                    .iter()
                    .map(|b| (b.upper_bound(), b.cumulative_count()))
                    .collect();
            }
            _ => {}
        }
    }
    (c, buckets)
}

/// A quantile from cumulative bucket counts (difference of two snapshots), interpolated
/// within the bucket; in microseconds.
fn bucket_quantile(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> f64 {
    let counts: Vec<(f64, u64)> = after
        .iter()
        .map(|(b, n)| {
            let prev = before.iter().find(|(pb, _)| pb == b).map_or(0, |x| x.1);
            (*b, n - prev)
        })
        .collect();
    let total = counts.last().map_or(0, |c| c.1);
    if total == 0 {
        return 0.0;
    }
    let want = q * total as f64;
    let mut lower = (0.0, 0u64);
    for &(bound, n) in &counts {
        if n as f64 >= want {
            let span = (n - lower.1) as f64;
            let f = if span > 0.0 {
                (want - lower.1 as f64) / span
            } else {
                1.0
            };
            return (lower.0 + (bound - lower.0) * f) * 1e6;
        }
        lower = (bound, n);
    }
    lower.0 * 1e6
}

/// The game server on a thread of its own, driven by a current-thread runtime: everything the
/// server does runs there (rooms spawned by matchmaking included, since matchmaking is called
/// on it too), so the thread's CPU time is the server's and the bots' is not in it.
struct ServerThread {
    runtime: tokio::runtime::Handle,
    thread: std::thread::JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl ServerThread {
    fn start() -> anyhow::Result<ServerThread> {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("game-server".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("game server runtime");
                let _ = handle_tx.send(rt.handle().clone());
                let _ = rt.block_on(stopped);
            })?;
        let runtime = handle_rx.recv()?;
        Ok(ServerThread {
            runtime,
            thread,
            stop: Some(stop),
        })
    }

    /// The server thread's CPU time so far (user and system).
    fn cpu(&self) -> Duration {
        use std::os::unix::thread::JoinHandleExt;
        let mut clock: libc::clockid_t = 0;
        // SAFETY: the thread is alive until `stop`, and both pointers are valid for the calls.
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        unsafe {
            if libc::pthread_getcpuclockid(self.thread.as_pthread_t(), &mut clock) != 0
                || libc::clock_gettime(clock, &mut ts) != 0
            {
                return Duration::ZERO;
            }
        }
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    /// Runs `f` on the server's thread and waits for it.
    async fn run<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = T> + Send + 'static,
    ) -> anyhow::Result<T> {
        Ok(self.runtime.spawn(f).await?)
    }

    fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.thread.join();
    }
}

/// Average bytes per received packet.
fn per_packet(bytes: u64, packets: u64) -> f64 {
    bytes as f64 / packets.max(1) as f64
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

pub async fn run(args: Args) -> anyhow::Result<Results> {
    let mut variants = vec![Variant {
        name: "AOI + delta",
        aoi: true,
        delta: true,
        batch_sends: true,
        act_on_arrival: true,
    }];
    if args.compare_arrival {
        variants.push(Variant {
            name: "AOI + delta, commands held for the tick",
            aoi: true,
            delta: true,
            batch_sends: true,
            act_on_arrival: false,
        });
    }
    if args.compare_sends {
        variants.push(Variant {
            name: "AOI + delta, one sendto per datagram",
            aoi: true,
            delta: true,
            batch_sends: false,
            act_on_arrival: true,
        });
    }
    if args.compare {
        variants.push(Variant {
            name: "delta only (no AOI)",
            aoi: false,
            delta: true,
            batch_sends: true,
            act_on_arrival: true,
        });
        variants.push(Variant {
            name: "AOI only (no delta)",
            aoi: true,
            delta: false,
            batch_sends: true,
            act_on_arrival: true,
        });
        variants.push(Variant {
            name: "neither (full world, full state)",
            aoi: false,
            delta: false,
            batch_sends: true,
            act_on_arrival: true,
        });
    }
    let mut rows = Vec::new();
    for v in variants {
        rows.extend(run_variant(&args, v).await?);
    }
    Ok(Results {
        summary: Vec::new(),
        systems: Vec::new(),
        scenario: "players".into(),
        machine: machine(),
        command: format!(
            "loadtest players --players {} --room-size {} --duration {} --tick-hz {} --snapshot-hz {} --rtt-ms {} --jitter-ms {} --loss {}{}",
            args.players,
            args.room_size,
            args.duration,
            args.tick_hz,
            args.snapshot_hz.min(args.tick_hz),
            args.rtt_ms,
            args.jitter_ms,
            args.loss,
            [
                (args.compare, " --compare"),
                (args.compare_sends, " --compare-sends"),
                (args.compare_arrival, " --compare-arrival"),
            ]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, flag)| *flag)
            .collect::<String>()
        ),
        rows,
    })
}

async fn run_variant(args: &Args, v: Variant) -> anyhow::Result<Vec<Row>> {
    let server_thread = ServerThread::start()?;
    let rest = TokenSigner::new(b"loadtest-players-secret-000000");
    let shutdown = Shutdown::new();
    let interest = if v.aoi {
        InterestConfig::default()
    } else {
        InterestConfig {
            radius: 5000.0,
            margin: 0.0,
            near: 5000.0,
            far_every: 1,
        }
    };
    let config = GameServerConfig {
        matches: 0,
        bots_per_match: 0,
        seats: args.room_size.max(1),
        tick_hz: args.tick_hz,
        snapshot_hz: args.snapshot_hz.min(args.tick_hz),
        match_duration: Duration::from_secs(args.duration + 60),
        checkpoints: false,
        interest,
        delta: v.delta,
        batch_sends: v.batch_sends,
        act_on_arrival: v.act_on_arrival,
        ..Default::default()
    };
    let stores = GameServerStores {
        log: Arc::new(MemoryLog::new(MemoryLogLimits::default())),
        registry: Arc::new(MemoryRegistry::default()),
        checkpoints: Arc::new(MemoryCheckpoints::default()),
    };
    let server = {
        let (rest, shutdown) = (rest.clone(), shutdown.clone());
        server_thread
            .run(async move {
                let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
                GameServer::new(config, udp, stores, &rest, shutdown)
            })
            .await??
    };
    let running = server_thread.runtime.spawn(server.clone().run());
    let link = LinkConditioner::new(args.rtt_ms, args.jitter_ms, args.loss);

    // Each player starts playing as soon as it is connected (a silent player would time
    // out); rooms fill in order. Once everyone is in and has played a warm-up second, the
    // measured window opens for all at once.
    let fired: Arc<Mutex<HashMap<(String, u16), Instant>>> = Arc::default();
    let rtt = Arc::new(Mutex::new(new_histogram()));
    let seen = Arc::new(Mutex::new(new_histogram()));
    let window: Arc<std::sync::OnceLock<(Instant, Instant)>> = Arc::default();
    let mut rooms: HashMap<String, usize> = HashMap::new();
    let mut tasks = Vec::new();
    for n in 0..args.players {
        let claims = Claims {
            sub: format!("lt-{n}"),
            name: format!("LT {n}"),
            exp: protocol::now_secs() + 3600,
        };
        let t = {
            let server = server.clone();
            server_thread
                .run(async move { server.matchmake(&claims, "eu", 1000).await })
                .await?
                .map_err(|e| anyhow::anyhow!("matchmaking: {e:?}"))?
        };
        let mut c = UdpClient::connect(
            t.server.parse()?,
            t.connect_token,
            link,
            n as u64 + 1,
            Duration::from_secs(10),
        )
        .await?;
        c.core.count_wire_parts = true;
        let match_id = t.match_id;
        *rooms.entry(match_id.clone()).or_default() += 1;
        let window = window.clone();
        let (fired, rtt, seen) = (fired.clone(), rtt.clone(), seen.clone());
        tasks.push(tokio::spawn(async move {
            let mut at_start = None;
            let mut step = n as u64 * 7;
            let mut waypoint = (500.0f32, 500.0f32);
            loop {
                let now = Instant::now();
                let (start, end) = window.get().copied().unwrap_or((
                    now + Duration::from_secs(3600),
                    now + Duration::from_secs(7200),
                ));
                if now >= end {
                    break;
                }
                if at_start.is_none() && now >= start {
                    c.core.stats.rtt_samples.clear();
                    at_start = Some(c.core.stats.clone());
                }
                let measuring = at_start.is_some();
                step += 1;
                let me = c.core.predicted();
                if (me.x - waypoint.0).abs() + (me.y - waypoint.1).abs() < 30.0
                    || step.is_multiple_of(150)
                {
                    let r = step.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20;
                    waypoint = (60.0 + (r % 880) as f32, 60.0 + ((r >> 12) % 880) as f32);
                }
                let (dx, dy) = (waypoint.0 - me.x, waypoint.1 - me.y);
                let len = (dx * dx + dy * dy).sqrt().max(1.0);
                // Fire about once a second (the weapon cools down in 0.45 s, so each one is
                // a real shot the others are told about).
                let fire = step.is_multiple_of(30);
                if fire {
                    fired
                        .lock()
                        .unwrap()
                        .insert((match_id.clone(), c.core.entity), Instant::now());
                }
                let intent = Intent {
                    move_x: (dx / len * 127.0) as i8,
                    move_y: (dy / len * 127.0) as i8,
                    aim: (step * 2000) as u16,
                    fire,
                };
                let Ok(events) = c.step_timed(intent).await else {
                    break;
                };
                for (arrived, e) in events {
                    if let ClientEvent::Message(Message::Fire { entity, .. }) = e {
                        if entity == c.core.entity {
                            continue;
                        }
                        let at = fired
                            .lock()
                            .unwrap()
                            .get(&(match_id.clone(), entity))
                            .copied();
                        if let (Some(t), true) = (at, measuring) {
                            let us = arrived.saturating_duration_since(t).as_micros() as u64;
                            if us < 1_000_000 {
                                let _ = seen.lock().unwrap().record(us.max(1));
                            }
                        }
                    }
                }
                let mut h = rtt.lock().unwrap();
                for r in c.core.stats.rtt_samples.drain(..) {
                    if measuring {
                        let _ = h.record(u64::from(r.max(1)) * 1000);
                    }
                }
            }
            let s = c.core.stats.clone();
            let base = at_start.unwrap_or_default();
            c.disconnect().await;
            game_client::ClientStats {
                snapshots: s.snapshots - base.snapshots,
                snapshots_lost: s.snapshots_lost - base.snapshots_lost,
                packets: s.packets - base.packets,
                corrections: s.corrections - base.corrections,
                bytes_in: s.bytes_in - base.bytes_in,
                frames: s.frames - base.frames,
                frames_past_newest: s.frames_past_newest - base.frames_past_newest,
                bytes_in_parts: protocol::net::WireParts {
                    fixed: s.bytes_in_parts.fixed - base.bytes_in_parts.fixed,
                    entities: s.bytes_in_parts.entities - base.bytes_in_parts.entities,
                    reliable: s.bytes_in_parts.reliable - base.bytes_in_parts.reliable,
                    urgent: s.bytes_in_parts.urgent - base.bytes_in_parts.urgent,
                },
                ..s
            }
        }));
    }
    let mut corrections = 0u64;
    let (mut frames, mut frames_past_newest) = (0u64, 0u64);
    let mut snapshots = 0u64;
    let mut lost = 0u64;
    let mut packets = 0u64;
    let mut down_bytes = 0u64;
    let mut parts = protocol::net::WireParts::default();
    let warm_end = Instant::now() + Duration::from_secs(1);
    let _ = window.set((warm_end, warm_end + Duration::from_secs(args.duration)));
    tokio::time::sleep_until(warm_end.into()).await;
    let (before, buckets_before) = counters();
    let server_cpu_before = server_thread.cpu();
    let started = Instant::now();
    for t in tasks {
        let s = t.await?;
        let bytes = s.bytes_in;
        corrections += s.corrections;
        frames += s.frames;
        frames_past_newest += s.frames_past_newest;
        snapshots += s.snapshots;
        lost += s.snapshots_lost;
        packets += s.packets;
        down_bytes += bytes;
        parts.add(s.bytes_in_parts);
    }
    let (after, buckets_after) = counters();
    let server_cpu = server_thread.cpu().saturating_sub(server_cpu_before);
    let secs = started.elapsed().as_secs_f64();
    shutdown.cancel();
    let _ = running.await;
    server_thread.stop();

    let player_ticks = (after.player_ticks - before.player_ticks).max(1.0);
    let busy_us_per_player_tick = (after.busy_s - before.busy_s) * 1e6 / player_ticks;
    let server_us_per_player_tick = server_cpu.as_secs_f64() * 1e6 / player_ticks;
    let cpu_us_per_player_tick =
        ((after.tick_cpu_s - before.tick_cpu_s) + (after.port_cpu_s - before.port_cpu_s)) * 1e6
            / player_ticks;
    let send_us_per_player_tick = (after.send_cpu_s - before.send_cpu_s) * 1e6 / player_ticks;
    let port_us_per_player_tick = (after.port_cpu_s - before.port_cpu_s) * 1e6 / player_ticks;
    let per_player_bps = down_bytes as f64 / secs / args.players.max(1) as f64;
    let server_bps_per_player =
        (after.bytes_out - before.bytes_out) / secs / args.players.max(1) as f64;
    let floor = if args.io_floor {
        let out = after.datagrams_out - before.datagrams_out;
        let snapshots = after.snapshots_sent - before.snapshots_sent;
        let received = after.datagrams_in - before.datagrams_in;
        let wall_ticks = (secs * f64::from(args.tick_hz)).max(1.0);
        // Acting on arrival, what is not a snapshot left between ticks, at a port poll; held
        // for the tick, everything left at a tick.
        let (per_tick, between_per_s) = if v.act_on_arrival {
            (snapshots / wall_ticks, (out - snapshots).max(0.0) / secs)
        } else {
            (out / wall_ticks, 0.0)
        };
        let load = crate::io_floor::Load {
            players: args.players,
            duration: Duration::from_secs(args.duration),
            tick_hz: args.tick_hz,
            poll: if v.act_on_arrival {
                game_server::port::INPUT_POLL
            } else {
                game_server::port::PORT_REST_MAX
            },
            per_tick,
            between_per_s,
            out_size: (((after.bytes_out - before.bytes_out) / out.max(1.0)) as usize)
                .saturating_sub(game_server::port::UDP_IP_OVERHEAD as usize),
            in_per_s: received / secs,
            in_size: ((after.bytes_in - before.bytes_in) / received.max(1.0)) as usize,
        };
        let floor = tokio::task::spawn_blocking(move || crate::io_floor::measure(load)).await??;
        Some((load, floor))
    } else {
        None
    };
    let floor_note = match floor {
        Some((load, floor)) => {
            let us = floor.us_per_player_tick(args.players);
            format!(
                "; I/O floor (the same datagrams replayed with no game: {:.1} a tick and {:.0} a second between ticks of {} B, {:.0} a second read, a wake every tick and every {} ms) {:.2} us per player-tick, of which the {:.0} wakes a second alone (the same schedule, nothing read or sent) {:.2}; the game's own {:.2}",
                load.per_tick,
                load.between_per_s,
                load.out_size,
                load.in_per_s,
                load.poll.as_millis(),
                us,
                floor.wakes as f64 / load.duration.as_secs_f64(),
                floor.wakes_us_per_player_tick(args.players),
                server_us_per_player_tick - us,
            )
        }
        None => String::new(),
    };
    let tick_p50 = bucket_quantile(&buckets_before, &buckets_after, 0.5);
    let tick_p99 = bucket_quantile(&buckets_before, &buckets_after, 0.99);
    let notes = format!(
        "{} players in rooms of {} (filled: {:?}), {} Hz ticks, {} Hz snapshots; down {:.0} B/s per player received ({:.0} B/s sent, incl. 28 B UDP/IP headers); server CPU {:.2} us per player-tick (its own thread, everything included; of it, ticks and the port by their thread CPU {:.2} us, of which sending {:.2} us and the port {:.2} us; wall-clock busy of ticks {:.2} us); tick p50 {:.0} us p99 {:.0} us; corrections {}; others drawn past the newest snapshot in {:.1}% of frames ({} ms interpolation delay); {} snapshots, packet loss {:.1}%; per packet received {:.1} B: fixed header and own body {:.1}, entities {:.1}, urgent events {:.1}, reliable {:.1}, UDP/IP 28",
        args.players,
        args.room_size,
        {
            let mut sizes: Vec<usize> = rooms.values().copied().collect();
            sizes.sort_unstable_by(|a, b| b.cmp(a));
            sizes
        },
        args.tick_hz,
        args.snapshot_hz.min(args.tick_hz),
        per_player_bps,
        server_bps_per_player,
        server_us_per_player_tick,
        cpu_us_per_player_tick,
        send_us_per_player_tick,
        port_us_per_player_tick,
        busy_us_per_player_tick,
        tick_p50,
        tick_p99,
        corrections,
        100.0 * frames_past_newest as f64 / frames.max(1) as f64,
        protocol::net::interpolation_delay_ms(
            args.snapshot_hz.min(args.tick_hz),
            protocol::net::DEFAULT_INTERPOLATION_DELAY_MS
        ),
        snapshots,
        100.0 * lost as f64 / (packets + lost).max(1) as f64,
        per_packet(parts.total(), packets) + 28.0,
        per_packet(parts.fixed, packets),
        per_packet(parts.entities, packets),
        per_packet(parts.urgent, packets),
        per_packet(parts.reliable, packets),
    ) + &floor_note;
    let rtt = rtt.lock().unwrap().clone();
    let seen = seen.lock().unwrap().clone();
    Ok(vec![
        Row {
            name: format!("{}: input -> ack", v.name),
            throughput_per_s: per_player_bps,
            unit: "B/s down per player".into(),
            latency: Latency::of(&rtt),
            latency_of: "input sent -> its packet acknowledged (round trip)".into(),
            notes: notes.clone(),
        },
        Row {
            name: format!("{}: input -> seen by others", v.name),
            throughput_per_s: per_player_bps,
            unit: "B/s down per player".into(),
            latency: Latency::of(&seen),
            latency_of: "fire input sent -> Fire event received by another player".into(),
            notes,
        },
    ])
}
