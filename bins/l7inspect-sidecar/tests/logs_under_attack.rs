//! The sidecar binary's log under attack: a bounded number of stderr lines
//! however many connections misbehave, because every warning a peer can
//! trigger is rate-limited (ours where they are written, the dependencies'
//! by the subscriber's per-call-site limit, with summary lines).
//!
//! ```text
//!   hostile clients ──► sidecar binary (inbound forward) ──► hyper backend (h1, h2c)
//!                       └─ second forward ──► a closed port
//!                       stderr ──► counted, line by line (JSON)
//! ```
//!
//! The attack: 10,000 rapid HTTP/2 resets over 100 connections, 5,000 PING
//! acknowledgements never asked for over 5 connections (h2 warns once for
//! each), 200 HTTP/2 handshakes that fail (a SETTINGS frame of a bad size),
//! 200 malformed HTTP/1 requests, 200 connections of random bytes and 200
//! connections whose upstream connect is refused. Before the limits, the
//! PING acknowledgements alone wrote 5,000 lines.
//!
//! To measure another build (e.g. main's) the same way, set
//! `L7INSPECT_LOG_ATTACK_BIN` to its binary: the counts are printed and
//! the bound is not asserted. `L7INSPECT_LOG_ATTACK_SECS=15` adds 15 s of
//! rapid resets on reconnecting connections. Figures: docs/robustness.md.

#[path = "support/h2_raw.rs"]
mod h2_raw;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use l7inspect_test_support::{PATIENCE, closed_port, eventually, wait_for};
use serde_json::Value;
use std::{
    collections::BTreeMap,
    convert::Infallible,
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinSet,
    time::timeout,
};

const BIN: &str = env!("CARGO_BIN_EXE_l7inspect-sidecar");

/// The most lines the sidecar may write for the whole attack, start-up and
/// shutdown included: about 30 for the attack (a burst of 5 and a summary
/// per window for each of h2's warning call sites, one line per 10 s for
/// our own refused connects). A log line per attacking connection would be
/// over 900; one per h2 warning over 5,000.
const MAX_LINES: usize = 100;

