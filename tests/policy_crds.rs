//! The admin-tier engines' objects against the upstream CRDs (issue 29):
//! everything the controller writes with `--egress-policy
//! clusternetworkpolicy` stands, unchanged, on network-policy-api v0.3.1's
//! standard ClusterNetworkPolicy CRD, in v1beta1 where served and in
//! v1alpha2 where v1beta1 is not; everything `analyze --egress-policy
//! adminnetworkpolicy` prints, and `run` writes, stands on the experimental
//! AdminNetworkPolicy CRD kube-network-policies v0.8.0 reads; and without
//! that CRD `run` stops at once with one line saying so.
//!
//! "Stands unchanged": the server accepts each object `analyze` prints with
//! strict field validation in a dry run (schema, limits and CEL rules; an
//! unknown field is an error), returning it as sent, and what `run` writes
//! stands, field for field, with that same spec, labels and annotation, in
//! the version expected (its managedFields say which one it wrote): a field
//! the server dropped or defaulted would show as a difference.
//!
//! The CRDs come from the Go module proxy (hack/install-policy-crds.sh,
//! `support::install_policy_crd`). Tests that change one CRD take its lock:
//! the tests of this binary share one apiserver.
//!
//! The standard ClusterNetworkPolicy channel is enough for the controller:
//! it writes numeric ports (`tcp`/`udp` `destinationPort.number`),
//! `networks` and `pods`/`namespaces` peers, all standard; the experimental
//! channel adds only named ports, `nodes` and `domainNames`, none of which
//! it writes. The tests here would fail on the standard CRD if it did.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Output};
use std::time::Duration;

use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::discovery::ApiResource;
use serde_json::{Value, json};
use support::dns::{Answer, DnsServer};
use support::{Channel, ControlPlane, Controller};
use tokio::sync::Mutex;

const BIN: &str = env!("CARGO_BIN_EXE_xbackend-controller");
const GROUP: &str = "policy.networking.k8s.io";
const ANP_CRD: &str = "adminnetworkpolicies.policy.networking.k8s.io";
const OWNED: &str = "gateway.networking.x-k8s.io/egress-for-gateway";
const OWNED_NAMESPACE: &str = "gateway.networking.x-k8s.io/egress-for-gateway-namespace";
const RULES: &str = "gateway.networking.x-k8s.io/egress-rules";
/// The field manager of the controller's policy writes.
const MANAGER: &str = "xbackend-controller-egress";

/// Held while a test needs the ClusterNetworkPolicy CRD in one shape.
static CNP_LOCK: Mutex<()> = Mutex::const_new(());
/// Held while a test needs the AdminNetworkPolicy CRD there, or not.
static ANP_LOCK: Mutex<()> = Mutex::const_new(());

fn resource(version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: GROUP.into(),
        version: version.into(),
        api_version: format!("{GROUP}/{version}"),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// A Gateway `gw` of a class of our own in `ns`, with what every shape of
/// rule needs: `api` (an ExternalHostname with three addresses, two IPv4
/// and one IPv6, behind an HTTPRoute), `stun` (an ExternalHostname used
/// from a UDPRoute: UDP and TCP), `web` (an EndpointSelector, and a Pod it
/// selects). Every object names its namespace, so `analyze` reads the same
/// text `run` is given.
fn bundle(ns: &str, class: &str) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: {class}}}
spec: {{controllerName: example.com/{class}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: {ns}}}
spec: {{gatewayClassName: {class}, listeners: [{{name: http, protocol: HTTP, port: 80}}]}}
---
apiVersion: gateway.networking.x-k8s.io/v1alpha1
kind: XBackend
metadata: {{name: api, namespace: {ns}}}
spec:
  type: ExternalHostname
  port: {{number: 443}}
  externalHostname: {{hostname: api.example.net}}
  tls: {{mode: ServerOnly, validation: {{hostname: api.example.net}}}}
