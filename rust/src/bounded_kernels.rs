//! The per-chunk loops of the error-bounded quantizer: a chunk's elements are converted to
//! lanes of the working precision `W`, levels and reconstructions are computed lane by lane
//! (loops the compiler vectorizes), the rare elements that miss their bound are fixed up
//! afterwards (the neighbouring level, or an escape), and tokens come last. Decoding mirrors
//! it: tokens → levels → reconstruction. A level of 0 reconstructs the reference bit for bit
//! (`y = r`), on both sides.
//!
//! Every loop exists once, generic over the dtype ([`Elem`]); [`crate::entropy::simd`]'s switch
//! selects between a copy compiled for AVX2 and the baseline one at run time. Only IEEE
//! operations without fused multiply-adds appear, so both give the same bits.

use std::cell::Cell;
use std::thread::LocalKey;

use crate::entropy::bitio::{BitReader, BitWriter};
use crate::entropy::levels::{self, Level, Tokens};
use crate::error::{Error, Result};
use crate::quant::bounded::{self as q, GridFloat};

/// Declare a lane loop twice: `$name` runs the copy compiled for AVX2 when [`use_avx2`], else
/// the baseline copy of the same body (`#[inline(always)]` into both). Only IEEE operations
/// without fused multiply-adds appear in the bodies, so both give the same bits.
macro_rules! lane_loop {
    ($(#[$doc:meta])* fn $name:ident / $avx:ident / $body:ident <$E:ident: Elem>
        ($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $code:block) => {
        #[inline(always)]
        #[allow(clippy::too_many_arguments)]
        fn $body<$E: Elem>($($arg: $ty),*) $(-> $ret)? $code

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $avx<$E: Elem>($($arg: $ty),*) $(-> $ret)? {
            $body::<$E>($($arg),*)
        }

        $(#[$doc])*
        #[allow(clippy::too_many_arguments)]
        fn $name<$E: Elem>($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            if use_avx2() {
                // SAFETY: the CPU supports AVX2 (checked by `use_avx2`).
                return unsafe { $avx::<$E>($($arg),*) };
            }
            $body::<$E>($($arg),*)
        }
    };
}

/// One element of a dtype, as the bounded quantizer sees it.
pub(crate) trait Elem: Send + Sync + 'static {
    /// Working precision.
    type W: GridFloat + Default + LaneScratch;
    /// Bytes per element.
    const SIZE: usize;
    /// Largest finite magnitude key.
    const MAX_KEY: i64;
    /// Mantissa bits.
    const MANTISSA: u32;
    /// The element at the start of `b`, in `W` (exact).
    fn load(b: &[u8]) -> Self::W;
    /// `w` rounded to the dtype, written to `out`.
    fn store(w: Self::W, out: &mut [u8]);
    /// `w` rounded to the dtype, back in `W` (the value `store` writes).
    fn round(w: Self::W) -> Self::W;
    /// The element's raw bits.
    fn bits(b: &[u8]) -> u64;
    /// Write raw bits.
    fn put_bits(v: u64, out: &mut [u8]);
    /// Sign-magnitude bit pattern as a monotone integer.
    #[inline(always)]
    fn key(b: &[u8]) -> i64 {
        let sign = 1u64 << (Self::SIZE * 8 - 1);
        let bits = Self::bits(b);
        let mag = (bits & (sign - 1)) as i64;
        if bits & sign != 0 {
            -mag
        } else {
            mag
        }
    }
    /// Inverse of [`Elem::key`] (−0 becomes +0).
    #[inline(always)]
    fn put_key(k: i64, out: &mut [u8]) {
        let sign = 1u64 << (Self::SIZE * 8 - 1);
        Self::put_bits(
            if k < 0 {
                k.unsigned_abs() | sign
            } else {
                k as u64
            },
            out,
        );
    }
    /// All elements of `bytes` into `out` (exact).
    #[inline(always)]
    fn load_all(bytes: &[u8], out: &mut [Self::W]) {
        for (o, c) in out.iter_mut().zip(bytes.chunks_exact(Self::SIZE)) {
            *o = Self::load(c);
        }
    }
    /// All of `values` into `out` (each already rounded to the dtype).
    #[inline(always)]
    fn store_all(values: &[Self::W], out: &mut [u8]) {
        for (c, &v) in out.chunks_exact_mut(Self::SIZE).zip(values) {
            Self::store(v, c);
        }
    }
}

pub(crate) struct F32E;
pub(crate) struct F64E;
pub(crate) struct F16E;
pub(crate) struct Bf16E;

impl Elem for F32E {
    type W = f32;
    const SIZE: usize = 4;
    const MAX_KEY: i64 = 0x7f7f_ffff;
    const MANTISSA: u32 = 23;
    #[inline(always)]
    fn load(b: &[u8]) -> f32 {
        f32::from_le_bytes(b[..4].try_into().unwrap())
    }
    #[inline(always)]
    fn store(w: f32, out: &mut [u8]) {
        out[..4].copy_from_slice(&w.to_le_bytes());
    }
    #[inline(always)]
    fn round(w: f32) -> f32 {
        w
    }
    #[inline(always)]
    fn bits(b: &[u8]) -> u64 {
        u32::from_le_bytes(b[..4].try_into().unwrap()) as u64
    }
    #[inline(always)]
    fn put_bits(v: u64, out: &mut [u8]) {
        out[..4].copy_from_slice(&(v as u32).to_le_bytes());
    }
}

impl Elem for F64E {
    type W = f64;
    const SIZE: usize = 8;
    const MAX_KEY: i64 = 0x7fef_ffff_ffff_ffff;
    const MANTISSA: u32 = 52;
    #[inline(always)]
    fn load(b: &[u8]) -> f64 {
        f64::from_le_bytes(b[..8].try_into().unwrap())
    }
    #[inline(always)]
    fn store(w: f64, out: &mut [u8]) {
        out[..8].copy_from_slice(&w.to_le_bytes());
    }
    #[inline(always)]
    fn round(w: f64) -> f64 {
        w
    }
    #[inline(always)]
    fn bits(b: &[u8]) -> u64 {
        u64::from_le_bytes(b[..8].try_into().unwrap())
    }
    #[inline(always)]
    fn put_bits(v: u64, out: &mut [u8]) {
        out[..8].copy_from_slice(&v.to_le_bytes());
    }
}

#[inline(always)]
fn u16_of(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

impl Elem for F16E {
    type W = f32;
    const SIZE: usize = 2;
    const MAX_KEY: i64 = 0x7bff;
    const MANTISSA: u32 = 10;
    #[inline(always)]
    fn load(b: &[u8]) -> f32 {
        half::f16::from_bits(u16_of(b)).to_f32()
    }
    #[inline(always)]
    fn store(w: f32, out: &mut [u8]) {
        out[..2].copy_from_slice(&half::f16::from_f32(w).to_bits().to_le_bytes());
    }
    #[inline(always)]
    fn round(w: f32) -> f32 {
        half::f16::from_f32(w).to_f32()
    }
    #[inline(always)]
    fn bits(b: &[u8]) -> u64 {
        u16_of(b) as u64
    }
    #[inline(always)]
    fn put_bits(v: u64, out: &mut [u8]) {
        out[..2].copy_from_slice(&(v as u16).to_le_bytes());
    }
}

impl Elem for Bf16E {
    type W = f32;
    const SIZE: usize = 2;
    const MAX_KEY: i64 = 0x7f7f;
    const MANTISSA: u32 = 7;
    #[inline(always)]
    fn load(b: &[u8]) -> f32 {
        f32::from_bits((u16_of(b) as u32) << 16)
    }
    #[inline(always)]
    fn store(w: f32, out: &mut [u8]) {
        out[..2].copy_from_slice(&half::bf16::from_f32(w).to_bits().to_le_bytes());
    }
    #[inline(always)]
    fn round(w: f32) -> f32 {
        half::bf16::from_f32(w).to_f32()
    }
    #[inline(always)]
    fn bits(b: &[u8]) -> u64 {
        u16_of(b) as u64
    }
    #[inline(always)]
    fn put_bits(v: u64, out: &mut [u8]) {
        out[..2].copy_from_slice(&(v as u16).to_le_bytes());
    }
}

/// Per-thread scratch lanes of a working precision, reused across chunks.
pub(crate) trait LaneScratch: Copy + Default + 'static {
    /// This type's scratch slots (a chunk needs up to four lanes at once).
    fn slots() -> &'static LocalKey<[Cell<Vec<Self>>; 4]>;
}

thread_local! {
    static LANES_F32: [Cell<Vec<f32>>; 4] = const {
        [Cell::new(Vec::new()), Cell::new(Vec::new()), Cell::new(Vec::new()), Cell::new(Vec::new())]
    };
    static LANES_F64: [Cell<Vec<f64>>; 4] = const {
        [Cell::new(Vec::new()), Cell::new(Vec::new()), Cell::new(Vec::new()), Cell::new(Vec::new())]
    };
    static LANES_I32: Cell<Vec<i32>> = const { Cell::new(Vec::new()) };
    static LANES_U8: [Cell<Vec<u8>>; 3] = const {
        [Cell::new(Vec::new()), Cell::new(Vec::new()), Cell::new(Vec::new())]
    };
}

impl LaneScratch for f32 {
    fn slots() -> &'static LocalKey<[Cell<Vec<f32>>; 4]> {
        &LANES_F32
    }
}
impl LaneScratch for f64 {
    fn slots() -> &'static LocalKey<[Cell<Vec<f64>>; 4]> {
        &LANES_F64
    }
}

