//! Test support: one real control plane (etcd + kube-apiserver from
//! tests/controlplane) per test binary, a fresh namespace per test.
#![allow(dead_code)]

pub mod dns;
pub mod nca;
pub mod relay;
pub mod route_cel;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope};
use kube::{Client, Config, ResourceExt};

pub const CRD_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/xbackends.yaml");

/// Which Gateway API CRDs the control plane installs at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    Standard,
    /// Gateway API v1.6.3's experimental channel (XBackend with `status.parents`).
    Experimental,
    /// Gateway API v1.7.0's experimental channel (XBackend with `port.number`,
    /// EndpointSelector and `status.ancestors`).
    ExperimentalV17,
    None,
}

impl Channel {
    fn args(self) -> &'static [&'static str] {
        match self {
            Channel::Standard => &["--gateway-api-channel", "standard"],
            Channel::Experimental => &["--gateway-api-channel", "experimental"],
            Channel::ExperimentalV17 => &["--gateway-api-channel", "experimental", "--gateway-api-version", "v1.7.0"],
            Channel::None => &["--gateway-api-channel", "none"],
        }
    }
}

pub struct ControlPlane {
    pub kubeconfig: PathBuf,
    pub dir: PathBuf,
    // Held so the child is not reaped early; it exits with this process
    // (the control plane watches its parent).
    _child: Mutex<Child>,
}

impl ControlPlane {
    /// The control plane shared by every test of this binary (one channel per
    /// binary: the first caller's).
    pub fn shared(channel: Channel) -> &'static ControlPlane {
        static CP: OnceLock<ControlPlane> = OnceLock::new();
        CP.get_or_init(|| ControlPlane::start(channel))
    }

    /// Starts a control plane in a new temporary folder, without fsync.
    pub fn start(channel: Channel) -> ControlPlane {
        ControlPlane::start_opts(ControlPlaneOpts { channel, fsync: false })
    }

    /// A client with the control plane's cluster-admin identity.
    pub async fn client(&self) -> Client {
        client_from(&self.kubeconfig).await
    }

    /// A client for this test, plus a fresh namespace named after the test.
    pub async fn namespace(&self, test: &str) -> (Client, String) {
        let client = self.client().await;
        let name = unique_name(test);
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
        }))
        .unwrap();
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.expect("create namespace");
        (client, name)
    }
}

pub async fn client_from(kubeconfig: &Path) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.expect("kubeconfig");
    Client::try_from(config).expect("client")
}

/// A DNS-label name unique to this process and call, starting with `prefix`.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let clean: String =
        prefix.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).take(40).collect();
    format!("{}-{}-{}", clean.trim_matches('-'), std::process::id() % 100_000, N.fetch_add(1, Ordering::Relaxed))
}

pub fn tempdir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique_name(&format!("xbackend-{prefix}")));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds tests/controlplane once into target/, rebuilding only when its Go
/// sources are newer than the binary.
pub fn controlplane_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = repo_root().join("tests/controlplane");
        let target =
            std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"));
        let bin = target.join("controlplane/controlplane");
        // Test binaries run in parallel; one builds, the others wait on the lock file.
        std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
        let lock = std::fs::File::create(target.join("controlplane/.build-lock")).unwrap();
        lock.lock().expect("lock controlplane build");
        if is_stale(&bin, &src) {
            let status = Command::new("go")
                .args(["build", "-C"])
                .arg(&src)
                .arg("-o")
                .arg(&bin)
                .arg(".")
                .status()
                .expect("run go build (is Go installed?)");
            assert!(status.success(), "go build of tests/controlplane failed");
        }
        bin
    })
    .clone()
}

fn is_stale(bin: &Path, src: &Path) -> bool {
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else { return true };
    let newest = std::fs::read_dir(src)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .max()
        .unwrap_or(SystemTime::UNIX_EPOCH);
    newest > built
}

