//! `examples/http_proxy.rs` as a user runs it: against a local upstream, a
//! request to `/admin` gets the middleware's 403, every response its
//! header, other requests are forwarded, and on SIGINT it drains and prints
//! the request histogram with both statuses.
//!
//! `cargo test` builds the examples; the binary is found beside this test's.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

/// Kills the example by PID if the test fails before it exits.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn example_bin() -> PathBuf {
    // target/debug/deps/http_proxy-HASH -> target/debug/examples/http_proxy
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("examples")
        .join("http_proxy")
}

/// An upstream answering every request on its connection with `200 hello`.
fn upstream() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let resp = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
                        if conn.write_all(resp).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

fn get(proxy: &str, path: &str) -> String {
    let mut c = TcpStream::connect(proxy).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn http_proxy_example_denies_marks_forwards_and_reports() {
    let bin = example_bin();
    assert!(bin.exists(), "{} not built", bin.display());
    let target = upstream();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let child = Command::new(&bin)
        .args([listen.as_str(), &target.to_string()])
        .env("OTEL_TRACES_EXPORTER", "none")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = Guard(child);
    let mut stdout = BufReader::new(guard.0.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(
        line.starts_with(&format!("forwarding {listen} -> ")),
        "{line}"
    );

    let denied = get(&listen, "/admin/users");
    assert!(denied.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{denied}");
    assert!(
        denied.contains("\r\nx-proxy: l7inspect-example\r\n"),
        "{denied}"
    );
    assert!(denied.ends_with("forbidden\n"), "{denied}");
    let forwarded = get(&listen, "/");
    assert!(forwarded.starts_with("HTTP/1.1 200 OK\r\n"), "{forwarded}");
    assert!(
        forwarded.contains("\r\nx-proxy: l7inspect-example\r\n"),
        "{forwarded}"
    );
    assert!(forwarded.ends_with("hello"), "{forwarded}");

    let pid = guard.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let status = guard.0.wait().unwrap();
    assert!(status.success(), "{status}: {rest}");
    for code in ["403", "200"] {
        let series = format!("http_response_status_code=\"{code}\"");
        assert!(
            rest.lines().any(
                |l| l.starts_with("http_server_request_duration_seconds_count")
                    && l.contains(&series)
                    && l.ends_with(" 1")
            ),
            "no {code} in:\n{rest}"
        );
    }
}
