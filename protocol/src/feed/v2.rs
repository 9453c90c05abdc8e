//! Viewer feed format v2: the same envelope and version line as v1 (`type`, `match`, `epoch`,
//! `version`; every resume rule unchanged), with compact bodies:
//!
//! - players are named by small per-epoch ids (the game server's entity numbers, carried in the
//!   log), and a roster maps each id to its player id, name and bot flag; snapshots and join
//!   events carry roster entries, and so does a delta that brings in a player;
//! - a delta carries, per player, only the fields that changed, behind a bit mask; positions
//!   in tenths of a unit as differences from the player's previous position, angles in 256ths
//!   of a turn (the UDP protocol's quantization);
//! - events name players by id.
//!
//! Field by field, with a worked example, in docs/architecture.md ("Feed format v2"). This
//! module holds the encoder the hub uses and a decoder ([`V2View`]) for clients written in Rust,
//! the tests and the fuzzer. Long because the format is: the encoder and decoder of each
//! message kind sit together so a field's two halves are read side by side.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::event::MatchEvent;
use crate::ids::PlayerId;
use crate::state::{Delta, MatchStatus, PlayerView, SpectatorState};

/// Bits of a delta row's mask, in the order the changed fields follow it.
pub const X: u8 = 1;
pub const Y: u8 = 2;
pub const ANGLE: u8 = 4;
pub const HP: u8 = 8;
pub const ALIVE: u8 = 16;
pub const SCORE: u8 = 32;
pub const KILLS: u8 = 64;
pub const DEATHS: u8 = 128;
pub const ALL: u8 = 255;

/// Ids handed out by a gateway to players whose log records carry none (a game server older
/// than v2): above every entity number, and the same only within one gateway's hub.
const LOCAL_IDS: u16 = 0x8000;

/// Degrees (v1, the log) to 256ths of a turn (v2, like the UDP protocol).
pub fn angle_256(degrees: i16) -> u8 {
    ((i32::from(degrees).rem_euclid(360) * 256 + 180) / 360 % 256) as u8
}

/// Who is who in a match epoch, as the v2 encoder knows it.
#[derive(Debug, Default, Clone)]
pub(crate) struct Roster {
    ids: BTreeMap<PlayerId, u16>,
    next_local: u16,
}

impl Roster {
    /// Starts over from a full state (a keyframe).
    pub(crate) fn reset(&mut self, state: &SpectatorState) {
        self.ids.clear();
        for (player, view) in &state.players {
            self.learn(player, view.id);
        }
    }

    /// Records `player`'s id (`0`: none in the log; a local one is handed out once).
    pub(crate) fn learn(&mut self, player: &str, id: u16) -> u16 {
        if id != 0 {
            self.ids.insert(player.to_string(), id);
            return id;
        }
        if let Some(&known) = self.ids.get(player) {
            return known;
        }
        let local = LOCAL_IDS.saturating_add(self.next_local);
        self.next_local = self.next_local.wrapping_add(1) % LOCAL_IDS;
        self.ids.insert(player.to_string(), local);
        local
    }

    pub(crate) fn get(&self, player: &str) -> Option<u16> {
        self.ids.get(player).copied()
    }

    pub(crate) fn forget(&mut self, player: &str) {
        self.ids.remove(player);
    }
}

fn push_num(out: &mut Vec<u8>, n: impl std::fmt::Display) {
    use std::io::Write;
    write!(out, "{n}").expect("writing to memory");
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("a string serializes");
}

fn push_roster_entry(out: &mut Vec<u8>, id: u16, player: &str, view_name: &str, bot: bool) {
    out.push(b'[');
    push_num(out, id);
    out.push(b',');
    push_str(out, player);
    out.push(b',');
    push_str(out, view_name);
    out.extend_from_slice(if bot { b",1]" } else { b",0]" });
}

fn status_str(s: MatchStatus) -> &'static str {
    match s {
        MatchStatus::Live => "live",
        MatchStatus::Ended => "ended",
    }
}

