//! Leadership: kube-lease-manager acquires and renews the Lease; a watch on
//! the Lease tells how long our hold is valid, and the writer checks that
//! right before each status patch (a fence, not only a gate before work starts).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::sync::watch as channel;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::error::Error;

/// Stop writing this long before the Lease would expire: a patch in flight
/// must land before another replica may take over.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(2);

/// Whether this replica may write now.
#[derive(Clone)]
pub struct Leadership {
    /// True while kube-lease-manager holds the Lease for us (or always, without election).
    leading: channel::Receiver<bool>,
    /// Until when the last renewal we saw on the Lease lets us write; None
    /// without election (always valid).
    valid_until: Option<Arc<Mutex<SystemTime>>>,
    /// Without election: the sender of a channel that stays true.
    _always: Option<Arc<channel::Sender<bool>>>,
}

impl Leadership {
    /// A single replica without election: always the leader.
    pub fn always() -> Leadership {
        let (tx, rx) = channel::channel(true);
        Leadership { leading: rx, valid_until: None, _always: Some(Arc::new(tx)) }
    }

    /// A leadership the test flips through the returned sender.
    #[cfg(test)]
    pub fn switchable(leading: bool) -> (Leadership, channel::Sender<bool>) {
        let (tx, rx) = channel::channel(leading);
        (Leadership { leading: rx, valid_until: None, _always: None }, tx)
    }

    /// Changes of the lease manager's view (for the workers' gate and the full pass on takeover).
    pub fn changes(&self) -> channel::Receiver<bool> {
        self.leading.clone()
    }

    /// The write-time check: we hold the Lease and its last renewal has not run out.
    pub fn may_write(&self) -> bool {
        *self.leading.borrow()
            && self.valid_until.as_ref().is_none_or(|v| SystemTime::now() < *v.lock().expect("lease lock"))
    }
}

/// Until when a Lease lets `identity` write: renewTime (or acquireTime) plus
/// its duration minus `EXPIRY_MARGIN`; the epoch when someone else holds it.
pub fn valid_until(lease: &Lease, identity: &str) -> SystemTime {
    let Some(spec) = &lease.spec else { return SystemTime::UNIX_EPOCH };
    if spec.holder_identity.as_deref() != Some(identity) {
        return SystemTime::UNIX_EPOCH;
    }
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()).map(|t| SystemTime::from(t.0));
    let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64);
    match renewed {
        Some(at) => (at + duration).checked_sub(EXPIRY_MARGIN).unwrap_or(SystemTime::UNIX_EPOCH),
        None => SystemTime::UNIX_EPOCH,
    }
}

pub struct Election {
    pub leadership: Leadership,
    /// Forwards the manager's view; aborting it makes the manager release the Lease.
    forwarder: JoinHandle<()>,
    manager: JoinHandle<Result<kube_lease_manager::LeaseManager, kube_lease_manager::LeaseManagerError>>,
    lease_watch: JoinHandle<()>,
}

pub struct LeaseArgs<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub identity: &'a str,
    pub duration: u64,
}

pub async fn elect(client: &Client, args: LeaseArgs<'_>) -> Result<Election, Error> {
    let duration = args.duration.max(3);
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), args.name)
        .with_namespace(args.namespace)
        .with_identity(args.identity)
        .with_duration(duration)
        .with_grace((duration / 3).max(1))
        .build()
        .await
        .map_err(Error::Lease)?;
    let (mut rx, manager) = manager.watch().await;
    info!(lease = args.name, namespace = args.namespace, identity = args.identity, "leader election started");
    let (leading_tx, leading) = channel::channel(false);
    let forwarder = tokio::spawn(async move {
        loop {
            // Only a change of value: each notification starts a full pass.
            let now = *rx.borrow_and_update();
            leading_tx.send_if_modified(|leading| std::mem::replace(leading, now) != now);
            if rx.changed().await.is_err() {
                leading_tx.send_replace(false);
                return;
            }
        }
    });
    let valid = Arc::new(Mutex::new(SystemTime::UNIX_EPOCH));
    let lease_watch = tokio::spawn(watch_lease(
        Api::namespaced(client.clone(), args.namespace),
        args.name.to_string(),
        args.identity.to_string(),
        valid.clone(),
    ));
    Ok(Election {
        leadership: Leadership { leading, valid_until: Some(valid), _always: None },
        forwarder,
        manager,
        lease_watch,
    })
}

