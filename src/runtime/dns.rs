//! The resolved-address check's runtime: one lookup loop per distinct
//! hostname, off the status-writing path, re-resolving at the clamped TTL and
//! queueing the XBackends that use a hostname whenever its answer changes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, watch};
use tracing::{debug, warn};

use super::metrics::{Metrics, ResultLabel};
use super::queue::Queue;
use super::state::State;
use crate::dns::{self, LookupError, Resolution, Resolver};

/// Lookups in flight at once, whatever the number of hostnames.
const CONCURRENT_LOOKUPS: usize = 16;
/// At most one failure log line per this interval (the metric counts them all).
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(30);

/// What a hostname's loop has found so far.
#[derive(Clone, Debug, Default)]
struct Lookup {
    /// The first lookup finished (answered or failed).
    done: bool,
    /// The latest answer; a failure keeps the previous one.
    answer: Option<Arc<Resolution>>,
}

/// Per-hostname lookup loops and their latest answers.
pub struct Tracker {
    resolver: Resolver,
    state: Arc<State>,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
    min_ttl: Duration,
    max_ttl: Duration,
    limit: Semaphore,
    hosts: Mutex<HashMap<String, watch::Receiver<Lookup>>>,
    last_failure_log: AtomicU64,
    started: Instant,
}

impl Tracker {
    pub fn new(
        resolver: Resolver,
        (min_ttl, max_ttl): (Duration, Duration),
        state: Arc<State>,
        queue: Arc<Queue>,
        metrics: Arc<Metrics>,
    ) -> Tracker {
        Tracker {
            resolver,
            state,
            queue,
            metrics,
            min_ttl,
            max_ttl,
            limit: Semaphore::new(CONCURRENT_LOOKUPS),
            hosts: Mutex::default(),
            last_failure_log: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// The latest answer for `hostname` (normalized). The first call starts its
    /// lookup loop; until the first lookup finishes, callers wait for it up to
    /// `first_wait`, so an XBackend is not shown Accepted before its addresses
    /// were checked. None: no answer yet (or only failures).
    pub async fn resolution(self: &Arc<Self>, hostname: &str, first_wait: Duration) -> Option<Arc<Resolution>> {
        let mut rx = {
            let mut hosts = self.hosts.lock().expect("dns hosts lock");
            match hosts.get(hostname) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(Lookup::default());
                    hosts.insert(hostname.to_string(), rx.clone());
                    self.metrics.dns_hostnames.set(hosts.len() as i64);
                    tokio::spawn(lookup_loop(Arc::downgrade(self), hostname.to_string(), tx));
                    rx
                }
            }
        };
        // Every XBackend naming a hostname whose first lookup is still running
        // waits for it (bounded), not only the one that started it.
        let _ = tokio::time::timeout(first_wait, rx.wait_for(|lookup| lookup.done)).await;
        rx.borrow().answer.clone()
    }

    fn forget(&self, hostname: &str) {
        let mut hosts = self.hosts.lock().expect("dns hosts lock");
        hosts.remove(hostname);
        self.metrics.dns_hostnames.set(hosts.len() as i64);
    }

    fn log_failure(&self, hostname: &str, error: LookupError) {
        let now = self.started.elapsed().as_secs().max(1);
        let last = self.last_failure_log.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= FAILURE_LOG_EVERY.as_secs()
            && self.last_failure_log.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            warn!(hostname, %error, "DNS lookup failed; the last verdict stands (further failures are only counted for a while)");
        } else {
            debug!(hostname, %error, "DNS lookup failed");
        }
    }
}

/// Resolves `hostname` until no XBackend names it any more (or the controller
/// stops). A changed answer queues the XBackends that use the hostname; a
/// failure keeps the last answer and tries again after the minimum TTL.
async fn lookup_loop(tracker: Weak<Tracker>, hostname: String, tx: watch::Sender<Lookup>) {
    loop {
        let Some(tracker) = tracker.upgrade() else { return };
        if tracker.state.backends_with_hostname(&hostname).is_empty() {
            tracker.forget(&hostname);
            return;
        }
        let result = {
            let _permit = tracker.limit.acquire().await;
            tracker.resolver.resolve(&hostname).await
        };
        let wait = match result {
            Ok(mut resolution) => {
                tracker.metrics.dns_lookups.get_or_create(&ResultLabel::of("ok")).inc();
                // A chain whose end gave no address is a partial failure: the
                // last addresses stand (a failure never flips a verdict).
                if resolution.addresses.is_empty()
                    && let Some(old) = tx.borrow().answer.as_ref()
                {
                    resolution.addresses = old.addresses.clone();
                }
                let wait = dns::clamp_ttl(resolution.ttl, tracker.min_ttl, tracker.max_ttl);
                let changed = tx.borrow().answer.as_ref().is_none_or(|old| !old.same_answer(&resolution));
                if changed {
                    tx.send_replace(Lookup { done: true, answer: Some(Arc::new(resolution)) });
                    tracker.queue.extend(tracker.state.backends_with_hostname(&hostname));
                } else {
                    tx.send_if_modified(|lookup| !std::mem::replace(&mut lookup.done, true));
                }
                wait
            }
            Err(error) => {
                tracker.metrics.dns_lookups.get_or_create(&ResultLabel::of(error.label())).inc();
                tracker.log_failure(&hostname, error);
                tx.send_if_modified(|lookup| !std::mem::replace(&mut lookup.done, true));
                tracker.min_ttl
            }
        };
        drop(tracker);
        tokio::time::sleep(wait).await;
    }
}
