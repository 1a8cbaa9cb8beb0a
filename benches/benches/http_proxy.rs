//! One HTTP request and its response over a kept-alive connection, through
//! an in-process sidecar, `direct` beside `via-sidecar`.
//!
//! The backend is a hyper server (HTTP/1.1 and h2c, chosen per connection)
//! answering every request with a fixed 19-byte body. The sidecar is the
//! real one, built by `l7inspect_sidecar::build` and run by `Sidecar::run`
//! with one explicit inbound forward to the backend, so each request crosses
//! the whole stack the sidecar composes: detection (once per connection),
//! the HTTP layer, request metrics, the request's span and the forwarding
//! over the connection's own upstream connection. Two sidecars differ only
//! in sampling (`traceidratio`): `via-sidecar/sampled` samples every
//! request (1.0; no exporter, so spans end in the in-memory ring of recent
//! spans, as in a sidecar that exports nowhere) and `via-sidecar/unsampled`
//! none (0.0: spans are still started, named and propagated, but not
//! recorded, the cheapest tracing there is). Baseline: `direct`, the same
//! client on the same kind of connection straight to the backend.
//!
//! Groups: `http1` (HTTP/1.1) and `http2` (h2c, prior knowledge). One
//! iteration is: send one `GET` (no body) on the connection, wait for the
//! response head, read the body to its end. Each case has its own
//! connection, opened before it is measured and kept alive throughout, so
//! connection setup and detection are not measured; building the request is
//! not either ([`Bencher::iter_custom`]).
//!
//! The backend and each sidecar run on a current-thread runtime on their
//! own OS thread (the sidecar's default is one worker thread), and the
//! measured client runs on another current-thread runtime on criterion's
//! thread, so the client does not share a scheduler with what it measures.
//! On a 2-core machine, the proxied cases still have three busy threads in
//! turn per request (client, sidecar, backend) where `direct` has two.
//!
//! ```text
//! cargo bench -p l7inspect-benches --bench http_proxy
//! ```
//!
//! [`Bencher::iter_custom`]: criterion::Bencher::iter_custom

#![forbid(unsafe_code)]

use bytes::{Buf, Bytes};
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::{
    body::Incoming,
    client::conn::{http1, http2},
    service::service_fn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use l7inspect_benches::Background;
use l7inspect_sidecar::TracingConfig;
use l7inspect_trace::export::{RecentSpans, SamplerConfig};
use std::{
    convert::Infallible,
    net::SocketAddr,
    time::{Duration, Instant},
};
use tokio::net::TcpStream;

/// What the backend answers to every request.
const BODY: &[u8] = b"hello from backend\n";

/// The HTTP version of a measured connection.
#[derive(Clone, Copy, Debug)]
enum Version {
    Http1,
    Http2,
}

/// One kept-alive client connection; its driver runs on the client runtime.
enum Client {
    Http1(http1::SendRequest<Empty<Bytes>>),
    Http2(http2::SendRequest<Empty<Bytes>>),
}

fn http_proxy(c: &mut Criterion) {
    let (backend, _backend) = backend();
    let (unsampled, _unsampled, unsampled_spans) = sidecar(backend, 0.0);
    let (sampled, _sampled, sampled_spans) = sidecar(backend, 1.0);
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");

    for version in [Version::Http1, Version::Http2] {
        let mut group = c.benchmark_group(version.name());
        for (name, addr) in [
            ("direct", backend),
            ("via-sidecar/unsampled", unsampled),
            ("via-sidecar/sampled", sampled),
        ] {
            let mut conn = client.block_on(Client::connect(addr, version));
            group.bench_function(name, |b| {
                b.iter_custom(|iters| client.block_on(conn.exchanges(iters, version, backend)))
            });
        }
        group.finish();
    }
    // What was measured is what the names say.
    assert!(
        unsampled_spans.is_empty(),
        "the unsampled sidecar kept spans"
    );
    assert!(
        !sampled_spans.is_empty(),
        "the sampled sidecar kept no span"
    );
}

/// `GET /` as a client of `backend` sends it, in `version`'s form: origin
/// form and `Host` for HTTP/1.1, absolute form (`:scheme`, `:authority`) for
/// HTTP/2.
fn request(version: Version, backend: SocketAddr) -> Request<Empty<Bytes>> {
    let req = match version {
        Version::Http1 => Request::get("/").header(header::HOST, backend.to_string()),
        Version::Http2 => Request::get(format!("http://{backend}/")),
    };
    req.header(header::USER_AGENT, "l7inspect-bench")
        .body(Empty::new())
        .expect("valid request")
}

/// A hyper server on 127.0.0.1:0 answering [`BODY`] to every request, over
/// HTTP/1.1 or h2c as each connection starts.
fn backend() -> (SocketAddr, Background) {
    l7inspect_benches::serve("backend", |conn: TcpStream| async move {
        let answer = service_fn(|_req: Request<Incoming>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(BODY))))
        });
        let _ = auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(conn), answer)
            .await;
    })
}

/// An in-process sidecar with one explicit inbound forward to `target`,
/// sampling `ratio` of requests and exporting nowhere; its forward
/// listener's address and its ring of recent spans.
fn sidecar(target: SocketAddr, ratio: f64) -> (SocketAddr, Background, RecentSpans) {
    let tracing = TracingConfig {
        sampler: SamplerConfig::TraceIdRatio(ratio),
        ..TracingConfig::default()
    };
    let (addr, spans, bg) = l7inspect_benches::sidecar(target, tracing);
    (addr, bg, spans)
}

// === impl Version ===

impl Version {
    fn name(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::Http2 => "http2",
        }
    }
}

// === impl Client ===

impl Client {
    /// Connects to `addr` and starts a `version` client connection; must
    /// run on the client runtime, which drives the connection from then on.
    async fn connect(addr: SocketAddr, version: Version) -> Self {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).expect("TCP_NODELAY");
        let io = TokioIo::new(tcp);
        match version {
            Version::Http1 => {
                let (sender, conn) = http1::handshake(io).await.expect("HTTP/1.1 handshake");
                tokio::spawn(conn);
                Self::Http1(sender)
            }
            Version::Http2 => {
                let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                    .await
                    .expect("h2c handshake");
                tokio::spawn(conn);
                Self::Http2(sender)
            }
        }
    }

    /// Times `iters` exchanges in a row, each from sending the request to
    /// the end of the response body.
    async fn exchanges(&mut self, iters: u64, version: Version, backend: SocketAddr) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let req = request(version, backend);
            let start = Instant::now();
            let resp = self.send(req).await;
            let status = resp.status();
            let mut body = resp.into_body();
            let mut len = 0;
            while let Some(frame) = body.frame().await {
                if let Some(data) = frame.expect("read the body").data_ref() {
                    len += data.remaining();
                }
            }
            total += start.elapsed();
            assert_eq!(
                (status, len),
                (StatusCode::OK, BODY.len()),
                "the backend's answer"
            );
        }
        total
    }

    async fn send(&mut self, req: Request<Empty<Bytes>>) -> Response<Incoming> {
        match self {
            Self::Http1(s) => {
                s.ready().await.expect("connection open");
                s.send_request(req).await
            }
            Self::Http2(s) => {
                s.ready().await.expect("connection open");
                s.send_request(req).await
            }
        }
        .expect("a response")
    }
}

criterion_group! {
    name = benches;
    // Short by default so the whole bench suite stays a few minutes; the
    // command line (--warm-up-time, --measurement-time) still wins.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = http_proxy
}
criterion_main!(benches);
