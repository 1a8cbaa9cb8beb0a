//! gRPC bidirectional streaming load, for the soak
//! (`benches/robustness/soak.py`): long-lived streams that each carry many
//! messages, as a streaming RPC does, rather than one call per stream.
//!
//! `--conns` HTTP/2 connections (h2c, prior knowledge), each with
//! `--streams` calls to [`STREAM_METHOD`] open at once. Each call sends
//! `--rate` messages per second (numbered; a 5-byte gRPC prefix and a prost
//! [`Msg`]) for `--stream-secs`, then half-closes its request stream and
//! expects every message echoed, in order and unchanged, then
//! `grpc-status: 0`; then the next call starts on the same connection, until
//! `--duration` has passed. A message's latency is from its send to its
//! echo. Anything else (a refused connect, a reset stream, a missing or
//! changed echo, a status other than 0) counts as an error, with its kind.

use crate::{
    grpc::{Msg, STREAM_METHOD},
    pace::{now_ns, secs_ns},
    stats::Samples,
};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use clap::Args;
use http::{Request, StatusCode, header};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message as _;
use serde_json::{Map, Value, json};
use std::{
    collections::{BTreeMap, VecDeque},
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};
use tokio::{net::TcpStream, sync::mpsc, task::JoinSet};

#[derive(Args, Debug, Clone)]
pub struct GrpcStreamArgs {
    /// Target, ip:port.
    #[arg(long, value_parser = crate::parse_addr)]
    addr: SocketAddr,
    /// HTTP/2 connections.
    #[arg(long, default_value_t = 2)]
    conns: usize,
    /// Streaming calls open at once on each connection.
    #[arg(long, default_value_t = 4)]
    streams: usize,
    /// Messages per second on each call.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Seconds each call lasts before it half-closes and the next starts.
    #[arg(long, default_value_t = 10.0)]
    stream_secs: f64,
    /// Seconds of load.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds after the run that echoes are still awaited.
    #[arg(long, default_value_t = 5.0)]
    grace: f64,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 64)]
    payload: usize,
}

#[derive(Default)]
struct Tally {
    lat: Samples,
    calls_ok: u64,
    errors: u64,
    unfinished: u64,
    error_kinds: BTreeMap<String, u64>,
}

type Shared = Arc<Mutex<Tally>>;

/// A request body fed from a channel: each item is one framed message;
/// the body ends (the stream half-closes) when the sender is dropped.
struct ChanBody(mpsc::Receiver<Bytes>);

impl Body for ChanBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b))))
    }
}

pub async fn run(args: GrpcStreamArgs) -> anyhow::Result<Value> {
    anyhow::ensure!(
        args.conns > 0 && args.streams > 0,
        "--conns and --streams must be positive"
    );
    anyhow::ensure!(args.rate > 0.0, "--rate must be positive");
    let start = now_ns();
    let end = start + secs_ns(args.duration);
    let hard_end = end + secs_ns(args.grace);
    let tally = Shared::default();
    let mut tasks = JoinSet::new();
    for _ in 0..args.conns {
        let (args, tally) = (args.clone(), tally.clone());
        tasks.spawn(async move {
            // The connection's calls share it: HTTP/2 multiplexes them.
            let shared = connect(args.addr).await.ok();
            let mut calls = JoinSet::new();
            for _ in 0..args.streams {
                let sender = shared.clone();
                calls.spawn(stream_loop(
                    args.clone(),
                    sender,
                    end,
                    hard_end,
                    tally.clone(),
                ));
            }
            while calls.join_next().await.is_some() {}
        });
    }
    while let Some(r) = tasks.join_next().await {
        r?;
    }
    let t = std::mem::take(&mut *tally.lock().expect("no task panicked holding the lock"));
    let mut out = Map::new();
    out.insert("mode".into(), json!("grpc-stream"));
    out.insert("conns".into(), json!(args.conns));
    out.insert("streams".into(), json!(args.streams));
    out.insert("rate_per_stream".into(), json!(args.rate));
    out.insert("duration_s".into(), json!(args.duration));
    out.insert("messages".into(), json!(t.lat.len()));
    out.insert("calls_ok".into(), json!(t.calls_ok));
    out.insert("errors".into(), json!(t.errors));
    out.insert("unfinished".into(), json!(t.unfinished));
    out.insert("error_kinds".into(), json!(t.error_kinds));
    t.lat.report("", &mut out);
    Ok(Value::Object(out))
}

