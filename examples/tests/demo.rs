//! `examples/demo.rs` as a user runs it: it prints the live view's address,
//! and its span API soon holds traces that cross three services (frontend
//! SERVER → frontend CLIENT → catalog SERVER, and → pricing SERVER), each
//! span under its own service, with catalog's Redis command under its
//! request (its parent inferred: the demo's catalog forwards no context to
//! Redis); `/metrics` counts the redis connections `kv` gets, their
//! commands and the errors the load meets; on SIGINT it stops and exits 0.
//!
//! `cargo test` builds the examples; the binary is found beside this test's.

use l7inspect_test_support::{KillOnDrop, browser, example_bin, wait_for_blocking};
use serde_json::Value;
use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    time::Duration,
};

/// `GET path` from the admin server: the status line and the body.
fn get(admin: &str, path: &str) -> (String, String) {
    let mut c = TcpStream::connect(admin).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nhost: {admin}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("a response head");
    let status = head.lines().next().unwrap_or_default().to_owned();
    // Only the streamed tap is chunked; the rest have a content-length.
    assert!(!head.to_ascii_lowercase().contains("chunked"), "{head}");
    (status, body.to_owned())
}

fn get_json(admin: &str, path: &str) -> Value {
    let (status, body) = get(admin, path);
    assert!(status.contains(" 200 "), "{path}: {status}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

fn field<'a>(span: &'a Value, name: &str) -> &'a str {
    span[name].as_str().unwrap_or_default()
}

fn is_server(span: &Value, service: &str) -> bool {
    field(span, "service") == service && field(span, "kind") == "server"
}

/// In `spans`, a trace rooted at a frontend SERVER span with a catalog
/// SERVER span (with a Redis command under it) and a pricing SERVER span
/// whose parent chains lead to it: the trace id and the three spans' ids.
fn crossing_trace(spans: &[Value]) -> Option<(String, [String; 3])> {
    let by_id: HashMap<&str, &Value> = spans.iter().map(|s| (field(s, "span_id"), s)).collect();
    // The ancestors of `span` among `spans`, nearest first.
    let ancestors = |span: &Value| {
        let mut chain = Vec::new();
        let mut at = span;
        while let Some(parent) = at["parent_span_id"].as_str().and_then(|p| by_id.get(p)) {
            chain.push(*parent);
            at = parent;
        }
        chain
    };
    for root in spans.iter().filter(|s| is_server(s, "frontend")) {
        if !root["parent_span_id"].is_null() {
            continue;
        }
        let under_root = |service: &str| {
            spans
                .iter()
                .filter(|s| is_server(s, service))
                .find(|s| {
                    let chain = ancestors(s);
                    // Through the frontend's CLIENT span, to the root.
                    chain.first().is_some_and(|p| {
                        field(p, "service") == "frontend" && field(p, "kind") == "client"
                    }) && chain.last() == Some(&root)
                })
                .map(|s| field(s, "span_id").to_owned())
        };
        // Catalog's Redis GET, its parent inferred (catalog sends no
        // context to Redis): the child of catalog's request.
        let redis_under = |catalog: &String| {
            spans.iter().any(|s| {
                field(s, "service") == "catalog"
                    && field(s, "kind") == "client"
                    && field(s, "protocol") == "redis"
                    && field(s, "parent_span_id") == catalog
                    && s["attributes"]["l7inspect.parent.inferred"] == Value::Bool(true)
            })
        };
        if let (Some(catalog), Some(pricing)) = (under_root("catalog"), under_root("pricing"))
            && redis_under(&catalog)
        {
            let ids = [field(root, "span_id").to_owned(), catalog, pricing];
            return Some((field(root, "trace_id").to_owned(), ids));
        }
    }
    None
}

