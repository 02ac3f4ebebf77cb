//! LZ77 with a hash-chain match finder; literals, literal-run lengths, match lengths and
//! distances are coded as four tANS streams plus one stream of extra bits.
//!
//! The parse is a list of sequences `(literal run, match length, distance)`, every sequence
//! ending in a match of at least [`MIN_MATCH`] bytes; literals after the last match are
//! implied by the literal count. Matches are found greedily with one step of lazy evaluation
//! over hash chains of 4-byte prefixes, limited to [`MAX_CHAIN`] candidates.
//!
//! Numbers (literal run, match length − [`MIN_MATCH`], distance − 1) are tokens: values below
//! 16 are their own token, larger values `v` get token `12 + k` with `k = floor(log2 v)` and the
//! `k` low bits `v − 2^k` in the extra-bit stream (sequence order, then field order).
//!
//! Body layout:
//!
//! ```text
//! u32 LE   sequence count S
//! u32 LE   literal count
//! 4 x      u32 LE byte length + tANS body: literals, literal-run tokens (S),
//!          match-length tokens (S), distance tokens (S)
//! ...      extra bits, LSB-first, padded to a byte
//! ```

use super::bitio::{BitReader, BitWriter};
use super::tans;
use crate::error::{Error, Result};

/// Shortest match.
pub const MIN_MATCH: usize = 4;
/// Longest match.
pub const MAX_MATCH: usize = 1 << 16;
/// Hash-chain candidates examined per position.
pub const MAX_CHAIN: usize = 32;
const HASH_LOG: u32 = 16;
const NONE: u32 = u32::MAX;

fn token(v: u32) -> (u8, u32, u32) {
    if v < 16 {
        (v as u8, 0, 0)
    } else {
        let k = 31 - v.leading_zeros();
        ((12 + k) as u8, v - (1 << k), k)
    }
}

fn hash(s: &[u8], i: usize) -> usize {
    let v = u32::from_le_bytes(s[i..i + 4].try_into().unwrap());
    (v.wrapping_mul(0x9E37_79B1) >> (32 - HASH_LOG)) as usize
}

struct Finder<'a> {
    s: &'a [u8],
    head: Vec<u32>,
    prev: Vec<u32>,
}

impl<'a> Finder<'a> {
    fn new(s: &'a [u8]) -> Self {
        Finder {
            s,
            head: vec![NONE; 1 << HASH_LOG],
            prev: vec![NONE; s.len()],
        }
    }

    fn insert(&mut self, i: usize) {
        if i + 4 <= self.s.len() {
            let h = hash(self.s, i);
            self.prev[i] = self.head[h];
            self.head[h] = i as u32;
        }
    }

    /// Longest match for position `i` among earlier positions: (length, distance).
    fn best(&self, i: usize) -> (usize, usize) {
        let s = self.s;
        if i + MIN_MATCH > s.len() {
            return (0, 0);
        }
        let limit = (s.len() - i).min(MAX_MATCH);
        let mut cand = self.head[hash(s, i)];
        let mut best = (0, 0);
        for _ in 0..MAX_CHAIN {
            if cand == NONE {
                break;
            }
            let c = cand as usize;
            if best.0 < limit && s[c + best.0] == s[i + best.0] {
                let len = s[c..]
                    .iter()
                    .zip(&s[i..i + limit])
                    .take_while(|(a, b)| a == b)
                    .count();
                if len > best.0 {
                    best = (len, i - c);
                    if len == limit {
                        break;
                    }
                }
            }
            cand = self.prev[c];
        }
        if best.0 < MIN_MATCH {
            (0, 0)
        } else {
            best
        }
    }
}

/// Encode `symbols` (fewer than 2^32), appending the body.
pub fn encode(symbols: &[u8], out: &mut Vec<u8>) {
    let n = symbols.len();
    let mut f = Finder::new(symbols);
    let mut lits = Vec::new();
    let (mut tl, mut tm, mut td) = (Vec::new(), Vec::new(), Vec::new());
    let mut ebuf = Vec::new();
    let mut w = BitWriter::new(&mut ebuf, 1024);
    let put = |toks: &mut Vec<u8>, v: u32, w: &mut BitWriter| {
        let (t, e, k) = token(v);
        toks.push(t);
        w.put(e as u64, k);
        w.flush();
    };
    let mut i = 0;
    let mut lit_start = 0;
    while i < n {
        let (len, dist) = f.best(i);
        f.insert(i);
        if len == 0 {
            i += 1;
            continue;
        }
        // One step of lazy matching: prefer a longer match starting one byte later.
        if i + 1 < n {
            let (len2, _) = f.best(i + 1);
            if len2 > len + 1 {
                i += 1;
                continue;
            }
        }
        lits.extend_from_slice(&symbols[lit_start..i]);
        put(&mut tl, (i - lit_start) as u32, &mut w);
        put(&mut tm, (len - MIN_MATCH) as u32, &mut w);
        put(&mut td, (dist - 1) as u32, &mut w);
        for j in i + 1..i + len {
            f.insert(j);
        }
        i += len;
        lit_start = i;
    }
    lits.extend_from_slice(&symbols[lit_start..]);
    w.finish();
    out.extend_from_slice(&(tl.len() as u32).to_le_bytes());
    out.extend_from_slice(&(lits.len() as u32).to_le_bytes());
    for part in [&lits, &tl, &tm, &td] {
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        tans::encode(part, out);
        let len = (out.len() - at - 4) as u32;
        out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }
    out.extend_from_slice(&ebuf);
}

