//! deltackpt: quantizers and entropy coders for compressed training checkpoints.
//!
//! The crate is pure Rust and usable on its own. Its layers, one component per file:
//! - [`quant`]: quantizers (exponent buckets from LC-checkpoint, ...);
//! - [`entropy`]: coders for byte symbol streams;
//! - [`float`]: dtypes, conversions and byte planes; [`lossless`]: bit-exact float coding;
//! - [`format`]: the self-describing, checksummed container; [`codec`]: tensor encode/decode.
//!
//! ```
//! use deltackpt::{encode, decode, DType, EncodeOptions, Tensor};
//! // A training delta: the new weights against the previous reconstruction.
//! let prev: Vec<f32> = (0..4096).map(|i| (i as f32).cos()).collect();
//! let next: Vec<f32> = prev.iter().enumerate().map(|(i, w)| w + 1e-3 * ((i % 7) as f32 - 3.0)).collect();
//! let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
//! let (p, n) = (bytes(&prev), bytes(&next));
//! let x = Tensor { dtype: DType::F32, shape: &[64, 64], data: &n };
//! let blob = encode(x, Some(&p), &EncodeOptions::default()).unwrap(); // 3-bit exponent buckets
//! assert!(blob.len() < n.len() / 8);
//! let restored = decode(&blob, Some(&p)).unwrap();
//! assert_eq!(restored.shape, vec![64, 64]);
//! ```
#![deny(missing_docs)]

mod bounded;
mod bounded_kernels;
pub mod chain;
pub mod codec;
pub mod entropy;
pub mod error;
pub mod float;
pub mod format;
pub mod lossless;
pub mod parallel;
pub mod planes;
pub mod quant;
mod scalar;
mod target;

pub use bounded::{BoundedParams, Measured};
pub use chain::{decode_chain_update, ChainLink};
pub use codec::{
    decode, decode_into, decode_into_with, decode_update, decode_update_with, decode_with,
    delta_histogram, encode, encode_reconstruct, encode_update, inspect, Decoded, EncodeOptions,
    Tensor,
};
pub use entropy::Coder;
pub use error::{Error, Result};
pub use float::DType;
pub use format::{Header, Quantizer};
pub use quant::bounded::Bound;
pub use quant::exponent::BucketValue;

/// The README's Rust example, compiled and run as a doc-test.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
