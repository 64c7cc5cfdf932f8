//! The controller's state behind one short lock (docs/design.md §11). Who
//! writes what: the index (one record per XBackend) only the watches; the
//! status layout only the CRD watch; `reported` only reconciles, through
//! `report` and the write guard (`begin_write`). The egress policy writer
//! only reads (`egress_pending`, `egress_demand`), woken by `egress_changed`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::sync::watch as channel;

use super::metrics::{AcceptedLabel, Metrics, ReasonLabel};
use super::queue::Queue;
use crate::conditions::Verdict;
use crate::egress::{Allowed, Demand, GatewayInfo};
use crate::index::Index;
use crate::judge::Snapshot;
use crate::model::ObjectRef;
use crate::model::{Kind, Object, RefKind};
use crate::reach;
use crate::status::{EventNote, Shape};

/// What a reconcile last did for one XBackend (object `uid`): reconciles
/// write it, the watches drop it with the object. It is memory of our own
/// output, not a cache of the cluster.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reported {
    /// The XBackend's, shared with its record.
    pub uid: Arc<str>,
    /// The Events recorded, so an unchanged set is not recorded again.
    pub events: Vec<EventNote>,
    /// The Accepted verdict (status, reason) counted in the gauges.
    pub accepted: Option<(bool, &'static str)>,
    /// The resourceVersion our last status patch produced: its watch echo is
    /// no news (the echo rule).
    pub written: Option<String>,
    /// A status patch is in flight: its echo can arrive before its response.
    pub writing: bool,
    /// The newest event held back while `writing`, decided when the patch ends.
    pub held: Option<String>,
    /// What the last plan adds to the egress NetworkPolicies, per Gateway.
    pub uses: Option<Vec<(ObjectRef, Allowed)>>,
}

#[derive(Default)]
struct Inner {
    index: Index,
    shape: Shape,
    reported: HashMap<ObjectRef, Reported>,
}

pub struct State {
    inner: Mutex<Inner>,
    metrics: Arc<Metrics>,
    pub synced: Synced,
    /// Notified when what the egress policies depend on may have changed.
    pub egress_changed: Notify,
}

impl State {
    /// `index` is empty; it decides which Gateways are judged (`Index::new`, `Index::guarding`).
    pub fn new(index: Index, metrics: Arc<Metrics>, synced: Synced) -> State {
        let inner = Inner { index, ..Inner::default() };
        State { inner: Mutex::new(inner), metrics, synced, egress_changed: Notify::new() }
    }

    /// A panic caught under the lock (counted where it was caught) leaves
    /// the state as it was: the next caller goes on with it rather than
    /// failing forever on a poisoned lock.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies one added or changed object; returns the XBackends to reconcile.
    ///
    /// An XBackend event that is not newer than the record is dropped, and
    /// the echo of our own write updates the record without a reconcile:
    /// reconciling it would only confirm it. An event that comes while our
    /// patch is in flight is held until the write guard ends: under load
    /// the echo often beats the response.
    pub fn apply(&self, key: ObjectRef, object: Object) -> BTreeSet<ObjectRef> {
        let mut inner = self.lock();
        let mut echo = false;
        if let Object::XBackend(new) = &object {
            let old = inner.index.backend(&key);
            if old.is_some_and(|old| !new.is_newer_than(old)) {
                return BTreeSet::new();
            }
            // The version we know, read again with another status (after a
            // CRD schema change): never our echo, even if we wrote that version.
            let reread = old.is_some_and(|old| old.resource_version == new.resource_version);
            if let Some(r) = inner.reported.get_mut(&key).filter(|r| r.uid == new.uid) {
                if r.writing {
                    r.held = Some(new.resource_version.clone());
                }
                echo = !reread && (r.writing || r.written.as_deref() == Some(new.resource_version.as_str()));
            }
        }
        // What the egress policies read: Gateways and classes, and (for
        // `--egress-cluster routes`) routes, grants, Services and their slices.
        if !matches!(object, Object::XBackend(_) | Object::Pod(_) | Object::Namespace) {
            self.egress_changed.notify_one();
        }
        let mut affected = inner.index.apply(key.clone(), object);
        if echo {
            affected.remove(&key);
        }
        affected
    }

    pub fn delete(&self, kind: Kind, key: &ObjectRef) -> BTreeSet<ObjectRef> {
        let mut inner = self.lock();
        let affected = inner.index.delete(kind, key);
        self.sweep(&mut inner, kind, affected)
    }

