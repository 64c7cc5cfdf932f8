//! In-memory index of the watched objects. Watches feed it (apply / delete /
//! retain after a re-list); each call returns the XBackends whose status may have changed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::api::{self, XBackendSpec};
use crate::guardrails;
use crate::model::{
    Ancestor, Backend, Gateway, GatewayClass, ObjectRef, Pod, ReferenceGrant, Referrer, Referrers, Refs, Route,
    RouteKind,
};

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
}

/// One decoded object of some kind.
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
        }
    }
}

/// Objects an XBackend can reference by kind, watched by metadata only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefKind {
    Secret,
    ConfigMap,
}

/// True for the core API group, however a reference spells it.
pub fn is_core_group(group: Option<&str>) -> bool {
    matches!(group, None | Some("") | Some("core"))
}

/// The Secret an XBackend's `spec.tls.clientCertificateRef` names, when it
/// names one (core group, kind Secret or unset); namespace defaults to the XBackend's.
pub fn client_certificate_secret(backend: &ObjectRef, spec: &XBackendSpec) -> Option<ObjectRef> {
    let reference = spec.tls.as_ref()?.client_certificate_ref.as_ref()?;
    let is_secret =
        is_core_group(reference.group.as_deref()) && matches!(reference.kind.as_deref(), None | Some("Secret"));
    is_secret.then(|| ObjectRef::new(reference.namespace.as_deref().unwrap_or(&backend.namespace), &reference.name))
}

/// The ConfigMaps (always in the XBackend's namespace) that
/// `spec.tls.validation.caCertificateRefs` names, skipping other kinds.
pub fn ca_certificate_config_maps(backend: &ObjectRef, spec: &XBackendSpec) -> Vec<ObjectRef> {
    let refs = spec.tls.as_ref().and_then(|tls| tls.validation.as_ref()).and_then(|v| v.ca_certificate_refs.as_ref());
    refs.into_iter()
        .flatten()
        .filter(|r| is_core_group(Some(&r.group)) && r.kind == "ConfigMap")
        .map(|r| ObjectRef::new(&backend.namespace, &r.name))
        .collect()
}

/// Namespace of `spec.tls.clientCertificateRef` when it leaves the XBackend's
/// namespace (of any kind: a grant there can change the verdict).
pub fn cross_namespace_target(backend: &ObjectRef, spec: &XBackendSpec) -> Option<String> {
    let namespace = spec.tls.as_ref()?.client_certificate_ref.as_ref()?.namespace.as_ref()?;
    (**namespace != *backend.namespace).then(|| namespace.clone())
}

/// True when one of `grants` (those of `to.namespace`) lets XBackends from
/// `from_namespace` reference the object (`group`, `kind`, `to.name`).
pub fn grants_permit<'a>(
    mut grants: impl Iterator<Item = &'a ReferenceGrant>,
    from_namespace: &str,
    group: &str,
    kind: &str,
    to: &ObjectRef,
) -> bool {
    let same_group = |a: &str, b: &str| a == b || (is_core_group(Some(a)) && is_core_group(Some(b)));
    grants.any(|grant| {
        let from_ok =
            grant.from.iter().any(|f| f.group == api::GROUP && f.kind == api::KIND && f.namespace == from_namespace);
        let to_ok = grant
            .to
            .iter()
            .any(|t| same_group(&t.group, group) && t.kind == kind && t.name.as_ref().is_none_or(|n| **n == *to.name));
        from_ok && to_ok
    })
}

/// The labels an EndpointSelector XBackend selects Pods by.
pub fn endpoint_selector(spec: &XBackendSpec) -> Option<&BTreeMap<String, String>> {
    spec.endpoint_selector.as_ref().map(|selector| &selector.match_labels)
}

/// The normalized hostname of an ExternalHostname XBackend.
pub fn external_hostname(spec: &XBackendSpec) -> Option<String> {
    spec.external_hostname.as_ref().map(|e| crate::names::normalize(&e.hostname))
}

/// matchLabels semantics: every selector label is on the Pod. An empty
/// selector selects nothing here (validation rejects it anyway).
fn selects(selector: &BTreeMap<String, String>, labels: &Labels) -> bool {
    let get = |key: &str| labels.binary_search_by(|(k, _)| (**k).cmp(key)).ok().map(|i| &*labels[i].1);
    !selector.is_empty() && selector.iter().all(|(key, value)| get(key) == Some(value.as_str()))
}

/// A Pod's labels, sorted by key, in one allocation per string: a BTreeMap
/// costs a node of eleven slots even for the two labels most Pods carry, and
/// the index keeps every live Pod of the cluster.
type Labels = Box<[(Box<str>, Box<str>)]>;

fn compact(labels: BTreeMap<String, String>) -> Labels {
    labels.into_iter().map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str())).collect()
}

type RouteKey = (Referrer, ObjectRef);

/// Plain maps of every kind plus reverse indexes, so each change finds the
/// XBackends it affects without scanning.
#[derive(Debug, Default)]
pub struct Index {
    controller_name: String,
    /// Guard mode (`--gateway-class`): classes judged whatever their controllerName.
    guarded_classes: BTreeSet<String>,

    /// Routes, and Gateways and ListenerSets as their ExternalAuth filters
    /// make them referrers, that name at least one XBackend: the others
    /// cannot make ancestors, and most routes point at Services.
    routes: HashMap<RouteKey, Route>,
    gateways: HashMap<ObjectRef, Gateway>,
    /// Keyed by name (cluster-scoped).
    classes: HashMap<String, GatewayClass>,
    /// Ordered so the grants of one namespace are a contiguous range.
    grants: BTreeMap<ObjectRef, ReferenceGrant>,
    /// Shared with reconcile snapshots, which then copy no spec or status.
    backends: BTreeMap<ObjectRef, Arc<Backend>>,

    /// XBackend (may not exist yet) -> routes (and other referrers) naming it.
    routes_by_backend: HashMap<ObjectRef, Members<RouteKey>>,
    /// Gateway (may not exist yet) -> routes with a parentRef to it.
    routes_by_gateway: HashMap<ObjectRef, Members<RouteKey>>,
    /// GatewayClass name -> existing Gateways of that class.
    gateways_by_class: HashMap<String, Members<ObjectRef>>,
    /// Secret -> XBackends whose clientCertificateRef names it.
    backends_by_secret: HashMap<ObjectRef, Members<ObjectRef>>,
    /// ConfigMap -> XBackends whose caCertificateRefs name it.
    backends_by_config_map: HashMap<ObjectRef, Members<ObjectRef>>,
    /// Namespace -> XBackends of other namespaces whose clientCertificateRef points there.
    backends_by_target_namespace: HashMap<String, Members<ObjectRef>>,

    /// Namespace -> live Pods' labels by Pod name.
    pods: HashMap<String, HashMap<Box<str>, Labels>>,
    /// Namespace -> EndpointSelector XBackends in it (their selectors are in `backends`).
    selectors_by_namespace: HashMap<String, Members<ObjectRef>>,

    /// Namespaces of the cluster: a hostname ending in one reaches inside it.
    /// Shared with reconcile snapshots; copied only when a Namespace comes or goes.
    namespaces: Arc<BTreeSet<String>>,
    /// Last label -> XBackends whose hostname (two or three labels) ends in it.
    backends_by_last_label: HashMap<String, Members<ObjectRef>>,
    /// Hostname -> XBackends of type ExternalHostname that name it, for DNS answers.
    backends_by_hostname: HashMap<String, Members<ObjectRef>>,
}

impl guardrails::Namespaces for Index {
    fn contains(&self, name: &str) -> bool {
        self.namespaces.contains(name)
    }
}

fn insert_into<K: std::hash::Hash + Eq, V: Ord>(map: &mut HashMap<K, Members<V>>, key: K, value: V) {
    match map.entry(key) {
        std::collections::hash_map::Entry::Occupied(mut members) => members.get_mut().insert(value),
        std::collections::hash_map::Entry::Vacant(slot) => {
            slot.insert(Members::One(value));
        }
    }
}

/// Removes `value` and drops the entry once empty, so deleted objects leave nothing behind.
fn remove_from<K: std::hash::Hash + Eq, V: Ord>(map: &mut HashMap<K, Members<V>>, key: &K, value: &V) {
    if let Some(members) = map.get_mut(key)
        && members.remove(value)
    {
        map.remove(key);
    }
}

/// The members behind one key of a reverse index. Most keys have exactly one
/// (a hostname, a backend's routes), and a BTreeSet would allocate a node of
/// eleven slots for it: at 10,000 XBackends that was most of the index.
#[derive(Debug)]
enum Members<V> {
    One(V),
    Many(BTreeSet<V>),
}

