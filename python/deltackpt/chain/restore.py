"""Decoding a record's tensors: each along its base chain, the keyframe's blob first.

A tensor of a record coded as a ``delta`` is ``decode(blob, reference=<the same tensor of the
base record>)``, recursively down to an exact blob (``key`` or ``raw``); the deltas are applied
in place to one buffer per tensor. A first moment bounded by its second moment (an entry with
a fifth element, the second moment's index) is decoded in step with it: at each record, the
second moment first, then the first moment against it, as the writer coded them. Tensors
decode in parallel threads sharing one :class:`FileCache`, so a data file is read (and its
checksum verified) once per restore. Used by :meth:`~deltackpt.CheckpointChain.restore` and
``verify``, by the writer to rebuild its references, and by
:class:`deltackpt.distributed.ChainReader` for the items a load needs.
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
    """The bytes ``entry`` (``[mode, file index, offset, length(, moment)]``) points at."""
    try:
        _, fidx, off, length = entry[:4]
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


def _exact(rec: Record, entry: list[Any], meta: dict[str, Any], cache: FileCache) -> Any:
    """The value of an exact entry (``key``: a lossless blob, ``raw``: the dtype's bytes)."""
    data = blob(rec, entry, cache)
    if entry[0] == "raw":
        return from_raw(data, meta["lib"], meta["dtype"], list(meta["shape"]))
    if entry[0] == "key":
        return decode(data)
    raise CorruptDataError(f"tensor {meta['path']}: unknown mode {entry[0]!r}")


def _apply(x: Any, link: Link, cache: FileCache, moment: Any = None) -> Any:
    """``x`` (this restore's own buffer) with one delta applied in place."""
    rec, entry, nonneg = link
    out = x if writable_host(x) else None
    x = decode(blob(rec, entry, cache), reference=x, out=out, second_moment=moment)
    return clamp0(x) if nonneg else x


def _checked(x: Any, meta: dict[str, Any]) -> Any:
    path = meta["path"]
    if dtype_name(x) != meta["dtype"] or [int(s) for s in x.shape] != list(meta["shape"]):
        raise CorruptDataError(f"tensor {path}: decoded {dtype_name(x)} {list(x.shape)}")
    if (meta["lib"] == "torch") != is_torch(x):
        raise CorruptDataError(f"tensor {path}: decoded the wrong array kind")
    return x


def decode_one(records: Records, rec: Record, meta: dict[str, Any], cache: FileCache) -> Any:
    """Decode one tensor of ``rec`` (its schema entry ``meta``) along its base chain."""
    links = base_chain(records, rec, meta["path"])
    if any(len(e) > 4 for _, e, _ in links[:-1]):
        return decode_with_moment(records, rec, meta, cache)[0]
    first_rec, first, _ = links[-1]
    x = _exact(first_rec, first, meta, cache)
    for link in reversed(links[:-1]):
        x = _apply(x, link, cache)
    return _checked(x, meta)


def _moment_path(records: Records, links: list[Link]) -> str:
    """The path of the second moment the moment-bounded links name (one for all)."""
    paths = set()
    for rec, entry, _ in links:
        if len(entry) > 4:
            tensors = records.schema(rec.schema).tensors
            if not (isinstance(entry[4], int) and 0 <= entry[4] < len(tensors)):
                raise CorruptDataError(f"record {rec.rid}: bad second moment {entry[4]!r}")
            paths.add(tensors[entry[4]]["path"])
    if len(paths) != 1:
        raise CorruptDataError(f"a first moment bounded by {len(paths)} second moments")
    return paths.pop()


def decode_with_moment(
    records: Records, rec: Record, meta: dict[str, Any], cache: FileCache
) -> tuple[Any, Any]:
    """A first moment of ``rec`` whose deltas are bounded by its second moment, and that
    second moment (or None if ``rec`` has none): both walked forward together over the base
    records, from where both are exact."""
    m_links = base_chain(records, rec, meta["path"])
    v_path = _moment_path(records, m_links)
    oldest = max(k for k, (_, e, _) in enumerate(m_links[:-1]) if len(e) > 4)
    v_start = base_chain(records, m_links[oldest][0], v_path)  # v is exact at its end
    seq = [r for r, _, _ in m_links] + [r for r, _, _ in v_start[len(m_links) - oldest :]]
    top = max(len(m_links) - 1, oldest + len(v_start) - 1)
    m: Any = None
    v: Any = None
    for j in range(top, -1, -1):
        r = seq[j]
        sch = records.schema(r.schema)
        vi = sch.index.get(v_path)
        if j <= oldest + len(v_start) - 1:
            v = _step_value(v, r, vi, sch, cache)
        if j < len(m_links) - 1:
            _, entry, _ = link = m_links[j]
            if len(entry) > 4 and v is None:
                raise CorruptDataError(f"record {r.rid}: its second moment {v_path} is missing")
            m = _apply(m, link, cache, v if len(entry) > 4 else None)
        elif j == len(m_links) - 1:
            m = _exact(r, m_links[j][1], meta, cache)
    return _checked(m, meta), v


def _step_value(v: Any, rec: Record, vi: int | None, sch: Schema, cache: FileCache) -> Any:
    """The second moment at ``rec``, from its value at ``rec``'s base (``v``)."""
    if vi is None:
        return None
    entry, t = rec.entries[vi], sch.tensors[vi]
    if entry[0] != "delta":
        return _exact(rec, entry, t, cache)
    if v is None:
        raise CorruptDataError(f"record {rec.rid}: tensor {t['path']} has no base value")
    return _apply(v, (rec, entry, bool(t.get("nonneg"))), cache)


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
    """The decode jobs for tensors ``idx``: a first moment bounded by its second moment
    together with it (one walk gives both), every other tensor alone."""
    wanted = set(idx)
    groups: list[tuple[int, ...]] = []
    taken: set[int] = set()
    for i in idx:
        entry = rec.entries[i]
        j = entry[4] if len(entry) > 4 else None
        if isinstance(j, int) and 0 <= j < len(sch.tensors) and j != i:
            groups.append((i, j) if j in wanted else (i,))
            taken.update((i, j))
    return groups + [(i,) for i in idx if i not in taken]


def _decode_group(
    records: Records, rec: Record, sch: Schema, group: tuple[int, ...], cache: FileCache
) -> list[Any]:
    if len(group) == 2:
        m, v = decode_with_moment(records, rec, sch.tensors[group[0]], cache)
        return [m, _checked(v, sch.tensors[group[1]])]
    return [decode_one(records, rec, sch.tensors[group[0]], cache)]


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
