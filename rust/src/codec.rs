//! Tensor encode/decode: the container around quantizers and entropy coders.

use std::cell::Cell;
use std::thread::LocalKey;

use rayon::prelude::*;

use crate::bounded;
use crate::entropy::{self, Coder};
use crate::error::{Error, Result};
use crate::float::{self, DType};
use crate::format::{self, Header, Quantizer, FLAG_MIDPOINT, FLAG_REFERENCE};
use crate::lossless;
use crate::parallel;
use crate::quant::bounded::Bound;
use crate::quant::exponent::{self, BucketFloor, BucketPlan, BucketStats, BucketValue, ExpFloat};
use crate::quant::lattice::FindBasisOptions;
use crate::scalar;
use crate::target::{chunk_of, Base, Target};

/// Default number of elements per independently coded chunk.
pub const DEFAULT_CHUNK_ELEMS: usize = 1 << 18;

/// A borrowed tensor: little-endian element bytes, dtype and shape.
#[derive(Clone, Copy, Debug)]
pub struct Tensor<'a> {
    /// Element type.
    pub dtype: DType,
    /// Dimensions, row-major (empty for a 0-d tensor).
    pub shape: &'a [u64],
    /// `numel × dtype.size()` bytes, little-endian.
    pub data: &'a [u8],
}

/// A decoded tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    /// Element type.
    pub dtype: DType,
    /// Dimensions.
    pub shape: Vec<u64>,
    /// The caller's tag byte from the header.
    pub tag: u8,
    /// Little-endian element bytes.
    pub data: Vec<u8>,
}

/// How to encode a tensor.
#[derive(Clone, Copy, Debug)]
pub struct EncodeOptions<'a> {
    /// Lossless (`None`) or a lossy quantizer.
    pub quantizer: Quantizer,
    /// Quantizer bit width (1–8 for the exponent quantizer; ignored when lossless).
    pub bits: u8,
    /// Entropy coder for symbol streams and byte planes.
    pub coder: Coder,
    /// Representative value of exponent buckets.
    pub bucket_value: BucketValue,
    /// Elements per independently coded chunk (the unit of parallelism).
    pub chunk_elems: usize,
    /// A byte stored in the header for the caller's own use (see [`Header::tag`]).
    pub tag: u8,
    /// Uniform quantizer: symmetric (odd number of levels, 0 exact) or affine.
    pub symmetric: bool,
    /// Lattice quantizer: block dimension (1–9).
    pub dim: usize,
    /// Lattice quantizer: basis search iterations (0 = best scaled identity, i.e. uniform).
    pub lattice_iters: usize,
    /// Lattice quantizer: seed of the basis search.
    pub seed: u64,
    /// Exponent quantizer: buckets below this floor are never kept (see [`BucketFloor`]).
    pub bucket_floor: Option<BucketFloor>,
    /// Bounded quantizer: the promise on the reconstruction (see [`Bound`]).
    pub bound: Option<Bound>,
    /// Bounded quantizer with [`Bound::Moment`]: the second moment `v` (same dtype and shape
    /// as the tensor), whose `√|v| + eps` scales each element's tolerance. Decoding needs it
    /// too ([`decode_with`]).
    pub moment: Option<&'a [u8]>,
}

impl Default for EncodeOptions<'_> {
    fn default() -> Self {
        EncodeOptions {
            quantizer: Quantizer::Exponent,
            bits: 3,
            coder: Coder::Auto,
            bucket_value: BucketValue::Mean,
            chunk_elems: DEFAULT_CHUNK_ELEMS,
            tag: 0,
            symmetric: true,
            dim: 3,
            lattice_iters: FindBasisOptions::default().iters,
            seed: 0,
            bucket_floor: None,
            bound: None,
            moment: None,
        }
    }
}

fn numel(shape: &[u64]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| Error::invalid("shape overflows the address space"))
}

/// Encode `x` (optionally as a delta against `reference`, which must have the same dtype and
/// shape) into a self-describing blob.
///
/// ```
/// use deltackpt::{encode, decode, EncodeOptions, Quantizer, Tensor, DType};
/// let values: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.01).sin()).collect();
/// let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
/// let x = Tensor { dtype: DType::F32, shape: &[10, 100], data: &bytes };
/// let lossless = EncodeOptions { quantizer: Quantizer::None, ..Default::default() };
/// let blob = encode(x, None, &lossless).unwrap();
/// assert_eq!(decode(&blob, None).unwrap().data, bytes);
/// ```
pub fn encode(x: Tensor<'_>, reference: Option<&[u8]>, opts: &EncodeOptions) -> Result<Vec<u8>> {
    encode_inner(x, Target::Plain(reference), opts)
}

