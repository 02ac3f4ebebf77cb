//! Criterion benchmarks of the entropy coders on 16M i.i.d. symbols (p0 = 0.97, K = 8).
//!
//! Single-core figures code the stream chunk by chunk on the calling thread; the
//! `chunked_decode/2_threads` figure goes through the crate's pool (set
//! `DELTACKPT_NUM_THREADS=2`).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use deltackpt::entropy::{self, chunks, Coder};

const N: usize = 16 << 20;

fn iid(n: usize, p0: f64, k: u64, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    (0..n)
        .map(|_| {
            let u = (next() >> 11) as f64 / (1u64 << 53) as f64;
            if u < p0 {
                0
            } else {
                1 + (next() % (k - 1)) as u8
            }
        })
        .collect()
}

/// Chunk bodies of `symbols` coded with `method`, one per chunk.
fn bodies(symbols: &[u8], method: chunks::Method) -> Vec<Vec<u8>> {
    symbols
        .chunks(chunks::CHUNK_SYMBOLS)
        .map(|c| {
            let mut b = Vec::new();
            chunks::encode_chunk(c, method, &mut b);
            b
        })
        .collect()
}

fn decode_bodies(bodies: &[Vec<u8>], out: &mut [u8]) {
    for (b, o) in bodies.iter().zip(out.chunks_mut(chunks::CHUNK_SYMBOLS)) {
        chunks::decode_chunk(b, o).unwrap();
    }
}

fn bench(c: &mut Criterion) {
    let data = iid(N, 0.97, 8, 42);
    let mut out = vec![0u8; N];
    let mut g = c.benchmark_group("entropy_16M_p0.97_K8");
    g.sample_size(10);
    g.measurement_time(std::time::Duration::from_secs(4));
    g.throughput(Throughput::Bytes(N as u64));

    for (name, method) in [
        ("tans", chunks::Method::Tans),
        ("huffman", chunks::Method::Huffman),
        ("runs_tans", chunks::Method::RunsTans),
        ("ctx_tans", chunks::Method::CtxTans),
    ] {
        let b = bodies(&data, method);
        let size: usize = b.iter().map(|x| x.len()).sum();
        eprintln!("{name}: {:.4} bits/symbol", size as f64 * 8.0 / N as f64);
        g.bench_function(BenchmarkId::new("decode_1core", name), |bch| {
            bch.iter(|| decode_bodies(&b, &mut out))
        });
        {
            g.bench_function(BenchmarkId::new("encode_1core", name), |bch| {
                bch.iter(|| bodies(&data, method))
            });
        }
    }

    // Whole-stream API through the pool: 1 thread (sequential) vs the pool.
    let blob = entropy::encode(&data, Coder::Tans).unwrap();
    let tans_bodies = bodies(&data, chunks::Method::Tans);
    g.bench_function(BenchmarkId::new("chunked_decode", "1_thread"), |bch| {
        bch.iter(|| decode_bodies(&tans_bodies, &mut out))
    });
    g.bench_function(
        BenchmarkId::new(
            "chunked_decode",
            format!("{}_threads", deltackpt::parallel::num_threads()),
        ),
        |bch| bch.iter(|| entropy::decode_into(&blob, &mut out).unwrap()),
    );

    for level in [3, 19] {
        let mut z = Vec::new();
        entropy::encode_zstd(&data, level, &mut z).unwrap();
        eprintln!(
            "zstd-{level}: {:.4} bits/symbol",
            z.len() as f64 * 8.0 / N as f64
        );
        g.bench_function(
            BenchmarkId::new("decode_1core", format!("zstd-{level}")),
            |bch| bch.iter(|| entropy::decode_into(&z, &mut out).unwrap()),
        );
        if level == 3 {
            g.bench_function(BenchmarkId::new("encode_1core", "zstd-3"), |bch| {
                bch.iter(|| {
                    let mut o = Vec::new();
                    entropy::encode_zstd(&data, 3, &mut o).unwrap();
                    o
                })
            });
        }
    }
    let mut gz = Vec::new();
    entropy::encode_gzip(&data, 9, &mut gz).unwrap();
    eprintln!(
        "gzip-9: {:.4} bits/symbol",
        gz.len() as f64 * 8.0 / N as f64
    );
    g.bench_function(BenchmarkId::new("decode_1core", "gzip-9"), |bch| {
        bch.iter(|| entropy::decode_into(&gz, &mut out).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
