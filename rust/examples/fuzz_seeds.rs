//! Write seed corpora for the fuzz targets in `rust/fuzz` (valid streams of every kind):
//! `cargo run --release -p deltackpt --example fuzz_seeds -- rust/fuzz/corpus`.

use deltackpt::entropy::{self, chunks, Coder};

fn main() {
    let dir = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "rust/fuzz/corpus".into()),
    );
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let mut inputs: Vec<Vec<u8>> = vec![vec![], vec![5], vec![0; 300], (0..=255).collect()];
    for (n, zero_pct, k) in [(500, 90, 8), (2000, 60, 8), (3000, 97, 16), (1500, 50, 200)] {
        inputs.push(
            (0..n)
                .map(|_| {
                    if next() % 100 < zero_pct {
                        0
                    } else {
                        (1 + next() % (k - 1)) as u8
                    }
                })
                .collect(),
        );
    }
    // A matrix with a row structure, for the period context.
    let mut m: Vec<u8> = (0..40).map(|_| (next() % 4) as u8).collect();
    for i in 40..4000 {
        m.push(if next() % 20 == 0 {
            (next() % 4) as u8
        } else {
            m[i - 40]
        });
    }
    inputs.push(m);
    let write = |target: &str, name: String, data: &[u8]| {
        let d = dir.join(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), data).unwrap();
    };
    for (i, v) in inputs.iter().enumerate() {
        for coder in [
            Coder::Auto,
            Coder::Raw,
            Coder::Tans,
            Coder::Huffman,
            Coder::Lz77,
            Coder::Zstd,
            Coder::Gzip,
        ] {
            let blob = entropy::encode(v, coder).unwrap();
            write("entropy_decode", format!("{i}_{}", coder.name()), &blob);
        }
        let raw_body = |m: chunks::Method| {
            let mut b = (v.len() as u16).to_le_bytes().to_vec();
            chunks::encode_chunk(v, m, &mut b);
            b.remove(2);
            b
        };
        if v.len() < 1 << 16 {
            write(
                "tans_decode",
                format!("{i}"),
                &raw_body(chunks::Method::Tans),
            );
            write(
                "tans_decode",
                format!("{i}_ctx"),
                &raw_body(chunks::Method::CtxTans),
            );
            write(
                "huffman_decode",
                format!("{i}"),
                &raw_body(chunks::Method::Huffman),
            );
            write(
                "lz77_decode",
                format!("{i}"),
                &raw_body(chunks::Method::Lz77),
            );
        }
    }
}
