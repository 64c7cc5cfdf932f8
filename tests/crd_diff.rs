//! Differential test: the same corpus of XBackend specs against our CRD and
//! upstream Gateway API v1.7.0's, on one real kube-apiserver. Verdicts must be
//! equal except for the deliberate differences of docs/design.md §2, listed here.

mod support;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, DynamicObject, GroupVersionKind, PostParams};
use kube::discovery::ApiResource;
use serde_json::{Value, json};
use std::time::Duration;
use support::{Channel, ControlPlane};
use xbackend_controller::api::{self, XBackendSpec};
use xbackend_controller::policy::Policy;
use xbackend_controller::validate::validate;

/// Upstream's CRD is installed under this group so both can be served at once;
/// the schema and CEL rules are untouched.
const UPSTREAM_GROUP: &str = "upstream.x-k8s.io";
const XBACKEND_CRD: &str = "xbackends.gateway.networking.x-k8s.io";

/// What the two CRDs should say about one spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    BothAccept,
    BothReject,
    /// A deliberate tightening (docs/design.md §2): only ours rejects.
    OnlyOursRejects,
    /// A deliberate loosening (docs/design.md §2): only upstream rejects.
    OnlyUpstreamRejects,
}

fn external() -> Value {
    json!({
        "type": "ExternalHostname",
        "port": {"number": 443},
        "externalHostname": {"hostname": "api.example.com"},
        "tls": {"mode": "ServerOnly", "validation": {"hostname": "api.example.com", "wellKnownCACertificates": "System"}}
    })
}

fn selector() -> Value {
    json!({"type": "EndpointSelector", "port": {"number": 8080}, "endpointSelector": {"matchLabels": {"app": "web"}}})
}

/// `base` with `value` at JSON pointer `at` (parents must exist); null removes the field.
fn set(mut base: Value, at: &str, value: Value) -> Value {
    let (parent, key) = at.rsplit_once('/').expect("pointer");
    let target = if parent.is_empty() { &mut base } else { base.pointer_mut(parent).expect("parent exists") };
    let object = target.as_object_mut().expect("object");
    if value.is_null() {
        object.remove(key);
    } else {
        object.insert(key.to_string(), value);
    }
    base
}

fn labels(n: usize) -> Value {
    Value::Object((0..n).map(|i| (format!("k{i}"), json!("v"))).collect())
}

