//! Network-namespace harness for tests that need real iptables rules.
//!
//! [`run`] gives a test its own thread in a fresh network namespace, with
//! `lo` up, and runs the test's async body there on a current-thread tokio
//! runtime. Everything the body starts (the sidecar, servers, clients, and
//! the `ip`/`iptables` commands it spawns) lives in that namespace only, so
//! tests may run in parallel and may use fixed addresses and ports.
//!
//! Why a thread of its own: a network namespace belongs to a thread, not a
//! process, and `unshare(CLONE_NEWNET)` moves only the calling thread. The
//! runtime is current-thread so that every socket the test opens is opened
//! on that thread; commands spawned from it inherit its namespace.
//!
//! Where namespaces or iptables are unavailable (not root, no `iptables`
//! binary, no nat table), the test prints `SKIPPED <test>: <reason>` and
//! passes, unless `L7INSPECT_REQUIRE_NETNS=1` is set (CI sets it), which turns
//! the skip into a failure.

#![allow(dead_code)] // Each netns test file uses its own subset.

use l7inspect_sidecar::{BoundAddrs, SidecarConfig, build};
use prometheus_client::registry::Registry;
use std::{
    fmt,
    future::Future,
    io::{self, Write},
    process::Command,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};
use tokio::{sync::oneshot, task::JoinHandle};
use tracing_subscriber::fmt::MakeWriter;

/// How long a whole test body may take. Only a bug (a hang) reaches it.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`Sidecar::wait_for_line`] keeps retrying.
pub const EVENTUALLY: Duration = Duration::from_secs(5);

/// Why a test cannot run here: reported as `SKIPPED`, or as a failure under
/// `L7INSPECT_REQUIRE_NETNS=1`.
#[derive(Debug)]
pub struct Skip(pub String);

/// The namespace a test body runs in: runs `ip` and `iptables` there.
#[derive(Debug)]
pub struct Netns {
    _private: (),
}

/// A sidecar running in-process on the test's runtime.
pub struct Sidecar {
    /// The addresses it bound.
    pub addrs: BoundAddrs,
    registry: Arc<Registry>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

/// The log lines written while a test ran (warn and above, no colours).
#[derive(Clone, Debug, Default)]
pub struct Logs {
    buf: Arc<Mutex<Vec<u8>>>,
}

/// The [`io::Write`] half of [`Logs`].
pub struct LogWriter {
    buf: Arc<Mutex<Vec<u8>>>,
}

/// Runs `body` on a new thread, in a new network namespace with `lo` up, on
/// a current-thread runtime, and fails the calling test if `body` panics or
/// takes longer than [`TEST_TIMEOUT`]. `body` returns `Err(Skip)` when the
/// machine lacks something the test needs.
///
/// The body gets the [`Logs`] that the thread's tracing subscriber writes to.
pub fn run<F, Fut>(test: &'static str, body: F)
where
    F: FnOnce(Netns, Logs) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), Skip>>,
{
    run_on(test, None, body)
}

/// Like [`run`], on a multi-thread runtime with `workers` worker threads,
/// as the sidecar binary runs by default: for races that a current-thread
/// runtime's fixed task order hides. The workers are started from the
/// test's thread after `unshare`, so they share its namespace. [`Logs`]
/// stays empty: the subscriber is the test thread's, not the workers'.
pub fn run_multi_thread<F, Fut>(test: &'static str, workers: usize, body: F)
where
    F: FnOnce(Netns, Logs) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), Skip>>,
{
    run_on(test, Some(workers), body)
}

fn run_on<F, Fut>(test: &'static str, workers: Option<usize>, body: F)
where
    F: FnOnce(Netns, Logs) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), Skip>>,
{
    let thread = std::thread::Builder::new()
        .name(test.to_owned())
        .spawn(move || -> Result<(), Skip> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                Skip(format!(
                    "cannot create a network namespace ({e}); needs root or CAP_SYS_ADMIN"
                ))
            })?;
            let ns = Netns { _private: () };
            ns.ip(&["link", "set", "lo", "up"])?;

            let logs = Logs::default();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(logs.clone())
                .with_ansi(false)
                .with_max_level(tracing::Level::WARN)
                .finish();
            // Thread-local: tests in parallel keep their logs apart, and the
            // current-thread runtime runs every task of the test here.
            let _guard = tracing::subscriber::set_default(subscriber);