/// Discovery of every group, again when a group goes between the list of
/// groups and its own read (another test of the binary deleted its CRD).
pub async fn discover(client: &Client) -> Discovery {
    let mut tries = 0;
    loop {
        match Discovery::new(client.clone()).run().await {
            Ok(discovery) => return discovery,
            Err(kube::Error::Api(status)) if status.code == 404 && tries < 10 => tries += 1,
            Err(e) => panic!("discovery: {e}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Applies every document of a YAML stream with server-side apply (like
/// `kubectl apply --server-side`), defaulting namespaced objects to `ns`.
pub async fn apply_yaml(client: &Client, ns: Option<&str>, yaml: &str) -> Vec<DynamicObject> {
    let mut discovery = discover(client).await;
    let mut out = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
        let value = <serde_json::Value as serde::Deserialize>::deserialize(doc).expect("yaml");
        if value.is_null() {
            continue;
        }
        let obj: DynamicObject = serde_json::from_value(value).expect("object");
        // A CRD can be Established a moment before discovery serves its
        // kind: look again for a while before calling the kind unknown.
        for _ in 0..50 {
            if discovery.resolve_gvk(&gvk_of(&obj)).is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            discovery = discover(client).await;
        }
        let (api, _) = dynamic_api(client, &discovery, &obj, ns);
        let pp = PatchParams::apply("xbackend-tests").force();
        out.push(
            api.patch(&obj.name_any(), &pp, &Patch::Apply(&obj))
                .await
                .unwrap_or_else(|e| panic!("apply {}: {e}", obj.name_any())),
        );
    }
    out
}

fn gvk_of(obj: &DynamicObject) -> kube::api::GroupVersionKind {
    let tm = obj.types.as_ref().expect("apiVersion and kind");
    let (group, version) = tm.api_version.split_once('/').unwrap_or(("", &tm.api_version));
    kube::api::GroupVersionKind::gvk(group, version, &tm.kind)
}

pub fn dynamic_api(
    client: &Client,
    discovery: &Discovery,
    obj: &DynamicObject,
    ns: Option<&str>,
) -> (Api<DynamicObject>, ApiCapabilities) {
    let gvk = gvk_of(obj);
    let (ar, caps): (ApiResource, ApiCapabilities) =
        discovery.resolve_gvk(&gvk).unwrap_or_else(|| panic!("unknown kind {gvk:?}"));
    let api = match caps.scope {
        Scope::Cluster => Api::all_with(client.clone(), &ar),
        Scope::Namespaced => {
            let ns = obj.metadata.namespace.as_deref().or(ns).unwrap_or("default");
            Api::namespaced_with(client.clone(), ns, &ar)
        }
    };
    (api, caps)
}

/// Installs this project's XBackend CRD (crds/) and waits until it is served.
pub async fn install_crd(client: &Client) {
    let yaml = std::fs::read_to_string(CRD_PATH).expect("read crds/xbackends.yaml");
    apply_yaml(client, None, &yaml).await;
    wait_for_crd(client, "xbackends.gateway.networking.x-k8s.io").await;
}

pub async fn wait_for_crd(client: &Client, name: &str) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    eventually(Duration::from_secs(30), || async {
        let crd = api.get(name).await.ok()?;
        let established = crd.status?.conditions?.iter().any(|c| c.type_ == "Established" && c.status == "True");
        established.then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("CRD {name} not Established"));
}

/// Waits until the wall clock has left the second of `stamp` (an RFC 3339
/// time), so a condition stamped from now on gets a different
/// lastTransitionTime and a test that expects the old one can fail.
pub async fn past_the_second_of(stamp: &serde_json::Value) {
    let stamp = stamp.as_str().unwrap_or_else(|| panic!("a timestamp: {stamp}"));
    let next = chrono::DateTime::parse_from_rfc3339(stamp).expect("RFC 3339") + chrono::Duration::seconds(1);
    while chrono::Utc::now() < next {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `f` until it returns Some or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A token for a ServiceAccount, issued by the apiserver (TokenRequest).
pub async fn service_account_token(client: &Client, namespace: &str, name: &str) -> String {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::ServiceAccount;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let req: TokenRequest =
        serde_json::from_value(serde_json::json!({"spec": {"audiences": [], "expirationSeconds": 3600}})).unwrap();
    let resp: TokenRequest =
        sas.create_subresource("token", name, &PostParams::default(), &req).await.expect("TokenRequest");
    resp.status.and_then(|s| s.token).expect("TokenRequest returned a token")
}

/// A client for the control plane that authenticates only with `token`.
pub async fn client_with_token(kubeconfig: &Path, token: &str) -> Client {
    Client::try_from(config_with_token(kubeconfig, token).await).expect("client")
}

/// The control plane's kubeconfig with its identity replaced by `token`.
pub async fn config_with_token(kubeconfig: &Path, token: &str) -> Config {
    let kc = Kubeconfig::read_from(kubeconfig).expect("read kubeconfig");
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.expect("kubeconfig");
    config.auth_info = kube::config::AuthInfo { token: Some(token.to_string().into()), ..Default::default() };
    config
}

/// The controller binary running against a control plane; killed on drop.
pub struct Controller {
    child: Child,
    pub metrics_port: u16,
    pub log: PathBuf,
}

impl Controller {
    /// Starts `xbackend-controller run` with leader election off plus `extra` flags.
    pub fn start(kubeconfig: &Path, extra: &[&str]) -> Controller {
        let mut args = vec!["--no-leader-election"];
        args.extend_from_slice(extra);
        Controller::start_with(kubeconfig, &args)
    }

    /// Starts `xbackend-controller run` with exactly `args` (plus a metrics port).
    pub fn start_with(kubeconfig: &Path, args: &[&str]) -> Controller {
        let metrics_port = free_port();
        let log = tempdir("controller").join("controller.log");
        let out = std::fs::File::create(&log).expect("controller log");
        let child = Command::new(env!("CARGO_BIN_EXE_xbackend-controller"))
            .arg("run")
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{metrics_port}"))
            // No test may ask the machine's resolver: DNS tests pass
            // --dns-check --dns-server for a server of their own, which overrides this.
            .arg("--no-dns-check")
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,xbackend_controller=debug")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start controller");
        Controller { child, metrics_port, log }
    }

    /// GET one of the controller's HTTP endpoints: (status code, body).
    pub fn http_get(&self, path: &str) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        let code = resp.split_whitespace().nth(1)?.parse().ok()?;
        let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Some((code, body))
    }

    /// A counter or gauge from /metrics (summing over label sets).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.http_get("/metrics")?;
        let values: Vec<f64> = body
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    /// The metric once `ok` holds, or None after `timeout`.
    pub async fn wait_metric(&self, name: &str, timeout: Duration, ok: impl Fn(f64) -> bool) -> Option<f64> {
        eventually(timeout, || async { self.metric(name).filter(|v| ok(*v)) }).await
    }

    /// A write counter once it reaches `at_least`, else as it stands after
    /// 10 s. A writer counts a write when the API answers, a moment after
    /// the write is visible: read earlier, the count lags by one.
    pub async fn counted(&self, name: &str, at_least: f64) -> Option<f64> {
        let reached = self.wait_metric(name, Duration::from_secs(10), |v| v >= at_least).await;
        reached.or_else(|| self.metric(name))
    }

    /// Waits until /readyz answers 200.
    pub async fn wait_ready(&self) {
        let ready =
            eventually(Duration::from_secs(60), || async { (self.http_get("/readyz")?.0 == 200).then_some(()) }).await;
        assert!(ready.is_some(), "controller not ready; log:\n{}", self.log_tail());
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits for a clean exit; returns the exit code.
    pub fn terminate(mut self) -> Option<i32> {
        unsafe_kill(self.child.id(), "TERM");
        let status = self.child.wait().ok()?;
        status.code()
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unsafe_kill(pid: u32, signal: &str) {
    let _ = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
}

/// A port on 127.0.0.1 that nothing listens on, for a process to bind a moment
/// later. Picked below the kernel's ephemeral range, as the control plane
/// picks its own (tests/controlplane/ports.go): a ":0" port is ephemeral, and
/// an outgoing connection may take it before the process binds it.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .filter(|low| *low >= 2048)
        .unwrap_or(32768);
    for attempt in 0..100u64 {
        let port = low / 2 + (RandomState::new().hash_one(attempt) % u64::from(low - low / 2)) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {}-{} on 127.0.0.1", low / 2, low - 1);
}

/// A controller name and a GatewayClass + Gateway served by it, unique to one
/// test, so tests sharing an apiserver never see each other's entries.
pub struct TestGateway {
    pub controller_name: String,
    pub class: String,
}

impl TestGateway {
    pub async fn create(client: &Client, ns: &str, gateways: &[&str]) -> TestGateway {
        let class = unique_name(&format!("class-{ns}"));
        let controller_name = format!("example.com/{class}");
        let mut yaml = format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: {class}}}\nspec: {{controllerName: {controller_name}}}\n"
        );
        for gw in gateways {
            yaml.push_str(&gateway_yaml(gw, &class));
        }
        apply_yaml(client, Some(ns), &yaml).await;
        TestGateway { controller_name, class }
    }
}

pub fn gateway_yaml(name: &str, class: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}}}\nspec:\n  gatewayClassName: {class}\n  listeners: [{{name: http, protocol: HTTP, port: 80}}]\n"
    )
}

