"""pytest-benchmark suite of the tensor codec on real data, beside zstd on the same bytes.

Run: DELTACKPT_NUM_THREADS=1 pytest benches/test_bench_codec.py --benchmark-json=out.json
then: python benches/bench_table.py out.json
"""

from __future__ import annotations

import numpy as np
import pytest
import zstandard
from conftest import throughput

import deltackpt as dk

ROUNDS = 5


def run(benchmark, f, nbytes, **info):
    out = benchmark.pedantic(f, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(info)
    throughput(benchmark, nbytes)
    return out


def test_exponent_quantize(benchmark, minilm_delta):
    before, after = minilm_delta
    d = after - before
    symbols, table = run(benchmark, lambda: dk.quant.exponent(d, 3), d.nbytes)
    assert symbols.size == d.size and len(table) == 7


def test_encode_delta_exponent3(benchmark, minilm_delta):
    before, after = minilm_delta
    blob = run(benchmark, lambda: dk.encode(after, reference=before, bits=3), after.nbytes)
    benchmark.extra_info["bits_per_weight"] = round(len(blob) * 8 / after.size, 3)


def test_decode_delta_exponent3(benchmark, minilm_delta):
    before, after = minilm_delta
    blob = dk.encode(after, reference=before, bits=3)
    out = run(benchmark, lambda: dk.decode(blob, reference=before), after.nbytes)
    assert np.all(np.abs(out - after) <= np.abs(after - before) * (1 + 2**-22) + 1e-12)


@pytest.mark.parametrize("level", [3, 19])
def test_zstd_on_delta_symbols(benchmark, minilm_delta, level):
    """zstd on the same LC symbols (what a zstd-based LC implementation would store)."""
    before, after = minilm_delta
    symbols, _ = dk.quant.exponent(after - before, 3)
    c = zstandard.ZstdCompressor(level=level)
    blob = run(benchmark, lambda: c.compress(symbols.tobytes()), after.nbytes)
    benchmark.extra_info["bits_per_weight"] = round(len(blob) * 8 / after.size, 3)


def test_lossless_encode_weights(benchmark, minilm_weights):
    w = minilm_weights
    blob = run(benchmark, lambda: dk.encode(w, quantizer="none"), w.nbytes)
    benchmark.extra_info["bits_per_weight"] = round(len(blob) * 8 / w.size, 3)


def test_lossless_decode_weights(benchmark, minilm_weights):
    w = minilm_weights
    blob = dk.encode(w, quantizer="none")
    out = run(benchmark, lambda: dk.decode(blob), w.nbytes)
    assert out.tobytes() == w.tobytes()


def test_zstd3_weights(benchmark, minilm_weights):
    w = minilm_weights
    c = zstandard.ZstdCompressor(level=3)
    blob = run(benchmark, lambda: c.compress(w.tobytes()), w.nbytes)
    benchmark.extra_info["bits_per_weight"] = round(len(blob) * 8 / w.size, 3)


def test_zstd3_decode_weights(benchmark, minilm_weights):
    w = minilm_weights
    blob = zstandard.ZstdCompressor(level=3).compress(w.tobytes())
    d = zstandard.ZstdDecompressor()
    run(benchmark, lambda: d.decompress(blob), w.nbytes)


def test_lossless_encode_weights_bf16(benchmark, minilm_weights):
    import torch

    w = torch.from_numpy(minilm_weights).to(torch.bfloat16)
    blob = run(benchmark, lambda: dk.encode(w, quantizer="none"), w.numel() * 2)
    benchmark.extra_info["bits_per_weight"] = round(len(blob) * 8 / w.numel(), 3)
    assert torch.equal(dk.decode(blob).view(torch.int16), w.view(torch.int16))


def test_zstd3_weights_bf16(benchmark, minilm_weights):
    import torch

    raw = torch.from_numpy(minilm_weights).to(torch.bfloat16).view(torch.int16).numpy().tobytes()
    c = zstandard.ZstdCompressor(level=3)
    blob = run(benchmark, lambda: c.compress(raw), len(raw))
    benchmark.extra_info["bits_per_weight"] = round(len(blob) * 8 / (len(raw) // 2), 3)
