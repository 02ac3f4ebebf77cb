"""Decoding a record's tensors: each along its base chain, the keyframe's blob first.

A tensor of a record coded as a ``delta`` is ``decode(blob, reference=<the same tensor of the
base record>)``, recursively down to an exact blob (``key`` or ``raw``); the deltas are applied
in place to one buffer per tensor. Tensors decode in parallel threads sharing one
:class:`FileCache`, so a data file is read (and its checksum verified) once per restore. Used
by :meth:`~deltackpt.CheckpointChain.restore` and ``verify``, by the writer to rebuild its
references, and by :class:`deltackpt.distributed.ChainReader` for the items a load needs.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from collections.abc import Callable
from typing import Any

from .._api import decode
from .._tensors import writable_host
from ..errors import CorruptDataError, DeltackptError
from ..store import Store
from .records import RecId, Record, Records, Schema
from .snapshot import clamp0, dtype_name, from_raw, is_torch, rebuild

Link = tuple[Record, list[Any], bool]  # a record, its entry for the tensor, clamp at 0


class FileCache:
    """Verified file payloads shared by the threads of one restore."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.lock = threading.Lock()
        self.futures: dict[str, cf.Future[bytes]] = {}

    def get(self, name: str) -> bytes:
        with self.lock:
            fut = self.futures.get(name)
            owner = fut is None
            if fut is None:
                fut = cf.Future()
                self.futures[name] = fut
        if owner:
            try:
                fut.set_result(self.store.read(name))
            except Exception as e:  # noqa: BLE001 - handed to every waiter by fut.result()
                fut.set_exception(e)
        return fut.result()


def blob(rec: Record, entry: list[Any], cache: FileCache) -> bytes:
    """The bytes ``entry`` (``[mode, file index, offset, length]``) points at in ``rec``."""
    try:
        _, fidx, off, length = entry
        data = cache.get(rec.files[int(fidx)])
    except (ValueError, TypeError, IndexError) as e:
        raise CorruptDataError(f"record {rec.rid}: bad tensor entry {entry!r}") from e
    if not (0 <= off and off + length <= len(data)):
        raise CorruptDataError(f"record {rec.rid}: blob [{off}, +{length}) outside its file")
    return data[off : off + length]


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
        cur = records.record(cur.base) if cur.base is not None else None


def decode_one(records: Records, rec: Record, meta: dict[str, Any], cache: FileCache) -> Any:
    """Decode one tensor of ``rec`` (its schema entry ``meta``) along its base chain."""
    path = meta["path"]
    links = base_chain(records, rec, path)
    first_rec, first, _ = links[-1]
    data = blob(first_rec, first, cache)
    if first[0] == "raw":
        x = from_raw(data, meta["lib"], meta["dtype"], list(meta["shape"]))
        if len(links) == 1:
            return x
    elif first[0] == "key":
        x = decode(data)
    else:
        raise CorruptDataError(f"tensor {path}: unknown mode {first[0]!r}")
    for r, entry, nonneg in reversed(links[:-1]):
        # x is this restore's own buffer: each delta is applied to it in place
        out = x if writable_host(x) else None
        x = decode(blob(r, entry, cache), reference=x, out=out)
        if nonneg:
            x = clamp0(x)
    if dtype_name(x) != meta["dtype"] or [int(s) for s in x.shape] != list(meta["shape"]):
        raise CorruptDataError(f"tensor {path}: decoded {dtype_name(x)} {list(x.shape)}")
    if (meta["lib"] == "torch") != is_torch(x):
        raise CorruptDataError(f"tensor {path}: decoded the wrong array kind")
    return x


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

    def one(i: int) -> Any:
        try:
            return decode_one(records, rec, sch.tensors[i], cache)
        except DeltackptError:
            raise
        except FileNotFoundError as e:
            raise CorruptDataError(f"record {rec.rid} depends on a missing file: {e}") from e
        except (IndexError, KeyError, TypeError, ValueError, AttributeError) as e:
            # a checksummed but malformed (forged) record or schema: never a crash
            raise CorruptDataError(f"record {rec.rid}, tensor {i}: {type(e).__name__}: {e}") from e

    if len(idx) > 1 and threads > 1:
        with cf.ThreadPoolExecutor(threads) as pool:
            for i, val in zip(idx, pool.map(one, idx)):
                out[i] = val
    else:
        for i in idx:
            out[i] = one(i)
    return out


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


def restore_state(records: Records, rid: RecId, threads: int) -> Any:
    """The whole state saved as ``rid``, nested as it was saved."""
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
