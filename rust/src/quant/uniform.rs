//! Uniform scalar quantization: affine (scale, zero point) and symmetric (SPEC 2.7).
//!
//! A quantizer is described by [`UniformParams`]: `q = clamp(round(x/scale + zero_point),
//! qmin, qmax)` and `x̂ = (q − zero_point)·scale`. Codes are `i32`; ties round to even;
//! arithmetic is done in `f64` for both `f32` and `f64` input.
//!
//! - **Affine** (`symmetric = false`): codes in `[0, 2^bits − 1]` (non-negative, directly usable
//!   as symbols), `scale = (max − min)/(qmax − qmin)`, `zero_point = round(qmin − min/scale)`.
//!   (For `f64` data whose range is below `2^-40·max|x|` the scale is raised to that, so that
//!   `x/scale + zero_point` stays exact in `f64`.)
//! - **Symmetric** (`symmetric = true`): an odd number of levels, `2^bits − 1`, codes in
//!   `[−L, L]` with `L = 2^(bits−1) − 1`, `zero_point = 0`, `scale = max|x| / L`; 0 is
//!   reconstructed exactly. It needs `bits ≥ 2`: with one bit the only level would be 0, so
//!   `bits = 1` is rejected (use the affine quantizer for binary codes).
//! - **Constant input** `c` (all values equal, including a single value): `scale = |c|`
//!   (`1` when `c = 0`), every code equal, reconstruction exact.
//! - **Empty input**: empty codes and the parameters of the all-zero tensor.
//!
//! Per channel means per slice of the leading axis: the data are viewed as `(channels, len)`
//! row-major and each row gets its own [`UniformParams`].
//!
//! ```
//! use deltackpt::quant::uniform;
//! let x = [-1.0f32, -0.25, 0.0, 0.5, 1.0];
//! let (codes, p) = uniform::quantize(&x, 4, true).unwrap();
//! assert_eq!((p.qmin, p.qmax, p.zero_point), (-7, 7, 0));
//! assert_eq!(codes, [-7, -2, 0, 4, 7]);
//! let y: Vec<f32> = uniform::dequantize(&codes, &p);
//! assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() <= p.scale as f32 / 2.0 + 1e-6));
//! // non-negative symbols for an entropy coder
//! assert_eq!(uniform::to_symbols(&codes, &p).unwrap(), [0, 5, 7, 11, 14]);
//! ```

use rayon::prelude::*;

use super::{check_finite, clamp, round_even, Real};
use crate::error::{Error, Result};

/// Inputs at least this long are processed in parallel chunks.
const PAR_MIN: usize = 1 << 18;
/// Chunk length (elements) of the parallel loops.
const CHUNK: usize = 1 << 16;

/// Parameters of a uniform quantizer: `x̂ = (q − zero_point)·scale`, `qmin ≤ q ≤ qmax`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UniformParams {
    /// Step between two levels (positive, finite).
    pub scale: f64,
    /// Code that represents 0 (`0` for the symmetric quantizer). May lie outside
    /// `[qmin, qmax]` when the data do not straddle 0.
    pub zero_point: i64,
    /// Smallest code.
    pub qmin: i32,
    /// Largest code.
    pub qmax: i32,
}

impl UniformParams {
    /// Check that the parameters describe a usable quantizer.
    pub fn validate(&self) -> Result<()> {
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return Err(Error::invalid(format!(
                "uniform scale must be positive and finite, got {}",
                self.scale
            )));
        }
        if self.qmin > self.qmax {
            return Err(Error::invalid(format!(
                "uniform code range is empty: qmin {} > qmax {}",
                self.qmin, self.qmax
            )));
        }
        if self.zero_point.unsigned_abs() > 1 << 52 {
            return Err(Error::invalid(format!(
                "uniform zero point {} is too large (|zp| ≤ 2^52)",
                self.zero_point
            )));
        }
        Ok(())
    }
}

