//! The client's protocol state machine, free of I/O and clocks (time is passed in), so it can
//! be driven by a real socket, a lossy simulated link, or a test.
//!
//! - **Prediction**: each input is applied to the local body at once with the server's own
//!   movement code, so the player's avatar answers without waiting a round trip.
//! - **Reconciliation**: a snapshot carries the authoritative body after
//!   `last_processed_input`; the client compares it with what it predicted for that input (the
//!   difference is the *correction*, zero when nothing interfered), then replays the inputs
//!   the server has not processed yet on top of it.
//! - **Interpolation**: other entities are drawn an interpolation delay behind the newest
//!   snapshot, between the two snapshots around that time, never blended across a respawn.
//!   The delay is the caller's floor or, when the server sends fewer snapshots per second,
//!   enough to ride out one lost snapshot ([`protocol::net::interpolation_delay_ms`]).

use std::collections::VecDeque;

use arena::physics::{self, Body};
use protocol::net::acks::{ReceivedPackets, SentPackets};
use protocol::net::reliable::{ReliableReceiver, ReliableSender};
use protocol::net::urgent::UrgentReceiver;
use protocol::net::{
    ClientPacket, DenyReason, EntityState, EventsPacket, Header, Input, Message, NetError, Packet,
    ReliableBlock, ServerPacket, UrgentAck, MAX_INPUTS,
};

