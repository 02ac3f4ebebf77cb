//! Independent chunks with an offset index, coded in parallel.
//!
//! Long streams are cut into chunks of [`CHUNK_SYMBOLS`] symbols (the last one shorter); each
//! chunk is coded on its own with the method that suits it, so chunks encode and decode in
//! parallel on the crate's pool ([`crate::parallel::install`]) and statistics adapt along the
//! stream.
//!
//! Container layout (after the outer 9-byte stream header that holds the symbol count `n`):
//!
//! ```text
//! u32 LE      chunk size c (1..=MAX_CHUNK_SYMBOLS); the stream has ceil(n / c) chunks
//! u32 LE * k  byte length of each chunk body
//! bodies      each: one method byte, then the method's payload
//! ```
//!
//! With [`Coder::Auto`](super::Coder::Auto) each chunk gets the method with the smallest
//! estimated size, estimated from histograms (of symbols, of zero-run tokens, of symbol pairs)
//! without trial encoding.

use rayon::prelude::*;

use super::{huffman, lz77, runlit, runs, tans, Coder};
use crate::error::{Error, Result};

/// Symbols per chunk written by this version.
pub const CHUNK_SYMBOLS: usize = 1 << 17;
/// Largest chunk size a reader accepts.
pub const MAX_CHUNK_SYMBOLS: usize = 1 << 20;

/// Size factor the context coder's estimate is multiplied by before comparison.
const CTX_PENALTY: f64 = 1.01;

/// How one chunk is coded (its first byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Method {
    /// The symbols as they are.
    Raw = 0,
    /// One symbol repeated: payload is that byte.
    Rle = 1,
    /// Order-0 tANS ([`tans`]).
    Tans = 2,
    /// Canonical Huffman ([`huffman`]).
    Huffman = 3,
    /// Zero-run tokens coded with tANS ([`runs`]).
    RunsTans = 4,
    /// Zero-run tokens coded with Huffman ([`runs`]).
    RunsHuffman = 5,
    /// tANS with the previous symbol as context ([`tans::encode_ctx`]).
    CtxTans = 6,
    /// LZ77 ([`lz77`]).
    Lz77 = 7,
    /// Long runs cut out, the other symbols in a nested chunk body ([`runlit`]).
    RunLit = 8,
}

impl Method {
    fn from_byte(b: u8) -> Result<Self> {
        Ok(match b {
            0 => Method::Raw,
            1 => Method::Rle,
            2 => Method::Tans,
            3 => Method::Huffman,
            4 => Method::RunsTans,
            5 => Method::RunsHuffman,
            6 => Method::CtxTans,
            7 => Method::Lz77,
            8 => Method::RunLit,
            other => {
                return Err(Error::Unsupported(format!(
                    "unknown chunk method {other}; written by a newer deltackpt?"
                )))
            }
        })
    }
}

/// Pick the method for one chunk (no period context).
pub fn choose(symbols: &[u8], coder: Coder) -> Method {
    choose_with(symbols, coder, 0)
}

/// Pick the method for one chunk; `period` (0 = none) is a candidate distance for the
/// context coder's second context (see [`tans::detect_period`]).
pub fn choose_with(symbols: &[u8], coder: Coder, period: usize) -> Method {
    let hist = tans::histogram(symbols);
    let present = hist.iter().filter(|&&c| c > 0).count();
    if present <= 1 {
        return Method::Rle;
    }
    match coder {
        Coder::Tans => Method::Tans,
        Coder::Huffman => Method::Huffman,
        Coder::Lz77 => Method::Lz77,
        _ => choose_auto(symbols, &hist, period).method,
    }
}

/// A method picked from estimates: the method, its estimated bits, and for
/// [`Method::CtxTans`] the context shape the estimate found (so the encoder need not
/// estimate again).
#[derive(Clone, Copy, Debug)]
struct Pick {
    method: Method,
    bits: f64,
    shape: Option<tans::CtxShape>,
}

/// When runs cover at least this share of a chunk, the split is weighed against order-0
/// coding of the whole chunk only (no context or zero-run estimates).
const RUN_SHARE: f64 = 0.5;
/// The split is taken unless coding the whole chunk is estimated this much smaller.
const RUN_BONUS: f64 = 1.25;
/// ... and at least this many bits smaller (a near-constant chunk is a few bytes either way,
/// but order-0 coding decodes it symbol by symbol).
const RUN_SLACK_BITS: f64 = 256.0;

