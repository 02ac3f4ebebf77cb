"""The chain's files as formats: records, schemas, ``chain.json``, and the names they live at.

A *record* (``records/<branch>/<step:012d>.json``, zlib-compressed JSON) is one committed
save: its kind, level and base, its plain values, and per tensor ``[mode, file index, offset,
length]`` into its data files (``data/<branch>/<step>-<token>.grp`` and ``-<i>.blob``). A
*schema* (``schemas/<blake2b-128 hex>.json``) is the nesting and tensor metadata shared by every
save of the same structure, named after the hash of its content. :class:`Records` reads them
through a cache and checks what it reads back: a record must name itself, a schema must match
its name, and anything malformed is :class:`~deltackpt.CorruptDataError`.
docs/CHAIN.md specifies every field.
"""

from __future__ import annotations

import hashlib
import json
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from ..errors import CorruptDataError, UnsupportedError
from ..store import HEADER, Store, check_frame
from .config import ChainConfig
from .groups import Group
from .parsing import (
    MAX_RECORD_BYTES,
    MAX_SCHEMA_BYTES,
    MAX_SMALL_JSON,
    NAME_RE,
    disk_name,
    inflate,
    loads,
)
from .snapshot import Snapshot

FORMAT = "deltackpt-chain"
VERSION = 1  # of chain.json
RECORD_VERSION = 2  # 2: records list the digests of their data files
RECORD_VERSIONS = (1, 2)  # what this code reads
CHAIN_FILE = "chain.json"
KEYFRAME_LEVEL = 1 << 20  # above every anchor level: a keyframe drops every reference
MAX_DEPTH = 1 << 16  # records a walk along bases may visit (with checked bases, a bound)
KINDS = ("keyframe", "anchor", "step")
_GROUP = ".grp"

RecId = tuple[str, int]  # (branch holding the record, step)


# --------------------------------------------------------------------------- JSON files


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=True).encode()


def read_json(store: Store, name: str) -> Any:
    """A small framed JSON file (chain.json, HEAD, branches, points); malformed, oversized or
    too deeply nested JSON is corrupt data."""
    return loads(store.read(name), name, MAX_SMALL_JSON)


def write_json(store: Store, name: str, obj: Any) -> None:
    store.write(name, dumps(obj))


def write_chain_file(store: Store, cfg: ChainConfig) -> None:
    """``chain.json``: the format and the writer's settings when the chain was created."""
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "bits": cfg.bits,
        "anchor_every": cfg.anchor_every,
        "keyframe_every": cfg.keyframe_every,
        "created": time.time(),
    }
    write_json(store, CHAIN_FILE, doc)


def check_chain_file(store: Store) -> None:
    """Refuse a ``chain.json`` of another format or a version this code cannot write."""
    cfg = read_json(store, CHAIN_FILE)
    if cfg.get("format") != FORMAT:
        raise CorruptDataError("chain.json is not a deltackpt chain")
    if cfg.get("version") != VERSION:
        raise UnsupportedError(f"chain format version {cfg.get('version')}")


# --------------------------------------------------------------------------- names


def record_name(branch: str, step: int) -> str:
    return f"records/{branch}/{step:012d}.json"


def _step_of(file_name: str) -> int | None:
    """The step of ``<step>.json`` (the last path component), or None for any other name."""
    base = file_name.rsplit("/", 1)[-1]
    return int(base[:-5]) if base.endswith(".json") and base[:-5].isdigit() else None


def listed_steps(store: Store, folder: str) -> list[int]:
    """The steps of the ``<step>.json`` files in ``folder``, ascending."""
    steps = (_step_of(name) for name in store.list(folder))
    return sorted(s for s in steps if s is not None)


def own_steps(store: Store, branch: str) -> list[int]:
    """The steps whose record ``branch`` holds itself (not its ancestors')."""
    return listed_steps(store, f"records/{branch}")


