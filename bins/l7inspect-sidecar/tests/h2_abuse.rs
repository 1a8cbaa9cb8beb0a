//! Hostile HTTP/2 clients, written from raw frames, against the sidecar in
//! this process (prior-knowledge h2c on an explicit inbound forward to a
//! hyper backend): an HPACK bomb (the connection is closed after the budget
//! of rejected header blocks, GOAWAY ENHANCE_YOUR_CALM, and others are
//! still served), an unfinished header block trickled (cut at the
//! request-head timeout), an idle connection (graceful GOAWAY at the idle
//! timeout), more streams than SETTINGS allow (refused), and rapid reset
//! (bounded). Normal clients (hyper's, h2load) keep working with the
//! defaults.
//!
//! Timeouts here are short and configured; nothing asserts how long
//! anything took: every wait is bounded by [`BOUND`] so that a failure ends
//! the test instead of hanging it.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use l7inspect_core::Http2Config;
use l7inspect_sidecar::SidecarConfig;
use l7inspect_test_support::{need_tool, run_or_skip};
use std::{convert::Infallible, net::SocketAddr, time::Duration};
use support::{Running, forward_config, start};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    time::timeout,
};

/// Bound on any single wait. Not a timing assertion: healthy runs finish
/// in milliseconds.
const BOUND: Duration = Duration::from_secs(10);

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const NO_ERROR: u32 = 0x0;
const CANCEL: u32 = 0x8;
const REFUSED_STREAM: u32 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;

/// One frame as read.
#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// A raw HTTP/2 client connection: frames in, frames out, nothing checked
/// on our side.
struct Raw {
    tcp: TcpStream,
    buf: Vec<u8>,
    /// The payload of the server's SETTINGS.
    settings: Vec<u8>,
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with an `n`-bit prefix, its first byte or-ed with
/// `first` (RFC 7541 5.1).
fn hpack_int(first: u8, n: u32, mut v: usize, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// `:method GET`, `:scheme http`, `:path /` (static table) and
/// `:authority` as a literal without indexing.
fn request_head() -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x84, 0x01];
    hpack_int(0, 7, 10, &mut b);
    b.extend_from_slice(b"proxy.test");
    b
}

/// A request whose head also puts `x-bomb: <size bytes>` in the dynamic
/// table (literal with incremental indexing: index 62 from then on).
fn bomb_setup(size: usize) -> Vec<u8> {
    let mut b = request_head();
    b.push(0x40);
    hpack_int(0, 7, 6, &mut b);
    b.extend_from_slice(b"x-bomb");
    hpack_int(0, 7, size, &mut b);
    b.extend(std::iter::repeat_n(b'a', size));
    b
}

/// References to the 4 KB entry in a bomb: 8 × 4 KB = 32 KB decoded, over
/// the default 16 KiB list limit (431) and under `h2`'s own bound of four
/// times the limit (which would close the connection at the first).
const REFS: usize = 8;

/// A request head that names the 4 KB dynamic entry `refs` times: a few
/// bytes on the wire, `refs` × 4 KB decoded.
fn bomb(refs: usize) -> Vec<u8> {
    let mut b = request_head();
    b.extend(std::iter::repeat_n(0x80 | 62, refs));
    b
}

impl Raw {
    /// Connects, sends the preface and an empty SETTINGS, and acknowledges
    /// the server's SETTINGS (so that the ACK cannot land inside a header
    /// block later).
    async fn connect(addr: SocketAddr) -> Self {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        tcp.write_all(&hello).await.unwrap();
        let mut raw = Self {
            tcp,
            buf: Vec::new(),
            settings: Vec::new(),
        };
        raw.settings = raw
            .until(|f| f.kind == SETTINGS && f.flags & ACK == 0)
            .await
            .expect("the server's SETTINGS")
            .payload;
        raw
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.unwrap();
    }

