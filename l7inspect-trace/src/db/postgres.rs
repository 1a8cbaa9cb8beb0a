//! The PostgreSQL parser: the frontend/backend protocol 3.0, read beside
//! the copy, a [`Command`] per simple query and per extended-protocol
//! execution.
//!
//! # What makes a command
//! - A simple query (`Query`, `Q`) is one command, from its first byte to
//!   the `ReadyForQuery` (`Z`) that ends it. A `Query` may hold several
//!   statements (`SELECT 1; SELECT 2`): it is still one command (the
//!   server runs them as one implicit transaction, and the client waits
//!   for all of them), named after the first statement; its rows are
//!   those its statements returned, together, its status the first error
//!   (the server stops at it).
//! - Rows are rows returned (`db.response.returned_rows`): a `SELECT`'s or
//!   `FETCH`'s count, a `COPY ... TO STDOUT`'s, the `DataRow`s of a
//!   statement with a `RETURNING` clause; never the rows an `INSERT`,
//!   `UPDATE`, `DELETE` or `COPY FROM` changed (their tags count those).
//! - In the extended protocol, each `Execute` is one command. It starts
//!   with the first byte of the messages that lead to it (the `Parse`,
//!   `Bind` and `Describe` sent since the previous `Execute` or `Sync`)
//!   and ends when its completion arrives: `CommandComplete`,
//!   `EmptyQueryResponse`, `PortalSuspended` (a portal read in pieces:
//!   each piece is a command, its rows counted from the `DataRow`s), or
//!   `ErrorResponse`. Its operation, table and text are those of the
//!   statement its portal was bound to: statements are remembered by name
//!   ([`MAX_STATEMENTS`], with only what a span needs), portals likewise
//!   ([`MAX_PORTALS`]), so a statement prepared once and executed many
//!   times (pgbench `-M prepared`, JDBC, npgsql) is named each time. A
//!   `Parse` alone (preparing) makes no command.
//! - After an error the server skips every message up to the next `Sync`:
//!   the `Execute`s it skipped get no reply and make no command (they
//!   never ran); the error goes to the first `Execute` still waiting, which
//!   is the one whose `Parse`, `Bind` or execution failed.
//! - `FunctionCall` (`F`, the fast path of large objects) makes no command;
//!   its `ReadyForQuery` is accounted for.
//!
//! Replies never reach the wrong command: `NotificationResponse` (`A`,
//! LISTEN/NOTIFY), `NoticeResponse`, `ParameterStatus` are asynchronous
//! and ignored; COPY data (`d`, `c`, `f` both ways) is skipped; a
//! `CopyBothResponse` (replication) stops the parser.
//!
//! # Startup
//! The client's first message has no type byte. An `SSLRequest` or
//! `GSSENCRequest` is answered by one byte: `S` or `G` means the rest is
//! encrypted, and the parser stops ([`StopReason::Tls`]); `N` means the
//! client goes on in the clear. A `CancelRequest` connection makes no
//! command. The `StartupMessage` gives the namespace: its `database`
//! parameter, or `user` when there is none (as the server does).
//!
//! # Memory
//! Message bodies are counted, not kept, except the heads the parser
//! needs, each bounded: a `Query`'s or `Parse`'s text up to
//! [`MAX_STATEMENT`] bytes (a longer statement is named, and sanitized,
//! from its first [`MAX_STATEMENT`] bytes), the names in `Bind`, `Execute`
//! and `Close`, the start of an `ErrorResponse` (for its SQLSTATE), a
//! `CommandComplete` tag, the `StartupMessage`. A message length under 4
//! or over 1 GiB stops the parser ([`StopReason::Malformed`]).

use std::{borrow::Cow, collections::HashMap, collections::VecDeque, sync::Arc};

use opentelemetry::trace::SpanContext;

use super::{
    CONNECTION_CLOSED, Clock, Command, DbConfig, Start, StopReason, WireParser,
    sql::{self, Dialect},
};

/// The most prepared statements remembered per connection. Past it, an
/// arbitrary one is forgotten; its later executions are named `_OTHER`.
/// Each holds its operation, table and (with `db.query.text` on) its
/// sanitized text: at most about 256 × [`DbConfig::max_query_text`]
/// (512 KiB at the default) for a connection that keeps 256 long
/// statements prepared, a few KiB for most.
pub const MAX_STATEMENTS: usize = 256;

/// The most named portals remembered per connection (the unnamed one
/// included). Portals live until their transaction ends; clients that
/// name them (cursors read in pieces) keep few open at once.
pub const MAX_PORTALS: usize = 64;

/// The most bytes of a statement's text kept to name and sanitize it.
pub const MAX_STATEMENT: usize = 16 * 1024;

/// The longest message length accepted: 1 GiB, the server's own limit on
/// a message; past it the bytes are not PostgreSQL.
const MAX_MESSAGE: usize = 1 << 30;

/// The longest startup message accepted: the server's own limit
/// (`MAX_STARTUP_PACKET_LENGTH`).
const MAX_STARTUP: usize = 10_000;

/// How much of an `ErrorResponse` is kept: its SQLSTATE comes after the
/// severity fields, in its first few dozen bytes.
const MAX_ERROR_HEAD: usize = 256;

/// How much of a `CommandComplete` tag is kept (`INSERT 0 12345`).
const MAX_TAG: usize = 64;

/// How much of a message naming a portal or statement is kept: two names
/// of at most 63 bytes (the server truncates longer ones) and their
/// terminators.
const MAX_NAMES: usize = 130;

/// The server's limit on a name's length (`NAMEDATALEN - 1`): it truncates
/// longer names, so two names equal in their first 63 bytes are one.
const MAX_NAME: usize = 63;

/// The first word of each startup message (`SSLRequest`, ...), after its
/// length.
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;

/// A PostgreSQL connection's parser: bytes in, [`Command`]s out.
#[derive(Debug)]
pub struct PostgresParser {
    /// `db.query.text` is recorded, up to this many bytes.
    query_text: Option<usize>,
    /// The most tracked commands waiting for their replies.
    max_pending: usize,
    /// The most entries of `pending` (tracked or not) before the parser
    /// gives up: see `push`.
    max_entries: usize,
    /// Where the connection is.
    phase: Phase,
    /// The client's messages.
    client: Framer,
    /// The server's messages.
    server: Framer,
    /// `db.namespace`, from the startup message.
    namespace: Option<Arc<str>>,
    /// Prepared statements by name (the unnamed one under "").
    statements: HashMap<Box<[u8]>, Arc<Statement>>,
    /// Portals by name: the statement each was bound to.
    portals: HashMap<Box<[u8]>, Arc<Statement>>,
    /// When the client message being read started (for messages that
    /// belong to a command).
    message_start: Option<Start>,
    /// When the messages leading to the next `Execute` started.
    batch_start: Option<Start>,
    /// The statement of the last `Parse` since the last `Execute`, `Sync`
    /// or `Query`.
    parsed: Option<Arc<Statement>>,
    /// What the server will answer, in order.
    pending: VecDeque<Pending>,
    /// How many entries of `pending` hold a command.
    tracked: usize,
    /// Commands not tracked since last read (`take_untracked`).
    untracked: u64,
    /// The statement being answered returns rows: a `RowDescription` came
    /// (a `SELECT`, or an `INSERT ... RETURNING`).
    described: bool,
    /// The statement being answered is a `COPY ... TO STDOUT`: a
    /// `CopyOutResponse` came.
    copy_out: bool,
}

/// Where the connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Before the startup message: the client's messages have no type.
    Startup,
    /// The client asked for encryption; the server answers with one byte.
    AwaitingAnswer,
    /// Commands and replies.
    Ready,
    /// A `CancelRequest` connection: nothing to follow.
    Cancel,
    /// Stopped following (see [`StopReason`]).
    Stopped(StopReason),
}

/// What a command needs of the statement it runs, computed once per
/// `Parse` (or `Query`).
#[derive(Debug)]
struct Statement {
    operation: &'static str,
    collection: Option<Box<str>>,
    query_text: Option<Box<str>>,
    /// The trace context of its sqlcommenter comment: only for a `Query`
    /// and the unnamed statement (each prepared for one execution or a
    /// few; a named one is executed again long after the context it was
    /// prepared in).
    context: Option<Box<SpanContext>>,
}

/// What the server will answer next.
#[derive(Debug)]
enum Pending {
    /// An `Execute`: ends at its completion.
    Execute(Waiting),
    /// A simple `Query`: ends at `ReadyForQuery`.
    Query(Waiting),
    /// `Sync`s (and `FunctionCall`s): each ends at a `ReadyForQuery`.
    Sync(u32),
    /// A `Parse` with no `Execute` before its `Sync` (a driver preparing a
    /// statement): a command only if it fails (the application's query
    /// failed, and no execution will say so); dropped at the `Sync`'s
    /// `ReadyForQuery` otherwise.
    Prepare(Waiting),
}