fn take<'a>(data: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
    if data.len() < n {
        return Err(Error::corrupt("LZ77 body truncated"));
    }
    let (a, b) = data.split_at(n);
    *data = b;
    Ok(a)
}

fn read_u32(data: &mut &[u8]) -> Result<usize> {
    Ok(u32::from_le_bytes(take(data, 4)?.try_into().unwrap()) as usize)
}

fn value(tok: u8, r: &mut BitReader) -> Result<usize> {
    if tok < 16 {
        return Ok(tok as usize);
    }
    let k = tok as u32 - 12;
    if k > 31 {
        return Err(Error::corrupt("LZ77 token out of range"));
    }
    r.refill();
    Ok((1usize << k) | r.read(k) as usize)
}

/// Decode a body written by [`encode`] into `out` (length = symbol count).
pub fn decode(body: &[u8], out: &mut [u8]) -> Result<()> {
    let n = out.len();
    let mut data = body;
    let s = read_u32(&mut data)?;
    let nl = read_u32(&mut data)?;
    // Every sequence produces at least MIN_MATCH symbols.
    if nl > n || s > n / MIN_MATCH {
        return Err(Error::corrupt("LZ77 counts exceed the symbol count"));
    }
    let mut lits = super::try_alloc(nl)?;
    let mut toks = [
        super::try_alloc(s)?,
        super::try_alloc(s)?,
        super::try_alloc(s)?,
    ];
    let len = read_u32(&mut data)?;
    tans::decode(take(&mut data, len)?, &mut lits)?;
    for t in toks.iter_mut() {
        let len = read_u32(&mut data)?;
        tans::decode(take(&mut data, len)?, t)?;
    }
    let mut r = BitReader::new(data);
    let (mut pos, mut lp) = (0usize, 0usize);
    let [tl, tm, td] = &toks;
    for ((&a, &b), &c) in tl.iter().zip(tm).zip(td) {
        let ll = value(a, &mut r)?;
        let ml = value(b, &mut r)? + MIN_MATCH;
        let dist = value(c, &mut r)? + 1;
        if ll > nl - lp || ll > n - pos {
            return Err(Error::corrupt("LZ77 literal run past the end"));
        }
        out[pos..pos + ll].copy_from_slice(&lits[lp..lp + ll]);
        pos += ll;
        lp += ll;
        if dist > pos || ml > n - pos {
            return Err(Error::corrupt(
                "LZ77 match outside the window or past the end",
            ));
        }
        if dist >= ml {
            out.copy_within(pos - dist..pos - dist + ml, pos);
        } else {
            for j in pos..pos + ml {
                out[j] = out[j - dist];
            }
        }
        pos += ml;
    }
    let rest = nl - lp;
    if rest != n - pos {
        return Err(Error::corrupt("LZ77 literals do not fill the stream"));
    }
    out[pos..].copy_from_slice(&lits[lp..]);
    if r.overrun() || r.position().div_ceil(8) != data.len() {
        return Err(Error::corrupt("LZ77 extra bits do not match the sequences"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_finds_matches() {
        let base: Vec<u8> = (0..5000u32).map(|i| (i * 31 % 251) as u8).collect();
        let mut s = base.clone();
        s.extend_from_slice(&base);
        s.extend_from_slice(&[7; 3000]);
        for input in [vec![], vec![1u8, 2, 3], s] {
            let mut body = Vec::new();
            encode(&input, &mut body);
            let mut out = vec![0u8; input.len()];
            decode(&body, &mut out).unwrap();
            assert_eq!(out, input);
            if input.len() > 10_000 {
                assert!(body.len() < 6000, "{}", body.len());
            }
        }
    }
}
