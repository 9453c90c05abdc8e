//! A room: one match, simulated at a fixed tick rate. Each tick drains player commands, applies
//! inputs, steps the world, sends every connected player its snapshot (area of interest, delta
//! against its last acknowledged one) and, at the spectator rate, hands a delta to the
//! publisher. The room never awaits the bus or the network: UDP sends are non-blocking,
//! hand-offs go through bounded channels, and what does not fit waits in a bounded outbox.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arena::aoi::{self, Grid, InterestConfig};
use arena::{SimEvent, World, WorldConfig};
use protocol::net::{
    DenyReason, EntityState, Message, OwnState, Packet, ReliableBlock, ServerPacket, SnapshotDelta,
    MAX_PACKET,
};
use protocol::{now_ms, ConnectClaims, Delta, MatchEvent, MatchStatus, PlayerResult, Shot};
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;

use crate::checkpoint::Checkpoint;
use crate::metrics;
use crate::net::{send_packet, Routes};
use crate::publisher::RoomOutput;
use crate::session::Client;
use httpkit::Shutdown;

/// Outputs that may wait for a slow publisher. Consecutive deltas are merged while they wait,
/// so only events accumulate; past this many the room pauses its simulation (no event is ever
/// dropped) until the publisher catches up.
const OUTBOX_LIMIT: usize = 4096;
/// Commands handled per tick at most; the rest wait for the next tick (the channel is bounded,
/// so a flood is shed at the socket, not here).
const COMMANDS_PER_TICK: usize = 4096;
/// A player not heard from for this long is disconnected.
pub const PLAYER_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of reliable messages allowed in one snapshot packet.
const RELIABLE_BUDGET: usize = 400;

#[derive(Debug, Clone)]
pub struct RoomConfig {
    pub match_id: String,
    pub region: String,
    /// The matchmaking skill bucket; `None` for showcase rooms no one is matched into.
    pub bucket: Option<u32>,
    pub seed: u64,
    /// Bots fill the room up to this many players; each real player who joins replaces one.
    pub bots: usize,
    /// Real players the room takes at most.
    pub seats: usize,
    pub tick_hz: u32,
    pub spectator_hz: u32,
    pub snapshot_hz: u32,
    pub duration: Duration,
    pub interest: InterestConfig,
    pub delta: bool,
    pub rewind_cap_ms: u32,
    /// This server's player address (what connect tokens name).
    pub server: String,
    /// Carried in every keyframe, so gateways and the cold-load API hold the match back.
    pub broadcast_delay: Duration,
}

impl RoomConfig {
    /// The room as the registry announces it (no one seated yet).
    pub fn info(&self) -> backends::RoomInfo {
        backends::RoomInfo {
            match_id: self.match_id.clone(),
            region: self.region.clone(),
            bucket: self.bucket,
            server: self.server.clone(),
            seats: self.seats,
            humans: 0,
        }
    }
}

pub enum RoomCommand {
    Join {
        addr: SocketAddr,
        claims: ConnectClaims,
    },
    Packet {
        addr: SocketAddr,
        packet: protocol::net::ClientPacket,
    },
    Disconnect {
        addr: SocketAddr,
    },
}

/// How a room starts: a new match, or a match taken over from a checkpoint.
pub enum RoomStart {
    Fresh,
    Restored(Box<World>),
}

pub struct RoomIo {
    pub routes: Arc<Routes>,
    pub commands: mpsc::Receiver<RoomCommand>,
    pub checkpoints: Option<watch::Sender<Option<Arc<Checkpoint>>>>,
    pub epoch: u64,
}

struct Outbox {
    tx: mpsc::Sender<RoomOutput>,
    waiting: VecDeque<RoomOutput>,
    /// Events handed over so far: the publisher numbers them 1, 2, ... in this order, so this
    /// is also the seq of the last one.
    events: u64,
}

impl Outbox {
    fn push(&mut self, out: RoomOutput) {
        if matches!(out, RoomOutput::Event { .. }) {
            self.events += 1;
        }
        if let (RoomOutput::Delta(later), Some(RoomOutput::Delta(earlier))) =
            (&out, self.waiting.back_mut())
        {
            earlier.merge(later.clone());
            return;
        }
        self.waiting.push_back(out);
        self.flush();
    }

