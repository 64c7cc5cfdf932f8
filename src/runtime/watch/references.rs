//! Secrets and ConfigMaps, by metadata only: their contents are read per
//! reconcile, so memory does not grow with unrelated objects. A change queues
//! the XBackends that reference the object.

use std::collections::BTreeSet;

use kube::api::Api;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;

use super::{Affected, Indexer};
use crate::decode::WatchedMeta;
use crate::model::ObjectRef;
use crate::model::RefKind;
use crate::runtime::state::State;

/// `K` (Secret or ConfigMap), referenced as `kind`.
pub struct References<K> {
    pub kind: RefKind,
    pub resource: std::marker::PhantomData<fn() -> K>,
}

impl<K> References<K> {
    pub fn new(kind: RefKind) -> Self {
        References { kind, resource: std::marker::PhantomData }
    }
}

impl<K> Indexer for References<K>
where
    K: Resource + Clone + std::fmt::Debug + DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default,
{
    type Resource = WatchedMeta<K>;
    const KEEPS_OBJECTS: bool = false;

    fn name(&self) -> &'static str {
        match self.kind {
            RefKind::Secret => "Secret",
            RefKind::ConfigMap => "ConfigMap",
        }
    }
    fn api(&self, client: &Client) -> Api<WatchedMeta<K>> {
        Api::all(client.clone())
    }
    fn apply(&self, state: &State, key: ObjectRef, _: &WatchedMeta<K>) -> Result<Affected, String> {
        Ok(Affected::Keys(state.referencing(self.kind, &key)))
    }
    fn delete(&self, state: &State, key: &ObjectRef) -> Affected {
        Affected::Keys(state.referencing(self.kind, key))
    }
    /// A re-list hides what changed while the watch was down: recheck every
    /// XBackend (unchanged results write nothing).
    fn reset(&self, _: &State, _: &BTreeSet<ObjectRef>, relist: bool) -> Affected {
        if relist { Affected::Every } else { Affected::none() }
    }
}
