//! The ClusterNetworkPolicy engine (policy.networking.k8s.io, tier Admin):
//! AdminNetworkPolicy's successor, in v1beta1 where the cluster serves it,
//! else v1alpha2 (the same schema). Calico 3.32, Antrea 2.7, Cilium 1.20 and
//! newer kube-network-policies enforce it.

use serde_json::{Value, json};

use super::admin::{self, Dialect};
use super::{Allowed, Engine, PolicyKind, Rules};
use crate::model::{PortRef, Protocol};

pub static KIND_V1BETA1: PolicyKind = PolicyKind {
    group: "policy.networking.k8s.io",
    version: "v1beta1",
    kind: "ClusterNetworkPolicy",
    plural: "clusternetworkpolicies",
    namespaced: false,
};
pub static KIND_V1ALPHA2: PolicyKind = PolicyKind { version: "v1alpha2", ..KIND_V1BETA1 };

macro_rules! dialect {
    ($kind:expr) => {
        Dialect {
            kind: $kind,
            accept: "Accept",
            extra: |spec| {
                spec.insert("tier".into(), json!("Admin"));
            },
            max_rules: 25,
            max_peers: 25,
            max_networks: 25,
            port: |protocol, port| match port {
                PortRef::Number(n) => json!({protocol.name().to_ascii_lowercase(): {"destinationPort": {"number": n}}}),
                PortRef::Name(name) => json!({"destinationNamedPort": &**name}),
            },
            ports_field: "protocols",
            read_port: |entry| {
                if let Some(name) = entry["destinationNamedPort"].as_str() {
                    return Some((Protocol::Tcp, PortRef::Name(name.into())));
                }
                let (protocol, port) = entry.as_object()?.iter().next()?;
                let number = u16::try_from(port["destinationPort"]["number"].as_u64()?).ok()?;
                Some((Protocol::parse(Some(&protocol.to_ascii_uppercase()))?, PortRef::Number(number)))
            },
        }
    };
}

pub(super) static V1BETA1: Dialect = dialect!(&KIND_V1BETA1);
pub(super) static V1ALPHA2: Dialect = dialect!(&KIND_V1ALPHA2);

pub struct ClusterNetworkPolicy {
    pub priority: u32,
    dialect: &'static Dialect,
}

impl ClusterNetworkPolicy {
    /// Writes v1beta1 where the cluster serves it, else v1alpha2 when
    /// served; v1beta1 when neither is (offline: `analyze`).
    pub fn new(priority: u32, served: &[String]) -> ClusterNetworkPolicy {
        let v1alpha2_only = !served.iter().any(|v| v == "v1beta1") && served.iter().any(|v| v == "v1alpha2");
        ClusterNetworkPolicy { priority, dialect: if v1alpha2_only { &V1ALPHA2 } else { &V1BETA1 } }
    }
}

impl Engine for ClusterNetworkPolicy {
    fn name(&self) -> &'static str {
        "clusternetworkpolicy"
    }

    fn kind(&self) -> &'static PolicyKind {
        self.dialect.kind
    }

    fn render<'a>(&'a self, rules: Rules<'a>) -> Box<dyn Iterator<Item = Value> + 'a> {
        Box::new(admin::render(self.dialect, self.priority, rules))
    }

    fn read_rules(&self, object: &Value) -> Vec<Allowed> {
        admin::read_rules(self.dialect, object)
    }

    fn max_addresses_per_host(&self) -> usize {
        admin::max_addresses(self.dialect)
    }

    fn widens(&self, ours: &Value, other: &Value) -> Option<String> {
        admin::widens(self.dialect, ours, other)
    }
}
