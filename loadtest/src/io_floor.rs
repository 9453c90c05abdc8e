//! The I/O floor of `loadtest players`: what the game server's datagrams cost with no game
//! around them. After a variant has run, its counters say how many datagrams the server sent
//! (at ticks and between them), how big they were, how many it read, and how often it woke.
//! This replays exactly that on a thread of its own (a socket read with the same `recvmmsg`
//! at every wake, the same datagrams handed over with the same `sendmmsg`, prebuilt so that
//! nothing else is done) against as many player sockets as the run had, and reads that
//! thread's CPU clock. Its CPU per player-tick is the least any server could spend on the
//! same traffic through the same system calls on this machine; the server's figure minus it
//! is the game's own cost. On loopback a send's CPU includes delivering the datagram into
//! the receiving socket, for the server and the floor alike.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use game_server::port::{send_datagrams, Inbox, RECV_BATCH};

/// The traffic to replay, per second and per tick, as a variant's counters measured it.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub players: usize,
    pub duration: Duration,
    pub tick_hz: u32,
    /// How often the server's port reads the socket while anyone plays.
    pub poll: Duration,
    /// Datagrams sent at each tick (snapshots, and the events that ride with them).
    pub per_tick: f64,
    /// Datagrams sent between ticks, per second (events datagrams told on arrival).
    pub between_per_s: f64,
    /// Average UDP payload of a sent datagram.
    pub out_size: usize,
    /// Datagrams the players send, per second in all.
    pub in_per_s: f64,
    /// Average UDP payload of a received datagram.
    pub in_size: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct Floor {
    pub cpu: Duration,
    pub ticks: u64,
    pub wakes: u64,
    pub sent: u64,
    pub received: u64,
    /// The CPU of the same schedule of wakes with nothing read or sent: what waking a
    /// sleeping thread costs on this machine (on a virtual machine, tens of microseconds).
    pub wakes_cpu: Duration,
}

impl Floor {
    pub fn us_per_player_tick(&self, players: usize) -> f64 {
        self.per_player_tick(self.cpu, players)
    }

    pub fn wakes_us_per_player_tick(&self, players: usize) -> f64 {
        self.per_player_tick(self.wakes_cpu, players)
    }

    fn per_player_tick(&self, cpu: Duration, players: usize) -> f64 {
        cpu.as_secs_f64() * 1e6 / (self.ticks.max(1) * players.max(1) as u64) as f64
    }
}

/// Replays `load` for its duration and returns the replaying thread's CPU; then keeps the same
/// schedule of wakes for as long again with nothing read or sent, for what the wakes alone
/// cost.
pub fn measure(load: Load) -> anyhow::Result<Floor> {
    anyhow::ensure!(
        load.players > 0 && load.tick_hz > 0,
        "an I/O floor needs players and ticks"
    );
    let server = UdpSocket::bind("127.0.0.1:0")?;
    server.set_nonblocking(true)?;
    let server_addr = server.local_addr()?;
    let clients = (0..load.players)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0")?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    let addrs = clients
        .iter()
        .map(|c| c.local_addr())
        .collect::<std::io::Result<Vec<_>>>()?;
    let stop = Arc::new(AtomicBool::new(false));
    let players = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("io-floor-players".into())
            .spawn(move || play(clients, server_addr, load, &stop))?
    };
    let floor = std::thread::Builder::new()
        .name("io-floor-server".into())
        .spawn(move || {
            let mut floor = serve(&server, &addrs, load, true);
            floor.wakes_cpu = serve(&server, &addrs, load, false).cpu;
            floor
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("the I/O floor's server thread panicked"))?;
    stop.store(true, Ordering::Relaxed);
    players
        .join()
        .map_err(|_| anyhow::anyhow!("the I/O floor's player thread panicked"))?;
    Ok(floor)
}

