//! The SQL helpers of the database parsers, on any statement text, in both
//! dialects, with any bound (the first input byte picks the dialect and
//! the bound, the rest is the statement):
//! - `sanitize` never panics and its output is at most the bound long;
//!   cut, it is the uncut output cut at a character boundary (the cut
//!   changes nothing else); uncut, sanitizing it again gives it back (so
//!   no literal is left in it: a literal would have become `?`);
//! - `operation` is one of the bounded set of names (it is a metric
//!   label);
//! - `collection` is a piece of the statement itself, at most
//!   `MAX_COLLECTION` bytes, and begins with a name (a letter, `_`, a
//!   non-ASCII byte or a quote);
//! - `comment_context` never panics, and a context it finds is valid.
#![no_main]

use l7inspect_trace::db::sql::{
    Dialect, KEYWORDS, MAX_COLLECTION, OTHER, collection, comment_context, operation, sanitize,
};
use libfuzzer_sys::fuzz_target;

const BOUNDS: [usize; 8] = [0, 1, 2, 3, 5, 16, 64, 2048];

fuzz_target!(|data: &[u8]| {
    let Some((&settings, query)) = data.split_first() else {
        return;
    };
    let dialect = if settings & 1 == 0 {
        Dialect::Postgres
    } else {
        Dialect::Mysql
    };
    let max = BOUNDS[usize::from(settings >> 1) % BOUNDS.len()];

    if let Some(cx) = comment_context(query) {
        assert!(cx.is_valid() && cx.is_remote());
    }

    let whole = sanitize(query, dialect, usize::MAX);
    assert_eq!(
        sanitize(whole.as_bytes(), dialect, usize::MAX),
        whole,
        "not stable"
    );
    let cut = sanitize(query, dialect, max);
    assert!(
        cut.len() <= max,
        "{} bytes over a bound of {max}",
        cut.len()
    );
    let mut expected = max.min(whole.len());
    while !whole.is_char_boundary(expected) {
        expected -= 1;
    }
    assert_eq!(cut, whole[..expected], "cut differently");

    let op = operation(query);
    assert!(op == OTHER || KEYWORDS.contains(&op), "operation {op:?}");

    if let Some(name) = collection(query, dialect) {
        assert!(!name.is_empty() && name.len() <= MAX_COLLECTION);
        let start = name.as_ptr() as usize - query.as_ptr() as usize;
        assert!(start + name.len() <= query.len(), "not in the statement");
        let first = name.as_bytes()[0];
        assert!(
            first.is_ascii_alphabetic()
                || first == b'_'
                || first >= 0x80
                || first == b'"'
                || first == b'`',
            "{name:?}"
        );
    }
});
