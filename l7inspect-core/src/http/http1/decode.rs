//! Reading a server's HTTP/1 response: the head ([`parse_head`]) and the
//! framing of its body ([`Framing`], [`BodyDecoder`]), per RFC 9112 6.3.
//!
//! Everything works on the connection's read buffer: a head is parsed where
//! it was read, and body data is split off that buffer as `Bytes` without a
//! copy.

use bytes::{Buf, Bytes, BytesMut};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version, header,
    response::Parts,
};
use std::mem::MaybeUninit;

/// The most header fields a response head may have (hyper's and Envoy's
/// default).
pub(crate) const MAX_HEADERS: usize = 100;
/// The largest response head, or trailer section, in bytes: hyper's client
/// limit (8 KiB and 4 KiB per header field), which the proxy used before it
/// had a client of its own; past it the response is refused with a 502.
pub(crate) const MAX_HEAD: usize = 8192 + 4096 * MAX_HEADERS;

/// Why a response could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    /// The head is not HTTP/1 (httparse's reason).
    #[error("invalid response head: {0}")]
    Head(httparse::Error),
    /// The head or a trailer section is larger than [`MAX_HEAD`].
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// `Content-Length` is not one number.
    #[error("invalid content-length")]
    ContentLength,
    /// A `101 Switching Protocols` the request did not ask for.
    #[error("unexpected 101 Switching Protocols")]
    UnexpectedSwitch,
    /// The chunked framing is malformed.
    #[error("invalid chunked framing: {0}")]
    Chunked(&'static str),
    /// The server closed the connection before the body's framing ended
    /// (a `Content-Length` or chunked body cut short).
    #[error("upstream closed the connection before the body ended")]
    Truncated,
}

/// How the body of a response is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body: a response to `HEAD`, a `204` or a `304`.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Everything until the server closes the connection.
    UntilClose,
    /// The connection becomes a tunnel: `101` to an upgrade, `2xx` to `CONNECT`.
    Tunnel,
}

/// A parsed response head.
#[derive(Debug)]
pub(crate) struct Head {
    /// Status, version and headers (hop-by-hop ones included: the caller
    /// removes them).
    pub(crate) parts: Parts,
    /// How the body is delimited.
    pub(crate) framing: Framing,
    /// The connection can carry another request after this exchange.
    pub(crate) keep_alive: bool,
}

/// Parses one response head from the front of `buf`, removing it. `None`:
/// more bytes are needed. Informational responses (`1xx` other than `101`)
/// are skipped, as hyper's client does; a `100 Continue` among them sets
/// `continued` (the request body may go: see `client`).
pub(crate) fn parse_head(
    buf: &mut BytesMut,
    method: &Method,
    upgrade: bool,
    continued: &mut bool,
) -> Result<Option<Head>, DecodeError> {
    loop {
        // The head is found first and split off, then parsed where it is:
        // header values become shared slices of it, and httparse's slots
        // need no zeroing (a 3 KiB memset per response otherwise).
        let Some(len) = head_end(buf) else {
            if buf.len() > MAX_HEAD {
                return Err(DecodeError::HeadTooLarge);
            }
            return Ok(None);
        };
        if len > MAX_HEAD {
            return Err(DecodeError::HeadTooLarge);
        }
        let head = buf.split_to(len).freeze();
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut resp, &head, &mut slots)
        {
            Ok(httparse::Status::Complete(n)) if n == len => {}
            // The end found above is the end httparse finds, or the head is
            // not one.
            Ok(_) => return Err(DecodeError::Head(httparse::Error::Token)),
            Err(e) => return Err(DecodeError::Head(e)),
        }
        let code = resp.code.unwrap_or_default();
        let status =
            StatusCode::from_u16(code).map_err(|_| DecodeError::Head(httparse::Error::Status))?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            *continued |= status == StatusCode::CONTINUE;
            continue;
        }
        let version = if resp.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let mut headers = HeaderMap::with_capacity(resp.headers.len());
        for h in resp.headers.iter() {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| DecodeError::Head(httparse::Error::HeaderName))?;
            let value = HeaderValue::from_maybe_shared(head.slice_ref(h.value))
                .map_err(|_| DecodeError::Head(httparse::Error::HeaderValue))?;
            headers.append(name, value);
        }
        let reason = resp
            .reason
            .filter(|r| Some(*r) != status.canonical_reason());
        let (framing, mut keep_alive) = framing(method, status, version, &headers, upgrade)?;
        keep_alive &= connection_keep_alive(version, &headers);
        let mut resp = Response::new(());
        // A reason phrase other than the usual one goes on to the client as
        // the server wrote it (hyper's server writes this extension).
        if let Some(phrase) = reason
            .and_then(|r| hyper::ext::ReasonPhrase::try_from(head.slice_ref(r.as_bytes())).ok())
        {
            resp.extensions_mut().insert(phrase);
        }
        *resp.status_mut() = status;
        *resp.version_mut() = version;
        *resp.headers_mut() = headers;
        let (parts, ()) = resp.into_parts();
        return Ok(Some(Head {
            parts,
            framing,
            keep_alive,
        }));
    }
}

