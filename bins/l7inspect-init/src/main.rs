//! `l7inspect-init`: parses flags (each also an `L7INSPECT_*` environment
//! variable) into an [`InitConfig`], then installs, prints (`--dry-run`) or
//! removes (`--remove`) the nat rules that send a workload's TCP through the
//! sidecar.
//!
//! Exit codes: 0 when the rules are in place (or printed, or removed); 2 for
//! a bad flag or value (one line); 1 when iptables or nft failed (one line
//! naming the program, the failing rule and its stderr).

use clap::{Parser, ValueEnum};
use l7inspect_init::{
    Cidr, Family, InitConfig, PortRange,
    iptables::{self, Flavour, InitError, Tools},
    nft, parse_cidr_list, parse_port_list,
};
use std::process::ExitCode;

/// Sends a workload's TCP through the l7inspect sidecar: nat rules that
/// redirect inbound connections to the inbound port and outbound ones to
/// the outbound port, except the proxy's own.
#[derive(Debug, Parser)]
#[command(name = "l7inspect-init", version, about, long_about = None)]
struct Args {
    /// The sidecar's transparent inbound port.
    #[arg(long, env = "L7INSPECT_INBOUND_PORT", default_value_t = 4143, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    inbound_port: u16,

    /// The sidecar's transparent outbound port.
    #[arg(long, env = "L7INSPECT_OUTBOUND_PORT", default_value_t = 4140, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    outbound_port: u16,

    /// The sidecar's admin port: never redirected inbound.
    #[arg(long, env = "L7INSPECT_ADMIN_PORT", default_value_t = 4191, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    admin_port: u16,

