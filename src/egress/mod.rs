//! Egress policies for Gateway data planes (docs/design.md §6b): what each
//! judged Gateway may reach, decided once (`decide`, engine-neutral) and
//! rendered by an `Engine` into the objects one kind of enforcer reads
//! (NetworkPolicy, AdminNetworkPolicy, ClusterNetworkPolicy). Pure: shared
//! by `analyze` and the runtime's policy writer.

mod admin;
mod adminnetworkpolicy;
mod clusternetworkpolicy;
mod decide;
mod hold;
mod networkpolicy;
pub mod presets;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::api::XBackendSpec;
use crate::model::{Ancestor, ObjectRef, PortRef, Protocol, Referrer, RouteKind};

pub use adminnetworkpolicy::AdminNetworkPolicy;
pub use clusternetworkpolicy::ClusterNetworkPolicy;
pub use decide::{Decision, Decisions, Demand, GatewayInfo, Round};
pub use hold::{Held, Hold};
pub use networkpolicy::NetworkPolicy;

/// Label on every policy object this controller owns; its value is the Gateway's name.
pub const OWNED_LABEL: &str = "gateway.networking.x-k8s.io/egress-for-gateway";
/// The Gateway's namespace, on the same objects.
pub const OWNED_NAMESPACE_LABEL: &str = "gateway.networking.x-k8s.io/egress-for-gateway-namespace";
/// Which install wrote them (`--controller-name`, as a label value): two
/// installs in one cluster never take each other's objects for strays.
pub const CONTROLLER_LABEL: &str = "gateway.networking.x-k8s.io/egress-controller";

/// A controller name as a label value: characters other than letters,
/// digits, `.`, `-` and `_` become `.`; a longer one than 63 is cut and told
/// apart by a hash.
pub fn controller_label(name: &str) -> String {
    let value: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '.' }).collect();
    let value = value.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string();
    if value.len() <= 63 {
        return value;
    }
    let hash = fnv(&ObjectRef::new("", name));
    format!("{}-{hash:016x}", value[..46].trim_end_matches(|c: char| !c.is_ascii_alphanumeric()))
}
/// Annotation that says which XBackend each egress rule serves.
pub const RULES_ANNOTATION: &str = "gateway.networking.x-k8s.io/egress-rules";
/// The label GEP-1762 implementations (Istio among them) put on a Gateway's data-plane Pods.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// The label every Namespace carries with its own name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Makes an engine from its settings.
pub type MakeEngine = fn(&EngineSettings) -> Box<dyn Engine>;

/// The engines, by their `--egress-policy` value: adding one is a module
/// and a line here.
pub const ENGINES: [(&str, MakeEngine); 3] = [
    ("networkpolicy", |_| Box::new(NetworkPolicy)),
    ("adminnetworkpolicy", |s| Box::new(AdminNetworkPolicy { priority: s.admin_priority })),
    ("clusternetworkpolicy", |s| Box::new(ClusterNetworkPolicy::new(s.admin_priority, s.served))),
];

/// What an engine may need beyond the decided rules: the admin tier's
/// priority, and the versions of its kind the cluster serves (discovery;
/// empty offline), to write the preferred one.
#[derive(Clone, Copy, Debug)]
pub struct EngineSettings<'a> {
    pub admin_priority: u32,
    pub served: &'a [String],
}

/// The engine `name` names, or None.
pub fn engine(name: &str, settings: &EngineSettings) -> Option<Box<dyn Engine>> {
    ENGINES.iter().find(|(n, _)| *n == name).map(|(_, make)| make(settings))
}

/// The kind of object an engine writes and watches.
#[derive(Debug, PartialEq, Eq)]
pub struct PolicyKind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
}

impl PolicyKind {
    pub fn api_version(&self) -> String {
        format!("{}/{}", self.group, self.version)
    }
}

/// One way to enforce the decided rules: renders a Gateway's rules into its
/// objects, reads the XBackend rules of a standing one back (after a
/// restart), and says what another object of its kind does to ours. What
/// stands as decided is the same for every engine (`stands`).
pub trait Engine: Send + Sync {
    /// The `--egress-policy` value.
    fn name(&self) -> &'static str;
    fn kind(&self) -> &'static PolicyKind;
    /// One Gateway's objects, one at a time (a Gateway with thousands of
    /// rules is never held as JSON trees all at once). Same rules, same bytes.
    fn render<'a>(&'a self, rules: Rules<'a>) -> Box<dyn Iterator<Item = Value> + 'a>;
    /// The XBackend and Service rules of an object this engine rendered;
    /// rules it cannot read (edited by hand) are left out, and the next
    /// write puts them back.
    fn read_rules(&self, object: &Value) -> Vec<Allowed>;
    /// Most addresses one hostname may hold in one rule (the API's limits).
    fn max_addresses_per_host(&self) -> usize {
        usize::MAX
    }
    /// Why `other`, an object of this kind that is not ours, makes `ours`
    /// moot, if it does.
    fn widens(&self, ours: &Value, other: &Value) -> Option<String>;
}

