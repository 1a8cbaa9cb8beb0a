//! MySQL command spans, end to end: a real MariaDB server (started by the
//! test in a temporary directory) and real clients (the `mariadb` CLI, and
//! Perl's DBD::MariaDB with server-side prepared statements) through an
//! in-process sidecar on 127.0.0.1:
//!
//! ```text
//! mariadb / perl ──► sidecar (outbound forward: CLIENT spans) ──► mariadbd
//! ```
//!
//! The server speaks first: the connection is detected as `mysql` from its
//! greeting. The clients' own output shows the bytes passed unchanged.

mod support;

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    sync::Arc,
};

use l7inspect_sidecar::{Forward, SidecarConfig};
use l7inspect_test_support::{KillOnDrop, TempDir, collector::Collector, pki::TestCa};
use l7inspect_trace::span::SpanRecord;
use opentelemetry::trace::SpanKind;
use support::{Running, attr, free_port, have, is_root, start};

/// A MariaDB server on 127.0.0.1 with TLS available, a database `shop`
/// with a table `items` (3 rows) and a user `app`/`secret`; stopped by its
/// PID when dropped.
struct Mariadb {
    addr: SocketAddr,
    _process: KillOnDrop,
    _dir: TempDir,
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mariadb_server() -> Mariadb {
    let dir = TempDir::new("l7inspect-mariadb");
    let data = dir.path().join("data");
    let user: &[&str] = if is_root() { &["--user=root"] } else { &[] };
    run(Command::new("mariadb-install-db")
        .arg(format!("--datadir={}", data.display()))
        .args(user)
        .args(["--auth-root-authentication-method=normal", "--skip-test-db"]));
    let ca = TestCa::new("l7inspect mariadb test CA");
    let (cert, key) = ca
        .server(&["127.0.0.1", "localhost"])
        .write(dir.path(), "server");
    let port = free_port();
    let child = Command::new("mariadbd")
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--socket={}", dir.path().join("sock").display()))
        .arg(format!("--pid-file={}", dir.path().join("pid").display()))
        .args([&format!("--port={port}"), "--bind-address=127.0.0.1"])
        .args(user)
        .arg(format!("--ssl-cert={}", cert.display()))
        .arg(format!("--ssl-key={}", key.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mariadbd starts");
    let process = KillOnDrop(child);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    l7inspect_test_support::wait_for_blocking("mariadbd to accept", || {
        std::net::TcpStream::connect(addr).ok()
    });
    run(Command::new("mariadb")
        .args([
            "--no-defaults",
            "-h127.0.0.1",
            &format!("-P{port}"),
            "-uroot",
            "--skip-ssl",
        ])
        .arg("-e")
        .arg(
            "CREATE DATABASE shop; CREATE TABLE shop.items(id INT PRIMARY KEY, name VARCHAR(20)); \
             INSERT INTO shop.items VALUES (1,'apple'),(2,'pear'),(3,'fig'); \
             CREATE USER 'app'@'%' IDENTIFIED BY 'secret'; GRANT ALL ON shop.* TO 'app'@'%';",
        ));
    Mariadb {
        addr,
        _process: process,
        _dir: dir,
    }
}

/// The `mariadb` CLI through `addr` as `app` on `shop`, reading `sql` from
/// its standard input (`--force`: on past errors); its output.
fn mariadb(addr: SocketAddr, tls: bool, sql: &str) -> String {
    let out = support::run_with_input(
        Command::new("mariadb")
            .args([
                "--no-defaults",
                "-h127.0.0.1",
                &format!("-P{}", addr.port()),
            ])
            .args(["-uapp", "-psecret", "-D", "shop", "--force", "--batch"])
            // Comments sent as written (sqlcommenter's among them).
            .arg("--comments")
            .arg(if tls { "--ssl" } else { "--skip-ssl" })
            .args(if tls {
                &["--ssl-verify-server-cert=0"][..]
            } else {
                &[]
            }),
        sql.as_bytes(),
    );
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Perl DBD::MariaDB with server-side prepared statements (binary protocol:
/// COM_STMT_PREPARE, COM_STMT_EXECUTE) through `addr`; its output.
fn perl_prepared(addr: SocketAddr) -> String {
    let script = r#"
use DBI;
my $dbh = DBI->connect("DBI:MariaDB:database=shop;host=127.0.0.1;port=$ARGV[0];mariadb_server_prepare=1;mariadb_ssl=0",
    "app", "secret", { RaiseError => 1, PrintError => 0 });
my $sth = $dbh->prepare("SELECT name FROM items WHERE id = ?");
for my $id (1, 3) { $sth->execute($id); my ($name) = $sth->fetchrow_array; print "$name\n"; $sth->finish; }
my $ins = $dbh->prepare("INSERT INTO items VALUES (?, ?)");
$ins->execute(7, 'kiwi');
print "inserted\n";
$dbh->disconnect;
"#;
    let out = Command::new("perl")
        .arg("-e")
        .arg(script)
        .arg(addr.port().to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "perl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn sidecar(target: SocketAddr, config: SidecarConfig) -> Running {
    start(SidecarConfig {
        transparent: false,
        admin_listen: vec!["127.0.0.1:0".parse().unwrap()],
        outbound_forwards: vec![Forward {
            listen: "127.0.0.1:0".parse().unwrap(),
            target,
        }],
        ..config
    })
    .await
}

/// The MySQL spans, once `done` holds of them (spans reach the ring a
/// batch at a time).
async fn wait_spans(
    s: &Running,
    done: impl Fn(&[Arc<SpanRecord>]) -> bool,
) -> Vec<Arc<SpanRecord>> {
    l7inspect_test_support::wait_for("the MySQL spans", || {
        let spans = mysql_spans(s);
        done(&spans).then_some(spans)
    })
    .await
}

fn mysql_spans(s: &Running) -> Vec<Arc<SpanRecord>> {
    s.spans
        .snapshot()
        .into_iter()
        .filter(|s| attr(s, "db.system.name").as_deref() == Some("mysql"))
        .collect()
}

fn have_all(test: &str) -> bool {
    have(test, "mariadbd", "--version")
        && have(test, "mariadb", "--version")
        && have(test, "mariadb-install-db", "--version")
        && have(test, "perl", "-MDBD::MariaDB")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_queries_prepared_statements_and_tls() {
    let test = "mariadb_queries_prepared_statements_and_tls";
    if !have_all(test) {
        return;
    }
    let db = tokio::task::spawn_blocking(mariadb_server).await.unwrap();
    let collector = Collector::start();
    let mut config = SidecarConfig {
        db: l7inspect_trace::db::DbConfig {
            query_text: true,
            ..Default::default()
        },
        ..SidecarConfig::default()
    };
    config.tracing.export = support::export_to(&collector);
    let s = sidecar(db.addr, config).await;
    let via = s.addrs.outbound_forwards[0].listen;

    // The CLI: queries, an error, an update.
    let out = tokio::task::spawn_blocking(move || {
        mariadb(
            via,
            false,
            "SELECT id, name FROM items WHERE name <> 'x' ORDER BY id;\n\
             SELECT * FROM missing;\n\
             UPDATE items SET name = 'plum' WHERE id > 1;\n\
             SELECT 7 /*traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'*/;",
        )
    })
    .await
    .unwrap();
    assert!(out.contains("1\tapple\n2\tpear\n3\tfig"), "{out}");
    assert!(out.contains("ERROR 1146"), "{out}");
    let traced = |s: &SpanRecord| s.trace_id.to_string() == "4bf92f3577b34da6a3ce929d0e0e4736";
    let spans = wait_spans(&s, |spans| spans.iter().any(|s| traced(s))).await;
    // The statement's sqlcommenter comment named its parent.
    let commented = spans.iter().find(|s| traced(s)).unwrap();
    assert_eq!(commented.parent_span_id.to_string(), "00f067aa0ba902b7");
    let names: Vec<_> = spans.iter().map(|s| s.name.as_ref()).collect();
    assert!(names.contains(&"SELECT items"), "{names:?}");
    assert!(names.contains(&"UPDATE items"), "{names:?}");
    let select = spans.iter().find(|s| s.name == "SELECT items").unwrap();
    assert_eq!(select.kind, SpanKind::Client);
    assert_eq!(attr(select, "db.operation.name").as_deref(), Some("SELECT"));
    assert_eq!(attr(select, "db.collection.name").as_deref(), Some("items"));
    assert_eq!(attr(select, "db.namespace").as_deref(), Some("shop"));
    assert_eq!(
        attr(select, "db.response.returned_rows").as_deref(),
        Some("3")
    );
    assert_eq!(
        attr(select, "db.query.text").as_deref(),
        Some("SELECT id, name FROM items WHERE name <> ? ORDER BY id")
    );
    let missing = spans.iter().find(|s| s.name == "SELECT missing").unwrap();
    assert_eq!(
        attr(missing, "db.response.status_code").as_deref(),
        Some("1146")
    );
    assert_eq!(attr(missing, "error.type").as_deref(), Some("1146"));
    // The rows an UPDATE changed are not rows returned.
    let update = spans.iter().find(|s| s.name == "UPDATE items").unwrap();
    assert_eq!(attr(update, "db.response.returned_rows"), None);

    // Prepared statements, binary protocol: a span per execution.
    let out = tokio::task::spawn_blocking(move || perl_prepared(via))
        .await
        .unwrap();
    assert_eq!(out, "apple\nplum\ninserted\n");
    let spans = wait_spans(&s, |spans| spans.iter().any(|s| s.name == "INSERT items")).await;
    let executes: Vec<_> = spans
        .iter()
        .filter(|s| {
            attr(s, "db.query.text").as_deref() == Some("SELECT name FROM items WHERE id = ?")
        })
        .collect();
    assert_eq!(executes.len(), 2, "{spans:#?}");
    for e in &executes {
        assert_eq!(e.name, "SELECT items");
        assert_eq!(attr(e, "db.response.returned_rows").as_deref(), Some("1"));
    }
    assert!(spans.iter().any(|s| s.name == "INSERT items"));

    // TLS: passed through, no spans, counted.
    let before = mysql_spans(&s).len();
    let out =
        tokio::task::spawn_blocking(move || mariadb(via, true, "SELECT COUNT(*) FROM items;"))
            .await
            .unwrap();
    assert!(out.contains("COUNT(*)\n4"), "{out}");
    s.wait_metric(
        "l7inspect_db_parse_stopped_total{db_system_name=\"mysql\",reason=\"tls\"}",
        1.0,
    )
    .await;
    assert_eq!(mysql_spans(&s).len(), before, "no spans inside TLS");
    // Detected from the server's greeting.
    let connections = s
        .metric("l7inspect_tcp_connections_total{direction=\"outbound\",protocol=\"mysql\"}")
        .unwrap();
    assert_eq!(connections, 3.0);
    let count = s
        .metric(
            "db_client_operation_duration_seconds_count{db_system_name=\"mysql\",db_operation_name=\"SELECT\",error_type=\"1146\"}",
        )
        .unwrap();
    assert_eq!(count, 1.0);
    // The same spans reached a real receiver: OTLP/HTTP, and Zipkin
    // checked against its spec.
    support::check_db_spans_exported(s, &collector, "mysql").await;
}
