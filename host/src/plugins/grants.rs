//! Outbound host grants: which URLs a plugin's `http-send` may reach, and
//! which addresses are not for plugins unless granted by name.
//!
//! Patterns: `*` (any host, any port), `host`, `host:port`, `*.domain` (any
//! subdomain), `*.domain:port`. Hosts compare case-insensitively. A pattern
//! without a port allows only the scheme's default port (80 for `http`, 443
//! for `https`). Deny by default: no patterns, no access.
//!
//! Independently of the patterns, non-public addresses (loopback, private,
//! link-local, CGNAT, cloud metadata, ...; see `non_public`) are refused unless
//! a pattern names that IP literally (`10.0.0.5:8080`, not `*`) or the vendor
//! sets `allow_private_addresses`. `caps::http` applies that rule to IP
//! literals in URLs and to every address a name resolves to.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Grants {
    patterns: Vec<Pattern>,
}

#[derive(Debug, Clone, PartialEq)]
enum Pattern {
    Any,
    Host { host: String, port: Option<u16>, subdomains: bool },
}

impl Grants {
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Grants, String> {
        let patterns = patterns.iter().map(|p| parse(p.as_ref())).collect::<Result<_, _>>()?;
        Ok(Grants { patterns })
    }

    pub fn deny_all() -> Grants {
        Grants::default()
    }

    /// May a request go to `host:port`? `default_port` is the port of the
    /// URL's scheme (80, 443): the only one a pattern without a port allows.
    pub fn allows(&self, host: &str, port: u16, default_port: u16) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.patterns.iter().any(|p| match p {
            Pattern::Any => true,
            Pattern::Host { host: h, port: pp, subdomains } => {
                let host_ok = if *subdomains {
                    host.len() > h.len() + 1
                        && host.ends_with(h.as_str())
                        && host.as_bytes()[host.len() - h.len() - 1] == b'.'
                } else {
                    host == h
                };
                host_ok && port_ok(*pp, port, default_port)
            }
        })
    }

    /// Does some pattern cover a host a plugin declared in its `info`
    /// (`host` or `host:port`)? With a port: that port by http or https;
    /// without one: the host on any port a pattern allows.
    pub fn covers_declared(&self, declared: &str) -> bool {
        let declared = declared.trim().to_ascii_lowercase();
        let (host, port) = match declared.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') || h.ends_with(']') => (h.to_string(), p.parse::<u16>().ok()),
            _ => (declared.clone(), None),
        };
        match port {
            Some(port) => self.allows(&host, port, 80) || self.allows(&host, port, 443),
            None => self.patterns.iter().any(|p| match p {
                Pattern::Any => true,
                Pattern::Host { port, .. } => {
                    let probe = Grants { patterns: vec![p.clone()] };
                    let port = port.unwrap_or(443);
                    probe.allows(&host, port, 443)
                }
            }),
        }
    }

    /// May a request go to this URL? Only http(s) URLs with a host qualify.
    pub fn allows_url(&self, url: &reqwest::Url) -> bool {
        let Some(default_port) = default_port(url.scheme()) else { return false };
        match (url.host_str(), url.port_or_known_default()) {
            (Some(h), Some(p)) => self.allows(h, p, default_port),
            _ => false,
        }
    }

    /// The IP addresses the patterns name literally (not through `*` or
    /// `*.domain`) for `port`: the non-public addresses a request to that
    /// port may reach without `allow_private_addresses`.
    pub fn named_ips(&self, port: u16, default_port: u16) -> BTreeSet<IpAddr> {
        self.patterns
            .iter()
            .filter_map(|p| match p {
                Pattern::Host { host, port: pp, subdomains: false } if port_ok(*pp, port, default_port) => {
                    host.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
                }
                _ => None,
            })
            .collect()
    }
}

/// The default port of a scheme `http-send` speaks.
pub fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

fn port_ok(pattern: Option<u16>, port: u16, default_port: u16) -> bool {
    match pattern {
        Some(p) => p == port,
        None => port == default_port,
    }
}

