//! Bodies of the fuzz targets, shared with the crate's tests (which run them over random and
//! mutated inputs so that totality is exercised without a fuzzer).
#![allow(dead_code)]

use deltackpt::entropy::{self, huffman, lz77, tans};

/// Symbol count for the raw-body decoders: the first two bytes, little-endian.
fn split(data: &[u8]) -> Option<(usize, &[u8])> {
    let (head, rest) = data.split_first_chunk::<2>()?;
    Some((u16::from_le_bytes(*head) as usize, rest))
}

/// Generic stream decode: must return Ok or Err, never panic; a success must have the
/// declared length and re-encode/decode consistently.
pub fn entropy_decode(data: &[u8]) {
    if let Ok(symbols) = entropy::decode(data) {
        assert_eq!(Some(symbols.len()), entropy::decoded_len(data).ok());
        let again = entropy::encode(&symbols, entropy::Coder::Auto).unwrap();
        assert_eq!(entropy::decode(&again).unwrap(), symbols);
    }
}

/// Order-0 and order-1 tANS bodies.
pub fn tans_decode(data: &[u8]) {
    if let Some((n, body)) = split(data) {
        let mut out = vec![0u8; n];
        let _ = tans::decode(body, &mut out);
        let _ = tans::decode_ctx(body, &mut out);
    }
}

/// Huffman bodies.
pub fn huffman_decode(data: &[u8]) {
    if let Some((n, body)) = split(data) {
        let mut out = vec![0u8; n];
        let _ = huffman::decode(body, &mut out);
    }
}

/// LZ77 bodies.
pub fn lz77_decode(data: &[u8]) {
    if let Some((n, body)) = split(data) {
        let mut out = vec![0u8; n];
        let _ = lz77::decode(body, &mut out);
    }
}
