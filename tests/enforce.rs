//! Egress enforcement on a real enforcer (issues 19 and 29): SIG Network's
//! kube-network-policies (pinned, hack/install-kube-network-policies.sh)
//! enforces the objects the controller writes, for a "gateway Pod" that is a
//! network namespace this test creates, registered through the API, in guard
//! mode (the Gateways are other implementations').
//!
//! - `--egress-policy networkpolicy`: NetworkPolicies, for a Gateway with its
//!   proxy beside it as Istio runs it and one in the implementation's
//!   namespace as Envoy Gateway does (deploy/README.md's two recipes); a
//!   NetworkPolicy of the namespace's owner that allows more widens them
//!   (NetworkPolicies add up), and the Gateway is told.
//! - `--egress-cluster routes`: in the cluster, the gateway Pod reaches only
//!   the Services its routes name (through the ClusterIP and directly, on
//!   the target port), ExternalName Services' vetted answers and its
//!   control plane (Istio's preset); neither vector of CVE-2021-25740.
//! - `--egress-policy adminnetworkpolicy` (the enforcer with
//!   `--admin-network-policy`): the same promises hold although a
//!   NetworkPolicy allows the gateway Pod every destination: the admin tier
//!   is evaluated first and its Deny is final.
//!
//! "External hosts" are network namespaces with the addresses the test's DNS
//! server hands out. Nothing outside these namespaces and 127.0.0.1 is used.
//!
//! Topology (one per test, `Net`): every namespace hangs off a "node"
//! namespace by a veth pair; the node routes between them (forwarding on
//! inside it only) and runs the enforcer, which reaches the apiserver on the
//! host's 127.0.0.1 through a unix-socket bridge. Needs root (network
//! namespaces, iptables).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::discovery::ApiResource;
use serde_json::json;
use support::dns::{Answer, DnsServer};
use support::{Channel, ControlPlane, Controller, TestGateway, apply_yaml, route_yaml, xbackend_yaml};

/// The enforcer's NFQUEUE (in each test's own node namespace).
const QUEUE: u16 = 100;
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

/// Connects once: exit 0 when the connection is made. 2.5 s lets the
/// kernel's first SYN retransmission (at 1 s) through: with 1 s, one SYN
/// the enforcer's queue answered late on busy cores read as "blocked" in CI.
/// A dropped connection costs the whole timeout.
const PROBE: &str = "import socket, sys\nsocket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2.5).close()";

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

/// Binds NFQUEUE queue argv[1] in this network namespace (a raw
/// NETLINK_NETFILTER socket: NFQNL_MSG_CONFIG, NFQNL_CFG_CMD_BIND) and holds
/// it without reading, so that another process's bind of it fails.
const HOLD_QUEUE: &str = r#"
import socket, struct, sys, threading
q = int(sys.argv[1])
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)
s.bind((0, 0))
attr = struct.pack("=HHBBH", 8, 1, 1, 0, socket.htons(socket.AF_INET))
body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(q)) + attr
s.send(struct.pack("=IHHII", 16 + len(body), (3 << 8) | 2, 0x1 | 0x4, 1, 0) + body)
err = struct.unpack("=i", s.recv(4096)[16:20])[0]
if err != 0:
    sys.exit(f"bind queue {q}: errno {-err}")
threading.Event().wait()
"#;

fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("run {args:?}: {e}"))
}

