//! Property tests of the tensor codec: lossless bit equality, lossy bounds, totality.
use deltackpt::{
    decode, decode_update, encode, encode_reconstruct, encode_update, Bound, Coder, DType,
    EncodeOptions, Error, Quantizer, Tensor,
};
use proptest::prelude::*;

#[path = "../fuzz/fuzz_targets/bodies.rs"]
mod bodies;

fn opts(q: Quantizer, bits: u8, chunk: usize) -> EncodeOptions<'static> {
    EncodeOptions {
        quantizer: q,
        bits,
        chunk_elems: chunk,
        ..Default::default()
    }
}

fn dtype_strategy() -> impl Strategy<Value = DType> {
    prop_oneof![
        Just(DType::F32),
        Just(DType::F64),
        Just(DType::F16),
        Just(DType::BF16)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn lossless_is_bit_exact(dtype in dtype_strategy(), n in 0usize..3000,
                             seed in any::<u64>(), chunk in 1usize..1000,
                             with_ref in any::<bool>(), coder in 0usize..4) {
        let mut s = seed | 1;
        let mut next = || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; s as u8 };
        let bytes: Vec<u8> = (0..n * dtype.size()).map(|_| next()).collect();
        let refb: Vec<u8> = (0..n * dtype.size()).map(|_| next()).collect();
        let coder = [Coder::Auto, Coder::Raw, Coder::Zstd, Coder::Gzip][coder];
        let o = EncodeOptions { coder, ..opts(Quantizer::None, 0, chunk) };
        let r = with_ref.then_some(&refb[..]);
        let x = Tensor { dtype, shape: &[n as u64], data: &bytes };
        let blob = encode(x, r, &o).unwrap();
        prop_assert_eq!(decode(&blob, r).unwrap().data, bytes);
    }

    #[test]
    fn exponent_error_never_exceeds_the_delta(values in proptest::collection::vec(-1e6f32..1e6, 0..2000),
                                               bits in 1u8..=8, chunk in 1usize..700) {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let x = Tensor { dtype: DType::F32, shape: &[values.len() as u64], data: &bytes };
        let blob = encode(x, None, &opts(Quantizer::Exponent, bits, chunk)).unwrap();
        let out = decode(&blob, None).unwrap().data;
        for (v, c) in values.iter().zip(out.chunks_exact(4)) {
            let y = f32::from_le_bytes(c.try_into().unwrap());
            prop_assert!((v - y).abs() <= v.abs(), "x={} y={}", v, y);
        }
    }

    #[test]
    fn reconstruction_is_what_decode_returns(dtype in dtype_strategy(),
                                             values in proptest::collection::vec(-1e3f32..1e3, 0..1500),
                                             steps in proptest::collection::vec(-1e-2f32..1e-2, 1500),
                                             q in 0usize..4, bits in 1u8..=8, chunk in 1usize..700,
                                             with_ref in any::<bool>()) {
        let to_bytes = |v: &[f32]| -> Vec<u8> {
            v.iter().flat_map(|&f| match dtype {
                DType::F32 => f.to_le_bytes().to_vec(),
                DType::F64 => (f as f64).to_le_bytes().to_vec(),
                DType::F16 => half::f16::from_f32(f).to_bits().to_le_bytes().to_vec(),
                DType::BF16 => half::bf16::from_f32(f).to_bits().to_le_bytes().to_vec(),
            }).collect()
        };
        let next: Vec<f32> = values.iter().zip(&steps).map(|(v, s)| v + s).collect();
        let (refb, bytes) = (to_bytes(&values), to_bytes(&next));
        let quantizer = [Quantizer::None, Quantizer::Exponent, Quantizer::Uniform, Quantizer::Lattice][q];
        let o = EncodeOptions { lattice_iters: 3, ..opts(quantizer, bits, chunk) };
        let r = with_ref.then_some(&refb[..]);
        let x = Tensor { dtype, shape: &[values.len() as u64], data: &bytes };
        let mut recon = vec![0xa5u8; bytes.len()];
        match encode(x, r, &o) {
            // Options this quantizer refuses (1-bit symmetric uniform, ...) fail both ways.
            Err(_) => prop_assert!(encode_reconstruct(x, r, &o, &mut recon).is_err()),
            Ok(plain) => {
                let blob = encode_reconstruct(x, r, &o, &mut recon).unwrap();
                prop_assert_eq!(&blob, &plain);
                prop_assert_eq!(decode(&blob, r).unwrap().data, &recon[..]);
                // In place: the reference becomes the reconstruction.
                let mut state = refb.clone();
                if with_ref {
                    prop_assert_eq!(encode_update(x, &mut state, &o).unwrap(), plain);
                    prop_assert_eq!(&state, &recon);
                    // And decoding in place gives the same bytes.
                    let mut state = refb.clone();
                    decode_update(&blob, &mut state).unwrap();
                    prop_assert_eq!(state, recon);
                }
            }
        }
    }

    #[test]
    fn forged_blobs_never_panic(seed in any::<u64>(), edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
                                lossless in any::<bool>()) {
        let values: Vec<f32> = (0..500).map(|i| ((i as f32) * 0.37 + seed as f32).sin() * 1e-3).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let q = if lossless { Quantizer::None } else { Quantizer::Exponent };
        let x = Tensor { dtype: DType::F32, shape: &[20, 25], data: &bytes };
        let blob = encode(x, None, &opts(q, 3, 128)).unwrap();
        let mut body = blob[..blob.len() - 8].to_vec();
        for (i, b) in edits { let at = i % body.len(); body[at] = b; }
        let sum = xxhash_rust::xxh3::xxh3_64(&body);
        body.extend_from_slice(&sum.to_le_bytes());
        match decode(&body, None) {
            Ok(_) | Err(Error::Corrupt(_)) | Err(Error::Unsupported(_)) => {}
            Err(e) => prop_assert!(false, "unexpected error kind {e:?}"),
        }
        // In place, against a buffer of any size: a typed error, never a panic.
        let mut state = vec![0u8; bytes.len()];
        match decode_update(&body, &mut state) {
            Ok(_) | Err(Error::Corrupt(_)) | Err(Error::Unsupported(_)) | Err(Error::ReferenceMismatch(_)) => {}
            Err(e) => prop_assert!(false, "unexpected error kind {e:?}"),
        }
    }
}

