//! deploy/grafana against the sidecar's real `/metrics`: every metric and
//! label name that the dashboard's and the alert rules' PromQL use must be
//! one the sidecar exposes, and every metric family it exposes must be on
//! the dashboard. The scrape comes from a sidecar in this process after one
//! HTTP/1 request and one gRPC call each way, a failed upstream connect, a
//! refused connection and an idle timeout, so that the histograms and the
//! labelled counters have series (prometheus-client leaves a family out of
//! the text, `# TYPE` line included, until it has one).
//!
//! Also checked here: the dashboard's shape (valid JSON, a current schema
//! version, every query on the `${datasource}` variable, `targets` with an
//! `expr` in every panel) and the rules' (each alert has `for`, a severity,
//! a summary and a description). That the PromQL parses and the alerts fire
//! at their thresholds is deploy/grafana/check.sh's part (promtool).

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use l7inspect_sidecar::Forward;
use l7inspect_test_support::{TempDir, closed_port, eventually, pki::TestCa, prom, silent_server};
use l7inspect_tls::{InterceptConfig, TerminateConfig, TerminatePort};
use rustls_pki_types::ServerName;
use serde_json::Value;
use std::{
    collections::{BTreeSet, HashMap, HashSet},
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    time::Duration,
};
use support::{forward_config, start};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// The datasource reference every query must use: the dashboard's
/// `datasource` variable, so that it works with any Prometheus.
const DATASOURCE_UID: &str = "${datasource}";

/// Labels Prometheus adds to every scraped series (target labels).
const TARGET_LABELS: [&str; 2] = ["job", "instance"];

fn deploy_file(name: &str) -> String {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "../../deploy/grafana", name]
        .iter()
        .collect();
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// --- PromQL: the metric and label names an expression uses ------------------

/// Functions and aggregation operators: never metric names.
const FUNCTIONS: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "avg",
    "avg_over_time",
    "bottomk",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "count",
    "count_over_time",
    "count_values",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "delta",
    "deriv",
    "exp",
    "floor",
    "group",
    "histogram_quantile",
    "holt_winters",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "ln",
    "log10",
    "log2",
    "max",
    "max_over_time",
    "min",
    "min_over_time",
    "minute",
    "month",
    "predict_linear",
    "present_over_time",
    "quantile",
    "quantile_over_time",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sort",
    "sort_desc",
    "sqrt",
    "stddev",
    "stddev_over_time",
    "stdvar",
    "stdvar_over_time",
    "sum",
    "sum_over_time",
    "time",
    "timestamp",
    "topk",
    "vector",
    "year",
];

/// Keywords whose parenthesised list names labels.
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Other keywords.
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
];

