"""A training state as the chain sees it: tensor leaves, plain JSON values and their nesting.

:func:`snapshot` flattens a state (copying every tensor to the host, into spare buffers when
they fit) and :func:`rebuild` nests decoded tensors and values back. The helpers below convert
one tensor to and from its exact bytes, clamp decoded second moments and refuse NaN/Inf before
a lossy save. Nothing here reads or writes files.
"""

from __future__ import annotations

import json
import math
import mmap
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._tensors import writable_host
from ..errors import CorruptDataError, InvalidArgumentError, NonFiniteError

FLOAT_DTYPES = {"float16", "bfloat16", "float32", "float64"}
# Optimizer moments: coded with ``optimizer_bits`` even outside an optimizer's state_dict.
MOMENT_KEYS = {"exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer"}
# Second moments must stay >= 0: clamped after every decode, on both sides of the chain.
NONNEG_KEYS = {"exp_avg_sq", "max_exp_avg_sq"}

TensorKey = tuple[str, str, tuple[int, ...]]  # (lib, dtype, shape): what a delta must match


def torch_module() -> Any:
    """The torch module, or None when it is not installed (torch is optional)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is optional
        return None
    return torch


def is_torch(x: Any) -> bool:
    torch = torch_module()
    return torch is not None and isinstance(x, torch.Tensor)


@dataclass
class Leaf:
    """One tensor of a state on the host: a contiguous copy, or the caller's own tensor
    (``borrowed``, a synchronous save of a contiguous CPU tensor: read during the save only,
    never written, never kept as a reference)."""

    path: str
    value: Any  # numpy array or torch tensor (CPU, contiguous)
    lib: str  # "torch" | "numpy"
    dtype: str
    shape: list[int]
    optimizer: bool
    nonneg: bool
    borrowed: bool = False

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    @property
    def key(self) -> TensorKey:
        return (self.lib, self.dtype, tuple(self.shape))

    @property
    def nbytes(self) -> int:
        x = self.value
        return self.numel * (x.itemsize if isinstance(x, np.ndarray) else x.element_size())


@dataclass
class Snapshot:
    """A state flattened into a JSON tree, plain values and tensor leaves."""

    tree: Any
    values: list[Any]
    leaves: list[Leaf]
    ready: Any = None  # a CUDA event recorded after the device-to-host copies, or None
    fingerprints: dict[str, bytes] | None = None  # of the borrowed leaves, once committed

    @property
    def borrowed(self) -> bool:
        return any(lf.borrowed for lf in self.leaves)

    def seal(self) -> None:
        """Fingerprint the borrowed leaves (the save is committed): :meth:`unchanged` later
        tells whether the caller's tensors still hold the saved values."""
        self.fingerprints = {lf.path: fingerprint(lf.value) for lf in self.leaves if lf.borrowed}

    def unchanged(self) -> bool:
        """The borrowed leaves hold what was saved (always true without borrowed leaves)."""
        prints = self.fingerprints or {}
        lent = [lf for lf in self.leaves if lf.borrowed]
        return all(fingerprint(lf.value) == prints.get(lf.path) for lf in lent)

    def wait_ready(self) -> None:
        """Block until the host copies are complete (CUDA copies are issued asynchronously)."""
        if self.ready is not None:
            self.ready.synchronize()
            self.ready = None


