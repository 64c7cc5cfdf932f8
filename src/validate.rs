//! Spec validation (DESIGN.md §5a, reason Invalid) and egress guardrails (§5b,
//! reason HostnameNotAllowed; --require-tls, reason TLSRequired).

use crate::api::XBackendSpec;
use crate::conditions::Verdict;

/// The operator's guardrails, from `run`/`analyze` flags.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    // Filled in by the validation work: cluster domains, compiled allow/deny
    // globs, require_tls.
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
    /// --require-tls.
    pub require_tls: bool,
}

impl Policy {
    /// Compiles the globs; an invalid glob is an error naming the flag and glob.
    pub fn new(config: PolicyConfig) -> Result<Policy, String> {
        let _ = config;
        todo!()
    }
}

/// One broken API rule: the field path (e.g. `spec.externalHostname.hostname`)
/// and a sentence a user can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub message: String,
}

/// DESIGN.md §5a: every API rule, also when the CRD's CEL was not enforced.
pub fn validate(spec: &XBackendSpec, policy: &Policy) -> Result<(), Vec<Violation>> {
    let _ = (spec, policy);
    todo!()
}

/// DESIGN.md §5b for one hostname: Err(message) when a guardrail rejects it.
pub fn check_egress(hostname: &str, policy: &Policy) -> Result<(), String> {
    let _ = (hostname, policy);
    todo!()
}

/// The Accepted verdict for a spec (or the error that stopped it decoding):
/// Invalid, then HostnameNotAllowed, then TLSRequired, else Accepted.
pub fn accepted_verdict(spec: Result<&XBackendSpec, &str>, policy: &Policy) -> Verdict {
    let _ = (spec, policy);
    todo!()
}

/// True when traffic to this backend would be clear text (tls absent or mode None).
pub fn is_insecure(spec: &XBackendSpec) -> bool {
    let _ = spec;
    todo!()
}
