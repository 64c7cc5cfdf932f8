//! The long-lived tasks (watches, writers' workers, the DNS check, the
//! leader's pass), each spawned by name from a factory, so that one that
//! ends is noticed: `/readyz` names it while it is down, it starts again
//! after a backoff, and one that keeps ending stops the process with an
//! error instead of leaving it deaf but ready.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::task::{Id, JoinSet};
use tokio::time::Instant;
use tracing::{error, warn};

use super::metrics::{Metrics, TaskLabel};
use super::queue::backoff;

/// A task that ends more often than this within `RESTART_WINDOW` is not
/// started again: the process exits, and its supervisor (kubelet) restarts it.
pub const MAX_RESTARTS: usize = 5;
pub const RESTART_WINDOW: Duration = Duration::from_secs(600);
const RESTART_BASE: Duration = Duration::from_secs(1);
const RESTART_MAX: Duration = Duration::from_secs(30);

/// The tasks that are down now, by name (with how many of that name).
#[derive(Default)]
pub struct Health {
    down: Mutex<BTreeMap<&'static str, usize>>,
}

impl Health {
    /// Names of the tasks that ended and have not started again.
    pub fn down(&self) -> Vec<&'static str> {
        self.lock().keys().copied().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, usize>> {
        self.down.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn mark(&self, name: &'static str, down: bool) {
        let mut map = self.lock();
        let count = map.entry(name).or_default();
        if down {
            *count += 1;
        } else {
            *count = count.saturating_sub(1);
        }
        if *count == 0 {
            map.remove(name);
        }
    }
}

type Factory = Box<dyn Fn() -> BoxFuture<'static, ()> + Send>;

struct Entry {
    name: &'static str,
    make: Factory,
    /// When it ended lately (within `RESTART_WINDOW`).
    ends: VecDeque<Instant>,
}

/// A long-lived task ended too often to start again.
#[derive(Debug, thiserror::Error)]
#[error("task {name} ended {MAX_RESTARTS} times within {window}s (last: {why}); exiting so the Pod restarts", window = RESTART_WINDOW.as_secs())]
pub struct GaveUp {
    pub name: &'static str,
    pub why: String,
}

pub struct Tasks {
    set: JoinSet<()>,
    entries: HashMap<Id, Entry>,
    /// Ended tasks waiting for their backoff, by when they start again.
    waiting: Vec<(Instant, Entry)>,
    pub health: Arc<Health>,
    metrics: Arc<Metrics>,
}

impl Tasks {
    pub fn new(metrics: Arc<Metrics>) -> Tasks {
        Tasks { set: JoinSet::new(), entries: HashMap::new(), waiting: Vec::new(), health: Arc::default(), metrics }
    }

    /// Starts a long-lived task; `make` builds it again when it ends.
    pub fn spawn<F, Fut>(&mut self, name: &'static str, make: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let make: Factory = Box::new(move || Box::pin(make()));
        self.start(Entry { name, make, ends: VecDeque::new() });
    }

    fn start(&mut self, entry: Entry) {
        let handle = self.set.spawn((entry.make)());
        self.entries.insert(handle.id(), entry);
    }

