use proptest::prelude::*;

use super::*;

fn entity() -> impl Strategy<Value = EntityState> {
    (
        prop_oneof![0u16..=1000, any::<u16>()],
        prop_oneof![0u16..=1000, any::<u16>()],
        any::<u8>(),
        0u8..=100,
        0u8..4,
        any::<u16>(),
    )
        .prop_map(|(x, y, angle, hp, flags, score)| EntityState {
            x,
            y,
            angle,
            hp,
            flags,
            score,
        })
}

fn entities() -> impl Strategy<Value = Vec<(u16, EntityState)>> {
    proptest::collection::btree_map(0u16..300, entity(), 0..60)
        .prop_map(|m| m.into_iter().collect())
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u16>(), "[a-z0-9-]{0,20}", "\\PC{0,20}", any::<bool>()).prop_map(
            |(entity, player, name, bot)| Message::PlayerInfo {
                entity,
                player,
                name,
                bot
            }
        ),
        any::<u16>().prop_map(|entity| Message::PlayerGone { entity }),
        (any::<u16>(), any::<[u16; 4]>(), any::<Option<u16>>()).prop_map(|(entity, p, victim)| {
            Message::Fire {
                entity,
                x0: p[0],
                y0: p[1],
                x1: p[2],
                y1: p[3],
                victim,
            }
        }),
        (any::<u16>(), any::<u16>()).prop_map(|(victim, killer)| Message::Death { victim, killer }),
        any::<u16>().prop_map(|entity| Message::Pickup { entity }),
        (any::<u16>(), "\\PC{0,40}").prop_map(|(entity, text)| Message::Chat { entity, text }),
        Just(Message::MatchEnded),
    ]
}

fn reliable() -> impl Strategy<Value = ReliableBlock> {
    (
        any::<Option<u16>>(),
        proptest::collection::vec((any::<u16>(), message()), 0..6),
    )
        .prop_map(|(ack_next, messages)| ReliableBlock { ack_next, messages })
}

/// A client packet's header (32 ack bits).
fn header() -> impl Strategy<Value = Header> {
    (any::<u16>(), any::<u16>(), any::<u32>()).prop_map(|(seq, ack, ack_bits)| Header {
        seq,
        ack,
        ack_bits,
    })
}

/// A server packet's header (16 ack bits).
fn server_header() -> impl Strategy<Value = Header> {
    (any::<u16>(), any::<u16>(), any::<u16>()).prop_map(|(seq, ack, ack_bits)| Header {
        seq,
        ack,
        ack_bits: u32::from(ack_bits),
    })
}

fn input() -> impl Strategy<Value = Input> {
    (
        any::<i8>(),
        any::<i8>(),
        any::<u16>(),
        any::<bool>(),
        any::<u32>(),
        any::<u8>(),
    )
        .prop_map(|(move_x, move_y, aim, fire, view_tick, view_frac)| Input {
            seq: 0,
            move_x,
            move_y,
            aim,
            fire,
            view_tick,
            view_frac,
        })
}

fn packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        "[A-Za-z0-9._-]{0,400}".prop_map(|token| Packet::ConnectRequest { token }),
        (
            any::<u64>(),
            any::<u16>(),
            any::<u8>(),
            any::<u8>(),
            any::<u32>()
        )
            .prop_map(|(session, entity, tick_hz, snapshot_hz, tick)| {
                Packet::ConnectAccepted {
                    session,
                    entity,
                    tick_hz,
                    snapshot_hz,
                    tick,
                }
            }),
        Just(Packet::ConnectDenied {
            reason: DenyReason::Replayed
        }),
        (
            any::<u64>(),
            header(),
            any::<u32>(),
            proptest::collection::vec(input(), 0..=MAX_INPUTS),
            reliable(),
            any::<(u16, u32)>(),
        )
            .prop_map(
                |(session, header, first, mut inputs, reliable, (latest, bits))| {
                    for (i, input) in inputs.iter_mut().enumerate() {
                        input.seq = first.wrapping_add(i as u32);
                    }
                    Packet::Client(ClientPacket {
                        session,
                        header,
                        inputs,
                        reliable,
                        urgent_ack: UrgentAck { latest, bits },
                    })
                }
            ),
        (
            any::<u32>(),
            server_header(),
            any::<(u32, u32)>(),
            (any::<u16>(), any::<u16>(), any::<i16>(), any::<bool>()),
            entities(),
            entities(),
            reliable(),
            proptest::collection::vec((any::<u16>(), message()), 0..=urgent::MAX_URGENT),
        )
            .prop_map(
                |(session, header, (tick, lpi), own, base, cur, reliable, urgent)| {
                    Packet::Server(ServerPacket {
                        session,
                        header,
                        tick,
                        last_processed_input: lpi,
                        own: OwnState {
                            x: f32::from(own.0) / 64.0,
                            y: f32::from(own.1) / 64.0,
                            vx: f32::from(own.2) / 128.0,
                            vy: f32::from(own.2.saturating_neg()) / 128.0,
                            alive: own.3,
                        },
                        snapshot: SnapshotDelta::between(Some(tick.wrapping_sub(3)), &base, &cur),
                        reliable,
                        urgent,
                    })
                }
            ),
        (
            any::<u32>(),
            server_header(),
            any::<u32>(),
            proptest::collection::vec((any::<u16>(), message()), 0..=urgent::MAX_URGENT),
        )
            .prop_map(
                |(session, header, tick, urgent)| Packet::Events(EventsPacket {
                    session,
                    header,
                    tick,
                    urgent
                })
            ),
        any::<u64>().prop_map(|session| Packet::Disconnect { session }),
    ]
}

