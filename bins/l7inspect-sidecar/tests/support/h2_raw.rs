//! Raw HTTP/2 frames (RFC 9113 section 4.1), for tests that play a client
//! no library would be: resets right after each request, acknowledgements
//! of pings never sent, frames that break the protocol. Include it with
//! `#[path = "support/h2_raw.rs"] mod h2_raw;`.

#![allow(dead_code)]

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types.
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;

/// Flags.
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// The `CANCEL` error code of RST_STREAM.
pub const CANCEL: u32 = 0x8;

/// One frame: the 9-byte header (length, type, flags, stream) and `payload`.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("a frame under 16 MiB");
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The preface and an empty SETTINGS frame: what a client sends first.
pub fn client_start() -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out
}

/// `GET http://a/` as a HEADERS frame on `stream`, from HPACK's static
/// table (`:method GET`, `:scheme http`, `:path /`) and a literal
/// `:authority: a`.
pub fn get(stream: u32, end_stream: bool) -> Vec<u8> {
    let block = [0x82, 0x86, 0x84, 0x41, 0x01, b'a'];
    let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
    frame(HEADERS, flags, stream, &block)
}

/// RST_STREAM(CANCEL) on `stream`.
pub fn cancel(stream: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &CANCEL.to_be_bytes())
}

/// A rapid-reset connection (CVE-2023-44487): the start, then `n`
/// requests, each cancelled at once.
pub fn rapid_reset(n: u32) -> Vec<u8> {
    let mut out = client_start();
    for i in 0..n {
        let stream = 2 * i + 1;
        out.extend(get(stream, false));
        out.extend(cancel(stream));
    }
    out
}

/// The start, then `n` PING acknowledgements the server never asked for.
pub fn unsolicited_ping_acks(n: u32) -> Vec<u8> {
    let mut out = client_start();
    for i in 0..n {
        out.extend(frame(PING, ACK, 0, &u64::from(i).to_be_bytes()));
    }
    out
}
