//! Quantizers: map floats to small integer symbols plus the tables needed to map them back.
//!
//! - [`exponent`]: LC-checkpoint's exponent buckets with priority promotion (SPEC 2.2).
//! - [`uniform`]: affine (scale, zero point) and symmetric scalar quantization, per tensor or
//!   per channel (SPEC 2.7).
//! - [`bounded`]: error-bounded grids (absolute, relative L2, pointwise relative, relative to
//!   a second moment), checked by the encoder on what it wrote.
//! - [`lattice`]: LatticeQ — blocks of `n ≤ 9` values quantized on a truncated lattice with
//!   Babai's nearest plane algorithm, plus a random search for a good basis (SPEC 2.8).
//!
//! Both quantizers take `f32` or `f64` input (the [`Real`] trait) and compute in `f64`, so the
//! cubic lattice `λI` reproduces uniform quantization of step `λ` bit for bit. Ties round to
//! even. Non-finite input is rejected with [`Error::NonFinite`].

pub mod bounded;
pub mod exponent;
pub mod lattice;
pub mod uniform;

use crate::error::{Error, Result};

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// Floating-point element types accepted by the quantizers: `f32` and `f64` (sealed).
pub trait Real: Copy + Send + Sync + PartialOrd + 'static + sealed::Sealed {
    /// Widen (or keep) to `f64`; exact for both types.
    fn to_f64(self) -> f64;
    /// Narrow (round to nearest) from `f64`.
    fn from_f64(v: f64) -> Self;
    /// `true` unless NaN or ±Inf.
    fn is_finite_value(self) -> bool;
    /// Largest finite value of the type, as `f64` (reconstructions saturate there).
    const MAX_F64: f64;
}

impl Real for f32 {
    const MAX_F64: f64 = f32::MAX as f64;
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn is_finite_value(self) -> bool {
        self.is_finite()
    }
}

impl Real for f64 {
    const MAX_F64: f64 = f64::MAX;
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn is_finite_value(self) -> bool {
        self.is_finite()
    }
}

/// Reject NaN/Inf with [`Error::NonFinite`] (count and first flat index).
pub(crate) fn check_finite<T: Real>(x: &[T], context: &str) -> Result<()> {
    // Branch-free count per chunk (vectorizes); locate the first offender only on failure.
    let count: u64 = x
        .chunks(1 << 14)
        .map(|c| c.iter().filter(|v| !v.is_finite_value()).count() as u64)
        .sum();
    if count == 0 {
        return Ok(());
    }
    let first_index = x.iter().position(|v| !v.is_finite_value()).unwrap_or(0) as u64;
    Err(Error::NonFinite {
        count,
        first_index,
        context: context.to_string(),
    })
}

/// 1.5·2^52: adding then subtracting it rounds an `f64` of magnitude < 2^51 to an integer,
/// ties to even, with plain additions (no libm call, vectorizes on baseline x86-64).
const ROUND_MAGIC: f64 = 6_755_399_441_055_744.0;

/// Clamp `v` to `[lo, hi]` with plain comparisons (inputs are never NaN here, so this is
/// `v.max(lo).min(hi)` without the NaN handling, which costs extra instructions).
#[inline(always)]
pub(crate) fn clamp(v: f64, lo: f64, hi: f64) -> f64 {
    let v = if v < lo { lo } else { v };
    if v > hi {
        hi
    } else {
        v
    }
}

/// Round `v` (|v| < 2^31 after the caller's clamp) to the nearest integer, ties to even.
/// Returns the integer both as `f64` and as `i32`.
#[inline(always)]
pub(crate) fn round_even(v: f64) -> (f64, i32) {
    let m = v + ROUND_MAGIC;
    let code = (m.to_bits() as i64).wrapping_sub(ROUND_MAGIC.to_bits() as i64) as i32;
    (m - ROUND_MAGIC, code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_even_matches_std() {
        for &v in &[
            0.0, 0.4, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 7.49, -8.0, 32767.5, -32768.5, 3.0e5,
        ] {
            let (f, i) = round_even(v);
            assert_eq!(f, v.round_ties_even(), "{v}");
            assert_eq!(i as f64, v.round_ties_even(), "{v}");
        }
    }

    #[test]
    fn check_finite_reports_count_and_first() {
        let x = [1.0f32, f32::NAN, 2.0, f32::INFINITY, f32::NEG_INFINITY];
        match check_finite(&x, " in t") {
            Err(Error::NonFinite {
                count,
                first_index,
                context,
            }) => {
                assert_eq!((count, first_index, context.as_str()), (3, 1, " in t"));
            }
            other => panic!("{other:?}"),
        }
        assert!(check_finite(&[1.0f64, -3.0], "").is_ok());
    }
}
