//! End to end: the controller binary against the real apiserver, driven by
//! kubectl-equivalent writes, asserting the stored status.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use serde_json::json;
use support::{
    Channel, ControlPlane, Controller, TestGateway, apply_yaml, conditions_of, entries_of, route_yaml,
    wait_for_xbackend, xbackend_api, xbackend_yaml,
};

async fn setup(test: &str, gateways: &[&str]) -> (&'static ControlPlane, Client, String, TestGateway) {
    let cp = ControlPlane::shared(Channel::Standard);
    let (client, ns) = cp.namespace(test).await;
    support::install_crd(&client).await;
    let gw = TestGateway::create(&client, &ns, gateways).await;
    (cp, client, ns, gw)
}

fn cond(t: &str, s: &str, r: &str) -> (String, String, String) {
    (t.into(), s.into(), r.into())
}

/// Accepted and ResolvedRefs of our single entry, once it has both.
async fn wait_conditions(
    api: &Api<DynamicObject>,
    name: &str,
    ctl: &str,
    want: Vec<(String, String, String)>,
) -> DynamicObject {
    wait_for_xbackend(api, name, &format!("conditions {want:?}"), |o| {
        let e = entries_of(o, "ancestors", ctl);
        e.len() == 1 && conditions_of(&e[0]) == want
    })
    .await
}

fn certificate(name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap().self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn mtls_xbackend_yaml(name: &str, secret: &str, secret_ns: Option<&str>) -> String {
    let ns = secret_ns.map(|n| format!(", namespace: {n}")).unwrap_or_default();
    format!(
        "---\napiVersion: gateway.networking.x-k8s.io/v1alpha1\nkind: XBackend\nmetadata: {{name: {name}}}\nspec:\n  type: ExternalHostname\n  port: {{port: 443}}\n  externalHostname: {{hostname: mtls.example.com}}\n  tls:\n    mode: ClientAndServer\n    clientCertificateRef: {{name: {secret}{ns}}}\n    validation: {{hostname: mtls.example.com}}\n"
    )
}

fn ca_xbackend_yaml(name: &str, kind: &str, ref_name: &str) -> String {
    let group = if kind == "ConfigMap" || kind == "Secret" { "\"\"" } else { "example.com" };
    format!(
        "---\napiVersion: gateway.networking.x-k8s.io/v1alpha1\nkind: XBackend\nmetadata: {{name: {name}}}\nspec:\n  type: ExternalHostname\n  port: {{port: 443}}\n  externalHostname: {{hostname: ca.example.com}}\n  tls:\n    mode: ServerOnly\n    validation:\n      hostname: ca.example.com\n      caCertificateRefs: [{{group: {group}, kind: {kind}, name: {ref_name}}}]\n"
    )
}

#[tokio::test]
async fn every_condition_reason_is_reported() {
    let (cp, client, ns, gw) = setup("reasons", &["gw"]).await;
    let other_ns = cp.namespace("reasons-other").await.1;
    let (cert, key) = certificate("client.example");
    let (_, other_key) = certificate("other.example");
    let (ca, _) = certificate("ca.example");

    // (name, manifest, Accepted (status, reason), ResolvedRefs (status, reason))
    type Case<'a> = (&'a str, String, (&'a str, &'a str), (&'a str, &'a str));
    let cases: Vec<Case> = vec![
        ("ok", xbackend_yaml("ok", "api.openai.com"), ("True", "Accepted"), ("True", "ResolvedRefs")),
        ("in-cluster", xbackend_yaml("in-cluster", "api.corp.internal"), ("False", "Invalid"), ("True", "ResolvedRefs")),
        ("metadata", xbackend_yaml("metadata", "metadata.google.internal"), ("False", "HostnameNotAllowed"), ("True", "ResolvedRefs")),
        ("denied", xbackend_yaml("denied", "x.blocked.example.com"), ("False", "HostnameNotAllowed"), ("True", "ResolvedRefs")),
        (
            "clear",
            "---\napiVersion: gateway.networking.x-k8s.io/v1alpha1\nkind: XBackend\nmetadata: {name: clear}\nspec: {type: ExternalHostname, port: {port: 80}, externalHostname: {hostname: plain.example.com}}\n".into(),
            ("False", "TLSRequired"),
            ("True", "ResolvedRefs"),
        ),
        ("mtls-ok", mtls_xbackend_yaml("mtls-ok", "client-cert", None), ("True", "Accepted"), ("True", "ResolvedRefs")),
        ("mtls-missing", mtls_xbackend_yaml("mtls-missing", "nope", None), ("True", "Accepted"), ("False", "InvalidClientCertificateRef")),
        ("mtls-mismatch", mtls_xbackend_yaml("mtls-mismatch", "mismatched", None), ("True", "Accepted"), ("False", "InvalidClientCertificateRef")),
        ("mtls-foreign", mtls_xbackend_yaml("mtls-foreign", "client-cert", Some(&other_ns)), ("True", "Accepted"), ("False", "RefNotPermitted")),
        ("ca-ok", ca_xbackend_yaml("ca-ok", "ConfigMap", "ca"), ("True", "Accepted"), ("True", "ResolvedRefs")),
        ("ca-missing", ca_xbackend_yaml("ca-missing", "ConfigMap", "nope"), ("True", "Accepted"), ("False", "InvalidCACertificateRef")),
        ("ca-kind", ca_xbackend_yaml("ca-kind", "Secret", "ca"), ("True", "Accepted"), ("False", "InvalidKind")),
    ];

    let mut yaml = support::tls_secret_yaml("client-cert", &cert, &key)
        + &support::tls_secret_yaml("mismatched", &cert, &other_key);
    yaml += &format!("---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: ca}}\ndata:\n  ca.crt: {:?}\n", ca);
    for (name, backend, _, _) in &cases {
        yaml += backend;
        yaml += &route_yaml(&format!("to-{name}"), &["gw"], name);
    }
    apply_yaml(&client, Some(&ns), &yaml).await;
    apply_yaml(&client, Some(&other_ns), &support::tls_secret_yaml("client-cert", &cert, &key)).await;

    let ctl = Controller::start(
        &cp.kubeconfig,
        &[
            "--controller-name",
            &gw.controller_name,
            "--require-tls",
            "--cluster-domain",
            "corp.internal",
            "--deny-hostname",
            "*.blocked.example.com",
        ],
    );
    ctl.wait_ready().await;
    let api = xbackend_api(&client, &ns);
    for (name, _, (a_status, a_reason), (r_status, r_reason)) in &cases {
        let obj = wait_conditions(
            &api,
            name,
            &gw.controller_name,
            vec![cond("Accepted", a_status, a_reason), cond("ResolvedRefs", r_status, r_reason)],
        )
        .await;
        let entry = &entries_of(&obj, "ancestors", &gw.controller_name)[0];
        assert_eq!(
            entry["ancestorRef"],
            json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": ns, "name": "gw"}),
            "{name}"
        );
        for c in entry["conditions"].as_array().unwrap() {
            assert_eq!(c["observedGeneration"], 1, "{name}: {c}");
            assert!(!c["message"].as_str().unwrap_or("").is_empty(), "{name}: a message users can act on: {c}");
            assert!(c["lastTransitionTime"].is_string(), "{name}: {c}");
        }
    }
    // Messages name what is wrong.
    let obj = api.get("mtls-foreign").await.unwrap();
    let msg = entries_of(&obj, "ancestors", &gw.controller_name)[0]["conditions"].to_string();
    assert!(msg.contains("ReferenceGrant"), "{msg}");
}

