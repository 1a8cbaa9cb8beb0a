//! Pure protocol detection over a byte prefix.
//!
//! [`detect`] looks at the first bytes a client sent and answers with a
//! [`Detection`]: a [`Protocol`], [`Detection::NeedMore`] when the bytes so far
//! are a consistent prefix of something it recognises, or
//! [`Detection::Unknown`].
//!
//! The answer is *monotonic*: for any prefix of a byte string, `detect` returns
//! either `NeedMore` or the answer it gives for the whole string. Detectors run
//! in a fixed priority order and the first one that has not ruled the bytes out
//! decides, so a lower-priority detector can never answer before a
//! higher-priority one has made up its mind. Every detector rules bytes out as
//! early as it can, so in practice a client's first segment settles it.
//!
//! [`detect_server_greeting`] does the same for the first bytes of a server
//! that spoke before its client: only MySQL (and MariaDB) is recognised
//! there, from its greeting, since it is the one server-speaks-first
//! protocol that gets database spans; SSH, SMTP, FTP and the rest stay
//! `server_first`.
//!
//! Only HTTP/1, HTTP/2 and TLS change how a connection is handled (in later
//! layers); every other protocol is a metrics label only, so a wrong label can
//! never break a connection.

use crate::tls;

/// A protocol recognised from a client's first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// An HTTP/1.x request line (`METHOD target HTTP/1.x`).
    Http1,
    /// The HTTP/2 prior-knowledge connection preface (`PRI * HTTP/2.0...`).
    Http2,
    /// A TLS ClientHello record.
    Tls,
    /// Redis RESP: an array of bulk strings (`*N\r\n$M\r\n...`).
    Redis,
    /// PostgreSQL StartupMessage (protocol 3.0), SSLRequest, GSSENCRequest or CancelRequest.
    Postgres,
    /// An Apache Kafka request header.
    Kafka,
    /// An Apache Thrift call: binary or compact protocol, framed or not.
    Thrift,
    /// A Cassandra CQL native protocol STARTUP or OPTIONS frame (v3 to v5, DSE v1/v2).
    Cassandra,
    /// A MongoDB wire protocol message (OP_MSG, OP_QUERY or OP_COMPRESSED).
    MongoDb,
    /// The AMQP protocol header (`AMQP` + version bytes; 0-9-1 and 1.0).
    Amqp,
    /// A memcached text protocol command (`get`, `set`, `version`...).
    Memcached,
    /// An SSH client's identification string (`SSH-2.0-...`).
    Ssh,
    /// A MySQL or MariaDB server's greeting (protocol 10 handshake, or the
    /// error packet of a refused host), from [`detect_server_greeting`]:
    /// MySQL servers speak first, so the client's bytes cannot tell.
    Mysql,
}

/// The answer of [`detect`] for a byte prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detection {
    /// The bytes are the start of this protocol.
    Found(Protocol),
    /// The bytes are a consistent prefix of a recognised protocol: read more.
    NeedMore,
    /// No recognised protocol starts with these bytes.
    Unknown,
}

/// Detects the protocol of a connection from the first bytes its client sent.
///
/// ```
/// use l7inspect_detect::{detect, Detection, Protocol};
///
/// assert_eq!(detect(b"GET / HTTP/1.1\r\n"), Detection::Found(Protocol::Http1));
/// assert_eq!(detect(b"GET / HT"), Detection::NeedMore);
/// assert_eq!(detect(b"\xff\x01garbage"), Detection::Unknown);
/// ```
pub fn detect(buf: &[u8]) -> Detection {
    if buf.is_empty() {
        return Detection::NeedMore;
    }
    type Detector = fn(&[u8]) -> Step;
    const DETECTORS: [(Protocol, Detector); 12] = [
        (Protocol::Http2, http2),
        (Protocol::Http1, http1),
        (Protocol::Tls, tls_client_hello),
        (Protocol::Postgres, postgres),
        (Protocol::Amqp, amqp),
        (Protocol::Redis, redis),
        // Before MongoDB: a 9-byte CQL OPTIONS frame can be the start of a
        // MongoDB header, and the client then waits for an answer.
        (Protocol::Cassandra, cassandra),
        (Protocol::MongoDb, mongodb),
        (Protocol::Kafka, kafka),
        (Protocol::Thrift, thrift),
        (Protocol::Memcached, memcached),
        // Last: no other protocol starts with `SSH-`, and HTTP/1 (which
        // reads `SSH-2.0-OpenSSH_9.2` as a method token) says no at the
        // line's end, which an SSH client's first segment holds.
        (Protocol::Ssh, ssh),
    ];
    for (protocol, detector) in DETECTORS {
        match detector(buf) {
            Step::Yes => return Detection::Found(protocol),
            Step::More => return Detection::NeedMore,
            Step::No => {}
        }
    }
    Detection::Unknown
}

