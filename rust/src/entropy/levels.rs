//! Signed integer levels as byte tokens plus raw extra bits.
//!
//! The error-bounded quantizer ([`crate::quant::bounded`]) produces one signed level per
//! element, heavily peaked at 0 but with no fixed range. A level `q` is zigzag-mapped to
//! `u = 2|q| − [q < 0]` and then split, as JPEG XL's hybrid integers do, into a byte *token*
//! that the entropy coders model and a few *extra bits* stored raw beside it:
//!
//! - `u < 16`: token `u`, no extra bits;
//! - otherwise, with `n = ⌊log2 u⌋` (4..=30): token `16 + 2(n − 4) + b`, where `b` is the bit
//!   of `u` just below its leading one, followed by the `n − 1` lower bits of `u` as extra bits;
//! - token [`ESCAPE`] (72): the element is stored exactly, its dtype's bits follow as extra
//!   bits (used where no level meets the bound, and for levels beyond [`MAX_LEVEL`]).
//!
//! The small levels that dominate real deltas cost only their token; the extra bits of large
//! levels are close to uniform, so storing them raw loses little. Extra bits are written least
//! significant first with [`BitWriter`] and read back with [`BitReader`].
//!
//! ```
//! use deltackpt::entropy::bitio::{BitReader, BitWriter};
//! use deltackpt::entropy::levels::{read_level, write_level, Level};
//! let levels = [0i64, -1, 3, 17, -4000, 1 << 29];
//! let (mut tokens, mut extra) = (Vec::new(), Vec::new());
//! let mut w = BitWriter::new(&mut extra, 64);
//! for &q in &levels {
//!     tokens.push(write_level(q, &mut w));
//! }
//! w.finish();
//! let mut r = BitReader::new(&extra);
//! for (&t, &q) in tokens.iter().zip(&levels) {
//!     assert_eq!(read_level(t, &mut r), Some(Level::Value(q)));
//! }
//! ```

use super::bitio::{BitReader, BitWriter};

/// Zigzag values below this are tokens of their own.
pub const DIRECT: u64 = 16;
/// The token of an element stored exactly.
pub const ESCAPE: u8 = 72;
/// Number of distinct tokens (`0..=ESCAPE`).
pub const TOKENS: usize = ESCAPE as usize + 1;
/// Largest level magnitude that has a token (larger levels are escaped).
pub const MAX_LEVEL: i64 = (1 << 30) - 1;

/// What a token (with its extra bits) stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// A signed level.
    Value(i64),
    /// An element stored exactly; its bits follow in the extra-bit stream.
    Escape,
}

/// `2|q| − [q < 0]`: small magnitudes of either sign become small unsigned values.
#[inline(always)]
pub fn zigzag(q: i64) -> u64 {
    ((q << 1) ^ (q >> 63)) as u64
}

/// Inverse of [`zigzag`].
#[inline(always)]
pub fn unzigzag(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

/// Write level `q` (`|q| <= MAX_LEVEL`): return its token, put its extra bits to `w`.
#[inline(always)]
pub fn write_level(q: i64, w: &mut BitWriter<'_>) -> u8 {
    debug_assert!(q.abs() <= MAX_LEVEL);
    let u = zigzag(q);
    if u < DIRECT {
        return u as u8;
    }
    let n = 63 - u.leading_zeros();
    let half = ((u >> (n - 1)) & 1) as u8;
    w.put(u & ((1u64 << (n - 1)) - 1), n - 1);
    w.flush();
    16 + 2 * (n as u8 - 4) + half
}

/// Write an escape: return [`ESCAPE`], put the `bits` low bits of `raw` (up to 64).
#[inline]
pub fn write_escape(raw: u64, bits: u32, w: &mut BitWriter<'_>) -> u8 {
    let lo = bits.min(32);
    w.put(raw & ((1u64 << lo) - 1), lo);
    w.flush();
    if bits > 32 {
        w.put(raw >> 32, bits - 32);
        w.flush();
    }
    ESCAPE
}

/// Read the level of `token` (its extra bits from `r`); `None` for a token that no writer
/// produces. An escape's bits are read by the caller with [`read_escape`].
#[inline(always)]
pub fn read_level(token: u8, r: &mut BitReader<'_>) -> Option<Level> {
    let t = token as u64;
    if t < DIRECT {
        return Some(Level::Value(unzigzag(t)));
    }
    if token == ESCAPE {
        return Some(Level::Escape);
    }
    if token > ESCAPE - 1 {
        return None;
    }
    let n = (t - 16) / 2 + 4;
    if n > 30 {
        return None;
    }
    r.refill();
    let low = r.read(n as u32 - 1);
    let u = (1u64 << n) | ((t & 1) << (n - 1)) | low;
    Some(Level::Value(unzigzag(u)))
}

/// Read the `bits` (up to 64) exact bits that follow an escape.
#[inline]
pub fn read_escape(bits: u32, r: &mut BitReader<'_>) -> u64 {
    let lo = bits.min(32);
    r.refill();
    let mut v = r.read(lo);
    if bits > 32 {
        r.refill();
        v |= r.read(bits - 32) << 32;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zigzag_roundtrip_and_order() {
        for q in [-5i64, -1, 0, 1, 2, MAX_LEVEL, -MAX_LEVEL] {
            assert_eq!(unzigzag(zigzag(q)), q);
        }
        assert_eq!(
            [0, -1, 1, -2, 2].map(zigzag),
            [0, 1, 2, 3, 4],
            "small magnitudes first"
        );
    }

    #[test]
    fn every_level_and_escape_roundtrips() {
        let mut levels: Vec<i64> = (-70..70).collect();
        for n in 4..31 {
            levels.extend([
                1i64 << n,
                (1 << n) - 1,
                -(1 << n),
                (1 << n) + (1 << (n - 1)),
            ]);
        }
        levels.retain(|q| q.abs() <= MAX_LEVEL);
        let mut tokens = Vec::new();
        let mut extra = Vec::new();
        let mut w = BitWriter::new(&mut extra, 0);
        for &q in &levels {
            tokens.push(write_level(q, &mut w));
            tokens.push(write_escape(0xDEAD_BEEF_0123_4567, 64, &mut w));
        }
        w.finish();
        assert!(tokens.iter().all(|&t| t <= ESCAPE));
        let mut r = BitReader::new(&extra);
        for (pair, &q) in tokens.chunks(2).zip(&levels) {
            assert_eq!(read_level(pair[0], &mut r), Some(Level::Value(q)));
            assert_eq!(read_level(pair[1], &mut r), Some(Level::Escape));
            assert_eq!(read_escape(64, &mut r), 0xDEAD_BEEF_0123_4567);
        }
        assert!(!r.overrun());
    }

    #[test]
    fn unknown_tokens_are_refused() {
        let mut r = BitReader::new(&[]);
        assert_eq!(read_level(ESCAPE + 1, &mut r), None);
        assert_eq!(read_level(255, &mut r), None);
        assert_eq!(read_level(ESCAPE - 1, &mut r), None);
    }
}