#[tokio::test]
async fn status_follows_routes_gateways_secrets_and_grants() {
    let (cp, client, ns, gw) = setup("follows", &["gw-a", "gw-b"]).await;
    let other_ns = cp.namespace("follows-other").await.1;
    let (cert, key) = certificate("client.example");
    apply_yaml(&client, Some(&other_ns), &support::tls_secret_yaml("client-cert", &cert, &key)).await;
    apply_yaml(
        &client,
        Some(&ns),
        &(mtls_xbackend_yaml("b", "client-cert", Some(&other_ns)) + &route_yaml("r", &["gw-a", "gw-b"], "b")),
    )
    .await;

    let ctl = Controller::start(&cp.kubeconfig, &["--controller-name", &gw.controller_name]);
    ctl.wait_ready().await;
    let api = xbackend_api(&client, &ns);
    let names = |o: &DynamicObject| -> Vec<String> {
        entries_of(o, "ancestors", &gw.controller_name)
            .iter()
            .map(|e| e["ancestorRef"]["name"].as_str().unwrap_or("").to_string())
            .collect()
    };

    // One entry per Gateway, sorted; the cross-namespace Secret is not permitted yet.
    let obj = wait_for_xbackend(&api, "b", "two entries", |o| names(o) == ["gw-a", "gw-b"]).await;
    for e in entries_of(&obj, "ancestors", &gw.controller_name) {
        assert_eq!(conditions_of(&e)[1], cond("ResolvedRefs", "False", "RefNotPermitted"));
    }

    // A ReferenceGrant in the Secret's namespace permits it.
    apply_yaml(
        &client,
        Some(&other_ns),
        &format!(
            "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: allow-xbackends}}\nspec:\n  from: [{{group: gateway.networking.x-k8s.io, kind: XBackend, namespace: {ns}}}]\n  to: [{{group: \"\", kind: Secret}}]\n"
        ),
    )
    .await;
    wait_for_xbackend(&api, "b", "ResolvedRefs=True after the grant", |o| {
        let e = entries_of(o, "ancestors", &gw.controller_name);
        e.len() == 2 && e.iter().all(|e| conditions_of(e)[1] == cond("ResolvedRefs", "True", "ResolvedRefs"))
    })
    .await;

    // Deleting the Secret breaks the reference.
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &other_ns)
        .delete("client-cert", &DeleteParams::default())
        .await
        .unwrap();
    wait_for_xbackend(&api, "b", "InvalidClientCertificateRef after the Secret is deleted", |o| {
        let e = entries_of(o, "ancestors", &gw.controller_name);
        !e.is_empty()
            && e.iter().all(|e| conditions_of(e)[1] == cond("ResolvedRefs", "False", "InvalidClientCertificateRef"))
    })
    .await;

    // Deleting a Gateway removes its entry; deleting the route removes the rest.
    let gateways = support::dynamic(&client, &ns, "gateway.networking.k8s.io", "v1", "Gateway");
    gateways.delete("gw-b", &DeleteParams::default()).await.unwrap();
    wait_for_xbackend(&api, "b", "only gw-a", |o| names(o) == ["gw-a"]).await;
    let routes = support::dynamic(&client, &ns, "gateway.networking.k8s.io", "v1", "HTTPRoute");
    routes.delete("r", &DeleteParams::default()).await.unwrap();
    wait_for_xbackend(&api, "b", "no entries", |o| names(o).is_empty()).await;
}

