//! Reconcile one XBackend: snapshot under the state lock, read what it
//! references without the lock, `plan` (pure), then apply the plan: Events,
//! and a status patch only when the stored status would change, with a
//! resourceVersion precondition, the Lease checked right before it, and a
//! timeout on every API call.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Secret};
use kube::api::{Api, Patch, PatchParams};
use kube::discovery::ApiResource;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tracing::{Instrument, debug, info, info_span, warn};

use super::dns_check::DnsCheck;
use super::leader::Leadership;
use super::metrics::{ErrorLabel, Metrics};
use super::queue::{self, Queue};
use super::state::State;
use super::timeouts::API_TIMEOUT;
use crate::conditions::reason;
use crate::decode::{Watched, decode_watched};
use crate::index::{Kind, Object};
use crate::judge::{now_rfc3339, plan};
use crate::model::{ObjectRef, StoredStatus};
use crate::policy::Policy;
use crate::refs::{Fetched, RefTarget, hostname_to_resolve};
use crate::status::EventNote;

/// Attempts per reconcile when other writers keep changing the object; then
/// the key goes to the queue's backoff.
const CONFLICT_RETRIES: u32 = 5;
/// DESIGN.md §5c: the first write for a hostname waits this long at most for
/// its first lookup; a slower answer updates the status when it lands.
const FIRST_LOOKUP_WAIT: Duration = Duration::from_secs(2);

/// The API calls of a reconcile, as errors and logs name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    ReadSecret,
    ReadConfigMap,
    ReadXBackend,
    PatchStatus,
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Call::ReadSecret => "reading a referenced Secret",
            Call::ReadConfigMap => "reading a referenced ConfigMap",
            Call::ReadXBackend => "re-reading the XBackend after a conflict",
            Call::PatchStatus => "patching the XBackend status",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{call} timed out after {secs}s", secs = API_TIMEOUT.as_secs())]
    Timeout { call: Call },
    #[error("{call} failed")]
    Api {
        call: Call,
        #[source]
        source: kube::Error,
    },
    #[error("the status patch still conflicted after {CONFLICT_RETRIES} attempts")]
    Conflicts,
    #[error("the apiserver stored less of the status than was written (its CRD schema was still changing)")]
    NotKept,
}

impl Error {
    /// The `error` label of `xbackend_reconcile_failures_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Timeout { .. } => "timeout",
            Error::Api { .. } => "api",
            Error::Conflicts => "conflict",
            Error::NotKept => "not_kept",
        }
    }
}

/// How a reconcile ended, for logs and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Gone,
    Unchanged,
    Written,
    /// A write was due but the Lease did not allow it.
    Fenced,
    /// A conflict showed a newer spec; its watch event queues the key again.
    Superseded,
}

/// Everything a worker needs; fields are private to the runtime.
pub struct Reconciler {
    pub(super) client: Client,
    pub(super) policy: Policy,
    pub(super) controller_name: String,
    pub(super) xbackend: ApiResource,
    pub(super) recorder: Recorder,
    pub(super) state: Arc<State>,
    pub(super) queue: Arc<Queue>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) leadership: Leadership,
    /// The resolved-address check (None with --no-dns-check).
    pub(super) dns: Option<Arc<DnsCheck>>,
}

/// Runs `call` with `API_TIMEOUT`.
async fn bounded<T>(call: Call, f: impl Future<Output = Result<T, kube::Error>>) -> Result<T, Error> {
    match tokio::time::timeout(API_TIMEOUT, f).await {
        Ok(result) => result.map_err(|source| Error::Api { call, source }),
        Err(_) => Err(Error::Timeout { call }),
    }
}

fn is_status(e: &Error, code: u16) -> bool {
    matches!(e, Error::Api { source: kube::Error::Api(s), .. } if s.code == code)
}

/// Pulls keys once every watch has synced and while this replica leads.
pub async fn worker(ctx: Arc<Reconciler>, mut stop: watch::Receiver<bool>) {
    let mut ready = ctx.state.synced.subscribe();
    if ready.wait_for(|r| *r).await.is_err() {
        return;
    }
    let mut leading = ctx.leadership.changes();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            led = leading.wait_for(|l| *l) => if led.is_err() { return },
        }
        let key = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            key = ctx.queue.pop() => key,
        };
        let started = Instant::now();
        let span = info_span!("reconcile", xbackend = %key);
        let result = reconcile(&ctx, &key).instrument(span).await;
        ctx.metrics.reconciles.inc();
        ctx.metrics.reconcile_seconds.observe(started.elapsed().as_secs_f64());
        match result {
            Ok(Outcome::Fenced) => {
                // Not an error: the Lease is not (yet) valid. Try again later;
                // a new leader's full pass queues every key anyway.
                let retry_in = ctx.queue.failed(&key);
                debug!(xbackend = %key, ?retry_in, "fenced; retrying");
            }
            Ok(outcome) => {
                debug!(xbackend = %key, ?outcome, "reconciled");
                ctx.queue.done(&key);
            }
            Err(e) => {
                ctx.metrics.reconcile_errors.inc();
                ctx.metrics.reconcile_failures.get_or_create(&ErrorLabel { error: e.label().into() }).inc();
                let retry_in = ctx.queue.failed(&key);
                warn!(xbackend = %key, error = %super::error::chain(&e), ?retry_in, "reconcile failed; retrying");
            }
        }
    }
}

