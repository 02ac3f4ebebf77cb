"""Error-bounded encodes: every promise (tolerance=, rel_error=, rel_tolerance=, a second
moment) holds on what decode returns, for numpy and torch, every float dtype, with and
without a reference, on random and adversarial tensors; inspect reports what was measured."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import deltackpt as dk

NP_DTYPES = [np.float32, np.float64, np.float16]


def _f64(a):
    if isinstance(a, torch.Tensor):
        return a.to(torch.float64).numpy()
    return np.asarray(a, dtype=np.float64)


def _tensors(draw, dtype):
    """(x, reference): a delta of some scale on values of another, with adversarial twists."""
    n = draw(st.integers(0, 3000))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scale = 2.0 ** draw(st.integers(-30, 12))
    step = scale * 2.0 ** draw(st.integers(-25, 3))
    ref = rng.standard_normal(n) * scale
    x = ref + rng.laplace(size=n) * step
    twist = draw(st.sampled_from(["none", "outlier", "constant", "zeros", "tiny", "range"]))
    if twist == "outlier" and n:
        x[rng.integers(n)] = 1e3 * scale
    elif twist == "constant":
        x[:] = scale
    elif twist == "zeros":
        x[::3] = 0.0
    elif twist == "tiny":
        x[::2] *= 1e-30  # subnormals in fp32, zeros after rounding in fp16
    elif twist == "range":
        x *= 2.0 ** rng.integers(-20, 20, n)  # huge dynamic range
    info = np.finfo(dtype)
    return (
        np.clip(x, -info.max / 4, info.max / 4).astype(dtype),
        np.clip(ref, -info.max / 4, info.max / 4).astype(dtype),
    )


def _check(kind, value, x, got, v=None, eps=1e-8):
    x, got = _f64(x), _f64(got)
    err = np.abs(got - x)
    if kind == "tolerance":
        assert err.max(initial=0) <= value
    elif kind == "rel_error":
        assert np.sqrt((err**2).sum()) <= value * np.sqrt((x**2).sum())
    elif kind == "rel_tolerance":
        assert (err <= value * np.abs(x)).all()
        assert ((got > 0) == (x > 0)).all() and ((got < 0) == (x < 0)).all()
    else:
        assert (err <= value * (np.sqrt(np.abs(_f64(v))) + eps)).all()


@pytest.mark.parametrize("dtype", NP_DTYPES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_numpy_bounds_hold(dtype, data):
    x, ref = _tensors(data.draw, dtype)
    kind = data.draw(st.sampled_from(["tolerance", "rel_error", "rel_tolerance", "moment"]))
    value = data.draw(
        {
            "tolerance": st.floats(1e-9, 10.0),
            "rel_error": st.floats(1e-7, 0.5),
            "rel_tolerance": st.floats(1e-4, 0.5),
            "moment": st.floats(1e-4, 1.0),
        }[kind]
    )
    with_ref = data.draw(st.booleans())
    r = ref if with_ref else None
    kw = {"rel_error": {"rel_error": value}, "rel_tolerance": {"rel_tolerance": value}}.get(
        kind, {"tolerance": value}
    )
    v = (ref.astype(np.float64) ** 2).astype(dtype) if kind == "moment" else None
    out = np.empty_like(x)
    blob = dk.encode(x, reference=r, second_moment=v, reconstruction=out, **kw)
    got = dk.decode(blob, reference=r, second_moment=v)
    assert got.dtype == x.dtype and got.shape == x.shape
    assert got.tobytes() == out.tobytes()  # the encoder's reconstruction is the decode
    _check(kind, value, x, got, v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_torch_bounds_hold_in_place(dtype):
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(300, 70, generator=g).to(dtype)
    x = (ref.double() + 1e-3 * torch.randn(300, 70, generator=g, dtype=torch.float64)).to(dtype)
    for kw in ({"tolerance": 4e-4}, {"rel_error": 1e-3}, {"rel_tolerance": 0.02}):
        state = ref.clone()
        blob = dk.encode(x, reference=state, reconstruction=state, **kw)  # in place
        got = dk.decode(blob, reference=ref)
        assert isinstance(got, torch.Tensor) and got.dtype == dtype
        assert torch.equal(got, state)
        kind, value = next(iter(kw.items()))
        _check(kind, value, x, got)


def test_adam_second_moment_bound():
    """An AdamW exp_avg bounded by its exp_avg_sq: the update m/(sqrt(v)+eps) moves by at
    most t per element, even where v is tiny and m with it."""
    rng = np.random.default_rng(1)
    v = (10.0 ** rng.uniform(-20, -4, 100_000)).astype(np.float32)
    m = (np.sqrt(v) * rng.standard_normal(100_000) * 0.3).astype(np.float32)
    m_ref = (m * 0.9 + np.sqrt(v) * 0.01).astype(np.float32)
    blob = dk.encode(m, reference=m_ref, tolerance=0.05, second_moment=v, eps=1e-8)
    got = dk.decode(blob, reference=m_ref, second_moment=v)
    update_err = np.abs(got.astype(np.float64) - m) / (np.sqrt(v.astype(np.float64)) + 1e-8)
    assert update_err.max() <= 0.05
    assert len(blob) < m.nbytes / 4
    with pytest.raises(dk.ReferenceMismatchError):
        dk.decode(blob, reference=m_ref)  # the second moment is needed
    with pytest.raises(dk.ReferenceMismatchError):
        dk.decode(blob, reference=m_ref, second_moment=v * 2)


def test_inspect_reports_the_measured_error():
    rng = np.random.default_rng(2)
    ref = rng.standard_normal(50_000).astype(np.float32)
    x = (ref + 1e-3 * rng.standard_normal(50_000)).astype(np.float32)
    blob = dk.encode(x, reference=ref, rel_error=1e-4)
    info = dk.inspect(blob)
    got = dk.decode(blob, reference=ref).astype(np.float64)
    rel = np.linalg.norm(got - x) / np.linalg.norm(x.astype(np.float64))
    assert info["quantizer"] == "bounded" and info["bound"] == "rel"
    assert info["measured"]["rel_l2_error"] == pytest.approx(rel, rel=1e-6)
    assert rel <= 1e-4
    assert info["measured"]["max_abs_error"] == pytest.approx(np.abs(got - x).max(), rel=1e-6)


def test_zero_bounds_are_lossless():
    x = np.random.default_rng(3).standard_normal(1000).astype(np.float32)
    for kw in ({"tolerance": 0}, {"rel_error": 0.0}, {"rel_tolerance": 0.0}):
        blob = dk.encode(x, **kw)
        assert dk.inspect(blob)["quantizer"] == "none"
        assert dk.decode(blob).tobytes() == x.tobytes()


@pytest.mark.parametrize(
    "kw",
    [
        {"tolerance": 1e-3, "rel_error": 1e-3},
        {"tolerance": -1.0},
        {"rel_error": float("nan")},
        {"rel_tolerance": 1.0},
        {"rel_error": "a lot"},
        {"second_moment": np.ones(10, np.float32)},
        {"tolerance": 0.1, "quantizer": "exponent"},
        {"quantizer": "bounded"},
    ],
)
def test_bad_bounds_are_typed_errors(kw):
    with pytest.raises(dk.InvalidArgumentError):
        dk.encode(np.ones(10, np.float32), **kw)


def test_non_finite_input_is_refused():
    x = np.ones(100, np.float32)
    x[7] = np.nan
    with pytest.raises(dk.NonFiniteError, match="index 7"):
        dk.encode(x, tolerance=0.1)
    with pytest.raises(dk.NonFiniteError, match="reference"):
        dk.encode(np.ones(100, np.float32), reference=x, rel_error=0.1)


def test_an_unchanged_tensor_costs_almost_nothing():
    """A zero delta under a relative bound (Delta-LoRA's constants after the switch, frozen
    layers): every level is 0, whatever grid the plan picks."""
    x = np.random.default_rng(4).standard_normal(100_000).astype(np.float32)
    for kw in ({"rel_error": 1e-3}, {"tolerance": 1e-6}, {"rel_tolerance": 0.01}):
        blob = dk.encode(x, reference=x.copy(), **kw)
        assert len(blob) < 200, kw
        assert dk.decode(blob, reference=x).tobytes() == x.tobytes()
