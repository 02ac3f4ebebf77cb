//! Python bindings of deltackpt (module `deltackpt._core`): conversions and error mapping only.
//!
//! Tensors cross as 1-D `uint8` numpy arrays of little-endian element bytes plus a dtype name
//! and a shape; the Python layer (`deltackpt._tensors`) views them as numpy or torch tensors.
use numpy::{PyArray1, PyReadonlyArray1, PyReadwriteArray1};
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyType};

use deltackpt::entropy;
use deltackpt::quant::{exponent, lattice, uniform};
use deltackpt::{BucketValue, Coder, DType, EncodeOptions, Quantizer, Tensor};

/// A core error on its way to Python: the one place where Rust errors become exceptions.
struct DkError(deltackpt::Error);

impl From<deltackpt::Error> for DkError {
    fn from(e: deltackpt::Error) -> Self {
        DkError(e)
    }
}

static ERRORS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

impl From<DkError> for PyErr {
    fn from(DkError(e): DkError) -> PyErr {
        use deltackpt::Error as E;
        let name = match &e {
            E::Corrupt(_) => "CorruptDataError",
            E::Unsupported(_) => "UnsupportedError",
            E::NonFinite { .. } => "NonFiniteError",
            E::ReferenceMismatch(_) => "ReferenceMismatchError",
            E::InvalidArgument(_) => "InvalidArgumentError",
        };
        python_error(name, e.to_string())
    }
}

/// An instance of the class `name` of `deltackpt.errors` with message `msg`.
fn python_error(name: &str, msg: String) -> PyErr {
    Python::attach(|py| {
        let module =
            ERRORS.get_or_try_init(py, || py.import("deltackpt.errors").map(|m| m.unbind()));
        match module.and_then(|m| m.bind(py).getattr(name)) {
            Ok(cls) => match cls.cast_into::<PyType>() {
                Ok(t) => PyErr::from_type(t, msg),
                Err(_) => PyException::new_err(msg),
            },
            Err(_) => PyException::new_err(msg),
        }
    })
}

/// A bound from its Python name and values.
fn parse_bound(name: &str, value: f64, eps: f64) -> deltackpt::Result<deltackpt::Bound> {
    use deltackpt::Bound as B;
    let b = match name {
        "abs" => B::Abs(value),
        "rel" => B::Rel(value),
        "pointwise" => B::Pointwise(value),
        "moment" => B::Moment { t: value, eps },
        "each" => B::Each,
        other => {
            return Err(deltackpt::Error::invalid(format!(
                "unknown error bound {other:?}; expected one of \"abs\", \"rel\", \"pointwise\", \"moment\", \"each\""
            )))
        }
    };
    b.validate()?;
    Ok(b)
}

/// `(dtype name, shape, tag, element bytes)` of a decoded tensor.
type DecodedTuple<'py> = (String, Vec<u64>, u8, Bound<'py, PyArray1<u8>>);
/// `(symbols, table)` of the exponent quantizer.
type SymbolsTable<'py, T> = (Bound<'py, PyArray1<u8>>, Bound<'py, PyArray1<T>>);

/// Run heavy work without the GIL: the one helper every binding uses. A panic in the core (a
/// bug, or no worker thread could be started) becomes `deltackpt.errors.InternalError`, a
/// `DeltackptError`, never pyo3's `PanicException` (which `except Exception` misses).
fn without_gil<T: Send>(py: Python<'_>, f: impl FnOnce() -> T + Send) -> PyResult<T> {
    py.detach(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)))
        .map_err(|payload| {
            let what = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            python_error(
                "InternalError",
                format!("deltackpt's core failed: {what}; nothing was returned"),
            )
        })
}

