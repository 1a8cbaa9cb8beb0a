//! The MySQL parser on captures of real MariaDB sessions
//! (`testdata/db/mysql_*.bin`, see its README) and on hand-made bytes.

use super::*;

/// One chunk of a capture: `true` for the client's bytes.
type Chunk = (bool, &'static [u8]);

/// The chunks of a capture written by `testdata/db/record.py`.
fn chunks(capture: &'static [u8]) -> Vec<Chunk> {
    let mut out = Vec::new();
    let mut rest = capture;
    while !rest.is_empty() {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let client = match rest[0] {
            b'C' => true,
            b'S' => false,
            d => panic!("bad direction {d}"),
        };
        out.push((client, &rest[5..5 + len]));
        rest = &rest[5 + len..];
    }
    out
}

macro_rules! capture {
    ($name:literal) => {
        chunks(include_bytes!(concat!("../../../testdata/db/", $name)))
    };
}

/// What a test compares of a command: everything but its times.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    operation: &'static str,
    namespace: Option<String>,
    rows: Option<u64>,
    status_code: Option<String>,
    error_type: Option<String>,
    collection: Option<String>,
    query_text: Option<String>,
}

impl Seen {
    fn of(c: &Command) -> Self {
        assert!(c.end >= c.start.time, "{c:?} ends before it starts");
        Self {
            operation: c.operation,
            namespace: c.namespace.as_deref().map(str::to_owned),
            rows: c.rows,
            status_code: c.status_code.as_deref().map(str::to_owned),
            error_type: c.error_type.as_deref().map(str::to_owned),
            collection: c.collection.clone(),
            query_text: c.query_text.clone(),
        }
    }
}

/// A command that succeeded, returning `rows` rows (result sets).
fn ok(operation: &'static str, namespace: &str, rows: u64) -> Seen {
    Seen {
        rows: Some(rows),
        ..done(operation, namespace)
    }
}

/// A command that succeeded with an OK: no rows returned (the rows it
/// affected are not).
fn done(operation: &'static str, namespace: &str) -> Seen {
    Seen {
        operation,
        namespace: Some(namespace.to_owned()),
        rows: None,
        status_code: None,
        error_type: None,
        collection: None,
        query_text: None,
    }
}

impl Seen {
    /// The same, on this table.
    fn on(mut self, table: &str) -> Self {
        self.collection = Some(table.to_owned());
        self
    }
}

/// A command that failed with this error number.
fn failed(operation: &'static str, namespace: &str, code: &str) -> Seen {
    Seen {
        operation,
        namespace: Some(namespace.to_owned()),
        rows: None,
        status_code: Some(code.to_owned()),
        error_type: Some(code.to_owned()),
        collection: None,
        query_text: None,
    }
}

/// Feeds `chunks` to a new parser, each cut by `split` into pieces; then
/// closes it. Returns the commands, where it stopped, and the parser.
fn run(
    chunks: &[Chunk],
    config: &DbConfig,
    mut split: impl FnMut(&[u8]) -> Vec<&[u8]>,
) -> (Vec<Seen>, Option<StopReason>, MysqlParser) {
    let mut parser = MysqlParser::new(config);
    let mut done = Vec::new();
    for (client, bytes) in chunks {
        for piece in split(bytes) {
            let mut clock = Clock::new();
            if *client {
                parser.client_sent(piece, &mut clock, &mut done);
            } else {
                parser.server_sent(piece, &mut clock, &mut done);
            }
        }
    }
    let stopped = parser.stopped();
    parser.close(&mut Clock::new(), &mut done);
    (done.iter().map(Seen::of).collect(), stopped, parser)
}

fn whole(bytes: &[u8]) -> Vec<&[u8]> {
    vec![bytes]
}

fn bytewise(bytes: &[u8]) -> Vec<&[u8]> {
    bytes.chunks(1).collect()
}

/// Cuts at pseudo-random points (a fixed xorshift: the same cuts on every
/// run, different ones for each seed).
fn random_splits(seed: u64) -> impl FnMut(&[u8]) -> Vec<&[u8]> {
    let mut state = seed | 1;
    move |mut bytes: &[u8]| {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let n = 1 + (state % 40) as usize;
            let (a, b) = bytes.split_at(n.min(bytes.len()));
            out.push(a);
            bytes = b;
        }
        out
    }
}

