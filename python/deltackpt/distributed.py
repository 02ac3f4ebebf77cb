"""``torch.distributed.checkpoint`` storage that keeps every rank's shards as delta chains.

``dcp.save(state, storage_writer=ChainWriter(path), checkpoint_id=str(step))`` stores one step;
the same writer object is reused for every step, so each rank codes its shards against its own
reconstruction of the previous save (error feedback, SPEC 2.1). ``dcp.load(state,
storage_reader=ChainReader(path, step=N))`` restores any committed step, into any world size
(DCP reshards: the reader serves each requested chunk from whichever rank stored it).

Layout under ``path`` (a local directory or an fsspec URL; all files framed and checksummed by
:mod:`deltackpt.store`)::

    dcp.json                          {"format": "deltackpt-dcp", "version": 1}
    rank-<r>/                         a CheckpointChain (docs/CHAIN.md) holding rank r's items
    dcp/<branch>/<step:012d>.json     the step's global DCP Metadata, as JSON (the commit)
    dcp-points/, dcp-branches/, dcp-HEAD.json   branch points, branches, the writer's branch
    LOCK                              the coordinator's writer lock (ranks lock rank-<r>/LOCK)

Inside rank ``r``'s chain, the save of step N is a dict ``{group: {leaf: tensor}}`` with
``group = json([fqn prefix, offsets])`` and ``leaf`` the last dotted component of the fqn, so the
chain's optimizer-moment rules (``exp_avg_sq`` clamping, ``optimizer_bits``) still apply.

Commit protocol: every rank commits its own chain record for step N in ``write_data``; DCP then
gathers the write results on the coordinator, whose ``finish`` writes ``dcp/<branch>/N.json``
last. A step exists only once that file exists: a process killed anywhere in a save leaves the
previous step loadable, and rank records without committed metadata (the unfinished step) are
removed when a writer next opens that rank's chain. Branch points and rollback
(:meth:`ChainWriter.branch_point`, :meth:`ChainWriter.rollback`) are collective and committed
by the coordinator last as well (docs/DISTRIBUTED.md).

Non-tensor values (DCP ``BYTE_IO`` items) are never pickled on disk: the writer takes the object
from the planner (``lookup_object``), stores it as tagged JSON (None, bool, int, float, str,
bytes, lists, tuples, dicts, ``torch.Size``) and the reader hands it back to the load planner.
Anything else raises ``TypeError``. The global Metadata is stored as JSON and rebuilt on read.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import math
import os
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    LoadPlan,
    LoadPlanner,
    SavePlan,
    SavePlanner,
    WriteItemType,
)
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter, WriteResult
from torch.futures import Future

from .chain import CheckpointChain, commitlog
from .chain.branches import (
    DEFAULT_BRANCH,
    branch_file,
    next_branch_name,
    read_head,
    resolve,
    write_head,
)
from .chain.records import CHAIN_FILE, dumps, listed_steps, parse_record_name
from .chain.restore import decode_paths
from .errors import CorruptDataError, UnsupportedError
from .store import Store, open_store

__all__ = ["ChainWriter", "ChainReader", "committed_steps"]

FORMAT = "deltackpt-dcp"
VERSION = 1
DCP_VERSION = "1.0.0"


# --------------------------------------------------------------------------- tagged JSON


def to_tagged(obj: Any) -> Any:
    """Plain Python values as unambiguous JSON (tuples, non-str keys and bytes survive)."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"F": repr(obj)}
    if isinstance(obj, torch.Size):
        return {"S": [int(s) for s in obj]}
    if isinstance(obj, tuple):
        return {"U": [to_tagged(v) for v in obj]}
    if isinstance(obj, list):
        return [to_tagged(v) for v in obj]
    if isinstance(obj, dict):
        return {"D": [[to_tagged(k), to_tagged(v)] for k, v in obj.items()]}
    if isinstance(obj, (bytes, bytearray)):
        return {"B": base64.b64encode(bytes(obj)).decode()}
    raise TypeError(
        f"cannot store a {type(obj).__name__} as a non-tensor DCP value: deltackpt stores "
        "None, bool, int, float, str, bytes and lists/tuples/dicts of them (no pickle)"
    )


