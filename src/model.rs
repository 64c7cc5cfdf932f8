//! The plain data the index keeps of each watched kind, decoded leniently from
//! API objects so that one malformed object never stops a watch.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::api::XBackendSpec;
pub use crate::object::{Kind, ObjectRef, RefKind, RouteKind};

/// A kind of object that can make a Gateway an XBackend's ancestor
/// (docs/design.md §3): routes through their parentRefs, a Gateway through
/// its own listeners' ExternalAuth filters, a ListenerSet through its parent.
/// The index holds each such object as a `Route`: its Gateways and the XBackends it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Referrer {
    Route(RouteKind),
    Gateway,
    ListenerSet,
}

impl Referrer {
    pub fn kind(self) -> &'static str {
        match self {
            Referrer::Route(route) => route.kind(),
            Referrer::Gateway => "Gateway",
            Referrer::ListenerSet => "ListenerSet",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Referrer::Route(route) => 1 << (route as u8),
            Referrer::Gateway => 1 << 5,
            Referrer::ListenerSet => 1 << 6,
        }
    }
}

/// The kinds of the objects through which one Gateway is an XBackend's
/// ancestor: what the route-kind fit (crate::fit) is judged against.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Referrers(u8);

impl Referrers {
    pub fn insert(&mut self, referrer: Referrer) {
        self.0 |= referrer.bit();
    }
    pub fn contains(self, referrer: Referrer) -> bool {
        self.0 & referrer.bit() != 0
    }
    /// In declaration order (routes first), so messages come out stable.
    pub fn iter(self) -> impl Iterator<Item = Referrer> {
        let all = RouteKind::ALL.into_iter().map(Referrer::Route).chain([Referrer::Gateway, Referrer::ListenerSet]);
        all.filter(move |r| self.contains(*r))
    }
}

impl FromIterator<Referrer> for Referrers {
    fn from_iter<I: IntoIterator<Item = Referrer>>(iter: I) -> Self {
        let mut referrers = Referrers::default();
        iter.into_iter().for_each(|r| referrers.insert(r));
        referrers
    }
}

/// A Gateway that is an XBackend's ancestor, and the kinds of the objects that make it one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ancestor {
    pub gateway: ObjectRef,
    pub referrers: Referrers,
}

/// A sorted list of distinct references in one allocation: a route names one
/// or two, where a BTreeSet would cost a node of eleven slots per route.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Refs(Box<[ObjectRef]>);

impl Refs {
    pub fn iter(&self) -> std::slice::Iter<'_, ObjectRef> {
        self.0.iter()
    }
    pub fn contains(&self, key: &ObjectRef) -> bool {
        self.0.binary_search(key).is_ok()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<ObjectRef> for Refs {
    fn from_iter<I: IntoIterator<Item = ObjectRef>>(iter: I) -> Self {
        let mut refs: Vec<ObjectRef> = iter.into_iter().collect();
        refs.sort_unstable();
        refs.dedup();
        Refs(refs.into_boxed_slice())
    }
}

impl<'a> IntoIterator for &'a Refs {
    type Item = &'a ObjectRef;
    type IntoIter = std::slice::Iter<'a, ObjectRef>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// A reference to a core Service from a route's (or a listener's) reference
/// site, with the Service port it names (0 when absent: the CRDs require one).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceRef {
    pub service: ObjectRef,
    pub port: u16,
}

/// What the index needs of a route, or of anything indexed like one
/// (`Referrer`): the Gateways it attaches to and the XBackends (in its own
/// namespace) it sends, mirrors or hands authorization to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Route {
    /// Gateways from parentRefs (group/kind defaults applied; other parent
    /// kinds dropped); a Gateway's own entry names itself, a ListenerSet's its parent.
    pub gateways: Refs,
    /// XBackends from every site docs/design.md §3 lists, only those in the
    /// object's namespace.
    pub backends: Refs,
    /// Core Services from the same sites, in any namespace (a ReferenceGrant
    /// decides), sorted and distinct; kept only for `--egress-cluster routes`.
    pub services: Box<[ServiceRef]>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Gateway {
    pub class_name: String,
    /// For the owner reference of its egress NetworkPolicies (empty from files).
    pub uid: String,
    /// XBackends its listeners' ExternalAuth filters name (in its namespace).
    pub external_auth: Refs,
    /// Services its listeners' ExternalAuth filters name.
    pub external_auth_services: Box<[ServiceRef]>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewayClass {
    pub controller_name: String,
}

/// ReferenceGrant `spec.from` entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GrantFrom {
    pub group: String,
    pub kind: String,
    pub namespace: String,
}

/// ReferenceGrant `spec.to` entry; `name: None` allows every object of the kind.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GrantTo {
    pub group: String,
    pub kind: String,
    pub name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReferenceGrant {
    pub from: Vec<GrantFrom>,
    pub to: Vec<GrantTo>,
}

/// What the index keeps of a Pod: its labels, for EndpointSelector backends.
/// `live` is false for Pods being deleted or finished (phase Succeeded or
/// Failed); the index keeps only live ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pod {
    pub labels: BTreeMap<String, String>,
    pub live: bool,
}

/// A transport protocol of a Service or EndpointSlice port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// From the API's spelling; None for one this controller does not know.
    pub fn parse(text: Option<&str>) -> Option<Protocol> {
        match text.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

/// A port by number or by name (a Pod's named container port).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortRef {
    Number(u16),
    Name(Arc<str>),
}

impl std::fmt::Display for PortRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(name) => f.write_str(name),
        }
    }
}