#[derive(Debug, PartialEq)]
enum Tok<'a> {
    Ident(&'a str),
    /// A string literal, a number or duration, or a Grafana variable
    /// (`$job`, `${datasource}`, `$__rate_interval`): never a name.
    Literal,
    Punct(char),
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn lex(expr: &str) -> Result<Vec<Tok<'_>>, String> {
    let mut toks = Vec::new();
    let mut chars = expr.char_indices().peekable();
    // The end (byte offset) of the run of characters from `start` that
    // satisfy `f`.
    let run = |start: usize, f: fn(char) -> bool| {
        expr[start..]
            .char_indices()
            .find(|&(_, c)| !f(c))
            .map_or(expr.len(), |(i, _)| start + i)
    };
    while let Some((i, c)) = chars.next() {
        let end = match c {
            c if c.is_whitespace() => continue,
            '#' => expr[i..].find('\n').map_or(expr.len(), |n| i + n),
            '"' | '\'' | '`' => {
                let mut escaped = false;
                let close = expr[i + 1..].char_indices().find(|&(_, d)| {
                    let done = d == c && !escaped;
                    escaped = c != '`' && d == '\\' && !escaped;
                    done
                });
                let (j, _) = close.ok_or_else(|| format!("unclosed string in {expr:?}"))?;
                toks.push(Tok::Literal);
                i + 1 + j + 1
            }
            '$' => {
                toks.push(Tok::Literal);
                if expr[i + 1..].starts_with('{') {
                    let j = expr[i..]
                        .find('}')
                        .ok_or_else(|| format!("unclosed ${{ in {expr:?}"))?;
                    i + j + 1
                } else {
                    run(i + 1, is_ident_char)
                }
            }
            c if c.is_ascii_digit()
                || (c == '.' && chars.peek().is_some_and(|(_, d)| d.is_ascii_digit())) =>
            {
                toks.push(Tok::Literal);
                run(i, |c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
            }
            c if is_ident_start(c) => {
                let end = run(i, is_ident_char);
                toks.push(Tok::Ident(&expr[i..end]));
                end
            }
            c => {
                toks.push(Tok::Punct(c));
                i + c.len_utf8()
            }
        };
        while chars.peek().is_some_and(|&(j, _)| j < end) {
            chars.next();
        }
    }
    Ok(toks)
}

/// The names an expression uses.
#[derive(Debug, Default, PartialEq)]
struct Refs {
    metrics: BTreeSet<String>,
    labels: BTreeSet<String>,
}

/// The metric names (identifiers that are not functions, keywords or
/// labels) and label names (in `{...}` matchers and `by (...)`-style lists)
/// of a PromQL expression. Range and subquery brackets (`[5m:1m]`),
/// strings and Grafana variables are skipped. An identifier called like a
/// function that is not one is an error (a typo would otherwise pass as a
/// metric name).
fn promql_refs(expr: &str) -> Result<Refs, String> {
    let toks = lex(expr)?;
    let mut refs = Refs::default();
    let mut i = 0;
    // Skips to the token matching `close`; calls `f` on the identifiers on
    // the way.
    let skip_to = |i: &mut usize, close: char, f: &mut dyn FnMut(&str)| -> Result<(), String> {
        loop {
            *i += 1;
            match toks.get(*i) {
                None => return Err(format!("missing {close:?} in {expr:?}")),
                Some(Tok::Punct(c)) if *c == close => return Ok(()),
                Some(Tok::Ident(w)) => f(w),
                Some(_) => {}
            }
        }
    };
    while i < toks.len() {
        let next_is_paren = toks.get(i + 1) == Some(&Tok::Punct('('));
        match toks[i] {
            Tok::Punct('{') => skip_to(&mut i, '}', &mut |w| {
                refs.labels.insert(w.to_owned());
            })?,
            Tok::Punct('[') => skip_to(&mut i, ']', &mut |_| {})?,
            Tok::Ident(w) => {
                let lower = w.to_ascii_lowercase();
                let lower = lower.as_str();
                if GROUPING.contains(&lower) {
                    if next_is_paren {
                        i += 1;
                        skip_to(&mut i, ')', &mut |w| {
                            refs.labels.insert(w.to_owned());
                        })?;
                    }
                } else if FUNCTIONS.contains(&lower) || KEYWORDS.contains(&lower) {
                } else if next_is_paren {
                    return Err(format!("{w}(...) is not a PromQL function, in {expr:?}"));
                } else {
                    refs.metrics.insert(w.to_owned());
                }
            }
            _ => {}
        }
        i += 1;
    }
    Ok(refs)
}

#[test]
fn promql_refs_finds_metric_and_label_names() {
    let expr = r#"
        histogram_quantile(0.99, sum by (le, server_address) (
          rate(http_client_request_duration_seconds_bucket{job=~"$job", http_response_status_code!="101"}[$__rate_interval])
        )) > 1
        and on (job, instance) group by (job, instance) (l7inspect_spans_dropped_total)
        or max_over_time(process_start_time_seconds[1h:5m]) offset 5m # a comment: not_a_metric
        unless label_replace(up, "x", "not_a_metric{", "y", "(.*)") * 1e3 / SUM(foo:bar_total{instance='it\'s'})
    "#;
    let refs = promql_refs(expr).unwrap();
    let set = |names: &[&str]| names.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        refs,
        Refs {
            metrics: set(&[
                "foo:bar_total",
                "http_client_request_duration_seconds_bucket",
                "l7inspect_spans_dropped_total",
                "process_start_time_seconds",
                "up",
            ]),
            labels: set(&[
                "http_response_status_code",
                "instance",
                "job",
                "le",
                "server_address"
            ]),
        }
    );
    assert!(promql_refs("rat(x[5m])").is_err(), "a misspelt function");
    assert!(promql_refs("sum(x{a=\"b}").is_err(), "an unclosed string");
}

// --- the scrape ---------------------------------------------------------------

/// What a `/metrics` text exposes.
#[derive(Debug, Default)]
struct Exposed {
    /// `# TYPE` families and their types.
    families: HashMap<String, String>,
    /// Sample names (`x_total`, `y_bucket`...).
    samples: HashSet<String>,
    /// Label names of any sample.
    labels: HashSet<String>,
}

