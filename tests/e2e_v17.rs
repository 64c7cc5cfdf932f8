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
