//! Spec validation (docs/design.md §5a, reason Invalid): every API rule of the
//! CRD and the flag-dependent ones, checked again in case the CRD was not.

use std::net::IpAddr;

use std::collections::BTreeMap;

use crate::api::{
    BackendPort, BackendProtocol, BackendTls, BackendType, CookieLifetimeType, LocalObjectReference,
    SecretObjectReference, SessionPersistence, SessionPersistenceType, SubjectAltName, SubjectAltNameType, TlsMode,
    TlsValidation, XBackendSpec,
};
use crate::names::{MAX_HOSTNAME, MAX_LABEL, dns_label_problem, dns_subdomain_problem, has_dot_suffix, quoted};
use crate::policy::Policy;

// Limits the CRD enforces, repeated here because the CRD may not be the one installed.
const MAX_CA_REFS: usize = 8;
const MAX_SANS: usize = 5;
const MAX_MATCH_LABELS: usize = 64;
const MAX_HTTP_TOKEN: usize = 256;
const MAX_COOKIE_PATH: usize = 1024;

/// One broken API rule: the field path (e.g. `spec.externalHostname.hostname`)
/// and a sentence a user can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub message: String,
}

impl Violation {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Violation {
        Violation { field: field.into(), message: message.into() }
    }
}

/// docs/design.md §5a: every API rule, also when the CRD's CEL was not enforced.
pub fn validate(spec: &XBackendSpec, policy: &Policy) -> Result<(), Vec<Violation>> {
    let mut out = Vec::new();

    match spec.type_ {
        BackendType::ExternalHostname => match &spec.external_hostname {
            None => out.push(Violation::new(
                "spec.externalHostname",
                "spec.externalHostname must be set when spec.type is ExternalHostname; add externalHostname.hostname.",
            )),
            Some(ext) => {
                let field = "spec.externalHostname.hostname";
                if let Some(problem) = external_hostname_problem(&ext.hostname, policy) {
                    out.push(Violation::new(field, format!("{field} {} {problem}.", quoted(&ext.hostname))));
                }
            }
        },
        BackendType::EndpointSelector => match &spec.endpoint_selector {
            None => out.push(Violation::new(
                "spec.endpointSelector",
                "spec.endpointSelector must be set when spec.type is EndpointSelector; add endpointSelector.matchLabels.",
            )),
            Some(selector) => match_labels_problems(&selector.match_labels, &mut out),
        },
    }
    let other_type = |field: &str| {
        Violation::new(
            field,
            format!("{field} must be unset when spec.type is {:?}; remove it or change spec.type.", spec.type_),
        )
    };
    if spec.type_ != BackendType::ExternalHostname && spec.external_hostname.is_some() {
        out.push(other_type("spec.externalHostname"));
    }
    if spec.type_ != BackendType::EndpointSelector {
        if spec.endpoint_selector.is_some() {
            out.push(other_type("spec.endpointSelector"));
        }
        if spec.session_persistence.is_some() {
            out.push(other_type("spec.sessionPersistence"));
        }
    }
    if let Some(persistence) = &spec.session_persistence {
        session_persistence_problems(persistence, &mut out);
    }

    port_problems(&spec.port, &mut out);
    protocol_problems(spec, &mut out);
    if let Some(tls) = &spec.tls {
        validate_tls(tls, &mut out);
    }

    if out.is_empty() { Ok(()) } else { Err(out) }
}

/// `number` (v1.7) or `port` (v1.6), each 1..65535, and the same value when both are set.
fn port_problems(port: &BackendPort, out: &mut Vec<Violation>) {
    for (field, value) in [("spec.port.number", port.number), ("spec.port.port", port.port)] {
        if let Some(value) = value
            && !(1..=65535).contains(&value)
        {
            out.push(Violation::new(field, format!("{field} is {value}; it must be between 1 and 65535.")));
        }
    }
    match (port.number, port.port) {
        (None, None) => out.push(Violation::new(
            "spec.port",
            "spec.port has no port number; set spec.port.number (Gateway API v1.7) or spec.port.port (v1.6).",
        )),
        (Some(number), Some(old)) if number != old => out.push(Violation::new(
            "spec.port",
            format!(
                "spec.port.number is {number} but spec.port.port is {old}; keep only spec.port.number (the Gateway API v1.7 field)."
            ),
        )),
        _ => {}
    }
    if let Some(name) = port.name.as_deref().filter(|n| !n.is_empty())
        && let Some(problem) = dns_label_problem(name)
    {
        out.push(Violation::new(
            "spec.port.name",
            format!(
                "spec.port.name {} {problem}; it must be empty or a DNS label (lowercase letters, digits and '-').",
                quoted(name)
            ),
        ));
    }
}

/// Gateway API v1.7's protocol/TLS pairs: H2C is clear text, HTTP2 and WSS need TLS.
fn protocol_problems(spec: &XBackendSpec, out: &mut Vec<Violation>) {
    let tls_on = spec.tls.as_ref().is_some_and(|tls| tls.mode != TlsMode::None);
    let problem = match spec.protocol {
        Some(BackendProtocol::H2c) if tls_on => {
            "spec.protocol is H2C (HTTP/2 in clear text), but spec.tls.mode is not None; remove spec.tls or use protocol HTTP2 for HTTP/2 over TLS."
        }
        Some(BackendProtocol::Http2) if !tls_on => {
            "spec.protocol is HTTP2, which needs spec.tls with mode ServerOnly or ClientAndServer; add TLS or use protocol H2C for HTTP/2 in clear text."
        }
        Some(BackendProtocol::Wss) if !tls_on => {
            "spec.protocol is WSS (WebSocket over TLS), which needs spec.tls with mode ServerOnly or ClientAndServer."
        }
        _ => return,
    };
    out.push(Violation::new("spec.protocol", problem));
}

/// 1 to 64 labels, keys and values in Kubernetes label syntax.
fn match_labels_problems(labels: &BTreeMap<String, String>, out: &mut Vec<Violation>) {
    let field = "spec.endpointSelector.matchLabels";
    if labels.is_empty() || labels.len() > MAX_MATCH_LABELS {
        out.push(Violation::new(
            field,
            format!("{field} has {} entries; it needs 1 to {MAX_MATCH_LABELS} labels.", labels.len()),
        ));
    }
    for (key, value) in labels {
        if let Some(problem) = label_key_problem(key) {
            out.push(Violation::new(field, format!("{field} key {} {problem}.", quoted(key))));
        }
        if let Some(problem) = label_value_problem(value) {
            out.push(Violation::new(
                format!("{field}[{key}]"),
                format!("{field}[{key}] value {} {problem}.", quoted(value)),
            ));
        }
    }
}

