//! Warning Events about egress that does not hold as it should: on a
//! Gateway, another object makes its policy moot (`Engine::widens`), its
//! data plane runs where the controller may not write (`--egress-namespace`),
//! it may reach the whole cluster because nothing says what its data plane
//! needs, or it is held to its routes with nothing allowed for its control
//! plane; on a route, a Service reference that allows nothing. Each is
//! recorded once while it lasts.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};
use serde_json::Value;
use tracing::warn;

use crate::egress::{Decision, Engine, Policies};
use crate::model::ObjectRef;
use crate::reach::Refusal;
use crate::runtime::timeouts::API_TIMEOUT;

pub const WIDENED: &str = "EgressPolicyWidened";
pub const NOT_WRITTEN: &str = "EgressPolicyNotWritten";
pub const CLUSTER_OPEN: &str = "EgressClusterOpen";
pub const CONTROL_PLANE_CUT_OFF: &str = "EgressDataPlaneNeedsUnknown";
pub const REFERENCE_REFUSED: &str = "EgressReferenceRefused";

/// The object an Event is about: its kind and key.
pub type Involved = (&'static str, ObjectRef);

/// One warning: its reason, its message, and the Service it is about, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub reason: &'static str,
    pub message: String,
    /// The Event's related object: Events of one object with one reason are
    /// folded into one (note and all) unless their related objects differ.
    pub service: Option<ObjectRef>,
}

impl Warning {
    fn new(reason: &'static str, message: String) -> Warning {
        Warning { reason, message, service: None }
    }
}

/// Warnings by (object, what it is about).
pub type Warnings = BTreeMap<(Involved, String), Warning>;

/// What to warn about, and how many Gateways another object widens.
pub fn find(engine: &dyn Engine, decision: &Decision, others: &Policies, refused: &[Refusal]) -> (Warnings, usize) {
    let mut now = Warnings::new();
    let gateway = |key: &ObjectRef| ("Gateway", key.clone());
    // With no other object there is nothing to compare ours with (and no need to parse them).
    if !others.is_empty() {
        let others: Vec<(&ObjectRef, Value)> = others.iter().map(|(key, p)| (key, p.to_value())).collect();
        let mut ours: BTreeMap<ObjectRef, Vec<Value>> = BTreeMap::new();
        for policy in decision.policies.values() {
            if let Some(gateway) = policy.gateway() {
                ours.entry(gateway).or_default().push(policy.to_value());
            }
        }
        for (key, policies) in &ours {
            for (other, value) in &others {
                if let Some(message) = policies.iter().find_map(|ours| engine.widens(ours, value)) {
                    now.insert((gateway(key), other.to_string()), Warning::new(WIDENED, message));
                }
            }
        }
    }
    let widened = now.keys().map(|((_, gw), _)| gw).collect::<BTreeSet<_>>().len();
    let kind = engine.kind().kind;
    for (key, namespace) in &decision.unwritable {
        let message = format!(
            "This Gateway's data plane runs in namespace {namespace}, where xbackend-controller may not write {kind}s (--egress-namespace): its egress is not restricted."
        );
        now.insert((gateway(key), format!("namespace {namespace}")), Warning::new(NOT_WRITTEN, message));
    }
    for info in &decision.open {
        let message = format!(
            "This Gateway's data plane may reach every Pod of the cluster: nothing says what the data plane of class {} (controller {:?}) needs itself, so it cannot be held to what its routes name. Pass --egress-needs {}=... (its control plane; none if it needs nothing) or choose --egress-cluster.",
            info.class, info.controller, info.class
        );
        now.insert((gateway(&info.key), "cluster".into()), Warning::new(CLUSTER_OPEN, message));
    }
    for (info, mode) in &decision.cut_off {
        let message = format!(
            "--egress-cluster {} holds this Gateway's data plane to what its routes name, but nothing says what the data plane of class {} (controller {:?}) needs itself, so its control plane is not allowed. Pass --egress-needs {}=... (or {}=none if it needs nothing).",
            mode.name(),
            info.class,
            info.controller,
            info.class,
            info.class
        );
        now.insert((gateway(&info.key), "needs".into()), Warning::new(CONTROL_PLANE_CUT_OFF, message));
    }
    // One Event per route and Service, with the Service as related object:
    // the recorder folds Events of one object, reason and related object
    // into one, keeping the first note.
    let mut by_reference: BTreeMap<(Involved, &ObjectRef), BTreeSet<&str>> = BTreeMap::new();
    for refusal in refused {
        let involved = (refusal.via.kind.kind(), refusal.via.key.clone());
        by_reference.entry((involved, &refusal.service)).or_default().insert(&refusal.message);
    }
    for ((involved, service), messages) in by_reference {
        let message = messages.into_iter().collect::<Vec<_>>().join(" ");
        let warning = Warning { reason: REFERENCE_REFUSED, message, service: Some(service.clone()) };
        now.insert((involved, format!("Service {service}")), warning);
    }
    (now, widened)
}

/// A Warning Event for each warning not given last time.
pub async fn publish(recorder: &Recorder, uids: &BTreeMap<ObjectRef, String>, now: &Warnings, before: &Warnings) {
    for (((kind, key), about), warning) in now {
        if before.get(&((*kind, key.clone()), about.clone())) == Some(warning) {
            continue;
        }
        let Warning { reason, message, service } = warning;
        let reference = ObjectReference {
            api_version: Some("gateway.networking.k8s.io/v1".into()),
            kind: Some(kind.to_string()),
            namespace: Some(key.namespace.to_string()),
            name: Some(key.name.to_string()),
            uid: uids.get(key).filter(|u| *kind == "Gateway" && !u.is_empty()).cloned(),
            ..ObjectReference::default()
        };
        let event = Event {
            type_: EventType::Warning,
            reason: (*reason).into(),
            note: Some(message.chars().take(1000).collect()),
            action: "Enforce".into(),
            secondary: service.as_ref().map(|service| ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Service".into()),
                namespace: Some(service.namespace.to_string()),
                name: Some(service.name.to_string()),
                ..ObjectReference::default()
            }),
        };
        match tokio::time::timeout(API_TIMEOUT, recorder.publish(&event, &reference)).await {
            Ok(Ok(())) => warn!(kind, object = %key, reason, "{message}"),
            Ok(Err(e)) => warn!(error = %e, "could not record Event"),
            Err(_) => warn!("recording an Event timed out"),
        }
    }
}
