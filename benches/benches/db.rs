//! What the database parsers cost per command, beside the copy that
//! carries the bytes anyway.
//!
//! `sql`: the SQL helpers run once per query, on its first bytes:
//! `operation` (the first keyword), `collection` (the one table, when
//! certain) and `sanitize` (literals to `?`, into one new string; only
//! when `db.query.text` is on), on a few realistic statements. Baseline:
//! `baseline/to_owned`, copying the statement into a new string, the least
//! that keeping its text at all would cost.
//!
//! `postgres`: the PostgreSQL parser over a recorded session of 1,000
//! commands (`l7inspect-trace/testdata/db/`), fed as it was read from the
//! sockets, both ways, from the startup message to `Terminate`; the
//! throughput is per command. `psql-simple`: `SELECT 1;` sent 1,000 times
//! by psql (simple protocol, one `Query` per command); `pgbench-prepared`:
//! `SELECT 1;` executed 1,000 times by `pgbench -M prepared` (extended
//! protocol: `Bind`, `Describe`, `Execute`, `Sync` per command, the
//! statement parsed once). `parse` uses the default configuration (no
//! query text), `parse+text` records the sanitized text too. Baseline:
//! `baseline/copy`, copying the same bytes into a reused buffer, which the
//! proxy does anyway to pass them on.
//!
//! ```text
//! cargo bench -p l7inspect-benches --bench db
//! ```

#![forbid(unsafe_code)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use l7inspect_trace::db::{
    DbConfig, postgres,
    sql::{Dialect, collection, operation, sanitize},
};
use std::hint::black_box;

/// Statements as applications send them: an ORM's select with
/// placeholders, a literal-heavy insert, an update, and a long report
/// query with a join (no table: two are named).
const QUERIES: [(&str, Dialect, &str); 5] = [
    (
        "pg-select",
        Dialect::Postgres,
        r#"SELECT "orders"."id", "orders"."customer_id", "orders"."total" FROM "orders" WHERE "orders"."customer_id" = $1 ORDER BY "orders"."created_at" DESC LIMIT 20"#,
    ),
    (
        "pg-insert",
        Dialect::Postgres,
        "INSERT INTO public.events (kind, payload, at, weight) VALUES ('login', E'{\"ip\": \"10.0.0.1\"}', '2026-12-07 12:00:00+00', -1.5e3) RETURNING id",
    ),
    (
        "pg-update",
        Dialect::Postgres,
        "UPDATE accounts SET balance = balance - 100.00, updated_at = now() WHERE id = 42",
    ),
    (
        "pg-join",
        Dialect::Postgres,
        "/* report */ SELECT c.name, sum(o.total) AS spent FROM customers c JOIN orders o ON o.customer_id = c.id WHERE o.created_at > '2026-01-01' AND c.country IN ('DE', 'FR', 'IT') GROUP BY c.name HAVING sum(o.total) > 1000 ORDER BY spent DESC",
    ),
    (
        "mysql-select",
        Dialect::Mysql,
        "SELECT `id`, `email` FROM `users` WHERE `email` = 'a@example.com' AND `active` = 1 # login",
    ),
];

fn sql(c: &mut Criterion) {
    let mut group = c.benchmark_group("sql");
    for (name, dialect, query) in QUERIES {
        let query = query.as_bytes();
        group.throughput(Throughput::Bytes(query.len() as u64));
        group.bench_with_input(BenchmarkId::new("operation", name), query, |b, q| {
            b.iter(|| operation(black_box(q)))
        });
        group.bench_with_input(BenchmarkId::new("collection", name), query, |b, q| {
            b.iter(|| collection(black_box(q), dialect).map(str::len))
        });
        group.bench_with_input(BenchmarkId::new("sanitize", name), query, |b, q| {
            b.iter(|| sanitize(black_box(q), dialect, 2048))
        });
        group.bench_with_input(BenchmarkId::new("all", name), query, |b, q| {
            b.iter(|| {
                let q = black_box(q);
                (
                    operation(q),
                    collection(q, dialect).map(str::len),
                    sanitize(q, dialect, 2048),
                )
            })
        });
        group.bench_with_input(
            BenchmarkId::new("baseline/to_owned", name),
            query,
            |b, q| b.iter(|| String::from_utf8_lossy(black_box(q)).into_owned()),
        );
    }
    group.finish();
}

/// The frames of a capture made by `testdata/db/record.py`: direction
/// (`true`: from the client), bytes.
fn frames(capture: &[u8]) -> Vec<(bool, &[u8])> {
    let mut frames = Vec::new();
    let mut rest = capture;
    while let [direction, a, b, c, d, tail @ ..] = rest {
        let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
        frames.push((*direction == b'C', &tail[..len]));
        rest = &tail[len..];
    }
    frames
}

fn parser(c: &mut Criterion) {
    let captures = [
        (
            "psql-simple",
            &include_bytes!("../../l7inspect-trace/testdata/db/postgres_psql_select1000.bin")[..],
        ),
        (
            "pgbench-prepared",
            &include_bytes!("../../l7inspect-trace/testdata/db/postgres_pgbench_select1000.bin")[..],
        ),
    ];
    let text = DbConfig {
        query_text: true,
        ..DbConfig::default()
    };
    let mut group = c.benchmark_group("postgres");
    for (name, capture) in captures {
        let frames = frames(capture);
        let (commands, stop, _) = postgres::replay(&DbConfig::default(), &frames);
        assert_eq!((commands.len(), stop), (1000, None), "{name}");
        group.throughput(Throughput::Elements(commands.len() as u64));
        group.bench_with_input(BenchmarkId::new("parse", name), &frames, |b, f| {
            b.iter(|| postgres::replay(&DbConfig::default(), black_box(f)))
        });
        group.bench_with_input(BenchmarkId::new("parse+text", name), &frames, |b, f| {
            b.iter(|| postgres::replay(&text, black_box(f)))
        });
        let mut buffer = Vec::with_capacity(capture.len());
        group.bench_with_input(BenchmarkId::new("baseline/copy", name), &frames, |b, f| {
            b.iter(|| {
                buffer.clear();
                for (_, bytes) in black_box(f) {
                    buffer.extend_from_slice(bytes);
                }
                buffer.len()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, sql, parser);
criterion_main!(benches);
