//! Writes the status of our own GatewayClasses (docs/design.md §6) on the
//! runner, keyed by class: a watch of GatewayClasses (few objects) keeps
//! ours and queues each one that changes; the work patches one class while
//! this replica may write, bounded by `API_TIMEOUT`. It writes nothing else,
//! and nothing else writes them.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};

use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::discovery::ApiResource;
use serde_json::Value;
use tracing::info;

use super::leader::Leadership;
use super::metrics::Metrics;
use super::queue::Queue;
use super::runner::{Finish, Work, bounded_write};
use super::state::State;
use super::watch::{Affected, Indexer};
use crate::decode::Watched;
use crate::gatewayclass::{Class, patch};
use crate::judge::now_rfc3339;
use crate::model::ObjectRef;

/// Our GatewayClasses as last seen, and the queue of those that may need a write.
pub struct Classes {
    controller_name: String,
    seen: Mutex<BTreeMap<String, Class>>,
    pub queue: Arc<Queue>,
}

impl Classes {
    pub fn new(controller_name: &str) -> Arc<Classes> {
        Arc::new(Classes {
            controller_name: controller_name.to_string(),
            seen: Mutex::default(),
            queue: Arc::default(),
        })
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Class>> {
        self.seen.lock().expect("classes lock")
    }

    /// Queues every class we hold (a new leader, a re-list).
    pub fn queue_all(&self) {
        let keys: Vec<ObjectRef> = self.seen().keys().map(|name| ObjectRef::new("", name)).collect();
        self.queue.extend(keys);
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
        let ours = class.controller_name == self.classes.controller_name;
        let mut seen = self.classes.seen();
        if ours {
            seen.insert(key.name.to_string(), class);
            drop(seen);
            self.classes.queue.push(key);
        } else {
            seen.remove(&*key.name);
        }
        Ok(Affected::none())
    }
    fn delete(&self, _: &State, key: &ObjectRef) -> Affected {
        self.classes.seen().remove(&*key.name);
        Affected::none()
    }
    fn reset(&self, _: &State, seen: &BTreeSet<ObjectRef>, _: bool) -> Affected {
        let names: BTreeSet<&str> = seen.iter().map(|k| &*k.name).collect();
        self.classes.seen().retain(|name, _| names.contains(name.as_str()));
        self.classes.queue_all();
        Affected::none()
    }
}

/// The one API call of the class writer: the seam its unit tests fake.
pub trait ClassApi: Send + Sync + 'static {
    /// A merge patch of a GatewayClass's status subresource.
    fn patch_status(&self, name: &str, patch: &Value) -> impl Future<Output = kube::Result<()>> + Send;
}

/// `ClassApi` on the real apiserver.
pub struct KubeClasses(pub Api<Watched>);

impl KubeClasses {
    pub fn new(client: Client, resource: &ApiResource) -> KubeClasses {
        KubeClasses(Api::all_with(client, resource))
    }
}

impl ClassApi for KubeClasses {
    async fn patch_status(&self, name: &str, patch: &Value) -> kube::Result<()> {
        self.0.patch_status(name, &PatchParams::default(), &Patch::Merge(patch)).await.map(|_| ())
    }
}

/// Patches one class that needs it.
pub struct ClassWriter<A> {
    pub classes: Arc<Classes>,
    pub api: A,
    pub leadership: Leadership,
    pub metrics: Arc<Metrics>,
}

impl<A: ClassApi> Work for ClassWriter<A> {
    type Key = ObjectRef;
    const TASK: &'static str = "gatewayclass";

