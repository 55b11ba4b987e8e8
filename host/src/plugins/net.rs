//! Where `http-send` connects: names resolved by an injectable resolver, and
//! every address checked against the call's rule before reqwest sees it, so
//! the address checked is the address connected to (no second lookup, no
//! proxy). A non-public address (`grants::non_public`) passes only if the
//! vendor allows private addresses or a grant names that IP literally.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::grants::non_public;
use super::policy::CallPolicy;

/// Distinct address rules kept with their own client (and connection pool).
const MAX_CLIENTS: usize = 64;

/// The clients behind `http-send`: one per address rule (every vendor without
/// private grants shares the strict one), all resolving through one
/// resolver. Cheap to clone.
#[derive(Clone)]
pub struct Outbound {
    resolver: Arc<dyn Resolve>,
    clients: Arc<Mutex<HashMap<AddressRule, reqwest::Client>>>,
}

impl Default for Outbound {
    fn default() -> Self {
        Outbound::new()
    }
}

impl Outbound {
    /// Names resolved by the system resolver.
    pub fn new() -> Outbound {
        Outbound::with_resolver(Arc::new(SystemResolver))
    }

    /// Names resolved by `resolver` (a test can make any name resolve to
    /// 127.0.0.1); its answers are still checked.
    pub fn with_resolver(resolver: Arc<dyn Resolve>) -> Outbound {
        Outbound { resolver, clients: Arc::new(Mutex::new(HashMap::new())) }
    }

    pub(crate) fn client(&self, rule: &AddressRule) -> Result<reqwest::Client, reqwest::Error> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(rule) {
            return Ok(c.clone());
        }
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        // No automatic redirects (`caps::http` checks each hop), no proxy (it
        // would resolve names where we cannot check them).
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(Checked { inner: self.resolver.clone(), rule: rule.clone() }))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .build()?;
        clients.insert(rule.clone(), client.clone());
        Ok(client)
    }
}

/// Which non-public addresses one request may reach.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct AddressRule {
    allow_private: bool,
    /// IPs the grants name literally for the request's port (canonical form).
    named: BTreeSet<IpAddr>,
}

impl AddressRule {
    pub(crate) fn for_request(policy: &CallPolicy, port: u16, default_port: u16) -> AddressRule {
        if policy.allow_private_addresses {
            return AddressRule { allow_private: true, named: BTreeSet::new() };
        }
        AddressRule { allow_private: false, named: policy.grants.named_ips(port, default_port) }
    }

    /// Every non-public address allowed, or every one refused (no grants
    /// name any): the rule of completion notifications.
    pub(crate) fn all_or_none(allow_private: bool) -> AddressRule {
        AddressRule { allow_private, named: BTreeSet::new() }
    }

    /// Why `ip` may not be reached under this rule, or None.
    pub(crate) fn refusal(&self, ip: IpAddr) -> Option<&'static str> {
        if self.allow_private || self.named.contains(&ip.to_canonical()) {
            return None;
        }
        non_public(ip)
    }
}

/// A resolved address the rule refused; found again in reqwest's error chain.
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) host: String,
    pub(crate) ip: IpAddr,
    pub(crate) why: &'static str,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} resolves to {}, {}", self.host, self.ip, self.why)
    }
}

impl std::error::Error for Refused {}

/// Resolves through `inner` and hands reqwest only addresses that pass
/// `rule`: what is checked is what is connected to.
struct Checked {
    inner: Arc<dyn Resolve>,
    rule: AddressRule,
}

impl Resolve for Checked {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        let rule = self.rule.clone();
        let lookup = self.inner.resolve(name);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = lookup.await?.collect();
            let refused: Box<dyn std::error::Error + Send + Sync> = if addrs.is_empty() {
                format!("{host} resolves to no address").into()
            } else if let Some((ip, why)) = addrs.iter().find_map(|a| rule.refusal(a.ip()).map(|why| (a.ip(), why))) {
                // One refused address refuses the name: a mix of public and
                // private answers is not something to pick from.
                Box::new(Refused { host, ip, why })
            } else {
                return Ok(Box::new(addrs.into_iter()) as Addrs);
            };
            Err(refused)
        })
    }
}

