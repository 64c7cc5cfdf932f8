//! The Pods and Namespaces part of the index: live Pods' labels (for
//! EndpointSelector XBackends) and the cluster's Namespace names (for the
//! cluster-aware name guardrail).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// A Pod's labels, sorted by key, in one allocation per string: a BTreeMap
/// costs a node of eleven slots even for the two labels most Pods carry, and
/// the index keeps every live Pod of the cluster.
pub type Labels = Box<[(Box<str>, Box<str>)]>;

/// matchLabels semantics: every selector label is on the Pod. An empty
/// selector selects nothing here (validation rejects it anyway).
pub fn selects(selector: &BTreeMap<String, String>, labels: &Labels) -> bool {
    let get = |key: &str| labels.binary_search_by(|(k, _)| (**k).cmp(key)).ok().map(|i| &*labels[i].1);
    !selector.is_empty() && selector.iter().all(|(key, value)| get(key) == Some(value.as_str()))
}

fn compact(labels: BTreeMap<String, String>) -> Labels {
    labels.into_iter().map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str())).collect()
}

#[derive(Debug, Default)]
pub struct Cluster {
    /// Namespace -> live Pods' labels by Pod name.
    pods: HashMap<String, HashMap<Box<str>, Labels>>,
    /// Namespaces of the cluster: a hostname ending in one reaches inside it.
    /// Shared with reconcile snapshots; copied only when a Namespace comes or goes.
    namespaces: Arc<BTreeSet<String>>,
}

impl Cluster {
    /// Stores (`Some`: a live Pod's labels) or removes one Pod; returns its
    /// labels before and after, or None when nothing changed.
    pub fn put_pod(
        &mut self,
        namespace: &str,
        name: &str,
        labels: Option<BTreeMap<String, String>>,
    ) -> Option<[Option<Labels>; 2]> {
        match labels {
            Some(labels) => {
                let labels = compact(labels);
                let pods = self.pods.entry(namespace.to_string()).or_default();
                let old = pods.insert(name.into(), labels.clone());
                (old.as_ref() != Some(&labels)).then_some([old, Some(labels)])
            }
            None => {
                let pods = self.pods.get_mut(namespace)?;
                let old = pods.remove(name)?;
                if pods.is_empty() {
                    self.pods.remove(namespace);
                }
                Some([Some(old), None])
            }
        }
    }

    /// Adds or removes a Namespace; returns whether that changed anything.
    pub fn put_namespace(&mut self, name: &str, exists: bool) -> bool {
        if self.namespaces.contains(name) == exists {
            return false;
        }
        let namespaces = Arc::make_mut(&mut self.namespaces);
        if exists { namespaces.insert(name.to_string()) } else { namespaces.remove(name) }
    }

    /// True when a live Pod in `namespace` carries every label of `selector`.
    pub fn has_matching_pod(&self, namespace: &str, selector: &BTreeMap<String, String>) -> bool {
        self.pods.get(namespace).is_some_and(|pods| pods.values().any(|labels| selects(selector, labels)))
    }

    pub fn namespaces(&self) -> &Arc<BTreeSet<String>> {
        &self.namespaces
    }

    pub fn pod_keys(&self) -> Vec<crate::model::ObjectRef> {
        let pods = self.pods.iter();
        pods.flat_map(|(namespace, pods)| pods.keys().map(move |name| crate::model::ObjectRef::new(namespace, &**name)))
            .collect()
    }

    /// No namespace is kept without Pods.
    #[cfg(test)]
    pub fn check(&self) {
        assert!(self.pods.values().all(|pods| !pods.is_empty()), "an empty namespace of Pods stays");
    }
}