proptest! {
    #[test]
    fn delta_against_a_baseline_rebuilds_the_snapshot(base in entities(), cur in entities()) {
        let delta = SnapshotDelta::between(Some(7), &base, &cur);
        prop_assert_eq!(delta.apply(&base).unwrap(), cur.clone());
        // And with no baseline, the full state.
        let full = SnapshotDelta::between(None, &[], &cur);
        prop_assert_eq!(full.apply(&[]).unwrap(), cur);
    }

    #[test]
    fn packets_survive_the_wire(p in packet()) {
        let bytes = p.encode();
        prop_assert!(bytes.len() <= MAX_PACKET || matches!(p, Packet::Server(_)));
        if bytes.len() <= MAX_PACKET {
            prop_assert_eq!(Packet::decode(&bytes).unwrap(), p);
        }
    }

    /// The decoder's fuzz contract in CI-sized form: arbitrary bytes, and valid packets with
    /// bytes flipped or cut, give a packet or an error, never a panic.
    #[test]
    fn hostile_bytes_never_panic(junk in proptest::collection::vec(any::<u8>(), 0..1300)) {
        let _ = Packet::decode(&junk);
        let mut prefixed = vec![(PROTOCOL_VERSION << 4) | 5];
        prefixed.extend_from_slice(&junk);
        let _ = Packet::decode(&prefixed);
    }

    #[test]
    fn mutated_packets_never_panic(p in packet(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8), cut in any::<usize>()) {
        let mut bytes = p.encode();
        for (at, v) in flips {
            let n = bytes.len();
            bytes[at % n] ^= v;
        }
        if let Ok(Packet::Server(s)) = Packet::decode(&bytes) {
            let _ = s.snapshot.apply(&[]);
        }
        let n = bytes.len();
        let _ = Packet::decode(&bytes[..cut % (n + 1)]);
    }
}

#[test]
fn unchanged_entities_cost_nothing_and_moves_are_small() {
    let base: Vec<(u16, EntityState)> = (0..20)
        .map(|i| {
            (
                i,
                EntityState {
                    x: 100 + i * 10,
                    y: 200,
                    angle: 3,
                    hp: 100,
                    flags: 1,
                    score: 2,
                },
            )
        })
        .collect();
    let same = SnapshotDelta::between(Some(1), &base, &base);
    assert!(same.changes.is_empty() && same.removed.is_empty());
    let mut moved = base.clone();
    moved[2].1.x += 27;
    moved[2].1.y -= 2;
    let d = SnapshotDelta::between(Some(1), &base, &moved);
    let mut w = codec::Writer::with_capacity(64);
    d.write(&mut w, 2);
    // Baseline (a byte), then bits: count 5, id 2 + 1, kind 2 and mask 6 (moved only), dx
    // 1 + 6, dy 2 + 3, removed count 4: 32 bits (38 in tenths of a unit, ids in 3-bit groups).
    assert_eq!(w.buf.len(), 1 + 4);
    // The common case, a body that moved and turned, says so in one bit: count 5, per body id
    // 3 (the first id, then the gap to it minus one), kind 1, dx 1 + 6, dy 2 + 3, angle 8 (24
    // bits), removed count 4.
    let mut turned = moved.clone();
    turned[2].1.angle += 9;
    turned[3].1.angle += 9;
    turned[3].1.x -= 30;
    turned[3].1.y += 2;
    let d = SnapshotDelta::between(Some(1), &base, &turned);
    assert_eq!(d.apply(&base).unwrap(), turned);
    let mut w = codec::Writer::with_capacity(64);
    d.write(&mut w, 2);
    assert_eq!(w.buf.len(), 1 + (5 + 2 * 24 + 4usize).div_ceil(8));
    // A respawn across the arena: 3 + 11 bits a coordinate (id 4: two 2-bit groups).
    let mut respawned = base.clone();
    respawned[4].1.x = 990;
    respawned[4].1.y = 15;
    let d = SnapshotDelta::between(Some(1), &base, &respawned);
    assert_eq!(d.apply(&base).unwrap(), respawned);
    let mut w = codec::Writer::with_capacity(64);
    d.write(&mut w, 2);
    assert_eq!(
        w.buf.len(),
        1 + (5 + 4 + 2 + 6 + 2 * 14 + 4usize).div_ceil(8)
    );
}

