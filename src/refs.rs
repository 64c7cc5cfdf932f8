//! Reference resolution (docs/design.md §4, ResolvedRefs): which Secrets and
//! ConfigMaps an XBackend's TLS settings name, whether it may use them, whether
//! they are usable, and whether an EndpointSelector selects a live Pod.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};

use crate::api::{BackendType, XBackendSpec};
use crate::conditions::{self, Verdict};
use crate::dns::Resolution;
use crate::guardrails::Namespaces;
use crate::model::{ObjectRef, ReferenceGrant};
use crate::tls;

/// An object the reconciler must read before it can evaluate references.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefTarget {
    Secret(ObjectRef),
    ConfigMap(ObjectRef),
}

/// What a reconcile read off the watch path before judging: the referenced
/// objects (a target missing from a map does not exist, unless it is
/// `assumed`). Anything else looked up per XBackend (such as resolved
/// addresses) joins here.
#[derive(Clone, Debug, Default)]
pub struct Fetched {
    pub secrets: BTreeMap<ObjectRef, Secret>,
    pub config_maps: BTreeMap<ObjectRef, ConfigMap>,
    /// The hostname's last DNS answer, when the DNS check has one.
    pub resolution: Option<std::sync::Arc<Resolution>>,
    /// Targets that could not be read but count as present and valid:
    /// `analyze --assume-refs-exist`, for objects made at run time. Never
    /// set by `run`, which reads what is there.
    pub assumed: BTreeSet<RefTarget>,
}

/// What judging references asks of the cluster besides the fetched objects:
/// the `Index` answers from the whole cache, a reconcile's snapshot from the
/// few objects it copied under the lock.
pub trait Lookup: Namespaces {
    /// True when a ReferenceGrant in `to.namespace` lets XBackends from
    /// `from_namespace` reference the object (`group`, `kind`, `to.name`).
    fn grant_permits(&self, from_namespace: &str, group: &str, kind: &str, to: &ObjectRef) -> bool;
    /// True when a live Pod in `namespace` carries every label of `selector`.
    fn has_matching_pod(&self, namespace: &str, selector: &BTreeMap<String, String>) -> bool;
}

/// True for the core API group, however a reference spells it.
pub fn is_core_group(group: Option<&str>) -> bool {
    matches!(group, None | Some("") | Some("core"))
}

/// The Secret an XBackend's `spec.tls.clientCertificateRef` names, when it
/// names one (core group, kind Secret or unset); namespace defaults to the XBackend's.
pub fn client_certificate_secret(backend: &ObjectRef, spec: &XBackendSpec) -> Option<ObjectRef> {
    let reference = spec.tls.as_ref()?.client_certificate_ref.as_ref()?;
    let is_secret =
        is_core_group(reference.group.as_deref()) && matches!(reference.kind.as_deref(), None | Some("Secret"));
    is_secret.then(|| ObjectRef::new(reference.namespace.as_deref().unwrap_or(&backend.namespace), &reference.name))
}

/// The ConfigMaps (always in the XBackend's namespace) that
/// `spec.tls.validation.caCertificateRefs` names, skipping other kinds.
pub fn ca_certificate_config_maps(backend: &ObjectRef, spec: &XBackendSpec) -> Vec<ObjectRef> {
    let refs = spec.tls.as_ref().and_then(|tls| tls.validation.as_ref()).and_then(|v| v.ca_certificate_refs.as_ref());
    refs.into_iter()
        .flatten()
        .filter(|r| is_core_group(Some(&r.group)) && r.kind == "ConfigMap")
        .map(|r| ObjectRef::new(&backend.namespace, &r.name))
        .collect()
}

/// Namespace of `spec.tls.clientCertificateRef` when it leaves the XBackend's
/// namespace (of any kind: a grant there can change the verdict).
pub fn cross_namespace_target(backend: &ObjectRef, spec: &XBackendSpec) -> Option<String> {
    let namespace = spec.tls.as_ref()?.client_certificate_ref.as_ref()?.namespace.as_ref()?;
    (**namespace != *backend.namespace).then(|| namespace.clone())
}

