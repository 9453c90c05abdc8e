//! The snapshot a player is sent each snapshot tick, as a plain function of the world and the
//! player's session: the entities in its area of interest (near ones refreshed every snapshot,
//! far ones in turn), delta-compressed against the newest snapshot the player acknowledged,
//! its own body at full precision, and as many reliable messages as fit.

use std::sync::Arc;

use arena::aoi::{self, Grid, InterestConfig};
use arena::Player;
use protocol::net::{
    EntityState, EventsPacket, OwnState, Packet, ReliableBlock, ServerPacket, SnapshotDelta,
    MAX_PACKET,
};

use crate::session::Client;
#[cfg(doc)]
use protocol::net::urgent::UrgentSender;

/// Bytes of reliable messages allowed in one snapshot packet.
pub const RELIABLE_BUDGET: usize = 400;
/// Bytes of urgent events allowed in one packet (about 20 fires).
pub const URGENT_BUDGET: usize = 360;

/// What every player's snapshot of one tick is built from, computed once per tick.
pub struct SnapshotTick<'a> {
    /// Counts snapshot ticks: far entities are refreshed in turn by it.
    pub number: u64,
    pub tick: u32,
    pub now_ms: u64,
    pub grid: &'a Grid,
    /// Every entity's state now, by entity id.
    pub current: &'a [Option<EntityState>],
    pub interest: &'a InterestConfig,
    /// Delta-compress against the acknowledged baseline (off: every snapshot is full).
    pub delta: bool,
}

impl SnapshotTick<'_> {
    /// The datagram for `client`, whose body is `me`, encoded into `out`, updating its
    /// session (what it sees, the snapshot recorded as a future baseline, reliable messages
    /// marked sent). False when even without messages the snapshot does not fit a datagram:
    /// it is skipped, and the next one, against the same baseline, replaces it. Works in
    /// `scratch` and `out`, whose buffers outlive the call, so the steady state allocates
    /// little.
    pub fn packet_for(
        &self,
        client: &mut Client,
        me: &Player,
        scratch: &mut Scratch,
        out: &mut Vec<u8>,
    ) -> bool {
        aoi::interest_into(
            self.grid,
            client.entity,
            (me.body.x, me.body.y),
            &client.visible,
            self.number,
            self.interest,
            &mut scratch.around,
            &mut scratch.interest,
        );
        let interest = &scratch.interest;
        let baseline = if self.delta { client.baseline() } else { None };
        let base: &[(u16, EntityState)] = baseline.as_ref().map_or(&[], |(_, b)| b);
        // Entities not due for a refresh keep the state the client already has.
        let mut held = client.recycled_entities();
        let entities = Arc::get_mut(&mut held).expect("a recycled buffer is held by no one else");
        // All three lists ascend by id: one walk, no search per entity.
        let (mut due, mut held_state) =
            (interest.refresh.iter().peekable(), base.iter().peekable());
        for &id in &interest.visible {
            let refresh = due.next_if_eq(&&id).is_some();
            while held_state.next_if(|e| e.0 < id).is_some() {}
            let kept = match held_state.peek() {
                Some(&&(bid, state)) if !refresh && bid == id => Some(state),
                _ => None,
            };
            if let Some(mut s) =
                kept.or_else(|| self.current.get(usize::from(id)).copied().flatten())
            {
                if id == client.entity {
                    // The player's own body goes once, exact, in the fixed part, and its aim
                    // is its own: its entry carries only health, flags and score, so it
                    // changes (and costs bytes) only when they do.
                    (s.x, s.y, s.angle) = (0, 0, 0);
                }
                entities.push((id, s));
            }
        }
        let mut packet = ServerPacket {
            session: client.session as u32,
            header: Default::default(),
            tick: self.tick,
            last_processed_input: me.last_input,
            own: OwnState {
                x: me.body.x,
                y: me.body.y,
                vx: me.body.vx,
                vy: me.body.vy,
                alive: me.alive,
            },
            snapshot: std::mem::take(&mut scratch.delta),
            reliable: ReliableBlock::default(),
            urgent: std::mem::take(&mut scratch.urgent),
        };
        packet
            .snapshot
            .set_between(baseline.as_ref().map(|b| b.0), base, entities);
        drop(baseline);
        // The client's view becomes this snapshot's; its old buffer is the next one's scratch.
        std::mem::swap(&mut client.visible, &mut scratch.interest.visible);
        packet.header = client.next_header(self.tick, held, self.now_ms);
        let resend = client.resend_after_ms();
        packet.reliable = ReliableBlock {
            ack_next: client.reliable_ack_to_send(),
            messages: client
                .reliable_out
                .outgoing(self.now_ms, resend, RELIABLE_BUDGET),
        };
        client
            .urgent_out
            .outgoing_into(self.now_ms, URGENT_BUDGET, &mut packet.urgent);
        let mut packet = Packet::Server(packet);
        packet.encode_into(out);
        let Packet::Server(p) = &mut packet else {
            unreachable!("built above")
        };
        // Too much at once for one datagram: the reliable messages wait for the next packet
        // (they are resent until acknowledged), then the urgent ones (repeated anyway).
        if out.len() > MAX_PACKET {
            p.reliable.messages.clear();
            packet.encode_into(out);
        }
        let Packet::Server(p) = &mut packet else {
            unreachable!("built above")
        };
        if out.len() > MAX_PACKET {
            p.urgent.clear();
            packet.encode_into(out);
        }
        let Packet::Server(p) = packet else {
            unreachable!("built above")
        };
        scratch.delta = p.snapshot;
        scratch.urgent = p.urgent;
        out.len() <= MAX_PACKET
    }
}

