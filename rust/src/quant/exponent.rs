//! LC-checkpoint's exponent-bucket quantizer with priority promotion (SPEC §2.2).
//!
//! Each value falls into the bucket of its sign and binary exponent. With `bits = b`, the
//! `2^b − 1` non-empty buckets with the largest exponents get symbols `1..=2^b − 1`; every other
//! value (zeros, subnormals, small exponents) gets symbol 0 and decodes to 0. A kept bucket
//! decodes to one value inside the range of its members, so for every element
//! `|x − x̂| < |x|` (kept buckets; `= |x|` in the zero bucket) and `|x − x̂| ≤ max − min`
//! of its bucket.
//!
//! ```
//! use deltackpt::quant::exponent::{quantize, dequantize, BucketValue};
//! let delta = [0.5f32, -0.75, 0.001, 0.0, 3.0, 2.5];
//! let (symbols, table) = quantize(&delta, 2, BucketValue::Mean).unwrap();
//! let mut restored = vec![0.0f32; delta.len()];
//! dequantize(&symbols, &table, &mut restored).unwrap();
//! for (x, y) in delta.iter().zip(&restored) {
//!     assert!((x - y).abs() <= x.abs());
//! }
//! assert_eq!(symbols[3], 0); // zeros always map to the zero bucket
//! ```

use rayon::prelude::*;

use crate::error::{Error, Result};

/// How a kept bucket's representative value is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BucketValue {
    /// The mean of the bucket's members: minimizes the squared error (the default).
    #[default]
    Mean,
    /// `(min + max) / 2` of the members' magnitudes, as in the source implementation.
    Midpoint,
}

impl BucketValue {
    /// Parse `"mean"` or `"midpoint"`.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "mean" => Ok(BucketValue::Mean),
            "midpoint" => Ok(BucketValue::Midpoint),
            other => Err(Error::invalid(format!(
                "unknown bucket value {other:?}; expected \"mean\" or \"midpoint\""
            ))),
        }
    }
}

/// Floats the exponent quantizer works on (`f32`, `f64`).
pub trait ExpFloat: Copy + Send + Sync + PartialEq + 'static {
    /// Number of (sign, exponent) keys.
    const KEYS: usize;
    /// The exponent field value of Inf/NaN.
    const EXP_SPECIAL: usize;
    /// Zero.
    const ZERO: Self;
    /// `(sign << exponent_bits) | biased exponent`.
    fn key(self) -> usize;
    /// Magnitude bits (monotone in |x|).
    fn abs_bits(self) -> u64;
    /// Value from magnitude bits and a sign.
    fn from_abs_bits(bits: u64, negative: bool) -> Self;
    /// Widen to f64 (exact).
    fn to_f64(self) -> f64;
    /// Round from f64.
    fn from_f64(v: f64) -> Self;
    /// Sum of two values.
    fn add(self, other: Self) -> Self;
}

impl ExpFloat for f32 {
    const KEYS: usize = 512;
    const EXP_SPECIAL: usize = 255;
    const ZERO: Self = 0.0;
    #[inline(always)]
    fn key(self) -> usize {
        (self.to_bits() >> 23) as usize
    }
    #[inline(always)]
    fn abs_bits(self) -> u64 {
        (self.to_bits() & 0x7fff_ffff) as u64
    }
    fn from_abs_bits(bits: u64, negative: bool) -> Self {
        f32::from_bits(bits as u32 | if negative { 0x8000_0000 } else { 0 })
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn add(self, other: Self) -> Self {
        self + other
    }
}

impl ExpFloat for f64 {
    const KEYS: usize = 4096;
    const EXP_SPECIAL: usize = 2047;
    const ZERO: Self = 0.0;
    #[inline(always)]
    fn key(self) -> usize {
        (self.to_bits() >> 52) as usize
    }
    #[inline(always)]
    fn abs_bits(self) -> u64 {
        self.to_bits() & 0x7fff_ffff_ffff_ffff
    }
    fn from_abs_bits(bits: u64, negative: bool) -> Self {
        f64::from_bits(bits | if negative { 1 << 63 } else { 0 })
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn add(self, other: Self) -> Self {
        self + other
    }
}

/// Elements per parallel work item.
const CHUNK: usize = 1 << 18;

/// Per-bucket statistics of a slice.
struct Stats {
    count: Vec<u64>,
    sum: Vec<f64>,
    min: Vec<u64>,
    max: Vec<u64>,
}

impl Stats {
    fn new(keys: usize, value: BucketValue) -> Self {
        let (s, m) = match value {
            BucketValue::Mean => (keys, 0),
            BucketValue::Midpoint => (0, keys),
        };
        Stats {
            count: vec![0; keys],
            sum: vec![0.0; s],
            min: vec![u64::MAX; m],
            max: vec![0; m],
        }
    }