/// Detects the protocol of a connection from the first bytes its *server*
/// sent, before the client said anything: [`Protocol::Mysql`] for a MySQL or
/// MariaDB greeting, [`Detection::NeedMore`] while the bytes are a
/// consistent prefix of one, [`Detection::Unknown`] otherwise (an SSH, SMTP
/// or FTP banner, anything else). Monotonic like [`detect`].
///
/// A greeting is one MySQL packet (3-byte little-endian payload length,
/// sequence id 0) holding either a `Protocol::HandshakeV10` (protocol
/// version 10, a printable server version that starts with a digit, a
/// connection id, 8 bytes of scramble and a zero filler) or an ERR packet
/// (`0xff`, an error number in the server's ranges, a printable message),
/// which is what a refused host gets (`Host '...' is not allowed to
/// connect`, error 1130). The checks are strict on purpose: a text banner
/// never has a zero sequence byte in its fourth position.
///
/// ```
/// use l7inspect_detect::{detect_server_greeting, Detection, Protocol};
///
/// let greeting = b"\x4a\x00\x00\x00\x0a8.0.36\x00\x08\x00\x00\x00abcdefgh\x00\xff\xff";
/// assert_eq!(detect_server_greeting(greeting), Detection::Found(Protocol::Mysql));
/// assert_eq!(detect_server_greeting(&greeting[..9]), Detection::NeedMore);
/// assert_eq!(detect_server_greeting(b"SSH-2.0-OpenSSH_9.2\r\n"), Detection::Unknown);
/// ```
pub fn detect_server_greeting(buf: &[u8]) -> Detection {
    match mysql_greeting(buf) {
        Step::Yes => Detection::Found(Protocol::Mysql),
        Step::More => Detection::NeedMore,
        Step::No => Detection::Unknown,
    }
}

// === impl Protocol ===

impl Protocol {
    /// Every protocol detection can return: from a client's first bytes
    /// ([`detect`]) or a server's ([`detect_server_greeting`]: MySQL).
    pub const ALL: [Protocol; 13] = [
        Protocol::Http1,
        Protocol::Http2,
        Protocol::Tls,
        Protocol::Redis,
        Protocol::Postgres,
        Protocol::Kafka,
        Protocol::Thrift,
        Protocol::Cassandra,
        Protocol::MongoDb,
        Protocol::Amqp,
        Protocol::Memcached,
        Protocol::Ssh,
        Protocol::Mysql,
    ];

    /// The metrics label of this protocol (`http1`, `tls`, `mongodb`...).
    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Tls => "tls",
            Protocol::Redis => "redis",
            Protocol::Postgres => "postgres",
            Protocol::Kafka => "kafka",
            Protocol::Thrift => "thrift",
            Protocol::Cassandra => "cassandra",
            Protocol::MongoDb => "mongodb",
            Protocol::Amqp => "amqp",
            Protocol::Memcached => "memcached",
            Protocol::Ssh => "ssh",
            Protocol::Mysql => "mysql",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One detector's verdict on a prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Yes,
    More,
    No,
}

