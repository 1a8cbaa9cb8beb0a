//! `l7inspect-init`: installs (and removes) the nat rules that send a
//! workload's TCP through the l7inspect sidecar, with `iptables-restore` or
//! natively with `nft -f`.
//!
//! Configuration is data ([`InitConfig`]); the rule text is a pure function
//! of it ([`rules::apply`], [`rules::remove`]), unit-tested line by line; the
//! [`iptables`] module is the thin shell that reads `iptables-save`, pipes
//! the text into `iptables-restore --noflush` and reports failures.
//!
//! # Layout
//! - [`rules`]: config + current `iptables-save` text → `iptables-restore` input.
//! - [`iptables`]: flavour detection (legacy or nft) and the executor.
//! - [`nft`]: the native nftables backend (`nft -f`), text and executor.
//!
//! # Example
//! ```
//! use l7inspect_init::{Family, InitConfig, rules};
//! let text = rules::apply(&InitConfig::default(), Family::V4, &rules::Existing::default());
//! assert!(text.contains("-j REDIRECT --to-ports 4140"));
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod iptables;
pub mod nft;
pub mod rules;

use std::{fmt, net::IpAddr, str::FromStr};

/// What to redirect where: the plain data the flags parse into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitConfig {
    /// The sidecar's transparent inbound port (PREROUTING redirects here).
    pub inbound_port: u16,
    /// The sidecar's transparent outbound port (OUTPUT redirects here).
    pub outbound_port: u16,
    /// The sidecar's admin port, never redirected inbound.
    pub admin_port: u16,
    /// The UID the sidecar runs as; its connections are never redirected.
    pub proxy_uid: u32,
    /// Inbound destination ports not redirected (besides the admin port).
    pub skip_inbound_ports: Vec<PortRange>,
    /// Outbound destination ports not redirected.
    pub skip_outbound_ports: Vec<PortRange>,
    /// Outbound destinations not redirected.
    pub skip_outbound_cidrs: Vec<Cidr>,
    /// When non-empty, only outbound destinations in these are redirected.
    pub outbound_cidrs: Vec<Cidr>,
}

/// An address family, i.e. which of `iptables` / `ip6tables`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// IPv4: `iptables-restore`.
    V4,
    /// IPv6: `ip6tables-restore`.
    V6,
}

/// An inclusive range of TCP ports; a single port has `start == end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub start: u16,
    /// Last port (inclusive).
    pub end: u16,
}

/// An address with a prefix length, e.g. `10.96.0.0/12` or `fd00::/8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    /// The address as given.
    pub addr: IpAddr,
    /// The prefix length (at most 32 for IPv4, 128 for IPv6).
    pub prefix: u8,
}

/// Parses `22,8000-8010` (blanks around items ignored; empty means none).
pub fn parse_port_list(s: &str) -> Result<Vec<PortRange>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{p:?} is not a port (1-65535)"))
        };
        let range = match part.split_once('-') {
            Some((a, b)) => {
                let (start, end) = (port(a)?, port(b)?);
                if start > end {
                    return Err(format!("range {part:?} is empty"));
                }
                PortRange { start, end }
            }
            None => PortRange::single(port(part)?),
        };
        if !out.contains(&range) {
            out.push(range);
        }
    }
    Ok(out)
}

/// Parses `10.0.0.0/8,fd00::/8,192.0.2.1` (a bare address is a host).
pub fn parse_cidr_list(s: &str) -> Result<Vec<Cidr>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::parse)
        .collect()
}

// === impl InitConfig ===

impl Default for InitConfig {
    fn default() -> Self {
        Self {
            inbound_port: 4143,
            outbound_port: 4140,
            admin_port: 4191,
            proxy_uid: 2102,
            skip_inbound_ports: Vec::new(),
            skip_outbound_ports: Vec::new(),
            skip_outbound_cidrs: Vec::new(),
            outbound_cidrs: Vec::new(),
        }
    }
}

// === impl Family ===

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

// === impl PortRange ===

impl PortRange {
    /// One port.
    pub fn single(port: u16) -> Self {
        Self {
            start: port,
            end: port,
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

// === impl Cidr ===

impl Cidr {
    /// The family of the address.
    pub fn family(&self) -> Family {
        match self.addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0-{max}"))?,
        };
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_lists() {
        assert_eq!(
            parse_port_list(" 22, 8000-8010,22,").unwrap(),
            [
                PortRange::single(22),
                PortRange {
                    start: 8000,
                    end: 8010
                }
            ]
        );
        assert_eq!(parse_port_list("").unwrap(), []);
        assert!(parse_port_list("0").is_err());
        assert!(parse_port_list("70000").is_err());
        assert!(parse_port_list("10-5").is_err());
        assert!(parse_port_list("http").is_err());
    }

    #[test]
    fn cidr_lists() {
        let list = parse_cidr_list("10.0.0.0/8, fd00::/8,192.0.2.1").unwrap();
        let shown: Vec<String> = list.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.0.0/8", "fd00::/8", "192.0.2.1/32"]);
        assert_eq!(list[1].family(), Family::V6);
        assert!(parse_cidr_list("10.0.0.0/33").is_err());
        assert!(parse_cidr_list("fd00::/129").is_err());
        assert!(parse_cidr_list("cluster").is_err());
    }
}
