//! The MySQL (and MariaDB) client/server protocol, followed beside the
//! copy: a [`Command`] per `COM_QUERY` and per `COM_STMT_EXECUTE`.
//!
//! # What it follows
//! Both directions are cut into packets (3-byte little-endian payload
//! length, sequence id); a payload of 16 MiB - 1 bytes continues in the
//! next packet, and the pieces are one logical payload. Only a payload's
//! head is kept ([`CLIENT_HEAD`] bytes of a client's, [`SERVER_HEAD`] of a
//! server's): the rest of a long query and every row are counted, not
//! buffered.
//!
//! - **Connection phase**: the server's greeting (its capability flags),
//!   the client's `HandshakeResponse41` (the negotiated flags, and the
//!   database it names, which becomes `db.namespace`), then authentication
//!   rounds (auth switch, more data) until OK or ERR. An `SSLRequest` (a
//!   32-byte response with `CLIENT_SSL`) means the rest is TLS: the parser
//!   stops ([`StopReason::Tls`]).
//! - **Command phase**: every client packet with sequence id 0 is a
//!   command, answered in order (MySQL is request-response; a client that
//!   sends before reading is still paired right, up to
//!   [`DbConfig::max_pending`] tracked commands).
//!   - `COM_QUERY`: a command named after the statement's first keyword,
//!     with its table when certain and its sanitized text when configured
//!     (`super::sql`, MySQL dialect). Its reply is OK (no `rows`: the rows
//!     an `UPDATE` affected are not rows returned), ERR (`status_code` and
//!     `error.type`: the error number, `1146`) or result sets (`rows`: the
//!     rows returned). With several results (`SELECT 1; SELECT 2`, a
//!     procedure), the command ends after the last, `rows` the total of its
//!     result sets.
//!     A `LOCAL INFILE` request is followed through the file's packets.
//!   - `COM_STMT_PREPARE`: no command when it succeeds (its executions
//!     are the commands); its statement id is kept, with what its text
//!     says (operation, table, sanitized text), in a bounded map
//!     ([`MAX_STATEMENTS`]). A prepare that
//!     fails is a command, with its error, since no execution will follow.
//!   - `COM_STMT_EXECUTE`: a command named after the prepared statement
//!     (`_OTHER` for an id the parser never saw prepared), rows from its
//!     binary result set. `COM_STMT_CLOSE` forgets the id.
//!   - `COM_INIT_DB` (`USE db`) changes `db.namespace` when answered OK;
//!     `COM_CHANGE_USER` re-authenticates and may change it too.
//!   - `COM_PING`, `COM_STMT_RESET`, `COM_STMT_FETCH`, `COM_QUIT` and the
//!     other administrative commands make no command (they are not the
//!     application's queries), but their replies are followed so that no
//!     query ever takes another's reply.
//!   - Replication (`COM_BINLOG_DUMP`, `COM_REGISTER_SLAVE`...) and
//!     commands whose reply is not known stop the parser
//!     ([`StopReason::Unsupported`]), as do an execution that asks for a
//!     cursor on a connection with `CLIENT_DEPRECATE_EOF` (handled without
//!     it: the execution ends at its definitions, `COM_STMT_FETCH` is
//!     followed) and MySQL's optional result set metadata: the parser
//!     could not tell where their replies end.
//!
//! When the connection ends, commands still waiting for their replies are
//! reported with `error.type` `connection_closed`. When the parser stops,
//! the commands it was following are dropped (no span rather than a wrong
//! one), and the connection flows on unchanged.
//!
//! MariaDB's extensions that change framing are followed: its extended
//! capabilities (metadata caching: a column count with a "metadata
//! follows" byte), progress reports (ERR packets numbered 0xffff, which
//! are not replies).

