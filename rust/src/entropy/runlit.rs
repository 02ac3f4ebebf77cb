//! Long runs of any repeated symbol cut out of a chunk, the rest coded order-0.
//!
//! Quantized deltas often hold long runs of one symbol (the unused rows of an embedding matrix
//! all get the same symbol). Coding every symbol of such a run costs at least a bit with
//! Huffman and a table step with tANS; here a run costs a few bytes at encode and one `fill`
//! at decode. Runs are found by testing only [`BLOCK`]-aligned blocks of [`BLOCK`] equal bytes
//! (one 16-byte compare per block, so the scan runs at memory speed) and extending each hit
//! both ways; a run therefore has at least [`BLOCK`] symbols, and runs shorter than
//! `2 * BLOCK` may be missed (they stay literals).
//!
//! Body layout (the symbol count `n` comes from the enclosing chunk):
//!
//! ```text
//! varint      number of runs r
//! varint      byte length m of the run list
//! varint      byte length of the coded run list
//! coded list  one chunk body (method byte + payload, see [`super::chunks`]) of the m bytes
//!             of the run list: r entries of varint gap (literals before the run), byte
//!             symbol, varint (run length - BLOCK)
//! literals    one chunk body of the n - sum(run lengths) remaining symbols, in order
//! ```
//!
//! Neither nested body may itself be `RunLit`. The run list is entropy coded because on
//! streams that are almost all one symbol it is most of the output.

use super::chunks::{self, Method};
use crate::error::{Error, Result};

/// Shortest run cut out; runs are found through aligned blocks of this many equal bytes.
pub const BLOCK: usize = 32;

/// A run: `gap` literals, then `len` copies of `sym`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// Literals between the previous run (or the start) and this one.
    pub gap: usize,
    /// The repeated symbol.
    pub sym: u8,
    /// Run length (at least [`BLOCK`]).
    pub len: usize,
}

/// Runs of `symbols` (see the module docs) and the symbols outside them, in order.
pub fn split(symbols: &[u8]) -> (Vec<Run>, Vec<u8>) {
    let mut runs = Vec::new();
    let mut lits = Vec::with_capacity(symbols.len());
    let mut lit_start = 0usize;
    let mut b = 0usize;
    while b + BLOCK <= symbols.len() {
        let s = symbols[b];
        if !uniform(&symbols[b..b + BLOCK], s) {
            b += BLOCK;
            continue;
        }
        let mut start = b;
        while start > lit_start && symbols[start - 1] == s {
            start -= 1;
        }
        let end = b + BLOCK + run_length(&symbols[b + BLOCK..], s);
        lits.extend_from_slice(&symbols[lit_start..start]);
        runs.push(Run {
            gap: start - lit_start,
            sym: s,
            len: end - start,
        });
        lit_start = end;
        b = end.div_ceil(BLOCK) * BLOCK;
    }
    lits.extend_from_slice(&symbols[lit_start..]);
    (runs, lits)
}

/// Whether every byte of `block` (`BLOCK` long) equals `s`.
#[inline(always)]
fn uniform(block: &[u8], s: u8) -> bool {
    let pat = u128::from_ne_bytes([s; 16]);
    block
        .chunks_exact(16)
        .all(|c| u128::from_ne_bytes(c.try_into().unwrap()) == pat)
}

/// Length of the prefix of `rest` made of `s`, 16 bytes per compare.
fn run_length(rest: &[u8], s: u8) -> usize {
    let pat = u128::from_ne_bytes([s; 16]);
    let mut i = 0;
    for c in rest.chunks_exact(16) {
        let x = u128::from_ne_bytes(c.try_into().unwrap()) ^ pat;
        if x != 0 {
            return i + (x.to_le().trailing_zeros() / 8) as usize;
        }
        i += 16;
    }
    i + rest[i..].iter().take_while(|&&c| c == s).count()
}

/// The run list of `runs` (entries as in the module docs).
pub fn list(runs: &[Run]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 * runs.len());
    for r in runs {
        put_varint(&mut out, r.gap as u64);
        out.push(r.sym);
        put_varint(&mut out, (r.len - BLOCK) as u64);
    }
    out
}

/// Append a body: `runs` runs whose list of `list_len` bytes is coded as the chunk body
/// `coded_list`, then the literal chunk body `lit_body` (method bytes first).
pub fn encode(runs: usize, list_len: usize, coded_list: &[u8], lit_body: &[u8], out: &mut Vec<u8>) {
    put_varint(out, runs as u64);
    put_varint(out, list_len as u64);
    put_varint(out, coded_list.len() as u64);
    out.extend_from_slice(coded_list);
    out.extend_from_slice(lit_body);
}

