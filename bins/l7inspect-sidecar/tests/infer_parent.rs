//! Inferred parents, end to end: an application that forwards no trace
//! headers, behind one in-process sidecar, with real sockets on 127.0.0.1:
//!
//! ```text
//! client ──► sidecar inbound forward ──► app ──► sidecar outbound forward ──► backend (HTTP)
//!                                          └───► sidecar outbound forward ──► redis-server
//! ```
//!
//! For request `/r/{n}`, the app calls the backend's `/b/{n}` and Redis
//! `GET key:{n}`, with no trace context: what it received is dropped, as an
//! uninstrumented application does. One request at a time, each call is
//! the child of the inbound request's SERVER span (marked inferred) and the
//! backend sees that trace's context; with 8 at once, no call gets a wrong
//! parent, ambiguous ones are roots linked to candidates, and the counter
//! says so.

mod support;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use l7inspect_sidecar::{Forward, SidecarConfig};
use l7inspect_trace::span::SpanRecord;
use opentelemetry::trace::{SpanId, SpanKind};
use support::{Running, attr, free_port, have, redis_server, start};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

/// Only fires on a bug (a hang); never a timing assertion.
const GENEROUS: Duration = Duration::from_secs(60);

/// An HTTP/1.1 server answering 200 with `body` after `handle` ran.
async fn http_server<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(http::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = String> + Send,
{
    let listener = l7inspect_core::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            let handle = handle.clone();
            let svc = hyper::service::service_fn(move |req| {
                let handle = handle.clone();
                async move {
                    let body = handle(req).await;
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(
                        body,
                    ))))
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(io), svc)
                    .await;
            });
        }
    });
    addr
}