#[tokio::test]
async fn other_controllers_entries_survive_our_writes() {
    let (cp, client, ns, gw) = setup("foreign", &["gw-a", "gw-b"]).await;
    apply_yaml(&client, Some(&ns), &(xbackend_yaml("b", "api.example.com") + &route_yaml("r", &["gw-a"], "b"))).await;
    let api = xbackend_api(&client, &ns);
    let foreign = json!({
        "ancestorRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": ns, "name": "theirs"},
        "controllerName": "other.example.com/gateway",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "theirs", "observedGeneration": 1, "lastTransitionTime": "2020-01-01T00:00:00Z"}]
    });
    api.patch_status("b", &PatchParams::default(), &Patch::Merge(json!({"status": {"ancestors": [foreign.clone()]}})))
        .await
        .unwrap();

    let ctl = Controller::start(&cp.kubeconfig, &["--controller-name", &gw.controller_name]);
    ctl.wait_ready().await;
    wait_for_xbackend(&api, "b", "our entry next to theirs", |o| {
        entries_of(o, "ancestors", &gw.controller_name).len() == 1
    })
    .await;

    // Our entries change (a second Gateway); theirs stays exactly as written.
    apply_yaml(&client, Some(&ns), &route_yaml("r", &["gw-a", "gw-b"], "b")).await;
    let obj = wait_for_xbackend(&api, "b", "two entries of ours", |o| {
        entries_of(o, "ancestors", &gw.controller_name).len() == 2
    })
    .await;
    let theirs = entries_of(&obj, "ancestors", "other.example.com/gateway");
    assert_eq!(theirs, vec![foreign], "foreign entry kept byte for byte");
}

#[tokio::test]
async fn observed_generation_follows_spec_and_transition_time_stays() {
    let (cp, client, ns, gw) = setup("generation", &["gw"]).await;
    apply_yaml(&client, Some(&ns), &(xbackend_yaml("b", "api.example.com") + &route_yaml("r", &["gw"], "b"))).await;
    let ctl = Controller::start(&cp.kubeconfig, &["--controller-name", &gw.controller_name]);
    ctl.wait_ready().await;
    let api = xbackend_api(&client, &ns);
    let accepted =
        |o: &DynamicObject| entries_of(o, "ancestors", &gw.controller_name).first().map(|e| e["conditions"][0].clone());
    let first = wait_for_xbackend(&api, "b", "accepted", |o| accepted(o).is_some_and(|c| c["status"] == "True")).await;
    let before = accepted(&first).unwrap();
    support::past_the_second_of(&before["lastTransitionTime"]).await;

    api.patch("b", &PatchParams::default(), &Patch::Merge(json!({"spec": {"port": {"port": 8443}}}))).await.unwrap();
    let after = wait_for_xbackend(&api, "b", "observedGeneration 2", |o| {
        accepted(o).is_some_and(|c| c["observedGeneration"] == 2)
    })
    .await;
    let after = accepted(&after).unwrap();
    assert_eq!(after["lastTransitionTime"], before["lastTransitionTime"], "status did not flip, so the time stays");
}

