//! `xbackend-controller analyze`: the controller's verdict on manifest files,
//! offline, through the same decode, index and judge steps as `run`.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use serde_json::Value;

use crate::cli::{AnalyzeArgs, OutputFormat};
use crate::decode;
use crate::dns::{LookupError, Resolution, Resolver};
use crate::index::Index;
use crate::judge::{Judgement, Settings, judge};
use crate::model::ObjectRef;
use crate::model::{Kind, Object};
use crate::policy::Policy;
use crate::refs::{self, Fetched, RefTarget};
use crate::status::Shape;
use crate::verdict::Verdicts;

/// How long one DNS query may take with --dns-check.
const DNS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Exit code when any XBackend is rejected or has unresolved references.
pub const EXIT_FINDINGS: u8 = 3;
/// Exit code for unreadable or malformed input and bad flags.
pub const EXIT_INPUT: u8 = 2;

/// One object read from the input, with where it came from for messages.
#[derive(Clone, Debug)]
pub struct Document {
    pub source: String,
    pub value: Value,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(String);

/// `--dns-check`'s lookup of one hostname.
pub type Resolve<'a> = &'a dyn Fn(&str) -> Result<Resolution, LookupError>;

pub fn main(args: AnalyzeArgs) -> ExitCode {
    let policy = match Policy::new(args.policy.to_config()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_INPUT);
        }
    };
    let docs = match read_inputs(&args.paths) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_INPUT);
        }
    };
    // Names only unless --dns-check: a CI run should not depend on DNS.
    let dns = match args.dns_check.then(|| dns_client(&args)).transpose() {
        Ok(dns) => dns,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_INPUT);
        }
    };
    if args.egress.enabled() && !args.dns_check {
        eprintln!("error: --egress-policy needs --dns-check: the policies allow the addresses names resolve to");
        return ExitCode::from(EXIT_INPUT);
    }
    let engine = args.egress.engine();
    if let Some(Err(e)) = engine.as_deref().map(|engine| args.egress.check_engine(engine)) {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_INPUT);
    }
    let resolve = |hostname: &str| -> Result<Resolution, LookupError> {
        let (runtime, resolver) = dns.as_ref().ok_or(LookupError::NoServer)?;
        runtime.block_on(resolver.resolve(hostname))
    };
    let options = Options {
        controller_name: &args.controller_name,
        gateway_classes: &args.guard.gateway_classes,
        assume_refs_exist: args.assume_refs_exist,
        egress: engine.map(|engine| {
            let controller = crate::egress::controller_label(&args.controller_name);
            let hold = args.egress.hold(std::time::Duration::from_secs(3600));
            (crate::egress::Config { controller, ..args.egress.config() }, engine, hold)
        }),
        gateway_api: &args.gateway_api_version,
    };
    let resolve: Option<Resolve> = args.dns_check.then_some(&resolve);
    let mut report = analyze(docs, &policy, &options, &crate::judge::now_rfc3339(), resolve);
    report.notes.extend(args.run_only.notes());
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr().lock();
    let printed = match args.output {
        OutputFormat::Table => writeln!(stdout, "{}", report.summary()),
        OutputFormat::Yaml => {
            let _ = writeln!(stderr, "{}", report.summary());
            write!(stdout, "{}", report.yaml())
        }
        OutputFormat::Json => {
            let _ = writeln!(stderr, "{}", report.summary());
            writeln!(stdout, "{}", report.json())
        }
    };
    if printed.is_err() {
        return ExitCode::from(1);
    }
    if report.is_clean() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_FINDINGS) }
}

/// A resolver and the runtime its lookups run on.
fn dns_client(args: &AnalyzeArgs) -> Result<(tokio::runtime::Runtime, Resolver), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the DNS client: {e}"))?;
    let resolver = runtime.block_on(async { Resolver::new(&args.dns.dns_servers, DNS_TIMEOUT) })?;
    Ok((runtime, resolver))
}