/// One port of a Service: the port routes name, and where it sends (the
/// target port on the Pods, a number or a name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: Box<str>,
    pub port: u16,
    pub target: PortRef,
    pub protocol: Protocol,
}

/// What `--egress-cluster routes` reads of a Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// Empty: no selector (its EndpointSlices are written by hand, or by another controller).
    pub selector: BTreeMap<String, String>,
    /// type ExternalName: the name it aliases.
    pub external_name: Option<String>,
    pub ports: Box<[ServicePort]>,
}

/// What the index keeps of an EndpointSlice no controller manages: the
/// Service it belongs to, its ready addresses and its ports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointSlice {
    /// From the label kubernetes.io/service-name (None: it belongs to no Service).
    pub service: Option<ObjectRef>,
    pub addresses: Box<[std::net::IpAddr]>,
    /// Name, number, protocol.
    pub ports: Box<[(Box<str>, u16, Protocol)]>,
}

/// One decoded object of some kind: what a watch event or an `analyze` file
/// gives the index.
// Objects live only between a watch event and the index, so boxing the large
// XBackend variant would buy nothing but an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Route(RouteKind, Route),
    Gateway(Gateway),
    /// Indexed like a route: its parent Gateway and its listeners' ExternalAuth targets.
    ListenerSet(Route),
    GatewayClass(GatewayClass),
    ReferenceGrant(ReferenceGrant),
    XBackend(Backend),
    Pod(Pod),
    Namespace,
    Service(Service),
    EndpointSlice(EndpointSlice),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Route(route_kind, _) => Kind::Route(*route_kind),
            Object::Gateway(_) => Kind::Gateway,
            Object::ListenerSet(_) => Kind::ListenerSet,
            Object::GatewayClass(_) => Kind::GatewayClass,
            Object::ReferenceGrant(_) => Kind::ReferenceGrant,
            Object::XBackend(_) => Kind::XBackend,
            Object::Pod(_) => Kind::Pod,
            Object::Namespace => Kind::Namespace,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
        }
    }
}

/// An XBackend as the index holds it: the one record of it, so a reconcile
/// sees spec, generation and stored status of the same resourceVersion.
/// `spec` is Err(message) when the stored object does not decode (possible
/// when the CRD's schema was not enforced).
#[derive(Clone, Debug, PartialEq)]
pub struct Backend {
    pub generation: i64,
    pub spec: Result<XBackendSpec, String>,
    /// Empty for objects read from files. Shared with what the runtime
    /// remembers of its reconciles.
    pub uid: Arc<str>,
    pub resource_version: String,
    pub status: StoredStatus,
}

/// The installed CRD's status layout: ours (`ancestors`/`ancestorRef`) or
/// upstream v1.6 (`parents`/`parentRef`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Shape {
    #[default]
    Ancestors,
    Parents,
}

impl Shape {
    pub fn list_field(self) -> &'static str {
        match self {
            Shape::Ancestors => "ancestors",
            Shape::Parents => "parents",
        }
    }
    pub fn ref_field(self) -> &'static str {
        match self {
            Shape::Ancestors => "ancestorRef",
            Shape::Parents => "parentRef",
        }
    }
}

