//! Lenient decoding of API objects (as JSON) into the index's model. Shared by
//! the watches and `analyze`; an object that does not decode is reported, not fatal.

use std::borrow::Cow;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::core::{ApiResource, DynamicResourceScope};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::api::{self, GATEWAY_GROUP, XBackendSpec};
use crate::model::{
    Backend, EndpointSlice, Gateway, GatewayClass, GrantFrom, GrantTo, Kind, Object, ObjectRef, Pod, PortRef, Protocol,
    ReferenceGrant, Refs, Route, Service, ServicePort, ServiceRef, StoredStatus,
};

/// Namespace given to namespaced objects that carry none, as `kubectl apply`
/// would with the default context (only `analyze` input can lack one).
pub const DEFAULT_NAMESPACE: &str = "default";

/// Decodes one object of `kind`. XBackends whose spec does not decode still
/// return Ok (with `Backend.spec = Err(..)`) so they get an Invalid condition;
/// Err means the object cannot be indexed at all (no name, not an object, ...).
pub fn decode(kind: Kind, object: &Value) -> Result<(ObjectRef, Object), String> {
    if !object.is_object() {
        return Err("object is not a JSON object".to_string());
    }
    let str_at = |pointer: &str| object.pointer(pointer).and_then(Value::as_str);
    let key = key_of(kind, str_at("/metadata/namespace"), str_at("/metadata/name"))?;
    let namespace = &*key.namespace;
    let spec = object.get("spec").unwrap_or(&Value::Null);
    let decoded = match kind {
        Kind::Route(_) | Kind::Gateway | Kind::ListenerSet | Kind::GatewayClass | Kind::ReferenceGrant => {
            with_uid(decode_spec(kind, namespace, spec), str_at("/metadata/uid"))
        }
        Kind::XBackend => Object::XBackend(Backend {
            generation: object.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0),
            spec: decode_backend_spec(object.get("spec")),
            uid: object.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default().into(),
            resource_version: object
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            status: StoredStatus::from_value(object.get("status").unwrap_or(&Value::Null)),
        }),
        Kind::Pod => Object::Pod(decode_pod(object)),
        Kind::Namespace => Object::Namespace,
        Kind::Service => Object::Service(decode_service(spec)),
        Kind::EndpointSlice => Object::EndpointSlice(decode_endpoint_slice(namespace, object)),
    };
    Ok((key, decoded))
}

/// The index key of an object; cluster-scoped kinds get an empty namespace.
fn key_of(kind: Kind, namespace: Option<&str>, name: Option<&str>) -> Result<ObjectRef, String> {
    let name = match name {
        Some(name) if !name.is_empty() => name,
        _ => return Err("object has no metadata.name".to_string()),
    };
    let namespace = match kind {
        Kind::GatewayClass | Kind::Namespace => "",
        _ => namespace.filter(|ns| !ns.is_empty()).unwrap_or(DEFAULT_NAMESPACE),
    };
    Ok(ObjectRef::new(namespace, name))
}

/// A Gateway keeps its uid (its egress NetworkPolicies name it as owner).
fn with_uid(object: Object, uid: Option<&str>) -> Object {
    match object {
        Object::Gateway(gateway) => Object::Gateway(Gateway { uid: uid.unwrap_or_default().to_string(), ..gateway }),
        other => other,
    }
}

/// The kinds whose model is read from the spec alone.
fn decode_spec(kind: Kind, namespace: &str, spec: &Value) -> Object {
    match kind {
        Kind::Route(route_kind) => Object::Route(route_kind, decode_route(namespace, spec)),
        Kind::Gateway => {
            let mut named = listener_auth_targets(namespace, spec);
            Object::Gateway(Gateway {
                class_name: string_at(spec, "gatewayClassName"),
                uid: String::new(),
                external_auth: named.backends(),
                external_auth_services: named.services(),
            })
        }
        Kind::ListenerSet => Object::ListenerSet(decode_listener_set(namespace, spec)),
        Kind::GatewayClass => Object::GatewayClass(GatewayClass { controller_name: string_at(spec, "controllerName") }),
        Kind::ReferenceGrant => Object::ReferenceGrant(decode_grant(spec)),
        Kind::XBackend | Kind::Pod | Kind::Namespace | Kind::Service | Kind::EndpointSlice => {
            unreachable!("{kind:?} is not decoded from its spec alone")
        }
    }
}

/// An object as a watch delivers it, decoded straight from the response
/// bytes: the metadata the index reads, spec and status as JSON text. The
/// parser skips annotations and managedFields (often larger than the spec)
/// without building them.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Watched {
    #[serde(deserialize_with = "lean_metadata")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<Box<RawValue>>,
    #[serde(default)]
    pub status: Option<Box<RawValue>>,
}

