//! Egress guardrails on resolved addresses (docs/design.md §5c, reason
//! AddressNotAllowed): the ranges a Gateway must never be sent to by a name.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::dns::Resolution;
use crate::guardrails::{self, Namespaces};
use crate::names::{self, quoted};
use crate::policy::{AddressPolicy, Policy};

/// Built-in denied IPv4 ranges, most specific first, with what they are.
const DENIED_V4: &[(&str, &str)] = &[
    ("255.255.255.255/32", "limited broadcast"),
    ("169.254.169.254/32", "link-local, the cloud metadata endpoint"),
    ("0.0.0.0/8", "unspecified (\"this network\")"),
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("100.64.0.0/10", "shared address space (carrier-grade NAT, RFC 6598)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.0.0.0/24", "IETF protocol assignments (reserved)"),
    ("192.0.2.0/24", "documentation (TEST-NET-1)"),
    ("192.88.99.0/24", "6to4 relay anycast (deprecated)"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("198.18.0.0/15", "benchmarking (RFC 2544)"),
    ("198.51.100.0/24", "documentation (TEST-NET-2)"),
    ("203.0.113.0/24", "documentation (TEST-NET-3)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
];

/// Built-in denied IPv6 ranges (IPv4-mapped and NAT64 forms are judged by the
/// IPv4 address inside them first).
const DENIED_V6: &[(&str, &str)] = &[
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("fd00:ec2::254/128", "unique local, the AWS metadata endpoint"),
    ("64:ff9b:1::/48", "local-use NAT64 (RFC 8215)"),
    ("::/8", "reserved (including deprecated IPv4-compatible addresses)"),
    ("100::/64", "discard-only (RFC 6666)"),
    ("2001::/23", "IETF protocol assignments (reserved)"),
    ("2001:db8::/32", "documentation"),
    ("2002::/16", "6to4 (deprecated)"),
    ("3fff::/20", "documentation (RFC 9637)"),
    ("5f00::/16", "segment routing (SRv6) SIDs"),
    ("fc00::/7", "unique local (private)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
];

/// Forms that carry an IPv4 address in their last 32 bits.
const EMBEDDING_V6: &[(&str, &str)] = &[("::ffff:0:0/96", "IPv4-mapped"), ("64:ff9b::/96", "NAT64")];

/// Why `ip` is denied: the range it fell in and what that range is. An
/// explicit --deny-cidr always wins; --allow-cidr lifts a built-in denial.
pub fn denied(ip: IpAddr, policy: &AddressPolicy) -> Option<(String, String)> {
    if let Some(net) = policy.deny.iter().find(|n| n.contains(&ip)) {
        return Some((net.to_string(), "denied by --deny-cidr".into()));
    }
    if let Some((net, name)) = policy.services.iter().find(|(n, _)| n.contains(&ip)) {
        return Some((net.to_string(), format!("the cluster's Service range, ServiceCIDR {name}")));
    }
    if policy.allow.iter().any(|n| n.contains(&ip)) {
        return None;
    }
    builtin(ip).and_then(|found| {
        // The IPv4 address inside a mapped or NAT64 form may be allowed on its own.
        if let IpAddr::V6(v6) = ip
            && let Some(v4) = embedded_v4(v6)
            && policy.allow.iter().any(|n| n.contains(&IpAddr::V4(v4)))
        {
            return None;
        }
        Some(found)
    })
}

fn builtin(ip: IpAddr) -> Option<(String, String)> {
    match ip {
        IpAddr::V4(v4) => find_v4(v4).map(|(net, what)| (net.to_string(), what.to_string())),
        IpAddr::V6(v6) => {
            if let Some((form, v4)) = embedded(v6) {
                // Public IPv4 inside: fine, as the IPv4 address itself would be.
                return find_v4(v4).map(|(net, what)| (format!("{form} form of {net}"), what.to_string()));
            }
            DENIED_V6.iter().find_map(|(net, what)| {
                let net: Ipv6Net = net.parse().expect("built-in IPv6 range");
                net.contains(&v6).then(|| (net.to_string(), what.to_string()))
            })
        }
    }
}

fn find_v4(ip: Ipv4Addr) -> Option<(Ipv4Net, &'static str)> {
    DENIED_V4.iter().find_map(|(net, what)| {
        let net: Ipv4Net = net.parse().expect("built-in IPv4 range");
        net.contains(&ip).then_some((net, *what))
    })
}

fn embedded(ip: Ipv6Addr) -> Option<(&'static str, Ipv4Addr)> {
    EMBEDDING_V6.iter().find_map(|(net, form)| {
        let net: Ipv6Net = net.parse().expect("built-in IPv6 range");
        net.contains(&ip).then(|| (*form, Ipv4Addr::from_bits(ip.to_bits() as u32)))
    })
}

fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    embedded(ip).map(|(_, v4)| v4)
}

/// docs/design.md §5c for one resolution: every name of the CNAME chain passes the
/// built-in name rules and every address is outside the denied ranges.
pub fn check_resolution(
    hostname: &str,
    resolution: &Resolution,
    policy: &Policy,
    namespaces: &dyn Namespaces,
) -> Result<(), String> {
    let shown = quoted(hostname);
    for alias in &resolution.cnames {
        if let Some(why) = guardrails::builtin_problem(&names::normalize(alias), policy, namespaces) {
            return Err(format!(
                "hostname {shown} is an alias (CNAME) of {}, which {why}; the egress guardrail denies it.",
                quoted(alias)
            ));
        }
    }
    for ip in &resolution.addresses {
        if let Some((range, what)) = denied(*ip, &policy.addresses) {
            return Err(format!(
                "hostname {shown} resolves to {ip}, in {range} ({what}), which the egress guardrail denies."
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_denied(ip: &str) -> bool {
        denied(ip.parse().unwrap(), &AddressPolicy::default()).is_some()
    }

    /// Each built-in range at both edges, and the public address just outside where there is one.
    #[test]
    fn every_denied_range_at_both_edges() {
        let cases: &[(&str, &str, &[&str])] = &[
            ("0.0.0.0", "0.255.255.255", &["1.0.0.0"]),
            ("10.0.0.0", "10.255.255.255", &["9.255.255.255", "11.0.0.0"]),
            ("100.64.0.0", "100.127.255.255", &["100.63.255.255", "100.128.0.0"]),
            ("127.0.0.0", "127.255.255.255", &["126.255.255.255", "128.0.0.0"]),
            ("169.254.0.0", "169.254.255.255", &["169.253.255.255", "169.255.0.0"]),
            ("172.16.0.0", "172.31.255.255", &["172.15.255.255", "172.32.0.0"]),
            ("192.0.0.0", "192.0.0.255", &["192.0.1.0"]),
            ("192.0.2.0", "192.0.2.255", &["192.0.3.0"]),
            ("192.88.99.0", "192.88.99.255", &["192.88.98.255", "192.88.100.0"]),
            ("192.168.0.0", "192.168.255.255", &["192.167.255.255", "192.169.0.0"]),
            ("198.18.0.0", "198.19.255.255", &["198.17.255.255", "198.20.0.0"]),
            ("198.51.100.0", "198.51.100.255", &["198.51.99.255", "198.51.101.0"]),
            ("203.0.113.0", "203.0.113.255", &["203.0.112.255", "203.0.114.0"]),
            ("224.0.0.0", "239.255.255.255", &["223.255.255.255"]),
            ("240.0.0.0", "255.255.255.255", &[]),
            ("::", "::", &[]),
            ("::1", "::1", &[]),
            ("::2", "ff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", &["100::1:0:0:0:0"]),
            ("64:ff9b:1::", "64:ff9b:1:ffff:ffff:ffff:ffff:ffff", &[]),
            ("100::", "100::ffff:ffff:ffff:ffff", &["100:0:0:1::"]),
            (
                "2001::",
                "2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff",
                &["2001:200::", "2000:ffff:ffff:ffff:ffff:ffff:ffff:ffff"],
            ),
            (
                "2001:db8::",
                "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
                &["2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", "2001:db9::"],
            ),
            ("2002::", "2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff", &["2003::"]),
            ("3fff::", "3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff", &["3fff:1000::"]),
            (
                "5f00::",
                "5f00:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                &["5eff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "5f01::"],
            ),
            (
                "fc00::",
                "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                &["fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "fe00::"],
            ),
            ("fe80::", "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", &[]),
            ("fec0::", "feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", &[]),
            ("ff00::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", &[]),
        ];
        for (first, last, outside) in cases {
            assert!(is_denied(first), "{first} should be denied");
            assert!(is_denied(last), "{last} should be denied");
            for ip in *outside {
                assert!(!is_denied(ip), "{ip} should be allowed");
            }
        }
        for public in ["1.1.1.1", "8.8.8.8", "93.184.215.14", "2606:4700:4700::1111", "2a00:1450:4001::200e"] {
            assert!(!is_denied(public), "{public}");
        }
    }

    #[test]
    fn mapped_and_nat64_forms_are_judged_by_their_ipv4_address() {
        for ip in ["::ffff:127.0.0.1", "::ffff:169.254.169.254", "64:ff9b::10.0.0.1", "64:ff9b::a9fe:a9fe"] {
            let (range, _) = denied(ip.parse().unwrap(), &AddressPolicy::default()).expect(ip);
            assert!(range.contains("form of"), "{ip}: {range}");
        }
        assert!(!is_denied("::ffff:8.8.8.8"));
        assert!(!is_denied("64:ff9b::8.8.8.8"));
    }

    #[test]
    fn metadata_endpoints_are_named() {
        let (_, what) = denied("169.254.169.254".parse().unwrap(), &AddressPolicy::default()).unwrap();
        assert!(what.contains("metadata"));
        let (_, what) = denied("fd00:ec2::254".parse().unwrap(), &AddressPolicy::default()).unwrap();
        assert!(what.contains("metadata"));
    }

    #[test]
    fn operator_ranges() {
        let p =
            AddressPolicy::new(&["8.8.8.0/24".into(), "10.1.0.0/16".into()], &["10.0.0.0/8".into(), "fd00::/8".into()])
                .unwrap();
        let d = |ip: &str| denied(ip.parse().unwrap(), &p);
        assert_eq!(d("8.8.8.8").unwrap().1, "denied by --deny-cidr");
        assert!(d("10.2.3.4").is_none(), "--allow-cidr lifts the built-in RFC 1918 denial");
        assert!(d("10.1.2.3").is_some(), "--deny-cidr wins over --allow-cidr");
        assert!(d("::ffff:10.2.3.4").is_none(), "the allowed IPv4 range covers its mapped form");
        assert!(d("fd12::1").is_none());
        assert!(d("127.0.0.1").is_some());
        assert!(AddressPolicy::new(&["nope".into()], &[]).is_err());
        // The cluster's Service range is denied even inside an allowed range.
        let mut p = AddressPolicy::new(&[], &["10.0.0.0/8".into()]).unwrap();
        p.deny_service_cidrs("kubernetes", &["10.96.0.0/16".into(), "fd00:10:96::/112".into(), "junk".into()]);
        let (range, what) = denied("10.96.0.10".parse().unwrap(), &p).unwrap();
        assert_eq!(
            (range.as_str(), what.as_str()),
            ("10.96.0.0/16", "the cluster's Service range, ServiceCIDR kubernetes")
        );
        assert!(denied("fd00:10:96::a".parse().unwrap(), &p).is_some());
        assert!(denied("10.1.2.3".parse().unwrap(), &p).is_none());
        assert_eq!(p.service_cidrs(), ["10.96.0.0/16", "fd00:10:96::/112"]);
        assert_eq!(AddressPolicy::new(&["10.9.9.9".into()], &[]).unwrap().deny[0].to_string(), "10.9.9.9/32");
    }
}
