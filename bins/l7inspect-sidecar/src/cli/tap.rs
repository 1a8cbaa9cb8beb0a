//! `l7inspect-sidecar tap`: requests as a running sidecar completes them,
//! one line each, from its admin port's `/api/tap`, until interrupted (like
//! `linkerd tap`).

use bytes::{Buf, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::{
    fmt::Write as _,
    io::Write as _,
    process::ExitCode,
    time::{Duration, SystemTime},
};

/// Print requests as a running sidecar completes them, one line each (time,
/// direction, method, authority, path, status, latency, trace id), until
/// interrupted. Reads the sidecar's admin port (loopback, or a
/// `kubectl port-forward` to it).
#[derive(Debug, clap::Args)]
pub(crate) struct TapArgs {
    /// The sidecar's admin address (host:port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:4191")]
    admin: String,
    /// Only inbound or only outbound requests.
    #[arg(long, value_parser = ["inbound", "outbound"])]
    direction: Option<String>,
    /// Only this protocol (a database's: its commands).
    #[arg(long, value_parser = ["http1", "h2", "grpc", "redis", "postgresql", "mysql"])]
    protocol: Option<String>,
    /// Only this status class: 1xx to 5xx, or error (the span failed).
    #[arg(long, value_parser = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"])]
    status: Option<String>,
    /// Only this method (GET, POST...).
    #[arg(long)]
    method: Option<String>,
    /// Only this authority (host, or host:port).
    #[arg(long)]
    authority: Option<String>,
    /// Only paths containing this.
    #[arg(long)]
    path: Option<String>,
    /// Print each request as the sidecar's JSON object, one per line.
    #[arg(long)]
    json: bool,
}

/// Runs `tap`: 0 when interrupted, 1 when the admin port cannot be reached,
/// refuses, or closes the stream.
pub(crate) fn run(args: TapArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        tokio::select! {
            result = tap(&args) => match result {
                Ok(()) => {
                    eprintln!("error: the sidecar at {} closed the tap stream", args.admin);
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            },
            _ = tokio::signal::ctrl_c() => ExitCode::SUCCESS,
        }
    })
}

/// The query string of the filters given.
fn query(args: &TapArgs) -> String {
    let mut q = String::new();
    for (key, value) in [
        ("direction", &args.direction),
        ("protocol", &args.protocol),
        ("status", &args.status),
        ("method", &args.method),
        ("authority", &args.authority),
        ("path", &args.path),
    ] {
        if let Some(v) = value {
            if !q.is_empty() {
                q.push('&');
            }
            q.push_str(key);
            q.push('=');
            for b in v.bytes() {
                if b.is_ascii_alphanumeric() || b"-._~/:".contains(&b) {
                    q.push(char::from(b));
                } else {
                    let _ = write!(q, "%{b:02X}");
                }
            }
        }
    }
    q
}

/// Streams the tap until the sidecar ends it; an error says why it could
/// not start or stopped.
async fn tap(args: &TapArgs) -> Result<(), String> {
    let admin = &args.admin;
    let stream = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(admin.as_str()),
    )
    .await
    .map_err(|_| format!("cannot reach the admin server at {admin}: timed out"))?
    .map_err(|e| format!("cannot reach the admin server at {admin}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("admin server at {admin}: {e}"))?;
    tokio::spawn(conn);
    let req = http::Request::get(format!("/api/tap?{}", query(args)))
        .header(http::header::HOST, admin.as_str())
        .header(http::header::ACCEPT, "text/event-stream")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| format!("bad request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("admin server at {admin}: {e}"))?;
    let status = resp.status();
    let mut body = resp.into_body();
    if !status.is_success() {
        let text = body
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_owned())
            .unwrap_or_default();
        return Err(format!(
            "the admin server at {admin} answered {status}: {text}"
        ));
    }
    let mut buf = BytesMut::new();
    let mut out = std::io::stdout().lock();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("tap stream from {admin}: {e}"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        // Events end with a blank line; a data line holds one JSON object.
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let event = buf.split_to(end);
            buf.advance(2);
            for line in event[..].split(|&b| b == b'\n') {
                let Some(json) = line.strip_prefix(b"data: ") else {
                    continue;
                };
                let printed = if args.json {
                    out.write_all(json).and_then(|()| out.write_all(b"\n"))
                } else {
                    match serde_json::from_slice::<serde_json::Value>(json) {
                        Ok(span) => writeln!(out, "{}", line_of(&span)),
                        Err(_) => continue,
                    }
                };
                // stdout closed (a pipe to `head`): stop as when interrupted.
                if printed.and_then(|()| out.flush()).is_err() {
                    std::process::exit(0);
                }
            }
        }
    }
    Ok(())
}

