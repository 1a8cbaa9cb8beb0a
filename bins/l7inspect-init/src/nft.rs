//! The native nftables backend: the same rule set as [`crate::rules`], as
//! `nft -f` input, in a table of its own per family (`ip l7inspect`,
//! `ip6 l7inspect`), plus the executor that pipes it into `nft -f -`.
//!
//! Why a table of our own: nftables lets several tables hook the same
//! point, so other tools' tables (and iptables-nft's `nat` table) are never
//! touched, and replacing or removing ours is `add table` (so that the
//! delete cannot fail) + `delete table` + the new definition, all in one
//! `nft -f` transaction: both families are committed together or not at all.

use crate::{Family, InitConfig, iptables::InitError};
use std::fmt::Write as _;

/// The name of our table in each family.
pub const TABLE: &str = "l7inspect";

/// The `nft -f` input that installs `cfg` for `families`, replacing any
/// earlier set of ours.
pub fn apply(cfg: &InitConfig, families: &[Family]) -> String {
    let mut out = remove(families);
    for &family in families {
        table(&mut out, cfg, family);
    }
    out
}

/// The `nft -f` input that removes our tables (a no-op where there are
/// none).
pub fn remove(families: &[Family]) -> String {
    let mut out = String::new();
    for &family in families {
        let f = nft_family(family);
        let _ = writeln!(out, "add table {f} {TABLE}");
        let _ = writeln!(out, "delete table {f} {TABLE}");
    }
    out
}

