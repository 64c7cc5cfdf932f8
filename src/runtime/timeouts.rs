//! Every bound the runtime puts on waiting for the apiserver or DNS, in one
//! place: a leaf the other runtime modules import.

use std::time::Duration;

/// Server-side timeout of each watch request. The watcher also gives up on a
/// stream silent for 5 s longer, so a half-open connection is replaced within
/// 35 s. Short on purpose: a reconnect can land on another dead connection
/// from the client's pool and need a second cycle, and two must fit in the
/// 2 minutes we promise.
pub const WATCH_TIMEOUT_SECS: u32 = 30;
/// Client-side bound on a read from the apiserver going idle (lists included,
/// which the watch idle timeout does not cover). Above WATCH_TIMEOUT_SECS, so
/// a quiet but live watch is never cut.
pub const READ_TIMEOUT: Duration = Duration::from_secs(45);
/// How long one DNS query may take before it counts as a failure.
pub const DNS_TIMEOUT: Duration = Duration::from_secs(3);

/// Bound on each API call a reconcile makes: a stalled connection must not
/// pin a worker and its key.
pub const API_TIMEOUT: Duration = Duration::from_secs(10);