/// The fields of `metadata` the index and the watcher read.
fn lean_metadata<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<ObjectMeta, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Lean {
        name: Option<String>,
        namespace: Option<String>,
        uid: Option<String>,
        resource_version: Option<String>,
        generation: Option<i64>,
        labels: Option<BTreeMap<String, String>>,
        deletion_timestamp: Option<Time>,
    }
    let lean = <Lean as serde::Deserialize>::deserialize(deserializer)?;
    Ok(ObjectMeta {
        name: lean.name,
        namespace: lean.namespace,
        uid: lean.uid,
        resource_version: lean.resource_version,
        generation: lean.generation,
        labels: lean.labels,
        deletion_timestamp: lean.deletion_timestamp,
        ..ObjectMeta::default()
    })
}

/// An object of kind `K` watched by metadata only (Pods, Namespaces, Secrets,
/// ConfigMaps): like kube's `PartialObjectMeta<K>`, it asks the apiserver for
/// metadata alone, and it also skips annotations and managedFields.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct WatchedMeta<K> {
    #[serde(deserialize_with = "lean_metadata")]
    pub metadata: ObjectMeta,
    #[serde(skip)]
    kind: std::marker::PhantomData<fn() -> K>,
}

impl<K: kube::Resource> kube::Resource for WatchedMeta<K> {
    type DynamicType = K::DynamicType;
    type Scope = K::Scope;

    fn metadata_api() -> bool {
        true
    }
    fn kind(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::version(dt)
    }
    fn plural(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Decodes a Pod or Namespace watched by metadata only; the same model as
/// `decode` (a Pod being deleted is not live).
pub fn decode_metadata(kind: Kind, meta: &ObjectMeta) -> Result<(ObjectRef, Object), String> {
    let key = key_of(kind, meta.namespace.as_deref(), meta.name.as_deref())?;
    let decoded = match kind {
        Kind::Pod => Object::Pod(Pod {
            labels: meta.labels.clone().unwrap_or_default(),
            live: meta.deletion_timestamp.is_none(),
        }),
        Kind::Namespace => Object::Namespace,
        _ => return Err(format!("{kind:?} is not watched by metadata only")),
    };
    Ok((key, decoded))
}

/// Like `DynamicObject`: the API resource is given at run time.
impl kube::Resource for Watched {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn group(dt: &ApiResource) -> Cow<'_, str> {
        dt.group.as_str().into()
    }
    fn version(dt: &ApiResource) -> Cow<'_, str> {
        dt.version.as_str().into()
    }
    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        dt.kind.as_str().into()
    }
    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        dt.api_version.as_str().into()
    }
    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        dt.plural.as_str().into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Decodes a watched object of an index kind watched in full (not Pods or
/// Namespaces, which are watched by metadata). The same model as `decode`:
/// an XBackend's spec goes from its text straight to the typed spec, the
/// other kinds read a few fields of their spec.
pub fn decode_watched(kind: Kind, object: &Watched) -> Result<(ObjectRef, Object), String> {
    let meta = &object.metadata;
    let key = key_of(kind, meta.namespace.as_deref(), meta.name.as_deref())?;
    let spec = object.spec.as_deref().map(RawValue::get);
    let decoded = match kind {
        Kind::XBackend => Object::XBackend(Backend {
            generation: meta.generation.unwrap_or(0),
            spec: backend_spec_from_json(spec),
            uid: meta.uid.as_deref().unwrap_or_default().into(),
            resource_version: meta.resource_version.clone().unwrap_or_default(),
            status: object.status.as_deref().map(|s| StoredStatus::from_json(s.get())).unwrap_or_default(),
        }),
        Kind::Route(_) | Kind::Gateway | Kind::ListenerSet | Kind::GatewayClass | Kind::ReferenceGrant => {
            let spec: Value = spec.and_then(|s| serde_json::from_str(s).ok()).unwrap_or(Value::Null);
            with_uid(decode_spec(kind, &key.namespace, &spec), meta.uid.as_deref())
        }
        Kind::Service => {
            let spec: Value = spec.and_then(|s| serde_json::from_str(s).ok()).unwrap_or(Value::Null);
            Object::Service(decode_service(&spec))
        }
        Kind::Pod | Kind::Namespace | Kind::EndpointSlice => {
            return Err(format!("{kind:?} is not watched as a lean object"));
        }
    };
    Ok((key, decoded))
}

/// The XBackend spec from its JSON text; only a spec that does not decode
/// takes the slower path through a `Value`, for the same message as `decode`.
fn backend_spec_from_json(spec: Option<&str>) -> Result<XBackendSpec, String> {
    match spec.map(serde_json::from_str::<XBackendSpec>) {
        Some(Ok(spec)) => Ok(spec),
        Some(Err(_)) => {
            let value: Option<Value> = spec.and_then(|s| serde_json::from_str(s).ok());
            decode_backend_spec(value.as_ref())
        }
        None => decode_backend_spec(None),
    }
}

/// The XBackend spec, or a message naming the first field that does not
/// decode (as `spec.tls.mode: unknown variant ...`).
pub fn decode_backend_spec(spec: Option<&Value>) -> Result<XBackendSpec, String> {
    let spec = match spec {
        None | Some(Value::Null) => {
            return Err("spec is missing: an XBackend needs spec.type, spec.port and, for ExternalHostname, spec.externalHostname.".to_string());
        }
        Some(spec) => spec,
    };
    serde_path_to_error::deserialize::<_, XBackendSpec>(spec).map_err(|err| {
        let path = err.path().to_string();
        let field = if path == "." { "spec".to_string() } else { format!("spec.{path}") };
        // The CRD's schema would have refused this object; say so and point
        // at the schema, since the raw decoder text alone is not a fix.
        let explain: String = field.split('[').enumerate().map(|(i, part)| if i == 0 { part } else { part.split_once(']').map_or("", |(_, rest)| rest) }).collect();
        format!("{field} does not match the XBackend schema ({}); fix it as `kubectl explain xbackend.{explain}` describes.", err.into_inner())
    })
}

fn string_at(value: &Value, field: &str) -> String {
    value.get(field).and_then(Value::as_str).unwrap_or_default().to_string()
}

fn optional_string_at<'a>(value: &'a Value, field: &str) -> Option<&'a str> {
    value.get(field).and_then(Value::as_str)
}