#[tokio::test]
async fn no_writes_for_irrelevant_changes_or_after_restart() {
    let (cp, client, ns, gw) = setup("no-writes", &["gw"]).await;
    let mut yaml = String::new();
    for i in 0..5 {
        yaml += &xbackend_yaml(&format!("b{i}"), &format!("api{i}.example.com"));
        yaml += &route_yaml(&format!("r{i}"), &["gw"], &format!("b{i}"));
    }
    apply_yaml(&client, Some(&ns), &yaml).await;
    let api = xbackend_api(&client, &ns);
    let ctl = Controller::start(&cp.kubeconfig, &["--controller-name", &gw.controller_name]);
    ctl.wait_ready().await;
    for i in 0..5 {
        wait_conditions(
            &api,
            &format!("b{i}"),
            &gw.controller_name,
            vec![cond("Accepted", "True", "Accepted"), cond("ResolvedRefs", "True", "ResolvedRefs")],
        )
        .await;
    }
    let writes = ctl.counted("xbackend_status_writes_total", 5.0).await;
    assert_eq!(writes, Some(5.0), "exactly one write per XBackend on a cold start");

    // Irrelevant changes: an unrelated Secret and ConfigMap, a label on a route and on an XBackend.
    apply_yaml(&client, Some(&ns), "apiVersion: v1\nkind: Secret\nmetadata: {name: unrelated}\nstringData: {a: b}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: unrelated}\ndata: {a: b}\n").await;
    let routes = support::dynamic(&client, &ns, "gateway.networking.k8s.io", "v1", "HTTPRoute");
    routes
        .patch("r0", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"team": "a"}}})))
        .await
        .unwrap();
    api.patch("b1", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"team": "a"}}})))
        .await
        .unwrap();
    let reconciles = ctl.metric("xbackend_reconciles_total").unwrap();
    // Sentinels behind the irrelevant changes on the same watches: r3 leaves
    // the Gateway (HTTPRoute watch) and b2 changes its hostname (XBackend
    // watch). Both must be written; once they are, and the label on b1 had its
    // reconcile, an unwanted write would have happened already.
    routes.patch("r3", &PatchParams::default(), &Patch::Merge(json!({"spec": {"parentRefs": []}}))).await.unwrap();
    api.patch(
        "b2",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"externalHostname": {"hostname": "moved.example.com"}}})),
    )
    .await
    .unwrap();
    let ctl_name = gw.controller_name.clone();
    wait_for_xbackend(&api, "b3", "its entry removed", |o| entries_of(o, "ancestors", &ctl_name).is_empty()).await;
    wait_for_xbackend(&api, "b2", "observedGeneration 2", |o| {
        let entries = entries_of(o, "ancestors", &ctl_name);
        !entries.is_empty() && entries.iter().all(|e| e["conditions"][0]["observedGeneration"] == 2)
    })
    .await;
    support::eventually(Duration::from_secs(10), || async {
        (ctl.metric("xbackend_reconciles_total")? >= reconciles + 3.0).then_some(())
    })
    .await
    .expect("b1, b2 and b3 reconciled");
    assert_eq!(ctl.metric("xbackend_status_writes_total"), Some(7.0), "irrelevant changes write nothing");
    let rvs = resource_versions(&api).await;

    // A restart reconciles everything again and writes nothing; SIGTERM exits cleanly.
    assert_eq!(ctl.terminate(), Some(0), "graceful shutdown");
    let ctl = Controller::start(&cp.kubeconfig, &["--controller-name", &gw.controller_name]);
    ctl.wait_ready().await;
    support::eventually(Duration::from_secs(20), || async {
        (ctl.metric("xbackend_reconciles_total")? >= 5.0).then_some(())
    })
    .await
    .expect("restarted controller reconciles");
    // A reconcile counts after its write, so five counted means five done.
    assert_eq!(ctl.metric("xbackend_status_writes_total"), Some(0.0), "a restart writes nothing");
    assert_eq!(resource_versions(&api).await, rvs);
}