def parse_record_name(name: str) -> RecId | None:
    """(branch, step) of a ``records/<branch>/<step>.json`` name, or None for another file."""
    parts = name.split("/")
    step = _step_of(name)
    ok = len(parts) == 3 and step is not None and NAME_RE.match(parts[1])
    return (parts[1], step) if ok and step is not None else None


def all_records(store: Store) -> list[RecId]:
    """Every committed record of every branch (deleted branches' kept records included)."""
    rids = (parse_record_name(name) for name in store.list("records"))
    return [rid for rid in rids if rid is not None]


def data_dir(branch: str) -> str:
    return f"data/{branch}"


def data_prefix(branch: str, step: int, token: str) -> str:
    """The common prefix of one save's data files (``token`` keeps retries apart)."""
    return f"{data_dir(branch)}/{step:012d}-{token}"


def group_name(prefix: str) -> str:
    """The file holding the save's small tensors, concatenated (always file 0)."""
    return f"{prefix}{_GROUP}"


def blob_name(prefix: str, index: int) -> str:
    """The file of one large tensor (index >= 1)."""
    return f"{prefix}-{index}.blob"


def file_names(prefix: str, n: int) -> list[str]:
    """Data files of a record: the group file, then one file per large tensor."""
    return [group_name(prefix)] + [blob_name(prefix, i) for i in range(1, n)]


def _prefix(d: dict[str, Any], branch: str, step: int) -> str:
    """A record's data prefix, which must be its own: ``data/<branch>/<step>-<hex token>``."""
    prefix = d["prefix"]
    head = data_prefix(branch, step, "")
    token = prefix[len(head) :] if isinstance(prefix, str) and prefix.startswith(head) else ""
    if not (0 < len(token) <= 32 and all(c in "0123456789abcdef" for c in token)):
        raise CorruptDataError(f"record {branch}/{step}: bad data prefix {prefix!r}")
    return prefix


def schema_name(digest: str) -> str:
    return f"schemas/{digest}.json"


# --------------------------------------------------------------------------- formats


@dataclass
class Record:
    """A parsed record (one committed save)."""

    branch: str
    step: int
    kind: str  # "keyframe" | "anchor" | "step"
    level: int
    ordinal: int  # saves since the branch's last keyframe
    base: RecId | None
    schema: str
    values: list[Any]
    entries: list[list[Any]]  # per tensor: [mode, file index, offset, length(, moment)]
    files: list[str]
    bits: int
    raw_bytes: int
    time: float
    # per tensor, [max |x̂ - x|, ||x̂ - x|| / ||x||] measured by the encoder (None: exact, or
    # a quantizer that does not measure)
    errors: list[list[float] | None] | None = None
    # small tensors coded together (entries ["group", g] point here)
    groups: list[Group] | None = None
    # xxh3-128 (hex) of each data file's payload, as its frame records it (None: a version 1
    # record, written before records bound their files)
    digests: list[str] | None = None
    # the writer epoch (fencing token) of the lease the writer held (fsspec stores), or None
    epoch: int | None = None

    @property
    def rid(self) -> RecId:
        return (self.branch, self.step)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": RECORD_VERSION if self.digests is not None else 1,
            "branch": self.branch,
            "step": self.step,
            "kind": self.kind,
            "level": self.level,
            "ordinal": self.ordinal,
            "base": list(self.base) if self.base else None,
            "schema": self.schema,
            "values": self.values,
            "entries": self.entries,
            "prefix": self.files[0][: -len(_GROUP)],
            "nfiles": len(self.files),
            "bits": self.bits,
            "raw_bytes": self.raw_bytes,
            "time": self.time,
            **({} if self.errors is None else {"errors": self.errors}),
            **({} if not self.groups else {"groups": [g.to_json() for g in self.groups]}),
            **({} if self.digests is None else {"digests": self.digests}),
            **({} if self.epoch is None else {"epoch": self.epoch}),
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> Record:
        if d.get("format") != FORMAT:
            raise CorruptDataError("not a deltackpt chain record")
        if d.get("version") not in RECORD_VERSIONS:
            raise UnsupportedError(
                f"chain record version {d.get('version')}; this deltackpt reads versions "
                f"{RECORD_VERSIONS}: upgrade it"
            )
        branch = disk_name(d["branch"], "branch", "record")
        step, base = int(d["step"]), d["base"]
        if base is not None:
            base = (disk_name(base[0], "base branch", "record"), int(base[1]))
        if not _is_digest(d["schema"]):
            raise CorruptDataError(f"record: malformed schema name {d['schema']!r}")
        if d["kind"] not in KINDS or not 0 <= int(d["level"]) <= KEYFRAME_LEVEL:
            raise CorruptDataError(f"record: kind {d['kind']!r} / level {d['level']!r}")
        return Record(
            branch=branch,
            step=step,
            kind=str(d["kind"]),
            level=int(d["level"]),
            ordinal=int(d["ordinal"]),
            base=base,
            schema=str(d["schema"]),
            values=list(d["values"]),
            entries=[list(e) for e in d["entries"]],
            files=file_names(_prefix(d, branch, step), _nfiles(d)),
            bits=int(d["bits"]),
            raw_bytes=int(d["raw_bytes"]),
            time=float(d["time"]),
            errors=_errors(d.get("errors"), len(d["entries"])),
            groups=[Group.from_json(g) for g in d["groups"]] if d.get("groups") else None,
            digests=_digests(d, _nfiles(d)),
            epoch=None if d.get("epoch") is None else int(d["epoch"]),
        )


