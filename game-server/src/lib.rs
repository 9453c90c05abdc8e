//! The game-server role: authoritative rooms with a fixed-rate tick loop, played by bots and
//! by real players over UDP, each publishing its match's versioned spectator feed to the match
//! log; a matchmaker that places players into rooms (opening rooms as needed); checkpoints and
//! takeover of crashed rooms.
//!
//! Rooms are tokio tasks on the multi-threaded runtime, whose worker pool is sized to the
//! cores: rooms spread over the cores without one thread per room.

pub mod checkpoint;
mod metrics;
pub use metrics::register as register_metrics;
pub use metrics::thread_cpu;
pub mod port;
pub mod publisher;
pub mod room;
pub mod session;

/// Counts this thread's heap allocations while switched on (tests of the steady state of the
/// tick loop).
#[cfg(test)]
pub(crate) mod alloc_count {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static ON: Cell<bool> = const { Cell::new(false) };
        static COUNT: Cell<u64> = const { Cell::new(0) };
    }

    pub struct Counting;

    // SAFETY: every call is passed to the system allocator unchanged; the counters are
    // const-initialised thread-locals, which never allocate.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            if ON.with(Cell::get) {
                COUNT.with(|c| c.set(c.get() + 1));
            }
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            if ON.with(Cell::get) {
                COUNT.with(|c| c.set(c.get() + 1));
            }
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    /// Allocations (and reallocations) `f` makes on this thread.
    pub fn count<T>(f: impl FnOnce() -> T) -> (T, u64) {
        let before = COUNT.with(Cell::get);
        ON.with(|o| o.set(true));
        let out = f();
        ON.with(|o| o.set(false));
        (out, COUNT.with(Cell::get) - before)
    }
}

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arena::aoi::InterestConfig;
use async_trait::async_trait;
use backends::{CheckpointStore, MatchLog, RoomInfo, RoomRegistry};
use httpkit::{ApiError, Assignment, Matchmaking, Shutdown};
use protocol::{Claims, ConnectClaims, TokenSigner};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio_util::task::TaskTracker;

use crate::checkpoint::{catch_up, write_checkpoints, Checkpoint};
use crate::port::PlayerPort;
use crate::publisher::Publisher;
use crate::room::{run_room, RoomConfig, RoomIo, RoomStart};

#[derive(Debug, Clone)]
pub struct GameServerConfig {
    /// Showcase matches kept running at all times (a finished one is replaced by a new one).
    pub matches: usize,
    pub regions: Vec<String>,
    pub bots_per_match: usize,
    /// Real players a room takes at most.
    pub seats: usize,
    pub tick_hz: u32,
    pub spectator_hz: u32,
    /// Snapshots per second sent to each player.
    pub snapshot_hz: u32,
    pub keyframe_every: Duration,
    pub match_duration: Duration,
    /// Pause between a showcase match's end and the next one in its slot.
    pub intermission: Duration,
    /// Seed of the first match; `None` draws one.
    pub seed: Option<u64>,
    pub rewind_cap_ms: u32,
    pub interest: InterestConfig,
    /// Delta-compress snapshots against the player's last acknowledged one (off: every
    /// snapshot is full, for measuring what delta compression saves).
    pub delta: bool,
    /// Hand each tick's datagrams to the kernel in batches (`sendmmsg`); off, one `sendto`
    /// each (kept to measure the difference).
    pub batch_sends: bool,
    /// Skill points per matchmaking bucket.
    pub skill_bucket: u32,
    pub connect_token_ttl: Duration,
    /// The player address put in connect tokens; the bound UDP address when `None`.
    pub advertise: Option<String>,
    /// Take over crashed rooms from checkpoints (needs a shared checkpoint store).
    pub checkpoints: bool,
    /// How far behind the live game viewers watch this server's matches (0: live).
    pub broadcast_delay: Duration,
    /// Act on what players send as it arrives (the port polled every
    /// [`port::INPUT_POLL`]): a shot is resolved and told to the others then, in a datagram of
    /// its own, rather than with the next tick's packet. Off, commands wait for the tick:
    /// fewer datagrams and less CPU, up to a tick more latency on every shot.
    pub act_on_arrival: bool,
}