fn nft_family(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

fn table(out: &mut String, cfg: &InitConfig, family: Family) {
    let f = nft_family(family);
    let rule = |out: &mut String, spec: &str, comment: &str| {
        let _ = writeln!(out, "\t\t{spec} comment \"l7inspect: {comment}\"");
    };
    let _ = writeln!(out, "table {f} {TABLE} {{");

    out.push_str(
        "\tchain prerouting {\n\t\ttype nat hook prerouting priority -100; policy accept;\n",
    );
    for ports in cfg.inbound_skips() {
        rule(
            out,
            &format!("tcp dport {ports} return"),
            &format!("skip inbound port {ports}"),
        );
    }
    rule(
        out,
        &format!("meta l4proto tcp redirect to :{}", cfg.inbound_port),
        &format!("redirect inbound to port {}", cfg.inbound_port),
    );
    out.push_str("\t}\n");

    let redirect = format!("meta l4proto tcp redirect to :{}", cfg.outbound_port);
    out.push_str("\tchain output {\n\t\ttype nat hook output priority -100; policy accept;\n");
    rule(
        out,
        &format!("meta skuid {} return", cfg.proxy_uid),
        &format!("skip the proxy uid {}", cfg.proxy_uid),
    );
    for ports in &cfg.skip_outbound_ports {
        rule(
            out,
            &format!("tcp dport {ports} return"),
            &format!("skip outbound port {ports}"),
        );
    }
    for cidr in cfg
        .skip_outbound_cidrs
        .iter()
        .filter(|c| c.family() == family)
    {
        rule(
            out,
            &format!("{f} daddr {cidr} return"),
            &format!("skip outbound CIDR {cidr}"),
        );
    }
    let loopback = match family {
        Family::V4 => "127.0.0.1",
        Family::V6 => "::1",
    };
    rule(
        out,
        &format!("oifname \"lo\" {f} daddr != {loopback} {redirect}"),
        "redirect the app calling its own non-loopback address",
    );
    rule(out, "oifname \"lo\" return", "skip other loopback traffic");
    if cfg.outbound_cidrs.is_empty() {
        rule(
            out,
            &redirect,
            &format!("redirect outbound to port {}", cfg.outbound_port),
        );
    } else {
        for cidr in cfg.outbound_cidrs.iter().filter(|c| c.family() == family) {
            rule(
                out,
                &format!("{f} daddr {cidr} {redirect}"),
                &format!("redirect outbound CIDR {cidr}"),
            );
        }
    }
    out.push_str("\t}\n}\n");
}

/// Pipes `text` into `nft -f -`; one transaction.
pub fn run(text: &str) -> Result<(), InitError> {
    crate::iptables::pipe_into("nft", &["-f", "-"], text, failed_line)
}

/// The line in nft's `/dev/stdin:7:3-20: Error: ...`.
fn failed_line(stderr: &str) -> Option<usize> {
    let rest = &stderr[stderr.find("stdin:")? + "stdin:".len()..];
    rest.split(':').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT_V4: &str = r#"add table ip l7inspect
delete table ip l7inspect
table ip l7inspect {
	chain prerouting {
		type nat hook prerouting priority -100; policy accept;
		tcp dport 4191 return comment "l7inspect: skip inbound port 4191"
		meta l4proto tcp redirect to :4143 comment "l7inspect: redirect inbound to port 4143"
	}
	chain output {
		type nat hook output priority -100; policy accept;
		meta skuid 2102 return comment "l7inspect: skip the proxy uid 2102"
		oifname "lo" ip daddr != 127.0.0.1 meta l4proto tcp redirect to :4140 comment "l7inspect: redirect the app calling its own non-loopback address"
		oifname "lo" return comment "l7inspect: skip other loopback traffic"
		meta l4proto tcp redirect to :4140 comment "l7inspect: redirect outbound to port 4140"
	}
}
"#;

    #[test]
    fn default_config_ipv4() {
        assert_eq!(apply(&InitConfig::default(), &[Family::V4]), DEFAULT_V4);
    }

    #[test]
    fn both_families_in_one_transaction() {
        let text = apply(&InitConfig::default(), &[Family::V4, Family::V6]);
        assert!(text.starts_with(
            "add table ip l7inspect\ndelete table ip l7inspect\nadd table ip6 l7inspect\ndelete table ip6 l7inspect\ntable ip l7inspect {"
        ));
        assert!(text.contains("oifname \"lo\" ip6 daddr != ::1 meta l4proto tcp redirect"));
    }

    #[test]
    fn skip_and_include_lists() {
        let cfg = InitConfig {
            skip_inbound_ports: crate::parse_port_list("22,8000-8010").unwrap(),
            skip_outbound_ports: crate::parse_port_list("25").unwrap(),
            skip_outbound_cidrs: crate::parse_cidr_list("169.254.169.254/32,fd00::/8").unwrap(),
            outbound_cidrs: crate::parse_cidr_list("10.96.0.0/12").unwrap(),
            ..InitConfig::default()
        };
        let v4 = apply(&cfg, &[Family::V4]);
        for line in [
            "\t\ttcp dport 8000-8010 return comment \"l7inspect: skip inbound port 8000-8010\"\n",
            "\t\ttcp dport 25 return comment \"l7inspect: skip outbound port 25\"\n",
            "\t\tip daddr 169.254.169.254/32 return comment \"l7inspect: skip outbound CIDR 169.254.169.254/32\"\n",
            "\t\tip daddr 10.96.0.0/12 meta l4proto tcp redirect to :4140 comment \"l7inspect: redirect outbound CIDR 10.96.0.0/12\"\n",
        ] {
            assert!(v4.contains(line), "{line} not in\n{v4}");
        }
        assert!(!v4.contains("fd00::/8"));
        assert!(!v4.contains("redirect outbound to port"));
    }

    #[test]
    fn remove_is_add_then_delete() {
        assert_eq!(
            remove(&[Family::V4, Family::V6]),
            "add table ip l7inspect\ndelete table ip l7inspect\nadd table ip6 l7inspect\ndelete table ip6 l7inspect\n"
        );
    }

    #[test]
    fn failed_line_numbers() {
        assert_eq!(
            failed_line("/dev/stdin:7:3-20: Error: syntax error"),
            Some(7)
        );
        assert_eq!(failed_line("Operation not permitted"), None);
    }
}