pub async fn reconcile(ctx: &Reconciler, key: &ObjectRef) -> Result<Outcome, Error> {
    let Some(mut snapshot) = ctx.state.snapshot(key) else { return Ok(Outcome::Gone) };
    let mut targets = snapshot.refs_to_fetch();
    let mut fetched = fetch(&ctx.client, &targets).await?;
    let hostname =
        snapshot.backend.spec.as_ref().ok().and_then(|spec| hostname_to_resolve(spec, &ctx.policy, &snapshot));
    if let (Some(dns), Some(hostname)) = (&ctx.dns, hostname) {
        fetched.resolution = dns.resolution(&hostname, FIRST_LOOKUP_WAIT).await;
    }
    // Responses decode like watch events: no managedFields or annotations built.
    let api: Api<Watched> = Api::namespaced_with(ctx.client.clone(), &key.namespace, &ctx.xbackend);
    for attempt in 1..=CONFLICT_RETRIES {
        let plan = plan(&snapshot, &fetched, &ctx.policy, &ctx.controller_name, &now_rfc3339());
        if (plan.patch.is_some() || !plan.events.is_empty()) && !ctx.leadership.may_write() {
            return Ok(fenced(ctx));
        }
        let uid = snapshot.backend.uid.clone();
        let events = ctx.state.report(key, &uid, &plan.verdicts.accepted, plan.events);
        publish_events(ctx, key, &uid, events).await;
        let Some(patch) = plan.patch else { return Ok(Outcome::Unchanged) };
        // The fence: a replica that lost the Lease, or whose renewal is
        // overdue, must not write, even mid-reconcile.
        if !ctx.leadership.may_write() {
            return Ok(fenced(ctx));
        }
        ctx.state.writing(key, &uid);
        let result =
            bounded(Call::PatchStatus, api.patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch)))
                .await;
        let held = match &result {
            Ok(obj) => ctx.state.wrote(key, &uid, obj.resource_version().unwrap_or_default()),
            Err(_) => ctx.state.write_failed(key, &uid),
        };
        if held {
            // Runs again once this reconcile ends (never twice at once).
            ctx.queue.push(key.clone());
        }
        match result {
            Ok(obj) => {
                ctx.metrics.status_writes.inc();
                debug!(ancestors = plan.ancestors, "status written");
                // Right after the CRD changes, the apiserver can still prune
                // with the old schema (a switch between `parents` and
                // `ancestors`): a write that did not stick is tried again.
                let field = snapshot.shape.list_field();
                let wanted = patch["status"][field].as_array().map_or(0, Vec::len);
                let stored = obj.status.as_deref().map(|s| StoredStatus::from_json(s.get())).unwrap_or_default();
                let kept = stored.list(field).map_or(0, |list| list.len());
                if kept != wanted {
                    info!("the stored status lacks what was written (CRD schema changing?); retrying");
                    return Err(Error::NotKept);
                }
                return Ok(Outcome::Written);
            }
            Err(e) if is_status(&e, 404) => return Ok(Outcome::Gone),
            Err(e) if is_status(&e, 409) => {
                ctx.metrics.status_conflicts.inc();
                tokio::time::sleep(queue::backoff(attempt, Duration::from_millis(50), Duration::from_secs(2))).await;
                // Re-read without touching the index (the watches own it).
                let Some(obj) = bounded(Call::ReadXBackend, api.get_opt(&key.name)).await? else {
                    return Ok(Outcome::Gone);
                };
                let Ok((_, Object::XBackend(backend))) = decode_watched(Kind::XBackend, &obj) else {
                    return Ok(Outcome::Superseded);
                };
                if backend.generation != snapshot.backend.generation || backend.uid != snapshot.backend.uid {
                    // A new spec can need other references and grants than
                    // the snapshot holds: let its watch event queue it again.
                    info!("the spec changed during the reconcile; waiting for the watch to bring it");
                    return Ok(Outcome::Superseded);
                }
                snapshot = snapshot.with_backend(backend);
                let again = snapshot.refs_to_fetch();
                if again != targets {
                    fetched = fetch(&ctx.client, &again).await?;
                    targets = again;
                }
            }
            Err(e) => return Err(e),
        }
    }
    Err(Error::Conflicts)
}

fn fenced(ctx: &Reconciler) -> Outcome {
    ctx.metrics.status_writes_fenced.inc();
    info!("not writing: this replica does not hold a valid leader Lease");
    Outcome::Fenced
}

/// Reads the referenced Secrets and ConfigMaps (absent ones are left out).
async fn fetch(client: &Client, targets: &[RefTarget]) -> Result<Fetched, Error> {
    let mut fetched = Fetched::default();
    for target in targets {
        match target {
            RefTarget::Secret(r) => {
                let api = Api::<Secret>::namespaced(client.clone(), &r.namespace);
                if let Some(s) = bounded(Call::ReadSecret, api.get_opt(&r.name)).await? {
                    fetched.secrets.insert(r.clone(), s);
                }
            }
            RefTarget::ConfigMap(r) => {
                let api = Api::<ConfigMap>::namespaced(client.clone(), &r.namespace);
                if let Some(c) = bounded(Call::ReadConfigMap, api.get_opt(&r.name)).await? {
                    fetched.config_maps.insert(r.clone(), c);
                }
            }
        }
    }
    Ok(fetched)
}

/// Records Events (each bounded by `API_TIMEOUT`); a failure is logged, not retried.
async fn publish_events(ctx: &Reconciler, key: &ObjectRef, uid: &str, notes: Vec<EventNote>) {
    if notes.is_empty() {
        return;
    }
    let reference = ObjectReference {
        api_version: Some(format!("{}/{}", crate::api::GROUP, crate::api::VERSION)),
        kind: Some(crate::api::KIND.to_string()),
        namespace: Some(key.namespace.to_string()),
        name: Some(key.name.to_string()),
        uid: Some(uid.to_string()).filter(|u| !u.is_empty()),
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
        match tokio::time::timeout(API_TIMEOUT, ctx.recorder.publish(&event, &reference)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "could not record Event"),
            Err(_) => warn!("recording an Event timed out"),
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
