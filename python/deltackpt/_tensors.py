"""numpy / torch conversion: tensors cross into the core as little-endian bytes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InvalidArgumentError, ReferenceMismatchError

# Header tag recording which kind of tensor was encoded (see `Header::tag` in the core).
TAG_NUMPY = 0
TAG_TORCH = 1

_NUMPY_NAMES = {"float32", "float64", "float16", "bfloat16"}


def _torch() -> Any:
    try:
        import torch
    except ImportError:  # pragma: no cover - exercised only without torch
        return None
    return torch


def is_torch(x: Any) -> bool:
    """True when `x` is a torch tensor (without importing torch unless it is loaded)."""
    t = type(x)
    return (
        t.__module__.startswith("torch") and _torch() is not None and isinstance(x, _torch().Tensor)
    )


@dataclass
class Raw:
    """A tensor as the core sees it."""

    data: np.ndarray  # 1-D uint8, little-endian element bytes, contiguous
    dtype: str
    shape: list[int]
    tag: int
    device: Any = None
    np_dtype: Any = None


def to_raw(x: Any, what: str = "x") -> Raw:
    """View a numpy array or torch tensor as raw bytes (copying only when needed)."""
    if is_torch(x):
        torch = _torch()
        names = {
            torch.float32: "float32",
            torch.float64: "float64",
            torch.float16: "float16",
            torch.bfloat16: "bfloat16",
        }
        if x.dtype not in names:
            raise InvalidArgumentError(
                f"{what} has dtype {x.dtype}; deltackpt encodes float32, float64, float16 "
                "and bfloat16 tensors"
            )
        device = x.device
        t = x.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous().reshape(-1)
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        data = t.numpy().view(np.uint8)
        return Raw(data, names[x.dtype], list(x.shape), TAG_TORCH, device=device)
    if isinstance(x, np.ndarray) or np.isscalar(x):
        a = np.asarray(x)
        name = a.dtype.name
        if name not in _NUMPY_NAMES:
            raise InvalidArgumentError(
                f"{what} has dtype {a.dtype}; deltackpt encodes float32, float64, float16 and "
                "bfloat16 arrays (convert integers yourself, e.g. x.astype(np.float32))"
            )
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        data = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
        return Raw(data, name, list(a.shape), TAG_NUMPY, np_dtype=a.dtype)
    raise InvalidArgumentError(
        f"{what} must be a numpy array or a torch tensor, not {type(x).__name__}"
    )


def check_reference(x: Raw, ref: Raw) -> None:
    """Raise a clear error when a reference does not match the tensor."""
    if ref.dtype != x.dtype or ref.shape != x.shape:
        raise ReferenceMismatchError(
            f"reference is {ref.dtype} {tuple(ref.shape)} but the tensor is "
            f"{x.dtype} {tuple(x.shape)}: they must have the same dtype and shape"
        )


def writable_host(x: Any) -> bool:
    """``x`` is a numpy array or torch tensor the core can write into: contiguous CPU memory."""
    if is_torch(x):
        return bool(x.device.type == "cpu" and x.is_contiguous())
    return isinstance(x, np.ndarray) and bool(x.flags.c_contiguous and x.flags.writeable)


def out_raw(out: Any, like: Raw, what: str = "reconstruction") -> Raw:
    """View a caller's output buffer as raw bytes that the core writes into (never a copy)."""
    if not writable_host(out):
        raise InvalidArgumentError(
            f"{what} must be a writable, contiguous CPU numpy array or torch tensor"
        )
    raw = to_raw(out, what)
    if raw.dtype != like.dtype or raw.shape != like.shape:
        raise InvalidArgumentError(
            f"{what} is {raw.dtype} {tuple(raw.shape)}; it must match the tensor "
            f"({like.dtype} {tuple(like.shape)})"
        )
    return raw


def _numpy_dtype(name: str) -> Any:
    if name == "bfloat16":
        try:
            import ml_dtypes
        except ImportError as e:
            raise InvalidArgumentError(
                "decoding a bfloat16 tensor to numpy needs the ml_dtypes package "
                "(pip install ml-dtypes), or pass a torch reference"
            ) from e
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def from_raw(
    data: np.ndarray, dtype: str, shape: list[int], tag: int, like: Raw | None = None
) -> Any:
    """Build the output tensor: the kind of `like` if given, else the kind recorded in `tag`."""
    want_torch = like.tag == TAG_TORCH if like is not None else tag == TAG_TORCH
    torch = _torch() if want_torch else None
    if torch is not None:
        if dtype == "bfloat16":
            t = torch.from_numpy(data.view(np.int16)).view(torch.bfloat16)
        else:
            t = torch.from_numpy(data.view(np.dtype(dtype)))
        t = t.reshape(shape)
        if like is not None and like.device is not None and like.device.type != "cpu":
            t = t.to(like.device)
        return t
    np_dtype = like.np_dtype if like is not None and like.np_dtype is not None else None
    return data.view(np_dtype or _numpy_dtype(dtype)).reshape(shape)
