"""Looking at a chain without changing it: restore depth, sizes, statistics, verification."""

from __future__ import annotations

import math
from typing import Any

from ..errors import DeltackptError
from .records import RecId, Record, Records, all_records, record_name
from .restore import restore_state


def depth(records: Records, rid: RecId) -> int:
    """How many records a restore of ``rid`` reads: itself and its chain of bases."""
    n = 1
    rec = records.record(rid)
    while rec.base is not None:
        rec = records.record(rec.base)
        n += 1
    return n


def info(records: Records, rid: RecId) -> dict[str, Any]:
    """Kind, level, base, restore depth and data files of record ``rid``, and per tensor how
    it was stored and the error of its restore (measured by the encoder against the state
    that was saved; 0 for exact entries, None where the quantizer does not measure)."""
    rec = records.record(rid)
    return {
        "branch": rec.branch,
        "step": rec.step,
        "kind": rec.kind,
        "level": rec.level,
        "base": rec.base,
        "depth": depth(records, rid),
        "files": list(rec.files),
        "tensors": tensor_errors(records, rec),
    }


def tensor_errors(records: Records, rec: Record) -> dict[str, dict[str, Any]]:
    """Path -> ``{"mode", "max_abs_error", "rel_l2_error"}`` of each tensor of ``rec``."""
    sch = records.schema(rec.schema)
    errors = rec.errors or [None] * len(rec.entries)
    out = {}
    for t, entry, err in zip(sch.tensors, rec.entries, errors):
        exact = entry[0] in ("key", "raw")
        known = exact or err is not None
        out[t["path"]] = {
            "mode": entry[0],
            "max_abs_error": 0.0 if exact else (err[0] if known else None),
            "rel_l2_error": 0.0 if exact else (err[1] if known else None),
        }
    return out


def stored_bytes(records: Records, rec: Record) -> int:
    """Bytes on disk of one save: its record file and its data files (not its schema)."""
    store = records.store
    return store.size(record_name(*rec.rid)) + sum(store.size(f) for f in rec.files)


def allocated_bytes(records: Records) -> int | None:
    """Bytes the file system allocates to the chain's records, data files and schemas
    (whole blocks: what ``du`` counts), or None on stores that cannot tell."""
    store = records.store
    total = 0
    for prefix in ("records", "data", "schemas"):
        for name in store.list(prefix):
            size = store.allocated(name)
            if size is None:
                return None
            total += size
    return total


def verify(records: Records, threads: int, decode_all: bool) -> dict[str, str]:
    """``{"branch/step": error}`` for every committed record that does not check out."""
    bad: dict[str, str] = {}
    for rid in sorted(all_records(records.store), key=lambda r: (r[0], r[1])):
        try:
            rec = records.record(rid)
            records.schema(rec.schema)
            for name in rec.files:
                records.store.read(name)
            if rec.base is not None:
                records.record(rec.base)
            if decode_all:
                restore_state(records, rid, threads)
        except (DeltackptError, OSError) as e:
            bad[f"{rid[0]}/{rid[1]}"] = f"{type(e).__name__}: {e}"
    return bad


def stats(records: Records) -> dict[str, Any]:
    """Bytes stored by kind, raw bytes of all saves, ratio, and max restore depth."""
    by_kind: dict[str, int] = {"keyframe": 0, "anchor": 0, "step": 0}
    count: dict[str, int] = {"keyframe": 0, "anchor": 0, "step": 0}
    raw = 0
    deepest = 0
    depths: dict[RecId, int] = {}
    for rid in sorted(all_records(records.store), key=lambda r: r[1]):
        rec = records.record(rid)
        by_kind[rec.kind] = by_kind.get(rec.kind, 0) + stored_bytes(records, rec)
        count[rec.kind] = count.get(rec.kind, 0) + 1
        raw += rec.raw_bytes
        d = 1 if rec.base is None else depths.get(rec.base) or depth(records, rec.base)
        depths[rid] = d if rec.base is None else d + 1
        deepest = max(deepest, depths[rid])
    other = sum(records.store.size(n) for n in records.store.list("schemas"))
    stored = sum(by_kind.values()) + other
    allocated = allocated_bytes(records)
    return {
        "bytes_by_kind": by_kind,
        "count_by_kind": count,
        "schema_bytes": other,
        "stored_bytes": stored,
        "raw_bytes": raw,
        "ratio": raw / stored if stored else math.inf,
        "allocated_bytes": allocated,
        "max_restore_depth": deepest,
        "records": sum(count.values()),
    }
