//! The error-bounded quantizer: a delta quantized on a grid (or in the bit-pattern domain)
//! so that the reconstruction meets a promised bound, checked by the encoder on what it wrote.
//!
//! Four kinds of [`Bound`] on the reconstruction `x̂` of a tensor `x`:
//!
//! - [`Bound::Abs`]`(t)`: `|x̂ − x| ≤ t` for every element (as SZ3's ABS, ZFP's fixed accuracy);
//! - [`Bound::Rel`]`(e)`: `‖x̂ − x‖₂ ≤ e·‖x‖₂` over the tensor (relative to `x`, not to a delta);
//! - [`Bound::Pointwise`]`(ρ)`: `|x̂ − x| ≤ ρ·|x|` for every element — zeros stay zero and no
//!   sign flips (for optimizer second moments, which divide the update);
//! - [`Bound::Moment`]`{t, eps}`: `|x̂ − x| ≤ t·(√|v| + eps)` for every element, where `v` is a
//!   second tensor (Adam's `exp_avg_sq` for its `exp_avg`): the error of the update
//!   `m / (√v + eps)` that a restored first moment causes is at most `t`.
//!
//! **Grid modes** (`Abs`, `Rel`, `Moment`) quantize `d = x − r` (`r` the reference, or 0) to a
//! level `q` on a grid of step `Δ` (per tensor, or per element for `Moment`); the
//! reconstruction is `x̂ = round_dtype(r + q·Δ)` computed in the working precision `W` (`f32`
//! for 16/32-bit dtypes, `f64` for `f64`), the same operations in the same order on both sides,
//! so writer and reader agree bit for bit. `Abs`/`Moment` use `Δ = 2t(1 − 2⁻¹⁰)` (per element
//! `t`); the margin absorbs the roundings in `W`. `Rel` chooses `Δ` and a rounding offset `θ`
//! (a dead zone: `|q| = ⌊|d|/Δ + θ⌋`, `θ = ½` is plain rounding) from a histogram of `|d|`
//! so that the estimated squared error fits the budget at the lowest estimated rate
//! ([`DeltaHistogram::plan`]); the caller then checks the exact error.
//!
//! **Pointwise** works on the monotone integer *key* of each element's bit pattern
//! (sign-magnitude → ±magnitude): one key unit is at most `2⁻ᵖ` of the value (`p` mantissa
//! bits), so a key step `K = 2m + 1` with `m·2⁻ᵖ(1 + ρ) ≤ ρ` keeps the relative error within
//! `ρ` inside normal binades. Integer arithmetic only: exact and identical everywhere.
//!
//! In every mode an element whose reconstruction misses its bound (float roundings when the
//! bound is finer than the dtype's precision, subnormals, zeros in pointwise mode, levels out
//! of range) is stored exactly instead (an *escape*): the bound holds by construction.
//!
//! ```
//! use deltackpt::quant::bounded::{grid_level, grid_value};
//! // |d − qΔ| ≤ Δ/2 with plain rounding (θ = 0.5).
//! let (d, step) = (0.37f64, 0.1f64);
//! let q = grid_level(d, step, 0.5).unwrap();
//! assert_eq!(q, 4);
//! assert!((grid_value(0.0f32, q, step as f32) as f64 - d).abs() <= step / 2.0 + 1e-7);
//! ```

use crate::error::{Error, Result};
use crate::float::DType;

/// Margin taken off `2t` for the grid step of `Abs`/`Moment`, for the roundings in `W`.
pub const STEP_MARGIN: f64 = 1.0 / 1024.0;

/// Largest level magnitude (larger deltas are stored exactly).
pub const MAX_LEVEL: i64 = crate::entropy::levels::MAX_LEVEL;

/// The promise a bounded encode keeps (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bound {
    /// Every element within `t` (absolute).
    Abs(f64),
    /// `‖x̂ − x‖₂ ≤ e·‖x‖₂` for the tensor.
    Rel(f64),
    /// Every element within `ρ·|x|` (relative, per element).
    Pointwise(f64),
    /// Every element within `t·(√|v| + eps)`, `v` a second tensor of the same shape.
    Moment {
        /// Tolerance in units of `√|v| + eps`.
        t: f64,
        /// Floor added to `√|v|` (Adam's `eps`).
        eps: f64,
    },
}

