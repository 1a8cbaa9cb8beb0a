//! The Redis parser: RESP2 and RESP3 commands from the client, replies
//! from the server, matched in order.
//!
//! # What it follows
//! - **Commands**: arrays of bulk strings (`*3\r\n$3\r\nSET\r\n...`) and
//!   inline commands (`PING\r\n`). Only the command's name and the heads of
//!   its first two arguments are kept (`SELECT 2`, `CLIENT REPLY OFF`); the
//!   rest of every argument is counted past, never copied.
//! - **Replies**: every RESP2 and RESP3 type, nested aggregates (a stack
//!   of counts, at most [`MAX_DEPTH`] deep), attributes (`|`, which are
//!   not replies) and pushes (`>`, which are not replies either: pub/sub
//!   messages, client-side caching invalidations).
//! - **Pipelines**: commands wait in order for their replies; a command
//!   never takes the reply of another. `MULTI` / `EXEC` need nothing
//!   special: each queued command gets its `+QUEUED`, `EXEC` the array of
//!   results.
//! - **Pub/sub**: `SUBSCRIBE a b` is one command that ends with its last
//!   confirmation; the messages that follow are neither commands nor
//!   replies (RESP2: arrays starting with `message`, `pmessage` or
//!   `smessage` while subscribed; RESP3: pushes). `UNSUBSCRIBE` with no
//!   channel ends when the server says no subscription is left, or when
//!   the next reply arrives.
//! - **No reply**: `CLIENT REPLY OFF` / `SKIP` and the commands they
//!   silence get no span (they have no reply to end them).
//! - **Not commands and replies**: `MONITOR` and replication (`SYNC`,
//!   `PSYNC`) stop the parser ([`StopReason::Unsupported`]).
//!
//! `db.namespace` is the database index, `0` until a `SELECT` succeeds.
//! Error replies give `db.response.status_code` and `error.type`: the
//! error's prefix (`ERR`, `WRONGTYPE`).

use std::{borrow::Cow, collections::VecDeque, sync::Arc, time::SystemTime};

use super::{CONNECTION_CLOSED, Clock, Command, DbConfig, Start, StopReason, WireParser};

/// `db.operation.name` of a command not in [`COMMANDS`].
pub(crate) const OTHER: &str = "_OTHER";

/// The most nested a reply may be. Redis's own replies nest a few levels
/// (`XREAD`: 4); a deeper one is taken as bytes the parser cannot follow.
pub(crate) const MAX_DEPTH: usize = 64;

/// The most digits of a length or a count: 18 (no overflow in an `i64`).
const MAX_NUMBER_DIGITS: usize = 18;

/// The largest bulk string or aggregate count accepted: 1 TiB. Redis's
/// own `proto-max-bulk-len` is 512 MiB by default; a length past this
/// means the parser lost its place.
const MAX_LEN: u64 = 1 << 40;

/// The commands named in spans and metrics, sorted (binary search): Redis
/// 7.0's `COMMAND LIST` without subcommands, and the hash-field expiry
/// commands and `WAITAOF` of 7.2 to 8. Any other name is `_OTHER`, so that
/// the operation stays a bounded label whatever a client sends.
const COMMANDS: &[&str] = &[
    "ACL",
    "APPEND",
    "ASKING",
    "AUTH",
    "BGREWRITEAOF",
    "BGSAVE",
    "BITCOUNT",
    "BITFIELD",
    "BITFIELD_RO",
    "BITOP",
    "BITPOS",
    "BLMOVE",
    "BLMPOP",
    "BLPOP",
    "BRPOP",
    "BRPOPLPUSH",
    "BZMPOP",
    "BZPOPMAX",
    "BZPOPMIN",
    "CLIENT",
    "CLUSTER",
    "COMMAND",
    "CONFIG",
    "COPY",
    "DBSIZE",
    "DEBUG",
    "DECR",
    "DECRBY",
    "DEL",
    "DISCARD",
    "DUMP",
    "ECHO",
    "EVAL",
    "EVALSHA",
    "EVALSHA_RO",
    "EVAL_RO",
    "EXEC",
    "EXISTS",
    "EXPIRE",
    "EXPIREAT",
    "EXPIRETIME",
    "FAILOVER",
    "FCALL",
    "FCALL_RO",
    "FLUSHALL",
    "FLUSHDB",
    "FUNCTION",
    "GEOADD",
    "GEODIST",
    "GEOHASH",
    "GEOPOS",
    "GEORADIUS",
    "GEORADIUSBYMEMBER",
    "GEORADIUSBYMEMBER_RO",
    "GEORADIUS_RO",
    "GEOSEARCH",
    "GEOSEARCHSTORE",
    "GET",
    "GETBIT",
    "GETDEL",
    "GETEX",
    "GETRANGE",
    "GETSET",
    "HDEL",
    "HELLO",
    "HEXISTS",
    "HEXPIRE",
    "HEXPIREAT",
    "HEXPIRETIME",
    "HGET",
    "HGETALL",
    "HGETDEL",
    "HGETEX",
    "HINCRBY",
    "HINCRBYFLOAT",
    "HKEYS",
    "HLEN",
    "HMGET",
    "HMSET",
    "HPERSIST",
    "HPEXPIRE",
    "HPEXPIREAT",
    "HPEXPIRETIME",
    "HPTTL",
    "HRANDFIELD",
    "HSCAN",
    "HSET",
    "HSETEX",
    "HSETNX",
    "HSTRLEN",
    "HTTL",
    "HVALS",
    "INCR",
    "INCRBY",
    "INCRBYFLOAT",
    "INFO",
    "KEYS",
    "LASTSAVE",
    "LATENCY",
    "LCS",
    "LINDEX",
    "LINSERT",
    "LLEN",
    "LMOVE",
    "LMPOP",
    "LOLWUT",
    "LPOP",
    "LPOS",
    "LPUSH",
    "LPUSHX",
    "LRANGE",
    "LREM",
    "LSET",
    "LTRIM",
    "MEMORY",
    "MGET",
    "MIGRATE",
    "MODULE",
    "MONITOR",
    "MOVE",
    "MSET",
    "MSETNX",
    "MULTI",
    "OBJECT",
    "PERSIST",
    "PEXPIRE",
    "PEXPIREAT",
    "PEXPIRETIME",
    "PFADD",
    "PFCOUNT",
    "PFDEBUG",
    "PFMERGE",
    "PFSELFTEST",
    "PING",
    "PSETEX",
    "PSUBSCRIBE",
    "PSYNC",
    "PTTL",
    "PUBLISH",
    "PUBSUB",
    "PUNSUBSCRIBE",
    "QUIT",
    "RANDOMKEY",
    "READONLY",
    "READWRITE",
    "RENAME",
    "RENAMENX",
    "REPLCONF",
    "REPLICAOF",
    "RESET",
    "RESTORE",
    "RESTORE-ASKING",
    "ROLE",
    "RPOP",
    "RPOPLPUSH",
    "RPUSH",
    "RPUSHX",
    "SADD",
    "SAVE",
    "SCAN",
    "SCARD",
    "SCRIPT",
    "SDIFF",
    "SDIFFSTORE",
    "SELECT",
    "SET",
    "SETBIT",
    "SETEX",
    "SETNX",
    "SETRANGE",
    "SHUTDOWN",
    "SINTER",
    "SINTERCARD",
    "SINTERSTORE",
    "SISMEMBER",
    "SLAVEOF",
    "SLOWLOG",
    "SMEMBERS",
    "SMISMEMBER",
    "SMOVE",
    "SORT",
    "SORT_RO",
    "SPOP",
    "SPUBLISH",
    "SRANDMEMBER",
    "SREM",
    "SSCAN",
    "SSUBSCRIBE",
    "STRLEN",
    "SUBSCRIBE",
    "SUBSTR",
    "SUNION",
    "SUNIONSTORE",
    "SUNSUBSCRIBE",
    "SWAPDB",
    "SYNC",
    "TIME",
    "TOUCH",
    "TTL",
    "TYPE",
    "UNLINK",
    "UNSUBSCRIBE",
    "UNWATCH",
    "WAIT",
    "WAITAOF",
    "WATCH",
    "XACK",
    "XADD",
    "XAUTOCLAIM",
    "XCLAIM",
    "XDEL",
    "XGROUP",
    "XINFO",
    "XLEN",
    "XPENDING",
    "XRANGE",
    "XREAD",
    "XREADGROUP",
    "XREVRANGE",
    "XSETID",
    "XTRIM",
    "ZADD",
    "ZCARD",
    "ZCOUNT",
    "ZDIFF",
    "ZDIFFSTORE",
    "ZINCRBY",
    "ZINTER",
    "ZINTERCARD",
    "ZINTERSTORE",
    "ZLEXCOUNT",
    "ZMPOP",
    "ZMSCORE",
    "ZPOPMAX",
    "ZPOPMIN",
    "ZRANDMEMBER",
    "ZRANGE",
    "ZRANGEBYLEX",
    "ZRANGEBYSCORE",
    "ZRANGESTORE",
    "ZRANK",
    "ZREM",
    "ZREMRANGEBYLEX",
    "ZREMRANGEBYRANK",
    "ZREMRANGEBYSCORE",
    "ZREVRANGE",
    "ZREVRANGEBYLEX",
    "ZREVRANGEBYSCORE",
    "ZREVRANK",
    "ZSCAN",
    "ZSCORE",
    "ZUNION",
    "ZUNIONSTORE",
];