#[test]
fn truncation_and_flips_are_corrupt() {
    let bytes: Vec<u8> = (0..1000u32)
        .flat_map(|i| (i as f32).to_le_bytes())
        .collect();
    let x = Tensor {
        dtype: DType::F32,
        shape: &[1000],
        data: &bytes,
    };
    let blob = encode(x, None, &EncodeOptions::default()).unwrap();
    for cut in [0, 3, 10, blob.len() / 2, blob.len() - 1] {
        assert!(matches!(decode(&blob[..cut], None), Err(Error::Corrupt(_))));
    }
    for i in 0..blob.len() {
        let mut b = blob.clone();
        b[i] ^= 0x40;
        assert!(
            matches!(decode(&b, None), Err(Error::Corrupt(_))),
            "flip at {i}"
        );
    }
}

#[test]
fn non_finite_names_the_first_index() {
    let mut v = [1.0f32; 10];
    v[6] = f32::NAN;
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let x = Tensor {
        dtype: DType::F32,
        shape: &[10],
        data: &bytes,
    };
    let err = encode(x, None, &EncodeOptions::default()).unwrap_err();
    assert!(matches!(
        err,
        Error::NonFinite {
            count: 1,
            first_index: 6,
            ..
        }
    ));
    assert!(err.to_string().contains("quantizer=\"none\""));
}

#[test]
fn tensor_fuzz_body_is_total_on_mutated_blobs() {
    let values: Vec<f32> = (0..3000)
        .map(|i| ((i as f32) * 0.13).sin() * 1e-2)
        .collect();
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let x = Tensor {
        dtype: DType::F32,
        shape: &[30, 100],
        data: &bytes,
    };
    let mut seeds = Vec::new();
    for q in [
        Quantizer::None,
        Quantizer::Exponent,
        Quantizer::Uniform,
        Quantizer::Lattice,
    ] {
        for coder in [Coder::Auto, Coder::Tans, Coder::Huffman, Coder::Lz77] {
            let o = EncodeOptions {
                coder,
                lattice_iters: 5,
                ..opts(q, 3, 700)
            };
            seeds.push(encode(x, None, &o).unwrap());
        }
    }
    for bound in [
        Bound::Abs(1e-4),
        Bound::Rel(1e-2),
        Bound::Pointwise(0.01),
        Bound::Moment { t: 0.1, eps: 1e-8 },
    ] {
        let o = EncodeOptions {
            bound: Some(bound),
            moment: matches!(bound, Bound::Moment { .. }).then_some(&bytes[..]),
            ..opts(Quantizer::Bounded, 0, 700)
        };
        seeds.push(encode(x, None, &o).unwrap());
    }
    // The fuzz seeds: forged, valid-checksum blobs (see tests/forged_blobs.rs).
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds/tensor_decode");
    for e in std::fs::read_dir(dir).unwrap() {
        seeds.push(std::fs::read(e.unwrap().path()).unwrap());
    }
    let mut s = 0x1234_5678_9abc_def1u64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    for i in 0..3000 {
        let mut b = seeds[i % seeds.len()].clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % b.len() as u64) as usize;
            b[at] = next() as u8;
        }
        if next() % 5 == 0 {
            b.truncate((next() % b.len() as u64) as usize);
        }
        bodies::tensor_decode(&b);
    }
}
