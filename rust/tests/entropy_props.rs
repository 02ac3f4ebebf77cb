//! Property tests of the entropy coders: round trips, size bounds, totality on bad input.

use deltackpt::entropy::{self, chunks, runlit, simd, tans, Coder};
use proptest::prelude::*;

#[path = "../fuzz/fuzz_targets/bodies.rs"]
mod bodies;

const CODERS: [Coder; 7] = [
    Coder::Auto,
    Coder::Raw,
    Coder::Zstd,
    Coder::Gzip,
    Coder::Tans,
    Coder::Huffman,
    Coder::Lz77,
];

/// Small deterministic generator (xorshift64*), so size checks are reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// i.i.d. symbols: 0 with probability p0, else uniform over 1..k.
fn iid(n: usize, p0: f64, k: u32, seed: u64) -> Vec<u8> {
    let mut r = Rng(seed | 1);
    (0..n)
        .map(|_| {
            if r.unit() < p0 {
                0
            } else {
                1 + (r.next() % (k as u64 - 1)) as u8
            }
        })
        .collect()
}

fn entropy_bits(symbols: &[u8]) -> f64 {
    let mut h = [0u64; 256];
    for &s in symbols {
        h[s as usize] += 1;
    }
    let n = symbols.len() as f64;
    h.iter()
        .filter(|&&c| c > 0)
        .map(|&c| c as f64 * (n / c as f64).log2())
        .sum()
}

fn round_trip_all(symbols: &[u8]) {
    for coder in CODERS {
        let blob = entropy::encode(symbols, coder).unwrap();
        assert_eq!(entropy::decoded_len(&blob).unwrap(), symbols.len());
        let back = entropy::decode(&blob).unwrap();
        assert!(back == symbols, "{coder:?} round trip failed");
        let mut out = vec![0u8; symbols.len()];
        entropy::decode_into(&blob, &mut out).unwrap();
        assert!(out == symbols);
        let mut appended = vec![1, 2, 3];
        entropy::encode_into(symbols, coder, &mut appended).unwrap();
        assert_eq!(&appended[3..], &blob[..]);
    }
}

fn every_method(symbols: &[u8]) {
    use chunks::Method::*;
    let max = symbols.iter().copied().max().unwrap_or(0);
    for m in [
        Raw,
        Tans,
        Huffman,
        RunsTans,
        RunsHuffman,
        CtxTans,
        Lz77,
        RunLit,
    ] {
        if matches!(m, RunsTans | RunsHuffman) && (max > 216 || symbols.is_empty()) {
            continue;
        }
        let mut body = Vec::new();
        chunks::encode_chunk(symbols, m, &mut body);
        let mut out = vec![0u8; symbols.len()];
        chunks::decode_chunk(&body, &mut out).unwrap();
        assert!(out == symbols, "{m:?} round trip failed");
    }
}

