//! TLS ClientHello recognition and parsing (SNI, ALPN, offered versions),
//! and ServerHello parsing (the negotiated version, cipher suite, and ALPN
//! where it is visible).
//!
//! Recognition needs only the 9 bytes of record and handshake headers;
//! [`parse_client_hello`] needs the whole ClientHello, which may span several
//! handshake records (large post-quantum key shares do that), and
//! [`parse_server_hello`] the whole ServerHello. Neither copies the bytes
//! unless the message is fragmented across records.

use std::borrow::Cow;

const CONTENT_TYPE_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const HANDSHAKE_SERVER_HELLO: u8 = 2;
/// RFC 8446 5.1: a record's plaintext is at most 2^14 bytes.
const MAX_RECORD_LEN: usize = 1 << 14;
/// The smallest ClientHello body: version, random, three empty length fields.
const MIN_CLIENT_HELLO_LEN: usize = 2 + 32 + 1 + 2 + 1;
/// A ClientHello we will not parse past (RFC 8446 lets it grow to 2^24 bytes,
/// but real ones are a few KiB).
const MAX_CLIENT_HELLO_LEN: usize = 64 * 1024;
/// The smallest ServerHello body: version, random, an empty session id, a
/// cipher suite, a compression method.
const MIN_SERVER_HELLO_LEN: usize = 2 + 32 + 1 + 2 + 1;
/// A ServerHello we will not parse past (real ones are a few hundred bytes;
/// a post-quantum key share adds about a kilobyte).
const MAX_SERVER_HELLO_LEN: usize = 16 * 1024;
/// The random of a HelloRetryRequest (RFC 8446 4.1.3): SHA-256 of
/// "HelloRetryRequest".
const HELLO_RETRY_REQUEST_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
    0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];

const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const EXT_SUPPORTED_VERSIONS: u16 = 43;

/// What a client offered in its TLS ClientHello.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// The host name from the server_name extension (SNI), if any.
    pub server_name: Option<String>,
    /// The ALPN protocol names offered, in the client's order (`h2`, `http/1.1`...).
    pub alpn: Vec<Vec<u8>>,
    /// The TLS versions offered, as wire values (`0x0304` is TLS 1.3): the
    /// supported_versions extension when present, else the legacy version.
    pub versions: Vec<u16>,
}

/// What a server chose in its TLS ServerHello.
///
/// In TLS 1.3 the ALPN choice is in EncryptedExtensions, which a proxy
/// that does not terminate cannot read: `alpn` is then `None` even when a
/// protocol was chosen. In TLS 1.2 and earlier it is here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerHello {
    /// The negotiated version as a wire value (`0x0304` is TLS 1.3): the
    /// supported_versions extension when present, else the legacy version.
    pub version: u16,
    /// The chosen cipher suite (`0x1301` is TLS_AES_128_GCM_SHA256).
    pub cipher_suite: u16,
    /// The chosen ALPN protocol, when the ServerHello carries it.
    pub alpn: Option<Vec<u8>>,
    /// A HelloRetryRequest (TLS 1.3): the server asks the client for
    /// another ClientHello; the real ServerHello comes after it.
    pub hello_retry_request: bool,
}

/// The answer of [`parse_client_hello`] and [`parse_server_hello`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed<T> {
    /// The whole message was parsed.
    Complete(T),
    /// A consistent prefix of the message: read more.
    NeedMore,
    /// Not a well-formed message of that kind.
    Invalid,
}

/// The answer of [`parse_client_hello`].
pub type ParsedHello = Parsed<ClientHello>;

/// The answer of [`parse_server_hello`].
pub type ParsedServerHello = Parsed<ServerHello>;

/// `tls.protocol.version` as the semantic conventions write it (`1.2`,
/// `1.3`) for a wire version value; `None` for SSL 3.0 and unknown values.
pub fn tls_version_name(version: u16) -> Option<&'static str> {
    match version {
        0x0301 => Some("1.0"),
        0x0302 => Some("1.1"),
        0x0303 => Some("1.2"),
        0x0304 => Some("1.3"),
        _ => None,
    }
}

