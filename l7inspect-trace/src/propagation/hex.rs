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
    for b in dst.iter_mut().rev() {
        *b = HEX[(v & 0xf) as usize];
        v >>= 4;
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
