//! Egress enforcement on the real apiserver (issue 19): with `--egress-policy
//! networkpolicy` the controller keeps one NetworkPolicy per judged Gateway
//! that allows its data plane exactly the vetted addresses of its Accepted
//! XBackends, follows rebinding at once, puts edits back, deletes what should
//! not stand, never touches others', and writes nothing on restart.

mod support;

use std::time::Duration;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use support::dns::{Answer, DnsServer};
use support::{Channel, ControlPlane, Controller, TestGateway, apply_yaml, route_yaml, xbackend_yaml};

const OWNED: &str = "gateway.networking.x-k8s.io/egress-for-gateway";

fn answer(ip: &str) -> Answer {
    Answer::Addresses(vec![ip.parse().unwrap()], 1)
}

/// The CIDRs of every ipBlock in the policy's rules.
fn cidrs(policy: &NetworkPolicy) -> Vec<String> {
    let value = serde_json::to_value(policy).unwrap();
    let rules = value["spec"]["egress"].as_array().cloned().unwrap_or_default();
    let peers = rules.iter().flat_map(|r| r["to"].as_array().cloned().unwrap_or_default());
    peers.filter_map(|p| p["ipBlock"]["cidr"].as_str().map(str::to_string)).collect()
}

async fn wait_policy(
    api: &Api<NetworkPolicy>,
    name: &str,
    what: &str,
    ctl: &Controller,
    f: impl Fn(&NetworkPolicy) -> bool,
) -> NetworkPolicy {
    let found = support::eventually(Duration::from_secs(30), || async {
        let policy = api.get_opt(name).await.ok()??;
        f(&policy).then_some(policy)
    })
    .await;
    if let Some(policy) = found {
        return policy;
    }
    let now = api.get_opt(name).await.ok().flatten().map(|p| cidrs(&p));
    panic!("NetworkPolicy {name}: timed out waiting for {what}; ipBlocks now {now:?}; log:\n{}", ctl.log_tail())
}

