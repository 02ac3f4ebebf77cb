//! Criterion benchmarks of the tensor codec on a 16M-element fp32 delta.
//!
//! The delta is synthetic but shaped like a real one (Laplace-distributed magnitudes spread
//! over many binades, a reference of unit scale); the pytest-benchmark suite in `benches/`
//! measures the same operations on a real all-MiniLM-L6-v2 step delta.
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use deltackpt::quant::exponent::{quantize, BucketValue};
use deltackpt::{decode, encode, DType, EncodeOptions, Quantizer, Tensor};

const N: usize = 1 << 24;

fn data() -> (Vec<f32>, Vec<f32>) {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut uniform = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let reference: Vec<f32> = (0..N).map(|_| (uniform() * 2.0 - 1.0) as f32).collect();
    let next: Vec<f32> = reference
        .iter()
        .map(|r| {
            let u = uniform();
            let mag = -(uniform().ln()) * 1e-4;
            r + if u < 0.5 { mag } else { -mag } as f32
        })
        .collect();
    (reference, next)
}

fn bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn bench(c: &mut Criterion) {
    std::env::set_var("DELTACKPT_NUM_THREADS", "1");
    let (reference, next) = data();
    let delta: Vec<f32> = next.iter().zip(&reference).map(|(a, b)| a - b).collect();
    let (rb, nb) = (bytes(&reference), bytes(&next));
    let x = Tensor {
        dtype: DType::F32,
        shape: &[N as u64],
        data: &nb,
    };
    let mut g = c.benchmark_group("codec_fp32_16M_1thread");
    g.sample_size(10);
    g.throughput(Throughput::Bytes((N * 4) as u64));
    g.bench_function("exponent_quantize_b3", |b| {
        b.iter(|| quantize(&delta, 3, BucketValue::Mean).unwrap())
    });
    let lossy = EncodeOptions::default();
    g.bench_function("encode_delta_b3", |b| {
        b.iter(|| encode(x, Some(&rb), &lossy).unwrap())
    });
    let blob = encode(x, Some(&rb), &lossy).unwrap();
    g.bench_function("decode_apply_b3", |b| {
        b.iter(|| decode(&blob, Some(&rb)).unwrap())
    });
    let lossless = EncodeOptions {
        quantizer: Quantizer::None,
        ..Default::default()
    };
    g.bench_function("encode_lossless", |b| {
        b.iter(|| encode(x, None, &lossless).unwrap())
    });
    let lblob = encode(x, None, &lossless).unwrap();
    g.bench_function("decode_lossless", |b| {
        b.iter(|| decode(&lblob, None).unwrap())
    });
    for level in [3, 19] {
        let (symbols, _) = quantize(&delta, 3, BucketValue::Mean).unwrap();
        g.bench_with_input(BenchmarkId::new("zstd_symbols", level), &level, |b, &l| {
            b.iter(|| zstd::bulk::compress(&symbols, l).unwrap())
        });
    }
    g.bench_function("zstd3_lossless", |b| {
        b.iter(|| zstd::bulk::compress(&nb, 3).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
