//! gRPC unary over h2c (prior knowledge): a server, and a load generator
//! that checks every answer.
//!
//! The server is tonic's unary handling (`tonic::server::Grpc` with prost
//! messages, no protoc) on a hyper HTTP/2 connection, as in the sidecar's
//! `tests/grpc.rs`: `/l7bench.Bench/Unary` echoes its request, and
//! `/l7bench.Bench/Stream` (bidirectional streaming, for the soak's
//! `grpc-stream` load in `stream.rs`) echoes each message of its request
//! stream as it arrives and ends with `grpc-status: 0` when the client
//! half-closes.
//!
//! The load generator speaks gRPC's framing itself over hyper's HTTP/2
//! client (a 5-byte prefix, `te: trailers`), so that it is cheap per call
//! and sees exactly what came through the proxy. An answer counts as OK only
//! with HTTP 200, `grpc-status: 0` (in the trailers, or in the head of a
//! trailers-only answer) and the echoed message; other HTTP 200 answers are
//! `grpc_not_ok`, transport and HTTP failures `errors`.
//!
//! - `--rate R`: open loop. Each connection has a schedule of `R / conns`
//!   calls per second and starts each call at its due time whatever the
//!   earlier ones do (HTTP/2 multiplexes them); latency is from the due time.
//! - `--streams M`: closed loop (saturating). `M` calls in flight on each
//!   connection, each started when the one before it ended.

use crate::{
    pace::{Pacer, now_ns, secs_ns},
    stats::Samples,
};
use bytes::{BufMut, Bytes, BytesMut};
use clap::Args;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, client::conn::http2::SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message as _;
use serde_json::{Map, Value, json};
use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinSet,
};
use tonic::{Status, Streaming, server::Grpc};
use tonic_prost::ProstCodec;

/// The one method: echoes its request.
pub const METHOD: &str = "/l7bench.Bench/Unary";

/// The bidirectional streaming method: echoes each message as it comes.
pub const STREAM_METHOD: &str = "/l7bench.Bench/Stream";

/// Request and answer of [`METHOD`] (and each message of [`STREAM_METHOD`]).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Msg {
    /// The client's call number, echoed.
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    /// Opaque bytes, echoed.
    #[prost(bytes = "vec", tag = "2")]
    pub payload: Vec<u8>,
}

#[derive(Args, Debug, Clone)]
pub struct GrpcArgs {
    /// Target, ip:port.
    #[arg(long, value_parser = crate::parse_addr)]
    addr: SocketAddr,
    /// HTTP/2 connections.
    #[arg(long, default_value_t = 8)]
    conns: usize,
    /// Open loop: total calls per second.
    #[arg(long, conflicts_with = "streams", required_unless_present = "streams")]
    rate: Option<f64>,
    /// Closed loop: calls in flight per connection.
    #[arg(long)]
    streams: Option<usize>,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Seconds after the run that answers are still awaited.
    #[arg(long, default_value_t = 5.0)]
    grace: f64,
    /// Payload bytes per request message.
    #[arg(long, default_value_t = 32)]
    payload: usize,
}

/// The run's timeline, in [`now_ns`] nanoseconds.
#[derive(Clone, Copy)]
struct Plan {
    start: u64,
    measure_from: u64,
    end: u64,
    hard_end: u64,
}

#[derive(Default)]
struct Tally {
    lat: Samples,
    errors: u64,
    grpc_not_ok: u64,
    unfinished: u64,
    error_kinds: BTreeMap<String, u64>,
}

type Shared = Arc<Mutex<Tally>>;

/// Why a call did not count as OK.
enum Fail {
    /// Connect, reset, HTTP status other than 200.
    Transport(String),
    /// HTTP 200 but not a gRPC OK with the echoed message.
    NotOk(String),
    /// Still unanswered at the end of the grace period.
    Unfinished,
}

/// What each call needs to build its request.
struct Call {
    uri: http::Uri,
    payload: Vec<u8>,
}

// ---------------------------------------------------------------- server

/// Serves [`METHOD`] on every connection `listener` accepts.
pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
    loop {
        let (io, _) = listener.accept().await?;
        // As tonic's own server does: small messages must not wait on Nagle.
        let _ = io.set_nodelay(true);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(handle);
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(io), svc)
                .await;
        });
    }
}