/// Iterates a JSON array field, treating anything that is not an array as empty.
fn items<'a>(value: &'a Value, field: &str) -> impl Iterator<Item = &'a Value> {
    value.get(field).and_then(Value::as_array).into_iter().flatten()
}

/// What the reference sites of one object name: XBackends of its own
/// namespace (GEP-4894 lets routes use no other), and core Services.
#[derive(Default)]
struct Named {
    backends: Vec<ObjectRef>,
    services: Vec<ServiceRef>,
}

impl Named {
    fn backends(&mut self) -> Refs {
        Refs::from_iter(std::mem::take(&mut self.backends))
    }

    fn services(&mut self) -> Box<[ServiceRef]> {
        let mut services = std::mem::take(&mut self.services);
        services.sort();
        services.dedup();
        services.into_boxed_slice()
    }

    /// One backendRef: an XBackend in `namespace`, or a core Service in any
    /// namespace (with the port it names); other kinds are not ours to read.
    fn add(&mut self, backend_ref: &Value, namespace: &str) {
        let group = optional_string_at(backend_ref, "group").unwrap_or_default();
        let kind = optional_string_at(backend_ref, "kind").unwrap_or("Service");
        let name = optional_string_at(backend_ref, "name").unwrap_or_default();
        let target = optional_string_at(backend_ref, "namespace").filter(|ns| !ns.is_empty());
        if name.is_empty() {
            return;
        }
        if group == api::GROUP && kind == api::KIND {
            if target.is_none_or(|ns| ns == namespace) {
                self.backends.push(ObjectRef::new(namespace, name));
            }
        } else if matches!(group, "" | "core") && kind == "Service" {
            let port = backend_ref.get("port").and_then(Value::as_u64).and_then(|p| u16::try_from(p).ok());
            let service = ObjectRef::new(target.unwrap_or(namespace), name);
            self.services.push(ServiceRef { service, port: port.unwrap_or(0) });
        }
    }

    /// The backendRef of each RequestMirror and ExternalAuth filter.
    fn add_filters<'a>(&mut self, filters: impl Iterator<Item = &'a Value>, namespace: &str) {
        for filter in filters {
            for pointer in ["/requestMirror/backendRef", "/externalAuth/backendRef"] {
                if let Some(backend_ref) = filter.pointer(pointer) {
                    self.add(backend_ref, namespace);
                }
            }
        }
    }
}

/// Every route kind shares the fields read here; the filters exist only in
/// HTTPRoute (ExternalAuth, RequestMirror) and GRPCRoute (RequestMirror).
fn decode_route(namespace: &str, spec: &Value) -> Route {
    let gateways = items(spec, "parentRefs").filter_map(|parent| gateway_of(parent, namespace));
    let mut named = Named::default();
    for rule in items(spec, "rules") {
        named.add_filters(items(rule, "filters"), namespace);
        for backend_ref in items(rule, "backendRefs") {
            named.add(backend_ref, namespace);
            named.add_filters(items(backend_ref, "filters"), namespace);
        }
    }
    Route { gateways: Refs::from_iter(gateways), backends: named.backends(), services: named.services() }
}

/// A ListenerSet is indexed like a route whose one parent is its Gateway.
fn decode_listener_set(namespace: &str, spec: &Value) -> Route {
    let parent = spec.get("parentRef").and_then(|parent| gateway_of(parent, namespace));
    let mut named = listener_auth_targets(namespace, spec);
    Route { gateways: parent.into_iter().collect(), backends: named.backends(), services: named.services() }
}

