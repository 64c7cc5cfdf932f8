//! Egress NetworkPolicies for Gateway data planes (docs/design.md §6b): what
//! each judged Gateway may reach, as objects any CNI enforces. Pure: shared by
//! `analyze` and the runtime's policy writer.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use serde_json::{Value, json};

use crate::api::XBackendSpec;
use crate::model::{Ancestor, ObjectRef, Referrer, RouteKind};

/// Label on every NetworkPolicy this controller owns; its value is the Gateway's name.
pub const OWNED_LABEL: &str = "gateway.networking.x-k8s.io/egress-for-gateway";
/// The Gateway's namespace, on the same objects.
pub const OWNED_NAMESPACE_LABEL: &str = "gateway.networking.x-k8s.io/egress-for-gateway-namespace";
/// Annotation that says which XBackend each egress rule serves.
pub const RULES_ANNOTATION: &str = "gateway.networking.x-k8s.io/egress-rules";
/// The label GEP-1762 implementations (Istio among them) put on a Gateway's data-plane Pods.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// XBackends per object: 64 hosts of at most 64 addresses each stay far under 512 KiB.
pub const BACKENDS_PER_OBJECT: usize = 64;

/// Where a Gateway's DNS queries go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsPeers {
    /// Cluster DNS Pods: namespace and labels.
    Pods { namespace: String, labels: BTreeMap<String, String> },
    /// Resolver addresses (node-local caches), as ipBlocks.
    Cidrs(Vec<IpNet>),
}

impl Default for DnsPeers {
    fn default() -> Self {
        DnsPeers::Pods {
            namespace: "kube-system".into(),
            labels: BTreeMap::from([("k8s-app".to_string(), "kube-dns".to_string())]),
        }
    }
}

/// How policies are shaped, from the `--egress-*` flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Allow every Pod in every namespace (routes to Services keep working).
    pub allow_cluster: bool,
    pub dns: DnsPeers,
    /// Where the data planes of a GatewayClass run, when not beside their
    /// Gateway with GEP-1762's label (`--egress-data-plane`).
    pub data_planes: BTreeMap<String, DataPlane>,
    /// The namespaces policies may be written to (`--egress-namespace`);
    /// None: every namespace.
    pub namespaces: Option<BTreeSet<String>>,
}

impl Default for Config {
    fn default() -> Self {
        Config { allow_cluster: true, dns: DnsPeers::default(), data_planes: BTreeMap::new(), namespaces: None }
    }
}

/// Which Pods serve a Gateway: a namespace (None: the Gateway's) and labels
/// whose values may say `{name}` and `{namespace}` (the Gateway's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataPlane {
    pub namespace: Option<String>,
    pub labels: Vec<(String, String)>,
}

impl Default for DataPlane {
    /// GEP-1762 (Istio among others): beside the Gateway, labelled with its name.
    fn default() -> Self {
        DataPlane { namespace: None, labels: vec![(GATEWAY_NAME_LABEL.to_string(), "{name}".to_string())] }
    }
}

impl std::str::FromStr for DataPlane {
    type Err = String;

    /// `NAMESPACE:KEY=VALUE,...`; an empty NAMESPACE means the Gateway's.
    fn from_str(text: &str) -> Result<DataPlane, String> {
        let (namespace, labels) = text.split_once(':').ok_or("expected NAMESPACE:KEY=VALUE,...")?;
        let labels: Vec<(String, String)> = labels
            .split(',')
            .map(|pair| pair.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect::<Option<_>>()
            .ok_or("each label is KEY=VALUE (VALUE may say {name} and {namespace})")?;
        if labels.is_empty() || labels.iter().any(|(k, _)| k.is_empty()) {
            return Err("at least one label, none with an empty key".into());
        }
        Ok(DataPlane { namespace: (!namespace.is_empty()).then(|| namespace.to_string()), labels })
    }
}

impl DataPlane {
    /// The namespace and labels of `gateway`'s data-plane Pods.
    fn select(&self, gateway: &ObjectRef) -> (String, BTreeMap<String, String>) {
        let fill = |v: &str| v.replace("{name}", &gateway.name).replace("{namespace}", &gateway.namespace);
        let labels = self.labels.iter().map(|(k, v)| (k.clone(), fill(v))).collect();
        (self.namespace.clone().unwrap_or_else(|| gateway.namespace.to_string()), labels)
    }
}

/// One Accepted XBackend behind a Gateway, as the policy needs it. Cheap to
/// copy (shared name and addresses): the state, each decision's inputs and
/// the writer all hold one per XBackend and Gateway.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Allowed {
    pub backend: ObjectRef,
    pub destination: Destination,
    pub port: u16,
    /// Used from a UDPRoute through this Gateway: UDP besides TCP.
    pub udp: bool,
}

