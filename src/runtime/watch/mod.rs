//! Watches, the only writers of the index (docs/design.md §11): one driver
//! (`run`) over a per-kind `Indexer` with apply / delete / reset, after
//! kubert's `IndexNamespacedResource`. The driver owns the watch, the re-list
//! bookkeeping and the queueing; an indexer only says what an object does to
//! the state. Adding a kind: an `Indexer` (a file here) and one `spawn` line
//! in runtime/mod.rs.

mod crd;
mod crds;
mod dns_service;
mod metadata;
mod objects;
mod references;
mod slices;

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::Arc;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tracing::{error, info, warn};

use super::metrics::Metrics;
use super::queue::{Lane, Queue};
use super::state::State;
use crate::model::ObjectRef;

pub use crd::{XBACKEND_CRD, XBackendCrd};
pub use crds::GatewayApiCrds;
pub use dns_service::DnsService;
pub use metadata::{LIVE_PODS, Metadata};
pub use objects::Objects;
pub use references::References;
pub use slices::HandSlices;

/// What every watch feeds.
#[derive(Clone)]
pub struct Feeds {
    pub client: Client,
    pub state: Arc<State>,
    pub queue: Arc<Queue>,
    pub metrics: Arc<Metrics>,
}

/// The XBackends an event may have changed the status of.
#[derive(Debug, PartialEq)]
pub enum Affected {
    Keys(BTreeSet<ObjectRef>),
    /// Every XBackend (a change that can alter any verdict, or a re-list
    /// that may have hidden one).
    Every,
}

impl Affected {
    pub fn none() -> Affected {
        Affected::Keys(BTreeSet::new())
    }
}

/// One watched kind: what its objects do to the state.
pub trait Indexer: Send + Sync + 'static {
    /// What each object decodes into (lean: see decode.rs).
    type Resource: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static;
    /// Whether `reset` needs the keys a (re-)list saw: false for kinds whose
    /// objects the state does not hold, so their keys cost no memory.
    const KEEPS_OBJECTS: bool = true;

    /// The kind's name in logs, metrics and readiness.
    fn name(&self) -> &'static str;
    fn api(&self, client: &Client) -> Api<Self::Resource>;
    fn config(&self) -> watcher::Config {
        config()
    }
    /// An added or changed object; Err(why) when it does not decode (logged
    /// and counted, never fatal).
    fn apply(&self, state: &State, key: ObjectRef, object: &Self::Resource) -> Result<Affected, String>;
    fn delete(&self, state: &State, key: &ObjectRef) -> Affected;
    /// A (re-)list ended: `seen` holds every key it applied (empty unless
    /// `KEEPS_OBJECTS`); anything else of this kind is gone. `relist` is
    /// false for the first list.
    fn reset(&self, state: &State, seen: &BTreeSet<ObjectRef>, relist: bool) -> Affected;
    /// Notified when the watch must list again from scratch (the objects did
    /// not change, but how the apiserver serves them did).
    fn relists(&self) -> Option<Arc<Notify>> {
        None
    }
}

/// Server-side timeout of every watch request: the watcher reconnects after
/// it, and treats a stream silent for 5 s longer as dead. A (re-)list holds
/// one page at a time, body and objects: 100 rather than kube's 500 keeps
/// that small when every watch lists at once (an apiserver restart).
pub fn config() -> watcher::Config {
    watcher::Config::default().timeout(super::timeouts::WATCH_TIMEOUT_SECS).page_size(LIST_PAGE)
}

/// Objects per list page.
const LIST_PAGE: u32 = 100;

/// Queues what an event affects; a (re-)list rechecks in the bulk lane, behind changes.
fn queue(feeds: &Feeds, affected: Affected, lane: Lane) {
    let keys = match affected {
        Affected::Keys(keys) if keys.is_empty() => return,
        Affected::Keys(keys) => keys.into_iter().collect(),
        Affected::Every => feeds.state.backend_keys(),
    };
    feeds.queue.extend_in(keys, lane);
}

