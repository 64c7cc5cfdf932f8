//! Watches: the only writers of the state. Each kind's events go into it
//! (apply / delete; a re-list is applied as it streams, then retained), and the
//! XBackends they affect are queued. A dead connection, half-open included, is
//! noticed by the watcher's idle timeout (`WATCH_TIMEOUT_SECS` + 5 s) and reconnected.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource, ResourceExt};
use tracing::{info, warn};

use super::metrics::Metrics;
use super::queue::Queue;
use super::state::State;
use crate::decode::{self, Watched, WatchedMeta};
use crate::index::{Kind, Object, RefKind};
use crate::model::ObjectRef;
use crate::status::Shape;

pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Route(r) => r.kind(),
        Kind::Gateway => "Gateway",
        Kind::GatewayClass => "GatewayClass",
        Kind::ReferenceGrant => "ReferenceGrant",
        Kind::XBackend => "XBackend",
        Kind::Pod => "Pod",
        Kind::Namespace => "Namespace",
    }
}

/// What every watch feeds.
#[derive(Clone)]
pub struct Feeds {
    pub client: Client,
    pub state: Arc<State>,
    pub queue: Arc<Queue>,
    pub metrics: Arc<Metrics>,
}

/// Server-side timeout of every watch request: the watcher reconnects after
/// it, and treats a stream silent for 5 s longer as dead.
fn config() -> watcher::Config {
    watcher::Config::default().timeout(super::timeouts::WATCH_TIMEOUT_SECS)
}

/// Decodes one watched object; failures are logged and counted, never fatal.
fn decode_object(shared: &Feeds, kind: Kind, obj: &Watched) -> Option<(ObjectRef, Object)> {
    match decode::decode_watched(kind, obj) {
        Ok(decoded) => Some(decoded),
        Err(e) => {
            report_decode_failure(shared, kind, obj, &e);
            None
        }
    }
}

fn report_decode_failure(shared: &Feeds, kind: Kind, obj: &Watched, error: &str) {
    let name = kind_name(kind);
    shared.metrics.decode_failures.get_or_create(&Metrics::kind(name)).inc();
    warn!(
        kind = name,
        namespace = obj.namespace().unwrap_or_default(),
        name = obj.name_any(),
        error,
        "skipping object that does not decode"
    );
}

/// Counts a watch event; logs and counts an error (the watch retries with backoff).
fn counted<T>(shared: &Feeds, kind: &'static str, event: Result<T, watcher::Error>) -> Option<T> {
    match event {
        Ok(e) => {
            shared.metrics.watch_events.get_or_create(&Metrics::kind(kind)).inc();
            Some(e)
        }
        Err(e) => {
            shared.metrics.watch_errors.get_or_create(&Metrics::kind(kind)).inc();
            warn!(kind, error = %e, "watch error; retrying");
            None
        }
    }
}

/// Puts one added or changed object into the index and queues what it
/// affects (behind changes when it comes from a re-list); returns its key
/// unless it did not decode.
fn apply_object(shared: &Feeds, kind: Kind, obj: &Watched, relist: bool) -> Option<ObjectRef> {
    let (key, object) = decode_object(shared, kind, obj)?;
    let affected = shared.state.apply(key.clone(), object);
    if relist {
        shared.queue.extend_bulk(affected)
    } else {
        shared.queue.extend(affected)
    }
    Some(key)
}

/// Watches one index kind until the process ends. Objects are decoded from
/// the response bytes into `Watched` (no `DynamicObject` tree in between).
pub async fn watch_kind(shared: Feeds, kind: Kind, api: Api<Watched>) {
    let name = kind_name(kind);
    let mut stream = watcher::watcher(api, config()).default_backoff().boxed();
    // Keys seen since the last Init: a (re-)list is applied object by object
    // as it streams in, and what it did not see is deleted at InitDone.
    let mut seen: BTreeSet<ObjectRef> = BTreeSet::new();
    while let Some(event) = stream.next().await {
        let Some(event) = counted(&shared, name, event) else { continue };
        match event {
            Event::Init => seen.clear(),
            Event::InitApply(obj) => {
                if let Some(key) = apply_object(&shared, kind, &obj, true) {
                    seen.insert(key);
                }
            }
            Event::Apply(obj) => {
                apply_object(&shared, kind, &obj, false);
            }
            Event::InitDone => {
                let affected = shared.state.retain(kind, &seen);
                shared.queue.extend(affected);
                shared.state.synced.mark(name);
                info!(kind = name, "watch synced");
            }
            Event::Delete(obj) => {
                let key = ObjectRef::new(obj.namespace().unwrap_or_default(), obj.name_any());
                let affected = shared.state.delete(kind, &key);
                shared.queue.extend(affected);
            }
        }
    }
}

/// Watches Secret or ConfigMap metadata only: contents are read per
/// reconcile, so memory does not grow with unrelated objects.
pub async fn watch_refs(shared: Feeds, kind: RefKind) {
    let name = match kind {
        RefKind::Secret => "Secret",
        RefKind::ConfigMap => "ConfigMap",
    };
    let config = config();
    // WatchedMeta makes metadata-only list and watch requests.
    let mut stream = match kind {
        RefKind::Secret => watcher::watcher(Api::<WatchedMeta<Secret>>::all(shared.client.clone()), config)
            .default_backoff()
            .map(|e| e.map(keys_of))
            .boxed(),
        RefKind::ConfigMap => watcher::watcher(Api::<WatchedMeta<ConfigMap>>::all(shared.client.clone()), config)
            .default_backoff()
            .map(|e| e.map(keys_of))
            .boxed(),
    };
    let mut relists = 0u32;
    while let Some(event) = stream.next().await {
        let Some(event) = counted(&shared, name, event) else { continue };
        match event {
            Event::Apply(key) | Event::Delete(key) => {
                let affected = shared.state.referencing(kind, &key);
                shared.queue.extend(affected);
            }
            Event::InitDone => {
                relists += 1;
                shared.state.synced.mark(name);
                // A re-list hides what changed while the watch was down: recheck
                // every XBackend (unchanged results write nothing).
                if relists > 1 {
                    shared.queue.extend_bulk(shared.state.backend_keys());
                }
            }
            Event::Init | Event::InitApply(_) => {}
        }
    }
}

