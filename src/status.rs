//! Pure status computation: verdicts for an XBackend, the entries this
//! controller wants, and their merge into the stored (shared, atomic) list.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use serde_json::{Map, Value, json};

use crate::api::{BackendType, GATEWAY_GROUP, MAX_ANCESTORS, XBackendSpec};
use crate::conditions::{self, Verdict, reason};
use crate::dns::Resolution;
use crate::guardrails::{self, Namespaces};
use crate::index::{self, Index, is_core_group};
use crate::model::{Backend, ObjectRef};
use crate::tls;
use crate::validate::{self, Policy};

/// Event reason for an XBackend whose traffic would be clear text.
pub const INSECURE_REASON: &str = "Insecure";
/// Event reason when the cap on ancestor entries leaves some of ours out.
pub const ANCESTORS_TRUNCATED_REASON: &str = "AncestorsTruncated";
/// The API's limit on a condition message, in bytes.
const MAX_MESSAGE_BYTES: usize = 32768;

/// The installed CRD's status layout: ours (`ancestors`/`ancestorRef`) or
/// upstream v1.6 (`parents`/`parentRef`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Shape {
    #[default]
    Ancestors,
    Parents,
}

impl Shape {
    pub fn list_field(self) -> &'static str {
        match self {
            Shape::Ancestors => "ancestors",
            Shape::Parents => "parents",
        }
    }
    pub fn ref_field(self) -> &'static str {
        match self {
            Shape::Ancestors => "ancestorRef",
            Shape::Parents => "parentRef",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdicts {
    pub accepted: Verdict,
    pub resolved_refs: Verdict,
}

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

impl Lookup for Index {
    fn grant_permits(&self, from_namespace: &str, group: &str, kind: &str, to: &ObjectRef) -> bool {
        Index::grant_permits(self, from_namespace, group, kind, to)
    }
    fn has_matching_pod(&self, namespace: &str, selector: &BTreeMap<String, String>) -> bool {
        Index::has_matching_pod(self, namespace, selector)
    }
}

/// The Secrets and ConfigMaps `evaluate` will look at: only supported kinds,
/// and only where a cross-namespace reference is permitted (so the controller
/// never reads a Secret it was not granted).
pub fn refs_to_fetch(key: &ObjectRef, spec: &XBackendSpec, index: &(impl Lookup + ?Sized)) -> Vec<RefTarget> {
    let mut targets = Vec::new();
    if let Some(secret) = index::client_certificate_secret(key, spec)
        && (secret.namespace == key.namespace || index.grant_permits(&key.namespace, "", "Secret", &secret))
    {
        targets.push(RefTarget::Secret(secret));
    }
    for config_map in index::ca_certificate_config_maps(key, spec) {
        let target = RefTarget::ConfigMap(config_map);
        if !targets.contains(&target) {
            targets.push(target);
        }
    }
    targets
}

/// The hostname the DNS check resolves for this spec: one that passes the API
/// rules and the name guardrails (DESIGN.md §5c), normalized.
pub fn hostname_to_resolve(spec: &XBackendSpec, policy: &Policy, namespaces: &dyn Namespaces) -> Option<String> {
    let external = spec.external_hostname.as_ref()?;
    let passes = validate::validate(spec, policy).is_ok()
        && guardrails::check_egress(&external.hostname, policy, namespaces).is_ok();
    passes.then(|| guardrails::normalize(&external.hostname))
}

/// Accepted and ResolvedRefs for one XBackend (DESIGN.md §4).
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
    let context = validate::Context { namespaces: index, resolution: fetched.resolution.as_deref() };
    let accepted = validate::accepted_verdict(backend.spec.as_ref().map_err(String::as_str), policy, context);
    let resolved_refs = match &backend.spec {
        Ok(spec) => resolve_refs(key, spec, index, fetched),
        Err(_) => Verdict {
            message: "No references to resolve: the spec does not decode (see the Accepted condition).".to_string(),
            ..conditions::resolved_refs()
        },
    };
    Verdicts { accepted, resolved_refs }
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
    if let Some(selector) = index::endpoint_selector(spec)
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
        if namespace != key.namespace && !index.grant_permits(&key.namespace, "", "Secret", &target) {
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

/// A Warning or Normal Event to record on the XBackend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventNote {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

/// Events for rejections (Invalid, HostnameNotAllowed, TLSRequired) and for
/// insecure (no TLS) backends: a Warning with reason `Insecure`, left out when
/// TLSRequired already says the same.
pub fn events(backend: &Backend, verdicts: &Verdicts) -> Vec<EventNote> {
    let mut notes = Vec::new();
    let accepted = &verdicts.accepted;
    if !accepted.status {
        notes.push(EventNote { warning: true, reason: accepted.reason, message: accepted.message.clone() });
    }
    // In-cluster Pods (EndpointSelector) are the mesh's or the network's business.
    if let Ok(spec) = &backend.spec
        && let Some(external) = &spec.external_hostname
        && accepted.reason != reason::TLS_REQUIRED
        && validate::is_insecure(spec)
    {
        let port = spec.port.value().map(|p| p.to_string()).unwrap_or_default();
        let destination = format!("{}:{port}", external.hostname);
        notes.push(EventNote {
            warning: true,
            reason: INSECURE_REASON,
            message: format!(
                "Traffic to {destination} is sent in clear text because spec.tls is absent or its mode is None; set spec.tls.mode to ServerOnly or ClientAndServer."
            ),
        });
    }
    notes
}

/// The result of merging our desired entries into the stored list.
#[derive(Clone, Debug, PartialEq)]
pub struct MergeOutcome {
    /// The full list to store (foreign entries untouched, in place).
    pub list: Vec<serde_json::Value>,
    /// False when `list` equals the stored one ignoring order and timestamps:
    /// nothing to write.
    pub changed: bool,
    /// How many of our entries the cap of 32 left out.
    pub truncated: usize,
}

/// Merges this controller's entries for `ancestors` (sorted) into `current`
/// (the stored list, any JSON). `now` is an RFC 3339 timestamp used only for
/// conditions whose status flips or that are new.
///
/// Layout of the result: entries of other controllers (anything whose
/// `controllerName` is not ours, malformed ones included) byte-for-byte and in
/// their relative order, then ours sorted by namespace and name, one per
/// ancestor. Ours go last because the cap keeps foreign entries first; since
/// `changed` ignores order, a list whose only difference is order is never rewritten.
/// When foreign entries alone reach the cap, none of ours are written.
pub fn merge(
    current: &[serde_json::Value],
    shape: Shape,
    controller_name: &str,
    generation: i64,
    ancestors: &[ObjectRef],
    verdicts: &Verdicts,
    now: &str,
) -> MergeOutcome {
    let is_ours = |entry: &Value| entry.get("controllerName").and_then(Value::as_str) == Some(controller_name);
    let mut list: Vec<Value> = current.iter().filter(|entry| !is_ours(entry)).cloned().collect();
    let previous: Vec<&Value> = current.iter().filter(|entry| is_ours(entry)).collect();

    let mut wanted: Vec<&ObjectRef> = ancestors.iter().collect();
    wanted.sort();
    wanted.dedup();
    let kept = wanted.len().min(MAX_ANCESTORS.saturating_sub(list.len()));
    let truncated = wanted.len() - kept;

    for gateway in wanted.into_iter().take(kept) {
        let before = previous.iter().copied().find(|entry| names_gateway(entry, shape, gateway));
        let conditions: Vec<Value> = [&verdicts.accepted, &verdicts.resolved_refs]
            .into_iter()
            .map(|verdict| condition(verdict, generation, before, now))
            .collect();
        let mut entry = Map::new();
        entry.insert(
            shape.ref_field().to_string(),
            json!({"group": GATEWAY_GROUP, "kind": "Gateway", "namespace": gateway.namespace, "name": gateway.name}),
        );
        entry.insert("controllerName".to_string(), Value::from(controller_name));
        entry.insert("conditions".to_string(), Value::Array(conditions));
        list.push(Value::Object(entry));
    }

    let changed = !same_multiset(current, &list, same_entry);
    MergeOutcome { list, changed, truncated }
}

/// Whether a stored entry of ours is about `gateway` (group and kind defaulted as in a ParentReference).
fn names_gateway(entry: &Value, shape: Shape, gateway: &ObjectRef) -> bool {
    let Some(reference) = entry.get(shape.ref_field()) else {
        return false;
    };
    let field = |name: &str| reference.get(name).and_then(Value::as_str);
    field("group").unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP
        && field("kind").unwrap_or("Gateway") == "Gateway"
        && field("namespace") == Some(gateway.namespace.as_str())
        && field("name") == Some(gateway.name.as_str())
}

/// One condition; keeps the stored lastTransitionTime while the status holds.
fn condition(verdict: &Verdict, generation: i64, before: Option<&Value>, now: &str) -> Value {
    let status = verdict.status_str();
    let last_transition = before
        .and_then(|entry| entry.get("conditions")?.as_array())
        .and_then(|conditions| conditions.iter().find(|c| c.get("type").and_then(Value::as_str) == Some(verdict.type_)))
        .filter(|c| c.get("status").and_then(Value::as_str) == Some(status))
        .and_then(|c| c.get("lastTransitionTime")?.as_str())
        .unwrap_or(now);
    json!({
        "type": verdict.type_,
        "status": status,
        "reason": verdict.reason,
        "message": clip(&verdict.message, MAX_MESSAGE_BYTES),
        "observedGeneration": generation,
        "lastTransitionTime": last_transition,
    })
}

/// The API rejects longer messages, which would block the whole status write.
fn clip(message: &str, max_bytes: usize) -> &str {
    if message.len() <= max_bytes {
        return message;
    }
    let mut end = max_bytes;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

/// Equal as multisets under `same`, which must be an equivalence.
fn same_multiset(a: &[Value], b: &[Value], same: fn(&Value, &Value) -> bool) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut used = vec![false; b.len()];
    a.iter().all(|x| {
        let found = b.iter().enumerate().find(|(i, y)| !used[*i] && same(x, y)).map(|(i, _)| i);
        found.inspect(|i| used[*i] = true).is_some()
    })
}

/// Entry equality ignoring condition order and lastTransitionTime.
fn same_entry(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter().all(|(key, x)| match (key.as_str(), x, b.get(key)) {
                    ("conditions", Value::Array(x), Some(Value::Array(y))) => same_multiset(x, y, same_condition),
                    (_, x, Some(y)) => x == y,
                    (_, _, None) => false,
                })
        }
        _ => a == b,
    }
}

