//! PostgreSQL command spans, end to end: a real PostgreSQL server (Debian's
//! `postgresql` package, a cluster made by the test with `initdb` in a
//! temporary directory) and real clients (psql for simple queries, COPY and
//! `sslmode`; tokio-postgres for the extended protocol) through an
//! in-process sidecar on 127.0.0.1:
//!
//! ```text
//! psql / tokio-postgres ──► sidecar (outbound forward: CLIENT spans) ──► postgres
//! ```

mod support;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
};

use l7inspect_sidecar::{Forward, SidecarConfig};
use l7inspect_test_support::{KillOnDrop, TempDir, collector::Collector, pki::TestCa};
use l7inspect_trace::span::SpanRecord;
use opentelemetry::trace::{SpanId, SpanKind};
use support::{Running, attr, free_port, is_root, start};

/// The directory of `initdb` and `postgres`: on PATH, or Debian's
/// `/usr/lib/postgresql/<version>/bin`.
fn pg_bin() -> Option<PathBuf> {
    let on_path = Command::new("initdb").arg("--version").output();
    if on_path.is_ok_and(|o| o.status.success()) {
        return Some(PathBuf::new());
    }
    let mut versions: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

/// `program` from `bin`, as the `postgres` user when root (PostgreSQL
/// refuses to run as root).
fn pg_command(bin: &Path, program: &str) -> Command {
    let path = bin.join(program);
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
            .arg(path);
        c
    } else {
        Command::new(path)
    }
}

/// A PostgreSQL server on 127.0.0.1 (trust authentication, TLS available),
/// stopped by its PID when dropped.
struct Postgres {
    addr: SocketAddr,
    _process: KillOnDrop,
    _dir: TempDir,
}