impl Default for GameServerConfig {
    fn default() -> Self {
        GameServerConfig {
            matches: 2,
            regions: vec!["eu".into(), "us".into(), "asia".into()],
            bots_per_match: 8,
            seats: 16,
            tick_hz: 30,
            spectator_hz: 10,
            snapshot_hz: 30,
            keyframe_every: Duration::from_secs(5),
            match_duration: Duration::from_secs(300),
            intermission: Duration::from_secs(5),
            seed: None,
            rewind_cap_ms: 200,
            interest: InterestConfig::default(),
            delta: true,
            batch_sends: true,
            act_on_arrival: true,
            skill_bucket: 500,
            connect_token_ttl: Duration::from_secs(600),
            advertise: None,
            checkpoints: true,
            broadcast_delay: Duration::ZERO,
        }
    }
}

/// The stores a game server talks to.
pub struct GameServerStores {
    pub log: Arc<dyn MatchLog>,
    pub registry: Arc<dyn RoomRegistry>,
    pub checkpoints: Arc<dyn CheckpointStore>,
}

pub struct GameServer {
    config: GameServerConfig,
    log: Arc<dyn MatchLog>,
    registry: Arc<dyn RoomRegistry>,
    checkpoints: Arc<dyn CheckpointStore>,
    port: Arc<PlayerPort>,
    connect_signer: TokenSigner,
    shutdown: Shutdown,
    address: String,
    /// This process's name on checkpoint leases.
    owner: String,
    rooms: TaskTracker,
    /// Seats promised by the matchmaker, per match: (player, when). A promise counts until
    /// the player is seated in a local room, or for 10 s.
    reserved: Mutex<HashMap<String, Vec<(String, Instant)>>>,
    next_slot_seed: Mutex<u64>,
}

/// The signer of connect tokens, derived from the REST signer so every role that shares the
/// secret agrees on it.
pub fn connect_signer(rest: &TokenSigner) -> TokenSigner {
    rest.derive("connect")
}

impl GameServer {
    pub fn new(
        config: GameServerConfig,
        udp: UdpSocket,
        stores: GameServerStores,
        rest_signer: &TokenSigner,
        shutdown: Shutdown,
    ) -> std::io::Result<Arc<GameServer>> {
        let local = udp.local_addr()?;
        let address = config
            .advertise
            .clone()
            .unwrap_or_else(|| local.to_string());
        let connect = connect_signer(rest_signer);
        let port = PlayerPort::new(udp, connect.clone())?;
        port.set_batch_sends(config.batch_sends);
        let seed = config.seed.unwrap_or_else(rand::random);
        Ok(Arc::new(GameServer {
            owner: format!("{address}/{:08x}", rand::random::<u32>()),
            config,
            log: stores.log,
            registry: stores.registry,
            checkpoints: stores.checkpoints,
            port,
            connect_signer: connect,
            shutdown,
            address,
            rooms: TaskTracker::new(),
            reserved: Mutex::default(),
            next_slot_seed: Mutex::new(seed),
        }))
    }

    pub fn udp_addr(&self) -> SocketAddr {
        self.port.local_addr().expect("bound socket")
    }

    /// Runs until shutdown, then lets every room end its match (with results).
    pub async fn run(self: Arc<Self>) -> std::io::Result<()> {
        let poll = if self.config.act_on_arrival {
            port::INPUT_POLL
        } else {
            port::PORT_REST_MAX
        };
        let udp = tokio::spawn(port::serve_udp(
            self.port.clone(),
            poll,
            self.shutdown.clone(),
        ));
        let mut slots = Vec::new();
        for slot in 0..self.config.matches {
            let region = self.config.regions[slot % self.config.regions.len().max(1)].clone();
            slots.push(tokio::spawn(self.clone().run_slot(region)));
        }
        let housekeeping = tokio::spawn(self.clone().housekeeping());
        // Matchmade rooms come and go: the server runs until shutdown, whatever its slots do.
        self.shutdown.cancelled().await;
        for s in slots {
            let _ = s.await;
        }
        self.rooms.close();
        self.rooms.wait().await;
        housekeeping.abort();
        udp.abort();
        Ok(())
    }

    fn next_seed(&self) -> u64 {
        let mut s = self.next_slot_seed.lock().unwrap();
        *s = s.wrapping_add(1_000_003);
        *s
    }

    fn room_config(&self, match_id: String, region: String, bucket: Option<u32>) -> RoomConfig {
        RoomConfig {
            match_id,
            region,
            bucket,
            seed: self.next_seed(),
            bots: self.config.bots_per_match,
            seats: self.config.seats,
            tick_hz: self.config.tick_hz,
            spectator_hz: self.config.spectator_hz.clamp(1, self.config.tick_hz),
            snapshot_hz: self.config.snapshot_hz.clamp(1, self.config.tick_hz),
            duration: self.config.match_duration,
            interest: self.config.interest,
            delta: self.config.delta,
            rewind_cap_ms: self.config.rewind_cap_ms,
            server: self.address.clone(),
            broadcast_delay: self.config.broadcast_delay,
            act_on_arrival: self.config.act_on_arrival,
        }
    }

