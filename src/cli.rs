//! The command line, by concern. Each role takes the groups that apply to it, so
//! `grandstand <role> --help` shows only its own options; `grandstand` with no role (or `all`)
//! takes every group. Defaults are the libraries' own (`GatewayConfig::default()` and so on),
//! declared once there and shown here.
//!
//! Long because it is the whole command line: one small group per concern, each with its help
//! text, and the conversions into the libraries' configs next to the flags they read.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use aggregator::{AggregatorConfig, BoardRetention};
use backends::NatsLogConfig;
use clap::{Args, Parser, Subcommand};
use fanout_gateway::GatewayConfig;
use game_server::GameServerConfig;
use httpkit::ConnectionLimits;

#[derive(Parser, Debug)]
#[command(
    name = "grandstand",
    version,
    about = "Live multiplayer matches and leaderboards, in real time",
    long_about = "Live multiplayer matches and leaderboards, in real time.\n\n\
        With no role, every role runs in this process on the embedded backends (in-process \
        match log, in-memory leaderboards, SQLite history), unless NATS_URL, REDIS_URL or \
        DATABASE_URL point at real ones. In production each role runs in its own process.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub role: Option<Role>,
    #[command(flatten)]
    pub all: AllArgs,
}

// Parsed once at start and matched once: the size of the largest role's flags costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Role {
    /// Every role in one process (the default).
    All(AllArgs),
    /// Rooms and the player port.
    GameServer(GameServerArgs),
    /// Viewer streams (WebSocket and SSE).
    Gateway(GatewayArgs),
    /// Leaderboards and history from the match events.
    Aggregator(AggregatorArgs),
    /// The public HTTP API: cold loads, leaderboards, players, guest tokens, matchmaking.
    #[command(visible_alias = "api")]
    SnapshotApi(ApiArgs),
    /// The configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Partner keys: broadcasters' and data partners' credentials, each with its own delay,
    /// stream cap and matches.
    #[command(subcommand)]
    Partners(PartnersCommand),
}

