//! Writes one policy object on the runner, keyed by the object: applies it
//! when what stands differs from what was decided, deletes one of ours that
//! should not stand (only the object we saw: uid precondition), while this
//! replica may write, each call bounded by `API_TIMEOUT`.

use std::future::Future;
use std::sync::Arc;

use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::discovery::ApiResource;
use serde_json::Value;
use tracing::info;

use super::standing::{Plan, Standing};
use crate::egress::stands;
use crate::model::ObjectRef;
use crate::runtime::leader::Leadership;
use crate::runtime::metrics::Metrics;
use crate::runtime::runner::{Finish, Work, bounded_write};

/// Field manager of our server-side applies.
const MANAGER: &str = "xbackend-controller-egress";

/// The two API calls of the policy writer: the seam its unit tests fake.
pub trait PolicyApi: Send + Sync + 'static {
    /// A server-side apply of the whole object.
    fn apply(&self, key: &ObjectRef, object: &Value) -> impl Future<Output = kube::Result<()>> + Send;
    /// A delete of the object with this uid (None: whatever stands).
    fn delete(&self, key: &ObjectRef, uid: Option<String>) -> impl Future<Output = kube::Result<()>> + Send;
}

/// `PolicyApi` on the real apiserver, for the engine's kind.
pub struct KubePolicies {
    pub client: Client,
    pub resource: ApiResource,
    pub namespaced: bool,
}

impl KubePolicies {
    fn api(&self, key: &ObjectRef) -> Api<DynamicObject> {
        if self.namespaced {
            Api::namespaced_with(self.client.clone(), &key.namespace, &self.resource)
        } else {
            Api::all_with(self.client.clone(), &self.resource)
        }
    }
}

impl PolicyApi for KubePolicies {
    async fn apply(&self, key: &ObjectRef, object: &Value) -> kube::Result<()> {
        let params = PatchParams::apply(MANAGER).force();
        self.api(key).patch(&key.name, &params, &Patch::Apply(object)).await.map(|_| ())
    }
    async fn delete(&self, key: &ObjectRef, uid: Option<String>) -> kube::Result<()> {
        let params = DeleteParams {
            preconditions: uid.map(|uid| Preconditions { uid: Some(uid), resource_version: None }),
            ..DeleteParams::default()
        };
        self.api(key).delete(&key.name, &params).await.map(|_| ())
    }
}

pub struct PolicyWriter<A> {
    pub standing: Arc<Standing>,
    pub plan: Arc<Plan>,
    pub api: A,
    pub leadership: Leadership,
    pub metrics: Arc<Metrics>,
}

/// What one key needs.
enum Todo {
    Nothing,
    Apply(Value),
    Delete(Option<String>),
}

impl<A: PolicyApi> PolicyWriter<A> {
    fn todo(&self, key: &ObjectRef) -> Todo {
        // Before the first decision every object stays as it stands: the
        // first decision queues them all.
        let Some(wanted) = self.plan.wanted(key) else { return Todo::Nothing };
        let standing = self.standing.ours().get(key).cloned();
        match (wanted, standing) {
            (Some(wanted), Some(standing)) if stands(&wanted, &standing) => Todo::Nothing,
            (Some(wanted), _) => Todo::Apply(wanted.to_value()),
            (None, Some(_)) => Todo::Delete(self.standing.uid(key)),
            (None, None) => Todo::Nothing,
        }
    }
}

impl<A: PolicyApi> Work for PolicyWriter<A> {
    type Key = ObjectRef;
    const TASK: &'static str = "egress";