/// The same commands and stop whether the capture comes as it was
/// recorded, a byte at a time, or cut anywhere.
fn same_in_any_pieces(chunks: &[Chunk], config: &DbConfig) -> (Vec<Seen>, Option<StopReason>) {
    let (commands, stopped, _) = run(chunks, config, whole);
    let (bytewise_commands, bytewise_stopped, _) = run(chunks, config, bytewise);
    assert_eq!(bytewise_commands, commands, "one byte at a time");
    assert_eq!(bytewise_stopped, stopped);
    for seed in 1..=20 {
        let (split_commands, split_stopped, _) = run(chunks, config, random_splits(seed));
        assert_eq!(split_commands, commands, "random splits, seed {seed}");
        assert_eq!(split_stopped, stopped);
    }
    (commands, stopped)
}

#[test]
fn mariadb_cli_session() {
    let chunks = capture!("mysql_cli.bin");
    let (commands, stopped) = same_in_any_pieces(&chunks, &DbConfig::default());
    assert_eq!(stopped, None);
    assert_eq!(
        commands,
        vec![
            ok("SELECT", "shop", 3).on("items"),
            done("INSERT", "shop").on("items"),
            done("UPDATE", "shop").on("items"),
            failed("SELECT", "shop", "1146").on("missing"),
            done("DELETE", "shop").on("items"),
            done("UPDATE", "shop").on("items"),
            // The CLI asks SELECT DATABASE() before each `use`: `use
            // mysql` was refused (1044), so still shop.
            ok("SELECT", "shop", 1),
            ok("SELECT", "shop", 1),
            // `use shop2` was accepted.
            ok("SELECT", "shop2", 1),
            // Two statements, two result sets: 1 row and 3 (and no one
            // table).
            ok("SELECT", "shop2", 4),
            ok("SELECT", "shop2", 1).on("shop.items"),
        ]
    );
}

#[test]
fn prepared_statements_of_a_python_client() {
    let chunks = capture!("mysql_prepared.bin");
    let (commands, stopped) = same_in_any_pieces(&chunks, &DbConfig::default());
    assert_eq!(stopped, None);
    assert_eq!(
        commands,
        vec![
            done("SET", "shop"),
            done("SET", "shop"),
            // Executions of `SELECT ... WHERE id > ?` with 1, then 2.
            ok("SELECT", "shop", 2).on("items"),
            ok("SELECT", "shop", 1).on("items"),
            done("INSERT", "shop").on("items"),
            done("DELETE", "shop").on("items"),
            // A prepare that failed: no execution follows it.
            failed("SELECT", "shop", "1146").on("nowhere"),
            done("COMMIT", "shop"),
        ]
    );
}

#[test]
fn local_infile_and_a_progress_report_of_a_real_server() {
    let chunks = capture!("mysql_local_infile.bin");
    let (commands, stopped) = same_in_any_pieces(&chunks, &DbConfig::default());
    assert_eq!(stopped, None);
    assert_eq!(
        commands,
        vec![
            done("LOAD", "shop"),
            ok("SELECT", "shop", 1).on("items"),
            done("DELETE", "shop").on("items"),
        ]
    );
}

#[test]
fn deprecate_eof_replies_of_a_real_server() {
    let chunks = capture!("mysql_deprecate_eof.bin");
    let (commands, stopped) = same_in_any_pieces(&chunks, &DbConfig::default());
    assert_eq!(stopped, None);
    assert_eq!(
        commands,
        vec![
            done("SET", "shop"),
            done("SET", "shop"),
            ok("SELECT", "shop", 3).on("items"),
        ]
    );
}

#[test]
fn a_tls_upgraded_session_stops_the_parser() {
    let chunks = capture!("mysql_tls.bin");
    let (commands, stopped) = same_in_any_pieces(&chunks, &DbConfig::default());
    assert_eq!(stopped, Some(StopReason::Tls));
    assert!(commands.is_empty(), "{commands:?}");
}

#[test]
fn large_rows_are_counted_not_kept() {
    let chunks = capture!("mysql_large_rows.bin");
    let (commands, stopped) = same_in_any_pieces(&chunks, &DbConfig::default());
    assert_eq!(stopped, None);
    assert_eq!(commands, vec![ok("SELECT", "shop", 3).on("seq_1_to_3")]);
    let (_, _, parser) = run(&chunks, &DbConfig::default(), whole);
    assert!(
        parser.server.head.capacity() <= SERVER_HEAD,
        "kept {} bytes of the server's",
        parser.server.head.capacity()
    );
}

