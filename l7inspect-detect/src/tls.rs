//! TLS ClientHello recognition and parsing (SNI, ALPN, offered versions).
//!
//! Recognition needs only the 9 bytes of record and handshake headers;
//! [`parse_client_hello`] needs the whole ClientHello, which may span several
//! handshake records (large post-quantum key shares do that). Neither copies
//! the bytes unless the ClientHello is fragmented across records.

use std::borrow::Cow;

const CONTENT_TYPE_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// RFC 8446 5.1: a record's plaintext is at most 2^14 bytes.
const MAX_RECORD_LEN: usize = 1 << 14;
/// The smallest ClientHello body: version, random, three empty length fields.
const MIN_CLIENT_HELLO_LEN: usize = 2 + 32 + 1 + 2 + 1;
/// A ClientHello we will not parse past (RFC 8446 lets it grow to 2^24 bytes,
/// but real ones are a few KiB).
const MAX_CLIENT_HELLO_LEN: usize = 64 * 1024;

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

/// The answer of [`parse_client_hello`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParsedHello {
    /// The whole ClientHello was parsed.
    Complete(ClientHello),
    /// A consistent prefix of a ClientHello: read more.
    NeedMore,
    /// Not a well-formed ClientHello.
    Invalid,
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
    let Some(body) = (match handshake_message(buf) {
        Ok(body) => body,
        Err(Invalid) => return ParsedHello::Invalid,
    }) else {
        return ParsedHello::NeedMore;
    };
    match parse_body(&body) {
        Some(hello) => ParsedHello::Complete(hello),
        None => ParsedHello::Invalid,
    }
}

/// Whether `buf` starts like a ClientHello: a handshake record of a TLS
/// version, whose first handshake message is a ClientHello of a plausible size.
pub(crate) fn looks_like_client_hello(buf: &[u8]) -> Option<bool> {
    let checks: [fn(&[u8]) -> bool; 6] = [
        |b| b[0] == CONTENT_TYPE_HANDSHAKE,
        |b| b[1] == 3,
        |b| b[2] <= 4,
        |b| (4..=MAX_RECORD_LEN + 256).contains(&usize::from(u16::from_be_bytes([b[3], b[4]]))),
        |b| b[5] == HANDSHAKE_CLIENT_HELLO,
        |_| true,
    ];
    // Each check needs one more byte than the previous one (the length needs two).
    let needs = [1, 2, 3, 5, 6, 9];
    for (check, need) in checks.iter().zip(needs) {
        if buf.len() < need {
            return None;
        }
        if !check(buf) {
            return Some(false);
        }
    }
    let len = usize::from(buf[6]) << 16 | usize::from(buf[7]) << 8 | usize::from(buf[8]);
    Some((MIN_CLIENT_HELLO_LEN..=MAX_CLIENT_HELLO_LEN).contains(&len))
}

struct Invalid;

/// The ClientHello body (after the 4-byte handshake header), reassembled from
/// as many handshake records as it spans; `Ok(None)` if not all are buffered.
fn handshake_message(buf: &[u8]) -> Result<Option<Cow<'_, [u8]>>, Invalid> {
    match looks_like_client_hello(buf) {
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
