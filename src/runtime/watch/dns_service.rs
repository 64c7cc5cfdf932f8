//! The cluster DNS Service's EndpointSlices (`--dns-service`): each endpoint
//! kube-proxy would send queries to is a server the DNS check asks.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::discovery::v1::{EndpointPort, EndpointSlice};
use kube::Client;
use kube::api::Api;
use kube::runtime::watcher;
use tracing::warn;

use super::{Affected, Indexer};
use crate::dns::Found;
use crate::model::ObjectRef;
use crate::runtime::state::State;

/// The label EndpointSlices carry for the Service they serve.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The port of a UDP port entry without a number ("all ports").
const DNS_PORT: u16 = 53;

/// Follows one Service's EndpointSlices into the resolver's `Found` set.
pub struct DnsService {
    namespace: String,
    service: String,
    found: Arc<Found>,
    slices: Mutex<BTreeMap<ObjectRef, Servers>>,
}

/// What one slice offers.
#[derive(Debug, Default, PartialEq)]
struct Servers {
    ready: Vec<SocketAddr>,
    /// Serving but not ready (terminating): kube-proxy falls back to these
    /// when no endpoint of the Service is ready, and so does the check.
    serving: Vec<SocketAddr>,
}

impl DnsService {
    pub fn new(namespace: String, service: String, found: Arc<Found>) -> DnsService {
        DnsService { namespace, service, found, slices: Mutex::default() }
    }

    fn slices(&self) -> std::sync::MutexGuard<'_, BTreeMap<ObjectRef, Servers>> {
        self.slices.lock().expect("dns slices lock")
    }

    /// Sets the ready servers of every slice, or the serving ones when none is ready.
    fn publish(&self) {
        let servers: BTreeSet<SocketAddr> = {
            let slices = self.slices();
            let ready: BTreeSet<_> = slices.values().flat_map(|s| &s.ready).copied().collect();
            if ready.is_empty() { slices.values().flat_map(|s| &s.serving).copied().collect() } else { ready }
        };
        if let Err(error) = self.found.set(servers) {
            warn!(error, "cannot use the DNS Service's endpoints; keeping the servers asked so far");
        }
    }
}

/// The DNS servers one EndpointSlice gives: the first address of each
/// endpoint (the one kube-proxy uses), on the slice's UDP port (the one named
/// `dns` first). A slice without a UDP port, or of FQDNs, gives none.
fn servers_of(slice: &EndpointSlice) -> Servers {
    if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
        return Servers::default();
    }
    let udp = |p: &&EndpointPort| p.protocol.as_deref() == Some("UDP");
    let ports = slice.ports.as_deref().unwrap_or_default();
    let Some(port) = ports.iter().filter(udp).find(|p| p.name.as_deref() == Some("dns")).or(ports.iter().find(udp))
    else {
        return Servers::default();
    };
    let Ok(port) = u16::try_from(port.port.unwrap_or(i32::from(DNS_PORT))) else { return Servers::default() };
    let mut servers = Servers::default();
    for endpoint in slice.endpoints.iter().flatten() {
        let Some(ip) = endpoint.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else { continue };
        let conditions = endpoint.conditions.as_ref();
        // nil ready means ready; nil serving defers to ready.
        if conditions.and_then(|c| c.ready) != Some(false) {
            servers.ready.push(SocketAddr::new(ip, port));
        } else if conditions.and_then(|c| c.serving) == Some(true) {
            servers.serving.push(SocketAddr::new(ip, port));
        }
    }
    for list in [&mut servers.ready, &mut servers.serving] {
        list.sort();
        list.dedup();
    }
    servers
}

impl Indexer for DnsService {
    type Resource = EndpointSlice;

