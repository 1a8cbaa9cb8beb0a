//! `l7inspect-sidecar tls make-ca`: a CA for interception, for development
//! and staging.

use std::{path::PathBuf, process::ExitCode};

/// TLS helpers.
#[derive(Debug, clap::Args)]
pub(crate) struct TlsArgs {
    #[command(subcommand)]
    command: TlsCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TlsCommand {
    MakeCa(MakeCaArgs),
}

/// Write a new CA for --tls-intercept-ca-cert/--tls-intercept-ca-key to
/// DIR/ca.pem and DIR/ca.key (an ECDSA P-256 key, mode 0600).
///
/// For development and staging. Whoever trusts this CA trusts every
/// certificate the sidecar mints with it, for any name: trust it only in
/// the workloads whose traffic you intercept, keep the key as secret as any
/// CA key, and never add it to a machine's or a browser's store. Existing
/// files are not overwritten (exit 1).
#[derive(Debug, clap::Args)]
struct MakeCaArgs {
    /// Where to write ca.pem and ca.key (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// The CA's common name.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "l7inspect interception CA (development)"
    )]
    name: String,
    /// How many days it is valid.
    #[arg(long, value_name = "N", default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
    days: u32,
}

/// Runs `tls ...`; the exit code.
pub(crate) fn run(args: TlsArgs) -> ExitCode {
    match args.command {
        TlsCommand::MakeCa(a) => match l7inspect_tls::make_ca(&a.out, &a.name, a.days) {
            Ok((cert, key)) => {
                eprintln!(
                    "wrote {} and {} (valid {} days); trust ca.pem only in the workloads you intercept",
                    cert.display(),
                    key.display(),
                    a.days
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