/// Parses the TLS ClientHello at the start of `buf` (the raw bytes a client
/// sent, starting with the first record header).
///
/// ```
/// use l7inspect_detect::{parse_client_hello, ParsedHello};
///
/// assert_eq!(parse_client_hello(b"\x16\x03\x01"), ParsedHello::NeedMore);
/// assert_eq!(parse_client_hello(b"GET / HTTP/1.1\r\n"), ParsedHello::Invalid);
/// ```
pub fn parse_client_hello(buf: &[u8]) -> ParsedHello {
    parse_handshake(buf, &CLIENT_HELLO, parse_body)
}

/// Parses the TLS ServerHello at the start of `buf` (the raw bytes a server
/// sent, starting with the first record header).
///
/// ```
/// use l7inspect_detect::{parse_server_hello, ParsedServerHello};
///
/// assert_eq!(parse_server_hello(b"\x16\x03\x03\x00"), ParsedServerHello::NeedMore);
/// assert_eq!(parse_server_hello(b"SSH-2.0-OpenSSH_9.2\r\n"), ParsedServerHello::Invalid);
/// ```
pub fn parse_server_hello(buf: &[u8]) -> ParsedServerHello {
    parse_handshake(buf, &SERVER_HELLO, parse_server_body)
}

/// The handshake message of `kind` at the start of `buf`, read by `body`
/// once all its records are there.
fn parse_handshake<T>(buf: &[u8], kind: &Kind, body: fn(&[u8]) -> Option<T>) -> Parsed<T> {
    match handshake_message(buf, kind) {
        Err(Invalid) => Parsed::Invalid,
        Ok(None) => Parsed::NeedMore,
        Ok(Some(message)) => body(&message).map_or(Parsed::Invalid, Parsed::Complete),
    }
}

/// A handshake message type and the sizes its body may have.
struct Kind {
    msg_type: u8,
    sizes: std::ops::RangeInclusive<usize>,
}

const CLIENT_HELLO: Kind = Kind {
    msg_type: HANDSHAKE_CLIENT_HELLO,
    sizes: MIN_CLIENT_HELLO_LEN..=MAX_CLIENT_HELLO_LEN,
};

const SERVER_HELLO: Kind = Kind {
    msg_type: HANDSHAKE_SERVER_HELLO,
    sizes: MIN_SERVER_HELLO_LEN..=MAX_SERVER_HELLO_LEN,
};

/// Whether `buf` starts like a ClientHello: a handshake record of a TLS
/// version, whose first handshake message is a ClientHello of a plausible size.
pub(crate) fn looks_like_client_hello(buf: &[u8]) -> Option<bool> {
    looks_like(buf, &CLIENT_HELLO)
}

/// Whether `buf` starts like a handshake record of a TLS version whose
/// first message is of `kind`, of a plausible size (`None`: too few bytes
/// to tell).
fn looks_like(buf: &[u8], kind: &Kind) -> Option<bool> {
    // Each check needs one more byte than the previous one (the length
    // needs two); the second argument is the message type wanted.
    type Check = fn(&[u8], u8) -> bool;
    let checks: [(usize, Check); 6] = [
        (1, |b, _| b[0] == CONTENT_TYPE_HANDSHAKE),
        (2, |b, _| b[1] == 3),
        (3, |b, _| b[2] <= 4),
        (5, |b, _| {
            (4..=MAX_RECORD_LEN + 256).contains(&usize::from(u16::from_be_bytes([b[3], b[4]])))
        }),
        (6, |b, msg_type| b[5] == msg_type),
        (9, |_, _| true),
    ];
    for (need, check) in checks {
        if buf.len() < need {
            return None;
        }
        if !check(buf, kind.msg_type) {
            return Some(false);
        }
    }
    let len = usize::from(buf[6]) << 16 | usize::from(buf[7]) << 8 | usize::from(buf[8]);
    Some(kind.sizes.contains(&len))
}