/// The length of the head at the front of `buf` (through the empty line
/// that ends it, CRLF or bare LF), if it is all there.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    loop {
        let lf = from + buf[from..].iter().position(|&b| b == b'\n')?;
        match (buf.get(lf + 1), buf.get(lf + 2)) {
            (Some(b'\n'), _) => return Some(lf + 2),
            (Some(b'\r'), Some(b'\n')) => return Some(lf + 3),
            (None, _) | (Some(b'\r'), None) => return None,
            _ => from = lf + 1,
        }
    }
}

/// The body's framing (RFC 9112 6.3), and whether it leaves the connection
/// reusable as far as framing goes.
fn framing(
    method: &Method,
    status: StatusCode,
    version: Version,
    headers: &HeaderMap,
    upgrade: bool,
) -> Result<(Framing, bool), DecodeError> {
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return if upgrade {
            Ok((Framing::Tunnel, false))
        } else {
            Err(DecodeError::UnexpectedSwitch)
        };
    }
    if *method == Method::CONNECT && status.is_success() {
        return Ok((Framing::Tunnel, false));
    }
    if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Empty, true));
    }
    let mut te = headers.get_all(header::TRANSFER_ENCODING).iter().peekable();
    if te.peek().is_some() && version == Version::HTTP_11 {
        // Chunked only when it is the final coding; anything else is read
        // until the close. With Content-Length too, Transfer-Encoding wins
        // and the connection is not reused (RFC 9112 6.1).
        let chunked_last = te
            .last()
            .and_then(|v| v.as_bytes().rsplit(|&b| b == b',').next())
            .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        let reusable = chunked_last && !headers.contains_key(header::CONTENT_LENGTH);
        return Ok(if chunked_last {
            (Framing::Chunked, reusable)
        } else {
            (Framing::UntilClose, false)
        });
    }
    match content_length(headers)? {
        Some(len) => Ok((Framing::Length(len), true)),
        None => Ok((Framing::UntilClose, false)),
    }
}

/// The `Content-Length`, if any: every field and every comma-separated
/// value in them must be the same number (RFC 9110 8.6).
pub(crate) fn content_length(headers: &HeaderMap) -> Result<Option<u64>, DecodeError> {
    let mut found = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                return Err(DecodeError::ContentLength);
            }
            let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            match found {
                Some(seen) if seen != n => return Err(DecodeError::ContentLength),
                _ => found = Some(n),
            }
        }
    }
    Ok(found)
}

/// Whether the `Connection` header and the version let the connection carry
/// another exchange: HTTP/1.1 unless `close`, HTTP/1.0 only with `keep-alive`.
fn connection_keep_alive(version: Version, headers: &HeaderMap) -> bool {
    let mut close = false;
    let mut keep_alive = false;
    for value in headers.get_all(header::CONNECTION) {
        for token in value.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            close |= token.eq_ignore_ascii_case(b"close");
            keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
        }
    }
    !close && (version == Version::HTTP_11 || keep_alive)
}

/// What [`BodyDecoder::decode`] found in the buffer.
#[derive(Debug)]
pub(crate) enum Decoded {
    /// A piece of the body.
    Data(Bytes),
    /// The trailer section that ends a chunked body.
    Trailers(HeaderMap),
    /// The body is complete.
    End,
    /// More bytes are needed.
    Incomplete,
}

/// Splits a body off the connection's read buffer as it arrives.
#[derive(Debug)]
pub(crate) struct BodyDecoder {
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// This many bytes of a `Content-Length` body are still to come.
    Length(u64),
    /// Chunked: at a chunk-size line.
    ChunkSize,
    /// Chunked: in a chunk's data, this many bytes still to come.
    ChunkData(u64),
    /// Chunked: the CRLF after a chunk's data.
    ChunkEnd,
    /// Chunked: the trailer section after the last chunk.
    Trailers,
    /// Until the connection closes.
    UntilClose,
    Done,
}

