//! Egress guardrails on names (docs/design.md §5b, reason HostnameNotAllowed): where
//! a hostname would send a Gateway, judged from the name, the cluster's
//! Namespaces and the public suffix list; no DNS.

use crate::names::{has_dot_suffix, normalize, quoted};
use crate::policy::Policy;

/// Cloud metadata endpoints reachable by name from inside a node or pod.
const METADATA_HOSTNAMES: &[&str] = &["metadata.google.internal", "instance-data.ec2.internal"];

/// Special-use names (RFC 6761, the IANA special-use domain registry, RFC 8375
/// `home.arpa`, RFC 9476 `alt`, ICANN's reserved `internal`): they never name a
/// public destination. `arpa` is infrastructure (reverse DNS and the like), not
/// a place to send traffic. example.com/.net/.org are left out on purpose:
/// they are real, publicly resolving domains.
const SPECIAL_USE: &[&str] = &["local", "localhost", "invalid", "test", "example", "onion", "alt", "internal", "arpa"];

/// Which Namespaces exist in the cluster (the index in `run`, the bundle in `analyze`).
pub trait Namespaces {
    fn contains(&self, name: &str) -> bool;
}

/// The cluster's Namespaces, as the index shares them.
impl Namespaces for std::collections::BTreeSet<String> {
    fn contains(&self, name: &str) -> bool {
        std::collections::BTreeSet::contains(self, name)
    }
}

/// No cluster to ask: nothing is a Namespace.
pub struct NoNamespaces;

impl Namespaces for NoNamespaces {
    fn contains(&self, _: &str) -> bool {
        false
    }
}

/// docs/design.md §5b for one hostname: Err(message) when a guardrail rejects it.
pub fn check_egress(hostname: &str, policy: &Policy, namespaces: &dyn Namespaces) -> Result<(), String> {
    let host = normalize(hostname);
    let shown = quoted(hostname);
    if let Some(why) = builtin_problem(&host, policy, namespaces) {
        return Err(format!("hostname {shown} {why}; the built-in egress guardrail denies it."));
    }
    if let Some(glob) = policy.deny.first_match(&host) {
        return Err(format!("hostname {shown} matches --deny-hostname {glob:?}."));
    }
    if !policy.allow.is_empty() && policy.allow.first_match(&host).is_none() {
        return Err(format!(
            "hostname {shown} matches no --allow-hostname glob ({}); only those destinations are allowed.",
            policy.allow.sources.join(", ")
        ));
    }
    Ok(())
}

/// Why a (normalized) name would reach inside the cluster or a private
/// network, as the end of a sentence about it; None when it would not. Also
/// applied to every name of a CNAME chain.
pub fn builtin_problem(host: &str, policy: &Policy, namespaces: &dyn Namespaces) -> Option<String> {
    if host == "localhost" || has_dot_suffix(host, "localhost") {
        return Some("is a loopback name (localhost)".into());
    }
    if !host.contains('.') {
        return Some(
            "is a single-label name, which pods resolve through search domains into the cluster (use a fully qualified name)"
                .into(),
        );
    }
    if has_dot_suffix(host, "svc") {
        return Some("ends in .svc, an in-cluster Service name".into());
    }
    for domain in policy.all_cluster_domains() {
        let svc = format!("svc.{domain}");
        if has_dot_suffix(host, &svc) {
            return Some(format!("ends in .{svc}, an in-cluster Service name"));
        }
        if host == domain || has_dot_suffix(host, domain) {
            return Some(format!("is inside the cluster domain {domain}"));
        }
    }
    if METADATA_HOSTNAMES.contains(&host) {
        return Some("is a cloud metadata endpoint".into());
    }
    let labels: Vec<&str> = host.split('.').collect();
    let last = labels.last().copied().unwrap_or_default();
    if (2..=3).contains(&labels.len()) && namespaces.contains(last) {
        let form = if labels.len() == 2 { "<service>.<namespace>" } else { "<pod>.<subdomain>.<namespace>" };
        return Some(format!(
            "ends in {last}, the name of a Namespace in this cluster, so a pod's resolver completes it as {form} through its search domains and reaches inside the cluster"
        ));
    }
    if policy.allowed_suffixes.iter().any(|s| host == s || has_dot_suffix(host, s)) {
        return None;
    }
    if let Some(special) = SPECIAL_USE.iter().find(|s| host == **s || has_dot_suffix(host, s)) {
        return Some(format!(
            "is under .{special}, a special-use name that never names a public destination and resolves only on private networks (--allow-private-suffix permits a suffix)"
        ));
    }
    if !psl::suffix(host.as_bytes()).is_some_and(|s| s.is_known()) {
        return Some(format!(
            "is under .{last}, which is not a public suffix, so the name resolves only on private networks (--allow-private-suffix permits a suffix)"
        ));
    }
    None
}