/// Where a Gateway's DNS queries go.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DnsPeers {
    /// Cluster DNS Pods: namespace and labels.
    Pods { namespace: String, labels: BTreeMap<String, String> },
    /// Resolver addresses (node-local caches), as CIDRs.
    Cidrs(Vec<ipnet::IpNet>),
}

impl Default for DnsPeers {
    fn default() -> Self {
        DnsPeers::Pods {
            namespace: "kube-system".into(),
            labels: BTreeMap::from([("k8s-app".to_string(), "kube-dns".to_string())]),
        }
    }
}

/// Where DNS answers: the peers and the port (53 unless the DNS Service's
/// EndpointSlices say otherwise).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Dns {
    pub peers: DnsPeers,
    pub port: u16,
}

impl Default for Dns {
    fn default() -> Self {
        Dns { peers: DnsPeers::default(), port: 53 }
    }
}

/// What a data plane may reach in the cluster (`--egress-cluster`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClusterMode {
    /// Exactly what its routes name (and its own needs).
    Routes,
    /// Every Pod of every namespace.
    All,
    /// Nothing beyond DNS, XBackends and its own needs.
    None,
}

impl ClusterMode {
    /// Whether Gateways under `mode` (None: each by its class) may be held to
    /// what their routes name: only then are Services and EndpointSlices read.
    pub fn reads_services(mode: Option<ClusterMode>) -> bool {
        matches!(mode, Some(ClusterMode::Routes) | None)
    }

    pub fn name(self) -> &'static str {
        match self {
            ClusterMode::Routes => "routes",
            ClusterMode::All => "all",
            ClusterMode::None => "none",
        }
    }
}

impl std::str::FromStr for ClusterMode {
    type Err = String;
    fn from_str(text: &str) -> Result<ClusterMode, String> {
        match text {
            "routes" => Ok(ClusterMode::Routes),
            "all" => Ok(ClusterMode::All),
            "none" => Ok(ClusterMode::None),
            _ => Err(format!("{text:?} is not routes, all or none")),
        }
    }
}

/// How policies are shaped, from the `--egress-*` flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `--egress-cluster`; None: `routes` for a Gateway whose class has a
    /// preset or `--egress-needs`, `all` for the others (with a warning).
    pub cluster: Option<ClusterMode>,
    pub dns: Dns,
    /// Where the data planes of a GatewayClass run, when not beside their
    /// Gateway with GEP-1762's label (`--egress-data-plane`).
    pub data_planes: BTreeMap<String, DataPlane>,
    /// What a GatewayClass's data planes need themselves (`--egress-needs`),
    /// instead of its controller's preset.
    pub needs: BTreeMap<String, Vec<Allowed>>,
    /// The namespaces policies may be written to (`--egress-namespace`);
    /// None: every namespace.
    pub namespaces: Option<BTreeSet<String>>,
    /// This install, as `CONTROLLER_LABEL`'s value (`controller_label`).
    pub controller: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cluster: Some(ClusterMode::All),
            dns: Dns::default(),
            data_planes: BTreeMap::new(),
            needs: BTreeMap::new(),
            namespaces: None,
            controller: String::new(),
        }
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
    pub fn select(&self, gateway: &ObjectRef) -> (String, BTreeMap<String, String>) {
        let fill = |v: &str| v.replace("{name}", &gateway.name).replace("{namespace}", &gateway.namespace);
        let labels = self.labels.iter().map(|(k, v)| (k.clone(), fill(v))).collect();
        (self.namespace.clone().unwrap_or_else(|| gateway.namespace.to_string()), labels)
    }
}

/// The transport protocols a rule's port is allowed for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Protocols(u8);

impl Protocols {
    pub const TCP: Protocols = Protocols(1);
    pub const TCP_UDP: Protocols = Protocols(3);

