//! Where a tensor codec reads its reference and writes its result: the roles of the caller's
//! buffers, shared by the tensor codec ([`crate::codec`]) and the container glue of each
//! quantizer, so that none of them depends on another.

/// The reference of an encode and where its reconstruction goes.
pub(crate) enum Target<'a> {
    /// No reconstruction.
    Plain(Option<&'a [u8]>),
    /// Reconstruction into a separate buffer.
    Into(Option<&'a [u8]>, &'a mut [u8]),
    /// The reference is replaced by the reconstruction.
    Update(&'a mut [u8]),
}

impl Target<'_> {
    /// The reference (for an update: the buffer, before it is overwritten).
    pub(crate) fn reference(&self) -> Option<&[u8]> {
        match self {
            Target::Plain(r) | Target::Into(r, _) => *r,
            Target::Update(r) => Some(r),
        }
    }
}

/// What decoded values are added to.
#[derive(Clone, Copy)]
pub(crate) enum Base<'a> {
    /// Nothing (a blob without a reference).
    Zero,
    /// A reference chunk.
    Ref(&'a [u8]),
    /// The output buffer itself, which holds the reference (an in-place update).
    Out,
}

impl<'a> Base<'a> {
    pub(crate) fn of(reference: Option<&'a [u8]>) -> Self {
        reference.map_or(Base::Zero, Base::Ref)
    }

    /// The base of chunk `i` (`len` bytes) of a buffer cut into chunks of `chunk_bytes`.
    pub(crate) fn chunk(self, i: usize, chunk_bytes: usize, len: usize) -> Self {
        match self {
            Base::Ref(r) => Base::of(chunk_of(Some(r), i, chunk_bytes, len)),
            other => other,
        }
    }
}

/// Chunk `i` (`len` bytes) of a buffer cut into chunks of `chunk_bytes`.
pub(crate) fn chunk_of(
    r: Option<&[u8]>,
    i: usize,
    chunk_bytes: usize,
    len: usize,
) -> Option<&[u8]> {
    r.map(|r| &r[i * chunk_bytes..i * chunk_bytes + len])
}