#[test]
fn specific_rejections() {
    assert_eq!(Packet::decode(b""), Err(NetError::Truncated));
    assert_eq!(Packet::decode(b"\x91"), Err(NetError::BadVersion(9)));
    // A protocol 2 datagram (it began with 'G') is told apart by its version.
    assert_eq!(Packet::decode(b"G\x25"), Err(NetError::BadVersion(4)));
    assert_eq!(Packet::decode(b"\x6e"), Err(NetError::UnknownType(0x0e)));
    // So is a protocol 3 one (positions in tenths), and a protocol 5 one (no snapshot rate in
    // the accept).
    assert_eq!(Packet::decode(b"\x33"), Err(NetError::BadVersion(3)));
    assert_eq!(Packet::decode(b"\x52"), Err(NetError::BadVersion(5)));
    assert_eq!(
        Packet::decode(&[0u8; MAX_PACKET + 1]),
        Err(NetError::TooLarge)
    );
    // A connect request that is not padded is refused (no amplification).
    let mut short = Packet::ConnectRequest { token: "t".into() }.encode();
    short.truncate(100);
    assert!(Packet::decode(&short).is_err());
    // Trailing garbage after a valid packet.
    let mut p = Packet::Disconnect { session: 5 }.encode();
    p.push(0);
    assert_eq!(Packet::decode(&p), Err(NetError::Trailing));
    // A forged entity count cannot make the decoder allocate.
    let mut w = codec::Writer::with_capacity(64);
    w.u8((PROTOCOL_VERSION << 4) | 5);
    w.u32(1);
    w.buf.extend_from_slice(&[0; 6]); // seq, ack, ack bits
    w.varint(10); // tick
    w.varint(0); // last processed input
    w.buf.extend_from_slice(&[0; 8]); // own body
    w.u8(1); // alive, no messages
    w.varint(0); // no baseline
    let mut bits = codec::BitWriter::new(&mut w.buf);
    bits.uvar(60_000, 4);
    bits.finish();
    w.buf.extend_from_slice(&[0; 64]);
    assert_eq!(
        Packet::decode(&w.buf),
        Err(NetError::Invalid("count over limit"))
    );
}

/// Found by `cargo fuzz run packet` (as a whole protocol 2 datagram): an entity-id gap near
/// u32::MAX overflowed the id sum (a panic in debug builds, a wrapped id in release). Written
/// here in the current layout: two changes, the first a whole state of entity 65535, the
/// second an id gap of u32::MAX.
#[test]
fn fuzz_regression_entity_id_delta_overflow() {
    let mut w = codec::Writer::with_capacity(64);
    w.varint(0); // no baseline
    let mut bits = codec::BitWriter::new(&mut w.buf);
    bits.uvar(2, 4);
    bits.uvar(65_535, 2);
    bits.bits(0b00, 2); // a whole state
    bits.uvar(0, 10);
    bits.uvar(0, 10);
    for width in [8, 8, 8] {
        bits.bits(0, width);
    }
    bits.uvar(0, 6);
    bits.uvar(u32::MAX, 2);
    bits.flag(true);
    bits.finish();
    w.buf.extend_from_slice(&[0; 16]);
    let mut r = codec::Reader::new(&w.buf);
    assert_eq!(
        SnapshotDelta::read(&mut r, 10),
        Err(NetError::Invalid("entity id"))
    );
}

