//! One connected player as its room sees it: packet acks, the reliable channel both ways, the
//! queue of inputs not yet simulated, and the snapshots sent (the baselines of later deltas).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use protocol::net::acks::{seq_newer, ReceivedPackets, SentPackets};
use protocol::net::reliable::{ReliableReceiver, ReliableSender};
use protocol::net::urgent::{Repeats, UrgentSender};
use protocol::net::{ClientPacket, EntityState, Header, Input, Message};

/// Inputs waiting to be simulated; a client far ahead of the server loses its oldest.
const INPUT_QUEUE: usize = 64;
/// Snapshots kept as possible baselines (about one second at 30 Hz).
const SNAPSHOT_RING: usize = 32;
/// A client may catch up on late inputs, but never run more than this many ticks ahead of
/// real time (a speed-hack guard).
const MAX_INPUT_CREDIT: f32 = 4.0;
/// Each packet's weight in the loss estimate (about the last 50 count).
const LOSS_WEIGHT: f32 = 0.02;

pub type Entities = Arc<Vec<(u16, EntityState)>>;

pub struct Client {
    pub addr: SocketAddr,
    pub session: u64,
    pub entity: u16,
    pub player: String,
    pub last_heard: Instant,
    pub rtt_ms: f32,
    /// The share of this player's packets lost on the way here (from sequence gaps, a moving
    /// average over about 50 packets): the estimate for the way back too, which sets how many
    /// copies of an urgent event go back to back. It starts at 10% (three copies) until
    /// packets have told.
    pub loss: f32,
    pub visible: Vec<u16>,
    pub reliable_out: ReliableSender,
    /// Fire, death, pickup: repeated until acknowledged, back to back as the link's loss
    /// calls for, then a round trip apart.
    pub urgent_out: UrgentSender,
    next_seq: u16,
    received: ReceivedPackets,
    /// The snapshot tick each packet carried (`None`: an events packet).
    sent: SentPackets<Option<u32>>,
    reliable_in: ReliableReceiver,
    inputs: VecDeque<Input>,
    newest_input: u32,
    credit: f32,
    snapshots: VecDeque<(u32, Entities)>,
    acked_tick: Option<u32>,
}

impl Client {
    pub fn new(
        addr: SocketAddr,
        session: u64,
        entity: u16,
        player: String,
        last_input: u32,
    ) -> Client {
        Client {
            addr,
            session,
            entity,
            player,
            last_heard: Instant::now(),
            rtt_ms: 100.0,
            loss: 0.1,
            visible: Vec::new(),
            reliable_out: ReliableSender::default(),
            urgent_out: UrgentSender::default(),
            next_seq: 0,
            received: ReceivedPackets::default(),
            sent: SentPackets::default(),
            reliable_in: ReliableReceiver::default(),
            inputs: VecDeque::new(),
            newest_input: last_input,
            credit: 1.0,
            snapshots: VecDeque::new(),
            acked_tick: None,
        }
    }

    /// Takes a packet from the client; returns the reliable messages now delivered in order.
    pub fn on_packet(&mut self, p: ClientPacket, now_ms: u64) -> Vec<Message> {
        self.last_heard = Instant::now();
        let newest = self.received.latest();
        if !self.received.record(p.header.seq) {
            return Vec::new();
        }
        if let Some(newest) = newest.filter(|&n| seq_newer(p.header.seq, n)) {
            // A packet that fills a gap later (reordered) was counted lost: jitter is rarely
            // larger than the packet interval, and erring towards loss means an extra copy.
            // Each missing packet moves the average a step towards 1, this one a step to 0.
            let missing = (p.header.seq.wrapping_sub(newest) - 1).min(32);
            self.loss = 1.0 - (1.0 - self.loss) * (1.0 - LOSS_WEIGHT).powi(i32::from(missing));
            self.loss *= 1.0 - LOSS_WEIGHT;
        }
        let (rtt_ms, acked_tick) = (&mut self.rtt_ms, &mut self.acked_tick);
        self.sent
            .on_ack_each(p.header.ack, p.header.ack_bits, now_ms, |_, tick, rtt| {
                *rtt_ms = *rtt_ms * 0.9 + rtt as f32 * 0.1;
                let Some(tick) = tick else { return };
                if acked_tick.is_none_or(|t| tick > t) {
                    *acked_tick = Some(tick);
                }
            });
        if let Some(ack) = p.reliable.ack_next {
            self.reliable_out.on_ack(ack);
        }
        self.urgent_out
            .on_ack(p.urgent_ack.latest, p.urgent_ack.bits);
        self.urgent_out.repeats = Repeats::for_link(self.loss, self.rtt_ms);
        for input in p.inputs {
            if input.seq > self.newest_input {
                self.newest_input = input.seq;
                if self.inputs.len() >= INPUT_QUEUE {
                    self.inputs.pop_front();
                }
                self.inputs.push_back(input);
            }
        }
        let mut delivered = Vec::new();
        for (id, m) in p.reliable.messages {
            delivered.extend(self.reliable_in.receive(id, m));
        }
        delivered
    }

    /// The inputs to simulate now, oldest first: one per tick, more to catch up after a late
    /// packet, within the credit real time has given. `new_tick`: a tick begins (one more
    /// input's credit); between ticks inputs are taken as they arrive, from the credit the
    /// ticks gave, so taking them more often never lets a player move faster.
    pub fn take_inputs(&mut self, out: &mut Vec<Input>, new_tick: bool) {
        if new_tick {
            self.credit = (self.credit + 1.0).min(MAX_INPUT_CREDIT);
        }
        out.clear();
        while self.credit >= 1.0 {
            let Some(i) = self.inputs.pop_front() else {
                break;
            };
            self.credit -= 1.0;
            out.push(i);
        }
    }