/// `"state":{...}` of a v2 snapshot.
pub(crate) fn write_snapshot_state(out: &mut Vec<u8>, state: &SpectatorState, roster: &Roster) {
    out.extend_from_slice(b"\"state\":{\"region\":");
    push_str(out, &state.region);
    out.extend_from_slice(b",\"status\":\"");
    out.extend_from_slice(status_str(state.status).as_bytes());
    out.extend_from_slice(b"\",\"tick\":");
    push_num(out, state.tick);
    if state.tick_hz > 0 {
        out.extend_from_slice(b",\"tick_hz\":");
        push_num(out, state.tick_hz);
    }
    if state.broadcast_delay_ms > 0 {
        out.extend_from_slice(b",\"broadcast_delay_ms\":");
        push_num(out, state.broadcast_delay_ms);
    }
    out.extend_from_slice(b",\"arena\":");
    serde_json::to_writer(&mut *out, &state.arena).expect("the arena serializes");
    out.extend_from_slice(b",\"roster\":[");
    for (i, (player, view)) in state.players.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let id = roster.get(player).unwrap_or(view.id);
        push_roster_entry(out, id, player, &view.name, view.bot);
    }
    out.extend_from_slice(b"],\"players\":[");
    for (i, (player, view)) in state.players.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let id = roster.get(player).unwrap_or(view.id);
        out.push(b'[');
        push_num(out, id);
        for n in [
            i64::from(view.x),
            i64::from(view.y),
            i64::from(angle_256(view.angle)),
            i64::from(view.hp),
            i64::from(view.alive),
            i64::from(view.score),
            i64::from(view.kills),
            i64::from(view.deaths),
        ] {
            out.push(b',');
            push_num(out, n);
        }
        out.push(b']');
    }
    out.extend_from_slice(b"]}");
}

/// One player's changed fields against `before` (`None`: new to the state, every field, its
/// position from 0). `None` when nothing a viewer sees changed.
fn delta_row(id: u16, before: Option<&PlayerView>, now: &PlayerView, out: &mut Vec<u8>) -> bool {
    let (bx, by) = before.map_or((0, 0), |b| (b.x, b.y));
    let mut mask = 0u8;
    let mut fields: [i64; 8] = [0; 8];
    let mut n = 0;
    let mut field = |bit: u8, changed: bool, value: i64| {
        if changed {
            mask |= bit;
            fields[n] = value;
            n += 1;
        }
    };
    let new = before.is_none();
    field(X, new || bx != now.x, i64::from(now.x) - i64::from(bx));
    field(Y, new || by != now.y, i64::from(now.y) - i64::from(by));
    let angle = angle_256(now.angle);
    field(
        ANGLE,
        new || before.is_some_and(|b| angle_256(b.angle) != angle),
        i64::from(angle),
    );
    field(
        HP,
        new || before.is_some_and(|b| b.hp != now.hp),
        i64::from(now.hp),
    );
    field(
        ALIVE,
        new || before.is_some_and(|b| b.alive != now.alive),
        i64::from(now.alive),
    );
    field(
        SCORE,
        new || before.is_some_and(|b| b.score != now.score),
        i64::from(now.score),
    );
    field(
        KILLS,
        new || before.is_some_and(|b| b.kills != now.kills),
        i64::from(now.kills),
    );
    field(
        DEATHS,
        new || before.is_some_and(|b| b.deaths != now.deaths),
        i64::from(now.deaths),
    );
    if mask == 0 {
        return false;
    }
    out.push(b'[');
    push_num(out, id);
    out.push(b',');
    push_num(out, mask);
    for v in &fields[..n] {
        out.push(b',');
        push_num(out, v);
    }
    out.push(b']');
    true
}