/// PING acknowledgements sent, in all.
const PING_ACKS: u32 = 5 * 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_stays_bounded_under_attack() {
    let measure = std::env::var("L7INSPECT_LOG_ATTACK_BIN")
        .ok()
        .filter(|b| !b.is_empty());
    let bin = measure.as_deref().unwrap_or(BIN);
    let mut sidecar = Sidecar::start(bin, backend().await).await;
    let (proxy, dead) = (sidecar.forwards[0], sidecar.forwards[1]);
    assert_eq!(get(proxy, "/before").await.as_deref(), Some("ok"));

    // Rapid resets: 100 connections of 100 requests, each cancelled at once.
    attack(100, move |_| async move {
        hostile(proxy, &h2_raw::rapid_reset(100)).await
    })
    .await;
    // PING acknowledgements the server never asked for.
    attack(
        5,
        move |_| async move { ping_acks(proxy, PING_ACKS / 5).await },
    )
    .await;
    // HTTP/2 handshakes that fail: a SETTINGS frame of 5 bytes.
    attack(200, move |_| async move {
        let mut bytes = h2_raw::PREFACE.to_vec();
        bytes.extend(h2_raw::frame(h2_raw::SETTINGS, 0, 0, &[0; 5]));
        hostile(proxy, &bytes).await
    })
    .await;
    // Malformed HTTP/1 requests.
    attack(200, move |i| async move {
        let req = format!("GET /{i} HTTP/1.1\r\nHost: a\r\nContent-Length: x{i}\r\n\r\n");
        hostile(proxy, req.as_bytes()).await
    })
    .await;
    // Random bytes.
    attack(200, move |i| async move {
        hostile(proxy, &noise(i as u64, 512)).await
    })
    .await;
    // Connections whose upstream connect is refused.
    attack(200, move |_| async move {
        hostile(
            dead,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await
    })
    .await;

    // A sustained attack, for measuring: rapid resets on reconnecting
    // connections for `L7INSPECT_LOG_ATTACK_SECS` more seconds.
    let secs: u64 = std::env::var("L7INSPECT_LOG_ATTACK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let start = std::time::Instant::now();
    while start.elapsed().as_secs() < secs {
        attack(25, move |_| async move {
            hostile(proxy, &h2_raw::rapid_reset(100)).await
        })
        .await;
    }

    // Still serving.
    assert_eq!(get(proxy, "/after").await.as_deref(), Some("ok"));
    sidecar.stop().await;

    let lines = sidecar.stderr.all();
    let events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| Value::String(l.clone())))
        .collect();
    let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
    for e in &events {
        let kind = format!(
            "{} {}: {}",
            e["level"].as_str().unwrap_or("?"),
            e["target"].as_str().unwrap_or("?"),
            e["message"]
                .as_str()
                .unwrap_or("(not JSON)")
                .chars()
                .take(60)
                .collect::<String>()
        );
        *by_kind.entry(kind).or_default() += 1;
    }
    eprintln!("{bin}: {} stderr lines", lines.len());
    for (kind, n) in &by_kind {
        eprintln!("{n:>6}  {kind}");
    }
    if measure.is_some() {
        return;
    }

    // A sustained attack adds a burst and a summary per 10 s window.
    let max = MAX_LINES + 6 * (secs as usize / 10 + 1);
    assert!(
        lines.len() <= max,
        "{} lines, more than {max}:\n{}",
        lines.len(),
        lines.join("\n")
    );
    // Nothing lost from the count: each PING acknowledgement was either
    // logged or counted in a summary.
    let from_ping_pong = |e: &&Value| e["target"] == "h2::proto::ping_pong";
    let logged = events.iter().filter(from_ping_pong).count() as u64;
    let summarised: u64 = events
        .iter()
        .filter(|e| e["source"] == "h2::proto::ping_pong")
        .map(|e| e["suppressed"].as_u64().unwrap())
        .sum();
    assert_eq!(
        logged + summarised,
        u64::from(PING_ACKS),
        "{}",
        lines.join("\n")
    );
    assert!(logged > 0 && summarised > 0, "{}", lines.join("\n"));
    let summary = events
        .iter()
        .find(|e| e["source"] == "h2::proto::ping_pong")
        .unwrap();
    assert_eq!(summary["level"], "WARN");
    assert_eq!(summary["target"], "l7inspect_sidecar::log");
    let message = summary["message"].as_str().unwrap();
    assert!(
        message.ends_with("similar messages from h2::proto::ping_pong suppressed"),
        "{message}"
    );
}

/// `n` hostile connections, at most 25 at a time.
async fn attack<F, Fut>(n: usize, one: F)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut running = JoinSet::new();
    for i in 0..n {
        if running.len() == 25 {
            running.join_next().await.unwrap().unwrap();
        }
        running.spawn(one(i));
    }
    while let Some(done) = running.join_next().await {
        done.unwrap();
    }
}

/// Connects to `addr`, sends `bytes` and reads whatever comes back until
/// the sidecar closes the connection (or resets it): each of these attacks
/// is one the sidecar ends. Bounded: a sidecar that never closes fails the
/// test. (The client does not half-close: the sidecar's HTTP/1 server takes
/// a client's EOF for the end of the connection.)
async fn hostile(addr: SocketAddr, bytes: &[u8]) {
    let Ok(mut conn) = TcpStream::connect(addr).await else {
        return;
    };
    let exchange = async {
        if conn.write_all(bytes).await.is_err() {
            return;
        }
        let mut buf = [0; 16 * 1024];
        while let Ok(n) = conn.read(&mut buf).await
            && n > 0
        {}
    };
    timeout(PATIENCE, exchange)
        .await
        .expect("the sidecar closes a hostile connection");
}