    pub fn of(protocol: Protocol) -> Protocols {
        Protocols(match protocol {
            Protocol::Tcp => 1,
            Protocol::Udp => 2,
            Protocol::Sctp => 4,
        })
    }

    /// In the API's order: TCP, UDP, SCTP.
    pub fn iter(self) -> impl Iterator<Item = Protocol> {
        [Protocol::Tcp, Protocol::Udp, Protocol::Sctp].into_iter().filter(move |p| self.0 & Protocols::of(*p).0 != 0)
    }

    pub fn with(self, protocol: Protocol) -> Protocols {
        Protocols(self.0 | Protocols::of(protocol).0)
    }
}

/// What a rule serves: its source also decides its shard and its namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// An Accepted XBackend behind the Gateway.
    XBackend(ObjectRef),
    /// A Service that a route of the Gateway names (`--egress-cluster
    /// routes`); `via` names the route, for the annotation.
    Service { service: ObjectRef, via: Arc<str> },
    /// What the data plane itself needs, by namespace and name.
    Need(ObjectRef),
}

impl Source {
    /// Its namespace (a Pods destination's) and name.
    pub fn key(&self) -> &ObjectRef {
        match self {
            Source::XBackend(key) | Source::Need(key) => key,
            Source::Service { service, .. } => service,
        }
    }
}

/// One destination a Gateway's data plane may reach, as the policy needs
/// it. Cheap to copy (shared names and addresses): the state, each
/// decision's inputs and the writer all hold one per XBackend and Gateway.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Allowed {
    pub source: Source,
    pub destination: Destination,
    pub port: PortRef,
    /// TCP, and UDP besides when a UDPRoute uses an XBackend through this Gateway.
    pub protocols: Protocols,
}

impl Allowed {
    /// An XBackend's rule: its port, TCP (and UDP).
    pub fn xbackend(key: ObjectRef, destination: Destination, port: u16, udp: bool) -> Allowed {
        let protocols = if udp { Protocols::TCP_UDP } else { Protocols::TCP };
        Allowed { source: Source::XBackend(key), destination, port: PortRef::Number(port), protocols }
    }

    /// A rule with no peer would allow every destination: an XBackend with
    /// no vetted address yet (or an empty selector) gets no rule at all.
    pub fn has_peers(&self) -> bool {
        match &self.destination {
            Destination::Addresses { addresses, .. } => !addresses.is_empty(),
            Destination::Pods { labels } => !labels.is_empty(),
            Destination::Networks(networks) => !networks.is_empty(),
        }
    }

    /// The namespace of a Pods destination.
    pub fn namespace(&self) -> &str {
        &self.source.key().namespace
    }

    /// What the rules annotation says of it: "KIND ns/name WHAT, port P",
    /// read back by `annotated`.
    pub fn note(&self) -> String {
        let what = match &self.destination {
            Destination::Addresses { hostname, addresses } => {
                let plural = if addresses.len() == 1 { "" } else { "es" };
                format!("{hostname} ({} address{plural})", addresses.len())
            }
            Destination::Pods { .. } => "its Pods".to_string(),
            Destination::Networks(networks) => {
                let plural = if networks.len() == 1 { "" } else { "s" };
                format!("({} network{plural})", networks.len())
            }
        };
        let port = &self.port;
        match &self.source {
            Source::XBackend(key) => format!("XBackend {key} {what}, port {port}"),
            Source::Service { service, via } => format!("Service {service} {what}, port {port}, for {via}"),
            Source::Need(key) => format!("data plane needs {key} {what}, port {port}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Destination {
    /// An ExternalHostname (or an ExternalName Service): the vetted
    /// addresses, sorted and distinct (hold-down applied by the caller; see
    /// `address_list`).
    Addresses { hostname: Arc<str>, addresses: Arc<[IpAddr]> },
    /// Pods of the source's namespace with these labels.
    Pods { labels: BTreeMap<String, String> },
    /// Networks (a selectorless Service's vetted addresses, a need's ranges).
    Networks(Arc<[ipnet::IpNet]>),
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
            (ancestor.gateway.clone(), Allowed::xbackend(key.clone(), destination.clone(), port, udp))
        })
        .collect();
    // The state keeps this per XBackend: no spare capacity (a filtered
    // collect starts at four).
    uses.shrink_to_fit();
    uses
}

/// One Gateway's decided rules, for an engine to render.
pub struct Rules<'a> {
    pub gateway: &'a ObjectRef,
    /// The Gateway's uid (empty from files): an owner reference where one can point at it.
    pub uid: &'a str,
    /// Its data-plane Pods: their namespace and labels.
    pub namespace: String,
    pub selector: BTreeMap<String, String>,
    pub dns: &'a Dns,
    pub cluster: ClusterMode,
    /// What the data plane itself needs (shard 0, after DNS).
    pub needs: Vec<&'a Allowed>,
    /// Ports every Pods destination gets besides its own (Istio ambient's
    /// HBONE port).
    pub pod_ports: &'a [(Protocol, u16)],
    /// The XBackends and Services it may reach, each with at least one peer.
    pub allowed: Vec<&'a Allowed>,
    /// This install (`CONTROLLER_LABEL`), when known.
    pub controller: &'a str,
}