impl Exposed {
    fn parse(text: &str) -> Exposed {
        let mut exposed = Exposed::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
                exposed.families.insert(name.into(), kind.into());
            } else if !line.starts_with('#') && !line.is_empty() {
                let end = line.find(['{', ' ']).expect("a sample line");
                exposed.samples.insert(line[..end].into());
                if line[end..].starts_with('{') {
                    exposed.labels.extend(label_names(&line[end + 1..]));
                }
            }
        }
        exposed
    }

    /// Whether a query may use `name`: a sample name here, or the name a
    /// `# TYPE` family's samples get in Prometheus (counters `_total`,
    /// histograms `_bucket`, `_count` and `_sum`, gauges their own name),
    /// for families that have no series yet.
    fn has(&self, name: &str) -> bool {
        self.samples.contains(name)
            || self.families.iter().any(|(family, kind)| {
                let suffixes: &[&str] = match kind.as_str() {
                    "counter" => &["_total"],
                    "histogram" => &["_bucket", "_count", "_sum"],
                    _ => &[""],
                };
                suffixes.iter().any(|s| format!("{family}{s}") == name)
            })
    }
}

/// The label names of a sample's `a="x",b="y\"z"}...`.
fn label_names(mut rest: &str) -> Vec<String> {
    let mut names = Vec::new();
    while let Some((name, after)) = rest.split_once("=\"") {
        names.push(name.trim_start_matches(',').to_owned());
        // The value ends at the first quote not escaped.
        let mut escaped = false;
        let end = after
            .char_indices()
            .find(|&(_, c)| {
                let done = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                done
            })
            .map(|(i, _)| i)
            .expect("a closed label value");
        rest = &after[end + 1..];
        if rest.starts_with('}') {
            break;
        }
    }
    names
}

/// A backend on 127.0.0.1 (HTTP/1 and h2c): `200 ok`, or for a gRPC call
/// an empty message and `grpc-status: 0`.
async fn backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            let service = hyper::service::service_fn(|req: http::Request<Incoming>| async move {
                let grpc = req
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                let _ = req.into_body().collect().await;
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                let (content_type, frames) = if grpc {
                    let data = Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]));
                    ("application/grpc", vec![data, Frame::trailers(trailers)])
                } else {
                    ("text/plain", vec![Frame::data(Bytes::from_static(b"ok"))])
                };
                let body = StreamBody::new(tokio_stream::iter(
                    frames.into_iter().map(Ok::<_, Infallible>),
                ));
                let resp = http::Response::builder()
                    .header(http::header::CONTENT_TYPE, content_type)
                    .body(body)
                    .unwrap();
                Ok::<_, Infallible>(resp)
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