/// One request as a readable line: start time (UTC), direction, method,
/// authority, path, status, latency, trace id.
fn line_of(span: &serde_json::Value) -> String {
    let s = |k: &str| span[k].as_str().unwrap_or("-");
    let start = span["start_unix_us"].as_u64().unwrap_or(0);
    let time = SystemTime::UNIX_EPOCH + Duration::from_micros(start);
    let status = match (span["grpc_status"].as_i64(), span["http_status"].as_u64()) {
        (Some(g), _) => format!("grpc:{g}"),
        (None, Some(h)) => h.to_string(),
        // A database command: its error's code (SQLSTATE, error number,
        // Redis prefix), else ok or error.
        (None, None) if span["attributes"]["db.system.name"].is_string() => {
            match span["attributes"]["db.response.status_code"].as_str() {
                Some(code) => code.to_owned(),
                None if s("status") == "error" => "error".to_owned(),
                None => "ok".to_owned(),
            }
        }
        (None, None) => s("status").to_owned(),
    };
    let latency = Duration::from_micros(span["duration_us"].as_u64().unwrap_or(0));
    format!(
        "{} {:<8} {} {} {} {} {} trace={}{}",
        humantime::format_rfc3339_millis(time),
        s("direction"),
        span["method"].as_str().unwrap_or_else(|| s("name")),
        s("authority"),
        s("path"),
        status,
        format_latency(latency),
        s("trace_id"),
        if s("status") == "error" { " error" } else { "" },
    )
}

fn format_latency(d: Duration) -> String {
    let us = d.as_micros();
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1_000.0)
    } else {
        format!("{:.2}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_on_one_line() {
        let span = serde_json::json!({
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "start_unix_us": 1_700_000_000_123_456_u64,
            "duration_us": 1500,
            "direction": "inbound",
            "method": "GET",
            "authority": "shop:8080",
            "path": "/checkout",
            "http_status": 503,
            "grpc_status": null,
            "status": "error",
            "name": "GET",
        });
        assert_eq!(
            line_of(&span),
            "2023-11-14T22:13:20.123Z inbound  GET shop:8080 /checkout 503 1.50ms trace=4bf92f3577b34da6a3ce929d0e0e4736 error"
        );
    }

    #[test]
    fn a_database_command_on_one_line() {
        let span = serde_json::json!({
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "start_unix_us": 1_700_000_000_123_456_u64,
            "duration_us": 230,
            "direction": "outbound",
            "protocol": "postgresql",
            "method": null,
            "authority": "10.0.0.7:5432",
            "path": null,
            "http_status": null,
            "grpc_status": null,
            "status": "error",
            "name": "SELECT missing",
            "attributes": {"db.system.name": "postgresql", "db.response.status_code": "42P01"},
        });
        assert_eq!(
            line_of(&span),
            "2023-11-14T22:13:20.123Z outbound SELECT missing 10.0.0.7:5432 - 42P01 230µs trace=4bf92f3577b34da6a3ce929d0e0e4736 error"
        );
    }

    #[test]
    fn filters_are_encoded() {
        let args = TapArgs {
            admin: "x".into(),
            direction: Some("inbound".into()),
            protocol: None,
            status: Some("5xx".into()),
            method: None,
            authority: None,
            path: Some("/a b&c".into()),
            json: false,
        };
        assert_eq!(query(&args), "direction=inbound&status=5xx&path=/a%20b%26c");
    }
}