#[tokio::test]
async fn rejections_and_insecure_backends_get_events_without_any_route() {
    let (cp, client, ns, gw) = setup("events", &[]).await;
    let plain = "---\napiVersion: gateway.networking.x-k8s.io/v1alpha1\nkind: XBackend\nmetadata: {name: plain}\nspec: {type: ExternalHostname, port: {port: 80}, externalHostname: {hostname: plain.example.com}}\n";
    apply_yaml(&client, Some(&ns), &(xbackend_yaml("metadata", "metadata.google.internal") + plain)).await;
    let ctl = Controller::start(&cp.kubeconfig, &["--controller-name", &gw.controller_name]);
    ctl.wait_ready().await;

    let events = support::dynamic(&client, &ns, "events.k8s.io", "v1", "Event");
    let found = support::eventually(Duration::from_secs(30), || async {
        let list = events.list(&Default::default()).await.ok()?;
        let seen: Vec<(String, String, String)> = list
            .items
            .iter()
            .map(|e| {
                let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
                (s(&e.data["regarding"]["name"]), s(&e.data["type"]), s(&e.data["reason"]))
            })
            .collect();
        let want = [("metadata", "Warning", "HostnameNotAllowed"), ("plain", "Warning", "Insecure")];
        want.iter().all(|w| seen.contains(&(w.0.into(), w.1.into(), w.2.into()))).then_some(seen)
    })
    .await;
    assert!(found.is_some(), "expected HostnameNotAllowed and Insecure events; log:\n{}", ctl.log_tail());
    // No Gateway uses them, so no status entry is written.
    let api = xbackend_api(&client, &ns);
    assert!(entries_of(&api.get("metadata").await.unwrap(), "ancestors", &gw.controller_name).is_empty());
}

#[tokio::test]
async fn a_full_list_keeps_other_controllers_entries_and_warns() {
    let (cp, client, ns, gw) = setup("cap", &["gw-a", "gw-b"]).await;
    apply_yaml(&client, Some(&ns), &(xbackend_yaml("b", "api.example.com") + &route_yaml("r", &["gw-a", "gw-b"], "b")))
        .await;
    let api = xbackend_api(&client, &ns);
    // 31 entries of another controller leave room for one of our two.
    let foreign: Vec<serde_json::Value> = (0..31)
        .map(|i| {
            json!({
                "ancestorRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": ns, "name": format!("theirs-{i:02}")},
                "controllerName": "other.example.com/gateway",
                "conditions": [],
            })
        })
        .collect();
    api.patch_status("b", &PatchParams::default(), &Patch::Merge(json!({"status": {"ancestors": foreign.clone()}})))
        .await
        .unwrap();

    let ctl = Controller::start(&cp.kubeconfig, &["--controller-name", &gw.controller_name]);
    ctl.wait_ready().await;
    let obj = wait_for_xbackend(&api, "b", "one entry of ours", |o| {
        entries_of(o, "ancestors", &gw.controller_name).len() == 1
    })
    .await;
    assert_eq!(
        entries_of(&obj, "ancestors", &gw.controller_name)[0]["ancestorRef"]["name"],
        "gw-a",
        "ours in sorted order up to the cap"
    );
    assert_eq!(entries_of(&obj, "ancestors", "other.example.com/gateway"), foreign, "theirs all kept");
    assert_eq!(obj.data["status"]["ancestors"].as_array().unwrap().len(), 32);

    let events = support::dynamic(&client, &ns, "events.k8s.io", "v1", "Event");
    let warned = support::eventually(Duration::from_secs(20), || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items.iter().any(|e| e.data["reason"] == "AncestorsTruncated" && e.data["type"] == "Warning").then_some(())
    })
    .await;
    assert!(warned.is_some(), "AncestorsTruncated Warning Event; log:\n{}", ctl.log_tail());
}

#[tokio::test]
async fn not_ready_and_silent_until_every_watch_syncs() {
    let (cp, client, ns, gw) = setup("readiness", &["gw"]).await;
    apply_yaml(&client, Some(&ns), &(xbackend_yaml("b", "api.example.com") + &route_yaml("r", &["gw"], "b"))).await;
    // Everything the controller needs except ConfigMaps, so that watch never syncs.
    let role = support::unique_name("no-configmaps");
    apply_yaml(
        &client,
        Some(&ns),
        &format!(
            r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: controller}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: {role}}}
