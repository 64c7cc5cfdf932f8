//! Work queue of keys to write (XBackends to reconcile, policy objects,
//! GatewayClasses): deduplicated, never the same key on two workers at once. Bulk passes (re-lists, resyncs) wait in a second lane
//! behind changes, so a user's new XBackend is not queued behind 50,000
//! rechecks. Failed keys wait in a delay queue (one entry per key, earliest
//! deadline wins, cancelled by a success or a push) for a jittered
//! exponential backoff; no task sleeps per key.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::model::ObjectRef;

/// Retry delays: `BASE * 2^failures`, capped at `MAX`, each drawn from its
/// upper half so that keys failing together spread out.
pub const BACKOFF_BASE: Duration = Duration::from_millis(250);
pub const BACKOFF_MAX: Duration = Duration::from_secs(120);

/// The delay before retry number `failures` (1 for the first failure).
pub fn backoff(failures: u32, base: Duration, max: Duration) -> Duration {
    let exp = base.saturating_mul(1u32.checked_shl(failures.saturating_sub(1)).unwrap_or(u32::MAX)).min(max);
    let half = exp / 2;
    half + half.mul_f64(fastrand::f64())
}

/// What a queue can be keyed by: an XBackend, a policy object, a class.
pub trait Key: Clone + Eq + Hash + Ord + std::fmt::Display + Send + Sync + 'static {}
impl<T: Clone + Eq + Hash + Ord + std::fmt::Display + Send + Sync + 'static> Key for T {}

pub struct Queue<K: Key = ObjectRef> {
    keys: Mutex<Keys<K>>,
    notify: Notify,
    /// Woken when the last key waiting in the bulk lane starts.
    drained: Notify,
}

impl<K: Key> Default for Queue<K> {
    fn default() -> Self {
        Queue { keys: Mutex::new(Keys::default()), notify: Notify::new(), drained: Notify::new() }
    }
}

/// Which lane a queued key waits in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Something changed: a watch event, a DNS answer, a retry.
    Change,
    /// A recheck of everything (re-list, periodic resync): runs when no change waits.
    Bulk,
}

struct Keys<K> {
    order: VecDeque<K>,
    /// Bulk keys; an entry whose key was promoted or already ran is skipped.
    bulk: VecDeque<K>,
    queued: HashMap<K, Lane>,
    /// Keys waiting in the bulk lane (`queued` entries with `Lane::Bulk`).
    bulk_waiting: usize,
    /// Keys popped and not yet ended: one `Popped` guard each.
    running: HashSet<K>,
    /// Keys pushed while running, and the lane they go back to.
    again: HashMap<K, Lane>,
    /// Consecutive failures per key; gone after a success.
    failures: HashMap<K, u32>,
    /// When each failed key is due again, and the same entries by deadline.
    delayed: HashMap<K, Instant>,
    deadlines: BTreeSet<(Instant, K)>,
}

impl<K> Default for Keys<K> {
    fn default() -> Self {
        Keys {
            order: VecDeque::new(),
            bulk: VecDeque::new(),
            queued: HashMap::new(),
            bulk_waiting: 0,
            running: HashSet::new(),
            again: HashMap::new(),
            failures: HashMap::new(),
            delayed: HashMap::new(),
            deadlines: BTreeSet::new(),
        }
    }
}

impl<K: Key> Keys<K> {
    /// Moves the failed keys whose backoff is over into the change lane.
    fn promote_due(&mut self, now: Instant) {
        while let Some((when, _)) = self.deadlines.first()
            && *when <= now
        {
            let (_, key) = self.deadlines.pop_first().expect("first exists");
            self.delayed.remove(&key);
            self.queued.insert(key.clone(), Lane::Change);
            self.order.push_back(key);
        }
    }

    /// Drops the key's delay entry (it runs sooner, or needs no retry).
    fn cancel_delay(&mut self, key: &K) {
        if let Some(when) = self.delayed.remove(key) {
            self.deadlines.remove(&(when, key.clone()));
        }
    }

    /// The next key: changes first, then bulk keys still waiting as such.
    fn next(&mut self) -> Option<K> {
        if let Some(key) = self.order.pop_front() {
            return Some(key);
        }
        while let Some(key) = self.bulk.pop_front() {
            if self.queued.get(&key) == Some(&Lane::Bulk) {
                self.bulk_waiting -= 1;
                return Some(key);
            }
        }
        None
    }
}

impl<K: Key> Queue<K> {
    pub fn push(&self, key: K) {
        self.push_to(key, Lane::Change);
    }

    pub fn extend(&self, keys: impl IntoIterator<Item = K>) {
        self.extend_in(keys, Lane::Change);
    }