fn check_bits(bits: u32, symmetric: bool) -> Result<()> {
    if !(1..=16).contains(&bits) {
        return Err(Error::invalid(format!(
            "uniform quantization needs 1 ≤ bits ≤ 16, got {bits}"
        )));
    }
    if symmetric && bits < 2 {
        return Err(Error::invalid(
            "symmetric uniform quantization needs bits ≥ 2 (with 1 bit its only level is 0); \
             use symmetric=false for 1-bit codes",
        ));
    }
    Ok(())
}

/// Minimum and maximum of finite, non-empty `x` (as `f64`).
fn min_max<T: Real>(x: &[T]) -> (f64, f64) {
    fn serial<T: Real>(x: &[T]) -> (T, T) {
        // Eight independent lanes so the compiler can keep them in vector registers.
        let mut mn = [x[0]; 8];
        let mut mx = [x[0]; 8];
        let mut chunks = x.chunks_exact(8);
        for c in &mut chunks {
            for i in 0..8 {
                if c[i] < mn[i] {
                    mn[i] = c[i];
                }
                if c[i] > mx[i] {
                    mx[i] = c[i];
                }
            }
        }
        let (mut lo, mut hi) = (x[0], x[0]);
        for &v in mn.iter().chain(chunks.remainder()) {
            if v < lo {
                lo = v;
            }
        }
        for &v in mx.iter().chain(chunks.remainder()) {
            if v > hi {
                hi = v;
            }
        }
        (lo, hi)
    }
    let (lo, hi) = if x.len() >= PAR_MIN {
        crate::parallel::install(|| {
            x.par_chunks(CHUNK)
                .map(serial)
                .reduce_with(|a, b| {
                    (
                        if b.0 < a.0 { b.0 } else { a.0 },
                        if b.1 > a.1 { b.1 } else { a.1 },
                    )
                })
                .unwrap_or((x[0], x[0]))
        })
    } else {
        serial(x)
    };
    (lo.to_f64(), hi.to_f64())
}

/// Parameters for finite `x` (no finiteness or `bits` check).
fn params_unchecked<T: Real>(x: &[T], bits: u32, symmetric: bool) -> UniformParams {
    let (qmin, qmax) = if symmetric {
        let l = (1i32 << (bits - 1)) - 1;
        (-l, l)
    } else {
        (0, ((1u32 << bits) - 1) as i32)
    };
    if x.is_empty() {
        return constant_params(0.0, qmin, qmax, symmetric);
    }
    let (lo, hi) = min_max(x);
    if lo == hi {
        return constant_params(lo, qmin, qmax, symmetric);
    }
    let levels = (qmax - qmin) as f64;
    if symmetric {
        let a = lo.abs().max(hi.abs());
        let scale = positive_step(a / qmax as f64);
        return UniformParams {
            scale,
            zero_point: 0,
            qmin,
            qmax,
        };
    }
    let span = hi - lo;
    let scale = if span.is_finite() {
        span / levels
    } else {
        // Only possible for f64 data near ±f64::MAX.
        hi / levels - lo / levels
    };
    // Keep |x/scale + zero_point| ≤ ~2^40 so the affine arithmetic stays exact in f64: f64
    // data with a tiny range far from 0 get a coarser step than asked (never f32 data, whose
    // relative range is at least 2^-24).
    let floor = lo.abs().max(hi.abs()) * 2f64.powi(-40);
    affine_from_scale(lo, positive_step(scale.max(floor)), qmin, qmax)
}

/// `scale` itself when positive; the smallest positive step otherwise (subnormal spans).
fn positive_step(scale: f64) -> f64 {
    if scale > 0.0 {
        scale
    } else {
        f64::from_bits(1)
    }
}

fn affine_from_scale(lo: f64, scale: f64, qmin: i32, qmax: i32) -> UniformParams {
    let zp = (qmin as f64 - lo / scale).round_ties_even();
    // |lo/scale| < 2^16·2^24 for f32 data; clamp so extreme f64 data keep an exact zero point.
    let zp = zp.clamp(-(2f64.powi(52)), 2f64.powi(52)) as i64;
    UniformParams {
        scale,
        zero_point: zp,
        qmin,
        qmax,
    }
}

