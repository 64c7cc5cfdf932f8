//! The verdicts on one XBackend (docs/design.md §4). Accepted composes the
//! checks in table order (the spec, the name guardrails, the TLS
//! requirement, the resolved addresses), ResolvedRefs the references: each
//! check is a leaf this module calls once, so a verdict walks down, never back up.

use crate::addresses;
use crate::api::XBackendSpec;
use crate::conditions::{self, Verdict};
use crate::dns::Resolution;
use crate::guardrails::{self, Namespaces, NoNamespaces};
use crate::model::{Backend, ObjectRef};
use crate::policy::Policy;
use crate::refs::{Fetched, Lookup, resolve_refs};
use crate::validate::{is_insecure, join_violations, validate};

/// What the Accepted verdict knows of the world beyond the spec.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    pub namespaces: &'a dyn Namespaces,
    /// The hostname's last resolution, when the DNS check has one.
    pub resolution: Option<&'a Resolution>,
}

impl Context<'_> {
    /// No cluster and no DNS: the verdict of the spec and the flags alone.
    pub const STATIC: Context<'static> = Context { namespaces: &NoNamespaces, resolution: None };
}

/// Both conditions of one XBackend, before any Gateway's fit (crate::fit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdicts {
    pub accepted: Verdict,
    pub resolved_refs: Verdict,
}

/// Accepted and ResolvedRefs for one XBackend.
///
/// A spec that does not decode has no references anyone could resolve, so
/// ResolvedRefs is True (with a message pointing at Accepted, which is
/// Invalid): reporting a reference failure would send users after the wrong problem.
pub fn evaluate(
    key: &ObjectRef,
    backend: &Backend,
    index: &impl Lookup,
    fetched: &Fetched,
    policy: &Policy,
) -> Verdicts {
    let context = Context { namespaces: index, resolution: fetched.resolution.as_deref() };
    let accepted = accepted(backend.spec.as_ref().map_err(String::as_str), policy, context);
    let resolved_refs = match &backend.spec {
        Ok(spec) => resolve_refs(key, spec, index, fetched),
        Err(_) => Verdict {
            message: "No references to resolve: the spec does not decode (see the Accepted condition).".to_string(),
            ..conditions::resolved_refs()
        },
    };
    Verdicts { accepted, resolved_refs }
}

/// The Accepted verdict for a spec (or the error that stopped it decoding):
/// Invalid, then HostnameNotAllowed, then TLSRequired, then AddressNotAllowed,
/// else Accepted.
pub fn accepted(spec: Result<&XBackendSpec, &str>, policy: &Policy, context: Context<'_>) -> Verdict {
    let spec = match spec {
        Ok(spec) => spec,
        Err(message) => return conditions::invalid(message),
    };
    if let Err(violations) = validate(spec, policy) {
        return conditions::invalid(join_violations(&violations));
    }
    if let Some(ext) = &spec.external_hostname
        && let Err(message) = guardrails::check_egress(&ext.hostname, policy, context.namespaces)
    {
        return conditions::hostname_not_allowed(message);
    }
    if policy.require_tls && is_insecure(spec) {
        let what = if spec.tls.is_none() { "spec.tls is absent" } else { "spec.tls.mode is None" };
        return conditions::tls_required(format!(
            "{what}, but this controller runs with --require-tls; set spec.tls.mode to ServerOnly or ClientAndServer."
        ));
    }
    if let (Some(ext), Some(resolution)) = (&spec.external_hostname, context.resolution)
        && let Err(message) = addresses::check_resolution(&ext.hostname, resolution, policy, context.namespaces)
    {
        return conditions::address_not_allowed(message);
    }
    conditions::accepted()
}

/// A name a data plane would connect to outside an XBackend (an
/// ExternalName Service's), judged with every rule an XBackend hostname
/// gets: the API's (no IP literal, not in the cluster domain, ...), the name
/// guardrails, and its resolved addresses when `context` has an answer.
pub fn hostname(hostname: &str, policy: &Policy, context: Context<'_>) -> Result<(), String> {
    if let Some(problem) = crate::validate::external_hostname_problem(hostname, policy) {
        return Err(format!("{hostname:?} {problem}."));
    }
    guardrails::check_egress(hostname, policy, context.namespaces)?;
    if let Some(resolution) = context.resolution {
        addresses::check_resolution(hostname, resolution, policy, context.namespaces)?;
    }
    Ok(())
}

/// The hostname the DNS check resolves for this spec: one that passes the API
/// rules and the name guardrails (docs/design.md §5c), normalized.
pub fn hostname_to_resolve(spec: &XBackendSpec, policy: &Policy, namespaces: &dyn Namespaces) -> Option<String> {
    let external = spec.external_hostname.as_ref()?;
    let passes =
        validate(spec, policy).is_ok() && guardrails::check_egress(&external.hostname, policy, namespaces).is_ok();
    passes.then(|| crate::names::normalize(&external.hostname))
}