#[test]
fn demo_shows_traces_across_services_and_stops_on_sigint() {
    let bin = example_bin("demo");
    assert!(bin.exists(), "{} not built", bin.display());
    let child = Command::new(&bin)
        .args(["--duration", "60", "--admin", "127.0.0.1:0"])
        // Only the live view: nothing to export to.
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_EXPORTER_ZIPKIN_ENDPOINT")
        .env_remove("OTEL_TRACES_EXPORTER")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = KillOnDrop(child);
    let mut stdout = BufReader::new(guard.0.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let admin = line
        .trim_end()
        .strip_prefix("live view: http://")
        .and_then(|rest| rest.strip_suffix('/'))
        .unwrap_or_else(|| panic!("first line: {line:?}"))
        .to_owned();
    line.clear();
    stdout.read_line(&mut line).unwrap();
    assert!(line.starts_with("running: "), "{line}");

    let (trace_id, [root, catalog, pricing]) =
        wait_for_blocking("a trace across frontend, catalog and pricing", || {
            let spans = get_json(&admin, "/api/spans?limit=500");
            crossing_trace(spans.as_array()?)
        });

    // The trace by its id: the same spans, each under its own service.
    let trace = get_json(&admin, &format!("/api/traces/{trace_id}"));
    let trace = trace.as_array().unwrap();
    let service_of = |id: &str| {
        let span = trace
            .iter()
            .find(|s| field(s, "span_id") == id)
            .unwrap_or_else(|| panic!("span {id} not in {trace:#?}"));
        assert_eq!(field(span, "trace_id"), trace_id);
        field(span, "service").to_owned()
    };
    assert_eq!(service_of(&root), "frontend");
    assert_eq!(service_of(&catalog), "catalog");
    assert_eq!(service_of(&pricing), "pricing");
    assert!(
        trace.iter().any(|s| field(s, "service") == "frontend"
            && field(s, "kind") == "client"
            && field(s, "name") == "demo.Catalog/GetItem"),
        "the frontend's gRPC CLIENT span: {trace:#?}"
    );

    // The redis connections, and errors: pricing's 503s, the frontend's
    // 502s, catalog's NOT_FOUND (5).
    let series = |metrics: &str, name: &str, label: &str| {
        metrics
            .lines()
            .any(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
    };
    wait_for_blocking("the redis and error series in /metrics", || {
        let (status, metrics) = get(&admin, "/metrics");
        assert!(status.contains(" 200 "), "{status}");
        // kv's inbound proxy and catalog's outbound one.
        let redis = ["inbound", "outbound"].iter().all(|direction| {
            metrics.lines().any(|l| {
                l.starts_with("l7inspect_tcp_connections_total{")
                    && l.contains(&format!("direction=\"{direction}\""))
                    && l.contains("protocol=\"redis\"")
            })
        });
        // One exposition: every family described once, as OpenMetrics
        // parsers (Prometheus's) require.
        let mut types: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("# TYPE "))
            .collect();
        let n = types.len();
        types.sort_unstable();
        types.dedup();
        assert_eq!(types.len(), n, "a family described twice:\n{metrics}");
        let server = "http_server_request_duration_seconds_count";
        let errors = series(&metrics, server, "http_response_status_code=\"503\"")
            && series(&metrics, server, "http_response_status_code=\"502\"")
            && series(
                &metrics,
                "rpc_server_duration_seconds_count",
                "rpc_grpc_status_code=\"5\"",
            );
        (redis && errors).then_some(())
    });

    // The live view in a browser (headless Chromium): the trace's link
    // opens its waterfall with a row per span, under each service's name.
    match browser::need_chromium() {
        Err(skip) => skip.report("demo_shows_traces_across_services_and_stops_on_sigint (browser)"),
        Ok(()) => {
            let url = format!("http://{admin}/#trace={trace_id}");
            let dom = browser::dump_dom(&url);
            for label in [
                "frontend · server · GET",
                "frontend · client · demo.Catalog/GetItem",
                "catalog · server · demo.Catalog/GetItem",
                "catalog · client · redis GET",
                "pricing · server · GET",
            ] {
                assert!(
                    dom.contains(label),
                    "no waterfall row {label:?} in the rendered page:\n{dom}"
                );
            }
            for id in [&root, &catalog, &pricing] {
                assert!(
                    dom.contains(&format!("data-span-id=\"{id}\"")),
                    "{id}: {dom}"
                );
            }
            let png =
                browser::artifacts_dir(env!("CARGO_TARGET_TMPDIR")).join("demo-live-view.png");
            browser::screenshot(&url, &png);
        }
    }

    // kv's side of the Redis commands: SERVER spans (roots: Redis carries
    // no context), and the commands in /metrics.
    let spans = get_json(
        &admin,
        "/api/spans?limit=500&protocol=redis&direction=inbound",
    );
    assert!(
        spans
            .as_array()
            .unwrap()
            .iter()
            .any(|s| field(s, "service") == "kv"
                && field(s, "name") == "GET"
                && s["parent_span_id"].is_null()),
        "{spans:#}"
    );
    let (_, metrics) = get(&admin, "/metrics");
    for series in [
        "db_client_operation_duration_seconds_count{db_system_name=\"redis\",db_operation_name=\"GET\"",
        "db_server_operation_duration_seconds_count{db_system_name=\"redis\",db_operation_name=\"GET\"",
        "l7inspect_parent_inference_total{outcome=\"inferred\"}",
    ] {
        assert!(
            metrics.contains(series),
            "{series} not in /metrics:\n{metrics}"
        );
    }

    let pid = guard.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = wait_for_blocking("the demo to exit after SIGINT", || {
        guard.0.try_wait().unwrap()
    });
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "{status}: {rest}");
    assert!(
        rest.lines().any(|l| l.starts_with("stopped after ")),
        "{rest}"
    );
}