/// Why `ip` is not a public address ("a loopback address", ...), or `None`
/// for a public one. IPv4 inside IPv6 (mapped, compatible, NAT64) is judged
/// by its IPv4 address.
pub fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => v6_class(v6),
    }
}

fn v4_class(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    Some(if ip == Ipv4Addr::new(169, 254, 169, 254) {
        "a cloud metadata address"
    } else if o[0] == 0 {
        "an unspecified (0.0.0.0/8) address"
    } else if ip.is_loopback() {
        "a loopback address"
    } else if ip.is_private() {
        "a private (RFC 1918) address"
    } else if ip.is_link_local() {
        "a link-local address"
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        "a carrier-grade NAT (100.64.0.0/10) address"
    } else if ip.is_broadcast() {
        "the broadcast address"
    } else if ip.is_multicast() {
        "a multicast address"
    } else if o[0] >= 240 {
        "a reserved (240.0.0.0/4) address"
    } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
        "an IETF protocol (192.0.0.0/24) address"
    } else {
        return None;
    })
}

fn v6_class(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    let embedded_v4 = || Ipv4Addr::from(((s[6] as u32) << 16) | s[7] as u32);
    Some(if ip == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254) {
        "a cloud metadata address"
    } else if ip.is_unspecified() {
        "an unspecified address"
    } else if ip.is_loopback() {
        "a loopback address"
    } else if (s[0] & 0xfe00) == 0xfc00 {
        "a unique local (fc00::/7) address"
    } else if (s[0] & 0xffc0) == 0xfe80 {
        "a link-local address"
    } else if (s[0] & 0xffc0) == 0xfec0 {
        "a site-local address"
    } else if ip.is_multicast() {
        "a multicast address"
    } else if s[..6] == [0; 6] || (s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4]) {
        // IPv4-compatible (::a.b.c.d) or NAT64 (64:ff9b::a.b.c.d).
        return v4_class(embedded_v4());
    } else {
        return None;
    })
}

