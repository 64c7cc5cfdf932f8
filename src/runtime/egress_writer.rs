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

use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
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

/// The NetworkPolicies labelled ours, as they stand (JSON, by namespace/name).
#[derive(Default)]
pub struct Standing {
    objects: Mutex<BTreeMap<ObjectRef, Value>>,
    wake: Notify,
}

impl Standing {
    pub fn new() -> Arc<Standing> {
        Arc::new(Standing::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<ObjectRef, Value>> {
        self.objects.lock().expect("standing policies lock")
    }
}

/// The watch that feeds `Standing`: only objects with our label.
pub struct PolicyWatch {
    pub standing: Arc<Standing>,
}

impl Indexer for PolicyWatch {
    type Resource = NetworkPolicy;

    fn name(&self) -> &'static str {
        "NetworkPolicy"
    }
    fn api(&self, client: &Client) -> Api<NetworkPolicy> {
        Api::all(client.clone())
    }
    fn config(&self) -> watcher::Config {
        super::watch::config().labels(OWNED_LABEL)
    }
    fn apply(&self, _: &State, key: ObjectRef, object: &NetworkPolicy) -> Result<Affected, String> {
        let value = serde_json::to_value(object).map_err(|e| e.to_string())?;
        self.standing.lock().insert(key, value);
        // An edit of ours is put back; our own write's echo decides nothing new.
        self.standing.wake.notify_one();
        Ok(Affected::none())
    }
    fn delete(&self, _: &State, key: &ObjectRef) -> Affected {
        self.standing.lock().remove(key);
        self.standing.wake.notify_one();
        Affected::none()
    }
    fn reset(&self, _: &State, seen: &BTreeSet<ObjectRef>, _: bool) -> Affected {
        self.standing.lock().retain(|key, _| seen.contains(key));
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

fn count_addresses(policies: &BTreeMap<ObjectRef, Value>) -> usize {
    let rules = policies.values().flat_map(|p| p["spec"]["egress"].as_array().into_iter().flatten());
    let peers = rules.flat_map(|r| r["to"].as_array().into_iter().flatten());
    peers.filter(|peer| peer.get("ipBlock").is_some()).count()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}
