//! The egress policy writer (docs/design.md §6b), beside the status
//! pipeline: watches keep the engine's objects as they stand (`standing`),
//! one task decides what should stand (`decider`), and the runner writes
//! each object that differs (`writer`), keyed by the object. It writes
//! nothing else, and nothing else writes these objects.

mod decider;
mod standing;
mod warnings;
mod writer;

use std::sync::Arc;

use kube::Client;
use kube::api::GroupVersionKind;
use kube::discovery::{ApiResource, Discovery};
use kube::runtime::events::Recorder;
use tokio::sync::watch as channel;
use tracing::info;

use super::Error;
use super::dns_check::DnsCheck;
use super::leader::Leadership;
use super::metrics::Metrics;
use super::queue::Queue;
use super::runner::Runner;
use super::state::State;
use super::watch::Starter;
use crate::dns::Found;
use crate::egress::{Config, Engine, EngineSettings, Hold, PolicyKind};
use crate::model::ObjectRef;
use crate::policy::Policy;

pub use decider::Decider;
pub use standing::{Plan, PolicyWatch, Standing};
pub use writer::{KubePolicies, PolicyWriter};

/// The engine `--egress-policy` names, in the version the cluster serves;
/// its CRD missing is an error (one clear line, then exit).
pub async fn engine(client: &Client, name: &str, admin_priority: u32) -> Result<Arc<dyn Engine>, Error> {
    let probe = crate::egress::engine(name, &EngineSettings { admin_priority, served: &[] })
        .ok_or_else(|| Error::Usage(format!("--egress-policy {name} is not an engine")))?;
    let (group, kind) = (probe.kind().group, probe.kind().kind);
    let discovery = Discovery::new(client.clone()).filter(&[group]).run().await?;
    let served: Vec<String> = (discovery.get(group).into_iter())
        .flat_map(|g| g.versions().map(str::to_string).collect::<Vec<_>>())
        .filter(|version| discovery.resolve_gvk(&GroupVersionKind::gvk(group, version, kind)).is_some())
        .collect();
    let engine = crate::egress::engine(name, &EngineSettings { admin_priority, served: &served }).expect("found above");
    let kind = engine.kind();
    if !served.iter().any(|v| v == kind.version) {
        return Err(Error::EngineCrdMissing {
            engine: engine.name(),
            kind: kind.kind,
            api_version: kind.api_version(),
        });
    }
    info!(engine = engine.name(), api_version = %kind.api_version(), kind = kind.kind, "egress enforcement");
    Ok(Arc::from(engine))
}

/// The API resource of an engine's kind.
pub fn resource(kind: &'static PolicyKind) -> ApiResource {
    ApiResource {
        group: kind.group.into(),
        version: kind.version.into(),
        api_version: kind.api_version(),
        kind: kind.kind.into(),
        plural: kind.plural.into(),
    }
}

/// What `start` wires.
pub struct Egress {
    pub engine: Arc<dyn Engine>,
    pub config: Config,
    pub hold: Hold,
    pub policy: Policy,
    pub dns: Option<Arc<DnsCheck>>,
    /// `--dns-service`: its key and the servers its EndpointSlices name.
    pub dns_service: Option<(ObjectRef, Arc<Found>)>,
}

impl Egress {
    /// Starts the watches of the engine's objects, the decider and the
    /// writer's workers; returns the writer's queue (for the shutdown drain).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        self,
        watches: &mut Starter<'_>,
        client: &Client,
        state: &Arc<State>,
        leadership: &Leadership,
        metrics: &Arc<Metrics>,
        recorder: Recorder,
        stop: &channel::Receiver<bool>,
    ) -> Arc<Queue> {
        let kind = self.engine.kind();
        let (standing, plan, queue) =
            (Arc::new(Standing::default()), Arc::new(Plan::default()), Arc::new(Queue::default()));
        metrics.egress_engine(self.engine.name(), &kind.api_version());
        // Namespaced engines watch only the listed namespaces, when listed.
        let namespaces = match (&self.config.namespaces, kind.namespaced) {
            (Some(listed), true) => listed.iter().cloned().map(Some).collect(),
            _ => vec![None],
        };
        for namespace in namespaces {
            for ours in [true, false] {
                let mut watch = PolicyWatch::new(
                    standing.clone(),
                    plan.clone(),
                    queue.clone(),
                    kind,
                    resource(kind),
                    ours,
                    namespace.clone(),
                );
                watch.controller = self.config.controller.clone();
                watches.start(watch);
            }
        }
        // What `--egress-cluster routes` reads: Services, and the EndpointSlices no controller manages.
        if crate::egress::ClusterMode::reads_services(self.config.cluster) {
            let services = kube::discovery::ApiResource::erase::<k8s_openapi::api::core::v1::Service>(&());
            watches.start(super::watch::Objects {
                kind: crate::model::Kind::Service,
                resource: services,
                relists: None,
            });
            watches.start(super::watch::HandSlices);
        }
        let decider = Arc::new(Decider {
            engine: self.engine,
            standing: standing.clone(),
            plan: plan.clone(),
            queue: queue.clone(),
            state: state.clone(),
            leadership: leadership.clone(),
            metrics: metrics.clone(),
            config: Arc::new(self.config),
            hold: self.hold,
            policy: Arc::new(self.policy),
            dns: self.dns,
            dns_service: self.dns_service,
            recorder,
        });
        watches.tasks.spawn("egress-decider", move || decider.clone().run());
        let api = KubePolicies { client: client.clone(), resource: resource(kind), namespaced: kind.namespaced };
        let work = PolicyWriter { standing, plan, api, leadership: leadership.clone(), metrics: metrics.clone() };
        let ready = state.synced.subscribe();
        let runner = Arc::new(Runner {
            work,
            queue: queue.clone(),
            leadership: leadership.clone(),
            ready,
            metrics: metrics.clone(),
        });
        runner.spawn(2, watches.tasks, stop);
        queue
    }
}