use std::{
    borrow::Cow,
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use super::{
    CONNECTION_CLOSED, Clock, Command, DbConfig, Start, StopReason, WireParser,
    sql::{self, Dialect},
};

/// The largest packet payload; one this long continues in the next packet.
const MAX_PACKET: usize = 0xff_ffff;

/// How much of a client's payload is kept: a query's first 16 KiB name its
/// operation and make its sanitized text; the rest of a longer one (a bulk
/// INSERT) is counted, not kept.
const CLIENT_HEAD: usize = 16 * 1024;

/// How much of a server's payload is kept during the connection phase: a
/// greeting's version string and capability flags fit.
const SERVER_HEAD: usize = 256;

/// How much of a server's payload is kept in the command phase: the
/// longest header read there (an OK packet: 1 + 9 + 9 + 2 bytes). A row is
/// never kept beyond this.
const REPLY_HEAD: usize = 32;

/// The most prepared statements remembered per connection. A statement
/// prepared while the map is full is not remembered: its executions are
/// named `_OTHER`. Applications close statements or prepare a bounded set.
pub(crate) const MAX_STATEMENTS: usize = 256;

/// The most commands waiting for replies, tracked or not, before the
/// parser gives up ([`StopReason::Malformed`]): MySQL clients wait for
/// each reply, so only a broken stream gets here.
const MAX_QUEUE: usize = 4096;

// Capability flags (the client's and the server's, negotiated).
const CLIENT_MYSQL: u32 = 0x1;
const CLIENT_CONNECT_WITH_DB: u32 = 0x8;
const CLIENT_PROTOCOL_41: u32 = 0x200;
const CLIENT_SSL: u32 = 0x800;
const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
const CLIENT_PLUGIN_AUTH_LENENC_DATA: u32 = 0x20_0000;
const CLIENT_DEPRECATE_EOF: u32 = 0x100_0000;
/// MySQL's; MariaDB gives this bit another meaning (and never sends it).
const CLIENT_OPTIONAL_RESULTSET_METADATA: u32 = 0x200_0000;
/// MariaDB's extended capability (bit 36, bit 4 of the extended word):
/// a column count packet carries a "metadata follows" byte.
const MARIADB_CLIENT_CACHE_METADATA: u32 = 0x10;

// Status flags of OK and EOF packets.
const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;
const SERVER_STATUS_CURSOR_EXISTS: u16 = 0x0040;

/// A MariaDB progress report: an ERR packet with this number, sent while a
/// long statement runs, before its reply.
const PROGRESS_REPORT: u16 = 0xffff;

/// Follows one MySQL connection (see the module docs).
#[derive(Debug)]
pub(crate) struct MysqlParser {
    client: Framer,
    server: Framer,
    phase: Phase,
    query_text: bool,
    max_query_text: usize,
    max_pending: usize,
    /// The server's capability flags, from its greeting.
    server_caps: u32,
    /// MariaDB's extended capabilities of the server (0 for MySQL).
    server_ext_caps: u32,
    /// The negotiated capability flags.
    caps: u32,
    /// The negotiated MariaDB extended capabilities.
    ext_caps: u32,
    /// The server says it is MariaDB (its version string).
    mariadb: bool,
    /// The current schema: `db.namespace` of new commands.
    namespace: Option<Arc<str>>,
    /// The schema named in the handshake, current once it succeeds.
    handshake_db: Option<Arc<str>>,
    /// Commands waiting for their replies, oldest first.
    queue: VecDeque<Pending>,
    /// How many of `queue` carry a command to report.
    tracked: usize,
    /// Prepared statements by id.
    statements: HashMap<u32, Statement>,
    /// The last statement sent to be prepared: what MariaDB's id
    /// 0xffffffff ("the statement just prepared") executes, which a client
    /// may send before the prepare's reply.
    last_prepared: Option<Statement>,
    stopped: Option<StopReason>,
    untracked: u64,
}

/// Where the connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the server's greeting.
    Greeting,
    /// Waiting for the client's handshake response.
    HandshakeResponse,
    /// Authentication rounds until the server's OK or ERR.
    Auth,
    /// Commands and replies.
    Command,
    /// The server refused the connection or the authentication: nothing
    /// more to follow (the connection is closing).
    Over,
}

/// What a prepared statement executes as.
#[derive(Clone, Debug)]
struct Statement {
    operation: &'static str,
    collection: Option<String>,
    query_text: Option<String>,
}

/// A command waiting for its reply.
#[derive(Debug)]
struct Pending {
    /// Reported when the reply ends; `None` for commands that make no
    /// span (a ping, a prepare) or past [`DbConfig::max_pending`].
    command: Option<Command>,
    reply: Reply,
}

/// The reply a [`Pending`] expects, and how far it has come.
#[derive(Debug)]
enum Reply {
    /// One packet, whatever it is (OK, ERR, EOF, a statistics string).
    /// `init_db`: the schema that becomes current on OK; `reset`: prepared
    /// statements are gone on OK (`COM_RESET_CONNECTION`).
    Single {
        init_db: Option<Arc<str>>,
        reset: bool,
    },
    /// A query's reply: OK, ERR, LOCAL INFILE or result sets.
    Results(Results),
    /// A prepare's reply; the statement is remembered on OK.
    Prepare {
        step: PrepareStep,
        statement: Statement,
    },
    /// `COM_CHANGE_USER`: authentication rounds until OK or ERR.
    ChangeUser { db: Option<Arc<str>> },
}