impl Allowed {
    fn has_peers(&self) -> bool {
        match &self.destination {
            Destination::Addresses { addresses, .. } => !addresses.is_empty(),
            Destination::Pods { labels } => !labels.is_empty(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Destination {
    /// ExternalHostname: the vetted addresses, sorted and distinct (hold-down
    /// applied by the caller; see `address_list`).
    Addresses { hostname: Arc<str>, addresses: Arc<[IpAddr]> },
    /// EndpointSelector: Pods of the XBackend's namespace with these labels.
    Pods { labels: BTreeMap<String, String> },
}

/// Addresses as `Destination::Addresses` keeps them: sorted, each once.
pub fn address_list(addresses: impl IntoIterator<Item = IpAddr>) -> Arc<[IpAddr]> {
    addresses.into_iter().collect::<BTreeSet<IpAddr>>().into_iter().collect()
}

/// What one XBackend adds to the policies of the Gateways it is Accepted
/// behind: `accepted` pairs each ancestor with its entry's Accepted status;
/// `addresses` are the vetted (and held) ones of an ExternalHostname. A
/// port outside 1..65535 (an invalid spec is never Accepted) adds nothing.
pub fn uses<'a>(
    key: &ObjectRef,
    spec: &XBackendSpec,
    accepted: impl IntoIterator<Item = (&'a Ancestor, bool)>,
    addresses: &BTreeSet<IpAddr>,
) -> Vec<(ObjectRef, Allowed)> {
    let Some(port) = spec.port.value().and_then(|p| u16::try_from(p).ok()).filter(|p| *p > 0) else {
        return Vec::new();
    };
    let destination = match (&spec.external_hostname, &spec.endpoint_selector) {
        (Some(external), _) => Destination::Addresses {
            hostname: crate::names::normalize(&external.hostname).into(),
            addresses: address_list(addresses.iter().copied()),
        },
        (None, Some(selector)) => Destination::Pods { labels: selector.match_labels.clone() },
        (None, None) => return Vec::new(),
    };
    let mut uses: Vec<(ObjectRef, Allowed)> = accepted
        .into_iter()
        .filter(|(_, accepted)| *accepted)
        .map(|(ancestor, _)| {
            let udp = ancestor.referrers.contains(Referrer::Route(RouteKind::Udp));
            let allowed = Allowed { backend: key.clone(), destination: destination.clone(), port, udp };
            (ancestor.gateway.clone(), allowed)
        })
        .collect();
    // The state keeps this per XBackend: no spare capacity (a filtered
    // collect starts at four).
    uses.shrink_to_fit();
    uses
}

/// The NetworkPolicies for one Gateway, in shard order. Same inputs, same
/// bytes. Shard 0 carries DNS and cluster rules; XBackends spread over
/// shards by a stable hash of their name, so one XBackend's change rewrites
/// one object. A Gateway with no Accepted XBackend still gets shard 0:
/// its data plane may reach DNS (and the cluster) and nothing outside.
pub fn policies(gateway: &ObjectRef, class: &str, allowed: &[Allowed], config: &Config) -> Vec<Value> {
    shards(gateway, class, allowed, config).collect()
}

/// `policies`, one object at a time: a Gateway with thousands of rules is
/// never held as JSON trees all at once.
fn shards<'a>(
    gateway: &'a ObjectRef,
    class: &str,
    allowed: &'a [Allowed],
    config: &'a Config,
) -> impl Iterator<Item = Value> + 'a {
    let (namespace, selector) = config.data_planes.get(class).cloned().unwrap_or_default().select(gateway);
    // In a namespace shared by many Gateways' data planes, the name says whose.
    let base = if namespace == *gateway.namespace {
        gateway.name.to_string()
    } else {
        format!("{}-{}", gateway.namespace, gateway.name)
    };
    // A rule with no peer would allow every destination: an XBackend with no
    // vetted address yet (or an empty selector) gets no rule at all.
    let allowed: Vec<&Allowed> = allowed.iter().filter(|a| a.has_peers()).collect();
    let shards = shard_count(allowed.len());
    let mut by_shard: Vec<Vec<&Allowed>> = vec![Vec::new(); shards];
    for a in allowed {
        by_shard[shard_of(&a.backend, shards)].push(a);
    }
    by_shard.into_iter().enumerate().map(move |(shard, mut members)| {
        members.sort_by(|a, b| a.backend.cmp(&b.backend));
        let mut rules = Vec::new();
        let mut notes = Vec::new();
        if shard == 0 {
            rules.push(dns_rule(&config.dns));
            notes.push("DNS".to_string());
            if config.allow_cluster {
                rules.push(json!({"to": [{"namespaceSelector": {}}]}));
                notes.push("every Pod of the cluster (--egress-policy-allow-cluster)".to_string());
            }
        }
        for a in members {
            rules.push(backend_rule(a));
            notes.push(note(a));
        }
        let annotation: Vec<String> = notes.iter().enumerate().map(|(i, n)| format!("egress[{i}]: {n}")).collect();
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {
                "name": object_name(&base, shard),
                "namespace": &namespace,
                "labels": {
                    OWNED_LABEL: &*gateway.name,
                    OWNED_NAMESPACE_LABEL: &*gateway.namespace,
                    "app.kubernetes.io/managed-by": "xbackend-controller",
                },
                "annotations": {RULES_ANNOTATION: annotation.join("\n")},
            },
            "spec": {
                "podSelector": {"matchLabels": &selector},
                "policyTypes": ["Egress"],
                "egress": rules,
            },
        })
    })
}

/// A power of two, so the count (and every XBackend's shard) changes only
/// when the number of XBackends doubles or halves.
fn shard_count(backends: usize) -> usize {
    backends.div_ceil(BACKENDS_PER_OBJECT).max(1).next_power_of_two()
}

/// FNV-1a over "namespace/name": stable across runs and releases, unlike std's hasher.
fn shard_of(backend: &ObjectRef, shards: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in backend.namespace.bytes().chain([b'/']).chain(backend.name.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % shards as u64) as usize
}

/// `xbackend-egress-<gateway>[-<shard>]`; a Gateway name is at most 253
/// characters, so a long one is cut and told apart by its hash.
fn object_name(gateway: &str, shard: usize) -> String {
    let suffix = if shard == 0 { String::new() } else { format!("-{shard}") };
    let name = format!("xbackend-egress-{gateway}{suffix}");
    if name.len() <= 253 {
        return name;
    }
    let hash = shard_of(&ObjectRef::new("", gateway), usize::MAX);
    format!("xbackend-egress-{}-{hash:x}{suffix}", &gateway[..200])
}

