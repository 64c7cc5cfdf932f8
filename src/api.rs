//! The `XBackend` API (gateway.networking.x-k8s.io/v1alpha1): Rust types the CRD
//! in `crds/` is generated from. A superset of upstream Gateway API v1.7.0's
//! schema (and of v1.6's `port.port`) with the deliberate differences listed in docs/api.md.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = crate::object::XBACKEND_GROUP;
pub const VERSION: &str = "v1alpha1";
pub const KIND: &str = "XBackend";
pub const GATEWAY_GROUP: &str = crate::object::GATEWAY_GROUP;
/// At most this many entries in `status.ancestors` (shared by all controllers).
pub const MAX_ANCESTORS: usize = 32;

pub const DNS1123_SUBDOMAIN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
pub const DNS1123_LABEL: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
pub const GROUP_PATTERN: &str = r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
pub const KIND_PATTERN: &str = r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$";
pub const CONTROLLER_NAME_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/[A-Za-z0-9\/\-._~%!$&'()*+,;=:]+$";

/// XBackend names a destination outside the cluster that a Gateway connects to
/// as a client. HTTPRoutes reference it from `backendRefs` (group
/// gateway.networking.x-k8s.io, kind XBackend) instead of an ExternalName Service.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "gateway.networking.x-k8s.io",
    version = "v1alpha1",
    kind = "XBackend",
    plural = "xbackends",
    shortname = "xbackend",
    category = "gateway-api",
    namespaced,
    status = "XBackendStatus",
    printcolumn = r#"{"name":"Hostname","type":"string","jsonPath":".spec.externalHostname.hostname"}"#,
    // One column for both port shapes: the union prints whichever field is set
    // (both, when both are set to the same value).
    printcolumn = r#"{"name":"Port","type":"string","jsonPath":".spec.port['number','port']"}"#,
    printcolumn = r#"{"name":"Protocol","type":"string","jsonPath":".spec.protocol"}"#,
    printcolumn = r#"{"name":"TLS","type":"string","jsonPath":".spec.tls.mode"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","description":"Accepted condition of each ancestor entry, for any controller","jsonPath":".status.ancestors[*].conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.type == 'ExternalHostname' ? has(self.externalHostname) : !has(self.externalHostname)")
        .message("externalHostname must be set when type is ExternalHostname and must be unset otherwise"),
    validation = Rule::new("self.type == 'EndpointSelector' ? has(self.endpointSelector) : !has(self.endpointSelector)")
        .message("endpointSelector must be set when type is EndpointSelector and must be unset otherwise"),
    validation = Rule::new("!has(self.protocol) || self.protocol != 'H2C' || !has(self.tls) || self.tls.mode == 'None'")
        .message("protocol H2C is HTTP/2 in clear text: remove tls or set its mode to None (use HTTP2 for HTTP/2 over TLS)"),
    validation = Rule::new("!has(self.protocol) || self.protocol != 'HTTP2' || (has(self.tls) && self.tls.mode != 'None')")
        .message("protocol HTTP2 needs tls with mode ServerOnly or ClientAndServer (use H2C for HTTP/2 in clear text)"),
    validation = Rule::new("!has(self.protocol) || self.protocol != 'WSS' || (has(self.tls) && self.tls.mode != 'None')")
        .message("protocol WSS needs tls with mode ServerOnly or ClientAndServer"),
    validation = Rule::new("has(self.sessionPersistence) ? self.type == 'EndpointSelector' : true")
        .message("sessionPersistence can only be set when type is EndpointSelector"),
)]
pub struct XBackendSpec {
    /// Type of the destination: ExternalHostname (a DNS name outside the
    /// cluster, in `externalHostname`) or EndpointSelector (Pods of this
    /// namespace selected by label, in `endpointSelector`).
    #[serde(rename = "type")]
    pub type_: BackendType,

    /// Port the Gateway connects to on the destination: `number` (Gateway API
    /// v1.7) or `port` (v1.6); not both with different values.
    pub port: BackendPort,

    /// The external DNS name to connect to. Required when type is
    /// ExternalHostname and must be unset otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_hostname: Option<ExternalHostnameBackend>,

    /// The Pods to send traffic to, selected by label in the XBackend's own
    /// namespace. Required when type is EndpointSelector and must be unset otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_selector: Option<EndpointSelectorBackend>,

    // Boxed (here, in `tls` and its client certificate) where a part is
    // large and often unset: every XBackend's record holds the spec, and
    // inline they made it 416 bytes at N=10,000 (the schema is the same).
    /// Session persistence across the selected Pods (cookie or header based).
    /// Only for type EndpointSelector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_persistence: Option<Box<SessionPersistence>>,

