//! Checks of the objects TLS settings point at: the client certificate Secret
//! and the CA bundle ConfigMap (docs/design.md §4, ResolvedRefs reasons).
//!
//! PEM is read the way TLS data planes read it: text outside PEM blocks is
//! ignored, but a malformed block or a certificate that does not parse fails
//! the whole object, since a data plane loading it would fail too.

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub const SECRET_TYPE_TLS: &str = "kubernetes.io/tls";
pub const TLS_CRT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
pub const CA_CRT: &str = "ca.crt";

/// Why a Secret is not a usable client certificate. `Display` completes the
/// sentence "Secret ns/name is not a usable client certificate: …" (the caller
/// names the Secret), never quotes key material, and has no final period.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    #[error("its type is {0:?}; a client certificate Secret must have type {SECRET_TYPE_TLS}")]
    WrongType(String),
    #[error("it has no {TLS_CRT}; add the PEM client certificate")]
    NoCertificate,
    #[error("it has no {TLS_KEY}; add the PEM private key")]
    NoKey,
    #[error("{TLS_CRT} {0}")]
    Certificates(#[source] PemError),
    #[error("{TLS_KEY} {0}")]
    Key(#[source] KeyError),
    #[error("{TLS_KEY} is not a usable private key (supported: RSA of at least 2048 bits, ECDSA P-256/P-384, Ed25519)")]
    UnsupportedKey,
    #[error("{TLS_KEY} is a key type whose public key cannot be compared with {TLS_CRT}")]
    IncomparableKey,
    #[error(
        "{TLS_KEY} does not match the first certificate in {TLS_CRT}; put the certificate and the key of the same pair in the Secret"
    )]
    KeyMismatch,
}

/// Why a ConfigMap is not a usable CA bundle; completes "ConfigMap ns/name is
/// not a usable CA bundle: …".
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CaBundleError {
    #[error("it has {CA_CRT} in binaryData; put the PEM CA bundle under data instead")]
    InBinaryData,
    #[error("it has no {CA_CRT} in data; put the PEM CA bundle under that key")]
    Missing,
    #[error("{CA_CRT} is empty; put the PEM CA bundle there")]
    Empty,
    #[error("{CA_CRT} {0}")]
    Certificates(#[source] PemError),
}

/// A problem with the certificates of a PEM value; completes a sentence that
/// starts with the key's name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PemError {
    #[error("has a malformed PEM block after {after} certificate(s): {problem}")]
    Malformed { after: usize, problem: PemProblem },
    #[error("certificate {position} does not parse as X.509: {reason}")]
    NotX509 { position: usize, reason: String },
    #[error("has no PEM certificate (a -----BEGIN CERTIFICATE----- block)")]
    NoCertificate,
}

/// A problem with a PEM private key; completes a sentence starting with `tls.key`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("is an encrypted private key; store it unencrypted (PKCS#1, PKCS#8 or SEC1 PEM)")]
    Encrypted,
    #[error("has no PEM private key (PKCS#1, PKCS#8 or SEC1)")]
    Missing,
    #[error("is not a valid PEM private key: {0}")]
    Malformed(PemProblem),
}

/// What is wrong with a PEM block, without quoting it. `rustls_pki_types`'s
/// own errors are not kept as sources on purpose: base64 errors carry offsets
/// into secret data and section errors carry input lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PemProblem {
    #[error("a BEGIN line has no matching END line")]
    MissingEnd,
    #[error("a BEGIN line is malformed")]
    MalformedBegin,
    #[error("the block is not valid base64")]
    Base64,
    #[error("a block is too large")]
    TooLarge,
    #[error("the PEM cannot be read")]
    Unreadable,
}