/// The system resolver (getaddrinfo on a blocking thread).
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// A fixed table of names and their addresses; any other name fails to
/// resolve. For tests.
pub struct StaticResolver {
    table: HashMap<String, Vec<IpAddr>>,
}

impl StaticResolver {
    pub fn new(entries: &[(&str, IpAddr)]) -> StaticResolver {
        let mut table: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for (name, ip) in entries {
            table.entry(name.to_ascii_lowercase()).or_default().push(*ip);
        }
        StaticResolver { table }
    }
}

impl Resolve for StaticResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().trim_end_matches('.').to_ascii_lowercase();
        let found = self.table.get(&host).cloned();
        Box::pin(async move {
            let ips = found.ok_or_else(|| format!("{host}: unknown name"))?;
            Ok(Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0))) as Addrs)
        })
    }
}

/// The resolver's refusal, if that is why the request failed.
pub(crate) fn refusal<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut err = Some(e);
    while let Some(inner) = err {
        if let Some(r) = inner.downcast_ref::<Refused>() {
            return Some(r);
        }
        err = inner.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::grants::Grants;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn rule(grants: &[&str], allow_private: bool, port: u16) -> AddressRule {
        let mut policy = CallPolicy::for_load("t");
        policy.grants = Grants::new(grants).unwrap();
        policy.allow_private_addresses = allow_private;
        AddressRule::for_request(&policy, port, 80)
    }

    async fn lookup(rule: AddressRule, name: &str) -> Result<Vec<SocketAddr>, String> {
        let table = StaticResolver::new(&[
            ("pub.test", ip("93.184.215.14")),
            ("lo.test", ip("127.0.0.1")),
            ("lo.test", ip("::1")),
        ]);
        let checked = Checked { inner: Arc::new(table), rule };
        match checked.resolve(name.parse().unwrap()).await {
            Ok(addrs) => Ok(addrs.collect()),
            Err(e) => Err(e.to_string()),
        }
    }

    #[tokio::test]
    async fn resolved_addresses_are_checked_before_use() {
        assert_eq!(
            lookup(rule(&["*"], false, 80), "pub.test").await.unwrap(),
            [SocketAddr::new(ip("93.184.215.14"), 0)]
        );
        let e = lookup(rule(&["*"], false, 80), "lo.test").await.unwrap_err();
        assert_eq!(e, "lo.test resolves to 127.0.0.1, a loopback address");
        assert!(lookup(rule(&["*"], false, 80), "unknown.test").await.is_err());
        assert_eq!(lookup(rule(&["*"], true, 80), "lo.test").await.unwrap().len(), 2);
        // Naming one of the two addresses is not enough.
        assert!(lookup(rule(&["lo.test", "127.0.0.1"], false, 80), "lo.test").await.is_err());
        let both = rule(&["lo.test", "127.0.0.1", "[::1]"], false, 80);
        assert_eq!(lookup(both, "lo.test").await.unwrap().len(), 2);
        // Named for another port.
        assert!(lookup(rule(&["127.0.0.1:81", "[::1]:81"], false, 80), "lo.test").await.is_err());
    }

    #[test]
    fn the_refusal_is_found_in_an_error_chain() {
        #[derive(Debug)]
        struct Wrap(Refused);
        impl std::fmt::Display for Wrap {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("connect error")
            }
        }
        impl std::error::Error for Wrap {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Wrap(Refused { host: "h".into(), ip: ip("10.0.0.1"), why: "a private (RFC 1918) address" });
        assert_eq!(refusal(&e).map(|r| r.ip), Some(ip("10.0.0.1")));
        assert!(refusal(&std::io::Error::other("x")).is_none());
    }
}
