"""Small tensors coded together: one error-bounded blob for many biases, norms and moments.

A model is full of small tensors (biases, normalization scales and statistics, their optimizer
moments). Coded one blob each, their headers and tables cost more than their data and they are
mostly stored raw. A save's small delta-coded tensors of one kind of array (torch or numpy,
one dtype) are instead concatenated and coded as one tensor, so they share one header and
one entropy table. Each member keeps its own promise:

* a member with a per-element or per-tensor bound (``abs``, ``rel``, ``moment``) gets, in an
  ``each`` group, per-element tolerances: ``T`` for an absolute tolerance, ``e ||x|| /
  sqrt(n)`` for a relative one (so its L2 error stays within ``e ||x||``; ``T`` is stored, as
  the reader cannot know ``||x||``), ``t (sqrt(|v̂|) + eps)`` for a first moment bounded by its
  second moment ``v̂`` (reconstructed earlier in the same save);
* second moments (pointwise relative bounds, invariant under concatenation) form a
  ``pointwise`` group, coded before the ``each`` groups that may depend on them.

Writer and reader compute the tolerances with the same float32 operations from the same
stored values (subnormals flushed to 0 first, so no thread's denormal mode can change them),
then round them towards 0 in the tensor's dtype; the blob fingerprints them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._api import decode, encode
from ..errors import CorruptDataError
from .snapshot import torch_module

# A member's tolerance spec, as stored in the record: ["abs", T] or ["moment", t, eps, v index]
Spec = list[Any]
_F32_TINY = float(np.finfo(np.float32).tiny)


@dataclass
class Group:
    """One group blob of a record: its place, its kind and its members in order."""

    blob: list[int]  # [file index, offset, length]
    kind: str  # "each" | "pointwise"
    rho: float  # pointwise groups: the relative tolerance
    members: list[int]  # schema indices, in concatenation order
    specs: list[Spec | None]  # per member (each groups)

    def to_json(self) -> dict[str, Any]:
        return {
            "blob": self.blob,
            "kind": self.kind,
            "rho": self.rho,
            "members": self.members,
            "specs": self.specs,
        }

    @staticmethod
    def from_json(d: Any) -> Group:
        try:
            g = Group(
                blob=[int(v) for v in d["blob"]],
                kind=str(d["kind"]),
                rho=float(d["rho"]),
                members=[int(v) for v in d["members"]],
                specs=list(d["specs"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptDataError(f"malformed tensor group: {e}") from e
        if (
            g.kind not in ("each", "pointwise")
            or len(g.specs) != len(g.members)
            or len(g.blob) != 3
        ):
            raise CorruptDataError("malformed tensor group")
        return g


def flat(x: Any) -> Any:
    return x.reshape(-1)


def concat(xs: Sequence[Any]) -> Any:
    """The tensors flattened and joined (torch or numpy, as they are)."""
    torch = torch_module()
    if torch is not None and isinstance(xs[0], torch.Tensor):
        return torch.cat([flat(x) for x in xs])
    return np.concatenate([flat(x) for x in xs])


def split(x: Any, shapes: Sequence[Sequence[int]]) -> list[Any]:
    """Views of ``x`` (a concatenation) shaped as ``shapes``."""
    out, at = [], 0
    for shape in shapes:
        n = math.prod(shape)
        out.append(x[at : at + n].reshape(list(shape)))
        at += n
    return out


def f32_down(v: float) -> float:
    """The largest float32 value at or below ``v`` (tolerances are never rounded up)."""
    f = np.float32(v)
    return float(np.nextafter(f, np.float32(0)) if f > v else f)


def rel_tolerance(x: Any, e: float) -> float:
    """The per-element tolerance that keeps ``||x̂ - x|| <= e ||x||`` for ``x`` (a float32
    value, rounded down)."""
    a = x.double() if hasattr(x, "double") else np.asarray(x, dtype=np.float64)
    norm = float((a * a).sum()) ** 0.5
    return f32_down(e * norm / math.sqrt(max(1, _numel(x))) * (1 - 1e-6))


def _as_f32(x: Any) -> np.ndarray:
    if hasattr(x, "float"):
        return x.detach().float().numpy().reshape(-1)
    return np.asarray(x, dtype=np.float32).reshape(-1)


def tolerances(
    specs: Sequence[Spec], sizes: Sequence[int], moments: Sequence[Any], like: Any
) -> Any:
    """The per-element tolerances of an ``each`` group, in ``like``'s kind and dtype (rounded
    towards 0). ``moments[k]`` is the reconstructed second moment of member k (moment specs)."""
    parts = []
    for spec, n, v in zip(specs, sizes, moments):
        if spec is None or spec[0] not in ("abs", "moment"):
            raise CorruptDataError(f"unknown tolerance spec {spec!r}")
        if spec[0] == "abs":
            parts.append(np.full(n, np.float32(spec[1]), np.float32))
            continue
        vv = np.abs(_as_f32(v))
        vv[vv < _F32_TINY] = 0.0
        t = np.float32(spec[1]) * (np.sqrt(vv) + np.float32(spec[2]))
        t[t < _F32_TINY] = 0.0
        parts.append(t.astype(np.float32))
    tol = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return _round_down_like(tol, like)


def _round_down_like(tol: np.ndarray, like: Any) -> Any:
    """``tol`` (float32, >= 0) in the dtype and kind of ``like``, never rounded up."""
    torch = torch_module()
    if torch is not None and isinstance(like, torch.Tensor):
        t = torch.from_numpy(tol)
        if like.dtype == torch.bfloat16:
            # bf16 is the top half of f32: dropping the low half rounds towards 0
            bits = t.view(torch.int32) & ~0xFFFF
            return bits.view(torch.float32).to(torch.bfloat16)
        out = t.to(like.dtype)
        up = out.double() > t.double()
        if bool(up.any()):
            out[up] = torch.nextafter(out[up], torch.zeros_like(out[up]))
        return out
    out = tol.astype(like.dtype)
    up = out.astype(np.float64) > tol.astype(np.float64)
    out[up] = np.nextafter(out[up], np.zeros_like(out[up]))
    return out


def encode_group(
    xs: Sequence[Any],
    refs: Sequence[Any],
    kind: str,
    rho: float,
    specs: Sequence[Spec | None],
    moments: Sequence[Any],
    coder: str,
) -> tuple[bytes, list[Any]]:
    """One blob for tensors ``xs`` against ``refs``; returns it and each member's
    reconstruction (views of one buffer)."""
    x, ref = concat(xs), concat(refs)
    out = x.clone() if hasattr(x, "clone") else x.copy()
    if kind == "pointwise":
        blob = encode(x, reference=ref, rel_tolerance=rho, reconstruction=out, coder=coder)
    else:
        tol = tolerances(specs, [_numel(a) for a in xs], moments, x)  # type: ignore[arg-type]
        blob = encode(x, reference=ref, tolerance=tol, reconstruction=out, coder=coder)
    return blob, split(out, [list(a.shape) for a in xs])


def decode_group(
    data: bytes, group: Group, refs: Sequence[Any], moments: Sequence[Any]
) -> list[Any]:
    """The members of ``group`` decoded from ``data`` against their references ``refs``."""
    ref = concat(refs)
    if group.kind == "pointwise":
        x = decode(data, reference=ref)
    else:
        tol = tolerances(group.specs, [_numel(r) for r in refs], moments, ref)  # type: ignore[arg-type]
        x = decode(data, reference=ref, tolerance=tol)
    return split(x, [list(r.shape) for r in refs])


def _numel(x: Any) -> int:
    return int(x.numel()) if hasattr(x, "numel") and callable(x.numel) else int(x.size)
