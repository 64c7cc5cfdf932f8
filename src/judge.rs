//! One XBackend's verdict and the status list to store. `analyze` judges
//! straight from an index; `run` takes a `Snapshot` under the lock and `plan`s
//! from it without the lock.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::conditions::{self, reason};
use crate::guardrails::Namespaces;
use crate::index::Index;
use crate::model::{Ancestor, Backend, ObjectRef, ReferenceGrant};
use crate::policy::Policy;
use crate::refs::{self, Fetched, Lookup, RefTarget};
use crate::status::{self, EventNote, MergeOutcome, Shape};
use crate::verdict::{self, Verdicts};

pub struct Judgement {
    pub ancestors: Vec<Ancestor>,
    /// The verdicts on the spec and its references, whoever uses it.
    pub verdicts: Verdicts,
    /// One per ancestor, in order: `verdicts`, or Invalid where the kinds
    /// that use the XBackend through that Gateway cannot carry it (crate::fit).
    pub entries: Vec<Verdicts>,
    pub merged: MergeOutcome,
    /// Events to record: rejections, insecure backends, truncation.
    pub notes: Vec<EventNote>,
}

/// Everything a caller passes in besides the index.
pub struct Settings<'a> {
    pub policy: &'a Policy,
    pub controller_name: &'a str,
    pub shape: Shape,
    /// The stored status list (`status.<shape.list_field()>`), any JSON.
    pub current: &'a [Value],
    /// RFC 3339 time for conditions that are new or flip.
    pub now: &'a str,
}

/// None when the index has no such XBackend.
pub fn judge(index: &Index, key: &ObjectRef, fetched: &Fetched, inputs: &Settings<'_>) -> Option<Judgement> {
    let backend = index.backend(key)?;
    Some(judge_with(key, backend, index.ancestors(key), index, fetched, inputs))
}

fn judge_with(
    key: &ObjectRef,
    backend: &Backend,
    ancestors: Vec<Ancestor>,
    lookup: &impl Lookup,
    fetched: &Fetched,
    inputs: &Settings<'_>,
) -> Judgement {
    let verdicts = verdict::evaluate(key, backend, lookup, fetched, inputs.policy);
    let entries: Vec<Verdicts> = ancestors.iter().map(|a| fitted(&verdicts, a, backend)).collect();
    let merged = status::merge(
        inputs.current,
        inputs.shape,
        inputs.controller_name,
        backend.generation,
        &ancestors.iter().map(|a| &a.gateway).zip(&entries).collect::<Vec<_>>(),
        inputs.now,
    );
    let mut notes = status::events(backend, &verdicts);
    if merged.truncated > 0 {
        notes.push(EventNote {
            warning: true,
            reason: status::ANCESTORS_TRUNCATED_REASON,
            message: format!(
                "status.{} is capped at {} entries shared by all controllers: {} of this controller's Gateway entries were left out.",
                inputs.shape.list_field(),
                crate::api::MAX_ANCESTORS,
                merged.truncated
            ),
        });
    }
    Judgement { ancestors, verdicts, entries, merged, notes }
}

/// The verdicts for one ancestor: a spec that is valid but cannot be carried
/// by a kind that uses it through this Gateway is Invalid there (Invalid
/// comes first in docs/design.md §4, so an invalid spec keeps its own message).
fn fitted(verdicts: &Verdicts, ancestor: &Ancestor, backend: &Backend) -> Verdicts {
    let misfit = match &backend.spec {
        Ok(spec) if verdicts.accepted.reason != reason::INVALID => crate::fit::misfit(ancestor.referrers, spec),
        _ => None,
    };
    match misfit {
        Some(message) => Verdicts { accepted: conditions::invalid(message), ..verdicts.clone() },
        None => verdicts.clone(),
    }
}

impl Judgement {
    /// True when the XBackend passes validation and guardrails, resolves its
    /// references, and fits every use.
    pub fn is_clean(&self) -> bool {
        let clean = |v: &Verdicts| v.accepted.status && v.resolved_refs.status;
        clean(&self.verdicts) && self.entries.iter().all(clean)
    }
}

/// What a reconcile copies out of the index under its lock: the XBackend's
/// record (spec, generation, uid, resourceVersion and stored status of one
/// version), its ancestors, and the ReferenceGrants its references can need.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub key: ObjectRef,
    /// Shared with the index: a snapshot copies no spec or status.
    pub backend: Arc<Backend>,
    pub ancestors: Vec<Ancestor>,
    /// The grants of the namespace a cross-namespace clientCertificateRef points at.
    pub grants: Vec<ReferenceGrant>,
    /// For an EndpointSelector: whether a live Pod of the namespace matches.
    pub has_matching_pod: bool,
    /// The cluster's Namespaces (shared with the index, not copied), for the
    /// cluster-aware name guardrail on the hostname and its CNAME chain.
    pub namespaces: Arc<BTreeSet<String>>,
    pub shape: Shape,
}