/// Where a query's reply is.
#[derive(Debug)]
struct Results {
    step: ResultStep,
    /// Rows of the finished result sets.
    rows: u64,
    /// A result set came (else the reply has no rows returned, only OKs).
    set: bool,
    /// Rows of the result set being read.
    current: u64,
    /// The command asked for a cursor (`COM_STMT_EXECUTE` flags).
    cursor: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ResultStep {
    /// The first packet of a result: OK, ERR, LOCAL INFILE or a column count.
    First,
    /// Column definitions still to come.
    Columns(u64),
    /// The EOF after the column definitions (no `CLIENT_DEPRECATE_EOF`).
    ColumnsEof,
    /// Rows, until EOF / OK (`0xfe`) or ERR.
    Rows,
    /// The client is sending a LOCAL INFILE's contents, up to an empty packet.
    Infile,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PrepareStep {
    First,
    Params { params: u16, columns: u16 },
    ParamsEof { columns: u16 },
    Columns(u16),
    ColumnsEof,
}

/// How a reply ended.
#[derive(Debug, Default)]
struct End {
    rows: Option<u64>,
    error: Option<u16>,
    /// Report the command (a prepare only reports a failure).
    report: bool,
}

/// One direction's packets, in pieces of any size.
#[derive(Debug)]
struct Framer {
    header: [u8; 4],
    header_len: usize,
    /// In a packet's payload (its header is complete).
    in_payload: bool,
    /// Payload bytes of the current packet still to come.
    remaining: usize,
    /// The current packet continues the logical payload before it.
    continuation: bool,
    /// The logical payload spans more than one packet.
    continued: bool,
    /// The kept head of the logical payload.
    head: Vec<u8>,
    /// The logical payload's length so far.
    len: usize,
    /// The sequence id of its first packet.
    seq: u8,
    /// When its first byte was given (client packets only).
    start: Option<Start>,
    /// Stamp packets with their start.
    stamp: bool,
    /// How much of a payload is kept in `head`.
    limit: usize,
}

/// A whole logical payload, as the [`Framer`] hands it over.
struct Packet<'a> {
    /// The payload's first bytes (all of it, if short).
    head: &'a [u8],
    /// The payload's length.
    len: usize,
    /// The sequence id of its first packet.
    seq: u8,
    /// It spanned more than one packet (16 MiB or more).
    continued: bool,
    /// When its first byte arrived (client packets).
    start: Option<Start>,
}

// === impl MysqlParser ===

impl MysqlParser {
    /// A parser for a new connection, from its first byte.
    pub(crate) fn new(config: &DbConfig) -> Self {
        Self {
            client: Framer::new(true),
            server: Framer::new(false),
            phase: Phase::Greeting,
            query_text: config.query_text,
            max_query_text: config.max_query_text,
            max_pending: config.max_pending,
            server_caps: 0,
            server_ext_caps: 0,
            caps: 0,
            ext_caps: 0,
            mariadb: false,
            namespace: None,
            handshake_db: None,
            queue: VecDeque::new(),
            tracked: 0,
            statements: HashMap::new(),
            last_prepared: None,
            stopped: None,
            untracked: 0,
        }
    }

    fn deprecate_eof(&self) -> bool {
        self.caps & CLIENT_DEPRECATE_EOF != 0
    }

    fn stop(&mut self, reason: StopReason) {
        self.stopped = Some(reason);
        // Nothing more is reported; free what was kept.
        self.queue.clear();
        self.tracked = 0;
        self.statements.clear();
        self.client.head = Vec::new();
        self.server.head = Vec::new();
    }

    // --- client packets ---

    fn on_client(&mut self, p: Packet<'_>, clock: &mut Clock) -> Result<(), StopReason> {
        match self.phase {
            Phase::Greeting => Err(StopReason::Malformed),
            Phase::HandshakeResponse => self.on_handshake_response(&p),
            Phase::Auth | Phase::Over => Ok(()),
            Phase::Command => self.on_command(p, clock),
        }
    }

    fn on_handshake_response(&mut self, p: &Packet<'_>) -> Result<(), StopReason> {
        let caps = p.head.get(..4).ok_or(StopReason::Malformed)?;
        let caps = u32::from_le_bytes([caps[0], caps[1], caps[2], caps[3]]);
        if caps & CLIENT_PROTOCOL_41 == 0 {
            // HandshakeResponse320: clients of before MySQL 4.1.
            return Err(StopReason::Unsupported);
        }
        if caps & CLIENT_SSL != 0 && p.len == 32 {
            return Err(StopReason::Tls);
        }
        self.caps = caps & self.server_caps;
        if self.caps & CLIENT_OPTIONAL_RESULTSET_METADATA != 0 && !self.mariadb {
            return Err(StopReason::Unsupported);
        }
        // MariaDB's extended capabilities: the filler's last 4 bytes, when
        // neither side claims to be MySQL.
        if self.server_caps & CLIENT_MYSQL == 0
            && caps & CLIENT_MYSQL == 0
            && let Some(ext) = p.head.get(28..32)
        {
            self.ext_caps =
                u32::from_le_bytes([ext[0], ext[1], ext[2], ext[3]]) & self.server_ext_caps;
        }
        if caps & CLIENT_CONNECT_WITH_DB != 0 {
            let mut r = Reader::new(p.head.get(32..).unwrap_or_default());
            self.handshake_db = r.nul_str().and_then(|_user| {
                skip_auth_response(&mut r, caps)?;
                schema(r.nul_str()?)
            });
        }
        self.phase = Phase::Auth;
        Ok(())
    }

