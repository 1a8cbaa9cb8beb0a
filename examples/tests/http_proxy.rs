//! `examples/http_proxy.rs` as a user runs it: against a local upstream and
//! an OTLP/gRPC collector (test-support's), a request to `/admin` gets the
//! middleware's 403, every response its header, other requests are
//! forwarded; on SIGINT it drains, exports its spans and prints the request
//! histogram with both statuses. The collector holds a SERVER span per
//! request with its status, and the middleware's `tracing` span under each,
//! in the same trace.
//!
//! `cargo test` builds the examples; the binary is found beside this test's.

use l7inspect_test_support::collector::{Collector, OtlpSpan, Receiver};
use l7inspect_test_support::{KillOnDrop, example_bin};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    time::Duration,
};

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
    let bin = example_bin("http_proxy");
    assert!(bin.exists(), "{} not built", bin.display());
    let target = upstream();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let collector = Collector::start();
    let child = Command::new(&bin)
        .args([listen.as_str(), &target.to_string()])
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            collector.endpoint(Receiver::OtlpGrpc),
        )
        .env("OTEL_SERVICE_NAME", "example-proxy")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = KillOnDrop(child);
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

    // The spans, exported before the example exited.
    let spans = collector.otlp_spans(Receiver::OtlpGrpc);
    for (path, status) in [("/admin/users", 403), ("/", 200)] {
        let request = one(&spans, |s| {
            s.kind() == SpanKind::Server && s.str_attr("url.path") == Some(path)
        });
        assert_eq!(request.service(), Some("example-proxy"));
        assert_eq!(request.span.name, "GET", "{path}");
        assert_eq!(
            request.int_attr("http.response.status_code"),
            Some(status),
            "{path}"
        );
        // The middleware's `tracing` span: a child of the request's span,
        // with a local parent, in its trace.
        let middleware = one(&spans, |s| {
            s.span.name == "deny_admin" && s.str_attr("url.path") == Some(path)
        });
        assert_eq!(middleware.kind(), SpanKind::Internal, "{path}");
        assert_eq!(middleware.trace_id(), request.trace_id(), "{path}");
        assert_eq!(middleware.parent_id(), request.span_id(), "{path}");
        assert!(
            middleware.span.start_time_unix_nano >= request.span.start_time_unix_nano
                && middleware.span.end_time_unix_nano <= request.span.end_time_unix_nano,
            "{path}: the middleware's span is within the request's"
        );
    }
    assert_eq!(spans.len(), 4, "{spans:#?}");
}

/// The one span that `matches`.
fn one(spans: &[OtlpSpan], matches: impl Fn(&OtlpSpan) -> bool) -> &OtlpSpan {
    let found: Vec<&OtlpSpan> = spans.iter().filter(|s| matches(s)).collect();
    assert_eq!(found.len(), 1, "{spans:#?}");
    found[0]
}
