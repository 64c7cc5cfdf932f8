//! Fault tests (Issue 7): a concurrent writer on the same status lists, the
//! controller SIGKILLed mid-reconcile, the apiserver stopped and restarted
//! under a running controller, two replicas with leader election, malformed
//! objects under a permissive CRD; and property tests (fuzzing) of the pure
//! core: hostname validation, guardrail matching, PEM parsing, status merge.
//!
//! Every cluster test is bounded by `bounded(..)`; the property tests honour
//! PROPTEST_CASES (default 256 cases each).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use kube::Client;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::{
    Channel, ControlPlane, ControlPlaneOpts, Controller, TestGateway, entries_of, install_crd, xbackend_api,
};

const GW_GROUP: &str = "gateway.networking.k8s.io";
const THEIRS: &str = "other.example.com/writer";

// ---------------------------------------------------------------- helpers

/// Runs a test body with a hard time limit, so a hang fails instead of blocking CI.
async fn bounded<F: Future<Output = ()>>(what: &str, secs: u64, f: F) {
    if tokio::time::timeout(Duration::from_secs(secs), f).await.is_err() {
        panic!("{what}: did not finish within {secs} s");
    }
}

/// A small deterministic PRNG (xorshift64*), so a failing run can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn object(v: Value) -> DynamicObject {
    serde_json::from_value(v).expect("object")
}

fn xbackend(name: &str, hostname: &str) -> DynamicObject {
    object(json!({
        "apiVersion": "gateway.networking.x-k8s.io/v1alpha1", "kind": "XBackend",
        "metadata": {"name": name},
        "spec": {"type": "ExternalHostname", "port": {"port": 443}, "externalHostname": {"hostname": hostname},
                 "tls": {"mode": "ServerOnly", "validation": {"hostname": hostname}}}
    }))
}

fn parent_refs(gateways: &[&str]) -> Value {
    Value::Array(gateways.iter().map(|g| json!({"name": g})).collect())
}

fn route(name: &str, gateways: &[&str], backend: &str) -> DynamicObject {
    object(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": name},
        "spec": {"parentRefs": parent_refs(gateways),
                 "rules": [{"backendRefs": [{"group": "gateway.networking.x-k8s.io", "kind": "XBackend", "name": backend, "port": 443}]}]}
    }))
}

fn routes_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    support::dynamic(client, ns, GW_GROUP, "v1", "HTTPRoute")
}

