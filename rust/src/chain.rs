//! A chain of deltas restored in one pass over the output: every delta of a chunk applied
//! while the chunk is in cache, instead of one pass over the whole tensor per delta.
//!
//! [`decode_chain_update`] gives exactly the bytes of [`crate::decode_update`] applied link
//! by link (each followed by a clamp at 0 where asked): each chunk goes through the same
//! per-chunk step as the unfused decoders. Every blob's reference fingerprint is still
//! checked: the intermediate states never exist whole, so each is hashed as it passes, chunk
//! after chunk in order (workers take chunks in order; the worker of a later chunk waits for
//! its turn at each link's hasher, which the worker of the lowest chunk never does).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use xxhash_rust::xxh3::Xxh3;

use crate::bounded::InPlace;
use crate::codec::{check_plausible, decode_update, ExpInPlace};
use crate::error::{Error, Result};
use crate::float::DType;
use crate::format::{self, Header, Quantizer};
use crate::parallel;

/// One delta of a chain: its blob, and whether the state is clamped at 0 after it (second
/// moments): a negative value becomes `+0.0`; `-0.0` and NaN are kept (`torch.clamp_(min=0)`).
#[derive(Clone, Copy, Debug)]
pub struct ChainLink<'a> {
    /// The delta blob, encoded against the state before it.
    pub blob: &'a [u8],
    /// Clamp the state at 0 after this delta.
    pub clamp0: bool,
}

/// Apply `links` in order to `state` (a `dtype` tensor of `shape`, the reference of the first
/// link), as [`crate::decode_update`] link by link would, in one pass over `state` when every
/// link is an exponent or error-bounded blob with the same chunking (otherwise link by link).
/// On an error `state` holds unspecified values.
///
/// ```
/// use deltackpt::{decode_chain_update, decode_update, encode, ChainLink, DType, EncodeOptions, Tensor};
/// let bytes = |v: Vec<f32>| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
/// let s0 = bytes((0..1000).map(|i| (i as f32).sin()).collect());
/// let s1 = bytes((0..1000).map(|i| (i as f32).sin() + 0.01).collect());
/// let x = Tensor { dtype: DType::F32, shape: &[1000], data: &s1 };
/// let blob = encode(x, Some(&s0), &EncodeOptions::default()).unwrap();
/// let (mut fused, mut linked) = (s0.clone(), s0.clone());
/// decode_update(&blob, &mut linked).unwrap();
/// let links = [ChainLink { blob: &blob, clamp0: false }];
/// decode_chain_update(&links, DType::F32, &[1000], &mut fused).unwrap();
/// assert_eq!(fused, linked);
/// ```
pub fn decode_chain_update(
    links: &[ChainLink<'_>],
    dtype: DType,
    shape: &[u64],
    state: &mut [u8],
) -> Result<()> {
    let parsed = links
        .iter()
        .map(|l| parse_link(l, dtype, shape, state.len()))
        .collect::<Result<Vec<_>>>()?;
    let Some(appliers) = fused_appliers(&parsed)? else {
        for l in links {
            decode_update(l.blob, state)?;
            if l.clamp0 {
                clamp0(dtype, state);
            }
        }
        return Ok(());
    };
    let chunk_bytes = parsed[0].0.chunk_elems as usize * dtype.size();
    let steps: Vec<Step<'_>> = parsed
        .iter()
        .zip(appliers)
        .zip(links)
        .map(|(((h, chunks), apply), l)| Step {
            chunks: chunks.clone(),
            apply,
            clamp0: l.clamp0,
            hash: h.reference_hash.unwrap_or(0),
        })
        .collect();
    run_fused(&steps, dtype, chunk_bytes, state)
}

/// A blob's header and chunks, checked against the state it is applied to.
fn parse_link<'a>(
    l: &ChainLink<'a>,
    dtype: DType,
    shape: &[u64],
    len: usize,
) -> Result<(Header, Vec<&'a [u8]>)> {
    let (h, chunks) = format::read(l.blob)?;
    check_plausible(&h, &chunks)?;
    if h.dtype != dtype || h.shape != shape {
        return Err(Error::ReferenceMismatch(format!(
            "a delta of the chain holds {} {:?}; the state is {} {shape:?}",
            h.dtype.name(),
            h.shape,
            dtype.name()
        )));
    }
    if h.reference_hash.is_none() {
        return Err(Error::ReferenceMismatch(
            "a link of the chain was encoded without a reference".into(),
        ));
    }
    if h.numel()? as usize * dtype.size() != len {
        return Err(Error::invalid("the state's size does not match its shape"));
    }
    Ok((h, chunks))
}

/// How a blob's chunks are applied in place.
enum Apply {
    Exponent(ExpInPlace),
    Bounded(InPlace),
}

impl Apply {
    fn run(&self, chunk: &[u8], out: &mut [u8]) -> Result<()> {
        match self {
            Apply::Exponent(a) => a.apply(chunk, out),
            Apply::Bounded(a) => a.apply(chunk, out),
        }
    }
}

