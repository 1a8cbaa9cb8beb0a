//! Lowercase hex ids, the one id syntax every format shares.

const HEX: &[u8; 16] = b"0123456789abcdef";

/// 1 to 32 lowercase hex digits. Every format here specifies lowercase hex;
/// uppercase is malformed.
pub(super) fn hex(v: &[u8]) -> Option<u128> {
    if v.is_empty() || v.len() > 32 {
        return None;
    }
    let mut n: u128 = 0;
    for &b in v {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        n = n << 4 | u128::from(digit);
    }
    Some(n)
}

/// Writes `v` as `dst.len()` lowercase hex digits, zero-padded on the left.
pub(super) fn put_hex(dst: &mut [u8], mut v: u128) {
    // Two digits (a byte) per step, from the right: run for every injected
    // header of every request.
    let mut pairs = dst.rchunks_exact_mut(2);
    for pair in &mut pairs {
        let byte = (v & 0xff) as usize;
        pair[0] = HEX[byte >> 4];
        pair[1] = HEX[byte & 0xf];
        v >>= 8;
    }
    // An odd length: the leading digit.
    if let [first] = pairs.into_remainder() {
        *first = HEX[(v & 0xf) as usize];
    }
}

/// Writes a B3/Jaeger trace id at the start of `buf`: 16 digits when the
/// upper half is zero, so a 64-bit trace stays 64-bit, else 32. Returns the
/// length written.
pub(super) fn put_trace_id(buf: &mut [u8], trace_id: u128) -> usize {
    let n = if trace_id >> 64 == 0 { 16 } else { 32 };
    put_hex(&mut buf[..n], trace_id);
    n
}