    fn gather<T: ExpFloat>(x: &[T], value: BucketValue) -> Self {
        let mut st = Stats::new(T::KEYS, value);
        match value {
            BucketValue::Mean => {
                // Two interleaved accumulators halve the store-to-load dependency chains when
                // most values share a bucket.
                let mut count2 = vec![0u64; T::KEYS];
                let mut sum2 = vec![0f64; T::KEYS];
                let mut pairs = x.chunks_exact(2);
                for p in &mut pairs {
                    let (k0, k1) = (p[0].key(), p[1].key());
                    st.count[k0] += 1;
                    st.sum[k0] += p[0].to_f64();
                    count2[k1] += 1;
                    sum2[k1] += p[1].to_f64();
                }
                for v in pairs.remainder() {
                    st.count[v.key()] += 1;
                    st.sum[v.key()] += v.to_f64();
                }
                for k in 0..T::KEYS {
                    st.count[k] += count2[k];
                    st.sum[k] += sum2[k];
                }
            }
            BucketValue::Midpoint => {
                for v in x {
                    let k = v.key();
                    let a = v.abs_bits();
                    st.count[k] += 1;
                    st.min[k] = st.min[k].min(a);
                    st.max[k] = st.max[k].max(a);
                }
            }
        }
        st
    }

    fn merge(mut self, other: &Stats) -> Self {
        for k in 0..self.count.len() {
            self.count[k] += other.count[k];
        }
        for (a, b) in self.sum.iter_mut().zip(&other.sum) {
            *a += b;
        }
        for (a, b) in self.min.iter_mut().zip(&other.min) {
            *a = (*a).min(*b);
        }
        for (a, b) in self.max.iter_mut().zip(&other.max) {
            *a = (*a).max(*b);
        }
        self
    }
}

pub(crate) fn check_bits(bits: u8) -> Result<usize> {
    if !(1..=8).contains(&bits) {
        return Err(Error::invalid(format!(
            "bits must be between 1 and 8 for the exponent quantizer, got {bits}"
        )));
    }
    Ok((1usize << bits) - 1)
}

/// Quantize `x` with `bits` bits; returns one symbol per element and the table of values of
/// symbols `1..=table.len()` (symbol 0 is 0). Fails with [`Error::NonFinite`] on NaN/Inf.
pub fn quantize<T: ExpFloat>(x: &[T], bits: u8, value: BucketValue) -> Result<(Vec<u8>, Vec<T>)> {
    let mut symbols = vec![0u8; x.len()];
    let table = quantize_into(x, bits, value, &mut symbols)?;
    Ok((symbols, table))
}

/// A lower limit on the buckets that may be kept, decided elsewhere (for example over a whole
/// model state, as LC-checkpoint's priority promotion does): buckets of biased exponent below
/// `exponent` are never kept, and at `exponent` only the sign `sign` (0 positive, 1 negative)
/// when given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketFloor {
    /// Smallest biased exponent field that may be kept.
    pub exponent: u16,
    /// At `exponent`, the only sign that may be kept (`None`: both).
    pub sign: Option<u8>,
}

/// [`quantize`] writing the symbols into `symbols` (same length as `x`).
pub fn quantize_into<T: ExpFloat>(
    x: &[T],
    bits: u8,
    value: BucketValue,
    symbols: &mut [u8],
) -> Result<Vec<T>> {
    quantize_into_floor(x, bits, value, symbols, None)
}

/// Histogram of the (sign, biased exponent) keys of `x` (`T::KEYS` bins), in the crate pool.
pub fn key_histogram<T: ExpFloat>(x: &[T]) -> Vec<u64> {
    let parts: Vec<Vec<u64>> = x.par_chunks(CHUNK).map(count_keys).collect();
    sum_histograms::<T>(&parts)
}

/// [`key_histogram`] of one slice, on the calling thread.
pub fn count_keys<T: ExpFloat>(x: &[T]) -> Vec<u64> {
    let mut h = vec![0u64; T::KEYS];
    for v in x {
        h[v.key()] += 1;
    }
    h
}

/// The sum of histograms of `T::KEYS` bins.
pub fn sum_histograms<T: ExpFloat>(parts: &[Vec<u64>]) -> Vec<u64> {
    let mut h = vec![0u64; T::KEYS];
    for p in parts {
        for (a, b) in h.iter_mut().zip(p) {
            *a += b;
        }
    }
    h
}

/// [`quantize_into`] with an optional [`BucketFloor`] limiting which buckets may be kept.
pub fn quantize_into_floor<T: ExpFloat>(
    x: &[T],
    bits: u8,
    value: BucketValue,
    symbols: &mut [u8],
    floor: Option<BucketFloor>,
) -> Result<Vec<T>> {
    check_bits(bits)?;
    assert_eq!(x.len(), symbols.len(), "one symbol per element");
    let parts: Vec<BucketStats> = x
        .par_chunks(CHUNK)
        .map(|c| BucketStats::gather(c, value))
        .collect();
    let plan = BucketPlan::new(
        &BucketStats::merge_all::<T>(&parts, value),
        bits,
        value,
        floor,
    )
    .map_err(|e| e.with_first_index(x))?;
    x.par_chunks(CHUNK)
        .zip(symbols.par_chunks_mut(CHUNK))
        .for_each(|(xs, ss)| plan.symbols(xs, ss));
    Ok(plan.table)
}

/// Per-bucket statistics of a slice of values: the first pass of the quantizer.
///
/// Gather them over pieces of a tensor (in parallel, in any grouping), merge them in a fixed
/// order with [`BucketStats::merge_all`], and build a [`BucketPlan`] from the result.
pub struct BucketStats(Stats);

impl BucketStats {
    /// Statistics of `x`.
    pub fn gather<T: ExpFloat>(x: &[T], value: BucketValue) -> Self {
        BucketStats(Stats::gather(x, value))
    }

