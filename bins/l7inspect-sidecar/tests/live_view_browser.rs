//! The live view in a real browser: Debian's `chromium`, headless, renders
//! the admin page of a sidecar that served requests, and the rendered DOM
//! (after the page's own JavaScript fetched `/api/spans` and `/metrics`)
//! lists them; a link to a trace (`/#trace=ID`) opens its waterfall and
//! attributes, a Redis command the application made while serving the
//! request among them (its parent inferred). A screenshot of it is kept for
//! CI to show (`$L7INSPECT_ARTIFACTS/live-view.png`, else
//! `target/tmp/live-view.png`).
//!
//! Without `chromium` or `redis-server` the test prints `SKIPPED` (a failure
//! under `L7INSPECT_REQUIRE_TOOLS=1`, as in CI).

mod support;

use l7inspect_sidecar::Forward;
use l7inspect_test_support::{browser, eventually};
use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
};
use support::{forward_config, have, redis_server, start};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// A backend answering `500` for paths containing `fail`, else `200`. For
/// paths containing `traced` it first asks Redis (at the address `redis`
/// holds by then) for a key, as an application would: without forwarding
/// any trace context.
async fn backend(redis: Arc<OnceLock<SocketAddr>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let redis = redis.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                if head.contains("traced") {
                    let mut db = TcpStream::connect(redis.get().unwrap()).await.unwrap();
                    db.write_all(b"*2\r\n$3\r\nGET\r\n$5\r\nstock\r\n")
                        .await
                        .unwrap();
                    let mut nil = [0u8; 5];
                    db.read_exact(&mut nil).await.unwrap();
                    assert_eq!(&nil, b"$-1\r\n");
                }
                let status = if head.contains("fail") {
                    "500 Internal Server Error"
                } else {
                    "200 OK"
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                );
                let _ = conn.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

/// One request through the proxy; `traceparent` if given.
async fn request(proxy: SocketAddr, path: &str, traceparent: Option<&str>) {
    let mut conn = TcpStream::connect(proxy).await.unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nhost: shop.test\r\nconnection: close\r\n");
    if let Some(tp) = traceparent {
        req.push_str(&format!("traceparent: {tp}\r\n"));
    }
    req.push_str("\r\n");
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    conn.read_to_end(&mut resp).await.unwrap();
    assert!(resp.starts_with(b"HTTP/1.1 "), "{resp:?}");
}

/// `browser::dump_dom` off the runtime's threads (the sidecar serves the
/// page on them meanwhile).
async fn dump_dom(url: String) -> String {
    tokio::task::spawn_blocking(move || browser::dump_dom(&url))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_view_renders_requests_and_a_trace_in_chromium() {
    let test = "the_live_view_renders_requests_and_a_trace_in_chromium";
    if let Err(skip) = browser::need_chromium() {
        skip.report(test);
        return;
    }
    if !have(test, "redis-server", "--version") {
        return;
    }
    let redis = redis_server();
    let redis_via = Arc::new(OnceLock::new());
    let backend = backend(redis_via.clone()).await;
    let mut config = forward_config(backend);
    // The application's Redis connections go through the sidecar.
    config.outbound_forwards = vec![Forward {
        listen: "127.0.0.1:0".parse().unwrap(),
        target: redis.addr,
    }];
    let mut sidecar = start(config).await;
    redis_via
        .set(sidecar.addrs.outbound_forwards[0].listen)
        .unwrap();
    let proxy = sidecar.inbound();
    let traceparent = format!("00-{TRACE}-00f067aa0ba902b7-01");
    request(proxy, "/browser/first", None).await;
    request(proxy, "/browser/fail", None).await;
    request(proxy, "/browser/traced", Some(&traceparent)).await;
    let spans = sidecar.spans.clone();
    assert!(
        eventually(|| async { spans.len() == 4 }).await,
        "three requests and a Redis command in the ring"
    );
    let admin = sidecar.addrs.admin[0];

    // The request list, as the page's script rendered it.
    let dom = dump_dom(format!("http://{admin}/")).await;
    for path in ["/browser/first", "/browser/fail", "/browser/traced"] {
        assert!(
            dom.contains(&format!("<td class=\"path\" title=\"{path}\">{path}</td>")),
            "{path} not listed in the rendered page:\n{dom}"
        );
    }
    assert!(dom.contains(&format!("data-trace-id=\"{TRACE}\"")), "{dom}");
    assert!(
        dom.contains("<td class=\"err\">500</td>"),
        "the 500 is not marked:\n{dom}"
    );
    assert!(dom.contains("<div id=\"empty\" hidden=\"\">"), "{dom}");
    // The Redis command, listed with its protocol and the database's address.
    assert!(dom.contains("<td>redis</td><td>GET</td>"), "{dom}");
    assert!(dom.contains("<td>ok</td>"), "its status:\n{dom}");
    assert!(
        dom.contains(&format!("<td>{}</td>", redis.addr)),
        "the database's address:\n{dom}"
    );
    // The live figures came from /metrics.
    assert!(dom.contains("inbound p50 / p99"), "{dom}");

    // A link to the trace opens its waterfall and the span's attributes.
    let url = format!("http://{admin}/#trace={TRACE}");
    let dom = dump_dom(url.clone()).await;
    assert!(dom.contains("Trace: 2 spans seen here"), "{dom}");
    assert!(
        dom.contains(&format!(
            "<div id=\"trace-id\" class=\"mono\">{TRACE}</div>"
        )),
        "{dom}"
    );
    assert!(dom.contains("class=\"wf-row\""), "{dom}");
    assert!(
        dom.contains("<td>url.path</td><td class=\"mono\">/browser/traced</td>"),
        "{dom}"
    );
    assert!(
        dom.contains("<td>parent span id</td><td class=\"mono\">00f067aa0ba902b7</td>"),
        "{dom}"
    );
    // The Redis command sits under the request it was made for.
    assert!(
        // (indented one level: two no-break spaces, as serialized.)
        dom.contains("&nbsp;&nbsp;unknown_service · client · redis GET</div>"),
        "the Redis command under the request:\n{dom}"
    );

    // The screenshot CI keeps.
    let png = browser::artifacts_dir(env!("CARGO_TARGET_TMPDIR")).join("live-view.png");
    tokio::task::spawn_blocking(move || browser::screenshot(&url, &png))
        .await
        .unwrap();

    sidecar.shutdown();
}
