//! Buffered bit I/O with a 64-bit container.
//!
//! * [`BitWriter`] appends bits least-significant first to a `Vec<u8>`. Callers `put` up to
//!   56 bits between calls to `flush`, which stores the whole container with one unaligned
//!   8-byte write and advances by the number of complete bytes (no per-bit loop, no branch
//!   on the bit count).
//! * [`BitReader`] reads such a stream forwards (Huffman).
//! * [`BackReader`] reads it backwards from an end marker (tANS, whose encoder runs in
//!   reverse symbol order).
//!
//! Readers are total: reading past either end yields zero bits (forward) or unspecified bits
//! (backward), never a panic or an out-of-bounds access, and the position they report lets the
//! caller detect the overrun afterwards ([`BitReader::overrun`], [`BackReader::remaining`]).

/// Mask of the low `nb` bits, `nb <= 63`.
#[inline(always)]
pub fn mask(nb: u32) -> u64 {
    (1u64 << nb) - 1
}

/// Bit writer appending least-significant-bit first to a byte vector.
pub struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    /// Byte offset in `out` where the container's first byte goes.
    pos: usize,
    acc: u64,
    fill: u32,
}

impl<'a> BitWriter<'a> {
    /// Start writing at the end of `out`, reserving room for about `capacity_bits` bits.
    pub fn new(out: &'a mut Vec<u8>, capacity_bits: usize) -> Self {
        let pos = out.len();
        out.resize(pos + capacity_bits / 8 + 16, 0);
        BitWriter {
            out,
            pos,
            acc: 0,
            fill: 0,
        }
    }

    /// Append the low `nb` bits of `v` (higher bits of `v` must be zero). At most 56 bits may
    /// be put between two [`flush`](Self::flush) calls.
    #[inline(always)]
    pub fn put(&mut self, v: u64, nb: u32) {
        debug_assert!(nb <= 56 && self.fill + nb <= 63 && v >> nb == 0);
        self.acc |= v << self.fill;
        self.fill += nb;
    }

    /// Move the complete bytes of the container to the output.
    #[inline(always)]
    pub fn flush(&mut self) {
        if self.pos + 8 > self.out.len() {
            // Rare: the caller's capacity estimate was low.
            let grow = self.out.len() / 2 + 16;
            self.out.resize(self.out.len() + grow, 0);
        }
        self.out[self.pos..self.pos + 8].copy_from_slice(&self.acc.to_le_bytes());
        let bytes = self.fill >> 3;
        self.pos += bytes as usize;
        // `bytes <= 7` because `fill <= 63`.
        self.acc >>= bytes * 8;
        self.fill &= 7;
    }

    /// Pad to a byte boundary with zero bits and truncate `out` after the last byte written.
    /// Returns the number of bytes written since [`new`](Self::new).
    pub fn finish(mut self) -> usize {
        self.flush();
        if self.fill > 0 {
            self.out[self.pos] = self.acc as u8;
            self.pos += 1;
        }
        self.out.truncate(self.pos);
        self.pos
    }

    /// Write a single 1 bit as an end marker for [`BackReader`], then [`finish`](Self::finish).
    pub fn finish_with_marker(mut self) -> usize {
        self.flush();
        self.put(1, 1);
        self.finish()
    }
}

/// Forward bit reader over a stream written by [`BitWriter`].
pub struct BitReader<'a> {
    data: &'a [u8],
    /// Bits consumed so far (may exceed `8 * data.len()` after an overrun).
    bitpos: usize,
    window: u64,
}

impl<'a> BitReader<'a> {
    /// Read `data` from its first bit.
    pub fn new(data: &'a [u8]) -> Self {
        let mut r = BitReader {
            data,
            bitpos: 0,
            window: 0,
        };
        r.refill();
        r
    }

    /// Read `data` from bit `bitpos` (at most `8 * data.len()`).
    pub fn at(data: &'a [u8], bitpos: usize) -> Self {
        let mut r = BitReader {
            data,
            bitpos,
            window: 0,
        };
        r.refill();
        r
    }

    /// Make at least 56 bits available to [`peek`](Self::peek)/[`consume`](Self::consume).
    #[inline(always)]
    pub fn refill(&mut self) {
        let byte = self.bitpos >> 3;
        let word = match self.data.get(byte..byte + 8) {
            Some(w) => u64::from_le_bytes(w.try_into().unwrap()),
            None => self.tail_word(byte),
        };
        self.window = word >> (self.bitpos & 7);
    }

    #[cold]
    fn tail_word(&self, byte: usize) -> u64 {
        let mut w = [0u8; 8];
        if byte < self.data.len() {
            let rest = &self.data[byte..];
            w[..rest.len()].copy_from_slice(rest);
        }
        u64::from_le_bytes(w)
    }

    /// The next `nb` bits (`nb <= 56`) without consuming them.
    #[inline(always)]
    pub fn peek(&self, nb: u32) -> u64 {
        self.window & mask(nb)
    }

    /// Skip `nb` bits (no more than are available since the last refill).
    #[inline(always)]
    pub fn consume(&mut self, nb: u32) {
        self.window >>= nb;
        self.bitpos += nb as usize;
    }

