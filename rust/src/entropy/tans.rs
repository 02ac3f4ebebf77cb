//! Tabled asymmetric numeral systems (tANS) over byte alphabets.
//!
//! The coder follows the FSE construction: symbol counts are normalized to `L = 2^R` slots
//! (`R` in [`MIN_LOG`]`..=`[`MAX_LOG`], chosen per stream), the slots are spread over the table
//! with an odd step (every present symbol gets at least one slot, however rare), and each
//! decode step is one table lookup plus a bit read of 0..=R bits; transitions that read zero
//! bits cost nothing and take no branch, so a symbol of probability 0.99 costs ~0.015 bit.
//!
//! Four states are interleaved (symbol `i` belongs to state `i % 4`) to hide the latency of the
//! lookup chain. The encoder runs over the symbols in reverse, so the decoder reads the bit
//! stream backwards from an end marker.
//!
//! Body layout (the symbol count is known from the enclosing stream):
//!
//! ```text
//! byte 0      R - 5 (0..=7)
//! byte 1      max symbol M (alphabet 0..=M)
//! bits        counts f_0 .. f_{M-1}, LSB-first; f_s takes bitlen(L - f_0 - .. - f_{s-1}) bits;
//!             f_M is the remainder and must be >= 1; padded to a byte
//! bits        the tANS bit stream, read backwards from its end marker: first the four final
//!             states (R bits each, state 0 first), then per symbol the transition bits
//! ```
//!
//! An empty symbol sequence has an empty body.

use super::bitio::{mask, BackReader, BitReader, BitWriter};
use crate::error::{Error, Result};

/// Smallest table log used.
pub const MIN_LOG: u32 = 5;
/// Largest table log used (4096 states; the decode table is 16 KiB and stays in L1).
pub const MAX_LOG: u32 = 12;
const TABLE_SIZE: usize = 1 << MAX_LOG;
const LANES: usize = 4;

/// Normalized symbol counts: `counts[s]` slots of `1 << log` for symbol `s`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Norm {
    /// Table log `R`.
    pub log: u32,
    /// Slot counts, length `max symbol + 1`, summing to `1 << log`.
    pub counts: Vec<u32>,
}

/// Byte histogram of `symbols`.
pub fn histogram(symbols: &[u8]) -> [u32; 256] {
    super::simd::histogram(symbols)
}

/// Normalize `hist` (total `n > 0`) to `1 << log` slots minimizing the coded size: start from
/// the rounded-down share (at least 1 for present symbols), then move single slots greedily to
/// where they gain (or cost) the most `count * log2` bits. Needs `1 << log >= present symbols`.
pub fn normalize(hist: &[u32; 256], log: u32) -> Norm {
    let l = 1u64 << log;
    let n: u64 = hist.iter().map(|&c| c as u64).sum();
    let max_sym = hist.iter().rposition(|&c| c > 0).unwrap_or(0);
    let mut f = vec![0u32; max_sym + 1];
    let mut sum = 0u64;
    for (s, fs) in f.iter_mut().enumerate() {
        let c = hist[s] as u64;
        if c > 0 {
            *fs = ((c * l) / n).max(1) as u32;
            sum += *fs as u64;
        }
    }
    let gain = |c: u32, fs: u32| c as f64 * ((fs as f64 + 1.0) / fs as f64).log2();
    let loss = |c: u32, fs: u32| {
        if fs <= 1 {
            f64::INFINITY
        } else {
            c as f64 * (fs as f64 / (fs as f64 - 1.0)).log2()
        }
    };
    if sum < l {
        let mut g: Vec<f64> = f
            .iter()
            .enumerate()
            .map(|(s, &fs)| if fs > 0 { gain(hist[s], fs) } else { -1.0 })
            .collect();
        while sum < l {
            let best = argmax(&g);
            f[best] += 1;
            g[best] = gain(hist[best], f[best]);
            sum += 1;
        }
    } else if sum > l {
        let mut d: Vec<f64> = f
            .iter()
            .enumerate()
            .map(|(s, &fs)| loss(hist[s], fs))
            .collect();
        while sum > l {
            let best = argmin(&d);
            f[best] -= 1;
            d[best] = loss(hist[best], f[best]);
            sum -= 1;
        }
    }
    Norm { log, counts: f }
}

fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

fn argmin(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x < v[best] {
            best = i;
        }
    }
    best
}

/// Estimated payload bits of coding a stream with histogram `hist` under `norm`.
pub fn cost_bits(hist: &[u32; 256], norm: &Norm) -> f64 {
    let l = (1u64 << norm.log) as f64;
    norm.counts
        .iter()
        .enumerate()
        .filter(|(_, &f)| f > 0)
        .map(|(s, &f)| hist[s] as f64 * (l / f as f64).log2())
        .sum()
}

/// [`cost_bits`] of `symbols` themselves (for sizing output buffers).
fn cost_bits_of(symbols: &[u8], norm: &Norm) -> f64 {
    cost_bits(&histogram(symbols), norm)
}

