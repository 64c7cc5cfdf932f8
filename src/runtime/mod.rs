//! `xbackend-controller run`: wiring. Watches (`watch`) write the index in the
//! state (`state`) and queue what they affect (`queue`); workers (`reconcile`)
//! plan from snapshots and write status while this replica holds the Lease
//! (`leader`). docs/design.md §11 has the data flow and who owns what.

mod class_writer;
mod dns_check;
mod egress_writer;
mod error;
mod kinds;
mod leader;
mod metrics;
mod queue;
mod reconcile;
mod server;
mod state;
mod timeouts;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use kube::Client;
use kube::api::Api;
use kube::runtime::events::{Recorder, Reporter};
use tokio::sync::watch as channel;
use tracing::{info, warn};

use crate::cli::{LogFormat, RunArgs};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};

use crate::index::{Index, Kind, RefKind};
use crate::policy::Policy;

pub use error::{Error, chain};
use leader::Leadership;
use metrics::Metrics;
use queue::Queue;
use reconcile::Reconciler;
use state::{State, Synced};
use watch::Feeds;

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

pub async fn run(args: RunArgs) -> Result<(), Error> {
    let mut policy = Policy::new(args.policy.to_config()).map_err(Error::Usage)?;
    if args.egress.enabled() && !args.dns_check_enabled() {
        return Err(Error::EgressNeedsDnsCheck);
    }
    if args.dns_service.is_some() && !args.dns_check_enabled() {
        return Err(Error::DnsServiceNeedsDnsCheck);
    }
    let mut config = kube::Config::infer().await?;
    config.read_timeout = Some(timeouts::READ_TIMEOUT);
    // Count the read timeout from each request, not from when a pooled
    // connection went idle.
    config.reset_reader_on_write = true;
    let default_namespace = config.default_namespace.clone();
    let client = Client::try_from(config)?;
    let found = kinds::discover(&client).await?;
    let xbackend = found.xbackend.ok_or(Error::CrdMissing(watch::XBACKEND_CRD))?;
    for kind in kinds::wanted().filter(|kind| !found.served.contains_key(kind)) {
        warn!(kind = watch::kind_name(kind), "kind not served by this cluster; watching for its CRD");
    }
    if args.dns_check_enabled() {
        detect_service_cidrs(&client, &mut policy).await;
    }
    let identity = identity();

    let metrics = Arc::new(Metrics::default());
    let state = Arc::new(State::new(
        Index::new(&args.controller_name).guarding(args.guard.gateway_classes.clone()),
        metrics.clone(),
        Synced::open(),
    ));
    let queue = Arc::new(Queue::default());

    // The watches: one line per kind (docs/design.md §11, "Adding a watched kind").
    let feeds = Feeds { client: client.clone(), state: state.clone(), queue: queue.clone(), metrics: metrics.clone() };
    let mut tasks = tokio::task::JoinSet::new();
    let mut watches = watch::Starter { feeds: &feeds, tasks: &mut tasks };
    // A schema change re-lists the XBackends: what the old schema pruned shows again.
    let schema_changed = Arc::new(tokio::sync::Notify::new());
    watches.start(watch::XBackendCrd { schema_changed: schema_changed.clone() });
    watches.start(watch::Objects { kind: Kind::XBackend, resource: xbackend.clone(), relists: Some(schema_changed) });
    // The Gateway API kinds, each while its CRD is installed.
    let mut follower = kinds::Follower::new(feeds.clone());
    follower.follow(&found.served);
    let crds_changed = Arc::new(tokio::sync::Notify::new());
    watches.start(watch::GatewayApiCrds { changed: crds_changed.clone() });
    watches.start(watch::References::<Secret>::new(RefKind::Secret));
    watches.start(watch::References::<ConfigMap>::new(RefKind::ConfigMap));
    watches.start(watch::Metadata::<Pod>::new(Kind::Pod, Some(watch::LIVE_PODS)));
    watches.start(watch::Metadata::<Namespace>::new(Kind::Namespace, None));
    // Egress enforcement: the NetworkPolicies labelled ours, for the second writer.
    let standing = args.egress.enabled().then(egress_writer::Standing::new);
    if let Some(standing) = &standing {
        let namespaces = args.egress.config().namespaces.map_or(vec![None], |ns| ns.into_iter().map(Some).collect());
        for namespace in namespaces {
            watches.start(egress_writer::PolicyWatch::new(standing.clone(), true, namespace.clone()));
            watches.start(egress_writer::PolicyWatch::new(standing.clone(), false, namespace));
        }
    }
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
    state.synced.seal();
    tasks.spawn(follower.run(crds_changed));

    let endpoints = {
        let (metrics, state, queue) = (metrics.clone(), state.clone(), queue.clone());
        Arc::new(move |path: &str| -> server::Reply {
            match path {
                "/metrics" => {
                    metrics.set_queue_depth(queue.depths(), queue.retrying());
                    (StatusCode::OK, metrics.encode(), "application/openmetrics-text; version=1.0.0; charset=utf-8")
                }
                "/healthz" | "/livez" => (StatusCode::OK, "ok".to_string(), "text/plain"),
                "/readyz" if state.synced.is_ready() => (StatusCode::OK, "ok".to_string(), "text/plain"),
                "/readyz" => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("waiting for watches: {}", state.synced.pending().join(", ")),
                    "text/plain",
                ),
                _ => (StatusCode::NOT_FOUND, "not found".to_string(), "text/plain"),
            }
        })
    };
    let addr = server::serve(args.metrics_addr, server::Limits::default(), endpoints).await?;
    info!(%addr, controller_name = %args.controller_name, "serving /metrics, /healthz, /readyz");

    let election = if args.leader_election_enabled() {
        let namespace = args.leader_election_namespace.clone().unwrap_or(default_namespace);
        let lease = leader::LeaseArgs {
            name: &args.lease_name,
            namespace: &namespace,
            identity: &identity,
            duration: args.lease_duration,
        };
        Some(leader::elect(&client, lease).await?)
    } else {
        None
    };
    let leadership = election.as_ref().map(|e| e.leadership.clone()).unwrap_or_else(Leadership::always);

    // A new leader starts from a full pass: the old one may have died mid-way.
    // While leading, a periodic safety resync does the same (it writes
    // nothing when nothing changed).
    tasks.spawn(lead(leadership.changes(), state.clone(), queue.clone(), metrics.clone(), args.resync_interval));

    let dns = resolver.map(|resolver| {
        let ttls = (Duration::from_secs(args.dns.dns_min_ttl), Duration::from_secs(args.dns.dns_max_ttl));
        dns_check::DnsCheck::start(resolver, ttls, state.clone(), queue.clone(), metrics.clone())
    });
    let api = reconcile::Kube {
        recorder: Recorder::new(
            client.clone(),
            Reporter { controller: "xbackend-controller".into(), instance: Some(identity.clone()) },
        ),
        client: client.clone(),
        xbackend,
    };
    if let Some(standing) = standing {
        let writer = egress_writer::Writer {
            standing,
            state: state.clone(),
            client: client.clone(),
            leadership: leadership.clone(),
            metrics: metrics.clone(),
            config: Arc::new(args.egress.config()),
            hold: args.egress.hold(),
            addresses: Arc::new(policy.addresses.clone()),
            recorder: Recorder::new(
                client.clone(),
                Reporter { controller: "xbackend-controller".into(), instance: Some(identity.clone()) },
            ),
        };
        tasks.spawn(writer.run());
    }
    let reconciler = Arc::new(Reconciler {
        api,
        policy,
        controller_name: args.controller_name.clone(),
        state: state.clone(),
        queue: queue.clone(),
        metrics: metrics.clone(),
        leadership: leadership.clone(),
        dns,
    });
    if let Some(resource) = class_resource {
        tasks.spawn(class_writer::write(classes, client.clone(), resource, leadership, metrics.clone()));
    }
    let (stop_tx, stop_rx) = channel::channel(false);
    for _ in 0..args.concurrency.max(1) {
        tasks.spawn(reconcile::worker(reconciler.clone(), stop_rx.clone()));
    }
    let mut ready = state.synced.subscribe();
    let ready_metric = metrics.clone();
    tasks.spawn(async move {
        let _ = ready.wait_for(|r| *r).await;
        ready_metric.ready.set(1);
        info!("every watch synced: ready");
    });

    shutdown_signal().await;
    info!("shutting down: finishing in-flight reconciles");
    stop_tx.send_replace(true);
    // Workers take no new keys once stopped; wait for the ones already running
    // (each API call they make is bounded).
    let drain = async {
        while queue.running() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
    if let Some(election) = election {
        election.release().await;
    }
    tasks.abort_all();
    Ok(())
}

