//! The shipped CRD against a real kube-apiserver: what its schema and CEL rules
//! accept and reject, and that they agree with the controller's own validation.

mod support;

use futures::StreamExt;
use kube::Client;
use kube::api::{Api, DynamicObject, GroupVersionKind, PostParams};
use kube::discovery::ApiResource;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};
use support::{Channel, ControlPlane};
use xbackend_controller::api::{self, XBackendSpec};
use xbackend_controller::policy::Policy;
use xbackend_controller::validate::validate;

#[test]
fn crd_file_is_up_to_date() {
    let on_disk = std::fs::read_to_string(support::CRD_PATH).expect("read crds/xbackends.yaml");
    let generated = api::crd_yaml();
    if on_disk != generated {
        similar_asserts::assert_eq!(
            generated,
            on_disk,
            "crds/xbackends.yaml is stale: it differs from api::crd_yaml(). Run `make crds` and commit the result."
        );
    }
}

fn seed() -> Value {
    json!({
        "type": "ExternalHostname",
        "port": {"port": 443},
        "externalHostname": {"hostname": "api.openai.com"},
        "tls": {"mode": "ServerOnly", "validation": {"hostname": "api.openai.com"}}
    })
}

/// `base` with the value at JSON pointer `at` replaced (parents must exist).
fn set(mut base: Value, at: &str, value: Value) -> Value {
    let (parent, key) = at.rsplit_once('/').expect("pointer");
    let target = if parent.is_empty() { &mut base } else { base.pointer_mut(parent).expect("parent exists") };
    target[key] = value;
    base
}

fn unset(mut base: Value, at: &str) -> Value {
    let (parent, key) = at.rsplit_once('/').expect("pointer");
    let target = if parent.is_empty() { &mut base } else { base.pointer_mut(parent).expect("parent exists") };
    target.as_object_mut().expect("object").remove(key);
    base
}

fn xbackends(client: &Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(api::GROUP, api::VERSION, api::KIND));
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// Server-side dry-run create: Ok, or the apiserver's rejection message (422).
async fn dry_run(api: &Api<DynamicObject>, name: &str, spec: &Value) -> Result<(), String> {
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{}/{}", api::GROUP, api::VERSION),
        "kind": api::KIND,
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("object");
    let pp = PostParams { dry_run: true, ..Default::default() };
    match api.create(&pp, &obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 422 => Err(status.message),
        Err(other) => panic!("dry-run create {name}: unexpected error {other:?}"),
    }
}

/// What the controller says about the same spec: it must reject whatever it
/// cannot decode or validate.
fn controller_rejects(spec: &Value) -> bool {
    match serde_json::from_value::<XBackendSpec>(spec.clone()) {
        Ok(decoded) => validate(&decoded, &Policy::default()).is_err(),
        Err(_) => true,
    }
}

enum Expect {
    Accept,
    /// The rejection message must contain every one of these.
    Reject(&'static [&'static str]),
}

struct Case {
    name: &'static str,
    spec: Value,
    expect: Expect,
}

fn case(name: &'static str, spec: Value, expect: Expect) -> Case {
    Case { name, spec, expect }
}

