//! The policy objects as they stand (ours by label, and everyone else's of
//! the engine's kind, to tell when one makes ours moot) and what the decider
//! last decided should stand. Watches write the first, the decider the
//! second; the writer reads both.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use kube::Client;
use kube::api::{Api, DynamicObject};
use kube::discovery::ApiResource;
use kube::runtime::watcher;
use tokio::sync::Notify;

use crate::egress::{CONTROLLER_LABEL, OWNED_LABEL, Policies, PolicyKind, PolicyObject};
use crate::model::ObjectRef;
use crate::runtime::queue::Queue;
use crate::runtime::state::State;
use crate::runtime::watch::{Affected, Indexer};

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Ours and the others, as they stand: only the fields the writer compares
/// (`PolicyObject::from_value`), shared, so a round copies pointers rather
/// than trees, and one that stands as decided is the decided copy.
#[derive(Default)]
pub struct Standing {
    ours: Mutex<Policies>,
    others: Mutex<Policies>,
    /// The uid of each of ours, for deletes that must not hit a successor
    /// (kept apart, so one that stands as decided is the decided copy).
    uids: Mutex<BTreeMap<ObjectRef, String>>,
    /// Woken when another's object changes (the decider warns again).
    pub others_changed: Notify,
}

impl Standing {
    pub fn ours(&self) -> MutexGuard<'_, Policies> {
        locked(&self.ours)
    }

    pub fn others(&self) -> MutexGuard<'_, Policies> {
        locked(&self.others)
    }

    pub fn uid(&self, key: &ObjectRef) -> Option<String> {
        locked(&self.uids).get(key).filter(|uid| !uid.is_empty()).cloned()
    }
}

/// What the decider decided should stand, once it has decided at all (until
/// then the writer leaves every object as it stands).
#[derive(Default)]
pub struct Plan {
    decided: Mutex<Option<Policies>>,
}

impl Plan {
    /// None before the first decision; else the object `key` should be (None: none).
    pub fn wanted(&self, key: &ObjectRef) -> Option<Option<Arc<PolicyObject>>> {
        locked(&self.decided).as_ref().map(|policies| policies.get(key).cloned())
    }

    pub fn decided(&self) -> bool {
        locked(&self.decided).is_some()
    }

    /// The decided copy of `key` when it is the same as `object`.
    fn same_as(&self, key: &ObjectRef, object: &PolicyObject) -> Option<Arc<PolicyObject>> {
        locked(&self.decided).as_ref()?.get(key).filter(|p| ***p == *object).cloned()
    }

    /// Replaces the decision; returns the last one (None before the first).
    pub fn replace(&self, policies: Option<Policies>) -> Option<Policies> {
        std::mem::replace(&mut *locked(&self.decided), policies)
    }
}

/// A watch that feeds `Standing`: the engine's objects with our label
/// (`ours`), or every other one (few objects: kept only to warn when one
/// makes ours moot); cluster-wide, or in one namespace (`--egress-namespace`,
/// NetworkPolicies only: the chart grants a Role there, nothing wider). A
/// change to one of ours queues it for the writer, which puts back an edit.
pub struct PolicyWatch {
    pub standing: Arc<Standing>,
    pub plan: Arc<Plan>,
    pub queue: Arc<Queue>,
    pub kind: &'static PolicyKind,
    pub resource: ApiResource,
    pub ours: bool,
    pub namespace: Option<String>,
    /// This install's `CONTROLLER_LABEL` value: ours carry it.
    pub controller: String,
    name: &'static str,
}

impl PolicyWatch {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        standing: Arc<Standing>,
        plan: Arc<Plan>,
        queue: Arc<Queue>,
        kind: &'static PolicyKind,
        resource: ApiResource,
        ours: bool,
        namespace: Option<String>,
    ) -> PolicyWatch {
        let which = if ours { kind.kind.to_string() } else { format!("{} (others)", kind.kind) };
        // Readiness and metrics know a watch by a static name: one per
        // namespace the operator lists, made once at start.
        let name = match &namespace {
            None => which,
            Some(ns) => format!("{which} in {ns}"),
        };
        let name: &'static str = Box::leak(name.into_boxed_str());
        PolicyWatch { standing, plan, queue, kind, resource, ours, namespace, controller: String::new(), name }
    }

    fn map(&self) -> MutexGuard<'_, Policies> {
        if self.ours { self.standing.ours() } else { self.standing.others() }
    }

    /// After a change to what stands: the writer looks at ours again; the
    /// decider warns again about others.
    fn changed(&self, keys: impl IntoIterator<Item = ObjectRef>) {
        if self.ours {
            self.queue.extend(keys);
        } else {
            self.standing.others_changed.notify_one();
        }
    }
}

impl Indexer for PolicyWatch {
    type Resource = DynamicObject;

