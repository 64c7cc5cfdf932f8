//! Decides what should stand (`egress::Decisions` over `State::egress_demand`,
//! with the hold-down it owns), publishes it to the `Plan`, and queues for
//! the writer each object whose decided copy changed. One task; a round's
//! CPU work runs on a blocking thread, and rounds are spaced by their cost.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use kube::runtime::events::Recorder;
use tokio::time::Instant;
use tracing::{error, info};

use super::standing::{Plan, Standing};
use super::warnings::{self, Warnings};
use crate::dns::Found;
use crate::egress::{Config, Decisions, Dns, DnsPeers, Engine, Hold, Policies};
use crate::model::ObjectRef;
use crate::policy::Policy;
use crate::reach::{self, Refusal};
use crate::runtime::dns_check::DnsCheck;
use crate::runtime::leader::Leadership;
use crate::runtime::metrics::{Metrics, TaskLabel};
use crate::runtime::queue::Queue;
use crate::runtime::state::State;
use crate::runtime::tasks::panic_message;

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

/// Everything the decider needs.
pub struct Decider {
    pub engine: Arc<dyn Engine>,
    pub standing: Arc<Standing>,
    pub plan: Arc<Plan>,
    /// The writer's queue.
    pub queue: Arc<Queue>,
    pub state: Arc<State>,
    pub leadership: Leadership,
    pub metrics: Arc<Metrics>,
    pub config: Arc<Config>,
    pub hold: Hold,
    /// Judges route targets as XBackends are judged; held addresses now in a
    /// denied range leave at once.
    pub policy: Arc<Policy>,
    /// The DNS check, for ExternalName Services' names.
    pub dns: Option<Arc<DnsCheck>>,
    /// `--dns-service`: its key and the servers its EndpointSlices name.
    pub dns_service: Option<(ObjectRef, Arc<Found>)>,
    /// Warnings on Gateways and routes whose egress does not hold.
    pub recorder: Recorder,
}

/// What the decider keeps between rounds.
struct Memory {
    decisions: Decisions,
    last_rebuild: Instant,
    /// Before the first decision: the fewest XBackends left to judge, and since when.
    first_pass: Option<(usize, Instant)>,
    warned: Warnings,
}

impl Memory {
    fn new() -> Memory {
        Memory {
            decisions: Decisions::default(),
            last_rebuild: Instant::now(),
            first_pass: None,
            warned: Warnings::new(),
        }
    }
}