/// The verdict on every XBackend of a bundle.
pub struct Report {
    pub backends: Vec<Analyzed>,
    /// Things worth knowing that are not findings: ignored kinds, duplicates.
    pub notes: Vec<String>,
    /// With --egress-policy: the policy objects `run` would write.
    pub policies: Vec<Value>,
    /// With --egress-policy: what each judged Gateway's data plane may reach
    /// in the cluster, and the references that allow nothing (findings).
    pub egress: Vec<GatewayEgress>,
    /// What the cluster would refuse or cannot honour, beyond the XBackends'
    /// own verdicts: references to XBackends the input does not hold, what
    /// the chosen Gateway API release's CRDs refuse, failed DNS lookups.
    pub findings: Vec<String>,
}

/// One judged Gateway's in-cluster egress, as `analyze` reports it.
pub struct GatewayEgress {
    pub gateway: ObjectRef,
    /// routes, all or none.
    pub mode: &'static str,
    /// Each rule with what it serves (which route, which reference).
    pub rules: Vec<String>,
    pub refused: Vec<String>,
}

pub struct Analyzed {
    pub key: ObjectRef,
    /// The XBackend as read, with `status` replaced by what the controller would write.
    pub object: Value,
    pub judgement: Judgement,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.backends.iter().all(|b| b.judgement.is_clean())
            && self.egress.iter().all(|g| g.refused.is_empty())
            && self.findings.is_empty()
    }

    /// Multi-document YAML, one XBackend per document, then the NetworkPolicies.
    pub fn yaml(&self) -> String {
        self.objects().map(|o| format!("---\n{}", serde_yaml_ng::to_string(o).unwrap_or_default())).collect()
    }

    fn objects(&self) -> impl Iterator<Item = &Value> {
        self.backends.iter().map(|b| &b.object).chain(&self.policies)
    }

    /// One JSON object of kind List.
    pub fn json(&self) -> String {
        let list = serde_json::json!({
            "apiVersion": "v1",
            "kind": "List",
            "items": self.objects().collect::<Vec<_>>(),
        });
        serde_json::to_string_pretty(&list).unwrap_or_default()
    }

    /// One line per XBackend and ancestor, then the notes.
    pub fn summary(&self) -> String {
        let mut lines = Vec::new();
        for b in &self.backends {
            let line = |verdicts: &Verdicts| {
                let conditions = [&verdicts.accepted, &verdicts.resolved_refs];
                let summary: Vec<String> =
                    conditions.iter().map(|v| format!("{}={} ({})", v.type_, v.status_str(), v.reason)).collect();
                let problems: Vec<&str> = conditions.iter().filter(|v| !v.status).map(|v| v.message.as_str()).collect();
                let detail = if problems.is_empty() { String::new() } else { format!(": {}", problems.join(" ")) };
                format!("{}{detail}", summary.join(" "))
            };
            if b.judgement.ancestors.is_empty() {
                lines.push(format!(
                    "XBackend {}  (no ancestor Gateway of this controller)  {}",
                    b.key,
                    line(&b.judgement.verdicts)
                ));
            }
            for (a, verdicts) in b.judgement.ancestors.iter().zip(&b.judgement.entries) {
                lines.push(format!("XBackend {}  Gateway {}  {}", b.key, a.gateway, line(verdicts)));
            }
            for n in &b.judgement.notes {
                if n.warning {
                    lines.push(format!("  warning {}: {}", n.reason, n.message));
                }
            }
        }
        if self.backends.is_empty() {
            lines.push("no XBackends found".into());
        }
        let clean = self.backends.iter().filter(|b| b.judgement.is_clean()).count();
        lines.push(format!(
            "{} XBackend(s): {} clean, {} with findings",
            self.backends.len(),
            clean,
            self.backends.len() - clean
        ));
        for g in &self.egress {
            lines.push(format!(
                "Gateway {}  egress in the cluster: {}, {} destination(s), {} refused",
                g.gateway,
                g.mode,
                g.rules.len(),
                g.refused.len()
            ));
            lines.extend(g.rules.iter().map(|r| format!("  allows {r}")));
            lines.extend(g.refused.iter().map(|r| format!("  refused: {r}")));
        }
        for p in &self.policies {
            let rules = p["spec"]["egress"].as_array().map_or(0, Vec::len);
            let namespace = p["metadata"]["namespace"].as_str().map(|ns| format!("{ns}/")).unwrap_or_default();
            lines.push(format!(
                "{} {namespace}{}  {rules} egress rule(s)",
                p["kind"].as_str().unwrap_or_default(),
                p["metadata"]["name"].as_str().unwrap_or_default()
            ));
        }
        lines.extend(self.findings.iter().map(|f| format!("finding: {f}")));
        lines.extend(self.notes.iter().map(|n| format!("note: {n}")));
        lines.join("\n")
    }
}

