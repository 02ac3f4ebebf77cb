"""How a chain spends its bits: which record a save becomes and how each tensor is coded.

Everything here is a pure function of the chain's state (the levels on the writer's reference
stack, the ordinal of the last save) and of its :class:`~.config.ChainConfig`; nothing reads or
writes a file. Change how bits are allocated here, and only here: :mod:`.commit` asks this
module, tensor by tensor, for a mode (``raw``/``key``/``delta``), a bit width and a bucket
floor, and codes what it is told.

Kinds and levels. ``n`` counts the saves since the branch's last keyframe:

* **keyframe** (``n = 0``): lossless; at the first save, at branch points, when ``exact=True``,
  and once ``keyframe_every`` steps have passed since the last keyframe.
* **anchor** of level ``L >= 1``, the largest ``L`` with ``anchor_every**L`` dividing ``n``:
  coded with ``anchor_bits`` against the latest reference of level ``>= L``.
* **step** (level 0): coded with ``bits`` against the previous record.

Restoring the save of ordinal ``n`` applies ``1 + digit_sum(n, base=anchor_every)`` blobs per
tensor.

Budgets. Each delta-coded tensor gets a :class:`Budget`: the promise its reconstruction keeps
with respect to the state that was saved (error feedback makes it hold at every step, anchor
and keyframe, without accumulating). With ``quantizer="bounded"`` (the default):

* model tensors: ``rel_error`` (``||x̂ - x|| <= e ||x||`` per tensor; default
  :data:`DEFAULT_REL_ERROR`), or ``tolerance`` (``|x̂ - x| <= t`` per element);
* optimizer tensors: ``optimizer_rel_error`` (default: ``rel_error`` when one was given, else
  :data:`DEFAULT_OPTIMIZER_REL_ERROR`), or the same ``tolerance``;
* Adam-type second moments (``exp_avg_sq`` and kin, divided into the update as ``sqrt(v)``)
  are bounded per element relatively, ``|v̂ - v| <= r |v|`` (``second_moment_rel``): a positive
  entry never comes back as 0, a zero stays 0;
* Adam-type first moments with their second moment beside them are bounded in units of the
  update's denominator, ``|m̂ - m| <= t (sqrt(v̂) + eps)`` (``first_moment_tol``, ``eps`` the
  optimizer's): the update ``m / (sqrt(v) + eps)`` moves by at most ``t`` per element, where
  a bound on ``m`` alone would let elements with a tiny ``v`` move by anything.

The budget is per tensor, so allocating a save's bytes decomposes: each tensor's grid is the
coarsest that keeps its own bound (chosen in the core from the delta's histogram), which is
the least each tensor can cost; no tensor is traded against another, so small tensors (biases,
norms) are never zeroed to pay for large ones. The Adam-aware bounds also hold under a
user's ``rel_error``/``tolerance`` (tightened so that both promises hold).

``quantizer="exponent"`` is LC-checkpoint's scheme (``bits``, ``anchor_bits``,
``optimizer_bits``): priority promotion keeps the ``2^bits - 1`` exponent buckets of largest
exponent and zeroes the rest, chosen over the whole state (``scope="state"``, LC-checkpoint's
delta in R^n, model and optimizer apart) or per tensor (``scope="tensor"``); Adam's moments
still get the bounds above (the LC scheme would zero tiny second moments).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from .._api import delta_histogram
from .config import ChainConfig
from .records import KEYFRAME_LEVEL
from .snapshot import FLOAT_DTYPES, Leaf, TensorKey

Floor = tuple[int, Optional[int]]  # (biased exponent, sign or None): see encode(bucket_floor=)

DEFAULT_REL_ERROR = 3e-2  # model tensors, when no bound is given (see docs/CHAIN.md: why)
DEFAULT_OPTIMIZER_REL_ERROR = 1e-2  # optimizer tensors other than Adam's moments
DEFAULT_EPS = 1e-8  # Adam's eps when the optimizer's param_groups do not say
FIRST_MOMENT_KEYS = {"exp_avg"}
SECOND_MOMENT_KEYS = {"exp_avg_sq", "max_exp_avg_sq", "exp_avg_sq_row", "exp_avg_sq_col"}
_SIBLING = "exp_avg_sq"  # the second moment a first moment is bounded against


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Plan:
    """What the next save becomes."""

    kind: str  # "keyframe" | "anchor" | "step"
    level: int  # KEYFRAME_LEVEL, an anchor level >= 1, or 0
    ordinal: int  # saves since the branch's last keyframe
    base: int | None  # index into the reference stack; None for a keyframe


KEYFRAME = Plan("keyframe", KEYFRAME_LEVEL, 0, None)


def anchor_level(ordinal: int, anchor_every: int) -> int:
    """The largest ``L`` with ``anchor_every**L`` dividing ``ordinal`` (>= 1)."""
    level = 0
    while ordinal % (anchor_every ** (level + 1)) == 0:
        level += 1
    return level


def base_index(levels: Sequence[int], level: int) -> int:
    """The reference a save of ``level`` is coded against: the latest of level ``>= level``
    (the stack holds decreasing levels over a keyframe, so there always is one)."""
    return next(i for i in range(len(levels) - 1, -1, -1) if levels[i] >= level)


def kept_levels(levels: Sequence[int], level: int) -> int:
    """How many references (bottom first) stay under a new one of ``level``: those of a
    higher level. A keyframe (the highest level) drops them all."""
    n = len(levels)
    while n and levels[n - 1] <= level:
        n -= 1
    return n


def plan_save(
    stack: Sequence[tuple[int, int]],
    last_ordinal: int | None,
    step: int,
    *,
    exact: bool,
    cfg: ChainConfig,
) -> Plan:
    """The kind, level, ordinal and base of a save at ``step``.

    ``stack`` is the writer's references as ``(level, step)``, the keyframe first;
    ``last_ordinal`` the ordinal of the latest save (the top of the stack).
    """
    if not stack or exact or last_ordinal is None:
        return KEYFRAME
    if cfg.keyframe_every and step - stack[0][1] >= cfg.keyframe_every:
        return KEYFRAME
    ordinal = last_ordinal + 1
    level = anchor_level(ordinal, cfg.anchor_every)
    base = base_index([lv for lv, _ in stack], level)
    return Plan("anchor" if level > 0 else "step", level, ordinal, base)


# --------------------------------------------------------------------------- tensors


def delta_codable(dtype: str, numel: int) -> bool:
    """Float tensors of at least 2 elements are delta-coded; the rest is stored exactly."""
    return dtype in FLOAT_DTYPES and numel >= 2


def tensor_mode(leaf: Leaf, base_key: TensorKey | None) -> str:
    """``raw`` (exact bytes), ``key`` (lossless blob) or ``delta`` (against the base's
    reconstruction of the same path, whose (lib, dtype, shape) is ``base_key``; None when
    there is no base or it has no such tensor)."""
    if not delta_codable(leaf.dtype, leaf.numel):
        return "raw"
    return "delta" if base_key == leaf.key else "key"


def tensor_bits(cfg: ChainConfig, optimizer: bool, level: int) -> int:
    """Bits of a delta: ``optimizer_bits`` for optimizer state, raised by ``anchor_bits -
    bits`` in anchors (errors in an anchor persist through every step coded against it)."""
    b = cfg.optimizer_bits if optimizer else cfg.bits
    return min(b + (cfg.anchor_bits - cfg.bits), 8) if level > 0 else b


def bucket_floors(
    leaves: Sequence[Leaf],
    base_meta: Mapping[str, TensorKey],
    base_recon: Mapping[str, Any],
    level: int,
    cfg: ChainConfig,
) -> dict[str, Floor]:
    """Per tensor path, the bucket floor of its delta: LC-checkpoint's scheme with
    ``scope="state"`` only (none otherwise).

    Model and optimizer state choose their kept buckets apart, each with its own bit width
    (``optimizer_bits``); tensors with an error bound (Adam's moments) take no part.
    """
    if cfg.quantizer != "exponent" or cfg.scope != "state":
        return {}
    floors: dict[str, Floor] = {}
    for opt in (False, True):
        batch = [
            lf
            for lf in leaves
            if lf.optimizer == opt
            and tensor_mode(lf, base_meta.get(lf.path)) == "delta"
            and tensor_budget(lf, cfg, level, None, 0.0).kind == "exponent"
        ]
        if batch:
            refs = [base_recon[lf.path] for lf in batch]
            bits = tensor_bits(cfg, opt, level)
            found = global_floors([lf.value for lf in batch], refs, bits)
            floors.update(zip([lf.path for lf in batch], found))
    return floors


def kept_buckets(hist: np.ndarray, bits: int, exp_bits: int) -> Floor:
    """Priority promotion over a histogram of bucket keys (``sign << exp_bits | exponent``).

    Keeps the ``2^bits - 1`` non-empty (sign, exponent) buckets of largest exponent (negative
    first on a tie); the biased exponent 0 (zeros, subnormals) is never kept. Returns
    ``(e_min, sign_min)``: every bucket of exponent > e_min is kept, and at e_min the buckets of
    both signs (``sign_min`` None) or only of sign ``sign_min``. e_min = 0 keeps nothing.
    """
    n_exp = 1 << exp_bits
    exps = np.arange(hist.size) % n_exp
    signs = np.arange(hist.size) // n_exp
    present = np.flatnonzero((hist > 0) & (exps > 0))
    order = present[np.lexsort((-signs[present], -exps[present]))][: (1 << bits) - 1]
    if order.size == 0:
        return n_exp, None  # nothing to keep
    e_min = int(exps[order[-1]])
    kept_at_min = {int(signs[o]) for o in order if exps[o] == e_min}
    present_at_min = {int(signs[o]) for o in present if exps[o] == e_min}
    if kept_at_min == present_at_min:
        return e_min, None
    return e_min, kept_at_min.pop()


def global_floors(xs: list[Any], refs: list[Any], bits: int) -> list[Floor]:
    """LC-checkpoint's priority promotion over the whole state (delta in R^n).

    The buckets kept are chosen over all tensors together from the histograms of their deltas'
    (sign, exponent) keys (computed in the core); each tensor is then encoded with the
    resulting floor, so its own quantizer (its own table and coder) keeps only buckets of the
    global choice. Error feedback carries what was dropped to the next save.
    """
    hists = [delta_histogram(x, r) for x, r in zip(xs, refs)]
    floors: list[Floor] = [(0, None)] * len(xs)
    for size in {h.size for h in hists}:
        idx = [i for i, h in enumerate(hists) if h.size == size]
        exp_bits = 8 if size == 512 else 11
        total = np.sum([hists[i] for i in idx], axis=0)
        floor = kept_buckets(total, bits, exp_bits)
        for i in idx:
            floors[i] = floor
    return floors


# --------------------------------------------------------------------------- error budgets


@dataclass(frozen=True)
class Budget:
    """The promise one tensor's delta keeps, and what its encode needs to know.

    ``kind`` is ``"exponent"`` (LC-checkpoint: ``bits``, ``floor``), ``"rel"``, ``"abs"``,
    ``"pointwise"`` or ``"moment"`` (bounded relative to ``moment``, the path of the second
    moment coded before it in the same save). ``cap_rel``/``cap_abs`` are the user's
    ``rel_error``/``tolerance`` that a pointwise or moment bound must also keep.
    """

    kind: str
    value: float = 0.0
    bits: int = 0
    floor: Floor | None = None
    moment: str | None = None
    eps: float = 0.0
    cap_rel: float | None = None
    cap_abs: float | None = None


def moment_kind(leaf: Leaf) -> str | None:
    """``"second"`` for Adam-type second moments, ``"first"`` for first moments, else None."""
    last = json.loads(leaf.path)[-1] if leaf.path.startswith("[") else None
    if last in SECOND_MOMENT_KEYS:
        return "second"
    return "first" if last in FIRST_MOMENT_KEYS else None


def moment_pairs(leaves: Sequence[Leaf]) -> dict[str, str]:
    """First moment path -> the path of its second moment (same lib, dtype, shape)."""
    by_path = {lf.path: lf for lf in leaves}
    pairs = {}
    for lf in leaves:
        if moment_kind(lf) != "first":
            continue
        sibling = json.dumps([*json.loads(lf.path)[:-1], _SIBLING])
        v = by_path.get(sibling)
        if v is not None and v.key == lf.key:
            pairs[lf.path] = sibling
    return pairs


def optimizer_eps(tree: Any, values: Sequence[Any]) -> float:
    """The smallest ``eps`` of any optimizer param group in a state (the strictest bound),
    or :data:`DEFAULT_EPS` when none is saved."""
    found: list[float] = []
    stack = [tree]  # a loop, not a recursive closure (a reference cycle)
    while stack:
        ((tag, body),) = stack.pop().items()
        if tag == "D":
            for k, sub in body:
                if k == "eps" and "V" in sub and isinstance(values[sub["V"]], (int, float)):
                    found.append(float(values[sub["V"]]))
                stack.append(sub)
        elif tag in ("L", "U"):
            stack.extend(body)
    return min(found) if found else DEFAULT_EPS


def optimizer_rel_error(cfg: ChainConfig) -> float:
    """The L2 bound of optimizer tensors: ``optimizer_rel_error``, else the user's
    ``rel_error``, else :data:`DEFAULT_OPTIMIZER_REL_ERROR`."""
    if cfg.optimizer_rel_error is not None:
        return cfg.optimizer_rel_error
    return cfg.rel_error if cfg.rel_error is not None else DEFAULT_OPTIMIZER_REL_ERROR


def tensor_budget(
    leaf: Leaf, cfg: ChainConfig, level: int, moment: str | None, eps: float
) -> Budget:
    """The budget of ``leaf``'s delta in a save of ``level``; ``moment`` is the path of its
    second moment when it is a first moment with one beside it, ``eps`` the optimizer's."""
    user_rel = None if cfg.rel_error is None else optimizer_rel_error(cfg)
    kind = moment_kind(leaf)
    if kind == "second" and cfg.second_moment_rel is not None:
        rho = cfg.second_moment_rel
        if user_rel is not None:
            rho = min(rho, user_rel)  # pointwise r implies an L2 error of at most r
        return Budget("pointwise", rho, cap_abs=cfg.tolerance)
    if kind == "first" and moment is not None and cfg.first_moment_tol is not None:
        return Budget(
            "moment",
            cfg.first_moment_tol,
            moment=moment,
            eps=eps,
            cap_rel=user_rel,
            cap_abs=cfg.tolerance,
        )
    if cfg.quantizer == "exponent":
        return Budget("exponent", bits=tensor_bits(cfg, leaf.optimizer, level))
    if cfg.tolerance is not None:
        return Budget("abs", cfg.tolerance)
    if leaf.optimizer:
        return Budget("rel", optimizer_rel_error(cfg))
    return Budget("rel", DEFAULT_REL_ERROR if cfg.rel_error is None else cfg.rel_error)


def _as_numpy64(x: Any) -> np.ndarray:
    """A float64 numpy copy of a host tensor (only on the rare paths that need a norm)."""
    if hasattr(x, "double"):
        return x.detach().double().numpy().reshape(-1)
    return np.asarray(x, dtype=np.float64).reshape(-1)


def encode_kwargs(b: Budget, x: Any, v_hat: Any = None) -> dict[str, Any]:
    """The keyword arguments of :func:`deltackpt.encode` that keep budget ``b`` for tensor
    ``x`` (``v_hat``: the reconstruction of its second moment in this save, for ``moment``).

    Caps tighten the bound so that both promises hold: a pointwise ``r`` with a tolerance
    ``t`` becomes ``min(r, t / max|x|)``; a moment tolerance becomes the least of itself,
    ``cap_rel ||x|| / ||sqrt(v̂) + eps||`` and ``cap_abs / max(sqrt(v̂) + eps)``.
    """
    if b.kind == "exponent":
        return {"quantizer": "exponent", "bits": b.bits, "bucket_floor": b.floor}
    if b.kind == "rel":
        return {"rel_error": b.value}
    if b.kind == "abs":
        return {"tolerance": b.value}
    if b.kind == "pointwise":
        rho = b.value
        if b.cap_abs is not None:
            a = np.abs(_as_numpy64(x))
            top = float(a.max()) if a.size else 0.0
            rho = min(rho, b.cap_abs / top * (1 - 1e-9)) if top > 0 else rho
        return {"rel_tolerance": rho}
    scale = np.sqrt(np.abs(_as_numpy64(v_hat))) + b.eps
    t = b.value
    if b.cap_rel is not None:
        denom = float(np.sqrt((scale * scale).sum()))
        if denom > 0:
            norm = float(np.linalg.norm(_as_numpy64(x)))
            t = min(t, b.cap_rel * norm / denom * (1 - 1e-9))
    if b.cap_abs is not None and scale.size:
        t = min(t, b.cap_abs / float(scale.max()) * (1 - 1e-9))
    return {"tolerance": t, "second_moment": v_hat, "eps": b.eps}
