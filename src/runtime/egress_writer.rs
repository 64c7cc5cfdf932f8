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
use crate::egress::{self, Config, Decisions, Hold, OWNED_LABEL, Policies, Policy};
use crate::model::ObjectRef;
use crate::policy::AddressPolicy;

/// Field manager of our server-side applies.
const MANAGER: &str = "xbackend-controller-egress";
/// The first decision waits for every XBackend to be judged once (rules
/// decided on part of them would be written again moments later) while that
/// pass makes progress; a pass that has not moved for this long (a reconcile
/// that keeps failing) is decided without the rest, whose rules stay as they
/// stand.
const FIRST_PASS_STALL: Duration = Duration::from_secs(30);
/// A round may take at most this share of one core: the next one waits this
/// many times as long as the last took.
const ROUND_SPACING: u32 = 3;
/// Gathers a burst of changes (a pass of reconciles) into one decision.
const COALESCE: Duration = Duration::from_millis(200);
/// Held addresses expire by time alone: look again at least this often.
const HOLD_TICK: Duration = Duration::from_secs(60);

/// The NetworkPolicies labelled ours, and everyone else's (to tell when one
/// makes ours moot), as they stand: only the fields the writer compares
/// (`Policy::from_object`), shared, so a round copies pointers rather than
/// trees, and one that stands as decided is the decided copy.
#[derive(Default)]
pub struct Standing {
    objects: Mutex<Policies>,
    others: Mutex<Policies>,
    /// The uid of each of ours, for deletes that must not hit a successor
    /// (kept apart, so one that stands as decided is the decided copy).
    uids: Mutex<BTreeMap<ObjectRef, String>>,
    /// What the writer last decided should stand: an object read back the
    /// same is kept as that copy, not as a second one.
    decided: Mutex<Policies>,
    wake: Notify,
}

impl Standing {
    pub fn new() -> Arc<Standing> {
        Arc::new(Standing::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Policies> {
        self.objects.lock().expect("standing policies lock")
    }

    fn others(&self) -> std::sync::MutexGuard<'_, Policies> {
        self.others.lock().expect("other policies lock")
    }

    fn uids(&self) -> std::sync::MutexGuard<'_, BTreeMap<ObjectRef, String>> {
        self.uids.lock().expect("policy uids lock")
    }

    fn decided(&self) -> std::sync::MutexGuard<'_, Policies> {
        self.decided.lock().expect("decided policies lock")
    }
}

/// A watch that feeds `Standing`: the NetworkPolicies with our label
/// (`ours`), or every other one, kept (few objects) only to warn when one
/// makes ours moot (`egress::widens`); in every namespace, or in one
/// (`--egress-namespace`: the chart grants a Role there, nothing wider).
pub struct PolicyWatch {
    standing: Arc<Standing>,
    ours: bool,
    namespace: Option<String>,
    name: &'static str,
}

impl PolicyWatch {
    pub fn new(standing: Arc<Standing>, ours: bool, namespace: Option<String>) -> PolicyWatch {
        let which = if ours { "NetworkPolicy" } else { "NetworkPolicy (others)" };
        // Readiness and metrics know a watch by a static name: one per
        // namespace the operator lists, made once at start.
        let name: &'static str = match &namespace {
            None => which,
            Some(ns) => Box::leak(format!("{which} in {ns}").into_boxed_str()),
        };
        PolicyWatch { standing, ours, namespace, name }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, Policies> {
        if self.ours { self.standing.lock() } else { self.standing.others() }
    }
}

impl Indexer for PolicyWatch {
    type Resource = NetworkPolicy;

