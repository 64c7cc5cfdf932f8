//! `xbackend-controller run`: wiring. Watches (`watch`) write the index in the
//! state (`state`) and queue what they affect (`queue`); three writers run on
//! one runner (`runner`): reconcile (XBackend status), the egress policy
//! writer (`egress`) and the GatewayClass writer (`class_writer`), each while
//! this replica holds the Lease (`leader`). Every long-lived task is
//! supervised (`tasks`). docs/design.md §11 has the data flow and who owns what.

mod class_writer;
mod dns_check;
mod egress;
mod error;
mod kinds;
mod leader;
mod metrics;
mod queue;
mod reconcile;
mod runner;
mod server;
mod state;
mod tasks;
mod timeouts;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use kube::Client;
use kube::api::Api;
use kube::runtime::events::{Recorder, Reporter};
use tokio::sync::watch as channel;
use tracing::{error, info, warn};

use crate::cli::{LogFormat, RunArgs};
use crate::index::Index;
use crate::model::{Kind, ObjectRef, RefKind};
use crate::policy::Policy;

pub use error::{Error, chain};
use leader::{Election, Leadership};
use metrics::Metrics;
use queue::Queue;
use reconcile::Reconciler;
use runner::Runner;
use state::{State, Synced};
use tasks::{Health, Tasks};
use watch::{Feeds, Starter};

pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,kube=warn".into());
    // Colours only on a terminal: `kubectl logs` and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

fn identity() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
        format!("{}-{}", if host.is_empty() { "xbackend-controller" } else { &host }, std::process::id())
    })
}

/// Denies the cluster's Service ranges (ServiceCIDR objects, Kubernetes 1.33+)
/// as if given with --deny-cidr: a name resolving into them reaches a Service.
/// Read once at start; a cluster without the API or the permission keeps the flags.
async fn detect_service_cidrs(client: &Client, policy: &mut Policy) {
    use k8s_openapi::api::networking::v1::ServiceCIDR;
    let api: Api<ServiceCIDR> = Api::all(client.clone());
    match tokio::time::timeout(timeouts::API_TIMEOUT, api.list(&Default::default())).await {
        Ok(Ok(list)) => {
            for object in list.items {
                let cidrs = object.spec.and_then(|s| s.cidrs).unwrap_or_default();
                policy.addresses.deny_service_cidrs(&object.metadata.name.unwrap_or_default(), &cidrs);
            }
            info!(service_cidrs = ?policy.addresses.service_cidrs(), "denying the cluster's Service ranges");
        }
        Ok(Err(e)) => info!(error = %e, "cannot read ServiceCIDRs; pass the Service range with --deny-cidr"),
        Err(_) => info!("reading ServiceCIDRs timed out; pass the Service range with --deny-cidr"),
    }
}

/// A client whose reads time out, counted from each request.
async fn connect() -> Result<(Client, String), Error> {
    let mut config = kube::Config::infer().await?;
    config.read_timeout = Some(timeouts::READ_TIMEOUT);
    // Count the read timeout from each request, not from when a pooled
    // connection went idle.
    config.reset_reader_on_write = true;
    let namespace = config.default_namespace.clone();
    Ok((Client::try_from(config)?, namespace))
}

/// Flags that cannot work together.
fn check_flags(args: &RunArgs) -> Result<(), Error> {
    if args.egress.enabled() && !args.dns_check_enabled() {
        return Err(Error::EgressNeedsDnsCheck);
    }
    if args.dns_service.is_some() && !args.dns_check_enabled() {
        return Err(Error::DnsServiceNeedsDnsCheck);
    }
    Ok(())
}

