// SPDX-License-Identifier: Apache-2.0
//! Addresses in a node recipe: CIDR subnets, advertise addresses and the
//! control-plane endpoint.

use std::fmt;
use std::net::IpAddr;

use anyhow::{bail, Result};

/// An IP network, `10.244.0.0/16`, compared by its network address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr> {
        let Some((a, p)) = s.trim().split_once('/') else {
            bail!("{s:?} is not a subnet like \"10.244.0.0/16\" (address/prefix)");
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| anyhow::anyhow!("{s:?}: {a:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|n| *n <= max)
            .ok_or_else(|| anyhow::anyhow!("{s:?}: prefix {p:?} is not 0..={max}"))?;
        Ok(Cidr { addr, prefix })
    }

    /// The same network with host bits cleared.
    pub fn network(&self) -> Cidr {
        let addr = match self.addr {
            IpAddr::V4(a) => {
                let m = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.prefix)
                };
                IpAddr::V4((u32::from(a) & m).into())
            }
            IpAddr::V6(a) => {
                let m = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.prefix)
                };
                IpAddr::V6((u128::from(a) & m).into())
            }
        };
        Cidr {
            addr,
            prefix: self.prefix,
        }
    }

    /// Whether two subnets name the same network.
    pub fn same_network(&self, other: &Cidr) -> bool {
        self.network() == other.network()
    }

    pub fn overlaps(&self, other: &Cidr) -> bool {
        if self.addr.is_ipv4() != other.addr.is_ipv4() {
            return false;
        }
        let p = self.prefix.min(other.prefix);
        Cidr {
            addr: self.addr,
            prefix: p,
        }
        .network()
            == Cidr {
                addr: other.addr,
                prefix: p,
            }
            .network()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Checks a pod or service subnet list as kubeadm takes it (comma-separated
/// for dual stack).
pub fn parse_subnets(s: &str) -> Result<Vec<Cidr>> {
    s.split(',').map(|p| Cidr::parse(p.trim())).collect()
}

/// `host:port`, `host` (port 6443), `[v6]:port` or a bare IP.
pub fn check_endpoint(s: &str) -> Result<()> {
    let t = s.trim();
    if t.is_empty() || t.contains("://") || t.contains('/') || t.contains(char::is_whitespace) {
        bail!("{s:?} is not an endpoint like \"10.0.0.10:6443\" or \"api.example.internal:6443\" (no scheme, no path)");
    }
    if t.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = if let Some(rest) = t.strip_prefix('[') {
        let Some((h, p)) = rest.split_once(']') else {
            bail!("{s:?}: unclosed '[' in an IPv6 endpoint")
        };
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            bail!("{s:?}: {h:?} is not an IPv6 address");
        }
        (h.to_string(), p.strip_prefix(':'))
    } else {
        match t.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (t.to_string(), None),
        }
    };
    if let Some(p) = port {
        if p.parse::<u16>().ok().filter(|p| *p > 0).is_none() {
            bail!("{s:?}: port {p:?} is not 1..=65535");
        }
    }
    let host_ok = !host.is_empty()
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if !host_ok && host.parse::<IpAddr>().is_err() {
        bail!("{s:?}: {host:?} is neither an IP address nor a DNS name");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let a = Cidr::parse("10.244.0.0/16").unwrap();
        assert!(a.same_network(&Cidr::parse("10.244.7.1/16").unwrap()));
        assert!(!a.same_network(&Cidr::parse("10.245.0.0/16").unwrap()));
        assert!(!a.same_network(&Cidr::parse("10.244.0.0/17").unwrap()));
        assert!(a.overlaps(&Cidr::parse("10.244.3.0/24").unwrap()));
        assert!(!a.overlaps(&Cidr::parse("10.96.0.0/12").unwrap()));
        assert!(Cidr::parse("fd00::/108").is_ok());
        for bad in ["10.244.0.0", "10.244.0.0/33", "x/16", "10.0.0.0/-1"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_subnets("10.244.0.0/16, fd00::/56").unwrap().len(), 2);
    }

    #[test]
    fn endpoints() {
        for ok in [
            "10.0.0.10:6443",
            "10.0.0.10",
            "api.k8s.internal:6443",
            "cp-1",
            "[fd00::1]:6443",
            "fd00::1",
        ] {
            check_endpoint(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "https://10.0.0.10:6443",
            "10.0.0.10:0",
            "10.0.0.10:99999",
            "",
            "a b:1",
            "-x:6443",
            "[zz]:1",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
    }
}