    /// Ends a re-list: deletes the objects of `kind` it did not see.
    pub fn retain(&self, kind: Kind, seen: &BTreeSet<ObjectRef>) -> BTreeSet<ObjectRef> {
        let mut inner = self.lock();
        let affected = inner.index.retain(kind, seen);
        self.sweep(&mut inner, kind, affected)
    }

    /// Drops what was reported for XBackends that are gone, with their gauge.
    fn sweep(&self, inner: &mut Inner, kind: Kind, affected: BTreeSet<ObjectRef>) -> BTreeSet<ObjectRef> {
        if !matches!(kind, Kind::Pod | Kind::Namespace) {
            self.egress_changed.notify_one();
        }
        if kind != Kind::XBackend {
            return affected;
        }
        let gone: Vec<ObjectRef> = affected.iter().filter(|k| inner.index.backend(k).is_none()).cloned().collect();
        for key in &gone {
            if let Some(r) = inner.reported.remove(key) {
                self.count(r.accepted, None);
            }
        }
        affected.into_iter().filter(|k| !gone.contains(k)).collect()
    }

    pub fn referencing(&self, kind: RefKind, key: &ObjectRef) -> BTreeSet<ObjectRef> {
        self.lock().index.referencing(kind, key)
    }

    /// The XBackends whose spec names `hostname`, for the DNS check.
    pub fn backends_with_hostname(&self, hostname: &str) -> BTreeSet<ObjectRef> {
        self.lock().index.backends_with_hostname(hostname)
    }

    pub fn backend_keys(&self) -> Vec<ObjectRef> {
        self.lock().index.backend_keys()
    }

    /// Returns true when the layout changed.
    pub fn set_shape(&self, shape: Shape) -> bool {
        std::mem::replace(&mut self.lock().shape, shape) != shape
    }

    /// A copy of what one reconcile needs; None when the XBackend is gone.
    pub fn snapshot(&self, key: &ObjectRef) -> Option<Snapshot> {
        let inner = self.lock();
        Snapshot::take(&inner.index, key, inner.shape)
    }

    /// Records a reconcile's verdict, Events and egress uses for the XBackend
    /// with `uid`; returns the Events to record now (empty when the same were
    /// recorded last time). Ignored when the object is gone or was replaced.
    pub fn report(
        &self,
        key: &ObjectRef,
        uid: &str,
        accepted: &Verdict,
        events: Vec<EventNote>,
        uses: Vec<(ObjectRef, Allowed)>,
    ) -> Vec<EventNote> {
        let accepted = (accepted.status, accepted.reason);
        let mut guard = self.lock();
        let inner = &mut *guard;
        let Some(backend) = inner.index.backend(key).filter(|b| *b.uid == *uid) else {
            return Vec::new();
        };
        let entry = inner.reported.entry(key.clone()).or_default();
        if *entry.uid != *uid {
            *entry = Reported { uid: backend.uid.clone(), ..Reported::default() };
        }
        let old = entry.accepted.replace(accepted);
        if entry.uses.as_ref() != Some(&uses) {
            entry.uses = Some(uses);
            self.egress_changed.notify_one();
        }
        let fresh = entry.events != events;
        if fresh {
            entry.events = events.clone();
        }
        self.count(old, Some(accepted));
        if fresh { events } else { Vec::new() }
    }

    /// How many XBackends no reconcile has reported egress uses for yet:
    /// the policy writer's first decision waits for them while they go down.
    pub fn egress_pending(&self) -> usize {
        let inner = self.lock();
        let known = (inner.reported.iter())
            .filter(|(key, r)| r.uses.is_some() && inner.index.backend(key).is_some_and(|b| b.uid == r.uid))
            .count();
        inner.index.backend_count().saturating_sub(known)
    }