    /// Watches the tasks until one ends more often than `MAX_RESTARTS`
    /// within `RESTART_WINDOW`; every other end is counted, shown on
    /// `/readyz` while the task is down, and followed by a restart after a
    /// backoff.
    pub async fn supervise(&mut self) -> GaveUp {
        loop {
            let next_start = self.waiting.iter().map(|(at, _)| *at).min();
            let sleep = async {
                match next_start {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ended = self.set.join_next_with_id(), if !self.set.is_empty() => {
                    let (id, why) = match ended.expect("the set is not empty") {
                        Ok((id, ())) => (id, "it returned".to_string()),
                        Err(e) if e.is_panic() => {
                            let id = e.id();
                            (id, format!("panicked: {}", panic_message(&*e.into_panic())))
                        }
                        Err(e) => (e.id(), "it was cancelled".to_string()),
                    };
                    let Some(mut entry) = self.entries.remove(&id) else { continue };
                    let now = Instant::now();
                    entry.ends.retain(|at| now.duration_since(*at) < RESTART_WINDOW);
                    entry.ends.push_back(now);
                    self.metrics.task_ends.get_or_create(&TaskLabel::of(entry.name)).inc();
                    self.health.mark(entry.name, true);
                    if entry.ends.len() >= MAX_RESTARTS {
                        error!(task = entry.name, why, "a long-lived task keeps ending; giving up");
                        return GaveUp { name: entry.name, why };
                    }
                    let delay = backoff(entry.ends.len() as u32, RESTART_BASE, RESTART_MAX);
                    warn!(task = entry.name, why, ?delay, "a long-lived task ended; starting it again after a backoff");
                    self.waiting.push((now + delay, entry));
                }
                () = sleep => {
                    let now = Instant::now();
                    let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting).into_iter().partition(|(at, _)| *at <= now);
                    self.waiting = later;
                    for (_, entry) in due {
                        self.health.mark(entry.name, false);
                        self.start(entry);
                    }
                }
            }
        }
    }

    /// Stops every task (shutdown).
    pub fn abort_all(&mut self) {
        self.set.abort_all();
    }
}

/// What a panic carried, as text.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(message), _) => message.to_string(),
        (_, Some(message)) => message.clone(),
        _ => "(no message)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_ended_task_is_shown_down_restarted_and_given_up_on_when_it_keeps_ending() {
        let metrics = Arc::new(Metrics::default());
        let mut tasks = Tasks::new(metrics.clone());
        let health = tasks.health.clone();
        let starts = Arc::new(AtomicUsize::new(0));
        let (release_tx, release) = tokio::sync::watch::channel(0usize);
        let counter = starts.clone();
        // Each run waits for its turn, then panics.
        tasks.spawn("flaky", move || {
            let (counter, mut release) = (counter.clone(), release.clone());
            async move {
                let run = counter.fetch_add(1, Ordering::SeqCst) + 1;
                let _ = release.wait_for(|turn| *turn >= run).await;
                panic!("run {run} failed");
            }
        });
        tasks.spawn("steady", std::future::pending);
        let supervisor = tokio::spawn(async move { tasks.supervise().await });

        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(health.down().is_empty(), "both running");
        release_tx.send_replace(1);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(health.down(), ["flaky"], "/readyz names it while it is down");
        assert_eq!(metrics.task_ends.get_or_create(&TaskLabel::of("flaky")).get(), 1);
        tokio::time::sleep(RESTART_BASE).await;
        assert!(health.down().is_empty(), "started again after its backoff");
        assert_eq!(starts.load(Ordering::SeqCst), 2);

        release_tx.send_replace(MAX_RESTARTS);
        let gave_up = tokio::time::timeout(RESTART_WINDOW, supervisor).await.expect("gives up").unwrap();
        assert_eq!(gave_up.name, "flaky");
        assert!(gave_up.why.contains("panicked: run 5 failed"), "{}", gave_up.why);
        assert_eq!(starts.load(Ordering::SeqCst), MAX_RESTARTS);
        assert!(gave_up.to_string().starts_with("task flaky ended 5 times"), "{gave_up}");
    }

    #[tokio::test(start_paused = true)]
    async fn ends_spread_over_more_than_the_window_are_restarted_forever() {
        let metrics = Arc::new(Metrics::default());
        let mut tasks = Tasks::new(metrics.clone());
        tasks.spawn("slow", || async { tokio::time::sleep(RESTART_WINDOW / 2).await });
        let outcome = tokio::time::timeout(RESTART_WINDOW * 4, tasks.supervise()).await;
        assert!(outcome.is_err(), "never gives up");
        assert!(metrics.task_ends.get_or_create(&TaskLabel::of("slow")).get() >= 6);
    }
}
