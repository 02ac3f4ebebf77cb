"""Decoding a record's tensors: each along its base chain, the keyframe's blob first.

A tensor of a record coded as a ``delta`` is ``decode(blob, reference=<the same tensor of the
base record>)``, recursively down to an exact blob (``key`` or ``raw``); the deltas are applied
in place to one buffer per tensor (the steps: :mod:`.blobs`). Tensors tied to others — small
tensors coded as one group blob, first moments bounded by their second moment — are decoded
together, record after record (:mod:`.lockstep`). Tensors decode in parallel threads sharing
one :class:`FileCache`, so a data file is read (and its checksum verified) once per restore.
Used by :meth:`~deltackpt.CheckpointChain.restore` and ``verify``, by the writer to rebuild
its references, and by :class:`deltackpt.distributed.ChainReader` for the items a load needs.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable
from typing import Any

from ..errors import CorruptDataError, DeltackptError, StepNotFoundError
from .blobs import FileCache, Link, apply_deltas, checked, exact_value
from .lockstep import decode_lockstep, needs_lockstep
from .records import MAX_DEPTH, RecId, Record, Records, Schema, record_name
from .snapshot import rebuild


def base_chain(records: Records, rec: Record, path: str) -> list[Link]:
    """The links of tensor ``path``'s decode, from ``rec`` back to its first exact blob."""
    links: list[Link] = []
    cur: Record | None = rec
    while True:
        if cur is None:
            raise CorruptDataError(f"tensor {path}: delta without a base record")
        sch = records.schema(cur.schema)
        i = sch.index.get(path)
        if i is None:
            raise CorruptDataError(f"tensor {path}: missing in base record {cur.rid}")
        entry = cur.entries[i]
        links.append((cur, entry, bool(sch.tensors[i].get("nonneg"))))
        if entry[0] != "delta":
            return links
        if len(links) > MAX_DEPTH:
            raise CorruptDataError(f"tensor {path}: a base chain deeper than {MAX_DEPTH}")
        cur = records.base(cur)


def decode_one(
    records: Records, rec: Record, meta: dict[str, Any], cache: FileCache, out: Any = None
) -> Any:
    """Decode one tensor of ``rec`` (its schema entry ``meta``) along its base chain, into
    ``out`` (a buffer of its layout, overwritten) when given and the chain allows it."""
    links = base_chain(records, rec, meta["path"])
    if any(needs_lockstep(e) for _, e, _ in links):
        return checked(decode_lockstep(records, rec, [meta["path"]], cache)[meta["path"]], meta)
    first_rec, first, _ = links[-1]
    x = exact_value(first_rec, first, meta, cache, out)
    return checked(apply_deltas(x, links[-2::-1], cache), meta)


def decode_tensors(
    records: Records, rec: Record, sch: Schema, idx: list[int], threads: int
) -> list[Any]:
    """The tensors ``idx`` of ``rec`` (None elsewhere), decoded in ``threads`` threads."""
    if len(rec.entries) != len(sch.tensors):
        raise CorruptDataError(
            f"record {rec.rid}: {len(rec.entries)} entries for {len(sch.tensors)}"
        )
    cache = FileCache(records.store)
    out: list[Any] = [None] * len(sch.tensors)

    def one(group: tuple[int, ...]) -> list[Any]:
        try:
            return _decode_group(records, rec, sch, group, cache)
        except DeltackptError:
            raise
        except FileNotFoundError as e:
            raise CorruptDataError(f"record {rec.rid} depends on a missing file: {e}") from e
        except (IndexError, KeyError, TypeError, ValueError, AttributeError) as e:
            # a checksummed but malformed (forged) record or schema: never a crash
            raise CorruptDataError(
                f"record {rec.rid}, tensors {group}: {type(e).__name__}: {e}"
            ) from e

    groups = _groups(rec, sch, idx)
    if len(groups) > 1 and threads > 1:
        with cf.ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(one, groups))
    else:
        results = [one(g) for g in groups]
    for group, values in zip(groups, results):
        for i, val in zip(group, values):
            out[i] = val
    return out


def _groups(rec: Record, sch: Schema, idx: list[int]) -> list[tuple[int, ...]]:
    """The decode jobs for tensors ``idx``: the tensors tied to others (group members,
    moment-bounded first moments and what they need) in one lockstep job, every other
    tensor alone."""
    tied = tuple(i for i in idx if needs_lockstep(rec.entries[i]))
    alone = [(i,) for i in idx if i not in tied]
    return ([tied] if tied else []) + alone


