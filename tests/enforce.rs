//! Egress enforcement on a real enforcer (issue 19): SIG Network's
//! kube-network-policies (pinned, hack/install-kube-network-policies.sh)
//! enforces the NetworkPolicies the controller writes (in guard mode: the
//! Gateways are other implementations', one with its proxy beside it as
//! Istio runs it, one in the implementation's namespace as Envoy Gateway
//! does: deploy/README.md's two recipes), for a "gateway Pod"
//! that is a network namespace this test creates, registered through the API.
//! "External hosts" are network namespaces with the addresses the test's DNS
//! server hands out. Nothing outside these namespaces and 127.0.0.1 is used.
//!
//! Topology: every namespace hangs off a "node" namespace by a veth pair; the
//! node routes between them (forwarding on inside it only) and runs the
//! enforcer, which reaches the apiserver on the host's 127.0.0.1 through a
//! unix-socket bridge. Needs root (network namespaces, iptables).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;
use support::dns::{Answer, DnsServer};
use support::{Channel, ControlPlane, Controller, TestGateway, apply_yaml, route_yaml, xbackend_yaml};

const QUEUE: &str = "100";
const NODE_NAME: &str = "test-node";

/// Accepts and closes TCP connections on each port given (an "external host").
const LISTENER: &str = r#"
import socket, sys, threading
def serve(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(64)
    while True:
        c, _ = s.accept(); c.close()
for p in sys.argv[1:]:
    threading.Thread(target=serve, args=(int(p),), daemon=True).start()
threading.Event().wait()
"#;

/// Connects once (1 s timeout): exit 0 when the connection is made.
const PROBE: &str = "import socket, sys\nsocket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()";

/// 127.0.0.1:PORT inside the node namespace -> a unix socket the test serves.
const BRIDGE: &str = r#"
import socket, sys, threading
port, path = int(sys.argv[1]), sys.argv[2]
def pipe(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d: break
            b.sendall(d)
    except OSError: pass
    for s in (a, b):
        try: s.shutdown(socket.SHUT_RDWR)
        except OSError: pass
def handle(c):
    u = socket.socket(socket.AF_UNIX); u.connect(path)
    threading.Thread(target=pipe, args=(c, u), daemon=True).start(); pipe(u, c)
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", port)); l.listen(64)
while True:
    c, _ = l.accept(); threading.Thread(target=handle, args=(c,), daemon=True).start()
"#;

fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("run {args:?}: {e}"))
}

