//! Canonical Huffman coding, length-limited to [`MAX_LEN`] bits, with four interleaved
//! streams and a single-lookup decode table.
//!
//! Code lengths come from a two-queue Huffman construction; lengths above the limit are cut
//! and the Kraft sum repaired by lengthening the rarest short codes, then any slack is given
//! back to frequent symbols so the code is always complete (the decoder insists on it). With a
//! single present symbol a second, unused symbol gets the other 1-bit code.
//!
//! Body layout (the symbol count `n` comes from the enclosing stream):
//!
//! ```text
//! byte 0          max symbol M
//! ceil((M+1)/2)   code lengths 0..=11 of symbols 0..=M, 4 bits each, low nibble first
//! 3 x u32 LE      byte lengths of streams 0, 1, 2 (stream 3 takes the rest)
//! streams         symbol i is in stream i % 4, codes written LSB-first (first code bit is
//!                 the lowest bit), each stream padded to a byte
//! ```

use super::bitio::{BitReader, BitWriter};
use crate::error::{Error, Result};

/// Longest code length.
pub const MAX_LEN: u32 = 11;
const TABLE: usize = 1 << MAX_LEN;
const STREAMS: usize = 4;

/// Length-limited code lengths for `hist` (length 0 for absent symbols).
pub fn code_lengths(hist: &[u32; 256]) -> [u8; 256] {
    let mut len = [0u8; 256];
    let mut leaves: Vec<(u32, u8)> = (0..256)
        .filter(|&s| hist[s] > 0)
        .map(|s| (hist[s], s as u8))
        .collect();
    match leaves.len() {
        0 => return len,
        1 => {
            let s = leaves[0].1;
            len[s as usize] = 1;
            len[(s ^ 1) as usize] = 1;
            return len;
        }
        _ => {}
    }
    leaves.sort_unstable();
    let n = leaves.len();
    // Two-queue construction: nodes 0..n are leaves (ascending weight), n.. internal.
    let mut weight: Vec<u64> = leaves.iter().map(|&(c, _)| c as u64).collect();
    weight.resize(2 * n - 1, 0);
    let mut parent = vec![0usize; 2 * n - 1];
    let (mut leaf, mut node) = (0usize, n);
    for next in n..2 * n - 1 {
        let mut pick = || {
            if leaf < n && (node >= next || weight[leaf] <= weight[node]) {
                leaf += 1;
                leaf - 1
            } else {
                node += 1;
                node - 1
            }
        };
        let (a, b) = (pick(), pick());
        weight[next] = weight[a] + weight[b];
        parent[a] = next;
        parent[b] = next;
    }
    let mut depth = vec![0u32; 2 * n - 1];
    for i in (0..2 * n - 2).rev() {
        depth[i] = depth[parent[i]] + 1;
    }
    let mut l: Vec<u32> = depth[..n].iter().map(|&d| d.min(MAX_LEN)).collect();
    let target = 1u64 << MAX_LEN;
    let value = |l: u32| 1u64 << (MAX_LEN - l);
    let mut kraft: u64 = l.iter().map(|&x| value(x)).sum();
    // Over-full: lengthen the rarest of the longest codes below the limit.
    while kraft > target {
        let mut pick = None;
        for (i, &x) in l.iter().enumerate() {
            if x < MAX_LEN && pick.is_none_or(|p: usize| x > l[p]) {
                pick = Some(i);
            }
        }
        let i = pick.expect("a code below the limit exists while the Kraft sum is over-full");
        kraft -= value(l[i] + 1);
        l[i] += 1;
    }
    // Under-full: shorten the most frequent code whose shortening still fits. The deficit is
    // a multiple of the longest code's value, so some code always fits.
    while kraft < target {
        let d = target - kraft;
        let i = (0..n)
            .rev()
            .find(|&i| l[i] > 1 && value(l[i]) <= d)
            .expect("a shortenable code exists while the Kraft sum is under-full");
        kraft += value(l[i]);
        l[i] -= 1;
    }
    for (i, &(_, s)) in leaves.iter().enumerate() {
        len[s as usize] = l[i] as u8;
    }
    len
}

/// Code lengths for `hist` and the exact body size in bits they give.
pub fn plan(hist: &[u32; 256]) -> ([u8; 256], f64) {
    let len = code_lengths(hist);
    let max_sym = len.iter().rposition(|&x| x > 0).unwrap_or(0);
    let payload: u64 = (0..256).map(|s| hist[s] as u64 * len[s] as u64).sum();
    let header = 8 + 8 * ((max_sym as u64 + 2) / 2) + 96;
    (len, (payload + header + 4 * STREAMS as u64) as f64)
}