/// [`encode`], also writing into `reconstruction` (`x.data.len()` bytes) exactly what
/// [`decode`]`(blob, reference)` will return: the state to carry forward for error feedback,
/// without a decoding pass. For the exponent quantizer it is produced in the same pass as the
/// symbols.
///
/// ```
/// use deltackpt::{decode, encode_reconstruct, DType, EncodeOptions, Tensor};
/// let prev: Vec<u8> = (0..512).flat_map(|i| (i as f32).sin().to_le_bytes()).collect();
/// let next: Vec<u8> = (0..512).flat_map(|i| ((i as f32).sin() + 0.01).to_le_bytes()).collect();
/// let x = Tensor { dtype: DType::F32, shape: &[512], data: &next };
/// let mut recon = vec![0u8; next.len()];
/// let blob = encode_reconstruct(x, Some(&prev), &EncodeOptions::default(), &mut recon).unwrap();
/// assert_eq!(decode(&blob, Some(&prev)).unwrap().data, recon);
/// ```
pub fn encode_reconstruct(
    x: Tensor<'_>,
    reference: Option<&[u8]>,
    opts: &EncodeOptions,
    reconstruction: &mut [u8],
) -> Result<Vec<u8>> {
    if reconstruction.len() != x.data.len() {
        return Err(Error::invalid(format!(
            "the reconstruction buffer holds {} bytes; the tensor has {}",
            reconstruction.len(),
            x.data.len()
        )));
    }
    encode_inner(x, Target::Into(reference, reconstruction), opts)
}

/// [`encode`] `x` against `reference`, then replace `reference` by the reconstruction (what
/// [`decode`] of the blob returns against the old reference): one error-feedback step in
/// place, without a second tensor-sized buffer.
///
/// ```
/// use deltackpt::{decode, encode_update, DType, EncodeOptions, Tensor};
/// let mut state: Vec<u8> = (0..512).flat_map(|i| (i as f32).sin().to_le_bytes()).collect();
/// let old = state.clone();
/// let next: Vec<u8> = (0..512).flat_map(|i| ((i as f32).sin() + 0.01).to_le_bytes()).collect();
/// let x = Tensor { dtype: DType::F32, shape: &[512], data: &next };
/// let blob = encode_update(x, &mut state, &EncodeOptions::default()).unwrap();
/// assert_eq!(decode(&blob, Some(&old)).unwrap().data, state);
/// ```
pub fn encode_update(x: Tensor<'_>, reference: &mut [u8], opts: &EncodeOptions) -> Result<Vec<u8>> {
    encode_inner(x, Target::Update(reference), opts)
}

/// The reconstruction for paths without a fused one: lossless blobs restore `x` itself;
/// the scalar quantizers decode the blob once.
fn reconstruct_by_decoding(
    target: Target<'_>,
    blob: &[u8],
    x: Tensor<'_>,
    lossless: bool,
) -> Result<()> {
    match target {
        Target::Plain(_) => Ok(()),
        Target::Into(_, out) | Target::Update(out) if lossless => {
            out.copy_from_slice(x.data);
            Ok(())
        }
        Target::Into(r, out) => decode_into(blob, r, out).map(|_| ()),
        Target::Update(r) => {
            let base = r.to_vec();
            decode_into(blob, Some(&base), r).map(|_| ())
        }
    }
}

