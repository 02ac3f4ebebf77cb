//! Floating-point element types, conversions and byte planes.
//!
//! Tensors cross the API as little-endian bytes plus a [`DType`]. Lossy quantizers work on a
//! "working" float: `f32` for `f32`, `f16` and `bf16` tensors, `f64` for `f64` tensors.
//! Lossless coding splits elements into byte planes after rotating the sign bit to the bottom,
//! so that the first plane holds the (highly skewed) exponent bits.

use crate::error::{Error, Result};

/// Element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE 754 binary32.
    F32,
    /// IEEE 754 binary64.
    F64,
    /// IEEE 754 binary16.
    F16,
    /// bfloat16 (the upper half of a binary32).
    BF16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 => 8,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// The name used by the Python API (`"float32"`, `"float64"`, `"float16"`, `"bfloat16"`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
        }
    }

    /// Parse a dtype name (see [`DType::name`]).
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "float32" => DType::F32,
            "float64" => DType::F64,
            "float16" => DType::F16,
            "bfloat16" => DType::BF16,
            other => {
                return Err(Error::invalid(format!(
                    "unsupported dtype {other:?}; deltackpt encodes float32, float64, float16 and bfloat16"
                )))
            }
        })
    }

    /// Identifier stored in the container.
    pub(crate) fn id(self) -> u8 {
        match self {
            DType::F32 => 1,
            DType::F64 => 2,
            DType::F16 => 3,
            DType::BF16 => 4,
        }
    }

    /// Inverse of [`DType::id`].
    pub(crate) fn from_id(id: u8) -> Result<Self> {
        Ok(match id {
            1 => DType::F32,
            2 => DType::F64,
            3 => DType::F16,
            4 => DType::BF16,
            other => return Err(Error::corrupt(format!("unknown dtype id {other}"))),
        })
    }
}

/// Convert little-endian elements of a 16- or 32-bit dtype to `f32` (exact).
pub fn to_f32(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    match dtype {
        DType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
            }
        }
        DType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        DType::F64 => unreachable!("f64 tensors are worked on as f64"),
    }
}

/// Convert `f32` values to little-endian elements of a 16- or 32-bit dtype, rounding to
/// nearest even.
pub fn from_f32(dtype: DType, values: &[f32], out: &mut [u8]) {
    match dtype {
        DType::F32 => {
            for (c, v) in out.chunks_exact_mut(4).zip(values) {
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
        DType::BF16 => {
            for (c, v) in out.chunks_exact_mut(2).zip(values) {
                c.copy_from_slice(&half::bf16::from_f32(*v).to_bits().to_le_bytes());
            }
        }
        DType::F16 => {
            for (c, v) in out.chunks_exact_mut(2).zip(values) {
                c.copy_from_slice(&half::f16::from_f32(*v).to_bits().to_le_bytes());
            }
        }
        DType::F64 => unreachable!("f64 tensors are worked on as f64"),
    }
}

/// Read little-endian `f64` elements.
pub fn to_f64(bytes: &[u8], out: &mut [f64]) {
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
        *o = f64::from_le_bytes(c.try_into().unwrap());
    }
}

/// Write little-endian `f64` elements.
pub fn from_f64(values: &[f64], out: &mut [u8]) {
    for (c, v) in out.chunks_exact_mut(8).zip(values) {
        c.copy_from_slice(&v.to_le_bytes());
    }
}

/// Split elements of `size` bytes into `size` byte planes, most significant first, after
/// rotating each element's bits left by one (sign bit to the bottom). With `xor` (a reference
/// of the same length), elements are first XORed with it bit for bit. (A `Vec` front end of
/// [`crate::planes::split`].)
///
/// `planes` must hold `size` buffers; each is resized to `bytes.len() / size` bytes.
pub fn split_planes(size: usize, bytes: &[u8], xor: Option<&[u8]>, planes: &mut [Vec<u8>]) {
    let n = bytes.len() / size;
    let mut views: Vec<&mut [u8]> = planes
        .iter_mut()
        .map(|p| {
            p.clear();
            p.resize(n, 0);
            p.as_mut_slice()
        })
        .collect();
    crate::planes::split(size, bytes, xor, &mut views);
}

/// Inverse of [`split_planes`]: interleave planes back into elements, XOR with `xor` if given.
pub fn merge_planes(size: usize, planes: &[Vec<u8>], xor: Option<&[u8]>, out: &mut [u8]) {
    let views: Vec<&[u8]> = planes.iter().map(|p| p.as_slice()).collect();
    crate::planes::merge(size, &views, xor, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planes_round_trip_every_size() {
        let bytes: Vec<u8> = (0..64u32).map(|i| (i * 37 + 11) as u8).collect();
        let refr: Vec<u8> = (0..64u32).map(|i| (i * 13 + 5) as u8).collect();
        for size in [2, 4, 8] {
            for xor in [None, Some(&refr[..])] {
                let mut planes = vec![Vec::new(); size];
                split_planes(size, &bytes, xor, &mut planes);
                let mut out = vec![0u8; bytes.len()];
                merge_planes(size, &planes, xor, &mut out);
                assert_eq!(out, bytes);
            }
        }
    }

    #[test]
    fn first_plane_of_f32_is_the_exponent() {
        let x = (-1.5f32).to_le_bytes();
        let mut planes = vec![Vec::new(); 4];
        split_planes(4, &x, None, &mut planes);
        assert_eq!(planes[0][0], 127); // biased exponent of 1.5
        assert_eq!(planes[3][0] & 1, 1); // sign moved to the lowest bit
    }
}
