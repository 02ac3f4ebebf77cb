//! Lossless, bit-exact coding of float tensors by byte planes.
//!
//! Each chunk of elements is split into byte planes after moving the sign bit to the bottom
//! (see [`crate::float::split_planes`]); with a reference, elements are XORed with it first,
//! so that the bits two close tensors share become zero planes. Each plane is then coded on
//! its own: the exponent plane is highly skewed, the low mantissa planes are nearly random
//! and end up stored raw. Every bit pattern (NaN payloads, −0.0, subnormals, ±Inf) survives.
//!
//! Chunk layout: for each plane, `u32` stream length then the symbol stream.

use rayon::prelude::*;

use crate::entropy::{self, Coder};
use crate::error::{Error, Result};
use crate::float::{self, DType};

/// The coder for one byte plane. `Auto` favours speed here: mantissa planes are close to
/// random, so a plane whose order-0 entropy is within 0.5% of 8 bits is stored raw, and every
/// other plane goes to Huffman, which on real weights is within ~1% of tANS's size and
/// encodes ~1.7× faster (measured on all-MiniLM-L6-v2, BENCHMARKS.md).
fn plane_coder(plane: &[u8], requested: Coder) -> Coder {
    if requested != Coder::Auto || plane.is_empty() {
        return requested;
    }
    let hist = entropy::simd::histogram(plane);
    let n = plane.len() as f64;
    let bits: f64 = hist
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum();
    if bits > 7.96 {
        Coder::Raw
    } else {
        Coder::Huffman
    }
}

/// Code `data` (elements of `dtype`, XORed with `reference` if given) in chunks of
/// `chunk_elems` elements, each plane with `coder`. A layer below the tensor codec: it knows
/// nothing of quantizers or encode options.
pub(crate) fn encode_chunks(
    dtype: DType,
    data: &[u8],
    reference: Option<&[u8]>,
    chunk_elems: usize,
    coder: Coder,
) -> Result<Vec<Vec<u8>>> {
    let size = dtype.size();
    let chunk_bytes = chunk_elems * size;
    data.par_chunks(chunk_bytes)
        .enumerate()
        .map(|(i, c)| {
            let r = reference.map(|r| &r[i * chunk_bytes..i * chunk_bytes + c.len()]);
            let mut planes = vec![Vec::new(); size];
            float::split_planes(size, c, r, &mut planes);
            let mut out = Vec::with_capacity(c.len() + 16 * size);
            for p in &planes {
                let at = out.len();
                out.extend_from_slice(&[0u8; 4]);
                entropy::encode_into(p, plane_coder(p, coder), &mut out)?;
                let len = (out.len() - at - 4) as u32;
                out[at..at + 4].copy_from_slice(&len.to_le_bytes());
            }
            Ok(out)
        })
        .collect()
}

/// Split a lossless chunk into its `size` plane streams.
pub(crate) fn plane_streams(chunk: &[u8], size: usize) -> Result<Vec<&[u8]>> {
    let mut rest = chunk;
    let mut out = Vec::with_capacity(size);
    for _ in 0..size {
        if rest.len() < 4 {
            return Err(Error::corrupt("lossless chunk truncated"));
        }
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        if rest.len() - 4 < len {
            return Err(Error::corrupt("lossless plane overruns its chunk"));
        }
        out.push(&rest[4..4 + len]);
        rest = &rest[4 + len..];
    }
    if !rest.is_empty() {
        return Err(Error::corrupt("trailing bytes in a lossless chunk"));
    }
    Ok(out)
}

pub(crate) fn decode_chunks(
    dtype: DType,
    chunks: &[&[u8]],
    chunk_elems: usize,
    reference: Option<&[u8]>,
    out: &mut [u8],
) -> Result<()> {
    let size = dtype.size();
    let chunk_bytes = chunk_elems * size;
    out.par_chunks_mut(chunk_bytes)
        .zip(chunks.par_iter())
        .enumerate()
        .try_for_each(|(i, (o, c))| {
            let m = o.len() / size;
            let mut planes = (0..size)
                .map(|_| entropy::try_alloc(m))
                .collect::<Result<Vec<_>>>()?;
            for (p, s) in planes.iter_mut().zip(plane_streams(c, size)?) {
                entropy::decode_into(s, p)?;
            }
            let r = reference.map(|r| &r[i * chunk_bytes..i * chunk_bytes + o.len()]);
            float::merge_planes(size, &planes, r, o);
            Ok(())
        })
}