fn cases() -> Vec<Case> {
    use Expect::{Accept, Reject};
    let host = |h: &str| set(seed(), "/externalHostname/hostname", json!(h));
    let cm = json!({"group": "", "kind": "ConfigMap", "name": "ca"});
    let mtls = set(seed(), "/tls/mode", json!("ClientAndServer"));
    let sans = |list: Value| set(seed(), "/tls/validation/subjectAltNames", list);
    const IN_CLUSTER: &str = "must not be cluster.local or end with .cluster.local";
    const IP: &str = "must not be an IP address";
    let mut cases = vec![
        case("seed-example", seed(), Accept),
        case("no-tls", unset(seed(), "/tls"), Accept),
        case("tls-mode-none", set(seed(), "/tls", json!({"mode": "None"})), Accept),
        case("validation-only-hostname", seed(), Accept),
        case("well-known-system", set(seed(), "/tls/validation/wellKnownCACertificates", json!("System")), Accept),
        case("ca-configmap-ref", set(seed(), "/tls/validation/caCertificateRefs", json!([cm.clone()])), Accept),
        case(
            "subject-alt-names",
            sans(json!([
                {"type": "Hostname", "hostname": "*.openai.com"},
                {"type": "URI", "uri": "spiffe://openai.example/api"}
            ])),
            Accept,
        ),
        case(
            "client-and-server-with-ref",
            set(mtls.clone(), "/tls/clientCertificateRef", json!({"name": "client-cert"})),
            Accept,
        ),
        case("port-name", set(seed(), "/port/name", json!("https")), Accept),
        case("port-1", set(seed(), "/port/port", json!(1)), Accept),
        case("port-65535", set(seed(), "/port/port", json!(65535)), Accept),
        case("digits-in-first-label", host("123.example.com"), Accept),
        case("label-63", host(&format!("{}.com", "a".repeat(63))), Accept),
        case("cluster-local-as-inner-label", host("cluster.local.example.com"), Accept),
        // Rejections, each breaking one rule.
        case(
            "svc-cluster-local",
            host("db.prod.svc.cluster.local"),
            Reject(&["spec.externalHostname.hostname", IN_CLUSTER]),
        ),
        case("bare-cluster-local", host("cluster.local"), Reject(&["spec.externalHostname.hostname", IN_CLUSTER])),
        case("ipv4", host("10.1.2.3"), Reject(&["spec.externalHostname.hostname", IP])),
        case("ipv6-loopback", host("::1"), Reject(&["spec.externalHostname.hostname", "should match"])),
        case("numeric-final-label", host("foo.123"), Reject(&["spec.externalHostname.hostname", "all-numeric label"])),
        case("uppercase", host("API.openai.com"), Reject(&["spec.externalHostname.hostname", "should match"])),
        case("wildcard", host("*.openai.com"), Reject(&["spec.externalHostname.hostname", "should match"])),
        case("trailing-dot", host("api.openai.com."), Reject(&["spec.externalHostname.hostname", "should match"])),
        case(
            "label-64",
            host(&format!("{}.com", "a".repeat(64))),
            Reject(&["spec.externalHostname.hostname", "at most 63 characters"]),
        ),
        case(
            "hostname-254",
            host(&format!("{}.com", vec!["a".repeat(62); 4].join("."))[1..]),
            Reject(&["spec.externalHostname.hostname", "253"]),
        ),
        case("port-0", set(seed(), "/port/port", json!(0)), Reject(&["spec.port.port", "greater than or equal to 1"])),
        case(
            "port-65536",
            set(seed(), "/port/port", json!(65536)),
            Reject(&["spec.port.port", "less than or equal to 65535"]),
        ),
        case(
            "port-name-underscore",
            set(seed(), "/port/name", json!("Bad_Name")),
            Reject(&["spec.port.name", "DNS label"]),
        ),
        case(
            "protocol-http3",
            set(seed(), "/protocol", json!("HTTP3")),
            Reject(&["spec.protocol", "Unsupported value"]),
        ),
        case(
            "protocol-h2c-over-tls",
            set(seed(), "/protocol", json!("H2C")),
            Reject(&["protocol H2C is HTTP/2 in clear text"]),
        ),
        case("protocol-h2c-clear", set(unset(seed(), "/tls"), "/protocol", json!("H2C")), Accept),
        case(
            "client-and-server-without-ref",
            mtls.clone(),
            Reject(&["spec.tls", "clientCertificateRef must be set if and only if"]),
        ),
        case(
            "server-only-with-ref",
            set(seed(), "/tls/clientCertificateRef", json!({"name": "client-cert"})),
            Reject(&["spec.tls", "clientCertificateRef must be set if and only if"]),
        ),
        case(
            "both-ca-sources",
            set(
                set(seed(), "/tls/validation/caCertificateRefs", json!([cm.clone()])),
                "/tls/validation/wellKnownCACertificates",
                json!("System"),
            ),
            Reject(&["spec.tls.validation", "must not both be set"]),
        ),
        case(
            "unknown-tls-mode",
            set(seed(), "/tls/mode", json!("Mutual")),
            Reject(&["spec.tls.mode", "Unsupported value"]),
        ),
        case(
            "type-without-external-hostname",
            unset(seed(), "/externalHostname"),
            Reject(&["spec", "externalHostname must be set when type is ExternalHostname"]),
        ),
        case("unknown-type", set(seed(), "/type", json!("Service")), Reject(&["spec.type", "Unsupported value"])),
        case(
            "well-known-lowercase-system",
            set(seed(), "/tls/validation/wellKnownCACertificates", json!("system")),
            Reject(&["wellKnownCACertificates", "should match"]),
        ),
        case(
            "nine-ca-refs",
            set(seed(), "/tls/validation/caCertificateRefs", json!(vec![cm; 9])),
            Reject(&["caCertificateRefs", "must have at most 8 items"]),
        ),
        case(
            "validation-hostname-wildcard",
            set(seed(), "/tls/validation/hostname", json!("*.openai.com")),
            Reject(&["spec.tls.validation.hostname", "should match"]),
        ),
        case(
            "san-hostname-missing",
            sans(json!([{"type": "Hostname"}])),
            Reject(&["subjectAltNames[0]", "of type Hostname must set hostname"]),
        ),
        case(
            "san-uri-with-hostname",
            sans(json!([{"type": "URI", "uri": "spiffe://x/y", "hostname": "a.example"}])),
            Reject(&["subjectAltNames[0]", "must not set hostname unless type is Hostname"]),
        ),
        case(
            "six-sans",
            sans(json!(vec![json!({"type": "Hostname", "hostname": "a.example"}); 6])),
            Reject(&["subjectAltNames", "must have at most 5 items"]),
        ),
    ];
    // The seed has TLS, which H2C excludes (tested above).
    for protocol in ["TCP", "HTTP", "HTTP2", "HTTP11", "MCP", "GRPC", "WSS"] {
        cases.push(Case { name: "protocol", spec: set(seed(), "/protocol", json!(protocol)), expect: Accept });
    }
    cases
}

