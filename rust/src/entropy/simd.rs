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

/// Byte histogram, with four interleaved count tables to break store-to-load dependencies on
/// runs of equal bytes.
pub fn histogram(symbols: &[u8]) -> [u32; 256] {
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
        assert_eq!(zero_run_scalar(&[0u8; 70]), 70);
    }
}
