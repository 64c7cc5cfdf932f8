//! In-memory index of the watched objects. Watches feed it (apply / delete /
//! reset); each call returns the XBackends whose status may have changed.

use std::collections::BTreeSet;

use crate::model::{Backend, Gateway, GatewayClass, ObjectRef, ReferenceGrant, Route, RouteKind};

/// Every kind the index holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Route(RouteKind),
    Gateway,
    GatewayClass,
    ReferenceGrant,
    XBackend,
}

/// One decoded object of some kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Route(RouteKind, Route),
    Gateway(Gateway),
    GatewayClass(GatewayClass),
    ReferenceGrant(ReferenceGrant),
    XBackend(Backend),
}

/// Objects an XBackend can reference by kind, watched by metadata only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefKind {
    Secret,
    ConfigMap,
}

#[derive(Debug, Default)]
pub struct Index {
    // Filled in by the index work.
}

impl Index {
    /// `controller_name` decides which GatewayClasses are ours.
    pub fn new(controller_name: impl Into<String>) -> Self {
        let _ = controller_name.into();
        todo!()
    }

    pub fn controller_name(&self) -> &str {
        todo!()
    }

    /// Adds or replaces one object (cluster-scoped kinds use an empty namespace).
    pub fn apply(&mut self, key: ObjectRef, object: Object) -> BTreeSet<ObjectRef> {
        let _ = (key, object);
        todo!()
    }

    pub fn delete(&mut self, kind: Kind, key: &ObjectRef) -> BTreeSet<ObjectRef> {
        let _ = (kind, key);
        todo!()
    }

    /// Replaces every object of `kind` (a watch re-list): missing ones are deleted.
    pub fn reset(&mut self, kind: Kind, objects: Vec<(ObjectRef, Object)>) -> BTreeSet<ObjectRef> {
        let _ = (kind, objects);
        todo!()
    }

    /// XBackends that reference this Secret or ConfigMap.
    pub fn referencing(&self, kind: RefKind, key: &ObjectRef) -> BTreeSet<ObjectRef> {
        let _ = (kind, key);
        todo!()
    }

    /// DESIGN.md §3: this controller's Gateways behind routes to `backend`,
    /// sorted by namespace then name.
    pub fn ancestors(&self, backend: &ObjectRef) -> Vec<ObjectRef> {
        let _ = backend;
        todo!()
    }

    pub fn backend(&self, key: &ObjectRef) -> Option<&Backend> {
        let _ = key;
        todo!()
    }

    pub fn backend_keys(&self) -> Vec<ObjectRef> {
        todo!()
    }

    /// True when a ReferenceGrant in `to.namespace` lets XBackends from
    /// `from_namespace` reference the object (`group`, `kind`, `to.name`).
    pub fn grant_permits(&self, from_namespace: &str, group: &str, kind: &str, to: &ObjectRef) -> bool {
        let _ = (from_namespace, group, kind, to);
        todo!()
    }
}
