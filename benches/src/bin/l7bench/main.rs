//! `l7bench`: the load generator and test servers of the end-to-end
//! benchmark (`benches/e2e/run.py`), for what Debian's tools cannot do.
//!
//! - `serve`: a gRPC unary server (tonic over hyper h2c), a TCP sink and a
//!   server that speaks first (writes a banner on accept, as sshd does),
//!   and an OTLP sink (OTLP/HTTP and OTLP/gRPC exports answered with
//!   success and counted, bodies dropped unread).
//! - `http1`: open-loop HTTP/1.1 load at a fixed rate, timed from each
//!   request's *intended* send time, as wrk2 does (wrk2 is not in Debian):
//!   a stall is counted against every request it delays, not just the one
//!   it hit (no coordinated omission).
//! - `grpc`: gRPC unary calls over h2c, open loop at a fixed rate or closed
//!   loop (saturating); every answer is checked to be `grpc-status: 0`
//!   with the echoed message, not just HTTP 200.
//! - `grpc-stream`: gRPC bidirectional streaming calls, many messages each,
//!   every echo checked (the soak's streaming load).
//! - `bulk`: opaque TCP bulk upload into the sink; bytes per second.
//! - `ttfb`: connect → first byte from the banner server, sequentially.
//!
//! Each load subcommand prints one JSON object on stdout. Everything runs on
//! one current-thread runtime: the benchmark pins the tool to one core.
//!
//! # Layout
//! - `pace`: CLOCK_MONOTONIC nanoseconds and a timerfd-backed sleep.
//! - `stats`: latency samples → percentiles as JSON.
//! - `http1`, `grpc`, `stream`, `tcp`: one module per kind of traffic; `otlp`: the sink.

#![forbid(unsafe_code)]

mod grpc;
mod http1;
mod otlp;
mod pace;
mod stats;
mod stream;
mod tcp;

use clap::{Parser, Subcommand};
use std::net::SocketAddr;

/// Load generator and servers for benches/e2e/run.py.
#[derive(Parser, Debug)]
#[command(name = "l7bench")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the test servers until killed.
    Serve(tcp::ServeArgs),
    /// Open-loop HTTP/1.1 GETs at a fixed rate.
    Http1(http1::Http1Args),
    /// gRPC unary calls, open loop (--rate) or closed loop (--streams).
    Grpc(grpc::GrpcArgs),
    /// gRPC bidirectional streaming calls, every echoed message checked.
    GrpcStream(stream::GrpcStreamArgs),
    /// Opaque TCP bulk upload into a sink.
    Bulk(tcp::BulkArgs),
    /// Time to first byte from a server that speaks first.
    Ttfb(tcp::TtfbArgs),
}

/// The address flag every load subcommand takes.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|e| format!("{s}: {e}"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The runtime is current-thread: this is the thread the pacers run on.
    pace::tighten_timer_slack()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let out = rt.block_on(async move {
        match cli.cmd {
            Cmd::Serve(a) => tcp::serve(a).await.map(|()| serde_json::Value::Null),
            Cmd::Http1(a) => http1::run(a).await,
            Cmd::Grpc(a) => grpc::run(a).await,
            Cmd::GrpcStream(a) => stream::run(a).await,
            Cmd::Bulk(a) => tcp::bulk(a).await,
            Cmd::Ttfb(a) => tcp::ttfb(a).await,
        }
    })?;
    // Dropping the runtime cancels tasks still waiting on a stalled peer.
    rt.shutdown_background();
    if !out.is_null() {
        println!("{out}");
    }
    Ok(())
}
