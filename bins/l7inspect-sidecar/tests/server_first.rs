//! A real server-speaks-first peer behind the sidecar: OpenSSH's `sshd`.
//!
//! The sidecar dials the upstream as soon as it accepts a connection, while
//! detection runs. When the server sends its banner before the client sent
//! anything, detection must end at once (`server_first`) and the banner must
//! reach the client: a silent client has no detection timeout at all, so a
//! proxy that waited for the client would hang here, not pass late.
//!
//! The test starts `sshd -D -e` as a child process on a free loopback port
//! with a generated config and host key, and kills it by PID when done. It
//! needs `/usr/sbin/sshd`, `ssh-keygen` and `ssh` (Debian: `openssh-server`)
//! and the privilege separation directory `/run/sshd` (created if missing,
//! which needs root). Without them it prints `SKIPPED server_first: <reason>`
//! and passes, unless `L7INSPECT_REQUIRE_SSHD=1` (CI) turns the skip into a
//! failure.

use l7inspect_sidecar::{Forward, SidecarConfig, build};
use std::{
    fs,
    net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt},
    net::TcpStream,
    sync::oneshot,
};

const SSHD: &str = "/usr/sbin/sshd";

/// How long sshd may take to accept connections after it was started.
const SSHD_START: Duration = Duration::from_secs(5);

/// The banner must come through the proxy well within this. It is not a
/// performance bound (a loopback banner takes a few milliseconds, most of it
/// sshd's own fork and re-exec): it only turns "the proxy holds the banner
/// back" into a failure instead of a hang, since nothing else would ever end
/// the wait of a client that never speaks.
const BANNER_WITHIN: Duration = Duration::from_millis(500);

/// Bounds on waits that must not hang the test suite if something is broken.
const HANG_GUARD: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sshd_banner_and_key_exchange_pass_through() -> anyhow::Result<()> {
    let sshd = match tokio::task::spawn_blocking(Sshd::start).await? {
        Ok(sshd) => sshd,
        Err(reason) => {
            skip(&reason);
            return Ok(());
        }
    };

    // What sshd says to a client that connects directly: the bytes the
    // proxied client must receive, unchanged.
    let direct_banner = {
        let mut direct = TcpStream::connect(sshd.addr).await?;
        tokio::time::timeout(HANG_GUARD, read_line(&mut direct))
            .await
            .map_err(|_| anyhow::anyhow!("sshd sent no banner to a direct client"))??
    };
    assert!(
        direct_banner.starts_with(b"SSH-2.0-"),
        "unexpected sshd banner {:?}",
        String::from_utf8_lossy(&direct_banner)
    );

    let sidecar = build(SidecarConfig {
        transparent: false,
        admin_listen: vec!["127.0.0.1:0".parse()?],
        inbound_forwards: vec![Forward {
            listen: "127.0.0.1:0".parse()?,
            target: sshd.addr,
        }],
        shutdown_grace: Duration::from_secs(1),
        ..SidecarConfig::default()
    })
    .await?;
    let proxy = sidecar.addrs().inbound_forwards[0].listen;
    let registry = sidecar.registry();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(sidecar.run(async {
        let _ = stopped.await;
    }));

    // A client that connects and says nothing: the banner must arrive anyway.
    let mut client = TcpStream::connect(proxy).await?;
    let banner = tokio::time::timeout(BANNER_WITHIN, read_line(&mut client))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "no SSH banner through the proxy within {BANNER_WITHIN:?} \
                 while the client stayed silent: the proxy holds server-first bytes back"
            )
        })??;
    assert_eq!(
        String::from_utf8_lossy(&banner),
        String::from_utf8_lossy(&direct_banner),
        "the banner must pass through byte for byte"
    );

    // Detection ended before the banner was relayed, so it is counted by now.
    let mut metrics = String::new();
    prometheus_client::encoding::text::encode(&mut metrics, &registry)?;
    let expected =
        r#"l7inspect_protocol_detections_total{direction="inbound",protocol="server_first"} 1"#;
    assert!(
        metrics.lines().any(|l| l == expected),
        "missing {expected:?} in:\n{metrics}"
    );
    drop(client);

    // The real client through the proxy: the whole key exchange must pass
    // byte-exact for it to get as far as a refused authentication. Only the
    // authentication fails: BatchMode allows no password prompt, and
    // `nobody` has no keys sshd would accept.
    let ssh = tokio::process::Command::new("ssh")
        .args(["-F", "/dev/null"])
        .args(["-o", "BatchMode=yes"])
        .args(["-o", "StrictHostKeyChecking=no"])
        .args(["-o", "UserKnownHostsFile=/dev/null"])
        .args(["-o", "IdentityAgent=none"])
        .args(["-o", "ConnectTimeout=10"])
        .args(["-p", &proxy.port().to_string()])
        .args(["nobody@127.0.0.1", "true"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(HANG_GUARD, ssh).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            skip(&format!("cannot run the ssh client: {e}"));
            return Ok(());
        }
        Err(_) => panic!(
            "ssh through the proxy did not finish within {HANG_GUARD:?}; sshd log:\n{}",
            sshd.log()
        ),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(255) && stderr.contains("Permission denied"),
        "ssh through the proxy should fail only at authentication \
         (exit 255, 'Permission denied'); got {:?}\nstderr:\n{stderr}\nsshd log:\n{}",
        out.status,
        sshd.log()
    );
    // OpenSSH's client sends its identification at once: labelled `ssh`.
    let mut metrics = String::new();
    prometheus_client::encoding::text::encode(&mut metrics, &registry)?;
    let expected = r#"l7inspect_protocol_detections_total{direction="inbound",protocol="ssh"} 1"#;
    assert!(
        metrics.lines().any(|l| l == expected),
        "missing {expected:?} in:\n{metrics}"
    );

    let _ = stop.send(());
    tokio::time::timeout(HANG_GUARD, running)
        .await
        .map_err(|_| anyhow::anyhow!("the sidecar did not stop"))??;
    Ok(())
}

