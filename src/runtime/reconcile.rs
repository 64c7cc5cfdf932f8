//! Reconcile one XBackend in three steps (docs/design.md §11). Plan: snapshot
//! under the state lock, read what it references without the lock, `judge::plan`
//! (pure). Write: Events, and a status patch only when the stored status would
//! change, fenced by the Lease, with a resourceVersion precondition, under the
//! state's write guard. Settle: what the response means (written, gone, a
//! conflict to re-read and plan again, or a status the apiserver did not keep).
//! Every API call goes through `ClusterApi` with a timeout, so each path is
//! unit-tested against a fake.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Secret};
use kube::api::{Api, Patch, PatchParams};
use kube::discovery::ApiResource;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, ResourceExt};
use serde_json::Value;
use tracing::{Instrument, debug, info, info_span, warn};

use super::dns_check::DnsCheck;
use super::error::chain;
use super::leader::Leadership;
use super::metrics::{ErrorLabel, Metrics, WriterLabel};
use super::queue::{self, Queue};
use super::runner::{Finish, Work};
use super::state::State;
use super::timeouts::API_TIMEOUT;
use crate::conditions::reason;
use crate::decode::{Watched, decode_watched};
use crate::judge::{Snapshot, now_rfc3339, plan};
use crate::model::{Kind, Object};
use crate::model::{ObjectRef, StoredStatus};
use crate::policy::Policy;
use crate::refs::{Fetched, RefTarget};
use crate::status::EventNote;
use crate::verdict::hostname_to_resolve;

/// Attempts per reconcile when other writers keep changing the object; then
/// the key goes to the queue's backoff.
const CONFLICT_RETRIES: u32 = 5;
/// docs/design.md §5c: the first write for a hostname waits this long at most for
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
    /// True when the status write itself failed (not a read before it).
    pub fn is_write(&self) -> bool {
        match self {
            Error::Timeout { call } | Error::Api { call, .. } => *call == Call::PatchStatus,
            Error::Conflicts | Error::NotKept => true,
        }
    }

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

/// The few API calls a reconcile makes: the seam its unit tests fake.
pub trait ClusterApi: Send + Sync + 'static {
    fn read_secret(&self, r: &ObjectRef) -> impl Future<Output = kube::Result<Option<Secret>>> + Send;
    fn read_config_map(&self, r: &ObjectRef) -> impl Future<Output = kube::Result<Option<ConfigMap>>> + Send;
    fn read_xbackend(&self, key: &ObjectRef) -> impl Future<Output = kube::Result<Option<Watched>>> + Send;
    /// A merge patch of the XBackend's status subresource.
    fn patch_status(&self, key: &ObjectRef, patch: &Value) -> impl Future<Output = kube::Result<Watched>> + Send;
    fn publish(&self, event: &Event, reference: &ObjectReference) -> impl Future<Output = kube::Result<()>> + Send;
}

/// `ClusterApi` on the real apiserver.
pub struct Kube {
    pub client: Client,
    /// The served XBackend version (discovered at start).
    pub xbackend: ApiResource,
    pub recorder: Recorder,
}

impl Kube {
    // Responses decode like watch events: no managedFields or annotations built.
    fn xbackends(&self, namespace: &str) -> Api<Watched> {
        Api::namespaced_with(self.client.clone(), namespace, &self.xbackend)
    }
}

impl ClusterApi for Kube {
    async fn read_secret(&self, r: &ObjectRef) -> kube::Result<Option<Secret>> {
        Api::<Secret>::namespaced(self.client.clone(), &r.namespace).get_opt(&r.name).await
    }
    async fn read_config_map(&self, r: &ObjectRef) -> kube::Result<Option<ConfigMap>> {
        Api::<ConfigMap>::namespaced(self.client.clone(), &r.namespace).get_opt(&r.name).await
    }
    async fn read_xbackend(&self, key: &ObjectRef) -> kube::Result<Option<Watched>> {
        self.xbackends(&key.namespace).get_opt(&key.name).await
    }
    async fn patch_status(&self, key: &ObjectRef, patch: &Value) -> kube::Result<Watched> {
        self.xbackends(&key.namespace).patch_status(&key.name, &PatchParams::default(), &Patch::Merge(patch)).await
    }
    async fn publish(&self, event: &Event, reference: &ObjectReference) -> kube::Result<()> {
        self.recorder.publish(event, reference).await
    }
}