/// The stored `status`. Only a write reads it, to merge into it. The usual
/// shape (each entry a Gateway reference, a controller and its conditions)
/// is kept as shared strings: messages, reasons, times and names repeat
/// across thousands of XBackends, and as text it was the largest part of
/// each record (about 500 bytes). Any other shape is kept as the JSON text
/// the apiserver sent, so what others wrote survives byte for byte.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredStatus(Stored);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum Stored {
    #[default]
    Absent,
    /// `{<list field>: [entries]}`.
    Entries {
        shape: Shape,
        entries: Box<[StoredEntry]>,
    },
    Text(Box<str>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct StoredEntry {
    /// group, kind, namespace, name.
    reference: [Arc<str>; 4],
    controller: Arc<str>,
    conditions: Box<[StoredCondition]>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct StoredCondition {
    /// type, status, reason, message, lastTransitionTime.
    text: [Arc<str>; 5],
    observed_generation: i64,
}

const REFERENCE_FIELDS: [&str; 4] = ["group", "kind", "namespace", "name"];
const CONDITION_FIELDS: [&str; 5] = ["type", "status", "reason", "message", "lastTransitionTime"];

impl StoredStatus {
    pub fn from_value(status: &serde_json::Value) -> Self {
        if status.is_null() {
            return StoredStatus::default();
        }
        StoredStatus(Stored::entries(status).unwrap_or_else(|| Stored::Text(status.to_string().into_boxed_str())))
    }

    /// From the JSON text as the apiserver sent it (null becomes absent).
    pub fn from_json(text: &str) -> Self {
        let text = text.trim();
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Null) => StoredStatus::default(),
            Err(_) if text.is_empty() => StoredStatus::default(),
            Ok(status) => StoredStatus(Stored::entries(&status).unwrap_or_else(|| Stored::Text(text.into()))),
            Err(_) => StoredStatus(Stored::Text(text.into())),
        }
    }

    /// The whole status (Null when absent or not JSON).
    pub fn value(&self) -> serde_json::Value {
        match &self.0 {
            Stored::Absent => serde_json::Value::Null,
            Stored::Entries { shape, entries } => {
                let entries: Vec<_> = entries.iter().map(|e| e.value(shape.ref_field())).collect();
                serde_json::json!({shape.list_field(): entries})
            }
            Stored::Text(text) => serde_json::from_str(text).unwrap_or(serde_json::Value::Null),
        }
    }

    /// The array at `status.<field>`, when the stored status has one.
    pub fn list(&self, field: &str) -> Option<Vec<serde_json::Value>> {
        match self.value() {
            serde_json::Value::Object(mut status) => match status.remove(field) {
                Some(serde_json::Value::Array(list)) => Some(list),
                _ => None,
            },
            _ => None,
        }
    }
}

impl Stored {
    /// The usual shape as shared strings; None for anything else. What
    /// would not read back as the same JSON (another field, a number that
    /// is not an i64, another shape) is anything else.
    fn entries(status: &serde_json::Value) -> Option<Stored> {
        use crate::object::intern;
        let strings = |object: &serde_json::Value, fields: &[&str]| -> Option<Vec<Arc<str>>> {
            fields.iter().map(|f| object.get(*f)?.as_str().map(intern)).collect()
        };
        let shape = [Shape::Ancestors, Shape::Parents].into_iter().find(|s| status.get(s.list_field()).is_some())?;
        let entries = status[shape.list_field()].as_array()?.iter().map(|entry| {
            let conditions = entry.get("conditions")?.as_array()?.iter().map(|condition| {
                Some(StoredCondition {
                    text: strings(condition, &CONDITION_FIELDS)?.try_into().ok()?,
                    observed_generation: condition.get("observedGeneration")?.as_i64()?,
                })
            });
            Some(StoredEntry {
                reference: strings(entry.get(shape.ref_field())?, &REFERENCE_FIELDS)?.try_into().ok()?,
                controller: intern(entry.get("controllerName")?.as_str()?),
                conditions: conditions.collect::<Option<_>>()?,
            })
        });
        let stored = StoredStatus(Stored::Entries { shape, entries: entries.collect::<Option<_>>()? });
        (stored.value() == *status).then_some(stored.0)
    }
}

impl StoredEntry {
    fn value(&self, reference: &str) -> serde_json::Value {
        let fields = |names: &[&str], values: &[Arc<str>]| -> serde_json::Map<String, serde_json::Value> {
            names.iter().zip(values).map(|(n, v)| (n.to_string(), serde_json::Value::from(&**v))).collect()
        };
        let conditions = self.conditions.iter().map(|c| {
            let mut condition = fields(&CONDITION_FIELDS, &c.text);
            condition.insert("observedGeneration".into(), c.observed_generation.into());
            serde_json::Value::Object(condition)
        });
        serde_json::json!({
            reference: fields(&REFERENCE_FIELDS, &self.reference),
            "controllerName": &*self.controller,
            "conditions": conditions.collect::<Vec<_>>(),
        })
    }
}

impl Backend {
    /// A backend with no identity or status yet, as tests and files build them.
    pub fn new(generation: i64, spec: Result<XBackendSpec, String>) -> Self {
        Backend {
            generation,
            spec,
            uid: Arc::default(),
            resource_version: String::new(),
            status: StoredStatus::default(),
        }
    }