pub async fn run(args: RunArgs) -> Result<(), Error> {
    let mut policy = Policy::new(args.policy.to_config()).map_err(Error::Usage)?;
    check_flags(&args)?;
    let (client, default_namespace) = connect().await?;
    let found = kinds::discover(&client).await?;
    let xbackend = found.xbackend.clone().ok_or(Error::CrdMissing(watch::XBACKEND_CRD))?;
    for kind in kinds::wanted().filter(|kind| !found.served.contains_key(kind)) {
        warn!(kind = kind.name(), "kind not served by this cluster; watching for its CRD");
    }
    let engine = match args.egress.engine_name() {
        Some(name) => Some(egress::engine(&client, name, args.egress.egress_admin_priority).await?),
        None => None,
    };
    if let Some(engine) = &engine {
        args.egress.check_engine(&**engine).map_err(Error::Usage)?;
    }
    if args.dns_check_enabled() {
        detect_service_cidrs(&client, &mut policy).await;
    }
    let identity = identity();
    let metrics = Arc::new(Metrics::default());
    let index = Index::new(&args.controller_name)
        .guarding(args.guard.gateway_classes.clone())
        .tracking_services(engine.is_some() && crate::egress::ClusterMode::reads_services(args.egress.cluster_mode()));
    let state = Arc::new(State::new(index, metrics.clone(), Synced::open()));
    let feeds = Feeds { client: client.clone(), state: state.clone(), queue: Arc::default(), metrics: metrics.clone() };
    let mut tasks = Tasks::new(metrics.clone());
    let (stop_tx, stop) = channel::channel(false);

    let watched = start_watches(&feeds, &mut tasks, &args, &found, xbackend.clone()).await?;
    let mut election = elect(&args, &client, &default_namespace, &identity).await?;
    let leadership = election.as_ref().map(|e| e.leadership.clone()).unwrap_or_else(Leadership::always);
    let recorder = || {
        let reporter = Reporter { controller: "xbackend-controller".into(), instance: Some(identity.clone()) };
        Recorder::new(client.clone(), reporter)
    };
    let found_dns = watched.resolver.as_ref().and_then(|r| r.found());
    let dns = watched.resolver.map(|resolver| {
        let ttls = (Duration::from_secs(args.ttl.dns_min_ttl), Duration::from_secs(args.ttl.dns_max_ttl));
        let (state, queue, metrics) = (state.clone(), feeds.queue.clone(), metrics.clone());
        dns_check::DnsCheck::start(resolver, ttls, state, queue, metrics, Some(&mut tasks))
    });
    // The egress policy watches are the last to register for readiness.
    let egress_queue = engine.map(|engine| {
        if let Some(warning) = args.egress.deprecation() {
            warn!("{warning}");
        }
        let dns_service =
            args.dns_service.clone().zip(found_dns).map(|((ns, name), found)| (ObjectRef::new(ns, name), found));
        let config = crate::egress::Config {
            controller: crate::egress::controller_label(&args.controller_name),
            ..args.egress.config()
        };
        let egress = egress::Egress {
            engine,
            config,
            hold: args.egress.hold(args.ttl.egress_address_hold),
            policy: policy.clone(),
            dns: dns.clone(),
            dns_service,
        };
        let mut watches = Starter { feeds: &feeds, tasks: &mut tasks };
        egress.start(&mut watches, &client, &state, &leadership, &metrics, recorder(), &stop)
    });
    state.synced.seal();
    let mut synced = state.synced.subscribe();
    tokio::spawn(async move {
        if synced.wait_for(|r| *r).await.is_ok() {
            info!("every watch synced: ready");
        }
    });
    let writers = Writers { feeds: &feeds, leadership: &leadership, stop: &stop };
    let api = reconcile::Kube { recorder: recorder(), client: client.clone(), xbackend };
    let reconciler = Reconciler {
        api,
        policy,
        controller_name: args.controller_name.clone(),
        state: state.clone(),
        queue: feeds.queue.clone(),
        metrics: metrics.clone(),
        leadership: leadership.clone(),
        dns,
    };
    writers.start(reconciler, feeds.queue.clone(), args.concurrency, &mut tasks);
    if let Some(resource) = &watched.class_resource {
        let api = class_writer::KubeClasses::new(client.clone(), resource);
        let classes = watched.classes.clone();
        let work = class_writer::ClassWriter { classes, api, leadership: leadership.clone(), metrics: metrics.clone() };
        writers.start(work, watched.classes.queue.clone(), 1, &mut tasks);
    }

    // A new leader starts from a full pass: the old one may have died mid-way.
    // While leading, a periodic safety resync does the same (it writes
    // nothing when nothing changed). The egress decider starts again by itself.
    let leading = Arc::new(Lead {
        state: state.clone(),
        queue: feeds.queue.clone(),
        metrics: metrics.clone(),
        classes: watched.classes.clone(),
        resync_secs: args.resync_interval,
    });
    let changes = leadership.clone();
    tasks.spawn("leader-pass", move || leading.clone().run(changes.changes()));

    let addr = serve_admin(&args, &state, &feeds.queue, &metrics, &tasks.health).await?;
    info!(%addr, controller_name = %args.controller_name, "serving /metrics, /healthz, /readyz");
    let ended = tokio::select! {
        () = shutdown_signal() => None,
        gave_up = tasks.supervise() => Some(Error::TaskEnded(gave_up)),
        what = async { election.as_mut().expect("checked").ended().await }, if election.is_some() => {
            election = None;
            Some(Error::ElectionEnded(what))
        }
    };
    stop_tx.send_replace(true);
    let queues = [Some(feeds.queue.clone()), Some(watched.classes.queue.clone()), egress_queue];
    shutdown(queues.into_iter().flatten().collect(), election, tasks).await;
    match ended {
        Some(e) => {
            error!(error = %e, "exiting");
            Err(e)
        }
        None => Ok(()),
    }
}

