//! Strict HTTP/1 framing and the proxy's own error bodies, end to end
//! through the sidecar on 127.0.0.1: raw request bytes in, exact answers
//! out, and a raw test server that records every byte it receives, so each
//! test can say what reached the server and what did not.
//!
//! - Conflicting `Host` fields and an absolute-form target that disagrees
//!   with `Host` get `400` and never reach the server.
//! - Malformed chunked framing gets `400` before the response, and closes
//!   both connections after it started.
//! - `Expect: 100-continue` is handled once, end to end: the server's `100`
//!   is the one the client sees; a final answer before it goes to the client
//!   without the body; a server that ignores the expectation still gets the
//!   body.
//! - `502`/`504` bodies say what kind of failure happened, never the target
//!   address or the OS error (which go to the span).
//!
//! docs/robustness.md ("HTTP/1 framing and error bodies") quotes these
//! tests beside haproxy's answers to the same bytes.

mod support;

use l7inspect_test_support::eventually;
use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use support::{attr, forward_config, have, spans_for, start};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// How long a client waits for an answer before the test fails.
const PATIENCE: Duration = Duration::from_secs(10);

/// What a [`Recorder`] server does on each connection.
#[derive(Clone, Copy, Debug)]
enum Behaviour {
    /// Answers every request `200` with `got <content-length>` once its
    /// body is in.
    Answer,
    /// After the head: `100 Continue` if the request expects it, then reads
    /// the body and answers `200` with `got <n>`.
    Continue,
    /// After the head: `417 Expectation Failed`, without reading a body;
    /// then reads (and records) until the proxy closes.
    Reject417,
    /// Ignores `Expect`: reads the head and the body, answers `200` (what
    /// `Answer` does; named for what the tests using it mean).
    IgnoreExpect,
    /// After the head: a chunked `200` with one chunk, left open; then
    /// reads until the proxy closes.
    EarlyChunked,
    /// After the head: closes without a word.
    CloseAtOnce,
    /// After the head: bytes that are not HTTP.
    Garbage,
    /// Reads, never answers.
    Mute,
}

/// A raw HTTP/1 server that records every byte it receives, per
/// connection, and whether the proxy closed each connection.
#[derive(Clone)]
struct Recorder {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<Arc<Recorded>>>>,
}

#[derive(Default)]
struct Recorded {
    bytes: Mutex<Vec<u8>>,
    eof: AtomicBool,
}

impl Recorded {
    fn bytes(&self) -> Vec<u8> {
        self.bytes.lock().unwrap().clone()
    }
}

impl Recorder {
    async fn start(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<Arc<Recorded>>>> = Arc::default();
        let all = conns.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let rec = Arc::new(Recorded::default());
                all.lock().unwrap().push(rec.clone());
                tokio::spawn(serve(s, rec, behaviour));
            }
        });
        Self { addr, conns }
    }

    /// Everything every connection received, in accept order.
    fn received(&self) -> Vec<Vec<u8>> {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.bytes())
            .collect()
    }

    /// Waits (bounded) until every connection so far was closed by the
    /// proxy; false if one stays open.
    async fn all_closed(&self) -> bool {
        eventually(|| async {
            self.conns
                .lock()
                .unwrap()
                .iter()
                .all(|c| c.eof.load(Ordering::SeqCst))
        })
        .await
    }
}

/// Reads from `s` into `seen` (recording) until `done(seen)`; false at EOF.
async fn read_until(
    s: &mut TcpStream,
    rec: &Recorded,
    seen: &mut Vec<u8>,
    done: impl Fn(&[u8]) -> bool,
) -> bool {
    let mut buf = [0u8; 16 * 1024];
    while !done(seen) {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => {
                rec.eof.store(true, Ordering::SeqCst);
                return false;
            }
            Ok(n) => {
                seen.extend_from_slice(&buf[..n]);
                rec.bytes.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        }
    }
    true
}

