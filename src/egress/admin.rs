//! The admin tier, shared by the AdminNetworkPolicy and ClusterNetworkPolicy
//! engines: cluster-scoped objects whose subject is one Gateway's data-plane
//! Pods, evaluated before any NetworkPolicy, so a namespace owner cannot
//! widen them. Each Gateway gets accept objects at `--egress-admin-priority`
//! P (DNS, what the data plane needs, the vetted addresses, the allowed
//! Pods) and one last object at P + 1 that Passes in-cluster traffic to
//! NetworkPolicies (`--egress-cluster all`) and then Denies `0.0.0.0/0` and `::/0`.
//! Every Gateway's Accepts are at P and every Deny at P + 1: whatever the
//! sharding, and even where two Gateways' data planes are the same Pods, no
//! Deny is evaluated before any Accept.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde_json::{Value, json};

use super::{
    Allowed, ClusterMode, Destination, Dns, DnsPeers, NAMESPACE_NAME_LABEL, PolicyKind, Protocols, Rules, Source,
    address_list, annotated, annotated_source, fit_name, rules_annotation,
};
use crate::model::{ObjectRef, PortRef, Protocol};

/// How one admin-tier API spells the same rules.
pub struct Dialect {
    pub kind: &'static PolicyKind,
    /// The action that lets traffic through without asking NetworkPolicies.
    pub accept: &'static str,
    /// Fields the spec needs besides subject, priority and egress (`tier`).
    pub extra: fn(&mut serde_json::Map<String, Value>),
    /// The API's limits per object, per rule and per peer.
    pub max_rules: usize,
    pub max_peers: usize,
    pub max_networks: usize,
    /// A destination port as the API writes it (a name: a named port of the
    /// destination Pods, without protocol).
    pub port: fn(protocol: Protocol, port: &PortRef) -> Value,
    /// The field that holds a rule's ports (`ports`, `protocols`).
    pub ports_field: &'static str,
    /// Reads one entry of `ports_field` back: (protocol, port).
    pub read_port: fn(&Value) -> Option<(Protocol, PortRef)>,
}

/// Most addresses one XBackend's rule can hold: peers per rule times
/// networks per peer (`--egress-max-addresses-per-host` may not exceed it).
pub fn max_addresses(dialect: &Dialect) -> usize {
    dialect.max_peers * dialect.max_networks
}

/// Rules per accept object, and the most one may hold when names crowd a
/// shard; `fixed` rules (DNS, the data plane's needs) share shard 0.
fn per_object(dialect: &Dialect, fixed: usize) -> (usize, usize) {
    let limit = dialect.max_rules.saturating_sub(fixed).max(2);
    // About two thirds full on average, a power of two (64 of 99, 16 of 24).
    let target = limit * 2 / 3;
    (1 << (usize::BITS - 1 - target.leading_zeros()), limit)
}

/// `xbackend-egress-<role>.<namespace>.<gateway>`: the role (a shard number
/// or `deny`) and the namespace hold no dot, so two Gateways never share a name.
fn object_name(gateway: &ObjectRef, role: &str) -> String {
    fit_name(format!("xbackend-egress-{role}.{}.{}", gateway.namespace, gateway.name), "")
}

fn ports(dialect: &Dialect, ports: &[(Protocol, PortRef)]) -> Value {
    let mut out: Vec<Value> = Vec::new();
    for (protocol, port) in ports {
        let entry = (dialect.port)(*protocol, port);
        // A named port has no protocol: one entry serves them all.
        if !out.contains(&entry) {
            out.push(entry);
        }
    }
    Value::Array(out)
}

fn networks_peers(dialect: &Dialect, networks: impl IntoIterator<Item = IpNet>) -> Vec<Value> {
    let cidrs: Vec<String> = networks.into_iter().map(|n| n.trunc().to_string()).collect();
    cidrs.chunks(dialect.max_networks).map(|chunk| json!({"networks": chunk})).collect()
}

fn pods_peer(namespace: &str, labels: &BTreeMap<String, String>) -> Value {
    json!({"pods": {
        "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: namespace}},
        "podSelector": {"matchLabels": labels},
    }})
}