    /// The UID the sidecar runs as: its connections are not redirected.
    #[arg(
        long,
        env = "L7INSPECT_PROXY_UID",
        default_value_t = 2102,
        value_name = "UID"
    )]
    proxy_uid: u32,

    /// Inbound ports not redirected, e.g. 22,8000-8010.
    #[arg(long, env = "L7INSPECT_SKIP_INBOUND_PORTS", value_name = "LIST", value_parser = parse_port_list, default_value = "")]
    skip_inbound_ports: ::std::vec::Vec<PortRange>,

    /// Outbound ports not redirected, e.g. 25,3306.
    #[arg(long, env = "L7INSPECT_SKIP_OUTBOUND_PORTS", value_name = "LIST", value_parser = parse_port_list, default_value = "")]
    skip_outbound_ports: ::std::vec::Vec<PortRange>,

    /// Outbound destinations not redirected, e.g. 169.254.169.254/32,fd00::/8.
    #[arg(long, env = "L7INSPECT_SKIP_OUTBOUND_CIDRS", value_name = "LIST", value_parser = parse_cidr_list, default_value = "")]
    skip_outbound_cidrs: ::std::vec::Vec<Cidr>,

    /// Only these outbound destinations are redirected, e.g. 10.0.0.0/8.
    /// Default: all.
    #[arg(long, env = "L7INSPECT_OUTBOUND_CIDRS", value_name = "LIST", value_parser = parse_cidr_list, default_value = "")]
    outbound_cidrs: ::std::vec::Vec<Cidr>,

    /// Rule backend: iptables (iptables-restore) or native nftables (nft -f).
    /// `auto`: iptables when an iptables-restore is installed, else nft.
    #[arg(long, env = "L7INSPECT_BACKEND", default_value = "auto")]
    backend: Backend,

    /// iptables flavour: from `iptables --version` (auto), or forced.
    #[arg(long, env = "L7INSPECT_IPTABLES_FLAVOUR", default_value = "auto")]
    iptables_flavour: FlavourArg,

    /// IPv6 rules too: `auto` when ip6tables has a nat table.
    #[arg(long, env = "L7INSPECT_IPV6", default_value = "auto")]
    ipv6: Ipv6,

    /// Print the iptables-restore input instead of applying it.
    #[arg(long, env = "L7INSPECT_DRY_RUN")]
    dry_run: bool,

    /// Remove our rules and chains instead of installing them.
    #[arg(long, env = "L7INSPECT_REMOVE")]
    remove: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Backend {
    Auto,
    Iptables,
    Nft,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum FlavourArg {
    Auto,
    Legacy,
    Nft,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Ipv6 {
    Auto,
    True,
    False,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.backend {
        Backend::Iptables => run(&args),
        Backend::Nft => run_nft(&args),
        Backend::Auto => match auto_backend() {
            Ok(Backend::Nft) => run_nft(&args),
            Ok(_) => run(&args),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("l7inspect-init: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--backend auto`: iptables wherever an iptables is installed (the common
/// case, and what other tools on the node most likely use too: the same
/// check that picks its flavour), the native nftables backend on an
/// nft-only system.
fn auto_backend() -> Result<Backend, InitError> {
    if iptables::detect_flavour().is_ok() {
        Ok(Backend::Iptables)
    } else if iptables::exists("nft") {
        Ok(Backend::Nft)
    } else {
        Err(InitError::NoBackend)
    }
}

fn run(args: &Args) -> Result<(), InitError> {
    let cfg = args.config();
    let flavour = match args.iptables_flavour {
        FlavourArg::Auto => iptables::detect_flavour()?,
        FlavourArg::Legacy => Flavour::Legacy,
        FlavourArg::Nft => Flavour::Nft,
    };
    let mut families = vec![iptables::tools(Family::V4, flavour)];
    let v6 = iptables::tools(Family::V6, flavour);
    match args.ipv6 {
        Ipv6::True => families.push(v6),
        // IPv6 only where ip6tables works and the kernel has its nat table.
        Ipv6::Auto if iptables::exists(&v6.restore) && v6.save().is_ok() => families.push(v6),
        Ipv6::Auto | Ipv6::False => {}
    }

    if args.remove {
        for tools in &families {
            if let Some(text) = tools.remove_text()? {
                if args.dry_run {
                    print_text(tools, &text);
                } else {
                    tools.restore(&text)?;
                }
            }
        }
        return Ok(());
    }

    let mut applied: Vec<&Tools> = Vec::new();
    for tools in &families {
        let text = tools.apply_text(&cfg)?;
        if args.dry_run {
            print_text(tools, &text);
            continue;
        }
        if let Err(e) = tools.restore(&text) {
            // No partial set: take out what this run put in.
            for done in applied {
                if let Ok(Some(undo)) = done.remove_text() {
                    let _ = done.restore(&undo);
                }
            }
            return Err(e);
        }
        applied.push(tools);
    }
    Ok(())
}

/// The native nftables backend: both families in one `nft -f` transaction.
fn run_nft(args: &Args) -> Result<(), InitError> {
    let mut families = vec![Family::V4];
    match args.ipv6 {
        Ipv6::True => families.push(Family::V6),
        // IPv6 where the kernel has it.
        Ipv6::Auto if std::path::Path::new("/proc/net/if_inet6").exists() => {
            families.push(Family::V6)
        }
        Ipv6::Auto | Ipv6::False => {}
    }
    let text = if args.remove {
        nft::remove(&families)
    } else {
        nft::apply(&args.config(), &families)
    };
    if args.dry_run {
        println!("# nft -f -");
        print!("{text}");
        Ok(())
    } else {
        nft::run(&text)
    }
}

/// Prints one family's restore input, headed by the command that would
/// read it (a comment line, which iptables-restore ignores too).
fn print_text(tools: &Tools, text: &str) {
    println!("# {}: {} --noflush", tools.family, tools.restore);
    print!("{text}");
}

impl Args {
    fn config(&self) -> InitConfig {
        InitConfig {
            inbound_port: self.inbound_port,
            outbound_port: self.outbound_port,
            admin_port: self.admin_port,
            proxy_uid: self.proxy_uid,
            skip_inbound_ports: self.skip_inbound_ports.clone(),
            skip_outbound_ports: self.skip_outbound_ports.clone(),
            skip_outbound_cidrs: self.skip_outbound_cidrs.clone(),
            outbound_cidrs: self.outbound_cidrs.clone(),
        }
    }
}
