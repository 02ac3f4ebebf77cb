"""Entropy coders for byte symbol streams (building blocks)."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _core
from .errors import InvalidArgumentError

__all__ = ["encode", "decode"]


def encode(symbols: Any, coder: str = "auto") -> bytes:
    """Code a 1-D ``uint8`` array into a self-describing byte string."""
    a = np.asarray(symbols)
    if a.dtype != np.uint8:
        raise InvalidArgumentError(f"symbols must be a uint8 array, not {a.dtype}")
    return _core.codec_encode(np.ascontiguousarray(a.reshape(-1)), coder)


def decode(blob: bytes) -> np.ndarray:
    """Decode a byte string from :func:`encode` back to its 1-D ``uint8`` array."""
    return _core.codec_decode(blob)
