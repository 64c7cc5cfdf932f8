//! The operator's configuration of the checks (flags of `run` and `analyze`),
//! compiled once: hostname globs, address ranges, cluster domains. A leaf: the
//! checks (`guardrails`, `addresses`, `validate`) read it, it reads none of them.

use std::net::IpAddr;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use ipnet::IpNet;

use crate::names::dns_subdomain_problem;

/// The in-cluster DNS suffix every cluster has, whatever --cluster-domain says.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// The operator's guardrails, from `run`/`analyze` flags.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Normalized --cluster-domain values (lowercase, no leading/trailing dot),
    /// not including cluster.local, which always applies.
    pub cluster_domains: Vec<String>,
    pub(crate) allow: Globs,
    pub(crate) deny: Globs,
    /// --allow-private-suffix values (lowercase, no leading/trailing dot).
    pub(crate) allowed_suffixes: Vec<String>,
    /// --require-tls.
    pub require_tls: bool,
    /// --deny-cidr, --allow-cidr.
    pub addresses: AddressPolicy,
}

/// Flags a Policy is built from.
#[derive(Clone, Debug, Default)]
pub struct PolicyConfig {
    /// Extra in-cluster DNS suffixes besides cluster.local (--cluster-domain).
    pub cluster_domains: Vec<String>,
    /// --allow-hostname globs; when non-empty only matches are accepted.
    pub allow_hostnames: Vec<String>,
    /// --deny-hostname globs.
    pub deny_hostnames: Vec<String>,
    /// --allow-private-suffix: non-public suffixes whose names are allowed.
    pub allowed_suffixes: Vec<String>,
    /// --require-tls.
    pub require_tls: bool,
    /// --deny-cidr ranges.
    pub deny_cidrs: Vec<String>,
    /// --allow-cidr ranges.
    pub allow_cidrs: Vec<String>,
}

impl Policy {
    /// Compiles the globs; an invalid glob is an error naming the flag and glob.
    pub fn new(config: PolicyConfig) -> Result<Policy, String> {
        let mut cluster_domains = Vec::new();
        for domain in
            dns_names("--cluster-domain", "a DNS name such as cluster.local or corp.example", &config.cluster_domains)?
        {
            if domain != DEFAULT_CLUSTER_DOMAIN && !cluster_domains.contains(&domain) {
                cluster_domains.push(domain);
            }
        }
        let allowed_suffixes = dns_names(
            "--allow-private-suffix",
            "a DNS suffix such as corp or internal.example",
            &config.allowed_suffixes,
        )?;
        Ok(Policy {
            cluster_domains,
            allow: Globs::new("--allow-hostname", &config.allow_hostnames)?,
            deny: Globs::new("--deny-hostname", &config.deny_hostnames)?,
            allowed_suffixes,
            require_tls: config.require_tls,
            addresses: AddressPolicy::new(&config.deny_cidrs, &config.allow_cidrs)?,
        })
    }

    /// cluster.local followed by every --cluster-domain.
    pub fn all_cluster_domains(&self) -> impl Iterator<Item = &str> {
        std::iter::once(DEFAULT_CLUSTER_DOMAIN).chain(self.cluster_domains.iter().map(String::as_str))
    }
}

/// Flag values that must be DNS names, normalized (lowercase, no leading or
/// trailing dot); an invalid one is an error naming the flag and the value.
fn dns_names(flag: &str, what: &str, values: &[String]) -> Result<Vec<String>, String> {
    values
        .iter()
        .map(|raw| {
            let name = raw.trim().trim_matches('.').to_ascii_lowercase();
            if name.is_empty() || dns_subdomain_problem(&name).is_some() {
                return Err(format!("{flag} {raw:?} is not {what}"));
            }
            Ok(name)
        })
        .collect()
}

/// Compiled globs plus their source text, so a rejection can say which glob did it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Globs {
    set: GlobSet,
    pub(crate) sources: Vec<String>,
}

