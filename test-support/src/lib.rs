//! What the workspace's tests share. A dev-dependency only, never
//! published.
//!
//! For now: [`skip`], how a test that cannot run here (no root for a
//! network namespace, no `iptables`, `curl` or `sshd`) says so, the same
//! way everywhere:
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

use std::{fmt::Display, io::Write};

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
