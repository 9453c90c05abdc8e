//! Partner keys: long-lived credentials for broadcasters and data partners, each with its own
//! broadcast delay, stream cap and the matches it covers. A key is `gsp_` and 40 random
//! characters; only its SHA-256 is stored, so a leaked store does not leak keys.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What every partner key begins with (how a bearer credential is told from a signed token).
pub const KEY_PREFIX: &str = "gsp_";

/// A partner as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partner {
    pub name: String,
    /// The broadcast delay this partner's streams get: `Some(0)` is live even for a delayed
    /// match; `None` is the match's own (public) delay.
    pub delay_ms: Option<u64>,
    /// Concurrent streams at most (`None`: the per-user default).
    pub max_streams: Option<u32>,
    /// Which matches the key opens (`*` and `?` wildcards; `None`: all).
    pub matches: Option<String>,
}

impl Partner {
    /// Whether this partner may watch `match_id`.
    pub fn covers(&self, match_id: &str) -> bool {
        self.matches
            .as_deref()
            .is_none_or(|pattern| glob_matches(pattern, match_id))
    }

    /// The subject streams of this partner are counted and logged under.
    pub fn subject(&self) -> String {
        format!("partner:{}", self.name)
    }
}

/// A partner name: what `partners add` accepts (it shows up in logs and metric labels).
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// A new key from 30 random bytes (the caller's randomness: this crate stays pure).
pub fn new_key(random: [u8; 30]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random);
    format!("{KEY_PREFIX}{body}")
}

/// Whether a bearer credential is a partner key (rather than a signed token).
pub fn is_key(credential: &str) -> bool {
    credential.starts_with(KEY_PREFIX)
}

/// The stored form of a key.
pub fn key_hash(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `*` matches any run of characters, `?` any one; everything else itself.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // Iterative matching with one backtrack point for the last `*` (linear in practice).
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_matches("*", "eu-1"));
        assert!(glob_matches("eu-*", "eu-17"));
        assert!(!glob_matches("eu-*", "na-1"));
        assert!(glob_matches("eu-?", "eu-1"));
        assert!(!glob_matches("eu-?", "eu-12"));
        assert!(glob_matches("*-1*", "eu-17"));
        assert!(glob_matches("m*a*b", "mxxaxxab"));
        assert!(!glob_matches("m*a*b", "mxxaxxa"));
        assert!(glob_matches("exact", "exact") && !glob_matches("exact", "exactly"));
    }

    #[test]
    fn keys_are_prefixed_and_only_their_hash_is_kept() {
        let key = new_key([7; 30]);
        assert!(is_key(&key) && key.len() == KEY_PREFIX.len() + 40);
        assert_eq!(key_hash(&key).len(), 64);
        assert_ne!(key_hash(&key), key_hash(&new_key([8; 30])));
        assert!(!is_key("eyJ0eXAi.payload.sig"));
    }

    #[test]
    fn coverage_and_names() {
        let p = Partner {
            name: "odds-co".into(),
            delay_ms: Some(0),
            max_streams: Some(50),
            matches: Some("eu-*".into()),
        };
        assert!(p.covers("eu-3") && !p.covers("na-3"));
        assert_eq!(p.subject(), "partner:odds-co");
        assert!(valid_name("odds-co.tv_1") && !valid_name("") && !valid_name("a b"));
    }
}
