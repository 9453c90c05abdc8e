//! Who is in a room: the connected players' sessions (by address), the real players restored
//! from a checkpoint who have not reconnected yet, and the numbering of bots. Plain data with
//! the rules about it; the room decides what joining or leaving does to the world.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::session::Client;

/// A player not heard from for this long is disconnected; a player restored from a checkpoint
/// who has not come back within it is removed.
pub const PLAYER_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
pub struct Roster {
    /// Keyed with a fast hasher: looked up once per datagram, by an address the port has
    /// already matched to a session.
    clients: rustc_hash::FxHashMap<SocketAddr, Client>,
    /// Real players restored from a checkpoint who have not reconnected yet, and since when.
    awaiting: HashMap<u16, Instant>,
    bot_serial: usize,
}

impl Roster {
    /// A roster for a match whose players are `player_ids` (empty for a new match): bot ids
    /// stay unique across a takeover, so numbering continues after the highest bot.
    pub fn continuing<'a>(match_id: &str, player_ids: impl IntoIterator<Item = &'a str>) -> Roster {
        let prefix = format!("{match_id}-bot");
        let bot_serial = player_ids
            .into_iter()
            .filter_map(|id| id.strip_prefix(&prefix)?.parse().ok())
            .max()
            .unwrap_or(0);
        Roster {
            bot_serial,
            ..Roster::default()
        }
    }

    /// The id and name of the next bot.
    pub fn next_bot(&mut self, match_id: &str) -> (String, String) {
        self.bot_serial += 1;
        let n = self.bot_serial;
        (format!("{match_id}-bot{n}"), format!("Bot {n}"))
    }

    /// Real players restored from a checkpoint get [`PLAYER_TIMEOUT`] to reconnect.
    pub fn await_reconnect(&mut self, entity: u16, now: Instant) {
        self.awaiting.insert(entity, now);
    }

    pub fn get(&self, addr: &SocketAddr) -> Option<&Client> {
        self.clients.get(addr)
    }

    pub fn get_mut(&mut self, addr: &SocketAddr) -> Option<&mut Client> {
        self.clients.get_mut(addr)
    }

    pub fn insert(&mut self, client: Client) {
        self.awaiting.remove(&client.entity);
        self.clients.insert(client.addr, client);
    }

    pub fn remove(&mut self, addr: &SocketAddr) -> Option<Client> {
        self.clients.remove(addr)
    }

    /// The address of `player`'s session, if connected.
    pub fn address_of(&self, player: &str) -> Option<SocketAddr> {
        self.clients
            .values()
            .find(|c| c.player == player)
            .map(|c| c.addr)
    }

    pub fn by_entity_mut(&mut self, entity: u16) -> Option<&mut Client> {
        self.clients.values_mut().find(|c| c.entity == entity)
    }

    pub fn is_connected(&self, entity: u16) -> bool {
        self.clients.values().any(|c| c.entity == entity)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Client> {
        self.clients.values()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Client> {
        self.clients.values_mut()
    }

    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.clients.keys().copied().collect()
    }

    /// Sessions not heard from within [`PLAYER_TIMEOUT`] of `now`.
    pub fn quiet(&self, now: Instant) -> Vec<SocketAddr> {
        self.clients
            .values()
            .filter(|c| now.saturating_duration_since(c.last_heard) > PLAYER_TIMEOUT)
            .map(|c| c.addr)
            .collect()
    }

    /// Restored players who did not reconnect within [`PLAYER_TIMEOUT`]: forgotten here, to be
    /// removed from the world by the room.
    pub fn take_overdue(&mut self, now: Instant) -> Vec<u16> {
        let overdue: Vec<u16> = self
            .awaiting
            .iter()
            .filter(|(_, since)| now.saturating_duration_since(**since) > PLAYER_TIMEOUT)
            .map(|(e, _)| *e)
            .collect();
        for e in &overdue {
            self.awaiting.remove(e);
        }
        overdue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(port: u16, entity: u16, player: &str) -> Client {
        Client::new(
            SocketAddr::from(([127, 0, 0, 1], port)),
            u64::from(port),
            entity,
            player.into(),
            0,
        )
    }

    #[test]
    fn bots_keep_unique_ids_across_a_takeover() {
        let mut fresh = Roster::continuing("eu-1", []);
        assert_eq!(fresh.next_bot("eu-1"), ("eu-1-bot1".into(), "Bot 1".into()));
        let players = [
            "eu-1-bot3",
            "alice",
            "eu-1-bot12",
            "eu-2-bot40",
            "eu-1-botx",
        ];
        let mut restored = Roster::continuing("eu-1", players);
        assert_eq!(restored.next_bot("eu-1").0, "eu-1-bot13");
    }

    #[test]
    fn sessions_are_found_by_address_player_and_entity() {
        let mut roster = Roster::default();
        roster.insert(client(1000, 4, "alice"));
        roster.insert(client(1001, 5, "bob"));
        assert_eq!(
            roster.address_of("bob"),
            Some(SocketAddr::from(([127, 0, 0, 1], 1001)))
        );
        assert!(roster.is_connected(4) && !roster.is_connected(6));
        assert_eq!(
            roster.by_entity_mut(5).map(|c| c.player.clone()),
            Some("bob".into())
        );
        let gone = roster.remove(&SocketAddr::from(([127, 0, 0, 1], 1000)));
        assert_eq!(gone.map(|c| c.entity), Some(4));
        assert_eq!(roster.addresses().len(), 1);
    }

    #[test]
    fn quiet_sessions_and_players_who_never_came_back_time_out() {
        let mut roster = Roster::default();
        let start = Instant::now();
        roster.insert(client(1000, 4, "alice"));
        roster.await_reconnect(7, start);
        roster.await_reconnect(8, start);
        // Player 8 reconnects in time: no longer awaited.
        roster.insert(client(1001, 8, "carol"));
        assert!(roster.quiet(start).is_empty());
        assert!(roster
            .take_overdue(start + Duration::from_secs(1))
            .is_empty());
        let later = start + PLAYER_TIMEOUT + Duration::from_millis(10);
        assert_eq!(roster.quiet(later).len(), 2);
        assert_eq!(roster.take_overdue(later), vec![7]);
        assert!(
            roster.take_overdue(later).is_empty(),
            "forgotten once taken"
        );
    }
}