/// One slot of `--streams`: streaming calls one after another until `end`,
/// on the connection's shared sender (after a failure, on a new connection
/// of its own).
async fn stream_loop(
    args: GrpcStreamArgs,
    mut sender: Option<SendRequest<ChanBody>>,
    end: u64,
    hard_end: u64,
    tally: Shared,
) {
    while now_ns() < end {
        let left = Duration::from_nanos(hard_end.saturating_sub(now_ns()));
        let outcome = tokio::time::timeout(left, async {
            if sender.as_ref().is_none_or(|s| s.is_closed()) {
                sender = Some(connect(args.addr).await?);
            }
            let s = sender.as_mut().expect("connected just above");
            s.ready().await.map_err(|e| format!("connection: {e}"))?;
            one_call(s, &args, end, &tally).await
        })
        .await;
        let failed = {
            let mut t = tally.lock().expect("no task panicked holding the lock");
            match outcome {
                Ok(Ok(())) => {
                    t.calls_ok += 1;
                    false
                }
                Ok(Err(why)) => {
                    t.errors += 1;
                    if t.error_kinds.len() < 10 || t.error_kinds.contains_key(&why) {
                        *t.error_kinds.entry(why).or_default() += 1;
                    }
                    true
                }
                Err(_) => {
                    t.unfinished += 1;
                    false
                }
            }
        };
        if failed {
            sender = None;
            // Do not spin on a dead target.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<ChanBody>, String> {
    let io = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = io.set_nodelay(true);
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One streaming call: `--rate` messages per second for `--stream-secs`
/// (or until `end`), each echo checked against what was sent, then the
/// trailers' `grpc-status: 0`.
async fn one_call(
    s: &mut SendRequest<ChanBody>,
    args: &GrpcStreamArgs,
    end: u64,
    tally: &Shared,
) -> Result<(), String> {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let req = Request::post(format!("http://{}{STREAM_METHOD}", args.addr))
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .body(ChanBody(rx))
        .map_err(|e| e.to_string())?;
    // (seq, sent at) of the messages not yet echoed, oldest first.
    let sent: Arc<Mutex<VecDeque<(u64, u64)>>> = Arc::default();
    let stop = end.min(now_ns() + secs_ns(args.stream_secs));
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let payload = vec![b's'; args.payload];
    let writer = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            for seq in 0u64.. {
                tick.tick().await;
                if now_ns() >= stop {
                    break;
                }
                let msg = Msg {
                    seq,
                    payload: payload.clone(),
                };
                let mut frame = BytesMut::with_capacity(5 + msg.encoded_len());
                frame.put_u8(0);
                frame.put_u32(msg.encoded_len() as u32);
                msg.encode(&mut frame).expect("BytesMut grows");
                sent.lock()
                    .expect("no panic holding it")
                    .push_back((seq, now_ns()));
                if tx.send(frame.freeze()).await.is_err() {
                    break;
                }
            }
            // Dropping tx half-closes the request stream.
        })
    };
    let resp = s
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"));
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            writer.abort();
            return Err(e);
        }
    };
    if resp.status() != StatusCode::OK {
        writer.abort();
        return Err(format!("HTTP status {}", resp.status()));
    }
    let head_status = resp.headers().get("grpc-status").cloned();
    let mut body = resp.into_body();
    let mut buf = BytesMut::new();
    let mut status = head_status;
    let mut echoed = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body: {e}"))?;
        let frame = match frame.into_data() {
            Ok(data) => {
                buf.extend_from_slice(&data);
                // Whole messages: a 5-byte prefix (flag, length) and the body.
                while buf.len() >= 5 {
                    let n = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                    if buf.len() < 5 + n {
                        break;
                    }
                    let flag = buf[0];
                    buf.advance(5);
                    let msg = buf.split_to(n);
                    let got = (flag == 0).then(|| Msg::decode(&msg[..]).ok()).flatten();
                    let want = sent.lock().expect("no panic holding it").pop_front();
                    match (got, want) {
                        (Some(m), Some((seq, at)))
                            if m.seq == seq && m.payload.len() == args.payload =>
                        {
                            echoed += 1;
                            tally
                                .lock()
                                .expect("no task panicked holding the lock")
                                .lat
                                .push(now_ns() - at);
                        }
                        _ => {
                            writer.abort();
                            return Err("an echo not the message sent".into());
                        }
                    }
                }
                continue;
            }
            Err(frame) => frame,
        };
        if let Ok(trailers) = frame.into_trailers() {
            status = trailers.get("grpc-status").cloned();
        }
    }
    let _ = writer.await;
    let missing = sent.lock().expect("no panic holding it").len();
    match status {
        Some(v) if v == "0" => {}
        Some(v) => return Err(format!("grpc-status {v:?}")),
        None => return Err("no grpc-status".into()),
    }
    if missing > 0 || !buf.is_empty() {
        return Err(format!("{missing} messages not echoed ({echoed} were)"));
    }
    Ok(())
}
