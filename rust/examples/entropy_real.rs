//! Code real symbol streams (one `.u8` file per tensor, as written by `benches/lc_streams.py`
//! and `benches/level_streams.py`) per tensor and print, for the largest stream and for all
//! streams together, `auto`'s encode/decode throughput next to zstd -3's measured in the same
//! run (interleaved, best of several) and its size next to zstd -19's. `ALL=1` adds the table
//! of every coder (bits/symbol, single-thread throughput).
//!
//! ```text
//! DELTACKPT_NUM_THREADS=1 cargo run --release -p deltackpt --example entropy_real -- /work/data/lc_minilm
//! ```

use std::time::Instant;

use deltackpt::entropy::{self, Coder};

type Enc = fn(&[u8], &mut Vec<u8>);

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/work/data/lc_minilm".into());
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .expect("reading the stream directory")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "u8"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("reading a stream"),
            )
        })
        .collect();
    files.sort();
    let n: usize = files.iter().map(|f| f.1.len()).sum();
    let mut hist = [0u64; 256];
    let mut h_tensor = 0.0;
    for (_, f) in &files {
        let mut ht = [0u64; 256];
        for &s in f {
            hist[s as usize] += 1;
            ht[s as usize] += 1;
        }
        h_tensor += entropy_of(&ht);
    }
    println!(
        "{dir}: {} tensors, {n} symbols, p0 = {:.4}, order-0 entropy {:.4} bit/symbol global, {:.4} per tensor",
        files.len(),
        hist[0] as f64 / n as f64,
        entropy_of(&hist) / n as f64,
        h_tensor / n as f64
    );
    compare(&files);
    if std::env::var("ALL").is_err() {
        return;
    }
    let coders: [(&str, Enc); 8] = [
        ("tans", |s, o| {
            entropy::encode_into(s, Coder::Tans, o).unwrap()
        }),
        ("huffman", |s, o| {
            entropy::encode_into(s, Coder::Huffman, o).unwrap()
        }),
        ("lz77", |s, o| {
            entropy::encode_into(s, Coder::Lz77, o).unwrap()
        }),
        ("auto", |s, o| {
            entropy::encode_into(s, Coder::Auto, o).unwrap()
        }),
        ("zstd-3", |s, o| entropy::encode_zstd(s, 3, o).unwrap()),
        ("zstd-19", |s, o| entropy::encode_zstd(s, 19, o).unwrap()),
        ("gzip-6", |s, o| entropy::encode_gzip(s, 6, o).unwrap()),
        ("gzip-9", |s, o| entropy::encode_gzip(s, 9, o).unwrap()),
    ];
    println!(
        "| coder | bits/symbol | vs zstd-19 | encode MB/s wall (CPU time) | decode MB/s wall (CPU time) |"
    );
    println!("|---|---|---|---|---|");
    let mut z19 = 0.0;
    let mut rows = Vec::new();
    for (name, enc) in coders {
        let runs = if name.ends_with("-19") || name.ends_with("-9") || name == "lz77" {
            1
        } else {
            3
        };
        let (te, ce, blobs) = best(runs, if runs == 1 { 1 } else { 4 }, || {
            files
                .iter()
                .map(|(_, f)| {
                    let mut o = Vec::new();
                    enc(f, &mut o);
                    o
                })
                .collect::<Vec<Vec<u8>>>()
        });
        let bytes: usize = blobs.iter().map(|b| b.len()).sum();
        let mut outs: Vec<Vec<u8>> = files.iter().map(|f| vec![0u8; f.1.len()]).collect();
        let (td, cd, _) = best(3, 4, || {
            for (b, o) in blobs.iter().zip(outs.iter_mut()) {
                entropy::decode_into(b, o).unwrap();
            }
        });
        for ((_, f), o) in files.iter().zip(&outs) {
            assert!(f == o, "{name} round trip failed");
        }
        let bps = bytes as f64 * 8.0 / n as f64;
        if name == "zstd-19" {
            z19 = bps;
        }
        let mbs = |t: f64| n as f64 / t / 1e6;
        rows.push((name, bps, mbs(te), mbs(ce), mbs(td), mbs(cd)));
    }
    for (name, bps, e, ec, d, dc) in rows {
        println!(
            "| {name} | {bps:.4} | {:.3} | {e:.0} ({ec:.0}) | {d:.0} ({dc:.0}) |",
            bps / z19
        );
    }
    // Which chunk methods did auto pick (bytes per method)?
    let mut by_method = std::collections::BTreeMap::<u8, (usize, usize)>::new();
    for (_, f) in &files {
        let blob = entropy::encode(f, Coder::Auto).unwrap();
        let body = &blob[9..];
        let k = f
            .len()
            .div_ceil(u32::from_le_bytes(body[..4].try_into().unwrap()) as usize);
        let mut at = 4 + 4 * k;
        for j in 0..k {
            let len = u32::from_le_bytes(body[4 + 4 * j..8 + 4 * j].try_into().unwrap()) as usize;
            let e = by_method.entry(body[at]).or_default();
            e.0 += 1;
            e.1 += len;
            at += len;
        }
    }
    println!("auto chunk methods (id: chunks, bytes): {by_method:?}");
    if std::env::var("PER_TENSOR").is_ok() {
        for (name, f) in &files {
            let a = entropy::encode(f, Coder::Auto).unwrap().len();
            let mut z = Vec::new();
            entropy::encode_zstd(f, 19, &mut z).unwrap();
            println!("{name}: {} symbols auto {a} zstd-19 {}", f.len(), z.len());
        }
    }
}