impl<'a> Rules<'a> {
    /// The rules of `gateway` (of class `class`) allowing `allowed`, its
    /// cluster rule as `config` says, and no needs.
    pub fn new(gateway: &'a ObjectRef, uid: &'a str, class: &str, allowed: &'a [Allowed], config: &'a Config) -> Self {
        let (namespace, selector) = config.data_planes.get(class).cloned().unwrap_or_default().select(gateway);
        let allowed = allowed.iter().filter(|a| a.has_peers()).collect();
        let cluster = config.cluster.unwrap_or(ClusterMode::All);
        Rules {
            gateway,
            uid,
            namespace,
            selector,
            dns: &config.dns,
            cluster,
            needs: Vec::new(),
            pod_ports: &[],
            allowed,
            controller: &config.controller,
        }
    }

    /// The ports of a rule: its own for each protocol, and for Pods the
    /// data plane's extra ones.
    pub fn ports(&self, a: &Allowed) -> Vec<(Protocol, PortRef)> {
        let mut ports: Vec<(Protocol, PortRef)> = a.protocols.iter().map(|p| (p, a.port.clone())).collect();
        if matches!(a.destination, Destination::Pods { .. }) {
            for (protocol, port) in self.pod_ports {
                let extra = (*protocol, PortRef::Number(*port));
                if !ports.contains(&extra) {
                    ports.push(extra);
                }
            }
        }
        ports
    }

    /// The rules spread over shards of at most `per_object` (and never more
    /// than `limit` in one), by a stable hash of their source's name, so one
    /// XBackend's or Service's change rewrites one object. The count is a
    /// power of two, so every source's shard changes only when their number
    /// doubles or halves; each shard is sorted by source.
    pub fn shards(&self, per_object: usize, limit: usize) -> Vec<Vec<&'a Allowed>> {
        let mut count = self.allowed.len().div_ceil(per_object).max(1).next_power_of_two();
        loop {
            let mut by_shard: Vec<Vec<&Allowed>> = vec![Vec::new(); count];
            for a in &self.allowed {
                by_shard[shard_of(a.source.key(), count)].push(a);
            }
            // Names chosen to land in one shard cannot make an object the API refuses.
            if by_shard.iter().all(|members| members.len() <= limit) || count >= self.allowed.len() {
                by_shard.iter_mut().for_each(|members| members.sort_by(|a, b| a.source.cmp(&b.source)));
                return by_shard;
            }
            count *= 2;
        }
    }

    /// The labels every object of this Gateway carries.
    pub fn labels(&self) -> Value {
        let mut labels = json!({
            OWNED_LABEL: &*self.gateway.name,
            OWNED_NAMESPACE_LABEL: &*self.gateway.namespace,
            "app.kubernetes.io/managed-by": "xbackend-controller",
        });
        if !self.controller.is_empty() {
            labels[CONTROLLER_LABEL] = json!(self.controller);
        }
        labels
    }
}

/// FNV-1a over "namespace/name": stable across runs and releases, unlike std's hasher.
pub fn fnv(key: &ObjectRef) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.namespace.bytes().chain([b'/']).chain(key.name.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

fn shard_of(backend: &ObjectRef, shards: usize) -> usize {
    (fnv(backend) % shards as u64) as usize
}

/// A name no longer than 253 characters: a longer one is cut and told apart by a hash.
pub fn fit_name(name: String, keep_suffix: &str) -> String {
    if name.len() <= 253 {
        return name;
    }
    let hash = fnv(&ObjectRef::new("", &name));
    let head = &name[..name.len() - keep_suffix.len()];
    let mut cut = 200.min(head.len());
    while !head.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}-{hash:x}{keep_suffix}", &head[..cut])
}

