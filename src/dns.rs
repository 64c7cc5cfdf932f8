//! What a hostname resolves to (A and AAAA, following CNAMEs), for the
//! resolved-address guardrail (docs/design.md §5c). One lookup, no caching: the
//! runtime decides when to ask again.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::{Resolver as Hickory, TokioResolver};

/// The answer for one hostname: the CNAME chain it passed through and the
/// addresses at its end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolution {
    /// Aliases in the order the chain visits them (without the queried name).
    pub cnames: Vec<String>,
    /// A and AAAA addresses, sorted. Empty when only the chain resolved (its
    /// last name has no address from here).
    pub addresses: Vec<IpAddr>,
    /// The smallest TTL of the answer's records.
    pub ttl: Duration,
}

impl Resolution {
    /// Same chain and addresses; the TTL does not change a verdict.
    pub fn same_answer(&self, other: &Resolution) -> bool {
        self.cnames == other.cnames && self.addresses == other.addresses
    }
}

/// Why a lookup gave no answer: never a reason to change a verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("the name does not exist (NXDOMAIN)")]
    NxDomain,
    #[error("the name has no A or AAAA records")]
    NoAddresses,
    #[error("the DNS server failed (SERVFAIL or another error code)")]
    ServerFailure,
    #[error("no DNS server answered in time")]
    Timeout,
    #[error(
        "no DNS server to ask: the Service given with --dns-service has no ready endpoint, or its EndpointSlices cannot be listed"
    )]
    NoServer,
}

impl LookupError {
    /// The `result` label of the lookups metric.
    pub fn label(self) -> &'static str {
        match self {
            LookupError::NxDomain => "nxdomain",
            LookupError::NoAddresses => "no_addresses",
            LookupError::ServerFailure => "servfail",
            LookupError::Timeout => "timeout",
            LookupError::NoServer => "no_server",
        }
    }
}

/// A stub resolver: the given servers (UDP, then TCP for truncated answers) or
/// the system's, never a search domain, never /etc/hosts, no cache of its own.
///
/// Every server given is asked, and their answers are joined (docs/security.md,
/// "Several resolvers"): replicas of a cluster DNS can answer differently, and
/// the data plane may ask any of them, so a verdict and an egress policy must
/// cover what each says.
#[derive(Clone)]
pub struct Resolver {
    fixed: Vec<One>,
    /// Servers found at run time (`--dns-service`), asked beside the fixed ones.
    found: Option<Arc<Found>>,
}

/// One upstream (or the system configuration).
#[derive(Clone)]
struct One {
    inner: TokioResolver,
}

/// The servers a watch finds (the ready endpoints of the cluster DNS Service),
/// shared by the watch that sets them and the resolver that asks them.
pub struct Found {
    timeout: Duration,
    servers: Mutex<BTreeMap<SocketAddr, One>>,
    /// Counts the changes: a lookup that saw another value began with another set.
    generation: AtomicU64,
    /// False until the watch has listed once: lookups until then wait for it,
    /// up to `timeout` after start (the list may be refused).
    listed: tokio::sync::watch::Sender<bool>,
    started: tokio::time::Instant,
    /// Notified when the set changes: every hostname is then asked again.
    pub changed: tokio::sync::Notify,
}

impl Found {
    /// Replaces the set; true when it changed.
    pub fn set(&self, servers: BTreeSet<SocketAddr>) -> Result<bool, String> {
        let changed = {
            let mut current = self.servers.lock().expect("dns servers lock");
            let changed = !current.keys().eq(servers.iter());
            if changed {
                // Built aside, so a failure leaves the set as it was.
                let mut next = BTreeMap::new();
                for addr in servers {
                    let one = match current.get(&addr) {
                        Some(one) => one.clone(),
                        None => One::at(addr, self.timeout)?,
                    };
                    next.insert(addr, one);
                }
                *current = next;
                self.generation.fetch_add(1, Ordering::Relaxed);
            }
            changed
        };
        if changed {
            self.changed.notify_one();
        }
        Ok(changed)
    }

