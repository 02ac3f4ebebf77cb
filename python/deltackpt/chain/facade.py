"""``CheckpointChain``: the chain's public face, a thin layer over its rooms.

Each method checks its arguments and the writer's state, then hands the work to the room that
does it (:mod:`.commit`, :mod:`.restore`, :mod:`.branches`, :mod:`.retention`, :mod:`.inspect`);
the facade holds only what ties them together: the settings, the record cache, the reference
stack, the current branch and the background save in flight.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from functools import partial
from typing import Any

from ..errors import CorruptDataError
from ..store import Store, open_store
from . import branches, commitlog, inspect, retention, staging
from .background import BackgroundSaves
from .commit import commit
from .config import ChainConfig
from .parsing import check_name
from .records import (
    CHAIN_FILE,
    RecId,
    Records,
    check_chain_file,
    read_json,
    write_chain_file,
)
from .references import References
from .restore import restore_state
from .snapshot import Snapshot, snapshot
from .staging import Staging


def _setting(name: str) -> Any:
    """A read-only attribute that reads the chain's :class:`~.config.ChainConfig`."""
    return property(lambda self: getattr(self.config, name), doc=f"the ``{name}`` setting")


class CheckpointChain:
    """Compressed, crash-safe, branchable checkpoints of a training run.

    ``CheckpointChain(path_or_url, bits=3, anchor_every=10)`` opens (or creates) a chain in a
    local directory or an fsspec URL. ``mode="a"`` takes the writer lock (one writer at a time;
    a stale lock of a dead process on this host is recovered); ``mode="r"`` only reads and never
    needs the lock. Use it as a context manager, or call :meth:`close`.

    >>> import numpy as np, deltackpt as dk
    >>> w = np.linspace(-1, 1, 5000, dtype=np.float32)
    >>> with dk.CheckpointChain("memory://doc-chain", anchor_every=4) as chain:
    ...     for step in range(6):
    ...         chain.save(step, {"w": w + 0.01 * step, "epoch": step // 3})
    ...     chain.branch_point("before-slot-2")
    ...     state = chain.restore(3)
    ...     exact = chain.rollback("before-slot-2")
    ...     (state["epoch"], chain.steps(), chain.branch)
    5
    (1, [0, 1, 2, 3, 4, 5], 'before-slot-2.1')
    >>> bool((exact["w"] == w + 0.01 * 5).all())
    True

    Error budgets (docs/CHAIN.md): by default every delta keeps a bound checked by the
    encoder — model tensors ``||x̂ - x|| <= 0.03 ||x||`` per tensor, Adam's second moments
    within ``second_moment_rel`` (1%) per element (never a positive entry as 0), its first
    moments within ``first_moment_tol`` (0.05) of the update's denominator ``sqrt(v) + eps``
    per element, other optimizer tensors ``1e-2`` — at every step, anchor and keyframe, so that
    resuming training from any step matches resuming from ``torch.save`` of it.
    ``rel_error=e`` or ``tolerance=t`` bounds every float tensor (optimizer state included;
    ``optimizer_rel_error`` loosens it); ``info(step)["tensors"]`` reports the measured error.
    ``quantizer="exponent"`` uses LC-checkpoint's scheme instead: ``bits`` of the exponent
    quantizer for steps, ``anchor_bits`` for anchors (default ``bits + 1``), ``optimizer_bits``
    for optimizer moments (default ``bits``), ``scope="state"`` (kept buckets chosen over the
    whole state, as LC-checkpoint quantizes the delta in R^n) or ``"tensor"``.

    Other parameters: ``anchor_every`` (S) the anchor period, each level multiplying it;
    ``keyframe_every`` steps between periodic exact keyframes (None: only the first save,
    branch points and ``exact=True``); ``max_to_keep`` / ``keep_every`` retention on the
    current branch (records that a kept step, a branch point or the writer depends on are
    never deleted, and stay listed); ``async_save`` encodes and writes in one background
    thread, at most ``max_pending`` saves in flight, failures raised by :meth:`wait` naming
    their step (chain/background.py); ``group_below`` tensors with fewer elements are coded
    together (one blob per kind of array; data files pack blobs up to ~1 MiB); ``coder`` is
    passed to :func:`deltackpt.encode`; ``threads`` decode tensors in parallel on restore.
    """

    bits = _setting("bits")
    anchor_every = _setting("anchor_every")
    keyframe_every = _setting("keyframe_every")
    optimizer_bits = _setting("optimizer_bits")
    anchor_bits = _setting("anchor_bits")
    max_to_keep = _setting("max_to_keep")
    keep_every = _setting("keep_every")
    group_below = _setting("group_below")
    coder = _setting("coder")
    scope = _setting("scope")
    threads = _setting("threads")
    quantizer = _setting("quantizer")
    rel_error = _setting("rel_error")
    tolerance = _setting("tolerance")

    def __init__(
        self,
        path_or_url: str | os.PathLike[str] | Store,
        *,
        bits: int = 3,
        anchor_every: int = 10,
        keyframe_every: int | None = 1000,
        optimizer_bits: int | None = None,
        anchor_bits: int | None = None,
        max_to_keep: int | None = None,
        keep_every: int | None = None,
        async_save: bool = False,
        max_pending: int = 1,
        mode: str = "a",
        group_below: int = 4096,
        coder: str = "auto",
        scope: str = "state",
        threads: int | None = None,
        storage_options: dict[str, Any] | None = None,
        quantizer: str = "bounded",
        rel_error: float | None = None,
        tolerance: float | None = None,
        optimizer_rel_error: float | None = None,
        second_moment_rel: float | None = 0.01,
        first_moment_tol: float | None = 0.05,
    ) -> None:
        if mode not in ("a", "r"):
            raise ValueError("mode must be 'a' (append/write) or 'r' (read only)")
        self.config = ChainConfig(
            bits=bits,
            anchor_every=anchor_every,
            keyframe_every=keyframe_every,
            optimizer_bits=bits if optimizer_bits is None else optimizer_bits,
            anchor_bits=min(bits + 1, 8) if anchor_bits is None else anchor_bits,
            max_to_keep=max_to_keep,
            keep_every=keep_every,
            group_below=group_below,
            coder=coder,
            scope=scope,
            threads=threads or min(4, os.cpu_count() or 1),
            quantizer=quantizer,
            rel_error=rel_error,
            tolerance=tolerance,
            optimizer_rel_error=optimizer_rel_error,
            second_moment_rel=second_moment_rel,
            first_moment_tol=first_moment_tol,
        )
        self.mode = mode
        self.store = open_store(path_or_url, **(storage_options or {}))
        self.records = Records(self.store)  # what the rooms' functions take
        self._refs = References()
        self._head = branches.DEFAULT_BRANCH
        self._head_error: CorruptDataError | None = None
        self._closed = False
        self._saves = BackgroundSaves(max_pending) if async_save and mode == "a" else None
        self._submitted: int | None = None  # the latest step handed to the background
        if mode == "a":
            self._open_writer()
        else:
            self._open_reader()

    # ------------------------------------------------------------------ opening

    def _open_writer(self) -> None:
        self.store.acquire_lock()
        try:
            if not self.store.exists(CHAIN_FILE):
                branches.create_branch(self.store, branches.DEFAULT_BRANCH, None)
                write_chain_file(self.store, self.config)  # last: the chain exists once whole
            else:
                check_chain_file(self.store)
            self._head = commitlog.open_writer(self.store)
            retention.collect_garbage(self.records)
            self._rebuild_references()
        except BaseException:
            self.store.release_lock()
            raise

    def _open_reader(self) -> None:
        if not self.store.exists(CHAIN_FILE):
            raise FileNotFoundError(f"no deltackpt chain at {self.store.url}")
        read_json(self.store, CHAIN_FILE)
        try:
            self._head = commitlog.head(self.store)
        except CorruptDataError as e:  # raised by calls that need the current branch
            self._head_error = e

    def _rebuild_references(self) -> None:
        history = branches.history(self.store, self._head)
        self._refs.rebuild(self.records, history, self.config.threads)

    # ------------------------------------------------------------------ saving

    def _check_writable(self, wait: bool = True) -> None:
        if self._closed:
            raise ValueError("the chain is closed")
        if self.mode != "a":
            raise PermissionError("chain opened read-only (mode='r')")
        if wait:
            self._raise_pending()
        elif self._saves is not None:
            self._saves.raise_failure()  # a failure already known, without waiting

    def _raise_pending(self) -> None:
        """Wait for the background saves, if any; the first failure propagates from here."""
        if self._saves is not None:
            self._saves.wait()

    def save(self, step: int, state: Any, *, exact: bool = False) -> None:
        """Save ``state`` (nested dict of tensors / JSON values / objects with state_dict()).

        Steps must increase along a branch. ``exact=True`` stores a lossless keyframe (and
        accepts NaN/Inf). With ``async_save`` it returns once half the state is coded and the
        rest copied; coding and writing go on in the background (at most ``max_pending`` in
        flight: a save beyond waits for the oldest), and a failure there is raised as
        :class:`~deltackpt.errors.SaveError` by :meth:`wait`, :meth:`close` or the next save.
        """
        self._check_writable(wait=False)
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError("step must be a non-negative int")
        saves = self._saves
        busy = saves is not None and (saves.make_room() or saves.busy)
        last = self._submitted if busy else self._refs.top_step()
        if last is not None and step <= last:
            raise ValueError(branches.step_taken(step, last, self._head, self.store.url))
        # tensors read in place when idle: no copy (sync), half a copy (background: staging.py)
        spares = {} if busy else self._refs.spare_copies()
        snap = snapshot(state, spares, borrow=not busy)
        if saves is None:
            self._commit(step, snap, exact)
            return
        self._submitted = step
        staging.submit(saves, step, snap, spares, partial(self._commit, step, snap, exact))

    def _commit(
        self,
        step: int,
        snap: Snapshot,
        exact: bool,
        replace: bool = False,
        stage: Staging | None = None,
    ) -> None:
        cfg, head, refs = self.config, self._head, self._refs
        commit(self.records, refs, cfg, head, step, snap, exact=exact, replace=replace, stage=stage)
        pinned = [lv.rid for lv in self._refs.levels]
        retention.apply_retention(self.records, head, cfg, pinned)
        commitlog.after(self.store, "save", tip=(head, step))

    # ------------------------------------------------------------------ branches

    def branch_point(self, name: str, state: Any = None) -> int:
        """Record an exact keyframe of the latest saved state under ``name``; return its step.

        With ``state``, that state replaces the latest step's record exactly (use it when the
        latest save was made by another process). Otherwise the writer's copy of the latest
        saved state is used.
        """
        check_name(name, "branch point")
        self.wait()
        self._check_writable()
        if self.store.exists(branches.point_file(name)):
            raise ValueError(f"branch point {name!r} already exists")
        rid = self._resolve(None, None)
        rec = self.records.record(rid)
        snap = snapshot(state) if state is not None else self._refs.latest_state(rid)
        if snap is None and rec.kind != "keyframe":
            raise ValueError("the latest state is not held by this writer: pass state=")
        if snap is not None and (rec.kind != "keyframe" or state is not None):
            if rid[0] != self._head:
                raise ValueError("save a step on this branch first, or pass no state")
            self._commit(rid[1], snap, exact=True, replace=True)
        branches.add_point(self.store, name, rid)
        return rid[1]

    def branch_points(self) -> dict[str, RecId]:
        """Branch point name -> (branch, step)."""
        return branches.read_points(self.store)

    def rollback(self, name: str, *, new_branch: str | None = None) -> Any:
        """Continue on a new branch from branch point ``name``; return the point's exact state.

        Loads nothing into your objects: the returned state is a nested dict (as
        :meth:`restore` returns it); to train on from the point, follow with
        ``start = chain.resume(model=model, optimizer=optimizer)``, which loads it and returns
        the step to train next. The old branch stays readable until :meth:`delete_branch`. The
        new branch is named ``new_branch`` or ``<name>.<k>``; later saves go there with steps
        after the point's.
        """
        self.wait()
        self._check_writable()
        points = self.branch_points()
        if name not in points:
            raise KeyError(f"no branch point {name!r}")
        rid = points[name]
        new_branch = branches.new_branch_name(name, new_branch, set(self.branches()))
        state = restore_state(self.records, rid, self.config.threads)
        branches.create_branch(self.store, new_branch, rid)
        commitlog.after(self.store, "rollback", head=new_branch, tip=(new_branch, None))
        branches.write_head(self.store, new_branch)
        self._head = new_branch
        self._rebuild_references()
        self._refs.latest = None
        return state

    def branches(self) -> list[str]:
        """Names of the live branches."""
        return branches.branch_names(self.store)

    @property
    def branch(self) -> str:
        """The branch new saves go to (readers: the writer's branch when opened)."""
        return self._head

    def delete_branch(self, name: str) -> None:
        """Delete a branch that is not the current one, keeping what other branches need."""
        self.wait()
        self._check_writable()
        if name == self._head:
            raise ValueError("cannot delete the current branch; roll back elsewhere first")
        branches.branch_info(self.store, name)  # KeyError if there is no such branch
        commitlog.after(self.store, "delete_branch", drop=name)  # logged first: an intent
        retention.delete_branch(self.records, name)

    # ------------------------------------------------------------------ reading

    def _branch(self, branch: str | None) -> str:
        """``branch``, or the current one; a reader whose HEAD the commit log contradicts
        refuses to guess (pass ``branch=``)."""
        if branch is None and self._head_error is not None:
            raise self._head_error
        return branch or self._head

    def _resolve(self, step: int | None, branch: str | None) -> RecId:
        return branches.resolve(self.store, self._branch(branch), step)

    def steps(self, branch: str | None = None) -> list[int]:
        """Restorable steps of ``branch`` (default: the current one), ancestors' included."""
        self._raise_pending()
        return [s for _, s in branches.history(self.store, self._branch(branch))]

    def latest_step(self, branch: str | None = None) -> int | None:
        """The latest committed step of ``branch``, or None."""
        hist = branches.history(self.store, self._branch(branch))
        return hist[-1][1] if hist else None

    def info(self, step: int | None = None, branch: str | None = None) -> dict[str, Any]:
        """Kind, level, base and restore depth of a saved step."""
        return inspect.info(self.records, self._resolve(step, branch))

    def restore(self, step: int | None = None, branch: str | None = None) -> Any:
        """The state saved at ``step`` (latest if None) of ``branch``, with the same nesting."""
        self._raise_pending()
        return restore_state(self.records, self._resolve(step, branch), self.config.threads)

    def restore_into(
        self, step: int | None = None, branch: str | None = None, **objects: Any
    ) -> Any:
        """Load ``step`` (the latest if None) of ``branch`` (the current one if None) into
        your objects: ``obj.load_state_dict(state[name])`` for each ``name=obj``.

        Returns the whole restored state (a nested dict, entries not loaded included, such as
        an ``"epoch"`` value). To continue training after the latest step, :meth:`resume`
        does this and returns the step to train next.
        """
        state = self.restore(step, branch)
        for name, obj in objects.items():
            if not isinstance(state, dict) or name not in state:
                have = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
                raise KeyError(f"the saved state has no entry {name!r} (it has {have})")
            obj.load_state_dict(state[name])
        return state

    def resume(self, **objects: Any) -> int:
        """Load the current branch's latest step into your objects; return the next step.

        ``start = chain.resume(model=model, optimizer=optimizer, scheduler=scheduler)`` is how
        a training script continues where it (or its crashed previous run) stopped: on a new
        or empty chain it loads nothing and returns 0; otherwise it calls
        ``obj.load_state_dict(state[name])`` for each ``name=obj`` with the state of the latest
        step ``n`` (after :meth:`rollback`, the branch point's exact state) and returns
        ``n + 1``, the first step to train and save. Other saved entries (an epoch, a data
        position) are in ``chain.restore()``.
        """
        self._raise_pending()
        latest = self.latest_step()
        if latest is None:
            return 0
        self.restore_into(latest, **objects)
        return latest + 1

    def verify(self, *, decode_all: bool = False) -> dict[str, str]:
        """Check every committed record; return ``{"branch/step": error}`` for the bad ones.

        Reads and checksums each record, its schema and data files; with ``decode_all`` also
        restores every step (slower, decodes every blob along every chain).
        """
        self._raise_pending()
        return inspect.verify(self.records, self.config.threads, decode_all)

    def stats(self) -> dict[str, Any]:
        """Bytes stored by kind, raw bytes of all saves, ratio, max restore depth, and
        ``allocated_bytes``: what the file system allocates (None on object stores)."""
        return inspect.stats(self.records)

    # ------------------------------------------------------------------ lifecycle

    def wait(self) -> None:
        """Wait for a background save; re-raise its error."""
        self._raise_pending()

    def close(self) -> None:
        """Finish pending work and release the writer lock."""
        if self._closed:
            return
        try:
            if self._saves is not None:
                self._saves.shutdown()
        finally:
            self._closed = True
            if self.mode == "a":
                self.store.release_lock()
            self._refs.clear()

    def __enter__(self) -> CheckpointChain:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:
            with contextlib.suppress(Exception):
                self.close()

    def __iter__(self) -> Iterator[int]:
        return iter(self.steps())

    def __repr__(self) -> str:
        return f"CheckpointChain({self.store.url!r}, mode={self.mode!r}, branch={self._head!r})"