/// Snapshots kept for baselines and interpolation.
const SNAPSHOTS: usize = 64;
/// Inputs kept for replay; older than this and the server has them or they are lost.
const PENDING_INPUTS: usize = 128;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Intent {
    pub move_x: i8,
    pub move_y: i8,
    pub aim: u16,
    pub fire: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    Connected {
        entity: u16,
    },
    Denied(DenyReason),
    /// A message, once: roster, chat and the end of the match in order; fire, death and
    /// pickup as soon as the first copy arrives.
    Message(Message),
    /// A snapshot was applied (its server tick).
    Snapshot(u32),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientStats {
    pub rtt_ms: f64,
    /// Round trips (input sent -> acknowledged) since the caller last drained them; at most
    /// 4096 are kept.
    pub rtt_samples: Vec<u32>,
    pub snapshots: u64,
    /// Server packets (snapshots and events) received.
    pub packets: u64,
    /// Server packets (snapshots and events) that never arrived (from sequence gaps).
    pub snapshots_lost: u64,
    pub corrections: u64,
    pub max_correction: f32,
    pub bytes_in: u64,
    /// Where the received bytes went, when [`ClientCore::count_wire_parts`] is on.
    pub bytes_in_parts: protocol::net::WireParts,
    pub bytes_out: u64,
    pub inputs_sent: u64,
    /// Inputs sampled while a snapshot was held (each one a frame in which others are drawn).
    pub frames: u64,
    /// Of those, the frames whose render time was past the newest snapshot: others drawn
    /// where that snapshot left them (held), not interpolated. What a lower snapshot rate or
    /// a shorter interpolation delay costs in motion.
    pub frames_past_newest: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Connecting,
    Connected,
    Denied(DenyReason),
}

pub struct ClientCore {
    token: String,
    pub phase: Phase,
    pub session: u64,
    pub entity: u16,
    pub tick_hz: u32,
    dt: f32,
    /// The interpolation delay asked for; the snapshot rate may raise it.
    interp_floor_ms: u32,
    interp_delay_ms: u32,
    next_seq: u16,
    received: ReceivedPackets,
    sent: SentPackets<()>,
    reliable_out: ReliableSender,
    reliable_in: ReliableReceiver,
    urgent_in: UrgentReceiver,
    next_input: u32,
    /// Inputs sent, with the body predicted after each, not yet acknowledged by a snapshot.
    pending: VecDeque<(Input, Body)>,
    predicted: Body,
    alive: bool,
    last_processed: u32,
    /// Whether an authoritative body has been received (before it, there is nothing to
    /// correct against).
    synced: bool,
    /// Snapshots as the server sent them: this player's own entry has position and angle
    /// zero (see [`ClientCore::latest`]).
    snapshots: VecDeque<(u32, Vec<(u16, EntityState)>)>,
    /// The newest authoritative body (the fixed part of the newest snapshot packet).
    server_body: (f32, f32),
    /// The aim of the newest input: this player's angle as others see it.
    last_aim: u16,
    /// Newest snapshot tick and when (client ms) it arrived: the server clock estimate.
    clock: Option<(u32, u64)>,
    newest_seq: Option<u16>,
    seq_span: u64,
    /// Loss accounting of earlier sessions.
    lost_before: u64,
    /// Server packets received (snapshots and events), this session and before it.
    packets: u64,
    packets_before: u64,
    pub stats: ClientStats,
    /// Count where received bytes go (`stats.bytes_in_parts`): off by default, it encodes each
    /// packet's parts again.
    pub count_wire_parts: bool,
}

impl ClientCore {
    /// `interp_delay_ms`: the least interpolation delay (the server's snapshot rate may ask
    /// for more).
    pub fn new(token: String, interp_delay_ms: u32) -> ClientCore {
        ClientCore {
            token,
            phase: Phase::Connecting,
            session: 0,
            entity: 0,
            tick_hz: 30,
            dt: 1.0 / 30.0,
            interp_floor_ms: interp_delay_ms,
            interp_delay_ms,
            next_seq: 0,
            received: ReceivedPackets::default(),
            sent: SentPackets::default(),
            reliable_out: ReliableSender::default(),
            reliable_in: ReliableReceiver::default(),
            urgent_in: UrgentReceiver::default(),
            next_input: 1,
            pending: VecDeque::new(),
            predicted: Body::default(),
            alive: true,
            last_processed: 0,
            synced: false,
            snapshots: VecDeque::new(),
            server_body: (0.0, 0.0),
            last_aim: 0,
            clock: None,
            newest_seq: None,
            seq_span: 0,
            lost_before: 0,
            packets: 0,
            packets_before: 0,
            stats: ClientStats::default(),
            count_wire_parts: false,
        }
    }

    fn reset_connection(&mut self) {
        self.next_seq = 0;
        self.received = ReceivedPackets::default();
        self.sent = SentPackets::default();
        self.reliable_out = ReliableSender::default();
        self.reliable_in = ReliableReceiver::default();
        self.urgent_in = UrgentReceiver::default();
        self.snapshots.clear();
        self.clock = None;
        self.newest_seq = None;
        self.lost_before = self.stats.snapshots_lost;
        self.packets_before = self.packets;
        self.seq_span = 0;
        self.last_processed = 0;
        self.synced = false;
    }

    pub fn connect_packet(&mut self) -> Vec<u8> {
        let b = Packet::ConnectRequest {
            token: self.token.clone(),
        }
        .encode();
        self.stats.bytes_out += b.len() as u64 + 28;
        b
    }

    pub fn disconnect_packet(&self) -> Vec<u8> {
        Packet::Disconnect {
            session: self.session,
        }
        .encode()
    }

    /// A reliable chat line to everyone in the room.
    pub fn chat(&mut self, text: &str) -> bool {
        self.reliable_out
            .send(Message::Chat {
                entity: self.entity,
                text: text.chars().take(protocol::net::MAX_CHAT).collect(),
            })
            .is_ok()
    }

    pub fn on_datagram(&mut self, bytes: &[u8], now_ms: u64) -> Result<Vec<ClientEvent>, NetError> {
        self.stats.bytes_in += bytes.len() as u64 + 28;
        let packet = Packet::decode(bytes)?;
        if self.count_wire_parts {
            self.stats.bytes_in_parts.add(packet.wire_parts());
        }
        match packet {
            Packet::ConnectAccepted {
                session,
                entity,
                tick_hz,
                snapshot_hz,
                tick,
            } => {
                if self.phase == Phase::Connected && session == self.session {
                    return Ok(Vec::new());
                }
                if self.session != 0 && self.session != session {
                    // A new session (a server restart or takeover): its sequences, reliable
                    // ids and snapshots start afresh.
                    self.reset_connection();
                }
                self.phase = Phase::Connected;
                self.session = session;
                self.entity = entity;
                self.tick_hz = u32::from(tick_hz.max(1));
                self.dt = 1.0 / self.tick_hz as f32;
                // From the floor each time: a takeover's accept must not scale it twice.
                self.interp_delay_ms = protocol::net::interpolation_delay_ms(
                    u32::from(snapshot_hz.clamp(1, tick_hz.max(1))),
                    self.interp_floor_ms,
                );
                self.clock = Some((tick, now_ms));
                Ok(vec![ClientEvent::Connected { entity }])
            }
            Packet::ConnectDenied { reason } => {
                self.phase = Phase::Denied(reason);
                Ok(vec![ClientEvent::Denied(reason)])
            }
            Packet::Server(p)
                if p.session == self.session as u32 && self.phase == Phase::Connected =>
            {
                self.on_server_packet(p, now_ms)
            }
            Packet::Events(p)
                if p.session == self.session as u32 && self.phase == Phase::Connected =>
            {
                Ok(self.on_events_packet(p, now_ms))
            }
            _ => Ok(Vec::new()),
        }
    }

    fn on_server_packet(
        &mut self,
        mut p: ServerPacket,
        now_ms: u64,
    ) -> Result<Vec<ClientEvent>, NetError> {
        // Rebuild the snapshot from its baseline first: a packet is acknowledged only once
        // its snapshot is held, so the server never picks a baseline this client lacks.
        let base: &[(u16, EntityState)] = match p.snapshot.baseline {
            None => &[],
            Some(t) => match self.snapshots.iter().find(|(tick, _)| *tick == t) {
                Some((_, e)) => e,
                None => return Err(NetError::UnknownBaseline(t)),
            },
        };
        let entities = p.snapshot.apply(base)?;
        if !self.received.record(p.header.seq) {
            return Ok(Vec::new());
        }
        self.stats.snapshots += 1;
        self.on_packet_header(&p.header, now_ms);
        if let Some(ack) = p.reliable.ack_next {
            self.reliable_out.on_ack(ack);
        }
        let mut events = Vec::new();
        self.take_urgent(std::mem::take(&mut p.urgent), &mut events);
        for (id, m) in std::mem::take(&mut p.reliable.messages) {
            for m in self.reliable_in.receive(id, m) {
                events.push(ClientEvent::Message(m));
            }
        }
        if self.snapshots.iter().all(|(t, _)| *t != p.tick) {
            let at = self
                .snapshots
                .iter()
                .position(|(t, _)| *t > p.tick)
                .unwrap_or(self.snapshots.len());
            self.snapshots.insert(at, (p.tick, entities));
            if self.snapshots.len() > SNAPSHOTS {
                self.snapshots.pop_front();
            }
        }
        if self.clock.is_none_or(|(t, _)| p.tick > t) {
            self.clock = Some((p.tick, now_ms));
            self.reconcile(&p);
        }
        events.push(ClientEvent::Snapshot(p.tick));
        Ok(events)
    }

    /// Urgent events: each handed on the first time it arrives, in arrival order.
    fn take_urgent(&mut self, urgent: Vec<(u16, Message)>, events: &mut Vec<ClientEvent>) {
        for (id, m) in urgent {
            if let Some(m) = self.urgent_in.receive(id, m) {
                events.push(ClientEvent::Message(m));
            }
        }
    }

    /// Urgent events sent between snapshots.
    fn on_events_packet(&mut self, p: EventsPacket, now_ms: u64) -> Vec<ClientEvent> {
        if !self.received.record(p.header.seq) {
            return Vec::new();
        }
        self.on_packet_header(&p.header, now_ms);
        let mut events = Vec::new();
        self.take_urgent(p.urgent, &mut events);
        events
    }

    /// What every server packet's header tells: loss (from sequence gaps) and round trips.
    fn on_packet_header(&mut self, header: &Header, now_ms: u64) {
        // Loss is the sequence span seen minus the distinct packets received (a packet
        // reordered by jitter is late, not lost).
        match self.newest_seq {
            None => {
                self.newest_seq = Some(header.seq);
                self.seq_span = 1;
            }
            Some(prev) if protocol::net::acks::seq_newer(header.seq, prev) => {
                self.seq_span += u64::from(header.seq.wrapping_sub(prev));
                self.newest_seq = Some(header.seq);
            }
            Some(_) => {}
        }
        self.packets += 1;
        self.stats.packets += 1;
        self.stats.snapshots_lost = self.lost_before
            + self
                .seq_span
                .saturating_sub(self.packets - self.packets_before);
        for (_, _, rtt) in self.sent.on_ack(header.ack, header.ack_bits, now_ms) {
            if self.stats.rtt_samples.len() < 4096 {
                self.stats.rtt_samples.push(rtt as u32);
            }
            self.stats.rtt_ms = if self.stats.rtt_ms == 0.0 {
                rtt as f64
            } else {
                self.stats.rtt_ms * 0.9 + rtt as f64 * 0.1
            };
        }
    }

    fn reconcile(&mut self, p: &ServerPacket) {
        let server = Body {
            x: p.own.x,
            y: p.own.y,
            vx: p.own.vx,
            vy: p.own.vy,
        };
        self.server_body = (p.own.x, p.own.y);
        let was_alive = self.alive;
        self.alive = p.own.alive;
        if p.last_processed_input < self.last_processed {
            return;
        }
        self.last_processed = p.last_processed_input;
        // What we predicted after the input the server last processed.
        while self
            .pending
            .front()
            .is_some_and(|(i, _)| i.seq < p.last_processed_input)
        {
            self.pending.pop_front();
        }
        if self
            .pending
            .front()
            .is_some_and(|(i, _)| i.seq == p.last_processed_input)
        {
            self.pending.pop_front();
        }
        // Replay what the server has not seen yet on top of its answer.
        let mut body = server;
        for (input, after) in self.pending.iter_mut() {
            if self.alive {
                physics::apply_input(&mut body, input, self.dt);
            }
            *after = body;
        }
        // The correction is how far the player's own avatar snaps: zero when prediction
        // matched the server. A death or respawn is the server's doing, not a misprediction.
        let synced = std::mem::replace(&mut self.synced, true);
        if synced && was_alive && p.own.alive {
            let err =
                ((self.predicted.x - body.x).powi(2) + (self.predicted.y - body.y).powi(2)).sqrt();
            if err > 1e-4 {
                self.stats.corrections += 1;
                self.stats.max_correction = self.stats.max_correction.max(err);
            }
        }
        self.predicted = body;
    }

    /// The server tick (with fraction) estimated for `now_ms`.
    pub fn server_tick(&self, now_ms: u64) -> f32 {
        match self.clock {
            Some((t, at)) => {
                t as f32 + now_ms.saturating_sub(at) as f32 * self.tick_hz as f32 / 1000.0
            }
            None => 0.0,
        }
    }

    /// How far behind the newest snapshot others are drawn, in ms.
    pub fn interp_delay_ms(&self) -> u32 {
        self.interp_delay_ms
    }

    /// The server time this client renders other entities at.
    pub fn render_tick(&self, now_ms: u64) -> f32 {
        let behind = self.interp_delay_ms as f32 * self.tick_hz as f32 / 1000.0;
        (self.server_tick(now_ms) - behind).max(0.0)
    }

    /// Samples one tick of input: predicts it locally and returns the packet to send.
    pub fn input_packet(&mut self, intent: Intent, now_ms: u64) -> Vec<u8> {
        let view = self.render_tick(now_ms);
        if let Some((newest, _)) = self.snapshots.back() {
            self.stats.frames += 1;
            if (*newest as f32) < view {
                self.stats.frames_past_newest += 1;
            }
        }
        let input = Input {
            seq: self.next_input,
            move_x: intent.move_x,
            move_y: intent.move_y,
            aim: intent.aim,
            fire: intent.fire,
            view_tick: view.floor() as u32,
            view_frac: (view.fract() * 256.0) as u8,
        };
        self.next_input += 1;
        self.last_aim = intent.aim;
        if self.alive {
            physics::apply_input(&mut self.predicted, &input, self.dt);
        }
        if self.pending.len() >= PENDING_INPUTS {
            self.pending.pop_front();
        }
        self.pending.push_back((input, self.predicted));
        let inputs: Vec<Input> = self
            .pending
            .iter()
            .rev()
            .take(MAX_INPUTS)
            .map(|(i, _)| *i)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.sent.record(seq, now_ms, ());
        let (ack, ack_bits) = self.received.ack_fields();
        let resend = (self.stats.rtt_ms * 1.25).clamp(30.0, 500.0) as u64;
        let bytes = Packet::Client(ClientPacket {
            session: self.session,
            header: Header { seq, ack, ack_bits },
            inputs,
            reliable: ReliableBlock {
                ack_next: self.reliable_in.ack_to_send(),
                messages: self.reliable_out.outgoing(now_ms, resend, 300),
            },
            urgent_ack: {
                let (latest, bits) = self.urgent_in.ack_fields();
                UrgentAck { latest, bits }
            },
        })
        .encode();
        self.stats.bytes_out += bytes.len() as u64 + 28;
        self.stats.inputs_sent += 1;
        bytes
    }

    /// Moves the predicted body by `dx` without an input: what a client whose simulation
    /// disagrees with the server's looks like (for checking that corrections are measured).
    pub fn perturb_prediction(&mut self, dx: f32) {
        self.predicted.x = (self.predicted.x + dx).clamp(20.0, arena::ARENA - 20.0);
    }

    /// The locally predicted body of this player.
    pub fn predicted(&self) -> Body {
        self.predicted
    }

    pub fn pending_inputs(&self) -> usize {
        self.pending.len()
    }

    /// The newest snapshot, this player's own entry filled in. The server sends that entry's
    /// position and angle as zero (the body is exact in every packet's fixed part and the aim
    /// is the player's own, so sending them again in the entity list would send them twice):
    /// here they come from the newest authoritative body, in whole units like every other
    /// entry, and the newest input's aim.
    pub fn latest(&self) -> Option<(u32, Vec<(u16, EntityState)>)> {
        let (tick, entities) = self.snapshots.back()?;
        let mut entities = entities.clone();
        if let Some((_, own)) = entities.iter_mut().find(|e| e.0 == self.entity) {
            own.x = self.server_body.0.round() as u16;
            own.y = self.server_body.1.round() as u16;
            own.angle = ((u32::from(self.last_aim) + 128) >> 8) as u8;
        }
        Some((*tick, entities))
    }

    /// Other entities as drawn at `now_ms`: positions (arena units) interpolated between the
    /// two snapshots around the render time; an entity that died, respawned or appeared in
    /// between is shown at the later snapshot (snapped, never slid across the map). This
    /// player's own body is not among them: it is drawn where [`ClientCore::predicted`] has it.
    pub fn interpolated(&self, now_ms: u64) -> Vec<(u16, f32, f32)> {
        let t = self.render_tick(now_ms);
        let after = self
            .snapshots
            .iter()
            .position(|(tick, _)| *tick as f32 >= t);
        let (a, b) = match after {
            Some(0) | None => {
                let Some((_, e)) = self.snapshots.back().or(self.snapshots.front()) else {
                    return Vec::new();
                };
                return e
                    .iter()
                    .filter(|e| e.0 != self.entity)
                    .map(|(id, s)| (*id, f32::from(s.x), f32::from(s.y)))
                    .collect();
            }
            Some(i) => (&self.snapshots[i - 1], &self.snapshots[i]),
        };
        let span = (b.0 - a.0) as f32;
        let f = ((t - a.0 as f32) / span).clamp(0.0, 1.0);
        b.1.iter()
            .filter(|e| e.0 != self.entity)
            .map(|(id, sb)| {
                let (xb, yb) = (f32::from(sb.x), f32::from(sb.y));
                match a.1.binary_search_by_key(id, |e| e.0) {
                    Ok(i) if a.1[i].1.alive() && sb.alive() => {
                        let sa = a.1[i].1;
                        let (xa, ya) = (f32::from(sa.x), f32::from(sa.y));
                        (*id, xa + (xb - xa) * f, ya + (yb - ya) * f)
                    }
                    _ => (*id, xb, yb),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(session: u64, tick_hz: u8, snapshot_hz: u8, tick: u32) -> Vec<u8> {
        Packet::ConnectAccepted {
            session,
            entity: 4,
            tick_hz,
            snapshot_hz,
            tick,
        }
        .encode()
    }

    #[test]
    fn the_interpolation_delay_follows_each_accept_from_the_floor() {
        let mut c = ClientCore::new("t".into(), 100);
        c.on_datagram(&accept(1, 60, 60, 1_000), 0).unwrap();
        // 100 ms at 60 ticks a second: six ticks behind.
        assert_eq!(c.interp_delay_ms(), 100);
        assert!(
            (c.render_tick(0) - 994.0).abs() < 1e-3,
            "{}",
            c.render_tick(0)
        );
        // A takeover's accept (a new session) at a lower snapshot rate: computed afresh, not
        // scaled from the previous delay again.
        c.on_datagram(&accept(2, 60, 15, 2_000), 0).unwrap();
        assert_eq!(c.interp_delay_ms(), 159);
        let expected = 2_000.0 - 159.0 * 60.0 / 1000.0;
        assert!(
            (c.render_tick(0) - expected).abs() < 1e-3,
            "{}",
            c.render_tick(0)
        );
        c.on_datagram(&accept(3, 60, 60, 3_000), 0).unwrap();
        assert!(
            (c.render_tick(0) - 2_994.0).abs() < 1e-3,
            "{}",
            c.render_tick(0)
        );
    }
}