    /// Protocol the Gateway speaks to the destination. Unset means the protocol
    /// of the route or listener. One of TCP, HTTP, HTTP2, HTTP11, H2C, MCP,
    /// GRPC, WSS. H2C excludes TLS; HTTP2 and WSS require it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<BackendProtocol>,

    /// TLS the Gateway uses towards the destination. An ExternalHostname backend
    /// without TLS sends traffic in clear text across networks you do not
    /// control: the controller reports it with a Warning event, and rejects it
    /// when started with --require-tls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Box<BackendTls>>,
}

/// Kind of destination.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendType {
    /// A fully qualified DNS name outside the cluster.
    ExternalHostname,
    /// Pods of the XBackend's namespace, selected by label.
    EndpointSelector,
}

/// The port to connect to. Gateway API v1.7 names the number `number`; v1.6
/// (and the XBackend docs page) `port`. Either is accepted.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(
    validation = Rule::new("has(self.number) || has(self.port)")
        .message("port needs a number: set port.number (Gateway API v1.7) or port.port (v1.6)"),
    validation = Rule::new("!has(self.number) || !has(self.port) || self.number == self.port")
        .message("port.number and port.port differ: keep only port.number"),
)]
pub struct BackendPort {
    /// Optional name of the port: empty or a DNS label (lowercase letters,
    /// digits and '-', starting and ending with a letter or digit, at most 63
    /// characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    // validate() returns an optional, never null: upstream's `== null` form
    // rejects every non-empty name.
    #[x_kube(validation = Rule::new("size(self) == 0 || !format.dns1123Label().validate(self).hasValue()")
        .message("port name must be empty or a DNS label (lowercase letters, digits and '-', at most 63 characters)"))]
    pub name: Option<String>,

    /// Port number, 1 to 65535 (Gateway API v1.7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub number: Option<i32>,

    /// Port number, 1 to 65535 (Gateway API v1.6 and the XBackend docs page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
}

impl BackendPort {
    /// The port to connect to, whichever field holds it (`number` first).
    pub fn value(&self) -> Option<i32> {
        self.number.or(self.port)
    }
}

/// Pods selected by label, in the XBackend's namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSelectorBackend {
    /// Labels a Pod must all carry to receive traffic: 1 to 64 entries, keys and
    /// values in Kubernetes label syntax.
    #[schemars(schema_with = "match_labels_schema")]
    pub match_labels: BTreeMap<String, String>,
}

pub const LABEL_VALUE_PATTERN: &str = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";

/// A label map as upstream spells it: the key rule is CEL (`format.qualifiedName`),
/// which a Rust attribute on a map's keys cannot express.
fn match_labels_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "minProperties": 1,
        "maxProperties": 64,
        "additionalProperties": {"type": "string", "maxLength": 63, "pattern": LABEL_VALUE_PATTERN},
        "x-kubernetes-validations": [{
            "rule": "self.all(key, !format.qualifiedName().validate(key).hasValue())",
            "message": "matchLabels keys must be label keys: an optional DNS subdomain prefix (at most 253 characters) and '/', then a name of at most 63 characters"
        }]
    })
}

pub const HTTP_TOKEN_PATTERN: &str = r"^[A-Za-z0-9!#$%&'*+\-.^_\x60|~]+$";

/// Session persistence across the selected Pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.cookie) || !has(self.cookie.lifetimeType) || self.cookie.lifetimeType != 'Permanent' || has(self.absoluteTimeout)")
        .message("absoluteTimeout must be set when cookie.lifetimeType is Permanent"),
    validation = Rule::new("!has(self.cookie) || self.type == 'Cookie'").message("cookie must be unset unless type is Cookie"),
    validation = Rule::new("self.type != 'Cookie' || has(self.cookie)").message("cookie must be set when type is Cookie"),
    validation = Rule::new("!has(self.header) || self.type == 'Header'").message("header must be unset unless type is Header"),
    validation = Rule::new("self.type != 'Header' || has(self.header)").message("header must be set when type is Header"),
)]
pub struct SessionPersistence {
    /// Cookie (default) or Header.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "Cookie"))]
    pub type_: Option<SessionPersistenceType>,
    /// How long a session lasts at most, as a Gateway API duration (e.g. 1h, 30m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub absolute_timeout: Option<String>,
    /// The session cookie, for type Cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<SessionCookie>,
    /// The session header, for type Header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<SessionHeader>,
}

/// How a session is tracked.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionPersistenceType {
    /// A cookie the Gateway sets.
    Cookie,
    /// A header the client sends.
    Header,
}