fn constant_params(c: f64, qmin: i32, qmax: i32, symmetric: bool) -> UniformParams {
    let scale = if c == 0.0 { 1.0 } else { c.abs() };
    let sign: i64 = if c > 0.0 {
        1
    } else if c < 0.0 {
        -1
    } else {
        0
    };
    // The code is qmin (affine) or `sign` (symmetric); q − zp = sign gives x̂ = c exactly.
    let q = if symmetric { sign } else { qmin as i64 };
    UniformParams {
        scale,
        zero_point: q - sign,
        qmin,
        qmax,
    }
}

/// Compute the quantizer parameters of `x` without quantizing it.
///
/// Errors: `bits` outside `1..=16` (or `< 2` when `symmetric`), NaN/Inf in `x`.
pub fn params<T: Real>(x: &[T], bits: u32, symmetric: bool) -> Result<UniformParams> {
    check_bits(bits, symmetric)?;
    check_finite(x, "")?;
    Ok(params_unchecked(x, bits, symmetric))
}

/// Precomputed constants of the inner loop.
#[derive(Clone, Copy)]
struct Kernel {
    inv: f64,
    scale: f64,
    zp: f64,
    lo: f64,
    hi: f64,
    /// `1/scale` overflows (subnormal `f64` step): divide instead.
    divide: bool,
}

impl Kernel {
    fn new(p: &UniformParams) -> Self {
        let inv = 1.0 / p.scale;
        Kernel {
            inv,
            scale: p.scale,
            zp: p.zero_point as f64,
            lo: p.qmin as f64,
            hi: p.qmax as f64,
            divide: !inv.is_finite(),
        }
    }

    fn quantize_into<T: Real>(&self, x: &[T], out: &mut [i32]) {
        let k = *self;
        if k.divide {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = round_even(clamp(v.to_f64() / k.scale + k.zp, k.lo, k.hi)).1;
            }
        } else {
            // Same arithmetic as Babai on the cubic lattice: x·(1/scale) (+ zero point).
            for (o, &v) in out.iter_mut().zip(x) {
                *o = round_even(clamp(v.to_f64() * k.inv + k.zp, k.lo, k.hi)).1;
            }
        }
    }
}

/// Quantize `x` with given parameters. Values outside the range saturate at `qmin`/`qmax`.
///
/// Errors: invalid `params` (see [`UniformParams::validate`]), NaN/Inf in `x`.
///
/// ```
/// use deltackpt::quant::uniform::{quantize_with, UniformParams};
/// let p = UniformParams { scale: 0.5, zero_point: 0, qmin: -8, qmax: 7 };
/// assert_eq!(quantize_with(&[0.26f32, -0.75, 100.0], &p).unwrap(), [1, -2, 7]);
/// ```
pub fn quantize_with<T: Real>(x: &[T], params: &UniformParams) -> Result<Vec<i32>> {
    params.validate()?;
    check_finite(x, "")?;
    Ok(quantize_checked(x, params))
}

/// [`quantize_with`] on input already checked to be finite, with valid parameters.
fn quantize_checked<T: Real>(x: &[T], params: &UniformParams) -> Vec<i32> {
    let k = Kernel::new(params);
    let mut out = vec![0i32; x.len()];
    if x.len() >= PAR_MIN {
        crate::parallel::install(|| {
            out.par_chunks_mut(CHUNK)
                .zip(x.par_chunks(CHUNK))
                .for_each(|(o, c)| k.quantize_into(c, o));
        });
    } else {
        k.quantize_into(x, &mut out);
    }
    out
}

/// Quantize a whole tensor with one scale: returns `(codes, params)`.
///
/// Errors: `bits` outside `1..=16` (or `< 2` when `symmetric`), NaN/Inf in `x`.
///
/// ```
/// use deltackpt::quant::uniform;
/// let x = [0.0f32, 1.0, 2.0, 3.0];
/// let (codes, p) = uniform::quantize(&x, 2, false).unwrap();
/// assert_eq!(codes, [0, 1, 2, 3]);
/// assert_eq!(uniform::dequantize::<f32>(&codes, &p), x);
/// ```
pub fn quantize<T: Real>(x: &[T], bits: u32, symmetric: bool) -> Result<(Vec<i32>, UniformParams)> {
    check_bits(bits, symmetric)?;
    check_finite(x, "")?;
    let p = params_unchecked(x, bits, symmetric);
    Ok((quantize_checked(x, &p), p))
}