    fn event(&mut self, event: MatchEvent) {
        self.push(RoomOutput::Event {
            at_ms: now_ms(),
            event,
        });
    }

    fn flush(&mut self) {
        while let Some(out) = self.waiting.pop_front() {
            match self.tx.try_send(out) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(out)) => {
                    self.waiting.push_front(out);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.waiting.clear();
                    return;
                }
            }
        }
    }

    fn full(&self) -> bool {
        self.waiting.len() >= OUTBOX_LIMIT
    }
}

fn quantize(v: f32) -> i32 {
    (v * 10.0).round() as i32
}

fn tenths(v: f32) -> u16 {
    (v * 10.0).round().clamp(0.0, f32::from(u16::MAX)) as u16
}

pub struct Room {
    config: RoomConfig,
    world: World,
    outbox: Outbox,
    io: RoomIo,
    clients: HashMap<SocketAddr, Client>,
    bot_serial: usize,
    snapshot_no: u64,
    shots: Vec<Shot>,
    /// Real players restored from a checkpoint who have not reconnected yet, and since when.
    awaiting: HashMap<u16, Instant>,
}

impl Room {
    fn humans(&self) -> usize {
        self.world.players.iter().filter(|p| !p.bot).count()
    }

    fn human_ids(&self) -> Vec<String> {
        self.world
            .players
            .iter()
            .filter(|p| !p.bot)
            .map(|p| p.id.clone())
            .collect()
    }

    fn bots(&self) -> usize {
        self.world.players.len() - self.humans()
    }

    fn add_bot(&mut self) {
        self.bot_serial += 1;
        let id = format!("{}-bot{}", self.config.match_id, self.bot_serial);
        let name = format!("Bot {}", self.bot_serial);
        let entity = self.world.add_bot(id.clone(), name.clone());
        self.outbox.event(MatchEvent::PlayerJoined {
            player: id.clone(),
            name: name.clone(),
            bot: true,
        });
        self.broadcast(Message::PlayerInfo {
            entity,
            player: id,
            name,
            bot: true,
        });
    }

    /// Keeps the seats filled: bots up to the target, one fewer per real player.
    fn balance_bots(&mut self) {
        let want = self.config.bots.saturating_sub(self.humans());
        while self.bots() > want {
            let Some(bot) = self
                .world
                .players
                .iter()
                .rev()
                .find(|p| p.bot)
                .map(|p| p.entity)
            else {
                break;
            };
            let p = self.world.remove(bot).expect("bot exists");
            self.outbox.event(MatchEvent::PlayerLeft { player: p.id });
            self.broadcast(Message::PlayerGone { entity: bot });
        }
        while self.bots() < want {
            self.add_bot();
        }
    }

    fn broadcast(&mut self, m: Message) {
        let mut dead = Vec::new();
        for c in self.clients.values_mut() {
            if c.reliable_out.send(m.clone()).is_err() {
                dead.push(c.addr);
            }
        }
        for addr in dead {
            tracing::info!(%addr, "player's reliable channel overflowed; disconnecting");
            self.leave(addr);
        }
    }

    fn send_to(&mut self, entity: u16, m: Message) {
        if let Some(c) = self.clients.values_mut().find(|c| c.entity == entity) {
            if c.reliable_out.send(m).is_err() {
                let addr = c.addr;
                self.leave(addr);
            }
        }
    }

