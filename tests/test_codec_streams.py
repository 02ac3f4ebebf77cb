"""dk.codec: symbol stream coders round trip arbitrary streams."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import deltackpt as dk

CODERS = ["auto", "raw", "tans", "huffman", "lz77", "zstd", "gzip"]


@pytest.mark.parametrize("coder", CODERS)
@given(symbols=arrays(np.uint8, st.integers(0, 5000)))
def test_round_trip(coder, symbols):
    assert np.array_equal(dk.codec.decode(dk.codec.encode(symbols, coder)), symbols)


@pytest.mark.parametrize("coder", CODERS)
def test_edge_streams(coder):
    for s in [
        np.zeros(0, np.uint8),
        np.array([7], np.uint8),
        np.full(100_000, 3, np.uint8),
        np.arange(256, dtype=np.uint8),
        np.tile(np.array([0, 255], np.uint8), 5000),
    ]:
        assert np.array_equal(dk.codec.decode(dk.codec.encode(s, coder)), s)


def test_skewed_stream_compresses():
    rng = np.random.default_rng(1)
    s = (rng.random(200_000) < 0.03).astype(np.uint8) * rng.integers(1, 8, 200_000).astype(np.uint8)
    assert len(dk.codec.encode(s, "auto")) < len(s) // 4
