//! Container glue of the error-bounded quantizer ([`crate::quant::bounded`]): chunks of a
//! tensor → levels (checked against the bound, escapes where it fails) → tokens and extra bits
//! ([`crate::entropy::levels`]) → entropy-coded chunks, and back.
//!
//! Chunk layout: `u32` length of the token stream, the token stream (an
//! [`entropy`](crate::entropy) stream, one token per element), then the extra bits.
//!
//! Parameters stored in the blob (little-endian): `u8` bound kind, `u8` index of the rounding
//! offset θ in [`THETAS`], `f64` bound value, `f64` grid step (grid modes; `Moment`: the factor
//! `c` of `√|v| + eps`; pointwise: the key step `K`), for `Moment` bounds `f64` eps and `u64`
//! xxh3-64 of the second moment `v`; then what the encoder measured on the reconstruction it
//! wrote, each as an `f32` rounded up: max |x̂ − x|, ‖x̂ − x‖₂/‖x‖₂, max |x̂ − x|/|x|.

use rayon::prelude::*;

use crate::bounded_kernels::{
    self as kernels, Bf16E, ChunkCode, Elem, Errors, Grid, RefSrc, F16E, F32E, F64E,
};
use crate::entropy::levels::Tokens;
use crate::entropy::{self, Coder};
use crate::error::{Error, Result};
use crate::float::DType;
use crate::quant::bounded::{self as q, Bound, DeltaHistogram, GridFloat};
use crate::target::{chunk_of, Base, Target};

/// Size of the parameter block (without the moment's eps and fingerprint).
const PARAMS_LEN: usize = 2 + 2 * 8 + 3 * 4;
/// Rounding offsets a relative bound chooses from (index stored in the parameters).
pub(crate) const THETAS: [f64; 4] = [0.5, 0.4, 0.3, 0.2];
/// Elements the histogram of a relative bound looks at (a strided sample of blocks).
const PLAN_SAMPLE: usize = 1 << 20;
/// Block of consecutive elements in that sample.
const PLAN_BLOCK: usize = 1024;
/// Share of the budget the histogram plan aims at (the exact check allows all of it).
const PLAN_FILL: f64 = 0.92;
/// Steps tried by the exact check of a relative bound, as factors of the planned step.
const CANDIDATES: [f64; 6] = [1.0, 0.93, 0.85, 0.75, 0.6, 0.45];

/// How levels are formed: everything both sides need (the decoder reads it from the params).
#[derive(Clone, Copy, Debug)]
struct Plan {
    bound: Bound,
    /// Grid step (`Abs`, `Rel`), factor `c` of `√|v| + eps` (`Moment`), key step `K`
    /// (`Pointwise`, an integer).
    step: f64,
    /// Rounding offset (encoder only; stored for information).
    theta: f64,
    /// Fingerprint of `v` (`Moment`), else 0.
    moment_hash: u64,
    /// How levels become tokens.
    tokens: Tokens,
}

/// What the encoder measured on the reconstruction it wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Measured {
    /// Largest |x̂ − x|.
    pub max_abs: f64,
    /// ‖x̂ − x‖₂ / ‖x‖₂ (0 when exact).
    pub rel_l2: f64,
    /// Largest |x̂ − x| / |x| over the elements that differ.
    pub max_rel: f64,
}

/// The summary of an encode's error sums.
fn summary(e: &Errors) -> Measured {
    Measured {
        max_abs: e.max_abs,
        rel_l2: if e.sumsq_err == 0.0 {
            0.0
        } else {
            (e.sumsq_err / e.sumsq_x).sqrt()
        },
        max_rel: e.max_rel,
    }
}

/// `v` as the nearest `f32` at or above it (reported errors are never understated).
fn f32_up(v: f64) -> f32 {
    let f = v as f32;
    if (f as f64) < v {
        f32::from_bits(if f >= 0.0 {
            f.to_bits() + 1
        } else {
            f.to_bits() - 1
        })
    } else {
        f
    }
}

/// Parsed bounded-quantizer parameters of a blob.
#[derive(Clone, Copy, Debug)]
pub struct BoundedParams {
    /// The promise the encoder kept.
    pub bound: Bound,
    /// Grid step / moment factor / key step.
    pub step: f64,
    /// Rounding offset used by the encoder.
    pub theta: f64,
    /// xxh3-64 of the second moment (`Moment` bounds), else 0.
    pub moment_hash: u64,
    /// How the levels became tokens.
    pub tokens: Tokens,
    /// What the encoder measured.
    pub measured: Measured,
}

