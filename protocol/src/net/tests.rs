use proptest::prelude::*;

use super::*;

fn entity() -> impl Strategy<Value = EntityState> {
    (
        0u16..=10000,
        0u16..=10000,
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
        (any::<u16>(), any::<[u16; 4]>(), any::<bool>()).prop_map(|(entity, p, hit)| {
            Message::Fire {
                entity,
                x0: p[0],
                y0: p[1],
                x1: p[2],
                y1: p[3],
                hit,
            }
        }),
        (any::<u16>(), any::<u16>(), any::<u8>()).prop_map(|(shooter, victim, damage)| {
            Message::Hit {
                shooter,
                victim,
                damage,
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
        any::<u16>(),
        proptest::collection::vec((any::<u16>(), message()), 0..6),
    )
        .prop_map(|(ack_next, messages)| ReliableBlock { ack_next, messages })
}

fn header() -> impl Strategy<Value = Header> {
    (any::<u16>(), any::<u16>(), any::<u32>()).prop_map(|(seq, ack, ack_bits)| Header {
        seq,
        ack,
        ack_bits,
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
        (any::<u64>(), any::<u16>(), any::<u8>(), any::<u32>()).prop_map(
            |(session, entity, tick_hz, tick)| Packet::ConnectAccepted {
                session,
                entity,
                tick_hz,
                tick
            }
        ),
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
            header(),
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
            header(),
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
        let mut prefixed = vec![MAGIC, (PROTOCOL_VERSION << 4) | 5];
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
                    x: 1000 + i * 10,
                    y: 2000,
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
    moved[4].1.x += 37;
    moved[4].1.y -= 12;
    let d = SnapshotDelta::between(Some(1), &base, &moved);
    let mut w = codec::Writer::with_capacity(64);
    d.write(&mut w, 2);
    // Baseline (a byte), then bits: count 5, id 3 + 1, full flag 1, mask 6, dx 2 + 9,
    // dy 2 + 5, removed count 4: 38 bits.
    assert_eq!(w.buf.len(), 1 + 5);
}

#[test]
fn specific_rejections() {
    assert_eq!(Packet::decode(b""), Err(NetError::Truncated));
    assert_eq!(Packet::decode(b"XX\x01\x01"), Err(NetError::BadMagic));
    assert_eq!(Packet::decode(b"G\x91"), Err(NetError::BadVersion(9)));
    assert_eq!(Packet::decode(b"G\x2e"), Err(NetError::UnknownType(0x0e)));
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
    w.u8(MAGIC);
    w.u8((PROTOCOL_VERSION << 4) | 5);
    w.u32(1);
    w.buf.extend_from_slice(&[0; 8]); // seq, ack, ack bits
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

/// Found by `cargo fuzz run packet`: an entity-id delta near u64::MAX overflowed the id sum
/// (a panic in debug builds, a wrapped id in release). (Its version byte follows the protocol.)
#[test]
fn fuzz_regression_entity_id_delta_overflow() {
    let hex = "4725052a2a2a2a2a6a2a2a4753019b00000000005a5a2a2a2a2a2a2a2a2a2a2a2a2a6a2a2a4753019b000000002a090909090909090909090909092709090909090909090909090909090947530106018000cb2a2a2a2a2a09f7ffffffffffffffff0909f3fffff3ff53";
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    assert!(Packet::decode(&bytes).is_err());
}
