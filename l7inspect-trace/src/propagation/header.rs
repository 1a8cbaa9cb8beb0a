//! Reading and writing header fields, the same way for every format.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// A header that must appear at most once.
pub(super) enum Single<'a> {
    Absent,
    One(&'a [u8]),
    Repeated,
}

pub(super) fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Single<'a> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Single::Absent,
        (Some(v), None) => Single::One(trim_ows(v.as_bytes())),
        (Some(_), Some(_)) => Single::Repeated,
    }
}

/// Strips RFC 9110 optional whitespace (spaces and tabs); hyper already
/// does, but a `HeaderMap` built by hand may not have.
pub(super) fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// An injected id's header value. Marked sensitive: HTTP/2 then sends it as
/// a never-indexed literal. An id is new on every request, so inserting it
/// into the HPACK table (ours and the peer's) is work for nothing that also
/// evicts the entries that do repeat; about 2.4k instructions per HTTP/2
/// request (`run.py --tests callgrind`). HTTP/1 ignores the mark.
pub(super) fn header_value(bytes: &[u8]) -> HeaderValue {
    let mut v = HeaderValue::from_bytes(bytes)
        .expect("hex digits, '-', ':' and '0'/'1' are valid header value bytes");
    v.set_sensitive(true);
    v
}