impl Bound {
    /// The bound's id in the container.
    pub fn id(self) -> u8 {
        match self {
            Bound::Abs(_) => 1,
            Bound::Rel(_) => 2,
            Bound::Pointwise(_) => 3,
            Bound::Moment { .. } => 4,
        }
    }

    /// A short name (`"abs"`, `"rel"`, `"pointwise"`, `"moment"`).
    pub fn name(self) -> &'static str {
        match self {
            Bound::Abs(_) => "abs",
            Bound::Rel(_) => "rel",
            Bound::Pointwise(_) => "pointwise",
            Bound::Moment { .. } => "moment",
        }
    }

    /// The bound's main value (`t`, `e` or `ρ`).
    pub fn value(self) -> f64 {
        match self {
            Bound::Abs(v) | Bound::Rel(v) | Bound::Pointwise(v) => v,
            Bound::Moment { t, .. } => t,
        }
    }

    /// Rebuild a bound from its id and values (as stored).
    pub fn from_parts(id: u8, value: f64, eps: f64) -> Result<Self> {
        let b = match id {
            1 => Bound::Abs(value),
            2 => Bound::Rel(value),
            3 => Bound::Pointwise(value),
            4 => Bound::Moment { t: value, eps },
            other => return Err(Error::corrupt(format!("unknown error bound kind {other}"))),
        };
        b.validate().map_err(|e| Error::corrupt(e.to_string()))?;
        Ok(b)
    }

    /// Check the values: finite, non-negative; `ρ < 1` (a relative error of 1 or more could
    /// flip signs or zero values).
    pub fn validate(self) -> Result<()> {
        let v = self.value();
        if !(v.is_finite() && v >= 0.0) {
            return Err(Error::invalid(format!(
                "the {} error bound must be a finite number >= 0, got {v}",
                self.name()
            )));
        }
        match self {
            Bound::Pointwise(r) if r >= 1.0 => Err(Error::invalid(format!(
                "a pointwise relative tolerance must be below 1, got {r}"
            ))),
            Bound::Moment { eps, .. } if !(eps.is_finite() && eps >= 0.0) => Err(Error::invalid(
                format!("eps of a moment bound must be a finite number >= 0, got {eps}"),
            )),
            _ => Ok(()),
        }
    }

    /// A zero bound means exact storage.
    pub fn is_exact(self) -> bool {
        self.value() == 0.0
    }

    /// Whether the bound is per element with a grid step per element (needs `v`).
    pub fn needs_moment(self) -> bool {
        matches!(self, Bound::Moment { .. })
    }
}

/// Working precision of a grid reconstruction: `f32` or `f64`.
pub trait GridFloat: Copy + Send + Sync + PartialOrd + 'static {
    /// Zero.
    const ZERO: Self;
    /// Round from `f64`.
    fn from_f64(v: f64) -> Self;
    /// Widen to `f64` (exact).
    fn to_f64(self) -> f64;
    /// Convert a level (exact below 2²⁴ for `f32`).
    fn from_level(q: i64) -> Self;
    /// `self + q·step`, each operation rounded in `Self`.
    fn add_steps(self, q: Self, step: Self) -> Self;
    /// `√|self| + eps`.
    fn root_plus(self, eps: Self) -> Self;
    /// `c · self`.
    fn times(self, c: Self) -> Self;
    /// The smallest positive normal value, as `f64`.
    fn min_normal() -> f64;
}

impl GridFloat for f32 {
    const ZERO: Self = 0.0;
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn from_level(q: i64) -> Self {
        q as f32
    }
    #[inline(always)]
    fn add_steps(self, q: Self, step: Self) -> Self {
        self + q * step
    }
    #[inline(always)]
    fn root_plus(self, eps: Self) -> Self {
        self.abs().sqrt() + eps
    }
    #[inline(always)]
    fn times(self, c: Self) -> Self {
        self * c
    }
    fn min_normal() -> f64 {
        f32::MIN_POSITIVE as f64
    }
}