#[tokio::test]
async fn crd_accepts_and_rejects_what_the_api_says() {
    let cp = ControlPlane::shared(Channel::Standard);
    let (client, ns) = cp.namespace("api-crd-cases").await;
    support::install_crd(&client).await;
    let api = xbackends(&client, &ns);

    let cases = cases();
    assert!(cases.len() >= 25, "at least 25 cases");
    let results: Vec<(Case, Result<(), String>)> = futures::stream::iter(cases.into_iter().enumerate())
        .map(|(i, c)| {
            let api = api.clone();
            async move {
                let result = dry_run(&api, &format!("case-{i}"), &c.spec).await;
                (c, result)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;

    let mut failures = Vec::new();
    for (c, result) in &results {
        match (&c.expect, result) {
            (Expect::Accept, Ok(())) => {}
            (Expect::Accept, Err(msg)) => failures.push(format!("{}: expected accept, apiserver said: {msg}", c.name)),
            (Expect::Reject(_), Ok(())) => failures.push(format!("{}: expected rejection, apiserver accepted", c.name)),
            (Expect::Reject(needles), Err(msg)) => {
                for needle in *needles {
                    if !msg.contains(needle) {
                        failures.push(format!("{}: rejection should mention {needle:?}: {msg}", c.name));
                    }
                }
            }
        }
        // Defense in depth only works if the controller rejects at least what the CRD rejects, and no more.
        if controller_rejects(&c.spec) != result.is_err() {
            failures.push(format!(
                "{}: apiserver {} but the controller's validate() {}",
                c.name,
                if result.is_err() { "rejects" } else { "accepts" },
                if controller_rejects(&c.spec) { "rejects" } else { "accepts" }
            ));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), results.len(), failures.join("\n"));
}

/// Hostnames that probe every hostname rule: valid names, IPs, numeric labels,
/// uppercase, in-cluster suffixes, wildcards, trailing dots, long labels.
fn hostname_strategy() -> impl Strategy<Value = String> {
    use proptest::prelude::*;
    let label = "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?";
    let domain =
        (proptest::collection::vec(label, 1..4), "[a-z]{2,5}").prop_map(|(l, tld)| format!("{}.{tld}", l.join(".")));
    prop_oneof![
        3 => domain.clone(),
        1 => (0u8..=255, 0u8..=255, 0u8..=255, 0u8..=255).prop_map(|(a, b, c, d)| format!("{a}.{b}.{c}.{d}")),
        1 => prop_oneof![Just("::1".to_string()), "2001:db8::[0-9a-f]{1,4}", "\\[::[0-9]\\]"],
        1 => (domain.clone(), "[0-9]{1,4}").prop_map(|(d, n)| format!("{d}.{n}")),
        1 => "[0-9]{1,6}",
        1 => domain.clone().prop_map(|d| d.to_ascii_uppercase()),
        1 => "[a-z]{1,4}\\.[A-Z][a-z]{1,4}\\.com",
        2 => prop_oneof![
            Just("cluster.local".to_string()),
            label.prop_map(|l| format!("{l}.cluster.local")),
            label.prop_map(|l| format!("{l}.svc.cluster.local")),
            label.prop_map(|l| format!("{l}cluster.local")),
            label.prop_map(|l| format!("cluster.local.{l}.com")),
        ],
        1 => domain.clone().prop_map(|d| format!("*.{d}")),
        1 => domain.clone().prop_map(|d| format!("{d}.")),
        1 => (60usize..68, domain.clone()).prop_map(|(n, d)| format!("{}.{d}", "x".repeat(n))),
        1 => (245usize..260).prop_map(|n| { let mut s = vec!["a".repeat(50); 6].join("."); s.truncate(n.min(s.len())); format!("{}z", s.trim_end_matches('.')) }),
        1 => "[a-z_.-]{1,12}",
    ]
}

#[tokio::test]
async fn crd_and_validate_agree_on_generated_hostnames() {
    let cp = ControlPlane::shared(Channel::Standard);
    let (client, ns) = cp.namespace("api-crd-hostnames").await;
    support::install_crd(&client).await;
    let api = xbackends(&client, &ns);

    // Deterministic, so a failure reproduces; ~150 names keep the test to seconds.
    let mut runner = TestRunner::deterministic();
    let strategy = hostname_strategy();
    let mut hostnames: Vec<String> =
        (0..160).map(|_| strategy.new_tree(&mut runner).expect("value").current()).collect();
    hostnames.sort();
    hostnames.dedup();

    let verdicts: Vec<(String, Result<(), String>)> = futures::stream::iter(hostnames.iter().cloned().enumerate())
        .map(|(i, h)| {
            let api = api.clone();
            async move {
                let spec = set(seed(), "/externalHostname/hostname", json!(h));
                let result = dry_run(&api, &format!("host-{i}"), &spec).await;
                (h, result)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;

    let (mut accepted, mut rejected) = (0, 0);
    let mut mismatches = Vec::new();
    for (h, result) in &verdicts {
        let spec = set(seed(), "/externalHostname/hostname", json!(h));
        let local = controller_rejects(&spec);
        if result.is_ok() {
            accepted += 1
        } else {
            rejected += 1
        }
        if local != result.is_err() {
            mismatches.push(format!("{h:?}: apiserver {result:?}, validate() rejects: {local}"));
        }
    }
    eprintln!("{} hostnames: {accepted} accepted, {rejected} rejected by the apiserver", verdicts.len());
    assert!(
        mismatches.is_empty(),
        "{} of {} hostnames disagree:\n{}",
        mismatches.len(),
        verdicts.len(),
        mismatches.join("\n")
    );
    // The generator must exercise both outcomes, or the test proves nothing.
    assert!(accepted >= 20 && rejected >= 40, "accepted {accepted}, rejected {rejected}");
}
