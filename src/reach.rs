//! What a Gateway's routes let its data plane reach in the cluster
//! (`--egress-cluster routes`, docs/design.md §6b): every Service reference
//! of every route, Gateway listener and ListenerSet attached to it, followed
//! to the Service's Pods and target port, its hand-written EndpointSlice
//! addresses, or the name an ExternalName Service aliases; the last two
//! judged as an XBackend's addresses and hostname are. Pure, in two steps:
//! `targets` reads the index (under the state's lock), `judge` needs only
//! the policy and the DNS answers.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use crate::dns::Resolution;
use crate::egress::{Allowed, Destination, Protocols, Source, address_list};
use crate::guardrails::Namespaces;
use crate::index::Index;
use crate::model::{ObjectRef, PortRef, Protocol, Referrer};
use crate::object::GATEWAY_GROUP;
use crate::policy::Policy;

/// The object whose reference it is: a route, a Gateway (its listeners'
/// ExternalAuth) or a ListenerSet.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Via {
    pub kind: Referrer,
    pub key: ObjectRef,
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind.kind(), self.key)
    }
}

/// What a Service reference leads to, as the index knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A Service with a selector: its Pods, on the target port.
    Pods { labels: BTreeMap<String, String>, port: PortRef, protocol: Protocol },
    /// A selectorless Service: the ready addresses of its EndpointSlices on one port.
    Endpoints { addresses: Vec<IpAddr>, port: u16, protocol: Protocol },
    /// An ExternalName Service: the name it aliases, on the referenced port.
    ExternalName { hostname: String, port: u16, protocol: Protocol },
}

/// One Service reference of a Gateway's routes, and where it leads (or why nowhere).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub service: ObjectRef,
    pub port: u16,
    pub via: Via,
    pub target: Result<Vec<Target>, String>,
}

/// Every Service reference of the objects attached to `gateway`, followed
/// through the index: same namespace or a ReferenceGrant from the referring
/// kind; the Service, its port, and for a selectorless one its EndpointSlices.
pub fn targets(index: &Index, gateway: &ObjectRef) -> Vec<Found> {
    let mut found = Vec::new();
    for ((kind, key), route) in index.referrers_of(gateway) {
        for reference in route.services.iter() {
            let via = Via { kind: *kind, key: key.clone() };
            let service = &reference.service;
            let target = follow(index, &via, service, reference.port);
            found.push(Found { service: service.clone(), port: reference.port, via, target });
        }
    }
    found
}

fn follow(index: &Index, via: &Via, service: &ObjectRef, port: u16) -> Result<Vec<Target>, String> {
    let from = (GATEWAY_GROUP, via.kind.kind(), &*via.key.namespace);
    if service.namespace != via.key.namespace && !index.grant_allows(from, "", "Service", service) {
        return Err(format!(
            "names Service {service} in another namespace, and no ReferenceGrant in namespace {} allows {}s from namespace {} to use it",
            service.namespace,
            via.kind.kind(),
            via.key.namespace
        ));
    }
    let Some(found) = index.service(service) else {
        return Err(format!("names Service {service}, which does not exist"));
    };
    let declared = found.ports.iter().find(|p| p.port == port);
    if let Some(hostname) = &found.external_name {
        let protocol = declared.map_or(Protocol::Tcp, |p| p.protocol);
        return Ok(vec![Target::ExternalName { hostname: hostname.clone(), port, protocol }]);
    }
    let Some(declared) = declared else {
        return Err(format!("names port {port} of Service {service}, which has no such port"));
    };
    if !found.selector.is_empty() {
        let (labels, port, protocol) = (found.selector.clone(), declared.target.clone(), declared.protocol);
        return Ok(vec![Target::Pods { labels, port, protocol }]);
    }
    // Selectorless: the EndpointSlice port named like the Service port.
    let mut by_port: BTreeMap<(u16, Protocol), BTreeSet<IpAddr>> = BTreeMap::new();
    for slice in index.slices_of(service) {
        let matching = slice.ports.iter().find(|(name, _, _)| **name == *declared.name);
        if let Some((_, number, protocol)) = matching {
            by_port.entry((*number, *protocol)).or_default().extend(slice.addresses.iter().copied());
        }
    }
    if by_port.values().all(BTreeSet::is_empty) {
        return Err(format!(
            "names Service {service}, which has no selector and no ready EndpointSlice address for port {port}"
        ));
    }
    let targets = by_port.into_iter().filter(|(_, a)| !a.is_empty());
    Ok(targets
        .map(|((port, protocol), addresses)| Target::Endpoints {
            addresses: addresses.into_iter().collect(),
            port,
            protocol,
        })
        .collect())
}