rules:
- {{apiGroups: [gateway.networking.x-k8s.io], resources: [xbackends], verbs: [get, list, watch]}}
- {{apiGroups: [gateway.networking.x-k8s.io], resources: [xbackends/status], verbs: [patch]}}
- {{apiGroups: [gateway.networking.k8s.io], resources: [httproutes, grpcroutes, tcproutes, tlsroutes, udproutes, listenersets, gateways, gatewayclasses, referencegrants], verbs: [list, watch]}}
- {{apiGroups: [""], resources: [secrets], verbs: [get, list, watch]}}
- {{apiGroups: [""], resources: [pods, namespaces], verbs: [list, watch]}}
- {{apiGroups: [apiextensions.k8s.io], resources: [customresourcedefinitions], verbs: [list, watch]}}
- {{apiGroups: [events.k8s.io], resources: [events], verbs: [create, patch]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: {role}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {role}}}
subjects: [{{kind: ServiceAccount, name: controller, namespace: {ns}}}]
"#
        ),
    )
    .await;
    let token = support::service_account_token(&client, &ns, "controller").await;
    let kubeconfig = support::token_kubeconfig(&cp.kubeconfig, &token, None);

    let ctl = Controller::start(&kubeconfig, &["--controller-name", &gw.controller_name]);
    let waiting = support::eventually(Duration::from_secs(30), || async {
        let (code, body) = ctl.http_get("/readyz")?;
        // Every other watch has synced: ConfigMap is the only one left.
        (code == 503 && body.trim() == "waiting for watches: ConfigMap").then_some(body)
    })
    .await;
    assert!(
        waiting.is_some(),
        "/readyz should say it waits for ConfigMaps only; {:?}; log:\n{}",
        ctl.http_get("/readyz"),
        ctl.log_tail()
    );
    assert_eq!(ctl.http_get("/healthz").map(|r| r.0), Some(200), "live while not ready");
    // Everything else is known, yet nothing is written before the last watch syncs.
    assert_eq!(ctl.metric("xbackend_status_writes_total"), Some(0.0));
    assert!(
        entries_of(&xbackend_api(&client, &ns).get("b").await.unwrap(), "ancestors", &gw.controller_name).is_empty()
    );
}

async fn resource_versions(api: &Api<DynamicObject>) -> BTreeMap<String, String> {
    api.list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|o| (o.metadata.name.clone().unwrap_or_default(), o.metadata.resource_version.clone().unwrap_or_default()))
        .collect()
}

#[tokio::test]
async fn grpc_routes_make_ancestors_like_http_routes() {
    let (cp, client, ns, gw) = setup("grpc", &["gw"]).await;
    let grpc_route = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g}\nspec:\n  parentRefs: [{name: gw}]\n  rules:\n  - backendRefs: [{group: gateway.networking.x-k8s.io, kind: XBackend, name: b}]\n";
    apply_yaml(&client, Some(&ns), &(xbackend_yaml("b", "grpc.example.com") + grpc_route)).await;
    let ctl = Controller::start(&cp.kubeconfig, &["--controller-name", &gw.controller_name]);
    ctl.wait_ready().await;
    let api = xbackend_api(&client, &ns);
    wait_conditions(
        &api,
        "b",
        &gw.controller_name,
        vec![cond("Accepted", "True", "Accepted"), cond("ResolvedRefs", "True", "ResolvedRefs")],
    )
    .await;

    // Removing the GRPCRoute removes the entry.
    support::dynamic(&client, &ns, "gateway.networking.k8s.io", "v1", "GRPCRoute")
        .delete("g", &DeleteParams::default())
        .await
        .unwrap();
    wait_for_xbackend(&api, "b", "no entries", |o| entries_of(o, "ancestors", &gw.controller_name).is_empty()).await;
}

