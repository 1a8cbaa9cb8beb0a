//! Redis command spans, end to end, with a real redis-server and real
//! clients (redis-cli, redis-benchmark pipelined, `redis-cli --pipe`, and a
//! raw subscriber) through an in-process sidecar on 127.0.0.1:
//!
//! ```text
//! client ──► sidecar (outbound forward: CLIENT spans; inbound: SERVER) ──► redis-server
//!   sidecar ──► test-support's collector (OTLP/HTTP, and Zipkin checked against its spec)
//! ```
//!
//! Every test checks that the bytes passed unchanged (the clients' own
//! answers) as well as the spans and histograms. Attribute keys are spelled
//! out: the test checks the wire names of the semantic conventions.

mod support;

use std::{net::SocketAddr, process::Command, time::Duration};

use l7inspect_sidecar::{Forward, SidecarConfig};
use l7inspect_test_support::{
    collector::{Collector, OtlpSpan, Receiver},
    eventually,
};
use l7inspect_trace::export::{ExportConfig, OtlpConfig, OtlpProtocol};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind as ProtoSpanKind;
use support::{Running, have, redis_server, start};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    time::timeout,
};

/// Only fires on a bug (a hang); never a timing assertion.
const GENEROUS: Duration = Duration::from_secs(60);

/// A sidecar with one outbound forward to `redis`, exporting OTLP/HTTP and
/// Zipkin to `collector` 50 ms after a span ends.
async fn sidecar(redis: SocketAddr, collector: &Collector, config: SidecarConfig) -> Running {
    let mut config = SidecarConfig {
        transparent: false,
        admin_listen: vec!["127.0.0.1:0".parse().unwrap()],
        outbound_forwards: vec![Forward {
            listen: "127.0.0.1:0".parse().unwrap(),
            target: redis,
        }],
        ..config
    };
    config.tracing.export = support::export_to(collector);
    start(config).await
}

fn outbound(s: &Running) -> SocketAddr {
    s.addrs.outbound_forwards[0].listen
}

