//! The `l7inspect-init` binary against real iptables and nftables, each
//! test in a fresh network namespace.
//!
//! As in the sidecar's netns tests: each test gets a thread of its own in a
//! fresh network namespace (test-support's `in_new_netns`: a namespace
//! belongs to a thread, and the programs the thread spawns inherit it),
//! with `lo` up, and runs
//! `l7inspect-init`, `iptables-save` and friends there. Without root or
//! iptables the test prints `SKIPPED <test>: <reason>` and passes, unless
//! `L7INSPECT_REQUIRE_NETNS=1` (CI) turns the skip into a failure.
//!
//! What only a namespace can show: that iptables accepts the generated
//! text, that a second run and `--remove` leave other tools' rules as they
//! were, that a failed run leaves no partial set, and that the rules send
//! an application's connection to the outbound port.

use std::{
    io::{self, Read},
    net::TcpListener,
    path::PathBuf,
    process::{Command, Output},
    time::{Duration, Instant},
};

use l7inspect_test_support::{
    Skip,
    netns::{in_new_netns, tool},
};

const INIT: &str = env!("CARGO_BIN_EXE_l7inspect-init");

/// Runs `body` on its own thread in a new network namespace with `lo` up,
/// where the nat table must work (iptables installed, module loadable).
fn run(test: &'static str, body: impl FnOnce() -> Result<(), Skip> + Send + 'static) {
    in_new_netns(test, move |_| {
        // The rule of "another tool" is added by the tests.
        tool("iptables-save", &["-t", "nat"])?;
        body()
    });
}

