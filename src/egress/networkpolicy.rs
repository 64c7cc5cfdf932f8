//! The NetworkPolicy engine (networking.k8s.io/v1): namespaced objects in
//! the data plane's namespace, owned by the Gateway where it runs beside it.
//! Every CNI enforces them; they add up with anyone else's, so another
//! NetworkPolicy on the same Pods can widen them (`widens`).

use ipnet::IpNet;
use serde_json::{Value, json};

use super::{
    Allowed, ClusterMode, Destination, Dns, DnsPeers, Engine, PolicyKind, Protocols, Rules, address_list, annotated,
    annotated_source, rules_annotation,
};
use crate::model::{ObjectRef, PortRef, Protocol};

/// XBackends per object: 64 hosts of at most 64 addresses each stay far under 512 KiB.
pub const BACKENDS_PER_OBJECT: usize = 64;

pub static KIND: PolicyKind = PolicyKind {
    group: "networking.k8s.io",
    version: "v1",
    kind: "NetworkPolicy",
    plural: "networkpolicies",
    namespaced: true,
};

pub struct NetworkPolicy;

impl Engine for NetworkPolicy {
    fn name(&self) -> &'static str {
        "networkpolicy"
    }

    fn kind(&self) -> &'static PolicyKind {
        &KIND
    }

    /// Shard 0 carries DNS, the cluster rule and what the data plane needs;
    /// a Gateway with no Accepted XBackend still gets it: its data plane may
    /// reach DNS (and the cluster) and nothing outside.
    fn render<'a>(&'a self, rules: Rules<'a>) -> Box<dyn Iterator<Item = Value> + 'a> {
        // In a namespace shared by many Gateways' data planes, the name says whose.
        let gateway = rules.gateway;
        let base = if rules.namespace == *gateway.namespace {
            gateway.name.to_string()
        } else {
            format!("{}-{}", gateway.namespace, gateway.name)
        };
        let shards = rules.shards(BACKENDS_PER_OBJECT, usize::MAX);
        Box::new(shards.into_iter().enumerate().map(move |(shard, members)| {
            let mut egress = Vec::new();
            let mut notes = Vec::new();
            if shard == 0 {
                egress.push(dns_rule(rules.dns));
                notes.push("DNS".to_string());
                if rules.cluster == ClusterMode::All {
                    egress.push(json!({"to": [{"namespaceSelector": {}}]}));
                    notes.push("every Pod of the cluster (--egress-cluster all)".to_string());
                }
                for need in &rules.needs {
                    egress.push(rule(&rules, need));
                    notes.push(need.note());
                }
            }
            for a in members {
                egress.push(rule(&rules, a));
                notes.push(a.note());
            }
            let mut object = json!({
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {
                    "name": object_name(&base, shard),
                    "namespace": &rules.namespace,
                    "labels": rules.labels(),
                    "annotations": {super::RULES_ANNOTATION: rules_annotation(&notes)},
                },
                "spec": {
                    "podSelector": {"matchLabels": &rules.selector},
                    "policyTypes": ["Egress"],
                    "egress": egress,
                },
            });
            // An owner reference cannot cross namespaces: a data plane
            // elsewhere has its policies deleted by the writer alone.
            if !rules.uid.is_empty() && rules.namespace == *gateway.namespace {
                object["metadata"]["ownerReferences"] = json!([{
                    "apiVersion": "gateway.networking.k8s.io/v1",
                    "kind": "Gateway",
                    "name": &*gateway.name,
                    "uid": rules.uid,
                }]);
            }
            object
        }))
    }

    fn read_rules(&self, object: &Value) -> Vec<Allowed> {
        let rules = object["spec"]["egress"].as_array().map(Vec::as_slice).unwrap_or_default();
        let read = |(index, kind, key, hostname, via): (usize, &str, ObjectRef, &str, Option<&str>)| {
            let rule = rules.get(index)?;
            let ports = rule["ports"].as_array()?;
            let port = port_ref(&ports.first()?["port"])?;
            let protocols = (ports.iter())
                .filter(|p| port_ref(&p["port"]).as_ref() == Some(&port))
                .filter_map(|p| Protocol::parse(p["protocol"].as_str()))
                .fold(Protocols::default(), Protocols::with);
            let to = rule["to"].as_array()?;
            let cidrs = || to.iter().filter_map(|peer| peer["ipBlock"]["cidr"].as_str()?.parse::<IpNet>().ok());
            let destination = match to.first()?.get("podSelector") {
                Some(selector) => {
                    Destination::Pods { labels: serde_json::from_value(selector["matchLabels"].clone()).ok()? }
                }
                None if hostname.starts_with('(') => Destination::Networks(cidrs().collect()),
                None => Destination::Addresses {
                    hostname: hostname.into(),
                    addresses: address_list(cidrs().map(|n| n.addr())),
                },
            };
            Some(Allowed { source: annotated_source(kind, key, via), destination, port, protocols })
        };
        annotated(object).filter_map(read).collect()
    }

    /// NetworkPolicies add up: one that selects the same data-plane Pods
    /// (same namespace, a podSelector those Pods' labels satisfy) and allows
    /// egress beyond single addresses (a rule without peers, or an ipBlock
    /// wider than one address) lets them reach what we never vetted. A
    /// podSelector with matchExpressions is taken to select them (it may), so
    /// the warning errs on the side of telling.
    fn widens(&self, ours: &Value, other: &Value) -> Option<String> {
        if ours["metadata"]["namespace"] != other["metadata"]["namespace"] {
            return None;
        }
        let our_labels = &ours["spec"]["podSelector"]["matchLabels"];
        let selector = &other["spec"]["podSelector"];
        let labels_fit = selector["matchLabels"].as_object().into_iter().flatten().all(|(k, v)| &our_labels[k] == v);
        if !labels_fit {
            return None;
        }
        let types = other["spec"]["policyTypes"].as_array();
        let rules = other["spec"]["egress"].as_array().map(Vec::as_slice).unwrap_or_default();
        let governs_egress = match types {
            Some(types) => types.iter().any(|t| t == "Egress"),
            None => !rules.is_empty(),
        };
        if !governs_egress {
            return None;
        }
        let name = other["metadata"]["name"].as_str().unwrap_or_default();
        for (i, rule) in rules.iter().enumerate() {
            let peers = rule["to"].as_array().map(Vec::as_slice).unwrap_or_default();
            if peers.is_empty() {
                return Some(format!(
                    "NetworkPolicy {name} selects this Gateway's data-plane Pods and its egress[{i}] allows every destination, so the egress policy xbackend-controller writes does not restrict them."
                ));
            }
            let wide = peers
                .iter()
                .filter_map(|p| p["ipBlock"]["cidr"].as_str()?.parse::<IpNet>().ok())
                .find(|net| net.prefix_len() < net.max_prefix_len());
            if let Some(net) = wide {
                return Some(format!(
                    "NetworkPolicy {name} selects this Gateway's data-plane Pods and its egress[{i}] allows {net}, wider than the vetted addresses xbackend-controller allows: policies add up."
                ));
            }
        }
        None
    }
}

