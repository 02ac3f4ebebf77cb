//! Container glue for the uniform and lattice quantizers: delta in working precision →
//! codes → `u8` symbols + parameters, and back.
//!
//! Parameters stored in the blob (little-endian):
//! - uniform: `u8` symmetric flag, `f64` scale, `i64` zero point, `i32` qmin, `i32` qmax;
//!   symbols are `q − qmin`.
//! - lattice: `u8` block dimension n, then `n × n` `f32` basis (rows = basis vectors);
//!   the flattened delta is cut into blocks of n values, the last one zero-padded, so the
//!   symbol stream holds `⌈numel / n⌉ · n` symbols `c + 2^(bits−1)`.

use crate::error::{Error, Result};
use crate::quant::lattice::{self, FindBasisOptions};
use crate::quant::uniform::{self, UniformParams};

/// Quantize with the symmetric or affine uniform quantizer; returns symbols and parameters.
pub(crate) fn uniform_encode(d: &[f64], bits: u8, symmetric: bool) -> Result<(Vec<u8>, Vec<u8>)> {
    check_bits(bits)?;
    let (codes, p) = uniform::quantize(d, bits as u32, symmetric)?;
    let symbols = uniform::to_symbols(&codes, &p)?;
    let mut params = vec![symmetric as u8];
    params.extend_from_slice(&p.scale.to_le_bytes());
    params.extend_from_slice(&p.zero_point.to_le_bytes());
    params.extend_from_slice(&p.qmin.to_le_bytes());
    params.extend_from_slice(&p.qmax.to_le_bytes());
    Ok((symbols, params))
}

/// Parse uniform parameters.
pub(crate) fn uniform_params(params: &[u8]) -> Result<UniformParams> {
    if params.len() != 25 {
        return Err(Error::corrupt("uniform parameters have the wrong length"));
    }
    let p = UniformParams {
        scale: f64::from_le_bytes(params[1..9].try_into().unwrap()),
        zero_point: i64::from_le_bytes(params[9..17].try_into().unwrap()),
        qmin: i32::from_le_bytes(params[17..21].try_into().unwrap()),
        qmax: i32::from_le_bytes(params[21..25].try_into().unwrap()),
    };
    p.validate()
        .map_err(|e| Error::corrupt(format!("uniform parameters: {e}")))?;
    if (p.qmax as i64 - p.qmin as i64) > 255 {
        return Err(Error::corrupt("uniform code range exceeds u8 symbols"));
    }
    Ok(p)
}

/// Symbols a decoder turns into values at a time: a multiple of every lattice block
/// dimension (1–9), so that the codes and values in flight stay small whatever the tensor.
const PIECE: usize = 2520 * 128;

/// A buffer for `n` decoded values, allocated fallibly ([`Error::Corrupt`] when a blob's
/// shape asks for more memory than there is).
fn try_values(n: usize) -> Result<Vec<f64>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        Error::corrupt(format!(
            "the blob declares {n} values, more than memory allows"
        ))
    })?;
    Ok(v)
}

/// Symbols back to values (`f64`).
pub(crate) fn uniform_decode(symbols: &[u8], params: &[u8]) -> Result<Vec<f64>> {
    let p = uniform_params(params)?;
    let mut out = try_values(symbols.len())?;
    for piece in symbols.chunks(PIECE) {
        let codes = uniform::from_symbols(piece, &p).map_err(as_corrupt)?;
        out.extend(uniform::dequantize::<f64>(&codes, &p));
    }
    Ok(out)
}

/// Number of symbols the lattice quantizer stores for `numel` values in blocks of `dim`.
pub(crate) fn lattice_len(numel: usize, dim: usize) -> usize {
    numel.div_ceil(dim) * dim
}

/// Search a basis for the blocks of `d` and quantize them with Babai's nearest plane.
pub(crate) fn lattice_encode(
    d: &[f64],
    bits: u8,
    dim: usize,
    opts: &FindBasisOptions,
) -> Result<(Vec<u8>, Vec<u8>)> {
    check_bits(bits)?;
    if !(1..=9).contains(&dim) {
        return Err(Error::invalid(format!(
            "lattice block dimension must be 1..=9, got {dim}"
        )));
    }
    let mut blocks = d.to_vec();
    blocks.resize(lattice_len(d.len(), dim), 0.0);
    let basis = if blocks.is_empty() {
        identity(dim)
    } else {
        lattice::find_basis(&blocks, dim, bits as u32, opts)?
    };
    let codes = lattice::babai(&blocks, dim, &basis, bits as u32)?;
    let symbols = lattice::to_symbols(&codes, bits as u32)?;
    let mut params = vec![dim as u8];
    for v in &basis {
        params.extend_from_slice(&v.to_le_bytes());
    }
    Ok((symbols, params))
}

/// Symbols back to values (`f64`, `numel` of them: the padding is dropped).
pub(crate) fn lattice_decode(
    symbols: &[u8],
    params: &[u8],
    bits: u8,
    numel: usize,
) -> Result<Vec<f64>> {
    let dim = *params
        .first()
        .ok_or_else(|| Error::corrupt("lattice parameters are empty"))? as usize;
    if !(1..=9).contains(&dim) || params.len() != 1 + dim * dim * 4 {
        return Err(Error::corrupt("lattice parameters have the wrong length"));
    }
    if symbols.len() != lattice_len(numel, dim) {
        return Err(Error::corrupt(
            "lattice symbol count does not match the shape",
        ));
    }
    let basis: Vec<f32> = params[1..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let mut v = try_values(symbols.len())?;
    for piece in symbols.chunks(PIECE) {
        let codes = lattice::from_symbols(piece, bits as u32).map_err(as_corrupt)?;
        v.extend(lattice::dequantize::<f64>(&codes, dim, &basis).map_err(as_corrupt)?);
    }
    v.truncate(numel);
    Ok(v)
}

/// The block dimension stored in lattice parameters (validated by [`lattice_decode`]).
pub(crate) fn lattice_dim(params: &[u8]) -> Result<usize> {
    match params.first() {
        Some(&d) if (1..=9).contains(&d) => Ok(d as usize),
        _ => Err(Error::corrupt("lattice block dimension out of range")),
    }
}

fn identity(n: usize) -> Vec<f32> {
    (0..n * n)
        .map(|i| if i % (n + 1) == 0 { 1.0 } else { 0.0 })
        .collect()
}

fn check_bits(bits: u8) -> Result<()> {
    if !(1..=8).contains(&bits) {
        return Err(Error::invalid(format!(
            "bits must be between 1 and 8 to store codes in a blob, got {bits}"
        )));
    }
    Ok(())
}

/// Parameters read from a blob that the quantizer rejects mean the blob is corrupt.
fn as_corrupt(e: Error) -> Error {
    match e {
        Error::InvalidArgument(m) => Error::Corrupt(m),
        e => e,
    }
}