/// `More` while `buf` is a proper prefix of `expected`, `Yes` once it starts
/// with all of it, `No` otherwise.
fn starts_with(buf: &[u8], expected: &[u8]) -> Step {
    let n = buf.len().min(expected.len());
    if buf[..n] != expected[..n] {
        Step::No
    } else if n < expected.len() {
        Step::More
    } else {
        Step::Yes
    }
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

// --- HTTP ---

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn http2(buf: &[u8]) -> Step {
    starts_with(buf, H2_PREFACE)
}

/// Whether an HTTP `content-type` value says gRPC (`application/grpc`,
/// `application/grpc+proto`, `application/grpc-web`...). The one place
/// gRPC is recognised: the proxy's error answers and the request spans and
/// histograms ask here.
pub fn is_grpc_content_type(value: &[u8]) -> bool {
    value.starts_with(b"application/grpc")
}

/// The length of an HTTP/2 frame header.
pub const HTTP2_FRAME_HEADER_LEN: usize = 9;

/// Whether a server's first bytes are an HTTP/2 server connection preface:
/// a SETTINGS frame (type 4, no ACK flag) on stream 0 whose length is a
/// whole number of settings (RFC 9113 3.4, 6.5). HTTP/2 servers send it as
/// soon as they accept, before the client's preface arrives, so it must not
/// be taken for a server that speaks first. Needs the whole 9-byte header.
///
/// ```
/// use l7inspect_detect::is_http2_server_preface;
///
/// assert!(is_http2_server_preface(&[0, 0, 6, 4, 0, 0, 0, 0, 0]));
/// assert!(!is_http2_server_preface(b"SSH-2.0-OpenSSH_9.2\r\n"));
/// ```
pub fn is_http2_server_preface(buf: &[u8]) -> bool {
    const SETTINGS: u8 = 0x4;
    const ACK: u8 = 0x1;
    let Some(h) = buf.get(..HTTP2_FRAME_HEADER_LEN) else {
        return false;
    };
    let len = u32::from_be_bytes([0, h[0], h[1], h[2]]);
    len.is_multiple_of(6)
        && len <= 16_384
        && h[3] == SETTINGS
        && h[4] & ACK == 0
        && h[5..9] == [0; 4]
}

/// The longest request line we wait for before giving up on HTTP/1.
const MAX_REQUEST_LINE: usize = 8 * 1024;

/// RFC 9110 token characters (`tchar`).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// An HTTP/1.x request line: `token SP request-target SP HTTP/1.D CRLF`.
///
/// Any method token is accepted (RFC 9110 allows extension methods; the
/// registered and WebDAV ones are just tokens), but only with a complete
/// `HTTP/1.x` version, which is what tells `GET / HTTP/1.1` from a Redis
/// inline `GET key` or a memcached `get key`.
fn http1(buf: &[u8]) -> Step {
    // Judge at most MAX_REQUEST_LINE bytes, and give up on a line that is not
    // complete within them, so a prefix and the whole always agree.
    let line = &buf[..buf.len().min(MAX_REQUEST_LINE)];
    match request_line(line) {
        Step::More if line.len() == MAX_REQUEST_LINE => Step::No,
        step => step,
    }
}

fn request_line(buf: &[u8]) -> Step {
    let method_len = buf.iter().take_while(|&&b| is_tchar(b)).count();
    if method_len == buf.len() {
        return Step::More;
    }
    if method_len == 0 || buf[method_len] != b' ' {
        return Step::No;
    }
    let rest = &buf[method_len + 1..];
    // request-target: visible ASCII, no spaces (RFC 9112 3.2).
    let target_len = rest.iter().take_while(|&&b| b.is_ascii_graphic()).count();
    if target_len == rest.len() {
        return Step::More;
    }
    if target_len == 0 || rest[target_len] != b' ' {
        return Step::No;
    }
    let version = &rest[target_len + 1..];
    match starts_with(version, b"HTTP/1.") {
        Step::Yes => {}
        other => return other,
    }
    match version.get(7) {
        None => return Step::More,
        Some(d) if d.is_ascii_digit() => {}
        Some(_) => return Step::No,
    }
    // Accept a bare LF as well as CRLF, as RFC 9112 2.2 lets servers do.
    match version.get(8) {
        None => Step::More,
        Some(b'\n') => Step::Yes,
        Some(b'\r') => match version.get(9) {
            None => Step::More,
            Some(b'\n') => Step::Yes,
            Some(_) => Step::No,
        },
        Some(_) => Step::No,
    }
}

// --- TLS ---

/// A TLS handshake record whose first message is a ClientHello. The 9 header
/// bytes decide; [`crate::parse_client_hello`] reads the rest.
fn tls_client_hello(buf: &[u8]) -> Step {
    match tls::looks_like_client_hello(buf) {
        None => Step::More,
        Some(true) => Step::Yes,
        Some(false) => Step::No,
    }
}

// --- Databases and brokers (labels only) ---

const PG_PROTOCOL_3_0: u32 = 196_608;
const PG_CANCEL_REQUEST: u32 = 80_877_102;
const PG_SSL_REQUEST: u32 = 80_877_103;
const PG_GSSENC_REQUEST: u32 = 80_877_104;

/// PostgreSQL: `int32 length, int32 code` where code is protocol 3.0 (a
/// StartupMessage, which is followed by `user`...), or one of the special
/// request codes with their fixed lengths.
fn postgres(buf: &[u8]) -> Step {
    if buf.len() < 8 {
        // Every message this detects is shorter than 16 MiB and at least 8 bytes.
        return match buf[0] {
            0 => Step::More,
            _ => Step::No,
        };
    }
    let len = be_u32(buf);
    match be_u32(&buf[4..]) {
        PG_SSL_REQUEST | PG_GSSENC_REQUEST if len == 8 => Step::Yes,
        PG_CANCEL_REQUEST if len == 16 => Step::Yes,
        PG_PROTOCOL_3_0 if (9..=10_000).contains(&len) => Step::Yes,
        _ => Step::No,
    }
}

/// AMQP protocol header: `AMQP` then 4 version bytes: `0 0 9 1` for 0-9-1,
/// `0 1 0 0` or `3 1 0 0` (SASL) for 1.0.
fn amqp(buf: &[u8]) -> Step {
    match starts_with(buf, b"AMQP") {
        Step::Yes => {}
        other => return other,
    }
    const VERSIONS: [&[u8]; 4] = [
        b"\x00\x00\x09\x01",
        b"\x00\x01\x00\x00",
        b"\x02\x01\x00\x00",
        b"\x03\x01\x00\x00",
    ];
    let version = &buf[4..];
    let mut verdict = Step::No;
    for v in VERSIONS {
        match starts_with(version, v) {
            Step::Yes => return Step::Yes,
            Step::More => verdict = Step::More,
            Step::No => {}
        }
    }
    verdict
}

/// An SSH identification string (RFC 4253, section 4.2): `SSH-2.0-`, or
/// `SSH-1.99-` from a client that speaks protocol 1 too. OpenSSH's client
/// sends it at once, before the server's own.
fn ssh(buf: &[u8]) -> Step {
    let mut verdict = Step::No;
    for prefix in [&b"SSH-2.0-"[..], b"SSH-1.99-"] {
        match starts_with(buf, prefix) {
            Step::Yes => return Step::Yes,
            Step::More => verdict = Step::More,
            Step::No => {}
        }
    }
    verdict
}

/// Redis RESP request: an array header `*<count>\r\n` followed by a bulk
/// string `$`. (Inline commands are plain text and stay unknown.)
fn redis(buf: &[u8]) -> Step {
    if buf[0] != b'*' {
        return Step::No;
    }
    let digits = buf[1..].iter().take_while(|b| b.is_ascii_digit()).count();
    let after = &buf[1 + digits..];
    if digits > 9 {
        return Step::No;
    }
    if after.is_empty() {
        return Step::More;
    }
    if digits == 0 {
        return Step::No;
    }
    starts_with(after, b"\r\n$")
}

const MONGO_OP_QUERY: u32 = 2004;
const MONGO_OP_COMPRESSED: u32 = 2012;
const MONGO_OP_MSG: u32 = 2013;
/// MongoDB's default maxMessageSizeBytes.
const MONGO_MAX_MESSAGE: u32 = 48_000_000;

/// MongoDB message header (little-endian): `messageLength, requestID,
/// responseTo = 0, opCode`.
fn mongodb(buf: &[u8]) -> Step {
    if buf.len() >= 4 {
        let len = le_u32(buf);
        if !(21..=MONGO_MAX_MESSAGE).contains(&len) {
            return Step::No;
        }
    }
    if buf.len() < 16 {
        // responseTo must be zero in a request.
        return if buf.len() > 8 && buf[8..buf.len().min(12)].iter().any(|&b| b != 0) {
            Step::No
        } else {
            Step::More
        };
    }
    if le_u32(&buf[8..]) != 0 {
        return Step::No;
    }
    match le_u32(&buf[12..]) {
        MONGO_OP_MSG | MONGO_OP_QUERY | MONGO_OP_COMPRESSED => Step::Yes,
        _ => Step::No,
    }
}

const CQL_OPCODE_STARTUP: u8 = 0x01;
const CQL_OPCODE_OPTIONS: u8 = 0x05;

/// Cassandra CQL native protocol request frame header: `version, flags,
/// stream (i16), opcode (STARTUP or OPTIONS), length (i32)`. A client's first
/// frame is always one of these two. Versions 3 to 5, and DSE_V1/DSE_V2
/// (0x41, 0x42), which the DataStax drivers try first.
fn cassandra(buf: &[u8]) -> Step {
    if !matches!(buf[0], 3..=5 | 0x41 | 0x42) {
        return Step::No;
    }
    // Flags use the low 5 bits; the opcode is checked as soon as it is there.
    if buf.get(1).is_some_and(|&f| f > 0x1f)
        || buf
            .get(4)
            .is_some_and(|&op| op != CQL_OPCODE_STARTUP && op != CQL_OPCODE_OPTIONS)
    {
        return Step::No;
    }
    if buf.len() < 9 {
        return Step::More;
    }
    let len = be_u32(&buf[5..]);
    match buf[4] {
        CQL_OPCODE_STARTUP if len > 0 && len < 65_536 => Step::Yes,
        CQL_OPCODE_OPTIONS if len == 0 => Step::Yes,
        _ => Step::No,
    }
}

/// The highest Kafka API key we accept (Kafka 4.x defines keys up to ~90).
const KAFKA_MAX_API_KEY: i16 = 100;
/// Kafka's default socket.request.max.bytes.
const KAFKA_MAX_REQUEST: u32 = 100 * 1024 * 1024;

/// Kafka request: `size (i32), api_key (i16), api_version (i16),
/// correlation_id (i32), client_id (nullable i16-length string)`.
fn kafka(buf: &[u8]) -> Step {
    // Each field is checked as soon as it has arrived, with the same bounds
    // as on a whole header, so that a prefix never contradicts the whole.
    if buf[0] > (KAFKA_MAX_REQUEST >> 24) as u8 {
        return Step::No;
    }
    let i16_at = |i: usize| buf.get(i..i + 2).map(|b| i16::from_be_bytes([b[0], b[1]]));
    let size = buf.get(..4).map(be_u32);
    if size.is_some_and(|s| !(10..=KAFKA_MAX_REQUEST).contains(&s))
        || i16_at(4).is_some_and(|k| !(0..=KAFKA_MAX_API_KEY).contains(&k))
        || i16_at(6).is_some_and(|v| !(0..=30).contains(&v))
    {
        return Step::No;
    }
    let (Some(size), Some(client_id_len)) = (size, i16_at(12)) else {
        return Step::More;
    };
    if client_id_len < -1 || i64::from(client_id_len) + 10 > i64::from(size) {
        return Step::No;
    }
    if client_id_len <= 0 {
        return Step::Yes;
    }
    // A client id, when present, is printable text.
    let id = &buf[14..buf.len().min(14 + client_id_len as usize)];
    if id.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        if id.len() == client_id_len as usize {
            Step::Yes
        } else {
            Step::More
        }
    } else {
        Step::No
    }
}

