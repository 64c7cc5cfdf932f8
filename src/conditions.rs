//! Condition types, reasons and their constructors (docs/design.md §4).

pub const ACCEPTED: &str = "Accepted";
pub const RESOLVED_REFS: &str = "ResolvedRefs";

pub mod reason {
    pub const ACCEPTED: &str = "Accepted";
    pub const INVALID: &str = "Invalid";
    pub const HOSTNAME_NOT_ALLOWED: &str = "HostnameNotAllowed";
    pub const TLS_REQUIRED: &str = "TLSRequired";
    pub const ADDRESS_NOT_ALLOWED: &str = "AddressNotAllowed";
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    pub const INVALID_CLIENT_CERTIFICATE_REF: &str = "InvalidClientCertificateRef";
    pub const INVALID_CA_CERTIFICATE_REF: &str = "InvalidCACertificateRef";
    pub const INVALID_KIND: &str = "InvalidKind";
    pub const REF_NOT_PERMITTED: &str = "RefNotPermitted";
    pub const NO_MATCHING_PODS: &str = "NoMatchingPods";
}

/// One condition's verdict, before it gets a generation and a timestamp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Verdict {
    /// "True" or "False", as the API spells it.
    pub fn status_str(&self) -> &'static str {
        if self.status { "True" } else { "False" }
    }
}

fn verdict(type_: &'static str, status: bool, reason: &'static str, message: impl Into<String>) -> Verdict {
    Verdict { type_, status, reason, message: message.into() }
}

pub fn accepted() -> Verdict {
    verdict(ACCEPTED, true, reason::ACCEPTED, "XBackend is valid and allowed.")
}
pub fn invalid(message: impl Into<String>) -> Verdict {
    verdict(ACCEPTED, false, reason::INVALID, message)
}
pub fn hostname_not_allowed(message: impl Into<String>) -> Verdict {
    verdict(ACCEPTED, false, reason::HOSTNAME_NOT_ALLOWED, message)
}
pub fn tls_required(message: impl Into<String>) -> Verdict {
    verdict(ACCEPTED, false, reason::TLS_REQUIRED, message)
}
pub fn address_not_allowed(message: impl Into<String>) -> Verdict {
    verdict(ACCEPTED, false, reason::ADDRESS_NOT_ALLOWED, message)
}
/// A GatewayClass of ours (docs/design.md §6): nothing about it can fail.
pub fn class_accepted() -> Verdict {
    verdict(ACCEPTED, true, reason::ACCEPTED, "xbackend-controller judges XBackends behind Gateways of this class.")
}
pub fn resolved_refs() -> Verdict {
    verdict(RESOLVED_REFS, true, reason::RESOLVED_REFS, "All references resolved.")
}
pub fn invalid_client_certificate_ref(message: impl Into<String>) -> Verdict {
    verdict(RESOLVED_REFS, false, reason::INVALID_CLIENT_CERTIFICATE_REF, message)
}
pub fn invalid_ca_certificate_ref(message: impl Into<String>) -> Verdict {
    verdict(RESOLVED_REFS, false, reason::INVALID_CA_CERTIFICATE_REF, message)
}
pub fn invalid_kind(message: impl Into<String>) -> Verdict {
    verdict(RESOLVED_REFS, false, reason::INVALID_KIND, message)
}
pub fn ref_not_permitted(message: impl Into<String>) -> Verdict {
    verdict(RESOLVED_REFS, false, reason::REF_NOT_PERMITTED, message)
}
pub fn no_matching_pods(message: impl Into<String>) -> Verdict {
    verdict(RESOLVED_REFS, false, reason::NO_MATCHING_PODS, message)
}