/// Gateway API v1.7 objects on our CRD: both port shapes, EndpointSelector
/// following its Pods, and one Port printer column for either shape.
#[tokio::test]
async fn v1_7_shapes_on_our_crd() {
    let (cp, client, ns, gw) = setup("v17-ours", &["gw"]).await;
    let backend = |name: &str, port: &str| {
        format!(
            "---\napiVersion: gateway.networking.x-k8s.io/v1alpha1\nkind: XBackend\nmetadata: {{name: {name}}}\nspec:\n  type: ExternalHostname\n  port: {port}\n  externalHostname: {{hostname: api.example.com}}\n  tls:\n    mode: ServerOnly\n    validation: {{hostname: api.example.com, wellKnownCACertificates: System}}\n"
        )
    };
    let selector = "---\napiVersion: gateway.networking.x-k8s.io/v1alpha1\nkind: XBackend\nmetadata: {name: pods}\nspec:\n  type: EndpointSelector\n  port: {number: 8080}\n  endpointSelector: {matchLabels: {app: web}}\n";
    let mut yaml = format!("{}{}{selector}", backend("v17", "{number: 8443}"), backend("v16", "{port: 443}"));
    for name in ["v17", "v16", "pods"] {
        yaml.push_str(&route_yaml(name, &["gw"], name));
    }
    apply_yaml(&client, Some(&ns), &yaml).await;

    let ctl = Controller::start(&cp.kubeconfig, &["--controller-name", &gw.controller_name]);
    ctl.wait_ready().await;
    let api = xbackend_api(&client, &ns);
    let accepted = cond("Accepted", "True", "Accepted");
    for name in ["v17", "v16"] {
        wait_conditions(
            &api,
            name,
            &gw.controller_name,
            vec![accepted.clone(), cond("ResolvedRefs", "True", "ResolvedRefs")],
        )
        .await;
    }
    wait_conditions(
        &api,
        "pods",
        &gw.controller_name,
        vec![accepted.clone(), cond("ResolvedRefs", "False", "NoMatchingPods")],
    )
    .await;
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: web-0, labels: {app: web}}\nspec:\n  containers: [{name: c, image: registry.k8s.io/pause:3.10}]\n";
    apply_yaml(&client, Some(&ns), pod).await;
    wait_conditions(
        &api,
        "pods",
        &gw.controller_name,
        vec![accepted.clone(), cond("ResolvedRefs", "True", "ResolvedRefs")],
    )
    .await;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns);
    pods.delete("web-0", &DeleteParams::default()).await.expect("delete web-0");
    wait_conditions(&api, "pods", &gw.controller_name, vec![accepted, cond("ResolvedRefs", "False", "NoMatchingPods")])
        .await;

    // `kubectl get` shows the port whichever field holds it.
    let table = std::process::Command::new("kubectl")
        .args(["get", "xbackends", "-n", &ns])
        .env("KUBECONFIG", &cp.kubeconfig)
        .output()
        .expect("run kubectl");
    assert!(table.status.success(), "{}", String::from_utf8_lossy(&table.stderr));
    let table = String::from_utf8_lossy(&table.stdout);
    // Columns are aligned under their headers; cells may be empty.
    let header = table.lines().next().unwrap_or_default();
    let (start, end) = (header.find("PORT").expect("PORT column"), header.find("PROTOCOL").expect("PROTOCOL column"));
    let port_of = |name: &str| -> String {
        let row =
            table.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name} in\n{table}"));
        row.get(start..end).unwrap_or_default().trim().to_string()
    };
    assert_eq!(port_of("v17"), "8443", "{table}");
    assert_eq!(port_of("v16"), "443", "{table}");
    assert_eq!(port_of("pods"), "8080", "{table}");
}

/// The Accepted condition of a GatewayClass: (status, reason, observedGeneration).
fn class_accepted(class: &DynamicObject) -> Option<(String, String, i64)> {
    let conditions = class.data["status"]["conditions"].as_array()?;
    let c = conditions.iter().find(|c| c["type"] == "Accepted")?;
    Some((c["status"].as_str()?.into(), c["reason"].as_str()?.into(), c["observedGeneration"].as_i64().unwrap_or(0)))
}

#[tokio::test]
async fn our_gatewayclass_is_accepted_once_per_generation_and_others_are_never_touched() {
    let (cp, client, _ns, gw) = setup("gatewayclass", &[]).await;
    let theirs = support::unique_name("theirs");
    apply_yaml(
        &client,
        None,
        &format!("apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: {theirs}}}\nspec: {{controllerName: example.com/someone-else}}\n"),
    )
    .await;
    let class_resource = kube::discovery::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
        "gateway.networking.k8s.io",
        "v1",
        "GatewayClass",
    ));
    let classes: Api<DynamicObject> = Api::all_with(client.clone(), &class_resource);
    let theirs_before = classes.get(&theirs).await.unwrap();

    let accepted_at = |generation: i64| {
        let classes = classes.clone();
        let class = gw.class.clone();
        async move {
            support::eventually(Duration::from_secs(30), || async {
                let object = classes.get(&class).await.ok()?;
                (class_accepted(&object)? == ("True".into(), "Accepted".into(), generation)).then_some(object)
            })
            .await
            .unwrap_or_else(|| panic!("our GatewayClass Accepted=True at generation {generation}"))
        }
    };
    let ctl = Controller::start(&cp.kubeconfig, &["--controller-name", &gw.controller_name]);
    ctl.wait_ready().await;
    let ours = accepted_at(1).await;
    assert_eq!(ctl.counted("xbackend_gatewayclass_status_writes_total", 1.0).await, Some(1.0));
    // Their class came in the same list as ours, before our write.
    let theirs_after = classes.get(&theirs).await.unwrap();
    assert_eq!(theirs_after.metadata.resource_version, theirs_before.metadata.resource_version, "not ours: untouched");
    assert_eq!(theirs_after.data["status"], theirs_before.data["status"]);

    // A restart writes nothing; a new generation (the sentinel that the
    // restarted writer has been through every class) writes once.
    assert_eq!(ctl.terminate(), Some(0));
    let ctl = Controller::start(&cp.kubeconfig, &["--controller-name", &gw.controller_name]);
    ctl.wait_ready().await;
    support::past_the_second_of(&ours.data["status"]["conditions"][0]["lastTransitionTime"]).await;
    classes
        .patch(&gw.class, &PatchParams::default(), &Patch::Merge(json!({"spec": {"description": "second generation"}})))
        .await
        .unwrap();
    let again = accepted_at(2).await;
    let writes = ctl.counted("xbackend_gatewayclass_status_writes_total", 1.0).await;
    assert_eq!(writes, Some(1.0), "only the new generation wrote");
    let transition = |o: &DynamicObject| o.data["status"]["conditions"][0]["lastTransitionTime"].clone();
    assert_eq!(transition(&again), transition(&ours), "still True: lastTransitionTime kept");
    assert_eq!(classes.get(&theirs).await.unwrap().metadata.resource_version, theirs_before.metadata.resource_version);
}