fn corpus() -> Vec<(&'static str, Value, Expect)> {
    use Expect::*;
    let tls_on = json!({"mode": "ServerOnly", "validation": {"hostname": "api.example.com", "wellKnownCACertificates": "System"}});
    let proto = |p: &str, tls: Value| set(set(external(), "/protocol", json!(p)), "/tls", tls);
    let host = |h: &str| set(external(), "/externalHostname/hostname", json!(h));
    let persist = |p: Value| set(selector(), "/sessionPersistence", p);
    let match_labels = |l: Value| set(selector(), "/endpointSelector/matchLabels", l);
    let validation = |v: Value| set(external(), "/tls/validation", v);
    vec![
        // The v1.7 docs shapes.
        ("v17-external", external(), BothAccept),
        ("v17-selector", selector(), BothAccept),
        ("port-1", set(external(), "/port", json!({"number": 1})), BothAccept),
        ("port-65535", set(external(), "/port", json!({"number": 65535})), BothAccept),
        ("port-0", set(external(), "/port", json!({"number": 0})), BothReject),
        ("port-65536", set(external(), "/port", json!({"number": 65536})), BothReject),
        ("port-empty", set(external(), "/port", json!({})), BothReject),
        ("port-both-equal", set(external(), "/port", json!({"number": 443, "port": 443})), BothAccept),
        // Type and its fields.
        ("type-unknown", set(external(), "/type", json!("Service")), BothReject),
        ("selector-missing", set(selector(), "/endpointSelector", Value::Null), BothReject),
        (
            "selector-with-external",
            set(selector(), "/externalHostname", json!({"hostname": "a.example.com"})),
            BothReject,
        ),
        (
            "external-with-selector",
            set(external(), "/endpointSelector", json!({"matchLabels": {"a": "b"}})),
            BothReject,
        ),
        ("external-missing", set(external(), "/externalHostname", Value::Null), BothReject),
        ("selector-no-match-labels", set(selector(), "/endpointSelector", json!({})), BothReject),
        // matchLabels.
        ("labels-empty", match_labels(json!({})), BothReject),
        ("labels-64", match_labels(labels(64)), BothAccept),
        ("labels-65", match_labels(labels(65)), BothReject),
        ("label-key-prefixed", match_labels(json!({"app.example.com/tier": "web"})), BothAccept),
        ("label-key-dash", match_labels(json!({"-app": "web"})), BothReject),
        ("label-key-upper-prefix", match_labels(json!({"Example.com/app": "web"})), BothReject),
        ("label-key-long-name", match_labels(json!({"a".repeat(64): "web"})), BothReject),
        ("label-value-empty", match_labels(json!({"app": ""})), BothAccept),
        ("label-value-dash", match_labels(json!({"app": "-web"})), BothReject),
        ("label-value-64", match_labels(json!({"app": "a".repeat(64)})), BothReject),
        ("label-value-dots", match_labels(json!({"app": "web.v1_2-x"})), BothAccept),
        // sessionPersistence.
        ("persist-cookie", persist(json!({"cookie": {"name": "session"}})), BothAccept),
        ("persist-header", persist(json!({"type": "Header", "header": {"name": "x-session"}})), BothAccept),
        (
            "persist-permanent",
            persist(json!({"absoluteTimeout": "1h30m", "cookie": {"lifetimeType": "Permanent"}})),
            BothAccept,
        ),
        ("persist-permanent-no-timeout", persist(json!({"cookie": {"lifetimeType": "Permanent"}})), BothReject),
        ("persist-default-no-cookie", persist(json!({})), BothReject),
        ("persist-header-missing", persist(json!({"type": "Header"})), BothReject),
        ("persist-cookie-and-header", persist(json!({"cookie": {}, "header": {"name": "x"}})), BothReject),
        ("persist-bad-timeout", persist(json!({"absoluteTimeout": "1d", "cookie": {}})), BothReject),
        ("persist-bad-cookie-name", persist(json!({"cookie": {"name": "a b"}})), BothReject),
        ("persist-on-external", set(external(), "/sessionPersistence", json!({"cookie": {"name": "s"}})), BothReject),
        // Protocols and TLS.
        ("grpc", proto("GRPC", tls_on.clone()), BothAccept),
        ("wss", proto("WSS", tls_on.clone()), BothAccept),
        ("wss-no-tls", set(proto("WSS", json!(null)), "/tls", Value::Null), BothReject),
        ("wss-tls-none", proto("WSS", json!({"mode": "None"})), BothReject),
        ("h2c-no-tls", set(proto("H2C", json!(null)), "/tls", Value::Null), BothAccept),
        ("h2c-tls-none", proto("H2C", json!({"mode": "None"})), BothAccept),
        ("h2c-tls-on", proto("H2C", tls_on.clone()), BothReject),
        ("http2-tls-on", proto("HTTP2", tls_on.clone()), BothAccept),
        ("http2-no-tls", set(proto("HTTP2", json!(null)), "/tls", Value::Null), BothReject),
        ("http2-tls-none", proto("HTTP2", json!({"mode": "None"})), BothReject),
        ("http11-no-tls", set(proto("HTTP11", json!(null)), "/tls", Value::Null), BothAccept),
        ("protocol-unknown", proto("HTTP3", tls_on.clone()), BothReject),
        ("selector-h2c", set(selector(), "/protocol", json!("H2C")), BothAccept),
        ("tls-none", set(external(), "/tls", json!({"mode": "None"})), BothAccept),
        ("tls-none-with-validation", set(external(), "/tls/mode", json!("None")), BothReject),
        ("tls-server-only-no-validation", set(external(), "/tls", json!({"mode": "ServerOnly"})), BothReject),
        ("tls-mode-unknown", set(external(), "/tls/mode", json!("Sometimes")), BothReject),
        (
            "tls-mtls",
            set(
                set(external(), "/tls/mode", json!("ClientAndServer")),
                "/tls/clientCertificateRef",
                json!({"name": "c"}),
            ),
            BothAccept,
        ),
        ("tls-mtls-no-ref", set(external(), "/tls/mode", json!("ClientAndServer")), BothReject),
        ("tls-server-only-with-ref", set(external(), "/tls/clientCertificateRef", json!({"name": "c"})), BothReject),
        (
            "ca-refs-one",
            validation(
                json!({"hostname": "a.example.com", "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "ca"}]}),
            ),
            BothAccept,
        ),
        ("ca-refs-empty", validation(json!({"hostname": "a.example.com", "caCertificateRefs": []})), BothReject),
        (
            "ca-refs-and-well-known",
            validation(json!({"hostname": "a.example.com", "wellKnownCACertificates": "System",
                "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "ca"}]})),
            BothReject,
        ),
        (
            "san-hostname-without-value",
            validation(json!({"hostname": "a.example.com", "wellKnownCACertificates": "System",
                "subjectAltNames": [{"type": "Hostname"}]})),
            BothReject,
        ),
        // Hostnames.
        ("host-svc-cluster-local", host("db.prod.svc.cluster.local"), BothReject),
        ("host-uppercase", host("API.example.com"), BothReject),
        ("host-wildcard", host("*.example.com"), BothReject),
        ("host-ip", host("10.0.0.1"), OnlyOursRejects),
        ("host-cluster-local", host("cluster.local"), OnlyOursRejects),
        ("host-numeric-last-label", host("foo.123"), OnlyOursRejects),
        ("host-label-64", host(&format!("{}.com", "a".repeat(64))), OnlyOursRejects),
        // Port shapes: v1.7 prunes `port` and `name`, leaving `number` alone.
        ("port-v16-shape", set(external(), "/port", json!({"port": 443})), OnlyUpstreamRejects),
        ("port-both-differ", set(external(), "/port", json!({"number": 443, "port": 8443})), OnlyOursRejects),
        ("port-name-bad", set(external(), "/port", json!({"number": 443, "name": "Bad_Name"})), OnlyOursRejects),
        ("validation-only-hostname", validation(json!({"hostname": "a.example.com"})), OnlyUpstreamRejects),
    ]
}

/// The XBackend CRD the control plane installed from Gateway API v1.7.0's
/// experimental channel, moved to UPSTREAM_GROUP (schema and rules untouched).
async fn upstream_crd(crds: &Api<CustomResourceDefinition>) -> CustomResourceDefinition {
    let installed = crds.get(XBACKEND_CRD).await.expect("the v1.7.0 XBackend CRD is installed");
    let bundle =
        installed.metadata.annotations.as_ref().and_then(|a| a.get("gateway.networking.k8s.io/bundle-version"));
    assert_eq!(bundle.map(String::as_str), Some("v1.7.0"), "the control plane installs Gateway API v1.7.0");
    let mut crd = serde_json::to_value(&installed).expect("CRD");
    crd["metadata"] = json!({"name": format!("xbackends.{UPSTREAM_GROUP}")});
    crd["spec"]["group"] = json!(UPSTREAM_GROUP);
    crd.as_object_mut().expect("object").remove("status");
    serde_json::from_value(crd).expect("upstream CRD")
}

/// Replaces upstream's XBackend CRD with ours, once upstream's copy is served elsewhere.
async fn install_ours(client: &Client, crds: &Api<CustomResourceDefinition>) {
    let ours = serde_json::to_value(api::crd()).expect("our CRD");
    if crds.get(XBACKEND_CRD).await.is_ok_and(|crd| serde_json::to_value(&crd.spec).ok() != Some(ours["spec"].clone()))
    {
        crds.delete(XBACKEND_CRD, &Default::default()).await.expect("delete upstream's XBackend CRD");
        support::eventually(Duration::from_secs(60), || async {
            crds.get_opt(XBACKEND_CRD).await.ok()?.is_none().then_some(())
        })
        .await
        .expect("upstream's XBackend CRD deleted");
    }
    support::install_crd(client).await;
}

async fn accepts(client: &Client, ns: &str, group: &str, name: &str, spec: &Value) -> bool {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, api::VERSION, api::KIND));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{group}/{}", api::VERSION),
        "kind": api::KIND,
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("object");
    match api.create(&PostParams { dry_run: true, ..Default::default() }, &obj).await {
        Ok(_) => true,
        Err(kube::Error::Api(status)) if status.code == 422 => false,
        Err(other) => panic!("dry-run create {name} in {group}: {other:?}"),
    }
}

fn controller_accepts(spec: &Value) -> bool {
    serde_json::from_value::<XBackendSpec>(spec.clone()).is_ok_and(|s| validate(&s, &Policy::default()).is_ok())
}

#[tokio::test]
async fn our_crd_is_upstream_v1_7_plus_the_listed_differences() {
    let cp = ControlPlane::shared(Channel::ExperimentalV17);
    let (client, ns) = cp.namespace("crd-diff").await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let upstream = upstream_crd(&crds).await;
    let name = upstream.metadata.name.clone().expect("name");
    crds.create(&PostParams::default(), &upstream).await.expect("create upstream CRD");
    support::wait_for_crd(&client, &name).await;
    install_ours(&client, &crds).await;

    let corpus = corpus();
    assert!(corpus.len() >= 40, "the corpus must cover every v1.7 rule on both sides");
    let mut wrong = Vec::new();
    for (case, spec, expect) in &corpus {
        let ours = accepts(&client, &ns, api::GROUP, case, spec).await;
        let theirs = accepts(&client, &ns, UPSTREAM_GROUP, case, spec).await;
        let seen = match (ours, theirs) {
            (true, true) => Expect::BothAccept,
            (false, false) => Expect::BothReject,
            (false, true) => Expect::OnlyOursRejects,
            (true, false) => Expect::OnlyUpstreamRejects,
        };
        if seen != *expect {
            wrong.push(format!("{case}: expected {expect:?}, saw {seen:?}"));
        }
        // Defense in depth: the controller judges every spec as our CRD does.
        if controller_accepts(spec) != ours {
            wrong.push(format!("{case}: our CRD accepts={ours} but validate() accepts={}", !ours));
        }
    }
    assert!(wrong.is_empty(), "{} of {} cases differ:\n{}", wrong.len(), corpus.len(), wrong.join("\n"));
}
