//! Entropy coders for byte symbol streams.
//!
//! Every coder turns a `&[u8]` of symbols into a self-describing stream and back:
//! [`encode`] writes a one-byte coder id, the symbol count, then the coder's payload;
//! [`decode`] reads any such stream. Decoders are total: arbitrary bytes give either the
//! original symbols or [`Error::Corrupt`] / [`Error::Unsupported`], never a panic and never
//! an allocation the input cannot justify.
//!
//! The crate's own coders ([`Coder::Tans`], [`Coder::Huffman`], [`Coder::Lz77`] and
//! [`Coder::Auto`]) cut the stream into independent chunks ([`chunks`]) that are coded in
//! parallel; `Auto` picks per chunk among raw, run-length, tANS ([`tans`], order 0 or with the
//! previous symbol and an auto-detected "row above" as context), Huffman ([`huffman`]) and
//! zero-run tokens ([`runs`]), from histogram estimates. zstd and deflate are baselines, used
//! only when asked for. The byte layout is described in `docs/ENTROPY_FORMAT.md`.
//!
//! ```
//! use deltackpt::entropy::{self, Coder};
//! let symbols: Vec<u8> = (0..10_000u32).map(|i| if i % 17 == 0 { 3 } else { 0 }).collect();
//! for coder in [Coder::Auto, Coder::Tans, Coder::Zstd] {
//!     let blob = entropy::encode(&symbols, coder).unwrap();
//!     assert!(blob.len() < symbols.len() / 10);
//!     assert_eq!(entropy::decode(&blob).unwrap(), symbols);
//! }
//! ```

mod baseline;
pub mod bitio;
pub mod chunks;
pub mod huffman;
pub mod levels;
pub mod lz77;
pub mod runlit;
pub mod runs;
pub mod simd;
pub mod tans;

use crate::error::{Error, Result};

/// Which coder to use for a symbol stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Coder {
    /// Pick, per chunk, the smallest of the crate's own representations (raw, run-length,
    /// tANS, context tANS, Huffman, zero-run tokens) from histogram-based size estimates.
    Auto,
    /// Store the bytes as they are.
    Raw,
    /// Zstandard (baseline and interoperability coder), level 3.
    Zstd,
    /// Deflate (gzip's coder, baseline), level 6.
    Gzip,
    /// tANS in independent chunks ([`tans`], [`chunks`]).
    Tans,
    /// Canonical Huffman in independent chunks ([`huffman`], [`chunks`]).
    Huffman,
    /// LZ77 with entropy-coded literals, lengths and distances ([`lz77`]).
    Lz77,
}

impl Coder {
    /// Parse a coder name as used by the Python API (`"auto"`, `"raw"`, `"zstd"`, ...).
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "auto" => Coder::Auto,
            "raw" => Coder::Raw,
            "zstd" => Coder::Zstd,
            "gzip" => Coder::Gzip,
            "tans" => Coder::Tans,
            "huffman" => Coder::Huffman,
            "lz77" => Coder::Lz77,
            other => {
                return Err(Error::invalid(format!(
                    "unknown coder {other:?}; expected one of \"auto\", \"raw\", \"tans\", \"huffman\", \"lz77\", \"zstd\", \"gzip\""
                )))
            }
        })
    }

    /// The coder's name.
    pub fn name(self) -> &'static str {
        match self {
            Coder::Auto => "auto",
            Coder::Raw => "raw",
            Coder::Zstd => "zstd",
            Coder::Gzip => "gzip",
            Coder::Tans => "tans",
            Coder::Huffman => "huffman",
            Coder::Lz77 => "lz77",
        }
    }
}

/// Stream ids written as the first byte of an encoded stream.
const ID_RAW: u8 = 0;
const ID_ZSTD: u8 = 1;
const ID_GZIP: u8 = 2;
const ID_CHUNKED: u8 = 3;

/// Encode `symbols` with `coder` into a self-describing stream.
pub fn encode(symbols: &[u8], coder: Coder) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    encode_into(symbols, coder, &mut out)?;
    Ok(out)
}

/// Encode `symbols` with `coder`, appending the stream to `out`.
pub fn encode_into(symbols: &[u8], coder: Coder, out: &mut Vec<u8>) -> Result<()> {
    match coder {
        Coder::Raw => {
            out.push(ID_RAW);
            put_len(out, symbols.len());
            out.extend_from_slice(symbols);
        }
        Coder::Zstd => encode_zstd(symbols, 3, out)?,
        Coder::Gzip => encode_gzip(symbols, 6, out)?,
        Coder::Auto | Coder::Tans | Coder::Huffman | Coder::Lz77 => {
            out.push(ID_CHUNKED);
            put_len(out, symbols.len());
            chunks::encode(symbols, coder, out)?;
        }
    }
    Ok(())
}

