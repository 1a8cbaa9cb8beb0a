//! `detect` never panics, and its answer is monotonic: every prefix of an
//! input answers `NeedMore` or the input's own answer.
#![no_main]

use l7inspect_detect::{detect, Detection};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = detect(data);
    for n in 0..data.len() {
        let part = detect(&data[..n]);
        assert!(
            part == Detection::NeedMore || part == whole,
            "prefix {n} answered {part:?}, whole input {whole:?}"
        );
    }
});