fn dequantize_into<T: Real>(codes: &[i32], p: &UniformParams, out: &mut [T]) {
    let zp = p.zero_point as f64;
    let s = p.scale;
    for (o, &q) in out.iter_mut().zip(codes) {
        // Saturate: near the ends of the type's range the grid may step past ±MAX.
        *o = T::from_f64(((q as f64 - zp) * s).max(-T::MAX_F64).min(T::MAX_F64));
    }
}

/// Reconstruct values: `x̂ = (q − zero_point)·scale` (computed in `f64`, then rounded to `T`;
/// saturated to `T`'s finite range).
///
/// Codes are not range-checked: any `i32` maps to a value.
pub fn dequantize<T: Real>(codes: &[i32], params: &UniformParams) -> Vec<T> {
    let mut out = vec![T::from_f64(0.0); codes.len()];
    if codes.len() >= PAR_MIN {
        crate::parallel::install(|| {
            out.par_chunks_mut(CHUNK)
                .zip(codes.par_chunks(CHUNK))
                .for_each(|(o, c)| dequantize_into(c, params, o));
        });
    } else {
        dequantize_into(codes, params, &mut out);
    }
    out
}

fn channel_len(len: usize, channels: usize) -> Result<usize> {
    if channels == 0 {
        return Err(Error::invalid("channels must be ≥ 1"));
    }
    if len % channels != 0 {
        return Err(Error::invalid(format!(
            "{len} values cannot be split into {channels} equal channels"
        )));
    }
    Ok(len / channels)
}

/// Quantize per channel: `x` is viewed as `(channels, len)` row-major and each row gets its
/// own parameters. Returns `(codes, params)` with `params.len() == channels`.
///
/// Errors: `channels == 0` or not dividing `x.len()`, bad `bits`, NaN/Inf in `x`.
///
/// ```
/// use deltackpt::quant::uniform;
/// let x = [0.0f32, 1.0, 2.0, /* channel 1 */ -100.0, 0.0, 100.0];
/// let (codes, p) = uniform::quantize_per_channel(&x, 2, 8, true).unwrap();
/// assert_eq!(p.len(), 2);
/// assert_eq!(codes[2], 127);
/// assert_eq!(codes[5], 127);
/// ```
pub fn quantize_per_channel<T: Real>(
    x: &[T],
    channels: usize,
    bits: u32,
    symmetric: bool,
) -> Result<(Vec<i32>, Vec<UniformParams>)> {
    check_bits(bits, symmetric)?;
    let len = channel_len(x.len(), channels)?;
    check_finite(x, "")?;
    let mut codes = vec![0i32; x.len()];
    let mut params = vec![constant_params(0.0, 0, 0, symmetric); channels];
    let work = |(row, (out, p)): (&[T], (&mut [i32], &mut UniformParams))| {
        *p = params_unchecked(row, bits, symmetric);
        Kernel::new(p).quantize_into(row, out);
    };
    if len == 0 {
        for p in params.iter_mut() {
            *p = params_unchecked::<T>(&[], bits, symmetric);
        }
    } else if x.len() >= PAR_MIN {
        crate::parallel::install(|| {
            x.par_chunks(len)
                .zip(codes.par_chunks_mut(len).zip(params.par_iter_mut()))
                .with_min_len((CHUNK / len).max(1))
                .for_each(work);
        });
    } else {
        x.chunks(len)
            .zip(codes.chunks_mut(len).zip(params.iter_mut()))
            .for_each(work);
    }
    Ok((codes, params))
}