/// Creates the objects with 16 requests in flight.
async fn create_all(api: &Api<DynamicObject>, objects: Vec<DynamicObject>) {
    stream::iter(objects)
        .map(|o| async move {
            api.create(&PostParams::default(), &o)
                .await
                .map_err(|e| format!("create {}: {e}", o.metadata.name.unwrap_or_default()))
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
}

/// N XBackends `b{i}` with one route `r{i}` each to `gateways`.
async fn create_backends(client: &Client, ns: &str, n: usize, gateways: &[&str]) {
    let backends = (0..n).map(|i| xbackend(&format!("b{i}"), &format!("api{i}.example.com"))).collect();
    create_all(&xbackend_api(client, ns), backends).await;
    let routes = (0..n).map(|i| route(&format!("r{i}"), gateways, &format!("b{i}"))).collect();
    create_all(&routes_api(client, ns), routes).await;
}

async fn set_parents(client: &Client, ns: &str, route: &str, gateways: &[&str]) {
    routes_api(client, ns)
        .patch(route, &PatchParams::default(), &Patch::Merge(json!({"spec": {"parentRefs": parent_refs(gateways)}})))
        .await
        .unwrap_or_else(|e| panic!("patch route {route}: {e}"));
}

/// True when our entries name exactly `gateways` (sorted, no duplicates), each
/// Accepted and ResolvedRefs True for the object's current generation.
fn converged(o: &DynamicObject, ctl: &str, gateways: &[&str]) -> bool {
    let generation = o.metadata.generation.unwrap_or(0);
    let entries = entries_of(o, "ancestors", ctl);
    let names: Vec<&str> = entries.iter().map(|e| e["ancestorRef"]["name"].as_str().unwrap_or("")).collect();
    names == gateways
        && entries.iter().all(|e| {
            let cs = e["conditions"].as_array().cloned().unwrap_or_default();
            cs.len() == 2
                && cs.iter().all(|c| {
                    c["status"] == "True"
                        && c["observedGeneration"] == generation
                        && c["lastTransitionTime"].is_string()
                })
        })
}

/// Lists the namespace until `ok` holds for every listed XBackend (and there are `n`).
async fn wait_all(
    api: &Api<DynamicObject>,
    n: usize,
    timeout: Duration,
    what: &str,
    ok: impl Fn(&DynamicObject) -> bool,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let list = api.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default();
        let bad: Vec<&DynamicObject> = list.iter().filter(|o| !ok(o)).collect();
        if list.len() == n && bad.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            let first = bad
                .first()
                .map(|o| format!("{}: {}", o.metadata.name.clone().unwrap_or_default(), o.data["status"]))
                .unwrap_or_default();
            panic!(
                "{what}: {} of {} listed XBackends not there after {timeout:?}; first: {first}",
                bad.len(),
                list.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Namespace + CRD + GatewayClass/Gateways on the binary's shared control plane.
async fn setup(test: &str, gateways: &[&str]) -> (&'static ControlPlane, Client, String, TestGateway) {
    let cp = ControlPlane::shared(Channel::Standard);
    let (client, ns) = cp.namespace(test).await;
    install_crd(&client).await;
    let gw = TestGateway::create(&client, &ns, gateways).await;
    (cp, client, ns, gw)
}

// ---------------------------------------------------------- concurrent writer

fn their_entry(ns: &str, gateway: &str, accepted: bool, op: usize) -> Value {
    json!({
        "ancestorRef": {"group": GW_GROUP, "kind": "Gateway", "namespace": ns, "name": gateway},
        "controllerName": THEIRS,
        "conditions": [{"type": "Accepted", "status": if accepted { "True" } else { "False" }, "reason": if accepted { "Accepted" } else { "Pending" },
                        "message": format!("write {op}"), "observedGeneration": 1, "lastTransitionTime": "2024-01-01T00:00:00Z"}]
    })
}

/// Another controller: `ops` successful read-modify-writes (resourceVersion
/// precondition, retry on 409) that add, change or remove its own entries,
/// drawn from `seed`. `model` is what it believes each XBackend holds of its
/// entries, in order, before; returns it after, with its 409 count.
async fn their_writer(
    client: Client,
    ns: String,
    backends: usize,
    ops: usize,
    seed: u64,
    mut model: BTreeMap<String, Vec<Value>>,
) -> (BTreeMap<String, Vec<Value>>, usize) {
    let api = xbackend_api(&client, &ns);
    let mut rng = Rng(seed);
    let mut conflicts = 0;
    for op in 0..ops {
        let name = format!("b{}", rng.below(backends));
        let choice = rng.below(3);
        let pick = rng.next() as usize;
        loop {
            let obj = api.get(&name).await.expect("get");
            let list = obj.data["status"]["ancestors"].as_array().cloned().unwrap_or_default();
            let theirs: Vec<usize> = (0..list.len()).filter(|i| list[*i]["controllerName"] == THEIRS).collect();
            let names: BTreeSet<String> =
                theirs.iter().map(|i| list[*i]["ancestorRef"]["name"].as_str().unwrap().to_string()).collect();
            let free: Vec<String> = (0..4).map(|k| format!("t{k}")).filter(|g| !names.contains(g)).collect();
            let mut next = list.clone();
            match choice {
                0 if !free.is_empty() => next.push(their_entry(&ns, &free[pick % free.len()], true, op)),
                1 | 0 if !theirs.is_empty() => {
                    let i = theirs[pick % theirs.len()];
                    let accepted = next[i]["conditions"][0]["status"] != "True";
                    let gateway = next[i]["ancestorRef"]["name"].as_str().unwrap().to_string();
                    next[i] = their_entry(&ns, &gateway, accepted, op);
                }
                _ if !theirs.is_empty() => {
                    next.remove(theirs[pick % theirs.len()]);
                }
                _ => next.push(their_entry(&ns, &free[pick % free.len()], true, op)),
            }
            let patch =
                json!({"metadata": {"resourceVersion": obj.metadata.resource_version}, "status": {"ancestors": next}});
            match api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {
                    model.insert(name.clone(), next.into_iter().filter(|e| e["controllerName"] == THEIRS).collect());
                    break;
                }
                Err(kube::Error::Api(e)) if e.code == 409 => conflicts += 1,
                Err(e) => panic!("their write: {e}"),
            }
        }
    }
    (model, conflicts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writer_loses_nothing() {
    bounded("concurrent writer", 240, async {
        let (cp, client, ns, gw) = setup("concurrent", &["gw-a", "gw-b", "gw-c"]).await;
        const BACKENDS: usize = 4;
        create_backends(&client, &ns, BACKENDS, &["gw-a"]).await;
        let ctl = Controller::start(&cp.kubeconfig, &["--controller-name", &gw.controller_name]);
        ctl.wait_ready().await;
        let api = xbackend_api(&client, &ns);
        wait_all(&api, BACKENDS, Duration::from_secs(60), "initial entries", |o| converged(o, &gw.controller_name, &["gw-a"])).await;

        // Their writes and our route changes, at the same time.
        let done = Arc::new(AtomicBool::new(false));
        let ours = {
            let (client, ns, done) = (client.clone(), ns.clone(), done.clone());
            tokio::spawn(async move {
                const SETS: [&[&str]; 7] =
                    [&["gw-a"], &["gw-b"], &["gw-c"], &["gw-a", "gw-b"], &["gw-a", "gw-c"], &["gw-b", "gw-c"], &["gw-a", "gw-b", "gw-c"]];
                let mut rng = Rng(42);
                let mut last: Vec<&[&str]> = vec![&["gw-a"]; BACKENDS];
                let mut changes = 0;
                while !done.load(Ordering::Relaxed) {
                    let i = rng.below(BACKENDS);
                    let set = SETS[rng.below(SETS.len())];
                    set_parents(&client, &ns, &format!("r{i}"), set).await;
                    last[i] = set;
                    changes += 1;
                    tokio::time::sleep(Duration::from_millis(20 + rng.below(40) as u64)).await;
                }
                (last, changes)
            })
        };
        // Rounds of 500 foreign writes until one of the controller's patches
        // got a 409 (the race this test is about happened), at most 5.
        let mut model: BTreeMap<String, Vec<Value>> = (0..BACKENDS).map(|i| (format!("b{i}"), Vec::new())).collect();
        let (mut their_writes, mut their_conflicts) = (0, 0);
        for round in 0..5u64 {
            let seed = 0x9E37_79B9_7F4A_7C15 ^ round;
            let (after, c) = their_writer(client.clone(), ns.clone(), BACKENDS, 500, seed, model).await;
            (model, their_writes, their_conflicts) = (after, their_writes + 500, their_conflicts + c);
            if ctl.metric("xbackend_status_conflicts_total").is_some_and(|n| n > 0.0) {
                break;
            }
        }
        done.store(true, Ordering::Relaxed);
        let (last, our_changes) = ours.await.unwrap();

        // Both writers' final state, exactly: theirs byte for byte and in order.
        let ctl_name = gw.controller_name.clone();
        wait_all(&api, BACKENDS, Duration::from_secs(60), "both writers' entries", |o| {
            let name = o.metadata.name.clone().unwrap_or_default();
            let i: usize = name[1..].parse().unwrap();
            entries_of(o, "ancestors", THEIRS) == model[&name] && converged(o, &ctl_name, last[i])
        })
        .await;
        let conflicts = ctl.metric("xbackend_status_conflicts_total").unwrap_or(0.0);
        eprintln!(
            "concurrent writer: {their_writes} foreign writes ({their_conflicts} of their attempts got 409), {our_changes} route changes, controller: {} writes, {conflicts} conflicts",
            ctl.metric("xbackend_status_writes_total").unwrap_or(0.0)
        );
        // The premise: without a 409 for the controller, its merge never met
        // a list changed under it, and "nothing lost" proves nothing.
        assert!(
            conflicts > 0.0,
            "no patch of the controller got a 409 in {their_writes} foreign writes; log:\n{}",
            ctl.log_tail()
        );
    })
    .await;
}

// -------------------------------------------------------------- SIGKILL

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_reconcile_converges_without_duplicates() {
    bounded("SIGKILL", 240, async {
        let (cp, client, ns, gw) = setup("sigkill", &["gw-a", "gw-b"]).await;
        const N: usize = 300;
        create_backends(&client, &ns, N, &["gw-a", "gw-b"]).await;
        let api = xbackend_api(&client, &ns);
        let args = ["--controller-name", gw.controller_name.as_str()];

        let ctl = Controller::start(&cp.kubeconfig, &args);
        let started = support::eventually(Duration::from_secs(60), || async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            ctl.metric("xbackend_status_writes_total").filter(|w| *w >= 20.0)
        })
        .await;
        assert!(started.is_some(), "controller never wrote; log:\n{}", ctl.log_tail());
        ctl.kill();
        // A PATCH in flight when the client died may still land; let it.
        tokio::time::sleep(Duration::from_secs(1)).await;

        // Changes while the controller is dead: ten routes drop gw-b.
        for i in 0..10 {
            set_parents(&client, &ns, &format!("r{i}"), &["gw-a"]).await;
        }
        let want = |name: &str| -> &'static [&'static str] {
            if name[1..].parse::<usize>().unwrap() < 10 { &["gw-a"] } else { &["gw-a", "gw-b"] }
        };
        let list = api.list(&ListParams::default()).await.unwrap().items;
        let pending = list.iter().filter(|o| !converged(o, &gw.controller_name, want(o.metadata.name.as_deref().unwrap()))).count();
        let done_before = list.iter().filter(|o| !entries_of(o, "ancestors", &gw.controller_name).is_empty()).count();
        assert!(done_before < N, "the controller finished all {N} before it was killed: not mid-reconcile");

        let ctl = Controller::start(&cp.kubeconfig, &args);
        let ctl_name = gw.controller_name.clone();
        wait_all(&api, N, Duration::from_secs(120), "convergence after SIGKILL", |o| converged(o, &ctl_name, want(o.metadata.name.as_deref().unwrap())))
            .await;
        let writes = ctl.counted("xbackend_status_writes_total", pending as f64).await.unwrap_or(0.0);
        eprintln!("SIGKILL: {done_before} of {N} had entries at the kill, {pending} needed a write after it; the new process wrote {writes}");
        assert_eq!(writes, pending as f64, "the restarted controller writes exactly the XBackends whose status is not yet right");
    })
    .await;
}

// ------------------------------------------------------- apiserver restart

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_restart_controller_reconnects() {
    bounded("apiserver restart", 300, async {
        let opts = ControlPlaneOpts { channel: Channel::Standard, fsync: false };
        let cp = ControlPlane::start_opts(opts);
        let (client, ns) = cp.namespace("restart").await;
        install_crd(&client).await;
        let gw = TestGateway::create(&client, &ns, &["gw-a", "gw-b"]).await;
        create_backends(&client, &ns, 2, &["gw-a"]).await;
        let ctl = Controller::start(&cp.kubeconfig, &["--controller-name", &gw.controller_name]);
        ctl.wait_ready().await;
        let api = xbackend_api(&client, &ns);
        let ctl_name = gw.controller_name.clone();
        wait_all(&api, 2, Duration::from_secs(60), "before the restart", |o| converged(o, &ctl_name, &["gw-a"])).await;

        let ports = std::fs::read_to_string(cp.dir.join("state/ports")).unwrap();
        let kubeconfig = std::fs::read_to_string(&cp.kubeconfig).unwrap();
        let stopping = Instant::now();
        cp.stop();
        let stop_took = stopping.elapsed();
        assert!(api.list(&ListParams::default()).await.is_err(), "the apiserver is down");
        tokio::time::sleep(Duration::from_secs(5)).await;
        let mut ctl = ctl;
        assert!(ctl.is_running(), "the controller survives the outage; log:\n{}", ctl.log_tail());
        assert_eq!(ctl.http_get("/healthz").map(|r| r.0), Some(200));

        let down_at = Instant::now();
        cp.restart(opts);
        assert_eq!(std::fs::read_to_string(cp.dir.join("state/ports")).unwrap(), ports, "same ports");
        assert_eq!(std::fs::read_to_string(&cp.kubeconfig).unwrap(), kubeconfig, "same kubeconfig (PKI kept)");
        let client = cp.client().await;
        let api = xbackend_api(&client, &ns);
        assert_eq!(api.list(&ListParams::default()).await.unwrap().items.len(), 2, "etcd data kept");

        // Changes made right after the apiserver returns, while the
        // controller's watches are still backing off.
        set_parents(&client, &ns, "r0", &["gw-b"]).await;
        create_all(&api, vec![xbackend("late", "late.example.com")]).await;
        create_all(&routes_api(&client, &ns), vec![route("r-late", &["gw-a", "gw-b"], "late")]).await;
        let back_at = down_at.elapsed();

        wait_all(&api, 3, Duration::from_secs(90), "changes after the restart", |o| {
            let want: &[&str] = match o.metadata.name.as_deref() {
                Some("b0") => &["gw-b"],
                Some("late") => &["gw-a", "gw-b"],
                _ => &["gw-a"],
            };
            converged(o, &ctl_name, want)
        })
        .await;
        let errors = ctl.metric("xbackend_watch_errors_total").unwrap_or(0.0);
        eprintln!(
            "apiserver restart: stop took {stop_took:?}; changes made {back_at:?} after the restart began; converged {:?} after it; {errors} watch errors",
            down_at.elapsed()
        );
        assert!(errors > 0.0, "the controller saw the outage");
        assert!(ctl.is_running());
        // A just-restarted apiserver's discovery may lack the CRDs' groups
        // for a moment; their CRDs are there, so no kind stops being watched
        // (which would drop every ancestor, and write every status twice).
        let log = std::fs::read_to_string(&ctl.log).unwrap_or_default();
        assert!(!log.contains("its CRD is gone"), "a kind was dropped though its CRD stayed:\n{}", ctl.log_tail());
        assert!(stop_took < Duration::from_secs(30), "graceful stop under a connected controller took {stop_took:?}");
        drop(ctl);
        cp.stop();
    })
    .await;
}

// ---------------------------------------------------------- leader election

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_election_only_the_leader_writes_and_a_standby_takes_over() {
    bounded("leader election", 240, async {
        let (cp, client, ns, gw) = setup("leader", &["gw-a", "gw-b"]).await;
        const N: usize = 5;
        create_backends(&client, &ns, N, &["gw-a"]).await;
        let lease = support::unique_name("lease");
        let args = [
            "--leader-election",
            "--leader-election-namespace",
            ns.as_str(),
            "--lease-name",
            lease.as_str(),
            "--lease-duration",
            "10",
            "--controller-name",
            gw.controller_name.as_str(),
        ];
        let replicas = [Controller::start_with(&cp.kubeconfig, &args), Controller::start_with(&cp.kubeconfig, &args)];
        for r in &replicas {
            r.wait_ready().await;
        }
        let leader_of = || async {
            let l: Vec<f64> = replicas.iter().map(|r| r.metric("xbackend_leader").unwrap_or(-1.0)).collect();
            match l[..] {
                [1.0, 0.0] => Some(0),
                [0.0, 1.0] => Some(1),
                _ => None,
            }
        };
        let leader = support::eventually(Duration::from_secs(30), leader_of).await.expect("exactly one leader");
        let api = xbackend_api(&client, &ns);
        let ctl_name = gw.controller_name.clone();
        wait_all(&api, N, Duration::from_secs(60), "converged under the leader", |o| converged(o, &ctl_name, &["gw-a"])).await;
        let [a, b] = replicas;
        let (leader_ctl, standby) = if leader == 0 { (a, b) } else { (b, a) };
        // Sentinel: the leader's N writes are counted; a standby writing
        // alongside would have written by then.
        let writes = leader_ctl.counted("xbackend_status_writes_total", N as f64).await;
        assert_eq!(writes, Some(N as f64), "the leader wrote each XBackend once");
        assert_eq!(standby.metric("xbackend_status_writes_total"), Some(0.0), "the standby wrote nothing");
        assert_eq!(standby.metric("xbackend_leader"), Some(0.0));

        // Kill the leader without a chance to release the Lease; change a route.
        leader_ctl.kill();
        let killed = Instant::now();
        set_parents(&client, &ns, "r0", &["gw-b"]).await;
        standby.wait_metric("xbackend_leader", Duration::from_secs(30), |v| v == 1.0).await.expect("the standby takes over");
        let takeover = killed.elapsed();
        wait_all(&api, N, Duration::from_secs(30), "pending change processed by the new leader", |o| {
            converged(o, &ctl_name, if o.metadata.name.as_deref() == Some("b0") { &["gw-b"] } else { &["gw-a"] })
        })
        .await;
        let processed = killed.elapsed();
        eprintln!("leader election: takeover {takeover:?} after SIGKILL (lease 10 s), pending change written {processed:?} after it");
        assert!(takeover <= Duration::from_secs(20), "takeover took {takeover:?}");
        let writes = standby.counted("xbackend_status_writes_total", 1.0).await;
        assert_eq!(writes, Some(1.0), "the new leader writes only the changed XBackend");
    })
    .await;
}

// ------------------------------------------- half-open apiserver connections

/// The controller talks to the apiserver through a relay that black-holes
/// every connection (no reset, no EOF: the apiserver "gone" as a dead NAT or
/// load balancer leaves it), then lets new connections through. Changes made
/// meanwhile must converge without a restart, within the 2 minutes the
/// watches' idle timeout and the read timeout promise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_are_replaced_and_changes_converge() {
    bounded("half-open connections", 330, async {
        let (cp, client, ns, gw) = setup("half-open", &["gw-a", "gw-b"]).await;
        create_backends(&client, &ns, 2, &["gw-a"]).await;
        let relay = support::relay::Relay::start(support::relay::upstream_of(&cp.kubeconfig)).await;
        let kubeconfig = relay.kubeconfig(&cp.kubeconfig, &support::tempdir("relay"));
        let mut ctl = Controller::start(&kubeconfig, &["--controller-name", &gw.controller_name]);
        ctl.wait_ready().await;
        let api = xbackend_api(&client, &ns);
        let ctl_name = gw.controller_name.clone();
        wait_all(&api, 2, Duration::from_secs(60), "before the stall", |o| converged(o, &ctl_name, &["gw-a"])).await;

        relay.stall();
        let stalled_at = Instant::now();
        // Changes while every connection of the controller is a black hole.
        set_parents(&client, &ns, "r0", &["gw-b"]).await;
        create_all(&api, vec![xbackend("late", "late.example.com")]).await;
        create_all(&routes_api(&client, &ns), vec![route("r-late", &["gw-a", "gw-b"], "late")]).await;
        // The outage itself (not a wait for a result): new connections hang too.
        tokio::time::sleep(Duration::from_secs(15)).await;
        assert!(ctl.is_running(), "the controller survives the stall; log:\n{}", ctl.log_tail());
        assert_eq!(ctl.http_get("/healthz").map(|r| r.0), Some(200));
        relay.resume();
        let resumed_at = Instant::now();

        wait_all(&api, 3, Duration::from_secs(150), "changes made during the stall", |o| {
            let want: &[&str] = match o.metadata.name.as_deref() {
                Some("b0") => &["gw-b"],
                Some("late") => &["gw-a", "gw-b"],
                _ => &["gw-a"],
            };
            converged(o, &ctl_name, want)
        })
        .await;
        let (since_stall, since_resume) = (stalled_at.elapsed(), resumed_at.elapsed());
        let failures = ctl.metric("xbackend_reconcile_errors_total").unwrap_or(0.0);
        eprintln!(
            "half-open: converged {since_resume:?} after new connections worked again ({since_stall:?} after the stall); {failures} failed reconciles retried"
        );
        assert!(since_resume < Duration::from_secs(120), "took {since_resume:?} after the relay resumed");
        assert!(ctl.is_running());
    })
    .await;
}

// ------------------------------------------------------ leadership at write time

/// Another holder takes the Lease (as a replica would whose clock says ours
/// expired). The old leader's lease manager still believes it leads until its
/// next renewal, but the write-time check must stop its patches at once: b0
/// stays untouched while the other holder has the Lease, and the pending
/// change is written once the Lease comes back (the sentinel).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_lost_the_lease_sends_no_further_patches() {
    use k8s_openapi::api::coordination::v1::Lease;
    bounded("lease fence", 240, async {
        let (cp, client, ns, gw) = setup("fence", &["gw-a", "gw-b"]).await;
        create_backends(&client, &ns, 2, &["gw-a"]).await;
        let lease_name = support::unique_name("lease");
        let args = [
            "--leader-election",
            "--leader-election-namespace",
            ns.as_str(),
            "--lease-name",
            lease_name.as_str(),
            "--lease-duration",
            "10",
            "--controller-name",
            gw.controller_name.as_str(),
        ];
        let ctl = Controller::start_with_env(&cp.kubeconfig, &args, &[("POD_NAME", "replica-a")]);
        ctl.wait_ready().await;
        ctl.wait_metric("xbackend_leader", Duration::from_secs(30), |v| v == 1.0).await.expect("it leads");
        let api = xbackend_api(&client, &ns);
        let ctl_name = gw.controller_name.clone();
        wait_all(&api, 2, Duration::from_secs(60), "converged under the leader", |o| converged(o, &ctl_name, &["gw-a"]))
            .await;

        let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
        // Steal right after a renewal: the lease manager then believes it
        // leads until its next one (seconds away), so b0's reconcile runs and
        // meets the write-time fence instead of the workers' gate.
        let renewed = |l: Lease| l.spec.and_then(|s| s.renew_time);
        let last = renewed(leases.get(&lease_name).await.unwrap());
        support::eventually(Duration::from_secs(30), || async {
            (renewed(leases.get(&lease_name).await.ok()?) != last).then_some(())
        })
        .await
        .expect("the leader renews its Lease");
        let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
        let steal = json!({"spec": {"holderIdentity": "thief", "acquireTime": now, "renewTime": now, "leaseDurationSeconds": 10}});
        leases.patch(&lease_name, &PatchParams::default(), &Patch::Merge(&steal)).await.expect("steal the Lease");
        let stolen_at = Instant::now();
        let before = api.get("b0").await.unwrap();
        set_parents(&client, &ns, "r0", &["gw-b"]).await;

        // b0 is read before the Lease: when the Lease still names the thief,
        // it did at the time of that read too.
        let mut polls = 0;
        loop {
            let b0 = api.get("b0").await.unwrap();
            let holder = leases.get(&lease_name).await.unwrap().spec.and_then(|s| s.holder_identity);
            if holder.as_deref() != Some("thief") {
                break;
            }
            polls += 1;
            assert_eq!(
                b0.metadata.resource_version, before.metadata.resource_version,
                "b0 was written while another replica held the Lease; log:\n{}",
                ctl.log_tail()
            );
            assert!(stolen_at.elapsed() < Duration::from_secs(60), "the Lease never came back");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        wait_all(&api, 2, Duration::from_secs(60), "written once the Lease came back", |o| {
            converged(o, &ctl_name, if o.metadata.name.as_deref() == Some("b0") { &["gw-b"] } else { &["gw-a"] })
        })
        .await;
        let fenced = ctl.metric("xbackend_status_writes_fenced_total").unwrap_or(0.0);
        eprintln!(
            "lease fence: Lease held by another for {:?} ({polls} polls of b0, unchanged); {fenced} patches fenced",
            stolen_at.elapsed()
        );
        assert!(polls > 10, "the other holder kept the Lease for a while ({polls} polls)");
        // The premise: a write was due and stopped by the fence. Without one,
        // b0 stayed unwritten only because nothing tried to write it.
        assert!(fenced > 0.0, "no status write was fenced; log:\n{}", ctl.log_tail());
    })
    .await;
}

// -------------------------------------------------------- malformed objects

/// The XBackend CRD from crds/ with every schema below spec and status
/// replaced by `x-kubernetes-preserve-unknown-fields: true`, so the apiserver
/// stores any JSON there.
fn permissive_crd() -> Value {
    let yaml = std::fs::read_to_string(support::CRD_PATH).unwrap();
    let mut crd: Value = serde_yaml_ng::from_str(&yaml).unwrap();
    for version in crd["spec"]["versions"].as_array_mut().unwrap() {
        version["schema"]["openAPIV3Schema"] = json!({
            "type": "object",
            "properties": {
                "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"},
                "spec": {"x-kubernetes-preserve-unknown-fields": true},
                "status": {"x-kubernetes-preserve-unknown-fields": true},
            }
        });
    }
    crd
}

/// What the controller must make of one malformed object.
#[derive(Clone, Debug)]
enum Expect {
    /// Our entry, Accepted=False reason Invalid.
    Invalid,
    /// Our entry, Accepted=True; the `n` foreign (non-ours) items kept as they were.
    Accepted { foreign: Vec<Value> },
    /// Other controllers fill the 32 places: no entry of ours, theirs untouched.
    Capped { foreign: Vec<Value> },
}

fn good_spec(host: &str) -> Value {
    json!({"type": "ExternalHostname", "port": {"port": 443}, "externalHostname": {"hostname": host},
           "tls": {"mode": "ServerOnly", "validation": {"hostname": host}}})
}

fn with(mut spec: Value, pointer: &str, v: Value) -> Value {
    let (parent, field) = pointer.rsplit_once('/').unwrap();
    spec.pointer_mut(parent).unwrap()[field] = v;
    spec
}

fn foreign_entries(ns: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({"ancestorRef": {"group": GW_GROUP, "kind": "Gateway", "namespace": ns, "name": format!("f{i}")},
                   "controllerName": format!("vendor{}.example.com/gw", i % 3),
                   "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "", "observedGeneration": 1, "lastTransitionTime": "2024-01-01T00:00:00Z"}]})
        })
        .collect()
}

/// (spec or None for no spec, status to store, expectation).
fn malformed_cases(ns: &str, ours: &str) -> Vec<(Option<Value>, Option<Value>, Expect)> {
    let g = || good_spec("api.example.com");
    let huge = "a".repeat(100_000);
    let long_name = format!("{}com", "a.".repeat(200));
    let label64 = format!("{}.example.com", "b".repeat(64));
    let deep = (0..60).fold(json!("bottom"), |acc, _| json!({"a": acc}));
    let tls_v = |v: Value| with(g(), "/tls/validation", v);
    let invalid_specs: Vec<Value> = vec![
        json!("a string"),
        json!(42),
        json!([1, 2]),
        json!(true),
        json!({}),
        json!({"type": "ExternalHostname"}),
        json!({"port": {"port": 443}, "externalHostname": {"hostname": "api.example.com"}}),
        with(g(), "/type", json!(5)),
        with(g(), "/type", json!("Unknown")),
        with(g(), "/port", json!("443")),
        with(g(), "/port/port", json!("443")),
        with(g(), "/port/port", json!(0)),
        with(g(), "/port/port", json!(70000)),
        with(g(), "/port/port", json!(-1)),
        with(g(), "/port/port", json!(1e30)),
        with(g(), "/port/port", json!(443.5)),
        with(g(), "/port/name", json!("UPPER_name")),
        with(g(), "/port/name", json!("é".repeat(20_000))),
        with(g(), "/externalHostname", json!("api.example.com")),
        with(g(), "/externalHostname/hostname", json!(123)),
        with(g(), "/externalHostname/hostname", json!(["a"])),
        with(g(), "/externalHostname/hostname", deep.clone()),
        with(g(), "/externalHostname", json!({})),
        with(g(), "/externalHostname/hostname", json!("")),
        with(g(), "/externalHostname/hostname", json!(huge)),
        with(g(), "/externalHostname/hostname", json!(long_name)),
        with(g(), "/externalHostname/hostname", json!(label64)),
        with(g(), "/externalHostname/hostname", json!("bücher.example")),
        with(g(), "/externalHostname/hostname", json!("例え.テスト")),
        with(g(), "/externalHostname/hostname", json!("😀.example.com")),
        with(g(), "/externalHostname/hostname", json!("a\u{200b}.example.com")),
        with(g(), "/externalHostname/hostname", json!("\u{202e}moc.elpmaxe")),
        with(g(), "/externalHostname/hostname", json!("api.example.com\u{0}")),
        with(g(), "/externalHostname/hostname", json!("10.0.0.1")),
        with(g(), "/externalHostname/hostname", json!("[::1]")),
        with(g(), "/externalHostname/hostname", json!("*.example.com")),
        with(g(), "/externalHostname/hostname", json!("kubernetes.default.svc.cluster.local")),
        with(g(), "/externalHostname/hostname", json!("API.example.com")),
        with(g(), "/protocol", json!(7)),
        with(g(), "/protocol", json!("SCTP")),
        with(g(), "/tls", json!("yes")),
        with(g(), "/tls/mode", json!(3)),
        with(g(), "/tls/mode", json!("Bogus")),
        with(g(), "/tls/mode", json!("ClientAndServer")),
        tls_v(json!([])),
        tls_v(json!({"hostname": null})),
        tls_v(json!({"hostname": "api.example.com", "caCertificateRefs": "ca"})),
        tls_v(json!({"hostname": "api.example.com", "caCertificateRefs": [1, 2]})),
        tls_v(json!({"hostname": "api.example.com", "subjectAltNames": [{"type": "Nope"}]})),
        tls_v(
            json!({"hostname": "api.example.com", "subjectAltNames": vec![json!({"type": "Hostname", "hostname": "a.example.com"}); 50]}),
        ),
        tls_v(
            json!({"hostname": "api.example.com", "caCertificateRefs": vec![json!({"group": "", "kind": "ConfigMap", "name": "ca"}); 20]}),
        ),
    ];
    let mut cases: Vec<(Option<Value>, Option<Value>, Expect)> = vec![(None, None, Expect::Invalid)];
    cases.extend(invalid_specs.into_iter().map(|s| (Some(s), None, Expect::Invalid)));

    // A valid spec with unknown fields (deeply nested) is still valid.
    let mut unknown = g();
    unknown["extra"] = deep;
    cases.push((Some(unknown), None, Expect::Accepted { foreign: vec![] }));

    // Garbage in status: everything that is not ours stays; ours is rewritten.
    let junk = vec![
        json!(1),
        json!("x"),
        Value::Null,
        json!({}),
        json!({"controllerName": 5}),
        json!({"controllerName": "vendor.example.com/gw", "ancestorRef": "not an object"}),
    ];
    let garbage_status: Vec<(Value, Vec<Value>)> = vec![
        (json!("garbage"), vec![]),
        (json!([1, 2, 3]), vec![]),
        (json!({"ancestors": "str"}), vec![]),
        (json!({"ancestors": {"a": 1}}), vec![]),
        (json!({"ancestors": junk.clone()}), junk.clone()),
        (json!({"ancestors": [{"controllerName": ours, "conditions": "x", "ancestorRef": 7}]}), vec![]),
        (
            json!({"ancestors": [{"controllerName": ours, "ancestorRef": {"group": GW_GROUP, "kind": "Gateway", "namespace": ns, "name": "stale"}, "conditions": []}]}),
            vec![],
        ),
        (json!({"ancestors": foreign_entries(ns, 31)}), foreign_entries(ns, 31)),
        (json!({"parents": "other layout", "ancestors": [], "extra": {"deep": [[[]]]}}), vec![]),
    ];
    for (status, foreign) in garbage_status {
        cases.push((Some(g()), Some(status), Expect::Accepted { foreign }));
    }
    for n in [32, 33, 40, 100] {
        cases.push((
            Some(g()),
            Some(json!({"ancestors": foreign_entries(ns, n)})),
            Expect::Capped { foreign: foreign_entries(ns, n) },
        ));
    }
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_objects_neither_crash_nor_stop_the_controller() {
    bounded("malformed objects", 300, async {
        // Its own control plane: the permissive CRD must not leak into other tests.
        let cp = ControlPlane::start_opts(ControlPlaneOpts { channel: Channel::Standard, fsync: false });
        let (client, ns) = cp.namespace("malformed").await;
        let crds = Api::<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>::all(client.clone());
        crds.create(&PostParams::default(), &serde_json::from_value(permissive_crd()).unwrap()).await.expect("permissive CRD");
        support::wait_for_crd(&client, "xbackends.gateway.networking.x-k8s.io").await;
        let gw = TestGateway::create(&client, &ns, &["gw"]).await;
        let api = xbackend_api(&client, &ns);

        let cases = malformed_cases(&ns, &gw.controller_name);
        assert!(cases.len() >= 50, "{} cases", cases.len());
        let mut objects = Vec::new();
        for (i, (spec, _, _)) in cases.iter().enumerate() {
            let mut o = json!({"apiVersion": "gateway.networking.x-k8s.io/v1alpha1", "kind": "XBackend", "metadata": {"name": format!("m{i}")}});
            if let Some(spec) = spec {
                o["spec"] = spec.clone();
            }
            objects.push(object(o));
        }
        let mut valid: Vec<DynamicObject> = (0..10).map(|i| xbackend(&format!("v{i}"), &format!("v{i}.example.com"))).collect();
        objects.append(&mut valid);
        create_all(&api, objects).await;
        for (i, (_, status, _)) in cases.iter().enumerate() {
            if let Some(status) = status {
                api.patch_status(&format!("m{i}"), &PatchParams::default(), &Patch::Merge(json!({"status": status})))
                    .await
                    .unwrap_or_else(|e| panic!("store garbage status of m{i}: {e}"));
            }
        }
        let names: Vec<String> = (0..cases.len()).map(|i| format!("m{i}")).chain((0..10).map(|i| format!("v{i}"))).collect();
        let routes: Vec<DynamicObject> = names.iter().map(|n| route(&format!("to-{n}"), &["gw"], n)).collect();
        create_all(&routes_api(&client, &ns), routes).await;

        let ctl = Controller::start(&cp.kubeconfig, &["--controller-name", &gw.controller_name]);
        ctl.wait_ready().await;
        let ctl_name = gw.controller_name.clone();
        let total = names.len();
        let check = |o: &DynamicObject| -> bool {
            let name = o.metadata.name.as_deref().unwrap_or("");
            let ours = entries_of(o, "ancestors", &ctl_name);
            let list = o.data["status"]["ancestors"].as_array().cloned().unwrap_or_default();
            let others: Vec<Value> = list.iter().filter(|e| e["controllerName"] != ctl_name.as_str()).cloned().collect();
            let accepted = |want: &str, reason: &str| {
                ours.len() == 1
                    && ours[0]["ancestorRef"]["name"] == "gw"
                    && ours[0]["conditions"].as_array().is_some_and(|cs| cs.iter().any(|c| c["type"] == "Accepted" && c["status"] == want && c["reason"] == reason))
            };
            if name.starts_with('v') {
                return accepted("True", "Accepted");
            }
            let i: usize = name[1..].parse().unwrap();
            match &cases[i].2 {
                Expect::Invalid => accepted("False", "Invalid"),
                Expect::Accepted { foreign } => accepted("True", "Accepted") && &others == foreign,
                Expect::Capped { foreign } => ours.is_empty() && &others == foreign,
            }
        };
        wait_all(&api, total, Duration::from_secs(120), "every malformed object judged, every valid one accepted", check).await;
        let mut ctl = ctl;
        assert!(ctl.is_running(), "controller crashed; log:\n{}", ctl.log_tail());

        // The watch still runs: a new valid object converges.
        create_all(&api, vec![xbackend("after", "after.example.com")]).await;
        create_all(&routes_api(&client, &ns), vec![route("to-after", &["gw"], "after")]).await;
        support::eventually(Duration::from_secs(30), || async { api.get("after").await.ok().filter(|o| converged(o, &ctl_name, &["gw"])) })
            .await
            .expect("a valid XBackend created afterwards converges: the watch did not stop");

        // Counted: every Invalid one shows in the gauge of not-accepted XBackends.
        let invalid = cases.iter().filter(|c| matches!(c.2, Expect::Invalid)).count() as f64;
        let not_accepted = ctl.wait_metric("xbackend_objects{accepted=\"false\"}", Duration::from_secs(10), |v| v >= invalid).await;
        assert_eq!(not_accepted, Some(invalid), "xbackend_objects{{accepted=\"false\"}} counts each Invalid XBackend");
        let decode_failures = ctl.metric("xbackend_decode_failures_total").unwrap_or(0.0);
        // Capped ones get a Warning event.
        let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), &ns).list(&ListParams::default()).await.unwrap().items;
        let truncated: BTreeSet<String> = events
            .iter()
            .filter(|e| e.reason.as_deref() == Some("AncestorsTruncated"))
            .filter_map(|e| e.regarding.as_ref()?.name.clone())
            .collect();
        let warned_invalid: BTreeSet<String> = events
            .iter()
            .filter(|e| e.reason.as_deref() == Some("Invalid") && e.type_.as_deref() == Some("Warning"))
            .filter_map(|e| e.regarding.as_ref()?.name.clone())
            .collect();
        let invalid_names: BTreeSet<String> =
            cases.iter().enumerate().filter(|(_, c)| matches!(c.2, Expect::Invalid)).map(|(i, _)| format!("m{i}")).collect();
        assert_eq!(warned_invalid, invalid_names, "a Warning event Invalid for each Invalid XBackend");
        let capped: BTreeSet<String> =
            cases.iter().enumerate().filter(|(_, c)| matches!(c.2, Expect::Capped { .. })).map(|(i, _)| format!("m{i}")).collect();
        eprintln!(
            "malformed: {} cases ({invalid} Invalid, each with a Warning event), {decode_failures} decode failures, AncestorsTruncated events for {truncated:?}",
            cases.len()
        );
        assert_eq!(truncated, capped, "an AncestorsTruncated event for each capped XBackend");
        assert!(ctl.is_running());
        drop(ctl);
        cp.stop();
    })
    .await;
}