/// A qualified name: an optional DNS-subdomain prefix and '/', then a name of at
/// most 63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric.
fn label_key_problem(key: &str) -> Option<&'static str> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && (prefix.is_empty() || dns_subdomain_problem(prefix).is_some())
    {
        return Some("has a prefix that is not a lowercase DNS subdomain of at most 253 characters");
    }
    if name.is_empty() {
        return Some("has an empty name; label keys are [prefix/]name");
    }
    label_value_problem(name)
}

/// A label value: empty, or at most 63 alphanumerics, '-', '_' or '.', starting
/// and ending alphanumeric.
fn label_value_problem(value: &str) -> Option<&'static str> {
    if value.is_empty() {
        return None;
    }
    if value.len() > MAX_LABEL {
        return Some("is longer than 63 characters");
    }
    let edges_ok =
        value.starts_with(|c: char| c.is_ascii_alphanumeric()) && value.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !edges_ok || !value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Some("must be letters, digits, '-', '_' or '.', starting and ending with a letter or digit");
    }
    None
}

/// The rules upstream's SessionPersistence schema carries (type defaults to Cookie).
fn session_persistence_problems(persistence: &SessionPersistence, out: &mut Vec<Violation>) {
    let base = "spec.sessionPersistence";
    let type_ = persistence.type_.unwrap_or(SessionPersistenceType::Cookie);
    match (type_, &persistence.cookie, &persistence.header) {
        (SessionPersistenceType::Cookie, None, _) => out
            .push(Violation::new(format!("{base}.cookie"), format!("{base}.cookie must be set when type is Cookie."))),
        (SessionPersistenceType::Header, _, None) => out
            .push(Violation::new(format!("{base}.header"), format!("{base}.header must be set when type is Header."))),
        _ => {}
    }
    if type_ != SessionPersistenceType::Cookie && persistence.cookie.is_some() {
        out.push(Violation::new(
            format!("{base}.cookie"),
            format!("{base}.cookie must be unset unless type is Cookie."),
        ));
    }
    if type_ != SessionPersistenceType::Header && persistence.header.is_some() {
        out.push(Violation::new(
            format!("{base}.header"),
            format!("{base}.header must be unset unless type is Header."),
        ));
    }
    if let Some(timeout) = &persistence.absolute_timeout
        && !is_gateway_duration(timeout)
    {
        out.push(Violation::new(
            format!("{base}.absoluteTimeout"),
            format!("{base}.absoluteTimeout {} is not a duration such as 1h or 30m.", quoted(timeout)),
        ));
    }
    if let Some(cookie) = &persistence.cookie {
        if cookie.lifetime_type == Some(CookieLifetimeType::Permanent) && persistence.absolute_timeout.is_none() {
            out.push(Violation::new(
                format!("{base}.absoluteTimeout"),
                format!("{base}.absoluteTimeout must be set when cookie.lifetimeType is Permanent."),
            ));
        }
        if let Some(name) = &cookie.name {
            http_token_problems(&format!("{base}.cookie.name"), name, out);
        }
        if cookie.path.as_ref().is_some_and(|p| p.len() > MAX_COOKIE_PATH) {
            out.push(Violation::new(
                format!("{base}.cookie.path"),
                format!("{base}.cookie.path is longer than {MAX_COOKIE_PATH} characters."),
            ));
        }
    }
    if let Some(header) = &persistence.header {
        http_token_problems(&format!("{base}.header.name"), &header.name, out);
    }
}

fn http_token_problems(field: &str, value: &str, out: &mut Vec<Violation>) {
    let token_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if value.is_empty() || value.len() > MAX_HTTP_TOKEN || !value.chars().all(token_char) {
        out.push(Violation::new(
            field,
            format!("{field} {} is not an HTTP token of 1 to {MAX_HTTP_TOKEN} characters.", quoted(value)),
        ));
    }
}

/// Gateway API's Duration: one to four `<1-5 digits><h|m|s|ms>` parts.
fn is_gateway_duration(value: &str) -> bool {
    let mut rest = value;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if !(1..=5).contains(&digits) {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ms", "h", "m", "s"].into_iter().find(|u| rest.starts_with(u));
        let Some(unit) = unit else { return false };
        rest = &rest[unit.len()..];
        parts += 1;
    }
    (1..=4).contains(&parts)
}

fn validate_tls(tls: &BackendTls, out: &mut Vec<Violation>) {
    match (tls.mode, &tls.validation) {
        (TlsMode::None, Some(_)) => out.push(Violation::new(
            "spec.tls.validation",
            "spec.tls.validation must be unset when spec.tls.mode is None; remove it or set mode to ServerOnly.",
        )),
        (TlsMode::ServerOnly | TlsMode::ClientAndServer, None) => out.push(Violation::new(
            "spec.tls.validation",
            format!(
                "spec.tls.validation must be set when spec.tls.mode is {:?}; add validation.hostname, the name the server certificate must carry.",
                tls.mode
            ),
        )),
        _ => {}
    }
    match (tls.mode, &tls.client_certificate_ref) {
        (TlsMode::ClientAndServer, None) => out.push(Violation::new(
            "spec.tls.clientCertificateRef",
            "spec.tls.clientCertificateRef must be set when spec.tls.mode is ClientAndServer; reference a kubernetes.io/tls Secret.",
        )),
        (TlsMode::None | TlsMode::ServerOnly, Some(_)) => out.push(Violation::new(
            "spec.tls.clientCertificateRef",
            format!(
                "spec.tls.clientCertificateRef must be unset when spec.tls.mode is {:?}; remove it or set mode to ClientAndServer.",
                tls.mode
            ),
        )),
        _ => {}
    }
    if let Some(r) = &tls.client_certificate_ref {
        secret_ref_problems("spec.tls.clientCertificateRef", r, out);
    }
    if let Some(v) = &tls.validation {
        validate_tls_validation(v, out);
    }
}

fn validate_tls_validation(v: &TlsValidation, out: &mut Vec<Violation>) {
    let field = "spec.tls.validation.hostname";
    if let Some(problem) = precise_hostname_problem(&v.hostname) {
        out.push(Violation::new(
            field,
            format!("{field} {} {problem}; it must be a precise lowercase DNS name.", quoted(&v.hostname)),
        ));
    }

    let refs = v.ca_certificate_refs.as_deref().unwrap_or_default();
    if v.ca_certificate_refs.as_ref().is_some_and(Vec::is_empty) {
        out.push(Violation::new(
            "spec.tls.validation.caCertificateRefs",
            "spec.tls.validation.caCertificateRefs is an empty list; name at least one ConfigMap or remove the field.",
        ));
    }
    if refs.len() > MAX_CA_REFS {
        out.push(Violation::new(
            "spec.tls.validation.caCertificateRefs",
            format!(
                "spec.tls.validation.caCertificateRefs has {} entries; at most {MAX_CA_REFS} are allowed.",
                refs.len()
            ),
        ));
    }
    for (i, r) in refs.iter().enumerate() {
        local_ref_problems(&format!("spec.tls.validation.caCertificateRefs[{i}]"), r, out);
    }

    let well_known = v.well_known_ca_certificates.as_deref();
    if let Some(wk) = well_known
        && !is_well_known_ca(wk)
    {
        out.push(Violation::new(
            "spec.tls.validation.wellKnownCACertificates",
            format!(
                "spec.tls.validation.wellKnownCACertificates {} is not System or a prefixed name such as example.com/my-cas.",
                quoted(wk)
            ),
        ));
    }
    if v.ca_certificate_refs.is_some() && well_known.is_some() {
        out.push(Violation::new(
            "spec.tls.validation",
            "spec.tls.validation sets both caCertificateRefs and wellKnownCACertificates; keep only one.",
        ));
    }

    let sans = v.subject_alt_names.as_deref().unwrap_or_default();
    if sans.len() > MAX_SANS {
        out.push(Violation::new(
            "spec.tls.validation.subjectAltNames",
            format!("spec.tls.validation.subjectAltNames has {} entries; at most {MAX_SANS} are allowed.", sans.len()),
        ));
    }
    for (i, san) in sans.iter().enumerate() {
        san_problems(&format!("spec.tls.validation.subjectAltNames[{i}]"), san, out);
    }
}

