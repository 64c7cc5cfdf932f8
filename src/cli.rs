//! Command-line contract (docs/design.md §8). `run` and `analyze` share the
//! guardrail flags so both judge an XBackend the same way.

use std::net::SocketAddr;
use std::path::PathBuf;

use std::collections::BTreeMap;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::policy::PolicyConfig;

pub const DEFAULT_CONTROLLER_NAME: &str = "gateway.networking.x-k8s.io/xbackend-controller";

#[derive(Parser, Debug)]
#[command(
    name = "xbackend-controller",
    version,
    about = "Controller for Gateway API XBackends: validates them and reports status per Gateway"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Watch the cluster and write XBackend status (kubeconfig: KUBECONFIG, ~/.kube/config or in-cluster).
    Run(RunArgs),
    /// Print the XBackend CRD YAML (the content of crds/xbackends.yaml).
    Crd,
    /// Judge XBackends in manifest files offline and print the status the controller would write.
    Analyze(AnalyzeArgs),
}

/// Flags that decide whether an XBackend is accepted.
#[derive(Args, Debug, Clone, Default)]
pub struct PolicyArgs {
    /// In-cluster DNS suffix to reject besides cluster.local (repeatable). Default: none, only cluster.local.
    #[arg(long = "cluster-domain", value_name = "DOMAIN")]
    pub cluster_domains: Vec<String>,
    /// Only hostnames matching one of these globs are accepted (repeatable; `*.example.com` matches subdomains, not the apex). Default: any hostname the built-in guardrails allow.
    #[arg(long = "allow-hostname", value_name = "GLOB")]
    pub allow_hostnames: Vec<String>,
    /// Hostnames matching this glob are rejected with HostnameNotAllowed (repeatable). Default: none beyond the built-in guardrails.
    #[arg(long = "deny-hostname", value_name = "GLOB")]
    pub deny_hostnames: Vec<String>,
    /// Reject XBackends without TLS (tls absent or mode None) with TLSRequired. Default: off (they are accepted with a Warning Event).
    #[arg(long)]
    pub require_tls: bool,
    /// Allow hostnames under this suffix although it is not a public suffix (repeatable; e.g. corp for git.corp). Not an allow-list: other names are judged as usual. Default: none.
    #[arg(long = "allow-private-suffix", value_name = "SUFFIX")]
    pub allowed_suffixes: Vec<String>,
    /// Reject hostnames that resolve into this range with AddressNotAllowed (repeatable; add your Pod and Service CIDRs). Default: none beyond the built-in ranges.
    #[arg(long = "deny-cidr", value_name = "CIDR")]
    pub deny_cidrs: Vec<String>,
    /// Permit addresses in this range that a built-in range denies (repeatable; --deny-cidr still wins). Default: none.
    #[arg(long = "allow-cidr", value_name = "CIDR")]
    pub allow_cidrs: Vec<String>,
}

impl PolicyArgs {
    pub fn to_config(&self) -> PolicyConfig {
        PolicyConfig {
            cluster_domains: self.cluster_domains.clone(),
            allow_hostnames: self.allow_hostnames.clone(),
            deny_hostnames: self.deny_hostnames.clone(),
            require_tls: self.require_tls,
            allowed_suffixes: self.allowed_suffixes.clone(),
            deny_cidrs: self.deny_cidrs.clone(),
            allow_cidrs: self.allow_cidrs.clone(),
        }
    }
}

/// Which Gateways are judged besides those of our own GatewayClasses.
#[derive(Args, Debug, Clone, Default)]
pub struct GuardArgs {
    /// Also judge XBackends behind Gateways of this GatewayClass, whatever its controllerName (repeatable): guard mode, next to Istio, Envoy Gateway or any other implementation. Our entries carry --controller-name beside the implementation's own, which are never touched; the class's status is not written. Default: none (only classes whose controllerName is --controller-name).
    #[arg(long = "gateway-class", value_name = "NAME")]
    pub gateway_classes: Vec<String>,
}

