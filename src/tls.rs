//! Checks of the objects TLS settings point at: the client certificate Secret
//! and the CA bundle ConfigMap (DESIGN.md §4, ResolvedRefs reasons).

use k8s_openapi::api::core::v1::{ConfigMap, Secret};

/// Ok when the Secret is a usable client certificate: type kubernetes.io/tls,
/// `tls.crt` and `tls.key` present, PEM that parses, key matching the
/// certificate. Err is a message naming the Secret and the problem; it never
/// contains key material.
pub fn check_client_certificate(secret: &Secret) -> Result<(), String> {
    let _ = secret;
    todo!()
}

/// Ok when the ConfigMap has `ca.crt` with at least one parseable certificate.
pub fn check_ca_bundle(config_map: &ConfigMap) -> Result<(), String> {
    let _ = config_map;
    todo!()
}