fn geometric(n: usize, q: f64, seed: u64) -> Vec<u8> {
    let mut r = Rng(seed | 1);
    (0..n)
        .map(|_| {
            let mut s = 0u8;
            while s < 255 && r.unit() < q {
                s += 1;
            }
            s
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn arbitrary_streams_round_trip(v in proptest::collection::vec(any::<u8>(), 0..3000)) {
        round_trip_all(&v);
        every_method(&v);
    }

    #[test]
    fn small_alphabet_streams_round_trip(
        v in proptest::collection::vec(prop_oneof![8 => Just(0u8), 1 => 1u8..8], 0..6000)
    ) {
        round_trip_all(&v);
        every_method(&v);
    }

    #[test]
    fn skewed_geometric_round_trips(q in 0.01f64..0.9, n in 1usize..20_000, seed in any::<u64>()) {
        let v = geometric(n, q, seed);
        round_trip_all(&v);
        every_method(&v);
    }

    #[test]
    fn truncated_streams_are_rejected(
        v in proptest::collection::vec(prop_oneof![4 => Just(0u8), 1 => any::<u8>()], 1..4000),
        cut in any::<prop::sample::Index>(),
    ) {
        for coder in CODERS {
            let blob = entropy::encode(&v, coder).unwrap();
            let at = cut.index(blob.len());
            prop_assert!(entropy::decode(&blob[..at]).is_err(), "{:?} accepted a cut at {}", coder, at);
        }
    }

    #[test]
    fn corrupted_streams_never_panic(
        v in proptest::collection::vec(prop_oneof![4 => Just(0u8), 1 => 0u8..8], 0..4000),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
    ) {
        for coder in CODERS {
            let mut blob = entropy::encode(&v, coder).unwrap();
            for (i, x) in &flips {
                let i = i.index(blob.len());
                blob[i] ^= x;
            }
            if let Ok(out) = entropy::decode(&blob) {
                prop_assert_eq!(Some(out.len()), entropy::decoded_len(&blob).ok());
            }
        }
    }
}

#[test]
fn special_streams_round_trip() {
    let all: Vec<u8> = (0..=255u8).collect();
    let all_many: Vec<u8> = (0..70_000u32).map(|i| (i % 256) as u8).collect();
    let alternating: Vec<u8> = (0..10_001u32).map(|i| (i % 2) as u8 * 200).collect();
    for v in [
        vec![],
        vec![0],
        vec![255],
        vec![9; 100_000],
        all,
        all_many,
        alternating,
        geometric(50_000, 0.5, 7),
    ] {
        round_trip_all(&v);
        every_method(&v);
    }
}

#[test]
fn multi_chunk_streams_round_trip() {
    // Three and a bit chunks, mixing statistics so chunks pick different methods.
    let mut v = iid(chunks::CHUNK_SYMBOLS, 0.99, 8, 1);
    v.extend(iid(chunks::CHUNK_SYMBOLS, 0.6, 8, 2));
    v.extend(vec![3u8; chunks::CHUNK_SYMBOLS]);
    v.extend((0..1000u32).map(|i| (i * 7 % 256) as u8));
    round_trip_all(&v);
    let mut small = Vec::new();
    chunks::encode_sized(&v, Coder::Auto, 1000, &mut small).unwrap();
    let mut out = vec![0u8; v.len()];
    chunks::decode(&small, &mut out).unwrap();
    assert!(out == v);
}

#[test]
fn tans_is_within_one_percent_of_entropy() {
    let n = 1 << 17;
    for p0 in [0.9, 0.97, 0.99] {
        for k in [2, 8, 16] {
            let v = iid(n, p0, k, (k as u64) << 8 | (p0 * 100.0) as u64);
            let mut body = Vec::new();
            tans::encode(&v, &mut body);
            let (_, payload) = tans::read_header(&body).unwrap();
            let bits = payload.len() as f64 * 8.0;
            let h = entropy_bits(&v);
            eprintln!("tANS p0={p0} K={k}: {:.5} x entropy", bits / h);
            assert!(
                bits <= 1.01 * h,
                "p0={p0} K={k}: {bits} bits vs entropy {h:.0} ({:.4}x)",
                bits / h
            );
            // The public stream costs at most its fixed headers more.
            let blob = entropy::encode(&v, Coder::Tans).unwrap();
            assert!(blob.len() <= body.len() + 9 + 4 + 4 + 1);
        }
    }
}

#[test]
fn auto_beats_huffman_floor_on_skewed_data() {
    // Huffman cannot go below 1 bit/symbol; Auto must find tANS or run tokens.
    let v = iid(1 << 18, 0.99, 8, 3);
    let auto = entropy::encode(&v, Coder::Auto).unwrap().len() as f64 * 8.0;
    let huff = entropy::encode(&v, Coder::Huffman).unwrap().len() as f64 * 8.0;
    let h = entropy_bits(&v);
    assert!(auto < 1.02 * h, "auto {auto} vs entropy {h}");
    assert!(huff > auto * 2.0);
}

#[test]
fn context_coder_uses_the_previous_symbol() {
    // A Markov chain whose order-0 entropy is 1 bit but order-1 entropy ~0.47 bit.
    let mut r = Rng(11);
    let mut s = 0u8;
    let v: Vec<u8> = (0..1 << 17)
        .map(|_| {
            if r.unit() < 0.1 {
                s ^= 1;
            }
            s
        })
        .collect();
    let mut body = Vec::new();
    tans::encode_ctx(&v, &mut body);
    let mut out = vec![0u8; v.len()];
    tans::decode_ctx(&body, &mut out).unwrap();
    assert!(out == v);
    let bits = body.len() as f64 * 8.0;
    assert!(bits < 0.5 * v.len() as f64, "{bits}");
    assert_eq!(
        chunks::choose(&v, Coder::Auto),
        chunks::Method::CtxTans,
        "auto should pick the context coder"
    );
}

#[test]
fn scalar_and_simd_paths_give_identical_bytes() {
    let mut v = iid(300_000, 0.97, 8, 5);
    v.extend(vec![0u8; 5000]);
    let with = entropy::encode(&v, Coder::Auto).unwrap();
    let runs_with = {
        let mut b = Vec::new();
        chunks::encode_chunk(&v[..100_000], chunks::Method::RunsTans, &mut b);
        b
    };
    simd::set_simd_enabled(false);
    let without = entropy::encode(&v, Coder::Auto).unwrap();
    let runs_without = {
        let mut b = Vec::new();
        chunks::encode_chunk(&v[..100_000], chunks::Method::RunsTans, &mut b);
        b
    };
    simd::set_simd_enabled(true);
    assert!(with == without);
    assert!(runs_with == runs_without);
    for start in 0..64 {
        let s = &v[start..start + 4000];
        let a = simd::zero_run(s);
        assert_eq!(a, simd::zero_run_scalar(s));
    }
}

#[test]
fn forged_counts_do_not_allocate() {
    // A chunked stream header claiming 2^60 symbols in a few bytes.
    let mut blob = vec![3u8];
    blob.extend_from_slice(&(1u64 << 60).to_le_bytes());
    blob.extend_from_slice(&[0, 0, 1, 0, 5, 0, 0, 0, 1, 0]);
    assert!(entropy::decode(&blob).is_err());
    let mut raw = vec![0u8];
    raw.extend_from_slice(&u64::MAX.to_le_bytes());
    assert!(entropy::decode(&raw).is_err());
    // Baseline streams whose declared count their payload cannot produce.
    for coder in [Coder::Zstd, Coder::Gzip] {
        let mut blob = entropy::encode(&[1, 2, 3], coder).unwrap();
        blob[1..9].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(entropy::decode(&blob).is_err());
    }
    // An unknown coder id is Unsupported, before any allocation.
    let mut blob = vec![77u8];
    blob.extend_from_slice(&(1u64 << 58).to_le_bytes());
    assert!(matches!(
        entropy::decode(&blob),
        Err(deltackpt::Error::Unsupported(_))
    ));
    // A zstd frame whose content size disagrees with the declared count.
    let mut blob = entropy::encode(&[0u8; 1000], Coder::Zstd).unwrap();
    blob[1..9].copy_from_slice(&2000u64.to_le_bytes());
    assert!(entropy::decode(&blob).is_err());
}

#[test]
fn fuzz_bodies_survive_random_and_mutated_inputs() {
    let mut r = Rng(99);
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    for coder in CODERS {
        for v in [iid(3000, 0.9, 8, 1), geometric(2000, 0.5, 2), vec![4; 50]] {
            seeds.push(entropy::encode(&v, coder).unwrap());
        }
    }
    let mut raw_bodies: Vec<Vec<u8>> = Vec::new();
    for v in [iid(3000, 0.9, 8, 4), geometric(2000, 0.3, 5)] {
        for m in [
            chunks::Method::Tans,
            chunks::Method::Huffman,
            chunks::Method::Lz77,
            chunks::Method::CtxTans,
            chunks::Method::RunLit,
        ] {
            let mut b = (v.len() as u16).to_le_bytes().to_vec();
            chunks::encode_chunk(&v, m, &mut b);
            b.remove(2); // drop the method byte: the bodies take raw payloads
            raw_bodies.push(b);
        }
    }
    for i in 0..4000 {
        let mut input = if i % 4 == 0 {
            (0..r.next() % 200).map(|_| r.next() as u8).collect()
        } else if i % 2 == 0 {
            seeds[(r.next() % seeds.len() as u64) as usize].clone()
        } else {
            raw_bodies[(r.next() % raw_bodies.len() as u64) as usize].clone()
        };
        if !input.is_empty() {
            for _ in 0..1 + r.next() % 3 {
                let at = (r.next() % input.len() as u64) as usize;
                match r.next() % 3 {
                    0 => input[at] ^= 1 << (r.next() % 8),
                    1 => input[at] = r.next() as u8,
                    _ => input.truncate(at),
                }
                if input.is_empty() {
                    break;
                }
            }
        }
        bodies::entropy_decode(&input);
        bodies::tans_decode(&input);
        bodies::huffman_decode(&input);
        bodies::lz77_decode(&input);
        bodies::runlit_decode(&input);
    }
}

#[test]
fn period_context_is_found_and_pays() {
    // Rows of 37 symbols; each row repeats the one above with 5% of the symbols redrawn, so
    // the "up" symbol predicts far better than the left one.
    let (rows, width) = (3000usize, 37usize);
    let mut r = Rng(5);
    let mut v = iid(width, 0.6, 8, 9);
    for i in width..rows * width {
        let s = if r.unit() < 0.05 {
            (r.next() % 8) as u8
        } else {
            v[i - width]
        };
        v.push(s);
    }
    assert_eq!(tans::detect_period(&v, v.len()), width);
    let mut left_only = Vec::new();
    tans::encode_ctx(&v, &mut left_only);
    let mut with_up = Vec::new();
    tans::encode_ctx_period(&v, width, &mut with_up);
    let mut out = vec![0u8; v.len()];
    tans::decode_ctx(&with_up, &mut out).unwrap();
    assert!(out == v);
    assert!(
        (with_up.len() as f64) < 0.6 * left_only.len() as f64,
        "{} vs {}",
        with_up.len(),
        left_only.len()
    );
    let blob = entropy::encode(&v, Coder::Auto).unwrap();
    assert!(blob.len() < with_up.len() + 64);
    assert_eq!(entropy::decode(&blob).unwrap(), v);
}

/// Symbols with long runs of several symbols between stretches of noise (the shape of a
/// quantized embedding matrix whose unused rows all got one symbol).
fn runny(n: usize, run_share: f64, seed: u64) -> Vec<u8> {
    let mut r = Rng(seed | 1);
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        let len = 1 + (r.next() % 400) as usize;
        if r.unit() < run_share {
            v.extend(std::iter::repeat_n((r.next() % 3) as u8, len));
        } else {
            v.extend((0..len).map(|_| (r.next() % 8) as u8));
        }
    }
    v.truncate(n);
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn run_split_streams_round_trip(
        n in 0usize..40_000,
        share in 0.0f64..1.0,
        seed in any::<u64>(),
    ) {
        let v = runny(n, share, seed);
        round_trip_all(&v);
        every_method(&v);
    }

    #[test]
    fn run_split_keeps_every_symbol(v in proptest::collection::vec(0u8..3, 0..5000)) {
        let (runs, lits) = runlit::split(&v);
        let covered: usize = runs.iter().map(|r| r.len).sum();
        prop_assert_eq!(covered + lits.len(), v.len());
        prop_assert!(runs.iter().all(|r| r.len >= runlit::BLOCK));
    }
}

#[test]
fn run_split_pays_on_runs_and_is_chosen() {
    // 90% of the symbols in long runs: the runs must cost next to nothing, so auto lands
    // near the order-0 cost of the noise alone.
    let v = runny(1 << 20, 0.9, 7);
    let (runs, lits) = runlit::split(&v);
    let blob = entropy::encode(&v, Coder::Auto).unwrap();
    let lit_bits = entropy_bits(&lits);
    let run_bytes = 4.0 * runs.len() as f64;
    assert!(
        (blob.len() as f64) < (lit_bits / 8.0 + run_bytes) * 1.05 + 1000.0,
        "auto took {} bytes for {} literal bits and {} runs",
        blob.len(),
        lit_bits,
        runs.len()
    );
    let tans = entropy::encode(&v, Coder::Tans).unwrap();
    assert!(
        blob.len() * 2 < tans.len(),
        "{} vs tans {}",
        blob.len(),
        tans.len()
    );
    // Almost one symbol everywhere: a few bytes per run, no per-chunk table.
    let mut flat = vec![0u8; 1 << 22];
    for i in (0..flat.len()).step_by(50_000) {
        flat[i] = 1 + (i % 5) as u8;
    }
    let blob = entropy::encode(&flat, Coder::Auto).unwrap();
    assert!(
        blob.len() < 1200,
        "near-constant stream took {} bytes",
        blob.len()
    );
    assert_eq!(entropy::decode(&blob).unwrap(), flat);
}

#[test]
fn forged_run_split_bodies_are_typed_errors() {
    let v = runny(20_000, 0.8, 3);
    let mut body = Vec::new();
    chunks::encode_chunk(&v, chunks::Method::RunLit, &mut body);
    let mut out = vec![0u8; v.len()];
    chunks::decode_chunk(&body, &mut out).unwrap();
    assert_eq!(out, v);
    // Run count claiming more runs than the chunk could hold.
    let mut forged = vec![chunks::Method::RunLit as u8];
    forged.extend_from_slice(&[0xff, 0xff, 0xff, 0x7f, 0x03, 0x00]);
    assert!(chunks::decode_chunk(&forged, &mut out).is_err());
    // Nested run-split bodies are refused (bounded recursion).
    let mut nested = vec![
        chunks::Method::RunLit as u8,
        0,
        0,
        1,
        chunks::Method::RunLit as u8,
    ];
    nested.push(chunks::Method::Raw as u8);
    assert!(chunks::decode_chunk(&nested, &mut out[..0]).is_err());
    // Every truncation of the header and run list is an error; cuts into the literal body are
    // left to its coder (a backward-read tANS tail may not notice), but never panic.
    // Method, 60 runs, a 233-byte list coded in 234 bytes (varints): literals from 240.
    assert_eq!(
        body[..6],
        [chunks::Method::RunLit as u8, 60, 233, 1, 234, 1]
    );
    let lit_start = 6 + 234;
    for cut in 0..body.len() {
        let r = chunks::decode_chunk(&body[..cut], &mut out);
        assert!(cut > lit_start + 1 || r.is_err(), "cut at {cut}");
    }
}
