//! Quick single-core throughput check of the chunk coders (best of several runs, so that
//! a loaded machine disturbs it less than a mean would). For figures of record use
//! `cargo bench -p deltackpt --bench entropy`.

use std::time::Instant;

use deltackpt::entropy::chunks::{self, Method};

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

/// CPU time of all threads of this process in seconds (Linux `schedstat`), so that other
/// processes on a loaded machine do not count.
fn cpu_time() -> Option<f64> {
    let mut total = 0.0;
    for t in std::fs::read_dir("/proc/self/task").ok()? {
        let s = std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok()?;
        total += s.split_whitespace().next()?.parse::<f64>().ok()? * 1e-9;
    }
    Some(total)
}

/// Best of `runs` samples, each timing `REPS` back-to-back calls (the kernel's CPU-time
/// accounting here advances in 4 ms ticks, so a sample must be much longer than that):
/// (wall seconds per call, CPU seconds per call, last result).
fn best<T>(runs: usize, mut f: impl FnMut() -> T) -> (f64, f64, T) {
    const REPS: usize = 8;
    let (mut w_best, mut c_best) = (f64::INFINITY, f64::INFINITY);
    let mut last = None;
    for _ in 0..runs {
        let c = cpu_time();
        let t = Instant::now();
        for _ in 0..REPS {
            last = Some(f());
        }
        w_best = w_best.min(t.elapsed().as_secs_f64() / REPS as f64);
        if let (Some(a), Some(b)) = (c, cpu_time()) {
            c_best = c_best.min((b - a) / REPS as f64);
        }
    }
    (w_best, c_best, last.unwrap())
}

fn auto(data: &[u8], out: &mut [u8]) {
    use deltackpt::entropy::{self, Coder};
    let n = data.len();
    let (te, ce, blob) = best(3, || entropy::encode(data, Coder::Auto).unwrap());
    let (td, cd, _) = best(3, || entropy::decode_into(&blob, out).unwrap());
    println!(
        "Auto (whole stream, {} threads): {:.4} bits/symbol, encode {:.0} MB/s (CPU time {:.0}), decode {:.0} MB/s (CPU time {:.0})",
        deltackpt::parallel::num_threads(),
        blob.len() as f64 * 8.0 / n as f64,
        n as f64 / te / 1e6,
        n as f64 / ce / 1e6,
        n as f64 / td / 1e6,
        n as f64 / cd / 1e6
    );
}

fn baselines(data: &[u8], out: &mut [u8]) {
    use deltackpt::entropy;
    let n = data.len() as f64;
    type Enc = fn(&[u8], &mut Vec<u8>);
    let coders: [(&str, Enc, usize); 3] = [
        ("zstd-3", |s, o| entropy::encode_zstd(s, 3, o).unwrap(), 5),
        ("zstd-19", |s, o| entropy::encode_zstd(s, 19, o).unwrap(), 0),
        ("gzip-9", |s, o| entropy::encode_gzip(s, 9, o).unwrap(), 0),
    ];
    for (name, enc, runs) in coders {
        // Slow encoders are timed once, without repetitions.
        let (te, ce, blob) = if runs == 0 {
            let c0 = cpu_time();
            let t = Instant::now();
            let mut o = Vec::new();
            enc(data, &mut o);
            let te = t.elapsed().as_secs_f64();
            let ce = match (c0, cpu_time()) {
                (Some(a), Some(b)) => b - a,
                _ => f64::NAN,
            };
            (te, ce, o)
        } else {
            best(runs, || {
                let mut o = Vec::new();
                enc(data, &mut o);
                o
            })
        };
        let (td, cd, _) = best(3, || entropy::decode_into(&blob, out).unwrap());
        println!(
            "{name}: {:.4} bits/symbol, encode {:.0} MB/s (CPU time {:.0}), decode {:.0} MB/s (CPU time {:.0})",
            blob.len() as f64 * 8.0 / n,
            n / te / 1e6,
            n / ce / 1e6,
            n / td / 1e6,
            n / cd / 1e6
        );
    }
}

fn main() {
    let n = 16 << 20;
    let data = iid(n, 0.97, 8, 42);
    let mut out = vec![0u8; n];
    let only = std::env::args().nth(1);
    if only.as_deref().is_none_or(|o| o == "Auto") {
        auto(&data, &mut out);
    }
    if only.as_deref().is_none_or(|o| o == "Baselines") {
        baselines(&data, &mut out);
    }
    for m in [
        Method::Tans,
        Method::Huffman,
        Method::RunsTans,
        Method::RunsHuffman,
        Method::CtxTans,
    ] {
        if only.as_ref().is_some_and(|o| *o != format!("{m:?}")) {
            continue;
        }
        let (te, ce, bodies) = best(3, || {
            data.chunks(chunks::CHUNK_SYMBOLS)
                .map(|c| {
                    let mut b = Vec::new();
                    chunks::encode_chunk(c, m, &mut b);
                    b
                })
                .collect::<Vec<_>>()
        });
        let (td, cd, _) = best(3, || {
            for (b, o) in bodies.iter().zip(out.chunks_mut(chunks::CHUNK_SYMBOLS)) {
                chunks::decode_chunk(b, o).unwrap();
            }
        });
        assert!(out == data);
        let size: usize = bodies.iter().map(|b| b.len()).sum();
        println!(
            "{m:?}: {:.4} bits/symbol, encode {:.0} MB/s (CPU time {:.0}), decode {:.0} MB/s (CPU time {:.0})",
            size as f64 * 8.0 / n as f64,
            n as f64 / te / 1e6,
            n as f64 / ce / 1e6,
            n as f64 / td / 1e6,
            n as f64 / cd / 1e6
        );
    }
}