/// One HTTP/1.1 GET with no trace headers, `Connection: close`; the body.
async fn get(addr: SocketAddr, path: &str) -> String {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    timeout(GENEROUS, c.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// Redis `GET key` over a new connection; the raw reply.
async fn redis_get(addr: SocketAddr, key: &str) -> String {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()).as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = timeout(GENEROUS, c.read(&mut buf)).await.unwrap().unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// What the backend saw: (path, traceparent) per request.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// The sidecar, the app, the backend and Redis; what the backend saw.
struct World {
    sidecar: Running,
    inbound: SocketAddr,
    seen: Seen,
    _redis: support::Redis,
}

async fn world(app_delay: Duration) -> World {
    let redis = redis_server();
    let seen = Seen::default();
    let store = seen.clone();
    let backend = http_server(move |req: http::Request<Incoming>| {
        let store = store.clone();
        async move {
            let tp = req
                .headers()
                .get("traceparent")
                .map(|v| v.to_str().unwrap().to_owned());
            store
                .lock()
                .unwrap()
                .push((req.uri().path().to_owned(), tp));
            "stock".to_owned()
        }
    })
    .await;
    // Ports of the sidecar's two outbound forwards, chosen now: the app
    // needs them before the sidecar starts.
    let (out_http, out_redis) = (free_port(), free_port());
    let http_via: SocketAddr = ([127, 0, 0, 1], out_http).into();
    let redis_via: SocketAddr = ([127, 0, 0, 1], out_redis).into();
    // The app: drops whatever context it got, calls out, answers.
    let app = http_server(move |req: http::Request<Incoming>| async move {
        let n = req.uri().path().trim_start_matches("/r/").to_owned();
        tokio::time::sleep(app_delay).await;
        let stock = get(http_via, &format!("/b/{n}")).await;
        let cached = redis_get(redis_via, &format!("key:{n}")).await;
        tokio::time::sleep(app_delay).await;
        format!("{stock} {}", cached.trim_end())
    })
    .await;
    let config = SidecarConfig {
        transparent: false,
        admin_listen: vec!["127.0.0.1:0".parse().unwrap()],
        inbound_forwards: vec![Forward {
            listen: "127.0.0.1:0".parse().unwrap(),
            target: app,
        }],
        outbound_forwards: vec![
            Forward {
                listen: http_via,
                target: backend,
            },
            Forward {
                listen: redis_via,
                target: redis.addr,
            },
        ],
        ..SidecarConfig::default()
    };
    let sidecar = start(config).await;
    let inbound = sidecar.inbound();
    World {
        sidecar,
        inbound,
        seen,
        _redis: redis,
    }
}

/// The spans of the finished run, once `n` are in the ring.
async fn spans(w: &World, n: usize) -> Vec<Arc<SpanRecord>> {
    l7inspect_test_support::wait_for("spans", || {
        let spans = w.sidecar.spans.snapshot();
        (spans.len() >= n).then_some(spans)
    })
    .await
}

/// The request number of an HTTP span (`/r/{n}`, `/b/{n}`); Redis spans
/// carry no key, so they are matched through their parent.
fn number(span: &SpanRecord) -> Option<String> {
    let path = &span.http.as_ref()?.path;
    Some(path.rsplit('/').next()?.to_owned())
}

fn inferred(span: &SpanRecord) -> bool {
    attr(span, "l7inspect.parent.inferred").as_deref() == Some("true")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_at_a_time_makes_one_trace_across_services_and_redis() {
    let test = "one_request_at_a_time_makes_one_trace_across_services_and_redis";
    if !have(test, "redis-server", "--version") {
        return;
    }
    let w = world(Duration::ZERO).await;
    for n in 0..3 {
        let body = get(w.inbound, &format!("/r/{n}")).await;
        assert_eq!(body, "stock $-1");
    }
    // 3 SERVER spans, 3 HTTP CLIENT spans, 3 Redis CLIENT spans.
    let all = spans(&w, 9).await;
    let servers: Vec<_> = all.iter().filter(|s| s.kind == SpanKind::Server).collect();
    assert_eq!(servers.len(), 3);
    for server in &servers {
        let n = number(server).unwrap();
        let children: Vec<_> = all
            .iter()
            .filter(|s| s.kind == SpanKind::Client && s.parent_span_id == server.span_id)
            .collect();
        // The HTTP call and the Redis command, in its trace, inferred.
        assert_eq!(children.len(), 2, "children of /r/{n}: {children:#?}");
        for c in &children {
            assert_eq!(c.trace_id, server.trace_id);
            assert!(inferred(c), "{c:#?}");
        }
        let http = children.iter().find(|c| c.http.is_some()).unwrap();
        assert_eq!(number(http).unwrap(), n);
        let redis = children.iter().find(|c| c.db.is_some()).unwrap();
        assert_eq!(redis.name, "GET");
        // The backend continued the same trace: the context was injected.
        let seen = w.seen.lock().unwrap().clone();
        let (_, tp) = seen.iter().find(|(p, _)| *p == format!("/b/{n}")).unwrap();
        let tp = tp.as_deref().expect("a traceparent reached the backend");
        assert_eq!(tp, format!("00-{}-{}-01", server.trace_id, http.span_id));
    }
    assert!(
        servers.iter().all(|s| !inferred(s)),
        "SERVER spans are not inferred"
    );
    let inferred_total = w
        .sidecar
        .metric("l7inspect_parent_inference_total{outcome=\"inferred\"}");
    assert_eq!(inferred_total, Some(6.0));
    assert_eq!(
        w.sidecar
            .metric("l7inspect_parent_inference_total{outcome=\"ambiguous\"}"),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_get_no_wrong_parent_and_links() {
    let test = "concurrent_requests_get_no_wrong_parent_and_links";
    if !have(test, "redis-server", "--version") {
        return;
    }
    // Each request holds the app 50 ms before and after its calls, so that
    // 8 at once overlap (the checks hold whatever the overlap: a call is
    // either inferred with its own request as parent, or a root).
    let w = world(Duration::from_millis(50)).await;
    let clients: Vec<_> = (0..8)
        .map(|n| {
            let addr = w.inbound;
            tokio::spawn(async move { get(addr, &format!("/r/{n}")).await })
        })
        .collect();
    for c in clients {
        assert_eq!(timeout(GENEROUS, c).await.unwrap().unwrap(), "stock $-1");
    }
    let all = spans(&w, 24).await;
    let servers: Vec<_> = all.iter().filter(|s| s.kind == SpanKind::Server).collect();
    assert_eq!(servers.len(), 8);
    let clients: Vec<_> = all.iter().filter(|s| s.kind == SpanKind::Client).collect();
    assert_eq!(clients.len(), 16);
    let mut ambiguous = 0;
    for c in &clients {
        if inferred(c) {
            // Inferred: its parent is a SERVER span of this run, and for an
            // HTTP call, the very request it was made for.
            let parent = servers
                .iter()
                .find(|s| s.span_id == c.parent_span_id)
                .expect("an inferred parent is an inbound request");
            assert_eq!(c.trace_id, parent.trace_id);
            if c.http.is_some() {
                assert_eq!(number(c), number(parent), "a wrong parent: {c:#?}");
            }
        } else {
            // Not inferred: a root, never a child of a guess.
            assert_eq!(c.parent_span_id, SpanId::INVALID, "{c:#?}");
            assert!(servers.iter().all(|s| s.trace_id != c.trace_id));
            if !c.links.is_empty() {
                ambiguous += 1;
                assert!(c.links.len() <= l7inspect_trace::infer::DEFAULT_MAX_LINKS);
                for l in &c.links {
                    assert!(
                        servers
                            .iter()
                            .any(|s| s.span_id == l.span_id && s.trace_id == l.trace_id),
                        "a link to an inbound request"
                    );
                }
            }
        }
    }
    assert!(
        ambiguous > 0,
        "8 overlapping requests: some calls were ambiguous"
    );
    let count = |outcome: &str| {
        w.sidecar
            .metric(&format!(
                "l7inspect_parent_inference_total{{outcome=\"{outcome}\"}}"
            ))
            .unwrap()
    };
    assert_eq!(count("ambiguous"), f64::from(ambiguous));
    assert_eq!(count("inferred") + count("ambiguous") + count("none"), 16.0);
}