/// `xbackend-egress-<gateway>[-<shard>]`; a Gateway name is at most 253
/// characters, so a long one is cut and told apart by its hash.
fn object_name(gateway: &str, shard: usize) -> String {
    let suffix = if shard == 0 { String::new() } else { format!("-{shard}") };
    let name = format!("xbackend-egress-{gateway}{suffix}");
    if name.len() <= 253 {
        return name;
    }
    let hash = super::fnv(&ObjectRef::new("", gateway)) % usize::MAX as u64;
    format!("xbackend-egress-{}-{hash:x}{suffix}", &gateway[..200])
}

fn dns_rule(dns: &Dns) -> Value {
    let ports = json!([{"protocol": "UDP", "port": dns.port}, {"protocol": "TCP", "port": dns.port}]);
    let to: Vec<Value> = match &dns.peers {
        DnsPeers::Pods { namespace, labels } => vec![json!({
            "namespaceSelector": {"matchLabels": {super::NAMESPACE_NAME_LABEL: namespace}},
            "podSelector": {"matchLabels": labels},
        })],
        DnsPeers::Cidrs(cidrs) => cidrs.iter().map(|c| json!({"ipBlock": {"cidr": c.to_string()}})).collect(),
    };
    json!({"to": to, "ports": ports})
}