    /// Starts a room; the handle finishes when its match has ended and its feed is flushed.
    fn spawn_room(
        self: &Arc<Self>,
        config: RoomConfig,
        start: RoomStart,
        epoch: u64,
    ) -> tokio::task::JoinHandle<()> {
        let (cmd_tx, cmd_rx) = mpsc::channel(1024);
        let info = config.info();
        self.port.add_room(info.clone(), cmd_tx);
        let keyframe_every = (self.config.keyframe_every.as_secs_f64()
            * f64::from(config.spectator_hz))
        .round()
        .max(1.0) as u64;
        let (tx, rx) = mpsc::channel(1024);
        let publisher = Publisher::new(
            self.log.clone(),
            config.match_id.clone(),
            config.region.clone(),
            epoch,
            keyframe_every,
        );
        let publishing = tokio::spawn(publisher.run(rx, self.shutdown.clone()));
        let checkpoints = self.config.checkpoints.then(|| {
            let (ctx, crx) = watch::channel(None);
            tokio::spawn(write_checkpoints(
                config.match_id.clone(),
                self.owner.clone(),
                self.checkpoints.clone(),
                crx,
            ));
            ctx
        });
        let me = self.clone();
        self.rooms.spawn(async move {
            let match_id = config.match_id.clone();
            let region = config.region.clone();
            tracing::info!(%match_id, %region, epoch, "match starting");
            metrics::LIVE_MATCHES.inc();
            let io = RoomIo {
                port: me.port.clone(),
                commands: cmd_rx,
                checkpoints,
                epoch,
            };
            run_room(config, start, tx, io, me.shutdown.clone()).await;
            me.port.remove_room(&match_id);
            if info.bucket.is_some() {
                let _ = me.registry.remove(&region, &match_id).await;
            }
            metrics::LIVE_MATCHES.dec();
            let _ = publishing.await;
            tracing::info!(%match_id, "match ended");
        })
    }

    /// One showcase slot: plays bot matches back to back until shutdown.
    async fn run_slot(self: Arc<Self>, region: String) {
        while !self.shutdown.is_cancelled() {
            let match_id = format!("{region}-{:08x}", rand::random::<u32>());
            let config = self.room_config(match_id, region.clone(), None);
            let room = self.spawn_room(config, RoomStart::Fresh, protocol::now_ms());
            let _ = room.await;
            tokio::select! {
                _ = tokio::time::sleep(self.config.intermission) => {}
                _ = self.shutdown.cancelled() => {}
            }
        }
    }

    /// Every second: announce matchmaking rooms to the registry, and take over orphaned rooms.
    async fn housekeeping(self: Arc<Self>) {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        // When this server last failed to reach the room store. Every owner fails to renew its
        // leases during the same outage (a Redis failover: a promoted replica may have let them
        // lapse), so orphans are claimed only once this server has reached the store for a
        // whole lease and a second since: time enough for every live owner to renew, so only
        // the matches of servers that are really gone are taken over.
        let mut store_failed: Option<std::time::Instant> = None;
        loop {
            every.tick().await;
            if self.shutdown.is_cancelled() {
                return;
            }
            let open: Vec<RoomInfo> = self
                .port
                .rooms()
                .into_iter()
                .filter(|r| r.bucket.is_some())
                .collect();
            if let Err(e) = self.registry.heartbeat(&open, Duration::from_secs(3)).await {
                tracing::warn!(error = %e, "room registry heartbeat failed");
                store_failed = Some(std::time::Instant::now());
            }
            let settled = store_failed
                .is_none_or(|at| at.elapsed() >= checkpoint::LEASE + Duration::from_secs(1));
            if self.config.checkpoints && settled && !self.take_over_orphans().await {
                store_failed = Some(std::time::Instant::now());
            }
        }
    }