    /// Merge statistics in slice order (the table does not depend on the thread count).
    pub fn merge_all<T: ExpFloat>(parts: &[BucketStats], value: BucketValue) -> Self {
        BucketStats(
            parts
                .iter()
                .fold(Stats::new(T::KEYS, value), |acc, s| acc.merge(&s.0)),
        )
    }
}

/// The buckets kept for a tensor: each (sign, exponent) key's symbol and the symbols' values.
pub struct BucketPlan<T> {
    lut: Vec<u8>,
    /// Values of symbols `1..=table.len()` (symbol 0 is 0).
    pub table: Vec<T>,
}

/// Index of the first NaN or Inf in `x`.
pub fn first_non_finite<T: ExpFloat>(x: &[T]) -> Option<usize> {
    let exponent_mask = T::KEYS / 2 - 1;
    x.iter()
        .position(|v| v.key() & exponent_mask == T::EXP_SPECIAL)
}

/// A plan could not be made because the values hold NaN or Inf.
pub struct NonFiniteValues(u64);

impl NonFiniteValues {
    /// The typed error, with the index of the first non-finite element of `x`.
    pub fn with_first_index<T: ExpFloat>(self, x: &[T]) -> Error {
        self.at(first_non_finite(x).unwrap_or(0) as u64)
    }

    /// The typed error, with the index of the first non-finite element given.
    pub fn at(self, first_index: u64) -> Error {
        Error::NonFinite {
            count: self.0,
            first_index,
            context: String::new(),
        }
    }
}

impl<T: ExpFloat> BucketPlan<T> {
    /// Priority promotion over the statistics: keep the `2^bits − 1` non-empty buckets of
    /// largest exponent (at equal exponent the fuller first), none below `floor`; exponent
    /// field 0 (zeros and subnormals) is never kept. `bits` must be in 1..=8.
    pub fn new(
        stats: &BucketStats,
        bits: u8,
        value: BucketValue,
        floor: Option<BucketFloor>,
    ) -> std::result::Result<Self, NonFiniteValues> {
        let stats = &stats.0;
        let slots = (1usize << bits.clamp(1, 8)) - 1;
        let exp_bits = T::KEYS.trailing_zeros() as usize - 1;
        let neg = 1usize << exp_bits;
        let non_finite = stats.count[T::EXP_SPECIAL] + stats.count[neg | T::EXP_SPECIAL];
        if non_finite > 0 {
            return Err(NonFiniteValues(non_finite));
        }
        let mut lut = vec![0u8; T::KEYS];
        let mut table = Vec::with_capacity(slots);
        let lowest = floor.map_or(1, |f| (f.exponent as usize).max(1));
        'outer: for e in (lowest..T::EXP_SPECIAL).rev() {
            let (p, n) = (e, neg | e);
            let order = if stats.count[n] > stats.count[p] {
                [n, p]
            } else {
                [p, n]
            };
            for k in order {
                if stats.count[k] == 0 {
                    continue;
                }
                if let Some(BucketFloor {
                    exponent,
                    sign: Some(sign),
                }) = floor
                {
                    if e == exponent as usize && (k & neg != 0) != (sign == 1) {
                        continue;
                    }
                }
                if table.len() == slots {
                    break 'outer;
                }
                let negative = k & neg != 0;
                let v = match value {
                    BucketValue::Mean => T::from_f64(stats.sum[k] / stats.count[k] as f64),
                    BucketValue::Midpoint => {
                        let lo = T::from_abs_bits(stats.min[k], false).to_f64();
                        let hi = T::from_abs_bits(stats.max[k], false).to_f64();
                        let m = T::from_f64((lo + hi) * 0.5);
                        if negative {
                            T::from_f64(-m.to_f64())
                        } else {
                            m
                        }
                    }
                };
                table.push(v);
                lut[k] = table.len() as u8;
            }
        }
        Ok(BucketPlan { lut, table })
    }