/// An HTTPRoute from `gateways` to the XBackend `backend`.
pub fn route_yaml(name: &str, gateways: &[&str], backend: &str) -> String {
    let parents: Vec<String> = gateways.iter().map(|g| format!("{{name: {g}}}")).collect();
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}}}\nspec:\n  parentRefs: [{}]\n  rules:\n  - backendRefs: [{{group: gateway.networking.x-k8s.io, kind: XBackend, name: {backend}}}]\n",
        parents.join(", ")
    )
}

/// An XBackend to `hostname`:443 with TLS verified by system CAs, plus `extra`
/// YAML appended under spec (indented by the caller).
pub fn xbackend_yaml(name: &str, hostname: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.x-k8s.io/v1alpha1\nkind: XBackend\nmetadata: {{name: {name}}}\nspec:\n  type: ExternalHostname\n  port: {{port: 443}}\n  externalHostname: {{hostname: {hostname}}}\n  tls:\n    mode: ServerOnly\n    validation: {{hostname: {hostname}}}\n"
    )
}

pub fn xbackend_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    let ar =
        ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk("gateway.networking.x-k8s.io", "v1alpha1", "XBackend"));
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// This controller's entries in an XBackend's status list (`field` is
/// "ancestors", or "parents" for the upstream CRD).
pub fn entries_of(obj: &DynamicObject, field: &str, controller_name: &str) -> Vec<serde_json::Value> {
    obj.data["status"][field]
        .as_array()
        .map(|a| a.iter().filter(|e| e["controllerName"] == controller_name).cloned().collect())
        .unwrap_or_default()
}