    /// The newest acknowledged snapshot still held: the baseline for the next delta.
    pub fn baseline(&self) -> Option<(u32, Entities)> {
        let t = self.acked_tick?;
        self.snapshots
            .iter()
            .rev()
            .find(|(tick, _)| *tick == t)
            .map(|(tick, e)| (*tick, e.clone()))
    }

    /// An empty buffer for the next snapshot's entities, held by no one else: the oldest
    /// snapshot's, when the ring is full and no one else holds it (the steady state), else a
    /// new one.
    pub fn recycled_entities(&mut self) -> Entities {
        if self.snapshots.len() >= SNAPSHOT_RING {
            if let Some((_, mut oldest)) = self.snapshots.pop_front() {
                if let Some(v) = Arc::get_mut(&mut oldest) {
                    v.clear();
                    return oldest;
                }
            }
        }
        Arc::new(Vec::new())
    }

    /// The header of the next packet, recording that it carries the snapshot of `tick`.
    pub fn next_header(&mut self, tick: u32, entities: Entities, now_ms: u64) -> Header {
        if self.snapshots.len() >= SNAPSHOT_RING {
            self.snapshots.pop_front();
        }
        self.snapshots.push_back((tick, entities));
        self.header_recording(Some(tick), now_ms)
    }

    /// The header of the next packet, one without a snapshot (urgent events between
    /// snapshots).
    pub fn next_events_header(&mut self, now_ms: u64) -> Header {
        self.header_recording(None, now_ms)
    }

    fn header_recording(&mut self, snapshot: Option<u32>, now_ms: u64) -> Header {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.sent.record(seq, now_ms, snapshot);
        let (ack, ack_bits) = self.received.ack_fields();
        Header { seq, ack, ack_bits }
    }

    /// The reliable ack for the next packet to this client, while it has something to
    /// acknowledge.
    pub fn reliable_ack_to_send(&mut self) -> Option<u16> {
        self.reliable_in.ack_to_send()
    }

    /// How long to wait before resending an unacknowledged reliable message.
    pub fn resend_after_ms(&self) -> u64 {
        (self.rtt_ms * 0.5).clamp(20.0, 500.0) as u64
    }
}

#[cfg(test)]
mod tests {
    use protocol::net::{ClientPacket, Header, ReliableBlock, UrgentAck};

    use super::*;

    fn packet(seq: u16) -> ClientPacket {
        ClientPacket {
            session: 1,
            header: Header {
                seq,
                ack: u16::MAX,
                ack_bits: 0,
            },
            inputs: Vec::new(),
            reliable: ReliableBlock::default(),
            urgent_ack: UrgentAck {
                latest: u16::MAX,
                bits: 0,
            },
        }
    }

    #[test]
    fn the_loss_seen_sets_how_many_copies_of_an_event_go_back_to_back() {
        let mut c = Client::new("127.0.0.1:9".parse().unwrap(), 1, 3, "p".into(), 0);
        // Every fifth packet lost, across the 16-bit wrap.
        let mut seq = 65_000u16;
        for _ in 0..400 {
            seq = seq.wrapping_add(1);
            if !seq.is_multiple_of(5) {
                c.on_packet(packet(seq), 0);
            }
        }
        assert!((c.loss - 0.2).abs() < 0.05, "{}", c.loss);
        assert_eq!(c.urgent_out.repeats.back_to_back, 4);
        // A clean link: two.
        for _ in 0..400 {
            seq = seq.wrapping_add(1);
            c.on_packet(packet(seq), 0);
        }
        assert!(c.loss < 0.01, "{}", c.loss);
        assert_eq!(c.urgent_out.repeats.back_to_back, 2);
        // A duplicate or a late packet moves nothing.
        let loss = c.loss;
        c.on_packet(packet(seq), 0);
        c.on_packet(packet(seq.wrapping_sub(3)), 0);
        assert_eq!(c.loss, loss);
    }

    /// Taking inputs between ticks, as they arrive, never lets a player run ahead of the
    /// ticks: however often the room looks, the inputs applied stay within one a tick plus the
    /// catch-up credit.
    #[test]
    fn inputs_taken_between_ticks_stay_within_the_ticks_credit() {
        let mut c = Client::new("127.0.0.1:9".parse().unwrap(), 1, 3, "p".into(), 0);
        let mut p = packet(1);
        // A flood: 40 inputs at once (a speed hack, or a burst after a stall).
        p.inputs = (1..=40)
            .map(|seq| protocol::net::Input {
                seq,
                ..Default::default()
            })
            .collect();
        c.on_packet(p, 0);
        let mut applied = 0;
        let mut out = Vec::new();
        for tick in 0..10 {
            c.take_inputs(&mut out, true);
            applied += out.len();
            // Eight looks between two ticks (a 4 ms poll on a 30 Hz tick).
            for _ in 0..8 {
                c.take_inputs(&mut out, false);
                applied += out.len();
            }
            let most = tick + MAX_INPUT_CREDIT as usize;
            assert!(applied <= most, "{applied} inputs after {} ticks", tick + 1);
        }
        // One a tick, and the one a new player starts with.
        assert_eq!(applied, 10 + 1);
    }
}
