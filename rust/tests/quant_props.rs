//! Property tests of the uniform and lattice quantizers.

use deltackpt::quant::uniform::{self, UniformParams};
use proptest::prelude::*;

/// Vectors with a random magnitude (2^-40 .. 2^40) and offset, so both tiny and huge ranges
/// and data that do not straddle 0 are covered.
fn scaled_vec(max_len: usize) -> impl Strategy<Value = Vec<f32>> {
    (
        prop::collection::vec(-1.0f32..1.0, 0..max_len),
        -40i32..40,
        -2.0f32..2.0,
    )
        .prop_map(|(v, e, off)| {
            let s = 2f32.powi(e);
            v.into_iter().map(|x| (x + off) * s).collect()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Codes are in range, the error is at most half a step, and requantizing the
    /// reconstruction gives the same codes.
    #[test]
    fn uniform_error_bounded(x in scaled_vec(300), bits in 1u32..=16, symmetric: bool) {
        let bits = if symmetric { bits.max(2) } else { bits };
        let (codes, p) = uniform::quantize(&x, bits, symmetric).unwrap();
        prop_assert_eq!(codes.len(), x.len());
        if symmetric {
            prop_assert_eq!(p.zero_point, 0);
            prop_assert_eq!(p.qmax, (1 << (bits - 1)) - 1);
            prop_assert_eq!(p.qmin, -p.qmax);
        } else {
            prop_assert_eq!((p.qmin, p.qmax), (0, (1 << bits) - 1));
        }
        prop_assert!(codes.iter().all(|&q| q >= p.qmin && q <= p.qmax));
        let y: Vec<f64> = uniform::dequantize(&codes, &p);
        for (&a, &b) in x.iter().zip(&y) {
            let err = (a as f64 - b).abs();
            prop_assert!(err <= p.scale * (0.5 + 1e-9), "x={} x̂={} scale={}", a, b, p.scale);
        }
        prop_assert_eq!(uniform::quantize_with(&y, &p).unwrap(), codes);
    }

    /// Symmetric quantization maps 0 to code 0 and back to exactly 0.
    #[test]
    fn symmetric_zero_exact(mut x in scaled_vec(100), bits in 2u32..=16) {
        x.push(0.0);
        let (codes, p) = uniform::quantize(&x, bits, true).unwrap();
        prop_assert_eq!(*codes.last().unwrap(), 0);
        prop_assert_eq!(*uniform::dequantize::<f32>(&codes, &p).last().unwrap(), 0.0);
    }

    /// Constant tensors are reconstructed exactly with equal codes.
    #[test]
    fn constant_exact(c in prop::num::f32::NORMAL | prop::num::f32::ZERO | prop::num::f32::SUBNORMAL,
                      len in 1usize..50, bits in 2u32..=16, symmetric: bool) {
        let x = vec![c; len];
        let (codes, p) = uniform::quantize(&x, bits, symmetric).unwrap();
        prop_assert!(codes.iter().all(|&q| q == codes[0] && q >= p.qmin && q <= p.qmax));
        prop_assert_eq!(uniform::dequantize::<f32>(&codes, &p), x);
    }

    /// Per channel equals per tensor on each row; dequantization inverts row by row.
    #[test]
    fn per_channel_is_rowwise(x in scaled_vec(64), channels in 1usize..5, bits in 2u32..=8,
                              symmetric: bool) {
        let len = x.len() / channels;
        let x = &x[..len * channels];
        let (codes, ps) = uniform::quantize_per_channel(x, channels, bits, symmetric).unwrap();
        prop_assert_eq!(ps.len(), channels);
        let y: Vec<f32> = uniform::dequantize_per_channel(&codes, &ps).unwrap();
        for c in 0..channels {
            let row = &x[c * len..(c + 1) * len];
            let (rc, rp) = uniform::quantize(row, bits, symmetric).unwrap();
            prop_assert_eq!(&codes[c * len..(c + 1) * len], &rc[..]);
            prop_assert_eq!(ps[c], rp);
            prop_assert_eq!(&y[c * len..(c + 1) * len], &uniform::dequantize::<f32>(&rc, &rp)[..]);
        }
    }

    /// Symbols are a bijection onto 0..=(qmax − qmin) for bits ≤ 8.
    #[test]
    fn symbols_roundtrip(x in scaled_vec(200), bits in 2u32..=8, symmetric: bool) {
        let (codes, p) = uniform::quantize(&x, bits, symmetric).unwrap();
        let s = uniform::to_symbols(&codes, &p).unwrap();
        prop_assert!(s.iter().all(|&v| (v as i32) <= p.qmax - p.qmin));
        prop_assert_eq!(uniform::from_symbols(&s, &p).unwrap(), codes);
    }

    /// quantize_with saturates out-of-range values at the ends and rounds ties to even.
    #[test]
    fn quantize_with_saturates(v in -1.0e6f64..1.0e6, scale in 1.0e-3f64..10.0) {
        let p = UniformParams { scale, zero_point: 3, qmin: -8, qmax: 7 };
        let q = uniform::quantize_with(&[v], &p).unwrap()[0];
        let expect = (v * (1.0 / scale) + 3.0).clamp(-8.0, 7.0).round_ties_even();
        prop_assert_eq!(q as f64, expect);
    }
}

#[test]
fn uniform_f32_and_f64_agree_on_f32_data() {
    let x: Vec<f32> = (0..1000)
        .map(|i| ((i * 7919) % 1000) as f32 / 37.0 - 13.0)
        .collect();
    let xd: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    for symmetric in [false, true] {
        let (c32, p32) = uniform::quantize(&x, 5, symmetric).unwrap();
        let (c64, p64) = uniform::quantize(&xd, 5, symmetric).unwrap();
        assert_eq!(c32, c64);
        assert_eq!(p32, p64);
    }
}

#[test]
fn uniform_large_input_parallel_path_matches_serial_chunks() {
    // Above the parallel threshold: results must equal quantizing with the same params
    // piece by piece (elementwise, order-independent).
    let n = (1 << 18) + 12345;
    let x: Vec<f32> = (0..n)
        .map(|i| ((i as u64 * 2654435761) % 100_003) as f32 / 1000.0 - 50.0)
        .collect();
    let (codes, p) = uniform::quantize(&x, 7, false).unwrap();
    for (i, piece) in x.chunks(1000).enumerate() {
        let c = uniform::quantize_with(piece, &p).unwrap();
        assert_eq!(&codes[i * 1000..i * 1000 + c.len()], &c[..]);
    }
    let y: Vec<f32> = uniform::dequantize(&codes, &p);
    assert_eq!(y.len(), n);
}

// ---------------------------------------------------------------------------------------------
// Lattice quantization
// ---------------------------------------------------------------------------------------------

use deltackpt::quant::lattice::{self, FindBasisOptions, Loss};
use deltackpt::Error;

fn code_range(bits: u32) -> (i32, i32) {
    (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
}

/// Squared distance from `t` to `Σ c_j b_j`, in f64.
fn dist2(t: &[f32], codes: &[i32], basis: &[f32], n: usize) -> f64 {
    (0..n)
        .map(|k| {
            let x: f64 = (0..n)
                .map(|j| codes[j] as f64 * basis[j * n + k] as f64)
                .sum();
            (t[k] as f64 - x).powi(2)
        })
        .sum()
}

/// Closest point of the truncated lattice by enumerating every code vector in range.
fn brute_force_min(t: &[f32], basis: &[f32], n: usize, bits: u32) -> f64 {
    let (lo, hi) = code_range(bits);
    let levels = (hi - lo + 1) as usize;
    let mut best = f64::INFINITY;
    let mut codes = vec![0i32; n];
    for idx in 0..levels.pow(n as u32) {
        let mut rest = idx;
        for c in codes.iter_mut() {
            *c = lo + (rest % levels) as i32;
            rest /= levels;
        }
        best = best.min(dist2(t, &codes, basis, n));
    }
    best
}

/// A random well-conditioned basis: identity plus a bounded perturbation, times a scale.
fn random_basis(n: usize) -> impl Strategy<Value = Vec<f32>> {
    (prop::collection::vec(-0.6f32..0.6, n * n), -10i32..10).prop_map(move |(p, e)| {
        let s = 2f32.powi(e);
        (0..n * n)
            .map(|i| ((if i / n == i % n { 1.0 } else { 0.0 }) + p[i]) * s)
            .collect()
    })
}

/// An exactly orthogonal f32 basis: a signed permutation (or, in dims 2 and 3, a rotation by a
/// Pythagorean triple, exact in small integers) with rows scaled by positive factors.
fn orthogonal_basis(n: usize) -> impl Strategy<Value = Vec<f32>> {
    (
        prop::collection::vec(0.25f32..4.0, n),
        prop::collection::vec(any::<bool>(), n),
        Just(n).prop_perturb(|n, mut rng| {
            let mut perm: Vec<usize> = (0..n).collect();
            for i in (1..n).rev() {
                perm.swap(i, rng.random_range(0..=i));
            }
            perm
        }),
        any::<bool>(),
    )
        .prop_map(move |(scales, signs, perm, rotate)| {
            let mut rows = vec![0.0f32; n * n];
            if rotate && (n == 2 || n == 3) {
                // (3, 4, 0), (-4, 3, 0), (0, 0, 5): pairwise orthogonal, exact in f32.
                let r = [[3.0f32, 4.0, 0.0], [-4.0, 3.0, 0.0], [0.0, 0.0, 5.0]];
                for j in 0..n {
                    for k in 0..n {
                        rows[j * n + k] = r[perm[j].min(n - 1)][k];
                    }
                }
                if n == 2 {
                    rows = vec![3.0, 4.0, -4.0, 3.0];
                }
            } else {
                for j in 0..n {
                    rows[j * n + perm[j]] = if signs[j] { 1.0 } else { -1.0 };
                }
            }
            for j in 0..n {
                for k in 0..n {
                    rows[j * n + k] *= scales[j];
                }
            }
            rows
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// B = λI is exactly symmetric uniform quantization with step λ (zero point 0, codes in
    /// [-2^(b-1), 2^(b-1)-1]): same codes, same reconstructed values, ties and clipping included.
    #[test]
    fn cubic_lattice_is_uniform(n in 1usize..=9, bits in 1u32..=16, m in 1.0f32..2.0,
                                e in -30i32..30,
                                parts in prop::collection::vec((-40_000i32..40_000, 0u8..3, -0.5f32..0.5), 1..60)) {
        let lambda = m * 2f32.powi(e);
        let len = parts.len() / n * n;
        prop_assume!(len > 0);
        // Multiples of λ, half-multiples (ties) and arbitrary offsets, in and out of range.
        let blocks: Vec<f32> = parts[..len]
            .iter()
            .map(|&(k, kind, f)| {
                let k = k >> (16 - bits.min(16));
                let off = match kind { 0 => 0.0, 1 => 0.5, _ => f };
                (k as f32 + off) * lambda
            })
            .collect();
        let mut basis = vec![0.0f32; n * n];
        for j in 0..n { basis[j * n + j] = lambda; }
        let codes = lattice::babai(&blocks, n, &basis, bits).unwrap();
        let (qmin, qmax) = code_range(bits);
        let p = UniformParams { scale: lambda as f64, zero_point: 0, qmin, qmax };
        prop_assert_eq!(&codes, &uniform::quantize_with(&blocks, &p).unwrap());
        let a: Vec<f32> = lattice::dequantize(&codes, n, &basis).unwrap();
        prop_assert_eq!(a, uniform::dequantize::<f32>(&codes, &p));
        let a64: Vec<f64> = lattice::dequantize(&codes, n, &basis).unwrap();
        prop_assert_eq!(a64, uniform::dequantize::<f64>(&codes, &p));
    }

    /// Codes always lie in [-2^(b-1), 2^(b-1)-1], whatever the target.
    #[test]
    fn codes_in_range(basis in (1usize..=9).prop_flat_map(random_basis),
                      bits in 1u32..=16, t in prop::collection::vec(-1.0e6f32..1.0e6, 0..90)) {
        let n = (basis.len() as f64).sqrt() as usize;
        prop_assume!(lattice::gram_schmidt(&basis, n).is_ok());
        let t = &t[..t.len() / n * n];
        let codes = lattice::babai(t, n, &basis, bits).unwrap();
        let (lo, hi) = code_range(bits);
        prop_assert_eq!(codes.len(), t.len());
        prop_assert!(codes.iter().all(|&c| c >= lo && c <= hi));
    }

    /// Orthogonal bases: Babai returns a closest point of the truncated lattice (checked by
    /// enumerating every code vector).
    #[test]
    fn babai_exact_for_orthogonal(basis in (1usize..=4).prop_flat_map(orthogonal_basis),
                                  bits in 1u32..=3,
                                  t in prop::collection::vec(-30.0f32..30.0, 4)) {
        let n = (basis.len() as f64).sqrt() as usize;
        let t = &t[..n];
        let codes = lattice::babai(t, n, &basis, bits).unwrap();
        let got = dist2(t, &codes, &basis, n);
        let best = brute_force_min(t, &basis, n, bits);
        prop_assert!(got <= best * (1.0 + 1e-12) + 1e-30, "babai {} vs closest {}", got, best);
    }

    /// General bases in dims 2-3 against brute force. Babai's point is in the truncated lattice,
    /// so its distance is never below the true minimum. Bound: unclipped Babai leaves the
    /// residual r = Σ_j (u_j − c_j) b*_j (step j fixes the b*_j component; later steps subtract
    /// b_i with i < j, which have no b*_j component), with |u_j − c_j| ≤ 1/2 and the b*_j
    /// orthogonal, so ‖t − Babai(t)‖² ≤ ¼ Σ_j ‖b*_j‖². Clipping only ever yields the end codes
    /// −2^(b−1) or 2^(b−1)−1, so when no code is at an end no clip was active and the bound
    /// must hold.
    #[test]
    fn babai_vs_brute_force(basis in (2usize..=3).prop_flat_map(random_basis), bits in 1u32..=4,
                            y in prop::collection::vec(-1.2f64..1.2, 3)) {
        let n = (basis.len() as f64).sqrt() as usize;
        prop_assume!(lattice::gram_schmidt(&basis, n).is_ok());
        // Target with basis coordinates spread over (a bit more than) the code box.
        let (lo, hi) = code_range(bits);
        let mid = (lo + hi) as f64 / 2.0;
        let half = (hi - lo) as f64 / 2.0 + 0.5;
        let t: Vec<f32> = (0..n)
            .map(|k| (0..n).map(|j| (mid + y[j] * half) * basis[j * n + k] as f64).sum::<f64>() as f32)
            .collect();
        let codes = lattice::babai(&t, n, &basis, bits).unwrap();
        let got = dist2(&t, &codes, &basis, n);
        let best = brute_force_min(&t, &basis, n, bits);
        prop_assert!(got >= best * (1.0 - 1e-9) - 1e-30);
        if codes.iter().all(|&c| c > lo && c < hi) {
            let gs = lattice::gram_schmidt(&basis, n).unwrap();
            let bound: f64 = gs.iter().map(|v| v * v).sum::<f64>() / 4.0;
            prop_assert!(got <= bound * (1.0 + 1e-9), "‖t − babai‖² {} > bound {}", got, bound);
        }
    }

    /// `error` is the mean of |x − x̂|³ (or squared) over all values.
    #[test]
    fn error_is_mean_of_residuals(basis in random_basis(3), bits in 2u32..=5,
                                  t in prop::collection::vec(-3.0f32..3.0, 3..60)) {
        prop_assume!(lattice::gram_schmidt(&basis, 3).is_ok());
        let t = &t[..t.len() / 3 * 3];
        let codes = lattice::babai(t, 3, &basis, bits).unwrap();
        let x: Vec<f64> = lattice::dequantize(&codes, 3, &basis).unwrap();
        let r: Vec<f64> = t.iter().zip(&x).map(|(&a, &b)| (a as f64 - b).abs()).collect();
        let mce = r.iter().map(|v| v * v * v).sum::<f64>() / r.len() as f64;
        let mse = r.iter().map(|v| v * v).sum::<f64>() / r.len() as f64;
        let e3 = lattice::error(t, 3, &basis, bits, Loss::Mce).unwrap();
        let e2 = lattice::error(t, 3, &basis, bits, Loss::Mse).unwrap();
        prop_assert!((e3 - mce).abs() <= 1e-9 * mce.max(1e-300) + 1e-15, "{} vs {}", e3, mce);
        prop_assert!((e2 - mse).abs() <= 1e-9 * mse.max(1e-300) + 1e-15, "{} vs {}", e2, mse);
    }

    /// Per-channel quantization is per-tensor quantization of each channel's blocks.
    #[test]
    fn lattice_per_channel_is_channelwise(channels in 1usize..4, per in 0usize..20,
                                          bases in prop::collection::vec(random_basis(2), 3),
                                          seed in any::<u64>()) {
        let n = 2;
        let bases = &bases[..channels];
        prop_assume!(bases.iter().all(|b| lattice::gram_schmidt(b, n).is_ok()));
        let flat: Vec<f32> = bases.concat();
        let mut s = seed;
        let blocks: Vec<f32> = (0..channels * per * n)
            .map(|_| { s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                       ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0 })
            .collect();
        let codes = lattice::babai_per_channel(&blocks, n, &flat, 3).unwrap();
        let back: Vec<f32> = lattice::dequantize_per_channel(&codes, n, &flat).unwrap();
        let len = per * n;
        for c in 0..channels {
            let cc = lattice::babai(&blocks[c * len..(c + 1) * len], n, &bases[c], 3).unwrap();
            prop_assert_eq!(&codes[c * len..(c + 1) * len], &cc[..]);
            let bb: Vec<f32> = lattice::dequantize(&cc, n, &bases[c]).unwrap();
            prop_assert_eq!(&back[c * len..(c + 1) * len], &bb[..]);
        }
    }
}

/// Deterministic Gaussian blocks of dimension 3: coordinates `ρ·z + √(1−ρ²)·e_k`.
fn correlated_blocks(count: usize, rho: f64, seed: u64) -> Vec<f32> {
    let mut s = seed;
    let mut unif = move || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (((z ^ (z >> 31)) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let mut gauss = move || (-2.0 * unif().ln()).sqrt() * (std::f64::consts::TAU * unif()).cos();
    let a = (1.0 - rho * rho).sqrt();
    (0..count)
        .flat_map(|_| {
            let z = gauss();
            [0; 3].map(|_| (0.05 * (rho * z + a * gauss())) as f32)
        })
        .collect()
}

fn cubic_and_found(blocks: &[f32], bits: u32, opts: &FindBasisOptions) -> (f64, f64, Vec<f32>) {
    let cubic = lattice::find_basis(
        blocks,
        3,
        bits,
        &FindBasisOptions {
            iters: 0,
            ..opts.clone()
        },
    )
    .unwrap();
    for j in 0..3 {
        for k in 0..3 {
            let v = cubic[j * 3 + k];
            assert!(if j == k {
                v > 0.0 && v == cubic[0]
            } else {
                v == 0.0
            });
        }
    }
    let found = lattice::find_basis(blocks, 3, bits, opts).unwrap();
    let e_c = lattice::error(blocks, 3, &cubic, bits, opts.loss).unwrap();
    let e_f = lattice::error(blocks, 3, &found, bits, opts.loss).unwrap();
    (e_c, e_f, found)
}

#[test]
fn search_beats_cubic_on_correlated_data() {
    let blocks = correlated_blocks(6000, 0.95, 1);
    for loss in [Loss::Mce, Loss::Mse] {
        let opts = FindBasisOptions {
            loss,
            ..Default::default()
        };
        let (e_c, e_f, _) = cubic_and_found(&blocks, 4, &opts);
        assert!(
            e_f <= 0.95 * e_c,
            "{loss:?}: searched {e_f:e} vs cubic {e_c:e}"
        );
    }
}

#[test]
fn search_never_worse_than_cubic_on_iid_data() {
    let blocks = correlated_blocks(6000, 0.0, 2);
    for (bits, sample) in [(4, 0), (3, 0), (2, 1500), (4, 1000)] {
        // sample < 6000 blocks: candidates are scored on a subsample, the final choice on all.
        let opts = FindBasisOptions {
            iters: 150,
            seed: bits as u64,
            sample_blocks: sample,
            ..Default::default()
        };
        let (e_c, e_f, _) = cubic_and_found(&blocks, bits, &opts);
        assert!(e_f <= e_c, "bits {bits}: searched {e_f:e} vs cubic {e_c:e}");
    }
}

#[test]
fn find_basis_reproducible_for_a_seed() {
    let blocks = correlated_blocks(3000, 0.8, 3);
    let opts = FindBasisOptions {
        iters: 100,
        seed: 42,
        ..Default::default()
    };
    let a = lattice::find_basis(&blocks, 3, 3, &opts).unwrap();
    let b = lattice::find_basis(&blocks, 3, 3, &opts).unwrap();
    assert_eq!(
        a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        b.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
    // f64 input holding the same values gives the same basis.
    let b64: Vec<f64> = blocks.iter().map(|&v| v as f64).collect();
    assert_eq!(lattice::find_basis(&b64, 3, 3, &opts).unwrap(), a);
}

#[test]
fn find_basis_per_channel_improves_each_channel() {
    let mut blocks = correlated_blocks(2000, 0.95, 4);
    blocks.extend(correlated_blocks(2000, 0.9, 5).iter().map(|v| v * 10.0));
    let opts = FindBasisOptions {
        iters: 150,
        ..Default::default()
    };
    let bases = lattice::find_basis_per_channel(&blocks, 3, 2, 4, &opts).unwrap();
    assert_eq!(bases.len(), 18);
    let half = blocks.len() / 2;
    for c in 0..2 {
        let data = &blocks[c * half..(c + 1) * half];
        let basis = &bases[c * 9..(c + 1) * 9];
        let cubic = lattice::find_basis(
            data,
            3,
            4,
            &FindBasisOptions {
                iters: 0,
                ..opts.clone()
            },
        )
        .unwrap();
        let e_c = lattice::error(data, 3, &cubic, 4, Loss::Mce).unwrap();
        let e_f = lattice::error(data, 3, basis, 4, Loss::Mce).unwrap();
        assert!(e_f < 0.95 * e_c, "channel {c}: {e_f:e} vs {e_c:e}");
    }
    let codes = lattice::babai_per_channel(&blocks, 3, &bases, 4).unwrap();
    assert!(codes.iter().all(|&c| (-8..=7).contains(&c)));
    assert!(lattice::find_basis_per_channel(&blocks, 3, 0, 4, &opts).is_err());
    assert!(lattice::find_basis_per_channel(&blocks, 3, 7, 4, &opts).is_err());
}

#[test]
fn lattice_bad_input() {
    let eye = [1.0f32, 0.0, 0.0, 1.0];
    assert!(matches!(
        lattice::babai(&[1.0f32, f32::NAN, 0.0, f32::NAN], 2, &eye, 4),
        Err(Error::NonFinite {
            count: 2,
            first_index: 1,
            ..
        })
    ));
    assert!(matches!(
        lattice::babai(&[1.0f32; 4], 2, &[1.0, 1.0, 1.0, 1.0], 4),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        lattice::babai(&[1.0f32; 4], 2, &[1.0, f32::INFINITY, 0.0, 1.0], 4),
        Err(Error::InvalidArgument(_))
    ));
    assert!(lattice::babai(&[1.0f32; 3], 2, &eye, 4).is_err());
    assert!(lattice::babai(&[1.0f32; 4], 2, &eye, 0).is_err());
    assert!(lattice::babai(&[1.0f32; 4], 2, &eye[..3], 4).is_err());
    assert!(lattice::dequantize::<f32>(&[1, 2, 3], 2, &eye).is_err());
    assert!(lattice::babai_per_channel(&[1.0f32; 6], 2, &[eye, eye].concat(), 4).is_err());
    assert!(lattice::babai_per_channel(&[1.0f32; 4], 2, &[], 4).is_err());
    assert!(lattice::babai::<f32>(&[], 2, &eye, 4).unwrap().is_empty());
    assert_eq!(
        lattice::error::<f32>(&[], 2, &eye, 4, Loss::Mce).unwrap(),
        0.0
    );
}

#[test]
fn lattice_large_inputs_match_piecewise_and_f64() {
    // Above the parallel threshold; the codes of each block depend on that block only.
    let blocks = correlated_blocks(70_001, 0.7, 9);
    let basis = [
        0.02f32, 0.001, -0.003, 0.004, 0.018, 0.002, -0.001, 0.005, 0.021,
    ];
    let codes = lattice::babai(&blocks, 3, &basis, 3).unwrap();
    for (i, piece) in blocks.chunks(3 * 1001).enumerate() {
        let c = lattice::babai(piece, 3, &basis, 3).unwrap();
        assert_eq!(&codes[i * 3 * 1001..i * 3 * 1001 + c.len()], &c[..]);
    }
    let b64: Vec<f64> = blocks.iter().map(|&v| v as f64).collect();
    assert_eq!(lattice::babai(&b64, 3, &basis, 3).unwrap(), codes);
    let x32: Vec<f32> = lattice::dequantize(&codes, 3, &basis).unwrap();
    let x64: Vec<f64> = lattice::dequantize(&codes, 3, &basis).unwrap();
    assert!(x32.iter().zip(&x64).all(|(&a, &b)| a == b as f32));
    // Per channel, two channels with the same basis equals one basis.
    let two = [basis, basis].concat();
    let even = &blocks[..blocks.len() / 6 * 6];
    assert_eq!(
        lattice::babai_per_channel(even, 3, &two, 3).unwrap(),
        lattice::babai(even, 3, &basis, 3).unwrap()
    );
}

#[test]
fn uniform_per_channel_large_input() {
    let x = correlated_blocks(100_000, 0.0, 10); // 300 000 values
    let (codes, ps) = uniform::quantize_per_channel(&x, 4, 6, true).unwrap();
    for c in 0..4 {
        let row = &x[c * 75_000..(c + 1) * 75_000];
        let (rc, rp) = uniform::quantize(row, 6, true).unwrap();
        assert_eq!(ps[c], rp);
        assert_eq!(&codes[c * 75_000..(c + 1) * 75_000], &rc[..]);
    }
}

proptest! {
    /// Lattice codes map to symbols 0..2^bits and back.
    #[test]
    fn lattice_symbols_roundtrip(basis in random_basis(2), bits in 1u32..=8,
                                 t in prop::collection::vec(-50.0f32..50.0, 0..40)) {
        prop_assume!(lattice::gram_schmidt(&basis, 2).is_ok());
        let t = &t[..t.len() / 2 * 2];
        let codes = lattice::babai(t, 2, &basis, bits).unwrap();
        let s = lattice::to_symbols(&codes, bits).unwrap();
        prop_assert!(s.iter().all(|&v| (v as u32) < (1 << bits)));
        prop_assert_eq!(lattice::from_symbols(&s, bits).unwrap(), codes);
        prop_assert!(lattice::to_symbols(&[1 << (bits - 1)], bits).is_err());
        prop_assert!(lattice::to_symbols(&[0], 9).is_err());
    }
}

proptest! {
    /// f64 data, including ranges that are tiny relative to their distance from 0.
    #[test]
    fn uniform_error_bounded_f64(v in prop::collection::vec(-1.0f64..1.0, 1..100),
                                 e in -300i32..300, rel in -60i32..0, off in -3.0f64..3.0,
                                 bits in 2u32..=16, symmetric: bool) {
        let s = 2f64.powi(e);
        let x: Vec<f64> = v.iter().map(|&a| (off + a * 2f64.powi(rel)) * s).collect();
        let (codes, p) = uniform::quantize(&x, bits, symmetric).unwrap();
        prop_assert!(codes.iter().all(|&q| q >= p.qmin && q <= p.qmax));
        let y: Vec<f64> = uniform::dequantize(&codes, &p);
        for (&a, &b) in x.iter().zip(&y) {
            // Half a step, plus the rounding of (q − zp)·scale, which is relative to |x| and
            // dominates when the range is tiny next to the values' distance from 0.
            let rounding = 4.0 * f64::EPSILON * a.abs().max(b.abs());
            prop_assert!((a - b).abs() <= p.scale * (0.5 + 1e-9) + rounding,
                         "x={} x̂={} scale={}", a, b, p.scale);
        }
    }
}
