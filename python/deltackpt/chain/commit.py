"""Committing one save: its tensors coded into data files, then its schema, then its record.

The order of writes is the commit protocol (docs/CHAIN.md): the data files (no directory sync
each), the schema if it is new (synced), a sync of the data directory, and the record last:
the record *is* the commit, and a reader never sees a record whose data is not durable. A save
that fails before its record deletes the files it wrote; a process killed meanwhile leaves
files no record names, which the next writer removes (:func:`.retention.collect_garbage`).
The writer's references are advanced only after the record is written.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .._api import encode
from .._api import inspect as inspect_blob
from .._core import checksum128
from ..errors import InvalidArgumentError, LockedError, NonFiniteError
from ..store import Store
from .branches import history
from .config import ChainConfig
from .groups import Group, Spec, encode_group, f32_down, rel_tolerance
from .parsing import MAX_RECORD_BYTES, check_nesting
from .policy import (
    Budget,
    Plan,
    bucket_floors,
    encode_kwargs,
    moment_pairs,
    optimizer_eps,
    plan_save,
    tensor_budget,
    tensor_mode,
)
from .records import (
    Record,
    Records,
    blob_name,
    data_dir,
    data_prefix,
    dumps,
    group_name,
)
from .references import Level, OutputBuffers, References
from .snapshot import Leaf, Snapshot, TensorKey, check_finite, clamp0, raw_bytes
from .staging import Staging

_PACK_BYTES = 1 << 20  # blobs are packed into data files of about this size


class DataFiles:
    """The data files of one save. Blobs are packed, in the order they come, into files of
    about :data:`_PACK_BYTES` (file 0 first, the others written as they fill), so a small
    model's save is one data file however many tensors it has, and a save never holds more
    than one pack plus one blob in memory; a blob larger than a pack gets a file of its own."""

    def __init__(self, store: Store, prefix: str) -> None:
        self.store, self.prefix = store, prefix
        self.names = [group_name(prefix)]
        self.digests = [""]  # xxh3-128 hex of each file's payload, bound by the record
        self.pack: list[bytes] = []
        self.pack_len = 0
        self.pack_index = 0
        self.written: list[str] = []

    def add(self, mode: str, blob: bytes) -> list[Any]:
        """Place one tensor's blob; return its record entry ``[mode, file, offset, length]``."""
        if len(blob) > _PACK_BYTES:
            return [mode, self._own_file(blob), 0, len(blob)]
        if self.pack_len + len(blob) > _PACK_BYTES:
            self._write_pack()
            self.pack_index = self._new_name()
        entry = [mode, self.pack_index, self.pack_len, len(blob)]
        self.pack.append(blob)
        self.pack_len += len(blob)
        return entry

    def finish(self) -> list[str]:
        """Write the last pack; return every file name, file 0 first."""
        self._write_pack()
        return self.names

    def discard(self) -> None:
        for name in self.written:
            with contextlib.suppress(Exception):
                self.store.delete(name)

    def _new_name(self) -> int:
        self.names.append(blob_name(self.prefix, len(self.names)))
        self.digests.append("")
        return len(self.names) - 1

    def _own_file(self, blob: bytes) -> int:
        index = self._new_name()
        self._write(index, blob)
        return index

    def _write_pack(self) -> None:
        self._write(self.pack_index, b"".join(self.pack))
        self.pack, self.pack_len = [], 0

    def _write(self, index: int, data: bytes) -> None:
        self.store.write(self.names[index], data, sync_dir=False)
        self.written.append(self.names[index])
        self.digests[index] = checksum128(data).hex()


@dataclass
class Coded:
    """One save's tensors as coded: record entries, measured errors, and the reconstructions
    to keep."""

    entries: list[list[Any]] = field(default_factory=list)
    errors: list[list[float] | None] = field(default_factory=list)  # [max abs, rel L2]
    groups: list[Group] = field(default_factory=list)  # small tensors coded together
    recon: dict[str, Any] = field(default_factory=dict)  # path -> reconstruction
    meta: dict[str, TensorKey] = field(default_factory=dict)


