//! Who the client is when Grandstand sits behind reverse proxies or load balancers, and the key
//! per-address limits count it under.
//!
//! Behind a proxy every connection comes from the proxy's address, so per-address caps would
//! throttle the whole audience as one client. From a peer listed in `--trusted-proxies` the
//! client address is read from `Forwarded` (RFC 7239) or, when absent, `X-Forwarded-For`: the
//! rightmost hop that is not itself a trusted proxy (hops left of it were written by the client
//! and can be forged). From any other peer those headers are ignored.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::http::{self, HeaderMap};
use ipnet::IpNet;

/// The proxies whose forwarding headers are believed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses CIDRs (`10.0.0.0/8`, `fd00::/8`) or single addresses (`127.0.0.1`).
    pub fn parse(items: &[String]) -> Result<Self, String> {
        let mut nets = Vec::new();
        for item in items.iter().flat_map(|s| s.split(',')) {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let net = match item.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => item
                    .parse::<IpAddr>()
                    .map(IpNet::from)
                    .map_err(|_| format!("not a CIDR or an IP address: {item:?}"))?,
            };
            nets.push(net);
        }
        Ok(TrustedProxies(nets))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address for a request that arrived from `peer`.
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> SocketAddr {
        if !self.trusts(peer.ip()) {
            return peer;
        }
        let hops = forwarded_hops(headers);
        // Walk from the nearest hop outwards; the first one we do not trust is the client.
        // When every hop is trusted (a request made by a proxy itself), the farthest is.
        let mut client = None;
        for hop in hops.iter().rev() {
            let Some(ip) = hop else {
                // A hop we cannot read (obfuscated, `unknown`): nothing beyond it can be
                // believed, and it is not an address to key limits by either.
                break;
            };
            client = Some(*ip);
            if !self.trusts(*ip) {
                break;
            }
        }
        client.map_or(peer, |ip| SocketAddr::new(canonical(ip), peer.port()))
    }
}

/// The hops a request went through, nearest last: from `Forwarded`'s `for=` parameters when the
/// header is present, from `X-Forwarded-For` otherwise. `None` for a hop that is not an IP.
fn forwarded_hops(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let forwarded: Vec<_> = headers.get_all(http::header::FORWARDED).iter().collect();
    if !forwarded.is_empty() {
        return forwarded
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|element| {
                element.split(';').find_map(|pair| {
                    let (name, value) = pair.split_once('=')?;
                    name.trim()
                        .eq_ignore_ascii_case("for")
                        .then(|| node_address(value.trim()))
                })
            })
            .collect();
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|hop| node_address(hop.trim()))
        .collect()
}

/// An address out of a `for=` node (`192.0.2.1`, `"192.0.2.1:4711"`, `"[2001:db8::1]:4711"`)
/// or an `X-Forwarded-For` hop.
fn node_address(node: &str) -> Option<IpAddr> {
    let node = node.trim_matches('"');
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    node.parse::<SocketAddr>().ok().map(|s| s.ip())
}

/// IPv4-mapped IPv6 addresses (a dual-stack listener's view of IPv4 clients) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The limit key of the client a request came from (its address as the server saw it, after
/// `--trusted-proxies`); `None` when the request came without a socket (a router driven by
/// `oneshot` in tests).
pub fn limit_key_of(extensions: &http::Extensions) -> Option<IpAddr> {
    extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| limit_key(c.0.ip()))
}

/// The key per-address limits count a client under: its IPv4 address, or its IPv6 /64 (one
/// subscriber's network: a client can pick any of 2^64 addresses in it at will).
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(list: &str) -> TrustedProxies {
        TrustedProxies::parse(&[list.to_string()]).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn client(trusted: &str, peer: &str, pairs: &[(&str, &str)]) -> String {
        proxies(trusted)
            .client(peer.parse().unwrap(), &headers(pairs))
            .ip()
            .to_string()
    }

    #[test]
    fn headers_from_an_untrusted_peer_are_ignored() {
        let xff = [("x-forwarded-for", "1.2.3.4")];
        assert_eq!(client("10.0.0.0/8", "192.0.2.9:5000", &xff), "192.0.2.9");
        assert_eq!(client("", "10.0.0.1:5000", &xff), "10.0.0.1");
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        // The client forged a first hop; the trusted proxy appended the real one.
        let xff = [("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.0.0.2")];
        assert_eq!(client("10.0.0.0/8", "10.0.0.1:5000", &xff), "203.0.113.7");
        // Split headers count as one list, in order.
        let split = [
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "203.0.113.7"),
        ];
        assert_eq!(client("10.0.0.1", "10.0.0.1:5000", &split), "203.0.113.7");
        // Every hop trusted: the farthest.
        let inner = [("x-forwarded-for", "10.1.1.1, 10.0.0.2")];
        assert_eq!(client("10.0.0.0/8", "10.0.0.1:5000", &inner), "10.1.1.1");
        // No header: the peer itself.
        assert_eq!(client("10.0.0.0/8", "10.0.0.1:5000", &[]), "10.0.0.1");
    }

    #[test]
    fn forwarded_wins_over_x_forwarded_for() {
        let both = [
            (
                "forwarded",
                r#"for=6.6.6.6, for="[2001:db8::1]:4711";proto=https"#,
            ),
            ("x-forwarded-for", "198.51.100.1"),
        ];
        assert_eq!(client("127.0.0.1", "127.0.0.1:5000", &both), "2001:db8::1");
        let ported = [("forwarded", r#"For="192.0.2.60:47011";by=10.0.0.1"#)];
        assert_eq!(client("127.0.0.1", "127.0.0.1:5000", &ported), "192.0.2.60");
    }

    #[test]
    fn an_unreadable_hop_stops_the_walk() {
        let hidden = [("forwarded", "for=6.6.6.6, for=_hidden, for=10.0.0.3")];
        assert_eq!(client("10.0.0.0/8", "10.0.0.1:5000", &hidden), "10.0.0.3");
        let unknown = [("x-forwarded-for", "6.6.6.6, unknown")];
        assert_eq!(client("10.0.0.0/8", "10.0.0.1:5000", &unknown), "10.0.0.1");
    }

    #[test]
    fn mapped_addresses_are_ipv4() {
        let xff = [("x-forwarded-for", "::ffff:203.0.113.7")];
        assert_eq!(
            client("127.0.0.1", "[::ffff:127.0.0.1]:80", &xff),
            "203.0.113.7"
        );
    }

    #[test]
    fn ipv6_clients_are_limited_per_64() {
        let a = limit_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = limit_key("2001:db8:1:2:bbbb::9".parse().unwrap());
        let other = limit_key("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, other);
        assert_eq!(a.to_string(), "2001:db8:1:2::");
        let v4: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(limit_key(v4), v4);
    }

    #[test]
    fn bad_cidrs_are_named() {
        let e = TrustedProxies::parse(&["10.0.0.0/8,nope".to_string()]).unwrap_err();
        assert!(e.contains("nope"), "{e}");
        assert!(TrustedProxies::parse(&["10.0.0.0/33".to_string()]).is_err());
        assert!(proxies("").is_empty());
    }
}