fn dns_rule(dns: &DnsPeers) -> Value {
    let ports = json!([{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]);
    let to: Vec<Value> = match dns {
        DnsPeers::Pods { namespace, labels } => vec![json!({
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "podSelector": {"matchLabels": labels},
        })],
        DnsPeers::Cidrs(cidrs) => cidrs.iter().map(|c| json!({"ipBlock": {"cidr": c.to_string()}})).collect(),
    };
    json!({"to": to, "ports": ports})
}

fn backend_rule(a: &Allowed) -> Value {
    let mut ports = vec![json!({"protocol": "TCP", "port": a.port})];
    if a.udp {
        ports.push(json!({"protocol": "UDP", "port": a.port}));
    }
    let to: Vec<Value> = match &a.destination {
        Destination::Addresses { addresses, .. } => {
            addresses.iter().map(|ip| json!({"ipBlock": {"cidr": IpNet::from(*ip).to_string()}})).collect()
        }
        Destination::Pods { labels } => vec![json!({
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": &*a.backend.namespace}},
            "podSelector": {"matchLabels": labels},
        })],
    };
    json!({"to": to, "ports": ports})
}

fn note(a: &Allowed) -> String {
    let what = match &a.destination {
        Destination::Addresses { hostname, addresses } => {
            let plural = if addresses.len() == 1 { "" } else { "es" };
            format!("{hostname} ({} address{plural})", addresses.len())
        }
        Destination::Pods { .. } => "its Pods".to_string(),
    };
    format!("XBackend {} {what}, port {}", a.backend, a.port)
}

/// What the policies of a cluster depend on: every judged Gateway (with
/// its uid, for the owner reference), the Accepted XBackends behind each
/// (addresses as last answered; empty when no answer), and the XBackends not
/// judged yet, whose rules are kept as they stand.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Inputs {
    /// Each judged Gateway with its uid and class name.
    pub gateways: Vec<(ObjectRef, String, String)>,
    pub behind: BTreeMap<ObjectRef, Vec<Allowed>>,
    pub unknown: BTreeSet<ObjectRef>,
}

/// A NetworkPolicy as the writer keeps it: its metadata as JSON (a few
/// fields), its spec as canonical JSON text. As a tree of small maps the spec
/// of thousands of rules costs several times its text, once for what should
/// stand and once for what does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub metadata: Value,
    spec: Box<str>,
}

impl Policy {
    /// From a NetworkPolicy as JSON (`metadata` and `spec`; the rest is not kept).
    pub fn from_value(policy: &Value) -> Policy {
        // serde_json's maps are sorted: the same spec gives the same text.
        Policy { metadata: policy["metadata"].clone(), spec: policy["spec"].to_string().into() }
    }

    /// A NetworkPolicy as read from the API, kept as `from_value` keeps one
    /// built here: identity, labels, annotations, owners and spec. Not its
    /// uid (the writer keeps that apart), managedFields (as large as the
    /// spec), status or versions: one that stands as built is equal to it.
    pub fn from_object(policy: &k8s_openapi::api::networking::v1::NetworkPolicy) -> serde_json::Result<Policy> {
        let m = &policy.metadata;
        let metadata = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: m.name.clone(),
            namespace: m.namespace.clone(),
            labels: m.labels.clone(),
            annotations: m.annotations.clone(),
            owner_references: m.owner_references.clone(),
            ..Default::default()
        };
        let spec = serde_json::to_string(&serde_json::to_value(&policy.spec)?)?;
        Ok(Policy { metadata: serde_json::to_value(metadata)?, spec: spec.into() })
    }

    /// The whole object, as applied and printed.
    pub fn to_value(&self) -> Value {
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": self.metadata,
            "spec": self.spec(),
        })
    }

    pub fn spec(&self) -> Value {
        serde_json::from_str(&self.spec).unwrap_or_default()
    }

    /// How many peers are ipBlocks (one vetted or held address each, and
    /// the DNS resolvers' ranges).
    pub fn address_peers(&self) -> usize {
        self.spec.matches("\"ipBlock\":").count()
    }
}

/// NetworkPolicies by namespace/name, shared: a Gateway's unchanged policies
/// pass from one decision to the next without being copied.
pub type Policies = BTreeMap<ObjectRef, Arc<Policy>>;

/// What one decision gives: the policies that should stand, how many held
/// addresses the cap evicted, the Gateways whose data plane runs in a
/// namespace the controller may not write to (`Config::namespaces`), with
/// that namespace, and how many address peers each Gateway's policies hold.
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
    /// A digest of what they were built from (`Inputs`): uid, class, the
    /// XBackends behind it (addresses as answered) and those kept. Keeping
    /// the inputs themselves would cost another copy of every rule; two
    /// different inputs with the same 64-bit digest (about one in 2^64) would
    /// keep stale policies until the next full rebuild, at most `HOLD_TICK`.
    digest: u64,
    policies: Vec<(ObjectRef, Arc<Policy>)>,
}

type Given = (String, String, Vec<Allowed>, Vec<Allowed>);

fn digest(from: &Given) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    from.hash(&mut hasher);
    hasher.finish()
}

