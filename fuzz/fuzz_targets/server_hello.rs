//! `parse_server_hello` never panics, and no strict prefix of a complete
//! ServerHello parses as complete.
#![no_main]

use l7inspect_detect::{parse_server_hello, ParsedServerHello};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let ParsedServerHello::Complete(_) = parse_server_hello(data) {
        // As for the ClientHello: everything before the shortest complete
        // prefix needs more.
        let first = (0..=data.len())
            .find(|&n| matches!(parse_server_hello(&data[..n]), ParsedServerHello::Complete(_)))
            .expect("the whole input is complete");
        for n in 0..first {
            assert_eq!(parse_server_hello(&data[..n]), ParsedServerHello::NeedMore, "prefix {n}");
        }
    }
});
