//! In-memory index of the watched objects, in parts that each own their
//! records and reverse maps (routes, Gateways and classes, XBackends, Pods
//! and Namespaces, grants, Services) behind one face. Watches feed it (apply / delete /
//! retain after a re-list); each call returns the XBackends whose status may
//! have changed, found through the reverse maps without a scan.

mod backends;
mod cluster;
mod gateways;
mod grants;
mod members;
mod routes;
mod services;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::api;
use crate::guardrails;
use crate::model::{
    Ancestor, Backend, Gateway, Kind, Object, ObjectRef, RefKind, ReferenceGrant, Referrer, Referrers, Route,
};
use crate::refs::{self, Lookup};

use backends::Backends;
use cluster::{Cluster, selects};
use gateways::Gateways;
use grants::Grants;
use routes::{RouteKey, Routes};
use services::Services;

/// The face over the parts. Each part keeps its own reverse maps; the face
/// turns a change into the XBackends it affects, asking the other parts.
#[derive(Debug, Default)]
pub struct Index {
    routes: Routes,
    gateways: Gateways,
    backends: Backends,
    cluster: Cluster,
    grants: Grants,
    services: Services,
    /// Keep routes' Service references (`--egress-cluster routes` needs them):
    /// most routes name only Services, so without it they are not kept.
    track_services: bool,
}

impl guardrails::Namespaces for Index {
    fn contains(&self, name: &str) -> bool {
        self.cluster.namespaces().contains(name)
    }
}

impl Lookup for Index {
    fn grant_permits(&self, from_namespace: &str, group: &str, kind: &str, to: &ObjectRef) -> bool {
        Index::grant_permits(self, from_namespace, group, kind, to)
    }
    fn has_matching_pod(&self, namespace: &str, selector: &BTreeMap<String, String>) -> bool {
        Index::has_matching_pod(self, namespace, selector)
    }
}

impl Index {
    /// `controller_name` decides which GatewayClasses are ours.
    pub fn new(controller_name: impl Into<String>) -> Self {
        Index { gateways: Gateways::new(controller_name.into(), BTreeSet::new()), ..Index::default() }
    }

    /// Guard mode (docs/design.md §3): Gateways whose `gatewayClassName` is
    /// one of `classes` are judged too, whoever implements them. Call on an
    /// empty index: it changes which Gateways count.
    pub fn guarding(mut self, classes: impl IntoIterator<Item = String>) -> Self {
        self.gateways.guard(classes.into_iter().collect());
        self
    }

    /// Keeps what routes' Service references need (`--egress-cluster
    /// routes`). Call on an empty index.
    pub fn tracking_services(mut self, track: bool) -> Self {
        self.track_services = track;
        self
    }

    /// Adds or replaces one object (cluster-scoped kinds use an empty namespace).
    ///
    /// An XBackend always returns itself, even when its spec is unchanged: a
    /// new version can carry someone else's status change (the index holds
    /// the stored status too), and a reconcile that finds nothing to change
    /// writes nothing. The state filters out our own echoes before this.
    pub fn apply(&mut self, key: ObjectRef, object: Object) -> BTreeSet<ObjectRef> {
        match object {
            Object::Route(route_kind, route) => self.put_route(Referrer::Route(route_kind), key, Some(route)),
            Object::ListenerSet(route) => self.put_route(Referrer::ListenerSet, key, Some(route)),
            Object::Gateway(gateway) => self.put_gateway(key, Some(gateway)),
            Object::GatewayClass(class) => self.put_class(&key.name, Some(class)),
            Object::ReferenceGrant(grant) => self.put_grant(key, Some(grant)),
            Object::XBackend(backend) => {
                self.backends.put(&key, Some(backend));
                BTreeSet::from([key])
            }
            Object::Pod(pod) => self.put_pod(&key, pod.live.then_some(pod.labels)),
            Object::Namespace => self.put_namespace(&key.name, true),
            // Services and their EndpointSlices change no verdict: only the
            // egress decision reads them.
            Object::Service(service) => {
                self.services.put_service(&key, Some(service));
                BTreeSet::new()
            }
            Object::EndpointSlice(slice) => {
                self.services.put_slice(&key, Some(slice));
                BTreeSet::new()
            }
        }
    }