#[test]
fn query_text_is_sanitized_when_configured() {
    let config = DbConfig {
        query_text: true,
        ..DbConfig::default()
    };
    let (commands, _) = same_in_any_pieces(&capture!("mysql_cli.bin"), &config);
    let texts: Vec<_> = commands.iter().map(|c| c.query_text.as_deref()).collect();
    assert_eq!(texts.len(), 11);
    assert_eq!(texts[1], Some("INSERT INTO items VALUES (?,?)"));
    assert_eq!(texts[2], Some("UPDATE items SET name=? WHERE id > ?"));
    // Executions carry their statement's text, placeholders kept.
    let (commands, _) = same_in_any_pieces(&capture!("mysql_prepared.bin"), &config);
    assert_eq!(
        commands[2].query_text.as_deref(),
        Some("SELECT id, name FROM items WHERE id > ?")
    );
    // Off by default.
    let (commands, _) = same_in_any_pieces(&capture!("mysql_cli.bin"), &DbConfig::default());
    assert!(commands.iter().all(|c| c.query_text.is_none()));
}

#[test]
fn max_pending_bounds_what_is_tracked() {
    // The CLI session with at most 0 commands tracked: none reported, each
    // counted as untracked, and replies still paired (no stop).
    let chunks = capture!("mysql_cli.bin");
    let config = DbConfig {
        max_pending: 0,
        ..DbConfig::default()
    };
    let (commands, stopped, mut parser) = run(&chunks, &config, whole);
    assert!(commands.is_empty());
    assert_eq!(stopped, None);
    assert_eq!(parser.take_untracked(), 11);
    assert_eq!(parser.take_untracked(), 0, "reset when read");
}

// --- hand-made sessions ---

/// A packet: header (length, sequence id) and payload.
fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = (payload.len() as u32).to_le_bytes()[..3].to_vec();
    p.push(seq);
    p.extend_from_slice(payload);
    p
}

/// A server greeting with these capabilities (MySQL: no extended ones).
fn greeting(caps: u32) -> Vec<u8> {
    let mut g = vec![0x0a];
    g.extend_from_slice(b"8.0.36\0");
    g.extend_from_slice(&[1, 0, 0, 0]);
    g.extend_from_slice(b"abcdefgh\0");
    g.extend_from_slice(&(caps as u16).to_le_bytes());
    g.push(0xff);
    g.extend_from_slice(&2u16.to_le_bytes());
    g.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
    g.push(21);
    g.extend_from_slice(&[0; 10]);
    g.extend_from_slice(b"ijklmnopqrst\0caching_sha2_password\0");
    packet(0, &g)
}

/// A HandshakeResponse41 with these capabilities, naming `db`.
fn handshake_response(caps: u32, db: &str) -> Vec<u8> {
    let mut r = caps.to_le_bytes().to_vec();
    r.extend_from_slice(&(1u32 << 24).to_le_bytes());
    r.push(0xff);
    r.extend_from_slice(&[0; 23]);
    r.extend_from_slice(b"app\0");
    r.push(20);
    r.extend_from_slice(&[7; 20]);
    r.extend_from_slice(db.as_bytes());
    r.push(0);
    r.extend_from_slice(b"caching_sha2_password\0");
    packet(1, &r)
}

const CAPS: u32 = CLIENT_MYSQL
    | CLIENT_CONNECT_WITH_DB
    | CLIENT_PROTOCOL_41
    | CLIENT_SECURE_CONNECTION
    | CLIENT_PLUGIN_AUTH_LENENC_DATA
    | 0x8_0000; // CLIENT_PLUGIN_AUTH

/// An OK packet: affected rows, status flags.
fn ok_packet_bytes(seq: u8, header: u8, affected: u8, status: u16) -> Vec<u8> {
    let mut p = vec![header, affected, 0];
    p.extend_from_slice(&status.to_le_bytes());
    p.extend_from_slice(&[0, 0]);
    packet(seq, &p)
}

fn err_packet(seq: u8, code: u16, message: &str) -> Vec<u8> {
    let mut p = vec![0xff];
    p.extend_from_slice(&code.to_le_bytes());
    p.extend_from_slice(b"#42S02");
    p.extend_from_slice(message.as_bytes());
    packet(seq, &p)
}

fn query(text: &str) -> Vec<u8> {
    let mut p = vec![0x03];
    p.extend_from_slice(text.as_bytes());
    packet(0, &p)
}

