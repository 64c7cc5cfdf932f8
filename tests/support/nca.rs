//! network-config-analyzer (nca, pinned by hack/install-nca.sh): an
//! independent offline evaluator of NetworkPolicies, asked what one Pod may reach.

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

/// One allowed connection group from nca's connectivity map: a destination
/// (a Pod as `ns/name`, or an address range) and what it allows.
/// Protocols, and port ranges (empty: every port).
type Group = (Vec<String>, Vec<(u16, u16)>);

#[derive(Debug)]
struct Line {
    destination: Destination,
    /// None: every protocol and port; else (protocols, ports; empty = all ports).
    groups: Option<Vec<Group>>,
}

#[derive(Debug)]
enum Destination {
    Pod(String),
    Range(IpAddr, IpAddr),
}

/// What `source` (`ns/name`) may reach under `policies`, given the Pods and
/// Namespaces in `topology` (both YAML files).
pub struct Connectivity {
    lines: Vec<Line>,
    pub text: String,
}

impl Connectivity {
    pub fn of(source: &str, policies: &Path, topology: &Path) -> Connectivity {
        let out_file = policies.with_extension("nca.txt");
        let _ = std::fs::remove_file(&out_file); // nca appends
        let out = Command::new(super::tool("nca"))
            .args(["--connectivity"])
            .arg(policies)
            .arg("--pod_list")
            .arg(topology)
            .arg("--ns_list")
            .arg(topology)
            .args(["-o", "txt_no_fw_rules", "--output_endpoints", "pods", "--print_ipv6", "-f"])
            .arg(&out_file)
            .output()
            .expect("run nca");
        let text = std::fs::read_to_string(&out_file).unwrap_or_else(|e| {
            panic!(
                "nca wrote no map ({e}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let lines = text
            .lines()
            .filter_map(|line| {
                let (from, rest) = line.split_once(" => ")?;
                let (to, conn) = rest.split_once(" : ")?;
                (from.trim() == source)
                    .then(|| Line { destination: destination(to.trim()), groups: groups(conn.trim()) })
            })
            .collect();
        Connectivity { lines, text }
    }

    /// Whether `protocol` (TCP, UDP) to `port` on the address is allowed.
    pub fn allows_address(&self, ip: IpAddr, protocol: &str, port: u16) -> bool {
        self.allows(
            |d| matches!(d, Destination::Range(a, b) if *a <= ip && ip <= *b && same_family(*a, ip)),
            protocol,
            port,
        )
    }

    /// Whether `protocol` to `port` on Pod `ns/name` is allowed.
    pub fn allows_pod(&self, pod: &str, protocol: &str, port: u16) -> bool {
        self.allows(|d| matches!(d, Destination::Pod(p) if p == pod), protocol, port)
    }

    fn allows(&self, to: impl Fn(&Destination) -> bool, protocol: &str, port: u16) -> bool {
        self.lines.iter().filter(|l| to(&l.destination)).any(|l| match &l.groups {
            None => true,
            Some(groups) => groups.iter().any(|(protocols, ports)| {
                protocols.iter().any(|p| p == protocol)
                    && (ports.is_empty() || ports.iter().any(|(lo, hi)| *lo <= port && port <= *hi))
            }),
        })
    }
}

fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

fn destination(text: &str) -> Destination {
    let parse = |s: &str| s.parse::<IpAddr>().ok();
    match text.split_once('-').and_then(|(a, b)| Some((parse(a)?, parse(b)?))) {
        Some((a, b)) => Destination::Range(a, b),
        None => match parse(text) {
            Some(ip) => Destination::Range(ip, ip),
            None => Destination::Pod(text.to_string()),
        },
    }
}

/// "All connections", or "{protocols:TCP, UDP,dst_ports:53,80-81}" groups.
fn groups(text: &str) -> Option<Vec<Group>> {
    if text == "All connections" {
        return None;
    }
    assert!(!text.starts_with("All but"), "nca map form not handled here: {text}");
    let groups = text
        .split('}')
        .filter_map(|g| g.trim_start_matches([',', ' ', ';']).strip_prefix('{'))
        .map(|g| {
            let (protocols, ports) = g.split_once(",dst_ports:").unwrap_or((g, ""));
            let protocols =
                protocols.trim_start_matches("protocols:").split(", ").map(|p| p.trim().to_string()).collect();
            let ports = ports
                .split(',')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('-') {
                    Some((lo, hi)) => (lo.parse().unwrap(), hi.parse().unwrap()),
                    None => (p.parse().unwrap(), p.parse().unwrap()),
                })
                .collect();
            (protocols, ports)
        })
        .collect();
    Some(groups)
}