    /// False when `self` tells nothing beyond `old`: the same object at the
    /// same resourceVersion, or an older one (a watch can lag behind a read
    /// made after a conflict). Opaque versions that differ count as news. So
    /// does the same version with another stored status: after the CRD's
    /// schema changes, the apiserver prunes what it serves differently, and
    /// a re-list shows what the old schema hid (docs/design.md §11).
    pub fn is_newer_than(&self, old: &Backend) -> bool {
        if old.uid != self.uid {
            return true;
        }
        match (old.resource_version.parse::<u64>(), self.resource_version.parse::<u64>()) {
            (Ok(a), Ok(b)) if a == b => self.status != old.status,
            (Ok(a), Ok(b)) => b > a,
            _ => old.resource_version != self.resource_version || self.status != old.status,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usual(list: &str, reference: &str, message: &str) -> serde_json::Value {
        let condition = |type_: &str| {
            serde_json::json!({"type": type_, "status": "True", "reason": type_, "message": message,
                "lastTransitionTime": "2026-12-07T10:00:00Z", "observedGeneration": 2})
        };
        serde_json::json!({list: [{
            reference: {"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "infra", "name": "gw"},
            "controllerName": "example.com/ctl",
            "conditions": [condition("Accepted"), condition("ResolvedRefs")],
        }]})
    }

    #[test]
    fn the_usual_status_is_kept_as_shared_strings_and_reads_back_the_same() {
        for (list, reference) in [Shape::Ancestors, Shape::Parents].map(|s| (s.list_field(), s.ref_field())) {
            let status = usual(list, reference, "fine");
            let (a, b) = (StoredStatus::from_value(&status), StoredStatus::from_json(&status.to_string()));
            let Stored::Entries { entries, .. } = &a.0 else { panic!("{list}: kept as text: {a:?}") };
            assert_eq!(a, b, "{list}");
            assert_eq!(a.value(), status, "{list}");
            assert_eq!(a.list(list).as_deref(), status[list].as_array().map(Vec::as_slice), "{list}");
            assert_eq!(a.list("conditions"), None);
            let Stored::Entries { entries: others, .. } = &b.0 else { unreachable!() };
            let message = |e: &[StoredEntry]| e[0].conditions[0].text[3].clone();
            assert!(Arc::ptr_eq(&message(entries), &message(others)), "one copy of a message");
        }
        assert_ne!(
            StoredStatus::from_value(&usual("ancestors", "ancestorRef", "fine")),
            StoredStatus::from_value(&usual("ancestors", "ancestorRef", "other"))
        );
    }

    #[test]
    fn any_other_status_is_kept_as_the_text_sent() {
        let mut section = usual("ancestors", "ancestorRef", "fine");
        section["ancestors"][0]["ancestorRef"]["sectionName"] = "https".into();
        let mut vendor = usual("ancestors", "ancestorRef", "fine");
        vendor["ancestors"][0]["vendorExtension"] = serde_json::json!({"nested": [1, {"z": null}]});
        let mut float = usual("ancestors", "ancestorRef", "fine");
        float["ancestors"][0]["conditions"][0]["observedGeneration"] = 1.5.into();
        let mut beside = usual("ancestors", "ancestorRef", "fine");
        beside["conditions"] = serde_json::json!([]);
        let mismatched = usual("ancestors", "parentRef", "fine");
        for status in [section, vendor, float, beside, mismatched] {
            let text = format!(" {} ", serde_json::to_string_pretty(&status).unwrap());
            let stored = StoredStatus::from_json(&text);
            assert_eq!(stored.0, Stored::Text(text.trim().into()), "byte for byte");
            assert_eq!(stored.value(), status);
            assert_eq!(StoredStatus::from_value(&status).value(), status);
        }
        assert_eq!(StoredStatus::from_json("null"), StoredStatus::default());
        assert_eq!(StoredStatus::from_json(" "), StoredStatus::default());
        assert_eq!(StoredStatus::from_json("{not json").value(), serde_json::Value::Null);
    }

    fn at(version: &str, status: serde_json::Value) -> Backend {
        Backend {
            uid: "u".into(),
            resource_version: version.into(),
            status: StoredStatus::from_value(&status),
            ..Backend::new(1, Err(String::new()))
        }
    }

    #[test]
    fn newer_is_a_later_version_or_the_same_one_read_differently() {
        let entry = serde_json::json!({"ancestors": [{"controllerName": "x"}]});
        let pruned = serde_json::json!({});
        assert!(at("8", pruned.clone()).is_newer_than(&at("7", pruned.clone())));
        assert!(!at("7", pruned.clone()).is_newer_than(&at("8", pruned.clone())), "a lagging event");
        assert!(!at("7", pruned.clone()).is_newer_than(&at("7", pruned.clone())), "the same event again");
        // A re-list after a schema change shows what the old schema pruned.
        assert!(at("7", entry).is_newer_than(&at("7", pruned)));
    }
}