/// The last label when a Namespace of that name would capture `hostname`
/// (two or three labels): the index re-judges these when Namespaces change.
pub fn namespace_label(hostname: &str) -> Option<String> {
    let host = normalize(hostname);
    let labels = host.split('.').count();
    (2..=3).contains(&labels).then(|| host.rsplit('.').next().unwrap_or_default().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyConfig;
    use std::collections::BTreeSet;

    impl Namespaces for BTreeSet<&str> {
        fn contains(&self, name: &str) -> bool {
            BTreeSet::contains(self, name)
        }
    }

    fn check(host: &str) -> Result<(), String> {
        check_egress(host, &Policy::default(), &BTreeSet::from(["dev", "kube-system", "default", "prod"]))
    }

    #[test]
    fn namespace_names_reach_inside_the_cluster() {
        for host in ["kubernetes.default", "kube-dns.kube-system", "api.dev", "web-0.web.prod"] {
            let err = check(host).expect_err(host);
            assert!(err.contains("Namespace in this cluster") && err.contains("search domains"), "{err}");
        }
        // Four labels are not completed into Service or Pod names; other last labels are not Namespaces.
        assert_eq!(check("a.b.c.dev"), Ok(()));
        assert_eq!(check("api.github.com"), Ok(()));
        assert_eq!(check("api.staging.app"), Ok(()));
        assert_eq!(namespace_label("api.dev"), Some("dev".into()));
        assert_eq!(namespace_label("a.b.dev"), Some("dev".into()));
        assert_eq!(namespace_label("a.b.c.dev"), None);
    }

    #[test]
    fn non_public_and_special_use_suffixes() {
        for host in ["printer.local", "router.home.arpa", "db.internal", "x.test", "a.example", "x.onion", "x.alt"] {
            let err = check(host).expect_err(host);
            assert!(err.contains("special-use"), "{host}: {err}");
        }
        for host in ["nas.lan", "x.corp", "db.intranet", "a.b.home"] {
            let err = check(host).expect_err(host);
            assert!(err.contains("not a public suffix"), "{host}: {err}");
        }
        for host in ["api.openai.com", "www.example.com", "a.co.uk", "user.github.io", "api.dev.example.com"] {
            assert_eq!(check(host), Ok(()), "{host}");
        }
    }

    #[test]
    fn allow_private_suffix_permits_only_that_suffix() {
        let config = PolicyConfig { allowed_suffixes: vec!["corp".into(), ".Internal.".into()], ..Default::default() };
        let p = Policy::new(config).unwrap();
        let none: BTreeSet<&str> = BTreeSet::new();
        assert_eq!(check_egress("git.corp", &p, &none), Ok(()));
        assert_eq!(check_egress("db.internal", &p, &none), Ok(()));
        assert!(check_egress("nas.lan", &p, &none).is_err());
        // Not an allow-list: public names still pass, built-in denials still apply.
        assert_eq!(check_egress("api.openai.com", &p, &none), Ok(()));
        assert!(check_egress("metadata.google.internal", &p, &none).is_err());
        assert!(Policy::new(PolicyConfig { allowed_suffixes: vec!["-bad".into()], ..Default::default() }).is_err());
    }
}