/// Code one chunk with [`Coder::Auto`]: cut its long runs out ([`runlit`]) when they cover
/// most of it, or when that is estimated smaller than the best whole-chunk method.
pub fn encode_auto(symbols: &[u8], period: usize, out: &mut Vec<u8>) {
    let (r, lits) = runlit::split(symbols);
    if r.is_empty() {
        return encode_pick(symbols, pick_auto(symbols, period), period, out);
    }
    let list = runlit::list(&r);
    let lit_hist = tans::histogram(&lits);
    let (lp, rp) = (pick_hist(&lits, &lit_hist, 0), pick_auto(&list, 0));
    let split_bits = lp.bits + rp.bits + 64.0;
    let whole = if (lits.len() as f64) > (1.0 - RUN_SHARE) * symbols.len() as f64 {
        pick_auto(symbols, period)
    } else {
        // The whole chunk's histogram is the literals' plus the runs'.
        let mut hist = lit_hist;
        for x in &r {
            hist[x.sym as usize] += x.len as u32;
        }
        pick_order0(&hist)
    };
    // The split decodes at memory speed over its runs: it wins near-ties.
    if whole.bits * RUN_BONUS < split_bits && whole.bits + RUN_SLACK_BITS < split_bits {
        return encode_pick(symbols, whole, period, out);
    }
    out.push(Method::RunLit as u8);
    encode_split(&r, &list, lp, rp, &lits, out);
}

/// The body of [`Method::RunLit`] for the runs `r` (list `list`) and literals `lits`, coded
/// as picked (`lp`, `rp`).
fn encode_split(
    r: &[runlit::Run],
    list: &[u8],
    lp: Pick,
    rp: Pick,
    lits: &[u8],
    out: &mut Vec<u8>,
) {
    let (mut lb, mut rb) = (Vec::new(), Vec::new());
    encode_pick(lits, lp, 0, &mut lb);
    encode_pick(list, rp, 0, &mut rb);
    runlit::encode(r.len(), list.len(), &rb, &lb, out);
}

/// The best method for `symbols` among all but [`Method::RunLit`], from estimates.
fn pick_auto(symbols: &[u8], period: usize) -> Pick {
    pick_hist(symbols, &tans::histogram(symbols), period)
}

/// [`pick_auto`] given the histogram of `symbols`.
fn pick_hist(symbols: &[u8], hist: &[u32; 256], period: usize) -> Pick {
    if symbols.is_empty() {
        return Pick {
            method: Method::Raw,
            bits: 0.0,
            shape: None,
        };
    }
    if hist.iter().filter(|&&c| c > 0).count() <= 1 {
        return Pick {
            method: Method::Rle,
            bits: 8.0,
            shape: None,
        };
    }
    choose_auto(symbols, hist, period)
}

/// The better of order-0 tANS and Huffman for a histogram of two or more distinct symbols.
fn pick_order0(hist: &[u32; 256]) -> Pick {
    let (t, h) = (tans::plan(hist).1, huffman::plan(hist).1);
    let (method, bits) = if t <= h {
        (Method::Tans, t)
    } else {
        (Method::Huffman, h)
    };
    Pick {
        method,
        bits,
        shape: None,
    }
}

/// Encode one chunk (method byte and payload) as picked.
fn encode_pick(symbols: &[u8], p: Pick, period: usize, out: &mut Vec<u8>) {
    match (p.method, p.shape) {
        (Method::CtxTans, Some(shape)) => {
            out.push(Method::CtxTans as u8);
            tans::encode_ctx_shape(symbols, &shape, out);
        }
        (m, _) => encode_chunk_with(symbols, m, period, out),
    }
}

fn choose_auto(symbols: &[u8], hist: &[u32; 256], period: usize) -> Pick {
    let n = symbols.len() as f64;
    let mut best = Pick {
        method: Method::Raw,
        bits: n * 8.0,
        shape: None,
    };
    let mut consider = |method: Method, bits: f64, shape| {
        if bits < best.bits {
            best = Pick {
                method,
                bits,
                shape,
            };
        }
    };
    consider(Method::Tans, tans::plan(hist).1, None);
    consider(Method::Huffman, huffman::plan(hist).1, None);
    if runs_may_pay(symbols) {
        if let Some(est) = runs::estimate(symbols, hist) {
            consider(Method::RunsTans, est.tans_bits, None);
            consider(Method::RunsHuffman, est.huffman_bits, None);
        }
    }
    if let Some((shape, bits)) = tans::estimate_ctx(symbols, hist, period) {
        // The context coder decodes at about half the speed of the others: it has to save
        // at least 1% to be worth it.
        consider(Method::CtxTans, bits * CTX_PENALTY, Some(shape));
    }
    best
}

