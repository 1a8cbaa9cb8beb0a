//! The rule set as `iptables-restore` input: pure functions from an
//! [`InitConfig`] and the current `iptables-save -t nat` text to the exact
//! text the executor pipes into `iptables-restore --noflush`.
//!
//! # The chains (nat table, one set per address family)
//!
//! ```text
//! PREROUTING ─ -p tcp ─▶ L7INSPECT_PREROUTING
//!     skip inbound ports (admin port first) ─▶ RETURN
//!     everything else ─▶ L7INSPECT_INBOUND_REDIRECT ─▶ REDIRECT --to-ports <inbound>
//! OUTPUT ─ -p tcp ─▶ L7INSPECT_OUTPUT
//!     owner uid = proxy uid ─▶ RETURN          (the proxy's own connections)
//!     skip outbound ports / CIDRs ─▶ RETURN
//!     -o lo ! -d 127.0.0.1/32 ─▶ L7INSPECT_OUTBOUND_REDIRECT
//!                                          (the app calling its own pod address)
//!     -o lo ─▶ RETURN                          (other loopback traffic)
//!     -d <include CIDR> (or everything) ─▶ L7INSPECT_OUTBOUND_REDIRECT
//!                                      ─▶ REDIRECT --to-ports <outbound>
//! ```
//!
//! Why the loopback exception is the app's, not the proxy's: linkerd's
//! proxy-init sends the *proxy's* `-o lo ! -d 127.0.0.1/32` connections to
//! the inbound port (its inbound proxy dials the app on localhost). Our
//! sidecar's inbound listener dials the original destination, the pod's own
//! address, which also leaves through `lo`; that rule would send every
//! inbound connection back into the inbound port (refused as a loop). So the
//! proxy UID returns first, and it is the application's call to its own
//! non-loopback address that goes through the outbound port (seen once, as
//! outbound).
//!
//! Why remove-then-add in one transaction: `iptables-restore --noflush`
//! applies a whole table at `COMMIT` or nothing, so re-running the init
//! program replaces our set atomically and a failure leaves the previous
//! state. Declaring a chain (`:L7INSPECT_OUTPUT - [0:0]`) flushes it if it
//! exists, and our jump rules in PREROUTING/OUTPUT are deleted (`-D`) as
//! `iptables-save` printed them before being added again, so other tools'
//! rules in those built-in chains are never touched.

use crate::{Family, InitConfig, PortRange};
use std::fmt::Write as _;

/// The prefix of every chain we own. Jumps to a chain with this prefix from
/// PREROUTING or OUTPUT are ours too.
pub const CHAIN_PREFIX: &str = "L7INSPECT_";
/// The chain PREROUTING jumps to.
pub const PREROUTING_CHAIN: &str = "L7INSPECT_PREROUTING";
/// The chain OUTPUT jumps to.
pub const OUTPUT_CHAIN: &str = "L7INSPECT_OUTPUT";
/// The chain that redirects to the inbound port.
pub const INBOUND_REDIRECT_CHAIN: &str = "L7INSPECT_INBOUND_REDIRECT";
/// The chain that redirects to the outbound port.
pub const OUTBOUND_REDIRECT_CHAIN: &str = "L7INSPECT_OUTBOUND_REDIRECT";
/// Every chain we create, in the order they are declared.
pub const CHAINS: [&str; 4] = [
    PREROUTING_CHAIN,
    INBOUND_REDIRECT_CHAIN,
    OUTPUT_CHAIN,
    OUTBOUND_REDIRECT_CHAIN,
];
/// The start of every rule comment: `iptables-save | grep l7inspect` finds
/// them all.
pub const COMMENT_PREFIX: &str = "l7inspect:";

/// What of ours is already in a nat table, read from `iptables-save -t nat`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Existing {
    /// Our chains that exist (names starting with [`CHAIN_PREFIX`]).
    pub chains: Vec<String>,
    /// Rules in the built-in chains that jump to one of our chains, as
    /// `iptables-save` printed them (`-A PREROUTING ... -j L7INSPECT_...`).
    pub jumps: Vec<String>,
}