fn san_problems(base: &str, san: &SubjectAltName, out: &mut Vec<Violation>) {
    let hostname = san.hostname.as_deref().filter(|h| !h.is_empty());
    let uri = san.uri.as_deref().filter(|u| !u.is_empty());
    match san.type_ {
        SubjectAltNameType::Hostname => {
            match hostname {
                None => out.push(Violation::new(
                    format!("{base}.hostname"),
                    format!("{base}.hostname must be set when type is Hostname."),
                )),
                Some(h) => {
                    // A SAN may be a wildcard certificate name, unlike the SNI hostname.
                    let bare = h.strip_prefix("*.").unwrap_or(h);
                    if let Some(problem) = dns_subdomain_problem(bare)
                        .or_else(|| (h.len() > MAX_HOSTNAME).then_some("is longer than 253 characters"))
                    {
                        out.push(Violation::new(
                            format!("{base}.hostname"),
                            format!(
                                "{base}.hostname {} {problem}; it must be a lowercase DNS name, optionally starting with *.",
                                quoted(h)
                            ),
                        ));
                    }
                }
            }
            if uri.is_some() {
                out.push(Violation::new(
                    format!("{base}.uri"),
                    format!("{base}.uri must be unset when type is Hostname."),
                ));
            }
        }
        SubjectAltNameType::Uri => {
            match uri {
                None => out.push(Violation::new(format!("{base}.uri"), format!("{base}.uri must be set when type is URI."))),
                Some(u) if !is_uri(u) => out.push(Violation::new(
                    format!("{base}.uri"),
                    format!(
                        "{base}.uri {} is not an absolute URI such as spiffe://trust.domain/workload (at most 253 characters).",
                        quoted(u)
                    ),
                )),
                Some(_) => {}
            }
            if hostname.is_some() {
                out.push(Violation::new(
                    format!("{base}.hostname"),
                    format!("{base}.hostname must be unset when type is URI."),
                ));
            }
        }
    }
}

fn secret_ref_problems(base: &str, r: &SecretObjectReference, out: &mut Vec<Violation>) {
    if let Some(group) = &r.group {
        group_problems(base, group, out);
    }
    if let Some(kind) = &r.kind {
        kind_problems(base, kind, out);
    }
    name_problems(base, &r.name, out);
    if let Some(ns) = &r.namespace
        && let Some(problem) = dns_label_problem(ns)
    {
        out.push(Violation::new(
            format!("{base}.namespace"),
            format!("{base}.namespace {} {problem}; it must be a namespace name.", quoted(ns)),
        ));
    }
}

fn local_ref_problems(base: &str, r: &LocalObjectReference, out: &mut Vec<Violation>) {
    group_problems(base, &r.group, out);
    kind_problems(base, &r.kind, out);
    name_problems(base, &r.name, out);
}

fn group_problems(base: &str, group: &str, out: &mut Vec<Violation>) {
    if !group.is_empty()
        && let Some(problem) = dns_subdomain_problem(group)
    {
        out.push(Violation::new(
            format!("{base}.group"),
            format!(
                "{base}.group {} {problem}; it must be empty (core) or an API group such as example.com.",
                quoted(group)
            ),
        ));
    }
}

fn kind_problems(base: &str, kind: &str, out: &mut Vec<Violation>) {
    let ok = !kind.is_empty()
        && kind.len() <= MAX_LABEL
        && kind.starts_with(|c: char| c.is_ascii_alphabetic())
        && kind.ends_with(|c: char| c.is_ascii_alphanumeric())
        && kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !ok {
        out.push(Violation::new(
            format!("{base}.kind"),
            format!("{base}.kind {} is not a kind name such as Secret or ConfigMap.", quoted(kind)),
        ));
    }
}

fn name_problems(base: &str, name: &str, out: &mut Vec<Violation>) {
    if name.is_empty() || name.len() > MAX_HOSTNAME {
        out.push(Violation::new(format!("{base}.name"), format!("{base}.name must be 1 to 253 characters long.")));
    }
}

/// Why an externalHostname hostname is not allowed by the API, most specific first.
pub fn external_hostname_problem(hostname: &str, policy: &Policy) -> Option<String> {
    if hostname.is_empty() {
        return Some("is empty; set the destination's DNS name".into());
    }
    if is_ip_literal(hostname) {
        return Some(
            "is an IP address; XBackend needs a DNS name, and in-cluster or fixed-IP destinations belong in a Service"
                .into(),
        );
    }
    if let Some(problem) = precise_hostname_problem(hostname) {
        return Some(problem.into());
    }
    if ends_in_numeric_label(hostname) {
        return Some("ends in an all-numeric label, which resolvers may read as an IP address; use a DNS name".into());
    }
    for domain in policy.all_cluster_domains() {
        if hostname == domain || has_dot_suffix(hostname, domain) {
            return Some(format!(
                "is inside the cluster domain {domain}; route in-cluster traffic to a Service instead"
            ));
        }
    }
    None
}

/// Problems of a name that must be an exact (non-wildcard) lowercase DNS name.
fn precise_hostname_problem(hostname: &str) -> Option<&'static str> {
    if hostname.contains('*') {
        return Some("is a wildcard; give one exact DNS name");
    }
    if hostname.ends_with('.') && hostname.len() > 1 {
        return Some("ends with a dot; drop the trailing dot");
    }
    if hostname.chars().any(|c| c.is_ascii_uppercase()) {
        return Some("has uppercase letters; DNS names here must be lowercase");
    }
    if hostname.len() > MAX_HOSTNAME {
        return Some("is longer than 253 characters");
    }
    dns_subdomain_problem(hostname)
}

fn is_ip_literal(s: &str) -> bool {
    let unbracketed = s.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or(s);
    unbracketed.parse::<IpAddr>().is_ok()
}