fn write_params(plan: &Plan, m: &Measured) -> Vec<u8> {
    let mut p = Vec::with_capacity(PARAMS_LEN + 16);
    let theta = THETAS.iter().position(|&t| t == plan.theta).unwrap_or(0);
    // The token scheme in the high nibble (0: the narrow scheme of the first blobs).
    let scheme = (plan.tokens.log() - Tokens::NARROW.log()) as u8;
    p.extend_from_slice(&[plan.bound.id(), theta as u8 | scheme << 4]);
    p.extend_from_slice(&plan.bound.value().to_le_bytes());
    p.extend_from_slice(&plan.step.to_le_bytes());
    if plan.bound.needs_moment() {
        let eps = match plan.bound {
            Bound::Moment { eps, .. } => eps,
            _ => 0.0,
        };
        p.extend_from_slice(&eps.to_le_bytes());
        p.extend_from_slice(&plan.moment_hash.to_le_bytes());
    }
    for v in [m.max_abs, m.rel_l2, m.max_rel] {
        p.extend_from_slice(&f32_up(v).to_le_bytes());
    }
    p
}

/// Parse and validate bounded parameters (a forged blob gives [`Error::Corrupt`]).
pub fn read_params(p: &[u8]) -> Result<BoundedParams> {
    let moment = matches!(p.first(), Some(&4 | &5)); // the kinds with a second tensor
    if p.len() != PARAMS_LEN + if moment { 16 } else { 0 } {
        return Err(Error::corrupt("bounded parameters have the wrong length"));
    }
    let f64_at = |i: usize| f64::from_le_bytes(p[i..i + 8].try_into().unwrap());
    let f32_at = |i: usize| f32::from_le_bytes(p[i..i + 4].try_into().unwrap()) as f64;
    let tokens = Tokens::new(Tokens::NARROW.log() + (p[1] >> 4) as u32)
        .ok_or_else(|| Error::corrupt("bounded parameters: unknown token scheme"))?;
    let theta = *THETAS
        .get((p[1] & 15) as usize)
        .ok_or_else(|| Error::corrupt("bounded parameters: unknown rounding offset"))?;
    let (value, step) = (f64_at(2), f64_at(10));
    let (eps, moment_hash, tail) = if moment {
        (
            f64_at(18),
            u64::from_le_bytes(p[26..34].try_into().unwrap()),
            34,
        )
    } else {
        (0.0, 0, 18)
    };
    let bound = Bound::from_parts(p[0], value, eps)?;
    let valid_step = match bound {
        Bound::Pointwise(_) => step >= 1.0 && step <= (1u64 << 53) as f64 && step.fract() == 0.0,
        _ => step.is_finite() && step > 0.0,
    };
    if !valid_step {
        return Err(Error::corrupt("bounded parameters: invalid grid step"));
    }
    Ok(BoundedParams {
        bound,
        step,
        theta,
        moment_hash,
        tokens,
        measured: Measured {
            max_abs: f32_at(tail),
            rel_l2: f32_at(tail + 4),
            max_rel: f32_at(tail + 8),
        },
    })
}

/// Coded chunks and parameters of a bounded encode.
type Coded = (Vec<Vec<u8>>, Vec<u8>);

/// Encode `data` (`dtype` elements) under `bound`; `None` when only exact storage can keep
/// the bound (a zero bound, or finer than the dtype): the caller stores it losslessly.
pub(crate) fn encode(
    dtype: DType,
    data: &[u8],
    target: &mut Target<'_>,
    moment: Option<&[u8]>,
    bound: Bound,
    chunk_elems: usize,
    coder: Coder,
) -> Result<Option<Coded>> {
    bound.validate()?;
    match (bound.needs_moment(), moment) {
        (true, None) => {
            return Err(Error::invalid(
                "a moment bound needs the second moment tensor (same dtype and shape)",
            ))
        }
        (false, Some(_)) => {
            return Err(Error::invalid(
                "a second moment tensor is only used with a moment bound",
            ))
        }
        (true, Some(v)) if v.len() != data.len() => {
            return Err(Error::ReferenceMismatch(format!(
                "the second moment holds {} bytes, the tensor {}: same dtype and shape needed",
                v.len(),
                data.len()
            )))
        }
        _ => {}
    }
    if bound.is_exact() {
        return Ok(None);
    }
    match dtype {
        DType::F32 => encode_typed::<F32E>(data, target, moment, bound, chunk_elems, coder),
        DType::F64 => encode_typed::<F64E>(data, target, moment, bound, chunk_elems, coder),
        DType::F16 => encode_typed::<F16E>(data, target, moment, bound, chunk_elems, coder),
        DType::BF16 => encode_typed::<Bf16E>(data, target, moment, bound, chunk_elems, coder),
    }
}