    fn on_command(&mut self, p: Packet<'_>, clock: &mut Clock) -> Result<(), StopReason> {
        if let Some(front) = self.queue.front_mut() {
            match &mut front.reply {
                Reply::Results(r) if r.step == ResultStep::Infile => {
                    // The file's contents, up to an empty packet; then the
                    // server's OK or ERR.
                    if p.len == 0 {
                        r.step = ResultStep::First;
                    }
                    return Ok(());
                }
                // The client's authentication data.
                Reply::ChangeUser { .. } => return Ok(()),
                _ => {}
            }
        }
        if p.seq != 0 {
            return Err(StopReason::Malformed);
        }
        let (&code, body) = p.head.split_first().ok_or(StopReason::Malformed)?;
        let start = p.start.unwrap_or_else(|| clock.start());
        let reply = match code {
            // COM_QUIT, COM_STMT_SEND_LONG_DATA: no reply.
            0x01 | 0x18 => return Ok(()),
            // COM_STMT_CLOSE: no reply; the id is gone.
            0x19 => {
                if let Some(id) = body.get(..4) {
                    self.statements
                        .remove(&u32::from_le_bytes([id[0], id[1], id[2], id[3]]));
                }
                return Ok(());
            }
            // COM_QUERY
            0x03 => {
                let statement = self.statement(body, p.len > p.head.len());
                let mut command = self.command(start, statement);
                // Only here: a prepared statement runs again long after the
                // context its text was written in.
                command.context = sql::comment_context(body).map(Box::new);
                return self.push(Some(command), Reply::Results(Results::new(false)));
            }
            // COM_STMT_PREPARE
            0x16 => {
                let statement = self.statement(body, p.len > p.head.len());
                self.last_prepared = Some(statement.clone());
                let command = self.command(start, statement.clone());
                let reply = Reply::Prepare {
                    step: PrepareStep::First,
                    statement,
                };
                return self.push(Some(command), reply);
            }
            // COM_STMT_EXECUTE; MariaDB's COM_STMT_BULK_EXECUTE (0xfa).
            0x17 | 0xfa => {
                let id = body
                    .get(..4)
                    .map(|id| u32::from_le_bytes([id[0], id[1], id[2], id[3]]));
                let cursor = code == 0x17 && body.get(4).is_some_and(|f| f & 0x07 != 0);
                if cursor && self.deprecate_eof() {
                    return Err(StopReason::Unsupported);
                }
                let statement = match id {
                    Some(u32::MAX) => self.last_prepared.clone(),
                    Some(id) => self.statements.get(&id).cloned(),
                    None => None,
                };
                let statement = statement.unwrap_or(Statement {
                    operation: sql::OTHER,
                    collection: None,
                    query_text: None,
                });
                let command = self.command(start, statement);
                return self.push(Some(command), Reply::Results(Results::new(cursor)));
            }
            // COM_INIT_DB
            0x02 => Reply::Single {
                init_db: std::str::from_utf8(body).ok().and_then(schema),
                reset: false,
            },
            // COM_RESET_CONNECTION: the session's statements are gone.
            0x1f => Reply::Single {
                init_db: None,
                reset: true,
            },
            // COM_CREATE_DB, COM_DROP_DB, COM_REFRESH, COM_SHUTDOWN,
            // COM_STATISTICS, COM_PROCESS_KILL, COM_DEBUG, COM_PING,
            // COM_STMT_RESET, COM_SET_OPTION: one packet.
            0x05..=0x09 | 0x0c..=0x0e | 0x1a | 0x1b => Reply::Single {
                init_db: None,
                reset: false,
            },
            // COM_PROCESS_INFO: a result set.
            0x0a => Reply::Results(Results::new(false)),
            // COM_FIELD_LIST, COM_STMT_FETCH: rows (definitions) to an EOF.
            0x04 | 0x1c => {
                let mut results = Results::new(false);
                results.step = ResultStep::Rows;
                Reply::Results(results)
            }
            // COM_CHANGE_USER: a new authentication; the session is new.
            0x11 => {
                self.statements.clear();
                let mut r = Reader::new(body);
                let db = r.nul_str().and_then(|_user| {
                    skip_change_user_auth(&mut r, self.caps)?;
                    schema(r.nul_str()?)
                });
                Reply::ChangeUser { db }
            }
            // Replication, and anything whose reply is not known.
            _ => return Err(StopReason::Unsupported),
        };
        self.push(None, reply)
    }

    /// What a statement's text says: its operation, its table when
    /// certain, and its sanitized text (when configured).
    ///
    /// `cut`: the text is the kept head of a longer statement. Its table is
    /// then taken only for an INSERT or REPLACE whose name ends before the
    /// cut (a bulk insert: what decides its table comes first), since what
    /// was cut off could make another statement's table uncertain (a JOIN).
    fn statement(&self, query: &[u8], cut: bool) -> Statement {
        let operation = sql::operation(query);
        let collection = sql::collection(query, Dialect::Mysql).filter(|name| {
            // Where the name ends in `query`, of which it is a slice.
            let end = (name.as_ptr() as usize)
                .checked_sub(query.as_ptr() as usize)
                .map(|start| start + name.len());
            !cut || (matches!(operation, "INSERT" | "REPLACE")
                && end.is_some_and(|end| end < query.len()))
        });
        Statement {
            operation,
            collection: collection.map(str::to_owned),
            query_text: self
                .query_text
                .then(|| sql::sanitize(query, Dialect::Mysql, self.max_query_text)),
        }
    }