/// The session cookie.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SessionCookie {
    /// Session (default: ends with the browser session) or Permanent (needs absoluteTimeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "Session"))]
    pub lifetime_type: Option<CookieLifetimeType>,
    /// Cookie name (an HTTP token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), regex(pattern = HTTP_TOKEN_PATTERN))]
    pub name: Option<String>,
    /// Cookie path; `/` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024), extend("default" = "/"))]
    pub path: Option<String>,
}

/// Lifetime of the session cookie.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CookieLifetimeType {
    /// Kept until absoluteTimeout.
    Permanent,
    /// Dropped when the browser session ends.
    Session,
}

/// The session header.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct SessionHeader {
    /// Header name (an HTTP token).
    #[schemars(length(min = 1, max = 256), regex(pattern = HTTP_TOKEN_PATTERN))]
    pub name: String,
}

/// An external destination given by DNS name.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct ExternalHostnameBackend {
    /// Fully qualified DNS name of the destination: lowercase RFC 1123, no
    /// wildcard, no trailing dot. IP addresses and in-cluster names
    /// (cluster.local and its subdomains) are rejected: route in-cluster
    /// traffic to a Service instead.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS1123_SUBDOMAIN))]
    #[x_kube(
        validation = Rule::new("!isIP(self) && !self.matches('(^|[.])[0-9]+$')")
            .message("hostname must not be an IP address (nor end in an all-numeric label)"),
        validation = Rule::new("self != 'cluster.local' && !self.endsWith('.cluster.local')")
            .message("hostname must not be cluster.local or end with .cluster.local: use a Service for in-cluster destinations"),
        // The subdomain pattern alone allows labels DNS cannot carry.
        validation = Rule::new("!self.matches('[^.]{64}')").message("hostname labels must be at most 63 characters"),
    )]
    pub hostname: String,
}

/// Protocol spoken to the destination.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendProtocol {
    /// Plain TCP.
    #[serde(rename = "TCP")]
    Tcp,
    /// HTTP, version negotiated (ALPN) or the implementation's default.
    #[serde(rename = "HTTP")]
    Http,
    /// HTTP/2.
    #[serde(rename = "HTTP2")]
    Http2,
    /// HTTP/1.1.
    #[serde(rename = "HTTP11")]
    Http11,
    /// HTTP/2 over clear text.
    #[serde(rename = "H2C")]
    H2c,
    /// Model Context Protocol.
    #[serde(rename = "MCP")]
    Mcp,
    /// gRPC.
    #[serde(rename = "GRPC")]
    Grpc,
    /// WebSocket over TLS.
    #[serde(rename = "WSS")]
    Wss,
}

/// TLS towards the destination.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.mode == 'ClientAndServer' ? has(self.clientCertificateRef) : !has(self.clientCertificateRef)")
        .message("clientCertificateRef must be set if and only if mode is ClientAndServer"),
    validation = Rule::new("self.mode == 'None' ? !has(self.validation) : has(self.validation)")
        .message("validation must be set when mode is ServerOnly or ClientAndServer and unset when mode is None"),
)]
pub struct BackendTls {
    /// None (clear text), ServerOnly (verify the server), or ClientAndServer
    /// (mutual TLS with `clientCertificateRef`).
    pub mode: TlsMode,

    /// Secret of type kubernetes.io/tls with the client certificate and key
    /// (`tls.crt`, `tls.key`). Required when mode is ClientAndServer and must be
    /// unset otherwise. A Secret in another namespace needs a ReferenceGrant
    /// there that allows XBackends from this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_ref: Option<Box<SecretObjectReference>>,

    /// How the server's certificate is verified: required unless mode is None,
    /// where it must be unset. Only `hostname` set means the system CA bundle
    /// (wellKnownCACertificates: System).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<TlsValidation>,
}

/// TLS mode towards the destination.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// No TLS: clear text.
    None,
    /// TLS, verifying the server's certificate.
    ServerOnly,
    /// Mutual TLS: verify the server and present `clientCertificateRef`.
    ClientAndServer,
}

/// Reference to a Secret, optionally in another namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct SecretObjectReference {
    /// API group of the referent; empty for the core group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), regex(pattern = GROUP_PATTERN), extend("default" = ""))]
    pub group: Option<String>,
    /// Kind of the referent. Only Secret is supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = KIND_PATTERN), extend("default" = "Secret"))]
    pub kind: Option<String>,
    /// Name of the referent.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the referent; the XBackend's namespace when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS1123_LABEL))]
    pub namespace: Option<String>,
}

