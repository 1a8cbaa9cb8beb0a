//! `l7inspect-sidecar inject` as a user runs it: stdin, a file, `-`, the
//! summary on stderr, exit codes, and nothing on stdout after an error.

use serde_norway::Value;
use std::{
    io::Write,
    process::{Command, Output, Stdio},
};

const BIN: &str = env!("CARGO_BIN_EXE_l7inspect-sidecar");

const INPUT: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: web # the front door
spec:
  ports: [{port: 80}]
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  selector: {matchLabels: {app.kubernetes.io/name: web}}
  template:
    metadata:
      labels: {app.kubernetes.io/name: web}
    spec:
      containers: [{name: app, image: web:1}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: node-agent
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata:
      labels: {app: agent}
    spec:
      hostNetwork: true
      containers: [{name: agent, image: agent:1}]
";

/// Runs `l7inspect-sidecar inject ARGS` with `stdin` and waits for it.
fn inject(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .arg("inject")
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn temp_file(name: &str, content: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("l7inspect-inject-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

#[test]
fn stdin_is_injected_with_one_summary_line_per_workload() {
    let out = inject(&["--sidecar-image", "reg/sidecar:7"], INPUT);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        [
            "deployment/web: injected",
            "daemonset/node-agent: skipped: hostNetwork (the rules would apply to the node)",
        ]
    );
    let stdout = text(&out.stdout);
    // The Service and the DaemonSet are copied as they were, comments included.
    assert!(stdout.starts_with(&INPUT[..INPUT.find("---").unwrap()]));
    assert!(stdout.ends_with(&INPUT[INPUT.rfind("---").unwrap()..]));
    let docs: Vec<Value> = stdout
        .split("\n---\n")
        .map(|d| serde_norway::from_str(d).unwrap())
        .collect();
    assert_eq!(docs.len(), 3);
    let init = &docs[1]["spec"]["template"]["spec"]["initContainers"];
    assert_eq!(init[0]["name"].as_str(), Some("l7inspect-init"));
    assert_eq!(
        init[0]["image"].as_str(),
        Some(concat!("l7inspect/init:", env!("CARGO_PKG_VERSION")))
    );
    assert_eq!(init[1]["name"].as_str(), Some("l7inspect-sidecar"));
    assert_eq!(init[1]["image"].as_str(), Some("reg/sidecar:7"));

    // Its own output again: nothing to do.
    let again = inject(&[], &stdout);
    assert_eq!(again.status.code(), Some(0));
    assert_eq!(text(&again.stdout), stdout);
    assert_eq!(
        text(&again.stderr).lines().collect::<Vec<_>>(),
        [
            "deployment/web: already injected, left as is",
            "daemonset/node-agent: skipped: hostNetwork (the rules would apply to the node)",
        ]
    );
}

#[test]
fn a_file_and_dash_read_the_same_as_stdin() {
    let path = temp_file("in.yaml", INPUT);
    let from_stdin = inject(&[], INPUT);
    let from_dash = inject(&["-"], INPUT);
    let from_file = inject(&[path.to_str().unwrap()], "");
    for out in [&from_dash, &from_file] {
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(out.stdout, from_stdin.stdout);
        assert_eq!(out.stderr, from_stdin.stderr);
    }
    let _ = std::fs::remove_file(path);
}

#[test]
fn bad_yaml_names_the_file_and_line_exits_2_and_writes_nothing() {
    let bad = format!("{INPUT}---\nkind: Pod\nmetadata:\n  name: [unclosed\n");
    let path = temp_file("bad.yaml", &bad);
    let file = path.to_str().unwrap();
    for (args, stdin, name) in [(&[file][..], "", file), (&[], bad.as_str(), "<stdin>")] {
        let out = inject(args, stdin);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            out.stdout.is_empty(),
            "partial output: {:?}",
            text(&out.stdout)
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with(&format!("error: {name}: ")), "{stderr}");
        // `name: [unclosed` is on this line of the whole input.
        let line = INPUT.lines().count() + 4;
        assert!(stderr.contains(&format!("line {line} ")), "{stderr}");
    }
    let _ = std::fs::remove_file(path);
}

#[test]
fn unreadable_input_and_bad_flags_exit_2() {
    let out = inject(&["/no/such/manifest.yaml"], "");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(
        stderr.starts_with("error: /no/such/manifest.yaml: cannot read: "),
        "{stderr}"
    );

    let not_utf8 = temp_file("latin1.yaml", "");
    std::fs::write(&not_utf8, b"kind: Pod\nmetadata: {name: \xff}\n").unwrap();
    let out = inject(&[not_utf8.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not UTF-8"),
        "{}",
        text(&out.stderr)
    );
    let _ = std::fs::remove_file(not_utf8);

    for (args, needle) in [
        (
            &["--skip-inbound-ports", "99999"][..],
            "--skip-inbound-ports",
        ),
        (&["--skip-outbound-ports", "9-1"], "--skip-outbound-ports"),
        // Port 0 is not a port to l7inspect-init: written into the init
        // container, it would keep the pod from starting.
        (&["--skip-inbound-ports", "0"], "--skip-inbound-ports"),
        (
            &["--skip-outbound-ports", "25,0-10"],
            "--skip-outbound-ports",
        ),
        (&["--otlp-protocol", "udp"], "--otlp-protocol"),
        (&["--no-such-flag"], "--no-such-flag"),
    ] {
        let out = inject(args, "");
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[test]
fn proxy_flags_do_not_mix_with_inject_and_its_env_is_ignored() {
    let out = Command::new(BIN)
        .args(["--threads", "2", "inject"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // A bad value of a proxy variable does not concern inject.
    let out = Command::new(BIN)
        .arg("inject")
        .env("L7INSPECT_SHUTDOWN_GRACE", "later")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://elsewhere:4317")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn flags_set_the_env_vars_of_the_containers() {
    let pod = "kind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: a, image: a}]\n";
    let out = inject(
        &[
            "--otlp-endpoint",
            "http://collector:4318",
            "--otlp-protocol",
            "http/protobuf",
            "--skip-inbound-ports",
            "22, 8000-8010",
            "--skip-outbound-ports",
            "3306",
            "--init-image",
            "reg/init:7",
        ],
        pod,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let doc: Value = serde_norway::from_str(&text(&out.stdout)).unwrap();
    let init = &doc["spec"]["initContainers"];
    let env = |c: &Value, var: &str| {
        c["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|e| e["name"].as_str() == Some(var))
            .and_then(|e| e["value"].as_str())
            .map(str::to_owned)
    };
    assert_eq!(init[0]["image"].as_str(), Some("reg/init:7"));
    assert_eq!(
        env(&init[0], "L7INSPECT_SKIP_INBOUND_PORTS").as_deref(),
        Some("22,8000-8010")
    );
    assert_eq!(
        env(&init[0], "L7INSPECT_SKIP_OUTBOUND_PORTS").as_deref(),
        Some("3306")
    );
    assert_eq!(
        env(&init[1], "OTEL_EXPORTER_OTLP_ENDPOINT").as_deref(),
        Some("http://collector:4318")
    );
    assert_eq!(
        env(&init[1], "OTEL_EXPORTER_OTLP_PROTOCOL").as_deref(),
        Some("http/protobuf")
    );
    assert_eq!(env(&init[1], "OTEL_SERVICE_NAME").as_deref(), Some("p"));
}

#[test]
fn help_documents_every_flag_and_the_lost_comments() {
    let out = Command::new(BIN)
        .args(["inject", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = text(&out.stdout);
    for needle in [
        "--sidecar-image",
        "--init-image",
        "--otlp-endpoint",
        "--otlp-protocol",
        "--skip-inbound-ports",
        "--skip-outbound-ports",
        "l7inspect.io/inject: disabled",
        "hostNetwork",
        "comments are lost",
        "Exit codes",
    ] {
        assert!(help.contains(needle), "{needle} missing from inject --help");
    }
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(text(&out.stdout).contains("inject"));
}