/// The annotation listing what each rule serves, one line per rule:
/// "egress[i]: note".
pub fn rules_annotation(notes: &[String]) -> String {
    let lines: Vec<String> = notes.iter().enumerate().map(|(i, n)| format!("egress[{i}]: {n}")).collect();
    lines.join("\n")
}

/// The annotation's lines that name an XBackend or a Service, with the
/// rule index, the source and the second word (an address rule's hostname):
/// what an engine reads rules back from.
pub fn annotated(object: &Value) -> impl Iterator<Item = (usize, &'static str, ObjectRef, &str, Option<&str>)> {
    let notes = object["metadata"]["annotations"][RULES_ANNOTATION].as_str().unwrap_or_default();
    notes.lines().filter_map(|line| {
        let (index, rest) = line.strip_prefix("egress[")?.split_once("]: ")?;
        let (kind, rest) =
            ["XBackend", "Service"].into_iter().find_map(|k| Some((k, rest.strip_prefix(k)?.strip_prefix(' ')?)))?;
        let mut words = rest.split_whitespace();
        let (namespace, name) = words.next()?.split_once('/')?;
        let hostname = words.next()?;
        let via = rest.split_once(", for ").map(|(_, via)| via);
        Some((index.parse().ok()?, kind, ObjectRef::new(namespace, name), hostname, via))
    })
}

/// The source an annotation line names.
pub fn annotated_source(kind: &str, key: ObjectRef, via: Option<&str>) -> Source {
    match kind {
        "Service" => Source::Service { service: key, via: via.unwrap_or_default().into() },
        _ => Source::XBackend(key),
    }
}

/// A policy object as the writer keeps it: its kind and namespace/name, its
/// metadata (a few fields) and spec as canonical JSON text. As trees of small
/// maps thousands of objects cost several times their text (a metadata tree
/// alone about 2 KiB), once for what should stand and once for what does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyObject {
    pub kind: &'static PolicyKind,
    key: ObjectRef,
    metadata: Box<str>,
    spec: Box<str>,
}

impl PolicyObject {
    /// From an object as JSON (`metadata` and `spec`; the rest is not kept).
    /// Of the metadata, only what the writer compares: identity, labels,
    /// annotations, owners. Not the uid (the writer keeps that apart),
    /// managedFields (as large as the spec), versions or timestamps, so one
    /// that stands as built is equal to it.
    pub fn from_value(kind: &'static PolicyKind, object: &Value) -> PolicyObject {
        let m = &object["metadata"];
        let mut metadata = serde_json::Map::new();
        for field in ["name", "namespace", "labels", "annotations", "ownerReferences"] {
            if let Some(value) = m.get(field).filter(|v| !v.is_null()) {
                metadata.insert(field.to_string(), value.clone());
            }
        }
        let text = |field: &str| metadata.get(field).and_then(Value::as_str).unwrap_or_default();
        let key = ObjectRef::new(text("namespace"), text("name"));
        // serde_json's maps are sorted: the same object gives the same text.
        let metadata = Value::Object(metadata).to_string().into();
        PolicyObject { kind, key, metadata, spec: object["spec"].to_string().into() }
    }

    /// Its metadata: name, namespace, labels, annotations, owners.
    pub fn metadata(&self) -> Value {
        serde_json::from_str(&self.metadata).unwrap_or_default()
    }

    /// The whole object, as applied and printed.
    pub fn to_value(&self) -> Value {
        json!({
            "apiVersion": self.kind.api_version(),
            "kind": self.kind.kind,
            "metadata": self.metadata(),
            "spec": self.spec(),
        })
    }

    pub fn spec(&self) -> Value {
        serde_json::from_str(&self.spec).unwrap_or_default()
    }

    /// Its namespace/name.
    pub fn key(&self) -> ObjectRef {
        self.key.clone()
    }

    /// The Gateway whose data plane it restricts, from our labels.
    pub fn gateway(&self) -> Option<ObjectRef> {
        let metadata = self.metadata();
        let labels = &metadata["labels"];
        let name = labels[OWNED_LABEL].as_str()?;
        let namespace = labels[OWNED_NAMESPACE_LABEL].as_str().or(metadata["namespace"].as_str())?;
        Some(ObjectRef::new(namespace, name))
    }
}

/// Policy objects by namespace/name, shared: a Gateway's unchanged policies
/// pass from one decision to the next without being copied.
pub type Policies = BTreeMap<ObjectRef, Arc<PolicyObject>>;

