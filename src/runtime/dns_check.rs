//! The resolved-address check's runtime: one scheduler for every hostname,
//! off the status-writing path, re-resolving each at its clamped TTL and
//! queueing the XBackends that use a hostname whenever its answer changes.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::metrics::{Metrics, ResultLabel};
use super::queue::Queue;
use super::state::State;
use crate::dns::{self, LookupError, Resolution, Resolver};

/// Lookups in flight at once, whatever the number of hostnames.
const CONCURRENT_LOOKUPS: usize = 16;
/// At most one failure log line per this interval (the metric counts them all).
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(30);

/// What is known of one hostname so far.
#[derive(Clone, Debug, Default)]
struct Host {
    /// The first lookup finished (answered or failed).
    done: bool,
    /// The latest answer; a failure keeps the previous one.
    answer: Option<Arc<Resolution>>,
    /// A reconcile stopped waiting before the first lookup finished: its
    /// XBackends must be queued once it does.
    waited_out: bool,
}

/// The hostnames in use, their latest answers and when each is next resolved.
///
/// One task schedules every hostname and a task exists only per lookup in
/// flight: a sleeping task per hostname held a lookup future's worth of memory
/// each (16 MiB at 10,000 hostnames).
pub struct DnsCheck {
    resolver: Resolver,
    state: Arc<State>,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
    min_ttl: Duration,
    max_ttl: Duration,
    limit: Arc<Semaphore>,
    hosts: Mutex<HashMap<Box<str>, Host>>,
    /// Wakes whoever waits for a first lookup (each then checks its own
    /// hostname): one Notify for all rather than a channel per hostname.
    first_done: Notify,
    /// (when, hostname): the next lookup of each hostname not in flight.
    due: Mutex<BTreeSet<(Instant, Box<str>)>>,
    wake: Arc<Notify>,
    last_failure_log: AtomicU64,
    started: Instant,
}

impl DnsCheck {
    /// Starts the scheduler (supervised, given `tasks`); it ends when the tracker is dropped.
    pub fn start(
        resolver: Resolver,
        (min_ttl, max_ttl): (Duration, Duration),
        state: Arc<State>,
        queue: Arc<Queue>,
        metrics: Arc<Metrics>,
        tasks: Option<&mut super::tasks::Tasks>,
    ) -> Arc<DnsCheck> {
        let tracker = Arc::new(DnsCheck {
            resolver,
            state,
            queue,
            metrics,
            min_ttl,
            max_ttl,
            limit: Arc::new(Semaphore::new(CONCURRENT_LOOKUPS)),
            hosts: Mutex::default(),
            due: Mutex::default(),
            wake: Arc::new(Notify::new()),
            first_done: Notify::new(),
            last_failure_log: AtomicU64::new(0),
            started: Instant::now(),
        });
        let (weak, wake) = (Arc::downgrade(&tracker), tracker.wake.clone());
        let found = tracker.resolver.found();
        tracker.metrics.dns_servers.set(tracker.resolver.server_count() as i64);
        match tasks {
            Some(tasks) => {
                let again = weak.clone();
                tasks.spawn("dns-check", move || schedule(again.clone(), wake.clone()));
                if let Some(found) = found {
                    tasks.spawn("dns-servers", move || recheck_on_change(weak.clone(), found.clone()));
                }
            }
            None => {
                tokio::spawn(schedule(weak.clone(), wake));
                if let Some(found) = found {
                    tokio::spawn(recheck_on_change(weak, found));
                }
            }
        }
        tracker
    }

    /// Every hostname waiting for its next lookup is due now: a DNS server
    /// joined or left, and its answers may differ from the others'. Lookups in
    /// flight reschedule themselves (`lookup` compares the set's generation).
    fn recheck_all(&self) {
        let now = Instant::now();
        let mut due = self.due.lock().expect("dns schedule lock");
        *due = std::mem::take(&mut *due).into_iter().map(|(at, hostname)| (at.min(now), hostname)).collect();
        drop(due);
        self.wake.notify_one();
    }

