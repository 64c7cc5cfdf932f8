//! Work queue of XBackends to reconcile: deduplicated, and never the same key
//! on two workers at once (a key pushed while running runs again afterwards).

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::model::ObjectRef;

#[derive(Default)]
pub struct Queue {
    state: Mutex<State>,
    notify: Notify,
}

#[derive(Default)]
struct State {
    order: VecDeque<ObjectRef>,
    queued: HashSet<ObjectRef>,
    running: HashSet<ObjectRef>,
    again: HashSet<ObjectRef>,
}

impl Queue {
    pub fn push(&self, key: ObjectRef) {
        let mut s = self.state.lock().expect("queue lock");
        if s.running.contains(&key) {
            s.again.insert(key);
        } else if s.queued.insert(key.clone()) {
            s.order.push_back(key);
            drop(s);
            self.notify.notify_one();
        }
    }

    pub fn extend(&self, keys: impl IntoIterator<Item = ObjectRef>) {
        keys.into_iter().for_each(|k| self.push(k));
    }

    /// Waits for the next key and marks it running; call `done` after.
    pub async fn pop(&self) -> ObjectRef {
        loop {
            let notified = self.notify.notified();
            {
                let mut s = self.state.lock().expect("queue lock");
                if let Some(key) = s.order.pop_front() {
                    s.queued.remove(&key);
                    s.running.insert(key.clone());
                    if !s.order.is_empty() {
                        // Wake another idle worker for the rest.
                        self.notify.notify_one();
                    }
                    return key;
                }
            }
            notified.await;
        }
    }

    pub fn done(&self, key: &ObjectRef) {
        let again = {
            let mut s = self.state.lock().expect("queue lock");
            s.running.remove(key);
            s.again.remove(key)
        };
        if again {
            self.push(key.clone());
        }
    }

    /// Keys being reconciled right now.
    pub fn running(&self) -> usize {
        self.state.lock().expect("queue lock").running.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: &str) -> ObjectRef {
        ObjectRef::new("ns", n)
    }

    #[tokio::test]
    async fn deduplicates_and_keeps_order() {
        let q = Queue::default();
        q.push(key("a"));
        q.push(key("b"));
        q.push(key("a"));
        assert_eq!(q.pop().await, key("a"));
        assert_eq!(q.pop().await, key("b"));
        assert_eq!(q.running(), 2, "both still running");
    }

    #[tokio::test]
    async fn a_key_pushed_while_running_runs_again_after_done() {
        let q = Queue::default();
        q.push(key("a"));
        let a = q.pop().await;
        q.push(key("a"));
        assert_eq!(q.state.lock().unwrap().order.len(), 0, "not queued while running");
        q.done(&a);
        assert_eq!(q.pop().await, key("a"));
    }
}