#[derive(Subcommand, Debug)]
pub enum PartnersCommand {
    /// Adds a partner and prints its new key (the last word of the output; shown only once).
    Add {
        /// Shown in logs and metrics: letters, digits, `-`, `_`, `.`.
        name: String,
        /// Its streams' broadcast delay instead of the match's own; 0 is live.
        #[arg(long)]
        delay_ms: Option<u64>,
        /// Concurrent streams at most (default: the per-user cap).
        #[arg(long)]
        max_streams: Option<u32>,
        /// The matches the key opens (`*` and `?` wildcards; default all).
        #[arg(long)]
        matches: Option<String>,
        #[command(flatten)]
        store: HistoryArgs,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Lists the partners (never their keys).
    List {
        #[command(flatten)]
        store: HistoryArgs,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Revokes a partner's key; running roles refuse it within a few seconds.
    Revoke {
        name: String,
        #[command(flatten)]
        store: HistoryArgs,
        #[command(flatten)]
        tls: TlsArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Prints a role's effective configuration (every role when none is named) as a config
    /// file, each value with where it came from, secrets masked.
    Print {
        /// game-server, gateway, aggregator or snapshot-api.
        role: Option<String>,
        /// The config file to read (as `--config` for the role).
        #[arg(long, env = "GRANDSTAND_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Args, Debug, Clone)]
pub struct AllArgs {
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub history: HistoryArgs,
    #[command(flatten)]
    pub secret: SecretArgs,
    #[command(flatten)]
    pub game: GameArgs,
    #[command(flatten)]
    pub viewers: ViewerArgs,
    #[command(flatten)]
    pub boards: BoardArgs,
}

#[derive(Args, Debug, Clone)]
pub struct GameServerArgs {
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub secret: SecretArgs,
    #[command(flatten)]
    pub game: GameArgs,
}

#[derive(Args, Debug, Clone)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub partners: PartnerStoreArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub secret: SecretArgs,
    #[command(flatten)]
    pub viewers: ViewerArgs,
}

#[derive(Args, Debug, Clone)]
pub struct AggregatorArgs {
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub history: HistoryArgs,
    #[command(flatten)]
    pub boards: BoardArgs,
    /// Rebuild every leaderboard from history and the match log into fresh keys, swap them in
    /// atomically, and exit (after a Redis loss). Aggregators may keep running.
    #[arg(long)]
    pub rebuild: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub history: HistoryArgs,
    #[command(flatten)]
    pub secret: SecretArgs,
    /// The game server (HTTP) whose matchmaker serves `POST /v1/matchmaking/join`.
    #[arg(long, env = "GRANDSTAND_MATCHMAKER_URL")]
    pub matchmaker_url: Option<String>,
}

/// How a role writes its logs.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Logs and configuration")]
pub struct LogArgs {
    /// `text` for people, `json` (one object per line, with span fields) for log pipelines.
    #[arg(long, env = "GRANDSTAND_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// A TOML file with any of these options, keys named like the long flags in snake_case
    /// (`http_addr = "0.0.0.0:8080"`); flags and env vars override it.
    #[arg(long, env = "GRANDSTAND_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `config print` runs no role and logs as people read.
static PRINTING: LogArgs = LogArgs {
    log_format: LogFormat::Text,
    config: None,
};

impl Cli {
    /// The log settings of whichever role runs.
    pub fn log(&self) -> &LogArgs {
        match &self.role {
            None => &self.all.log,
            Some(Role::Config(_)) | Some(Role::Partners(_)) => &PRINTING,
            Some(Role::All(a)) => &a.log,
            Some(Role::GameServer(a)) => &a.log,
            Some(Role::Gateway(a)) => &a.log,
            Some(Role::Aggregator(a)) => &a.log,
            Some(Role::SnapshotApi(a)) => &a.log,
        }
    }
}

/// The HTTP listener every role has, and the limits on its connections.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "HTTP")]
pub struct HttpArgs {
    /// HTTP address: API, viewer streams, dashboard, /healthz and /metrics. Port 0 picks one.
    #[arg(long, env = "GRANDSTAND_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// Open HTTP connections at most; beyond, new ones wait in the kernel's backlog.
    #[arg(long, env = "GRANDSTAND_MAX_CONNECTIONS", default_value_t = ConnectionLimits::default().max_connections)]
    pub max_connections: usize,
    /// Seconds a client has to send a request head (slowloris protection).
    #[arg(long, env = "GRANDSTAND_HEADER_TIMEOUT_SECS", default_value_t = ConnectionLimits::default().header_read_timeout.as_secs())]
    pub header_timeout_secs: u64,
    /// Kernel send buffer per connection in bytes (bounds what a slow viewer costs in kernel
    /// memory); the kernel's autotuning when unset.
    #[arg(long, env = "GRANDSTAND_SEND_BUFFER")]
    pub send_buffer: Option<usize>,
    /// Origins whose pages may read the public API and open the streams (CORS, and the
    /// WebSocket `Origin` check), comma separated, `*` for any; unset: same-origin pages and
    /// non-browser clients only.
    #[arg(long, env = "GRANDSTAND_CORS_ORIGINS", value_delimiter = ',', value_parser = parse_origin)]
    pub cors_origins: Vec<String>,
    /// Serve `/metrics` and `/readyz` on this address instead of the public one (which keeps
    /// `/healthz`): scrapers and orchestrators reach them, the internet does not. Port 0 picks one.
    #[arg(long, env = "GRANDSTAND_INTERNAL_ADDR")]
    pub internal_addr: Option<SocketAddr>,
    /// Reverse proxies and load balancers (CIDRs or addresses, comma separated) whose
    /// `Forwarded`/`X-Forwarded-For` headers name the client: per-address limits then count
    /// the client (the rightmost hop not itself trusted) rather than the proxy. Headers from
    /// any other peer are ignored.
    #[arg(long, env = "GRANDSTAND_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_proxy)]
    pub trusted_proxies: Vec<String>,
    /// On SIGTERM: readiness turns 503 at once, then a gateway closes its viewers a few at a
    /// time over this many seconds (each told to come back elsewhere), so its audience
    /// reconnects spread out rather than in one second; then the role stops. A second
    /// signal stops at once.
    #[arg(long, env = "GRANDSTAND_DRAIN_SECS", default_value_t = 10)]
    pub drain_secs: u64,
}

fn parse_proxy(s: &str) -> Result<String, String> {
    httpkit::TrustedProxies::parse(&[s.to_string()]).map(|_| s.trim().to_string())
}

fn parse_origin(s: &str) -> Result<String, String> {
    httpkit::CorsOrigins::parse(&[s.to_string()]).map(|_| s.trim().to_string())
}

impl HttpArgs {
    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.drain_secs)
    }

    pub fn cors(&self) -> httpkit::CorsOrigins {
        httpkit::CorsOrigins::parse(&self.cors_origins).expect("checked when parsed")
    }
}

impl HttpArgs {
    /// The connection limits; `stall` is how long a stream may leave frames unread (the
    /// connection's write backstop comes 15 s after it).
    pub fn limits(&self, stall: Duration) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: self.max_connections,
            header_read_timeout: Duration::from_secs(self.header_timeout_secs.max(1)),
            write_stall: stall + Duration::from_secs(15),
            send_buffer: self.send_buffer,
            trusted_proxies: httpkit::TrustedProxies::parse(&self.trusted_proxies)
                .expect("checked when parsed"),
            ..Default::default()
        }
    }
}

/// The match log.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Match log (NATS JetStream)")]
pub struct NatsArgs {
    /// NATS server(s) with JetStream for the match log, comma separated; the embedded
    /// in-process log when unset (only with every role in one process).
    #[arg(long, env = "NATS_URL")]
    pub nats_url: Option<String>,
    /// JetStream stream holding every match's log.
    #[arg(long, env = "NATS_STREAM", default_value_t = NatsLogConfig::new("").stream)]
    pub nats_stream: String,
    /// Copies of the stream kept by a NATS cluster (1 on a single server; 3 on a 3-node
    /// cluster, so losing one node loses nothing).
    #[arg(long, env = "NATS_REPLICAS", default_value_t = NatsLogConfig::new("").replicas as u8, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub nats_replicas: u8,
    /// First token of match log subjects (`<root>.<match>.delta|event|keyframe`).
    #[arg(long, env = "NATS_SUBJECT_ROOT", default_value_t = NatsLogConfig::new("").subject_root)]
    pub nats_subject_root: String,
    /// How long the match log keeps messages, in seconds.
    #[arg(long, env = "NATS_MAX_AGE_SECS", default_value_t = NatsLogConfig::new("").max_age.as_secs())]
    pub nats_max_age_secs: u64,
    /// Bytes the match log stream may hold (and reserves on the NATS server).
    #[arg(long, env = "NATS_MAX_BYTES", default_value_t = NatsLogConfig::new("").max_bytes)]
    pub nats_max_bytes: i64,
    /// Seconds between the client's pings to its NATS server: a server gone without closing
    /// the connection (a lost host) is noticed after two unanswered pings.
    #[arg(long, env = "NATS_PING_SECS", default_value_t = NatsLogConfig::new("").ping_interval.as_secs())]
    pub nats_ping_secs: u64,
    /// Milliseconds a NATS request (JetStream calls, publish acknowledgements) may take before
    /// it fails and is retried.
    #[arg(long, env = "NATS_TIMEOUT_MS", default_value_t = NatsLogConfig::new("").request_timeout.as_millis() as u64)]
    pub nats_timeout_ms: u64,
}

impl NatsArgs {
    pub fn config(&self, url: &str) -> NatsLogConfig {
        NatsLogConfig {
            stream: self.nats_stream.clone(),
            subject_root: self.nats_subject_root.clone(),
            max_age: Duration::from_secs(self.nats_max_age_secs),
            max_bytes: self.nats_max_bytes,
            replicas: usize::from(self.nats_replicas),
            ping_interval: Duration::from_secs(self.nats_ping_secs.max(1)),
            request_timeout: Duration::from_millis(self.nats_timeout_ms.max(100)),
            ..NatsLogConfig::new(url)
        }
    }
}

/// Redis: leaderboards, checkpoints, the room registry, gateway membership and fleet-wide caps.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Redis")]
pub struct RedisArgs {
    /// Redis for leaderboards, room checkpoints and registry, gateway membership and
    /// fleet-wide stream caps; in-memory stand-ins when unset (only with every role in one
    /// process).
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key Grandstand writes.
    #[arg(long, env = "REDIS_PREFIX", default_value = backends::DEFAULT_REDIS_PREFIX)]
    pub redis_prefix: String,
}

/// The match history store.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "History")]
pub struct HistoryArgs {
    /// PostgreSQL for match history; a SQLite file under --data-dir when unset.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Where the embedded defaults keep files (the SQLite history).
    #[arg(long, env = "GRANDSTAND_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
}

/// TLS towards the backends.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "TLS to the backends")]
pub struct TlsArgs {
    /// A PEM file of CA certificates to trust, besides the system's, for PostgreSQL
    /// (`sslmode=verify-ca|verify-full`), Redis (`rediss://`) and NATS (`tls://`).
    #[arg(long, env = "GRANDSTAND_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
}

impl TlsArgs {
    /// Applies the settings to every backend connection this process opens.
    pub fn apply(&self) -> anyhow::Result<()> {
        backends::tls::install_crypto();
        if let Some(path) = &self.tls_ca_file {
            backends::tls::use_private_ca(path)
                .map_err(|e| anyhow::anyhow!("--tls-ca-file: {e}"))?;
        }
        Ok(())
    }
}

/// Where a gateway reads partner keys.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Partner keys")]
pub struct PartnerStoreArgs {
    /// The history store's PostgreSQL, where partner keys live (`grandstand partners`);
    /// without it this gateway accepts no partner keys.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
}

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Tokens")]
pub struct SecretArgs {
    /// Secret signing bearer tokens, at least 16 characters. Required when roles run in
    /// separate processes (gateways, the API and game servers share it); `all` makes one up
    /// per process when unset (tokens then die with the process).
    #[arg(long, env = "GRANDSTAND_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,
    /// HS256 secrets of JWTs your own backend mints, accepted wherever a token is (`sub` is
    /// the player, `exp` required); comma separated, several at once while one rotates.
    #[arg(
        long,
        env = "GRANDSTAND_JWT_SECRETS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub jwt_secrets: Vec<String>,
    /// A JWKS file with the RS256/ES256 public keys of JWTs your backend mints (re-read every
    /// minute: rotate keys by replacing the file).
    #[arg(long, env = "GRANDSTAND_JWT_JWKS_FILE")]
    pub jwt_jwks_file: Option<PathBuf>,
    /// A JWKS URL (your identity provider's `jwks_uri`, http or https) with the RS256/ES256
    /// public keys of JWTs your backend mints; re-read every minute, and early (at most every
    /// 10 s) when a token names a key id not seen yet. Trusts --tls-ca-file besides the
    /// system's roots.
    #[arg(long, env = "GRANDSTAND_JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,
    /// The `iss` JWTs must carry, when set.
    #[arg(long, env = "GRANDSTAND_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// The `aud` JWTs must carry, when set.
    #[arg(long, env = "GRANDSTAND_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
}

impl SecretArgs {
    pub fn jwt(&self) -> httpkit::JwtConfig {
        httpkit::JwtConfig {
            secrets: self.jwt_secrets.clone(),
            jwks_file: self.jwt_jwks_file.clone(),
            jwks_url: self.jwt_jwks_url.clone(),
            ca_pem: backends::tls::private_ca_pem(),
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
        }
    }
}

/// Rooms, matches and the player port.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Game server")]
pub struct GameArgs {
    /// UDP address players connect to. Port 0 picks one.
    #[arg(long, env = "GRANDSTAND_UDP_ADDR", default_value = "127.0.0.1:7777")]
    pub udp_addr: SocketAddr,
    /// The player address put in connect tokens (the bound UDP address when unset).
    #[arg(long, env = "GRANDSTAND_ADVERTISE_UDP")]
    pub advertise_udp: Option<String>,
    /// Showcase matches this game server keeps running (bots only; matchmaking opens more).
    #[arg(long, env = "GRANDSTAND_MATCHES", default_value_t = GameServerConfig::default().matches)]
    pub matches: usize,
    /// Bots per match.
    #[arg(long, env = "GRANDSTAND_BOTS", default_value_t = GameServerConfig::default().bots_per_match)]
    pub bots: usize,
    /// Real players per room.
    #[arg(long, env = "GRANDSTAND_SEATS", default_value_t = GameServerConfig::default().seats)]
    pub seats: usize,
    /// Simulation rate (10-128 Hz).
    #[arg(long, env = "GRANDSTAND_TICK_HZ", default_value_t = GameServerConfig::default().tick_hz, value_parser = clap::value_parser!(u32).range(10..=128))]
    pub tick_hz: u32,
    /// Spectator feed rate (deltas per second).
    #[arg(long, env = "GRANDSTAND_SPECTATOR_HZ", default_value_t = GameServerConfig::default().spectator_hz, value_parser = clap::value_parser!(u32).range(1..=60))]
    pub spectator_hz: u32,
    /// Snapshots per second sent to each player (at most the tick rate).
    #[arg(long, env = "GRANDSTAND_SNAPSHOT_HZ", default_value_t = GameServerConfig::default().snapshot_hz, value_parser = clap::value_parser!(u32).range(1..=128))]
    pub snapshot_hz: u32,
    /// Length of a match in seconds.
    #[arg(long, env = "GRANDSTAND_MATCH_SECS", default_value_t = GameServerConfig::default().match_duration.as_secs())]
    pub match_secs: u64,
    /// Seconds between keyframes.
    #[arg(long, env = "GRANDSTAND_KEYFRAME_SECS", default_value_t = GameServerConfig::default().keyframe_every.as_secs())]
    pub keyframe_secs: u64,
    /// Seconds between a showcase match's end and the next one in its slot.
    #[arg(long, env = "GRANDSTAND_INTERMISSION_SECS", default_value_t = GameServerConfig::default().intermission.as_secs())]
    pub intermission_secs: u64,
    /// Seed for the matches' simulations (random when unset).
    #[arg(long, env = "GRANDSTAND_SEED")]
    pub seed: Option<u64>,
    /// The most a shot is rewound for lag compensation, in milliseconds.
    #[arg(long, env = "GRANDSTAND_REWIND_CAP_MS", default_value_t = GameServerConfig::default().rewind_cap_ms)]
    pub rewind_cap_ms: u32,
    /// Hold every match of this game server back this long for viewers (competitive play,
    /// against ghosting); 0 broadcasts live. At most 10 minutes.
    #[arg(long, env = "GRANDSTAND_BROADCAST_DELAY_MS", default_value_t = GameServerConfig::default().broadcast_delay.as_millis() as u64, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub broadcast_delay_ms: u64,
    /// Act on what players send as it arrives: shots resolved and told to the others at once
    /// (one more datagram per player for each poll with news). `false`: commands wait for the
    /// next tick (fewer bytes and less CPU, up to a tick more latency on every shot).
    #[arg(long, env = "GRANDSTAND_ACT_ON_ARRIVAL", default_value_t = GameServerConfig::default().act_on_arrival, action = clap::ArgAction::Set)]
    pub act_on_arrival: bool,
    /// Matchmaking regions, comma separated.
    #[arg(long, env = "GRANDSTAND_REGIONS", default_values_t = GameServerConfig::default().regions, value_delimiter = ',')]
    pub regions: Vec<String>,
}

impl GameArgs {
    /// The game server's configuration; `checkpoints` when another process can read them.
    pub fn config(&self, checkpoints: bool) -> GameServerConfig {
        GameServerConfig {
            matches: self.matches,
            regions: self.regions.clone(),
            bots_per_match: self.bots,
            seats: self.seats.max(1),
            tick_hz: self.tick_hz,
            spectator_hz: self.spectator_hz,
            snapshot_hz: self.snapshot_hz,
            match_duration: Duration::from_secs(self.match_secs),
            keyframe_every: Duration::from_secs(self.keyframe_secs.max(1)),
            intermission: Duration::from_secs(self.intermission_secs),
            seed: self.seed,
            rewind_cap_ms: self.rewind_cap_ms,
            advertise: self.advertise_udp.clone(),
            checkpoints,
            broadcast_delay: Duration::from_millis(self.broadcast_delay_ms),
            act_on_arrival: self.act_on_arrival,
            ..Default::default()
        }
    }
}

/// Viewer streams: queues, resume window, caps.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Gateway (viewer streams)")]
pub struct ViewerArgs {
    /// Frames queued per viewer before its backlog is replaced by a snapshot.
    #[arg(long, env = "GRANDSTAND_VIEWER_QUEUE", default_value_t = GatewayConfig::default().viewer_queue)]
    pub viewer_queue: usize,
    /// Recent frames each match hub keeps for resuming viewers.
    #[arg(long, env = "GRANDSTAND_RESUME_WINDOW", default_value_t = GatewayConfig::default().ring_capacity)]
    pub resume_window: usize,
    /// Records a match hub holds for a match's broadcast delay; at the limit the hub stops
    /// reading the log until the oldest is due (the log keeps the rest).
    #[arg(long, env = "GRANDSTAND_DELAY_LINE", default_value_t = GatewayConfig::default().delay_line)]
    pub delay_line: usize,
    /// Put each record's log publish time (`published_us`) in viewer messages: a debugging aid
    /// for measuring publish -> screen latency, off in production.
    #[arg(long, env = "GRANDSTAND_STAMP_PUBLISH_TIME")]
    pub stamp_publish_time: bool,
    /// Seconds a viewer may leave frames unread before it is closed.
    #[arg(long, env = "GRANDSTAND_STALL_SECS", default_value_t = GatewayConfig::default().stall_deadline.as_secs())]
    pub stall_secs: u64,
    /// Milliseconds between WebSocket pings to a viewer (one silent for three intervals is
    /// closed).
    #[arg(long, env = "GRANDSTAND_PING_MS", default_value_t = GatewayConfig::default().ping_interval.as_millis() as u64)]
    pub ping_ms: u64,
    /// Concurrent viewer streams per user, on this gateway and (with Redis) across the fleet.
    #[arg(long, env = "GRANDSTAND_MAX_STREAMS_PER_USER", default_value_t = GatewayConfig::default().max_streams_per_user)]
    pub max_streams_per_user: usize,
    /// Concurrent viewer streams per IP address, on this gateway and (with Redis) across the
    /// fleet.
    #[arg(long, env = "GRANDSTAND_MAX_STREAMS_PER_ADDRESS", default_value_t = GatewayConfig::default().max_streams_per_address)]
    pub max_streams_per_address: usize,
    /// Stream handshakes per second per IP address (bursts of four times as many pass); with
    /// Redis, counted across the fleet.
    #[arg(long, env = "GRANDSTAND_HANDSHAKES_PER_SEC", default_value_t = GatewayConfig::default().handshakes_per_sec)]
    pub handshakes_per_sec: u32,
    /// The URL viewers reach this gateway at (announced to the other gateways); by default
    /// http://<bound HTTP address>.
    #[arg(long, env = "GRANDSTAND_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Milliseconds a match's events may wait for the next delta before viewers are woken (a
    /// delta wakes them at once, carrying the events of its frame in the same write): fewer,
    /// larger writes for up to one spectator interval on events. Only in a match with 64
    /// viewers or more on this gateway (fewer are written to at once). 0 writes every event on
    /// its own.
    #[arg(long, env = "GRANDSTAND_EVENT_COALESCE_MS", default_value_t = GatewayConfig::default().event_coalesce.as_millis() as u64)]
    pub event_coalesce_ms: u64,
    /// Concurrent replays (`?from=start`) on this gateway: each reads the log with a follower
    /// of its own; past the cap a replay is refused with 429 (live streams are not affected).
    #[arg(long, env = "GRANDSTAND_MAX_REPLAYS", default_value_t = GatewayConfig::default().max_replays)]
    pub max_replays: usize,
    /// Matches one multi-match stream (`GET /v1/streams`) may follow.
    #[arg(long, env = "GRANDSTAND_MAX_MATCHES_PER_STREAM", default_value_t = GatewayConfig::default().max_matches_per_stream)]
    pub max_matches_per_stream: usize,
}

impl ViewerArgs {
    pub fn stall(&self) -> Duration {
        Duration::from_secs(self.stall_secs.max(1))
    }

