//! With upstream's XBackend CRD (Gateway API v1.6 experimental: status.parents /
//! parentRef) the controller writes that shape, and follows a switch to ours.

mod support;

use kube::api::DynamicObject;
use support::{
    Channel, ControlPlane, Controller, TestGateway, apply_yaml, conditions_of, entries_of, route_yaml,
    wait_for_xbackend, xbackend_api,
};

#[tokio::test]
async fn writes_upstream_parents_then_follows_a_switch_to_our_crd() {
    let cp = ControlPlane::shared(Channel::Experimental);
    let (client, ns) = cp.namespace("upstream").await;
    let gw = TestGateway::create(&client, &ns, &["gw"]).await;
    // Upstream v1.6 requires a CA source next to the validation hostname.
    let backend = "apiVersion: gateway.networking.x-k8s.io/v1alpha1\nkind: XBackend\nmetadata: {name: b}\nspec:\n  type: ExternalHostname\n  port: {port: 443}\n  externalHostname: {hostname: api.example.com}\n  tls:\n    mode: ServerOnly\n    validation: {hostname: api.example.com, wellKnownCACertificates: System}\n";
    apply_yaml(&client, Some(&ns), &format!("{backend}{}", route_yaml("r", &["gw"], "b"))).await;

    let ctl = Controller::start(&cp.kubeconfig, &["--controller-name", &gw.controller_name]);
    ctl.wait_ready().await;
    let api = xbackend_api(&client, &ns);
    let accepted = |field: &'static str| {
        let ctl_name = gw.controller_name.clone();
        move |o: &DynamicObject| {
            let e = entries_of(o, field, &ctl_name);
            e.len() == 1 && conditions_of(&e[0]).first().is_some_and(|c| c.1 == "True" && c.0 == "Accepted")
        }
    };
    let obj = wait_for_xbackend(&api, "b", "an entry in status.parents", accepted("parents")).await;
    let entry = &entries_of(&obj, "parents", &gw.controller_name)[0];
    assert_eq!(entry["parentRef"]["name"], "gw");
    assert_eq!(entry["parentRef"]["kind"], "Gateway");
    assert!(entry.get("ancestorRef").is_none(), "upstream shape only: {entry}");

    // Replacing the CRD with ours moves the entry to status.ancestors.
    support::install_crd(&client).await;
    let obj = wait_for_xbackend(&api, "b", "an entry in status.ancestors", accepted("ancestors")).await;
    let entry = &entries_of(&obj, "ancestors", &gw.controller_name)[0];
    assert_eq!(entry["ancestorRef"]["name"], "gw");
}
