"""Bounded parsing of what the chain reads back from disk, which is untrusted checksum or not
(a forger reseals what they change): zlib inflated with a ``max_length``, JSON with size and
nesting limits, names checked by the rules that user names follow. Every violation is a
:class:`~deltackpt.CorruptDataError` saying which file and what was wrong; the writer uses the
same limits to refuse a save that could not be read back.
"""

from __future__ import annotations

import json
import re
import zlib
from typing import Any

from ..errors import CorruptDataError

MAX_RECORD_BYTES = 64 << 20  # a record's inflated JSON (plain values and entries)
MAX_SCHEMA_BYTES = 64 << 20  # a schema (one line per tensor)
MAX_SMALL_JSON = 1 << 20  # chain.json, HEAD.json, branch and branch point files
MAX_NESTING = 256  # lists/dicts inside each other, in any JSON file and in a saved state
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")


def check_name(name: str, what: str) -> str:
    """A branch or branch point name given by a user is safe as a file name, or ValueError."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(f"invalid {what} name {name!r}: use letters, digits and ._@+-")
    return name


def disk_name(name: Any, what: str, where: str) -> str:
    """A name read from file ``where`` follows the rules of user names (no ``/``, no ``..``),
    so it can never lead outside the chain directory; else corrupt data."""
    if not isinstance(name, str) or not NAME_RE.match(name) or name in (".", ".."):
        raise CorruptDataError(f"{where}: invalid {what} name {name!r} (forged or damaged)")
    return name


def inflate(raw: bytes, name: str, limit: int = MAX_RECORD_BYTES) -> bytes:
    """``zlib.decompress(raw)`` that stops at ``limit`` bytes (a zlib bomb is corrupt data)."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(raw, limit)
    except zlib.error as e:
        raise CorruptDataError(f"{name}: {e}") from e
    if d.unconsumed_tail or not d.eof:
        raise CorruptDataError(f"{name}: inflates beyond {limit} bytes or is truncated")
    return out


def loads(raw: bytes, name: str, limit: int) -> Any:
    """Parse JSON of at most ``limit`` bytes nested at most :data:`MAX_NESTING` deep."""
    if len(raw) > limit:
        raise CorruptDataError(f"{name}: {len(raw)} bytes of JSON, more than {limit}")
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise CorruptDataError(f"{name}: {type(e).__name__}: {e}") from e
    check_nesting(obj, name, CorruptDataError)
    return obj


def nesting(obj: Any) -> int:
    """How deeply lists and dicts nest in ``obj`` (iterative: any depth is safe)."""
    deepest, todo = 0, [(obj, 1)]
    while todo:
        x, d = todo.pop()
        if isinstance(x, (list, tuple, dict)):
            deepest = max(deepest, d)
            if d > MAX_NESTING:
                return d
            todo.extend((v, d + 1) for v in (x.values() if isinstance(x, dict) else x))
    return deepest


def check_nesting(obj: Any, what: str, error: type[Exception]) -> None:
    if nesting(obj) > MAX_NESTING:
        raise error(f"{what}: nested more than {MAX_NESTING} deep")