def _nfiles(d: dict[str, Any]) -> int:
    """The record's file count: the group file and at most one file per tensor entry (a
    forged count cannot ask for millions of names)."""
    n = int(d["nfiles"])
    if not 1 <= n <= len(d["entries"]) + 1:
        raise CorruptDataError(f"record: {n} data files for {len(d['entries'])} tensors")
    return n


def _digests(d: dict[str, Any], n: int) -> list[str] | None:
    """The data files' digests of a record (version 2; version 1 records have none)."""
    raw = d.get("digests")
    if d.get("version") == 1 and raw is None:
        return None
    if not (isinstance(raw, list) and len(raw) == n and all(map(_is_digest, raw))):
        raise CorruptDataError("record: the digests of its data files are missing or malformed")
    return list(raw)


def _is_digest(x: Any) -> bool:
    return isinstance(x, str) and len(x) == 32 and all(c in "0123456789abcdef" for c in x)


def read_data(store: Store, rec: Record, index: int) -> bytes:
    """The payload of data file ``index`` of ``rec``, checked against the digest the record
    binds (a file swapped for another, even a valid one, is corrupt data naming it)."""
    name = rec.files[index]
    header, payload = store.read_frame(name)
    payload = check_frame(header, payload, name)
    if rec.digests is not None and HEADER.unpack_from(header)[1].hex() != rec.digests[index]:
        raise CorruptDataError(
            f"{name} is not the file record {rec.branch}/{rec.step} wrote (its digest differs):"
            " it was replaced or swapped with another file; restore another step or the file"
        )
    return payload


def _errors(raw: Any, n: int) -> list[list[float] | None] | None:
    """The measured errors of a record (absent in records written before they existed)."""
    if raw is None:
        return None
    if not isinstance(raw, list) or len(raw) != n:
        raise CorruptDataError("record: errors do not match its entries")
    return [None if e is None else [float(e[0]), float(e[1])] for e in raw]


@dataclass
class Schema:
    """The nesting of a state and its tensors' metadata, shared by saves of one structure."""

    tree: Any
    tensors: list[dict[str, Any]]  # path, lib, dtype, shape, nonneg
    index: dict[str, int] = field(default_factory=dict)  # path -> position in tensors

    def __post_init__(self) -> None:
        self.index = {t["path"]: i for i, t in enumerate(self.tensors)}