fn encode_typed<E: Elem>(
    data: &[u8],
    target: &mut Target<'_>,
    moment: Option<&[u8]>,
    bound: Bound,
    chunk_elems: usize,
    coder: Coder,
) -> Result<Option<Coded>> {
    check_finite::<E>(data, target.reference())?;
    // A relative bound's proposed grid nearly always holds: code with it and check the sums
    // the encoder measured, instead of a checking pass first — unless the reference is the
    // output (then a miss could not be coded again).
    let optimistic = matches!(bound, Bound::Rel(_)) && !matches!(target, Target::Update(_));
    let plan_of =
        |r: Option<&[u8]>, checked| make_plan::<E>(data, r, moment, bound, chunk_elems, checked);
    let Some(mut plan) = plan_of(target.reference(), !optimistic) else {
        return Ok(None);
    };
    let (mut chunks, mut errors) = code_all::<E>(&plan, data, target, moment, chunk_elems, coder)?;
    if optimistic && !holds_rel(bound, &errors) {
        let Some(checked) = plan_of(target.reference(), true) else {
            return Ok(None);
        };
        plan = checked;
        (chunks, errors) = code_all::<E>(&plan, data, target, moment, chunk_elems, coder)?;
    }
    Ok(Some((chunks, write_params(&plan, &summary(&errors)))))
}

/// Whether the errors an encode measured keep a relative bound (a hair below the budget:
/// a check sums the same errors in another order).
fn holds_rel(bound: Bound, m: &Errors) -> bool {
    match bound {
        Bound::Rel(e) => m.sumsq_err <= e * e * m.sumsq_x * (1.0 - 1e-9),
        _ => true,
    }
}

/// Every chunk coded under `plan`, in parallel, with the errors summed over chunks.
fn code_all<E: Elem>(
    plan: &Plan,
    data: &[u8],
    target: &mut Target<'_>,
    moment: Option<&[u8]>,
    chunk_elems: usize,
    coder: Coder,
) -> Result<(Vec<Vec<u8>>, Errors)> {
    let chunk_bytes = chunk_elems * E::SIZE;
    let xs = data.par_chunks(chunk_bytes).enumerate();
    let vc = |i: usize, len: usize| chunk_of(moment, i, chunk_bytes, len);
    let run = |xc: &[u8], r: RefSrc<'_>, v: Option<&[u8]>, out: Option<&mut [u8]>| {
        code_chunk(encode_chunk::<E>(plan, xc, r, v, out), coder)
    };
    let parts: Vec<(Vec<u8>, Errors)> = match target {
        Target::Plain(r) => xs
            .map(|(i, xc)| {
                let r = chunk_of(*r, i, chunk_bytes, xc.len()).map_or(RefSrc::Zero, RefSrc::Slice);
                run(xc, r, vc(i, xc.len()), None)
            })
            .collect::<Result<_>>()?,
        Target::Into(r, out) => xs
            .zip(out.par_chunks_mut(chunk_bytes))
            .map(|((i, xc), oc)| {
                let r = chunk_of(*r, i, chunk_bytes, xc.len()).map_or(RefSrc::Zero, RefSrc::Slice);
                run(xc, r, vc(i, xc.len()), Some(oc))
            })
            .collect::<Result<_>>()?,
        Target::Update(buf) => xs
            .zip(buf.par_chunks_mut(chunk_bytes))
            .map(|((i, xc), oc)| run(xc, RefSrc::Out, vc(i, xc.len()), Some(oc)))
            .collect::<Result<_>>()?,
    };
    let errors = parts
        .iter()
        .fold(Errors::default(), |a, (_, m)| a.merge(*m));
    Ok((parts.into_iter().map(|(c, _)| c).collect(), errors))
}