/// Everything a worker needs; fields are private to the runtime.
pub struct Reconciler<A> {
    pub(super) api: A,
    pub(super) policy: Policy,
    pub(super) controller_name: String,
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

impl<A: ClusterApi> Work for Reconciler<A> {
    type Key = ObjectRef;
    const TASK: &'static str = "reconcile";

    /// One reconcile, its metrics and its log line; fenced and failed ones retry.
    async fn run(&self, key: &ObjectRef) -> Finish {
        let started = Instant::now();
        let span = info_span!("reconcile", xbackend = %key);
        let result = reconcile(self, key).instrument(span).await;
        self.metrics.reconciles.inc();
        self.metrics.reconcile_seconds.observe(started.elapsed().as_secs_f64());
        match result {
            // Not an error: the Lease is not (yet) valid. A new leader's full
            // pass queues every key anyway.
            Ok(Outcome::Fenced) => Finish::Retry,
            Ok(outcome) => {
                debug!(xbackend = %key, ?outcome, "reconciled");
                Finish::Done
            }
            Err(e) => {
                self.metrics.reconcile_errors.inc();
                self.metrics.reconcile_failures.get_or_create(&ErrorLabel { error: e.label().into() }).inc();
                if e.is_write() {
                    self.metrics.write_failures.get_or_create(&WriterLabel::of("status")).inc();
                }
                warn!(xbackend = %key, error = %chain(&e), "reconcile failed; retrying after a backoff");
                Finish::Retry
            }
        }
    }
}

pub async fn reconcile<A: ClusterApi>(ctx: &Reconciler<A>, key: &ObjectRef) -> Result<Outcome, Error> {
    let Some(mut snapshot) = ctx.state.snapshot(key) else { return Ok(Outcome::Gone) };
    let mut fetched = fetch(&ctx.api, &snapshot.refs_to_fetch()).await?;
    let hostname =
        snapshot.backend.spec.as_ref().ok().and_then(|spec| hostname_to_resolve(spec, &ctx.policy, &snapshot));
    if let (Some(dns), Some(hostname)) = (&ctx.dns, hostname) {
        fetched.resolution = dns.resolution(&hostname, FIRST_LOOKUP_WAIT).await;
    }
    for attempt in 1..=CONFLICT_RETRIES {
        // Plan.
        let plan = plan(&snapshot, &fetched, &ctx.policy, &ctx.controller_name, &now_rfc3339());
        if (plan.patch.is_some() || !plan.events.is_empty()) && !ctx.leadership.may_write() {
            return Ok(fenced(ctx));
        }
        let uid = snapshot.backend.uid.clone();
        let events = ctx.state.report(key, &uid, &plan.verdicts.accepted, plan.events, plan.uses);
        publish_events(ctx, key, &uid, events).await;
        let Some(patch) = plan.patch else { return Ok(Outcome::Unchanged) };
        // Write.
        let Some(response) = write(ctx, key, &uid, &patch).await else { return Ok(fenced(ctx)) };
        // Settle.
        match settle(ctx, response, &patch, &snapshot)? {
            Settled::Done(outcome) => return Ok(outcome),
            Settled::Conflict => {
                ctx.metrics.status_conflicts.inc();
                tokio::time::sleep(queue::backoff(attempt, Duration::from_millis(50), Duration::from_secs(2))).await;
                // The same generation has the same spec, so the same
                // references: what was fetched still holds.
                snapshot = match reread(ctx, key, &snapshot).await? {
                    Ok(newer) => newer,
                    Err(outcome) => return Ok(outcome),
                };
            }
        }
    }
    Err(Error::Conflicts)
}

/// The status patch under the state's write guard (events that arrive while it
/// is in flight are held until its response). None when the Lease forbids it.
async fn write<A: ClusterApi>(
    ctx: &Reconciler<A>,
    key: &ObjectRef,
    uid: &str,
    patch: &Value,
) -> Option<Result<Watched, Error>> {
    // The fence: a replica that lost the Lease, or whose renewal is overdue,
    // must not write, even mid-reconcile.
    if !ctx.leadership.may_write() {
        return None;
    }
    let write = ctx.state.begin_write(&ctx.queue, key, uid);
    let response = bounded(Call::PatchStatus, ctx.api.patch_status(key, patch)).await;
    match &response {
        Ok(obj) => write.wrote(obj.resource_version().unwrap_or_default()),
        Err(_) => write.failed(),
    }
    Some(response)
}

/// What a status patch's response means.
enum Settled {
    Done(Outcome),
    /// 409: someone wrote since the snapshot; re-read and plan again.
    Conflict,
}

fn settle<A>(
    ctx: &Reconciler<A>,
    response: Result<Watched, Error>,
    patch: &Value,
    snapshot: &Snapshot,
) -> Result<Settled, Error> {
    match response {
        Ok(obj) => {
            ctx.metrics.status_writes.inc();
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
            debug!("status written");
            Ok(Settled::Done(Outcome::Written))
        }
        Err(e) if is_status(&e, 404) => Ok(Settled::Done(Outcome::Gone)),
        Err(e) if is_status(&e, 409) => Ok(Settled::Conflict),
        Err(e) => Err(e),
    }
}

/// After a conflict: the snapshot with the stored object's version, or how the
/// reconcile ends. Reads without touching the index (the watches own it).
async fn reread<A: ClusterApi>(
    ctx: &Reconciler<A>,
    key: &ObjectRef,
    snapshot: &Snapshot,
) -> Result<Result<Snapshot, Outcome>, Error> {
    let Some(obj) = bounded(Call::ReadXBackend, ctx.api.read_xbackend(key)).await? else {
        return Ok(Err(Outcome::Gone));
    };
    let Ok((_, Object::XBackend(backend))) = decode_watched(Kind::XBackend, &obj) else {
        return Ok(Err(Outcome::Superseded));
    };
    if backend.generation != snapshot.backend.generation || backend.uid != snapshot.backend.uid {
        // A new spec can need other references and grants than the
        // snapshot holds: let its watch event queue it again.
        info!("the spec changed during the reconcile; waiting for the watch to bring it");
        return Ok(Err(Outcome::Superseded));
    }
    Ok(Ok(snapshot.with_backend(backend)))
}

fn fenced<A>(ctx: &Reconciler<A>) -> Outcome {
    ctx.metrics.status_writes_fenced.inc();
    info!("not writing: this replica does not hold a valid leader Lease");
    Outcome::Fenced
}

/// Reads the referenced Secrets and ConfigMaps (absent ones are left out).
async fn fetch<A: ClusterApi>(api: &A, targets: &[RefTarget]) -> Result<Fetched, Error> {
    let mut fetched = Fetched::default();
    for target in targets {
        match target {
            RefTarget::Secret(r) => {
                if let Some(s) = bounded(Call::ReadSecret, api.read_secret(r)).await? {
                    fetched.secrets.insert(r.clone(), s);
                }
            }
            RefTarget::ConfigMap(r) => {
                if let Some(c) = bounded(Call::ReadConfigMap, api.read_config_map(r)).await? {
                    fetched.config_maps.insert(r.clone(), c);
                }
            }
        }
    }
    Ok(fetched)
}

/// Records Events (each bounded by `API_TIMEOUT`); a failure is logged, not retried.
async fn publish_events<A: ClusterApi>(ctx: &Reconciler<A>, key: &ObjectRef, uid: &str, notes: Vec<EventNote>) {
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
        match tokio::time::timeout(API_TIMEOUT, ctx.api.publish(&event, &reference)).await {
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use serde_json::json;

    use super::*;
    use crate::model::RouteKind;
    use crate::runtime::metrics::TaskLabel;
    use crate::runtime::runner::Runner;
    use crate::runtime::state::Synced;

    const OURS: &str = "example.com/ours";

    /// What the fake apiserver answers to a status patch.
    enum Reply {
        /// Stored: the new resourceVersion and what the stored status keeps
        /// of the patch (true: all of it).
        Stored(&'static str, bool),
        Status(u16),
    }

    /// A fake `ClusterApi`: scripted patch replies, a scripted re-read, and
    /// a hook that runs while a patch is in flight.
    #[derive(Default)]
    struct Fake {
        replies: Mutex<VecDeque<Reply>>,
        patches: Mutex<Vec<Value>>,
        reread: Mutex<Option<Value>>,
        during_patch: Mutex<Option<Box<dyn FnOnce() + Send>>>,
        during_publish: Mutex<Option<Box<dyn FnOnce() + Send>>>,
        /// A status patch of this XBackend panics (a bug to contain).
        panic_for: Mutex<Option<ObjectRef>>,
    }

    fn watched(object: Value) -> Watched {
        serde_json::from_str(&object.to_string()).expect("a watched object")
    }

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(kube::core::Status { code, ..Default::default() }.boxed())
    }

    impl ClusterApi for Fake {
        async fn read_secret(&self, _: &ObjectRef) -> kube::Result<Option<Secret>> {
            Ok(None)
        }
        async fn read_config_map(&self, _: &ObjectRef) -> kube::Result<Option<ConfigMap>> {
            Ok(None)
        }
        async fn read_xbackend(&self, _: &ObjectRef) -> kube::Result<Option<Watched>> {
            Ok(self.reread.lock().unwrap().clone().map(watched))
        }
        async fn patch_status(&self, key: &ObjectRef, patch: &Value) -> kube::Result<Watched> {
            self.patches.lock().unwrap().push(patch.clone());
            if self.panic_for.lock().unwrap().as_ref() == Some(key) {
                panic!("a bug in writing {key}");
            }
            if let Some(hook) = self.during_patch.lock().unwrap().take() {
                hook();
            }
            match self.replies.lock().unwrap().pop_front().expect("a scripted reply") {
                Reply::Stored(version, kept) => {
                    let status = if kept { patch["status"].clone() } else { json!({}) };
                    Ok(watched(json!({"metadata": {"resourceVersion": version}, "status": status})))
                }
                Reply::Status(code) => Err(api_error(code)),
            }
        }
        async fn publish(&self, _: &Event, _: &ObjectReference) -> kube::Result<()> {
            if let Some(hook) = self.during_publish.lock().unwrap().take() {
                hook();
            }
            Ok(())
        }
    }

    fn xbackend(generation: i64, version: &str) -> Value {
        json!({
            "metadata": {"namespace": "app", "name": "b", "uid": "u", "generation": generation, "resourceVersion": version},
            "spec": {"type": "ExternalHostname", "port": {"number": 443}, "externalHostname": {"hostname": "api.example.com"}},
        })
    }

    fn apply(state: &State, kind: Kind, object: Value) -> std::collections::BTreeSet<ObjectRef> {
        let (key, object) = decode_watched(kind, &watched(object)).expect("decodes");
        state.apply(key, object)
    }

    fn key() -> ObjectRef {
        ObjectRef::new("app", "b")
    }

    /// A reconciler over the fake with one XBackend behind one of our Gateways.
    fn reconciler(fake: Fake, leadership: Leadership) -> Reconciler<Fake> {
        let metrics = Arc::new(Metrics::default());
        let state = Arc::new(State::new(crate::index::Index::new(OURS), metrics.clone(), Synced::new([])));
        let class = json!({"metadata": {"name": "ours"}, "spec": {"controllerName": OURS}});
        apply(&state, Kind::GatewayClass, class);
        let gateway = json!({"metadata": {"namespace": "app", "name": "gw"}, "spec": {"gatewayClassName": "ours"}});
        apply(&state, Kind::Gateway, gateway);
        let route = json!({
            "metadata": {"namespace": "app", "name": "r"},
            "spec": {
                "parentRefs": [{"name": "gw"}],
                "rules": [{"backendRefs": [
                    {"group": "gateway.networking.x-k8s.io", "kind": "XBackend", "name": "b"},
                    {"group": "gateway.networking.x-k8s.io", "kind": "XBackend", "name": "c"},
                ]}],
            },
        });
        apply(&state, Kind::Route(RouteKind::Http), route);
        apply(&state, Kind::XBackend, xbackend(1, "10"));
        Reconciler {
            api: fake,
            policy: Policy::default(),
            controller_name: OURS.into(),
            state,
            queue: Arc::new(Queue::default()),
            metrics,
            leadership,
            dns: None,
        }
    }

    fn replies(replies: impl IntoIterator<Item = Reply>) -> Fake {
        Fake { replies: Mutex::new(replies.into_iter().collect()), ..Fake::default() }
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_lands_once_and_a_second_reconcile_has_nothing_to_do() {
        let ctx = reconciler(replies([Reply::Stored("11", true)]), Leadership::always());
        assert_eq!(reconcile(&ctx, &key()).await.unwrap(), Outcome::Written);
        let patches = ctx.api.patches.lock().unwrap().clone();
        assert_eq!(patches.len(), 1);
        assert_eq!(patches[0]["metadata"]["resourceVersion"], "10", "the snapshot's version is the precondition");
        assert_eq!(patches[0]["status"]["ancestors"][0]["ancestorRef"]["name"], "gw");
        // The echo brings our status; it queues nothing and the next pass writes nothing.
        let mut echo = xbackend(1, "11");
        echo["status"] = patches[0]["status"].clone();
        assert!(apply(&ctx.state, Kind::XBackend, echo).is_empty(), "our echo is no news");
        assert_eq!(reconcile(&ctx, &key()).await.unwrap(), Outcome::Unchanged);
        assert_eq!(ctx.api.patches.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn leadership_lost_before_the_write_fences_it() {
        // Lost before the reconcile: nothing is sent, not even Events.
        let (leadership, leading) = Leadership::switchable(true);
        let ctx = reconciler(replies([]), leadership);
        leading.send_replace(false);
        assert_eq!(reconcile(&ctx, &key()).await.unwrap(), Outcome::Fenced);
        assert!(ctx.api.patches.lock().unwrap().is_empty(), "no patch sent");
        assert_eq!(ctx.metrics.status_writes_fenced.get(), 1);

        // Lost mid-reconcile, while its Events were being recorded: the
        // patch is still fenced.
        let (leadership, leading) = Leadership::switchable(true);
        let fake = replies([Reply::Stored("11", true)]);
        *fake.during_publish.lock().unwrap() = Some(Box::new(move || {
            leading.send_replace(false);
        }));
        let ctx = reconciler(fake, leadership);
        assert_eq!(reconcile(&ctx, &key()).await.unwrap(), Outcome::Fenced);
        assert!(ctx.api.patches.lock().unwrap().is_empty(), "the fence is checked right before the patch");
        assert_eq!(ctx.metrics.status_writes_fenced.get(), 1);
        // The runner treats it as a retry, not a success.
        assert_eq!(Work::run(&ctx, &key()).await, Finish::Retry, "retried after a backoff");
    }

    #[tokio::test(start_paused = true)]
    async fn a_404_on_write_means_the_xbackend_is_gone() {
        let ctx = reconciler(replies([Reply::Status(404)]), Leadership::always());
        assert_eq!(reconcile(&ctx, &key()).await.unwrap(), Outcome::Gone);
        assert_eq!(ctx.metrics.status_writes.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_409_rereads_plans_again_from_the_stored_version_and_writes() {
        let fake = replies([Reply::Status(409), Reply::Stored("13", true)]);
        // Someone else added their entry meanwhile: the second patch keeps it.
        let mut stored = xbackend(1, "12");
        let theirs =
            json!({"ancestorRef": {"name": "other"}, "controllerName": "example.com/theirs", "conditions": []});
        stored["status"] = json!({"ancestors": [theirs]});
        *fake.reread.lock().unwrap() = Some(stored);
        let ctx = reconciler(fake, Leadership::always());
        assert_eq!(reconcile(&ctx, &key()).await.unwrap(), Outcome::Written);
        let patches = ctx.api.patches.lock().unwrap().clone();
        assert_eq!(patches.len(), 2);
        assert_eq!(patches[1]["metadata"]["resourceVersion"], "12", "planned from the re-read version");
        let names: Vec<&Value> =
            patches[1]["status"]["ancestors"].as_array().unwrap().iter().map(|a| &a["ancestorRef"]["name"]).collect();
        assert_eq!(names, [&json!("other"), &json!("gw")], "their entry kept, in place");
        assert_eq!(ctx.metrics.status_conflicts.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_409_with_a_newer_spec_is_superseded_by_its_watch_event() {
        let fake = replies([Reply::Status(409)]);
        *fake.reread.lock().unwrap() = Some(xbackend(2, "12"));
        let ctx = reconciler(fake, Leadership::always());
        assert_eq!(reconcile(&ctx, &key()).await.unwrap(), Outcome::Superseded);
        assert_eq!(ctx.api.patches.lock().unwrap().len(), 1, "no second patch from the old spec");
    }

    #[tokio::test(start_paused = true)]
    async fn a_status_the_apiserver_did_not_keep_is_an_error_and_retried() {
        let ctx = reconciler(replies([Reply::Stored("11", false)]), Leadership::always());
        assert!(matches!(reconcile(&ctx, &key()).await, Err(Error::NotKept)));
        let ctx = Reconciler { api: replies([Reply::Stored("11", false)]), ..ctx };
        assert_eq!(Work::run(&ctx, &key()).await, Finish::Retry, "the key waits for a backoff");
        let label = ErrorLabel { error: "not_kept".into() };
        assert_eq!(ctx.metrics.reconcile_failures.get_or_create(&label).get(), 1);
        assert_eq!(ctx.metrics.write_failures.get_or_create(&WriterLabel::of("status")).get(), 1);
    }

    /// A reconcile that panics (here: inside the status patch, for one
    /// XBackend only) is contained: the panic is counted, the key comes back
    /// after a backoff and reconciles once the cause is gone, the other key
    /// is never held up, and no task ends, so the controller stays ready.
    #[tokio::test(start_paused = true)]
    async fn a_panic_is_caught_counted_and_retried_while_other_keys_go_on() {
        let fake = replies([Reply::Stored("21", true), Reply::Stored("11", true)]);
        *fake.panic_for.lock().unwrap() = Some(key());
        let ctx = reconciler(fake, Leadership::always());
        let other = ObjectRef::new("app", "c");
        apply(
            &ctx.state,
            Kind::XBackend,
            json!({"metadata": {"namespace": "app", "name": "c", "uid": "uc", "generation": 1, "resourceVersion": "20"}, "spec": {"type": "ExternalHostname", "port": {"number": 443}, "externalHostname": {"hostname": "c.example.com"}}}),
        );
        let (metrics, queue) = (ctx.metrics.clone(), ctx.queue.clone());
        let (_, ready) = tokio::sync::watch::channel(true);
        let runner = Arc::new(Runner {
            work: ctx,
            queue: queue.clone(),
            leadership: Leadership::always(),
            ready,
            metrics: metrics.clone(),
        });
        let mut tasks = crate::runtime::tasks::Tasks::new(metrics.clone());
        let health = tasks.health.clone();
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        runner.spawn(1, &mut tasks, &stop);
        tokio::spawn(async move { tasks.supervise().await });

        queue.extend([key(), other.clone()]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let panics = || metrics.panics.get_or_create(&TaskLabel::of("reconcile")).get();
        assert_eq!(panics(), 1, "counted");
        let patched = |name: &str| {
            let patches = runner.work.api.patches.lock().unwrap().clone();
            patches.iter().filter(|p| p["metadata"]["resourceVersion"] == if name == "b" { "10" } else { "20" }).count()
        };
        assert_eq!(patched("c"), 1, "the other key was not held up");
        assert_eq!(queue.retrying(), 1, "the panicking key waits for its backoff");
        assert!(health.down().is_empty(), "the worker lives on: still ready");

        // The cause goes away; the same key reconciles after its backoff.
        *runner.work.api.panic_for.lock().unwrap() = None;
        tokio::time::sleep(queue::BACKOFF_BASE).await;
        assert_eq!(patched("b"), 2, "the second attempt wrote");
        assert_eq!((queue.retrying(), queue.running(), panics()), (0, 0, 1));
        assert!(health.down().is_empty());
    }

    /// An event that arrives while the patch is in flight: held, then
    /// dropped when it is our echo, queued when it is someone else's.
    async fn held_during_the_patch(event_version: &'static str) -> usize {
        let fake = replies([Reply::Stored("11", true)]);
        let ctx = reconciler(fake, Leadership::always());
        let (state, echo) = (ctx.state.clone(), xbackend(1, event_version));
        let queued_during = Arc::new(Mutex::new(None));
        let seen = queued_during.clone();
        *ctx.api.during_patch.lock().unwrap() = Some(Box::new(move || {
            *seen.lock().unwrap() = Some(apply(&state, Kind::XBackend, echo).len());
        }));
        assert_eq!(reconcile(&ctx, &key()).await.unwrap(), Outcome::Written);
        assert_eq!(*queued_during.lock().unwrap(), Some(0), "held while the patch was in flight");
        ctx.queue.depths().0
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_event_is_released_after_the_response() {
        assert_eq!(held_during_the_patch("11").await, 0, "our echo is dropped");
        assert_eq!(held_during_the_patch("12").await, 1, "a foreign write queues the XBackend again");
    }
}