class TensorCoder:
    """Codes the tensors of one save as the policy says (mode and budget), writing each
    delta's reconstruction for the saves coded against this one. A first moment bounded by its
    second moment is coded after it, against the second moment's reconstruction."""

    def __init__(
        self,
        cfg: ChainConfig,
        refs: References,
        base: Level | None,
        level: int,
        snap: Snapshot,
        stage: Staging | None = None,
    ) -> None:
        self.cfg, self.base, self.level, self.stage = cfg, base, level, stage
        self.floors = (
            {} if base is None else bucket_floors(snap.leaves, base.meta, base.recon, level, cfg)
        )
        self.outputs = None if base is None else OutputBuffers(refs, base, level, snap)
        self.pairs = moment_pairs(snap.leaves)
        self.eps = optimizer_eps(snap.tree, snap.values)
        self.index = {lf.path: i for i, lf in enumerate(snap.leaves)}
        self.values: dict[str, Any] = {}  # path -> what a reader will have decoded

    @property
    def updated_references(self) -> bool:
        return self.outputs is not None and self.outputs.updated

    def code_all(self, snap: Snapshot, files: DataFiles) -> Coded:
        n = len(snap.leaves)
        coded = Coded(entries=[[]] * n, errors=[None] * n)
        # second moments before the first moments bounded by them
        order = sorted(range(n), key=lambda i: snap.leaves[i].path in self.pairs)
        grouped = [i for i in order if self.groupable(snap.leaves[i])]
        for i in order:
            if i in grouped:
                continue
            leaf = snap.leaves[i]
            if self.stage is not None:
                self.stage.before(leaf, coded.recon)
            mode, blob, recon, moment = self.code(leaf)
            if self.stage is not None:
                self.stage.after(leaf)
            self.values[leaf.path] = leaf.value if recon is None else recon
            if recon is not None:
                coded.recon[leaf.path], coded.meta[leaf.path] = recon, leaf.key
            entry = files.add(mode, blob)
            if moment is not None:
                entry.append(self.index[moment])
            coded.entries[i] = entry
            coded.errors[i] = _measured(blob) if mode == "delta" else None
        if self.stage is not None:  # everything read in place is coded: save() may return
            self.stage.release(coded.recon)
        if grouped:
            self.code_groups(snap, grouped, files, coded)
        return coded

    def budget(self, leaf: Leaf) -> Budget:
        b = tensor_budget(leaf, self.cfg, self.level, self.pairs.get(leaf.path), self.eps)
        return replace(b, floor=self.floors.get(leaf.path)) if b.kind == "exponent" else b

    def groupable(self, leaf: Leaf) -> bool:
        """A small delta with an error bound: coded with the save's other small tensors."""
        if self.base is None or leaf.numel >= self.cfg.group_below:
            return False
        if tensor_mode(leaf, self.base.meta.get(leaf.path)) != "delta":
            return False
        return self.budget(leaf).kind != "exponent"

    def code_groups(self, snap: Snapshot, idx: list[int], files: DataFiles, coded: Coded) -> None:
        """One blob per (kind, lib, dtype) of small tensors: pointwise groups (second moments)
        first, then ``each`` groups, whose first moments need the second moments' result."""
        assert self.base is not None
        keyed: dict[tuple[Any, ...], list[int]] = {}
        for i in idx:
            lf, b = snap.leaves[i], self.budget(snap.leaves[i])
            kind = "pointwise" if b.kind == "pointwise" else "each"
            rho = b.value if kind == "pointwise" else 0.0
            keyed.setdefault((kind != "pointwise", lf.lib, lf.dtype, rho), []).append(i)
        for key in sorted(keyed):
            members = keyed[key]
            leaves = [snap.leaves[i] for i in members]
            specs = [None if key[0] is False else self.spec(lf) for lf in leaves]
            moments = [
                None if sp is None or sp[0] != "moment" else self.values[snap.leaves[sp[3]].path]
                for sp in specs
            ]
            refs = [self.base.recon[lf.path] for lf in leaves]
            kind = "each" if key[0] else "pointwise"
            blob, recons = encode_group(
                [lf.value for lf in leaves], refs, kind, key[3], specs, moments, self.cfg.coder
            )
            loc = files.add("group", blob)
            coded.groups.append(Group(loc[1:], kind, key[3], members, specs))
            for i, lf, r in zip(members, leaves, recons):
                r = clamp0(r) if lf.nonneg else r
                coded.entries[i] = ["group", len(coded.groups) - 1]
                coded.recon[lf.path], coded.meta[lf.path] = r, lf.key
                self.values[lf.path] = r
                coded.errors[i] = _errors_of(r, lf.value)

    def spec(self, leaf: Leaf) -> Spec:
        """The tolerance spec of a small tensor in an ``each`` group."""
        b = self.budget(leaf)
        if b.kind == "abs":
            return ["abs", f32_down(b.value)]
        if b.kind == "rel":
            return ["abs", rel_tolerance(leaf.value, b.value)]
        assert b.moment is not None
        t = encode_kwargs(b, leaf.value, self.values[b.moment])["tolerance"]
        return ["moment", f32_down(t * (1 - 1e-6)), f32_down(b.eps), self.index[b.moment]]

    def code(self, leaf: Leaf) -> tuple[str, bytes, Any, str | None]:
        """(mode, blob, reconstruction or None for tensors stored raw from the start, the
        second moment the delta is bounded against or None)."""
        x = leaf.value
        base_key = None if self.base is None else self.base.meta.get(leaf.path)
        mode = tensor_mode(leaf, base_key)
        if mode == "raw":
            return mode, raw_bytes(x), None, None
        moment = None
        if mode == "key":
            blob, recon = encode(x, quantizer="none", coder=self.cfg.coder), x
        else:
            blob, recon, moment = self.delta(leaf)
        if len(blob) >= leaf.nbytes:
            # tiny tensors: the exact bytes are smaller than a coded blob (and start a chain)
            return "raw", raw_bytes(x), x, None
        return mode, blob, recon, moment

    def delta(self, leaf: Leaf) -> tuple[bytes, Any, str | None]:
        """Code ``leaf`` against the base's reconstruction within its budget; the core writes
        the new reconstruction."""
        assert self.base is not None and self.outputs is not None  # mode "delta" has a base
        budget = tensor_budget(leaf, self.cfg, self.level, self.pairs.get(leaf.path), self.eps)
        if budget.kind == "exponent":
            budget = replace(budget, floor=self.floors.get(leaf.path))
        v_hat = None if budget.moment is None else self.values[budget.moment]
        ref = self.base.recon[leaf.path]
        out = self.outputs.take(leaf.path, ref)
        try:
            blob = encode(
                leaf.value,
                reference=ref,
                coder=self.cfg.coder,
                reconstruction=out,
                **encode_kwargs(budget, leaf.value, v_hat),
            )
        except NonFiniteError as e:  # raised before anything is written
            raise type(e)(f"tensor {leaf.path}: {e}") from e
        return blob, clamp0(out) if leaf.nonneg else out, budget.moment


