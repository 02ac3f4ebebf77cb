"""Decoding tensors that depend on each other, in step, record after record.

Most tensors decode alone along their base chain (:func:`.restore.decode_one`). Two kinds of
entries tie tensors together: a first moment bounded by its second moment (a ``delta`` entry
with a fifth element) needs the second moment's value *at the same record*, and a ``group``
entry codes several small tensors as one blob, which needs every member's value at the base
record. :func:`decode_lockstep` first walks back from the record to restore and collects, per
record, the tensors whose value there is needed (closed under both ties), until every one of
them is exact; then it walks forward from the oldest record, updating at each record exact
entries, own deltas and pointwise groups first and then the deltas and groups that need a
second moment of that record — the order the writer coded them in.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..errors import CorruptDataError
from .blobs import apply_delta, blob, exact_value
from .groups import Group, decode_group
from .records import MAX_DEPTH, Record, Records, Schema
from .snapshot import clamp0


def needs_lockstep(entry: list[Any]) -> bool:
    """The entry ties its tensor to others (a group member, or moment-bounded)."""
    return entry[0] == "group" or (entry[0] == "delta" and len(entry) > 4)


def _path(sch: Schema, i: Any) -> str:
    if not (isinstance(i, int) and 0 <= i < len(sch.tensors)):
        raise CorruptDataError(f"a tensor index out of range: {i!r}")
    return str(sch.tensors[i]["path"])


def _group(rec: Record, g: Any) -> Group:
    if not (rec.groups and isinstance(g, int) and 0 <= g < len(rec.groups)):
        raise CorruptDataError(f"record {rec.rid}: no tensor group {g!r}")
    return rec.groups[g]


def _entry(rec: Record, sch: Schema, path: str) -> list[Any]:
    i = sch.index.get(path)
    if i is None:
        raise CorruptDataError(f"tensor {path}: missing in record {rec.rid}")
    return rec.entries[i]


def _closure(rec: Record, sch: Schema, want: Iterable[str]) -> tuple[set[str], set[str]]:
    """(paths decoded at ``rec``, paths needed at its base) for the paths ``want``."""
    here: set[str] = set()
    base: set[str] = set()
    todo = list(want)
    while todo:
        p = todo.pop()
        if p in here:
            continue
        here.add(p)
        e = _entry(rec, sch, p)
        if e[0] == "delta":
            base.add(p)
            if len(e) > 4:
                todo.append(_path(sch, e[4]))
        elif e[0] == "group":
            g = _group(rec, e[1])
            for j, spec in zip(g.members, g.specs):
                todo.append(_path(sch, j))
                base.add(_path(sch, j))
                if spec is not None and spec[0] == "moment":
                    todo.append(_path(sch, spec[3]))
        elif e[0] not in ("key", "raw"):
            raise CorruptDataError(f"tensor {p}: unknown mode {e[0]!r} in record {rec.rid}")
    return here, base


def plan(records: Records, rec: Record, paths: Iterable[str]) -> list[tuple[Record, set[str]]]:
    """Per record, newest first, the paths whose value there the restore needs."""
    out: list[tuple[Record, set[str]]] = []
    cur, need = rec, set(paths)
    while need:
        if len(out) >= MAX_DEPTH:
            raise CorruptDataError(f"record {rec.rid}: a base chain deeper than {MAX_DEPTH}")
        here, base = _closure(cur, records.schema(cur.schema), need)
        out.append((cur, here))
        if base:
            nxt = records.base(cur)
            if nxt is None:
                raise CorruptDataError(f"record {cur.rid}: a delta without a base record")
            cur = nxt
        need = base
    return out


def decode_lockstep(
    records: Records, rec: Record, paths: Iterable[str], cache: Any
) -> dict[str, Any]:
    """The values at ``rec`` of ``paths`` (and of what they are tied to)."""
    values: dict[str, Any] = {}
    for r, here in reversed(plan(records, rec, paths)):
        sch = records.schema(r.schema)
        meta = {p: sch.tensors[sch.index[p]] for p in here}
        new: dict[str, Any] = {}
        for late in (False, True):  # what needs a second moment of this record goes last
            for p in sorted(here):
                e = _entry(r, sch, p)
                if p in new or _late(r, sch, e) != late:
                    continue
                if e[0] in ("key", "raw"):
                    new[p] = exact_value(r, e, meta[p], cache)
                elif e[0] == "delta":
                    v = new[_path(sch, e[4])] if len(e) > 4 else None
                    new[p] = apply_delta(values[p], (r, e, bool(meta[p].get("nonneg"))), cache, v)
                else:
                    new.update(_decode_group(r, sch, _group(r, e[1]), values, new, cache))
        values = new
    return values


def _late(rec: Record, sch: Schema, e: list[Any]) -> bool:
    """The entry needs a second moment's value at this record."""
    if e[0] == "delta":
        return len(e) > 4
    if e[0] == "group":
        return _group(rec, e[1]).kind == "each"
    return False


def _decode_group(
    rec: Record, sch: Schema, g: Group, old: dict[str, Any], new: dict[str, Any], cache: Any
) -> dict[str, Any]:
    members = [_path(sch, j) for j in g.members]
    try:
        refs = [old[p] for p in members]
        moments = [
            None if spec is None or spec[0] != "moment" else new[_path(sch, spec[3])]
            for spec in g.specs
        ]
    except KeyError as e:
        raise CorruptDataError(f"record {rec.rid}: a tensor group without its base: {e}") from e
    data = blob(rec, ["group", *g.blob], cache)
    out = decode_group(data, g, refs, moments)
    nonneg = [bool(sch.tensors[j].get("nonneg")) for j in g.members]
    return {p: clamp0(x) if nn else x for p, x, nn in zip(members, out, nonneg)}
