//! The sidecar binary at its descriptor limit: started with `RLIMIT_NOFILE`
//! at 256 (soft and hard, so that it cannot raise it), and given more
//! silent clients than 256 descriptors can hold.
//!
//! It derives a budget of proxied connections from the limit, holds that
//! many, and resets the others at once; `/live`, `/ready` and `/metrics`
//! keep answering all along, `l7inspect_tcp_open_connections` reads the
//! connections held (under `detecting`: none has spoken), and once the
//! clients leave, a normal request is proxied.

use l7inspect_test_support::{KillOnDrop, prom, wait_for};
use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    os::unix::process::CommandExt,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

const BIN: &str = env!("CARGO_BIN_EXE_l7inspect-sidecar");

/// The descriptor limit the sidecar runs under.
const NOFILE: u64 = 256;

/// Silent clients: more than [`NOFILE`] descriptors could proxy.
const CLIENTS: usize = 300;

/// A backend that answers each request head with `200 ok` and closes; a
/// connection that sends nothing is held until its client closes.
async fn backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = conn
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n",
                    )
                    .await;
            });
        }
    });
    addr
}

/// The sidecar, its stderr lines as they come (drained on a thread, so that
/// logging never blocks it), and the fields of its JSON "listening" line.
struct Sidecar {
    _child: KillOnDrop,
    lines: Arc<Mutex<Vec<String>>>,
    forward: SocketAddr,
    admin: SocketAddr,
    budget: usize,
}

