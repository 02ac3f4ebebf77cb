//! Vectorized scans with scalar twins that give identical results.
//!
//! The SIMD paths are chosen at run time (`is_x86_feature_detected!`) and can be switched off
//! with [`set_simd_enabled`] so that tests can check both paths produce the same bytes.

use std::sync::atomic::{AtomicBool, Ordering};

static SIMD: AtomicBool = AtomicBool::new(true);

/// Allow (`true`, the default) or forbid the vectorized code paths, process-wide.
pub fn set_simd_enabled(enabled: bool) {
    SIMD.store(enabled, Ordering::Relaxed);
}

/// Whether vectorized paths are allowed and the CPU supports AVX2.
pub fn simd_enabled() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        SIMD.load(Ordering::Relaxed) && std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether vectorized paths are allowed and the CPU supports BMI1 and BMI2 (used to compile
/// the bit-I/O loops with flag-free shifts and `bzhi`).
pub fn bmi2_enabled() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        SIMD.load(Ordering::Relaxed)
            && std::arch::is_x86_feature_detected!("bmi1")
            && std::arch::is_x86_feature_detected!("bmi2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Byte histogram. Streams over the alphabet 0..8 (LC symbols with b = 3) are counted with
/// AVX2 compares when allowed; anything else, or a stream found to hold a larger byte, goes
/// through [`histogram_scalar`]. Both give the same counts.
pub fn histogram(symbols: &[u8]) -> [u32; 256] {
    #[cfg(target_arch = "x86_64")]
    {
        let probe = &symbols[..symbols.len().min(1024)];
        if symbols.len() >= 4096 && simd_enabled() && probe.iter().all(|&b| b < 8) {
            // SAFETY: AVX2 availability was checked at run time just above.
            if let Some(h) = unsafe { histogram8_avx2(symbols) } {
                return h;
            }
        }
    }
    histogram_scalar(symbols)
}

/// Counts of bytes 0..8 with AVX2; `None` if some byte is 8 or more.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn histogram8_avx2(s: &[u8]) -> Option<[u32; 256]> {
    use std::arch::x86_64::*;
    let zero = _mm256_setzero_si256();
    let seven = _mm256_set1_epi8(7);
    let mut total = [0u64; 8];
    let mut bad = zero;
    let blocks = s.chunks_exact(32);
    let tail = blocks.remainder();
    let mut blocks = blocks.peekable();
    while blocks.peek().is_some() {
        // Byte counters overflow after 255 blocks.
        let mut acc = [zero; 8];
        for b in blocks.by_ref().take(255) {
            // SAFETY: `b` is 32 bytes long; the load is unaligned.
            let v = unsafe { _mm256_loadu_si256(b.as_ptr() as *const __m256i) };
            bad = _mm256_or_si256(bad, _mm256_subs_epu8(v, seven));
            for (k, a) in acc.iter_mut().enumerate() {
                let eq = _mm256_cmpeq_epi8(v, _mm256_set1_epi8(k as i8));
                *a = _mm256_sub_epi8(*a, eq);
            }
        }
        for (k, a) in acc.iter().enumerate() {
            let s4 = _mm256_sad_epu8(*a, zero);
            let mut lanes = [0u64; 4];
            // SAFETY: `lanes` is 32 bytes long; the store is unaligned.
            unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, s4) };
            total[k] += lanes.iter().sum::<u64>();
        }
    }
    if _mm256_testz_si256(bad, bad) == 0 {
        return None;
    }
    for &b in tail {
        if b >= 8 {
            return None;
        }
        total[b as usize] += 1;
    }
    let mut h = [0u32; 256];
    for (k, &t) in total.iter().enumerate() {
        h[k] = t as u32;
    }
    Some(h)
}

/// Scalar byte histogram, with four interleaved count tables to break store-to-load
/// dependencies on runs of equal bytes.
pub fn histogram_scalar(symbols: &[u8]) -> [u32; 256] {
    let mut t = [[0u32; 256]; 4];
    let mut quads = symbols.chunks_exact(4);
    for q in &mut quads {
        t[0][q[0] as usize] += 1;
        t[1][q[1] as usize] += 1;
        t[2][q[2] as usize] += 1;
        t[3][q[3] as usize] += 1;
    }
    for &s in quads.remainder() {
        t[0][s as usize] += 1;
    }
    let mut h = [0u32; 256];
    for (s, c) in h.iter_mut().enumerate() {
        *c = t[0][s] + t[1][s] + t[2][s] + t[3][s];
    }
    h
}

/// Number of leading zero bytes of `s` (the length of the zero run it starts with).
pub fn zero_run(s: &[u8]) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        if s.len() >= 32 && simd_enabled() {
            // SAFETY: AVX2 availability was checked at run time just above.
            return unsafe { zero_run_avx2(s) };
        }
    }
    zero_run_scalar(s)
}

/// Scalar [`zero_run`]: eight bytes at a time, then bytewise.
pub fn zero_run_scalar(s: &[u8]) -> usize {
    let mut i = 0;
    let mut words = s.chunks_exact(8);
    for w in &mut words {
        let v = u64::from_le_bytes(w.try_into().unwrap());
        if v != 0 {
            return i + (v.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    for &b in words.remainder() {
        if b != 0 {
            return i;
        }
        i += 1;
    }
    i
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn zero_run_avx2(s: &[u8]) -> usize {
    use std::arch::x86_64::*;
    let zero = _mm256_setzero_si256();
    let mut i = 0;
    while i + 32 <= s.len() {
        // SAFETY: `i + 32 <= s.len()`, and the load is unaligned.
        let v = unsafe { _mm256_loadu_si256(s.as_ptr().add(i) as *const __m256i) };
        let nz = !(_mm256_movemask_epi8(_mm256_cmpeq_epi8(v, zero)) as u32);
        if nz != 0 {
            return i + nz.trailing_zeros() as usize;
        }
        i += 32;
    }
    i + zero_run_scalar(&s[i..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_run_paths_agree() {
        let mut v = vec![0u8; 300];
        for end in [0usize, 1, 7, 8, 31, 32, 33, 64, 100, 299] {
            v.iter_mut().for_each(|b| *b = 0);
            v[end] = 5;
            assert_eq!(zero_run_scalar(&v), end);
            assert_eq!(zero_run(&v), end);
        }
        assert_eq!(zero_run(&[0u8; 70]), 70);
    }

    #[test]
    fn histogram_paths_agree() {
        let small: Vec<u8> = (0..100_000u64).map(|i| (i * i % 8) as u8).collect();
        assert_eq!(histogram(&small), histogram_scalar(&small));
        assert_eq!(
            histogram(&small)[3],
            small.iter().filter(|&&b| b == 3).count() as u32
        );
        let mut late = small.clone();
        late[99_000] = 200;
        assert_eq!(histogram(&late), histogram_scalar(&late));
        late[99_999] = 9;
        assert_eq!(histogram(&late), histogram_scalar(&late));
        assert_eq!(zero_run_scalar(&[0u8; 70]), 70);
    }
}