/// Inverse of [`quantize_per_channel`]: `codes` viewed as `(params.len(), len)`.
///
/// Errors: `params` empty or not dividing `codes.len()`.
pub fn dequantize_per_channel<T: Real>(codes: &[i32], params: &[UniformParams]) -> Result<Vec<T>> {
    let len = channel_len(codes.len(), params.len())?;
    let mut out = vec![T::from_f64(0.0); codes.len()];
    if len > 0 {
        crate::parallel::install(|| {
            out.par_chunks_mut(len)
                .zip(codes.par_chunks(len).zip(params.par_iter()))
                .with_min_len((CHUNK / len).max(1))
                .for_each(|(o, (c, p))| dequantize_into(c, p, o));
        });
    }
    Ok(out)
}

fn symbol_range(p: &UniformParams) -> Result<()> {
    if p.qmin > p.qmax || (p.qmax as i64 - p.qmin as i64) > 255 {
        return Err(Error::invalid(format!(
            "codes in [{}, {}] do not fit in u8 symbols (at most 256 levels, bits ≤ 8)",
            p.qmin, p.qmax
        )));
    }
    Ok(())
}

/// Map codes to non-negative `u8` symbols `q − qmin` (for entropy coders). Needs at most 256
/// levels (`bits ≤ 8`). For the affine quantizer symbols equal codes; for the symmetric one
/// code 0 becomes symbol `L = 2^(bits−1) − 1`.
///
/// Errors: more than 256 levels, or a code outside `[qmin, qmax]`.
pub fn to_symbols(codes: &[i32], params: &UniformParams) -> Result<Vec<u8>> {
    symbol_range(params)?;
    let (lo, hi) = (params.qmin, params.qmax);
    if let Some(i) = codes.iter().position(|&q| q < lo || q > hi) {
        return Err(Error::invalid(format!(
            "code {} at index {i} is outside [{lo}, {hi}]",
            codes[i]
        )));
    }
    Ok(codes.iter().map(|&q| (q - lo) as u8).collect())
}

