//! B3 multiple headers (`X-B3-*`) from arbitrary headers:
//! the extracted context injects back to headers that extract to the same
//! context (ids and sampled flag), and any context
//! injected over the input's headers is what extraction then finds
//! (`l7inspect_fuzz::check_round_trip`). The input is a header block, one
//! `name: value` per line.
#![no_main]

use l7inspect_trace::Format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| l7inspect_fuzz::propagation_target(Format::B3Multi, data));