#[pyfunction]
#[pyo3(signature = (data, dtype, shape, reference=None, quantizer="exponent", bits=3, coder="auto", bucket_value="mean", tag=0, symmetric=true, dim=3, lattice_iters=400, seed=0, floor_exponent=None, floor_sign=None, reconstruction=None, in_place=false, bound=None, bound_value=0.0, eps=0.0, moment=None))]
#[allow(clippy::too_many_arguments)]
fn encode<'py>(
    py: Python<'py>,
    data: PyReadonlyArray1<'py, u8>,
    dtype: &str,
    shape: Vec<u64>,
    reference: Option<PyReadonlyArray1<'py, u8>>,
    quantizer: &str,
    bits: u8,
    coder: &str,
    bucket_value: &str,
    tag: u8,
    symmetric: bool,
    dim: usize,
    lattice_iters: usize,
    seed: u64,
    floor_exponent: Option<u16>,
    floor_sign: Option<u8>,
    reconstruction: Option<PyReadwriteArray1<'py, u8>>,
    in_place: bool,
    bound: Option<&str>,
    bound_value: f64,
    eps: f64,
    moment: Option<PyReadonlyArray1<'py, u8>>,
) -> PyResult<Bound<'py, PyBytes>> {
    let moment = moment.as_ref().map(|m| m.as_slice()).transpose()?;
    let bound = bound
        .map(|b| parse_bound(b, bound_value, eps))
        .transpose()
        .map_err(DkError)?;
    let opts = EncodeOptions {
        bound,
        moment,
        quantizer: Quantizer::from_name(quantizer).map_err(DkError)?,
        bits,
        coder: Coder::from_name(coder).map_err(DkError)?,
        bucket_value: BucketValue::from_name(bucket_value).map_err(DkError)?,
        tag,
        symmetric,
        dim,
        lattice_iters,
        seed,
        bucket_floor: floor_exponent.map(|exponent| exponent::BucketFloor {
            exponent,
            sign: floor_sign,
        }),
        ..Default::default()
    };
    let dtype = DType::from_name(dtype).map_err(DkError)?;
    let data = data.as_slice()?;
    let x = Tensor {
        dtype,
        shape: &shape,
        data,
    };
    // With `in_place`, `reconstruction` holds the reference and is replaced by the result.
    let mut reconstruction = reconstruction;
    let out = reconstruction
        .as_mut()
        .map(|r| r.as_slice_mut())
        .transpose()?;
    let reference = reference.as_ref().map(|r| r.as_slice()).transpose()?;
    let blob = without_gil(py, || match out {
        Some(out) if in_place => deltackpt::encode_update(x, out, &opts),
        Some(out) => deltackpt::encode_reconstruct(x, reference, &opts, out),
        None => deltackpt::encode(x, reference, &opts),
    })?
    .map_err(DkError)?;
    Ok(PyBytes::new(py, &blob))
}

#[pyfunction]
#[pyo3(signature = (blob, reference=None, moment=None))]
fn decode<'py>(
    py: Python<'py>,
    blob: &[u8],
    reference: Option<PyReadonlyArray1<'py, u8>>,
    moment: Option<PyReadonlyArray1<'py, u8>>,
) -> PyResult<DecodedTuple<'py>> {
    let reference = reference.as_ref().map(|r| r.as_slice()).transpose()?;
    let moment = moment.as_ref().map(|m| m.as_slice()).transpose()?;
    let d =
        without_gil(py, || deltackpt::decode_with(blob, reference, moment))?.map_err(DkError)?;
    Ok((
        d.dtype.name().to_string(),
        d.shape,
        d.tag,
        PyArray1::from_vec(py, d.data),
    ))
}

/// Decode into `out` (the tensor's bytes); with `in_place`, `out` holds the reference and is
/// replaced by the result. Returns the header's dtype, shape and tag.
#[pyfunction]
#[pyo3(signature = (blob, out, reference=None, in_place=false, moment=None))]
fn decode_into<'py>(
    py: Python<'py>,
    blob: &[u8],
    mut out: PyReadwriteArray1<'py, u8>,
    reference: Option<PyReadonlyArray1<'py, u8>>,
    in_place: bool,
    moment: Option<PyReadonlyArray1<'py, u8>>,
) -> PyResult<(String, Vec<u64>, u8)> {
    let out = out.as_slice_mut()?;
    let moment = moment.as_ref().map(|m| m.as_slice()).transpose()?;
    let h = if in_place {
        without_gil(py, || deltackpt::decode_update_with(blob, out, moment))?
    } else {
        let reference = reference.as_ref().map(|r| r.as_slice()).transpose()?;
        without_gil(py, || {
            deltackpt::decode_into_with(blob, reference, moment, out)
        })?
    }
    .map_err(DkError)?;
    Ok((h.dtype.name().to_string(), h.shape, h.tag))
}

