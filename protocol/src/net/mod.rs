//! The player protocol over UDP: packets, the delta-compressed entity snapshots, packet acks
//! and the reliable ordered channel. Pure: bytes in, values out, and every decoder rejects
//! malformed, truncated or oversized input with an error instead of panicking or allocating
//! what a hostile count asks for.
//!
//! Layout: every datagram starts with a byte holding the protocol version (high nibble) and the
//! packet type (low nibble). Integers are little-endian; counts, ticks, entity ids inside
//! messages and message ids after the first are LEB128 varints; entity updates are bit-packed
//! ([`snapshot`]). What keeps stray or forged datagrams out is not a magic byte but the
//! session: 64 bits from the client, a 32-bit tag and the server's address to the client.

pub mod acks;
mod codec;
pub mod reliable;
pub mod snapshot;
pub mod urgent;

use codec::{BitReader, BitWriter, Reader, Writer};
pub use snapshot::{EntityChange, EntityState, SnapshotDelta};

/// The next version must not be 4: a protocol 2 datagram began with `G` (0x47), whose high
/// nibble reads as version 4, so a 4 would let old clients' datagrams parse as current ones.
/// 6: the accept carries the snapshot rate (the client's interpolation delay follows it).
/// 5: positions of other bodies and of shots in whole units (tenths before), moves in size
/// classes for that scale, a fire's fields bit-packed.
/// 3: a one-byte prefix (no magic), 16 ack bits in server packets, the reliable ack only
/// while the peer has something to acknowledge, message ids after the first as gaps, entity ids
/// in messages as varints, a fire's end as a move from its start and naming its victim (no
/// separate hit message).
/// 2: time-critical events on their own unordered channel ([`urgent`]); a 32-bit session tag,
/// quantized own body and bit-packed entity updates in server packets.
pub const PROTOCOL_VERSION: u8 = 6;
/// No datagram is larger: below the common 1280-byte IPv6 minimum MTU, so nothing fragments.
pub const MAX_PACKET: usize = 1200;
/// Connect requests are padded to exactly this size and every reply is smaller, so a forged
/// source address can never turn the server into an amplifier.
pub const CONNECT_REQUEST_LEN: usize = 1100;
/// How many recent inputs a client repeats in every packet, so a lost packet loses no input.
pub const MAX_INPUTS: usize = 8;
pub const MAX_ENTITIES: usize = 256;
pub const MAX_MESSAGES: usize = 64;
pub const MAX_CHAT: usize = 200;

/// The interpolation delay a client uses unless the snapshot rate asks for more.
pub const DEFAULT_INTERPOLATION_DELAY_MS: u32 = 100;
/// What the delay allows beyond two snapshot intervals for arrival jitter.
const JITTER_ALLOWANCE_MS: u32 = 25;

/// How far behind the newest snapshot a client draws other entities: at least `at_least_ms`,
/// and at least two snapshot intervals plus a jitter allowance, so that one lost snapshot
/// still leaves two to interpolate between instead of holding everyone still (the arrival
/// gap after a loss is two intervals). At 30 snapshots/s that is 93 ms, under the default
/// 100; at 20, 125 ms; at 15, 159 ms. The server widens its rewind cap by what this adds to
/// the default delay, so a lower snapshot rate never turns shots at what a player sees into
/// shots judged at the cap.
pub fn interpolation_delay_ms(snapshot_hz: u32, at_least_ms: u32) -> u32 {
    let interval_ms = 1000u32.div_ceil(snapshot_hz.max(1));
    at_least_ms.max(2 * interval_ms + JITTER_ALLOWANCE_MS)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    #[error("packet truncated")]
    Truncated,
    #[error("unsupported protocol version {0}")]
    BadVersion(u8),
    #[error("unknown packet type {0}")]
    UnknownType(u8),
    #[error("packet larger than {MAX_PACKET} bytes")]
    TooLarge,
    #[error("trailing bytes after packet")]
    Trailing,
    #[error("invalid packet: {0}")]
    Invalid(&'static str),
    #[error("snapshot baseline {0} is not known")]
    UnknownBaseline(u32),
}

/// Why a connection was refused; sent back in `ConnectDenied`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DenyReason {
    BadToken = 1,
    Expired = 2,
    Replayed = 3,
    WrongServer = 4,
    UnknownMatch = 5,
    RoomFull = 6,
    ServerBusy = 7,
}

