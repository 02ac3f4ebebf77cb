//! Tensor encode/decode: the container around quantizers and entropy coders.

use rayon::prelude::*;

use crate::entropy::{self, Coder};
use crate::error::{Error, Result};
use crate::float::{self, DType};
use crate::format::{self, Header, Quantizer, FLAG_MIDPOINT, FLAG_REFERENCE};
use crate::lossless;
use crate::parallel;
use crate::quant::exponent::{self, BucketFloor, BucketValue, ExpFloat};
use crate::quant::lattice::FindBasisOptions;
use crate::scalar;

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
pub struct EncodeOptions {
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
}

impl Default for EncodeOptions {
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
    let chunks = parallel::install(|| match opts.quantizer {
        Quantizer::None => lossless::encode_chunks(x.dtype, x.data, reference, opts),
        Quantizer::Exponent => {
            header.bits = opts.bits;
            if opts.bucket_value == BucketValue::Midpoint {
                header.flags |= FLAG_MIDPOINT;
            }
            encode_exponent(x, reference, opts, &mut header.params)
        }
        Quantizer::Uniform | Quantizer::Lattice => {
            header.bits = opts.bits;
            let d = if x.dtype == DType::F64 {
                delta_f64(x.data, reference, opts.chunk_elems)
            } else {
                let d32 = delta_f32(x.dtype, x.data, reference, opts.chunk_elems);
                d32.par_iter().map(|&v| v as f64).collect()
            };
            let (symbols, params) = if opts.quantizer == Quantizer::Uniform {
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
            header.params = params;
            symbols
                .par_chunks(opts.chunk_elems)
                .map(|c| entropy::encode(c, opts.coder))
                .collect()
        }
    })?;
    header.chunk_sizes = chunks.iter().map(|c| c.len() as u64).collect();
    Ok(format::write(&header, &chunks))
}

/// The working-precision delta `x − reference` (or `x`).
fn delta_f32(dtype: DType, data: &[u8], reference: Option<&[u8]>, chunk: usize) -> Vec<f32> {
    let size = dtype.size();
    let n = data.len() / size;
    let mut d = vec![0f32; n];
    d.par_chunks_mut(chunk).enumerate().for_each(|(i, out)| {
        let lo = i * chunk * size;
        let hi = lo + out.len() * size;
        float::to_f32(dtype, &data[lo..hi], out);
        if let Some(r) = reference {
            let mut rv = vec![0f32; out.len()];
            float::to_f32(dtype, &r[lo..hi], &mut rv);
            for (o, r) in out.iter_mut().zip(&rv) {
                *o -= r;
            }
        }
    });
    d
}

fn delta_f64(data: &[u8], reference: Option<&[u8]>, chunk: usize) -> Vec<f64> {
    let n = data.len() / 8;
    let mut d = vec![0f64; n];
    d.par_chunks_mut(chunk).enumerate().for_each(|(i, out)| {
        let lo = i * chunk * 8;
        let hi = lo + out.len() * 8;
        float::to_f64(&data[lo..hi], out);
        if let Some(r) = reference {
            for (o, c) in out.iter_mut().zip(r[lo..hi].chunks_exact(8)) {
                *o -= f64::from_le_bytes(c.try_into().unwrap());
            }
        }
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

fn encode_exponent(
    x: Tensor<'_>,
    reference: Option<&[u8]>,
    opts: &EncodeOptions,
    params: &mut Vec<u8>,
) -> Result<Vec<Vec<u8>>> {
    // Quantize the working-precision delta; the table goes to the blob's parameters.
    fn quantize<T: ExpFloat + TableBytes>(
        d: &[T],
        opts: &EncodeOptions,
        params: &mut Vec<u8>,
    ) -> Result<Vec<u8>> {
        let mut s = vec![0u8; d.len()];
        let table = exponent::quantize_into_floor(
            d,
            opts.bits,
            opts.bucket_value,
            &mut s,
            opts.bucket_floor,
        )?;
        write_table(&table, params);
        Ok(s)
    }
    let symbols = if x.dtype == DType::F64 {
        quantize(
            &delta_f64(x.data, reference, opts.chunk_elems),
            opts,
            params,
        )
    } else {
        quantize(
            &delta_f32(x.dtype, x.data, reference, opts.chunk_elems),
            opts,
            params,
        )
    }
    .map_err(|e| with_delta_context(e, reference.is_some()))?;
    symbols
        .par_chunks(opts.chunk_elems)
        .map(|c| entropy::encode(c, opts.coder))
        .collect()
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
            exponent::key_histogram(&delta_f64(x.data, reference, DEFAULT_CHUNK_ELEMS))
        } else {
            exponent::key_histogram(&delta_f32(x.dtype, x.data, reference, DEFAULT_CHUNK_ELEMS))
        }
    }))
}

/// Read a blob's header without decoding its payload (the checksum is verified).
pub fn inspect(blob: &[u8]) -> Result<Header> {
    Ok(format::read(blob)?.0)
}