fn head_len(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// The value of header `name` in `head` (case-insensitive), if any.
fn header_value(head: &[u8], name: &str) -> Option<String> {
    String::from_utf8_lossy(head).lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

async fn serve(mut s: TcpStream, rec: Arc<Recorded>, behaviour: Behaviour) {
    let mut seen = Vec::new();
    loop {
        if !read_until(&mut s, &rec, &mut seen, |b| head_len(b).is_some()).await {
            return;
        }
        let head_end = head_len(&seen).unwrap();
        let head: Vec<u8> = seen[..head_end].to_vec();
        let length: usize = header_value(&head, "content-length").map_or(0, |v| v.parse().unwrap());
        let expects = header_value(&head, "expect").is_some();
        match behaviour {
            Behaviour::Answer | Behaviour::IgnoreExpect | Behaviour::Continue => {
                if matches!(behaviour, Behaviour::Continue) && expects {
                    let _ = s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
                }
                // The body: `Content-Length` bytes, or chunks to the last
                // one (no trailers), whose size is not counted.
                let chunked = header_value(&head, "transfer-encoding").is_some();
                let body_end = |b: &[u8]| {
                    if chunked {
                        b[head_end - 2..]
                            .windows(7)
                            .position(|w| w == b"\r\n0\r\n\r\n")
                            .map(|p| head_end - 2 + p + 7)
                    } else {
                        (b.len() >= head_end + length).then_some(head_end + length)
                    }
                };
                if !read_until(&mut s, &rec, &mut seen, |b| body_end(b).is_some()).await {
                    return;
                }
                let want = body_end(&seen).unwrap();
                seen.drain(..want);
                let body = format!("got {length}");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if s.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
            }
            Behaviour::Reject417 | Behaviour::EarlyChunked | Behaviour::Garbage => {
                let resp: &[u8] = match behaviour {
                    Behaviour::Reject417 => {
                        b"HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n"
                    }
                    Behaviour::EarlyChunked => {
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n"
                    }
                    _ => b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
                };
                let _ = s.write_all(resp).await;
                read_until(&mut s, &rec, &mut seen, |_| false).await;
                return;
            }
            Behaviour::Mute => {
                read_until(&mut s, &rec, &mut seen, |_| false).await;
                return;
            }
            Behaviour::CloseAtOnce => {
                rec.eof.store(true, Ordering::SeqCst);
                return;
            }
        }
    }
}

/// Sends `req` on a new connection and reads until the proxy closes it.
async fn send_and_read_all(proxy: SocketAddr, req: &[u8]) -> String {
    let mut c = TcpStream::connect(proxy).await.unwrap();
    c.write_all(req).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(PATIENCE, c.read_to_end(&mut out))
        .await
        .expect("the proxy answered and closed the connection")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads from the client's connection into `out` until `done(out)`; panics
/// on EOF or after [`PATIENCE`].
async fn client_read_until(c: &mut TcpStream, out: &mut Vec<u8>, done: impl Fn(&[u8]) -> bool) {
    let mut buf = [0u8; 16 * 1024];
    while !done(out) {
        let n = tokio::time::timeout(PATIENCE, c.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no answer: {:?}", String::from_utf8_lossy(out)))
            .unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(out));
        out.extend_from_slice(&buf[..n]);
    }
}

fn count(haystack: &[u8], needle: &str) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
        .count()
}

/// Requests whose `Host` fields conflict: each gets `400`, the connection
/// closes, and not one byte reaches the server (whose connection, dialled
/// when the client connected, is closed unused). The same request with
/// one `Host`, or with a `Host` that names the target's authority, goes
/// through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_host_fields_get_400_and_reach_no_server() {
    let server = Recorder::start(Behaviour::Answer).await;
    let sidecar = start(forward_config(server.addr)).await;
    let proxy = sidecar.inbound();
    for (req, reason) in [
        (
            "GET /a HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
            "more than one Host header",
        ),
        (
            "GET /a HTTP/1.1\r\nHost: a.example\r\nHost: a.example\r\n\r\n",
            "more than one Host header",
        ),
        (
            "GET http://a.example/a HTTP/1.1\r\nHost: b.example\r\n\r\n",
            "request-target authority differs from Host",
        ),
        (
            "GET http://a.example:8080/a HTTP/1.1\r\nHost: a.example\r\n\r\n",
            "request-target authority differs from Host",
        ),
        (
            // A body that would be a second request if it were forwarded.
            "POST http://a.example/a HTTP/1.1\r\nHost: b.example\r\nContent-Length: 35\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
            "request-target authority differs from Host",
        ),
    ] {
        let resp = send_and_read_all(proxy, req.as_bytes()).await;
        assert!(
            resp.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{req:?}: {resp}"
        );
        assert!(
            resp.contains("\r\nconnection: close\r\n"),
            "{req:?}: {resp}"
        );
        assert!(
            resp.ends_with(&format!("\r\n\r\n400 Bad Request: {reason}\n")),
            "{req:?}: {resp}"
        );
    }
    assert!(
        server.all_closed().await,
        "an upstream connection stayed open"
    );
    let received = server.received();
    assert!(
        received.iter().all(|r| r.is_empty()),
        "bytes reached the server: {:?}",
        received
            .iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect::<Vec<_>>()
    );

    // The same target, named alike, goes through.
    for req in [
        "GET http://a.example/a HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
        "GET http://A.example:80/a HTTP/1.1\r\nHost: a.EXAMPLE\r\nConnection: close\r\n\r\n",
    ] {
        let resp = send_and_read_all(proxy, req.as_bytes()).await;
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{req:?}: {resp}");
        assert!(resp.ends_with("got 0"), "{req:?}: {resp}");
    }
}

/// Malformed chunked framing in a request body gets `400` when no
/// response has started (hyper's parse error is the client's, not the
/// server's: not a `502`). The request head is written with the body
/// bytes that came with it, so an error among them stops the request
/// before the server sees a byte; the upstream connection (dialled when
/// the client connected) closes unused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunked_request_bodies_get_400() {
    let server = Recorder::start(Behaviour::Answer).await;
    let sidecar = start(forward_config(server.addr)).await;
    let proxy = sidecar.inbound();
    let head = "POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    // What reaches the server: nothing when the first chunk's size line is
    // bad (the head goes with the body bytes that came with it, so the
    // error stops it first); when the error follows good data, the head and
    // that data (bodies stream), never a last chunk.
    for (what, body, reaches) in [
        ("chunk size not hex", "zz\r\nhello\r\n0\r\n\r\n", None),
        (
            "chunk size overflows",
            "fffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
            None,
        ),
        (
            "garbage in the chunk size line",
            "5 x\r\nhello\r\n0\r\n\r\n",
            None,
        ),
        (
            "no CRLF after the chunk data",
            "5\r\nhelloXX0\r\n\r\n",
            Some("\r\n\r\n5\r\nhello"),
        ),
    ] {
        let resp = send_and_read_all(proxy, format!("{head}{body}").as_bytes()).await;
        assert!(
            resp.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{what}: {resp}"
        );
        assert!(
            resp.ends_with("\r\n\r\n400 Bad Request: invalid request body\n"),
            "{what}: {resp}"
        );
        assert!(
            server.all_closed().await,
            "{what}: the upstream connection stayed open"
        );
        let received = server.received().pop().unwrap();
        let received = String::from_utf8_lossy(&received);
        match reaches {
            None => assert!(received.is_empty(), "{what}: {received:?}"),
            Some(end) => assert!(
                received.starts_with("POST /upload HTTP/1.1\r\n") && received.ends_with(end),
                "{what}: {received:?}"
            ),
        }
    }
    assert!(
        eventually(|| async { spans_for(&sidecar, "/upload").len() == 4 }).await,
        "one span per request"
    );
    let span = &spans_for(&sidecar, "/upload")[0];
    assert_eq!(
        attr(span, "http.response.status_code").as_deref(),
        Some("400")
    );
    assert_eq!(
        attr(span, "error.type").as_deref(),
        Some("invalid_request_body")
    );
}