impl BodyDecoder {
    /// A decoder for `framing` (not a tunnel).
    pub(crate) fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Tunnel | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::UntilClose => State::UntilClose,
        };
        Self { state }
    }

    /// The body is complete.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The bytes still to come, when the framing says.
    pub(crate) fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// Takes the next piece of the body from the front of `buf`.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, DecodeError> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::End),
                State::Length(n) | State::ChunkData(n) => {
                    if buf.is_empty() {
                        return Ok(Decoded::Incomplete);
                    }
                    let take = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
                    let data = buf.split_to(take).freeze();
                    let left = n - take as u64;
                    self.state = match self.state {
                        State::Length(_) if left == 0 => State::Done,
                        State::Length(_) => State::Length(left),
                        _ if left == 0 => State::ChunkEnd,
                        _ => State::ChunkData(left),
                    };
                    return Ok(Decoded::Data(data));
                }
                State::UntilClose => {
                    if buf.is_empty() {
                        return Ok(Decoded::Incomplete);
                    }
                    return Ok(Decoded::Data(buf.split().freeze()));
                }
                State::ChunkSize => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Decoded::Incomplete);
                    };
                    let size = chunk_size(&line)?;
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::Incomplete);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(DecodeError::Chunked("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.state = State::ChunkSize;
                }
                State::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        self.state = State::Done;
                        return Ok(Decoded::End);
                    }
                    let Some(trailers) = parse_trailers(buf)? else {
                        return Ok(Decoded::Incomplete);
                    };
                    self.state = State::Done;
                    return Ok(Decoded::Trailers(trailers));
                }
            }
        }
    }

    /// The connection ended: fine for a body read until the close, an
    /// error for any other unfinished body.
    pub(crate) fn eof(&mut self) -> Result<(), DecodeError> {
        match self.state {
            State::UntilClose | State::Done => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err(DecodeError::Truncated),
        }
    }
}

/// One CRLF-terminated line from the front of `buf` (without the CRLF), or
/// `None` if it is not complete yet. A chunk-size line with extensions is
/// bounded like a head.
fn take_line(buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(lf) => {
            let line = buf.split_to(lf + 1);
            let Some(line) = line.strip_suffix(b"\r\n") else {
                return Err(DecodeError::Chunked("line not ended by CRLF"));
            };
            Ok(Some(Bytes::copy_from_slice(line)))
        }
        None if buf.len() > MAX_HEAD => Err(DecodeError::Chunked("chunk-size line too long")),
        None => Ok(None),
    }
}

/// The size of a chunk from its size line (`1a;name=value`).
fn chunk_size(line: &[u8]) -> Result<u64, DecodeError> {
    let end = line.iter().position(|&b| b == b';').unwrap_or(line.len());
    let digits = line[..end].trim_ascii_end();
    if digits.is_empty() || digits.len() > 15 {
        return Err(DecodeError::Chunked("invalid chunk size"));
    }
    digits.iter().try_fold(0u64, |n, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            b'A'..=b'F' => d - b'A' + 10,
            _ => return Err(DecodeError::Chunked("invalid chunk size")),
        };
        Ok(n << 4 | u64::from(v))
    })
}