/// How to judge a bundle, besides the guardrail policy.
pub struct Options<'a> {
    /// The GatewayClass controllerName to judge as.
    pub controller_name: &'a str,
    /// Guard mode: GatewayClasses judged whatever their controllerName.
    pub gateway_classes: &'a [String],
    /// Referenced Secrets and ConfigMaps the bundle does not hold count as
    /// present and valid (made at run time by cert-manager and the like).
    pub assume_refs_exist: bool,
    /// Build the egress policies too (docs/design.md §6b), with this engine
    /// and cap of addresses per hostname.
    pub egress: Option<(crate::egress::Config, Box<dyn crate::egress::Engine>, crate::egress::Hold)>,
    /// The Gateway API release whose CRDs would validate the bundle.
    pub gateway_api: &'a str,
}

/// Runs the controller's logic over the objects of a bundle. `resolve`
/// answers the DNS check for a hostname (None: no DNS check, names only; a
/// failed lookup is a finding).
pub fn analyze(
    docs: Vec<Document>,
    policy: &Policy,
    options: &Options<'_>,
    now: &str,
    resolve: Option<Resolve>,
) -> Report {
    let controller_name = options.controller_name;
    // Services are read whatever the flags: a route's ExternalName or
    // selectorless Service is worth a note.
    let mut index =
        Index::new(controller_name).guarding(options.gateway_classes.iter().cloned()).tracking_services(true);
    let mut findings = Vec::new();
    // The raw routes, Gateways and ListenerSets: what their CRDs would refuse.
    let mut referrers: Vec<(String, ObjectRef, Value)> = Vec::new();
    // Kinds that name destinations no guardrail here checks.
    let mut unchecked: Vec<String> = Vec::new();
    // DNS answers, asked once per hostname; failures are findings.
    let answers: std::cell::RefCell<BTreeMap<String, Result<Resolution, LookupError>>> = Default::default();
    let resolve_once = |hostname: &str| -> Option<Resolution> {
        let resolve = resolve?;
        let answer = answers.borrow_mut().entry(hostname.to_string()).or_insert_with(|| resolve(hostname)).clone();
        answer.ok()
    };
    let mut notes = Vec::new();
    let mut secrets: BTreeMap<ObjectRef, Secret> = BTreeMap::new();
    let mut config_maps: BTreeMap<ObjectRef, ConfigMap> = BTreeMap::new();
    let mut backends: BTreeMap<ObjectRef, Value> = BTreeMap::new();
    // (API group, kind, namespace/name): an Istio Gateway is not a Gateway API Gateway.
    let mut seen: BTreeMap<(String, String, ObjectRef), String> = BTreeMap::new();

    for doc in docs {
        let api_version = doc.value["apiVersion"].as_str().unwrap_or_default().to_string();
        let kind_str = doc.value["kind"].as_str().unwrap_or_default().to_string();
        let mut value = doc.value;
        let key = object_key(&mut value, &kind_str);
        // An object in a namespace shows that the namespace exists.
        if !key.namespace.is_empty() {
            index.apply(ObjectRef::new("", &key.namespace), Object::Namespace);
        }
        // Nameless objects are ignored below (with a note); they do not replace each other.
        if !key.name.is_empty()
            && let Some(first) =
                seen.insert((api_group(&api_version).to_string(), kind_str.clone(), key.clone()), doc.source.clone())
        {
            notes.push(format!("{kind_str} {key} appears in {first} and again in {}; the later one wins", doc.source));
        }
        match (api_version.as_str(), kind_str.as_str()) {
            ("v1", "Secret") => match serde_json::from_value::<Secret>(with_string_data(value)) {
                Ok(s) => {
                    secrets.insert(key, s);
                }
                Err(e) => notes.push(format!("{}: Secret {key} ignored: {e}", doc.source)),
            },
            ("v1", "ConfigMap") => match serde_json::from_value::<ConfigMap>(value) {
                Ok(c) => {
                    config_maps.insert(key, c);
                }
                Err(e) => notes.push(format!("{}: ConfigMap {key} ignored: {e}", doc.source)),
            },
            _ => match Kind::of(&api_version, &kind_str) {
                Some(kind) => match decode::decode(kind, &as_created(kind, value.clone())) {
                    Ok((k, object)) => {
                        if matches!(kind, Kind::Route(_) | Kind::Gateway | Kind::ListenerSet) {
                            referrers.push((kind_str.clone(), k.clone(), value.clone()));
                        }
                        if kind == Kind::XBackend {
                            backends.insert(k.clone(), value);
                        }
                        index.apply(k, object);
                    }
                    Err(e) => notes.push(format!("{}: {kind_str} {key} ignored: {e}", doc.source)),
                },
                None => match unchecked_kind(api_group(&api_version), &kind_str) {
                    Some(why) => unchecked.push(format!("{}: {kind_str} {key}: {why}", doc.source)),
                    None => notes.push(format!(
                        "{}: {} {key} ignored (not a kind the controller reads)",
                        doc.source,
                        display_kind(&api_version, &kind_str)
                    )),
                },
            },
        }
    }

    let mut analyzed = Vec::new();
    // Gateway -> what its data plane may reach (with --egress-policy).
    let mut behind: BTreeMap<ObjectRef, Vec<crate::egress::Allowed>> = BTreeMap::new();
    // Each assumed target and the XBackends that reference it, for the summary.
    let mut assumed: BTreeMap<RefTarget, Vec<ObjectRef>> = BTreeMap::new();
    for (key, mut object) in backends {
        let targets = match index.backend(&key) {
            Some(b) => b.spec.as_ref().map(|s| refs::refs_to_fetch(&key, s, &index)).unwrap_or_default(),
            None => continue,
        };
        // refs_to_fetch leaves out other kinds and cross-namespace Secrets no
        // ReferenceGrant permits, so those are never assumed: they still fail.
        let mut fetched = Fetched::default();
        let hostname = index
            .backend(&key)
            .and_then(|b| b.spec.as_ref().ok())
            .and_then(|spec| crate::verdict::hostname_to_resolve(spec, policy, &index));
        fetched.resolution = hostname.as_deref().and_then(&resolve_once).map(std::sync::Arc::new);
        for target in targets {
            let found = match &target {
                RefTarget::Secret(r) => secrets.get(r).map(|s| fetched.secrets.insert(r.clone(), s.clone())).is_some(),
                RefTarget::ConfigMap(r) => {
                    config_maps.get(r).map(|c| fetched.config_maps.insert(r.clone(), c.clone())).is_some()
                }
            };
            if !found && options.assume_refs_exist {
                assumed.entry(target.clone()).or_default().push(key.clone());
                fetched.assumed.insert(target);
            }
        }
        let shape = Shape::Ancestors;
        let current = object["status"][shape.list_field()].as_array().cloned().unwrap_or_default();
        let inputs = Settings { policy, controller_name, shape, current: &current, now };
        let Some(judgement) = judge(&index, &key, &fetched, &inputs) else { continue };
        let list =
            if judgement.merged.list.is_empty() { Value::Null } else { Value::Array(judgement.merged.list.clone()) };
        set_status(&mut object, shape.list_field(), list);
        if let (Some(_), Some(Ok(spec))) = (&options.egress, index.backend(&key).map(|b| &b.spec)) {
            let addresses = fetched.resolution.iter().flat_map(|r| r.addresses.iter().copied()).collect();
            let accepted = judgement.ancestors.iter().zip(judgement.entries.iter().map(|v| v.accepted.status));
            for (gateway, allowed) in crate::egress::uses(&key, spec, accepted, &addresses) {
                behind.entry(gateway).or_default().push(allowed);
            }
        }
        analyzed.push(Analyzed { key, object, judgement });
    }
    findings.extend(missing_backends(&index));
    findings.extend(crate::routecel::refused(&referrers, options.gateway_api));
    notes.extend(unchecked);
    notes.extend(risky_services(&index));
    notes.extend(nothing_judged(&index, controller_name));
    // The policy writer's own decision, from nothing standing: what `run` would write first.
    let (mut policies, egress) = match &options.egress {
        Some((config, engine, hold)) => {
            let resolve = |hostname: &str| resolve_once(hostname);
            decide_egress(&index, config, &**engine, *hold, policy, behind, &resolve, &mut notes)
        }
        None => (Vec::new(), Vec::new()),
    };
    // A lookup that failed: the XBackends naming it are left out of the policies.
    for (hostname, answer) in answers.borrow().iter() {
        let Err(why) = answer else { continue };
        // Who names it: XBackends, and ExternalName Services routes name.
        let named: Vec<String> = (index.backends_with_hostname(hostname).iter().map(|b| format!("XBackend {b}")))
            .chain(index.services_aliasing(hostname).iter().map(|s| format!("ExternalName Service {s}")))
            .collect();
        let named = named.join(", ");
        let absent = format!("{named} ({hostname}): its DNS lookup failed ({why})");
        findings.push(format!(
            "the DNS lookup of {hostname} failed ({why}): its addresses are not judged, and {named} is absent from the egress policies"
        ));
        for policy in &mut policies {
            let annotations = &mut policy["metadata"]["annotations"];
            let before = annotations[ABSENT_ANNOTATION].as_str().map(|a| format!("{a}\n")).unwrap_or_default();
            annotations[ABSENT_ANNOTATION] = Value::String(format!("{before}{absent}"));
        }
    }
    notes.extend(assumed.into_iter().map(|(target, users)| {
        let (kind, name) = match &target {
            RefTarget::Secret(r) => ("Secret", r),
            RefTarget::ConfigMap(r) => ("ConfigMap", r),
        };
        let users = users.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        format!("assumed {kind} {name} exists and is valid (not in the input; --assume-refs-exist), referenced by XBackend {users}")
    }));
    Report { backends: analyzed, notes, policies, egress, findings }
}