    fn name(&self) -> &'static str {
        self.name
    }
    fn api(&self, client: &Client) -> Api<NetworkPolicy> {
        match &self.namespace {
            Some(namespace) => Api::namespaced(client.clone(), namespace),
            None => Api::all(client.clone()),
        }
    }
    fn config(&self) -> watcher::Config {
        let selector = if self.ours { OWNED_LABEL.to_string() } else { format!("!{OWNED_LABEL}") };
        // Ours hold up to 64 XBackends' rules each: a (re-)list in pages of
        // 16 keeps one page's typed objects in memory, not all of them.
        super::watch::config().labels(&selector).page_size(16)
    }
    fn apply(&self, _: &State, key: ObjectRef, object: &NetworkPolicy) -> Result<Affected, String> {
        let policy = Policy::from_object(object).map_err(|e| e.to_string())?;
        if self.ours {
            self.standing.uids().insert(key.clone(), object.metadata.uid.clone().unwrap_or_default());
        }
        // One the same as what stands (a re-list brings every object again)
        // or as what the writer decided (our own write's echo) is kept as
        // that copy, not as a second one.
        let mut map = self.map();
        let same = |p: &&Arc<Policy>| ***p == policy;
        let known = map.get(&key).filter(same).cloned();
        let known = known.or_else(|| self.ours.then(|| self.standing.decided().get(&key).filter(same).cloned())?);
        map.insert(key, known.unwrap_or_else(|| Arc::new(policy)));
        drop(map);
        // An edit of ours is put back; our own write's echo decides nothing new.
        self.standing.wake.notify_one();
        Ok(Affected::none())
    }
    fn delete(&self, _: &State, key: &ObjectRef) -> Affected {
        self.map().remove(key);
        self.standing.uids().remove(key);
        self.standing.wake.notify_one();
        Affected::none()
    }
    fn reset(&self, _: &State, seen: &BTreeSet<ObjectRef>, _: bool) -> Affected {
        // Only this watch's namespace: the others' watches answer for theirs.
        let mine = |key: &ObjectRef| self.namespace.as_deref().is_none_or(|ns| *key.namespace == *ns);
        self.map().retain(|key, _| !mine(key) || seen.contains(key));
        if self.ours {
            self.standing.uids().retain(|key, _| !mine(key) || seen.contains(key));
        }
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
    pub config: Arc<Config>,
    pub hold: Hold,
    /// Held addresses now in a denied range leave at once.
    pub addresses: Arc<AddressPolicy>,
    /// Warnings on Gateways whose policies another one makes moot.
    pub recorder: Recorder,
}

/// Objects last found standing as decided, with both sides as compared: the
/// same two pointers again need no comparison.
type Confirmed = BTreeMap<ObjectRef, (Arc<Policy>, Arc<Policy>)>;