/// Encode `symbols` with zstd at `level` (baseline), appending a self-describing stream.
pub fn encode_zstd(symbols: &[u8], level: i32, out: &mut Vec<u8>) -> Result<()> {
    out.push(ID_ZSTD);
    put_len(out, symbols.len());
    baseline::zstd_encode(symbols, level, out)
}

/// Encode `symbols` with deflate at `level` (0..=9, baseline), appending a self-describing
/// stream.
pub fn encode_gzip(symbols: &[u8], level: u32, out: &mut Vec<u8>) -> Result<()> {
    out.push(ID_GZIP);
    put_len(out, symbols.len());
    baseline::deflate_encode(symbols, level, out)
}

/// Decode a stream written by [`encode`].
pub fn decode(data: &[u8]) -> Result<Vec<u8>> {
    let n = plausible_len(data)?;
    let mut out = try_alloc(n)?;
    decode_into(data, &mut out)?;
    Ok(out)
}

/// The symbol count a stream declares, refused with [`Error::Corrupt`] when its payload
/// cannot possibly describe that many symbols (so that forged headers never cause large
/// allocations). Callers that allocate for a stream check this first.
pub fn plausible_len(data: &[u8]) -> Result<usize> {
    let (n, body) = peek_len(data)?;
    let plausible = match data[0] {
        ID_RAW => body.len() == n,
        ID_CHUNKED => chunks::can_hold(body, n),
        // Deflate expands at most ~1032:1, zstd ~32768:1 (one RLE block per few bytes).
        ID_GZIP => n as u128 <= (body.len() as u128 + 1) * 1032,
        ID_ZSTD => {
            n as u128 <= (body.len() as u128 + 1) * 32768 + (1 << 17)
                && zstd::zstd_safe::get_frame_content_size(body)
                    .ok()
                    .flatten()
                    .is_none_or(|c| c == n as u64)
        }
        id => return Err(unknown_id(id)),
    };
    if !plausible {
        return Err(Error::corrupt(format!(
            "stream declares {n} symbols but its {} payload bytes cannot hold them",
            body.len()
        )));
    }
    Ok(n)
}

/// Number of symbols a stream declares (validated against nothing but the header).
pub fn decoded_len(data: &[u8]) -> Result<usize> {
    peek_len(data).map(|(n, _)| n)
}

/// Decode a stream into `out`, whose length must equal the stream's symbol count.
pub fn decode_into(data: &[u8], out: &mut [u8]) -> Result<()> {
    let (n, body) = peek_len(data)?;
    if n != out.len() {
        return Err(Error::corrupt(format!(
            "symbol stream holds {n} symbols where {} were expected",
            out.len()
        )));
    }
    match data[0] {
        ID_RAW => {
            if body.len() != n {
                return Err(Error::corrupt("raw symbol stream has the wrong length"));
            }
            out.copy_from_slice(body);
            Ok(())
        }
        ID_ZSTD => baseline::zstd_decode(body, out),
        ID_GZIP => baseline::deflate_decode(body, out),
        ID_CHUNKED => chunks::decode(body, out),
        id => Err(unknown_id(id)),
    }
}

fn unknown_id(id: u8) -> Error {
    Error::Unsupported(format!(
        "unknown symbol coder id {id}; this stream was written by a newer deltackpt"
    ))
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n as u64).to_le_bytes());
}

fn peek_len(data: &[u8]) -> Result<(usize, &[u8])> {
    if data.len() < 9 {
        return Err(Error::corrupt(
            "symbol stream shorter than its 9-byte header",
        ));
    }
    let n = u64::from_le_bytes(data[1..9].try_into().unwrap());
    let n = usize::try_from(n).map_err(|_| Error::corrupt("symbol count exceeds address space"))?;
    Ok((n, &data[9..]))
}

/// Allocate a zeroed buffer of `n` bytes, failing with [`Error::Corrupt`] rather than
/// aborting when a forged header asks for more memory than there is.
pub(crate) fn try_alloc(n: usize) -> Result<Vec<u8>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        Error::corrupt(format!(
            "stream declares {n} symbols, more than memory allows"
        ))
    })?;
    advise_huge_pages(&mut v);
    v.resize(n, 0);
    Ok(v)
}

/// Ask Linux to back a large fresh buffer with transparent huge pages before it is first
/// written: decoding into a new 100 MB tensor otherwise spends most of its time in 4 KiB page
/// faults (measured: 45 ms → see BENCHMARKS.md). numpy does the same for its large arrays.
/// A hint only: failure (or another OS) changes nothing but speed.
fn advise_huge_pages(v: &mut Vec<u8>) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let cap = v.capacity();
        if cap >= 2 * HUGE {
            let start = v.as_mut_ptr() as usize;
            let aligned = start.div_ceil(HUGE) * HUGE;
            let len = (start + cap).saturating_sub(aligned) / HUGE * HUGE;
            if len > 0 {
                // SAFETY: the range lies inside the allocation `v` owns; MADV_HUGEPAGE only
                // changes how the kernel backs those pages, never their contents or validity.
                unsafe {
                    libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
                }
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = v;
}
