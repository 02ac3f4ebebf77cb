"""How a background save takes the state off the caller's hands without a second copy of it.

A background save (``async_save``) must let the training loop change its tensors as soon as
``save()`` returns. Copying the whole state first, as the first design did, held the copy
and the reference the next delta is coded against (2x the state, plus the allocator's
waste: 3.7x measured). Instead, when no other save is in flight, the background thread
starts coding the caller's CPU tensors *in place* (borrowed, read only) while ``save()``
waits, then copies the rest (:meth:`Staging.release`) and lets ``save()`` return. The copies
go into buffers the save frees anyway: the previous save's copies, or the references a
keyframe drops.

When to release: once :data:`INLINE_FRACTION` of the borrowed bytes is coded. The writer then
holds the reference plus at most half the state as copies (an out-of-memory is fatal, a
slower save is not), and ``save()`` blocks for coding half the state and copying the other
half. A time budget instead (code in place while it lasts less than a copy) was tried: its
estimate of a copy's time, taken on a loaded machine, sent whole saves inline (2.7x a
``clone()`` blocked) or none (2.2x the state held). The time spent decoding an anchor's base
before coding does not count either: memory comes first there too.

What ``release`` guarantees when ``save()`` returns: no borrowed tensor is read again by
the save; a reconstruction that *is* a borrowed tensor (stored exactly: a keyframe, a tiny
tensor) has been copied; the borrowed tensors coded so far are fingerprinted for
``branch_point()`` (:meth:`.snapshot.Snapshot.seal`). A save that fails before releasing
releases in its failure path, so ``save()`` never waits forever.
"""

from __future__ import annotations

import threading
from typing import Any

from .background import BackgroundSaves
from .snapshot import Leaf, Snapshot, copy_tensor, same_layout

# The part of the borrowed bytes coded in place before save() returns: the writer never holds
# more than the reference plus (1 - INLINE_FRACTION) of the state as copies.
INLINE_FRACTION = 0.5


class Staging:
    """The hand-over of one background save's borrowed tensors (see the module)."""

    def __init__(self, snap: Snapshot, spares: dict[str, Any]) -> None:
        self.snap = snap
        self.free = dict(spares)  # path -> a buffer this save may fill (taken from the caller,
        spares.clear()  # so that the save can free them: an anchor does)
        self.budget = INLINE_FRACTION * sum(lf.nbytes for lf in snap.leaves if lf.borrowed)
        self.coded_bytes = 0
        self.coded: set[str] = set()
        self.overwrote = False  # filled a buffer of a reference: on failure, rebuild them
        self._ref_buffers: set[int] = set()
        self._by_layout: dict[tuple[Any, ...], list[str]] | None = None  # built when needed
        self._released = threading.Event()

    @property
    def released(self) -> bool:
        return self._released.is_set()

    def add_free(self, buffers: dict[str, Any]) -> None:
        """Buffers of references this save drops (a keyframe's), free to receive copies."""
        for path, buf in buffers.items():
            if path not in self.free:
                self.free[path] = buf
                self._ref_buffers.add(id(buf))

    def before(self, leaf: Leaf, recon: dict[str, Any]) -> None:
        """Called before ``leaf`` is coded: release once the inline budget is spent."""
        if not self.released and leaf.borrowed and self.coded_bytes >= self.budget:
            self.release(recon)

    def after(self, leaf: Leaf) -> None:
        if leaf.borrowed and not self.released:
            self.coded_bytes += leaf.nbytes
            self.coded.add(leaf.path)

    def release(self, recon: dict[str, Any]) -> None:
        """Copy what is still borrowed and let ``save()`` return (see the module)."""
        if self.released:
            return
        try:
            lent = {id(lf.value): lf for lf in self.snap.leaves if lf.borrowed}
            for path, value in list(recon.items()):
                if id(value) in lent:  # stored exactly: the reference must be our own
                    recon[path] = self._copy(path, value)
            for leaf in self.snap.leaves:
                if leaf.borrowed and leaf.path not in self.coded:
                    leaf.value, leaf.borrowed = self._copy(leaf.path, leaf.value), False
            self.snap.seal()
        finally:
            self._released.set()

    def fail(self) -> None:
        """The save failed: nothing borrowed is read again; let ``save()`` return."""
        self._released.set()

    def wait(self) -> None:
        self._released.wait()

    def _take(self, path: str, value: Any) -> Any:
        """A free buffer for a copy of ``value``: the one of its path, else any of its layout
        (no fresh memory while one is free), else None."""
        buf = self.free.pop(path, None)
        if same_layout(buf, value):
            return buf
        if self._by_layout is None:
            self._by_layout = {}
            for p, b in self.free.items():
                self._by_layout.setdefault(_layout(b), []).append(p)
        for p in self._by_layout.get(_layout(value), []):
            b = self.free.get(p)
            if same_layout(b, value):
                del self.free[p]
                return b
        return None

    def _copy(self, path: str, value: Any) -> Any:
        buf = self._take(path, value)
        out = copy_tensor(value, buf)
        self.overwrote = self.overwrote or (out is buf and id(buf) in self._ref_buffers)
        return out


def _layout(x: Any) -> tuple[Any, ...]:
    return (type(x).__name__, str(x.dtype), tuple(x.shape))


def submit(
    saves: BackgroundSaves, step: int, snap: Snapshot, spares: dict[str, Any], job: Any
) -> None:
    """Hand a save to the background thread (``job(stage=...)`` commits it); return once nothing
    of the caller's is read any more: at once if everything is a copy, else at the release."""
    stage = Staging(snap, spares) if snap.borrowed else None
    saves.submit(step, lambda: job(stage=stage))
    if stage is not None:
        stage.wait()