/// Egress enforcement: policy objects for the judged Gateways' data planes (docs/design.md §6b).
#[derive(Args, Debug, Clone)]
pub struct EgressArgs {
    /// off, or the engine that enforces: networkpolicy (NetworkPolicies, every CNI; another NetworkPolicy on the same Pods can widen them), adminnetworkpolicy (AdminNetworkPolicy v1alpha1 with the networks peer: OVN-Kubernetes, Calico, Antrea, kube-network-policies) or clusternetworkpolicy (ClusterNetworkPolicy, tier Admin, v1beta1 where served else v1alpha2): the admin tier, which namespace owners cannot widen. Each judged Gateway's data-plane Pods may reach only DNS, the vetted addresses of its Accepted XBackends, what --egress-cluster allows inside the cluster and what the data plane needs itself. Needs the DNS check.
    #[arg(long, value_name = "ENGINE", default_value = "off", value_parser = engine_names())]
    pub egress_policy: String,
    /// The admin tier's priority (adminnetworkpolicy, clusternetworkpolicy): each Gateway's Accepts at N, its final Deny at N+1 (lower numbers are evaluated first; OVN-Kubernetes supports 0-99).
    #[arg(long, value_name = "N", default_value_t = 90, value_parser = clap::value_parser!(u32).range(0..1000))]
    pub egress_admin_priority: u32,
    /// What each judged Gateway's data plane may reach inside the cluster: routes (exactly what its routes name: each referenced Service's Pods on the target port, a selectorless Service's vetted EndpointSlice addresses, an ExternalName Service's vetted answers; plus what the data plane needs itself), all (every Pod of every namespace) or none (nothing beyond DNS, XBackends and the data plane's needs). Default: routes for Gateways whose class has a preset (Istio, Envoy Gateway) or --egress-needs, all for the others (with a Warning Event on the Gateway).
    #[arg(long, value_name = "MODE", value_parser = ["routes", "all", "none"])]
    pub egress_cluster: Option<String>,
    /// Deprecated: --egress-cluster all (true) or none (false). Default: unset.
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set, conflicts_with = "egress_cluster")]
    pub egress_policy_allow_cluster: Option<bool>,
    /// What a GatewayClass's data planes need themselves, instead of their controller's preset (repeatable, accumulates per class): CLASS=NAMESPACE/KEY=VALUE[,KEY=VALUE]:PORTS (Pods), CLASS=CIDR[,CIDR]:PORTS (networks) or CLASS=none; PORTS is PORT[/udp][,...]. Presets: istio.io/gateway-controller (istiod, istio-system/app=istiod:15012; every Pods rule also on 15008 for ambient's HBONE) and gateway.envoyproxy.io/gatewayclass-controller (envoy-gateway-system/control-plane=envoy-gateway:18000). Default: the presets only.
    #[arg(long = "egress-needs", value_name = "CLASS=DESTINATION", value_parser = crate::egress::presets::parse)]
    pub egress_needs: Vec<(String, Vec<crate::egress::Allowed>)>,
    /// At most this many addresses per hostname; the least recently seen leave first.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    pub egress_max_addresses_per_host: u16,
    /// Allow DNS to these resolver ranges (repeatable; node-local caches) instead of the cluster DNS Pods. Default: none (the Pods of kube-system labelled k8s-app=kube-dns, or with run's --dns-service that Service's Pods).
    #[arg(long = "egress-dns-cidr", value_name = "CIDR")]
    pub egress_dns_cidrs: Vec<ipnet::IpNet>,
    /// Where a GatewayClass's data-plane Pods run, as CLASS=NAMESPACE:KEY=VALUE,... (repeatable; VALUE may say {name} and {namespace}, the Gateway's; an empty NAMESPACE is the Gateway's). Envoy Gateway: eg=envoy-gateway-system:gateway.envoyproxy.io/owning-gateway-name={name},gateway.envoyproxy.io/owning-gateway-namespace={namespace}. Default: the Gateway's namespace, label gateway.networking.k8s.io/gateway-name={name} (GEP-1762; Istio).
    #[arg(long = "egress-data-plane", value_name = "CLASS=NAMESPACE:LABELS", value_parser = parse_data_plane)]
    pub egress_data_planes: Vec<(String, crate::egress::DataPlane)>,
    /// Write NetworkPolicies only in these namespaces (repeatable; the data planes' namespaces, where the chart grants a Role); a Gateway whose data plane runs elsewhere gets a Warning Event and no policy. Default: every namespace.
    #[arg(long = "egress-namespace", value_name = "NAMESPACE")]
    pub egress_namespaces: Vec<String>,
}