struct Invalid;

/// The body of the handshake message of `kind` at the start of `buf` (after
/// the 4-byte handshake header), reassembled from as many handshake records
/// as it spans; `Ok(None)` if not all are buffered.
fn handshake_message<'a>(buf: &'a [u8], kind: &Kind) -> Result<Option<Cow<'a, [u8]>>, Invalid> {
    match looks_like(buf, kind) {
        None => return Ok(None),
        Some(false) => return Err(Invalid),
        Some(true) => {}
    }
    let msg_len = usize::from(buf[6]) << 16 | usize::from(buf[7]) << 8 | usize::from(buf[8]);
    let first_len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    let first = &buf[5..];
    if first_len >= 4 + msg_len {
        // The common case: the whole message is in the first record.
        return Ok(first.get(4..4 + msg_len).map(Cow::Borrowed));
    }
    // Fragmented: gather the payloads of consecutive handshake records.
    let mut body = Vec::with_capacity(msg_len);
    let mut rest = buf;
    let mut skip = 4; // the handshake header, in the first record
    while body.len() < msg_len {
        let Some(header) = rest.get(..5) else {
            return Ok(None);
        };
        if header[0] != CONTENT_TYPE_HANDSHAKE || header[1] != 3 {
            return Err(Invalid);
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > MAX_RECORD_LEN + 256 {
            return Err(Invalid);
        }
        let Some(payload) = rest.get(5..5 + len) else {
            return Ok(None);
        };
        let payload = payload.get(skip..).ok_or(Invalid)?;
        skip = 0;
        let want = msg_len - body.len();
        body.extend_from_slice(&payload[..payload.len().min(want)]);
        rest = &rest[5 + len..];
    }
    Ok(Some(Cow::Owned(body)))
}

/// A cursor over big-endian, length-prefixed TLS structures.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a 1-byte length prefix.
    fn vec8(&mut self) -> Option<Reader<'a>> {
        let n = self.u8()?;
        self.take(usize::from(n)).map(Reader)
    }

    /// A vector with a 2-byte length prefix.
    fn vec16(&mut self) -> Option<Reader<'a>> {
        let n = self.u16()?;
        self.take(usize::from(n)).map(Reader)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn parse_body(body: &[u8]) -> Option<ClientHello> {
    let mut r = Reader(body);
    let legacy_version = r.u16()?;
    r.take(32)?; // random
    let session_id = r.vec8()?;
    if session_id.0.len() > 32 {
        return None;
    }
    let suites = r.vec16()?;
    if suites.0.is_empty() || suites.0.len() % 2 != 0 {
        return None;
    }
    r.vec8()?; // compression methods
    let mut hello = ClientHello::default();
    if !r.is_empty() {
        let mut exts = r.vec16()?;
        while !exts.is_empty() {
            let ty = exts.u16()?;
            let mut data = exts.vec16()?;
            match ty {
                EXT_SERVER_NAME => hello.server_name = parse_sni(&mut data)?,
                EXT_ALPN => {
                    let mut list = data.vec16()?;
                    while !list.is_empty() {
                        hello.alpn.push(list.vec8()?.0.to_vec());
                    }
                }
                EXT_SUPPORTED_VERSIONS => {
                    let mut list = data.vec8()?;
                    while !list.is_empty() {
                        hello.versions.push(list.u16()?);
                    }
                }
                _ => {}
            }
        }
    }
    if hello.versions.is_empty() {
        hello.versions.push(legacy_version);
    }
    Some(hello)
}

