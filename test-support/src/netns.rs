//! Network namespaces for tests that need real iptables rules, addresses
//! and routes, without touching the machine's own network.
//!
//! A network namespace belongs to a thread, not a process:
//! `unshare(CLONE_NEWNET)` moves only the calling thread, `setns` enters
//! one for the calling thread, and the sockets a thread opens and the
//! programs it spawns stay in its namespace. So:
//!
//! - [`in_new_netns`] runs a test body on a thread of its own in a fresh,
//!   anonymous namespace with `lo` up ([`ThreadNetns`] runs `ip` and
//!   iptables there). Tests may run in parallel and use fixed addresses and
//!   ports. The namespace goes away with the thread.
//! - [`NamedNetns`] (`ip netns add`) is a namespace that several threads
//!   and processes enter, for two "pods" joined by a veth pair; it is
//!   deleted on drop.
//!
//! Without root, namespaces or the tools, the test is skipped with a line
//! saying why ([`Skip::netns`]), or fails under `L7INSPECT_REQUIRE_NETNS=1`.

use crate::{PATIENCE, Skip};
use std::{
    fs::File,
    io::{self, Read},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

/// Runs `body` on a new thread, in a new network namespace with `lo` up,
/// and reports a [`Skip`] it returns (or one for a namespace that cannot be
/// made). A panic in `body` fails the calling test.
pub fn in_new_netns(
    test: &'static str,
    body: impl FnOnce(ThreadNetns) -> Result<(), Skip> + Send + 'static,
) {
    let thread = std::thread::Builder::new()
        .name(test.to_owned())
        .spawn(move || -> Result<(), Skip> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                Skip::netns(format!(
                    "cannot create a network namespace ({e}); needs root or CAP_SYS_ADMIN"
                ))
            })?;
            let ns = ThreadNetns { _private: () };
            ns.ip(&["link", "set", "lo", "up"])?;
            body(ns)
        })
        .expect("spawn the test thread");
    match thread.join() {
        Ok(Ok(())) => {}
        Ok(Err(skip)) => skip.report(test),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// The namespace of the thread [`in_new_netns`] made: runs tools there.
#[derive(Debug)]
pub struct ThreadNetns {
    _private: (),
}

impl ThreadNetns {
    /// Runs `program args...` here and returns its stdout; a missing
    /// program or a failure is a [`Skip::netns`] naming the command and
    /// its stderr.
    pub fn tool(&self, program: &str, args: &[&str]) -> Result<String, Skip> {
        tool(program, args)
    }

    /// Runs `ip args...` here.
    pub fn ip(&self, args: &[&str]) -> Result<(), Skip> {
        tool("ip", args).map(drop)
    }

    /// Runs `iptables args...` (IPv4) here.
    pub fn iptables(&self, args: &[&str]) -> Result<(), Skip> {
        tool("iptables", args).map(drop)
    }

    /// Runs `ip6tables args...` (IPv6) here.
    pub fn ip6tables(&self, args: &[&str]) -> Result<(), Skip> {
        tool("ip6tables", args).map(drop)
    }

    /// Adds `addr` (with its prefix length, e.g. `10.77.0.1/32` or
    /// `fd77::1/128`) to `lo`. IPv6 addresses skip duplicate address
    /// detection, so they are usable at once.
    ///
    /// Addresses on `lo` stand in for a dummy interface, which needs the
    /// `dummy` kernel module that containers often lack. They are local
    /// addresses like any other: REDIRECT rules and the source-address
    /// choice work the same.
    pub fn add_addr(&self, addr: &str) -> Result<(), Skip> {
        if addr.contains(':') {
            self.ip(&["-6", "addr", "add", addr, "dev", "lo", "nodad"])
        } else {
            self.ip(&["addr", "add", addr, "dev", "lo"])
        }
    }

    /// Redirects locally generated TCP connections to `dst` (and from `src`,
    /// if given) to the local port `to_port`: the rule a sidecar's init
    /// container installs, in the nat table's OUTPUT chain. The address
    /// family of `dst` picks iptables or ip6tables.
    ///
    /// REDIRECT in OUTPUT rewrites the destination to `127.0.0.1` (or
    /// `::1`), so the proxy must listen there or on the wildcard address.
    pub fn redirect(&self, src: Option<&str>, dst: SocketAddr, to_port: u16) -> Result<(), Skip> {
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

/// Runs `program args...` in the calling thread's namespace, for at most
/// [`PATIENCE`], and returns its stdout; a missing program, a failure or a
/// hang is a [`Skip::netns`] naming the command and its stderr.
pub fn tool(program: &str, args: &[&str]) -> Result<String, Skip> {
    let shown = || format!("`{program} {}`", args.join(" "));
    let out = output_within(Command::new(program).args(args), PATIENCE).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Skip::netns(format!(
                "{program} not found (apt-get install -y iproute2 iptables nftables)"
            ))
        } else {
            Skip::netns(format!("{} could not run: {e}", shown()))
        }
    })?;
    if !out.status.success() {
        return Err(Skip::netns(format!(
            "{} failed ({}): {}",
            shown(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A named network namespace (`ip netns add`), deleted on drop. Work in it
/// is done on threads that `setns` into it.
#[derive(Debug)]
pub struct NamedNetns {
    name: String,
}

impl NamedNetns {
    /// Creates the namespace `name` (short: it also names files in
    /// `/run/netns`); no root or no `ip` is a [`Skip::netns`].
    pub fn new(name: &str) -> Result<Self, Skip> {
        let out = Command::new("ip")
            .args(["netns", "add", name])
            .output()
            .map_err(|e| {
                Skip::netns(format!(
                    "ip could not run ({e}; apt-get install -y iproute2)"
                ))
            })?;
        if !out.status.success() {
            return Err(Skip::netns(format!(
                "`ip netns add {name}` failed (needs root): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(Self {
            name: name.to_owned(),
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a thread in this namespace and returns what it returns
    /// (a panic in `f` is the caller's).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            let thread = s.spawn(|| {
                let ns = File::open(format!("/run/netns/{}", self.name)).expect("open the netns");
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            });
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Runs `cmd` here to completion (killed after [`PATIENCE`]); failing
    /// to run it at all fails the test.
    pub fn output(&self, cmd: &mut Command) -> Output {
        let what = format!("{cmd:?}");
        self.run(|| output_within(cmd, PATIENCE))
            .unwrap_or_else(|e| panic!("{what} in {}: {e}", self.name))
    }

    /// [`tool`] here.
    pub fn tool(&self, program: &str, args: &[&str]) -> Result<String, Skip> {
        self.run(|| tool(program, args))
    }

    /// Starts `cmd` here, its stdout and stderr going to the file `log`
    /// (printed if the test fails, removed when the [`Proc`] drops).
    pub fn spawn(&self, what: &str, mut cmd: Command, log: &Path) -> Proc {
        let file = File::create(log).expect("create the log file");
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file);
        let child = self
            .run(|| cmd.spawn())
            .unwrap_or_else(|e| panic!("start {what} in {}: {e}", self.name));
        Proc {
            what: what.to_owned(),
            child,
            log: log.to_owned(),
        }
    }

    /// A listener here on the wildcard address (IPv4 and IPv6) and `port`.
    pub fn bind(&self, port: u16) -> TcpListener {
        self.run(|| TcpListener::bind(("::", port)))
            .unwrap_or_else(|e| panic!("bind [::]:{port} in {}: {e}", self.name))
    }

    /// A connection to `addr` made from here, with read and write timeouts
    /// of [`PATIENCE`].
    pub fn connect(&self, addr: &str) -> io::Result<TcpStream> {
        let addr: SocketAddr = addr.parse().expect("a socket address");
        let conn = self.run(|| TcpStream::connect_timeout(&addr, PATIENCE))?;
        conn.set_read_timeout(Some(PATIENCE))?;
        conn.set_write_timeout(Some(PATIENCE))?;
        Ok(conn)
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A process a test started: killed (by its PID) and reaped on drop. If
/// the test is failing, its log is printed first.
#[derive(Debug)]
pub struct Proc {
    what: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Its process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- {} (pid {}) log:\n{log}", self.what, self.child.id());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Runs `cmd` to completion with its output captured, killing it after
/// `limit` (a hang) with an error of kind `TimedOut`.
pub fn output_within(cmd: &mut Command, limit: Duration) -> io::Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(child.stdout.take().map(|r| Box::new(r) as _));
    let stderr = drain(child.stderr.take().map(|r| Box::new(r) as _));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{cmd:?} did not finish within {limit:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    })
}
