//! The database parsers' cost per command, on captures of real sessions
//! (`l7inspect-trace/testdata/db/`, see its README).
//!
//! A parser runs beside the copy of every database connection, on every
//! byte each way, so its cost is per command and per byte of reply; these
//! benches report it per command (`Throughput::Elements`). A session is
//! replayed whole, handshake included, as its recorded chunks (the relay's
//! real `recv()` sizes). `baseline/chunks` is the floor: walking the same
//! chunks and touching each byte's length, nothing else.
//!
//! ```text
//! cargo bench -p l7inspect-benches --bench db_parse
//! ```

#![forbid(unsafe_code)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use l7inspect_trace::db::{Clock, Command, DbConfig, DbSystem, Parser, StopReason};
use std::hint::black_box;

macro_rules! capture {
    ($name:literal) => {
        (
            $name.trim_end_matches(".bin"),
            chunks(include_bytes!(concat!(
                "../../l7inspect-trace/testdata/db/",
                $name
            ))),
        )
    };
}

/// The chunks of a capture written by `testdata/db/record.py`: direction
/// (`C` client, `S` server), u32 big-endian length, bytes.
fn chunks(capture: &'static [u8]) -> Vec<(bool, &'static [u8])> {
    let mut out = Vec::new();
    let mut rest = capture;
    while let [direction, a, b, c, d, tail @ ..] = rest {
        let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
        out.push((*direction == b'C', &tail[..len]));
        rest = &tail[len..];
    }
    out
}

/// Runs a new parser of `system` over a recorded session and closes it:
/// the commands it reported, where it stopped, how many went untracked.
fn replay<'a>(
    system: DbSystem,
    chunks: impl IntoIterator<Item = (bool, &'a [u8])>,
    config: &DbConfig,
) -> (Vec<Command>, Option<StopReason>, u64) {
    let mut parser = Parser::new(system, config);
    let mut done = Vec::new();
    for (client, bytes) in chunks {
        let mut clock = Clock::new();
        if client {
            parser.client_sent(bytes, &mut clock, &mut done);
        } else {
            parser.server_sent(bytes, &mut clock, &mut done);
        }
    }
    let stopped = parser.stopped();
    parser.close(&mut Clock::new(), &mut done);
    (done, stopped, parser.take_untracked())
}

fn mysql(c: &mut Criterion) {
    let config = DbConfig::default();
    let with_text = DbConfig {
        query_text: true,
        ..DbConfig::default()
    };
    let mut group = c.benchmark_group("db_parse/mysql");
    for (name, session) in [
        capture!("mysql_cli.bin"),
        capture!("mysql_prepared.bin"),
        capture!("mysql_large_rows.bin"),
    ] {
        let (commands, stopped, _) = replay(DbSystem::Mysql, session.iter().copied(), &config);
        assert_eq!(stopped, None, "{name}: the parser must follow it all");
        assert!(!commands.is_empty(), "{name}: no commands");
        group.throughput(Throughput::Elements(commands.len() as u64));
        group.bench_with_input(BenchmarkId::new("parse", name), &session, |b, s| {
            b.iter(|| replay(DbSystem::Mysql, black_box(s).iter().copied(), &config))
        });
        group.bench_with_input(
            BenchmarkId::new("parse+query_text", name),
            &session,
            |b, s| b.iter(|| replay(DbSystem::Mysql, black_box(s).iter().copied(), &with_text)),
        );
        group.bench_with_input(
            BenchmarkId::new("baseline/chunks", name),
            &session,
            |b, s| {
                b.iter(|| {
                    black_box(s)
                        .iter()
                        .map(|(client, bytes)| usize::from(*client) + bytes.len())
                        .sum::<usize>()
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, mysql);
criterion_main!(benches);