const THRIFT_BINARY_VERSION_1: [u8; 2] = [0x80, 0x01];
const THRIFT_COMPACT_PROTOCOL_ID: u8 = 0x82;

/// Thrift: a strict binary message header (`0x8001 0x00 type`) or a compact
/// header (`0x82`, version 1 with type CALL or ONEWAY), either at the start
/// (buffered/unframed transport) or after a 4-byte frame length (framed).
fn thrift(buf: &[u8]) -> Step {
    let unframed = thrift_message(buf);
    if unframed != Step::No {
        return unframed;
    }
    if buf[0] != 0 {
        // Frames are far below 16 MiB.
        return Step::No;
    }
    if buf.len() < 4 {
        return Step::More;
    }
    if be_u32(buf) < 4 {
        return Step::No;
    }
    match &buf[4..] {
        [] => Step::More,
        rest => thrift_message(rest),
    }
}

fn thrift_message(buf: &[u8]) -> Step {
    const CALL: u8 = 1;
    const ONEWAY: u8 = 4;
    match buf[0] {
        0x80 => match starts_with(buf, &THRIFT_BINARY_VERSION_1) {
            Step::Yes => match buf.get(2..4) {
                None if buf.len() == 2 || buf[2] == 0 => Step::More,
                Some([0, CALL | ONEWAY]) => Step::Yes,
                _ => Step::No,
            },
            other => other,
        },
        THRIFT_COMPACT_PROTOCOL_ID => match buf.get(1) {
            None => Step::More,
            // version 1 in the low 5 bits, message type in the high 3.
            Some(&b) if b & 0x1f == 1 && matches!(b >> 5, CALL | ONEWAY) => Step::Yes,
            Some(_) => Step::No,
        },
        _ => Step::No,
    }
}

