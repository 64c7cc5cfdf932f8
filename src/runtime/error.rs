//! The runtime's start-up error (what `run` returns) and `chain`, which prints
//! an error with its causes on one line. It imports only the task supervisor's error.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid flag: {0}")]
    Usage(String),
    #[error("cannot reach the Kubernetes API")]
    Kube(#[from] kube::Error),
    #[error("cannot load kubeconfig")]
    Config(#[from] kube::config::InferConfigError),
    #[error("the XBackend CRD ({0}) is not installed: apply crds/xbackends.yaml first")]
    CrdMissing(&'static str),
    #[error("cannot serve the metrics address")]
    Listen(#[from] std::io::Error),
    #[error("cannot start leader election")]
    Lease(#[source] kube_lease_manager::LeaseManagerError),
    #[error("--egress-policy needs the DNS check (the policies allow resolved addresses): drop --no-dns-check")]
    EgressNeedsDnsCheck,
    #[error(
        "--egress-policy {engine} writes {kind} ({api_version}), which this cluster does not serve: install its CRD (and an enforcer that reads it) or choose another --egress-policy"
    )]
    EngineCrdMissing { engine: &'static str, kind: &'static str, api_version: String },
    #[error(transparent)]
    TaskEnded(#[from] super::tasks::GaveUp),
    #[error("leader election stopped ({0}); exiting so the Pod restarts")]
    ElectionEnded(&'static str),
    #[error("--dns-service names DNS servers for the DNS check: drop --no-dns-check or --dns-service")]
    DnsServiceNeedsDnsCheck,
}

impl Error {
    /// Flags that cannot work together: exit 2, like any usage error.
    pub fn is_usage(&self) -> bool {
        matches!(self, Error::Usage(_) | Error::EgressNeedsDnsCheck | Error::DnsServiceNeedsDnsCheck)
    }
}

/// An error and its sources, as one line: "outer: inner: innermost".
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        // Some errors repeat their source in their own message.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
