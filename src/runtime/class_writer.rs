//! Writes the status of our own GatewayClasses (docs/design.md §6), apart
//! from the XBackend pipeline: a watch of GatewayClasses (few objects) keeps
//! ours and marks them dirty; one task patches the dirty ones while this
//! replica may write, each patch bounded by `API_TIMEOUT`, failures retried
//! after a backoff. It writes nothing else, and nothing else writes them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::discovery::ApiResource;
use tokio::sync::Notify;
use tracing::{info, warn};

use super::leader::Leadership;
use super::metrics::Metrics;
use super::queue::backoff;
use super::state::State;
use super::timeouts::API_TIMEOUT;
use super::watch::{Affected, Indexer};
use crate::decode::Watched;
use crate::gatewayclass::{Class, patch};
use crate::judge::now_rfc3339;
use crate::model::ObjectRef;

/// Our GatewayClasses as last seen, and which may need a write.
pub struct Classes {
    controller_name: String,
    seen: Mutex<BTreeMap<String, Class>>,
    dirty: Mutex<BTreeSet<String>>,
    wake: Notify,
}

impl Classes {
    pub fn new(controller_name: &str) -> Arc<Classes> {
        Arc::new(Classes {
            controller_name: controller_name.to_string(),
            seen: Mutex::default(),
            dirty: Mutex::default(),
            wake: Notify::new(),
        })
    }

    fn mark(&self, names: impl IntoIterator<Item = String>) {
        self.dirty.lock().expect("classes lock").extend(names);
        self.wake.notify_one();
    }

    fn mark_all(&self) {
        let names: Vec<String> = self.seen.lock().expect("classes lock").keys().cloned().collect();
        self.mark(names);
    }
}

/// The GatewayClass watch that feeds `Classes` (the index's own GatewayClass
/// watch keeps only what verdicts need).
pub struct ClassWatch {
    pub classes: Arc<Classes>,
    pub resource: ApiResource,
}

impl Indexer for ClassWatch {
    type Resource = Watched;

    fn name(&self) -> &'static str {
        "GatewayClass status"
    }
    fn api(&self, client: &Client) -> Api<Watched> {
        Api::all_with(client.clone(), &self.resource)
    }
    fn apply(&self, _: &State, key: ObjectRef, object: &Watched) -> Result<Affected, String> {
        let class = Class::from_watched(object)?;
        let name = key.name.to_string();
        let ours = class.controller_name == self.classes.controller_name;
        let mut seen = self.classes.seen.lock().expect("classes lock");
        if ours {
            seen.insert(name.clone(), class);
            drop(seen);
            self.classes.mark([name]);
        } else {
            seen.remove(&name);
        }
        Ok(Affected::none())
    }
    fn delete(&self, _: &State, key: &ObjectRef) -> Affected {
        self.classes.seen.lock().expect("classes lock").remove(&*key.name);
        Affected::none()
    }
    fn reset(&self, _: &State, seen: &BTreeSet<ObjectRef>, _: bool) -> Affected {
        let names: BTreeSet<&str> = seen.iter().map(|k| &*k.name).collect();
        self.classes.seen.lock().expect("classes lock").retain(|name, _| names.contains(name.as_str()));
        self.classes.mark_all();
        Affected::none()
    }
}

/// Patches the dirty classes until the process ends; a new leader rechecks
/// every class.
pub async fn write(
    classes: Arc<Classes>,
    client: Client,
    resource: ApiResource,
    leadership: Leadership,
    metrics: Arc<Metrics>,
) {
    let api: Api<Watched> = Api::all_with(client, &resource);
    let mut leading = leadership.changes();
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = classes.wake.notified() => {}
            changed = leading.changed() => {
                if changed.is_err() {
                    return;
                }
                classes.mark_all();
                continue;
            }
        }
        if !leadership.may_write() {
            if *leading.borrow() {
                // Leading, but the last renewal is overdue: look again soon.
                tokio::time::sleep(Duration::from_secs(1)).await;
                classes.wake.notify_one();
            }
            continue;
        }
        let dirty = std::mem::take(&mut *classes.dirty.lock().expect("classes lock"));
        let mut failed = Vec::new();
        for name in dirty {
            let class = classes.seen.lock().expect("classes lock").get(&name).cloned();
            let Some(body) = class.and_then(|class| patch(&class, &classes.controller_name, &now_rfc3339())) else {
                continue;
            };
            if !leadership.may_write() {
                failed.push(name);
                continue;
            }
            let (params, body) = (PatchParams::default(), Patch::Merge(&body));
            match tokio::time::timeout(API_TIMEOUT, api.patch_status(&name, &params, &body)).await {
                Ok(Ok(_)) => {
                    metrics.class_status_writes.inc();
                    info!(gatewayclass = %name, "GatewayClass accepted");
                }
                // A newer version is on its way through the watch, which marks it again.
                Ok(Err(kube::Error::Api(status))) if status.code == 409 || status.code == 404 => {}
                Ok(Err(e)) => {
                    warn!(gatewayclass = %name, error = %e, "could not write GatewayClass status; retrying");
                    failed.push(name);
                }
                Err(_) => {
                    warn!(gatewayclass = %name, "writing GatewayClass status timed out; retrying");
                    failed.push(name);
                }
            }
        }
        if failed.is_empty() {
            failures = 0;
        } else {
            failures = failures.saturating_add(1);
            tokio::time::sleep(backoff(failures, Duration::from_millis(250), Duration::from_secs(60))).await;
            classes.mark(failed);
        }
    }
}