---
apiVersion: gateway.networking.x-k8s.io/v1alpha1
kind: XBackend
metadata: {{name: stun, namespace: {ns}}}
spec:
  type: ExternalHostname
  port: {{number: 3478}}
  externalHostname: {{hostname: stun.example.net}}
---
apiVersion: gateway.networking.x-k8s.io/v1alpha1
kind: XBackend
metadata: {{name: web, namespace: {ns}}}
spec:
  type: EndpointSelector
  port: {{number: 8080}}
  endpointSelector: {{matchLabels: {{app: web}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web-0, namespace: {ns}, labels: {{app: web}}}}
spec: {{containers: [{{name: c, image: registry.k8s.io/pause:3.10}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: {ns}}}
spec:
  parentRefs: [{{name: gw}}]
  rules: [{{backendRefs: [{{group: gateway.networking.x-k8s.io, kind: XBackend, name: api}}, {{group: gateway.networking.x-k8s.io, kind: XBackend, name: web}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: UDPRoute
metadata: {{name: u, namespace: {ns}}}
spec:
  parentRefs: [{{name: gw}}]
  rules: [{{backendRefs: [{{group: gateway.networking.x-k8s.io, kind: XBackend, name: stun}}]}}]
"#
    )
}

/// One test's cluster objects, DNS server and the flags `run` and `analyze` share.
struct Case {
    cp: &'static ControlPlane,
    client: kube::Client,
    ns: String,
    controller_name: String,
    dns: DnsServer,
    dir: std::path::PathBuf,
}

impl Case {
    async fn new(test: &str) -> Case {
        let cp = ControlPlane::shared(Channel::Standard);
        let (client, ns) = cp.namespace(test).await;
        support::install_crd(&client).await;
        let class = support::unique_name(test);
        let text = bundle(&ns, &class);
        support::apply_yaml(&client, None, &text).await;
        let dir = support::tempdir(test);
        std::fs::write(dir.join("bundle.yaml"), &text).unwrap();
        let dns = DnsServer::start().await;
        let ip = |s: &str| -> std::net::IpAddr { s.parse().unwrap() };
        let api = vec![ip("93.184.215.14"), ip("93.184.215.15"), ip("2606:2800:21f:cb07::14")];
        dns.set("api.example.net", Answer::Addresses(api, 30));
        dns.set("stun.example.net", Answer::Addresses(vec![ip("93.184.215.16")], 30));
        Case { cp, client, ns, controller_name: format!("example.com/{class}"), dns, dir }
    }

    /// The flags both `run` and `analyze` take, then `extra`.
    fn flags(&self, extra: &[&str]) -> Vec<String> {
        let mut flags: Vec<String> =
            ["--controller-name", &self.controller_name, "--dns-check", "--dns-server", &self.dns.flag()]
                .map(String::from)
                .into();
        flags.extend(extra.iter().map(|s| s.to_string()));
        flags
    }

    /// `analyze -f bundle.yaml` with the shared flags and `extra`; the
    /// objects of `kind` it prints, by name. It must find every XBackend Accepted.
    async fn analyze(&self, extra: &[&str], kind: &str) -> BTreeMap<String, Value> {
        let mut args = vec!["analyze".to_string(), "-f".into(), "bundle.yaml".into()];
        args.extend(self.flags(extra));
        let dir = self.dir.clone();
        // Off the runtime's thread: the DNS server it asks runs there.
        let out: Output = tokio::task::spawn_blocking(move || {
            Command::new(BIN).args(&args).current_dir(&dir).output().expect("run analyze")
        })
        .await
        .unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(0), "analyze {extra:?}:\n{stderr}\n{stdout}");
        let objects: BTreeMap<String, Value> = serde_yaml_ng::Deserializer::from_str(&stdout)
            .map(|d| <Value as serde::Deserialize>::deserialize(d).expect("YAML"))
            .filter(|d| d["kind"] == kind)
            .map(|d| (d["metadata"]["name"].as_str().unwrap().to_string(), d))
            .collect();
        assert!(objects.len() >= 2, "accept and deny {kind}s for gw:\n{stderr}\n{stdout}");
        objects
    }

    /// `run` with the shared flags and `extra`.
    fn run(&self, extra: &[&str]) -> Controller {
        let flags = self.flags(extra);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        Controller::start(&self.cp.kubeconfig, &flags)
    }

    /// The selector of the objects of ours for `gw`.
    fn ours(&self) -> ListParams {
        ListParams::default().labels(&format!("{OWNED}=gw,{OWNED_NAMESPACE}={}", self.ns))
    }
}

/// Each object, as the server would create it with strict field validation
/// (a server-side apply of a new object, dry run): accepted, with spec,
/// labels and annotation as sent (nothing pruned, nothing defaulted in).
async fn accepted_strictly(api: &Api<DynamicObject>, objects: &BTreeMap<String, Value>, what: &str) {
    let params = PatchParams::apply("policy-crds-test").dry_run().validation_strict();
    for (name, object) in objects {
        let created = api.patch(name, &params, &Patch::Apply(object)).await.unwrap_or_else(|e| {
            panic!("{what}: {name} refused: {e}\n{}", serde_json::to_string_pretty(object).unwrap())
        });
        let created = serde_json::to_value(created).unwrap();
        assert_eq!(created["spec"], object["spec"], "{what}: {name} changed on the way in");
        assert_eq!(created["metadata"]["labels"], object["metadata"]["labels"], "{what}: {name}");
        assert_eq!(created["metadata"]["annotations"][RULES], object["metadata"]["annotations"][RULES], "{what}");
    }
}

/// The objects of ours for `gw` as they stand, by name.
async fn standing(api: &Api<DynamicObject>, case: &Case) -> BTreeMap<String, Value> {
    let list = api.list(&case.ours()).await.map(|l| l.items).unwrap_or_default();
    list.into_iter()
        .map(|o| {
            let value = serde_json::to_value(&o).unwrap();
            (o.metadata.name.unwrap(), value)
        })
        .collect()
}

/// Whether what stands is what `analyze` printed: the same names, and for
/// each the same spec, labels and rules annotation.
fn same(standing: &BTreeMap<String, Value>, printed: &BTreeMap<String, Value>) -> bool {
    standing.len() == printed.len()
        && printed.iter().all(|(name, want)| {
            standing.get(name).is_some_and(|got| {
                got["spec"] == want["spec"]
                    && got["metadata"]["labels"] == want["metadata"]["labels"]
                    && got["metadata"]["annotations"][RULES] == want["metadata"]["annotations"][RULES]
            })
        })
}

/// Waits until what stands for `gw` is what `analyze` printed; returns it.
async fn wait_standing(
    api: &Api<DynamicObject>,
    case: &Case,
    printed: &BTreeMap<String, Value>,
    ctl: &Controller,
) -> BTreeMap<String, Value> {
    let stood = support::eventually(Duration::from_secs(60), || async {
        let now = standing(api, case).await;
        same(&now, printed).then_some(now)
    })
    .await;
    stood.unwrap_or_else(|| {
        let log = ctl.log_text();
        let egress: Vec<&str> = log.lines().filter(|l| l.contains("egress") || l.contains("WARN")).collect();
        panic!(
            "what stands never became what analyze prints.\nprinted: {}\nlog (egress lines):\n{}",
            serde_json::to_string_pretty(printed).unwrap(),
            egress[egress.len().saturating_sub(30)..].join("\n")
        )
    })
}

/// The apiVersion the controller's field manager wrote `object` in.
fn written_in(object: &Value) -> String {
    let fields = object["metadata"]["managedFields"].as_array().cloned().unwrap_or_default();
    let ours: BTreeSet<String> = fields
        .iter()
        .filter(|f| f["manager"] == MANAGER)
        .filter_map(|f| f["apiVersion"].as_str().map(str::to_string))
        .collect();
    assert_eq!(ours.len(), 1, "one apiVersion for {MANAGER}: {fields:?}");
    ours.into_iter().next().unwrap()
}

/// The start log line and the engine metric name `engine` and `api_version`.
async fn says_engine(ctl: &Controller, engine: &str, api_version: &str) {
    let log = ctl.log_text();
    let line =
        log.lines().find(|l| l.contains("egress enforcement")).unwrap_or_else(|| panic!("no start line:\n{log}"));
    assert!(line.contains(engine) && line.contains(api_version), "{line}");
    let (_, body) = ctl.http_get("/metrics").expect("metrics");
    let series: Vec<&str> = body.lines().filter(|l| l.starts_with("xbackend_egress_engine{")).collect();
    assert_eq!(series.len(), 1, "{series:?}");
    let labels = (format!("engine=\"{engine}\""), format!("api_version=\"{api_version}\""));
    assert!(series[0].contains(&labels.0) && series[0].contains(&labels.1) && series[0].ends_with(" 1"), "{series:?}");
}

/// The ClusterNetworkPolicies for `gw` in the served version `version`
/// (`crd`: the CRD as installed): analyze's pass strict validation, run's
/// stand unchanged and were written in that version, and the controller
/// says which version it writes.
async fn cluster_network_policies_stand(test: &str, crd: Value, version: &str) {
    let _crd = CNP_LOCK.lock().await;
    let case = Case::new(test).await;
    support::apply_crd(&case.client, &crd).await;
    let engine = ["--egress-policy", "clusternetworkpolicy"];
    let mut printed = case.analyze(&engine, "ClusterNetworkPolicy").await;
    // analyze knows no cluster: it prints v1beta1, the same body as v1alpha2.
    for object in printed.values_mut() {
        assert_eq!(object["apiVersion"], format!("{GROUP}/v1beta1"));
        object["apiVersion"] = json!(format!("{GROUP}/{version}"));
    }
    // Every shape of rule is there: networks (IPv4 and IPv6), pods, UDP, the Pass and the Deny.
    let text = serde_json::to_string(&printed).unwrap();
    for shape in ["\"tier\":\"Admin\"", "2606:2800:21f:cb07::14/128", "\"udp\":", "\"pods\":", "\"Pass\"", "::/0"] {
        assert!(text.contains(shape), "{shape} in {text}");
    }
    let api: Api<DynamicObject> =
        Api::all_with(case.client.clone(), &resource(version, "ClusterNetworkPolicy", "clusternetworkpolicies"));
    accepted_strictly(&api, &printed, &format!("ClusterNetworkPolicy {version}")).await;

    let ctl = case.run(&engine);
    ctl.wait_ready().await;
    let stood = wait_standing(&api, &case, &printed, &ctl).await;
    for (name, object) in &stood {
        assert_eq!(written_in(object), format!("{GROUP}/{version}"), "{name}");
    }
    says_engine(&ctl, "clusternetworkpolicy", &format!("{GROUP}/{version}")).await;
}

/// (a) v0.3.1's standard CRD: v1beta1 served and stored, so v1beta1 it is.
#[tokio::test]
async fn cluster_network_policies_stand_in_v1beta1_on_the_v0_3_1_standard_crd() {
    let crd = support::CNP_STANDARD.crd();
    cluster_network_policies_stand("cnp-v1beta1", crd, "v1beta1").await;
}

/// (b) The same CRD with v1beta1 no longer served (v1alpha2 stored): the
/// controller writes v1alpha2, and says so.
#[tokio::test]
async fn cluster_network_policies_stand_in_v1alpha2_where_v1beta1_is_not_served() {
    let mut crd = support::CNP_STANDARD.crd();
    for version in crd["spec"]["versions"].as_array_mut().unwrap() {
        let alpha = version["name"] == "v1alpha2";
        version["served"] = json!(alpha);
        version["storage"] = json!(alpha);
    }
    cluster_network_policies_stand("cnp-v1alpha2", crd, "v1alpha2").await;
}

fn anp_api(client: &kube::Client) -> Api<DynamicObject> {
    Api::all_with(client.clone(), &resource("v1alpha1", "AdminNetworkPolicy", "adminnetworkpolicies"))
}

/// (c) AdminNetworkPolicies on the experimental CRD of the version
/// kube-network-policies v0.8.0 reads: what `analyze` prints passes strict
/// validation, and what `run` writes stands unchanged, in v1alpha1; with
/// `--egress-policy-allow-cluster=false` too (no Pass rule) and DNS to
/// resolver addresses (`networks` peers) rather than Pods.
#[tokio::test]
async fn admin_network_policies_from_analyze_and_run_stand_on_the_experimental_crd() {
    let _crd = ANP_LOCK.lock().await;
    let case = Case::new("anp").await;
    support::install_policy_crd(&case.client, support::ANP_EXPERIMENTAL).await;
    let api = anp_api(&case.client);
    let variants: [&[&str]; 2] = [
        &["--egress-policy", "adminnetworkpolicy"],
        &[
            "--egress-policy",
            "adminnetworkpolicy",
            "--egress-policy-allow-cluster=false",
            "--egress-dns-cidr",
            "10.96.0.10/32",
            "--egress-admin-priority",
            "999",
        ],
    ];
    // What analyze prints for each, checked while none of it stands (so each dry run is a create).
    let mut printed = Vec::new();
    for (i, engine) in variants.iter().enumerate() {
        let objects = case.analyze(engine, "AdminNetworkPolicy").await;
        let text = serde_json::to_string(&objects).unwrap();
        assert!(text.contains("\"networks\":") && text.contains("\"portNumber\":"), "{text}");
        if i == 0 {
            assert!(text.contains("\"pods\":") && text.contains("\"Pass\"") && text.contains("\"UDP\""), "{text}");
        } else {
            assert!(!text.contains("\"Pass\"") && text.contains("10.96.0.10/32"), "{text}");
            assert!(text.contains("\"priority\":1000"), "the Deny at 999 + 1, the CRD's maximum: {text}");
        }
        let what = format!("AdminNetworkPolicy ({})", support::ANP_EXPERIMENTAL.describe());
        accepted_strictly(&api, &objects, &what).await;
        printed.push(objects);
    }
    for (engine, printed) in variants.iter().zip(&printed) {
        let ctl = case.run(engine);
        ctl.wait_ready().await;
        let stood = wait_standing(&api, &case, printed, &ctl).await;
        for (name, object) in &stood {
            assert_eq!(written_in(object), format!("{GROUP}/v1alpha1"), "{name}");
        }
        says_engine(&ctl, "adminnetworkpolicy", &format!("{GROUP}/v1alpha1")).await;
    }
}

/// (d) Without the AdminNetworkPolicy CRD, `run --egress-policy
/// adminnetworkpolicy` exits 1 at start with one line that says what is
/// missing and what to do.
#[tokio::test]
async fn without_the_crd_the_admin_engine_stops_with_one_line() {
    let _crd = ANP_LOCK.lock().await;
    let case = Case::new("anp-missing").await;
    support::delete_crd(&case.client, ANP_CRD).await;
    let port = support::free_port().to_string();
    let mut args = vec!["run".to_string(), "--no-leader-election".into(), "--metrics-addr".into()];
    args.push(format!("127.0.0.1:{port}"));
    args.extend(case.flags(&["--egress-policy", "adminnetworkpolicy"]));
    let kubeconfig = case.cp.kubeconfig.clone();
    let out = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(BIN)
            .args(&args)
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start run");
        // It must stop by itself, quickly; a controller that kept running would be killed here.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{text}");
    // Nothing else: no log lines before it (RUST_LOG=info), no cause chain after it.
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one line:\n{text}");
    let line = lines[0];
    assert!(line.starts_with("error: "), "{line}");
    for says in [
        "--egress-policy adminnetworkpolicy",
        "AdminNetworkPolicy",
        "policy.networking.k8s.io/v1alpha1",
        "install its CRD",
    ] {
        assert!(line.contains(says), "{says:?} in {line:?}");
    }
    assert!(!text.contains("panic"), "{text}");
}