/// The appliers of every link, or `None` when some link cannot be fused (another quantizer,
/// a second moment, a different chunking).
fn fused_appliers(parsed: &[(Header, Vec<&[u8]>)]) -> Result<Option<Vec<Apply>>> {
    let Some(first) = parsed.first() else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(parsed.len());
    for (h, _) in parsed {
        if h.chunk_elems != first.0.chunk_elems {
            return Ok(None);
        }
        out.push(match h.quantizer {
            Quantizer::Exponent => Apply::Exponent(ExpInPlace::new(h)?),
            Quantizer::Bounded => match h.bounded_params()? {
                Some(p) if !p.bound.needs_moment() => {
                    Apply::Bounded(InPlace::new(h.dtype, &h.params)?)
                }
                _ => return Ok(None),
            },
            _ => return Ok(None),
        });
    }
    Ok(Some(out))
}

/// One link of a fused restore.
struct Step<'a> {
    chunks: Vec<&'a [u8]>,
    apply: Apply,
    clamp0: bool,
    /// The fingerprint of the state this link applies to.
    hash: u64,
}

/// The in-order hash of one intermediate state: the chunk it expects next.
struct Turn {
    next: Mutex<(usize, Xxh3)>,
    cv: Condvar,
}

/// What the workers of one fused restore share.
struct Shared<'s> {
    turns: Vec<Turn>,
    next_chunk: AtomicUsize,
    abort: AtomicBool,
    error: Mutex<Option<Error>>,
    slots: Vec<Mutex<Option<&'s mut [u8]>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared<'_> {
    /// Feed chunk `i` of intermediate state `k` to its hasher, once every earlier chunk has
    /// been fed; `false` when the restore was aborted meanwhile.
    fn feed(&self, k: usize, i: usize, bytes: &[u8]) -> bool {
        let turn = &self.turns[k];
        let mut g = lock(&turn.next);
        while g.0 != i {
            if self.abort.load(Ordering::Acquire) {
                return false;
            }
            g = turn.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        g.1.update(bytes);
        g.0 += 1;
        drop(g);
        turn.cv.notify_all();
        true
    }

    fn fail(&self, e: Error) {
        lock(&self.error).get_or_insert(e);
        self.abort.store(true, Ordering::Release);
        for t in &self.turns {
            drop(lock(&t.next));
            t.cv.notify_all();
        }
    }
}

fn run_fused(steps: &[Step<'_>], dtype: DType, chunk_bytes: usize, state: &mut [u8]) -> Result<()> {
    let nchunks = steps[0].chunks.len();
    let shared = Shared {
        turns: steps
            .iter()
            .map(|_| Turn {
                next: Mutex::new((0, Xxh3::new())),
                cv: Condvar::new(),
            })
            .collect(),
        next_chunk: AtomicUsize::new(0),
        abort: AtomicBool::new(false),
        error: Mutex::new(None),
        slots: state
            .chunks_mut(chunk_bytes.max(1))
            .map(|c| Mutex::new(Some(c)))
            .collect(),
    };
    if shared.slots.len() != nchunks {
        return Err(Error::corrupt(
            "a delta's chunk count does not match its tensor",
        ));
    }
    let threads = parallel::num_threads().clamp(1, nchunks.max(1));
    let work = || worker(steps, dtype, &shared);
    std::thread::scope(|s| {
        for _ in 1..threads {
            s.spawn(work);
        }
        work();
    });
    if let Some(e) = lock(&shared.error).take() {
        return Err(e);
    }
    for (k, (step, turn)) in steps.iter().zip(&shared.turns).enumerate() {
        if lock(&turn.next).1.digest() != step.hash {
            return Err(Error::ReferenceMismatch(format!(
                "delta {k} of the chain was encoded against another reference"
            )));
        }
    }
    Ok(())
}

/// Take chunks in order and apply every link to each, until none is left or one failed.
fn worker(steps: &[Step<'_>], dtype: DType, shared: &Shared<'_>) {
    loop {
        let i = shared.next_chunk.fetch_add(1, Ordering::AcqRel);
        if i >= shared.slots.len() || shared.abort.load(Ordering::Acquire) {
            return;
        }
        let Some(out) = lock(&shared.slots[i]).take() else {
            return;
        };
        for (k, step) in steps.iter().enumerate() {
            if !shared.feed(k, i, out) {
                return;
            }
            if let Err(e) = step.apply.run(step.chunks[i], out) {
                return shared.fail(e);
            }
            if step.clamp0 {
                clamp0(dtype, out);
            }
        }
    }
}

/// `torch.clamp_(min=0)` on little-endian `dtype` elements: negatives (not `-0.0`, not NaN)
/// become `+0.0`.
pub fn clamp0(dtype: DType, bytes: &mut [u8]) {
    match dtype {
        DType::F32 => {
            for c in bytes.chunks_exact_mut(4) {
                if f32::from_le_bytes(c.try_into().unwrap()) < 0.0 {
                    c.fill(0);
                }
            }
        }
        DType::F64 => {
            for c in bytes.chunks_exact_mut(8) {
                if f64::from_le_bytes(c.try_into().unwrap()) < 0.0 {
                    c.fill(0);
                }
            }
        }
        DType::F16 | DType::BF16 => {
            // sign set, magnitude nonzero and not NaN (above the infinity pattern)
            let inf = if dtype == DType::F16 { 0x7c00 } else { 0x7f80 };
            for c in bytes.chunks_exact_mut(2) {
                let b = u16::from_le_bytes([c[0], c[1]]);
                let mag = b & 0x7fff;
                if b & 0x8000 != 0 && mag != 0 && mag <= inf {
                    c.fill(0);
                }
            }
        }
    }
}