    /// Removes one object. Deleting an XBackend returns itself, so the caller
    /// can drop whatever it keeps per XBackend.
    pub fn delete(&mut self, kind: Kind, key: &ObjectRef) -> BTreeSet<ObjectRef> {
        match kind {
            Kind::Route(route_kind) => self.put_route(Referrer::Route(route_kind), key.clone(), None),
            Kind::ListenerSet => self.put_route(Referrer::ListenerSet, key.clone(), None),
            Kind::Gateway => self.put_gateway(key.clone(), None),
            Kind::GatewayClass => self.put_class(&key.name, None),
            Kind::ReferenceGrant => self.put_grant(key.clone(), None),
            Kind::XBackend => {
                self.backends.put(key, None);
                BTreeSet::from([key.clone()])
            }
            Kind::Pod => self.put_pod(key, None),
            Kind::Namespace => self.put_namespace(&key.name, false),
            Kind::Service => {
                self.services.put_service(key, None);
                BTreeSet::new()
            }
            Kind::EndpointSlice => {
                self.services.put_slice(key, None);
                BTreeSet::new()
            }
        }
    }

    /// Ends a watch re-list whose objects were applied one by one as they
    /// arrived: deletes the objects of `kind` it did not see. Streaming a
    /// re-list this way never holds two copies of every object.
    pub fn retain(&mut self, kind: Kind, seen: &BTreeSet<ObjectRef>) -> BTreeSet<ObjectRef> {
        let gone: Vec<ObjectRef> = self.keys_of(kind).into_iter().filter(|key| !seen.contains(key)).collect();
        let mut affected = BTreeSet::new();
        for key in gone {
            affected.extend(self.delete(kind, &key));
        }
        affected
    }

    /// XBackends that reference this Secret or ConfigMap.
    pub fn referencing(&self, kind: RefKind, key: &ObjectRef) -> BTreeSet<ObjectRef> {
        self.backends.referencing(kind, key)
    }

    /// docs/design.md §3: this controller's Gateways behind the objects that
    /// name `backend`, sorted by namespace then name, each with the kinds of
    /// those objects.
    pub fn ancestors(&self, backend: &ObjectRef) -> Vec<Ancestor> {
        let mut ancestors: BTreeMap<&ObjectRef, Referrers> = BTreeMap::new();
        for route_key in self.routes.naming(backend) {
            // GEP-4894: a route never makes ancestors for another namespace's XBackend.
            if route_key.1.namespace != backend.namespace {
                continue;
            }
            let Some(route) = self.routes.get(route_key) else { continue };
            for gateway in route.gateways.iter().filter(|gw| self.gateways.is_judged(gw)) {
                ancestors.entry(gateway).or_default().insert(route_key.0);
            }
        }
        ancestors.into_iter().map(|(gateway, referrers)| Ancestor { gateway: gateway.clone(), referrers }).collect()
    }

    /// Every Gateway this controller judges (docs/design.md §3), sorted.
    pub fn judged_gateways(&self) -> Vec<ObjectRef> {
        self.gateways.judged()
    }

    /// A Gateway as the index holds it (class name and uid).
    pub fn gateway(&self, gateway: &ObjectRef) -> Option<&Gateway> {
        self.gateways.get(gateway)
    }

    /// True when a live Pod in `namespace` carries every label of `selector`.
    pub fn has_matching_pod(&self, namespace: &str, selector: &BTreeMap<String, String>) -> bool {
        self.cluster.has_matching_pod(namespace, selector)
    }

    /// The cluster's Namespaces, shared (cheap to hold in a snapshot).
    pub fn namespaces(&self) -> Arc<BTreeSet<String>> {
        self.cluster.namespaces().clone()
    }

    /// The XBackends whose spec names `hostname` (normalized).
    pub fn backends_with_hostname(&self, hostname: &str) -> BTreeSet<ObjectRef> {
        self.backends.with_hostname(hostname)
    }

    pub fn backend(&self, key: &ObjectRef) -> Option<&Backend> {
        self.backends.get(key).map(|b| &**b)
    }

    /// The record itself, shared (cheap to hold in a snapshot).
    pub fn backend_shared(&self, key: &ObjectRef) -> Option<Arc<Backend>> {
        self.backends.get(key).cloned()
    }

    pub fn backend_count(&self) -> usize {
        self.backends.count()
    }

    pub fn backend_keys(&self) -> Vec<ObjectRef> {
        self.backends.keys()
    }

    /// True when a ReferenceGrant in `to.namespace` lets XBackends from
    /// `from_namespace` reference the object (`group`, `kind`, `to.name`).
    pub fn grant_permits(&self, from_namespace: &str, group: &str, kind: &str, to: &ObjectRef) -> bool {
        refs::grants_permit(self.grants.in_namespace(&to.namespace), from_namespace, group, kind, to)
    }