fn same_condition(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            let significant = |m: &Map<String, Value>| m.iter().filter(|(k, _)| *k != "lastTransitionTime").count();
            significant(a) == significant(b)
                && a.iter().filter(|(k, _)| *k != "lastTransitionTime").all(|(k, x)| b.get(k) == Some(x))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        BackendPort, BackendTls, BackendType, ExternalHostnameBackend, LocalObjectReference, SecretObjectReference,
        TlsMode, TlsValidation,
    };
    use crate::index::Object;
    use crate::model::{GrantFrom, GrantTo, ReferenceGrant};
    use crate::validate::PolicyConfig;
    use k8s_openapi::ByteString;
    use proptest::prelude::*;

    const OURS: &str = "example.com/xbackend-controller";
    const THEIRS: &str = "other.example/gateway";
    const NOW: &str = "2030-01-01T00:00:00Z";
    const EARLIER: &str = "2020-01-01T00:00:00Z";

    fn r(namespace: &str, name: &str) -> ObjectRef {
        ObjectRef::new(namespace, name)
    }

    fn key() -> ObjectRef {
        r("app", "b")
    }

    fn plain_spec() -> XBackendSpec {
        XBackendSpec {
            type_: BackendType::ExternalHostname,
            port: BackendPort { port: Some(443), ..BackendPort::default() },
            external_hostname: Some(ExternalHostnameBackend { hostname: "api.example.com".into() }),
            endpoint_selector: None,
            session_persistence: None,
            protocol: None,
            tls: None,
        }
    }

    fn secret_ref(namespace: Option<&str>, name: &str) -> SecretObjectReference {
        SecretObjectReference { group: None, kind: None, name: name.into(), namespace: namespace.map(str::to_string) }
    }

    fn ca_ref(name: &str) -> LocalObjectReference {
        LocalObjectReference { group: "".into(), kind: "ConfigMap".into(), name: name.into() }
    }

    fn tls_spec(client: Option<SecretObjectReference>, cas: Vec<LocalObjectReference>) -> XBackendSpec {
        let mut spec = plain_spec();
        spec.tls = Some(BackendTls {
            mode: if client.is_some() { TlsMode::ClientAndServer } else { TlsMode::ServerOnly },
            client_certificate_ref: client,
            validation: Some(TlsValidation {
                ca_certificate_refs: (!cas.is_empty()).then_some(cas),
                well_known_ca_certificates: None,
                hostname: "api.example.com".into(),
                subject_alt_names: None,
            }),
        });
        spec
    }

    fn tls_secret(entries: &[(&str, &str)], type_: &str) -> Secret {
        Secret {
            type_: Some(type_.into()),
            data: Some(entries.iter().map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec()))).collect()),
            ..Secret::default()
        }
    }

    fn ca_config_map(entries: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            data: Some(entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..ConfigMap::default()
        }
    }

    struct Pem {
        cert: String,
        key: String,
    }

    fn pem() -> Pem {
        let certified =
            rcgen::generate_simple_self_signed(vec!["client.example.com".to_string()]).expect("certificate");
        Pem { cert: certified.cert.pem(), key: certified.signing_key.serialize_pem() }
    }

    fn valid_secret() -> Secret {
        let pem = pem();
        tls_secret(&[("tls.crt", &pem.cert), ("tls.key", &pem.key)], "kubernetes.io/tls")
    }

    fn valid_ca() -> ConfigMap {
        ca_config_map(&[("ca.crt", &pem().cert)])
    }

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

    // --- ResolvedRefs, one test per row of DESIGN.md §4 ------------------

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
            let (key, object) = crate::decode::decode(crate::index::Kind::Pod, &value).unwrap();
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

    // --- evaluate and events (use validate/tls) --------------------------

    fn policy() -> Policy {
        Policy::new(PolicyConfig::default()).expect("default policy")
    }

    #[test]
    fn evaluate_valid_backend() {
        let backend = Backend::new(1, Ok(plain_spec()));
        let verdicts = evaluate(&key(), &backend, &Index::new(OURS), &Fetched::default(), &policy());
        assert!(verdicts.accepted.status, "{verdicts:?}");
        assert_eq!(verdicts.resolved_refs, conditions::resolved_refs());
    }

    #[test]
    fn evaluate_undecodable_spec() {
        let backend = Backend::new(1, Err("spec.tls.mode: unknown variant `Sometimes`".into()));
        let verdicts = evaluate(&key(), &backend, &Index::new(OURS), &Fetched::default(), &policy());
        assert_eq!((verdicts.accepted.status, verdicts.accepted.reason), (false, reason::INVALID));
        assert_eq!((verdicts.resolved_refs.status, verdicts.resolved_refs.reason), (true, reason::RESOLVED_REFS));
        assert!(verdicts.resolved_refs.message.contains("does not decode"));
        let notes = events(&backend, &verdicts);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!((notes[0].warning, notes[0].reason), (true, reason::INVALID));
    }

    #[test]
    fn evaluate_computes_both_conditions_independently() {
        let mut spec = tls_spec(Some(secret_ref(None, "client")), vec![]);
        spec.external_hostname = Some(ExternalHostnameBackend { hostname: "localhost".into() });
        let backend = Backend::new(1, Ok(spec));
        let verdicts = evaluate(&key(), &backend, &Index::new(OURS), &Fetched::default(), &policy());
        assert!(!verdicts.accepted.status);
        assert_eq!(verdicts.resolved_refs.reason, reason::INVALID_CLIENT_CERTIFICATE_REF);
    }

    #[test]
    fn events_for_insecure_and_rejected() {
        let insecure = Backend::new(1, Ok(plain_spec()));
        let verdicts = Verdicts { accepted: conditions::accepted(), resolved_refs: conditions::resolved_refs() };
        let notes = events(&insecure, &verdicts);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!((notes[0].warning, notes[0].reason), (true, INSECURE_REASON));
        assert!(notes[0].message.contains("api.example.com:443") && notes[0].message.contains("spec.tls"));

        let secure = Backend::new(1, Ok(tls_spec(None, vec![])));
        assert!(events(&secure, &verdicts).is_empty());

        let rejected = Verdicts {
            accepted: conditions::hostname_not_allowed("denied"),
            resolved_refs: conditions::resolved_refs(),
        };
        let notes = events(&secure, &rejected);
        assert_eq!(
            notes,
            vec![EventNote { warning: true, reason: reason::HOSTNAME_NOT_ALLOWED, message: "denied".into() }]
        );

        // TLSRequired already says it; no second warning.
        let required =
            Verdicts { accepted: conditions::tls_required("tls required"), resolved_refs: conditions::resolved_refs() };
        let notes = events(&insecure, &required);
        assert_eq!(notes.iter().map(|n| n.reason).collect::<Vec<_>>(), vec![reason::TLS_REQUIRED]);
    }

    // --- merge ------------------------------------------------------------

    fn ok() -> Verdicts {
        Verdicts { accepted: conditions::accepted(), resolved_refs: conditions::resolved_refs() }
    }

    fn gateways(names: &[(&str, &str)]) -> Vec<ObjectRef> {
        names.iter().map(|(ns, name)| r(ns, name)).collect()
    }

    fn foreign(name: &str) -> Value {
        json!({
            "ancestorRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "infra", "name": name, "sectionName": "x"},
            "controllerName": THEIRS,
            "conditions": [{"type": "Accepted", "status": "True", "reason": "Whatever", "message": "", "lastTransitionTime": EARLIER, "observedGeneration": 1}],
            "vendorExtension": {"nested": [1, 2, {"z": null}]}
        })
    }

    fn ours_in(list: &[Value]) -> Vec<&Value> {
        list.iter().filter(|e| e.get("controllerName").and_then(Value::as_str) == Some(OURS)).collect()
    }

    fn not_ours(list: &[Value]) -> Vec<&Value> {
        list.iter().filter(|e| e.get("controllerName").and_then(Value::as_str) != Some(OURS)).collect()
    }

    fn condition_of<'a>(entry: &'a Value, type_: &str) -> &'a Value {
        entry["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == type_)).expect("condition present")
    }

    #[test]
    fn merge_writes_one_entry_per_ancestor() {
        let out = merge(
            &[],
            Shape::Ancestors,
            OURS,
            4,
            &gateways(&[("infra", "b"), ("infra", "a"), ("infra", "a")]),
            &ok(),
            NOW,
        );
        assert!(out.changed);
        assert_eq!(out.truncated, 0);
        assert_eq!(out.list.len(), 2);
        assert_eq!(
            out.list[0],
            json!({
                "ancestorRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "infra", "name": "a"},
                "controllerName": OURS,
                "conditions": [
                    {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "XBackend is valid and allowed.", "observedGeneration": 4, "lastTransitionTime": NOW},
                    {"type": "ResolvedRefs", "status": "True", "reason": "ResolvedRefs", "message": "All references resolved.", "observedGeneration": 4, "lastTransitionTime": NOW}
                ]
            })
        );
        assert_eq!(out.list[1]["ancestorRef"]["name"], "b");
        // Nothing wanted and nothing stored: nothing to write.
        assert!(!merge(&[], Shape::Ancestors, OURS, 4, &[], &ok(), NOW).changed);
    }

    #[test]
    fn merge_parents_shape() {
        let out = merge(&[], Shape::Parents, OURS, 1, &gateways(&[("infra", "a")]), &ok(), NOW);
        assert!(out.list[0].get("ancestorRef").is_none());
        assert_eq!(out.list[0]["parentRef"]["name"], "a");
        let again =
            merge(&out.list, Shape::Parents, OURS, 1, &gateways(&[("infra", "a")]), &ok(), "2031-01-01T00:00:00Z");
        assert!(!again.changed);
        assert_eq!(again.list, out.list);
        // An entry of ours in the other shape is stale.
        let switched = merge(&out.list, Shape::Ancestors, OURS, 1, &gateways(&[("infra", "a")]), &ok(), NOW);
        assert!(switched.changed);
        assert_eq!(switched.list.len(), 1);
        assert!(switched.list[0].get("ancestorRef").is_some());
    }

    #[test]
    fn merge_keeps_foreign_entries_in_place_and_byte_identical() {
        let current = vec![
            foreign("x"),
            json!({"controllerName": "gateway.example/other", "ancestorRef": {"name": "y"}}),
            foreign("z"),
        ];
        let before: Vec<String> = current.iter().map(Value::to_string).collect();
        let out = merge(&current, Shape::Ancestors, OURS, 1, &gateways(&[("infra", "a")]), &ok(), NOW);
        assert!(out.changed);
        let after: Vec<String> = out.list[..3].iter().map(Value::to_string).collect();
        assert_eq!(before, after);
        assert_eq!(ours_in(&out.list).len(), 1);
        assert_eq!(out.list[3]["controllerName"], OURS);
    }

    #[test]
    fn merge_keeps_malformed_foreign_entries() {
        let current = vec![
            json!("a string"),
            json!(null),
            json!(17),
            json!([{"controllerName": OURS}]),
            json!({"no": "controller"}),
            json!({"controllerName": 5}),
            json!({"controllerName": OURS.to_uppercase()}),
        ];
        let out = merge(&current, Shape::Ancestors, OURS, 1, &gateways(&[("infra", "a")]), &ok(), NOW);
        assert_eq!(&out.list[..current.len()], &current[..]);
        assert_eq!(out.list.len(), current.len() + 1);
        let again = merge(&out.list, Shape::Ancestors, OURS, 1, &gateways(&[("infra", "a")]), &ok(), NOW);
        assert!(!again.changed);
    }

    #[test]
    fn merge_removes_stale_duplicate_and_malformed_own_entries() {
        let first =
            merge(&[], Shape::Ancestors, OURS, 1, &gateways(&[("infra", "a"), ("infra", "old")]), &ok(), EARLIER);
        let mut current = first.list.clone();
        current.push(current[0].clone()); // a duplicate of ours
        current.push(json!({"controllerName": OURS, "garbage": true}));
        current.insert(1, foreign("x"));
        let out = merge(&current, Shape::Ancestors, OURS, 1, &gateways(&[("infra", "a")]), &ok(), NOW);
        assert!(out.changed);
        assert_eq!(out.list.len(), 2);
        assert_eq!(out.list[0], foreign("x"));
        assert_eq!(out.list[1], first.list[0], "the kept entry keeps its timestamps");
        // No ancestors left: all of ours go, foreign stays.
        let out = merge(&current, Shape::Ancestors, OURS, 1, &[], &ok(), NOW);
        assert_eq!(out.list, vec![foreign("x")]);
        assert!(out.changed);
    }

    #[test]
    fn merge_caps_at_32_keeping_foreign_first() {
        let foreign_entries: Vec<Value> = (0..30).map(|i| foreign(&format!("f{i:02}"))).collect();
        let wanted = gateways(&[("n", "e"), ("n", "d"), ("n", "c"), ("n", "b"), ("n", "a")]);
        let out = merge(&foreign_entries, Shape::Ancestors, OURS, 1, &wanted, &ok(), NOW);
        assert_eq!(out.list.len(), MAX_ANCESTORS);
        assert_eq!(out.truncated, 3);
        assert_eq!(&out.list[..30], &foreign_entries[..]);
        let kept: Vec<&Value> = ours_in(&out.list).into_iter().map(|e| &e["ancestorRef"]["name"]).collect();
        assert_eq!(kept, vec!["a", "b"]);
        let again = merge(&out.list, Shape::Ancestors, OURS, 1, &wanted, &ok(), NOW);
        assert!(!again.changed);
        assert_eq!(again.truncated, 3);

        // Foreign entries alone over the cap: all kept, none of ours.
        let crowded: Vec<Value> = (0..33).map(|i| foreign(&format!("f{i:02}"))).collect();
        let out = merge(&crowded, Shape::Ancestors, OURS, 1, &wanted, &ok(), NOW);
        assert_eq!(out.list, crowded);
        assert_eq!(out.truncated, 5);
        assert!(!out.changed);
    }

    #[test]
    fn merge_ignores_order_and_timestamps() {
        let wanted = gateways(&[("infra", "a"), ("infra", "b")]);
        let first = merge(&[foreign("x")], Shape::Ancestors, OURS, 2, &wanted, &ok(), EARLIER);
        let mut shuffled = first.list.clone();
        shuffled.reverse();
        for entry in &mut shuffled {
            if let Some(conditions) = entry.get_mut("conditions").and_then(Value::as_array_mut) {
                conditions.reverse();
            }
        }
        let out = merge(&shuffled, Shape::Ancestors, OURS, 2, &wanted, &ok(), NOW);
        assert!(!out.changed, "order alone is no change");
        assert_eq!(condition_of(&out.list[1], "Accepted")["lastTransitionTime"], EARLIER);

        // A stored timestamp that differs (or is missing) is not a change by itself.
        let mut retimed = first.list.clone();
        retimed[1]["conditions"][0]["lastTransitionTime"] = json!("2019-05-05T00:00:00Z");
        if let Some(condition) = retimed[2]["conditions"][1].as_object_mut() {
            condition.remove("lastTransitionTime");
        }
        let out = merge(&retimed, Shape::Ancestors, OURS, 2, &wanted, &ok(), NOW);
        assert!(!out.changed);
        assert_eq!(condition_of(&out.list[1], "Accepted")["lastTransitionTime"], "2019-05-05T00:00:00Z");
        assert_eq!(condition_of(&out.list[2], "ResolvedRefs")["lastTransitionTime"], NOW);
    }

    #[test]
    fn merge_keeps_transition_time_unless_status_flips() {
        let wanted = gateways(&[("infra", "a")]);
        let first = merge(&[], Shape::Ancestors, OURS, 1, &wanted, &ok(), EARLIER);
        // Accepted flips; ResolvedRefs changes reason and message only... it stays True here.
        let flipped = Verdicts {
            accepted: conditions::invalid("spec.port.port must be 1 to 65535."),
            resolved_refs: conditions::resolved_refs(),
        };
        let out = merge(&first.list, Shape::Ancestors, OURS, 1, &wanted, &flipped, NOW);
        assert!(out.changed);
        assert_eq!(condition_of(&out.list[0], "Accepted")["lastTransitionTime"], NOW);
        assert_eq!(condition_of(&out.list[0], "Accepted")["status"], "False");
        assert_eq!(condition_of(&out.list[0], "ResolvedRefs")["lastTransitionTime"], EARLIER);

        // Same status, another reason and message: a change, but the time stays.
        let first = merge(&[], Shape::Ancestors, OURS, 1, &wanted, &flipped, EARLIER);
        let other = Verdicts {
            accepted: conditions::hostname_not_allowed("denied"),
            resolved_refs: conditions::resolved_refs(),
        };
        let out = merge(&first.list, Shape::Ancestors, OURS, 1, &wanted, &other, NOW);
        assert!(out.changed);
        assert_eq!(condition_of(&out.list[0], "Accepted")["reason"], "HostnameNotAllowed");
        assert_eq!(condition_of(&out.list[0], "Accepted")["lastTransitionTime"], EARLIER);
    }

    #[test]
    fn merge_counts_observed_generation_as_change() {
        let wanted = gateways(&[("infra", "a")]);
        let first = merge(&[], Shape::Ancestors, OURS, 1, &wanted, &ok(), EARLIER);
        let out = merge(&first.list, Shape::Ancestors, OURS, 2, &wanted, &ok(), NOW);
        assert!(out.changed);
        assert_eq!(condition_of(&out.list[0], "Accepted")["observedGeneration"], 2);
        assert_eq!(condition_of(&out.list[0], "Accepted")["lastTransitionTime"], EARLIER);
    }

    #[test]
    fn merge_clips_huge_messages() {
        let huge =
            Verdicts { accepted: conditions::invalid("é".repeat(20_000)), resolved_refs: conditions::resolved_refs() };
        let out = merge(&[], Shape::Ancestors, OURS, 1, &gateways(&[("infra", "a")]), &huge, NOW);
        let message = condition_of(&out.list[0], "Accepted")["message"].as_str().map(str::len);
        assert!(message.is_some_and(|len| len <= MAX_MESSAGE_BYTES && len > 32_000));
    }

    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            prop_oneof![Just(OURS.to_string()), Just(THEIRS.to_string()), "[a-zA-Z]{0,6}".prop_map(String::from)]
                .prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            let key = prop_oneof![
                Just("controllerName".to_string()),
                Just("ancestorRef".to_string()),
                Just("parentRef".to_string()),
                Just("conditions".to_string()),
                Just("type".to_string()),
                Just("status".to_string()),
                Just("lastTransitionTime".to_string()),
                Just("namespace".to_string()),
                Just("name".to_string()),
                "[a-z]{1,4}".prop_map(String::from),
            ];
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::vec((key, inner), 0..6)
                    .prop_map(|fields| Value::Object(fields.into_iter().collect())),
            ]
        })
    }

    /// Arbitrary entries mixed with well-formed ones (ours and foreign), so
    /// matching paths get exercised, not only the malformed ones.
    fn entry_list() -> impl Strategy<Value = Vec<Value>> {
        let gateway_names = prop::sample::select(vec!["a", "b", "c"]);
        let well_formed = (gateway_names, any::<bool>(), any::<bool>()).prop_map(|(name, ours, accepted)| {
            json!({
                "ancestorRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "infra", "name": name},
                "controllerName": if ours { OURS } else { THEIRS },
                "conditions": [{"type": "Accepted", "status": if accepted { "True" } else { "False" }, "reason": "Accepted", "message": "", "observedGeneration": 1, "lastTransitionTime": EARLIER}]
            })
        });
        prop::collection::vec(prop_oneof![arbitrary_json(), well_formed], 0..40)
    }

    fn verdicts_strategy() -> impl Strategy<Value = Verdicts> {
        (any::<bool>(), any::<bool>()).prop_map(|(accepted, resolved)| Verdicts {
            accepted: if accepted { conditions::accepted() } else { conditions::invalid("bad") },
            resolved_refs: if resolved { conditions::resolved_refs() } else { conditions::invalid_kind("kind") },
        })
    }

    /// The list as a sorted multiset of entries, each with its conditions
    /// sorted and stripped of lastTransitionTime: what "the stored status would
    /// change" means, written without the code under test.
    fn canonical(list: &[Value]) -> Vec<String> {
        let mut entries: Vec<String> = list
            .iter()
            .map(|entry| {
                let mut entry = entry.clone();
                if let Some(Value::Array(conditions)) = entry.get_mut("conditions") {
                    for c in conditions.iter_mut() {
                        if let Value::Object(c) = c {
                            c.remove("lastTransitionTime");
                        }
                    }
                    conditions.sort_by_key(|c| c.to_string());
                }
                entry.to_string()
            })
            .collect();
        entries.sort();
        entries
    }

    proptest! {
        #[test]
        fn merge_properties(
            current in entry_list(),
            names in prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "d"]), 0..6),
            parents_shape in any::<bool>(),
            generation in 0i64..3,
            verdicts in verdicts_strategy(),
        ) {
            let shape = if parents_shape { Shape::Parents } else { Shape::Ancestors };
            let wanted: Vec<ObjectRef> = names.iter().map(|n| r("infra", n)).collect();
            let out = merge(&current, shape, OURS, generation, &wanted, &verdicts, NOW);

            // Foreign entries: all of them, unchanged, in their order, first.
            let foreign_before = not_ours(&current);
            prop_assert_eq!(&not_ours(&out.list), &foreign_before);
            prop_assert_eq!(&out.list[..foreign_before.len()].iter().collect::<Vec<_>>(), &foreign_before);

            // Ours: sorted, deduplicated, capped.
            let distinct: std::collections::BTreeSet<&str> = names.iter().copied().collect();
            let ours = ours_in(&out.list);
            prop_assert_eq!(ours.len() + out.truncated, distinct.len());
            prop_assert!(out.list.len() <= MAX_ANCESTORS.max(foreign_before.len()));
            let written: Vec<&str> = ours.iter().filter_map(|e| e[shape.ref_field()]["name"].as_str()).collect();
            prop_assert_eq!(written, distinct.iter().copied().take(ours.len()).collect::<Vec<_>>());

            // Idempotent, even at a later time.
            let again = merge(&out.list, shape, OURS, generation, &wanted, &verdicts, "2031-01-01T00:00:00Z");
            prop_assert!(!again.changed);
            prop_assert_eq!(&again.list, &out.list);

            // `changed` against an independent oracle: canonical forms (no
            // lastTransitionTime, conditions and entries sorted) differ.
            prop_assert_eq!(out.changed, canonical(&current) != canonical(&out.list));
        }
    }
}