/// A rule name: at most 100 characters, as both APIs allow.
fn rule_name(name: String) -> String {
    let mut end = name.len().min(100);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

fn dns_rule(dialect: &Dialect, dns: &Dns) -> Value {
    let to = match &dns.peers {
        DnsPeers::Pods { namespace, labels } => vec![pods_peer(namespace, labels)],
        DnsPeers::Cidrs(cidrs) => networks_peers(dialect, cidrs.iter().copied()),
    };
    let port = PortRef::Number(dns.port);
    let dns_ports = ports(dialect, &[(Protocol::Udp, port.clone()), (Protocol::Tcp, port)]);
    json!({"name": "dns", "action": dialect.accept, "to": to, dialect.ports_field: dns_ports})
}

fn rule(dialect: &Dialect, rules: &Rules, a: &Allowed) -> Value {
    let to = match &a.destination {
        Destination::Addresses { addresses, .. } => {
            networks_peers(dialect, addresses.iter().map(|ip| IpNet::from(*ip)))
        }
        Destination::Networks(networks) => networks_peers(dialect, networks.iter().copied()),
        Destination::Pods { labels } => vec![pods_peer(a.namespace(), labels)],
    };
    let key = a.source.key();
    let kind = match &a.source {
        Source::XBackend(_) => "xbackend",
        Source::Service { .. } => "service",
        Source::Need(_) => "needs",
    };
    json!({
        "name": rule_name(format!("{kind}-{}-{}", key.namespace, key.name)),
        "action": dialect.accept,
        "to": to,
        dialect.ports_field: ports(dialect, &rules.ports(a)),
    })
}

/// The objects of one Gateway: accept shards at P, the final one at P + 1.
/// Rendered one at a time as the caller asks: a rebuild compares each with
/// the copy that stands before rendering the next, so a Gateway's objects
/// never exist twice as trees at once.
pub fn render<'a>(dialect: &'a Dialect, priority: u32, rules: Rules<'a>) -> impl Iterator<Item = Value> + 'a {
    let (per, limit) = per_object(dialect, 1 + rules.needs.len());
    let shards = rules.shards(per, limit);
    let subject = json!({"pods": {
        "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: &rules.namespace}},
        "podSelector": {"matchLabels": &rules.selector},
    }});
    let object = move |rules: &Rules, name: String, priority: u32, egress: Vec<Value>, notes: Vec<String>| {
        let mut spec = serde_json::Map::new();
        spec.insert("priority".into(), json!(priority));
        spec.insert("subject".into(), subject.clone());
        spec.insert("egress".into(), Value::Array(egress));
        (dialect.extra)(&mut spec);
        json!({
            "apiVersion": dialect.kind.api_version(),
            "kind": dialect.kind.kind,
            "metadata": {
                "name": name,
                "labels": rules.labels(),
                "annotations": {super::RULES_ANNOTATION: rules_annotation(&notes)},
            },
            "spec": spec,
        })
    };
    // Each accept shard, then None: the final deny.
    shards.into_iter().map(Some).chain([None]).enumerate().map(move |(shard, members)| {
        let mut egress = Vec::new();
        let mut notes = Vec::new();
        let Some(members) = members else {
            if rules.cluster == ClusterMode::All {
                egress.push(json!({"name": "cluster-to-networkpolicy", "action": "Pass", "to": [{"namespaces": {}}]}));
                notes.push("every Pod of the cluster: NetworkPolicies decide (--egress-cluster all)".to_string());
            }
            egress.push(
                json!({"name": "deny-everything-else", "action": "Deny", "to": [{"networks": ["0.0.0.0/0", "::/0"]}]}),
            );
            notes.push("everything else: denied".to_string());
            return object(&rules, object_name(rules.gateway, "deny"), priority + 1, egress, notes);
        };
        if shard == 0 {
            egress.push(dns_rule(dialect, rules.dns));
            notes.push("DNS".to_string());
            for need in &rules.needs {
                egress.push(rule(dialect, &rules, need));
                notes.push(need.note());
            }
        }
        for a in members {
            egress.push(rule(dialect, &rules, a));
            notes.push(a.note());
        }
        object(&rules, object_name(rules.gateway, &shard.to_string()), priority, egress, notes)
    })
}

/// The XBackend and Service rules of an object `render` made, read back.
pub fn read_rules(dialect: &Dialect, object: &Value) -> Vec<Allowed> {
    let rules = object["spec"]["egress"].as_array().map(Vec::as_slice).unwrap_or_default();
    let read = |(index, kind, key, hostname, via): (usize, &str, ObjectRef, &str, Option<&str>)| {
        let rule = rules.get(index)?;
        let ports: Vec<(Protocol, PortRef)> =
            rule[dialect.ports_field].as_array()?.iter().filter_map(dialect.read_port).collect();
        let port = ports.first()?.1.clone();
        let protocols = (ports.iter()).filter(|(_, p)| *p == port).map(|(protocol, _)| *protocol);
        let protocols = protocols.fold(Protocols::default(), Protocols::with);
        let to = rule["to"].as_array()?;
        let networks = || {
            to.iter()
                .flat_map(|peer| peer["networks"].as_array().into_iter().flatten())
                .filter_map(|cidr| cidr.as_str()?.parse::<IpNet>().ok())
        };
        let destination = match to.first()?.get("pods") {
            Some(pods) => {
                Destination::Pods { labels: serde_json::from_value(pods["podSelector"]["matchLabels"].clone()).ok()? }
            }
            None if hostname.starts_with('(') => Destination::Networks(networks().collect()),
            None => Destination::Addresses {
                hostname: hostname.into(),
                addresses: address_list(networks().map(|n| n.addr())),
            },
        };
        Some(Allowed { source: annotated_source(kind, key, via), destination, port, protocols })
    };
    annotated(object).filter_map(read).collect()
}

/// Why `other`, an admin-tier object that is not ours, makes `ours` moot:
/// evaluated before our Deny (a lower priority number), its subject may be
/// our data plane's Pods, and a rule lets traffic past our Deny (an accept
/// or a Pass to NetworkPolicies) to more than single addresses.
pub fn widens(dialect: &Dialect, ours: &Value, other: &Value) -> Option<String> {
    let our_priority = ours["spec"]["priority"].as_u64()?;
    let their_priority = other["spec"]["priority"].as_u64()?;
    if their_priority > our_priority || other["spec"].get("tier").is_some_and(|t| t != "Admin") {
        return None;
    }
    if !may_select(&other["spec"]["subject"], &ours["spec"]["subject"]) {
        return None;
    }
    let name = other["metadata"]["name"].as_str().unwrap_or_default();
    let kind = dialect.kind.kind;
    let rules = other["spec"]["egress"].as_array().map(Vec::as_slice).unwrap_or_default();
    for (i, rule) in rules.iter().enumerate() {
        let action = rule["action"].as_str().unwrap_or_default();
        if action != dialect.accept && action != "Pass" {
            continue;
        }
        let peers = rule["to"].as_array().map(Vec::as_slice).unwrap_or_default();
        let wide = peers.iter().find_map(|peer| {
            let networks = peer["networks"].as_array().into_iter().flatten();
            let wide_net = networks
                .filter_map(|n| n.as_str()?.parse::<IpNet>().ok())
                .find(|net| net.prefix_len() < net.max_prefix_len())
                .map(|net| net.to_string());
            wide_net.or_else(|| peer.get("domainNames").map(|d| format!("the names {d}")))
        });
        if let Some(what) = wide {
            let verb = if action == "Pass" { "passes to NetworkPolicies" } else { "accepts" };
            return Some(format!(
                "{kind} {name} (priority {their_priority}) may select this Gateway's data-plane Pods and its egress[{i}] {verb} traffic to {what} before xbackend-controller's Deny is evaluated."
            ));
        }
    }
    None
}

/// Whether a subject may select the Pods ours selects: their matchLabels
/// are among ours (matchExpressions are taken to match, so the warning errs
/// on the side of telling).
fn may_select(theirs: &Value, ours: &Value) -> bool {
    let fits = |selector: &Value, labels: &Value| {
        selector["matchLabels"].as_object().into_iter().flatten().all(|(k, v)| &labels[k] == v)
    };
    let our_namespace = &ours["pods"]["namespaceSelector"]["matchLabels"];
    let our_pods = &ours["pods"]["podSelector"]["matchLabels"];
    match (theirs.get("namespaces"), theirs.get("pods")) {
        (Some(namespaces), _) => fits(namespaces, our_namespace),
        (_, Some(pods)) => fits(&pods["namespaceSelector"], our_namespace) && fits(&pods["podSelector"], our_pods),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::super::testing::{external, ip, pods};
    use super::super::{AdminNetworkPolicy, ClusterNetworkPolicy, Config, Engine, OWNED_NAMESPACE_LABEL};
    use super::*;

    /// A connection as an admin-tier enforcer sees it: from a Pod (namespace,
    /// labels) to an address and port, and the Pod there if any.
    struct Packet<'a> {
        from: (&'a str, &'a [(&'a str, &'a str)]),
        to: IpAddr,
        port: u16,
        protocol: &'a str,
        to_pod: Option<(&'a str, &'a [(&'a str, &'a str)])>,
    }

    /// Allow/Accept, Deny, or Pass (to NetworkPolicies; also when nothing
    /// matches), as the policy API defines them: objects by priority (lower
    /// first), rules in order, the first matching rule decides. Written from
    /// the API's documentation, apart from the engines, as a second opinion.
    fn evaluate(dialect: &Dialect, objects: &[Value], packet: &Packet) -> String {
        let labels_match = |selector: &Value, namespace: &str, labels: &[(&str, &str)]| {
            let matches = |sel: &Value, set: &[(&str, &str)]| {
                sel["matchLabels"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .all(|(k, v)| set.iter().any(|(a, b)| a == k && v == b))
            };
            let ns_labels = [(NAMESPACE_NAME_LABEL, namespace)];
            matches(&selector["namespaceSelector"], &ns_labels) && matches(&selector["podSelector"], labels)
        };
        let mut ordered: Vec<&Value> = objects.iter().collect();
        ordered.sort_by_key(|o| o["spec"]["priority"].as_u64());
        for object in ordered {
            if !labels_match(&object["spec"]["subject"]["pods"], packet.from.0, packet.from.1) {
                continue;
            }
            for rule in object["spec"]["egress"].as_array().unwrap() {
                let ports = rule[dialect.ports_field].as_array();
                let port_ok = ports.is_none_or(|ports| {
                    ports
                        .iter()
                        .filter_map(dialect.read_port)
                        .any(|(p, n)| p.name() == packet.protocol && n == PortRef::Number(packet.port))
                });
                let peer_ok = rule["to"].as_array().unwrap().iter().any(|peer| {
                    if let Some(networks) = peer["networks"].as_array() {
                        return networks
                            .iter()
                            .any(|n| n.as_str().unwrap().parse::<IpNet>().unwrap().contains(&packet.to));
                    }
                    let Some((namespace, labels)) = packet.to_pod else { return false };
                    match (peer.get("namespaces"), peer.get("pods")) {
                        (Some(ns), _) => labels_match(&json!({"namespaceSelector": ns}), namespace, labels),
                        (_, Some(pods)) => labels_match(pods, namespace, labels),
                        _ => false,
                    }
                });
                if port_ok && peer_ok {
                    return rule["action"].as_str().unwrap().to_string();
                }
            }
        }
        "Pass".to_string()
    }

    const GATEWAY_POD: (&str, &[(&str, &str)]) = ("infra", &[(super::super::GATEWAY_NAME_LABEL, "gw")]);
    const WEB: (&str, &[(&str, &str)]) = ("app", &[("app", "web")]);
    const DNS_POD: (&str, &[(&str, &str)]) = ("kube-system", &[("k8s-app", "kube-dns")]);

    fn out(engine: &dyn Engine, config: &Config) -> Vec<Value> {
        let allowed = [external("api", &["192.0.2.10", "2001:db8::10"]), pods("web", &[("app", "web")])];
        rendered(engine, &allowed, config)
    }

    fn rendered(engine: &dyn Engine, allowed: &[Allowed], config: &Config) -> Vec<Value> {
        super::super::testing::render(engine, allowed, config)
    }

    fn packet<'a>(to: &str, port: u16, to_pod: Option<(&'a str, &'a [(&'a str, &'a str)])>) -> Packet<'a> {
        Packet { from: GATEWAY_POD, to: ip(to), port, protocol: "TCP", to_pod }
    }

    fn dialects() -> [(Box<dyn Engine>, &'static Dialect, &'static str); 3] {
        [
            (Box::new(AdminNetworkPolicy { priority: 100 }), &super::super::adminnetworkpolicy::DIALECT, "Allow"),
            (Box::new(ClusterNetworkPolicy::new(100, &[])), &super::super::clusternetworkpolicy::V1BETA1, "Accept"),
            (
                Box::new(ClusterNetworkPolicy::new(100, &["v1alpha2".to_string()])),
                &super::super::clusternetworkpolicy::V1ALPHA2,
                "Accept",
            ),
        ]
    }

    #[test]
    fn each_rule_does_what_the_admin_tier_promises() {
        for (engine, dialect, accept) in dialects() {
            for allow_cluster in [true, false] {
                let mode = if allow_cluster { super::super::ClusterMode::All } else { super::super::ClusterMode::None };
                let config = Config { cluster: Some(mode), ..Config::default() };
                let objects = out(&*engine, &config);
                let verdict = |p: Packet| evaluate(dialect, &objects, &p);
                let in_cluster = if allow_cluster { "Pass" } else { "Deny" };
                assert_eq!(verdict(packet("192.0.2.10", 443, None)), accept, "a vetted address on its port");
                assert_eq!(verdict(packet("2001:db8::10", 443, None)), accept, "IPv6 too");
                assert_eq!(verdict(packet("192.0.2.10", 80, None)), "Deny", "another port");
                assert_eq!(verdict(packet("169.254.169.254", 80, None)), "Deny", "the metadata endpoint");
                assert_eq!(verdict(packet("198.51.100.7", 443, None)), "Deny", "an address never vetted");
                assert_eq!(verdict(packet("2001:db8::99", 443, None)), "Deny", "IPv6 denied too");
                assert_eq!(verdict(packet("10.244.1.5", 8080, Some(WEB))), accept, "the EndpointSelector's Pods");
                let udp = Packet { protocol: "UDP", ..packet("10.244.0.10", 53, Some(DNS_POD)) };
                assert_eq!(verdict(udp), accept, "DNS");
                assert_eq!(verdict(packet("10.244.9.9", 5432, Some(("db", &[])))), in_cluster, "another Pod");
                let other_pods = Packet { from: ("infra", &[("app", "other")]), ..packet("192.0.2.99", 443, None) };
                assert_eq!(verdict(other_pods), "Pass", "other Pods are not the subject");
            }
            // Every Accept comes before the Deny: accepts at P, the Deny at P + 1.
            let objects = out(&*engine, &Config::default());
            let (accepts, deny): (Vec<&Value>, Vec<&Value>) = objects
                .iter()
                .partition(|o| !o["metadata"]["name"].as_str().unwrap().starts_with("xbackend-egress-deny."));
            assert_eq!(deny.len(), 1);
            assert!(accepts.iter().all(|o| o["spec"]["priority"] == 100) && deny[0]["spec"]["priority"] == 101);
            assert!(objects.iter().all(|o| o["metadata"]["labels"][OWNED_NAMESPACE_LABEL] == "infra"));
        }
    }

    /// Two Gateways whose data planes are the same Pods (a shared
    /// deployment): whichever order an enforcer takes equal priorities in,
    /// each one's Accepts hold, because no Deny is at the Accepts' priority.
    #[test]
    fn one_gateways_deny_never_shadows_anothers_accept() {
        for (engine, dialect, accept) in dialects() {
            let config = Config::default();
            let (a, b) = (ObjectRef::new("infra", "a"), ObjectRef::new("infra", "b"));
            let only_a = [external("api", &["192.0.2.10"])];
            let only_b = [external("other", &["192.0.2.20"])];
            let mut objects: Vec<Value> = engine.render(Rules::new(&a, "", "c", &only_a, &config)).collect();
            objects.extend(engine.render(Rules::new(&b, "", "c", &only_b, &config)));
            // Both subjects select the same Pods.
            for object in &mut objects {
                object["spec"]["subject"]["pods"]["podSelector"] = json!({"matchLabels": {"app": "proxy"}});
            }
            let from = ("infra", &[("app", "proxy")][..]);
            for order in [false, true] {
                if order {
                    objects.reverse();
                }
                let verdict = |to: &str| evaluate(dialect, &objects, &Packet { from, ..packet(to, 443, None) });
                assert_eq!((verdict("192.0.2.10"), verdict("192.0.2.20")), (accept.into(), accept.into()));
                assert_eq!(verdict("192.0.2.30"), "Deny");
            }
        }
    }

    #[test]
    fn names_never_collide_and_the_api_limits_hold() {
        for (engine, dialect, _) in dialects() {
            let config = Config::default();
            let (x, y) = (ObjectRef::new("a-b", "c"), ObjectRef::new("a", "b-c"));
            let name = |gw: &ObjectRef| -> Vec<String> {
                engine
                    .render(Rules::new(gw, "", "c", &[], &config))
                    .map(|o| o["metadata"]["name"].to_string())
                    .collect()
            };
            assert!(name(&x).iter().all(|n| !name(&y).contains(n)), "{:?} {:?}", name(&x), name(&y));
            let many: Vec<String> = (0..64).map(|i| format!("2001:db8::{i:x}")).collect();
            let refs: Vec<&str> = many.iter().map(String::as_str).collect();
            let allowed: Vec<Allowed> = (0..300).map(|i| external(&format!("b{i:03}"), &refs)).collect();
            let objects = rendered(&*engine, &allowed, &config);
            for object in &objects {
                let egress = object["spec"]["egress"].as_array().unwrap();
                assert!(egress.len() <= dialect.max_rules, "{} rules", egress.len());
                for rule in egress {
                    let peers = rule["to"].as_array().unwrap();
                    assert!(peers.len() <= dialect.max_peers);
                    assert!(
                        peers.iter().all(|p| p["networks"].as_array().is_none_or(|n| n.len() <= dialect.max_networks))
                    );
                    assert!(rule["name"].as_str().unwrap().len() <= 100);
                }
                assert!(serde_json::to_vec(object).unwrap().len() < 512 * 1024);
            }
            let read: usize = objects.iter().map(|o| engine.read_rules(o).len()).sum();
            assert_eq!(read, 300, "every XBackend's rule reads back");
            // One XBackend's change rewrites one object.
            let mut changed = allowed.clone();
            changed[123] = external("b123", &["192.0.2.1"]);
            let after = rendered(&*engine, &changed, &config);
            assert_eq!(objects.iter().zip(&after).filter(|(a, b)| a != b).count(), 1);
        }
    }

    #[test]
    fn rules_read_back_as_they_were_built() {
        for (engine, _, _) in dialects() {
            let stun = super::super::testing::udp(external("stun", &["192.0.2.16"]));
            let allowed = vec![external("api", &["192.0.2.10", "2001:db8::10"]), stun, pods("web", &[("app", "web")])];
            let objects = rendered(&*engine, &allowed, &Config::default());
            let read: Vec<Allowed> = objects.iter().flat_map(|o| engine.read_rules(o)).collect();
            assert_eq!(read, allowed, "{}", engine.name());
        }
    }

    #[test]
    fn a_policy_evaluated_first_that_lets_more_through_is_told() {
        for (engine, _, accept) in dialects() {
            let ours = out(&*engine, &Config::default()).pop().unwrap();
            let other = |priority: u32, subject: Value, action: &str, to: Value| {
                let mut o = ours.clone();
                o["metadata"]["name"] = json!("theirs");
                o["spec"]["priority"] = json!(priority);
                o["spec"]["subject"] = subject;
                o["spec"]["egress"] = json!([{"action": action, "to": to}]);
                o
            };
            let everyone = json!({"namespaces": {}});
            let internet = json!([{"networks": ["0.0.0.0/0"]}]);
            let message = engine.widens(&ours, &other(10, everyone.clone(), accept, internet.clone())).unwrap();
            assert!(message.contains("0.0.0.0/0") && message.contains("priority 10"), "{message}");
            assert!(engine.widens(&ours, &other(10, everyone.clone(), "Pass", internet.clone())).is_some());
            assert!(
                engine.widens(&ours, &other(500, everyone.clone(), accept, internet.clone())).is_none(),
                "after ours"
            );
            assert!(engine.widens(&ours, &other(10, everyone.clone(), "Deny", internet.clone())).is_none());
            let narrow = json!([{"networks": ["192.0.2.7/32"]}]);
            assert!(engine.widens(&ours, &other(10, everyone, accept, narrow)).is_none());
            let elsewhere = json!({"namespaces": {"matchLabels": {NAMESPACE_NAME_LABEL: "other"}}});
            assert!(engine.widens(&ours, &other(10, elsewhere, accept, internet)).is_none());
        }
    }
}
