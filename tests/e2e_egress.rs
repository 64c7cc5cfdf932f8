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