/// On the policy objects `analyze` prints: the XBackends left out, and why.
pub const ABSENT_ANNOTATION: &str = "gateway.networking.x-k8s.io/egress-absent";

/// Kinds that name destinations as XBackend does, which nothing here checks.
fn unchecked_kind(group: &str, kind: &str) -> Option<&'static str> {
    match (group, kind) {
        ("gateway.envoyproxy.io", "Backend") => Some(
            "Envoy Gateway's Backend names FQDN, IP or Unix-socket endpoints that no guardrail here checks (the CVE-2021-25740 path XBackend closes); use an XBackend, or hold its Gateway's data plane with --egress-policy",
        ),
        ("networking.istio.io", "ServiceEntry") => Some(
            "Istio's ServiceEntry adds hosts and addresses to the mesh that no guardrail here checks; use an XBackend, or hold its Gateway's data plane with --egress-policy",
        ),
        _ => None,
    }
}

/// A reference to an XBackend the input does not hold: the route would
/// point at nothing (and `run` would have nothing to judge).
fn missing_backends(index: &Index) -> Vec<String> {
    let mut findings = Vec::new();
    for ((referrer, key), route) in index.referrers() {
        for backend in route.backends.iter().filter(|b| index.backend(b).is_none()) {
            findings.push(format!(
                "{} {key} references XBackend {backend}, which the input does not hold",
                referrer.kind()
            ));
        }
    }
    findings.sort();
    findings
}

