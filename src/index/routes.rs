//! The routes part of the index: every object that names XBackends (routes,
//! and Gateways and ListenerSets through their ExternalAuth filters), with
//! who names each XBackend and who attaches to each Gateway.

use std::collections::HashMap;

use super::members::{Members, insert_into, remove_from};
use crate::model::{ObjectRef, Referrer, Route};

/// A referrer is known by its kind and its key.
pub type RouteKey = (Referrer, ObjectRef);

#[derive(Debug, Default)]
pub struct Routes {
    routes: HashMap<RouteKey, Route>,
    /// XBackend (may not exist yet) -> referrers naming it.
    by_backend: HashMap<ObjectRef, Members<RouteKey>>,
    /// Gateway (may not exist yet) -> referrers with a parentRef to it.
    by_gateway: HashMap<ObjectRef, Members<RouteKey>>,
}

impl Routes {
    /// Stores (`Some`) or removes (`None`) one referrer and returns what stood
    /// before; the reverse maps follow.
    pub fn put(&mut self, key: RouteKey, route: Option<Route>) -> Option<Route> {
        let old = match &route {
            Some(new) => self.routes.insert(key.clone(), new.clone()),
            None => self.routes.remove(&key),
        };
        if old == route {
            return old;
        }
        if let Some(old) = &old {
            for backend in &old.backends {
                remove_from(&mut self.by_backend, backend, &key);
            }
            for gateway in &old.gateways {
                remove_from(&mut self.by_gateway, gateway, &key);
            }
        }
        if let Some(new) = &route {
            for backend in &new.backends {
                insert_into(&mut self.by_backend, backend.clone(), key.clone());
            }
            for gateway in &new.gateways {
                insert_into(&mut self.by_gateway, gateway.clone(), key.clone());
            }
        }
        old
    }

    pub fn iter(&self) -> impl Iterator<Item = (&RouteKey, &Route)> {
        self.routes.iter()
    }

    pub fn get(&self, key: &RouteKey) -> Option<&Route> {
        self.routes.get(key)
    }

    /// The referrers that name `backend`.
    pub fn naming<'a>(&'a self, backend: &ObjectRef) -> impl Iterator<Item = &'a RouteKey> + 'a {
        self.by_backend.get(backend).into_iter().flatten()
    }

    /// The referrers attached to `gateway`.
    pub fn attached_to<'a>(&'a self, gateway: &ObjectRef) -> impl Iterator<Item = &'a RouteKey> + 'a {
        self.by_gateway.get(gateway).into_iter().flatten()
    }

    /// The keys of one kind of referrer.
    pub fn keys(&self, referrer: Referrer) -> Vec<ObjectRef> {
        self.routes.keys().filter(|(r, _)| *r == referrer).map(|(_, key)| key.clone()).collect()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty() && self.by_backend.is_empty() && self.by_gateway.is_empty()
    }

    /// The reverse maps equal those rebuilt from the routes alone.
    #[cfg(test)]
    pub fn check(&self) {
        use super::members::rebuilt;
        let pairs = |field: fn(&Route) -> &crate::model::Refs| {
            rebuilt(self.routes.iter().flat_map(move |(k, r)| field(r).iter().map(move |x| (x.clone(), k.clone()))))
        };
        assert_eq!(self.by_backend, pairs(|r| &r.backends), "routes by backend");
        assert_eq!(self.by_gateway, pairs(|r| &r.gateways), "routes by gateway");
    }
}