/// Apply the delta `blobs` in order to `out` (a `dtype` tensor of `shape`, the first blob's
/// reference) in one pass, clamping at 0 after the blobs whose `clamp0` is true.
#[pyfunction]
fn decode_chain_update<'py>(
    py: Python<'py>,
    blobs: Vec<Bound<'py, PyBytes>>,
    clamp0: Vec<bool>,
    mut out: PyReadwriteArray1<'py, u8>,
    dtype: &str,
    shape: Vec<u64>,
) -> PyResult<()> {
    if blobs.len() != clamp0.len() {
        return Err(DkError(deltackpt::Error::invalid("one clamp flag per blob")).into());
    }
    let dtype = DType::from_name(dtype).map_err(DkError)?;
    let links: Vec<deltackpt::ChainLink<'_>> = blobs
        .iter()
        .zip(&clamp0)
        .map(|(b, &c)| deltackpt::ChainLink {
            blob: b.as_bytes(),
            clamp0: c,
        })
        .collect();
    let out = out.as_slice_mut()?;
    without_gil(py, || {
        deltackpt::decode_chain_update(&links, dtype, &shape, out)
    })?
    .map_err(DkError)?;
    Ok(())
}

#[pyfunction]
#[pyo3(signature = (data, dtype, shape, reference=None))]
fn delta_histogram<'py>(
    py: Python<'py>,
    data: PyReadonlyArray1<'py, u8>,
    dtype: &str,
    shape: Vec<u64>,
    reference: Option<PyReadonlyArray1<'py, u8>>,
) -> PyResult<Bound<'py, PyArray1<u64>>> {
    let dtype = DType::from_name(dtype).map_err(DkError)?;
    let data = data.as_slice()?;
    let reference = reference.as_ref().map(|r| r.as_slice()).transpose()?;
    let x = Tensor {
        dtype,
        shape: &shape,
        data,
    };
    let h = without_gil(py, || deltackpt::delta_histogram(x, reference))?.map_err(DkError)?;
    Ok(PyArray1::from_vec(py, h))
}

/// xxh3-128 of `data` (16 bytes, little-endian): the checksum of framed chain files.
#[pyfunction]
fn checksum128<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    let sum = without_gil(py, || deltackpt::format::checksum128(data))?;
    Ok(PyBytes::new(py, &sum))
}

/// xxh3-128 of an array's bytes (`data`: a 1-D uint8 view, no copy): how a writer tells
/// whether a tensor it borrowed for a save still holds the saved values.
#[pyfunction]
fn fingerprint<'py>(
    py: Python<'py>,
    data: PyReadonlyArray1<'py, u8>,
) -> PyResult<Bound<'py, PyBytes>> {
    let data = data.as_slice()?;
    let sum = without_gil(py, || deltackpt::format::checksum128(data))?;
    Ok(PyBytes::new(py, &sum))
}

#[pyfunction]
fn inspect<'py>(py: Python<'py>, blob: &[u8]) -> PyResult<Bound<'py, PyDict>> {
    let h = deltackpt::inspect(blob).map_err(DkError)?;
    let d = PyDict::new(py);
    d.set_item("dtype", h.dtype.name())?;
    d.set_item("tag", h.tag)?;
    d.set_item("shape", h.shape.clone())?;
    d.set_item("quantizer", h.quantizer.name())?;
    d.set_item("coder", h.coder.name())?;
    d.set_item("bits", h.bits)?;
    d.set_item("has_reference", h.reference_hash.is_some())?;
    d.set_item(
        "bucket_value",
        if h.flags & deltackpt::format::FLAG_MIDPOINT != 0 {
            "midpoint"
        } else {
            "mean"
        },
    )?;
    d.set_item("table", h.table().map_err(DkError)?)?;
    if let Some(p) = h.uniform_params().map_err(DkError)? {
        d.set_item("scale", p.scale)?;
        d.set_item("zero_point", p.zero_point)?;
        d.set_item("qmin", p.qmin)?;
        d.set_item("qmax", p.qmax)?;
    }
    if let Some((dim, basis)) = h.lattice_basis().map_err(DkError)? {
        d.set_item("dim", dim)?;
        d.set_item("basis", basis)?;
    }
    if let Some(p) = h.bounded_params().map_err(DkError)? {
        d.set_item("bound", p.bound.name())?;
        d.set_item("bound_value", p.bound.value())?;
        if let deltackpt::Bound::Moment { eps, .. } = p.bound {
            d.set_item("eps", eps)?;
        }
        d.set_item("step", p.step)?;
        d.set_item("theta", p.theta)?;
        let m = PyDict::new(py);
        m.set_item("max_abs_error", p.measured.max_abs)?;
        m.set_item("rel_l2_error", p.measured.rel_l2)?;
        m.set_item("max_rel_error", p.measured.max_rel)?;
        d.set_item("measured", m)?;
    }
    d.set_item("chunks", h.chunk_sizes.len())?;
    d.set_item("chunk_elems", h.chunk_elems)?;
    d.set_item("payload_bytes", h.chunk_sizes.iter().sum::<u64>())?;
    d.set_item("total_bytes", blob.len())?;
    d.set_item("numel", h.numel().map_err(DkError)?)?;
    d.set_item(
        "raw_bytes",
        h.numel().map_err(DkError)? * h.dtype.size() as u64,
    )?;
    Ok(d)
}

