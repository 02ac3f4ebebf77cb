"""Placeholder codec (pure numpy + zlib) used only while the Rust core ``deltackpt._core`` is absent.

It follows the contract of ``deltackpt.encode``/``decode`` (exponent-bucket quantizer with the
bucket mean, lossless mode, references) so that the chain can be developed and tested before the
core lands. It is slow and its format is private; the real core replaces it.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

import numpy as np


class DeltackptError(Exception):
    """Base class of deltackpt errors."""


class CorruptDataError(DeltackptError):
    """Bytes that are not a valid stream."""


class UnsupportedError(DeltackptError):
    """A valid stream this build cannot read."""


class NonFiniteError(DeltackptError, ValueError):
    """NaN or Inf given to a lossy quantizer."""


class ReferenceMismatchError(CorruptDataError, ValueError):
    """Reference tensor does not match the blob."""


_MAGIC = b"DKPH"


def _to_numpy(x: Any) -> tuple[np.ndarray, str, bool]:
    """(array as float32/float64/uint16-bits, dtype name, is_torch)."""
    if isinstance(x, np.ndarray):
        return np.ascontiguousarray(x), str(x.dtype), False
    import torch

    t = x.detach().cpu().contiguous()
    name = str(t.dtype).removeprefix("torch.")
    if t.dtype == torch.bfloat16:
        return t.float().numpy(), name, True
    return t.numpy(), name, True


def _from_numpy(a: np.ndarray, dtype: str, is_torch: bool) -> Any:
    if not is_torch:
        return a.astype(dtype, copy=False)
    import torch

    if dtype == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(
            torch.bfloat16
        )
    return torch.from_numpy(np.ascontiguousarray(a.astype(dtype, copy=False)))


def _bits_view(a: np.ndarray, dtype: str) -> bytes:
    if dtype == "bfloat16":
        return (a.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes()
    return a.tobytes()


def _from_bits(raw: bytes, dtype: str, shape: list[int]) -> np.ndarray:
    if dtype == "bfloat16":
        u = np.frombuffer(raw, np.uint16).astype(np.uint32) << 16
        return u.view(np.float32).reshape(shape)
    return np.frombuffer(raw, dtype).reshape(shape).copy()


def _quantize(d: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    flat = d.reshape(-1).astype(np.float64)
    _, exp = np.frexp(flat)
    nz = flat != 0
    keys = np.where(nz, np.sign(flat) * (exp.astype(np.float64) + 2000.0), 0.0)
    uniq = np.unique(np.abs(keys[nz]))
    kept = np.sort(uniq)[::-1][: (1 << bits) - 1]
    sym = np.zeros(flat.shape, np.uint8)
    table = np.zeros((1 << bits), np.float64)
    i = 1
    for e in kept:
        for s in (1.0, -1.0):
            if i >= (1 << bits):
                break
            m = keys == s * e
            if m.any():
                sym[m] = i
                table[i] = flat[m].mean()
                i += 1
    return sym, table


def encode(
    x: Any,
    *,
    reference: Any = None,
    quantizer: str = "exponent",
    bits: int = 3,
    coder: str = "auto",
) -> bytes:
    """Encode ``x`` (optionally relative to ``reference``)."""
    del coder
    a, dtype, is_torch = _to_numpy(x)
    if dtype not in ("float32", "float64", "float16", "bfloat16"):
        raise UnsupportedError(f"dtype {dtype}")
    head: dict[str, Any] = {
        "dtype": dtype,
        "shape": list(a.shape),
        "q": quantizer,
        "torch": is_torch,
    }
    if quantizer == "none":
        body = _bits_view(a, dtype)
    else:
        work = np.float64 if dtype == "float64" else np.float32
        d = a.astype(work)
        if reference is not None:
            ra, rd, _ = _to_numpy(reference)
            if rd != dtype or list(ra.shape) != list(a.shape):
                raise ReferenceMismatchError("reference shape/dtype mismatch")
            d = d - ra.astype(work)
        bad = ~np.isfinite(d.reshape(-1))
        if bad.any():
            idx = int(np.flatnonzero(bad)[0])
            raise NonFiniteError(
                f"{int(bad.sum())} non-finite value(s), the first at flat index {idx}"
            )
        sym, table = _quantize(d, bits)
        head["bits"] = bits
        body = table.tobytes() + sym.tobytes()
    head["ref"] = reference is not None
    hj = json.dumps(head).encode()
    payload = struct.pack("<I", len(hj)) + hj + zlib.compress(body, 6)
    return _MAGIC + struct.pack("<I", zlib.crc32(payload)) + payload


def decode(blob: bytes, *, reference: Any = None) -> Any:
    """Decode a blob made by :func:`encode`."""
    try:
        if blob[:4] != _MAGIC:
            raise CorruptDataError("bad magic")
        (crc,) = struct.unpack_from("<I", blob, 4)
        payload = blob[8:]
        if zlib.crc32(payload) != crc:
            raise CorruptDataError("checksum")
        (n,) = struct.unpack_from("<I", payload)
        head = json.loads(payload[4 : 4 + n])
        body = zlib.decompress(payload[4 + n :])
    except CorruptDataError:
        raise
    except Exception as e:
        raise CorruptDataError(str(e)) from e
    dtype, shape = head["dtype"], head["shape"]
    if head["q"] == "none":
        return _from_numpy(_from_bits(body, dtype, shape), dtype, head["torch"])
    k = 1 << head["bits"]
    table = np.frombuffer(body[: 8 * k], np.float64)
    sym = np.frombuffer(body[8 * k :], np.uint8)
    work = np.float64 if dtype == "float64" else np.float32
    q = table[sym].astype(work).reshape(shape)
    if head["ref"]:
        if reference is None:
            raise ReferenceMismatchError("blob needs a reference")
        ra, rd, _ = _to_numpy(reference)
        if rd != dtype or list(ra.shape) != list(shape):
            raise ReferenceMismatchError("reference shape/dtype mismatch")
        q = ra.astype(work) + q
    return _from_numpy(q, dtype, head["torch"])