/// `auto` against zstd -3 (speed, same run, interleaved) and zstd -19 (size), for the largest
/// stream and for all streams.
fn compare(files: &[(String, Vec<u8>)]) {
    let largest = files.iter().max_by_key(|f| f.1.len()).unwrap();
    let all: Vec<&[u8]> = files.iter().map(|f| f.1.as_slice()).collect();
    println!("| streams | symbols | auto bits/sym | zstd-19 | size ratio | auto enc MB/s | zstd-3 enc | enc ratio | auto dec MB/s | zstd-3 dec | dec ratio |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (label, set) in [
        (
            format!("largest ({})", largest.0),
            vec![largest.1.as_slice()],
        ),
        ("all".to_string(), all),
    ] {
        compare_set(&label, &set);
    }
}

fn compare_set(label: &str, set: &[&[u8]]) {
    let n: usize = set.iter().map(|s| s.len()).sum();
    let auto: Enc = |s, o| entropy::encode_into(s, Coder::Auto, o).unwrap();
    let z3: Enc = |s, o| entropy::encode_zstd(s, 3, o).unwrap();
    let enc_all = |e: Enc| -> Vec<Vec<u8>> {
        set.iter()
            .map(|s| {
                let mut o = Vec::new();
                e(s, &mut o);
                o
            })
            .collect()
    };
    let z19: usize = set
        .iter()
        .map(|s| {
            let mut o = Vec::new();
            entropy::encode_zstd(s, 19, &mut o).unwrap();
            o.len()
        })
        .sum();
    let reps = (20_000_000 / n.max(1)).clamp(1, 200);
    let (mut ea, mut ez, mut da, mut dz) = (f64::MAX, f64::MAX, f64::MAX, f64::MAX);
    let (ba, bz) = (enc_all(auto), enc_all(z3));
    let mut outs: Vec<Vec<u8>> = set.iter().map(|s| vec![0u8; s.len()]).collect();
    for _ in 0..7 {
        ea = ea.min(best(1, reps, || enc_all(auto)).0);
        ez = ez.min(best(1, reps, || enc_all(z3)).0);
        for (blobs, t) in [(&ba, &mut da), (&bz, &mut dz)] {
            let d = best(1, reps, || {
                for (b, o) in blobs.iter().zip(outs.iter_mut()) {
                    entropy::decode_into(b, o).unwrap();
                }
            });
            *t = t.min(d.0);
            assert!(
                outs.iter().zip(set).all(|(o, s)| o == s),
                "round trip failed"
            );
        }
    }
    let a: usize = ba.iter().map(|b| b.len()).sum();
    let bps = |b: usize| b as f64 * 8.0 / n as f64;
    let mbs = |t: f64| n as f64 / t / 1e6;
    println!(
        "| {label} | {n} | {:.4} | {:.4} | {:.3} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} | {:.2} |",
        bps(a),
        bps(z19),
        a as f64 / z19 as f64,
        mbs(ea),
        mbs(ez),
        ez / ea,
        mbs(da),
        mbs(dz),
        dz / da
    );
}

/// CPU time of all threads of this process in seconds (Linux `schedstat`).
fn cpu_time() -> Option<f64> {
    let mut total = 0.0;
    for t in std::fs::read_dir("/proc/self/task").ok()? {
        let s = std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok()?;
        total += s.split_whitespace().next()?.parse::<f64>().ok()? * 1e-9;
    }
    Some(total)
}

/// Best of `runs` samples of `reps` back-to-back calls (CPU-time accounting advances in 4 ms
/// ticks here): (wall seconds per call, CPU seconds per call, last result).
fn best<T>(runs: usize, reps: usize, mut f: impl FnMut() -> T) -> (f64, f64, T) {
    let (mut w_best, mut c_best) = (f64::INFINITY, f64::INFINITY);
    let mut last = None;
    for _ in 0..runs {
        let c = cpu_time();
        let t = Instant::now();
        for _ in 0..reps {
            last = Some(f());
        }
        w_best = w_best.min(t.elapsed().as_secs_f64() / reps as f64);
        if let (Some(a), Some(b)) = (c, cpu_time()) {
            c_best = c_best.min((b - a) / reps as f64);
        }
    }
    (w_best, c_best, last.unwrap())
}

fn entropy_of(h: &[u64; 256]) -> f64 {
    let n: u64 = h.iter().sum();
    h.iter()
        .filter(|&&c| c > 0)
        .map(|&c| c as f64 * (n as f64 / c as f64).log2())
        .sum()
}