    async fn run(&self, key: &ObjectRef) -> Finish {
        let class = self.classes.seen().get(&*key.name).cloned();
        // Gone, not ours any more, or already Accepted at its generation.
        let Some(body) = class.and_then(|class| patch(&class, &self.classes.controller_name, &now_rfc3339())) else {
            return Finish::Done;
        };
        if !self.leadership.may_write() {
            return Finish::Retry;
        }
        let call = self.api.patch_status(&key.name, &body);
        match bounded_write(&self.metrics, "gatewayclass", &key.name, call).await {
            Some(wrote) => {
                if wrote {
                    self.metrics.class_status_writes.inc();
                    info!(gatewayclass = %key, "GatewayClass accepted");
                }
                Finish::Done
            }
            None => Finish::Retry,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::index::Index;
    use crate::runtime::metrics::WriterLabel;
    use crate::runtime::queue::BACKOFF_BASE;
    use crate::runtime::runner::Runner;
    use crate::runtime::state::Synced;

    const OURS: &str = "example.com/ours";

    /// Scripted replies: Ok, or an API status code.
    #[derive(Default)]
    struct Fake {
        replies: Mutex<VecDeque<Option<u16>>>,
        patched: Mutex<Vec<(String, Value)>>,
    }

    impl ClassApi for Arc<Fake> {
        async fn patch_status(&self, name: &str, patch: &Value) -> kube::Result<()> {
            self.patched.lock().unwrap().push((name.to_string(), patch.clone()));
            match self.replies.lock().unwrap().pop_front().expect("a scripted reply") {
                None => Ok(()),
                Some(code) => Err(kube::Error::Api(kube::core::Status { code, ..Default::default() }.boxed())),
            }
        }
    }

    fn class(name: &str, controller: &str, status: Value) -> Watched {
        let object = json!({
            "metadata": {"name": name, "generation": 2, "resourceVersion": "7"},
            "spec": {"controllerName": controller},
            "status": status,
        });
        serde_json::from_value(object).unwrap()
    }

    struct Setup {
        runner: Arc<Runner<ClassWriter<Arc<Fake>>>>,
        watch: ClassWatch,
        state: State,
        fake: Arc<Fake>,
        leading: tokio::sync::watch::Sender<bool>,
    }

    fn setup(replies: impl IntoIterator<Item = Option<u16>>) -> Setup {
        let classes = Classes::new(OURS);
        let fake = Arc::new(Fake { replies: Mutex::new(replies.into_iter().collect()), ..Fake::default() });
        let (leadership, leading) = Leadership::switchable(true);
        let metrics = Arc::new(Metrics::default());
        let work = ClassWriter {
            classes: classes.clone(),
            api: fake.clone(),
            leadership: leadership.clone(),
            metrics: metrics.clone(),
        };
        let (_, ready) = tokio::sync::watch::channel(true);
        let runner = Arc::new(Runner { work, queue: classes.queue.clone(), leadership, ready, metrics });
        let resource = ApiResource::erase::<k8s_openapi::api::core::v1::Pod>(&());
        let state = State::new(Index::new(OURS), Arc::new(Metrics::default()), Synced::new([]));
        Setup { runner, watch: ClassWatch { classes, resource }, state, fake, leading }
    }

    impl Setup {
        /// Runs the next queued key; None when nothing is queued.
        async fn step(&self) -> Option<()> {
            let popped = tokio::time::timeout(Duration::from_secs(300), self.runner.queue.pop()).await.ok()?;
            self.runner.run_one(popped).await;
            Some(())
        }
        fn see(&self, object: Watched) {
            self.watch.apply(&self.state, ObjectRef::new("", object.metadata.name.clone().unwrap()), &object).unwrap();
        }
        fn failures(&self) -> u64 {
            self.runner.metrics.write_failures.get_or_create(&WriterLabel::of("gatewayclass")).get()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn write_then_unchanged() {
        let s = setup([None]);
        s.see(class("ours", OURS, Value::Null));
        s.see(class("theirs", "example.com/theirs", Value::Null));
        s.step().await.unwrap();
        let patched = s.fake.patched.lock().unwrap().clone();
        assert_eq!(patched.len(), 1, "only ours");
        assert_eq!(patched[0].1["status"]["conditions"][0]["reason"], "Accepted");
        assert_eq!(patched[0].1["metadata"]["resourceVersion"], "7");
        assert_eq!(s.runner.metrics.class_status_writes.get(), 1);
        // Its echo says Accepted at its generation: nothing to write.
        s.see(class("ours", OURS, json!({"conditions": patched[0].1["status"]["conditions"].clone()})));
        s.step().await.unwrap();
        assert_eq!(s.fake.patched.lock().unwrap().len(), 1, "unchanged: no second patch");
        assert!(s.step().await.is_none(), "nothing left queued");
    }

    #[tokio::test(start_paused = true)]
    async fn conflict_and_not_found_wait_for_the_watch() {
        let s = setup([Some(409), Some(404)]);
        s.see(class("a", OURS, Value::Null));
        s.step().await.unwrap();
        s.see(class("b", OURS, Value::Null));
        s.step().await.unwrap();
        assert_eq!((s.runner.queue.retrying(), s.failures()), (0, 0), "no retry: the watch brings the news");
    }

    #[tokio::test(start_paused = true)]
    async fn fenced_then_written_once_the_lease_allows() {
        let s = setup([None]);
        s.leading.send_replace(false);
        s.see(class("ours", OURS, Value::Null));
        s.step().await.unwrap();
        assert!(s.fake.patched.lock().unwrap().is_empty(), "fenced: nothing sent");
        assert_eq!(s.runner.queue.retrying(), 1, "retried after a backoff");
        s.leading.send_replace(true);
        s.step().await.unwrap();
        assert_eq!(s.fake.patched.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_is_counted_and_retried_after_a_backoff() {
        let s = setup([Some(500), None]);
        s.see(class("ours", OURS, Value::Null));
        s.step().await.unwrap();
        assert_eq!((s.failures(), s.runner.queue.retrying()), (1, 1));
        let started = tokio::time::Instant::now();
        s.step().await.unwrap();
        assert!(started.elapsed() >= BACKOFF_BASE / 2, "not before its backoff");
        assert_eq!((s.fake.patched.lock().unwrap().len(), s.runner.metrics.class_status_writes.get()), (2, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_deleted_class_is_not_written() {
        let s = setup([]);
        s.see(class("ours", OURS, Value::Null));
        s.watch.delete(&s.state, &ObjectRef::new("", "ours"));
        s.step().await.unwrap();
        assert!(s.fake.patched.lock().unwrap().is_empty(), "gone: nothing to write");
        assert_eq!(s.runner.queue.retrying(), 0);
    }
}
