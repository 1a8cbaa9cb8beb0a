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

/// A byte's two digits at twice its value: `00` to `ff`.
const PAIRS: [u8; 512] = {
    let mut t = [0; 512];
    let mut i = 0;
    while i < 256 {
        t[2 * i] = HEX[i >> 4];
        t[2 * i + 1] = HEX[i & 0xf];
        i += 1;
    }
    t
};

/// Writes `v` as `dst.len()` lowercase hex digits, zero-padded on the left.
pub(super) fn put_hex(dst: &mut [u8], v: u128) {
    // A byte (two digits, one table load) per step, from the right, in
    // 64-bit halves: run for every injected header of every request, and
    // 128-bit shifts cost two or three instructions each.
    let (mut lo, mut hi) = (v as u64, (v >> 64) as u64);
    let whole_bytes = dst.len() / 2;
    let mut pairs = dst.rchunks_exact_mut(2);
    for (i, pair) in (&mut pairs).enumerate() {
        let half = if i < 8 { &mut lo } else { &mut hi };
        let byte = (*half & 0xff) as usize;
        *half >>= 8;
        pair.copy_from_slice(&PAIRS[2 * byte..2 * byte + 2]);
    }
    // An odd length: the leading digit, the low nibble of the next byte.
    if let [first] = pairs.into_remainder() {
        let half = if whole_bytes < 8 { lo } else { hi };
        *first = HEX[(half & 0xf) as usize];
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