/// True when `current` already says what `desired` says: the same spec, and
/// our labels, annotation and owner reference among its own (others may add
/// theirs; comparing those would rewrite forever).
pub fn stands(desired: &PolicyObject, current: &PolicyObject) -> bool {
    if desired.kind != current.kind || desired.spec != current.spec {
        return false;
    }
    let (desired, current) = (desired.metadata(), current.metadata());
    let contains = |field: &str| {
        let (want, have) = (&desired[field], &current[field]);
        want.as_object().into_iter().flatten().all(|(k, v)| &have[k] == v)
    };
    let owners = |metadata: &Value| -> Vec<(Value, Value)> {
        metadata["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|o| (o["uid"].clone(), o["kind"].clone()))
            .collect()
    };
    contains("labels") && contains("annotations") && owners(&desired).iter().all(|o| owners(&current).contains(o))
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    pub fn external(name: &str, addresses: &[&str]) -> Allowed {
        let destination = Destination::Addresses {
            hostname: format!("{name}.example.com").into(),
            addresses: address_list(addresses.iter().map(|a| ip(a))),
        };
        Allowed::xbackend(ObjectRef::new("app", name), destination, 443, false)
    }

    pub fn pods(name: &str, labels: &[(&str, &str)]) -> Allowed {
        let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Allowed::xbackend(ObjectRef::new("app", name), Destination::Pods { labels }, 8080, false)
    }

    /// A Service a route names: its Pods on a target port.
    pub fn service(name: &str, labels: &[(&str, &str)], port: PortRef) -> Allowed {
        let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let source = Source::Service { service: ObjectRef::new("web", name), via: "HTTPRoute app/r".into() };
        Allowed { source, destination: Destination::Pods { labels }, port, protocols: Protocols::TCP }
    }

    pub fn udp(mut allowed: Allowed) -> Allowed {
        allowed.protocols = Protocols::TCP_UDP;
        allowed
    }

    pub fn on_port(mut allowed: Allowed, port: u16) -> Allowed {
        allowed.port = PortRef::Number(port);
        allowed
    }

    pub fn gw() -> ObjectRef {
        ObjectRef::new("infra", "gw")
    }

    /// The objects `engine` renders for `gw` with `allowed`.
    pub fn render(engine: &dyn Engine, allowed: &[Allowed], config: &Config) -> Vec<Value> {
        let gateway = gw();
        engine.render(Rules::new(&gateway, "", "ours", allowed, config)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    /// Names chosen to land in one shard still make objects within the limit.
    #[test]
    fn a_crowded_shard_splits_until_every_object_fits() {
        let allowed: Vec<Allowed> = (0..200).map(|i| external(&format!("b{i}"), &["192.0.2.1"])).collect();
        let crowd: Vec<Allowed> =
            allowed.iter().filter(|a| shard_of(a.source.key(), 4) == 0).take(30).cloned().collect();
        let (gateway, config) = (gw(), Config::default());
        let rules = Rules::new(&gateway, "", "ours", &crowd, &config);
        let shards = rules.shards(16, 20);
        assert!(shards.len() > 2, "two shards of 16 would hold them, but not with at most 20 in each");
        assert!(shards.iter().all(|s| s.len() <= 20));
        assert_eq!(shards.iter().map(Vec::len).sum::<usize>(), 30);
    }

    #[test]
    fn controller_names_become_label_values() {
        assert_eq!(controller_label("example.com/xbackend-controller"), "example.com.xbackend-controller");
        let long = controller_label(&format!("example.com/{}", "x".repeat(80)));
        assert!(long.len() <= 63 && long.starts_with("example.com.x"), "{long}");
        assert_ne!(long, controller_label(&format!("example.com/{}y", "x".repeat(80))));
    }

    #[test]
    fn long_names_are_cut_and_told_apart() {
        let long = format!("xbackend-egress-{}", "g".repeat(253));
        let cut = fit_name(format!("{long}-3"), "-3");
        assert!(cut.len() <= 253 && cut.ends_with("-3"), "{cut}");
        assert_ne!(fit_name(long.clone(), ""), fit_name(format!("{long}h"), ""));
        assert_eq!(fit_name("short".into(), ""), "short");
    }

    #[test]
    fn every_engine_is_found_by_its_name() {
        let settings = EngineSettings { admin_priority: 100, served: &[] };
        for (name, _) in ENGINES {
            assert_eq!(engine(name, &settings).unwrap().name(), name);
        }
        assert!(engine("ciliumnetworkpolicy", &settings).is_none());
    }
}