/// Known error prefixes (`db.response.status_code`), sorted: borrowed,
/// not allocated.
const ERROR_PREFIXES: &[&str] = &[
    "ASK",
    "BUSY",
    "BUSYGROUP",
    "BUSYKEY",
    "CLUSTERDOWN",
    "CROSSSLOT",
    "ERR",
    "EXECABORT",
    "INPROG",
    "LOADING",
    "MASTERDOWN",
    "MISCONF",
    "MOVED",
    "NOAUTH",
    "NOGROUP",
    "NOPERM",
    "NOPROTO",
    "NOREPLICAS",
    "NOSCRIPT",
    "NOTBUSY",
    "OOM",
    "READONLY",
    "TRYAGAIN",
    "UNBLOCKED",
    "UNKILLABLE",
    "WRONGPASS",
    "WRONGTYPE",
];

/// What the parser must know of a command beyond its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Special {
    None,
    /// `CLIENT` (`CLIENT REPLY` silences replies).
    Client,
    /// `SELECT` (changes the namespace).
    Select,
    /// `RESET` (back to the connection's first state).
    Reset,
    /// `MONITOR`, `SYNC`, `PSYNC`: no more commands and replies.
    Stop,
    /// A pub/sub (un)subscription.
    Sub(SubKind),
}

/// A command name packed into three big-endian words, zero-padded:
/// compared as integers, in the same order as the names' bytes (no name
/// has a zero byte), so the lookup is a binary search without `memcmp`.
type Key = [u64; 3];

fn key(upper: &[u8]) -> Option<Key> {
    if upper.len() > 24 {
        return None;
    }
    let mut bytes = [0u8; 24];
    bytes[..upper.len()].copy_from_slice(upper);
    let word =
        |i: usize| u64::from_be_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap_or_default());
    Some([word(0), word(1), word(2)])
}

/// A command of [`COMMANDS`]: its key, name and class.
type Known = (Key, &'static str, Special);

/// [`COMMANDS`] as keys, with their [`Special`], built once.
static TABLE: std::sync::LazyLock<Box<[Known]>> = std::sync::LazyLock::new(|| {
    COMMANDS
        .iter()
        .map(|&name| {
            let special = match name {
                "CLIENT" => Special::Client,
                "SELECT" => Special::Select,
                "RESET" => Special::Reset,
                "MONITOR" | "SYNC" | "PSYNC" => Special::Stop,
                _ => SubKind::of(name).map_or(Special::None, Special::Sub),
            };
            (key(name.as_bytes()).unwrap_or_default(), name, special)
        })
        .collect()
});

/// [`OTHER`], where [`lookup`] can point to it.
static OTHER_OP: &str = OTHER;

/// The operation (a thin pointer to the name, so that a command waiting
/// for its reply stays small) and class of a command name (any case).
fn lookup(name: &[u8]) -> Looked {
    let mut upper = [0u8; 24];
    let Some(upper) = upper.get_mut(..name.len()) else {
        return (&OTHER_OP, Special::None);
    };
    upper.copy_from_slice(name);
    upper.make_ascii_uppercase();
    let Some(k) = key(upper) else {
        return (&OTHER_OP, Special::None);
    };
    match TABLE.binary_search_by(|(t, ..)| t.cmp(&k)) {
        Ok(i) => (&TABLE[i].1, TABLE[i].2),
        Err(_) => (&OTHER_OP, Special::None),
    }
}

/// The last names a connection's commands had, as sent: a connection
/// sends the same few commands again and again, and a hit here costs a
/// few instructions a byte of the name where [`lookup`] costs about 250
/// (benches/e2e/redis.py --callgrind). Names of up to 16 bytes, each in
/// one of four slots by a hash of its first bytes.
#[derive(Clone, Copy, Debug, Default)]
struct Names {
    slots: [Option<(u128, u8, Looked)>; 4],
}

/// What [`lookup`] gives.
type Looked = (&'static &'static str, Special);

impl Names {
    fn get(&mut self, name: &[u8]) -> Looked {
        if name.is_empty() || name.len() > 16 {
            return lookup(name);
        }
        let mut key = 0u128;
        for (i, b) in name.iter().enumerate() {
            key |= u128::from(*b) << (8 * i);
        }
        let len = name.len() as u8;
        // Fibonacci hashing of the first four bytes: GET and SET, say,
        // land in different slots.
        let slot = &mut self.slots[((key as u32).wrapping_mul(0x9E37_79B1) >> 30) as usize];
        match slot {
            Some((k, l, looked)) if *k == key && *l == len => *looked,
            _ => {
                let looked = lookup(name);
                *slot = Some((key, len, looked));
                looked
            }
        }
    }
}

/// The first bytes of a name or an argument: enough for every command
/// name and the arguments the parser reads (`SELECT 15`, `REPLY SKIP`).
#[derive(Clone, Copy, Debug, Default)]
struct Small {
    buf: [u8; Small::CAP],
    len: u8,
    /// More bytes came than were kept.
    cut: bool,
}

impl Small {
    const CAP: usize = 24;

    fn push(&mut self, bytes: &[u8]) {
        let at = usize::from(self.len);
        let n = bytes.len().min(Self::CAP - at);
        self.buf[at..at + n].copy_from_slice(&bytes[..n]);
        self.len += n as u8;
        self.cut |= n < bytes.len();
    }

    fn get(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    fn clear(&mut self) {
        self.len = 0;
        self.cut = false;
    }

    /// The bytes, when they were all kept.
    fn whole(&self) -> Option<&[u8]> {
        (!self.cut).then(|| self.get())
    }
}

/// A line being read up to its `\n`: its first bytes kept, the rest
/// counted past.
#[derive(Clone, Copy, Debug, Default)]
struct Line {
    head: Small,
}

impl Line {
    /// Takes bytes of the line from `bytes`: the whole line without its
    /// `\r\n`, borrowed, when it is all in `bytes` (nothing copied),
    /// else its first bytes kept until its end comes.
    fn take<'b>(&mut self, bytes: &mut &'b [u8]) -> Got<'b> {
        match bytes.iter().position(|b| *b == b'\n') {
            Some(i) => {
                let line = &bytes[..i];
                *bytes = &bytes[i + 1..];
                if self.head.len == 0 {
                    Got::Whole(line.strip_suffix(b"\r").unwrap_or(line))
                } else {
                    self.head.push(line);
                    Got::Buffered
                }
            }
            None => {
                self.head.push(bytes);
                *bytes = &[];
                Got::Partial
            }
        }
    }

    /// The line without its `\r`, when it was all kept.
    fn text(&self) -> Option<&[u8]> {
        let b = self.head.whole()?;
        Some(b.strip_suffix(b"\r").unwrap_or(b))
    }

    /// The line as a number (a length or a count).
    fn number(&self) -> Option<i64> {
        number(self.text()?)
    }

    /// The line's first bytes without a final `\r`, and whether they are
    /// the whole line.
    fn kept(&self) -> (&[u8], bool) {
        let b = self.head.get();
        (b.strip_suffix(b"\r").unwrap_or(b), !self.head.cut)
    }
}

