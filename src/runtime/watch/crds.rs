//! Gateway API CRDs, by metadata only: any change wakes the kinds follower
//! (`runtime/kinds.rs`), which runs discovery and starts or stops watches.

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::Api;
use tokio::sync::Notify;

use super::{Affected, Indexer};
use crate::decode::WatchedMeta;
use crate::model::ObjectRef;
use crate::runtime::state::State;

pub struct GatewayApiCrds {
    pub changed: Arc<Notify>,
}

impl GatewayApiCrds {
    fn touched(&self, key: &ObjectRef) -> Affected {
        let groups = [crate::api::GATEWAY_GROUP, crate::api::GROUP];
        if groups.iter().any(|group| key.name.strip_suffix(group).is_some_and(|plural| plural.ends_with('.'))) {
            self.changed.notify_one();
        }
        Affected::none()
    }
}

impl Indexer for GatewayApiCrds {
    type Resource = WatchedMeta<CustomResourceDefinition>;
    const KEEPS_OBJECTS: bool = false;

    fn name(&self) -> &'static str {
        "CustomResourceDefinition (Gateway API)"
    }
    fn api(&self, client: &Client) -> Api<Self::Resource> {
        Api::all(client.clone())
    }
    fn apply(&self, _: &State, key: ObjectRef, _: &Self::Resource) -> Result<Affected, String> {
        Ok(self.touched(&key))
    }
    fn delete(&self, _: &State, key: &ObjectRef) -> Affected {
        self.touched(key)
    }
    /// A re-list may hide a CRD that came or went while the watch was down.
    fn reset(&self, _: &State, _: &BTreeSet<ObjectRef>, relist: bool) -> Affected {
        if relist {
            self.changed.notify_one();
        }
        Affected::none()
    }
}