/// Follows leadership: the leader metric, a full pass on takeover (once every
/// watch has listed), and the periodic resync while leading (`resync_secs` 0:
/// none), each `resync_secs` after the previous pass drained from the queue.
async fn lead(
    mut changes: channel::Receiver<bool>,
    state: Arc<State>,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
    resync_secs: u64,
) {
    let period = (resync_secs > 0).then(|| Duration::from_secs(resync_secs));
    loop {
        let leading = *changes.borrow_and_update();
        metrics.leader.set(i64::from(leading));
        let pass = async {
            if !leading {
                return std::future::pending::<()>().await;
            }
            // Before every watch has listed, the keys are partial and the
            // queue is still filling: the resync clock would start too early.
            let _ = state.synced.subscribe().wait_for(|r| *r).await;
            info!("leading: reconciling every XBackend");
            queue.extend_bulk(state.backend_keys());
            let Some(period) = period else { return std::future::pending::<()>().await };
            // The period counts from when the previous pass has started every
            // key: at 50,000 XBackends a pass can outlast it, and overlapping
            // passes would recheck each XBackend twice.
            loop {
                queue.bulk_drained().await;
                tokio::time::sleep(period).await;
                metrics.resyncs.inc();
                info!("periodic resync: reconciling every XBackend");
                queue.extend_bulk(state.backend_keys());
            }
        };
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = pass => {}
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
    use crate::index::Object;
    use crate::model::{Backend, ObjectRef};

    #[tokio::test(start_paused = true)]
    async fn the_resync_clock_starts_once_the_first_pass_has_drained() {
        let metrics = Arc::new(Metrics::default());
        let state = Arc::new(State::new(Index::new("ctl"), metrics.clone(), Synced::new(["XBackend"])));
        for name in ["a", "b"] {
            state.apply(ObjectRef::new("ns", name), Object::XBackend(Backend::new(1, Err("no spec".into()))));
        }
        let queue = Arc::new(Queue::default());
        let leadership = Leadership::always();
        tokio::spawn(lead(leadership.changes(), state.clone(), queue.clone(), metrics.clone(), 10));
        let resyncs = || metrics.resyncs.get();

        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!((resyncs(), queue.depths()), (0, (0, 0)), "no pass and no clock before the watches listed");
        state.synced.mark("XBackend");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(queue.depths(), (0, 2), "the leader's pass");
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(resyncs(), 0, "the pass has not drained: no resync yet");
        for _ in 0..2 {
            let key = queue.pop().await;
            queue.done(&key);
        }
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert_eq!(resyncs(), 0, "the period counts from the drain");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!((resyncs(), queue.depths()), (1, (0, 2)));
    }
}