/// Runs redis-cli against `addr` with `args`, `stdin` as its input; its
/// standard output. Fails the test when it fails.
fn redis_cli(addr: SocketAddr, args: &[&str], stdin: &[u8]) -> String {
    let out = support::run_with_input(
        Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
            .args(args),
        stdin,
    );
    assert!(
        out.status.success(),
        "redis-cli {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn named<'a>(spans: &'a [OtlpSpan], name: &str) -> Vec<&'a OtlpSpan> {
    spans.iter().filter(|s| s.span.name == name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_commands_become_client_spans() {
    let test = "redis_cli_commands_become_client_spans";
    if !have(test, "redis-server", "--version") || !have(test, "redis-cli", "--version") {
        return;
    }
    let redis = redis_server();
    let collector = Collector::start();
    let s = sidecar(redis.addr, &collector, SidecarConfig::default()).await;
    let addr = outbound(&s);
    // One connection: redis-cli reads its commands from stdin.
    let script = b"SET greeting hello\nGET greeting\nLPUSH greeting x\nSELECT 3\n\
        SET n 1\nMULTI\nINCR n\nINCR n\nEXEC\nGET missing\n";
    let out = tokio::task::spawn_blocking(move || redis_cli(addr, &[], script))
        .await
        .unwrap();
    // The bytes passed unchanged: redis-cli printed the server's answers.
    assert_eq!(
        out,
        "OK\nhello\nWRONGTYPE Operation against a key holding the wrong kind of value\n\n\
         OK\nOK\nOK\nQUEUED\nQUEUED\n2\n3\n\n"
    );
    // A command is recorded once its reply is written to the client, which
    // may read it (and exit) first: wait for the last one.
    s.wait_metric(&redis_count("client", "GET", ""), 2.0).await;
    let metrics = s.metrics();
    let spans = support::finish_export(s, &collector, 10).await;
    let ops: Vec<_> = spans
        .iter()
        .filter(|s| s.str_attr("db.system.name") == Some("redis"))
        .map(|s| s.span.name.as_str())
        .filter(|n| *n != "COMMAND")
        .collect();
    assert_eq!(
        ops,
        [
            "SET", "GET", "LPUSH", "SELECT", "SET", "MULTI", "INCR", "INCR", "EXEC", "GET"
        ]
    );
    for span in named(&spans, "SET")
        .iter()
        .chain(named(&spans, "GET").iter())
    {
        assert_eq!(span.kind(), ProtoSpanKind::Client);
        assert_eq!(
            span.str_attr("db.operation.name"),
            Some(span.span.name.as_str())
        );
        assert_eq!(span.str_attr("server.address"), Some("127.0.0.1"));
        assert_eq!(span.int_attr("server.port"), Some(redis.addr.port().into()));
        assert_eq!(span.str_attr("network.peer.address"), Some("127.0.0.1"));
        assert!(span.parent_id().is_empty(), "a root");
        assert!(span.span.end_time_unix_nano >= span.span.start_time_unix_nano);
    }
    // The database index: 0 until SELECT 3 succeeded.
    let sets = named(&spans, "SET");
    assert_eq!(sets[0].str_attr("db.namespace"), Some("0"));
    assert_eq!(sets[1].str_attr("db.namespace"), Some("3"));
    let lpush = named(&spans, "LPUSH")[0];
    assert!(lpush.is_error());
    assert_eq!(lpush.str_attr("db.response.status_code"), Some("WRONGTYPE"));
    assert_eq!(lpush.str_attr("error.type"), Some("WRONGTYPE"));
    assert!(
        !named(&spans, "GET")[1].is_error(),
        "a nil reply is no error"
    );
    // The histogram, one entry per command, sampled or not.
    let count = |op: &str, error: &str| {
        l7inspect_test_support::prom::value(&metrics, &redis_count("client", op, error))
    };
    assert_eq!(count("SET", ""), Some(2.0));
    assert_eq!(count("INCR", ""), Some(2.0));
    assert_eq!(count("LPUSH", "WRONGTYPE"), Some(1.0));
    // Zipkin got them too, under the same names.
    let zipkin = collector.zipkin_spans();
    assert!(
        zipkin
            .iter()
            .any(|z| z["name"] == "LPUSH" && z["tags"]["db.response.status_code"] == "WRONGTYPE")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_take_their_own_replies() {
    let test = "pipelines_take_their_own_replies";
    if !have(test, "redis-server", "--version")
        || !have(test, "redis-cli", "--version")
        || !have(test, "redis-benchmark", "--version")
    {
        return;
    }
    let redis = redis_server();
    let collector = Collector::start();
    let s = sidecar(redis.addr, &collector, SidecarConfig::default()).await;
    let addr = outbound(&s);
    // redis-benchmark, 16 commands in flight per connection.
    let port = addr.port().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("redis-benchmark")
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(["-P", "16", "-n", "4000", "-c", "4", "-t", "set,get", "-q"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Mass insertion: 3000 commands written before any reply is read.
    let mut mass = Vec::new();
    for i in 0..3000 {
        let key = format!("key:{i}");
        mass.extend_from_slice(
            format!("*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n$1\r\nv\r\n", key.len()).as_bytes(),
        );
    }
    let out = tokio::task::spawn_blocking(move || redis_cli(addr, &["--pipe"], &mass))
        .await
        .unwrap();
    assert!(out.contains("errors: 0, replies: 3000"), "{out}");
    let dbsize = tokio::task::spawn_blocking(move || redis_cli(addr, &["DBSIZE"], b""))
        .await
        .unwrap();
    // key:__rand_int__ of the benchmark, and the 3000.
    assert_eq!(dbsize.trim(), "3001");
    let series = |op: &str| redis_count("client", op, "");
    let count = |op: &str| s.metric(&series(op)).unwrap_or(0.0);
    // A command is recorded once its reply is written to the client, which
    // may read it (and exit) first: wait for the last ones.
    s.wait_metric(&series("DBSIZE"), 1.0).await;
    // Every command of the benchmark counted, each with its own reply (an
    // error would show as error_type; a reply taken by the wrong command
    // would leave commands unanswered, or stop the parser).
    s.wait_metric(&series("GET"), 4000.0).await;
    // redis-cli --pipe ends with an ECHO, to know when the last reply came;
    // commands past the 1,024 waiting are untracked, counted apart.
    let untracked = || {
        s.metric("l7inspect_db_commands_untracked_total{db_system_name=\"redis\"}")
            .unwrap()
    };
    let all_sets =
        eventually(|| async { count("SET") + count("ECHO") + untracked() == 4000.0 + 3001.0 })
            .await;
    assert!(all_sets, "{}", s.metrics());
    assert!(untracked() > 0.0);
    assert_eq!(
        s.metric("l7inspect_db_parse_stopped_total{db_system_name=\"redis\",reason=\"malformed\"}"),
        Some(0.0)
    );
    let metrics = s.metrics();
    assert!(
        !metrics.contains("error_type=\"connection_closed\""),
        "{metrics}"
    );
    drop(support::finish_export(s, &collector, 1).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_is_one_span_and_messages_none() {
    let test = "a_subscription_is_one_span_and_messages_none";
    if !have(test, "redis-server", "--version") || !have(test, "redis-cli", "--version") {
        return;
    }
    let redis = redis_server();
    let collector = Collector::start();
    let s = sidecar(redis.addr, &collector, SidecarConfig::default()).await;
    let addr = outbound(&s);
    let mut sub = BufReader::new(TcpStream::connect(addr).await.unwrap());
    sub.get_mut()
        .write_all(b"*3\r\n$9\r\nSUBSCRIBE\r\n$4\r\nnews\r\n$5\r\nsport\r\n")
        .await
        .unwrap();
    // Two confirmations: 3 lines of array, 6 lines of bulk strings, 2 integers.
    let mut lines = Vec::new();
    for _ in 0..(2 * 6) {
        let mut line = String::new();
        timeout(GENEROUS, sub.read_line(&mut line))
            .await
            .unwrap()
            .unwrap();
        lines.push(line);
    }
    assert_eq!(lines[11], ":2\r\n");
    for i in 0..3 {
        let msg = format!("PUBLISH news m{i}\n");
        let n = tokio::task::spawn_blocking(move || redis_cli(addr, &[], msg.as_bytes()))
            .await
            .unwrap();
        assert_eq!(n.trim(), "1");
        // The message reached the subscriber, unchanged.
        let mut got = String::new();
        for _ in 0..7 {
            timeout(GENEROUS, sub.read_line(&mut got))
                .await
                .unwrap()
                .unwrap();
        }
        assert_eq!(
            got,
            format!("*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nm{i}\r\n")
        );
    }
    drop(sub);
    s.wait_metric(&redis_count("client", "PUBLISH", ""), 3.0)
        .await;
    let spans = support::finish_export(s, &collector, 4).await;
    let redis_spans: Vec<_> = spans
        .iter()
        .filter(|s| s.str_attr("db.system.name") == Some("redis") && s.span.name != "COMMAND")
        .map(|s| (s.span.name.as_str(), s.is_error()))
        .collect();
    assert_eq!(
        redis_spans,
        [
            ("SUBSCRIBE", false),
            ("PUBLISH", false),
            ("PUBLISH", false),
            ("PUBLISH", false)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_commands_are_server_spans_and_large_values_pass() {
    let test = "inbound_commands_are_server_spans_and_large_values_pass";
    if !have(test, "redis-server", "--version") || !have(test, "redis-cli", "--version") {
        return;
    }
    let redis = redis_server();
    let collector = Collector::start();
    let mut config = support::forward_config(redis.addr);
    config.tracing.export = ExportConfig {
        otlp: Some(OtlpConfig::new(
            collector.endpoint(Receiver::OtlpHttp),
            OtlpProtocol::HttpProtobuf,
        )),
        batch_delay: Duration::from_millis(50),
        ..ExportConfig::default()
    };
    let s = start(config).await;
    let addr = s.inbound();
    // A 4 MiB value in and out: passed, not kept.
    let value: Vec<u8> = (0..4 << 20).map(|i| b'a' + (i % 26) as u8).collect();
    let expected = value.clone();
    let got = tokio::task::spawn_blocking(move || {
        redis_cli(addr, &["-x", "SET", "big"], &value);
        redis_cli(addr, &["--no-raw", "STRLEN", "big"], b"");
        redis_cli(addr, &["GET", "big"], b"")
    })
    .await
    .unwrap();
    assert_eq!(got.trim_end().as_bytes(), &expected[..]);
    s.wait_metric(&redis_count("server", "GET", ""), 1.0).await;
    let spans = support::finish_export(s, &collector, 3).await;
    let ops: Vec<_> = spans
        .iter()
        .filter(|s| s.str_attr("db.system.name") == Some("redis") && s.span.name != "COMMAND")
        .map(|s| (s.span.name.as_str(), s.kind()))
        .collect();
    assert_eq!(
        ops,
        [
            ("SET", ProtoSpanKind::Server),
            ("STRLEN", ProtoSpanKind::Server),
            ("GET", ProtoSpanKind::Server)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parsers_can_be_turned_off() {
    let test = "parsers_can_be_turned_off";
    if !have(test, "redis-server", "--version") || !have(test, "redis-cli", "--version") {
        return;
    }
    let redis = redis_server();
    let collector = Collector::start();
    let mut config = SidecarConfig::default();
    config.db.redis = false;
    let s = sidecar(redis.addr, &collector, config).await;
    let addr = outbound(&s);
    let out = tokio::task::spawn_blocking(move || redis_cli(addr, &["PING"], b""))
        .await
        .unwrap();
    assert_eq!(out, "PONG\n");
    // The connection is counted as redis all the same.
    s.wait_metric(
        "l7inspect_tcp_connections_total{direction=\"outbound\",protocol=\"redis\"}",
        1.0,
    )
    .await;
    let metrics = s.metrics();
    assert!(!metrics.contains("db_operation_name=\"PING\""), "{metrics}");
    let mut s = s;
    s.shutdown();
    timeout(GENEROUS, s.handle).await.unwrap().unwrap();
    assert!(collector.otlp_spans(Receiver::OtlpHttp).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_library_pipeline_takes_its_own_replies() {
    let test = "a_client_library_pipeline_takes_its_own_replies";
    if !have(test, "redis-server", "--version") {
        return;
    }
    let redis = redis_server();
    let collector = Collector::start();
    let s = sidecar(redis.addr, &collector, SidecarConfig::default()).await;
    let addr = outbound(&s);
    // redis-rs, as an application uses it: a pipeline of five commands,
    // one of them failing, written at once, the replies read after.
    let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let (set, got, pushed, len): (String, String, i64, i64) = redis::pipe()
        .set("fruit", "fig")
        .get("fruit")
        .rpush("basket", "pear")
        .llen("basket")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(
        (set.as_str(), got.as_str(), pushed, len),
        ("OK", "fig", 1, 1)
    );
    let err = redis::pipe()
        .incr("counter", 1)
        .cmd("LPUSH")
        .arg("fruit")
        .arg("x")
        .query_async::<(i64, i64)>(&mut con)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("WRONGTYPE"));
    drop(con);
    let spans = support::finish_export(s, &collector, 7).await;
    let ops: Vec<_> = spans
        .iter()
        .filter(|s| s.str_attr("db.system.name") == Some("redis"))
        .map(|s| (s.span.name.as_str(), s.str_attr("error.type")))
        .filter(|(n, _)| *n != "CLIENT" && *n != "HELLO")
        .collect();
    assert_eq!(
        ops,
        [
            ("SET", None),
            ("GET", None),
            ("RPUSH", None),
            ("LLEN", None),
            // redis-rs sends `incr(key, 1)` as INCRBY.
            ("INCRBY", None),
            ("LPUSH", Some("WRONGTYPE")),
        ]
    );
}

/// The series counting Redis commands of one operation and error type, on
/// the `side` ("client" outbound, "server" inbound).
fn redis_count(side: &str, op: &str, error: &str) -> String {
    format!(
        "db_{side}_operation_duration_seconds_count{{db_system_name=\"redis\",db_operation_name=\"{op}\",error_type=\"{error}\"}}"
    )
}