/// Routes' references to ExternalName Services or selectorless ones: the
/// path XBackend replaces (CVE-2021-25740).
fn risky_services(index: &Index) -> Vec<String> {
    let mut notes = std::collections::BTreeSet::new();
    for ((referrer, key), route) in index.referrers() {
        for reference in route.services.iter() {
            let Some(service) = index.service(&reference.service) else { continue };
            let what = match (&service.external_name, service.selector.is_empty()) {
                (Some(name), _) => format!("an ExternalName Service (to {name})"),
                (None, true) => "a Service without a selector (its EndpointSlices are written by hand)".to_string(),
                (None, false) => continue,
            };
            notes.insert(format!(
                "{} {key} names Service {}, {what}: the path XBackend replaces (CVE-2021-25740); it is judged only with --egress-policy and --egress-cluster routes (name, DNS answers and addresses as an XBackend's); an XBackend says the same with every check",
                referrer.kind(),
                reference.service
            ));
        }
    }
    notes.into_iter().collect()
}

/// Why nothing was judged, and what to pass.
fn nothing_judged(index: &Index, controller_name: &str) -> Vec<String> {
    if index.backend_count() == 0 {
        return vec!["the input holds no XBackend: nothing to judge".to_string()];
    }
    if !index.judged_gateways().is_empty() || index.gateway_count() == 0 {
        return Vec::new();
    }
    let classes = index.gateway_classes_in_use();
    vec![format!(
        "no Gateway of the input is judged: none has a GatewayClass whose controllerName is {controller_name}; pass --controller-name, or --gateway-class NAME for another implementation's Gateways (guard mode; classes in the input: {})",
        if classes.is_empty() { "none".to_string() } else { classes.join(", ") }
    )]
}

