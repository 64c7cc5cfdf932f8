//! Egress guardrails v2 end to end: names that reach inside the cluster or a
//! private network, and the addresses behind names, with a DNS server of the
//! test's own on 127.0.0.1 whose records change while the controller runs.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use support::dns::{Answer, DnsServer};
use support::{
    Channel, ControlPlane, Controller, TestGateway, apply_yaml, conditions_of, entries_of, wait_accepted, xbackend_api,
};

/// An XBackend to `hostname` behind Gateway `gw`, with its route.
fn backend(name: &str, hostname: &str) -> String {
    format!("{}{}", support::xbackend_yaml(name, hostname), support::route_yaml(name, &["gw"], name))
}

fn public(ip: &str) -> Answer {
    Answer::Addresses(vec![ip.parse().unwrap()], 1)
}

#[tokio::test]
async fn names_reaching_inside_the_cluster_or_a_private_network_are_refused() {
    let cp = ControlPlane::shared(Channel::Standard);
    let (client, ns) = cp.namespace("dns-names").await;
    support::install_crd(&client).await;
    let gw = TestGateway::create(&client, &ns, &["gw"]).await;
    // `app` is a real TLD, so `api.app` passes every rule until a Namespace `app` exists.
    let yaml = [
        backend("kubernetes", "kubernetes.default"),
        backend("own-ns", &format!("api.{ns}")),
        backend("printer", "printer.local"),
        backend("nas", "nas.lan"),
        backend("router", "router.home.arpa"),
        backend("app", "api.app"),
    ]
    .concat();
    apply_yaml(&client, Some(&ns), &yaml).await;
    let ctl = Controller::start(&cp.kubeconfig, &["--controller-name", &gw.controller_name]);
    ctl.wait_ready().await;
    let api = xbackend_api(&client, &ns);
    let ctl_name = &gw.controller_name;
    for name in ["kubernetes", "own-ns"] {
        let message = wait_accepted(&api, name, ctl_name, "HostnameNotAllowed").await;
        assert!(message.contains("Namespace in this cluster") && message.contains("search domains"), "{message}");
    }
    for name in ["printer", "router"] {
        let message = wait_accepted(&api, name, ctl_name, "HostnameNotAllowed").await;
        assert!(message.contains("special-use"), "{message}");
    }
    let message = wait_accepted(&api, "nas", ctl_name, "HostnameNotAllowed").await;
    assert!(message.contains("not a public suffix"), "{message}");
    wait_accepted(&api, "app", ctl_name, "Accepted").await;

    // Creating Namespace `app` re-judges exactly the names it captures; removing it lets them go.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let app: Namespace = serde_json::from_value(json!({"metadata": {"name": "app"}})).unwrap();
    namespaces.create(&PostParams::default(), &app).await.expect("create namespace app");
    let message = wait_accepted(&api, "app", ctl_name, "HostnameNotAllowed").await;
    assert!(message.contains("ends in app"), "{message}");
    namespaces.delete("app", &DeleteParams::default()).await.expect("delete namespace app");
    // No namespace controller runs here: finish the deletion as it would.
    let finalized =
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "app"}, "spec": {"finalizers": []}});
    let _ = namespaces.replace_subresource("finalize", "app", &PostParams::default(), &finalized).await;
    wait_accepted(&api, "app", ctl_name, "Accepted").await;
}