impl Decisions {
    /// The policies that should stand, given those that do (`current`, ours
    /// by label). Addresses go through the hold-down; an XBackend in
    /// `inputs.unknown` keeps the rule `current` has for it, so a restart or
    /// a failed reconcile never cuts a destination. A Gateway whose inputs
    /// are those of the last decision keeps its policies, unless `rebuild`
    /// (held addresses expire by time alone: the caller rebuilds now and then).
    #[allow(clippy::too_many_arguments)]
    pub fn decide(
        &mut self,
        inputs: &Inputs,
        current: &Policies,
        now: i64,
        hold: Hold,
        config: &Config,
        denied: &dyn Fn(IpAddr) -> bool,
        rebuild: bool,
    ) -> Decision {
        let held = &mut self.held;
        // The first time, what stands is held as if seen now: a restart extends
        // a hold, never cuts one.
        if !std::mem::replace(&mut held.seeded, true) {
            for (_, allowed) in current.values().flat_map(|p| read_rules(&p.to_value())) {
                if let Destination::Addresses { hostname, addresses } = allowed.destination {
                    held.seed(&hostname, addresses.iter().copied(), now);
                }
            }
        }
        // Only while some XBackend is not judged yet: read_rules parses every rule.
        let mut kept: BTreeMap<ObjectRef, Vec<Allowed>> = BTreeMap::new();
        if !inputs.unknown.is_empty() {
            for policy in current.values() {
                let labels = &policy.metadata["labels"];
                let Some(gateway) = labels[OWNED_LABEL].as_str() else { continue };
                let namespace = (labels[OWNED_NAMESPACE_LABEL].as_str())
                    .or(policy.metadata["namespace"].as_str())
                    .unwrap_or_default();
                for (backend, allowed) in read_rules(&policy.to_value()) {
                    if inputs.unknown.contains(&backend) {
                        kept.entry(ObjectRef::new(namespace, gateway)).or_default().push(allowed);
                    }
                }
            }
        }
        // Hostnames still in use: held ones of no use any more are forgotten.
        let mut live: BTreeSet<String> = BTreeSet::new();
        let mut decision = Decision::default();
        let mut built = BTreeMap::new();
        for (gateway, uid, class) in &inputs.gateways {
            let given = inputs.behind.get(gateway).cloned().unwrap_or_default();
            let kept = kept.remove(gateway).unwrap_or_default();
            for a in given.iter().chain(&kept) {
                if let Destination::Addresses { hostname, .. } = &a.destination {
                    live.insert(hostname.to_string());
                }
            }
            let from = (uid.clone(), class.clone(), given, kept);
            let digest = digest(&from);
            let done = match self.built.remove(gateway) {
                Some(done) if !rebuild && done.digest == digest => done,
                before => {
                    let before = before.map(|b| b.policies).unwrap_or_default();
                    let known = Known { before: &before, current };
                    let (policies, evicted) = build(gateway, &from, known, held, now, hold, config, denied);
                    decision.evicted += evicted;
                    Built { digest, policies }
                }
            };
            let mut addresses = None;
            for (key, policy) in &done.policies {
                match &config.namespaces {
                    Some(writable) if !writable.contains(&*key.namespace) => {
                        decision.unwritable.push((gateway.clone(), key.namespace.to_string()));
                    }
                    _ => {
                        *addresses.get_or_insert(0) += policy.address_peers();
                        decision.policies.insert(key.clone(), policy.clone());
                    }
                }
            }
            if let Some(addresses) = addresses {
                decision.addresses.insert(gateway.clone(), addresses);
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
    before: &'a [(ObjectRef, Arc<Policy>)],
    current: &'a Policies,
}

impl Known<'_> {
    fn find(&self, key: &ObjectRef, policy: &Policy) -> Option<Arc<Policy>> {
        let before = self.before.iter().find(|(k, _)| k == key).map(|(_, p)| p);
        before.into_iter().chain(self.current.get(key)).find(|p| ***p == *policy).cloned()
    }
}

/// One Gateway's policies from what `Decisions` keeps of it: the answered
/// addresses through the hold-down, the kept rules as they stand, and the
/// owner reference; with the count of addresses the cap evicted. An object
/// built the same as one `known` is that one: a rebuild that changes nothing,
/// or a first decision after a restart, holds one copy, and the writer sees
/// the pointer it confirmed.
#[allow(clippy::too_many_arguments)]
fn build(
    gateway: &ObjectRef,
    (uid, class, given, kept): &Given,
    known: Known,
    held: &mut Held,
    now: i64,
    hold: Hold,
    config: &Config,
    denied: &dyn Fn(IpAddr) -> bool,
) -> (Vec<(ObjectRef, Arc<Policy>)>, usize) {
    let mut evicted = 0;
    let mut allowed = given.clone();
    for a in &mut allowed {
        if let Destination::Addresses { hostname, addresses } = &mut a.destination {
            let now_held = if addresses.is_empty() {
                held.held(hostname, now, hold)
            } else {
                let (now_held, cap) = held.observe(hostname, addresses, now, hold, denied);
                evicted += cap;
                now_held
            };
            *addresses = now_held.into_iter().collect();
        }
    }
    allowed.extend(kept.iter().cloned());
    let policies = shards(gateway, class, &allowed, config).map(|mut policy| {
        // An owner reference cannot cross namespaces: a data plane
        // elsewhere has its policies deleted by the writer alone.
        if !uid.is_empty() && policy["metadata"]["namespace"] == *gateway.namespace {
            policy["metadata"]["ownerReferences"] = json!([{
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "Gateway",
                "name": &*gateway.name,
                "uid": uid,
            }]);
        }
        let name = policy["metadata"]["name"].as_str().unwrap_or_default();
        let namespace = policy["metadata"]["namespace"].as_str().unwrap_or_default();
        let key = ObjectRef::new(namespace, name);
        let policy = Policy::from_value(&policy);
        let known = known.find(&key, &policy);
        (key, known.unwrap_or_else(|| Arc::new(policy)))
    });
    (policies.collect(), evicted)
}

/// True when `current` already says what `desired` says: the same spec, and
/// our labels, annotation and owner reference among its own (others may add
/// theirs; comparing those would rewrite forever).
pub fn stands(desired: &Policy, current: &Policy) -> bool {
    let contains = |field: &str| {
        let (want, have) = (&desired.metadata[field], &current.metadata[field]);
        want.as_object().into_iter().flatten().all(|(k, v)| &have[k] == v)
    };
    let owners = |p: &Policy| -> Vec<(Value, Value)> {
        p.metadata["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|o| (o["uid"].clone(), o["kind"].clone()))
            .collect()
    };
    desired.spec == current.spec
        && contains("labels")
        && contains("annotations")
        && owners(desired).iter().all(|o| owners(current).contains(o))
}

/// Why `other` (a NetworkPolicy that is not ours) makes `ours` moot, if it
/// does: NetworkPolicies add up, so one that selects the same data-plane Pods
/// (same namespace, a podSelector those Pods' labels satisfy) and allows
/// egress beyond single addresses (a rule without peers, or an ipBlock wider
/// than one address) lets them reach what we never vetted. A podSelector
/// with matchExpressions is taken to select them (it may), so the warning errs
/// on the side of telling.
pub fn widens(ours: &Value, other: &Value) -> Option<String> {
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

/// The XBackend rules of a policy this module built, read back: the
/// runtime keeps the rules of XBackends it has not judged yet (after a
/// restart) as they stand, and seeds the hold-down from them. Rules it cannot
/// read (edited by hand) are left out: the next write puts them back.
pub fn read_rules(policy: &Value) -> Vec<(ObjectRef, Allowed)> {
    let notes = policy["metadata"]["annotations"][RULES_ANNOTATION].as_str().unwrap_or_default();
    let rules = policy["spec"]["egress"].as_array().map(Vec::as_slice).unwrap_or_default();
    notes.lines().filter_map(|line| read_rule(line, rules)).collect()
}

/// One annotation line, "egress[i]: XBackend ns/name hostname (...), port P",
/// with the rule it names.
fn read_rule(line: &str, rules: &[Value]) -> Option<(ObjectRef, Allowed)> {
    let (index, rest) = line.strip_prefix("egress[")?.split_once("]: XBackend ")?;
    let rule = rules.get(index.parse::<usize>().ok()?)?;
    let mut words = rest.split_whitespace();
    let (namespace, name) = words.next()?.split_once('/')?;
    let hostname = words.next()?;
    let ports = rule["ports"].as_array()?;
    let port = u16::try_from(ports.first()?["port"].as_u64()?).ok()?;
    let udp = ports.iter().any(|p| p["protocol"] == "UDP");
    let to = rule["to"].as_array()?;
    let destination = match to.first()?.get("podSelector") {
        Some(selector) => Destination::Pods { labels: serde_json::from_value(selector["matchLabels"].clone()).ok()? },
        None => Destination::Addresses {
            hostname: hostname.into(),
            addresses: address_list(
                to.iter().filter_map(|peer| peer["ipBlock"]["cidr"].as_str()?.parse::<IpNet>().ok()).map(|n| n.addr()),
            ),
        },
    };
    Some((
        ObjectRef::new(namespace, name),
        Allowed { backend: ObjectRef::new(namespace, name), destination, port, udp },
    ))
}

/// Addresses a hostname's answers have held, each with when it was last
/// seen, so a rotating answer does not cut connections a client still makes
/// to an address it cached (docs/design.md §6b, hold-down).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// Per hostname, each address with when it was last seen; a short list
    /// (a tree per hostname would cost more than its few entries).
    seen: BTreeMap<Box<str>, Vec<(IpAddr, i64)>>,
    /// Whether the standing policies have seeded it (once per process).
    seeded: bool,
}

/// Hold-down settings (`--egress-address-hold`, `--egress-max-addresses-per-host`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hold {
    pub seconds: i64,
    pub max_per_host: usize,
}

impl Default for Hold {
    fn default() -> Self {
        Hold { seconds: 3600, max_per_host: 64 }
    }
}

impl Held {
    fn entry(&mut self, hostname: &str) -> &mut Vec<(IpAddr, i64)> {
        if !self.seen.contains_key(hostname) {
            // Most hostnames answer one address: room for more only when needed.
            self.seen.insert(hostname.into(), Vec::with_capacity(1));
        }
        self.seen.get_mut(hostname).expect("just inserted")
    }

    /// Records a vetted answer for `hostname` at `now` (Unix seconds) and
    /// returns the addresses to allow: this answer's, plus earlier ones seen
    /// within the hold that `denied` does not refuse now, at most
    /// `max_per_host`, the least recently seen leaving first. The second value
    /// counts the addresses the cap evicted.
    ///
    /// A failed lookup is not an answer: call `held` instead, which keeps what is held.
    pub fn observe(
        &mut self,
        hostname: &str,
        answer: &[IpAddr],
        now: i64,
        hold: Hold,
        denied: impl Fn(IpAddr) -> bool,
    ) -> (BTreeSet<IpAddr>, usize) {
        let seen = self.entry(hostname);
        for ip in answer {
            match seen.iter_mut().find(|(held, _)| held == ip) {
                Some(entry) => entry.1 = now,
                None => seen.push((*ip, now)),
            }
        }
        seen.retain(|(ip, last)| now - *last <= hold.seconds && !denied(*ip));
        let mut evicted = 0;
        while seen.len() > hold.max_per_host.max(1) {
            let oldest = (0..seen.len()).min_by_key(|i| (seen[*i].1, seen[*i].0)).expect("non-empty");
            seen.swap_remove(oldest);
            evicted += 1;
        }
        (seen.iter().map(|(ip, _)| *ip).collect(), evicted)
    }

    /// Addresses a policy already allows, as if seen at `now`.
    fn seed(&mut self, hostname: &str, addresses: impl IntoIterator<Item = IpAddr>, now: i64) {
        let seen = self.entry(hostname);
        for ip in addresses {
            if !seen.iter().any(|(held, _)| *held == ip) {
                seen.push((ip, now));
            }
        }
    }

    /// Hostnames held.
    pub fn hostnames(&self) -> Vec<String> {
        self.seen.keys().map(|h| h.to_string()).collect()
    }

    /// What is held for `hostname` at `now`, without a new answer.
    pub fn held(&self, hostname: &str, now: i64, hold: Hold) -> BTreeSet<IpAddr> {
        let seen = self.seen.get(hostname).into_iter().flatten();
        seen.filter(|(_, last)| now - *last <= hold.seconds).map(|(ip, _)| *ip).collect()
    }

    /// Forgets a hostname: its XBackend is no longer Accepted or is gone, and
    /// its addresses leave at once.
    pub fn forget(&mut self, hostname: &str) {
        self.seen.remove(hostname);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn external(name: &str, addresses: &[&str]) -> Allowed {
        Allowed {
            backend: ObjectRef::new("app", name),
            destination: Destination::Addresses {
                hostname: format!("{name}.example.com").into(),
                addresses: address_list(addresses.iter().map(|a| ip(a))),
            },
            port: 443,
            udp: false,
        }
    }

    fn gw() -> ObjectRef {
        ObjectRef::new("infra", "gw")
    }

    #[test]
    fn one_policy_selects_the_data_plane_and_allows_exactly_what_is_vetted() {
        let mut pods = external("web", &[]);
        pods.destination = Destination::Pods { labels: BTreeMap::from([("app".into(), "web".into())]) };
        pods.port = 8080;
        let mut dns = external("dns", &["192.0.2.53"]);
        dns.udp = true;
        dns.port = 53;
        let allowed = [external("api", &["192.0.2.10", "2001:db8::10"]), pods, dns];
        let out = policies(&gw(), "ours", &allowed, &Config::default());
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
        let dns = DnsPeers::Cidrs(vec!["169.254.20.10/32".parse().unwrap()]);
        let config = Config { allow_cluster: false, dns, ..Config::default() };
        let out = policies(&gw(), "ours", &[], &config);
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
        assert_eq!(
            text(&policies(&gw(), "ours", &a, &Config::default())),
            text(&policies(&gw(), "ours", &b, &Config::default()))
        );
    }

    /// Thousands of XBackends with 64 addresses each spread over objects
    /// under 512 KiB, and one XBackend's change rewrites exactly one object.
    #[test]
    fn large_gateways_split_into_small_objects_one_change_one_object() {
        let addresses: Vec<String> = (0..64).map(|i| format!("2001:db8:ffff:ffff:ffff:ffff:ffff:{i:x}")).collect();
        let refs: Vec<&str> = addresses.iter().map(String::as_str).collect();
        let allowed: Vec<Allowed> = (0..1200).map(|i| external(&format!("backend-{i:05}"), &refs)).collect();
        let before = policies(&gw(), "ours", &allowed, &Config::default());
        assert_eq!(before.len(), 32, "1200 / 64 rounded up to a power of two");
        for p in &before {
            let size = serde_json::to_vec(p).unwrap().len();
            assert!(size < 512 * 1024, "{} is {size} bytes", p["metadata"]["name"]);
        }
        let mut changed = allowed.clone();
        changed[1134] = external("backend-01134", &["192.0.2.99"]);
        let after = policies(&gw(), "ours", &changed, &Config::default());
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

    const HOLD: Hold = Hold { seconds: 3600, max_per_host: 3 };

    #[test]
    fn addresses_are_held_after_the_answer_moves_on_until_the_hold_ends() {
        let mut held = Held::default();
        let none = |_: IpAddr| false;
        let (now, _) = held.observe("api.example.com", &[ip("192.0.2.1")], 0, HOLD, none);
        assert_eq!(now, BTreeSet::from([ip("192.0.2.1")]));
        let (now, _) = held.observe("api.example.com", &[ip("192.0.2.2")], 100, HOLD, none);
        assert_eq!(now, BTreeSet::from([ip("192.0.2.1"), ip("192.0.2.2")]), "the rotated-out address stays");
        assert_eq!(held.held("api.example.com", 3600, HOLD), BTreeSet::from([ip("192.0.2.1"), ip("192.0.2.2")]));
        assert_eq!(
            held.held("api.example.com", 3601, HOLD),
            BTreeSet::from([ip("192.0.2.2")]),
            "a failed lookup holds"
        );
        let (now, _) = held.observe("api.example.com", &[ip("192.0.2.2")], 3601, HOLD, none);
        assert_eq!(now, BTreeSet::from([ip("192.0.2.2")]), "hold over");
    }

    #[test]
    fn a_denied_address_leaves_at_once_and_the_cap_evicts_the_least_recent() {
        let mut held = Held::default();
        let none = |_: IpAddr| false;
        held.observe("h", &[ip("192.0.2.1")], 0, HOLD, none);
        held.observe("h", &[ip("192.0.2.2")], 1, HOLD, none);
        held.observe("h", &[ip("192.0.2.3")], 2, HOLD, none);
        let (now, evicted) = held.observe("h", &[ip("192.0.2.4")], 3, HOLD, none);
        assert_eq!(evicted, 1);
        assert_eq!(now, BTreeSet::from([ip("192.0.2.2"), ip("192.0.2.3"), ip("192.0.2.4")]));
        let (now, _) =
            held.observe("h", &[ip("192.0.2.4")], 4, HOLD, |ip| ip == "192.0.2.3".parse::<IpAddr>().unwrap());
        assert_eq!(now, BTreeSet::from([ip("192.0.2.2"), ip("192.0.2.4")]));
        held.forget("h");
        assert!(held.held("h", 5, HOLD).is_empty());
    }

    #[test]
    fn rules_read_back_as_they_were_built() {
        let mut pods = external("web", &[]);
        pods.destination = Destination::Pods { labels: BTreeMap::from([("app".into(), "web".into())]) };
        let mut udp = external("stun", &["192.0.2.16"]);
        udp.udp = true;
        let allowed = vec![external("api", &["192.0.2.10", "2001:db8::10"]), udp, pods];
        let out = policies(&gw(), "ours", &allowed, &Config::default());
        let read: Vec<Allowed> = read_rules(&out[0]).into_iter().map(|(_, a)| a).collect();
        assert_eq!(read, allowed);
        let mut edited = out[0].clone();
        edited["spec"]["egress"] = json!([]);
        assert!(read_rules(&edited).is_empty(), "rules that are not there are not read");
    }

    /// An empty `to` allows every destination: never write one.
    #[test]
    fn an_xbackend_without_addresses_gets_no_rule() {
        let mut pods = external("web", &[]);
        pods.destination = Destination::Pods { labels: BTreeMap::new() };
        let out = policies(&gw(), "ours", &[external("pending", &[]), pods], &Config::default());
        let egress = out[0]["spec"]["egress"].as_array().unwrap();
        assert_eq!(egress.len(), 2, "DNS and cluster only: {egress:?}");
        assert!(egress.iter().all(|rule| rule["to"].as_array().is_some_and(|to| !to.is_empty())));
    }

    fn inputs(behind: Vec<Allowed>, unknown: &[&str]) -> Inputs {
        Inputs {
            gateways: vec![(gw(), "uid-gw".into(), "ours".into())],
            behind: BTreeMap::from([(gw(), behind)]),
            unknown: unknown.iter().map(|n| ObjectRef::new("app", *n)).collect(),
        }
    }

    fn run(inputs: &Inputs, current: &Policies, decisions: &mut Decisions, now: i64) -> Policies {
        let denied = |ip: IpAddr| ip.is_loopback();
        decisions.decide(inputs, current, now, Hold::default(), &Config::default(), &denied, false).policies
    }

    #[test]
    fn a_restart_keeps_every_rule_until_its_xbackend_is_judged() {
        let first = inputs(vec![external("api", &["192.0.2.10"]), external("b", &["192.0.2.11"])], &[]);
        let current = run(&first, &BTreeMap::new(), &mut Decisions::default(), 0);
        assert_eq!(current.len(), 1);
        let policy = current.values().next().unwrap();
        assert_eq!(policy.metadata["ownerReferences"][0]["uid"], "uid-gw");
        // After a restart nothing is judged yet: the same objects, nothing to write.
        let mut held = Decisions::default();
        let restarted = run(&inputs(vec![], &["api", "b"]), &current, &mut held, 10);
        assert!(restarted.iter().all(|(k, p)| stands(p, &current[k])), "{restarted:#?}");
        assert!(restarted.iter().all(|(k, p)| Arc::ptr_eq(p, &current[k])), "what stands is the one copy");
        // Judged again, with a rotated answer: the old address is held.
        let again = run(
            &inputs(vec![external("api", &["192.0.2.20"]), external("b", &["192.0.2.11"])], &[]),
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
        let two = |api: &str| Inputs {
            gateways: vec![(gw(), "uid-gw".into(), "ours".into()), (other.clone(), "uid-2".into(), "ours".into())],
            behind: BTreeMap::from([
                (gw(), vec![external("api", &[api])]),
                (other.clone(), vec![external("b", &["192.0.2.99"])]),
            ]),
            unknown: BTreeSet::new(),
        };
        let (hold, config, denied) = (Hold::default(), Config::default(), |_: IpAddr| false);
        let mut decisions = Decisions::default();
        let first = decisions.decide(&two("192.0.2.1"), &BTreeMap::new(), 0, hold, &config, &denied, false).policies;
        let second = decisions.decide(&two("192.0.2.2"), &first, 10, hold, &config, &denied, false);
        assert_eq!(second.addresses, BTreeMap::from([(gw(), 2), (other.clone(), 1)]), "address peers per Gateway");
        let second = second.policies;
        let (mine, theirs) =
            (ObjectRef::new("infra", "xbackend-egress-gw"), ObjectRef::new("infra", "xbackend-egress-gw2"));
        assert!(Arc::ptr_eq(&first[&theirs], &second[&theirs]), "gw2's inputs did not change: not built again");
        assert!(!Arc::ptr_eq(&first[&mine], &second[&mine]));
        let addresses = |p: &Policies| p[&mine].spec()["egress"][2]["to"].as_array().unwrap().len();
        assert_eq!(addresses(&second), 2, "the rotated-out address is held");
        // An hour later the same inputs keep what was built; a rebuild lets the hold expire.
        let later = 10 + hold.seconds + 1;
        let kept = decisions.decide(&two("192.0.2.2"), &second, later, hold, &config, &denied, false).policies;
        assert_eq!(addresses(&kept), 2);
        let rebuilt = decisions.decide(&two("192.0.2.2"), &kept, later, hold, &config, &denied, true).policies;
        assert_eq!(addresses(&rebuilt), 1);
        assert_eq!(rebuilt[&theirs], first[&theirs], "same inputs, same bytes");
        assert!(Arc::ptr_eq(&rebuilt[&theirs], &first[&theirs]), "rebuilt the same: the one copy kept");
    }

    /// With --egress-namespace, a data plane elsewhere gets no policy; the
    /// decision names the Gateway and the namespace, for a warning.
    #[test]
    fn only_writable_namespaces_get_policies() {
        let elsewhere = ObjectRef::new("team-b", "gw");
        let inputs = Inputs {
            gateways: vec![(gw(), "u1".into(), "ours".into()), (elsewhere.clone(), "u2".into(), "ours".into())],
            ..Inputs::default()
        };
        let config = Config { namespaces: Some(BTreeSet::from(["infra".to_string()])), ..Config::default() };
        let decision =
            Decisions::default().decide(&inputs, &BTreeMap::new(), 0, Hold::default(), &config, &|_| false, false);
        assert_eq!(decision.policies.keys().collect::<Vec<_>>(), [&ObjectRef::new("infra", "xbackend-egress-gw")]);
        assert_eq!(decision.unwritable, [(elsewhere, "team-b".to_string())]);
        assert_eq!(decision.addresses, BTreeMap::from([(gw(), 0)]), "only Gateways with a policy written");
    }

    #[test]
    fn a_rejected_or_deleted_xbackend_leaves_at_once() {
        let mut held = Decisions::default();
        let current = run(&inputs(vec![external("api", &["192.0.2.10"])], &[]), &BTreeMap::new(), &mut held, 0);
        let gone = run(&inputs(vec![], &[]), &current, &mut held, 1);
        let egress = gone.values().next().unwrap().spec()["egress"].as_array().unwrap().clone();
        assert_eq!(egress.len(), 2, "DNS and cluster only");
        assert!(held.held.hostnames().is_empty(), "its hold is forgotten");
        // A Gateway no longer judged has no policy at all (the writer deletes it).
        let none = run(&Inputs::default(), &current, &mut held, 2);
        assert!(none.is_empty());
    }

    #[test]
    fn stands_ignores_what_others_add_but_not_edits_to_ours() {
        let policy = policies(&gw(), "ours", &[external("api", &["192.0.2.10"])], &Config::default()).remove(0);
        let mut theirs = policy.clone();
        theirs["metadata"]["labels"]["team"] = json!("x");
        theirs["metadata"]["resourceVersion"] = json!("7");
        let stands = |a: &Value, b: &Value| stands(&Policy::from_value(a), &Policy::from_value(b));
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
        let mut pods = external("web", &[]);
        pods.destination = Destination::Pods { labels: BTreeMap::from([("app".into(), "web".into())]) };
        pods.udp = true;
        let built =
            policies(&gw(), "ours", &[external("api", &["192.0.2.10", "2001:db8::1"]), pods], &Config::default());
        let mut typed: k8s_openapi::api::networking::v1::NetworkPolicy =
            serde_json::from_value(built[0].clone()).unwrap();
        typed.metadata.uid = Some("u-1".into());
        typed.metadata.resource_version = Some("7".into());
        let back = Policy::from_object(&typed).unwrap();
        assert!(stands(&Policy::from_value(&built[0]), &back));
        // Equal, not only standing: the writer keeps one copy for both.
        assert_eq!(Policy::from_value(&built[0]), back);
        assert_eq!(Policy::from_value(&built[0]).to_value(), built[0]);
        assert_eq!(Policy::from_value(&built[0]).address_peers(), 2);
    }

    /// Envoy Gateway runs every data plane in its own namespace, labelled
    /// with the owning Gateway: the policy goes there, named for the Gateway.
    #[test]
    fn a_class_can_place_its_data_planes_elsewhere() {
        let envoy: DataPlane = "envoy-gateway-system:gateway.envoyproxy.io/owning-gateway-name={name},gateway.envoyproxy.io/owning-gateway-namespace={namespace}".parse().unwrap();
        let config = Config { data_planes: BTreeMap::from([("eg".to_string(), envoy)]), ..Config::default() };
        let out = policies(&gw(), "eg", &[], &config);
        assert_eq!(out[0]["metadata"]["namespace"], "envoy-gateway-system");
        assert_eq!(out[0]["metadata"]["name"], "xbackend-egress-infra-gw");
        assert_eq!(out[0]["metadata"]["labels"][OWNED_NAMESPACE_LABEL], "infra");
        assert_eq!(
            out[0]["spec"]["podSelector"]["matchLabels"],
            json!({"gateway.envoyproxy.io/owning-gateway-name": "gw", "gateway.envoyproxy.io/owning-gateway-namespace": "infra"})
        );
        let inputs = Inputs { gateways: vec![(gw(), "uid".into(), "eg".into())], ..Inputs::default() };
        let decision =
            Decisions::default().decide(&inputs, &BTreeMap::new(), 0, Hold::default(), &config, &|_| false, false);
        let policy = decision.policies.values().next().unwrap();
        assert!(policy.metadata.get("ownerReferences").is_none(), "no owner across namespaces");
        for bad in ["no-colon", "ns:", "ns:=v", "ns:k"] {
            assert!(bad.parse::<DataPlane>().is_err(), "{bad}");
        }
        assert_eq!(":app=gw".parse::<DataPlane>().unwrap().namespace, None, "the Gateway's namespace");
    }

    #[test]
    fn a_wider_policy_on_the_same_pods_is_told() {
        let ours = policies(&gw(), "ours", &[], &Config::default()).remove(0);
        let other = |selector: Value, types: Value, egress: Value| json!({"metadata": {"name": "theirs", "namespace": "infra"}, "spec": {"podSelector": selector, "policyTypes": types, "egress": egress}});
        let all_pods = json!({});
        let open = json!([{}]);
        assert!(
            widens(&ours, &other(all_pods.clone(), json!(["Egress"]), open.clone()))
                .unwrap()
                .contains("every destination")
        );
        let internet = json!([{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]);
        assert!(
            widens(&ours, &other(all_pods.clone(), json!(["Egress"]), internet.clone())).unwrap().contains("0.0.0.0/0")
        );
        let same = json!({"matchLabels": {GATEWAY_NAME_LABEL: "gw"}});
        assert!(
            widens(&ours, &other(same, Value::Null, internet.clone())).is_some(),
            "policyTypes default from the rules"
        );
        let elsewhere = json!({"matchLabels": {"app": "db"}});
        assert!(widens(&ours, &other(elsewhere, json!(["Egress"]), open.clone())).is_none(), "other Pods");
        assert!(widens(&ours, &other(all_pods.clone(), json!(["Ingress"]), Value::Null)).is_none(), "ingress only");
        let narrow = json!([{"to": [{"ipBlock": {"cidr": "192.0.2.7/32"}}, {"podSelector": {}}]}]);
        assert!(
            widens(&ours, &other(all_pods.clone(), json!(["Egress"]), narrow)).is_none(),
            "single addresses and Pods"
        );
        let mut moved = other(all_pods, json!(["Egress"]), open);
        moved["metadata"]["namespace"] = json!("app");
        assert!(widens(&ours, &moved).is_none(), "another namespace");
    }
}