#[pyfunction]
#[pyo3(signature = (symbols, coder="tans"))]
fn codec_encode<'py>(
    py: Python<'py>,
    symbols: PyReadonlyArray1<'py, u8>,
    coder: &str,
) -> PyResult<Bound<'py, PyBytes>> {
    let coder = Coder::from_name(coder).map_err(DkError)?;
    let s = symbols.as_slice()?;
    let blob = without_gil(py, || entropy::encode(s, coder))?.map_err(DkError)?;
    Ok(PyBytes::new(py, &blob))
}

#[pyfunction]
fn codec_decode<'py>(py: Python<'py>, blob: &[u8]) -> PyResult<Bound<'py, PyArray1<u8>>> {
    let v = without_gil(py, || entropy::decode(blob))?.map_err(DkError)?;
    Ok(PyArray1::from_vec(py, v))
}

/// The exponent quantizer for either float width (the two pyfunctions below are its faces).
fn quant_exponent<'py, T: exponent::ExpFloat + numpy::Element>(
    py: Python<'py>,
    delta: PyReadonlyArray1<'py, T>,
    bits: u8,
    bucket_value: &str,
) -> PyResult<SymbolsTable<'py, T>> {
    let value = BucketValue::from_name(bucket_value).map_err(DkError)?;
    let x = delta.as_slice()?;
    let (s, t) = without_gil(py, || {
        deltackpt::parallel::install(|| exponent::quantize(x, bits, value))
    })?
    .map_err(DkError)?;
    Ok((PyArray1::from_vec(py, s), PyArray1::from_vec(py, t)))
}

#[pyfunction]
#[pyo3(signature = (delta, bits=3, bucket_value="mean"))]
fn quant_exponent_f32<'py>(
    py: Python<'py>,
    delta: PyReadonlyArray1<'py, f32>,
    bits: u8,
    bucket_value: &str,
) -> PyResult<SymbolsTable<'py, f32>> {
    quant_exponent(py, delta, bits, bucket_value)
}

#[pyfunction]
#[pyo3(signature = (delta, bits=3, bucket_value="mean"))]
fn quant_exponent_f64<'py>(
    py: Python<'py>,
    delta: PyReadonlyArray1<'py, f64>,
    bits: u8,
    bucket_value: &str,
) -> PyResult<SymbolsTable<'py, f64>> {
    quant_exponent(py, delta, bits, bucket_value)
}

#[pyfunction]
#[pyo3(signature = (x, bits, symmetric, channels=0))]
fn quant_uniform<'py>(
    py: Python<'py>,
    x: PyReadonlyArray1<'py, f64>,
    bits: u32,
    symmetric: bool,
    channels: usize,
) -> PyResult<(Bound<'py, PyArray1<i32>>, UniformTuple)> {
    let x = x.as_slice()?;
    let (codes, params) = without_gil(py, || {
        if channels == 0 {
            uniform::quantize(x, bits, symmetric).map(|(c, p)| (c, vec![p]))
        } else {
            uniform::quantize_per_channel(x, channels, bits, symmetric)
        }
    })?
    .map_err(DkError)?;
    Ok((PyArray1::from_vec(py, codes), unpack_uniform(&params)))
}

/// `(scales, zero_points, qmins, qmaxs)`, one entry per channel.
type UniformTuple = (Vec<f64>, Vec<i64>, Vec<i32>, Vec<i32>);

fn unpack_uniform(p: &[uniform::UniformParams]) -> UniformTuple {
    (
        p.iter().map(|p| p.scale).collect(),
        p.iter().map(|p| p.zero_point).collect(),
        p.iter().map(|p| p.qmin).collect(),
        p.iter().map(|p| p.qmax).collect(),
    )
}

#[pyfunction]
fn quant_uniform_dequantize<'py>(
    py: Python<'py>,
    codes: PyReadonlyArray1<'py, i32>,
    params: UniformTuple,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let (scales, zps, qmins, qmaxs) = params;
    let p: Vec<uniform::UniformParams> = (0..scales.len())
        .map(|i| uniform::UniformParams {
            scale: scales[i],
            zero_point: zps[i],
            qmin: qmins[i],
            qmax: qmaxs[i],
        })
        .collect();
    for q in &p {
        q.validate().map_err(DkError)?;
    }
    let c = codes.as_slice()?;
    let v = without_gil(py, || uniform::dequantize_per_channel::<f64>(c, &p))?.map_err(DkError)?;
    Ok(PyArray1::from_vec(py, v))
}

