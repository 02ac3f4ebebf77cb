//! Byte-plane split and merge of float elements, vectorized.
//!
//! An element of `size` bytes is XORed with its reference (when there is one), its bits are
//! rotated left by one (sign bit to the bottom), and its bytes, most significant first, go to
//! planes `0..size`. [`merge`] undoes it. For 2- and 4-byte elements an AVX2 path (chosen at run
//! time, switchable off with [`crate::entropy::simd::set_simd_enabled`]) handles 32 elements per
//! step; the scalar path does the rest and produces the same bytes (tested).

/// Split little-endian elements of `size` bytes (2, 4 or 8) into `planes` (each
/// `bytes.len() / size` long), XORing with `xor` (same length as `bytes`) first if given.
pub fn split(size: usize, bytes: &[u8], xor: Option<&[u8]>, planes: &mut [&mut [u8]]) {
    let n = bytes.len() / size;
    assert!(planes.len() == size && planes.iter().all(|p| p.len() == n));
    assert!(xor.is_none_or(|r| r.len() >= n * size));
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if crate::entropy::simd::simd_enabled() && (size == 2 || size == 4) {
        // SAFETY: AVX2 was detected at run time; lengths were checked above.
        done = unsafe { avx2::split(size, bytes, xor, planes) };
    }
    split_scalar(size, done, bytes, xor, planes);
}

/// Inverse of [`split`]: interleave `planes` back into `out`, XORing with `xor` if given.
pub fn merge(size: usize, planes: &[&[u8]], xor: Option<&[u8]>, out: &mut [u8]) {
    let n = out.len() / size;
    assert!(planes.len() == size && planes.iter().all(|p| p.len() >= n));
    assert!(xor.is_none_or(|r| r.len() >= n * size));
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if crate::entropy::simd::simd_enabled() && (size == 2 || size == 4) {
        // SAFETY: AVX2 was detected at run time; lengths were checked above.
        done = unsafe { avx2::merge(size, planes, xor, out) };
    }
    merge_scalar(size, done, planes, xor, out);
}

/// Scalar [`split`] of elements `from..`.
pub fn split_scalar(
    size: usize,
    from: usize,
    bytes: &[u8],
    xor: Option<&[u8]>,
    planes: &mut [&mut [u8]],
) {
    let n = bytes.len() / size;
    for i in from..n {
        let mut e = [0u8; 8];
        e[..size].copy_from_slice(&bytes[i * size..(i + 1) * size]);
        if let Some(r) = xor {
            for (k, b) in e[..size].iter_mut().enumerate() {
                *b ^= r[i * size + k];
            }
        }
        let be = rotl1(u64::from_le_bytes(e), size).to_be_bytes();
        for (k, p) in planes.iter_mut().enumerate() {
            p[i] = be[8 - size + k];
        }
    }
}

/// Scalar [`merge`] of elements `from..`.
pub fn merge_scalar(
    size: usize,
    from: usize,
    planes: &[&[u8]],
    xor: Option<&[u8]>,
    out: &mut [u8],
) {
    let n = out.len() / size;
    for i in from..n {
        let mut be = [0u8; 8];
        for (k, p) in planes.iter().enumerate() {
            be[8 - size + k] = p[i];
        }
        let e = rotr1(u64::from_be_bytes(be), size).to_le_bytes();
        let o = &mut out[i * size..(i + 1) * size];
        o.copy_from_slice(&e[..size]);
        if let Some(r) = xor {
            for (k, b) in o.iter_mut().enumerate() {
                *b ^= r[i * size + k];
            }
        }
    }
}

/// Rotate the low `size` bytes of `v` left by one bit.
fn rotl1(v: u64, size: usize) -> u64 {
    let bits = 8 * size as u32;
    let mask = u64::MAX >> (64 - bits);
    ((v << 1) | (v >> (bits - 1))) & mask
}