def schema_json(snap: Snapshot) -> dict[str, Any]:
    return {
        "tree": snap.tree,
        "tensors": [
            {
                "path": lf.path,
                "lib": lf.lib,
                "dtype": lf.dtype,
                "shape": lf.shape,
                "nonneg": lf.nonneg,
            }
            for lf in snap.leaves
        ],
    }


# --------------------------------------------------------------------------- reading them


class Records:
    """The committed records and schemas of one chain, read once and checked on the way in."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._records: dict[RecId, Record] = {}
        self._schemas: dict[str, Schema] = {}

    def record(self, rid: RecId) -> Record:
        rec = self._records.get(rid)
        if rec is None:
            name = record_name(*rid)
            try:
                rec = Record.from_json(
                    loads(inflate(self.store.read(name), name), name, MAX_RECORD_BYTES)
                )
            except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
                raise CorruptDataError(f"{name}: {e}") from e
            if rec.rid != rid:
                raise CorruptDataError(f"{name}: record names {rec.rid}")
            self._records[rid] = rec
        return rec

    def base(self, rec: Record) -> Record | None:
        """The record ``rec`` is coded against (None for a keyframe), checked: an earlier step
        of a level at least ``rec``'s. Steps strictly fall along bases, so no walk along them
        can cycle; a forged self-base or loop is corrupt data, never a hang."""
        if rec.base is None:
            return None
        where = f"{record_name(*rec.rid)}: base {rec.base[0]}/{rec.base[1]}"
        if rec.kind == "keyframe":
            raise CorruptDataError(f"{where}: a keyframe has no base")
        if rec.base[1] >= rec.step:
            raise CorruptDataError(f"{where} is not an earlier step (a forged or looping base)")
        try:
            base = self.record(rec.base)
        except FileNotFoundError as e:
            raise CorruptDataError(f"{where} is missing: the record was deleted or lost") from e
        if base.level < rec.level:
            raise CorruptDataError(f"{where} has level {base.level} below its own {rec.level}")
        return base

    def known(self, rid: RecId) -> bool:
        """The record is committed (or was, in this process, and is still cached)."""
        return rid in self._records or self.store.exists(record_name(*rid))

    def put(self, rec: Record, *, create: bool = False) -> None:
        """Write ``rec`` (the commit of its save: its data must be durable already); with
        ``create``, ``FileExistsError`` if that record exists (another writer's commit)."""
        payload = zlib.compress(dumps(rec.to_json()), 6)
        self.store.write(record_name(*rec.rid), payload, create=create)
        self._records[rec.rid] = rec

    def forget(self, rid: RecId) -> None:
        self._records.pop(rid, None)

    def clear(self) -> None:
        """Drop the cached records: the next reads go to the store (benchmarks of a restore)."""
        self._records.clear()

    def schema(self, digest: str) -> Schema:
        sch = self._schemas.get(digest)
        if sch is None:
            name = schema_name(digest)
            raw = self.store.read(name)
            if hashlib.blake2b(raw, digest_size=16).hexdigest() != digest:
                raise CorruptDataError(f"{name}: content does not match its name")
            try:
                d = loads(raw, name, MAX_SCHEMA_BYTES)
                sch = Schema(d["tree"], d["tensors"])
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise CorruptDataError(f"{name}: {e}") from e
            self._schemas[digest] = sch
        return sch

    def put_schema(self, snap: Snapshot) -> str:
        """Store the schema of ``snap`` unless it exists; return its digest (its name)."""
        raw = dumps(schema_json(snap))
        digest = hashlib.blake2b(raw, digest_size=16).hexdigest()
        if digest not in self._schemas and not self.store.exists(schema_name(digest)):
            self.store.write(schema_name(digest), raw)  # rare: synced at once
        return digest