impl<V: Ord> Members<V> {
    fn insert(&mut self, value: V) {
        match self {
            Members::One(one) if *one == value => {}
            Members::One(_) => {
                let Members::One(one) = std::mem::replace(self, Members::Many(BTreeSet::new())) else { unreachable!() };
                *self = Members::Many(BTreeSet::from([one, value]));
            }
            Members::Many(set) => {
                set.insert(value);
            }
        }
    }

    /// Returns true when nothing is left.
    fn remove(&mut self, value: &V) -> bool {
        match self {
            Members::One(one) => one == value,
            Members::Many(set) => {
                set.remove(value);
                match set.len() {
                    0 => true,
                    1 => {
                        *self = Members::One(set.pop_first().expect("one member"));
                        false
                    }
                    _ => false,
                }
            }
        }
    }

    fn iter(&self) -> MembersIter<'_, V> {
        let (one, many) = match self {
            Members::One(one) => (Some(one), None),
            Members::Many(set) => (None, Some(set.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    fn to_set(&self) -> BTreeSet<V>
    where
        V: Clone,
    {
        self.iter().cloned().collect()
    }
}

type MembersIter<'a, V> = std::iter::Chain<
    std::option::IntoIter<&'a V>,
    std::iter::Flatten<std::option::IntoIter<std::collections::btree_set::Iter<'a, V>>>,
>;

impl<'a, V: Ord> IntoIterator for &'a Members<V> {
    type Item = &'a V;
    type IntoIter = MembersIter<'a, V>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl Index {
    /// `controller_name` decides which GatewayClasses are ours.
    pub fn new(controller_name: impl Into<String>) -> Self {
        Index { controller_name: controller_name.into(), ..Index::default() }
    }

    /// Guard mode (docs/design.md §3): Gateways whose `gatewayClassName` is
    /// one of `classes` are judged too, whoever implements them. Call on an
    /// empty index: it changes which Gateways count.
    pub fn guarding(mut self, classes: impl IntoIterator<Item = String>) -> Self {
        self.guarded_classes = classes.into_iter().collect();
        self
    }

    /// Adds or replaces one object (cluster-scoped kinds use an empty namespace).
    ///
    /// An XBackend always returns itself, even when its spec is unchanged: a
    /// new version can carry someone else's status change (the index holds
    /// the stored status too), and a reconcile that finds nothing to change
    /// writes nothing. The state filters out our own echoes before this.
    pub fn apply(&mut self, key: ObjectRef, object: Object) -> BTreeSet<ObjectRef> {
        self.put(key, Some(object))
    }

    /// Removes one object. Deleting an XBackend returns itself, so the caller
    /// can drop whatever it keeps per XBackend.
    pub fn delete(&mut self, kind: Kind, key: &ObjectRef) -> BTreeSet<ObjectRef> {
        self.remove(kind, key)
    }

    /// Ends a watch re-list whose objects were applied one by one as they
    /// arrived: deletes the objects of `kind` it did not see. Streaming a
    /// re-list this way never holds two copies of every object.
    pub fn retain(&mut self, kind: Kind, seen: &BTreeSet<ObjectRef>) -> BTreeSet<ObjectRef> {
        let gone: Vec<ObjectRef> = self.keys_of(kind).into_iter().filter(|key| !seen.contains(key)).collect();
        let mut affected = BTreeSet::new();
        for key in gone {
            affected.extend(self.remove(kind, &key));
        }
        affected
    }

    /// XBackends that reference this Secret or ConfigMap.
    pub fn referencing(&self, kind: RefKind, key: &ObjectRef) -> BTreeSet<ObjectRef> {
        let map = match kind {
            RefKind::Secret => &self.backends_by_secret,
            RefKind::ConfigMap => &self.backends_by_config_map,
        };
        map.get(key).map(Members::to_set).unwrap_or_default()
    }

    /// docs/design.md §3: this controller's Gateways behind the objects that
    /// name `backend`, sorted by namespace then name, each with the kinds of
    /// those objects.
    pub fn ancestors(&self, backend: &ObjectRef) -> Vec<Ancestor> {
        let mut ancestors: BTreeMap<&ObjectRef, Referrers> = BTreeMap::new();
        for route_key in self.routes_by_backend.get(backend).into_iter().flatten() {
            // GEP-4894: a route never makes ancestors for another namespace's XBackend.
            if route_key.1.namespace != backend.namespace {
                continue;
            }
            let Some(route) = self.routes.get(route_key) else { continue };
            for gateway in route.gateways.iter().filter(|gw| self.is_our_gateway(gw)) {
                ancestors.entry(gateway).or_default().insert(route_key.0);
            }
        }
        ancestors.into_iter().map(|(gateway, referrers)| Ancestor { gateway: gateway.clone(), referrers }).collect()
    }

    /// Every Gateway this controller judges (docs/design.md §3), sorted.
    pub fn judged_gateways(&self) -> Vec<ObjectRef> {
        let mut judged: Vec<ObjectRef> = self.gateways.keys().filter(|gw| self.is_our_gateway(gw)).cloned().collect();
        judged.sort();
        judged
    }

    /// A Gateway as the index holds it (class name and uid).
    pub fn gateway(&self, gateway: &ObjectRef) -> Option<&Gateway> {
        self.gateways.get(gateway)
    }

    /// True when a live Pod in `namespace` carries every label of `selector`.
    pub fn has_matching_pod(&self, namespace: &str, selector: &BTreeMap<String, String>) -> bool {
        self.pods.get(namespace).is_some_and(|pods| pods.values().any(|labels| selects(selector, labels)))
    }

    /// The cluster's Namespaces, shared (cheap to hold in a snapshot).
    pub fn namespaces(&self) -> Arc<BTreeSet<String>> {
        self.namespaces.clone()
    }

    /// The XBackends whose spec names `hostname` (normalized).
    pub fn backends_with_hostname(&self, hostname: &str) -> BTreeSet<ObjectRef> {
        self.backends_by_hostname.get(hostname).map(Members::to_set).unwrap_or_default()
    }

    pub fn backend(&self, key: &ObjectRef) -> Option<&Backend> {
        self.backends.get(key).map(|b| &**b)
    }

    /// The record itself, shared (cheap to hold in a snapshot).
    pub fn backend_shared(&self, key: &ObjectRef) -> Option<Arc<Backend>> {
        self.backends.get(key).cloned()
    }

    pub fn backend_count(&self) -> usize {
        self.backends.len()
    }

    pub fn backend_keys(&self) -> Vec<ObjectRef> {
        self.backends.keys().cloned().collect()
    }

    /// True when a ReferenceGrant in `to.namespace` lets XBackends from
    /// `from_namespace` reference the object (`group`, `kind`, `to.name`).
    pub fn grant_permits(&self, from_namespace: &str, group: &str, kind: &str, to: &ObjectRef) -> bool {
        grants_permit(self.grants_in(&to.namespace), from_namespace, group, kind, to)
    }

    /// The ReferenceGrants of one namespace.
    pub fn grants_in<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a ReferenceGrant> + 'a {
        self.grants
            .range(ObjectRef::new(namespace, "")..)
            .take_while(move |(key, _)| &*key.namespace == namespace)
            .map(|(_, grant)| grant)
    }

    /// A Gateway counts only if it exists and its GatewayClass is ours.
    fn is_our_gateway(&self, gateway: &ObjectRef) -> bool {
        self.gateways.get(gateway).is_some_and(|gw| self.is_our_class(&gw.class_name))
    }

    /// Ours by controllerName (the class must exist), or named by `--gateway-class`.
    fn is_our_class(&self, class_name: &str) -> bool {
        self.guarded_classes.contains(class_name)
            || self.classes.get(class_name).is_some_and(|c| c.controller_name == self.controller_name)
    }

    fn keys_of(&self, kind: Kind) -> Vec<ObjectRef> {
        match kind {
            Kind::Route(route_kind) => self.referrer_keys(Referrer::Route(route_kind)),
            Kind::ListenerSet => self.referrer_keys(Referrer::ListenerSet),
            Kind::Gateway => self.gateways.keys().cloned().collect(),
            Kind::GatewayClass => self.classes.keys().map(|name| ObjectRef::new("", name)).collect(),
            Kind::ReferenceGrant => self.grants.keys().cloned().collect(),
            Kind::XBackend => self.backends.keys().cloned().collect(),
            Kind::Namespace => self.namespaces.iter().map(|name| ObjectRef::new("", name)).collect(),
            Kind::Pod => self
                .pods
                .iter()
                .flat_map(|(namespace, pods)| pods.keys().map(move |name| ObjectRef::new(namespace, &**name)))
                .collect(),
        }
    }

    fn referrer_keys(&self, referrer: Referrer) -> Vec<ObjectRef> {
        self.routes.keys().filter(|(r, _)| *r == referrer).map(|(_, key)| key.clone()).collect()
    }

    fn remove(&mut self, kind: Kind, key: &ObjectRef) -> BTreeSet<ObjectRef> {
        match kind {
            Kind::Route(route_kind) => self.put_route(Referrer::Route(route_kind), key.clone(), None),
            Kind::ListenerSet => self.put_route(Referrer::ListenerSet, key.clone(), None),
            Kind::Gateway => self.put_gateway(key.clone(), None),
            Kind::GatewayClass => self.put_class(&key.name, None),
            Kind::ReferenceGrant => self.put_grant(key.clone(), None),
            Kind::XBackend => {
                self.put_backend(key.clone(), None);
                BTreeSet::from([key.clone()])
            }
            Kind::Pod => self.put_pod(key, None),
            Kind::Namespace => self.put_namespace(&key.name, false),
        }
    }

    fn put(&mut self, key: ObjectRef, object: Option<Object>) -> BTreeSet<ObjectRef> {
        match object {
            None => BTreeSet::new(),
            Some(Object::Route(route_kind, route)) => self.put_route(Referrer::Route(route_kind), key, Some(route)),
            Some(Object::ListenerSet(route)) => self.put_route(Referrer::ListenerSet, key, Some(route)),
            Some(Object::Gateway(gateway)) => self.put_gateway(key, Some(gateway)),
            Some(Object::GatewayClass(class)) => self.put_class(&key.name, Some(class)),
            Some(Object::ReferenceGrant(grant)) => self.put_grant(key, Some(grant)),
            Some(Object::XBackend(backend)) => {
                self.put_backend(key.clone(), Some(backend));
                BTreeSet::from([key])
            }
            Some(Object::Pod(pod)) => {
                let labels = pod.live.then_some(pod.labels);
                self.put_pod(&key, labels)
            }
            Some(Object::Namespace) => self.put_namespace(&key.name, true),
        }
    }

    /// A Namespace coming or going affects exactly the XBackends whose
    /// two- or three-label hostname ends in its name.
    fn put_namespace(&mut self, name: &str, exists: bool) -> BTreeSet<ObjectRef> {
        if self.namespaces.contains(name) == exists {
            return BTreeSet::new();
        }
        let namespaces = Arc::make_mut(&mut self.namespaces);
        let changed = if exists { namespaces.insert(name.to_string()) } else { namespaces.remove(name) };
        if !changed {
            return BTreeSet::new();
        }
        self.backends_by_last_label.get(name).map(Members::to_set).unwrap_or_default()
    }

    /// A Pod affects the EndpointSelector XBackends of its namespace whose
    /// selector matched its labels before or matches them now.
    fn put_pod(&mut self, key: &ObjectRef, labels: Option<BTreeMap<String, String>>) -> BTreeSet<ObjectRef> {
        // The labels before and after: a backend that selects either is affected.
        let seen = match labels {
            Some(labels) => {
                let labels = compact(labels);
                let pods = self.pods.entry(key.namespace.to_string()).or_default();
                let old = pods.insert((*key.name).into(), labels.clone());
                if old.as_ref() == Some(&labels) {
                    return BTreeSet::new();
                }
                [old, Some(labels)]
            }
            None => {
                let Some(pods) = self.pods.get_mut(&*key.namespace) else { return BTreeSet::new() };
                let Some(old) = pods.remove(&*key.name) else { return BTreeSet::new() };
                if pods.is_empty() {
                    self.pods.remove(&*key.namespace);
                }
                [Some(old), None]
            }
        };
        let candidates = self.selectors_by_namespace.get(&*key.namespace).into_iter().flatten();
        candidates
            .filter(|backend| {
                let selector =
                    self.backends.get(*backend).and_then(|b| b.spec.as_ref().ok()).and_then(endpoint_selector);
                selector.is_some_and(|selector| seen.iter().flatten().any(|labels| selects(selector, labels)))
            })
            .cloned()
            .collect()
    }

    /// Only existing XBackends have a status to update.
    fn existing(&self, keys: impl IntoIterator<Item = ObjectRef>) -> BTreeSet<ObjectRef> {
        keys.into_iter().filter(|key| self.backends.contains_key(key)).collect()
    }

    fn put_route(&mut self, referrer: Referrer, key: ObjectRef, route: Option<Route>) -> BTreeSet<ObjectRef> {
        // GEP-4894: a route only ever sends to XBackends of its own namespace.
        let new = route
            .map(|r| Route {
                backends: r.backends.iter().filter(|b| b.namespace == key.namespace).cloned().collect(),
                ..r
            })
            .filter(|r| !r.backends.is_empty());
        let route_key = (referrer, key);
        let old = match &new {
            Some(new) => self.routes.insert(route_key.clone(), new.clone()),
            None => self.routes.remove(&route_key),
        };
        if old == new {
            return BTreeSet::new();
        }
        if let Some(old) = &old {
            for backend in &old.backends {
                remove_from(&mut self.routes_by_backend, backend, &route_key);
            }
            for gateway in &old.gateways {
                remove_from(&mut self.routes_by_gateway, gateway, &route_key);
            }
        }
        if let Some(new) = &new {
            for backend in &new.backends {
                insert_into(&mut self.routes_by_backend, backend.clone(), route_key.clone());
            }
            for gateway in &new.gateways {
                insert_into(&mut self.routes_by_gateway, gateway.clone(), route_key.clone());
            }
        }
        // What this route contributes to a backend is its set of live
        // Gateways; only backends whose contribution differs are affected.
        let live = |route: &Option<Route>| -> BTreeSet<ObjectRef> {
            route.iter().flat_map(|r| r.gateways.iter()).filter(|gw| self.is_our_gateway(gw)).cloned().collect()
        };
        let (old_live, new_live) = (live(&old), live(&new));
        let old_backends = old.map(|r| r.backends).unwrap_or_default();
        let new_backends = new.map(|r| r.backends).unwrap_or_default();
        let both: BTreeSet<&ObjectRef> = old_backends.iter().chain(new_backends.iter()).collect();
        let affected = both.into_iter().filter(|backend| {
            let before = if old_backends.contains(backend) { &old_live } else { &BTreeSet::new() };
            let after = if new_backends.contains(backend) { &new_live } else { &BTreeSet::new() };
            before != after
        });
        self.existing(affected.cloned().collect::<Vec<_>>())
    }

    /// A Gateway is two things to the index: a parent whose class decides
    /// whether it is judged, and (through its listeners' ExternalAuth
    /// filters) a referrer whose one Gateway is itself.
    fn put_gateway(&mut self, key: ObjectRef, mut gateway: Option<Gateway>) -> BTreeSet<ObjectRef> {
        let external_auth = gateway.as_mut().map(|g| std::mem::take(&mut g.external_auth));
        let was_ours = self.is_our_gateway(&key);
        let old = match &gateway {
            Some(new) => self.gateways.insert(key.clone(), new.clone()),
            None => self.gateways.remove(&key),
        };
        if let Some(old) = &old {
            remove_from(&mut self.gateways_by_class, &old.class_name, &key);
        }
        if let Some(new) = &gateway {
            insert_into(&mut self.gateways_by_class, new.class_name.clone(), key.clone());
        }
        let mut affected =
            if was_ours == self.is_our_gateway(&key) { BTreeSet::new() } else { self.backends_behind_gateway(&key) };
        let referrer = external_auth.map(|backends| Route { gateways: Refs::from_iter([key.clone()]), backends });
        affected.extend(self.put_route(Referrer::Gateway, key, referrer));
        affected
    }

    fn put_class(&mut self, name: &str, class: Option<GatewayClass>) -> BTreeSet<ObjectRef> {
        let was_ours = self.is_our_class(name);
        match class {
            Some(class) => self.classes.insert(name.to_string(), class),
            None => self.classes.remove(name),
        };
        if was_ours == self.is_our_class(name) {
            return BTreeSet::new();
        }
        let gateways: Vec<ObjectRef> = self.gateways_by_class.get(name).into_iter().flatten().cloned().collect();
        gateways.iter().flat_map(|gw| self.backends_behind_gateway(gw)).collect()
    }

    fn backends_behind_gateway(&self, gateway: &ObjectRef) -> BTreeSet<ObjectRef> {
        let routes = self.routes_by_gateway.get(gateway).into_iter().flatten();
        let backends = routes.filter_map(|key| self.routes.get(key)).flat_map(|route| route.backends.iter().cloned());
        self.existing(backends.collect::<Vec<_>>())
    }

    fn put_grant(&mut self, key: ObjectRef, grant: Option<ReferenceGrant>) -> BTreeSet<ObjectRef> {
        let old = match &grant {
            Some(new) => self.grants.insert(key.clone(), new.clone()),
            None => self.grants.remove(&key),
        };
        if old == grant {
            return BTreeSet::new();
        }
        let from_namespaces: BTreeSet<&str> = old
            .iter()
            .chain(grant.iter())
            .flat_map(|g| g.from.iter())
            .filter(|f| f.group == api::GROUP && f.kind == api::KIND)
            .map(|f| f.namespace.as_str())
            .collect();
        let candidates = self.backends_by_target_namespace.get(&*key.namespace).into_iter().flatten();
        candidates.filter(|backend| from_namespaces.contains(&*backend.namespace)).cloned().collect()
    }

    /// Returns whether the stored XBackend changed.
    fn put_backend(&mut self, key: ObjectRef, backend: Option<Backend>) -> bool {
        let backend = backend.map(Arc::new);
        let old = match &backend {
            Some(new) => self.backends.insert(key.clone(), new.clone()),
            None => self.backends.remove(&key),
        };
        if old == backend {
            return false;
        }
        if let Some(Ok(spec)) = old.as_ref().map(|b| &b.spec) {
            if let Some(secret) = client_certificate_secret(&key, spec) {
                remove_from(&mut self.backends_by_secret, &secret, &key);
            }
            for config_map in ca_certificate_config_maps(&key, spec) {
                remove_from(&mut self.backends_by_config_map, &config_map, &key);
            }
            if let Some(namespace) = cross_namespace_target(&key, spec) {
                remove_from(&mut self.backends_by_target_namespace, &namespace, &key);
            }
            if endpoint_selector(spec).is_some() {
                remove_from(&mut self.selectors_by_namespace, &key.namespace.to_string(), &key);
            }
            if let Some(hostname) = external_hostname(spec) {
                if let Some(label) = guardrails::namespace_label(&hostname) {
                    remove_from(&mut self.backends_by_last_label, &label, &key);
                }
                remove_from(&mut self.backends_by_hostname, &hostname, &key);
            }
        }
        if let Some(Ok(spec)) = backend.as_ref().map(|b| &b.spec) {
            if let Some(secret) = client_certificate_secret(&key, spec) {
                insert_into(&mut self.backends_by_secret, secret, key.clone());
            }
            for config_map in ca_certificate_config_maps(&key, spec) {
                insert_into(&mut self.backends_by_config_map, config_map, key.clone());
            }
            if let Some(namespace) = cross_namespace_target(&key, spec) {
                insert_into(&mut self.backends_by_target_namespace, namespace, key.clone());
            }
            if endpoint_selector(spec).is_some() {
                insert_into(&mut self.selectors_by_namespace, key.namespace.to_string(), key.clone());
            }
            if let Some(hostname) = external_hostname(spec) {
                if let Some(label) = guardrails::namespace_label(&hostname) {
                    insert_into(&mut self.backends_by_last_label, label, key.clone());
                }
                insert_into(&mut self.backends_by_hostname, hostname, key.clone());
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BackendTls, LocalObjectReference, SecretObjectReference, TlsMode, TlsValidation};
    use crate::decode::{decode, kind_of};
    use crate::model::{GrantFrom, GrantTo};
    use serde_json::{Value, json};

    /// The ancestors' Gateways, for the cases where the referring kinds do not matter.
    fn gateways(index: &Index, backend: &ObjectRef) -> Vec<ObjectRef> {
        index.ancestors(backend).into_iter().map(|a| a.gateway).collect()
    }

    const OURS: &str = "example.com/xbackend-controller";

    #[test]
    fn members_grow_and_shrink_back_to_one() {
        let mut map: HashMap<&str, Members<u32>> = HashMap::new();
        insert_into(&mut map, "k", 1);
        insert_into(&mut map, "k", 1);
        assert!(matches!(map["k"], Members::One(1)), "a duplicate adds nothing");
        insert_into(&mut map, "k", 3);
        insert_into(&mut map, "k", 2);
        assert_eq!(map["k"].to_set(), BTreeSet::from([1, 2, 3]));
        assert_eq!((&map["k"]).into_iter().copied().collect::<Vec<_>>(), [1, 2, 3], "in order");
        remove_from(&mut map, &"k", &1);
        remove_from(&mut map, &"k", &9);
        remove_from(&mut map, &"k", &3);
        assert!(matches!(map["k"], Members::One(2)), "back to one slot");
        remove_from(&mut map, &"k", &5);
        assert!(map.contains_key("k"), "removing a non-member keeps the entry");
        remove_from(&mut map, &"k", &2);
        assert!(map.is_empty(), "the last member takes the entry with it");
    }
    const THEIRS: &str = "other.example/controller";
    const XGROUP: &str = "gateway.networking.x-k8s.io";

    fn r(namespace: &str, name: &str) -> ObjectRef {
        ObjectRef::new(namespace, name)
    }

    fn set(items: &[(&str, &str)]) -> BTreeSet<ObjectRef> {
        items.iter().map(|(ns, name)| r(ns, name)).collect()
    }

    fn apply_json(index: &mut Index, api_version: &str, kind: &str, value: Value) -> BTreeSet<ObjectRef> {
        let kind = kind_of(api_version, kind).expect("known kind");
        let (key, object) = decode(kind, &value).expect("decodes");
        index.apply(key, object)
    }

    fn class(index: &mut Index, name: &str, controller: &str) -> BTreeSet<ObjectRef> {
        index.apply(r("", name), Object::GatewayClass(GatewayClass { controller_name: controller.into() }))
    }

    fn gateway(index: &mut Index, namespace: &str, name: &str, class_name: &str) -> BTreeSet<ObjectRef> {
        index
            .apply(r(namespace, name), Object::Gateway(Gateway { class_name: class_name.into(), ..Gateway::default() }))
    }

    fn spec() -> XBackendSpec {
        crate::testing::plain_spec()
    }

    fn mtls_spec(secret_namespace: Option<&str>, secret: &str, config_maps: &[&str]) -> XBackendSpec {
        let mut spec = spec();
        spec.tls = Some(BackendTls {
            mode: TlsMode::ClientAndServer,
            client_certificate_ref: Some(SecretObjectReference {
                group: None,
                kind: None,
                name: secret.into(),
                namespace: secret_namespace.map(str::to_string),
            }),
            validation: Some(TlsValidation {
                ca_certificate_refs: Some(
                    config_maps
                        .iter()
                        .map(|name| LocalObjectReference {
                            group: "".into(),
                            kind: "ConfigMap".into(),
                            name: (*name).into(),
                        })
                        .collect(),
                ),
                well_known_ca_certificates: None,
                hostname: "api.example.com".into(),
                subject_alt_names: None,
            }),
        });
        spec
    }

    fn backend(index: &mut Index, namespace: &str, name: &str) -> BTreeSet<ObjectRef> {
        index.apply(r(namespace, name), Object::XBackend(Backend::new(1, Ok(spec()))))
    }

    fn http_route(index: &mut Index, namespace: &str, name: &str, spec: Value) -> BTreeSet<ObjectRef> {
        let value = json!({"metadata": {"name": name, "namespace": namespace}, "spec": spec});
        apply_json(index, "gateway.networking.k8s.io/v1", "HTTPRoute", value)
    }

    fn xref(name: &str) -> Value {
        json!({"group": XGROUP, "kind": "XBackend", "name": name})
    }

    /// Ours: class `ours` with Gateways infra/gw and app/local; theirs: class
    /// `theirs` with infra/foreign; XBackends app/b and app/c.
    fn world() -> Index {
        let mut index = Index::new(OURS);
        class(&mut index, "ours", OURS);
        class(&mut index, "theirs", THEIRS);
        gateway(&mut index, "infra", "gw", "ours");
        gateway(&mut index, "app", "local", "ours");
        gateway(&mut index, "infra", "foreign", "theirs");
        backend(&mut index, "app", "b");
        backend(&mut index, "app", "c");
        index
    }

    fn simple_route(gateways: &[(&str, &str)], backends: &[&str]) -> Value {
        let parents: Vec<Value> = gateways.iter().map(|(ns, name)| json!({"name": name, "namespace": ns})).collect();
        let refs: Vec<Value> = backends.iter().map(|name| xref(name)).collect();
        json!({"parentRefs": parents, "rules": [{"backendRefs": refs}]})
    }

    #[test]
    fn ancestor_via_backend_ref() {
        let mut index = world();
        http_route(&mut index, "app", "r", simple_route(&[("infra", "gw")], &["b"]));
        assert_eq!(gateways(&index, &r("app", "b")), vec![r("infra", "gw")]);
        assert!(gateways(&index, &r("app", "c")).is_empty());
    }

    #[test]
    fn ancestor_via_rule_level_mirror() {
        let mut index = world();
        let mirror = json!({"type": "RequestMirror", "requestMirror": {"backendRef": xref("b")}});
        http_route(
            &mut index,
            "app",
            "r",
            json!({"parentRefs": [{"name": "local"}], "rules": [{"filters": [mirror]}]}),
        );
        assert_eq!(gateways(&index, &r("app", "b")), vec![r("app", "local")]);
    }

    #[test]
    fn ancestor_via_backend_ref_level_mirror() {
        let mut index = world();
        let mirror = json!({"type": "RequestMirror", "requestMirror": {"backendRef": xref("b")}});
        let spec = json!({"parentRefs": [{"name": "local"}], "rules": [{"backendRefs": [{"name": "svc", "port": 80, "filters": [mirror]}]}]});
        http_route(&mut index, "app", "r", spec);
        assert_eq!(gateways(&index, &r("app", "b")), vec![r("app", "local")]);
    }

    #[test]
    fn cross_namespace_route_is_ignored_even_with_grants() {
        let mut index = world();
        let mut to_b = xref("b");
        to_b["namespace"] = json!("app");
        http_route(
            &mut index,
            "other",
            "r",
            json!({"parentRefs": [{"name": "gw", "namespace": "infra"}], "rules": [{"backendRefs": [to_b]}]}),
        );
        index.apply(
            r("app", "allow-routes"),
            Object::ReferenceGrant(ReferenceGrant {
                from: vec![GrantFrom {
                    group: "gateway.networking.k8s.io".into(),
                    kind: "HTTPRoute".into(),
                    namespace: "other".into(),
                }],
                to: vec![GrantTo { group: XGROUP.into(), kind: "XBackend".into(), name: None }],
            }),
        );
        assert!(gateways(&index, &r("app", "b")).is_empty());
        // A hand-built route (as analyze could make) is held to the same rule.
        let route = Route {
            gateways: set(&[("infra", "gw")]).into_iter().collect(),
            backends: set(&[("app", "b")]).into_iter().collect(),
        };
        assert!(index.apply(r("other", "hand"), Object::Route(RouteKind::Http, route)).is_empty());
        assert!(gateways(&index, &r("app", "b")).is_empty());
    }

    #[test]
    fn explicit_namespace_equal_to_route_counts() {
        let mut index = world();
        let mut to_b = xref("b");
        to_b["namespace"] = json!("app");
        http_route(
            &mut index,
            "app",
            "r",
            json!({"parentRefs": [{"name": "local"}], "rules": [{"backendRefs": [to_b]}]}),
        );
        assert_eq!(gateways(&index, &r("app", "b")), vec![r("app", "local")]);
    }

    #[test]
    fn foreign_class_missing_gateway_missing_class() {
        let mut index = world();
        gateway(&mut index, "infra", "orphan", "no-such-class");
        let parents = [("infra", "foreign"), ("infra", "missing"), ("infra", "orphan")];
        http_route(&mut index, "app", "r", simple_route(&parents, &["b"]));
        assert!(gateways(&index, &r("app", "b")).is_empty());
        // The class appearing later makes the orphan count.
        assert_eq!(class(&mut index, "no-such-class", OURS), set(&[("app", "b")]));
        assert_eq!(gateways(&index, &r("app", "b")), vec![r("infra", "orphan")]);
    }

    #[test]
    fn section_name_and_port_do_not_split_entries() {
        let mut index = world();
        let parents = json!([
            {"name": "gw", "namespace": "infra", "sectionName": "https"},
            {"name": "gw", "namespace": "infra", "sectionName": "http", "port": 80},
            {"name": "gw", "namespace": "infra"}
        ]);
        http_route(&mut index, "app", "r", json!({"parentRefs": parents, "rules": [{"backendRefs": [xref("b")]}]}));
        assert_eq!(gateways(&index, &r("app", "b")), vec![r("infra", "gw")]);
    }

    #[test]
    fn parent_namespace_default_and_explicit() {
        let mut index = world();
        gateway(&mut index, "app", "gw", "ours");
        http_route(
            &mut index,
            "app",
            "r",
            json!({"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [xref("b")]}]}),
        );
        assert_eq!(gateways(&index, &r("app", "b")), vec![r("app", "gw")]);
        http_route(
            &mut index,
            "app",
            "r",
            json!({"parentRefs": [{"name": "gw", "namespace": "infra"}], "rules": [{"backendRefs": [xref("b")]}]}),
        );
        assert_eq!(gateways(&index, &r("app", "b")), vec![r("infra", "gw")]);
    }

    #[test]
    fn non_gateway_parents_are_ignored() {
        let mut index = world();
        // Same name as a real Gateway, but another kind or group.
        let parents = json!([
            {"name": "local", "kind": "Service", "group": ""},
            {"name": "local", "kind": "Gateway", "group": "example.com"},
            {"name": "local", "kind": "ListenerSet"}
        ]);
        http_route(&mut index, "app", "r", json!({"parentRefs": parents, "rules": [{"backendRefs": [xref("b")]}]}));
        assert!(gateways(&index, &r("app", "b")).is_empty());
    }

    #[test]
    fn grpc_route_same_as_http_route() {
        let mut index = world();
        let mirror = json!({"type": "RequestMirror", "requestMirror": {"backendRef": xref("c")}});
        let value = json!({
            "metadata": {"name": "r", "namespace": "app"},
            "spec": {"parentRefs": [{"name": "local"}], "rules": [{"backendRefs": [xref("b")], "filters": [mirror]}]}
        });
        assert_eq!(
            apply_json(&mut index, "gateway.networking.k8s.io/v1", "GRPCRoute", value),
            set(&[("app", "b"), ("app", "c")])
        );
        assert_eq!(gateways(&index, &r("app", "b")), vec![r("app", "local")]);
        assert_eq!(gateways(&index, &r("app", "c")), vec![r("app", "local")]);
        // An HTTPRoute of the same name is a different object.
        http_route(&mut index, "app", "r", simple_route(&[("infra", "gw")], &["b"]));
        assert_eq!(gateways(&index, &r("app", "b")), vec![r("app", "local"), r("infra", "gw")]);
        assert_eq!(index.delete(Kind::Route(RouteKind::Grpc), &r("app", "r")), set(&[("app", "b"), ("app", "c")]));
        assert_eq!(gateways(&index, &r("app", "b")), vec![r("infra", "gw")]);
    }

    #[test]
    fn ancestors_sorted_and_deduplicated() {
        let mut index = world();
        gateway(&mut index, "aaa", "z", "ours");
        gateway(&mut index, "aaa", "a", "ours");
        http_route(&mut index, "app", "r1", simple_route(&[("infra", "gw"), ("aaa", "z")], &["b"]));
        http_route(&mut index, "app", "r2", simple_route(&[("aaa", "a"), ("infra", "gw"), ("app", "local")], &["b"]));
        assert_eq!(
            gateways(&index, &r("app", "b")),
            vec![r("aaa", "a"), r("aaa", "z"), r("app", "local"), r("infra", "gw")]
        );
    }

    #[test]
    fn route_apply_and_delete_affect_only_changed_backends() {
        let mut index = world();
        assert_eq!(http_route(&mut index, "app", "r", simple_route(&[("infra", "gw")], &["b"])), set(&[("app", "b")]));
        assert!(http_route(&mut index, "app", "r", simple_route(&[("infra", "gw")], &["b"])).is_empty(), "unchanged");
        // A new backend only: the existing one keeps its ancestors.
        assert_eq!(
            http_route(&mut index, "app", "r", simple_route(&[("infra", "gw")], &["b", "c"])),
            set(&[("app", "c")])
        );
        // Parents change: every backend, before and after.
        assert_eq!(
            http_route(&mut index, "app", "r", simple_route(&[("app", "local")], &["b", "c"])),
            set(&[("app", "b"), ("app", "c")])
        );
        // Backend dropped.
        assert_eq!(http_route(&mut index, "app", "r", simple_route(&[("app", "local")], &["b"])), set(&[("app", "c")]));
        // References to XBackends that do not exist affect nobody.
        assert!(http_route(&mut index, "app", "r2", simple_route(&[("app", "local")], &["ghost"])).is_empty());
        assert_eq!(index.delete(Kind::Route(RouteKind::Http), &r("app", "r")), set(&[("app", "b")]));
        assert!(index.delete(Kind::Route(RouteKind::Http), &r("app", "r")).is_empty(), "already gone");
        // The XBackend appearing later finds the route.
        backend(&mut index, "app", "ghost");
        assert_eq!(gateways(&index, &r("app", "ghost")), vec![r("app", "local")]);
    }

    #[test]
    fn route_to_foreign_gateways_affects_nothing() {
        let mut index = world();
        assert!(http_route(&mut index, "app", "r", simple_route(&[("infra", "foreign")], &["b"])).is_empty());
        assert!(
            http_route(
                &mut index,
                "app",
                "r",
                simple_route(&[("infra", "foreign"), ("infra", "missing")], &["b", "c"])
            )
            .is_empty()
        );
        assert!(index.delete(Kind::Route(RouteKind::Http), &r("app", "r")).is_empty());
    }

    #[test]
    fn gateway_apply_and_delete() {
        let mut index = world();
        http_route(&mut index, "app", "r", simple_route(&[("infra", "new")], &["b"]));
        http_route(&mut index, "app", "r2", simple_route(&[("infra", "gw")], &["c"]));
        assert_eq!(gateway(&mut index, "infra", "new", "ours"), set(&[("app", "b")]), "created");
        assert!(gateway(&mut index, "infra", "new", "ours").is_empty(), "unchanged");
        assert_eq!(
            gateway(&mut index, "infra", "new", "theirs"),
            set(&[("app", "b")]),
            "class changed to a foreign one"
        );
        assert!(gateway(&mut index, "infra", "new", "missing-class").is_empty(), "still not ours");
        assert_eq!(gateway(&mut index, "infra", "new", "ours"), set(&[("app", "b")]));
        assert_eq!(index.delete(Kind::Gateway, &r("infra", "new")), set(&[("app", "b")]), "deleted");
        assert!(index.delete(Kind::Gateway, &r("infra", "new")).is_empty());
        assert!(gateway(&mut index, "infra", "unused", "ours").is_empty(), "no route names it");
    }

    #[test]
    fn gateway_class_apply_and_delete() {
        let mut index = world();
        gateway(&mut index, "infra", "g1", "later");
        gateway(&mut index, "infra", "g2", "later");
        http_route(&mut index, "app", "r", simple_route(&[("infra", "g1")], &["b"]));
        http_route(&mut index, "app", "r2", simple_route(&[("infra", "g2")], &["c"]));
        assert_eq!(class(&mut index, "later", OURS), set(&[("app", "b"), ("app", "c")]), "created");
        assert!(class(&mut index, "later", OURS).is_empty(), "unchanged");
        assert_eq!(class(&mut index, "later", THEIRS), set(&[("app", "b"), ("app", "c")]), "controller changed");
        assert!(class(&mut index, "later", "third.example/c").is_empty(), "foreign to foreign");
        class(&mut index, "later", OURS);
        assert_eq!(index.delete(Kind::GatewayClass, &r("", "later")), set(&[("app", "b"), ("app", "c")]), "deleted");
        assert!(class(&mut index, "elsewhere", OURS).is_empty(), "no Gateway uses it");
    }

    fn grant(from_namespace: &str) -> Object {
        Object::ReferenceGrant(ReferenceGrant {
            from: vec![GrantFrom { group: XGROUP.into(), kind: "XBackend".into(), namespace: from_namespace.into() }],
            to: vec![GrantTo { group: "".into(), kind: "Secret".into(), name: None }],
        })
    }

    #[test]
    fn reference_grant_apply_and_delete() {
        let mut index = world();
        index.apply(r("app", "m"), Object::XBackend(Backend::new(1, Ok(mtls_spec(Some("certs"), "client", &[])))));
        index.apply(r("web", "m"), Object::XBackend(Backend::new(1, Ok(mtls_spec(Some("certs"), "client", &[])))));
        index.apply(r("app", "local-secret"), Object::XBackend(Backend::new(1, Ok(mtls_spec(None, "client", &[])))));
        assert_eq!(index.apply(r("certs", "g"), grant("app")), set(&[("app", "m")]));
        assert!(index.apply(r("certs", "g"), grant("app")).is_empty(), "unchanged");
        assert_eq!(index.apply(r("certs", "g"), grant("web")), set(&[("app", "m"), ("web", "m")]), "old and new from");
        assert!(index.apply(r("elsewhere", "g"), grant("app")).is_empty(), "no ref points there");
        assert_eq!(index.delete(Kind::ReferenceGrant, &r("certs", "g")), set(&[("web", "m")]));
        // Grants from routes do not concern XBackends.
        let route_grant = Object::ReferenceGrant(ReferenceGrant {
            from: vec![GrantFrom {
                group: "gateway.networking.k8s.io".into(),
                kind: "HTTPRoute".into(),
                namespace: "app".into(),
            }],
            to: vec![GrantTo { group: "".into(), kind: "Secret".into(), name: None }],
        });
        assert!(index.apply(r("certs", "routes"), route_grant).is_empty());
    }

    #[test]
    fn xbackend_apply_returns_itself_and_indexes_refs() {
        let mut index = world();
        assert_eq!(backend(&mut index, "app", "b"), set(&[("app", "b")]), "even unchanged");
        let m = r("app", "m");
        assert_eq!(
            index.apply(m.clone(), Object::XBackend(Backend::new(1, Ok(mtls_spec(None, "client", &["ca1", "ca2"]))))),
            set(&[("app", "m")])
        );
        assert_eq!(index.referencing(RefKind::Secret, &r("app", "client")), set(&[("app", "m")]));
        assert_eq!(index.referencing(RefKind::ConfigMap, &r("app", "ca1")), set(&[("app", "m")]));
        assert_eq!(index.referencing(RefKind::ConfigMap, &r("app", "ca2")), set(&[("app", "m")]));
        assert!(index.referencing(RefKind::ConfigMap, &r("app", "client")).is_empty());
        assert!(index.referencing(RefKind::Secret, &r("other", "client")).is_empty());

        // Spec change: old refs forgotten, new ones indexed.
        index.apply(m.clone(), Object::XBackend(Backend::new(2, Ok(mtls_spec(Some("certs"), "client2", &["ca2"])))));
        assert!(index.referencing(RefKind::Secret, &r("app", "client")).is_empty());
        assert_eq!(index.referencing(RefKind::Secret, &r("certs", "client2")), set(&[("app", "m")]));
        assert!(index.referencing(RefKind::ConfigMap, &r("app", "ca1")).is_empty());

        // Unsupported kinds are not Secrets or ConfigMaps to watch.
        let mut odd = mtls_spec(None, "client", &[]);
        if let Some(tls) = odd.tls.as_mut() {
            if let Some(secret) = tls.client_certificate_ref.as_mut() {
                secret.kind = Some("ConfigMap".into());
            }
            if let Some(validation) = tls.validation.as_mut() {
                validation.ca_certificate_refs = Some(vec![LocalObjectReference {
                    group: "example.com".into(),
                    kind: "ConfigMap".into(),
                    name: "ca".into(),
                }]);
            }
        }
        index.apply(r("app", "odd"), Object::XBackend(Backend::new(1, Ok(odd))));
        assert!(index.referencing(RefKind::Secret, &r("app", "client")).is_empty());
        assert!(index.referencing(RefKind::ConfigMap, &r("app", "ca")).is_empty());

        assert_eq!(index.delete(Kind::XBackend, &m), set(&[("app", "m")]));
        assert!(index.referencing(RefKind::Secret, &r("certs", "client2")).is_empty());
        assert!(index.backend(&m).is_none());
        assert_eq!(index.backend_keys(), vec![r("app", "b"), r("app", "c"), r("app", "odd")]);
    }

    /// A watch re-list as the runtime applies it: each object as it arrives,
    /// then `retain` of what was seen.
    fn relist(index: &mut Index, kind: Kind, objects: Vec<(ObjectRef, Object)>) -> BTreeSet<ObjectRef> {
        let seen: BTreeSet<ObjectRef> = objects.iter().map(|(k, _)| k.clone()).collect();
        let mut affected = BTreeSet::new();
        for (key, object) in objects {
            affected.extend(index.apply(key, object));
        }
        affected.extend(index.retain(kind, &seen));
        affected
    }

    #[test]
    fn relist_returns_deleted_and_changed_only() {
        let mut index = world();
        http_route(&mut index, "app", "r1", simple_route(&[("infra", "gw")], &["b"]));
        http_route(&mut index, "app", "r2", simple_route(&[("infra", "gw")], &["c"]));
        let route = |gateways: &[(&str, &str)], backends: &[(&str, &str)]| {
            Object::Route(
                RouteKind::Http,
                Route { gateways: set(gateways).into_iter().collect(), backends: set(backends).into_iter().collect() },
            )
        };
        // r1 unchanged, r2 gone.
        let affected = relist(
            &mut index,
            Kind::Route(RouteKind::Http),
            vec![(r("app", "r1"), route(&[("infra", "gw")], &[("app", "b")]))],
        );
        assert_eq!(affected, set(&[("app", "c")]));
        // The same list again: nothing.
        assert!(
            relist(
                &mut index,
                Kind::Route(RouteKind::Http),
                vec![(r("app", "r1"), route(&[("infra", "gw")], &[("app", "b")]))]
            )
            .is_empty()
        );
        // GRPCRoutes are another kind: an empty re-list of them leaves HTTPRoutes alone.
        assert!(relist(&mut index, Kind::Route(RouteKind::Grpc), vec![]).is_empty());
        assert_eq!(gateways(&index, &r("app", "b")), vec![r("infra", "gw")]);

        // Gateways: infra/gw changed class, app/local unchanged, infra/foreign gone.
        let gw = |class_name: &str| Object::Gateway(Gateway { class_name: class_name.into(), ..Gateway::default() });
        let affected =
            relist(&mut index, Kind::Gateway, vec![(r("infra", "gw"), gw("theirs")), (r("app", "local"), gw("ours"))]);
        assert_eq!(affected, set(&[("app", "b")]));
        assert!(
            relist(&mut index, Kind::Gateway, vec![(r("infra", "gw"), gw("theirs")), (r("app", "local"), gw("ours"))])
                .is_empty()
        );

        // GatewayClasses: `theirs` becomes ours, `ours` unchanged.
        let cls = |controller: &str| Object::GatewayClass(GatewayClass { controller_name: controller.into() });
        let affected =
            relist(&mut index, Kind::GatewayClass, vec![(r("", "ours"), cls(OURS)), (r("", "theirs"), cls(OURS))]);
        assert_eq!(affected, set(&[("app", "b")]));
        assert!(
            relist(&mut index, Kind::GatewayClass, vec![(r("", "ours"), cls(OURS)), (r("", "theirs"), cls(OURS))])
                .is_empty()
        );
        // Every class gone.
        assert_eq!(relist(&mut index, Kind::GatewayClass, vec![]), set(&[("app", "b")]));
        assert!(gateways(&index, &r("app", "b")).is_empty());
    }

    #[test]
    fn retain_after_a_streamed_relist_deletes_only_the_unseen() {
        let mut index = world();
        http_route(&mut index, "app", "r1", simple_route(&[("infra", "gw")], &["b"]));
        http_route(&mut index, "app", "r2", simple_route(&[("infra", "gw")], &["c"]));
        let seen: BTreeSet<ObjectRef> = [r("app", "r1")].into_iter().collect();
        assert_eq!(index.retain(Kind::Route(RouteKind::Http), &seen), set(&[("app", "c")]));
        assert!(gateways(&index, &r("app", "c")).is_empty());
        assert_eq!(gateways(&index, &r("app", "b")), vec![r("infra", "gw")]);
        // Other kinds are untouched, and a second retain finds nothing more to delete.
        assert!(index.retain(Kind::Route(RouteKind::Grpc), &BTreeSet::new()).is_empty());
        assert!(index.retain(Kind::Route(RouteKind::Http), &seen).is_empty());
    }

    #[test]
    fn relist_grants_and_backends() {
        let mut index = world();
        let m = || Object::XBackend(Backend::new(1, Ok(mtls_spec(Some("certs"), "client", &[]))));
        index.apply(r("app", "m"), m());
        index.apply(r("certs", "g"), grant("app"));
        assert!(
            relist(&mut index, Kind::ReferenceGrant, vec![(r("certs", "g"), grant("app"))]).is_empty(),
            "unchanged"
        );
        assert_eq!(relist(&mut index, Kind::ReferenceGrant, vec![]), set(&[("app", "m")]), "deleted");
        assert_eq!(
            relist(&mut index, Kind::ReferenceGrant, vec![(r("certs", "g2"), grant("app"))]),
            set(&[("app", "m")]),
            "created"
        );

        let plain = |generation| Object::XBackend(Backend::new(generation, Ok(spec())));
        // b unchanged, c changed, m gone, n new. Every listed XBackend comes
        // back (the runtime drops the ones whose resourceVersion it has seen),
        // and the deleted one too.
        let listed = || vec![(r("app", "b"), plain(1)), (r("app", "c"), plain(2)), (r("app", "n"), plain(1))];
        assert_eq!(
            relist(&mut index, Kind::XBackend, listed()),
            set(&[("app", "b"), ("app", "c"), ("app", "m"), ("app", "n")])
        );
        assert!(index.backend(&r("app", "m")).is_none());
        assert_eq!(index.backend(&r("app", "c")).map(|b| b.generation), Some(2));
        assert_eq!(relist(&mut index, Kind::XBackend, listed()), set(&[("app", "b"), ("app", "c"), ("app", "n")]));
        assert!(index.referencing(RefKind::Secret, &r("certs", "client")).is_empty());
    }

    #[test]
    fn grant_permits_rules() {
        let mut index = Index::new(OURS);
        let secret = r("certs", "client");
        assert!(!index.grant_permits("app", "", "Secret", &secret), "no grant");
        index.apply(
            r("certs", "named"),
            Object::ReferenceGrant(ReferenceGrant {
                from: vec![GrantFrom { group: XGROUP.into(), kind: "XBackend".into(), namespace: "app".into() }],
                to: vec![GrantTo { group: "".into(), kind: "Secret".into(), name: Some("client".into()) }],
            }),
        );
        assert!(index.grant_permits("app", "", "Secret", &secret));
        assert!(!index.grant_permits("app", "", "Secret", &r("certs", "other")), "name must match");
        assert!(!index.grant_permits("web", "", "Secret", &secret), "from namespace must match");
        assert!(!index.grant_permits("app", "", "ConfigMap", &r("certs", "client")), "kind must match");
        assert!(
            !index.grant_permits("app", "", "Secret", &r("other", "client")),
            "grant lives in the target namespace"
        );
        index.apply(
            r("certs", "routes-only"),
            Object::ReferenceGrant(ReferenceGrant {
                from: vec![GrantFrom {
                    group: "gateway.networking.k8s.io".into(),
                    kind: "HTTPRoute".into(),
                    namespace: "web".into(),
                }],
                to: vec![GrantTo { group: "".into(), kind: "Secret".into(), name: None }],
            }),
        );
        assert!(!index.grant_permits("web", "", "Secret", &secret), "from kind must be XBackend");
        index.apply(
            r("certs", "any"),
            Object::ReferenceGrant(ReferenceGrant {
                from: vec![GrantFrom { group: XGROUP.into(), kind: "XBackend".into(), namespace: "web".into() }],
                to: vec![GrantTo { group: "".into(), kind: "Secret".into(), name: None }],
            }),
        );
        assert!(index.grant_permits("web", "", "Secret", &r("certs", "anything")), "unnamed to allows every Secret");
        // Neighbouring namespaces (by sort order) do not leak into each other.
        assert!(!index.grant_permits("web", "", "Secret", &r("cert", "anything")));
        assert!(!index.grant_permits("web", "", "Secret", &r("certsx", "anything")));
    }

    #[test]
    fn deleting_everything_leaves_no_reverse_entries() {
        let mut index = world();
        http_route(&mut index, "app", "r", simple_route(&[("infra", "gw")], &["b"]));
        index.apply(r("app", "m"), Object::XBackend(Backend::new(1, Ok(mtls_spec(Some("certs"), "client", &["ca"])))));
        index.delete(Kind::Route(RouteKind::Http), &r("app", "r"));
        for key in index.backend_keys() {
            index.delete(Kind::XBackend, &key);
        }
        for key in index.keys_of(Kind::Gateway) {
            index.delete(Kind::Gateway, &key);
        }
        assert!(index.routes_by_backend.is_empty());
        assert!(index.routes_by_gateway.is_empty());
        assert!(index.gateways_by_class.is_empty());
        assert!(index.backends_by_secret.is_empty());
        assert!(index.backends_by_config_map.is_empty());
        assert!(index.backends_by_target_namespace.is_empty());
    }

    #[test]
    fn routes_without_xbackends_are_not_kept() {
        let mut index = world();
        http_route(
            &mut index,
            "app",
            "svc",
            json!({"parentRefs": [{"name": "local"}], "rules": [{"backendRefs": [{"name": "svc", "port": 80}]}]}),
        );
        assert!(index.routes.is_empty());
        assert!(index.routes_by_gateway.is_empty());
    }

    fn selector_backend(index: &mut Index, namespace: &str, name: &str, labels: Value) -> BTreeSet<ObjectRef> {
        let spec =
            json!({"type": "EndpointSelector", "port": {"number": 80}, "endpointSelector": {"matchLabels": labels}});
        let value = json!({"metadata": {"name": name, "namespace": namespace, "generation": 1}, "spec": spec});
        apply_json(index, &format!("{XGROUP}/v1alpha1"), "XBackend", value)
    }

    fn pod(index: &mut Index, namespace: &str, name: &str, labels: Value, phase: &str) -> BTreeSet<ObjectRef> {
        let value =
            json!({"metadata": {"name": name, "namespace": namespace, "labels": labels}, "status": {"phase": phase}});
        apply_json(index, "v1", "Pod", value)
    }

    #[test]
    fn pods_affect_exactly_the_selectors_that_match_them() {
        let mut index = Index::new(OURS);
        let web = json!({"app": "web"});
        selector_backend(&mut index, "a", "web", web.clone());
        selector_backend(&mut index, "a", "db", json!({"app": "db"}));
        selector_backend(&mut index, "b", "web", web.clone());
        backend(&mut index, "a", "external");
        let selector = |app: &str| BTreeMap::from([("app".to_string(), app.to_string())]);
        assert!(!index.has_matching_pod("a", &selector("web")));

        assert_eq!(pod(&mut index, "a", "web-0", json!({"app": "web", "x": "y"}), "Pending"), set(&[("a", "web")]));
        assert!(index.has_matching_pod("a", &selector("web")));
        assert!(!index.has_matching_pod("b", &selector("web")), "Pods of another namespace never count");
        // The same labels again change nothing.
        assert!(pod(&mut index, "a", "web-0", json!({"app": "web", "x": "y"}), "Running").is_empty());
        // Relabelled from web to db: both selectors are affected.
        assert_eq!(pod(&mut index, "a", "web-0", json!({"app": "db"}), "Running"), set(&[("a", "db"), ("a", "web")]));
        assert!(!index.has_matching_pod("a", &selector("web")));
        // A finished Pod leaves the index.
        assert_eq!(pod(&mut index, "a", "web-0", json!({"app": "db"}), "Succeeded"), set(&[("a", "db")]));
        assert!(!index.has_matching_pod("a", &selector("db")));
        // Unrelated Pods affect nothing.
        assert!(pod(&mut index, "a", "other", json!({"app": "cache"}), "Running").is_empty());
        assert!(pod(&mut index, "c", "web-1", web.clone(), "Running").is_empty());
        // Deletion and re-list retain.
        pod(&mut index, "b", "web-2", web.clone(), "Running");
        assert_eq!(index.delete(Kind::Pod, &r("b", "web-2")), set(&[("b", "web")]));
        pod(&mut index, "b", "web-3", web, "Running");
        assert_eq!(index.retain(Kind::Pod, &set(&[("a", "other")])), set(&[("b", "web")]));
        assert!(!index.has_matching_pod("c", &selector("web")));
    }

    fn auth(name: &str) -> Value {
        json!({"type": "ExternalAuth", "externalAuth": {"protocol": "HTTP", "backendRef": xref(name)}})
    }

    fn gateway_with_auth(
        index: &mut Index,
        namespace: &str,
        name: &str,
        class: &str,
        auth_to: &[&str],
    ) -> BTreeSet<ObjectRef> {
        let requests: Vec<Value> = auth_to.iter().map(|b| auth(b)).collect();
        let spec =
            json!({"gatewayClassName": class, "listeners": [{"name": "http", "filters": {"requests": requests}}]});
        let value = json!({"metadata": {"name": name, "namespace": namespace}, "spec": spec});
        apply_json(index, "gateway.networking.k8s.io/v1", "Gateway", value)
    }

    fn listener_set(
        index: &mut Index,
        namespace: &str,
        name: &str,
        parent: Value,
        auth_to: &[&str],
    ) -> BTreeSet<ObjectRef> {
        let requests: Vec<Value> = auth_to.iter().map(|b| auth(b)).collect();
        let spec = json!({"parentRef": parent, "listeners": [{"name": "l", "filters": {"requests": requests}}]});
        let value = json!({"metadata": {"name": name, "namespace": namespace}, "spec": spec});
        apply_json(index, "gateway.networking.k8s.io/v1", "ListenerSet", value)
    }

    /// docs/design.md §3: a Gateway's own ExternalAuth makes it an ancestor of
    /// XBackends in its namespace, and follows its class like any route's Gateway.
    #[test]
    fn gateway_external_auth_makes_the_gateway_an_ancestor() {
        let mut index = world();
        assert_eq!(gateway_with_auth(&mut index, "app", "local", "ours", &["b"]), set(&[("app", "b")]));
        let ancestors = index.ancestors(&r("app", "b"));
        assert_eq!(
            ancestors,
            vec![Ancestor { gateway: r("app", "local"), referrers: [Referrer::Gateway].into_iter().collect() }]
        );
        assert!(gateway_with_auth(&mut index, "app", "local", "ours", &["b"]).is_empty(), "unchanged");

        // Another namespace's Gateway never makes ancestors here.
        assert!(gateway_with_auth(&mut index, "infra", "gw", "ours", &["b"]).is_empty());
        assert_eq!(gateways(&index, &r("app", "b")), vec![r("app", "local")]);

        // The class decides, then the reference, then the Gateway itself.
        assert_eq!(gateway_with_auth(&mut index, "app", "local", "theirs", &["b"]), set(&[("app", "b")]));
        assert!(gateways(&index, &r("app", "b")).is_empty());
        assert_eq!(
            gateway_with_auth(&mut index, "app", "local", "ours", &["b", "c"]),
            set(&[("app", "b"), ("app", "c")])
        );
        assert_eq!(gateway_with_auth(&mut index, "app", "local", "ours", &["c"]), set(&[("app", "b")]));
        assert!(gateways(&index, &r("app", "b")).is_empty());
        assert_eq!(index.delete(Kind::Gateway, &r("app", "local")), set(&[("app", "c")]));
        assert!(gateways(&index, &r("app", "c")).is_empty());
        assert!(!index.routes.contains_key(&(Referrer::Gateway, r("app", "local"))), "its referrer entry left with it");
    }

    /// A ListenerSet's ExternalAuth makes its parent Gateway an ancestor of
    /// XBackends in the ListenerSet's namespace.
    #[test]
    fn listener_set_external_auth_makes_its_parent_an_ancestor() {
        let mut index = world();
        let parent = json!({"name": "gw", "namespace": "infra"});
        assert_eq!(listener_set(&mut index, "app", "ls", parent.clone(), &["b"]), set(&[("app", "b")]));
        let ancestors = index.ancestors(&r("app", "b"));
        assert_eq!(
            ancestors,
            vec![Ancestor { gateway: r("infra", "gw"), referrers: [Referrer::ListenerSet].into_iter().collect() }]
        );
        // A ListenerSet elsewhere names XBackends of its own namespace only.
        assert!(listener_set(&mut index, "infra", "ls", parent.clone(), &["b"]).is_empty());
        // Its parent moves to a Gateway of another class.
        assert_eq!(
            listener_set(&mut index, "app", "ls", json!({"name": "foreign", "namespace": "infra"}), &["b"]),
            set(&[("app", "b")])
        );
        assert!(gateways(&index, &r("app", "b")).is_empty());
        listener_set(&mut index, "app", "ls", parent, &["b"]);
        // A re-list without it removes it.
        assert_eq!(index.retain(Kind::ListenerSet, &set(&[("infra", "ls")])), set(&[("app", "b")]));
        assert!(gateways(&index, &r("app", "b")).is_empty());
        assert!(index.keys_of(Kind::ListenerSet).contains(&r("infra", "ls")), "only the unseen one left");
    }

    /// One entry per Gateway, whatever kinds lead to it; the entry records every kind.
    #[test]
    fn an_ancestor_records_every_kind_that_leads_to_it() {
        let mut index = world();
        http_route(&mut index, "app", "web", simple_route(&[("infra", "gw")], &["b"]));
        let udp =
            json!({"metadata": {"name": "dns", "namespace": "app"}, "spec": simple_route(&[("infra", "gw")], &["b"])});
        assert!(apply_json(&mut index, "gateway.networking.k8s.io/v1alpha2", "UDPRoute", udp).contains(&r("app", "b")));
        gateway_with_auth(&mut index, "app", "local", "ours", &["b"]);
        let ancestors = index.ancestors(&r("app", "b"));
        let http_udp: Referrers =
            [Referrer::Route(RouteKind::Http), Referrer::Route(RouteKind::Udp)].into_iter().collect();
        assert_eq!(
            ancestors,
            vec![
                Ancestor { gateway: r("app", "local"), referrers: [Referrer::Gateway].into_iter().collect() },
                Ancestor { gateway: r("infra", "gw"), referrers: http_udp },
            ]
        );
        // Deleting the UDPRoute leaves the same Gateways but changes what leads
        // to infra/gw (and so the fit): b is re-judged.
        assert_eq!(index.delete(Kind::Route(RouteKind::Udp), &r("app", "dns")), set(&[("app", "b")]));
        assert_eq!(
            index.ancestors(&r("app", "b"))[1].referrers,
            [Referrer::Route(RouteKind::Http)].into_iter().collect()
        );
    }

    /// Guard mode: a Gateway of a listed class is judged whatever its
    /// class's controllerName, even before (or without) the class object.
    #[test]
    fn guarded_classes_are_judged_whoever_implements_them() {
        let mut index = Index::new(OURS).guarding(["istio".to_string()]);
        backend(&mut index, "app", "b");
        http_route(&mut index, "app", "r", simple_route(&[("infra", "mesh"), ("infra", "other")], &["b"]));
        assert_eq!(gateway(&mut index, "infra", "mesh", "istio"), set(&[("app", "b")]));
        gateway(&mut index, "infra", "other", "theirs");
        class(&mut index, "theirs", THEIRS);
        assert!(class(&mut index, "istio", "istio.io/gateway-controller").is_empty(), "still judged: no change");
        assert_eq!(gateways(&index, &r("app", "b")), vec![r("infra", "mesh")]);
        assert!(gateways(&Index::new(OURS).guarding([]), &r("app", "b")).is_empty());
    }
}
