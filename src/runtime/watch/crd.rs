//! The XBackend CRD itself: its status layout (ours `ancestors`, upstream
//! v1.6 `parents`) decides where our entries go, so a switch between the two
//! moves them.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::Api;
use kube::runtime::watcher;
use tokio::sync::Notify;
use tracing::info;

use super::{Affected, Indexer};
use crate::model::ObjectRef;
use crate::runtime::state::State;
use crate::status::Shape;

pub const XBACKEND_CRD: &str = "xbackends.gateway.networking.x-k8s.io";

/// The status layout of an installed XBackend CRD: upstream's has `parents`.
pub fn shape_of(crd: &CustomResourceDefinition) -> Shape {
    let has_parents = crd.spec.versions.iter().any(|v| {
        v.schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .and_then(|s| s.properties.as_ref())
            .and_then(|p| p.get("status"))
            .and_then(|s| s.properties.as_ref())
            .is_some_and(|p| p.contains_key("parents") && !p.contains_key("ancestors"))
    });
    if has_parents { Shape::Parents } else { Shape::Ancestors }
}

/// Follows the one XBackend CRD; the state keeps only its status layout.
/// When the layout changes, `schema_changed` is notified a few times over
/// the next seconds (the apiserver serves the new schema a moment late), so
/// the XBackend watch lists again and the index sees every status as stored.
pub struct XBackendCrd {
    pub schema_changed: Arc<Notify>,
}

/// When the XBackends are listed again after a schema change.
const RELIST_AFTER: [Duration; 2] = [Duration::from_secs(2), Duration::from_secs(8)];

impl Indexer for XBackendCrd {
    type Resource = CustomResourceDefinition;
    const KEEPS_OBJECTS: bool = false;

    fn name(&self) -> &'static str {
        "CustomResourceDefinition"
    }
    fn api(&self, client: &Client) -> Api<CustomResourceDefinition> {
        Api::all(client.clone())
    }
    fn config(&self) -> watcher::Config {
        super::config().fields(&format!("metadata.name={XBACKEND_CRD}"))
    }
    fn apply(&self, state: &State, _: ObjectRef, crd: &CustomResourceDefinition) -> Result<Affected, String> {
        let shape = shape_of(crd);
        if !state.set_shape(shape) {
            return Ok(Affected::none());
        }
        info!(?shape, "XBackend CRD status layout changed; rechecking every XBackend");
        let schema_changed = self.schema_changed.clone();
        tokio::spawn(async move {
            for wait in RELIST_AFTER {
                tokio::time::sleep(wait).await;
                schema_changed.notify_one();
            }
        });
        Ok(Affected::Every)
    }
    /// Without the CRD there are no XBackends to write to.
    fn delete(&self, _: &State, _: &ObjectRef) -> Affected {
        Affected::none()
    }
    fn reset(&self, _: &State, _: &BTreeSet<ObjectRef>, _: bool) -> Affected {
        Affected::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_layout_follows_the_installed_crd() {
        let mut crd = crate::api::crd();
        assert_eq!(shape_of(&crd), Shape::Ancestors);
        // Upstream v1.6 names the list `parents`.
        let mut value = serde_json::to_value(&crd).unwrap();
        let status = value.pointer_mut("/spec/versions/0/schema/openAPIV3Schema/properties/status/properties").unwrap();
        let list = status.as_object_mut().unwrap().remove("ancestors").unwrap();
        status.as_object_mut().unwrap().insert("parents".into(), list);
        crd = serde_json::from_value(value).unwrap();
        assert_eq!(shape_of(&crd), Shape::Parents);
    }
}
