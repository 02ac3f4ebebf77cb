"""A chain of compressed training checkpoints: keyframes, multi-level anchors and steps.

Algorithm (SPEC 2.1, 2.4, 2.5)
-------------------------------
Every save is a *record*. Float tensors with at least 2 elements are delta-coded with error
feedback: the stored delta is ``d = u - r_base`` where ``r_base`` is the base record's
*reconstruction* (bit for bit what a reader decodes, never the true state ``u``), and the new
reconstruction is ``r = decode(blob, reference=r_base)``: the encoder writes it while coding
(``encode(..., reconstruction=)``), in place of ``r_base`` when this save drops that level.

Kinds and levels. ``n`` counts the saves since the last keyframe on the branch:

* **keyframe** (``n = 0``): lossless (``quantizer="none"``); at the first save, at branch points,
  when ``exact=True``, and once ``keyframe_every`` steps have passed since the last keyframe.
* **anchor** of level ``L >= 1`` when ``anchor_every**L`` divides ``n`` (largest such ``L``):
  coded with ``anchor_bits`` (default ``bits + 1``) against the latest record of level ``>= L``.
* **step** (level 0): coded with ``bits`` against the previous record.

Priority promotion (keep the ``2^bits - 1`` buckets of largest exponent, zero the rest) is
applied over the whole state by default (``scope="state"``, LC-checkpoint's delta in R^n):
elements outside the kept buckets are given their reference value before the per-tensor
encode, so each tensor keeps its own bucket table and entropy coder.

Restoring the record with ordinal ``n`` applies ``1 + digit_sum(n, base=anchor_every)`` blobs per
tensor (keyframe, then the anchors of each level, then at most ``anchor_every - 1`` steps): with
``anchor_every=10`` and ``keyframe_every=1000`` at most 28. The writer keeps one reconstruction
per level (a stack of decreasing levels) plus a copy of the latest true state (for
:meth:`CheckpointChain.branch_point`). The next save's copy refills that copy's buffers, and
reconstructions of dropped levels serve as the next save's output buffers, so that a save does
not fault in fresh state-sized memory.

Exact storage: integer/bool tensors, float tensors with fewer than 2 elements, float tensors of
keyframes, and any float tensor whose coded blob would not be smaller than its raw bytes (tiny
biases; such a raw copy then starts that tensor's delta chain). Plain values (None, bool, int,
float, str, and lists/tuples/dicts of them) are stored as JSON.
Anything else is refused: nothing is pickled and loading never executes code.
Tensors named ``exp_avg_sq``/``max_exp_avg_sq`` are clamped at 0 after decoding (on both sides,
so writer and reader still agree bit for bit); tensors under an optimizer (an object with
``param_groups`` or a key containing ``optim``) or named like Adam/SGD moments use
``optimizer_bits``.

File layout (all files framed and checksummed by :mod:`deltackpt.store`)
-----------------------------------------------------------------------
``chain.json`` format and writer config; ``HEAD.json`` the writer's current branch;
``branches/<name>.json`` ``{"name", "parent": null | {"branch", "step"}}``;
``points/<name>.json`` ``{"name", "branch", "step"}`` (branch points, always keyframes);
``schemas/<hash>.json`` the nesting of a state and its tensors' metadata (deduplicated);
``data/<branch>/<step>-<token>.grp`` the tensors under ``group_below`` elements of one save,
concatenated; ``data/<branch>/<step>-<token>-<i>.blob`` one larger tensor each;
``records/<branch>/<step>.json`` (zlib-compressed JSON) the save's manifest: kind, level, base,
values, per-tensor ``[mode, file index, offset, length]`` (mode ``key``/``delta``/``raw``), the
data files' common prefix and count. The record is written last: it is the commit.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import json
import math
import os
import re
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._api import decode, delta_histogram, encode
from ._tensors import writable_host
from .errors import CorruptDataError, DeltackptError, NonFiniteError, UnsupportedError
from .store import Store, open_store

FORMAT = "deltackpt-chain"
VERSION = 1
KEYFRAME_LEVEL = 1 << 20
DEFAULT_BRANCH = "main"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")
_FLOAT_DTYPES = {"float16", "bfloat16", "float32", "float64"}
_MOMENT_KEYS = {"exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer"}
_NONNEG_KEYS = {"exp_avg_sq", "max_exp_avg_sq"}

RecId = tuple[str, int]


def _corrupt(msg: str) -> Exception:
    return CorruptDataError(msg)


def _torch() -> Any:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is optional
        return None
    return torch


def _is_torch(x: Any) -> bool:
    torch = _torch()
    return torch is not None and isinstance(x, torch.Tensor)


def _record_name(branch: str, step: int) -> str:
    return f"records/{branch}/{step:012d}.json"


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"invalid {what} name {name!r}: use letters, digits and ._@+-")
    return name


# --------------------------------------------------------------------------- flattening


@dataclass
class _Leaf:
    """One tensor of a state, as a contiguous CPU copy."""

    path: str
    value: Any  # numpy array or torch tensor (CPU, contiguous, owned)
    lib: str  # "torch" | "numpy"
    dtype: str
    shape: list[int]
    optimizer: bool
    nonneg: bool

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def is_float(self) -> bool:
        return self.dtype in _FLOAT_DTYPES


@dataclass
class _Snapshot:
    """A state flattened into a JSON tree, plain values and tensor leaves."""

    tree: Any
    values: list[Any]
    leaves: list[_Leaf]


def _dtype_name(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return x.dtype.name
    return str(x.dtype).removeprefix("torch.")


def _copy_tensor(x: Any, spare: Any = None) -> Any:
    """A contiguous host copy of ``x``, into ``spare`` when it fits (same kind, dtype, shape):
    filling memory already mapped is several times faster than faulting in fresh pages."""
    if _same_layout(spare, x):
        if isinstance(x, np.ndarray):
            np.copyto(spare, x)
            return spare
        return spare.copy_(x.detach())
    if isinstance(x, np.ndarray):
        return np.array(x, copy=True, order="C")
    return x.detach().to("cpu", copy=True).contiguous()


def _snapshot(state: Any, spare: dict[str, Any] | None = None) -> _Snapshot:
    """Flatten ``state`` (copying tensors to the host, into the ``spare`` buffers by path when
    they fit) or raise TypeError naming the bad leaf."""
    values: list[Any] = []
    leaves: list[_Leaf] = []

    def walk(obj: Any, path: list[Any], optim: bool) -> Any:
        if _is_torch(obj) or isinstance(obj, np.ndarray):
            key = json.dumps(path)
            last = path[-1] if path else None
            leaves.append(
                _Leaf(
                    path=key,
                    value=_copy_tensor(obj, spare.get(key) if spare else None),
                    lib="numpy" if isinstance(obj, np.ndarray) else "torch",
                    dtype=_dtype_name(obj),
                    shape=[int(s) for s in obj.shape],
                    optimizer=optim or last in _MOMENT_KEYS,
                    nonneg=last in _NONNEG_KEYS,
                )
            )
            return {"T": len(leaves) - 1}
        if obj is None or isinstance(obj, (bool, int, float, str)):
            values.append(obj)
            return {"V": len(values) - 1}
        if isinstance(obj, np.generic):
            values.append(obj.item())
            return {"V": len(values) - 1}
        if isinstance(obj, Mapping):
            items = []
            for k, v in obj.items():
                if not (k is None or isinstance(k, (bool, int, float, str))):
                    raise TypeError(f"unsupported dict key {k!r} at {path}")
                sub = optim or (isinstance(k, str) and "optim" in k.lower())
                items.append([k, walk(v, [*path, k], sub)])
            return {"D": items}
        if isinstance(obj, (list, tuple)):
            nodes = [walk(v, [*path, i], optim) for i, v in enumerate(obj)]
            return {"L" if isinstance(obj, list) else "U": nodes}
        sd = getattr(obj, "state_dict", None)
        if callable(sd):
            return walk(sd(), path, optim or hasattr(obj, "param_groups"))
        raise TypeError(
            f"cannot store {type(obj).__name__} at {path}: only tensors, numpy arrays, "
            "JSON values, lists/tuples/dicts of them and objects with state_dict() (no pickle)"
        )

    tree = walk(state, [], False)
    return _Snapshot(tree, values, leaves)


def _rebuild(tree: Any, values: list[Any], tensors: list[Any]) -> Any:
    """Inverse of the flattening: rebuild the nested state."""
    if not isinstance(tree, dict) or len(tree) != 1:
        raise _corrupt("malformed state tree")
    ((tag, body),) = tree.items()
    if tag == "T":
        return tensors[body]
    if tag == "V":
        return values[body]
    if tag == "D":
        return {k: _rebuild(v, values, tensors) for k, v in body}
    if tag == "L":
        return [_rebuild(v, values, tensors) for v in body]
    if tag == "U":
        return tuple(_rebuild(v, values, tensors) for v in body)
    raise _corrupt(f"unknown tree tag {tag!r}")


# --------------------------------------------------------------------------- tensor codecs


def _raw_bytes(x: Any) -> bytes:
    if isinstance(x, np.ndarray):
        return x.tobytes()
    torch = _torch()
    if x.numel() == 0:
        return b""
    return x.reshape(-1).view(torch.uint8).numpy().tobytes()


def _from_raw(buf: bytes, lib: str, dtype: str, shape: list[int]) -> Any:
    n = math.prod(shape)
    if lib == "numpy":
        dt = np.dtype(dtype)
        if len(buf) != n * dt.itemsize:
            raise _corrupt(f"raw tensor of {len(buf)} bytes for {n} x {dtype}")
        return np.frombuffer(buf, dt).reshape(shape).copy()
    torch = _torch()
    tdt = getattr(torch, dtype, None)
    if not isinstance(tdt, torch.dtype):
        raise _corrupt(f"unknown torch dtype {dtype!r}")
    if len(buf) != n * tdt.itemsize:
        raise _corrupt(f"raw tensor of {len(buf)} bytes for {n} x {dtype}")
    if n == 0:
        return torch.empty(shape, dtype=tdt)
    return torch.frombuffer(bytearray(buf), dtype=torch.uint8).view(tdt).reshape(shape)


def _same_layout(a: Any, b: Any) -> bool:
    """``a`` can take ``b``'s values: same kind, dtype and shape, contiguous host memory."""
    if a is None or isinstance(a, np.ndarray) != isinstance(b, np.ndarray):
        return False
    return bool(a.dtype == b.dtype and a.shape == b.shape and writable_host(a))