/// Found by the `packet` fuzz target on 2026-12-05: a change in the widest size class (any
/// i32) added to a baseline field overflowed the sum (a panic in debug builds) before the
/// range check; now the error the range check gives.
#[test]
fn fuzz_regression_field_change_overflow() {
    let base = [(
        3,
        EntityState {
            x: 100,
            y: 50,
            angle: 1,
            hp: 100,
            flags: 1,
            score: 7,
        },
    )];
    for (mask, dx, dscore) in [(1, i32::MAX, 0), (1, i32::MIN, 0), (32, 0, i32::MAX)] {
        let delta = SnapshotDelta {
            baseline: Some(9),
            changes: vec![EntityChange::Fields {
                id: 3,
                mask,
                dx,
                dy: 0,
                angle: 0,
                hp: 0,
                flags: 0,
                dscore,
            }],
            removed: vec![],
        };
        assert_eq!(
            delta.apply(&base),
            Err(NetError::Invalid("delta out of range"))
        );
    }
}

/// What protocols 3 and 5 save on the packets a player receives most: a fire is 9 bytes where
/// it was 11 (protocol 3) and 14 with a hit of 7 more for its victim (protocol 2), a later
/// message id one byte where it was two, and a server packet with no reliable traffic carries
/// no reliable ack at all.
#[test]
fn the_common_messages_and_headers_are_small() {
    let fire = |id: u16, entity: u16| {
        (
            id,
            Message::Fire {
                entity,
                x0: 900,
                y0: 700,
                x1: 900 - 310,
                y1: 700 + 120,
                victim: Some(17),
            },
        )
    };
    let events = |urgent: Vec<(u16, Message)>| {
        Packet::Events(EventsPacket {
            session: 7,
            header: Header {
                seq: 100,
                ack: 90,
                ack_bits: 0xffff,
            },
            tick: 5_000,
            urgent,
        })
        .encode()
        .len()
    };
    // Prefix 1, session 4, seq/ack/bits 6, tick 2, count 1.
    assert_eq!(events(vec![]), 14);
    // The first message: its id (2) and 9 bytes (the type, then 7 + 11 + 11 bits for the
    // shooter and start, 11 + 11 for the move to the end, 1 + 7 for the victim: 59);
    // the next: its id gap (1) and 9.
    assert_eq!(events(vec![fire(40_000, 3)]), 14 + 2 + 9);
    assert_eq!(
        events(vec![fire(40_000, 3), fire(40_001, 5)]),
        14 + 2 + 9 + 1 + 9
    );
    // A miss over the same distance: 8.
    let mut miss = fire(40_000, 3);
    if let Message::Fire { victim, .. } = &mut miss.1 {
        *victim = None;
    }
    assert_eq!(events(vec![miss]), 14 + 2 + 8);
    let server = |reliable: ReliableBlock| {
        Packet::Server(ServerPacket {
            session: 7,
            header: Header::default(),
            tick: 5_000,
            last_processed_input: 4_000,
            own: OwnState::default(),
            snapshot: SnapshotDelta::default(),
            reliable,
            urgent: Vec::new(),
        })
        .encode()
        .len()
    };
    // Prefix 1, session 4, header 6, tick 2, input 2, body 8, flags 1, baseline 1, and the
    // empty change and removed counts (9 bits: 2 bytes).
    assert_eq!(server(ReliableBlock::default()), 27);
    assert_eq!(
        server(ReliableBlock {
            ack_next: Some(3),
            messages: Vec::new()
        }),
        27 + 3,
        "count byte and the ack, only while there is something to acknowledge"
    );
}

#[test]
fn the_interpolation_delay_rides_out_one_lost_snapshot() {
    let d = |hz| interpolation_delay_ms(hz, DEFAULT_INTERPOLATION_DELAY_MS);
    // At 30 snapshots a second the default already covers a loss (3 intervals = 100 ms).
    assert_eq!(d(30), 100);
    assert_eq!(d(60), 100);
    // Below it, two intervals and the jitter allowance.
    assert_eq!(d(20), 125);
    assert_eq!(d(15), 159);
    assert_eq!(d(10), 225);
    // A nonsense rate is one a second, not a division by zero.
    assert_eq!(d(0), 2025);
    // A caller's floor above that stands.
    assert_eq!(interpolation_delay_ms(15, 250), 250);
}