/// A session that is through its handshake (auth switch round included),
/// with `caps` on both sides, in schema `app`.
fn connected(caps: u32) -> Vec<Chunk> {
    vec![
        (false, leak(greeting(caps))),
        (true, leak(handshake_response(caps, "app"))),
        // Auth switch request, the client's answer, more data, OK.
        (
            false,
            leak(packet(
                2,
                b"\xfemysql_native_password\0abcdefghijklmnopqrst\0",
            )),
        ),
        (true, leak(packet(3, &[9; 20]))),
        (false, leak(packet(4, b"\x01\x03"))),
        (false, leak(ok_packet_bytes(5, 0, 0, 2))),
    ]
}

fn leak(v: Vec<u8>) -> &'static [u8] {
    Box::leak(v.into_boxed_slice())
}

fn column_def(seq: u8) -> Vec<u8> {
    packet(
        seq,
        b"\x03def\x03app\x01t\x01t\x01a\x01a\x0c\x3f\x00\x0b\x00\x00\x00\x03\x00\x00\x00\x00\x00",
    )
}

#[test]
fn deprecate_eof_result_sets_and_multi_results() {
    let caps = CAPS | CLIENT_DEPRECATE_EOF;
    let mut s = connected(caps);
    // A result set of 2 rows ended by an OK with a 0xfe header, then a
    // statement with 2 results (an OK with MORE_RESULTS, then a set).
    let mut reply = packet(1, &[1]);
    reply.extend(column_def(2));
    reply.extend(packet(3, b"\x011"));
    // A row of one 250-byte value.
    let mut long_row = vec![0xfa];
    long_row.extend_from_slice(&[b'x'; 0xfa]);
    reply.extend(packet(4, &long_row));
    reply.extend(ok_packet_bytes(5, 0xfe, 0, 2));
    s.push((true, leak(query("SELECT a FROM t"))));
    s.push((false, leak(reply)));
    let mut reply = ok_packet_bytes(1, 0, 3, 2 | SERVER_MORE_RESULTS_EXISTS);
    reply.extend(packet(2, &[1]));
    reply.extend(column_def(3));
    reply.extend(packet(4, b"\x012"));
    reply.extend(ok_packet_bytes(5, 0xfe, 0, 2));
    s.push((true, leak(query("UPDATE t SET a = 1; SELECT a FROM t"))));
    s.push((false, leak(reply)));
    let (commands, stopped) = same_in_any_pieces(&s, &DbConfig::default());
    assert_eq!(stopped, None);
    assert_eq!(
        commands,
        // The UPDATE's 3 affected rows are not returned; its SELECT's 1 is.
        vec![ok("SELECT", "app", 2).on("t"), ok("UPDATE", "app", 1)]
    );
}

#[test]
fn a_16_mib_row_is_one_row() {
    let mut s = connected(CAPS);
    // One value of 16 MiB + 10 bytes: the row's payload is a 0xffffff
    // packet (starting with 0xfe, the 8-byte length) plus the rest.
    let value_len: u64 = (MAX_PACKET as u64) + 10;
    let mut row = vec![0xfe];
    row.extend_from_slice(&value_len.to_le_bytes());
    row.resize(row.len() + value_len as usize, b'v');
    let mut reply = packet(1, &[1]);
    reply.extend(column_def(2));
    reply.extend(packet(3, b"\xfe\0\0\x02\0"));
    reply.extend(packet(4, &row[..MAX_PACKET]));
    reply.extend(packet(5, &row[MAX_PACKET..]));
    reply.extend(packet(6, b"\xfe\0\0\x02\0"));
    s.push((true, leak(query("SELECT big FROM t"))));
    s.push((false, leak(reply)));
    // Large: whole and in random pieces, not a byte at a time.
    let (commands, stopped, parser) = run(&s, &DbConfig::default(), whole);
    assert_eq!(stopped, None);
    assert_eq!(commands, vec![ok("SELECT", "app", 1).on("t")]);
    assert!(parser.server.head.capacity() <= SERVER_HEAD);
    let (split, _, _) = run(&s, &DbConfig::default(), random_splits(7));
    assert_eq!(split, commands);
}