/// A command waiting for its reply, or a run of untracked ones.
#[derive(Debug)]
enum Waiting {
    /// Tracked: the command so far and the `DataRow`s it received.
    Tracked(Box<Command>, u64),
    /// This many untracked commands in a row.
    Untracked(u32),
}

/// A message framer for one direction: finds message boundaries in
/// pieces of any size, keeps at most a bounded head of each body.
#[derive(Debug)]
struct Framer {
    /// Messages have a type byte (all but the client's startup ones).
    typed: bool,
    /// The header so far: type and length (or length alone).
    head: [u8; 5],
    /// How many bytes of `head` arrived.
    got: usize,
    /// In a body: bytes of it still to come.
    left: Option<usize>,
    /// The type of the message being read (0: untyped).
    kind: u8,
    /// The kept head of the body.
    body: Vec<u8>,
    /// How much of the current body is kept.
    keep: usize,
    /// The body was longer than what was kept.
    cut: bool,
    /// How much of a body of each type to keep.
    keep_of: fn(u8) -> usize,
}

/// What a framer found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// A message's first byte (its type; 0 for an untyped one).
    Begin(u8),
    /// A whole message (its type); its head is in `body`.
    End(u8),
    /// A length out of range.
    Malformed,
}

// === impl PostgresParser ===

impl PostgresParser {
    /// A parser for a new connection, from its first byte.
    pub fn new(config: &DbConfig) -> Self {
        Self {
            query_text: config.query_text.then_some(config.max_query_text),
            max_pending: config.max_pending,
            max_entries: config.max_pending.saturating_mul(4).saturating_add(64),
            phase: Phase::Startup,
            client: Framer::new(false, client_keep),
            server: Framer::new(true, server_keep),
            namespace: None,
            statements: HashMap::new(),
            portals: HashMap::new(),
            message_start: None,
            batch_start: None,
            parsed: None,
            pending: VecDeque::new(),
            tracked: 0,
            untracked: 0,
            described: false,
            copy_out: false,
        }
    }

    /// Stops following the connection, and lets go of what it held.
    fn stop(&mut self, reason: StopReason) {
        self.phase = Phase::Stopped(reason);
        self.pending.clear();
        self.tracked = 0;
        self.statements = HashMap::new();
        self.portals = HashMap::new();
        self.client.body = Vec::new();
        self.server.body = Vec::new();
    }

    /// Whether bytes still mean anything to the parser.
    fn following(&self) -> bool {
        !matches!(self.phase, Phase::Stopped(_) | Phase::Cancel)
    }

    /// A whole message from the client.
    fn client_message(&mut self, kind: u8, clock: &mut Clock) {
        let body = std::mem::take(&mut self.client.body);
        let cut = self.client.cut;
        match (self.phase, kind) {
            (Phase::Startup, 0) => self.startup(&body),
            (Phase::Ready, b'Q') => {
                let text = cstr(&body).unwrap_or(&body);
                let statement = self.statement(text, true);
                let start = self.message_start.take().unwrap_or_else(|| clock.start());
                self.batch_start = None;
                self.parsed = None;
                let command = self.command(start, &statement);
                self.push(Pending::Query(command));
            }
            (Phase::Ready, b'P') => {
                self.batch_start = self.batch_start.or(self.message_start);
                if let Some(name) = cstr(&body) {
                    let rest = &body[name.len() + 1..];
                    // Cut: the text's head is all there is.
                    let text = cstr(rest).or(cut.then_some(rest));
                    if let Some(text) = text {
                        let statement = Arc::new(self.statement(text, name.is_empty()));
                        self.parsed = Some(statement.clone());
                        remember(&mut self.statements, name, statement, MAX_STATEMENTS);
                    }
                }
            }
            (Phase::Ready, b'B') => {
                self.batch_start = self.batch_start.or(self.message_start);
                if let Some(portal) = cstr(&body) {
                    let rest = &body[portal.len() + 1..];
                    let statement = cstr(rest).and_then(|s| self.statements.get(server_name(s)));
                    match statement.cloned() {
                        Some(statement) => {
                            remember(&mut self.portals, portal, statement, MAX_PORTALS)
                        }
                        None => {
                            self.portals.remove(server_name(portal));
                        }
                    }
                }
            }
            (Phase::Ready, b'D') => self.batch_start = self.batch_start.or(self.message_start),
            (Phase::Ready, b'E') => {
                self.parsed = None;
                let start = self
                    .batch_start
                    .take()
                    .or(self.message_start)
                    .unwrap_or_else(|| clock.start());
                let statement = cstr(&body).and_then(|p| self.portals.get(server_name(p)));
                let command = match statement.cloned() {
                    Some(statement) => self.command(start, &statement),
                    None => self.command(start, &UNKNOWN),
                };
                self.push(Pending::Execute(command));
            }
            (Phase::Ready, b'S') => {
                if let Some(statement) = self.parsed.take() {
                    let start = self
                        .batch_start
                        .or(self.message_start)
                        .unwrap_or_else(|| clock.start());
                    let command = self.command(start, &statement);
                    self.push(Pending::Prepare(command));
                }
                self.batch_start = None;
                self.push(Pending::Sync(1));
            }
            (Phase::Ready, b'F') => self.push(Pending::Sync(1)),
            (Phase::Ready, b'C') => {
                if let [what, rest @ ..] = &body[..]
                    && let Some(name) = cstr(rest)
                {
                    match what {
                        b'S' => {
                            self.statements.remove(server_name(name));
                        }
                        b'P' => {
                            self.portals.remove(server_name(name));
                        }
                        _ => {}
                    }
                }
            }
            // Flush, Terminate, CopyData/Done/Fail, password messages:
            // nothing to follow.
            _ => {}
        }
        self.message_start = None;
        self.client.restore(body);
    }

    /// The client's startup message (untyped): what it asks for.
    fn startup(&mut self, body: &[u8]) {
        let Some(code) = body.first_chunk::<4>().map(|c| u32::from_be_bytes(*c)) else {
            return self.stop(StopReason::Malformed);
        };
        match code {
            SSL_REQUEST | GSSENC_REQUEST => self.phase = Phase::AwaitingAnswer,
            CANCEL_REQUEST => {
                self.phase = Phase::Cancel;
                self.client.body = Vec::new();
                self.server.body = Vec::new();
            }
            // 3.0, and the minor versions after it (3.2): the same
            // messages for what is followed here.
            _ if code >> 16 == 3 => {
                self.phase = Phase::Ready;
                self.client.typed = true;
                self.namespace = startup_namespace(&body[4..]);
            }
            _ => self.stop(StopReason::Unsupported),
        }
    }

    /// A whole message from the server.
    fn server_message(&mut self, kind: u8, clock: &mut Clock, done: &mut Vec<Command>) {
        // What a statement's answer was made of, kept to its end.
        let shape = (self.described, self.copy_out);
        if matches!(kind, b'C' | b'E' | b'I' | b's' | b'Z') {
            self.described = false;
            self.copy_out = false;
        }
        match kind {
            b'T' => self.described = true,
            b'H' => self.copy_out = true,
            b'D' => {
                if let Some(
                    Pending::Execute(Waiting::Tracked(_, rows))
                    | Pending::Query(Waiting::Tracked(_, rows)),
                ) = self.pending.front_mut()
                {
                    *rows += 1;
                }
            }
            b'C' => {
                let tag = cstr(&self.server.body).unwrap_or(&self.server.body);
                let returned = Returned::of(tag, shape);
                match self.pending.front_mut() {
                    Some(Pending::Execute(_)) => {
                        self.finish_execute(clock, done, |c, data_rows| {
                            c.rows = returned.rows(data_rows);
                        })
                    }
                    // A statement of a query ended: its rows add to those
                    // of the statements before it.
                    Some(Pending::Query(Waiting::Tracked(command, data_rows))) => {
                        if let Some(n) = returned.rows(*data_rows) {
                            command.rows = Some(command.rows.unwrap_or(0).saturating_add(n));
                        }
                        *data_rows = 0;
                    }
                    _ => {}
                }
            }
            b'I' => {
                if let Some(Pending::Execute(_)) = self.pending.front() {
                    self.finish_execute(clock, done, |_, _| {});
                }
            }
            b's' => {
                if let Some(Pending::Execute(_)) = self.pending.front() {
                    self.finish_execute(clock, done, |c, rows| c.rows = Some(rows));
                }
            }
            b'E' => {
                let code = sqlstate(&self.server.body);
                match self.pending.front_mut() {
                    Some(Pending::Execute(_)) => {
                        self.finish_execute(clock, done, |c, _| fail(c, code));
                        self.skip_to_sync();
                    }
                    // A statement that failed to prepare: the command.
                    Some(Pending::Prepare(_)) => {
                        if let Some(Pending::Prepare(Waiting::Tracked(mut command, _))) =
                            self.pending.pop_front()
                        {
                            self.tracked -= 1;
                            fail(&mut command, code);
                            command.end = clock.now();
                            done.push(*command);
                        }
                        self.skip_to_sync();
                    }
                    // The first error of a simple query: the server stops there.
                    Some(Pending::Query(Waiting::Tracked(command, _)))
                        if command.error_type.is_none() =>
                    {
                        fail(command, code);
                    }
                    // An error with nothing executing (a Parse that failed
                    // before a Sync, a FATAL at startup): no command.
                    _ => {}
                }
            }
            b'Z' => self.ready(clock, done),
            b'W' => self.stop(StopReason::Unsupported),
            // Notifications, notices, parameter status, descriptions,
            // Parse/Bind/Close completions, COPY: nothing to match.
            _ => {}
        }
    }

