//! Property tests of the fused chain restore: `decode_chain_update` over random chains of
//! deltas (exponent and error-bounded, fp32/fp16/bf16/fp64, with clamps, several chunks and
//! thread counts) gives bit for bit what `decode_update` link by link gives; a chain with a
//! wrong link, a damaged blob or a mismatched state is refused.
use deltackpt::chain::clamp0;
use deltackpt::{
    decode_chain_update, decode_update, encode, Bound, ChainLink, DType, EncodeOptions, Quantizer,
    Tensor,
};
use proptest::prelude::*;

#[path = "../fuzz/fuzz_targets/bodies.rs"]
mod bodies;

fn to_bytes(dtype: DType, values: &[f64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * dtype.size());
    for &v in values {
        match dtype {
            DType::F32 => out.extend_from_slice(&(v as f32).to_le_bytes()),
            DType::F64 => out.extend_from_slice(&v.to_le_bytes()),
            DType::F16 => out.extend_from_slice(&half::f16::from_f64(v).to_bits().to_le_bytes()),
            DType::BF16 => out.extend_from_slice(&half::bf16::from_f64(v).to_bits().to_le_bytes()),
        }
    }
    out
}

/// Options of link `k`: exponent (bits 2–4) or error-bounded (rel, abs, pointwise).
fn opts(kind: u8, chunk: usize) -> EncodeOptions<'static> {
    let bounded = |b| EncodeOptions {
        quantizer: Quantizer::Bounded,
        bound: Some(b),
        chunk_elems: chunk,
        ..Default::default()
    };
    match kind % 5 {
        0 => bounded(Bound::Rel(0.03)),
        1 => bounded(Bound::Abs(1e-3)),
        2 => bounded(Bound::Pointwise(0.01)),
        k => EncodeOptions {
            bits: 1 + k,
            chunk_elems: chunk,
            ..Default::default()
        },
    }
}

/// A random walk of `d` steps from `x0`, each coded against the previous reconstruction:
/// the blobs and clamp flags of the chain, and the state link by link.
fn chain(
    dtype: DType,
    x0: &[f64],
    steps: &[(u8, bool, u64)],
    chunk: usize,
) -> (Vec<Vec<u8>>, Vec<bool>, Vec<u8>) {
    let shape = [x0.len() as u64];
    let mut truth = x0.to_vec();
    let mut state = to_bytes(dtype, x0);
    let (mut blobs, mut clamps) = (Vec::new(), Vec::new());
    for &(kind, clamp, seed) in steps {
        let mut s = seed | 1;
        for t in truth.iter_mut() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            *t += ((s >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 0.02;
        }
        let x = to_bytes(dtype, &truth);
        let t = Tensor {
            dtype,
            shape: &shape,
            data: &x,
        };
        let blob = encode(t, Some(&state), &opts(kind, chunk)).unwrap();
        decode_update(&blob, &mut state).unwrap();
        if clamp {
            clamp0(dtype, &mut state);
        }
        blobs.push(blob);
        clamps.push(clamp);
    }
    (blobs, clamps, state)
}

fn links<'a>(blobs: &'a [Vec<u8>], clamps: &[bool]) -> Vec<ChainLink<'a>> {
    blobs
        .iter()
        .zip(clamps)
        .map(|(b, &c)| ChainLink { blob: b, clamp0: c })
        .collect()
}