fn must(args: &[&str]) {
    let out = sh(args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// One test's network namespaces, processes and folders; all removed on drop.
///
/// Namespaces are named `xbe<pid><tag>-<leaf>`, so the tests of one binary
/// never share one. Pods get addresses in `10.<octet>.0.0/16`, an octet per
/// test: the tests of one binary share one apiserver, and an enforcer finds
/// the Pod a packet comes from or goes to by its address among every Pod of
/// the cluster, so two tests must never register Pods with one address.
struct Net {
    prefix: String,
    octet: u8,
    leaves: Vec<String>,
    children: Vec<Child>,
    dir: PathBuf,
}

impl Net {
    /// The node namespace, routing between its leaves, with new connections
    /// from this test's Pods diverted to the enforcer's queue.
    fn new(tag: &str, octet: u8) -> Net {
        let net = Net {
            prefix: format!("xbe{}{tag}", std::process::id()),
            octet,
            leaves: Vec::new(),
            children: Vec::new(),
            dir: support::tempdir(&format!("enforce-{tag}")),
        };
        must(&["ip", "netns", "add", &net.ns("node")]);
        net.run("node", &["ip", "link", "set", "lo", "up"]);
        net.run("node", &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        // kube-network-policies queues new connections with an nftables
        // `queue` rule; where the kernel lacks nft_queue (this machine's
        // does) that rule fails, so the same diversion is made with the
        // xtables NFQUEUE target. Every verdict is still the enforcer's.
        let pods = format!("10.{octet}.0.0/16");
        let queue = QUEUE.to_string();
        let established = ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"];
        let divert = ["-s", pods.as_str(), "-j", "NFQUEUE", "--queue-num", queue.as_str()];
        for rule in [&established[..], &divert[..]] {
            let mut args = vec!["iptables", "-t", "mangle", "-A", "POSTROUTING"];
            args.extend(rule);
            net.run("node", &args);
        }
        net
    }

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

    /// The address of this test's Pod on subnet `subnet`.
    fn pod_ip(&self, subnet: u8) -> String {
        format!("10.{}.{subnet}.2", self.octet)
    }

    /// A Pod's namespace, alone on `10.<octet>.<subnet>.0/24`; its address.
    fn pod(&mut self, name: &str, subnet: u8) -> String {
        let ip = self.pod_ip(subnet);
        self.leaf(name, &ip, &format!("10.{}.{subnet}.1", self.octet), 24);
        ip
    }

    /// A leaf namespace on its own subnet, `address` inside, `gateway` on the node side.
    fn leaf(&mut self, name: &str, address: &str, gateway: &str, prefix: u8) {
        must(&["ip", "netns", "add", &self.ns(name)]);
        self.leaves.push(name.to_string());
        self.run(name, &["ip", "link", "set", "lo", "up"]);
        // Made inside the node namespace: tests running at once may use the same names.
        let node_side = format!("v{name}");
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

    /// Accept connections on `ports` inside the leaf `name`.
    fn listen(&mut self, name: &str, ports: &[u16]) {
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        let mut args = vec!["python3", "-c", LISTENER];
        args.extend(ports.iter().map(String::as_str));
        self.spawn(name, &args, &format!("listen-{name}.log"));
    }

    /// Whether a TCP connection from the gateway Pod to `ip:port` is made.
    fn connects(&self, ip: &str, port: u16) -> bool {
        self.connects_from("gwpod", ip, port)
    }

    /// Whether a TCP connection from the leaf `from` to `ip:port` is made.
    fn connects_from(&self, from: &str, ip: &str, port: u16) -> bool {
        self.exec(from, &["python3", "-c", PROBE, ip, &port.to_string()]).output().unwrap().status.success()
    }

    /// Waits until NFQUEUE queue `queue` is bound in the node namespace.
    async fn queue_bound(&self, queue: u16) -> bool {
        let queue = queue.to_string();
        let bound = support::eventually(Duration::from_secs(30), || async {
            let out = self.exec("node", &["cat", "/proc/net/netfilter/nfnetlink_queue"]).output().ok()?;
            let text = String::from_utf8_lossy(&out.stdout);
            text.lines().any(|l| l.split_whitespace().next() == Some(queue.as_str())).then_some(())
        })
        .await;
        bound.is_some()
    }

    /// Starts kube-network-policies in the node namespace as if in-cluster
    /// (a service account token and CA under a private /run, the apiserver
    /// at 127.0.0.1 of the node through the bridge), with `extra` flags;
    /// returns once it has bound its queue.
    async fn start_enforcer(&mut self, cp: &ControlPlane, extra: &[&str]) {
        let knp = support::tool("kube-network-policies");
        if extra.contains(&"--admin-network-policy") {
            // With AdminNetworkPolicies on, v0.8.0 also opens queue QUEUE+1
            // for a DNS cache (for `domainNames` peers, which the controller
            // never writes) behind an nftables `queue` rule. Without
            // nft_queue that rule fails, the cache closes its socket and
            // its receive loop spins on the closed descriptor: more than a
            // core and 20 MB/s of log. With the queue already bound the
            // cache's bind fails first and it never starts; queue QUEUE is
            // untouched.
            let next = QUEUE + 1;
            self.spawn("node", &["python3", "-c", HOLD_QUEUE, &next.to_string()], "hold-queue.log");
            assert!(self.queue_bound(next).await, "queue {next} never held: {}", self.read_log("hold-queue.log"));
        }
        let (api_port, token, ca) = credentials(&cp.kubeconfig);
        let sa = self.dir.join("run/secrets/kubernetes.io/serviceaccount");
        std::fs::create_dir_all(&sa).unwrap();
        std::fs::write(sa.join("token"), token).unwrap();
        std::fs::write(sa.join("ca.crt"), ca).unwrap();
        let socket = self.dir.join("api.sock");
        tokio::spawn(serve_bridge(socket.clone(), api_port));
        self.spawn("node", &["python3", "-c", BRIDGE, &api_port.to_string(), socket.to_str().unwrap()], "bridge.log");
        let script = format!(
            "mount --bind '{}' /run && exec env KUBERNETES_SERVICE_HOST=127.0.0.1 KUBERNETES_SERVICE_PORT={api_port} '{}' --hostname-override={NODE_NAME} --nfqueue-id={QUEUE} --metrics-bind-address=127.0.0.1:9080 --netfilter-bug-1766-fix=false -v=2 {}",
            self.dir.join("run").display(),
            knp.display(),
            extra.join(" ")
        );
        self.spawn("node", &["unshare", "-m", "sh", "-c", &script], "kube-network-policies.log");
        assert!(self.queue_bound(QUEUE).await, "the enforcer never bound its queue:\n{}", self.enforcer_log());
    }

    fn read_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    fn enforcer_log(&self) -> String {
        self.read_log("kube-network-policies.log")
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for name in self.leaves.iter().map(String::as_str).chain(["node"]) {
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
    register_pod_with_ports(pods, name, labels, ip, json!([])).await;
}

/// A Pod whose container declares `ports` (named ports a Service's targetPort names).
async fn register_pod_with_ports(
    pods: &Api<Pod>,
    name: &str,
    labels: serde_json::Value,
    ip: &str,
    ports: serde_json::Value,
) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": NODE_NAME, "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10", "ports": ports}]}
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
    panic!(
        "{what}: {ip}:{port} never became {}; controller log:\n{}\nenforcer log (tail):\n{}",
        if open { "reachable" } else { "blocked" },
        ctl.log_tail(),
        tail(&net.enforcer_log(), 30)
    );
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The label GEP-1762 implementations put on a Gateway's data-plane Pods.
const GATEWAY_NAME: &str = "gateway.networking.k8s.io/gateway-name";

/// What each test starts from, in a namespace of its own: a Gateway `gw` of
/// another implementation's class (guard mode); its data-plane Pod
/// (`gwpod`) and an EndpointSelector's Pod (`web`, port 8080), registered
/// through the API with this test's addresses and present as network
/// namespaces; three external hosts (ext1 192.0.2.10 on 443 and 8443, ext2
/// 198.51.100.10 and the metadata address 169.254.169.254 on 443); and a
/// DNS server that says api.example.net is 192.0.2.10. `web` also answers
/// on 9090, which no XBackend names.
struct Scene {
    cp: &'static ControlPlane,
    client: kube::Client,
    ns: String,
    gw: TestGateway,
    foreign: String,
    net: Net,
    dns: DnsServer,
    web_ip: String,
}

impl Scene {
    async fn new(test: &str, tag: &str, octet: u8) -> Scene {
        assert!(
            sh(&["id", "-u"]).stdout.starts_with(b"0"),
            "this test creates network namespaces and needs root (as `make test` runs here)"
        );
        let cp = ControlPlane::shared(Channel::Standard);
        let (client, ns) = cp.namespace(test).await;
        support::install_crd(&client).await;
        let gw = TestGateway::create(&client, &ns, &[]).await;
        let foreign = foreign_gateway(&client, &ns, "mesh", "istio.io/gateway-controller", "gw").await;
        let mut net = Net::new(tag, octet);
        let gw_ip = net.pod("gwpod", 1);
        let web_ip = net.pod("web", 2);
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        register_pod(&pods, "gw-pod", json!({GATEWAY_NAME: "gw"}), &gw_ip).await;
        register_pod(&pods, "web-0", json!({"app": "web"}), &web_ip).await;
        net.leaf("ext1", "192.0.2.10", "192.0.2.1", 24);
        net.leaf("ext2", "198.51.100.10", "198.51.100.1", 24);
        net.leaf("meta", "169.254.169.254", "169.254.169.1", 24);
        for (leaf, ports) in [("ext1", &[443, 8443][..]), ("ext2", &[443]), ("meta", &[443]), ("web", &[8080, 9090])] {
            net.listen(leaf, ports);
        }
        let dns = DnsServer::start().await;
        dns.set("api.example.net", Answer::Addresses(vec!["192.0.2.10".parse().unwrap()], 1));
        Scene { cp, client, ns, gw, foreign, net, dns, web_ip }
    }

    /// XBackends `api` (api.example.net:443) and `web` (EndpointSelector
    /// app=web, 8080), each behind `gw` by an HTTPRoute.
    async fn backends(&self) {
        let web = "---\napiVersion: gateway.networking.x-k8s.io/v1alpha1\nkind: XBackend\nmetadata: {name: web}\nspec:\n  type: EndpointSelector\n  port: {number: 8080}\n  endpointSelector: {matchLabels: {app: web}}\n";
        let yaml = [
            xbackend_yaml("api", "api.example.net"),
            route_yaml("api", &["gw"], "api"),
            web.to_string(),
            route_yaml("web", &["gw"], "web"),
        ]
        .concat();
        apply_yaml(&self.client, Some(&self.ns), &yaml).await;
    }

    /// The controller in guard mode for `gw`'s class, asking the test's DNS
    /// server, with `extra` flags (the engine and its options).
    fn controller(&self, extra: &[&str]) -> Controller {
        let server = self.dns.flag();
        let mut args = vec![
            "--controller-name",
            &self.gw.controller_name,
            "--gateway-class",
            &self.foreign,
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
        ];
        args.extend_from_slice(extra);
        Controller::start(&self.cp.kubeconfig, &args)
    }

    /// The namespace owner's NetworkPolicy `owner` for the gateway Pod:
    /// `egress` as given (absent: it allows no egress at all).
    async fn owners_policy(&self, egress: Option<serde_json::Value>) {
        let mut spec = json!({"podSelector": {"matchLabels": {GATEWAY_NAME: "gw"}}, "policyTypes": ["Egress"]});
        if let Some(egress) = egress {
            spec["egress"] = egress;
        }
        let policy = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "owner"}, "spec": spec});
        apply_yaml(&self.client, Some(&self.ns), &policy.to_string()).await;
    }

    /// The first Event in the test's namespace with `reason` about `name`,
    /// waited for up to a minute.
    async fn event_about(&self, reason: &str, name: &str) -> Option<DynamicObject> {
        let events = support::dynamic(&self.client, &self.ns, "events.k8s.io", "v1", "Event");
        support::eventually(Duration::from_secs(60), || async {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find(|e| e.data["reason"] == reason && e.data["regarding"]["name"] == name)
        })
        .await
    }
}

#[tokio::test]
async fn the_enforcer_allows_vetted_addresses_only_and_refuses_a_rebinding() {
    let mut scene = Scene::new("enforce", "np", 244).await;
    let (client, ns) = (scene.client.clone(), scene.ns.clone());
    // deploy/README.md's Envoy Gateway recipe: a Gateway "edge" of another
    // class whose proxy runs in the implementation's own namespace.
    let (_, eg_system) = scene.cp.namespace("enforce-eg").await;
    let eg = foreign_gateway(&client, &ns, "eg", "gateway.envoyproxy.io/gatewayclass-controller", "edge").await;
    let envoy_ip = scene.net.pod("egpod", 3);
    let envoy_labels = json!({"gateway.envoyproxy.io/owning-gateway-name": "edge", "gateway.envoyproxy.io/owning-gateway-namespace": ns});
    register_pod(&Api::namespaced(client.clone(), &eg_system), "envoy-edge", envoy_labels, &envoy_ip).await;
    let eg_plane = format!(
        "{eg}={eg_system}:gateway.envoyproxy.io/owning-gateway-name={{name}},gateway.envoyproxy.io/owning-gateway-namespace={{namespace}}"
    );
    scene.net.start_enforcer(scene.cp, &[]).await;

    scene.backends().await;
    apply_yaml(&client, Some(&ns), &route_yaml("api-edge", &["edge"], "api")).await;
    let ctl = scene.controller(&[
        "--gateway-class",
        &eg,
        "--egress-data-plane",
        &eg_plane,
        "--egress-policy",
        "networkpolicy",
        "--egress-policy-allow-cluster=false",
    ]);
    let net = &scene.net;
    let web_ip = scene.web_ip.as_str();
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
        let ours = support::entries_of(o, "ancestors", &scene.gw.controller_name);
        let accepted_behind = |name: &str| {
            ours.iter().any(|e| e["ancestorRef"]["name"] == name && e["conditions"][0]["status"] == "True")
        };
        ours.len() == 2 && accepted_behind("gw") && accepted_behind("edge")
    })
    .await;
    // The enforcer has it once another Pod's address stops answering.
    until(net, "198.51.100.10", 443, false, "an address the policy never held", &ctl).await;

    // Vetted address on its port: reachable; the rest: not.
    until(net, "192.0.2.10", 443, true, "api's vetted address", &ctl).await;
    until(net, web_ip, 8080, true, "the EndpointSelector's Pod", &ctl).await;
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
    scene.dns.set("api.example.net", Answer::Addresses(vec!["169.254.169.254".parse().unwrap()], 1));
    assert!(!net.connects("169.254.169.254", 443), "the rebound address, before the controller reacts");
    // Then the XBackend is rejected and its address leaves the policy.
    until(net, "192.0.2.10", 443, false, "a rejected XBackend's address", &ctl).await;
    assert!(!net.connects("169.254.169.254", 443), "the rebound address, after");

    // Flipping back opens it again; deleting the XBackend closes it.
    scene.dns.set("api.example.net", Answer::Addresses(vec!["192.0.2.10".parse().unwrap()], 1));
    until(net, "192.0.2.10", 443, true, "api back", &ctl).await;
    support::xbackend_api(&client, &ns).delete("api", &DeleteParams::default()).await.unwrap();
    until(net, "192.0.2.10", 443, false, "a deleted XBackend's address", &ctl).await;
    assert!(net.connects(web_ip, 8080), "the other XBackend keeps its rule");

    let log = net.enforcer_log();
    assert!(log.contains("verdict=\"drop\""), "the enforcer made the drops:\n{log}");

    // What the admin tier (the next test) is for: NetworkPolicies add up, so
    // the namespace owner's policy allowing the gateway Pod every
    // destination reopens what ours closed, and the Gateway is told.
    scene.owners_policy(Some(json!([{}]))).await;
    until(
        net,
        "198.51.100.10",
        443,
        true,
        "an address never vetted, once another NetworkPolicy allows all egress",
        &ctl,
    )
    .await;
    assert!(net.connects("169.254.169.254", 443), "and the metadata address");
    let warned = scene.event_about("EgressPolicyWidened", "gw").await;
    let warned = warned.unwrap_or_else(|| panic!("no EgressPolicyWidened Event on gw; log:\n{}", ctl.log_tail()));
    assert_eq!(warned.data["type"], "Warning");
    let note = warned.data["note"].as_str().unwrap_or_default();
    assert!(note.contains("NetworkPolicy owner") && note.contains("every destination"), "{note}");
}

/// `--egress-policy adminnetworkpolicy` on kube-network-policies with
/// `--admin-network-policy`: the namespace's owner has a NetworkPolicy that
/// allows the gateway Pod every destination (what widened the NetworkPolicy
/// engine's policy in the test above), and still the gateway Pod reaches
/// only the vetted address on its port and the EndpointSelector's Pod: the
/// AdminNetworkPolicies are evaluated before any NetworkPolicy, and their
/// Deny is final.
#[tokio::test]
async fn admin_network_policies_hold_although_a_network_policy_allows_everything() {
    let mut scene = Scene::new("enforce-anp", "anp", 245).await;
    let (client, ns) = (scene.client.clone(), scene.ns.clone());
    // The enforcer's informer lists AdminNetworkPolicies: without the CRD it
    // never syncs and never opens its queue.
    support::install_policy_crd(&client, support::ANP_EXPERIMENTAL).await;
    scene.net.start_enforcer(scene.cp, &["--admin-network-policy"]).await;
    let net = &scene.net;

    // The owner's NetworkPolicy, in two steps, so that the enforcer is known
    // to have it: first it allows no egress (the enforcer blocks), then
    // every destination (it lets through again).
    assert!(net.connects("198.51.100.10", 443), "the premise: no policy, no block");
    scene.owners_policy(None).await;
    let blocked =
        support::eventually(Duration::from_secs(30), || async { (!net.connects("198.51.100.10", 443)).then_some(()) })
            .await;
    assert!(blocked.is_some(), "the enforcer applies NetworkPolicies:\n{}", tail(&net.enforcer_log(), 30));
    scene.owners_policy(Some(json!([{}]))).await;
    let open =
        support::eventually(Duration::from_secs(30), || async { net.connects("198.51.100.10", 443).then_some(()) })
            .await;
    assert!(open.is_some(), "the owner's NetworkPolicy allows everything:\n{}", tail(&net.enforcer_log(), 30));
    let web_ip = scene.web_ip.as_str();
    for (ip, port) in [("192.0.2.10", 8443), ("169.254.169.254", 443), (web_ip, 9090)] {
        assert!(net.connects(ip, port), "{ip}:{port} answers under the owner's NetworkPolicy");
    }

    scene.backends().await;
    let ctl = scene.controller(&["--egress-policy", "adminnetworkpolicy", "--egress-policy-allow-cluster=false"]);
    ctl.wait_ready().await;
    let anp = ApiResource {
        group: "policy.networking.k8s.io".into(),
        version: "v1alpha1".into(),
        api_version: "policy.networking.k8s.io/v1alpha1".into(),
        kind: "AdminNetworkPolicy".into(),
        plural: "adminnetworkpolicies".into(),
    };
    let anps: Api<DynamicObject> = Api::all_with(client.clone(), &anp);
    let (accepts, deny) = (format!("xbackend-egress-0.{ns}.gw"), format!("xbackend-egress-deny.{ns}.gw"));
    let written = support::eventually(Duration::from_secs(60), || async {
        let accepts = anps.get_opt(&accepts).await.ok()??;
        anps.get_opt(&deny).await.ok()??;
        serde_json::to_string(&accepts).ok()?.contains("192.0.2.10/32").then_some(())
    })
    .await;
    assert!(written.is_some(), "the controller wrote {accepts} and {deny}; log:\n{}", ctl.log_tail());

    // The enforcer has them once an address never vetted stops answering,
    // which nothing but the admin tier's Deny can do now.
    until(net, "198.51.100.10", 443, false, "an address never vetted, under the owner's allow-all", &ctl).await;
    until(net, "192.0.2.10", 443, true, "api's vetted address", &ctl).await;
    until(net, web_ip, 8080, true, "the EndpointSelector's Pod", &ctl).await;
    assert!(!net.connects("192.0.2.10", 8443), "the same host on another port");
    assert!(!net.connects("169.254.169.254", 443), "the metadata address");
    assert!(!net.connects(web_ip, 9090), "the EndpointSelector's Pod on another port");

    // The record rebinds to the metadata address: refused at once, then the
    // XBackend is rejected and its address leaves the accepts.
    scene.dns.set("api.example.net", Answer::Addresses(vec!["169.254.169.254".parse().unwrap()], 1));
    assert!(!net.connects("169.254.169.254", 443), "the rebound address, before the controller reacts");
    until(net, "192.0.2.10", 443, false, "a rejected XBackend's address", &ctl).await;
    assert!(!net.connects("169.254.169.254", 443), "the rebound address, after");

    // Flipping back opens it again; deleting the XBackend closes it.
    scene.dns.set("api.example.net", Answer::Addresses(vec!["192.0.2.10".parse().unwrap()], 1));
    until(net, "192.0.2.10", 443, true, "api back", &ctl).await;
    support::xbackend_api(&client, &ns).delete("api", &DeleteParams::default()).await.unwrap();
    until(net, "192.0.2.10", 443, false, "a deleted XBackend's address", &ctl).await;
    assert!(net.connects(web_ip, 8080), "the other XBackend keeps its rule");

    // The drops were the admin tier's: its Deny, not a NetworkPolicy.
    let log = net.enforcer_log();
    assert!(log.contains("verdict=\"drop\""), "the enforcer made the drops:\n{}", tail(&log, 60));
    assert!(
        log.lines().any(|l| l.contains("\"Egress AdminNetworkPolicies\"") && l.contains("action=\"Deny\"")),
        "an AdminNetworkPolicy denied:\n{}",
        tail(&log, 60)
    );
    assert!(
        log.lines().any(|l| l.contains("\"Egress AdminNetworkPolicies\"") && l.contains("action=\"Allow\"")),
        "an AdminNetworkPolicy allowed:\n{}",
        tail(&log, 60)
    );
    // The queue held for the DNS cache kept it from spinning.
    assert!(log.contains("domain cache controller exited"), "{}", tail(&log, 60));
    assert!(!log.contains("Could not receive message"), "the DNS cache spun:\n{}", tail(&log, 60));
}

/// Issue 28: `--egress-cluster routes` on the enforcer. The gateway Pod of an
/// Istio-class Gateway reaches, in the cluster, exactly what its routes name
/// and what its data plane needs (istiod, Istio's preset): a Service's Pod
/// on the target port (a named one), through its ClusterIP (a DNAT rule as
/// kube-proxy installs) and directly, plus 15008 (ambient's HBONE); not that
/// Pod's other port, a Pod no route names, an XBackend resolving to a Pod,
/// a Service in another namespace until a ReferenceGrant allows it, an
/// ExternalName to the metadata address, or a selectorless Service whose
/// hand-written EndpointSlice points at another namespace's Pod (both
/// vectors of CVE-2021-25740). Deleting the route closes its Service.
#[tokio::test]
async fn routes_mode_reaches_what_the_routes_name_and_nothing_else() {
    let mut scene = Scene::new("enforce-routes", "rt", 246).await;
    let (client, ns) = (scene.client.clone(), scene.ns.clone());
    let (_, far) = scene.cp.namespace("enforce-far").await;
    // Istio's preset: istiod in istio-system, app=istiod, 15012.
    let system: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let istio = json!({"metadata": {"name": "istio-system"}});
    let _ = system.create(&Default::default(), &serde_json::from_value(istio).unwrap()).await;
    let istiod_ip = scene.net.pod("istiod", 5);
    let istiod = support::unique_name("istiod");
    register_pod(&Api::namespaced(client.clone(), "istio-system"), &istiod, json!({"app": "istiod"}), &istiod_ip).await;
    let db_ip = scene.net.pod("db", 3);
    register_pod(&Api::namespaced(client.clone(), &ns), "db-0", json!({"app": "db"}), &db_ip).await;
    let far_ip = scene.net.pod("far", 4);
    register_pod(&Api::namespaced(client.clone(), &far), "far-0", json!({"app": "far"}), &far_ip).await;
    // web-0 (Scene) declares the named port its Service targets.
    let web_ip = scene.web_ip.clone();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.delete("web-0", &DeleteParams::default().grace_period(0)).await.unwrap();
    support::eventually(Duration::from_secs(30), || async {
        pods.get_opt("web-0").await.ok()?.is_none().then_some(())
    })
    .await;
    let http = json!([{"name": "http", "containerPort": 8080}]);
    register_pod_with_ports(&pods, "web-0", json!({"app": "web"}), &web_ip, http).await;
    for (leaf, ports) in [("istiod", &[15012, 15010][..]), ("db", &[5432]), ("far", &[8080])] {
        scene.net.listen(leaf, ports);
    }
    scene.net.listen("web", &[15008]);
    scene.dns.set("db.example.net", Answer::Addresses(vec![db_ip.parse().unwrap()], 1));
    scene.dns.set("meta.example.net", Answer::Addresses(vec!["169.254.169.254".parse().unwrap()], 1));

    let services = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  selector: {{app: web}}\n  ports: [{{port: 80, targetPort: http}}]\n\
         ---\napiVersion: v1\nkind: Service\nmetadata: {{name: api}}\nspec: {{type: ExternalName, externalName: api.example.net}}\n\
         ---\napiVersion: v1\nkind: Service\nmetadata: {{name: meta}}\nspec: {{type: ExternalName, externalName: meta.example.net}}\n\
         ---\napiVersion: v1\nkind: Service\nmetadata: {{name: manual}}\nspec:\n  ports: [{{port: 80, targetPort: 8080}}]\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: manual-1, labels: {{kubernetes.io/service-name: manual}}}}\naddressType: IPv4\n\
         endpoints: [{{addresses: [\"{far_ip}\"], conditions: {{ready: true}}}}]\nports: [{{name: \"\", port: 8080, protocol: TCP}}]\n\
         ---\napiVersion: gateway.networking.x-k8s.io/v1alpha1\nkind: XBackend\nmetadata: {{name: db}}\nspec:\n  type: ExternalHostname\n  port: {{number: 5432}}\n  externalHostname: {{hostname: db.example.net}}\n  tls: {{mode: ServerOnly, validation: {{hostname: db.example.net}}}}\n"
    );
    apply_yaml(&client, Some(&ns), &services).await;
    let far_service = "apiVersion: v1\nkind: Service\nmetadata: {name: far}\nspec:\n  selector: {app: far}\n  ports: [{port: 80, targetPort: 8080}]\n";
    apply_yaml(&client, Some(&far), far_service).await;
    let route = |name: &str, refs: &str| {
        format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n  - backendRefs: [{refs}]\n"
        )
    };
    let routes = [
        route("web", "{name: web, port: 80}"),
        route("legacy", "{name: api, port: 443}, {name: meta, port: 443}, {name: manual, port: 80}"),
        route("far", &format!("{{name: far, namespace: {far}, port: 80}}")),
        route("db", "{group: gateway.networking.x-k8s.io, kind: XBackend, name: db}"),
    ]
    .concat();
    apply_yaml(&client, Some(&ns), &routes).await;
    // The ClusterIP, as kube-proxy would translate it on the node.
    let web: k8s_openapi::api::core::v1::Service = Api::namespaced(client.clone(), &ns).get("web").await.unwrap();
    let cluster_ip = web.spec.and_then(|s| s.cluster_ip).expect("a ClusterIP");
    let to = format!("{web_ip}:8080");
    scene.net.run(
        "node",
        &[
            "iptables",
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-d",
            &cluster_ip,
            "-p",
            "tcp",
            "--dport",
            "80",
            "-j",
            "DNAT",
            "--to-destination",
            &to,
        ],
    );

    scene.net.start_enforcer(scene.cp, &[]).await;
    let net = &scene.net;
    // The premise: before any policy every listener answers.
    for (ip, port) in
        [(db_ip.as_str(), 5432), (far_ip.as_str(), 8080), ("169.254.169.254", 443), (web_ip.as_str(), 9090)]
    {
        assert!(net.connects(ip, port), "{ip}:{port} answers before any policy");
    }
    assert!(net.connects(&cluster_ip, 80), "the ClusterIP leads to web-0");

    let ctl = scene.controller(&["--egress-policy", "networkpolicy", "--egress-cluster", "routes"]);
    ctl.wait_ready().await;
    // The enforcer has the policy once a Pod no route names stops answering.
    until(net, &db_ip, 5432, false, "a Pod no route names (an XBackend resolving to it is refused)", &ctl).await;
    until(net, &web_ip, 8080, true, "the named Service's Pod on its target port", &ctl).await;
    assert!(net.connects(&cluster_ip, 80), "the same through the ClusterIP");
    assert!(net.connects(&web_ip, 15008), "the same Pod on 15008 (Istio ambient's HBONE)");
    assert!(!net.connects(&web_ip, 9090), "the same Pod on a port no Service targets");
    assert!(net.connects(&istiod_ip, 15012), "istiod's xDS (Istio's preset)");
    assert!(!net.connects(&istiod_ip, 15010), "istiod on a port the preset does not name");
    // An ExternalName's answer comes from a DNS check of its own, which may
    // land in a policy write after the one that closed db.
    until(net, "192.0.2.10", 443, true, "an ExternalName's vetted answer, on the referenced port", &ctl).await;
    assert!(!net.connects("192.0.2.10", 8443), "that address on another port");
    assert!(!net.connects("169.254.169.254", 443), "an ExternalName to the metadata address");
    assert!(
        !net.connects(&far_ip, 8080),
        "another namespace's Pod: by its Service without a grant, or a hand-written slice"
    );
    let xbackends = support::xbackend_api(&client, &ns);
    support::wait_for_xbackend(&xbackends, "db", "db refused for its Pod address", |o| {
        let ours = support::entries_of(o, "ancestors", &scene.gw.controller_name);
        ours.iter().any(|e| e["conditions"][0]["reason"] == "AddressNotAllowed")
    })
    .await;
    // The route is told, one Event per refused Service.
    let events = support::dynamic(&client, &ns, "events.k8s.io", "v1", "Event");
    let told = support::eventually(Duration::from_secs(60), || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        let related: std::collections::BTreeSet<String> = (list.items.iter())
            .filter(|e| e.data["reason"] == "EgressReferenceRefused" && e.data["regarding"]["name"] == "legacy")
            .filter_map(|e| e.data["related"]["name"].as_str().map(str::to_string))
            .collect();
        (related.contains("meta") && related.contains("manual")).then_some(related)
    })
    .await;
    assert!(
        told.is_some_and(|r| r.len() == 2),
        "Events for meta and manual on the route; log:
{}",
        ctl.log_tail()
    );

    // A ReferenceGrant in `far` opens its Service; the hand-written slice stays refused.
    let grant = format!(
        "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: routes}}\nspec:\n  from: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: {ns}}}]\n  to: [{{group: \"\", kind: Service, name: far}}]\n"
    );
    apply_yaml(&client, Some(&far), &grant).await;
    until(net, &far_ip, 8080, true, "another namespace's Service, once granted", &ctl).await;

    // Deleting the route closes its Service's Pod, ClusterIP and all.
    let http_routes = support::dynamic(&client, &ns, "gateway.networking.k8s.io", "v1", "HTTPRoute");
    http_routes.delete("web", &DeleteParams::default()).await.unwrap();
    until(net, &web_ip, 8080, false, "the Service of a deleted route", &ctl).await;
    assert!(!net.connects(&cluster_ip, 80), "its ClusterIP too");
    assert!(net.connects(&istiod_ip, 15012), "the control plane stays");
    let log = net.enforcer_log();
    assert!(log.contains("verdict=\"drop\""), "the enforcer made the drops:\n{}", tail(&log, 30));
}