def _errors_of(recon: Any, x: Any) -> list[float]:
    """[max |x̂ - x|, ||x̂ - x|| / ||x||] of a small tensor, computed here."""
    a = recon.double() if hasattr(recon, "double") else np.asarray(recon, dtype=np.float64)
    b = x.double() if hasattr(x, "double") else np.asarray(x, dtype=np.float64)
    d = a - b
    err = float((d * d).sum()) ** 0.5
    norm = float((b * b).sum()) ** 0.5
    top = float(abs(d).max()) if d.shape and _size(d) else 0.0
    return [top, err / norm if norm else err]


def _size(x: Any) -> int:
    return int(x.numel()) if hasattr(x, "numel") and callable(x.numel) else int(x.size)


def _measured(blob: bytes) -> list[float] | None:
    """[max |x̂ - x|, ||x̂ - x|| / ||x||] the encoder measured (bounded blobs only)."""
    m = inspect_blob(blob).get("measured")
    return None if m is None else [m["max_abs_error"], m["rel_l2_error"]]


def commit(
    records: Records,
    refs: References,
    cfg: ChainConfig,
    branch: str,
    step: int,
    snap: Snapshot,
    *,
    exact: bool,
    replace: bool = False,
    stage: Staging | None = None,
) -> Record:
    """Encode and write the save of ``step`` on ``branch``; then advance the references.

    ``replace`` rewrites that step's record as an exact keyframe (a branch point). ``stage``:
    a background save that reads the caller's tensors in place until it releases them.
    """
    try:
        return _commit(records, refs, cfg, branch, step, snap, exact, replace, stage)
    finally:
        if stage is not None:
            stage.fail()  # released already, unless the save failed before