    fn join(&mut self, addr: SocketAddr, claims: ConnectClaims) {
        let accept = |c: &Client, tick: u64, hz: u32| Packet::ConnectAccepted {
            session: c.session,
            entity: c.entity,
            tick_hz: hz.min(255) as u8,
            tick: tick as u32,
        };
        if let Some(c) = self.clients.get(&addr) {
            // A repeated handshake (the accept was lost): answer again.
            if c.player == claims.sub {
                let p = accept(c, self.world.tick, self.config.tick_hz);
                send_packet(&self.io.routes.socket, addr, &p);
            }
            return;
        }
        // The same player from a new address (a reconnect): the old session goes.
        if let Some(old) = self
            .clients
            .values()
            .find(|c| c.player == claims.sub)
            .map(|c| c.addr)
        {
            self.drop_session(old);
        }
        let existing = self
            .world
            .players
            .iter()
            .find(|p| p.id == claims.sub && !p.bot)
            .map(|p| (p.entity, p.last_input));
        let (entity, last_input) = match existing {
            Some(e) => e,
            None => {
                if self.humans() >= self.config.seats {
                    send_packet(
                        &self.io.routes.socket,
                        addr,
                        &Packet::ConnectDenied {
                            reason: DenyReason::RoomFull,
                        },
                    );
                    return;
                }
                let entity = self
                    .world
                    .add_human(claims.sub.clone(), claims.name.clone());
                self.outbox.event(MatchEvent::PlayerJoined {
                    player: claims.sub.clone(),
                    name: claims.name.clone(),
                    bot: false,
                });
                self.broadcast(Message::PlayerInfo {
                    entity,
                    player: claims.sub.clone(),
                    name: claims.name.clone(),
                    bot: false,
                });
                (entity, 0)
            }
        };
        let session = rand::random::<u64>() | 1;
        let mut client = Client::new(addr, session, entity, claims.sub.clone(), last_input);
        for p in &self.world.players {
            let _ = client.reliable_out.send(Message::PlayerInfo {
                entity: p.entity,
                player: p.id.clone(),
                name: p.name.clone(),
                bot: p.bot,
            });
        }
        send_packet(
            &self.io.routes.socket,
            addr,
            &accept(&client, self.world.tick, self.config.tick_hz),
        );
        self.io.routes.bind(addr, session, &self.config.match_id);
        self.clients.insert(addr, client);
        metrics::CONNECTED_PLAYERS.inc();
        self.io
            .routes
            .set_players(&self.config.match_id, self.human_ids());
        tracing::info!(match_id = %self.config.match_id, player = %claims.sub, %addr, entity, "player joined");
        self.balance_bots();
    }

    fn drop_session(&mut self, addr: SocketAddr) -> Option<Client> {
        let c = self.clients.remove(&addr)?;
        self.io.routes.unbind(addr);
        metrics::CONNECTED_PLAYERS.dec();
        Some(c)
    }

    /// A player leaves (disconnect or time-out): their body goes, a bot takes the seat.
    fn leave(&mut self, addr: SocketAddr) {
        let Some(c) = self.drop_session(addr) else {
            return;
        };
        if let Some(p) = self.world.remove(c.entity) {
            tracing::info!(match_id = %self.config.match_id, player = %p.id, "player left");
            self.outbox.event(MatchEvent::PlayerLeft { player: p.id });
            self.broadcast(Message::PlayerGone { entity: c.entity });
        }
        self.io
            .routes
            .set_players(&self.config.match_id, self.human_ids());
        self.balance_bots();
    }

    fn handle(&mut self, cmd: RoomCommand, now: u64) {
        match cmd {
            RoomCommand::Join { addr, claims } => self.join(addr, claims),
            RoomCommand::Disconnect { addr } => self.leave(addr),
            RoomCommand::Packet { addr, packet } => {
                let Some(c) = self.clients.get_mut(&addr) else {
                    return;
                };
                if c.session != packet.session {
                    return;
                }
                let entity = c.entity;
                for m in c.on_packet(packet, now) {
                    // The only message a player may send is chat; it goes to everyone.
                    if let Message::Chat { text, .. } = m {
                        let text: String = text.chars().take(protocol::net::MAX_CHAT).collect();
                        self.broadcast(Message::Chat { entity, text });
                    }
                }
            }
        }
    }

    fn apply_inputs(&mut self) {
        for c in self.clients.values_mut() {
            for input in c.take_inputs() {
                if let Some(outcome) = self.world.apply_input(c.entity, &input) {
                    metrics::REWINDS
                        .with_label_values(&[if outcome.capped { "true" } else { "false" }])
                        .inc();
                }
            }
        }
    }