// --- Server greetings ---

/// The longest server version string accepted (MariaDB's are the longest
/// seen: `5.5.5-10.11.6-MariaDB-0+deb12u1`, 31 bytes).
const MYSQL_MAX_VERSION: usize = 64;
/// Bounds on a greeting's payload: the smallest HandshakeV10 (an empty
/// tail after the capability flags) to far above the ~100 bytes servers send.
const MYSQL_GREETING_PAYLOAD: std::ops::RangeInclusive<usize> = 18..=1024;
/// Bounds on an ERR greeting's payload: the header, error number and at
/// least one byte of message, up to a long message.
const MYSQL_ERR_PAYLOAD: std::ops::RangeInclusive<usize> = 4..=1024;
/// The server error numbers: 1000 to 1999, then 3000 on (2000 to 2999 are
/// the client library's own, never sent by a server).
fn is_mysql_server_error(code: u16) -> bool {
    (1000..2000).contains(&code) || (3000..10_000).contains(&code)
}
/// How much of an ERR greeting's message must be printable before it is
/// believed (a whole short message, or this many bytes of a long one).
const MYSQL_ERR_MESSAGE_CHECK: usize = 16;

/// A MySQL server greeting (see [`detect_server_greeting`]). Each field is
/// judged as soon as it has arrived, so a prefix never contradicts the
/// whole.
fn mysql_greeting(buf: &[u8]) -> Step {
    // The length's third byte is zero for every payload we accept, and the
    // sequence id (byte 3) is zero in a server's first packet.
    if buf.len() >= 3 && buf[2] != 0 || buf.len() >= 4 && buf[3] != 0 {
        return Step::No;
    }
    if buf.len() < 5 {
        return match buf.get(1) {
            Some(&hi) if hi > 4 => Step::No,
            _ => Step::More,
        };
    }
    let len = usize::from(buf[0]) | usize::from(buf[1]) << 8;
    let payload = &buf[4..buf.len().min(4 + len)];
    match payload[0] {
        0x0a if MYSQL_GREETING_PAYLOAD.contains(&len) => {
            mysql_handshake_v10(&payload[1..], len - 1)
        }
        0xff if MYSQL_ERR_PAYLOAD.contains(&len) => mysql_err_greeting(&payload[1..], len - 1),
        _ => Step::No,
    }
}