/// `iptables-save -t nat` (or ip6tables) without the timestamped comments.
fn nat(program: &str) -> String {
    let out = tool(program, &["-t", "nat"]).unwrap_or_else(|s| panic!("{}", s.reason));
    out.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Runs the init binary with `args` and `env` (the PATH, if given, first).
fn init(args: &[&str], path: Option<&PathBuf>) -> Output {
    let mut cmd = Command::new(INIT);
    cmd.args(args);
    if let Some(dir) = path {
        let old = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![dir.clone()];
        dirs.extend(std::env::split_paths(&old));
        cmd.env("PATH", std::env::join_paths(dirs).expect("PATH"));
    }
    cmd.output().expect("run l7inspect-init")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "l7inspect-init failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

/// Whether ip6tables with a nat table works in this namespace.
fn has_ipv6_nat() -> bool {
    tool("ip6tables-save", &["-t", "nat"]).is_ok()
}

// === the tests ===

/// With the nft flavour of iptables (`iptables-nft-restore`).
#[test]
fn apply_twice_then_remove_restores_the_tables_nft() {
    run("apply_twice_then_remove_restores_the_tables_nft", || {
        apply_twice_then_remove("nft")
    });
}

/// With the legacy flavour (`iptables-legacy-restore`, x_tables).
#[test]
fn apply_twice_then_remove_restores_the_tables_legacy() {
    run("apply_twice_then_remove_restores_the_tables_legacy", || {
        apply_twice_then_remove("legacy")
    });
}

/// Apply, apply again, remove: one set after two runs, another tool's
/// rules untouched throughout, and the namespace's `iptables-save` output
/// back to what it was; `--dry-run` changes nothing. IPv6 too, where the
/// kernel has an IPv6 nat table.
fn apply_twice_then_remove(flavour: &str) -> Result<(), Skip> {
    let iptables = format!("iptables-{flavour}");
    let ip6tables = format!("ip6tables-{flavour}");
    let save = format!("iptables-{flavour}-save");
    let save6 = format!("ip6tables-{flavour}-save");
    tool(&save, &["-t", "nat"])?;
    let flag = ["--iptables-flavour", flavour];
    let init = |args: &[&str]| init(&[&flag[..], args].concat(), None);
    let other = [
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "--dport",
        "9999",
        "-m",
        "comment",
        "--comment",
        "other-tool",
        "-j",
        "RETURN",
    ];
    tool(&iptables, &other)?;
    let ipv6 = tool(&save6, &["-t", "nat"]).is_ok();
    if ipv6 {
        tool(&ip6tables, &other)?;
    }
    let before = nat(&save);
    let before6 = ipv6.then(|| nat(&save6));

    let dry = ok(&init(&["--dry-run"]));
    assert!(dry.contains("*nat\n") && dry.contains("COMMIT\n"), "{dry}");
    assert_eq!(nat(&save), before, "--dry-run changed the table");

    // A set from another configuration is replaced, not added to.
    ok(&init(&["--skip-outbound-ports", "25"]));
    assert_eq!(count(&nat(&save), "l7inspect: "), 11);

    ok(&init(&[]));
    let once = nat(&save);
    for chain in [
        ":L7INSPECT_PREROUTING",
        ":L7INSPECT_OUTPUT",
        ":L7INSPECT_INBOUND_REDIRECT",
        ":L7INSPECT_OUTBOUND_REDIRECT",
    ] {
        assert_eq!(count(&once, chain), 1, "{chain} in\n{once}");
    }
    assert_eq!(count(&once, "l7inspect: "), 10, "{once}");
    assert_eq!(count(&once, "other-tool"), 1, "{once}");
    // The dry run printed what was then applied: every rule of ours.
    for line in once.lines().filter(|l| l.contains("l7inspect: ")) {
        assert!(dry.contains(line), "{line} not in the dry run:\n{dry}");
    }

    ok(&init(&[]));
    assert_eq!(nat(&save), once, "a second run changed the set");

    // A dry run over an installed set deletes the old jumps first.
    let dry_again = ok(&init(&["--dry-run"]));
    assert!(
        dry_again.contains("-D OUTPUT -p tcp -m comment"),
        "{dry_again}"
    );
    assert_eq!(nat(&save), once);

    if let Some(before6) = &before6 {
        let once6 = nat(&save6);
        assert_eq!(count(&once6, "l7inspect: "), 10, "{once6}");
        assert!(once6.contains("! -d ::1/128 -o lo"), "{once6}");
        assert_ne!(&once6, before6);
    }

    ok(&init(&["--remove"]));
    assert_eq!(nat(&save), before);
    if let Some(before6) = &before6 {
        assert_eq!(&nat(&save6), before6);
    }
    // Removing again is a no-op.
    ok(&init(&["--remove"]));
    assert_eq!(nat(&save), before);
    Ok(())
}

/// When the second restore (IPv6) fails, the run exits 1 with one line that
/// names the program, the failing rule and its stderr, and the IPv4 set it
/// already applied is taken out again. The failure comes from a stand-in
/// `ip6tables-*-restore` early in PATH that rejects line 8.
#[test]
fn failure_names_the_rule_and_leaves_no_partial_set() {
    run("failure_names_the_rule_and_leaves_no_partial_set", || {
        if !has_ipv6_nat() {
            return Err(Skip::netns("no IPv6 nat table"));
        }
        tool(
            "iptables",
            &[
                "-t",
                "nat",
                "-A",
                "OUTPUT",
                "-d",
                "192.0.2.1/32",
                "-j",
                "RETURN",
            ],
        )?;
        let before = nat("iptables-save");
        let dir = std::env::temp_dir().join(format!("l7inspect-init-fake-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        for name in [
            "ip6tables-nft-restore",
            "ip6tables-legacy-restore",
            "ip6tables-restore",
        ] {
            let path = dir.join(name);
            std::fs::write(
                &path,
                "#!/bin/sh\ncat >/dev/null\necho 'ip6tables-restore: line 8 failed' >&2\nexit 1\n",
            )
            .expect("write the stand-in");
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let out = init(&["--ipv6", "true"], Some(&dir));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("restore --noflush` failed"), "{stderr}");
        assert!(
            stderr.contains(r#"at `-A L7INSPECT_PREROUTING -p tcp -m tcp --dport 4191"#),
            "{stderr}"
        );
        assert!(stderr.contains("line 8 failed"), "{stderr}");
        assert_eq!(nat("iptables-save"), before, "a partial set was left");
        Ok(())
    });
}

/// With the rules applied, a connection from an application (a non-proxy
/// uid) to an outside address, and to the namespace's own non-loopback
/// address, lands on the outbound port; the same connection from the proxy
/// uid is not redirected.
#[test]
fn rules_send_the_app_to_the_outbound_port() {
    run("rules_send_the_app_to_the_outbound_port", || {
        app_lands_on_the_outbound_port(&["--ipv6", "false"])
    });
}

/// The same with the native nftables backend.
#[test]
fn nft_rules_send_the_app_to_the_outbound_port() {
    run("nft_rules_send_the_app_to_the_outbound_port", || {
        tool("nft", &["list", "ruleset"])?;
        app_lands_on_the_outbound_port(&["--backend", "nft", "--ipv6", "false"])
    });
}

/// The same with the legacy flavour of iptables (`iptables-legacy-restore`).
#[test]
fn legacy_rules_send_the_app_to_the_outbound_port() {
    run("legacy_rules_send_the_app_to_the_outbound_port", || {
        tool("iptables-legacy-save", &["-t", "nat"])?;
        app_lands_on_the_outbound_port(&["--iptables-flavour", "legacy", "--ipv6", "false"])
    });
}

/// `--backend auto` on a system with nft but no iptables: the native
/// nftables backend; with neither, one line that says what to install.
#[test]
fn auto_backend_is_nft_without_iptables() {
    run("auto_backend_is_nft_without_iptables", || {
        let nft = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
            .into_iter()
            .find(|p| std::path::Path::new(p).is_file())
            .ok_or_else(|| Skip::netns("no nft binary (apt-get install -y nftables)"))?;
        let only_nft = std::env::temp_dir().join(format!("l7i-only-nft-{}", std::process::id()));
        let empty = only_nft.join("empty");
        std::fs::create_dir_all(&empty).expect("temp dir");
        let link = only_nft.join("nft");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(nft, &link).expect("symlink nft");
        let with_path = |dir: &std::path::Path| {
            Command::new(INIT)
                .args(["--ipv6", "false"])
                .env("PATH", dir)
                .output()
                .expect("run l7inspect-init")
        };

        let out = with_path(&empty);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains("install iptables or nftables"), "{stderr}");

        ok(&with_path(&only_nft));
        let table = tool("nft", &["list", "table", "ip", "l7inspect"])?;
        assert!(table.contains("redirect to :4140"), "{table}");
        assert_eq!(nat("iptables-save").matches("l7inspect").count(), 0);
        let _ = std::fs::remove_dir_all(&only_nft);
        Ok(())
    });
}

fn app_lands_on_the_outbound_port(args: &[&str]) -> Result<(), Skip> {
    {
        // A veth pair gives the namespace a non-loopback interface and a
        // route to an "outside" network.
        tool(
            "ip",
            &[
                "link", "add", "l7i0", "type", "veth", "peer", "name", "l7i1",
            ],
        )?;
        tool("ip", &["addr", "add", "10.200.0.1/24", "dev", "l7i0"])?;
        tool("ip", &["link", "set", "l7i0", "up"])?;
        tool("ip", &["link", "set", "l7i1", "up"])?;
        tool("setpriv", &["--version"])?;
        ok(&init(args, None));

        let listener = TcpListener::bind("0.0.0.0:4140").expect("bind the outbound port");
        listener.set_nonblocking(true).expect("nonblocking");
        for target in ["10.200.0.99", "10.200.0.1"] {
            let script = format!("printf 'hello {target}' >/dev/tcp/{target}/80");
            let client = std::process::Command::new("setpriv")
                .args([
                    "--reuid=1000",
                    "--regid=1000",
                    "--clear-groups",
                    "bash",
                    "-c",
                ])
                .arg(&script)
                .spawn()
                .expect("spawn the client");
            let got = accept_one(&listener, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("nothing reached the outbound port for {target}: {e}"));
            assert_eq!(got, format!("hello {target}"));
            let status = client.wait_with_output().expect("client").status;
            assert!(status.success(), "client to {target}: {status}");
        }

        // The proxy's own connection to the same local address goes where it
        // was addressed (nothing listens there: refused), not to 4140.
        let proxy = std::process::Command::new("setpriv")
            .args([
                "--reuid=2102",
                "--regid=2102",
                "--clear-groups",
                "bash",
                "-c",
            ])
            .arg("printf x >/dev/tcp/10.200.0.1/80")
            .output()
            .expect("spawn the proxy-uid client");
        let refused = String::from_utf8_lossy(&proxy.stderr);
        assert!(
            !proxy.status.success() && refused.contains("Connection refused"),
            "the proxy uid's connect was not refused: {proxy:?}"
        );
        assert!(
            accept_one(&listener, Duration::from_millis(200)).is_err(),
            "the proxy uid's connection was redirected"
        );
        Ok(())
    }
}

/// Accepts one connection within `limit` (bounded retry: the listener is
/// non-blocking) and reads it to EOF.
fn accept_one(listener: &TcpListener, limit: Duration) -> io::Result<String> {
    let deadline = Instant::now() + limit;
    loop {
        match listener.accept() {
            Ok((mut conn, _)) => {
                conn.set_nonblocking(false)?;
                conn.set_read_timeout(Some(Duration::from_secs(5)))?;
                let mut got = String::new();
                conn.read_to_string(&mut got)?;
                return Ok(got);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The native nftables backend: our own `ip`/`ip6` tables, replaced on a
/// second run, removed by `--remove`; another tool's nftables table and an
/// iptables-nft rule survive, and `nft list ruleset` is back to what it was.
#[test]
fn nft_apply_twice_then_remove_restores_the_ruleset() {
    run("nft_apply_twice_then_remove_restores_the_ruleset", || {
        tool("nft", &["add", "table", "ip", "othertool"])?;
        tool(
            "nft",
            &["add chain ip othertool out { type nat hook output priority 0; policy accept; }"],
        )?;
        tool(
            "nft",
            &["add rule ip othertool out tcp dport 9999 return comment \"other-tool\""],
        )?;
        tool(
            "iptables-nft",
            &[
                "-t",
                "nat",
                "-A",
                "OUTPUT",
                "-d",
                "192.0.2.1/32",
                "-j",
                "RETURN",
            ],
        )?;
        let ruleset =
            || tool("nft", &["list", "ruleset"]).unwrap_or_else(|s| panic!("{}", s.reason));
        let before = ruleset();

        let dry = ok(&init(&["--backend", "nft", "--dry-run"], None));
        assert!(dry.contains("table ip l7inspect {"), "{dry}");
        assert_eq!(ruleset(), before, "--dry-run changed the ruleset");

        ok(&init(
            &["--backend", "nft", "--skip-outbound-ports", "25"],
            None,
        ));
        ok(&init(&["--backend", "nft"], None));
        let once = ruleset();
        assert_eq!(count(&once, "table ip l7inspect {"), 1, "{once}");
        assert!(!once.contains("skip outbound port 25"), "{once}");
        assert_eq!(count(&once, "other-tool"), 1, "{once}");
        assert!(once.contains("192.0.2.1"), "{once}");
        let ours = count(&once, "comment \"l7inspect: ");
        assert!(ours == 6 || ours == 12, "{ours} rules of ours in\n{once}");

        ok(&init(&["--backend", "nft"], None));
        assert_eq!(ruleset(), once, "a second run changed the ruleset");

        ok(&init(&["--backend", "nft", "--remove"], None));
        assert_eq!(ruleset(), before);
        ok(&init(&["--backend", "nft", "--remove"], None));
        assert_eq!(ruleset(), before);
        Ok(())
    });
}

/// An `nft` failure is one line naming the command, the line it rejected
/// and its stderr, with exit code 1 (a stand-in `nft` early in PATH).
#[test]
fn nft_failure_names_the_rule() {
    let dir = std::env::temp_dir().join(format!("l7inspect-init-fake-nft-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("nft");
    std::fs::write(
        &path,
        "#!/bin/sh\ncat >/dev/null\necho '/dev/stdin:3:1-5: Error: Could not process rule: No such file or directory' >&2\nexit 1\n",
    )
    .expect("write the stand-in");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = init(&["--backend", "nft", "--ipv6", "false"], Some(&dir));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("`nft -f -` failed") && stderr.contains("at `table ip l7inspect {`"),
        "{stderr}"
    );
    assert!(stderr.contains("No such file or directory"), "{stderr}");
}

/// A bad value names the flag and exits 2, before touching iptables.
#[test]
fn bad_values_exit_2() {
    for args in [
        &["--skip-outbound-cidrs", "10.0.0.0/33"][..],
        &["--skip-inbound-ports", "22-"][..],
        &["--ipv6", "maybe"][..],
    ] {
        let out = init(args, None);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(args[0]), "{args:?}: {stderr}");
    }
    let out = Command::new(INIT)
        .env("L7INSPECT_SKIP_OUTBOUND_PORTS", "http")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
