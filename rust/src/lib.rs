//! deltackpt: quantizers and entropy coders for compressed training checkpoints.
#![deny(missing_docs)]

pub mod entropy;
pub mod error;
pub mod parallel;
pub mod quant;

pub use error::{Error, Result};
