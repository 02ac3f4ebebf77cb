//! Property tests of the error-bounded quantizer: every bound holds on what decode returns,
//! on random and adversarial tensors of every dtype, with and without a reference, and the
//! encoder's reconstruction is bit for bit what decode returns.
use deltackpt::entropy::simd;
use deltackpt::{
    decode_update_with, decode_with, encode, encode_reconstruct, encode_update, inspect, Bound,
    DType, EncodeOptions, Quantizer, Tensor,
};
use proptest::prelude::*;

/// Little-endian bytes of `values` rounded to `dtype` (saturated to its finite range).
fn to_bytes(dtype: DType, values: &[f64]) -> Vec<u8> {
    let max = match dtype {
        DType::F32 => f32::MAX as f64,
        DType::F64 => f64::MAX,
        DType::F16 => 65504.0,
        DType::BF16 => half::bf16::MAX.to_f64(),
    };
    let mut out = Vec::with_capacity(values.len() * dtype.size());
    for &v in values {
        let v = v.clamp(-max, max);
        match dtype {
            DType::F32 => out.extend_from_slice(&(v as f32).to_le_bytes()),
            DType::F64 => out.extend_from_slice(&v.to_le_bytes()),
            DType::F16 => out.extend_from_slice(&half::f16::from_f64(v).to_bits().to_le_bytes()),
            DType::BF16 => out.extend_from_slice(&half::bf16::from_f64(v).to_bits().to_le_bytes()),
        }
    }
    out
}

/// The elements of `bytes` as `f64` (exact).
fn values(dtype: DType, bytes: &[u8]) -> Vec<f64> {
    bytes
        .chunks_exact(dtype.size())
        .map(|c| match dtype {
            DType::F32 => f32::from_le_bytes(c.try_into().unwrap()) as f64,
            DType::F64 => f64::from_le_bytes(c.try_into().unwrap()),
            DType::F16 => half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f64(),
            DType::BF16 => half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f64(),
        })
        .collect()
}

/// Check `bound` on `got` against `want` (`v` the second moment of a moment bound).
fn holds(bound: Bound, want: &[f64], got: &[f64], v: &[f64]) -> Result<(), String> {
    match bound {
        Bound::Rel(e) => {
            let err: f64 = want.iter().zip(got).map(|(a, b)| (a - b).powi(2)).sum();
            let norm: f64 = want.iter().map(|a| a * a).sum();
            if err.sqrt() > e * norm.sqrt() {
                return Err(format!("L2 error {} > {e} x {}", err.sqrt(), norm.sqrt()));
            }
        }
        _ => {
            for (i, (a, b)) in want.iter().zip(got).enumerate() {
                let tol = match bound {
                    Bound::Abs(t) => t,
                    Bound::Pointwise(r) => r * a.abs(),
                    Bound::Moment { t, eps } => t * (v[i].abs().sqrt() + eps),
                    Bound::Each => v[i].abs(),
                    Bound::Rel(_) => unreachable!(),
                };
                if (a - b).abs() > tol || (a - b).is_nan() {
                    return Err(format!("element {i}: x={a} x̂={b} tol={tol}"));
                }
            }
        }
    }
    Ok(())
}

fn dtype_strategy() -> impl Strategy<Value = DType> {
    prop_oneof![
        Just(DType::F32),
        Just(DType::F64),
        Just(DType::F16),
        Just(DType::BF16)
    ]
}

/// Tensors that stress a bounded quantizer: a random walk step of some scale on top of
/// values of another, with outliers, constants, zeros and subnormals mixed in.
fn tensor_strategy() -> impl Strategy<Value = (Vec<f64>, Vec<f64>)> {
    (
        prop::collection::vec(-1.0f64..1.0, 0..1500),
        -40i32..20,
        -30i32..5,
        0usize..6,
        any::<u64>(),
    )
        .prop_map(|(u, scale_exp, step_exp, kind, seed)| {
            let scale = 2f64.powi(scale_exp);
            let step = 2f64.powi(step_exp) * scale;
            let mut s = seed | 1;
            let mut rnd = move || {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
            };
            let reference: Vec<f64> = u.iter().map(|&a| a * scale).collect();
            let mut x: Vec<f64> = reference.iter().map(|&r| r + step * rnd()).collect();
            match kind {
                1 if !x.is_empty() => x[0] = 1e4 * scale,   // one outlier
                2 => x.iter_mut().for_each(|v| *v = scale), // constant
                3 => x.iter_mut().step_by(3).for_each(|v| *v = 0.0), // zeros
                4 => x.iter_mut().step_by(2).for_each(|v| *v *= 1e-300), // subnormal-ish
                _ => {}
            }
            (x, reference)
        })
}

