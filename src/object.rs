//! The kinds this controller reads and how it names their objects: one
//! table for names, API groups and versions. A leaf: it imports nothing of the
//! crate, so decoding, the index and every watch share it without each other.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

/// The API group of XBackend (Gateway API's experimental group).
pub const XBACKEND_GROUP: &str = "gateway.networking.x-k8s.io";
/// The API group of Gateway, GatewayClass, the routes and ReferenceGrant.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// Namespace and name of a namespaced object (empty namespace for cluster-scoped).
///
/// Shared strings: the index keeps the same key in several maps (the record,
/// reverse indexes, reports, the queue), and a clone costs no allocation.
/// Keys built apart (an object's own, each route's reference to it, each
/// watch event's) share their strings too: `new` interns them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ObjectRef {
    pub fn new(namespace: impl AsRef<str>, name: impl AsRef<str>) -> Self {
        ObjectRef { namespace: intern(namespace.as_ref()), name: intern(name.as_ref()) }
    }
}

/// Every namespace and name a live key spells, once. At N=10,000 a name was
/// held in three to five copies (the object's key, each reference to it,
/// each queued event) at some 48 bytes each.
static INTERNED: LazyLock<Mutex<Interned>> = LazyLock::new(Mutex::default);

#[derive(Default)]
struct Interned {
    strings: HashSet<Arc<str>>,
    /// The set's size at which strings no key holds any more are dropped:
    /// twice what was left at the last sweep, so sweeps cost O(1) per call.
    sweep_at: usize,
}

pub fn intern(text: &str) -> Arc<str> {
    // A panic elsewhere while the lock was held leaves the set consistent.
    INTERNED.lock().unwrap_or_else(PoisonError::into_inner).get(text)
}

impl Interned {
    fn get(&mut self, text: &str) -> Arc<str> {
        if let Some(shared) = self.strings.get(text) {
            return shared.clone();
        }
        if self.strings.len() >= self.sweep_at {
            self.strings.retain(|s| Arc::strong_count(s) > 1);
            self.sweep_at = (2 * self.strings.len()).max(1024);
        }
        let shared: Arc<str> = text.into();
        self.strings.insert(shared.clone());
        shared
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}", self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// Route kinds whose backendRefs can point at an XBackend. Every served
/// version of a kind decodes the same way: the fields read here did not change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteKind {
    Http,
    Grpc,
    Tcp,
    Tls,
    Udp,
}

impl RouteKind {
    pub const ALL: [RouteKind; 5] = [RouteKind::Http, RouteKind::Grpc, RouteKind::Tcp, RouteKind::Tls, RouteKind::Udp];
    pub fn kind(self) -> &'static str {
        Kind::Route(self).name()
    }
}

/// Every kind the index holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Route(RouteKind),
    Gateway,
    ListenerSet,
    GatewayClass,
    ReferenceGrant,
    XBackend,
    /// Watched by metadata only; only labels matter.
    Pod,
    /// Watched by metadata only; only names matter (cluster-aware guardrails).
    Namespace,
    /// What `--egress-cluster routes` reads of the Services routes name.
    Service,
    /// Only those no controller manages: a selectorless Service's addresses.
    EndpointSlice,
}

/// One row of the kind table.
struct Row {
    kind: Kind,
    name: &'static str,
    group: &'static str,
    /// The one version read; None: every served version (discovery picks).
    version: Option<&'static str>,
    namespaced: bool,
}

const fn row(kind: Kind, name: &'static str, group: &'static str, version: Option<&'static str>) -> Row {
    Row { kind, name, group, version, namespaced: true }
}

/// The table: every name, group and version the controller spells.
const TABLE: [Row; 14] = [
    row(Kind::Route(RouteKind::Http), "HTTPRoute", GATEWAY_GROUP, None),
    row(Kind::Route(RouteKind::Grpc), "GRPCRoute", GATEWAY_GROUP, None),
    row(Kind::Route(RouteKind::Tcp), "TCPRoute", GATEWAY_GROUP, None),
    row(Kind::Route(RouteKind::Tls), "TLSRoute", GATEWAY_GROUP, None),
    row(Kind::Route(RouteKind::Udp), "UDPRoute", GATEWAY_GROUP, None),
    row(Kind::Gateway, "Gateway", GATEWAY_GROUP, None),
    row(Kind::ListenerSet, "ListenerSet", GATEWAY_GROUP, None),
    Row { namespaced: false, ..row(Kind::GatewayClass, "GatewayClass", GATEWAY_GROUP, None) },
    row(Kind::ReferenceGrant, "ReferenceGrant", GATEWAY_GROUP, None),
    row(Kind::XBackend, "XBackend", XBACKEND_GROUP, Some("v1alpha1")),
    row(Kind::Pod, "Pod", "", Some("v1")),
    Row { namespaced: false, ..row(Kind::Namespace, "Namespace", "", Some("v1")) },
    row(Kind::Service, "Service", "", Some("v1")),
    row(Kind::EndpointSlice, "EndpointSlice", "discovery.k8s.io", Some("v1")),
];