/// Ok when the Secret is a usable client certificate: type kubernetes.io/tls,
/// `tls.crt` and `tls.key` present, PEM that parses, key matching the
/// certificate.
pub fn check_client_certificate(secret: &Secret) -> Result<(), CertificateError> {
    let type_ = secret.type_.as_deref().unwrap_or("Opaque");
    if type_ != SECRET_TYPE_TLS {
        return Err(CertificateError::WrongType(type_.to_string()));
    }
    let crt = secret_value(secret, TLS_CRT).ok_or(CertificateError::NoCertificate)?;
    let key = secret_value(secret, TLS_KEY).ok_or(CertificateError::NoKey)?;

    let certs = parse_certificates(crt).map_err(CertificateError::Certificates)?;
    // parse_certificates never returns an empty list.
    let leaf = certs.first().ok_or(CertificateError::Certificates(PemError::NoCertificate))?;
    let key_der = parse_private_key(key).map_err(CertificateError::Key)?;

    let signing_key =
        rustls::crypto::ring::sign::any_supported_type(&key_der).map_err(|_| CertificateError::UnsupportedKey)?;
    let key_spki = signing_key.public_key().ok_or(CertificateError::IncomparableKey)?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| CertificateError::Certificates(PemError::NotX509 { position: 1, reason: e.to_string() }))?;
    if parsed.tbs_certificate.subject_pki.raw != key_spki.as_ref() {
        return Err(CertificateError::KeyMismatch);
    }
    Ok(())
}

/// Ok when the ConfigMap has `ca.crt` with at least one parseable certificate.
///
/// Only `data` counts: Gateway API names the key `ca.crt` of a ConfigMap's
/// data, and data planes read it from there, so a bundle in `binaryData` is
/// reported as misplaced rather than silently accepted.
pub fn check_ca_bundle(config_map: &ConfigMap) -> Result<(), CaBundleError> {
    let Some(bundle) = config_map.data.as_ref().and_then(|d| d.get(CA_CRT)) else {
        if config_map.binary_data.as_ref().is_some_and(|d| d.contains_key(CA_CRT)) {
            return Err(CaBundleError::InBinaryData);
        }
        return Err(CaBundleError::Missing);
    };
    if bundle.trim().is_empty() {
        return Err(CaBundleError::Empty);
    }
    parse_certificates(bundle.as_bytes()).map(|_| ()).map_err(CaBundleError::Certificates)
}

/// Every CERTIFICATE block, each checked to be X.509; at least one required.
fn parse_certificates(pem_bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let mut certs = Vec::new();
    for (i, item) in CertificateDer::pem_slice_iter(pem_bytes).enumerate() {
        let der = item.map_err(|e| PemError::Malformed { after: i, problem: pem_problem(&e) })?;
        if let Err(e) = x509_parser::parse_x509_certificate(&der) {
            return Err(PemError::NotX509 { position: i + 1, reason: e.to_string() });
        }
        certs.push(der);
    }
    if certs.is_empty() {
        return Err(PemError::NoCertificate);
    }
    Ok(certs)
}

/// The first private key block. Errors describe the problem without echoing
/// any of the input, which is secret.
fn parse_private_key(pem_bytes: &[u8]) -> Result<PrivateKeyDer<'static>, KeyError> {
    PrivateKeyDer::from_pem_slice(pem_bytes).map_err(|e| match e {
        pem::Error::NoItemsFound if contains(pem_bytes, b"ENCRYPTED PRIVATE KEY") => KeyError::Encrypted,
        pem::Error::NoItemsFound => KeyError::Missing,
        other => KeyError::Malformed(pem_problem(&other)),
    })
}

