//! The Gateways and GatewayClasses part of the index: which Gateways this
//! controller judges (docs/design.md §3), and the Gateways of each class.

use std::collections::{BTreeSet, HashMap};

use super::members::{Members, insert_into, remove_from};
use crate::model::{Gateway, GatewayClass, ObjectRef};

#[derive(Debug, Default)]
pub struct Gateways {
    controller_name: String,
    /// Guard mode (`--gateway-class`): classes judged whatever their controllerName.
    guarded: BTreeSet<String>,
    gateways: HashMap<ObjectRef, Gateway>,
    /// Keyed by name (cluster-scoped).
    classes: HashMap<String, GatewayClass>,
    /// GatewayClass name -> existing Gateways of that class.
    by_class: HashMap<String, Members<ObjectRef>>,
}

impl Gateways {
    pub fn new(controller_name: String, guarded: BTreeSet<String>) -> Gateways {
        Gateways { controller_name, guarded, ..Gateways::default() }
    }

    pub fn guard(&mut self, classes: BTreeSet<String>) {
        self.guarded = classes;
    }

    /// Stores or removes one Gateway; returns whether it was judged before.
    pub fn put_gateway(&mut self, key: &ObjectRef, gateway: Option<Gateway>) -> bool {
        let was_judged = self.is_judged(key);
        let old = match &gateway {
            Some(new) => self.gateways.insert(key.clone(), new.clone()),
            None => self.gateways.remove(key),
        };
        if let Some(old) = &old {
            remove_from(&mut self.by_class, &old.class_name, key);
        }
        if let Some(new) = &gateway {
            insert_into(&mut self.by_class, new.class_name.clone(), key.clone());
        }
        was_judged
    }

    /// Stores or removes one class; returns whether it was ours before.
    pub fn put_class(&mut self, name: &str, class: Option<GatewayClass>) -> bool {
        let was_ours = self.is_our_class(name);
        match class {
            Some(class) => self.classes.insert(name.to_string(), class),
            None => self.classes.remove(name),
        };
        was_ours
    }

    /// A Gateway counts only if it exists and its GatewayClass is ours.
    pub fn is_judged(&self, gateway: &ObjectRef) -> bool {
        self.gateways.get(gateway).is_some_and(|gw| self.is_our_class(&gw.class_name))
    }

    /// Ours by controllerName (the class must exist), or named by `--gateway-class`.
    pub fn is_our_class(&self, class_name: &str) -> bool {
        self.guarded.contains(class_name)
            || self.classes.get(class_name).is_some_and(|c| c.controller_name == self.controller_name)
    }

    /// Every judged Gateway, sorted.
    pub fn judged(&self) -> Vec<ObjectRef> {
        let mut judged: Vec<ObjectRef> = self.gateways.keys().filter(|gw| self.is_judged(gw)).cloned().collect();
        judged.sort();
        judged
    }

    /// The existing Gateways of a class.
    pub fn of_class(&self, name: &str) -> Vec<ObjectRef> {
        self.by_class.get(name).into_iter().flatten().cloned().collect()
    }

    pub fn get(&self, gateway: &ObjectRef) -> Option<&Gateway> {
        self.gateways.get(gateway)
    }

    pub fn class(&self, name: &str) -> Option<&GatewayClass> {
        self.classes.get(name)
    }

    pub fn keys(&self) -> Vec<ObjectRef> {
        self.gateways.keys().cloned().collect()
    }

    pub fn class_keys(&self) -> Vec<ObjectRef> {
        self.classes.keys().map(|name| ObjectRef::new("", name)).collect()
    }

    #[cfg(test)]
    pub fn reverse_entries(&self) -> usize {
        self.by_class.len()
    }

    /// The reverse map equals the one rebuilt from the Gateways alone.
    #[cfg(test)]
    pub fn check(&self) {
        let pairs = self.gateways.iter().map(|(key, gw)| (gw.class_name.clone(), key.clone()));
        assert_eq!(self.by_class, super::members::rebuilt(pairs), "gateways by class");
    }
}
