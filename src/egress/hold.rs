//! The address hold-down (docs/design.md §6b): an address a hostname
//! answered stays allowed for a while after the answer moves on, so a
//! rotating answer does not cut connections a client still makes to an
//! address it cached.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Addresses a hostname's answers have held, each with when it was last
/// seen, so a rotating answer does not cut connections a client still makes
/// to an address it cached (docs/design.md §6b, hold-down).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// Per hostname, each address with when it was last seen; a short list
    /// (a tree per hostname would cost more than its few entries).
    seen: BTreeMap<Box<str>, Vec<(IpAddr, i64)>>,
    /// Whether the standing policies have seeded it (once per process).
    pub(super) seeded: bool,
}

/// Hold-down settings (`--egress-address-hold`, `--egress-max-addresses-per-host`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hold {
    pub seconds: i64,
    pub max_per_host: usize,
}

impl Default for Hold {
    fn default() -> Self {
        Hold { seconds: 3600, max_per_host: 64 }
    }
}

impl Held {
    fn entry(&mut self, hostname: &str) -> &mut Vec<(IpAddr, i64)> {
        if !self.seen.contains_key(hostname) {
            // Most hostnames answer one address: room for more only when needed.
            self.seen.insert(hostname.into(), Vec::with_capacity(1));
        }
        self.seen.get_mut(hostname).expect("just inserted")
    }

    /// Records a vetted answer for `hostname` at `now` (Unix seconds) and
    /// returns the addresses to allow: this answer's, plus earlier ones seen
    /// within the hold that `denied` does not refuse now, at most
    /// `max_per_host`, the least recently seen leaving first. The second value
    /// counts the addresses the cap evicted.
    ///
    /// A failed lookup is not an answer: call `held` instead, which keeps what is held.
    pub fn observe(
        &mut self,
        hostname: &str,
        answer: &[IpAddr],
        now: i64,
        hold: Hold,
        denied: impl Fn(IpAddr) -> bool,
    ) -> (BTreeSet<IpAddr>, usize) {
        let seen = self.entry(hostname);
        for ip in answer {
            match seen.iter_mut().find(|(held, _)| held == ip) {
                Some(entry) => entry.1 = now,
                None => seen.push((*ip, now)),
            }
        }
        seen.retain(|(ip, last)| now - *last <= hold.seconds && !denied(*ip));
        let mut evicted = 0;
        while seen.len() > hold.max_per_host.max(1) {
            let oldest = (0..seen.len()).min_by_key(|i| (seen[*i].1, seen[*i].0)).expect("non-empty");
            seen.swap_remove(oldest);
            evicted += 1;
        }
        (seen.iter().map(|(ip, _)| *ip).collect(), evicted)
    }

    /// Addresses a policy already allows, as if seen at `now`.
    pub(super) fn seed(&mut self, hostname: &str, addresses: impl IntoIterator<Item = IpAddr>, now: i64) {
        let seen = self.entry(hostname);
        for ip in addresses {
            if !seen.iter().any(|(held, _)| *held == ip) {
                seen.push((ip, now));
            }
        }
    }

    /// Hostnames held.
    pub fn hostnames(&self) -> Vec<String> {
        self.seen.keys().map(|h| h.to_string()).collect()
    }

    /// What is held for `hostname` at `now`, without a new answer.
    pub fn held(&self, hostname: &str, now: i64, hold: Hold) -> BTreeSet<IpAddr> {
        let seen = self.seen.get(hostname).into_iter().flatten();
        seen.filter(|(_, last)| now - *last <= hold.seconds).map(|(ip, _)| *ip).collect()
    }

    /// Forgets a hostname: its XBackend is no longer Accepted or is gone, and
    /// its addresses leave at once.
    pub fn forget(&mut self, hostname: &str) {
        self.seen.remove(hostname);
    }
}
