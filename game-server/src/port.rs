//! The player port: one UDP socket shared by every room of the server. Whoever drains it (a
//! task polling every few milliseconds while anyone plays, and each room's tick right before
//! it takes its commands) decodes each datagram (malformed ones are counted and dropped),
//! checks handshakes (connect token signature, expiry, match, server, replay) and routes
//! packets of established sessions to their room through the room's bounded command channel.
//! Rooms send on the socket without waiting (a full socket buffer drops a snapshot; the next
//! one supersedes it).
//!
//! The port knows rooms only as command channels: rooms depend on the port, never the other
//! way round.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use protocol::net::{DenyReason, Packet, MAX_PACKET};
use protocol::{ConnectClaims, TokenError, TokenSigner};
use rustc_hash::FxHashMap;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use backends::RoomInfo;

use crate::metrics;
use httpkit::Shutdown;

/// What the player port hands a room.
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

/// Connect-token nonces remembered (until their token expires) to refuse replays. At the
/// limit, expired ones are pruned; if it is still full, new handshakes are refused as busy.
const MAX_NONCES: usize = 100_000;

struct Bound {
    session: u64,
    match_id: String,
    tx: mpsc::Sender<RoomCommand>,
}

/// Why the port did not hand a packet to a room.
enum Refused {
    UnknownSession,
    RoomBusy,
}

struct RoomEntry {
    tx: mpsc::Sender<RoomCommand>,
    info: RoomInfo,
    /// Real players in the room now (so the matchmaker stops counting their reservation).
    players: std::collections::HashSet<String>,
}

/// The player port: the socket, the rooms behind it, and which session each address holds.
pub struct PlayerPort {
    /// Not registered with the runtime: it is polled (see [`serve_udp`]), so a datagram's
    /// arrival wakes no thread; every read and write is a non-blocking call.
    socket: std::net::UdpSocket,
    signer: TokenSigner,
    /// Each bound address's session, match and room (its channel, so routing a packet is one
    /// lookup under one lock). Keyed with a fast hasher: the key is a peer address the
    /// session check already vouches for, read once per datagram.
    sessions: Mutex<FxHashMap<SocketAddr, Bound>>,
    rooms: Mutex<HashMap<String, RoomEntry>>,
    nonces: Mutex<HashMap<u64, (SocketAddr, u64)>>,
    batch_sends: std::sync::atomic::AtomicBool,
    /// The buffers datagrams are read into; whoever drains the socket holds it.
    inbox: Mutex<Inbox>,
}

/// UDP and IPv4 header bytes a datagram costs on the wire beyond its payload.
pub const UDP_IP_OVERHEAD: u64 = 28;

impl PlayerPort {
    /// `signer` verifies connect tokens (the matchmaker's connect signer). The socket is
    /// taken off the runtime's reactor (see [`PlayerPort::drain`]).
    pub fn new(socket: UdpSocket, signer: TokenSigner) -> std::io::Result<Arc<PlayerPort>> {
        let socket = socket.into_std()?;
        socket.set_nonblocking(true)?;
        Ok(Arc::new(PlayerPort {
            socket,
            signer,
            sessions: Mutex::default(),
            rooms: Mutex::default(),
            nonces: Mutex::default(),
            batch_sends: std::sync::atomic::AtomicBool::new(true),
            inbox: Mutex::new(Inbox::new()),
        }))
    }

