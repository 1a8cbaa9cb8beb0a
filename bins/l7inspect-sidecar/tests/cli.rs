//! The sidecar binary as a user runs it: flags, environment variables, exit
//! codes, and shutdown on SIGTERM.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Command, Output, Stdio},
    time::Duration,
};

use l7inspect_test_support::KillOnDrop;

const BIN: &str = env!("CARGO_BIN_EXE_l7inspect-sidecar");

/// Runs the binary with `args` and waits for it (for invocations that exit
/// on their own).
fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// The help of one flag: its line and any lines below it up to the next
/// flag, heading or blank line.
fn flag_help(help: &str, flag: &str) -> Option<String> {
    let is_flag = |l: &str| l.trim_start().starts_with('-');
    let mut lines = help
        .lines()
        .skip_while(|l| !(is_flag(l) && l.split([' ', ',', '=']).any(|w| w == flag)));
    let first = lines.next()?;
    let more = lines.take_while(|l| l.starts_with(' ') && !is_flag(l));
    Some(
        std::iter::once(first)
            .chain(more)
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// Every `OTEL_*` variable named by a string literal in the source of the
/// trace crate's reader, rather than listed here again.
fn otel_variables_read() -> Vec<&'static str> {
    let env_rs = include_str!("../../../l7inspect-trace/src/export/env.rs");
    let mut read = env_rs
        .match_indices("\"OTEL_")
        .filter_map(|(i, _)| {
            let rest = &env_rs[i + 1..];
            let end = rest.find(|c: char| !(c.is_ascii_uppercase() || c == '_'))?;
            rest[end..].starts_with('"').then(|| &rest[..end])
        })
        .collect::<Vec<_>>();
    read.sort_unstable();
    read.dedup();
    read
}

/// The first inbound forward's listen address, from the JSON "listening"
/// line the sidecar logs at start-up (with `--log-format json`), and the
/// line.
fn forward_listen_addr(stderr: &mut impl BufRead) -> (SocketAddr, String) {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "exited early");
        if let Some(rest) = line.split("\"inbound_forwards\":\"").nth(1) {
            let pair = rest.split('"').next().unwrap();
            return (pair.split('=').next().unwrap().parse().unwrap(), line);
        }
    }
}

#[test]
fn help_names_every_flag_and_its_env_var() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    // Each flag's own help names its variables: clap's `[env: ...]` for
    // the L7INSPECT_* ones, the doc comment for the OTEL_* ones (read by
    // the trace crate's reader, not by clap).
    for (flag, vars) in [
        ("--inbound-listen", &["L7INSPECT_INBOUND_LISTEN"][..]),
        ("--outbound-listen", &["L7INSPECT_OUTBOUND_LISTEN"][..]),
        ("--admin-listen", &["L7INSPECT_ADMIN_LISTEN"][..]),
        (
            "--admin-allow-remote-inspect",
            &["L7INSPECT_ADMIN_ALLOW_REMOTE_INSPECT"][..],
        ),
        ("--recent-spans", &["L7INSPECT_RECENT_SPANS"][..]),
        ("--inbound-forward", &["L7INSPECT_INBOUND_FORWARD"][..]),
        ("--outbound-forward", &["L7INSPECT_OUTBOUND_FORWARD"][..]),
        ("--no-transparent", &["L7INSPECT_NO_TRANSPARENT"][..]),
        ("--opaque-ports", &["L7INSPECT_OPAQUE_PORTS"][..]),
        ("--idle-timeout", &["L7INSPECT_IDLE_TIMEOUT"][..]),
        ("--shutdown-grace", &["L7INSPECT_SHUTDOWN_GRACE"][..]),
        ("--detect-timeout", &["L7INSPECT_DETECT_TIMEOUT"][..]),
        ("--connect-timeout", &["L7INSPECT_CONNECT_TIMEOUT"][..]),
        ("--max-connections", &["L7INSPECT_MAX_CONNECTIONS"][..]),
        ("--threads", &["L7INSPECT_THREADS"][..]),
        ("--log-level", &["L7INSPECT_LOG_LEVEL"][..]),
        ("--log-format", &["L7INSPECT_LOG_FORMAT"][..]),
        ("--service-name", &["OTEL_SERVICE_NAME"][..]),
        (
            "--otlp-endpoint",
            &[
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ],
        ),
        (
            "--otlp-protocol",
            &[
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ],
        ),
        ("--zipkin-endpoint", &["OTEL_EXPORTER_ZIPKIN_ENDPOINT"][..]),
        ("--sample-ratio", &["L7INSPECT_SAMPLE_RATIO"][..]),
        ("--propagators", &["OTEL_PROPAGATORS"][..]),
        ("--record-query", &["L7INSPECT_RECORD_QUERY"][..]),
    ] {
        let text = flag_help(&help, flag).unwrap_or_else(|| panic!("{flag} missing from --help"));
        for var in vars {
            assert!(
                text.contains(var),
                "{var} missing from {flag}'s help: {text}"
            );
        }
    }
    // Every OpenTelemetry variable the reader reads (clap reads none): its
    // list of them is complete, and --help names each.
    let read = otel_variables_read();
    let mut listed = l7inspect_trace::export::VARIABLES.to_vec();
    listed.sort_unstable();
    assert_eq!(read, listed, "export::VARIABLES is not every variable read");
    assert!(read.contains(&"OTEL_PROPAGATORS"), "{read:?}");
    for var in read {
        assert!(
            help.contains(var),
            "{var} is read but --help does not name it"
        );
    }
}