            let rt = match workers {
                None => tokio::runtime::Builder::new_current_thread(),
                Some(n) => {
                    let mut b = tokio::runtime::Builder::new_multi_thread();
                    b.worker_threads(n);
                    b
                }
            }
            .enable_all()
            .build()
            .expect("the test runtime");
            rt.block_on(async {
                tokio::time::timeout(TEST_TIMEOUT, body(ns, logs.clone()))
                    .await
                    .unwrap_or_else(|_| {
                        panic!(
                            "{test} did not finish within {TEST_TIMEOUT:?}; logs:\n{}",
                            logs.text()
                        )
                    })
            })
        })
        .expect("spawn the test thread");
    match thread.join() {
        Ok(Ok(())) => {}
        Ok(Err(Skip(reason))) => {
            l7inspect_test_support::skip(test, l7inspect_test_support::Need::Netns, reason);
        }
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Runs `program args...`; a missing program or a failure is a [`Skip`]
/// naming the command and its stderr.
fn command(program: &str, args: &[&str]) -> Result<(), Skip> {
    let shown = || format!("`{program} {}`", args.join(" "));
    let out = Command::new(program).args(args).output().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Skip(format!(
                "{program} not found (apt-get install -y iproute2 iptables)"
            ))
        } else {
            Skip(format!("{} could not run: {e}", shown()))
        }
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Skip(format!(
            "{} failed ({}): {}",
            shown(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

// === impl Netns ===

impl Netns {
    /// Runs `ip args...` in the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<(), Skip> {
        command("ip", args)
    }

    /// Adds `addr` (with its prefix length, e.g. `10.77.0.1/32` or
    /// `fd77::1/128`) to `lo`. IPv6 addresses skip duplicate address
    /// detection, so they are usable at once.
    ///
    /// Addresses on `lo` stand in for a dummy interface, which needs the
    /// `dummy` kernel module that containers often lack. They are local
    /// addresses like any other: the REDIRECT rules and the source-address
    /// choice work the same.
    pub fn add_addr(&self, addr: &str) -> Result<(), Skip> {
        if addr.contains(':') {
            self.ip(&["-6", "addr", "add", addr, "dev", "lo", "nodad"])
        } else {
            self.ip(&["addr", "add", addr, "dev", "lo"])
        }
    }

    /// Runs `iptables args...` (IPv4) in the namespace.
    pub fn iptables(&self, args: &[&str]) -> Result<(), Skip> {
        command("iptables", args)
    }

    /// Runs `ip6tables args...` (IPv6) in the namespace.
    pub fn ip6tables(&self, args: &[&str]) -> Result<(), Skip> {
        command("ip6tables", args)
    }

    /// Redirects locally generated TCP connections to `dst` (and from `src`,
    /// if given) to the local port `to_port`: the rule a sidecar's init
    /// container installs, in the nat table's OUTPUT chain. The address
    /// family of `dst` picks iptables or ip6tables.
    ///
    /// REDIRECT in OUTPUT rewrites the destination to `127.0.0.1` (or
    /// `::1`), so the proxy must listen there or on the wildcard address.
    pub fn redirect(
        &self,
        src: Option<&str>,
        dst: std::net::SocketAddr,
        to_port: u16,
    ) -> Result<(), Skip> {
        let ip = dst.ip().to_string();
        let port = dst.port().to_string();
        let to_port = to_port.to_string();
        let mut args = vec!["-w", "-t", "nat", "-A", "OUTPUT", "-p", "tcp"];
        if let Some(src) = src {
            args.extend(["-s", src]);
        }
        args.extend(["-d", &ip, "--dport", &port]);
        args.extend(["-j", "REDIRECT", "--to-ports", &to_port]);
        if dst.is_ipv6() {
            self.ip6tables(&args)
        } else {
            self.iptables(&args)
        }
    }
}

// === impl Sidecar ===

impl Sidecar {
    /// Builds the sidecar from `config` and runs it on a task of the test's
    /// runtime until [`stop`](Self::stop).
    pub async fn start(config: SidecarConfig) -> Self {
        let sidecar = build(config).await.expect("the sidecar binds");
        let addrs = sidecar.addrs().clone();
        let registry = sidecar.registry();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(sidecar.run(async {
            let _ = stopped.await;
        }));
        Self {
            addrs,
            registry,
            stop: Some(stop),
            task,
        }
    }

    /// The transparent outbound listener's address.
    pub fn outbound(&self) -> std::net::SocketAddr {
        *self
            .addrs
            .outbound
            .first()
            .expect("transparent listeners are on")
    }

    /// The transparent inbound listener's address.
    pub fn inbound(&self) -> std::net::SocketAddr {
        *self
            .addrs
            .inbound
            .first()
            .expect("transparent listeners are on")
    }

    /// The metrics as `/metrics` serves them.
    pub fn metrics(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding into a String cannot fail");
        out
    }

    /// Waits until the metrics contain `line` exactly (a whole line), for at
    /// most [`EVENTUALLY`], and returns them.
    pub async fn wait_for_line(&self, line: &str) -> String {
        self.wait_for(&format!("the line {line:?}"), |text| has_line(text, line))
            .await
    }

    /// Waits until `settled` holds for the metrics, for at most
    /// [`EVENTUALLY`], and returns them; panics naming `what` with the last
    /// metrics seen otherwise. A bounded retry for state that settles on a
    /// proxy task after the client is done (a gauge decremented when the
    /// connection's task ends).
    pub async fn wait_for(&self, what: &str, settled: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + EVENTUALLY;
        loop {
            let text = self.metrics();
            if settled(&text) {
                return text;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("metrics did not show {what} within {EVENTUALLY:?}:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops accepting, drains, and waits for `run` to return.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.expect("the sidecar task panicked");
    }
}

impl fmt::Debug for Sidecar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sidecar")
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

/// Whether `text` has `line` as one of its lines.
pub fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

/// The sum of the samples whose series starts with `prefix` (a metric name,
/// optionally with the first labels: `name{direction="outbound"`).
pub fn sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// === impl Logs ===

impl Logs {
    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap_or_else(PoisonError::into_inner))
            .into_owned()
    }

    /// How many log lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.text().lines().filter(|l| l.contains(needle)).count()
    }
}

impl<'a> MakeWriter<'a> for Logs {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        LogWriter {
            buf: self.buf.clone(),
        }
    }
}

impl Write for LogWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