/// Lossy bounds need finite input (the reference too: its non-finite values would make the
/// delta non-finite).
fn check_finite<E: Elem>(data: &[u8], reference: Option<&[u8]>) -> Result<()> {
    for (b, context) in [(Some(data), ""), (reference, " in the reference")] {
        let Some(b) = b else { continue };
        let bad = |c: &[u8]| !E::load(c).to_f64().is_finite();
        let count = b
            .par_chunks(E::SIZE << 14)
            .map(kernels::nonfinite_count::<E>)
            .sum::<u64>();
        if count > 0 {
            let first = b.chunks_exact(E::SIZE).position(bad).unwrap_or(0) as u64;
            return Err(Error::NonFinite {
                count,
                first_index: first,
                context: context.into(),
            });
        }
    }
    Ok(())
}

fn make_plan<E: Elem>(
    data: &[u8],
    reference: Option<&[u8]>,
    moment: Option<&[u8]>,
    bound: Bound,
    chunk_elems: usize,
    checked: bool,
) -> Option<Plan> {
    let moment_hash = moment.map_or(0, xxhash_rust::xxh3::xxh3_64);
    let plan = |step, theta| Plan {
        bound,
        step,
        theta,
        moment_hash,
        tokens: Tokens::WIDE,
    };
    match bound {
        Bound::Abs(t) | Bound::Moment { t, .. } => {
            let step = q::grid_step(t);
            (step > 0.0 && E::W::from_f64(step).to_f64() > 0.0).then(|| plan(step, 0.5))
        }
        Bound::Pointwise(rho) => q::pointwise_step(rho, E::MANTISSA).map(|k| plan(k as f64, 0.5)),
        Bound::Rel(e) => {
            plan_rel::<E>(data, reference, e, chunk_elems, checked).map(|(s, t)| plan(s, t))
        }
        Bound::Each => Some(plan(q::grid_step(1.0), 0.5)),
    }
}

/// The grid of a relative bound: a histogram of a sample proposes a step and offset, then an
/// exact pass over the whole tensor (the same arithmetic as the encoder) picks the largest
/// candidate step that keeps the bound; unchecked, the first candidate (the encoder then
/// checks what it measured).
fn plan_rel<E: Elem>(
    data: &[u8],
    reference: Option<&[u8]>,
    e: f64,
    chunk_elems: usize,
    checked: bool,
) -> Option<(f64, f64)> {
    let n = data.len() / E::SIZE;
    let blocks = n.div_ceil(PLAN_BLOCK);
    let stride = (blocks * PLAN_BLOCK / PLAN_SAMPLE).max(1);
    let hist = (0..blocks)
        .into_par_iter()
        .step_by(stride)
        .fold(DeltaHistogram::default, |mut h, b| {
            let lo = b * PLAN_BLOCK * E::SIZE;
            let hi = (lo + PLAN_BLOCK * E::SIZE).min(data.len());
            for_deltas::<E>(&data[lo..hi], reference.map(|r| &r[lo..hi]), |d, x| {
                h.add(d, x)
            });
            h
        })
        .reduce(DeltaHistogram::default, |mut a, b| {
            a.merge(&b);
            a
        });
    let (step, theta) = hist.plan(e, PLAN_FILL)?;
    // Steps below the working precision's normal range would only produce escapes.
    let tiny = E::W::min_normal();
    if !checked {
        return Some(((CANDIDATES[0] * step).max(tiny), theta));
    }
    let chunk_bytes = chunk_elems * E::SIZE;
    // The exact check, one candidate a pass: the first (the plan's) passes nearly always.
    for c in CANDIDATES {
        let s = (c * step).max(tiny);
        let (err, sumsq_x) = data
            .par_chunks(chunk_bytes)
            .enumerate()
            .map(|(i, xc)| {
                let r = chunk_of(reference, i, chunk_bytes, xc.len());
                kernels::grid_sq_error::<E>(xc, r, s, theta)
            })
            .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
        // A hair below the budget: the encoder sums the same errors in another order.
        if err <= e * e * sumsq_x * (1.0 - 1e-9) {
            return Some((s, theta));
        }
    }
    None
}

/// Call `f(d, x)` for each element: `d = x − r` in `f64` (exact for 16/32-bit dtypes).
#[inline(always)]
fn for_deltas<E: Elem>(x: &[u8], r: Option<&[u8]>, mut f: impl FnMut(f64, f64)) {
    match r {
        Some(r) => {
            for (xc, rc) in x.chunks_exact(E::SIZE).zip(r.chunks_exact(E::SIZE)) {
                let xv = E::load(xc).to_f64();
                f(xv - E::load(rc).to_f64(), xv);
            }
        }
        None => {
            for xc in x.chunks_exact(E::SIZE) {
                let xv = E::load(xc).to_f64();
                f(xv, xv);
            }
        }
    }
}

