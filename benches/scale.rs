//! Scale benchmark (Issue 7): `make bench` (N=10000) or `make bench N=1000`.
//!
//! One run, against a fresh test control plane on 127.0.0.1:
//!   setup    N XBackends in 20 namespaces, one HTTPRoute each to one of 10
//!            Gateways of this controller's class, all before the controller runs
//!   floor    a minimal client writes the same N final status bodies (merge
//!            patch with a resourceVersion precondition, as the controller
//!            sends) with the controller's concurrency: the physical limit
//!   cold     controller start -> every XBackend has its correct status
//!   idle     60 s: a forced resync (a label touched on every XBackend, then an
//!            apiserver restart, which re-lists every watch) and the leader's
//!            periodic resync (every RESYNC_SECS here) must write nothing
//!   restart  a new controller process must write nothing
//!   latency  with N converged, 50 new XBackends (each with a route) created one
//!            at a time: apply -> correct status seen by a watch (p50, p99),
//!            next to the p50 of one status PATCH round trip (the floor)
//!   reaction one Gateway moves to a foreign controller's class: N/10 entries go
//!   rss      VmHWM at N, then with 10,000 extra unrelated 4 KiB Secrets, then
//!            with 10,000 unrelated Pods as well
//!
//! Floor, cold and restart start once the control plane is idle (its own
//! cache rebuilds and consistency checks are not the controller's cost).
//!
//! Not a test: `test = false` in Cargo.toml, and without `--bench` (which only
//! `cargo bench` passes) it exits at once.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use support::{Channel, ControlPlane, ControlPlaneOpts, Controller};
use xbackend_controller::model::ObjectRef;
use xbackend_controller::status::{Shape, merge};
use xbackend_controller::verdict::Verdicts;

const CONTROLLER: &str = "bench.example.com/xbackend-controller";
const FOREIGN: &str = "bench.example.com/someone-else";
const NAMESPACES: usize = 20;
const GATEWAYS: usize = 10;
const GW_NS: &str = "bench-gateways";
/// The controller's --concurrency (its default), and the floor client's.
const CONCURRENCY: usize = 16;
/// Requests in flight while creating objects.
const CREATE_IN_FLIGHT: usize = 32;
const SECRETS: usize = 10_000;
/// Unrelated Pods (no XBackend selects them), watched by metadata for EndpointSelector backends.
const PODS: usize = 10_000;
const IDLE: Duration = Duration::from_secs(60);
/// XBackends created one at a time in the latency phase.
const LATENCY_SAMPLES: usize = 50;
const LATENCY_NS: &str = "bench-latency";
/// --resync-interval for the benchmark: short enough that the idle phase sees
/// at least one periodic resync, long enough to stay out of a cold start.
const RESYNC_SECS: &str = "40";

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("benches/scale.rs is a benchmark: run it with `make bench` (N=10000) or `make bench N=1000`");
        return;
    }
    let n: usize = std::env::var("N").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    assert!(n >= GATEWAYS && n.is_multiple_of(GATEWAYS), "N must be a multiple of {GATEWAYS}");
    let fsync = std::env::var("BENCH_FSYNC").is_ok_and(|v| v == "1");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(run(n, fsync));
}

// ------------------------------------------------------------------ model

fn ns_of(i: usize) -> String {
    format!("bench-{}", i % NAMESPACES)
}
fn name_of(i: usize) -> String {
    format!("x-{i}")
}
fn gw_of(i: usize) -> usize {
    i % GATEWAYS
}

/// What an XBackend's stored status says of our entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    /// Exactly one entry, for Gateway `gw-k`, Accepted and ResolvedRefs True at
    /// the current generation.
    Correct(usize),
    /// No entry of ours.
    Empty,
    Wrong,
}

fn seen(o: &DynamicObject) -> Seen {
    let generation = o.metadata.generation.unwrap_or(0);
    let ours: Vec<&Value> = o.data["status"]["ancestors"]
        .as_array()
        .map(|a| a.iter().filter(|e| e["controllerName"] == CONTROLLER).collect())
        .unwrap_or_default();
    match ours[..] {
        [] => Seen::Empty,
        [e] => {
            let ok = e["ancestorRef"]["namespace"] == GW_NS
                && e["conditions"].as_array().is_some_and(|cs| {
                    cs.len() == 2 && cs.iter().all(|c| c["status"] == "True" && c["observedGeneration"] == generation)
                });
            match e["ancestorRef"]["name"].as_str().and_then(|n| n.strip_prefix("gw-")).and_then(|k| k.parse().ok()) {
                Some(k) if ok => Seen::Correct(k),
                _ => Seen::Wrong,
            }
        }
        _ => Seen::Wrong,
    }
}

/// Follows every XBackend through a watch and counts those that differ from
/// the current expectation; remembers when that count last reached zero.
#[derive(Default)]
struct Tracker {
    expected: HashMap<String, Seen>,
    actual: HashMap<String, Seen>,
    mismatches: usize,
    zero_at: Option<Instant>,
}

impl Tracker {
    fn expect(&mut self, f: impl Fn(usize) -> Seen, n: usize) {
        self.expected = (0..n).map(|i| (format!("{}/{}", ns_of(i), name_of(i)), f(i))).collect();
        self.mismatches = self.expected.iter().filter(|(k, v)| self.actual.get(*k) != Some(v)).count();
        self.zero_at = (self.mismatches == 0).then(Instant::now);
    }
    fn observe(&mut self, key: String, now: Seen) {
        let want = self.expected.get(&key).copied();
        let before = self.actual.insert(key, now);
        let was_ok = want.is_some() && before == want;
        let is_ok = want == Some(now);
        match (was_ok, is_ok) {
            (true, false) => self.mismatches += 1,
            (false, true) if want.is_some() => {
                self.mismatches -= 1;
                if self.mismatches == 0 {
                    self.zero_at = Some(Instant::now());
                }
            }
            _ => {}
        }
    }
}

