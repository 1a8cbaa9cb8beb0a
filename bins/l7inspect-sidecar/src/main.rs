//! `l7inspect-sidecar`: reads its configuration from the command line and
//! the environment (`cli`), binds, runs until SIGTERM or SIGINT, drains and
//! exits 0.
//!
//! Exit codes: 0 after a clean shutdown; 2 for a bad flag or value (one line
//! naming the flag, the value and why); 1 when a listener cannot be bound or
//! the runtime cannot start (one line naming the address and the OS error).
//!
//! `l7inspect-sidecar inject [FILE]` adds l7inspect to Kubernetes manifests
//! (`cli/inject.rs`): 0 when done (skipped workloads included); 2 for a bad
//! flag, an unreadable file or input that is not YAML (one line naming the
//! file and the error, nothing on stdout); 1 when stdout cannot be written.

mod cli;

use l7inspect_sidecar::Forward;
use std::{net::SocketAddr, process::ExitCode};

fn main() -> ExitCode {
    let (config, threads, log_level, log_limit) = match cli::parse() {
        cli::Invocation::Run {
            config,
            threads,
            log_level,
            log_limit,
        } => (*config, threads, log_level, log_limit),
        cli::Invocation::Done(code) => return code,
    };
    // Before the runtime and the listeners exist: every descriptor they
    // open counts against the limit. Logged once the configuration is known
    // to be good: a bad one gets its one error line and nothing else.
    let nofile = l7inspect_sidecar::raise_nofile_limit();
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.into())
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let max_per_listener = config.limits.max_connections_per_listener;
    let t = &config.tracing;
    let service = t.resource.service_name.clone();
    // As a user writes them: `off` when not exporting.
    let otlp = t.export.otlp.as_ref().map_or_else(
        || "off".to_owned(),
        |o| format!("{} ({})", o.endpoint, o.protocol.as_str()),
    );
    let t_console = t.export.console;
    let zipkin = t
        .export
        .zipkin
        .as_ref()
        .map_or_else(|| "off".to_owned(), |z| z.endpoint.clone());
    runtime.block_on(async move {
        // Summaries of dependencies' log lines dropped by the rate limit.
        tokio::spawn(log_limit.clone().flush_every());
        let sidecar = match l7inspect_sidecar::build(config).await {
            Ok(s) => s.admin_route(move |req: &_| log_level.respond(req)),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        match nofile {
            Ok(l) => tracing::info!(
                soft = l.soft,
                hard = l.hard,
                started_with = l.before,
                "descriptor limit (RLIMIT_NOFILE): the soft limit is the hard one (started_with: the soft limit before)"
            ),
            Err(e) => tracing::warn!("cannot raise the descriptor limit (RLIMIT_NOFILE): {e}"),
        }
        let a = sidecar.addrs();
        let list = |xs: &[SocketAddr]| {
            xs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let forwards = |fs: &[Forward]| {
            fs.iter()
                .map(|f| format!("{}={}", f.listen, f.target))
                .collect::<Vec<_>>()
                .join(",")
        };
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            inbound = %list(&a.inbound),
            outbound = %list(&a.outbound),
            inbound_forwards = %forwards(&a.inbound_forwards),
            outbound_forwards = %forwards(&a.outbound_forwards),
            admin = %list(&a.admin),
            max_connections_per_listener = %match max_per_listener {
                0 => "unlimited".to_owned(),
                n => n.to_string(),
            },
            max_proxied_connections = %sidecar
                .max_proxied_connections()
                .map_or_else(|| "unlimited".to_owned(), |n| n.to_string()),
            "listening"
        );
        tracing::info!(
            service = %service,
            otlp = %otlp,
            zipkin = %zipkin,
            console = %if t_console { "on" } else { "off" },
            "tracing HTTP requests"
        );
        sidecar.run(shutdown_signal()).await;
        log_limit.flush_all();
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; running until killed");
        return std::future::pending().await;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!("received {name}");
}
