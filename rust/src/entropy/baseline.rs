//! Baseline general-purpose coders (zstd, deflate) behind the symbol-stream interface.

use std::io::{Read, Write};

use crate::error::{Error, Result};

pub(super) fn zstd_encode(symbols: &[u8], level: i32, out: &mut Vec<u8>) -> Result<()> {
    let bound = zstd::zstd_safe::compress_bound(symbols.len());
    let start = out.len();
    out.resize(start + bound, 0);
    let n = zstd::bulk::compress_to_buffer(symbols, &mut out[start..], level)
        .map_err(|e| Error::invalid(format!("zstd compression failed: {e}")))?;
    out.truncate(start + n);
    Ok(())
}

pub(super) fn zstd_decode(body: &[u8], out: &mut [u8]) -> Result<()> {
    let n = zstd::bulk::decompress_to_buffer(body, out)
        .map_err(|e| Error::corrupt(format!("zstd stream does not decode: {e}")))?;
    if n != out.len() {
        return Err(Error::corrupt("zstd stream decodes to the wrong length"));
    }
    Ok(())
}

pub(super) fn deflate_encode(symbols: &[u8], level: u32, out: &mut Vec<u8>) -> Result<()> {
    let mut enc = flate2::write::DeflateEncoder::new(out, flate2::Compression::new(level));
    enc.write_all(symbols)
        .and_then(|_| enc.try_finish())
        .map_err(|e| Error::invalid(format!("deflate failed: {e}")))
}

pub(super) fn deflate_decode(body: &[u8], out: &mut [u8]) -> Result<()> {
    let mut dec = flate2::read::DeflateDecoder::new(body);
    dec.read_exact(out)
        .map_err(|e| Error::corrupt(format!("deflate stream does not decode: {e}")))?;
    // The stream must end exactly here.
    let mut extra = [0u8; 1];
    match dec.read(&mut extra) {
        Ok(0) => Ok(()),
        Ok(_) => Err(Error::corrupt(
            "deflate stream decodes to more symbols than declared",
        )),
        Err(e) => Err(Error::corrupt(format!(
            "deflate stream does not decode: {e}"
        ))),
    }
}