    /// A copy of what the egress policies depend on (docs/design.md §6b):
    /// the demand (without `reach` and `dns`, which the decider judges and
    /// finds outside the lock), what each judged Gateway's routes' Service
    /// references lead to, and the cluster's Namespaces (to judge names).
    pub fn egress_demand(&self) -> (Demand, BTreeMap<ObjectRef, Vec<reach::Found>>, Arc<BTreeSet<String>>) {
        let inner = self.lock();
        let index = &inner.index;
        let gateways: Vec<GatewayInfo> = (index.judged_gateways().into_iter())
            .map(|key| {
                let g = index.gateway(&key).cloned().unwrap_or_default();
                let controller =
                    index.gateway_class(&g.class_name).map(|c| c.controller_name.clone()).unwrap_or_default();
                GatewayInfo { key, uid: g.uid, class: g.class_name, controller }
            })
            .collect();
        let targets = gateways.iter().map(|g| (g.key.clone(), reach::targets(index, &g.key))).collect();
        let mut demand = Demand { gateways, ..Demand::default() };
        for key in index.backend_keys() {
            match inner.reported.get(&key).and_then(|r| r.uses.as_ref()) {
                Some(uses) => {
                    for (gateway, allowed) in uses {
                        demand.behind.entry(gateway.clone()).or_default().push(allowed.clone());
                    }
                }
                None => {
                    demand.unknown.insert(key);
                }
            }
        }
        (demand, targets, index.namespaces())
    }

    /// The selector of a Service (the DNS Service's Pods), when it has one.
    pub fn service_selector(&self, key: &ObjectRef) -> Option<BTreeMap<String, String>> {
        let inner = self.lock();
        inner.index.service(key).map(|s| s.selector.clone()).filter(|s| !s.is_empty())
    }

    /// Whether an ExternalName Service of the index names `hostname` (the
    /// DNS check keeps asking for it).
    pub fn external_name_in_use(&self, hostname: &str) -> bool {
        self.lock().index.external_name_in_use(hostname)
    }

    /// A status patch of the XBackend with `uid` is about to be sent: until
    /// the returned guard ends, its watch events are held (under load the
    /// echo often beats the response). End it with `wrote` or `failed`;
    /// dropping it counts as failed, so no path leaves events held.
    pub fn begin_write<'a>(&'a self, queue: &'a Queue, key: &ObjectRef, uid: &str) -> Write<'a> {
        if let Some(r) = self.lock().reported.get_mut(key).filter(|r| *r.uid == *uid) {
            r.writing = true;
            r.held = None;
        }
        Write { state: self, queue, key: key.clone(), uid: uid.to_string(), ended: false }
    }

    /// Ends a write (`written`: the resourceVersion it produced) and returns
    /// true when an event held meanwhile was news. After a success that is
    /// any event but the echo: the patch carried the version it was planned
    /// from, so any other event came after the echo and is the newest held.
    fn end_write(&self, key: &ObjectRef, uid: &str, written: Option<String>) -> bool {
        let mut inner = self.lock();
        let Some(r) = inner.reported.get_mut(key).filter(|r| *r.uid == *uid) else { return false };
        r.writing = false;
        let held = r.held.take();
        match written {
            Some(version) => {
                let news = held.is_some_and(|held| held != version);
                r.written = Some(version);
                news
            }
            None => held.is_some(),
        }
    }

    /// Moves the Accepted gauges (by status, and rejections by reason) by one
    /// XBackend's change (under the lock, so they stay exact without
    /// recounting every XBackend).
    fn count(&self, old: Option<(bool, &'static str)>, new: Option<(bool, &'static str)>) {
        for value in [true, false] {
            let delta = i64::from(new.map(|a| a.0) == Some(value)) - i64::from(old.map(|a| a.0) == Some(value));
            self.metrics.xbackends.get_or_create(&AcceptedLabel { accepted: value.to_string() }).inc_by(delta);
        }
        if old == new {
            return;
        }
        let rejected = |a: Option<(bool, &'static str)>| a.filter(|a| !a.0).map(|a| ReasonLabel { reason: a.1.into() });
        if let Some(label) = rejected(old) {
            self.metrics.rejected.get_or_create(&label).dec();
        }
        if let Some(label) = rejected(new) {
            self.metrics.rejected.get_or_create(&label).inc();
        }
    }
}

/// A status patch in flight (see `State::begin_write`). An event held while it
/// was in flight that turns out to be news queues the XBackend again; the
/// queue runs it once the current reconcile ends (never twice at once).
#[must_use = "end the write with wrote() or failed()"]
pub struct Write<'a> {
    state: &'a State,
    queue: &'a Queue,
    key: ObjectRef,
    uid: String,
    ended: bool,
}

impl Write<'_> {
    /// The patch was stored as `resource_version`: its echo is no news.
    pub fn wrote(mut self, resource_version: String) {
        self.end(Some(resource_version));
    }

    /// The patch failed: whatever came meanwhile is news.
    pub fn failed(mut self) {
        self.end(None);
    }

    fn end(&mut self, written: Option<String>) {
        self.ended = true;
        if self.state.end_write(&self.key, &self.uid, written) {
            self.queue.push(self.key.clone());
        }
    }
}

