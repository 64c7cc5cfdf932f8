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

/// Gateway API v1.6.3 serves TCPRoute as v1alpha2 only: an XBackend behind
/// one gets its entry, and loses it with the route.
#[tokio::test]
async fn a_v1alpha2_tcproute_makes_an_ancestor_on_v1_6_crds() {
    let cp = ControlPlane::shared(Channel::Experimental);
    let (client, ns) = cp.namespace("upstream-tcp").await;
    let gw = TestGateway::create(&client, &ns, &["gw"]).await;
    let backend = "apiVersion: gateway.networking.x-k8s.io/v1alpha1\nkind: XBackend\nmetadata: {name: db}\nspec:\n  type: ExternalHostname\n  port: {port: 5432}\n  externalHostname: {hostname: db.example.com}\n";
    let route = "---\napiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\nmetadata: {name: db}\nspec:\n  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{group: gateway.networking.x-k8s.io, kind: XBackend, name: db, port: 5432}]}]\n";
    apply_yaml(&client, Some(&ns), &format!("{backend}{route}")).await;

    let ctl = Controller::start(&cp.kubeconfig, &["--controller-name", &gw.controller_name]);
    ctl.wait_ready().await;
    let api = xbackend_api(&client, &ns);
    // The other test here may switch the XBackend CRD to ours meanwhile: count both shapes.
    let ours = |o: &DynamicObject| {
        let mut entries = entries_of(o, "parents", &gw.controller_name);
        entries.extend(entries_of(o, "ancestors", &gw.controller_name));
        entries
    };
    let obj = wait_for_xbackend(&api, "db", "one entry", |o| ours(o).len() == 1).await;
    let entry = &ours(&obj)[0];
    let reference = entry.get("parentRef").or(entry.get("ancestorRef")).unwrap();
    assert_eq!(reference["name"], "gw", "{entry}");
    assert_eq!(conditions_of(entry)[0], ("Accepted".into(), "True".into(), "Accepted".into()));

    let gvk = kube::api::GroupVersionKind::gvk("gateway.networking.k8s.io", "v1alpha2", "TCPRoute");
    let routes: kube::Api<DynamicObject> = kube::Api::namespaced_with(
        client.clone(),
        &ns,
        &kube::api::ApiResource::from_gvk_with_plural(&gvk, "tcproutes"),
    );
    routes.delete("db", &Default::default()).await.expect("delete the TCPRoute");
    wait_for_xbackend(&api, "db", "no entry of ours", |o| ours(o).is_empty()).await;
}