/// Malformed chunked framing after the response started: the response
/// cannot end well (the request never will), so both connections close:
/// the client's without the response's last chunk, the server's, which has
/// a partial body, at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunk_after_the_response_started_closes_both_connections() {
    let server = Recorder::start(Behaviour::EarlyChunked).await;
    let sidecar = start(forward_config(server.addr)).await;
    let mut c = TcpStream::connect(sidecar.inbound()).await.unwrap();
    c.write_all(
        b"POST /early HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await
    .unwrap();
    let mut resp = Vec::new();
    client_read_until(&mut c, &mut resp, |b| b.ends_with(b"2\r\nok\r\n")).await;
    c.write_all(b"zz\r\n\r\n").await.unwrap();
    tokio::time::timeout(PATIENCE, c.read_to_end(&mut resp))
        .await
        .expect("the client's connection closes")
        .ok();
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(
        !resp.ends_with("0\r\n\r\n"),
        "the response ended as if whole: {resp}"
    );
    assert!(
        server.all_closed().await,
        "the upstream connection stayed open"
    );
    let received = server.received();
    let text = String::from_utf8_lossy(&received[0]);
    // The head and the first chunk, whose CRLF would have come with the next.
    assert!(text.ends_with("\r\n\r\n5\r\nhello"), "{text:?}");
}