/// What the watches started leave for the writers: the DNS resolver (with
/// `--dns-service`, fed by its watch), our GatewayClasses, and the class kind.
struct Watched {
    resolver: Option<crate::dns::Resolver>,
    classes: Arc<class_writer::Classes>,
    class_resource: Option<kube::discovery::ApiResource>,
}

/// The watches: one line per kind (docs/design.md §11.9, "Adding a watched kind").
async fn start_watches(
    feeds: &Feeds,
    tasks: &mut Tasks,
    args: &RunArgs,
    found: &kinds::Discovered,
    xbackend: kube::discovery::ApiResource,
) -> Result<Watched, Error> {
    let mut watches = Starter { feeds, tasks };
    // A schema change re-lists the XBackends: what the old schema pruned shows again.
    let schema_changed = Arc::new(tokio::sync::Notify::new());
    watches.start(watch::XBackendCrd { schema_changed: schema_changed.clone() });
    watches.start(watch::Objects { kind: Kind::XBackend, resource: xbackend, relists: Some(schema_changed) });
    // The Gateway API kinds, each while its CRD is installed.
    let follower = Arc::new(tokio::sync::Mutex::new(kinds::Follower::new(feeds.clone())));
    follower.lock().await.follow(&found.served).await;
    let crds_changed = Arc::new(tokio::sync::Notify::new());
    watches.start(watch::GatewayApiCrds { changed: crds_changed.clone() });
    watches.tasks.spawn("follower", move || {
        let (follower, changed) = (follower.clone(), crds_changed.clone());
        async move { follower.lock().await.run(changed).await }
    });
    watches.start(watch::References::<Secret>::new(RefKind::Secret));
    watches.start(watch::References::<ConfigMap>::new(RefKind::ConfigMap));
    watches.start(watch::Metadata::<Pod>::new(Kind::Pod, Some(watch::LIVE_PODS)));
    watches.start(watch::Metadata::<Namespace>::new(Kind::Namespace, None));
    // The DNS servers: the flags', and the DNS Service's ready endpoints as its watch finds them.
    let resolver = match (&args.dns_service, args.dns_check_enabled()) {
        (_, false) => None,
        (None, true) => Some(crate::dns::Resolver::new(&args.dns.dns_servers, timeouts::DNS_TIMEOUT)),
        (Some((namespace, service)), true) => {
            Some(crate::dns::Resolver::discovering(&args.dns.dns_servers, timeouts::DNS_TIMEOUT).map(|(r, found)| {
                watches.start(watch::DnsService::new(namespace.clone(), service.clone(), found));
                r
            }))
        }
    }
    .transpose()
    .map_err(Error::Usage)?;
    let class_resource = found.served.get(&Kind::GatewayClass).cloned();
    let classes = class_writer::Classes::new(&args.controller_name);
    if let Some(resource) = &class_resource {
        watches.start(class_writer::ClassWatch { classes: classes.clone(), resource: resource.clone() });
    }
    Ok(Watched { resolver, classes, class_resource })
}