    /// The ReferenceGrants of one namespace.
    pub fn grants_in<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a ReferenceGrant> + 'a {
        self.grants.in_namespace(namespace)
    }

    fn keys_of(&self, kind: Kind) -> Vec<ObjectRef> {
        match kind {
            Kind::Route(route_kind) => self.routes.keys(Referrer::Route(route_kind)),
            Kind::ListenerSet => self.routes.keys(Referrer::ListenerSet),
            Kind::Gateway => self.gateways.keys(),
            Kind::GatewayClass => self.gateways.class_keys(),
            Kind::ReferenceGrant => self.grants.keys(),
            Kind::XBackend => self.backends.keys(),
            Kind::Namespace => self.cluster.namespaces().iter().map(|name| ObjectRef::new("", name)).collect(),
            Kind::Pod => self.cluster.pod_keys(),
            Kind::Service => self.services.service_keys(),
            Kind::EndpointSlice => self.services.slice_keys(),
        }
    }

    /// Every referrer (route, Gateway, ListenerSet) that names an XBackend or a Service.
    pub fn referrers(&self) -> impl Iterator<Item = (&RouteKey, &Route)> {
        self.routes.iter()
    }

    pub fn gateway_count(&self) -> usize {
        self.gateways.keys().len()
    }

    /// The classes the Gateways use, with their controllerName where known.
    pub fn gateway_classes_in_use(&self) -> Vec<String> {
        let mut classes: Vec<String> = (self.gateways.keys().iter())
            .filter_map(|key| self.gateways.get(key))
            .filter(|g| !g.class_name.is_empty())
            .map(|g| match self.gateways.class(&g.class_name) {
                Some(class) => format!("{} ({})", g.class_name, class.controller_name),
                None => g.class_name.clone(),
            })
            .collect();
        classes.sort();
        classes.dedup();
        classes
    }

    /// The referrers (routes, Gateways, ListenerSets) attached to `gateway`,
    /// with what they name.
    pub fn referrers_of<'a>(&'a self, gateway: &ObjectRef) -> impl Iterator<Item = (&'a RouteKey, &'a Route)> + 'a {
        self.routes.attached_to(gateway).filter_map(|key| Some((key, self.routes.get(key)?)))
    }

    pub fn service(&self, key: &ObjectRef) -> Option<&crate::model::Service> {
        self.services.service(key)
    }

    /// The EndpointSlices (no controller manages) of a Service.
    pub fn slices_of<'a>(&'a self, service: &ObjectRef) -> impl Iterator<Item = &'a crate::model::EndpointSlice> + 'a {
        self.services.slices_of(service)
    }

    /// True when a ReferenceGrant in `to.namespace` lets objects of kind
    /// `from_kind` (group `from_group`) in `from_namespace` reference `to`
    /// (`group`, `kind`).
    pub fn grant_allows(&self, from: (&str, &str, &str), group: &str, kind: &str, to: &ObjectRef) -> bool {
        refs::grants_allow(self.grants.in_namespace(&to.namespace), from, group, kind, to)
    }

    /// Whether an ExternalName Service names `hostname` (normalized).
    pub fn external_name_in_use(&self, hostname: &str) -> bool {
        self.services.external_name_in_use(hostname)
    }

    /// The ExternalName Services aliasing `hostname` (normalized).
    pub fn services_aliasing(&self, hostname: &str) -> Vec<ObjectRef> {
        self.services.aliasing(hostname)
    }

    pub fn gateway_class(&self, name: &str) -> Option<&crate::model::GatewayClass> {
        self.gateways.class(name)
    }

    /// A Namespace coming or going affects exactly the XBackends whose
    /// two- or three-label hostname ends in its name.
    fn put_namespace(&mut self, name: &str, exists: bool) -> BTreeSet<ObjectRef> {
        if !self.cluster.put_namespace(name, exists) {
            return BTreeSet::new();
        }
        self.backends.ending_in(name)
    }

    /// A Pod affects the EndpointSelector XBackends of its namespace whose
    /// selector matched its labels before or matches them now.
    fn put_pod(&mut self, key: &ObjectRef, labels: Option<BTreeMap<String, String>>) -> BTreeSet<ObjectRef> {
        let Some(seen) = self.cluster.put_pod(&key.namespace, &key.name, labels) else { return BTreeSet::new() };
        let candidates = self.backends.selectors_in(&key.namespace);
        candidates
            .into_iter()
            .filter(|backend| {
                let selector =
                    self.backends.get(backend).and_then(|b| b.spec.as_ref().ok()).and_then(refs::endpoint_selector);
                selector.is_some_and(|selector| seen.iter().flatten().any(|labels| selects(selector, labels)))
            })
            .collect()
    }

    /// Only existing XBackends have a status to update.
    fn existing(&self, keys: impl IntoIterator<Item = ObjectRef>) -> BTreeSet<ObjectRef> {
        keys.into_iter().filter(|key| self.backends.contains(key)).collect()
    }

    fn put_route(&mut self, referrer: Referrer, key: ObjectRef, route: Option<Route>) -> BTreeSet<ObjectRef> {
        // GEP-4894: a route only ever sends to XBackends of its own namespace.
        let track = self.track_services;
        let new = route
            .map(|r| Route {
                backends: r.backends.iter().filter(|b| b.namespace == key.namespace).cloned().collect(),
                services: if track { r.services } else { Box::default() },
                ..r
            })
            .filter(|r| !r.backends.is_empty() || !r.services.is_empty());
        let route_key: RouteKey = (referrer, key);
        let old = self.routes.put(route_key, new.clone());
        if old == new {
            return BTreeSet::new();
        }
        // What this route contributes to a backend is its set of live
        // Gateways; only backends whose contribution differs are affected.
        let live = |route: &Option<Route>| -> BTreeSet<ObjectRef> {
            route.iter().flat_map(|r| r.gateways.iter()).filter(|gw| self.gateways.is_judged(gw)).cloned().collect()
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
        let external_auth = gateway
            .as_mut()
            .map(|g| (std::mem::take(&mut g.external_auth), std::mem::take(&mut g.external_auth_services)));
        let was_judged = self.gateways.put_gateway(&key, gateway);
        let mut affected = if was_judged == self.gateways.is_judged(&key) {
            BTreeSet::new()
        } else {
            self.backends_behind_gateway(&key)
        };
        let referrer = external_auth.map(|(backends, services)| Route {
            gateways: [key.clone()].into_iter().collect(),
            backends,
            services,
        });
        affected.extend(self.put_route(Referrer::Gateway, key, referrer));
        affected
    }

    fn put_class(&mut self, name: &str, class: Option<crate::model::GatewayClass>) -> BTreeSet<ObjectRef> {
        let was_ours = self.gateways.put_class(name, class);
        if was_ours == self.gateways.is_our_class(name) {
            return BTreeSet::new();
        }
        let gateways = self.gateways.of_class(name);
        gateways.iter().flat_map(|gw| self.backends_behind_gateway(gw)).collect()
    }

    fn backends_behind_gateway(&self, gateway: &ObjectRef) -> BTreeSet<ObjectRef> {
        let routes = self.routes.attached_to(gateway).filter_map(|key| self.routes.get(key));
        self.existing(routes.flat_map(|route| route.backends.iter().cloned()).collect::<Vec<_>>())
    }

    fn put_grant(&mut self, key: ObjectRef, grant: Option<ReferenceGrant>) -> BTreeSet<ObjectRef> {
        let old = self.grants.put(key.clone(), grant.clone());
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
        let candidates = self.backends.targeting(&key.namespace);
        candidates.into_iter().filter(|backend| from_namespaces.contains(&*backend.namespace)).collect()
    }

    /// Every part's reverse maps equal those rebuilt from its records.
    #[cfg(test)]
    pub fn check(&self) {
        self.routes.check();
        self.gateways.check();
        self.backends.check();
        self.cluster.check();
        self.services.check();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BackendTls, LocalObjectReference, SecretObjectReference, TlsMode, TlsValidation, XBackendSpec};
    use crate::decode::decode;
    use crate::model::{Gateway, GatewayClass, GrantFrom, GrantTo, RouteKind};
    use serde_json::{Value, json};

    /// The ancestors' Gateways, for the cases where the referring kinds do not matter.
    fn gateways(index: &Index, backend: &ObjectRef) -> Vec<ObjectRef> {
        index.ancestors(backend).into_iter().map(|a| a.gateway).collect()
    }

    const OURS: &str = "example.com/xbackend-controller";

    const THEIRS: &str = "other.example/controller";
    const XGROUP: &str = "gateway.networking.x-k8s.io";

    fn r(namespace: &str, name: &str) -> ObjectRef {
        ObjectRef::new(namespace, name)
    }

    fn set(items: &[(&str, &str)]) -> BTreeSet<ObjectRef> {
        items.iter().map(|(ns, name)| r(ns, name)).collect()
    }

    fn apply_json(index: &mut Index, api_version: &str, kind: &str, value: Value) -> BTreeSet<ObjectRef> {
        let kind = Kind::of(api_version, kind).expect("known kind");
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
        spec.tls = Some(Box::new(BackendTls {
            mode: TlsMode::ClientAndServer,
            client_certificate_ref: Some(Box::new(SecretObjectReference {
                group: None,
                kind: None,
                name: secret.into(),
                namespace: secret_namespace.map(str::to_string),
            })),
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
        }));
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
            services: Box::default(),
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
                Route {
                    gateways: set(gateways).into_iter().collect(),
                    backends: set(backends).into_iter().collect(),
                    services: Box::default(),
                },
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
        assert!(index.routes.is_empty(), "no route and no reverse entry left");
        assert_eq!(index.gateways.reverse_entries() + index.backends.reverse_entries(), 0);
        index.check();
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
        assert!(index.routes.get(&(Referrer::Gateway, r("app", "local"))).is_none(), "its referrer entry left with it");
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

    /// The property of the parts: after any sequence of applies, deletes
    /// and re-lists, every reverse map equals one rebuilt from the records
    /// (`Index::check`), and every answer equals that of an index built from
    /// scratch out of the objects that are left.
    mod parts {
        use super::*;
        use crate::testing::{ca_ref, secret_ref, tls_spec};
        use proptest::prelude::*;
        use std::collections::BTreeMap;

        const NAMESPACES: [&str; 3] = ["app", "infra", "certs"];
        const NAMES: [&str; 3] = ["a", "b", "c"];
        const CLASSES: [&str; 3] = ["ours", "theirs", "guarded"];

        #[derive(Clone, Debug)]
        #[allow(clippy::large_enum_variant)]
        enum Op {
            Apply(ObjectRef, Object),
            Delete(Kind, ObjectRef),
            /// A re-list of `kind` that saw only these keys.
            Retain(Kind, Vec<ObjectRef>),
        }

        fn key() -> impl Strategy<Value = ObjectRef> {
            (prop::sample::select(&NAMESPACES[..]), prop::sample::select(&NAMES[..])).prop_map(|(ns, n)| r(ns, n))
        }

        fn refs() -> impl Strategy<Value = crate::model::Refs> {
            prop::collection::vec(key(), 0..3).prop_map(|keys| keys.into_iter().collect())
        }

        fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
            prop::collection::btree_map(
                prop::sample::select(&["app", "tier"][..]),
                prop::sample::select(&["web", "db"][..]),
                0..3,
            )
            .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
        }

        fn spec() -> impl Strategy<Value = XBackendSpec> {
            let hostname =
                prop::sample::select(&["api.example.com", "x.app", "a.b.infra", "db.certs", "other.net"][..]);
            let secret = prop::option::of((
                prop::option::of(prop::sample::select(&NAMESPACES[..])),
                prop::sample::select(&NAMES[..]),
            ));
            let cas = prop::collection::vec(prop::sample::select(&NAMES[..]), 0..3);
            (hostname, secret, cas, prop::option::of(labels())).prop_map(|(hostname, secret, cas, selector)| {
                let mut spec = match secret {
                    Some((ns, name)) => tls_spec(Some(secret_ref(ns, name)), cas.iter().map(|n| ca_ref(n)).collect()),
                    None => tls_spec(None, cas.iter().map(|n| ca_ref(n)).collect()),
                };
                match selector {
                    Some(labels) => {
                        spec.type_ = crate::api::BackendType::EndpointSelector;
                        spec.external_hostname = None;
                        spec.endpoint_selector = Some(crate::api::EndpointSelectorBackend { match_labels: labels });
                    }
                    None => {
                        spec.external_hostname = Some(crate::api::ExternalHostnameBackend { hostname: hostname.into() })
                    }
                }
                spec
            })
        }

        fn object() -> impl Strategy<Value = Object> {
            let route_kind = prop::sample::select(&RouteKind::ALL[..]);
            let grant = (prop::sample::select(&NAMESPACES[..]), prop::option::of(prop::sample::select(&NAMES[..])));
            prop_oneof![
                (route_kind, refs(), refs()).prop_map(|(k, gateways, backends)| Object::Route(
                    k,
                    Route { gateways, backends, services: Box::default() }
                )),
                (refs(), refs()).prop_map(|(gateways, backends)| Object::ListenerSet(Route {
                    gateways,
                    backends,
                    services: Box::default()
                })),
                (prop::sample::select(&CLASSES[..]), refs()).prop_map(|(class, external_auth)| Object::Gateway(
                    Gateway {
                        class_name: class.into(),
                        uid: String::new(),
                        external_auth,
                        external_auth_services: Box::default()
                    }
                )),
                prop::sample::select(&[OURS, THEIRS][..])
                    .prop_map(|c| Object::GatewayClass(GatewayClass { controller_name: c.into() })),
                grant.prop_map(|(from, name)| Object::ReferenceGrant(ReferenceGrant {
                    from: vec![GrantFrom { group: XGROUP.into(), kind: "XBackend".into(), namespace: from.into() }],
                    to: vec![GrantTo { group: "".into(), kind: "Secret".into(), name: name.map(str::to_string) }],
                })),
                spec().prop_map(|spec| Object::XBackend(Backend::new(1, Ok(spec)))),
                Just(Object::XBackend(Backend::new(1, Err("does not decode".into())))),
                (labels(), any::<bool>()).prop_map(|(labels, live)| Object::Pod(crate::model::Pod { labels, live })),
                Just(Object::Namespace),
            ]
        }

        fn keyed(kind: Kind, key: ObjectRef) -> ObjectRef {
            if kind.namespaced() { key } else { r("", &key.namespace) }
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (key(), object()).prop_map(|(key, object)| Op::Apply(keyed(object.kind(), key), object)),
                2 => (object(), key()).prop_map(|(object, key)| Op::Delete(object.kind(), keyed(object.kind(), key))),
                1 => (object(), prop::collection::vec(key(), 0..4))
                    .prop_map(|(object, keys)| Op::Retain(object.kind(), keys.into_iter().map(|k| keyed(object.kind(), k)).collect())),
            ]
        }

        /// What an index answers, for comparison.
        fn answers(index: &Index) -> impl PartialEq + std::fmt::Debug {
            let every: Vec<ObjectRef> = NAMESPACES.iter().flat_map(|ns| NAMES.iter().map(move |n| r(ns, n))).collect();
            let per_backend: Vec<_> = every
                .iter()
                .map(|b| {
                    let ancestors: Vec<(ObjectRef, Vec<Referrer>)> =
                        index.ancestors(b).into_iter().map(|a| (a.gateway, a.referrers.iter().collect())).collect();
                    (
                        index.backend(b).cloned(),
                        ancestors,
                        index.referencing(RefKind::Secret, b),
                        index.referencing(RefKind::ConfigMap, b),
                    )
                })
                .collect();
            let hostnames: Vec<_> = ["api.example.com", "x.app", "a.b.infra", "db.certs", "other.net"]
                .iter()
                .map(|h| index.backends_with_hostname(h))
                .collect();
            let selectors = labels_universe()
                .iter()
                .map(|l| NAMESPACES.map(|ns| index.has_matching_pod(ns, l)))
                .collect::<Vec<_>>();
            (per_backend, hostnames, index.judged_gateways(), index.namespaces(), selectors)
        }

        fn labels_universe() -> Vec<BTreeMap<String, String>> {
            let one = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
            vec![one("app", "web"), one("app", "db"), one("tier", "web")]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]
            #[test]
            fn reverse_maps_agree_with_a_recomputation(ops in prop::collection::vec(op(), 1..40)) {
                let mut index = Index::new(OURS).guarding(["guarded".to_string()]);
                let mut live: BTreeMap<(Kind, ObjectRef), Object> = BTreeMap::new();
                for op in ops {
                    match op {
                        Op::Apply(key, object) => {
                            live.insert((object.kind(), key.clone()), object.clone());
                            index.apply(key, object);
                        }
                        Op::Delete(kind, key) => {
                            live.remove(&(kind, key.clone()));
                            index.delete(kind, &key);
                        }
                        Op::Retain(kind, keys) => {
                            let seen: BTreeSet<ObjectRef> = keys.into_iter().filter(|k| live.contains_key(&(kind, k.clone()))).collect();
                            live.retain(|(k, key), _| *k != kind || seen.contains(key));
                            index.retain(kind, &seen);
                        }
                    }
                    index.check();
                }
                let mut fresh = Index::new(OURS).guarding(["guarded".to_string()]);
                for ((_, key), object) in live {
                    fresh.apply(key, object);
                }
                prop_assert_eq!(answers(&index), answers(&fresh));
            }
        }
    }
}