def _clamp0(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return np.maximum(x, 0, out=x) if x.flags.writeable else np.maximum(x, 0)
    return x.clamp_(min=0)


def _check_finite(leaf: _Leaf) -> None:
    """Raise NonFiniteError (count, first index, tensor name) if ``leaf`` has NaN or Inf."""
    x = leaf.value
    if isinstance(x, np.ndarray) or leaf.dtype != "bfloat16":
        a = (x if isinstance(x, np.ndarray) else x.numpy()).reshape(-1)
        if np.isfinite(a).all():  # fast path: one vectorized pass, no temporaries kept
            return
        bad = ~np.isfinite(a)
        count = int(bad.sum())
        first = int(np.argmax(bad))
    else:
        torch = _torch()
        badt = ~torch.isfinite(x.reshape(-1))
        count = int(badt.sum())
        first = int(torch.argmax(badt.to(torch.uint8))) if count else 0
    if count:
        raise NonFiniteError(
            f"{count} non-finite value(s) (NaN or Inf), the first at flat index {first}, in "
            f"tensor {leaf.path}; fix the state or save this step with exact=True"
        )


def _kept_buckets(hist: np.ndarray, bits: int, exp_bits: int) -> tuple[int, int | None]:
    """Priority promotion over a histogram of bucket keys (``sign << exp_bits | exponent``).

    Keeps the ``2^bits - 1`` non-empty (sign, exponent) buckets of largest exponent (negative
    first on a tie); the biased exponent 0 (zeros, subnormals) is never kept. Returns
    ``(e_min, sign_min)``: every bucket of exponent > e_min is kept, and at e_min the buckets of
    both signs (``sign_min`` None) or only of sign ``sign_min``. e_min = 0 keeps nothing.
    """
    n_exp = 1 << exp_bits
    exps = np.arange(hist.size) % n_exp
    signs = np.arange(hist.size) // n_exp
    present = np.flatnonzero((hist > 0) & (exps > 0))
    order = present[np.lexsort((-signs[present], -exps[present]))][: (1 << bits) - 1]
    if order.size == 0:
        return n_exp, None  # nothing to keep
    e_min = int(exps[order[-1]])
    kept_at_min = {int(signs[o]) for o in order if exps[o] == e_min}
    present_at_min = {int(signs[o]) for o in present if exps[o] == e_min}
    if kept_at_min == present_at_min:
        return e_min, None
    return e_min, kept_at_min.pop()


def _global_floors(xs: list[Any], refs: list[Any], bits: int) -> list[tuple[int, int | None]]:
    """LC-checkpoint's priority promotion over the whole state (delta in R^n).

    The buckets kept are chosen over all tensors together from the histograms of their deltas'
    (sign, exponent) keys (computed in the core); each tensor is then encoded with the
    resulting floor, so its own quantizer (its own table and coder) keeps only buckets of the
    global choice. Error feedback carries what was dropped to the next save.
    """
    hists = [delta_histogram(x, r) for x, r in zip(xs, refs)]
    floors: list[tuple[int, int | None]] = [(0, None)] * len(xs)
    for size in {h.size for h in hists}:
        idx = [i for i, h in enumerate(hists) if h.size == size]
        exp_bits = 8 if size == 512 else 11
        total = np.sum([hists[i] for i in idx], axis=0)
        floor = _kept_buckets(total, bits, exp_bits)
        for i in idx:
            floors[i] = floor
    return floors


# --------------------------------------------------------------------------- records


@dataclass
class _Record:
    """A parsed record (one committed save)."""

    branch: str
    step: int
    kind: str
    level: int
    ordinal: int
    base: RecId | None
    schema: str
    values: list[Any]
    entries: list[list[Any]]  # per tensor: [mode, file index, offset, length]
    files: list[str]
    bits: int
    raw_bytes: int
    time: float

    @property
    def rid(self) -> RecId:
        return (self.branch, self.step)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "branch": self.branch,
            "step": self.step,
            "kind": self.kind,
            "level": self.level,
            "ordinal": self.ordinal,
            "base": list(self.base) if self.base else None,
            "schema": self.schema,
            "values": self.values,
            "entries": self.entries,
            "prefix": self.files[0][: -len(".grp")],
            "nfiles": len(self.files),
            "bits": self.bits,
            "raw_bytes": self.raw_bytes,
            "time": self.time,
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> _Record:
        if d.get("format") != FORMAT:
            raise _corrupt("not a deltackpt chain record")
        if d.get("version") != VERSION:
            raise UnsupportedError(f"chain record version {d.get('version')}")
        base = d["base"]
        return _Record(
            branch=str(d["branch"]),
            step=int(d["step"]),
            kind=str(d["kind"]),
            level=int(d["level"]),
            ordinal=int(d["ordinal"]),
            base=(str(base[0]), int(base[1])) if base else None,
            schema=str(d["schema"]),
            values=list(d["values"]),
            entries=[list(e) for e in d["entries"]],
            files=_file_names(str(d["prefix"]), int(d["nfiles"])),
            bits=int(d["bits"]),
            raw_bytes=int(d["raw_bytes"]),
            time=float(d["time"]),
        )


@dataclass
class _Schema:
    tree: Any
    tensors: list[dict[str, Any]]  # path, lib, dtype, shape, nonneg
    index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = {t["path"]: i for i, t in enumerate(self.tensors)}


def _file_names(prefix: str, n: int) -> list[str]:
    """Data files of a record: the group file, then one file per large tensor."""
    if not prefix.startswith("data/") or ".." in prefix or n < 1:
        raise _corrupt(f"bad data prefix {prefix!r}")
    return [f"{prefix}.grp"] + [f"{prefix}-{i}.blob" for i in range(1, n)]


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=True).encode()