/// Canonical codes (bit-reversed for LSB-first output) of the given lengths.
fn canonical(len: &[u8]) -> [u16; 256] {
    let mut count = [0u32; MAX_LEN as usize + 2];
    for &l in len {
        count[l as usize] += 1;
    }
    count[0] = 0;
    let mut next = [0u32; MAX_LEN as usize + 2];
    let mut code = 0u32;
    for b in 1..=MAX_LEN as usize {
        code = (code + count[b - 1]) << 1;
        next[b] = code;
    }
    let mut codes = [0u16; 256];
    for (s, &l) in len.iter().enumerate() {
        if l > 0 {
            let c = next[l as usize];
            next[l as usize] += 1;
            codes[s] = (c.reverse_bits() >> (32 - l as u32)) as u16;
        }
    }
    codes
}

/// Encode `symbols`, appending the body to `out`.
pub fn encode(symbols: &[u8], out: &mut Vec<u8>) {
    if symbols.is_empty() {
        return;
    }
    encode_with(symbols, &super::tans::histogram(symbols), out);
}

/// [`encode`] with the symbols' histogram already counted (`hist` must be exactly it).
pub fn encode_with(symbols: &[u8], hist: &[u32; 256], out: &mut Vec<u8>) {
    if symbols.is_empty() {
        return;
    }
    let (len, bits) = plan(hist);
    let max_sym = len.iter().rposition(|&x| x > 0).unwrap_or(0);
    out.push(max_sym as u8);
    for pair in len[..=max_sym].chunks(2) {
        out.push(pair[0] | pair.get(1).copied().unwrap_or(0) << 4);
    }
    let codes = canonical(&len[..=max_sym]);
    // Code and length side by side: one lookup per symbol.
    let mut table = [0u32; 256];
    for (s, e) in table.iter_mut().enumerate().take(max_sym + 1) {
        *e = codes[s] as u32 | (len[s] as u32) << 16;
    }
    let mut streams: Vec<Vec<u8>> = vec![Vec::new(); STREAMS];
    let cap = (bits / STREAMS as f64 * 1.05) as usize + 256;
    let [s0, s1, s2, s3] = &mut streams[..] else {
        unreachable!("four streams")
    };
    let mut ws = [s0, s1, s2, s3].map(|b| BitWriter::new(b, cap));
    let put = |w: &mut BitWriter, s: u8| {
        let e = table[s as usize];
        w.put((e & 0xffff) as u64, e >> 16);
    };
    // 16 symbols: four per stream, at most 44 bits per stream between flushes.
    let blocks = symbols.chunks_exact(4 * STREAMS);
    let tail = blocks.remainder();
    for b in blocks {
        for (j, w) in ws.iter_mut().enumerate() {
            put(w, b[j]);
            put(w, b[j + STREAMS]);
            put(w, b[j + 2 * STREAMS]);
            put(w, b[j + 3 * STREAMS]);
            w.flush();
        }
    }
    for (i, &s) in tail.iter().enumerate() {
        let w = &mut ws[i % STREAMS];
        put(w, s);
        w.flush();
    }
    for w in ws {
        w.finish();
    }
    for s in &streams[..STREAMS - 1] {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    }
    for s in &streams {
        out.extend_from_slice(s);
    }
}

/// Decode table: `sym | len << 8` for every 11-bit window.
struct DTable(Box<[u16; TABLE]>);

impl DTable {
    fn new(len: &[u8]) -> Result<Self> {
        let mut kraft = 0u64;
        for &l in len {
            if l as u32 > MAX_LEN {
                return Err(Error::corrupt("Huffman code length above the limit"));
            }
            if l > 0 {
                kraft += 1 << (MAX_LEN - l as u32);
            }
        }
        if kraft != TABLE as u64 {
            return Err(Error::corrupt(
                "Huffman code lengths do not form a complete code",
            ));
        }
        let codes = canonical(len);
        let mut t = Box::new([0u16; TABLE]);
        for (s, &l) in len.iter().enumerate() {
            if l == 0 {
                continue;
            }
            let e = s as u16 | (l as u16) << 8;
            let mut i = codes[s] as usize;
            while i < TABLE {
                t[i] = e;
                i += 1 << l;
            }
        }
        Ok(DTable(t))
    }