    fn on_sim_events(&mut self, events: Vec<SimEvent>) {
        let id_of = |w: &World, e: u16| w.player(e).map(|p| p.id.clone()).unwrap_or_default();
        for ev in events {
            match ev {
                SimEvent::Kill { killer, victim } => {
                    let (k, v) = (id_of(&self.world, killer), id_of(&self.world, victim));
                    self.outbox.event(MatchEvent::Kill {
                        killer: k,
                        victim: v,
                    });
                    self.broadcast(Message::Death { victim, killer });
                }
                SimEvent::Shot {
                    from,
                    x0,
                    y0,
                    x1,
                    y1,
                    victim,
                } => {
                    self.shots.push(Shot {
                        from: id_of(&self.world, from),
                        x0: quantize(x0),
                        y0: quantize(y0),
                        x1: quantize(x1),
                        y1: quantize(y1),
                        hit: victim.is_some(),
                    });
                    let fire = Message::Fire {
                        entity: from,
                        x0: tenths(x0),
                        y0: tenths(y0),
                        x1: tenths(x1),
                        y1: tenths(y1),
                        hit: victim.is_some(),
                    };
                    // Shots are seen by whoever has the shooter in view.
                    let watchers: Vec<u16> = self
                        .clients
                        .values()
                        .filter(|c| c.entity == from || c.visible.binary_search(&from).is_ok())
                        .map(|c| c.entity)
                        .collect();
                    for w in watchers {
                        self.send_to(w, fire.clone());
                    }
                    if let Some(v) = victim {
                        let hit = Message::Hit {
                            shooter: from,
                            victim: v,
                            damage: arena::world::DAMAGE,
                        };
                        self.send_to(from, hit.clone());
                        self.send_to(v, hit);
                    }
                }
                SimEvent::Pickup { entity } => self.send_to(entity, Message::Pickup { entity }),
            }
        }
    }

    /// Sends every connected player its snapshot.
    fn send_snapshots(&mut self) {
        self.snapshot_no += 1;
        let now = now_ms();
        let tick = self.world.tick as u32;
        let grid = Grid::build(
            self.world
                .players
                .iter()
                .map(|p| (p.entity, p.body.x, p.body.y)),
        );
        let current: HashMap<u16, EntityState> = self
            .world
            .players
            .iter()
            .map(|p| (p.entity, p.entity_state()))
            .collect();
        let socket = self.io.routes.socket.clone();
        for c in self.clients.values_mut() {
            let Some(me) = self.world.player(c.entity) else {
                continue;
            };
            let interest = aoi::interest(
                &grid,
                c.entity,
                me.body.x,
                me.body.y,
                &c.visible,
                self.snapshot_no,
                &self.config.interest,
            );
            let baseline = if self.config.delta {
                c.baseline()
            } else {
                None
            };
            let base: &[(u16, EntityState)] = baseline.as_ref().map_or(&[], |(_, b)| b);
            // Entities not due for a refresh keep the state the client already has.
            let entities: Vec<(u16, EntityState)> = interest
                .visible
                .iter()
                .filter_map(|&id| {
                    let due = interest.refresh.binary_search(&id).is_ok();
                    let kept = (!due)
                        .then(|| base.binary_search_by_key(&id, |e| e.0).ok())
                        .flatten()
                        .map(|i| base[i].1);
                    kept.or_else(|| current.get(&id).copied()).map(|s| (id, s))
                })
                .collect();
            let delta = SnapshotDelta::between(baseline.as_ref().map(|b| b.0), base, &entities);
            c.visible = interest.visible;
            let own = OwnState {
                x: me.body.x,
                y: me.body.y,
                vx: me.body.vx,
                vy: me.body.vy,
                alive: me.alive,
            };
            let last_processed_input = me.last_input;
            let header = c.next_header(tick, Arc::new(entities), now);
            let resend = c.resend_after_ms();
            let packet = ServerPacket {
                session: c.session,
                header,
                tick,
                last_processed_input,
                own,
                snapshot: delta,
                reliable: ReliableBlock {
                    ack_next: c.reliable_ack_next(),
                    messages: c.reliable_out.outgoing(now, resend, RELIABLE_BUDGET),
                },
            };
            let mut packet = Packet::Server(packet);
            let mut bytes = packet.encode();
            if bytes.len() > MAX_PACKET {
                // Too much at once for one datagram: leave the reliable messages for the next
                // packet (they are resent until acknowledged). A snapshot still too large is
                // not sent; the next one, against the same baseline, replaces it.
                if let Packet::Server(p) = &mut packet {
                    p.reliable.messages.clear();
                }
                bytes = packet.encode();
            }
            if bytes.len() <= MAX_PACKET {
                metrics::UDP_BYTES_OUT.inc_by(bytes.len() as u64 + 28);
                metrics::SNAPSHOTS_SENT.inc();
                let _ = socket.try_send_to(&bytes, c.addr);
            }
        }
    }