fn encode_inner(x: Tensor<'_>, mut target: Target<'_>, opts: &EncodeOptions) -> Result<Vec<u8>> {
    let reference = target.reference();
    let n = numel(x.shape)?;
    let size = x.dtype.size();
    if x.data.len() != n * size {
        return Err(Error::invalid(format!(
            "data holds {} bytes; shape {:?} of {} needs {}",
            x.data.len(),
            x.shape,
            x.dtype.name(),
            n * size
        )));
    }
    if x.shape.len() > 255 {
        return Err(Error::invalid("tensors may have at most 255 dimensions"));
    }
    if let Some(r) = reference {
        if r.len() != x.data.len() {
            return Err(Error::ReferenceMismatch(format!(
                "reference holds {} bytes, the tensor {}: they must have the same shape and dtype",
                r.len(),
                x.data.len()
            )));
        }
    }
    if opts.chunk_elems == 0 || opts.chunk_elems as u64 > format::MAX_CHUNK_ELEMS {
        return Err(Error::invalid(format!(
            "chunk_elems must be in 1..={}",
            format::MAX_CHUNK_ELEMS
        )));
    }
    let mut header = Header {
        dtype: x.dtype,
        shape: x.shape.to_vec(),
        quantizer: opts.quantizer,
        coder: opts.coder,
        bits: 0,
        flags: 0,
        reference_hash: reference.map(xxhash_rust::xxh3::xxh3_64),
        params: Vec::new(),
        chunk_elems: opts.chunk_elems as u64,
        chunk_sizes: Vec::new(),
        tag: opts.tag,
    };
    if reference.is_some() {
        header.flags |= FLAG_REFERENCE;
    }
    let has_reference = reference.is_some();
    let bounded = match opts.quantizer {
        Quantizer::Bounded => {
            let bound = opts
                .bound
                .ok_or_else(|| Error::invalid("the bounded quantizer needs a bound"))?;
            parallel::install(|| {
                bounded::encode(
                    x.dtype,
                    x.data,
                    &mut target,
                    opts.moment,
                    bound,
                    opts.chunk_elems,
                    opts.coder,
                )
            })
            .map_err(|e| with_delta_context(e, has_reference))?
        }
        _ => None,
    };
    // A bound that only exact storage keeps (zero, finer than the dtype) is stored losslessly.
    if opts.quantizer == Quantizer::Bounded && bounded.is_none() {
        header.quantizer = Quantizer::None;
    }
    let params = &mut header.params;
    let chunks = parallel::install(|| match header.quantizer {
        Quantizer::None => lossless::encode_chunks(
            x.dtype,
            x.data,
            target.reference(),
            opts.chunk_elems,
            opts.coder,
        ),
        // Checked and reconstructed in its coding pass.
        Quantizer::Bounded => {
            let (chunks, p) = bounded.expect("a bounded encode");
            *params = p;
            Ok(chunks)
        }
        // Writes the reconstruction itself, in the coding pass.
        Quantizer::Exponent if x.dtype == DType::F64 => {
            encode_exponent::<f64>(x, &mut target, opts, params)
        }
        Quantizer::Exponent => encode_exponent::<f32>(x, &mut target, opts, params),
        Quantizer::Uniform | Quantizer::Lattice => {
            let reference = target.reference();
            let d = if x.dtype == DType::F64 {
                delta_all::<f64>(x.dtype, x.data, reference, opts.chunk_elems)
            } else {
                let d32 = delta_all::<f32>(x.dtype, x.data, reference, opts.chunk_elems);
                d32.par_iter().map(|&v| v as f64).collect()
            };
            let (symbols, scalar_params) = if opts.quantizer == Quantizer::Uniform {
                scalar::uniform_encode(&d, opts.bits, opts.symmetric)
            } else {
                let search = FindBasisOptions {
                    iters: opts.lattice_iters,
                    seed: opts.seed,
                    ..Default::default()
                };
                scalar::lattice_encode(&d, opts.bits, opts.dim, &search)
            }
            .map_err(|e| with_delta_context(e, reference.is_some()))?;
            *params = scalar_params;
            symbols
                .par_chunks(opts.chunk_elems)
                .map(|c| entropy::encode(c, opts.coder))
                .collect()
        }
    })?;
    if matches!(
        header.quantizer,
        Quantizer::Exponent | Quantizer::Uniform | Quantizer::Lattice
    ) {
        header.bits = opts.bits;
    }
    if header.quantizer == Quantizer::Exponent && opts.bucket_value == BucketValue::Midpoint {
        header.flags |= FLAG_MIDPOINT;
    }
    header.chunk_sizes = chunks.iter().map(|c| c.len() as u64).collect();
    let blob = format::write(&header, &chunks);
    if !matches!(header.quantizer, Quantizer::Exponent | Quantizer::Bounded) {
        reconstruct_by_decoding(target, &blob, x, header.quantizer == Quantizer::None)?;
    }
    Ok(blob)
}

/// The working-precision delta `x − reference` (or `x`) of a whole tensor.
fn delta_all<T: Work>(dtype: DType, data: &[u8], reference: Option<&[u8]>, chunk: usize) -> Vec<T> {
    let size = dtype.size();
    let mut d = vec![T::ZERO; data.len() / size];
    d.par_chunks_mut(chunk).enumerate().for_each(|(i, out)| {
        let lo = i * chunk * size;
        let hi = lo + out.len() * size;
        T::delta(dtype, &data[lo..hi], reference.map(|r| &r[lo..hi]), out);
    });
    d
}

/// Say where non-finite values come from when the tensor was a delta.
fn with_delta_context(e: Error, delta: bool) -> Error {
    match e {
        Error::NonFinite {
            count, first_index, ..
        } if delta => Error::NonFinite {
            count,
            first_index,
            context: " in the delta x − reference (in x, the reference, or an overflow)".into(),
        },
        e => e,
    }
}

thread_local! {
    static SCRATCH_F32: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static SCRATCH_F64: Cell<Vec<f64>> = const { Cell::new(Vec::new()) };
    static SCRATCH_SYM: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// A per-thread buffer of `n` zeros, reused across chunks (fresh tensor-chunk-sized
/// allocations cost page faults). Taken out of its slot, so a nested use (rayon may run
/// another chunk on this thread while this one waits) just allocates. For the encoder, whose
/// chunks are slices of a tensor the caller already holds.
fn take_scratch<T: Copy + Default + 'static>(
    key: &'static LocalKey<Cell<Vec<T>>>,
    n: usize,
) -> Vec<T> {
    let mut v = key.with(|c| c.take());
    v.clear();
    v.resize(n, T::default());
    v
}

/// [`take_scratch`] for decoders: `n` is at most a chunk ([`format::MAX_CHUNK_ELEMS`]), and a
/// failed allocation is an [`Error::Corrupt`] rather than an abort.
fn try_take_scratch<T: Copy + Default + 'static>(
    key: &'static LocalKey<Cell<Vec<T>>>,
    n: usize,
) -> Result<Vec<T>> {
    let mut v = key.with(|c| c.take());
    v.clear();
    v.try_reserve_exact(n).map_err(|_| {
        Error::corrupt(format!(
            "a chunk of {n} symbols needs more scratch memory than is available"
        ))
    })?;
    v.resize(n, T::default());
    Ok(v)
}