/// Longest run list entry: two 10-byte varints and the symbol.
const MAX_ENTRY: u64 = 21;

/// Decode a body written by [`encode`] into `out` (length = symbol count).
pub fn decode(body: &[u8], out: &mut [u8]) -> Result<()> {
    let mut at = 0usize;
    let r = get_varint(body, &mut at)?;
    let m = get_varint(body, &mut at)?;
    let coded = get_varint(body, &mut at)?;
    // Every run covers at least BLOCK symbols and every entry takes 3..=21 bytes: forged
    // counts cannot make us allocate more than the chunk justifies.
    if r.saturating_mul(BLOCK as u64) > out.len() as u64
        || r.saturating_mul(3) > m
        || m > r.saturating_mul(MAX_ENTRY)
    {
        return Err(Error::corrupt("run list size out of range"));
    }
    let list_end = usize::try_from(coded)
        .ok()
        .and_then(|l| at.checked_add(l))
        .filter(|&e| e <= body.len())
        .ok_or_else(|| Error::corrupt("run list past the end"))?;
    let mut list = vec![0u8; m as usize];
    nested(&body[at..list_end], &mut list)?;
    let (runs, lits) = parse(&list, r as usize, out.len())?;
    expand(&runs, &body[list_end..], lits, out)
}

/// Decode a nested chunk body (which may not be `RunLit` again).
fn nested(body: &[u8], out: &mut [u8]) -> Result<()> {
    if body.first() == Some(&(Method::RunLit as u8)) {
        return Err(Error::corrupt("run-split parts may not be run-split again"));
    }
    chunks::decode_chunk(body, out)
}

/// The `r` runs of a run list and the number of literals, for a chunk of `n` symbols.
fn parse(list: &[u8], r: usize, n: usize) -> Result<(Vec<Run>, usize)> {
    let mut runs = Vec::with_capacity(r);
    let (mut at, mut lits, mut total) = (0usize, 0usize, 0usize);
    for _ in 0..r {
        let gap = get_varint(list, &mut at)?;
        let sym = *list
            .get(at)
            .ok_or_else(|| Error::corrupt("run list truncated"))?;
        at += 1;
        let len = get_varint(list, &mut at)?.saturating_add(BLOCK as u64);
        let end = (total as u64).saturating_add(gap).saturating_add(len);
        if end > n as u64 {
            return Err(Error::corrupt(
                "runs cover more symbols than the chunk holds",
            ));
        }
        total = end as usize;
        lits += gap as usize;
        runs.push(Run {
            gap: gap as usize,
            sym,
            len: len as usize,
        });
    }
    if at != list.len() {
        return Err(Error::corrupt("run list length does not match its entries"));
    }
    Ok((runs, lits + n - total))
}

/// Decode the literal body into its place between the runs.
fn expand(runs: &[Run], lit_body: &[u8], lits: usize, out: &mut [u8]) -> Result<()> {
    if runs.is_empty() {
        return nested(lit_body, out);
    }
    let mut buf = vec![0u8; lits];
    nested(lit_body, &mut buf)?;
    let (mut o, mut l) = (0usize, 0usize);
    for r in runs {
        out[o..o + r.gap].copy_from_slice(&buf[l..l + r.gap]);
        o += r.gap;
        l += r.gap;
        out[o..o + r.len].fill(r.sym);
        o += r.len;
    }
    out[o..].copy_from_slice(&buf[l..]);
    Ok(())
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(data: &[u8], at: &mut usize) -> Result<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *data
            .get(*at)
            .ok_or_else(|| Error::corrupt("varint truncated"))?;
        *at += 1;
        v |= ((b & 0x7f) as u64) << shift;
        if b < 0x80 {
            return Ok(v);
        }
    }
    Err(Error::corrupt("varint longer than 64 bits"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_finds_long_runs_and_keeps_the_rest() {
        let mut s: Vec<u8> = (0..100u32).map(|i| (i % 5) as u8).collect();
        s.extend(std::iter::repeat_n(7u8, 1000));
        s.extend((0..50u32).map(|i| (i % 3) as u8));
        let (runs, lits) = split(&s);
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].sym, 7);
        assert!(runs[0].len >= 1000 && runs[0].len <= 1001);
        assert_eq!(lits.len() + runs[0].len, s.len());
    }

    #[test]
    fn varints_round_trip() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut o = Vec::new();
            put_varint(&mut o, v);
            let mut at = 0;
            assert_eq!(get_varint(&o, &mut at).unwrap(), v);
        }
    }
}
