//! The decision (docs/design.md §6b), the same for every engine: what each
//! judged Gateway's data plane may reach (its XBackends, what its routes
//! name, what it needs itself, DNS), addresses through the hold-down, rules
//! of XBackends not judged yet kept as they stand, and each Gateway built
//! again only when what it was built from changed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use super::presets::{self, Needs};
use super::{
    Allowed, ClusterMode, Config, Destination, Dns, Engine, Held, Hold, Policies, PolicyObject, Rules, Source,
};
use crate::model::ObjectRef;

/// A judged Gateway as the decision needs it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GatewayInfo {
    pub key: ObjectRef,
    /// For the owner reference (empty from files).
    pub uid: String,
    pub class: String,
    /// Its class's controllerName (empty when the class is not known): the preset.
    pub controller: String,
}

/// What the policies of a cluster depend on: every judged Gateway, the
/// Accepted XBackends behind each (addresses as last answered; empty when no
/// answer), what each one's routes let it reach in the cluster (judged), the
/// XBackends not judged yet, whose rules are kept as they stand, and where
/// DNS answers when the DNS Service says (else the flags').
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Demand {
    pub gateways: Vec<GatewayInfo>,
    pub behind: BTreeMap<ObjectRef, Vec<Allowed>>,
    pub reach: BTreeMap<ObjectRef, Vec<Allowed>>,
    pub unknown: BTreeSet<ObjectRef>,
    pub dns: Option<Dns>,
}

/// What one decision gives: the policies that should stand, how many held
/// addresses the cap evicted, the Gateways whose data plane runs in a
/// namespace the controller may not write to (`Config::namespaces`), with
/// that namespace, how many addresses each Gateway's policies allow, and
/// the Gateways to warn about: open to the whole cluster because their class
/// has neither preset nor `--egress-needs` (`open`), or held to what their
/// routes name with nothing allowed for their control plane (`cut_off`).
#[derive(Debug, Default)]
pub struct Decision {
    pub policies: Policies,
    pub evicted: usize,
    pub unwritable: Vec<(ObjectRef, String)>,
    pub addresses: BTreeMap<ObjectRef, usize>,
    pub open: Vec<GatewayInfo>,
    pub cut_off: Vec<(GatewayInfo, ClusterMode)>,
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
    /// A digest of what they were built from (`Given`). Keeping the inputs
    /// themselves would cost another copy of every rule; two different inputs
    /// with the same 64-bit digest (about one in 2^64) would keep stale
    /// policies until the next full rebuild, at most `HOLD_TICK`.
    digest: u64,
    policies: Vec<(ObjectRef, Arc<PolicyObject>)>,
    /// Addresses (and resolver ranges) its policies allow.
    addresses: usize,
}

/// Everything one Gateway's policies are built from.
#[derive(Hash)]
struct Given {
    gateway: GatewayInfo,
    mode: ClusterMode,
    needs: Needs,
    dns: Dns,
    /// Its XBackends and route targets (addresses as answered), and the rules kept.
    given: Vec<Allowed>,
    kept: Vec<Allowed>,
}

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

/// A Gateway's cluster mode and needs: `--egress-needs` for its class, else
/// its controller's preset; `--egress-cluster`, else `routes` where one of
/// those says what the data plane needs and `all` where nothing does.
/// Returns whether something said what it needs.
fn mode_and_needs(config: &Config, gateway: &GatewayInfo) -> (ClusterMode, Needs, bool) {
    let preset = presets::preset(&gateway.controller);
    let configured = config.needs.get(&gateway.class);
    let known = preset.is_some() || configured.is_some();
    let mut needs = preset.unwrap_or_default();
    if let Some(rules) = configured {
        needs.rules = rules.clone();
    }
    let mode = config.cluster.unwrap_or(if known { ClusterMode::Routes } else { ClusterMode::All });
    (mode, needs, known)
}