fn must(args: &[&str]) {
    let out = sh(args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The network namespaces, processes and folders of one run; all removed on drop.
struct Net {
    prefix: String,
    children: Vec<Child>,
    dir: PathBuf,
}

impl Net {
    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    fn exec(&self, ns: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(ns)]).args(args);
        cmd
    }

    fn run(&self, ns: &str, args: &[&str]) {
        let out = self.exec(ns, args).output().unwrap();
        assert!(out.status.success(), "{ns}: {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn spawn(&mut self, ns: &str, args: &[&str], log: &str) {
        let log = std::fs::File::create(self.dir.join(log)).unwrap();
        let child = self.exec(ns, args).stdout(Stdio::null()).stderr(log).spawn().unwrap();
        self.children.push(child);
    }

    /// A leaf namespace on its own /24, `address` inside, `.1` on the node side.
    fn leaf(&self, name: &str, address: &str, gateway: &str, prefix: u8) {
        must(&["ip", "netns", "add", &self.ns(name)]);
        self.run(name, &["ip", "link", "set", "lo", "up"]);
        let node_side = format!("v{}", name);
        must(&[
            "ip",
            "link",
            "add",
            &node_side,
            "netns",
            &self.ns("node"),
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &self.ns(name),
        ]);
        self.run("node", &["ip", "addr", "add", &format!("{gateway}/{prefix}"), "dev", &node_side]);
        self.run("node", &["ip", "link", "set", &node_side, "up"]);
        self.run(name, &["ip", "addr", "add", &format!("{address}/{prefix}"), "dev", "eth0"]);
        self.run(name, &["ip", "link", "set", "eth0", "up"]);
        self.run(name, &["ip", "route", "add", "default", "via", gateway]);
    }

    /// Whether a TCP connection from the gateway Pod to `ip:port` is made.
    fn connects(&self, ip: &str, port: u16) -> bool {
        self.connects_from("gwpod", ip, port)
    }

    /// Whether a TCP connection from the leaf `from` to `ip:port` is made.
    fn connects_from(&self, from: &str, ip: &str, port: u16) -> bool {
        self.exec(from, &["python3", "-c", PROBE, ip, &port.to_string()]).output().unwrap().status.success()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for name in ["gwpod", "egpod", "web", "ext1", "ext2", "meta", "node"] {
            let ns = self.ns(name);
            // Processes left in a namespace would keep it alive.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").arg(pid).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

/// The unix socket the node namespace's bridge connects to, relayed to the apiserver.
async fn serve_bridge(path: PathBuf, api_port: u16) {
    let listener = tokio::net::UnixListener::bind(&path).expect("bind the bridge socket");
    loop {
        let Ok((mut inner, _)) = listener.accept().await else { return };
        tokio::spawn(async move {
            if let Ok(mut outer) = tokio::net::TcpStream::connect(("127.0.0.1", api_port)).await {
                let _ = tokio::io::copy_bidirectional(&mut inner, &mut outer).await;
            }
        });
    }
}

/// The apiserver port, token and CA of the control plane's kubeconfig.
fn credentials(kubeconfig: &Path) -> (u16, String, Vec<u8>) {
    let text = std::fs::read_to_string(kubeconfig).unwrap();
    let config: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
    let server = config["clusters"][0]["cluster"]["server"].as_str().unwrap();
    let port = server.rsplit(':').next().unwrap().trim_end_matches('/').parse().unwrap();
    let token = config["users"][0]["user"]["token"].as_str().expect("a token user").to_string();
    // ByteString decodes the base64 of the JSON form.
    let ca: k8s_openapi::ByteString =
        serde_json::from_value(config["clusters"][0]["cluster"]["certificate-authority-data"].clone()).unwrap();
    (port, token, ca.0)
}

/// A GatewayClass of another implementation (`controller`) and a Gateway
/// `gateway` of it in `ns`; returns the class name.
async fn foreign_gateway(client: &kube::Client, ns: &str, prefix: &str, controller: &str, gateway: &str) -> String {
    let class = support::unique_name(prefix);
    let yaml = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: {class}}}\nspec: {{controllerName: {controller}}}\n{}",
        support::gateway_yaml(gateway, &class)
    );
    apply_yaml(client, Some(ns), &yaml).await;
    class
}

async fn register_pod(pods: &Api<Pod>, name: &str, labels: serde_json::Value, ip: &str) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": NODE_NAME, "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]}
    }))
    .unwrap();
    pods.create(&Default::default(), &pod).await.unwrap_or_else(|e| panic!("create Pod {name}: {e}"));
    let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
}