/// The fields of a v2 delta (`"t":..` and what changed), encoded against the state `before` it
/// applies; learns the ids of players it brings in.
pub(crate) fn write_delta(
    out: &mut Vec<u8>,
    before: &SpectatorState,
    delta: &Delta,
    roster: &mut Roster,
) {
    out.extend_from_slice(b"\"t\":");
    push_num(out, delta.tick);
    if let Some(status) = delta.status.filter(|s| *s != before.status) {
        out.extend_from_slice(b",\"status\":\"");
        out.extend_from_slice(status_str(status).as_bytes());
        out.push(b'"');
    }
    let joined: Vec<(&PlayerId, &PlayerView)> = delta
        .players
        .iter()
        .filter(|(p, _)| !before.players.contains_key(*p))
        .collect();
    if !joined.is_empty() {
        out.extend_from_slice(b",\"j\":[");
        for (i, (player, view)) in joined.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let id = roster.learn(player, view.id);
            push_roster_entry(out, id, player, &view.name, view.bot);
        }
        out.push(b']');
    }
    let removed: Vec<u16> = delta
        .removed
        .iter()
        .filter(|p| before.players.contains_key(*p))
        .filter_map(|p| roster.get(p))
        .collect();
    if !removed.is_empty() {
        out.extend_from_slice(b",\"r\":[");
        for (i, id) in removed.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_num(out, id);
        }
        out.push(b']');
    }
    let mut rows = Vec::new();
    let mut row = Vec::new();
    for (player, view) in &delta.players {
        let id = roster.learn(player, view.id);
        row.clear();
        if delta_row(id, before.players.get(player), view, &mut row) {
            rows.push(if rows.is_empty() { b'[' } else { b',' });
            rows.extend_from_slice(&row);
        }
    }
    if !rows.is_empty() {
        out.extend_from_slice(b",\"p\":");
        out.extend_from_slice(&rows);
        out.push(b']');
    }
    if !delta.shots.is_empty() {
        out.extend_from_slice(b",\"s\":[");
        for (i, s) in delta.shots.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'[');
            match roster.get(&s.from) {
                Some(id) => push_num(out, id),
                None => push_num(out, 0),
            }
            for n in [s.x0, s.y0, s.x1, s.y1] {
                out.push(b',');
                push_num(out, n);
            }
            out.extend_from_slice(if s.hit { b",1]" } else { b",0]" });
        }
        out.push(b']');
    }
}

fn push_player_ref(out: &mut Vec<u8>, roster: &Roster, player: &str) {
    match roster.get(player) {
        Some(id) => push_num(out, id),
        // Not in the roster (a record older than v2 ids): the player id itself.
        None => push_str(out, player),
    }
}

/// The fields of a v2 event (`"at_ms":..,"kind":..` and its facts, players by id).
pub(crate) fn write_event(out: &mut Vec<u8>, at_ms: u64, event: &MatchEvent, roster: &mut Roster) {
    out.extend_from_slice(b"\"at_ms\":");
    push_num(out, at_ms);
    match event {
        MatchEvent::MatchStarted {} => out.extend_from_slice(b",\"kind\":\"match_started\""),
        MatchEvent::PlayerJoined {
            player,
            name,
            bot,
            id,
        } => {
            let id = roster.learn(player, *id);
            out.extend_from_slice(b",\"kind\":\"player_joined\",\"id\":");
            push_num(out, id);
            out.extend_from_slice(b",\"player\":");
            push_str(out, player);
            out.extend_from_slice(b",\"name\":");
            push_str(out, name);
            out.extend_from_slice(if *bot {
                b",\"bot\":true"
            } else {
                b",\"bot\":false"
            });
        }
        MatchEvent::PlayerLeft { player } => {
            out.extend_from_slice(b",\"kind\":\"player_left\",\"id\":");
            push_player_ref(out, roster, player);
        }
        MatchEvent::Kill { killer, victim } => {
            out.extend_from_slice(b",\"kind\":\"kill\",\"killer\":");
            push_player_ref(out, roster, killer);
            out.extend_from_slice(b",\"victim\":");
            push_player_ref(out, roster, victim);
        }
        MatchEvent::MatchEnded { results } => {
            out.extend_from_slice(b",\"kind\":\"match_ended\",\"results\":");
            serde_json::to_writer(&mut *out, results).expect("results serialize");
        }
    }
}

/// One player as a v2 viewer holds them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct V2Player {
    pub x: i64,
    pub y: i64,
    pub angle: i64,
    pub hp: i64,
    pub alive: bool,
    pub score: i64,
    pub kills: i64,
    pub deaths: i64,
}