    /// The first entry, an `Execute`, has its completion: report it.
    fn finish_execute(
        &mut self,
        clock: &mut Clock,
        done: &mut Vec<Command>,
        complete: impl FnOnce(&mut Command, u64),
    ) {
        match self.pending.pop_front() {
            Some(Pending::Execute(Waiting::Tracked(mut command, rows))) => {
                self.tracked -= 1;
                complete(&mut command, rows);
                command.end = clock.now();
                done.push(*command);
            }
            Some(Pending::Execute(Waiting::Untracked(n))) if n > 1 => {
                self.pending
                    .push_front(Pending::Execute(Waiting::Untracked(n - 1)));
            }
            Some(Pending::Execute(Waiting::Untracked(_))) => {}
            // Only called with an Execute first.
            Some(other) => self.pending.push_front(other),
            None => {}
        }
    }

    /// After an error the server ignores everything up to `Sync`: the
    /// commands waiting before it get no reply and make no span.
    fn skip_to_sync(&mut self) {
        while let Some(entry) = self.pending.front() {
            match entry {
                Pending::Sync(_) => break,
                Pending::Execute(w) | Pending::Query(w) | Pending::Prepare(w) => {
                    if matches!(w, Waiting::Tracked(..)) {
                        self.tracked -= 1;
                    }
                    self.pending.pop_front();
                }
            }
        }
    }

    /// `ReadyForQuery`: the end of a simple query, or a `Sync` answered.
    fn ready(&mut self, clock: &mut Clock, done: &mut Vec<Command>) {
        while let Some(entry) = self.pending.pop_front() {
            match entry {
                Pending::Sync(n) => {
                    if n > 1 {
                        self.pending.push_front(Pending::Sync(n - 1));
                    }
                    return;
                }
                Pending::Query(Waiting::Tracked(mut command, _)) => {
                    self.tracked -= 1;
                    command.end = clock.now();
                    done.push(*command);
                    return;
                }
                Pending::Query(Waiting::Untracked(n)) => {
                    if n > 1 {
                        self.pending
                            .push_front(Pending::Query(Waiting::Untracked(n - 1)));
                    }
                    return;
                }
                // An Execute that got no completion before its Sync's
                // answer: not a reply the parser understood; drop it.
                Pending::Execute(Waiting::Tracked(..)) => self.tracked -= 1,
                Pending::Execute(Waiting::Untracked(_)) => {}
                // A statement prepared without error: no command.
                Pending::Prepare(Waiting::Tracked(..)) => self.tracked -= 1,
                Pending::Prepare(Waiting::Untracked(_)) => {}
            }
        }
        // The ReadyForQuery of the startup, or one with nothing waiting.
    }

    /// What a command needs of a statement's text; its sqlcommenter
    /// context only `with_context`.
    fn statement(&self, text: &[u8], with_context: bool) -> Statement {
        Statement {
            operation: sql::operation(text),
            collection: sql::collection(text, Dialect::Postgres).map(Box::from),
            query_text: self
                .query_text
                .map(|max| sql::sanitize(text, Dialect::Postgres, max).into_boxed_str()),
            context: with_context
                .then(|| sql::comment_context(text))
                .flatten()
                .map(Box::new),
        }
    }

    /// A new command for `statement`, tracked if there is room.
    fn command(&mut self, start: Start, statement: &Statement) -> Waiting {
        if self.tracked >= self.max_pending {
            self.untracked += 1;
            return Waiting::Untracked(1);
        }
        self.tracked += 1;
        let mut command = Command::new(start, statement.operation);
        command.namespace = self.namespace.clone();
        command.collection = statement.collection.as_deref().map(String::from);
        command.query_text = statement.query_text.as_deref().map(String::from);
        command.context = statement.context.clone();
        Waiting::Tracked(Box::new(command), 0)
    }

    /// Queue what the server will answer. Runs of untracked commands and of
    /// `Sync`s take one entry; a client that pipelines more than
    /// `max_entries` entries without reading a reply (at least four per
    /// tracked command: past any real pipeline) stops the parser rather
    /// than grow it.
    fn push(&mut self, entry: Pending) {
        let full = self.pending.len() >= self.max_entries;
        match (self.pending.back_mut(), &entry) {
            (Some(Pending::Sync(n)), Pending::Sync(_)) => *n = n.saturating_add(1),
            (
                Some(Pending::Execute(Waiting::Untracked(n))),
                Pending::Execute(Waiting::Untracked(_)),
            )
            | (
                Some(Pending::Query(Waiting::Untracked(n))),
                Pending::Query(Waiting::Untracked(_)),
            ) => *n = n.saturating_add(1),
            _ if full => self.stop(StopReason::Malformed),
            _ => self.pending.push_back(entry),
        }
    }
}

impl WireParser for PostgresParser {
    fn client_sent(&mut self, mut bytes: &[u8], clock: &mut Clock, _done: &mut Vec<Command>) {
        if self.phase == Phase::AwaitingAnswer && !bytes.is_empty() {
            // The client must wait for the answer to its SSLRequest.
            return self.stop(StopReason::Malformed);
        }
        // A TLS record where the startup message should be: PostgreSQL 17's
        // direct TLS (`sslnegotiation=direct`), no SSLRequest first.
        if self.phase == Phase::Startup && self.client.at_start() && bytes.first() == Some(&0x16) {
            return self.stop(StopReason::Tls);
        }
        while self.following() {
            match self.client.advance(&mut bytes) {
                None => break,
                Some(Step::Begin(kind)) => {
                    if matches!(kind, b'Q' | b'P' | b'B' | b'D' | b'E') {
                        self.message_start = Some(clock.start());
                    }
                }
                Some(Step::End(kind)) => self.client_message(kind, clock),
                Some(Step::Malformed) => self.stop(StopReason::Malformed),
            }
            if self.phase == Phase::AwaitingAnswer && !bytes.is_empty() {
                return self.stop(StopReason::Malformed);
            }
        }
    }

    fn server_sent(&mut self, mut bytes: &[u8], clock: &mut Clock, done: &mut Vec<Command>) {
        if self.phase == Phase::AwaitingAnswer {
            let Some((&answer, rest)) = bytes.split_first() else {
                return;
            };
            match answer {
                b'S' | b'G' => return self.stop(StopReason::Tls),
                b'N' => {
                    self.phase = Phase::Startup;
                    bytes = rest;
                }
                // An ErrorResponse (a server too old for the request):
                // read as a message, the server closes after it.
                b'E' => self.phase = Phase::Startup,
                _ => return self.stop(StopReason::Malformed),
            }
        }
        while self.following() {
            match self.server.advance(&mut bytes) {
                None => break,
                Some(Step::Begin(_)) => {}
                Some(Step::End(kind)) => {
                    self.server_message(kind, clock, done);
                    self.server.body.clear();
                }
                Some(Step::Malformed) => self.stop(StopReason::Malformed),
            }
        }
    }

    fn close(&mut self, clock: &mut Clock, done: &mut Vec<Command>) {
        for entry in self.pending.drain(..) {
            if let Pending::Execute(Waiting::Tracked(mut command, _))
            | Pending::Query(Waiting::Tracked(mut command, _)) = entry
            {
                command.end = clock.now();
                // A simple query that already failed keeps its SQLSTATE:
                // it says more than the close after it.
                if command.error_type.is_none() {
                    command.error_type = Some(Cow::Borrowed(CONNECTION_CLOSED));
                }
                done.push(*command);
            }
        }
        self.tracked = 0;
    }

    fn stopped(&self) -> Option<StopReason> {
        match self.phase {
            Phase::Stopped(reason) => Some(reason),
            _ => None,
        }
    }

    fn take_untracked(&mut self) -> u64 {
        std::mem::take(&mut self.untracked)
    }
}

/// The statement of an `Execute` whose portal is unknown (bound to a
/// statement prepared before the parser's memory, or forgotten).
static UNKNOWN: Statement = Statement {
    operation: sql::OTHER,
    collection: None,
    query_text: None,
    context: None,
};