/// What [`Line::take`] got.
enum Got<'b> {
    /// Not the end of the line yet.
    Partial,
    /// The whole line, as it was in the bytes given.
    Whole(&'b [u8]),
    /// The end of a line that began earlier: in the line's buffer.
    Buffered,
}

/// A length or a count: an optional `-` and at most 18 digits (anything
/// longer is no length Redis sends).
fn number(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, text),
    };
    if digits.is_empty() || digits.len() > MAX_NUMBER_DIGITS {
        return None;
    }
    let mut n: i64 = 0;
    for d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + i64::from(d - b'0');
    }
    Some(if negative { -n } else { n })
}

/// Where the parser is in the client's bytes.
#[derive(Clone, Copy, Debug)]
enum Req {
    /// Between commands.
    Idle,
    /// After `*`: the argument count.
    Count(Line),
    /// Before argument `index`'s `$`.
    ArgStart { index: u32 },
    /// After `$`: argument `index`'s length.
    ArgLen { index: u32, line: Line },
    /// Inside argument `index`: `left` bytes to go, its `\r\n` included.
    ArgBody { index: u32, left: u64 },
    /// An inline command: inside word `word` (`in_word`) or between words.
    Inline { word: u32, in_word: bool },
}

/// The command being read.
#[derive(Clone, Copy, Debug)]
struct Building {
    start: Start,
    /// Its arguments, the name included.
    args: u32,
    /// Its operation and class, once its name was read.
    op: Option<(&'static &'static str, Special)>,
    /// The name and the heads of the next two arguments.
    words: [Small; 3],
}

/// Where the parser is in the server's bytes.
#[derive(Clone, Copy, Debug)]
enum Rep {
    /// Before a type byte.
    Type,
    /// After type byte `kind`: its line.
    Line { kind: u8, line: Line },
    /// Inside a blob of type `kind`: `left` bytes to go, `\r\n` included.
    Body { kind: u8, left: u64 },
}

/// An aggregate being read: elements to go.
#[derive(Clone, Copy, Debug)]
struct Frame {
    left: u64,
    /// An attribute (`|`): not a value of its own.
    attribute: bool,
    /// None of its elements was read yet.
    first: bool,
}

/// What a top-level reply showed of itself.
#[derive(Clone, Copy, Debug, Default)]
struct Reply {
    /// Its type byte.
    kind: u8,
    /// Its error prefix head (`-` and `!` replies).
    error: Option<Small>,
    /// Its first element, when a short string (a pub/sub kind).
    first: Small,
    /// Its last integer element (a subscription count).
    last_int: Option<i64>,
}

/// The pub/sub confirmations a command waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SubKind {
    Subscribe,
    Unsubscribe,
    PSubscribe,
    PUnsubscribe,
    SSubscribe,
    SUnsubscribe,
}

impl SubKind {
    fn of(op: &str) -> Option<Self> {
        Some(match op {
            "SUBSCRIBE" => SubKind::Subscribe,
            "UNSUBSCRIBE" => SubKind::Unsubscribe,
            "PSUBSCRIBE" => SubKind::PSubscribe,
            "PUNSUBSCRIBE" => SubKind::PUnsubscribe,
            "SSUBSCRIBE" => SubKind::SSubscribe,
            "SUNSUBSCRIBE" => SubKind::SUnsubscribe,
            _ => return None,
        })
    }

    /// The kind whose confirmations start with `word`.
    fn of_word(word: &[u8]) -> Option<Self> {
        [
            SubKind::Subscribe,
            SubKind::Unsubscribe,
            SubKind::PSubscribe,
            SubKind::PUnsubscribe,
            SubKind::SSubscribe,
            SubKind::SUnsubscribe,
        ]
        .into_iter()
        .find(|k| k.word().as_bytes() == word)
    }

    /// The first element of its confirmations.
    fn word(self) -> &'static str {
        match self {
            SubKind::Subscribe => "subscribe",
            SubKind::Unsubscribe => "unsubscribe",
            SubKind::PSubscribe => "psubscribe",
            SubKind::PUnsubscribe => "punsubscribe",
            SubKind::SSubscribe => "ssubscribe",
            SubKind::SUnsubscribe => "sunsubscribe",
        }
    }

    fn subscribes(self) -> bool {
        matches!(
            self,
            SubKind::Subscribe | SubKind::PSubscribe | SubKind::SSubscribe
        )
    }
}

/// What a command waits for.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// One reply.
    One,
    /// Confirmations of `kind`: `left` more (unknown for an unsubscribe
    /// from everything), `got` so far, the last at `last`.
    Confirm {
        kind: SubKind,
        left: Option<u32>,
        got: u32,
        last: Option<SystemTime>,
    },
}

/// A command waiting for its reply.
#[derive(Clone, Copy, Debug)]
struct Pending {
    start: Start,
    op: &'static &'static str,
    special: Special,
    expect: Expect,
    /// `SELECT`'s database index.
    select: Option<u32>,
}

/// An entry of the queue of commands waiting for replies.
#[derive(Clone, Copy, Debug)]
enum Entry {
    Tracked(Pending),
    /// Commands past [`DbConfig::max_pending`], one reply each: counted,
    /// not kept.
    Untracked(u64),
}

/// Whether the server replies (`CLIENT REPLY`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Replies {
    On,
    Off,
    /// The next command gets no reply.
    SkipNext,
}

/// The parser of one Redis connection. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct RedisParser {
    max_pending: usize,
    stopped: Option<StopReason>,
    req: Req,
    building: Option<Building>,
    rep: Rep,
    frames: Vec<Frame>,
    reply: Reply,
    pending: VecDeque<Entry>,
    /// Tracked entries in `pending`.
    tracked: usize,
    untracked: u64,
    replies: Replies,
    /// In RESP2 subscribed mode (pushes are told by their type in RESP3).
    subscribed: bool,
    namespace: Arc<str>,
    names: Names,
}

impl RedisParser {
    pub(crate) fn new(config: &DbConfig) -> Self {
        Self {
            max_pending: config.max_pending.max(1),
            stopped: None,
            req: Req::Idle,
            building: None,
            rep: Rep::Type,
            frames: Vec::new(),
            reply: Reply::default(),
            pending: VecDeque::new(),
            tracked: 0,
            untracked: 0,
            replies: Replies::On,
            subscribed: false,
            namespace: Arc::from("0"),
            names: Names::default(),
        }
    }

    fn stop(&mut self, why: StopReason) {
        self.stopped = Some(why);
        self.pending = VecDeque::new();
        self.frames = Vec::new();
        self.building = None;
    }

