//! The one error type of the crate.

/// Everything that can go wrong in deltackpt.
///
/// Bindings map each variant once to their own error hierarchy (Python: `CorruptDataError`,
/// `UnsupportedError`, `NonFiniteError`, `ReferenceMismatchError`, `ValueError`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input bytes are not a valid stream: truncated, bit-flipped, or forged.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// A valid stream that this build cannot read (newer format version, unknown coder id).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A lossy quantizer was given NaN or infinite values.
    #[error(
        "{count} non-finite value(s) (NaN or Inf), the first at flat index {first_index}{context}; \
         lossy quantizers need finite input: fix the tensor, or store it exactly with quantizer=\"none\""
    )]
    NonFinite {
        /// How many elements were NaN or ±Inf.
        count: u64,
        /// Flat (row-major) index of the first one.
        first_index: u64,
        /// Extra context, for example `" in the delta against the reference"` or a tensor name.
        context: String,
    },
    /// A reference tensor does not match the blob (shape, dtype or content fingerprint).
    #[error("reference mismatch: {0}")]
    ReferenceMismatch(String),
    /// An argument is out of range or inconsistent.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Build a [`Error::Corrupt`] from anything printable.
    pub fn corrupt(msg: impl Into<String>) -> Self {
        Error::Corrupt(msg.into())
    }
    /// Build an [`Error::InvalidArgument`] from anything printable.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
}