fn dtype_of(i: u8) -> DType {
    [DType::F32, DType::F16, DType::BF16, DType::F64][i as usize % 4]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn fused_equals_link_by_link(
        dt in 0u8..4,
        x0 in prop::collection::vec(-1.0f64..1.0, 0..3000),
        steps in prop::collection::vec((0u8..5, any::<bool>(), any::<u64>()), 1..8),
        chunk in prop::sample::select(vec![64usize, 257, 1000, 1 << 18]),
        threads in 1usize..4,
    ) {
        let dtype = dtype_of(dt);
        let (blobs, clamps, want) = chain(dtype, &x0, &steps, chunk);
        let mut got = to_bytes(dtype, &x0);
        std::env::set_var("DELTACKPT_NUM_THREADS", threads.to_string());
        decode_chain_update(&links(&blobs, &clamps), dtype, &[x0.len() as u64], &mut got).unwrap();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn a_wrong_link_is_refused(
        x0 in prop::collection::vec(-1.0f64..1.0, 1..2000),
        steps in prop::collection::vec((0u8..5, Just(false), any::<u64>()), 2..5),
        skip in 0usize..4,
    ) {
        let (blobs, clamps, _) = chain(DType::F32, &x0, &steps, 300);
        let skip = skip % (blobs.len() - 1); // not the last: a prefix of a chain is a chain
        // a chain with a link left out: a later link meets a state it was not coded against
        let (b, c): (Vec<_>, Vec<_>) = blobs.iter().cloned().zip(clamps).enumerate()
            .filter(|(i, _)| *i != skip).map(|(_, p)| p).unzip();
        let mut before = to_bytes(DType::F32, &x0);
        for blob in &blobs[..skip] {
            decode_update(blob, &mut before).unwrap();
        }
        let mut after = before.clone();
        decode_update(&blobs[skip], &mut after).unwrap();
        // a link that changed nothing (every delta within the bound) may be left out
        prop_assume!(after != before);
        let mut got = to_bytes(DType::F32, &x0);
        let r = decode_chain_update(&links(&b, &c), DType::F32, &[x0.len() as u64], &mut got);
        prop_assert!(r.is_err());
    }

    #[test]
    fn damaged_blobs_are_refused(
        x0 in prop::collection::vec(-1.0f64..1.0, 1..1000),
        steps in prop::collection::vec((0u8..5, any::<bool>(), any::<u64>()), 1..4),
        which in any::<usize>(),
        at in any::<usize>(),
        flip in 1u8..=255,
    ) {
        let (mut blobs, clamps, _) = chain(DType::BF16, &x0, &steps, 200);
        let k = which % blobs.len();
        let i = at % blobs[k].len();
        blobs[k][i] ^= flip;
        let mut got = to_bytes(DType::BF16, &x0);
        let r = decode_chain_update(&links(&blobs, &clamps), DType::BF16, &[x0.len() as u64], &mut got);
        prop_assert!(r.is_err());
    }
}

#[test]
fn mixed_chunking_and_other_quantizers_go_link_by_link() {
    let x0: Vec<f64> = (0..5000).map(|i| (i as f64 * 0.01).sin()).collect();
    let (mut blobs, clamps, _) = chain(DType::F32, &x0, &[(3, false, 1), (0, true, 2)], 1000);
    // a third link coded with another chunking and a uniform quantizer
    let mut state = to_bytes(DType::F32, &x0);
    for (b, &c) in blobs.iter().zip(&clamps) {
        decode_update(b, &mut state).unwrap();
        if c {
            clamp0(DType::F32, &mut state);
        }
    }
    let x: Vec<u8> = to_bytes(DType::F32, &x0.iter().map(|v| v + 0.01).collect::<Vec<_>>());
    let t = Tensor {
        dtype: DType::F32,
        shape: &[5000],
        data: &x,
    };
    let uniform = EncodeOptions {
        quantizer: Quantizer::Uniform,
        bits: 4,
        chunk_elems: 700,
        ..Default::default()
    };
    blobs.push(encode(t, Some(&state), &uniform).unwrap());
    decode_update(&blobs[2], &mut state).unwrap();
    let clamps = [clamps[0], clamps[1], false];
    let mut got = to_bytes(DType::F32, &x0);
    decode_chain_update(&links(&blobs, &clamps), DType::F32, &[5000], &mut got).unwrap();
    assert_eq!(got, state);
}

#[test]
fn a_state_of_another_dtype_or_shape_is_refused() {
    let x0: Vec<f64> = (0..100).map(|i| i as f64 * 0.01).collect();
    let (blobs, clamps, _) = chain(DType::F16, &x0, &[(0, false, 3)], 64);
    let mut s = to_bytes(DType::BF16, &x0);
    assert!(decode_chain_update(&links(&blobs, &clamps), DType::BF16, &[100], &mut s).is_err());
    let mut s = to_bytes(DType::F16, &x0);
    assert!(decode_chain_update(&links(&blobs, &clamps), DType::F16, &[10, 10], &mut s).is_err());
    let mut s = to_bytes(DType::F16, &x0[..99]);
    assert!(decode_chain_update(&links(&blobs, &clamps), DType::F16, &[100], &mut s).is_err());
}

#[test]
fn clamp0_is_torch_clamp() {
    // negatives to +0.0; -0.0, NaN, positives kept
    let f = |v: f32| {
        let mut b = v.to_le_bytes();
        clamp0(DType::F32, &mut b);
        f32::from_le_bytes(b).to_bits()
    };
    assert_eq!(f(-1.5), 0);
    assert_eq!(f(f32::NEG_INFINITY), 0);
    assert_eq!(f(-0.0), (-0.0f32).to_bits());
    assert_eq!(f(2.0), 2.0f32.to_bits());
    assert!(f32::from_bits(f(f32::NAN)).is_nan());
    for (dtype, nan) in [(DType::F16, 0xfe00u16), (DType::BF16, 0xffc0)] {
        let g = |b: u16| {
            let mut x = b.to_le_bytes();
            clamp0(dtype, &mut x);
            u16::from_le_bytes(x)
        };
        assert_eq!(g(0x8001), 0); // the smallest negative subnormal
        assert_eq!(g(0x8000), 0x8000);
        assert_eq!(g(nan), nan);
        assert_eq!(g(0x3c00), 0x3c00);
    }
}

/// The fuzz body over mutated two-link chains of every kind (totality without a fuzzer).
#[test]
fn fuzz_body_survives_mutated_chains() {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let x0: Vec<f64> = (0..700).map(|i| (i as f64 * 0.37).sin()).collect();
    for i in 0..1500u64 {
        let dtype = dtype_of(i as u8);
        let steps = [(i as u8, false, next()), ((i / 5) as u8, true, next())];
        let (blobs, _, _) = chain(dtype, &x0, &steps, [64, 300, 1 << 18][i as usize % 3]);
        let mut data = (blobs[0].len() as u32).to_le_bytes().to_vec();
        data.extend_from_slice(&blobs[0]);
        data.extend_from_slice(&blobs[1]);
        for _ in 0..1 + next() % 4 {
            let at = 4 + (next() % (data.len() as u64 - 4)) as usize;
            data[at] = next() as u8;
        }
        if next() % 7 == 0 {
            data.truncate((next() % data.len() as u64) as usize);
        }
        bodies::chain_decode(&data);
    }
}
