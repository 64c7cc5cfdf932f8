//! The AdminNetworkPolicy engine (policy.networking.k8s.io/v1alpha1, the
//! `networks` peer of its experimental channel): the admin tier that
//! OVN-Kubernetes, Calico, Antrea and kube-network-policies enforce today.

use serde_json::{Value, json};

use super::admin::{self, Dialect};
use super::{Allowed, Engine, PolicyKind, Rules};
use crate::model::ObjectRef;

pub static KIND: PolicyKind = PolicyKind {
    group: "policy.networking.k8s.io",
    version: "v1alpha1",
    kind: "AdminNetworkPolicy",
    plural: "adminnetworkpolicies",
    namespaced: false,
};

pub(super) static DIALECT: Dialect = Dialect {
    kind: &KIND,
    accept: "Allow",
    extra: |_| {},
    max_rules: 100,
    max_peers: 100,
    max_networks: 25,
    port: |protocol, port| json!({"portNumber": {"protocol": protocol, "port": port}}),
    ports_field: "ports",
    read_port: |entry| {
        let number = &entry["portNumber"];
        Some((number["protocol"].as_str().unwrap_or("TCP").to_string(), u16::try_from(number["port"].as_u64()?).ok()?))
    },
};

pub struct AdminNetworkPolicy {
    /// `--egress-admin-priority`: the accept objects' priority; the Deny is one after.
    pub priority: u32,
}

impl Engine for AdminNetworkPolicy {
    fn name(&self) -> &'static str {
        "adminnetworkpolicy"
    }

    fn kind(&self) -> &'static PolicyKind {
        &KIND
    }

    fn render<'a>(&'a self, rules: Rules<'a>) -> Box<dyn Iterator<Item = Value> + 'a> {
        Box::new(admin::render(&DIALECT, self.priority, rules))
    }

    fn read_rules(&self, object: &Value) -> Vec<(ObjectRef, Allowed)> {
        admin::read_rules(&DIALECT, object)
    }

    fn max_addresses_per_host(&self) -> usize {
        admin::max_addresses(&DIALECT)
    }

    fn widens(&self, ours: &Value, other: &Value) -> Option<String> {
        admin::widens(&DIALECT, ours, other)
    }
}