/// Inverse of [`to_symbols`]: `q = symbol + qmin`.
///
/// Errors: more than 256 levels, or a symbol above `qmax − qmin`.
pub fn from_symbols(symbols: &[u8], params: &UniformParams) -> Result<Vec<i32>> {
    symbol_range(params)?;
    let top = (params.qmax - params.qmin) as u8;
    if let Some(i) = symbols.iter().position(|&s| s > top) {
        return Err(Error::invalid(format!(
            "symbol {} at index {i} is above {top}",
            symbols[i]
        )));
    }
    Ok(symbols.iter().map(|&s| s as i32 + params.qmin).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affine_matches_spec_formulas() {
        let x = [-1.5f32, -0.2, 0.0, 0.7, 2.5];
        let (codes, p) = quantize(&x, 4, false).unwrap();
        let scale = (2.5f64 - (-1.5)) / 15.0;
        assert_eq!(p.scale, scale);
        assert_eq!(p.zero_point, (0.0 - (-1.5) / scale).round() as i64);
        assert_eq!((p.qmin, p.qmax), (0, 15));
        assert_eq!(codes[0], 0);
        assert_eq!(codes[4], 15);
        for (&v, &q) in x.iter().zip(&codes) {
            let expect = (v as f64 / scale + p.zero_point as f64)
                .round()
                .clamp(0.0, 15.0);
            assert_eq!(q as f64, expect);
        }
    }

    #[test]
    fn symmetric_zero_exact_and_one_bit_rejected() {
        let x = [-3.0f64, 0.0, 0.1, 3.0];
        let (codes, p) = quantize(&x, 3, true).unwrap();
        assert_eq!((p.qmin, p.qmax), (-3, 3));
        assert_eq!(codes, [-3, 0, 0, 3]);
        assert_eq!(dequantize::<f64>(&codes, &p)[1], 0.0);
        assert!(matches!(
            quantize(&x, 1, true),
            Err(Error::InvalidArgument(_))
        ));
        assert!(quantize(&x, 1, false).is_ok());
        for bad in [0, 17] {
            assert!(quantize(&x, bad, false).is_err());
        }
    }

    #[test]
    fn constant_and_empty() {
        for sym in [false, true] {
            for c in [0.0f32, 3.25, -7.0e-30, 1.0e38] {
                let x = vec![c; 10];
                let (codes, p) = quantize(&x, 4, sym).unwrap();
                assert!(codes.iter().all(|&q| q == codes[0]));
                assert!(codes[0] >= p.qmin && codes[0] <= p.qmax);
                assert_eq!(dequantize::<f32>(&codes, &p), x);
            }
            let (codes, p) = quantize::<f32>(&[], 8, sym).unwrap();
            assert!(codes.is_empty());
            p.validate().unwrap();
        }
    }

    #[test]
    fn nonfinite_rejected() {
        let x = [1.0f32, 2.0, f32::NAN];
        assert!(matches!(
            quantize(&x, 4, true),
            Err(Error::NonFinite {
                count: 1,
                first_index: 2,
                ..
            })
        ));
        let p = UniformParams {
            scale: 1.0,
            zero_point: 0,
            qmin: -1,
            qmax: 1,
        };
        assert!(matches!(
            quantize_with(&[f64::INFINITY], &p),
            Err(Error::NonFinite { .. })
        ));
        assert!(quantize_per_channel(&x, 3, 4, false).is_err());
    }

    #[test]
    fn extreme_f64_ranges() {
        let x = [-f64::MAX, 0.0, f64::MAX];
        for sym in [false, true] {
            let (codes, p) = quantize(&x, 8, sym).unwrap();
            p.validate().unwrap();
            let y: Vec<f64> = dequantize(&codes, &p);
            assert!(y.iter().all(|v| v.is_finite()));
        }
        // Narrow range far from 0 (f64 only): still within half a step, codes in range.
        let narrow: Vec<f64> = (0..50).map(|i| 1.0e10 + i as f64 * 1.0e-6).collect();
        let (codes, p) = quantize(&narrow, 16, false).unwrap();
        let y: Vec<f64> = dequantize(&codes, &p);
        assert!(codes.iter().all(|&q| (0..=65535).contains(&q)));
        assert!(narrow
            .iter()
            .zip(&y)
            .all(|(a, b)| (a - b).abs() <= p.scale * 0.5));
        assert!(p.scale < 1.0e-2);
        let tiny = [0.0f64, f64::from_bits(3)];
        let (codes, p) = quantize(&tiny, 16, false).unwrap();
        assert_eq!(dequantize::<f64>(&codes, &p), tiny);
    }

    #[test]
    fn per_channel_rows_are_independent() {
        let x: Vec<f32> = (0..12)
            .map(|i| (i as f32 - 5.0) * (1 + i / 4) as f32)
            .collect();
        let (codes, ps) = quantize_per_channel(&x, 3, 5, false).unwrap();
        for c in 0..3 {
            let (c1, p1) = quantize(&x[c * 4..c * 4 + 4], 5, false).unwrap();
            assert_eq!(&codes[c * 4..c * 4 + 4], &c1[..]);
            assert_eq!(ps[c], p1);
        }
        let back: Vec<f32> = dequantize_per_channel(&codes, &ps).unwrap();
        assert_eq!(back.len(), 12);
        assert!(quantize_per_channel(&x, 5, 5, false).is_err());
        assert!(quantize_per_channel(&x, 0, 5, false).is_err());
        let (c0, p0) = quantize_per_channel::<f32>(&[], 4, 3, true).unwrap();
        assert!(c0.is_empty() && p0.len() == 4);
    }

    #[test]
    fn symbols_roundtrip_and_bounds() {
        let p = UniformParams {
            scale: 1.0,
            zero_point: 0,
            qmin: -7,
            qmax: 7,
        };
        let codes = [-7, 0, 7, 3];
        let s = to_symbols(&codes, &p).unwrap();
        assert_eq!(s, [0, 7, 14, 10]);
        assert_eq!(from_symbols(&s, &p).unwrap(), codes);
        assert!(to_symbols(&[8], &p).is_err());
        assert!(from_symbols(&[15], &p).is_err());
        let wide = UniformParams {
            qmin: 0,
            qmax: 511,
            ..p
        };
        assert!(to_symbols(&[1], &wide).is_err());
    }
}
