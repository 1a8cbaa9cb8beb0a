//! Spans and metrics for database commands on connections that pass
//! through: Redis (RESP2 and RESP3), PostgreSQL and MySQL.
//!
//! # How
//! The bytes of a database connection are copied as they are, in both
//! directions, unbuffered ([`DbIo`] only looks at what is read from and
//! written to the client). A parser per connection ([`Parser`]) follows the
//! protocol beside the copy: it reads each command's head (its name, the
//! first keyword of a query), skips values (a 1 MiB Redis value costs the
//! same as a 1 byte one: their lengths are counted, their bytes never
//! kept), matches replies to commands in order, and reports each finished
//! command as a [`Command`]. [`DbObserver`] turns commands into spans of
//! the one span model ([`SpanRecord`](crate::span::SpanRecord), with
//! [`DbFields`](crate::span::DbFields)) and into the
//! `db_client_operation_duration_seconds` (outbound) and
//! `db_server_operation_duration_seconds` (inbound) histograms.
//!
//! A parser that meets bytes it cannot follow stops: the connection keeps
//! flowing, unchanged, and makes no more spans
//! (`l7inspect_db_parse_stopped_total` says why). Memory per connection is
//! bounded: a parser keeps a few small buffers, and at most
//! [`DbConfig::max_pending`] commands waiting for their replies.
//!
//! # Layout
//! - `redis`, `postgres`, `mysql`: one parser per protocol, pure: bytes in,
//!   [`Command`]s out.
//! - `sql`: what the SQL parsers share: a statement's operation, its table
//!   when certain, and the sanitized query text.
//! - `observe`: [`DbLayer`] / [`Db`] (a Tower layer over detected
//!   connections), [`DbIo`] and the per-connection watch.
//! - `metrics`: [`DbMetrics`].

use std::{borrow::Cow, sync::Arc, time::SystemTime};

use l7inspect_detect::Protocol;

mod metrics;
mod mysql;
mod observe;
mod redis;
// `pub` for the fuzz target and the bench only (see the module's doc).
#[doc(hidden)]
pub mod sql;
// `pub` for the bench and fuzz entry point (`postgres::replay`) only.
#[doc(hidden)]
pub mod postgres;

pub use metrics::{DbLabels, DbMetrics, MAX_ERROR_LABELS, StopLabels};
pub use observe::{Db, DbIo, DbLayer, DbObserver};

/// The database protocols that get spans (`db.system.name`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DbSystem {
    /// Redis (and servers that speak RESP: Valkey, KeyDB, Dragonfly).
    Redis,
    /// PostgreSQL (frontend/backend protocol 3.0).
    Postgresql,
    /// MySQL and MariaDB (client/server protocol 4.1+).
    Mysql,
}

impl DbSystem {
    /// The `db.system.name` value: `redis`, `postgresql`, `mysql`.
    pub const fn as_str(self) -> &'static str {
        match self {
            DbSystem::Redis => "redis",
            DbSystem::Postgresql => "postgresql",
            DbSystem::Mysql => "mysql",
        }
    }

    /// The system of a detected protocol, if it is one of these.
    pub fn of(protocol: Protocol) -> Option<Self> {
        match protocol {
            Protocol::Redis => Some(DbSystem::Redis),
            Protocol::Postgres => Some(DbSystem::Postgresql),
            Protocol::Mysql => Some(DbSystem::Mysql),
            _ => None,
        }
    }
}

impl std::fmt::Display for DbSystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What database connections are parsed for, and how much is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DbConfig {
    /// Parse Redis connections.
    pub redis: bool,
    /// Parse PostgreSQL connections.
    pub postgresql: bool,
    /// Parse MySQL connections.
    pub mysql: bool,
    /// Record `db.query.text`, sanitized (literals replaced by `?`), for
    /// SQL statements. Off by default: even sanitized, a query can say more
    /// than a team wants in its traces.
    pub query_text: bool,
    /// The longest `db.query.text`, in bytes (cut at a character boundary).
    pub max_query_text: usize,
    /// The most commands of one connection waiting for their replies that
    /// are tracked. In a deeper pipeline, the commands past it get neither
    /// a span nor a histogram entry; they are counted in
    /// `l7inspect_db_commands_untracked_total`, and replies still go to the
    /// right commands.
    pub max_pending: usize,
}

/// The default [`DbConfig::max_query_text`]: 2 KiB, as
/// [`DEFAULT_MAX_ATTRIBUTE_LEN`](crate::DEFAULT_MAX_ATTRIBUTE_LEN).
pub const DEFAULT_MAX_QUERY_TEXT: usize = 2048;