    fn expire_quiet_players(&mut self) {
        let quiet: Vec<SocketAddr> = self
            .clients
            .values()
            .filter(|c| c.last_heard.elapsed() > PLAYER_TIMEOUT)
            .map(|c| c.addr)
            .collect();
        for addr in quiet {
            tracing::info!(%addr, "player timed out");
            self.leave(addr);
        }
        let gone: Vec<u16> = self
            .awaiting
            .iter()
            .filter(|(_, since)| since.elapsed() > PLAYER_TIMEOUT)
            .map(|(e, _)| *e)
            .collect();
        for entity in gone {
            self.awaiting.remove(&entity);
            if self.clients.values().any(|c| c.entity == entity) {
                continue;
            }
            if let Some(p) = self.world.remove(entity) {
                tracing::info!(player = %p.id, "player did not come back after the takeover");
                self.outbox.event(MatchEvent::PlayerLeft { player: p.id });
                self.broadcast(Message::PlayerGone { entity });
            }
            self.balance_bots();
        }
    }

    fn checkpoint(&self, ends_at_tick: u64) {
        if let Some(tx) = &self.io.checkpoints {
            let cp = Checkpoint {
                match_id: self.config.match_id.clone(),
                region: self.config.region.clone(),
                bucket: self.config.bucket,
                seats: self.config.seats,
                bots: self.config.bots,
                epoch: self.io.epoch,
                events_through: self.outbox.events,
                ends_at_tick,
                server: self.config.server.clone(),
                saved_ms: now_ms(),
                world: self.world.clone(),
            };
            let _ = tx.send(Some(Arc::new(cp)));
        }
    }
}