/// A non-empty trailer section from the front of `buf` (through its final
/// empty line), or `None` if it is not complete yet.
fn parse_trailers(buf: &mut BytesMut) -> Result<Option<HeaderMap>, DecodeError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (len, fields) = match httparse::parse_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete((len, fields))) => (len, fields),
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(DecodeError::HeadTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(DecodeError::Chunked("invalid trailer section")),
    };
    let mut trailers = HeaderMap::with_capacity(fields.len());
    for h in fields.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| DecodeError::Chunked("invalid trailer name"))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| DecodeError::Chunked("invalid trailer value"))?;
        trailers.append(name, value);
    }
    buf.advance(len);
    Ok(Some(trailers))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str, method: Method) -> Result<Option<Head>, DecodeError> {
        parse_head(&mut BytesMut::from(raw), &method, false, &mut false)
    }

    fn framing_of(raw: &str, method: Method) -> (Framing, bool) {
        let h = head(raw, method).unwrap().unwrap();
        (h.framing, h.keep_alive)
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let get = Method::GET;
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", get.clone()),
            (Framing::Length(5), true)
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", Method::HEAD),
            (Framing::Empty, true)
        );
        assert_eq!(
            framing_of("HTTP/1.1 204 No Content\r\n\r\n", get.clone()),
            (Framing::Empty, true)
        );
        assert_eq!(
            framing_of(
                "HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
                get.clone()
            ),
            (Framing::Empty, true)
        );
        assert_eq!(
            framing_of(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
                get.clone()
            ),
            (Framing::Chunked, true)
        );
        // Both: Transfer-Encoding wins, and the connection is not reused.
        assert_eq!(
            framing_of(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
                get.clone()
            ),
            (Framing::Chunked, false)
        );
        assert_eq!(
            framing_of(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
                get.clone()
            ),
            (Framing::UntilClose, false)
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\n\r\n", get.clone()),
            (Framing::UntilClose, false)
        );
        assert_eq!(
            framing_of(
                "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
                get.clone()
            ),
            (Framing::Length(0), false)
        );
        assert_eq!(
            framing_of("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", get.clone()),
            (Framing::Length(1), false)
        );
        assert_eq!(
            framing_of(
                "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\n",
                get
            ),
            (Framing::Length(1), true)
        );
        assert_eq!(
            framing_of(
                "HTTP/1.1 200 Connection established\r\n\r\n",
                Method::CONNECT
            ),
            (Framing::Tunnel, false)
        );
    }

    #[test]
    fn bad_content_length_and_unasked_switch_are_errors() {
        for raw in [
            "HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(head(raw, Method::GET).is_err(), "{raw:?}");
        }
        assert_eq!(
            framing_of(
                "HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\n\r\n",
                Method::GET
            ),
            (Framing::Length(7), true)
        );
    }

    #[test]
    fn informational_responses_are_skipped_and_a_partial_head_waits() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
        );
        let h = parse_head(&mut buf, &Method::POST, false, &mut false)
            .unwrap()
            .unwrap();
        assert_eq!(h.parts.status, StatusCode::CREATED);
        assert_eq!(&buf[..], b"ok");
        let mut partial = BytesMut::from("HTTP/1.1 200 OK\r\ncontent-len");
        assert!(
            parse_head(&mut partial, &Method::GET, false, &mut false)
                .unwrap()
                .is_none()
        );
        let mut huge = BytesMut::from(&b"HTTP/1.1 200 OK\r\nx: "[..]);
        huge.extend(std::iter::repeat_n(b'a', MAX_HEAD));
        assert!(matches!(
            parse_head(&mut huge, &Method::GET, false, &mut false),
            Err(DecodeError::HeadTooLarge)
        ));
    }

    #[test]
    fn head_keeps_names_values_and_order() {
        let h = head(
            "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-Odd: v\r\nset-cookie: b=2\r\n\r\n",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        let cookies: Vec<_> = h.parts.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(h.parts.headers["x-odd"], "v");
        assert_eq!(h.parts.version, Version::HTTP_11);
    }

    /// Feeds `wire` to a decoder `step` bytes at a time, collecting the body
    /// and trailers.
    fn decode_all(
        framing: Framing,
        wire: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, Option<HeaderMap>, usize), DecodeError> {
        let mut dec = BodyDecoder::new(framing);
        let mut buf = BytesMut::new();
        let (mut body, mut trailers, mut fed) = (Vec::new(), None, 0);
        loop {
            match dec.decode(&mut buf)? {
                Decoded::Data(d) => body.extend_from_slice(&d),
                Decoded::Trailers(t) => trailers = Some(t),
                Decoded::End => return Ok((body, trailers, buf.len() + wire.len() - fed)),
                Decoded::Incomplete if fed == wire.len() => {
                    dec.eof()?;
                    return Ok((body, trailers, 0));
                }
                Decoded::Incomplete => {
                    let n = step.min(wire.len() - fed);
                    buf.extend_from_slice(&wire[fed..fed + n]);
                    fed += n;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_sizes() {
        let wire = b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\ngrpc-status: 0\r\nx-t: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, 64, wire.len()] {
            let (body, trailers, left) = decode_all(Framing::Chunked, wire, step).unwrap();
            assert_eq!(body, b"helloabcdefghijklmnopqrstuvwxyz", "step {step}");
            let t = trailers.unwrap();
            assert_eq!(t["grpc-status"], "0");
            assert_eq!(t["x-t"], "1");
            // The next response's bytes are left alone.
            assert_eq!(left, 4, "step {step}");
        }
        let (body, trailers, left) =
            decode_all(Framing::Chunked, b"3\r\nabc\r\n0\r\n\r\n", 1).unwrap();
        assert_eq!(
            (body.as_slice(), trailers.is_none(), left),
            (&b"abc"[..], true, 0)
        );
    }

    #[test]
    fn malformed_chunked_framing_is_an_error() {
        for wire in [
            &b"zz\r\nabc\r\n0\r\n\r\n"[..],
            b"3\r\nabcX\r\n0\r\n\r\n",
            b"3\nabc\r\n0\r\n\r\n",
            b"\r\n",
            b"fffffffffffffffff\r\n",
            b"3\r\nab",
        ] {
            assert!(decode_all(Framing::Chunked, wire, 1).is_err(), "{wire:?}");
        }
    }

    #[test]
    fn length_and_close_delimited_bodies() {
        let (body, _, left) = decode_all(Framing::Length(5), b"hello, next", 3).unwrap();
        assert_eq!((body.as_slice(), left), (&b"hello"[..], 6));
        assert!(decode_all(Framing::Length(5), b"hel", 1).is_err());
        let (body, _, _) = decode_all(Framing::UntilClose, b"all of it", 4).unwrap();
        assert_eq!(body, b"all of it");
        let (body, _, _) = decode_all(Framing::Empty, b"", 1).unwrap();
        assert!(body.is_empty());
    }
}