/// A Redis stand-in: answers `+PONG` to each read.
async fn pong_server() -> SocketAddr {
    let listener = l7inspect_core::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut io, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0; 1024];
                while let Ok(1..) = io.read(&mut buf).await {
                    if io.write_all(b"+PONG\r\n").await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

async fn http1_get(addr: SocketAddr) {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nhost: backend.test\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut resp = Vec::new();
    c.read_to_end(&mut resp).await.unwrap();
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

async fn grpc_call(addr: SocketAddr) {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post(format!("http://{addr}/l7inspect.test.Echo/Unary"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap();
    let status = body.trailers().and_then(|t| t.get("grpc-status")).cloned();
    assert_eq!(status.as_ref().map(|v| v.as_bytes()), Some(&b"0"[..]));
}

/// The sidecar's `/metrics` after traffic in every family that has labels
/// the dashboard uses.
async fn scrape_after_traffic() -> String {
    let target = backend().await;
    // Bound, not listening: a connect there is refused.
    let refusing = tokio::net::TcpSocket::new_v4().unwrap();
    refusing.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut config = forward_config(target);
    let any_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
    config.inbound_forwards.push(Forward {
        listen: any_port,
        target: refusing.local_addr().unwrap(),
    });
    config.outbound_forwards.push(Forward {
        listen: any_port,
        target,
    });
    // A transparent listener reached directly, without a REDIRECT rule:
    // refused (no original destination, or a loop).
    config.transparent = true;
    config.inbound_listen = vec![any_port];
    config.outbound_listen = vec![any_port];
    // An opaque connection to a silent server, closed as idle.
    config.inbound_forwards.push(Forward {
        listen: any_port,
        target: silent_server().await,
    });
    config.passthrough.idle_timeout = Some(Duration::from_millis(200));
    // TLS: a terminated inbound listener (its own port), and outbound
    // interception of one name.
    let dir = TempDir::new("grafana-tls");
    let ca = TestCa::new("grafana test CA");
    let (cert, key) = ca.server(&["localhost"]).write(dir.path(), "server");
    let ca_cert = ca.write_cert(dir.path());
    let ca_key = dir.path().join("ca.key");
    std::fs::write(&ca_key, &ca.key_pem).unwrap();
    // Free now: the terminated port must be known before the listener binds.
    let tls_port = closed_port().port();
    config.inbound_forwards.push(Forward {
        listen: SocketAddr::from(([127, 0, 0, 1], tls_port)),
        target,
    });
    let mut terminate = TerminateConfig::new(
        vec![TerminatePort {
            port: tls_port,
            app_port: None,
        }],
        cert.clone(),
        key,
    );
    terminate.reload_interval = Duration::from_millis(100);
    config.tls.terminate = Some(terminate);
    config.tls.intercept = Some(InterceptConfig::new(
        ca_cert,
        ca_key,
        vec!["intercepted.test".parse().unwrap()],
    ));
    // Redis, both ways, to a server that answers PONG.
    let redis = pong_server().await;
    config.inbound_forwards.push(Forward {
        listen: any_port,
        target: redis,
    });
    config.outbound_forwards.push(Forward {
        listen: any_port,
        target: redis,
    });
    let sidecar = start(config).await;
    for addr in [
        sidecar.addrs.inbound_forwards[4].listen,
        sidecar.addrs.outbound_forwards[1].listen,
    ] {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"*1\r\n$4\r\nPING\r\n").await.unwrap();
        let mut pong = [0; 7];
        c.read_exact(&mut pong).await.unwrap();
        assert_eq!(&pong, b"+PONG\r\n");
    }
    let inbound = sidecar.addrs.inbound_forwards[0].listen;
    let outbound = sidecar.addrs.outbound_forwards[0].listen;
    for addr in [inbound, outbound] {
        http1_get(addr).await;
        grpc_call(addr).await;
    }
    // A failed upstream connect, then a refused connection: the sidecar
    // resets the client, which may see the reset as early as its connect.
    for addr in [
        sidecar.addrs.inbound_forwards[1].listen,
        sidecar.addrs.outbound[0],
    ] {
        if let Ok(mut c) = TcpStream::connect(addr).await {
            let _ = c.write_all(b"hello").await;
            let _ = c.read(&mut [0; 16]).await;
        }
    }
    // An HTTP/2 client that breaks the protocol (after its SETTINGS, an
    // empty DATA frame on stream 0): closed with GOAWAY PROTOCOL_ERROR,
    // counted.
    let mut h2 = TcpStream::connect(inbound).await.unwrap();
    let _ = h2
        .write_all(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\
              \0\0\0\x04\0\0\0\0\0\
              \0\0\0\0\0\0\0\0\0",
        )
        .await;
    let _ = h2.read_to_end(&mut Vec::new()).await;
    // Not HTTP, not TLS: passthrough, until the idle timeout closes it.
    let mut idle = TcpStream::connect(sidecar.addrs.inbound_forwards[2].listen)
        .await
        .unwrap();
    // On a busy machine the timeout may close it before the write: either
    // way the close is counted.
    let _ = idle.write_all(b"hello\r\n").await;
    let _ = idle.read(&mut [0; 16]).await;
    // TLS terminated (and a plaintext client refused), TLS passed through
    // by name, and an interception refused (the destination speaks no TLS).
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        ca.client_config(&[b"http/1.1"], None),
    ));
    let terminated = sidecar.addrs.inbound_forwards[3].listen;
    let tcp = TcpStream::connect(terminated).await.unwrap();
    tls.connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("the terminated port's handshake");
    let mut plain = TcpStream::connect(terminated).await.unwrap();
    let _ = plain.write_all(b"hello\r\n").await;
    let _ = plain.read(&mut [0; 16]).await;
    for name in ["passthrough.test", "intercepted.test"] {
        let tcp = TcpStream::connect(outbound).await.unwrap();
        let _ = tls.connect(ServerName::try_from(name).unwrap(), tcp).await;
    }
    // A new certificate, loaded.
    let new = ca.server(&["localhost"]);
    let tmp = dir.path().join("server.crt.new");
    std::fs::write(&tmp, &new.cert_pem).unwrap();
    std::fs::rename(&tmp, &cert).unwrap();
    let new_key = dir.path().join("server.key");
    std::fs::write(&tmp, &new.key_pem).unwrap();
    std::fs::rename(&tmp, &new_key).unwrap();

    let wanted = [
        "http_server_request_duration_seconds_count",
        "http_client_request_duration_seconds_count",
        "rpc_server_duration_seconds_count",
        "rpc_client_duration_seconds_count",
        "l7inspect_upstream_connect_errors_total",
        "l7inspect_connections_refused_total",
        "l7inspect_tcp_idle_timeouts_total",
        "l7inspect_tls_connections_total",
        "l7inspect_tls_terminated_connections_total",
        "l7inspect_tls_handshake_errors_total",
        "l7inspect_tls_intercepted_connections_total",
        "l7inspect_tls_certificate_reloads_total",
        "db_client_operation_duration_seconds_count",
        "db_server_operation_duration_seconds_count",
    ];
    let all_there = || async {
        let text = sidecar.metrics();
        wanted.iter().all(|n| prom::sum(&text, n, &[]) >= 1.0)
    };
    assert!(
        eventually(all_there).await,
        "not every one of {wanted:?} has a sample; metrics:\n{}",
        sidecar.metrics()
    );
    sidecar.metrics()
}

// --- the files ------------------------------------------------------------------

/// Every `expr` (panel targets) and variable query of the dashboard, with
/// where it is.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    fn walk(panels: &[Value], out: &mut Vec<(String, String)>) {
        for panel in panels {
            let title = panel["title"].as_str().unwrap_or("?");
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap_or_default();
                out.push((format!("panel {title:?}"), expr.to_owned()));
            }
            walk(
                panel["panels"].as_array().map_or(&[][..], |v| v.as_slice()),
                out,
            );
        }
    }
    walk(dashboard["panels"].as_array().expect("panels"), &mut out);
    for var in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if var["type"] != "query" {
            continue;
        }
        let query = var["query"]
            .as_str()
            .or_else(|| var["query"]["query"].as_str())
            .expect("a variable query");
        // Grafana's `label_values(selector, label)`: the selector is PromQL.
        let (selector, label) = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .and_then(|q| q.rsplit_once(','))
            .unwrap_or_else(|| panic!("variable {}: not label_values(...)", var["name"]));
        out.push((
            format!("variable {}", var["name"]),
            format!("sum by ({}) ({selector})", label.trim()),
        ));
    }
    out
}

