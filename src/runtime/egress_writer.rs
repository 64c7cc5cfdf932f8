//! The egress policy writer (docs/design.md §6b), a second writer beside the
//! status pipeline: a watch of the NetworkPolicies labelled ours keeps what
//! stands; one task decides what should stand (`egress::desired` over
//! `State::egress_inputs`, with the address hold-down it owns) and applies
//! the difference while this replica may write, each call bounded by
//! `API_TIMEOUT`, failures retried after a backoff. It writes nothing else,
//! and nothing else writes these objects.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::watcher;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{info, warn};

use super::leader::Leadership;
use super::metrics::Metrics;
use super::queue::backoff;
use super::state::State;
use super::timeouts::API_TIMEOUT;
use super::watch::{Affected, Indexer};
use crate::egress::{self, Config, Held, Hold, OWNED_LABEL};
use crate::model::ObjectRef;
use crate::policy::AddressPolicy;

/// Field manager of our server-side applies.
const MANAGER: &str = "xbackend-controller-egress";
/// How long a first write waits for every XBackend to be judged once: rules
/// decided on part of the XBackends would be written again moments later.
const FIRST_PASS_WAIT: Duration = Duration::from_secs(30);
/// Gathers a burst of changes (a pass of reconciles) into one decision.
const COALESCE: Duration = Duration::from_millis(200);
/// Held addresses expire by time alone: look again at least this often.
const HOLD_TICK: Duration = Duration::from_secs(60);

/// The NetworkPolicies labelled ours, as they stand (JSON, by namespace/name),
/// and everyone else's (to tell when one makes ours moot).
#[derive(Default)]
pub struct Standing {
    objects: Mutex<BTreeMap<ObjectRef, Value>>,
    others: Mutex<BTreeMap<ObjectRef, Value>>,
    wake: Notify,
}

impl Standing {
    pub fn new() -> Arc<Standing> {
        Arc::new(Standing::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<ObjectRef, Value>> {
        self.objects.lock().expect("standing policies lock")
    }

    fn others(&self) -> std::sync::MutexGuard<'_, BTreeMap<ObjectRef, Value>> {
        self.others.lock().expect("other policies lock")
    }
}

/// A watch that feeds `Standing`: the NetworkPolicies with our label
/// (`ours`), or every other one, kept whole (few objects), only to warn when
/// one makes ours moot (`egress::widens`).
pub struct PolicyWatch {
    pub standing: Arc<Standing>,
    pub ours: bool,
}

impl PolicyWatch {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<ObjectRef, Value>> {
        if self.ours { self.standing.lock() } else { self.standing.others() }
    }
}

impl Indexer for PolicyWatch {
    type Resource = NetworkPolicy;

    fn name(&self) -> &'static str {
        if self.ours { "NetworkPolicy" } else { "NetworkPolicy (others)" }
    }
    fn api(&self, client: &Client) -> Api<NetworkPolicy> {
        Api::all(client.clone())
    }
    fn config(&self) -> watcher::Config {
        let selector = if self.ours { OWNED_LABEL.to_string() } else { format!("!{OWNED_LABEL}") };
        super::watch::config().labels(&selector)
    }
    fn apply(&self, _: &State, key: ObjectRef, object: &NetworkPolicy) -> Result<Affected, String> {
        let value = serde_json::to_value(object).map_err(|e| e.to_string())?;
        self.map().insert(key, value);
        // An edit of ours is put back; our own write's echo decides nothing new.
        self.standing.wake.notify_one();
        Ok(Affected::none())
    }
    fn delete(&self, _: &State, key: &ObjectRef) -> Affected {
        self.map().remove(key);
        self.standing.wake.notify_one();
        Affected::none()
    }
    fn reset(&self, _: &State, seen: &BTreeSet<ObjectRef>, _: bool) -> Affected {
        self.map().retain(|key, _| seen.contains(key));
        self.standing.wake.notify_one();
        Affected::none()
    }
}

