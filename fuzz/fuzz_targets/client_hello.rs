//! `parse_client_hello` never panics, and no strict prefix of a complete
//! ClientHello parses as complete.
#![no_main]

use l7inspect_detect::{parse_client_hello, ParsedHello};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let ParsedHello::Complete(_) = parse_client_hello(data) {
        // Trailing bytes after the hello are allowed; find where it ends by
        // shrinking: the shortest complete prefix must be followed only by
        // complete answers, and everything before it needs more.
        let first = (0..=data.len())
            .find(|&n| matches!(parse_client_hello(&data[..n]), ParsedHello::Complete(_)))
            .expect("the whole input is complete");
        for n in 0..first {
            assert_eq!(parse_client_hello(&data[..n]), ParsedHello::NeedMore, "prefix {n}");
        }
    }
});
