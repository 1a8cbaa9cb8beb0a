//! The sidecar's network-namespace harness: test-support's
//! [`in_new_netns`] (a thread of its own in a fresh namespace, `lo` up)
//! with a tokio runtime and a log capture on that thread, and an
//! in-process [`Sidecar`].
//!
//! The runtime is current-thread (or its workers are started from the
//! namespaced thread) so that every socket the test opens is in the
//! namespace; commands spawned from it inherit the namespace too.

#![allow(dead_code)] // Each netns test file uses its own subset.

use l7inspect_sidecar::{BoundAddrs, SidecarConfig, build};
use l7inspect_test_support::netns::in_new_netns;
pub use l7inspect_test_support::{Skip, netns::ThreadNetns};
use prometheus_client::registry::Registry;
use std::{
    fmt,
    future::Future,
    io::{self, Write},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};
use tokio::{sync::oneshot, task::JoinHandle};
use tracing_subscriber::fmt::MakeWriter;

/// How long a whole test body may take. Only a bug (a hang) reaches it.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`Sidecar::wait_for_line`] keeps retrying.
pub const EVENTUALLY: Duration = Duration::from_secs(5);

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
    F: FnOnce(ThreadNetns, Logs) -> Fut + Send + 'static,
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
    F: FnOnce(ThreadNetns, Logs) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), Skip>>,
{
    run_on(test, Some(workers), body)
}

fn run_on<F, Fut>(test: &'static str, workers: Option<usize>, body: F)
where
    F: FnOnce(ThreadNetns, Logs) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), Skip>>,
{
    in_new_netns(test, move |ns| {
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
    });
}

// === impl Sidecar ===

impl Sidecar {
    /// Builds the sidecar from `config` and runs it on a task of the test's
    /// runtime until [`stop`](Self::stop).
    pub async fn start(config: SidecarConfig) -> Self {
        Self::run_built(build(config).await.expect("the sidecar binds"))
    }

    /// Runs a sidecar the test built itself (with an added admin route,
    /// say) on a task of the test's runtime until [`stop`](Self::stop).
    pub fn run_built(sidecar: l7inspect_sidecar::Sidecar) -> Self {
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
        self.wait_for(&format!("the line {line:?}"), |text| {
            l7inspect_test_support::prom::has_line(text, line)
        })
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
