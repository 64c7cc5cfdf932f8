//! Index kinds watched by metadata only (Pods: labels; Namespaces: names), so
//! memory stays small however many of them a cluster has.

use std::collections::BTreeSet;

use kube::api::Api;
use kube::runtime::watcher;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;

use super::{Affected, Indexer};
use crate::decode::{WatchedMeta, decode_metadata};
use crate::model::Kind;
use crate::model::ObjectRef;
use crate::runtime::state::State;

/// Finished Pods never receive traffic; the apiserver filters them out, and a
/// Pod that finishes leaves the watch as a deletion.
pub const LIVE_PODS: &str = "status.phase!=Succeeded,status.phase!=Failed";

/// `K`'s metadata into the index as `kind`, optionally filtered by a field selector.
pub struct Metadata<K> {
    pub kind: Kind,
    pub fields: Option<&'static str>,
    pub resource: std::marker::PhantomData<fn() -> K>,
}

impl<K> Metadata<K> {
    pub fn new(kind: Kind, fields: Option<&'static str>) -> Self {
        Metadata { kind, fields, resource: std::marker::PhantomData }
    }
}

impl<K> Indexer for Metadata<K>
where
    K: Resource + Clone + std::fmt::Debug + DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default,
{
    type Resource = WatchedMeta<K>;

    fn name(&self) -> &'static str {
        self.kind.name()
    }
    fn api(&self, client: &Client) -> Api<WatchedMeta<K>> {
        Api::all(client.clone())
    }
    fn config(&self) -> watcher::Config {
        match self.fields {
            Some(fields) => super::config().fields(fields),
            None => super::config(),
        }
    }
    fn apply(&self, state: &State, _: ObjectRef, object: &WatchedMeta<K>) -> Result<Affected, String> {
        let (key, object) = decode_metadata(self.kind, &object.metadata)?;
        Ok(Affected::Keys(state.apply(key, object)))
    }
    fn delete(&self, state: &State, key: &ObjectRef) -> Affected {
        Affected::Keys(state.delete(self.kind, key))
    }
    fn reset(&self, state: &State, seen: &BTreeSet<ObjectRef>, _: bool) -> Affected {
        Affected::Keys(state.retain(self.kind, seen))
    }
}