    /// Queues a recheck of `keys` behind every change (re-lists, resyncs).
    pub fn extend_bulk(&self, keys: impl IntoIterator<Item = K>) {
        self.extend_in(keys, Lane::Bulk);
    }

    pub fn extend_in(&self, keys: impl IntoIterator<Item = K>, lane: Lane) {
        keys.into_iter().for_each(|k| self.push_to(k, lane));
    }

    fn push_to(&self, key: K, lane: Lane) {
        let mut s = self.keys.lock().expect("queue lock");
        // Now is earlier than any backoff deadline.
        s.cancel_delay(&key);
        if s.running.contains(&key) {
            // A recheck queued while running stays a recheck; a change wins.
            let again = s.again.entry(key).or_insert(lane);
            if lane == Lane::Change {
                *again = Lane::Change;
            }
            return;
        }
        match (s.queued.get(&key).copied(), lane) {
            (Some(Lane::Change), _) | (Some(Lane::Bulk), Lane::Bulk) => return,
            // A change to a key waiting for a recheck moves it up.
            (Some(Lane::Bulk), Lane::Change) => {
                s.bulk_waiting -= 1;
                s.queued.insert(key.clone(), Lane::Change);
                s.order.push_back(key);
                self.wake_if_drained(&s);
            }
            (None, Lane::Change) => {
                s.queued.insert(key.clone(), Lane::Change);
                s.order.push_back(key);
            }
            (None, Lane::Bulk) => {
                s.bulk_waiting += 1;
                s.queued.insert(key.clone(), Lane::Bulk);
                s.bulk.push_back(key);
            }
        }
        drop(s);
        self.notify.notify_one();
    }

    fn wake_if_drained(&self, s: &Keys<K>) {
        if s.bulk_waiting == 0 {
            self.drained.notify_waiters();
        }
    }

    /// Returns once no key waits in the bulk lane: every recheck queued so far
    /// has started. The periodic resync waits for it, so passes never overlap.
    pub async fn bulk_drained(&self) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.keys.lock().expect("queue lock").bulk_waiting == 0 {
                return;
            }
            drained.await;
        }
    }

    /// Keys waiting in each lane: (changes, bulk rechecks).
    pub fn depths(&self) -> (usize, usize) {
        let s = self.keys.lock().expect("queue lock");
        (s.order.len(), s.bulk_waiting)
    }

    /// Failed keys waiting for their backoff.
    pub fn retrying(&self) -> usize {
        self.keys.lock().expect("queue lock").delayed.len()
    }

    /// Waits for the next key and marks it running. The guard ends the run:
    /// `done` or `failed`, and dropping it unended (a panic, an early
    /// return, cancellation at shutdown) counts as failed, so no key is ever
    /// left running.
    pub async fn pop(&self) -> Popped<'_, K> {
        loop {
            let notified = self.notify.notified();
            let next_due = {
                let mut s = self.keys.lock().expect("queue lock");
                s.promote_due(Instant::now());
                if let Some(key) = s.next() {
                    if s.queued.remove(&key) == Some(Lane::Bulk) {
                        self.wake_if_drained(&s);
                    }
                    s.running.insert(key.clone());
                    if !s.order.is_empty() || !s.bulk.is_empty() {
                        // Wake another idle worker for the rest.
                        self.notify.notify_one();
                    }
                    return Popped { queue: self, key: Some(key) };
                }
                s.deadlines.first().map(|(when, _)| *when)
            };
            match next_due {
                Some(when) => tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep_until(when) => {}
                },
                None => notified.await,
            }
        }
    }

    /// The key runs again after a backoff, or sooner when pushed meanwhile
    /// (then without a delay entry). Returns the delay.
    fn fail(&self, key: &K) -> Duration {
        let failures = {
            let mut s = self.keys.lock().expect("queue lock");
            let n = s.failures.entry(key.clone()).or_default();
            *n = n.saturating_add(1);
            *n
        };
        let delay = backoff(failures, BACKOFF_BASE, BACKOFF_MAX);
        if !self.finish(key, false) {
            let mut s = self.keys.lock().expect("queue lock");
            let when = Instant::now() + delay;
            // Earliest wins: a retry already due sooner keeps its deadline.
            if s.delayed.get(key).is_none_or(|due| when < *due) {
                s.cancel_delay(key);
                s.delayed.insert(key.clone(), when);
                s.deadlines.insert((when, key.clone()));
            }
            drop(s);
            // A waiting worker may sleep until a later deadline.
            self.notify.notify_one();
        }
        delay
    }

    /// Ends a run; returns true when the key was queued again (pushed while running).
    fn finish(&self, key: &K, success: bool) -> bool {
        let again = {
            let mut s = self.keys.lock().expect("queue lock");
            s.running.remove(key);
            if success {
                s.failures.remove(key);
                s.cancel_delay(key);
            }
            s.again.remove(key)
        };
        if let Some(lane) = again {
            self.push_to(key.clone(), lane);
        }
        again.is_some()
    }

    /// Keys popped and not yet ended (live `Popped` guards).
    pub fn running(&self) -> usize {
        self.keys.lock().expect("queue lock").running.len()
    }
}

