//! `parse_server_hello` never panics, and a complete ServerHello is read
//! from the bytes it spans and nothing else:
//! - no strict prefix of the shortest complete prefix parses as complete,
//!   and every longer prefix gives the same `ServerHello` (the records
//!   after it, a certificate or encrypted data, change nothing);
//! - its fields are consistent: a chosen ALPN protocol of 1 to 255 bytes
//!   that fits in the bytes read; a HelloRetryRequest only when the
//!   message carries its fixed random (RFC 8446 4.1.3).
#![no_main]

use l7inspect_detect::{ParsedServerHello, parse_server_hello};
use libfuzzer_sys::fuzz_target;

/// SHA-256 of "HelloRetryRequest", the random of a HelloRetryRequest.
const HRR: [u8; 2] = [0xcf, 0x21];

fuzz_target!(|data: &[u8]| {
    let ParsedServerHello::Complete(whole) = parse_server_hello(data) else {
        return;
    };
    let first = (0..=data.len())
        .find(|&n| {
            matches!(
                parse_server_hello(&data[..n]),
                ParsedServerHello::Complete(_)
            )
        })
        .expect("the whole input is complete");
    for n in 0..first {
        assert_eq!(
            parse_server_hello(&data[..n]),
            ParsedServerHello::NeedMore,
            "prefix {n}"
        );
    }
    for n in first..data.len() {
        assert_eq!(
            parse_server_hello(&data[..n]),
            ParsedServerHello::Complete(whole.clone()),
            "prefix {n}"
        );
    }
    if let Some(alpn) = &whole.alpn {
        assert!(
            (1..=255).contains(&alpn.len()) && alpn.len() < first,
            "{whole:?}"
        );
    }
    if whole.hello_retry_request {
        // The random's first bytes appear in the input (possibly split
        // by a record boundary, so only the start is looked for).
        assert!(data[..first].windows(2).any(|w| w == HRR), "{whole:?}");
    }
});