/// (type, status, reason) of each condition of an entry, sorted by type.
pub fn conditions_of(entry: &serde_json::Value) -> Vec<(String, String, String)> {
    let mut out: Vec<_> = entry["conditions"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    (
                        c["type"].as_str().unwrap_or("").into(),
                        c["status"].as_str().unwrap_or("").into(),
                        c["reason"].as_str().unwrap_or("").into(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Waits until `f` holds for the stored XBackend; returns it.
pub async fn wait_for_xbackend(
    api: &Api<DynamicObject>,
    name: &str,
    what: &str,
    f: impl Fn(&DynamicObject) -> bool,
) -> DynamicObject {
    let found = eventually(Duration::from_secs(30), || async {
        let obj = api.get(name).await.ok()?;
        f(&obj).then_some(obj)
    })
    .await;
    match found {
        Some(obj) => obj,
        None => {
            let last = api
                .get(name)
                .await
                .map(|o| serde_json::to_string_pretty(&o.data["status"]).unwrap())
                .unwrap_or_default();
            panic!("XBackend {name}: timed out waiting for {what}; status now:\n{last}")
        }
    }
}

/// A namespaced Api for any kind by group/version/kind.
/// Waits until our entry's Accepted condition has `reason`; returns its message.
pub async fn wait_accepted(api: &Api<DynamicObject>, name: &str, controller: &str, reason: &str) -> String {
    let obj = wait_for_xbackend(api, name, &format!("Accepted reason {reason}"), |o| {
        let entries = entries_of(o, "ancestors", controller);
        entries.len() == 1 && conditions_of(&entries[0]).iter().any(|c| c.0 == "Accepted" && c.2 == reason)
    })
    .await;
    let entry = &entries_of(&obj, "ancestors", controller)[0];
    let accepted = entry["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Accepted").unwrap();
    accepted["message"].as_str().unwrap_or_default().to_string()
}

pub fn dynamic(client: &Client, ns: &str, group: &str, version: &str, kind: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(group, version, kind));
    Api::namespaced_with(client.clone(), ns, &ar)
}

// ---- Fault tests and the scale benchmark (appended; nothing above changes) ----

/// How a control plane of one's own is started (see `ControlPlane::start_opts`).
#[derive(Clone, Copy, Debug)]
pub struct ControlPlaneOpts {
    pub channel: Channel,
    /// false adds `--unsafe-no-fsync` (what `ControlPlane::start` does).
    pub fsync: bool,
}

impl ControlPlane {
    /// Like `start`, with fsync chosen by the caller.
    pub fn start_opts(opts: ControlPlaneOpts) -> ControlPlane {
        let dir = tempdir("cp");
        let (child, kubeconfig) = spawn_controlplane(&dir, opts);
        ControlPlane { kubeconfig, dir, _child: Mutex::new(child) }
    }

    /// The control plane's process id (one Go process: etcd + kube-apiserver).
    pub fn pid(&self) -> u32 {
        self._child.lock().unwrap().id()
    }

    /// SIGTERM, then waits until the process has exited. etcd data, PKI and
    /// ports stay in the state folder for `restart`.
    pub fn stop(&self) {
        let mut child = self._child.lock().unwrap();
        unsafe_kill(child.id(), "TERM");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the control plane again on the same state folder: the same
    /// ports, certificates, etcd data and kubeconfig path. Call `stop` first.
    pub fn restart(&self, opts: ControlPlaneOpts) {
        let (child, kubeconfig) = spawn_controlplane(&self.dir, opts);
        assert_eq!(kubeconfig, self.kubeconfig, "a restart on the same folder keeps the kubeconfig path");
        *self._child.lock().unwrap() = child;
    }
}

/// Runs the control plane binary on `dir/state` and waits for its KUBECONFIG line.
fn spawn_controlplane(dir: &Path, opts: ControlPlaneOpts) -> (Child, PathBuf) {
    use std::io::Write;
    let bin = controlplane_binary();
    let log_path = dir.join("controlplane.log");
    let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).expect("open log");
    writeln!(log, "---- start (fsync: {}) ----", opts.fsync).ok();
    let mut cmd = Command::new(&bin);
    cmd.arg("--dir").arg(dir.join("state")).args(opts.channel.args()).arg("--exit-with-parent");
    if !opts.fsync {
        cmd.arg("--unsafe-no-fsync");
    }
    let mut child =
        cmd.stdout(Stdio::piped()).stderr(log).spawn().unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    remove_at_exit(dir.join("state"), child.id());
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read control plane stdout");
    let Some(path) = line.trim().strip_prefix("KUBECONFIG=") else {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: String =
            log.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        panic!("control plane did not start (stdout {line:?}); log tail:\n{tail}");
    };
    (child, PathBuf::from(path))
}

/// Control-plane state folders (etcd's data: 65 MB and more each) and the
/// process now running on each. Statics are never dropped, so the shared
/// control plane's folder would outlive every run and fill /tmp; an exit
/// hook removes them. Logs stay beside them for a post-mortem.
static STATE_DIRS: Mutex<Vec<(PathBuf, u32)>> = Mutex::new(Vec::new());

fn remove_at_exit(state: PathBuf, pid: u32) {
    unsafe extern "C" {
        fn atexit(hook: extern "C" fn()) -> i32;
    }
    static HOOK: std::sync::Once = std::sync::Once::new();
    // SAFETY: registers a plain function with the C library, once.
    HOOK.call_once(|| unsafe {
        atexit(remove_state_dirs);
    });
    let mut dirs = STATE_DIRS.lock().unwrap_or_else(|e| e.into_inner());
    dirs.retain(|(dir, _)| *dir != state);
    dirs.push((state, pid));
}

/// Runs as the test binary exits: each control plane is killed first (its
/// data is thrown away), so nothing writes into a folder being removed.
extern "C" fn remove_state_dirs() {
    unsafe extern "C" {
        fn kill(pid: i32, signal: i32) -> i32;
    }
    let dirs = std::mem::take(&mut *STATE_DIRS.lock().unwrap_or_else(|e| e.into_inner()));
    for (dir, pid) in dirs {
        // SAFETY: a signal to our own child, which the exit would stop anyway.
        unsafe { kill(pid as i32, 9) };
        // A process being killed may still create a file while the folder goes.
        for _ in 0..3 {
            if std::fs::remove_dir_all(&dir).is_ok() || !dir.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Controller {
    /// Like `start_with`, with extra environment (e.g. RUST_LOG) for the process.
    pub fn start_with_env(kubeconfig: &Path, args: &[&str], env: &[(&str, &str)]) -> Controller {
        let metrics_port = free_port();
        let log = tempdir("controller").join("controller.log");
        let out = std::fs::File::create(&log).expect("controller log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xbackend-controller"));
        cmd.arg("run")
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{metrics_port}"))
            // No test may ask the machine's resolver: DNS tests pass
            // --dns-check --dns-server for a server of their own, which overrides this.
            .arg("--no-dns-check")
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,xbackend_controller=debug");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.stdout(out.try_clone().unwrap()).stderr(out).spawn().expect("start controller");
        Controller { child, metrics_port, log }
    }

    /// Peak resident set size (VmHWM) of the controller process, in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        proc_status_kib(self.child.id(), "VmHWM:")
    }

    /// Resident pages backed by files (RssFile), in KiB: mostly the
    /// binary's own code, which counts in VmHWM like the heap.
    pub fn file_rss_kib(&self) -> Option<u64> {
        proc_status_kib(self.child.id(), "RssFile:")
    }

    /// Current resident set size (VmRSS), in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        proc_status_kib(self.child.id(), "VmRSS:")
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The whole log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A `Key: <n> kB` line of /proc/<pid>/status.
pub fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User + system CPU seconds a process has used so far (/proc/<pid>/stat).
pub fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some((utime + stime) / 100.0)
}

/// A kubernetes.io/tls Secret (as YAML) with the PEM given in `stringData`.
pub fn tls_secret_yaml(name: &str, cert_pem: &str, key_pem: &str) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap();
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: {}\n  tls.key: {}\n",
        q(cert_pem),
        q(key_pem)
    )
}

/// A kubeconfig file for the control plane at `admin` (its server and CA)
/// that authenticates only with `token`.
pub fn token_kubeconfig(admin: &Path, token: &str, namespace: Option<&str>) -> PathBuf {
    let admin: serde_json::Value = serde_yaml_ng::from_str(&std::fs::read_to_string(admin).unwrap()).unwrap();
    let mut context = serde_json::json!({"cluster": "cp", "user": "sa"});
    if let Some(ns) = namespace {
        context["namespace"] = ns.into();
    }
    let config = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "cp", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": context}],
        "current-context": "sa",
    });
    let path = tempdir("token-kubeconfig").join("kubeconfig");
    std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
    path
}