// ------------------------------------------------ property tests (fuzzing)

mod fuzz {
    use std::collections::BTreeMap;
    use std::sync::OnceLock;

    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    use proptest::prelude::*;
    use serde_json::{Value, json};
    use xbackend_controller::api::XBackendSpec;
    use xbackend_controller::conditions;
    use xbackend_controller::guardrails::{self, NoNamespaces};
    use xbackend_controller::model::ObjectRef;
    use xbackend_controller::policy::{Policy, PolicyConfig};
    use xbackend_controller::status::{Shape, merge};
    use xbackend_controller::tls::{check_ca_bundle, check_client_certificate};
    use xbackend_controller::validate::validate;
    use xbackend_controller::verdict::Verdicts;

    fn check_egress(hostname: &str, policy: &Policy) -> Result<(), String> {
        guardrails::check_egress(hostname, policy, &NoNamespaces)
    }

    // ---- hostname validation against an independent oracle ----

    /// docs/design.md §5a and the CRD pattern, written from the text, not the code:
    /// `^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`,
    /// at most 253 characters, labels at most 63, not an IP address (nor an
    /// all-numeric last label), not in a cluster domain.
    fn oracle_valid(h: &str, cluster_domains: &[&str]) -> bool {
        let label_ok = |l: &str| {
            let b = l.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b.iter().all(|c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'-'))
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        };
        let labels: Vec<&str> = h.split('.').collect();
        h.len() <= 253
            && labels.iter().all(|l| label_ok(l))
            && !labels.last().unwrap().bytes().all(|c| c.is_ascii_digit())
            && std::iter::once("cluster.local")
                .chain(cluster_domains.iter().copied())
                .all(|d| h != d && !h.ends_with(&format!(".{d}")))
    }

    fn spec(hostname: &str) -> XBackendSpec {
        serde_json::from_value(
            json!({"type": "ExternalHostname", "port": {"port": 443}, "externalHostname": {"hostname": hostname}}),
        )
        .unwrap()
    }

    fn label() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "[a-z0-9]{1,6}",
            2 => "[a-z0-9-]{0,6}",
            1 => "[0-9]{1,3}",
            1 => "[A-Z]{1,2}",
            1 => "[a-z]{62,65}",
            1 => "\\PC{1,3}",
            1 => prop::sample::select(vec!["*", "cluster", "local", "svc", "localhost", "corp", "internal", "xn--bcher-kva", ""]).prop_map(String::from),
        ]
    }

    fn hostname_like() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => (prop::collection::vec(label(), 1..6), any::<bool>()).prop_map(|(ls, dot)| ls.join(".") + if dot { "." } else { "" }),
            // Near the 253-character limit.
            1 => (prop::collection::vec("[a-z]{50,63}", 3..6), "[a-z]{2,5}").prop_map(|(ls, tld)| format!("{}.{tld}", ls.join("."))),
            1 => "[a-f0-9:.\\[\\]]{0,40}",
            1 => "\\PC{0,30}",
        ]
    }

    // ---- guardrails against an independent oracle ----

    const DENY: [&str; 2] = ["*.bad.com", "exact.com"];
    const ALLOW: [&str; 2] = ["*.ok.com", "apex.com"];

    /// docs/design.md §5b for a name that passed validation (lowercase, no trailing dot).
    fn oracle_denied(h: &str, allow: bool) -> bool {
        let under = |s: &str| h.ends_with(&format!(".{s}"));
        h == "localhost"
            || under("localhost")
            || !h.contains('.')
            || under("svc")
            || under("svc.cluster.local")
            || under("svc.corp.internal")
            || h == "metadata.google.internal"
            || h == "instance-data.ec2.internal"
            // Special-use names, and `lan`, which is no public suffix.
            || ["local", "internal", "example", "test"].iter().any(|s| h == *s || under(s))
            || h.ends_with(".lan")
            || under("bad.com")
            || h == "exact.com"
            || (allow && !(under("ok.com") || h == "apex.com"))
    }

    fn guardrail_name() -> impl Strategy<Value = String> {
        let word = prop_oneof![
            3 => "[a-z0-9]{1,4}",
            2 => prop::sample::select(vec![
                "localhost", "svc", "cluster", "local", "corp", "internal", "bad", "ok", "com", "exact", "apex",
                "metadata", "google", "instance-data", "ec2", "xlocalhost", "svcx",
            ])
            .prop_map(String::from),
        ];
        // The last label is never all digits, so nearly every name passes validation.
        // Public suffixes and names that are not, in equal parts.
        let last = prop::sample::select(vec![
            "com",
            "net",
            "io",
            "dev",
            "localhost",
            "svc",
            "local",
            "internal",
            "example",
            "test",
            "lan",
        ])
        .prop_map(String::from);
        (prop::collection::vec(word, 0..5), last).prop_map(|(mut ls, last)| {
            ls.push(last);
            ls.join(".")
        })
    }

    fn policy(allow: bool) -> Policy {
        Policy::new(PolicyConfig {
            cluster_domains: vec!["corp.internal".into()],
            allow_hostnames: if allow { ALLOW.iter().map(|s| s.to_string()).collect() } else { vec![] },
            deny_hostnames: DENY.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .unwrap()
    }

    // ---- PEM: a few real key pairs, generated once ----

    struct Pair {
        cert: String,
        key: String,
    }

    fn pairs() -> &'static Vec<Pair> {
        static PAIRS: OnceLock<Vec<Pair>> = OnceLock::new();
        PAIRS.get_or_init(|| {
            let algs: [&'static rcgen::SignatureAlgorithm; 3] =
                [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519];
            algs.iter()
                .flat_map(|alg| (0..2).map(move |i| (alg, i)))
                .map(|(alg, i)| {
                    let key = rcgen::KeyPair::generate_for(alg).unwrap();
                    let cert = rcgen::CertificateParams::new(vec![format!("client{i}.example.com")])
                        .unwrap()
                        .self_signed(&key)
                        .unwrap();
                    Pair { cert: cert.pem(), key: key.serialize_pem() }
                })
                .collect()
        })
    }

    fn tls_secret(crt: &[u8], key: &[u8]) -> Secret {
        Secret {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("client".into()),
                namespace: Some("apps".into()),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(BTreeMap::from([
                ("tls.crt".to_string(), ByteString(crt.to_vec())),
                ("tls.key".to_string(), ByteString(key.to_vec())),
            ])),
            ..Default::default()
        }
    }

    fn bundle(text: &str) -> ConfigMap {
        ConfigMap { data: Some(BTreeMap::from([("ca.crt".to_string(), text.to_string())])), ..Default::default() }
    }

    /// 16-character windows of the key's base64 body: none may appear in a message.
    fn key_windows(key: &str) -> Vec<String> {
        let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
        let chars: Vec<char> = body.chars().collect();
        chars.windows(16).step_by(4).map(|w| w.iter().collect()).collect()
    }

    #[derive(Clone, Debug)]
    enum Mutation {
        Flip(usize, u8),
        Truncate(usize),
        Insert(usize, Vec<u8>),
        DropLine(usize),
        DupLine(usize),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
            any::<usize>().prop_map(Mutation::Truncate),
            (
                any::<usize>(),
                prop_oneof![
                    prop::collection::vec(any::<u8>(), 0..8),
                    Just(b"-----BEGIN CERTIFICATE-----\n".to_vec()),
                    Just(b"-----END CERTIFICATE-----\n".to_vec()),
                    Just(b"\n-----BEGIN PRIVATE KEY-----\n".to_vec()),
                ]
            )
                .prop_map(|(i, v)| Mutation::Insert(i, v)),
            any::<usize>().prop_map(Mutation::DropLine),
            any::<usize>().prop_map(Mutation::DupLine),
        ]
    }

    fn mutate(input: &str, ms: &[Mutation]) -> Vec<u8> {
        let mut b = input.as_bytes().to_vec();
        for m in ms {
            let n = b.len().max(1);
            match m {
                Mutation::Flip(i, x) => {
                    if !b.is_empty() {
                        b[i % n] ^= x | 1;
                    }
                }
                Mutation::Truncate(i) => b.truncate(i % n),
                Mutation::Insert(i, v) => {
                    let at = i % (b.len() + 1);
                    b.splice(at..at, v.iter().copied());
                }
                Mutation::DropLine(i) | Mutation::DupLine(i) => {
                    let mut lines: Vec<Vec<u8>> = b.split(|c| *c == b'\n').map(<[u8]>::to_vec).collect();
                    let at = i % lines.len();
                    if matches!(m, Mutation::DropLine(_)) {
                        lines.remove(at);
                    } else {
                        let l = lines[at].clone();
                        lines.insert(at, l);
                    }
                    b = lines.join(&b'\n');
                }
            }
        }
        b
    }

    // ---- status merge: two controllers interleaved ----

    const A: &str = "a.example.com/gw";
    const B: &str = "b.example.com/gw";

    fn verdicts(accepted: bool, resolved: bool) -> Verdicts {
        Verdicts {
            accepted: if accepted { conditions::accepted() } else { conditions::invalid("bad spec") },
            resolved_refs: if resolved { conditions::resolved_refs() } else { conditions::invalid_kind("bad kind") },
        }
    }

    /// Condition type -> (status, lastTransitionTime) expected for one entry.
    type Conditions = BTreeMap<&'static str, (bool, String)>;

    fn junk() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(json!(1)),
            Just(json!("x")),
            Just(Value::Null),
            Just(json!({})),
            Just(json!({"controllerName": 5})),
            "[a-z]{0,5}"
                .prop_map(|s| json!({"controllerName": format!("{s}.example.com/x"), "ancestorRef": {"name": s}})),
        ]
    }

    proptest! {
        /// Hostname validation (spec.externalHostname.hostname) agrees with the oracle.
        #[test]
        fn hostname_validation_matches_the_rules(h in hostname_like(), with_domain in any::<bool>()) {
            let domains: &[&str] = if with_domain { &["corp.internal"] } else { &[] };
            let p = Policy::new(PolicyConfig { cluster_domains: domains.iter().map(|d| d.to_string()).collect(), ..Default::default() }).unwrap();
            let got = validate(&spec(&h), &p);
            prop_assert_eq!(got.is_ok(), oracle_valid(&h, domains), "{:?}: {:?}", h, got);
            if let Err(v) = got {
                prop_assert!(v.iter().all(|v| v.field == "spec.externalHostname.hostname"), "{:?}", v);
                // Messages quote at most 80 characters of the input.
                prop_assert!(v.iter().all(|v| v.message.chars().count() < 400), "{:?}", v);
            }
        }

        /// Egress guardrails (built-in denies, --deny-hostname, --allow-hostname)
        /// agree with the oracle, whatever the case or a root dot.
        #[test]
        fn guardrails_match_the_rules(h in guardrail_name(), allow in any::<bool>(), upper in any::<bool>(), root_dot in any::<bool>()) {
            prop_assume!(oracle_valid(&h, &[]));
            let p = policy(allow);
            let want_denied = oracle_denied(&h, allow);
            let got = check_egress(&h, &p);
            prop_assert_eq!(got.is_err(), want_denied, "{:?} (allow list: {}): {:?}", h, allow, got);
            let variant = format!("{}{}", if upper { h.to_ascii_uppercase() } else { h.clone() }, if root_dot { "." } else { "" });
            prop_assert_eq!(check_egress(&variant, &p).is_err(), want_denied, "{:?}", variant);
        }

        /// A real certificate and its key pass, with any chain after it; any
        /// other key fails with a mismatch; messages never echo the key.
        #[test]
        fn client_certificate_pairs(i in 0usize..6, j in 0usize..6, chain in prop::option::of(0usize..6), noise in "[^-]{0,40}") {
            let ps = pairs();
            let mut crt = format!("{noise}\n{}", ps[i].cert);
            if let Some(c) = chain { crt.push_str(&ps[c].cert); }
            let result = check_client_certificate(&tls_secret(crt.as_bytes(), ps[j].key.as_bytes()));
            if i == j {
                prop_assert_eq!(result, Ok(()));
            } else {
                let e = result.unwrap_err().to_string();
                prop_assert!(e.contains("does not match") || e.contains("not a usable"), "{}", e);
                prop_assert!(key_windows(&ps[j].key).iter().all(|w| !e.contains(w.as_str())), "key material in {}", e);
            }
            prop_assert_eq!(check_ca_bundle(&bundle(&crt)), Ok(()));
        }

        /// Mutated PEM (bit flips, truncation, inserted markers, dropped or
        /// doubled lines) never panics, and no message quotes the key.
        #[test]
        fn mutated_pem_never_panics_nor_leaks(i in 0usize..6, ms_crt in prop::collection::vec(mutation(), 0..4), ms_key in prop::collection::vec(mutation(), 0..4)) {
            let p = &pairs()[i];
            let crt = mutate(&p.cert, &ms_crt);
            let key = mutate(&p.key, &ms_key);
            if let Err(e) = check_client_certificate(&tls_secret(&crt, &key)) {
                let e = e.to_string();
                prop_assert!(!e.contains("apps/client"), "the caller names the Secret: {}", e);
                prop_assert!(key_windows(&p.key).iter().all(|w| !e.contains(w.as_str())), "key material in {}", e);
            }
            let _ = check_ca_bundle(&bundle(&String::from_utf8_lossy(&crt)));
            let _ = check_ca_bundle(&bundle(&String::from_utf8_lossy(&key)));
        }

        /// Two controllers merging into the same list in any interleaving: each
        /// ends with exactly its last wanted entries and conditions, foreign junk
        /// stays first and byte-identical, and lastTransitionTime moves only when
        /// a condition's status flips (or its entry is new).
        #[test]
        fn two_writers_interleaved_lose_nothing(
            junk in prop::collection::vec(junk(), 0..4),
            ops in prop::collection::vec((any::<bool>(), prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "d"]), 0..4), any::<bool>(), any::<bool>(), 1i64..3), 1..25),
            parents in any::<bool>(),
        ) {
            let shape = if parents { Shape::Parents } else { Shape::Ancestors };
            let mut list = junk.clone();
            // controller -> gateway -> condition type -> (status, lastTransitionTime)
            let mut expect: BTreeMap<&str, BTreeMap<String, Conditions>> = BTreeMap::new();
            let mut last: BTreeMap<&str, (i64, Verdicts)> = BTreeMap::new();
            for (step, (is_a, names, acc, res, generation)) in ops.iter().enumerate() {
                let ctl = if *is_a { A } else { B };
                let now = format!("2030-01-01T00:{:02}:{:02}Z", step / 60, step % 60);
                let wanted: Vec<ObjectRef> = names.iter().map(|n| ObjectRef::new("infra", *n)).collect();
                let v = verdicts(*acc, *res);
                let each: Vec<_> = wanted.iter().map(|gateway| (gateway, &v)).collect();
                list = merge(&list, shape, ctl, *generation, &each, &now).list;
                let before = expect.remove(ctl).unwrap_or_default();
                let mut after = BTreeMap::new();
                for n in names {
                    let mut conds = BTreeMap::new();
                    for (t, s) in [("Accepted", *acc), ("ResolvedRefs", *res)] {
                        let ltt = match before.get(*n).and_then(|c| c.get(t)) {
                            Some((old, ltt)) if *old == s => ltt.clone(),
                            _ => now.clone(),
                        };
                        conds.insert(t, (s, ltt));
                    }
                    after.insert(n.to_string(), conds);
                }
                expect.insert(ctl, after);
                last.insert(ctl, (*generation, v));
            }
            prop_assert_eq!(&list[..junk.len()], &junk[..]);
            for (ctl, gateways) in &expect {
                let mine: Vec<&Value> = list.iter().filter(|e| e["controllerName"] == *ctl).collect();
                let names: Vec<String> = mine.iter().map(|e| e[shape.ref_field()]["name"].as_str().unwrap_or("").to_string()).collect();
                prop_assert_eq!(names, gateways.keys().cloned().collect::<Vec<_>>(), "{} in {:?}", ctl, list);
                let (generation, v) = &last[ctl];
                for e in mine {
                    let conds = &gateways[e[shape.ref_field()]["name"].as_str().unwrap()];
                    for c in e["conditions"].as_array().unwrap() {
                        let t = c["type"].as_str().unwrap();
                        let (status, ltt) = &conds[t];
                        prop_assert_eq!(c["status"].as_str().unwrap(), if *status { "True" } else { "False" });
                        prop_assert_eq!(c["lastTransitionTime"].as_str().unwrap(), ltt.as_str(), "{}", c);
                        prop_assert_eq!(&c["observedGeneration"], &json!(generation));
                        let reason = if t == "Accepted" { v.accepted.reason } else { v.resolved_refs.reason };
                        prop_assert_eq!(c["reason"].as_str().unwrap(), reason);
                    }
                }
            }
        }
    }
}