    fn command(&self, start: Start, statement: Statement) -> Command {
        let mut command = Command::new(start, statement.operation);
        command.namespace = self.namespace.clone();
        command.collection = statement.collection;
        command.query_text = statement.query_text;
        command
    }

    /// Queues a command for its reply: tracked (reported) while fewer than
    /// [`DbConfig::max_pending`] are, else counted as untracked.
    fn push(&mut self, mut command: Option<Command>, reply: Reply) -> Result<(), StopReason> {
        if self.queue.len() >= MAX_QUEUE {
            return Err(StopReason::Malformed);
        }
        if command.is_some() {
            if self.tracked >= self.max_pending {
                command = None;
                self.untracked += 1;
            } else {
                self.tracked += 1;
            }
        }
        self.queue.push_back(Pending { command, reply });
        Ok(())
    }

    // --- server packets ---

    fn on_server(
        &mut self,
        p: Packet<'_>,
        clock: &mut Clock,
        done: &mut Vec<Command>,
    ) -> Result<(), StopReason> {
        match self.phase {
            Phase::Greeting => self.on_greeting(&p),
            Phase::HandshakeResponse => Err(StopReason::Malformed),
            Phase::Auth => {
                match p.head.first() {
                    Some(0x00) => {
                        self.phase = Phase::Command;
                        self.namespace = self.handshake_db.take();
                    }
                    Some(0xff) => self.phase = Phase::Over,
                    // Auth switch (0xfe), more data (0x01), plugin rounds.
                    _ => {}
                }
                Ok(())
            }
            Phase::Command => self.on_reply(&p, clock, done),
            Phase::Over => Ok(()),
        }
    }

    fn on_greeting(&mut self, p: &Packet<'_>) -> Result<(), StopReason> {
        match p.head.first() {
            Some(0x0a) => {}
            // Refused (too many connections, a host not allowed).
            Some(0xff) => {
                self.phase = Phase::Over;
                return Ok(());
            }
            _ => return Err(StopReason::Malformed),
        }
        let mut r = Reader::new(&p.head[1..]);
        let version = r.nul_str().ok_or(StopReason::Malformed)?;
        self.mariadb = version.contains("MariaDB");
        // Connection id, auth-plugin-data part 1, filler.
        r.skip(4 + 8 + 1).ok_or(StopReason::Malformed)?;
        let low = r.u16().ok_or(StopReason::Malformed)?;
        let mut caps = u32::from(low);
        // Character set and status flags, then the high half, if any.
        if r.skip(3).is_some()
            && let Some(high) = r.u16()
        {
            caps |= u32::from(high) << 16;
            // Auth-plugin-data length, 6 reserved bytes, then MariaDB's
            // extended capabilities (when it does not claim to be MySQL).
            if caps & CLIENT_MYSQL == 0
                && r.skip(1 + 6).is_some()
                && let Some(ext) = r.take(4)
            {
                self.server_ext_caps = u32::from_le_bytes([ext[0], ext[1], ext[2], ext[3]]);
            }
        }
        self.server_caps = caps;
        self.phase = Phase::HandshakeResponse;
        Ok(())
    }

    fn on_reply(
        &mut self,
        p: &Packet<'_>,
        clock: &mut Clock,
        done: &mut Vec<Command>,
    ) -> Result<(), StopReason> {
        let first = p.head.first().copied();
        if first == Some(0xff) && error_code(p.head) == Some(PROGRESS_REPORT) {
            return Ok(());
        }
        let deprecate_eof = self.deprecate_eof();
        let cache_metadata = self.ext_caps & MARIADB_CLIENT_CACHE_METADATA != 0;
        let Some(front) = self.queue.front_mut() else {
            // Unasked: only the server's last word before it closes (the
            // connection was killed, the server shuts down) is expected.
            return if first == Some(0xff) {
                Ok(())
            } else {
                Err(StopReason::Malformed)
            };
        };
        let end = match &mut front.reply {
            Reply::Single { init_db, reset } => {
                if first == Some(0x00) {
                    if let Some(db) = init_db.take() {
                        self.namespace = Some(db);
                    }
                    if *reset {
                        self.statements.clear();
                    }
                }
                Some(End::default())
            }
            Reply::ChangeUser { db } => match first {
                Some(0x00) => {
                    if let Some(db) = db.take() {
                        self.namespace = Some(db);
                    }
                    Some(End::default())
                }
                Some(0xff) => Some(End::default()),
                _ => None,
            },
            Reply::Results(r) => r.on_packet(p, deprecate_eof, cache_metadata)?,
            Reply::Prepare { step, statement } => match prepare_step(step, p, deprecate_eof)? {
                PrepareOutcome::More => None,
                PrepareOutcome::Ok { id, ended } => {
                    if self.statements.len() < MAX_STATEMENTS || self.statements.contains_key(&id) {
                        self.statements.insert(id, statement.clone());
                    }
                    ended.then(End::default)
                }
                PrepareOutcome::Done => Some(End::default()),
                PrepareOutcome::Failed(code) => Some(End {
                    rows: None,
                    error: Some(code),
                    report: true,
                }),
            },
        };
        if let Some(end) = end {
            self.finish(end, clock, done);
        }
        Ok(())
    }

