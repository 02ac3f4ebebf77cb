"""The writer's references: the reconstructions the next delta is coded against.

Error feedback (SPEC 2.1) codes ``u - r_base`` where ``r_base`` is the base record's
*reconstruction*, bit for bit what a reader decodes, never the true state. The writer keeps one
reconstruction per level, as a stack of decreasing levels over the branch's keyframe
(:func:`.policy.kept_levels` says which survive a save). It does not decode its own blobs: the
core writes each new reconstruction while coding, into a buffer this module hands out.

Memory. A save of the same level as its base drops that base, so the base's buffers are
updated in place; reconstructions of dropped levels are recycled as the next save's output
buffers; the writer's copy of the latest true state (for ``branch_point``) is refilled by the
next save's host copy. So a save does not fault in fresh state-sized memory. A save that fails
after updating a reference in place marks the stack *stale*; the next save rebuilds it from
the committed records first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._tensors import writable_host
from .policy import delta_codable, kept_levels
from .records import RecId, Records
from .restore import decode_paths
from .snapshot import Snapshot, TensorKey, same_layout


@dataclass
class Level:
    """A reconstruction the next saves may be coded against."""

    level: int
    rid: RecId
    recon: dict[str, Any]  # tensor path -> reconstruction (delta-coded float tensors only)
    meta: dict[str, TensorKey]  # path -> (lib, dtype, shape)


def _delta_coded(t: dict[str, Any]) -> bool:
    return delta_codable(t["dtype"], math.prod(t["shape"]))


class References:
    """The reference stack, its spare buffers and the copy of the latest saved state."""

    def __init__(self) -> None:
        self.levels: list[Level] = []
        self.stale = False  # a failed save updated a reference in place: rebuild first
        self.spare: dict[str, Any] = {}  # path -> a dropped reconstruction, free to refill
        self.latest: Snapshot | None = None  # host copy of the latest save (branch points)
        self.latest_rid: RecId | None = None

    def stack(self) -> list[tuple[int, int]]:
        """(level, step) of each reference, the keyframe first (what the policy reads)."""
        return [(lv.level, lv.rid[1]) for lv in self.levels]

    def top_step(self) -> int | None:
        return self.levels[-1].rid[1] if self.levels else None

    def live_ids(self, exclude: Level | None = None) -> set[int]:
        """Buffers that hold a reference (other than ``exclude``'s): never to be refilled."""
        return {id(a) for lv in self.levels if lv is not exclude for a in lv.recon.values()}

    def rebuild(self, records: Records, history: list[RecId], threads: int) -> None:
        """Decode the references from the committed records of the branch's ``history``:
        walking back from the latest save, each record of a higher level than the last
        taken, down to the keyframe."""
        self.levels, self.stale, self.spare = [], False, {}
        chosen = []
        for rid in reversed(history):
            rec = records.record(rid)
            if not chosen or rec.level > chosen[-1].level:
                chosen.append(rec)
            if rec.kind == "keyframe":
                break
        for rec in reversed(chosen):
            sch = records.schema(rec.schema)
            recon = decode_paths(records, rec.rid, _delta_coded, threads)
            meta = {
                t["path"]: (t["lib"], t["dtype"], tuple(t["shape"]))
                for t in sch.tensors
                if t["path"] in recon
            }
            self.levels.append(Level(rec.level, rec.rid, recon, meta))

    def spare_copies(self) -> dict[str, Any]:
        """The host copies of the previous save, free to receive this save's copy.

        The writer keeps one copy of the latest state (for ``branch_point``); refilling it
        rather than allocating a new one keeps a save from faulting in fresh memory. Buffers
        that also serve as a reference reconstruction are left alone.
        """
        old, self.latest = self.latest, None
        if old is None:
            return {}
        live = self.live_ids()
        return {lf.path: lf.value for lf in old.leaves if id(lf.value) not in live}

    def latest_state(self, rid: RecId) -> Snapshot | None:
        """The host copy of save ``rid`` if it is the latest this writer made."""
        return self.latest if self.latest is not None and self.latest_rid == rid else None

    def advance(self, new: Level, snap: Snapshot) -> None:
        """Push the reconstructions of a committed save; recycle those of dropped levels."""
        keep = kept_levels([lv.level for lv in self.levels], new.level)
        dropped = self.levels[keep:]
        self.levels = [*self.levels[:keep], new]
        self.latest, self.latest_rid = snap, new.rid
        # Reconstructions nobody refers to any more serve as the next save's output buffers
        # (held for one save: the state-sized memory a step after an anchor needs anyway).
        live = self.live_ids() | {id(lf.value) for lf in snap.leaves}
        self.spare = {
            path: a
            for lv in dropped
            for path, a in lv.recon.items()
            if id(a) not in live and writable_host(a)
        }

    def clear(self) -> None:
        self.levels, self.spare, self.latest = [], {}, None


class OutputBuffers:
    """Where one save's delta reconstructions are written.

    A base of the same level as the save is dropped by its commit: its reconstructions are
    updated in place (error feedback without a second state-sized buffer), unless another
    reference or the save's own host copy shares the buffer.
    """

    def __init__(self, refs: References, base: Level, level: int, snap: Snapshot) -> None:
        self.spare = refs.spare
        self.in_place = base.level == level
        self.shared = {id(lf.value) for lf in snap.leaves} | refs.live_ids(exclude=base)
        self.updated = False  # a reference was overwritten: on failure, the stack is stale

    def take(self, path: str, ref: Any) -> Any:
        """A buffer for the reconstruction of ``path``, whose reference is ``ref``."""
        if self.in_place and id(ref) not in self.shared and writable_host(ref):
            self.updated = True
            return ref
        out = self.spare.pop(path, None)
        if not same_layout(out, ref):
            out = np.empty_like(ref) if isinstance(ref, np.ndarray) else ref.new_empty(ref.shape)
        return out
