"""The settings of a chain, checked once; the policy, the commit and retention read them.

The defaults live in one place, the signature of :class:`deltackpt.CheckpointChain`, which
resolves the ones that depend on others (``optimizer_bits``, ``anchor_bits``, ``threads``,
the error budgets) before building this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

QUANTIZERS = ("bounded", "exponent")


def _check_budget(name: str, value: float | None, below: float = math.inf) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, not {value!r}")
    if not (0 <= value < below):
        raise ValueError(f"{name} must be >= 0{f' and < {below:g}' if below < math.inf else ''}")


@dataclass(frozen=True)
class ChainConfig:
    """A chain's settings (see :class:`deltackpt.CheckpointChain` for what each does)."""

    bits: int
    anchor_every: int
    keyframe_every: int | None
    optimizer_bits: int
    anchor_bits: int
    max_to_keep: int | None
    keep_every: int | None
    group_below: int
    coder: str
    scope: str
    threads: int
    quantizer: str = "bounded"
    # Error budgets (quantizer "bounded"; the Adam-aware ones apply with "exponent" too):
    rel_error: float | None = None  # model tensors: ||x̂ - x|| <= e ||x|| per tensor
    tolerance: float | None = None  # every float tensor: |x̂ - x| <= t per element
    optimizer_rel_error: float | None = None  # optimizer tensors: L2 bound per tensor
    # Adam's exp_avg_sq: |v̂ - v| <= r |v| per element (None: coded like other optimizer
    # tensors, which can return tiny positive entries as 0 -- not safe to resume from)
    second_moment_rel: float | None = 0.01
    # Adam's exp_avg: |m̂ - m| <= t (sqrt(v̂) + eps) (None: like other optimizer tensors)
    first_moment_tol: float | None = 0.05

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 8:
            raise ValueError("bits must be in 1..8")
        if self.anchor_every < 2:
            raise ValueError("anchor_every must be >= 2")
        if self.scope not in ("state", "tensor"):
            raise ValueError("scope must be 'state' (LC-checkpoint) or 'tensor'")
        if self.quantizer not in QUANTIZERS:
            raise ValueError(
                f"quantizer must be 'bounded' (error-bounded, the default) or 'exponent' "
                f"(LC-checkpoint's scheme), not {self.quantizer!r}"
            )
        if self.rel_error is not None and self.tolerance is not None:
            raise ValueError("give rel_error= or tolerance=, not both")
        _check_budget("rel_error", self.rel_error)
        _check_budget("tolerance", self.tolerance)
        _check_budget("optimizer_rel_error", self.optimizer_rel_error)
        _check_budget("second_moment_rel", self.second_moment_rel, below=1.0)
        _check_budget("first_moment_tol", self.first_moment_tol)