/// Elements [`apply_via_scratch`] works on at a time: its scratch stays small whatever the
/// chunk size.
const APPLY_BLOCK: usize = 1 << 14;

fn give_scratch<T: 'static>(key: &'static LocalKey<Cell<Vec<T>>>, v: Vec<T>) {
    key.with(|c| c.set(v));
}

/// Working precision of deltas: `f32` for the 16- and 32-bit dtypes, `f64` for float64.
trait Work: ExpFloat + TableBytes + Default {
    /// This type's per-thread scratch buffer.
    const SCRATCH: &'static LocalKey<Cell<Vec<Self>>>;
    /// `x − reference` (or `x`) for one chunk.
    fn delta(dtype: DType, x: &[u8], reference: Option<&[u8]>, out: &mut [Self]);
    /// Run `f` on the delta of one chunk, held in this thread's scratch buffer.
    fn with_delta<R>(
        dtype: DType,
        x: &[u8],
        reference: Option<&[u8]>,
        f: impl FnOnce(&[Self]) -> R,
    ) -> R {
        let mut d = take_scratch(Self::SCRATCH, x.len() / dtype.size());
        Self::delta(dtype, x, reference, &mut d);
        let out = f(&d);
        give_scratch(Self::SCRATCH, d);
        out
    }
    /// Read `out.len()` elements of `dtype`.
    fn load(dtype: DType, bytes: &[u8], out: &mut [Self]);
    /// Write `values` as elements of `dtype` (rounding to nearest even).
    fn store(dtype: DType, values: &[Self], out: &mut [u8]);

    /// `out = base + lut[symbol]` rounded to `dtype`: the one dequantization of the exponent
    /// quantizer, shared by decode and the encoder's reconstruction so that both give the
    /// same bytes.
    fn apply(dtype: DType, sym: &[u8], lut: &[Self; 256], base: Base<'_>, out: &mut [u8]) {
        apply_via_scratch(dtype, sym, lut, base, out);
    }
}

/// [`Work::apply`] through the working precision: load the base, add, round to `dtype`, in
/// blocks of [`APPLY_BLOCK`] elements held on the stack.
fn apply_via_scratch<T: Work>(
    dtype: DType,
    sym: &[u8],
    lut: &[T; 256],
    base: Base<'_>,
    out: &mut [u8],
) {
    let size = dtype.size();
    let mut block = [T::default(); APPLY_BLOCK];
    for (k, (s, o)) in sym
        .chunks(APPLY_BLOCK)
        .zip(out.chunks_mut(APPLY_BLOCK * size))
        .enumerate()
    {
        let v = &mut block[..s.len()];
        match base {
            Base::Zero => v.fill(T::default()),
            Base::Ref(r) => T::load(dtype, &r[k * APPLY_BLOCK * size..][..o.len()], v),
            Base::Out => T::load(dtype, o, v),
        }
        for (v, s) in v.iter_mut().zip(s) {
            *v = v.add(lut[*s as usize]);
        }
        T::store(dtype, v, o);
    }
}

impl Work for f32 {
    const SCRATCH: &'static LocalKey<Cell<Vec<f32>>> = &SCRATCH_F32;
    fn delta(dtype: DType, x: &[u8], reference: Option<&[u8]>, out: &mut [f32]) {
        let Some(r) = reference else {
            return float::to_f32(dtype, x, out);
        };
        let pairs = out.iter_mut().zip(
            x.chunks_exact(dtype.size())
                .zip(r.chunks_exact(dtype.size())),
        );
        match dtype {
            DType::F32 => {
                for (o, (a, b)) in pairs {
                    *o = f32::from_le_bytes(a.try_into().unwrap())
                        - f32::from_le_bytes(b.try_into().unwrap());
                }
            }
            DType::BF16 => {
                let f = |c: &[u8]| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
                for (o, (a, b)) in pairs {
                    *o = f(a) - f(b);
                }
            }
            DType::F16 => {
                let f = |c: &[u8]| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
                for (o, (a, b)) in pairs {
                    *o = f(a) - f(b);
                }
            }
            DType::F64 => unreachable!("f64 tensors are worked on as f64"),
        }
    }
    fn load(dtype: DType, bytes: &[u8], out: &mut [f32]) {
        float::to_f32(dtype, bytes, out);
    }
    fn store(dtype: DType, values: &[f32], out: &mut [u8]) {
        float::from_f32(dtype, values, out);
    }
    fn apply(dtype: DType, sym: &[u8], lut: &[f32; 256], base: Base<'_>, out: &mut [u8]) {
        if dtype != DType::F32 {
            return apply_via_scratch(dtype, sym, lut, base, out);
        }
        // The hot path: one fused pass, symbol -> value (+ reference) -> bytes.
        let get = |c: &[u8]| f32::from_le_bytes(c.try_into().unwrap());
        let outs = out.chunks_exact_mut(4).zip(sym);
        match base {
            Base::Ref(r) => {
                for ((o, s), rc) in outs.zip(r.chunks_exact(4)) {
                    o.copy_from_slice(&(get(rc) + lut[*s as usize]).to_le_bytes());
                }
            }
            Base::Out => {
                for (o, s) in outs {
                    let v = get(o) + lut[*s as usize];
                    o.copy_from_slice(&v.to_le_bytes());
                }
            }
            Base::Zero => {
                for (o, s) in outs {
                    o.copy_from_slice(&lut[*s as usize].to_le_bytes());
                }
            }
        }
    }
}

