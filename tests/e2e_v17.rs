//! With upstream Gateway API v1.7.0's CRDs (XBackend with `port.number`,
//! EndpointSelector and `status.ancestors`; HTTPRoutes that refuse a port on an
//! XBackend reference) the controller judges v1.7 objects as the docs write them.

mod support;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use serde_json::json;
use support::{Channel, ControlPlane, Controller, TestGateway, apply_yaml, conditions_of, entries_of, xbackend_api};

/// An HTTPRoute from Gateway `gw` to XBackend `backend`, without a port (v1.7's CRD refuses one).
fn route(backend: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {backend}}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n  - backendRefs: [{{group: gateway.networking.x-k8s.io, kind: XBackend, name: {backend}}}]\n"
    )
}

/// Waits until our entry for `gw` has exactly these (type, status, reason) conditions.
async fn wait_for(api: &Api<DynamicObject>, name: &str, controller: &str, want: [(&str, &str, &str); 2]) {
    let want: Vec<(String, String, String)> =
        want.iter().map(|(t, s, r)| (t.to_string(), s.to_string(), r.to_string())).collect();
    support::wait_for_xbackend(api, name, &format!("conditions {want:?}"), |o| {
        let entries = entries_of(o, "ancestors", controller);
        entries.len() == 1 && entries[0]["ancestorRef"]["name"] == "gw" && conditions_of(&entries[0]) == want
    })
    .await;
}

const ACCEPTED: (&str, &str, &str) = ("Accepted", "True", "Accepted");
const RESOLVED: (&str, &str, &str) = ("ResolvedRefs", "True", "ResolvedRefs");
const NO_PODS: (&str, &str, &str) = ("ResolvedRefs", "False", "NoMatchingPods");

#[tokio::test]
async fn v1_7_docs_backend_is_accepted_on_the_upstream_v1_7_crd() {
    let cp = ControlPlane::shared(Channel::ExperimentalV17);
    let (client, ns) = cp.namespace("v17-docs").await;
    let gw = TestGateway::create(&client, &ns, &["gw"]).await;
    let backend = "apiVersion: gateway.networking.x-k8s.io/v1alpha1\nkind: XBackend\nmetadata: {name: docs}\nspec:\n  type: ExternalHostname\n  port:\n    number: 443\n  externalHostname:\n    hostname: api.example.com\n  protocol: HTTP2\n  tls:\n    mode: ServerOnly\n    validation:\n      hostname: api.example.com\n      wellKnownCACertificates: System\n";
    apply_yaml(&client, Some(&ns), &format!("{backend}{}", route("docs"))).await;

    let ctl = Controller::start(&cp.kubeconfig, &["--controller-name", &gw.controller_name]);
    ctl.wait_ready().await;
    let api = xbackend_api(&client, &ns);
    wait_for(&api, "docs", &gw.controller_name, [ACCEPTED, RESOLVED]).await;
    let stored = api.get("docs").await.unwrap();
    assert!(stored.data["status"].get("parents").is_none(), "v1.7 has no status.parents: {}", stored.data["status"]);
    assert_eq!(stored.data["spec"]["port"], json!({"number": 443}));
}