/// The rest of a HandshakeV10 after its protocol version byte: `rest` is
/// what has arrived of the `len` bytes that follow it.
fn mysql_handshake_v10(rest: &[u8], len: usize) -> Step {
    // Server version: printable ASCII starting with a digit, NUL-terminated.
    let version_len = rest.iter().take_while(|&&b| b != 0).count();
    let version = &rest[..version_len];
    if version.first().is_some_and(|b| !b.is_ascii_digit())
        || !version.iter().all(|b| b.is_ascii_graphic() || *b == b' ')
        || version_len > MYSQL_MAX_VERSION
    {
        return Step::No;
    }
    if version_len == rest.len() {
        // No NUL yet: more, unless the payload has no room left for it.
        return if version_len + 1 > len {
            Step::No
        } else {
            Step::More
        };
    }
    if version_len == 0 {
        return Step::No;
    }
    // NUL, connection id (4), auth-plugin-data part 1 (8), filler (1).
    let filler = version_len + 1 + 4 + 8;
    if filler + 1 > len {
        return Step::No;
    }
    match rest.get(filler) {
        None => Step::More,
        Some(0) => Step::Yes,
        Some(_) => Step::No,
    }
}

/// The rest of an ERR packet after its `0xff`: `rest` is what has arrived
/// of the `len` bytes that follow it.
fn mysql_err_greeting(rest: &[u8], len: usize) -> Step {
    if rest.len() >= 2 && !is_mysql_server_error(u16::from_le_bytes([rest[0], rest[1]])) {
        return Step::No;
    }
    // Before the handshake, the message follows the number directly (no
    // `#` SQLSTATE marker: the client's capabilities are not known yet).
    let message = rest.get(2..).unwrap_or_default();
    let want = (len - 2).min(MYSQL_ERR_MESSAGE_CHECK);
    if !message
        .iter()
        .take(want)
        .all(|b| b.is_ascii_graphic() || *b == b' ' || *b >= 0x80)
    {
        return Step::No;
    }
    if rest.len() < 2 || message.len() < want {
        Step::More
    } else {
        Step::Yes
    }
}