/// Polls until the gateway Pod's connection to `ip:port` is made (or not).
async fn until(net: &Net, ip: &str, port: u16, open: bool, what: &str, ctl: &Controller) {
    for _ in 0..30 {
        if net.connects(ip, port) == open {
            return;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("{what}: {ip}:{port} never became {}; log:\n{}", if open { "reachable" } else { "blocked" }, ctl.log_tail());
}

#[tokio::test]
async fn the_enforcer_allows_vetted_addresses_only_and_refuses_a_rebinding() {
    assert!(
        sh(&["id", "-u"]).stdout.starts_with(b"0"),
        "this test creates network namespaces and needs root (as `make test` runs here)"
    );
    let knp = support::tool("kube-network-policies");
    let cp = ControlPlane::shared(Channel::Standard);
    let (client, ns) = cp.namespace("enforce").await;
    support::install_crd(&client).await;
    // Guard mode: the Gateway belongs to another implementation's class.
    let gw = TestGateway::create(&client, &ns, &[]).await;
    let foreign = foreign_gateway(&client, &ns, "mesh", "istio.io/gateway-controller", "gw").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    register_pod(&pods, "gw-pod", json!({"gateway.networking.k8s.io/gateway-name": "gw"}), "10.244.1.2").await;
    register_pod(&pods, "web-0", json!({"app": "web"}), "10.244.2.2").await;
    // deploy/README.md's Envoy Gateway recipe: a Gateway "edge" of another
    // class whose proxy runs in the implementation's own namespace.
    let (_, eg_system) = cp.namespace("enforce-eg").await;
    let eg = foreign_gateway(&client, &ns, "eg", "gateway.envoyproxy.io/gatewayclass-controller", "edge").await;
    let envoy_labels = json!({"gateway.envoyproxy.io/owning-gateway-name": "edge", "gateway.envoyproxy.io/owning-gateway-namespace": ns});
    register_pod(&Api::namespaced(client.clone(), &eg_system), "envoy-edge", envoy_labels, "10.244.3.2").await;
    let eg_plane = format!(
        "{eg}={eg_system}:gateway.envoyproxy.io/owning-gateway-name={{name}},gateway.envoyproxy.io/owning-gateway-namespace={{namespace}}"
    );

    // ---- the network ----
    let mut net =
        Net { prefix: format!("xbe{}", std::process::id()), children: Vec::new(), dir: support::tempdir("enforce") };
    must(&["ip", "netns", "add", &net.ns("node")]);
    net.run("node", &["ip", "link", "set", "lo", "up"]);
    net.run("node", &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    net.leaf("gwpod", "10.244.1.2", "10.244.1.1", 24);
    net.leaf("egpod", "10.244.3.2", "10.244.3.1", 24);
    net.leaf("web", "10.244.2.2", "10.244.2.1", 24);
    net.leaf("ext1", "192.0.2.10", "192.0.2.1", 24);
    net.leaf("ext2", "198.51.100.10", "198.51.100.1", 24);
    net.leaf("meta", "169.254.169.254", "169.254.169.1", 24);
    for (leaf, ports) in
        [("ext1", vec!["443", "8443"]), ("ext2", vec!["443"]), ("meta", vec!["443"]), ("web", vec!["8080"])]
    {
        let mut args = vec!["python3", "-c", LISTENER];
        args.extend(ports);
        net.spawn(leaf, &args, &format!("listen-{leaf}.log"));
    }
    // kube-network-policies queues new connections with an nftables `queue`
    // rule; where the kernel lacks nft_queue (this machine's does) that rule
    // fails, so the same diversion is made with the xtables NFQUEUE target.
    // Every verdict is still the enforcer's.
    for args in [
        vec![
            "iptables",
            "-t",
            "mangle",
            "-A",
            "POSTROUTING",
            "-m",
            "conntrack",
            "--ctstate",
            "ESTABLISHED,RELATED",
            "-j",
            "ACCEPT",
        ],
        vec![
            "iptables",
            "-t",
            "mangle",
            "-A",
            "POSTROUTING",
            "-s",
            "10.244.0.0/16",
            "-j",
            "NFQUEUE",
            "--queue-num",
            QUEUE,
        ],
    ] {
        net.run("node", &args);
    }

    // ---- the enforcer, in the node namespace, as if in-cluster ----
    let (api_port, token, ca) = credentials(&cp.kubeconfig);
    let sa = net.dir.join("run/secrets/kubernetes.io/serviceaccount");
    std::fs::create_dir_all(&sa).unwrap();
    std::fs::write(sa.join("token"), token).unwrap();
    std::fs::write(sa.join("ca.crt"), ca).unwrap();
    let socket = net.dir.join("api.sock");
    tokio::spawn(serve_bridge(socket.clone(), api_port));
    net.spawn("node", &["python3", "-c", BRIDGE, &api_port.to_string(), socket.to_str().unwrap()], "bridge.log");
    let script = format!(
        "mount --bind '{}' /run && exec env KUBERNETES_SERVICE_HOST=127.0.0.1 KUBERNETES_SERVICE_PORT={api_port} '{}' --hostname-override={NODE_NAME} --nfqueue-id={QUEUE} --metrics-bind-address=127.0.0.1:9080 --netfilter-bug-1766-fix=false -v=2",
        net.dir.join("run").display(),
        knp.display()
    );
    net.spawn("node", &["unshare", "-m", "sh", "-c", &script], "kube-network-policies.log");
    let bound = support::eventually(Duration::from_secs(30), || async {
        let out = net.exec("node", &["cat", "/proc/net/netfilter/nfnetlink_queue"]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).lines().any(|l| l.split_whitespace().next() == Some(QUEUE)).then_some(())
    })
    .await;
    let enforcer_log = || std::fs::read_to_string(net.dir.join("kube-network-policies.log")).unwrap_or_default();
    assert!(bound.is_some(), "the enforcer never bound its queue:\n{}", enforcer_log());

    // ---- the controller, its XBackends and their addresses ----
    let dns = DnsServer::start().await;
    dns.set("api.example.net", Answer::Addresses(vec!["192.0.2.10".parse().unwrap()], 1));
    let web = "---\napiVersion: gateway.networking.x-k8s.io/v1alpha1\nkind: XBackend\nmetadata: {name: web}\nspec:\n  type: EndpointSelector\n  port: {number: 8080}\n  endpointSelector: {matchLabels: {app: web}}\n";
    let yaml = [
        xbackend_yaml("api", "api.example.net"),
        route_yaml("api", &["gw"], "api"),
        route_yaml("api-edge", &["edge"], "api"),
        web.to_string(),
        route_yaml("web", &["gw"], "web"),
    ]
    .concat();
    apply_yaml(&client, Some(&ns), &yaml).await;
    let server = dns.flag();
    let ctl = Controller::start(
        &cp.kubeconfig,
        &[
            "--controller-name",
            &gw.controller_name,
            "--gateway-class",
            &foreign,
            "--gateway-class",
            &eg,
            "--egress-data-plane",
            &eg_plane,
            "--dns-check",
            "--dns-server",
            &server,
            "--dns-min-ttl",
            "1",
            "--dns-max-ttl",
            "2",
            // The test's "external hosts" live in documentation ranges.
            "--allow-cidr",
            "192.0.2.0/24",
            "--allow-cidr",
            "198.51.100.0/24",
            "--egress-policy",
            "networkpolicy",
            "--egress-policy-allow-cluster=false",
        ],
    );
    // The premise: with no policy yet, every listener answers.
    for (ip, port) in [("192.0.2.10", 8443), ("198.51.100.10", 443), ("169.254.169.254", 443)] {
        assert!(net.connects(ip, port), "{ip}:{port} answers before any policy");
    }
    assert!(net.connects_from("egpod", "198.51.100.10", 443), "the Envoy proxy reaches anything before any policy");
    ctl.wait_ready().await;
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
    let written = support::eventually(Duration::from_secs(60), || async {
        let policy = policies.get_opt("xbackend-egress-gw").await.ok()??;
        serde_json::to_string(&policy).ok()?.contains("192.0.2.10/32").then_some(())
    })
    .await;
    assert!(written.is_some(), "the controller wrote the policy; log:\n{}", ctl.log_tail());
    let xbackends = support::xbackend_api(&client, &ns);
    support::wait_for_xbackend(&xbackends, "api", "our entries for the foreign classes' Gateways", |o| {
        let ours = support::entries_of(o, "ancestors", &gw.controller_name);
        let accepted_behind = |name: &str| {
            ours.iter().any(|e| e["ancestorRef"]["name"] == name && e["conditions"][0]["status"] == "True")
        };
        ours.len() == 2 && accepted_behind("gw") && accepted_behind("edge")
    })
    .await;
    // The enforcer has it once another Pod's address stops answering.
    until(&net, "198.51.100.10", 443, false, "an address the policy never held", &ctl).await;

    // Vetted address on its port: reachable; the rest: not.
    until(&net, "192.0.2.10", 443, true, "api's vetted address", &ctl).await;
    until(&net, "10.244.2.2", 8080, true, "the EndpointSelector's Pod", &ctl).await;
    assert!(!net.connects("192.0.2.10", 8443), "the same host on another port");
    assert!(!net.connects("198.51.100.10", 443), "an address the policy never held");
    assert!(!net.connects("169.254.169.254", 443), "the metadata address");

    // The Envoy Gateway recipe: the policy stands in the proxy's namespace,
    // named for the Gateway, and holds that proxy to the same addresses.
    let eg_policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &eg_system);
    let eg_policy = format!("xbackend-egress-{ns}-edge");
    let written = support::eventually(Duration::from_secs(60), || async {
        let policy = eg_policies.get_opt(&eg_policy).await.ok()??;
        serde_json::to_string(&policy).ok()?.contains("192.0.2.10/32").then_some(())
    })
    .await;
    assert!(written.is_some(), "{eg_system}/{eg_policy} with api's address; log:\n{}", ctl.log_tail());
    let mut closed = false;
    for _ in 0..30 {
        closed = !net.connects_from("egpod", "198.51.100.10", 443);
        if closed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(closed, "the Envoy proxy reaches an address its policy never held");
    assert!(net.connects_from("egpod", "192.0.2.10", 443), "the Envoy proxy reaches api's vetted address");
    assert!(!net.connects_from("egpod", "192.0.2.10", 8443), "the Envoy proxy, same host on another port");

    // The record rebinds to the metadata address: whatever the proxy resolves,
    // the enforcer refuses it at once, asking nobody (before the controller reacts).
    dns.set("api.example.net", Answer::Addresses(vec!["169.254.169.254".parse().unwrap()], 1));
    assert!(!net.connects("169.254.169.254", 443), "the rebound address, before the controller reacts");
    // Then the XBackend is rejected and its address leaves the policy.
    until(&net, "192.0.2.10", 443, false, "a rejected XBackend's address", &ctl).await;
    assert!(!net.connects("169.254.169.254", 443), "the rebound address, after");

    // Flipping back opens it again; deleting the XBackend closes it.
    dns.set("api.example.net", Answer::Addresses(vec!["192.0.2.10".parse().unwrap()], 1));
    until(&net, "192.0.2.10", 443, true, "api back", &ctl).await;
    support::xbackend_api(&client, &ns).delete("api", &DeleteParams::default()).await.unwrap();
    until(&net, "192.0.2.10", 443, false, "a deleted XBackend's address", &ctl).await;
    assert!(net.connects("10.244.2.2", 8080), "the other XBackend keeps its rule");

    let log = enforcer_log();
    assert!(log.contains("verdict=\"drop\""), "the enforcer made the drops:\n{log}");
}