impl DenyReason {
    fn from_u8(v: u8) -> Result<DenyReason, NetError> {
        use DenyReason::*;
        Ok(match v {
            1 => BadToken,
            2 => Expired,
            3 => Replayed,
            4 => WrongServer,
            5 => UnknownMatch,
            6 => RoomFull,
            7 => ServerBusy,
            _ => return Err(NetError::Invalid("unknown deny reason")),
        })
    }
}

/// Per-packet acknowledgement header (sequence, latest received, and the 32 before it; server
/// packets carry only the 16 before it: the client learns round trips from them, nothing more).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub seq: u16,
    pub ack: u16,
    pub ack_bits: u32,
}

/// One tick of player input. `view_tick` + `view_frac`/256 is the server time the player was
/// looking at (its interpolated view) when it pressed fire: what lag compensation rewinds to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Input {
    pub seq: u32,
    pub move_x: i8,
    pub move_y: i8,
    /// Aim angle, a full turn in 65536 steps.
    pub aim: u16,
    pub fire: bool,
    pub view_tick: u32,
    pub view_frac: u8,
}

/// The receiving player's own body after `last_processed_input`. The simulation keeps bodies on
/// a grid (positions in 64ths of a unit, velocities in 128ths of a unit per second: see
/// `arena::physics`), so this is exact on the wire and client prediction reconciles without
/// quantization error.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OwnState {
    pub x: f32,
    pub y: f32,
    pub vx: f32,
    pub vy: f32,
    pub alive: bool,
}

/// Events and notices between server and client. The roster, chat and the end of the match go
/// on the ordered channel (exactly once, in order); fire, death and pickup on the urgent one
/// (once, as soon as possible, in any order). Positions are in whole units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    PlayerInfo {
        entity: u16,
        player: String,
        name: String,
        bot: bool,
    },
    PlayerGone {
        entity: u16,
    },
    /// A shot from `(x0, y0)` to `(x1, y1)`; `victim` is whom it hit (that player learns it
    /// was hit from this message: the damage shows in its health).
    Fire {
        entity: u16,
        x0: u16,
        y0: u16,
        x1: u16,
        y1: u16,
        victim: Option<u16>,
    },
    Death {
        victim: u16,
        killer: u16,
    },
    Pickup {
        entity: u16,
    },
    Chat {
        entity: u16,
        text: String,
    },
    MatchEnded,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReliableBlock {
    /// The next message id this side expects from the peer (everything before it arrived);
    /// sent only while the peer has recently sent something to acknowledge
    /// ([`reliable::ReliableReceiver::ack_to_send`]).
    pub ack_next: Option<u16>,
    pub messages: Vec<(u16, Message)>,
}

/// Which urgent events a side has received: the newest id and a bit for each of the 32 before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UrgentAck {
    pub latest: u16,
    pub bits: u32,
}