#[tokio::test]
async fn policies_follow_the_vetted_addresses_and_nothing_else() {
    let cp = ControlPlane::shared(Channel::Standard);
    let (client, ns) = cp.namespace("egress").await;
    support::install_crd(&client).await;
    let gw = TestGateway::create(&client, &ns, &["gw"]).await;
    let dns = DnsServer::start().await;
    dns.set("api.example.net", answer("93.184.215.14"));
    dns.set("other.example.net", answer("93.184.215.20"));
    let yaml = [
        xbackend_yaml("api", "api.example.net"),
        route_yaml("api", &["gw"], "api"),
        // Someone else's NetworkPolicy, and a stale one of ours for a Gateway that is gone.
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: theirs}\nspec: {podSelector: {}, policyTypes: [Egress]}\n".to_string(),
        format!("---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: xbackend-egress-gone, labels: {{{OWNED}: gone}}}}\nspec: {{podSelector: {{}}, policyTypes: [Egress]}}\n"),
    ]
    .concat();
    apply_yaml(&client, Some(&ns), &yaml).await;
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
    let theirs_before = policies.get("theirs").await.unwrap();

    let server = dns.flag();
    let args = [
        "--controller-name",
        &gw.controller_name,
        "--dns-check",
        "--dns-server",
        &server,
        "--dns-min-ttl",
        "1",
        "--dns-max-ttl",
        "2",
        "--egress-policy",
        "networkpolicy",
    ];
    let ctl = Controller::start(&cp.kubeconfig, &args);
    ctl.wait_ready().await;
    let name = "xbackend-egress-gw";
    let policy = wait_policy(&policies, name, "api's address", &ctl, |p| cidrs(p) == ["93.184.215.14/32"]).await;
    let value = serde_json::to_value(&policy).unwrap();
    let gateway = support::dynamic(&client, &ns, "gateway.networking.k8s.io", "v1", "Gateway").get("gw").await.unwrap();
    assert_eq!(value["metadata"]["ownerReferences"][0]["uid"], json!(gateway.metadata.uid), "owned by the Gateway");
    assert_eq!(value["metadata"]["labels"][OWNED], "gw");
    assert_eq!(value["spec"]["podSelector"], json!({"matchLabels": {"gateway.networking.k8s.io/gateway-name": "gw"}}));
    assert_eq!(value["spec"]["egress"][2]["ports"], json!([{"port": 443, "protocol": "TCP"}]));
    let gone = support::eventually(Duration::from_secs(30), || async {
        policies.get_opt("xbackend-egress-gone").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(gone.is_some(), "ours without a judged Gateway is deleted");

    // An edit of ours is put back.
    let mut edited = value.clone();
    edited["spec"]["egress"][2]["to"] = json!([{"ipBlock": {"cidr": "0.0.0.0/0"}}]);
    policies.replace(name, &PostParams::default(), &serde_json::from_value(edited).unwrap()).await.unwrap();
    wait_policy(&policies, name, "the edit put back", &ctl, |p| cidrs(p) == ["93.184.215.14/32"]).await;

    // Rebinding to the metadata address: rejected, and its addresses leave at once.
    dns.set("api.example.net", answer("169.254.169.254"));
    wait_policy(&policies, name, "no address for a rejected XBackend", &ctl, |p| cidrs(p).is_empty()).await;
    // Back to a public address: allowed again.
    dns.set("api.example.net", answer("93.184.215.15"));
    wait_policy(&policies, name, "the new address", &ctl, |p| cidrs(p) == ["93.184.215.15/32"]).await;

    // A second XBackend adds its rule; deleting it takes the rule away.
    apply_yaml(
        &client,
        Some(&ns),
        &[xbackend_yaml("other", "other.example.net"), route_yaml("other", &["gw"], "other")].concat(),
    )
    .await;
    wait_policy(&policies, name, "both", &ctl, |p| cidrs(p) == ["93.184.215.15/32", "93.184.215.20/32"]).await;
    support::xbackend_api(&client, &ns).delete("other", &DeleteParams::default()).await.unwrap();
    wait_policy(&policies, name, "other gone", &ctl, |p| cidrs(p) == ["93.184.215.15/32"]).await;
    // An evaluator we did not write reads the objects the controller wrote.
    check_with_nca(&policies, &ns).await;

    // Someone else's policy lets the same Pods go anywhere: told on the Gateway.
    let open = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: open-egress}\nspec: {podSelector: {}, policyTypes: [Egress], egress: [{}]}\n";
    apply_yaml(&client, Some(&ns), open).await;
    let events = support::dynamic(&client, &ns, "events.k8s.io", "v1", "Event");
    let warned = support::eventually(Duration::from_secs(30), || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| e.data["reason"] == "EgressPolicyWidened" && e.data["regarding"]["name"] == "gw")
    })
    .await;
    let warned = warned.unwrap_or_else(|| panic!("a Warning Event on the Gateway; log:\n{}", ctl.log_tail()));
    assert_eq!(warned.data["type"], "Warning");
    assert!(warned.data["note"].as_str().unwrap().contains("open-egress"), "{}", warned.data["note"]);
    assert_eq!(ctl.metric("xbackend_egress_widened_gateways"), Some(1.0));
    policies.delete("open-egress", &DeleteParams::default()).await.unwrap();
    let cleared = support::eventually(Duration::from_secs(30), || async {
        (ctl.metric("xbackend_egress_widened_gateways")? == 0.0).then_some(())
    })
    .await;
    assert!(cleared.is_some(), "the gauge follows");
    let theirs_after = policies.get("theirs").await.unwrap();
    assert_eq!(theirs_after.metadata.resource_version, theirs_before.metadata.resource_version, "never touched");

    // A restart writes nothing: the sentinel is a new Gateway's policy, the
    // only write after the restart.
    assert_eq!(ctl.terminate(), Some(0));
    let ctl = Controller::start(&cp.kubeconfig, &args);
    ctl.wait_ready().await;
    apply_yaml(&client, Some(&ns), &support::gateway_yaml("gw2", &gw.class)).await;
    wait_policy(&policies, "xbackend-egress-gw2", "the new Gateway's policy", &ctl, |_| true).await;
    let writes = ctl.counted("xbackend_egress_policy_writes_total", 1.0).await;
    assert_eq!(writes, Some(1.0), "only the new Gateway's policy was written; log:\n{}", ctl.log_tail());
    let kept = policies.get(name).await.unwrap();
    assert_eq!(cidrs(&kept), ["93.184.215.15/32"]);
    // Addresses per Gateway without a label per Gateway: the count, the sum and the largest.
    let gauges = ["xbackend_egress_gateways", "xbackend_egress_addresses", "xbackend_egress_addresses_max_per_gateway"];
    assert_eq!(gauges.map(|g| ctl.metric(g)), [Some(2.0), Some(1.0), Some(1.0)], "gw has one address, gw2 none");

    // The Gateway deleted: no garbage collector runs here, so the writer removes its policy.
    let gateways = support::dynamic(&client, &ns, "gateway.networking.k8s.io", "v1", "Gateway");
    gateways.delete("gw2", &DeleteParams::default()).await.unwrap();
    let removed = support::eventually(Duration::from_secs(30), || async {
        policies.get_opt("xbackend-egress-gw2").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(removed.is_some(), "log:\n{}", ctl.log_tail());
}

/// network-config-analyzer over the live objects of ours: the gateway Pod may
/// reach api's vetted address on 443 and nothing else outside the cluster.
async fn check_with_nca(policies: &Api<NetworkPolicy>, ns: &str) {
    let dir = support::tempdir("egress-nca");
    let ours = policies.list(&kube::api::ListParams::default().labels(OWNED)).await.unwrap();
    let documents: String = ours
        .items
        .iter()
        .map(|p| {
            let mut value = serde_json::to_value(p).unwrap();
            value["metadata"] = json!({"name": p.metadata.name, "namespace": p.metadata.namespace});
            format!(
                "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n{}",
                serde_yaml_ng::to_string(&json!({"metadata": value["metadata"], "spec": value["spec"]})).unwrap()
            )
        })
        .collect();
    std::fs::write(dir.join("policies.yaml"), documents).unwrap();
    let topology = format!(
        "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: kube-system}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: gw-pod, namespace: {ns}, labels: {{gateway.networking.k8s.io/gateway-name: gw}}}}\nspec: {{containers: [{{name: c, image: x}}]}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: kube-dns-0, namespace: kube-system, labels: {{k8s-app: kube-dns}}}}\nspec: {{containers: [{{name: c, image: x}}]}}\n"
    );
    std::fs::write(dir.join("topology.yaml"), topology).unwrap();
    let map =
        support::nca::Connectivity::of(&format!("{ns}/gw-pod"), &dir.join("policies.yaml"), &dir.join("topology.yaml"));
    let ip = |s: &str| -> std::net::IpAddr { s.parse().unwrap() };
    for (got, want, what) in [
        (map.allows_address(ip("93.184.215.15"), "TCP", 443), true, "api's vetted address"),
        (map.allows_address(ip("93.184.215.15"), "TCP", 80), false, "another port"),
        (
            map.allows_address(ip("93.184.215.14"), "TCP", 443),
            false,
            "api's address before the rebinding (rejected since)",
        ),
        (map.allows_address(ip("169.254.169.254"), "TCP", 443), false, "the metadata address"),
        (map.allows_pod("kube-system/kube-dns-0", "UDP", 53), true, "DNS"),
    ] {
        assert_eq!(got, want, "{what}; nca map:\n{}", map.text);
    }
}

/// The Events with `reason` about object `name`, as their notes.
async fn event_notes(client: &kube::Client, ns: &str, reason: &str, name: &str, at_least: usize) -> Vec<String> {
    let events = support::dynamic(client, ns, "events.k8s.io", "v1", "Event");
    let found = support::eventually(Duration::from_secs(30), || async {
        let list = events.list(&Default::default()).await.ok()?;
        let notes: Vec<String> = (list.items.iter())
            .filter(|e| e.data["reason"] == reason && e.data["regarding"]["name"] == name)
            .filter(|e| reason != "EgressReferenceRefused" || e.data["related"]["kind"] == "Service")
            .filter_map(|e| e.data["note"].as_str().map(str::to_string))
            .collect();
        (notes.len() >= at_least).then_some(notes)
    })
    .await;
    found.unwrap_or_default()
}

/// `--egress-cluster routes` (issue 28): the Gateway's data plane may reach
/// exactly what its route names: a Service's Pods on the target port (a
/// named one stays named), an ExternalName's vetted answer, a selectorless
/// Service's vetted EndpointSlice address; what is refused (a Pod address by
/// hand, a missing Service or port, another namespace without a grant)
/// allows nothing and is told on the route. No rule for the whole cluster.
#[tokio::test]
async fn routes_mode_allows_what_the_routes_name_and_tells_what_it_refuses() {
    let cp = ControlPlane::shared(Channel::Standard);
    let (client, ns) = cp.namespace("egress-routes").await;
    let (_, other) = cp.namespace("egress-routes-other").await;
    support::install_crd(&client).await;
    let gw = TestGateway::create(&client, &ns, &["gw"]).await;
    let dns = DnsServer::start().await;
    dns.set("ext.example.net", answer("93.184.215.40"));
    let services = "
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{name: http, port: 80, targetPort: http}]}
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec: {type: ExternalName, externalName: ext.example.net, ports: [{port: 443}]}
---
apiVersion: v1
kind: Service
metadata: {name: hand}
spec: {ports: [{name: https, port: 443, targetPort: 8443}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: hand-1, labels: {kubernetes.io/service-name: hand}}
addressType: IPv4
endpoints: [{addresses: [93.184.215.50]}, {addresses: [10.244.9.9]}]
ports: [{name: https, port: 8443, protocol: TCP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop}
spec:
  parentRefs: [{name: gw}]
  rules:
  - backendRefs: [{name: web, port: 80}, {name: ext, port: 443}, {name: hand, port: 443}]
  - backendRefs: [{name: missing, port: 80}, {name: web, port: 81}]
";
    let elsewhere = format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: far}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n  - backendRefs: [{{name: db, namespace: {other}, port: 5432}}]\n"
    );
    apply_yaml(&client, Some(&ns), &format!("{services}{elsewhere}")).await;
    let db = "---\napiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec: {selector: {app: db}, ports: [{port: 5432}]}\n";
    apply_yaml(&client, Some(&other), db).await;

    let server = dns.flag();
    let needs = format!("{}=none", gw.class);
    let args = [
        "--controller-name",
        &gw.controller_name,
        "--dns-check",
        "--dns-server",
        &server,
        "--dns-min-ttl",
        "1",
        "--dns-max-ttl",
        "2",
        "--egress-policy",
        "networkpolicy",
        "--egress-cluster",
        "routes",
        "--egress-needs",
        &needs,
    ];
    let ctl = Controller::start(&cp.kubeconfig, &args);
    ctl.wait_ready().await;
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
    let both = |p: &NetworkPolicy| cidrs(p) == ["93.184.215.40/32", "93.184.215.50/32"];
    let policy =
        wait_policy(&policies, "xbackend-egress-gw", "the ExternalName's and the slice's addresses", &ctl, both).await;
    let value = serde_json::to_value(&policy).unwrap();
    let rules = value["spec"]["egress"].as_array().unwrap().clone();
    assert!(
        rules.iter().all(|r| r["to"] != json!([{"namespaceSelector": {}}])),
        "no rule for the whole cluster: {rules:#?}"
    );
    let web = rules.iter().find(|r| r["to"][0]["podSelector"]["matchLabels"]["app"] == "web").expect("web's Pods");
    assert_eq!(web["ports"], json!([{"port": "http", "protocol": "TCP"}]), "the named target port");
    assert_eq!(web["to"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], json!(ns));
    let ext = rules.iter().find(|r| cidrs_of(r) == ["93.184.215.40/32"]).unwrap();
    assert_eq!(ext["ports"], json!([{"port": 443, "protocol": "TCP"}]), "the referenced port");
    let hand = rules.iter().find(|r| cidrs_of(r) == ["93.184.215.50/32"]).unwrap();
    assert_eq!(hand["ports"], json!([{"port": 8443, "protocol": "TCP"}]), "the slice's port");
    assert!(!serde_json::to_string(&value).unwrap().contains("10.244.9.9"), "the Pod address by hand is refused");

    // One Event per refused Service, related to it: the recorder folds
    // Events of one object, reason and related object, first note kept.
    let refused = event_notes(&client, &ns, "EgressReferenceRefused", "shop", 3).await;
    let said = |what: &str| refused.iter().any(|n| n.contains(what));
    assert!(
        said("10.244.9.9") && said("which does not exist") && said("no such port"),
        "{refused:#?}; log:\n{}",
        ctl.log_tail()
    );
    let far = event_notes(&client, &ns, "EgressReferenceRefused", "far", 1).await;
    assert!(far.iter().any(|n| n.contains("no ReferenceGrant")), "{far:#?}");

    // A grant opens the other namespace; the ExternalName rebinding to the
    // metadata address closes its rule; deleting the route closes the rest.
    let grant = format!(
        "---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: routes}}\nspec:\n  from: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: {ns}}}]\n  to: [{{group: \"\", kind: Service}}]\n"
    );
    apply_yaml(&client, Some(&other), &grant).await;
    let to_db = |p: &NetworkPolicy| {
        let v = serde_json::to_value(p).unwrap();
        v["spec"]["egress"].as_array().unwrap().iter().any(|r| r["to"][0]["podSelector"]["matchLabels"]["app"] == "db")
    };
    wait_policy(&policies, "xbackend-egress-gw", "db's Pods once granted", &ctl, to_db).await;
    dns.set("ext.example.net", answer("169.254.169.254"));
    wait_policy(&policies, "xbackend-egress-gw", "the rebound name's address gone", &ctl, |p| {
        cidrs(p) == ["93.184.215.50/32"]
    })
    .await;
    support::dynamic(&client, &ns, "gateway.networking.k8s.io", "v1", "HTTPRoute")
        .delete("shop", &DeleteParams::default())
        .await
        .unwrap();
    let only_far = |p: &NetworkPolicy| cidrs(p).is_empty() && to_db(p);
    wait_policy(&policies, "xbackend-egress-gw", "only the far route's Service left", &ctl, only_far).await;
}

/// The CIDRs of one rule's ipBlocks.
fn cidrs_of(rule: &serde_json::Value) -> Vec<String> {
    let peers = rule["to"].as_array().cloned().unwrap_or_default();
    peers.iter().filter_map(|p| p["ipBlock"]["cidr"].as_str().map(str::to_string)).collect()
}