    // === commands ===

    fn read_commands(&mut self, mut bytes: &[u8], clock: &mut Clock) {
        while !bytes.is_empty() && self.stopped.is_none() {
            match &mut self.req {
                Req::Idle => {
                    let b = bytes[0];
                    match b {
                        b'\r' | b'\n' | b' ' => bytes = &bytes[1..],
                        b'*' => {
                            if let Some(used) = self.whole_command(bytes, clock) {
                                bytes = &bytes[used..];
                                continue;
                            }
                            bytes = &bytes[1..];
                            self.begin(clock);
                            self.req = Req::Count(Line::default());
                        }
                        _ => {
                            self.begin(clock);
                            self.req = Req::Inline {
                                word: 0,
                                in_word: false,
                            };
                        }
                    }
                }
                Req::Count(line) => {
                    let n = match line.take(&mut bytes) {
                        Got::Partial => continue,
                        Got::Whole(text) => number(text),
                        Got::Buffered => line.number(),
                    };
                    match n {
                        Some(n) if n > 0 && n as u64 <= MAX_LEN => {
                            if let Some(c) = &mut self.building {
                                c.args = u32::try_from(n).unwrap_or(u32::MAX);
                            }
                            self.req = Req::ArgStart { index: 0 };
                        }
                        // Redis ignores an empty or negative count.
                        Some(n) if n <= 0 => {
                            self.building = None;
                            self.req = Req::Idle;
                        }
                        _ => self.stop(StopReason::Malformed),
                    }
                }
                Req::ArgStart { index } => {
                    if bytes[0] != b'$' {
                        return self.stop(StopReason::Malformed);
                    }
                    bytes = &bytes[1..];
                    self.req = Req::ArgLen {
                        index: *index,
                        line: Line::default(),
                    };
                }
                Req::ArgLen { index, line } => {
                    let n = match line.take(&mut bytes) {
                        Got::Partial => continue,
                        Got::Whole(text) => number(text),
                        Got::Buffered => line.number(),
                    };
                    match n {
                        Some(n) if n >= 0 && n as u64 <= MAX_LEN => {
                            self.req = Req::ArgBody {
                                index: *index,
                                left: n as u64 + 2,
                            };
                        }
                        _ => self.stop(StopReason::Malformed),
                    }
                }
                Req::ArgBody { index, left } => {
                    let n = bytes
                        .len()
                        .min(usize::try_from(*left).unwrap_or(usize::MAX));
                    let index = *index;
                    // The CRLF is not part of the argument.
                    let data = n.min(usize::try_from(left.saturating_sub(2)).unwrap_or(usize::MAX));
                    *left -= n as u64;
                    let finished = *left == 0;
                    if let Some(c) = &mut self.building {
                        // The name, and the two arguments after it only
                        // for the commands that need them read.
                        let wanted = index == 0
                            || matches!(c.op, Some((_, Special::Client | Special::Select)));
                        if wanted && let Some(w) = c.words.get_mut(index as usize) {
                            w.push(&bytes[..data]);
                        }
                        if finished && index == 0 {
                            c.op = Some(self.names.get(c.words[0].get()));
                        }
                    }
                    bytes = &bytes[n..];
                    if finished {
                        let args = self.building.as_ref().map_or(0, |c| c.args);
                        if index + 1 >= args {
                            self.req = Req::Idle;
                            self.sent(clock);
                        } else {
                            self.req = Req::ArgStart { index: index + 1 };
                        }
                    }
                }
                Req::Inline { word, in_word } => {
                    let b = bytes[0];
                    bytes = &bytes[1..];
                    match b {
                        b'\n' => {
                            let words = *word + u32::from(*in_word);
                            self.req = Req::Idle;
                            if words == 0 {
                                self.building = None;
                            } else {
                                if let Some(c) = &mut self.building {
                                    c.args = words;
                                }
                                self.sent(clock);
                            }
                        }
                        b'\r' | b' ' | b'\t' => {
                            if *in_word {
                                *word += 1;
                                *in_word = false;
                            }
                        }
                        _ => {
                            *in_word = true;
                            if let (Some(c), Ok(i)) = (&mut self.building, usize::try_from(*word))
                                && let Some(w) = c.words.get_mut(i)
                            {
                                w.push(&[b]);
                            }
                        }
                    }
                }
            }
        }
    }

    /// The fast path: a command that is all in `bytes` (`*` first), read
    /// in one pass with nothing copied. The bytes it used, or `None` when
    /// the command goes on past `bytes` or looks wrong in any way (the
    /// state machine then reads it, and says what is wrong).
    fn whole_command(&mut self, bytes: &[u8], clock: &mut Clock) -> Option<usize> {
        /// The number on the line at `at` (after its type byte) and where
        /// the next line starts.
        fn line(bytes: &[u8], at: usize) -> Option<(i64, usize)> {
            let rest = bytes.get(at..)?;
            let end = rest.iter().position(|b| *b == b'\n')?;
            let text = &rest[..end];
            let n = number(text.strip_suffix(b"\r").unwrap_or(text))?;
            Some((n, at + end + 1))
        }
        let (args, mut at) = line(bytes, 1)?;
        if args <= 0 || args > i64::from(u32::MAX) {
            return None;
        }
        let mut op = (&OTHER_OP, Special::None);
        let (mut word1, mut word2): (&[u8], &[u8]) = (b"", b"");
        for index in 0..args {
            if *bytes.get(at)? != b'$' {
                return None;
            }
            let (len, start) = line(bytes, at + 1)?;
            let len = usize::try_from(len).ok()?;
            let end = start.checked_add(len)?;
            if bytes.get(end..end + 2)? != b"\r\n" {
                return None;
            }
            let arg = &bytes[start..end];
            match index {
                0 => op = self.names.get(arg),
                1 => word1 = arg,
                2 => word2 = arg,
                _ => {}
            }
            at = end + 2;
        }
        let start = clock.start();
        self.command(start, args as u32, op.0, op.1, word1, word2);
        Some(at)
    }

    fn begin(&mut self, clock: &mut Clock) {
        self.building = Some(Building {
            start: clock.start(),
            args: 0,
            op: None,
            words: [Small::default(); 3],
        });
    }

    /// A whole command was read, into `building`.
    fn sent(&mut self, _clock: &mut Clock) {
        let Some(c) = self.building.take() else {
            return;
        };
        let (op, special) = c.op.unwrap_or_else(|| self.names.get(c.words[0].get()));
        let word = |i: usize| c.words[i].whole().unwrap_or(b"");
        self.command(c.start, c.args, op, special, word(1), word(2));
    }