impl GridFloat for f64 {
    const ZERO: Self = 0.0;
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn from_level(q: i64) -> Self {
        q as f64
    }
    #[inline(always)]
    fn add_steps(self, q: Self, step: Self) -> Self {
        self + q * step
    }
    #[inline(always)]
    fn root_plus(self, eps: Self) -> Self {
        self.abs().sqrt() + eps
    }
    #[inline(always)]
    fn times(self, c: Self) -> Self {
        self * c
    }
    fn min_normal() -> f64 {
        f64::MIN_POSITIVE
    }
}

/// The level of `d` on a grid of step `step` with rounding offset `theta` (`½` = nearest):
/// `sign(d)·⌊|d|/step + θ⌋`, or `None` beyond [`MAX_LEVEL`].
#[inline(always)]
pub fn grid_level(d: f64, step: f64, theta: f64) -> Option<i64> {
    let m = (d.abs() / step + theta).floor();
    // NaN (a zero step) and out-of-range levels alike
    if m.is_nan() || m > MAX_LEVEL as f64 {
        return None;
    }
    let m = m as i64;
    Some(if d < 0.0 { -m } else { m })
}

/// The grid value `base + q·step` in the working precision (what decode computes).
#[inline(always)]
pub fn grid_value<W: GridFloat>(base: W, q: i64, step: W) -> W {
    base.add_steps(W::from_level(q), step)
}

/// The grid step of `Abs(t)` / `Moment` with tolerance `t` (per unit), with [`STEP_MARGIN`].
pub fn grid_step(t: f64) -> f64 {
    2.0 * t * (1.0 - STEP_MARGIN)
}

/// Mantissa bits of a dtype (the precision a pointwise key step is measured against).
pub fn mantissa_bits(dtype: DType) -> u32 {
    match dtype {
        DType::F32 => 23,
        DType::F64 => 52,
        DType::F16 => 10,
        DType::BF16 => 7,
    }
}

/// The key step `K = 2m + 1` of a pointwise bound `rho` on a dtype with `p` mantissa bits,
/// or `None` when not even one key unit fits the bound (store exactly).
pub fn pointwise_step(rho: f64, p: u32) -> Option<u64> {
    let m = (rho * 2f64.powi(p as i32) / (1.0 + rho)).floor();
    if m < 1.0 {
        return None;
    }
    // K ≤ 2^52 + 1: stored as an f64, it must be an exact integer.
    Some(2 * (m.min((1u64 << 51) as f64) as u64) + 1)
}

/// The pointwise level of key `kx` against reference key `kr` with step `k`: the nearest
/// multiple, or `None` beyond [`MAX_LEVEL`].
#[inline(always)]
pub fn key_level(kx: i64, kr: i64, k: u64) -> Option<i64> {
    let d = kx as i128 - kr as i128;
    let k = k as i128;
    let q = if d >= 0 {
        (d + k / 2) / k
    } else {
        -((-d + k / 2) / k)
    };
    (q.abs() <= MAX_LEVEL as i128).then_some(q as i64)
}

/// The key `kr + q·k`, saturated to `±max_key` (a forged blob can ask for any level).
#[inline(always)]
pub fn key_value(kr: i64, q: i64, k: u64, max_key: i64) -> i64 {
    let v = kr as i128 + q as i128 * k as i128;
    v.clamp(-(max_key as i128), max_key as i128) as i64
}

/// Histogram bins per octave of `|d|` in [`DeltaHistogram`].
const SUB_BITS: u32 = 3;
/// Number of bins: every f64 exponent × 2^SUB_BITS.
const BINS: usize = 2048 << SUB_BITS;

/// Counts, sums and sums of squares of `|d|` in log-spaced bins (eight per octave), plus the
/// sum of squares of the tensor: what [`DeltaHistogram::plan`] needs to choose the grid of a
/// relative L2 bound without passes over the data.
#[derive(Clone, Debug)]
pub struct DeltaHistogram {
    count: Vec<f64>,
    sum: Vec<f64>,
    sumsq: Vec<f64>,
    /// Σ x² of the elements added (the budget's reference).
    pub sumsq_x: f64,
    /// Elements added.
    pub n: f64,
}

impl Default for DeltaHistogram {
    fn default() -> Self {
        DeltaHistogram {
            count: vec![0.0; BINS],
            sum: vec![0.0; BINS],
            sumsq: vec![0.0; BINS],
            sumsq_x: 0.0,
            n: 0.0,
        }
    }
}