def from_tagged(obj: Any) -> Any:
    """Inverse of :func:`to_tagged`."""
    if isinstance(obj, list):
        return [from_tagged(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) != 1:
        raise CorruptDataError(f"malformed tagged value {obj!r:.80}")
    ((tag, body),) = obj.items()
    if tag == "F":
        return float(body)
    if tag == "S":
        return torch.Size(int(s) for s in body)
    if tag == "U":
        return tuple(from_tagged(v) for v in body)
    if tag == "D":
        return {from_tagged(k): from_tagged(v) for k, v in body}
    if tag == "B":
        return base64.b64decode(body)
    raise CorruptDataError(f"unknown tag {tag!r}")


# --------------------------------------------------------------------------- Metadata <-> JSON


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype(name: str) -> torch.dtype:
    dt = getattr(torch, str(name), None)
    if not isinstance(dt, torch.dtype):
        raise CorruptDataError(f"unknown dtype {name!r}")
    return dt


def _offsets(index: MetadataIndex) -> list[int] | None:
    return None if index.offset is None else [int(o) for o in index.offset]


def metadata_to_json(md: Metadata, storage: list[list[Any]], step: int) -> dict[str, Any]:
    """The global Metadata of a save as JSON; ``storage`` lists ``[fqn, offsets, rank, group,
    leaf]`` for every stored item."""
    sdm: dict[str, Any] = {}
    for fqn, entry in md.state_dict_metadata.items():
        if isinstance(entry, BytesStorageMetadata):
            sdm[fqn] = {"type": "bytes"}
            continue
        p = entry.properties
        sdm[fqn] = {
            "type": "tensor",
            "dtype": _dtype_name(p.dtype),
            "requires_grad": bool(p.requires_grad),
            "strides": None if p.strides is None else [int(s) for s in p.strides],
            "size": [int(s) for s in entry.size],
            "chunks": [
                {"offsets": [int(o) for o in c.offsets], "sizes": [int(s) for s in c.sizes]}
                for c in entry.chunks
            ],
        }
    sm = md.storage_meta
    return {
        "format": FORMAT,
        "version": VERSION,
        "step": step,
        "dcp_version": md.version,
        "state_dict_metadata": sdm,
        "planner_data": to_tagged(md.planner_data),
        "storage": storage,
        "storage_meta": None
        if sm is None
        else {
            "checkpoint_id": None if sm.checkpoint_id is None else os.fspath(sm.checkpoint_id),
            "save_id": sm.save_id,
            "modules": list(sm.modules),
        },
    }


@dataclasses.dataclass(frozen=True)
class ItemLocation:
    """Where a DCP item lives: the rank chain that stored it and its keys in that state."""

    rank: int
    group: str
    leaf: str


def metadata_from_json(d: dict[str, Any]) -> Metadata:
    """Rebuild the DCP Metadata (``storage_data``: MetadataIndex -> :class:`ItemLocation`)."""
    if d.get("format") != FORMAT:
        raise CorruptDataError("not a deltackpt DCP step")
    if d.get("version") != VERSION:
        raise UnsupportedError(f"deltackpt DCP step version {d.get('version')}")
    try:
        sdm: dict[str, Any] = {}
        for fqn, e in d["state_dict_metadata"].items():
            if e["type"] == "bytes":
                sdm[fqn] = BytesStorageMetadata()
                continue
            props = TensorProperties(
                dtype=_dtype(e["dtype"]),
                requires_grad=bool(e["requires_grad"]),
                strides=None if e["strides"] is None else tuple(int(s) for s in e["strides"]),
            )
            sdm[fqn] = TensorStorageMetadata(
                properties=props,
                size=torch.Size(e["size"]),
                chunks=[
                    ChunkStorageMetadata(torch.Size(c["offsets"]), torch.Size(c["sizes"]))
                    for c in e["chunks"]
                ],
            )
        storage = {
            MetadataIndex(str(fqn), off): ItemLocation(int(rank), str(group), str(leaf))
            for fqn, off, rank, group, leaf in d["storage"]
        }
        sm = d.get("storage_meta")
        meta = (
            None
            if sm is None
            else StorageMeta(
                checkpoint_id=sm["checkpoint_id"],
                save_id=sm["save_id"],
                modules=list(sm["modules"]),
            )
        )
        return Metadata(
            state_dict_metadata=sdm,
            planner_data=from_tagged(d["planner_data"]),
            storage_data=storage,
            storage_meta=meta,
            version=d.get("dcp_version"),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptDataError(f"malformed DCP step metadata: {e}") from e


# --------------------------------------------------------------------------- layout helpers


def _sub_url(root: str, name: str) -> str:
    if "://" in root:
        return root.rstrip("/") + "/" + name
    return os.path.join(root, name)


def _step_name(branch: str, step: int) -> str:
    return f"dcp/{branch}/{step:012d}.json"


def _parse_step(checkpoint_id: str | os.PathLike[str] | int) -> int:
    text = os.fspath(checkpoint_id) if not isinstance(checkpoint_id, int) else checkpoint_id
    try:
        step = int(text)
    except (TypeError, ValueError):
        raise ValueError(
            f"checkpoint_id {checkpoint_id!r}: deltackpt chains use the training step "
            "(a non-negative integer) as checkpoint_id"
        ) from None
    if step < 0:
        raise ValueError("checkpoint_id (the step) must be >= 0")
    return step


def committed_steps(store: Store, branch: str = DEFAULT_BRANCH) -> list[int]:
    """The steps whose global metadata is committed, ascending."""
    return listed_steps(store, f"dcp/{branch}")


def _item_keys(index: MetadataIndex, is_bytes: bool) -> tuple[str, str]:
    prefix, dot, leaf = index.fqn.rpartition(".")
    group = json.dumps(
        [prefix if dot else None, "bytes" if is_bytes else _offsets(index)],
        separators=(",", ":"),
    )
    return group, leaf


def head_branch(store: Store) -> str:
    """The branch the writer continues (``dcp-HEAD.json``; ``main`` before any rollback)."""
    if store.exists("dcp-HEAD.json"):
        return str(json.loads(store.read("dcp-HEAD.json"))["branch"])
    return DEFAULT_BRANCH


def branch_parent(store: Store, branch: str) -> tuple[str, int] | None:
    """The fork point (branch, step) of ``branch``; None for a root branch."""
    name = f"dcp-branches/{branch}.json"
    if not store.exists(name):
        if branch == DEFAULT_BRANCH:
            return None
        raise KeyError(f"no DCP branch {branch!r} in {store.url}")
    parent = json.loads(store.read(name)).get("parent")
    return None if not parent else (str(parent["branch"]), int(parent["step"]))


def branch_history(store: Store, branch: str) -> list[tuple[str, int]]:
    """Committed steps visible on ``branch`` as (holding branch, step): the ancestors' steps up
    to each fork point, then the branch's own."""
    own = [(branch, s) for s in committed_steps(store, branch)]
    parent = branch_parent(store, branch)
    if parent is None:
        return own
    inherited = [r for r in branch_history(store, parent[0]) if r[1] <= parent[1]]
    return inherited + own


def _trim_uncommitted(url: str, root: Store, storage_options: dict[str, Any]) -> int:
    """Remove rank-chain records whose step has no committed global metadata (an unfinished
    save), in every branch, under the rank chain's writer lock; the chain's next opening
    deletes their data."""
    store = open_store(url, **storage_options)
    if not store.exists(CHAIN_FILE):
        return 0
    store.acquire_lock()
    try:
        removed = 0
        for name in store.list("records"):
            rid = parse_record_name(name)
            if rid is not None and not root.exists(_step_name(*rid)):
                store.delete(name)
                removed += 1
        if removed:  # a deliberate retirement: the commit log must say so
            commitlog.append(store, "trim", commitlog.disk_state(store))
        return removed
    finally:
        store.release_lock()


def _set_rank_head(url: str, branch: str, storage_options: dict[str, Any]) -> None:
    """Point a rank chain's HEAD at the global branch (repairs a rollback cut short by a crash
    after some ranks switched; docs/CHAIN.md: ``HEAD.json`` is ``{"branch"}``)."""
    store = open_store(url, **storage_options)
    if not store.exists(CHAIN_FILE) or not store.exists(branch_file(branch)):
        return
    if read_head(store) != branch:
        store.acquire_lock()
        try:
            write_head(store, branch)
        finally:
            store.release_lock()


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# --------------------------------------------------------------------------- writer


class ChainWriter(StorageWriter):
    """A DCP ``StorageWriter`` that appends each save to per-rank delta chains.

    Keep one writer per process and pass it to every ``dcp.save(..., checkpoint_id=str(step))``
    (steps must increase; without a checkpoint_id the next step after the last committed one is
    used). ``bits``, ``anchor_every`` and any other keyword (``keyframe_every``,
    ``optimizer_bits``, ``anchor_bits``, ``coder``, ...) configure the rank chains as in
    :class:`deltackpt.CheckpointChain`. ``path`` may be an fsspec URL (``storage_options`` are
    passed to fsspec). Call :meth:`close` (or use ``with``) at the end of training to release
    the locks.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        bits: int = 3,
        anchor_every: int = 10,
        storage_options: dict[str, Any] | None = None,
        **chain_options: Any,
    ) -> None:
        super().__init__()
        self.url = os.fspath(path)
        self.storage_options = dict(storage_options or {})
        self.chain_options: dict[str, Any] = {
            "bits": bits,
            "anchor_every": anchor_every,
            # one data file per save for every blob under 1 MiB (DCP states have hundreds of
            # items; a file each costs an open + fsync and dominated the save time)
            "group_below": 1 << 40,
            **chain_options,
        }
        self.branch = DEFAULT_BRANCH
        self.root = open_store(self.url, **self.storage_options)
        self.step: int | None = None
        self._requested: int | None = None
        self.rank = 0
        self.is_coordinator = False
        self.save_id = uuid.uuid4().hex
        self._chain: CheckpointChain | None = None
        self._chain_rank: int | None = None
        self._locked = False

    # -- StorageWriter API

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        self._requested = None if checkpoint_id is None else _parse_step(checkpoint_id)
        self.step = self._requested
        self.save_id = uuid.uuid4().hex

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        try:
            _parse_step(checkpoint_id)
        except ValueError:
            return False
        return True

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self.is_coordinator = is_coordinator
        self.rank = int(kwargs.get("rank") or 0)
        self.branch = head_branch(self.root)
        hist = branch_history(self.root, self.branch)
        last = hist[-1][1] if hist else None
        requested, self._requested = self._requested, None  # consumed by this save
        self.step = requested if requested is not None else (0 if last is None else last + 1)
        if last is not None and self.step <= last:
            raise ValueError(f"step {self.step} <= last committed step {last} of {self.url}")
        if is_coordinator and not self._locked:
            self.root.acquire_lock()
            self._locked = True
            if not self.root.exists("dcp.json"):
                self.root.write("dcp.json", dumps({"format": FORMAT, "version": VERSION}))
        if self._chain is not None and self._chain_rank == self.rank:
            latest = self._chain.latest_step()
            if latest is not None and (last is None or latest > last):
                # a save that failed on another rank left this rank's record uncommitted:
                # reopen, which trims it and rebuilds the references from committed steps
                self._chain.close()
                self._chain = None
        if self._chain is None or self._chain_rank != self.rank:
            if self._chain is not None:
                self._chain.close()
            url = _sub_url(self.url, f"rank-{self.rank}")
            _trim_uncommitted(url, self.root, self.storage_options)
            _set_rank_head(url, self.branch, self.storage_options)
            self._chain = CheckpointChain(
                url, storage_options=self.storage_options, **self.chain_options
            )
            self._chain_rank = self.rank

    def storage_meta(self) -> StorageMeta | None:
        return StorageMeta(
            checkpoint_id=None if self.step is None else str(self.step), save_id=self.save_id
        )

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        return plans

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        if self._chain is None or self.step is None:
            raise RuntimeError("set_up_storage_writer was not called")
        state: dict[str, dict[str, Any]] = {}
        results: list[WriteResult] = []
        for item in plan.items:
            is_bytes = item.type == WriteItemType.BYTE_IO
            group, leaf = _item_keys(item.index, is_bytes)
            if is_bytes:
                data = np.frombuffer(dumps(to_tagged(_plain_object(planner, item))), np.uint8)
                size = int(data.nbytes)
            else:
                t = planner.resolve_data(item)
                if not isinstance(t, torch.Tensor):
                    raise TypeError(f"{item.index.fqn}: the planner resolved a {type(t)}")
                data = t.detach()
                size = data.numel() * data.element_size()
            if leaf in state.setdefault(group, {}):
                raise ValueError(f"two write items map to {group}/{leaf}")
            state[group][leaf] = data
            loc = [self.rank, group, leaf]
            results.append(WriteResult(index=item.index, size_in_bytes=size, storage_data=loc))
        if state:
            self._chain.save(self.step, state)
        fut: Future[list[WriteResult]] = Future()
        fut.set_result(results)
        return fut

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        if self.step is None:
            raise RuntimeError("finish without a step")
        storage = []
        for per_rank in results:
            for wr in per_rank:
                rank, group, leaf = wr.storage_data
                storage.append([wr.index.fqn, _offsets(wr.index), rank, group, leaf])
        metadata.version = metadata.version or DCP_VERSION
        metadata.storage_meta = self.storage_meta()
        doc = metadata_to_json(metadata, storage, self.step)
        if self.root.epoch is not None:
            doc["epoch"] = self.root.epoch  # the coordinator's writer epoch (fencing token)
        # the commit, created only if absent: a fenced coordinator never replaces it
        self.root.write(_step_name(self.branch, self.step), dumps(doc), create=True)

    # -- branches (collective: call on every rank, after a save)

    def branch_point(self, name: str) -> int:
        """Make the latest committed step an exact keyframe on every rank, named ``name``.

        Collective like ``dcp.save``: every rank calls it (with the same name) after saving
        that step with this writer. Returns the step.
        """
        if self._chain is None:
            raise ValueError("save a step with this writer before making a branch point")
        hist = branch_history(self.root, self.branch)
        if not hist:
            raise ValueError("no committed step to make a branch point of")
        step = hist[-1][1]
        if self.root.exists(f"dcp-points/{name}.json"):
            raise ValueError(f"branch point {name!r} already exists")
        if self._chain.latest_step() != step:
            raise ValueError(f"rank {self.rank} stored nothing at step {step}")
        self._chain.branch_point(name)
        _barrier()
        if self.is_coordinator:
            point = {"name": name, "branch": self.branch, "step": step}
            self.root.write(f"dcp-points/{name}.json", dumps(point))  # the commit
        _barrier()
        return step

    def branch_points(self) -> dict[str, tuple[str, int]]:
        """Branch point name -> (branch, step)."""
        out = {}
        for n in self.root.list("dcp-points"):
            d = json.loads(self.root.read(n))
            out[str(d["name"])] = (str(d["branch"]), int(d["step"]))
        return out

    def rollback(self, name: str, *, new_branch: str | None = None) -> str:
        """Continue on a new branch forked at branch point ``name``; return its name.

        Collective: every rank calls it. Later saves (steps after the point's) go to the new
        branch; the old branch stays readable (``ChainReader(path, branch=old)``). Load the
        state to resume from with ``ChainReader(path, step=point_step)``.
        """
        points = self.branch_points()
        if name not in points:
            raise KeyError(f"no branch point {name!r}")
        pbranch, pstep = points[name]
        existing = {DEFAULT_BRANCH} | {
            n.rsplit("/", 1)[-1][:-5] for n in self.root.list("dcp-branches")
        }
        if new_branch is None:
            new_branch = next_branch_name(name, existing)
        if new_branch in existing:
            raise ValueError(f"branch {new_branch!r} exists")
        _barrier()  # every rank chose the name before the coordinator creates it
        if self._chain is not None:
            self._chain.rollback(name, new_branch=new_branch)
        _barrier()
        if self.is_coordinator:
            info = {"name": new_branch, "parent": {"branch": pbranch, "step": pstep}}
            self.root.write(f"dcp-branches/{new_branch}.json", dumps(info))
            self.root.write("dcp-HEAD.json", dumps({"branch": new_branch}))  # the commit
        _barrier()
        self.branch = new_branch
        return new_branch

    # -- lifecycle

    def close(self) -> None:
        """Close the rank chain and release the locks."""
        if self._chain is not None:
            self._chain.close()
            self._chain = None
        if self._locked:
            self.root.release_lock()
            self._locked = False

    def __enter__(self) -> ChainWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _plain_object(planner: SavePlanner, item: Any) -> Any:
    """The original object of a BYTE_IO item, without the planner's pickling."""
    lookup = getattr(planner, "lookup_object", None)
    if lookup is None:
        raise TypeError(
            f"{item.index.fqn}: the save planner has no lookup_object(); deltackpt stores "
            "non-tensor values as JSON and never stores pickled bytes"
        )
    return lookup(item.index)


# --------------------------------------------------------------------------- reader


class ChainReader(StorageReader):
    """A DCP ``StorageReader`` restoring step ``step`` (latest committed if None) of a chain
    written by :class:`ChainWriter`. ``dcp.load(..., checkpoint_id=N)`` also selects step N."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        step: int | None = None,
        branch: str | None = None,
        *,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.url = os.fspath(path)
        self.storage_options = dict(storage_options or {})
        self.root = open_store(self.url, **self.storage_options)
        self.step = step
        self.branch = branch or head_branch(self.root)
        self.load_id = uuid.uuid4().hex
        self._storage: dict[MetadataIndex, ItemLocation] = {}
        self._chains: dict[int, CheckpointChain] = {}
        self._states: dict[int, Any] = {}
        self._wanted: dict[int, set[tuple[str, str]]] = {}

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        if checkpoint_id is not None:
            self.step = _parse_step(checkpoint_id)
        self.load_id = uuid.uuid4().hex
        self._states = {}

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return ChainWriter.validate_checkpoint_id(checkpoint_id)

    def steps(self) -> list[int]:
        """Committed steps visible on the branch (its ancestors' up to the fork included)."""
        return [s for _, s in branch_history(self.root, self.branch)]

    def resolved_step(self) -> int:
        """The step this reader loads."""
        if self.step is not None:
            return self.step
        steps = self.steps()
        if not steps:
            raise FileNotFoundError(f"no committed DCP step in {self.url} (branch {self.branch})")
        return steps[-1]

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        step = self.resolved_step()
        holders = [b for b, s in branch_history(self.root, self.branch) if s == step]
        if not holders:
            raise KeyError(f"step {step} is not committed in {self.url} (branch {self.branch})")
        name = _step_name(holders[-1], step)
        try:
            doc = json.loads(self.root.read(name))
        except ValueError as e:
            raise CorruptDataError(f"{name}: {e}") from e
        md = metadata_from_json(doc)
        if md.storage_meta is None:
            md.storage_meta = StorageMeta()
        md.storage_meta.load_id = self.load_id
        return md

    def set_up_storage_reader(
        self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any
    ) -> None:
        if not isinstance(metadata.storage_data, dict):
            raise CorruptDataError("metadata without storage locations")
        self._storage = metadata.storage_data

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    def _rank_state(self, rank: int) -> Any:
        state = self._states.get(rank)
        if state is None:
            chain = self._chains.get(rank)
            if chain is None:
                url = _sub_url(self.url, f"rank-{rank}")
                chain = CheckpointChain(url, mode="r", storage_options=self.storage_options)
                self._chains[rank] = chain
            wanted = self._wanted.get(rank)
            state = _restore_items(chain, self.resolved_step(), self.branch, wanted)
            self._states[rank] = state
        return state

    def _item(self, index: MetadataIndex) -> Any:
        loc = self._storage.get(index)
        if loc is None:
            raise CorruptDataError(f"no stored item for {index.fqn} at {index.offset}")
        try:
            return self._rank_state(loc.rank)[loc.group][loc.leaf]
        except (KeyError, TypeError) as e:
            raise CorruptDataError(
                f"rank {loc.rank} chain has no {loc.group}/{loc.leaf} at step "
                f"{self.resolved_step()}"
            ) from e

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        self._wanted = {}
        for req in plan.items:
            loc = self._storage.get(req.storage_index)
            if loc is not None:
                self._wanted.setdefault(loc.rank, set()).add((loc.group, loc.leaf))
        current = None
        for req in _sorted_by_rank(plan.items, self._storage):
            loc = self._storage.get(req.storage_index)
            if loc is not None and loc.rank != current:
                self._states = {}  # one rank's decoded state in memory at a time
                current = loc.rank
            stored = self._item(req.storage_index)
            if req.type == LoadItemType.BYTE_IO:
                obj = from_tagged(json.loads(np.asarray(stored, np.uint8).tobytes()))
                buf = io.BytesIO()
                torch.save(obj, buf)  # in memory only: the planner expects torch.save bytes
                buf.seek(0)
                planner.load_bytes(req, buf)
                continue
            src = stored
            for dim, (off, length) in enumerate(zip(req.storage_offsets, req.lengths)):
                src = src.narrow(dim, int(off), int(length))
            target = planner.resolve_tensor(req).detach()
            if target.size() != src.size():
                raise CorruptDataError(
                    f"{req.storage_index.fqn}: stored chunk {tuple(src.size())} vs requested "
                    f"{tuple(target.size())}"
                )
            target.copy_(src)
            planner.commit_tensor(req, target)
        self._states = {}
        fut: Future[None] = Future()
        fut.set_result(None)
        return fut

    def close(self) -> None:
        """Close the rank chains opened for reading."""
        for chain in self._chains.values():
            chain.close()
        self._chains = {}
        self._states = {}

    def __enter__(self) -> ChainReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _restore_items(
    chain: CheckpointChain, step: int, branch: str, wanted: set[tuple[str, str]] | None
) -> dict[str, dict[str, Any]]:
    """The items ``wanted`` ((group, leaf) pairs; None: all) of a rank chain at ``step``.

    Decodes only those tensors (a resharded load needs a part of each source rank).
    """
    if wanted is None:
        return chain.restore(step, branch)  # type: ignore[no-any-return]
    # a chain path is the JSON of the keys leading to the tensor: [group, leaf] here
    paths = {json.dumps([g, leaf]): (g, leaf) for g, leaf in wanted}
    rid = resolve(chain.store, branch, step)
    tensors = decode_paths(chain.records, rid, lambda t: t["path"] in paths, chain.threads)
    out: dict[str, dict[str, Any]] = {}
    for path, x in tensors.items():
        g, leaf = paths[path]
        out.setdefault(g, {})[leaf] = x
    return out


def _sorted_by_rank(items: list[Any], storage: dict[MetadataIndex, ItemLocation]) -> Iterator[Any]:
    """Read items grouped by the rank that stored them (one rank state in memory at a time)."""

    def key(req: Any) -> int:
        loc = storage.get(req.storage_index)
        return -1 if loc is None else loc.rank

    return iter(sorted(items, key=key))