/// Rotate the low `size` bytes of `v` right by one bit.
fn rotr1(v: u64, size: usize) -> u64 {
    let bits = 8 * size as u32;
    let mask = u64::MAX >> (64 - bits);
    ((v >> 1) | (v << (bits - 1))) & mask
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Elements per vector step.
    const STEP: usize = 32;

    /// Load 32 bytes at `p + at` (unaligned).
    #[inline(always)]
    unsafe fn load(p: *const u8, at: usize) -> __m256i {
        unsafe { _mm256_loadu_si256(p.add(at) as *const __m256i) }
    }

    /// Store 32 bytes at `p + at` (unaligned).
    #[inline(always)]
    unsafe fn store(p: *mut u8, at: usize, v: __m256i) {
        unsafe { _mm256_storeu_si256(p.add(at) as *mut __m256i, v) }
    }

    /// XOR 32 bytes at `at` of the reference in, if there is one.
    #[inline(always)]
    unsafe fn xor_in(v: __m256i, xor: Option<&[u8]>, at: usize) -> __m256i {
        match xor {
            Some(r) => _mm256_xor_si256(v, unsafe { load(r.as_ptr(), at) }),
            None => v,
        }
    }

    /// Split whole steps of 32 elements; returns the number of elements done.
    ///
    /// # Safety
    /// AVX2 must be available; `planes` and `xor` as checked by [`super::split`].
    #[target_feature(enable = "avx2")]
    pub unsafe fn split(
        size: usize,
        bytes: &[u8],
        xor: Option<&[u8]>,
        planes: &mut [&mut [u8]],
    ) -> usize {
        let n = bytes.len() / size / STEP * STEP;
        let src = bytes.as_ptr();
        let outs: Vec<*mut u8> = planes.iter_mut().map(|p| p.as_mut_ptr()).collect();
        for i in (0..n).step_by(STEP) {
            // SAFETY: elements i..i + 32 lie inside `bytes`, `xor` and every plane.
            unsafe {
                if size == 2 {
                    split2(src, xor, i, &outs);
                } else {
                    split4(src, xor, i, &outs);
                }
            }
        }
        n
    }

    #[inline(always)]
    unsafe fn split2(src: *const u8, xor: Option<&[u8]>, i: usize, outs: &[*mut u8]) {
        // Per 128-bit lane: the low bytes of its 8 elements, then their high bytes.
        let gather = _mm256_setr_epi8(
            0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15, 0, 2, 4, 6, 8, 10, 12, 14, 1, 3,
            5, 7, 9, 11, 13, 15,
        );
        let mut v = [_mm256_setzero_si256(); 2];
        for (h, x) in v.iter_mut().enumerate() {
            let e = unsafe { xor_in(load(src, 2 * i + 32 * h), xor, 2 * i + 32 * h) };
            let r = _mm256_or_si256(_mm256_slli_epi16(e, 1), _mm256_srli_epi16(e, 15));
            // [lo 0..8, lo 8..16, hi 0..8, hi 8..16] of this vector's 16 elements.
            *x = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(r, gather), 0b11_01_10_00);
        }
        unsafe {
            store(outs[1], i, _mm256_permute2x128_si256(v[0], v[1], 0x20));
            store(outs[0], i, _mm256_permute2x128_si256(v[0], v[1], 0x31));
        }
    }

    #[inline(always)]
    unsafe fn split4(src: *const u8, xor: Option<&[u8]>, i: usize, outs: &[*mut u8]) {
        // Per lane: byte 3 of its 4 elements, then byte 2, byte 1, byte 0 (planes 0..4).
        let gather = _mm256_setr_epi8(
            3, 7, 11, 15, 2, 6, 10, 14, 1, 5, 9, 13, 0, 4, 8, 12, 3, 7, 11, 15, 2, 6, 10, 14, 1, 5,
            9, 13, 0, 4, 8, 12,
        );
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let mut v = [_mm256_setzero_si256(); 4];
        for (q, x) in v.iter_mut().enumerate() {
            let at = 4 * i + 32 * q;
            let e = unsafe { xor_in(load(src, at), xor, at) };
            let r = _mm256_or_si256(_mm256_slli_epi32(e, 1), _mm256_srli_epi32(e, 31));
            // 64-bit word k: plane k's bytes of this vector's 8 elements.
            *x = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(r, gather), order);
        }
        let lo01 = _mm256_unpacklo_epi64(v[0], v[1]);
        let hi01 = _mm256_unpackhi_epi64(v[0], v[1]);
        let lo23 = _mm256_unpacklo_epi64(v[2], v[3]);
        let hi23 = _mm256_unpackhi_epi64(v[2], v[3]);
        unsafe {
            store(outs[0], i, _mm256_permute2x128_si256(lo01, lo23, 0x20));
            store(outs[1], i, _mm256_permute2x128_si256(hi01, hi23, 0x20));
            store(outs[2], i, _mm256_permute2x128_si256(lo01, lo23, 0x31));
            store(outs[3], i, _mm256_permute2x128_si256(hi01, hi23, 0x31));
        }
    }

    /// Merge whole steps of 32 elements; returns the number of elements done.
    ///
    /// # Safety
    /// AVX2 must be available; `planes` and `xor` as checked by [`super::merge`].
    #[target_feature(enable = "avx2")]
    pub unsafe fn merge(
        size: usize,
        planes: &[&[u8]],
        xor: Option<&[u8]>,
        out: &mut [u8],
    ) -> usize {
        let n = out.len() / size / STEP * STEP;
        let dst = out.as_mut_ptr();
        let ins: Vec<*const u8> = planes.iter().map(|p| p.as_ptr()).collect();
        for i in (0..n).step_by(STEP) {
            // SAFETY: elements i..i + 32 lie inside `out`, `xor` and every plane.
            unsafe {
                if size == 2 {
                    merge2(&ins, xor, i, dst);
                } else {
                    merge4(&ins, xor, i, dst);
                }
            }
        }
        n
    }

    #[inline(always)]
    unsafe fn rotr16(v: __m256i) -> __m256i {
        _mm256_or_si256(_mm256_srli_epi16(v, 1), _mm256_slli_epi16(v, 15))
    }

    #[inline(always)]
    unsafe fn rotr32(v: __m256i) -> __m256i {
        _mm256_or_si256(_mm256_srli_epi32(v, 1), _mm256_slli_epi32(v, 31))
    }

    #[inline(always)]
    unsafe fn merge2(ins: &[*const u8], xor: Option<&[u8]>, i: usize, dst: *mut u8) {
        let (hi, lo) = unsafe { (load(ins[0], i), load(ins[1], i)) };
        // Lanes: elements 0..8 | 16..24, and 8..16 | 24..32.
        let a = unsafe { rotr16(_mm256_unpacklo_epi8(lo, hi)) };
        let b = unsafe { rotr16(_mm256_unpackhi_epi8(lo, hi)) };
        for (h, v) in [
            _mm256_permute2x128_si256(a, b, 0x20),
            _mm256_permute2x128_si256(a, b, 0x31),
        ]
        .into_iter()
        .enumerate()
        {
            let at = 2 * i + 32 * h;
            unsafe { store(dst, at, xor_in(v, xor, at)) };
        }
    }

    #[inline(always)]
    unsafe fn merge4(ins: &[*const u8], xor: Option<&[u8]>, i: usize, dst: *mut u8) {
        let p: [__m256i; 4] = std::array::from_fn(|k| unsafe { load(ins[k], i) });
        // Little-endian element bytes are planes 3, 2, 1, 0.
        let (x_lo, x_hi) = (
            _mm256_unpacklo_epi8(p[3], p[2]),
            _mm256_unpackhi_epi8(p[3], p[2]),
        );
        let (y_lo, y_hi) = (
            _mm256_unpacklo_epi8(p[1], p[0]),
            _mm256_unpackhi_epi8(p[1], p[0]),
        );
        // Lanes: a = 0..4 | 16..20, b = 4..8 | 20..24, c = 8..12 | 24..28, d = 12..16 | 28..32.
        let a = unsafe { rotr32(_mm256_unpacklo_epi16(x_lo, y_lo)) };
        let b = unsafe { rotr32(_mm256_unpackhi_epi16(x_lo, y_lo)) };
        let c = unsafe { rotr32(_mm256_unpacklo_epi16(x_hi, y_hi)) };
        let d = unsafe { rotr32(_mm256_unpackhi_epi16(x_hi, y_hi)) };
        let v = [
            _mm256_permute2x128_si256(a, b, 0x20),
            _mm256_permute2x128_si256(c, d, 0x20),
            _mm256_permute2x128_si256(a, b, 0x31),
            _mm256_permute2x128_si256(c, d, 0x31),
        ];
        for (q, v) in v.into_iter().enumerate() {
            let at = 4 * i + 32 * q;
            unsafe { store(dst, at, xor_in(v, xor, at)) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entropy::simd::set_simd_enabled;

    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 56) as u8
            })
            .collect()
    }

    fn split_vec(size: usize, b: &[u8], x: Option<&[u8]>, simd: bool) -> Vec<Vec<u8>> {
        let mut planes = vec![vec![0u8; b.len() / size]; size];
        let mut views: Vec<&mut [u8]> = planes.iter_mut().map(|p| p.as_mut_slice()).collect();
        if simd {
            split(size, b, x, &mut views);
        } else {
            split_scalar(size, 0, b, x, &mut views);
        }
        planes
    }

    /// Both paths give identical planes and merge back to the input, with and without a
    /// reference, on lengths around the 32-element step. (Tests in this module toggle the
    /// process-wide SIMD switch only by calling the scalar functions directly.)
    #[test]
    fn simd_and_scalar_agree_and_round_trip() {
        set_simd_enabled(true);
        for size in [2usize, 4, 8] {
            for n in [0usize, 1, 31, 32, 33, 64, 100, 1000] {
                let b = bytes(n * size, n as u64 + size as u64);
                let r = bytes(n * size, 7 + n as u64);
                for x in [None, Some(&r[..])] {
                    let fast = split_vec(size, &b, x, true);
                    assert_eq!(fast, split_vec(size, &b, x, false), "size {size} n {n}");
                    let views: Vec<&[u8]> = fast.iter().map(|p| p.as_slice()).collect();
                    let mut out = vec![0u8; b.len()];
                    merge(size, &views, x, &mut out);
                    assert_eq!(out, b);
                    let mut slow = vec![0u8; b.len()];
                    merge_scalar(size, 0, &views, x, &mut slow);
                    assert_eq!(slow, b);
                }
            }
        }
    }

    #[test]
    fn exponent_first_sign_last() {
        let x = (-1.5f32).to_le_bytes();
        let p = split_vec(4, &x, None, true);
        assert_eq!(p[0][0], 127);
        assert_eq!(p[3][0] & 1, 1);
        let h = half::bf16::from_f32(-1.5).to_bits().to_le_bytes();
        let p = split_vec(2, &h, None, true);
        assert_eq!(p[0][0], 127);
        assert_eq!(p[1][0] & 1, 1);
    }
}