fn rule(rules: &Rules, a: &Allowed) -> Value {
    let port = |port: &PortRef| match port {
        PortRef::Number(n) => json!(n),
        PortRef::Name(name) => json!(&**name),
    };
    let ports: Vec<Value> =
        rules.ports(a).iter().map(|(p, n)| json!({"protocol": p.name(), "port": port(n)})).collect();
    let to: Vec<Value> = match &a.destination {
        Destination::Addresses { addresses, .. } => {
            addresses.iter().map(|ip| json!({"ipBlock": {"cidr": IpNet::from(*ip).to_string()}})).collect()
        }
        Destination::Networks(networks) => {
            networks.iter().map(|net| json!({"ipBlock": {"cidr": net.to_string()}})).collect()
        }
        Destination::Pods { labels } => vec![json!({
            "namespaceSelector": {"matchLabels": {super::NAMESPACE_NAME_LABEL: a.namespace()}},
            "podSelector": {"matchLabels": labels},
        })],
    };
    json!({"to": to, "ports": ports})
}

/// A port as the API writes it: a number or a name.
fn port_ref(port: &Value) -> Option<PortRef> {
    match port {
        Value::Number(n) => Some(PortRef::Number(u16::try_from(n.as_u64()?).ok()?)),
        Value::String(name) => Some(PortRef::Name(name.as_str().into())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::testing::*;
    use super::super::{
        Config, DataPlane, GATEWAY_NAME_LABEL, OWNED_LABEL, OWNED_NAMESPACE_LABEL, PolicyObject, RULES_ANNOTATION,
        stands,
    };
    use super::*;

    fn policies(allowed: &[Allowed], config: &Config) -> Vec<Value> {
        render(&NetworkPolicy, allowed, config)
    }

    #[test]
    fn one_policy_selects_the_data_plane_and_allows_exactly_what_is_vetted() {
        let web = pods("web", &[("app", "web")]);
        let dns = udp(on_port(external("dns", &["192.0.2.53"]), 53));
        let allowed = [external("api", &["192.0.2.10", "2001:db8::10"]), web, dns];
        let out = policies(&allowed, &Config::default());
        assert_eq!(out.len(), 1);
        let p = &out[0];
        assert_eq!(p["metadata"]["name"], "xbackend-egress-gw");
        assert_eq!(p["metadata"]["namespace"], "infra");
        assert_eq!(p["metadata"]["labels"][OWNED_LABEL], "gw");
        assert_eq!(p["spec"]["podSelector"], json!({"matchLabels": {GATEWAY_NAME_LABEL: "gw"}}));
        assert_eq!(p["spec"]["policyTypes"], json!(["Egress"]));
        let egress = p["spec"]["egress"].as_array().unwrap();
        assert_eq!(egress.len(), 5, "DNS, cluster, then one rule per XBackend in name order");
        assert_eq!(egress[0]["to"][0]["podSelector"]["matchLabels"]["k8s-app"], "kube-dns");
        assert_eq!(egress[1], json!({"to": [{"namespaceSelector": {}}]}));
        assert_eq!(
            egress[2],
            json!({"to": [{"ipBlock": {"cidr": "192.0.2.10/32"}}, {"ipBlock": {"cidr": "2001:db8::10/128"}}], "ports": [{"protocol": "TCP", "port": 443}]})
        );
        assert_eq!(egress[3]["ports"], json!([{"protocol": "TCP", "port": 53}, {"protocol": "UDP", "port": 53}]));
        assert_eq!(
            egress[4]["to"][0],
            json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "app"}}, "podSelector": {"matchLabels": {"app": "web"}}})
        );
        let notes = p["metadata"]["annotations"][RULES_ANNOTATION].as_str().unwrap();
        assert!(notes.contains("egress[2]: XBackend app/api api.example.com (2 addresses), port 443"), "{notes}");
    }

    #[test]
    fn without_the_cluster_rule_and_with_resolver_addresses() {
        let dns = super::super::Dns { peers: DnsPeers::Cidrs(vec!["169.254.20.10/32".parse().unwrap()]), port: 53 };
        let config = Config { cluster: Some(ClusterMode::None), dns, ..Config::default() };
        let out = policies(&[], &config);
        assert_eq!(
            out[0]["spec"]["egress"],
            json!([{"to": [{"ipBlock": {"cidr": "169.254.20.10/32"}}], "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}])
        );
    }

    #[test]
    fn same_inputs_same_bytes_whatever_the_order() {
        let a = [external("a", &["192.0.2.1"]), external("b", &["192.0.2.2"])];
        let b = [a[1].clone(), a[0].clone()];
        let text = |v: &[Value]| serde_json::to_string(v).unwrap();
        assert_eq!(text(&policies(&a, &Config::default())), text(&policies(&b, &Config::default())));
    }

    /// Thousands of XBackends with 64 addresses each spread over objects
    /// under 512 KiB, and one XBackend's change rewrites exactly one object.
    #[test]
    fn large_gateways_split_into_small_objects_one_change_one_object() {
        let addresses: Vec<String> = (0..64).map(|i| format!("2001:db8:ffff:ffff:ffff:ffff:ffff:{i:x}")).collect();
        let refs: Vec<&str> = addresses.iter().map(String::as_str).collect();
        let allowed: Vec<Allowed> = (0..1200).map(|i| external(&format!("backend-{i:05}"), &refs)).collect();
        let before = policies(&allowed, &Config::default());
        assert_eq!(before.len(), 32, "1200 / 64 rounded up to a power of two");
        for p in &before {
            let size = serde_json::to_vec(p).unwrap().len();
            assert!(size < 512 * 1024, "{} is {size} bytes", p["metadata"]["name"]);
        }
        let mut changed = allowed.clone();
        changed[1134] = external("backend-01134", &["192.0.2.99"]);
        let after = policies(&changed, &Config::default());
        let differing = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        assert_eq!(differing, 1);
    }

    #[test]
    fn long_gateway_names_still_make_valid_names() {
        let long = "g".repeat(253);
        let name = object_name(&long, 3);
        assert!(name.len() <= 253 && name.ends_with("-3"), "{name}");
        assert_ne!(object_name(&long, 0), object_name(&format!("{}h", &long[..252]), 0));
    }

    #[test]
    fn rules_read_back_as_they_were_built() {
        let stun = udp(external("stun", &["192.0.2.16"]));
        let named = service("web", &[("app", "web")], PortRef::Name("http".into()));
        let allowed =
            vec![external("api", &["192.0.2.10", "2001:db8::10"]), stun, pods("web", &[("app", "web")]), named];
        let out = policies(&allowed, &Config::default());
        let mut read: Vec<Allowed> = NetworkPolicy.read_rules(&out[0]);
        read.sort_by(|a, b| a.source.cmp(&b.source));
        assert_eq!(read, allowed);
        let mut edited = out[0].clone();
        edited["spec"]["egress"] = json!([]);
        assert!(NetworkPolicy.read_rules(&edited).is_empty(), "rules that are not there are not read");
    }

    /// An empty `to` allows every destination: never write one.
    #[test]
    fn an_xbackend_without_addresses_gets_no_rule() {
        let out = policies(&[external("pending", &[]), pods("web", &[])], &Config::default());
        let egress = out[0]["spec"]["egress"].as_array().unwrap();
        assert_eq!(egress.len(), 2, "DNS and cluster only: {egress:?}");
        assert!(egress.iter().all(|rule| rule["to"].as_array().is_some_and(|to| !to.is_empty())));
    }

    #[test]
    fn stands_ignores_what_others_add_but_not_edits_to_ours() {
        let policy = policies(&[external("api", &["192.0.2.10"])], &Config::default()).remove(0);
        let mut theirs = policy.clone();
        theirs["metadata"]["labels"]["team"] = json!("x");
        theirs["metadata"]["resourceVersion"] = json!("7");
        let stands =
            |a: &Value, b: &Value| stands(&PolicyObject::from_value(&KIND, a), &PolicyObject::from_value(&KIND, b));
        assert!(stands(&policy, &theirs));
        let mut edited = policy.clone();
        edited["spec"]["egress"][2]["to"][0]["ipBlock"]["cidr"] = json!("0.0.0.0/0");
        assert!(!stands(&policy, &edited));
        let mut relabelled = policy.clone();
        relabelled["metadata"]["annotations"] = json!({});
        assert!(!stands(&policy, &relabelled));
    }

    /// What the apiserver returns (typed, then JSON again) reads as the same
    /// text as what was built: otherwise every round would write again.
    #[test]
    fn a_policy_read_back_from_the_api_stands_as_built() {
        let web = udp(pods("web", &[("app", "web")]));
        let config = Config::default();
        let gateway = gw();
        let allowed = [external("api", &["192.0.2.10", "2001:db8::1"]), web];
        let built: Vec<Value> =
            NetworkPolicy.render(Rules::new(&gateway, "uid-1", "ours", &allowed, &config)).collect();
        let mut typed: k8s_openapi::api::networking::v1::NetworkPolicy =
            serde_json::from_value(built[0].clone()).unwrap();
        typed.metadata.uid = Some("u-1".into());
        typed.metadata.resource_version = Some("7".into());
        typed.metadata.managed_fields = Some(vec![Default::default()]);
        let back = PolicyObject::from_value(&KIND, &serde_json::to_value(&typed).unwrap());
        assert!(stands(&PolicyObject::from_value(&KIND, &built[0]), &back));
        // Equal, not only standing: the writer keeps one copy for both.
        assert_eq!(PolicyObject::from_value(&KIND, &built[0]), back);
        assert_eq!(PolicyObject::from_value(&KIND, &built[0]).to_value(), built[0]);
    }

    /// Envoy Gateway runs every data plane in its own namespace, labelled
    /// with the owning Gateway: the policy goes there, named for the Gateway.
    #[test]
    fn a_class_can_place_its_data_planes_elsewhere() {
        let envoy: DataPlane = "envoy-gateway-system:gateway.envoyproxy.io/owning-gateway-name={name},gateway.envoyproxy.io/owning-gateway-namespace={namespace}".parse().unwrap();
        let config = Config { data_planes: BTreeMap::from([("eg".to_string(), envoy)]), ..Config::default() };
        let gateway = gw();
        let out: Vec<Value> = NetworkPolicy.render(Rules::new(&gateway, "uid", "eg", &[], &config)).collect();
        assert_eq!(out[0]["metadata"]["namespace"], "envoy-gateway-system");
        assert_eq!(out[0]["metadata"]["name"], "xbackend-egress-infra-gw");
        assert_eq!(out[0]["metadata"]["labels"][OWNED_NAMESPACE_LABEL], "infra");
        assert!(out[0]["metadata"].get("ownerReferences").is_none(), "no owner across namespaces");
        assert_eq!(
            out[0]["spec"]["podSelector"]["matchLabels"],
            json!({"gateway.envoyproxy.io/owning-gateway-name": "gw", "gateway.envoyproxy.io/owning-gateway-namespace": "infra"})
        );
        for bad in ["no-colon", "ns:", "ns:=v", "ns:k"] {
            assert!(bad.parse::<DataPlane>().is_err(), "{bad}");
        }
        assert_eq!(":app=gw".parse::<DataPlane>().unwrap().namespace, None, "the Gateway's namespace");
    }

    #[test]
    fn a_wider_policy_on_the_same_pods_is_told() {
        let ours = policies(&[], &Config::default()).remove(0);
        let other = |selector: Value, types: Value, egress: Value| json!({"metadata": {"name": "theirs", "namespace": "infra"}, "spec": {"podSelector": selector, "policyTypes": types, "egress": egress}});
        let widens = |other: &Value| NetworkPolicy.widens(&ours, other);
        let all_pods = json!({});
        let open = json!([{}]);
        assert!(
            widens(&other(all_pods.clone(), json!(["Egress"]), open.clone())).unwrap().contains("every destination")
        );
        let internet = json!([{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]);
        assert!(widens(&other(all_pods.clone(), json!(["Egress"]), internet.clone())).unwrap().contains("0.0.0.0/0"));
        let same = json!({"matchLabels": {GATEWAY_NAME_LABEL: "gw"}});
        assert!(widens(&other(same, Value::Null, internet.clone())).is_some(), "policyTypes default from the rules");
        let elsewhere = json!({"matchLabels": {"app": "db"}});
        assert!(widens(&other(elsewhere, json!(["Egress"]), open.clone())).is_none(), "other Pods");
        assert!(widens(&other(all_pods.clone(), json!(["Ingress"]), Value::Null)).is_none(), "ingress only");
        let narrow = json!([{"to": [{"ipBlock": {"cidr": "192.0.2.7/32"}}, {"podSelector": {}}]}]);
        assert!(widens(&other(all_pods.clone(), json!(["Egress"]), narrow)).is_none(), "single addresses and Pods");
        let mut moved = other(all_pods, json!(["Egress"]), open);
        moved["metadata"]["namespace"] = json!("app");
        assert!(widens(&moved).is_none(), "another namespace");
    }

    /// A route's Service: its Pods on the target port (a name stays a name),
    /// in the Service's namespace, with the protocol; Istio ambient's HBONE
    /// port joins every Pods rule; what the data plane needs comes after DNS.
    #[test]
    fn route_services_and_needs_are_rules_of_their_own() {
        let named = service("web", &[("app", "web")], PortRef::Name("http".into()));
        let mut numbered = service("db", &[("app", "db")], PortRef::Number(5432));
        numbered.protocols = Protocols::of(Protocol::Udp);
        let istiod = Allowed {
            source: super::super::Source::Need(ObjectRef::new("istio-system", "istiod")),
            destination: Destination::Pods { labels: BTreeMap::from([("app".into(), "istiod".into())]) },
            port: PortRef::Number(15012),
            protocols: Protocols::TCP,
        };
        let config = Config { cluster: Some(ClusterMode::Routes), ..Config::default() };
        let (gateway, allowed) = (gw(), [named, numbered]);
        let mut rules = Rules::new(&gateway, "", "ours", &allowed, &config);
        rules.needs = vec![&istiod];
        let hbone = [(Protocol::Tcp, 15008)];
        rules.pod_ports = &hbone;
        let out: Vec<Value> = NetworkPolicy.render(rules).collect();
        let egress = out[0]["spec"]["egress"].as_array().unwrap();
        assert_eq!(egress.len(), 4, "DNS, istiod, then the two Services (no cluster rule): {egress:#?}");
        assert_eq!(
            egress[1]["to"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            "istio-system"
        );
        assert_eq!(egress[1]["ports"], json!([{"protocol": "TCP", "port": 15012}, {"protocol": "TCP", "port": 15008}]));
        assert_eq!(egress[2]["ports"], json!([{"protocol": "UDP", "port": 5432}, {"protocol": "TCP", "port": 15008}]));
        assert_eq!(egress[3]["to"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], "web");
        assert_eq!(
            egress[3]["ports"],
            json!([{"protocol": "TCP", "port": "http"}, {"protocol": "TCP", "port": 15008}])
        );
        let notes = out[0]["metadata"]["annotations"][RULES_ANNOTATION].as_str().unwrap();
        assert!(notes.contains("egress[1]: data plane needs istio-system/istiod its Pods, port 15012"), "{notes}");
        assert!(notes.contains("egress[3]: Service web/web its Pods, port http, for HTTPRoute app/r"), "{notes}");
    }

    /// With --dns-service, the DNS rule follows the port DNS answers on.
    #[test]
    fn the_dns_rule_follows_the_dns_port() {
        let config = Config { dns: super::super::Dns { port: 1053, ..Default::default() }, ..Config::default() };
        let out = policies(&[], &config);
        assert_eq!(
            out[0]["spec"]["egress"][0]["ports"],
            json!([{"protocol": "UDP", "port": 1053}, {"protocol": "TCP", "port": 1053}])
        );
    }
}
