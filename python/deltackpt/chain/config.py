"""The settings of a chain, checked once; the policy, the commit and retention read them.

The defaults live in one place, the signature of :class:`deltackpt.CheckpointChain`, which
resolves the ones that depend on others (``optimizer_bits``, ``anchor_bits``, ``threads``)
before building this.
"""

from __future__ import annotations

from dataclasses import dataclass


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

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 8:
            raise ValueError("bits must be in 1..8")
        if self.anchor_every < 2:
            raise ValueError("anchor_every must be >= 2")
        if self.scope not in ("state", "tensor"):
            raise ValueError("scope must be 'state' (LC-checkpoint) or 'tensor'")