/// The PEM of the CA that signs the control plane's serving certificate.
pub fn ca_pem(kubeconfig: &Path) -> String {
    let kc: serde_json::Value = serde_yaml_ng::from_str(&std::fs::read_to_string(kubeconfig).unwrap()).unwrap();
    // ByteString decodes the kubeconfig's base64 for us.
    let data: k8s_openapi::ByteString =
        serde_json::from_value(kc["clusters"][0]["cluster"]["certificate-authority-data"].clone()).expect("CA data");
    String::from_utf8(data.0).expect("PEM is text")
}

// ---- Pinned tools (Helm, promtool, hadolint, nca) ----

/// The build's target folder (CARGO_TARGET_DIR or ./target).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// target/tools/NAME at its pinned version, installed by
/// hack/install-NAME.sh (which `make test` runs first; a plain `cargo test`
/// installs on first use). Never a copy from PATH: the pinned version is what
/// the checks are written for. Test binaries running in parallel wait on a
/// lock file, like the control plane build.
#[allow(dead_code)]
pub fn tool(name: &str) -> PathBuf {
    static INSTALLED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let tools = target_dir().join("tools");
    let mut installed = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    if installed.contains(name) {
        return tools.join(name);
    }
    std::fs::create_dir_all(&tools).unwrap();
    let lock = std::fs::File::create(tools.join(format!(".{name}-install-lock"))).unwrap();
    lock.lock().unwrap_or_else(|e| panic!("lock the {name} install: {e}"));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("hack/install-{name}.sh"));
    let out = Command::new(&script)
        .env("TOOLS_DIR", &tools)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(out.status.success(), "{} failed:\n{}{}", script.display(), text(&out.stdout), text(&out.stderr));
    installed.insert(name.to_string());
    tools.join(name)
}