async fn handle(req: Request<Incoming>) -> Result<Response<tonic::body::Body>, Infallible> {
    let mut grpc = Grpc::new(ProstCodec::<Msg, Msg>::default());
    if req.uri().path() == STREAM_METHOD {
        // The request stream is the answer stream: each message goes back
        // as soon as it is decoded, and the answer ends when the client's
        // stream does (tonic then sends `grpc-status: 0` in the trailers).
        let echo = tower::service_fn(|req: tonic::Request<Streaming<Msg>>| async move {
            Ok::<_, Status>(tonic::Response::new(req.into_inner()))
        });
        return Ok(grpc.streaming(echo, req).await);
    }
    if req.uri().path() != METHOD {
        return Ok(
            Status::unimplemented("l7bench serves /l7bench.Bench/Unary and /Stream only")
                .into_http(),
        );
    }
    let echo = tower::service_fn(|req: tonic::Request<Msg>| async move {
        Ok::<_, Status>(tonic::Response::new(req.into_inner()))
    });
    Ok(grpc.unary(echo, req).await)
}

// ---------------------------------------------------------------- client

pub async fn run(args: GrpcArgs) -> anyhow::Result<Value> {
    anyhow::ensure!(args.conns > 0, "--conns must be positive");
    let start = now_ns() + 10_000_000;
    let measure_from = start + secs_ns(args.warmup);
    let end = measure_from + secs_ns(args.duration);
    let plan = Plan {
        start,
        measure_from,
        end,
        hard_end: end + secs_ns(args.grace),
    };
    let call = Arc::new(Call {
        uri: format!("http://{}{METHOD}", args.addr).parse()?,
        payload: vec![b'x'; args.payload],
    });
    let tally = Shared::default();
    let mut tasks = JoinSet::new();
    for k in 0..args.conns {
        let (call, tally, args) = (call.clone(), tally.clone(), args.clone());
        match args.rate {
            Some(rate) => {
                tasks.spawn(open_loop_conn(args, rate, plan, k, call, tally));
            }
            None => {
                tasks.spawn(closed_loop_conn(args, plan, call, tally));
            }
        }
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let t = std::mem::take(&mut *tally.lock().expect("no task panicked holding the lock"));
    let ok = t.lat.len();
    let mut out = Map::new();
    out.insert(
        "mode".into(),
        json!(if args.rate.is_some() {
            "open-loop"
        } else {
            "closed-loop"
        }),
    );
    out.insert("rate".into(), json!(args.rate));
    out.insert("conns".into(), json!(args.conns));
    out.insert("streams".into(), json!(args.streams));
    out.insert("duration_s".into(), json!(args.duration));
    out.insert("requests".into(), json!(ok));
    out.insert("errors".into(), json!(t.errors));
    out.insert("grpc_not_ok".into(), json!(t.grpc_not_ok));
    out.insert("unfinished".into(), json!(t.unfinished));
    out.insert("rps".into(), json!(ok as f64 / args.duration));
    out.insert("error_kinds".into(), json!(t.error_kinds));
    t.lat.report("", &mut out);
    Ok(Value::Object(out))
}

/// One connection's schedule of `rate / conns` calls per second.
async fn open_loop_conn(
    args: GrpcArgs,
    rate: f64,
    plan: Plan,
    k: usize,
    call: Arc<Call>,
    tally: Shared,
) -> anyhow::Result<()> {
    anyhow::ensure!(rate > 0.0, "--rate must be positive");
    let interval = args.conns as f64 * 1e9 / rate;
    let offset = interval * k as f64 / args.conns as f64;
    let pacer = Pacer::new()?;
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    let mut calls = JoinSet::new();
    for i in 0u64.. {
        let due = plan.start + (offset + i as f64 * interval) as u64;
        if due >= plan.end {
            break;
        }
        pacer.sleep_until(due).await?;
        while calls.try_join_next().is_some() {}
        let measured = due >= plan.measure_from;
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            match until(plan.hard_end, async { connect(args.addr).await }).await {
                Ok(s) => sender = Some(s),
                Err(fail) => {
                    if measured {
                        lock(&tally).record(due, now_ns(), Err(fail));
                    }
                    continue;
                }
            }
        }
        let mut s = sender.clone().expect("connected just above");
        let (call, tally) = (call.clone(), tally.clone());
        calls.spawn(async move {
            let outcome = until(plan.hard_end, async {
                s.ready()
                    .await
                    .map_err(|e| Fail::Transport(format!("connection: {e}")))?;
                unary(&mut s, &call, i).await
            })
            .await;
            if measured {
                lock(&tally).record(due, now_ns(), outcome);
            }
        });
    }
    while calls.join_next().await.is_some() {}
    Ok(())
}