/// A lane of `n` default values, taken from this thread's slot `k` (or fresh when nested).
/// A lane of length `n` from a scratch vector. Its values are whatever a previous chunk left
/// (every user overwrites the whole lane before reading it), so only growth writes memory.
fn take<T: Copy + Default>(v: Vec<T>, n: usize) -> Vec<T> {
    let mut v = v;
    if v.len() < n {
        v.resize(n, T::default());
    }
    v.truncate(n);
    v
}

fn lane<T: LaneScratch>(k: usize, n: usize) -> Vec<T> {
    take(T::slots().with(|s| s[k].take()), n)
}

fn give<T: LaneScratch>(k: usize, v: Vec<T>) {
    T::slots().with(|s| s[k].set(v));
}

fn lane_i32(n: usize) -> Vec<i32> {
    take(LANES_I32.with(|c| c.take()), n)
}

fn lane_u8(k: usize, n: usize) -> Vec<u8> {
    take(LANES_U8.with(|s| s[k].take()), n)
}

/// The grid of a chunk: one step for every element, or one per element (`Moment`, `Each`),
/// and each element's tolerance (infinite for `Rel`).
#[derive(Clone, Copy)]
pub(crate) enum Grid<'a> {
    /// Step `step`, tolerance `tol` (∞ for a relative bound).
    Uniform { step: f64, tol: f64 },
    /// `Moment { t, eps }`: step `c (√|v| + eps)`, tolerance `t (√|v| + eps)`, from `v`.
    Moment {
        c: f64,
        t: f64,
        eps: f64,
        v: &'a [u8],
    },
    /// `Each`: step `c |s|`, tolerance `|s|`.
    Each { c: f64, s: &'a [u8] },
}

