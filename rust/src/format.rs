//! The tensor container: header, quantizer parameters, chunk index, payload, checksum.
//!
//! Layout (all integers little-endian; byte-by-byte description in `docs/FORMAT.md`):
//!
//! ```text
//! "DKPT" | version u8 | dtype u8 | quantizer u8 | coder u8 | bits u8 | flags u8 | ndim u8 | tag u8
//! dims: ndim × u64
//! [reference fingerprint: u64 xxh3-64 of the reference bytes, if flags bit 0]
//! params_len u32 | params (quantizer-specific)
//! chunk_elems u64 | n_chunks u32 | n_chunks × u64 chunk sizes
//! chunk payloads
//! checksum: u64 xxh3-64 of every byte before it
//! ```

use crate::entropy::Coder;
use crate::error::{Error, Result};
use crate::float::DType;

/// The 4-byte magic at the start of every blob.
pub const MAGIC: &[u8; 4] = b"DKPT";
/// The container version this build writes and reads.
pub const VERSION: u8 = 1;

/// Largest chunk size (elements) a blob may declare (the entropy container's chunk cap too).
/// A decoder's per-chunk scratch is sized from this bound, never from what a blob asks for: a
/// forged header declaring one huge chunk is refused before anything is allocated.
pub const MAX_CHUNK_ELEMS: u64 = 1 << 20;

/// Flag bit: the blob is a delta against a reference.
pub const FLAG_REFERENCE: u8 = 1;
/// Flag bit: kept buckets hold their midpoint (not their mean); informational.
pub const FLAG_MIDPOINT: u8 = 2;

/// Which quantizer produced the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Quantizer {
    /// Lossless, bit-exact.
    None,
    /// Exponent buckets with priority promotion (LC-checkpoint).
    Exponent,
    /// Uniform scalar quantization (symmetric with a zero point of 0, or affine).
    Uniform,
    /// Lattice quantization of blocks with Babai's nearest plane (LatticeQ).
    Lattice,
    /// Error-bounded: a delta on a grid chosen for a promised bound (absolute, relative L2,
    /// pointwise relative, or relative to a second moment), checked by the encoder.
    Bounded,
}

impl Quantizer {
    /// Parse `"none"`, `"exponent"`, `"uniform"` or `"lattice"`.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "none" => Ok(Quantizer::None),
            "exponent" => Ok(Quantizer::Exponent),
            "uniform" => Ok(Quantizer::Uniform),
            "lattice" => Ok(Quantizer::Lattice),
            "bounded" => Ok(Quantizer::Bounded),
            other => Err(Error::invalid(format!(
                "unknown quantizer {other:?}; expected \"none\", \"exponent\", \"uniform\", \"lattice\" or \"bounded\""
            ))),
        }
    }
    /// The quantizer's name.
    pub fn name(self) -> &'static str {
        match self {
            Quantizer::None => "none",
            Quantizer::Exponent => "exponent",
            Quantizer::Uniform => "uniform",
            Quantizer::Lattice => "lattice",
            Quantizer::Bounded => "bounded",
        }
    }
    fn id(self) -> u8 {
        match self {
            Quantizer::None => 0,
            Quantizer::Exponent => 1,
            Quantizer::Uniform => 2,
            Quantizer::Lattice => 3,
            Quantizer::Bounded => 4,
        }
    }
    fn from_id(id: u8) -> Result<Self> {
        match id {
            0 => Ok(Quantizer::None),
            1 => Ok(Quantizer::Exponent),
            2 => Ok(Quantizer::Uniform),
            3 => Ok(Quantizer::Lattice),
            4 => Ok(Quantizer::Bounded),
            other => Err(Error::Unsupported(format!(
                "quantizer id {other} is unknown to this build; upgrade deltackpt"
            ))),
        }
    }
}

/// Everything the container says about a tensor, without its payload.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    /// Element type.
    pub dtype: DType,
    /// Dimensions, row-major.
    pub shape: Vec<u64>,
    /// The quantizer.
    pub quantizer: Quantizer,
    /// The coder requested at encode time (chunks record what they actually use).
    pub coder: Coder,
    /// Quantizer bit width (0 for lossless).
    pub bits: u8,
    /// Flag bits (see `FLAG_*`).
    pub flags: u8,
    /// xxh3-64 of the reference's bytes when the blob is a delta.
    pub reference_hash: Option<u64>,
    /// Quantizer parameters (for the exponent quantizer: the table, see [`Header::table`]).
    pub params: Vec<u8>,
    /// Elements per chunk (the last chunk may be shorter).
    pub chunk_elems: u64,
    /// Encoded size of each chunk.
    pub chunk_sizes: Vec<u64>,
    /// A byte free for the caller (the Python layer records whether a torch tensor was
    /// encoded, so that decode returns the same kind).
    pub tag: u8,
}