/// Symbols sampled to decide whether zero-run tokens are worth estimating on a whole chunk.
const RUNS_SAMPLE: usize = 1 << 13;
/// Zero-run tokens are estimated on the whole chunk only when, on the sample, they come
/// within this factor of order-0 coding.
const RUNS_MARGIN: f64 = 1.05;

/// Whether zero-run tokens could beat order-0 coding on this chunk, judged on a sample of
/// its start (the full estimate tokenizes the whole chunk, which costs as much as coding it).
fn runs_may_pay(symbols: &[u8]) -> bool {
    if symbols.len() < 4 * RUNS_SAMPLE {
        return true;
    }
    let sample = &symbols[..RUNS_SAMPLE];
    let h = tans::histogram(sample);
    if h.iter().filter(|&&c| c > 0).count() <= 1 {
        return true;
    }
    let order0 = tans::plan(&h).1.min(huffman::plan(&h).1);
    runs::estimate(sample, &h)
        .is_some_and(|e| e.tans_bits.min(e.huffman_bits) <= order0 * RUNS_MARGIN)
}

/// Encode one chunk (method byte and payload) into `out`.
///
/// # Panics
/// With [`Method::RunsTans`]/[`Method::RunsHuffman`] on symbols above [`runs::MAX_SYMBOL`].
pub fn encode_chunk(symbols: &[u8], method: Method, out: &mut Vec<u8>) {
    encode_chunk_with(symbols, method, 0, out)
}

/// [`encode_chunk`] with a candidate period for the context coder (0 = none).
pub fn encode_chunk_with(symbols: &[u8], method: Method, period: usize, out: &mut Vec<u8>) {
    out.push(method as u8);
    match method {
        Method::Raw => out.extend_from_slice(symbols),
        Method::Rle => out.push(symbols.first().copied().unwrap_or(0)),
        Method::Tans => tans::encode(symbols, out),
        Method::Huffman => huffman::encode(symbols, out),
        Method::RunsTans => runs::encode(symbols, false, out),
        Method::RunsHuffman => runs::encode(symbols, true, out),
        Method::CtxTans => tans::encode_ctx_period(symbols, period, out),
        Method::Lz77 => lz77::encode(symbols, out),
        Method::RunLit => encode_runlit(symbols, out),
    }
}

/// The body of [`Method::RunLit`], both parts in the method Auto picks for them. The
/// literals get no period context: the runs between them break the rows up.
fn encode_runlit(symbols: &[u8], out: &mut Vec<u8>) {
    let (r, lits) = runlit::split(symbols);
    let list = runlit::list(&r);
    let (lp, rp) = (pick_auto(&lits, 0), pick_auto(&list, 0));
    encode_split(&r, &list, lp, rp, &lits, out);
}

/// Decode one chunk body written by [`encode_chunk`] into `out`.
pub fn decode_chunk(body: &[u8], out: &mut [u8]) -> Result<()> {
    let (&m, payload) = body
        .split_first()
        .ok_or_else(|| Error::corrupt("empty chunk body"))?;
    match Method::from_byte(m)? {
        Method::Raw => {
            if payload.len() != out.len() {
                return Err(Error::corrupt("raw chunk has the wrong length"));
            }
            out.copy_from_slice(payload);
            Ok(())
        }
        Method::Rle => match payload {
            [s] => {
                out.fill(*s);
                Ok(())
            }
            _ => Err(Error::corrupt(
                "run-length chunk must hold exactly one byte",
            )),
        },
        Method::Tans => tans::decode(payload, out),
        Method::Huffman => huffman::decode(payload, out),
        Method::RunsTans | Method::RunsHuffman => runs::decode(payload, out),
        Method::CtxTans => tans::decode_ctx(payload, out),
        Method::Lz77 => lz77::decode(payload, out),
        Method::RunLit => runlit::decode(payload, out),
    }
}

/// Encode `symbols` as a chunk container, appending to `out`.
pub fn encode(symbols: &[u8], coder: Coder, out: &mut Vec<u8>) -> Result<()> {
    let chunk = if coder == Coder::Auto && mostly_runs(symbols) {
        MAX_CHUNK_SYMBOLS
    } else {
        CHUNK_SYMBOLS
    };
    encode_sized(symbols, coder, chunk, out)
}

/// Distance between the blocks [`mostly_runs`] probes.
const RUN_PROBE: usize = 1 << 12;
/// Share of probed blocks that must be runs for a stream to get the largest chunks.
const RUN_PROBE_SHARE: f64 = 0.9;

