//! The runtime's start-up error (what `run` returns) and `chain`, which prints
//! an error with its causes on one line. A leaf: it imports no runtime module.

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
    #[error(
        "--egress-policy networkpolicy needs the DNS check (the policies allow resolved addresses): drop --no-dns-check"
    )]
    EgressNeedsDnsCheck,
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
