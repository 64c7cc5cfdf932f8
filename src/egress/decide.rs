//! The decision (docs/design.md §6b), the same for every engine: what each
//! judged Gateway's data plane may reach, addresses through the hold-down,
//! rules of XBackends not judged yet kept as they stand, and each Gateway
//! built again only when what it was built from changed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use super::{Allowed, Config, Destination, Engine, Held, Hold, Policies, PolicyObject, Rules};
use crate::model::ObjectRef;

/// What the policies of a cluster depend on: every judged Gateway (with
/// its uid, for the owner reference, and its class), the Accepted XBackends
/// behind each (addresses as last answered; empty when no answer), and the
/// XBackends not judged yet, whose rules are kept as they stand.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Demand {
    /// Each judged Gateway with its uid and class name.
    pub gateways: Vec<(ObjectRef, String, String)>,
    pub behind: BTreeMap<ObjectRef, Vec<Allowed>>,
    pub unknown: BTreeSet<ObjectRef>,
}

/// What one decision gives: the policies that should stand, how many held
/// addresses the cap evicted, the Gateways whose data plane runs in a
/// namespace the controller may not write to (`Config::namespaces`), with
/// that namespace, and how many addresses each Gateway's policies allow.
#[derive(Debug, Default)]
pub struct Decision {
    pub policies: Policies,
    pub evicted: usize,
    pub unwritable: Vec<(ObjectRef, String)>,
    pub addresses: BTreeMap<ObjectRef, usize>,
}

/// The policy writer's memory between decisions: the hold-down, and each
/// Gateway's policies with the inputs they were built from, so a decision
/// builds only the Gateways whose inputs changed.
#[derive(Debug, Default)]
pub struct Decisions {
    pub held: Held,
    built: BTreeMap<ObjectRef, Built>,
}

#[derive(Debug)]
struct Built {
    /// A digest of what they were built from (`Demand`): uid, class, the
    /// XBackends behind it (addresses as answered) and those kept. Keeping
    /// the inputs themselves would cost another copy of every rule; two
    /// different inputs with the same 64-bit digest (about one in 2^64) would
    /// keep stale policies until the next full rebuild, at most `HOLD_TICK`.
    digest: u64,
    policies: Vec<(ObjectRef, Arc<PolicyObject>)>,
    /// Addresses (and resolver ranges) its policies allow.
    addresses: usize,
}

type Given = (String, String, Vec<Allowed>, Vec<Allowed>);

fn digest(from: &Given) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    from.hash(&mut hasher);
    hasher.finish()
}

/// The inputs of one decision besides the demand and what stands.
pub struct Round<'a> {
    pub now: i64,
    pub hold: Hold,
    pub config: &'a Config,
    pub engine: &'a dyn Engine,
    /// Held addresses now in a denied range leave at once.
    pub denied: &'a dyn Fn(IpAddr) -> bool,
    /// Build every Gateway, changed or not (held addresses expire by time alone).
    pub rebuild: bool,
}