impl Snapshot {
    /// None when the index has no such XBackend. Cheap: no parsing, no I/O.
    pub fn take(index: &Index, key: &ObjectRef, shape: Shape) -> Option<Snapshot> {
        let backend = index.backend_shared(key)?;
        let grants = match backend.spec.as_ref().ok().and_then(|s| refs::cross_namespace_target(key, s)) {
            Some(namespace) => index.grants_in(&namespace).cloned().collect(),
            None => Vec::new(),
        };
        let has_matching_pod = backend
            .spec
            .as_ref()
            .ok()
            .and_then(refs::endpoint_selector)
            .is_some_and(|selector| index.has_matching_pod(&key.namespace, selector));
        Some(Snapshot {
            key: key.clone(),
            ancestors: index.ancestors(key),
            backend,
            grants,
            has_matching_pod,
            namespaces: index.namespaces(),
            shape,
        })
    }

    /// The same snapshot for another version of the object (read after a 409).
    pub fn with_backend(&self, backend: Backend) -> Snapshot {
        Snapshot { backend: Arc::new(backend), ..self.clone() }
    }

    /// The Secrets and ConfigMaps to read before planning.
    pub fn refs_to_fetch(&self) -> Vec<RefTarget> {
        match &self.backend.spec {
            Ok(spec) => refs::refs_to_fetch(&self.key, spec, self),
            Err(_) => Vec::new(),
        }
    }
}

impl Namespaces for Snapshot {
    fn contains(&self, name: &str) -> bool {
        self.namespaces.contains(name)
    }
}

impl Lookup for Snapshot {
    fn grant_permits(&self, from_namespace: &str, group: &str, kind: &str, to: &ObjectRef) -> bool {
        // `grants` holds only the one namespace a reference can leave for.
        let in_namespace = self.backend.spec.as_ref().ok().and_then(|s| refs::cross_namespace_target(&self.key, s));
        in_namespace.as_deref() == Some(&*to.namespace)
            && refs::grants_permit(self.grants.iter(), from_namespace, group, kind, to)
    }

    fn has_matching_pod(&self, namespace: &str, selector: &std::collections::BTreeMap<String, String>) -> bool {
        // Answered for the XBackend's own selector and namespace only.
        let own = self.backend.spec.as_ref().ok().and_then(refs::endpoint_selector);
        *namespace == *self.key.namespace && own == Some(selector) && self.has_matching_pod
    }
}

/// What a reconcile does: at most one status patch, the Events to record, and
/// the verdict (for the Accepted gauge).
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// A JSON merge patch of the whole status list carrying the snapshot's
    /// resourceVersion as a precondition; None when the stored list is right.
    pub patch: Option<Value>,
    pub events: Vec<EventNote>,
    pub verdicts: Verdicts,
    pub ancestors: usize,
    /// What this XBackend adds to the egress NetworkPolicies of the Gateways
    /// it is Accepted behind (docs/design.md §6b); the policy writer reads it.
    pub uses: Vec<(ObjectRef, crate::egress::Allowed)>,
}

/// The pure step of a reconcile: no lock, no I/O. `now` stamps conditions
/// that are new or flip.
pub fn plan(snapshot: &Snapshot, fetched: &Fetched, policy: &Policy, controller_name: &str, now: &str) -> Plan {
    let shape = snapshot.shape;
    let stored = snapshot.backend.status.list(shape.list_field());
    let current = stored.as_deref();
    let inputs = Settings { policy, controller_name, shape, current: current.unwrap_or_default(), now };
    let ancestors = snapshot.ancestors.clone();
    let Judgement { ancestors, verdicts, entries, merged, notes } =
        judge_with(&snapshot.key, &snapshot.backend, ancestors, snapshot, fetched, &inputs);
    let addresses = fetched.resolution.iter().flat_map(|r| r.addresses.iter().copied()).collect();
    let uses = match &snapshot.backend.spec {
        Ok(spec) => {
            let accepted = ancestors.iter().zip(entries.iter().map(|v| v.accepted.status));
            crate::egress::uses(&snapshot.key, spec, accepted, &addresses)
        }
        Err(_) => Vec::new(),
    };
    let patch = merged.changed.then(|| {
        let list = if merged.list.is_empty() { Value::Null } else { Value::Array(merged.list) };
        json!({
            "metadata": {"resourceVersion": snapshot.backend.resource_version},
            "status": {shape.list_field(): list},
        })
    });
    Plan { patch, events: notes, verdicts, ancestors: ancestors.len(), uses }
}

