//! Single-thread speed of the error-bounded encode and decode on a synthetic delta, beside a
//! memcpy of the same bytes: `cargo run --release --example bounded_speed [rel|abs|pw|lc]`
//! (`lc`: the exponent quantizer, 3 bits). Run with `DELTACKPT_NUM_THREADS=1`.
use std::time::Instant;

use deltackpt::{
    decode_into, encode, encode_reconstruct, Bound, DType, EncodeOptions, Quantizer, Tensor,
};

fn main() {
    let n: usize = 1 << 24;
    let mut s = 1u64;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    let r: Vec<f32> = (0..n).map(|_| rnd() as f32 * 0.1).collect();
    let x: Vec<f32> = r.iter().map(|&v| v + (rnd() * 1e-4) as f32).collect();
    let b = |v: &[f32]| v.iter().flat_map(|a| a.to_le_bytes()).collect::<Vec<u8>>();
    let (xb, rb) = (b(&x), b(&r));
    let t = Tensor {
        dtype: DType::F32,
        shape: &[n as u64],
        data: &xb,
    };
    let mut out = vec![0u8; xb.len()];
    let t0 = Instant::now();
    for _ in 0..5 {
        out.copy_from_slice(&xb);
    }
    let memcpy = t0.elapsed().as_secs_f64() / 5.0;
    let mb = xb.len() as f64 / 1e6;
    println!("memcpy {:.0} MB/s", mb / memcpy);
    let arg = std::env::args().nth(1).unwrap_or_else(|| "rel".into());
    let bound = match arg.as_str() {
        "abs" => Bound::Abs(2e-5),
        "pw" => Bound::Pointwise(0.01),
        _ => Bound::Rel(1e-3),
    };
    let opts = if arg == "lc" {
        // LC-checkpoint's exponent buckets, 3 bits (the comparison of the speed floors)
        EncodeOptions {
            quantizer: Quantizer::Exponent,
            bits: 3,
            ..Default::default()
        }
    } else {
        EncodeOptions {
            quantizer: Quantizer::Bounded,
            bound: Some(bound),
            ..Default::default()
        }
    };
    let reps = 5;
    let t0 = Instant::now();
    let mut blob = Vec::new();
    for _ in 0..reps {
        blob = encode_reconstruct(t, Some(&rb), &opts, &mut out).unwrap();
    }
    let enc = t0.elapsed().as_secs_f64() / reps as f64;
    let _ = encode(t, Some(&rb), &opts).unwrap();
    let t0 = Instant::now();
    for _ in 0..reps {
        decode_into(&blob, Some(&rb), &mut out).unwrap();
    }
    let dec = t0.elapsed().as_secs_f64() / reps as f64;
    println!(
        "{arg}: {:.3} bits/elem, encode {:.0} MB/s ({:.3}x memcpy), decode {:.0} MB/s ({:.3}x)",
        blob.len() as f64 * 8.0 / n as f64,
        mb / enc,
        memcpy / enc,
        mb / dec,
        memcpy / dec
    );
}