impl Decisions {
    /// The policies that should stand, given those that do (`current`, ours
    /// by label). Addresses go through the hold-down; an XBackend in
    /// `demand.unknown` keeps the rule `current` has for it, so a restart or
    /// a failed reconcile never cuts a destination. A Gateway whose inputs
    /// are those of the last decision keeps its policies, unless `rebuild`.
    pub fn decide(&mut self, demand: &Demand, current: &Policies, settings: &Round) -> Decision {
        let engine = settings.engine;
        let held = &mut self.held;
        // The first time, what stands is held as if seen now: a restart extends
        // a hold, never cuts one.
        if !std::mem::replace(&mut held.seeded, true) {
            for (_, allowed) in current.values().flat_map(|p| engine.read_rules(&p.to_value())) {
                if let Destination::Addresses { hostname, addresses } = allowed.destination {
                    held.seed(&hostname, addresses.iter().copied(), settings.now);
                }
            }
        }
        // Only while some XBackend is not judged yet: read_rules parses every rule.
        let mut kept: BTreeMap<ObjectRef, Vec<Allowed>> = BTreeMap::new();
        if !demand.unknown.is_empty() {
            for policy in current.values() {
                let Some(gateway) = policy.gateway() else { continue };
                for (backend, allowed) in engine.read_rules(&policy.to_value()) {
                    if demand.unknown.contains(&backend) {
                        kept.entry(gateway.clone()).or_default().push(allowed);
                    }
                }
            }
        }
        // Hostnames still in use: held ones of no use any more are forgotten.
        let mut live: BTreeSet<String> = BTreeSet::new();
        let mut decision = Decision::default();
        let mut built = BTreeMap::new();
        for (gateway, uid, class) in &demand.gateways {
            let given = demand.behind.get(gateway).cloned().unwrap_or_default();
            let kept = kept.remove(gateway).unwrap_or_default();
            for a in given.iter().chain(&kept) {
                if let Destination::Addresses { hostname, .. } = &a.destination {
                    live.insert(hostname.to_string());
                }
            }
            let from = (uid.clone(), class.clone(), given, kept);
            let digest = digest(&from);
            let done = match self.built.remove(gateway) {
                Some(done) if !settings.rebuild && done.digest == digest => done,
                before => {
                    let before = before.map(|b| b.policies).unwrap_or_default();
                    let known = Known { before: &before, current };
                    let (policies, addresses, evicted) = build(gateway, &from, known, held, settings);
                    decision.evicted += evicted;
                    Built { digest, policies, addresses }
                }
            };
            let mut written = false;
            for (key, policy) in &done.policies {
                match &settings.config.namespaces {
                    Some(writable) if engine.kind().namespaced && !writable.contains(&*key.namespace) => {
                        decision.unwritable.push((gateway.clone(), key.namespace.to_string()));
                    }
                    _ => {
                        written = true;
                        decision.policies.insert(key.clone(), policy.clone());
                    }
                }
            }
            if written {
                decision.addresses.insert(gateway.clone(), done.addresses);
            }
            built.insert(gateway.clone(), done);
        }
        decision.unwritable.dedup();
        self.built = built;
        for hostname in held.hostnames() {
            if !live.contains(&hostname) {
                held.forget(&hostname);
            }
        }
        decision
    }
}

/// Copies of policies already held: the Gateway's last build, and what stands.
#[derive(Clone, Copy)]
struct Known<'a> {
    before: &'a [(ObjectRef, Arc<PolicyObject>)],
    current: &'a Policies,
}

impl Known<'_> {
    fn find(&self, key: &ObjectRef, policy: &PolicyObject) -> Option<Arc<PolicyObject>> {
        let before = self.before.iter().find(|(k, _)| k == key).map(|(_, p)| p);
        before.into_iter().chain(self.current.get(key)).find(|p| ***p == *policy).cloned()
    }
}