/// Warnings on Gateways, by (Gateway, what it is about), with reason and message.
type Warnings = BTreeMap<(ObjectRef, String), (&'static str, String)>;

impl Writer {
    /// Decides and writes until the process ends.
    pub async fn run(self) {
        let mut ready = self.state.synced.subscribe();
        if ready.wait_for(|r| *r).await.is_err() {
            return;
        }
        let mut leading = self.leadership.changes();
        let mut decisions = Decisions::default();
        let mut confirmed = Confirmed::new();
        let mut last_rebuild = Instant::now();
        let mut failures = 0u32;
        // Before the first decision: the fewest XBackends left to judge, and since when.
        let mut first_pass: Option<(usize, Instant)> = None;
        let mut decided = false;
        let mut warned = Warnings::new();
        loop {
            tokio::select! {
                _ = self.state.egress_changed.notified() => {}
                _ = self.standing.wake.notified() => {}
                _ = tokio::time::sleep(HOLD_TICK) => {}
                changed = leading.changed() => if changed.is_err() { return },
            }
            tokio::time::sleep(COALESCE).await;
            if !self.leadership.may_write() {
                // Another leader may have written meanwhile: start again from what stands.
                (first_pass, decided, decisions) = (None, false, Decisions::default());
                continue;
            }
            if !decided && self.first_pass_goes_on(&mut first_pass) {
                // Look again soon: the pass may finish without another change.
                self.standing.wake.notify_one();
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            decided = true;
            let started = Instant::now();
            // Held addresses expire by time alone: every Gateway is built again now and then.
            let rebuild = last_rebuild.elapsed() >= HOLD_TICK;
            if rebuild {
                last_rebuild = Instant::now();
            }
            // Tens of milliseconds of CPU at 10,000 XBackends: on a blocking
            // thread, so the reconciles and watches queued behind this task on
            // its worker are not held up for that long.
            let round = {
                let (state, standing) = (self.state.clone(), self.standing.clone());
                let (config, addresses, hold) = (self.config.clone(), self.addresses.clone(), self.hold);
                move || {
                    let inputs = state.egress_inputs();
                    let current = standing.lock().clone();
                    let denied = |ip: IpAddr| crate::addresses::denied(ip, &addresses).is_some();
                    let decision = decisions.decide(&inputs, &current, unix_now(), hold, &config, &denied, rebuild);
                    (decisions, inputs, current, decision)
                }
            };
            let (inputs, current, decision);
            (decisions, inputs, current, decision) = match tokio::task::spawn_blocking(round).await {
                Ok(done) => done,
                // Only a panic in `decide` gets here: start again from what stands.
                Err(error) => {
                    warn!(%error, "egress decision failed; deciding again from what stands");
                    (first_pass, decided, decisions) = (None, false, Decisions::default());
                    continue;
                }
            };
            let desired = &decision.policies;
            *self.standing.decided() = desired.clone();
            self.metrics.egress_hold_evictions.inc_by(decision.evicted as u64);
            self.metrics.egress_policy_objects.set(desired.len() as i64);
            self.metrics.egress_addresses.set(decision.addresses.values().sum::<usize>() as i64);
            self.metrics.egress_gateways.set(decision.addresses.len() as i64);
            let most = decision.addresses.values().max().copied().unwrap_or(0);
            self.metrics.egress_addresses_max_per_gateway.set(most as i64);
            let spent = started.elapsed();
            let warnings = self.warnings(&inputs.gateways, &decision);
            self.warn(&inputs.gateways, &warnings, &warned).await;
            warned = warnings;
            if self.write(desired, &current, &mut confirmed).await {
                failures = 0;
            } else {
                failures = failures.saturating_add(1);
                tokio::time::sleep(backoff(failures, Duration::from_millis(250), Duration::from_secs(60))).await;
                self.standing.wake.notify_one();
            }
            tokio::time::sleep(spent * ROUND_SPACING).await;
        }
    }

    /// True while the first pass of reconciles still makes progress: fewer
    /// XBackends left to judge than FIRST_PASS_STALL ago.
    fn first_pass_goes_on(&self, progress: &mut Option<(usize, Instant)>) -> bool {
        let pending = self.state.egress_pending();
        if pending == 0 {
            return false;
        }
        let (fewest, since) = progress.get_or_insert((pending, Instant::now()));
        if pending < *fewest {
            (*fewest, *since) = (pending, Instant::now());
        }
        since.elapsed() < FIRST_PASS_STALL
    }

    /// Applies what differs and deletes ours that should not stand; false
    /// when a call failed (the next round tries again).
    async fn write(&self, desired: &Policies, current: &Policies, confirmed: &mut Confirmed) -> bool {
        let mut ok = true;
        confirmed.retain(|key, _| desired.contains_key(key));
        for (key, object) in desired {
            let Some(standing) = current.get(key) else {
                ok &= self.apply(key, object).await;
                continue;
            };
            let seen = confirmed.get(key).is_some_and(|(d, c)| Arc::ptr_eq(d, object) && Arc::ptr_eq(c, standing));
            if seen || egress::stands(object, standing) {
                confirmed.insert(key.clone(), (object.clone(), standing.clone()));
                continue;
            }
            ok &= self.apply(key, object).await;
        }
        for key in current.keys() {
            if desired.contains_key(key) {
                continue;
            }
            if !self.leadership.may_write() {
                return false;
            }
            let api: Api<NetworkPolicy> = Api::namespaced(self.client.clone(), &key.namespace);
            // Only the object we saw: one someone re-created meanwhile is theirs to explain.
            let uid = self.standing.uids().get(key).filter(|uid| !uid.is_empty()).cloned();
            let params = DeleteParams {
                preconditions: uid.map(|uid| kube::api::Preconditions { uid: Some(uid), resource_version: None }),
                ..DeleteParams::default()
            };
            let call = async { api.delete(&key.name, &params).await.map(|_| ()) };
            ok &= self.bounded(key, "delete", call).await;
        }
        ok
    }

    /// One server-side apply; false when it failed or this replica may not write.
    async fn apply(&self, key: &ObjectRef, object: &Policy) -> bool {
        if !self.leadership.may_write() {
            return false;
        }
        let api: Api<NetworkPolicy> = Api::namespaced(self.client.clone(), &key.namespace);
        let params = PatchParams::apply(MANAGER).force();
        let body = Patch::Apply(object.to_value());
        self.bounded(key, "apply", api.patch(&key.name, &params, &body)).await
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

    /// What to warn each Gateway about: another NetworkPolicy that lets its
    /// data plane reach more than ours (`egress::widens`), or a data plane in
    /// a namespace we may not write to. Sets the widened-Gateways gauge.
    fn warnings(&self, gateways: &[(ObjectRef, String, String)], decision: &egress::Decision) -> Warnings {
        let others: Vec<(ObjectRef, Value)> =
            self.standing.others().iter().map(|(key, p)| (key.clone(), p.to_value())).collect();
        let mut now = Warnings::new();
        // With no other policy there is nothing to compare ours with (and no need to parse them).
        for (gateway, _, _) in gateways.iter().take_while(|_| !others.is_empty()) {
            let is_ours = |p: &&Arc<Policy>| {
                p.metadata["labels"][OWNED_LABEL] == *gateway.name
                    && p.metadata["labels"][egress::OWNED_NAMESPACE_LABEL] == *gateway.namespace
            };
            let Some(policy) = decision.policies.values().find(is_ours) else { continue };
            let policy = policy.to_value();
            for (key, other) in &others {
                if let Some(message) = egress::widens(&policy, other) {
                    now.insert((gateway.clone(), key.to_string()), ("EgressPolicyWidened", message));
                }
            }
        }
        let widened: BTreeSet<&ObjectRef> = now.keys().map(|(gw, _)| gw).collect();
        self.metrics.egress_widened_gateways.set(widened.len() as i64);
        for (gateway, namespace) in &decision.unwritable {
            let message = format!(
                "This Gateway's data plane runs in namespace {namespace}, where xbackend-controller may not write NetworkPolicies (--egress-namespace): its egress is not restricted."
            );
            now.insert((gateway.clone(), format!("namespace {namespace}")), ("EgressPolicyNotWritten", message));
        }
        now
    }

    /// A Warning Event on the Gateway for each warning not given in the last
    /// round (once per warning while it lasts).
    async fn warn(&self, gateways: &[(ObjectRef, String, String)], warnings: &Warnings, warned: &Warnings) {
        for ((gateway, about), (reason, message)) in warnings {
            if warned.get(&(gateway.clone(), about.clone())) == Some(&(*reason, message.clone())) {
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
                reason: (*reason).into(),
                note: Some(message.clone()),
                action: "Enforce".into(),
                secondary: None,
            };
            match tokio::time::timeout(API_TIMEOUT, self.recorder.publish(&event, &reference)).await {
                Ok(Ok(())) => warn!(gateway = %gateway, about, reason, "{message}"),
                Ok(Err(e)) => warn!(error = %e, "could not record Event"),
                Err(_) => warn!("recording an Event timed out"),
            }
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::policies;
    use crate::index::Index;
    use crate::runtime::state::Synced;

    fn read_back(policy: &Policy, uid: &str) -> NetworkPolicy {
        let mut object: NetworkPolicy = serde_json::from_value(policy.to_value()).expect("a NetworkPolicy");
        object.metadata.uid = Some(uid.into());
        object.metadata.resource_version = Some("7".into());
        object
    }

    /// Our write's echo and a re-list each keep the one copy of a policy that
    /// stands as decided; an edit is a copy of its own; the uid is kept apart
    /// for deletes.
    #[test]
    fn a_policy_read_back_unchanged_is_kept_once() {
        let standing = Standing::new();
        let watch = PolicyWatch::new(standing.clone(), true, None);
        let state = State::new(Index::new("ctl"), Arc::new(Metrics::default()), Synced::new([]));
        let gateway = ObjectRef::new("infra", "gw");
        let built = policies(&gateway, "ours", &[], &Config::default()).remove(0);
        let decided = Arc::new(Policy::from_value(&built));
        let key = ObjectRef::new("infra", "xbackend-egress-gw");
        standing.decided().insert(key.clone(), decided.clone());

        watch.apply(&state, key.clone(), &read_back(&decided, "u-1")).unwrap();
        assert!(Arc::ptr_eq(&standing.lock()[&key], &decided), "the echo is the decided copy");
        assert_eq!(standing.uids()[&key], "u-1");
        standing.decided().clear();
        watch.apply(&state, key.clone(), &read_back(&decided, "u-1")).unwrap();
        assert!(Arc::ptr_eq(&standing.lock()[&key], &decided), "a re-list keeps what stands");

        let mut edited = read_back(&decided, "u-1");
        edited.metadata.labels.get_or_insert_default().insert("team".into(), "x".into());
        watch.apply(&state, key.clone(), &edited).unwrap();
        let now = standing.lock()[&key].clone();
        assert!(!Arc::ptr_eq(&now, &decided));
        assert_eq!(now.metadata["labels"]["team"], "x");

        watch.delete(&state, &key);
        assert!(standing.lock().is_empty() && standing.uids().is_empty());
    }
}