    /// A whole command: its start, its argument count (name included),
    /// operation and class, and its next two arguments (read only for
    /// `CLIENT` and `SELECT`; empty otherwise, or when longer than kept).
    fn command(
        &mut self,
        start: Start,
        args: u32,
        op: &'static &'static str,
        special: Special,
        word1: &[u8],
        word2: &[u8],
    ) {
        let is = |word: &[u8], w: &str| word.eq_ignore_ascii_case(w.as_bytes());
        // `CLIENT REPLY ON|OFF|SKIP`: the mode it asks for.
        let reply_mode = (special == Special::Client && is(word1, "REPLY")).then(|| {
            [
                ("ON", Replies::On),
                ("OFF", Replies::Off),
                ("SKIP", Replies::SkipNext),
            ]
            .into_iter()
            .find(|(w, _)| is(word2, w))
            .map(|(_, m)| m)
        });
        let select: Option<u32> = match special {
            Special::Select => std::str::from_utf8(word1).ok().and_then(|s| s.parse().ok()),
            _ => None,
        };
        if special == Special::Stop {
            return self.stop(StopReason::Unsupported);
        }
        match self.replies {
            Replies::Off => {
                if reply_mode == Some(Some(Replies::On)) {
                    self.replies = Replies::On;
                    // Its +OK is the first reply since OFF.
                } else {
                    self.untracked += 1;
                    return;
                }
            }
            Replies::SkipNext => {
                self.replies = Replies::On;
                self.untracked += 1;
                return;
            }
            Replies::On => {
                if let Some(Some(mode @ (Replies::Off | Replies::SkipNext))) = reply_mode {
                    self.replies = mode;
                    self.untracked += 1;
                    return;
                }
            }
        }
        let channels = args.saturating_sub(1);
        let expect = match special {
            // SUBSCRIBE with no channel is an error: one reply.
            Special::Sub(kind) if kind.subscribes() && channels == 0 => Expect::One,
            Special::Sub(kind) => Expect::Confirm {
                kind,
                left: (channels > 0).then_some(channels),
                got: 0,
                last: None,
            },
            _ => Expect::One,
        };
        if self.tracked >= self.max_pending {
            // Past the bound: counted, its reply skipped in turn. A
            // command that waits for more than one reply cannot be told
            // from the count alone: the parser stops.
            if matches!(expect, Expect::Confirm { .. }) {
                return self.stop(StopReason::Malformed);
            }
            self.untracked += 1;
            match self.pending.back_mut() {
                Some(Entry::Untracked(n)) => *n += 1,
                _ => self.pending.push_back(Entry::Untracked(1)),
            }
            return;
        }
        self.tracked += 1;
        self.pending.push_back(Entry::Tracked(Pending {
            start,
            op,
            special,
            expect,
            select,
        }));
    }

    // === replies ===

    fn read_replies(&mut self, mut bytes: &[u8], clock: &mut Clock, done: &mut Vec<Command>) {
        while !bytes.is_empty() && self.stopped.is_none() {
            match &mut self.rep {
                Rep::Type => {
                    if self.frames.is_empty()
                        && let Some(used) = self.whole_reply(bytes, clock, done)
                    {
                        bytes = &bytes[used..];
                        continue;
                    }
                    let kind = bytes[0];
                    bytes = &bytes[1..];
                    if !b"+-:_,#($!=*~>%|".contains(&kind) {
                        return self.stop(StopReason::Malformed);
                    }
                    if self.frames.is_empty() {
                        // Field by field: no copy of a whole new `Reply`.
                        let r = &mut self.reply;
                        r.kind = kind;
                        r.error = None;
                        r.first.clear();
                        r.last_int = None;
                    }
                    self.rep = Rep::Line {
                        kind,
                        line: Line::default(),
                    };
                }
                Rep::Line { kind, line } => {
                    let kind = *kind;
                    match line.take(&mut bytes) {
                        Got::Partial => {}
                        Got::Whole(text) => {
                            self.rep = Rep::Type;
                            self.line_done(kind, text, true, clock, done);
                        }
                        Got::Buffered => {
                            let line = *line;
                            self.rep = Rep::Type;
                            let (text, whole) = line.kept();
                            self.line_done(kind, text, whole, clock, done);
                        }
                    }
                }
                Rep::Body { kind, left } => {
                    let n = bytes
                        .len()
                        .min(usize::try_from(*left).unwrap_or(usize::MAX));
                    let data = n.min(usize::try_from(left.saturating_sub(2)).unwrap_or(usize::MAX));
                    let kind = *kind;
                    *left -= n as u64;
                    let finished = *left == 0;
                    self.capture(kind, &bytes[..data]);
                    bytes = &bytes[n..];
                    if finished {
                        self.rep = Rep::Type;
                        self.element_done(clock, done);
                    }
                }
            }
        }
    }

    /// A top-level reply that is one value, not an aggregate nor an error
    /// (`+OK`, `:1`, `$3 xxx`, `$-1`, `_`: most replies), all in `bytes`:
    /// finished in one pass, as the state machine would. The bytes it used,
    /// or `None` for anything else (the state machine reads it).
    fn whole_reply(
        &mut self,
        bytes: &[u8],
        clock: &mut Clock,
        done: &mut Vec<Command>,
    ) -> Option<usize> {
        let kind = *bytes.first()?;
        if !b"+:_,#($".contains(&kind) {
            return None;
        }
        let end = bytes.iter().position(|b| *b == b'\n')?;
        let mut used = end + 1;
        if kind == b'$' {
            let text = &bytes[1..end];
            match number(text.strip_suffix(b"\r").unwrap_or(text))? {
                -1 => {}
                // Its bytes and their `\r\n`, skipped unread (as the
                // state machine skips them).
                n if n >= 0 && n as u64 <= MAX_LEN => {
                    used = used.checked_add(usize::try_from(n).ok()?.checked_add(2)?)?;
                    if used > bytes.len() {
                        return None;
                    }
                }
                _ => return None,
            }
        }
        let r = &mut self.reply;
        r.kind = kind;
        r.error = None;
        r.first.clear();
        r.last_int = None;
        self.reply_done(clock, done);
        Some(used)
    }

    /// Where the bytes of a string element go, if anywhere: the error
    /// prefix of a top-level error, the first element of a top-level
    /// aggregate.
    fn capture(&mut self, kind: u8, bytes: &[u8]) {
        match self.frames.as_slice() {
            [] if matches!(kind, b'-' | b'!') => {
                self.reply.error.get_or_insert_default().push(bytes);
            }
            [f] if f.first && !f.attribute && matches!(kind, b'$' | b'+') => {
                self.reply.first.push(bytes);
            }
            _ => {}
        }
    }

    /// A line of type `kind` ended: `text` is it without its `\r\n`, or
    /// its first bytes (`whole` false).
    fn line_done(
        &mut self,
        kind: u8,
        text: &[u8],
        whole: bool,
        clock: &mut Clock,
        done: &mut Vec<Command>,
    ) {
        let number = || if whole { number(text) } else { None };
        match kind {
            b'+' | b'-' => {
                self.capture(kind, text);
                self.element_done(clock, done);
            }
            b':' => {
                if let [f] = self.frames.as_slice()
                    && !f.attribute
                {
                    self.reply.last_int = number();
                }
                self.element_done(clock, done);
            }
            b'_' | b',' | b'#' | b'(' => self.element_done(clock, done),
            b'$' | b'!' | b'=' => match number() {
                Some(-1) => self.element_done(clock, done),
                Some(n) if n >= 0 && n as u64 <= MAX_LEN => {
                    self.rep = Rep::Body {
                        kind,
                        left: n as u64 + 2,
                    };
                }
                _ => self.stop(StopReason::Malformed),
            },
            // Aggregates: `*`, `~`, `>`, and `%`, `|` (pairs).
            _ => match number() {
                Some(-1) | Some(0) => self.element_done(clock, done),
                Some(n) if n > 0 && n as u64 <= MAX_LEN => {
                    if self.frames.len() >= MAX_DEPTH {
                        return self.stop(StopReason::Malformed);
                    }
                    let pairs = matches!(kind, b'%' | b'|');
                    self.frames.push(Frame {
                        left: n as u64 * if pairs { 2 } else { 1 },
                        attribute: kind == b'|',
                        first: true,
                    });
                }
                _ => self.stop(StopReason::Malformed),
            },
        }
    }

    /// An element is complete: the aggregates it closes are too; the last
    /// one closing is a whole reply.
    fn element_done(&mut self, clock: &mut Clock, done: &mut Vec<Command>) {
        loop {
            let Some(f) = self.frames.last_mut() else {
                return self.reply_done(clock, done);
            };
            f.first = false;
            f.left -= 1;
            if f.left > 0 {
                return;
            }
            let attribute = f.attribute;
            self.frames.pop();
            if attribute {
                // The value it annotates comes next.
                return;
            }
        }
    }