// ---- policy.networking.k8s.io CRDs (hack/install-policy-crds.sh) ----

/// One CRD file of `sigs.k8s.io/network-policy-api` that
/// hack/install-policy-crds.sh copies into target/tools/policy-crds.
#[derive(Clone, Copy, Debug)]
pub struct PolicyCrd {
    /// The module version (the script pins the same ones).
    pub version: &'static str,
    /// standard or experimental.
    pub channel: &'static str,
    pub file: &'static str,
}

/// AdminNetworkPolicy v1alpha1, experimental channel (the `networks` peer),
/// at the version kube-network-policies v0.8.0 pins.
pub const ANP_EXPERIMENTAL: PolicyCrd = PolicyCrd {
    version: "v0.1.6-0.20250401132235-45061d10895e",
    channel: "experimental",
    file: "policy.networking.k8s.io_adminnetworkpolicies.yaml",
};
/// ClusterNetworkPolicy v1beta1 (storage) and v1alpha2, standard channel.
pub const CNP_STANDARD: PolicyCrd =
    PolicyCrd { version: "v0.3.1", channel: "standard", file: "policy.networking.k8s.io_clusternetworkpolicies.yaml" };
/// The same, experimental channel (named ports, `nodes`, `domainNames`).
pub const CNP_EXPERIMENTAL: PolicyCrd = PolicyCrd { channel: "experimental", ..CNP_STANDARD };