impl Decider {
    /// Decides until the process ends.
    pub async fn run(self: Arc<Self>) {
        let mut ready = self.state.synced.subscribe();
        if ready.wait_for(|r| *r).await.is_err() {
            return;
        }
        let mut leading = self.leadership.changes();
        let mut memory = Memory::new();
        loop {
            tokio::select! {
                _ = self.state.egress_changed.notified() => {}
                _ = self.standing.others_changed.notified() => {}
                _ = tokio::time::sleep(HOLD_TICK) => {}
                changed = leading.changed() => if changed.is_err() { return },
            }
            tokio::time::sleep(COALESCE).await;
            if !self.leadership.may_write() {
                // Another leader may write meanwhile: start again from what stands.
                if self.plan.replace(None).is_some() {
                    memory = Memory::new();
                }
                continue;
            }
            if !self.plan.decided() && self.first_pass_goes_on(&mut memory.first_pass) {
                // Look again soon: the pass may finish without another change.
                self.state.egress_changed.notify_one();
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            let started = Instant::now();
            let Some(next) = self.round(std::mem::replace(&mut memory, Memory::new())).await else { continue };
            memory = next;
            tokio::time::sleep(started.elapsed() * ROUND_SPACING).await;
        }
    }

    /// One decision, published and queued; None when it panicked (counted,
    /// and the next round starts again from what stands).
    async fn round(&self, mut memory: Memory) -> Option<Memory> {
        // Held addresses expire by time alone: every Gateway is built again now and then.
        let rebuild = memory.last_rebuild.elapsed() >= HOLD_TICK;
        if rebuild {
            memory.last_rebuild = Instant::now();
        }
        // Tens of milliseconds of CPU at 10,000 XBackends: on a blocking
        // thread, so the reconciles and watches queued behind this task on
        // its worker are not held up for that long.
        let work = {
            let (state, standing, engine) = (self.state.clone(), self.standing.clone(), self.engine.clone());
            let (config, policy, hold, dns) = (self.config.clone(), self.policy.clone(), self.hold, self.dns.clone());
            let dns_service = self.dns_service.clone();
            move || {
                let (mut demand, targets, namespaces) = state.egress_demand();
                // What routes name, judged outside the lock; ExternalName answers from the DNS check.
                let answer = |hostname: &str| dns.as_ref().and_then(|dns| dns.cached(hostname));
                let mut refused: Vec<Refusal> = Vec::new();
                if config.cluster.is_none_or(|mode| mode == crate::egress::ClusterMode::Routes) {
                    for (gateway, found) in targets {
                        let judged = reach::judge(&found, &policy, &*namespaces, &answer);
                        refused.extend(judged.refused);
                        demand.reach.insert(gateway, judged.allowed);
                    }
                }
                demand.dns = dns_service.and_then(|(service, found)| dns_at(&state, &service, &found));
                let current = standing.ours().clone();
                let denied = |ip: IpAddr| crate::addresses::denied(ip, &policy.addresses).is_some();
                let settings = crate::egress::Round {
                    now: unix_now(),
                    hold,
                    config: &config,
                    engine: &*engine,
                    denied: &denied,
                    rebuild,
                };
                let decision = memory.decisions.decide(&demand, &current, &settings);
                let uids: BTreeMap<ObjectRef, String> = demand.gateways.into_iter().map(|g| (g.key, g.uid)).collect();
                (memory, decision, current, uids, refused)
            }
        };
        let (mut memory, decision, current, uids, refused) = match tokio::task::spawn_blocking(work).await {
            Ok(done) => done,
            Err(e) => {
                self.metrics.panics.get_or_create(&TaskLabel::of("egress-decision")).inc();
                let why = if e.is_panic() { panic_message(&*e.into_panic()) } else { e.to_string() };
                error!(panic = why, "the egress decision panicked; deciding again from what stands");
                self.plan.replace(None);
                return None;
            }
        };
        let desired = &decision.policies;
        let before = self.plan.replace(Some(desired.clone()));
        self.queue.extend(changed(before.as_ref(), desired, &current));
        self.metrics.egress_hold_evictions.inc_by(decision.evicted as u64);
        self.metrics.egress_policy_objects.set(desired.len() as i64);
        self.metrics.egress_addresses.set(decision.addresses.values().sum::<usize>() as i64);
        self.metrics.egress_gateways.set(decision.addresses.len() as i64);
        let most = decision.addresses.values().max().copied().unwrap_or(0);
        self.metrics.egress_addresses_max_per_gateway.set(most as i64);
        if before.is_none() {
            info!(objects = desired.len(), kind = self.engine.kind().kind, "egress policies decided");
        }
        let (warnings, widened) = warnings::find(&*self.engine, &decision, &self.standing.others(), &refused);
        self.metrics.egress_widened_gateways.set(widened as i64);
        warnings::publish(&self.recorder, &uids, &warnings, &memory.warned).await;
        memory.warned = warnings;
        Some(memory)
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
}

/// The objects the writer must look at: after the first decision, every one
/// decided or standing; after that, those whose decided copy changed or that
/// are no longer decided.
fn changed(before: Option<&Policies>, desired: &Policies, current: &Policies) -> Vec<ObjectRef> {
    let Some(before) = before else {
        return desired.keys().chain(current.keys()).cloned().collect();
    };
    let moved = desired.iter().filter(|(key, p)| before.get(*key).is_none_or(|b| !Arc::ptr_eq(b, p)));
    let gone = before.keys().filter(|key| !desired.contains_key(*key));
    moved.map(|(key, _)| key).chain(gone).cloned().collect()
}

/// Where DNS answers with `--dns-service`: the Service's Pods (its
/// selector) on the port its EndpointSlices give (the first server's).
fn dns_at(state: &State, service: &ObjectRef, found: &Found) -> Option<Dns> {
    let labels = state.service_selector(service)?;
    let port = found.servers().first().map_or(53, |server| server.port());
    Some(Dns { peers: DnsPeers::Pods { namespace: service.namespace.to_string(), labels }, port })
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::PolicyObject;

    #[test]
    fn only_objects_whose_decided_copy_moved_are_queued() {
        let kind = crate::egress::NetworkPolicy.kind();
        use crate::egress::Engine;
        let object = |name: &str| {
            let value = serde_json::json!({"metadata": {"name": name, "namespace": "infra"}, "spec": {}});
            Arc::new(PolicyObject::from_value(kind, &value))
        };
        let (a, b, c, stray) = (object("a"), object("b"), object("c"), object("stray"));
        let map =
            |items: &[&Arc<PolicyObject>]| -> Policies { items.iter().map(|p| (p.key(), (*p).clone())).collect() };
        let first = changed(None, &map(&[&a, &b]), &map(&[&stray]));
        assert_eq!(first.len(), 3, "the first decision: every object decided or standing");
        let b2 = object("b");
        let next = changed(Some(&map(&[&a, &b])), &map(&[&a, &b2, &c]), &map(&[&a, &b]));
        assert_eq!(next, [b.key(), c.key()], "a is the same copy: not queued");
        let gone = changed(Some(&map(&[&a, &b])), &map(&[&a]), &Policies::new());
        assert_eq!(gone, [b.key()]);
    }
}
