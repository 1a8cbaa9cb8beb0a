//! `parse_client_hello` never panics, and a complete ClientHello is read
//! from the bytes it spans and nothing else:
//! - no strict prefix of the shortest complete prefix parses as complete
//!   (everything before it needs more), and every longer prefix gives the
//!   same `ClientHello`: bytes after the message (the client's next
//!   records) change nothing, and the parser never needed them;
//! - its fields are consistent: at least one version, a server name and
//!   ALPN names that fit in the bytes read, ALPN names of 1 to 255 bytes
//!   (RFC 7301 allows no empty name, but a lenient parser may pass one
//!   through: only the length bound is checked);
//! - detection agrees: the bytes of a complete ClientHello are TLS.
#![no_main]

use l7inspect_detect::{Detection, ParsedHello, Protocol, detect, parse_client_hello};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let ParsedHello::Complete(whole) = parse_client_hello(data) else {
        return;
    };
    let first = (0..=data.len())
        .find(|&n| matches!(parse_client_hello(&data[..n]), ParsedHello::Complete(_)))
        .expect("the whole input is complete");
    for n in 0..first {
        assert_eq!(
            parse_client_hello(&data[..n]),
            ParsedHello::NeedMore,
            "prefix {n}"
        );
    }
    for n in first..data.len() {
        assert_eq!(
            parse_client_hello(&data[..n]),
            ParsedHello::Complete(whole.clone()),
            "prefix {n}"
        );
    }
    assert!(!whole.versions.is_empty());
    let name = whole.server_name.as_ref().map_or(0, String::len);
    let alpn: usize = whole.alpn.iter().map(|p| 1 + p.len()).sum();
    assert!(
        name + alpn + 2 * whole.versions.len() <= first,
        "{whole:?} from {first} bytes"
    );
    assert!(whole.alpn.iter().all(|p| p.len() <= 255));
    assert_eq!(detect(&data[..first]), Detection::Found(Protocol::Tls));
});
