//! Lossless, bit-exact coding of float tensors by byte planes.
//!
//! Each chunk of elements is split into byte planes after moving the sign bit to the bottom
//! ([`crate::planes::split`]); with a reference, elements are XORed with it first, so that the
//! bits two close tensors share become zero planes. Each plane is then coded on its own: the
//! exponent plane is highly skewed, the low mantissa planes are nearly random and end up
//! stored raw. Every bit pattern (NaN payloads, −0.0, subnormals, ±Inf) survives.
//!
//! Chunk layout: for each plane, a `u32` LE record length then the record. A record written
//! by this version is a plane method byte and its payload ([`PlaneMethod`]); the `m` symbols
//! of a plane (the chunk's element count) are implied by the chunk. Records of older versions
//! are self-describing symbol streams ([`entropy::decode`]), whose first byte (a stream id,
//! 0..=3) never collides with a plane method; they still decode, and an explicitly requested
//! tANS, LZ77, zstd or deflate coder still writes them.

use std::cell::RefCell;

use rayon::prelude::*;

use crate::entropy::{self, huffman, Coder};
use crate::error::{Error, Result};
use crate::float::DType;
use crate::planes;

/// How one plane record is coded (its first byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PlaneMethod {
    /// The `m` plane bytes as they are (decoded without a copy: merged straight from the blob).
    Raw = 0x40,
    /// One byte, repeated `m` times.
    Constant = 0x41,
    /// A canonical Huffman body for `m` symbols ([`huffman`], format unchanged).
    Huffman = 0x42,
    /// A base byte `lo`, then a Huffman body of the symbols minus `lo`: the body's code-length
    /// table then starts at the smallest symbol, which on small planes (an exponent plane
    /// spans ~30 values above ~100) saves most of its 64 bytes.
    HuffmanFrom = 0x43,
}

/// Planes shorter than this are coded with [`PlaneMethod::HuffmanFrom`] (on longer ones the
/// table is a negligible part of the plane, and the shift would cost a pass).
const SHIFT_BELOW: usize = 1 << 16;

/// Largest record-id of the older symbol-stream records.
const LAST_STREAM_ID: u8 = 3;

/// Huffman must save this fraction of a plane's raw size to be chosen by `Auto`: a raw plane
/// decodes for free (it is merged straight from the blob), a Huffman plane at ~1 GB/s.
const MIN_SAVING: f64 = 0.002;