    fn name(&self) -> &'static str {
        self.name
    }
    fn api(&self, client: &Client) -> Api<DynamicObject> {
        match &self.namespace {
            Some(namespace) => Api::namespaced_with(client.clone(), namespace, &self.resource),
            None => Api::all_with(client.clone(), &self.resource),
        }
    }
    fn config(&self) -> watcher::Config {
        let selector = if self.ours { OWNED_LABEL.to_string() } else { format!("!{OWNED_LABEL}") };
        // Ours hold up to 64 XBackends' rules each: a (re-)list in pages of
        // 16 keeps one page's objects in memory, not all of them.
        crate::runtime::watch::config().labels(&selector).page_size(16)
    }
    fn apply(&self, state: &State, key: ObjectRef, object: &DynamicObject) -> Result<Affected, String> {
        // Another install's objects are neither ours nor others'; ours from
        // before the label existed are ours (the next write adds it).
        let labels = object.metadata.labels.as_ref();
        let install = labels.and_then(|l| l.get(CONTROLLER_LABEL));
        if self.ours && install.is_some_and(|i| *i != self.controller) {
            return Ok(self.delete(state, &key));
        }
        let value = serde_json::json!({"metadata": object.metadata, "spec": object.data.get("spec")});
        let policy = PolicyObject::from_value(self.kind, &value);
        if self.ours {
            locked(&self.standing.uids).insert(key.clone(), object.metadata.uid.clone().unwrap_or_default());
        }
        // One the same as what stands (a re-list brings every object again)
        // or as what was decided (our own write's echo) is kept as that
        // copy, not as a second one.
        let mut map = self.map();
        let same = |p: &&Arc<PolicyObject>| ***p == policy;
        let known = map.get(&key).filter(same).cloned();
        let unchanged = known.is_some();
        let known = known.or_else(|| self.ours.then(|| self.plan.same_as(&key, &policy))?);
        map.insert(key.clone(), known.unwrap_or_else(|| Arc::new(policy)));
        drop(map);
        if !unchanged {
            self.changed([key]);
        }
        Ok(Affected::none())
    }
    fn delete(&self, _: &State, key: &ObjectRef) -> Affected {
        self.map().remove(key);
        locked(&self.standing.uids).remove(key);
        self.changed([key.clone()]);
        Affected::none()
    }
    fn reset(&self, _: &State, seen: &BTreeSet<ObjectRef>, _: bool) -> Affected {
        // Only this watch's namespace: the others' watches answer for theirs.
        let mine = |key: &ObjectRef| self.namespace.as_deref().is_none_or(|ns| *key.namespace == *ns);
        let mut gone = Vec::new();
        self.map().retain(|key, _| {
            let keep = !mine(key) || seen.contains(key);
            if !keep {
                gone.push(key.clone());
            }
            keep
        });
        if self.ours {
            locked(&self.standing.uids).retain(|key, _| !mine(key) || seen.contains(key));
        }
        self.changed(gone);
        Affected::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::{Config, Engine, NetworkPolicy, Rules};
    use crate::index::Index;
    use crate::runtime::metrics::Metrics;
    use crate::runtime::state::Synced;

    fn read_back(policy: &PolicyObject, uid: &str) -> DynamicObject {
        let mut object: DynamicObject = serde_json::from_value(policy.to_value()).expect("an object");
        object.metadata.uid = Some(uid.into());
        object.metadata.resource_version = Some("7".into());
        object
    }

    /// Our write's echo and a re-list each keep the one copy of a policy that
    /// stands as decided; an edit is a copy of its own, queued for the
    /// writer; the uid is kept apart for deletes.
    #[test]
    fn a_policy_read_back_unchanged_is_kept_once() {
        let (standing, plan, queue) =
            (Arc::new(Standing::default()), Arc::new(Plan::default()), Arc::new(Queue::default()));
        let kind = NetworkPolicy.kind();
        let resource = ApiResource::erase::<k8s_openapi::api::networking::v1::NetworkPolicy>(&());
        let watch = PolicyWatch::new(standing.clone(), plan.clone(), queue.clone(), kind, resource, true, None);
        let state = State::new(Index::new("ctl"), Arc::new(Metrics::default()), Synced::new([]));
        let gateway = ObjectRef::new("infra", "gw");
        let config = Config::default();
        let built = NetworkPolicy.render(Rules::new(&gateway, "", "ours", &[], &config)).next().unwrap();
        let decided = Arc::new(PolicyObject::from_value(kind, &built));
        let key = ObjectRef::new("infra", "xbackend-egress-gw");
        plan.replace(Some(Policies::from([(key.clone(), decided.clone())])));

        watch.apply(&state, key.clone(), &read_back(&decided, "u-1")).unwrap();
        assert!(Arc::ptr_eq(&standing.ours()[&key], &decided), "the echo is the decided copy");
        assert_eq!(standing.uid(&key).as_deref(), Some("u-1"));
        assert_eq!(queue.depths().0, 1, "queued: the writer finds it stands");
        plan.replace(None);
        watch.apply(&state, key.clone(), &read_back(&decided, "u-1")).unwrap();
        assert!(Arc::ptr_eq(&standing.ours()[&key], &decided), "a re-list keeps what stands");

        let mut edited = read_back(&decided, "u-1");
        edited.metadata.labels.get_or_insert_default().insert("team".into(), "x".into());
        watch.apply(&state, key.clone(), &edited).unwrap();
        let now = standing.ours()[&key].clone();
        assert!(!Arc::ptr_eq(&now, &decided));
        assert_eq!(now.metadata()["labels"]["team"], "x");

        watch.delete(&state, &key);
        assert!(standing.ours().is_empty() && standing.uid(&key).is_none());
    }
}