impl Drop for Write<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.end(None);
        }
    }
}

/// Watches that must sync before the controller is ready and starts writing.
pub struct Synced {
    /// Watches not yet synced, and whether every watch has registered.
    pending: Mutex<(BTreeSet<&'static str>, bool)>,
    ready: channel::Sender<bool>,
}

impl Synced {
    /// A gate for exactly these watches.
    #[cfg(test)]
    pub fn new(names: impl IntoIterator<Item = &'static str>) -> Self {
        let synced = Synced::open();
        names.into_iter().for_each(|name| synced.expect(name));
        synced.seal();
        synced
    }
    /// A gate that watches register with (`expect`) until `seal`; not ready before.
    pub fn open() -> Self {
        let (ready, _) = channel::channel(false);
        Synced { pending: Mutex::new((BTreeSet::new(), false)), ready }
    }
    pub fn expect(&self, name: &'static str) {
        self.pending.lock().expect("synced lock").0.insert(name);
    }
    /// Every watch has registered.
    pub fn seal(&self) {
        let mut pending = self.pending.lock().expect("synced lock");
        pending.1 = true;
        self.update(&pending);
    }
    pub fn mark(&self, name: &str) {
        let mut pending = self.pending.lock().expect("synced lock");
        pending.0.remove(name);
        self.update(&pending);
    }
    fn update(&self, (pending, sealed): &(BTreeSet<&'static str>, bool)) {
        if *sealed && pending.is_empty() {
            self.ready.send_replace(true);
        }
    }
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }
    pub fn subscribe(&self) -> channel::Receiver<bool> {
        self.ready.subscribe()
    }
    pub fn pending(&self) -> Vec<&'static str> {
        self.pending.lock().expect("synced lock").0.iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions;
    use crate::model::Backend;

    fn backend(uid: &str, rv: &str) -> Object {
        let mut b = Backend::new(1, Err("no spec".into()));
        b.uid = uid.into();
        b.resource_version = rv.into();
        Object::XBackend(b)
    }

    /// A state with XBackend ns/b (uid u, version 5) reconciled once.
    fn reported() -> (State, ObjectRef) {
        let s = state();
        let k = ObjectRef::new("ns", "b");
        s.apply(k.clone(), backend("u", "5"));
        s.report(&k, "u", &conditions::accepted(), vec![], vec![]);
        (s, k)
    }

    fn state() -> State {
        State::new(Index::new("ctl"), Arc::new(Metrics::default()), Synced::new([]))
    }

    fn gauge(state: &State, accepted: bool) -> i64 {
        state.metrics.xbackends.get_or_create(&AcceptedLabel { accepted: accepted.to_string() }).get()
    }

    #[test]
    fn only_a_newer_version_of_the_same_object_is_news() {
        let s = state();
        let k = ObjectRef::new("ns", "b");
        let cases = [
            ("u", "5", true, "first sight"),
            ("u", "5", false, "the same version again"),
            ("u", "4", false, "a late event"),
            ("u", "7", true, "someone changed it"),
            ("v", "3", true, "deleted and created again"),
            ("v", "x", true, "opaque versions: different is news"),
            ("v", "x", false, "opaque versions: the same is not"),
        ];
        for (uid, rv, news, what) in cases {
            assert_eq!(s.apply(k.clone(), backend(uid, rv)).contains(&k), news, "{what}");
        }
        assert_eq!(s.snapshot(&k).unwrap().backend.resource_version, "x", "late events never move the record back");
    }

    #[test]
    fn the_echo_of_our_write_updates_the_record_without_a_reconcile() {
        let (s, k) = reported();
        let q = Queue::default();
        s.begin_write(&q, &k, "u").wrote("6".into());
        assert!(s.apply(k.clone(), backend("u", "6")).is_empty(), "our echo");
        assert_eq!(s.snapshot(&k).unwrap().backend.resource_version, "6", "but the record follows it");
        assert!(s.apply(k.clone(), backend("u", "7")).contains(&k), "someone else's write");
    }

    /// After a CRD schema change a re-list shows the version we wrote with a
    /// status the old schema had hidden: that is news, not our echo.
    #[test]
    fn our_version_read_again_with_another_status_is_reconciled() {
        let (s, k) = reported();
        let q = Queue::default();
        s.begin_write(&q, &k, "u").wrote("6".into());
        assert!(s.apply(k.clone(), backend("u", "6")).is_empty(), "our echo");
        let Object::XBackend(mut reread) = backend("u", "6") else { unreachable!() };
        reread.status =
            crate::model::StoredStatus::from_value(&serde_json::json!({"ancestors": [{"controllerName": "ctl"}]}));
        assert!(s.apply(k.clone(), Object::XBackend(reread)).contains(&k));
    }