/// Finished Pods never receive traffic; the apiserver filters them out, and a
/// Pod that finishes leaves the watch as a deletion.
const LIVE_PODS: &str = "status.phase!=Succeeded,status.phase!=Failed";

/// Watches Pod metadata (labels) for EndpointSelector XBackends.
pub async fn watch_pods(shared: Feeds) {
    let api = Api::<WatchedMeta<Pod>>::all(shared.client.clone());
    watch_metadata(shared, Kind::Pod, api, config().fields(LIVE_PODS)).await
}

/// Watches Namespace names for the cluster-aware hostname guardrail.
pub async fn watch_namespaces(shared: Feeds) {
    let api = Api::<WatchedMeta<Namespace>>::all(shared.client.clone());
    watch_metadata(shared, Kind::Namespace, api, config()).await
}

/// Watches an index kind by metadata only, so memory stays small however many
/// unrelated objects there are: labels and names are all the index needs.
async fn watch_metadata<K>(shared: Feeds, kind: Kind, api: Api<WatchedMeta<K>>, config: watcher::Config)
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default,
{
    let name = kind_name(kind);
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut seen: BTreeSet<ObjectRef> = BTreeSet::new();
    let decoded = |object: &WatchedMeta<K>| decode::decode_metadata(kind, &object.metadata).ok();
    while let Some(event) = stream.next().await {
        let Some(event) = counted(&shared, name, event) else { continue };
        let affected = match event {
            Event::Init => {
                seen.clear();
                continue;
            }
            Event::InitApply(object) | Event::Apply(object) => {
                let Some((key, object)) = decoded(&object) else { continue };
                seen.insert(key.clone());
                shared.state.apply(key, object)
            }
            Event::Delete(object) => {
                let Some((key, _)) = decoded(&object) else { continue };
                shared.state.delete(kind, &key)
            }
            Event::InitDone => {
                let affected = shared.state.retain(kind, &seen);
                shared.state.synced.mark(name);
                info!(kind = name, "watch synced");
                affected
            }
        };
        shared.queue.extend(affected);
    }
}

fn keys_of<K: Resource>(event: Event<K>) -> Event<ObjectRef> {
    let key = |o: K| {
        ObjectRef::new(o.meta().namespace.clone().unwrap_or_default(), o.meta().name.clone().unwrap_or_default())
    };
    match event {
        Event::Apply(o) => Event::Apply(key(o)),
        Event::Delete(o) => Event::Delete(key(o)),
        Event::InitApply(o) => Event::InitApply(key(o)),
        Event::Init => Event::Init,
        Event::InitDone => Event::InitDone,
    }
}

pub const XBACKEND_CRD: &str = "xbackends.gateway.networking.x-k8s.io";

/// The status layout of an installed XBackend CRD: upstream's has `parents`.
pub fn shape_of(crd: &CustomResourceDefinition) -> Shape {
    let has_parents = crd.spec.versions.iter().any(|v| {
        v.schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .and_then(|s| s.properties.as_ref())
            .and_then(|p| p.get("status"))
            .and_then(|s| s.properties.as_ref())
            .is_some_and(|p| p.contains_key("parents") && !p.contains_key("ancestors"))
    });
    if has_parents { Shape::Parents } else { Shape::Ancestors }
}

/// Follows the XBackend CRD so that a switch between our CRD and upstream's
/// moves our entries to the new status layout.
pub async fn watch_crd(shared: Feeds) {
    let api: Api<CustomResourceDefinition> = Api::all(shared.client.clone());
    let config = config().fields(&format!("metadata.name={XBACKEND_CRD}"));
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Apply(crd)) | Ok(Event::InitApply(crd)) => {
                let shape = shape_of(&crd);
                if shared.state.set_shape(shape) {
                    info!(?shape, "XBackend CRD status layout changed; rechecking every XBackend");
                    shared.queue.extend(shared.state.backend_keys());
                }
            }
            Ok(Event::InitDone) => shared.state.synced.mark("CustomResourceDefinition"),
            Ok(_) => {}
            Err(e) => {
                shared.metrics.watch_errors.get_or_create(&Metrics::kind("CustomResourceDefinition")).inc();
                warn!(error = %e, "CRD watch error; retrying");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_layout_follows_the_installed_crd() {
        let mut crd = crate::api::crd();
        assert_eq!(shape_of(&crd), Shape::Ancestors);
        // Upstream v1.6 names the list `parents`.
        let mut value = serde_json::to_value(&crd).unwrap();
        let status = value.pointer_mut("/spec/versions/0/schema/openAPIV3Schema/properties/status/properties").unwrap();
        let list = status.as_object_mut().unwrap().remove("ancestors").unwrap();
        status.as_object_mut().unwrap().insert("parents".into(), list);
        crd = serde_json::from_value(value).unwrap();
        assert_eq!(shape_of(&crd), Shape::Parents);
    }
}