fn bound_strategy() -> impl Strategy<Value = Bound> {
    prop_oneof![
        (-30i32..2).prop_map(|e| Bound::Abs(2f64.powi(e) * 0.7)),
        (-20i32..0).prop_map(|e| Bound::Rel(2f64.powi(e))),
        (0.001f64..0.5).prop_map(Bound::Pointwise),
        ((-12i32..0), (-30i32..-5)).prop_map(|(t, eps)| Bound::Moment {
            t: 2f64.powi(t),
            eps: 2f64.powi(eps)
        }),
        Just(Bound::Each),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn every_bound_holds_and_the_reconstruction_is_the_decode(
        dtype in dtype_strategy(), (xs, rs) in tensor_strategy(), bound in bound_strategy(),
        with_ref in any::<bool>(), chunk in 1usize..700,
    ) {
        let x = to_bytes(dtype, &xs);
        let r = to_bytes(dtype, &rs);
        let v: Vec<f64> = match bound {
            // per-element tolerances: a fraction of the delta, some 0 (exact)
            Bound::Each => xs.iter().zip(&rs).enumerate()
                .map(|(i, (x, r))| if i % 7 == 0 { 0.0 } else { (x - r).abs() * 0.3 })
                .collect(),
            _ => rs.iter().map(|a| a * a * 3.0).collect(),
        };
        let vb = to_bytes(dtype, &v);
        let moment = bound.needs_moment().then_some(&vb[..]);
        let reference = with_ref.then_some(&r[..]);
        let opts = EncodeOptions {
            quantizer: Quantizer::Bounded,
            bound: Some(bound),
            moment,
            chunk_elems: chunk,
            ..Default::default()
        };
        let t = Tensor { dtype, shape: &[xs.len() as u64], data: &x };
        let mut recon = vec![0u8; x.len()];
        let blob = encode_reconstruct(t, reference, &opts, &mut recon).unwrap();
        let got = decode_with(&blob, reference, moment).unwrap();
        prop_assert_eq!(&got.data, &recon, "reconstruction differs from decode");
        let want = values(dtype, &x);
        let v_stored = values(dtype, &vb);
        holds(bound, &want, &values(dtype, &got.data), &v_stored).map_err(TestCaseError::fail)?;
        // The same blob in place, and from the plain encode.
        prop_assert_eq!(&encode(t, reference, &opts).unwrap(), &blob);
        if let Some(r) = reference {
            let mut state = r.to_vec();
            prop_assert_eq!(&encode_update(t, &mut state, &opts).unwrap(), &blob);
            prop_assert_eq!(&state, &recon);
            let mut applied = r.to_vec();
            decode_update_with(&blob, &mut applied, moment).unwrap();
            prop_assert_eq!(&applied, &recon);
        }
        // What the header reports is what was measured.
        if let Some(p) = inspect(&blob).unwrap().bounded_params().unwrap() {
            let max_abs = want.iter().zip(values(dtype, &got.data)).map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            // stored as the f32 at or above the f64 figure
            prop_assert!(p.measured.max_abs >= max_abs && p.measured.max_abs <= max_abs * (1.0 + 2f64.powi(-22)) + f32::from_bits(1) as f64,
                         "{} vs {}", p.measured.max_abs, max_abs);
        }
    }

    #[test]
    fn scalar_and_avx2_kernels_write_identical_bytes(
        dtype in dtype_strategy(), (xs, rs) in tensor_strategy(), bound in bound_strategy(),
    ) {
        let x = to_bytes(dtype, &xs);
        let r = to_bytes(dtype, &rs);
        let v: Vec<f64> = xs.iter().zip(&rs).map(|(x, r)| (x - r).abs() * 0.3 + r * r).collect();
        let vb = to_bytes(dtype, &v);
        let opts = EncodeOptions {
            quantizer: Quantizer::Bounded,
            bound: Some(bound),
            moment: bound.needs_moment().then_some(&vb[..]),
            ..Default::default()
        };
        let t = Tensor { dtype, shape: &[xs.len() as u64], data: &x };
        let with = encode(t, Some(&r), &opts).unwrap();
        let decoded_with = decode_with(&with, Some(&r), opts.moment).unwrap().data;
        simd::set_simd_enabled(false);
        let without = encode(t, Some(&r), &opts);
        let decoded_without = decode_with(&with, Some(&r), opts.moment).map(|d| d.data);
        simd::set_simd_enabled(true);
        prop_assert_eq!(with, without.unwrap());
        prop_assert_eq!(decoded_with, decoded_without.unwrap());
    }

    #[test]
    fn zero_bounds_are_exact(dtype in dtype_strategy(), (xs, rs) in tensor_strategy()) {
        let x = to_bytes(dtype, &xs);
        let r = to_bytes(dtype, &rs);
        for bound in [Bound::Abs(0.0), Bound::Rel(0.0), Bound::Pointwise(0.0)] {
            let opts = EncodeOptions { quantizer: Quantizer::Bounded, bound: Some(bound),
                                       ..Default::default() };
            let t = Tensor { dtype, shape: &[xs.len() as u64], data: &x };
            let blob = encode(t, Some(&r), &opts).unwrap();
            prop_assert_eq!(decode_with(&blob, Some(&r), None).unwrap().data, x.clone());
        }
    }
}

#[test]
fn rounding_at_the_bound_in_half_precision() {
    // fp16/bf16 grids as coarse as the tolerance: the dtype rounding alone can break a naive
    // grid; the encoder must pick another level or store the value exactly.
    for dtype in [DType::F16, DType::BF16] {
        let xs: Vec<f64> = (0..4000).map(|i| 1.0 + i as f64 * 1e-4).collect();
        let rs: Vec<f64> = (0..4000).map(|i| 1.0 + i as f64 * 0.9e-4).collect();
        let (x, r) = (to_bytes(dtype, &xs), to_bytes(dtype, &rs));
        for t in [1e-3, 5e-4, 2.44e-4, 1e-6] {
            let opts = EncodeOptions {
                quantizer: Quantizer::Bounded,
                bound: Some(Bound::Abs(t)),
                ..Default::default()
            };
            let tensor = Tensor {
                dtype,
                shape: &[xs.len() as u64],
                data: &x,
            };
            let blob = encode(tensor, Some(&r), &opts).unwrap();
            let got = values(dtype, &decode_with(&blob, Some(&r), None).unwrap().data);
            holds(Bound::Abs(t), &values(dtype, &x), &got, &[]).unwrap();
        }
    }
}

#[test]
fn pointwise_never_returns_a_positive_value_as_zero() {
    // Adam's exp_avg_sq: tiny positive values next to large ones, some exactly 0.
    let rs: Vec<f64> = (0..5000).map(|i| 1e-12 * (i % 97) as f64).collect();
    let xs: Vec<f64> = rs
        .iter()
        .enumerate()
        .map(|(i, r)| if i % 11 == 0 { 0.0 } else { r * 0.999 + 1e-20 })
        .collect();
    let (x, r) = (to_bytes(DType::F32, &xs), to_bytes(DType::F32, &rs));
    let opts = EncodeOptions {
        quantizer: Quantizer::Bounded,
        bound: Some(Bound::Pointwise(0.01)),
        ..Default::default()
    };
    let t = Tensor {
        dtype: DType::F32,
        shape: &[5000],
        data: &x,
    };
    let blob = encode(t, Some(&r), &opts).unwrap();
    let got = values(
        DType::F32,
        &decode_with(&blob, Some(&r), None).unwrap().data,
    );
    for (a, b) in values(DType::F32, &x).iter().zip(&got) {
        assert_eq!(*a > 0.0, *b > 0.0, "{a} -> {b}");
        assert!((a - b).abs() <= 0.01 * a.abs());
    }
}

#[test]
fn wrong_or_missing_second_moment_is_refused() {
    let xs: Vec<f64> = (0..1000).map(|i| (i as f64).sin() * 1e-3).collect();
    let vs: Vec<f64> = (0..1000).map(|i| 1e-6 * (1.0 + (i as f64).cos())).collect();
    let (x, v) = (to_bytes(DType::F32, &xs), to_bytes(DType::F32, &vs));
    let opts = EncodeOptions {
        quantizer: Quantizer::Bounded,
        bound: Some(Bound::Moment { t: 0.1, eps: 1e-8 }),
        moment: Some(&v),
        ..Default::default()
    };
    let t = Tensor {
        dtype: DType::F32,
        shape: &[1000],
        data: &x,
    };
    let blob = encode(t, None, &opts).unwrap();
    assert!(decode_with(&blob, None, None).is_err());
    let mut other = v.clone();
    other[0] ^= 1;
    assert!(decode_with(&blob, None, Some(&other)).is_err());
    assert!(decode_with(&blob, None, Some(&v)).is_ok());
    let no_moment = EncodeOptions {
        moment: None,
        ..opts
    };
    assert!(encode(t, None, &no_moment).is_err());
}

#[test]
fn a_relative_bound_holds_where_the_planning_sample_misleads() {
    // The planner samples every 4th block of 1024 elements of a 4M-element tensor. Here the
    // sampled blocks hold no change and the others a change of 1%: a plan made from the
    // sample alone would zero everything. The encoder must notice and code within bound.
    let n = 4 << 20;
    let rs: Vec<f64> = (0..n).map(|i| 1.0 + (i % 251) as f64 * 1e-3).collect();
    let xs: Vec<f64> = rs
        .iter()
        .enumerate()
        .map(|(i, r)| if (i / 1024) % 4 == 0 { *r } else { r * 1.01 })
        .collect();
    let (x, r) = (to_bytes(DType::F32, &xs), to_bytes(DType::F32, &rs));
    let t = Tensor {
        dtype: DType::F32,
        shape: &[n as u64],
        data: &x,
    };
    for e in [1e-3, 5e-3] {
        let opts = EncodeOptions {
            quantizer: Quantizer::Bounded,
            bound: Some(Bound::Rel(e)),
            ..Default::default()
        };
        let mut recon = vec![0u8; x.len()];
        let blob = encode_reconstruct(t, Some(&r), &opts, &mut recon).unwrap();
        let got = decode_with(&blob, Some(&r), None).unwrap().data;
        assert!(got == recon);
        let want = values(DType::F32, &x);
        holds(Bound::Rel(e), &want, &values(DType::F32, &got), &[]).unwrap();
        // and in place (the reference is the output: checked before coding)
        let mut state = r.clone();
        assert_eq!(encode_update(t, &mut state, &opts).unwrap(), blob);
    }
}

#[test]
fn blobs_of_the_first_token_scheme_still_decode() {
    // Written by the first bounded encoder (16 direct tokens, escape 72): levels up to a few
    // hundred and one escaped outlier, tolerance 1e-4. The new encoder writes 32 direct
    // tokens; both must read.
    let data = |ext: &str| {
        std::fs::read(format!(
            "{}/tests/data/bounded_narrow_f32.{ext}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    };
    let (blob, r, want) = (data("blob"), data("ref"), data("out"));
    let got = decode_with(&blob, Some(&r), None).unwrap();
    assert!(got.data == want);
    let p = inspect(&blob).unwrap().bounded_params().unwrap().unwrap();
    assert_eq!(p.tokens, deltackpt::entropy::levels::Tokens::NARROW);
    // Re-encoded today: the wide scheme, the same bound.
    let x = want;
    let t = Tensor {
        dtype: DType::F32,
        shape: &[5000],
        data: &x,
    };
    let opts = EncodeOptions {
        quantizer: Quantizer::Bounded,
        bound: Some(Bound::Abs(1e-4)),
        ..Default::default()
    };
    let wide = encode(t, Some(&r), &opts).unwrap();
    let p = inspect(&wide).unwrap().bounded_params().unwrap().unwrap();
    assert_eq!(p.tokens, deltackpt::entropy::levels::Tokens::WIDE);
    let back = decode_with(&wide, Some(&r), None).unwrap().data;
    holds(
        Bound::Abs(1e-4),
        &values(DType::F32, &x),
        &values(DType::F32, &back),
        &[],
    )
    .unwrap();
}