fn header_bits(norm: &Norm) -> u64 {
    let l = 1u32 << norm.log;
    let mut rem = l;
    let mut bits = 16u64;
    for &f in &norm.counts[..norm.counts.len() - 1] {
        bits += (32 - rem.leading_zeros()) as u64;
        rem -= f;
    }
    bits
}

/// Choose the table log for a stream with histogram `hist` and return its normalization and
/// the estimated total body size in bits (header, payload and final states).
pub fn plan(hist: &[u32; 256]) -> (Norm, f64) {
    let n: u64 = hist.iter().map(|&c| c as u64).sum();
    let present = hist.iter().filter(|&&c| c > 0).count().max(1) as u32;
    // Enough slots for every present symbol.
    let min_log = (32 - (present - 1).leading_zeros()).clamp(MIN_LOG, MAX_LOG);
    let logs = if n >= 1 << 14 {
        MAX_LOG..=MAX_LOG
    } else {
        min_log..=MAX_LOG
    };
    let mut best: Option<(Norm, f64)> = None;
    for log in logs {
        let norm = normalize(hist, log);
        let bits =
            cost_bits(hist, &norm) + header_bits(&norm) as f64 + (LANES as u32 * log) as f64 + 8.0;
        if best.as_ref().is_none_or(|b| bits < b.1) {
            best = Some((norm, bits));
        }
    }
    best.unwrap()
}

/// Build the slot -> symbol spread of a normalization.
fn spread(norm: &Norm, table: &mut [u8; TABLE_SIZE]) {
    let l = 1usize << norm.log;
    let step = (l >> 1) + (l >> 3) + 3;
    let m = l - 1;
    let mut pos = 0usize;
    for (s, &f) in norm.counts.iter().enumerate() {
        for _ in 0..f {
            table[pos & m] = s as u8;
            pos = (pos + step) & m;
        }
    }
}

/// One decode-table entry: the slot's symbol, the bits to read, and the base of the next
/// state (`next = base + bits`).
#[derive(Clone, Copy, Default)]
#[repr(C)]
pub(crate) struct DEntry {
    base: u16,
    sym: u8,
    nb: u8,
}

/// Decode table sized for the largest log, so that lookups masked with `TABLE_SIZE - 1`
/// need no bounds check.
pub(crate) struct DTable {
    pub(crate) log: u32,
    entries: Box<[DEntry; TABLE_SIZE]>,
}

/// Fill `entries[..L]` with the decode table of `norm`.
fn fill_dtable(norm: &Norm, entries: &mut [DEntry]) {
    let mut sym = [0u8; TABLE_SIZE];
    spread(norm, &mut sym);
    let l = 1u32 << norm.log;
    let mut next: Vec<u32> = norm.counts.clone();
    for (x, e) in entries.iter_mut().take(l as usize).enumerate() {
        let s = sym[x];
        let nx = next[s as usize];
        next[s as usize] += 1;
        let nb = norm.log - (31 - nx.leading_zeros());
        *e = DEntry {
            base: ((nx << nb) - l) as u16,
            sym: s,
            nb: nb as u8,
        };
    }
}

impl DTable {
    pub(crate) fn new(norm: &Norm) -> Self {
        let mut entries = Box::new([DEntry::default(); TABLE_SIZE]);
        fill_dtable(norm, &mut entries[..]);
        DTable {
            log: norm.log,
            entries,
        }
    }

    #[inline(always)]
    pub(crate) fn step(&self, x: &mut usize, r: &mut BackReader) -> u8 {
        let e = self.entries[*x & (TABLE_SIZE - 1)];
        *x = e.base as usize + r.read(e.nb as u32) as usize;
        e.sym
    }
}

/// Encode tables: per symbol the bit-count delta and the offset into the state table.
pub(crate) struct ETable {
    states: Box<[u16; TABLE_SIZE]>,
    sym: [(u32, i32); 256],
}

impl ETable {
    pub(crate) fn new(norm: &Norm) -> Self {
        let mut spread_t = [0u8; TABLE_SIZE];
        spread(norm, &mut spread_t);
        let l = 1usize << norm.log;
        let mut cumul = [0u32; 257];
        for s in 0..256 {
            cumul[s + 1] = cumul[s] + norm.counts.get(s).copied().unwrap_or(0);
        }
        let mut states = Box::new([0u16; TABLE_SIZE]);
        let mut fill = cumul;
        for (x, &s) in spread_t.iter().take(l).enumerate() {
            states[fill[s as usize] as usize] = (l + x) as u16;
            fill[s as usize] += 1;
        }
        let mut sym = [(0u32, 0i32); 256];
        for (s, &f) in norm.counts.iter().enumerate() {
            if f == 0 {
                continue;
            }
            let max_bits = norm.log - (31 - f.leading_zeros());
            let delta_nb = (max_bits << 16).wrapping_sub(f << max_bits);
            sym[s] = (delta_nb, cumul[s] as i32 - f as i32);
        }
        ETable { states, sym }
    }

