//! Outbound host grants: which URLs a plugin's `http-send` may reach.
//!
//! Patterns: `*` (anything), `host`, `host:port`, `*.domain` (any subdomain,
//! any port), `*.domain:port`. Hosts compare case-insensitively; a pattern
//! without a port matches any port. Deny by default: no patterns, no access.

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

    /// May a request go to `host:port`?
    pub fn allows(&self, host: &str, port: u16) -> bool {
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
                host_ok && pp.is_none_or(|pp| pp == port)
            }
        })
    }

    /// May a request go to this URL? Only http(s) URLs with a host qualify.
    pub fn allows_url(&self, url: &reqwest::Url) -> bool {
        if !matches!(url.scheme(), "http" | "https") {
            return false;
        }
        match (url.host_str(), url.port_or_known_default()) {
            (Some(h), Some(p)) => self.allows(h, p),
            _ => false,
        }
    }
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
        assert!(!Grants::deny_all().allows("127.0.0.1", 80));
    }

    #[test]
    fn host_port_and_wildcards() {
        let g = Grants::new(&["127.0.0.1:9001", "api.example.com", "*.vendor.io"]).unwrap();
        assert!(g.allows("127.0.0.1", 9001));
        assert!(!g.allows("127.0.0.1", 9002));
        assert!(g.allows("API.example.com", 443));
        assert!(!g.allows("evil-api.example.com", 443));
        assert!(g.allows("eu.vendor.io", 8443));
        assert!(!g.allows("vendor.io", 443));
        assert!(!g.allows("evilvendor.io", 443));
    }

    #[test]
    fn urls_need_http_and_a_granted_host() {
        let g = Grants::new(&["localhost:8080"]).unwrap();
        assert!(g.allows_url(&"http://localhost:8080/x".parse().unwrap()));
        assert!(!g.allows_url(&"http://localhost:8081/x".parse().unwrap()));
        assert!(!g.allows_url(&"file:///etc/passwd".parse().unwrap()));
        assert!(Grants::new(&["*"]).unwrap().allows_url(&"https://a.b/".parse().unwrap()));
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(Grants::new(&["a/b"]).is_err());
        assert!(Grants::new(&["a:b"]).is_err());
        assert!(Grants::new(&["a*.b"]).is_err());
    }
}