thread_local! {
    /// Per-thread plane buffers, reused across chunks and calls (no allocation or page fault
    /// per chunk once warm).
    static SCRATCH: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// Run `f` with `size` scratch planes of `m` bytes (contents unspecified).
fn with_scratch<R>(size: usize, m: usize, f: impl FnOnce(&mut [Vec<u8>]) -> R) -> R {
    let mut s = SCRATCH.with(|c| std::mem::take(&mut *c.borrow_mut()));
    s.resize_with(size.max(s.len()), Vec::new);
    for p in &mut s[..size] {
        if p.len() < m {
            p.resize(m, 0);
        }
    }
    let r = f(&mut s[..size]);
    SCRATCH.with(|c| *c.borrow_mut() = s);
    r
}

/// Append one plane record (method byte and payload) for `plane`, coded as `coder` asks.
fn encode_plane(plane: &[u8], coder: Coder, out: &mut Vec<u8>) -> Result<()> {
    if !matches!(coder, Coder::Auto | Coder::Huffman | Coder::Raw) {
        return entropy::encode_into(plane, coder, out);
    }
    let hist = entropy::simd::histogram_scalar(plane);
    let present = hist.iter().filter(|&&c| c > 0).count();
    if present == 1 && coder != Coder::Raw {
        out.extend_from_slice(&[PlaneMethod::Constant as u8, plane[0]]);
        return Ok(());
    }
    let raw_bits = 8.0 * plane.len() as f64;
    let huffman = coder == Coder::Huffman
        || (coder == Coder::Auto && huffman::plan(&hist).1 < raw_bits * (1.0 - MIN_SAVING));
    let lo = hist.iter().position(|&c| c > 0).unwrap_or(0);
    if huffman && lo > 0 && plane.len() < SHIFT_BELOW {
        let shifted: Vec<u8> = plane.iter().map(|&b| b - lo as u8).collect();
        let mut h = [0u32; 256];
        h[..256 - lo].copy_from_slice(&hist[lo..]);
        out.extend_from_slice(&[PlaneMethod::HuffmanFrom as u8, lo as u8]);
        huffman::encode_with(&shifted, &h, out);
    } else if huffman {
        out.push(PlaneMethod::Huffman as u8);
        huffman::encode_with(plane, &hist, out);
    } else {
        out.push(PlaneMethod::Raw as u8);
        out.extend_from_slice(plane);
    }
    Ok(())
}

/// Code one chunk of elements (`reference` the matching slice, if any).
fn encode_chunk(size: usize, c: &[u8], r: Option<&[u8]>, coder: Coder) -> Result<Vec<u8>> {
    let m = c.len() / size;
    with_scratch(size, m, |planes| {
        let mut views: Vec<&mut [u8]> = planes.iter_mut().map(|p| &mut p[..m]).collect();
        planes::split(size, c, r, &mut views);
        let mut out = Vec::with_capacity(c.len() + 8 * size + 160);
        for p in views {
            let at = out.len();
            out.extend_from_slice(&[0u8; 4]);
            encode_plane(p, coder, &mut out)?;
            let len = (out.len() - at - 4) as u32;
            out[at..at + 4].copy_from_slice(&len.to_le_bytes());
        }
        Ok(out)
    })
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
    let one = |(i, c): (usize, &[u8])| {
        let r = reference.map(|r| &r[i * chunk_bytes..i * chunk_bytes + c.len()]);
        encode_chunk(size, c, r, coder)
    };
    if data.len() <= chunk_bytes {
        // One chunk: no task to hand to the pool.
        return data.chunks(chunk_bytes).enumerate().map(one).collect();
    }
    data.par_chunks(chunk_bytes).enumerate().map(one).collect()
}

/// Split a lossless chunk into its `size` plane records.
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

/// Refuse a chunk whose plane records cannot hold `m` symbols each (checked before the
/// output is allocated, so that a forged shape never asks for memory the blob cannot fill).
pub(crate) fn check_plausible(chunk: &[u8], size: usize, m: usize) -> Result<()> {
    for rec in plane_streams(chunk, size)? {
        let ok = match rec.first() {
            None => false,
            Some(&id) if id <= LAST_STREAM_ID => entropy::plausible_len(rec)? == m,
            Some(&id) if id == PlaneMethod::Raw as u8 => rec.len() - 1 == m,
            Some(&id) if id == PlaneMethod::Constant as u8 => rec.len() == 2,
            // Every Huffman symbol takes at least one bit.
            Some(&id) if id == PlaneMethod::Huffman as u8 => {
                (rec.len() as u128 - 1) * 8 >= m as u128
            }
            Some(&id) if id == PlaneMethod::HuffmanFrom as u8 => {
                (rec.len() as u128).saturating_sub(2) * 8 >= m as u128
            }
            Some(&id) => return Err(unknown_method(id)),
        };
        if !ok {
            return Err(Error::corrupt(format!(
                "lossless plane record cannot hold the chunk's {m} symbols"
            )));
        }
    }
    Ok(())
}

fn unknown_method(id: u8) -> Error {
    Error::Unsupported(format!(
        "unknown lossless plane method {id:#x}; written by a newer deltackpt?"
    ))
}

/// Decode one plane record of `buf.len()` symbols: a raw record is returned as it is (no
/// copy), any other is decoded into `buf`.
fn decode_plane<'a>(rec: &'a [u8], buf: &'a mut [u8]) -> Result<&'a [u8]> {
    let m = buf.len();
    match rec.first() {
        None => Err(Error::corrupt("empty lossless plane record")),
        Some(&id) if id <= LAST_STREAM_ID => {
            entropy::decode_into(rec, buf)?;
            Ok(buf)
        }
        Some(&id) if id == PlaneMethod::Raw as u8 => {
            if rec.len() - 1 != m {
                return Err(Error::corrupt("raw lossless plane has the wrong length"));
            }
            Ok(&rec[1..])
        }
        Some(&id) if id == PlaneMethod::Constant as u8 => {
            if rec.len() != 2 {
                return Err(Error::corrupt("constant lossless plane is not one byte"));
            }
            buf.fill(rec[1]);
            Ok(buf)
        }
        Some(&id) if id == PlaneMethod::Huffman as u8 => {
            huffman::decode(&rec[1..], buf)?;
            Ok(buf)
        }
        Some(&id) if id == PlaneMethod::HuffmanFrom as u8 => {
            let Some((&lo, body)) = rec[1..].split_first() else {
                return Err(Error::corrupt("shifted Huffman plane lacks its base byte"));
            };
            huffman::decode(body, buf)?;
            // A forged base may wrap: the bytes are then wrong, but the decode stays total.
            buf.iter_mut().for_each(|b| *b = b.wrapping_add(lo));
            Ok(buf)
        }
        Some(&id) => Err(unknown_method(id)),
    }
}

/// Decode one chunk into `o` (`r` the matching reference slice, if any).
fn decode_chunk(size: usize, c: &[u8], r: Option<&[u8]>, o: &mut [u8]) -> Result<()> {
    let m = o.len() / size;
    let recs = plane_streams(c, size)?;
    with_scratch(size, m, |bufs| {
        let mut planes: Vec<&[u8]> = Vec::with_capacity(size);
        for (rec, buf) in recs.iter().zip(bufs.iter_mut()) {
            planes.push(decode_plane(rec, &mut buf[..m])?);
        }
        planes::merge(size, &planes, r, o);
        Ok(())
    })
}

/// Decode `chunks` (of `chunk_elems` elements, the last one shorter) into `out`, XORing with
/// `reference` if given.
pub(crate) fn decode_chunks(
    dtype: DType,
    chunks: &[&[u8]],
    chunk_elems: usize,
    reference: Option<&[u8]>,
    out: &mut [u8],
) -> Result<()> {
    let size = dtype.size();
    let chunk_bytes = chunk_elems * size;
    let one = |(i, (o, c)): (usize, (&mut [u8], &&[u8]))| {
        let r = reference.map(|r| &r[i * chunk_bytes..i * chunk_bytes + o.len()]);
        decode_chunk(size, c, r, o)
    };
    if chunks.len() <= 1 {
        return out
            .chunks_mut(chunk_bytes)
            .zip(chunks)
            .enumerate()
            .try_for_each(one);
    }
    out.par_chunks_mut(chunk_bytes)
        .zip(chunks.par_iter())
        .enumerate()
        .try_for_each(one)
}