    /// The front command's reply ended.
    fn finish(&mut self, end: End, clock: &mut Clock, done: &mut Vec<Command>) {
        let Some(pending) = self.queue.pop_front() else {
            return;
        };
        let Some(mut command) = pending.command else {
            return;
        };
        self.tracked -= 1;
        if !end.report {
            return;
        }
        command.end = clock.now();
        command.rows = end.rows;
        if let Some(code) = end.error {
            let code: Cow<'static, str> = Cow::Owned(code.to_string());
            command.status_code = Some(code.clone());
            command.error_type = Some(code);
        }
        done.push(command);
    }
}

impl WireParser for MysqlParser {
    fn client_sent(&mut self, bytes: &[u8], clock: &mut Clock, done: &mut Vec<Command>) {
        if self.stopped.is_some() {
            return;
        }
        let mut client = std::mem::replace(&mut self.client, Framer::new(true));
        // Commands end with replies: nothing is done on the client's side.
        let _ = done;
        let fed = client.feed(bytes, clock, |p, clock| self.on_client(p, clock));
        self.client = client;
        if let Err(reason) = fed {
            self.stop(reason);
        }
    }

    fn server_sent(&mut self, bytes: &[u8], clock: &mut Clock, done: &mut Vec<Command>) {
        if self.stopped.is_some() {
            return;
        }
        let mut server = std::mem::replace(&mut self.server, Framer::new(false));
        // Replies need only their first bytes: rows are never kept.
        server.limit = if self.phase == Phase::Command {
            REPLY_HEAD
        } else {
            SERVER_HEAD
        };
        let fed = server.feed(bytes, clock, |p, clock| self.on_server(p, clock, done));
        self.server = server;
        if let Err(reason) = fed {
            self.stop(reason);
        }
    }

    fn close(&mut self, clock: &mut Clock, done: &mut Vec<Command>) {
        for pending in self.queue.drain(..) {
            if let Some(mut command) = pending.command {
                command.end = clock.now();
                command.error_type = Some(Cow::Borrowed(CONNECTION_CLOSED));
                done.push(command);
            }
        }
        self.tracked = 0;
    }

    fn stopped(&self) -> Option<StopReason> {
        self.stopped
    }

    fn take_untracked(&mut self) -> u64 {
        std::mem::take(&mut self.untracked)
    }
}

// === impl Results ===

impl Results {
    fn new(cursor: bool) -> Self {
        Self {
            step: ResultStep::First,
            rows: 0,
            set: false,
            current: 0,
            cursor,
        }
    }

    /// One packet of a query's reply: `Some` once the reply has ended.
    fn on_packet(
        &mut self,
        p: &Packet<'_>,
        deprecate_eof: bool,
        cache_metadata: bool,
    ) -> Result<Option<End>, StopReason> {
        let first = p.head.first().copied();
        if first == Some(0xff) {
            // ERR: the reply ends here, whatever came before.
            let code = error_code(p.head).ok_or(StopReason::Malformed)?;
            return Ok(Some(End {
                rows: None,
                error: Some(code),
                report: true,
            }));
        }
        match self.step {
            ResultStep::First => match first {
                Some(0x00) => {
                    // Affected rows are not rows returned.
                    let (_, status) = ok_packet(p.head).ok_or(StopReason::Malformed)?;
                    return Ok(self.result_ended(status));
                }
                Some(0xfb) => self.step = ResultStep::Infile,
                _ => {
                    let mut r = Reader::new(p.head);
                    let columns = r.lenenc().ok_or(StopReason::Malformed)?;
                    if columns == 0 {
                        return Err(StopReason::Malformed);
                    }
                    self.set = true;
                    let metadata = !cache_metadata || r.u8().ok_or(StopReason::Malformed)? != 0;
                    self.step = if metadata {
                        ResultStep::Columns(columns)
                    } else {
                        self.after_columns(deprecate_eof)
                    };
                }
            },
            ResultStep::Columns(n) => {
                self.step = if n > 1 {
                    ResultStep::Columns(n - 1)
                } else {
                    self.after_columns(deprecate_eof)
                };
            }
            ResultStep::ColumnsEof => {
                if !is_eof(p) {
                    return Err(StopReason::Malformed);
                }
                let status = eof_status(p.head).ok_or(StopReason::Malformed)?;
                if self.cursor && status & SERVER_STATUS_CURSOR_EXISTS != 0 {
                    // Rows come with COM_STMT_FETCH; the execution is over.
                    return Ok(Some(End {
                        rows: None,
                        error: None,
                        report: true,
                    }));
                }
                self.step = ResultStep::Rows;
            }
            ResultStep::Rows => {
                let terminator =
                    first == Some(0xfe) && !p.continued && (p.len < 9 || deprecate_eof);
                if !terminator {
                    self.current += 1;
                    return Ok(None);
                }
                let status = if deprecate_eof {
                    ok_packet(p.head).ok_or(StopReason::Malformed)?.1
                } else {
                    eof_status(p.head).ok_or(StopReason::Malformed)?
                };
                self.rows = self.rows.saturating_add(std::mem::take(&mut self.current));
                return Ok(self.result_ended(status));
            }
            // The server answered before the file's end (an error is
            // handled above): take it as the reply's first packet.
            ResultStep::Infile => {
                self.step = ResultStep::First;
                return self.on_packet(p, deprecate_eof, cache_metadata);
            }
        }
        Ok(None)
    }