lane_loop! {
    /// How many elements of `b` are not finite (their magnitude bits above the largest
    /// finite one): a scan of raw bits, with no conversion.
    fn count_nonfinite / count_nonfinite_avx2 / count_nonfinite_body <E: Elem>(b: &[u8]) -> u64 {
        let mask = (1u64 << (E::SIZE * 8 - 1)) - 1;
        let max = E::MAX_KEY as u64;
        b.chunks_exact(E::SIZE).map(|c| ((E::bits(c) & mask) > max) as u64).sum()
    }
}

/// How many elements of `b` are not finite (NaN or ±∞).
pub(crate) fn nonfinite_count<E: Elem>(b: &[u8]) -> u64 {
    count_nonfinite::<E>(b)
}

/// Running error sums of an encode.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Errors {
    pub max_abs: f64,
    pub sumsq_err: f64,
    pub sumsq_x: f64,
    pub max_rel: f64,
}

impl Errors {
    pub(crate) fn merge(mut self, o: Errors) -> Errors {
        self.max_abs = self.max_abs.max(o.max_abs);
        self.sumsq_err += o.sumsq_err;
        self.sumsq_x += o.sumsq_x;
        self.max_rel = self.max_rel.max(o.max_rel);
        self
    }
}

lane_loop! {
    /// Error sums of `y` against `x` (eight accumulators: the sums pipeline).
    fn error_sums / error_sums_avx2 / error_sums_body <E: Elem>(
        x: &[E::W], y: &[E::W], with_rel: bool,
    ) -> Errors {
        let (mut se, mut sx, mut mx) = ([0f64; 8], [0f64; 8], [0f64; 8]);
        let n8 = x.len() / 8 * 8;
        for (xs, ys) in x[..n8].chunks_exact(8).zip(y[..n8].chunks_exact(8)) {
            for k in 0..8 {
                let (a, b) = (xs[k].to_f64(), ys[k].to_f64());
                let e = (b - a).abs();
                se[k] += e * e;
                sx[k] += a * a;
                mx[k] = if e > mx[k] { e } else { mx[k] };
            }
        }
        for (a, b) in x[n8..].iter().zip(&y[n8..]) {
            let (a, b) = (a.to_f64(), b.to_f64());
            let e = (b - a).abs();
            se[0] += e * e;
            sx[0] += a * a;
            mx[0] = if e > mx[0] { e } else { mx[0] };
        }
        let mut mr = 0f64;
        if with_rel {
            for (a, b) in x.iter().zip(y) {
                let (a, b) = (a.to_f64(), b.to_f64());
                let e = (b - a).abs();
                if e > 0.0 {
                    mr = mr.max(e / a.abs());
                }
            }
        }
        Errors {
            max_abs: mx.iter().fold(0f64, |a, &b| a.max(b)),
            sumsq_err: se.iter().sum(),
            sumsq_x: sx.iter().sum(),
            max_rel: mr,
        }
    }
}

