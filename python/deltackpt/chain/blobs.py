"""One tensor's decode steps: reading the bytes an entry points at, the value of an exact
entry, one delta applied in place. :mod:`.restore` chains them along a tensor's base records,
:mod:`.lockstep` for tensors tied to each other.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from typing import Any

from .._api import decode, decode_chain
from .._tensors import writable_host
from ..errors import CorruptDataError
from ..store import Store
from .records import Record, read_data
from .snapshot import clamp0, dtype_name, from_raw, is_torch, same_layout

Link = tuple[Record, list[Any], bool]  # a record, its entry for the tensor, clamp at 0


class FileCache:
    """Verified file payloads (checked against their records' digests) shared by the threads
    of one restore."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.lock = threading.Lock()
        self.futures: dict[str, cf.Future[bytes]] = {}

    def get(self, rec: Record, index: int) -> bytes:
        name = rec.files[index]
        with self.lock:
            fut = self.futures.get(name)
            owner = fut is None
            if fut is None:
                fut = cf.Future()
                self.futures[name] = fut
        if owner:
            try:
                fut.set_result(read_data(self.store, rec, index))
            except Exception as e:  # noqa: BLE001 - handed to every waiter by fut.result()
                fut.set_exception(e)
        return fut.result()


def blob(rec: Record, entry: list[Any], cache: FileCache) -> bytes:
    """The bytes ``entry`` (``[mode, file index, offset, length(, moment)]``) points at."""
    try:
        _, fidx, off, length = entry[:4]
        data = cache.get(rec, int(fidx))
    except (ValueError, TypeError, IndexError) as e:
        raise CorruptDataError(f"record {rec.rid}: bad tensor entry {entry!r}") from e
    if not (
        isinstance(off, int) and isinstance(length, int) and 0 <= off and off + length <= len(data)
    ):
        raise CorruptDataError(f"record {rec.rid}: blob [{off}, +{length}) outside its file")
    if off == 0 and length == len(data):
        return data  # a blob with a file of its own: no copy of a tensor-sized payload
    return data[off : off + length]


def exact_value(
    rec: Record, entry: list[Any], meta: dict[str, Any], cache: FileCache, out: Any = None
) -> Any:
    """The value of an exact entry (``key``: a lossless blob, ``raw``: the dtype's bytes),
    into ``out`` (a buffer of the tensor's layout) when given."""
    data = blob(rec, entry, cache)
    if entry[0] == "raw":
        x = from_raw(data, meta["lib"], meta["dtype"], list(meta["shape"]))
        if out is not None and same_layout(out, x):
            out[...] = x
            return out
        return x
    if entry[0] == "key":
        return decode(data) if out is None else decode(data, out=out)
    raise CorruptDataError(f"tensor {meta['path']}: unknown mode {entry[0]!r}")


def apply_delta(x: Any, link: Link, cache: FileCache, moment: Any = None) -> Any:
    """``x`` (this restore's own buffer) with one delta applied in place."""
    rec, entry, nonneg = link
    out = x if writable_host(x) else None
    x = decode(blob(rec, entry, cache), reference=x, out=out, second_moment=moment)
    return clamp0(x) if nonneg else x


def apply_deltas(x: Any, links: list[Link], cache: FileCache) -> Any:
    """``x`` with the deltas of ``links`` (oldest first) applied: all in one pass over ``x``
    (:func:`~deltackpt._api.decode_chain`, every delta of a chunk while it is in cache) when
    ``x`` is a writable host buffer, else link by link. The fused path clamps as torch does,
    so a numpy second moment (``np.maximum`` keeps ``-0.0`` for some dtypes, not others)
    goes link by link."""
    clamps = [nonneg for _, _, nonneg in links]
    if not links or not writable_host(x) or (any(clamps) and not is_torch(x)):
        for link in links:
            x = apply_delta(x, link, cache)
        return x
    return decode_chain([blob(rec, entry, cache) for rec, entry, _ in links], x, clamps)


def checked(x: Any, meta: dict[str, Any]) -> Any:
    path = meta["path"]
    if dtype_name(x) != meta["dtype"] or [int(s) for s in x.shape] != list(meta["shape"]):
        raise CorruptDataError(f"tensor {path}: decoded {dtype_name(x)} {list(x.shape)}")
    if (meta["lib"] == "torch") != is_torch(x):
        raise CorruptDataError(f"tensor {path}: decoded the wrong array kind")
    return x