fn pem_problem(e: &pem::Error) -> PemProblem {
    match e {
        pem::Error::MissingSectionEnd { .. } => PemProblem::MissingEnd,
        pem::Error::IllegalSectionStart { .. } => PemProblem::MalformedBegin,
        pem::Error::Base64Decode(_) => PemProblem::Base64,
        pem::Error::SectionTooLarge => PemProblem::TooLarge,
        _ => PemProblem::Unreadable,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A non-empty value of `key`. `stringData` wins over `data` as on the API
/// server, which matters for objects read from files by `analyze`.
fn secret_value<'a>(secret: &'a Secret, key: &str) -> Option<&'a [u8]> {
    let from_string = secret.string_data.as_ref().and_then(|d| d.get(key)).map(|s| s.as_bytes());
    let from_data = || secret.data.as_ref().and_then(|d| d.get(key)).map(|b| b.0.as_slice());
    from_string.or_else(from_data).filter(|v| !v.iter().all(u8::is_ascii_whitespace))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use proptest::prelude::*;
    use rcgen::{CertificateParams, KeyPair, SignatureAlgorithm};
    use std::collections::BTreeMap;

    struct Pair {
        cert_pem: String,
        key_pem: String,
    }

    fn pair(alg: &'static SignatureAlgorithm) -> Pair {
        let key = KeyPair::generate_for(alg).expect("generate key");
        let cert = CertificateParams::new(vec!["client.example".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("self-sign");
        Pair { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }

    fn p256() -> Pair {
        pair(&rcgen::PKCS_ECDSA_P256_SHA256)
    }

    fn secret(type_: Option<&str>, data: &[(&str, &[u8])]) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("client-cert".into()),
                namespace: Some("apps".into()),
                ..Default::default()
            },
            type_: type_.map(String::from),
            data: Some(data.iter().map(|(k, v)| (k.to_string(), ByteString(v.to_vec()))).collect()),
            ..Default::default()
        }
    }

    fn tls_secret(crt: &str, key: &str) -> Secret {
        secret(Some(SECRET_TYPE_TLS), &[(TLS_CRT, crt.as_bytes()), (TLS_KEY, key.as_bytes())])
    }

    fn config_map(data: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta { name: Some("ca".into()), namespace: Some("apps".into()), ..Default::default() },
            data: Some(data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()),
            ..Default::default()
        }
    }

    /// Asserts the error contains `needle`, does not name the object (the
    /// caller's sentence does), and that no line of the private key leaks into it.
    #[track_caller]
    fn assert_err(result: Result<(), CertificateError>, needle: &str, key_pem: &str) {
        let err = result.expect_err("expected an error").to_string();
        assert!(err.contains(needle), "expected {needle:?} in: {err}");
        assert!(!err.contains("apps/"), "the caller names the object: {err}");
        assert!(!err.ends_with('.'), "completes the caller's sentence: {err}");
        for line in key_pem.lines().filter(|l| !l.starts_with("-----") && l.len() > 8) {
            assert!(!err.contains(line), "key material leaked into: {err}");
        }
    }

    /// The key of a PKCS#8 EC key, re-wrapped as SEC1 ("EC PRIVATE KEY").
    fn sec1_pem(pkcs8_pem: &str) -> String {
        use x509_parser::der_parser::ber::BerObjectContent;
        let der = PrivateKeyDer::from_pem_slice(pkcs8_pem.as_bytes()).expect("pkcs8");
        let (_, seq) = x509_parser::der_parser::parse_der(der.secret_der()).expect("pkcs8 DER");
        let BerObjectContent::Sequence(items) = seq.content else { panic!("PKCS#8 is a SEQUENCE") };
        let inner = items[2].as_slice().expect("privateKey OCTET STRING");
        pem_encode("EC PRIVATE KEY", inner)
    }

    fn pem_encode(label: &str, der: &[u8]) -> String {
        const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut b64 = String::new();
        for chunk in der.chunks(3) {
            let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..4 {
                if i <= chunk.len() {
                    b64.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    b64.push('=');
                }
            }
        }
        let body: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("ascii")).collect();
        format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", body.join("\n"))
    }

    // ---- client certificate ----

    #[test]
    fn matching_pairs_are_accepted() {
        for alg in [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519] {
            let p = pair(alg);
            assert_eq!(check_client_certificate(&tls_secret(&p.cert_pem, &p.key_pem)), Ok(()), "{alg:?}");
        }
    }

    #[test]
    fn sec1_keys_are_accepted() {
        let p = p256();
        let sec1 = sec1_pem(&p.key_pem);
        assert!(sec1.starts_with("-----BEGIN EC PRIVATE KEY-----"));
        assert_eq!(check_client_certificate(&tls_secret(&p.cert_pem, &sec1)), Ok(()));
    }

    #[test]
    fn chain_and_surrounding_text_are_accepted() {
        let leaf = p256();
        let ca = p256();
        let crt = format!("subject=client\n{}\n{}", leaf.cert_pem, ca.cert_pem);
        assert_eq!(check_client_certificate(&tls_secret(&crt, &leaf.key_pem)), Ok(()));
    }

    #[test]
    fn string_data_counts_like_data() {
        let p = p256();
        let mut s = secret(Some(SECRET_TYPE_TLS), &[(TLS_CRT, b"stale")]);
        s.string_data =
            Some(BTreeMap::from([(TLS_CRT.into(), p.cert_pem.clone()), (TLS_KEY.into(), p.key_pem.clone())]));
        assert_eq!(check_client_certificate(&s), Ok(()));
    }

    #[test]
    fn mismatched_key_is_rejected() {
        let a = p256();
        let b = p256();
        assert_err(check_client_certificate(&tls_secret(&a.cert_pem, &b.key_pem)), "does not match", &b.key_pem);
        // A key of another algorithm cannot match either.
        let ed = pair(&rcgen::PKCS_ED25519);
        assert_err(check_client_certificate(&tls_secret(&a.cert_pem, &ed.key_pem)), "does not match", &ed.key_pem);
        // The key must match the first certificate, not any in the chain.
        let crt = format!("{}{}", b.cert_pem, a.cert_pem);
        assert_err(check_client_certificate(&tls_secret(&crt, &a.key_pem)), "first certificate", &a.key_pem);
    }

    #[test]
    fn wrong_type_is_rejected() {
        let p = p256();
        let data: &[(&str, &[u8])] = &[(TLS_CRT, p.cert_pem.as_bytes()), (TLS_KEY, p.key_pem.as_bytes())];
        assert_err(check_client_certificate(&secret(Some("Opaque"), data)), "kubernetes.io/tls", &p.key_pem);
        assert_err(check_client_certificate(&secret(None, data)), "\"Opaque\"", &p.key_pem);
    }

    #[test]
    fn missing_or_empty_keys_are_rejected() {
        let p = p256();
        let t = Some(SECRET_TYPE_TLS);
        assert_err(check_client_certificate(&secret(t, &[(TLS_KEY, p.key_pem.as_bytes())])), "no tls.crt", &p.key_pem);
        assert_err(check_client_certificate(&secret(t, &[(TLS_CRT, p.cert_pem.as_bytes())])), "no tls.key", "");
        assert_err(
            check_client_certificate(&secret(t, &[(TLS_CRT, b" \n"), (TLS_KEY, p.key_pem.as_bytes())])),
            "no tls.crt",
            &p.key_pem,
        );
        assert_err(
            check_client_certificate(&secret(t, &[(TLS_CRT, p.cert_pem.as_bytes()), (TLS_KEY, b"")])),
            "no tls.key",
            "",
        );
        let mut no_data = secret(t, &[]);
        no_data.data = None;
        assert_err(check_client_certificate(&no_data), "no tls.crt", "");
    }

    #[test]
    fn garbage_certificates_are_rejected() {
        let p = p256();
        let cases = [
            ("not pem at all", "no PEM certificate"),
            (p.key_pem.as_str(), "no PEM certificate"),
            ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "does not parse as X.509"),
            ("-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n", "not valid base64"),
            ("-----BEGIN CERTIFICATE-----\nMIIB\n", "no matching END"),
        ];
        for (crt, needle) in cases {
            assert_err(check_client_certificate(&tls_secret(crt, &p.key_pem)), needle, &p.key_pem);
        }
        // A bad certificate later in the chain fails too: the data plane loads the whole chain.
        let crt = format!("{}-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", p.cert_pem);
        assert_err(check_client_certificate(&tls_secret(&crt, &p.key_pem)), "certificate 2", &p.key_pem);
    }

    #[test]
    fn garbage_keys_are_rejected_without_echoing_them() {
        let p = p256();
        let secret_body = "U0VDUkVUU0VDUkVUU0VDUkVUU0VDUkVU";
        let cases = [
            ("not a key".to_string(), "no PEM private key"),
            (p.cert_pem.clone(), "no PEM private key"),
            (
                format!("-----BEGIN PRIVATE KEY-----\n{secret_body}\n-----END PRIVATE KEY-----\n"),
                "not a usable private key",
            ),
            (format!("-----BEGIN PRIVATE KEY-----\n{secret_body}!\n-----END PRIVATE KEY-----\n"), "not valid base64"),
            (
                format!("-----BEGIN ENCRYPTED PRIVATE KEY-----\n{secret_body}\n-----END ENCRYPTED PRIVATE KEY-----\n"),
                "encrypted",
            ),
            (format!("-----BEGIN PRIVATE KEY-----\n{secret_body}\n"), "no matching END"),
        ];
        for (key, needle) in cases {
            let result = check_client_certificate(&tls_secret(&p.cert_pem, &key));
            assert_err(result.clone(), needle, &key);
            assert!(!result.unwrap_err().to_string().contains("U0VDUkVU"), "secret body echoed");
        }
    }

    // ---- CA bundle ----

    #[test]
    fn ca_bundle_with_certificates_is_accepted() {
        let a = p256();
        let b = pair(&rcgen::PKCS_ED25519);
        assert_eq!(check_ca_bundle(&config_map(&[(CA_CRT, &a.cert_pem)])), Ok(()));
        assert_eq!(check_ca_bundle(&config_map(&[(CA_CRT, &format!("{}{}", a.cert_pem, b.cert_pem))])), Ok(()));
    }

    #[test]
    fn ca_bundle_ignores_text_and_other_blocks_around_a_good_certificate() {
        let a = p256();
        let other_block = pem_encode("X509 CRL", b"not even a CRL");
        let bundle = format!("# Issuer: Example Root\njunk junk\n{other_block}\n{}\ntrailing junk\n", a.cert_pem);
        assert_eq!(check_ca_bundle(&config_map(&[(CA_CRT, &bundle)])), Ok(()));
    }

    #[test]
    fn ca_bundle_without_certificates_is_rejected() {
        let a = p256();
        let cases: Vec<(ConfigMap, &str)> = vec![
            (config_map(&[]), "no ca.crt"),
            (config_map(&[("ca.pem", &a.cert_pem)]), "no ca.crt"),
            (config_map(&[(CA_CRT, "")]), "empty"),
            (config_map(&[(CA_CRT, "junk only\n")]), "no PEM certificate"),
            (config_map(&[(CA_CRT, &a.key_pem)]), "no PEM certificate"),
            (
                config_map(&[(CA_CRT, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")]),
                "does not parse",
            ),
            (
                config_map(&[(
                    CA_CRT,
                    &format!("{}-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", a.cert_pem),
                )]),
                "certificate 2",
            ),
        ];
        for (cm, needle) in cases {
            let err = check_ca_bundle(&cm).expect_err(needle).to_string();
            assert!(err.contains(needle) && !err.contains("apps/ca"), "{needle:?}: {err}");
        }
        let mut binary = config_map(&[]);
        binary.binary_data = Some(BTreeMap::from([(CA_CRT.to_string(), ByteString(a.cert_pem.into_bytes()))]));
        assert_eq!(check_ca_bundle(&binary), Err(CaBundleError::InBinaryData));
        let mut no_data = config_map(&[]);
        no_data.data = None;
        assert_eq!(check_ca_bundle(&no_data), Err(CaBundleError::Missing));
    }

    // ---- properties ----

    fn pemish() -> impl Strategy<Value = Vec<u8>> {
        let label = prop_oneof![
            Just("CERTIFICATE".to_string()),
            Just("PRIVATE KEY".to_string()),
            Just("EC PRIVATE KEY".to_string()),
            Just("RSA PRIVATE KEY".to_string()),
            "[A-Z ]{0,12}",
        ];
        let block = (label, "[A-Za-z0-9+/=\n]{0,200}", any::<bool>()).prop_map(|(label, body, end)| {
            let end = if end { format!("-----END {label}-----\n") } else { String::new() };
            format!("-----BEGIN {label}-----\n{body}\n{end}").into_bytes()
        });
        prop_oneof![proptest::collection::vec(any::<u8>(), 0..512), block]
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(crt in pemish(), key in pemish(), type_ in proptest::option::of("[a-z./]{0,20}")) {
            let s = secret(type_.as_deref(), &[(TLS_CRT, &crt), (TLS_KEY, &key)]);
            if let Err(e) = check_client_certificate(&s) {
                prop_assert!(!e.to_string().contains("client-cert"), "the caller names the Secret: {}", e);
            }
            let _ = check_client_certificate(&tls_secret(&String::from_utf8_lossy(&crt), &String::from_utf8_lossy(&key)));
            let bundle = String::from_utf8_lossy(&crt).into_owned();
            prop_assert!(check_ca_bundle(&config_map(&[(CA_CRT, &bundle)])).is_err(), "random bytes are no certificate");
        }

        #[test]
        fn a_real_certificate_survives_surrounding_noise(noise in "[^-]{0,100}") {
            let p = p256();
            let bundle = format!("{noise}\n{}{noise}", p.cert_pem);
            prop_assert_eq!(check_ca_bundle(&config_map(&[(CA_CRT, &bundle)])), Ok(()));
        }
    }
}