/// The grid of one chunk under `plan` (`v`: the chunk of the second tensor, if any).
fn grid_of<'a>(plan: &Plan, v: Option<&'a [u8]>) -> Grid<'a> {
    match (plan.bound, v) {
        (Bound::Moment { t, eps }, Some(v)) => Grid::Moment {
            c: plan.step,
            t,
            eps,
            v,
        },
        (Bound::Each, Some(s)) => Grid::Each { c: plan.step, s },
        (Bound::Abs(t), _) => Grid::Uniform {
            step: plan.step,
            tol: t,
        },
        _ => Grid::Uniform {
            step: plan.step,
            tol: f64::INFINITY,
        },
    }
}

/// Levels of one chunk under `plan` (the kernels do the work).
fn encode_chunk<E: Elem>(
    plan: &Plan,
    x: &[u8],
    r: RefSrc<'_>,
    v: Option<&[u8]>,
    out: Option<&mut [u8]>,
) -> ChunkCode {
    match plan.bound {
        Bound::Pointwise(rho) => {
            kernels::encode_key_chunk::<E>(x, r, plan.step as u64, rho, plan.tokens, out)
        }
        _ => kernels::encode_grid_chunk::<E>(x, r, &grid_of(plan, v), plan.theta, plan.tokens, out),
    }
}

/// A chunk's bytes: `u32` token stream length, the token stream, the extra bits.
fn code_chunk(c: ChunkCode, coder: Coder) -> Result<(Vec<u8>, Errors)> {
    let mut chunk = Vec::with_capacity(c.tokens.len() / 8 + c.extra.len() + 64);
    chunk.extend_from_slice(&[0; 4]);
    let coded = entropy::encode_into(&c.tokens, coder, &mut chunk);
    let len = (chunk.len() - 4) as u32;
    chunk[..4].copy_from_slice(&len.to_le_bytes());
    chunk.extend_from_slice(&c.extra);
    kernels::recycle(c.tokens, c.extra);
    coded.map(|_| (chunk, c.errors))
}

/// Decode bounded chunks into `out`, adding to `base`.
pub(crate) fn decode(
    dtype: DType,
    params: &[u8],
    chunks: &[&[u8]],
    chunk_elems: usize,
    base: Base<'_>,
    moment: Option<&[u8]>,
    out: &mut [u8],
) -> Result<()> {
    let p = read_params(params)?;
    match (p.bound.needs_moment(), moment) {
        (true, None) => {
            return Err(Error::ReferenceMismatch(
                "this blob is bounded relative to a second moment: pass that tensor".into(),
            ))
        }
        (false, Some(_)) => {
            return Err(Error::ReferenceMismatch(
                "this blob was encoded without a second moment; decode it without one".into(),
            ))
        }
        (true, Some(v))
            if v.len() != out.len() || xxhash_rust::xxh3::xxh3_64(v) != p.moment_hash =>
        {
            return Err(Error::ReferenceMismatch(
                "the second moment differs from the one this blob was encoded against".into(),
            ))
        }
        _ => {}
    }
    let plan = plan_of(&p);
    match dtype {
        DType::F32 => decode_typed::<F32E>(&plan, chunks, chunk_elems, base, moment, out),
        DType::F64 => decode_typed::<F64E>(&plan, chunks, chunk_elems, base, moment, out),
        DType::F16 => decode_typed::<F16E>(&plan, chunks, chunk_elems, base, moment, out),
        DType::BF16 => decode_typed::<Bf16E>(&plan, chunks, chunk_elems, base, moment, out),
    }
}

fn plan_of(p: &BoundedParams) -> Plan {
    Plan {
        bound: p.bound,
        step: p.step,
        theta: p.theta,
        moment_hash: p.moment_hash,
        tokens: p.tokens,
    }
}

/// One bounded blob (without a second moment) applied in place chunk by chunk: the fused
/// chain restore ([`crate::chain`]) calls [`InPlace::apply`] on each chunk while it is in
/// cache. Each chunk is decoded exactly as [`decode`] with [`Base::Out`] decodes it.
pub(crate) struct InPlace {
    dtype: DType,
    plan: Plan,
}