def _commit(
    records: Records,
    refs: References,
    cfg: ChainConfig,
    branch: str,
    step: int,
    snap: Snapshot,
    exact: bool,
    replace: bool,
    stage: Staging | None,
) -> Record:
    check_readable(snap)
    snap.wait_ready()  # CUDA: the device-to-host copies are complete
    if refs.stale:  # a failed save had started updating references in place
        refs.rebuild(records, history(records.store, branch), cfg.threads)
    if not exact:
        for leaf in snap.leaves:
            if leaf.is_float:
                check_finite(leaf)
    plan = _plan(records, refs, cfg, step, exact or replace)
    base = None
    if plan.base is not None:  # only the top is in RAM: an anchor's base comes from disk
        if stage is not None and refs.levels[plan.base].recon is None:
            stage.free.clear()  # the previous save's copies go before the base is decoded
        base = refs.base(plan.base, records)
    if stage is not None and base is None:  # a keyframe drops every reference: refill them
        stage.add_free(refs.dropped_buffers(plan.level))
    coder = TensorCoder(cfg, refs, base, plan.level, snap, stage)
    prefix = data_prefix(branch, step, os.urandom(4).hex())
    files = DataFiles(records.store, prefix)
    try:
        coded = coder.code_all(snap, files)
        names = files.finish()
        schema = records.put_schema(snap)
        rec = _record(
            branch, step, plan, base, snap, coded, names, schema, cfg, records.store.epoch
        )
        rec.digests = files.digests
        old = records.record(rec.rid) if replace else None
        records.store.sync_dirs({data_dir(branch)})  # data durable before the commit
        _put(records, rec, replace)
    except BaseException:
        overwrote = stage is not None and stage.overwrote
        refs.stale = refs.stale or coder.updated_references or overwrote
        files.discard()
        raise
    if old is not None:
        for name in old.files:
            if name not in rec.files:
                records.store.delete(name)
    refs.own(coded.recon, snap, plan.level)  # committed: the dropped references are free
    refs.advance(Level(plan.level, rec.rid, coded.recon, coded.meta), snap)
    return rec


def check_readable(snap: Snapshot) -> None:
    """Refuse, before anything is written, a state the chain's readers would refuse: nested
    deeper than they parse, or with more plain values than a record holds."""
    check_nesting([snap.tree, snap.values], "the state", InvalidArgumentError)
    size = len(dumps(snap.values))
    if size > MAX_RECORD_BYTES // 2:
        raise InvalidArgumentError(
            f"the state's plain (non-tensor) values take {size} bytes of JSON, more than a "
            f"record holds ({MAX_RECORD_BYTES // 2}): store large data as tensors"
        )


def _put(records: Records, rec: Record, replace: bool) -> None:
    """The commit: a new record is created only if absent, so a writer that lost its lock
    (a lease taken over while it was paused) never replaces the new writer's commit."""
    try:
        records.put(rec, create=not replace)
    except FileExistsError:
        raise LockedError(
            f"step {rec.step} of branch {rec.branch} in {records.store.url} was committed by "
            "another writer meanwhile: this writer no longer holds the chain; reopen it to "
            "continue from its latest commit"
        ) from None


def _plan(records: Records, refs: References, cfg: ChainConfig, step: int, exact: bool) -> Plan:
    top = refs.levels[-1].rid if refs.levels else None
    last_ordinal = None if top is None or exact else records.record(top).ordinal
    return plan_save(refs.stack(), last_ordinal, step, exact=exact, cfg=cfg)


def _record(
    branch: str,
    step: int,
    plan: Plan,
    base: Level | None,
    snap: Snapshot,
    coded: Coded,
    files: list[str],
    schema: str,
    cfg: ChainConfig,
    epoch: int | None,
) -> Record:
    """The record of a coded save (not written yet)."""
    return Record(
        branch=branch,
        step=step,
        kind=plan.kind,
        level=plan.level,
        ordinal=plan.ordinal,
        base=None if base is None else base.rid,
        schema=schema,
        values=snap.values,
        entries=coded.entries,
        errors=coded.errors,
        groups=coded.groups or None,
        files=files,
        bits=cfg.bits,
        raw_bytes=sum(lf.nbytes for lf in snap.leaves),
        time=time.time(),
        epoch=epoch,
    )