/// Reads up to and including the first `\r\n` (an SSH identification line
/// is at most 255 bytes).
async fn read_line(io: &mut (impl AsyncRead + Unpin)) -> anyhow::Result<Vec<u8>> {
    let mut line = Vec::new();
    let mut buf = [0u8; 256];
    while !line.ends_with(b"\r\n") {
        anyhow::ensure!(line.len() <= 255, "no line end in {line:?}");
        let n = io.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "EOF after {:?}", String::from_utf8_lossy(&line));
        line.extend_from_slice(&buf[..n]);
    }
    // sshd sends nothing after its identification until the client sent its
    // own, so the line is all that was read.
    Ok(line)
}

/// Prints the skip, or fails when the environment requires sshd.
fn skip(reason: &str) {
    l7inspect_test_support::skip("server_first", l7inspect_test_support::Need::Sshd, reason);
}

/// An `sshd -D` child process and its temporary directory. Dropping it kills
/// the process (by PID) and removes the directory.
struct Sshd {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Sshd {
    /// Starts sshd on a free loopback port and waits until it accepts
    /// connections. `Err` is the reason to skip.
    fn start() -> Result<Self, String> {
        if !Path::new(SSHD).exists() {
            return Err(format!(
                "{SSHD} not found (install Debian's openssh-server)"
            ));
        }
        // sshd refuses to start without its privilege separation directory.
        fs::create_dir_all("/run/sshd")
            .map_err(|e| format!("cannot create /run/sshd (sshd needs it; run as root): {e}"))?;

        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("server_first-sshd-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let key = dir.join("ssh_host_ed25519_key");
        let keygen = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run ssh-keygen: {e}"))?;
        if !keygen.status.success() {
            return Err(format!(
                "ssh-keygen failed ({}): {}",
                keygen.status,
                String::from_utf8_lossy(&keygen.stderr)
            ));
        }

        // The port is free when we look; another process may take it before
        // sshd binds it, so a start that loses the race is retried.
        let mut last_error = String::new();
        for _ in 0..3 {
            let port = free_port().map_err(|e| format!("no free port: {e}"))?;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let mut child = match Self::spawn(&dir, &key, port) {
                Ok(child) => child,
                Err(e) => {
                    last_error = e;
                    continue;
                }
            };
            match wait_accepting(&mut child, addr, &dir) {
                Ok(()) => return Ok(Sshd { child, addr, dir }),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_error = e;
                }
            }
        }
        let _ = fs::remove_dir_all(&dir);
        Err(last_error)
    }

    fn spawn(dir: &Path, key: &Path, port: u16) -> Result<Child, String> {
        let config = dir.join("sshd_config");
        fs::write(
            &config,
            format!(
                "Port {port}\n\
                 ListenAddress 127.0.0.1\n\
                 PidFile none\n\
                 UsePAM no\n\
                 StrictModes no\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 AuthorizedKeysFile none\n\
                 LogLevel VERBOSE\n"
            ),
        )
        .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
        let log = fs::File::create(dir.join("sshd.log"))
            .map_err(|e| format!("cannot create the sshd log: {e}"))?;
        Command::new(SSHD)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&config)
            .arg("-h")
            .arg(key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {SSHD}: {e}"))
    }

    fn log(&self) -> String {
        read_log(&self.dir)
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // `Child::kill` signals this child's PID (SIGKILL) only; per-session
        // children exit when their connections close.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Connects until sshd accepts, for at most [`SSHD_START`].
fn wait_accepting(child: &mut Child, addr: SocketAddr, dir: &Path) -> Result<(), String> {
    let deadline = Instant::now() + SSHD_START;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("sshd exited with {status}: {}", read_log(dir)));
        }
        if StdStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "sshd did not accept on {addr} within {SSHD_START:?}: {}",
                read_log(dir)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_log(dir: &Path) -> String {
    fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
}

fn free_port() -> std::io::Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
