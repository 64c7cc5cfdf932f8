//! The AdminNetworkPolicy engine (policy.networking.k8s.io/v1alpha1, the
//! `networks` peer of its experimental channel): the admin tier that
//! OVN-Kubernetes, Calico, Antrea and kube-network-policies enforce today.

use serde_json::{Value, json};

use super::admin::{self, Dialect};
use super::{Allowed, Engine, PolicyKind, Rules};
use crate::model::{PortRef, Protocol};

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
    port: |protocol, port| match port {
        PortRef::Number(n) => json!({"portNumber": {"protocol": protocol.name(), "port": n}}),
        PortRef::Name(name) => json!({"namedPort": &**name}),
    },
    ports_field: "ports",
    read_port: |entry| match (entry.get("portNumber"), entry["namedPort"].as_str()) {
        (Some(number), _) => Some((
            Protocol::parse(number["protocol"].as_str())?,
            PortRef::Number(u16::try_from(number["port"].as_u64()?).ok()?),
        )),
        (None, Some(name)) => Some((Protocol::Tcp, PortRef::Name(name.into()))),
        _ => None,
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

    fn read_rules(&self, object: &Value) -> Vec<Allowed> {
        admin::read_rules(&DIALECT, object)
    }

    fn max_addresses_per_host(&self) -> usize {
        admin::max_addresses(&DIALECT)
    }

    fn widens(&self, ours: &Value, other: &Value) -> Option<String> {
        admin::widens(&DIALECT, ours, other)
    }
}