impl Decisions {
    /// The policies that should stand, given those that do (`current`, ours
    /// by label). Addresses go through the hold-down; an XBackend in
    /// `demand.unknown` keeps the rule `current` has for it, so a restart or
    /// a failed reconcile never cuts a destination. A Gateway whose inputs
    /// are those of the last decision keeps its policies, unless `rebuild`.
    pub fn decide(&mut self, demand: &Demand, current: &Policies, round: &Round) -> Decision {
        let engine = round.engine;
        let held = &mut self.held;
        // The first time, what stands is held as if seen now: a restart extends
        // a hold, never cuts one (an ExternalName's answers as an XBackend's).
        if !std::mem::replace(&mut held.seeded, true) {
            for allowed in current.values().flat_map(|p| engine.read_rules(&p.to_value())) {
                if let Destination::Addresses { hostname, addresses } = allowed.destination {
                    held.seed(&hostname, addresses.iter().copied(), round.now);
                }
            }
        }
        // Only while some XBackend is not judged yet: read_rules parses every rule.
        let mut kept: BTreeMap<ObjectRef, Vec<Allowed>> = BTreeMap::new();
        if !demand.unknown.is_empty() {
            for policy in current.values() {
                let Some(gateway) = policy.gateway() else { continue };
                for allowed in engine.read_rules(&policy.to_value()) {
                    if matches!(&allowed.source, Source::XBackend(key) if demand.unknown.contains(key)) {
                        kept.entry(gateway.clone()).or_default().push(allowed);
                    }
                }
            }
        }
        // Hostnames still in use: held ones of no use any more are forgotten.
        let mut live: BTreeSet<String> = BTreeSet::new();
        let mut decision = Decision::default();
        let mut built = BTreeMap::new();
        for gateway in &demand.gateways {
            let key = &gateway.key;
            let (mode, needs, known) = mode_and_needs(round.config, gateway);
            if !known {
                match round.config.cluster {
                    None => decision.open.push(gateway.clone()),
                    Some(ClusterMode::All) => {}
                    Some(mode) => decision.cut_off.push((gateway.clone(), mode)),
                }
            }
            let mut given = demand.behind.get(key).cloned().unwrap_or_default();
            if mode == ClusterMode::Routes {
                given.extend(demand.reach.get(key).into_iter().flatten().cloned());
            }
            let kept = kept.remove(key).unwrap_or_default();
            for a in given.iter().chain(&kept) {
                if let Destination::Addresses { hostname, .. } = &a.destination {
                    live.insert(hostname.to_string());
                }
            }
            let dns = demand.dns.clone().unwrap_or_else(|| round.config.dns.clone());
            let from = Given { gateway: gateway.clone(), mode, needs, dns, given, kept };
            let digest = digest(&from);
            let done = match self.built.remove(key) {
                Some(done) if !round.rebuild && done.digest == digest => done,
                before => {
                    let before = before.map(|b| b.policies).unwrap_or_default();
                    let known = Known { before: &before, current };
                    let (policies, addresses, evicted) = build(&from, known, held, round);
                    decision.evicted += evicted;
                    Built { digest, policies, addresses }
                }
            };
            let mut written = false;
            for (object, policy) in &done.policies {
                match &round.config.namespaces {
                    Some(writable) if engine.kind().namespaced && !writable.contains(&*object.namespace) => {
                        decision.unwritable.push((key.clone(), object.namespace.to_string()));
                    }
                    _ => {
                        written = true;
                        decision.policies.insert(object.clone(), policy.clone());
                    }
                }
            }
            if written {
                decision.addresses.insert(key.clone(), done.addresses);
            }
            built.insert(key.clone(), done);
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
    from: &Given,
    known: Known,
    held: &mut Held,
    round: &Round,
) -> (Vec<(ObjectRef, Arc<PolicyObject>)>, usize, usize) {
    let (now, hold) = (round.now, round.hold);
    let mut evicted = 0;
    let mut allowed = from.given.clone();
    for a in &mut allowed {
        if let Destination::Addresses { hostname, addresses } = &mut a.destination {
            let now_held = if addresses.is_empty() {
                held.held(hostname, now, hold)
            } else {
                let (now_held, cap) = held.observe(hostname, addresses, now, hold, round.denied);
                evicted += cap;
                now_held
            };
            *addresses = now_held.into_iter().collect();
        }
    }
    allowed.extend(from.kept.iter().cloned());
    let dns_ranges = match &from.dns.peers {
        super::DnsPeers::Cidrs(cidrs) => cidrs.len(),
        super::DnsPeers::Pods { .. } => 0,
    };
    let addresses = dns_ranges
        + (allowed.iter())
            .map(|a| match &a.destination {
                Destination::Addresses { addresses, .. } => addresses.len(),
                Destination::Networks(networks) => networks.len(),
                Destination::Pods { .. } => 0,
            })
            .sum::<usize>();
    let gateway = &from.gateway;
    let mut rules = Rules::new(&gateway.key, &gateway.uid, &gateway.class, &allowed, round.config);
    rules.cluster = from.mode;
    rules.dns = &from.dns;
    rules.needs = from.needs.rules.iter().collect();
    rules.pod_ports = &from.needs.pod_ports;
    let policies = round.engine.render(rules).map(|object| {
        let policy = PolicyObject::from_value(round.engine.kind(), &object);
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

    fn info(key: ObjectRef, uid: &str, class: &str) -> GatewayInfo {
        GatewayInfo { key, uid: uid.into(), class: class.into(), controller: String::new() }
    }

    fn demand(behind: Vec<Allowed>, unknown: &[&str]) -> Demand {
        Demand {
            gateways: vec![info(gw(), "uid-gw", "ours")],
            behind: BTreeMap::from([(gw(), behind)]),
            unknown: unknown.iter().map(|n| ObjectRef::new("app", *n)).collect(),
            ..Demand::default()
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
        assert_eq!(policy.metadata()["ownerReferences"][0]["uid"], "uid-gw");
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
            gateways: vec![info(gw(), "uid-gw", "ours"), info(other.clone(), "uid-2", "ours")],
            behind: BTreeMap::from([
                (gw(), vec![external("api", &[api])]),
                (other.clone(), vec![external("b", &["192.0.2.99"])]),
            ]),
            ..Demand::default()
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
            gateways: vec![info(gw(), "u1", "ours"), info(elsewhere.clone(), "u2", "ours")],
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
        let demand = Demand { gateways: vec![info(gw(), "uid", "eg")], ..Demand::default() };
        let decision = Decisions::default().decide(&demand, &BTreeMap::new(), &settings(0, &config));
        let policy = decision.policies.values().next().unwrap();
        assert!(policy.metadata().get("ownerReferences").is_none(), "no owner across namespaces");
        assert_eq!(policy.gateway(), Some(gw()));
        assert_eq!(policy.to_value()["metadata"]["namespace"], json!("envoy-gateway-system"));
    }

    /// `--egress-cluster` unset: a class with a preset (Istio) or with
    /// `--egress-needs` gets `routes` (what its routes name, its needs); any
    /// other gets `all`, and the decision names it for a warning. Set to
    /// `routes` for a class nothing describes, the decision names it too.
    #[test]
    fn routes_where_the_data_plane_is_known_all_elsewhere_and_both_told() {
        let mut istio = info(ObjectRef::new("infra", "mesh"), "u1", "istio");
        istio.controller = super::super::presets::ISTIO.into();
        let (plain, told) = (
            info(ObjectRef::new("infra", "plain"), "u2", "plain"),
            info(ObjectRef::new("infra", "told"), "u3", "told"),
        );
        let web = service("web", &[("app", "web")], crate::model::PortRef::Number(8080));
        let reach = BTreeMap::from([
            (istio.key.clone(), vec![web.clone()]),
            (plain.key.clone(), vec![web.clone()]),
            (told.key.clone(), vec![web]),
        ]);
        let demand = Demand { gateways: vec![istio.clone(), plain.clone(), told.clone()], reach, ..Demand::default() };
        let (_, extra) = super::super::presets::parse("told=10.0.0.0/24:4317").unwrap();
        let config =
            Config { cluster: None, needs: BTreeMap::from([("told".to_string(), extra)]), ..Config::default() };
        let decision = Decisions::default().decide(&demand, &BTreeMap::new(), &settings(0, &config));
        let egress = |name: &str| {
            decision.policies[&ObjectRef::new("infra", format!("xbackend-egress-{name}"))].spec()["egress"].clone()
        };
        let mesh = egress("mesh");
        assert_eq!(mesh.as_array().unwrap().len(), 3, "DNS, istiod, the Service: {mesh:#}");
        assert_eq!(mesh[1]["ports"], json!([{"protocol": "TCP", "port": 15012}, {"protocol": "TCP", "port": 15008}]));
        assert_eq!(
            mesh[2]["ports"],
            json!([{"protocol": "TCP", "port": 8080}, {"protocol": "TCP", "port": 15008}]),
            "sidecar and ambient"
        );
        let open = egress("plain");
        assert_eq!(open[1], json!({"to": [{"namespaceSelector": {}}]}), "all: the cluster rule");
        assert_eq!(open.as_array().unwrap().len(), 2, "and no route rule (all covers them)");
        let told_rules = egress("told");
        assert_eq!(told_rules[1]["to"][0]["ipBlock"]["cidr"], "10.0.0.0/24", "its own needs");
        assert_eq!(told_rules.as_array().unwrap().len(), 3);
        assert_eq!(decision.open, std::slice::from_ref(&plain), "the open one is named");
        assert!(decision.cut_off.is_empty());
        // Asked for routes everywhere: the class nothing describes is named as cut off.
        let config = Config { cluster: Some(ClusterMode::Routes), ..config };
        let decision = Decisions::default().decide(&demand, &BTreeMap::new(), &settings(0, &config));
        assert!(decision.open.is_empty());
        assert_eq!(decision.cut_off, [(plain, ClusterMode::Routes)]);
    }

    /// An ExternalName Service's answers go through the hold-down like an
    /// XBackend's: a rotated-out address stays, and after a restart the
    /// standing rule is kept until an answer comes.
    #[test]
    fn external_names_are_held_like_xbackend_hostnames() {
        let named = |addresses: &[&str]| Allowed {
            source: Source::Service { service: ObjectRef::new("app", "ext"), via: "HTTPRoute app/r".into() },
            destination: Destination::Addresses {
                hostname: "api.example.org".into(),
                addresses: super::super::address_list(addresses.iter().map(|a| ip(a))),
            },
            port: crate::model::PortRef::Number(443),
            protocols: super::super::Protocols::TCP,
        };
        let config = Config { cluster: Some(ClusterMode::Routes), ..Config::default() };
        let with = |a: Allowed| Demand {
            gateways: vec![info(gw(), "u", "ours")],
            reach: BTreeMap::from([(gw(), vec![a])]),
            ..Demand::default()
        };
        let mut decisions = Decisions::default();
        let first = decisions.decide(&with(named(&["192.0.2.7"])), &BTreeMap::new(), &settings(0, &config)).policies;
        let second = decisions.decide(&with(named(&["192.0.2.8"])), &first, &settings(10, &config)).policies;
        let addresses = |p: &Policies| p.values().next().unwrap().spec()["egress"][1]["to"].as_array().unwrap().len();
        assert_eq!(addresses(&second), 2, "held");
        let restarted = Decisions::default().decide(&with(named(&[])), &second, &settings(20, &config)).policies;
        assert!(restarted.iter().all(|(k, p)| Arc::ptr_eq(p, &second[k])), "no answer yet: what stands stands");
    }
}