#[tokio::test]
async fn resolved_addresses_are_checked_and_rechecked_at_the_ttl() {
    let cp = ControlPlane::shared(Channel::Standard);
    let (client, ns) = cp.namespace("dns-addresses").await;
    support::install_crd(&client).await;
    let gw = TestGateway::create(&client, &ns, &["gw"]).await;
    let dns = DnsServer::start().await;
    dns.set("flip.example.net", public("93.184.215.14"));
    dns.set("metadata-alias.example.net", Answer::Alias("kubernetes.default.svc.cluster.local".into(), 1));
    dns.set("mapped.example.net", Answer::Addresses(vec!["::ffff:127.0.0.1".parse().unwrap()], 1));
    dns.set("v6.example.net", Answer::Addresses(vec!["2606:4700:4700::1111".parse().unwrap()], 1));
    dns.set("chain.example.net", Answer::Alias("cdn.example.org".into(), 1));
    dns.set("cdn.example.org", public("10.1.2.3"));
    dns.set("flaky.example.net", public("1.1.1.1"));
    dns.set("shared.example.net", public("8.8.8.8"));
    dns.set("loopback.example.net", public("127.0.0.1"));
    // Answers after the first write stopped waiting (2 s) but within the
    // resolver's 3 s timeout: the XBackend must be judged again once it comes.
    dns.set("slow.example.net", public("127.0.0.1"));
    dns.delay("slow.example.net", Duration::from_millis(2500));
    let yaml = [
        backend("flip", "flip.example.net"),
        backend("alias", "metadata-alias.example.net"),
        backend("mapped", "mapped.example.net"),
        backend("v6", "v6.example.net"),
        backend("chain", "chain.example.net"),
        backend("flaky", "flaky.example.net"),
        backend("shared-a", "shared.example.net"),
        backend("shared-b", "shared.example.net"),
        backend("slow", "slow.example.net"),
    ]
    .concat();
    apply_yaml(&client, Some(&ns), &yaml).await;

    let server = dns.flag();
    let args = ["--controller-name", &gw.controller_name, "--dns-check", "--dns-server", &server];
    let ctl = Controller::start(&cp.kubeconfig, &[&args[..], &["--dns-min-ttl", "1", "--dns-max-ttl", "2"]].concat());
    ctl.wait_ready().await;
    let api = xbackend_api(&client, &ns);
    let ctl_name = &gw.controller_name;

    wait_accepted(&api, "flip", ctl_name, "Accepted").await;
    wait_accepted(&api, "v6", ctl_name, "Accepted").await;
    wait_accepted(&api, "shared-a", ctl_name, "Accepted").await;
    wait_accepted(&api, "shared-b", ctl_name, "Accepted").await;
    let message = wait_accepted(&api, "alias", ctl_name, "AddressNotAllowed").await;
    assert!(message.contains("CNAME") && message.contains("kubernetes.default.svc.cluster.local"), "{message}");
    let message = wait_accepted(&api, "mapped", ctl_name, "AddressNotAllowed").await;
    assert!(message.contains("::ffff:127.0.0.1") && message.contains("IPv4-mapped"), "{message}");
    let message = wait_accepted(&api, "chain", ctl_name, "AddressNotAllowed").await;
    assert!(message.contains("10.1.2.3") && message.contains("10.0.0.0/8"), "{message}");
    wait_accepted(&api, "flaky", ctl_name, "Accepted").await;
    let message = wait_accepted(&api, "slow", ctl_name, "AddressNotAllowed").await;
    assert!(message.contains("127.0.0.1"), "a first answer slower than the first write is still judged: {message}");
    let slow = ctl.metric("xbackend_dns_slow_first_lookups_total");
    assert!(slow.is_some_and(|n| n >= 1.0), "the reconcile that stopped waiting is counted: {slow:?}");

    // A record flipped to the metadata endpoint after acceptance is caught within the TTL, and released.
    dns.set("flip.example.net", public("169.254.169.254"));
    let message = wait_accepted(&api, "flip", ctl_name, "AddressNotAllowed").await;
    assert!(
        message.contains("flip.example.net") && message.contains("169.254.169.254") && message.contains("metadata"),
        "{message}"
    );
    dns.set("flip.example.net", public("93.184.215.14"));
    wait_accepted(&api, "flip", ctl_name, "Accepted").await;

    // Failures never flip a verdict. Sentinel: a flip of another name is seen
    // after several failed re-resolutions of flaky.
    dns.set("flaky.example.net", Answer::ServFail);
    let failed = support::eventually(Duration::from_secs(20), || async {
        ctl.metric("xbackend_dns_lookups_total{result=\"servfail\"}").filter(|n| *n >= 4.0)
    })
    .await;
    assert!(failed.is_some(), "servfail lookups are counted; log:\n{}", ctl.log_tail());
    dns.set("flip.example.net", public("127.0.0.1"));
    wait_accepted(&api, "flip", ctl_name, "AddressNotAllowed").await;
    wait_accepted(&api, "flaky", ctl_name, "Accepted").await;
    dns.set("flaky.example.net", Answer::Silence);
    dns.set("flip.example.net", public("93.184.215.14"));
    wait_accepted(&api, "flip", ctl_name, "Accepted").await;
    wait_accepted(&api, "flaky", ctl_name, "Accepted").await;

    // One lookup loop per distinct hostname, however many XBackends share it:
    // the name two XBackends use is asked about as often as one only v6 uses.
    let (shared, single) = (dns.queries("shared.example.net"), dns.queries("v6.example.net"));
    assert!(shared >= 4 && shared <= single + 4, "shared.example.net asked {shared} times, v6.example.net {single}");

    // A new backend that resolves to a denied address is never shown Accepted=True
    // first: every version of it the apiserver stores is watched from before its creation.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (listed, watching) = tokio::sync::oneshot::channel();
    let watch = {
        let (api, seen, ctl_name) = (api.clone(), seen.clone(), ctl_name.clone());
        tokio::spawn(async move {
            use futures::StreamExt;
            use kube::runtime::watcher::Event;
            let config = kube::runtime::watcher::Config::default().fields("metadata.name=loopback");
            let mut stream = kube::runtime::watcher(api, config).boxed();
            let mut listed = Some(listed);
            while let Some(Ok(event)) = stream.next().await {
                if matches!(event, Event::InitDone) {
                    listed.take().map(|listed| listed.send(()));
                }
                if let Event::Apply(o) | Event::InitApply(o) = event {
                    for entry in entries_of(&o, "ancestors", &ctl_name) {
                        seen.lock()
                            .unwrap()
                            .extend(conditions_of(&entry).into_iter().filter(|c| c.0 == "Accepted").map(|c| c.2));
                    }
                }
            }
        })
    };
    // The watch has listed (nothing yet): every later version reaches it.
    tokio::time::timeout(Duration::from_secs(30), watching).await.expect("watch listed").unwrap();
    apply_yaml(&client, Some(&ns), &backend("loopback", "loopback.example.net")).await;
    let message = wait_accepted(&api, "loopback", ctl_name, "AddressNotAllowed").await;
    assert!(message.contains("127.0.0.1") && message.contains("loopback"), "{message}");
    support::eventually(Duration::from_secs(10), || async { (!seen.lock().unwrap().is_empty()).then_some(()) }).await;
    watch.abort();
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty() && seen.iter().all(|r| r == "AddressNotAllowed"), "Accepted reasons stored: {seen:?}");
}

