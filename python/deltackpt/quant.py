"""Quantizers (building blocks): exponent buckets from LC-checkpoint."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _core
from ._tensors import is_torch
from .errors import InvalidArgumentError

__all__ = ["exponent"]


def exponent(delta: Any, bits: int = 3, *, bucket_value: str = "mean") -> tuple[Any, Any]:
    """LC-checkpoint's exponent-bucket quantizer with priority promotion.

    Returns ``(symbols, table)``: one ``uint8`` symbol per element (flattened, row-major) and
    the values of symbols ``1..len(table)``; symbol 0 stands for 0. float32/float16/bfloat16
    inputs are quantized in float32 (table float32), float64 in float64.
    """
    if is_torch(delta):
        t = delta.detach().cpu()
        delta = t.numpy() if str(t.dtype) == "torch.float64" else t.float().numpy()
    a = np.asarray(delta)
    if a.dtype == np.float64:
        return _core.quant_exponent_f64(np.ascontiguousarray(a.reshape(-1)), bits, bucket_value)
    if a.dtype.kind != "f" and a.dtype.name != "bfloat16":
        raise InvalidArgumentError(f"delta must be a float array, not {a.dtype}")
    a32 = np.ascontiguousarray(a.reshape(-1).astype(np.float32, copy=False))
    return _core.quant_exponent_f32(a32, bits, bucket_value)