impl Kind {
    fn row(self) -> &'static Row {
        TABLE.iter().find(|row| row.kind == self).expect("every kind has a row")
    }

    /// Every kind, in table order.
    pub fn all() -> impl Iterator<Item = Kind> {
        TABLE.iter().map(|row| row.kind)
    }

    /// The kind's name as the API spells it (`HTTPRoute`).
    pub fn name(self) -> &'static str {
        self.row().name
    }

    /// Its API group ("" for the core group).
    pub fn group(self) -> &'static str {
        self.row().group
    }

    /// The one version read, or None when every served version decodes alike.
    pub fn version(self) -> Option<&'static str> {
        self.row().version
    }

    pub fn namespaced(self) -> bool {
        self.row().namespaced
    }

    /// Which kind an apiVersion/kind pair is, if any: the group must match,
    /// and the version too where the table names one.
    pub fn of(api_version: &str, kind: &str) -> Option<Kind> {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        if version.is_empty() {
            return None;
        }
        let row = TABLE.iter().find(|row| row.name == kind && row.group == group)?;
        row.version.is_none_or(|v| v == version).then_some(row.kind)
    }
}

/// Objects an XBackend can reference by kind, watched by metadata only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefKind {
    Secret,
    ConfigMap,
}

impl RefKind {
    pub fn name(self) -> &'static str {
        match self {
            RefKind::Secret => "Secret",
            RefKind::ConfigMap => "ConfigMap",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_built_apart_share_their_strings_and_unheld_ones_are_swept() {
        let (a, b) = (ObjectRef::new("ns-interned", "b-interned"), ObjectRef::new("ns-interned", "b-interned"));
        assert!(Arc::ptr_eq(&a.name, &b.name) && Arc::ptr_eq(&a.namespace, &b.namespace));

        let mut interned = Interned::default();
        let held: Vec<Arc<str>> = (0..1000).map(|i| interned.get(&format!("held-{i}"))).collect();
        for i in 0..5000 {
            drop(interned.get(&format!("dropped-{i}")));
        }
        // Sweeps keep what a key holds, and the dropped never pile up.
        assert!(held.iter().all(|s| interned.strings.contains(s)));
        assert!(interned.strings.len() < 1000 + 2048, "{} strings kept", interned.strings.len());
        assert!(Arc::ptr_eq(&interned.get("held-7"), &held[7]));
    }

    #[test]
    fn one_row_per_kind_and_each_pair_reads_back() {
        let kinds: Vec<Kind> = Kind::all().collect();
        for (i, kind) in kinds.iter().enumerate() {
            assert!(!kinds[..i].contains(kind), "{kind:?} twice");
            let api_version = match (kind.group(), kind.version()) {
                ("", Some(v)) => v.to_string(),
                (group, Some(v)) => format!("{group}/{v}"),
                (group, None) => format!("{group}/v1"),
            };
            assert_eq!(Kind::of(&api_version, kind.name()), Some(*kind), "{api_version} {}", kind.name());
        }
        for route in RouteKind::ALL {
            assert!(kinds.contains(&Kind::Route(route)));
        }
    }

    #[test]
    fn groups_and_versions_must_match() {
        assert_eq!(Kind::of("gateway.networking.k8s.io/v1beta1", "HTTPRoute"), Some(Kind::Route(RouteKind::Http)));
        assert_eq!(Kind::of("gateway.networking.k8s.io/v1alpha3", "TLSRoute"), Some(Kind::Route(RouteKind::Tls)));
        assert_eq!(Kind::of("gateway.networking.x-k8s.io/v1alpha1", "XBackend"), Some(Kind::XBackend));
        assert_eq!(Kind::of("gateway.networking.x-k8s.io/v1alpha2", "XBackend"), None, "only the version we read");
        assert_eq!(Kind::of("gateway.networking.x-k8s.io/v1", "HTTPRoute"), None, "another group");
        assert_eq!(Kind::of("v1", "Pod"), Some(Kind::Pod));
        assert_eq!(Kind::of("apps/v1", "Pod"), None);
        assert_eq!(Kind::of("gateway.networking.k8s.io/", "Gateway"), None, "no version");
        assert_eq!(Kind::of("v1", "Secret"), None, "not an index kind");
        assert_eq!(Kind::of("discovery.k8s.io/v1", "EndpointSlice"), Some(Kind::EndpointSlice));
        assert!(!Kind::GatewayClass.namespaced() && !Kind::Namespace.namespaced() && Kind::Gateway.namespaced());
    }
}