/// Lower edge of bin `b` (its upper edge is the next bin's lower edge).
fn bin_low(b: usize) -> f64 {
    f64::from_bits((b as u64) << (52 - SUB_BITS))
}

impl DeltaHistogram {
    /// Add one element: its delta `d` and its value `x`.
    #[inline(always)]
    pub fn add(&mut self, d: f64, x: f64) {
        let a = d.abs();
        let b = (a.to_bits() >> (52 - SUB_BITS)) as usize;
        if b < BINS {
            self.count[b] += 1.0;
            self.sum[b] += a;
            self.sumsq[b] += a * a;
        }
        self.sumsq_x += x * x;
        self.n += 1.0;
    }

    /// Add another histogram's counts to this one.
    pub fn merge(&mut self, o: &DeltaHistogram) {
        for b in 0..BINS {
            self.count[b] += o.count[b];
            self.sum[b] += o.sum[b];
            self.sumsq[b] += o.sumsq[b];
        }
        self.sumsq_x += o.sumsq_x;
        self.n += o.n;
    }

    /// Estimated squared error and bits (of the levels) of quantizing the histogram's deltas
    /// on a grid `step` with offset `theta`. Bins inside one quantization cell are exact
    /// (all their members go to one level); wider ones are taken as uniform.
    pub fn estimate(&self, step: f64, theta: f64) -> (f64, f64) {
        let mut err = 0.0;
        let mut zero = 0.0;
        let mut bits = 0.0;
        let n = self.n.max(1.0);
        let cell_mse = (theta.powi(3) + (1.0 - theta).powi(3)) / 3.0 * step * step;
        for b in 0..BINS {
            let c = self.count[b];
            if c == 0.0 {
                continue;
            }
            let (lo, hi) = (bin_low(b), bin_low(b + 1));
            let (klo, khi) = ((lo / step + theta).floor(), (hi / step + theta).floor());
            if khi == 0.0 {
                err += self.sumsq[b];
                zero += c;
            } else if klo == khi {
                let v = klo * step;
                err += self.sumsq[b] - 2.0 * v * self.sum[b] + c * v * v;
                // one level (either sign): its probability, plus the sign bit
                bits += c * (-(c / n).log2() + 1.0);
            } else {
                err += c * cell_mse;
                let levels = (khi - klo).max(1.0);
                bits += c * (-(c / n).log2() + levels.log2() + 1.0);
            }
        }
        if zero > 0.0 {
            bits += zero * -(zero / n).log2();
        }
        (err, bits)
    }