fn alert_rules() -> Vec<Value> {
    let rules: Value = serde_norway::from_str(&deploy_file("alerts.yaml")).expect("alerts.yaml");
    let groups = rules["groups"].as_array().expect("groups");
    assert!(!groups.is_empty());
    groups
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").clone())
        .collect()
}

#[test]
fn dashboard_is_importable() {
    let text = deploy_file("l7inspect-sidecar.json");
    let d: Value = serde_json::from_str(&text).expect("valid JSON");
    // Grafana 10 (38) to 11 (41).
    let schema = d["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((38..=41).contains(&schema), "schemaVersion {schema}");
    for key in ["title", "uid"] {
        assert!(d[key].as_str().is_some_and(|s| !s.is_empty()), "{key}");
    }
    let vars = d["templating"]["list"].as_array().expect("templating");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no variable {name}"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    for name in ["job", "instance"] {
        assert_eq!(var(name)["type"], "query", "{name}");
        assert_eq!(var(name)["datasource"]["uid"], DATASOURCE_UID, "{name}");
    }

    // No data source but the variable, anywhere (panels, targets,
    // variables): a fixed uid would not exist in another Grafana.
    fn datasources<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
        match v {
            Value::Object(m) => {
                if let Some(ds) = m.get("datasource") {
                    out.push(ds);
                }
                m.values().for_each(|v| datasources(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| datasources(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    datasources(&d, &mut all);
    for ds in all.iter().filter(|ds| ds["type"] != "grafana") {
        assert_eq!(ds["uid"], DATASOURCE_UID, "a fixed data source: {ds}");
        assert_eq!(ds["type"], "prometheus", "{ds}");
    }

    let panels = d["panels"].as_array().expect("panels");
    let mut ids = HashSet::new();
    let mut queries = 0;
    for p in panels {
        let title = p["title"].as_str().expect("a panel title");
        assert!(ids.insert(p["id"].as_u64().expect("id")), "id of {title}");
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
        assert!(x + w <= 24 && g["h"].as_u64().unwrap() > 0, "{title}: {g}");
        assert!(g["y"].is_u64(), "{title}: {g}");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], DATASOURCE_UID, "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no targets");
        let mut ref_ids = HashSet::new();
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(!expr.trim().is_empty(), "{title}: a target without expr");
            assert!(ref_ids.insert(t["refId"].as_str().expect("refId")));
            queries += 1;
        }
    }
    assert!(queries > 20, "{queries} queries");
}

#[test]
fn alert_rules_are_complete() {
    let rules = alert_rules();
    assert!(rules.len() >= 5);
    for r in &rules {
        let name = r["alert"].as_str().expect("alerting rules only");
        assert!(r["expr"].as_str().is_some(), "{name}: expr");
        assert!(r["for"].as_str().is_some(), "{name}: for");
        let severity = r["labels"]["severity"].as_str();
        assert!(
            matches!(severity, Some("info" | "warning" | "critical")),
            "{name}: severity {severity:?}"
        );
        for key in ["summary", "description"] {
            let a = r["annotations"][key].as_str().unwrap_or_default();
            assert!(!a.is_empty(), "{name}: annotation {key}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_name_in_the_dashboard_and_rules_is_exposed() {
    let text = scrape_after_traffic().await;
    let exposed = Exposed::parse(&text);
    let mut labels: HashSet<String> = exposed.labels.clone();
    labels.extend(TARGET_LABELS.map(String::from));

    let dashboard: Value = serde_json::from_str(&deploy_file("l7inspect-sidecar.json")).unwrap();
    let mut queries = dashboard_queries(&dashboard);
    for r in alert_rules() {
        let name = r["alert"].as_str().unwrap_or("?");
        queries.push((format!("alert {name}"), r["expr"].as_str().unwrap().into()));
    }
    let mut problems = Vec::new();
    let mut dashboard_metrics = BTreeSet::new();
    for (place, expr) in &queries {
        let refs = promql_refs(expr).unwrap_or_else(|e| panic!("{place}: {e}"));
        assert!(!refs.metrics.is_empty(), "{place}: no metric in {expr:?}");
        for m in &refs.metrics {
            if !exposed.has(m) {
                problems.push(format!("{place}: metric {m} is not exposed"));
            }
        }
        for l in refs.labels.iter().filter(|l| !labels.contains(l.as_str())) {
            problems.push(format!("{place}: label {l} is on no series"));
        }
        if !place.starts_with("alert") {
            dashboard_metrics.extend(refs.metrics);
        }
    }

    // Labels in legends (`{{server_address}}`) and alert templates
    // (`$labels.instance`).
    let mut templated = Vec::new();
    for (place, s) in legends(&dashboard) {
        for part in s.split("{{").skip(1) {
            let name = part.split("}}").next().unwrap_or_default().trim();
            templated.push((place.clone(), name.to_owned()));
        }
    }
    for r in alert_rules() {
        let place = format!("alert {}", r["alert"].as_str().unwrap_or("?"));
        for a in r["annotations"]
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
        {
            for part in a.as_str().unwrap_or_default().split("$labels.").skip(1) {
                let end = part.find(|c: char| !is_ident_char(c)).unwrap_or(part.len());
                templated.push((place.clone(), part[..end].to_owned()));
            }
        }
    }
    for (place, name) in templated {
        if !labels.contains(&name) {
            problems.push(format!("{place}: template label {name} is on no series"));
        }
    }

    // Every family the sidecar exposes has a panel.
    for family in exposed.families.keys() {
        if !dashboard_metrics.iter().any(|m| {
            m.strip_prefix(family.as_str())
                .is_some_and(|rest| ["", "_total", "_bucket", "_count", "_sum"].contains(&rest))
        }) {
            problems.push(format!("metric {family} is on no dashboard panel"));
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n\nscraped metrics:\n{text}",
        problems.join("\n")
    );
}

/// Every panel target's `legendFormat`, with where it is.
fn legends(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(l) = t["legendFormat"].as_str() {
                let title = p["title"].as_str().unwrap_or("?");
                out.push((format!("panel {title:?}"), l.to_owned()));
            }
        }
    }
    out
}