    fn after_columns(&self, deprecate_eof: bool) -> ResultStep {
        if deprecate_eof {
            ResultStep::Rows
        } else {
            ResultStep::ColumnsEof
        }
    }

    /// A result ended with these status flags: another follows, or the
    /// reply is over.
    fn result_ended(&mut self, status: u16) -> Option<End> {
        if status & SERVER_MORE_RESULTS_EXISTS != 0 {
            self.step = ResultStep::First;
            None
        } else {
            Some(End {
                rows: self.set.then_some(self.rows),
                error: None,
                report: true,
            })
        }
    }
}

/// What a packet of a prepare's reply did.
enum PrepareOutcome {
    /// More packets follow.
    More,
    /// The OK, with the statement id; `ended` when no definitions follow.
    Ok { id: u32, ended: bool },
    /// The last definition (or its EOF): the reply is over.
    Done,
    /// The ERR, with its number.
    Failed(u16),
}

/// One packet of a prepare's reply (`COM_STMT_PREPARE_OK`, then the
/// parameter and column definitions, each group followed by an EOF unless
/// `CLIENT_DEPRECATE_EOF`).
fn prepare_step(
    step: &mut PrepareStep,
    p: &Packet<'_>,
    deprecate_eof: bool,
) -> Result<PrepareOutcome, StopReason> {
    // What follows the parameters: the columns, or nothing.
    let columns_or_done = |step: &mut PrepareStep, columns: u16| {
        if columns > 0 {
            *step = PrepareStep::Columns(columns);
            PrepareOutcome::More
        } else {
            PrepareOutcome::Done
        }
    };
    match *step {
        PrepareStep::First => match p.head.first() {
            Some(0x00) => {
                let mut r = Reader::new(&p.head[1..]);
                let (Some(id), Some(columns), Some(params)) = (r.u32(), r.u16(), r.u16()) else {
                    return Err(StopReason::Malformed);
                };
                let ended = if params > 0 {
                    *step = PrepareStep::Params { params, columns };
                    false
                } else {
                    matches!(columns_or_done(step, columns), PrepareOutcome::Done)
                };
                Ok(PrepareOutcome::Ok { id, ended })
            }
            Some(0xff) => Ok(PrepareOutcome::Failed(
                error_code(p.head).ok_or(StopReason::Malformed)?,
            )),
            _ => Err(StopReason::Malformed),
        },
        PrepareStep::Params { params, columns } => {
            if params > 1 {
                *step = PrepareStep::Params {
                    params: params - 1,
                    columns,
                };
                Ok(PrepareOutcome::More)
            } else if !deprecate_eof {
                *step = PrepareStep::ParamsEof { columns };
                Ok(PrepareOutcome::More)
            } else {
                Ok(columns_or_done(step, columns))
            }
        }
        PrepareStep::ParamsEof { columns } => {
            if !is_eof(p) {
                return Err(StopReason::Malformed);
            }
            Ok(columns_or_done(step, columns))
        }
        PrepareStep::Columns(n) => {
            if n > 1 {
                *step = PrepareStep::Columns(n - 1);
                Ok(PrepareOutcome::More)
            } else if !deprecate_eof {
                *step = PrepareStep::ColumnsEof;
                Ok(PrepareOutcome::More)
            } else {
                Ok(PrepareOutcome::Done)
            }
        }
        PrepareStep::ColumnsEof => {
            if !is_eof(p) {
                return Err(StopReason::Malformed);
            }
            Ok(PrepareOutcome::Done)
        }
    }
}

// === impl Framer ===

impl Framer {
    fn new(stamp: bool) -> Self {
        Self {
            header: [0; 4],
            header_len: 0,
            in_payload: false,
            remaining: 0,
            continuation: false,
            continued: false,
            head: Vec::new(),
            len: 0,
            seq: 0,
            start: None,
            stamp,
            limit: if stamp { CLIENT_HEAD } else { SERVER_HEAD },
        }
    }

