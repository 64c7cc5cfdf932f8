//! `xbackend-controller run`: watches feed the index, a queue drives
//! reconciles, and only the leader writes status.

mod dns;
mod metrics;
mod queue;
mod server;
mod watch;
mod writer;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kube::Client;
use kube::api::{Api, DynamicObject};
use kube::discovery::{ApiResource, Discovery};
use kube::runtime::events::{Recorder, Reporter};
use tokio::sync::watch as channel;
use tracing::{info, warn};

use crate::cli::{LogFormat, RunArgs};
use crate::index::{Index, Kind, RefKind};
use crate::model::{ObjectRef, RouteKind};
use crate::status::{EventNote, Shape};
use crate::validate::Policy;

use metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid flag: {0}")]
    Usage(String),
    #[error("cannot reach the Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("cannot load kubeconfig: {0}")]
    Config(String),
    #[error("the XBackend CRD ({0}) is not installed: apply crds/xbackends.yaml first")]
    CrdMissing(&'static str),
    #[error("metrics address: {0}")]
    Listen(#[from] std::io::Error),
    #[error("leader election: {0}")]
    Lease(String),
}

/// What the writer knows of a stored XBackend besides the index's view.
#[derive(Clone, Debug, Default)]
pub struct Stored {
    pub resource_version: String,
    pub uid: String,
    pub status: serde_json::Value,
}

impl Stored {
    pub fn of(obj: &DynamicObject) -> Stored {
        use kube::ResourceExt;
        Stored {
            resource_version: obj.resource_version().unwrap_or_default(),
            uid: obj.uid().unwrap_or_default(),
            status: obj.data.get("status").cloned().unwrap_or(serde_json::Value::Null),
        }
    }
}

/// False when `new` tells nothing beyond `old`: the same object at the same
/// resourceVersion (typically the watch echo of our own write, whose response
/// we recorded already), or an older version (a watch can lag behind the
/// response to our own, later, write). The echo can also arrive before the
/// response; it then counts as news and costs one reconcile that writes nothing.
fn is_news(old: Option<&Stored>, new: &Stored) -> bool {
    let Some(old) = old.filter(|old| old.uid == new.uid) else { return true };
    match (old.resource_version.parse::<u64>(), new.resource_version.parse::<u64>()) {
        (Ok(a), Ok(b)) => b > a,
        _ => old.resource_version != new.resource_version,
    }
}

/// Watches that must sync before the controller is ready and starts writing.
pub struct Synced {
    pending: Mutex<BTreeSet<&'static str>>,
    ready: channel::Sender<bool>,
}

impl Synced {
    fn new(names: impl IntoIterator<Item = &'static str>) -> Self {
        let pending: BTreeSet<_> = names.into_iter().collect();
        let (ready, _) = channel::channel(pending.is_empty());
        Synced { pending: Mutex::new(pending), ready }
    }
    pub fn mark(&self, name: &str) {
        let mut pending = self.pending.lock().expect("synced lock");
        pending.remove(name);
        if pending.is_empty() {
            self.ready.send_replace(true);
        }
    }
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }
    pub fn pending(&self) -> Vec<&'static str> {
        self.pending.lock().expect("synced lock").iter().copied().collect()
    }
}

pub struct Shared {
    pub client: Client,
    pub policy: Policy,
    pub controller_name: String,
    pub xbackend_resource: ApiResource,
    pub metrics: Metrics,
    pub queue: queue::Queue,
    pub synced: Synced,
    index: Mutex<Index>,
    stored: Mutex<HashMap<ObjectRef, Stored>>,
    shape: AtomicU8,
    leader: channel::Receiver<bool>,
    recorder: Recorder,
    emitted: Mutex<HashMap<ObjectRef, Vec<EventNote>>>,
    accepted: Mutex<HashMap<ObjectRef, (bool, &'static str)>>,
    /// The resolved-address check (None with --no-dns-check).
    pub dns: Option<dns::Tracker>,
}

impl Shared {
    pub fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().expect("index lock")
    }

    pub fn shape(&self) -> Shape {
        if self.shape.load(Ordering::Relaxed) == 1 { Shape::Parents } else { Shape::Ancestors }
    }

    /// Returns true when the layout changed.
    pub fn set_shape(&self, shape: Shape) -> bool {
        let v = u8::from(shape == Shape::Parents);
        self.shape.swap(v, Ordering::Relaxed) != v
    }

    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    pub fn stored(&self, key: &ObjectRef) -> Option<Stored> {
        self.stored.lock().expect("stored lock").get(key).cloned()
    }

    /// Records the stored object's status and version; returns whether that
    /// was news (see `is_news`).
    pub fn update_stored(&self, key: ObjectRef, new: Stored) -> bool {
        let mut stored = self.stored.lock().expect("stored lock");
        let news = is_news(stored.get(&key), &new);
        if news {
            stored.insert(key, new);
        }
        news
    }

    /// After a re-list: forgets the XBackends it did not see.
    pub fn retain_stored(&self, seen: &BTreeSet<ObjectRef>) {
        let gone: Vec<ObjectRef> =
            self.stored.lock().expect("stored lock").keys().filter(|k| !seen.contains(*k)).cloned().collect();
        gone.iter().for_each(|k| self.forget(k));
    }