/// The egress decision `run` would make first, from nothing standing: the
/// policy objects, and per judged Gateway what it may reach in the cluster.
#[allow(clippy::too_many_arguments)]
fn decide_egress(
    index: &Index,
    config: &crate::egress::Config,
    engine: &dyn crate::egress::Engine,
    hold: crate::egress::Hold,
    policy: &Policy,
    behind: BTreeMap<ObjectRef, Vec<crate::egress::Allowed>>,
    resolve: &dyn Fn(&str) -> Option<Resolution>,
    notes: &mut Vec<String>,
) -> (Vec<Value>, Vec<GatewayEgress>) {
    use crate::egress::{ClusterMode, Decisions, Demand, GatewayInfo, Round};
    let gateways: Vec<GatewayInfo> = (index.judged_gateways().into_iter())
        .map(|key| {
            let g = index.gateway(&key).cloned().unwrap_or_default();
            let controller = index.gateway_class(&g.class_name).map(|c| c.controller_name.clone()).unwrap_or_default();
            GatewayInfo { key, uid: g.uid, class: g.class_name, controller }
        })
        .collect();
    let answer = |hostname: &str| resolve(hostname).map(std::sync::Arc::new);
    let namespaces = index.namespaces();
    let mut demand = Demand { gateways: gateways.clone(), behind, ..Demand::default() };
    let mut refused: BTreeMap<ObjectRef, Vec<String>> = BTreeMap::new();
    for gateway in &gateways {
        let found = crate::reach::targets(index, &gateway.key);
        let judged = crate::reach::judge(&found, policy, &*namespaces, &answer);
        refused.insert(gateway.key.clone(), judged.refused.into_iter().map(|r| r.message).collect());
        demand.reach.insert(gateway.key.clone(), judged.allowed);
    }
    let round = Round { now: 0, hold, config, engine, denied: &|_| false, rebuild: true };
    let decision = Decisions::default().decide(&demand, &BTreeMap::new(), &round);
    let kind = engine.kind().kind;
    notes.extend(decision.unwritable.iter().map(|(gw, ns)| {
        format!("no {kind} for Gateway {gw}: its data plane runs in namespace {ns}, not one of --egress-namespace")
    }));
    notes.extend(decision.open.iter().map(|g| format!(
        "Gateway {}'s data plane may reach every Pod of the cluster: nothing says what class {} (controller {:?}) needs itself; pass --egress-needs {}=... or --egress-cluster",
        g.key, g.class, g.controller, g.class
    )));
    notes.extend(decision.cut_off.iter().map(|(g, mode)| format!(
        "--egress-cluster {} allows Gateway {}'s control plane nothing: nothing says what class {} needs itself; pass --egress-needs {}=...",
        mode.name(), g.key, g.class, g.class
    )));
    let open: std::collections::BTreeSet<&ObjectRef> = decision.open.iter().map(|g| &g.key).collect();
    let egress = gateways
        .iter()
        .map(|g| {
            let mode = match config.cluster {
                Some(mode) => mode,
                None if open.contains(&g.key) => ClusterMode::All,
                None => ClusterMode::Routes,
            };
            let routes = mode == ClusterMode::Routes;
            let rules = demand.reach.get(&g.key).filter(|_| routes).into_iter().flatten().map(|a| a.note()).collect();
            let refused = if routes { refused.remove(&g.key).unwrap_or_default() } else { Vec::new() };
            GatewayEgress { gateway: g.key.clone(), mode: mode.name(), rules, refused }
        })
        .collect();
    (decision.policies.into_values().map(|p| p.to_value()).collect(), egress)
}