    /// A whole top-level reply (or push) was read.
    fn reply_done(&mut self, clock: &mut Clock, done: &mut Vec<Command>) {
        let reply = self.reply;
        if reply.kind == b'|' {
            // A top-level attribute: the reply follows.
            return;
        }
        let aggregate = matches!(reply.kind, b'*' | b'>');
        let word = aggregate.then(|| reply.first.whole()).flatten();
        let is = |w: &str| word.is_some_and(|b| b == w.as_bytes());
        let push = reply.kind == b'>';
        if (push || self.subscribed) && (is("message") || is("pmessage") || is("smessage")) {
            return;
        }
        let confirms = word.and_then(SubKind::of_word);
        if confirms.is_some()
            && let Some(n) = reply.last_int
        {
            self.subscribed = n > 0;
        }
        // A confirmation: an unsubscribe from everything waiting before it
        // for confirmations of another kind is over.
        if let Some(k) = confirms
            && let Some(Entry::Tracked(Pending {
                expect: Expect::Confirm { kind, got, .. },
                ..
            })) = self.pending.front()
            && *kind != k
            && *got > 0
        {
            self.finish_front(None, clock, done);
        }
        // A confirmation, for the command waiting for it.
        if let Some(Entry::Tracked(Pending {
            expect:
                Expect::Confirm {
                    kind,
                    left,
                    got,
                    last,
                },
            ..
        })) = self.pending.front_mut()
            && confirms == Some(*kind)
        {
            *got += 1;
            *last = Some(clock.now());
            if let Some(l) = left {
                *l -= 1;
            }
            let finished = match *left {
                Some(l) => l == 0,
                None => reply.last_int == Some(0),
            };
            if finished {
                self.finish_front(None, clock, done);
            }
            return;
        }
        if push {
            // Invalidations, and confirmations nobody waits for.
            return;
        }
        // A reply: an unsubscribe from everything that got confirmations
        // is over.
        if let Some(Entry::Tracked(Pending {
            expect: Expect::Confirm { got, .. },
            ..
        })) = self.pending.front()
            && *got > 0
        {
            self.finish_front(None, clock, done);
        }
        let error = reply.error.map(|e| error_prefix(e.get()));
        self.finish_front(Some(error), clock, done);
    }

    /// Ends the command at the front with its reply (`Some(error)`), or
    /// with its last confirmation (`None`).
    fn finish_front(
        &mut self,
        reply: Option<Option<Cow<'static, str>>>,
        clock: &mut Clock,
        done: &mut Vec<Command>,
    ) {
        let p = match self.pending.front_mut() {
            None => {
                // A reply to no command: the parser lost its place.
                return self.stop(StopReason::Malformed);
            }
            Some(Entry::Untracked(n)) => {
                *n -= 1;
                if *n == 0 {
                    self.pending.pop_front();
                }
                return;
            }
            Some(Entry::Tracked(p)) => *p,
        };
        self.pending.pop_front();
        self.tracked -= 1;
        let mut cmd = Command::new(p.start, p.op);
        cmd.end = match (reply.is_none(), p.expect) {
            (true, Expect::Confirm { last: Some(t), .. }) => t,
            _ => clock.now(),
        };
        let error = reply.flatten();
        match (p.special, &error) {
            (Special::Select, None) => {
                if let Some(db) = p.select {
                    self.namespace = db.to_string().into();
                }
            }
            (Special::Reset, None) => {
                self.namespace = Arc::from("0");
                self.subscribed = false;
                self.replies = Replies::On;
            }
            _ => {}
        }
        cmd.namespace = Some(self.namespace.clone());
        if let Some(e) = error {
            cmd.status_code = Some(e.clone());
            cmd.error_type = Some(e);
        }
        done.push(cmd);
    }
}

/// The prefix of an error reply (`WRONGTYPE Operation against...` →
/// `WRONGTYPE`): borrowed when known, else the word as sent when it is one
/// (upper case letters, digits, `_`, `-`), else `_OTHER`.
fn error_prefix(text: &[u8]) -> Cow<'static, str> {
    let word = text.split(|b| *b == b' ').next().unwrap_or_default();
    if let Ok(i) = ERROR_PREFIXES.binary_search_by(|p| p.as_bytes().cmp(word)) {
        return Cow::Borrowed(ERROR_PREFIXES[i]);
    }
    let plausible = !word.is_empty()
        && word
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-');
    match std::str::from_utf8(word) {
        Ok(w) if plausible => Cow::Owned(w.to_owned()),
        _ => Cow::Borrowed(OTHER),
    }
}

impl WireParser for RedisParser {
    fn client_sent(&mut self, bytes: &[u8], clock: &mut Clock, _done: &mut Vec<Command>) {
        if self.stopped.is_none() {
            self.read_commands(bytes, clock);
        }
    }

    fn server_sent(&mut self, bytes: &[u8], clock: &mut Clock, done: &mut Vec<Command>) {
        if self.stopped.is_none() {
            self.read_replies(bytes, clock, done);
        }
    }

