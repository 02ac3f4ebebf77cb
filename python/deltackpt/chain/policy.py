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
tensor. Priority promotion (keep the ``2^bits - 1`` exponent buckets of largest exponent, zero
the rest) is chosen over the whole state by default (``scope="state"``, LC-checkpoint's delta
in R^n, model and optimizer apart); each tensor keeps its own bucket table and coder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from .._api import delta_histogram
from .config import ChainConfig
from .records import KEYFRAME_LEVEL
from .snapshot import FLOAT_DTYPES, Leaf, TensorKey

Floor = tuple[int, Optional[int]]  # (biased exponent, sign or None): see encode(bucket_floor=)


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
    """Per tensor path, the bucket floor of its delta (none with ``scope="tensor"``).

    Model and optimizer state choose their kept buckets apart, each with its own bit width
    (``optimizer_bits``).
    """
    if cfg.scope != "state":
        return {}
    floors: dict[str, Floor] = {}
    for opt in (False, True):
        batch = [
            lf
            for lf in leaves
            if lf.optimizer == opt and tensor_mode(lf, base_meta.get(lf.path)) == "delta"
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
