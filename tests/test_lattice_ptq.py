"""The core of benches/lattice_ptq.py on a tiny, briefly trained CNN (real digits data)."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

import deltackpt as dk  # noqa: E402

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benches" / "lattice_ptq.py"
_spec = importlib.util.spec_from_file_location("lattice_ptq", _PATH)
ptq = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("lattice_ptq", ptq)  # dataclasses look their module up
_spec.loader.exec_module(ptq)


@pytest.fixture(scope="module")
def tiny():
    """Two 3x3 convs (8 and 16 filters), one epoch on 200 digits."""
    torch.set_num_threads(1)
    model, acc, xv, yv = ptq.train_cnn(0, 1, widths=(8, 16), n_train=200)
    return model, acc, xv, yv


def _conv2(model) -> np.ndarray:
    return ptq.conv_layers(model)[1][1].weight.detach().numpy().astype(np.float64)


def _mce(w, w_hat) -> float:
    return float(np.mean(np.abs(w - w_hat) ** 3))


def test_lattice_not_worse_than_cubic_per_layer_3_bits(tiny):
    w = _conv2(tiny[0])
    assert w.shape == (16, 8, 3, 3)
    cubic = ptq.quantize_conv(w, "cubic", 3, "layer")
    lat = ptq.quantize_conv(w, "lattice", 3, "layer", iters=100)
    # the cubic search returns λI
    (lam,) = cubic.params
    assert np.allclose(lam, lam[0, 0] * np.eye(3)) and lam[0, 0] > 0
    # MCE of the reconstruction, computed independently of the core
    assert _mce(w, lat.w_hat) <= _mce(w, cubic.w_hat) * (1 + 1e-9)
    # on this layer (seeded) the search leaves the cubic lattice and gains strictly
    b = lat.params[0]
    assert not np.allclose(b, b[0, 0] * np.eye(3))
    assert _mce(w, lat.w_hat) < _mce(w, cubic.w_hat)
    assert dk.quant.lattice_error(w.reshape(-1, 3), lat.params[0], 3) <= dk.quant.lattice_error(
        w.reshape(-1, 3), lam, 3
    ) * (1 + 1e-9)
    # reconstruction is exactly Σ c_j b_j with the returned codes and basis
    again = dk.quant.lattice_dequantize(lat.codes, lat.params[0]).reshape(w.shape)
    np.testing.assert_allclose(again, lat.w_hat)
    # reusing the searched bases reproduces the same quantization
    reused = ptq.quantize_conv(w, "lattice", 3, "layer", bases=lat.params)
    np.testing.assert_array_equal(reused.codes, lat.codes)


@pytest.mark.parametrize("granularity", ["layer", "channel"])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_codes_in_range_and_side_information(tiny, granularity, bits):
    w = _conv2(tiny[0])
    half = 2 ** (bits - 1)
    groups = w.shape[0] if granularity == "channel" else 1
    side = {"uniform": 4, "cubic": 4, "lattice": 36, "lattice8": 13}
    for method in ptq.METHODS:
        q = ptq.quantize_conv(w, method, bits, granularity, iters=30)
        assert q.w_hat.shape == w.shape
        assert q.side_bytes == side[method] * groups
        lo, hi = (-(half - 1), half - 1) if method == "uniform" else (-half, half - 1)
        assert (q.lo, q.hi) == (lo, hi)
        assert q.codes.min() >= lo and q.codes.max() <= hi
        assert q.codes.size == w.size
        if method == "uniform":
            scales = np.asarray(q.params).reshape(-1, 1, 1, 1)
            np.testing.assert_allclose(q.w_hat, q.codes * scales, rtol=1e-12, atol=1e-15)
        else:
            assert len(q.params) == groups


def test_quantized_basis_on_8_bit_grid():
    lam = 0.037 * np.eye(3, dtype=np.float32)
    np.testing.assert_array_equal(ptq.quantize_basis(lam), lam)
    rng = np.random.default_rng(1)
    b = rng.normal(size=(3, 3)).astype(np.float32)
    q = ptq.quantize_basis(b).astype(np.float64)
    step = np.abs(b).max() / 127.0
    np.testing.assert_allclose(q / step, np.rint(q / step), atol=1e-4)
    assert np.abs(q - b).max() <= step / 2 + 1e-6


def test_uniform_at_size_respects_the_budget(tiny):
    ws = [_conv2(tiny[0])]
    small = ptq.uniform_at_size(ws, "layer", 300)
    large = ptq.uniform_at_size(ws, "layer", 900)
    assert small["bytes"] <= 300 and large["bytes"] <= 900
    assert large["bytes"] > small["bytes"]
    mse_small, _ = ptq.weight_errors(ws, small["w_hats"])
    mse_large, _ = ptq.weight_errors(ws, large["w_hats"])
    assert mse_large < mse_small


def test_evaluate_model_rows(tiny):
    model, acc, xv, yv = tiny
    assert 0.0 <= acc <= 100.0
    rows = ptq.evaluate_model(model, xv, yv, bits_list=(2, 3), iters=30)
    assert len(rows) == 2 * 2 * len(ptq.METHODS)
    n = sum(m.weight.numel() for _, m in ptq.conv_layers(model))
    for r in rows:
        assert 0.0 <= r["accuracy"] <= 100.0
        assert r["codes_in_range"]
        assert r["n_weights"] == n
        assert r["total_bytes"] == r["code_bytes"] + r["side_bytes"]
        assert r["mse"] > 0 and r["mce"] > 0
        assert len(r["layer_mce"]) == 2
        if r["method"] != "uniform":
            eq = r["same_size_uniform"]
            assert eq["bytes"] <= r["total_bytes"]
            assert 0.0 <= eq["accuracy"] <= 100.0
    by = {(r["granularity"], r["bits"], r["method"]): r for r in rows}
    for g in ("layer", "channel"):
        for b in (2, 3):
            # more bits never hurt the searched lattice on the same layer set
            assert by[(g, 3, "lattice")]["mce"] < by[(g, 2, "lattice")]["mce"]
            # 8-bit bases (13 bytes) are cheaper to store than float32 ones (36 bytes)
            assert by[(g, b, "lattice8")]["side_bytes"] < by[(g, b, "lattice")]["side_bytes"]
    table = ptq.markdown(
        {
            "runs": [
                {
                    "float_accuracy": acc,
                    "fp32_bytes": 4 * n,
                    "rows": rows,
                    "layers": ptq.layer_info(model),
                }
            ]
        }
    )
    assert table.count("| layer | 2 | lattice |") == 2
    assert "| conv2 | 16×8×3×3 |" in table