fn parse(p: &str) -> Result<Pattern, String> {
    let p = p.trim();
    if p == "*" {
        return Ok(Pattern::Any);
    }
    let p = p.strip_prefix("http://").or_else(|| p.strip_prefix("https://")).unwrap_or(p);
    let p = p.trim_end_matches('/');
    if p.is_empty() || p.contains('/') {
        return Err(format!("invalid host pattern {p:?}: expected host, host:port, *.domain or *"));
    }
    let (host, port) = match p.rsplit_once(':') {
        Some((h, _)) if !h.ends_with(']') && h.contains(':') => (p, None), // bare IPv6
        Some((h, port)) => {
            let port: u16 = port.parse().map_err(|_| format!("invalid port in host pattern {p:?}"))?;
            (h, Some(port))
        }
        None => (p, None),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    let (host, subdomains) = match host.strip_prefix("*.") {
        Some(rest) => (rest.to_string(), true),
        None => (host, false),
    };
    if host.is_empty() || host.contains('*') {
        return Err(format!("invalid host pattern {p:?}: `*` only as `*` or a leading `*.`"));
    }
    Ok(Pattern::Host { host, port, subdomains })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_by_default() {
        assert!(!Grants::deny_all().allows("127.0.0.1", 80, 80));
    }

    #[test]
    fn host_port_and_wildcards() {
        let g = Grants::new(&["127.0.0.1:9001", "api.example.com", "*.vendor.io"]).unwrap();
        assert!(g.allows("127.0.0.1", 9001, 80));
        assert!(!g.allows("127.0.0.1", 9002, 80));
        assert!(g.allows("API.example.com", 443, 443));
        assert!(!g.allows("evil-api.example.com", 443, 443));
        assert!(g.allows("eu.vendor.io", 443, 443));
        assert!(!g.allows("vendor.io", 443, 443));
        assert!(!g.allows("evilvendor.io", 443, 443));
    }

    #[test]
    fn a_pattern_without_a_port_allows_only_the_default_port() {
        let g = Grants::new(&["api.example.com", "*.vendor.io"]).unwrap();
        assert!(!g.allows("api.example.com", 8443, 443));
        assert!(!g.allows("eu.vendor.io", 8443, 443));
        let url = |u: &str| u.parse::<reqwest::Url>().unwrap();
        assert!(g.allows_url(&url("https://api.example.com/x")));
        assert!(g.allows_url(&url("http://api.example.com/x")));
        assert!(g.allows_url(&url("https://api.example.com:443/x")));
        assert!(!g.allows_url(&url("https://api.example.com:80/x")), "80 is not https's default");
        assert!(!g.allows_url(&url("http://api.example.com:443/x")), "443 is not http's default");
        assert!(!g.allows_url(&url("https://api.example.com:22/x")));
        let any = Grants::new(&["*"]).unwrap();
        assert!(any.allows_url(&url("http://example.org:8080/")), "`*` allows any port");
    }

    #[test]
    fn urls_need_http_and_a_granted_host() {
        let g = Grants::new(&["localhost:8080"]).unwrap();
        assert!(g.allows_url(&"http://localhost:8080/x".parse().unwrap()));
        assert!(!g.allows_url(&"http://localhost:8081/x".parse().unwrap()));
        assert!(!g.allows_url(&"file:///etc/passwd".parse().unwrap()));
        assert!(!Grants::new(&["*"]).unwrap().allows_url(&"ftp://a.b/".parse().unwrap()));
        assert!(Grants::new(&["*"]).unwrap().allows_url(&"https://a.b/".parse().unwrap()));
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(Grants::new(&["a/b"]).is_err());
        assert!(Grants::new(&["a:b"]).is_err());
        assert!(Grants::new(&["a*.b"]).is_err());
    }

    #[test]
    fn only_literal_patterns_name_ips_and_only_for_their_port() {
        let g =
            Grants::new(&["*", "*.internal", "10.0.0.5:8080", "[::1]:9000", "192.168.1.1", "api.internal"]).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(g.named_ips(8080, 80), [ip("10.0.0.5")].into());
        assert_eq!(g.named_ips(9000, 80), [ip("::1")].into());
        assert_eq!(g.named_ips(80, 80), [ip("192.168.1.1")].into(), "no port: the default port only");
        assert!(g.named_ips(8081, 80).is_empty());
        assert!(Grants::new(&["*"]).unwrap().named_ips(80, 80).is_empty());
    }

    #[test]
    fn non_public_addresses_are_named() {
        let class = |s: &str| non_public(s.parse().unwrap());
        for (addr, what) in [
            ("127.0.0.1", "loopback"),
            ("127.8.9.10", "loopback"),
            ("10.1.2.3", "RFC 1918"),
            ("172.16.0.1", "RFC 1918"),
            ("172.31.255.255", "RFC 1918"),
            ("192.168.0.1", "RFC 1918"),
            ("169.254.1.1", "link-local"),
            ("169.254.169.254", "metadata"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("255.255.255.255", "broadcast"),
            ("100.64.0.1", "carrier-grade NAT"),
            ("100.127.255.255", "carrier-grade NAT"),
            ("100.100.100.200", "carrier-grade NAT"),
            ("224.0.0.1", "multicast"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fc00::1", "unique local"),
            ("fd12:3456::1", "unique local"),
            ("fd00:ec2::254", "metadata"),
            ("fe80::1", "link-local"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "metadata"),
            ("::ffff:10.0.0.1", "RFC 1918"),
            ("64:ff9b::10.0.0.1", "RFC 1918"),
            ("::10.0.0.1", "RFC 1918"),
        ] {
            let c = class(addr).unwrap_or_else(|| panic!("{addr} passed as public"));
            assert!(c.contains(what), "{addr}: {c}");
        }
        for public in ["8.8.8.8", "1.1.1.1", "100.63.255.255", "100.128.0.1", "172.32.0.1", "2606:4700::1111"] {
            assert_eq!(class(public), None, "{public}");
        }
    }
}