    #[inline(always)]
    fn step(&self, r: &mut BitReader) -> u8 {
        let e = self.0[r.peek(MAX_LEN) as usize & (TABLE - 1)];
        r.consume((e >> 8) as u32);
        e as u8
    }
}

/// Decode a body written by [`encode`] into `out` (length = symbol count).
pub fn decode(body: &[u8], out: &mut [u8]) -> Result<()> {
    if out.is_empty() {
        return if body.is_empty() {
            Ok(())
        } else {
            Err(Error::corrupt("Huffman body present for an empty stream"))
        };
    }
    let (&m, rest) = body
        .split_first()
        .ok_or_else(|| Error::corrupt("Huffman header truncated"))?;
    let k = m as usize + 1;
    let nib = k.div_ceil(2);
    if rest.len() < nib + 12 {
        return Err(Error::corrupt("Huffman header truncated"));
    }
    let len: Vec<u8> = (0..k)
        .map(|s| (rest[s / 2] >> (4 * (s % 2))) & 15)
        .collect();
    let t = DTable::new(&len)?;
    let mut data = &rest[nib + 12..];
    let mut parts: [&[u8]; STREAMS] = [&[]; STREAMS];
    for (j, part) in parts.iter_mut().enumerate().take(STREAMS - 1) {
        let at = nib + 4 * j;
        let l = u32::from_le_bytes(rest[at..at + 4].try_into().unwrap()) as usize;
        if l > data.len() {
            return Err(Error::corrupt("Huffman stream length past the end"));
        }
        (*part, data) = data.split_at(l);
    }
    parts[STREAMS - 1] = data;
    // Every symbol takes at least one bit.
    let n = out.len();
    for (j, p) in parts.iter().enumerate() {
        let nj = n / STREAMS + usize::from(j < n % STREAMS);
        if p.len().saturating_mul(8) < nj {
            return Err(Error::corrupt("Huffman stream too short for its symbols"));
        }
    }
    if n >= MULTI_MIN {
        let rs = decode_multi(&t, &parts, out);
        return check_ends(&rs, &parts);
    }
    let [mut r0, mut r1, mut r2, mut r3] = parts.map(BitReader::new);
    const BLOCK: usize = 20; // 5 symbols per stream per refill: 55 <= 56 bits.
    let full = n / BLOCK * BLOCK;
    let (head, tail) = out.split_at_mut(full);
    for blk in head.chunks_exact_mut(BLOCK) {
        r0.refill();
        r1.refill();
        r2.refill();
        r3.refill();
        for q in blk.chunks_exact_mut(STREAMS) {
            q[0] = t.step(&mut r0);
            q[1] = t.step(&mut r1);
            q[2] = t.step(&mut r2);
            q[3] = t.step(&mut r3);
        }
    }
    let mut rs = [r0, r1, r2, r3];
    for (i, o) in tail.iter_mut().enumerate() {
        let r = &mut rs[i % STREAMS];
        r.refill();
        *o = t.step(r);
    }
    check_ends(&rs, &parts)
}

/// Every stream must have been read exactly to its last byte.
fn check_ends(rs: &[BitReader; STREAMS], parts: &[&[u8]; STREAMS]) -> Result<()> {
    for (r, p) in rs.iter().zip(parts.iter()) {
        if r.overrun() || r.position().div_ceil(8) != p.len() {
            return Err(Error::corrupt(
                "Huffman stream does not end where its symbols do",
            ));
        }
    }
    Ok(())
}

/// Symbol count from which [`decode_multi`] pays for building its table.
const MULTI_MIN: usize = 8192;
/// Most symbols one multi-symbol table entry holds.
const MULTI: usize = 4;
/// Lookups per refill (5 x 11 bits <= the 56 a refill guarantees).
const LOOKUPS: usize = 5;

