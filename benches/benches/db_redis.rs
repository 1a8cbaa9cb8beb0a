//! The Redis parser's cost per command: what a Redis connection pays for
//! its spans beyond the copy itself (the copy is the same as any
//! passthrough connection's).
//!
//! - `pipeline16`: 16 commands (8 `SET` of 32-byte values, 8 `GET`) in one
//!   client read, their replies in one server write, as redis-benchmark
//!   `-P 16` sends them; per command.
//! - `one_by_one`: a `GET` and its reply, a read and a write each, as an
//!   application without pipelining; per command.
//! - `value_1mib`: a `SET` of a 1 MiB value in 16 KiB reads (the relay's
//!   buffer): the value is counted past, not scanned; per byte, beside
//!   `baseline/copy`, a copy of the same bytes.
//!
//! The parser's clock is read at most once per read or write, as in the
//! proxy. Span building and the histogram are not in these numbers: see
//! docs/benchmarks.md for the end-to-end cost with redis-benchmark.
//!
//! ```text
//! cargo bench -p l7inspect-benches --bench db_redis
//! ```

#![forbid(unsafe_code)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use l7inspect_trace::db::{Clock, DbConfig, DbSystem, Parser};
use std::hint::black_box;

fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn redis(c: &mut Criterion) {
    let value = [b'v'; 32];
    let (mut commands, mut replies) = (Vec::new(), Vec::new());
    for i in 0..8 {
        let key = format!("key:{i:08}");
        commands.extend(command(&[b"SET", key.as_bytes(), &value]));
        replies.extend_from_slice(b"+OK\r\n");
        commands.extend(command(&[b"GET", key.as_bytes()]));
        replies.extend_from_slice(b"$32\r\n");
        replies.extend_from_slice(&value);
        replies.extend_from_slice(b"\r\n");
    }
    let mut group = c.benchmark_group("db_redis");
    let config = DbConfig::default();
    let mut parser = Parser::new(DbSystem::Redis, &config);
    let mut done = Vec::with_capacity(16);
    group.throughput(Throughput::Elements(16));
    group.bench_function("pipeline16", |b| {
        b.iter(|| {
            parser.client_sent(black_box(&commands), &mut Clock::new(), &mut done);
            parser.server_sent(black_box(&replies), &mut Clock::new(), &mut done);
            assert_eq!(done.len(), 16);
            done.clear();
        })
    });

    let get = command(&[b"GET", b"key:00000001"]);
    let reply = b"$32\r\nvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv\r\n";
    group.throughput(Throughput::Elements(1));
    group.bench_function("one_by_one", |b| {
        b.iter(|| {
            parser.client_sent(black_box(&get), &mut Clock::new(), &mut done);
            parser.server_sent(black_box(reply), &mut Clock::new(), &mut done);
            assert_eq!(done.len(), 1);
            done.clear();
        })
    });

    let big = vec![b'x'; 1 << 20];
    let set = command(&[b"SET", b"big", &big]);
    group.throughput(Throughput::Bytes(set.len() as u64));
    group.bench_function("value_1mib", |b| {
        b.iter(|| {
            for chunk in set.chunks(16 * 1024) {
                parser.client_sent(black_box(chunk), &mut Clock::new(), &mut done);
            }
            parser.server_sent(b"+OK\r\n", &mut Clock::new(), &mut done);
            assert_eq!(done.len(), 1);
            done.clear();
        })
    });
    let mut out = vec![0u8; 16 * 1024];
    group.bench_function("baseline/copy", |b| {
        b.iter(|| {
            for chunk in set.chunks(16 * 1024) {
                out[..chunk.len()].copy_from_slice(black_box(chunk));
            }
            black_box(&out);
        })
    });
    group.finish();
}

criterion_group!(benches, redis);
criterion_main!(benches);