impl Work for f64 {
    const SCRATCH: &'static LocalKey<Cell<Vec<f64>>> = &SCRATCH_F64;
    fn delta(_: DType, x: &[u8], reference: Option<&[u8]>, out: &mut [f64]) {
        float::to_f64(x, out);
        if let Some(r) = reference {
            for (o, c) in out.iter_mut().zip(r.chunks_exact(8)) {
                *o -= f64::from_le_bytes(c.try_into().unwrap());
            }
        }
    }
    fn load(_: DType, bytes: &[u8], out: &mut [f64]) {
        float::to_f64(bytes, out);
    }
    fn store(_: DType, values: &[f64], out: &mut [u8]) {
        float::from_f64(values, out);
    }
}

/// The exponent quantizer in two passes over chunks, without a tensor-sized temporary: the
/// first gathers the bucket statistics of the delta, the second recomputes each chunk's delta,
/// maps it to symbols, codes them and (optionally) writes the reconstruction.
fn encode_exponent<T: Work>(
    x: Tensor<'_>,
    target: &mut Target<'_>,
    opts: &EncodeOptions,
    params: &mut Vec<u8>,
) -> Result<Vec<Vec<u8>>> {
    exponent::check_bits(opts.bits)?;
    let (dtype, size) = (x.dtype, x.dtype.size());
    let chunk_bytes = opts.chunk_elems * size;
    let plan = {
        let reference = target.reference();
        let ref_chunk = |i: usize, len: usize| chunk_of(reference, i, chunk_bytes, len);
        let stats: Vec<BucketStats> = x
            .data
            .par_chunks(chunk_bytes)
            .enumerate()
            .map(|(i, xc)| {
                T::with_delta(dtype, xc, ref_chunk(i, xc.len()), |d| {
                    BucketStats::gather(d, opts.bucket_value)
                })
            })
            .collect();
        let merged = BucketStats::merge_all::<T>(&stats, opts.bucket_value);
        match BucketPlan::<T>::new(&merged, opts.bits, opts.bucket_value, opts.bucket_floor) {
            Ok(plan) => plan,
            Err(e) => {
                // Locate the first non-finite element for the message (the failure path only).
                let first = x
                    .data
                    .chunks(chunk_bytes)
                    .enumerate()
                    .find_map(|(i, xc)| {
                        T::with_delta(dtype, xc, ref_chunk(i, xc.len()), |d| {
                            exponent::first_non_finite(d).map(|p| (i * opts.chunk_elems + p) as u64)
                        })
                    })
                    .unwrap_or(0);
                return Err(with_delta_context(e.at(first), reference.is_some()));
            }
        }
    };
    write_table(&plan.table, params);
    let lut = exponent::lookup_table(&plan.table);
    // Second pass, per chunk: delta -> symbols -> code, and the reconstruction when asked.
    let symbols = |xc: &[u8], r: Option<&[u8]>| {
        let mut s = take_scratch(&SCRATCH_SYM, xc.len() / size);
        T::with_delta(dtype, xc, r, |d| plan.symbols(d, &mut s));
        s
    };
    let code = |s: Vec<u8>| {
        let blob = entropy::encode(&s, opts.coder);
        give_scratch(&SCRATCH_SYM, s);
        blob
    };
    let xs = x.data.par_chunks(chunk_bytes).enumerate();
    match target {
        Target::Plain(r) => xs
            .map(|(i, xc)| code(symbols(xc, chunk_of(*r, i, chunk_bytes, xc.len()))))
            .collect(),
        Target::Into(r, out) => xs
            .zip(out.par_chunks_mut(chunk_bytes))
            .map(|((i, xc), oc)| {
                let rc = chunk_of(*r, i, chunk_bytes, xc.len());
                let s = symbols(xc, rc);
                T::apply(dtype, &s, &lut, Base::of(rc), oc);
                code(s)
            })
            .collect(),
        Target::Update(r) => xs
            .zip(r.par_chunks_mut(chunk_bytes))
            .map(|((_, xc), rc)| {
                let s = symbols(xc, Some(rc));
                T::apply(dtype, &s, &lut, Base::Out, rc);
                code(s)
            })
            .collect(),
    }
}

fn write_table<T: ExpFloat + TableBytes>(table: &[T], params: &mut Vec<u8>) {
    params.push(table.len() as u8);
    for v in table {
        v.put(params);
    }
}