impl Sidecar {
    fn start(backend: SocketAddr) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "--no-transparent",
            "--admin-listen",
            "127.0.0.1:0",
            "--inbound-forward",
            &format!("127.0.0.1:0={backend}"),
            "--log-format",
            "json",
            "--log-level",
            "info",
        ])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let limit = rustix::process::Rlimit {
            current: Some(NOFILE),
            maximum: Some(NOFILE),
        };
        // SAFETY: setrlimit(2) is async-signal-safe, and the closure touches
        // nothing else of the parent's.
        unsafe {
            cmd.pre_exec(move || {
                rustix::process::setrlimit(rustix::process::Resource::Nofile, limit)
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = KillOnDrop(cmd.spawn().unwrap());
        let stderr = BufReader::new(child.0.stderr.take().unwrap());
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if line.contains("\"listening\"") {
                    let _ = tx.send(line.clone());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let listening = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no listening line: {:?}", lines.lock().unwrap()));
        let json: serde_json::Value = serde_json::from_str(&listening).unwrap();
        let field = |name: &str| {
            json[name]
                .as_str()
                .unwrap_or_else(|| panic!("{name} in {json}"))
        };
        let forward = field("inbound_forwards").split('=').next().unwrap();
        Self {
            forward: forward.parse().unwrap(),
            admin: field("admin").parse().unwrap(),
            budget: field("max_proxied_connections").parse().unwrap(),
            _child: child,
            lines,
        }
    }

    /// `GET path` on the admin server: the status code and body.
    async fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path).await
    }

    async fn metrics(&self) -> String {
        let (status, body) = self.admin_get("/metrics").await;
        assert_eq!(status, 200, "{body}");
        body
    }

    fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

/// A one-shot HTTP/1.1 GET: the status code and the body.
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut resp = Vec::new();
    c.read_to_end(&mut resp).await.unwrap();
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {resp:?}"));
    let body = resp
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// A client and whether the proxy has closed it yet.
struct Client {
    io: Option<TcpStream>,
    closed: bool,
}

impl Client {
    /// Connects to `addr`; a reset that comes before the connect completes
    /// is the proxy's refusal too.
    async fn connect(addr: SocketAddr) -> Self {
        match TcpStream::connect(addr).await {
            Ok(io) => Self {
                io: Some(io),
                closed: false,
            },
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Self {
                io: None,
                closed: true,
            },
            Err(e) => panic!("connect to {addr}: {e}"),
        }
    }

    /// Looks (without waiting) for the proxy's reset or end of stream.
    fn poll_closed(&mut self) -> bool {
        if let (false, Some(io)) = (self.closed, &self.io) {
            let mut buf = [0; 16];
            self.closed = match io.try_read(&mut buf) {
                Ok(0) => true,
                Ok(_) => panic!("a silent client got bytes"),
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            };
        }
        self.closed
    }
}

fn closed(clients: &mut [Client]) -> usize {
    clients
        .iter_mut()
        .map(Client::poll_closed)
        .filter(|&c| c)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_descriptor_limit_refuses_new_connections_and_keeps_answering_probes() {
    let backend = backend().await;
    let sidecar = Sidecar::start(backend);
    let log = sidecar.log();
    assert!(
        log.contains(&format!("\"soft\":{NOFILE}")) && log.contains(&format!("\"hard\":{NOFILE}")),
        "the limit is logged: {log}"
    );
    let budget = sidecar.budget;
    assert_eq!(budget, l7inspect_sidecar::descriptor_budget(NOFILE));
    assert!(budget < CLIENTS, "{budget}");

    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(Client::connect(sidecar.forward).await);
    }

    // The budget is held, every other client is reset, and the gauge reads
    // the connections held.
    let refused_series =
        r#"l7inspect_connections_refused_total{direction="inbound",reason="descriptors"}"#;
    let detecting = r#"l7inspect_tcp_open_connections{direction="inbound",protocol="detecting"}"#;
    let mut m = String::new();
    for _ in 0..500 {
        m = sidecar.metrics().await;
        if prom::value(&m, refused_series) == Some((CLIENTS - budget) as f64)
            && prom::value(&m, detecting) == Some(budget as f64)
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        prom::value(&m, refused_series),
        Some((CLIENTS - budget) as f64),
        "{m}"
    );
    assert_eq!(prom::value(&m, detecting), Some(budget as f64), "{m}");
    assert_eq!(
        prom::sum(&m, "l7inspect_tcp_open_connections", &[]),
        budget as f64,
        "{m}"
    );
    let fds = prom::value(&m, "process_open_fds").unwrap();
    assert!(fds < NOFILE as f64, "{fds} descriptors open");
    assert_eq!(prom::value(&m, "process_max_fds"), Some(NOFILE as f64));
    wait_for("every refused client to see its reset", || {
        (closed(&mut clients) == CLIENTS - budget).then_some(())
    })
    .await;

    // The probes answer, at the limit, again and again.
    for _ in 0..20 {
        assert_eq!(sidecar.admin_get("/live").await, (200, "live\n".into()));
        assert_eq!(sidecar.admin_get("/ready").await, (200, "ready\n".into()));
        sidecar.metrics().await;
    }

    // One more: refused at once, not left hanging.
    let mut late = Client::connect(sidecar.forward).await;
    wait_for("the late client to be reset", || {
        late.poll_closed().then_some(())
    })
    .await;
    let m = sidecar.metrics().await;
    assert_eq!(
        prom::value(&m, refused_series),
        Some((CLIENTS - budget + 1) as f64),
        "{m}"
    );
    eprintln!(
        "at the limit: {budget} held, {} refused, {fds} descriptors, {} bytes resident",
        CLIENTS - budget + 1,
        prom::value(&m, "process_resident_memory_bytes").unwrap_or(0.0)
    );

    // The clients leave: nothing stays open, and a request goes through.
    drop(clients);
    drop(late);
    let mut m = String::new();
    for _ in 0..500 {
        m = sidecar.metrics().await;
        if prom::sum(&m, "l7inspect_tcp_open_connections", &[]) == 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        prom::sum(&m, "l7inspect_tcp_open_connections", &[]),
        0.0,
        "{m}"
    );
    assert_eq!(http_get(sidecar.forward, "/").await, (200, "ok\n".into()));
    let m = sidecar.metrics().await;
    assert_eq!(
        prom::value(&m, refused_series),
        Some((CLIENTS - budget + 1) as f64),
        "{m}"
    );
    // Refusals were logged, rate-limited: not one line each.
    let log = sidecar.log();
    let lines = log.matches("connection refused").count();
    assert!((1..10).contains(&lines), "{lines} lines:\n{log}");
}