/// The Gateway a parentRef names (group and kind defaulted as in a
/// ParentReference); None for other parent kinds.
fn gateway_of(parent: &Value, namespace: &str) -> Option<ObjectRef> {
    let group = optional_string_at(parent, "group").unwrap_or(GATEWAY_GROUP);
    let kind = optional_string_at(parent, "kind").unwrap_or("Gateway");
    let name = optional_string_at(parent, "name").unwrap_or_default();
    if group != GATEWAY_GROUP || kind != "Gateway" || name.is_empty() {
        return None;
    }
    let parent_namespace = optional_string_at(parent, "namespace").filter(|ns| !ns.is_empty()).unwrap_or(namespace);
    Some(ObjectRef::new(parent_namespace, name))
}

/// `spec.listeners[].filters.requests[].externalAuth.backendRef` of a Gateway or ListenerSet.
fn listener_auth_targets(namespace: &str, spec: &Value) -> Named {
    let mut named = Named::default();
    for listener in items(spec, "listeners") {
        named.add_filters(listener.get("filters").into_iter().flat_map(|f| items(f, "requests")), namespace);
    }
    named
}

/// A Service's selector, type, external name and ports (ports of an unknown
/// protocol are left out: nothing can be allowed for them).
fn decode_service(spec: &Value) -> Service {
    let selector = spec.get("selector").and_then(Value::as_object).into_iter().flatten();
    let selector = selector.filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect();
    let external_name = (optional_string_at(spec, "type") == Some("ExternalName"))
        .then(|| optional_string_at(spec, "externalName").unwrap_or_default().to_string());
    let ports = items(spec, "ports")
        .filter_map(|p| {
            let port = u16::try_from(p.get("port")?.as_u64()?).ok()?;
            let target = match p.get("targetPort") {
                Some(Value::String(name)) => PortRef::Name(name.as_str().into()),
                Some(Value::Number(n)) => PortRef::Number(u16::try_from(n.as_u64()?).ok()?),
                _ => PortRef::Number(port),
            };
            let protocol = Protocol::parse(optional_string_at(p, "protocol"))?;
            Some(ServicePort { name: string_at(p, "name").into(), port, target, protocol })
        })
        .collect();
    Service { selector, external_name, ports }
}

/// An EndpointSlice's Service (label kubernetes.io/service-name), its ready
/// addresses (serving when none is ready, as kube-proxy does), and its ports.
fn decode_endpoint_slice(namespace: &str, object: &Value) -> EndpointSlice {
    let service = object.pointer("/metadata/labels/kubernetes.io~1service-name").and_then(Value::as_str);
    let endpoints: Vec<&Value> = items(object, "endpoints").collect();
    let condition = |e: &Value, which: &str| e.pointer(&format!("/conditions/{which}")).and_then(Value::as_bool);
    // A missing `ready` means ready (the API's rule for unknown state).
    let ready: Vec<&Value> = endpoints.iter().copied().filter(|e| condition(e, "ready") != Some(false)).collect();
    let usable = if ready.is_empty() {
        endpoints.iter().copied().filter(|e| condition(e, "serving") == Some(true)).collect()
    } else {
        ready
    };
    let addresses = usable
        .iter()
        .flat_map(|e| items(e, "addresses"))
        .filter_map(|a| a.as_str()?.parse::<std::net::IpAddr>().ok())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let ports = items(object, "ports")
        .filter_map(|p| {
            let port = u16::try_from(p.get("port")?.as_u64()?).ok()?;
            Some((string_at(p, "name").into(), port, Protocol::parse(optional_string_at(p, "protocol"))?))
        })
        .collect();
    EndpointSlice { service: service.map(|name| ObjectRef::new(namespace, name)), addresses, ports }
}

/// Labels and liveness. The controller watches Pods by metadata only, with a
/// field selector that leaves out finished Pods, so `status.phase` is read only
/// when present (analyze input).
fn decode_pod(object: &Value) -> Pod {
    let labels = object
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(key, value)| Some((key.clone(), value.as_str()?.to_string())))
        .collect();
    let deleting = object.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null());
    let finished = matches!(object.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed"));
    Pod { labels, live: !deleting && !finished }
}

