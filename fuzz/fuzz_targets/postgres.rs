//! The PostgreSQL parser on any conversation: the input is a settings byte
//! (the bound on tracked commands, 1 to 4, and on the query text) and then
//! chunks, each a header byte (the top bit: from the server; the rest: the
//! chunk's length, up to 127) and its bytes. Seeded with the recorded
//! sessions of `l7inspect-trace/testdata/db/` cut into such chunks.
//! - it never panics;
//! - pieces do not matter: fed the chunks as they are or one byte at a
//!   time, it reports the same commands (times aside), stops for the same
//!   reason and counts the same untracked commands;
//! - what it reports is bounded: an operation of the bounded set, a table
//!   of at most 128 bytes, a query text within its bound, a SQLSTATE of
//!   five characters, and never more commands than the client sent
//!   5-byte message headers.
#![no_main]

use std::time::SystemTime;

use l7inspect_trace::db::sql::{KEYWORDS, MAX_COLLECTION, OTHER};
use l7inspect_trace::db::{CONNECTION_CLOSED, Command, DbConfig, Start, postgres};
use libfuzzer_sys::fuzz_target;

fn timeless(mut commands: Vec<Command>) -> Vec<Command> {
    for c in &mut commands {
        c.start = Start::at(SystemTime::UNIX_EPOCH);
        c.end = SystemTime::UNIX_EPOCH;
    }
    commands
}

fuzz_target!(|data: &[u8]| {
    let Some((&settings, mut rest)) = data.split_first() else {
        return;
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
    let (commands, stop, untracked) = postgres::replay(&config, &chunks);
    let bytes: Vec<(bool, &[u8])> = chunks
        .iter()
        .flat_map(|&(client, chunk)| chunk.chunks(1).map(move |b| (client, b)))
        .collect();
    let (one_by_one, one_stop, one_untracked) = postgres::replay(&config, &bytes);
    let commands = timeless(commands);
    assert_eq!(
        timeless(one_by_one),
        commands,
        "pieces changed the commands"
    );
    assert_eq!((one_stop, one_untracked), (stop, untracked));

    let client_bytes: usize = chunks.iter().filter(|c| c.0).map(|c| c.1.len()).sum();
    assert!(commands.len() <= client_bytes / 5);
    for c in &commands {
        assert!(c.operation == OTHER || KEYWORDS.contains(&c.operation));
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
            assert!(code.len() == 5 || code == "error", "{code}");
        } else if let Some(e) = &c.error_type {
            assert_eq!(e, CONNECTION_CLOSED);
        }
    }
});