/// Multi-symbol decode table: for every 11-bit window, the up to four whole codes it starts
/// with, as `sym0 | sym1 << 8 | sym2 << 16 | sym3 << 24 | bits << 32 | count << 40`.
fn multi_table(t: &DTable) -> Box<[u64; TABLE]> {
    let mut m = Box::new([0u64; TABLE]);
    for (w, e) in m.iter_mut().enumerate() {
        let (mut bits, mut count, mut syms) = (0u64, 0u64, 0u64);
        while (count as usize) < MULTI {
            // Bits above the window are unknown (zero here): a code is whole only if it ends
            // inside the window, and then those bits did not take part in its lookup.
            let d = t.0[(w >> bits) & (TABLE - 1)];
            let l = (d >> 8) as u64;
            if bits + l > MAX_LEN as u64 {
                break;
            }
            syms |= ((d & 0xff) as u64) << (8 * count);
            bits += l;
            count += 1;
        }
        *e = syms | bits << 32 | count << 40;
    }
    m
}

/// Decode with up to four symbols per lookup. Stream `j` owns positions `j, j + 4, ...`;
/// each writes its next four positions on every lookup (the ones beyond what the entry held
/// are rewritten by the stream's following lookups), so the fast loop runs only while every
/// stream has more than a refill's worth of symbols and 8 readable bytes left; the tail goes
/// one symbol at a time through [`BitReader`].
fn decode_multi<'a>(
    t: &DTable,
    parts: &[&'a [u8]; STREAMS],
    out: &mut [u8],
) -> [BitReader<'a>; STREAMS] {
    let m = multi_table(t);
    let n = out.len();
    let count = |j: usize| n / STREAMS + usize::from(j < n % STREAMS);
    let ends: [usize; STREAMS] = std::array::from_fn(|j| j + STREAMS * count(j));
    let mut pos: [usize; STREAMS] = [0, 1, 2, 3];
    let mut bitpos = [0usize; STREAMS];
    let margin = STREAMS * LOOKUPS * MULTI;
    let o = out.as_mut_ptr();
    while (0..STREAMS).all(|j| pos[j] + margin < ends[j] && bitpos[j] / 8 + 8 <= parts[j].len()) {
        for j in 0..STREAMS {
            let at = bitpos[j] / 8;
            let word = u64::from_le_bytes(parts[j][at..at + 8].try_into().unwrap());
            let mut window = word >> (bitpos[j] & 7);
            let mut p = pos[j];
            for _ in 0..LOOKUPS {
                let e = m[(window & (TABLE as u64 - 1)) as usize];
                // SAFETY: `p + 3 * STREAMS < pos[j] + margin < ends[j] <= n + STREAMS - 1`,
                // and positions of stream j below `ends[j]` are below `n`.
                unsafe {
                    *o.add(p) = e as u8;
                    *o.add(p + STREAMS) = (e >> 8) as u8;
                    *o.add(p + 2 * STREAMS) = (e >> 16) as u8;
                    *o.add(p + 3 * STREAMS) = (e >> 24) as u8;
                }
                let bits = (e >> 32) & 15;
                window >>= bits;
                bitpos[j] += bits as usize;
                p += STREAMS * (e >> 40) as usize;
            }
            pos[j] = p;
        }
    }
    std::array::from_fn(|j| {
        let mut r = BitReader::at(parts[j], bitpos[j]);
        let mut p = pos[j];
        while p < ends[j] {
            r.refill();
            out[p] = t.step(&mut r);
            p += STREAMS;
        }
        r
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_limited_and_complete() {
        // Fibonacci-like counts force a deep tree.
        let mut hist = [0u32; 256];
        let (mut a, mut b) = (1u32, 1u32);
        for c in hist.iter_mut().take(40) {
            *c = a;
            (a, b) = (b, (a + b).min(1 << 30));
        }
        let len = code_lengths(&hist);
        assert!(len.iter().all(|&l| l as u32 <= MAX_LEN));
        let kraft: u64 = len
            .iter()
            .filter(|&&l| l > 0)
            .map(|&l| 1u64 << (MAX_LEN - l as u32))
            .sum();
        assert_eq!(kraft, 1 << MAX_LEN);
    }

    #[test]
    fn round_trips() {
        for symbols in [
            vec![],
            vec![3u8],
            vec![0, 1, 0, 0, 1],
            (0..=255u8).collect::<Vec<_>>(),
            (0..54_321u32).map(|i| (i % 7 * (i % 3)) as u8).collect(),
            // Long and skewed: the multi-symbol path, with codes of 1 to 11 bits.
            (0..100_003u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 20).trailing_zeros() as u8)
                .collect(),
        ] {
            let mut body = Vec::new();
            encode(&symbols, &mut body);
            let mut out = vec![0u8; symbols.len()];
            decode(&body, &mut out).unwrap();
            assert_eq!(out, symbols);
        }
    }
}
