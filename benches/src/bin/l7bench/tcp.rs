//! The servers (`serve`; the OTLP sink is in `otlp`), opaque TCP bulk upload (`bulk`) and time to first
//! byte from a server that speaks first (`ttfb`).

use crate::{grpc, otlp, pace::now_ns, stats::Samples};
use clap::Args;
use serde_json::{Map, Value, json};
use std::{
    io::Read,
    net::{SocketAddr, TcpStream as StdTcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinSet,
};

/// Read and write size of the sink and the bulk client.
const CHUNK: usize = 256 * 1024;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// gRPC (h2c) server, ip:port.
    #[arg(long, value_parser = crate::parse_addr)]
    grpc: Option<SocketAddr>,
    /// TCP sink: reads and discards until EOF, ip:port.
    #[arg(long, value_parser = crate::parse_addr)]
    sink: Option<SocketAddr>,
    /// Server that speaks first: writes --banner-text on accept, then reads
    /// and discards until EOF, ip:port.
    #[arg(long, value_parser = crate::parse_addr)]
    banner: Option<SocketAddr>,
    #[arg(long, default_value = "SSH-2.0-l7bench\r\n")]
    banner_text: String,
    /// OTLP sink (OTLP/HTTP and OTLP/gRPC on one port, HTTP/1.1 and h2c):
    /// answers every export with success, counts them; GET /stats, ip:port.
    #[arg(long, value_parser = crate::parse_addr)]
    otlp: Option<SocketAddr>,
}

#[derive(Args, Debug)]
pub struct BulkArgs {
    /// The sink (or a proxy in front of it), ip:port.
    #[arg(long, value_parser = crate::parse_addr)]
    addr: SocketAddr,
    /// Parallel connections, each writing as fast as it can.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
}

#[derive(Args, Debug)]
pub struct TtfbArgs {
    /// The banner server (or a proxy in front of it), ip:port.
    #[arg(long, value_parser = crate::parse_addr)]
    addr: SocketAddr,
    /// Sequential connections; the first 1% are a warm-up and not counted.
    #[arg(long, default_value_t = 2000)]
    count: usize,
    /// The banner every connection must receive, first byte to last.
    #[arg(long, default_value = "SSH-2.0-l7bench\r\n")]
    expect: String,
}

// ---------------------------------------------------------------- serve

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut servers = JoinSet::new();
    if let Some(addr) = args.grpc {
        let l = bind(addr).await?;
        servers.spawn(grpc::serve(l));
    }
    if let Some(addr) = args.sink {
        let l = bind(addr).await?;
        servers.spawn(sink(l));
    }
    if let Some(addr) = args.banner {
        let l = bind(addr).await?;
        servers.spawn(banner(l, args.banner_text.into_bytes()));
    }
    if let Some(addr) = args.otlp {
        let l = bind(addr).await?;
        servers.spawn(otlp::serve(l));
    }
    anyhow::ensure!(
        !servers.is_empty(),
        "nothing to serve: give --grpc, --sink, --banner or --otlp"
    );
    if let Some(r) = servers.join_next().await {
        r??;
    }
    Ok(())
}

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("bind {addr}: {e}"))
}

async fn sink(listener: TcpListener) -> std::io::Result<()> {
    loop {
        let (mut io, _) = listener.accept().await?;
        tokio::spawn(async move {
            let mut buf = vec![0u8; CHUNK];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        });
    }
}

async fn banner(listener: TcpListener, text: Vec<u8>) -> std::io::Result<()> {
    let text: Arc<[u8]> = text.into();
    loop {
        let (mut io, _) = listener.accept().await?;
        let _ = io.set_nodelay(true);
        let text = text.clone();
        tokio::spawn(async move {
            if io.write_all(&text).await.is_err() {
                return;
            }
            let mut buf = [0u8; 4096];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        });
    }
}

// ----------------------------------------------------------------- bulk