/// The per-element steps of a [`Grid`] into `steps` (a lane), or None for a uniform grid.
#[inline(always)]
fn fill_steps<E: Elem>(grid: &Grid<'_>, steps: &mut [E::W]) -> Option<E::W> {
    match *grid {
        Grid::Uniform { step, .. } => return Some(E::W::from_f64(step)),
        Grid::Moment { c, eps, v, .. } => {
            let (c, eps) = (E::W::from_f64(c), E::W::from_f64(eps));
            for (s, b) in steps.iter_mut().zip(v.chunks_exact(E::SIZE)) {
                *s = E::load(b).root_plus(eps).times(c);
            }
        }
        Grid::Each { c, s } => {
            let c = E::W::from_f64(c);
            for (st, b) in steps.iter_mut().zip(s.chunks_exact(E::SIZE)) {
                *st = E::load(b).magnitude().times(c);
            }
        }
    }
    None
}

/// The tolerance of element `i` (f64; ∞ for a relative bound).
#[inline(always)]
fn tol_at<E: Elem>(grid: &Grid<'_>, i: usize) -> f64 {
    match *grid {
        Grid::Uniform { tol, .. } => tol,
        Grid::Moment { t, eps, v, .. } => {
            t * (E::load(&v[i * E::SIZE..]).to_f64().abs().sqrt() + eps)
        }
        Grid::Each { s, .. } => E::load(&s[i * E::SIZE..]).to_f64().abs(),
    }
}

/// The reconstruction of level `q` on reference `r` with step `step` (`q = 0`: `r` itself).
#[inline(always)]
fn recon<E: Elem>(r: E::W, q: i32, step: E::W) -> E::W {
    if q == 0 {
        r
    } else {
        E::round(q::grid_value(r, q as i64, step))
    }
}

/// `|d|/Δ + θ` clamped to `[0, MAX_LEVEL]` (finite, non-NaN) truncated: the level's magnitude.
#[inline(always)]
fn magnitude_of(v: f64) -> i32 {
    let v = if v < q::MAX_LEVEL as f64 {
        v
    } else {
        q::MAX_LEVEL as f64
    };
    // SAFETY: 0 <= v <= MAX_LEVEL < 2^31 and v is not NaN (callers pass |d|·inv + θ with d
    // and inv finite), so the truncation is in range.
    unsafe { v.to_int_unchecked::<i32>() }
}

lane_loop! {
    /// Levels and reconstructions of a chunk on a uniform grid `s` (`inv` = 1/s); `bad[i]`
    /// marks elements that miss `tol` or whose reconstruction is not finite.
    fn uniform_levels / uniform_levels_avx2 / uniform_levels_body <E: Elem>(
        x: &[E::W], r: &[E::W], s: E::W, inv: f64, theta: f64, tol: f64,
        q: &mut [i32], y: &mut [E::W], bad: &mut [u8],
    ) {
        let n = x.len();
        let (r, q, y, bad) = (&r[..n], &mut q[..n], &mut y[..n], &mut bad[..n]);
        for i in 0..n {
            let (xv, rv) = (x[i].to_f64(), r[i].to_f64());
            let d = xv - rv;
            let m = magnitude_of(d.abs() * inv + theta);
            let qi = if d < 0.0 { -m } else { m };
            let yi = recon::<E>(r[i], qi, s);
            q[i] = qi;
            y[i] = yi;
            bad[i] = misses(yi.to_f64(), xv, tol) as u8;
        }
    }
}