impl InPlace {
    /// The applier of a blob's parameters; a blob bounded by a second moment is refused.
    pub(crate) fn new(dtype: DType, params: &[u8]) -> Result<Self> {
        let p = read_params(params)?;
        if p.bound.needs_moment() {
            return Err(Error::ReferenceMismatch(
                "this blob is bounded relative to a second moment: pass that tensor".into(),
            ));
        }
        Ok(InPlace {
            dtype,
            plan: plan_of(&p),
        })
    }

    /// Add chunk `chunk`'s decoded delta to `out` (the chunk's reference, in place).
    pub(crate) fn apply(&self, chunk: &[u8], out: &mut [u8]) -> Result<()> {
        let (plan, r) = (&self.plan, RefSrc::Out);
        match self.dtype {
            DType::F32 => decode_chunk::<F32E>(plan, chunk, r, None, out),
            DType::F64 => decode_chunk::<F64E>(plan, chunk, r, None, out),
            DType::F16 => decode_chunk::<F16E>(plan, chunk, r, None, out),
            DType::BF16 => decode_chunk::<Bf16E>(plan, chunk, r, None, out),
        }
    }
}

fn decode_typed<E: Elem>(
    plan: &Plan,
    chunks: &[&[u8]],
    chunk_elems: usize,
    base: Base<'_>,
    moment: Option<&[u8]>,
    out: &mut [u8],
) -> Result<()> {
    let chunk_bytes = chunk_elems * E::SIZE;
    out.par_chunks_mut(chunk_bytes)
        .zip(chunks.par_iter())
        .enumerate()
        .try_for_each(|(i, (o, c))| {
            let r = match base.chunk(i, chunk_bytes, o.len()) {
                Base::Zero => RefSrc::Zero,
                Base::Ref(s) => RefSrc::Slice(s),
                Base::Out => RefSrc::Out,
            };
            let v = chunk_of(moment, i, chunk_bytes, o.len());
            decode_chunk::<E>(plan, c, r, v, o)
        })
}

/// Split a bounded chunk into its token stream and extra bits.
pub(crate) fn split_chunk(chunk: &[u8]) -> Result<(&[u8], &[u8])> {
    if chunk.len() < 4 {
        return Err(Error::corrupt("bounded chunk truncated"));
    }
    let len = u32::from_le_bytes(chunk[..4].try_into().unwrap()) as usize;
    if chunk.len() - 4 < len {
        return Err(Error::corrupt("bounded token stream overruns its chunk"));
    }
    Ok((&chunk[4..4 + len], &chunk[4 + len..]))
}

fn decode_chunk<E: Elem>(
    plan: &Plan,
    chunk: &[u8],
    r: RefSrc<'_>,
    v: Option<&[u8]>,
    out: &mut [u8],
) -> Result<()> {
    let (tok_stream, extra) = split_chunk(chunk)?;
    let n = out.len() / E::SIZE;
    let mut tokens = token_scratch(n)?;
    let done = entropy::decode_into(tok_stream, &mut tokens).and_then(|_| match plan.bound {
        Bound::Pointwise(_) => {
            kernels::decode_key_chunk::<E>(&tokens, extra, plan.tokens, r, plan.step as u64, out)
        }
        _ => {
            kernels::decode_grid_chunk::<E>(&tokens, extra, plan.tokens, r, &grid_of(plan, v), out)
        }
    });
    TOKENS.with(|c| c.set(tokens));
    done
}

thread_local! {
    /// A decoder's token buffer, reused chunk after chunk: a fresh chunk-sized allocation
    /// per chunk cost page faults (measured in the restore profile, BENCHMARKS.md §8).
    static TOKENS: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// This thread's token buffer, `n` bytes (at most a chunk; a failed allocation is
/// [`Error::Corrupt`], as for [`entropy::try_alloc`]). Its old contents are overwritten by
/// the stream decode, whose length check comes first.
fn token_scratch(n: usize) -> Result<Vec<u8>> {
    let mut v = TOKENS.with(|c| c.take());
    if v.len() < n {
        v.clear();
        v.try_reserve_exact(n)
            .map_err(|_| Error::corrupt(format!("a chunk of {n} tokens does not fit in memory")))?;
        v.resize(n, 0);
    }
    v.truncate(n);
    Ok(v)
}

/// The token stream of a chunk (one token per element; checked before allocating).
pub(crate) fn token_stream(chunk: &[u8]) -> Result<&[u8]> {
    split_chunk(chunk).map(|(t, _)| t)
}