    /// The symbols of `x` (one per element, written to `symbols` of the same length).
    #[inline]
    pub fn symbols(&self, x: &[T], symbols: &mut [u8]) {
        for (s, v) in symbols.iter_mut().zip(x) {
            *s = self.lut[v.key()];
        }
    }
}

/// Check that every symbol has a table entry.
pub fn check_symbols(symbols: &[u8], table_len: usize) -> Result<()> {
    let max = symbols.iter().copied().max().unwrap_or(0) as usize;
    if max > table_len {
        return Err(Error::corrupt(format!(
            "symbol {max} has no table entry (table holds {table_len})"
        )));
    }
    Ok(())
}

/// A 256-entry lookup from symbol to value (symbol 0 and unused symbols map to 0).
pub fn lookup_table<T: ExpFloat>(table: &[T]) -> [T; 256] {
    let mut lut = [T::ZERO; 256];
    for (i, v) in table.iter().enumerate().take(255) {
        lut[i + 1] = *v;
    }
    lut
}

/// Map symbols back to values: `out[i] = table[symbols[i]]`.
pub fn dequantize<T: ExpFloat>(symbols: &[u8], table: &[T], out: &mut [T]) -> Result<()> {
    check_symbols(symbols, table.len())?;
    let lut = lookup_table(table);
    for (o, s) in out.iter_mut().zip(symbols) {
        *o = lut[*s as usize];
    }
    Ok(())
}

/// Map symbols back to values and add them to a reference: `out[i] = reference[i] + table[s]`.
pub fn dequantize_add<T: ExpFloat>(
    symbols: &[u8],
    table: &[T],
    reference: &[T],
    out: &mut [T],
) -> Result<()> {
    check_symbols(symbols, table.len())?;
    let lut = lookup_table(table);
    for ((o, s), r) in out.iter_mut().zip(symbols).zip(reference) {
        *o = r.add(lut[*s as usize]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_largest_exponents() {
        // Exponents 3, 2, 1, 0, -1 (values 8, 4, 2, 1, 0.5) with 2 bits keep 3 buckets.
        let x = [8.0f32, 4.0, 2.0, 1.0, 0.5, -8.0];
        let (s, t) = quantize(&x, 2, BucketValue::Mean).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(s[3], 0);
        assert_eq!(s[4], 0);
        assert!(s[0] != 0 && s[5] != 0 && s[1] != 0);
        assert_eq!(s[2], 0);
    }

    #[test]
    fn non_finite_is_reported_with_its_index() {
        let x = [1.0f32, 2.0, f32::NAN, f32::INFINITY];
        match quantize(&x, 3, BucketValue::Mean) {
            Err(Error::NonFinite {
                count, first_index, ..
            }) => {
                assert_eq!((count, first_index), (2, 2));
            }
            other => panic!("expected NonFinite, got {other:?}"),
        }
    }

    #[test]
    fn bits_out_of_range_is_rejected() {
        assert!(matches!(
            quantize(&[1.0f32], 0, BucketValue::Mean),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            quantize(&[1.0f32], 9, BucketValue::Mean),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn forged_symbols_are_rejected() {
        let mut out = [0.0f32; 2];
        assert!(dequantize(&[0, 3], &[1.0f32, 2.0], &mut out).is_err());
    }
}