/// Levels and reconstructions of a chunk on a grid; `bad[i]` marks elements that miss their
/// tolerance or whose reconstruction is not finite (fixed up by [`fixup`]).
#[allow(clippy::too_many_arguments)]
fn grid_levels<E: Elem>(
    x: &[E::W],
    r: &[E::W],
    steps: &[E::W],
    uniform: Option<E::W>,
    grid: &Grid<'_>,
    theta: f64,
    q: &mut [i32],
    y: &mut [E::W],
    bad: &mut [u8],
) {
    if let (Some(s), Grid::Uniform { tol, .. }) = (uniform, grid) {
        let inv = 1.0 / s.to_f64();
        if inv.is_finite() {
            return uniform_levels::<E>(x, r, s, inv, theta, *tol, q, y, bad);
        }
    }
    let maxl = q::MAX_LEVEL as f64;
    for i in 0..x.len() {
        let (xv, rv) = (x[i].to_f64(), r[i].to_f64());
        let s = uniform.unwrap_or_else(|| steps[i]);
        let d = xv - rv;
        let m = (d.abs() / s.to_f64() + theta).min(maxl);
        let m = if m.is_nan() { 0 } else { m as i32 };
        let qi = if d < 0.0 { -m } else { m };
        let yi = recon::<E>(r[i], qi, s);
        q[i] = qi;
        y[i] = yi;
        bad[i] = misses(yi.to_f64(), xv, tol_at::<E>(grid, i)) as u8;
    }
}

/// A reconstruction `y` of `x` that is not finite or not within `tol` (NaN-safe).
#[inline(always)]
fn misses(y: f64, x: f64, tol: f64) -> bool {
    let e = (y - x).abs();
    e > tol || e.is_nan() || y.is_infinite()
}

/// Escape marker in a level lane.
const ESC: i32 = i32::MIN;

/// Elements that missed their bound: the neighbouring level on the other side if it keeps
/// the bound, else an escape (the exact value).
#[allow(clippy::too_many_arguments)]
fn fixup<E: Elem>(
    x: &[E::W],
    r: &[E::W],
    steps: &[E::W],
    uniform: Option<E::W>,
    grid: &Grid<'_>,
    q: &mut [i32],
    y: &mut [E::W],
    bad: &[u8],
) {
    for i in (0..x.len()).filter(|&i| bad[i] != 0) {
        let s = uniform.unwrap_or_else(|| steps[i]);
        let xv = x[i].to_f64();
        let tol = tol_at::<E>(grid, i);
        let q2 = if y[i].to_f64() < xv {
            q[i] + 1
        } else {
            q[i] - 1
        };
        let y2 = recon::<E>(r[i], q2, s);
        // A relative bound (no per-element tolerance) was planned with such elements exact.
        let keeps = tol.is_finite() && (q2 as i64).abs() <= q::MAX_LEVEL;
        if keeps && !misses(y2.to_f64(), xv, tol) {
            q[i] = q2;
            y[i] = y2;
        } else {
            q[i] = ESC;
            y[i] = x[i];
        }
    }
}

/// Tokens and extra bits of a level lane (`ESC`: the exact bits of `x_bytes`' element), in
/// this thread's scratch buffers (hand them back with [`recycle`]).
fn tokens_of<E: Elem>(q: &[i32], x_bytes: &[u8], tk: Tokens) -> (Vec<u8>, Vec<u8>) {
    let mut tokens = LANES_U8.with(|s| s[1].take());
    let mut extra = LANES_U8.with(|s| s[2].take());
    tokens.clear();
    extra.clear();
    tokens.reserve(q.len());
    let mut w = BitWriter::new(&mut extra, q.len() / 8);
    for (i, &qi) in q.iter().enumerate() {
        let z = levels::zigzag(qi as i64);
        tokens.push(if z < tk.direct() {
            z as u8
        } else if qi == ESC {
            let b = E::bits(&x_bytes[i * E::SIZE..]);
            tk.write_escape(b, E::SIZE as u32 * 8, &mut w)
        } else {
            tk.write_level(qi as i64, &mut w)
        });
    }
    w.finish();
    (tokens, extra)
}

/// Give a chunk's token and extra-bit buffers back to this thread once they are coded.
pub(crate) fn recycle(tokens: Vec<u8>, extra: Vec<u8>) {
    LANES_U8.with(|s| {
        s[1].set(tokens);
        s[2].set(extra);
    });
}

/// The output of one encoded chunk.
pub(crate) struct ChunkCode {
    /// One token per element.
    pub tokens: Vec<u8>,
    /// Their extra bits.
    pub extra: Vec<u8>,
    /// The errors of the reconstruction.
    pub errors: Errors,
}

/// Where a chunk's reference comes from.
#[derive(Clone, Copy)]
pub(crate) enum RefSrc<'a> {
    /// No reference (0).
    Zero,
    /// A reference chunk.
    Slice(&'a [u8]),
    /// The output chunk holds the reference (an in-place update).
    Out,
}

fn load_ref<E: Elem>(r: RefSrc<'_>, out: Option<&[u8]>, lane: &mut [E::W]) {
    match (r, out) {
        (RefSrc::Slice(s), _) => E::load_all(s, lane),
        (RefSrc::Out, Some(o)) => E::load_all(o, lane),
        _ => lane.fill(E::W::ZERO),
    }
}