fn parse_data_plane(text: &str) -> Result<(String, crate::egress::DataPlane), String> {
    let (class, plane) = text.split_once('=').ok_or("expected CLASS=NAMESPACE:KEY=VALUE,...")?;
    Ok((class.to_string(), plane.parse()?))
}

fn parse_service(text: &str) -> Result<(String, String), String> {
    let (namespace, name) = text.split_once('/').ok_or("expected NAMESPACE/NAME, for example kube-system/kube-dns")?;
    // Both are DNS labels (a Service name also starts with a letter): nothing
    // else may reach the label selector the watch builds from the name.
    if let Some(problem) = crate::names::dns_label_problem(namespace) {
        return Err(format!("the namespace {namespace:?} {problem}"));
    }
    if let Some(problem) = crate::names::dns_label_problem(name) {
        return Err(format!("the Service name {name:?} {problem}"));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(format!("the Service name {name:?} does not start with a letter"));
    }
    Ok((namespace.to_string(), name.to_string()))
}

/// off, and every engine's name.
fn engine_names() -> clap::builder::PossibleValuesParser {
    let names = std::iter::once("off").chain(crate::egress::ENGINES.iter().map(|(name, _)| *name));
    clap::builder::PossibleValuesParser::new(names)
}

impl EgressArgs {
    pub fn enabled(&self) -> bool {
        self.engine_name().is_some()
    }

    /// The engine's name, or None with `off`.
    pub fn engine_name(&self) -> Option<&str> {
        (self.egress_policy != "off").then_some(self.egress_policy.as_str())
    }

    /// The engine offline (`analyze`: no cluster to discover versions in).
    pub fn engine(&self) -> Option<Box<dyn crate::egress::Engine>> {
        let settings = crate::egress::EngineSettings { admin_priority: self.egress_admin_priority, served: &[] };
        crate::egress::engine(self.engine_name()?, &settings)
    }

    /// The flags the engine's API cannot carry.
    pub fn check_engine(&self, engine: &dyn crate::egress::Engine) -> Result<(), String> {
        let most = engine.max_addresses_per_host();
        if usize::from(self.egress_max_addresses_per_host) > most {
            return Err(format!(
                "--egress-max-addresses-per-host {} is more than one {} rule can hold ({most})",
                self.egress_max_addresses_per_host,
                engine.kind().kind
            ));
        }
        Ok(())
    }

    /// The hold-down: `hold` as `run` keeps addresses (`analyze` decides once).
    pub fn hold(&self, hold: std::time::Duration) -> crate::egress::Hold {
        crate::egress::Hold {
            seconds: i64::try_from(hold.as_secs()).unwrap_or(i64::MAX),
            max_per_host: usize::from(self.egress_max_addresses_per_host),
        }
    }

    pub fn config(&self) -> crate::egress::Config {
        let peers = if self.egress_dns_cidrs.is_empty() {
            crate::egress::DnsPeers::default()
        } else {
            crate::egress::DnsPeers::Cidrs(self.egress_dns_cidrs.clone())
        };
        let data_planes = self.egress_data_planes.iter().cloned().collect();
        let namespaces = (!self.egress_namespaces.is_empty()).then(|| self.egress_namespaces.iter().cloned().collect());
        let mut needs: BTreeMap<String, Vec<crate::egress::Allowed>> = BTreeMap::new();
        for (class, rules) in &self.egress_needs {
            needs.entry(class.clone()).or_default().extend(rules.iter().cloned());
        }
        crate::egress::Config {
            cluster: self.cluster_mode(),
            dns: crate::egress::Dns { peers, port: 53 },
            data_planes,
            needs,
            namespaces,
            controller: String::new(),
        }
    }

    /// `--egress-cluster`, or what the deprecated `--egress-policy-allow-cluster` means.
    pub fn cluster_mode(&self) -> Option<crate::egress::ClusterMode> {
        use crate::egress::ClusterMode;
        match (&self.egress_cluster, self.egress_policy_allow_cluster) {
            (Some(mode), _) => mode.parse().ok(),
            (None, Some(true)) => Some(ClusterMode::All),
            (None, Some(false)) => Some(ClusterMode::None),
            (None, None) => None,
        }
    }

