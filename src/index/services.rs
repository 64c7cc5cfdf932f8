//! The Services part of the index (`--egress-cluster routes`): what routes'
//! Service references lead to, and the EndpointSlices no controller manages
//! (a selectorless Service's hand-written addresses), by Service.

use std::collections::{BTreeMap, HashMap};

use super::members::{Members, insert_into, remove_from};
use crate::model::{EndpointSlice, ObjectRef, Service};

#[derive(Debug, Default)]
pub struct Services {
    services: BTreeMap<ObjectRef, Service>,
    slices: BTreeMap<ObjectRef, EndpointSlice>,
    /// Service -> its EndpointSlices.
    slices_by_service: HashMap<ObjectRef, Members<ObjectRef>>,
    /// Name (normalized) -> the ExternalName Services aliasing it.
    by_external_name: HashMap<String, Members<ObjectRef>>,
}

impl Services {
    /// Stores or removes one Service; true when it changed.
    pub fn put_service(&mut self, key: &ObjectRef, service: Option<Service>) -> bool {
        let old = match service.clone() {
            Some(new) => self.services.insert(key.clone(), new),
            None => self.services.remove(key),
        };
        if old == service {
            return false;
        }
        let aliased =
            |s: &Option<Service>| s.as_ref().and_then(|s| s.external_name.as_deref()).map(crate::names::normalize);
        if let Some(name) = aliased(&old) {
            remove_from(&mut self.by_external_name, &name, key);
        }
        if let Some(name) = aliased(&service) {
            insert_into(&mut self.by_external_name, name, key.clone());
        }
        true
    }

    pub fn external_name_in_use(&self, hostname: &str) -> bool {
        self.by_external_name.contains_key(hostname)
    }

    /// The ExternalName Services aliasing `hostname` (normalized).
    pub fn aliasing(&self, hostname: &str) -> Vec<ObjectRef> {
        self.by_external_name.get(hostname).into_iter().flatten().cloned().collect()
    }

    /// Stores or removes one EndpointSlice; true when it changed.
    pub fn put_slice(&mut self, key: &ObjectRef, slice: Option<EndpointSlice>) -> bool {
        let old = match slice.clone() {
            Some(new) => self.slices.insert(key.clone(), new),
            None => self.slices.remove(key),
        };
        if old == slice {
            return false;
        }
        if let Some(service) = old.and_then(|s| s.service) {
            remove_from(&mut self.slices_by_service, &service, key);
        }
        if let Some(service) = slice.and_then(|s| s.service) {
            insert_into(&mut self.slices_by_service, service, key.clone());
        }
        true
    }

    pub fn service(&self, key: &ObjectRef) -> Option<&Service> {
        self.services.get(key)
    }

    /// The EndpointSlices of a Service.
    pub fn slices_of<'a>(&'a self, service: &ObjectRef) -> impl Iterator<Item = &'a EndpointSlice> + 'a {
        let keys = self.slices_by_service.get(service).into_iter().flatten();
        keys.filter_map(|key| self.slices.get(key))
    }

    pub fn service_keys(&self) -> Vec<ObjectRef> {
        self.services.keys().cloned().collect()
    }

    pub fn slice_keys(&self) -> Vec<ObjectRef> {
        self.slices.keys().cloned().collect()
    }

    /// The reverse map equals the one rebuilt from the slices alone.
    #[cfg(test)]
    pub fn check(&self) {
        let pairs = self.slices.iter().filter_map(|(key, s)| Some((s.service.clone()?, key.clone())));
        assert_eq!(self.slices_by_service, super::members::rebuilt(pairs), "EndpointSlices by Service");
        let names = self
            .services
            .iter()
            .filter_map(|(key, s)| Some((crate::names::normalize(s.external_name.as_deref()?), key.clone())));
        assert_eq!(self.by_external_name, super::members::rebuilt(names), "Services by external name");
    }
}
