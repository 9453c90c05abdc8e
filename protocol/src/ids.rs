/// A match id. It is also a token of NATS subjects and of Redis keys, so it is restricted to
/// `[A-Za-z0-9_-]{1,64}` (see [`valid_match_id`]).
pub type MatchId = String;
/// A player id, as issued by guest auth or given to a bot.
pub type PlayerId = String;

/// Whether `id` can name a match: short, and made only of characters that are safe inside a
/// NATS subject token, a Redis key and a URL path segment.
pub fn valid_match_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn match_ids_are_subject_safe() {
        assert!(valid_match_id("eu-3f2a_1"));
        for bad in ["", "a.b", "a*", "a>", "a b", "é", &"x".repeat(65)] {
            assert!(!valid_match_id(bad), "{bad:?} accepted");
        }
    }
}
