//! Forged blobs with valid checksums (a forger reseals what they change): decoding stays
//! bounded by the format, never by what the header asks for.
use deltackpt::entropy::Coder;
use deltackpt::format::{self, Header, MAX_CHUNK_ELEMS};
use deltackpt::{decode, DType, Error, Quantizer};

/// A chunk-container symbol stream of `n` zeros: every 2^20-symbol chunk is a 2-byte RLE body.
fn rle_stream(n: u64) -> Vec<u8> {
    let c = 1u64 << 20;
    let k = n.div_ceil(c) as usize;
    let mut s = vec![3u8];
    s.extend_from_slice(&n.to_le_bytes());
    s.extend_from_slice(&(c as u32).to_le_bytes());
    for _ in 0..k {
        s.extend_from_slice(&2u32.to_le_bytes());
    }
    for _ in 0..k {
        s.extend_from_slice(&[1, 0]);
    }
    s
}

/// A float64 exponent-quantized blob of `numel` zeros cut into chunks of `chunk_elems`.
fn forged_exponent_blob(numel: u64, chunk_elems: u64) -> Vec<u8> {
    let chunks: Vec<Vec<u8>> = (0..numel.div_ceil(chunk_elems))
        .map(|i| rle_stream(chunk_elems.min(numel - i * chunk_elems)))
        .collect();
    let mut params = vec![1u8];
    params.extend_from_slice(&0f64.to_le_bytes());
    let header = Header {
        dtype: DType::F64,
        shape: vec![numel],
        quantizer: Quantizer::Exponent,
        coder: Coder::Auto,
        bits: 2,
        flags: 0,
        reference_hash: None,
        params,
        chunk_elems,
        chunk_sizes: chunks.iter().map(|c| c.len() as u64).collect(),
        tag: 0,
    };
    format::write(&header, &chunks)
}

const SEED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/fuzz/seeds/tensor_decode/forged-4gib-f64-one-rle-chunk"
);

#[test]
fn a_4gib_tensor_in_one_2_pow_29_chunk_is_corrupt_before_any_allocation() {
    // 3 KB declaring 4 GiB of float64 in a single chunk of 2^29 elements (1.39M:1): this
    // used to allocate a 4 GiB per-chunk scratch infallibly and abort the process.
    let blob = forged_exponent_blob(1 << 29, 1 << 29);
    assert!(blob.len() < 4096, "{} bytes", blob.len());
    match decode(&blob, None) {
        Err(Error::Corrupt(m)) => assert!(m.contains("chunk size"), "{m}"),
        other => panic!(
            "expected a corrupt-data error, got {:?}",
            other.map(|d| d.shape)
        ),
    }
}

#[test]
fn the_chunk_cap_is_the_entropy_containers() {
    assert_eq!(MAX_CHUNK_ELEMS, 1 << 20);
    let blob = forged_exponent_blob(3 << 20, MAX_CHUNK_ELEMS + 1);
    assert!(matches!(decode(&blob, None), Err(Error::Corrupt(_))));
}

#[test]
fn a_well_formed_forgery_within_the_cap_decodes_to_what_it_declares() {
    let blob = forged_exponent_blob(3 << 20, 1 << 20);
    let d = decode(&blob, None).unwrap();
    assert_eq!(d.data.len(), 8 * (3 << 20));
    assert!(d.data.iter().all(|&b| b == 0));
}

#[test]
fn the_fuzz_corpus_holds_the_forged_blob() {
    // Regenerate with DELTACKPT_WRITE_SEEDS=1 after a format change.
    let blob = forged_exponent_blob(1 << 29, 1 << 29);
    if std::env::var_os("DELTACKPT_WRITE_SEEDS").is_some() {
        std::fs::write(SEED, &blob).unwrap();
    }
    assert_eq!(
        std::fs::read(SEED).expect("the seed file is committed"),
        blob
    );
}