impl PolicyCrd {
    /// The file, installed on first use.
    pub fn path(&self) -> PathBuf {
        tool("policy-crds").join(self.version).join(self.channel).join(self.file)
    }

    /// The CRD as JSON.
    pub fn crd(&self) -> serde_json::Value {
        let path = self.path();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// `network-policy-api v0.3.1 standard`, for messages.
    pub fn describe(&self) -> String {
        format!("{} (network-policy-api {} {})", self.file, self.version, self.channel)
    }
}

/// Applies a CRD from target/tools/policy-crds and waits until it is served.
pub async fn install_policy_crd(client: &Client, crd: PolicyCrd) {
    apply_crd(client, &crd.crd()).await;
}

/// Applies `crd` (a CustomResourceDefinition, possibly replacing one of the
/// same name) and waits until discovery serves exactly its served versions.
pub async fn apply_crd(client: &Client, crd: &serde_json::Value) {
    apply_yaml(client, None, &serde_json::to_string(crd).unwrap()).await;
    let name = crd["metadata"]["name"].as_str().expect("a CRD name");
    wait_for_crd(client, name).await;
    let versions = crd["spec"]["versions"].as_array().expect("spec.versions");
    let want: BTreeSet<String> =
        versions.iter().filter(|v| v["served"] == true).map(|v| v["name"].as_str().unwrap().to_string()).collect();
    let (group, kind) = (crd["spec"]["group"].as_str().unwrap(), crd["spec"]["names"]["kind"].as_str().unwrap());
    let served = eventually(Duration::from_secs(30), || async {
        let now = served_versions(client, group, kind).await;
        (now == want).then_some(())
    })
    .await;
    if served.is_none() {
        let now = served_versions(client, group, kind).await;
        panic!("{kind}.{group}: discovery serves {now:?}, not {want:?}");
    }
}

/// The versions of `group` that serve `kind`, as discovery says now.
pub async fn served_versions(client: &Client, group: &str, kind: &str) -> BTreeSet<String> {
    let Ok(discovery) = Discovery::new(client.clone()).filter(&[group]).run().await else { return BTreeSet::new() };
    let Some(found) = discovery.get(group) else { return BTreeSet::new() };
    found
        .versions()
        .filter(|v| found.versioned_resources(v).iter().any(|(ar, _)| ar.kind == kind))
        .map(str::to_string)
        .collect()
}

/// Deletes the CRD `name` (with every object of its kind) and waits until it
/// is gone and discovery no longer serves `kind`.
pub async fn delete_crd(client: &Client, name: &str) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let Some(crd) = api.get_opt(name).await.expect("read CRD") else { return };
    let (group, kind) = (crd.spec.group.clone(), crd.spec.names.kind.clone());
    let _ = api.delete(name, &Default::default()).await;
    let gone = eventually(Duration::from_secs(60), || async {
        let absent = api.get_opt(name).await.ok()?.is_none();
        (absent && served_versions(client, &group, &kind).await.is_empty()).then_some(())
    })
    .await;
    assert!(gone.is_some(), "CRD {name} still there a minute after its delete");
}
