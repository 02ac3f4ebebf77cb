//! Zero-run tokens in front of tANS or Huffman.
//!
//! LC symbol streams are mostly symbol 0 with clustered non-zeros. This transform replaces
//! every maximal run of zeros by one token for its length, so that a coder that cannot go
//! below one bit per token (Huffman) pays per run instead of per zero, and so that run lengths
//! get their own statistics.
//!
//! With `M` the largest symbol (`M <= MAX_SYMBOL`), the token alphabet is
//!
//! ```text
//! 0 .. M-1              literal symbol 1 .. M
//! M + L - 1             zero run of length L, 1 <= L <= 16
//! M + 16 + (k - 4)      zero run of length L >= 17, where v = L - 1 and k = floor(log2 v)
//!                       (4 <= k <= 27); the k bits v - 2^k follow in the extra-bit stream
//! ```
//!
//! Body layout:
//!
//! ```text
//! byte 0      M
//! byte 1      token coder: 0 = tANS body, 1 = Huffman body
//! u32 LE      token count T (1 <= T <= n)
//! u32 LE      byte length of the token body
//! ...         token body (tANS or Huffman, of T tokens)
//! ...         extra bits, LSB-first, padded to a byte
//! ```

use super::bitio::{BitReader, BitWriter};
use super::{huffman, simd, tans};
use crate::error::{Error, Result};

/// Largest symbol value the transform accepts (tokens must fit in a byte).
pub const MAX_SYMBOL: u8 = 216;
const DIRECT: usize = 16;

/// Size estimates of the two token coders for one stream.
#[derive(Clone, Copy, Debug)]
pub struct Estimate {
    /// Estimated body bits with tANS tokens.
    pub tans_bits: f64,
    /// Exact-ish body bits with Huffman tokens.
    pub huffman_bits: f64,
}

/// Visit the tokens of `symbols`: `f(token, extra_bits, extra_len)`.
#[inline]
fn tokenize(symbols: &[u8], m: u8, mut f: impl FnMut(u8, u32, u32)) {
    let mut i = 0;
    let n = symbols.len();
    while i < n {
        let s = symbols[i];
        if s != 0 {
            f(s - 1, 0, 0);
            i += 1;
            continue;
        }
        let run = simd::zero_run(&symbols[i..]);
        i += run;
        if run <= DIRECT {
            f(m + run as u8 - 1, 0, 0);
        } else {
            let v = (run - 1) as u32;
            let k = 31 - v.leading_zeros();
            f(m + DIRECT as u8 + (k - 4) as u8, v - (1 << k), k);
        }
    }
}

fn max_symbol(hist: &[u32; 256]) -> Option<u8> {
    let m = hist.iter().rposition(|&c| c > 0)? as u8;
    (m <= MAX_SYMBOL).then_some(m)
}

/// Estimate the coded size of `symbols` (histogram `hist`) as run tokens; `None` when the
/// transform does not apply (symbols above [`MAX_SYMBOL`], no zeros, or longer than 2^28).
pub fn estimate(symbols: &[u8], hist: &[u32; 256]) -> Option<Estimate> {
    let m = max_symbol(hist)?;
    if hist[0] == 0 || symbols.len() >= 1 << 28 {
        return None;
    }
    let mut th = [0u32; 256];
    let mut extra = 0u64;
    tokenize(symbols, m, |t, _, k| {
        th[t as usize] += 1;
        extra += k as u64;
    });
    let fixed = 8.0 * 10.0 + extra as f64;
    let present = th.iter().filter(|&&c| c > 0).count();
    let (tb, hb) = if present <= 1 {
        (64.0, 64.0)
    } else {
        (tans::plan(&th).1, huffman::plan(&th).1)
    };
    Some(Estimate {
        tans_bits: fixed + tb,
        huffman_bits: fixed + hb,
    })
}

