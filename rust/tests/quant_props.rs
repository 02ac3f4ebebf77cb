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
