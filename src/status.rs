//! Pure status computation: verdicts for an XBackend, the entries this
//! controller wants, and their merge into the stored (shared, atomic) list.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};

use crate::api::XBackendSpec;
use crate::conditions::Verdict;
use crate::index::Index;
use crate::model::{Backend, ObjectRef};
use crate::validate::Policy;

/// The installed CRD's status layout: ours (`ancestors`/`ancestorRef`) or
/// upstream v1.6 (`parents`/`parentRef`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Shape {
    #[default]
    Ancestors,
    Parents,
}

impl Shape {
    pub fn list_field(self) -> &'static str {
        match self {
            Shape::Ancestors => "ancestors",
            Shape::Parents => "parents",
        }
    }
    pub fn ref_field(self) -> &'static str {
        match self {
            Shape::Ancestors => "ancestorRef",
            Shape::Parents => "parentRef",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdicts {
    pub accepted: Verdict,
    pub resolved_refs: Verdict,
}

/// An object the reconciler must read before it can evaluate references.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefTarget {
    Secret(ObjectRef),
    ConfigMap(ObjectRef),
}

/// Referenced objects as read; a target missing from the map does not exist.
#[derive(Clone, Debug, Default)]
pub struct Fetched {
    pub secrets: BTreeMap<ObjectRef, Secret>,
    pub config_maps: BTreeMap<ObjectRef, ConfigMap>,
}

/// The Secrets and ConfigMaps `evaluate` will look at: only supported kinds,
/// and only where a cross-namespace reference is permitted (so the controller
/// never reads a Secret it was not granted).
pub fn refs_to_fetch(key: &ObjectRef, spec: &XBackendSpec, index: &Index) -> Vec<RefTarget> {
    let _ = (key, spec, index);
    todo!()
}

/// Accepted and ResolvedRefs for one XBackend (DESIGN.md §4).
pub fn evaluate(key: &ObjectRef, backend: &Backend, index: &Index, fetched: &Fetched, policy: &Policy) -> Verdicts {
    let _ = (key, backend, index, fetched, policy);
    todo!()
}

/// A Warning or Normal Event to record on the XBackend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventNote {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

/// Events for rejections (Invalid, HostnameNotAllowed, TLSRequired) and for
/// insecure (no TLS) backends.
pub fn events(backend: &Backend, verdicts: &Verdicts) -> Vec<EventNote> {
    let _ = (backend, verdicts);
    todo!()
}

/// The result of merging our desired entries into the stored list.
#[derive(Clone, Debug, PartialEq)]
pub struct MergeOutcome {
    /// The full list to store (foreign entries untouched, in place).
    pub list: Vec<serde_json::Value>,
    /// False when `list` equals the stored one ignoring order and timestamps:
    /// nothing to write.
    pub changed: bool,
    /// How many of our entries the cap of 32 left out.
    pub truncated: usize,
}

/// Merges this controller's entries for `ancestors` (sorted) into `current`
/// (the stored list, any JSON). `now` is an RFC 3339 timestamp used only for
/// conditions whose status flips or that are new.
pub fn merge(
    current: &[serde_json::Value],
    shape: Shape,
    controller_name: &str,
    generation: i64,
    ancestors: &[ObjectRef],
    verdicts: &Verdicts,
    now: &str,
) -> MergeOutcome {
    let _ = (current, shape, controller_name, generation, ancestors, verdicts, now);
    todo!()
}