/// Buffers one room reuses for every player's snapshot, tick after tick.
#[derive(Default)]
pub struct Scratch {
    around: Vec<(u16, f32)>,
    interest: aoi::Interest,
    delta: SnapshotDelta,
    urgent: Vec<(u16, protocol::net::Message)>,
}

/// [`events_packet_into`] with buffers of its own, for tests.
#[cfg(test)]
pub fn events_packet_for(
    client: &mut Client,
    tick: u32,
    now_ms: u64,
    between_ticks: bool,
) -> Option<Vec<u8>> {
    events_packet_into(
        client,
        tick,
        now_ms,
        between_ticks,
        &mut Scratch::default(),
        &mut Vec::new(),
    )
}

/// The datagram carrying `client`'s urgent events on a tick without a snapshot, when one of them
/// has gone out in no packet yet, or in only one a 30 Hz tick ago or more
/// ([`UrgentSender::wants_a_packet`]: a lost first copy is repeated about a 30 Hz tick later;
/// later repeats wait for the next snapshot). `between_ticks`: only an event no packet has
/// carried yet is worth a datagram of its own; repeats wait for the tick's packet.
///
/// Built in the room's buffers: the events list is the scratch's, the datagram a spare one
/// when there is one. Acting on commands as they arrive sends about 25 of these a second to
/// each player, and building the list and the bytes afresh (about five allocations as the
/// list grew) was most of what the server allocated in the steady state.
pub fn events_packet_into(
    client: &mut Client,
    tick: u32,
    now_ms: u64,
    between_ticks: bool,
    scratch: &mut Scratch,
    spare: &mut Vec<Vec<u8>>,
) -> Option<Vec<u8>> {
    let wanted = if between_ticks {
        client.urgent_out.has_unsent()
    } else {
        client.urgent_out.wants_a_packet(now_ms)
    };
    if !wanted {
        return None;
    }
    client
        .urgent_out
        .outgoing_into(now_ms, URGENT_BUDGET, &mut scratch.urgent);
    let packet = Packet::Events(EventsPacket {
        session: client.session as u32,
        header: client.next_events_header(now_ms),
        tick,
        urgent: std::mem::take(&mut scratch.urgent),
    });
    let mut out = spare.pop().unwrap_or_default();
    packet.encode_into(&mut out);
    if let Packet::Events(p) = packet {
        scratch.urgent = p.urgent;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use arena::{World, WorldConfig};
    use protocol::net::Message;

    use super::*;

    fn world_with_bots(n: usize) -> World {
        let mut world = World::new(7, WorldConfig::default());
        for i in 0..n {
            world.add_bot(format!("m-bot{i}"), format!("Bot {i}"));
        }
        world
    }

    fn tick_of<'a>(
        world: &World,
        grid: &'a Grid,
        current: &'a [Option<EntityState>],
        interest: &'a InterestConfig,
        number: u64,
    ) -> SnapshotTick<'a> {
        SnapshotTick {
            number,
            tick: world.tick as u32,
            now_ms: 1_000 + number * 33,
            grid,
            current,
            interest,
            delta: true,
        }
    }

    fn current_of(world: &World) -> Vec<Option<EntityState>> {
        let mut current = vec![None; 512];
        for p in &world.players {
            current[usize::from(p.entity)] = Some(p.entity_state());
        }
        current
    }

    fn packet(tick: &SnapshotTick, client: &mut Client, me: &Player) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        tick.packet_for(client, me, &mut Scratch::default(), &mut out)
            .then_some(out)
    }

    fn decode(bytes: &[u8]) -> ServerPacket {
        match Packet::decode(bytes).expect("a valid datagram") {
            Packet::Server(p) => p,
            other => panic!("not a server packet: {other:?}"),
        }
    }

    #[test]
    fn a_player_is_sent_what_it_can_see_and_its_own_body() {
        let mut world = world_with_bots(12);
        // Spread them out: the player at one corner, a neighbour close by, the rest far away.
        for (i, p) in world.players.iter_mut().enumerate() {
            (p.body.x, p.body.y) = match i {
                0 => (100.0, 100.0),
                1 => (150.0, 120.0),
                _ => (900.0, 900.0 - i as f32),
            };
        }
        let grid = Grid::build(world.players.iter().map(|p| (p.entity, p.body.x, p.body.y)));
        let current = current_of(&world);
        let interest = InterestConfig::default();
        let me = world.players[0].clone();
        let mut client = Client::new(
            SocketAddr::from(([127, 0, 0, 1], 9)),
            77,
            me.entity,
            me.id.clone(),
            0,
        );
        let tick = tick_of(&world, &grid, &current, &interest, 1);
        let bytes = packet(&tick, &mut client, &me).expect("fits");
        let p = decode(&bytes);
        assert_eq!(p.session, 77);
        assert!((p.own.x - 100.0).abs() < 0.1 && (p.own.y - 100.0).abs() < 0.1);
        // The body goes once: the own entry carries health, flags and score, no position.
        let own = p.snapshot.apply(&[]).unwrap();
        let own = own.iter().find(|e| e.0 == me.entity).unwrap().1;
        assert_eq!((own.x, own.y, own.angle), (0, 0, 0));
        assert_eq!((own.hp, own.alive()), (me.hp, me.alive));
        let neighbour = world.players[1].entity;
        let far = world.players[5].entity;
        assert!(client.visible.contains(&neighbour), "{:?}", client.visible);
        assert!(!client.visible.contains(&far), "{:?}", client.visible);
        assert!(bytes.len() <= MAX_PACKET);
    }

    #[test]
    fn between_snapshots_an_event_goes_at_once_and_again_a_30_hz_tick_later_then_waits() {
        let mut client = Client::new(
            SocketAddr::from(([127, 0, 0, 1], 9)),
            77,
            1,
            "m-p1".into(),
            0,
        );
        assert!(
            events_packet_for(&mut client, 10, 1_000, false).is_none(),
            "nothing to send"
        );
        client.urgent_out.send(Message::Pickup { entity: 3 }, 1_000);
        let carried = |bytes: Option<Vec<u8>>| match Packet::decode(&bytes.expect("a datagram")) {
            Ok(Packet::Events(p)) => p.urgent.into_iter().map(|(_, m)| m).collect::<Vec<_>>(),
            other => panic!("not an events datagram: {other:?}"),
        };
        let pickup = vec![Message::Pickup { entity: 3 }];
        assert_eq!(
            carried(events_packet_for(&mut client, 10, 1_000, false)),
            pickup
        );
        // Its first copy may be lost: the second leaves a 30 Hz tick later, not sooner (at
        // faster ticks a snapshot may well carry it first).
        assert!(
            events_packet_for(&mut client, 11, 1_008, false).is_none(),
            "too soon"
        );
        // Between ticks, only a first copy is worth a datagram of its own.
        assert!(events_packet_for(&mut client, 11, 1_033, true).is_none());
        assert_eq!(
            carried(events_packet_for(&mut client, 12, 1_033, false)),
            pickup
        );
        assert!(
            events_packet_for(&mut client, 13, 1_066, false).is_none(),
            "later copies ride the snapshots"
        );
        client.urgent_out.send(Message::Pickup { entity: 4 }, 1_070);
        assert!(
            carried(events_packet_for(&mut client, 13, 1_070, true))
                .contains(&Message::Pickup { entity: 4 }),
            "a new event leaves between ticks"
        );
    }

    #[test]
    fn far_entities_keep_the_acknowledged_state_until_their_turn() {
        let mut world = world_with_bots(3);
        for (i, p) in world.players.iter_mut().enumerate() {
            (p.body.x, p.body.y) = [(100.0, 100.0), (150.0, 120.0), (400.0, 100.0)][i];
        }
        let interest = InterestConfig::default();
        let me = world.players[0].clone();
        let (near, far) = (world.players[1].entity, world.players[2].entity);
        let mut client = Client::new(
            SocketAddr::from(([127, 0, 0, 1], 9)),
            77,
            me.entity,
            me.id.clone(),
            0,
        );
        let grid = Grid::build(world.players.iter().map(|p| (p.entity, p.body.x, p.body.y)));
        let current = current_of(&world);
        let first = decode(
            &packet(
                &tick_of(&world, &grid, &current, &interest, 1),
                &mut client,
                &me,
            )
            .unwrap(),
        );
        let held = first.snapshot.apply(&[]).unwrap();
        let state_of = |entities: &[(u16, EntityState)], id: u16| {
            entities.iter().find(|e| e.0 == id).map(|e| e.1)
        };
        let (near_then, far_then) = (
            state_of(&held, near).unwrap(),
            state_of(&held, far).unwrap(),
        );
        // The client acknowledges it: it becomes the baseline.
        client.on_packet(
            protocol::net::ClientPacket {
                session: 77,
                header: protocol::net::Header {
                    seq: 0,
                    ack: first.header.seq,
                    ack_bits: 0,
                },
                inputs: Vec::new(),
                reliable: Default::default(),
                urgent_ack: Default::default(),
            },
            1_100,
        );
        // Everyone moves a little and turns.
        for p in world.players.iter_mut() {
            p.body.y += 5.0;
            p.angle += 0.5;
        }
        let grid = Grid::build(world.players.iter().map(|p| (p.entity, p.body.x, p.body.y)));
        let current = current_of(&world);
        let due = |number: u64| (number + u64::from(far)).is_multiple_of(interest.far_every);
        let (skip, turn) = (
            (2..).find(|&n| !due(n)).unwrap(),
            (2..).find(|&n| due(n)).unwrap(),
        );
        let rebuilt = |client: &mut Client, number| {
            let p = decode(
                &packet(
                    &tick_of(&world, &grid, &current, &interest, number),
                    client,
                    &me,
                )
                .unwrap(),
            );
            assert_eq!(p.snapshot.baseline, Some(first.tick));
            // The player moved too, but its body is in the fixed part: no change for its entry.
            assert!(
                p.snapshot.changes.iter().all(|c| match *c {
                    protocol::net::EntityChange::Full(id, _)
                    | protocol::net::EntityChange::Fields { id, .. } => id != me.entity,
                }),
                "{:?}",
                p.snapshot.changes
            );
            p.snapshot.apply(&held).unwrap()
        };
        let not_due = rebuilt(&mut client, skip);
        assert_ne!(
            state_of(&not_due, near),
            Some(near_then),
            "a near one is refreshed"
        );
        assert_eq!(
            state_of(&not_due, far),
            Some(far_then),
            "a far one waits its turn"
        );
        let in_turn = rebuilt(&mut client, turn);
        assert_eq!(state_of(&in_turn, far), current[usize::from(far)]);
    }

    #[test]
    fn reliable_messages_beyond_the_budget_wait_for_the_next_packet() {
        let world = world_with_bots(2);
        let grid = Grid::build(world.players.iter().map(|p| (p.entity, p.body.x, p.body.y)));
        let current = current_of(&world);
        let interest = InterestConfig::default();
        let me = world.players[0].clone();
        let mut client = Client::new(
            SocketAddr::from(([127, 0, 0, 1], 9)),
            5,
            me.entity,
            me.id.clone(),
            0,
        );
        for _ in 0..40 {
            let text = "x".repeat(protocol::net::MAX_CHAT);
            client
                .reliable_out
                .send(Message::Chat { entity: 1, text })
                .unwrap();
        }
        let tick = tick_of(&world, &grid, &current, &interest, 1);
        let p = decode(&packet(&tick, &mut client, &me).expect("fits"));
        // As many as the budget allows go in this packet; the rest wait, none is lost.
        let sent = p.reliable.messages.len();
        assert!(sent > 0 && sent < 40, "{sent}");
    }
}