fn decode_grant(spec: &Value) -> ReferenceGrant {
    let from = items(spec, "from")
        .map(|entry| GrantFrom {
            group: string_at(entry, "group"),
            kind: string_at(entry, "kind"),
            namespace: string_at(entry, "namespace"),
        })
        .collect();
    let to = items(spec, "to")
        .map(|entry| GrantTo {
            group: string_at(entry, "group"),
            kind: string_at(entry, "kind"),
            name: optional_string_at(entry, "name").map(str::to_string),
        })
        .collect();
    ReferenceGrant { from, to }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RouteKind;
    use serde_json::json;

    fn route(kind: RouteKind, value: Value) -> (ObjectRef, Route) {
        match decode(Kind::Route(kind), &value) {
            Ok((key, Object::Route(k, route))) if k == kind => (key, route),
            other => panic!("not a route: {other:?}"),
        }
    }

    fn refs(items: &[(&str, &str)]) -> Refs {
        items.iter().map(|(ns, name)| ObjectRef::new(*ns, *name)).collect()
    }

    #[test]
    fn kinds() {
        assert_eq!(Kind::of("gateway.networking.k8s.io/v1", "HTTPRoute"), Some(Kind::Route(RouteKind::Http)));
        assert_eq!(Kind::of("gateway.networking.k8s.io/v1beta1", "HTTPRoute"), Some(Kind::Route(RouteKind::Http)));
        assert_eq!(Kind::of("gateway.networking.k8s.io/v1", "GRPCRoute"), Some(Kind::Route(RouteKind::Grpc)));
        assert_eq!(Kind::of("gateway.networking.k8s.io/v1", "Gateway"), Some(Kind::Gateway));
        assert_eq!(Kind::of("gateway.networking.k8s.io/v1", "GatewayClass"), Some(Kind::GatewayClass));
        assert_eq!(Kind::of("gateway.networking.k8s.io/v1beta1", "ReferenceGrant"), Some(Kind::ReferenceGrant));
        assert_eq!(Kind::of("gateway.networking.x-k8s.io/v1alpha1", "XBackend"), Some(Kind::XBackend));
        assert_eq!(Kind::of("gateway.networking.x-k8s.io/v1alpha2", "XBackend"), None);
        for version in ["v1alpha2", "v1"] {
            let api_version = format!("gateway.networking.k8s.io/{version}");
            assert_eq!(Kind::of(&api_version, "TCPRoute"), Some(Kind::Route(RouteKind::Tcp)));
            assert_eq!(Kind::of(&api_version, "UDPRoute"), Some(Kind::Route(RouteKind::Udp)));
        }
        for version in ["v1alpha2", "v1alpha3", "v1"] {
            let api_version = format!("gateway.networking.k8s.io/{version}");
            assert_eq!(Kind::of(&api_version, "TLSRoute"), Some(Kind::Route(RouteKind::Tls)));
        }
        assert_eq!(Kind::of("gateway.networking.k8s.io/v1", "ListenerSet"), Some(Kind::ListenerSet));
        assert_eq!(Kind::of("gateway.networking.x-k8s.io/v1alpha1", "XListenerSet"), None);
        assert_eq!(Kind::of("gateway.networking.k8s.io/v1", "BackendTLSPolicy"), None);
        assert_eq!(Kind::of("v1", "Service"), Some(Kind::Service));
        assert_eq!(Kind::of("gateway.networking.k8s.io/", "Gateway"), None);
        assert_eq!(Kind::of("", ""), None);
        assert_eq!(Kind::of("networking.k8s.io/v1", "Gateway"), None);
    }

    #[test]
    fn route_parents_defaults_and_filters() {
        let (key, r) = route(
            RouteKind::Http,
            json!({
                "metadata": {"name": "r", "namespace": "app"},
                "spec": {"parentRefs": [
                    {"name": "gw"},
                    {"name": "gw", "sectionName": "https", "port": 443},
                    {"name": "other", "namespace": "infra", "group": "gateway.networking.k8s.io", "kind": "Gateway"},
                    {"name": "svc", "kind": "Service", "group": ""},
                    {"name": "mesh", "group": "example.com", "kind": "Gateway"},
                    {"name": ""},
                    {"namespace": "x"},
                    "garbage",
                    42
                ]}
            }),
        );
        assert_eq!(key, ObjectRef::new("app", "r"));
        assert_eq!(r.gateways, refs(&[("app", "gw"), ("infra", "other")]));
        assert!(r.backends.is_empty());
    }

    #[test]
    fn route_backends_from_rules_and_mirrors() {
        for kind in RouteKind::ALL {
            let mirror = |name: &str| json!({"type": "RequestMirror", "requestMirror": {"backendRef": {"group": "gateway.networking.x-k8s.io", "kind": "XBackend", "name": name}}});
            let (_, r) = route(
                kind,
                json!({
                    "metadata": {"name": "r", "namespace": "app"},
                    "spec": {"rules": [
                        {
                            "filters": [mirror("rule-mirror")],
                            "backendRefs": [
                                {"group": "gateway.networking.x-k8s.io", "kind": "XBackend", "name": "main", "filters": [mirror("ref-mirror")]},
                                {"group": "gateway.networking.x-k8s.io", "kind": "XBackend", "name": "same-ns", "namespace": "app"},
                                {"group": "gateway.networking.x-k8s.io", "kind": "XBackend", "name": "other-ns", "namespace": "elsewhere"},
                                {"name": "a-service", "port": 80},
                                {"group": "gateway.networking.x-k8s.io", "kind": "Backend", "name": "wrong-kind"},
                                {"kind": "XBackend", "name": "core-group"}
                            ]
                        },
                        {"backendRefs": "not a list", "filters": [{"requestMirror": null}, {"requestMirror": {"backendRef": 3}}]},
                        "garbage"
                    ]}
                }),
            );
            assert_eq!(
                r.backends,
                refs(&[("app", "main"), ("app", "rule-mirror"), ("app", "ref-mirror"), ("app", "same-ns")]),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn external_auth_at_both_route_levels() {
        let auth = |name: &str| json!({"type": "ExternalAuth", "externalAuth": {"protocol": "HTTP", "backendRef": {"group": "gateway.networking.x-k8s.io", "kind": "XBackend", "name": name}}});
        let (_, r) = route(
            RouteKind::Http,
            json!({
                "metadata": {"name": "r", "namespace": "app"},
                "spec": {"rules": [{
                    "filters": [auth("rule-auth")],
                    "backendRefs": [{"name": "svc", "port": 80, "filters": [auth("ref-auth"), {"externalAuth": {"backendRef": {"name": "a-service"}}}]}]
                }]}
            }),
        );
        assert_eq!(r.backends, refs(&[("app", "rule-auth"), ("app", "ref-auth")]));
    }

    /// `spec.listeners[].filters.requests[]` ExternalAuth on a Gateway and a
    /// ListenerSet; the ListenerSet's one Gateway is its parentRef.
    #[test]
    fn listener_external_auth_on_gateways_and_listener_sets() {
        let auth = |name: &str, namespace: Option<&str>| {
            let mut backend_ref = json!({"group": "gateway.networking.x-k8s.io", "kind": "XBackend", "name": name});
            if let Some(ns) = namespace {
                backend_ref["namespace"] = json!(ns);
            }
            json!({"type": "ExternalAuth", "externalAuth": {"protocol": "GRPC", "backendRef": backend_ref}})
        };
        let listeners = json!([
            {"name": "a", "filters": {"requests": [auth("authz", None), auth("elsewhere", Some("other"))]}},
            {"name": "b", "filters": {"requests": [auth("authz", Some("app")), {"type": "RequestHeaderModifier"}]}},
            {"name": "c", "filters": {"requests": "garbage"}},
            {"name": "d", "filters": null}
        ]);
        let gateway = json!({"metadata": {"name": "gw", "namespace": "app"}, "spec": {"gatewayClassName": "c", "listeners": listeners}});
        let Ok((_, Object::Gateway(gw))) = decode(Kind::Gateway, &gateway) else { panic!("a Gateway") };
        assert_eq!(
            gw,
            Gateway { class_name: "c".into(), external_auth: refs(&[("app", "authz")]), ..Gateway::default() }
        );

        let set = |parent: Value| {
            let value = json!({"metadata": {"name": "ls", "namespace": "app"}, "spec": {"parentRef": parent, "listeners": listeners}});
            match decode(Kind::ListenerSet, &value) {
                Ok((_, Object::ListenerSet(route))) => route,
                other => panic!("a ListenerSet: {other:?}"),
            }
        };
        let local = set(json!({"name": "gw"}));
        assert_eq!(
            local,
            Route { gateways: refs(&[("app", "gw")]), backends: refs(&[("app", "authz")]), services: Box::default() }
        );
        let across =
            set(json!({"name": "gw", "namespace": "infra", "kind": "Gateway", "group": "gateway.networking.k8s.io"}));
        assert_eq!(across.gateways, refs(&[("infra", "gw")]));
        assert!(set(json!({"name": "gw", "kind": "Other"})).gateways.is_empty());
        assert!(set(json!("garbage")).gateways.is_empty());
    }

    #[test]
    fn never_panics_on_odd_shapes() {
        let odd = [
            json!(null),
            json!([]),
            json!("x"),
            json!({}),
            json!({"metadata": null}),
            json!({"metadata": {"name": 5}}),
            json!({"metadata": {"name": "n"}, "spec": []}),
            json!({"metadata": {"name": "n"}, "spec": {"parentRefs": {}, "rules": [{"backendRefs": [{"filters": "x"}]}]}}),
            json!({"metadata": {"name": "n"}, "spec": {"parentRef": [], "listeners": [{"filters": {"requests": [null, 1]}}]}}),
            json!({"metadata": {"name": "n", "generation": "7"}, "spec": {"from": 1, "to": [null]}}),
        ];
        for kind in [
            Kind::Route(RouteKind::Http),
            Kind::Gateway,
            Kind::ListenerSet,
            Kind::GatewayClass,
            Kind::ReferenceGrant,
            Kind::XBackend,
        ] {
            for value in &odd {
                let _ = decode(kind, value);
            }
        }
        assert!(decode(Kind::Gateway, &json!({"metadata": {}})).is_err());
        assert!(decode(Kind::Gateway, &json!([])).is_err());
    }

    #[test]
    fn namespace_defaults_and_cluster_scope() {
        let (key, _) = decode(Kind::Gateway, &json!({"metadata": {"name": "gw"}})).unwrap();
        assert_eq!(key, ObjectRef::new("default", "gw"));
        let (key, object) = decode(
            Kind::GatewayClass,
            &json!({"metadata": {"name": "cls", "namespace": "ignored"}, "spec": {"controllerName": "example.com/c"}}),
        )
        .unwrap();
        assert_eq!(key, ObjectRef::new("", "cls"));
        assert_eq!(object, Object::GatewayClass(GatewayClass { controller_name: "example.com/c".into() }));
    }

    #[test]
    fn gateway_and_grant() {
        let (_, gw) = decode(
            Kind::Gateway,
            &json!({"metadata": {"name": "gw", "namespace": "infra"}, "spec": {"gatewayClassName": "c"}}),
        )
        .unwrap();
        assert_eq!(gw, Object::Gateway(Gateway { class_name: "c".into(), ..Gateway::default() }));
        let (key, grant) = decode(
            Kind::ReferenceGrant,
            &json!({"metadata": {"name": "g", "namespace": "certs"}, "spec": {
                "from": [{"group": "gateway.networking.x-k8s.io", "kind": "XBackend", "namespace": "app"}],
                "to": [{"group": "", "kind": "Secret"}, {"group": "", "kind": "Secret", "name": "client"}]
            }}),
        )
        .unwrap();
        assert_eq!(key, ObjectRef::new("certs", "g"));
        assert_eq!(
            grant,
            Object::ReferenceGrant(ReferenceGrant {
                from: vec![GrantFrom { group: api::GROUP.into(), kind: "XBackend".into(), namespace: "app".into() }],
                to: vec![
                    GrantTo { group: "".into(), kind: "Secret".into(), name: None },
                    GrantTo { group: "".into(), kind: "Secret".into(), name: Some("client".into()) },
                ],
            })
        );
    }

    /// A watch's bytes and a file's JSON give the same model, however the
    /// spec is broken; metadata the index does not read is skipped.
    #[test]
    fn watched_bytes_decode_like_json() {
        let meta = |ns: &str| {
            json!({"name": "o", "namespace": ns, "uid": "u-1", "resourceVersion": "7", "generation": 2,
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"big\": true}"},
                "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]})
        };
        let status = json!({"ancestors": [{"controllerName": "example.com/other", "conditions": []}]});
        let backend_spec = json!({"type": "ExternalHostname", "port": {"number": 443}, "externalHostname": {"hostname": "api.example.com"}});
        let cases = [
            (Kind::XBackend, json!({"metadata": meta("app"), "spec": backend_spec, "status": status})),
            (
                Kind::XBackend,
                json!({"metadata": meta("app"), "spec": {"type": "ExternalHostname", "port": {"port": "443"}}}),
            ),
            (
                Kind::XBackend,
                json!({"metadata": meta("app"), "spec": {"type": "ExternalHostname", "port": {"port": 1}, "tls": {"mode": "Sometimes"}}}),
            ),
            (Kind::XBackend, json!({"metadata": meta("app")})),
            (Kind::XBackend, json!({"metadata": meta("app"), "spec": null, "status": null})),
            (
                Kind::Route(RouteKind::Http),
                json!({"metadata": meta("app"), "spec": {"parentRefs": [{"name": "gw"}],
                "rules": [{"backendRefs": [{"group": "gateway.networking.x-k8s.io", "kind": "XBackend", "name": "b"}]}]}}),
            ),
            (Kind::Route(RouteKind::Grpc), json!({"metadata": meta("app"), "spec": {"parentRefs": "garbage"}})),
            (Kind::Gateway, json!({"metadata": meta(""), "spec": {"gatewayClassName": "c"}})),
            (Kind::GatewayClass, json!({"metadata": meta("x"), "spec": {"controllerName": "example.com/c"}})),
            (
                Kind::ReferenceGrant,
                json!({"metadata": meta("certs"), "spec": {"from": [{"group": "g", "kind": "k", "namespace": "n"}], "to": 3}}),
            ),
        ];
        for (kind, object) in cases {
            let watched: Watched = serde_json::from_str(&object.to_string()).unwrap();
            assert!(watched.metadata.managed_fields.is_none() && watched.metadata.annotations.is_none());
            assert_eq!(decode_watched(kind, &watched), decode(kind, &object), "{kind:?} {object}");
        }
        let nameless: Watched = serde_json::from_str(r#"{"metadata": {}, "spec": {}}"#).unwrap();
        assert!(decode_watched(Kind::Gateway, &nameless).is_err());
    }

    /// Pods and Namespaces watched by metadata give the model `decode` gives
    /// for the whole object; annotations and managedFields are not built.
    #[test]
    fn metadata_only_objects_decode_like_json() {
        let pod = |deleting: bool| {
            let mut meta = json!({"name": "p", "namespace": "app", "labels": {"app": "web", "tier": "1"},
                "annotations": {"a": "b"}, "managedFields": [{"manager": "kubelet"}]});
            if deleting {
                meta["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
            }
            json!({"metadata": meta})
        };
        for (kind, object) in
            [(Kind::Pod, pod(false)), (Kind::Pod, pod(true)), (Kind::Namespace, json!({"metadata": {"name": "app"}}))]
        {
            let watched: WatchedMeta<k8s_openapi::api::core::v1::Pod> =
                serde_json::from_str(&object.to_string()).unwrap();
            assert!(watched.metadata.managed_fields.is_none() && watched.metadata.annotations.is_none());
            assert_eq!(decode_metadata(kind, &watched.metadata), decode(kind, &object), "{object}");
        }
        assert!(decode_metadata(Kind::Gateway, &ObjectMeta::default()).is_err());
    }

    /// The containers kube-runtime's watcher decodes into carry `Watched` as
    /// the apiserver sends them: list pages and watch lines.
    #[test]
    fn watched_through_list_pages_and_watch_lines() {
        let page = r#"{"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "9", "continue": "c"},
            "items": [{"metadata": {"name": "a", "namespace": "n", "resourceVersion": "8"}, "spec": {"x": [1, 2]}, "status": {"y": {}}}]}"#;
        let list: kube::core::ObjectList<Watched> = serde_json::from_str(page).unwrap();
        assert_eq!(list.items[0].spec.as_deref().map(RawValue::get), Some(r#"{"x": [1, 2]}"#));
        assert_eq!(list.items[0].status.as_deref().map(RawValue::get), Some(r#"{"y": {}}"#));
        let line = r#"{"type":"MODIFIED","object":{"metadata":{"name":"a","resourceVersion":"10"},"spec":{"gatewayClassName":"c"}}}"#;
        let event: kube::core::WatchEvent<Watched> = serde_json::from_str(line).unwrap();
        let kube::core::WatchEvent::Modified(watched) = event else { panic!("not a modification") };
        assert_eq!(watched.metadata.resource_version.as_deref(), Some("10"));
        assert_eq!(
            decode_watched(Kind::Gateway, &watched).unwrap().1,
            Object::Gateway(Gateway { class_name: "c".into(), ..Gateway::default() })
        );
    }

    #[test]
    fn xbackend_spec_and_errors() {
        let good = json!({
            "metadata": {"name": "b", "namespace": "app", "generation": 3},
            "spec": {"type": "ExternalHostname", "port": {"port": 443}, "externalHostname": {"hostname": "api.example.com"}, "unknownField": true}
        });
        let (key, object) = decode(Kind::XBackend, &good).unwrap();
        assert_eq!(key, ObjectRef::new("app", "b"));
        let Object::XBackend(backend) = object else { panic!("not a backend") };
        assert_eq!(backend.generation, 3);
        let spec = backend.spec.unwrap();
        assert_eq!(spec.port.value(), Some(443));

        let bad = json!({
            "metadata": {"name": "b", "namespace": "app"},
            "spec": {"type": "ExternalHostname", "port": {"port": 443}, "tls": {"mode": "Sometimes"}}
        });
        let Ok((_, Object::XBackend(backend))) = decode(Kind::XBackend, &bad) else { panic!("not decoded") };
        assert_eq!(backend.generation, 0);
        let message = backend.spec.unwrap_err();
        assert!(
            message.starts_with("spec.tls.mode does not match the XBackend schema (unknown variant `Sometimes`"),
            "{message}"
        );
        assert!(message.ends_with("`kubectl explain xbackend.spec.tls.mode` describes."), "{message}");

        let wrong_type =
            json!({"metadata": {"name": "b"}, "spec": {"type": "ExternalHostname", "port": {"port": "443"}}});
        let Ok((_, Object::XBackend(backend))) = decode(Kind::XBackend, &wrong_type) else { panic!("not decoded") };
        assert!(backend.spec.unwrap_err().starts_with("spec.port.port does not match"));

        let in_list = json!({"metadata": {"name": "b"}, "spec": {"type": "ExternalHostname", "port": {"port": 1},
            "tls": {"mode": "ServerOnly", "validation": {"hostname": "a.b", "caCertificateRefs": [{"group": "", "kind": 7, "name": "x"}]}}}});
        let Ok((_, Object::XBackend(backend))) = decode(Kind::XBackend, &in_list) else { panic!("not decoded") };
        let message = backend.spec.unwrap_err();
        assert!(message.starts_with("spec.tls.validation.caCertificateRefs[0].kind does not match"), "{message}");
        assert!(message.contains("`kubectl explain xbackend.spec.tls.validation.caCertificateRefs.kind`"), "{message}");

        let missing = json!({"metadata": {"name": "b"}, "spec": {"type": "ExternalHostname"}});
        let Ok((_, Object::XBackend(backend))) = decode(Kind::XBackend, &missing) else { panic!("not decoded") };
        assert!(backend.spec.unwrap_err().contains("port"));

        let no_spec = json!({"metadata": {"name": "b"}});
        let Ok((_, Object::XBackend(backend))) = decode(Kind::XBackend, &no_spec) else { panic!("not decoded") };
        assert!(backend.spec.unwrap_err().starts_with("spec is missing: "));
    }
}