impl Globs {
    pub(crate) fn new(flag: &str, globs: &[String]) -> Result<Globs, String> {
        let mut builder = GlobSetBuilder::new();
        let mut sources = Vec::with_capacity(globs.len());
        for glob in globs {
            let trimmed = glob.trim();
            if trimmed.is_empty() {
                return Err(format!("{flag}: empty glob; give a hostname or a pattern such as *.example.com"));
            }
            // Hostnames are compared without a trailing dot, so a glob with one could never match.
            let normalized = trimmed.strip_suffix('.').unwrap_or(trimmed);
            let compiled = GlobBuilder::new(normalized)
                .case_insensitive(true)
                // No '/' occurs in a hostname, so '*' spans dots: *.example.com
                // covers every depth of subdomain but never the apex.
                .literal_separator(false)
                .build()
                .map_err(|e| format!("{flag} {glob:?} is not a valid glob: {}", e.kind()))?;
            builder.add(compiled);
            sources.push(glob.clone());
        }
        let set = builder.build().map_err(|e| format!("{flag}: cannot compile globs: {e}"))?;
        Ok(Globs { set, sources })
    }

    pub(crate) fn first_match(&self, hostname: &str) -> Option<&str> {
        self.set.matches(hostname).into_iter().min().map(|i| self.sources[i].as_str())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }
}

/// --deny-cidr, the cluster's Service ranges and --allow-cidr on top of the
/// built-in ranges.
#[derive(Clone, Debug, Default)]
pub struct AddressPolicy {
    pub(crate) deny: Vec<IpNet>,
    /// ServiceCIDR ranges read from the cluster, with the object's name.
    pub(crate) services: Vec<(IpNet, String)>,
    pub(crate) allow: Vec<IpNet>,
}

impl AddressPolicy {
    pub fn new(deny: &[String], allow: &[String]) -> Result<AddressPolicy, String> {
        let parse = |flag: &str, values: &[String]| -> Result<Vec<IpNet>, String> {
            values
                .iter()
                .map(|v| {
                    let v = v.trim();
                    // A bare address is its own /32 or /128.
                    v.parse::<IpNet>()
                        .or_else(|_| v.parse::<IpAddr>().map(IpNet::from))
                        .map(|n| n.trunc())
                        .map_err(|_| format!("{flag} {v:?} is not a CIDR range such as 10.0.0.0/8 or fd00::/8"))
                })
                .collect()
        };
        Ok(AddressPolicy {
            deny: parse("--deny-cidr", deny)?,
            services: Vec::new(),
            allow: parse("--allow-cidr", allow)?,
        })
    }

    /// Adds the cluster's Service ranges (ServiceCIDR `name`), denied like
    /// --deny-cidr; values that do not parse are skipped.
    pub fn deny_service_cidrs(&mut self, name: &str, cidrs: &[String]) {
        let nets = cidrs.iter().filter_map(|c| c.trim().parse::<IpNet>().ok());
        self.services.extend(nets.map(|n| (n.trunc(), name.to_string())));
    }

    /// The Service ranges found in the cluster, for the start-up log.
    pub fn service_cidrs(&self) -> Vec<String> {
        self.services.iter().map(|(net, _)| net.to_string()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_glob_names_flag_and_glob() {
        let err = Policy::new(PolicyConfig { allow_hostnames: vec!["[abc".into()], ..Default::default() }).unwrap_err();
        assert!(err.contains("--allow-hostname") && err.contains("[abc"), "{err}");
        let err = Policy::new(PolicyConfig {
            deny_hostnames: vec!["ok.example.com".into(), "{a,b".into()],
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.contains("--deny-hostname") && err.contains("{a,b"), "{err}");
    }

    #[test]
    fn empty_glob_is_an_error() {
        let err = Policy::new(PolicyConfig { deny_hostnames: vec!["  ".into()], ..Default::default() }).unwrap_err();
        assert!(err.contains("--deny-hostname") && err.contains("empty"), "{err}");
    }

    #[test]
    fn cluster_domains_are_normalized() {
        let p = Policy::new(PolicyConfig {
            cluster_domains: vec![".Corp.Internal.".into(), "corp.internal".into(), "cluster.local".into()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(p.cluster_domains, vec!["corp.internal".to_string()]);
        assert_eq!(p.all_cluster_domains().collect::<Vec<_>>(), vec!["cluster.local", "corp.internal"]);
    }

    #[test]
    fn bad_cluster_domain_is_an_error() {
        for bad in ["", ".", "under_score.local", "a..b"] {
            let err =
                Policy::new(PolicyConfig { cluster_domains: vec![bad.into()], ..Default::default() }).unwrap_err();
            assert!(err.contains("--cluster-domain"), "{bad:?}: {err}");
        }
    }
}
