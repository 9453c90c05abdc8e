//! The player port: one UDP socket shared by every room of the server. One task reads it,
//! decodes each datagram (malformed ones are counted and dropped), checks handshakes (connect
//! token signature, expiry, match, server, replay) and routes packets of established sessions
//! to their room through the room's bounded command channel. Rooms send on the socket without
//! waiting (a full socket buffer drops a snapshot; the next one supersedes it).
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
    socket: Arc<UdpSocket>,
    signer: TokenSigner,
    /// Each bound address's session, match and room (its channel, so routing a packet is one
    /// lookup under one lock). Keyed with a fast hasher: the key is a peer address the
    /// session check already vouches for, read once per datagram.
    sessions: Mutex<FxHashMap<SocketAddr, Bound>>,
    rooms: Mutex<HashMap<String, RoomEntry>>,
    nonces: Mutex<HashMap<u64, (SocketAddr, u64)>>,
    batch_sends: std::sync::atomic::AtomicBool,
}

/// UDP and IPv4 header bytes a datagram costs on the wire beyond its payload.
pub const UDP_IP_OVERHEAD: u64 = 28;

impl PlayerPort {
    /// `signer` verifies connect tokens (the matchmaker's connect signer).
    pub fn new(socket: Arc<UdpSocket>, signer: TokenSigner) -> Arc<PlayerPort> {
        Arc::new(PlayerPort {
            socket,
            signer,
            sessions: Mutex::default(),
            rooms: Mutex::default(),
            nonces: Mutex::default(),
            batch_sends: std::sync::atomic::AtomicBool::new(true),
        })
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
        let _ = self.socket.try_send_to(bytes, addr);
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
        for chunk in datagrams.chunks(SEND_BATCH) {
            send_mmsg(&self.socket, chunk);
        }
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

#[cfg(target_os = "linux")]
fn send_mmsg(socket: &UdpSocket, chunk: &[(SocketAddr, Vec<u8>)]) {
    use std::os::fd::AsRawFd;
    let addrs: Vec<socket2::SockAddr> = chunk
        .iter()
        .map(|(a, _)| socket2::SockAddr::from(*a))
        .collect();
    let mut iovecs: Vec<libc::iovec> = chunk
        .iter()
        .map(|(_, b)| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    let mut messages: Vec<libc::mmsghdr> = addrs
        .iter()
        .zip(iovecs.iter_mut())
        .map(|(a, iov)| {
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
        })
        .collect();
    let fd = socket.as_raw_fd();
    let mut sent = 0;
    while sent < messages.len() {
        // SAFETY: every header points into `addrs`, `iovecs` and `chunk`, which outlive the
        // call; the count is the length of the slice passed.
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
fn send_mmsg(socket: &UdpSocket, chunk: &[(SocketAddr, Vec<u8>)]) {
    for (addr, bytes) in chunk {
        let _ = socket.try_send_to(bytes, *addr);
    }
}

fn reject(reason: &str) {
    metrics::UDP_REJECTED.with_label_values(&[reason]).inc();
}

/// Reads the player port until shutdown: waits for the socket to be readable, then reads and
/// routes every datagram waiting, without awaiting in between (so the CPU time of that
/// stretch is the port's own, counted in `gs_port_cpu_seconds_total`).
pub async fn serve_udp(port: Arc<PlayerPort>, shutdown: Shutdown) {
    let mut buf = vec![0u8; 2048];
    loop {
        tokio::select! {
            r = port.socket.readable() => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "player port unreadable");
                    return;
                }
            }
            _ = shutdown.cancelled() => return,
        }
        let cpu_at_start = metrics::thread_cpu();
        // A flood must not hold the thread: after a batch, the other tasks get their turn
        // (the readiness stays set, so the next wait returns at once).
        for _ in 0..DATAGRAMS_PER_WAKE {
            let (n, addr) = match port.socket.try_recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // ICMP "port unreachable" from a departed client surfaces here on Linux.
                    tracing::debug!(error = %e, "UDP receive error");
                    continue;
                }
            };
            route(&port, &buf[..n], addr);
        }
        metrics::PORT_CPU_SECONDS.inc_by(
            metrics::thread_cpu()
                .saturating_sub(cpu_at_start)
                .as_secs_f64(),
        );
        tokio::task::yield_now().await;
    }
}

/// Datagrams read in one go before the port yields to other tasks.
const DATAGRAMS_PER_WAKE: usize = 256;

/// One datagram from `addr`: decoded, checked and handed to its room, or counted as refused.
fn route(port: &PlayerPort, datagram: &[u8], addr: SocketAddr) {
    metrics::UDP_DATAGRAMS.inc();
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
        let port = PlayerPort::new(Arc::new(socket), signer.clone());
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
}
