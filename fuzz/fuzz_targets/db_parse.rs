//! The database parsers (PostgreSQL, MySQL, Redis) on any conversation,
//! through `db::Parser` as the proxy runs them. The input is a settings
//! byte (bits 0-1: the bound on tracked commands, 1 to 4; bits 2-3: the
//! bound on the query text; bits 4-5: the system, 0 PostgreSQL, 1 MySQL,
//! 2 and 3 Redis) and then chunks, each a header byte (the top bit: from
//! the server; the rest: the chunk's length, up to 127) and its bytes.
//! Seeded with the recorded sessions of `l7inspect-trace/testdata/db/` cut
//! into such chunks, and a Redis session.
//! - it never panics;
//! - pieces do not matter: fed the chunks as they are or one byte at a
//!   time, it reports the same commands (times aside), stops for the same
//!   reason and counts the same untracked commands;
//! - what it reports is bounded: an operation of the bounded set (SQL) or
//!   a short upper-case name (Redis), a table of at most 128 bytes, a
//!   query text within its bound, a status code that is the error type
//!   (five characters for a SQLSTATE, digits for MySQL), and never more
//!   commands than the client sent message headers.
#![no_main]

use std::time::SystemTime;

use l7inspect_trace::db::sql::{KEYWORDS, MAX_COLLECTION, OTHER};
use l7inspect_trace::db::{
    CONNECTION_CLOSED, Clock, Command, DbConfig, DbSystem, Parser, Start, StopReason,
};
use libfuzzer_sys::fuzz_target;

fn timeless(mut commands: Vec<Command>) -> Vec<Command> {
    for c in &mut commands {
        c.start = Start::at(SystemTime::UNIX_EPOCH);
        c.end = SystemTime::UNIX_EPOCH;
    }
    commands
}

/// A new parser fed `chunks` and closed: its commands, stop and untracked count.
fn replay(
    system: DbSystem,
    config: &DbConfig,
    chunks: &[(bool, &[u8])],
) -> (Vec<Command>, Option<StopReason>, u64) {
    let mut parser = Parser::new(system, config);
    let mut done = Vec::new();
    for &(client, bytes) in chunks {
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

fuzz_target!(|data: &[u8]| {
    let Some((&settings, mut rest)) = data.split_first() else {
        return;
    };
    let system = match settings >> 4 & 3 {
        0 => DbSystem::Postgresql,
        1 => DbSystem::Mysql,
        _ => DbSystem::Redis,
    };
    let config = DbConfig {
        query_text: true,
        max_query_text: [0, 1, 16, 2048][usize::from(settings >> 2 & 3)],
        max_pending: usize::from(settings & 3) + 1,
        ..DbConfig::default()
    };
    let mut chunks = Vec::new();
    while let Some((&head, tail)) = rest.split_first() {
        let n = usize::from(head & 0x7f).min(tail.len());
        chunks.push((head & 0x80 == 0, &tail[..n]));
        rest = &tail[n..];
    }
    let (commands, stop, untracked) = replay(system, &config, &chunks);
    let bytes: Vec<(bool, &[u8])> = chunks
        .iter()
        .flat_map(|&(client, chunk)| chunk.chunks(1).map(move |b| (client, b)))
        .collect();
    let (one_by_one, one_stop, one_untracked) = replay(system, &config, &bytes);
    let commands = timeless(commands);
    assert_eq!(
        timeless(one_by_one),
        commands,
        "pieces changed the commands"
    );
    assert_eq!((one_stop, one_untracked), (stop, untracked));

    let client_bytes: usize = chunks.iter().filter(|c| c.0).map(|c| c.1.len()).sum();
    // The smallest command: a Redis inline one (`A\n`), a 5-byte header.
    let smallest = if system == DbSystem::Redis { 2 } else { 5 };
    assert!(commands.len() <= client_bytes / smallest);
    for c in &commands {
        match system {
            DbSystem::Redis => assert!(
                c.operation.len() <= 24
                    && c.operation.bytes().all(|b| b.is_ascii_uppercase()
                        || b.is_ascii_digit()
                        || b"_-|".contains(&b)),
                "{}",
                c.operation
            ),
            _ => assert!(c.operation == OTHER || KEYWORDS.contains(&c.operation)),
        }
        assert!(
            c.collection
                .as_ref()
                .is_none_or(|t| t.len() <= MAX_COLLECTION)
        );
        assert!(
            c.query_text
                .as_ref()
                .is_none_or(|t| t.len() <= config.max_query_text)
        );
        if let Some(code) = &c.status_code {
            assert_eq!(c.error_type.as_ref(), Some(code));
            match system {
                DbSystem::Postgresql => assert!(code.len() == 5 || code == "error", "{code}"),
                DbSystem::Mysql => assert!(code.bytes().all(|b| b.is_ascii_digit()), "{code}"),
                DbSystem::Redis => assert!(code.len() <= 24, "{code}"),
            }
        } else if let Some(e) = &c.error_type {
            assert_eq!(e, CONNECTION_CLOSED);
        }
    }
});
