//! The EndpointSlices no controller manages (`--egress-cluster routes`): a
//! selectorless Service's hand-written addresses. The label selector leaves
//! the endpointslice-controller's out on the server, so memory follows the
//! hand-written ones only.

use std::collections::BTreeSet;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::Api;
use kube::runtime::watcher;

use super::{Affected, Indexer};
use crate::decode::decode;
use crate::model::{Kind, ObjectRef};
use crate::runtime::state::State;

/// The label the endpointslice-controller puts on the slices it manages.
pub const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by!=endpointslice-controller.k8s.io";

pub struct HandSlices;

impl Indexer for HandSlices {
    type Resource = EndpointSlice;

    fn name(&self) -> &'static str {
        "EndpointSlice"
    }
    fn api(&self, client: &Client) -> Api<EndpointSlice> {
        Api::all(client.clone())
    }
    fn config(&self) -> watcher::Config {
        super::config().labels(MANAGED_BY)
    }
    fn apply(&self, state: &State, _: ObjectRef, object: &EndpointSlice) -> Result<Affected, String> {
        let value = serde_json::to_value(object).map_err(|e| e.to_string())?;
        let (key, object) = decode(Kind::EndpointSlice, &value)?;
        Ok(Affected::Keys(state.apply(key, object)))
    }
    fn delete(&self, state: &State, key: &ObjectRef) -> Affected {
        Affected::Keys(state.delete(Kind::EndpointSlice, key))
    }
    fn reset(&self, state: &State, seen: &BTreeSet<ObjectRef>, _: bool) -> Affected {
        Affected::Keys(state.retain(Kind::EndpointSlice, seen))
    }
}
