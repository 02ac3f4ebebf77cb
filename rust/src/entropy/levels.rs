//! Signed integer levels as byte tokens plus raw extra bits.
//!
//! The error-bounded quantizer ([`crate::quant::bounded`]) produces one signed level per
//! element, heavily peaked at 0 but with no fixed range. A level `q` is zigzag-mapped to
//! `u = 2|q| − [q < 0]` and then split, as JPEG XL's hybrid integers do, into a byte *token*
//! that the entropy coders model and a few *extra bits* stored raw beside it:
//!
//! - `u < D = 2^k`: token `u`, no extra bits;
//! - otherwise, with `n = ⌊log2 u⌋` (`k..=30`): token `D + 2(n − k) + b`, where `b` is the
//!   bit of `u` just below its leading one, followed by the `n − 1` lower bits of `u` as extra
//!   bits;
//! - token [`Tokens::escape`] (`D + 2(31 − k) + 2`): the element is stored exactly, its
//!   dtype's bits follow as extra bits (used where no level meets the bound, and for levels
//!   beyond [`MAX_LEVEL`]).
//!
//! `k` is the scheme's [`Tokens::log`]: 4 in the first bounded blobs ([`Tokens::NARROW`], 73
//! tokens), 5 since ([`Tokens::WIDE`], 87 tokens): levels up to ±15 are then tokens of their
//! own, which the entropy coder models (with the previous token as context) instead of
//! storing their low bits raw — 1.9% fewer bits on fine-grid fine-tuning deltas. The extra
//! bits of large levels are close to uniform, so storing them raw loses little. Extra bits
//! are written least significant first with [`BitWriter`] and read back with [`BitReader`].
//!
//! ```
//! use deltackpt::entropy::bitio::{BitReader, BitWriter};
//! use deltackpt::entropy::levels::{Level, Tokens};
//! let levels = [0i64, -1, 3, 17, -4000, 1 << 29];
//! let (mut tokens, mut extra) = (Vec::new(), Vec::new());
//! let mut w = BitWriter::new(&mut extra, 64);
//! for &q in &levels {
//!     tokens.push(Tokens::WIDE.write_level(q, &mut w));
//! }
//! w.finish();
//! assert_eq!(tokens[3], 32); // zigzag(17) = 34 = 0b100010: n = 5, b = 0, 4 extra bits
//! let mut r = BitReader::new(&extra);
//! for (&t, &q) in tokens.iter().zip(&levels) {
//!     assert_eq!(Tokens::WIDE.read_level(t, &mut r), Some(Level::Value(q)));
//! }
//! ```

use super::bitio::{BitReader, BitWriter};

/// Largest level magnitude that has a token (larger levels are escaped).
pub const MAX_LEVEL: i64 = (1 << 30) - 1;

/// A token scheme: levels whose zigzag value is below `2^log` are tokens of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tokens {
    log: u32,
}

impl Tokens {
    /// The scheme of the first bounded blobs: 16 direct tokens, escape 72.
    pub const NARROW: Tokens = Tokens { log: 4 };
    /// The scheme new blobs use: 32 direct tokens, escape 86.
    pub const WIDE: Tokens = Tokens { log: 5 };

    /// The scheme with `2^log` direct tokens (`4..=6`), or None.
    pub fn new(log: u32) -> Option<Tokens> {
        (4..=6).contains(&log).then_some(Tokens { log })
    }

    /// `log2` of the number of direct tokens.
    pub fn log(self) -> u32 {
        self.log
    }

    /// Zigzag values below this are tokens of their own.
    #[inline(always)]
    pub fn direct(self) -> u64 {
        1 << self.log
    }

    /// The token of an element stored exactly.
    #[inline(always)]
    pub fn escape(self) -> u8 {
        (self.direct() + 2 * (31 - self.log as u64) + 2) as u8
    }