/// Runs one indexer call with its panics caught: an object that trips a bug
/// is counted and skipped (`xbackend_panics_total{task}`), and the watch goes on.
fn contained<T>(feeds: &Feeds, name: &'static str, call: impl FnOnce() -> T) -> Option<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)) {
        Ok(done) => Some(done),
        Err(panic) => {
            feeds.metrics.panics.get_or_create(&super::metrics::TaskLabel::of(name)).inc();
            let panic = super::tasks::panic_message(&*panic);
            error!(kind = name, panic, "a watch event panicked; skipped");
            None
        }
    }
}

fn key_of<R: Resource>(object: &R) -> ObjectRef {
    ObjectRef::new(object.namespace().unwrap_or_default(), object.name_any())
}

/// Watches one kind until the process ends. A (re-)list is applied object by
/// object as it streams in, and what it did not see is deleted at its end. A
/// dead connection, half-open included, is noticed by the watcher's idle
/// timeout (`WATCH_TIMEOUT_SECS` + 5 s) and reconnected with backoff.
pub async fn run<I: Indexer>(feeds: Feeds, indexer: Arc<I>) {
    let name = indexer.name();
    let start = || watcher::watcher(indexer.api(&feeds.client), indexer.config()).default_backoff().boxed();
    let mut stream = start();
    let relists = indexer.relists();
    let mut seen: BTreeSet<ObjectRef> = BTreeSet::new();
    let mut lists = 0u32;
    loop {
        let event = tokio::select! {
            event = stream.next() => event,
            () = async { relists.as_ref().expect("relist signal").notified().await }, if relists.is_some() => {
                info!(kind = name, "listing again");
                stream = start();
                continue;
            }
        };
        let Some(event) = event else { break };
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                feeds.metrics.watch_errors.get_or_create(&Metrics::kind(name)).inc();
                warn!(kind = name, error = %e, "watch error; retrying");
                continue;
            }
        };
        feeds.metrics.watch_events.get_or_create(&Metrics::kind(name)).inc();
        match event {
            Event::Init => seen.clear(),
            Event::InitApply(object) => {
                let key = key_of(&object);
                if let Some(affected) = applied(&feeds, &*indexer, key.clone(), &object) {
                    queue(&feeds, affected, Lane::Bulk);
                    if I::KEEPS_OBJECTS {
                        seen.insert(key);
                    }
                }
            }
            Event::Apply(object) => {
                if let Some(affected) = applied(&feeds, &*indexer, key_of(&object), &object) {
                    queue(&feeds, affected, Lane::Change);
                }
            }
            Event::Delete(object) => {
                let key = key_of(&object);
                if let Some(affected) = contained(&feeds, name, || indexer.delete(&feeds.state, &key)) {
                    queue(&feeds, affected, Lane::Change);
                }
            }
            Event::InitDone => {
                lists += 1;
                let seen = std::mem::take(&mut seen);
                let affected = contained(&feeds, name, || indexer.reset(&feeds.state, &seen, lists > 1));
                let affected = affected.unwrap_or(Affected::Every);
                let lane = if affected == Affected::Every { Lane::Bulk } else { Lane::Change };
                queue(&feeds, affected, lane);
                feeds.state.synced.mark(name);
                info!(kind = name, "watch synced");
            }
        }
    }
}

/// Starts watches, each registered with the readiness gate before it runs
/// and supervised as a long-lived task.
pub struct Starter<'a> {
    pub feeds: &'a Feeds,
    pub tasks: &'a mut super::tasks::Tasks,
}

impl Starter<'_> {
    pub fn start<I: Indexer>(&mut self, indexer: I) {
        let name = indexer.name();
        self.feeds.state.synced.expect(name);
        let (feeds, indexer) = (self.feeds.clone(), Arc::new(indexer));
        self.tasks.spawn(name, move || run(feeds.clone(), indexer.clone()));
    }
}

fn applied<I: Indexer>(feeds: &Feeds, indexer: &I, key: ObjectRef, object: &I::Resource) -> Option<Affected> {
    match contained(feeds, indexer.name(), || indexer.apply(&feeds.state, key.clone(), object))? {
        Ok(affected) => Some(affected),
        Err(error) => {
            let name = indexer.name();
            feeds.metrics.decode_failures.get_or_create(&Metrics::kind(name)).inc();
            warn!(kind = name, namespace = %key.namespace, name = %key.name, error, "skipping object that does not decode");
            None
        }
    }
}
