//! Lattice quantization ("LatticeQ", SPEC 2.8, thesis ch. 3).
//!
//! Values are cut into blocks of `n` consecutive numbers (`1 ≤ n ≤ 9`; blocks are passed as an
//! `(N, n)` row-major slice). A basis `B = (b_1..b_n)` is an `n × n` row-major `f32` matrix
//! whose rows are the basis vectors; it defines the truncated lattice
//! `Q = {Σ c_i b_i : −2^(bits−1) ≤ c_i ≤ 2^(bits−1) − 1}`. A block `t` is quantized with
//! Babai's nearest plane algorithm (thesis algorithm 2), with per-coordinate clipping:
//!
//! ```text
//! r ← t
//! for j = n..1:
//!     u_j ← clip(<r, b*_j> / <b*_j, b*_j>, −2^(bits−1), 2^(bits−1) − 1)
//!     c_j ← round(u_j)            (ties to even)
//!     r ← r − c_j·b_j
//! ```
//!
//! where `b*_j` are the Gram–Schmidt vectors of `B` ([`gram_schmidt`]). The codes `c` are `i32`
//! in the range above; [`dequantize`] returns `Σ c_j b_j`. Arithmetic is in `f64` whatever the
//! input type, so the cubic lattice `B = λI` gives exactly the codes and values of
//! [`uniform::quantize_with`](super::uniform::quantize_with) with step `λ`, zero point 0 and
//! code range `[−2^(bits−1), 2^(bits−1) − 1]`.
//!
//! Bases are stored as `f32` (what a checkpoint keeps); [`find_basis`] searches one for given
//! data (thesis algorithm 4). Per-channel variants take one basis per channel, the blocks being
//! grouped by channel (`blocks` viewed as `(channels, blocks_per_channel, n)`).
//!
//! ```
//! use deltackpt::quant::lattice::{self, FindBasisOptions};
//! // 4 blocks of dimension 2, strongly correlated coordinates
//! let blocks = [0.9f32, 1.0, -0.5, -0.45, 0.1, 0.12, -1.0, -0.9];
//! let basis = [0.25f32, 0.0, 0.0, 0.25]; // 0.25·I
//! let codes = lattice::babai(&blocks, 2, &basis, 4).unwrap();
//! assert_eq!(codes, [4, 4, -2, -2, 0, 0, -4, -4]);
//! let back: Vec<f32> = lattice::dequantize(&codes, 2, &basis).unwrap();
//! assert_eq!(back[..2], [1.0, 1.0]);
//! let found = lattice::find_basis(&blocks, 2, 4, &FindBasisOptions::default()).unwrap();
//! assert_eq!(found.len(), 4);
//! ```

use rayon::prelude::*;

use super::{check_finite, clamp, round_even, Real};
use crate::error::{Error, Result};

/// Largest supported block dimension.
pub const MAX_DIM: usize = 9;

/// Blocks per parallel chunk for quantization and dequantization.
const PAR_BLOCKS: usize = 1 << 14;
/// Blocks processed together by the vectorized Babai kernel.
const LANES: usize = 8;
/// Blocks per chunk of an error sum. Fixed, so sums do not depend on the thread count.
const EVAL_BLOCKS: usize = 4096;

/// Error measure minimized by [`find_basis`] (mean over all values of the blocks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Loss {
    /// Mean cubed error `mean |x − x̂|³` (the thesis' choice, the default).
    #[default]
    Mce,
    /// Mean squared error `mean (x − x̂)²`.
    Mse,
}

/// Options of [`find_basis`].
#[derive(Clone, Debug, PartialEq)]
pub struct FindBasisOptions {
    /// Number of random perturbations tried after the best scaled identity is found
    /// (`0` returns the best `λI`). Default 400.
    pub iters: usize,
    /// Seed of the perturbations; the result is a deterministic function of the data, the
    /// options and the seed (independent of the thread count). Default 0.
    pub seed: u64,
    /// Error to minimize. Default [`Loss::Mce`].
    pub loss: Loss,
    /// First temperature: the standard deviation of the Gaussian noise added to each basis
    /// entry, relative to the best cubic step `λ`. Default 0.3.
    pub t_start: f64,
    /// Last temperature (relative to `λ`); the schedule is geometric from `t_start` to `t_end`
    /// over `iters` steps. Default 0.01.
    pub t_end: f64,
    /// Candidates are scored on at most this many blocks, a deterministic evenly strided
    /// subsample (`0` = always all blocks). Default 65536.
    pub sample_blocks: usize,
}

impl Default for FindBasisOptions {
    fn default() -> Self {
        FindBasisOptions {
            iters: 400,
            seed: 0,
            loss: Loss::Mce,
            t_start: 0.3,
            t_end: 0.01,
            sample_blocks: 65_536,
        }
    }
}

impl std::str::FromStr for Loss {
    type Err = Error;

    /// `"mce"` or `"mse"` (case-insensitive), as the Python bindings spell them.
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "mce" => Ok(Loss::Mce),
            "mse" => Ok(Loss::Mse),
            _ => Err(Error::invalid(format!(
                "unknown lattice loss {s:?}: expected \"mce\" or \"mse\""
            ))),
        }
    }
}

fn check_dim(n: usize) -> Result<()> {
    if !(1..=MAX_DIM).contains(&n) {
        return Err(Error::invalid(format!(
            "lattice block dimension must be 1..={MAX_DIM}, got {n}"
        )));
    }
    Ok(())
}