/// Guard mode (issue 19): `--gateway-class` judges a Gateway of another
/// implementation's class; our entry stands beside the implementation's own
/// for the same Gateway, which is kept byte for byte, and the class's status
/// is never written.
#[tokio::test]
async fn guard_mode_judges_another_implementations_gateways() {
    let (cp, client, ns, gw) = setup("guard", &[]).await;
    let class = support::unique_name("istio-like");
    let yaml = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: {class}}}\nspec: {{controllerName: istio.io/gateway-controller}}\n{}{}{}",
        support::gateway_yaml("mesh", &class),
        xbackend_yaml("b", "api.example.com"),
        route_yaml("r", &["mesh"], "b")
    );
    apply_yaml(&client, Some(&ns), &yaml).await;
    let classes = support::dynamic(&client, "", "gateway.networking.k8s.io", "v1", "GatewayClass");
    let class_before = classes.get(&class).await.unwrap();
    let api = xbackend_api(&client, &ns);
    let istio = json!({
        "ancestorRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": ns, "name": "mesh"},
        "controllerName": "istio.io/gateway-controller",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "istio", "observedGeneration": 1, "lastTransitionTime": "2020-01-01T00:00:00Z"}]
    });
    api.patch_status("b", &PatchParams::default(), &Patch::Merge(json!({"status": {"ancestors": [istio.clone()]}})))
        .await
        .unwrap();

    let ctl = Controller::start(&cp.kubeconfig, &["--controller-name", &gw.controller_name, "--gateway-class", &class]);
    ctl.wait_ready().await;
    let obj = wait_for_xbackend(&api, "b", "our entry beside Istio's", |o| {
        entries_of(o, "ancestors", &gw.controller_name).len() == 1
    })
    .await;
    let ours = &entries_of(&obj, "ancestors", &gw.controller_name)[0];
    assert_eq!(ours["ancestorRef"]["name"], "mesh");
    assert_eq!(entries_of(&obj, "ancestors", "istio.io/gateway-controller"), vec![istio], "theirs untouched");
    // Our own class is written (the sentinel: the class writer has listed
    // both), the guarded one never.
    let ours_accepted = support::eventually(Duration::from_secs(30), || async {
        let ours = classes.get(&gw.class).await.ok()?;
        (ours.data["status"]["conditions"][0]["status"] == "True").then_some(())
    })
    .await;
    assert!(ours_accepted.is_some(), "our class Accepted; log:\n{}", ctl.log_tail());
    let class_after = classes.get(&class).await.unwrap();
    assert_eq!(class_after.metadata.resource_version, class_before.metadata.resource_version, "class status not ours");
    assert_eq!(ctl.counted("xbackend_gatewayclass_status_writes_total", 1.0).await, Some(1.0), "ours only");
}

/// `--egress-policy networkpolicy` needs the DNS check: refused in one line.
#[test]
fn run_refuses_egress_policies_without_the_dns_check() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xbackend-controller"))
        .args(["run", "--no-leader-election", "--egress-policy", "networkpolicy", "--no-dns-check"])
        .env("KUBECONFIG", "/nonexistent")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("needs the DNS check") && stderr.lines().count() == 1, "{stderr}");
}