    /// The next frame, or `None` at EOF (or a reset). SETTINGS and PINGs
    /// are acknowledged, as a client must.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let f: Vec<u8> = self.buf.drain(..9 + len).collect();
                    let frame = Frame {
                        kind: f[3],
                        flags: f[4],
                        stream: u32::from_be_bytes([f[5], f[6], f[7], f[8]]) & 0x7fff_ffff,
                        payload: f[9..].to_vec(),
                    };
                    if frame.flags & ACK == 0 {
                        let ack = match frame.kind {
                            SETTINGS => Some(self::frame(SETTINGS, ACK, 0, &[])),
                            PING => Some(self::frame(PING, ACK, 0, &frame.payload)),
                            _ => None,
                        };
                        if let Some(ack) = ack {
                            // The peer may be gone already.
                            let _ = self.tcp.write_all(&ack).await;
                        }
                    }
                    return Some(frame);
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = timeout(BOUND, self.tcp.read(&mut chunk))
                .await
                .expect("the proxy answers or closes")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads until a frame satisfies `want` (returned), or EOF (`None`).
    async fn until(&mut self, mut want: impl FnMut(&Frame) -> bool) -> Option<Frame> {
        while let Some(f) = self.next().await {
            if want(&f) {
                return Some(f);
            }
        }
        None
    }

    /// Reads until GOAWAY: its error code; then until EOF.
    async fn goaway_then_eof(&mut self) -> u32 {
        let f = self
            .until(|f| f.kind == GOAWAY)
            .await
            .expect("a GOAWAY before the connection closed");
        let code = goaway_code(&f);
        // A graceful GOAWAY is followed by the final one.
        while let Some(f) = self.next().await {
            assert!(
                f.kind != HEADERS || f.stream == 0,
                "no response after the GOAWAY: {f:?}"
            );
        }
        code
    }
}

/// A GOAWAY's error code.
fn goaway_code(f: &Frame) -> u32 {
    u32::from_be_bytes(f.payload[4..8].try_into().unwrap())
}

/// A RST_STREAM's error code.
fn code(f: &Frame) -> u32 {
    u32::from_be_bytes(f.payload[..4].try_into().unwrap())
}

/// A backend on 127.0.0.1 (HTTP/1 and h2c) answering `200 ok` once it has
/// the whole request body.
async fn backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            let service = hyper::service::service_fn(|req: http::Request<Incoming>| async move {
                let _ = req.into_body().collect().await;
                Ok::<_, Infallible>(http::Response::new(http_body_util::Full::new(
                    Bytes::from_static(b"ok"),
                )))
            });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(io), service)
                    .await;
            });
        }
    });
    addr
}

async fn sidecar(config: impl FnOnce(&mut SidecarConfig)) -> Running {
    let mut c = forward_config(backend().await);
    config(&mut c);
    start(c).await
}

/// `n` GETs from hyper's HTTP/2 client (prior knowledge) through the
/// proxy, all at once on one connection; each must be `200 ok`.
async fn normal_client(addr: SocketAddr, n: usize) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..n {
        let mut send = send.clone();
        calls.spawn(async move {
            let req = http::Request::get(format!("http://proxy.test/{i}"))
                .body(Empty::<Bytes>::new())
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
        });
    }
    let all = async {
        while let Some(call) = calls.join_next().await {
            call.unwrap();
        }
    };
    timeout(BOUND, all).await.expect("normal requests answered");
}

fn series(name: &str, reason: &str) -> String {
    format!("{name}{{direction=\"inbound\",reason=\"{reason}\"}}")
}

