//! End to end: a Gateway API kind whose CRD is installed or removed while the
//! controller runs is watched or dropped without a restart (docs/design.md §7).
//! Its own control plane, with no Gateway API CRDs until the test installs them.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams};
use support::{
    Channel, ControlPlane, Controller, TestGateway, apply_yaml, entries_of, route_yaml, wait_for_xbackend,
    xbackend_api, xbackend_yaml,
};

/// A CRD file of Gateway API v1.6.3's standard channel, from the Go module
/// cache the control plane was built from.
fn gateway_api_crd(file: &str) -> String {
    let out = std::process::Command::new("go").args(["env", "GOMODCACHE"]).output().expect("go env GOMODCACHE");
    let cache = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    let path = cache.join("sigs.k8s.io/gateway-api@v1.6.3/config/crd/standard").join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test]
async fn a_gateway_api_kind_installed_or_removed_while_running_is_watched_or_dropped() {
    let cp = ControlPlane::shared(Channel::None);
    let (client, ns) = cp.namespace("kinds").await;
    support::install_crd(&client).await;
    for kind in ["gatewayclasses", "gateways"] {
        apply_yaml(&client, None, &gateway_api_crd(&format!("gateway.networking.k8s.io_{kind}.yaml"))).await;
        support::wait_for_crd(&client, &format!("{kind}.gateway.networking.k8s.io")).await;
    }
    let gw = TestGateway::create(&client, &ns, &["gw"]).await;
    apply_yaml(&client, Some(&ns), &xbackend_yaml("b", "api.example.com")).await;
    let ctl = Controller::start(&cp.kubeconfig, &["--controller-name", &gw.controller_name]);
    ctl.wait_ready().await;
    let log = ctl.log_text();
    assert!(log.contains("watching for its CRD") && log.contains("HTTPRoute"), "the missing kind is named:\n{log}");

    // HTTPRoutes become available: the controller starts watching them.
    apply_yaml(&client, None, &gateway_api_crd("gateway.networking.k8s.io_httproutes.yaml")).await;
    support::wait_for_crd(&client, "httproutes.gateway.networking.k8s.io").await;
    apply_yaml(&client, Some(&ns), &route_yaml("r", &["gw"], "b")).await;
    let api = xbackend_api(&client, &ns);
    let ours = gw.controller_name.clone();
    wait_for_xbackend(&api, "b", "an ancestor through the new kind", |o| entries_of(o, "ancestors", &ours).len() == 1)
        .await;

    // And removed: its objects leave the index, and with them the ancestor.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.delete("httproutes.gateway.networking.k8s.io", &DeleteParams::default()).await.unwrap();
    wait_for_xbackend(&api, "b", "no ancestor once HTTPRoutes are gone", |o| {
        entries_of(o, "ancestors", &ours).is_empty()
    })
    .await;
    // Discovery can list a deleted CRD for a moment: the follower looks again
    // for up to 13.5 s after the last CRD event.
    let stopped = support::eventually(Duration::from_secs(30), || async {
        ctl.log_text().contains("no longer watching").then_some(())
    })
    .await;
    assert!(stopped.is_some(), "the controller says it stopped watching HTTPRoutes:\n{}", ctl.log_tail());
}