/// One connection with `--streams` calls in flight until the run ends.
async fn closed_loop_conn(
    args: GrpcArgs,
    plan: Plan,
    call: Arc<Call>,
    tally: Shared,
) -> anyhow::Result<()> {
    let streams = args.streams.unwrap_or(1).max(1);
    Pacer::new()?.sleep_until(plan.start).await?;
    let first = until(plan.hard_end, async { connect(args.addr).await }).await;
    let mut loops = JoinSet::new();
    for _ in 0..streams {
        let (call, tally) = (call.clone(), tally.clone());
        let mut sender = match &first {
            Ok(s) => Some(s.clone()),
            Err(_) => None,
        };
        let addr = args.addr;
        loops.spawn(async move {
            let mut seq = 0u64;
            while now_ns() < plan.end {
                seq += 1;
                let sent = now_ns();
                let outcome = until(plan.hard_end, async {
                    if sender.as_ref().is_none_or(|s| s.is_closed()) {
                        sender = Some(connect(addr).await?);
                    }
                    let s = sender.as_mut().expect("connected just above");
                    s.ready()
                        .await
                        .map_err(|e| Fail::Transport(format!("connection: {e}")))?;
                    unary(s, &call, seq).await
                })
                .await;
                let done = now_ns();
                let failed = outcome.is_err();
                if sent >= plan.measure_from && sent < plan.end {
                    lock(&tally).record(sent, done, outcome);
                }
                if failed {
                    // Do not spin on a dead target.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        });
    }
    while loops.join_next().await.is_some() {}
    Ok(())
}

fn lock(tally: &Shared) -> std::sync::MutexGuard<'_, Tally> {
    tally.lock().expect("no task panicked holding the lock")
}

/// Runs `f` until the [`now_ns`] deadline `hard_end`.
async fn until<T, F>(hard_end: u64, f: F) -> Result<T, Fail>
where
    F: Future<Output = Result<T, Fail>>,
{
    let left = Duration::from_nanos(hard_end.saturating_sub(now_ns()));
    tokio::time::timeout(left, f)
        .await
        .unwrap_or(Err(Fail::Unfinished))
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, Fail> {
    let io = TcpStream::connect(addr)
        .await
        .map_err(|e| Fail::Transport(format!("connect: {e}")))?;
    let _ = io.set_nodelay(true);
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .map_err(|e| Fail::Transport(format!("handshake: {e}")))?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One call; Ok only for a gRPC OK answer carrying the echoed message.
async fn unary(s: &mut SendRequest<Full<Bytes>>, call: &Call, seq: u64) -> Result<(), Fail> {
    let msg = Msg {
        seq,
        payload: call.payload.clone(),
    };
    let mut frame = BytesMut::with_capacity(5 + msg.encoded_len());
    frame.put_u8(0);
    frame.put_u32(msg.encoded_len() as u32);
    msg.encode(&mut frame)
        .map_err(|e| Fail::Transport(e.to_string()))?;
    let req = Request::post(call.uri.clone())
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .body(Full::new(frame.freeze()))
        .map_err(|e| Fail::Transport(e.to_string()))?;
    let resp = s
        .send_request(req)
        .await
        .map_err(|e| Fail::Transport(format!("request: {e}")))?;
    let (head, body) = resp.into_parts();
    if head.status != StatusCode::OK {
        return Err(Fail::Transport(format!("HTTP status {}", head.status)));
    }
    let collected = body
        .collect()
        .await
        .map_err(|e| Fail::Transport(format!("body: {e}")))?;
    let status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| head.headers.get("grpc-status"))
        .cloned();
    match status {
        Some(v) if v == "0" => {}
        Some(v) => return Err(Fail::NotOk(format!("grpc-status {v:?}"))),
        None => return Err(Fail::NotOk("no grpc-status".into())),
    }
    let data = collected.to_bytes();
    let echoed = (data.len() >= 5 && data[0] == 0)
        .then(|| u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize)
        .filter(|&n| n == data.len() - 5)
        .and_then(|_| Msg::decode(&data[5..]).ok());
    match echoed {
        Some(m) if m == msg => Ok(()),
        _ => Err(Fail::NotOk(format!(
            "not the echoed message ({} bytes)",
            data.len()
        ))),
    }
}

// === impl Tally ===

impl Tally {
    fn record(&mut self, from: u64, done: u64, outcome: Result<(), Fail>) {
        let why = match outcome {
            Ok(()) => {
                self.lat.push(done - from);
                return;
            }
            Err(Fail::Unfinished) => {
                self.unfinished += 1;
                return;
            }
            Err(Fail::Transport(why)) => {
                self.errors += 1;
                why
            }
            Err(Fail::NotOk(why)) => {
                self.grpc_not_ok += 1;
                why
            }
        };
        if self.error_kinds.len() < 10 || self.error_kinds.contains_key(&why) {
            *self.error_kinds.entry(why).or_default() += 1;
        }
    }
}
