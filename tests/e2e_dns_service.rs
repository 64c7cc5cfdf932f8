//! `--dns-service` end to end, in a network namespace of the test's own (root):
//! EndpointSlices refuse loopback addresses, so the DNS servers sit on its `lo`.

mod support;

use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::dns::{Answer, DnsServer};
use support::{Channel, ControlPlane, Controller, TestGateway, apply_yaml, wait_accepted, xbackend_api};

/// The test's thread (and what it starts from now on) moves to a new network
/// namespace with only `lo`, holding `addresses`.
fn own_network(addresses: &[&str]) {
    unsafe extern "C" {
        fn unshare(flags: i32) -> i32;
    }
    const CLONE_NEWNET: i32 = 0x4000_0000;
    // SAFETY: a plain system call on this thread; the namespace is per thread.
    let rc = unsafe { unshare(CLONE_NEWNET) };
    assert_eq!(rc, 0, "unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
    let ip = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().expect("run ip");
        assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    ip(&["link", "set", "lo", "up"]);
    for address in addresses {
        ip(&["addr", "add", &format!("{address}/32"), "dev", "lo"]);
    }
}

/// The Service `dns`'s slice `name`: one endpoint at `server`, ready or not.
fn slice(name: &str, server: &DnsServer, ready: bool) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": "dns"}},
        "addressType": "IPv4",
        "ports": [
            {"name": "dns-tcp", "protocol": "TCP", "port": server.addr.port()},
            {"name": "dns", "protocol": "UDP", "port": server.addr.port()},
        ],
        "endpoints": [{"addresses": [server.addr.ip().to_string()], "conditions": {"ready": ready}}],
    }))
    .unwrap()
}

/// `xbackend_dns_lookups_total` with `result="no_server"`.
fn no_server_lookups(ctl: &Controller) -> f64 {
    let (_, body) = ctl.http_get("/metrics").unwrap_or_default();
    (body.lines())
        .filter(|l| l.starts_with("xbackend_dns_lookups_total{") && l.contains("result=\"no_server\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn each_ready_endpoint_of_the_dns_service_is_asked_as_they_come_and_go() {
    let uid = Command::new("id").arg("-u").output().expect("id -u").stdout;
    assert!(uid.starts_with(b"0"), "this test creates a network namespace and needs root (as `make test` runs here)");
    // The control plane and the controller, started from this thread, live there too.
    own_network(&["10.96.53.1", "10.96.53.2"]);
    let a = DnsServer::start_at("10.96.53.1".parse::<IpAddr>().unwrap()).await;
    let b = DnsServer::start_at("10.96.53.2".parse::<IpAddr>().unwrap()).await;
    // Two replicas disagree: b hands out the metadata address.
    a.set("api.example.net", Answer::Addresses(vec!["93.184.215.14".parse().unwrap()], 1));
    b.set("api.example.net", Answer::Addresses(vec!["169.254.169.254".parse().unwrap()], 1));

    let cp = ControlPlane::shared(Channel::Standard);
    let (client, ns) = cp.namespace("dns-service").await;
    support::install_crd(&client).await;
    let gw = TestGateway::create(&client, &ns, &["gw"]).await;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    slices.create(&PostParams::default(), &slice("dns-a", &a, true)).await.expect("create slice dns-a");
    let yaml =
        format!("{}{}", support::xbackend_yaml("api", "api.example.net"), support::route_yaml("api", &["gw"], "api"));
    apply_yaml(&client, Some(&ns), &yaml).await;

    // A TTL of 300 s: every change below is seen because the server set
    // changed, not because an answer expired.
    let service = format!("{ns}/dns");
    let args = ["--controller-name", &gw.controller_name, "--dns-check", "--dns-service", &service];
    let ctl =
        Controller::start(&cp.kubeconfig, &[&args[..], &["--dns-min-ttl", "300", "--dns-max-ttl", "300"]].concat());
    ctl.wait_ready().await;
    let api = xbackend_api(&client, &ns);
    let name = &gw.controller_name;
    wait_accepted(&api, "api", name, "Accepted").await;
    assert_eq!(ctl.metric("xbackend_dns_servers"), Some(1.0), "one ready endpoint");
    // Accepted may come by name alone if the first answer is slow: wait for a's.
    let asked_a =
        support::eventually(Duration::from_secs(30), || async { (a.queries("api.example.net") > 0).then_some(()) })
            .await;
    assert!(asked_a.is_some() && b.queries("api.example.net") == 0, "only a is asked");

    // A second replica joins: it is asked at once, and its answer rejects the XBackend.
    slices.create(&PostParams::default(), &slice("dns-b", &b, true)).await.expect("create slice dns-b");
    wait_accepted(&api, "api", name, "AddressNotAllowed").await;
    assert!(b.queries("api.example.net") > 0, "b was asked");
    assert_eq!(ctl.metric("xbackend_dns_servers"), Some(2.0));

    // It turns unready: no longer asked, and a's answer alone accepts it again.
    let unready = json!({"endpoints": [{"addresses": ["10.96.53.2"], "conditions": {"ready": false}}]});
    slices.patch("dns-b", &PatchParams::default(), &Patch::Merge(&unready)).await.expect("mark dns-b unready");
    wait_accepted(&api, "api", name, "Accepted").await;
    let asked = b.queries("api.example.net");
    assert_eq!(ctl.metric("xbackend_dns_servers"), Some(1.0));

    // With no endpoint left, lookups fail with a clear reason and the verdict stands.
    slices.delete("dns-a", &DeleteParams::default()).await.expect("delete slice dns-a");
    let failed =
        support::eventually(Duration::from_secs(30), || async { (no_server_lookups(&ctl) > 0.0).then_some(()) }).await;
    assert!(failed.is_some(), "a lookup with no server was counted; log:\n{}", ctl.log_tail());
    assert_eq!(ctl.metric("xbackend_dns_servers"), Some(0.0));
    wait_accepted(&api, "api", name, "Accepted").await;
    assert_eq!(b.queries("api.example.net"), asked, "an unready endpoint is never asked");
    // The failure is counted, then logged: wait for the line.
    let logged = support::eventually(Duration::from_secs(10), || async {
        ctl.log_text().contains("has no ready endpoint").then_some(())
    })
    .await;
    assert!(logged.is_some(), "the log says why; log:\n{}", ctl.log_tail());
}
