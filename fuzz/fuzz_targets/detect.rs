//! `detect` never panics, and a definite answer is stable: when a prefix of
//! the input is `Found(p)` or `Unknown`, every longer prefix (the whole
//! input included) gives the same answer; only `NeedMore` may become
//! anything once more bytes arrive. The proxy relies on this: it decides
//! on whatever arrived first, and more bytes must not have changed it.
#![no_main]

use l7inspect_detect::{Detection, detect};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut settled: Option<(usize, Detection)> = None;
    for n in 0..=data.len() {
        let answer = detect(&data[..n]);
        match settled {
            Some((at, first)) => assert_eq!(
                answer, first,
                "{at} bytes answered {first:?}, {n} bytes answer {answer:?}"
            ),
            None if answer != Detection::NeedMore => settled = Some((n, answer)),
            None => {}
        }
    }
});
