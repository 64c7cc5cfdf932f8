//! The cluster DNS Service's EndpointSlices (`--dns-service`): each ready
//! endpoint is a DNS server the check asks, so the answers of every replica
//! the data plane may reach are judged and allowed (docs/security.md).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::Api;
use kube::runtime::watcher;

use super::{Affected, Indexer};
use crate::dns::Found;
use crate::model::ObjectRef;
use crate::runtime::state::State;

/// The label EndpointSlices carry for the Service they serve.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The port when a slice names none (kube-dns names its UDP port `dns`).
const DNS_PORT: u16 = 53;

/// Follows one Service's EndpointSlices into the resolver's `Found` set.
pub struct DnsService {
    pub namespace: String,
    pub service: String,
    pub found: Arc<Found>,
    /// The servers each slice gives, by slice: the set is their union.
    slices: Mutex<BTreeMap<ObjectRef, Vec<SocketAddr>>>,
}

impl DnsService {
    pub fn new(namespace: String, service: String, found: Arc<Found>) -> DnsService {
        DnsService { namespace, service, found, slices: Mutex::default() }
    }

    fn slices(&self) -> std::sync::MutexGuard<'_, BTreeMap<ObjectRef, Vec<SocketAddr>>> {
        self.slices.lock().expect("dns slices lock")
    }

    /// Sets the union of every slice's servers.
    fn publish(&self) -> Result<(), String> {
        let servers = self.slices().values().flatten().copied().collect();
        self.found.set(servers).map(|_| ())
    }
}

/// The DNS servers one EndpointSlice gives: each address of each endpoint not
/// marked unready, on the slice's UDP port (the one named `dns` first).
/// FQDN slices give none: a server is an address.
pub fn servers_of(slice: &EndpointSlice) -> Vec<SocketAddr> {
    if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
        return Vec::new();
    }
    let udp = |p: &&k8s_openapi::api::discovery::v1::EndpointPort| p.protocol.as_deref() == Some("UDP");
    let ports = slice.ports.as_deref().unwrap_or_default();
    let port = match ports.iter().filter(udp).find(|p| p.name.as_deref() == Some("dns")).or(ports.iter().find(udp)) {
        Some(p) => p.port.and_then(|p| u16::try_from(p).ok()),
        // No ports listed means every port of the address.
        None if ports.is_empty() => Some(DNS_PORT),
        None => None,
    };
    let Some(port) = port else { return Vec::new() };
    let mut servers: Vec<SocketAddr> = (slice.endpoints.iter().flatten())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .flat_map(|e| e.addresses.iter())
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    servers.sort();
    servers.dedup();
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
        self.publish()?;
        // The DNS check asks every hostname again when the set changes.
        Ok(Affected::none())
    }
    fn delete(&self, _: &State, key: &ObjectRef) -> Affected {
        self.slices().remove(key);
        let _ = self.publish();
        Affected::none()
    }
    fn reset(&self, _: &State, seen: &BTreeSet<ObjectRef>, _: bool) -> Affected {
        self.slices().retain(|key, _| seen.contains(key));
        let _ = self.publish();
        self.found.listed();
        Affected::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(address_type: &str, ports: serde_json::Value, endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
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
    fn every_ready_address_on_the_dns_udp_port() {
        let kube_dns = slice(
            "IPv4",
            serde_json::json!([
                {"name": "metrics", "protocol": "TCP", "port": 9153},
                {"name": "dns-tcp", "protocol": "TCP", "port": 53},
                {"name": "dns", "protocol": "UDP", "port": 5353},
            ]),
            serde_json::json!([
                {"addresses": ["10.244.0.3"], "conditions": {"ready": true}},
                {"addresses": ["10.244.0.2"]},
                {"addresses": ["10.244.0.4"], "conditions": {"ready": false, "serving": true}},
            ]),
        );
        assert_eq!(servers_of(&kube_dns), addrs(&["10.244.0.2:5353", "10.244.0.3:5353"]));
    }

    #[test]
    fn another_udp_port_then_port_53_when_none_is_listed() {
        let other = slice(
            "IPv6",
            serde_json::json!([{"name": "x", "protocol": "UDP", "port": 1053}]),
            serde_json::json!([{"addresses": ["fd00::a"]}]),
        );
        assert_eq!(servers_of(&other), addrs(&["[fd00::a]:1053"]));
        let portless = slice("IPv4", serde_json::json!([]), serde_json::json!([{"addresses": ["10.0.0.1"]}]));
        assert_eq!(servers_of(&portless), addrs(&["10.0.0.1:53"]));
        let tcp_only = slice(
            "IPv4",
            serde_json::json!([{"protocol": "TCP", "port": 53}]),
            serde_json::json!([{"addresses": ["10.0.0.1"]}]),
        );
        assert_eq!(servers_of(&tcp_only), addrs(&[]));
        let fqdn = slice("FQDN", serde_json::json!([]), serde_json::json!([{"addresses": ["dns.example"]}]));
        assert_eq!(servers_of(&fqdn), addrs(&[]));
    }
}