fn check_bits(bits: u32) -> Result<()> {
    if !(1..=16).contains(&bits) {
        return Err(Error::invalid(format!(
            "lattice quantization needs 1 ≤ bits ≤ 16, got {bits}"
        )));
    }
    Ok(())
}

fn check_blocks(len: usize, n: usize, what: &str) -> Result<usize> {
    if len % n != 0 {
        return Err(Error::invalid(format!(
            "{what} has {len} values, not a multiple of the block dimension {n}"
        )));
    }
    Ok(len / n)
}

/// Gram–Schmidt orthogonalization (in `f64`) of the rows of the `n × n` row-major `basis`:
/// `b*_1 = b_1`, `b*_j = b_j − Σ_{i<j} (<b_j, b*_i>/<b*_i, b*_i>) b*_i` (modified Gram–Schmidt).
/// Returns the `b*_j` as rows.
///
/// Errors: `n` outside `1..=9`, wrong length, non-finite entries, or a singular basis
/// (some `‖b*_j‖ ≤ 1e-6·‖b_j‖`, i.e. `b_j` is numerically a combination of earlier rows).
///
/// ```
/// use deltackpt::quant::lattice::gram_schmidt;
/// let gs = gram_schmidt(&[2.0, 0.0, 1.0, 1.0], 2).unwrap();
/// assert_eq!(gs, [2.0, 0.0, 0.0, 1.0]);
/// assert!(gram_schmidt(&[1.0, 2.0, 2.0, 4.0], 2).is_err());
/// ```
pub fn gram_schmidt(basis: &[f32], n: usize) -> Result<Vec<f64>> {
    let p = Prepared::new(basis, n, 1)?;
    let mut out = Vec::with_capacity(n * n);
    for row in &p.gs[..n] {
        out.extend_from_slice(&row[..n]);
    }
    Ok(out)
}

/// A validated basis with its Gram–Schmidt data.
#[derive(Clone, Debug)]
struct Prepared {
    n: usize,
    /// Basis rows `b_j`.
    b: [[f64; MAX_DIM]; MAX_DIM],
    /// Gram–Schmidt rows `b*_j`.
    gs: [[f64; MAX_DIM]; MAX_DIM],
    /// `b*_j / <b*_j, b*_j>`: `u_j = <r, w_j>` is one dot product.
    w: [[f64; MAX_DIM]; MAX_DIM],
    lo: f64,
    hi: f64,
}

impl Prepared {
    fn new(basis: &[f32], n: usize, bits: u32) -> Result<Self> {
        check_dim(n)?;
        check_bits(bits)?;
        if basis.len() != n * n {
            return Err(Error::invalid(format!(
                "a basis of dimension {n} needs {} values, got {}",
                n * n,
                basis.len()
            )));
        }
        if let Some(i) = basis.iter().position(|v| !v.is_finite()) {
            return Err(Error::invalid(format!(
                "basis entry {i} is {} (bases must be finite)",
                basis[i]
            )));
        }
        let mut b = [[0.0f64; MAX_DIM]; MAX_DIM];
        for (j, row) in basis.chunks_exact(n).enumerate() {
            for (k, &v) in row.iter().enumerate() {
                b[j][k] = v as f64;
            }
        }
        let mut gs = [[0.0f64; MAX_DIM]; MAX_DIM];
        let mut w = [[0.0f64; MAX_DIM]; MAX_DIM];
        let mut norms = [0.0f64; MAX_DIM];
        for j in 0..n {
            let mut v = b[j];
            for i in 0..j {
                let mu = dot(&v[..n], &gs[i][..n]) / norms[i];
                for k in 0..n {
                    v[k] -= mu * gs[i][k];
                }
            }
            let nn = dot(&v[..n], &v[..n]);
            let bn = dot(&b[j][..n], &b[j][..n]);
            if nn <= 1e-12 * bn || !nn.is_finite() {
                return Err(Error::invalid(format!(
                    "the basis is singular: vector {j} is (numerically) a linear combination of \
                     the previous ones (Gram–Schmidt norm² {nn:e} vs {bn:e})"
                )));
            }
            norms[j] = nn;
            gs[j] = v;
            for k in 0..n {
                w[j][k] = v[k] / nn;
            }
        }
        Ok(Prepared {
            n,
            b,
            gs,
            w,
            lo: -(2f64.powi(bits as i32 - 1)),
            hi: 2f64.powi(bits as i32 - 1) - 1.0,
        })
    }