impl Header {
    /// Number of elements (checked product of the dimensions).
    pub fn numel(&self) -> Result<u64> {
        self.shape.iter().try_fold(1u64, |acc, &d| {
            acc.checked_mul(d)
                .ok_or_else(|| Error::corrupt("shape overflows 64 bits"))
        })
    }

    /// Number of elements (lossless) or symbols (quantizers) the chunks hold: the element
    /// count, except for the lattice quantizer, which pads the last block.
    pub fn stream_len(&self) -> Result<u64> {
        let n = self.numel()?;
        if self.quantizer == Quantizer::Lattice {
            let dim = crate::scalar::lattice_dim(&self.params)? as u64;
            return Ok(n.div_ceil(dim) * dim);
        }
        Ok(n)
    }

    /// Uniform quantizer parameters (`None` for other quantizers).
    pub fn uniform_params(&self) -> Result<Option<crate::quant::uniform::UniformParams>> {
        if self.quantizer != Quantizer::Uniform {
            return Ok(None);
        }
        crate::scalar::uniform_params(&self.params).map(Some)
    }

    /// Lattice block dimension and basis, rows = basis vectors (`None` for other quantizers).
    pub fn lattice_basis(&self) -> Result<Option<(usize, Vec<f32>)>> {
        if self.quantizer != Quantizer::Lattice {
            return Ok(None);
        }
        let dim = crate::scalar::lattice_dim(&self.params)?;
        if self.params.len() != 1 + dim * dim * 4 {
            return Err(Error::corrupt("lattice parameters have the wrong length"));
        }
        let basis = self.params[1..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        Ok(Some((dim, basis)))
    }

    /// Error-bounded quantizer parameters (`None` for other quantizers).
    pub fn bounded_params(&self) -> Result<Option<crate::bounded::BoundedParams>> {
        if self.quantizer != Quantizer::Bounded {
            return Ok(None);
        }
        crate::bounded::read_params(&self.params).map(Some)
    }

    /// The exponent table as f64 values (f32 tables widened).
    pub fn table(&self) -> Result<Vec<f64>> {
        if self.quantizer != Quantizer::Exponent {
            return Ok(Vec::new());
        }
        let w = if self.dtype == DType::F64 { 8 } else { 4 };
        let p = &self.params;
        if p.is_empty() || p.len() != 1 + p[0] as usize * w {
            return Err(Error::corrupt("exponent table has the wrong length"));
        }
        Ok(p[1..]
            .chunks_exact(w)
            .map(|c| {
                if w == 8 {
                    f64::from_le_bytes(c.try_into().unwrap())
                } else {
                    f32::from_le_bytes(c.try_into().unwrap()) as f64
                }
            })
            .collect())
    }
}

fn coder_id(c: Coder) -> u8 {
    match c {
        Coder::Auto => 0,
        Coder::Raw => 1,
        Coder::Zstd => 2,
        Coder::Gzip => 3,
        Coder::Tans => 4,
        Coder::Huffman => 5,
        Coder::Lz77 => 6,
    }
}

fn coder_from_id(id: u8) -> Result<Coder> {
    Ok(match id {
        0 => Coder::Auto,
        1 => Coder::Raw,
        2 => Coder::Zstd,
        3 => Coder::Gzip,
        4 => Coder::Tans,
        5 => Coder::Huffman,
        6 => Coder::Lz77,
        other => {
            return Err(Error::Unsupported(format!(
                "coder id {other} is unknown to this build; upgrade deltackpt"
            )))
        }
    })
}

/// The 128-bit checksum (xxh3-128, little-endian) that the Python layer frames checkpoint files
/// with: a fast guard against corrupted or truncated storage, not against deliberate forgery.
pub fn checksum128(data: &[u8]) -> [u8; 16] {
    xxhash_rust::xxh3::xxh3_128(data).to_le_bytes()
}

/// Serialize `header` followed by `chunks` and the checksum.
pub fn write(header: &Header, chunks: &[Vec<u8>]) -> Vec<u8> {
    let payload: usize = chunks.iter().map(|c| c.len()).sum();
    let mut out = Vec::with_capacity(64 + header.shape.len() * 8 + chunks.len() * 8 + payload);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[
        VERSION,
        header.dtype.id(),
        header.quantizer.id(),
        coder_id(header.coder),
        header.bits,
        header.flags,
        header.shape.len() as u8,
        header.tag,
    ]);
    for d in &header.shape {
        out.extend_from_slice(&d.to_le_bytes());
    }
    if let Some(h) = header.reference_hash {
        out.extend_from_slice(&h.to_le_bytes());
    }
    out.extend_from_slice(&(header.params.len() as u32).to_le_bytes());
    out.extend_from_slice(&header.params);
    out.extend_from_slice(&header.chunk_elems.to_le_bytes());
    out.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
    for c in chunks {
        out.extend_from_slice(&(c.len() as u64).to_le_bytes());
    }
    for c in chunks {
        out.extend_from_slice(c);
    }
    let sum = xxhash_rust::xxh3::xxh3_64(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// A cursor over untrusted bytes; every read is bounds-checked.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| Error::corrupt(format!("blob truncated while reading {what}")))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }
}

/// Parse and verify a blob: returns the header and one slice per chunk.
///
/// The checksum is verified before anything else is trusted, so truncation and bit flips give
/// [`Error::Corrupt`]; a blob with a valid checksum but an unknown version gives
/// [`Error::Unsupported`].
pub fn read(blob: &[u8]) -> Result<(Header, Vec<&[u8]>)> {
    if blob.len() < 4 || &blob[..4] != MAGIC {
        return Err(Error::corrupt(
            "not a deltackpt blob (missing the \"DKPT\" magic bytes)",
        ));
    }
    if blob.len() < 12 + 8 {
        return Err(Error::corrupt(
            "blob truncated: shorter than its fixed header",
        ));
    }
    let (body, sum) = blob.split_at(blob.len() - 8);
    if xxhash_rust::xxh3::xxh3_64(body) != u64::from_le_bytes(sum.try_into().unwrap()) {
        return Err(Error::corrupt(
            "checksum mismatch: the blob was truncated or modified",
        ));
    }
    let mut r = Reader { data: body, pos: 4 };
    let version = r.u8("version")?;
    if version != VERSION {
        return Err(Error::Unsupported(format!(
            "blob format version {version}; this build reads version {VERSION}: upgrade deltackpt"
        )));
    }
    let dtype = DType::from_id(r.u8("dtype")?)?;
    let quantizer = Quantizer::from_id(r.u8("quantizer")?)?;
    let coder = coder_from_id(r.u8("coder")?)?;
    let bits = r.u8("bits")?;
    let flags = r.u8("flags")?;
    let ndim = r.u8("ndim")? as usize;
    let tag = r.u8("tag")?;
    let mut shape = Vec::with_capacity(ndim);
    for _ in 0..ndim {
        shape.push(r.u64("dims")?);
    }
    let reference_hash = if flags & FLAG_REFERENCE != 0 {
        Some(r.u64("reference fingerprint")?)
    } else {
        None
    };
    let plen = r.u32("params length")? as usize;
    let params = r.take(plen, "params")?.to_vec();
    let chunk_elems = r.u64("chunk size")?;
    let n_chunks = r.u32("chunk count")? as usize;
    let index = r.take(
        n_chunks
            .checked_mul(8)
            .ok_or_else(|| Error::corrupt("chunk count overflows"))?,
        "chunk index",
    )?;
    let chunk_sizes: Vec<u64> = index
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let header = Header {
        dtype,
        shape,
        quantizer,
        coder,
        bits,
        flags,
        reference_hash,
        params,
        chunk_elems,
        chunk_sizes,
        tag,
    };
    let numel = header.numel()?;
    let stream_len = header.stream_len()?;
    if chunk_elems == 0 || chunk_elems > MAX_CHUNK_ELEMS {
        return Err(Error::corrupt(format!(
            "chunk size {chunk_elems} is outside 1..={MAX_CHUNK_ELEMS}"
        )));
    }
    let expected_chunks = if stream_len == 0 {
        0
    } else {
        stream_len.div_ceil(chunk_elems)
    };
    if expected_chunks != n_chunks as u64 {
        return Err(Error::corrupt(format!(
            "{n_chunks} chunks where the shape needs {expected_chunks}"
        )));
    }
    numel
        .checked_mul(dtype.size() as u64)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| Error::corrupt("tensor size exceeds the address space"))?;
    let mut chunks = Vec::with_capacity(n_chunks);
    for &s in &header.chunk_sizes {
        let s = usize::try_from(s).map_err(|_| Error::corrupt("chunk size overflows"))?;
        chunks.push(r.take(s, "chunk payload")?);
    }
    if r.pos != body.len() {
        return Err(Error::corrupt("trailing bytes after the last chunk"));
    }
    Ok((header, chunks))
}
