//! Packets built byte by byte, for the codec's byte-vector tests.
#![allow(dead_code, unreachable_pub)]

/// A whole packet: first byte, remaining length, body.
pub fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut n = body.len();
    loop {
        let mut b = (n & 0x7F) as u8;
        n >>= 7;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// A length-prefixed string field.
pub fn s(v: &str) -> Vec<u8> {
    raw(v.as_bytes())
}

/// A length-prefixed field of arbitrary bytes (possibly not UTF-8).
pub fn raw(v: &[u8]) -> Vec<u8> {
    let mut out = (v.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(v);
    out
}

/// The parts, one after another.
pub fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}