#[tokio::test]
async fn endpoint_selector_follows_live_pods() {
    let cp = ControlPlane::shared(Channel::ExperimentalV17);
    let (client, ns) = cp.namespace("v17-pods").await;
    let gw = TestGateway::create(&client, &ns, &["gw"]).await;
    let backend = "apiVersion: gateway.networking.x-k8s.io/v1alpha1\nkind: XBackend\nmetadata: {name: web}\nspec:\n  type: EndpointSelector\n  port: {number: 8080}\n  endpointSelector:\n    matchLabels: {app: web}\n";
    apply_yaml(&client, Some(&ns), &format!("{backend}{}", route("web"))).await;
    // A Pod with other labels never counts.
    apply_yaml(&client, Some(&ns), &pod_yaml("other", "db", false)).await;

    let ctl = Controller::start(&cp.kubeconfig, &["--controller-name", &gw.controller_name]);
    ctl.wait_ready().await;
    let api = xbackend_api(&client, &ns);
    wait_for(&api, "web", &gw.controller_name, [ACCEPTED, NO_PODS]).await;

    // A Pending Pod (no nodes here) is live: it resolves the selector.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    apply_yaml(&client, Some(&ns), &pod_yaml("web-0", "web", false)).await;
    wait_for(&api, "web", &gw.controller_name, [ACCEPTED, RESOLVED]).await;

    // A finished Pod does not count.
    let finished = json!({"status": {"phase": "Succeeded"}});
    pods.patch_status("web-0", &PatchParams::default(), &Patch::Merge(&finished)).await.expect("finish web-0");
    wait_for(&api, "web", &gw.controller_name, [ACCEPTED, NO_PODS]).await;

    // Nor does one being deleted (a finalizer keeps it around with a deletionTimestamp).
    apply_yaml(&client, Some(&ns), &pod_yaml("web-1", "web", true)).await;
    wait_for(&api, "web", &gw.controller_name, [ACCEPTED, RESOLVED]).await;
    pods.delete("web-1", &DeleteParams::default()).await.expect("delete web-1");
    wait_for(&api, "web", &gw.controller_name, [ACCEPTED, NO_PODS]).await;
    let no_finalizers = json!({"metadata": {"finalizers": null}});
    pods.patch("web-1", &PatchParams::default(), &Patch::Merge(&no_finalizers)).await.expect("release web-1");

    // Relabelling a Pod into the selector resolves it again.
    let relabel = json!({"metadata": {"labels": {"app": "web"}}});
    pods.patch("other", &PatchParams::default(), &Patch::Merge(&relabel)).await.expect("relabel other");
    wait_for(&api, "web", &gw.controller_name, [ACCEPTED, RESOLVED]).await;
}

fn pod_yaml(name: &str, app: &str, finalizer: bool) -> String {
    let finalizers = if finalizer { "\n  finalizers: [example.com/hold]" } else { "" };
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: {app}}}{finalizers}\nspec:\n  containers: [{{name: c, image: registry.k8s.io/pause:3.10}}]\n"
    )
}

/// An XBackend `name` to `name.example.com`:443; with TLS unless `clear`.
fn site_backend(name: &str, clear: bool) -> String {
    let tls = if clear {
        String::new()
    } else {
        format!(
            "  tls:\n    mode: ServerOnly\n    validation: {{hostname: {name}.example.com, wellKnownCACertificates: System}}\n"
        )
    };
    format!(
        "---\napiVersion: gateway.networking.x-k8s.io/v1alpha1\nkind: XBackend\nmetadata: {{name: {name}}}\nspec:\n  type: ExternalHostname\n  port: {{number: 443}}\n  externalHostname: {{hostname: {name}.example.com}}\n{tls}"
    )
}

/// Every place v1.7.0's CRDs let an XBackend be named (docs/design.md §3),
/// one XBackend each, behind Gateway `gw`.
const SITES: [&str; 13] = [
    "http-backend",
    "http-rule-mirror",
    "http-rule-auth",
    "http-ref-mirror",
    "http-ref-auth",
    "grpc-backend",
    "grpc-rule-mirror",
    "grpc-ref-mirror",
    "tcp-backend",
    "tls-backend",
    "udp-backend",
    "gateway-auth",
    "listenerset-auth",
];

fn x(name: &str) -> String {
    format!("{{group: gateway.networking.x-k8s.io, kind: XBackend, name: {name}}}")
}

fn mirror(name: &str) -> String {
    format!("{{type: RequestMirror, requestMirror: {{backendRef: {}}}}}", x(name))
}