    /// The warning for a deprecated flag, when given.
    pub fn deprecation(&self) -> Option<String> {
        let allow = self.egress_policy_allow_cluster?;
        let mode = if allow { "all" } else { "none" };
        Some(format!("--egress-policy-allow-cluster is deprecated: use --egress-cluster {mode}"))
    }
}

/// Where the resolved-address guardrail asks DNS.
#[derive(Args, Debug, Clone)]
pub struct DnsArgs {
    /// DNS server to ask, as ADDR:PORT (repeatable). Default: the system resolver configuration (/etc/resolv.conf).
    #[arg(long = "dns-server", value_name = "ADDR:PORT")]
    pub dns_servers: Vec<SocketAddr>,
}

/// How often `run` asks again (`analyze` asks once).
#[derive(Args, Debug, Clone)]
pub struct TtlArgs {
    /// Re-resolve a hostname no sooner than this many seconds, whatever its TTL.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub dns_min_ttl: u64,
    /// Re-resolve a hostname at least this often (seconds), whatever its TTL.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub dns_max_ttl: u64,
    /// How long an address stays allowed in the egress policies after an answer last held it (clients cache longer than TTLs), e.g. 1h, 30m, 90s.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    pub egress_address_hold: std::time::Duration,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// GatewayClass spec.controllerName this controller serves; also the controllerName of the status entries it writes.
    #[arg(long, default_value = DEFAULT_CONTROLLER_NAME)]
    pub controller_name: String,

    #[command(flatten)]
    pub guard: GuardArgs,

    #[command(flatten)]
    pub policy: PolicyArgs,

    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,

    /// Elect a leader through a Lease so that only one replica writes status (default on).
    #[arg(long, overrides_with = "no_leader_election", default_value_t = true)]
    pub leader_election: bool,
    /// Write status without electing a leader (for a single local replica). Default: off.
    #[arg(long, overrides_with = "leader_election")]
    pub no_leader_election: bool,
    /// Namespace of the leader election Lease. Default: the namespace of the kubeconfig context or the pod.
    #[arg(long, value_name = "NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// Name of the leader election Lease.
    #[arg(long, default_value = "xbackend-controller")]
    pub lease_name: String,
    /// Seconds a Lease is valid without renewal; a new leader takes over at most this long after the old one dies.
    #[arg(long, default_value_t = 15)]
    pub lease_duration: u64,

    /// Resolve every allowed hostname (A, AAAA, CNAMEs) and reject those that reach denied addresses with AddressNotAllowed (default on).
    #[arg(long, overrides_with = "no_dns_check", default_value_t = true)]
    pub dns_check: bool,
    /// Judge hostnames by name only, without DNS. Default: off.
    #[arg(long, overrides_with = "dns_check")]
    pub no_dns_check: bool,
    #[command(flatten)]
    pub dns: DnsArgs,
    #[command(flatten)]
    pub ttl: TtlArgs,
    /// Ask every ready endpoint of this Service, as NAMESPACE/NAME (kube-system/kube-dns), followed through its EndpointSlices, instead of the system resolver (--dns-server still adds servers): replicas can answer differently, and the data plane may ask any of them; the egress DNS rule then allows that Service's Pods on the port they answer on. Needs the DNS check. Default: none (the system resolver, or --dns-server).
    #[arg(long = "dns-service", value_name = "NAMESPACE/NAME", value_parser = parse_service)]
    pub dns_service: Option<(String, String)>,
    #[command(flatten)]
    pub egress: EgressArgs,
    /// Seconds between safety resyncs on the leader, counted from when the previous pass was drained from the queue: every XBackend is reconciled again (nothing is written when nothing changed). 0 disables them.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub resync_interval: u64,

    /// XBackends reconciled at the same time.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl RunArgs {
    pub fn leader_election_enabled(&self) -> bool {
        !self.no_leader_election
    }