/// Bytes written by all streams between the end of the warm-up and the end
/// of the run, per second. Counted at the writer: in steady state the
/// proxies' and sockets' buffers hold as much at the end as at the start
/// of the measurement, so what was written is what went through.
pub async fn bulk(args: BulkArgs) -> anyhow::Result<Value> {
    anyhow::ensure!(args.streams > 0, "--streams must be positive");
    let written = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let mut streams = JoinSet::new();
    for _ in 0..args.streams {
        let mut io = TcpStream::connect(args.addr)
            .await
            .map_err(|e| anyhow::anyhow!("connect {}: {e}", args.addr))?;
        let (written, stop, errors) = (written.clone(), stop.clone(), errors.clone());
        streams.spawn(async move {
            // Bytes that are no known protocol's first flight, so the
            // sidecar's detection gives up on them at once.
            let chunk: Vec<u8> = b"l7bench opaque bulk bytes\n"
                .iter()
                .copied()
                .cycle()
                .take(CHUNK)
                .collect();
            while !stop.load(Ordering::Relaxed) {
                match io.write(&chunk).await {
                    Ok(n) if n > 0 => {
                        written.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    let (b0, t0) = (written.load(Ordering::Relaxed), now_ns());
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    let (b1, t1) = (written.load(Ordering::Relaxed), now_ns());
    stop.store(true, Ordering::Relaxed);
    streams.abort_all();
    let secs = (t1 - t0) as f64 / 1e9;
    let bytes = b1 - b0;
    Ok(json!({
        "streams": args.streams,
        "bytes": bytes,
        "seconds": secs,
        "gib_per_s": bytes as f64 / secs / (1u64 << 30) as f64,
        "errors": errors.load(Ordering::Relaxed),
    }))
}

// ----------------------------------------------------------------- ttfb

/// Connect → first byte, one connection at a time; each must then receive
/// the whole banner. Blocking sockets on a dedicated thread: nothing else
/// runs, and a runtime would only add wake-ups to what is timed.
pub async fn ttfb(args: TtfbArgs) -> anyhow::Result<Value> {
    tokio::task::spawn_blocking(move || ttfb_blocking(args)).await?
}

fn ttfb_blocking(args: TtfbArgs) -> anyhow::Result<Value> {
    let expect = args.expect.as_bytes();
    let warmup = args.count / 100;
    let mut lat = Samples::default();
    let mut errors = 0u64;
    let mut error_kinds = Map::new();
    for i in 0..args.count {
        match one_ttfb(args.addr, expect) {
            Ok(d) if i >= warmup => lat.push(d.as_nanos() as u64),
            Ok(_) => {}
            Err(why) => {
                errors += 1;
                let n = error_kinds.get(&why).and_then(Value::as_u64).unwrap_or(0);
                if error_kinds.len() < 10 || n > 0 {
                    error_kinds.insert(why, json!(n + 1));
                }
            }
        }
    }
    let mut out = Map::new();
    out.insert("connections".into(), json!(lat.len()));
    out.insert("errors".into(), json!(errors));
    out.insert("error_kinds".into(), Value::Object(error_kinds));
    lat.report("", &mut out);
    Ok(Value::Object(out))
}

fn one_ttfb(addr: SocketAddr, expect: &[u8]) -> Result<Duration, String> {
    let t0 = Instant::now();
    let mut io = StdTcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    io.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut got = Vec::with_capacity(expect.len());
    let mut buf = [0u8; 256];
    let mut first = None;
    while got.len() < expect.len() {
        let n = io.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!("EOF after {} bytes", got.len()));
        }
        first.get_or_insert_with(|| t0.elapsed());
        got.extend_from_slice(&buf[..n]);
    }
    if got != expect {
        return Err(format!("banner {:?}", String::from_utf8_lossy(&got)));
    }
    Ok(first.expect("set when the first bytes arrived"))
}