    #[test]
    fn events_during_our_write_wait_for_its_response() {
        let (s, k) = reported();
        let q = Queue::default();
        let queued = |q: &Queue| q.depths().0;
        let write = s.begin_write(&q, &k, "u");
        assert!(s.apply(k.clone(), backend("u", "6")).is_empty(), "held while the patch is in flight");
        assert_eq!(s.snapshot(&k).unwrap().backend.resource_version, "6", "the record follows it");
        write.wrote("6".into());
        assert_eq!(queued(&q), 0, "it was our echo");
        assert!(s.apply(k.clone(), backend("u", "7")).contains(&k), "after the patch, events are news again");

        let write = s.begin_write(&q, &k, "u");
        s.apply(k.clone(), backend("u", "8"));
        s.apply(k.clone(), backend("u", "9"));
        write.wrote("8".into());
        assert_eq!(queued(&q), 1, "someone wrote after our echo: queued again");
        drop(q);

        let q = Queue::default();
        s.begin_write(&q, &k, "u").failed();
        assert_eq!(queued(&q), 0, "nothing came");
        let write = s.begin_write(&q, &k, "u");
        s.apply(k.clone(), backend("u", "10"));
        write.failed();
        assert_eq!(queued(&q), 1, "the change that made the patch conflict");
        assert!(s.apply(k.clone(), backend("u", "11")).contains(&k));
    }

    #[test]
    fn a_write_guard_dropped_unended_releases_what_it_held() {
        let (s, k) = reported();
        let q = Queue::default();
        {
            let _write = s.begin_write(&q, &k, "u");
            assert!(s.apply(k.clone(), backend("u", "6")).is_empty(), "held");
            // A reconcile cancelled mid-patch (timeout, shutdown) drops it here.
        }
        assert_eq!(q.depths().0, 1, "the held event is news: queued");
        assert!(s.apply(k.clone(), backend("u", "7")).contains(&k), "and events are no longer held");
    }

    #[test]
    fn events_are_reported_once_and_gauges_follow_verdicts_and_deletes() {
        let s = state();
        let k = ObjectRef::new("ns", "b");
        s.apply(k.clone(), backend("u", "1"));
        let (ok, invalid) = (conditions::accepted(), conditions::invalid("m"));
        let note = EventNote { warning: true, reason: "Invalid", message: "m".into() };
        assert_eq!(s.report(&k, "u", &invalid, vec![note.clone()], vec![]), vec![note.clone()]);
        assert_eq!(s.report(&k, "u", &invalid, vec![note.clone()], vec![]), vec![], "unchanged: not again");
        assert_eq!((gauge(&s, true), gauge(&s, false), rejected(&s, "Invalid")), (0, 1, 1));
        assert_eq!(s.report(&k, "other-uid", &ok, vec![], vec![]), vec![], "a stale reconcile of a replaced object");
        s.report(&k, "u", &conditions::address_not_allowed("a"), vec![], vec![]);
        assert_eq!(
            (rejected(&s, "Invalid"), rejected(&s, "AddressNotAllowed")),
            (0, 1),
            "rejections follow the reason"
        );
        s.report(&k, "u", &ok, vec![], vec![]);
        assert_eq!((gauge(&s, true), gauge(&s, false), rejected(&s, "AddressNotAllowed")), (1, 0, 0));
        s.delete(Kind::XBackend, &k);
        assert_eq!((gauge(&s, true), gauge(&s, false)), (0, 0), "a deleted XBackend leaves the gauges");
        s.apply(k.clone(), backend("u2", "9"));
        assert_eq!(s.report(&k, "u2", &invalid, vec![note.clone()], vec![]), vec![note], "a new object starts afresh");
        s.retain(Kind::XBackend, &BTreeSet::new());
        assert_eq!(
            (gauge(&s, true), gauge(&s, false), rejected(&s, "Invalid")),
            (0, 0, 0),
            "a re-list that misses it too"
        );
        assert!(s.lock().reported.is_empty());
    }

    fn rejected(s: &State, reason: &str) -> i64 {
        s.metrics.rejected.get_or_create(&ReasonLabel { reason: reason.into() }).get()
    }
}