    pub fn forget(&self, key: &ObjectRef) {
        self.stored.lock().expect("stored lock").remove(key);
        self.emitted.lock().expect("emitted lock").remove(key);
        self.set_accepted(key, None);
    }

    /// Records an XBackend's Accepted verdict (None: gone) as (status, reason).
    fn set_accepted(&self, key: &ObjectRef, accepted: Option<(bool, &'static str)>) {
        let mut map = self.accepted.lock().expect("accepted lock");
        let old = match accepted {
            Some(a) => map.insert(key.clone(), a),
            None => map.remove(key),
        };
        // Adjust the gauges by this one change (under the lock, so they stay
        // exact): recounting the whole map on every reconcile made a cold
        // start O(N^2). Both series exist from the first call on.
        for value in [true, false] {
            let delta = i64::from(accepted.map(|a| a.0) == Some(value)) - i64::from(old.map(|a| a.0) == Some(value));
            self.metrics.xbackends.get_or_create(&metrics::AcceptedLabel { accepted: value.to_string() }).inc_by(delta);
        }
        if old != accepted {
            let rejected = |a: Option<(bool, &'static str)>| a.filter(|a| !a.0).map(|a| a.1);
            if let Some(reason) = rejected(old) {
                self.metrics.rejected.get_or_create(&metrics::ReasonLabel { reason: reason.into() }).dec();
            }
            if let Some(reason) = rejected(accepted) {
                self.metrics.rejected.get_or_create(&metrics::ReasonLabel { reason: reason.into() }).inc();
            }
        }
    }

    pub fn xbackends(&self, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), namespace, &self.xbackend_resource)
    }
}

pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,kube=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The resources to watch, as served by this apiserver (preferred versions).
struct Resources {
    xbackend: ApiResource,
    others: Vec<(Kind, ApiResource)>,
}

async fn discover(client: &Client) -> Result<Resources, Error> {
    let discovery =
        Discovery::new(client.clone()).filter(&[crate::api::GATEWAY_GROUP, crate::api::GROUP]).run().await?;
    let find = |group: &str, kind: &str| discovery.get(group).and_then(|g| g.recommended_kind(kind)).map(|(ar, _)| ar);
    let xbackend = find(crate::api::GROUP, crate::api::KIND).ok_or(Error::CrdMissing(watch::XBACKEND_CRD))?;
    let wanted =
        RouteKind::ALL.iter().map(|r| Kind::Route(*r)).chain([Kind::Gateway, Kind::GatewayClass, Kind::ReferenceGrant]);
    let mut others = Vec::new();
    for kind in wanted {
        match find(crate::api::GATEWAY_GROUP, watch::kind_name(kind)) {
            Some(ar) => others.push((kind, ar)),
            None => warn!(kind = watch::kind_name(kind), "kind not served by this cluster; not watching it"),
        }
    }
    Ok(Resources { xbackend, others })
}

fn identity() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
        format!("{}-{}", if host.is_empty() { "xbackend-controller" } else { &host }, std::process::id())
    })
}

/// How long one DNS query may take before it counts as a failure.
const DNS_TIMEOUT: Duration = Duration::from_secs(3);

