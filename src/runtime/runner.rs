//! One runner for every writer (docs/design.md §11.7): workers take keys
//! from a `Queue` once every watch has synced and while this replica leads,
//! run each with its panics caught and counted, and end it as the work
//! says: done, or back to the queue's backoff. Reconcile, the egress policy
//! writer and the GatewayClass writer are each one `Work`.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use tokio::sync::watch;
use tracing::{debug, error, warn};

use super::leader::Leadership;
use super::metrics::{Metrics, TaskLabel, WriterLabel};
use super::queue::{Key, Popped, Queue};
use super::tasks::panic_message;
use super::timeouts::API_TIMEOUT;

/// How one run of a key ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// Nothing left to do for now: the key's failure count starts over.
    Done,
    /// Run it again after a backoff: a failure, or a write the Lease did not allow yet.
    Retry,
}

/// What a writer does with one key.
pub trait Work: Send + Sync + 'static {
    type Key: Key;
    /// The task's name in logs and in `xbackend_panics_total{task}`.
    const TASK: &'static str;
    fn run(&self, key: &Self::Key) -> impl Future<Output = Finish> + Send;
}

/// A writer's work with its queue and the gates it runs behind.
pub struct Runner<W: Work> {
    pub work: W,
    pub queue: Arc<Queue<W::Key>>,
    pub leadership: Leadership,
    /// True once every watch has synced.
    pub ready: watch::Receiver<bool>,
    pub metrics: Arc<Metrics>,
}

impl<W: Work> Runner<W> {
    /// Spawns `workers` workers into `tasks`; they stop taking keys once `stop` is true.
    pub fn spawn(self: &Arc<Self>, workers: usize, tasks: &mut super::tasks::Tasks, stop: &watch::Receiver<bool>) {
        for _ in 0..workers.max(1) {
            let (runner, stop) = (self.clone(), stop.clone());
            tasks.spawn(W::TASK, move || worker(runner.clone(), stop.clone()));
        }
    }

    /// One key: its work with panics caught, then the guard ended by the outcome.
    pub async fn run_one(&self, popped: Popped<'_, W::Key>) {
        let outcome = AssertUnwindSafe(self.work.run(popped.key())).catch_unwind().await;
        match outcome {
            Ok(Finish::Done) => popped.done(),
            Ok(Finish::Retry) => {
                let key = popped.key().to_string();
                let retry_in = popped.failed();
                debug!(task = W::TASK, key, ?retry_in, "retrying after a backoff");
            }
            Err(panic) => {
                self.metrics.panics.get_or_create(&TaskLabel::of(W::TASK)).inc();
                let key = popped.key().to_string();
                let retry_in = popped.failed();
                error!(
                    task = W::TASK,
                    key,
                    panic = panic_message(&*panic),
                    ?retry_in,
                    "panicked; the key is retried after a backoff"
                );
            }
        }
    }
}

/// One API call of a writer, bounded by `API_TIMEOUT`: `Some(true)` when it
/// wrote, `Some(false)` when it was moot (404 or 409: the watch brings the
/// news and queues the key again), None when it failed (counted in
/// `xbackend_write_failures_total{writer}` and logged; the caller retries).
pub async fn bounded_write(
    metrics: &Metrics,
    writer: &'static str,
    key: &str,
    call: impl Future<Output = kube::Result<()>>,
) -> Option<bool> {
    let error = match tokio::time::timeout(API_TIMEOUT, call).await {
        Ok(Ok(())) => return Some(true),
        Ok(Err(kube::Error::Api(status))) if status.code == 404 || status.code == 409 => return Some(false),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("timed out after {}s", API_TIMEOUT.as_secs()),
    };
    metrics.write_failures.get_or_create(&WriterLabel::of(writer)).inc();
    warn!(writer, key, error, "write failed; retrying after a backoff");
    None
}

/// Takes keys while this replica leads, until `stop`.
async fn worker<W: Work>(runner: Arc<Runner<W>>, mut stop: watch::Receiver<bool>) {
    let mut ready = runner.ready.clone();
    if ready.wait_for(|r| *r).await.is_err() {
        return;
    }
    let mut leading = runner.leadership.changes();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            led = leading.wait_for(|l| *l) => if led.is_err() { return },
        }
        let popped = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            popped = runner.queue.pop() => popped,
        };
        runner.run_one(popped).await;
    }
}