def dtype_name(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return x.dtype.name
    return str(x.dtype).removeprefix("torch.")


def same_layout(a: Any, b: Any) -> bool:
    """``a`` can take ``b``'s values: same kind, dtype and shape, contiguous host memory."""
    if a is None or isinstance(a, np.ndarray) != isinstance(b, np.ndarray):
        return False
    return bool(a.dtype == b.dtype and a.shape == b.shape and writable_host(a))


def fingerprint(x: Any) -> bytes:
    """xxh3-128 of a host tensor's bytes, read in place."""
    from .._core import fingerprint as _fingerprint

    if isinstance(x, np.ndarray):
        return _fingerprint(x.reshape(-1).view(np.uint8))
    if x.numel() == 0:
        return _fingerprint(np.zeros(0, np.uint8))
    return _fingerprint(x.reshape(-1).view(torch_module().uint8).numpy())


def borrowable(x: Any) -> bool:
    """``x`` can be read in place by a synchronous save: contiguous host memory in native
    byte order (raw bytes are read back native)."""
    if isinstance(x, np.ndarray):
        return bool(x.flags.c_contiguous and x.dtype.isnative and x.dtype.kind != "O")
    return bool(x.device.type == "cpu" and x.is_contiguous() and not x.is_conj() and not x.is_neg())


def copy_tensor(x: Any, spare: Any = None) -> Any:
    """A contiguous host copy of ``x``, into ``spare`` when it fits (same kind, dtype, shape):
    filling memory already mapped is several times faster than faulting in fresh pages."""
    cuda = _on_cuda(x)
    if same_layout(spare, x):
        if isinstance(x, np.ndarray):
            np.copyto(spare, x)
            return spare
        return spare.copy_(x.detach(), non_blocking=cuda and spare.is_pinned())
    if cuda:
        return pinned_copy(x)
    out = mapped_empty(x)
    if out is not None:
        return copy_tensor(x, out)
    if isinstance(x, np.ndarray):  # in native byte order: raw bytes are read back native
        return np.array(x, dtype=x.dtype.newbyteorder("="), copy=True, order="C")
    return x.detach().to("cpu", copy=True).contiguous()


_MAPPED_BYTES = 1 << 20


def mapped_empty(x: Any) -> Any:
    """An uninitialised host buffer of ``x``'s layout (native byte order) in memory mapped
    for it alone, or None below 1 MiB: freeing it gives the memory back to the system at
    once. The writer's large buffers come from here, not from the allocator's heaps, which
    kept what one thread freed out of another's reach (a writer held 2-3x the state)."""
    nbytes = x.nbytes if isinstance(x, np.ndarray) else x.numel() * x.element_size()
    if nbytes < _MAPPED_BYTES:
        return None
    buf = mmap.mmap(-1, nbytes)
    if isinstance(x, np.ndarray):
        return np.frombuffer(buf, dtype=x.dtype.newbyteorder("=")).reshape(x.shape)
    return torch_module().frombuffer(buf, dtype=x.dtype).reshape(x.shape)


def check_storable(x: Any, path: list[Any]) -> None:
    """Refuse, before anything is written, a tensor the chain could not restore exactly:
    numpy strings, objects (heap pointers), structured and datetime arrays; torch quantized
    (scale and zero point would be lost), meta (no data), sparse and nested tensors."""
    if isinstance(x, np.ndarray):
        if x.dtype.kind in "OUSVMm" or x.dtype.fields is not None:
            raise InvalidArgumentError(
                f"cannot store the numpy array at {path}: dtype {x.dtype} is not numeric; "
                "the chain stores numeric, bool and float arrays (convert, or keep it as a "
                "JSON value)"
            )
        return
    problem = (
        "quantized"
        if x.is_quantized
        else "meta (it has no data)"
        if x.is_meta
        else "sparse"
        if x.layout != torch_module().strided
        else "nested"
        if getattr(x, "is_nested", False)
        else None
    )
    if problem:
        raise InvalidArgumentError(
            f"cannot store the torch tensor at {path}: it is {problem}; save a dense, "
            "materialized tensor (x.dequantize(), x.to_dense(), or real data for meta tensors)"
        )


def _on_cuda(x: Any) -> bool:
    return not isinstance(x, np.ndarray) and bool(getattr(x, "is_cuda", False))


def pinned_copy(x: Any) -> Any:
    """A device-to-host copy of a CUDA tensor into page-locked (pinned) host memory, issued
    asynchronously on the current stream: the caller's later kernels on that stream run after
    it, and :meth:`Snapshot.wait_ready` waits for it before the bytes are read. The next save
    refills the same pinned buffer (the spare). Not run on the development machine (no GPU)."""
    torch = torch_module()
    if torch is None or not torch.cuda.is_available():  # pragma: no cover - no GPU here
        return x.detach().to("cpu", copy=True).contiguous()
    out = torch.empty(tuple(x.shape), dtype=x.dtype, pin_memory=True)  # pragma: no cover
    return out.copy_(x.detach(), non_blocking=True)  # pragma: no cover


def snapshot(state: Any, spare: dict[str, Any] | None = None, *, borrow: bool = False) -> Snapshot:
    """Flatten ``state`` or raise TypeError naming the bad leaf. Tensors are copied to the
    host, into the ``spare`` buffers by path when they fit; with ``borrow`` (a synchronous
    save), contiguous CPU tensors are read in place instead: a save then holds no copy."""
    flat = _Flattener(spare or {}, borrow)
    tree = flat.walk(state, [], False)
    snap = Snapshot(tree, flat.values, flat.leaves)
    if flat.cuda:  # pragma: no cover - no GPU here
        torch = torch_module()
        snap.ready = torch.cuda.Event()
        snap.ready.record()  # after every copy issued on the current stream
    return snap


class _Flattener:
    """The walk of :func:`snapshot`. An object, not a recursive closure: a closure that calls
    itself is a reference cycle that only the garbage collector frees, and it kept each
    save's copies (half the state, with ``async_save``) alive until it ran."""

    def __init__(self, spare: dict[str, Any], borrow: bool) -> None:
        self.spare, self.borrow = spare, borrow
        self.values: list[Any] = []
        self.leaves: list[Leaf] = []
        self.cuda = False

    def walk(self, obj: Any, path: list[Any], optim: bool) -> Any:
        if is_torch(obj) or isinstance(obj, np.ndarray):
            return self.leaf(obj, path, optim)
        if obj is None or isinstance(obj, (bool, int, float, str)):
            self.values.append(obj)
            return {"V": len(self.values) - 1}
        if isinstance(obj, np.generic):
            self.values.append(obj.item())
            return {"V": len(self.values) - 1}
        if isinstance(obj, Mapping):
            items = []
            for k, v in obj.items():
                if not (k is None or isinstance(k, (bool, int, float, str))):
                    raise TypeError(f"unsupported dict key {k!r} at {path}")
                sub = optim or (isinstance(k, str) and "optim" in k.lower())
                items.append([k, self.walk(v, [*path, k], sub)])
            return {"D": items}
        if isinstance(obj, (list, tuple)):
            nodes = [self.walk(v, [*path, i], optim) for i, v in enumerate(obj)]
            return {"L" if isinstance(obj, list) else "U": nodes}
        sd = getattr(obj, "state_dict", None)
        if callable(sd):
            return self.walk(sd(), path, optim or hasattr(obj, "param_groups"))
        raise TypeError(
            f"cannot store {type(obj).__name__} at {path}: only tensors, numpy arrays, "
            "JSON values, lists/tuples/dicts of them and objects with state_dict() (no pickle)"
        )

    def leaf(self, obj: Any, path: list[Any], optim: bool) -> dict[str, int]:
        check_storable(obj, path)
        self.cuda = self.cuda or _on_cuda(obj)
        key = json.dumps(path)
        last = path[-1] if path else None
        lend = self.borrow and borrowable(obj)
        value = obj if isinstance(obj, np.ndarray) else obj.detach()
        self.leaves.append(
            Leaf(
                path=key,
                value=value if lend else copy_tensor(obj, self.spare.get(key)),
                lib="numpy" if isinstance(obj, np.ndarray) else "torch",
                dtype=dtype_name(obj),
                shape=[int(s) for s in obj.shape],
                optimizer=optim or last in MOMENT_KEYS,
                nonneg=last in NONNEG_KEYS,
                borrowed=lend,
            )
        )
        return {"T": len(self.leaves) - 1}


def rebuild(tree: Any, values: list[Any], tensors: list[Any]) -> Any:
    """Inverse of :func:`snapshot`: rebuild the nested state."""
    if not isinstance(tree, dict) or len(tree) != 1:
        raise CorruptDataError("malformed state tree")
    ((tag, body),) = tree.items()
    if tag == "T":
        return tensors[body]
    if tag == "V":
        return values[body]
    if tag == "D":
        return {k: rebuild(v, values, tensors) for k, v in body}
    if tag == "L":
        return [rebuild(v, values, tensors) for v in body]
    if tag == "U":
        return tuple(rebuild(v, values, tensors) for v in body)
    raise CorruptDataError(f"unknown tree tag {tag!r}")


def raw_bytes(x: Any) -> bytes:
    """The exact bytes of a host tensor (how integer, bool and tiny tensors are stored)."""
    if isinstance(x, np.ndarray):
        return x.tobytes()
    torch = torch_module()
    if x.numel() == 0:
        return b""
    return x.reshape(-1).view(torch.uint8).numpy().tobytes()


def from_raw(buf: bytes, lib: str, dtype: str, shape: list[int]) -> Any:
    """Inverse of :func:`raw_bytes`; a size that does not match is corrupt data."""
    n = math.prod(shape)
    if lib == "numpy":
        dt = np.dtype(dtype)
        if len(buf) != n * dt.itemsize:
            raise CorruptDataError(f"raw tensor of {len(buf)} bytes for {n} x {dtype}")
        return np.frombuffer(buf, dt).reshape(shape).copy()
    torch = torch_module()
    tdt = getattr(torch, dtype, None)
    if not isinstance(tdt, torch.dtype):
        raise CorruptDataError(f"unknown torch dtype {dtype!r}")
    if len(buf) != n * tdt.itemsize:
        raise CorruptDataError(f"raw tensor of {len(buf)} bytes for {n} x {dtype}")
    if n == 0:
        return torch.empty(shape, dtype=tdt)
    return torch.frombuffer(bytearray(buf), dtype=torch.uint8).view(tdt).reshape(shape)


def clamp0(x: Any) -> Any:
    """Clamp a decoded second moment at 0, in place when the buffer allows it."""
    if isinstance(x, np.ndarray):
        return np.maximum(x, 0, out=x) if x.flags.writeable else np.maximum(x, 0)
    return x.clamp_(min=0)


def check_finite(leaf: Leaf) -> None:
    """Raise NonFiniteError (count, first index, tensor name) if ``leaf`` has NaN or Inf."""
    x = leaf.value
    if isinstance(x, np.ndarray) or leaf.dtype != "bfloat16":
        a = (x if isinstance(x, np.ndarray) else x.numpy()).reshape(-1)
        if np.isfinite(a).all():  # fast path: one vectorized pass, no temporaries kept
            return
        bad = ~np.isfinite(a)
        count = int(bad.sum())
        first = int(np.argmax(bad))
    else:
        torch = torch_module()
        badt = ~torch.isfinite(x.reshape(-1))
        count = int(badt.sum())
        first = int(torch.argmax(badt.to(torch.uint8))) if count else 0
    if count:
        raise NonFiniteError(
            f"{count} non-finite value(s) (NaN or Inf), the first at flat index {first}, in "
            f"tensor {leaf.path}; fix the state or save this step with exact=True"
        )
