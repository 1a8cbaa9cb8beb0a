//! What the workspace's tests share. A dev-dependency only, never
//! published.
//!
//! - [`skip`] and [`Skip`]: how a test that cannot run here (no root for a
//!   network namespace, no `iptables`, `curl` or `sshd`) says so, the same
//!   way everywhere, visibly even when the harness captures output;
//! - [`collector`]: OTLP/gRPC, OTLP/HTTP and Zipkin receivers on real
//!   sockets, in plaintext or behind TLS, decoding with opentelemetry-proto
//!   and checking Zipkin JSON against the official spec ([`zipkin_spec`]);
//! - [`netns`]: network namespaces, made per test thread or named, and the
//!   commands and processes run in them;
//! - [`pki`]: a CA and the certificates it signs, made per test;
//! - [`browser`]: headless Chromium, a page's DOM after its scripts ran
//!   and screenshots;
//! - bounded waits ([`eventually`], [`wait_for`], [`wait_for_blocking`]),
//!   odd peers ([`silent_server`], [`closed_port`]), temporary directories
//!   ([`TempDir`]) and Prometheus text lookups ([`prom`]).
//!
//! ```
//! use l7inspect_test_support::{Need, skip};
//!
//! fn have_curl() -> bool {
//!     std::process::Command::new("curl").arg("--version").output().is_ok()
//! }
//!
//! if !have_curl() {
//!     skip("my_test", Need::Tools, "curl not found");
//!     return;
//! }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod browser;
pub mod collector;
pub mod netns;
pub mod pki;
pub mod prom;
pub mod zipkin_spec;

pub use netns::output_within;

use std::{fmt::Display, future::Future, io::Write, net::SocketAddr, time::Duration};

/// How long a bounded wait waits before it fails the test: only a bug (a
/// hang) reaches it, so it is generous. Never a timing assertion.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// How often a bounded wait checks again.
const POLL: Duration = Duration::from_millis(10);

/// What a test needs that a machine may lack; each has the variable that
/// makes its absence a failure instead of a skip (CI sets all three).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Root and network namespaces (`unshare -n`), with iptables or
    /// nftables in them: `L7INSPECT_REQUIRE_NETNS=1`.
    Netns,
    /// A tool (curl, nghttp, redis-server...): `L7INSPECT_REQUIRE_TOOLS=1`.
    Tools,
    /// `sshd`: `L7INSPECT_REQUIRE_SSHD=1`.
    Sshd,
}

impl Need {
    /// The variable that, set to `1`, turns the skip into a failure.
    pub fn require_var(self) -> &'static str {
        match self {
            Need::Netns => "L7INSPECT_REQUIRE_NETNS",
            Need::Tools => "L7INSPECT_REQUIRE_TOOLS",
            Need::Sshd => "L7INSPECT_REQUIRE_SSHD",
        }
    }

    /// Whether the environment requires it (its variable is `1`).
    pub fn required(self) -> bool {
        std::env::var(self.require_var()).as_deref() == Ok("1")
    }
}

/// `test` cannot run here because of `reason`. Panics (fails the test)
/// when the environment requires what it needs; otherwise writes
/// `SKIPPED <test>: <reason>` to stderr and returns, and the caller returns
/// too (the test passes without having run).
///
/// The line is written to the process's stderr directly, past the test
/// harness's output capture, which would otherwise keep it out of a
/// passing test's output: a user running `cargo test` without root sees
/// which tests did not run.
pub fn skip(test: &str, need: Need, reason: impl Display) {
    if need.required() {
        panic!("{test} cannot run and {}=1: {reason}", need.require_var());
    }
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "SKIPPED {test}: {reason}");
}

/// Why a test cannot run here, as an error its body returns with `?`;
/// [`Skip::report`] (or [`run_or_skip`]) turns it into a [`skip`].
#[derive(Debug)]
pub struct Skip {
    /// What is missing.
    pub need: Need,
    /// Why, for the SKIPPED line.
    pub reason: String,
}

impl Skip {
    /// No namespace, no root, or no `ip`/iptables/nft.
    pub fn netns(reason: impl Into<String>) -> Self {
        Self {
            need: Need::Netns,
            reason: reason.into(),
        }
    }

    /// A tool is missing.
    pub fn tool(reason: impl Into<String>) -> Self {
        Self {
            need: Need::Tools,
            reason: reason.into(),
        }
    }

    /// Reports the skip of `test` (see [`skip`]).
    pub fn report(self, test: &str) {
        skip(test, self.need, self.reason);
    }
}

/// Runs `body`, reporting a [`Skip`] it returns.
pub fn run_or_skip(test: &str, body: impl FnOnce() -> Result<(), Skip>) {
    if let Err(s) = body() {
        s.report(test);
    }
}

/// `Ok` when `program --version` runs and succeeds, else a [`Skip::tool`]
/// naming the Debian package that has it.
pub fn need_tool(program: &str, package: &str) -> Result<(), Skip> {
    match std::process::Command::new(program)
        .arg("--version")
        .output()
    {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(Skip::tool(format!(
            "`{program} --version` failed ({})",
            out.status
        ))),
        Err(e) => Err(Skip::tool(format!(
            "{program} could not run ({e}; apt-get install -y {package})"
        ))),
    }
}

/// Retries `check` every 10 ms for up to [`PATIENCE`]; true once it holds,
/// false if it never did.
pub async fn eventually<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Retries `f` every 10 ms until it returns something; fails the test
/// naming `what` after [`PATIENCE`].
pub async fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up after {PATIENCE:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// [`wait_for`] for a synchronous test (sleeps the thread).
pub fn wait_for_blocking<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gave up after {PATIENCE:?} waiting for {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// A server on 127.0.0.1 that accepts connections, holds them open, and
/// never reads or answers (a stuck peer), on the caller's runtime.
pub async fn silent_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the silent server");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((io, _)) = listener.accept().await {
            held.push(io);
        }
    });
    addr
}

/// An address on 127.0.0.1 with nothing listening (a dead peer: connecting
/// is refused).
pub fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    listener.local_addr().expect("its address")
}

/// A process a test started, killed (by its PID) and reaped when this
/// drops: a failing test leaves nothing running.
#[derive(Debug)]
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The built example `name` of the workspace, beside the running test's
/// binary (`target/debug/deps/X` → `target/debug/examples/name`): `cargo
/// test` builds the examples of the package whose tests it runs.
pub fn example_bin(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>")
        .join("examples")
        .join(name)
}

/// A fresh directory under the system's temporary directory, removed with
/// what it holds when this drops (certificates and keys a test writes).
#[derive(Debug)]
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    /// A new empty directory whose name starts with `l7inspect-{prefix}-`
    /// and is unique in this machine's run (process id and a counter).
    pub fn new(prefix: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("l7inspect-{prefix}-{}-{n}", std::process::id()));
        // A leftover of an earlier process with the same id.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the temporary directory");
        Self(dir)
    }

    /// Where it is.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