    /// The latest answer for `hostname` (normalized). The first call schedules
    /// its first lookup; until that finishes, callers wait for it up to
    /// `first_wait`, so an XBackend is not shown Accepted before its addresses
    /// were checked. None: no answer yet (or only failures).
    pub async fn resolution(&self, hostname: &str, first_wait: Duration) -> Option<Arc<Resolution>> {
        // Every XBackend naming a hostname whose first lookup is still running
        // waits for it (bounded), not only the one that started it.
        let deadline = Instant::now() + first_wait;
        loop {
            let notified = self.first_done.notified();
            tokio::pin!(notified);
            // Registered before the check, so a lookup finishing in between still wakes us.
            notified.as_mut().enable();
            {
                let mut hosts = self.hosts.lock().expect("dns hosts lock");
                match hosts.get(hostname) {
                    Some(lookup) if lookup.done => return lookup.answer.clone(),
                    Some(_) => {}
                    None => {
                        hosts.insert(hostname.into(), Host::default());
                        self.metrics.dns_hostnames.set(hosts.len() as i64);
                        // Due at the tracker's start: a first lookup, which a
                        // reconcile waits for, goes before every re-resolution
                        // (at 50,000 hostnames some are always overdue).
                        self.schedule_at(self.started, hostname.into());
                    }
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let mut hosts = self.hosts.lock().expect("dns hosts lock");
                let lookup = hosts.get_mut(hostname)?;
                if !lookup.done {
                    lookup.waited_out = true;
                    self.metrics.dns_slow_first_lookups.inc();
                }
                return lookup.answer.clone();
            }
        }
    }

    /// The latest answer for `hostname` (normalized) without waiting: the
    /// egress decider's view of an ExternalName Service's name. The first
    /// call schedules its first lookup; its answer wakes the decider.
    pub fn cached(&self, hostname: &str) -> Option<Arc<Resolution>> {
        let mut hosts = self.hosts.lock().expect("dns hosts lock");
        match hosts.get(hostname) {
            Some(lookup) => lookup.answer.clone(),
            None => {
                hosts.insert(hostname.into(), Host { waited_out: true, ..Host::default() });
                self.metrics.dns_hostnames.set(hosts.len() as i64);
                drop(hosts);
                self.schedule_at(self.started, hostname.into());
                None
            }
        }
    }

    fn schedule_at(&self, at: Instant, hostname: Box<str>) {
        self.due.lock().expect("dns schedule lock").insert((at, hostname));
        self.wake.notify_one();
    }

    /// The earliest hostname due by `now`, or when the next one is due.
    fn take_next(&self, now: Instant) -> Result<Box<str>, Option<Instant>> {
        let mut due = self.due.lock().expect("dns schedule lock");
        match due.first() {
            Some((at, _)) if *at <= now => Ok(due.pop_first().expect("first entry").1),
            next => Err(next.map(|(at, _)| *at)),
        }
    }

    /// One lookup of `hostname`; schedules the next unless no XBackend names it any more.
    async fn lookup(self: Arc<Self>, hostname: Box<str>, permit: OwnedSemaphorePermit) {
        if self.state.backends_with_hostname(&hostname).is_empty() && !self.state.external_name_in_use(&hostname) {
            let mut hosts = self.hosts.lock().expect("dns hosts lock");
            hosts.remove(&hostname);
            self.metrics.dns_hostnames.set(hosts.len() as i64);
            return;
        }
        let servers = self.resolver.generation();
        let result = self.resolver.resolve(&hostname).await;
        drop(permit);
        let (wait, requeue) = match result {
            Ok(resolution) => {
                self.metrics.dns_lookups.get_or_create(&ResultLabel::of("ok")).inc();
                let wait = dns::clamp_ttl(resolution.ttl, self.min_ttl, self.max_ttl);
                (wait, self.record(&hostname, Some(resolution)))
            }
            Err(error) => {
                self.metrics.dns_lookups.get_or_create(&ResultLabel::of(error.label())).inc();
                self.log_failure(&hostname, error);
                (self.min_ttl, self.record(&hostname, None))
            }
        };
        if requeue {
            self.queue.extend(self.state.backends_with_hostname(&hostname));
            // An ExternalName Service's answer feeds the egress policies directly.
            if self.state.external_name_in_use(&hostname) {
                self.state.egress_changed.notify_one();
            }
        }
        // The server set changed meanwhile (recheck_all could not reschedule a
        // lookup in flight): ask the new set now.
        let wait = if self.resolver.generation() == servers { wait } else { Duration::ZERO };
        self.schedule_at(Instant::now() + wait, hostname);
    }

    /// Marks the first lookup done and keeps a new answer; returns whether the
    /// XBackends naming the hostname must be reconciled again. A failure
    /// (None), or a chain whose end gave no address, keeps the last
    /// addresses: a failure never flips a verdict.
    fn record(&self, hostname: &str, resolution: Option<Resolution>) -> bool {
        let mut hosts = self.hosts.lock().expect("dns hosts lock");
        let Some(lookup) = hosts.get_mut(hostname) else { return false };
        let first = !std::mem::replace(&mut lookup.done, true);
        let answered = match resolution {
            None => false,
            Some(mut resolution) => {
                if resolution.addresses.is_empty()
                    && let Some(old) = lookup.answer.as_ref()
                {
                    resolution.addresses = old.addresses.clone();
                }
                let changed = lookup.answer.as_ref().is_none_or(|old| !old.same_answer(&resolution));
                if changed {
                    lookup.answer = Some(Arc::new(resolution));
                }
                changed
            }
        };
        // Whoever asked before the first answer waited for it, unless it gave
        // up: requeueing them all would reconcile every XBackend twice at a
        // cold start, the second time from a snapshot older than its write.
        let requeue = if first { lookup.waited_out } else { answered };
        drop(hosts);
        if first {
            self.first_done.notify_waiters();
        }
        requeue
    }

    fn log_failure(&self, hostname: &str, error: LookupError) {
        let now = self.started.elapsed().as_secs().max(1);
        let last = self.last_failure_log.load(Ordering::Relaxed);
        // The first failure is always logged (`last` 0: none yet).
        if (last == 0 || now.saturating_sub(last) >= FAILURE_LOG_EVERY.as_secs())
            && self.last_failure_log.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            warn!(hostname, %error, "DNS lookup failed; the last verdict stands (further failures are only counted for a while)");
        } else {
            debug!(hostname, %error, "DNS lookup failed");
        }
    }
}

