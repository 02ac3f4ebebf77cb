//! Criterion benchmarks of the uniform and lattice quantizers.
//!
//! The crate pool's size is fixed per process by `DELTACKPT_NUM_THREADS`; run the suite once
//! per thread count (the benchmark ids carry it):
//! `DELTACKPT_NUM_THREADS=1 cargo bench -p deltackpt --bench quant` (then `=2`).
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use deltackpt::parallel::num_threads;
use deltackpt::quant::{lattice, uniform};

/// Deterministic pseudo-Gaussian weights (sum of 4 uniforms), scaled like a conv layer.
fn weights(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    let mut next = move || {
        s = s
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    (0..len)
        .map(|_| (next() + next() + next() + next()) * 0.05)
        .collect()
}

/// Blocks of 3 with correlated coordinates (like rows of 3×3 kernels).
fn correlated_blocks(count: usize, seed: u64) -> Vec<f32> {
    let base = weights(count * 4, seed);
    base.chunks_exact(4)
        .flat_map(|c| [c[0] + 0.3 * c[1], c[0] + 0.3 * c[2], c[0] + 0.3 * c[3]])
        .collect()
}

fn bench_quant(c: &mut Criterion) {
    let t = num_threads();

    let x = weights(16 << 20, 1);
    let mut g = c.benchmark_group("uniform");
    g.sample_size(10);
    g.throughput(Throughput::Bytes((x.len() * 4) as u64));
    g.bench_function(
        format!("per_tensor_symmetric_b4_16M_f32/threads={t}"),
        |b| b.iter(|| uniform::quantize(black_box(&x), 4, true).unwrap()),
    );
    g.bench_function(format!("per_tensor_affine_b8_16M_f32/threads={t}"), |b| {
        b.iter(|| uniform::quantize(black_box(&x), 8, false).unwrap())
    });
    drop(g);
    drop(x);

    let blocks = correlated_blocks((4 << 20) / 3, 2);
    let basis = lattice::find_basis(
        &blocks[..30_000],
        3,
        4,
        &lattice::FindBasisOptions::default(),
    )
    .unwrap();
    let mut g = c.benchmark_group("lattice");
    g.sample_size(10);
    g.throughput(Throughput::Bytes((blocks.len() * 4) as u64));
    g.bench_function(format!("babai_dim3_b4_4M_f32/threads={t}"), |b| {
        b.iter(|| lattice::babai(black_box(&blocks), 3, &basis, 4).unwrap())
    });
    let codes = lattice::babai(&blocks, 3, &basis, 4).unwrap();
    g.bench_function(format!("dequantize_dim3_4M_f32/threads={t}"), |b| {
        b.iter(|| lattice::dequantize::<f32>(black_box(&codes), 3, &basis).unwrap())
    });
    drop(g);

    let layer = correlated_blocks(1_000_000 / 3, 3);
    let mut g = c.benchmark_group("find_basis");
    g.sample_size(10);
    g.throughput(Throughput::Bytes((layer.len() * 4) as u64));
    g.bench_function(format!("1M_weights_dim3_b4_default/threads={t}"), |b| {
        b.iter(|| {
            lattice::find_basis(
                black_box(&layer),
                3,
                4,
                &lattice::FindBasisOptions::default(),
            )
            .unwrap()
        })
    });
}

criterion_group!(benches, bench_quant);
criterion_main!(benches);