/// Little-endian serialization of table values.
trait TableBytes {
    fn put(&self, out: &mut Vec<u8>);
}
impl TableBytes for f32 {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}
impl TableBytes for f64 {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

/// Histogram of the (sign, biased exponent) keys of the working-precision delta
/// `x − reference` (or `x`): 512 bins for 16/32-bit dtypes, 4096 for float64. Used to choose
/// the kept buckets over a whole model state ([`EncodeOptions::bucket_floor`]).
pub fn delta_histogram(x: Tensor<'_>, reference: Option<&[u8]>) -> Result<Vec<u64>> {
    let n = numel(x.shape)?;
    if x.data.len() != n * x.dtype.size() || reference.is_some_and(|r| r.len() != x.data.len()) {
        return Err(Error::invalid(
            "tensor and reference sizes do not match the shape",
        ));
    }
    Ok(parallel::install(|| {
        if x.dtype == DType::F64 {
            histogram::<f64>(x, reference)
        } else {
            histogram::<f32>(x, reference)
        }
    }))
}

fn histogram<T: Work>(x: Tensor<'_>, reference: Option<&[u8]>) -> Vec<u64> {
    let size = x.dtype.size();
    let chunk_bytes = DEFAULT_CHUNK_ELEMS * size;
    let parts: Vec<Vec<u64>> = x
        .data
        .par_chunks(chunk_bytes)
        .enumerate()
        .map(|(i, xc)| {
            let r = chunk_of(reference, i, chunk_bytes, xc.len());
            T::with_delta(x.dtype, xc, r, exponent::count_keys)
        })
        .collect();
    exponent::sum_histograms::<T>(&parts)
}

/// Read a blob's header without decoding its payload (the checksum is verified).
pub fn inspect(blob: &[u8]) -> Result<Header> {
    Ok(format::read(blob)?.0)
}

/// Decode a blob. A blob encoded against a reference needs the same reference (checked
/// against the fingerprint stored in the blob).
pub fn decode(blob: &[u8], reference: Option<&[u8]>) -> Result<Decoded> {
    decode_with(blob, reference, None)
}

/// [`decode`] a blob that may be bounded relative to a second moment ([`Bound::Moment`]):
/// `moment` is that tensor (checked against the blob's fingerprint of it).
pub fn decode_with(
    blob: &[u8],
    reference: Option<&[u8]>,
    moment: Option<&[u8]>,
) -> Result<Decoded> {
    let (header, chunks) = format::read(blob)?;
    check_plausible(&header, &chunks)?;
    let n = header.numel()? as usize;
    let mut data = entropy::try_alloc(n * header.dtype.size())?;
    decode_parsed(
        &header,
        &chunks,
        Base::of(reference),
        reference,
        moment,
        &mut data,
    )?;
    Ok(Decoded {
        dtype: header.dtype,
        shape: header.shape,
        tag: header.tag,
        data,
    })
}

/// Refuse blobs whose chunks cannot hold the symbols they declare, before allocating the
/// output (a forged shape would otherwise ask for any amount of memory).
pub(crate) fn check_plausible(header: &Header, chunks: &[&[u8]]) -> Result<()> {
    let stream_len = header.stream_len()? as usize;
    let per_chunk = header.chunk_elems as usize;
    for (i, c) in chunks.iter().enumerate() {
        let want = per_chunk.min(stream_len - i * per_chunk);
        let streams: Vec<&[u8]> = match header.quantizer {
            Quantizer::None => {
                lossless::check_plausible(c, header.dtype.size(), want)?;
                continue;
            }
            Quantizer::Bounded => vec![bounded::token_stream(c)?],
            _ => vec![c],
        };
        for s in streams {
            if entropy::plausible_len(s)? != want {
                return Err(Error::corrupt(format!(
                    "chunk {i} holds a stream of the wrong length (expected {want} symbols)"
                )));
            }
        }
    }
    Ok(())
}

/// Decode a blob into `out` (which must hold exactly the tensor's bytes); returns the header.
pub fn decode_into(blob: &[u8], reference: Option<&[u8]>, out: &mut [u8]) -> Result<Header> {
    decode_into_with(blob, reference, None, out)
}

/// [`decode_into`] with the second moment of a [`Bound::Moment`] blob.
pub fn decode_into_with(
    blob: &[u8],
    reference: Option<&[u8]>,
    moment: Option<&[u8]>,
    out: &mut [u8],
) -> Result<Header> {
    let (header, chunks) = format::read(blob)?;
    check_plausible(&header, &chunks)?;
    let n = header.numel()? as usize;
    if out.len() != n * header.dtype.size() {
        return Err(Error::invalid(format!(
            "output buffer holds {} bytes; the tensor needs {}",
            out.len(),
            n * header.dtype.size()
        )));
    }
    decode_parsed(
        &header,
        &chunks,
        Base::of(reference),
        reference,
        moment,
        out,
    )?;
    Ok(header)
}

/// Decode a blob in place: `reference` (the one it was encoded against) is replaced by the
/// decoded tensor, as [`decode`]`(blob, Some(reference))` would return it — a chain of deltas
/// restored without a buffer per link. On an error `reference` holds unspecified values.
///
/// ```
/// use deltackpt::{decode_update, encode, DType, EncodeOptions, Tensor};
/// let prev: Vec<u8> = (0..512).flat_map(|i| (i as f32).cos().to_le_bytes()).collect();
/// let next: Vec<u8> = (0..512).flat_map(|i| ((i as f32).cos() - 0.01).to_le_bytes()).collect();
/// let x = Tensor { dtype: DType::F32, shape: &[512], data: &next };
/// let blob = encode(x, Some(&prev), &EncodeOptions::default()).unwrap();
/// let mut state = prev.clone();
/// decode_update(&blob, &mut state).unwrap();
/// assert_eq!(deltackpt::decode(&blob, Some(&prev)).unwrap().data, state);
/// ```
pub fn decode_update(blob: &[u8], reference: &mut [u8]) -> Result<Header> {
    decode_update_with(blob, reference, None)
}

/// [`decode_update`] with the second moment of a [`Bound::Moment`] blob.
pub fn decode_update_with(
    blob: &[u8],
    reference: &mut [u8],
    moment: Option<&[u8]>,
) -> Result<Header> {
    let (header, chunks) = format::read(blob)?;
    check_plausible(&header, &chunks)?;
    let n = header.numel()? as usize * header.dtype.size();
    check_reference(&header, Some(reference), n)?;
    if matches!(header.quantizer, Quantizer::Exponent | Quantizer::Bounded) {
        // Both apply each chunk in place.
        decode_parsed(&header, &chunks, Base::Out, None, moment, reference)?;
    } else {
        let base = reference.to_vec();
        decode_parsed(
            &header,
            &chunks,
            Base::of(Some(&base)),
            Some(&base),
            moment,
            reference,
        )?;
    }
    Ok(header)
}

/// Decode parsed chunks into `out`, added to `base`; `reference` is what the blob's
/// fingerprint is checked against (`None` when `base` is `out` itself, checked by the caller).
fn decode_parsed(
    header: &Header,
    chunks: &[&[u8]],
    base: Base<'_>,
    reference: Option<&[u8]>,
    moment: Option<&[u8]>,
    out: &mut [u8],
) -> Result<()> {
    if !matches!(base, Base::Out) {
        check_reference(header, reference, out.len())?;
    }
    if moment.is_some() && header.quantizer != Quantizer::Bounded {
        return Err(Error::ReferenceMismatch(
            "this blob was encoded without a second moment; decode it without one".into(),
        ));
    }
    let chunk_elems = header.chunk_elems as usize;
    parallel::install(|| match header.quantizer {
        Quantizer::None => {
            lossless::decode_chunks(header.dtype, chunks, chunk_elems, reference, out)
        }
        Quantizer::Exponent => decode_exponent(header, chunks, chunk_elems, base, out),
        Quantizer::Uniform | Quantizer::Lattice => {
            decode_scalar(header, chunks, chunk_elems, reference, out)
        }
        Quantizer::Bounded => bounded::decode(
            header.dtype,
            &header.params,
            chunks,
            chunk_elems,
            base,
            moment,
            out,
        ),
    })
}

/// The reference given matches the blob's: present exactly when the blob is a delta, of the
/// tensor's size (`out_len` bytes), with the fingerprint the blob records.
pub(crate) fn check_reference(
    header: &Header,
    reference: Option<&[u8]>,
    out_len: usize,
) -> Result<()> {
    match (header.reference_hash, reference) {
        (None, Some(_)) => {
            return Err(Error::ReferenceMismatch(
                "this blob was encoded without a reference; decode it without one".into(),
            ))
        }
        (Some(_), None) => {
            return Err(Error::ReferenceMismatch(
                "this blob is a delta: pass the reference it was encoded against".into(),
            ))
        }
        (Some(h), Some(r)) => {
            if r.len() != out_len {
                return Err(Error::ReferenceMismatch(format!(
                    "reference holds {} bytes; the blob's tensor ({} {:?}) needs {}",
                    r.len(),
                    header.dtype.name(),
                    header.shape,
                    out_len
                )));
            }
            if xxhash_rust::xxh3::xxh3_64(r) != h {
                return Err(Error::ReferenceMismatch(
                    "the reference differs from the one this blob was encoded against".into(),
                ));
            }
        }
        (None, None) => {}
    }
    Ok(())
}

fn decode_exponent(
    header: &Header,
    chunks: &[&[u8]],
    chunk_elems: usize,
    base: Base<'_>,
    out: &mut [u8],
) -> Result<()> {
    let dtype = header.dtype;
    let table = exponent_table(header)?;
    if dtype == DType::F64 {
        apply_chunks::<f64>(header, chunks, chunk_elems, &table, base, out)
    } else {
        apply_chunks::<f32>(header, chunks, chunk_elems, &table, base, out)
    }
}

/// An exponent blob's table, refused when larger than its bit width allows.
fn exponent_table(header: &Header) -> Result<Vec<f64>> {
    let table = header.table()?;
    if header.bits == 0 || header.bits > 8 || table.len() > (1usize << header.bits) - 1 {
        return Err(Error::corrupt(
            "exponent table larger than its bit width allows",
        ));
    }
    Ok(table)
}

fn apply_chunks<T: Work>(
    header: &Header,
    chunks: &[&[u8]],
    chunk_elems: usize,
    table: &[f64],
    base: Base<'_>,
    out: &mut [u8],
) -> Result<()> {
    let dtype = header.dtype;
    let size = dtype.size();
    let chunk_bytes = chunk_elems * size;
    let values: Vec<T> = table.iter().map(|&v| T::from_f64(v)).collect();
    let lut = exponent::lookup_table(&values);
    out.par_chunks_mut(chunk_bytes)
        .zip(chunks.par_iter())
        .enumerate()
        .try_for_each(|(i, (o, c))| {
            let b = base.chunk(i, chunk_bytes, o.len());
            apply_chunk(dtype, c, table.len(), &lut, b, o)
        })
}

/// Decode one exponent chunk `c` and write `base + value` into `o`: the one per-chunk step
/// of [`decode`], [`decode_update`] and the fused chain restore ([`ExpInPlace`]).
fn apply_chunk<T: Work>(
    dtype: DType,
    c: &[u8],
    table_len: usize,
    lut: &[T; 256],
    base: Base<'_>,
    o: &mut [u8],
) -> Result<()> {
    let mut sym = try_take_scratch(&SCRATCH_SYM, o.len() / dtype.size())?;
    let done = entropy::decode_into(c, &mut sym)
        .and_then(|_| exponent::check_symbols(&sym, table_len))
        .map(|_| T::apply(dtype, &sym, lut, base, o));
    give_scratch(&SCRATCH_SYM, sym);
    done
}

/// The lookup table of an exponent blob in its working precision.
enum Lut {
    F32(Box<[f32; 256]>),
    F64(Box<[f64; 256]>),
}

/// One exponent blob applied in place chunk by chunk, for the fused chain restore
/// ([`crate::chain`]): each chunk exactly as [`decode_update`] applies it.
pub(crate) struct ExpInPlace {
    dtype: DType,
    table_len: usize,
    lut: Lut,
}

impl ExpInPlace {
    /// The applier of an exponent blob's header (its table checked as [`decode`] checks it).
    pub(crate) fn new(header: &Header) -> Result<Self> {
        let table = exponent_table(header)?;
        let lut = if header.dtype == DType::F64 {
            let t: Vec<f64> = table.iter().map(|&v| f64::from_f64(v)).collect();
            Lut::F64(Box::new(exponent::lookup_table(&t)))
        } else {
            let t: Vec<f32> = table.iter().map(|&v| f32::from_f64(v)).collect();
            Lut::F32(Box::new(exponent::lookup_table(&t)))
        };
        Ok(ExpInPlace {
            dtype: header.dtype,
            table_len: table.len(),
            lut,
        })
    }