    async fn run(&self, key: &ObjectRef) -> Finish {
        let todo = self.todo(key);
        if matches!(todo, Todo::Nothing) {
            return Finish::Done;
        }
        if !self.leadership.may_write() {
            return Finish::Retry;
        }
        let name = key.to_string();
        let (what, wrote) = match todo {
            Todo::Nothing => return Finish::Done,
            Todo::Apply(object) => {
                ("apply", bounded_write(&self.metrics, "egress", &name, self.api.apply(key, &object)).await)
            }
            Todo::Delete(uid) => {
                ("delete", bounded_write(&self.metrics, "egress", &name, self.api.delete(key, uid)).await)
            }
        };
        match wrote {
            Some(true) => {
                self.metrics.egress_policy_writes.inc();
                info!(policy = %key, what, "egress policy written");
                Finish::Done
            }
            Some(false) => Finish::Done,
            None => Finish::Retry,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::egress::{Config, Engine, NetworkPolicy, Policies, PolicyObject, Rules};
    use crate::runtime::egress::standing::PolicyWatch;
    use crate::runtime::metrics::WriterLabel;
    use crate::runtime::queue::{BACKOFF_BASE, Queue};
    use crate::runtime::runner::Runner;
    use crate::runtime::state::{State, Synced};
    use crate::runtime::watch::Indexer;

    /// Scripted replies (None: Ok; Some: an API status code) and the calls made.
    #[derive(Default)]
    struct Fake {
        replies: Mutex<VecDeque<Option<u16>>>,
        calls: Mutex<Vec<(&'static str, ObjectRef, Option<String>)>>,
    }

    impl Fake {
        fn reply(&self, call: &'static str, key: &ObjectRef, uid: Option<String>) -> kube::Result<()> {
            self.calls.lock().unwrap().push((call, key.clone(), uid));
            match self.replies.lock().unwrap().pop_front().expect("a scripted reply") {
                None => Ok(()),
                Some(code) => Err(kube::Error::Api(kube::core::Status { code, ..Default::default() }.boxed())),
            }
        }
    }

    impl PolicyApi for Arc<Fake> {
        async fn apply(&self, key: &ObjectRef, _: &Value) -> kube::Result<()> {
            self.reply("apply", key, None)
        }
        async fn delete(&self, key: &ObjectRef, uid: Option<String>) -> kube::Result<()> {
            self.reply("delete", key, uid)
        }
    }

    struct Setup {
        runner: Arc<Runner<PolicyWriter<Arc<Fake>>>>,
        watch: PolicyWatch,
        state: State,
        fake: Arc<Fake>,
        leading: tokio::sync::watch::Sender<bool>,
        key: ObjectRef,
        policy: Arc<PolicyObject>,
    }

    fn setup(replies: impl IntoIterator<Item = Option<u16>>) -> Setup {
        let (standing, plan, queue) =
            (Arc::new(Standing::default()), Arc::new(Plan::default()), Arc::new(Queue::default()));
        let fake = Arc::new(Fake { replies: Mutex::new(replies.into_iter().collect()), ..Fake::default() });
        let (leadership, leading) = Leadership::switchable(true);
        let metrics = Arc::new(Metrics::default());
        let work = PolicyWriter {
            standing: standing.clone(),
            plan: plan.clone(),
            api: fake.clone(),
            leadership: leadership.clone(),
            metrics: metrics.clone(),
        };
        let (_, ready) = tokio::sync::watch::channel(true);
        let runner = Arc::new(Runner { work, queue: queue.clone(), leadership, ready, metrics });
        let resource = ApiResource::erase::<k8s_openapi::api::networking::v1::NetworkPolicy>(&());
        let watch = PolicyWatch::new(standing, plan, queue, NetworkPolicy.kind(), resource, true, None);
        let state = State::new(crate::index::Index::new("ctl"), Arc::new(Metrics::default()), Synced::new([]));
        let gateway = ObjectRef::new("infra", "gw");
        let config = Config::default();
        let built = NetworkPolicy.render(Rules::new(&gateway, "", "ours", &[], &config)).next().unwrap();
        let policy = Arc::new(PolicyObject::from_value(NetworkPolicy.kind(), &built));
        Setup { runner, watch, state, fake, leading, key: policy.key(), policy }
    }

    impl Setup {
        fn decide(&self, policies: &[&Arc<PolicyObject>]) {
            let decided: Policies = policies.iter().map(|p| (p.key(), (*p).clone())).collect();
            self.runner.work.plan.replace(Some(decided));
            self.runner.queue.push(self.key.clone());
        }
        /// What the watch sees standing (None: deleted).
        fn stands(&self, policy: Option<&PolicyObject>, uid: &str) {
            match policy {
                Some(policy) => {
                    let mut object: DynamicObject = serde_json::from_value(policy.to_value()).unwrap();
                    object.metadata.uid = Some(uid.into());
                    self.watch.apply(&self.state, self.key.clone(), &object).unwrap();
                }
                None => {
                    self.watch.delete(&self.state, &self.key);
                }
            }
        }
        /// Runs queued keys until none is left (within five minutes of paused
        /// time); a writer that never settles fails the test.
        async fn settle(&self) {
            for _ in 0..50 {
                let Ok(popped) = tokio::time::timeout(Duration::from_secs(300), self.runner.queue.pop()).await else {
                    return;
                };
                self.runner.run_one(popped).await;
            }
            panic!("the writer does not settle: {:?}", self.calls());
        }
        fn calls(&self) -> Vec<(&'static str, ObjectRef, Option<String>)> {
            self.fake.calls.lock().unwrap().clone()
        }
        fn failures(&self) -> u64 {
            self.runner.metrics.write_failures.get_or_create(&WriterLabel::of("egress")).get()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn write_then_unchanged() {
        let s = setup([None]);
        s.decide(&[&s.policy]);
        s.settle().await;
        assert_eq!(s.calls(), [("apply", s.key.clone(), None)]);
        assert_eq!(s.runner.metrics.egress_policy_writes.get(), 1);
        // Its echo stands as decided: queued, compared, nothing written.
        s.stands(Some(&s.policy), "u-1");
        s.settle().await;
        assert_eq!(s.calls().len(), 1, "unchanged: no second write");
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_written_before_the_first_decision() {
        let s = setup([]);
        s.stands(Some(&s.policy), "u-1");
        s.settle().await;
        assert!(s.calls().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_edit_is_put_back() {
        let s = setup([None]);
        s.stands(Some(&s.policy), "u-1");
        s.decide(&[&s.policy]);
        s.settle().await;
        assert!(s.calls().is_empty(), "it stands");
        let mut edited = s.policy.to_value();
        edited["metadata"]["annotations"] = json!({});
        let edited = PolicyObject::from_value(s.policy.kind, &edited);
        s.stands(Some(&edited), "u-1");
        s.settle().await;
        assert_eq!(s.calls(), [("apply", s.key.clone(), None)], "put back");
    }

    #[tokio::test(start_paused = true)]
    async fn conflict_and_not_found_wait_for_the_watch() {
        let s = setup([Some(409), Some(404)]);
        s.decide(&[&s.policy]);
        s.settle().await;
        s.stands(Some(&s.policy), "u-1");
        s.decide(&[]);
        s.settle().await;
        assert_eq!(s.calls().len(), 2);
        assert_eq!((s.runner.queue.retrying(), s.failures()), (0, 0), "no retry: the watch brings the news");
    }

    #[tokio::test(start_paused = true)]
    async fn fenced_then_written_once_the_lease_allows() {
        let s = setup([None]);
        s.leading.send_replace(false);
        s.decide(&[&s.policy]);
        let popped = s.runner.queue.pop().await;
        s.runner.run_one(popped).await;
        assert!(s.calls().is_empty(), "fenced: nothing sent");
        assert_eq!(s.runner.queue.retrying(), 1, "retried after a backoff");
        s.leading.send_replace(true);
        s.settle().await;
        assert_eq!(s.calls().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_is_counted_and_retried_after_a_backoff() {
        let s = setup([Some(500), None]);
        s.decide(&[&s.policy]);
        let popped = s.runner.queue.pop().await;
        s.runner.run_one(popped).await;
        assert_eq!((s.failures(), s.runner.queue.retrying()), (1, 1));
        let started = tokio::time::Instant::now();
        s.settle().await;
        assert!(started.elapsed() >= BACKOFF_BASE / 2, "not before its backoff");
        assert_eq!((s.calls().len(), s.runner.metrics.egress_policy_writes.get()), (2, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn one_that_should_not_stand_is_deleted_with_its_uid() {
        let s = setup([None]);
        s.stands(Some(&s.policy), "u-1");
        s.decide(&[]);
        s.settle().await;
        assert_eq!(s.calls(), [("delete", s.key.clone(), Some("u-1".to_string()))]);
        s.stands(None, "");
        s.settle().await;
        assert_eq!(s.calls().len(), 1, "gone: nothing more");
    }
}