/// Why a reference allows nothing: said in a Warning Event on `via`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Refusal {
    pub via: Via,
    /// The Service referred to (the Event's related object).
    pub service: ObjectRef,
    pub message: String,
}

/// What the references of one Gateway allow, what they refuse, and the
/// ExternalName hostnames whose answers they need (to ask DNS for).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Judged {
    pub allowed: Vec<Allowed>,
    pub refused: Vec<Refusal>,
    pub hostnames: BTreeSet<String>,
}

/// Judges what `targets` found: Pods as they are; EndpointSlice addresses as
/// an XBackend's resolved addresses (built-in and operator ranges, the
/// cluster's Service ranges); an ExternalName's name with every rule an
/// XBackend hostname gets, and its answer (`answer`, None: none yet) as its
/// addresses. References to the same Service port merge into one rule.
pub fn judge(
    found: &[Found],
    policy: &Policy,
    namespaces: &dyn Namespaces,
    answer: &dyn Fn(&str) -> Option<Arc<Resolution>>,
) -> Judged {
    let mut judged = Judged::default();
    // (Service, destination, port, protocols) -> the referring objects.
    let mut rules: BTreeMap<(ObjectRef, String), (Allowed, BTreeSet<Via>)> = BTreeMap::new();
    let mut add = |service: &ObjectRef, via: &Via, destination: Destination, port: PortRef, protocol: Protocol| {
        let id = (service.clone(), format!("{destination:?} {port} {protocol:?}"));
        let source = Source::Service { service: service.clone(), via: Arc::from("") };
        let allowed = Allowed { source, destination, port, protocols: Protocols::of(protocol) };
        rules.entry(id).or_insert_with(|| (allowed, BTreeSet::new())).1.insert(via.clone());
    };
    for f in found {
        let refuse = |message: String| Refusal { via: f.via.clone(), service: f.service.clone(), message };
        let targets = match &f.target {
            Ok(targets) => targets,
            Err(why) => {
                judged.refused.push(refuse(format!(
                    "{} {why}: xbackend-controller allows its data plane nothing for it.",
                    f.via
                )));
                continue;
            }
        };
        for target in targets {
            match target {
                Target::Pods { labels, port, protocol } => {
                    add(&f.service, &f.via, Destination::Pods { labels: labels.clone() }, port.clone(), *protocol);
                }
                Target::Endpoints { addresses, port, protocol } => {
                    let mut vetted = Vec::new();
                    for ip in addresses {
                        match crate::addresses::denied(*ip, &policy.addresses) {
                            Some((range, why)) => judged.refused.push(refuse(format!(
                                "{} names Service {}, whose EndpointSlice address {ip} is in {range} ({why}): refused, as it would be for an XBackend.",
                                f.via, f.service
                            ))),
                            None => vetted.push(ipnet::IpNet::from(*ip)),
                        }
                    }
                    if !vetted.is_empty() {
                        add(
                            &f.service,
                            &f.via,
                            Destination::Networks(vetted.into()),
                            PortRef::Number(*port),
                            *protocol,
                        );
                    }
                }
                Target::ExternalName { hostname, port, protocol } => {
                    let normalized = crate::names::normalize(hostname);
                    // The name rules first: a name they refuse is never asked for.
                    let by_name = crate::verdict::Context { namespaces, resolution: None };
                    let judged_name = crate::verdict::hostname(hostname, policy, by_name);
                    let resolution = judged_name.is_ok().then(|| answer(&normalized)).flatten();
                    let context = crate::verdict::Context { namespaces, resolution: resolution.as_deref() };
                    if let Err(message) = judged_name.and_then(|()| crate::verdict::hostname(hostname, policy, context))
                    {
                        judged.refused.push(refuse(format!(
                            "{} names ExternalName Service {} for {hostname}, which is refused: {message}",
                            f.via, f.service
                        )));
                        continue;
                    }
                    judged.hostnames.insert(normalized.clone());
                    let addresses = address_list(resolution.iter().flat_map(|r| r.addresses.iter().copied()));
                    let destination = Destination::Addresses { hostname: normalized.into(), addresses };
                    add(&f.service, &f.via, destination, PortRef::Number(*port), *protocol);
                }
            }
        }
    }
    for (_, (mut allowed, vias)) in rules {
        let first = vias.iter().next().expect("one at least").to_string();
        let via = match vias.len() {
            1 => first,
            n => format!("{first} and {} more", n - 1),
        };
        if let Source::Service { via: text, .. } = &mut allowed.source {
            *text = via.into();
        }
        judged.allowed.push(allowed);
    }
    judged.refused.sort();
    judged.refused.dedup();
    judged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode;
    use crate::guardrails::NoNamespaces;
    use crate::model::Kind;
    use serde_json::{Value, json};

    const OURS: &str = "example.com/ours";

    fn apply(index: &mut Index, api_version: &str, kind: &str, object: Value) {
        let kind = Kind::of(api_version, kind).unwrap();
        let (key, object) = decode(kind, &object).unwrap();
        index.apply(key, object);
    }

    fn world() -> Index {
        let mut index = Index::new(OURS).tracking_services(true);
        apply(
            &mut index,
            "gateway.networking.k8s.io/v1",
            "GatewayClass",
            json!({"metadata": {"name": "c"}, "spec": {"controllerName": OURS}}),
        );
        apply(
            &mut index,
            "gateway.networking.k8s.io/v1",
            "Gateway",
            json!({"metadata": {"name": "gw", "namespace": "infra"}, "spec": {"gatewayClassName": "c"}}),
        );
        let service =
            |ns: &str, name: &str, spec: Value| json!({"metadata": {"name": name, "namespace": ns}, "spec": spec});
        let named_port = json!({"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}, {"name": "metrics", "port": 9090, "targetPort": 9091, "protocol": "TCP"}]});
        apply(&mut index, "v1", "Service", service("app", "web", named_port));
        apply(
            &mut index,
            "v1",
            "Service",
            service("app", "dns", json!({"selector": {"app": "dns"}, "ports": [{"port": 53, "protocol": "UDP"}]})),
        );
        apply(
            &mut index,
            "v1",
            "Service",
            service(
                "app",
                "ext",
                json!({"type": "ExternalName", "externalName": "api.example.org", "ports": [{"port": 443}]}),
            ),
        );
        apply(
            &mut index,
            "v1",
            "Service",
            service("app", "meta", json!({"type": "ExternalName", "externalName": "metadata.google.internal"})),
        );
        apply(
            &mut index,
            "v1",
            "Service",
            service("app", "hand", json!({"ports": [{"name": "https", "port": 443, "targetPort": 8443}]})),
        );
        apply(
            &mut index,
            "v1",
            "Service",
            service("other", "db", json!({"selector": {"app": "db"}, "ports": [{"port": 5432}]})),
        );
        let slice = json!({
            "metadata": {"name": "hand-1", "namespace": "app", "labels": {"kubernetes.io/service-name": "hand"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["93.184.216.44"]}, {"addresses": ["10.244.7.7"]}, {"addresses": ["93.184.216.45"], "conditions": {"ready": false}}],
            "ports": [{"name": "https", "port": 8443, "protocol": "TCP"}],
        });
        apply(&mut index, "discovery.k8s.io/v1", "EndpointSlice", slice);
        index
    }

    fn route(index: &mut Index, name: &str, refs: Value) {
        let spec = json!({"parentRefs": [{"name": "gw", "namespace": "infra"}], "rules": [{"backendRefs": refs}]});
        apply(
            index,
            "gateway.networking.k8s.io/v1",
            "HTTPRoute",
            json!({"metadata": {"name": name, "namespace": "app"}, "spec": spec}),
        );
    }

    fn judged(index: &Index, answer: Option<&str>) -> Judged {
        let found = targets(index, &ObjectRef::new("infra", "gw"));
        let resolution =
            answer.map(|ip| Arc::new(Resolution { addresses: vec![ip.parse().unwrap()], ..Resolution::default() }));
        judge(&found, &Policy::default(), &NoNamespaces, &|_| resolution.clone())
    }

    #[test]
    fn each_kind_of_service_reference_becomes_its_rule() {
        let mut index = world();
        route(
            &mut index,
            "r",
            json!([
                {"name": "web", "port": 80},
                {"name": "web", "port": 9090},
                {"name": "dns", "port": 53},
                {"name": "ext", "port": 443},
                {"name": "hand", "port": 443},
            ]),
        );
        let j = judged(&index, Some("93.184.216.9"));
        let rules: Vec<String> = j.allowed.iter().map(Allowed::note).collect();
        assert_eq!(
            rules,
            [
                "Service app/dns its Pods, port 53, for HTTPRoute app/r",
                "Service app/ext api.example.org (1 address), port 443, for HTTPRoute app/r",
                "Service app/hand (1 network), port 8443, for HTTPRoute app/r",
                "Service app/web its Pods, port 9091, for HTTPRoute app/r",
                "Service app/web its Pods, port http, for HTTPRoute app/r",
            ]
        );
        assert_eq!(j.allowed[0].protocols, Protocols::of(Protocol::Udp), "the Service port's protocol");
        assert_eq!(j.hostnames, BTreeSet::from(["api.example.org".to_string()]));
        // The selectorless Service's Pod address (private) is refused and said; the unready one never counts.
        assert_eq!(j.refused.len(), 1, "{:?}", j.refused);
        assert!(j.refused[0].message.contains("10.244.7.7"), "{}", j.refused[0].message);
        assert!(!j.refused[0].message.contains("93.184.216.45"), "an unready endpoint is never asked about");
    }

    #[test]
    fn refusals_name_the_route_the_service_and_why() {
        let mut index = world();
        route(
            &mut index,
            "r",
            json!([
                {"name": "missing", "port": 80},
                {"name": "web", "port": 81},
                {"name": "db", "namespace": "other", "port": 5432},
                {"name": "meta", "port": 80},
            ]),
        );
        let j = judged(&index, None);
        assert!(j.allowed.is_empty(), "{:?}", j.allowed);
        let messages: Vec<&str> = j.refused.iter().map(|r| r.message.as_str()).collect();
        assert_eq!(messages.len(), 4, "{messages:#?}");
        assert!(messages.iter().any(|m| m.contains("Service app/missing, which does not exist")));
        assert!(messages.iter().any(|m| m.contains("port 81 of Service app/web, which has no such port")));
        assert!(
            messages
                .iter()
                .any(|m| m.contains("no ReferenceGrant in namespace other allows HTTPRoutes from namespace app"))
        );
        assert!(messages.iter().any(|m| m.contains("ExternalName Service app/meta for metadata.google.internal")));
        assert!(j.refused.iter().all(|r| r.via.to_string() == "HTTPRoute app/r"));
        // A name the name rules refuse is never looked up (analyze asks DNS for each name it is given).
        let found = targets(&index, &ObjectRef::new("infra", "gw"));
        let asked = std::cell::RefCell::new(Vec::new());
        judge(&found, &Policy::default(), &NoNamespaces, &|name| {
            asked.borrow_mut().push(name.to_string());
            None
        });
        assert!(asked.borrow().is_empty(), "{:?}", asked.borrow());
    }

    #[test]
    fn a_grant_opens_another_namespace_and_an_answer_is_judged() {
        let mut index = world();
        let grant = json!({"metadata": {"name": "g", "namespace": "other"}, "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "app"}], "to": [{"group": "", "kind": "Service"}]}});
        apply(&mut index, "gateway.networking.k8s.io/v1beta1", "ReferenceGrant", grant);
        route(
            &mut index,
            "r",
            json!([{"name": "db", "namespace": "other", "port": 5432}, {"name": "ext", "port": 443}]),
        );
        let j = judged(&index, Some("169.254.169.254"));
        assert_eq!(j.allowed.len(), 1, "db only: {:?}", j.allowed);
        assert_eq!(j.allowed[0].namespace(), "other");
        assert!(j.refused[0].message.contains("169.254.169.254"), "the answer is refused: {}", j.refused[0].message);
        // A second route to the same Service port: one rule, both named.
        route(&mut index, "r2", json!([{"name": "db", "namespace": "other", "port": 5432}]));
        let j = judged(&index, None);
        let notes: Vec<String> = j.allowed.iter().map(Allowed::note).collect();
        assert_eq!(
            notes,
            [
                "Service app/ext api.example.org (0 addresses), port 443, for HTTPRoute app/r",
                "Service other/db its Pods, port 5432, for HTTPRoute app/r and 1 more",
            ],
            "no answer yet: the name is kept for the hold-down, with no address of its own"
        );
    }

    #[test]
    fn a_gateways_listener_auth_and_listener_sets_count_too() {
        let mut index = world();
        let auth = json!({"type": "ExternalAuth", "externalAuth": {"protocol": "HTTP", "backendRef": {"name": "web", "namespace": "app", "port": 80}}});
        let gateway = json!({"metadata": {"name": "gw", "namespace": "infra"}, "spec": {"gatewayClassName": "c", "listeners": [{"name": "l", "filters": {"requests": [auth]}}]}});
        apply(&mut index, "gateway.networking.k8s.io/v1", "Gateway", gateway);
        let found = targets(&index, &ObjectRef::new("infra", "gw"));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].via.to_string(), "Gateway infra/gw");
        assert!(
            found[0].target.as_ref().unwrap_err().contains("no ReferenceGrant"),
            "the Gateway is in infra, the Service in app"
        );
    }
}