    pub fn config(&self, connections: ConnectionLimits) -> GatewayConfig {
        GatewayConfig {
            viewer_queue: self.viewer_queue,
            ring_capacity: self.resume_window,
            delay_line: self.delay_line.max(16),
            publish_stamps: self.stamp_publish_time,
            stall_deadline: self.stall(),
            max_streams_per_user: self.max_streams_per_user,
            max_streams_per_address: self.max_streams_per_address,
            handshakes_per_sec: self.handshakes_per_sec,
            handshake_burst: self.handshakes_per_sec.saturating_mul(4),
            ping_interval: Duration::from_millis(self.ping_ms.max(100)),
            event_coalesce: Duration::from_millis(self.event_coalesce_ms.min(1000)),
            max_replays: self.max_replays,
            max_matches_per_stream: self.max_matches_per_stream.max(1),
            connections,
            ..Default::default()
        }
    }
}

/// Leaderboards and their retention.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Aggregator (leaderboards)")]
pub struct BoardArgs {
    /// Durable consumer name of the aggregator (aggregators with one name share the work).
    #[arg(long, env = "GRANDSTAND_AGGREGATOR", default_value_t = AggregatorConfig::default().consumer)]
    pub aggregator_name: String,
    /// Days a past day's leaderboard is kept after the day ends.
    #[arg(long, env = "GRANDSTAND_DAILY_RETENTION_DAYS", default_value_t = BoardRetention::default().daily.as_secs() / 86_400)]
    pub daily_retention_days: u64,
    /// Weeks a past week's leaderboard is kept after the week ends.
    #[arg(long, env = "GRANDSTAND_WEEKLY_RETENTION_WEEKS", default_value_t = BoardRetention::default().weekly.as_secs() / (7 * 86_400))]
    pub weekly_retention_weeks: u64,
    /// Hours a match's scoreboard is kept after its last score.
    #[arg(long, env = "GRANDSTAND_MATCH_BOARD_HOURS", default_value_t = BoardRetention::default().per_match.as_secs() / 3600)]
    pub match_board_hours: u64,
}

impl BoardArgs {
    pub fn retention(&self) -> BoardRetention {
        BoardRetention {
            daily: Duration::from_secs(self.daily_retention_days * 86_400),
            weekly: Duration::from_secs(self.weekly_retention_weeks * 7 * 86_400),
            per_match: Duration::from_secs(self.match_board_hours * 3600),
        }
    }