impl Default for UrgentAck {
    /// Nothing received yet.
    fn default() -> UrgentAck {
        UrgentAck {
            latest: u16::MAX,
            bits: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClientPacket {
    pub session: u64,
    pub header: Header,
    /// Newest last; at most `MAX_INPUTS`.
    pub inputs: Vec<Input>,
    pub reliable: ReliableBlock,
    pub urgent_ack: UrgentAck,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerPacket {
    /// The session's low 32 bits: the client also checks the source address, so a forger
    /// would have to guess both.
    pub session: u32,
    pub header: Header,
    pub tick: u32,
    pub last_processed_input: u32,
    pub own: OwnState,
    pub snapshot: SnapshotDelta,
    pub reliable: ReliableBlock,
    /// Unacknowledged urgent events, each with its id, repeated until acked.
    pub urgent: Vec<(u16, Message)>,
}

/// Urgent events between snapshots: sent on the tick they happen when it is not a snapshot
/// tick, so a lower snapshot rate never delays them. It takes a packet sequence number like a
/// snapshot (acks and round trips cover it) but carries no snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct EventsPacket {
    pub session: u32,
    pub header: Header,
    pub tick: u32,
    pub urgent: Vec<(u16, Message)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Packet {
    ConnectRequest {
        token: String,
    },
    ConnectAccepted {
        session: u64,
        entity: u16,
        tick_hz: u8,
        /// Snapshots per second (at most `tick_hz`): how far apart they arrive, which sets
        /// the client's interpolation delay ([`interpolation_delay_ms`]).
        snapshot_hz: u8,
        tick: u32,
    },
    ConnectDenied {
        reason: DenyReason,
    },
    Client(ClientPacket),
    Server(ServerPacket),
    Events(EventsPacket),
    Disconnect {
        session: u64,
    },
}

const T_CONNECT: u8 = 1;
const T_ACCEPTED: u8 = 2;
const T_DENIED: u8 = 3;
const T_CLIENT: u8 = 4;
const T_SERVER: u8 = 5;
const T_DISCONNECT: u8 = 6;
const T_EVENTS: u8 = 7;

impl Packet {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.encode_into(&mut out);
        out
    }

    /// Encodes into `out` (cleared first), reusing its capacity: the room's tick loop keeps
    /// its datagram buffers from tick to tick.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.clear();
        let mut w = Writer {
            buf: std::mem::take(out),
        };
        let prefix = |t: u8| (PROTOCOL_VERSION << 4) | t;
        match self {
            Packet::ConnectRequest { token } => {
                w.u8(prefix(T_CONNECT));
                let t = &token.as_bytes()[..token.len().min(CONNECT_REQUEST_LEN - 3)];
                w.u16(t.len() as u16);
                w.buf.extend_from_slice(t);
                w.buf.resize(CONNECT_REQUEST_LEN, 0);
            }
            Packet::ConnectAccepted {
                session,
                entity,
                tick_hz,
                snapshot_hz,
                tick,
            } => {
                w.u8(prefix(T_ACCEPTED));
                w.u64(*session);
                w.u16(*entity);
                w.u8(*tick_hz);
                w.u8(*snapshot_hz);
                w.u32(*tick);
            }
            Packet::ConnectDenied { reason } => {
                w.u8(prefix(T_DENIED));
                w.u8(*reason as u8);
            }
            Packet::Client(p) => {
                w.u8(prefix(T_CLIENT));
                w.u64(p.session);
                write_header(&mut w, &p.header, true);
                w.u8(p.inputs.len().min(MAX_INPUTS) as u8);
                // Inputs are consecutive in practice: the first seq in full, the rest as deltas.
                let mut prev = 0u32;
                for (i, input) in p.inputs.iter().take(MAX_INPUTS).enumerate() {
                    if i == 0 {
                        w.u32(input.seq);
                    } else {
                        w.varint(u64::from(input.seq.wrapping_sub(prev)));
                    }
                    prev = input.seq;
                    w.u8(input.move_x as u8);
                    w.u8(input.move_y as u8);
                    w.u16(input.aim);
                    w.u8(input.fire as u8);
                    w.u32(input.view_tick);
                    w.u8(input.view_frac);
                }
                write_reliable(&mut w, &p.reliable);
                w.u16(p.urgent_ack.latest);
                w.u32(p.urgent_ack.bits);
            }
            Packet::Server(p) => {
                w.u8(prefix(T_SERVER));
                w.u32(p.session);
                write_header(&mut w, &p.header, false);
                w.varint(u64::from(p.tick));
                w.varint(u64::from(p.last_processed_input));
                w.u16((p.own.x * 64.0).round().clamp(0.0, 65535.0) as u16);
                w.u16((p.own.y * 64.0).round().clamp(0.0, 65535.0) as u16);
                w.u16((p.own.vx * 128.0).round().clamp(-32768.0, 32767.0) as i16 as u16);
                w.u16((p.own.vy * 128.0).round().clamp(-32768.0, 32767.0) as i16 as u16);
                let has_reliable = p.reliable.ack_next.is_some() || !p.reliable.messages.is_empty();
                let has_urgent = !p.urgent.is_empty();
                w.u8(p.own.alive as u8 | (has_reliable as u8) << 1 | (has_urgent as u8) << 2);
                p.snapshot.write(&mut w, p.tick);
                if has_reliable {
                    write_reliable(&mut w, &p.reliable);
                }
                if has_urgent {
                    write_messages(&mut w, &p.urgent, urgent::MAX_URGENT);
                }
            }
            Packet::Events(p) => {
                w.u8(prefix(T_EVENTS));
                w.u32(p.session);
                write_header(&mut w, &p.header, false);
                w.varint(u64::from(p.tick));
                write_messages(&mut w, &p.urgent, urgent::MAX_URGENT);
            }
            Packet::Disconnect { session } => {
                w.u8(prefix(T_DISCONNECT));
                w.u64(*session);
            }
        }
        *out = w.buf;
    }

    pub fn decode(buf: &[u8]) -> Result<Packet, NetError> {
        if buf.len() > MAX_PACKET {
            return Err(NetError::TooLarge);
        }
        let mut r = Reader::new(buf);
        let prefix = r.u8()?;
        if prefix >> 4 != PROTOCOL_VERSION {
            return Err(NetError::BadVersion(prefix >> 4));
        }
        let packet = match prefix & 0x0f {
            T_CONNECT => {
                if buf.len() != CONNECT_REQUEST_LEN {
                    return Err(NetError::Invalid("connect request not padded"));
                }
                let n = r.u16()? as usize;
                let token = std::str::from_utf8(r.bytes(n)?)
                    .map_err(|_| NetError::Invalid("token is not UTF-8"))?
                    .to_owned();
                if r.bytes(r.remaining())?.iter().any(|&b| b != 0) {
                    return Err(NetError::Invalid("padding is not zero"));
                }
                Packet::ConnectRequest { token }
            }
            T_ACCEPTED => Packet::ConnectAccepted {
                session: r.u64()?,
                entity: r.u16()?,
                tick_hz: r.u8()?,
                snapshot_hz: r.u8()?,
                tick: r.u32()?,
            },
            T_DENIED => Packet::ConnectDenied {
                reason: DenyReason::from_u8(r.u8()?)?,
            },
            T_CLIENT => {
                let session = r.u64()?;
                let header = read_header(&mut r, true)?;
                let n = r.u8()? as usize;
                if n > MAX_INPUTS {
                    return Err(NetError::Invalid("too many inputs"));
                }
                let mut inputs = Vec::with_capacity(n);
                let mut prev = 0u32;
                for i in 0..n {
                    let seq = if i == 0 {
                        r.u32()?
                    } else {
                        let d = r.varint()?;
                        if d == 0 || d > u64::from(u32::MAX) {
                            return Err(NetError::Invalid("inputs out of order"));
                        }
                        prev.wrapping_add(d as u32)
                    };
                    prev = seq;
                    let move_x = r.u8()? as i8;
                    let move_y = r.u8()? as i8;
                    let aim = r.u16()?;
                    let fire = match r.u8()? {
                        0 => false,
                        1 => true,
                        _ => return Err(NetError::Invalid("fire flag")),
                    };
                    inputs.push(Input {
                        seq,
                        move_x,
                        move_y,
                        aim,
                        fire,
                        view_tick: r.u32()?,
                        view_frac: r.u8()?,
                    });
                }
                Packet::Client(ClientPacket {
                    session,
                    header,
                    inputs,
                    reliable: read_reliable(&mut r)?,
                    urgent_ack: UrgentAck {
                        latest: r.u16()?,
                        bits: r.u32()?,
                    },
                })
            }
            T_SERVER => {
                let session = r.u32()?;
                let header = read_header(&mut r, false)?;
                let tick = u32::try_from(r.varint()?).map_err(|_| NetError::Invalid("tick"))?;
                let last_processed_input =
                    u32::try_from(r.varint()?).map_err(|_| NetError::Invalid("input seq"))?;
                let (x, y) = (r.u16()?, r.u16()?);
                let (vx, vy) = (r.u16()? as i16, r.u16()? as i16);
                let flags = r.u8()?;
                if flags & !0b111 != 0 {
                    return Err(NetError::Invalid("server packet flags"));
                }
                let own = OwnState {
                    x: f32::from(x) / 64.0,
                    y: f32::from(y) / 64.0,
                    vx: f32::from(vx) / 128.0,
                    vy: f32::from(vy) / 128.0,
                    alive: flags & 1 != 0,
                };
                let snapshot = SnapshotDelta::read(&mut r, tick)?;
                let reliable = if flags & 2 != 0 {
                    let block = read_reliable(&mut r)?;
                    if block.ack_next.is_none() && block.messages.is_empty() {
                        return Err(NetError::Invalid("empty reliable block"));
                    }
                    block
                } else {
                    ReliableBlock::default()
                };
                let urgent = if flags & 4 != 0 {
                    let urgent = read_messages(&mut r, urgent::MAX_URGENT)?;
                    if urgent.is_empty() {
                        return Err(NetError::Invalid("empty urgent block"));
                    }
                    urgent
                } else {
                    Vec::new()
                };
                Packet::Server(ServerPacket {
                    session,
                    header,
                    tick,
                    last_processed_input,
                    own,
                    snapshot,
                    reliable,
                    urgent,
                })
            }
            T_EVENTS => Packet::Events(EventsPacket {
                session: r.u32()?,
                header: read_header(&mut r, false)?,
                tick: u32::try_from(r.varint()?).map_err(|_| NetError::Invalid("tick"))?,
                urgent: read_messages(&mut r, urgent::MAX_URGENT)?,
            }),
            T_DISCONNECT => Packet::Disconnect { session: r.u64()? },
            t => return Err(NetError::UnknownType(t)),
        };
        if r.remaining() != 0 {
            return Err(NetError::Trailing);
        }
        Ok(packet)
    }
}

/// Where a datagram's bytes go, for measuring the protocol (not on any hot path: it encodes
/// the parts again).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireParts {
    /// Prefix, session, sequence and acks, tick, the input acknowledged, the own body, flags.
    pub fixed: u64,
    /// The snapshot delta with its baseline.
    pub entities: u64,
    pub reliable: u64,
    pub urgent: u64,
}

impl WireParts {
    pub fn add(&mut self, other: WireParts) {
        self.fixed += other.fixed;
        self.entities += other.entities;
        self.reliable += other.reliable;
        self.urgent += other.urgent;
    }