    /// The grid `(step, theta)` of a relative bound `e`: for each rounding offset tried, the
    /// largest step whose estimated error is at most `fill · e² · Σx²`; of those, the one with
    /// the fewest estimated bits. `None` when the histogram is empty or all zero.
    pub fn plan(&self, e: f64, fill: f64) -> Option<(f64, f64)> {
        let budget = fill * e * e * self.sumsq_x;
        if self.sum.iter().all(|&s| s == 0.0) && budget > 0.0 {
            return Some((1.0, 0.5)); // every delta is 0: any grid keeps them exactly
        }
        let top = (0..BINS).rev().find(|&b| self.count[b] > 0.0)?;
        let max_d = bin_low(top + 1);
        if !(budget > 0.0 && max_d > 0.0) {
            return None;
        }
        let mut best: Option<(f64, f64, f64)> = None;
        for &theta in &[0.5, 0.4, 0.3, 0.2] {
            // err(step) grows with step (nearly monotone): bisect log2(step).
            let (mut lo, mut hi) = ((max_d * 1e-12).log2(), (max_d * 4.0).log2());
            if self.estimate(2f64.powf(lo), theta).0 > budget {
                continue;
            }
            for _ in 0..48 {
                let mid = 0.5 * (lo + hi);
                if self.estimate(2f64.powf(mid), theta).0 <= budget {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            let step = 2f64.powf(lo);
            let bits = self.estimate(step, theta).1;
            if best.is_none_or(|b| bits < b.2) {
                best = Some((step, theta, bits));
            }
        }
        best.map(|(s, t, _)| (s, t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_level_rounds_with_offset() {
        assert_eq!(grid_level(0.24, 0.1, 0.5), Some(2));
        assert_eq!(grid_level(0.26, 0.1, 0.5), Some(3));
        assert_eq!(grid_level(-0.26, 0.1, 0.5), Some(-3));
        assert_eq!(
            grid_level(0.26, 0.1, 0.2),
            Some(2),
            "dead zone rounds towards 0"
        );
        assert_eq!(grid_level(0.07, 0.1, 0.2), Some(0));
        assert_eq!(grid_level(1e300, 1e-300, 0.5), None);
        assert_eq!(grid_level(0.0, 1.0, 0.5), Some(0));
    }

    #[test]
    fn pointwise_step_fits_the_bound() {
        // f32, ρ = 1%: m·2^-23·(1+ρ) ≤ ρ.
        let k = pointwise_step(0.01, 23).unwrap();
        let m = (k - 1) / 2;
        assert!(m as f64 * 2f64.powi(-23) * 1.01 <= 0.01);
        assert!((m + 1) as f64 * 2f64.powi(-23) * 1.01 > 0.01 * 0.99);
        assert_eq!(
            pointwise_step(0.001, 7),
            None,
            "bf16 cannot hold 0.1% per element"
        );
        assert_eq!(pointwise_step(0.005, 7), None);
        assert_eq!(
            pointwise_step(0.01, 7),
            Some(3),
            "one key unit of bf16 is 2^-7 < 1%"
        );
        assert_eq!(pointwise_step(0.05, 7), Some(13));
    }

    #[test]
    fn key_levels_are_nearest_multiples() {
        assert_eq!(key_level(100, 0, 7), Some(14));
        assert_eq!(key_level(-100, 0, 7), Some(-14));
        assert_eq!(key_level(3, 0, 7), Some(0));
        assert_eq!(key_level(4, 0, 7), Some(1));
        assert_eq!(key_value(0, 14, 7, 1000), 98);
        assert_eq!(key_value(0, 1 << 30, 1 << 40, 1000), 1000, "saturates");
        assert_eq!(key_level(i64::MAX, i64::MIN, 1), None);
    }

    #[test]
    fn bounds_validate() {
        assert!(Bound::Abs(0.1).validate().is_ok());
        assert!(Bound::Abs(-0.1).validate().is_err());
        assert!(Bound::Rel(f64::NAN).validate().is_err());
        assert!(Bound::Pointwise(1.0).validate().is_err());
        assert!(Bound::Moment { t: 0.1, eps: -1.0 }.validate().is_err());
        assert!(Bound::from_parts(9, 0.1, 0.0).is_err());
        assert_eq!(
            Bound::from_parts(4, 0.1, 1e-8).unwrap(),
            Bound::Moment { t: 0.1, eps: 1e-8 }
        );
    }

    #[test]
    fn a_zero_delta_plans_a_grid_that_keeps_it() {
        let mut h = DeltaHistogram::default();
        for i in 0..1000 {
            h.add(0.0, i as f64);
        }
        assert_eq!(h.plan(1e-3, 0.9), Some((1.0, 0.5)));
        let mut zero_x = DeltaHistogram::default();
        zero_x.add(0.0, 0.0);
        assert_eq!(zero_x.plan(1e-3, 0.9), None, "x = 0: only exact storage keeps it");
    }

    #[test]
    fn histogram_plan_meets_its_estimate_on_a_laplacian() {
        // A deterministic Laplacian-like sample.
        let mut h = DeltaHistogram::default();
        let mut s = 12345u64;
        let mut ds = Vec::new();
        for _ in 0..200_000 {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            let d = if u < 0.5 {
                (2.0 * u).ln()
            } else {
                -(2.0 - 2.0 * u).ln()
            } * 1e-3;
            ds.push(d);
            h.add(d, 0.05 + d);
        }
        let e = 0.01;
        let (step, theta) = h.plan(e, 0.9).unwrap();
        let err: f64 = ds
            .iter()
            .map(|&d| {
                let q = grid_level(d, step, theta).unwrap();
                (d - q as f64 * step).powi(2)
            })
            .sum();
        let budget = e * e * h.sumsq_x;
        assert!(err <= budget, "{err} > {budget}");
        assert!(
            err >= 0.5 * budget,
            "the plan should use its budget: {err} vs {budget}"
        );
    }
}