    fn close(&mut self, clock: &mut Clock, done: &mut Vec<Command>) {
        if self.stopped.is_some() {
            return;
        }
        while let Some(entry) = self.pending.pop_front() {
            let Entry::Tracked(p) = entry else { continue };
            let mut cmd = Command::new(p.start, p.op);
            cmd.namespace = Some(self.namespace.clone());
            match p.expect {
                // All its confirmations came (an unsubscribe from everything).
                Expect::Confirm { last: Some(t), .. } => cmd.end = t,
                _ => {
                    cmd.end = clock.now();
                    cmd.error_type = Some(Cow::Borrowed(CONNECTION_CLOSED));
                }
            }
            done.push(cmd);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// One step of a conversation.
    enum Step<'a> {
        Client(&'a [u8]),
        Server(&'a [u8]),
    }
    use Step::{Client, Server};

    /// Runs `steps` through a parser in pieces of `chunk` bytes, closing at
    /// the end; the commands it reports, and whether it stopped.
    fn run_with(
        config: &DbConfig,
        steps: &[Step<'_>],
        chunk: usize,
    ) -> (Vec<Command>, Option<StopReason>, u64) {
        let mut p = RedisParser::new(config);
        let mut done = Vec::new();
        for step in steps {
            let (bytes, client) = match step {
                Client(b) => (*b, true),
                Server(b) => (*b, false),
            };
            for piece in bytes.chunks(chunk) {
                let mut clock = Clock::new();
                if client {
                    p.client_sent(piece, &mut clock, &mut done);
                } else {
                    p.server_sent(piece, &mut clock, &mut done);
                }
            }
        }
        p.close(&mut Clock::new(), &mut done);
        (done, p.stopped(), p.take_untracked())
    }

    /// Runs `steps` whole and in every piece size up to 7 bytes, checks
    /// that the pieces change nothing, and returns the whole run's result.
    fn run(steps: &[Step<'_>]) -> (Vec<Command>, Option<StopReason>, u64) {
        let config = DbConfig::default();
        let whole = run_with(&config, steps, usize::MAX);
        for chunk in 1..8 {
            let split = run_with(&config, steps, chunk);
            let summary = |r: &(Vec<Command>, Option<StopReason>, u64)| {
                (r.0.iter().map(summary).collect::<Vec<_>>(), r.1, r.2)
            };
            assert_eq!(summary(&split), summary(&whole), "pieces of {chunk} bytes");
        }
        whole
    }

    /// What a command says, without its times.
    fn summary(c: &Command) -> (String, Option<String>, Option<String>, Option<String>) {
        (
            c.operation.to_owned(),
            c.namespace.as_deref().map(str::to_owned),
            c.status_code.as_deref().map(str::to_owned),
            c.error_type.as_deref().map(str::to_owned),
        )
    }

    fn ops(cmds: &[Command]) -> Vec<&str> {
        cmds.iter().map(|c| c.operation).collect()
    }

    /// A command as a client library sends it.
    fn cmd(args: &[&str]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
        out
    }

    #[test]
    fn a_command_and_its_reply() {
        let (cmds, stopped, _) = run(&[
            Client(&cmd(&["set", "k", "v"])),
            Server(b"+OK\r\n"),
            Client(&cmd(&["GET", "k"])),
            Server(b"$1\r\nv\r\n"),
        ]);
        assert_eq!(stopped, None);
        assert_eq!(ops(&cmds), ["SET", "GET"]);
        assert_eq!(cmds[0].namespace.as_deref(), Some("0"));
        assert!(cmds.iter().all(|c| c.error_type.is_none()));
    }

    #[test]
    fn a_pipeline_takes_its_replies_in_order() {
        let mut pipeline = cmd(&["INCR", "n"]);
        pipeline.extend(cmd(&["LPUSH", "l", "a"]));
        pipeline.extend(cmd(&["HGET", "h", "f"]));
        pipeline.extend(cmd(&["GET", "n"]));
        let (cmds, _, _) = run(&[
            Client(&pipeline),
            Server(b":1\r\n:1\r\n-WRONGTYPE Operation against a key\r\n$-1\r\n"),
        ]);
        assert_eq!(ops(&cmds), ["INCR", "LPUSH", "HGET", "GET"]);
        assert_eq!(cmds[2].status_code.as_deref(), Some("WRONGTYPE"));
        assert_eq!(cmds[2].error_type.as_deref(), Some("WRONGTYPE"));
        assert_eq!(cmds[3].error_type, None);
    }

    #[test]
    fn replies_of_every_type_and_nesting() {
        // XREAD's reply: arrays four deep; then RESP3 types, a map, a set,
        // a blob error, a verbatim string, an attribute before a reply.
        let (cmds, stopped, _) = run(&[
            Client(&cmd(&["XREAD", "STREAMS", "s", "0"])),
            Server(b"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n"),
            Client(&cmd(&["HELLO", "3"])),
            Server(b"%2\r\n+server\r\n+redis\r\n+proto\r\n:3\r\n"),
            Client(&cmd(&["SMEMBERS", "s"])),
            Server(b"~2\r\n+a\r\n+b\r\n"),
            Client(&cmd(&["EVAL", "x", "0"])),
            Server(b"!21\r\nSYNTAX invalid syntax\r\n"),
            Client(&cmd(&["INFO"])),
            Server(b"=15\r\ntxt:Some string\r\n"),
            Client(&cmd(&["GET", "k"])),
            Server(b"|1\r\n+key-popularity\r\n%1\r\n$1\r\nk\r\n,0.19\r\n$1\r\nv\r\n"),
            Client(&cmd(&["TTL", "k"])),
            Server(b"_\r\n"),
            Client(&cmd(&["EXISTS", "k"])),
            Server(b"#t\r\n"),
            Client(&cmd(&["INCRBYFLOAT", "f", "1"])),
            Server(b",1.5\r\n"),
            Client(&cmd(&["DEBUG", "x"])),
            Server(b"(3492890328409238509324850943850943825024385\r\n"),
        ]);
        assert_eq!(stopped, None);
        assert_eq!(
            ops(&cmds),
            [
                "XREAD",
                "HELLO",
                "SMEMBERS",
                "EVAL",
                "INFO",
                "GET",
                "TTL",
                "EXISTS",
                "INCRBYFLOAT",
                "DEBUG"
            ]
        );
        assert_eq!(cmds[3].status_code.as_deref(), Some("SYNTAX"));
        assert!(cmds.iter().filter(|c| c.error_type.is_some()).count() == 1);
    }

    #[test]
    fn multi_exec_is_a_command_each() {
        let mut block = cmd(&["MULTI"]);
        block.extend(cmd(&["SET", "a", "1"]));
        block.extend(cmd(&["INCR", "a"]));
        block.extend(cmd(&["EXEC"]));
        let (cmds, _, _) = run(&[
            Client(&block),
            Server(b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n+OK\r\n:2\r\n"),
            Client(&cmd(&["GET", "a"])),
            Server(b"$1\r\n2\r\n"),
        ]);
        assert_eq!(ops(&cmds), ["MULTI", "SET", "INCR", "EXEC", "GET"]);
    }

    #[test]
    fn select_sets_the_namespace() {
        let (cmds, _, _) = run(&[
            Client(&cmd(&["SELECT", "15"])),
            Server(b"+OK\r\n"),
            Client(&cmd(&["GET", "k"])),
            Server(b"$-1\r\n"),
            // A failed SELECT changes nothing.
            Client(&cmd(&["SELECT", "99"])),
            Server(b"-ERR DB index is out of range\r\n"),
            Client(&cmd(&["GET", "k"])),
            Server(b"$-1\r\n"),
        ]);
        let ns: Vec<_> = cmds.iter().map(|c| c.namespace.as_deref()).collect();
        assert_eq!(ns, [Some("15"), Some("15"), Some("15"), Some("15")]);
        assert_eq!(cmds[2].status_code.as_deref(), Some("ERR"));
    }

    #[test]
    fn a_subscription_is_one_command_and_messages_are_none() {
        let (cmds, stopped, _) = run(&[
            Client(&cmd(&["SUBSCRIBE", "news", "sport"])),
            Server(b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n"),
            Server(b"*3\r\n$9\r\nsubscribe\r\n$5\r\nsport\r\n:2\r\n"),
            Server(b"*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$5\r\nhello\r\n"),
            Client(&cmd(&["PING"])),
            Server(b"*3\r\n$7\r\nmessage\r\n$5\r\nsport\r\n$4\r\ngoal\r\n"),
            Server(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"),
            Client(&cmd(&["PSUBSCRIBE", "a*"])),
            Server(b"*3\r\n$10\r\npsubscribe\r\n$2\r\na*\r\n:3\r\n"),
            Server(b"*4\r\n$8\r\npmessage\r\n$2\r\na*\r\n$2\r\nab\r\n$1\r\nx\r\n"),
            // From every channel: as many confirmations as channels.
            Client(&cmd(&["UNSUBSCRIBE"])),
            Server(b"*3\r\n$11\r\nunsubscribe\r\n$4\r\nnews\r\n:2\r\n"),
            Server(b"*3\r\n$11\r\nunsubscribe\r\n$5\r\nsport\r\n:1\r\n"),
            Client(&cmd(&["PUNSUBSCRIBE"])),
            Server(b"*3\r\n$12\r\npunsubscribe\r\n$2\r\na*\r\n:0\r\n"),
            // Not subscribed any more: an array starting "message" is a reply.
            Client(&cmd(&["LRANGE", "l", "0", "-1"])),
            Server(b"*1\r\n$7\r\nmessage\r\n"),
        ]);
        assert_eq!(stopped, None);
        assert_eq!(
            ops(&cmds),
            [
                "SUBSCRIBE",
                "PING",
                "PSUBSCRIBE",
                "UNSUBSCRIBE",
                "PUNSUBSCRIBE",
                "LRANGE"
            ]
        );
        assert!(cmds.iter().all(|c| c.error_type.is_none()), "{cmds:?}");
    }

    #[test]
    fn resp3_pushes_are_not_replies() {
        let (cmds, stopped, _) = run(&[
            Client(&cmd(&["HELLO", "3"])),
            Server(b"%1\r\n+proto\r\n:3\r\n"),
            Client(&cmd(&["SUBSCRIBE", "c"])),
            Server(b">3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n"),
            Client(&cmd(&["GET", "k"])),
            // A message and an invalidation arrive before GET's reply.
            Server(b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$2\r\nhi\r\n"),
            Server(b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n"),
            Server(b"$1\r\nv\r\n"),
        ]);
        assert_eq!(stopped, None);
        assert_eq!(ops(&cmds), ["HELLO", "SUBSCRIBE", "GET"]);
    }

    #[test]
    fn an_unsubscribe_from_everything_ends_at_the_next_reply() {
        // PUNSUBSCRIBE with channels still subscribed: the count never
        // reaches 0; the next reply ends it and goes to the next command.
        let (cmds, _, _) = run(&[
            Client(&cmd(&["SUBSCRIBE", "c"])),
            Server(b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n"),
            Client(&cmd(&["PUNSUBSCRIBE"])),
            Client(&cmd(&["PING"])),
            Server(b"*3\r\n$12\r\npunsubscribe\r\n$-1\r\n:1\r\n"),
            Server(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"),
        ]);
        assert_eq!(ops(&cmds), ["SUBSCRIBE", "PUNSUBSCRIBE", "PING"]);
        assert!(cmds.iter().all(|c| c.error_type.is_none()));
    }

    #[test]
    fn commands_without_replies_get_no_span() {
        let mut silenced = cmd(&["CLIENT", "REPLY", "OFF"]);
        silenced.extend(cmd(&["SET", "a", "1"]));
        silenced.extend(cmd(&["SET", "b", "2"]));
        silenced.extend(cmd(&["CLIENT", "REPLY", "ON"]));
        silenced.extend(cmd(&["CLIENT", "REPLY", "SKIP"]));
        silenced.extend(cmd(&["SET", "c", "3"]));
        silenced.extend(cmd(&["GET", "c"]));
        let (cmds, _, untracked) = run(&[Client(&silenced), Server(b"+OK\r\n$1\r\n3\r\n")]);
        assert_eq!(ops(&cmds), ["CLIENT", "GET"]);
        assert_eq!(untracked, 5);
    }

    #[test]
    fn a_deep_pipeline_is_tracked_up_to_the_bound() {
        let config = DbConfig {
            max_pending: 2,
            ..DbConfig::default()
        };
        let mut pipeline = Vec::new();
        for i in 0..5 {
            pipeline.extend(cmd(&["INCR", &format!("k{i}")]));
        }
        let steps = [
            Client(&pipeline[..]),
            Server(b":1\r\n:1\r\n:1\r\n"),
            // Room again: tracked, and ahead of it two untracked replies.
            Client(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"),
            Server(b":1\r\n:1\r\n$-1\r\n"),
        ];
        let (cmds, stopped, untracked) = run_with(&config, &steps, usize::MAX);
        assert_eq!(stopped, None);
        assert_eq!(ops(&cmds), ["INCR", "INCR", "GET"]);
        assert_eq!(untracked, 3);
        assert!(cmds.iter().all(|c| c.error_type.is_none()));
    }

    #[test]
    fn unanswered_commands_end_with_the_connection() {
        let (cmds, _, _) = run(&[Client(&cmd(&["BLPOP", "q", "0"]))]);
        assert_eq!(ops(&cmds), ["BLPOP"]);
        assert_eq!(cmds[0].error_type.as_deref(), Some(CONNECTION_CLOSED));
    }

    #[test]
    fn inline_commands() {
        let (cmds, _, _) = run(&[
            Client(b"PING\r\n\r\nset  k   v\r\nget k\n"),
            Server(b"+PONG\r\n+OK\r\n$1\r\nv\r\n"),
        ]);
        assert_eq!(ops(&cmds), ["PING", "SET", "GET"]);
    }

    #[test]
    fn large_values_pass_in_pieces_without_being_kept() {
        let value = vec![b'x'; 1 << 20];
        let mut set = format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${}\r\n", value.len()).into_bytes();
        set.extend_from_slice(&value);
        set.extend_from_slice(b"\r\n");
        let mut reply = format!("${}\r\n", value.len()).into_bytes();
        reply.extend_from_slice(&value);
        reply.extend_from_slice(b"\r\n");
        let config = DbConfig::default();
        let steps = [
            Client(&set[..]),
            Server(b"+OK\r\n"),
            Client(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"),
            Server(&reply[..]),
        ];
        for chunk in [1000, 16 * 1024, 65_536] {
            let (cmds, stopped, _) = run_with(&config, &steps, chunk);
            assert_eq!(stopped, None);
            assert_eq!(ops(&cmds), ["SET", "GET"]);
        }
        // What the parser holds does not depend on the value's size; what
        // the docs say of it (DbConfig::max_pending, the README) holds.
        assert!(std::mem::size_of::<RedisParser>() <= 640);
        assert!(std::mem::size_of::<Entry>() <= 80);
    }

    #[test]
    fn unknown_and_hostile_names_are_bounded() {
        let long = "A".repeat(100);
        let (cmds, _, _) = run(&[
            Client(&cmd(&["FROBNICATE"])),
            Client(&cmd(&[&long])),
            Server(b"-ERR unknown command\r\n-weird lowercase error\r\n"),
        ]);
        assert_eq!(ops(&cmds), [OTHER, OTHER]);
        assert_eq!(cmds[1].status_code.as_deref(), Some(OTHER));
        assert_eq!(*lookup(b"evalsha").0, "EVALSHA");
    }

    #[test]
    fn what_it_cannot_follow_stops_it() {
        let (cmds, stopped, _) = run(&[Client(&cmd(&["GET", "k"])), Server(b"?what\r\n")]);
        assert!(cmds.is_empty());
        assert_eq!(stopped, Some(StopReason::Malformed));
        let (_, stopped, _) = run(&[Client(b"*2\r\n$3\r\nGET\r\nX")]);
        assert_eq!(stopped, Some(StopReason::Malformed));
        // A reply nobody asked for.
        let (_, stopped, _) = run(&[Server(b"+OK\r\n")]);
        assert_eq!(stopped, Some(StopReason::Malformed));
        let deep = "*1\r\n".repeat(MAX_DEPTH + 1);
        let (_, stopped, _) = run(&[Client(&cmd(&["GET", "k"])), Server(deep.as_bytes())]);
        assert_eq!(stopped, Some(StopReason::Malformed));
        let (cmds, stopped, _) = run(&[
            Client(&cmd(&["GET", "k"])),
            Server(b"$1\r\nv\r\n"),
            Client(&cmd(&["MONITOR"])),
            Server(b"+OK\r\n+1700000000.1 [0 127.0.0.1:1] \"GET\"\r\n"),
        ]);
        assert_eq!(ops(&cmds), ["GET"]);
        assert_eq!(stopped, Some(StopReason::Unsupported));
    }

    #[test]
    fn times_are_the_command_s_first_byte_and_the_reply_s_last() {
        let mut p = RedisParser::new(&DbConfig::default());
        let mut done = Vec::new();
        let t0 = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(100);
        let at = |secs| Clock {
            now: Some(t0 + std::time::Duration::from_secs(secs)),
            ..Clock::default()
        };
        p.client_sent(b"*2\r\n$3\r\nGET", &mut at(0), &mut done);
        p.client_sent(b"\r\n$1\r\nk\r\n", &mut at(1), &mut done);
        p.server_sent(b"$1\r\n", &mut at(2), &mut done);
        assert!(done.is_empty());
        p.server_sent(b"v\r\n", &mut at(3), &mut done);
        assert_eq!(done[0].start.time, t0);
        assert_eq!(done[0].end, t0 + std::time::Duration::from_secs(3));
    }
}