    /// Claims and resumes the rooms whose owners' leases lapsed. Returns whether the room
    /// store answered.
    async fn take_over_orphans(self: &Arc<Self>) -> bool {
        let orphans = match self
            .checkpoints
            .claim_orphans(&self.owner, checkpoint::LEASE)
            .await
        {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "checking for orphaned rooms failed");
                return false;
            }
        };
        for (match_id, body) in orphans {
            let mut cp: Checkpoint = match serde_json::from_slice(&body) {
                Ok(cp) => cp,
                Err(e) => {
                    tracing::error!(%match_id, error = %e, "unreadable checkpoint dropped");
                    let _ = self.checkpoints.delete(&match_id).await;
                    continue;
                }
            };
            match catch_up(&mut cp, &*self.log).await {
                Ok(None) => {
                    tracing::info!(%match_id, "orphaned match had already ended");
                    let _ = self.checkpoints.delete(&match_id).await;
                    continue;
                }
                Ok(Some(replayed)) => {
                    tracing::info!(%match_id, replayed, from_epoch = cp.epoch, "taking over a crashed room");
                }
                Err(e) => {
                    // Not now: the lease lapses again and a later scan retries.
                    tracing::warn!(%match_id, error = %e, "cannot read the match log to take over");
                    continue;
                }
            }
            let epoch = protocol::now_ms().max(cp.epoch + 1);
            let mut config = self.room_config(cp.match_id.clone(), cp.region.clone(), cp.bucket);
            config.seats = cp.seats;
            config.bots = cp.bots;
            config.duration =
                Duration::from_secs_f64(cp.ends_at_tick as f64 / f64::from(config.tick_hz));
            self.spawn_room(config, RoomStart::Restored(Box::new(cp.world)), epoch);
        }
        true
    }

    fn reserved(&self, match_id: &str) -> usize {
        let mut r = self.reserved.lock().unwrap();
        let now = Instant::now();
        r.retain(|m, v| {
            v.retain(|(player, t)| {
                now.duration_since(*t) < Duration::from_secs(10) && !self.port.seated(m, player)
            });
            !v.is_empty()
        });
        r.get(match_id).map_or(0, Vec::len)
    }

    /// Places a player: the fullest room of their region and skill bucket with a free seat,
    /// or a new room here.
    pub async fn matchmake(
        self: &Arc<Self>,
        player: &Claims,
        region: &str,
        skill: u32,
    ) -> Result<Assignment, ApiError> {
        if !self.config.regions.iter().any(|r| r == region) {
            return Err(ApiError::invalid(
                "region",
                format!("unknown region; one of {}", self.config.regions.join(", ")),
            ));
        }
        let bucket = skill / self.config.skill_bucket.max(1);
        let rooms = self
            .registry
            .rooms(region)
            .await
            .map_err(|e| ApiError::unavailable(format!("room registry: {e}")))?;
        let pick = rooms
            .into_iter()
            .filter(|r| r.bucket == Some(bucket))
            .map(|r| {
                let humans = self.port.humans(&r.match_id).unwrap_or(r.humans);
                let taken = humans + self.reserved(&r.match_id);
                (r, taken)
            })
            .filter(|(r, taken)| *taken < r.seats)
            .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.match_id.cmp(&a.0.match_id)))
            .map(|(r, _)| r);
        let room = match pick {
            Some(r) => r,
            None => {
                if self.shutdown.is_cancelled() {
                    return Err(ApiError::unavailable("game server is shutting down"));
                }
                let match_id = format!("{region}-{:08x}", rand::random::<u32>());
                let config = self.room_config(match_id, region.to_string(), Some(bucket));
                let info = config.info();
                self.spawn_room(config, RoomStart::Fresh, protocol::now_ms());
                let _ = self
                    .registry
                    .heartbeat(std::slice::from_ref(&info), Duration::from_secs(3))
                    .await;
                info
            }
        };
        self.reserved
            .lock()
            .unwrap()
            .entry(room.match_id.clone())
            .or_default()
            .push((player.sub.clone(), Instant::now()));
        let expires_at = protocol::now_secs() + self.config.connect_token_ttl.as_secs();
        let connect_token = self.connect_signer.sign(&ConnectClaims {
            sub: player.sub.clone(),
            name: player.name.clone(),
            match_id: room.match_id.clone(),
            server: room.server.clone(),
            exp: expires_at,
            nonce: rand::random(),
        });
        Ok(Assignment {
            server: room.server,
            match_id: room.match_id,
            connect_token,
            expires_at,
        })
    }
}

/// The matchmaker of an in-process game server.
pub struct LocalMatchmaker(pub Arc<GameServer>);

#[async_trait]
impl Matchmaking for LocalMatchmaker {
    async fn join(
        &self,
        _bearer: &str,
        player: &Claims,
        region: &str,
        skill: u32,
    ) -> Result<Assignment, ApiError> {
        self.0.matchmake(player, region, skill).await
    }
}