fn auth(name: &str) -> String {
    format!("{{type: ExternalAuth, externalAuth: {{protocol: HTTP, http: {{}}, backendRef: {}}}}}", x(name))
}

/// The Gateway, with or without ExternalAuth on its listener.
fn sites_gateway(class: &str, with_auth: bool) -> String {
    let filters =
        if with_auth { format!(", filters: {{requests: [{}]}}", auth("gateway-auth")) } else { String::new() };
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw}}\nspec:\n  gatewayClassName: {class}\n  allowedListeners: {{namespaces: {{from: Same}}}}\n  listeners:\n  - {{name: http, protocol: HTTP, port: 80{filters}}}\n  - {{name: tcp, protocol: TCP, port: 9000}}\n  - {{name: tls, protocol: TLS, port: 443, hostname: tls.example.com, tls: {{mode: Passthrough}}}}\n  - {{name: udp, protocol: UDP, port: 5353}}\n"
    )
}

/// Every referencing object of docs/design.md §3 but the Gateway.
fn sites_referrers() -> String {
    let parent = "parentRefs: [{name: gw}]";
    let mut yaml = format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: http}}\nspec:\n  {parent}\n  rules:\n  - filters: [{}, {}]\n    backendRefs:\n    - group: gateway.networking.x-k8s.io\n      kind: XBackend\n      name: http-backend\n      filters: [{}, {}]\n",
        mirror("http-rule-mirror"),
        auth("http-rule-auth"),
        mirror("http-ref-mirror"),
        auth("http-ref-auth")
    );
    yaml += &format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: grpc}}\nspec:\n  {parent}\n  rules:\n  - filters: [{}]\n    backendRefs:\n    - group: gateway.networking.x-k8s.io\n      kind: XBackend\n      name: grpc-backend\n      filters: [{}]\n",
        mirror("grpc-rule-mirror"),
        mirror("grpc-ref-mirror")
    );
    yaml += &format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: TCPRoute\nmetadata: {{name: tcp}}\nspec:\n  {parent}\n  rules: [{{backendRefs: [{}]}}]\n",
        x("tcp-backend")
    );
    yaml += &format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: TLSRoute\nmetadata: {{name: tls}}\nspec:\n  {parent}\n  hostnames: [tls.example.com]\n  rules: [{{backendRefs: [{}]}}]\n",
        x("tls-backend")
    );
    // udp-tls: a UDPRoute cannot carry TLS (docs/api.md "Route kind and backend").
    yaml += &format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: UDPRoute\nmetadata: {{name: udp}}\nspec:\n  {parent}\n  rules: [{{backendRefs: [{}, {}]}}]\n",
        x("udp-backend"),
        x("udp-tls")
    );
    yaml += &format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: ListenerSet\nmetadata: {{name: ls}}\nspec:\n  parentRef: {{name: gw}}\n  listeners:\n  - {{name: extra, protocol: HTTP, port: 8080, filters: {{requests: [{}]}}}}\n",
        auth("listenerset-auth")
    );
    yaml
}