/// The head of a request that expects `100 Continue`, with a 5-byte body.
const EXPECT_HEAD: &str =
    "POST /expect HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n";

/// Sends [`EXPECT_HEAD`], waits for a `100` (or a final answer), sends the
/// body if it got the `100`, and returns everything the proxy sent until
/// the final response's body (`final_ends_with`) is in.
async fn expect_exchange(proxy: SocketAddr, final_ends_with: &'static str) -> Vec<u8> {
    let mut c = TcpStream::connect(proxy).await.unwrap();
    c.write_all(EXPECT_HEAD.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    // The first response head, whatever it is.
    client_read_until(&mut c, &mut got, |b| head_len(b).is_some()).await;
    if got.starts_with(b"HTTP/1.1 100 ") {
        c.write_all(b"hello").await.unwrap();
    }
    client_read_until(&mut c, &mut got, |b| {
        b.ends_with(final_ends_with.as_bytes())
    })
    .await;
    got
}

/// A server that answers `100 Continue`: the proxy forwards the
/// expectation once, sends the client no `100` of its own, and the
/// client's body goes only after the server's `100`, which the client
/// sees exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_relays_the_servers_one_100() {
    let server = Recorder::start(Behaviour::Continue).await;
    let sidecar = start(forward_config(server.addr)).await;
    let got = expect_exchange(sidecar.inbound(), "got 5").await;
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"),
        "{text}"
    );
    assert_eq!(count(&got, "100 Continue"), 1, "{text}");
    let received = server.received();
    assert_eq!(count(&received[0], "expect: 100-continue"), 1);
    assert!(received[0].ends_with(b"\r\n\r\nhello"));
}

/// A server that answers `417` before any `100`: the client gets the
/// `417` and no `100`; its body is neither read nor sent, and the
/// connections close after the answer (RFC 9112 9.6: the body, maybe on
/// its way, cannot be told from a next request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn final_answer_before_100_goes_to_the_client_without_the_body() {
    let server = Recorder::start(Behaviour::Reject417).await;
    let sidecar = start(forward_config(server.addr)).await;
    let resp = send_and_read_all(sidecar.inbound(), EXPECT_HEAD.as_bytes()).await;
    assert!(
        resp.starts_with("HTTP/1.1 417 Expectation Failed\r\n"),
        "{resp}"
    );
    assert_eq!(count(resp.as_bytes(), "100 Continue"), 0, "{resp}");
    assert!(
        server.all_closed().await,
        "the upstream connection stayed open"
    );
    let received = server.received();
    let text = String::from_utf8_lossy(&received[0]);
    assert!(
        text.ends_with("\r\n\r\n"),
        "body bytes reached the server: {text:?}"
    );
    assert_eq!(count(&received[0], "expect: 100-continue"), 1, "{text:?}");
}