/// One Gateway's policies from what `Decisions` keeps of it: the answered
/// addresses through the hold-down and the kept rules as they stand,
/// rendered by the engine; with the count of addresses allowed and of those
/// the cap evicted. An object built the same as one `known` is that one: a
/// rebuild that changes nothing, or a first decision after a restart, holds
/// one copy, and the writer sees the pointer it confirmed.
fn build(
    gateway: &ObjectRef,
    (uid, class, given, kept): &Given,
    known: Known,
    held: &mut Held,
    settings: &Round,
) -> (Vec<(ObjectRef, Arc<PolicyObject>)>, usize, usize) {
    let (now, hold) = (settings.now, settings.hold);
    let mut evicted = 0;
    let mut allowed = given.clone();
    for a in &mut allowed {
        if let Destination::Addresses { hostname, addresses } = &mut a.destination {
            let now_held = if addresses.is_empty() {
                held.held(hostname, now, hold)
            } else {
                let (now_held, cap) = held.observe(hostname, addresses, now, hold, settings.denied);
                evicted += cap;
                now_held
            };
            *addresses = now_held.into_iter().collect();
        }
    }
    allowed.extend(kept.iter().cloned());
    let dns_ranges = match &settings.config.dns {
        super::DnsPeers::Cidrs(cidrs) => cidrs.len(),
        super::DnsPeers::Pods { .. } => 0,
    };
    let addresses = dns_ranges
        + (allowed.iter())
            .map(|a| match &a.destination {
                Destination::Addresses { addresses, .. } => addresses.len(),
                Destination::Pods { .. } => 0,
            })
            .sum::<usize>();
    let rules = Rules::new(gateway, uid, class, &allowed, settings.config);
    let policies = settings.engine.render(rules).map(|object| {
        let policy = PolicyObject::from_value(settings.engine.kind(), &object);
        let key = policy.key();
        let known = known.find(&key, &policy);
        (key, known.unwrap_or_else(|| Arc::new(policy)))
    });
    (policies.collect(), addresses, evicted)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testing::*;
    use super::super::{NetworkPolicy, stands};
    use super::*;

    fn demand(behind: Vec<Allowed>, unknown: &[&str]) -> Demand {
        Demand {
            gateways: vec![(gw(), "uid-gw".into(), "ours".into())],
            behind: BTreeMap::from([(gw(), behind)]),
            unknown: unknown.iter().map(|n| ObjectRef::new("app", *n)).collect(),
        }
    }

    fn settings(now: i64, config: &Config) -> Round<'_> {
        Round {
            now,
            hold: Hold::default(),
            config,
            engine: &NetworkPolicy,
            denied: &|ip: IpAddr| ip.is_loopback(),
            rebuild: false,
        }
    }

    fn run(demand: &Demand, current: &Policies, decisions: &mut Decisions, now: i64) -> Policies {
        decisions.decide(demand, current, &settings(now, &Config::default())).policies
    }

    #[test]
    fn a_restart_keeps_every_rule_until_its_xbackend_is_judged() {
        let first = demand(vec![external("api", &["192.0.2.10"]), external("b", &["192.0.2.11"])], &[]);
        let current = run(&first, &BTreeMap::new(), &mut Decisions::default(), 0);
        assert_eq!(current.len(), 1);
        let policy = current.values().next().unwrap();
        assert_eq!(policy.metadata["ownerReferences"][0]["uid"], "uid-gw");
        // After a restart nothing is judged yet: the same objects, nothing to write.
        let mut held = Decisions::default();
        let restarted = run(&demand(vec![], &["api", "b"]), &current, &mut held, 10);
        assert!(restarted.iter().all(|(k, p)| stands(p, &current[k])), "{restarted:#?}");
        assert!(restarted.iter().all(|(k, p)| Arc::ptr_eq(p, &current[k])), "what stands is the one copy");
        // Judged again, with a rotated answer: the old address is held.
        let again = run(
            &demand(vec![external("api", &["192.0.2.20"]), external("b", &["192.0.2.11"])], &[]),
            &current,
            &mut held,
            20,
        );
        let rule = &again.values().next().unwrap().spec()["egress"][2];
        assert_eq!(rule["to"].as_array().unwrap().len(), 2, "{rule}");
    }

    /// A decision builds only the Gateways whose inputs changed; `rebuild`
    /// builds every one, which is what lets a held address expire.
    #[test]
    fn an_unchanged_gateway_keeps_its_policies_until_a_rebuild() {
        let other = ObjectRef::new("infra", "gw2");
        let two = |api: &str| Demand {
            gateways: vec![(gw(), "uid-gw".into(), "ours".into()), (other.clone(), "uid-2".into(), "ours".into())],
            behind: BTreeMap::from([
                (gw(), vec![external("api", &[api])]),
                (other.clone(), vec![external("b", &["192.0.2.99"])]),
            ]),
            unknown: BTreeSet::new(),
        };
        let config = Config::default();
        let hold = Hold::default();
        let at = |now: i64, rebuild: bool| Round { rebuild, ..settings(now, &config) };
        let mut decisions = Decisions::default();
        let first = decisions.decide(&two("192.0.2.1"), &BTreeMap::new(), &at(0, false)).policies;
        let second = decisions.decide(&two("192.0.2.2"), &first, &at(10, false));
        assert_eq!(second.addresses, BTreeMap::from([(gw(), 2), (other.clone(), 1)]), "addresses per Gateway");
        let second = second.policies;
        let (mine, theirs) =
            (ObjectRef::new("infra", "xbackend-egress-gw"), ObjectRef::new("infra", "xbackend-egress-gw2"));
        assert!(Arc::ptr_eq(&first[&theirs], &second[&theirs]), "gw2's inputs did not change: not built again");
        assert!(!Arc::ptr_eq(&first[&mine], &second[&mine]));
        let addresses = |p: &Policies| p[&mine].spec()["egress"][2]["to"].as_array().unwrap().len();
        assert_eq!(addresses(&second), 2, "the rotated-out address is held");
        // An hour later the same inputs keep what was built; a rebuild lets the hold expire.
        let later = 10 + hold.seconds + 1;
        let kept = decisions.decide(&two("192.0.2.2"), &second, &at(later, false)).policies;
        assert_eq!(addresses(&kept), 2);
        let rebuilt = decisions.decide(&two("192.0.2.2"), &kept, &at(later, true)).policies;
        assert_eq!(addresses(&rebuilt), 1);
        assert_eq!(rebuilt[&theirs], first[&theirs], "same inputs, same bytes");
        assert!(Arc::ptr_eq(&rebuilt[&theirs], &first[&theirs]), "rebuilt the same: the one copy kept");
    }

    /// With --egress-namespace, a data plane elsewhere gets no policy; the
    /// decision names the Gateway and the namespace, for a warning.
    #[test]
    fn only_writable_namespaces_get_policies() {
        let elsewhere = ObjectRef::new("team-b", "gw");
        let demand = Demand {
            gateways: vec![(gw(), "u1".into(), "ours".into()), (elsewhere.clone(), "u2".into(), "ours".into())],
            ..Demand::default()
        };
        let config = Config { namespaces: Some(BTreeSet::from(["infra".to_string()])), ..Config::default() };
        let decision = Decisions::default().decide(&demand, &BTreeMap::new(), &settings(0, &config));
        assert_eq!(decision.policies.keys().collect::<Vec<_>>(), [&ObjectRef::new("infra", "xbackend-egress-gw")]);
        assert_eq!(decision.unwritable, [(elsewhere, "team-b".to_string())]);
        assert_eq!(decision.addresses, BTreeMap::from([(gw(), 0)]), "only Gateways with a policy written");
    }

    #[test]
    fn a_rejected_or_deleted_xbackend_leaves_at_once() {
        let mut held = Decisions::default();
        let current = run(&demand(vec![external("api", &["192.0.2.10"])], &[]), &BTreeMap::new(), &mut held, 0);
        let gone = run(&demand(vec![], &[]), &current, &mut held, 1);
        let egress = gone.values().next().unwrap().spec()["egress"].as_array().unwrap().clone();
        assert_eq!(egress.len(), 2, "DNS and cluster only");
        assert!(held.held.hostnames().is_empty(), "its hold is forgotten");
        // A Gateway no longer judged has no policy at all (the writer deletes it).
        let none = run(&Demand::default(), &current, &mut held, 2);
        assert!(none.is_empty());
    }

    /// Envoy Gateway runs every data plane in its own namespace: no owner
    /// reference can cross namespaces, so the writer alone deletes it.
    #[test]
    fn no_owner_across_namespaces() {
        let envoy: super::super::DataPlane =
            "envoy-gateway-system:gateway.envoyproxy.io/owning-gateway-name={name}".parse().unwrap();
        let config = Config { data_planes: BTreeMap::from([("eg".to_string(), envoy)]), ..Config::default() };
        let demand = Demand { gateways: vec![(gw(), "uid".into(), "eg".into())], ..Demand::default() };
        let decision = Decisions::default().decide(&demand, &BTreeMap::new(), &settings(0, &config));
        let policy = decision.policies.values().next().unwrap();
        assert!(policy.metadata.get("ownerReferences").is_none(), "no owner across namespaces");
        assert_eq!(policy.gateway(), Some(gw()));
        assert_eq!(policy.to_value()["metadata"]["namespace"], json!("envoy-gateway-system"));
    }
}