/// Issue 20: each of the thirteen sites makes `gw` the one ancestor of the
/// XBackend it names, on upstream v1.7.0's own CRDs, and the entry leaves
/// when the reference does.
#[tokio::test]
async fn every_v1_7_reference_site_makes_the_gateway_an_ancestor() {
    let cp = ControlPlane::shared(Channel::ExperimentalV17);
    let (client, ns) = cp.namespace("v17-sites").await;
    let gw = TestGateway::create(&client, &ns, &[]).await;
    let mut yaml: String = SITES.iter().map(|name| site_backend(name, name.starts_with("udp"))).collect();
    yaml += &site_backend("udp-tls", false);
    yaml += &sites_gateway(&gw.class, true);
    yaml += &sites_referrers();
    apply_yaml(&client, Some(&ns), &yaml).await;
    // analyze judges the same objects offline (with the GatewayClass the cluster has).
    let class = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: {}}}\nspec: {{controllerName: {}}}\n",
        gw.class, gw.controller_name
    );
    let offline = analyze_verdicts(&format!("{class}{yaml}"), &gw.controller_name);

    let ctl = Controller::start(&cp.kubeconfig, &["--controller-name", &gw.controller_name]);
    ctl.wait_ready().await;
    let api = xbackend_api(&client, &ns);
    for name in SITES {
        wait_for(&api, name, &gw.controller_name, [ACCEPTED, RESOLVED]).await;
    }
    let invalid = ("Accepted", "False", "Invalid");
    wait_for(&api, "udp-tls", &gw.controller_name, [invalid, RESOLVED]).await;
    let stored = api.get("udp-tls").await.unwrap();
    let message = entries_of(&stored, "ancestors", &gw.controller_name)[0]["conditions"][0]["message"].clone();
    assert!(message.as_str().unwrap().contains("UDPRoute"), "{message}");
    let live: Vec<serde_json::Value> =
        api.list(&Default::default()).await.unwrap().items.iter().map(|o| serde_json::to_value(o).unwrap()).collect();
    assert_eq!(verdicts_of(&live, &gw.controller_name), offline, "analyze and the controller agree on every site");

    // Take every reference away: the routes and the ListenerSet go, the Gateway drops its filter.
    for (kind, plural, name) in [
        ("HTTPRoute", "httproutes", "http"),
        ("GRPCRoute", "grpcroutes", "grpc"),
        ("TCPRoute", "tcproutes", "tcp"),
        ("TLSRoute", "tlsroutes", "tls"),
        ("UDPRoute", "udproutes", "udp"),
        ("ListenerSet", "listenersets", "ls"),
    ] {
        let gvk = kube::api::GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", kind);
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &ns, &kube::api::ApiResource::from_gvk_with_plural(&gvk, plural));
        api.delete(name, &DeleteParams::default()).await.unwrap_or_else(|e| panic!("delete {kind} {name}: {e}"));
    }
    apply_yaml(&client, Some(&ns), &sites_gateway(&gw.class, false)).await;
    for name in SITES.iter().chain(&["udp-tls"]) {
        support::wait_for_xbackend(&api, name, "no entry of ours", |o| {
            entries_of(o, "ancestors", &gw.controller_name).is_empty()
        })
        .await;
    }
}

/// XBackend name -> [(Gateway name, [(type, status, reason, message)])] of `controller`'s entries.
type Verdicts = std::collections::BTreeMap<String, Vec<(String, Vec<[String; 4]>)>>;

fn verdicts_of(objects: &[serde_json::Value], controller: &str) -> Verdicts {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    objects
        .iter()
        .map(|o| {
            let entries = o["status"]["ancestors"].as_array().into_iter().flatten();
            let ours = entries.filter(|e| e["controllerName"] == controller).map(|e| {
                let conditions = e["conditions"].as_array().into_iter().flatten();
                let conditions = conditions.map(|c| ["type", "status", "reason", "message"].map(|f| text(&c[f])));
                (text(&e["ancestorRef"]["name"]), conditions.collect())
            });
            (text(&o["metadata"]["name"]), ours.collect())
        })
        .collect()
}

/// Runs `analyze -o json` over `bundle` and returns its verdicts; every kind
/// in the bundle is one the controller reads.
fn analyze_verdicts(bundle: &str, controller: &str) -> Verdicts {
    let dir = support::tempdir("v17-sites-analyze");
    std::fs::write(dir.join("bundle.yaml"), bundle).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xbackend-controller"))
        .args(["analyze", "-f", "bundle.yaml", "-o", "json", "--controller-name", controller])
        .current_dir(&dir)
        .output()
        .expect("run analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "udp-tls is a finding; stderr:\n{stderr}");
    assert!(!stderr.contains("not a kind the controller reads"), "{stderr}");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    verdicts_of(list["items"].as_array().expect("items"), controller)
}
