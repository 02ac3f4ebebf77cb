"""Quantizers (building blocks): exponent buckets, uniform with zero point, lattice (Babai).

All functions take numpy arrays or torch tensors and return numpy arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _core
from ._tensors import is_torch
from .errors import InvalidArgumentError

__all__ = [
    "exponent",
    "uniform",
    "uniform_dequantize",
    "babai",
    "lattice_dequantize",
    "lattice_error",
    "find_basis",
]


def _numpy(x: Any, what: str) -> np.ndarray:
    if is_torch(x):
        t = x.detach().cpu()
        x = t.numpy() if str(t.dtype) == "torch.float64" else t.float().numpy()
    a = np.asarray(x)
    if a.dtype.kind not in "fiu" and a.dtype.name != "bfloat16":
        raise InvalidArgumentError(f"{what} must be a numeric array, not {a.dtype}")
    return a


def _f64(x: Any, what: str) -> np.ndarray:
    return np.ascontiguousarray(_numpy(x, what).astype(np.float64, copy=False).reshape(-1))


def exponent(delta: Any, bits: int = 3, *, bucket_value: str = "mean") -> tuple[Any, Any]:
    """LC-checkpoint's exponent-bucket quantizer with priority promotion.

    Returns ``(symbols, table)``: one ``uint8`` symbol per element (flattened, row-major) and
    the values of symbols ``1..len(table)``; symbol 0 stands for 0. float32/float16/bfloat16
    inputs are quantized in float32 (table float32), float64 in float64.
    """
    a = _numpy(delta, "delta")
    if a.dtype == np.float64:
        return _core.quant_exponent_f64(np.ascontiguousarray(a.reshape(-1)), bits, bucket_value)
    a32 = np.ascontiguousarray(a.reshape(-1).astype(np.float32, copy=False))
    return _core.quant_exponent_f32(a32, bits, bucket_value)


def uniform(
    x: Any, bits: int = 4, symmetric: bool = True, *, per_channel: bool = False
) -> tuple[np.ndarray, Any, Any]:
    """Uniform quantization: ``(codes, scale, zero_point)`` with ``x ≈ (codes - zp) * scale``.

    ``symmetric=True`` uses 2^bits − 1 levels centred on 0 (0 is exact, zero point 0);
    otherwise affine: scale = (max − min) / (2^bits − 1), zp = round(−min / scale).
    ``per_channel`` quantizes each slice of the leading axis with its own parameters; then
    ``scale`` and ``zero_point`` are arrays. ``codes`` has the shape of ``x`` (int32).
    """
    a = _numpy(x, "x")
    channels = (a.shape[0] if a.ndim else 1) if per_channel else 0
    codes, (scales, zps, _, _) = _core.quant_uniform(_f64(a, "x"), bits, symmetric, channels)
    codes = codes.reshape(a.shape)
    if per_channel:
        return codes, np.array(scales), np.array(zps)
    return codes, scales[0], zps[0]


def uniform_dequantize(codes: Any, scale: Any, zero_point: Any) -> np.ndarray:
    """``(codes - zero_point) * scale`` (per channel when ``scale`` is an array), float64."""
    c = np.asarray(codes)
    scales = np.atleast_1d(np.asarray(scale, dtype=np.float64))
    zps = np.atleast_1d(np.asarray(zero_point, dtype=np.int64))
    big = np.iinfo(np.int32)
    params = (
        [float(v) for v in scales.reshape(-1)],
        [int(v) for v in zps.reshape(-1)],
        [big.min] * scales.size,
        [big.max] * scales.size,
    )
    flat = np.ascontiguousarray(c.astype(np.int32, copy=False).reshape(-1))
    return _core.quant_uniform_dequantize(flat, params).reshape(c.shape)


def _blocks(blocks: Any) -> tuple[np.ndarray, int]:
    b = _numpy(blocks, "blocks")
    if b.ndim != 2:
        raise InvalidArgumentError(f"blocks must be a 2-D (N, n) array, got shape {b.shape}")
    return _f64(b, "blocks"), b.shape[1]


def _basis(basis: Any, n: int) -> np.ndarray:
    m = np.asarray(_numpy(basis, "basis"), dtype=np.float32)
    if m.shape != (n, n):
        raise InvalidArgumentError(f"basis must have shape ({n}, {n}), got {m.shape}")
    return np.ascontiguousarray(m.reshape(-1))


def babai(blocks: Any, basis: Any, bits: int) -> np.ndarray:
    """Babai nearest-plane codes of ``blocks`` (N, n) on the lattice of ``basis`` (rows b_i).

    Codes are clipped per coordinate to [−2^(bits−1), 2^(bits−1) − 1] as in the thesis'
    algorithm 2; returns (N, n) int32.
    """
    b, n = _blocks(blocks)
    return _core.quant_babai(b, n, _basis(basis, n), bits).reshape(-1, n)


def lattice_dequantize(codes: Any, basis: Any) -> np.ndarray:
    """Σ_j c_j b_j for each row of ``codes`` (N, n); returns (N, n) float64."""
    c = np.asarray(codes)
    if c.ndim != 2:
        raise InvalidArgumentError(f"codes must be a 2-D (N, n) array, got shape {c.shape}")
    n = c.shape[1]
    flat = np.ascontiguousarray(c.astype(np.int32, copy=False).reshape(-1))
    return _core.quant_lattice_dequantize(flat, n, _basis(basis, n)).reshape(-1, n)


def lattice_error(blocks: Any, basis: Any, bits: int, *, loss: str = "mce") -> float:
    """Mean cubed (``"mce"``) or squared (``"mse"``) error of quantizing ``blocks``."""
    b, n = _blocks(blocks)
    return _core.quant_lattice_error(b, n, _basis(basis, n), bits, loss)


def find_basis(
    blocks: Any, bits: int, *, iters: int = 400, seed: int = 0, loss: str = "mce"
) -> np.ndarray:
    """Search a lattice basis (n, n) for ``blocks`` (N, n): the best scaled identity, then
    Gaussian perturbations under a decreasing temperature, keeping improvements.

    Deterministic for a given seed, whatever the thread count.
    """
    b, n = _blocks(blocks)
    return _core.quant_find_basis(b, n, bits, iters, seed, loss).reshape(n, n)