    /// Write level `q` (`|q| <= MAX_LEVEL`): return its token, put its extra bits to `w`.
    #[inline(always)]
    pub fn write_level(self, q: i64, w: &mut BitWriter<'_>) -> u8 {
        debug_assert!(q.abs() <= MAX_LEVEL);
        let u = zigzag(q);
        if u < self.direct() {
            return u as u8;
        }
        let n = 63 - u.leading_zeros();
        let half = ((u >> (n - 1)) & 1) as u8;
        w.put(u & ((1u64 << (n - 1)) - 1), n - 1);
        w.flush();
        self.direct() as u8 + 2 * (n - self.log) as u8 + half
    }

    /// Write an escape: return [`Tokens::escape`], put the `bits` low bits of `raw` (up to 64).
    #[inline]
    pub fn write_escape(self, raw: u64, bits: u32, w: &mut BitWriter<'_>) -> u8 {
        let lo = bits.min(32);
        w.put(raw & ((1u64 << lo) - 1), lo);
        w.flush();
        if bits > 32 {
            w.put(raw >> 32, bits - 32);
            w.flush();
        }
        self.escape()
    }

    /// Read the level of `token` (its extra bits from `r`); `None` for a token that no
    /// writer produces. An escape's bits are read by the caller with [`read_escape`].
    #[inline(always)]
    pub fn read_level(self, token: u8, r: &mut BitReader<'_>) -> Option<Level> {
        let t = token as u64;
        if t < self.direct() {
            return Some(Level::Value(unzigzag(t)));
        }
        if token == self.escape() {
            return Some(Level::Escape);
        }
        let n = (t - self.direct()) / 2 + self.log as u64;
        if n > 30 {
            return None;
        }
        r.refill();
        let low = r.read(n as u32 - 1);
        let u = (1u64 << n) | ((t & 1) << (n - 1)) | low;
        Some(Level::Value(unzigzag(u)))
    }
}

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
        for tk in [Tokens::NARROW, Tokens::WIDE, Tokens::new(6).unwrap()] {
            let mut tokens = Vec::new();
            let mut extra = Vec::new();
            let mut w = BitWriter::new(&mut extra, 0);
            for &q in &levels {
                tokens.push(tk.write_level(q, &mut w));
                tokens.push(tk.write_escape(0xDEAD_BEEF_0123_4567, 64, &mut w));
            }
            w.finish();
            // every level token is below the escape, which is the last token
            assert!(tokens.iter().all(|&t| t <= tk.escape()));
            assert_eq!(
                tk.write_level(MAX_LEVEL, &mut BitWriter::new(&mut Vec::new(), 0)),
                tk.escape() - 3
            );
            let mut r = BitReader::new(&extra);
            for (pair, &q) in tokens.chunks(2).zip(&levels) {
                assert_eq!(tk.read_level(pair[0], &mut r), Some(Level::Value(q)));
                assert_eq!(tk.read_level(pair[1], &mut r), Some(Level::Escape));
                assert_eq!(read_escape(64, &mut r), 0xDEAD_BEEF_0123_4567);
            }
            assert!(!r.overrun());
        }
    }

    #[test]
    fn the_narrow_scheme_is_the_first_blobs_layout() {
        // Blobs written before the wide scheme: 16 direct tokens, 17 -> token 17 with 3
        // extra bits, escape 72. Changing this would misread them.
        let tk = Tokens::NARROW;
        assert_eq!((tk.direct(), tk.escape()), (16, 72));
        let mut extra = Vec::new();
        let mut w = BitWriter::new(&mut extra, 0);
        assert_eq!(tk.write_level(-9, &mut w), 16); // zigzag 17 = 0b10001: n 4, b 0
        assert_eq!(tk.write_level(12, &mut w), 17); // zigzag 24 = 0b11000: n 4, b 1
        assert_eq!(Tokens::WIDE.escape(), 86);
    }

    #[test]
    fn unknown_tokens_are_refused() {
        for tk in [Tokens::NARROW, Tokens::WIDE] {
            let mut r = BitReader::new(&[]);
            assert_eq!(tk.read_level(tk.escape() + 1, &mut r), None);
            assert_eq!(tk.read_level(255, &mut r), None);
            assert_eq!(tk.read_level(tk.escape() - 1, &mut r), None);
        }
    }
}