/// Reference to an object in the XBackend's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct LocalObjectReference {
    /// API group of the referent; empty for the core group.
    #[schemars(length(max = 253), regex(pattern = GROUP_PATTERN))]
    pub group: String,
    /// Kind of the referent. Only ConfigMap (group "") is supported, with the
    /// bundle in key `ca.crt`.
    #[schemars(length(min = 1, max = 63), regex(pattern = KIND_PATTERN))]
    pub kind: String,
    /// Name of the referent.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Verification of the server certificate.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.caCertificateRefs) && has(self.wellKnownCACertificates))")
    .message("caCertificateRefs and wellKnownCACertificates must not both be set"))]
pub struct TlsValidation {
    /// ConfigMaps (key `ca.crt`) holding the CA certificates that sign the
    /// server certificate. Must not be combined with wellKnownCACertificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8))]
    #[x_kube(merge_strategy = ListMerge::Atomic)]
    pub ca_certificate_refs: Option<Vec<LocalObjectReference>>,

    /// A well-known CA set; `System` means the Gateway's system trust store.
    /// Must not be combined with caCertificateRefs. Unset together with
    /// caCertificateRefs means System.
    // camelCase would spell it wellKnownCaCertificates; the API (and the CEL
    // rule above) spell it with CA in capitals.
    #[serde(default, rename = "wellKnownCACertificates", skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(
            pattern = r"^(System|([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]))$"
        )
    )]
    pub well_known_ca_certificates: Option<String>,

    /// Name sent as SNI and verified against the server certificate: a precise
    /// lowercase DNS name, no wildcard, no trailing dot.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS1123_SUBDOMAIN))]
    #[x_kube(validation = Rule::new("!self.matches('[^.]{64}')").message("hostname labels must be at most 63 characters"))]
    pub hostname: String,

    /// When set, the server certificate must carry one of these names instead
    /// of `hostname` (which is still sent as SNI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 5))]
    #[x_kube(merge_strategy = ListMerge::Atomic)]
    pub subject_alt_names: Option<Vec<SubjectAltName>>,
}

/// A name the server certificate must carry.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(
    validation = Rule::new("!(self.type == 'Hostname' && (!has(self.hostname) || self.hostname == ''))")
        .message("subjectAltNames entry of type Hostname must set hostname"),
    validation = Rule::new("!(self.type != 'Hostname' && has(self.hostname) && self.hostname != '')")
        .message("subjectAltNames entry must not set hostname unless type is Hostname"),
    validation = Rule::new("!(self.type == 'URI' && (!has(self.uri) || self.uri == ''))")
        .message("subjectAltNames entry of type URI must set uri"),
    validation = Rule::new("!(self.type != 'URI' && has(self.uri) && self.uri != '')")
        .message("subjectAltNames entry must not set uri unless type is URI"),
)]
pub struct SubjectAltName {
    /// Hostname or URI.
    #[serde(rename = "type")]
    pub type_: SubjectAltNameType,
    /// DNS name (a leading `*.` wildcard is allowed) when type is Hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub hostname: Option<String>,
    /// URI (RFC 3986, e.g. a SPIFFE ID) when type is URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^(([^:/?#]+):)(//([^/?#]*))([^?#]*)(\?([^#]*))?(#(.*))?")
    )]
    pub uri: Option<String>,
}

/// Kind of subject alternative name.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SubjectAltNameType {
    /// A DNS name.
    #[default]
    Hostname,
    /// A URI.
    #[serde(rename = "URI")]
    Uri,
}

/// Observed state, one entry per Gateway the XBackend is used behind.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct XBackendStatus {
    /// One entry per (ancestor Gateway, controller): every Gateway that routes
    /// to this XBackend, with the verdict of the controller that serves it. At
    /// most 32 entries. Each controller writes only its own entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(merge_strategy = ListMerge::Atomic)]
    pub ancestors: Option<Vec<AncestorStatus>>,
}

/// The XBackend's status as seen by one controller behind one Gateway.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AncestorStatus {
    /// The Gateway this entry is about.
    pub ancestor_ref: ParentReference,
    /// The controller that wrote this entry (DOMAIN/PATH), e.g.
    /// gateway.networking.x-k8s.io/xbackend-controller.
    #[schemars(length(min = 1, max = 253), regex(pattern = CONTROLLER_NAME_PATTERN))]
    pub controller_name: String,
    /// Accepted (the spec is valid and allowed) and ResolvedRefs (every
    /// referenced Secret and ConfigMap exists, is permitted and parses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Option<Vec<Condition>>,
}