/// Marks `command` failed with SQLSTATE `code` (`error` when the
/// `ErrorResponse` had none the parser could read).
fn fail(command: &mut Command, code: Option<[u8; 5]>) {
    let code: Cow<'static, str> = match code.as_ref().and_then(|c| std::str::from_utf8(c).ok()) {
        Some(code) => Cow::Owned(code.to_owned()),
        None => Cow::Borrowed("error"),
    };
    command.status_code = Some(code.clone());
    command.error_type = Some(code);
}

/// The SQLSTATE of an `ErrorResponse`'s head: its `C` field, five digits
/// or upper-case letters.
fn sqlstate(mut fields: &[u8]) -> Option<[u8; 5]> {
    while let [kind, rest @ ..] = fields {
        if *kind == 0 {
            return None;
        }
        let value = cstr(rest)?;
        if *kind == b'C' {
            let code: [u8; 5] = value.try_into().ok()?;
            let valid = code
                .iter()
                .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase());
            return valid.then_some(code);
        }
        fields = &rest[value.len() + 1..];
    }
    None
}

/// Where the rows a statement returned (`db.response.returned_rows`) are
/// read from, once its `CommandComplete` came.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Returned {
    /// Its tag's count: a `SELECT` or `FETCH`, a `COPY ... TO STDOUT`.
    Tag(Option<u64>),
    /// The `DataRow`s counted: another statement whose answer had a
    /// `RowDescription` (`INSERT ... RETURNING`), or rows.
    DataRows,
    /// The rows it returned are the `DataRow`s, if any came; else none:
    /// its tag counts rows affected (`UPDATE 2`, `COPY 10` from the
    /// client) or nothing (`CREATE TABLE`).
    IfAny,
}

impl Returned {
    /// For the statement whose tag is `tag`; `(described, copy_out)`: a
    /// `RowDescription`, a `CopyOutResponse` came in its answer.
    fn of(tag: &[u8], (described, copy_out): (bool, bool)) -> Self {
        let verb = tag.split(|b| *b == b' ').next().unwrap_or(tag);
        match verb {
            b"SELECT" | b"FETCH" => Self::Tag(tag_rows(tag)),
            b"COPY" if copy_out => Self::Tag(tag_rows(tag)),
            _ if described => Self::DataRows,
            _ => Self::IfAny,
        }
    }

    /// The rows returned, `data_rows` having been counted.
    fn rows(self, data_rows: u64) -> Option<u64> {
        match self {
            Self::Tag(rows) => rows,
            Self::DataRows => Some(data_rows),
            Self::IfAny => (data_rows > 0).then_some(data_rows),
        }
    }
}

/// The rows a `CommandComplete` tag counts: `SELECT 5`, `INSERT 0 3`,
/// `UPDATE 2`, `DELETE 1`, `MERGE 4`, `FETCH 10`, `MOVE 3`, `COPY 10`;
/// `None` for tags without a count (`CREATE TABLE`, `BEGIN`).
fn tag_rows(tag: &[u8]) -> Option<u64> {
    let (verb, _) = tag.split_at(tag.iter().position(|b| *b == b' ')?);
    let counted = [
        "SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "FETCH", "MOVE", "COPY",
    ]
    .iter()
    .any(|v| v.as_bytes() == verb);
    if !counted {
        return None;
    }
    let last = tag.rsplit(|b| *b == b' ').next()?;
    if last.is_empty() || !last.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(last).ok()?.parse().ok()
}

/// The namespace a startup message's parameters name: `database`, or
/// `user` when there is none.
fn startup_namespace(mut params: &[u8]) -> Option<Arc<str>> {
    let (mut database, mut user) = (None, None);
    while let Some(key) = cstr(params) {
        if key.is_empty() {
            break;
        }
        let rest = &params[key.len() + 1..];
        let value = cstr(rest)?;
        match key {
            b"database" => database = Some(value),
            b"user" => user = Some(value),
            _ => {}
        }
        params = &rest[value.len() + 1..];
    }
    let name = database.filter(|d| !d.is_empty()).or(user)?;
    Some(Arc::from(String::from_utf8_lossy(name)))
}

/// The bytes up to the first NUL, if there is one.
fn cstr(bytes: &[u8]) -> Option<&[u8]> {
    bytes.iter().position(|b| *b == 0).map(|n| &bytes[..n])
}

/// A statement's or portal's name as the server keys it (cut to 63 bytes).
fn server_name(name: &[u8]) -> &[u8] {
    &name[..name.len().min(MAX_NAME)]
}

/// Remembers `value` under `name` in a map of at most `max` entries. A
/// name already there is replaced in place (no allocation: the unnamed
/// statement and portal are replaced at every command); in a full map,
/// an arbitrary entry is forgotten first (a client with this many live
/// statements reuses few of them).
fn remember<V>(map: &mut HashMap<Box<[u8]>, V>, name: &[u8], value: V, max: usize) {
    let name = server_name(name);
    if let Some(slot) = map.get_mut(name) {
        *slot = value;
        return;
    }
    if map.len() >= max
        && let Some(key) = map.keys().next().cloned()
    {
        map.remove(&key);
    }
    map.insert(Box::from(name), value);
}

/// How much of a client message's body is kept.
fn client_keep(kind: u8) -> usize {
    match kind {
        0 => MAX_STARTUP,
        // Parse: a name and the statement.
        b'P' => MAX_NAMES + MAX_STATEMENT,
        b'Q' => MAX_STATEMENT,
        b'B' | b'E' | b'C' => MAX_NAMES,
        _ => 0,
    }
}

/// How much of a server message's body is kept.
fn server_keep(kind: u8) -> usize {
    match kind {
        b'E' => MAX_ERROR_HEAD,
        b'C' => MAX_TAG,
        _ => 0,
    }
}

// === impl Framer ===

impl Framer {
    /// A framer at a message boundary; `keep_of` says how much of each
    /// type's body to keep.
    fn new(typed: bool, keep_of: fn(u8) -> usize) -> Self {
        Self {
            typed,
            head: [0; 5],
            got: 0,
            left: None,
            kind: 0,
            body: Vec::new(),
            keep: 0,
            cut: false,
            keep_of,
        }
    }

    /// Whether nothing of a message has been read yet.
    fn at_start(&self) -> bool {
        self.got == 0 && self.left.is_none()
    }

    /// Puts the body buffer back (cleared), to reuse its allocation.
    fn restore(&mut self, mut body: Vec<u8>) {
        body.clear();
        self.body = body;
    }

    /// Reads from `input` up to the next step (consuming what it read), or
    /// `None` once `input` is used up.
    fn advance(&mut self, input: &mut &[u8]) -> Option<Step> {
        loop {
            if let Some(left) = self.left {
                if left > 0 {
                    if input.is_empty() {
                        return None;
                    }
                    let n = left.min(input.len());
                    let room = self.keep.saturating_sub(self.body.len()).min(n);
                    self.body.extend_from_slice(&input[..room]);
                    *input = &input[n..];
                    self.left = Some(left - n);
                    if left > n {
                        return None;
                    }
                }
                self.left = None;
                return Some(Step::End(self.kind));
            }
            let (&first, rest) = input.split_first()?;
            let need = if self.typed { 5 } else { 4 };
            if self.got == 0 {
                self.head[0] = first;
                self.got = 1;
                *input = rest;
                return Some(Step::Begin(if self.typed { first } else { 0 }));
            }
            let n = (need - self.got).min(input.len());
            self.head[self.got..self.got + n].copy_from_slice(&input[..n]);
            self.got += n;
            *input = &input[n..];
            if self.got < need {
                return None;
            }
            self.got = 0;
            let (kind, length) = if self.typed {
                (self.head[0], &self.head[1..5])
            } else {
                (0, &self.head[0..4])
            };
            let length = u32::from_be_bytes([length[0], length[1], length[2], length[3]]) as usize;
            let min = if self.typed { 4 } else { 8 };
            let max = if self.typed { MAX_MESSAGE } else { MAX_STARTUP };
            if !(min..=max).contains(&length) {
                return Some(Step::Malformed);
            }
            self.kind = kind;
            self.keep = (self.keep_of)(kind);
            self.cut = length - 4 > self.keep;
            self.body.clear();
            self.left = Some(length - 4);
        }
    }
}

/// What [`replay`] saw: the commands, why the parser stopped, how many
/// commands went untracked.
#[doc(hidden)]
pub type Replayed = (Vec<Command>, Option<StopReason>, u64);