/// Reads what of ours is in `save`, the output of `iptables-save -t nat`
/// (other tables, if present, are ignored).
pub fn parse_existing(save: &str) -> Existing {
    let mut existing = Existing::default();
    let mut in_nat = false;
    for line in save.lines().map(str::trim_end) {
        if let Some(table) = line.strip_prefix('*') {
            in_nat = table == "nat";
            continue;
        }
        if !in_nat {
            continue;
        }
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            if name.starts_with(CHAIN_PREFIX) {
                existing.chains.push(name.to_owned());
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let chain = rule.split_whitespace().next().unwrap_or_default();
            let ours = chain.starts_with(CHAIN_PREFIX);
            let jumps_to_ours = rule
                .split_whitespace()
                .collect::<Vec<_>>()
                .windows(2)
                .any(|w| (w[0] == "-j" || w[0] == "-g") && w[1].starts_with(CHAIN_PREFIX));
            if !ours && jumps_to_ours {
                existing.jumps.push(line.to_owned());
            }
        }
    }
    existing
}

/// The `iptables-restore --noflush` input that installs our rules for
/// `family`, replacing whatever of ours `existing` holds.
pub fn apply(cfg: &InitConfig, family: Family, existing: &Existing) -> String {
    let mut out = String::from("*nat\n");
    for chain in CHAINS {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    // Chains of ours that this version no longer creates (a rename): flushed
    // by declaring them, deleted after the jumps to them are gone.
    let stale: Vec<&String> = existing
        .chains
        .iter()
        .filter(|c| !CHAINS.contains(&c.as_str()))
        .collect();
    for chain in &stale {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    delete_jumps(&mut out, existing);
    for chain in stale {
        let _ = writeln!(out, "-X {chain}");
    }

    let rule = |out: &mut String, chain: &str, spec: &str, comment: &str, target: &str| {
        let _ = writeln!(
            out,
            "-A {chain} {spec}-m comment --comment \"{COMMENT_PREFIX} {comment}\" -j {target}"
        );
    };

    rule(
        &mut out,
        "PREROUTING",
        "-p tcp ",
        "inbound TCP to the sidecar",
        PREROUTING_CHAIN,
    );
    rule(
        &mut out,
        "OUTPUT",
        "-p tcp ",
        "outbound TCP to the sidecar",
        OUTPUT_CHAIN,
    );

    // Inbound.
    for ports in cfg.inbound_skips() {
        rule(
            &mut out,
            PREROUTING_CHAIN,
            &format!("-p tcp -m tcp --dport {} ", ports.iptables()),
            &format!("skip inbound port {ports}"),
            "RETURN",
        );
    }
    rule(
        &mut out,
        PREROUTING_CHAIN,
        "-p tcp ",
        "redirect inbound",
        INBOUND_REDIRECT_CHAIN,
    );
    rule(
        &mut out,
        INBOUND_REDIRECT_CHAIN,
        "-p tcp ",
        &format!("to inbound port {}", cfg.inbound_port),
        &format!("REDIRECT --to-ports {}", cfg.inbound_port),
    );

    // Outbound.
    rule(
        &mut out,
        OUTPUT_CHAIN,
        &format!("-m owner --uid-owner {} ", cfg.proxy_uid),
        &format!("skip the proxy uid {}", cfg.proxy_uid),
        "RETURN",
    );
    for ports in &cfg.skip_outbound_ports {
        rule(
            &mut out,
            OUTPUT_CHAIN,
            &format!("-p tcp -m tcp --dport {} ", ports.iptables()),
            &format!("skip outbound port {ports}"),
            "RETURN",
        );
    }
    for cidr in cfg
        .skip_outbound_cidrs
        .iter()
        .filter(|c| c.family() == family)
    {
        rule(
            &mut out,
            OUTPUT_CHAIN,
            &format!("-d {cidr} "),
            &format!("skip outbound CIDR {cidr}"),
            "RETURN",
        );
    }
    let loopback = match family {
        Family::V4 => "127.0.0.1/32",
        Family::V6 => "::1/128",
    };
    rule(
        &mut out,
        OUTPUT_CHAIN,
        &format!("! -d {loopback} -o lo "),
        "redirect the app calling its own non-loopback address",
        OUTBOUND_REDIRECT_CHAIN,
    );
    rule(
        &mut out,
        OUTPUT_CHAIN,
        "-o lo ",
        "skip other loopback traffic",
        "RETURN",
    );
    if cfg.outbound_cidrs.is_empty() {
        rule(
            &mut out,
            OUTPUT_CHAIN,
            "",
            "redirect outbound",
            OUTBOUND_REDIRECT_CHAIN,
        );
    } else {
        // An include list without a CIDR of this family captures nothing of
        // this family but the app's calls to its own address.
        for cidr in cfg.outbound_cidrs.iter().filter(|c| c.family() == family) {
            rule(
                &mut out,
                OUTPUT_CHAIN,
                &format!("-d {cidr} "),
                &format!("redirect outbound CIDR {cidr}"),
                OUTBOUND_REDIRECT_CHAIN,
            );
        }
    }
    rule(
        &mut out,
        OUTBOUND_REDIRECT_CHAIN,
        "-p tcp ",
        &format!("to outbound port {}", cfg.outbound_port),
        &format!("REDIRECT --to-ports {}", cfg.outbound_port),
    );
    out.push_str("COMMIT\n");
    out
}

/// The `iptables-restore --noflush` input that removes everything of ours
/// that `existing` holds, or `None` when there is nothing to remove.
pub fn remove(existing: &Existing) -> Option<String> {
    if existing.chains.is_empty() && existing.jumps.is_empty() {
        return None;
    }
    let mut out = String::from("*nat\n");
    // Declaring flushes, so no chain of ours is referenced when deleted.
    for chain in &existing.chains {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    delete_jumps(&mut out, existing);
    for chain in &existing.chains {
        let _ = writeln!(out, "-X {chain}");
    }
    out.push_str("COMMIT\n");
    Some(out)
}

/// `-D` for each of our jump rules, spelled as `iptables-save` printed it.
fn delete_jumps(out: &mut String, existing: &Existing) {
    for jump in &existing.jumps {
        if let Some(rest) = jump.strip_prefix("-A ") {
            let _ = writeln!(out, "-D {rest}");
        }
    }
}

// === impl PortRange ===

impl PortRange {
    /// The `--dport` argument: `80` or `5000:5010`.
    fn iptables(&self) -> String {
        if self.start == self.end {
            self.start.to_string()
        } else {
            format!("{}:{}", self.start, self.end)
        }
    }
}

// === impl InitConfig ===

impl InitConfig {
    /// The inbound skip list with the admin port first (once).
    pub(crate) fn inbound_skips(&self) -> Vec<PortRange> {
        let admin = PortRange::single(self.admin_port);
        std::iter::once(admin)
            .chain(
                self.skip_inbound_ports
                    .iter()
                    .copied()
                    .filter(|p| *p != admin),
            )
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cidr;

    fn ports(s: &str) -> Vec<PortRange> {
        crate::parse_port_list(s).unwrap()
    }

    fn cidrs(s: &str) -> Vec<Cidr> {
        crate::parse_cidr_list(s).unwrap()
    }

    const DEFAULT_V4: &str = r#"*nat
:L7INSPECT_PREROUTING - [0:0]
:L7INSPECT_INBOUND_REDIRECT - [0:0]
:L7INSPECT_OUTPUT - [0:0]
:L7INSPECT_OUTBOUND_REDIRECT - [0:0]
-A PREROUTING -p tcp -m comment --comment "l7inspect: inbound TCP to the sidecar" -j L7INSPECT_PREROUTING
-A OUTPUT -p tcp -m comment --comment "l7inspect: outbound TCP to the sidecar" -j L7INSPECT_OUTPUT
-A L7INSPECT_PREROUTING -p tcp -m tcp --dport 4191 -m comment --comment "l7inspect: skip inbound port 4191" -j RETURN
-A L7INSPECT_PREROUTING -p tcp -m comment --comment "l7inspect: redirect inbound" -j L7INSPECT_INBOUND_REDIRECT
-A L7INSPECT_INBOUND_REDIRECT -p tcp -m comment --comment "l7inspect: to inbound port 4143" -j REDIRECT --to-ports 4143
-A L7INSPECT_OUTPUT -m owner --uid-owner 2102 -m comment --comment "l7inspect: skip the proxy uid 2102" -j RETURN
-A L7INSPECT_OUTPUT ! -d 127.0.0.1/32 -o lo -m comment --comment "l7inspect: redirect the app calling its own non-loopback address" -j L7INSPECT_OUTBOUND_REDIRECT
-A L7INSPECT_OUTPUT -o lo -m comment --comment "l7inspect: skip other loopback traffic" -j RETURN
-A L7INSPECT_OUTPUT -m comment --comment "l7inspect: redirect outbound" -j L7INSPECT_OUTBOUND_REDIRECT
-A L7INSPECT_OUTBOUND_REDIRECT -p tcp -m comment --comment "l7inspect: to outbound port 4140" -j REDIRECT --to-ports 4140
COMMIT
"#;

    #[test]
    fn default_config_ipv4() {
        let text = apply(&InitConfig::default(), Family::V4, &Existing::default());
        assert_eq!(text, DEFAULT_V4);
    }

    #[test]
    fn default_config_ipv6_uses_ipv6_loopback() {
        let text = apply(&InitConfig::default(), Family::V6, &Existing::default());
        assert_eq!(
            text,
            DEFAULT_V4.replace("! -d 127.0.0.1/32 -o lo", "! -d ::1/128 -o lo")
        );
    }

    #[test]
    fn every_rule_carries_our_comment() {
        let cfg = InitConfig {
            skip_inbound_ports: ports("22,8000-8010"),
            skip_outbound_ports: ports("25"),
            skip_outbound_cidrs: cidrs("10.0.0.0/8,fd00::/8"),
            outbound_cidrs: cidrs("10.96.0.0/12"),
            ..InitConfig::default()
        };
        for family in [Family::V4, Family::V6] {
            let text = apply(&cfg, family, &Existing::default());
            for line in text.lines().filter(|l| l.starts_with("-A ")) {
                assert!(
                    line.contains("-m comment --comment \"l7inspect: "),
                    "{line}"
                );
            }
        }
    }

    #[test]
    fn inbound_skip_list_follows_the_admin_port() {
        let cfg = InitConfig {
            skip_inbound_ports: ports("22,4191,8000-8010"),
            ..InitConfig::default()
        };
        let text = apply(&cfg, Family::V4, &Existing::default());
        let skips: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("-A L7INSPECT_PREROUTING") && l.ends_with("RETURN"))
            .collect();
        assert_eq!(
            skips,
            [
                r#"-A L7INSPECT_PREROUTING -p tcp -m tcp --dport 4191 -m comment --comment "l7inspect: skip inbound port 4191" -j RETURN"#,
                r#"-A L7INSPECT_PREROUTING -p tcp -m tcp --dport 22 -m comment --comment "l7inspect: skip inbound port 22" -j RETURN"#,
                r#"-A L7INSPECT_PREROUTING -p tcp -m tcp --dport 8000:8010 -m comment --comment "l7inspect: skip inbound port 8000-8010" -j RETURN"#,
            ]
        );
    }

    #[test]
    fn outbound_port_skips_come_after_the_proxy_uid() {
        let cfg = InitConfig {
            skip_outbound_ports: ports("25,3306-3307"),
            proxy_uid: 1234,
            ..InitConfig::default()
        };
        let text = apply(&cfg, Family::V4, &Existing::default());
        let out: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("-A L7INSPECT_OUTPUT"))
            .take(3)
            .collect();
        assert_eq!(
            out,
            [
                r#"-A L7INSPECT_OUTPUT -m owner --uid-owner 1234 -m comment --comment "l7inspect: skip the proxy uid 1234" -j RETURN"#,
                r#"-A L7INSPECT_OUTPUT -p tcp -m tcp --dport 25 -m comment --comment "l7inspect: skip outbound port 25" -j RETURN"#,
                r#"-A L7INSPECT_OUTPUT -p tcp -m tcp --dport 3306:3307 -m comment --comment "l7inspect: skip outbound port 3306-3307" -j RETURN"#,
            ]
        );
    }

    #[test]
    fn outbound_cidr_skips_are_per_family() {
        let cfg = InitConfig {
            skip_outbound_cidrs: cidrs("169.254.169.254/32,fd00::/8"),
            ..InitConfig::default()
        };
        let v4 = apply(&cfg, Family::V4, &Existing::default());
        let v6 = apply(&cfg, Family::V6, &Existing::default());
        let skip_v4 = r#"-A L7INSPECT_OUTPUT -d 169.254.169.254/32 -m comment --comment "l7inspect: skip outbound CIDR 169.254.169.254/32" -j RETURN"#;
        let skip_v6 = r#"-A L7INSPECT_OUTPUT -d fd00::/8 -m comment --comment "l7inspect: skip outbound CIDR fd00::/8" -j RETURN"#;
        assert!(v4.contains(skip_v4) && !v4.contains("fd00::/8"), "{v4}");
        assert!(v6.contains(skip_v6) && !v6.contains("169.254"), "{v6}");
        // Skips come before the loopback and redirect rules.
        assert!(v4.find(skip_v4) < v4.find("-o lo"));
    }

    #[test]
    fn include_list_replaces_the_catch_all() {
        let cfg = InitConfig {
            outbound_cidrs: cidrs("10.96.0.0/12,10.244.0.0/16"),
            ..InitConfig::default()
        };
        let v4 = apply(&cfg, Family::V4, &Existing::default());
        let redirects: Vec<&str> = v4
            .lines()
            .filter(|l| l.starts_with("-A L7INSPECT_OUTPUT") && !l.contains("-o lo"))
            .filter(|l| l.ends_with("-j L7INSPECT_OUTBOUND_REDIRECT"))
            .collect();
        assert_eq!(
            redirects,
            [
                r#"-A L7INSPECT_OUTPUT -d 10.96.0.0/12 -m comment --comment "l7inspect: redirect outbound CIDR 10.96.0.0/12" -j L7INSPECT_OUTBOUND_REDIRECT"#,
                r#"-A L7INSPECT_OUTPUT -d 10.244.0.0/16 -m comment --comment "l7inspect: redirect outbound CIDR 10.244.0.0/16" -j L7INSPECT_OUTBOUND_REDIRECT"#,
            ]
        );
        // No IPv6 CIDR included: only the app's calls to itself are captured.
        let v6 = apply(&cfg, Family::V6, &Existing::default());
        let v6_redirects = v6
            .lines()
            .filter(|l| l.starts_with("-A L7INSPECT_OUTPUT"))
            .filter(|l| l.ends_with("-j L7INSPECT_OUTBOUND_REDIRECT"))
            .count();
        assert_eq!(v6_redirects, 1, "{v6}");
    }

    const SAVED: &str = r#"# Generated by iptables-save v1.8.9 (nf_tables) on Mon Nov 23 15:00:00 2026
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:L7INSPECT_OUTPUT - [0:0]
:L7INSPECT_OLD - [0:0]
:OTHER_TOOL - [0:0]
-A PREROUTING -p tcp -m comment --comment "l7inspect: inbound TCP to the sidecar" -j L7INSPECT_PREROUTING
-A OUTPUT -d 192.0.2.1/32 -j OTHER_TOOL
-A OUTPUT -p tcp -m comment --comment "l7inspect: outbound TCP to the sidecar" -j L7INSPECT_OUTPUT
-A L7INSPECT_OUTPUT -j RETURN
COMMIT
"#;

    #[test]
    fn parse_existing_finds_our_chains_and_jumps_only() {
        assert_eq!(
            parse_existing(SAVED),
            Existing {
                chains: vec!["L7INSPECT_OUTPUT".into(), "L7INSPECT_OLD".into()],
                jumps: vec![
                    r#"-A PREROUTING -p tcp -m comment --comment "l7inspect: inbound TCP to the sidecar" -j L7INSPECT_PREROUTING"#.into(),
                    r#"-A OUTPUT -p tcp -m comment --comment "l7inspect: outbound TCP to the sidecar" -j L7INSPECT_OUTPUT"#.into(),
                ],
            }
        );
        assert_eq!(
            parse_existing("*filter\n:L7INSPECT_X - [0:0]\nCOMMIT\n"),
            Existing::default()
        );
    }

    #[test]
    fn apply_over_an_existing_set_deletes_the_old_jumps_first() {
        let text = apply(&InitConfig::default(), Family::V4, &parse_existing(SAVED));
        let head: Vec<&str> = text.lines().take(9).collect();
        assert_eq!(
            head,
            [
                "*nat",
                ":L7INSPECT_PREROUTING - [0:0]",
                ":L7INSPECT_INBOUND_REDIRECT - [0:0]",
                ":L7INSPECT_OUTPUT - [0:0]",
                ":L7INSPECT_OUTBOUND_REDIRECT - [0:0]",
                ":L7INSPECT_OLD - [0:0]",
                r#"-D PREROUTING -p tcp -m comment --comment "l7inspect: inbound TCP to the sidecar" -j L7INSPECT_PREROUTING"#,
                r#"-D OUTPUT -p tcp -m comment --comment "l7inspect: outbound TCP to the sidecar" -j L7INSPECT_OUTPUT"#,
                "-X L7INSPECT_OLD",
            ]
        );
        assert!(!text.contains("OTHER_TOOL"));
    }

    #[test]
    fn remove_takes_out_jumps_then_chains() {
        assert_eq!(
            remove(&parse_existing(SAVED)).unwrap(),
            r#"*nat
:L7INSPECT_OUTPUT - [0:0]
:L7INSPECT_OLD - [0:0]
-D PREROUTING -p tcp -m comment --comment "l7inspect: inbound TCP to the sidecar" -j L7INSPECT_PREROUTING
-D OUTPUT -p tcp -m comment --comment "l7inspect: outbound TCP to the sidecar" -j L7INSPECT_OUTPUT
-X L7INSPECT_OUTPUT
-X L7INSPECT_OLD
COMMIT
"#
        );
        assert_eq!(remove(&Existing::default()), None);
    }
}