/// Whether a long stream is almost all long runs (judged on one [`runlit::BLOCK`] every
/// [`RUN_PROBE`] symbols). Such a stream codes to a few bytes per chunk, most of them chunk
/// overhead, so it gets the largest chunks the format allows.
fn mostly_runs(symbols: &[u8]) -> bool {
    if symbols.len() < 2 * MAX_CHUNK_SYMBOLS {
        return false;
    }
    let probes = symbols.len() / RUN_PROBE;
    let hits = (0..probes)
        .filter(|&i| {
            let b = &symbols[i * RUN_PROBE..i * RUN_PROBE + runlit::BLOCK];
            b.iter().all(|&x| x == b[0])
        })
        .count();
    hits as f64 >= RUN_PROBE_SHARE * probes as f64
}

/// [`encode`] with an explicit chunk size (`1..=MAX_CHUNK_SYMBOLS`).
pub fn encode_sized(symbols: &[u8], coder: Coder, chunk: usize, out: &mut Vec<u8>) -> Result<()> {
    if chunk == 0 || chunk > MAX_CHUNK_SYMBOLS {
        return Err(Error::invalid(format!(
            "chunk size {chunk} outside 1..={MAX_CHUNK_SYMBOLS}"
        )));
    }
    let period = if coder == Coder::Auto {
        tans::detect_period(symbols, symbols.len())
    } else {
        0
    };
    let one = |c: &[u8]| {
        let mut v = Vec::new();
        if coder == Coder::Auto {
            encode_auto(c, period, &mut v);
        } else {
            encode_chunk_with(c, choose_with(c, coder, period), period, &mut v);
        }
        v
    };
    let bodies: Vec<Vec<u8>> = if symbols.len() <= chunk {
        symbols.chunks(chunk).map(one).collect()
    } else {
        crate::parallel::install(|| symbols.par_chunks(chunk).map(one).collect())
    };
    out.extend_from_slice(&(chunk as u32).to_le_bytes());
    for b in &bodies {
        let len = u32::try_from(b.len()).map_err(|_| Error::invalid("chunk body over 4 GiB"))?;
        out.extend_from_slice(&len.to_le_bytes());
    }
    for b in &bodies {
        out.extend_from_slice(b);
    }
    Ok(())
}

/// Whether a container `body` can possibly describe `n` symbols (checked before allocating
/// them): its chunk size is in range and it is long enough for the header, the index and at
/// least two bytes (method and payload) per chunk.
pub fn can_hold(body: &[u8], n: usize) -> bool {
    let Some(c) = body.get(..4) else {
        return false;
    };
    let c = u32::from_le_bytes(c.try_into().unwrap()) as usize;
    if c == 0 || c > MAX_CHUNK_SYMBOLS {
        return false;
    }
    let k = n.div_ceil(c) as u128;
    4 + 6 * k <= body.len() as u128
}

/// Decode a chunk container into `out` (length = symbol count).
pub fn decode(body: &[u8], out: &mut [u8]) -> Result<()> {
    if body.len() < 4 {
        return Err(Error::corrupt("chunk container truncated"));
    }
    let chunk = u32::from_le_bytes(body[..4].try_into().unwrap()) as usize;
    if chunk == 0 || chunk > MAX_CHUNK_SYMBOLS {
        return Err(Error::corrupt(format!("chunk size {chunk} out of range")));
    }
    let k = out.len().div_ceil(chunk);
    let rest = &body[4..];
    if k.checked_mul(4).is_none_or(|b| b > rest.len()) {
        return Err(Error::corrupt("chunk index truncated"));
    }
    let (index, mut data) = rest.split_at(4 * k);
    let mut bodies = Vec::with_capacity(k);
    for e in index.chunks_exact(4) {
        let len = u32::from_le_bytes(e.try_into().unwrap()) as usize;
        if len > data.len() {
            return Err(Error::corrupt("chunk index points past the end"));
        }
        let (b, r) = data.split_at(len);
        bodies.push(b);
        data = r;
    }
    if !data.is_empty() {
        return Err(Error::corrupt("trailing bytes after the last chunk"));
    }
    if k <= 1 {
        return bodies
            .iter()
            .zip(out.chunks_mut(chunk))
            .try_for_each(|(b, o)| decode_chunk(b, o));
    }
    crate::parallel::install(|| {
        bodies
            .par_iter()
            .zip(out.par_chunks_mut(chunk))
            .try_for_each(|(b, o)| decode_chunk(b, o))
    })
}