/// Encode one chunk on a grid: tokens, extra bits, errors; the reconstruction into `out`.
pub(crate) fn encode_grid_chunk<E: Elem>(
    x_bytes: &[u8],
    r: RefSrc<'_>,
    grid: &Grid<'_>,
    theta: f64,
    tk: Tokens,
    out: Option<&mut [u8]>,
) -> ChunkCode {
    let n = x_bytes.len() / E::SIZE;
    let (mut x, mut rr, mut y, mut steps) = (
        lane::<E::W>(0, n),
        lane::<E::W>(1, n),
        lane::<E::W>(2, n),
        lane::<E::W>(3, n),
    );
    let (mut q, mut bad) = (lane_i32(n), lane_u8(0, n));
    E::load_all(x_bytes, &mut x);
    load_ref::<E>(r, out.as_deref(), &mut rr);
    let uniform = fill_steps::<E>(grid, &mut steps);
    grid_levels::<E>(
        &x, &rr, &steps, uniform, grid, theta, &mut q, &mut y, &mut bad,
    );
    if bad.contains(&1) {
        fixup::<E>(&x, &rr, &steps, uniform, grid, &mut q, &mut y, &bad);
    }
    let errors = error_sums::<E>(&x, &y, false);
    let (tokens, extra) = tokens_of::<E>(&q, x_bytes, tk);
    if let Some(o) = out {
        E::store_all(&y, o);
    }
    give::<E::W>(0, x);
    give::<E::W>(1, rr);
    give::<E::W>(2, y);
    give::<E::W>(3, steps);
    LANES_I32.with(|c| c.set(q));
    LANES_U8.with(|s| s[0].set(bad));
    ChunkCode {
        tokens,
        extra,
        errors,
    }
}

/// Encode one chunk in the key domain (pointwise bounds, key step `k`).
pub(crate) fn encode_key_chunk<E: Elem>(
    x_bytes: &[u8],
    r: RefSrc<'_>,
    k: u64,
    rho: f64,
    tk: Tokens,
    mut out: Option<&mut [u8]>,
) -> ChunkCode {
    let n = x_bytes.len() / E::SIZE;
    let mut q = lane_i32(n);
    let (mut xs, mut ys) = (lane::<E::W>(0, n), lane::<E::W>(1, n));
    let mut yb = [0u8; 8];
    for i in 0..n {
        let at = i * E::SIZE;
        let xb = &x_bytes[at..at + E::SIZE];
        let kr = match (r, out.as_deref()) {
            (RefSrc::Slice(s), _) => E::key(&s[at..]),
            (RefSrc::Out, Some(o)) => E::key(&o[at..]),
            _ => 0,
        };
        xs[i] = E::load(xb);
        let xv = xs[i].to_f64();
        let level = q::key_level(E::key(xb), kr, k).filter(|&qi| {
            E::put_key(q::key_value(kr, qi, k, E::MAX_KEY), &mut yb);
            (E::load(&yb).to_f64() - xv).abs() <= rho * xv.abs()
        });
        match level {
            Some(qi) => {
                q[i] = qi as i32;
                ys[i] = E::load(&yb);
            }
            None => {
                q[i] = ESC;
                ys[i] = xs[i];
                yb[..E::SIZE].copy_from_slice(xb);
            }
        }
        if let Some(o) = out.as_deref_mut() {
            o[at..at + E::SIZE].copy_from_slice(&yb[..E::SIZE]);
        }
    }
    let errors = error_sums::<E>(&xs, &ys, true);
    let (tokens, extra) = tokens_of::<E>(&q, x_bytes, tk);
    give::<E::W>(0, xs);
    give::<E::W>(1, ys);
    LANES_I32.with(|c| c.set(q));
    ChunkCode {
        tokens,
        extra,
        errors,
    }
}

/// The exact squared error of a chunk on a uniform grid `step` (a relative bound's check;
/// elements whose reconstruction is not finite are escapes, exact), and Σx². The same
/// arithmetic as [`encode_grid_chunk`]; eight accumulators so the sums pipeline.
pub(crate) fn grid_sq_error<E: Elem>(
    x_bytes: &[u8],
    r: Option<&[u8]>,
    step: f64,
    theta: f64,
) -> (f64, f64) {
    let n = x_bytes.len() / E::SIZE;
    let (mut x, mut rr) = (lane::<E::W>(0, n), lane::<E::W>(1, n));
    E::load_all(x_bytes, &mut x);
    load_ref::<E>(r.map_or(RefSrc::Zero, RefSrc::Slice), None, &mut rr);
    let sums = sq_error_sums::<E>(&x, &rr, step, theta);
    give::<E::W>(0, x);
    give::<E::W>(1, rr);
    sums
}

