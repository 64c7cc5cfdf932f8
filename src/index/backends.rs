//! The XBackends part of the index: one shared record per XBackend, and
//! the reverse maps from what a spec names (Secret, ConfigMaps, a grant's
//! namespace, Pods of its namespace, its hostname and last label) back to it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::members::{Members, insert_into, members_of, remove_from};
use crate::api::XBackendSpec;
use crate::guardrails;
use crate::model::{Backend, ObjectRef, RefKind};
use crate::refs;

#[derive(Debug, Default)]
pub struct Backends {
    /// Shared with reconcile snapshots, which then copy no spec or status.
    records: BTreeMap<ObjectRef, Arc<Backend>>,
    /// Secret -> XBackends whose clientCertificateRef names it.
    by_secret: HashMap<ObjectRef, Members<ObjectRef>>,
    /// ConfigMap -> XBackends whose caCertificateRefs name it.
    by_config_map: HashMap<ObjectRef, Members<ObjectRef>>,
    /// Namespace -> XBackends of other namespaces whose clientCertificateRef points there.
    by_target_namespace: HashMap<String, Members<ObjectRef>>,
    /// Namespace -> EndpointSelector XBackends in it.
    selectors_by_namespace: HashMap<String, Members<ObjectRef>>,
    /// Last label -> XBackends whose hostname (two or three labels) ends in it.
    by_last_label: HashMap<String, Members<ObjectRef>>,
    /// Hostname -> ExternalHostname XBackends that name it, for DNS answers.
    by_hostname: HashMap<String, Members<ObjectRef>>,
}

/// One entry of a reverse map, as a spec implies it.
enum Entry {
    Secret(ObjectRef),
    ConfigMap(ObjectRef),
    TargetNamespace(String),
    Selector(String),
    LastLabel(String),
    Hostname(String),
}

/// Every reverse-map entry an XBackend's spec implies.
fn entries(key: &ObjectRef, spec: &XBackendSpec) -> Vec<Entry> {
    let mut out = Vec::new();
    out.extend(refs::client_certificate_secret(key, spec).map(Entry::Secret));
    out.extend(refs::ca_certificate_config_maps(key, spec).into_iter().map(Entry::ConfigMap));
    out.extend(refs::cross_namespace_target(key, spec).map(Entry::TargetNamespace));
    if refs::endpoint_selector(spec).is_some() {
        out.push(Entry::Selector(key.namespace.to_string()));
    }
    if let Some(hostname) = refs::external_hostname(spec) {
        out.extend(guardrails::namespace_label(&hostname).map(Entry::LastLabel));
        out.push(Entry::Hostname(hostname));
    }
    out
}

impl Backends {
    /// Stores or removes one XBackend; returns whether the record changed.
    pub fn put(&mut self, key: &ObjectRef, backend: Option<Backend>) -> bool {
        let backend = backend.map(Arc::new);
        let old = match &backend {
            Some(new) => self.records.insert(key.clone(), new.clone()),
            None => self.records.remove(key),
        };
        if old == backend {
            return false;
        }
        let spec_entries = |b: &Option<Arc<Backend>>| match b.as_ref().map(|b| &b.spec) {
            Some(Ok(spec)) => entries(key, spec),
            _ => Vec::new(),
        };
        for entry in spec_entries(&old) {
            self.entry(entry, key, false);
        }
        for entry in spec_entries(&backend) {
            self.entry(entry, key, true);
        }
        true
    }

    fn entry(&mut self, entry: Entry, key: &ObjectRef, insert: bool) {
        fn put<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Members<ObjectRef>>, k: K, key: &ObjectRef, insert: bool) {
            if insert { insert_into(map, k, key.clone()) } else { remove_from(map, &k, key) }
        }
        match entry {
            Entry::Secret(secret) => put(&mut self.by_secret, secret, key, insert),
            Entry::ConfigMap(config_map) => put(&mut self.by_config_map, config_map, key, insert),
            Entry::TargetNamespace(namespace) => put(&mut self.by_target_namespace, namespace, key, insert),
            Entry::Selector(namespace) => put(&mut self.selectors_by_namespace, namespace, key, insert),
            Entry::LastLabel(label) => put(&mut self.by_last_label, label, key, insert),
            Entry::Hostname(hostname) => put(&mut self.by_hostname, hostname, key, insert),
        }
    }

    pub fn get(&self, key: &ObjectRef) -> Option<&Arc<Backend>> {
        self.records.get(key)
    }

    pub fn contains(&self, key: &ObjectRef) -> bool {
        self.records.contains_key(key)
    }

    pub fn count(&self) -> usize {
        self.records.len()
    }

    pub fn keys(&self) -> Vec<ObjectRef> {
        self.records.keys().cloned().collect()
    }

    /// XBackends that reference this Secret or ConfigMap.
    pub fn referencing(&self, kind: RefKind, key: &ObjectRef) -> BTreeSet<ObjectRef> {
        match kind {
            RefKind::Secret => members_of(&self.by_secret, key),
            RefKind::ConfigMap => members_of(&self.by_config_map, key),
        }
    }

    /// XBackends whose clientCertificateRef points into `namespace` from another.
    pub fn targeting(&self, namespace: &str) -> BTreeSet<ObjectRef> {
        members_of(&self.by_target_namespace, namespace)
    }

    /// EndpointSelector XBackends of `namespace`.
    pub fn selectors_in(&self, namespace: &str) -> BTreeSet<ObjectRef> {
        members_of(&self.selectors_by_namespace, namespace)
    }

    /// XBackends whose two- or three-label hostname ends in `label`.
    pub fn ending_in(&self, label: &str) -> BTreeSet<ObjectRef> {
        members_of(&self.by_last_label, label)
    }

    /// XBackends whose spec names `hostname` (normalized).
    pub fn with_hostname(&self, hostname: &str) -> BTreeSet<ObjectRef> {
        members_of(&self.by_hostname, hostname)
    }

    #[cfg(test)]
    pub fn reverse_entries(&self) -> usize {
        let maps = [&self.by_secret, &self.by_config_map];
        let by_name = [&self.by_target_namespace, &self.selectors_by_namespace, &self.by_last_label, &self.by_hostname];
        maps.iter().map(|m| m.len()).sum::<usize>() + by_name.iter().map(|m| m.len()).sum::<usize>()
    }

    /// Every reverse map equals the one rebuilt from the records alone.
    #[cfg(test)]
    pub fn check(&self) {
        let mut fresh = Backends::default();
        for (key, backend) in &self.records {
            if let Ok(spec) = &backend.spec {
                for entry in entries(key, spec) {
                    fresh.entry(entry, key, true);
                }
            }
        }
        assert_eq!(self.by_secret, fresh.by_secret, "XBackends by Secret");
        assert_eq!(self.by_config_map, fresh.by_config_map, "XBackends by ConfigMap");
        assert_eq!(self.by_target_namespace, fresh.by_target_namespace, "XBackends by target namespace");
        assert_eq!(self.selectors_by_namespace, fresh.selectors_by_namespace, "selectors by namespace");
        assert_eq!(self.by_last_label, fresh.by_last_label, "XBackends by last label");
        assert_eq!(self.by_hostname, fresh.by_hostname, "XBackends by hostname");
    }
}
