//! The kinds the index holds in full (XBackends, routes, Gateways,
//! GatewayClasses, ReferenceGrants), decoded from the response bytes into the
//! model, with no `DynamicObject` tree in between.

use std::collections::BTreeSet;
use std::sync::Arc;

use kube::Client;
use kube::api::Api;
use kube::discovery::ApiResource;
use tokio::sync::Notify;

use super::{Affected, Indexer};
use crate::decode::{Watched, decode_watched};
use crate::model::Kind;
use crate::model::ObjectRef;
use crate::runtime::state::State;

/// One index kind, as the apiserver serves it (discovered version).
pub struct Objects {
    pub kind: Kind,
    pub resource: ApiResource,
    /// Lists again when notified (XBackends, after the CRD's schema changed).
    pub relists: Option<Arc<Notify>>,
}

impl Indexer for Objects {
    type Resource = Watched;

    fn name(&self) -> &'static str {
        self.kind.name()
    }
    fn api(&self, client: &Client) -> Api<Watched> {
        Api::all_with(client.clone(), &self.resource)
    }
    fn apply(&self, state: &State, _: ObjectRef, object: &Watched) -> Result<Affected, String> {
        let (key, object) = decode_watched(self.kind, object)?;
        Ok(Affected::Keys(state.apply(key, object)))
    }
    fn delete(&self, state: &State, key: &ObjectRef) -> Affected {
        Affected::Keys(state.delete(self.kind, key))
    }
    fn reset(&self, state: &State, seen: &BTreeSet<ObjectRef>, _: bool) -> Affected {
        Affected::Keys(state.retain(self.kind, seen))
    }
    fn relists(&self) -> Option<Arc<Notify>> {
        self.relists.clone()
    }
}