/// Now as RFC 3339 with second precision, the form metav1.Time uses.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::StoredStatus;
    use crate::policy::PolicyConfig;
    use serde_json::json;

    const OURS: &str = "example.com/xbackend-controller";

    fn snapshot(status: Value, ancestors: &[&str]) -> Snapshot {
        let mut backend = Backend::new(3, Ok(crate::testing::plain_spec()));
        backend.uid = "u".into();
        backend.resource_version = "42".into();
        backend.status = StoredStatus::from_value(&status);
        Snapshot {
            key: ObjectRef::new("app", "b"),
            backend: Arc::new(backend),
            ancestors: ancestors.iter().map(|g| crate::testing::http_ancestor(ObjectRef::new("infra", *g))).collect(),
            grants: vec![],
            has_matching_pod: false,
            namespaces: Arc::default(),
            shape: Shape::Ancestors,
        }
    }

    fn run(s: &Snapshot, now: &str) -> Plan {
        plan(s, &Fetched::default(), &Policy::new(PolicyConfig::default()).unwrap(), OURS, now)
    }

    #[test]
    fn a_plan_patches_with_the_snapshot_version_and_then_has_nothing_to_do() {
        let first = run(&snapshot(Value::Null, &["gw"]), "2030-01-01T00:00:00Z");
        let patch = first.patch.expect("a new entry is written");
        assert_eq!(patch["metadata"]["resourceVersion"], "42", "the precondition is the snapshot's version");
        let list = &patch["status"]["ancestors"];
        assert_eq!(list.as_array().unwrap().len(), 1);
        assert_eq!(list[0]["conditions"][0]["observedGeneration"], 3);
        assert!(first.verdicts.accepted.status);
        assert_eq!(first.events.len(), 1, "no TLS: an Insecure warning");

        // The stored status now holds that list: a later plan writes nothing.
        let again = run(&snapshot(json!({"ancestors": list}), &["gw"]), "2031-01-01T00:00:00Z");
        assert_eq!(again.patch, None);
        assert_eq!(again.events, first.events, "the same Events (the state decides whether to record them)");
    }

    #[test]
    fn losing_every_ancestor_patches_the_list_to_null_keeping_nothing_of_ours() {
        let stored = run(&snapshot(Value::Null, &["gw"]), "2030-01-01T00:00:00Z").patch.unwrap();
        let gone = run(&snapshot(stored["status"].clone(), &[]), "2030-01-01T00:00:00Z");
        assert_eq!(gone.patch.unwrap()["status"]["ancestors"], Value::Null);
    }

    /// docs/api.md "Route kind and backend": a UDPRoute cannot carry TLS, so
    /// the Gateway it leads to gets Invalid while an HTTPRoute's Gateway keeps
    /// Accepted; an invalid spec keeps its own message everywhere.
    #[test]
    fn a_use_that_cannot_carry_the_backend_is_invalid_for_that_gateway_only() {
        use crate::model::{Ancestor, Referrer, RouteKind};
        let mut s = snapshot(Value::Null, &[]);
        let mut backend = (*s.backend).clone();
        backend.spec = Ok(crate::testing::tls_spec(None, vec![]));
        s.backend = Arc::new(backend);
        let via = |name: &str, kinds: &[RouteKind]| Ancestor {
            gateway: ObjectRef::new("infra", name),
            referrers: kinds.iter().map(|k| Referrer::Route(*k)).collect(),
        };
        s.ancestors = vec![via("tcp", &[RouteKind::Tcp]), via("udp", &[RouteKind::Http, RouteKind::Udp])];
        let plan = run(&s, "2030-01-01T00:00:00Z");
        let list = plan.patch.unwrap()["status"]["ancestors"].clone();
        let accepted = |i: usize| (list[i]["ancestorRef"]["name"].clone(), list[i]["conditions"][0]["reason"].clone());
        assert_eq!(accepted(0), (json!("tcp"), json!("Accepted")));
        assert_eq!(accepted(1), (json!("udp"), json!("Invalid")));
        let message = list[1]["conditions"][0]["message"].as_str().unwrap();
        assert!(message.starts_with("spec.tls: a UDPRoute carries datagrams"), "{message}");
        assert_eq!(list[1]["conditions"][1]["status"], "True", "ResolvedRefs is judged apart");
        assert!(plan.verdicts.accepted.status, "the spec itself is fine (the Accepted gauge)");

        let mut backend = (*s.backend).clone();
        backend.spec = Err("spec.port: missing".into());
        s.backend = Arc::new(backend);
        let list = run(&s, "2030-01-01T00:00:00Z").patch.unwrap()["status"]["ancestors"].clone();
        assert_eq!(list[0]["conditions"][0]["message"], list[1]["conditions"][0]["message"]);
    }
}
