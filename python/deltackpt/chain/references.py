"""The writer's references: the reconstructions the next delta is coded against.

Error feedback (SPEC 2.1) codes ``u - r_base`` where ``r_base`` is the base record's
*reconstruction*, bit for bit what a reader decodes, never the true state. The writer keeps one
reconstruction per level, as a stack of decreasing levels over the branch's keyframe
(:func:`.policy.kept_levels` says which survive a save). It does not decode its own blobs: the
core writes each new reconstruction while coding, into a buffer this module hands out.

Memory (docs/CHAIN.md, "Writer memory"). Only the top of the stack, the reconstruction of the
latest save, is held in RAM; the others are *evicted* (``recon is None``) and decoded from the
committed records when a save is coded against them (an anchor, every ``anchor_every`` saves),
bit for bit what a reader decodes. A save writes its reconstruction over its base's buffers
(the base is either dropped by the save or re-derivable from disk), and a save coded against
an evicted level frees the top first, so the writer holds one reconstruction and the copy of
the latest state (refilled by the next save's host copy), never more. A save that fails after
updating a reference in place marks the stack *stale*; the next save rebuilds it from the
committed records first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._tensors import writable_host
from .policy import delta_codable, kept_levels
from .records import RecId, Records
from .restore import decode_into_buffers
from .snapshot import Snapshot, TensorKey, copy_tensor, same_layout


@dataclass
class Level:
    """A reconstruction the next saves may be coded against."""

    level: int
    rid: RecId
    recon: dict[str, Any] | None  # path -> reconstruction (delta-coded floats); None: evicted
    meta: dict[str, TensorKey]  # path -> (lib, dtype, shape)


def _delta_coded(t: dict[str, Any]) -> bool:
    return delta_codable(t["dtype"], math.prod(t["shape"]))


_BATCH_BYTES = 8 << 20  # an evicted reference is decoded with this much of its files held


def _decode_into(records: Records, lv: Level, free: dict[str, Any] | None) -> dict[str, Any]:
    """The reconstructions of ``lv``, decoded into the buffers of ``free`` (the top's, which
    the save replaces) path by path: the two are never both in RAM, and no fresh memory is
    taken for the ones that fit (a fresh buffer per tensor while the old ones are freed left
    a 100M-parameter writer at 4x the state beyond it, glibc keeping what was freed)."""
    buffers = {} if free is None else {p: v for p, v in free.items() if writable_host(v)}
    if free is not None:
        free.clear()
    return decode_into_buffers(records, lv.rid, list(lv.meta), buffers, _BATCH_BYTES)


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
        return self.live_ids_of([lv for lv in self.levels if lv is not exclude])

    @staticmethod
    def live_ids_of(levels: list[Level]) -> set[int]:
        return {id(a) for lv in levels for a in (lv.recon or {}).values()}

    def rebuild(self, records: Records, history: list[RecId], threads: int) -> None:
        """Decode the references from the committed records of the branch's ``history``:
        walking back from the latest save, each record of a higher level than the last
        taken, down to the keyframe."""
        del threads  # only the top is decoded, in this thread (:func:`_decode_batched`)
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
            meta = {
                t["path"]: (t["lib"], t["dtype"], tuple(t["shape"]))
                for t in sch.tensors
                if _delta_coded(t)
            }
            self.levels.append(Level(rec.level, rec.rid, None, meta))
        if self.levels:  # only the top in RAM; the others are decoded when a save needs them
            self.base(len(self.levels) - 1, records)

    def base(self, i: int, records: Records) -> Level:
        """Reference ``i`` with its reconstructions in RAM, decoded from disk if evicted.

        Coded against another reference, a save drops the top (or, if it fails, the top is
        decoded again when needed): its buffers are freed batch by batch as the base's are
        decoded, so the two are never both whole in RAM.
        """
        lv = self.levels[i]
        if lv.recon is None:
            top = self.levels[-1]
            free = top.recon if top is not lv else None
            try:
                lv.recon = _decode_into(records, lv, free)
            finally:
                if free is not None:
                    top.recon = None  # partly freed either way: decoded again when needed
            lv.meta = {p: k for p, k in lv.meta.items() if p in lv.recon}
        return lv

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
        return {
            lf.path: lf.value for lf in old.leaves if id(lf.value) not in live and not lf.borrowed
        }

    def latest_state(self, rid: RecId) -> Snapshot | None:
        """The state of save ``rid`` if it is the latest this writer made: its host copy, or
        the caller's tensors it read in place if they still hold the saved values; raises
        ValueError if they have changed since."""
        snap = self.latest if self.latest is not None and self.latest_rid == rid else None
        if snap is not None and not snap.unchanged():
            raise ValueError(
                f"the tensors saved at step {rid[1]} have changed since (a training step ran "
                "after the save): call branch_point() right after save(), or pass the state "
                "to record, branch_point(name, state=...)"
            )
        return snap

    def dropped_buffers(self, level: int) -> dict[str, Any]:
        """The buffers of the references a save of ``level`` without a base (a keyframe)
        drops, free for that save's own copies."""
        keep = kept_levels([lv.level for lv in self.levels], level)
        live = self.live_ids_of(self.levels[:keep])
        free: dict[str, Any] = {}
        for lv in self.levels[keep:]:
            free.update({p: a for p, a in (lv.recon or {}).items() if id(a) not in live})
        return free

    def own(self, recon: dict[str, Any], snap: Snapshot, level: int) -> None:
        """Copy into the writer's own buffers each reconstruction of ``recon`` that is one of
        the caller's tensors (stored exactly, a keyframe: a borrowed leaf is only read during
        its save). The buffers of the references the save drops are refilled first."""
        lent = {id(lf.value) for lf in snap.leaves if lf.borrowed}
        if not lent.intersection(id(v) for v in recon.values()):
            return
        keep = kept_levels([lv.level for lv in self.levels], level)
        taken = {id(v) for v in recon.values()} | self.live_ids_of(self.levels[:keep])
        free = dict(self.spare)
        for lv in self.levels[keep:]:
            free.update({p: a for p, a in (lv.recon or {}).items() if id(a) not in taken})
        for path, value in list(recon.items()):
            if id(value) in lent:
                recon[path] = copy_tensor(value, free.pop(path, None))

    def advance(self, new: Level, snap: Snapshot) -> None:
        """Push the reconstructions of a committed save; recycle those of dropped levels."""
        keep = kept_levels([lv.level for lv in self.levels], new.level)
        self.levels = [*self.levels[:keep], new]
        for lv in self.levels[:-1]:  # the base's buffers now hold the new reconstruction
            lv.recon = None
        if snap.borrowed and snap.fingerprints is None:  # a background save sealed it
            snap.seal()
        self.latest, self.latest_rid = snap, new.rid
        self.spare = {}

    def clear(self) -> None:
        self.levels, self.spare, self.latest = [], {}, None


class OutputBuffers:
    """Where one save's delta reconstructions are written.

    The base's reconstructions are updated in place (error feedback without a second
    state-sized buffer): a base of the same level is dropped by the commit, one of a higher
    level is evicted after it and decoded from disk when needed again. Not when the save's own
    host copy shares the buffer.
    """

    def __init__(self, refs: References, base: Level, level: int, snap: Snapshot) -> None:
        del level  # every base is overwritten: the references hold only the top in RAM
        self.spare = refs.spare
        self.in_place = True
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