pub async fn run(args: RunArgs) -> Result<(), Error> {
    let policy = Policy::new(args.policy.to_config()).map_err(Error::Usage)?;
    let config = kube::Config::infer().await.map_err(|e| Error::Config(e.to_string()))?;
    let default_namespace = config.default_namespace.clone();
    let client = Client::try_from(config)?;
    let resources = discover(&client).await?;
    let identity = identity();

    // Leadership: a watch channel that is constantly true without election.
    let (leader_tx, leader_rx) = channel::channel(!args.leader_election_enabled());
    let mut sync_names: Vec<&'static str> = resources.others.iter().map(|(k, _)| watch::kind_name(*k)).collect();
    sync_names.extend(["XBackend", "Secret", "ConfigMap", "Pod", "Namespace", "CustomResourceDefinition"]);

    let dns = if args.dns_check_enabled() {
        let resolver = crate::dns::Resolver::new(&args.dns.dns_servers, DNS_TIMEOUT).map_err(Error::Usage)?;
        let ttl = |secs: u64| Duration::from_secs(secs);
        Some(dns::Tracker::new(resolver, ttl(args.dns.dns_min_ttl), ttl(args.dns.dns_max_ttl)))
    } else {
        None
    };

    let shared = Arc::new(Shared {
        recorder: Recorder::new(
            client.clone(),
            Reporter { controller: "xbackend-controller".into(), instance: Some(identity.clone()) },
        ),
        client: client.clone(),
        policy,
        controller_name: args.controller_name.clone(),
        xbackend_resource: resources.xbackend.clone(),
        metrics: Metrics::default(),
        queue: queue::Queue::default(),
        synced: Synced::new(sync_names),
        index: Mutex::new(Index::new(args.controller_name.clone())),
        stored: Mutex::default(),
        shape: AtomicU8::new(0),
        leader: leader_rx,
        emitted: Mutex::default(),
        accepted: Mutex::default(),
        dns,
    });

    let addr = server::serve(args.metrics_addr, shared.clone()).await?;
    info!(%addr, controller_name = %args.controller_name, "serving /metrics, /healthz, /readyz");

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(watch::watch_crd(shared.clone()));
    tasks.spawn(watch::watch_kind(shared.clone(), Kind::XBackend, Api::all_with(client.clone(), &resources.xbackend)));
    for (kind, ar) in &resources.others {
        tasks.spawn(watch::watch_kind(shared.clone(), *kind, Api::all_with(client.clone(), ar)));
    }
    tasks.spawn(watch::watch_refs(shared.clone(), RefKind::Secret));
    tasks.spawn(watch::watch_refs(shared.clone(), RefKind::ConfigMap));
    tasks.spawn(watch::watch_pods(shared.clone()));
    tasks.spawn(watch::watch_namespaces(shared.clone()));

    let lease = if args.leader_election_enabled() {
        let namespace = args.leader_election_namespace.clone().unwrap_or(default_namespace);
        Some(start_leader_election(&client, &args, &namespace, &identity, leader_tx).await?)
    } else {
        shared.metrics.leader.set(1);
        None
    };

    // A new leader starts from a full pass: the old one may have died mid-way.
    let mut leader_changes = shared.leader.clone();
    let on_leader = shared.clone();
    tasks.spawn(async move {
        loop {
            let leading = *leader_changes.borrow_and_update();
            on_leader.metrics.leader.set(i64::from(leading));
            if leading {
                info!("leading: reconciling every XBackend");
                let all = on_leader.index().backend_keys();
                on_leader.queue.extend(all);
            }
            if leader_changes.changed().await.is_err() {
                return;
            }
        }
    });

    let (stop_tx, stop_rx) = channel::channel(false);
    for _ in 0..args.concurrency.max(1) {
        tasks.spawn(writer::worker(shared.clone(), stop_rx.clone()));
    }
    let mut ready = shared.synced.ready.subscribe();
    let ready_metric = shared.clone();
    tasks.spawn(async move {
        let _ = ready.wait_for(|r| *r).await;
        ready_metric.metrics.ready.set(1);
        info!("every watch synced: ready");
    });

    shutdown_signal().await;
    info!("shutting down: finishing in-flight reconciles");
    stop_tx.send_replace(true);
    // Workers take no new keys once stopped; wait for the ones already running.
    let drain = async {
        while shared.queue.running() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
    if let Some((forwarder, handle)) = lease {
        // Dropping the last receiver makes the lease task release the Lease, so
        // a standby replica takes over at once instead of after expiry.
        forwarder.abort();
        let _ = forwarder.await;
        match tokio::time::timeout(Duration::from_secs(5), handle).await {
            Ok(Ok(Ok(_))) => info!("leader Lease released"),
            Ok(Ok(Err(e))) => warn!(error = %e, "could not release the leader Lease"),
            _ => warn!("leader Lease release timed out"),
        }
    }
    tasks.abort_all();
    Ok(())
}

type LeaseTask =
    tokio::task::JoinHandle<Result<kube_lease_manager::LeaseManager, kube_lease_manager::LeaseManagerError>>;

async fn start_leader_election(
    client: &Client,
    args: &RunArgs,
    namespace: &str,
    identity: &str,
    leader_tx: channel::Sender<bool>,
) -> Result<(tokio::task::JoinHandle<()>, LeaseTask), Error> {
    let duration = args.lease_duration.max(3);
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(duration)
        .with_grace((duration / 3).max(1))
        .build()
        .await
        .map_err(|e| Error::Lease(e.to_string()))?;
    let (mut rx, handle) = manager.watch().await;
    info!(lease = %args.lease_name, namespace, identity, "leader election started");
    let forwarder = tokio::spawn(async move {
        loop {
            leader_tx.send_replace(*rx.borrow_and_update());
            if rx.changed().await.is_err() {
                leader_tx.send_replace(false);
                return;
            }
        }
    });
    Ok((forwarder, handle))
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

    fn stored(uid: &str, rv: &str) -> Stored {
        Stored { resource_version: rv.into(), uid: uid.into(), status: serde_json::Value::Null }
    }

    #[test]
    fn only_a_newer_version_of_the_same_object_is_news() {
        assert!(is_news(None, &stored("u", "5")), "first sight");
        assert!(!is_news(Some(&stored("u", "5")), &stored("u", "5")), "echo of our write");
        assert!(!is_news(Some(&stored("u", "7")), &stored("u", "5")), "late event");
        assert!(is_news(Some(&stored("u", "5")), &stored("u", "7")), "someone changed it");
        assert!(is_news(Some(&stored("u", "7")), &stored("v", "5")), "deleted and created again");
        assert!(is_news(Some(&stored("u", "x")), &stored("u", "y")), "opaque versions: different is news");
        assert!(!is_news(Some(&stored("u", "x")), &stored("u", "x")));
    }
}