    /// The watch has listed once: lookups no longer wait for it.
    pub fn listed(&self) {
        self.listed.send_replace(true);
    }

    /// The servers asked now (the egress DNS rule follows their port).
    pub fn servers(&self) -> Vec<SocketAddr> {
        self.servers.lock().expect("dns servers lock").keys().copied().collect()
    }
}

impl Resolver {
    /// `servers` empty means the system resolver configuration (/etc/resolv.conf).
    pub fn new(servers: &[SocketAddr], timeout: Duration) -> Result<Resolver, String> {
        if servers.is_empty() {
            let builder =
                Hickory::builder_tokio().map_err(|e| format!("cannot read the system resolver configuration: {e}"))?;
            return Ok(Resolver { fixed: vec![One::build(builder, timeout)?], found: None });
        }
        let fixed = servers.iter().map(|addr| One::at(*addr, timeout)).collect::<Result<_, _>>()?;
        Ok(Resolver { fixed, found: None })
    }

    /// `servers` (possibly none: the system resolver is then not asked, as it
    /// reaches one of the same replicas) and those a watch finds and sets in
    /// the returned `Found`.
    pub fn discovering(servers: &[SocketAddr], timeout: Duration) -> Result<(Resolver, Arc<Found>), String> {
        let fixed = servers.iter().map(|addr| One::at(*addr, timeout)).collect::<Result<_, _>>()?;
        let found = Arc::new(Found {
            timeout,
            servers: Mutex::default(),
            generation: AtomicU64::new(0),
            listed: tokio::sync::watch::Sender::new(false),
            started: tokio::time::Instant::now(),
            changed: tokio::sync::Notify::new(),
        });
        Ok((Resolver { fixed, found: Some(found.clone()) }, found))
    }

    /// Which set of discovered servers a lookup starting now asks (0 when not discovering).
    pub fn generation(&self) -> u64 {
        self.found.as_ref().map_or(0, |f| f.generation.load(Ordering::Relaxed))
    }

    /// The set a watch keeps up to date, when discovering.
    pub fn found(&self) -> Option<Arc<Found>> {
        self.found.clone()
    }

    /// How many servers a lookup asks now.
    pub fn server_count(&self) -> usize {
        self.fixed.len() + self.found.as_ref().map_or(0, |f| f.servers.lock().expect("dns servers lock").len())
    }

