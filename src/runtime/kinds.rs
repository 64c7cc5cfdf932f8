//! Which Gateway API kinds this cluster serves, followed while running
//! (docs/design.md §7): a kind is watched only while its CRD is installed.
//! Discovery at start; then a change to any Gateway API CRD runs discovery
//! again and starts, moves (new preferred version) or stops that kind's watch.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::discovery::{ApiResource, Discovery};
use tokio::sync::Notify;
use tokio::task::{AbortHandle, JoinSet};
use tracing::{info, warn};

use super::watch::{self, Feeds};
use crate::model::Kind;
use crate::model::RouteKind;

/// The index kinds that can make or change ancestors, by served version.
pub type Served = BTreeMap<Kind, ApiResource>;

/// What discovery found: the XBackend kind (None: its CRD is missing) and the others.
pub struct Discovered {
    pub xbackend: Option<ApiResource>,
    pub served: Served,
}

/// The kinds `run` watches when served, besides XBackend.
pub fn wanted() -> impl Iterator<Item = Kind> {
    let others = [Kind::Gateway, Kind::ListenerSet, Kind::GatewayClass, Kind::ReferenceGrant];
    RouteKind::ALL.iter().map(|r| Kind::Route(*r)).chain(others)
}

pub async fn discover(client: &Client) -> Result<Discovered, kube::Error> {
    let discovery =
        Discovery::new(client.clone()).filter(&[crate::api::GATEWAY_GROUP, crate::api::GROUP]).run().await?;
    let find = |group: &str, kind: &str| discovery.get(group).and_then(|g| g.recommended_kind(kind)).map(|(ar, _)| ar);
    let served = wanted().filter_map(|kind| Some((kind, find(crate::api::GATEWAY_GROUP, kind.name())?))).collect();
    Ok(Discovered { xbackend: find(crate::api::GROUP, crate::api::KIND), served })
}

/// Whether the CRD of `resource` is gone (or going): read, not inferred
/// from discovery. A failed read is not "gone". A list by name, which the
/// CRD watch's permission (list, watch) covers; a get would need one more.
async fn crd_gone(client: &Client, resource: &ApiResource) -> bool {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: kube::Api<CustomResourceDefinition> = kube::Api::all(client.clone());
    let by_name =
        kube::api::ListParams::default().fields(&format!("metadata.name={}.{}", resource.plural, resource.group));
    match tokio::time::timeout(super::timeouts::API_TIMEOUT, crds.list_metadata(&by_name)).await {
        Ok(Ok(list)) => list.items.iter().all(|crd| crd.metadata.deletion_timestamp.is_some()),
        _ => false,
    }
}

/// Owns the watches of the served kinds.
pub struct Follower {
    feeds: Feeds,
    watches: JoinSet<()>,
    running: BTreeMap<Kind, (ApiResource, AbortHandle)>,
}

impl Follower {
    pub fn new(feeds: Feeds) -> Follower {
        Follower { feeds, watches: JoinSet::new(), running: BTreeMap::new() }
    }

    /// Starts, moves and stops watches so that exactly `served` is watched.
    /// A stopped kind's objects leave the index at once, re-judging the
    /// XBackends they made ancestors for. A kind discovery leaves out is
    /// stopped only once its CRD is gone: an apiserver that has just
    /// started serves discovery before it lists every CRD's group, and
    /// dropping the kinds then would drop every ancestor (statuses cleared,
    /// egress policies deleted) for the moment it takes to come back.
    pub async fn follow(&mut self, served: &Served) {
        let mut stale: Vec<Kind> = Vec::new();
        for (kind, (resource, _)) in &self.running {
            match served.get(kind) {
                Some(now) if now.api_version == resource.api_version => {}
                Some(_) => stale.push(*kind),
                None if crd_gone(&self.feeds.client, resource).await => stale.push(*kind),
                None => {
                    warn!(kind = kind.name(), "discovery does not list it, but its CRD is there: still watching it")
                }
            }
        }
        for kind in stale {
            let (resource, watch) = self.running.remove(&kind).expect("running");
            watch.abort();
            let name = kind.name();
            if served.contains_key(&kind) {
                info!(kind = name, from = %resource.api_version, "served version changed; watching the new one");
                continue;
            }
            info!(kind = name, "its CRD is gone; no longer watching it");
            let affected = self.feeds.state.retain(kind, &BTreeSet::new());
            self.feeds.queue.extend(affected);
            // A watch stopped before its first list must not hold readiness back.
            self.feeds.state.synced.mark(name);
        }
        while self.watches.try_join_next().is_some() {}
        for (kind, resource) in served {
            if self.running.contains_key(kind) {
                continue;
            }
            let name = kind.name();
            info!(kind = name, version = %resource.api_version, "watching");
            self.feeds.state.synced.expect(name);
            let indexer = watch::Objects { kind: *kind, resource: resource.clone(), relists: None };
            let handle = self.watches.spawn(watch::run(self.feeds.clone(), std::sync::Arc::new(indexer)));
            self.running.insert(*kind, (resource.clone(), handle));
        }
    }

    /// Follows CRD changes until the process ends (`changed` is notified by
    /// the CRD watch, `watch::GatewayApiCrds`).
    pub async fn run(&mut self, changed: Arc<Notify>) {
        loop {
            changed.notified().await;
            // A new CRD is served a moment after it is created: look again a
            // few times rather than once.
            for wait in [Duration::from_millis(500), Duration::from_secs(3), Duration::from_secs(10)] {
                tokio::time::sleep(wait).await;
                match discover(&self.feeds.client).await {
                    Ok(found) => self.follow(&found.served).await,
                    Err(e) => warn!(error = %e, "discovery failed; keeping the watches as they are"),
                }
            }
        }
    }
}