    /// Encode `s` from state `x` (in `[L, 2L)`), putting the shed bits into `w`.
    #[inline(always)]
    pub(crate) fn step(&self, x: &mut u32, s: u8, w: &mut BitWriter) {
        let (delta_nb, delta_find) = self.sym[s as usize];
        let nb = x.wrapping_add(delta_nb) >> 16;
        w.put((*x as u64) & mask(nb), nb);
        let idx = ((*x >> nb) as i32 + delta_find) as usize;
        *x = self.states[idx & (TABLE_SIZE - 1)] as u32;
    }
}

/// Append the count header of `norm` (the first two fields of the body layout).
pub fn write_header(norm: &Norm, out: &mut Vec<u8>) {
    out.push((norm.log - MIN_LOG) as u8);
    out.push((norm.counts.len() - 1) as u8);
    let mut w = BitWriter::new(out, 13 * 256);
    let mut rem = 1u32 << norm.log;
    for &f in &norm.counts[..norm.counts.len() - 1] {
        w.put(f as u64, 32 - rem.leading_zeros());
        w.flush();
        rem -= f;
    }
    w.finish();
}

/// Parse a count header; returns the normalization and the rest of `body`.
pub fn read_header(body: &[u8]) -> Result<(Norm, &[u8])> {
    if body.len() < 2 {
        return Err(Error::corrupt("tANS header truncated"));
    }
    let log = body[0] as u32 + MIN_LOG;
    if log > MAX_LOG {
        return Err(Error::corrupt(format!("tANS table log {log} out of range")));
    }
    let k = body[1] as usize + 1;
    let mut r = BitReader::new(&body[2..]);
    let mut rem = 1u32 << log;
    let mut counts = Vec::with_capacity(k);
    for _ in 0..k - 1 {
        r.refill();
        let f = r.read(32 - rem.leading_zeros()) as u32;
        if f > rem {
            return Err(Error::corrupt("tANS counts exceed the table size"));
        }
        rem -= f;
        counts.push(f);
    }
    if rem == 0 {
        return Err(Error::corrupt(
            "tANS counts leave nothing for the last symbol",
        ));
    }
    counts.push(rem);
    if r.overrun() {
        return Err(Error::corrupt("tANS header truncated"));
    }
    let used = 2 + r.position().div_ceil(8);
    Ok((Norm { log, counts }, &body[used..]))
}

/// Encode `symbols` with a normalization computed from their histogram, appending the body.
pub fn encode(symbols: &[u8], out: &mut Vec<u8>) {
    if symbols.is_empty() {
        return;
    }
    let hist = histogram(symbols);
    let (norm, bits) = plan(&hist);
    encode_sized(symbols, &norm, bits, out);
}

/// Encode `symbols` with the given normalization. Every symbol must have a non-zero count in
/// `norm` (as when `norm` comes from [`plan`] on their histogram); otherwise the stream does not
/// decode.
pub fn encode_with(symbols: &[u8], norm: &Norm, out: &mut Vec<u8>) {
    encode_sized(symbols, norm, cost_bits_of(symbols, norm), out)
}

/// [`encode_with`] given the estimated size in bits, to size the output buffer.
fn encode_sized(symbols: &[u8], norm: &Norm, est_bits: f64, out: &mut Vec<u8>) {
    if symbols.is_empty() {
        return;
    }
    write_header(norm, out);
    let t = ETable::new(norm);
    let l = 1u32 << norm.log;
    // Start from the estimated size (the writer grows if needed) rather than the worst case,
    // which would zero-fill ~1.5 bytes per symbol.
    let hint = (est_bits * 1.02) as usize + 256;
    let w = BitWriter::new(out, hint);
    let (st, mut w) = encode_symbols_dispatch(&t, symbols, l, w);
    for x in st.iter().rev() {
        w.put((x - l) as u64, norm.log);
        w.flush();
    }
    w.finish_with_marker();
}

#[inline(always)]
fn encode_symbols<'a>(
    t: &ETable,
    symbols: &[u8],
    l: u32,
    mut w: BitWriter<'a>,
) -> ([u32; LANES], BitWriter<'a>) {
    // The writer and the states are locals here so that they live in registers.
    let mut st = [l; LANES];
    let n = symbols.len();
    let full = n / LANES * LANES;
    for i in (full..n).rev() {
        t.step(&mut st[i % LANES], symbols[i], &mut w);
        w.flush();
    }
    let [mut x0, mut x1, mut x2, mut x3] = st;
    for quad in symbols[..full].chunks_exact(LANES).rev() {
        t.step(&mut x3, quad[3], &mut w);
        t.step(&mut x2, quad[2], &mut w);
        t.step(&mut x1, quad[1], &mut w);
        t.step(&mut x0, quad[0], &mut w);
        w.flush();
    }
    ([x0, x1, x2, x3], w)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "bmi1,bmi2")]