    /// `¼ Σ_j ‖b*_j‖²`: the squared-distance bound of unclipped Babai.
    #[cfg(test)]
    fn babai_bound(&self) -> f64 {
        (0..self.n)
            .map(|j| dot(&self.gs[j][..self.n], &self.gs[j][..self.n]))
            .sum::<f64>()
            / 4.0
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The basis specialized to a compile-time dimension, so the inner loops fully unroll.
struct Kernel<const N: usize> {
    b: [[f64; N]; N],
    w: [[f64; N]; N],
    lo: f64,
    hi: f64,
}

impl<const N: usize> Kernel<N> {
    fn new(p: &Prepared) -> Self {
        debug_assert_eq!(p.n, N);
        let mut b = [[0.0; N]; N];
        let mut w = [[0.0; N]; N];
        for j in 0..N {
            b[j].copy_from_slice(&p.b[j][..N]);
            w[j].copy_from_slice(&p.w[j][..N]);
        }
        Kernel {
            b,
            w,
            lo: p.lo,
            hi: p.hi,
        }
    }

    /// Babai's nearest plane on one block; returns the codes and the residual `t − x̂`.
    #[inline(always)]
    #[allow(clippy::needless_range_loop)]
    fn block<T: Real>(&self, t: &[T; N]) -> ([i32; N], [f64; N]) {
        let mut r = [0.0f64; N];
        for k in 0..N {
            r[k] = t[k].to_f64();
        }
        let mut codes = [0i32; N];
        for j in (0..N).rev() {
            let mut d = 0.0;
            for k in 0..N {
                d += r[k] * self.w[j][k];
            }
            let (c, ci) = round_even(clamp(d, self.lo, self.hi));
            codes[j] = ci;
            for k in 0..N {
                r[k] -= c * self.b[j][k];
            }
        }
        (codes, r)
    }

    /// [`Self::block`] on `LANES` consecutive blocks at once, coordinates stored lane-minor so
    /// that every step is an elementwise loop over blocks (vectorizes). Per block, the
    /// operations and their order are exactly those of [`Self::block`].
    #[inline(always)]
    #[allow(clippy::needless_range_loop)]
    fn lanes<T: Real>(&self, t: &[T]) -> ([[i32; LANES]; N], [[f64; LANES]; N]) {
        let mut r = [[0.0f64; LANES]; N];
        for l in 0..LANES {
            for k in 0..N {
                r[k][l] = t[l * N + k].to_f64();
            }
        }
        let mut codes = [[0i32; LANES]; N];
        for j in (0..N).rev() {
            let mut d = [0.0f64; LANES];
            for k in 0..N {
                let w = self.w[j][k];
                for l in 0..LANES {
                    d[l] += r[k][l] * w;
                }
            }
            let mut c = [0.0f64; LANES];
            for l in 0..LANES {
                let u = clamp(d[l], self.lo, self.hi);
                (c[l], codes[j][l]) = round_even(u);
            }
            for k in 0..N {
                let b = self.b[j][k];
                for l in 0..LANES {
                    r[k][l] -= c[l] * b;
                }
            }
        }
        (codes, r)
    }

    #[allow(clippy::needless_range_loop)]
    fn quantize_into<T: Real>(&self, blocks: &[T], codes: &mut [i32]) {
        let mut bl = blocks.chunks_exact(LANES * N);
        let mut cl = codes.chunks_exact_mut(LANES * N);
        for (t, c) in (&mut bl).zip(&mut cl) {
            let (q, _) = self.lanes(t);
            for l in 0..LANES {
                for j in 0..N {
                    c[l * N + j] = q[j][l];
                }
            }
        }
        let rest = bl.remainder().chunks_exact(N);
        for (t, c) in rest.zip(cl.into_remainder().chunks_exact_mut(N)) {
            let t: &[T; N] = t.try_into().expect("chunk of N");
            c.copy_from_slice(&self.block(t).0);
        }
    }

    /// Sum over the blocks of `Σ_k |r_k|³` (`CUBE`) or `Σ_k r_k²`: one partial sum per lane,
    /// combined in a fixed order (the result depends only on `blocks`).
    #[allow(clippy::needless_range_loop)]
    fn error_sum<T: Real, const CUBE: bool>(&self, blocks: &[T]) -> f64 {
        let mut acc = [0.0f64; LANES];
        let mut bl = blocks.chunks_exact(LANES * N);
        for t in &mut bl {
            let (_, r) = self.lanes(t);
            for k in 0..N {
                for l in 0..LANES {
                    let v = r[k][l];
                    acc[l] += if CUBE { v * v * v.abs() } else { v * v };
                }
            }
        }
        let mut total: f64 = acc.iter().sum();
        for t in bl.remainder().chunks_exact(N) {
            let t: &[T; N] = t.try_into().expect("chunk of N");
            for v in self.block(t).1 {
                total += if CUBE { v * v * v.abs() } else { v * v };
            }
        }
        total
    }

    /// Deterministic total error: fixed chunks of [`EVAL_BLOCKS`], summed in order.
    fn error_total<T: Real>(&self, blocks: &[T], loss: Loss) -> f64 {
        let parts: Vec<f64> = blocks
            .par_chunks(EVAL_BLOCKS * N)
            .map(|c| match loss {
                Loss::Mce => self.error_sum::<T, true>(c),
                Loss::Mse => self.error_sum::<T, false>(c),
            })
            .collect();
        parts.iter().sum()
    }
}

/// Run `$body` with `$N` bound to the constant equal to the runtime dimension `$n` (1..=9).
macro_rules! with_dim {
    ($n:expr, $N:ident => $body:expr) => {
        match $n {
            1 => {
                const $N: usize = 1;
                $body
            }
            2 => {
                const $N: usize = 2;
                $body
            }
            3 => {
                const $N: usize = 3;
                $body
            }
            4 => {
                const $N: usize = 4;
                $body
            }
            5 => {
                const $N: usize = 5;
                $body
            }
            6 => {
                const $N: usize = 6;
                $body
            }
            7 => {
                const $N: usize = 7;
                $body
            }
            8 => {
                const $N: usize = 8;
                $body
            }
            _ => {
                const $N: usize = 9;
                $body
            }
        }
    };
}

fn quantize_prepared<T: Real>(blocks: &[T], p: &Prepared, codes: &mut [i32]) {
    with_dim!(p.n, N => {
        let k = Kernel::<N>::new(p);
        if blocks.len() >= 4 * PAR_BLOCKS * N {
            codes
                .par_chunks_mut(PAR_BLOCKS * N)
                .zip(blocks.par_chunks(PAR_BLOCKS * N))
                .for_each(|(c, b)| k.quantize_into(b, c));
        } else {
            k.quantize_into(blocks, codes);
        }
    })
}

fn dequantize_prepared<T: Real>(codes: &[i32], p: &Prepared, out: &mut [T]) {
    fn serial<T: Real, const N: usize>(b: &[[f64; N]; N], codes: &[i32], out: &mut [T]) {
        for (c, o) in codes.chunks_exact(N).zip(out.chunks_exact_mut(N)) {
            let mut x = [0.0f64; N];
            for (j, &cj) in c.iter().enumerate() {
                let cj = cj as f64;
                for (xk, bk) in x.iter_mut().zip(&b[j]) {
                    *xk += cj * bk;
                }
            }
            for (ok, xk) in o.iter_mut().zip(x) {
                *ok = T::from_f64(xk.max(-T::MAX_F64).min(T::MAX_F64));
            }
        }
    }
    with_dim!(p.n, N => {
        let b = Kernel::<N>::new(p).b;
        if codes.len() >= 4 * PAR_BLOCKS * N {
            out.par_chunks_mut(PAR_BLOCKS * N)
                .zip(codes.par_chunks(PAR_BLOCKS * N))
                .for_each(|(o, c)| serial::<T, N>(&b, c, o));
        } else {
            serial::<T, N>(&b, codes, out);
        }
    })
}

fn error_prepared<T: Real>(blocks: &[T], p: &Prepared, loss: Loss) -> f64 {
    with_dim!(p.n, N => Kernel::<N>::new(p).error_total(blocks, loss))
}

/// Quantize `blocks` (`(N, n)` row-major) on the lattice of `basis` (`n × n`, rows = basis
/// vectors) with Babai's nearest plane; returns the `(N, n)` codes, each in
/// `[−2^(bits−1), 2^(bits−1) − 1]`.
///
/// Errors: `n` outside `1..=9`, `bits` outside `1..=16`, lengths inconsistent with `n`,
/// non-finite or singular basis ([`Error::InvalidArgument`]), NaN/Inf in `blocks`
/// ([`Error::NonFinite`]).
///
/// ```
/// use deltackpt::quant::lattice;
/// // hexagonal lattice in dimension 2, 3-bit codes in [-4, 3]
/// let basis = [1.0f32, 0.0, 0.5, 0.866_025_4];
/// let codes = lattice::babai(&[0.1f32, 0.8, 3.0, -2.0], 2, &basis, 3).unwrap();
/// // (0.1, 0.8) ≈ 0·b1 + 1·b2; for (3, -2) the first coordinate (4) is clipped to 3
/// assert_eq!(codes, [0, 1, 3, -2]);
/// ```
pub fn babai<T: Real>(blocks: &[T], n: usize, basis: &[f32], bits: u32) -> Result<Vec<i32>> {
    let p = Prepared::new(basis, n, bits)?;
    check_blocks(blocks.len(), n, "blocks")?;
    check_finite(blocks, "")?;
    let mut codes = vec![0i32; blocks.len()];
    crate::parallel::install(|| quantize_prepared(blocks, &p, &mut codes));
    Ok(codes)
}

/// Reconstruct blocks from `(N, n)` codes: `x̂ = Σ_j c_j b_j` (in `f64`, then rounded to `T`,
/// saturated to its finite range). Any `i32` code is accepted.
///
/// Errors: bad `n`, lengths, or basis (as in [`babai`]).
pub fn dequantize<T: Real>(codes: &[i32], n: usize, basis: &[f32]) -> Result<Vec<T>> {
    let p = Prepared::new(basis, n, 1)?;
    check_blocks(codes.len(), n, "codes")?;
    let mut out = vec![T::from_f64(0.0); codes.len()];
    crate::parallel::install(|| dequantize_prepared(codes, &p, &mut out));
    Ok(out)
}

/// Mean error of Babai quantization of `blocks` on `basis`: `mean |x − x̂|³` ([`Loss::Mce`]) or
/// `mean (x − x̂)²` ([`Loss::Mse`]) over all `N·n` values (`0` for no blocks). The sum is taken
/// in fixed chunks in a fixed order, so the result does not depend on the thread count.
///
/// Errors: as in [`babai`].
pub fn error<T: Real>(blocks: &[T], n: usize, basis: &[f32], bits: u32, loss: Loss) -> Result<f64> {
    let p = Prepared::new(basis, n, bits)?;
    check_blocks(blocks.len(), n, "blocks")?;
    check_finite(blocks, "")?;
    if blocks.is_empty() {
        return Ok(0.0);
    }
    let total = crate::parallel::install(|| error_prepared(blocks, &p, loss));
    Ok(total / blocks.len() as f64)
}

/// Split per-channel data: returns `(values per channel, count)` after checking lengths.
fn channel_split(len: usize, bases_len: usize, n: usize, what: &str) -> Result<(usize, usize)> {
    check_dim(n)?;
    if bases_len == 0 || bases_len % (n * n) != 0 {
        return Err(Error::invalid(format!(
            "per-channel bases need a positive multiple of {} values, got {bases_len}",
            n * n
        )));
    }
    let channels = bases_len / (n * n);
    let blocks = check_blocks(len, n, what)?;
    if blocks % channels != 0 {
        return Err(Error::invalid(format!(
            "{blocks} blocks cannot be split into {channels} equal channels"
        )));
    }
    Ok((blocks / channels * n, channels))
}

fn prepare_all(bases: &[f32], n: usize, bits: u32) -> Result<Vec<Prepared>> {
    bases
        .chunks_exact(n * n)
        .enumerate()
        .map(|(c, b)| {
            Prepared::new(b, n, bits).map_err(|e| match e {
                Error::InvalidArgument(m) => Error::invalid(format!("channel {c}: {m}")),
                other => other,
            })
        })
        .collect()
}

/// Per-channel [`babai`]: `bases` holds one `n × n` basis per channel (`channels·n²` values)
/// and `blocks` is viewed as `(channels, blocks_per_channel, n)`.
///
/// Errors: as in [`babai`], plus a block count not divisible by the channel count.
pub fn babai_per_channel<T: Real>(
    blocks: &[T],
    n: usize,
    bases: &[f32],
    bits: u32,
) -> Result<Vec<i32>> {
    let (len, _) = channel_split(blocks.len(), bases.len(), n, "blocks")?;
    let preps = prepare_all(bases, n, bits)?;
    check_finite(blocks, "")?;
    let mut codes = vec![0i32; blocks.len()];
    if len > 0 {
        crate::parallel::install(|| {
            codes
                .par_chunks_mut(len)
                .zip(blocks.par_chunks(len).zip(preps.par_iter()))
                .for_each(|(c, (b, p))| quantize_prepared(b, p, c));
        });
    }
    Ok(codes)
}

/// Per-channel [`dequantize`]: `codes` viewed as `(channels, blocks_per_channel, n)`.
///
/// Errors: as in [`dequantize`], plus a block count not divisible by the channel count.
pub fn dequantize_per_channel<T: Real>(codes: &[i32], n: usize, bases: &[f32]) -> Result<Vec<T>> {
    let (len, _) = channel_split(codes.len(), bases.len(), n, "codes")?;
    let preps = prepare_all(bases, n, 1)?;
    let mut out = vec![T::from_f64(0.0); codes.len()];
    if len > 0 {
        crate::parallel::install(|| {
            out.par_chunks_mut(len)
                .zip(codes.par_chunks(len).zip(preps.par_iter()))
                .for_each(|(o, (c, p))| dequantize_prepared(c, p, o));
        });
    }
    Ok(out)
}

/// Map lattice codes to non-negative `u8` symbols `c + 2^(bits−1)` for entropy coders
/// (`bits ≤ 8`).
///
/// Errors: `bits` outside `1..=8`, or a code outside `[−2^(bits−1), 2^(bits−1) − 1]`.
///
/// ```
/// use deltackpt::quant::lattice;
/// let s = lattice::to_symbols(&[-8, 0, 7], 4).unwrap();
/// assert_eq!(s, [0, 8, 15]);
/// assert_eq!(lattice::from_symbols(&s, 4).unwrap(), [-8, 0, 7]);
/// ```
pub fn to_symbols(codes: &[i32], bits: u32) -> Result<Vec<u8>> {
    let half = symbol_half(bits)?;
    if let Some(i) = codes.iter().position(|&c| c < -half || c >= half) {
        return Err(Error::invalid(format!(
            "code {} at index {i} is outside [{}, {}]",
            codes[i],
            -half,
            half - 1
        )));
    }
    Ok(codes.iter().map(|&c| (c + half) as u8).collect())
}

/// Inverse of [`to_symbols`]: `c = s − 2^(bits−1)`.
///
/// Errors: `bits` outside `1..=8`, or a symbol `≥ 2^bits`.
pub fn from_symbols(symbols: &[u8], bits: u32) -> Result<Vec<i32>> {
    let half = symbol_half(bits)?;
    if let Some(i) = symbols.iter().position(|&s| s as i32 >= 2 * half) {
        return Err(Error::invalid(format!(
            "symbol {} at index {i} does not fit in {bits} bits",
            symbols[i]
        )));
    }
    Ok(symbols.iter().map(|&s| s as i32 - half).collect())
}

fn symbol_half(bits: u32) -> Result<i32> {
    if !(1..=8).contains(&bits) {
        return Err(Error::invalid(format!(
            "u8 symbols need 1 ≤ bits ≤ 8, got {bits}"
        )));
    }
    Ok(1 << (bits - 1))
}

/// SplitMix64: a tiny, fast, seedable generator (enough for search noise; fixed forever so
/// that results stay reproducible across versions of other crates).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A pair of independent standard normal samples (Box–Muller).
    fn gaussian_pair(&mut self) -> (f64, f64) {
        let u1 = ((self.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64); // (0, 1]
        let u2 = (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        let rad = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
        (rad * c, rad * s)
    }
}

/// The blocks candidates are scored on: all of them, or `sample` blocks at indices
/// `⌊i·N/sample⌋`.
fn subsample<T: Real>(blocks: &[T], n: usize, sample: usize) -> Vec<f64> {
    let total = blocks.len() / n;
    if sample == 0 || total <= sample {
        return blocks.iter().map(|v| v.to_f64()).collect();
    }
    let mut out = Vec::with_capacity(sample * n);
    for i in 0..sample {
        let b = (i as u128 * total as u128 / sample as u128) as usize;
        out.extend(blocks[b * n..(b + 1) * n].iter().map(|v| v.to_f64()));
    }
    out
}

fn scaled_identity(n: usize, lambda: f32) -> Vec<f32> {
    let mut b = vec![0.0f32; n * n];
    for j in 0..n {
        b[j * n + j] = lambda;
    }
    b
}

/// The search on prepared `f64` sample blocks (runs in the caller's rayon pool). Returns the
/// searched basis and the best scaled identity it started from.
fn search(sample: &[f64], n: usize, bits: u32, opts: &FindBasisOptions) -> (Vec<f32>, Vec<f32>) {
    let amax = sample.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    if sample.is_empty() || amax == 0.0 {
        return (scaled_identity(n, 1.0), scaled_identity(n, 1.0));
    }
    let eval = |basis: &[f32]| -> Option<f64> {
        let p = Prepared::new(basis, n, bits).ok()?;
        let e = error_prepared(sample, &p, opts.loss);
        e.is_finite().then_some(e)
    };
    let mut best: Option<(f64, Vec<f32>)> = None;
    let consider = |basis: Vec<f32>, best: &mut Option<(f64, Vec<f32>)>| -> f64 {
        match eval(&basis) {
            Some(e) => {
                if best.as_ref().is_none_or(|(be, _)| e < *be) {
                    *best = Some((e, basis));
                }
                e
            }
            None => f64::INFINITY,
        }
    };

    // 1. Best cubic lattice λI: log-spaced grid, then golden-section search around the best
    //    grid point (in log2 λ).
    let l0 = amax / 2f64.powi(bits as i32 - 1);
    let lam = |t: f64| (l0 * t.exp2()) as f32;
    let grid: Vec<f64> = (0..=40).map(|k| k as f64 / 4.0 - 8.0).collect();
    let mut best_t = grid[0];
    let mut best_e = f64::INFINITY;
    for &t in &grid {
        let e = consider(scaled_identity(n, lam(t)), &mut best);
        if e < best_e {
            best_e = e;
            best_t = t;
        }
    }
    let (mut a, mut b) = (best_t - 0.25, best_t + 0.25);
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let mut x1 = b - g * (b - a);
    let mut x2 = a + g * (b - a);
    let mut e1 = consider(scaled_identity(n, lam(x1)), &mut best);
    let mut e2 = consider(scaled_identity(n, lam(x2)), &mut best);
    for _ in 0..14 {
        if e1 <= e2 {
            b = x2;
            x2 = x1;
            e2 = e1;
            x1 = b - g * (b - a);
            e1 = consider(scaled_identity(n, lam(x1)), &mut best);
        } else {
            a = x1;
            x1 = x2;
            e1 = e2;
            x2 = a + g * (b - a);
            e2 = consider(scaled_identity(n, lam(x2)), &mut best);
        }
    }
    let Some((mut best_err, mut basis)) = best else {
        return (scaled_identity(n, 1.0), scaled_identity(n, 1.0));
    };
    let cubic = basis.clone();
    // The best scaled identity: its step sets the scale of the perturbations.
    let step = basis[0] as f64;

    // 2. Random perturbations with a geometric temperature schedule; keep improvements only.
    let mut rng = SplitMix64(opts.seed);
    let (t0, t1) = (opts.t_start.abs(), opts.t_end.abs());
    let mut cand = vec![0.0f32; n * n];
    for s in 0..opts.iters {
        let frac = if opts.iters > 1 {
            s as f64 / (opts.iters - 1) as f64
        } else {
            0.0
        };
        let temp = if t0 > 0.0 && t1 > 0.0 {
            step * t0 * (t1 / t0).powf(frac)
        } else {
            step * (t0 + (t1 - t0) * frac)
        };
        for (i, c) in cand.iter_mut().enumerate() {
            let (z, _) = rng.gaussian_pair();
            *c = (basis[i] as f64 + temp * z) as f32;
        }
        if let Some(e) = eval(&cand) {
            if e < best_err {
                best_err = e;
                basis.copy_from_slice(&cand);
            }
        }
    }
    (basis, cubic)
}

/// Search on the subsample of `blocks`; when the subsample is not all of the blocks, keep the
/// searched basis only if it also beats its starting `λI` on all blocks (so that overfitting
/// the subsample can never make the result worse than the cubic lattice).
fn search_blocks<T: Real>(blocks: &[T], n: usize, bits: u32, opts: &FindBasisOptions) -> Vec<f32> {
    let (found, cubic) = search(&subsample(blocks, n, opts.sample_blocks), n, bits, opts);
    let total = blocks.len() / n;
    if found == cubic || opts.sample_blocks == 0 || total <= opts.sample_blocks {
        return found;
    }
    let full = |b: &[f32]| {
        Prepared::new(b, n, bits)
            .map(|p| error_prepared(blocks, &p, opts.loss))
            .unwrap_or(f64::INFINITY)
    };
    if full(&found) < full(&cubic) {
        found
    } else {
        cubic
    }
}

fn check_options(opts: &FindBasisOptions) -> Result<()> {
    if !(opts.t_start.is_finite() && opts.t_end.is_finite()) {
        return Err(Error::invalid("find_basis temperatures must be finite"));
    }
    Ok(())
}

/// Search a basis for `blocks` (`(N, n)` row-major) at `bits` bits (thesis algorithm 4).
///
/// 1. The best cubic lattice `λI` is found by a log-spaced grid over `λ` (from `2^-8` to `4`
///    times `max|x|/2^(bits−1)`, quarter-octave steps) refined by a golden-section search.
/// 2. `iters` times, Gaussian noise of standard deviation `T(s)·λ` is added to every entry of
///    the current basis (`T` geometric from `t_start` to `t_end`); the candidate replaces the
///    current basis when its error ([`FindBasisOptions::loss`]) is strictly lower.
///
/// Candidates are scored on a deterministic subsample of at most `sample_blocks` blocks; when
/// that is not all blocks, the searched basis is kept only if its error on all blocks is also
/// below that of its starting `λI`. So the result's [`error`] is never above that of the `λI`
/// that `iters = 0` returns. The result depends only on the data, `n`, `bits` and the
/// options, not on the thread count. Empty or all-zero input gives the identity.
///
/// Cost: about `60 + iters` error evaluations on at most `sample_blocks` blocks (plus two on
/// all blocks); with the defaults, a 1M-weight layer (`n = 3`) takes well under a second.
///
/// Errors: `n` outside `1..=9`, `bits` outside `1..=16`, length not a multiple of `n`,
/// non-finite temperatures ([`Error::InvalidArgument`]); NaN/Inf in `blocks`
/// ([`Error::NonFinite`]).
///
/// ```
/// use deltackpt::quant::lattice::{self, FindBasisOptions, Loss};
/// // correlated pairs: (z + e1, z + e2) with small e
/// let blocks: Vec<f32> = (0..2000)
///     .flat_map(|i| {
///         let z = ((i * 37 % 101) as f32 - 50.0) / 25.0;
///         let e = ((i * 53 % 17) as f32 - 8.0) / 80.0;
///         [z + e, z - e]
///     })
///     .collect();
/// let opts = FindBasisOptions::default();
/// let cubic = lattice::find_basis(&blocks, 2, 3, &FindBasisOptions { iters: 0, ..opts.clone() }).unwrap();
/// let found = lattice::find_basis(&blocks, 2, 3, &opts).unwrap();
/// let e_cubic = lattice::error(&blocks, 2, &cubic, 3, Loss::Mce).unwrap();
/// let e_found = lattice::error(&blocks, 2, &found, 3, Loss::Mce).unwrap();
/// assert!(e_found < e_cubic);
/// ```
pub fn find_basis<T: Real>(
    blocks: &[T],
    n: usize,
    bits: u32,
    opts: &FindBasisOptions,
) -> Result<Vec<f32>> {
    check_dim(n)?;
    check_bits(bits)?;
    check_options(opts)?;
    check_blocks(blocks.len(), n, "blocks")?;
    check_finite(blocks, "")?;
    Ok(crate::parallel::install(|| {
        search_blocks(blocks, n, bits, opts)
    }))
}

/// Seed of channel `c`: the caller's seed mixed with the channel index.
fn channel_seed(seed: u64, c: usize) -> u64 {
    SplitMix64(seed ^ (c as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)).next_u64()
}

/// Per-channel [`find_basis`]: `blocks` viewed as `(channels, blocks_per_channel, n)`; returns
/// `channels` bases (`channels·n²` values). Channel `c` uses a seed derived from
/// `(opts.seed, c)`; channels are searched in parallel.
///
/// Errors: as in [`find_basis`], plus `channels == 0` or not dividing the block count.
pub fn find_basis_per_channel<T: Real>(
    blocks: &[T],
    n: usize,
    channels: usize,
    bits: u32,
    opts: &FindBasisOptions,
) -> Result<Vec<f32>> {
    check_dim(n)?;
    check_bits(bits)?;
    check_options(opts)?;
    if channels == 0 {
        return Err(Error::invalid("channels must be ≥ 1"));
    }
    let nb = check_blocks(blocks.len(), n, "blocks")?;
    if nb % channels != 0 {
        return Err(Error::invalid(format!(
            "{nb} blocks cannot be split into {channels} equal channels"
        )));
    }
    check_finite(blocks, "")?;
    let len = nb / channels * n;
    let bases: Vec<Vec<f32>> = crate::parallel::install(|| {
        (0..channels)
            .into_par_iter()
            .map(|c| {
                let o = FindBasisOptions {
                    seed: channel_seed(opts.seed, c),
                    ..opts.clone()
                };
                search_blocks(&blocks[c * len..(c + 1) * len], n, bits, &o)
            })
            .collect()
    });
    Ok(bases.concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaussian_blocks(count: usize, n: usize, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64(seed);
        (0..count * n)
            .map(|_| rng.gaussian_pair().0 as f32)
            .collect()
    }

    #[test]
    fn gram_schmidt_orthogonal_and_rejects_bad_bases() {
        let basis = [1.0f32, 2.0, 0.5, -1.0, 0.3, 2.0, 0.7, 0.1, -1.5];
        let gs = gram_schmidt(&basis, 3).unwrap();
        for i in 0..3 {
            for j in 0..i {
                let d = dot(&gs[i * 3..i * 3 + 3], &gs[j * 3..j * 3 + 3]);
                assert!(d.abs() < 1e-12, "{i} {j} {d}");
            }
        }
        assert_eq!(&gs[..3], &[1.0, 2.0, 0.5]);
        assert!(matches!(
            gram_schmidt(&[1.0, f32::NAN, 0.0, 1.0], 2),
            Err(Error::InvalidArgument(_))
        ));
        assert!(gram_schmidt(&[0.0; 4], 2).is_err());
        assert!(gram_schmidt(&[1.0, 1.0, 1.0, 1.0 + 1e-7], 2).is_err());
        assert!(gram_schmidt(&[1.0; 3], 2).is_err());
        assert!(gram_schmidt(&[1.0; 100], 10).is_err());
        assert!(babai(&[0.0f32; 2], 2, &[1.0, 2.0, 2.0, 4.0], 4).is_err());
    }

    #[test]
    fn babai_matches_literal_algorithm_2() {
        // A direct transcription of algorithm 2 (vectors, no precomputation).
        let basis = [0.9f32, 0.2, -0.1, 0.3, 1.1, 0.4, -0.2, 0.5, 0.8];
        let gs = gram_schmidt(&basis, 3).unwrap();
        let blocks = gaussian_blocks(500, 3, 7);
        let codes = babai(&blocks, 3, &basis, 3).unwrap();
        for (t, c) in blocks.chunks(3).zip(codes.chunks(3)) {
            let mut r: Vec<f64> = t.iter().map(|&v| v as f64).collect();
            for j in (0..3).rev() {
                let g = &gs[j * 3..j * 3 + 3];
                let u = (dot(&r, g) / dot(g, g)).clamp(-4.0, 3.0);
                let cj = u.round_ties_even();
                assert_eq!(cj, c[j] as f64);
                for k in 0..3 {
                    r[k] -= cj * basis[j * 3 + k] as f64;
                }
            }
        }
    }

    #[test]
    fn babai_bound_helper() {
        let p = Prepared::new(&[2.0, 0.0, 1.0, 1.0], 2, 4).unwrap();
        assert_eq!(p.babai_bound(), (4.0 + 1.0) / 4.0);
    }

    #[test]
    fn find_basis_same_in_pools_of_any_size() {
        // Correlated data, evaluated with a subsample smaller than the data.
        let mut rng = SplitMix64(99);
        let blocks: Vec<f32> = (0..20_000)
            .flat_map(|_| {
                let z = rng.gaussian_pair().0;
                let (a, b) = rng.gaussian_pair();
                [z + 0.1 * a, z - 0.1 * b, 0.5 * z + 0.2 * a]
            })
            .map(|v| v as f32)
            .collect();
        let opts = FindBasisOptions {
            iters: 60,
            seed: 5,
            sample_blocks: 9000,
            ..Default::default()
        };
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| search_blocks(&blocks, 3, 4, &opts))
        };
        let one = run(1);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for threads in [2, 3, 4] {
            assert_eq!(bits(&run(threads)), bits(&one), "{threads} threads");
        }
        // The public entry point (crate pool) agrees too.
        assert_eq!(bits(&find_basis(&blocks, 3, 4, &opts).unwrap()), bits(&one));
        // A different seed explores differently.
        let other = find_basis(
            &blocks,
            3,
            4,
            &FindBasisOptions {
                seed: 6,
                ..opts.clone()
            },
        );
        assert_ne!(bits(&other.unwrap()), bits(&one));
    }

    #[test]
    fn loss_parses() {
        assert_eq!("MCE".parse::<Loss>().unwrap(), Loss::Mce);
        assert_eq!("mse".parse::<Loss>().unwrap(), Loss::Mse);
        assert!("mae".parse::<Loss>().is_err());
    }

    #[test]
    fn subsample_is_strided_and_complete_when_small() {
        let x: Vec<f32> = (0..30).map(|v| v as f32).collect();
        assert_eq!(subsample(&x, 3, 0).len(), 30);
        assert_eq!(subsample(&x, 3, 10).len(), 30);
        let s = subsample(&x, 3, 4);
        assert_eq!(
            s,
            [0.0, 1.0, 2.0, 6.0, 7.0, 8.0, 15.0, 16.0, 17.0, 21.0, 22.0, 23.0]
        );
    }

    #[test]
    fn find_basis_trivial_inputs() {
        let o = FindBasisOptions::default();
        assert_eq!(
            find_basis::<f32>(&[], 2, 4, &o).unwrap(),
            [1.0, 0.0, 0.0, 1.0]
        );
        assert_eq!(
            find_basis(&[0.0f64; 6], 3, 4, &o).unwrap(),
            scaled_identity(3, 1.0)
        );
        assert!(matches!(
            find_basis(&[1.0f32, f32::INFINITY], 2, 4, &o),
            Err(Error::NonFinite { .. })
        ));
        assert!(find_basis(&[1.0f32; 3], 2, 4, &o).is_err());
        assert!(find_basis(&[1.0f32; 20], 10, 4, &o).is_err());
        assert!(find_basis(&[1.0f32; 2], 2, 17, &o).is_err());
        let bad = FindBasisOptions {
            t_end: f64::NAN,
            ..o
        };
        assert!(find_basis(&[1.0f32; 2], 2, 4, &bad).is_err());
    }
}