async fn track(client: Client, tracker: Arc<Mutex<Tracker>>) {
    let api = xbackends_all(&client);
    let mut events = watcher::watcher(api, watcher::Config::default()).default_backoff().boxed();
    let mut errors = 0u64;
    while let Some(event) = events.next().await {
        let mut t = tracker.lock().unwrap();
        match event {
            Ok(Event::Apply(o)) | Ok(Event::InitApply(o)) => {
                let key = format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any());
                let s = seen(&o);
                t.observe(key, s);
            }
            Ok(Event::Init) => {
                eprintln!("bench watch: (re-)list started {}", xbackend_controller::judge::now_rfc3339())
            }
            Ok(Event::InitDone) => eprintln!("bench watch: list done {}", xbackend_controller::judge::now_rfc3339()),
            Ok(_) => {}
            Err(e) => {
                errors += 1;
                if errors.is_power_of_two() {
                    eprintln!("bench watch: {e} (retrying; {errors} errors so far)");
                }
            }
        }
    }
}

/// Waits until every XBackend matches the expectation; returns when that happened.
async fn settled(tracker: &Mutex<Tracker>, timeout: Duration, what: &str) -> Instant {
    let deadline = Instant::now() + timeout;
    loop {
        {
            let t = tracker.lock().unwrap();
            if let (0, Some(at)) = (t.mismatches, t.zero_at) {
                return at;
            }
            if Instant::now() > deadline {
                panic!("{what}: {} XBackends still differ after {timeout:?}", t.mismatches);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn xbackends_all(client: &Client) -> Api<DynamicObject> {
    let ar = kube::discovery::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
        "gateway.networking.x-k8s.io",
        "v1alpha1",
        "XBackend",
    ));
    Api::all_with(client.clone(), &ar)
}

// ---------------------------------------------------------------- objects

fn object(v: Value) -> DynamicObject {
    serde_json::from_value(v).unwrap()
}

async fn create_many(items: Vec<(Api<DynamicObject>, DynamicObject)>) -> Vec<DynamicObject> {
    stream::iter(items)
        .map(|(api, o)| async move { api.create(&PostParams::default(), &o).await })
        .buffer_unordered(CREATE_IN_FLIGHT)
        .try_collect()
        .await
        .expect("create")
}

/// The status list the controller writes for XBackend `i` (same code: the
/// library's merge with the Accepted/ResolvedRefs verdicts).
fn final_status(i: usize, now: &str) -> Vec<Value> {
    let verdicts = Verdicts {
        accepted: xbackend_controller::conditions::accepted(),
        resolved_refs: xbackend_controller::conditions::resolved_refs(),
    };
    let gateway = ObjectRef::new(GW_NS, format!("gw-{}", gw_of(i)));
    merge(&[], Shape::Ancestors, CONTROLLER, 1, &[(&gateway, &verdicts)], now).list
}

// ------------------------------------------------------------ measurement

struct Cpu {
    apiserver: f64,
    controller: f64,
    bench: f64,
}

fn cpu(cp: &ControlPlane, ctl: Option<&Controller>) -> Cpu {
    Cpu {
        apiserver: support::proc_cpu_seconds(cp.pid()).unwrap_or(0.0),
        controller: ctl.and_then(|c| support::proc_cpu_seconds(c.pid())).unwrap_or(0.0),
        bench: support::proc_cpu_seconds(std::process::id()).unwrap_or(0.0),
    }
}

struct Row {
    phase: String,
    wall: Duration,
    writes: String,
    cpu: Option<(f64, f64, f64)>,
    note: String,
}

fn row(phase: &str, wall: Duration, writes: impl ToString, before: &Cpu, after: &Cpu, note: impl Into<String>) -> Row {
    Row {
        phase: phase.into(),
        wall,
        writes: writes.to_string(),
        cpu: Some((
            after.apiserver - before.apiserver,
            after.controller - before.controller,
            after.bench - before.bench,
        )),
        note: note.into(),
    }
}

fn metric(ctl: &Controller, name: &str) -> f64 {
    ctl.metric(name).unwrap_or_else(|| panic!("metric {name} missing; log:\n{}", ctl.log_tail()))
}

async fn wait_metric(ctl: &Controller, name: &str, timeout: Duration, ok: impl Fn(f64) -> bool) -> Option<f64> {
    support::eventually(timeout, || async { ctl.metric(name).filter(|v| ok(*v)) }).await
}

/// Waits until a counter has not moved for `quiet`.
async fn quiesce(ctl: &Controller, name: &str, quiet: Duration, timeout: Duration) -> f64 {
    let deadline = Instant::now() + timeout;
    let mut last = ctl.metric(name).unwrap_or(0.0);
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = ctl.metric(name).unwrap_or(last);
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet || Instant::now() > deadline {
            return last;
        }
    }
}

/// Waits (up to 3 min) until the control plane has used under 0.1 CPU-s in a
/// 1 s window, and returns how long that took. Timed phases start from a
/// quiet apiserver: after its restart it rebuilds every watch cache (tens of
/// seconds at N=50,000), and every 5-7.5 min it lists each resource from etcd
/// to check its cache (DetectCacheInconsistency), work no controller causes.
async fn settle_control_plane(cp: &ControlPlane, before: &str) -> Duration {
    let t = Instant::now();
    let mut last = cpu(cp, None).apiserver;
    while t.elapsed() < Duration::from_secs(180) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = cpu(cp, None).apiserver;
        if now - last < 0.1 {
            break;
        }
        last = now;
    }
    let took = t.elapsed();
    eprintln!("bench: control plane settled in {took:.1?} before {before}");
    took
}

/// `--dns-server` of the benchmark's own DNS server (BENCH_DNS=0: no DNS check).
static DNS_SERVER: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// TTL of the benchmark's DNS answers: the idle phase sees every hostname re-resolved.
const DNS_TTL: u32 = 30;