/// A manifest without `metadata.generation` is judged as the apiserver would
/// store it when created: generation 1, which observedGeneration then reports.
fn as_created(kind: Kind, mut value: Value) -> Value {
    if kind == Kind::XBackend
        && value["metadata"].get("generation").is_none()
        && let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut)
    {
        meta.insert("generation".into(), Value::from(1));
    }
    value
}

/// Namespaced objects without a namespace land in `default`, as with kubectl.
fn object_key(value: &mut Value, kind: &str) -> ObjectRef {
    let cluster_scoped = matches!(kind, "GatewayClass" | "Namespace" | "CustomResourceDefinition");
    let name = value["metadata"]["name"].as_str().unwrap_or_default().to_string();
    if cluster_scoped {
        return ObjectRef::new("", name);
    }
    let namespace = value["metadata"]["namespace"].as_str().filter(|n| !n.is_empty()).unwrap_or("default").to_string();
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("namespace".into(), Value::String(namespace.clone()));
    }
    ObjectRef::new(namespace, name)
}

/// The group of an apiVersion: `""` for the core `v1`.
fn api_group(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(group, _)| group)
}

fn display_kind(api_version: &str, kind: &str) -> String {
    match (api_version, kind) {
        ("", "") => "object without apiVersion/kind".into(),
        _ => format!("{kind} ({api_version})"),
    }
}

/// The apiserver folds `stringData` into `data`; manifests often use it.
fn with_string_data(mut value: Value) -> Value {
    let Some(string_data) = value.get("stringData").and_then(Value::as_object).cloned() else { return value };
    let mut data: BTreeMap<String, ByteString> =
        value.get("data").and_then(|d| serde_json::from_value(d.clone()).ok()).unwrap_or_default();
    for (k, v) in string_data {
        if let Some(s) = v.as_str() {
            data.insert(k, ByteString(s.as_bytes().to_vec()));
        }
    }
    if let Some(obj) = value.as_object_mut() {
        obj.remove("stringData");
        obj.insert("data".into(), serde_json::to_value(data).unwrap_or(Value::Null));
    }
    value
}

fn set_status(object: &mut Value, field: &str, list: Value) {
    let Some(obj) = object.as_object_mut() else { return };
    let status = obj.entry("status").or_insert_with(|| Value::Object(Default::default()));
    if !status.is_object() {
        *status = Value::Object(Default::default());
    }
    if let Some(s) = status.as_object_mut() {
        if list.is_null() {
            s.remove(field);
        } else {
            s.insert(field.into(), list);
        }
    }
}