fn parse_server_body(body: &[u8]) -> Option<ServerHello> {
    let mut r = Reader(body);
    let legacy_version = r.u16()?;
    let random = r.take(32)?;
    let session_id = r.vec8()?;
    if session_id.0.len() > 32 {
        return None;
    }
    let mut hello = ServerHello {
        version: legacy_version,
        cipher_suite: r.u16()?,
        alpn: None,
        hello_retry_request: random == HELLO_RETRY_REQUEST_RANDOM,
    };
    r.u8()?; // compression method
    if !r.is_empty() {
        let mut exts = r.vec16()?;
        while !exts.is_empty() {
            let ty = exts.u16()?;
            let mut data = exts.vec16()?;
            match ty {
                EXT_ALPN => {
                    // RFC 7301 3.1: the server's list holds exactly one name.
                    let mut list = data.vec16()?;
                    let name = list.vec8()?;
                    if name.0.is_empty() || !list.is_empty() {
                        return None;
                    }
                    hello.alpn = Some(name.0.to_vec());
                }
                EXT_SUPPORTED_VERSIONS => hello.version = data.u16()?,
                _ => {}
            }
        }
    }
    r.is_empty().then_some(hello)
}

/// The host_name entry of a server_name extension (RFC 6066 3).
fn parse_sni(data: &mut Reader<'_>) -> Option<Option<String>> {
    let mut list = data.vec16()?;
    while !list.is_empty() {
        let name_type = list.u8()?;
        let name = list.vec16()?;
        if name_type == 0 {
            let name = std::str::from_utf8(name.0).ok()?;
            return Some(Some(name.to_owned()));
        }
    }
    Some(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello with SNI, ALPN and supported_versions, built by
    /// hand so that fragmentation can be tested on a known layout.
    fn hello_record(sni: &str, alpn: &[&[u8]]) -> Vec<u8> {
        fn vec16(v: &[u8]) -> Vec<u8> {
            let mut out = (v.len() as u16).to_be_bytes().to_vec();
            out.extend_from_slice(v);
            out
        }
        let mut sni_entry = vec![0u8];
        sni_entry.extend(vec16(sni.as_bytes()));
        let mut alpn_list = Vec::new();
        for p in alpn {
            alpn_list.push(p.len() as u8);
            alpn_list.extend_from_slice(p);
        }
        let mut exts = Vec::new();
        exts.extend([0, 0]);
        exts.extend(vec16(&vec16(&sni_entry)));
        exts.extend([0, 16]);
        exts.extend(vec16(&vec16(&alpn_list)));
        exts.extend([0, 43]);
        exts.extend(vec16(&[4, 0x03, 0x04, 0x03, 0x03]));
        let mut body = vec![0x03, 0x03];
        body.extend([7u8; 32]);
        body.push(0);
        body.extend(vec16(&[0x13, 0x01]));
        body.extend([1, 0]);
        body.extend(vec16(&exts));
        let mut hs = vec![1, 0];
        hs.extend((body.len() as u16).to_be_bytes());
        hs.extend(body);
        let mut rec = vec![22, 3, 1];
        rec.extend(vec16(&hs));
        rec
    }

    #[test]
    fn parses_sni_alpn_versions() {
        let rec = hello_record("example.com", &[b"h2", b"http/1.1"]);
        let ParsedHello::Complete(hello) = parse_client_hello(&rec) else {
            panic!("not complete");
        };
        assert_eq!(hello.server_name.as_deref(), Some("example.com"));
        assert_eq!(hello.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert_eq!(hello.versions, vec![0x0304, 0x0303]);
    }

    #[test]
    fn every_strict_prefix_needs_more() {
        let rec = hello_record("a.example", &[b"h2"]);
        for n in 0..rec.len() {
            assert_eq!(
                parse_client_hello(&rec[..n]),
                ParsedHello::NeedMore,
                "n={n}"
            );
        }
    }

    #[test]
    fn fragmented_across_records() {
        let rec = hello_record("split.example", &[b"http/1.1"]);
        let hs = &rec[5..];
        // Re-frame the handshake message as records of 7 bytes each.
        let mut frag = Vec::new();
        for chunk in hs.chunks(7) {
            frag.extend([22, 3, 1, 0, chunk.len() as u8]);
            frag.extend_from_slice(chunk);
        }
        let ParsedHello::Complete(hello) = parse_client_hello(&frag) else {
            panic!("not complete");
        };
        assert_eq!(hello.server_name.as_deref(), Some("split.example"));
        for n in 0..frag.len() {
            assert_eq!(
                parse_client_hello(&frag[..n]),
                ParsedHello::NeedMore,
                "n={n}"
            );
        }
    }

    /// ServerHellos of `openssl s_server` (OpenSSL 3.0.19), captured by a
    /// relay between it and `openssl s_client` (testdata/README.md).
    #[test]
    fn server_hellos_of_a_real_server() {
        let fixture = |name: &str| {
            std::fs::read(format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
        };
        // TLS 1.3: the version from supported_versions (the legacy field
        // says 1.2); the ALPN choice is encrypted, so not seen.
        let tls13 = fixture("server_hello_openssl_tls13_h2.bin");
        let Parsed::Complete(hello) = parse_server_hello(&tls13) else {
            panic!("not complete");
        };
        assert_eq!(hello.version, 0x0304);
        assert_eq!(tls_version_name(hello.version), Some("1.3"));
        assert_eq!(hello.cipher_suite, 0x1302);
        assert_eq!(hello.alpn, None);
        assert!(!hello.hello_retry_request);
        // TLS 1.2: the legacy version, and ALPN in the ServerHello.
        let tls12 = fixture("server_hello_openssl_tls12_http11.bin");
        let Parsed::Complete(hello) = parse_server_hello(&tls12) else {
            panic!("not complete");
        };
        assert_eq!((hello.version, hello.cipher_suite), (0x0303, 0xc02c));
        assert_eq!(hello.alpn.as_deref(), Some(&b"http/1.1"[..]));
        assert_eq!(tls_version_name(hello.version), Some("1.2"));
        // Every strict prefix needs more; a ClientHello is not a ServerHello.
        for rec in [&tls13, &tls12] {
            for n in 0..rec.len() {
                assert_eq!(parse_server_hello(&rec[..n]), Parsed::NeedMore, "n={n}");
            }
        }
        let client = hello_record("a.example", &[b"h2"]);
        assert_eq!(parse_server_hello(&client), Parsed::Invalid);
        assert_eq!(parse_client_hello(&tls13), Parsed::Invalid);
        // Fragmented into records of 9 bytes: the same answer.
        let mut frag = Vec::new();
        for chunk in tls12[5..].chunks(9) {
            frag.extend([22, 3, 3, 0, chunk.len() as u8]);
            frag.extend_from_slice(chunk);
        }
        assert_eq!(parse_server_hello(&frag), parse_server_hello(&tls12));
        // A HelloRetryRequest is told apart by its random.
        let mut hrr = tls13.clone();
        hrr[11..43].copy_from_slice(&HELLO_RETRY_REQUEST_RANDOM);
        let Parsed::Complete(hello) = parse_server_hello(&hrr) else {
            panic!("not complete");
        };
        assert!(hello.hello_retry_request);
        // Trailing bytes inside the message, or two ALPN names: invalid.
        let mut long = tls12.clone();
        long[8] += 1; // the handshake length now claims one more byte
        long[4] += 1; // and the record carries it
        long.push(0);
        assert_eq!(parse_server_hello(&long), Parsed::Invalid);
    }

    #[test]
    fn invalid_inputs() {
        assert_eq!(
            parse_client_hello(b"\x16\x03\x01\x00\x05\x02"),
            ParsedHello::Invalid
        );
        assert_eq!(parse_client_hello(b"\x17\x03\x03"), ParsedHello::Invalid);
        let mut rec = hello_record("x", &[]);
        // The extensions length (after 5 + 4 + 2 + 32 + 1 + 4 + 2 header and
        // fixed bytes) now overruns the message.
        rec[50] = 0xff;
        assert_eq!(parse_client_hello(&rec), ParsedHello::Invalid);
    }
}