    /// Reads and routes what waits on the player socket, up to [`DATAGRAMS_PER_DRAIN`]
    /// (a flood is shed at the socket, not here), many per system call (`recvmmsg`). Returns
    /// the datagrams read and whether it stopped at that limit with more waiting. A drain
    /// already under way elsewhere (another room's tick, the port's task) is not waited for:
    /// it reads for both.
    ///
    /// The port's task drains every [`INPUT_POLL`] while anyone plays, and each room's tick
    /// drains before it takes its commands. Nothing is woken by a datagram's arrival: at a
    /// player's 30 packets a second that was a wake of the server's thread (epoll, two context
    /// switches) per datagram, more than the datagram's own work.
    pub fn drain(&self) -> (usize, bool) {
        let Ok(mut inbox) = self.inbox.try_lock() else {
            return (0, false);
        };
        let cpu_at_start = metrics::thread_cpu();
        let (mut read, mut more) = (0, true);
        for _ in 0..DATAGRAMS_PER_DRAIN / RECV_BATCH {
            let result = inbox.receive(&self.socket);
            for i in 0..inbox.len() {
                let (datagram, addr) = inbox.datagram(i);
                route(self, datagram, addr);
            }
            read += inbox.len();
            match result {
                // A full batch: more may wait.
                Ok(n) if n == RECV_BATCH => continue,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // ICMP "port unreachable" from a departed client surfaces here on Linux; the
                // call that reports it reads nothing, the next one goes on.
                Err(e) => {
                    tracing::debug!(error = %e, "UDP receive error");
                    continue;
                }
            }
            more = false;
            break;
        }
        metrics::PORT_CPU_SECONDS.inc_by(
            metrics::thread_cpu()
                .saturating_sub(cpu_at_start)
                .as_secs_f64(),
        );
        (read, more)
    }

    /// Whether any player holds a session (the port then polls at [`INPUT_POLL`]).
    pub fn has_sessions(&self) -> bool {
        !self.sessions.lock().unwrap().is_empty()
    }