/// True when one of `grants` (those of `to.namespace`) lets XBackends from
/// `from_namespace` reference the object (`group`, `kind`, `to.name`).
pub fn grants_permit<'a>(
    grants: impl Iterator<Item = &'a ReferenceGrant>,
    from_namespace: &str,
    group: &str,
    kind: &str,
    to: &ObjectRef,
) -> bool {
    let from = (crate::api::GROUP, crate::api::KIND, from_namespace);
    grants_allow(grants, from, group, kind, to)
}

/// True when one of `grants` (those of `to.namespace`) lets objects of
/// `from` (group, kind, namespace) reference the object (`group`, `kind`,
/// `to.name`): the ReferenceGrant rule, for any referring kind.
pub fn grants_allow<'a>(
    mut grants: impl Iterator<Item = &'a ReferenceGrant>,
    (from_group, from_kind, from_namespace): (&str, &str, &str),
    group: &str,
    kind: &str,
    to: &ObjectRef,
) -> bool {
    let same_group = |a: &str, b: &str| a == b || (is_core_group(Some(a)) && is_core_group(Some(b)));
    grants.any(|grant| {
        let from_ok =
            grant.from.iter().any(|f| f.group == from_group && f.kind == from_kind && f.namespace == from_namespace);
        let to_ok = grant
            .to
            .iter()
            .any(|t| same_group(&t.group, group) && t.kind == kind && t.name.as_ref().is_none_or(|n| **n == *to.name));
        from_ok && to_ok
    })
}

/// The labels an EndpointSelector XBackend selects Pods by.
pub fn endpoint_selector(spec: &XBackendSpec) -> Option<&BTreeMap<String, String>> {
    spec.endpoint_selector.as_ref().map(|selector| &selector.match_labels)
}

/// The normalized hostname of an ExternalHostname XBackend.
pub fn external_hostname(spec: &XBackendSpec) -> Option<String> {
    spec.external_hostname.as_ref().map(|e| crate::names::normalize(&e.hostname))
}

/// The Secrets and ConfigMaps `evaluate` will look at: only supported kinds,
/// and only where a cross-namespace reference is permitted (so the controller
/// never reads a Secret it was not granted).
pub fn refs_to_fetch(key: &ObjectRef, spec: &XBackendSpec, index: &(impl Lookup + ?Sized)) -> Vec<RefTarget> {
    let mut targets = Vec::new();
    if let Some(secret) = client_certificate_secret(key, spec)
        && (secret.namespace == key.namespace || index.grant_permits(&key.namespace, "", "Secret", &secret))
    {
        targets.push(RefTarget::Secret(secret));
    }
    for config_map in ca_certificate_config_maps(key, spec) {
        let target = RefTarget::ConfigMap(config_map);
        if !targets.contains(&target) {
            targets.push(target);
        }
    }
    targets
}