#[tokio::test]
async fn the_cluster_service_range_is_denied_even_inside_an_allowed_range() {
    let cp = ControlPlane::shared(Channel::Standard);
    let (client, ns) = cp.namespace("dns-service-cidr").await;
    support::install_crd(&client).await;
    let gw = TestGateway::create(&client, &ns, &["gw"]).await;
    let dns = DnsServer::start().await;
    // The test apiserver's ServiceCIDR `kubernetes` is 10.96.0.0/16.
    dns.set("to-service.example.net", public("10.96.0.10"));
    dns.set("egress-proxy.example.net", public("10.1.2.3"));
    let yaml = [backend("to-service", "to-service.example.net"), backend("proxy", "egress-proxy.example.net")].concat();
    apply_yaml(&client, Some(&ns), &yaml).await;
    let server = dns.flag();
    let args = [
        "--controller-name",
        &gw.controller_name,
        "--dns-check",
        "--dns-server",
        &server,
        "--allow-cidr",
        "10.0.0.0/8",
    ];
    let ctl = Controller::start(&cp.kubeconfig, &args);
    ctl.wait_ready().await;
    let api = xbackend_api(&client, &ns);
    wait_accepted(&api, "proxy", &gw.controller_name, "Accepted").await;
    let message = wait_accepted(&api, "to-service", &gw.controller_name, "AddressNotAllowed").await;
    assert!(message.contains("10.96.0.0/16") && message.contains("ServiceCIDR kubernetes"), "{message}");
}