/// Follows our Lease: every renewal moves `valid` on; a Lease held by someone
/// else (or deleted) ends our validity at once.
async fn watch_lease(api: Api<Lease>, name: String, identity: String, valid: Arc<Mutex<SystemTime>>) {
    let config = watcher::Config::default()
        .fields(&format!("metadata.name={name}"))
        .timeout(super::timeouts::WATCH_TIMEOUT_SECS);
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    while let Some(event) = stream.next().await {
        let until = match event {
            Ok(Event::Apply(lease) | Event::InitApply(lease)) => valid_until(&lease, &identity),
            Ok(Event::Delete(_)) => SystemTime::UNIX_EPOCH,
            Ok(Event::Init | Event::InitDone) => continue,
            Err(e) => {
                warn!(error = %e, "Lease watch error; retrying");
                continue;
            }
        };
        tracing::debug!(valid_for = ?until.duration_since(SystemTime::now()).ok(), "Lease seen");
        *valid.lock().expect("lease lock") = until;
    }
}

impl Election {
    /// Waits until a part of the election ends (the lease manager, or the
    /// watch of our Lease): neither restarts, and without them this replica
    /// can neither lead nor know its hold, so the process must exit.
    pub async fn ended(&mut self) -> &'static str {
        tokio::select! {
            _ = &mut self.manager => "the lease manager ended",
            _ = &mut self.lease_watch => "the Lease watch ended",
        }
    }

    /// Releases the Lease so a standby takes over at once instead of after expiry.
    pub async fn release(self) {
        self.lease_watch.abort();
        // Dropping the last receiver makes the manager task release the Lease.
        self.forwarder.abort();
        let _ = self.forwarder.await;
        match tokio::time::timeout(Duration::from_secs(5), self.manager).await {
            Ok(Ok(Ok(_))) => info!("leader Lease released"),
            Ok(Ok(Err(e))) => warn!(error = %e, "could not release the leader Lease"),
            _ => warn!("leader Lease release timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn lease(holder: &str, renewed: SystemTime, seconds: i32) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                renew_time: Some(MicroTime(renewed.try_into().unwrap())),
                lease_duration_seconds: Some(seconds),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        }
    }

    #[test]
    fn a_lease_is_valid_for_its_holder_until_renewal_plus_duration_minus_margin() {
        let now = SystemTime::now();
        let until = valid_until(&lease("me", now, 15), "me");
        let expected = now + Duration::from_secs(15) - EXPIRY_MARGIN;
        let diff = until.duration_since(expected).unwrap_or_else(|e| e.duration());
        assert!(diff < Duration::from_millis(1), "{until:?} vs {expected:?}");
        assert_eq!(valid_until(&lease("someone-else", now, 15), "me"), SystemTime::UNIX_EPOCH);
        assert_eq!(valid_until(&Lease::default(), "me"), SystemTime::UNIX_EPOCH);
    }

    #[test]
    fn may_write_needs_the_manager_and_an_unexpired_renewal() {
        let (tx, rx) = channel::channel(true);
        let valid = Arc::new(Mutex::new(SystemTime::now() + Duration::from_secs(10)));
        let l = Leadership { leading: rx, valid_until: Some(valid.clone()), _always: None };
        assert!(l.may_write());
        // Renewal overdue: the manager still believes it leads, the fence says no.
        *valid.lock().unwrap() = SystemTime::now() - Duration::from_millis(1);
        assert!(!l.may_write(), "overdue renewal");
        *valid.lock().unwrap() = SystemTime::now() + Duration::from_secs(10);
        tx.send_replace(false);
        assert!(!l.may_write(), "lost the Lease");
        assert!(Leadership::always().may_write());
    }
}