/// The default [`DbConfig::max_pending`]: 1,024 commands (at most 80 KiB
/// of a Redis connection's memory when full: 80 bytes each). redis-benchmark pipelines 16 by
/// default; `redis-cli --pipe` sends thousands, of which the first 1,024
/// are tracked at a time.
pub const DEFAULT_MAX_PENDING: usize = 1024;

impl Default for DbConfig {
    fn default() -> Self {
        Self {
            redis: true,
            postgresql: true,
            mysql: true,
            query_text: false,
            max_query_text: DEFAULT_MAX_QUERY_TEXT,
            max_pending: DEFAULT_MAX_PENDING,
        }
    }
}

impl DbConfig {
    /// Whether connections of `system` are parsed.
    pub fn parses(&self, system: DbSystem) -> bool {
        match system {
            DbSystem::Redis => self.redis,
            DbSystem::Postgresql => self.postgresql,
            DbSystem::Mysql => self.mysql,
        }
    }
}

/// When a command started, as its parser saw it: the first byte of it read
/// from the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Start {
    /// The wall-clock time.
    pub time: SystemTime,
    /// The read it started in (the clock's number): what was in flight
    /// then is looked up by it (parent inference).
    read: u32,
}

/// The time of the bytes a parser is given: read from the clock at most
/// once per read or write, and only when a command starts or ends in it.
#[derive(Debug, Default)]
pub struct Clock {
    now: Option<SystemTime>,
    /// The read's number ([`Start`]'s), 0 when nobody numbers them.
    read: u32,
    /// Whether a command started in these bytes.
    started: bool,
}

impl Clock {
    /// A clock for one read or write.
    pub fn new() -> Self {
        Self::default()
    }

    /// A clock for client read number `read` (its commands' [`Start`]s
    /// carry it).
    pub(crate) fn numbered(read: u32) -> Self {
        Self {
            read,
            ..Self::default()
        }
    }

    /// The time of these bytes.
    pub fn now(&mut self) -> SystemTime {
        *self.now.get_or_insert_with(SystemTime::now)
    }

    /// A command starts in these bytes.
    pub fn start(&mut self) -> Start {
        self.started = true;
        Start {
            time: self.now(),
            read: self.read,
        }
    }

    /// Whether a command started in these bytes.
    pub(crate) fn started(&self) -> bool {
        self.started
    }
}

impl Start {
    /// A start at `time`, in no numbered read (for tests and replays that
    /// compare commands without their times).
    pub fn at(time: SystemTime) -> Self {
        Self { time, read: 0 }
    }

    /// The client read it started in.
    pub(crate) fn read(&self) -> u32 {
        self.read
    }
}

/// One finished command, as a parser reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// When its first byte was read from the client.
    pub start: Start,
    /// When the last byte of its reply was written to the client (or when
    /// the connection closed, for an unanswered one).
    pub end: SystemTime,
    /// `db.operation.name`, and the span's name: the command (`GET`), the
    /// statement's first keyword (`SELECT`), or `_OTHER`. Always one of a
    /// bounded set (these are also metric labels).
    pub operation: &'static str,
    /// `db.namespace`: the Redis database index, the PostgreSQL database,
    /// the MySQL schema; shared by a connection's commands.
    pub namespace: Option<Arc<str>>,
    /// `db.collection.name`: the one table a statement names, when certain.
    pub collection: Option<String>,
    /// `db.query.text`, sanitized, when [`DbConfig::query_text`] allows.
    pub query_text: Option<String>,
    /// `db.response.status_code`: the Redis error prefix (`WRONGTYPE`), the
    /// SQLSTATE (`42P01`), the MySQL error number (`1146`).
    pub status_code: Option<Cow<'static, str>>,
    /// `error.type`, when the command failed (the status code, or why the
    /// proxy saw no reply: `connection_closed`).
    pub error_type: Option<Cow<'static, str>>,
    /// `db.response.returned_rows`: the rows the reply returned (not the
    /// rows a statement changed), when it returned rows.
    pub rows: Option<u64>,
    /// The trace context the statement carried in a sqlcommenter comment
    /// (`/*traceparent='…'*/`): its span's parent. Boxed: rare, and
    /// commands are moved often.
    pub context: Option<Box<opentelemetry::trace::SpanContext>>,
}

impl Command {
    /// A command started at `start` and named `operation`, with nothing
    /// known yet, ending when it starts.
    pub fn new(start: Start, operation: &'static str) -> Self {
        Self {
            start,
            end: start.time,
            operation,
            namespace: None,
            collection: None,
            query_text: None,
            status_code: None,
            error_type: None,
            rows: None,
            context: None,
        }
    }
}