#[test]
fn a_long_query_keeps_only_its_head() {
    let mut s = connected(CAPS);
    let mut text = String::from("INSERT INTO t VALUES ");
    while text.len() < 100_000 {
        text.push_str("(1),");
    }
    text.push_str("(1)");
    s.push((true, leak(query(&text))));
    s.push((false, leak(ok_packet_bytes(1, 0, 200, 2))));
    let (commands, stopped, parser) = run(&s, &DbConfig::default(), whole);
    assert_eq!(stopped, None);
    // Cut at 16 KiB, and still its table: it comes before the cut.
    assert_eq!(commands, vec![done("INSERT", "app").on("t")]);
    assert!(parser.client.head.capacity() <= CLIENT_HEAD);
}

#[test]
fn local_infile_is_followed_to_its_ok() {
    let mut s = connected(CAPS);
    s.push((
        true,
        leak(query("LOAD DATA LOCAL INFILE 'x.csv' INTO TABLE t")),
    ));
    s.push((false, leak(packet(1, b"\xfbx.csv"))));
    // 300 packets of file data: sequence ids wrap through 0, which must
    // not be taken for commands.
    let mut data = Vec::new();
    for i in 0..300u32 {
        data.extend(packet((2 + i) as u8, b"1,2\n"));
    }
    data.extend(packet((302u32 % 256) as u8, b""));
    s.push((true, leak(data)));
    s.push((false, leak(ok_packet_bytes(47, 0, 42, 2))));
    s.push((true, leak(query("SELECT 1"))));
    let mut reply = packet(1, &[1]);
    reply.extend(column_def(2));
    reply.extend(packet(3, b"\xfe\0\0\x02\0"));
    reply.extend(packet(4, b"\x011"));
    reply.extend(packet(5, b"\xfe\0\0\x02\0"));
    s.push((false, leak(reply)));
    let (commands, stopped) = same_in_any_pieces(&s, &DbConfig::default());
    assert_eq!(stopped, None);
    assert_eq!(commands, vec![done("LOAD", "app"), ok("SELECT", "app", 1)]);
}

#[test]
fn progress_reports_are_not_replies() {
    let mut s = connected(CAPS);
    s.push((true, leak(query("ALTER TABLE t ADD COLUMN b INT"))));
    let mut reply = packet(1, b"\xff\xff\xff\x01\x01\x02\x00\x10\x27\x00\x00\x05stage");
    reply.extend(ok_packet_bytes(2, 0, 0, 2));
    s.push((false, leak(reply)));
    let (commands, _) = same_in_any_pieces(&s, &DbConfig::default());
    assert_eq!(commands, vec![done("ALTER", "app")]);
}

#[test]
fn mariadb_metadata_caching_skips_column_definitions() {
    // MariaDB (no CLIENT_MYSQL) with MARIADB_CLIENT_CACHE_METADATA on both
    // sides: column counts carry a "metadata follows" byte.
    let caps = CAPS & !CLIENT_MYSQL;
    let mut g = greeting(caps);
    // Extended capabilities: the greeting's last 4 reserved bytes.
    let ext_at = 4 + 1 + 7 + 4 + 9 + 2 + 1 + 2 + 2 + 1 + 6;
    g[ext_at] = MARIADB_CLIENT_CACHE_METADATA as u8;
    let mut r = handshake_response(caps, "app");
    r[4 + 28] = MARIADB_CLIENT_CACHE_METADATA as u8;
    let mut s = vec![
        (false, leak(g)),
        (true, leak(r)),
        (false, leak(ok_packet_bytes(2, 0, 0, 2))),
    ];
    // With metadata, then without (the client has it cached).
    let mut reply = packet(1, &[1, 1]);
    reply.extend(column_def(2));
    reply.extend(packet(3, b"\xfe\0\0\x02\0"));
    reply.extend(packet(4, b"\x011"));
    reply.extend(packet(5, b"\xfe\0\0\x02\0"));
    s.push((true, leak(query("SELECT a FROM t"))));
    s.push((false, leak(reply)));
    let mut reply = packet(1, &[1, 0]);
    reply.extend(packet(2, b"\xfe\0\0\x02\0"));
    reply.extend(packet(3, b"\x011"));
    reply.extend(packet(4, b"\x012"));
    reply.extend(packet(5, b"\xfe\0\0\x02\0"));
    s.push((true, leak(query("SELECT a FROM t"))));
    s.push((false, leak(reply)));
    let (commands, stopped) = same_in_any_pieces(&s, &DbConfig::default());
    assert_eq!(stopped, None);
    assert_eq!(
        commands,
        vec![
            ok("SELECT", "app", 1).on("t"),
            ok("SELECT", "app", 2).on("t")
        ]
    );
}