fn ends_in_numeric_label(hostname: &str) -> bool {
    hostname.rsplit('.').next().is_some_and(|last| !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()))
}

/// The CRD's wellKnownCACertificates pattern: `System`, or `domain/name` with a
/// DNS-subdomain prefix and a 1-63 character name.
fn is_well_known_ca(value: &str) -> bool {
    if value == "System" {
        return true;
    }
    if value.is_empty() || value.len() > MAX_HOSTNAME {
        return false;
    }
    let Some((prefix, name)) = value.split_once('/') else { return false };
    dns_subdomain_problem(prefix).is_none()
        && !name.is_empty()
        && name.len() <= MAX_LABEL
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The CRD's URI pattern: a scheme, then `://`; the rest is free.
fn is_uri(value: &str) -> bool {
    if value.len() > MAX_HOSTNAME {
        return false;
    }
    let Some((scheme, rest)) = value.split_once(':') else { return false };
    !scheme.is_empty() && !scheme.contains(['/', '?', '#']) && rest.starts_with("//")
}

/// Several violations in one condition message; the list is capped so the
/// message stays readable.
pub fn join_violations(violations: &[Violation]) -> String {
    const SHOWN: usize = 5;
    let mut message = violations.iter().take(SHOWN).map(|v| v.message.as_str()).collect::<Vec<_>>().join(" ");
    if violations.len() > SHOWN {
        message.push_str(&format!(" ({} more problems not shown.)", violations.len() - SHOWN));
    }
    message
}

/// True when traffic to this backend would be clear text (tls absent or mode None).
pub fn is_insecure(spec: &XBackendSpec) -> bool {
    spec.tls.as_ref().is_none_or(|tls| tls.mode == TlsMode::None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions::{self, Verdict, reason};
    use crate::guardrails::{self, NoNamespaces};
    use crate::policy::PolicyConfig;
    use proptest::prelude::*;
    use serde_json::json;

    fn spec(value: serde_json::Value) -> XBackendSpec {
        serde_json::from_value(value).expect("test spec decodes")
    }

    /// The verdict of the spec and the flags alone (no cluster, no DNS).
    fn accepted_verdict(spec: Result<&XBackendSpec, &str>, policy: &Policy) -> Verdict {
        crate::verdict::accepted(spec, policy, crate::verdict::Context::STATIC)
    }

    fn check_egress(hostname: &str, policy: &Policy) -> Result<(), String> {
        guardrails::check_egress(hostname, policy, &NoNamespaces)
    }

    /// The seed example from the issue: must pass everything.
    fn seed() -> serde_json::Value {
        json!({
            "type": "ExternalHostname",
            "port": {"port": 443},
            "externalHostname": {"hostname": "api.openai.com"},
            "tls": {"mode": "ServerOnly", "validation": {"hostname": "api.openai.com"}}
        })
    }

    fn with(mut base: serde_json::Value, pointer: &str, value: serde_json::Value) -> serde_json::Value {
        let (parent, key) = pointer.rsplit_once('/').expect("pointer has a slash");
        let target = if parent.is_empty() { &mut base } else { base.pointer_mut(parent).expect("parent exists") };
        target[key] = value;
        base
    }

    fn without(mut base: serde_json::Value, pointer: &str) -> serde_json::Value {
        let (parent, key) = pointer.rsplit_once('/').expect("pointer has a slash");
        let target = if parent.is_empty() { &mut base } else { base.pointer_mut(parent).expect("parent exists") };
        target.as_object_mut().expect("object").remove(key);
        base
    }

    fn policy(config: PolicyConfig) -> Policy {
        Policy::new(config).expect("valid policy")
    }

    fn violations(value: serde_json::Value) -> Vec<Violation> {
        violations_with(value, &Policy::default())
    }

    fn violations_with(value: serde_json::Value, p: &Policy) -> Vec<Violation> {
        match validate(&spec(value), p) {
            Ok(()) => Vec::new(),
            Err(v) => {
                assert!(!v.is_empty(), "Err must carry at least one violation");
                v
            }
        }
    }

    /// Asserts exactly one violation, on `field`, whose message names the field
    /// and contains `needle`.
    #[track_caller]
    fn assert_rejected(value: serde_json::Value, field: &str, needle: &str) {
        let v = violations(value);
        assert_eq!(v.len(), 1, "expected one violation on {field}, got {v:#?}");
        assert_eq!(v[0].field, field, "{v:#?}");
        assert!(v[0].message.contains(field), "message should name {field}: {}", v[0].message);
        assert!(v[0].message.contains(needle), "message should contain {needle:?}: {}", v[0].message);
    }

    #[track_caller]
    fn assert_valid(value: serde_json::Value) {
        let v = violations(value);
        assert!(v.is_empty(), "expected valid, got {v:#?}");
    }

    fn host(h: &str) -> serde_json::Value {
        with(seed(), "/externalHostname/hostname", json!(h))
    }

    // ---- globs ----

    #[test]
    fn subdomain_glob_matches_every_depth_but_not_the_apex() {
        let p = policy(PolicyConfig { allow_hostnames: vec!["*.example.com".into()], ..Default::default() });
        for ok in ["a.example.com", "a.b.example.com", "A.Example.COM"] {
            assert_eq!(check_egress(ok, &p), Ok(()), "{ok}");
        }
        for bad in ["example.com", "badexample.com", "example.com.evil.net", "a.example.org"] {
            assert!(check_egress(bad, &p).is_err(), "{bad} should not match *.example.com");
        }
    }

    #[test]
    fn plain_glob_matches_exactly_and_ignores_case() {
        let p = policy(PolicyConfig { deny_hostnames: vec!["API.OpenAI.com".into()], ..Default::default() });
        assert!(check_egress("api.openai.com", &p).is_err());
        assert!(check_egress("API.OPENAI.COM", &p).is_err());
        assert_eq!(check_egress("x.api.openai.com", &p), Ok(()));
        assert_eq!(check_egress("api.openai.com.evil.net", &p), Ok(()));
    }

    // ---- validate: type/externalHostname union ----

    #[test]
    fn seed_example_is_valid() {
        assert_valid(seed());
        assert_eq!(accepted_verdict(Ok(&spec(seed())), &Policy::default()), conditions::accepted());
    }

    #[test]
    fn external_hostname_is_required() {
        assert_rejected(without(seed(), "/externalHostname"), "spec.externalHostname", "must be set");
    }

    // ---- validate: externalHostname.hostname ----

    #[test]
    fn hostname_rules_reject() {
        let long_label = "a".repeat(64);
        let too_long = format!("{}.com", vec!["a".repeat(62); 4].join("."));
        assert_eq!(too_long.len(), 255);
        let cases: Vec<(String, &str)> = vec![
            ("".into(), "is empty"),
            ("10.1.2.3".into(), "IP address"),
            ("::1".into(), "IP address"),
            ("[2001:db8::1]".into(), "IP address"),
            ("2001:db8::1".into(), "IP address"),
            ("API.openai.com".into(), "uppercase"),
            ("*.openai.com".into(), "wildcard"),
            ("api.*.com".into(), "wildcard"),
            ("api.openai.com.".into(), "trailing dot"),
            (too_long, "253"),
            (format!("{long_label}.com"), "63"),
            ("-api.openai.com".into(), "'-'"),
            ("api-.openai.com".into(), "'-'"),
            ("api_x.openai.com".into(), "characters"),
            ("api..openai.com".into(), "empty label"),
            (".openai.com".into(), "empty label"),
            ("foo.123".into(), "all-numeric"),
            ("1234".into(), "all-numeric"),
            ("127.1".into(), "all-numeric"),
            ("cluster.local".into(), "cluster domain cluster.local"),
            ("db.svc.cluster.local".into(), "cluster domain cluster.local"),
            ("x.cluster.local".into(), "Service"),
        ];
        for (h, needle) in cases {
            assert_rejected(host(&h), "spec.externalHostname.hostname", needle);
        }
    }

    #[test]
    fn hostname_rules_accept() {
        let max = format!("{}.{}", vec!["a".repeat(63); 3].join("."), "b".repeat(61));
        assert_eq!(max.len(), 253);
        for h in [
            "api.openai.com",
            "a.b",
            "1password.com",
            "123.example.com",
            "xn--bcher-kva.example",
            "notcluster.local",
            "cluster.local.example.com",
            "svc.example.com",
            max.as_str(),
        ] {
            assert_valid(host(h));
        }
    }

    #[test]
    fn cluster_domain_flag_extends_the_in_cluster_rule() {
        let p = policy(PolicyConfig { cluster_domains: vec!["corp.internal".into()], ..Default::default() });
        for h in ["corp.internal", "db.corp.internal", "a.b.svc.corp.internal"] {
            let v = violations_with(host(h), &p);
            assert_eq!(v.len(), 1, "{h}: {v:?}");
            assert!(v[0].message.contains("corp.internal"), "{}", v[0].message);
            assert!(violations(host(h)).is_empty(), "{h} is fine without --cluster-domain");
        }
        assert!(violations_with(host("notcorp.internal"), &p).is_empty());
    }

    // ---- validate: port ----

    #[test]
    fn port_number_range() {
        for bad in [0, 65536, -1, i32::MAX, i32::MIN] {
            assert_rejected(with(seed(), "/port/port", json!(bad)), "spec.port.port", "between 1 and 65535");
        }
        for ok in [1, 80, 65535] {
            assert_valid(with(seed(), "/port/port", json!(ok)));
        }
    }

    #[test]
    fn port_name() {
        for bad in ["Bad_Name", "HTTPS", "-https", "https-", &"a".repeat(64), "a.b"] {
            assert_rejected(with(seed(), "/port/name", json!(bad)), "spec.port.name", "DNS label");
        }
        for ok in ["", "https", "h2", "a", &"a".repeat(63)] {
            assert_valid(with(seed(), "/port/name", json!(ok)));
        }
    }

    // ---- validate: tls ----

    fn mtls() -> serde_json::Value {
        with(seed(), "/tls/mode", json!("ClientAndServer"))
    }

    #[test]
    fn client_certificate_ref_iff_client_and_server() {
        assert_rejected(mtls(), "spec.tls.clientCertificateRef", "must be set");
        let with_ref = with(mtls(), "/tls/clientCertificateRef", json!({"name": "client-cert"}));
        assert_valid(with_ref.clone());
        assert_rejected(
            with(with_ref.clone(), "/tls/mode", json!("ServerOnly")),
            "spec.tls.clientCertificateRef",
            "must be unset",
        );
        let mode_none = without(with(with_ref, "/tls/mode", json!("None")), "/tls/validation");
        assert_rejected(mode_none, "spec.tls.clientCertificateRef", "must be unset");
        assert_valid(with(
            mtls(),
            "/tls/clientCertificateRef",
            json!({"group": "", "kind": "Secret", "name": "c", "namespace": "certs"}),
        ));
    }

    #[test]
    fn client_certificate_ref_fields() {
        let cases = [
            (json!({"name": "c", "namespace": "Bad_NS"}), "spec.tls.clientCertificateRef.namespace", "namespace name"),
            (json!({"name": "c", "kind": "1Secret"}), "spec.tls.clientCertificateRef.kind", "kind name"),
            (json!({"name": "c", "group": "Bad_Group"}), "spec.tls.clientCertificateRef.group", "API group"),
            (json!({"name": ""}), "spec.tls.clientCertificateRef.name", "1 to 253"),
        ];
        for (r, field, needle) in cases {
            assert_rejected(with(mtls(), "/tls/clientCertificateRef", r), field, needle);
        }
    }

    #[test]
    fn validation_hostname_is_precise() {
        let field = "spec.tls.validation.hostname";
        for (bad, needle) in [
            ("*.openai.com", "wildcard"),
            ("API.openai.com", "uppercase"),
            ("api.openai.com.", "trailing dot"),
            ("", "empty"),
        ] {
            assert_rejected(with(seed(), "/tls/validation/hostname", json!(bad)), field, needle);
        }
        assert_rejected(
            with(seed(), "/tls/validation/hostname", json!(format!("{}.com", "a".repeat(64)))),
            field,
            "63",
        );
        assert_valid(with(seed(), "/tls/validation/hostname", json!("other.example.com")));
    }

    #[test]
    fn ca_sources() {
        let cm = json!({"group": "", "kind": "ConfigMap", "name": "ca"});
        assert_valid(with(seed(), "/tls/validation/caCertificateRefs", json!([cm.clone()])));
        assert_valid(with(seed(), "/tls/validation/caCertificateRefs", json!(vec![cm.clone(); 8])));
        assert_rejected(
            with(seed(), "/tls/validation/caCertificateRefs", json!(vec![cm.clone(); 9])),
            "spec.tls.validation.caCertificateRefs",
            "at most 8",
        );
        let both = with(
            with(seed(), "/tls/validation/caCertificateRefs", json!([cm])),
            "/tls/validation/wellKnownCACertificates",
            json!("System"),
        );
        assert_rejected(both, "spec.tls.validation", "both");
        // Gateway API v1.7: an empty list is refused (minItems 1), alone or not.
        assert_rejected(
            with(seed(), "/tls/validation/caCertificateRefs", json!([])),
            "spec.tls.validation.caCertificateRefs",
            "empty list",
        );
        assert_rejected(
            with(
                seed(),
                "/tls/validation/caCertificateRefs",
                json!([{"group": "", "kind": "Config_Map", "name": "ca"}]),
            ),
            "spec.tls.validation.caCertificateRefs[0].kind",
            "kind name",
        );
    }

    #[test]
    fn well_known_ca_pattern() {
        for ok in ["System", "example.com/my-cas", "example.com/a", "a.b/X_y.z-1"] {
            assert_valid(with(seed(), "/tls/validation/wellKnownCACertificates", json!(ok)));
        }
        for bad in [
            "",
            "system",
            "Custom",
            "example.com/",
            "/name",
            "Example.com/x",
            "example.com/-x",
            "example.com/a/b",
            &format!("e.com/{}", "a".repeat(64)),
        ] {
            assert_rejected(
                with(seed(), "/tls/validation/wellKnownCACertificates", json!(bad)),
                "spec.tls.validation.wellKnownCACertificates",
                "System",
            );
        }
    }

    fn sans(list: serde_json::Value) -> serde_json::Value {
        with(seed(), "/tls/validation/subjectAltNames", list)
    }

    #[test]
    fn subject_alt_names_accept() {
        assert_valid(sans(json!([
            {"type": "Hostname", "hostname": "api.openai.com"},
            {"type": "Hostname", "hostname": "*.openai.com"},
            {"type": "URI", "uri": "spiffe://trust.example/ns/default/sa/api"},
            {"type": "URI", "uri": "https://example.com"},
            {"type": "Hostname", "hostname": "x.example", "uri": ""},
        ])));
    }

    #[test]
    fn subject_alt_names_reject() {
        let f = "spec.tls.validation.subjectAltNames[0]";
        let cases = [
            (json!({"type": "Hostname"}), format!("{f}.hostname"), "must be set"),
            (json!({"type": "Hostname", "hostname": ""}), format!("{f}.hostname"), "must be set"),
            (
                json!({"type": "Hostname", "hostname": "a.example", "uri": "spiffe://x/y"}),
                format!("{f}.uri"),
                "must be unset",
            ),
            (json!({"type": "URI"}), format!("{f}.uri"), "must be set"),
            (
                json!({"type": "URI", "uri": "spiffe://x/y", "hostname": "a.example"}),
                format!("{f}.hostname"),
                "must be unset",
            ),
            (json!({"type": "URI", "uri": "not a uri"}), format!("{f}.uri"), "absolute URI"),
            (json!({"type": "URI", "uri": "mailto:someone@example.com"}), format!("{f}.uri"), "absolute URI"),
            (json!({"type": "Hostname", "hostname": "*.Example.com"}), format!("{f}.hostname"), "lowercase"),
            (json!({"type": "Hostname", "hostname": "a.*.com"}), format!("{f}.hostname"), "lowercase DNS name"),
        ];
        for (san, field, needle) in cases {
            assert_rejected(sans(json!([san])), &field, needle);
        }
        let six = json!(vec![json!({"type": "Hostname", "hostname": "a.example"}); 6]);
        assert_rejected(sans(six), "spec.tls.validation.subjectAltNames", "at most 5");
    }

    #[test]
    fn several_violations_are_all_reported_in_field_order() {
        let bad = with(with(host("10.0.0.1"), "/port/port", json!(0)), "/tls/mode", json!("ClientAndServer"));
        let v = violations(bad);
        let fields: Vec<_> = v.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["spec.externalHostname.hostname", "spec.port.port", "spec.tls.clientCertificateRef"]);
        let verdict = accepted_verdict(Ok(&spec(with(host("10.0.0.1"), "/port/port", json!(0)))), &Policy::default());
        assert_eq!(verdict.reason, reason::INVALID);
        assert!(
            verdict.message.contains("IP address") && verdict.message.contains("spec.port.port"),
            "{}",
            verdict.message
        );
    }

    #[test]
    fn huge_values_are_truncated_in_messages() {
        let v = violations(host(&"A".repeat(10_000)));
        assert!(v[0].message.len() < 400, "{}", v[0].message);
        assert!(v[0].message.contains("10000 characters"), "{}", v[0].message);
    }

    // ---- check_egress ----

    #[test]
    fn builtin_egress_denies() {
        let p = Policy::default();
        let cases = [
            ("localhost", "localhost"),
            ("LOCALHOST", "localhost"),
            ("localhost.", "localhost"),
            ("app.localhost", "localhost"),
            ("intranet", "single-label"),
            ("db.svc", ".svc"),
            ("db.prod.svc", ".svc"),
            ("db.prod.svc.cluster.local", ".svc.cluster.local"),
            ("DB.Prod.SVC.Cluster.Local", ".svc.cluster.local"),
            ("metadata.google.internal", "metadata"),
            ("Metadata.Google.Internal.", "metadata"),
            ("instance-data.ec2.internal", "metadata"),
        ];
        for (h, needle) in cases {
            let err = check_egress(h, &p).expect_err(h);
            assert!(err.contains(needle) && err.contains("built-in"), "{h}: {err}");
        }
        for ok in [
            "api.openai.com",
            "localhost.example.com",
            "svc.example.com",
            "my-svc.example.com",
            "metadata.google.internal.example.com",
        ] {
            assert_eq!(check_egress(ok, &p), Ok(()), "{ok}");
        }
    }

    #[test]
    fn svc_under_custom_cluster_domain() {
        let p = policy(PolicyConfig { cluster_domains: vec!["corp.internal".into()], ..Default::default() });
        let err = check_egress("db.ns.svc.corp.internal", &p).unwrap_err();
        assert!(err.contains(".svc.corp.internal"), "{err}");
        // Without the flag the name is still refused: .internal is special-use.
        let err = check_egress("db.ns.svc.corp.internal", &Policy::default()).unwrap_err();
        assert!(err.contains("special-use"), "{err}");
    }

    #[test]
    fn deny_then_allow() {
        let p = policy(PolicyConfig {
            allow_hostnames: vec!["*.example.com".into(), "api.openai.com".into()],
            deny_hostnames: vec!["*.internal.example.com".into()],
            ..Default::default()
        });
        assert_eq!(check_egress("api.openai.com", &p), Ok(()));
        assert_eq!(check_egress("www.example.com", &p), Ok(()));
        let err = check_egress("db.internal.example.com", &p).unwrap_err();
        assert!(err.contains("--deny-hostname") && err.contains("*.internal.example.com"), "{err}");
        let err = check_egress("api.anthropic.com", &p).unwrap_err();
        assert!(err.contains("--allow-hostname") && err.contains("*.example.com"), "{err}");
    }

    #[test]
    fn builtin_deny_cannot_be_allowed_back() {
        let p = policy(PolicyConfig { allow_hostnames: vec!["*".into()], ..Default::default() });
        assert!(check_egress("metadata.google.internal", &p).is_err());
        assert!(check_egress("localhost", &p).is_err());
        assert!(check_egress("printer.local", &p).is_err());
        assert_eq!(check_egress("anything.example.org", &p), Ok(()));
    }

    // ---- accepted_verdict and is_insecure ----

    #[test]
    fn decode_error_is_invalid_with_its_message() {
        let v = accepted_verdict(Err("spec.port.port: invalid type: string \"x\", expected i32"), &Policy::default());
        assert_eq!((v.type_, v.status, v.reason), (conditions::ACCEPTED, false, reason::INVALID));
        assert!(v.message.contains("spec.port.port: invalid type"), "{}", v.message);
    }

    #[test]
    fn verdict_precedence() {
        let strict = policy(PolicyConfig {
            require_tls: true,
            deny_hostnames: vec!["*.openai.com".into()],
            ..Default::default()
        });
        // Invalid beats everything.
        let s = spec(without(host("Bad.openai.com"), "/tls"));
        assert_eq!(accepted_verdict(Ok(&s), &strict).reason, reason::INVALID);
        // HostnameNotAllowed beats TLSRequired.
        let s = spec(without(seed(), "/tls"));
        let v = accepted_verdict(Ok(&s), &strict);
        assert_eq!(v.reason, reason::HOSTNAME_NOT_ALLOWED);
        assert!(v.message.contains("--deny-hostname"), "{}", v.message);
        // TLSRequired only with --require-tls.
        let require = policy(PolicyConfig { require_tls: true, ..Default::default() });
        let v = accepted_verdict(Ok(&s), &require);
        assert_eq!(v.reason, reason::TLS_REQUIRED);
        assert!(v.message.contains("spec.tls") && v.message.contains("--require-tls"), "{}", v.message);
        assert_eq!(accepted_verdict(Ok(&s), &Policy::default()), conditions::accepted());
        let clear = spec(
            json!({"type": "ExternalHostname", "port": {"port": 80}, "externalHostname": {"hostname": "a.example.com"}, "tls": {"mode": "None"}}),
        );
        assert_eq!(accepted_verdict(Ok(&clear), &require).reason, reason::TLS_REQUIRED);
        assert_eq!(accepted_verdict(Ok(&spec(seed())), &require), conditions::accepted());
    }

    #[test]
    fn insecure_means_no_tls_or_mode_none() {
        assert!(is_insecure(&spec(without(seed(), "/tls"))));
        assert!(is_insecure(&spec(with(seed(), "/tls", json!({"mode": "None"})))));
        assert!(!is_insecure(&spec(seed())));
        assert!(!is_insecure(&spec(with(mtls(), "/tls/clientCertificateRef", json!({"name": "c"})))));
    }

    // ---- properties ----

    fn any_text() -> impl Strategy<Value = String> {
        prop_oneof![".*", "[a-zA-Z0-9.*:_\\[\\]-]{0,80}", "\\PC{0,300}"]
    }

    fn any_spec() -> impl Strategy<Value = XBackendSpec> {
        let san = (any::<bool>(), proptest::option::of(any_text()), proptest::option::of(any_text())).prop_map(
            |(uri, hostname, u)| SubjectAltName {
                type_: if uri { SubjectAltNameType::Uri } else { SubjectAltNameType::Hostname },
                hostname,
                uri: u,
            },
        );
        let local_ref = (any_text(), any_text(), any_text()).prop_map(|(group, kind, name)| LocalObjectReference {
            group,
            kind,
            name,
        });
        let secret_ref = (
            proptest::option::of(any_text()),
            proptest::option::of(any_text()),
            any_text(),
            proptest::option::of(any_text()),
        )
            .prop_map(|(group, kind, name, namespace)| SecretObjectReference { group, kind, name, namespace });
        let validation = (
            proptest::option::of(proptest::collection::vec(local_ref, 0..10)),
            proptest::option::of(any_text()),
            any_text(),
            proptest::option::of(proptest::collection::vec(san, 0..7)),
        )
            .prop_map(|(ca_certificate_refs, well_known_ca_certificates, hostname, subject_alt_names)| TlsValidation {
                ca_certificate_refs,
                well_known_ca_certificates,
                hostname,
                subject_alt_names,
            });
        let tls = (
            prop_oneof![Just(TlsMode::None), Just(TlsMode::ServerOnly), Just(TlsMode::ClientAndServer)],
            proptest::option::of(secret_ref),
            proptest::option::of(validation),
        )
            .prop_map(|(mode, client_certificate_ref, validation)| BackendTls {
                mode,
                client_certificate_ref: client_certificate_ref.map(Box::new),
                validation,
            });
        (proptest::option::of(any_text()), any::<i32>(), proptest::option::of(any_text()), proptest::option::of(tls))
            .prop_map(|(hostname, port, name, tls)| XBackendSpec {
                type_: crate::api::BackendType::ExternalHostname,
                port: crate::api::BackendPort { name, number: None, port: Some(port) },
                external_hostname: hostname.map(|hostname| crate::api::ExternalHostnameBackend { hostname }),
                endpoint_selector: None,
                session_persistence: None,
                protocol: None,
                tls: tls.map(Box::new),
            })
    }

    fn label() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?"
    }

    /// Names the built-in guardrails let through (a generated `a.svc` is
    /// rightly denied, which would make glob properties fail by chance).
    fn domain() -> impl Strategy<Value = String> {
        (proptest::collection::vec(label(), 1..3), "[a-z]{2,6}")
            .prop_map(|(labels, tld)| format!("{}.{tld}", labels.join(".")))
            .prop_filter("not denied by a built-in guardrail", |d| {
                check_egress(d, &Policy::new(PolicyConfig::default()).unwrap()).is_ok()
            })
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_specs(s in any_spec(), h in any_text(), require_tls in any::<bool>()) {
            let p = policy(PolicyConfig {
                cluster_domains: vec!["corp.internal".into()],
                allow_hostnames: vec!["*.example.com".into()],
                deny_hostnames: vec!["bad.example.com".into()],
                require_tls,
                ..Default::default()
            });
            let verdict = accepted_verdict(Ok(&s), &p);
            // Every non-accepted verdict explains itself.
            prop_assert!(verdict.status || !verdict.message.is_empty());
            if let Err(v) = validate(&s, &p) {
                prop_assert!(!v.is_empty());
                prop_assert!(v.iter().all(|v| v.message.contains(&v.field)), "{:?}", v);
                prop_assert_eq!(verdict.reason, reason::INVALID);
            }
            let _ = check_egress(&h, &p);
            let _ = accepted_verdict(Err(&h), &p);
        }

        #[test]
        fn policy_new_never_panics(globs in proptest::collection::vec(any_text(), 0..4), domains in proptest::collection::vec(any_text(), 0..3)) {
            let _ = Policy::new(PolicyConfig { cluster_domains: domains, allow_hostnames: globs.clone(), deny_hostnames: globs.clone(), allowed_suffixes: globs.clone(), deny_cidrs: globs.clone(), allow_cidrs: globs, require_tls: false });
        }

        #[test]
        fn subdomain_glob_is_apex_exclusive_and_case_blind(
            apex in domain(),
            sub in proptest::collection::vec(label(), 1..4),
            upper in any::<bool>(),
        ) {
            let p = policy(PolicyConfig { allow_hostnames: vec![format!("*.{apex}")], ..Default::default() });
            let name = format!("{}.{apex}", sub.join("."));
            let name = if upper { name.to_ascii_uppercase() } else { name };
            prop_assert_eq!(check_egress(&name, &p), Ok(()));
            prop_assert!(check_egress(&apex, &p).is_err());
            prop_assert!(check_egress(&apex.to_ascii_uppercase(), &p).is_err());
            // Gluing a label onto the apex without a dot is a different domain.
            let glued = format!("{}{apex}", sub[0]);
            prop_assert!(check_egress(&glued, &p).is_err());
        }

        #[test]
        fn plain_glob_is_exact_and_case_blind(apex in domain(), sub in label()) {
            let p = policy(PolicyConfig { deny_hostnames: vec![apex.to_ascii_uppercase()], ..Default::default() });
            prop_assert!(check_egress(&apex, &p).is_err());
            prop_assert_eq!(check_egress(&format!("{sub}.{apex}"), &p), Ok(()));
        }

        #[test]
        fn well_formed_names_are_valid_and_uppercase_is_not(name in domain()) {
            prop_assert!(validate(&spec(host(&name)), &Policy::default()).is_ok());
            if name.chars().any(|c| c.is_ascii_lowercase()) {
                let v = validate(&spec(host(&name.to_ascii_uppercase())), &Policy::default()).unwrap_err();
                prop_assert!(v[0].message.contains("uppercase"));
            }
        }
    }

    // ---- Gateway API v1.7 ----

    fn selector() -> serde_json::Value {
        json!({"type": "EndpointSelector", "port": {"number": 8080}, "endpointSelector": {"matchLabels": {"app": "web"}}})
    }

    #[test]
    fn both_port_shapes() {
        assert_valid(with(seed(), "/port", json!({"number": 443})));
        assert_valid(with(seed(), "/port", json!({"number": 443, "port": 443})));
        assert_rejected(
            with(seed(), "/port", json!({"number": 443, "port": 8443})),
            "spec.port",
            "keep only spec.port.number",
        );
        assert_rejected(with(seed(), "/port", json!({})), "spec.port", "spec.port.number");
        assert_rejected(with(seed(), "/port", json!({"number": 0})), "spec.port.number", "between 1 and 65535");
        assert_eq!(spec(with(seed(), "/port", json!({"number": 8443}))).port.value(), Some(8443));
    }

    #[test]
    fn endpoint_selector_type() {
        assert_valid(selector());
        assert_valid(with(
            selector(),
            "/endpointSelector/matchLabels",
            json!({"app.example.com/tier": "", "a": "b.c_d-e"}),
        ));
        assert_rejected(without(selector(), "/endpointSelector"), "spec.endpointSelector", "must be set");
        assert_rejected(
            with(selector(), "/externalHostname", json!({"hostname": "a.example.com"})),
            "spec.externalHostname",
            "must be unset",
        );
        assert_rejected(
            with(seed(), "/endpointSelector", json!({"matchLabels": {"a": "b"}})),
            "spec.endpointSelector",
            "must be unset",
        );
        let labels = |l: serde_json::Value| with(selector(), "/endpointSelector/matchLabels", l);
        assert_rejected(labels(json!({})), "spec.endpointSelector.matchLabels", "1 to 64");
        let many: serde_json::Map<_, _> = (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
        assert_rejected(labels(json!(many)), "spec.endpointSelector.matchLabels", "1 to 64");
        for key in ["-app", "Example.com/app", "/app", "a/", &"k".repeat(64)] {
            assert_rejected(labels(json!({key: "v"})), "spec.endpointSelector.matchLabels", "key");
        }
        for value in ["-web", "web_", &"v".repeat(64), "a b"] {
            assert_rejected(labels(json!({"app": value})), "spec.endpointSelector.matchLabels[app]", "value");
        }
        // Guardrails are about hostnames: an EndpointSelector is judged by the API rules alone.
        assert_eq!(accepted_verdict(Ok(&spec(selector())), &Policy::default()), conditions::accepted());
    }

    #[test]
    fn session_persistence() {
        let persist = |p: serde_json::Value| with(selector(), "/sessionPersistence", p);
        assert_valid(persist(json!({"cookie": {"name": "session", "path": "/"}})));
        assert_valid(persist(json!({"type": "Header", "header": {"name": "x-session"}})));
        assert_valid(persist(json!({"absoluteTimeout": "1h30m", "cookie": {"lifetimeType": "Permanent"}})));
        let field = "spec.sessionPersistence";
        assert_rejected(with(seed(), "/sessionPersistence", json!({"cookie": {}})), field, "must be unset");
        assert_rejected(persist(json!({})), &format!("{field}.cookie"), "must be set");
        assert_rejected(persist(json!({"type": "Header"})), &format!("{field}.header"), "must be set");
        assert_rejected(
            persist(json!({"type": "Header", "header": {"name": "x"}, "cookie": {}})),
            &format!("{field}.cookie"),
            "must be unset",
        );
        assert_rejected(
            persist(json!({"cookie": {"lifetimeType": "Permanent"}})),
            &format!("{field}.absoluteTimeout"),
            "must be set",
        );
        for bad in ["1d", "", "123456s", "1h1h1h1h1h", "h"] {
            assert_rejected(
                persist(json!({"absoluteTimeout": bad, "cookie": {}})),
                &format!("{field}.absoluteTimeout"),
                "duration",
            );
        }
        assert_rejected(persist(json!({"cookie": {"name": "a b"}})), &format!("{field}.cookie.name"), "HTTP token");
    }

    #[test]
    fn protocols_and_tls() {
        let tls_on = seed()["tls"].clone();
        let proto = |p: &str, tls: Option<serde_json::Value>| {
            let v = with(seed(), "/protocol", json!(p));
            match tls {
                Some(tls) => with(v, "/tls", tls),
                None => without(v, "/tls"),
            }
        };
        for p in ["GRPC", "WSS", "HTTP2", "HTTP", "HTTP11", "TCP", "MCP"] {
            assert_valid(proto(p, Some(tls_on.clone())));
        }
        assert_valid(proto("H2C", None));
        assert_valid(proto("H2C", Some(json!({"mode": "None"}))));
        assert_rejected(proto("H2C", Some(tls_on.clone())), "spec.protocol", "H2C");
        for p in ["HTTP2", "WSS"] {
            assert_rejected(proto(p, None), "spec.protocol", "needs spec.tls");
            assert_rejected(proto(p, Some(json!({"mode": "None"}))), "spec.protocol", "needs spec.tls");
        }
        assert_rejected(with(seed(), "/tls", json!({"mode": "ServerOnly"})), "spec.tls.validation", "must be set");
        assert_rejected(with(seed(), "/tls/mode", json!("None")), "spec.tls.validation", "must be unset");
    }
}