/// Reads every path: files, folders (recursively, .yaml/.yml/.json, sorted)
/// and `-` for stdin. Multi-document YAML and `kind: List` are flattened.
pub fn read_inputs(paths: &[PathBuf]) -> Result<Vec<Document>, InputError> {
    let mut docs = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).map_err(|e| InputError(format!("stdin: {e}")))?;
            parse_documents("stdin", &text, &mut docs)?;
        } else if path.is_dir() {
            for file in files_under(path)? {
                read_file(&file, &mut docs)?;
            }
        } else {
            read_file(path, &mut docs)?;
        }
    }
    Ok(docs)
}

fn read_file(path: &Path, docs: &mut Vec<Document>) -> Result<(), InputError> {
    let bytes = std::fs::read(path).map_err(|e| InputError(format!("{}: {e}", path.display())))?;
    let text = String::from_utf8(bytes).map_err(|_| InputError(format!("{}: not UTF-8 text", path.display())))?;
    parse_documents(&path.display().to_string(), &text, docs)
}

fn files_under(dir: &Path) -> Result<Vec<PathBuf>, InputError> {
    let mut out = Vec::new();
    walk(dir, &mut HashSet::new(), &mut HashSet::new(), &mut out)?;
    out.sort();
    Ok(out)
}

/// Depth first in name order, so which of several paths to the same file is
/// kept does not depend on the order the OS lists folders in. Symbolic links
/// are followed, but every real folder and file is read once: a link to an
/// ancestor folder cannot make the walk loop, and a file reachable twice (as
/// in a mounted ConfigMap's `..data` links) is not reported as a duplicate.
fn walk(
    dir: &Path,
    seen_dirs: &mut HashSet<PathBuf>,
    seen_files: &mut HashSet<PathBuf>,
    out: &mut Vec<PathBuf>,
) -> Result<(), InputError> {
    let real = std::fs::canonicalize(dir).map_err(|e| InputError(format!("{}: {e}", dir.display())))?;
    if !seen_dirs.insert(real) {
        return Ok(());
    }
    let entries = std::fs::read_dir(dir).map_err(|e| InputError(format!("{}: {e}", dir.display())))?;
    let mut paths = Vec::new();
    for entry in entries {
        paths.push(entry.map_err(|e| InputError(format!("{}: {e}", dir.display())))?.path());
    }
    paths.sort();
    for path in paths {
        if path.is_dir() {
            walk(&path, seen_dirs, seen_files, out)?;
        } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")) {
            // A dangling link keeps its path: reading it reports the error.
            let real = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
            if seen_files.insert(real) {
                out.push(path);
            }
        }
    }
    Ok(())
}

/// Parses a YAML stream (JSON is YAML) into documents, naming the file,
/// document number and line of any error.
pub fn parse_documents(source: &str, text: &str, docs: &mut Vec<Document>) -> Result<(), InputError> {
    for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let n = i + 1;
        let value = match <Value as serde::Deserialize>::deserialize(de) {
            Ok(v) => v,
            Err(e) => {
                let at = e.location().map(|l| format!(" line {}", l.line())).unwrap_or_default();
                return Err(InputError(format!("{source}: document {n}{at}: {e}")));
            }
        };
        match value {
            Value::Null => {}
            Value::Object(ref map) => {
                let here = format!("{source} (document {n})");
                if map.get("kind").and_then(Value::as_str).is_some_and(|k| k.ends_with("List"))
                    && let Some(items) = map.get("items")
                {
                    let items =
                        items.as_array().ok_or_else(|| InputError(format!("{here}: List items is not an array")))?;
                    for (j, item) in items.iter().enumerate() {
                        if !item.is_object() {
                            return Err(InputError(format!("{here}: List item {} is not an object", j + 1)));
                        }
                        docs.push(Document { source: format!("{here} item {}", j + 1), value: item.clone() });
                    }
                } else {
                    docs.push(Document { source: here, value });
                }
            }
            _ => return Err(InputError(format!("{source}: document {n} is not an object"))),
        }
    }
    Ok(())
}