/// A prepare of `text` answered with statement `id`, one parameter and
/// one column, no DEPRECATE_EOF.
fn prepared(s: &mut Vec<Chunk>, text: &str, id: u32) {
    let mut p = vec![0x16];
    p.extend_from_slice(text.as_bytes());
    s.push((true, leak(packet(0, &p))));
    let mut prepare_ok = vec![0];
    prepare_ok.extend_from_slice(&id.to_le_bytes());
    prepare_ok.extend_from_slice(&[1, 0, 1, 0, 0, 0, 0]);
    let mut reply = packet(1, &prepare_ok);
    reply.extend(column_def(2));
    reply.extend(packet(3, b"\xfe\0\0\x02\0"));
    reply.extend(column_def(4));
    reply.extend(packet(5, b"\xfe\0\0\x02\0"));
    s.push((false, leak(reply)));
}

fn execute(id: u32, flags: u8) -> Vec<u8> {
    let mut p = vec![0x17];
    p.extend_from_slice(&id.to_le_bytes());
    p.push(flags);
    p.extend_from_slice(&[1, 0, 0, 0, 0, 1, 3, 0, 1, 0, 0, 0]);
    packet(0, &p)
}

/// A binary result set of `rows` rows (one column).
fn binary_rows(rows: u8) -> Vec<u8> {
    let mut reply = packet(1, &[1]);
    reply.extend(column_def(2));
    reply.extend(packet(3, b"\xfe\0\0\x02\0"));
    for i in 0..rows {
        reply.extend(packet(4 + i, &[0, 0, i, 0, 0, 0]));
    }
    reply.extend(packet(4 + rows, b"\xfe\0\0\x02\0"));
    reply
}

#[test]
fn executions_are_named_after_their_statement_until_it_is_closed() {
    let mut s = connected(CAPS);
    prepared(&mut s, "DELETE FROM t WHERE a = ?", 7);
    prepared(&mut s, "SELECT a FROM t WHERE a > ?", 8);
    s.push((true, leak(execute(8, 0))));
    s.push((false, leak(binary_rows(3))));
    s.push((true, leak(execute(7, 0))));
    s.push((false, leak(ok_packet_bytes(1, 0, 5, 2))));
    // COM_STMT_CLOSE of 8 (no reply), then 8 is unknown.
    s.push((true, leak(packet(0, &[0x19, 8, 0, 0, 0]))));
    s.push((true, leak(execute(8, 0))));
    s.push((
        false,
        leak(err_packet(1, 1243, "Unknown prepared statement handler")),
    ));
    // MariaDB's "the statement just prepared" (id 0xffffffff), sent
    // before the prepare's reply.
    let mut p = vec![0x16];
    p.extend_from_slice(b"UPDATE t SET a = ?");
    s.push((true, leak(packet(0, &p))));
    s.push((true, leak(execute(u32::MAX, 0))));
    let mut prepare_ok = vec![0];
    prepare_ok.extend_from_slice(&9u32.to_le_bytes());
    prepare_ok.extend_from_slice(&[0, 0, 1, 0, 0, 0, 0]);
    let mut reply = packet(1, &prepare_ok);
    reply.extend(column_def(2));
    reply.extend(packet(3, b"\xfe\0\0\x02\0"));
    reply.extend(ok_packet_bytes(1, 0, 4, 2));
    s.push((false, leak(reply)));
    let (commands, stopped) = same_in_any_pieces(&s, &DbConfig::default());
    assert_eq!(stopped, None);
    assert_eq!(
        commands,
        vec![
            ok("SELECT", "app", 3).on("t"),
            done("DELETE", "app").on("t"),
            failed(sql::OTHER, "app", "1243"),
            done("UPDATE", "app").on("t"),
        ]
    );
}

