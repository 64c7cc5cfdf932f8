//! Reconcile one XBackend: read what it references, compute its status with the
//! pure core, and write only when the stored status would change, with a
//! resourceVersion precondition so no other writer's entries are lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Secret};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{Shared, Stored};
use crate::conditions::reason;
use crate::index::{Kind, Object};
use crate::judge::{Inputs, Judgement, judge, now_rfc3339};
use crate::model::ObjectRef;
use crate::status::{self, EventNote, Fetched, RefTarget};

/// DESIGN.md §5c: the first write for a hostname waits this long at most for
/// its first lookup; a slower answer updates the status when it lands.
const FIRST_LOOKUP_WAIT: Duration = Duration::from_secs(2);

/// Attempts per reconcile when other writers keep changing the object.
const CONFLICT_RETRIES: usize = 8;

/// Pulls keys once every watch has synced and while this replica leads.
pub async fn worker(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut ready = shared.synced.ready.subscribe();
    if ready.wait_for(|r| *r).await.is_err() {
        return;
    }
    let mut leader = shared.leader.clone();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            led = leader.wait_for(|l| *l) => if led.is_err() { return },
        }
        let key = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            key = shared.queue.pop() => key,
        };
        let started = Instant::now();
        let result = reconcile(&shared, &key).await;
        shared.metrics.reconciles.inc();
        shared.metrics.reconcile_seconds.observe(started.elapsed().as_secs_f64());
        shared.queue.done(&key);
        if let Err(e) = result {
            shared.metrics.reconcile_errors.inc();
            warn!(xbackend = %key, error = %e, "reconcile failed; retrying");
            let shared = shared.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                shared.queue.push(key);
            });
        }
    }
}

pub async fn reconcile(shared: &Arc<Shared>, key: &ObjectRef) -> Result<(), kube::Error> {
    for _ in 0..CONFLICT_RETRIES {
        let Some((targets, hostname)) = ({
            let index = shared.index();
            index.backend(key).map(|b| match &b.spec {
                Ok(spec) => (
                    status::refs_to_fetch(key, spec, &index),
                    status::hostname_to_resolve(spec, &shared.policy, &*index),
                ),
                Err(_) => (Vec::new(), None),
            })
        }) else {
            return Ok(()); // deleted
        };
        let mut fetched = fetch(shared, &targets).await?;
        if let (Some(dns), Some(hostname)) = (&shared.dns, hostname) {
            fetched.resolution = dns.resolution(shared, &hostname, FIRST_LOOKUP_WAIT).await;
        }
        let Some(stored) = shared.stored(key) else { return Ok(()) };
        let shape = shared.shape();
        let current = stored.status.get(shape.list_field()).and_then(Value::as_array).cloned().unwrap_or_default();
        let now = now_rfc3339();
        let inputs = Inputs {
            policy: &shared.policy,
            controller_name: &shared.controller_name,
            shape,
            current: &current,
            now: &now,
        };
        let Some(Judgement { ancestors, verdicts, merged, notes }) = judge(&shared.index(), key, &fetched, &inputs)
        else {
            return Ok(());
        };
        shared.set_accepted(key, Some((verdicts.accepted.status, verdicts.accepted.reason)));
        publish_events(shared, key, &stored, notes).await;

        if !merged.changed {
            return Ok(());
        }
        let written = merged.list.len();
        let list = if merged.list.is_empty() { Value::Null } else { Value::Array(merged.list) };
        let patch = json!({
            "metadata": {"resourceVersion": stored.resource_version},
            "status": {shape.list_field(): list},
        });
        let api = shared.xbackends(&key.namespace);
        match api.patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(obj) => {
                shared.metrics.status_writes.inc();
                debug!(xbackend = %key, ancestors = ancestors.len(), "status written");
                shared.update_stored(key.clone(), Stored::of(&obj));
                // Right after the CRD changes, the apiserver can still prune
                // with the old schema (a switch between `parents` and
                // `ancestors`): what did not stick is tried again shortly.
                let kept = obj.data["status"].get(shape.list_field()).and_then(Value::as_array).map_or(0, Vec::len);
                if kept != written {
                    info!(xbackend = %key, "the stored status lacks what was written (CRD schema changing?); retrying");
                    let (shared, key) = (shared.clone(), key.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        shared.queue.push(key);
                    });
                }
                return Ok(());
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                shared.metrics.status_conflicts.inc();
                refresh(shared, &api, key).await?;
            }
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    info!(xbackend = %key, "still conflicting after {CONFLICT_RETRIES} attempts; requeued");
    shared.queue.push(key.clone());
    Ok(())
}

/// Re-reads an XBackend after a conflict so the next attempt merges into the
/// other writer's version (and our view of its spec is current too).
async fn refresh(shared: &Shared, api: &Api<kube::api::DynamicObject>, key: &ObjectRef) -> Result<(), kube::Error> {
    let Some(obj) = api.get_opt(&key.name).await? else { return Ok(()) };
    let value = serde_json::to_value(&obj).unwrap_or(Value::Null);
    if let Ok((k, object @ Object::XBackend(_))) = crate::decode::decode(Kind::XBackend, &value) {
        shared.index().apply(k, object);
    }
    shared.update_stored(key.clone(), Stored::of(&obj));
    Ok(())
}

/// Reads the referenced Secrets and ConfigMaps (absent ones are left out).
async fn fetch(shared: &Shared, targets: &[RefTarget]) -> Result<Fetched, kube::Error> {
    let mut fetched = Fetched::default();
    for target in targets {
        match target {
            RefTarget::Secret(r) => {
                if let Some(s) = Api::<Secret>::namespaced(shared.client.clone(), &r.namespace).get_opt(&r.name).await?
                {
                    fetched.secrets.insert(r.clone(), s);
                }
            }
            RefTarget::ConfigMap(r) => {
                if let Some(c) =
                    Api::<ConfigMap>::namespaced(shared.client.clone(), &r.namespace).get_opt(&r.name).await?
                {
                    fetched.config_maps.insert(r.clone(), c);
                }
            }
        }
    }
    Ok(fetched)
}

/// Records Events when the set of notes for an XBackend changes, so a
/// resync or an unrelated change does not repeat them. Only the leader calls this.
async fn publish_events(shared: &Shared, key: &ObjectRef, stored: &Stored, notes: Vec<EventNote>) {
    {
        let mut emitted = shared.emitted.lock().expect("emitted lock");
        if emitted.get(key) == Some(&notes) {
            return;
        }
        emitted.insert(key.clone(), notes.clone());
    }
    let reference = ObjectReference {
        api_version: Some(format!("{}/{}", crate::api::GROUP, crate::api::VERSION)),
        kind: Some(crate::api::KIND.to_string()),
        namespace: Some(key.namespace.clone()),
        name: Some(key.name.clone()),
        uid: Some(stored.uid.clone()).filter(|u| !u.is_empty()),
        ..Default::default()
    };
    for note in notes {
        let event = Event {
            type_: if note.warning { EventType::Warning } else { EventType::Normal },
            reason: note.reason.to_string(),
            note: Some(truncate(&note.message, 1000)),
            action: if note.reason == reason::ACCEPTED { "Accept".into() } else { "Validate".into() },
            secondary: None,
        };
        if let Err(e) = shared.recorder.publish(&event, &reference).await {
            warn!(xbackend = %key, error = %e, "could not record Event");
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