/// The ResolvedRefs verdict alone: the first failing reference in field order
/// (clientCertificateRef, then caCertificateRefs in list order). References
/// are checked whatever the TLS mode; whether they belong there is Accepted's business.
pub fn resolve_refs(
    key: &ObjectRef,
    spec: &XBackendSpec,
    index: &(impl Lookup + ?Sized),
    fetched: &Fetched,
) -> Verdict {
    if let Some(selector) = endpoint_selector(spec)
        && spec.type_ == BackendType::EndpointSelector
        && !index.has_matching_pod(&key.namespace, selector)
    {
        let labels: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        return conditions::no_matching_pods(format!(
            "spec.endpointSelector.matchLabels ({}) selects no live Pod in namespace {} (finished Pods and Pods being deleted do not count); create Pods with these labels or fix the selector.",
            labels.join(","),
            key.namespace
        ));
    }
    let Some(tls) = &spec.tls else {
        return conditions::resolved_refs();
    };
    if let Some(reference) = &tls.client_certificate_ref {
        let field = "spec.tls.clientCertificateRef";
        let namespace = reference.namespace.as_deref().unwrap_or(&key.namespace);
        let target = ObjectRef::new(namespace, &reference.name);
        let group = reference.group.as_deref().unwrap_or("");
        let kind = reference.kind.as_deref().unwrap_or("Secret");
        if !(is_core_group(Some(group)) && kind == "Secret") {
            return conditions::invalid_kind(format!(
                "{field} names {} {target}, but only Secrets of the core group are supported.",
                group_kind(group, kind)
            ));
        }
        if *namespace != *key.namespace && !index.grant_permits(&key.namespace, "", "Secret", &target) {
            return conditions::ref_not_permitted(format!(
                "{field} names Secret {target} in another namespace, and no ReferenceGrant in namespace {namespace} allows XBackends from namespace {} to use it.",
                key.namespace
            ));
        }
        let problem = match fetched.secrets.get(&target) {
            None if fetched.assumed.contains(&RefTarget::Secret(target.clone())) => None,
            None => Some("which does not exist".to_string()),
            Some(secret) => tls::check_client_certificate(secret)
                .err()
                .map(|e| format!("which is not a usable client certificate: {e}")),
        };
        if let Some(problem) = problem {
            return conditions::invalid_client_certificate_ref(format!("{field} names Secret {target}, {problem}."));
        }
    }
    let ca_refs = tls.validation.as_ref().and_then(|v| v.ca_certificate_refs.as_ref());
    for (position, reference) in ca_refs.into_iter().flatten().enumerate() {
        let field = format!("spec.tls.validation.caCertificateRefs[{position}]");
        // Local references: always the XBackend's namespace.
        let target = ObjectRef::new(&key.namespace, &reference.name);
        if !(is_core_group(Some(&reference.group)) && reference.kind == "ConfigMap") {
            return conditions::invalid_kind(format!(
                "{field} names {} {target}, but only ConfigMaps of the core group are supported.",
                group_kind(&reference.group, &reference.kind)
            ));
        }
        let problem = match fetched.config_maps.get(&target) {
            None if fetched.assumed.contains(&RefTarget::ConfigMap(target.clone())) => None,
            None => Some("which does not exist".to_string()),
            Some(config_map) => {
                tls::check_ca_bundle(config_map).err().map(|e| format!("which is not a usable CA bundle: {e}"))
            }
        };
        if let Some(problem) = problem {
            return conditions::invalid_ca_certificate_ref(format!("{field} names ConfigMap {target}, {problem}."));
        }
    }
    conditions::resolved_refs()
}