/// Decode a blob. A blob encoded against a reference needs the same reference (checked
/// against the fingerprint stored in the blob).
pub fn decode(blob: &[u8], reference: Option<&[u8]>) -> Result<Decoded> {
    let (header, chunks) = format::read(blob)?;
    check_plausible(&header, &chunks)?;
    let n = header.numel()? as usize;
    let mut data = entropy::try_alloc(n * header.dtype.size())?;
    decode_parsed(&header, &chunks, reference, &mut data)?;
    Ok(Decoded {
        dtype: header.dtype,
        shape: header.shape,
        tag: header.tag,
        data,
    })
}

/// Refuse blobs whose chunks cannot hold the symbols they declare, before allocating the
/// output (a forged shape would otherwise ask for any amount of memory).
fn check_plausible(header: &Header, chunks: &[&[u8]]) -> Result<()> {
    let stream_len = header.stream_len()? as usize;
    let per_chunk = header.chunk_elems as usize;
    for (i, c) in chunks.iter().enumerate() {
        let want = per_chunk.min(stream_len - i * per_chunk);
        let streams: Vec<&[u8]> = if header.quantizer == Quantizer::None {
            lossless::plane_streams(c, header.dtype.size())?
        } else {
            vec![c]
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
    decode_parsed(&header, &chunks, reference, out)?;
    Ok(header)
}

fn decode_parsed(
    header: &Header,
    chunks: &[&[u8]],
    reference: Option<&[u8]>,
    out: &mut [u8],
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
            if r.len() != out.len() {
                return Err(Error::ReferenceMismatch(format!(
                    "reference holds {} bytes; the blob's tensor ({} {:?}) needs {}",
                    r.len(),
                    header.dtype.name(),
                    header.shape,
                    out.len()
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
    let chunk_elems = header.chunk_elems as usize;
    parallel::install(|| match header.quantizer {
        Quantizer::None => {
            lossless::decode_chunks(header.dtype, chunks, chunk_elems, reference, out)
        }
        Quantizer::Exponent => decode_exponent(header, chunks, chunk_elems, reference, out),
        Quantizer::Uniform | Quantizer::Lattice => {
            decode_scalar(header, chunks, chunk_elems, reference, out)
        }
    })
}

fn decode_exponent(
    header: &Header,
    chunks: &[&[u8]],
    chunk_elems: usize,
    reference: Option<&[u8]>,
    out: &mut [u8],
) -> Result<()> {
    let dtype = header.dtype;
    let size = dtype.size();
    let table = header.table()?;
    if header.bits == 0 || header.bits > 8 || table.len() > (1usize << header.bits) - 1 {
        return Err(Error::corrupt(
            "exponent table larger than its bit width allows",
        ));
    }
    let chunk_bytes = chunk_elems * size;
    let t32: Vec<f32> = table.iter().map(|&v| v as f32).collect();
    out.par_chunks_mut(chunk_bytes)
        .zip(chunks.par_iter())
        .enumerate()
        .try_for_each(|(i, (o, c))| -> Result<()> {
            let m = o.len() / size;
            let mut sym = vec![0u8; m];
            entropy::decode_into(c, &mut sym)?;
            let r = reference.map(|r| &r[i * chunk_bytes..i * chunk_bytes + o.len()]);
            exponent::check_symbols(&sym, table.len())?;
            match dtype {
                DType::F32 => {
                    // The hot path: one fused pass, symbol -> value (+ reference) -> bytes.
                    let lut = exponent::lookup_table(&t32);
                    let outs = o.chunks_exact_mut(4).zip(&sym);
                    match r {
                        Some(r) => {
                            for ((o, s), rc) in outs.zip(r.chunks_exact(4)) {
                                let base = f32::from_le_bytes(rc.try_into().unwrap());
                                o.copy_from_slice(&(base + lut[*s as usize]).to_le_bytes());
                            }
                        }
                        None => {
                            for (o, s) in outs {
                                o.copy_from_slice(&lut[*s as usize].to_le_bytes());
                            }
                        }
                    }
                }
                DType::F64 => {
                    let mut v = vec![0f64; m];
                    if let Some(r) = r {
                        float::to_f64(r, &mut v);
                    }
                    let lut = exponent::lookup_table(&table);
                    for (v, s) in v.iter_mut().zip(&sym) {
                        *v += lut[*s as usize];
                    }
                    float::from_f64(&v, o);
                }
                DType::F16 | DType::BF16 => {
                    let mut v = vec![0f32; m];
                    if let Some(r) = r {
                        float::to_f32(dtype, r, &mut v);
                    }
                    let lut = exponent::lookup_table(&t32);
                    for (v, s) in v.iter_mut().zip(&sym) {
                        *v += lut[*s as usize];
                    }
                    float::from_f32(dtype, &v, o);
                }
            }
            Ok(())
        })
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
            let r = reference.map(|r| &r[i * chunk_bytes..i * chunk_bytes + o.len()]);
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