#[tokio::test]
async fn hpack_bomb_is_cut_after_the_budget_and_others_are_served() {
    let proxy = sidecar(|_| {}).await;
    let budget = Http2Config::default().max_rejected_header_blocks;
    let mut c = Raw::connect(proxy.inbound()).await;
    // Stream 1: a real request that leaves a 4 KB entry in the table.
    c.send(&frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &bomb_setup(4000),
    ))
    .await;
    let resp = c.until(|f| f.kind == HEADERS && f.stream == 1).await;
    assert!(resp.is_some(), "the first request is answered");
    // Then bombs, one at a time.
    let mut sent = 0;
    let goaway = loop {
        sent += 1;
        let stream = 1 + 2 * sent;
        c.send(&frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            stream,
            &bomb(REFS),
        ))
        .await;
        let f = c
            .until(|f| (f.kind == HEADERS && f.stream == stream) || f.kind == GOAWAY)
            .await
            .expect("an answer to each bomb");
        if f.kind == GOAWAY {
            break f;
        }
        assert!(
            f.flags & END_STREAM != 0,
            "a bomb is answered 431 and ended: {f:?}"
        );
        if sent > budget {
            // The block past the budget was answered before the close.
            break c.until(|f| f.kind == GOAWAY).await.expect("GOAWAY");
        }
    };
    assert_eq!(
        sent,
        budget + 1,
        "closed at the first block past the budget"
    );
    assert_eq!(goaway_code(&goaway), ENHANCE_YOUR_CALM);
    assert!(
        c.until(|_| false).await.is_none(),
        "closed after the GOAWAY"
    );
    proxy
        .wait_metric(
            &series(
                "l7inspect_http2_connections_closed_total",
                "rejected_header_blocks",
            ),
            1.0,
        )
        .await;
    // Others are served, and a client under the budget keeps its connection.
    normal_client(proxy.inbound(), 20).await;
    let mut c = Raw::connect(proxy.inbound()).await;
    c.send(&frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &bomb_setup(4000),
    ))
    .await;
    for i in 1..=budget {
        let stream = 1 + 2 * i;
        c.send(&frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            stream,
            &bomb(REFS),
        ))
        .await;
        c.until(|f| f.kind == HEADERS && f.stream == stream)
            .await
            .unwrap();
    }
    let stream = 3 + 2 * budget;
    c.send(&frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        stream,
        &request_head(),
    ))
    .await;
    let ok = c.until(|f| f.kind == HEADERS && f.stream == stream).await;
    assert!(
        ok.is_some(),
        "a request after {budget} rejected blocks is served"
    );
}

/// What the budget is for: `h2` alone answers every oversize block `431`
/// and keeps the connection; an oversize block is not among the resets
/// that `max_local_error_reset_streams` counts (set to 16 here, with 100
/// bombs).
#[tokio::test]
async fn without_the_budget_h2_alone_takes_bomb_after_bomb() {
    let proxy = sidecar(|c| {
        c.http.http2.max_rejected_header_blocks = u32::MAX;
        c.http.http2.max_local_error_reset_streams = 16;
    })
    .await;
    let mut c = Raw::connect(proxy.inbound()).await;
    let mut burst = frame(HEADERS, END_HEADERS | END_STREAM, 1, &bomb_setup(4000));
    for i in 1..=100u32 {
        burst.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1 + 2 * i,
            &bomb(REFS),
        ));
    }
    let last = 1 + 2 * 101;
    burst.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        last,
        &request_head(),
    ));
    c.send(&burst).await;
    let mut answered = 0;
    let f = c
        .until(|f| {
            answered += u32::from(f.kind == HEADERS && f.stream > 1 && f.stream < last);
            f.kind == GOAWAY || (f.kind == HEADERS && f.stream == last)
        })
        .await
        .expect("an answer");
    assert_eq!(f.kind, HEADERS, "no GOAWAY: {f:?}");
    assert_eq!(answered, 100, "every bomb answered (431)");
}