/// Replays recorded frames (`true`: from the client) through a new parser,
/// then closes it. For the criterion bench and tests only: not an API.
#[doc(hidden)]
pub fn replay(config: &DbConfig, frames: &[(bool, &[u8])]) -> Replayed {
    let mut parser = PostgresParser::new(config);
    let mut done = Vec::new();
    for (from_client, bytes) in frames {
        let mut clock = Clock::new();
        if *from_client {
            parser.client_sent(bytes, &mut clock, &mut done);
        } else {
            parser.server_sent(bytes, &mut clock, &mut done);
        }
    }
    parser.close(&mut Clock::new(), &mut done);
    (done, parser.stopped(), parser.take_untracked())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    /// The frames of a capture made by `testdata/db/record.py`.
    fn frames(capture: &[u8]) -> Vec<(bool, &[u8])> {
        let mut frames = Vec::new();
        let mut rest = capture;
        while let [direction, a, b, c, d, tail @ ..] = rest {
            let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
            assert!(matches!(direction, b'C' | b'S'), "not a capture");
            frames.push((*direction == b'C', &tail[..len]));
            rest = &tail[len..];
        }
        assert!(rest.is_empty(), "a capture ends with a whole frame");
        frames
    }

    /// A small deterministic generator for the random splits.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    /// The frames cut into pieces: `None`, as recorded; `Some(0)`, one byte
    /// at a time; `Some(seed)`, pieces of 1 to 40 bytes at random.
    fn pieces<'a>(frames: &[(bool, &'a [u8])], split: Option<u64>) -> Vec<(bool, &'a [u8])> {
        let mut out = Vec::new();
        let mut state = split.unwrap_or(1) | 1;
        for &(dir, mut bytes) in frames {
            while !bytes.is_empty() {
                let n = match split {
                    None => bytes.len(),
                    Some(0) => 1,
                    Some(_) => (xorshift(&mut state) % 40 + 1) as usize,
                };
                let (piece, rest) = bytes.split_at(n.min(bytes.len()));
                out.push((dir, piece));
                bytes = rest;
            }
        }
        out
    }

    /// The commands without their times (which depend on when the test
    /// ran).
    fn timeless(mut commands: Vec<Command>) -> Vec<Command> {
        for c in &mut commands {
            c.start = Start::at(SystemTime::UNIX_EPOCH);
            c.end = SystemTime::UNIX_EPOCH;
        }
        commands
    }

    /// Replays a capture whole, one byte at a time and in random pieces,
    /// asserts that every way gives the same commands, and returns them.
    fn run(capture: &[u8], config: &DbConfig) -> Replayed {
        let frames = frames(capture);
        let (whole, stop, untracked) = replay(config, &frames);
        for c in &whole {
            assert!(c.start.time <= c.end, "{c:?}");
        }
        let whole = timeless(whole);
        for split in [Some(0), Some(7), Some(12345), Some(99)] {
            let (split_commands, split_stop, split_untracked) =
                replay(config, &pieces(&frames, split));
            assert_eq!(timeless(split_commands), whole, "split {split:?}");
            assert_eq!((split_stop, split_untracked), (stop, untracked));
        }
        (whole, stop, untracked)
    }

    /// What the tests compare of a command: operation, table, rows,
    /// SQLSTATE.
    type Summary<'a> = (&'static str, Option<&'a str>, Option<u64>, Option<&'a str>);

    fn summary(commands: &[Command]) -> Vec<Summary<'_>> {
        commands
            .iter()
            .map(|c| {
                assert_eq!(
                    c.status_code, c.error_type,
                    "an error's type is its SQLSTATE"
                );
                (
                    c.operation,
                    c.collection.as_deref(),
                    c.rows,
                    c.status_code.as_deref(),
                )
            })
            .collect()
    }

    fn config() -> DbConfig {
        DbConfig::default()
    }

    fn with_text() -> DbConfig {
        DbConfig {
            query_text: true,
            ..DbConfig::default()
        }
    }

    // --- Hand-made messages. ---

    fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn startup(params: &[(&str, &str)]) -> Vec<u8> {
        let mut body = 196_608u32.to_be_bytes().to_vec();
        for (k, v) in params {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut m = (body.len() as u32 + 4).to_be_bytes().to_vec();
        m.extend_from_slice(&body);
        m
    }

    fn request(code: u32) -> Vec<u8> {
        let mut m = 8u32.to_be_bytes().to_vec();
        m.extend_from_slice(&code.to_be_bytes());
        m
    }

    fn cstring(s: &str) -> Vec<u8> {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        v
    }

    fn query(text: &str) -> Vec<u8> {
        msg(b'Q', &cstring(text))
    }

    fn parse(name: &str, text: &str) -> Vec<u8> {
        let mut body = cstring(name);
        body.extend(cstring(text));
        body.extend([0, 0]);
        msg(b'P', &body)
    }

    fn bind(portal: &str, statement: &str) -> Vec<u8> {
        let mut body = cstring(portal);
        body.extend(cstring(statement));
        body.extend([0, 0, 0, 0, 0, 0]);
        msg(b'B', &body)
    }

    fn execute(portal: &str) -> Vec<u8> {
        let mut body = cstring(portal);
        body.extend([0, 0, 0, 0]);
        msg(b'E', &body)
    }

    fn sync() -> Vec<u8> {
        msg(b'S', &[])
    }

    fn complete(tag: &str) -> Vec<u8> {
        msg(b'C', &cstring(tag))
    }

    fn ready() -> Vec<u8> {
        msg(b'Z', b"I")
    }

    fn error(code: &str) -> Vec<u8> {
        let mut body = b"SERROR\0VERROR\0C".to_vec();
        body.extend(cstring(code));
        body.extend(b"Mit failed\0\0");
        msg(b'E', &body)
    }

    fn row() -> Vec<u8> {
        msg(b'D', b"\x00\x01\x00\x00\x00\x011")
    }

    fn at(secs: u64) -> Clock {
        Clock {
            now: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs)),
            ..Clock::default()
        }
    }

    fn secs(t: SystemTime) -> u64 {
        t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
    }

    /// A parser past startup (database `app`).
    fn ready_parser(config: &DbConfig) -> PostgresParser {
        let mut p = PostgresParser::new(config);
        let mut done = Vec::new();
        p.client_sent(
            &startup(&[("user", "u"), ("database", "app")]),
            &mut at(0),
            &mut done,
        );
        p.server_sent(
            &[msg(b'R', &[0, 0, 0, 0]), ready()].concat(),
            &mut at(0),
            &mut done,
        );
        assert!(done.is_empty());
        p
    }

    // --- Captures of real sessions (testdata/db/README.md). ---

    #[test]
    fn psql_simple_queries() {
        let capture = include_bytes!("../../testdata/db/postgres_psql_simple.bin");
        let (commands, stop, untracked) = run(capture, &config());
        assert_eq!((stop, untracked), (None, 0));
        assert_eq!(
            summary(&commands),
            [
                ("CREATE", None, None, None),
                // Rows affected are not rows returned.
                ("INSERT", Some("items"), None, None),
                ("UPDATE", Some("items"), None, None),
                ("SELECT", Some("items"), Some(3), None),
                ("SELECT", Some("missing_table"), None, Some("42P01")),
                ("DELETE", Some("items"), None, None),
                ("DROP", None, None, None),
            ]
        );
        for c in &commands {
            assert_eq!(c.namespace.as_deref(), Some("postgres"));
            assert_eq!(c.query_text, None, "off by default");
        }
        let (commands, ..) = run(capture, &with_text());
        let texts: Vec<_> = commands
            .iter()
            .map(|c| c.query_text.as_deref().unwrap())
            .collect();
        assert_eq!(
            texts[1..4],
            [
                "INSERT INTO items VALUES (?, ?), (?, ?), (?, ?);",
                "UPDATE items SET name = ? WHERE id > ?;",
                "SELECT * FROM items ORDER BY id;",
            ]
        );
        let (commands, ..) = run(
            capture,
            &DbConfig {
                max_query_text: 6,
                ..with_text()
            },
        );
        assert_eq!(commands[1].query_text.as_deref(), Some("INSERT"));
    }

    #[test]
    fn psql_copy_is_not_a_query() {
        let capture = include_bytes!("../../testdata/db/postgres_psql_copy.bin");
        let (commands, stop, _) = run(capture, &config());
        assert_eq!(stop, None);
        assert_eq!(
            summary(&commands),
            [
                ("CREATE", None, None, None),
                // FROM STDIN: rows sent, none returned; TO STDOUT: 3.
                ("COPY", Some("c"), None, None),
                ("COPY", Some("c"), Some(3), None),
                ("SELECT", Some("c"), Some(1), None),
            ]
        );
    }

    #[test]
    fn psql_several_statements_in_one_query() {
        let capture = include_bytes!("../../testdata/db/postgres_psql_multi.bin");
        let (commands, ..) = run(capture, &config());
        // One command, named after the first statement; the rows its
        // statements returned, together; the error that stopped it. No
        // table: there are several.
        assert_eq!(
            summary(&commands),
            [("SELECT", None, Some(5), Some("42703"))]
        );
    }

    #[test]
    fn psql_notifications_are_not_replies() {
        let capture = include_bytes!("../../testdata/db/postgres_psql_listen.bin");
        let (commands, ..) = run(capture, &config());
        assert_eq!(
            summary(&commands),
            [
                ("LISTEN", None, None, None),
                ("SELECT", None, Some(1), None),
                ("NOTIFY", None, None, None),
                ("SELECT", None, Some(1), None),
            ]
        );
    }

    #[test]
    fn psql_tls_stops_and_refused_tls_goes_on() {
        let capture = include_bytes!("../../testdata/db/postgres_psql_ssl_prefer.bin");
        let (commands, stop, _) = run(capture, &config());
        assert_eq!((commands.len(), stop), (0, Some(StopReason::Tls)));

        let capture = include_bytes!("../../testdata/db/postgres_psql_ssl_refused.bin");
        let (commands, stop, _) = run(capture, &config());
        assert_eq!(stop, None);
        assert_eq!(summary(&commands), [("SELECT", None, Some(1), None)]);
        assert_eq!(commands[0].namespace.as_deref(), Some("template1"));
    }

    #[test]
    fn psql_cancel() {
        // The session whose query was cancelled: 57014.
        let capture = include_bytes!("../../testdata/db/postgres_psql_cancel.bin");
        let (commands, ..) = run(capture, &config());
        assert_eq!(summary(&commands), [("SELECT", None, None, Some("57014"))]);
        // The CancelRequest's own connection: nothing.
        let capture = include_bytes!("../../testdata/db/postgres_psql_cancel_request.bin");
        assert_eq!(run(capture, &config()), (vec![], None, 0));
    }

    /// pgbench's script (testdata/db/pgbench_script.sql) three times: a
    /// SELECT, an UPDATE, then a pipeline of a SELECT and an INSERT.
    fn pgbench_commands() -> Vec<Summary<'static>> {
        [
            ("SELECT", Some("pgbench_accounts"), Some(1), None),
            ("UPDATE", Some("pgbench_accounts"), None, None),
            ("SELECT", None, Some(1), None),
            ("INSERT", Some("pgbench_history"), None, None),
        ]
        .repeat(3)
    }

    #[test]
    fn pgbench_prepared_statements_are_named_at_each_execution() {
        // Each statement is parsed once (named P_0..P_3), then only bound
        // and executed.
        let capture = include_bytes!("../../testdata/db/postgres_pgbench_prepared.bin");
        let (commands, ..) = run(capture, &with_text());
        assert_eq!(summary(&commands), pgbench_commands());
        assert_eq!(
            commands[0].query_text.as_deref(),
            Some("SELECT abalance FROM pgbench_accounts WHERE aid = $1;")
        );
        assert_eq!(
            commands[11].query_text.as_deref(),
            Some(
                "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (?, ?, $1, ?, now());"
            )
        );
    }

    #[test]
    fn pgbench_extended_unnamed_statements() {
        let capture = include_bytes!("../../testdata/db/postgres_pgbench_extended.bin");
        let (commands, ..) = run(capture, &config());
        assert_eq!(summary(&commands), pgbench_commands());
    }

    #[test]
    fn extended_errors_portals_and_empty_queries() {
        // testdata/db/pg_extended.py: its steps, in order.
        let capture = include_bytes!("../../testdata/db/postgres_extended_errors.bin");
        let (commands, stop, _) = run(capture, &config());
        assert_eq!(stop, None);
        assert_eq!(
            summary(&commands),
            [
                // The statement prepared alone, executed in a pipeline.
                ("SELECT", None, Some(3), None),
                // The failing one; the DELETE after it never ran.
                ("SELECT", Some("missing_table"), None, Some("42P01")),
                // After the Sync: runs again.
                ("SELECT", None, Some(5), None),
                ("BEGIN", None, None, None),
                // A portal read two rows at a time: suspended twice.
                ("SELECT", None, Some(2), None),
                ("SELECT", None, Some(2), None),
                ("SELECT", None, Some(1), None),
                ("COMMIT", None, None, None),
                // The empty query.
                ("_OTHER", None, None, None),
                // A syntax error at Parse.
                ("_OTHER", None, None, Some("42601")),
                // The simple query at the end.
                ("SELECT", None, Some(1), None),
            ]
        );
    }

    // --- Hand-made sequences. ---

    #[test]
    fn times_of_simple_and_extended_commands() {
        let mut p = ready_parser(&config());
        let mut done = Vec::new();
        // A simple query: from its first byte to ReadyForQuery.
        p.client_sent(&query("SELECT 1")[..3], &mut at(10), &mut done);
        p.client_sent(&query("SELECT 1")[3..], &mut at(11), &mut done);
        p.server_sent(
            &[row(), complete("SELECT 1")].concat(),
            &mut at(12),
            &mut done,
        );
        assert!(done.is_empty(), "ends at ReadyForQuery");
        p.server_sent(&ready(), &mut at(13), &mut done);
        assert_eq!(done.len(), 1);
        assert_eq!((secs(done[0].start.time), secs(done[0].end)), (10, 13));
        done.clear();
        // A pipeline: the first execution from its Parse, the second from
        // its Bind; each ends with its own completion.
        p.client_sent(
            &[parse("", "SELECT 1"), bind("", "")].concat(),
            &mut at(20),
            &mut done,
        );
        p.client_sent(&execute(""), &mut at(21), &mut done);
        p.client_sent(
            &[bind("", ""), execute(""), sync()].concat(),
            &mut at(22),
            &mut done,
        );
        p.server_sent(
            &[msg(b'1', &[]), msg(b'2', &[]), row(), complete("SELECT 1")].concat(),
            &mut at(23),
            &mut done,
        );
        p.server_sent(
            &[msg(b'2', &[]), row(), complete("SELECT 1")].concat(),
            &mut at(24),
            &mut done,
        );
        p.server_sent(&ready(), &mut at(25), &mut done);
        let times: Vec<_> = done
            .iter()
            .map(|c| (secs(c.start.time), secs(c.end)))
            .collect();
        assert_eq!(times, [(20, 23), (22, 24)]);
    }

    #[test]
    fn a_statement_that_fails_to_prepare_is_a_failed_command() {
        // What drivers do first (tokio-postgres, psycopg 3, sqlx): Parse,
        // Describe, Sync; an execution only once that succeeded.
        let mut p = ready_parser(&config());
        let mut done = Vec::new();
        let describe = msg(b'D', b"S\0");
        let client = [
            parse("s1", "SELECT name FROM items WHERE id = $1"),
            describe.clone(),
            sync(),
            parse("", "SELECT nope FROM items"),
            describe,
            sync(),
        ]
        .concat();
        p.client_sent(&client, &mut at(1), &mut done);
        let server = [
            msg(b'1', &[]),
            msg(b't', b"\0\x01\0\0\0\x17"),
            msg(b'n', &[]),
            ready(),
            error("42703"),
            ready(),
        ]
        .concat();
        p.server_sent(&server, &mut at(2), &mut done);
        // The prepared one is no command; the failed one is.
        assert_eq!(
            summary(&done),
            [("SELECT", Some("items"), None, Some("42703"))]
        );
        assert!(p.pending.is_empty());
        assert_eq!(p.tracked, 0);
    }

    #[test]
    fn an_error_skips_to_sync() {
        let mut p = ready_parser(&config());
        let mut done = Vec::new();
        let client = [
            parse("", "SELECT 1"),
            bind("", ""),
            execute(""),
            parse("", "SELECT * FROM nope"),
            bind("", ""),
            execute(""),
            parse("", "INSERT INTO skipped VALUES (1)"),
            bind("", ""),
            execute(""),
            sync(),
            parse("", "DELETE FROM t"),
            bind("", ""),
            execute(""),
            sync(),
        ]
        .concat();
        p.client_sent(&client, &mut at(1), &mut done);
        let server = [
            msg(b'1', &[]),
            msg(b'2', &[]),
            complete("SELECT 1"),
            error("42P01"),
            ready(),
            msg(b'1', &[]),
            msg(b'2', &[]),
            complete("DELETE 7"),
            ready(),
        ]
        .concat();
        p.server_sent(&server, &mut at(2), &mut done);
        assert_eq!(
            summary(&done),
            [
                ("SELECT", None, Some(1), None),
                ("SELECT", Some("nope"), None, Some("42P01")),
                ("DELETE", Some("t"), None, None),
            ]
        );
        assert!(p.pending.is_empty());
    }

    #[test]
    fn past_max_pending_commands_are_counted_and_replies_still_match() {
        let mut p = ready_parser(&DbConfig {
            max_pending: 2,
            ..config()
        });
        let mut done = Vec::new();
        let mut client = parse("", "SELECT 1");
        for _ in 0..4 {
            client.extend(bind("", ""));
            client.extend(execute(""));
        }
        client.extend(sync());
        p.client_sent(&client, &mut at(1), &mut done);
        assert_eq!(p.take_untracked(), 2);
        assert_eq!(p.take_untracked(), 0, "reset when read");
        // A fifth, after the Sync, tracked once the first two are done.
        p.client_sent(
            &[
                parse("", "UPDATE t SET a = 1"),
                bind("", ""),
                execute(""),
                sync(),
            ]
            .concat(),
            &mut at(2),
            &mut done,
        );
        assert_eq!(p.take_untracked(), 1, "still two waiting when it was sent");
        let mut server = msg(b'1', &[]);
        for n in 1..=4 {
            server.extend(msg(b'2', &[]));
            server.extend(complete(&format!("SELECT {n}")));
        }
        server.extend(ready());
        server.extend(
            [
                msg(b'1', &[]),
                msg(b'2', &[]),
                complete("UPDATE 9"),
                ready(),
            ]
            .concat(),
        );
        p.server_sent(&server, &mut at(3), &mut done);
        assert_eq!(
            summary(&done),
            [
                ("SELECT", None, Some(1), None),
                ("SELECT", None, Some(2), None)
            ]
        );
        assert!(p.pending.is_empty() && p.tracked == 0);
        // Now there is room again.
        p.client_sent(
            &[bind("", ""), execute(""), sync()].concat(),
            &mut at(4),
            &mut done,
        );
        p.server_sent(
            &[msg(b'2', &[]), complete("UPDATE 5"), ready()].concat(),
            &mut at(5),
            &mut done,
        );
        assert_eq!(
            done.last().map(|c| (c.operation, c.rows)),
            Some(("UPDATE", None))
        );
    }

    #[test]
    fn a_pipeline_past_every_bound_stops_the_parser() {
        let mut p = ready_parser(&DbConfig {
            max_pending: 1,
            ..config()
        });
        let mut done = Vec::new();
        let one = [bind("", ""), execute(""), sync()].concat();
        for _ in 0..p.max_entries {
            p.client_sent(&one, &mut at(1), &mut done);
        }
        assert_eq!(p.stopped(), Some(StopReason::Malformed));
        assert!(p.pending.is_empty());
    }

    #[test]
    fn close_reports_what_is_waiting() {
        let mut p = ready_parser(&config());
        let mut done = Vec::new();
        p.client_sent(&query("SELECT pg_sleep(10)"), &mut at(1), &mut done);
        p.client_sent(
            &[parse("", "SELECT 2"), bind("", ""), execute(""), sync()].concat(),
            &mut at(2),
            &mut done,
        );
        p.close(&mut at(9), &mut done);
        assert_eq!(done.len(), 2);
        for c in &done {
            assert_eq!(c.error_type.as_deref(), Some(CONNECTION_CLOSED));
            assert_eq!(c.status_code, None);
            assert_eq!(secs(c.end), 9);
        }
        assert_eq!(done[0].namespace.as_deref(), Some("app"));
        // A simple query that failed before the close keeps its SQLSTATE.
        let mut p = ready_parser(&config());
        done.clear();
        p.client_sent(&query("SELECT * FROM nope"), &mut at(3), &mut done);
        p.server_sent(&error("42P01"), &mut at(4), &mut done);
        p.close(&mut at(9), &mut done);
        assert_eq!(
            summary(&done),
            [("SELECT", Some("nope"), None, Some("42P01"))]
        );
        assert_eq!(secs(done[0].end), 9);
    }

    #[test]
    fn namespace_defaults_to_the_user() {
        let mut p = PostgresParser::new(&config());
        let mut done = Vec::new();
        p.client_sent(&startup(&[("user", "alice")]), &mut at(0), &mut done);
        p.client_sent(&query("SELECT 1"), &mut at(1), &mut done);
        p.close(&mut at(2), &mut done);
        assert_eq!(done[0].namespace.as_deref(), Some("alice"));
    }

    #[test]
    fn startup_requests() {
        let mut done = Vec::new();
        // GSSENCRequest answered G: encrypted.
        let mut p = PostgresParser::new(&config());
        p.client_sent(&request(GSSENC_REQUEST), &mut at(0), &mut done);
        p.server_sent(b"G", &mut at(0), &mut done);
        assert_eq!(p.stopped(), Some(StopReason::Tls));
        // GSSENCRequest refused, then SSLRequest refused, then in the clear.
        let mut p = PostgresParser::new(&config());
        p.client_sent(&request(GSSENC_REQUEST), &mut at(0), &mut done);
        p.server_sent(b"N", &mut at(0), &mut done);
        p.client_sent(&request(SSL_REQUEST), &mut at(0), &mut done);
        p.server_sent(b"N", &mut at(0), &mut done);
        p.client_sent(
            &[startup(&[("user", "u")]), query("BEGIN")].concat(),
            &mut at(0),
            &mut done,
        );
        p.server_sent(
            &[ready(), complete("BEGIN"), ready()].concat(),
            &mut at(0),
            &mut done,
        );
        assert_eq!((p.stopped(), done.len()), (None, 1));
        // Direct TLS: a ClientHello first.
        let mut p = PostgresParser::new(&config());
        p.client_sent(b"\x16\x03\x01\x02\x00\x01", &mut at(0), &mut done);
        assert_eq!(p.stopped(), Some(StopReason::Tls));
        // A client that does not wait for the answer.
        let mut p = PostgresParser::new(&config());
        p.client_sent(
            &[request(SSL_REQUEST), startup(&[])].concat(),
            &mut at(0),
            &mut done,
        );
        assert_eq!(p.stopped(), Some(StopReason::Malformed));
        // Protocol 2.0: not followed.
        let mut p = PostgresParser::new(&config());
        p.client_sent(&request(0x0002_0000), &mut at(0), &mut done);
        assert_eq!(p.stopped(), Some(StopReason::Unsupported));
    }

    #[test]
    fn lengths_out_of_range_stop_the_parser() {
        let mut done = Vec::new();
        for bad in [
            b"Q\x00\x00\x00\x03".to_vec(),
            b"Q\x40\x00\x00\x01".to_vec(),
            b"Q\xff\xff\xff\xff".to_vec(),
        ] {
            let mut p = ready_parser(&config());
            p.client_sent(&bad, &mut at(1), &mut done);
            assert_eq!(p.stopped(), Some(StopReason::Malformed), "{bad:?}");
            // Stopped: whatever comes next is ignored.
            p.client_sent(&query("SELECT 1"), &mut at(1), &mut done);
            p.close(&mut at(1), &mut done);
            assert!(done.is_empty());
        }
        let mut p = ready_parser(&config());
        p.server_sent(b"D\x00\x00\x00\x02", &mut at(1), &mut done);
        assert_eq!(p.stopped(), Some(StopReason::Malformed));
        // A startup message longer than the server accepts.
        let mut p = PostgresParser::new(&config());
        p.client_sent(&10_001u32.to_be_bytes(), &mut at(0), &mut done);
        assert_eq!(p.stopped(), Some(StopReason::Malformed));
        // 1 GiB exactly is a length (its body is skipped, not kept).
        let mut p = ready_parser(&config());
        p.server_sent(b"D\x40\x00\x00\x00", &mut at(1), &mut done);
        assert_eq!(p.stopped(), None);
    }

    #[test]
    fn copy_both_stops_the_parser() {
        let mut p = ready_parser(&config());
        let mut done = Vec::new();
        p.client_sent(
            &query("START_REPLICATION SLOT s LOGICAL 0/0"),
            &mut at(1),
            &mut done,
        );
        p.server_sent(&msg(b'W', &[0, 0, 0]), &mut at(2), &mut done);
        assert_eq!(p.stopped(), Some(StopReason::Unsupported));
    }

    #[test]
    fn a_sqlcommenter_context_goes_with_queries_and_the_unnamed_statement() {
        const TP: &str = "00-5bd66ef5095369c7b0d1f8f4bd33716a-c532cb4098ac3dd2-01";
        let commented = format!("SELECT 1 /*traceparent='{TP}'*/");
        let mut p = ready_parser(&config());
        let mut done = Vec::new();
        // A simple query; the unnamed statement; a named one (prepared
        // once, executed again later: its comment is not this execution's).
        p.client_sent(&query(&commented), &mut at(1), &mut done);
        p.server_sent(
            &[complete("SELECT 1"), ready()].concat(),
            &mut at(2),
            &mut done,
        );
        for name in ["", "s1"] {
            p.client_sent(
                &[parse(name, &commented), bind("", name), execute(""), sync()].concat(),
                &mut at(3),
                &mut done,
            );
            p.server_sent(
                &[
                    msg(b'1', &[]),
                    msg(b'2', &[]),
                    complete("SELECT 1"),
                    ready(),
                ]
                .concat(),
                &mut at(4),
                &mut done,
            );
        }
        let contexts: Vec<_> = done
            .iter()
            .map(|c| c.context.as_ref().map(|cx| cx.span_id().to_string()))
            .collect();
        let id = Some("c532cb4098ac3dd2".to_owned());
        assert_eq!(contexts, [id.clone(), id, None]);
    }

    #[test]
    fn bodies_are_skipped_not_kept() {
        let mut p = ready_parser(&with_text());
        let mut done = Vec::new();
        // A 100 KiB statement: its first 16 KiB name and sanitize it.
        let long = format!("INSERT INTO t VALUES ('{}')", "x".repeat(100 * 1024));
        for piece in query(&long).chunks(1000) {
            p.client_sent(piece, &mut at(1), &mut done);
        }
        assert!(p.client.body.capacity() <= 2 * MAX_STATEMENT);
        // The same as a prepared statement, executed.
        p.client_sent(
            &[parse("long", &long), bind("", "long"), execute(""), sync()].concat(),
            &mut at(1),
            &mut done,
        );
        // A 10 MiB row, and a 10 MiB COPY chunk from the client.
        let mut big = b"D".to_vec();
        big.extend_from_slice(&((10u32 << 20) + 4).to_be_bytes());
        p.server_sent(&big, &mut at(2), &mut done);
        let chunk = vec![7u8; 64 * 1024];
        for _ in 0..160 {
            p.server_sent(&chunk, &mut at(2), &mut done);
        }
        assert!(
            p.server.body.capacity() <= MAX_ERROR_HEAD,
            "{}",
            p.server.body.capacity()
        );
        p.server_sent(
            &[complete("INSERT 0 1"), ready()].concat(),
            &mut at(3),
            &mut done,
        );
        let extended = [
            msg(b'1', &[]),
            msg(b'2', &[]),
            complete("INSERT 0 1"),
            ready(),
        ];
        p.server_sent(&extended.concat(), &mut at(3), &mut done);
        // The first returned a row (the 10 MiB one); the second none.
        assert_eq!(
            summary(&done),
            [
                ("INSERT", Some("t"), Some(1), None),
                ("INSERT", Some("t"), None, None)
            ]
        );
        assert_eq!(done[1].query_text, done[0].query_text);
        // Cut inside the string: hidden to the end.
        assert_eq!(
            done[0].query_text.as_deref(),
            Some("INSERT INTO t VALUES (?")
        );
        let mut copy = b"d".to_vec();
        copy.extend_from_slice(&((10u32 << 20) + 4).to_be_bytes());
        p.client_sent(&copy, &mut at(4), &mut done);
        for _ in 0..160 {
            p.client_sent(&chunk, &mut at(4), &mut done);
        }
        assert!(p.client.body.capacity() <= 2 * MAX_STATEMENT);
        assert_eq!(p.stopped(), None);
    }

    #[test]
    fn statements_and_portals_are_bounded() {
        let mut p = ready_parser(&config());
        let mut done = Vec::new();
        for n in 0..MAX_STATEMENTS + 50 {
            p.client_sent(
                &parse(&format!("s{n}"), "UPDATE t SET a = 1"),
                &mut at(1),
                &mut done,
            );
            p.client_sent(
                &bind(&format!("p{n}"), &format!("s{n}")),
                &mut at(1),
                &mut done,
            );
        }
        assert_eq!(p.statements.len(), MAX_STATEMENTS);
        assert_eq!(p.portals.len(), MAX_PORTALS);
        // The last statement is remembered; a closed one is forgotten.
        let last = format!("s{}", MAX_STATEMENTS + 49);
        p.client_sent(
            &[bind("", &last), execute(""), sync()].concat(),
            &mut at(2),
            &mut done,
        );
        let mut close = vec![b'S'];
        close.extend(cstring(&last));
        p.client_sent(
            &[msg(b'C', &close), bind("", &last), execute(""), sync()].concat(),
            &mut at(2),
            &mut done,
        );
        let reply = [msg(b'2', &[]), complete("UPDATE 1"), ready()].concat();
        p.server_sent(
            &[reply.clone(), msg(b'3', &[]), reply].concat(),
            &mut at(3),
            &mut done,
        );
        let ops: Vec<_> = done.iter().map(|c| c.operation).collect();
        assert_eq!(ops, ["UPDATE", "_OTHER"]);
        // Names are the server's: cut to 63 bytes.
        let long = "n".repeat(100);
        p.client_sent(
            &[
                parse(&long, "DELETE FROM t"),
                bind("", &long[..63]),
                execute(""),
                sync(),
            ]
            .concat(),
            &mut at(4),
            &mut done,
        );
        p.server_sent(
            &[
                msg(b'1', &[]),
                msg(b'2', &[]),
                complete("DELETE 0"),
                ready(),
            ]
            .concat(),
            &mut at(5),
            &mut done,
        );
        assert_eq!(done.last().map(|c| c.operation), Some("DELETE"));
    }

    #[test]
    fn function_calls_and_notices_take_no_reply() {
        let mut p = ready_parser(&config());
        let mut done = Vec::new();
        p.client_sent(
            &[msg(b'F', &[0, 0, 0, 1]), query("SELECT 1")].concat(),
            &mut at(1),
            &mut done,
        );
        let server = [
            msg(b'V', &[0, 0, 0, 0]),
            ready(),
            msg(b'N', b"SNOTICE\0C00000\0Mhi\0\0"),
            msg(b'A', b"\0\0\0\x01ch\0x\0"),
            row(),
            complete("SELECT 1"),
            msg(b'S', b"TimeZone\0UTC\0"),
            ready(),
        ]
        .concat();
        p.server_sent(&server, &mut at(2), &mut done);
        assert_eq!(summary(&done), [("SELECT", None, Some(1), None)]);
    }

    #[test]
    fn sqlstates_and_tags() {
        assert_eq!(sqlstate(b"SERROR\0VERROR\0C42P01\0Mx\0\0"), Some(*b"42P01"));
        assert_eq!(sqlstate(b"C4201\0\0"), None);
        assert_eq!(sqlstate(b"Cabcde\0\0"), None);
        assert_eq!(sqlstate(b"SERROR\0VERR"), None);
        assert_eq!(sqlstate(b""), None);
        assert_eq!(tag_rows(b"SELECT 5"), Some(5));
        assert_eq!(tag_rows(b"INSERT 0 3"), Some(3));
        assert_eq!(tag_rows(b"MERGE 4"), Some(4));
        assert_eq!(tag_rows(b"COPY 10"), Some(10));
        assert_eq!(tag_rows(b"CREATE TABLE"), None);
        assert_eq!(tag_rows(b"BEGIN"), None);
        assert_eq!(tag_rows(b"SELECT x"), None);
        assert_eq!(tag_rows(b"SELECT 99999999999999999999999"), None);
        // Rows returned, not rows affected: (tag, RowDescription and
        // CopyOutResponse seen, DataRows counted).
        for (tag, shape, data_rows, returned) in [
            (&b"SELECT 0"[..], (true, false), 0, Some(0)),
            (b"FETCH 10", (false, false), 10, Some(10)),
            (b"UPDATE 3", (false, false), 0, None),
            (b"INSERT 0 2", (true, false), 2, Some(2)),
            // A prepared `DELETE ... RETURNING` executed without Describe.
            (b"DELETE 2", (false, false), 2, Some(2)),
            (b"DELETE 0", (true, false), 0, Some(0)),
            (b"COPY 10", (false, false), 0, None),
            (b"COPY 10", (false, true), 0, Some(10)),
            (b"CREATE TABLE", (false, false), 0, None),
        ] {
            let got = Returned::of(tag, shape).rows(data_rows);
            assert_eq!(got, returned, "{}", String::from_utf8_lossy(tag));
        }
        // An error without a readable SQLSTATE is still an error.
        let mut p = ready_parser(&config());
        let mut done = Vec::new();
        p.client_sent(&query("SELECT 1"), &mut at(1), &mut done);
        p.server_sent(
            &[msg(b'E', b"SERROR\0\0"), ready()].concat(),
            &mut at(2),
            &mut done,
        );
        assert_eq!(done[0].error_type.as_deref(), Some("error"));
    }

    #[test]
    fn every_prefix_then_the_rest() {
        // Cut the extended-protocol capture's every frame at every point:
        // the same commands.
        let capture = include_bytes!("../../testdata/db/postgres_extended_errors.bin");
        let frames = frames(capture);
        let expected = timeless(replay(&config(), &frames).0);
        for (i, &(dir, bytes)) in frames.iter().enumerate() {
            for cut in 1..bytes.len() {
                let mut split = frames[..i].to_vec();
                split.push((dir, &bytes[..cut]));
                split.push((dir, &bytes[cut..]));
                split.extend_from_slice(&frames[i + 1..]);
                assert_eq!(
                    timeless(replay(&config(), &split).0),
                    expected,
                    "frame {i} cut at {cut}"
                );
            }
        }
    }
}