/// Starts writers on the runner: each behind the readiness gate and the Lease.
struct Writers<'a> {
    feeds: &'a Feeds,
    leadership: &'a Leadership,
    stop: &'a channel::Receiver<bool>,
}

impl Writers<'_> {
    fn start<W: runner::Work>(&self, work: W, queue: Arc<queue::Queue<W::Key>>, workers: usize, tasks: &mut Tasks) {
        let ready = self.feeds.state.synced.subscribe();
        let (leadership, metrics) = (self.leadership.clone(), self.feeds.metrics.clone());
        Arc::new(Runner { work, queue, leadership, ready, metrics }).spawn(workers, tasks, self.stop);
    }
}

/// Workers take no new keys once stopped: waits (5 s at most) for the guards
/// of the keys already running (each API call they make is bounded), then
/// releases the Lease and stops every task.
async fn shutdown(queues: Vec<Arc<Queue>>, election: Option<Election>, mut tasks: Tasks) {
    info!("shutting down: finishing in-flight writes");
    let drain = async {
        while queues.iter().any(|q| q.running() > 0) {
            tokio::time::sleep(Duration::from_millis(50)).await
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
    if let Some(election) = election {
        election.release().await;
    }
    tasks.abort_all();
}

/// Leader election, when enabled.
async fn elect(
    args: &RunArgs,
    client: &Client,
    default_namespace: &str,
    identity: &str,
) -> Result<Option<Election>, Error> {
    if !args.leader_election_enabled() {
        return Ok(None);
    }
    let namespace = args.leader_election_namespace.clone().unwrap_or_else(|| default_namespace.to_string());
    let lease =
        leader::LeaseArgs { name: &args.lease_name, namespace: &namespace, identity, duration: args.lease_duration };
    Ok(Some(leader::elect(client, lease).await?))
}

/// `/metrics`, `/healthz` and `/readyz`: ready once every watch has synced
/// and while no long-lived task is down (each named when one is).
async fn serve_admin(
    args: &RunArgs,
    state: &Arc<State>,
    queue: &Arc<Queue>,
    metrics: &Arc<Metrics>,
    health: &Arc<Health>,
) -> Result<std::net::SocketAddr, Error> {
    let (metrics, state, queue, health) = (metrics.clone(), state.clone(), queue.clone(), health.clone());
    let endpoints = Arc::new(move |path: &str| -> server::Reply {
        let text = |code, body: String| (code, body, "text/plain");
        match path {
            "/metrics" => {
                metrics.set_queue_depth(queue.depths(), queue.retrying());
                metrics.ready.set(i64::from(state.synced.is_ready() && health.down().is_empty()));
                (StatusCode::OK, metrics.encode(), "application/openmetrics-text; version=1.0.0; charset=utf-8")
            }
            "/healthz" | "/livez" => text(StatusCode::OK, "ok".to_string()),
            "/readyz" => {
                let (code, body) = readiness(&health, &state.synced);
                text(code, body)
            }
            _ => text(StatusCode::NOT_FOUND, "not found".to_string()),
        }
    });
    Ok(server::serve(args.metrics_addr, server::Limits::default(), endpoints).await?)
}

/// `/readyz`: ready once every watch has synced and while no long-lived
/// task is down; otherwise 503, naming the tasks down or the watches pending.
fn readiness(health: &Health, synced: &Synced) -> (StatusCode, String) {
    let down = health.down();
    if !down.is_empty() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("tasks down: {}", down.join(", ")));
    }
    if synced.is_ready() {
        return (StatusCode::OK, "ok".to_string());
    }
    (StatusCode::SERVICE_UNAVAILABLE, format!("waiting for watches: {}", synced.pending().join(", ")))
}