/// A roster entry: the player id, the name, whether a bot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterEntry {
    pub player: String,
    pub name: String,
    pub bot: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum V2Error {
    #[error("not a v2 {0}: {1}")]
    Malformed(&'static str, &'static str),
    #[error("delta names player {0}, who is not in the state")]
    UnknownPlayer(u64),
}

/// What a v2 viewer knows of a match: built from a snapshot, kept current by deltas and events.
/// Hostile input gets an error, never a panic.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct V2View {
    pub status: String,
    pub tick: u64,
    pub roster: BTreeMap<u64, RosterEntry>,
    pub players: BTreeMap<u64, V2Player>,
}

fn num(v: &Value, what: &'static str) -> Result<i64, V2Error> {
    v.as_i64().ok_or(V2Error::Malformed(what, "not an integer"))
}

fn roster_entry(v: &Value) -> Result<(u64, RosterEntry), V2Error> {
    let row = v
        .as_array()
        .ok_or(V2Error::Malformed("roster", "not an array"))?;
    let [id, player, name, bot] = row.as_slice() else {
        return Err(V2Error::Malformed("roster", "not [id, player, name, bot]"));
    };
    Ok((
        id.as_u64().ok_or(V2Error::Malformed("roster", "bad id"))?,
        RosterEntry {
            player: player
                .as_str()
                .ok_or(V2Error::Malformed("roster", "bad player"))?
                .to_string(),
            name: name
                .as_str()
                .ok_or(V2Error::Malformed("roster", "bad name"))?
                .to_string(),
            bot: num(bot, "roster")? != 0,
        },
    ))
}

impl V2View {
    /// The view a `snapshot` message describes.
    pub fn from_snapshot(msg: &Value) -> Result<V2View, V2Error> {
        let state = &msg["state"];
        let mut view = V2View {
            status: state["status"]
                .as_str()
                .ok_or(V2Error::Malformed("snapshot", "no status"))?
                .to_string(),
            tick: state["tick"]
                .as_u64()
                .ok_or(V2Error::Malformed("snapshot", "no tick"))?,
            ..V2View::default()
        };
        for e in state["roster"]
            .as_array()
            .ok_or(V2Error::Malformed("snapshot", "no roster"))?
        {
            let (id, entry) = roster_entry(e)?;
            view.roster.insert(id, entry);
        }
        for p in state["players"]
            .as_array()
            .ok_or(V2Error::Malformed("snapshot", "no players"))?
        {
            let row = p
                .as_array()
                .filter(|r| r.len() == 9)
                .ok_or(V2Error::Malformed(
                    "snapshot",
                    "a player row is not 9 numbers",
                ))?;
            let f = |i: usize| num(&row[i], "snapshot");
            view.players.insert(
                row[0]
                    .as_u64()
                    .ok_or(V2Error::Malformed("snapshot", "bad id"))?,
                V2Player {
                    x: f(1)?,
                    y: f(2)?,
                    angle: f(3)?,
                    hp: f(4)?,
                    alive: f(5)? != 0,
                    score: f(6)?,
                    kills: f(7)?,
                    deaths: f(8)?,
                },
            );
        }
        Ok(view)
    }

    /// Applies a `delta` message.
    pub fn apply_delta(&mut self, msg: &Value) -> Result<(), V2Error> {
        let Some(tick) = msg.get("t") else {
            // The envelope alone: a record the gateway could not read keeps its version and
            // changes nothing.
            return Ok(());
        };
        self.tick = tick.as_u64().ok_or(V2Error::Malformed("delta", "bad t"))?;
        if let Some(s) = msg.get("status") {
            self.status = s
                .as_str()
                .ok_or(V2Error::Malformed("delta", "bad status"))?
                .to_string();
        }
        if let Some(j) = msg.get("j") {
            for e in j.as_array().ok_or(V2Error::Malformed("delta", "bad j"))? {
                let (id, entry) = roster_entry(e)?;
                self.roster.insert(id, entry);
            }
        }
        if let Some(r) = msg.get("r") {
            for id in r.as_array().ok_or(V2Error::Malformed("delta", "bad r"))? {
                let id = id.as_u64().ok_or(V2Error::Malformed("delta", "bad r id"))?;
                self.players.remove(&id);
                self.roster.remove(&id);
            }
        }
        if let Some(p) = msg.get("p") {
            for row in p.as_array().ok_or(V2Error::Malformed("delta", "bad p"))? {
                self.apply_row(row)?;
            }
        }
        Ok(())
    }