/// Everything the writer task needs.
pub struct Writer {
    pub standing: Arc<Standing>,
    pub state: Arc<State>,
    pub client: Client,
    pub leadership: Leadership,
    pub metrics: Arc<Metrics>,
    pub config: Config,
    pub hold: Hold,
    /// Held addresses now in a denied range leave at once.
    pub addresses: AddressPolicy,
    /// Warnings on Gateways whose policies another one makes moot.
    pub recorder: Recorder,
}

impl Writer {
    /// Decides and writes until the process ends.
    pub async fn run(self) {
        let mut ready = self.state.synced.subscribe();
        if ready.wait_for(|r| *r).await.is_err() {
            return;
        }
        let mut leading = self.leadership.changes();
        let mut held = Held::default();
        let mut failures = 0u32;
        let mut first_pass: Option<Instant> = None;
        // (Gateway, other policy) pairs already warned about, with the message.
        let mut warned: BTreeMap<(ObjectRef, ObjectRef), String> = BTreeMap::new();
        loop {
            tokio::select! {
                _ = self.state.egress_changed.notified() => {}
                _ = self.standing.wake.notified() => {}
                _ = tokio::time::sleep(HOLD_TICK) => {}
                changed = leading.changed() => if changed.is_err() { return },
            }
            tokio::time::sleep(COALESCE).await;
            if !self.leadership.may_write() {
                first_pass = None;
                continue;
            }
            let inputs = self.state.egress_inputs();
            if !inputs.unknown.is_empty() && first_pass.get_or_insert_with(Instant::now).elapsed() < FIRST_PASS_WAIT {
                // Look again soon: the pass may finish without another change.
                self.standing.wake.notify_one();
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            let current = self.standing.lock().clone();
            let denied = |ip: IpAddr| crate::addresses::denied(ip, &self.addresses).is_some();
            let (desired, evicted) =
                egress::desired(&inputs, &current, &mut held, unix_now(), self.hold, &self.config, &denied);
            self.metrics.egress_hold_evictions.inc_by(evicted as u64);
            self.metrics.egress_policy_objects.set(desired.len() as i64);
            self.metrics.egress_addresses.set(count_addresses(&desired) as i64);
            self.warn_widened(&inputs.gateways, &desired, &mut warned).await;
            if self.write(&desired, &current).await {
                failures = 0;
            } else {
                failures = failures.saturating_add(1);
                tokio::time::sleep(backoff(failures, Duration::from_millis(250), Duration::from_secs(60))).await;
                self.standing.wake.notify_one();
            }
        }
    }

    /// Applies what differs and deletes ours that should not stand; false
    /// when a call failed (the next round tries again).
    async fn write(&self, desired: &BTreeMap<ObjectRef, Value>, current: &BTreeMap<ObjectRef, Value>) -> bool {
        let mut ok = true;
        for (key, object) in desired {
            if current.get(key).is_some_and(|standing| egress::stands(object, standing)) {
                continue;
            }
            if !self.leadership.may_write() {
                return false;
            }
            let api: Api<NetworkPolicy> = Api::namespaced(self.client.clone(), &key.namespace);
            let params = PatchParams::apply(MANAGER).force();
            let body = Patch::Apply(object);
            let call = api.patch(&key.name, &params, &body);
            ok &= self.bounded(key, "apply", call).await;
        }
        for (key, standing) in current {
            if desired.contains_key(key) {
                continue;
            }
            if !self.leadership.may_write() {
                return false;
            }
            let api: Api<NetworkPolicy> = Api::namespaced(self.client.clone(), &key.namespace);
            // Only the object we saw: one someone re-created meanwhile is theirs to explain.
            let uid = standing["metadata"]["uid"].as_str().map(str::to_string);
            let params = DeleteParams {
                preconditions: uid.map(|uid| kube::api::Preconditions { uid: Some(uid), resource_version: None }),
                ..DeleteParams::default()
            };
            let call = async { api.delete(&key.name, &params).await.map(|_| ()) };
            ok &= self.bounded(key, "delete", call).await;
        }
        ok
    }

    async fn bounded<T>(
        &self,
        key: &ObjectRef,
        what: &str,
        call: impl Future<Output = Result<T, kube::Error>>,
    ) -> bool {
        match tokio::time::timeout(API_TIMEOUT, call).await {
            Ok(Ok(_)) => {
                self.metrics.egress_policy_writes.inc();
                info!(networkpolicy = %key, what, "egress policy written");
                true
            }
            // Gone already, or changed under us: the watch brings the news.
            Ok(Err(kube::Error::Api(status))) if status.code == 404 || status.code == 409 => true,
            Ok(Err(e)) => {
                warn!(networkpolicy = %key, what, error = %e, "egress policy write failed; retrying");
                false
            }
            Err(_) => {
                warn!(networkpolicy = %key, what, "egress policy write timed out; retrying");
                false
            }
        }
    }
}

impl Writer {
    /// A Warning Event on each Gateway whose data plane another
    /// NetworkPolicy lets reach more than ours (once per pair while it lasts),
    /// and the count of such Gateways.
    async fn warn_widened(
        &self,
        gateways: &[(ObjectRef, String, String)],
        desired: &BTreeMap<ObjectRef, Value>,
        warned: &mut BTreeMap<(ObjectRef, ObjectRef), String>,
    ) {
        let others = self.standing.others().clone();
        let mut now: BTreeMap<(ObjectRef, ObjectRef), String> = BTreeMap::new();
        for (gateway, _, _) in gateways {
            let is_ours = |p: &&Value| {
                p["metadata"]["labels"][OWNED_LABEL] == *gateway.name
                    && p["metadata"]["labels"][egress::OWNED_NAMESPACE_LABEL] == *gateway.namespace
            };
            let Some(policy) = desired.values().find(is_ours) else { continue };
            for (key, other) in &others {
                if let Some(message) = egress::widens(policy, other) {
                    now.insert((gateway.clone(), key.clone()), message);
                }
            }
        }
        let gateways_widened: BTreeSet<&ObjectRef> = now.keys().map(|(gw, _)| gw).collect();
        self.metrics.egress_widened_gateways.set(gateways_widened.len() as i64);
        for ((gateway, other), message) in &now {
            if warned.get(&(gateway.clone(), other.clone())) == Some(message) {
                continue;
            }
            let uid = gateways.iter().find(|(g, _, _)| g == gateway).map(|(_, uid, _)| uid.clone());
            let reference = ObjectReference {
                api_version: Some("gateway.networking.k8s.io/v1".into()),
                kind: Some("Gateway".into()),
                namespace: Some(gateway.namespace.to_string()),
                name: Some(gateway.name.to_string()),
                uid: uid.filter(|u| !u.is_empty()),
                ..ObjectReference::default()
            };
            let event = Event {
                type_: EventType::Warning,
                reason: "EgressPolicyWidened".into(),
                note: Some(message.clone()),
                action: "Enforce".into(),
                secondary: None,
            };
            match tokio::time::timeout(API_TIMEOUT, self.recorder.publish(&event, &reference)).await {
                Ok(Ok(())) => {
                    warn!(gateway = %gateway, networkpolicy = %other, "another NetworkPolicy widens this Gateway's egress")
                }
                Ok(Err(e)) => warn!(error = %e, "could not record Event"),
                Err(_) => warn!("recording an Event timed out"),
            }
        }
        *warned = now;
    }
}

fn count_addresses(policies: &BTreeMap<ObjectRef, Value>) -> usize {
    let rules = policies.values().flat_map(|p| p["spec"]["egress"].as_array().into_iter().flatten());
    let peers = rules.flat_map(|r| r["to"].as_array().into_iter().flatten());
    peers.filter(|peer| peer.get("ipBlock").is_some()).count()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}