    pub fn total(&self) -> u64 {
        self.fixed + self.entities + self.reliable + self.urgent
    }
}

impl Packet {
    /// How this packet's encoded bytes split into [`WireParts`].
    pub fn wire_parts(&self) -> WireParts {
        let total = self.encode().len() as u64;
        let measure = |f: &dyn Fn(&mut Writer)| {
            let mut w = Writer::with_capacity(256);
            f(&mut w);
            w.buf.len() as u64
        };
        let mut parts = WireParts::default();
        match self {
            Packet::Server(p) => {
                parts.entities = measure(&|w| p.snapshot.write(w, p.tick));
                if p.reliable.ack_next.is_some() || !p.reliable.messages.is_empty() {
                    parts.reliable = measure(&|w| write_reliable(w, &p.reliable));
                }
                if !p.urgent.is_empty() {
                    parts.urgent = measure(&|w| write_messages(w, &p.urgent, urgent::MAX_URGENT));
                }
            }
            Packet::Events(p) => {
                parts.urgent = measure(&|w| write_messages(w, &p.urgent, urgent::MAX_URGENT));
            }
            _ => {}
        }
        parts.fixed = total - parts.entities - parts.reliable - parts.urgent;
        parts
    }
}

/// `wide`: the 32 ack bits a client packet carries (the server picks snapshot baselines from
/// them), else the 16 of a server packet (the client only times round trips with them).
fn write_header(w: &mut Writer, h: &Header, wide: bool) {
    w.u16(h.seq);
    w.u16(h.ack);
    if wide {
        w.u32(h.ack_bits);
    } else {
        w.u16(h.ack_bits as u16);
    }
}

fn read_header(r: &mut Reader, wide: bool) -> Result<Header, NetError> {
    Ok(Header {
        seq: r.u16()?,
        ack: r.u16()?,
        ack_bits: if wide { r.u32()? } else { u32::from(r.u16()?) },
    })
}

const M_INFO: u8 = 1;
const M_GONE: u8 = 2;
const M_FIRE: u8 = 3;
// 4 was a hit of its own (protocol 2); a fire now names its victim.
const M_DEATH: u8 = 5;
const M_PICKUP: u8 = 6;
const M_CHAT: u8 = 7;
const M_ENDED: u8 = 8;

impl Message {
    /// Bytes this message takes on the wire with its id counted in full (for packet budgets:
    /// an id after the first in a packet usually takes one byte, not two).
    pub fn encoded_len(&self) -> usize {
        let mut w = Writer::with_capacity(32);
        write_message(&mut w, self);
        w.buf.len() + 2
    }
}

fn write_message(w: &mut Writer, m: &Message) {
    match m {
        Message::PlayerInfo {
            entity,
            player,
            name,
            bot,
        } => {
            w.u8(M_INFO);
            w.varint(u64::from(*entity));
            w.str(player);
            w.str(name);
            w.u8(*bot as u8);
        }
        Message::PlayerGone { entity } => {
            w.u8(M_GONE);
            w.varint(u64::from(*entity));
        }
        Message::Fire {
            entity,
            x0,
            y0,
            x1,
            y1,
            victim,
        } => {
            w.u8(M_FIRE);
            // Bit-packed: the shooter and the start in 10-bit groups (one on the 1000-unit
            // arena), the end as a move from the start (a shot reaches 380 units: sign and
            // 9-bit groups), the victim after a flag: 7 or 8 bytes where whole fields took 10.
            let mut bits = BitWriter::new(&mut w.buf);
            bits.uvar(u32::from(*entity), 6);
            bits.uvar(u32::from(*x0), 10);
            bits.uvar(u32::from(*y0), 10);
            bits.signed(i32::from(*x1) - i32::from(*x0), 9);
            bits.signed(i32::from(*y1) - i32::from(*y0), 9);
            bits.flag(victim.is_some());
            if let Some(v) = victim {
                bits.uvar(u32::from(*v), 6);
            }
            bits.finish();
        }
        Message::Death { victim, killer } => {
            w.u8(M_DEATH);
            w.varint(u64::from(*victim));
            w.varint(u64::from(*killer));
        }
        Message::Pickup { entity } => {
            w.u8(M_PICKUP);
            w.varint(u64::from(*entity));
        }
        Message::Chat { entity, text } => {
            w.u8(M_CHAT);
            w.varint(u64::from(*entity));
            w.str(text);
        }
        Message::MatchEnded => w.u8(M_ENDED),
    }
}

fn entity_id(r: &mut Reader) -> Result<u16, NetError> {
    u16::try_from(r.varint()?).map_err(|_| NetError::Invalid("entity id"))
}

fn read_message(r: &mut Reader) -> Result<Message, NetError> {
    Ok(match r.u8()? {
        M_INFO => Message::PlayerInfo {
            entity: entity_id(r)?,
            player: r.str()?,
            name: r.str()?,
            bot: r.u8()? != 0,
        },
        M_GONE => Message::PlayerGone {
            entity: entity_id(r)?,
        },
        M_FIRE => {
            let mut bits = BitReader::new(r.rest());
            let id = |bits: &mut BitReader, chunk| {
                u16::try_from(bits.uvar(chunk)?).map_err(|_| NetError::Invalid("fire field"))
            };
            let entity = id(&mut bits, 6)?;
            let (x0, y0) = (id(&mut bits, 10)?, id(&mut bits, 10)?);
            let end = |bits: &mut BitReader, from: u16| {
                i32::from(from)
                    .checked_add(bits.signed(9)?)
                    .and_then(|v| u16::try_from(v).ok())
                    .ok_or(NetError::Invalid("shot end"))
            };
            let x1 = end(&mut bits, x0)?;
            let y1 = end(&mut bits, y0)?;
            let victim = if bits.flag()? {
                Some(id(&mut bits, 6)?)
            } else {
                None
            };
            let used = bits.finish()?;
            r.bytes(used)?;
            Message::Fire {
                entity,
                x0,
                y0,
                x1,
                y1,
                victim,
            }
        }
        M_DEATH => Message::Death {
            victim: entity_id(r)?,
            killer: entity_id(r)?,
        },
        M_PICKUP => Message::Pickup {
            entity: entity_id(r)?,
        },
        M_CHAT => {
            let entity = entity_id(r)?;
            let text = r.str()?;
            if text.len() > MAX_CHAT {
                return Err(NetError::Invalid("chat message too long"));
            }
            Message::Chat { entity, text }
        }
        M_ENDED => Message::MatchEnded,
        _ => return Err(NetError::Invalid("unknown message type")),
    })
}

/// The ack rides in the count byte's top bit (counts stay below 128), so a block with no ack
/// costs nothing over its messages.
const ACK_PRESENT: u8 = 0x80;

fn write_reliable(w: &mut Writer, b: &ReliableBlock) {
    let n = b.messages.len().min(MAX_MESSAGES);
    w.u8(n as u8 | if b.ack_next.is_some() { ACK_PRESENT } else { 0 });
    if let Some(ack) = b.ack_next {
        w.u16(ack);
    }
    write_message_list(w, &b.messages[..n]);
}

fn read_reliable(r: &mut Reader) -> Result<ReliableBlock, NetError> {
    let count = r.u8()?;
    let ack_next = if count & ACK_PRESENT != 0 {
        Some(r.u16()?)
    } else {
        None
    };
    let messages = read_message_list(r, usize::from(count & !ACK_PRESENT), MAX_MESSAGES)?;
    Ok(ReliableBlock { ack_next, messages })
}

/// A count (at most `max`), then the messages.
fn write_messages(w: &mut Writer, messages: &[(u16, Message)], max: usize) {
    let n = messages.len().min(max);
    w.u8(n as u8);
    write_message_list(w, &messages[..n]);
}

fn read_messages(r: &mut Reader, max: usize) -> Result<Vec<(u16, Message)>, NetError> {
    let n = usize::from(r.u8()?);
    read_message_list(r, n, max)
}

/// Each message with its id: the first id in full, each later one as its distance from the
/// one before (ids are consecutive in practice: one byte).
fn write_message_list(w: &mut Writer, messages: &[(u16, Message)]) {
    let mut prev = 0u16;
    for (i, (id, m)) in messages.iter().enumerate() {
        if i == 0 {
            w.u16(*id);
        } else {
            w.varint(u64::from(id.wrapping_sub(prev)));
        }
        prev = *id;
        write_message(w, m);
    }
}

fn read_message_list(
    r: &mut Reader,
    n: usize,
    max: usize,
) -> Result<Vec<(u16, Message)>, NetError> {
    if n > max {
        return Err(NetError::Invalid("too many messages"));
    }
    let mut messages = Vec::with_capacity(n);
    let mut prev = 0u16;
    for i in 0..n {
        let id = if i == 0 {
            r.u16()?
        } else {
            let gap = u16::try_from(r.varint()?).map_err(|_| NetError::Invalid("message id"))?;
            prev.wrapping_add(gap)
        };
        prev = id;
        messages.push((id, read_message(r)?));
    }
    Ok(messages)
}

#[cfg(test)]
mod tests;

/// The lossy links of the channel tests draw from this, so every run is the same.
#[cfg(test)]
pub(crate) mod test_rng {
    /// SplitMix64.
    pub struct Rng(pub u64);

    impl Rng {
        /// Uniform in [0, 1).
        pub fn unit(&mut self) -> f64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        }
    }
}