    /// Cuts `bytes` into packets, calling `on_packet` with each whole
    /// logical payload; stops at the first error it returns.
    fn feed(
        &mut self,
        mut bytes: &[u8],
        clock: &mut Clock,
        mut on_packet: impl FnMut(Packet<'_>, &mut Clock) -> Result<(), StopReason>,
    ) -> Result<(), StopReason> {
        while !bytes.is_empty() {
            if !self.in_payload {
                if self.header_len == 0 && !self.continuation && self.stamp {
                    self.start = Some(clock.start());
                }
                let take = (4 - self.header_len).min(bytes.len());
                self.header[self.header_len..self.header_len + take]
                    .copy_from_slice(&bytes[..take]);
                self.header_len += take;
                bytes = &bytes[take..];
                if self.header_len < 4 {
                    return Ok(());
                }
                self.header_len = 0;
                self.in_payload = true;
                self.remaining = packet_len(&self.header);
                if !self.continuation {
                    self.seq = self.header[3];
                    self.head.clear();
                    self.len = 0;
                    self.continued = false;
                }
            }
            let take = self.remaining.min(bytes.len());
            let keep = take.min(self.limit.saturating_sub(self.head.len()));
            self.head.extend_from_slice(&bytes[..keep]);
            self.remaining -= take;
            self.len += take;
            bytes = &bytes[take..];
            if self.remaining > 0 {
                return Ok(());
            }
            self.in_payload = false;
            if packet_len(&self.header) == MAX_PACKET {
                // The payload goes on in the next packet.
                self.continuation = true;
                self.continued = true;
                continue;
            }
            self.continuation = false;
            let packet = Packet {
                head: &self.head,
                len: self.len,
                seq: self.seq,
                continued: self.continued,
                start: self.start.take(),
            };
            on_packet(packet, clock)?;
        }
        Ok(())
    }
}

fn packet_len(header: &[u8; 4]) -> usize {
    usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16
}

// --- payload fields ---

/// Reads a payload's fields; `None` past its end.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.rest.len() {
            return None;
        }
        let (taken, rest) = self.rest.split_at(n);
        self.rest = rest;
        Some(taken)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A length-encoded integer.
    fn lenenc(&mut self) -> Option<u64> {
        let n = match self.u8()? {
            b @ 0..=0xfa => return Some(u64::from(b)),
            0xfc => 2,
            0xfd => 3,
            0xfe => 8,
            // 0xfb is NULL and 0xff an error: no integer.
            _ => return None,
        };
        let bytes = self.take(n)?;
        Some(
            bytes
                .iter()
                .rev()
                .fold(0u64, |acc, b| acc << 8 | u64::from(*b)),
        )
    }

    /// A NUL-terminated string, if it is UTF-8.
    fn nul_str(&mut self) -> Option<&'a str> {
        let end = self.rest.iter().position(|b| *b == 0)?;
        let s = self.take(end)?;
        self.skip(1)?;
        std::str::from_utf8(s).ok()
    }
}

/// Skips a handshake response's auth response, as its flags encode it.
fn skip_auth_response(r: &mut Reader<'_>, caps: u32) -> Option<()> {
    if caps & CLIENT_PLUGIN_AUTH_LENENC_DATA != 0 {
        let n = r.lenenc()?;
        r.skip(usize::try_from(n).ok()?)
    } else if caps & CLIENT_SECURE_CONNECTION != 0 {
        let n = r.u8()?;
        r.skip(usize::from(n))
    } else {
        r.nul_str().map(|_| ())
    }
}

/// Skips a `COM_CHANGE_USER`'s auth response (a 1-byte length with
/// `CLIENT_SECURE_CONNECTION`, else NUL-terminated).
fn skip_change_user_auth(r: &mut Reader<'_>, caps: u32) -> Option<()> {
    if caps & CLIENT_SECURE_CONNECTION != 0 {
        let n = r.u8()?;
        r.skip(usize::from(n))
    } else {
        r.nul_str().map(|_| ())
    }
}

/// A schema name as `db.namespace`: none when empty.
fn schema(name: &str) -> Option<Arc<str>> {
    (!name.is_empty()).then(|| Arc::from(name))
}

/// An OK packet's affected rows and status flags.
fn ok_packet(head: &[u8]) -> Option<(u64, u16)> {
    let mut r = Reader::new(head.get(1..)?);
    let affected = r.lenenc()?;
    let _last_insert_id = r.lenenc()?;
    Some((affected, r.u16()?))
}

/// Whether a packet is an EOF packet (`0xfe`, shorter than 9 bytes).
fn is_eof(p: &Packet<'_>) -> bool {
    p.head.first() == Some(&0xfe) && p.len < 9
}

/// An EOF packet's status flags.
fn eof_status(head: &[u8]) -> Option<u16> {
    let b = head.get(3..5)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

/// An ERR packet's error number.
fn error_code(head: &[u8]) -> Option<u16> {
    let b = head.get(1..3)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

#[cfg(test)]
mod tests;
