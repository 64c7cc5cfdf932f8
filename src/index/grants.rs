//! The ReferenceGrants part of the index, ordered so that the grants of one
//! namespace are one range.

use std::collections::BTreeMap;

use crate::model::{ObjectRef, ReferenceGrant};

#[derive(Debug, Default)]
pub struct Grants {
    grants: BTreeMap<ObjectRef, ReferenceGrant>,
}

impl Grants {
    /// Stores or removes one grant; returns what stood before.
    pub fn put(&mut self, key: ObjectRef, grant: Option<ReferenceGrant>) -> Option<ReferenceGrant> {
        match grant {
            Some(new) => self.grants.insert(key, new),
            None => self.grants.remove(&key),
        }
    }

    /// The ReferenceGrants of one namespace.
    pub fn in_namespace<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a ReferenceGrant> + 'a {
        self.grants
            .range(ObjectRef::new(namespace, "")..)
            .take_while(move |(key, _)| &*key.namespace == namespace)
            .map(|(_, grant)| grant)
    }

    pub fn keys(&self) -> Vec<ObjectRef> {
        self.grants.keys().cloned().collect()
    }
}