/// Egress enforcement (`--egress-policy`), unless BENCH_EGRESS=0 or
/// BENCH_DNS=0 (it needs the DNS check).
fn egress() -> bool {
    std::env::var("BENCH_EGRESS").as_deref() != Ok("0") && matches!(DNS_SERVER.get(), Some(Some(_)))
}

/// The engine (BENCH_ENGINE: networkpolicy, adminnetworkpolicy or
/// clusternetworkpolicy; default networkpolicy).
fn engine() -> String {
    std::env::var("BENCH_ENGINE").unwrap_or_else(|_| "networkpolicy".into())
}

/// Services referenced by routes, one more backendRef on each of the first
/// routes (BENCH_SERVICES, default 1,000), with enforcement on: each becomes
/// a rule of `--egress-cluster routes`.
fn services(n: usize) -> usize {
    let wanted = std::env::var("BENCH_SERVICES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    if egress() { wanted.min(n) } else { 0 }
}

fn start_controller(cp: &ControlPlane) -> Controller {
    start_controller_env(cp, &[])
}

/// BENCH_HEAPTRACK=1: the cold-start process (through cold and idle) runs
/// under heaptrack's preload library, writing raw data to
/// target/bench/heaptrack-cold.raw; `hack/heap-profile.sh` turns it into the
/// by-owner table. For profiling runs only: it slows every allocation.
fn start_profiled_controller(cp: &ControlPlane) -> Controller {
    if !std::env::var("BENCH_HEAPTRACK").is_ok_and(|v| v == "1") {
        return start_controller(cp);
    }
    let raw = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench/heaptrack-cold.raw");
    let _ = std::fs::remove_file(&raw);
    let raw = raw.to_str().expect("utf-8 path").to_string();
    start_controller_env(
        cp,
        &[("LD_PRELOAD", "/usr/lib/heaptrack/libheaptrack_preload.so"), ("DUMP_HEAPTRACK_OUTPUT", &raw)],
    )
}

fn start_controller_env(cp: &ControlPlane, env: &[(&str, &str)]) -> Controller {
    let concurrency = CONCURRENCY.to_string();
    let mut args = vec![
        "--no-leader-election",
        "--controller-name",
        CONTROLLER,
        "--concurrency",
        &concurrency,
        "--resync-interval",
        RESYNC_SECS,
    ];
    let engine = engine();
    if let Some(Some(server)) = DNS_SERVER.get() {
        args.extend(["--dns-check", "--dns-server", server]);
        if egress() {
            // Held to what the routes name; the bench class's data plane needs nothing.
            args.extend(["--egress-policy", &engine, "--egress-cluster", "routes", "--egress-needs", "bench=none"]);
        }
    }
    let mut env = env.to_vec();
    env.push(("RUST_LOG", "info"));
    Controller::start_with_env(&cp.kubeconfig, &args, &env)
}

/// A fresh controller process until it has reconciled all `n`: its row and
/// its VmHWM at that point (the processes compared in the RSS rows).
async fn fresh_process(cp: &ControlPlane, n: usize, phase: &str, note: String) -> (Row, u64) {
    let before = cpu(cp, None);
    let started = Instant::now();
    let ctl = start_controller(cp);
    let ready_in = time_to_ready(&ctl, started).await;
    wait_metric(&ctl, "xbackend_reconciles_total", Duration::from_secs(300), |r| r >= n as f64)
        .await
        .expect("reconciles all");
    let wall = started.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = cpu(cp, Some(&ctl));
    let writes = metric(&ctl, "xbackend_status_writes_total");
    let note = format!("{note}; ready after {ready_in:.2?}");
    (row(phase, wall, writes, &before, &after, note), ctl.peak_rss_kib().unwrap_or(0))
}

/// Copies the controller's "watch synced" log lines (one per kind, with
/// their time) to the bench log: which watch a slow start waited for.
fn log_watch_syncs(ctl: &Controller, phase: &str) {
    let log = std::fs::read_to_string(&ctl.log).unwrap_or_default();
    for line in log.lines().filter(|l| ["serving /metrics", "watch synced"].iter().any(|m| l.contains(m))) {
        eprintln!("{phase}: {line}");
    }
}

/// Polls /readyz every 20 ms from `started`; returns how long it took.
async fn time_to_ready(ctl: &Controller, started: Instant) -> Duration {
    loop {
        if ctl.http_get("/readyz").is_some_and(|r| r.0 == 200) {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// BENCH_PERF=1: `perf record` (499 Hz, user+kernel where allowed) of these
/// processes until `perf_stop`; the profile goes to target/bench/perf-<name>.data.
/// For where-does-the-time-go runs only: sampling adds a little overhead.
fn perf_start(name: &str, pids: &[u32]) -> Option<std::process::Child> {
    if !std::env::var("BENCH_PERF").is_ok_and(|v| v == "1") {
        return None;
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).ok()?;
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    let child = std::process::Command::new("perf")
        .args(["record", "-F", "499", "-g", "-p", &pids.join(","), "-o"])
        .arg(dir.join(format!("perf-{name}.data")))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    // perf needs a moment to attach.
    std::thread::sleep(Duration::from_millis(200));
    Some(child)
}

fn perf_stop(child: Option<std::process::Child>) {
    if let Some(mut child) = child {
        let _ = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status();
        let _ = child.wait();
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

// -------------------------------------------------------------------- run

async fn run(n: usize, fsync: bool) {
    let total = Instant::now();
    let mut rows: Vec<Row> = Vec::new();
    let opts = ControlPlaneOpts { channel: Channel::Standard, fsync };
    eprintln!("bench: n={n}; starting the control plane (fsync: {fsync})");
    let cp = ControlPlane::start_opts(opts);
    let client = support::client_from(&cp.kubeconfig).await;
    support::install_crd(&client).await;
    // Every hostname resolves to a public address through a DNS server of the
    // benchmark's own on 127.0.0.1, so the resolved-address check runs as in production.
    let dns = (std::env::var("BENCH_DNS").as_deref() != Ok("0")).then_some(support::dns::DnsServer::start().await);
    if let Some(dns) = &dns {
        for i in 0..n {
            dns.set(
                &format!("api{i}.example.com"),
                support::dns::Answer::Addresses(vec!["93.184.215.14".parse().unwrap()], DNS_TTL),
            );
        }
    }
    DNS_SERVER.set(dns.as_ref().map(|d| d.flag())).expect("set once");

    // ---- setup
    let t = Instant::now();
    let namespaces = Api::<Namespace>::all(client.clone());
    for ns in (0..NAMESPACES).map(|i| format!("bench-{i}")).chain([
        GW_NS.to_string(),
        "bench-secrets".to_string(),
        "bench-pods".to_string(),
    ]) {
        namespaces
            .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap())
            .await
            .unwrap();
    }
    let mut yaml = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: bench}}\nspec: {{controllerName: {CONTROLLER}}}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: foreign}}\nspec: {{controllerName: {FOREIGN}}}\n"
    );
    for k in 0..GATEWAYS {
        yaml.push_str(&format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw-{k}, namespace: {GW_NS}}}\nspec:\n  gatewayClassName: bench\n  listeners: [{{name: http, protocol: HTTP, port: 80, allowedRoutes: {{namespaces: {{from: All}}}}}}]\n"
        ));
    }
    support::apply_yaml(&client, None, &yaml).await;
    let xb = |i: usize| support::xbackend_api(&client, &ns_of(i));
    let backends = (0..n)
        .map(|i| {
            let host = format!("api{i}.example.com");
            let o = object(json!({
                "apiVersion": "gateway.networking.x-k8s.io/v1alpha1", "kind": "XBackend",
                "metadata": {"name": name_of(i)},
                "spec": {"type": "ExternalHostname", "port": {"port": 443}, "externalHostname": {"hostname": host},
                         "tls": {"mode": "ServerOnly", "validation": {"hostname": host}}}
            }));
            (xb(i), o)
        })
        .collect();
    let created = create_many(backends).await;
    let services = services(n);
    match engine().as_str() {
        "adminnetworkpolicy" => support::install_policy_crd(&client, support::ANP_EXPERIMENTAL).await,
        "clusternetworkpolicy" => support::install_policy_crd(&client, support::CNP_STANDARD).await,
        _ => {}
    }
    let service_objects = (0..services)
        .map(|j| {
            let o = object(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": format!("svc-{j}")},
                "spec": {"selector": {"app": format!("svc-{j}")}, "ports": [{"port": 80, "targetPort": 8080}]}
            }));
            (support::dynamic(&client, &ns_of(j), "", "v1", "Service"), o)
        })
        .collect();
    create_many(service_objects).await;
    let routes = (0..n)
        .map(|i| {
            let mut refs =
                vec![json!({"group": "gateway.networking.x-k8s.io", "kind": "XBackend", "name": name_of(i)})];
            if i < services {
                refs.push(json!({"name": format!("svc-{i}"), "port": 80}));
            }
            let o = object(json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                "metadata": {"name": format!("r-{i}")},
                "spec": {"parentRefs": [{"name": format!("gw-{}", gw_of(i)), "namespace": GW_NS}],
                         "rules": [{"backendRefs": refs}]}
            }));
            (support::dynamic(&client, &ns_of(i), "gateway.networking.k8s.io", "v1", "HTTPRoute"), o)
        })
        .collect();
    create_many(routes).await;
    let setup = t.elapsed();
    eprintln!("bench: created {n} XBackends, {n} HTTPRoutes and {services} Services in {setup:.1?}");
    let mut rv: HashMap<String, String> = created
        .iter()
        .map(|o| (format!("{}/{}", o.namespace().unwrap(), o.name_any()), o.resource_version().unwrap()))
        .collect();

    let tracker = Arc::new(Mutex::new(Tracker::default()));
    tracker.lock().unwrap().expect(|_| Seen::Empty, n);
    let watch = tokio::spawn(track(client.clone(), tracker.clone()));
    settled(&tracker, Duration::from_secs(120), "bench watch initial list").await;

    // ---- floor: the same bodies, the same concurrency, straight to the apiserver.
    settle_control_plane(&cp, "floor").await;
    let now = xbackend_controller::judge::now_rfc3339();
    tracker.lock().unwrap().expect(|i| Seen::Correct(gw_of(i)), n);
    let perf = perf_start("floor", &[cp.pid(), std::process::id()]);
    let before = cpu(&cp, None);
    let t = Instant::now();
    let results: Vec<(String, String)> = stream::iter(0..n)
        .map(|i| {
            let api = xb(i);
            let key = format!("{}/{}", ns_of(i), name_of(i));
            let body =
                json!({"metadata": {"resourceVersion": rv[&key]}, "status": {"ancestors": final_status(i, &now)}});
            async move {
                let o = api
                    .patch_status(&name_of(i), &PatchParams::default(), &Patch::Merge(&body))
                    .await
                    .expect("floor write");
                (key, o.resource_version().unwrap())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let floor = t.elapsed();
    let after = cpu(&cp, None);
    perf_stop(perf);
    rv.extend(results);
    settled(&tracker, Duration::from_secs(60), "floor bodies are the correct status").await;
    rows.push(row(
        "floor",
        floor,
        n,
        &before,
        &after,
        format!("{CONCURRENCY} in flight, merge patch with resourceVersion"),
    ));

    // Back to no status, as before the controller ever ran (not timed).
    tracker.lock().unwrap().expect(|_| Seen::Empty, n);
    stream::iter(0..n)
        .map(|i| {
            let api = xb(i);
            async move {
                api.patch_status(&name_of(i), &PatchParams::default(), &Patch::Merge(json!({"status": null})))
                    .await
                    .expect("clear")
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    settled(&tracker, Duration::from_secs(120), "statuses cleared").await;

    // ---- cold
    tracker.lock().unwrap().expect(|i| Seen::Correct(gw_of(i)), n);
    settle_control_plane(&cp, "cold").await;
    let before = cpu(&cp, None);
    let started = Instant::now();
    let ctl = start_profiled_controller(&cp);
    let perf = perf_start("cold", &[cp.pid(), ctl.pid(), std::process::id()]);
    let ready_in = time_to_ready(&ctl, started).await;
    log_watch_syncs(&ctl, "cold");
    let done_at = settled(&tracker, Duration::from_secs(600), "cold start").await;
    let cold = done_at - started;
    let after = cpu(&cp, Some(&ctl));
    perf_stop(perf);
    let cold_writes =
        quiesce(&ctl, "xbackend_status_writes_total", Duration::from_secs(2), Duration::from_secs(30)).await;
    // The policy writer's first decision waits for the first pass, then coalesces.
    let policy_writes_cold = if egress() {
        wait_metric(&ctl, "xbackend_egress_policy_objects", Duration::from_secs(60), |o| o > 0.0).await;
        quiesce(&ctl, "xbackend_egress_policy_writes_total", Duration::from_secs(3), Duration::from_secs(60)).await
    } else {
        0.0
    };
    let policy_objects = ctl.metric("xbackend_egress_policy_objects").unwrap_or(0.0);
    let reconciles = metric(&ctl, "xbackend_reconciles_total");
    let conflicts = metric(&ctl, "xbackend_status_conflicts_total");
    let reconcile_sum = metric(&ctl, "xbackend_reconcile_duration_seconds_sum");
    let slow_lookups = ctl.metric("xbackend_dns_slow_first_lookups_total").unwrap_or(0.0);
    let lookups = ctl.metric("xbackend_dns_lookups_total").unwrap_or(0.0);
    let rss_cold = ctl.peak_rss_kib().unwrap_or(0);
    rows.push(row(
        "cold",
        cold,
        cold_writes,
        &before,
        &after,
        format!(
            "ready (all watches synced) after {ready_in:.2?}, writing {:.2} s; {reconciles} reconciles, {conflicts} conflicts; {lookups} DNS lookups, {slow_lookups} reconciles stopped waiting for a first answer; reconcile time per write {:.1} ms (floor: {:.1} ms per write)",
            (cold - ready_in).as_secs_f64(),
            1000.0 * reconcile_sum / cold_writes.max(1.0),
            1000.0 * floor.as_secs_f64() * CONCURRENCY as f64 / n as f64
        ),
    ));
    let ratio = cold.as_secs_f64() / floor.as_secs_f64();
    let ctrl_cpu = after.controller - before.controller;

    // ---- idle 60 s with a forced resync: every XBackend touched (a label),
    // then the apiserver restarted (every watch re-lists).
    let idle_start = Instant::now();
    let before = cpu(&cp, Some(&ctl));
    let writes0 = metric(&ctl, "xbackend_status_writes_total");
    let policy_writes0 = ctl.metric("xbackend_egress_policy_writes_total").unwrap_or(0.0);
    let reconciles0 = metric(&ctl, "xbackend_reconciles_total");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let t = Instant::now();
    stream::iter(0..n)
        .map(|i| {
            let api = xb(i);
            async move {
                api.patch(
                    &name_of(i),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": {"bench-touched": "yes"}}})),
                )
                .await
                .expect("touch")
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    let touched =
        wait_metric(&ctl, "xbackend_reconciles_total", Duration::from_secs(120), |r| r >= reconciles0 + n as f64).await;
    let touch_took = t.elapsed();
    let rss_after_touch = ctl.peak_rss_kib().unwrap_or(0);
    let t = Instant::now();
    // CPU of the stopped process counts towards this phase; the new one starts at 0.
    let stopped_cpu = cpu(&cp, None).apiserver;
    cp.stop();
    cp.restart(opts);
    let apiserver_restart = t.elapsed();
    let relisted =
        wait_metric(&ctl, "xbackend_reconciles_total", Duration::from_secs(120), |r| r >= reconciles0 + 2.0 * n as f64)
            .await;
    let resynced_in = t.elapsed();
    if let Some(rest) = IDLE.checked_sub(idle_start.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    // At least one periodic resync inside the phase, fully reconciled: the
    // label touch, the re-list and the resync each reconcile all N.
    let periodic = match wait_metric(&ctl, "xbackend_resyncs_total", Duration::from_secs(60), |r| r >= 1.0).await {
        Some(_) => {
            let target = reconciles0 + 3.0 * n as f64;
            wait_metric(&ctl, "xbackend_reconciles_total", Duration::from_secs(120), |r| r >= target).await
        }
        None => None,
    };
    let resyncs = metric(&ctl, "xbackend_resyncs_total");
    let idle_wall = idle_start.elapsed();
    let idle_writes = metric(&ctl, "xbackend_status_writes_total") - writes0;
    let policy_writes_idle = ctl.metric("xbackend_egress_policy_writes_total").unwrap_or(0.0) - policy_writes0;
    let idle_reconciles = metric(&ctl, "xbackend_reconciles_total") - reconciles0;
    let mut after = cpu(&cp, Some(&ctl));
    after.apiserver += stopped_cpu;
    rows.push(row(
        "idle+resync",
        idle_wall,
        idle_writes,
        &before,
        &after,
        format!(
            "{idle_reconciles} reconciles: label on all {n} re-checked in {touch_took:.1?}{} (VmHWM then {:.1} MiB); apiserver restart {apiserver_restart:.1?}, all re-checked {resynced_in:.1?} after it began{} (VmHWM then {:.1} MiB; file pages, mostly code, {:.1} MiB of the RSS then); {resyncs} periodic resyncs (every {RESYNC_SECS} s){}",
            if touched.is_some() { "" } else { " (NOT all)" },
            mib(rss_after_touch),
            if relisted.is_some() { "" } else { " (NOT all)" },
            mib(ctl.peak_rss_kib().unwrap_or(0)),
            mib(ctl.file_rss_kib().unwrap_or(0)),
            if periodic.is_some() { "" } else { " (NOT completed)" }
        ),
    ));
    let rss_idle = ctl.peak_rss_kib().unwrap_or(0);
    assert_eq!(ctl.terminate(), Some(0), "graceful shutdown");
    settled(&tracker, Duration::from_secs(60), "status still correct after idle").await;

    // ---- restart: a new process at N must write nothing.
    let settle = settle_control_plane(&cp, "restart").await;
    let before = cpu(&cp, None);
    let started = Instant::now();
    let ctl = start_controller(&cp);
    let perf = perf_start("restart", &[cp.pid(), ctl.pid(), std::process::id()]);
    let ready_in = time_to_ready(&ctl, started).await;
    log_watch_syncs(&ctl, "restart");
    wait_metric(&ctl, "xbackend_reconciles_total", Duration::from_secs(300), |r| r >= n as f64)
        .await
        .expect("restart reconciles all");
    let restart_wall = started.elapsed();
    let after = cpu(&cp, Some(&ctl));
    perf_stop(perf);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restart_writes = metric(&ctl, "xbackend_status_writes_total");
    // Past the policy writer's first-pass wait and coalescing.
    if egress() {
        wait_metric(&ctl, "xbackend_egress_policy_objects", Duration::from_secs(60), |o| o > 0.0).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let policy_writes_restart = ctl.metric("xbackend_egress_policy_writes_total").unwrap_or(0.0);
    let rss_restart = ctl.peak_rss_kib().unwrap_or(0);
    rows.push(row(
        "restart",
        restart_wall,
        restart_writes,
        &before,
        &after,
        format!(
            "ready after {ready_in:.2?}; to all {n} reconciled (started once the control plane was idle, {settle:.1?} after the idle phase)"
        ),
    ));

    // ---- one Service changes: one policy object is rewritten.
    let policy_writes_service = if services > 0 {
        let writes0 = ctl.metric("xbackend_egress_policy_writes_total").unwrap_or(0.0);
        let patch = json!({"spec": {"ports": [{"port": 80, "targetPort": 8081}]}});
        support::dynamic(&client, &ns_of(0), "", "v1", "Service")
            .patch("svc-0", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        wait_metric(&ctl, "xbackend_egress_policy_writes_total", Duration::from_secs(60), |w| w > writes0).await;
        quiesce(&ctl, "xbackend_egress_policy_writes_total", Duration::from_secs(3), Duration::from_secs(60)).await
            - writes0
    } else {
        0.0
    };

    // ---- latency: apply -> status seen, one new XBackend at a time.
    let latency = latency_phase(&client, support::client_from(&cp.kubeconfig).await, &ctl, dns.as_ref()).await;
    rows.push(latency.row);
    let rss_latency = ctl.peak_rss_kib().unwrap_or(0);

    // ---- reaction: gw-0 moves to a foreign controller's class.
    tracker.lock().unwrap().expect(|i| if gw_of(i) == 0 { Seen::Empty } else { Seen::Correct(gw_of(i)) }, n);
    let writes0 = metric(&ctl, "xbackend_status_writes_total");
    let gateways = support::dynamic(&client, GW_NS, "gateway.networking.k8s.io", "v1", "Gateway");
    let before = cpu(&cp, Some(&ctl));
    let t = Instant::now();
    gateways
        .patch("gw-0", &PatchParams::default(), &Patch::Merge(json!({"spec": {"gatewayClassName": "foreign"}})))
        .await
        .unwrap();
    let done_at = settled(&tracker, Duration::from_secs(300), "reaction").await;
    let reaction = done_at - t;
    let after = cpu(&cp, Some(&ctl));
    let reaction_writes =
        quiesce(&ctl, "xbackend_status_writes_total", Duration::from_secs(2), Duration::from_secs(30)).await - writes0;
    rows.push(row(
        "reaction",
        reaction,
        reaction_writes,
        &before,
        &after,
        format!("{} XBackends drop gw-0", n / GATEWAYS),
    ));

    // ---- 10,000 unrelated 4 KiB Secrets, then a fresh process again.
    let rss_live_before = ctl.rss_kib().unwrap_or(0);
    let t = Instant::now();
    let secrets = Api::<Secret>::namespaced(client.clone(), "bench-secrets");
    stream::iter(0..SECRETS)
        .map(|i| {
            let secrets = secrets.clone();
            async move {
                let data: Vec<u8> =
                    (0..4096u32).map(|b| (b.wrapping_mul(2_654_435_761).wrapping_add(i as u32) >> 13) as u8).collect();
                let s = Secret {
                    metadata: kube::api::ObjectMeta { name: Some(format!("unrelated-{i}")), ..Default::default() },
                    data: Some([("blob".to_string(), ByteString(data))].into()),
                    ..Default::default()
                };
                secrets.create(&PostParams::default(), &s).await.expect("secret")
            }
        })
        .buffer_unordered(CREATE_IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
    let secrets_took = t.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_live_after = ctl.rss_kib().unwrap_or(0);
    let hwm_live_after = ctl.peak_rss_kib().unwrap_or(0);
    assert_eq!(ctl.terminate(), Some(0));
    let note = format!("{SECRETS} Secrets of 4 KiB created in {secrets_took:.1?}; to all {n} reconciled");
    let (secrets_row, rss_secrets) = fresh_process(&cp, n, "restart+secrets", note).await;
    rows.push(secrets_row);

    // ---- 10,000 unrelated Pods (labels like a Deployment's), then a fresh process again.
    let t = Instant::now();
    let pods = Api::<Pod>::namespaced(client.clone(), "bench-pods");
    stream::iter(0..PODS)
        .map(|i| {
            let pods = pods.clone();
            async move {
                let pod: Pod = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("unrelated-{i}"), "labels": {
                        "app": format!("app-{}", i % 100), "pod-template-hash": format!("{:010x}", i * 7919)
                    }},
                    "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]}
                }))
                .expect("pod");
                pods.create(&PostParams::default(), &pod).await.expect("pod")
            }
        })
        .buffer_unordered(CREATE_IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
    let pods_took = t.elapsed();
    let note = format!("{PODS} Pods created in {pods_took:.1?}; to all {n} reconciled");
    let (pods_row, rss_pods) = fresh_process(&cp, n, "restart+pods", note).await;
    rows.push(pods_row);
    watch.abort();
    let delta = rss_secrets as f64 - rss_restart as f64;
    let pods_delta = rss_pods as f64 - rss_secrets as f64;
    let rss_peak = [rss_cold, rss_idle, rss_restart, rss_latency, hwm_live_after, rss_secrets, rss_pods]
        .into_iter()
        .max()
        .unwrap_or(0);

    // ---- report
    println!();
    println!(
        "xbackend-controller scale benchmark: N={n} XBackends, {NAMESPACES} namespaces, {GATEWAYS} Gateways, {} cores, etcd fsync {}",
        std::thread::available_parallelism().map(|p| p.get()).unwrap_or(0),
        if fsync { "on" } else { "off (--unsafe-no-fsync)" }
    );
    println!("setup (create {n} XBackends + {n} HTTPRoutes, {CREATE_IN_FLIGHT} in flight): {setup:.1?}");
    match &dns {
        Some(dns) => println!(
            "DNS check on: {n} distinct hostnames answered by a local DNS server (TTL {DNS_TTL} s); it received {} queries in all",
            (0..n).map(|i| dns.queries(&format!("api{i}.example.com"))).sum::<usize>()
        ),
        None => println!("DNS check off (BENCH_DNS=0)"),
    }
    println!();
    println!("| phase | wall | status writes | apiserver+etcd CPU s | controller CPU s | bench CPU s | notes |");
    println!("|---|---:|---:|---:|---:|---:|---|");
    for r in &rows {
        let (a, c, b) = r.cpu.unwrap_or_default();
        println!(
            "| {} | {:.2} s | {} | {a:.1} | {c:.1} | {b:.1} | {} |",
            r.phase,
            r.wall.as_secs_f64(),
            r.writes,
            r.note
        );
    }
    println!();
    println!("| measure | value | target |");
    println!("|---|---:|---|");
    println!("| floor | {:.2} s ({:.0} writes/s) | |", floor.as_secs_f64(), n as f64 / floor.as_secs_f64());
    println!("| cold | {:.2} s | |", cold.as_secs_f64());
    println!("| ratio cold/floor | {ratio:.2} | <= 1.25 |");
    println!(
        "| writes: cold / idle+resync / restart / reaction | {cold_writes} / {idle_writes} / {restart_writes} / {reaction_writes} | {n} / 0 / 0 / {} |",
        n / GATEWAYS
    );
    println!(
        "| egress ({}, {services} Services by routes): objects / writes cold / idle+resync / restart / one Service changed | {policy_objects} / {policy_writes_cold} / {policy_writes_idle} / {policy_writes_restart} / {policy_writes_service} | about one write per object cold; 0 / 0 / 1 |",
        engine()
    );
    println!("| reaction time | {:.2} s | |", reaction.as_secs_f64());
    println!(
        "| latency apply -> status seen, {LATENCY_SAMPLES} new XBackends: p50 / p99 | {:.1} / {:.1} ms | p99 <= 2 x floor + 50 ms = {:.1} ms |",
        latency.p50_ms,
        latency.p99_ms,
        2.0 * latency.floor_ms + 50.0
    );
    println!("| floor: one status PATCH round trip, p50 | {:.1} ms | |", latency.floor_ms);
    println!(
        "| controller CPU in the cold phase | {ctrl_cpu:.2} s ({:.2} s per 1,000 reconciles) | |",
        1000.0 * ctrl_cpu / reconciles.max(1.0)
    );
    println!(
        "| controller VmHWM: cold at N / after idle / restart at N / restart with {SECRETS} Secrets | {:.1} / {:.1} / {:.1} / {:.1} MiB | |",
        mib(rss_cold),
        mib(rss_idle),
        mib(rss_restart),
        mib(rss_secrets)
    );
    println!("| RSS growth with {SECRETS} Secrets (fresh process) | {:.1} MiB | < 10 MiB |", delta / 1024.0);
    println!(
        "| RSS growth with {PODS} unrelated Pods (fresh process; VmHWM {:.1} MiB) | {:.1} MiB | < 10 MiB |",
        mib(rss_pods),
        pods_delta / 1024.0
    );
    println!(
        "| live process while they were created: VmRSS {:.1} -> {:.1} MiB, VmHWM {:.1} MiB | | |",
        mib(rss_live_before),
        mib(rss_live_after),
        mib(hwm_live_after)
    );
    println!(
        "| controller VmHWM, every phase (peak) | {:.1} MiB ({:.1} KiB per XBackend) | <= 64 MiB |",
        mib(rss_peak),
        rss_peak as f64 / n as f64
    );
    println!("| total bench wall time | {:.0} s | |", total.elapsed().as_secs_f64());
    println!();
    println!(
        "bench: n={n} ratio={ratio:.2} cold_writes={cold_writes} idle_writes={idle_writes} restart_writes={restart_writes} reaction_writes={reaction_writes} rss_mib={:.0} rss_secrets_delta_mib={:.1} p50_react_ms={:.1} p99_react_ms={:.1} floor_patch_ms={:.1} ctrl_cpu_s={ctrl_cpu:.2} policy_objects={policy_objects} policy_writes_cold={policy_writes_cold} policy_writes_idle={policy_writes_idle} policy_writes_restart={policy_writes_restart} engine={} services={services} policy_writes_service={policy_writes_service}",
        mib(rss_peak),
        delta / 1024.0,
        latency.p50_ms,
        latency.p99_ms,
        latency.floor_ms,
        engine()
    );
    cp.stop();
}

// ---------------------------------------------------------------- latency

struct Latency {
    row: Row,
    p50_ms: f64,
    p99_ms: f64,
    floor_ms: f64,
}

/// The sample at quantile `q` (nearest rank) of sorted `samples`.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// With the controller converged: per sample, one status PATCH round trip on
/// an XBackend no route references (the floor, a real write each time), then
/// a new XBackend whose route already exists, timed from the create request
/// to a watch of that one object seeing its correct status. New backends use
/// gw-1..gw-9, so the reaction phase (gw-0) is not changed by them.
/// `watch_client` serves the per-sample watches: a dropped watch closes its
/// connection, and the timed requests on `client` must not pay for a new one.
async fn latency_phase(
    client: &Client,
    watch_client: Client,
    ctl: &Controller,
    dns: Option<&support::dns::DnsServer>,
) -> Latency {
    let namespaces = Api::<Namespace>::all(client.clone());
    namespaces
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": LATENCY_NS}})).unwrap())
        .await
        .unwrap();
    let xb = support::xbackend_api(client, LATENCY_NS);
    let routes = support::dynamic(client, LATENCY_NS, "gateway.networking.k8s.io", "v1", "HTTPRoute");
    let spec =
        |host: &str| json!({"type": "ExternalHostname", "port": {"port": 443}, "externalHostname": {"hostname": host}});
    // The floor's objects: no route references them, so the controller writes nothing for them.
    let floor_object = |i: usize| {
        object(json!({"apiVersion": "gateway.networking.x-k8s.io/v1alpha1", "kind": "XBackend",
            "metadata": {"name": format!("floor-{i}")}, "spec": spec(&format!("floor{i}.example.com"))}))
    };
    let mut floor_rv = Vec::new();
    for i in 0..LATENCY_SAMPLES {
        if let Some(dns) = dns {
            for host in [format!("floor{i}.example.com"), format!("new{i}.example.com")] {
                dns.set(&host, support::dns::Answer::Addresses(vec!["93.184.215.14".parse().unwrap()], DNS_TTL));
            }
        }
        floor_rv.push(
            xb.create(&PostParams::default(), &floor_object(i))
                .await
                .expect("floor object")
                .resource_version()
                .expect("resourceVersion"),
        );
    }
    let writes0 = metric(ctl, "xbackend_status_writes_total");
    let mut floor_ms = Vec::new();
    let mut react_ms = Vec::new();
    let started = Instant::now();
    for (i, rv) in floor_rv.into_iter().enumerate() {
        let body = json!({"metadata": {"resourceVersion": rv}, "status": {"ancestors": [{
            "ancestorRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": GW_NS, "name": "gw-x"},
            "controllerName": FOREIGN,
            "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "floor",
                            "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}]}]}});
        let t = Instant::now();
        xb.patch_status(&format!("floor-{i}"), &PatchParams::default(), &Patch::Merge(&body))
            .await
            .expect("floor patch");
        floor_ms.push(t.elapsed().as_secs_f64() * 1000.0);

        let name = format!("new-{i}");
        let gw = 1 + i % (GATEWAYS - 1);
        let route = object(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": format!("r-{name}")},
            "spec": {"parentRefs": [{"name": format!("gw-{gw}"), "namespace": GW_NS}],
                     "rules": [{"backendRefs": [{"group": "gateway.networking.x-k8s.io", "kind": "XBackend", "name": name, "port": 443}]}]}
        }));
        routes.create(&PostParams::default(), &route).await.expect("latency route");
        let key = format!("{LATENCY_NS}/{name}");
        let backend = object(json!({"apiVersion": "gateway.networking.x-k8s.io/v1alpha1", "kind": "XBackend",
            "metadata": {"name": name}, "spec": spec(&format!("new{i}.example.com"))}));
        // A watch of this one object, open before the create: the watch of all
        // N re-lists now and then (11 s at N=50,000), which would count here.
        let one = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut events =
            watcher::watcher(support::xbackend_api(&watch_client, LATENCY_NS), one).default_backoff().boxed();
        loop {
            match events.next().await {
                Some(Ok(Event::InitDone)) => break,
                Some(_) => {}
                None => panic!("{key}: the watch ended before it listed"),
            }
        }
        let t = Instant::now();
        xb.create(&PostParams::default(), &backend).await.expect("latency XBackend");
        let created = t.elapsed();
        let correct = async {
            while let Some(event) = events.next().await {
                if let Ok(Event::Apply(o)) = event
                    && seen(&o) == Seen::Correct(gw)
                {
                    return Instant::now();
                }
            }
            panic!("{key}: the watch ended");
        };
        let seen = tokio::time::timeout(Duration::from_secs(60), correct)
            .await
            .unwrap_or_else(|_| panic!("{key} never got its status; log:\n{}", ctl.log_tail()));
        let took = seen.saturating_duration_since(t);
        if took > Duration::from_millis(500) {
            // Which step a slow sample waited on: the create itself, or after it.
            eprintln!(
                "bench: slow latency sample {key}: {took:.1?} (create returned after {created:.1?}); now {}",
                xbackend_controller::judge::now_rfc3339()
            );
        }
        react_ms.push(took.as_secs_f64() * 1000.0);
    }
    let wall = started.elapsed();
    // The last status can reach our watch before the controller counts its write.
    let writes = quiesce(ctl, "xbackend_status_writes_total", Duration::from_millis(500), Duration::from_secs(10))
        .await
        - writes0;
    for v in [&mut floor_ms, &mut react_ms] {
        v.sort_by(f64::total_cmp);
    }
    let (p50_ms, p99_ms, floor_p50) = (quantile(&react_ms, 0.5), quantile(&react_ms, 0.99), quantile(&floor_ms, 0.5));
    let row = Row {
        phase: "latency".into(),
        wall,
        writes: writes.to_string(),
        cpu: None,
        note: format!(
            "{LATENCY_SAMPLES} new XBackends one at a time: apply -> status seen p50 {p50_ms:.1} ms, p99 {p99_ms:.1} ms; one status PATCH round trip p50 {floor_p50:.1} ms (p99 {:.1} ms)",
            quantile(&floor_ms, 0.99)
        ),
    };
    Latency { row, p50_ms, p99_ms, floor_ms: floor_p50 }
}