    pub fn dns_check_enabled(&self) -> bool {
        !self.no_dns_check
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Yaml,
    Json,
    Table,
}

#[derive(Args, Debug, Clone)]
pub struct AnalyzeArgs {
    /// File or folder (read recursively: .yaml, .yml, .json) or `-` for stdin (repeatable).
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true)]
    pub paths: Vec<PathBuf>,

    /// GatewayClass spec.controllerName to judge as this controller.
    #[arg(long, default_value = DEFAULT_CONTROLLER_NAME)]
    pub controller_name: String,

    #[command(flatten)]
    pub guard: GuardArgs,

    #[command(flatten)]
    pub policy: PolicyArgs,

    /// Also resolve each allowed hostname and judge its addresses, as `run` does. Default: off (names only, no DNS).
    #[arg(long)]
    pub dns_check: bool,
    #[command(flatten)]
    pub dns: DnsArgs,
    #[command(flatten)]
    pub egress: EgressArgs,

    /// Count Secrets and ConfigMaps that XBackends reference but the input does not hold as present and valid, for bundles whose certificates cert-manager, external-secrets or a CSI driver create at run time; the summary lists each one assumed. Objects in the input, reference kinds and ReferenceGrants are still checked. It does not cover XBackends: a route's reference to an XBackend the input does not hold is always a finding (pass every file that defines them with -f). Default: off (an absent reference is a finding).
    #[arg(long)]
    pub assume_refs_exist: bool,

    /// The Gateway API release whose route, Gateway and ListenerSet CRDs the bundle is applied to: what their validation rules refuse about backend references is a finding (every release: a Service reference without a port; v1.7.0, experimental channel where XBackend is: an XBackend reference with one; v1.6.3: listener filters, which it does not have).
    #[arg(long, value_name = "VERSION", default_value = "v1.7.0", value_parser = ["v1.6.3", "v1.7.0"])]
    pub gateway_api_version: String,

    #[command(flatten)]
    pub run_only: RunOnlyArgs,

    /// yaml or json: the XBackends with the status the controller would write (then, with --egress-policy, the policy objects it would write); table: one line per XBackend and ancestor, then each judged Gateway's egress. The summary (table, or stderr) ends with the findings and notes.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Yaml)]
    pub output: OutputFormat,
}

/// `run`'s flags about time, which `analyze` accepts so one flag set serves
/// both (DESIGN §8 lists `--egress-address-hold` for both), but does not
/// offer: it asks DNS and decides once, and a first decision holds every
/// address it allows (a restart extends a hold, never cuts one).
#[derive(Args, Debug, Clone, Default)]
pub struct RunOnlyArgs {
    #[arg(long, value_name = "SECS", hide = true)]
    pub dns_min_ttl: Option<u64>,
    #[arg(long, value_name = "SECS", hide = true)]
    pub dns_max_ttl: Option<u64>,
    #[arg(long, value_name = "DURATION", hide = true, value_parser = humantime::parse_duration)]
    pub egress_address_hold: Option<std::time::Duration>,
}

impl RunOnlyArgs {
    /// One note per flag given, saying why it changes nothing here.
    pub fn notes(&self) -> Vec<String> {
        let given = [
            ("--dns-min-ttl", self.dns_min_ttl.is_some(), "analyze asks DNS once per hostname"),
            ("--dns-max-ttl", self.dns_max_ttl.is_some(), "analyze asks DNS once per hostname"),
            (
                "--egress-address-hold",
                self.egress_address_hold.is_some(),
                "analyze decides once, and a first decision drops no address it allows",
            ),
        ];
        (given.into_iter().filter(|(_, given, _)| *given))
            .map(|(flag, _, why)| format!("{flag} has no effect on analyze: {why} (run uses it)"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dns_service_is_two_dns_labels() {
        assert_eq!(parse_service("kube-system/kube-dns"), Ok(("kube-system".into(), "kube-dns".into())));
        for bad in ["kube-dns", "/kube-dns", "kube-system/", "a/b/c", "ns/a,b=c", "ns/1dns", "NS/dns"] {
            assert!(parse_service(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_service("ns/a,b=c").unwrap_err(),
            "the Service name \"a,b=c\" has characters other than lowercase letters, digits and '-'"
        );
    }
}