/// A server that ignores `Expect` (never sends `100`) still gets the body:
/// after a bounded wait, the proxy reads it, which sends the client one
/// `100` (as curl would have sent the body by then anyway).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_ignoring_expect_still_gets_the_body() {
    let server = Recorder::start(Behaviour::IgnoreExpect).await;
    let sidecar = start(forward_config(server.addr)).await;
    let got = expect_exchange(sidecar.inbound(), "got 5").await;
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"),
        "{text}"
    );
    assert_eq!(count(&got, "100 Continue"), 1, "{text}");
    let received = server.received();
    assert_eq!(count(&received[0], "expect: 100-continue"), 1);
    assert!(received[0].ends_with(b"\r\n\r\nhello"));
}

/// curl, which sends `Expect: 100-continue` for large bodies, against both
/// kinds of server: the upload arrives whole, the server sees one
/// `Expect`, and curl (verbose) reports exactly one `100 Continue`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_expect_100_continue_end_to_end() {
    if !have("curl_expect_100_continue_end_to_end", "curl", "--version") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("l7inspect-expect-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("body.bin");
    let size = 2 << 20;
    std::fs::write(&file, vec![7u8; size]).unwrap();
    for behaviour in [Behaviour::Continue, Behaviour::IgnoreExpect] {
        let server = Recorder::start(behaviour).await;
        let sidecar = start(forward_config(server.addr)).await;
        let out = tokio::process::Command::new("curl")
            .args([
                "-sS",
                "-v",
                "--max-time",
                "20",
                "-H",
                "Expect: 100-continue",
            ])
            .arg("--data-binary")
            .arg(format!("@{}", file.display()))
            .arg(format!("http://{}/upload", sidecar.inbound()))
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{behaviour:?}: {stderr}");
        assert_eq!(stdout, format!("got {size}"), "{behaviour:?}");
        assert_eq!(
            stderr.matches("< HTTP/1.1 100 Continue").count(),
            1,
            "{behaviour:?}: {stderr}"
        );
        let received = server.received();
        assert_eq!(
            count(&received[0], "expect: 100-continue"),
            1,
            "{behaviour:?}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The proxy's own error answers name the kind of failure and nothing
/// else: not the target's address or port, not the OS error. Those are on
/// the request's span (`error.type`, `l7inspect.error.message`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_bodies_name_the_failure_not_the_target() {
    // A port that refuses: bound, not listening.
    let refusing = tokio::net::TcpSocket::new_v4().unwrap();
    refusing.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let dead = refusing.local_addr().unwrap();
    let closing = Recorder::start(Behaviour::CloseAtOnce).await;
    let garbage = Recorder::start(Behaviour::Garbage).await;
    let mute = Recorder::start(Behaviour::Mute).await;
    for (target, status, words, error_type) in [
        (
            dead,
            "502 Bad Gateway",
            "upstream connection failed",
            "upstream_connect_failed",
        ),
        (
            closing.addr,
            "502 Bad Gateway",
            "upstream closed the connection",
            "upstream_closed",
        ),
        (
            garbage.addr,
            "502 Bad Gateway",
            "invalid response from upstream",
            "upstream_invalid_response",
        ),
        (
            mute.addr,
            "504 Gateway Timeout",
            "upstream response timed out",
            "upstream_response_timeout",
        ),
    ] {
        let mut config = forward_config(target);
        config.http.response_timeout = Some(Duration::from_millis(300));
        let sidecar = start(config).await;
        let resp = send_and_read_all(
            sidecar.inbound(),
            b"GET /fail HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(
            resp.starts_with(&format!("HTTP/1.1 {status}\r\n")),
            "{resp}"
        );
        assert!(
            resp.ends_with(&format!("\r\n\r\n{status}: {words}\n")),
            "{resp}"
        );
        let port = target.port().to_string();
        for secret in [
            "127.0.0.1",
            port.as_str(),
            "os error",
            "refused",
            "Connection",
        ] {
            let body = resp.split_once("\r\n\r\n").unwrap().1;
            assert!(!body.contains(secret), "{secret:?} in {body:?}");
        }
        assert!(
            eventually(|| async { !spans_for(&sidecar, "/fail").is_empty() }).await,
            "no span"
        );
        let span = &spans_for(&sidecar, "/fail")[0];
        assert_eq!(attr(span, "error.type").as_deref(), Some(error_type));
        let message = attr(span, "l7inspect.error.message").unwrap();
        if target == dead {
            // The operator's message names the target and the OS error.
            assert!(message.contains(&target.to_string()), "{message}");
            assert!(message.contains("refused"), "{message}");
        }
    }

    // gRPC: status 14 with the same words.
    if have("error_bodies_name_the_failure_grpc", "curl", "--version") {
        let sidecar = start(forward_config(dead)).await;
        let out = tokio::process::Command::new("curl")
            .args([
                "-sS",
                "-D",
                "-",
                "-o",
                "/dev/null",
                "--http2-prior-knowledge",
            ])
            .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
            .args(["--data-binary", ""])
            .arg(format!("http://{}/shop.Cart/Add", sidecar.inbound()))
            .output()
            .await
            .unwrap();
        let head = String::from_utf8_lossy(&out.stdout);
        assert!(head.contains("grpc-status: 14"), "{head}");
        assert!(
            head.contains("grpc-message: upstream%20connection%20failed"),
            "{head}"
        );
        assert!(!head.contains(&dead.port().to_string()), "{head}");
    }
    drop(refusing);
}

/// The framing tests' server records what a plain request brings, so
/// that "nothing arrived" there means something.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recorder_sees_a_plain_request() {
    let server = Recorder::start(Behaviour::Answer).await;
    let sidecar = start(forward_config(server.addr)).await;
    let resp = send_and_read_all(
        sidecar.inbound(),
        b"POST /ok HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert!(resp.ends_with("got 5"), "{resp}");
    let received = server.received();
    assert_eq!(received.len(), 1);
    assert!(received[0].starts_with(b"POST /ok HTTP/1.1\r\n"));
    assert!(received[0].ends_with(b"\r\n\r\nhello"));
}

/// With `--http1-preserve-header-case` (hyper's client upstream instead of
/// the proxy's own) the same requests get the same `400`s: the `Host`
/// checks come before either client, and a failing request body is known
/// as the client's whichever client carried it. (hyper's client writes the
/// head before it reads the body, so the server may get the head.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preserve_header_case_gets_the_same_400s() {
    let server = Recorder::start(Behaviour::Answer).await;
    let mut config = forward_config(server.addr);
    config.http.preserve_header_case = true;
    let sidecar = start(config).await;
    for (req, reason) in [
        (
            "GET /a HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
            "more than one Host header",
        ),
        (
            "GET http://a.example/a HTTP/1.1\r\nHost: b.example\r\n\r\n",
            "request-target authority differs from Host",
        ),
        (
            "POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            "invalid request body",
        ),
    ] {
        let resp = send_and_read_all(sidecar.inbound(), req.as_bytes()).await;
        assert!(
            resp.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{req:?}: {resp}"
        );
        assert!(
            resp.ends_with(&format!("\r\n\r\n400 Bad Request: {reason}\n")),
            "{req:?}: {resp}"
        );
    }
    assert!(
        server.all_closed().await,
        "an upstream connection stayed open"
    );
    for received in server.received() {
        let text = String::from_utf8_lossy(&received);
        assert!(!text.contains("\r\n0\r\n\r\n"), "{text:?}");
        assert!(!text.starts_with("GET"), "{text:?}");
    }
}