    /// Read `nb` bits (`nb <= 56` since the last refill).
    #[inline(always)]
    pub fn read(&mut self, nb: u32) -> u64 {
        let v = self.peek(nb);
        self.consume(nb);
        v
    }

    /// Bits consumed so far.
    pub fn position(&self) -> usize {
        self.bitpos
    }

    /// True if more bits were consumed than the stream holds.
    pub fn overrun(&self) -> bool {
        self.bitpos > self.data.len() * 8
    }
}

/// Backward bit reader: reads a [`BitWriter`] stream from its end marker towards its start,
/// returning bit groups in the reverse of the order they were put.
pub struct BackReader<'a> {
    data: &'a [u8],
    /// Unread bits held in `window`: its positions `[0, avail)`. The unread bits of the stream
    /// are positions `[0, base + avail)`; negative after an overrun.
    avail: i64,
    /// Stream bit position of bit 0 of `window`.
    base: i64,
    window: u64,
}

impl<'a> BackReader<'a> {
    /// Start at the end marker of `data`; `None` if there is no marker (empty stream or a
    /// zero last byte).
    pub fn new(data: &'a [u8]) -> Option<Self> {
        let last = *data.last()?;
        if last == 0 {
            return None;
        }
        let bitpos = data.len() as i64 * 8 - 1 - last.leading_zeros() as i64;
        Some(Self::resume(data, bitpos))
    }

    /// Make at least 56 bits available to [`read`](Self::read) (fewer near the start of the
    /// stream, where further reads return unspecified bits and drive `remaining` negative).
    #[inline(always)]
    pub fn refill(&mut self) {
        let bitpos = self.base + self.avail;
        if self.data.len() >= 8 {
            // Near the start the window is clamped to the first 8 bytes, which still hold all
            // unread bits; no branch on the position.
            let b = ((bitpos >> 3) - 7).max(0) as usize;
            // SAFETY: `bitpos` starts at most at `8 * len - 1` and only decreases, so
            // `(bitpos >> 3) - 7 + 8 <= len`; when clamped to 0, `8 <= len` holds by the test
            // above. Hence `b + 8 <= data.len()` and the unaligned 8-byte read is in bounds.
            self.window =
                u64::from_le(unsafe { (self.data.as_ptr().add(b) as *const u64).read_unaligned() });
            self.base = b as i64 * 8;
            self.avail = bitpos - self.base;
        } else {
            self.refill_head(bitpos);
        }
    }

    #[cold]
    fn refill_head(&mut self, bitpos: i64) {
        let mut w = [0u8; 8];
        let n = self.data.len().min(8);
        w[..n].copy_from_slice(&self.data[..n]);
        self.window = u64::from_le_bytes(w);
        self.base = 0;
        self.avail = bitpos;
    }

    /// Read the `nb` bits (`nb <= 56` since the last refill) put just before the ones read last.
    #[inline(always)]
    pub fn read(&mut self, nb: u32) -> u64 {
        self.avail -= nb as i64;
        // After an overrun the shift is out of range; `wrapping_shr` keeps that defined and the
        // caller detects it through `remaining`.
        self.window.wrapping_shr(self.avail as u32) & mask(nb)
    }

    /// Unread bits; zero when the stream was consumed exactly, negative after an overrun.
    pub fn remaining(&self) -> i64 {
        self.base + self.avail
    }

    /// The stream (for hand-scheduled decode loops that keep the position in a register).
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// A reader of `data` with `bitpos` unread bits (a position from
    /// [`remaining`](Self::remaining)), refilled.
    pub fn resume(data: &'a [u8], bitpos: i64) -> Self {
        let mut r = BackReader {
            data,
            avail: bitpos,
            base: 0,
            window: 0,
        };
        r.refill();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_and_backward_round_trip() {
        let items: Vec<(u64, u32)> = (0..1000u64)
            .map(|i| {
                let nb = (i * 7 % 23) as u32;
                ((i * 2_654_435_761) & mask(nb), nb)
            })
            .collect();
        let mut out = vec![0xAA];
        let mut w = BitWriter::new(&mut out, 16);
        for &(v, nb) in &items {
            w.put(v, nb);
            w.flush();
        }
        w.finish_with_marker();
        let body = &out[1..];
        let mut r = BitReader::new(body);
        for &(v, nb) in &items {
            r.refill();
            assert_eq!(r.read(nb), v);
        }
        assert!(!r.overrun());
        let mut b = BackReader::new(body).unwrap();
        for &(v, nb) in items.iter().rev() {
            b.refill();
            assert_eq!(b.read(nb), v);
        }
        assert_eq!(b.remaining(), 0);
        // Reading on is defined and detected.
        b.refill();
        b.read(13);
        assert!(b.remaining() < 0);
    }

    #[test]
    fn forward_overrun_is_detected() {
        let data = [0xFFu8; 3];
        let mut r = BitReader::new(&data);
        r.read(20);
        assert!(!r.overrun());
        r.refill();
        assert_eq!(r.read(20), 0xF);
        assert!(r.overrun());
        assert!(BackReader::new(&[1, 0]).is_none());
        assert!(BackReader::new(&[]).is_none());
    }
}