class _FileCache:
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


# --------------------------------------------------------------------------- the chain


@dataclass
class _Level:
    """A reconstruction the next saves may be coded against."""

    level: int
    rid: RecId
    recon: dict[str, Any]  # tensor path -> reconstruction (delta-coded float tensors only)
    meta: dict[str, tuple[str, str, tuple[int, ...]]]  # path -> (lib, dtype, shape)


class CheckpointChain:
    """Compressed, crash-safe, branchable checkpoints of a training run.

    ``CheckpointChain(path_or_url, bits=3, anchor_every=10)`` opens (or creates) a chain in a
    local directory or an fsspec URL. ``mode="a"`` takes the writer lock (one writer at a time;
    a stale lock of a dead process on this host is recovered); ``mode="r"`` only reads and never
    needs the lock. Use it as a context manager, or call :meth:`close`.

    >>> import numpy as np, deltackpt as dk
    >>> w = np.linspace(-1, 1, 5000, dtype=np.float32)
    >>> with dk.CheckpointChain("memory://doc-chain", anchor_every=4) as chain:
    ...     for step in range(6):
    ...         chain.save(step, {"w": w + 0.01 * step, "epoch": step // 3})
    ...     chain.branch_point("before-slot-2")
    ...     state = chain.restore(3)
    ...     exact = chain.rollback("before-slot-2")
    ...     (state["epoch"], chain.steps(), chain.branch)
    5
    (1, [0, 1, 2, 3, 4, 5], 'before-slot-2.1')
    >>> bool((exact["w"] == w + 0.01 * 5).all())
    True

    Parameters: ``bits`` of the exponent quantizer for steps; ``anchor_every`` (S) the anchor
    period, each level multiplying it; ``keyframe_every`` steps between periodic exact
    keyframes (None: only the first save, branch points and ``exact=True``);
    ``optimizer_bits`` for optimizer moments (default ``bits``); ``anchor_bits`` for anchors
    (default ``bits + 1``); ``max_to_keep`` / ``keep_every`` retention on the current branch
    (records that a kept step, a branch point or the writer depends on are never deleted, and
    stay listed); ``async_save`` encodes and writes in one background thread (one save in
    flight); ``scope="state"`` chooses the kept exponent buckets over the whole state (model
    and optimizer separately), as LC-checkpoint quantizes the delta in R^n, while each tensor
    keeps its own table and coder; ``scope="tensor"`` chooses them per tensor (more precise
    for tensors with small updates, denser, larger);
    ``group_below`` tensors with fewer elements share one file per save; ``coder``
    is passed to :func:`deltackpt.encode`; ``threads`` decode tensors in parallel on restore.
    """

    def __init__(
        self,
        path_or_url: str | os.PathLike[str] | Store,
        *,
        bits: int = 3,
        anchor_every: int = 10,
        keyframe_every: int | None = 1000,
        optimizer_bits: int | None = None,
        anchor_bits: int | None = None,
        max_to_keep: int | None = None,
        keep_every: int | None = None,
        async_save: bool = False,
        mode: str = "a",
        group_below: int = 4096,
        coder: str = "auto",
        scope: str = "state",
        threads: int | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        if mode not in ("a", "r"):
            raise ValueError("mode must be 'a' (append/write) or 'r' (read only)")
        if not 1 <= bits <= 8:
            raise ValueError("bits must be in 1..8")
        if anchor_every < 2:
            raise ValueError("anchor_every must be >= 2")
        self.bits = bits
        self.anchor_every = anchor_every
        self.keyframe_every = keyframe_every
        self.optimizer_bits = optimizer_bits if optimizer_bits is not None else bits
        self.anchor_bits = anchor_bits if anchor_bits is not None else min(bits + 1, 8)
        self.max_to_keep = max_to_keep
        self.keep_every = keep_every
        self.group_below = group_below
        self.coder = coder
        if scope not in ("state", "tensor"):
            raise ValueError("scope must be 'state' (LC-checkpoint) or 'tensor'")
        self.scope = scope
        self.mode = mode
        self.threads = threads or min(4, os.cpu_count() or 1)
        self.store = open_store(path_or_url, **(storage_options or {}))
        self._records: dict[RecId, _Record] = {}
        self._schemas: dict[str, _Schema] = {}
        self._closed = False
        self._executor: cf.ThreadPoolExecutor | None = None
        self._pending: cf.Future[None] | None = None
        self._stack: list[_Level] = []
        self._last_exact: _Snapshot | None = None
        self._last_exact_rid: RecId | None = None
        self._stack_stale = False
        self._spare_recon: dict[str, Any] = {}
        self._head = DEFAULT_BRANCH
        if mode == "a":
            self.store.acquire_lock()
            try:
                self._open_writer()
            except BaseException:
                self.store.release_lock()
                raise
            if async_save:
                self._executor = cf.ThreadPoolExecutor(1, thread_name_prefix="deltackpt-save")
        else:
            if not self.store.exists("chain.json"):
                raise FileNotFoundError(f"no deltackpt chain at {self.store.url}")
            self._read_json("chain.json")
            self._head = self._read_head()

    # ------------------------------------------------------------------ small I/O helpers

    def _read_json(self, name: str) -> Any:
        raw = self.store.read(name)
        try:
            return json.loads(raw)
        except ValueError as e:
            raise _corrupt(f"{name}: {e}") from e

    def _write_json(self, name: str, obj: Any) -> None:
        self.store.write(name, _dumps(obj))

    def _read_head(self) -> str:
        if self.store.exists("HEAD.json"):
            return str(self._read_json("HEAD.json")["branch"])
        return DEFAULT_BRANCH

    def _record(self, rid: RecId) -> _Record:
        rec = self._records.get(rid)
        if rec is None:
            name = _record_name(*rid)
            try:
                raw = zlib.decompress(self.store.read(name))
                rec = _Record.from_json(json.loads(raw))
            except (zlib.error, ValueError, KeyError, TypeError, IndexError) as e:
                raise _corrupt(f"{name}: {e}") from e
            if rec.rid != rid:
                raise _corrupt(f"{name}: record names {rec.rid}")
            self._records[rid] = rec
        return rec

    def _schema(self, digest: str) -> _Schema:
        sch = self._schemas.get(digest)
        if sch is None:
            name = f"schemas/{digest}.json"
            raw = self.store.read(name)
            if hashlib.blake2b(raw, digest_size=16).hexdigest() != digest:
                raise _corrupt(f"{name}: content does not match its name")
            try:
                d = json.loads(raw)
                sch = _Schema(d["tree"], d["tensors"])
            except (ValueError, KeyError, TypeError) as e:
                raise _corrupt(f"{name}: {e}") from e
            self._schemas[digest] = sch
        return sch

    def _own_steps(self, branch: str) -> list[int]:
        out = []
        for name in self.store.list(f"records/{branch}"):
            base = name.rsplit("/", 1)[-1]
            if base.endswith(".json") and base[:-5].isdigit():
                out.append(int(base[:-5]))
        return sorted(out)

    def _branch_info(self, branch: str) -> dict[str, Any]:
        name = f"branches/{branch}.json"
        if not self.store.exists(name):
            raise KeyError(f"no branch {branch!r} in {self.store.url}")
        return dict(self._read_json(name))

    def _history(self, branch: str) -> list[RecId]:
        """Records visible on ``branch``: its ancestors' up to each fork point, then its own."""
        info = self._branch_info(branch)
        own = [(branch, s) for s in self._own_steps(branch)]
        parent = info.get("parent")
        if not parent:
            return own
        pb, ps = str(parent["branch"]), int(parent["step"])
        try:
            inherited = [r for r in self._history(pb) if r[1] <= ps]
        except KeyError:  # parent deleted: only the fork keyframe remains
            inherited = [(pb, ps)] if self.store.exists(_record_name(pb, ps)) else []
        return inherited + own

    def _resolve(self, step: int | None, branch: str | None) -> RecId:
        hist = self._history(branch or self._head)
        if not hist:
            raise KeyError(f"branch {branch or self._head!r} has no saved step")
        if step is None:
            return hist[-1]
        for rid in reversed(hist):
            if rid[1] == step:
                return rid
        raise KeyError(f"step {step} is not in branch {branch or self._head!r}")

    # ------------------------------------------------------------------ writer set-up

    def _open_writer(self) -> None:
        if not self.store.exists("chain.json"):
            config = {
                "format": FORMAT,
                "version": VERSION,
                "bits": self.bits,
                "anchor_every": self.anchor_every,
                "keyframe_every": self.keyframe_every,
                "created": time.time(),
            }
            self._write_json(
                f"branches/{DEFAULT_BRANCH}.json",
                {"name": DEFAULT_BRANCH, "parent": None},
            )
            self._write_json("chain.json", config)
        else:
            cfg = self._read_json("chain.json")
            if cfg.get("format") != FORMAT:
                raise _corrupt("chain.json is not a deltackpt chain")
            if cfg.get("version") != VERSION:
                raise UnsupportedError(f"chain format version {cfg.get('version')}")
        self._head = self._read_head()
        self._collect_garbage()
        self._rebuild_stack()

    def _all_records(self) -> list[RecId]:
        out = []
        for name in self.store.list("records"):
            parts = name.split("/")
            if len(parts) == 3 and parts[2].endswith(".json") and parts[2][:-5].isdigit():
                out.append((parts[1], int(parts[2][:-5])))
        return out

    def _collect_garbage(self) -> None:
        """Writer only: remove temporaries and files no committed record references."""
        self.store.remove_temporaries()
        used_files: set[str] = set()
        used_schemas: set[str] = set()
        for rid in self._all_records():
            rec = self._record(rid)
            used_files.update(rec.files)
            used_schemas.add(f"schemas/{rec.schema}.json")
        for name in self.store.list("data"):
            if name not in used_files:
                self.store.delete(name)
        for name in self.store.list("schemas"):
            if name not in used_schemas:
                self.store.delete(name)

    def _rebuild_stack(self) -> None:
        """Rebuild the writer's reference reconstructions from the committed head history."""
        self._stack = []
        self._stack_stale = False
        self._spare_recon = {}
        hist = self._history(self._head)
        chosen: list[_Record] = []
        for rid in reversed(hist):
            rec = self._record(rid)
            if not chosen or rec.level > chosen[-1].level:
                chosen.append(rec)
            if rec.kind == "keyframe":
                break
        for rec in reversed(chosen):
            recon, meta = self._reconstruct(rec.rid, delta_only=True)
            self._stack.append(_Level(rec.level, rec.rid, recon, meta))

    # ------------------------------------------------------------------ saving

    def _check_writable(self) -> None:
        if self._closed:
            raise ValueError("the chain is closed")
        if self.mode != "a":
            raise PermissionError("chain opened read-only (mode='r')")
        self._raise_pending()

    def _raise_pending(self) -> None:
        """Wait for the background save, if any; its exception propagates from here."""
        if self._pending is not None:
            fut, self._pending = self._pending, None
            fut.result()

    def save(self, step: int, state: Any, *, exact: bool = False) -> None:
        """Save ``state`` (nested dict of tensors / JSON values / objects with state_dict()).

        Steps must increase along a branch. ``exact=True`` stores a lossless keyframe (and
        accepts NaN/Inf). With ``async_save`` the state is copied to the host and encoded and
        written in the background; an error there is raised by the next call.
        """
        self._check_writable()
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError("step must be a non-negative int")
        last = self._stack[-1].rid[1] if self._stack else None
        if last is not None and step <= last:
            raise ValueError(f"step {step} <= latest step {last} of branch {self._head!r}")
        snap = _snapshot(state, self._spare_buffers())
        if self._executor is not None:
            self._pending = self._executor.submit(self._commit, step, snap, exact)
        else:
            self._commit(step, snap, exact)

    def _spare_buffers(self) -> dict[str, Any]:
        """The host copies of the previous save, free to receive this save's copy.

        The writer keeps one copy of the latest state (for :meth:`branch_point`); refilling it
        rather than allocating a new one keeps a save from faulting in fresh memory. Buffers
        that also serve as a reference reconstruction are left alone.
        """
        old, self._last_exact = self._last_exact, None
        if old is None:
            return {}
        live = {id(a) for lv in self._stack for a in lv.recon.values()}
        return {lf.path: lf.value for lf in old.leaves if id(lf.value) not in live}

    def _commit(self, step: int, snap: _Snapshot, exact: bool, replace: bool = False) -> None:
        """Encode and write one record; update the writer's references after the commit."""
        if self._stack_stale:
            self._rebuild_stack()  # a failed save had started updating references in place
        branch = self._head
        if not exact:
            for leaf in snap.leaves:
                if leaf.is_float:
                    _check_finite(leaf)
        if not self._stack or exact or replace:
            level, base_lv = KEYFRAME_LEVEL, None
        else:
            kf = self._stack[0]
            ordinal = self._record(self._stack[-1].rid).ordinal + 1
            if self.keyframe_every and step - kf.rid[1] >= self.keyframe_every:
                level, base_lv = KEYFRAME_LEVEL, None
            else:
                level = 0
                while ordinal % (self.anchor_every ** (level + 1)) == 0:
                    level += 1
                base_lv = next(lv for lv in reversed(self._stack) if lv.level >= level)
        kind = "keyframe" if base_lv is None else ("anchor" if level > 0 else "step")
        ordinal = 0 if base_lv is None else self._record(self._stack[-1].rid).ordinal + 1
        token = os.urandom(4).hex()
        prefix = f"data/{branch}/{step:012d}-{token}"
        files: list[str] = [f"{prefix}.grp"]
        group: list[bytes] = []
        group_len = 0
        entries: list[list[Any]] = []
        recon: dict[str, Any] = {}
        meta: dict[str, tuple[str, str, tuple[int, ...]]] = {}
        written: list[str] = []
        raw_total = 0
        floors: dict[str, tuple[int, int | None]] = {}
        # A base of the same level is dropped by this commit: its reconstructions are updated
        # in place (error feedback without a second state-sized buffer), unless shared.
        in_place = base_lv is not None and base_lv.level == level
        shared = {id(lf.value) for lf in snap.leaves} | {
            id(a) for lv in self._stack if lv is not base_lv for a in lv.recon.values()
        }
        updated = False
        if base_lv is not None and self.scope == "state":
            for opt in (False, True):  # model and optimizer state have their own buckets
                batch = [
                    lf
                    for lf in snap.leaves
                    if lf.optimizer == opt
                    and lf.is_float
                    and lf.numel >= 2
                    and base_lv.meta.get(lf.path) == (lf.lib, lf.dtype, tuple(lf.shape))
                ]
                if batch:
                    b = self.optimizer_bits if opt else self.bits
                    if level > 0:
                        b = min(b + (self.anchor_bits - self.bits), 8)
                    refs = [base_lv.recon[lf.path] for lf in batch]
                    fl = _global_floors([lf.value for lf in batch], refs, b)
                    floors.update({lf.path: f for lf, f in zip(batch, fl)})
        try:
            for leaf in snap.leaves:
                x = leaf.value
                itemsize = x.itemsize if isinstance(x, np.ndarray) else x.element_size()
                raw_total += leaf.numel * itemsize
                key = (leaf.lib, leaf.dtype, tuple(leaf.shape))
                if not leaf.is_float or leaf.numel < 2:
                    mode, blob = "raw", _raw_bytes(x)
                elif base_lv is None or base_lv.meta.get(leaf.path) != key:
                    mode, blob = "key", encode(x, quantizer="none", coder=self.coder)
                    recon[leaf.path], meta[leaf.path] = x, key
                else:
                    b = self.optimizer_bits if leaf.optimizer else self.bits
                    if level > 0:
                        b = min(b + (self.anchor_bits - self.bits), 8)
                    ref = base_lv.recon[leaf.path]
                    if in_place and id(ref) not in shared and writable_host(ref):
                        out, updated = ref, True
                    else:
                        out = self._spare_recon.pop(leaf.path, None)
                        if not _same_layout(out, ref):
                            out = (
                                np.empty_like(ref)
                                if isinstance(ref, np.ndarray)
                                else ref.new_empty(ref.shape)
                            )
                    try:
                        blob = encode(
                            x,
                            reference=ref,
                            quantizer="exponent",
                            bits=b,
                            coder=self.coder,
                            bucket_floor=floors.get(leaf.path),
                            reconstruction=out,
                        )
                    except NonFiniteError as e:  # raised before anything is written
                        raise type(e)(f"tensor {leaf.path}: {e}") from e
                    recon[leaf.path] = _clamp0(out) if leaf.nonneg else out
                    meta[leaf.path], mode = key, "delta"
                if mode != "raw" and len(blob) >= leaf.numel * itemsize:
                    # tiny tensors: the exact bytes are smaller than a coded blob
                    mode, blob = "raw", _raw_bytes(x)
                    recon[leaf.path] = x
                if (mode != "raw" and leaf.numel >= self.group_below) or len(blob) > 1 << 20:
                    name = f"{prefix}-{len(files)}.blob"
                    self.store.write(name, blob, sync_dir=False)
                    written.append(name)
                    entries.append([mode, len(files), 0, len(blob)])
                    files.append(name)
                else:
                    entries.append([mode, 0, group_len, len(blob)])
                    group.append(blob)
                    group_len += len(blob)
            self.store.write(files[0], b"".join(group), sync_dir=False)
            written.append(files[0])
            schema = {
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
            sraw = _dumps(schema)
            digest = hashlib.blake2b(sraw, digest_size=16).hexdigest()
            if digest not in self._schemas and not self.store.exists(f"schemas/{digest}.json"):
                self.store.write(f"schemas/{digest}.json", sraw)  # rare: synced at once
            rec = _Record(
                branch=branch,
                step=step,
                kind=kind,
                level=level,
                ordinal=ordinal,
                base=base_lv.rid if base_lv else None,
                schema=digest,
                values=snap.values,
                entries=entries,
                files=files,
                bits=self.bits,
                raw_bytes=raw_total,
                time=time.time(),
            )
            old = self._record((branch, step)) if replace else None
            self.store.sync_dirs({f"data/{branch}"})  # data durable before the commit
            self.store.write(_record_name(branch, step), zlib.compress(_dumps(rec.to_json()), 6))
        except BaseException:
            self._stack_stale = self._stack_stale or updated
            for name in written:
                with contextlib.suppress(Exception):
                    self.store.delete(name)
            raise
        self._records[rec.rid] = rec
        if old is not None:
            for name in old.files:
                if name not in files:
                    self.store.delete(name)
        new = _Level(level, rec.rid, recon, meta)
        dropped: list[_Level] = []
        if base_lv is None:
            dropped, self._stack = self._stack, [new]
        else:
            while self._stack and self._stack[-1].level <= level:
                dropped.append(self._stack.pop())
            self._stack.append(new)
        self._last_exact, self._last_exact_rid = snap, rec.rid
        # Reconstructions nobody refers to any more serve as the next save's output buffers
        # (held for one save: the state-sized memory a step after an anchor needs anyway).
        live = {id(a) for lv in self._stack for a in lv.recon.values()}
        live |= {id(lf.value) for lf in snap.leaves}
        self._spare_recon = {
            path: a
            for lv in dropped
            for path, a in lv.recon.items()
            if id(a) not in live and writable_host(a)
        }
        self._apply_retention()

    # ------------------------------------------------------------------ branches

    def branch_point(self, name: str, state: Any = None) -> int:
        """Record an exact keyframe of the latest saved state under ``name``; return its step.

        With ``state``, that state replaces the latest step's record exactly (use it when the
        latest save was made by another process). Otherwise the writer's copy of the latest
        saved state is used.
        """
        _check_name(name, "branch point")
        self.wait()
        self._check_writable()
        if self.store.exists(f"points/{name}.json"):
            raise ValueError(f"branch point {name!r} already exists")
        rid = self._resolve(None, None)
        rec = self._record(rid)
        if state is not None:
            snap = _snapshot(state)
        elif self._last_exact is not None and self._last_exact_rid == rid:
            snap = self._last_exact
        elif rec.kind == "keyframe":
            snap = None
        else:
            raise ValueError("the latest state is not held by this writer: pass state=")
        if snap is not None and (rec.kind != "keyframe" or state is not None):
            if rid[0] != self._head:
                raise ValueError("save a step on this branch first, or pass no state")
            self._commit(rid[1], snap, exact=True, replace=True)
        self._write_json(f"points/{name}.json", {"name": name, "branch": rid[0], "step": rid[1]})
        return rid[1]

    def branch_points(self) -> dict[str, RecId]:
        """Branch point name -> (branch, step)."""
        out = {}
        for n in self.store.list("points"):
            d = self._read_json(n)
            out[str(d["name"])] = (str(d["branch"]), int(d["step"]))
        return out

    def rollback(self, name: str, *, new_branch: str | None = None) -> Any:
        """Return the exact state at branch point ``name`` and continue on a new branch from it.

        The old branch stays readable until :meth:`delete_branch`. The new branch is named
        ``new_branch`` or ``<name>.<k>``; later saves go there with steps after the point's.
        """
        self.wait()
        self._check_writable()
        points = self.branch_points()
        if name not in points:
            raise KeyError(f"no branch point {name!r}")
        rid = points[name]
        existing = set(self.branches())
        if new_branch is None:
            k = 1
            while f"{name}.{k}" in existing:
                k += 1
            new_branch = f"{name}.{k}"
        _check_name(new_branch, "branch")
        if new_branch in existing:
            raise ValueError(f"branch {new_branch!r} exists")
        state = self._restore_rid(rid)
        self._write_json(
            f"branches/{new_branch}.json",
            {"name": new_branch, "parent": {"branch": rid[0], "step": rid[1]}},
        )
        self._write_json("HEAD.json", {"branch": new_branch})
        self._head = new_branch
        self._rebuild_stack()
        self._last_exact = None
        return state

    def branches(self) -> list[str]:
        """Names of the live branches."""
        return sorted(n.rsplit("/", 1)[-1][:-5] for n in self.store.list("branches"))

    @property
    def branch(self) -> str:
        """The branch new saves go to (readers: the writer's branch when opened)."""
        return self._head

    def delete_branch(self, name: str) -> None:
        """Delete a branch that is not the current one, keeping what other branches need."""
        self.wait()
        self._check_writable()
        if name == self._head:
            raise ValueError("cannot delete the current branch; roll back elsewhere first")
        self._branch_info(name)
        self.store.delete(f"branches/{name}.json")
        keep = self._live_closure(self._roots_excluding(name))
        for rid in [(name, s) for s in self._own_steps(name)]:
            if rid not in keep:
                self._delete_record(rid)
        for pname, prid in self.branch_points().items():
            if prid[0] == name and prid not in keep:
                self.store.delete(f"points/{pname}.json")

    # ------------------------------------------------------------------ retention

    def _roots_excluding(self, branch: str | None) -> set[RecId]:
        roots: set[RecId] = set()
        for b in self.branches():
            if b == branch:
                continue
            roots.update((b, s) for s in self._own_steps(b))
            parent = self._branch_info(b).get("parent")
            if parent:
                roots.add((str(parent["branch"]), int(parent["step"])))
        roots.update(self.branch_points().values())
        return roots

    def _live_closure(self, roots: set[RecId]) -> set[RecId]:
        live: set[RecId] = set()
        todo = [r for r in roots if self.store.exists(_record_name(*r)) or r in self._records]
        while todo:
            rid = todo.pop()
            if rid in live:
                continue
            live.add(rid)
            base = self._record(rid).base
            if base is not None:
                todo.append(base)
        return live

    def _delete_record(self, rid: RecId) -> None:
        rec = self._record(rid)
        self.store.delete(_record_name(*rid))  # uncommit first, then its data
        for name in rec.files:
            self.store.delete(name)
        self._records.pop(rid, None)

    def _apply_retention(self) -> None:
        if self.max_to_keep is None and self.keep_every is None:
            return
        own = self._own_steps(self._head)
        kept = set(own[-self.max_to_keep :] if self.max_to_keep else [])
        if self.keep_every:
            kept.update(s for s in own if s % self.keep_every == 0)
        roots = self._roots_excluding(self._head)
        roots.update((self._head, s) for s in kept)
        roots.update(lv.rid for lv in self._stack)
        live = self._live_closure(roots)
        for s in own:
            if (self._head, s) not in live:
                self._delete_record((self._head, s))

    # ------------------------------------------------------------------ reading

    def steps(self, branch: str | None = None) -> list[int]:
        """Restorable steps of ``branch`` (default: the current one), ancestors' included."""
        self._raise_pending()
        return [s for _, s in self._history(branch or self._head)]

    def latest_step(self, branch: str | None = None) -> int | None:
        """The latest committed step of ``branch``, or None."""
        hist = self._history(branch or self._head)
        return hist[-1][1] if hist else None

    def info(self, step: int | None = None, branch: str | None = None) -> dict[str, Any]:
        """Kind, level, base and restore depth of a saved step."""
        rid = self._resolve(step, branch)
        rec = self._record(rid)
        return {
            "branch": rec.branch,
            "step": rec.step,
            "kind": rec.kind,
            "level": rec.level,
            "base": rec.base,
            "depth": self._depth(rid),
            "files": list(rec.files),
        }

    def _depth(self, rid: RecId) -> int:
        n = 1
        rec = self._record(rid)
        while rec.base is not None:
            rec = self._record(rec.base)
            n += 1
        return n

    def restore(self, step: int | None = None, branch: str | None = None) -> Any:
        """The state saved at ``step`` (latest if None) of ``branch``, with the same nesting."""
        self._raise_pending()
        return self._restore_rid(self._resolve(step, branch))

    def restore_into(
        self, step: int | None = None, branch: str | None = None, **objects: Any
    ) -> Any:
        """Call ``obj.load_state_dict(state[name])`` for each ``name=obj``; return the state."""
        state = self.restore(step, branch)
        for name, obj in objects.items():
            if not isinstance(state, dict) or name not in state:
                raise KeyError(f"the saved state has no entry {name!r}")
            obj.load_state_dict(state[name])
        return state

    def _restore_rid(self, rid: RecId) -> Any:
        rec = self._record(rid)
        try:
            sch = self._schema(rec.schema)
        except FileNotFoundError as e:
            raise _corrupt(f"record {rid} names a missing schema {rec.schema}") from e
        tensors, _ = self._decode_tensors(rec, sch, list(range(len(sch.tensors))))
        try:
            return _rebuild(sch.tree, rec.values, tensors)
        except (IndexError, ValueError, KeyError, TypeError) as e:
            raise _corrupt(f"record {rid}: {e}") from e

    def _reconstruct(
        self, rid: RecId, delta_only: bool
    ) -> tuple[dict[str, Any], dict[str, tuple[str, str, tuple[int, ...]]]]:
        rec = self._record(rid)
        sch = self._schema(rec.schema)
        idx = [
            i
            for i, t in enumerate(sch.tensors)
            if not delta_only or (t["dtype"] in _FLOAT_DTYPES and math.prod(t["shape"]) >= 2)
        ]
        tensors, _ = self._decode_tensors(rec, sch, idx)
        recon, meta = {}, {}
        for i in idx:
            t = sch.tensors[i]
            recon[t["path"]] = tensors[i]
            meta[t["path"]] = (t["lib"], t["dtype"], tuple(t["shape"]))
        return recon, meta

    def _decode_tensors(self, rec: _Record, sch: _Schema, idx: list[int]) -> tuple[list[Any], int]:
        if len(rec.entries) != len(sch.tensors):
            raise _corrupt(f"record {rec.rid}: {len(rec.entries)} entries for {len(sch.tensors)}")
        cache = _FileCache(self.store)
        out: list[Any] = [None] * len(sch.tensors)
        jobs = [(i, sch.tensors[i]["path"]) for i in idx]

        def one(i: int) -> Any:
            try:
                return self._decode_one(rec, sch.tensors[i], cache)
            except DeltackptError:
                raise
            except FileNotFoundError as e:
                raise _corrupt(f"record {rec.rid} depends on a missing file: {e}") from e
            except (IndexError, KeyError, TypeError, ValueError, AttributeError) as e:
                # a checksummed but malformed (forged) record or schema: never a crash
                raise _corrupt(f"record {rec.rid}, tensor {i}: {type(e).__name__}: {e}") from e

        if len(jobs) > 1 and self.threads > 1:
            with cf.ThreadPoolExecutor(self.threads) as pool:
                for (i, _), val in zip(jobs, pool.map(one, [i for i, _ in jobs])):
                    out[i] = val
        else:
            for i, _ in jobs:
                out[i] = one(i)
        return out, len(jobs)

    def _blob(self, rec: _Record, entry: list[Any], cache: _FileCache) -> bytes:
        try:
            _, fidx, off, length = entry
            data = cache.get(rec.files[int(fidx)])
        except (ValueError, TypeError, IndexError) as e:
            raise _corrupt(f"record {rec.rid}: bad tensor entry {entry!r}") from e
        if not (0 <= off and off + length <= len(data)):
            raise _corrupt(f"record {rec.rid}: blob [{off}, +{length}) outside its file")
        return data[off : off + length]

    def _decode_one(self, rec: _Record, meta: dict[str, Any], cache: _FileCache) -> Any:
        """Decode one tensor of ``rec`` along its base chain (keyframe first)."""
        path = meta["path"]
        chain: list[tuple[_Record, list[Any], bool]] = []
        cur: _Record | None = rec
        cur_meta = meta
        while True:
            if cur is None:
                raise _corrupt(f"tensor {path}: delta without a base record")
            sch = self._schema(cur.schema)
            i = sch.index.get(path)
            if i is None:
                raise _corrupt(f"tensor {path}: missing in base record {cur.rid}")
            cur_meta = sch.tensors[i]
            entry = cur.entries[i]
            chain.append((cur, entry, bool(cur_meta.get("nonneg"))))
            if entry[0] != "delta":
                break
            cur = self._record(cur.base) if cur.base is not None else None
        first_rec, first, _ = chain[-1]
        blob = self._blob(first_rec, first, cache)
        if first[0] == "raw":
            x = _from_raw(blob, meta["lib"], meta["dtype"], list(meta["shape"]))
            if len(chain) == 1:
                return x
        elif first[0] == "key":
            x = decode(blob)
        else:
            raise _corrupt(f"tensor {path}: unknown mode {first[0]!r}")
        for r, entry, nonneg in reversed(chain[:-1]):
            # x is this restore's own buffer: each delta is applied to it in place
            out = x if writable_host(x) else None
            x = decode(self._blob(r, entry, cache), reference=x, out=out)
            if nonneg:
                x = _clamp0(x)
        if _dtype_name(x) != meta["dtype"] or [int(s) for s in x.shape] != list(meta["shape"]):
            raise _corrupt(f"tensor {path}: decoded {_dtype_name(x)} {list(x.shape)}")
        if (meta["lib"] == "torch") != _is_torch(x):
            raise _corrupt(f"tensor {path}: decoded the wrong array kind")
        return x

    def verify(self, *, decode_all: bool = False) -> dict[str, str]:
        """Check every committed record; return ``{"branch/step": error}`` for the bad ones.

        Reads and checksums each record, its schema and data files; with ``decode_all`` also
        restores every step (slower, decodes every blob along every chain).
        """
        self._raise_pending()
        bad: dict[str, str] = {}
        for rid in sorted(self._all_records(), key=lambda r: (r[0], r[1])):
            try:
                rec = self._record(rid)
                self._schema(rec.schema)
                for name in rec.files:
                    self.store.read(name)
                if rec.base is not None:
                    self._record(rec.base)
                if decode_all:
                    self._restore_rid(rid)
            except (DeltackptError, OSError) as e:
                bad[f"{rid[0]}/{rid[1]}"] = f"{type(e).__name__}: {e}"
        return bad

    def stats(self) -> dict[str, Any]:
        """Bytes stored by kind, raw bytes of all saves, ratio, and max restore depth."""
        by_kind: dict[str, int] = {"keyframe": 0, "anchor": 0, "step": 0}
        count: dict[str, int] = {"keyframe": 0, "anchor": 0, "step": 0}
        raw = 0
        depth = 0
        depths: dict[RecId, int] = {}
        for rid in sorted(self._all_records(), key=lambda r: r[1]):
            rec = self._record(rid)
            size = self.store.size(_record_name(*rid)) + sum(self.store.size(f) for f in rec.files)
            by_kind[rec.kind] = by_kind.get(rec.kind, 0) + size
            count[rec.kind] = count.get(rec.kind, 0) + 1
            raw += rec.raw_bytes
            d = 1 if rec.base is None else depths.get(rec.base) or self._depth(rec.base)
            depths[rid] = d if rec.base is None else d + 1
            depth = max(depth, depths[rid])
        other = sum(self.store.size(n) for n in self.store.list("schemas"))
        stored = sum(by_kind.values()) + other
        return {
            "bytes_by_kind": by_kind,
            "count_by_kind": count,
            "schema_bytes": other,
            "stored_bytes": stored,
            "raw_bytes": raw,
            "ratio": raw / stored if stored else math.inf,
            "max_restore_depth": depth,
            "records": sum(count.values()),
        }

    # ------------------------------------------------------------------ lifecycle

    def wait(self) -> None:
        """Wait for a background save; re-raise its error."""
        self._raise_pending()

    def close(self) -> None:
        """Finish pending work and release the writer lock."""
        if self._closed:
            return
        try:
            self._raise_pending()
        finally:
            self._closed = True
            if self._executor is not None:
                self._executor.shutdown(wait=True)
            if self.mode == "a":
                self.store.release_lock()
            self._stack = []
            self._spare_recon = {}
            self._last_exact = None

    def __enter__(self) -> CheckpointChain:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:
            with contextlib.suppress(Exception):
                self.close()

    def __iter__(self) -> Iterator[int]:
        return iter(self.steps())

    def __repr__(self) -> str:
        return f"CheckpointChain({self.store.url!r}, mode={self.mode!r}, branch={self._head!r})"