fn postgres_server(bin: &Path) -> Postgres {
    let dir = TempDir::new("l7inspect-postgres");
    let data = dir.path().join("data");
    let ca = TestCa::new("l7inspect postgres test CA");
    let (cert, key) = ca.server(&["localhost"]).write(dir.path(), "server");
    if is_root() {
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(ok.success());
    }
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = pg_command(bin, "initdb")
        .args(["-A", "trust", "-U", "postgres", "-D"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    let child = pg_command(bin, "postgres")
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-k"])
        .arg(dir.path())
        .args(["-c", "listen_addresses=127.0.0.1", "-c", "ssl=on"])
        .arg("-c")
        .arg(format!("ssl_cert_file={}", cert.display()))
        .arg("-c")
        .arg(format!("ssl_key_file={}", key.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("postgres starts");
    let process = KillOnDrop(child);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    l7inspect_test_support::wait_for_blocking("postgres to accept", || {
        let ready = Command::new("psql")
            .args(["-X", "-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-U", "postgres", "-c", "SELECT 1"])
            .env("PGSSLMODE", "disable")
            .output()
            .ok()?;
        ready.status.success().then_some(())
    });
    Postgres {
        addr,
        _process: process,
        _dir: dir,
    }
}

/// psql through `addr` with `sslmode`, reading `sql` from its standard
/// input (on past errors); its output, standard error included.
fn psql(addr: SocketAddr, sslmode: &str, sql: &str) -> String {
    let out = support::run_with_input(
        Command::new("psql")
            .args([
                "-X",
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                &addr.port().to_string(),
            ])
            .args(["-U", "postgres", "-d", "postgres", "-A", "-t"])
            .env("PGSSLMODE", sslmode),
        sql.as_bytes(),
    );
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

async fn wait_spans(
    s: &Running,
    done: impl Fn(&[Arc<SpanRecord>]) -> bool,
) -> Vec<Arc<SpanRecord>> {
    l7inspect_test_support::wait_for("the PostgreSQL spans", || {
        let spans: Vec<_> = s
            .spans
            .snapshot()
            .into_iter()
            .filter(|s| attr(s, "db.system.name").as_deref() == Some("postgresql"))
            .collect();
        done(&spans).then_some(spans)
    })
    .await
}

fn named<'a>(spans: &'a [Arc<SpanRecord>], name: &str) -> Vec<&'a Arc<SpanRecord>> {
    spans.iter().filter(|s| s.name == name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_queries_copy_tls_and_prepared_statements() {
    let test = "psql_queries_copy_tls_and_prepared_statements";
    let Some(bin) = pg_bin() else {
        l7inspect_test_support::skip(
            test,
            l7inspect_test_support::Need::Tools,
            "PostgreSQL's initdb not found (Debian: postgresql)",
        );
        return;
    };
    if !support::have(test, "psql", "--version") {
        return;
    }
    let pg = tokio::task::spawn_blocking(move || postgres_server(&bin))
        .await
        .unwrap();
    let collector = Collector::start();
    let mut config = SidecarConfig {
        db: l7inspect_trace::db::DbConfig {
            query_text: true,
            ..Default::default()
        },
        ..SidecarConfig::default()
    };
    config.tracing.export = support::export_to(&collector);
    let s = start(SidecarConfig {
        transparent: false,
        admin_listen: vec!["127.0.0.1:0".parse().unwrap()],
        outbound_forwards: vec![Forward {
            listen: "127.0.0.1:0".parse().unwrap(),
            target: pg.addr,
        }],
        ..config
    })
    .await;
    let via = s.addrs.outbound_forwards[0].listen;

    // Simple queries, an error, COPY both ways, sslmode=disable.
    let out = tokio::task::spawn_blocking(move || {
        psql(
            via,
            "disable",
            "CREATE TABLE items (id int PRIMARY KEY, name text);\n\
             INSERT INTO items VALUES (1, 'apple'), (2, 'pear'), (3, 'fig');\n\
             SELECT name FROM items WHERE id > 1 ORDER BY id;\n\
             SELECT * FROM missing;\n\
             COPY items FROM STDIN;\n4\tkiwi\n5\tlime\n\\.\n\
             COPY items TO STDOUT;\n\
             SELECT count(*) FROM items;\n\
             SELECT 7 /*app='shop',traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'*/;\n",
        )
    })
    .await
    .unwrap();
    assert!(out.contains("pear\nfig\n"), "{out}");
    assert!(out.contains("relation \"missing\" does not exist"), "{out}");
    assert!(out.contains("4\tkiwi\n5\tlime\n"), "{out}");
    assert!(out.contains("\n5\n"), "{out}");
    let traced = |s: &SpanRecord| s.trace_id.to_string() == "4bf92f3577b34da6a3ce929d0e0e4736";
    let spans = wait_spans(&s, |spans| spans.iter().any(|s| traced(s))).await;
    // The statement's sqlcommenter comment named its parent.
    let commented = spans.iter().find(|s| traced(s)).unwrap();
    assert_eq!(commented.parent_span_id.to_string(), "00f067aa0ba902b7");
    assert_eq!(attr(commented, "l7inspect.parent.inferred"), None);
    s.wait_metric("l7inspect_parent_inference_total{outcome=\"context\"}", 1.0)
        .await;
    assert!(
        spans
            .iter()
            .filter(|s| !traced(s))
            .all(|s| s.parent_span_id == SpanId::INVALID),
        "the others are roots"
    );
    let insert = named(&spans, "INSERT items")[0];
    assert_eq!(insert.kind, SpanKind::Client);
    assert_eq!(attr(insert, "db.namespace").as_deref(), Some("postgres"));
    assert_eq!(
        attr(insert, "db.query.text").as_deref(),
        // As psql sent it, its `;` included.
        Some("INSERT INTO items VALUES (?, ?), (?, ?), (?, ?);")
    );
    let select = named(&spans, "SELECT items")[0];
    assert_eq!(
        attr(select, "db.response.returned_rows").as_deref(),
        Some("2")
    );
    let missing = named(&spans, "SELECT missing")[0];
    assert_eq!(
        attr(missing, "db.response.status_code").as_deref(),
        Some("42P01")
    );
    assert_eq!(attr(missing, "error.type").as_deref(), Some("42P01"));
    // COPY is one command each, never a query per row.
    let copies = named(&spans, "COPY items");
    assert_eq!(copies.len(), 2, "{spans:#?}");
    // Rows returned: the 5 of COPY TO STDOUT; none for the 2 rows sent
    // FROM STDIN, nor for the 3 the INSERT added.
    let mut copied: Vec<_> = copies
        .iter()
        .map(|c| attr(c, "db.response.returned_rows"))
        .collect();
    copied.sort();
    assert_eq!(copied, [None, Some("5".to_owned())]);
    assert_eq!(attr(insert, "db.response.returned_rows"), None);
    // The last statement, after both COPYs: replies still matched.
    let count = named(&spans, "SELECT items")
        .into_iter()
        .find(|s| attr(s, "db.query.text").as_deref() == Some("SELECT count(*) FROM items;"))
        .expect("the count's span");
    assert_eq!(
        attr(count, "db.response.returned_rows").as_deref(),
        Some("1")
    );

    // sslmode=prefer: the SSLRequest is answered `S`: passed through, no
    // spans, counted.
    let before = wait_spans(&s, |_| true).await.len();
    let out = tokio::task::spawn_blocking(move || psql(via, "prefer", "SELECT 42;\n"))
        .await
        .unwrap();
    assert_eq!(out, "42\n");
    s.wait_metric(
        "l7inspect_db_parse_stopped_total{db_system_name=\"postgresql\",reason=\"tls\"}",
        1.0,
    )
    .await;
    assert_eq!(wait_spans(&s, |_| true).await.len(), before);

    // The extended protocol: tokio-postgres prepares, binds and executes.
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            via.port()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    let driver = tokio::spawn(conn);
    let stmt = client
        .prepare("SELECT name FROM items WHERE id = $1")
        .await
        .unwrap();
    for (id, want) in [(1, "apple"), (4, "kiwi")] {
        let row = client.query_one(&stmt, &[&id]).await.unwrap();
        assert_eq!(row.get::<_, &str>(0), want);
    }
    let err = client
        .query("SELECT nope FROM items", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42703");
    drop(client);
    driver.await.unwrap().unwrap();
    let spans = wait_spans(&s, |spans| {
        spans
            .iter()
            .any(|s| attr(s, "db.response.status_code").as_deref() == Some("42703"))
    })
    .await;
    let executions: Vec<_> = spans
        .iter()
        .filter(|s| {
            attr(s, "db.query.text").as_deref() == Some("SELECT name FROM items WHERE id = $1")
        })
        .collect();
    // The prepare itself (tokio-postgres's Parse/Describe/Sync) is no
    // execution; the two executions are, and the query that failed to
    // prepare is one command, failed.
    assert_eq!(executions.len(), 2, "{spans:#?}");
    for e in executions {
        assert_eq!(e.name, "SELECT items");
        assert_eq!(attr(e, "db.response.returned_rows").as_deref(), Some("1"));
        assert!(e.error_type.is_none());
    }
    let failed = spans
        .iter()
        .find(|s| attr(s, "db.response.status_code").as_deref() == Some("42703"))
        .unwrap();
    assert_eq!(failed.name, "SELECT items");
    assert_eq!(attr(failed, "error.type").as_deref(), Some("42703"));
    let histogram = s
        .metric(
            "db_client_operation_duration_seconds_count{db_system_name=\"postgresql\",db_operation_name=\"SELECT\",error_type=\"42P01\"}",
        )
        .unwrap();
    assert_eq!(histogram, 1.0);
    // The same spans reached a real receiver: OTLP/HTTP, and Zipkin
    // checked against its spec.
    support::check_db_spans_exported(s, &collector, "postgresql").await;
}