/// `Kind` for the core group, `Kind.group` otherwise, as kubectl spells resources.
fn group_kind(group: &str, kind: &str) -> String {
    if group.is_empty() { kind.to_string() } else { format!("{kind}.{group}") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions::reason;
    use crate::index::Index;
    use crate::model::{GrantFrom, GrantTo, Object};

    use crate::testing::*;
    use serde_json::json;

    const OURS: &str = "example.com/xbackend-controller";

    fn grant(namespace: &str, from_namespace: &str) -> (ObjectRef, Object) {
        (
            r(namespace, "allow-xbackends"),
            Object::ReferenceGrant(ReferenceGrant {
                from: vec![GrantFrom {
                    group: crate::api::GROUP.into(),
                    kind: "XBackend".into(),
                    namespace: from_namespace.into(),
                }],
                to: vec![GrantTo { group: "".into(), kind: "Secret".into(), name: None }],
            }),
        )
    }

    fn index_with_grant() -> Index {
        let mut index = Index::new(OURS);
        let (grant_key, grant) = grant("certs", "app");
        index.apply(grant_key, grant);
        index
    }

    fn resolve(spec: &XBackendSpec, index: &Index, fetched: &Fetched) -> Verdict {
        resolve_refs(&key(), spec, index, fetched)
    }

    fn assert_reason(verdict: &Verdict, status: bool, reason: &str, fragments: &[&str]) {
        assert_eq!(verdict.type_, conditions::RESOLVED_REFS);
        assert_eq!((verdict.status, verdict.reason), (status, reason), "{verdict:?}");
        for fragment in fragments {
            assert!(verdict.message.contains(fragment), "{:?} lacks {fragment:?}", verdict.message);
        }
    }

    // --- refs_to_fetch ---------------------------------------------------

    #[test]
    fn fetch_same_namespace_secret_and_config_maps() {
        let spec = tls_spec(Some(secret_ref(None, "client")), vec![ca_ref("ca1"), ca_ref("ca2"), ca_ref("ca1")]);
        assert_eq!(
            refs_to_fetch(&key(), &spec, &Index::new(OURS)),
            vec![
                RefTarget::Secret(r("app", "client")),
                RefTarget::ConfigMap(r("app", "ca1")),
                RefTarget::ConfigMap(r("app", "ca2"))
            ]
        );
        assert!(refs_to_fetch(&key(), &plain_spec(), &Index::new(OURS)).is_empty());
    }

    #[test]
    fn fetch_cross_namespace_secret_only_with_grant() {
        let spec = tls_spec(Some(secret_ref(Some("certs"), "client")), vec![]);
        assert!(refs_to_fetch(&key(), &spec, &Index::new(OURS)).is_empty());
        assert_eq!(refs_to_fetch(&key(), &spec, &index_with_grant()), vec![RefTarget::Secret(r("certs", "client"))]);
        // Explicitly the XBackend's own namespace needs no grant.
        let spec = tls_spec(Some(secret_ref(Some("app"), "client")), vec![]);
        assert_eq!(refs_to_fetch(&key(), &spec, &Index::new(OURS)), vec![RefTarget::Secret(r("app", "client"))]);
    }

    #[test]
    fn fetch_skips_unsupported_kinds() {
        let mut client = secret_ref(None, "client");
        client.kind = Some("ConfigMap".into());
        let mut ca = ca_ref("ca");
        ca.kind = "Secret".into();
        let mut other_group = ca_ref("ca2");
        other_group.group = "example.com".into();
        let spec = tls_spec(Some(client), vec![ca, other_group]);
        assert!(refs_to_fetch(&key(), &spec, &Index::new(OURS)).is_empty());
        let mut core = secret_ref(None, "client");
        core.group = Some("core".into());
        core.kind = Some("Secret".into());
        assert_eq!(
            refs_to_fetch(&key(), &tls_spec(Some(core), vec![]), &Index::new(OURS)),
            vec![RefTarget::Secret(r("app", "client"))]
        );
    }

    // --- ResolvedRefs, one test per row of docs/design.md §4 ------------------

    #[test]
    fn resolved_when_no_references() {
        let index = Index::new(OURS);
        assert_reason(&resolve(&plain_spec(), &index, &Fetched::default()), true, reason::RESOLVED_REFS, &[]);
        assert_reason(&resolve(&tls_spec(None, vec![]), &index, &Fetched::default()), true, reason::RESOLVED_REFS, &[]);
    }

    #[test]
    fn endpoint_selector_needs_a_live_matching_pod() {
        let spec: XBackendSpec = serde_json::from_value(json!({
            "type": "EndpointSelector", "port": {"number": 80}, "endpointSelector": {"matchLabels": {"app": "web"}}
        }))
        .unwrap();
        let mut index = Index::new(OURS);
        let no_pods = resolve(&spec, &index, &Fetched::default());
        assert_reason(&no_pods, false, reason::NO_MATCHING_PODS, &["app=web", "namespace app"]);
        let pod = |ns: &str, phase: &str| {
            let value = json!({"metadata": {"name": "web-0", "namespace": ns, "labels": {"app": "web"}}, "status": {"phase": phase}});
            let (key, object) = crate::decode::decode(crate::model::Kind::Pod, &value).unwrap();
            (key, object)
        };
        let (k, o) = pod("other", "Running");
        index.apply(k, o);
        assert_eq!(resolve(&spec, &index, &Fetched::default()).reason, reason::NO_MATCHING_PODS);
        let (k, o) = pod("app", "Failed");
        index.apply(k, o);
        assert_eq!(resolve(&spec, &index, &Fetched::default()).reason, reason::NO_MATCHING_PODS);
        let (k, o) = pod("app", "Pending");
        index.apply(k, o);
        assert_reason(&resolve(&spec, &index, &Fetched::default()), true, reason::RESOLVED_REFS, &[]);
    }

    #[test]
    fn resolved_when_every_reference_is_usable() {
        let mut fetched = Fetched::default();
        fetched.secrets.insert(r("certs", "client"), valid_secret());
        fetched.config_maps.insert(r("app", "ca1"), valid_ca());
        fetched.config_maps.insert(r("app", "ca2"), valid_ca());
        let spec = tls_spec(Some(secret_ref(Some("certs"), "client")), vec![ca_ref("ca1"), ca_ref("ca2")]);
        assert_reason(&resolve(&spec, &index_with_grant(), &fetched), true, reason::RESOLVED_REFS, &[]);
    }

    #[test]
    fn client_certificate_missing() {
        let spec = tls_spec(Some(secret_ref(None, "client")), vec![]);
        let verdict = resolve(&spec, &Index::new(OURS), &Fetched::default());
        assert_reason(
            &verdict,
            false,
            reason::INVALID_CLIENT_CERTIFICATE_REF,
            &["spec.tls.clientCertificateRef", "app/client", "does not exist"],
        );
    }

    #[test]
    fn client_certificate_unusable() {
        let good = pem();
        let other = pem();
        let cases = [
            ("wrong type", tls_secret(&[("tls.crt", &good.cert), ("tls.key", &good.key)], "Opaque")),
            ("no key", tls_secret(&[("tls.crt", &good.cert)], "kubernetes.io/tls")),
            ("no cert", tls_secret(&[("tls.key", &good.key)], "kubernetes.io/tls")),
            ("not PEM", tls_secret(&[("tls.crt", "garbage"), ("tls.key", "garbage")], "kubernetes.io/tls")),
            (
                "key of another cert",
                tls_secret(&[("tls.crt", &good.cert), ("tls.key", &other.key)], "kubernetes.io/tls"),
            ),
        ];
        let spec = tls_spec(Some(secret_ref(None, "client")), vec![]);
        for (case, secret) in cases {
            let mut fetched = Fetched::default();
            fetched.secrets.insert(r("app", "client"), secret);
            let verdict = resolve(&spec, &Index::new(OURS), &fetched);
            assert_eq!(verdict.reason, reason::INVALID_CLIENT_CERTIFICATE_REF, "{case}: {verdict:?}");
            assert!(!verdict.status, "{case}");
            assert!(
                verdict.message.contains("spec.tls.clientCertificateRef") && verdict.message.contains("app/client"),
                "{case}"
            );
            assert!(!verdict.message.contains("PRIVATE KEY"), "{case}: key material leaked");
        }
    }

    #[test]
    fn ca_bundle_missing() {
        let spec = tls_spec(None, vec![ca_ref("ca")]);
        let verdict = resolve(&spec, &Index::new(OURS), &Fetched::default());
        assert_reason(
            &verdict,
            false,
            reason::INVALID_CA_CERTIFICATE_REF,
            &["spec.tls.validation.caCertificateRefs[0]", "app/ca", "does not exist"],
        );
    }

    #[test]
    fn ca_bundle_unusable() {
        let spec = tls_spec(None, vec![ca_ref("ca")]);
        for (case, config_map) in [
            ("no ca.crt", ca_config_map(&[("other.crt", &pem().cert)])),
            ("no data", ConfigMap::default()),
            ("not a certificate", ca_config_map(&[("ca.crt", "hello")])),
        ] {
            let mut fetched = Fetched::default();
            fetched.config_maps.insert(r("app", "ca"), config_map);
            let verdict = resolve(&spec, &Index::new(OURS), &fetched);
            assert_eq!(
                (verdict.status, verdict.reason),
                (false, reason::INVALID_CA_CERTIFICATE_REF),
                "{case}: {verdict:?}"
            );
            assert!(verdict.message.contains("caCertificateRefs[0]") && verdict.message.contains("app/ca"), "{case}");
        }
    }

    #[test]
    fn invalid_kind_for_client_certificate() {
        let mut fetched = Fetched::default();
        fetched.secrets.insert(r("app", "client"), valid_secret());
        for (group, kind) in
            [(None, Some("ConfigMap")), (Some("example.com"), Some("Secret")), (Some("example.com"), None)]
        {
            let mut client = secret_ref(None, "client");
            client.group = group.map(str::to_string);
            client.kind = kind.map(str::to_string);
            let verdict = resolve(&tls_spec(Some(client), vec![]), &Index::new(OURS), &fetched);
            assert_reason(&verdict, false, reason::INVALID_KIND, &["spec.tls.clientCertificateRef", "app/client"]);
        }
    }

    #[test]
    fn invalid_kind_for_ca_certificate() {
        let mut ca = ca_ref("ca");
        ca.kind = "Secret".into();
        let verdict = resolve(&tls_spec(None, vec![ca]), &Index::new(OURS), &Fetched::default());
        assert_reason(
            &verdict,
            false,
            reason::INVALID_KIND,
            &["spec.tls.validation.caCertificateRefs[0]", "Secret app/ca"],
        );
    }

    #[test]
    fn ref_not_permitted_without_grant() {
        let spec = tls_spec(Some(secret_ref(Some("certs"), "client")), vec![]);
        let mut fetched = Fetched::default();
        // Even if it were somehow fetched, the grant decides.
        fetched.secrets.insert(r("certs", "client"), valid_secret());
        let verdict = resolve(&spec, &Index::new(OURS), &fetched);
        assert_reason(
            &verdict,
            false,
            reason::REF_NOT_PERMITTED,
            &["spec.tls.clientCertificateRef", "certs/client", "ReferenceGrant"],
        );
        // A grant for another namespace does not help.
        let mut index = Index::new(OURS);
        let (grant_key, grant) = grant("certs", "web");
        index.apply(grant_key, grant);
        assert_eq!(resolve(&spec, &index, &fetched).reason, reason::REF_NOT_PERMITTED);
        // With the grant, a missing Secret is the next problem.
        let verdict = resolve(&spec, &index_with_grant(), &Fetched::default());
        assert_eq!(verdict.reason, reason::INVALID_CLIENT_CERTIFICATE_REF);
    }

    #[test]
    fn first_failing_reference_in_field_order_wins() {
        let mut bad_kind = ca_ref("ca3");
        bad_kind.kind = "Service".into();
        let mut fetched = Fetched::default();
        fetched.config_maps.insert(r("app", "ca1"), valid_ca());
        let spec = tls_spec(Some(secret_ref(None, "missing")), vec![ca_ref("ca1"), ca_ref("ca2"), bad_kind.clone()]);
        assert_eq!(resolve(&spec, &Index::new(OURS), &fetched).reason, reason::INVALID_CLIENT_CERTIFICATE_REF);
        fetched.secrets.insert(r("app", "missing"), valid_secret());
        let verdict = resolve(&spec, &Index::new(OURS), &fetched);
        assert_reason(&verdict, false, reason::INVALID_CA_CERTIFICATE_REF, &["caCertificateRefs[1]", "app/ca2"]);
        let spec = tls_spec(None, vec![ca_ref("ca1"), bad_kind, ca_ref("ca2")]);
        assert_reason(
            &resolve(&spec, &Index::new(OURS), &fetched),
            false,
            reason::INVALID_KIND,
            &["caCertificateRefs[1]"],
        );
    }
}
