//! The corpus of the route-CEL differential tests: every site a route,
//! Gateway or ListenerSet names a backend, with references that each rule
//! of the upstream CRDs does or does not fire on, applied (dry run, strict
//! like kubectl) to the apiserver and given to `analyze`'s judge.

use kube::Client;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use xbackend_controller::model::ObjectRef;

const XB: &str = "gateway.networking.x-k8s.io";

/// The references: a name, and the backendRef.
fn references() -> Vec<(&'static str, Value)> {
    vec![
        ("xbackend-with-port", json!({"group": XB, "kind": "XBackend", "name": "foo", "port": 443})),
        ("xbackend", json!({"group": XB, "kind": "XBackend", "name": "foo"})),
        ("service-without-port", json!({"name": "svc"})),
        ("core-service-without-port", json!({"group": "", "kind": "Service", "name": "svc"})),
        ("service", json!({"name": "svc", "port": 80})),
        // Neither rule matches: the group is compared exactly, so is the kind.
        ("xbackend-without-group", json!({"kind": "XBackend", "name": "foo", "port": 443})),
        ("xbackend-lowercase", json!({"group": XB, "kind": "xbackend", "name": "foo", "port": 443})),
    ]
}

fn mirror(reference: &Value) -> Value {
    json!({"type": "RequestMirror", "requestMirror": {"backendRef": reference}})
}

fn external_auth(reference: &Value) -> Value {
    json!({"type": "ExternalAuth", "externalAuth": {"protocol": "HTTP", "http": {}, "backendRef": reference}})
}

/// (kind, api version, site name, spec) for every site of `reference`.
fn sites(reference: &Value) -> Vec<(&'static str, &'static str, &'static str, Value)> {
    let listeners =
        json!([{"name": "l", "port": 80, "protocol": "HTTP", "filters": {"requests": [external_auth(reference)]}}]);
    let mut out = vec![
        ("HTTPRoute", "v1", "backendRefs", json!({"rules": [{"backendRefs": [reference]}]})),
        ("HTTPRoute", "v1", "rule mirror", json!({"rules": [{"filters": [mirror(reference)]}]})),
        (
            "HTTPRoute",
            "v1",
            "backendRef mirror",
            json!({"rules": [{"backendRefs": [{"group": XB, "kind": "XBackend", "name": "ok", "filters": [mirror(reference)]}]}]}),
        ),
        ("HTTPRoute", "v1", "rule externalAuth", json!({"rules": [{"filters": [external_auth(reference)]}]})),
        (
            "HTTPRoute",
            "v1",
            "backendRef externalAuth",
            json!({"rules": [{"backendRefs": [{"group": XB, "kind": "XBackend", "name": "ok", "filters": [external_auth(reference)]}]}]}),
        ),
        ("GRPCRoute", "v1", "backendRefs", json!({"rules": [{"backendRefs": [reference]}]})),
        ("GRPCRoute", "v1", "rule mirror", json!({"rules": [{"filters": [mirror(reference)]}]})),
        (
            "GRPCRoute",
            "v1",
            "backendRef mirror",
            json!({"rules": [{"backendRefs": [{"group": XB, "kind": "XBackend", "name": "ok", "filters": [mirror(reference)]}]}]}),
        ),
        ("Gateway", "v1", "listener externalAuth", json!({"gatewayClassName": "c", "listeners": listeners})),
        ("ListenerSet", "v1", "listener externalAuth", json!({"parentRef": {"name": "gw"}, "listeners": listeners})),
    ];
    for kind in ["TCPRoute", "UDPRoute"] {
        out.push((kind, "v1alpha2", "backendRefs", json!({"rules": [{"backendRefs": [reference]}]})));
    }
    out.push((
        "TLSRoute",
        "v1alpha2",
        "backendRefs",
        json!({"hostnames": ["a.example.com"], "rules": [{"backendRefs": [reference]}]}),
    ));
    out
}

/// Applies every case to `client` (dry run, strict field validation, as
/// `kubectl apply` does) and compares with `routecel::refused(version)`:
/// the same verdict per case, and each finding's field path in the
/// apiserver's answer. Returns how many cases each side refused.
pub async fn differential(client: &Client, ns: &str, version: &str) -> usize {
    let params = PatchParams::apply("route-cel-test").dry_run().validation_strict();
    let mut refused = 0;
    let mut disagreements = Vec::new();
    for (label, reference) in references() {
        for (kind, api_version, site, spec) in sites(&reference) {
            let name = format!("{}-{}", kind.to_lowercase(), label);
            let object = json!({
                "apiVersion": format!("gateway.networking.k8s.io/{api_version}"),
                "kind": kind,
                "metadata": {"name": name, "namespace": ns},
                "spec": spec,
            });
            let api = super::dynamic(client, ns, "gateway.networking.k8s.io", api_version, kind);
            let answer = api.patch(&name, &params, &Patch::Apply(&object)).await;
            let server = match answer {
                Ok(_) => None,
                Err(kube::Error::Api(status)) if [400, 422].contains(&status.code) => Some(status.message),
                // Server-side apply says so of a field the schema lacks.
                Err(kube::Error::Api(status)) if status.message.contains("field not declared in schema") => {
                    Some(status.message)
                }
                Err(e) => panic!("{kind} {site} {label}: {e}"),
            };
            let ours = xbackend_controller::routecel::refused(
                &[(kind.to_string(), ObjectRef::new(ns, &name), object.clone())],
                version,
            );
            let case = format!("{version} {kind} {site} {label}");
            match (&server, ours.is_empty()) {
                (None, true) => {}
                (Some(message), false) => {
                    refused += 1;
                    // A CEL refusal names the field; a strict-decoding one the unknown field above it.
                    for finding in &ours {
                        let path = finding.split(": ").nth(1).unwrap_or_default();
                        let cel = message.contains(path);
                        let unknown = message.contains(".filters: field not declared in schema")
                            && finding.contains("no listener filters");
                        if !(cel || unknown) {
                            disagreements.push(format!("{case}: ours {finding:?}, apiserver {message:?}"));
                        }
                    }
                }
                _ => disagreements.push(format!("{case}: apiserver {server:?}, ours {ours:?}")),
            }
        }
    }
    assert!(disagreements.is_empty(), "{} disagreement(s):\n{}", disagreements.len(), disagreements.join("\n"));
    refused
}