#[pyfunction]
fn quant_babai<'py>(
    py: Python<'py>,
    blocks: PyReadonlyArray1<'py, f64>,
    n: usize,
    basis: PyReadonlyArray1<'py, f32>,
    bits: u32,
) -> PyResult<Bound<'py, PyArray1<i32>>> {
    let (b, basis) = (blocks.as_slice()?, basis.as_slice()?);
    let codes = without_gil(py, || lattice::babai(b, n, basis, bits))?.map_err(DkError)?;
    Ok(PyArray1::from_vec(py, codes))
}

#[pyfunction]
fn quant_lattice_dequantize<'py>(
    py: Python<'py>,
    codes: PyReadonlyArray1<'py, i32>,
    n: usize,
    basis: PyReadonlyArray1<'py, f32>,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let (c, basis) = (codes.as_slice()?, basis.as_slice()?);
    let v = without_gil(py, || lattice::dequantize::<f64>(c, n, basis))?.map_err(DkError)?;
    Ok(PyArray1::from_vec(py, v))
}

#[pyfunction]
#[pyo3(signature = (blocks, n, bits, iters=400, seed=0, loss="mce", channels=0))]
#[allow(clippy::too_many_arguments)]
fn quant_find_basis<'py>(
    py: Python<'py>,
    blocks: PyReadonlyArray1<'py, f64>,
    n: usize,
    bits: u32,
    iters: usize,
    seed: u64,
    loss: &str,
    channels: usize,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let opts = lattice::FindBasisOptions {
        iters,
        seed,
        loss: loss.parse().map_err(DkError)?,
        ..Default::default()
    };
    let b = blocks.as_slice()?;
    let basis = without_gil(py, || {
        if channels == 0 {
            lattice::find_basis(b, n, bits, &opts)
        } else {
            lattice::find_basis_per_channel(b, n, channels, bits, &opts)
        }
    })?
    .map_err(DkError)?;
    Ok(PyArray1::from_vec(py, basis))
}

#[pyfunction]
#[pyo3(signature = (blocks, n, basis, bits, loss="mce"))]
fn quant_lattice_error<'py>(
    py: Python<'py>,
    blocks: PyReadonlyArray1<'py, f64>,
    n: usize,
    basis: PyReadonlyArray1<'py, f32>,
    bits: u32,
    loss: &str,
) -> PyResult<f64> {
    let loss: lattice::Loss = loss.parse().map_err(DkError)?;
    let (b, basis) = (blocks.as_slice()?, basis.as_slice()?);
    Ok(without_gil(py, || lattice::error(b, n, basis, bits, loss))?.map_err(DkError)?)
}

#[pyfunction]
fn num_threads() -> usize {
    deltackpt::parallel::num_threads()
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(encode, m)?)?;
    m.add_function(wrap_pyfunction!(decode, m)?)?;
    m.add_function(wrap_pyfunction!(decode_into, m)?)?;
    m.add_function(wrap_pyfunction!(decode_chain_update, m)?)?;
    m.add_function(wrap_pyfunction!(inspect, m)?)?;
    m.add_function(wrap_pyfunction!(checksum128, m)?)?;
    m.add_function(wrap_pyfunction!(fingerprint, m)?)?;
    m.add_function(wrap_pyfunction!(delta_histogram, m)?)?;
    m.add_function(wrap_pyfunction!(codec_encode, m)?)?;
    m.add_function(wrap_pyfunction!(codec_decode, m)?)?;
    m.add_function(wrap_pyfunction!(quant_exponent_f32, m)?)?;
    m.add_function(wrap_pyfunction!(quant_exponent_f64, m)?)?;
    m.add_function(wrap_pyfunction!(quant_uniform, m)?)?;
    m.add_function(wrap_pyfunction!(quant_uniform_dequantize, m)?)?;
    m.add_function(wrap_pyfunction!(quant_babai, m)?)?;
    m.add_function(wrap_pyfunction!(quant_lattice_dequantize, m)?)?;
    m.add_function(wrap_pyfunction!(quant_find_basis, m)?)?;
    m.add_function(wrap_pyfunction!(quant_lattice_error, m)?)?;
    m.add_function(wrap_pyfunction!(num_threads, m)?)?;
    Ok(())
}