    /// Add chunk `c`'s dequantized delta to `out` (the chunk's reference, in place).
    pub(crate) fn apply(&self, c: &[u8], out: &mut [u8]) -> Result<()> {
        match &self.lut {
            Lut::F32(l) => apply_chunk(self.dtype, c, self.table_len, l, Base::Out, out),
            Lut::F64(l) => apply_chunk(self.dtype, c, self.table_len, l, Base::Out, out),
        }
    }
}

fn decode_scalar(
    header: &Header,
    chunks: &[&[u8]],
    chunk_elems: usize,
    reference: Option<&[u8]>,
    out: &mut [u8],
) -> Result<()> {
    let dtype = header.dtype;
    let size = dtype.size();
    let numel = out.len() / size;
    let mut symbols = entropy::try_alloc(header.stream_len()? as usize)?;
    symbols
        .par_chunks_mut(chunk_elems)
        .zip(chunks.par_iter())
        .try_for_each(|(s, c)| entropy::decode_into(c, s))?;
    let values = if header.quantizer == Quantizer::Uniform {
        scalar::uniform_decode(&symbols, &header.params)?
    } else {
        scalar::lattice_decode(&symbols, &header.params, header.bits, numel)?
    };
    let chunk_bytes = chunk_elems * size;
    out.par_chunks_mut(chunk_bytes)
        .zip(values.par_chunks(chunk_elems))
        .enumerate()
        .for_each(|(i, (o, v))| {
            let r = chunk_of(reference, i, chunk_bytes, o.len());
            if dtype == DType::F64 {
                let mut w = v.to_vec();
                if let Some(r) = r {
                    for (w, c) in w.iter_mut().zip(r.chunks_exact(8)) {
                        *w += f64::from_le_bytes(c.try_into().unwrap());
                    }
                }
                float::from_f64(&w, o);
            } else {
                // Same arithmetic as the exponent path: the delta in f32, added in f32.
                let mut w: Vec<f32> = v.iter().map(|&x| x as f32).collect();
                if let Some(r) = r {
                    let mut base = vec![0f32; w.len()];
                    float::to_f32(dtype, r, &mut base);
                    for (w, b) in w.iter_mut().zip(&base) {
                        *w += b;
                    }
                }
                float::from_f32(dtype, &w, o);
            }
        });
    Ok(())
}