/// Runs one match to its end (or until shutdown, which ends it early with results).
pub async fn run_room(
    config: RoomConfig,
    start: RoomStart,
    tx: mpsc::Sender<RoomOutput>,
    io: RoomIo,
    shutdown: Shutdown,
) {
    let world_config = WorldConfig {
        tick_hz: config.tick_hz,
        rewind_cap_ms: config.rewind_cap_ms,
    };
    let (world, fresh) = match start {
        RoomStart::Fresh => (World::new(config.seed, world_config), true),
        RoomStart::Restored(w) => (w.restored(), false),
    };
    let mut room = Room {
        // Bot ids stay unique across a takeover: continue after the highest one.
        bot_serial: world
            .players
            .iter()
            .filter_map(|p| p.id.rsplit_once("-bot").and_then(|(_, n)| n.parse().ok()))
            .max()
            .unwrap_or(0),
        world,
        outbox: Outbox {
            tx,
            waiting: VecDeque::new(),
            events: 0,
        },
        io,
        clients: HashMap::new(),
        snapshot_no: 0,
        shots: Vec::new(),
        awaiting: HashMap::new(),
        config,
    };
    let restored_humans: Vec<u16> = room
        .world
        .players
        .iter()
        .filter(|p| !p.bot)
        .map(|p| p.entity)
        .collect();
    for e in restored_humans {
        room.awaiting.insert(e, Instant::now());
    }
    if fresh {
        // Seat the bots before the first keyframe, so version 0 shows the whole room.
        while room.world.players.len() < room.config.bots {
            room.bot_serial += 1;
            let n = room.bot_serial;
            room.world.add_bot(
                format!("{}-bot{n}", room.config.match_id),
                format!("Bot {n}"),
            );
        }
    }
    let mut view = room.world.spectator_state(&room.config.region);
    let mut start = view.clone();
    start.broadcast_delay_ms = room.config.broadcast_delay.as_millis() as u64;
    start.tick_hz = u64::from(room.config.tick_hz);
    room.outbox.push(RoomOutput::Start(Box::new(start)));
    if fresh {
        room.outbox.event(MatchEvent::MatchStarted {});
        let joined: Vec<MatchEvent> = room
            .world
            .players
            .iter()
            .map(|p| MatchEvent::PlayerJoined {
                player: p.id.clone(),
                name: p.name.clone(),
                bot: p.bot,
            })
            .collect();
        for e in joined {
            room.outbox.event(e);
        }
    }
    let config = room.config.clone();

    let period = Duration::from_secs_f64(1.0 / config.tick_hz as f64);
    let ticks_per_frame = u64::from((config.tick_hz / config.spectator_hz.max(1)).max(1));
    let ticks_per_snapshot = u64::from((config.tick_hz / config.snapshot_hz.max(1)).max(1));
    let total_ticks = (config.duration.as_secs_f64() * config.tick_hz as f64) as u64;
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut last_tick_at = Instant::now();
    while room.world.tick < total_ticks {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        let now = Instant::now();
        // A gap of more than one and a half periods means ticks were skipped: count them.
        let late = now.duration_since(last_tick_at);
        if late > period + period / 2 {
            metrics::TICK_OVERRUNS.inc_by((late.as_secs_f64() / period.as_secs_f64()) as u64 - 1);
        }
        last_tick_at = now;
        room.outbox.flush();
        if room.outbox.full() {
            metrics::STALLED_TICKS.inc();
            continue;
        }
        let wall = now_ms();
        for _ in 0..COMMANDS_PER_TICK {
            match room.io.commands.try_recv() {
                Ok(cmd) => room.handle(cmd, wall),
                Err(_) => break,
            }
        }
        room.apply_inputs();
        let events = room.world.step();
        room.on_sim_events(events);
        if room.world.tick.is_multiple_of(ticks_per_snapshot) {
            room.send_snapshots();
        }
        if room.world.tick.is_multiple_of(ticks_per_frame) {
            let next = room.world.spectator_state(&config.region);
            let mut delta = view.diff(&next);
            delta.shots = std::mem::take(&mut room.shots);
            room.outbox.push(RoomOutput::Delta(delta));
            view = next;
        }
        if room.world.tick.is_multiple_of(u64::from(config.tick_hz)) {
            room.expire_quiet_players();
            room.checkpoint(total_ticks);
        }
        metrics::TICKS.inc();
        metrics::PLAYER_TICKS.inc_by(room.world.players.len() as u64);
        let busy = now.elapsed().as_secs_f64();
        metrics::TICK_SECONDS.observe(busy);
        metrics::TICK_BUSY_SECONDS.inc_by(busy);
    }
    end_match(&mut room).await;
    // Ended, cleanly: nothing left to take over.
    if let Some(tx) = &room.io.checkpoints {
        let _ = tx.send(None);
    }
}

async fn end_match(room: &mut Room) {
    room.broadcast(Message::MatchEnded);
    room.send_snapshots();
    let mut results: Vec<PlayerResult> = room
        .world
        .tallies()
        .into_iter()
        .map(|t| PlayerResult {
            player: t.id,
            name: t.name,
            score: t.score,
            kills: t.kills,
            deaths: t.deaths,
        })
        .collect();
    results.sort_by(|a, b| b.score.cmp(&a.score).then_with(|| a.player.cmp(&b.player)));
    room.outbox.event(MatchEvent::MatchEnded { results });
    room.outbox.push(RoomOutput::Delta(Delta {
        tick: room.world.tick,
        status: Some(MatchStatus::Ended),
        ..Delta::default()
    }));
    let addrs: Vec<SocketAddr> = room.clients.keys().copied().collect();
    for addr in addrs {
        room.drop_session(addr);
    }
    // The match is over: what is left may now wait on the publisher.
    while let Some(out) = room.outbox.waiting.pop_front() {
        if room.outbox.tx.send(out).await.is_err() {
            break;
        }
    }
}