/// `n` PING acknowledgements the sidecar never asked for on one HTTP/2
/// connection (it keeps the connection: they are legal, if odd), then a
/// PING of its own: once its acknowledgement is back, the sidecar has read
/// every frame before it.
async fn ping_acks(addr: SocketAddr, n: u32) {
    const MARK: [u8; 8] = *b"last one";
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let mut bytes = h2_raw::unsolicited_ping_acks(n);
    bytes.extend(h2_raw::frame(h2_raw::PING, 0, 0, &MARK));
    let exchange = async {
        conn.write_all(&bytes).await.unwrap();
        loop {
            let mut head = [0; 9];
            conn.read_exact(&mut head).await.unwrap();
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0; len];
            conn.read_exact(&mut payload).await.unwrap();
            if head[3] == h2_raw::PING && head[4] & h2_raw::ACK != 0 && payload == MARK {
                break;
            }
        }
    };
    timeout(PATIENCE, exchange)
        .await
        .expect("the acknowledgement of the last PING");
}

/// `len` bytes of a fixed pseudo-random sequence (xorshift), seeded by
/// `seed`: the same garbage on every run.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A hyper backend (HTTP/1 and h2c) on 127.0.0.1 answering `ok`.
async fn backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            let svc = hyper::service::service_fn(|_: http::Request<Incoming>| async {
                Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
            });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(io), svc)
                    .await;
            });
        }
    });
    addr
}

/// `GET path` over HTTP/1.1 on a new connection to `addr`: the body of a
/// 200, else `None`.
async fn get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut conn = TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    conn.write_all(req.as_bytes()).await.ok()?;
    let mut resp = Vec::new();
    timeout(PATIENCE, conn.read_to_end(&mut resp))
        .await
        .ok()?
        .ok()?;
    let resp = String::from_utf8(resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200 ").then(|| body.to_owned())
}

/// The sidecar binary with two inbound forwards (to the backend, and to a
/// closed port), JSON logs at the default level; killed on drop.
struct Sidecar {
    child: Child,
    stderr: Lines,
    forwards: Vec<SocketAddr>,
}

impl Sidecar {
    async fn start(bin: &str, backend: SocketAddr) -> Self {
        let mut cmd = Command::new(bin);
        cmd.args(["--no-transparent", "--admin-listen", "127.0.0.1:0"])
            .args(["--inbound-forward", &format!("127.0.0.1:0={backend}")])
            .args([
                "--inbound-forward",
                &format!("127.0.0.1:0={}", closed_port()),
            ])
            .args(["--log-format", "json"])
            .env_remove("RUST_LOG")
            .env_remove("L7INSPECT_LOG_LEVEL");
        for (var, _) in std::env::vars().filter(|(k, _)| k.starts_with("OTEL_")) {
            cmd.env_remove(var);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin}: {e}"));
        let stderr = Lines::read(child.stderr.take().unwrap());
        let listening: Value = wait_for("the sidecar's \"listening\" line", || {
            stderr.all().iter().find_map(|l| {
                let v: Value = serde_json::from_str(l).ok()?;
                (v["message"] == "listening").then_some(v)
            })
        })
        .await;
        let forwards = listening["inbound_forwards"]
            .as_str()
            .unwrap()
            .split(',')
            .map(|f| f.split('=').next().unwrap().parse().unwrap())
            .collect();
        Self {
            child,
            stderr,
            forwards,
        }
    }

    /// SIGTERM, then waits (bounded) for the exit and the end of stderr.
    async fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success(), "kill -TERM {pid}");
        let child = &mut self.child;
        let exit = wait_for("the sidecar to exit", || child.try_wait().unwrap()).await;
        assert!(exit.success(), "{exit}");
        let closed = self.stderr.closed.clone();
        assert!(eventually(|| async { closed.load(Ordering::Acquire) }).await);
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- sidecar stderr:\n{}", self.stderr.all().join("\n"));
        }
    }
}

/// The lines of a pipe, read on a thread as they come.
#[derive(Clone, Default)]
struct Lines {
    lines: Arc<Mutex<Vec<String>>>,
    /// Set at the end of the pipe.
    closed: Arc<AtomicBool>,
}

impl Lines {
    fn read(pipe: impl std::io::Read + Send + 'static) -> Self {
        let lines = Self::default();
        let store = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                store.lines.lock().unwrap().push(line);
            }
            store.closed.store(true, Ordering::Release);
        });
        lines
    }

    fn all(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}