def _decode_group(
    records: Records, rec: Record, sch: Schema, group: tuple[int, ...], cache: FileCache
) -> list[Any]:
    if len(group) == 1 and not needs_lockstep(rec.entries[group[0]]):
        return [decode_one(records, rec, sch.tensors[group[0]], cache)]
    paths = [sch.tensors[i]["path"] for i in group]
    values = decode_lockstep(records, rec, paths, cache)
    return [checked(values[p], sch.tensors[i]) for p, i in zip(paths, group)]


def decode_paths(
    records: Records, rid: RecId, want: Callable[[dict[str, Any]], bool], threads: int
) -> dict[str, Any]:
    """Path -> tensor for the tensors of ``rid`` whose schema entry ``want`` accepts: a part
    of a state (the writer's references, the items a resharded load needs)."""
    rec = records.record(rid)
    sch = records.schema(rec.schema)
    idx = [i for i, t in enumerate(sch.tensors) if want(t)]
    tensors = decode_tensors(records, rec, sch, idx, threads)
    return {sch.tensors[i]["path"]: tensors[i] for i in idx}


def decode_into_buffers(
    records: Records, rid: RecId, paths: list[str], buffers: dict[str, Any], batch_bytes: int
) -> dict[str, Any]:
    """Path -> tensor for ``paths`` of ``rid``, one after another in this thread, each into
    ``buffers[path]`` when it is there and of the tensor's layout (taken from ``buffers``:
    the caller's old values are overwritten). Data files are kept for ~``batch_bytes`` of
    decoded tensors at a time, so a writer rebuilding a reference holds it, one batch of
    files and nothing else."""
    rec = records.record(rid)
    sch = records.schema(rec.schema)
    out: dict[str, Any] = {}
    cache, size = FileCache(records.store), 0
    for path in paths:
        i = sch.index.get(path)
        if i is None:
            raise CorruptDataError(f"record {rid}: no tensor {path}")
        if size >= batch_bytes:
            cache, size = FileCache(records.store), 0
        buf = buffers.pop(path, None)
        try:
            out[path] = decode_one(records, rec, sch.tensors[i], cache, buf)
        except DeltackptError:
            raise
        except (IndexError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise CorruptDataError(f"record {rid}, tensor {path}: {type(e).__name__}: {e}") from e
        size += _nbytes(out[path])
    return out


def _nbytes(x: Any) -> int:
    return int(x.nbytes) if hasattr(x, "nbytes") else int(x.numel() * x.element_size())


def restore_state(records: Records, rid: RecId, threads: int) -> Any:
    """The whole state saved as ``rid``, nested as it was saved. A step retired by retention
    while it is read is :class:`StepNotFoundError`; one replaced (a branch point rewriting it
    as a keyframe) is read again."""
    for attempt in (0, 1):
        try:
            return _restore_state(records, rid, threads)
        except (CorruptDataError, FileNotFoundError) as e:
            records.clear()  # what was read may be stale: read the record afresh
            if not records.store.exists(record_name(*rid)):
                raise StepNotFoundError(
                    f"step {rid[1]} of branch {rid[0]!r} was retired (max_to_keep) or deleted "
                    "while it was being read: restore a step that is kept"
                ) from e
            if attempt or not _replaced(records, rid, e):
                raise
    raise AssertionError("unreachable")


def _replaced(records: Records, rid: RecId, e: Exception) -> bool:
    """The failure was a data file gone because the record was rewritten meanwhile."""
    missing = isinstance(e, FileNotFoundError) or isinstance(e.__cause__, FileNotFoundError)
    return missing and all(records.store.exists(f) for f in records.record(rid).files)


def _restore_state(records: Records, rid: RecId, threads: int) -> Any:
    rec = records.record(rid)
    try:
        sch = records.schema(rec.schema)
    except FileNotFoundError as e:
        raise CorruptDataError(f"record {rid} names a missing schema {rec.schema}") from e
    tensors = decode_tensors(records, rec, sch, list(range(len(sch.tensors))), threads)
    try:
        return rebuild(sch.tree, rec.values, tensors)
    except (IndexError, ValueError, KeyError, TypeError) as e:
        raise CorruptDataError(f"record {rid}: {e}") from e