/// Encode `symbols` as run tokens coded with Huffman (`use_huffman`) or tANS.
///
/// # Panics
/// If a symbol exceeds [`MAX_SYMBOL`] or there are 2^28 symbols or more ([`estimate`] returns
/// `None` for such streams, and [`Coder::Auto`](super::Coder::Auto) never picks them).
pub fn encode(symbols: &[u8], use_huffman: bool, out: &mut Vec<u8>) {
    let hist = tans::histogram(symbols);
    let m = hist.iter().rposition(|&c| c > 0).unwrap_or(0) as u8;
    assert!(m <= MAX_SYMBOL, "run tokens need symbols <= {MAX_SYMBOL}");
    assert!(
        symbols.len() < 1 << 28,
        "run tokens need fewer than 2^28 symbols"
    );
    let mut tokens = Vec::with_capacity(symbols.len() / 2 + 16);
    let mut ebuf = Vec::new();
    {
        let mut w = BitWriter::new(&mut ebuf, 1024);
        tokenize(symbols, m, |t, v, k| {
            tokens.push(t);
            if k > 0 {
                w.put(v as u64, k);
                w.flush();
            }
        });
        w.finish();
    }
    out.push(m);
    out.push(u8::from(use_huffman));
    out.extend_from_slice(&(tokens.len() as u32).to_le_bytes());
    let len_at = out.len();
    out.extend_from_slice(&[0; 4]);
    let start = out.len();
    if use_huffman {
        huffman::encode(&tokens, out);
    } else {
        tans::encode(&tokens, out);
    }
    let body_len = (out.len() - start) as u32;
    out[len_at..len_at + 4].copy_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(&ebuf);
}

/// Decode a body written by [`encode`] into `out` (length = symbol count).
pub fn decode(body: &[u8], out: &mut [u8]) -> Result<()> {
    if body.len() < 10 {
        return Err(Error::corrupt("run-token header truncated"));
    }
    let m = body[0];
    let coder = body[1];
    let t = u32::from_le_bytes(body[2..6].try_into().unwrap()) as usize;
    let blen = u32::from_le_bytes(body[6..10].try_into().unwrap()) as usize;
    if m > MAX_SYMBOL || coder > 1 {
        return Err(Error::corrupt("run-token header out of range"));
    }
    if t > out.len() || (t == 0) != out.is_empty() {
        return Err(Error::corrupt(
            "run-token count does not fit the symbol count",
        ));
    }
    let rest = &body[10..];
    if blen > rest.len() {
        return Err(Error::corrupt("run-token body length past the end"));
    }
    let (tbody, extra) = rest.split_at(blen);
    let mut tokens = super::try_alloc(t)?;
    if coder == 1 {
        huffman::decode(tbody, &mut tokens)?;
    } else {
        tans::decode(tbody, &mut tokens)?;
    }
    let mut r = BitReader::new(extra);
    let mut pos = 0usize;
    let n = out.len();
    for &tok in &tokens {
        if tok < m {
            if pos >= n {
                return Err(Error::corrupt("run tokens describe too many symbols"));
            }
            out[pos] = tok + 1;
            pos += 1;
            continue;
        }
        let d = (tok - m) as usize;
        let run = if d < DIRECT {
            d + 1
        } else {
            let k = (d - DIRECT + 4) as u32;
            if k > 27 {
                return Err(Error::corrupt("run-token length class out of range"));
            }
            r.refill();
            ((1usize << k) | r.read(k) as usize) + 1
        };
        if run > n - pos {
            return Err(Error::corrupt("zero run past the end of the stream"));
        }
        out[pos..pos + run].fill(0);
        pos += run;
    }
    if pos != n || r.overrun() || r.position().div_ceil(8) != extra.len() {
        return Err(Error::corrupt(
            "run tokens do not describe the stream exactly",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_long_and_short_runs() {
        let mut s = vec![0u8; 100_000];
        for (i, p) in [0usize, 5, 6, 17, 18, 40, 1000, 70_000, 99_999]
            .iter()
            .enumerate()
        {
            s[*p] = (i % 7 + 1) as u8;
        }
        for huff in [false, true] {
            let mut body = Vec::new();
            encode(&s, huff, &mut body);
            assert!(body.len() < 200, "{}", body.len());
            let mut out = vec![9u8; s.len()];
            decode(&body, &mut out).unwrap();
            assert_eq!(out, s);
        }
    }
}
