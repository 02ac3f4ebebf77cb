"""Uniform and lattice quantizers through dk.quant and dk.encode: bounds and consistency."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

import deltackpt as dk

floats32 = arrays(
    np.float32,
    array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=80),
    elements=st.floats(-1e3, 1e3, width=32),
)


@given(x=floats32, bits=st.integers(2, 8), symmetric=st.booleans())
def test_uniform_encode_error_is_at_most_half_a_step(x, bits, symmetric):
    blob = dk.encode(x, quantizer="uniform", bits=bits, symmetric=symmetric)
    y = dk.decode(blob)
    scale = dk.inspect(blob)["scale"]
    err = np.abs(x.astype(np.float64) - y.astype(np.float64))
    # half a step, plus rounding of the float64 reconstruction to float32
    assert np.all(err <= scale / 2 * (1 + 1e-9) + 0.5 * np.spacing(np.abs(y)))


@given(x=floats32, bits=st.integers(2, 8))
def test_uniform_matches_the_building_block(x, bits):
    codes, scale, zp = dk.quant.uniform(x, bits)
    assert codes.shape == x.shape and zp == 0
    assert np.abs(codes).max() <= 2 ** (bits - 1) - 1
    back = dk.quant.uniform_dequantize(codes, scale, zp)
    assert np.all(np.abs(back - x) <= scale / 2 * (1 + 1e-9))
    blob = dk.encode(x, quantizer="uniform", bits=bits)
    assert np.array_equal(dk.decode(blob), back.astype(np.float32))


def test_uniform_per_channel_has_one_scale_per_row():
    x = np.stack([np.linspace(-1, 1, 50), np.linspace(-100, 100, 50)]).astype(np.float32)
    codes, scales, zps = dk.quant.uniform(x, 4, per_channel=True)
    assert scales.shape == (2,) and scales[1] > 50 * scales[0]
    back = dk.quant.uniform_dequantize(codes, scales, zps)
    for row in range(2):
        assert np.all(np.abs(back[row] - x[row]) <= scales[row] / 2 * (1 + 1e-9))


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 4), bits=st.integers(2, 5))
def test_lattice_encode_is_babai_on_the_stored_basis(seed, n, bits):
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal(257).astype(np.float32)
    x = ref + (0.01 * rng.standard_normal(257)).astype(np.float32)
    blob = dk.encode(x, reference=ref, quantizer="lattice", bits=bits, dim=n, iters=20)
    info = dk.inspect(blob)
    basis = np.array(info["basis"], np.float32).reshape(n, n)
    d = (x - ref).astype(np.float64)
    padded = np.concatenate([d, np.zeros(-len(d) % n)]).reshape(-1, n)
    codes = dk.quant.babai(padded, basis, bits)
    assert codes.min() >= -(2 ** (bits - 1)) and codes.max() <= 2 ** (bits - 1) - 1
    want = dk.quant.lattice_dequantize(codes, basis).reshape(-1)[: len(d)]
    got = dk.decode(blob, reference=ref)
    assert np.array_equal(got, (ref + want.astype(np.float32)).astype(np.float32))


def test_cubic_lattice_is_uniform_quantization():
    rng = np.random.default_rng(5)
    blocks = rng.standard_normal((4000, 3))
    step = 0.25
    codes = dk.quant.babai(blocks, step * np.eye(3), 4)
    expected = np.clip(np.round(blocks / step), -8, 7)
    assert np.array_equal(codes, expected)


def test_searched_basis_beats_the_cubic_lattice_on_correlated_blocks():
    rng = np.random.default_rng(11)
    cov = np.array([[1.0, 0.9, 0.8], [0.9, 1.0, 0.9], [0.8, 0.9, 1.0]])
    blocks = rng.multivariate_normal(np.zeros(3), cov, size=30000)
    cubic = dk.quant.find_basis(blocks, 3, iters=0)
    found = dk.quant.find_basis(blocks, 3, iters=300, seed=1)
    e_cubic = dk.quant.lattice_error(blocks, cubic, 3)
    e_found = dk.quant.lattice_error(blocks, found, 3)
    assert e_found < 0.9 * e_cubic
    assert np.array_equal(found, dk.quant.find_basis(blocks, 3, iters=300, seed=1))


@pytest.mark.parametrize("quantizer", ["uniform", "lattice"])
def test_nan_is_refused(quantizer):
    x = np.ones(10, np.float32)
    x[4] = np.nan
    with pytest.raises(dk.NonFiniteError, match="index 4"):
        dk.encode(x, quantizer=quantizer)


def test_bad_lattice_arguments():
    with pytest.raises(ValueError, match="dimension"):
        dk.encode(np.ones(10, np.float32), quantizer="lattice", dim=12)
    with pytest.raises(ValueError, match="shape"):
        dk.quant.babai(np.ones((5, 3)), np.eye(2), 4)