lane_loop! {
    /// Σ(y − x)² and Σx² of a relative bound's check (non-finite reconstructions: exact).
    fn sq_error_sums / sq_error_sums_avx2 / sq_error_sums_body <E: Elem>(
        x: &[E::W], r: &[E::W], step: f64, theta: f64,
    ) -> (f64, f64) {
        // The level from the working-precision step, as the encoder computes it.
        let sw = E::W::from_f64(step);
        let inv = 1.0 / sw.to_f64();
        let (mut se, mut sx) = ([0f64; 8], [0f64; 8]);
        let n8 = x.len() / 8 * 8;
        let one = |xi: E::W, ri: E::W| {
            let (xv, rv) = (xi.to_f64(), ri.to_f64());
            let d = xv - rv;
            let m = magnitude_of(d.abs() * inv + theta);
            let yv = recon::<E>(ri, if d < 0.0 { -m } else { m }, sw).to_f64();
            let e = if yv.is_finite() { yv - xv } else { 0.0 };
            (e * e, xv * xv)
        };
        for (xs, rs) in x[..n8].chunks_exact(8).zip(r[..n8].chunks_exact(8)) {
            for k in 0..8 {
                let (e2, x2) = one(xs[k], rs[k]);
                se[k] += e2;
                sx[k] += x2;
            }
        }
        for (&xi, &ri) in x[n8..].iter().zip(&r[n8..]) {
            let (e2, x2) = one(xi, ri);
            se[0] += e2;
            sx[0] += x2;
        }
        (se.iter().sum(), sx.iter().sum())
    }
}

/// Levels of a chunk's tokens (`ESC` for escapes, whose exact bits go to `escapes`).
fn levels_of<E: Elem>(
    tokens: &[u8],
    extra: &[u8],
    tk: Tokens,
    q: &mut [i32],
    escapes: &mut Vec<(usize, u64)>,
) -> Result<()> {
    let mut bits = BitReader::new(extra);
    let mut i = 0;
    while i < tokens.len() {
        // Blocks of direct tokens (nearly every element of a training delta) in one
        // branch-free loop the compiler vectorizes; a block with another token goes below.
        let end = (i + LEVEL_BLOCK).min(tokens.len());
        if direct_levels(&tokens[i..end], tk, &mut q[i..end]) {
            i = end;
            continue;
        }
        for (j, &t) in tokens.iter().enumerate().take(end).skip(i) {
            other_level::<E>(t, j, tk, &mut bits, q, escapes)?;
        }
        i = end;
    }
    if bits.overrun() {
        return Err(Error::corrupt("bounded extra bits truncated"));
    }
    Ok(())
}

/// Tokens [`levels_of`] checks at a time for the all-direct fast path.
const LEVEL_BLOCK: usize = 64;

/// `q = unzigzag(tokens)` when every token of the block is direct; `false` (and `q` untouched
/// in meaning: the caller rewrites it) otherwise.
#[inline(always)]
fn direct_levels(tokens: &[u8], tk: Tokens, q: &mut [i32]) -> bool {
    let max = tokens.iter().fold(0u8, |m, &t| m.max(t));
    if max as u64 >= tk.direct() {
        return false;
    }
    for (q, &t) in q.iter_mut().zip(tokens) {
        let t = t as i32;
        *q = (t >> 1) ^ -(t & 1);
    }
    true
}

/// The level of token `t` at element `i`, which may read extra bits or be an escape.
#[inline(always)]
fn other_level<E: Elem>(
    t: u8,
    i: usize,
    tk: Tokens,
    bits: &mut BitReader<'_>,
    q: &mut [i32],
    escapes: &mut Vec<(usize, u64)>,
) -> Result<()> {
    if (t as u64) < tk.direct() {
        q[i] = levels::unzigzag(t as u64) as i32;
        return Ok(());
    }
    match tk.read_level(t, bits) {
        Some(Level::Value(v)) => q[i] = v as i32,
        Some(Level::Escape) => {
            q[i] = ESC;
            escapes.push((i, levels::read_escape(E::SIZE as u32 * 8, bits)));
        }
        None => return Err(Error::corrupt(format!("unknown level token {t}"))),
    }
    Ok(())
}