    fn apply_row(&mut self, row: &Value) -> Result<(), V2Error> {
        let row = row
            .as_array()
            .filter(|r| r.len() >= 2)
            .ok_or(V2Error::Malformed("delta", "a row is not [id, mask, ...]"))?;
        let id = row[0]
            .as_u64()
            .ok_or(V2Error::Malformed("delta", "bad id"))?;
        let mask = row[1]
            .as_u64()
            .filter(|m| *m <= 255)
            .ok_or(V2Error::Malformed("delta", "bad mask"))? as u8;
        if row.len() != 2 + mask.count_ones() as usize {
            return Err(V2Error::Malformed(
                "delta",
                "row length does not match its mask",
            ));
        }
        let new = !self.players.contains_key(&id);
        if new && mask != ALL {
            return Err(V2Error::UnknownPlayer(id));
        }
        let player = self.players.entry(id).or_default();
        let mut values = row[2..].iter();
        let mut next = || num(values.next().expect("counted above"), "delta");
        if mask & X != 0 {
            player.x = player.x.saturating_add(next()?);
        }
        if mask & Y != 0 {
            player.y = player.y.saturating_add(next()?);
        }
        if mask & ANGLE != 0 {
            player.angle = next()?;
        }
        if mask & HP != 0 {
            player.hp = next()?;
        }
        if mask & ALIVE != 0 {
            player.alive = next()? != 0;
        }
        if mask & SCORE != 0 {
            player.score = next()?;
        }
        if mask & KILLS != 0 {
            player.kills = next()?;
        }
        if mask & DEATHS != 0 {
            player.deaths = next()?;
        }
        Ok(())
    }

    /// Applies an `event` message: a join adds its roster entry, a leave removes it.
    pub fn apply_event(&mut self, msg: &Value) -> Result<(), V2Error> {
        match msg["kind"].as_str() {
            Some("player_joined") => {
                let id = msg["id"]
                    .as_u64()
                    .ok_or(V2Error::Malformed("event", "no id"))?;
                let entry = RosterEntry {
                    player: msg["player"]
                        .as_str()
                        .ok_or(V2Error::Malformed("event", "no player"))?
                        .to_string(),
                    name: msg["name"]
                        .as_str()
                        .ok_or(V2Error::Malformed("event", "no name"))?
                        .to_string(),
                    bot: msg["bot"].as_bool().unwrap_or(false),
                };
                self.roster.insert(id, entry);
            }
            Some("player_left") => {
                if let Some(id) = msg["id"].as_u64() {
                    if !self.players.contains_key(&id) {
                        self.roster.remove(&id);
                    }
                }
            }
            // No kind: a record the gateway could not read, which keeps its version with the
            // envelope alone (found by the `viewer` fuzz target: this was refused).
            Some(_) | None => {}
        }
        Ok(())
    }

    /// Applies any v2 message (a snapshot replaces the view).
    pub fn apply(&mut self, msg: &Value) -> Result<(), V2Error> {
        match msg["type"].as_str() {
            Some("snapshot") => {
                *self = V2View::from_snapshot(msg)?;
                Ok(())
            }
            Some("delta") => self.apply_delta(msg),
            Some("event") => self.apply_event(msg),
            _ => Err(V2Error::Malformed("message", "unknown type")),
        }
    }

    /// The roster entries of the players in the state (what a snapshot would list).
    pub fn present_roster(&self) -> BTreeMap<u64, RosterEntry> {
        self.roster
            .iter()
            .filter(|(id, _)| self.players.contains_key(id))
            .map(|(id, e)| (*id, e.clone()))
            .collect()
    }
}