    pub fn config(&self) -> AggregatorConfig {
        AggregatorConfig {
            consumer: self.aggregator_name.clone(),
            retention: self.retention(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    fn help(role: &str) -> String {
        let mut cmd = Cli::command();
        let sub = cmd.find_subcommand_mut(role).expect("a role").clone();
        sub.bin_name(format!("grandstand {role}"))
            .render_long_help()
            .to_string()
    }

    #[test]
    fn each_role_shows_only_its_own_options() {
        let gateway = help("gateway");
        assert!(gateway.contains("--viewer-queue") && gateway.contains("--nats-url"));
        assert!(
            !gateway.contains("--bots") && !gateway.contains("--udp-addr"),
            "{gateway}"
        );
        // A gateway reads partner keys from the history store, and opens nothing else there.
        assert!(gateway.contains("--database-url") && !gateway.contains("--data-dir"));
        let game = help("game-server");
        assert!(game.contains("--udp-addr") && game.contains("--tick-hz"));
        assert!(!game.contains("--viewer-queue") && !game.contains("--daily-retention-days"));
        let aggregator = help("aggregator");
        assert!(aggregator.contains("--rebuild") && aggregator.contains("--database-url"));
        assert!(
            !aggregator.contains("--token-secret"),
            "aggregators check no tokens"
        );
        let api = help("snapshot-api");
        assert!(api.contains("--matchmaker-url") && !api.contains("--bots"));
    }

    #[test]
    fn no_role_means_every_role_and_defaults_come_from_the_libraries() {
        let cli = Cli::try_parse_from(["grandstand", "--bots", "3"]).unwrap();
        assert!(cli.role.is_none());
        assert_eq!(cli.all.game.bots, 3);
        assert_eq!(
            cli.all.viewers.viewer_queue,
            GatewayConfig::default().viewer_queue
        );
        assert_eq!(cli.all.game.matches, GameServerConfig::default().matches);
        // A role's flags come after the role, and a role refuses flags that are not its own.
        let gw = Cli::try_parse_from(["grandstand", "gateway", "--viewer-queue", "9"]).unwrap();
        assert!(matches!(gw.role, Some(Role::Gateway(ref a)) if a.viewers.viewer_queue == 9));
        assert!(Cli::try_parse_from(["grandstand", "gateway", "--bots", "3"]).is_err());
    }
}