#[test]
fn a_cursor_ends_the_execution_at_its_definitions() {
    let mut s = connected(CAPS);
    prepared(&mut s, "SELECT a FROM t WHERE a > ?", 1);
    s.push((true, leak(execute(1, 1))));
    let mut reply = packet(1, &[1]);
    reply.extend(column_def(2));
    let status = 2 | SERVER_STATUS_CURSOR_EXISTS;
    reply.extend(packet(3, &[0xfe, 0, 0, status as u8, 0]));
    s.push((false, leak(reply)));
    // COM_STMT_FETCH: rows, then the EOF; no command of its own.
    s.push((true, leak(packet(0, &[0x1c, 1, 0, 0, 0, 10, 0, 0, 0]))));
    let mut rows = packet(1, &[0, 0, 1, 0, 0, 0]);
    rows.extend(packet(2, b"\xfe\0\0\x82\0"));
    s.push((false, leak(rows)));
    s.push((true, leak(query("COMMIT"))));
    s.push((false, leak(ok_packet_bytes(1, 0, 0, 2))));
    let (commands, stopped) = same_in_any_pieces(&s, &DbConfig::default());
    assert_eq!(stopped, None);
    // Its rows come with COM_STMT_FETCH, after it.
    let cursor = done("SELECT", "app").on("t");
    assert_eq!(commands, vec![cursor, done("COMMIT", "app")]);
}

#[test]
fn init_db_and_change_user_set_the_namespace() {
    let mut s = connected(CAPS);
    s.push((true, leak(packet(0, b"\x02other"))));
    s.push((false, leak(ok_packet_bytes(1, 0, 0, 2))));
    s.push((true, leak(query("SELECT 1"))));
    s.push((false, leak(ok_packet_bytes(1, 0, 0, 2))));
    // COM_CHANGE_USER to schema "third", with an auth switch round.
    let mut change = b"\x11bob\0\x14".to_vec();
    change.extend_from_slice(&[5; 20]);
    change.extend_from_slice(b"third\0");
    s.push((true, leak(packet(0, &change))));
    s.push((
        false,
        leak(packet(
            1,
            b"\xfemysql_native_password\0abcdefghijklmnopqrst\0",
        )),
    ));
    s.push((true, leak(packet(2, &[6; 20]))));
    s.push((false, leak(ok_packet_bytes(3, 0, 0, 2))));
    s.push((true, leak(query("SELECT 2"))));
    s.push((false, leak(ok_packet_bytes(1, 0, 0, 2))));
    let (commands, stopped) = same_in_any_pieces(&s, &DbConfig::default());
    assert_eq!(stopped, None);
    assert_eq!(
        commands,
        vec![done("SELECT", "other"), done("SELECT", "third")]
    );
}

#[test]
fn a_command_without_its_reply_is_closed_with_the_connection() {
    let mut s = connected(CAPS);
    s.push((true, leak(query("SELECT SLEEP(100)"))));
    s.push((false, leak(packet(1, &[1]))));
    let (commands, stopped) = same_in_any_pieces(&s, &DbConfig::default());
    assert_eq!(stopped, None);
    let mut closed = done("SELECT", "app");
    closed.error_type = Some(CONNECTION_CLOSED.to_owned());
    assert_eq!(commands, vec![closed]);
}

#[test]
fn a_refused_connection_makes_no_command() {
    let refusal = packet(0, b"\xff\x6a\x04Host '10.0.0.1' is not allowed to connect");
    let s = vec![(false, leak(refusal))];
    let (commands, stopped) = same_in_any_pieces(&s, &DbConfig::default());
    assert_eq!((commands, stopped), (vec![], None));
    // Nor does a failed authentication, whatever the client sends after.
    let mut s = connected(CAPS);
    s.truncate(2);
    s.push((false, leak(err_packet(2, 1045, "Access denied"))));
    s.push((true, leak(query("SELECT 1"))));
    let (commands, stopped) = same_in_any_pieces(&s, &DbConfig::default());
    assert_eq!((commands, stopped), (vec![], None));
}

#[test]
fn replication_and_unknown_commands_stop_the_parser() {
    for command in [&b"\x12\x04\0\0\0\0\0\x01\0\0\0"[..], b"\x1e\0\0", b"\x60"] {
        let mut s = connected(CAPS);
        s.push((true, leak(packet(0, command))));
        s.push((false, leak(packet(1, b"\0binlog event"))));
        let (commands, stopped) = same_in_any_pieces(&s, &DbConfig::default());
        assert_eq!(stopped, Some(StopReason::Unsupported), "{command:?}");
        assert!(commands.is_empty());
    }
}

