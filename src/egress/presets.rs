//! What a data plane itself needs to reach, besides what its routes name:
//! built-in presets by GatewayClass controllerName (Istio, Envoy Gateway;
//! sources in docs/security.md), and the operator's `--egress-needs` per class.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Allowed, Destination, Protocols, Source};
use crate::model::{ObjectRef, PortRef, Protocol};

/// What the data planes of one implementation need.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Needs {
    /// Destinations of their own (the control plane), as rules.
    pub rules: Vec<Allowed>,
    /// Ports every in-cluster Pods destination gets besides its own (Istio
    /// ambient sends HBONE to the destination Pods' port 15008).
    pub pod_ports: Vec<(Protocol, u16)>,
}

/// Istio's controllerName for the Gateways it deploys proxies for.
pub const ISTIO: &str = "istio.io/gateway-controller";
/// Envoy Gateway's controllerName.
pub const ENVOY_GATEWAY: &str = "gateway.envoyproxy.io/gatewayclass-controller";

/// The built-in preset of a controllerName, if any.
///
/// - Istio (sidecar and ambient modes): istiod in `istio-system` (Pods
///   `app: istiod`), TCP 15012 (xDS and certificates; pilot-agent's default
///   discovery address `istiod.istio-system.svc:15012`); every Pods
///   destination also on TCP 15008, where ambient's ztunnel takes HBONE for
///   ambient-enrolled Pods (sidecar and mesh-less Pods are reached on their
///   target port, which the rule already holds).
/// - Envoy Gateway: its controller in `envoy-gateway-system` (Pods
///   `control-plane: envoy-gateway`), TCP 18000 (xDS). Backends are reached
///   at Pod addresses on their target port (routingType Endpoint, the
///   default).
pub fn preset(controller: &str) -> Option<Needs> {
    let pods = |namespace: &str, name: &str, labels: &[(&str, &str)], port: u16| Allowed {
        source: Source::Need(ObjectRef::new(namespace, name)),
        destination: Destination::Pods { labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() },
        port: PortRef::Number(port),
        protocols: Protocols::TCP,
    };
    match controller {
        ISTIO => Some(Needs {
            rules: vec![pods("istio-system", "istiod", &[("app", "istiod")], 15012)],
            pod_ports: vec![(Protocol::Tcp, 15008)],
        }),
        ENVOY_GATEWAY => Some(Needs {
            rules: vec![pods("envoy-gateway-system", "envoy-gateway", &[("control-plane", "envoy-gateway")], 18000)],
            pod_ports: Vec::new(),
        }),
        _ => None,
    }
}

/// One `--egress-needs CLASS=DESTINATION` value: the class, and the
/// destination's rules (none for `none`: the class needs nothing).
///
/// DESTINATION is `none`, `NAMESPACE/KEY=VALUE[,KEY=VALUE]:PORTS` (Pods) or
/// `CIDR[,CIDR]:PORTS` (networks); PORTS is `PORT[/udp][,PORT[/udp]]`
/// (TCP unless `/udp` or `/sctp`).
pub fn parse(text: &str) -> Result<(String, Vec<Allowed>), String> {
    let (class, destination) = text.split_once('=').ok_or("expected CLASS=DESTINATION")?;
    if class.is_empty() {
        return Err("the GatewayClass name is empty".into());
    }
    if destination == "none" {
        return Ok((class.to_string(), Vec::new()));
    }
    let (target, ports) = destination.rsplit_once(':').ok_or(
        "expected NAMESPACE/KEY=VALUE,...:PORTS, CIDR,...:PORTS or none (PORTS: 15012 or 8125/udp, comma-separated)",
    )?;
    let mut by_protocol: BTreeMap<u16, Protocols> = BTreeMap::new();
    for port in ports.split(',') {
        let (number, protocol) = port.split_once('/').unwrap_or((port, "tcp"));
        let number: u16 = number.parse().ok().filter(|n| *n > 0).ok_or(format!("{port:?} is not a port (1-65535)"))?;
        let protocol = Protocol::parse(Some(&protocol.to_ascii_uppercase()))
            .ok_or(format!("{protocol:?} is not tcp, udp or sctp"))?;
        let entry = by_protocol.entry(number).or_default();
        *entry = entry.with(protocol);
    }
    let (source, destination) = match target.split_once('/') {
        Some((namespace, labels)) if labels.contains('=') => {
            let labels: BTreeMap<String, String> = labels
                .split(',')
                .map(|pair| pair.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
                .collect::<Option<_>>()
                .ok_or("each label is KEY=VALUE")?;
            if namespace.is_empty() || labels.is_empty() || labels.keys().any(String::is_empty) {
                return Err("Pods need a namespace and at least one KEY=VALUE label".into());
            }
            let name = labels.values().next().cloned().unwrap_or_default();
            (ObjectRef::new(namespace, name), Destination::Pods { labels })
        }
        _ => {
            let networks: Vec<ipnet::IpNet> = target
                .split(',')
                .map(|cidr| cidr.parse::<ipnet::IpNet>().map_err(|e| format!("{cidr:?} is not a CIDR: {e}")))
                .collect::<Result<_, _>>()?;
            (ObjectRef::new("", target), Destination::Networks(Arc::from(networks)))
        }
    };
    let rules = by_protocol
        .into_iter()
        .map(|(port, protocols)| Allowed {
            source: Source::Need(source.clone()),
            destination: destination.clone(),
            port: PortRef::Number(port),
            protocols,
        })
        .collect();
    Ok((class.to_string(), rules))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_for_istio_and_envoy_gateway_only() {
        let istio = preset(ISTIO).unwrap();
        assert_eq!(istio.rules[0].port, PortRef::Number(15012));
        assert_eq!(istio.rules[0].namespace(), "istio-system");
        assert_eq!(istio.pod_ports, [(Protocol::Tcp, 15008)], "ambient's HBONE");
        let eg = preset(ENVOY_GATEWAY).unwrap();
        assert_eq!((eg.rules[0].namespace(), &eg.rules[0].port), ("envoy-gateway-system", &PortRef::Number(18000)));
        assert!(eg.pod_ports.is_empty());
        assert!(preset("example.com/other").is_none());
    }

    #[test]
    fn needs_parse_pods_networks_and_none() {
        let (class, rules) = parse("eg=envoy-gateway-system/control-plane=envoy-gateway:18000,18002").unwrap();
        assert_eq!((class.as_str(), rules.len()), ("eg", 2));
        assert_eq!(rules[1].port, PortRef::Number(18002));
        let (_, rules) = parse("mesh=10.0.0.0/24,2001:db8::/64:4317,8125/udp").unwrap();
        assert_eq!(rules.len(), 2);
        assert!(matches!(&rules[0].destination, Destination::Networks(n) if n.len() == 2));
        assert_eq!(rules[1].protocols, Protocols::of(Protocol::Udp));
        let (class, rules) = parse("ours=none").unwrap();
        assert!(class == "ours" && rules.is_empty());
        for bad in [
            "noequals",
            "=none",
            "c=ns/app=x",
            "c=ns/app=x:0",
            "c=ns/app=x:99999",
            "c=10.0.0.0/33:80",
            "c=ns/:80",
            "c=ns/app=x:80/icmp",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