    /// A and AAAA of `hostname` from every server, joined: the addresses and
    /// aliases any of them gave, the smallest TTL. A server that fails adds
    /// nothing; when all fail, the error of the first.
    pub async fn resolve(&self, hostname: &str) -> Result<Resolution, LookupError> {
        let mut found = Vec::new();
        if let Some(servers) = &self.found {
            // Before the first list the set is not known yet: wait for it, but
            // only until `timeout` after start, since the list may be refused.
            let mut listed = servers.listed.subscribe();
            let deadline = servers.started + servers.timeout;
            let _ = tokio::time::timeout_at(deadline, listed.wait_for(|listed| *listed)).await;
            found.extend(servers.servers.lock().expect("dns servers lock").values().cloned());
        }
        if self.fixed.is_empty() && found.is_empty() {
            return Err(LookupError::NoServer);
        }
        let answers = futures::future::join_all(self.fixed.iter().chain(&found).map(|s| s.resolve(hostname))).await;
        let mut joined: Option<Resolution> = None;
        let mut first_error = None;
        for answer in answers {
            match answer {
                Ok(r) => {
                    let j = joined.get_or_insert_with(|| Resolution { ttl: r.ttl, ..Resolution::default() });
                    j.ttl = j.ttl.min(r.ttl);
                    j.addresses.extend(r.addresses);
                    for alias in r.cnames {
                        if !j.cnames.contains(&alias) {
                            j.cnames.push(alias);
                        }
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match joined {
            Some(mut r) => {
                r.addresses.sort();
                r.addresses.dedup();
                Ok(r)
            }
            None => Err(first_error.unwrap_or(LookupError::NoAddresses)),
        }
    }
}

impl One {
    /// The server at `addr`, UDP and TCP on its port.
    fn at(addr: SocketAddr, timeout: Duration) -> Result<One, String> {
        let mut server = NameServerConfig::udp_and_tcp(addr.ip());
        for connection in &mut server.connections {
            connection.port = addr.port();
        }
        let config = ResolverConfig::from_name_servers(vec![server]);
        One::build(Hickory::builder_with_config(config, TokioRuntimeProvider::default()), timeout)
    }

    fn build(
        mut builder: hickory_resolver::ResolverBuilder<TokioRuntimeProvider>,
        timeout: Duration,
    ) -> Result<One, String> {
        let options: &mut ResolverOpts = builder.options_mut();
        options.timeout = timeout;
        options.attempts = 2;
        options.cache_size = 0;
        options.use_hosts_file = ResolveHosts::Never;
        options.preserve_intermediates = true;
        options.ndots = 0;
        let inner = builder.build().map_err(|e| format!("cannot build the DNS resolver: {e}"))?;
        Ok(One { inner })
    }

    /// A and AAAA of `hostname` as an absolute name (no search domains).
    pub async fn resolve(&self, hostname: &str) -> Result<Resolution, LookupError> {
        let name =
            Name::from_ascii(format!("{}.", hostname.trim_end_matches('.'))).map_err(|_| LookupError::NxDomain)?;
        let (a, aaaa) = tokio::join!(
            self.inner.lookup(name.clone(), RecordType::A),
            self.inner.lookup(name.clone(), RecordType::AAAA)
        );
        let mut resolution = Resolution::default();
        let mut ttl = u32::MAX;
        let mut errors = Vec::new();
        for result in [a, aaaa] {
            match result {
                Ok(lookup) => {
                    for record in lookup.answers() {
                        ttl = ttl.min(record.ttl);
                        match &record.data {
                            RData::A(a) => resolution.addresses.push(IpAddr::V4(a.0)),
                            RData::AAAA(aaaa) => resolution.addresses.push(IpAddr::V6(aaaa.0)),
                            RData::CNAME(target) => {
                                let alias = target.0.to_ascii().trim_end_matches('.').to_ascii_lowercase();
                                if !resolution.cnames.contains(&alias) {
                                    resolution.cnames.push(alias);
                                }
                            }
                            _ => {}
                        }
                    }
                }
                Err(e) => errors.push(classify(&e)),
            }
        }
        resolution.addresses.sort();
        resolution.addresses.dedup();
        if resolution.addresses.is_empty() {
            // Both failed, or the name exists without addresses. An alias to a
            // name that does not resolve from here (kubernetes.default.svc...)
            // may still resolve inside the cluster: walk the chain on its own.
            let error =
                errors.into_iter().min_by_key(|e| *e != LookupError::NxDomain).unwrap_or(LookupError::NoAddresses);
            let (cnames, ttl) = self.alias_chain(name).await;
            if cnames.is_empty() {
                return Err(error);
            }
            return Ok(Resolution { cnames, addresses: Vec::new(), ttl });
        }
        resolution.ttl = Duration::from_secs(u64::from(ttl));
        Ok(resolution)
    }

    /// The CNAME chain from `name`, one query per hop (at most 8 hops).
    async fn alias_chain(&self, mut name: Name) -> (Vec<String>, Duration) {
        let mut chain = Vec::new();
        let mut ttl = u32::MAX;
        for _ in 0..8 {
            let Ok(lookup) = self.inner.lookup(name.clone(), RecordType::CNAME).await else { break };
            let Some((target, record_ttl)) = lookup.answers().iter().find_map(|r| match &r.data {
                RData::CNAME(target) => Some((target.0.clone(), r.ttl)),
                _ => None,
            }) else {
                break;
            };
            let alias = target.to_ascii().trim_end_matches('.').to_ascii_lowercase();
            if chain.contains(&alias) {
                break;
            }
            ttl = ttl.min(record_ttl);
            chain.push(alias);
            name = target;
        }
        (chain, Duration::from_secs(u64::from(ttl)))
    }
}

fn classify(error: &NetError) -> LookupError {
    match error {
        NetError::Dns(DnsError::NoRecordsFound(no)) if no.response_code == ResponseCode::NXDomain => {
            LookupError::NxDomain
        }
        NetError::Dns(DnsError::NoRecordsFound(_)) => LookupError::NoAddresses,
        NetError::Timeout => LookupError::Timeout,
        _ => LookupError::ServerFailure,
    }
}

/// How long to trust an answer: its TTL, clamped to --dns-min-ttl..--dns-max-ttl.
pub fn clamp_ttl(ttl: Duration, min: Duration, max: Duration) -> Duration {
    ttl.max(min).min(max.max(min))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_is_clamped() {
        let (min, max) = (Duration::from_secs(30), Duration::from_secs(300));
        assert_eq!(clamp_ttl(Duration::from_secs(0), min, max), min);
        assert_eq!(clamp_ttl(Duration::from_secs(60), min, max), Duration::from_secs(60));
        assert_eq!(clamp_ttl(Duration::from_secs(86400), min, max), max);
        // A max below the min cannot make the interval shorter than the min.
        assert_eq!(clamp_ttl(Duration::from_secs(5), min, Duration::from_secs(10)), min);
    }

    #[test]
    fn same_answer_ignores_the_ttl() {
        let a = Resolution { cnames: vec![], addresses: vec!["1.1.1.1".parse().unwrap()], ttl: Duration::from_secs(1) };
        let b = Resolution { ttl: Duration::from_secs(99), ..a.clone() };
        assert!(a.same_answer(&b));
        let c = Resolution { addresses: vec!["1.0.0.1".parse().unwrap()], ..a.clone() };
        assert!(!a.same_answer(&c));
    }

    #[tokio::test]
    async fn a_discovered_set_changes_only_when_its_addresses_do() {
        let (resolver, found) = Resolver::discovering(&[], Duration::from_secs(1)).unwrap();
        let a: SocketAddr = "10.0.0.10:53".parse().unwrap();
        let b: SocketAddr = "10.0.0.11:53".parse().unwrap();
        assert!(found.set([a, b].into()).unwrap());
        assert!(!found.set([b, a].into()).unwrap(), "the same set in another order");
        assert_eq!((resolver.server_count(), found.servers()), (2, vec![a, b]));
        assert!(found.set([b].into()).unwrap());
        assert!(found.set(BTreeSet::new()).unwrap());
        found.listed();
        assert_eq!(resolver.resolve("example.com").await, Err(LookupError::NoServer), "nothing to ask");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lookup_before_the_first_list_waits_for_it() {
        let (resolver, found) = Resolver::discovering(&[], Duration::from_secs(1)).unwrap();
        let started = tokio::time::Instant::now();
        let lookup = tokio::spawn(async move { resolver.resolve("example.com").await });
        tokio::task::yield_now().await;
        assert!(!lookup.is_finished(), "it waits for the list");
        found.set(BTreeSet::new()).unwrap();
        tokio::task::yield_now().await;
        assert!(!lookup.is_finished(), "a slice is not the whole list");
        found.listed();
        assert_eq!(lookup.await.unwrap(), Err(LookupError::NoServer));
        assert!(started.elapsed() < Duration::from_secs(1), "it ended with the list, not the timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn a_list_that_never_comes_delays_only_the_first_second() {
        let (resolver, _found) = Resolver::discovering(&[], Duration::from_secs(1)).unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(resolver.resolve("example.com").await, Err(LookupError::NoServer));
        assert_eq!(started.elapsed(), Duration::from_secs(1), "the first lookup waited until the deadline");
        let again = tokio::time::Instant::now();
        assert_eq!(resolver.resolve("example.com").await, Err(LookupError::NoServer));
        assert_eq!(again.elapsed(), Duration::ZERO, "later ones do not wait");
    }
}