#[tokio::test]
async fn a_burst_of_bombs_in_one_write_is_cut_too() {
    let proxy = sidecar(|_| {}).await;
    let mut c = Raw::connect(proxy.inbound()).await;
    let mut burst = frame(HEADERS, END_HEADERS | END_STREAM, 1, &bomb_setup(4000));
    for i in 1..=500u32 {
        burst.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1 + 2 * i,
            &bomb(REFS),
        ));
    }
    // The proxy may close before it has read it all.
    let _ = c.tcp.write_all(&burst).await;
    assert_eq!(c.goaway_then_eof().await, ENHANCE_YOUR_CALM);
    proxy
        .wait_metric(
            &series(
                "l7inspect_http2_connections_closed_total",
                "rejected_header_blocks",
            ),
            1.0,
        )
        .await;
    normal_client(proxy.inbound(), 5).await;
}

#[tokio::test]
async fn unfinished_header_block_is_cut_at_the_head_timeout() {
    let proxy = sidecar(|c| c.http.request_head_timeout = Some(Duration::from_millis(300))).await;
    // A HEADERS frame whose payload trickles in, a byte every 50 ms: the
    // trickle does not extend the timeout.
    let mut c = Raw::connect(proxy.inbound()).await;
    let head = request_head();
    let mut f = frame(HEADERS, END_HEADERS | END_STREAM, 1, &head);
    // Announces 1000 payload bytes; sends them slowly, never all.
    f[..3].copy_from_slice(&1000u32.to_be_bytes()[1..]);
    c.send(&f).await;
    let trickle = async {
        for _ in 0..1000 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if c.tcp.write_all(&[0x40]).await.is_err() {
                break;
            }
        }
    };
    timeout(BOUND, trickle)
        .await
        .expect("the proxy cut the connection");
    assert_eq!(c.goaway_then_eof().await, NO_ERROR);
    proxy
        .wait_metric(&series("l7inspect_timeouts_total", "request_head"), 1.0)
        .await;

    // HEADERS without END_HEADERS, CONTINUATION frames now and then (fewer
    // than h2's own CONTINUATION bound), then nothing.
    let mut c = Raw::connect(proxy.inbound()).await;
    let head = request_head();
    c.send(&frame(HEADERS, END_STREAM, 3, &head[..1])).await;
    for part in [&head[1..2], &head[2..3], &head[3..]] {
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.send(&frame(CONTINUATION, 0, 3, part)).await;
    }
    assert_eq!(c.goaway_then_eof().await, NO_ERROR);
    proxy
        .wait_metric(&series("l7inspect_timeouts_total", "request_head"), 2.0)
        .await;

    // One read that starts a block, then silence: the deadline is armed as
    // the connection parks, not at a later wake-up (the idle timer is 10
    // minutes away).
    let mut c = Raw::connect(proxy.inbound()).await;
    c.send(&frame(HEADERS, END_STREAM, 5, &request_head()[..1]))
        .await;
    assert_eq!(c.goaway_then_eof().await, NO_ERROR);
    proxy
        .wait_metric(&series("l7inspect_timeouts_total", "request_head"), 3.0)
        .await;
    // Not counted as a close for abuse; others are served.
    assert_eq!(
        proxy.metric(&series(
            "l7inspect_http2_connections_closed_total",
            "protocol_error"
        )),
        Some(0.0)
    );
    normal_client(proxy.inbound(), 5).await;
}

#[tokio::test]
async fn idle_connection_gets_a_graceful_goaway() {
    let proxy = sidecar(|c| c.http.idle_timeout = Some(Duration::from_millis(300))).await;
    let mut c = Raw::connect(proxy.inbound()).await;
    c.send(&frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &request_head(),
    ))
    .await;
    let resp = c.until(|f| f.kind == DATA && f.stream == 1 && f.flags & END_STREAM != 0);
    assert!(resp.await.is_some(), "answered");
    // Then silence: GOAWAY NO_ERROR (PINGs acknowledged), then the close.
    assert_eq!(c.goaway_then_eof().await, NO_ERROR);
    proxy
        .wait_metric(&series("l7inspect_timeouts_total", "idle"), 1.0)
        .await;
}