/// What leadership starts: a full pass on takeover (once every watch has
/// listed) of XBackends and our GatewayClasses, and the periodic resync while
/// leading (`resync_secs` 0: none), each `resync_secs` after the previous
/// pass drained from the queue.
struct Lead {
    state: Arc<State>,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
    classes: Arc<class_writer::Classes>,
    resync_secs: u64,
}

impl Lead {
    async fn run(self: Arc<Self>, mut changes: channel::Receiver<bool>) {
        let period = (self.resync_secs > 0).then(|| Duration::from_secs(self.resync_secs));
        loop {
            let leading = *changes.borrow_and_update();
            self.metrics.leader.set(i64::from(leading));
            let pass = async {
                if !leading {
                    return std::future::pending::<()>().await;
                }
                // Before every watch has listed, the keys are partial and the
                // queue is still filling: the resync clock would start too early.
                let _ = self.state.synced.subscribe().wait_for(|r| *r).await;
                info!("leading: reconciling every XBackend");
                self.queue.extend_bulk(self.state.backend_keys());
                self.classes.queue_all();
                let Some(period) = period else { return std::future::pending::<()>().await };
                // The period counts from when the previous pass has started every
                // key: at 50,000 XBackends a pass can outlast it, and overlapping
                // passes would recheck each XBackend twice.
                loop {
                    self.queue.bulk_drained().await;
                    tokio::time::sleep(period).await;
                    self.metrics.resyncs.inc();
                    info!("periodic resync: reconciling every XBackend");
                    self.queue.extend_bulk(self.state.backend_keys());
                }
            };
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = pass => {}
            }
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Backend, Object, ObjectRef};

    /// A task that ends makes the replica unready, by name, until it runs again;
    /// one that keeps ending stops `run` with an error (exit 1).
    #[tokio::test(start_paused = true)]
    async fn readiness_names_a_task_that_is_down_and_giving_up_is_an_error() {
        let metrics = Arc::new(Metrics::default());
        let synced = Synced::new([]);
        let mut tasks = Tasks::new(metrics.clone());
        let health = tasks.health.clone();
        assert_eq!(readiness(&health, &synced), (StatusCode::OK, "ok".to_string()));
        tasks.spawn("egress-decider", || async { panic!("a bug") });
        let supervisor = tokio::spawn(async move { tasks.supervise().await });
        tokio::time::sleep(Duration::from_millis(1)).await;
        let (code, body) = readiness(&health, &synced);
        assert_eq!((code, body.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "tasks down: egress-decider"));
        let gave_up = supervisor.await.unwrap();
        let error = Error::TaskEnded(gave_up);
        assert!(!error.is_usage(), "a runtime failure: exit 1, not 2");
        assert!(error.to_string().contains("task egress-decider ended 5 times"), "{error}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_resync_clock_starts_once_the_first_pass_has_drained() {
        let metrics = Arc::new(Metrics::default());
        let state = Arc::new(State::new(Index::new("ctl"), metrics.clone(), Synced::new(["XBackend"])));
        for name in ["a", "b"] {
            state.apply(ObjectRef::new("ns", name), Object::XBackend(Backend::new(1, Err("no spec".into()))));
        }
        let queue = Arc::new(Queue::default());
        let leadership = Leadership::always();
        let classes = class_writer::Classes::new("ctl");
        let lead = Arc::new(Lead {
            state: state.clone(),
            queue: queue.clone(),
            metrics: metrics.clone(),
            classes,
            resync_secs: 10,
        });
        tokio::spawn(lead.run(leadership.changes()));
        let resyncs = || metrics.resyncs.get();

        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!((resyncs(), queue.depths()), (0, (0, 0)), "no pass and no clock before the watches listed");
        state.synced.mark("XBackend");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(queue.depths(), (0, 2), "the leader's pass");
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(resyncs(), 0, "the pass has not drained: no resync yet");
        for _ in 0..2 {
            queue.pop().await.done();
        }
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert_eq!(resyncs(), 0, "the period counts from the drain");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!((resyncs(), queue.depths()), (1, (0, 2)));
    }
}
