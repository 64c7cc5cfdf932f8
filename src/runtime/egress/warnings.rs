//! Warning Events on Gateways whose egress policy does not hold: another
//! object makes it moot (`Engine::widens`), or its data plane runs where
//! the controller may not write (`--egress-namespace`). Each is recorded
//! once while it lasts.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};
use serde_json::Value;
use tracing::warn;

use crate::egress::{Decision, Engine, Policies};
use crate::model::ObjectRef;
use crate::runtime::timeouts::API_TIMEOUT;

/// Warnings by (Gateway, what it is about), with reason and message.
pub type Warnings = BTreeMap<(ObjectRef, String), (&'static str, String)>;

/// What to warn each Gateway about, and how many Gateways another object widens.
pub fn find(engine: &dyn Engine, decision: &Decision, others: &Policies) -> (Warnings, usize) {
    let mut now = Warnings::new();
    // With no other object there is nothing to compare ours with (and no need to parse them).
    if !others.is_empty() {
        let others: Vec<(&ObjectRef, Value)> = others.iter().map(|(key, p)| (key, p.to_value())).collect();
        let mut ours: BTreeMap<ObjectRef, Vec<Value>> = BTreeMap::new();
        for policy in decision.policies.values() {
            if let Some(gateway) = policy.gateway() {
                ours.entry(gateway).or_default().push(policy.to_value());
            }
        }
        for (gateway, policies) in &ours {
            for (key, other) in &others {
                if let Some(message) = policies.iter().find_map(|ours| engine.widens(ours, other)) {
                    now.insert((gateway.clone(), key.to_string()), ("EgressPolicyWidened", message));
                }
            }
        }
    }
    let widened = now.keys().map(|(gw, _)| gw).collect::<BTreeSet<_>>().len();
    let kind = engine.kind().kind;
    for (gateway, namespace) in &decision.unwritable {
        let message = format!(
            "This Gateway's data plane runs in namespace {namespace}, where xbackend-controller may not write {kind}s (--egress-namespace): its egress is not restricted."
        );
        now.insert((gateway.clone(), format!("namespace {namespace}")), ("EgressPolicyNotWritten", message));
    }
    (now, widened)
}

/// A Warning Event on the Gateway for each warning not given last time.
pub async fn publish(recorder: &Recorder, uids: &BTreeMap<ObjectRef, String>, now: &Warnings, before: &Warnings) {
    for ((gateway, about), (reason, message)) in now {
        if before.get(&(gateway.clone(), about.clone())) == Some(&(*reason, message.clone())) {
            continue;
        }
        let reference = ObjectReference {
            api_version: Some("gateway.networking.k8s.io/v1".into()),
            kind: Some("Gateway".into()),
            namespace: Some(gateway.namespace.to_string()),
            name: Some(gateway.name.to_string()),
            uid: uids.get(gateway).filter(|u| !u.is_empty()).cloned(),
            ..ObjectReference::default()
        };
        let event = Event {
            type_: EventType::Warning,
            reason: (*reason).into(),
            note: Some(message.clone()),
            action: "Enforce".into(),
            secondary: None,
        };
        match tokio::time::timeout(API_TIMEOUT, recorder.publish(&event, &reference)).await {
            Ok(Ok(())) => warn!(gateway = %gateway, about, reason, "{message}"),
            Ok(Err(e)) => warn!(error = %e, "could not record Event"),
            Err(_) => warn!("recording an Event timed out"),
        }
    }
}