#[test]
fn bad_values_name_the_flag_and_exit_2() {
    for (args, needle) in [
        (&["--opaque-ports", "80,99999"][..], "--opaque-ports"),
        (&["--idle-timeout", "soon"], "--idle-timeout"),
        (&["--inbound-forward", "127.0.0.1:1"], "--inbound-forward"),
        (&["--inbound-forward", "127.0.0.1:7=127.0.0.1:7"], "itself"),
        (&["--admin-listen", "nowhere"], "--admin-listen"),
        (&["--log-format", "xml"], "--log-format"),
        (&["--threads", "0"], "--threads"),
        (&["--max-connections", "many"], "--max-connections"),
        (&["--log-level", "info,[bad"], "--log-level"),
        (&["--no-such-flag"], "--no-such-flag"),
    ] {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[test]
fn bad_env_values_exit_2_too() {
    let out = Command::new(BIN)
        .env("L7INSPECT_SHUTDOWN_GRACE", "later")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--shutdown-grace"));
}

#[test]
fn bad_tracing_settings_name_the_flag_or_variable_and_exit_2() {
    for (args, env, needle) in [
        (&["--sample-ratio", "1.5"][..], None, "--sample-ratio"),
        // Parsed by the trace crate's reader, for the flag as for the
        // variable, each named as the user gave it.
        (
            &["--propagators", "xray"],
            None,
            "invalid value \"xray\" for --propagators: propagator `xray`",
        ),
        (
            &[],
            Some(("OTEL_PROPAGATORS", "b3,xray")),
            "invalid value for OTEL_PROPAGATORS=\"b3,xray\": propagator `xray`",
        ),
        // The flag is what is wrong, even with a good variable under it.
        (
            &["--propagators", "none,b3"],
            Some(("OTEL_PROPAGATORS", "b3")),
            "invalid value \"none,b3\" for --propagators: `none` cannot be combined",
        ),
        (
            &["--otlp-protocol", "carrier-pigeon"],
            None,
            "invalid value \"carrier-pigeon\" for --otlp-protocol",
        ),
        // Neither http:// nor https://: refused before start-up, named as
        // given.
        (
            &["--otlp-endpoint", "ftp://collector:4317"],
            None,
            "invalid value \"ftp://collector:4317\" for --otlp-endpoint: scheme ftp",
        ),
        (
            &[],
            Some(("OTEL_EXPORTER_ZIPKIN_ENDPOINT", "zipkin:9411/api/v2/spans")),
            "OTEL_EXPORTER_ZIPKIN_ENDPOINT=\"zipkin:9411/api/v2/spans\": ",
        ),
        (
            &[],
            Some(("OTEL_EXPORTER_OTLP_INSECURE", "maybe")),
            "OTEL_EXPORTER_OTLP_INSECURE=\"maybe\": expected true or false",
        ),
        (
            &[],
            Some(("OTEL_TRACES_SAMPLER", "sometimes")),
            "OTEL_TRACES_SAMPLER",
        ),
        (
            &[],
            Some(("OTEL_BSP_MAX_QUEUE_SIZE", "-1")),
            "OTEL_BSP_MAX_QUEUE_SIZE",
        ),
        (
            &[],
            Some(("OTEL_TRACES_EXPORTER", "xray")),
            "OTEL_TRACES_EXPORTER",
        ),
    ] {
        let mut cmd = Command::new(BIN);
        cmd.args(["--no-transparent", "--admin-listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("RUST_LOG");
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        // Bounded: a value taken as valid would run the proxy until killed.
        let out = l7inspect_test_support::output_within(&mut cmd, l7inspect_test_support::PATIENCE)
            .unwrap_or_else(|e| panic!("{args:?} {env:?} did not exit: {e}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?} {env:?}: {stderr}");
    }
}

/// Starts the proxy with `args` and `env` (and no other `OTEL_*` variable)
/// and returns its start-up line about tracing, `service=... otlp=...
/// zipkin=...`: the configuration as read.
fn tracing_line(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(BIN);
    cmd.args(["--no-transparent", "--admin-listen", "127.0.0.1:0"])
        .args(args)
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped());
    for (var, _) in std::env::vars().filter(|(k, _)| k.starts_with("OTEL_")) {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    let mut guard = KillOnDrop(cmd.spawn().unwrap());
    let stderr = BufReader::new(guard.0.stderr.take().unwrap());
    for line in stderr.lines() {
        let line = line.unwrap();
        if line.contains("tracing HTTP requests") {
            return line;
        }
    }
    panic!("exited without the tracing line: {args:?} {env:?}");
}

#[test]
fn a_flag_beats_its_otel_variable() {
    let env = [
        ("OTEL_SERVICE_NAME", "from-var"),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://127.0.0.1:9/var",
        ),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        (
            "OTEL_EXPORTER_ZIPKIN_ENDPOINT",
            "http://127.0.0.1:9/zipkin-var",
        ),
    ];
    let line = tracing_line(&[], &env);
    assert!(line.contains("service=from-var"), "{line}");
    assert!(
        line.contains("otlp=http://127.0.0.1:9/var (http/protobuf)"),
        "{line}"
    );
    assert!(
        line.contains("zipkin=http://127.0.0.1:9/zipkin-var"),
        "{line}"
    );

    let line = tracing_line(
        &[
            "--service-name",
            "from-flag",
            "--otlp-endpoint",
            "http://127.0.0.1:9/flag",
            "--otlp-protocol",
            "grpc",
            "--zipkin-endpoint",
            "http://127.0.0.1:9/zipkin-flag",
        ],
        &env,
    );
    assert!(line.contains("service=from-flag"), "{line}");
    assert!(
        line.contains("otlp=http://127.0.0.1:9/flag (grpc)"),
        "{line}"
    );
    assert!(
        line.contains("zipkin=http://127.0.0.1:9/zipkin-flag"),
        "{line}"
    );
}

#[test]
fn the_traces_protocol_variable_beats_the_generic_one() {
    // The generic endpoint is a base URL: /v1/traces is appended for
    // http/protobuf, the protocol the traces variable chose.
    let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9");
    let line = tracing_line(
        &[],
        &[
            base,
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ],
    );
    assert!(
        line.contains("otlp=http://127.0.0.1:9/v1/traces (http/protobuf)"),
        "{line}"
    );
    let line = tracing_line(
        &[],
        &[
            base,
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
        ],
    );
    assert!(line.contains("otlp=http://127.0.0.1:9 (grpc)"), "{line}");
    // The generic variable alone still counts.
    let line = tracing_line(
        &[],
        &[base, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")],
    );
    assert!(
        line.contains("otlp=http://127.0.0.1:9/v1/traces (http/protobuf)"),
        "{line}"
    );
}

#[test]
fn a_listener_that_cannot_bind_names_the_address_and_exits_1() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run(&["--no-transparent", "--admin-listen", &addr]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&addr) && stderr.contains("admin"),
        "{stderr}"
    );
    assert!(stderr.contains("in use"), "{stderr}");
}

/// Configured through environment variables only, the binary forwards
/// bytes; on SIGTERM it drains and exits 0.
#[test]
fn env_configured_forward_then_sigterm_exits_0() {
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_addr = backend.local_addr().unwrap();
    let child = Command::new(BIN)
        .env("L7INSPECT_NO_TRANSPARENT", "true")
        .env("L7INSPECT_ADMIN_LISTEN", "127.0.0.1:0")
        .env(
            "L7INSPECT_INBOUND_FORWARD",
            format!("127.0.0.1:0={backend_addr}"),
        )
        .env("L7INSPECT_LOG_FORMAT", "json")
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = KillOnDrop(child);
    let mut stderr = BufReader::new(guard.0.stderr.take().unwrap());

    // The "listening" line names the bound addresses.
    let (listen, line) = forward_listen_addr(&mut stderr);
    assert!(line.contains("\"level\":\"INFO\""), "{line}");

    let mut client = TcpStream::connect(listen).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (mut upstream, _) = backend.accept().unwrap();
    client.write_all(b"hello over env config").unwrap();
    let mut got = [0u8; 21];
    upstream.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello over env config");
    drop(client);
    drop(upstream);

    let pid = guard.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = guard.0.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("SIGTERM"), "{rest}");
}

/// `OTEL_TRACES_EXPORTER=console`, a value the OpenTelemetry specification
/// defines: each request's span on standard output, one JSON object per
/// line, with nothing else configured.
#[test]
fn console_exporter_prints_one_json_line_per_span() {
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_addr = backend.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in backend.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    let mut cmd = Command::new(BIN);
    cmd.args(["--no-transparent", "--admin-listen", "127.0.0.1:0"])
        .args(["--inbound-forward", &format!("127.0.0.1:0={backend_addr}")])
        .args(["--log-format", "json"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (var, _) in std::env::vars().filter(|(k, _)| k.starts_with("OTEL_")) {
        cmd.env_remove(var);
    }
    cmd.env("OTEL_TRACES_EXPORTER", "console")
        .env("OTEL_SERVICE_NAME", "console-test")
        .env("OTEL_BSP_SCHEDULE_DELAY", "50");
    let mut guard = KillOnDrop(cmd.spawn().unwrap());
    let mut stderr = BufReader::new(guard.0.stderr.take().unwrap());
    let (listen, _) = forward_listen_addr(&mut stderr);
    // Standard output, read on a thread so that a missing line fails the
    // test instead of hanging it.
    let stdout = BufReader::new(guard.0.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });

    let mut client = TcpStream::connect(listen).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    client
        .write_all(b"GET /console-check HTTP/1.1\r\nhost: shop\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    client.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    let printed = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("a span line on standard output");
    let span: serde_json::Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(span["path"], "/console-check", "{printed}");
    assert_eq!(span["kind"], "server", "{printed}");
    assert_eq!(span["http_status"], 200, "{printed}");
    assert_eq!(span["service"], "console-test", "{printed}");
    assert_eq!(span["trace_id"].as_str().unwrap().len(), 32, "{printed}");

    let pid = guard.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(guard.0.wait().unwrap().code(), Some(0));
    // One request, one span: nothing else was printed.
    assert!(rx.recv_timeout(Duration::from_secs(5)).is_err());
}