/// Reference to a Gateway (or another parent resource).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[serde(rename_all = "camelCase")]
pub struct ParentReference {
    /// API group of the parent; gateway.networking.k8s.io when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), regex(pattern = GROUP_PATTERN), extend("default" = "gateway.networking.k8s.io"))]
    pub group: Option<String>,
    /// Kind of the parent; Gateway when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = KIND_PATTERN), extend("default" = "Gateway"))]
    pub kind: Option<String>,
    /// Namespace of the parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS1123_LABEL))]
    pub namespace: Option<String>,
    /// Name of the parent.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Listener name within the parent (not used by this controller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS1123_SUBDOMAIN))]
    pub section_name: Option<String>,
    /// Listener port within the parent (not used by this controller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
}

/// The CRD this project ships, exactly as `crds/` holds it.
pub fn crd() -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    let mut crd = XBackend::crd();
    let mut value = serde_json::to_value(&crd).expect("a CRD serializes");
    // schemars marks every Option as nullable; upstream's CRD is not, and a
    // nullable field would let `tls: null` through CEL `has()` checks.
    strip_nullable(&mut value);
    match_upstream_shape(&mut value);
    crd = serde_json::from_value(value).expect("the CRD still deserializes");
    crd
}

/// Closes the gaps between what kube-derive emits and upstream's kubebuilder
/// output that the Rust types cannot express (docs/api.md lists what remains).
fn match_upstream_shape(crd: &mut serde_json::Value) {
    use serde_json::json;
    crd["spec"]["names"]["listKind"] = json!("XBackendList");
    let Some(schema) = crd.pointer_mut("/spec/versions/0/schema/openAPIV3Schema") else { return };
    let Some(root) = schema.as_object_mut() else { return };
    // kube-derive titles the root with the kind and describes it as a derived
    // type; kubectl explain should show what an XBackend is instead.
    root.remove("title");
    let spec_doc = root.get("properties").and_then(|p| p.pointer("/spec/description")).cloned();
    if let Some(doc) = spec_doc {
        root.insert("description".into(), doc);
    }
    if let Some(props) = root.get_mut("properties").and_then(|p| p.as_object_mut()) {
        props.insert(
            "apiVersion".into(),
            json!({"type": "string", "description": "APIVersion of this object: gateway.networking.x-k8s.io/v1alpha1."}),
        );
        props.insert("kind".into(), json!({"type": "string", "description": "Kind of this object: XBackend."}));
        props.insert("metadata".into(), json!({"type": "object"}));
        if let Some(spec) = props.get_mut("spec") {
            spec["description"] = json!("Where the destination is and how the Gateway connects to it.");
        }
    }
    // k8s-openapi's Condition schema has no validation; metav1.Condition's
    // kubebuilder markers give these bounds, which upstream's CRD carries.
    if let Some(cond) =
        schema.pointer_mut("/properties/status/properties/ancestors/items/properties/conditions/items/properties")
    {
        let bounds = [
            ("message", json!({"maxLength": 32768})),
            ("observedGeneration", json!({"minimum": 0})),
            (
                "reason",
                json!({"maxLength": 1024, "minLength": 1, "pattern": "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"}),
            ),
            ("status", json!({"enum": ["True", "False", "Unknown"]})),
            (
                "type",
                json!({"maxLength": 316, "pattern": r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"}),
            ),
        ];
        for (field, extra) in bounds {
            if let (Some(target), Some(extra)) =
                (cond.get_mut(field).and_then(|f| f.as_object_mut()), extra.as_object())
            {
                target.extend(extra.clone());
            }
        }
    }
}

/// `crd()` as the YAML document written to crds/xbackends.yaml.
pub fn crd_yaml() -> String {
    let header = "# Generated by `xbackend-controller crd` from src/api.rs. Do not edit.\n";
    let mut value = serde_json::to_value(crd()).expect("a CRD serializes");
    // k8s-openapi keeps bounds as f64; print 65535, not 65535.0, as upstream does.
    integral_bounds(&mut value);
    format!("{header}{}", serde_yaml_ng::to_string(&value).expect("a CRD serializes to YAML"))
}

fn integral_bounds(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if (k == "minimum" || k == "maximum")
                    && let Some(f) = child.as_f64()
                    && f.fract() == 0.0
                {
                    *child = serde_json::Value::from(f as i64);
                } else {
                    integral_bounds(child);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(integral_bounds),
        _ => {}
    }
}

fn strip_nullable(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            map.remove("nullable");
            map.values_mut().for_each(strip_nullable);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_nullable),
        _ => {}
    }
}