/// The server's side: wakes at every tick and every poll, reads what waits, sends what is due
/// (with `io` off, only wakes).
fn serve(socket: &UdpSocket, addrs: &[SocketAddr], load: Load, io: bool) -> Floor {
    let players = addrs.len();
    // Twice round the players, so any run of up to `players` datagrams from any starting
    // player is one contiguous slice: nothing is built while measuring.
    let datagrams: Vec<(SocketAddr, Vec<u8>)> = (0..2 * players)
        .map(|i| (addrs[i % players], vec![0x5a; load.out_size.max(1)]))
        .collect();
    let mut inbox = Inbox::new();
    let tick = Duration::from_secs_f64(1.0 / f64::from(load.tick_hz));
    let poll = load.poll.max(Duration::from_micros(100));
    let start = Instant::now();
    let end = start + load.duration;
    let (mut next_tick, mut next_poll, mut last) = (start + tick, start + poll, start);
    let (mut owed, mut next_player) = (0.0f64, 0usize);
    let mut floor = Floor {
        cpu: Duration::ZERO,
        ticks: 0,
        wakes: 0,
        sent: 0,
        received: 0,
        wakes_cpu: Duration::ZERO,
    };
    let cpu_at_start = game_server::thread_cpu();
    loop {
        let wake = next_tick.min(next_poll);
        if wake >= end {
            break;
        }
        std::thread::sleep(wake.saturating_duration_since(Instant::now()));
        let now = Instant::now();
        floor.wakes += 1;
        let at_tick = now >= next_tick;
        if at_tick {
            floor.ticks += 1;
            next_tick += tick;
        }
        if now >= next_poll {
            next_poll += poll;
        }
        if !io {
            continue;
        }
        while let Ok(n) = inbox.receive(socket) {
            floor.received += n as u64;
            if n < RECV_BATCH {
                break;
            }
        }
        owed += load.between_per_s * now.duration_since(last).as_secs_f64();
        last = now;
        if at_tick {
            owed += load.per_tick;
        }
        let mut due = owed.floor() as usize;
        owed -= due as f64;
        while due > 0 {
            let n = due.min(players);
            send_datagrams(socket, &datagrams[next_player..next_player + n]);
            next_player = (next_player + n) % players;
            floor.sent += n as u64;
            due -= n;
        }
    }
    floor.cpu = game_server::thread_cpu().saturating_sub(cpu_at_start);
    floor
}

/// The players' side (not measured): sends their datagrams at an even pace and reads what the
/// server sends, so that every datagram is delivered and read as in the real run.
fn play(clients: Vec<UdpSocket>, server: SocketAddr, load: Load, stop: &AtomicBool) {
    let payload = vec![0x33; load.in_size.max(1)];
    let mut buf = [0u8; 2048];
    let gap = Duration::from_secs_f64(1.0 / load.in_per_s.max(1.0));
    let mut next = Instant::now();
    let mut sent = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while next <= now {
            let _ = clients[sent % clients.len()].send_to(&payload, server);
            sent += 1;
            next += gap;
        }
        for c in &clients {
            while c.recv(&mut buf).is_ok() {}
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The replay sends and reads what it was asked to, within one wake's rounding.
    #[test]
    fn the_floor_replays_the_load_it_is_given() {
        let load = Load {
            players: 4,
            duration: Duration::from_millis(600),
            tick_hz: 30,
            poll: Duration::from_millis(4),
            per_tick: 4.0,
            between_per_s: 100.0,
            out_size: 90,
            in_per_s: 200.0,
            in_size: 30,
        };
        let floor = measure(load).unwrap();
        // Every tick sent its 4; the rest were owed between ticks, at most 100 a second for
        // at most the run's 0.6 s (however late this machine's sleeps woke it).
        assert!(floor.ticks >= 1, "{floor:?}");
        let between = floor.sent.checked_sub(floor.ticks * 4);
        assert!(between.is_some_and(|b| b <= 61), "{floor:?}");
        // Every datagram read came from the players' side: 200 a second for the 0.6 s of
        // reading (120), and however late a loaded machine's last wake came, not twice that.
        assert!(floor.received >= 1 && floor.received <= 240, "{floor:?}");
        assert!(floor.cpu > Duration::ZERO && floor.wakes_cpu > Duration::ZERO);
    }
}
