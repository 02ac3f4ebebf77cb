//! The lossless plane records: round trips on float-like data, SIMD and scalar paths giving
//! the same blobs, blobs of the earlier record format still decoding, forged records refused.
use deltackpt::entropy::simd::set_simd_enabled;
use deltackpt::{decode, encode, Coder, DType, EncodeOptions, Error, Quantizer, Tensor};
use proptest::prelude::*;

#[path = "../fuzz/fuzz_targets/bodies.rs"]
mod bodies;

fn opts(coder: Coder, chunk: usize) -> EncodeOptions<'static> {
    EncodeOptions {
        quantizer: Quantizer::None,
        coder,
        chunk_elems: chunk,
        ..Default::default()
    }
}

/// Weight-like elements: a narrow band of exponents, random mantissas and signs, with runs of
/// one repeated value (constant planes) and a sprinkling of special bit patterns.
fn weights(dtype: DType, n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut out = Vec::with_capacity(n * dtype.size());
    for i in 0..n {
        let r = next();
        let v = if (i / 97) % 5 == 4 {
            0.25
        } else {
            let m = (r >> 40) as f64 / (1u64 << 24) as f64;
            let e = -(((r >> 8) % 8) as i32) - 3;
            (1.0 + m) * 2f64.powi(e) * if r & 1 == 1 { -1.0 } else { 1.0 }
        };
        let v = if r % 211 == 0 { f64::NAN } else { v };
        match dtype {
            DType::F64 => out.extend_from_slice(&v.to_le_bytes()),
            DType::F32 => out.extend_from_slice(&(v as f32).to_le_bytes()),
            DType::F16 => out.extend_from_slice(&half::f16::from_f64(v).to_le_bytes()),
            DType::BF16 => out.extend_from_slice(&half::bf16::from_f64(v).to_le_bytes()),
        }
    }
    out
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
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn plane_records_round_trip_and_simd_changes_no_byte(
        dtype in dtype_strategy(), n in 0usize..5000, seed in any::<u64>(),
        chunk in 1usize..3000, with_ref in any::<bool>(), coder in 0usize..4,
    ) {
        let x = weights(dtype, n, seed);
        let r = weights(dtype, n, seed ^ 0x5555);
        let reference = with_ref.then_some(&r[..]);
        let o = opts([Coder::Auto, Coder::Huffman, Coder::Raw, Coder::Tans][coder], chunk);
        let t = Tensor { dtype, shape: &[n as u64], data: &x };
        set_simd_enabled(true);
        let blob = encode(t, reference, &o).unwrap();
        let fast = decode(&blob, reference).unwrap().data;
        set_simd_enabled(false);
        let scalar_blob = encode(t, reference, &o).unwrap();
        let slow = decode(&blob, reference).unwrap().data;
        set_simd_enabled(true);
        prop_assert!(fast == x);
        prop_assert!(slow == x);
        prop_assert!(scalar_blob == blob);
    }

    #[test]
    fn forged_lossless_chunks_are_typed_errors(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        bodies::lossless_decode(&data);
    }
}

/// Weight-like data is smaller than raw, and a tensor of one value costs a few bytes per plane.
#[test]
fn auto_compresses_exponents_and_constant_planes() {
    let x = weights(DType::F32, 20_000, 3);
    let t = Tensor {
        dtype: DType::F32,
        shape: &[20_000],
        data: &x,
    };
    let blob = encode(t, None, &opts(Coder::Auto, 1 << 18)).unwrap();
    assert!(
        blob.len() < x.len() * 7 / 8,
        "{} of {}",
        blob.len(),
        x.len()
    );
    let ones: Vec<u8> = (0..4096).flat_map(|_| 1.0f32.to_le_bytes()).collect();
    let t = Tensor {
        dtype: DType::F32,
        shape: &[4096],
        data: &ones,
    };
    let blob = encode(t, None, &opts(Coder::Auto, 1 << 18)).unwrap();
    assert!(blob.len() < 120, "{}", blob.len());
    assert!(decode(&blob, None).unwrap().data == ones);
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// Written by the previous lossless format (every plane a self-describing symbol stream):
/// fp32 with NaN payloads, ±0, ±Inf and subnormals; the same as a delta; bf16.
#[test]
fn blobs_of_the_stream_record_format_still_decode() {
    let x = fixture("lossless_v1_f32.out");
    assert!(decode(&fixture("lossless_v1_f32.blob"), None).unwrap().data == x);
    let r = fixture("lossless_v1_f32_delta.ref");
    let got = decode(&fixture("lossless_v1_f32_delta.blob"), Some(&r)).unwrap();
    assert!(got.data == x);
    let h = fixture("lossless_v1_bf16.out");
    assert!(
        decode(&fixture("lossless_v1_bf16.blob"), None)
            .unwrap()
            .data
            == h
    );
}

/// A chunk of plane records for 8 f32 elements: one good record and one forged one.
fn chunk_with(forged: &[u8]) -> Vec<u8> {
    let mut c = vec![3u8, 0x08, 0x00];
    for rec in [&[0x41u8, 7][..], &[0x41, 7], &[0x41, 7], forged] {
        c.extend_from_slice(&(rec.len() as u32).to_le_bytes());
        c.extend_from_slice(rec);
    }
    c
}

#[test]
fn forged_plane_records_are_refused() {
    // dtype byte 0 = f32 in the fuzz body; patch it in.
    let run = |rec: &[u8]| {
        let mut c = chunk_with(rec);
        c[0] = 0;
        c
    };
    let good = run(&[0x40, 1, 2, 3, 4, 5, 6, 7, 8]);
    bodies::lossless_decode(&good);
    for bad in [
        &[0x40u8, 1, 2][..],
        &[0x41],
        &[0x41, 1, 2],
        &[0x42, 0],
        &[0x43],
        &[0x43, 9, 0],
        &[0x4f, 0],
        &[],
    ] {
        bodies::lossless_decode(&run(bad));
    }
    // Directly: an unknown method is Unsupported, a short raw plane Corrupt.
    let blob = container(&chunk_with(&[0x4f, 0])[3..]);
    assert!(matches!(decode(&blob, None), Err(Error::Unsupported(_))));
    let blob = container(&chunk_with(&[0x40, 1, 2])[3..]);
    assert!(matches!(decode(&blob, None), Err(Error::Corrupt(_))));
    let blob = container(&good[3..]);
    let want: Vec<u8> = (0..8)
        .flat_map(|i| {
            let v = u32::from_be_bytes([7, 7, 7, i + 1]).rotate_right(1);
            v.to_le_bytes()
        })
        .collect();
    assert!(decode(&blob, None).unwrap().data == want);
}

/// A lossless f32 container of 8 elements around one chunk.
fn container(chunk: &[u8]) -> Vec<u8> {
    let header = deltackpt::Header {
        dtype: DType::F32,
        shape: vec![8],
        quantizer: Quantizer::None,
        coder: Coder::Auto,
        bits: 0,
        flags: 0,
        reference_hash: None,
        params: Vec::new(),
        chunk_elems: 8,
        chunk_sizes: vec![chunk.len() as u64],
        tag: 0,
    };
    deltackpt::format::write(&header, &[chunk.to_vec()])
}