/// Why a parser stopped following its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StopReason {
    /// The connection was upgraded to TLS (PostgreSQL `SSLRequest`
    /// answered `S`, MySQL `SSL_REQUEST`).
    Tls,
    /// The connection turned into something that is not commands and
    /// replies (Redis `MONITOR`, replication, PostgreSQL
    /// `START_REPLICATION`).
    Unsupported,
    /// Bytes the parser could not follow, or state past its bounds.
    Malformed,
}

impl StopReason {
    /// The metrics label: `tls`, `unsupported`, `malformed`.
    pub const fn as_str(self) -> &'static str {
        match self {
            StopReason::Tls => "tls",
            StopReason::Unsupported => "unsupported",
            StopReason::Malformed => "malformed",
        }
    }
}

/// What every protocol's parser does. Each is fed the client's bytes and
/// the server's bytes, in the order they pass, in pieces of any size (a
/// piece may end anywhere, even inside a length prefix); it reports
/// finished commands in `done` and never holds more than a bounded amount
/// of memory.
pub(crate) trait WireParser: Send {
    /// Bytes the client sent (commands).
    fn client_sent(&mut self, bytes: &[u8], clock: &mut Clock, done: &mut Vec<Command>);
    /// Bytes the server sent (replies).
    fn server_sent(&mut self, bytes: &[u8], clock: &mut Clock, done: &mut Vec<Command>);
    /// The connection ended: commands still waiting are reported, failed
    /// with `error.type` `connection_closed`.
    fn close(&mut self, clock: &mut Clock, done: &mut Vec<Command>);
    /// `Some` once it stopped following the connection (it then ignores
    /// whatever it is given).
    fn stopped(&self) -> Option<StopReason>;
    /// Commands that got no span because more than
    /// [`DbConfig::max_pending`] were waiting; reset when read.
    fn take_untracked(&mut self) -> u64;
}

/// `error.type` of a command whose connection closed before its reply.
pub const CONNECTION_CLOSED: &str = "connection_closed";

/// The parser of one connection, of one of the [`DbSystem`]s: pure, bytes
/// in, finished [`Command`]s out. [`DbIo`] feeds one from a connection's
/// reads and writes; it is public for benchmarks, fuzzing and embedders
/// with byte streams of their own.
///
/// ```
/// use l7inspect_trace::db::{Clock, DbConfig, DbSystem, Parser};
///
/// let mut parser = Parser::new(DbSystem::Redis, &DbConfig::default());
/// let mut done = Vec::new();
/// parser.client_sent(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", &mut Clock::new(), &mut done);
/// parser.server_sent(b"$-1\r\n", &mut Clock::new(), &mut done);
/// assert_eq!(done[0].operation, "GET");
/// ```
#[derive(Debug)]
pub struct Parser {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Redis(redis::RedisParser),
    Postgres(postgres::PostgresParser),
    Mysql(mysql::MysqlParser),
}

impl Parser {
    /// A parser for a new connection of `system`.
    pub fn new(system: DbSystem, config: &DbConfig) -> Self {
        let kind = match system {
            DbSystem::Redis => Kind::Redis(redis::RedisParser::new(config)),
            DbSystem::Postgresql => Kind::Postgres(postgres::PostgresParser::new(config)),
            DbSystem::Mysql => Kind::Mysql(mysql::MysqlParser::new(config)),
        };
        Self { kind }
    }

    fn inner(&mut self) -> &mut dyn WireParser {
        match &mut self.kind {
            Kind::Redis(p) => p,
            Kind::Postgres(p) => p,
            Kind::Mysql(p) => p,
        }
    }

    /// Bytes the client sent; the commands they finished go in `done`.
    pub fn client_sent(&mut self, bytes: &[u8], clock: &mut Clock, done: &mut Vec<Command>) {
        self.inner().client_sent(bytes, clock, done);
    }

    /// Bytes the server sent; the commands they finished go in `done`.
    pub fn server_sent(&mut self, bytes: &[u8], clock: &mut Clock, done: &mut Vec<Command>) {
        self.inner().server_sent(bytes, clock, done);
    }

    /// The connection closed: the commands still waiting go in `done`,
    /// failed with `error.type` [`CONNECTION_CLOSED`].
    pub fn close(&mut self, clock: &mut Clock, done: &mut Vec<Command>) {
        self.inner().close(clock, done);
    }

    /// Why it stopped following the connection, once it did.
    pub fn stopped(&mut self) -> Option<StopReason> {
        self.inner().stopped()
    }

    /// Commands seen that got no [`Command`] (past
    /// [`DbConfig::max_pending`], or without a reply) since last asked.
    pub fn take_untracked(&mut self) -> u64 {
        self.inner().take_untracked()
    }
}
