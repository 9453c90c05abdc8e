//! Which gateways own a match: rendezvous (highest-random-weight) hashing. Every gateway and
//! client computes the same answer from the same member list, and when a gateway leaves only
//! the matches it owned move.

use sha2::{Digest, Sha256};

fn weight(member: &str, match_id: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(member.as_bytes());
    h.update([0]);
    h.update(match_id.as_bytes());
    u64::from_be_bytes(h.finalize()[..8].try_into().expect("8 bytes"))
}

/// The `k` members that own `match_id`, most preferred first.
pub fn owners<'a>(match_id: &str, members: &'a [String], k: usize) -> Vec<&'a String> {
    let mut ranked: Vec<(u64, &String)> =
        members.iter().map(|m| (weight(m, match_id), m)).collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    ranked.dedup_by(|a, b| a.1 == b.1);
    ranked.into_iter().take(k).map(|(_, m)| m).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn owners_spread_evenly() {
        let members: Vec<String> = (0..4).map(|i| format!("gw-{i}")).collect();
        let mut first = std::collections::HashMap::new();
        for m in 0..4000 {
            *first
                .entry(owners(&format!("eu-{m}"), &members, 1)[0].clone())
                .or_insert(0) += 1;
        }
        for n in first.values() {
            assert!((800..1200).contains(n), "{first:?}");
        }
    }

    proptest! {
        #[test]
        fn removing_a_member_moves_only_its_matches(n in 2usize..8, gone in 0usize..8, id in "[a-z0-9-]{1,20}") {
            let members: Vec<String> = (0..n).map(|i| format!("gw-{i}")).collect();
            let gone = gone % n;
            let before = owners(&id, &members, 2);
            prop_assert_eq!(before.len(), 2.min(n));
            let rest: Vec<String> = members.iter().filter(|m| **m != members[gone]).cloned().collect();
            let after = owners(&id, &rest, 2);
            // Owners that stayed keep their order; a departed owner is replaced.
            let kept: Vec<&String> = before.iter().copied().filter(|m| **m != members[gone]).collect();
            prop_assert_eq!(&after[..kept.len()], &kept[..]);
        }
    }
}