#[tokio::test]
async fn streams_past_the_concurrency_limit_are_refused() {
    let proxy = sidecar(|c| c.http.http2.max_concurrent_streams = 4).await;
    let mut c = Raw::connect(proxy.inbound()).await;
    let max = c.settings.chunks(6).find_map(|s| {
        (u16::from_be_bytes([s[0], s[1]]) == SETTINGS_MAX_CONCURRENT_STREAMS)
            .then(|| u32::from_be_bytes([s[2], s[3], s[4], s[5]]))
    });
    assert_eq!(max, Some(4), "SETTINGS announce the limit");
    // Six requests whose bodies never end: the backend waits for them.
    let mut burst = Vec::new();
    for i in 0..6u32 {
        burst.extend(frame(HEADERS, END_HEADERS, 1 + 2 * i, &request_head()));
    }
    c.send(&burst).await;
    for stream in [9, 11] {
        let f = c
            .until(|f| f.kind == RST_STREAM && f.stream == stream)
            .await
            .expect("refused");
        assert_eq!(code(&f), REFUSED_STREAM);
    }
    // The four in flight end normally once their bodies do.
    for stream in [1, 3, 5, 7] {
        c.send(&frame(DATA, END_STREAM, stream, b"")).await;
        let f = c
            .until(|f| (f.kind == HEADERS || f.kind == RST_STREAM) && f.stream == stream)
            .await
            .expect("answered");
        assert_eq!(f.kind, HEADERS, "{f:?}");
    }
    // Two refusals are within the budget: the connection stays.
    let stream = 13;
    c.send(&frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        stream,
        &request_head(),
    ))
    .await;
    assert!(
        c.until(|f| f.kind == HEADERS && f.stream == stream)
            .await
            .is_some()
    );
}

#[tokio::test]
async fn rapid_reset_is_bounded() {
    let proxy = sidecar(|_| {}).await;
    let mut c = Raw::connect(proxy.inbound()).await;
    let mut burst = Vec::new();
    for i in 0..10_000u32 {
        let stream = 1 + 2 * i;
        burst.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            stream,
            &request_head(),
        ));
        burst.extend(frame(RST_STREAM, 0, stream, &CANCEL.to_be_bytes()));
    }
    let _ = c.tcp.write_all(&burst).await;
    assert_eq!(c.goaway_then_eof().await, ENHANCE_YOUR_CALM);
    proxy
        .wait_metric(
            &series(
                "l7inspect_http2_connections_closed_total",
                "enhance_your_calm",
            ),
            1.0,
        )
        .await;
    normal_client(proxy.inbound(), 5).await;
}

#[tokio::test]
async fn normal_clients_work_with_the_defaults() {
    let proxy = sidecar(|_| {}).await;
    // Many streams at once on one connection, twice the budget of rejected
    // blocks and more: none is mistaken for rejected.
    normal_client(proxy.inbound(), 150).await;
    assert_eq!(
        proxy.metric(&series(
            "l7inspect_http2_connections_closed_total",
            "rejected_header_blocks"
        )),
        Some(0.0)
    );
}

#[test]
fn h2load_with_the_defaults() {
    run_or_skip("h2load_with_the_defaults", || {
        need_tool("h2load", "nghttp2-client")?;
        let rt = tokio::runtime::Runtime::new().unwrap();
        let proxy = rt.block_on(sidecar(|_| {}));
        let url = format!("http://{}/", proxy.inbound());
        // h2load opens all its streams at once (-m 100) on each of its
        // connections, pipelined in one write.
        let out = std::process::Command::new("h2load")
            .args(["-n", "4000", "-c", "4", "-m", "100", &url])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains("4000 succeeded, 0 failed, 0 errored"),
            "{text}"
        );
        assert!(text.contains("status codes: 4000 2xx"), "{text}");
        drop(rt);
        Ok(())
    });
}