/// Decode one grid chunk from its tokens into `out`.
pub(crate) fn decode_grid_chunk<E: Elem>(
    tokens: &[u8],
    extra: &[u8],
    tk: Tokens,
    r: RefSrc<'_>,
    grid: &Grid<'_>,
    out: &mut [u8],
) -> Result<()> {
    let n = tokens.len();
    let (mut rr, mut y, mut steps) = (lane::<E::W>(1, n), lane::<E::W>(2, n), lane::<E::W>(3, n));
    let mut q = lane_i32(n);
    let mut escapes = Vec::new();
    let done = levels_of::<E>(tokens, extra, tk, &mut q, &mut escapes);
    if done.is_ok() {
        let uniform = fill_steps::<E>(grid, &mut steps);
        if matches!(r, RefSrc::Out) {
            apply_in_place::<E>(&q, &steps, uniform, (&mut rr, &mut y), out);
        } else {
            load_ref::<E>(r, Some(out), &mut rr);
            apply_levels::<E>(&rr, &q, &steps, uniform, &mut y);
            E::store_all(&y, out);
        }
        for (i, raw) in &escapes {
            E::put_bits(*raw, &mut out[i * E::SIZE..]);
        }
    }
    give::<E::W>(1, rr);
    give::<E::W>(2, y);
    give::<E::W>(3, steps);
    LANES_I32.with(|c| c.set(q));
    done
}

/// Elements [`apply_in_place`] skips at a time when all their levels are 0.
const SKIP_BLOCK: usize = 256;

/// [`apply_levels`] on `out` in place, block by block, leaving alone the blocks whose levels
/// are all 0: their reconstruction is the reference itself ([`recon`]), and a load and store
/// of the dtype round-trips exactly, so the bytes are those of the whole-lane path.
fn apply_in_place<E: Elem>(
    q: &[i32],
    steps: &[E::W],
    uniform: Option<E::W>,
    (rr, y): (&mut [E::W], &mut [E::W]),
    out: &mut [u8],
) {
    for lo in (0..q.len()).step_by(SKIP_BLOCK) {
        let hi = (lo + SKIP_BLOCK).min(q.len());
        if q[lo..hi].iter().fold(0, |a, &v| a | v) == 0 {
            continue;
        }
        let bytes = &mut out[lo * E::SIZE..hi * E::SIZE];
        E::load_all(bytes, &mut rr[lo..hi]);
        apply_levels::<E>(
            &rr[lo..hi],
            &q[lo..hi],
            &steps[lo..hi],
            uniform,
            &mut y[lo..hi],
        );
        E::store_all(&y[lo..hi], bytes);
    }
}

lane_loop! {
    /// Reconstructions of levels `q` on references `r` (escapes are patched afterwards).
    fn apply_levels / apply_levels_avx2 / apply_levels_body <E: Elem>(
        r: &[E::W], q: &[i32], steps: &[E::W], uniform: Option<E::W>, y: &mut [E::W],
    ) {
        let n = r.len();
        let (q, y) = (&q[..n], &mut y[..n]);
        match uniform {
            Some(s) => {
                for i in 0..n {
                    y[i] = recon::<E>(r[i], q[i], s);
                }
            }
            None => {
                let steps = &steps[..n];
                for i in 0..n {
                    y[i] = recon::<E>(r[i], q[i], steps[i]);
                }
            }
        }
    }
}

/// Decode one key-domain chunk (pointwise bounds) into `out`.
pub(crate) fn decode_key_chunk<E: Elem>(
    tokens: &[u8],
    extra: &[u8],
    tk: Tokens,
    r: RefSrc<'_>,
    k: u64,
    out: &mut [u8],
) -> Result<()> {
    let mut q = lane_i32(tokens.len());
    let mut escapes = Vec::new();
    let done = levels_of::<E>(tokens, extra, tk, &mut q, &mut escapes);
    if done.is_ok() {
        let mut esc = escapes.iter().peekable();
        for (i, &qi) in q.iter().enumerate() {
            let at = i * E::SIZE;
            if qi == ESC {
                let &(_, raw) = esc.next().expect("an escape per ESC level");
                E::put_bits(raw, &mut out[at..]);
                continue;
            }
            let kr = match r {
                RefSrc::Slice(s) => E::key(&s[at..]),
                RefSrc::Out => E::key(&out[at..]),
                RefSrc::Zero => 0,
            };
            E::put_key(q::key_value(kr, qi as i64, k, E::MAX_KEY), &mut out[at..]);
        }
    }
    LANES_I32.with(|c| c.set(q));
    done
}

/// AVX2 is there and SIMD is enabled ([`crate::entropy::simd::set_simd_enabled`]).
#[inline(always)]
fn use_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::entropy::simd::simd_enabled() && std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