    /// Whether [`PlayerPort::send_batch`] uses `sendmmsg` (on) or one `sendto` per datagram.
    pub fn set_batch_sends(&self, on: bool) {
        self.batch_sends
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Sends one datagram without waiting: a full socket buffer drops it (a snapshot is
    /// superseded by the next one; reliable messages are resent until acknowledged).
    pub fn send(&self, addr: SocketAddr, bytes: &[u8]) {
        metrics::UDP_BYTES_OUT.inc_by(bytes.len() as u64 + UDP_IP_OVERHEAD);
        metrics::UDP_DATAGRAMS_OUT.inc();
        let _ = self.socket.send_to(bytes, addr);
    }

    /// Sends a tick's datagrams without waiting, in as few system calls as the kernel allows
    /// (`sendmmsg`, up to [`SEND_BATCH`] at a time): one per player per tick was most of the
    /// room's CPU. What the socket buffer cannot take is dropped, as with [`PlayerPort::send`];
    /// a datagram the kernel refuses (say, an unreachable peer) is skipped, not the batch.
    pub fn send_batch(&self, datagrams: &[(SocketAddr, Vec<u8>)]) {
        if !self.batch_sends.load(std::sync::atomic::Ordering::Relaxed) {
            for (addr, bytes) in datagrams {
                self.send(*addr, bytes);
            }
            return;
        }
        for (_, bytes) in datagrams {
            metrics::UDP_BYTES_OUT.inc_by(bytes.len() as u64 + UDP_IP_OVERHEAD);
        }
        metrics::UDP_DATAGRAMS_OUT.inc_by(datagrams.len() as u64);
        send_datagrams(&self.socket, datagrams);
    }

    fn send_packet(&self, addr: SocketAddr, p: &Packet) {
        self.send(addr, &p.encode());
    }

    pub fn add_room(&self, info: RoomInfo, tx: mpsc::Sender<RoomCommand>) {
        self.rooms.lock().unwrap().insert(
            info.match_id.clone(),
            RoomEntry {
                tx,
                info,
                players: Default::default(),
            },
        );
    }

    pub fn remove_room(&self, match_id: &str) {
        self.rooms.lock().unwrap().remove(match_id);
        self.sessions
            .lock()
            .unwrap()
            .retain(|_, b| b.match_id != match_id);
    }

    pub fn rooms(&self) -> Vec<RoomInfo> {
        self.rooms
            .lock()
            .unwrap()
            .values()
            .map(|r| r.info.clone())
            .collect()
    }

    /// The real players now in a room.
    pub fn set_players(&self, match_id: &str, players: impl IntoIterator<Item = String>) {
        if let Some(r) = self.rooms.lock().unwrap().get_mut(match_id) {
            r.players = players.into_iter().collect();
            r.info.humans = r.players.len();
        }
    }

    /// Real players in a local room, now (the registry's count is up to a heartbeat old).
    pub fn humans(&self, match_id: &str) -> Option<usize> {
        self.rooms
            .lock()
            .unwrap()
            .get(match_id)
            .map(|r| r.players.len())
    }

    /// Whether `player` is in the local room `match_id`.
    pub fn seated(&self, match_id: &str, player: &str) -> bool {
        self.rooms
            .lock()
            .unwrap()
            .get(match_id)
            .is_some_and(|r| r.players.contains(player))
    }

    /// Routes `addr`'s packets with `session` to the room `match_id` (nothing if the room is
    /// gone).
    pub fn bind(&self, addr: SocketAddr, session: u64, match_id: &str) {
        let Some((tx, _)) = self.room_tx(match_id) else {
            return;
        };
        self.sessions.lock().unwrap().insert(
            addr,
            Bound {
                session,
                match_id: match_id.to_string(),
                tx,
            },
        );
    }

    pub fn unbind(&self, addr: SocketAddr) {
        self.sessions.lock().unwrap().remove(&addr);
    }

    fn room_tx(&self, match_id: &str) -> Option<(mpsc::Sender<RoomCommand>, String)> {
        self.rooms
            .lock()
            .unwrap()
            .get(match_id)
            .map(|r| (r.tx.clone(), r.info.server.clone()))
    }

    #[cfg(test)]
    fn session_room(&self, addr: SocketAddr, session: u64) -> Option<mpsc::Sender<RoomCommand>> {
        let sessions = self.sessions.lock().unwrap();
        let bound = sessions.get(&addr).filter(|b| b.session == session)?;
        Some(bound.tx.clone())
    }

    /// Hands `cmd` to the room of `addr`'s session without cloning anything; false for an
    /// unknown address or session.
    fn to_session_room(
        &self,
        addr: SocketAddr,
        session: u64,
        cmd: RoomCommand,
    ) -> Result<(), Refused> {
        let sessions = self.sessions.lock().unwrap();
        let bound = sessions
            .get(&addr)
            .filter(|b| b.session == session)
            .ok_or(Refused::UnknownSession)?;
        bound.tx.try_send(cmd).map_err(|_| Refused::RoomBusy)
    }

    /// Checks a handshake; the room to join, or why not.
    fn admit(
        &self,
        addr: SocketAddr,
        token: &str,
        now_secs: u64,
    ) -> Result<(mpsc::Sender<RoomCommand>, ConnectClaims), DenyReason> {
        let claims: ConnectClaims =
            self.signer
                .verify_as(token, now_secs)
                .map_err(|e| match e {
                    TokenError::Expired => DenyReason::Expired,
                    _ => DenyReason::BadToken,
                })?;
        let (tx, server) = self
            .room_tx(&claims.match_id)
            .ok_or(DenyReason::UnknownMatch)?;
        if claims.server != server {
            return Err(DenyReason::WrongServer);
        }
        let mut nonces = self.nonces.lock().unwrap();
        match nonces.get(&claims.nonce) {
            Some((first, _)) if *first != addr => return Err(DenyReason::Replayed),
            Some(_) => {}
            None => {
                if nonces.len() >= MAX_NONCES {
                    nonces.retain(|_, (_, exp)| *exp > now_secs);
                    if nonces.len() >= MAX_NONCES {
                        return Err(DenyReason::ServerBusy);
                    }
                }
                nonces.insert(claims.nonce, (addr, claims.exp));
            }
        }
        Ok((tx, claims))
    }
}

/// Datagrams handed to the kernel in one `sendmmsg`.
pub const SEND_BATCH: usize = 64;

/// Hands datagrams to the kernel without waiting, [`SEND_BATCH`] per `sendmmsg`, as
/// [`PlayerPort::send_batch`] does (public so that `loadtest players` can measure what the
/// same datagrams cost the kernel with no game around them).
pub fn send_datagrams(socket: &std::net::UdpSocket, datagrams: &[(SocketAddr, Vec<u8>)]) {
    for chunk in datagrams.chunks(SEND_BATCH) {
        send_mmsg(socket, chunk);
    }
}

#[cfg(target_os = "linux")]
type MmsgHeaders = (Vec<socket2::SockAddr>, Vec<libc::iovec>, Vec<libc::mmsghdr>);

#[cfg(target_os = "linux")]
thread_local! {
    /// The headers of one `sendmmsg`, kept from call to call: built fresh they were three
    /// allocations per room per tick (about 14 KB), which the allocator returned to the kernel
    /// and faulted back in, zeroed, on the next tick (page faults were 2% of the server's CPU).
    static MMSG_HEADERS: std::cell::RefCell<MmsgHeaders> = const {
        std::cell::RefCell::new((Vec::new(), Vec::new(), Vec::new()))
    };
}

#[cfg(target_os = "linux")]
fn send_mmsg(socket: &std::net::UdpSocket, chunk: &[(SocketAddr, Vec<u8>)]) {
    MMSG_HEADERS.with(|headers| {
        let (addrs, iovecs, messages) = &mut *headers.borrow_mut();
        send_mmsg_with(socket, chunk, addrs, iovecs, messages);
    });
}

#[cfg(target_os = "linux")]
fn send_mmsg_with(
    socket: &std::net::UdpSocket,
    chunk: &[(SocketAddr, Vec<u8>)],
    addrs: &mut Vec<socket2::SockAddr>,
    iovecs: &mut Vec<libc::iovec>,
    messages: &mut Vec<libc::mmsghdr>,
) {
    use std::os::fd::AsRawFd;
    // Every header is rebuilt before use: nothing points at last call's datagrams.
    messages.clear();
    addrs.clear();
    iovecs.clear();
    addrs.extend(chunk.iter().map(|(a, _)| socket2::SockAddr::from(*a)));
    iovecs.extend(chunk.iter().map(|(_, b)| libc::iovec {
        iov_base: b.as_ptr() as *mut libc::c_void,
        iov_len: b.len(),
    }));
    messages.extend(addrs.iter().zip(iovecs.iter_mut()).map(|(a, iov)| {
        // SAFETY: an all-zero msghdr is valid (no control data, no flags).
        let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        hdr.msg_name = a.as_ptr() as *mut libc::c_void;
        hdr.msg_namelen = a.len();
        hdr.msg_iov = iov;
        hdr.msg_iovlen = 1;
        libc::mmsghdr {
            msg_hdr: hdr,
            msg_len: 0,
        }
    }));
    let fd = socket.as_raw_fd();
    let mut sent = 0;
    while sent < messages.len() {
        // SAFETY: every header points into `addrs`, `iovecs` and `chunk`, which are not
        // touched until the call returns; the count is the length of the slice passed.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                messages[sent..].as_mut_ptr(),
                (messages.len() - sent) as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            sent += n as usize;
            continue;
        }
        if std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock {
            // The socket buffer is full: the rest is dropped (snapshots are superseded,
            // events repeated).
            return;
        }
        // This datagram was refused (e.g. a pending ICMP error): skip it, send the rest.
        sent += 1;
    }
}

#[cfg(not(target_os = "linux"))]
fn send_mmsg(socket: &std::net::UdpSocket, chunk: &[(SocketAddr, Vec<u8>)]) {
    for (addr, bytes) in chunk {
        let _ = socket.send_to(bytes, *addr);
    }
}

fn reject(reason: &str) {
    metrics::UDP_REJECTED.with_label_values(&[reason]).inc();
}

/// Reads the player port until shutdown, for whatever the rooms' ticks do not read (handshakes,
/// a server without rooms, traffic beyond a tick's drain). The socket is polled, at a pace set
/// by what the last poll found: about a batch ([`RECV_BATCH`]) is left to queue between polls,
/// so a trickle is read every [`PORT_REST_MAX`] and a busy socket at once, and what waits is
/// always a small part of its receive buffer.
/// Polls the port while the server runs: every `poll` while anyone plays (see
/// [`INPUT_POLL`]), every [`PORT_REST_MAX`] otherwise, at once while a drain leaves more.
pub async fn serve_udp(port: Arc<PlayerPort>, poll: std::time::Duration, shutdown: Shutdown) {
    loop {
        let (_, more) = port.drain();
        let rest = if more {
            std::time::Duration::ZERO
        } else if port.has_sessions() {
            poll
        } else {
            PORT_REST_MAX
        };
        if rest.is_zero() {
            // More waits: let the other tasks have a turn, then go on.
            tokio::task::yield_now().await;
            if shutdown.is_cancelled() {
                return;
            }
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(rest) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Datagrams read in one drain; the rest wait for the next.
pub const DATAGRAMS_PER_DRAIN: usize = 256;

/// How long a player's datagram may wait to be read while anyone is playing: rooms act on
/// what the port hands them as it arrives (a shot is resolved and told to the others then, not
/// at the next tick, up to 33 ms later at 30 Hz), so this pace is the wait a shot adds on
/// the server. Each poll is a timer wake of the server's thread (a few microseconds); a
/// wake per datagram (the socket registered for readiness) cost more than the datagram's own
/// work, and polling every 4 ms is ~250 wakes a second however many players there are.
pub const INPUT_POLL: std::time::Duration = std::time::Duration::from_millis(4);
/// The pace with no one playing: only handshakes arrive, and they may wait this long.
pub const PORT_REST_MAX: std::time::Duration = std::time::Duration::from_millis(20);

/// Datagrams read in one `recvmmsg`.
pub const RECV_BATCH: usize = 32;

/// Room for one datagram: more than [`MAX_PACKET`], so a longer one is still seen as too long
/// (and refused as oversized) rather than cut to a size that passes.
const RECV_SLOT: usize = 2048;

/// The buffers the port reads into, kept from wake to wake (64 KiB). Public so that
/// `loadtest players` can read the same datagrams the same way with no game around them.
pub struct Inbox {
    bytes: Vec<u8>,
    /// The datagrams the last read left: slot, length, source.
    got: Vec<(usize, usize, SocketAddr)>,
}

impl Default for Inbox {
    fn default() -> Inbox {
        Inbox::new()
    }
}

impl Inbox {
    pub fn new() -> Inbox {
        Inbox {
            bytes: vec![0; RECV_BATCH * RECV_SLOT],
            got: Vec::with_capacity(RECV_BATCH),
        }
    }

    /// The datagrams the last [`Inbox::receive`] read.
    pub fn len(&self) -> usize {
        self.got.len()
    }

    pub fn is_empty(&self) -> bool {
        self.got.is_empty()
    }

    fn datagram(&self, i: usize) -> (&[u8], SocketAddr) {
        let (slot, len, addr) = self.got[i];
        let at = slot * RECV_SLOT;
        (&self.bytes[at..at + len], addr)
    }

    /// Reads what waits, up to [`RECV_BATCH`] datagrams (none: `WouldBlock`).
    #[cfg(target_os = "linux")]
    pub fn receive(&mut self, socket: &std::net::UdpSocket) -> std::io::Result<usize> {
        use std::os::fd::AsRawFd;
        self.got.clear();
        // SAFETY: all-zero sockaddr_storage and msghdr are valid values.
        let mut names: [libc::sockaddr_storage; RECV_BATCH] = unsafe { std::mem::zeroed() };
        let base = self.bytes.as_mut_ptr();
        let mut iovecs: [libc::iovec; RECV_BATCH] = std::array::from_fn(|i| libc::iovec {
            // SAFETY: slot `i` lies inside `bytes` (RECV_BATCH slots of RECV_SLOT bytes).
            iov_base: unsafe { base.add(i * RECV_SLOT) } as *mut libc::c_void,
            iov_len: RECV_SLOT,
        });
        let mut messages: [libc::mmsghdr; RECV_BATCH] = std::array::from_fn(|i| {
            // SAFETY: as above.
            let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
            hdr.msg_name = &mut names[i] as *mut libc::sockaddr_storage as *mut libc::c_void;
            hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_iov = &mut iovecs[i];
            hdr.msg_iovlen = 1;
            libc::mmsghdr {
                msg_hdr: hdr,
                msg_len: 0,
            }
        });
        // SAFETY: every header points into `names`, `iovecs` and `self.bytes`, which outlive
        // the call; the count is the array's length.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                messages.as_mut_ptr(),
                RECV_BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = n as usize;
        for (slot, (m, name)) in messages.iter().zip(names.iter()).take(n).enumerate() {
            if let Some(addr) = socket_addr(name) {
                self.got
                    .push((slot, (m.msg_len as usize).min(RECV_SLOT), addr));
            }
        }
        Ok(n)
    }

    #[cfg(not(target_os = "linux"))]
    pub fn receive(&mut self, socket: &std::net::UdpSocket) -> std::io::Result<usize> {
        self.got.clear();
        let (n, addr) = socket.recv_from(&mut self.bytes[..RECV_SLOT])?;
        self.got.push((0, n, addr));
        Ok(1)
    }
}

/// The IP address and port the kernel wrote into `name` (None for any other family).
#[cfg(target_os = "linux")]
fn socket_addr(name: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(name.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is large
            // enough (and aligned) for.
            let a =
                unsafe { &*(name as *const libc::sockaddr_storage as *const libc::sockaddr_in) };
            Some(SocketAddr::from((
                u32::from_be(a.sin_addr.s_addr).to_be_bytes(),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a =
                unsafe { &*(name as *const libc::sockaddr_storage as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                a.sin6_addr.s6_addr.into(),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// One datagram from `addr`: decoded, checked and handed to its room, or counted as refused.
fn route(port: &PlayerPort, datagram: &[u8], addr: SocketAddr) {
    metrics::UDP_DATAGRAMS.inc();
    metrics::UDP_BYTES_IN.inc_by(datagram.len() as u64);
    if datagram.len() > MAX_PACKET {
        reject("oversized");
        return;
    }
    let packet = match Packet::decode(datagram) {
        Ok(p) => p,
        Err(e) => {
            tracing::trace!(%addr, error = %e, "malformed datagram");
            reject("malformed");
            return;
        }
    };
    match packet {
        Packet::ConnectRequest { token } => match port.admit(addr, &token, protocol::now_secs()) {
            Ok((tx, claims)) => {
                if tx.try_send(RoomCommand::Join { addr, claims }).is_err() {
                    reject("room_busy");
                    port.send_packet(
                        addr,
                        &Packet::ConnectDenied {
                            reason: DenyReason::ServerBusy,
                        },
                    );
                }
            }
            Err(reason) => {
                tracing::debug!(%addr, ?reason, "handshake refused");
                reject("handshake");
                port.send_packet(addr, &Packet::ConnectDenied { reason });
            }
        },
        Packet::Client(p) => {
            let session = p.session;
            match port.to_session_room(addr, session, RoomCommand::Packet { addr, packet: p }) {
                Ok(()) => {}
                Err(Refused::RoomBusy) => reject("room_busy"),
                Err(Refused::UnknownSession) => reject("unknown_session"),
            }
        }
        Packet::Disconnect { session } => {
            match port.to_session_room(addr, session, RoomCommand::Disconnect { addr }) {
                Ok(()) | Err(Refused::RoomBusy) => {}
                Err(Refused::UnknownSession) => reject("unknown_session"),
            }
        }
        _ => reject("unexpected"),
    }
}

#[cfg(test)]
mod tests {
    use protocol::TokenSigner;

    use super::*;

    async fn port_with_room(server: &str) -> (Arc<PlayerPort>, TokenSigner) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let signer = TokenSigner::new(b"connect-test-secret-0123456789");
        let port = PlayerPort::new(socket, signer.clone()).unwrap();
        let (tx, _rx) = mpsc::channel(4);
        port.add_room(
            RoomInfo {
                match_id: "eu-1".into(),
                region: "eu".into(),
                bucket: Some(2),
                server: server.into(),
                seats: 4,
                humans: 0,
            },
            tx,
        );
        (port, signer)
    }

    fn token(signer: &TokenSigner, server: &str, exp: u64, nonce: u64) -> String {
        signer.sign(&ConnectClaims {
            sub: "alice".into(),
            name: "Alice".into(),
            match_id: "eu-1".into(),
            server: server.into(),
            exp,
            nonce,
        })
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn batched_sends_deliver_every_datagram_and_allocate_nothing_once_warm() {
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let receivers: Vec<std::net::UdpSocket> = (0..3)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let batch = |round: u8| -> Vec<(SocketAddr, Vec<u8>)> {
            (0..30u8)
                .map(|i| {
                    let to = receivers[usize::from(i) % 3].local_addr().unwrap();
                    (to, vec![round, i, 7, 7])
                })
                .collect()
        };
        let (first, second) = (batch(1), batch(2));
        send_mmsg(&sender, &first);
        let ((), allocations) = crate::alloc_count::count(|| send_mmsg(&sender, &second));
        assert_eq!(allocations, 0, "a warm batch send allocates");
        let mut got = Vec::new();
        for r in &receivers {
            r.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .unwrap();
            for _ in 0..20 {
                let mut buf = [0u8; 16];
                let n = r.recv(&mut buf).unwrap();
                got.push(buf[..n].to_vec());
            }
        }
        got.sort();
        let mut want: Vec<Vec<u8>> = first.into_iter().chain(second).map(|d| d.1).collect();
        want.sort();
        assert_eq!(got, want, "each datagram once, to its address, as it was");
    }

    #[tokio::test]
    async fn handshakes_are_refused_for_each_reason_the_contract_names() {
        let (port, signer) = port_with_room("10.0.0.1:7777").await;
        let a = SocketAddr::from(([127, 0, 0, 1], 4000));
        let b = SocketAddr::from(([127, 0, 0, 1], 4001));
        let now = 1_000;
        let deny = |r: Result<_, DenyReason>| r.err();
        assert_eq!(
            deny(port.admit(a, "not-a-token", now)),
            Some(DenyReason::BadToken)
        );
        let forged = TokenSigner::new(b"someone-else-entirely-0123456789");
        assert_eq!(
            deny(port.admit(a, &token(&forged, "10.0.0.1:7777", now + 60, 1), now)),
            Some(DenyReason::BadToken)
        );
        assert_eq!(
            deny(port.admit(a, &token(&signer, "10.0.0.1:7777", now - 1, 2), now)),
            Some(DenyReason::Expired)
        );
        assert_eq!(
            deny(port.admit(a, &token(&signer, "10.0.0.2:7777", now + 60, 3), now)),
            Some(DenyReason::WrongServer)
        );
        let good = token(&signer, "10.0.0.1:7777", now + 60, 4);
        assert!(port.admit(a, &good, now).is_ok());
        // The same token again from the same address (a lost accept) passes; from another
        // address it is a replay.
        assert!(port.admit(a, &good, now).is_ok());
        assert_eq!(deny(port.admit(b, &good, now)), Some(DenyReason::Replayed));
        port.remove_room("eu-1");
        assert_eq!(
            deny(port.admit(a, &token(&signer, "10.0.0.1:7777", now + 60, 5), now)),
            Some(DenyReason::UnknownMatch)
        );
    }

    #[tokio::test]
    async fn a_batch_reaches_each_address_in_order_past_the_batch_size() {
        let (port, _) = port_with_room("10.0.0.1:7777").await;
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (to_a, to_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let datagrams: Vec<(SocketAddr, Vec<u8>)> = (0..SEND_BATCH as u8 + 6)
            .map(|i| {
                (
                    if i % 3 == 0 { to_b } else { to_a },
                    vec![i; 1 + i as usize],
                )
            })
            .collect();
        port.send_batch(&datagrams);
        let mut buf = [0u8; 2048];
        for (addr, bytes) in &datagrams {
            let socket = if *addr == to_a { &a } else { &b };
            let n = tokio::time::timeout(std::time::Duration::from_secs(2), socket.recv(&mut buf))
                .await
                .expect("datagram arrives")
                .unwrap();
            assert_eq!(&buf[..n], &bytes[..]);
        }
    }

    #[tokio::test]
    async fn packets_reach_a_room_only_from_the_address_holding_the_session() {
        let (port, _) = port_with_room("10.0.0.1:7777").await;
        let a = SocketAddr::from(([127, 0, 0, 1], 4000));
        port.bind(a, 99, "eu-1");
        assert!(port.session_room(a, 99).is_some());
        assert!(port.session_room(a, 98).is_none(), "wrong session id");
        assert!(port
            .session_room(SocketAddr::from(([127, 0, 0, 1], 4001)), 99)
            .is_none());
        port.set_players("eu-1", ["alice".to_string()]);
        assert_eq!(port.humans("eu-1"), Some(1));
        assert!(port.seated("eu-1", "alice") && !port.seated("eu-1", "bob"));
        assert_eq!(port.rooms()[0].humans, 1);
        port.unbind(a);
        assert!(port.session_room(a, 99).is_none());
    }

    #[tokio::test]
    async fn the_inbox_reads_batches_with_each_source_and_sees_oversized_datagrams_whole() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let to = socket.local_addr().unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut sent = Vec::new();
        for i in 0..RECV_BATCH + 7 {
            let from = if i % 4 == 0 { &b } else { &a };
            let bytes = vec![i as u8; 1 + i];
            from.send_to(&bytes, to).await.unwrap();
            sent.push((from.local_addr().unwrap(), bytes));
        }
        let oversized = vec![7u8; MAX_PACKET + 300];
        a.send_to(&oversized, to).await.unwrap();
        sent.push((a.local_addr().unwrap(), oversized));
        let mut inbox = Inbox::new();
        let mut got = Vec::new();
        let mut batches = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while got.len() < sent.len() && std::time::Instant::now() < deadline {
            match inbox.receive(&socket) {
                Ok(n) => batches.push(n),
                Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock),
            }
            for i in 0..inbox.len() {
                let (bytes, addr) = inbox.datagram(i);
                got.push((addr, bytes.to_vec()));
            }
        }
        assert!(batches.iter().all(|&n| n <= RECV_BATCH));
        assert_eq!(
            batches[0], RECV_BATCH,
            "what waits is read a batch at a time"
        );
        assert_eq!(got.len(), sent.len());
        assert_eq!(&got[..sent.len() - 1], &sent[..sent.len() - 1]);
        let (addr, last) = got.last().unwrap();
        assert_eq!(*addr, a.local_addr().unwrap());
        assert!(
            last.len() > MAX_PACKET,
            "an oversized datagram is not cut down to a size that would pass"
        );
    }
}
