//! Whether the kind of object that uses an XBackend can carry its protocol and
//! TLS (docs/api.md "Route kind and backend"). Judged per Gateway ancestor.

use crate::api::{BackendProtocol, TlsMode, XBackendSpec};
use crate::model::{Referrer, Referrers, RouteKind};

/// The first use (in `Referrers` order) that cannot carry `spec`, as the
/// sentence an Invalid condition reports; None when every use can.
pub fn misfit(referrers: Referrers, spec: &XBackendSpec) -> Option<String> {
    referrers.iter().find_map(|referrer| misfit_one(referrer, spec))
}

fn misfit_one(referrer: Referrer, spec: &XBackendSpec) -> Option<String> {
    let Referrer::Route(route) = referrer else {
        // ExternalAuth on a Gateway or ListenerSet chooses its own protocol (HTTP or GRPC).
        return None;
    };
    let kind = route.kind();
    let tls = spec.tls.as_ref().is_some_and(|tls| tls.mode != TlsMode::None);
    match (route, spec.protocol) {
        // Every XBackend protocol, and TLS, runs over a byte stream; a UDPRoute carries datagrams.
        (RouteKind::Udp, _) if tls => Some(format!(
            "spec.tls: a {kind} carries datagrams and TLS needs a byte stream; use this XBackend from a TCPRoute or TLSRoute, or set tls.mode None."
        )),
        (RouteKind::Udp, Some(protocol)) => Some(format!(
            "spec.protocol: {} runs over TCP and a {kind} carries UDP datagrams; leave spec.protocol unset for UDP.",
            name(protocol)
        )),
        // An L4 route forwards the client's bytes; it has no requests to speak HTTP or gRPC with.
        (RouteKind::Tcp | RouteKind::Tls, Some(protocol)) if protocol != BackendProtocol::Tcp => Some(format!(
            "spec.protocol: a {kind} forwards a byte stream and cannot speak {} to the destination; leave spec.protocol unset or TCP, or use this XBackend from an HTTPRoute or GRPCRoute.",
            name(protocol)
        )),
        // gRPC needs HTTP/2 framing.
        (RouteKind::Grpc, Some(protocol @ (BackendProtocol::Http11 | BackendProtocol::Wss))) => Some(format!(
            "spec.protocol: a {kind} needs HTTP/2 and {} is not; set GRPC, HTTP2, H2C or leave spec.protocol unset.",
            name(protocol)
        )),
        _ => None,
    }
}

/// The protocol as the API spells it.
fn name(protocol: BackendProtocol) -> String {
    serde_json::to_value(protocol).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::BackendProtocol::*;

    fn spec(protocol: Option<BackendProtocol>, tls: Option<TlsMode>) -> XBackendSpec {
        let mut value = serde_json::json!({
            "type": "ExternalHostname",
            "port": {"number": 443},
            "externalHostname": {"hostname": "api.example.com"},
        });
        if let Some(protocol) = protocol {
            value["protocol"] = serde_json::to_value(protocol).unwrap();
        }
        if let Some(mode) = tls {
            value["tls"] = serde_json::json!({"mode": mode, "validation": {"hostname": "api.example.com"}});
        }
        serde_json::from_value(value).unwrap()
    }

    fn used_from(referrers: &[Referrer]) -> Referrers {
        referrers.iter().copied().collect()
    }

    const UDP: Referrer = Referrer::Route(RouteKind::Udp);
    const TCP: Referrer = Referrer::Route(RouteKind::Tcp);
    const TLS: Referrer = Referrer::Route(RouteKind::Tls);
    const GRPC: Referrer = Referrer::Route(RouteKind::Grpc);
    const HTTP: Referrer = Referrer::Route(RouteKind::Http);

    #[test]
    fn udp_carries_neither_tls_nor_a_stream_protocol() {
        let message = misfit(used_from(&[UDP]), &spec(None, Some(TlsMode::ServerOnly))).unwrap();
        assert!(message.starts_with("spec.tls: a UDPRoute carries datagrams"), "{message}");
        let message = misfit(used_from(&[UDP]), &spec(Some(Tcp), None)).unwrap();
        assert!(message.contains("TCP runs over TCP"), "{message}");
        assert_eq!(misfit(used_from(&[UDP]), &spec(None, None)), None);
        assert_eq!(misfit(used_from(&[UDP]), &spec(None, Some(TlsMode::None))), None, "mode None is clear text");
    }

    #[test]
    fn l4_routes_carry_tls_but_no_application_protocol() {
        for route in [TCP, TLS] {
            assert_eq!(misfit(used_from(&[route]), &spec(None, Some(TlsMode::ServerOnly))), None);
            assert_eq!(misfit(used_from(&[route]), &spec(Some(Tcp), Some(TlsMode::ClientAndServer))), None);
            for protocol in [Http, Http2, Http11, H2c, Mcp, Grpc, Wss] {
                let message = misfit(used_from(&[route]), &spec(Some(protocol), None)).unwrap();
                assert!(message.contains(&format!("cannot speak {}", name(protocol))), "{message}");
            }
        }
    }

    #[test]
    fn grpc_needs_http2() {
        for protocol in [Http11, Wss] {
            assert!(misfit(used_from(&[GRPC]), &spec(Some(protocol), Some(TlsMode::ServerOnly))).is_some());
        }
        for protocol in [None, Some(Grpc), Some(Http2), Some(Http)] {
            assert_eq!(misfit(used_from(&[GRPC]), &spec(protocol, Some(TlsMode::ServerOnly))), None);
        }
    }

    #[test]
    fn http_and_external_auth_carry_everything() {
        let all = used_from(&[HTTP, Referrer::Gateway, Referrer::ListenerSet]);
        for protocol in [None, Some(Tcp), Some(Http11), Some(Wss), Some(Mcp)] {
            assert_eq!(misfit(all, &spec(protocol, Some(TlsMode::ServerOnly))), None);
        }
    }

    #[test]
    fn one_misfit_among_several_uses_is_enough() {
        let message = misfit(used_from(&[HTTP, UDP]), &spec(None, Some(TlsMode::ServerOnly))).unwrap();
        assert!(message.contains("UDPRoute"), "{message}");
    }
}