fn encode_symbols_bmi2<'a>(
    t: &ETable,
    symbols: &[u8],
    l: u32,
    w: BitWriter<'a>,
) -> ([u32; LANES], BitWriter<'a>) {
    encode_symbols(t, symbols, l, w)
}

/// The symbol loop, compiled with BMI2 (flag-free variable shifts, `bzhi`) where the CPU has
/// it; both variants compute the same.
fn encode_symbols_dispatch<'a>(
    t: &ETable,
    symbols: &[u8],
    l: u32,
    w: BitWriter<'a>,
) -> ([u32; LANES], BitWriter<'a>) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::bmi2_enabled() {
        // SAFETY: the CPU supports BMI1/BMI2 (checked at run time by `bmi2_enabled`).
        return unsafe { encode_symbols_bmi2(t, symbols, l, w) };
    }
    encode_symbols(t, symbols, l, w)
}

/// Decode a body written by [`encode`] into `out` (whose length is the symbol count).
pub fn decode(body: &[u8], out: &mut [u8]) -> Result<()> {
    if out.is_empty() {
        return if body.is_empty() {
            Ok(())
        } else {
            Err(Error::corrupt("tANS body present for an empty stream"))
        };
    }
    let (norm, bits) = read_header(body)?;
    let t = DTable::new(&norm);
    decode_with(&t, bits, out)
}

#[inline(always)]
fn decode_symbols<'a>(
    t: &DTable,
    st: [usize; LANES],
    mut rd: BackReader<'a>,
    out: &mut [u8],
) -> ([usize; LANES], BackReader<'a>) {
    let full = out.len() / LANES * LANES;
    let (head, tail) = out.split_at_mut(full);
    let [mut x0, mut x1, mut x2, mut x3] = st;
    // The hot loop keeps only the bit position, the window and the four states live, so that
    // everything stays in registers. Each round reloads the window (four symbols take at most
    // 48 bits). Away from the stream's start the window is the 8 bytes ending at the byte of
    // the position, so the unread bits in it are `56 + bitpos % 8` without waiting for the
    // load; the rounds near the start go through the general reader.
    let data = rd.data();
    let mut bitpos = rd.remaining();
    let mut done = 0;
    for quad in head.chunks_exact_mut(LANES) {
        if bitpos < 64 {
            break;
        }
        let b = (bitpos >> 3) as usize - 7;
        let Some(bytes) = data.get(b..b + 8) else {
            break; // not reached: the position never exceeds the stream
        };
        let w = u64::from_le_bytes(bytes.try_into().unwrap());
        let mut avail = 56 + (bitpos & 7);
        let start = avail;
        quad[0] = fast_step(&t.entries, &mut x0, w, &mut avail);
        quad[1] = fast_step(&t.entries, &mut x1, w, &mut avail);
        quad[2] = fast_step(&t.entries, &mut x2, w, &mut avail);
        quad[3] = fast_step(&t.entries, &mut x3, w, &mut avail);
        bitpos -= start - avail;
        done += LANES;
    }
    if done > 0 {
        rd = BackReader::resume(data, bitpos);
    }
    let r = &mut rd;
    for quad in head[done..].chunks_exact_mut(LANES) {
        r.refill();
        quad[0] = t.step(&mut x0, r);
        quad[1] = t.step(&mut x1, r);
        quad[2] = t.step(&mut x2, r);
        quad[3] = t.step(&mut x3, r);
    }
    let mut st = [x0, x1, x2, x3];
    for (i, o) in tail.iter_mut().enumerate() {
        r.refill();
        *o = t.step(&mut st[i % LANES], r);
    }
    (st, rd)
}

/// One decode step with the window in a register: `avail` unread bits in `w`.
#[inline(always)]
fn fast_step(e: &[DEntry; TABLE_SIZE], x: &mut usize, w: u64, avail: &mut i64) -> u8 {
    let en = e[*x & (TABLE_SIZE - 1)];
    *avail -= en.nb as i64;
    *x = en.base as usize + (w.wrapping_shr(*avail as u32) & mask(en.nb as u32)) as usize;
    en.sym
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "bmi1,bmi2")]
fn decode_symbols_bmi2<'a>(
    t: &DTable,
    st: [usize; LANES],
    r: BackReader<'a>,
    out: &mut [u8],
) -> ([usize; LANES], BackReader<'a>) {
    decode_symbols(t, st, r, out)
}

fn decode_symbols_dispatch<'a>(
    t: &DTable,
    st: [usize; LANES],
    r: BackReader<'a>,
    out: &mut [u8],
) -> ([usize; LANES], BackReader<'a>) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::bmi2_enabled() {
        // SAFETY: the CPU supports BMI1/BMI2 (checked at run time by `bmi2_enabled`).
        return unsafe { decode_symbols_bmi2(t, st, r, out) };
    }
    decode_symbols(t, st, r, out)
}

