//! What the upstream Gateway API CRDs' validation rules refuse about the
//! references routes, Gateways and ListenerSets make (`analyze
//! --gateway-api-version`), so CI sees what `kubectl apply` would: in every
//! release, a Service reference without a port; in v1.7.0's experimental
//! channel (where XBackend is), an XBackend reference with one. In v1.6.3,
//! listener filters do not exist: the apiserver drops them, and an
//! ExternalAuth XBackend reference there with them.

use serde_json::Value;

use crate::model::ObjectRef;
use crate::object::XBACKEND_GROUP;

/// The items of an array field (none when absent or not an array).
fn items<'a>(value: &'a Value, field: &str) -> Vec<(usize, &'a Value)> {
    value.get(field).and_then(Value::as_array).map(|a| a.iter().enumerate().collect()).unwrap_or_default()
}

/// The RequestMirror and ExternalAuth backendRefs of `owner`'s filters.
fn filter_sites<'a>(out: &mut Vec<(String, &'a Value)>, base: &str, owner: &'a Value) {
    for (k, filter) in items(owner, "filters") {
        for kind in ["requestMirror", "externalAuth"] {
            if let Some(reference) = filter.get(kind).and_then(|f| f.get("backendRef")) {
                out.push((format!("{base}.filters[{k}].{kind}.backendRef"), reference));
            }
        }
    }
}

/// The reference sites of one object: (field path, the backendRef).
fn sites(value: &Value) -> Vec<(String, &Value)> {
    let mut out = Vec::new();
    let spec = &value["spec"];
    for (i, rule) in items(spec, "rules") {
        let base = format!("spec.rules[{i}]");
        filter_sites(&mut out, &base, rule);
        for (j, reference) in items(rule, "backendRefs") {
            let at = format!("{base}.backendRefs[{j}]");
            out.push((at.clone(), reference));
            filter_sites(&mut out, &at, reference);
        }
    }
    for (i, listener) in items(spec, "listeners") {
        for (j, request) in listener.get("filters").map(|f| items(f, "requests")).unwrap_or_default() {
            if let Some(reference) = request.get("externalAuth").and_then(|f| f.get("backendRef")) {
                out.push((format!("spec.listeners[{i}].filters.requests[{j}].externalAuth.backendRef"), reference));
            }
        }
    }
    out
}

/// Each thing the CRDs of Gateway API `version` would refuse (or drop) in
/// `objects` (kind, key, the object as read), as a one-line finding.
pub fn refused(objects: &[(String, ObjectRef, Value)], version: &str) -> Vec<String> {
    let mut findings = Vec::new();
    for (kind, key, value) in objects {
        for (path, reference) in sites(value) {
            let text = |field: &str| reference.get(field).and_then(Value::as_str);
            let (group, target) = (text("group").unwrap_or(""), text("kind").unwrap_or("Service"));
            let has_port = reference.get("port").is_some_and(|p| !p.is_null());
            let listener = path.starts_with("spec.listeners");
            let refuses = if listener && version == "v1.6.3" {
                Some(
                    "Gateway API v1.6.3's CRDs have no listener filters: the apiserver drops them, and this reference with them",
                )
            } else if group.is_empty() && target == "Service" && !has_port {
                Some("Must have port for Service reference (every Gateway API release refuses it: add port)")
            } else if version == "v1.7.0" && group == XBACKEND_GROUP && target == "XBackend" && has_port {
                Some(
                    "Must not have port for Backend reference (Gateway API v1.7.0 refuses it: drop port; the XBackend's spec.port is where it connects)",
                )
            } else {
                None
            };
            if let Some(why) = refuses {
                findings.push(format!("{kind} {key}: {path}: {why}"));
            }
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route(refs: Value) -> Vec<(String, ObjectRef, Value)> {
        let value = json!({"spec": {"rules": [{"backendRefs": refs, "filters": [{"type": "RequestMirror", "requestMirror": {"backendRef": {"group": XBACKEND_GROUP, "kind": "XBackend", "name": "m", "port": 80}}}]}]}});
        vec![("HTTPRoute".to_string(), ObjectRef::new("app", "r"), value)]
    }

    #[test]
    fn each_release_refuses_its_own() {
        let objects = route(json!([
            {"group": XBACKEND_GROUP, "kind": "XBackend", "name": "a", "port": 443},
            {"group": XBACKEND_GROUP, "kind": "XBackend", "name": "b"},
            {"name": "svc"},
            {"name": "svc", "port": 80},
            {"group": "core", "kind": "Service", "name": "odd"},
        ]));
        let v17 = refused(&objects, "v1.7.0");
        assert_eq!(v17.len(), 3, "{v17:#?}");
        assert!(
            v17[0]
                .starts_with("HTTPRoute app/r: spec.rules[0].filters[0].requestMirror.backendRef: Must not have port"),
            "{}",
            v17[0]
        );
        assert!(v17[1].contains("spec.rules[0].backendRefs[0]: Must not have port"));
        assert!(v17[2].contains("spec.rules[0].backendRefs[2]: Must have port for Service reference"));
        let v16 = refused(&objects, "v1.6.3");
        assert_eq!(v16.len(), 1, "only the Service rule: {v16:#?}");
        let gateway = json!({"spec": {"listeners": [{"name": "l", "filters": {"requests": [{"type": "ExternalAuth", "externalAuth": {"backendRef": {"group": XBACKEND_GROUP, "kind": "XBackend", "name": "auth"}}}]}}]}});
        let objects = vec![("Gateway".to_string(), ObjectRef::new("infra", "gw"), gateway)];
        assert!(refused(&objects, "v1.7.0").is_empty());
        assert!(refused(&objects, "v1.6.3")[0].contains("no listener filters"));
    }
}