#[test]
fn bytes_that_are_not_mysql_are_malformed() {
    // A reply nobody asked for, a command with a nonzero sequence id, a
    // result set whose definitions lack their EOF.
    let mut unasked = connected(CAPS);
    unasked.push((false, leak(ok_packet_bytes(1, 0, 0, 2))));
    let mut bad_seq = connected(CAPS);
    bad_seq.push((true, leak(packet(3, b"\x03SELECT 1"))));
    let mut no_eof = connected(CAPS);
    no_eof.push((true, leak(query("SELECT a FROM t"))));
    let mut reply = packet(1, &[1]);
    reply.extend(column_def(2));
    reply.extend(packet(3, b"\x011"));
    no_eof.push((false, leak(reply)));
    let greeting_first = vec![(true, leak(query("SELECT 1")))];
    for s in [unasked, bad_seq, no_eof, greeting_first] {
        let (commands, stopped) = same_in_any_pieces(&s, &DbConfig::default());
        assert_eq!(stopped, Some(StopReason::Malformed), "{s:?}");
        assert!(commands.is_empty(), "{commands:?}");
    }
}

#[test]
fn an_ssl_request_stops_at_once() {
    let caps = CAPS | CLIENT_SSL;
    let mut ssl = caps.to_le_bytes().to_vec();
    ssl.extend_from_slice(&(1u32 << 24).to_le_bytes());
    ssl.push(0xff);
    ssl.extend_from_slice(&[0; 23]);
    let s = vec![(false, leak(greeting(caps))), (true, leak(packet(1, &ssl)))];
    let (_, stopped) = same_in_any_pieces(&s, &DbConfig::default());
    assert_eq!(stopped, Some(StopReason::Tls));
}

#[test]
fn the_statement_map_is_bounded() {
    let mut s = connected(CAPS);
    for id in 0..(MAX_STATEMENTS as u32 + 10) {
        prepared(&mut s, "DELETE FROM t WHERE a = ?", id);
    }
    let (_, stopped, parser) = run(&s, &DbConfig::default(), whole);
    assert_eq!(stopped, None);
    assert_eq!(parser.statements.len(), MAX_STATEMENTS);
}

/// Damaged sessions (bytes flipped, dropped or repeated in the captures)
/// never panic, and give the same answer in any pieces: the parser's state
/// depends on the bytes, never on where reads end.
#[test]
fn damaged_sessions_are_the_same_in_any_pieces() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for capture in [
        capture!("mysql_cli.bin"),
        capture!("mysql_prepared.bin"),
        capture!("mysql_tls.bin"),
        capture!("mysql_local_infile.bin"),
        capture!("mysql_deprecate_eof.bin"),
    ] {
        for _ in 0..40 {
            let damaged: Vec<Chunk> = capture
                .iter()
                .map(|(client, bytes)| {
                    let mut b = bytes.to_vec();
                    if !b.is_empty() && next() % 3 == 0 {
                        let at = (next() % b.len() as u64) as usize;
                        match next() % 3 {
                            0 => b[at] ^= 1 << (next() % 8),
                            1 => {
                                b.remove(at);
                            }
                            _ => b.insert(at, b[at]),
                        }
                    }
                    (*client, leak(b))
                })
                .collect();
            let (commands, stopped, _) = run(&damaged, &DbConfig::default(), whole);
            let seed = next();
            let (split, split_stopped, _) =
                run(&damaged, &DbConfig::default(), random_splits(seed));
            assert_eq!(split, commands, "seed {seed}");
            assert_eq!(split_stopped, stopped);
        }
    }
}

#[test]
fn a_sqlcommenter_context_goes_with_a_query() {
    const TP: &str = "00-5bd66ef5095369c7b0d1f8f4bd33716a-c532cb4098ac3dd2-01";
    let mut s = connected(CAPS);
    s.push((
        true,
        leak(query(&format!("SELECT 1 /*traceparent='{TP}'*/"))),
    ));
    s.push((false, leak(ok_packet_bytes(1, 0, 0, 2))));
    s.push((true, leak(query("SELECT 2"))));
    s.push((false, leak(ok_packet_bytes(1, 0, 0, 2))));
    // (Seen leaves the context out: the commands themselves.)
    let mut p = MysqlParser::new(&DbConfig::default());
    let mut done = Vec::new();
    for (client, bytes) in &s {
        if *client {
            p.client_sent(bytes, &mut Clock::new(), &mut done);
        } else {
            p.server_sent(bytes, &mut Clock::new(), &mut done);
        }
    }
    let contexts: Vec<_> = done
        .iter()
        .map(|c| c.context.as_ref().map(|cx| cx.trace_id().to_string()))
        .collect();
    assert_eq!(
        contexts,
        [Some("5bd66ef5095369c7b0d1f8f4bd33716a".to_owned()), None]
    );
}