    fn name(&self) -> &'static str {
        "EndpointSlice"
    }
    fn api(&self, client: &Client) -> Api<EndpointSlice> {
        Api::namespaced(client.clone(), &self.namespace)
    }
    fn config(&self) -> watcher::Config {
        super::config().labels(&format!("{SERVICE_NAME_LABEL}={}", self.service))
    }
    fn apply(&self, _: &State, key: ObjectRef, slice: &EndpointSlice) -> Result<Affected, String> {
        self.slices().insert(key, servers_of(slice));
        self.publish();
        // No XBackend directly: the DNS check asks every hostname again when the set changes.
        Ok(Affected::none())
    }
    fn delete(&self, _: &State, key: &ObjectRef) -> Affected {
        self.slices().remove(key);
        self.publish();
        Affected::none()
    }
    fn reset(&self, _: &State, seen: &BTreeSet<ObjectRef>, _: bool) -> Affected {
        self.slices().retain(|key, _| seen.contains(key));
        self.publish();
        self.found.listed();
        Affected::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slice(address_type: &str, ports: serde_json::Value, endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": "kube-dns-x", "namespace": "kube-system"},
            "addressType": address_type,
            "ports": ports,
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn ready_endpoints_on_the_dns_udp_port_and_terminating_ones_apart() {
        let kube_dns = slice(
            "IPv4",
            json!([
                {"name": "metrics", "protocol": "TCP", "port": 9153},
                {"name": "dns-tcp", "protocol": "TCP", "port": 53},
                {"name": "dns", "protocol": "UDP", "port": 5353},
            ]),
            json!([
                {"addresses": ["10.244.0.3", "10.244.9.9"], "conditions": {"ready": true}},
                {"addresses": ["10.244.0.2"]},
                {"addresses": ["10.244.0.4"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.244.0.5"], "conditions": {"ready": false}},
            ]),
        );
        let servers = servers_of(&kube_dns);
        assert_eq!(servers.ready, addrs(&["10.244.0.2:5353", "10.244.0.3:5353"]), "first addresses only");
        assert_eq!(servers.serving, addrs(&["10.244.0.4:5353"]));
    }

    #[test]
    fn another_udp_port_then_53_for_a_port_without_number_and_none_without_udp() {
        let other =
            slice("IPv6", json!([{"name": "x", "protocol": "UDP", "port": 1053}]), json!([{"addresses": ["fd00::a"]}]));
        assert_eq!(servers_of(&other).ready, addrs(&["[fd00::a]:1053"]));
        let any_port = slice("IPv4", json!([{"protocol": "UDP"}]), json!([{"addresses": ["10.0.0.1"]}]));
        assert_eq!(servers_of(&any_port).ready, addrs(&["10.0.0.1:53"]));
        for ports in [json!([]), json!([{"protocol": "TCP", "port": 53}])] {
            let none = slice("IPv4", ports, json!([{"addresses": ["10.0.0.1"]}]));
            assert_eq!(servers_of(&none), Servers::default());
        }
        let fqdn = slice("FQDN", json!([{"protocol": "UDP", "port": 53}]), json!([{"addresses": ["dns.example"]}]));
        assert_eq!(servers_of(&fqdn), Servers::default());
    }

    #[test]
    fn terminating_endpoints_are_asked_only_when_none_is_ready() {
        let (_, found) = crate::dns::Resolver::discovering(&[], std::time::Duration::from_secs(1)).unwrap();
        let watch = DnsService::new("kube-system".into(), "kube-dns".into(), found.clone());
        let ports = json!([{"name": "dns", "protocol": "UDP", "port": 53}]);
        let old = slice(
            "IPv4",
            ports.clone(),
            json!([{"addresses": ["10.0.0.1"], "conditions": {"ready": false, "serving": true}}]),
        );
        let new = slice("IPv4", ports, json!([{"addresses": ["10.0.0.2"], "conditions": {"ready": true}}]));
        watch.slices().insert(ObjectRef::new("kube-system", "old"), servers_of(&old));
        watch.publish();
        assert_eq!(found.servers(), addrs(&["10.0.0.1:53"]), "a rollout's last terminating replica");
        watch.slices().insert(ObjectRef::new("kube-system", "new"), servers_of(&new));
        watch.publish();
        assert_eq!(found.servers(), addrs(&["10.0.0.2:53"]), "ready ones win");
    }
}
