//! The faults the chaos runner injects, typed: a kind (what breaks), and which of the cluster's
//! processes of that kind it hits. `--faults` takes `kind` or `kind:N` (the N-th target,
//! 1-based) or `all` (one of each kind).

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    KillGame,
    KillGateway,
    KillAggregator,
    KillApi,
    KillNats,
    RedisFailover,
    RedisEmpty,
    PostgresDown,
    FreezeGateway,
}

impl FaultKind {
    pub const ALL: [FaultKind; 9] = [
        FaultKind::KillGame,
        FaultKind::KillGateway,
        FaultKind::KillAggregator,
        FaultKind::KillApi,
        FaultKind::KillNats,
        FaultKind::RedisFailover,
        FaultKind::RedisEmpty,
        FaultKind::PostgresDown,
        FaultKind::FreezeGateway,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillGame => "kill-game",
            FaultKind::KillGateway => "kill-gateway",
            FaultKind::KillAggregator => "kill-aggregator",
            FaultKind::KillApi => "kill-api",
            FaultKind::KillNats => "kill-nats",
            FaultKind::RedisFailover => "redis-failover",
            FaultKind::RedisEmpty => "redis-empty",
            FaultKind::PostgresDown => "postgres-down",
            FaultKind::FreezeGateway => "freeze-gateway",
        }
    }
}

/// One fault on one target (targets count from 1, as the cluster names its processes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    KillGame(u8),
    KillGateway(u8),
    KillAggregator(u8),
    KillApi,
    KillNats(u8),
    /// kill -9 of the Redis primary; the Sentinels promote its replica; it comes back as the
    /// new primary's replica.
    RedisFailover,
    RedisEmpty,
    PostgresDown,
    FreezeGateway(u8),
}

impl Fault {
    /// A fault of `kind` on its `target`-th process (0-based, wrapping around the cluster's
    /// 2 game servers, 3 gateways, 2 aggregators and 3 NATS nodes).
    pub fn of(kind: FaultKind, target: u8) -> Fault {
        match kind {
            FaultKind::KillGame => Fault::KillGame(1 + target % 2),
            FaultKind::KillGateway => Fault::KillGateway(1 + target % 3),
            FaultKind::KillAggregator => Fault::KillAggregator(1 + target % 2),
            FaultKind::KillApi => Fault::KillApi,
            FaultKind::KillNats => Fault::KillNats(1 + target % 3),
            FaultKind::RedisFailover => Fault::RedisFailover,
            FaultKind::RedisEmpty => Fault::RedisEmpty,
            FaultKind::PostgresDown => Fault::PostgresDown,
            FaultKind::FreezeGateway => Fault::FreezeGateway(1 + target % 3),
        }
    }

    pub fn kind(self) -> FaultKind {
        match self {
            Fault::KillGame(_) => FaultKind::KillGame,
            Fault::KillGateway(_) => FaultKind::KillGateway,
            Fault::KillAggregator(_) => FaultKind::KillAggregator,
            Fault::KillApi => FaultKind::KillApi,
            Fault::KillNats(_) => FaultKind::KillNats,
            Fault::RedisFailover => FaultKind::RedisFailover,
            Fault::RedisEmpty => FaultKind::RedisEmpty,
            Fault::PostgresDown => FaultKind::PostgresDown,
            Fault::FreezeGateway(_) => FaultKind::FreezeGateway,
        }
    }

    pub fn target(self) -> String {
        match self {
            Fault::KillGame(n) => format!("game-{n}"),
            Fault::KillGateway(n) | Fault::FreezeGateway(n) => format!("gateway-{n}"),
            Fault::KillAggregator(n) => format!("aggregator-{n}"),
            Fault::KillApi => "api".into(),
            Fault::KillNats(n) => format!("nats-{n}"),
            Fault::RedisFailover => "redis-primary".into(),
            Fault::RedisEmpty => "redis".into(),
            Fault::PostgresDown => "postgres".into(),
        }
    }
}

/// What `--faults` asks for: every kind once, or one kind on a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultSpec {
    All,
    One(FaultKind, u8),
}

impl FaultSpec {
    pub fn faults(&self) -> Vec<Fault> {
        match self {
            FaultSpec::All => FaultKind::ALL
                .iter()
                .enumerate()
                .map(|(i, &k)| Fault::of(k, i as u8))
                .collect(),
            FaultSpec::One(kind, target) => vec![Fault::of(*kind, *target)],
        }
    }
}

impl FromStr for FaultSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<FaultSpec, String> {
        if s == "all" {
            return Ok(FaultSpec::All);
        }
        let (name, target) = match s.split_once(':') {
            Some((k, n)) => {
                let n: u8 = n
                    .parse()
                    .map_err(|_| format!("{n:?} is not a target number (1, 2, 3...)"))?;
                (k, n.max(1) - 1)
            }
            None => (s, 0),
        };
        let kind = FaultKind::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| {
                let kinds: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown fault {name:?}; one of all, {}", kinds.join(", "))
            })?;
        Ok(FaultSpec::One(kind, target))
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_specs_name_a_kind_and_a_target() {
        assert_eq!(
            FaultSpec::from_str("kill-nats:3").unwrap().faults(),
            vec![Fault::KillNats(3)]
        );
        assert_eq!(
            FaultSpec::from_str("kill-nats").unwrap().faults(),
            vec![Fault::KillNats(1)]
        );
        // Targets wrap around the cluster's processes of that kind.
        assert_eq!(
            FaultSpec::from_str("kill-game:3").unwrap().faults(),
            vec![Fault::KillGame(1)]
        );
        let all = FaultSpec::from_str("all").unwrap().faults();
        assert_eq!(all.len(), FaultKind::ALL.len());
        assert!(all.iter().zip(FaultKind::ALL).all(|(f, k)| f.kind() == k));
        assert!(FaultSpec::from_str("kill-everything")
            .unwrap_err()
            .contains("one of all, kill-game"));
        assert!(FaultSpec::from_str("kill-nats:x").is_err());
    }
}