/// memcached text protocol: a lowercase command followed by a space or CRLF.
fn memcached(buf: &[u8]) -> Step {
    const COMMANDS: [&[u8]; 27] = [
        b"get",
        b"gets",
        b"gat",
        b"gats",
        b"set",
        b"add",
        b"replace",
        b"append",
        b"prepend",
        b"cas",
        b"delete",
        b"incr",
        b"decr",
        b"touch",
        b"stats",
        b"version",
        b"flush_all",
        b"verbosity",
        b"quit",
        b"mg",
        b"ms",
        b"md",
        b"ma",
        b"mn",
        b"me",
        b"lru_crawler",
        b"shutdown",
    ];
    let word_len = buf
        .iter()
        .take_while(|b| b.is_ascii_lowercase() || **b == b'_')
        .count();
    let word = &buf[..word_len];
    if word_len == buf.len() {
        // Still reading the command word: is it a prefix of one?
        return if COMMANDS.iter().any(|c| c.starts_with(word)) {
            Step::More
        } else {
            Step::No
        };
    }
    if !COMMANDS.contains(&word) {
        return Step::No;
    }
    match &buf[word_len..] {
        [b' ', ..] => Step::Yes,
        [b'\r'] => Step::More,
        [b'\r', b'\n', ..] => Step::Yes,
        _ => Step::No,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http1_request_lines() {
        for line in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PATCH /x HTTP/1.1\r\n",
            b"PROPFIND /dav/ HTTP/1.1\r\n",
            b"MKCOL /dav/new HTTP/1.1\r\n",
            b"CONNECT example.com:443 HTTP/1.1\r\n",
            b"OPTIONS * HTTP/1.1\r\n",
            b"QUERY /search HTTP/1.1\r\n",
            b"GET /a HTTP/1.0\n",
        ] {
            assert_eq!(detect(line), Detection::Found(Protocol::Http1), "{line:?}");
        }
    }

    #[test]
    fn not_http1() {
        assert_eq!(detect(b"GET key\r\n"), Detection::Unknown);
        assert_eq!(detect(b"GET / HTTP/2.0\r\n"), Detection::Unknown);
        assert_eq!(detect(b"GET  / HTTP/1.1\r\n"), Detection::Unknown);
        assert_eq!(detect(b"GET / HTTP/1.1\rx"), Detection::Unknown);
    }

    #[test]
    fn memcached_vs_http() {
        assert_eq!(
            detect(b"get foo\r\n"),
            Detection::Found(Protocol::Memcached)
        );
        assert_eq!(
            detect(b"version\r\n"),
            Detection::Found(Protocol::Memcached)
        );
        assert_eq!(detect(b"getx foo\r\n"), Detection::Unknown);
    }

    #[test]
    fn redis_array() {
        assert_eq!(
            detect(b"*1\r\n$4\r\nPING\r\n"),
            Detection::Found(Protocol::Redis)
        );
        assert_eq!(detect(b"*\r\n\r\n"), Detection::Unknown);
        assert_eq!(detect(b"*12"), Detection::NeedMore);
    }

    #[test]
    fn postgres_special_requests() {
        let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        let gss = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];
        let cancel = [0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1, 0, 0, 0, 2];
        for msg in [&ssl[..], &gss, &cancel] {
            assert_eq!(detect(msg), Detection::Found(Protocol::Postgres));
        }
        // SSLRequest code with the wrong length is not Postgres.
        assert_eq!(
            detect(&[0, 0, 0, 9, 0x04, 0xd2, 0x16, 0x2f, 0]),
            Detection::Unknown
        );
    }

    #[test]
    fn amqp_headers() {
        assert_eq!(
            detect(b"AMQP\x00\x00\x09\x01"),
            Detection::Found(Protocol::Amqp)
        );
        assert_eq!(detect(b"AMQP\x00\x00"), Detection::NeedMore);
        assert_eq!(detect(b"AMQP\x07\x00\x09\x01"), Detection::Unknown);
    }

    #[test]
    fn thrift_compact_unframed() {
        assert_eq!(
            detect(&[0x82, 0x21, 0x01, 0x04, b'p', b'i', b'n', b'g']),
            Detection::Found(Protocol::Thrift)
        );
        assert_eq!(detect(&[0x82, 0x22, 0x01, 0x04]), Detection::Unknown);
    }

    #[test]
    fn cassandra_options() {
        let options = [0x04, 0x00, 0x00, 0x00, 0x05, 0, 0, 0, 0];
        assert_eq!(detect(&options), Detection::Found(Protocol::Cassandra));
    }

    /// Found by the `detect` fuzz target: a prefix said Unknown where the
    /// whole header said Kafka.
    #[test]
    fn kafka_prefixes_agree_with_the_whole() {
        let input = [4, 0, 0, 0x19, 0, 0, 0, 4, 0, 0, 0, 5, 0, 0, 0, 0];
        assert_eq!(detect(&input), Detection::Found(Protocol::Kafka));
        for n in 0..14 {
            assert_eq!(detect(&input[..n]), Detection::NeedMore, "n={n}");
        }
    }

    #[test]
    fn overlong_request_line_is_unknown_at_every_length() {
        let mut line = vec![b'A'; MAX_REQUEST_LINE + 10];
        line.extend_from_slice(b" / HTTP/1.1\r\n");
        assert_eq!(detect(&line), Detection::Unknown);
        assert_eq!(detect(&line[..MAX_REQUEST_LINE]), Detection::Unknown);
        assert_eq!(detect(&line[..MAX_REQUEST_LINE - 1]), Detection::NeedMore);
    }

    #[test]
    fn http2_server_preface() {
        // hyper's first SETTINGS frame (3 settings) and an empty one.
        assert!(is_http2_server_preface(&[0, 0, 18, 4, 0, 0, 0, 0, 0, 0, 3]));
        assert!(is_http2_server_preface(&[0, 0, 0, 4, 0, 0, 0, 0, 0]));
        // A SETTINGS ACK, another frame type, a nonzero stream, a short read.
        assert!(!is_http2_server_preface(&[0, 0, 0, 4, 1, 0, 0, 0, 0]));
        assert!(!is_http2_server_preface(&[0, 0, 4, 8, 0, 0, 0, 0, 0]));
        assert!(!is_http2_server_preface(&[0, 0, 6, 4, 0, 0, 0, 0, 1]));
        assert!(!is_http2_server_preface(&[0, 0, 6, 4, 0]));
        // Banners of server-speaks-first protocols.
        for banner in [
            &b"220 smtp.example ESMTP\r\n"[..],
            b"SSH-2.0-x\r\n",
            b"\x4a\x00\x00\x00\x0a8.0.36",
        ] {
            assert!(!is_http2_server_preface(banner));
        }
    }

    #[test]
    fn empty_needs_more_and_garbage_is_unknown() {
        assert_eq!(detect(b""), Detection::NeedMore);
        assert_eq!(detect(b"\xff\xfe\xfd\xfc"), Detection::Unknown);
    }

    #[test]
    fn ssh_identification() {
        let found = Detection::Found(Protocol::Ssh);
        assert_eq!(detect(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n"), found);
        assert_eq!(detect(b"SSH-1.99-PuTTY_Release_0.81\r\n"), found);
        // A line cut short is a prefix of an HTTP/1 method token too: more.
        assert_eq!(detect(b"SSH-2.0-"), Detection::NeedMore);
        assert_eq!(detect(b"SSH-2."), Detection::NeedMore);
        // SSH 1 alone, or not an identification line.
        assert_eq!(detect(b"SSH-1.5-old\r\n"), Detection::Unknown);
        assert_eq!(detect(b"SSHX\r\n"), Detection::Unknown);
    }

    /// A HandshakeV10 packet with this version string (the rest as MariaDB
    /// 10.11 sends it, scramble and all).
    fn v10(version: &[u8]) -> Vec<u8> {
        let mut payload = vec![0x0a];
        payload.extend_from_slice(version);
        payload.push(0);
        payload.extend_from_slice(&[7, 0, 0, 0]); // connection id
        payload.extend_from_slice(b"Ab!d3f)h"); // scramble, part 1
        payload.push(0); // filler
        payload.extend_from_slice(&[0xfe, 0xf7, 0x2d, 0x02, 0x00, 0xff, 0x81, 0x15]);
        payload.extend_from_slice(&[0; 10]);
        payload.extend_from_slice(b"0123456789ab\0mysql_native_password\0");
        let mut packet = (payload.len() as u32).to_le_bytes()[..3].to_vec();
        packet.push(0);
        packet.extend(payload);
        packet
    }

    /// Every strict prefix of `bytes` is NeedMore or the whole's answer.
    fn greeting_prefixes_agree(bytes: &[u8]) {
        let whole = detect_server_greeting(bytes);
        for n in 0..bytes.len() {
            let got = detect_server_greeting(&bytes[..n]);
            assert!(
                got == Detection::NeedMore || got == whole,
                "{bytes:?}: prefix of {n} gave {got:?}, whole {whole:?}"
            );
        }
    }

    #[test]
    fn mysql_handshake_greetings() {
        let found = Detection::Found(Protocol::Mysql);
        for version in [
            &b"8.0.36"[..],
            b"5.5.5-10.11.6-MariaDB-0+deb12u1",
            b"5.7.25-TiDB-v7.5.0",
        ] {
            let g = v10(version);
            assert_eq!(detect_server_greeting(&g), found, "{version:?}");
            // Decided at the filler byte, before the capabilities.
            let filler = 4 + 1 + version.len() + 1 + 4 + 8;
            assert_eq!(detect_server_greeting(&g[..=filler]), found);
            assert_eq!(detect_server_greeting(&g[..filler]), Detection::NeedMore);
            greeting_prefixes_agree(&g);
        }
    }

    #[test]
    fn mysql_err_greeting() {
        // MySQL's answer to a host that is not allowed: ERR 1130, no SQLSTATE.
        let msg = b"Host '10.1.2.3' is not allowed to connect to this MySQL server";
        let mut payload = vec![0xff, 0x6a, 0x04];
        payload.extend_from_slice(msg);
        let mut packet = vec![payload.len() as u8, 0, 0, 0];
        packet.extend_from_slice(&payload);
        assert_eq!(
            detect_server_greeting(&packet),
            Detection::Found(Protocol::Mysql)
        );
        greeting_prefixes_agree(&packet);
        // A client-library error number (2013) is not something a server sends.
        packet[5..7].copy_from_slice(&2013u16.to_le_bytes());
        assert_eq!(detect_server_greeting(&packet), Detection::Unknown);
        // Nor is a message of control bytes.
        let mut binary = vec![6, 0, 0, 0, 0xff, 0x6a, 0x04, 1, 2, 3];
        assert_eq!(detect_server_greeting(&binary), Detection::Unknown);
        binary[7..].copy_from_slice(b"Too");
        assert_eq!(
            detect_server_greeting(&binary),
            Detection::Found(Protocol::Mysql)
        );
    }

    #[test]
    fn not_mysql_greetings() {
        let unknown = Detection::Unknown;
        for banner in [
            &b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"[..],
            b"220 mail.example ESMTP Postfix\r\n",
            b"220-FileZilla Server 1.8\r\n",
            b"220 (vsFTPd 3.0.3)\r\n",
            b"INFO {\"server_id\":\"x\"}\r\n",
            b"+OK POP3 ready\r\n",
            b"* OK IMAP4rev1 ready\r\n",
            include_bytes!("../testdata/garbage_random.bin"),
        ] {
            assert_eq!(detect_server_greeting(banner), unknown, "{banner:?}");
            greeting_prefixes_agree(banner);
        }
        // Sequence id other than 0, protocol 9, a version not starting
        // with a digit, an unterminated or overlong version, a bad filler.
        let mut g = v10(b"8.0.36");
        g[3] = 1;
        assert_eq!(detect_server_greeting(&g), unknown);
        let mut g = v10(b"8.0.36");
        g[4] = 9;
        assert_eq!(detect_server_greeting(&g), unknown);
        assert_eq!(detect_server_greeting(&v10(b"v8.0")), unknown);
        assert_eq!(detect_server_greeting(&v10(&[b'8'; 65])), unknown);
        assert_eq!(detect_server_greeting(&v10(b"8.0\x01")), unknown);
        let mut g = v10(b"8.0.36");
        g[4 + 1 + 6 + 1 + 12] = 1;
        assert_eq!(detect_server_greeting(&g), unknown);
        let short = [5, 0, 0, 0, 0x0a, b'8', b'.', b'0', b'.'];
        assert_eq!(
            detect_server_greeting(&short),
            unknown,
            "too short a payload"
        );
        // An HTTP/2 server preface is not a greeting either.
        assert_eq!(
            detect_server_greeting(&[0, 0, 18, 4, 0, 0, 0, 0, 0]),
            unknown
        );
        assert_eq!(detect_server_greeting(b""), Detection::NeedMore);
    }

    #[test]
    fn labels_are_distinct() {
        let mut labels: Vec<_> = Protocol::ALL.iter().map(|p| p.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Protocol::ALL.len());
    }
}
