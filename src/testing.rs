//! Builders for the unit tests of the pure core: one set, shared by every
//! module's tests (the integration tests have `tests/support`).

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};

use crate::api::{
    BackendPort, BackendTls, BackendType, ExternalHostnameBackend, LocalObjectReference, SecretObjectReference,
    TlsMode, TlsValidation, XBackendSpec,
};
use crate::model::{Ancestor, ObjectRef, Referrer, RouteKind};

pub fn r(namespace: &str, name: &str) -> ObjectRef {
    ObjectRef::new(namespace, name)
}

/// A Gateway that is an ancestor through an HTTPRoute, the common case.
pub fn http_ancestor(gateway: ObjectRef) -> Ancestor {
    Ancestor { gateway, referrers: [Referrer::Route(RouteKind::Http)].into_iter().collect() }
}

pub fn key() -> ObjectRef {
    r("app", "b")
}

pub fn plain_spec() -> XBackendSpec {
    XBackendSpec {
        type_: BackendType::ExternalHostname,
        port: BackendPort { port: Some(443), ..BackendPort::default() },
        external_hostname: Some(ExternalHostnameBackend { hostname: "api.example.com".into() }),
        endpoint_selector: None,
        session_persistence: None,
        protocol: None,
        tls: None,
    }
}

pub fn secret_ref(namespace: Option<&str>, name: &str) -> SecretObjectReference {
    SecretObjectReference { group: None, kind: None, name: name.into(), namespace: namespace.map(str::to_string) }
}

pub fn ca_ref(name: &str) -> LocalObjectReference {
    LocalObjectReference { group: "".into(), kind: "ConfigMap".into(), name: name.into() }
}

pub fn tls_spec(client: Option<SecretObjectReference>, cas: Vec<LocalObjectReference>) -> XBackendSpec {
    let mut spec = plain_spec();
    spec.tls = Some(Box::new(BackendTls {
        mode: if client.is_some() { TlsMode::ClientAndServer } else { TlsMode::ServerOnly },
        client_certificate_ref: client.map(Box::new),
        validation: Some(TlsValidation {
            ca_certificate_refs: (!cas.is_empty()).then_some(cas),
            well_known_ca_certificates: None,
            hostname: "api.example.com".into(),
            subject_alt_names: None,
        }),
    }));
    spec
}

pub fn tls_secret(entries: &[(&str, &str)], type_: &str) -> Secret {
    Secret {
        type_: Some(type_.into()),
        data: Some(entries.iter().map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec()))).collect()),
        ..Secret::default()
    }
}

pub fn ca_config_map(entries: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        data: Some(entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
        ..ConfigMap::default()
    }
}

pub struct Pem {
    pub cert: String,
    pub key: String,
}

pub fn pem() -> Pem {
    let certified = rcgen::generate_simple_self_signed(vec!["client.example.com".to_string()]).expect("certificate");
    Pem { cert: certified.cert.pem(), key: certified.signing_key.serialize_pem() }
}

pub fn valid_secret() -> Secret {
    let pem = pem();
    tls_secret(&[("tls.crt", &pem.cert), ("tls.key", &pem.key)], "kubernetes.io/tls")
}

pub fn valid_ca() -> ConfigMap {
    ca_config_map(&[("ca.crt", &pem().cert)])
}