/// A key taken from the queue, running until the guard ends.
#[must_use = "end the run with done() or failed()"]
pub struct Popped<'a, K: Key> {
    queue: &'a Queue<K>,
    key: Option<K>,
}

impl<K: Key> Popped<'_, K> {
    pub fn key(&self) -> &K {
        self.key.as_ref().expect("a live guard has its key")
    }

    /// The run succeeded: the key's failure count starts over.
    pub fn done(mut self) {
        if let Some(key) = self.key.take() {
            self.queue.finish(&key, true);
        }
    }

    /// The run failed (or may not write yet): the key comes back after a
    /// backoff. Returns the delay.
    pub fn failed(mut self) -> Duration {
        let key = self.key.take().expect("a live guard has its key");
        self.queue.fail(&key)
    }
}

impl<K: Key> Drop for Popped<'_, K> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.queue.fail(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: &str) -> ObjectRef {
        ObjectRef::new("ns", n)
    }

    /// Pops and returns the key, leaving it running (the guard forgotten).
    async fn take(q: &Queue) -> ObjectRef {
        let popped = q.pop().await;
        let key = popped.key().clone();
        std::mem::forget(popped);
        key
    }

    #[tokio::test]
    async fn deduplicates_and_keeps_order() {
        let q = Queue::default();
        q.push(key("a"));
        q.push(key("b"));
        q.push(key("a"));
        let (a, b) = (q.pop().await, q.pop().await);
        assert_eq!((a.key(), b.key()), (&key("a"), &key("b")));
        assert_eq!(q.running(), 2, "both still running");
    }

    #[tokio::test]
    async fn a_key_pushed_while_running_runs_again_after_done() {
        let q = Queue::default();
        q.push(key("a"));
        let a = q.pop().await;
        q.push(key("a"));
        q.extend_bulk([key("a")]);
        {
            let s = q.keys.lock().unwrap();
            assert_eq!(s.order.len() + s.bulk.len(), 0, "not queued while running");
        }
        a.done();
        assert_eq!(take(&q).await, key("a"));
    }

    #[tokio::test]
    async fn changes_go_before_bulk_rechecks_and_run_once() {
        let q = Queue::default();
        q.extend_bulk([key("a"), key("b"), key("c")]);
        q.push(key("new"));
        q.push(key("c"));
        q.extend_bulk([key("c"), key("new"), key("a")]);
        let order = [take(&q).await, take(&q).await, take(&q).await, take(&q).await];
        assert_eq!(order, [key("new"), key("c"), key("a"), key("b")], "changes first, promoted once");
        let s = q.keys.lock().unwrap();
        assert!(s.queued.is_empty() && s.order.is_empty(), "c's stale bulk entry is not run again");
    }

    #[tokio::test]
    async fn a_recheck_of_a_running_key_stays_behind_changes() {
        let q = Queue::default();
        q.push(key("a"));
        let a = q.pop().await;
        q.extend_bulk([key("a")]);
        a.done();
        q.push(key("b"));
        assert_eq!(take(&q).await, key("b"), "the change first");
        assert_eq!(take(&q).await, key("a"));
    }

    #[tokio::test]
    async fn bulk_drained_waits_until_every_recheck_has_started() {
        use futures::FutureExt;
        let q = Queue::default();
        assert!(q.bulk_drained().now_or_never().is_some(), "nothing queued");
        q.extend_bulk([key("a"), key("b"), key("c")]);
        let drained = q.bulk_drained();
        tokio::pin!(drained);
        assert!(drained.as_mut().now_or_never().is_none());
        assert_eq!(take(&q).await, key("a"));
        q.push(key("b"));
        assert_eq!(q.depths(), (1, 1), "b promoted, c still a recheck");
        assert!(drained.as_mut().now_or_never().is_none());
        assert_eq!(take(&q).await, key("b"));
        assert_eq!(take(&q).await, key("c"));
        assert!(drained.now_or_never().is_some(), "c started: drained");
        assert_eq!(q.depths(), (0, 0));
    }

    #[test]
    fn backoff_doubles_within_jitter_and_is_capped() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(10));
        for failures in 1..40 {
            let full = base.saturating_mul(1 << (failures - 1).min(20)).min(max);
            for _ in 0..20 {
                let d = backoff(failures, base, max);
                assert!(d >= full / 2 && d <= full, "{failures}: {d:?} outside [{:?}, {full:?}]", full / 2);
            }
        }
        assert!(backoff(u32::MAX, base, max) <= max);
        let draws: HashSet<Duration> = (0..20).map(|_| backoff(3, base, max)).collect();
        assert!(draws.len() > 1, "jittered");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_key_comes_back_after_its_backoff_and_grows_until_a_success() {
        let q = Queue::default();
        q.push(key("a"));
        let mut last = Duration::ZERO;
        let mut a = q.pop().await;
        for round in 1..=4u32 {
            let delay = a.failed();
            let full = BACKOFF_BASE * 2u32.pow(round - 1);
            assert!(delay >= full / 2 && delay <= full, "round {round}: {delay:?}");
            assert!(round == 1 || delay > last / 2, "grows");
            last = delay;
            let started = tokio::time::Instant::now();
            a = q.pop().await;
            assert_eq!(a.key(), &key("a"));
            assert!(started.elapsed() >= delay, "not before its backoff");
        }
        a.done();
        assert!(q.keys.lock().unwrap().failures.is_empty(), "a success resets the count");
        q.push(key("a"));
        let delay = q.pop().await.failed();
        assert!(delay <= BACKOFF_BASE, "starts over: {delay:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_are_delay_entries_not_tasks_and_a_push_or_success_cancels_them() {
        let q = Queue::default();
        let keys: Vec<ObjectRef> = (0..100).map(|i| key(&i.to_string())).collect();
        q.extend(keys.clone());
        for _ in &keys {
            q.pop().await.failed();
        }
        assert_eq!(q.retrying(), 100, "one delay entry per key");
        let tasks = tokio::runtime::Handle::current().metrics().num_alive_tasks();
        assert_eq!(tasks, 0, "no task sleeps per failed key");

        // A change to a waiting key runs it now and drops its delay entry.
        q.push(keys[0].clone());
        assert_eq!(q.retrying(), 99);
        let first = q.pop().await;
        assert_eq!(first.key(), &keys[0]);
        first.done();
        // Every other key comes back once, after its backoff; the one that
        // succeeded never does (the paused clock jumps to each deadline).
        let mut back = BTreeSet::new();
        while let Ok(popped) = tokio::time::timeout(BACKOFF_MAX, q.pop()).await {
            assert!(back.insert(popped.key().clone()), "{} came back twice", popped.key());
            popped.done();
        }
        assert_eq!(back, keys[1..].iter().cloned().collect(), "each failed key once, not the one that succeeded");
        assert_eq!(q.retrying(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_pushed_while_its_failing_run_goes_on_runs_again_at_once_without_a_delay_entry() {
        let q = Queue::default();
        q.push(key("a"));
        let a = q.pop().await;
        q.push(key("a"));
        let delay = a.failed();
        assert_eq!(q.retrying(), 0, "the push is sooner than any backoff");
        let started = Instant::now();
        let a = q.pop().await;
        assert_eq!(a.key(), &key("a"));
        assert!(started.elapsed() < delay, "ran at once");
        a.failed();
        assert_eq!(q.retrying(), 1, "failing again waits for a backoff");
    }

    /// A guard dropped unended (a panic unwinding through the worker, an
    /// early return, a task cancelled at shutdown) fails its key: it is not
    /// left running, and it comes back after a backoff.
    #[tokio::test(start_paused = true)]
    async fn a_dropped_guard_counts_as_failed_and_requeues() {
        let q = Queue::default();
        q.push(key("a"));
        let popped = q.pop().await;
        assert_eq!(q.running(), 1);
        let worker = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _held = popped;
            panic!("a reconcile that panics");
        }));
        assert!(worker.is_err());
        assert_eq!((q.running(), q.retrying()), (0, 1), "not running, waiting for its backoff");
        let back = tokio::time::timeout(BACKOFF_BASE * 2, q.pop()).await.expect("back after its backoff");
        assert_eq!(back.key(), &key("a"));
        back.done();

        // Cancelled while holding the guard (shutdown aborts the worker).
        q.push(key("b"));
        let task = async {
            let _held = q.pop().await;
            std::future::pending::<()>().await
        };
        assert!(tokio::time::timeout(Duration::from_millis(1), task).await.is_err());
        assert_eq!((q.running(), q.retrying()), (0, 1), "b failed when its future was dropped");
    }
}