/// Starts each hostname's lookup when it is due, at most
/// `CONCURRENT_LOOKUPS` at once, and sleeps until the next one is due or a new
/// hostname arrives. A hostname is taken only once a lookup slot is free: a
/// first lookup scheduled meanwhile then still goes before every overdue
/// re-resolution, instead of behind a batch taken earlier.
async fn schedule(tracker: Weak<DnsCheck>, wake: Arc<Notify>) {
    loop {
        let Some(limit) = tracker.upgrade().map(|t| t.limit.clone()) else { return };
        let permit = limit.acquire_owned().await.expect("semaphore never closed");
        let next = {
            let Some(tracker) = tracker.upgrade() else { return };
            match tracker.take_next(Instant::now()) {
                Ok(hostname) => {
                    tokio::spawn(tracker.clone().lookup(hostname, permit));
                    continue;
                }
                Err(next) => next,
            }
        };
        drop(permit);
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

/// Follows the discovered DNS servers: each change counts them and asks every hostname again.
async fn recheck_on_change(tracker: Weak<DnsCheck>, found: Arc<dns::Found>) {
    loop {
        found.changed.notified().await;
        let Some(tracker) = tracker.upgrade() else { return };
        let servers = tracker.resolver.server_count();
        tracker.metrics.dns_servers.set(servers as i64);
        info!(servers, "DNS servers changed: asking every hostname again");
        tracker.recheck_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ExternalHostnameBackend;
    use crate::model::Object;
    use crate::model::{Backend, ObjectRef};
    use crate::runtime::state::Synced;

    /// A tracker whose DNS server never answers, so every lookup holds its slot.
    fn tracker(silent: &std::net::UdpSocket, hostnames: &[&str]) -> Arc<DnsCheck> {
        let resolver = Resolver::new(&[silent.local_addr().unwrap()], Duration::from_secs(1)).unwrap();
        tracker_with(resolver, hostnames)
    }

    fn tracker_with(resolver: Resolver, hostnames: &[&str]) -> Arc<DnsCheck> {
        let metrics = Arc::new(Metrics::default());
        let state = Arc::new(State::new(crate::index::Index::new("ctrl"), metrics.clone(), Synced::new([])));
        for (i, hostname) in hostnames.iter().enumerate() {
            let mut spec = crate::testing::plain_spec();
            spec.external_hostname = Some(ExternalHostnameBackend { hostname: hostname.to_string() });
            state.apply(ObjectRef::new("ns", format!("b{i}")), Object::XBackend(Backend::new(1, Ok(spec))));
        }
        let ttls = (Duration::from_secs(30), Duration::from_secs(300));
        DnsCheck::start(resolver, ttls, state, Arc::new(Queue::default()), metrics, None)
    }

    #[tokio::test(start_paused = true)]
    async fn a_lookup_in_flight_when_the_servers_change_is_asked_again_at_once() {
        let silent =
            [std::net::UdpSocket::bind("127.0.0.1:0").unwrap(), std::net::UdpSocket::bind("127.0.0.1:0").unwrap()];
        let (resolver, found) = Resolver::discovering(&[], Duration::from_secs(1)).unwrap();
        found.set([silent[0].local_addr().unwrap()].into()).unwrap();
        found.listed();
        let tracker = tracker_with(resolver, &["moving.example"]);
        tracker.schedule_at(tracker.started, "moving.example".into());
        // In flight once the first server got the query (nobody answers).
        silent[0].set_nonblocking(true).unwrap();
        while silent[0].peek_from(&mut [0u8; 512]).is_err() {
            tokio::task::yield_now().await;
        }
        // The set changes under it: the new server is asked as soon as that lookup ends.
        found.set([silent[1].local_addr().unwrap()].into()).unwrap();
        let changed_at = Instant::now();
        silent[1].set_nonblocking(true).unwrap();
        while silent[1].peek_from(&mut [0u8; 512]).is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let after = changed_at.elapsed();
        assert!(after < Duration::from_secs(30), "asked {after:?} after the change, not a TTL later");
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_lookup_goes_before_re_resolutions_already_overdue() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tracker = tracker(&silent, &["re-0.example", "re-1.example", "re-2.example", "first.example"]);
        // Every lookup slot busy, and re-resolutions piling up behind them.
        let mut slots = Vec::new();
        for _ in 0..CONCURRENT_LOOKUPS {
            slots.push(tracker.limit.clone().acquire_owned().await.unwrap());
        }
        tokio::time::advance(Duration::from_secs(60)).await;
        for i in 0..3 {
            tracker.schedule_at(tracker.started + Duration::from_secs(30), format!("re-{i}.example").into());
        }
        tokio::task::yield_now().await;
        tracker.schedule_at(tracker.started, "first.example".into());
        let due = || tracker.due.lock().unwrap().iter().map(|(_, h)| h.to_string()).collect::<Vec<_>>();
        drop(slots.pop());
        for _ in 0..100 {
            if due().len() < 4 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(due(), ["re-0.example", "re-1.example", "re-2.example"], "the free slot went to the first lookup");
    }
}
