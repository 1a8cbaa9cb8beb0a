//! Open-loop HTTP/1.1 load, timed from each request's intended send time.
//!
//! Keep-alive mode (the default): `--conns` connections, each with its own
//! fixed schedule of `rate / conns` requests per second, the connections'
//! schedules staggered evenly. HTTP/1.1 has one request in flight per
//! connection, so when a response is late the requests due after it on that
//! connection wait, and each is timed from when it was *due*, not from when
//! it could be sent: one 20 ms stall at 500 req/s per connection shows up as
//! ten slow requests, as a client with its own schedule would see it (wrk2's
//! correction for coordinated omission). `svc_*` are the same requests timed
//! from their actual send (what wrk reports), `late_*` the time from due to
//! sent.
//!
//! `--new-conn`: one schedule of `rate` requests per second, each on a new
//! connection (`Connection: close`) started at its due time whatever the
//! others do; latency includes the connect.
//!
//! Requests due before `--warmup` seconds are sent but not counted. The
//! schedule ends after `--warmup + --duration`; requests still unanswered
//! `--grace` seconds later are counted as `unfinished`.

use crate::{
    pace::{Pacer, now_ns, secs_ns},
    stats::Samples,
};
use bytes::Bytes;
use clap::Args;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::{net::TcpStream, task::JoinSet};

#[derive(Args, Debug, Clone)]
pub struct Http1Args {
    /// Target, ip:port.
    #[arg(long, value_parser = crate::parse_addr)]
    addr: SocketAddr,
    /// Total requests per second.
    #[arg(long)]
    rate: f64,
    /// Keep-alive connections, each paced at rate/conns.
    #[arg(long, default_value_t = 8)]
    conns: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Seconds after the schedule ends that answers are still awaited.
    #[arg(long, default_value_t = 5.0)]
    grace: f64,
    /// A new connection per request (Connection: close); --conns is ignored.
    #[arg(long)]
    new_conn: bool,
    /// --new-conn: most requests in flight; a request due beyond it fails.
    #[arg(long, default_value_t = 1000)]
    max_in_flight: usize,
    #[arg(long, default_value = "bench.local")]
    host: String,
    #[arg(long, default_value = "/")]
    path: String,
    /// Body length every answer must have (default: any non-empty body).
    #[arg(long)]
    expect_len: Option<usize>,
}

/// The run's timeline, in [`now_ns`] nanoseconds.
#[derive(Clone, Copy)]
struct Plan {
    start: u64,
    measure_from: u64,
    end: u64,
    hard_end: u64,
}

/// What all requests add up to.
#[derive(Default)]
struct Tally {
    lat: Samples,
    svc: Samples,
    /// Sent minus due: the pacer's wake-up lateness, plus the wait behind
    /// a slow answer on the same connection.
    late: Samples,
    errors: u64,
    unfinished: u64,
    error_kinds: BTreeMap<String, u64>,
}

type Shared = Arc<Mutex<Tally>>;

