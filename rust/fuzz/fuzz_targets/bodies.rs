//! Bodies of the fuzz targets, shared with the crate's tests (which run them over random and
//! mutated inputs so that totality is exercised without a fuzzer).
#![allow(dead_code)]

use deltackpt::entropy::{self, huffman, lz77, runlit, tans};
use deltackpt::{DType, Header, Quantizer};

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

/// Run-split bodies (their nested run list and literal bodies reach every chunk method).
pub fn runlit_decode(data: &[u8]) {
    if let Some((n, body)) = split(data) {
        let mut out = vec![0u8; n];
        if runlit::decode(body, &mut out).is_ok() {
            // A body that decodes is canonical enough to re-encode to the same symbols.
            let mut again = Vec::new();
            entropy::chunks::encode_chunk(&out, entropy::chunks::Method::RunLit, &mut again);
            let mut back = vec![0u8; n];
            entropy::chunks::decode_chunk(&again, &mut back).unwrap();
            assert_eq!(back, out);
        }
    }
}

/// Largest tensor (bytes) the fuzz body decodes: a forged but well-formed blob may declare
/// gigabytes of legal RLE zeros (seeds/tensor_decode/), which is memory, not a bug.
const MAX_DECODED: u64 = 1 << 28;

/// Tensor blob decode (the container and every quantizer path): must return Ok or Err,
/// never panic, with and without a reference of a plausible length. Checksums are resealed
/// by the fuzzer-friendly variant so that mutations reach the parser behind them.
pub fn tensor_decode(data: &[u8]) {
    let small = |h: &deltackpt::Header| {
        h.numel()
            .is_ok_and(|n| n.saturating_mul(h.dtype.size() as u64) <= MAX_DECODED)
    };
    if deltackpt::inspect(data).is_ok_and(|h| small(&h)) {
        let _ = deltackpt::decode(data, None);
    }
    if data.len() > 8 {
        let body = &data[..data.len() - 8];
        let mut sealed = body.to_vec();
        sealed.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(body).to_le_bytes());
        if let Ok(h) = deltackpt::inspect(&sealed) {
            if !small(&h) {
                return;
            }
            let _ = deltackpt::decode(&sealed, None);
            if let Ok(n) = h.numel() {
                let bytes = (n as usize).saturating_mul(h.dtype.size());
                if bytes <= 1 << 20 {
                    let mut zeros = vec![0u8; bytes];
                    let _ = deltackpt::decode(&sealed, Some(&zeros));
                    let _ = deltackpt::decode_update(&sealed, &mut zeros);
                    // bounded blobs relative to a second moment (refused unless it matches)
                    let _ = deltackpt::decode_with(&sealed, None, Some(&zeros));
                }
            }
        }
    }
}

/// Lossless chunks inside a well-formed container: byte 0 picks the dtype, bytes 1..3 the
/// element count (little-endian), the rest is one chunk of plane records. Decoding must give
/// Ok or a typed error, with and without a (zero) reference, and never allocate more than the
/// declared tensor.
pub fn lossless_decode(data: &[u8]) {
    let Some((&[d, lo, hi], chunk)) = data.split_first_chunk::<3>() else {
        return;
    };
    let dtype = [DType::F32, DType::F64, DType::F16, DType::BF16][d as usize % 4];
    let n = u16::from_le_bytes([lo, hi]) as u64;
    let zeros = vec![0u8; n as usize * dtype.size()];
    for reference in [None, Some(&zeros[..])] {
        let header = Header {
            dtype,
            shape: vec![n],
            quantizer: Quantizer::None,
            coder: entropy::Coder::Auto,
            bits: 0,
            flags: if reference.is_some() {
                deltackpt::format::FLAG_REFERENCE
            } else {
                0
            },
            reference_hash: reference.map(xxhash_rust::xxh3::xxh3_64),
            params: Vec::new(),
            chunk_elems: n.max(1),
            chunk_sizes: vec![chunk.len() as u64],
            tag: 0,
        };
        let blob = deltackpt::format::write(&header, &[chunk.to_vec()]);
        if let Ok(t) = deltackpt::decode(&blob, reference) {
            assert_eq!(t.data.len(), zeros.len());
        }
    }
}

/// `data` with its trailing 8-byte checksum recomputed, so that mutations reach the parser.
fn resealed(data: &[u8]) -> Vec<u8> {
    let body = &data[..data.len().saturating_sub(8)];
    let mut sealed = body.to_vec();
    sealed.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(body).to_le_bytes());
    sealed
}

/// Fused chain restore (`decode_chain_update`) of two blobs, `data` = `len u32 | blob | blob`
/// (each resealed): must return Ok or Err, never panic or hang, on a zero state of the first
/// blob's dtype and shape (its fingerprints mismatch, so every chunk decoder is reached before
/// the refusal), with and without clamps.
pub fn chain_decode(data: &[u8]) {
    let Some((head, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let cut = (u32::from_le_bytes(*head) as usize).min(rest.len());
    let (a, b) = (resealed(&rest[..cut]), resealed(&rest[cut..]));
    let Ok(h) = deltackpt::inspect(&a) else {
        return;
    };
    let Ok(n) = h.numel() else { return };
    let bytes = (n as usize).saturating_mul(h.dtype.size());
    if bytes > 1 << 20 {
        return;
    }
    for clamp0 in [false, true] {
        let links = [
            deltackpt::ChainLink { blob: &a, clamp0 },
            deltackpt::ChainLink {
                blob: &b,
                clamp0: !clamp0,
            },
        ];
        let mut state = vec![0u8; bytes];
        let _ = deltackpt::decode_chain_update(&links, h.dtype, &h.shape, &mut state);
        let _ = deltackpt::decode_chain_update(&links[..1], h.dtype, &h.shape, &mut state);
    }
}