pub(crate) fn decode_with(t: &DTable, bits: &[u8], out: &mut [u8]) -> Result<()> {
    let mut r = BackReader::new(bits)
        .ok_or_else(|| Error::corrupt("tANS bit stream lacks its end marker"))?;
    // Every symbol costs at least 0 bits, so the payload cannot bound n; the loop is bounded by
    // out.len() and the final checks catch inconsistencies.
    let mut st = [0usize; LANES];
    for x in st.iter_mut() {
        r.refill();
        *x = r.read(t.log) as usize;
    }
    let (st, r) = decode_symbols_dispatch(t, st, r, out);
    if r.remaining() != 0 || st.iter().any(|&x| x != 0) {
        return Err(Error::corrupt(
            "tANS stream does not end where its symbols do",
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Context tANS: the previous symbol, and optionally the symbol one period back (the "row
// above" in a matrix), select the table. See docs/ENTROPY_FORMAT.md §4 for the layout.
//
// The n symbols form four lanes of contiguous positions: lane j < 3 holds [j*q, (j+1)*q) and
// lane 3 holds [3q, n), q = n / 4. The decoder advances the four lanes in lock step (round r
// decodes position j*q + r of every lane), then finishes lane 3 alone; the encoder runs the
// exact reverse. Lanes give four independent dependency chains despite the context. Within a
// lane, position r has left = lane[r - 1] (0 at r = 0) and up = lane[r - P] (0 if r < P).
// ---------------------------------------------------------------------------------------------

/// Largest number of contexts of the context coder.
pub const MAX_CONTEXTS: usize = 64;
const MAX_LEFT: usize = 16;
const MAX_UP: usize = 8;
/// Symbols of a chunk the context coder's size estimate looks at.
const CTX_SAMPLE: usize = 1 << 15;
/// A period must predict this much better (entropy ratio) than the left neighbour.
const PERIOD_GAIN: f64 = 0.97;
/// Symbols of a stream's start that [`detect_period`] looks at.
const PERIOD_SAMPLE: usize = 1 << 13;
/// Longest period (distance of the "up" symbol) searched by [`detect_period`].
pub const MAX_PERIOD: usize = 4096;

/// Context shape of the context coder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtxShape {
    /// Classes of the previous symbol: `min(prev, left - 1)`.
    pub left: usize,
    /// Classes of the symbol one period back: `min(up, up - 1)`; 1 = not used.
    pub up: usize,
    /// Period; 0 exactly when `up == 1`.
    pub period: usize,
}

impl CtxShape {
    fn count(&self) -> usize {
        self.left * self.up
    }

    fn valid(&self) -> bool {
        (1..=MAX_LEFT).contains(&self.left)
            && (1..=MAX_UP).contains(&self.up)
            && self.count() <= MAX_CONTEXTS
            && (self.up == 1) == (self.period == 0)
    }

    /// Per byte: its contribution to the context index as left and as up symbol.
    fn maps(&self) -> ([u8; 256], [u8; 256]) {
        let mut lm = [0u8; 256];
        let mut um = [0u8; 256];
        for s in 0..256 {
            lm[s] = (s.min(self.left - 1) * self.up) as u8;
            um[s] = s.min(self.up - 1) as u8;
        }
        (lm, um)
    }
}

fn lanes(n: usize) -> [std::ops::Range<usize>; LANES] {
    let q = n / LANES;
    [0..q, q..2 * q, 2 * q..3 * q, 3 * q..n]
}

fn ctx_hists(symbols: &[u8], shape: &CtxShape) -> Vec<[u32; 256]> {
    let c = shape.count();
    let (lm, um) = shape.maps();
    let p = shape.period;
    // Rows as wide as the alphabet present (not 256), so that the tables of a small alphabet
    // stay in L1 and a short chunk does not pay for zeroing and summing 256-wide rows.
    let k = symbols.iter().copied().max().unwrap_or(0) as usize + 1;
    // One flat table per lane, the four lanes counted in lock step, so that the increments of
    // a dominant (context, symbol) pair do not form one long store-to-load chain.
    let mut t = vec![0u32; LANES * c * k];
    let (t01, t23) = t.split_at_mut(2 * c * k);
    let (t0, t1) = t01.split_at_mut(c * k);
    let (t2, t3) = t23.split_at_mut(c * k);
    let n = symbols.len();
    let q = n / LANES;
    let [l0, l1, l2, l3] = lanes(n).map(|r| &symbols[r]);
    let mut prev = [0u8; LANES];
    let idx =
        |prev: u8, up: u8, s: u8| (lm[prev as usize] + um[up as usize]) as usize * k + s as usize;
    for r in 0..q {
        let up = |l: &[u8]| if p > 0 && r >= p { l[r - p] } else { 0 };
        let (s0, s1, s2, s3) = (l0[r], l1[r], l2[r], l3[r]);
        t0[idx(prev[0], up(l0), s0)] += 1;
        t1[idx(prev[1], up(l1), s1)] += 1;
        t2[idx(prev[2], up(l2), s2)] += 1;
        t3[idx(prev[3], up(l3), s3)] += 1;
        prev = [s0, s1, s2, s3];
    }
    for r in q..l3.len() {
        let up = if p > 0 && r >= p { l3[r - p] } else { 0 };
        t3[idx(prev[3], up, l3[r])] += 1;
        prev[3] = l3[r];
    }
    let mut h = vec![[0u32; 256]; c];
    for (ci, hc) in h.iter_mut().enumerate() {
        for (s, v) in hc[..k].iter_mut().enumerate() {
            let i = ci * k + s;
            *v = t0[i] + t1[i] + t2[i] + t3[i];
        }
    }
    h
}

/// Normalizations of the per-context histograms, the estimated body bits, and the part of
/// those bits that is header.
fn ctx_plan(h: &[[u32; 256]], n: usize) -> (Vec<Option<Norm>>, f64, f64) {
    let logs: &[u32] = if n >= 1 << 16 {
        &[11, 12]
    } else {
        &[8, 9, 10, 11]
    };
    let mut best: Option<(Vec<Option<Norm>>, f64, f64)> = None;
    for &log in logs {
        let mut header = 8.0 * 14.0 + (LANES as u32 * log) as f64;
        let mut bits = 0.0;
        let norms: Vec<Option<Norm>> = h
            .iter()
            .map(|hc| {
                if hc.iter().all(|&x| x == 0) {
                    return None;
                }
                let norm = normalize(hc, log);
                bits += cost_bits(hc, &norm);
                header += header_bits(&norm) as f64;
                Some(norm)
            })
            .collect();
        if best.as_ref().is_none_or(|b| bits + header < b.1) {
            best = Some((norms, bits + header, header));
        }
    }
    best.unwrap()
}

/// The period `P` (a divisor of `total`, the length of the whole stream, `2..=MAX_PERIOD`)
/// whose "up" symbol best predicts the next one on a sample of the stream's start; 0 if none
/// applies (alphabet above 16 symbols, or too short).
pub fn detect_period(symbols: &[u8], total: usize) -> usize {
    let sample = &symbols[..symbols.len().min(PERIOD_SAMPLE)];
    if sample.iter().any(|&s| s >= 16) {
        return 0;
    }
    // Conditional entropy (bits/symbol) of a symbol given the one `p` back.
    let cond = |p: usize| -> f64 {
        let mut h = [[0u32; 16]; MAX_UP];
        for (i, &s) in sample[p..].iter().enumerate() {
            h[(sample[i] as usize).min(MAX_UP - 1)][s as usize] += 1;
        }
        h.iter()
            .map(|row| {
                let n: u32 = row.iter().sum();
                row.iter()
                    .filter(|&&c| c > 0)
                    .map(|&c| c as f64 * (n as f64 / c as f64).log2())
                    .sum::<f64>()
            })
            .sum::<f64>()
            / (sample.len() - p) as f64
    };
    let mut best = (f64::INFINITY, 0);
    for p in period_candidates(sample, total) {
        let bits = cond(p);
        if bits < best.0 {
            best = (bits, p);
        }
    }
    // Only worth a second context if it predicts clearly better than the left neighbour.
    if best.1 == 0 || best.0 > PERIOD_GAIN * cond(1) {
        return 0;
    }
    best.1
}

/// Periods screened cheaply before their conditional entropy is measured.
const PERIOD_SCREEN: usize = 1 << 10;
/// Candidates kept after screening.
const PERIOD_KEEP: usize = 4;

/// The divisors `p` of `total` (`2..=MAX_PERIOD`, at most a quarter of the sample) whose
/// symbol `p` back most often equals the next one on the sample's start: one compare per
/// symbol screens a divisor, where measuring its conditional entropy costs a histogram.
fn period_candidates(sample: &[u8], total: usize) -> Vec<usize> {
    let screen = &sample[..sample.len().min(PERIOD_SCREEN + MAX_PERIOD)];
    let mut scored: Vec<(usize, usize)> = (2..=MAX_PERIOD.min(sample.len() / 4))
        .filter(|&p| total % p == 0 && p < screen.len())
        .map(|p| {
            let m = screen.len().min(p + PERIOD_SCREEN);
            let hits = screen[p..m]
                .iter()
                .zip(&screen[..m - p])
                .filter(|(a, b)| a == b)
                .count();
            // Agreement rate, scaled to compare windows of different lengths.
            (hits * PERIOD_SCREEN / (m - p), p)
        })
        .collect();
    scored.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.truncate(PERIOD_KEEP);
    scored.into_iter().map(|(_, p)| p).collect()
}

/// Best context shape for `symbols` given a candidate period (0 = none) and its estimated
/// body bits; `None` if context coding cannot apply.
pub fn estimate_ctx(symbols: &[u8], hist: &[u32; 256], period: usize) -> Option<(CtxShape, f64)> {
    let k = hist.iter().rposition(|&c| c > 0).unwrap_or(0) + 1;
    if k < 2 || symbols.len() < 1024 {
        return None;
    }
    let mut shapes = vec![CtxShape {
        left: k.min(MAX_LEFT),
        up: 1,
        period: 0,
    }];
    if period > 0 && period < symbols.len() / LANES {
        shapes.push(CtxShape {
            left: k.min(MAX_UP),
            up: k.min(MAX_UP),
            period,
        });
    }
    // Estimated on a sample of the chunk. The sample's own order-0 cost calibrates it: the
    // payload is estimated as (order-0 payload of the whole chunk) x (context / order-0 ratio
    // on the sample), so that the sample's random deviation from the chunk cancels.
    let sample = &symbols[..symbols.len().min(CTX_SAMPLE)];
    let full0 = {
        let (norm, _) = plan(hist);
        cost_bits(hist, &norm)
    };
    let sample0 = {
        let h0 = histogram(sample);
        let (norm, _) = plan(&h0);
        cost_bits(&h0, &norm)
    };
    if sample0 <= 0.0 {
        return None;
    }
    shapes
        .into_iter()
        .map(|sh| {
            let (_, bits, header) = ctx_plan(&ctx_hists(sample, &sh), symbols.len());
            (sh, (bits - header) / sample0 * full0 + header)
        })
        .min_by(|a, b| a.1.total_cmp(&b.1))
}

/// Encode `symbols` with the context coder using the previous symbol only.
pub fn encode_ctx(symbols: &[u8], out: &mut Vec<u8>) {
    encode_ctx_period(symbols, 0, out)
}

/// Encode `symbols` with the context coder, using the symbol `period` back as a second
/// context when that is estimated to pay (0 = previous symbol only).
pub fn encode_ctx_period(symbols: &[u8], period: usize, out: &mut Vec<u8>) {
    if symbols.is_empty() {
        return;
    }
    let hist = histogram(symbols);
    let shape = estimate_ctx(symbols, &hist, period)
        .map(|e| e.0)
        .unwrap_or(CtxShape {
            left: (hist.iter().rposition(|&c| c > 0).unwrap_or(0) + 1).min(MAX_LEFT),
            up: 1,
            period: 0,
        });
    encode_ctx_shape(symbols, &shape, out)
}

/// Encode `symbols` with the context coder in the given `shape` (as estimated by
/// [`estimate_ctx`]).
pub fn encode_ctx_shape(symbols: &[u8], shape: &CtxShape, out: &mut Vec<u8>) {
    let h = ctx_hists(symbols, shape);
    let (norms, _, _) = ctx_plan(&h, symbols.len());
    let log = norms
        .iter()
        .flatten()
        .next()
        .map(|n| n.log)
        .unwrap_or(MAX_LOG);
    out.push(shape.left as u8);
    out.push(shape.up as u8);
    out.extend_from_slice(&(shape.period as u32).to_le_bytes());
    let bitmap: u64 = norms
        .iter()
        .enumerate()
        .filter(|(_, n)| n.is_some())
        .map(|(i, _)| 1u64 << i)
        .sum();
    out.extend_from_slice(&bitmap.to_le_bytes());
    for n in norms.iter().flatten() {
        write_header(n, out);
    }
    let tabs: Vec<Option<ETable>> = norms.iter().map(|n| n.as_ref().map(ETable::new)).collect();
    let (lm, um) = shape.maps();
    let tab = |left: u8, up: u8| {
        tabs[(lm[left as usize] + um[up as usize]) as usize]
            .as_ref()
            .expect("every context that occurs has a table")
    };
    let l = 1u32 << log;
    let mut w = BitWriter::new(out, symbols.len() + 256);
    let mut st = [l; LANES];
    let n = symbols.len();
    let q = n / LANES;
    let per = shape.period;
    // Position p = start + r of a lane: left and up symbols.
    let ctx = |start: usize, r: usize| -> (u8, u8) {
        let left = if r == 0 { 0 } else { symbols[start + r - 1] };
        let up = if per > 0 && r >= per {
            symbols[start + r - per]
        } else {
            0
        };
        (left, up)
    };
    for p in (4 * q..n).rev() {
        let (a, b) = ctx(3 * q, p - 3 * q);
        tab(a, b).step(&mut st[3], symbols[p], &mut w);
        w.flush();
    }
    for r in (0..q).rev() {
        for j in (0..LANES).rev() {
            let (a, b) = ctx(j * q, r);
            tab(a, b).step(&mut st[j], symbols[j * q + r], &mut w);
        }
        w.flush();
    }
    for x in st.iter().rev() {
        w.put((x - l) as u64, log);
        w.flush();
    }
    w.finish_with_marker();
}

/// Decode a body written by [`encode_ctx`] or [`encode_ctx_period`] into `out`.
pub fn decode_ctx(body: &[u8], out: &mut [u8]) -> Result<()> {
    if out.is_empty() {
        return if body.is_empty() {
            Ok(())
        } else {
            Err(Error::corrupt("tANS body present for an empty stream"))
        };
    }
    if body.len() < 14 {
        return Err(Error::corrupt("context tANS header truncated"));
    }
    let shape = CtxShape {
        left: body[0] as usize,
        up: body[1] as usize,
        period: u32::from_le_bytes(body[2..6].try_into().unwrap()) as usize,
    };
    let bitmap = u64::from_le_bytes(body[6..14].try_into().unwrap());
    if !shape.valid() || bitmap == 0 || (shape.count() < 64 && bitmap >> shape.count() != 0) {
        return Err(Error::corrupt("context tANS header out of range"));
    }
    let mut rest = &body[14..];
    let present = bitmap.count_ones() as usize;
    let mut norms = Vec::with_capacity(present);
    let mut offs = [0u32; MAX_CONTEXTS];
    for (i, off) in offs.iter_mut().enumerate().take(shape.count()) {
        if bitmap >> i & 1 == 1 {
            let (norm, r) = read_header(rest)?;
            if norms.first().is_some_and(|n: &Norm| n.log != norm.log) {
                return Err(Error::corrupt(
                    "context tANS tables disagree on the table log",
                ));
            }
            rest = r;
            *off = norms.len() as u32;
            norms.push(norm);
        }
        // Contexts without a table never occur in a valid stream; they share table 0 so that
        // decoding stays defined, and the end checks reject the result.
    }
    let log = norms[0].log;
    let l = 1usize << log;
    let mut flat = vec![DEntry::default(); present * l];
    for (norm, t) in norms.iter().zip(flat.chunks_exact_mut(l)) {
        fill_dtable(norm, t);
    }
    for o in offs.iter_mut() {
        *o <<= log;
    }
    let mut r = BackReader::new(rest)
        .ok_or_else(|| Error::corrupt("tANS bit stream lacks its end marker"))?;
    let mut st = [0usize; LANES];
    for x in st.iter_mut() {
        r.refill();
        *x = r.read(log) as usize;
    }
    let (lm, um) = shape.maps();
    // Context index of (left, up) → offset of its table in `flat`.
    let at = |left: u8, up: u8| {
        offs[(lm[left as usize] + um[up as usize]) as usize & (MAX_CONTEXTS - 1)] as usize
    };
    let step = |x: &mut usize, off: usize, r: &mut BackReader| -> u8 {
        let e = flat[off + *x];
        *x = e.base as usize + r.read(e.nb as u32) as usize;
        e.sym
    };
    let n = out.len();
    let q = n / LANES;
    let per = shape.period;
    let mut prev = [0u8; LANES];
    for rd in 0..q {
        r.refill();
        for j in 0..LANES {
            let p = j * q + rd;
            let up = if per > 0 && rd >= per {
                out[p - per]
            } else {
                0
            };
            let s = step(&mut st[j], at(prev[j], up), &mut r);
            out[p] = s;
            prev[j] = s;
        }
    }
    for p in 4 * q..n {
        r.refill();
        let rd = p - 3 * q;
        let up = if per > 0 && rd >= per {
            out[p - per]
        } else {
            0
        };
        let s = step(&mut st[3], at(prev[3], up), &mut r);
        out[p] = s;
        prev[3] = s;
    }
    if r.remaining() != 0 || st.iter().any(|&x| x != 0) {
        return Err(Error::corrupt(
            "tANS stream does not end where its symbols do",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(symbols: &[u8]) -> usize {
        let mut body = Vec::new();
        encode(symbols, &mut body);
        let mut out = vec![0u8; symbols.len()];
        decode(&body, &mut out).unwrap();
        assert_eq!(out, symbols);
        body.len()
    }

    #[test]
    fn small_cases() {
        round_trip(&[]);
        round_trip(&[7]);
        round_trip(&[0, 1]);
        round_trip(&[255, 0, 255, 3, 3]);
        let all: Vec<u8> = (0..=255u8).collect();
        round_trip(&all);
        let many: Vec<u8> = (0..100_000u32).map(|i| (i * 7919 % 256) as u8).collect();
        round_trip(&many);
    }

    #[test]
    fn rare_symbols_get_a_slot() {
        let mut hist = [0u32; 256];
        hist[0] = 1_000_000;
        for c in hist.iter_mut().skip(1) {
            *c = 1;
        }
        let norm = normalize(&hist, MAX_LOG);
        assert!(norm.counts.iter().all(|&f| f >= 1));
        assert_eq!(norm.counts.iter().sum::<u32>(), 1 << MAX_LOG);
    }

    #[test]
    fn dominant_symbol_costs_little() {
        let symbols: Vec<u8> = (0..100_000u32)
            .map(|i| u8::from(i.wrapping_mul(2_654_435_761) % 100 == 0))
            .collect();
        let bytes = round_trip(&symbols);
        // Entropy of p=0.01 is 0.0808 bit/symbol: ~1010 bytes.
        assert!(bytes < 1100, "{bytes}");
    }
}