pub async fn run(args: Http1Args) -> anyhow::Result<Value> {
    anyhow::ensure!(args.rate > 0.0, "--rate must be positive");
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
    let tally = Shared::default();
    let args = Arc::new(args);
    let mut tasks = JoinSet::new();
    if args.new_conn {
        tasks.spawn(new_conn_schedule(args.clone(), plan, tally.clone()));
    } else {
        for k in 0..args.conns {
            tasks.spawn(keep_alive_conn(args.clone(), plan, k, tally.clone()));
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
        json!(if args.new_conn {
            "new-conn"
        } else {
            "keep-alive"
        }),
    );
    out.insert("rate".into(), json!(args.rate));
    out.insert("conns".into(), json!(args.conns));
    out.insert("duration_s".into(), json!(args.duration));
    out.insert("requests".into(), json!(ok));
    out.insert("errors".into(), json!(t.errors));
    out.insert("unfinished".into(), json!(t.unfinished));
    out.insert("rps".into(), json!(ok as f64 / args.duration));
    out.insert("error_kinds".into(), json!(t.error_kinds));
    t.lat.report("", &mut out);
    t.svc.report("svc_", &mut out);
    t.late.report("late_", &mut out);
    Ok(Value::Object(out))
}

/// One keep-alive connection's schedule: requests in order, one at a time.
async fn keep_alive_conn(
    args: Arc<Http1Args>,
    plan: Plan,
    k: usize,
    tally: Shared,
) -> anyhow::Result<()> {
    let interval = args.conns as f64 * 1e9 / args.rate;
    let offset = interval * k as f64 / args.conns as f64;
    let pacer = Pacer::new()?;
    let mut sender: Option<SendRequest<Empty<Bytes>>> = None;
    for i in 0u64.. {
        let due = plan.start + (offset + i as f64 * interval) as u64;
        if due >= plan.end {
            break;
        }
        pacer.sleep_until(due).await?;
        let measured = due >= plan.measure_from;
        let outcome = until(plan.hard_end, async {
            if sender.is_none() {
                sender = Some(connect(args.addr).await?);
            }
            let s = sender.as_mut().expect("set just above");
            s.ready().await.map_err(|e| format!("connection: {e}"))?;
            let sent = now_ns();
            get(s, &args, false).await?;
            Ok(sent)
        })
        .await;
        let done = now_ns();
        if outcome.is_err() {
            // Reconnect for the next request, as wrk does.
            sender = None;
        }
        if measured {
            tally
                .lock()
                .expect("no task panicked holding the lock")
                .record(due, done, outcome);
        }
    }
    Ok(())
}

/// `--new-conn`: a request on a new connection at each due time.
async fn new_conn_schedule(args: Arc<Http1Args>, plan: Plan, tally: Shared) -> anyhow::Result<()> {
    let interval = 1e9 / args.rate;
    let pacer = Pacer::new()?;
    let mut in_flight = JoinSet::new();
    for i in 0u64.. {
        let due = plan.start + (i as f64 * interval) as u64;
        if due >= plan.end {
            break;
        }
        pacer.sleep_until(due).await?;
        while in_flight.try_join_next().is_some() {}
        let measured = due >= plan.measure_from;
        if in_flight.len() >= args.max_in_flight {
            if measured {
                let err = Err(Outcome::Failed("over --max-in-flight".into()));
                tally
                    .lock()
                    .expect("no task panicked holding the lock")
                    .record(due, now_ns(), err);
            }
            continue;
        }
        let (args, tally) = (args.clone(), tally.clone());
        in_flight.spawn(async move {
            let outcome = until(plan.hard_end, async {
                let sent = now_ns();
                let mut s = connect(args.addr).await?;
                get(&mut s, &args, true).await?;
                Ok(sent)
            })
            .await;
            if measured {
                tally
                    .lock()
                    .expect("no task panicked holding the lock")
                    .record(due, now_ns(), outcome);
            }
        });
    }
    while in_flight.join_next().await.is_some() {}
    Ok(())
}

/// How a request ended when it did not succeed.
enum Outcome {
    Failed(String),
    Unfinished,
}

/// Runs `f` until the [`now_ns`] deadline `hard_end`.
async fn until<F>(hard_end: u64, f: F) -> Result<u64, Outcome>
where
    F: Future<Output = Result<u64, String>>,
{
    let left = Duration::from_nanos(hard_end.saturating_sub(now_ns()));
    match tokio::time::timeout(left, f).await {
        Ok(r) => r.map_err(Outcome::Failed),
        Err(_) => Err(Outcome::Unfinished),
    }
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Empty<Bytes>>, String> {
    let io = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    io.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One GET; Ok when the answer is a 200 with the expected body.
async fn get(
    s: &mut SendRequest<Empty<Bytes>>,
    args: &Http1Args,
    close: bool,
) -> Result<(), String> {
    let mut req = Request::get(args.path.as_str()).header(header::HOST, args.host.as_str());
    if close {
        req = req.header(header::CONNECTION, "close");
    }
    let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
    let resp = s
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    if status != StatusCode::OK {
        return Err(format!("status {status}"));
    }
    match args.expect_len {
        Some(n) if body.len() != n => Err(format!("body of {} bytes, not {n}", body.len())),
        None if body.is_empty() => Err("empty body".into()),
        _ => Ok(()),
    }
}

// === impl Tally ===

impl Tally {
    fn record(&mut self, due: u64, done: u64, outcome: Result<u64, Outcome>) {
        match outcome {
            Ok(sent) => {
                self.lat.push(done - due);
                self.svc.push(done - sent);
                self.late.push(sent.saturating_sub(due));
            }
            Err(Outcome::Unfinished) => self.unfinished += 1,
            Err(Outcome::Failed(why)) => {
                self.errors += 1;
                if self.error_kinds.len() < 10 || self.error_kinds.contains_key(&why) {
                    *self.error_kinds.entry(why).or_default() += 1;
                }
            }
        }
    }
}
