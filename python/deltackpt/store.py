"""Storage backends of a checkpoint chain: a local directory (default) and fsspec URLs.

A :class:`Store` holds named files (relative POSIX names such as ``records/main/12.json``).
Every file is framed with a checksum and verified on read; every write is atomic:

* Local directory (:class:`LocalStore`): the payload is written to a temporary name in the same
  directory, flushed and fsynced, renamed over the final name (``os.replace``), and the directory
  is fsynced, so a process or machine dying at any moment leaves either the old file, the new
  file, or an ignored temporary.
* fsspec (:class:`FsspecStore`, ``memory://``, ``file://``, ...): the payload is written to a
  temporary name and then moved to the final name (``fs.mv``), which is a rename on file systems
  that support it. No fsync: durability is whatever the file system gives.

Temporary names contain :data:`TMP_MARKER`; :meth:`Store.list` never returns them and the next
writer removes them (:meth:`Store.remove_temporaries`).

Writer lock: a file ``LOCK`` created exclusively (``O_EXCL`` locally, mode ``"xb"`` for fsspec)
holding ``{"pid", "host", "time", "token"}``. A second writer is refused with
:class:`LockedError`. A lock left by a dead process on the same host is stale and is replaced; for
local stores the check-and-replace is serialised with ``flock`` on ``LOCK.guard`` (the kernel
releases it when its holder dies) so two writers recovering the same stale lock cannot both win.
Readers never take the lock. Under the guard, an empty lock (a writer killed between creating
and filling it) is stale too. On fsspec stores the lock is a lease with a writer epoch
(:mod:`deltackpt.lease`): renewed by its holder, taken over once it expired, checked before
every write; commits are create-only (``write(..., create=True)``).

File framing (all integers little-endian)::

    b"DKF2" | xxh3-128 of payload (16 bytes) | payload length (u64) | payload

Files framed ``b"DKF1"`` (blake2b-128 instead of xxh3-128, written before 2026-12) are read as
well. The checksum guards against corrupted or truncated storage, not against forgery.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import socket
import struct
import time
import weakref
from typing import Any

from ._core import checksum128
from .conditional import conditional_ops
from .errors import CorruptDataError, LockedError
from .lease import Lease, lease_seconds, parse_lock

MAGIC = b"DKF2"
MAGIC_BLAKE2 = b"DKF1"  # read only
HEADER = struct.Struct("<4s16sQ")
TMP_MARKER = ".tmp-"
LOCK_NAME = "LOCK"
EPOCH_NAME = "LOCK.epoch"  # fsspec stores: the last writer epoch, kept across releases


def frame_header(payload: bytes) -> bytes:
    """The header that prefixes ``payload`` in a file: magic, xxh3-128 digest, length."""
    return HEADER.pack(MAGIC, checksum128(payload), len(payload))


def frame(payload: bytes) -> bytes:
    """``payload`` prefixed with its :func:`frame_header`."""
    return frame_header(payload) + payload


def unframe(data: bytes, name: str) -> bytes:
    """Check a framed file and return its payload; raise ``CorruptDataError`` on any mismatch."""
    return check_frame(data[: HEADER.size], data[HEADER.size :], name)


def check_frame(header: bytes, payload: bytes, name: str) -> bytes:
    """Check a framed file read as its header and its payload; return the payload."""
    err = CorruptDataError
    if len(header) < HEADER.size:
        raise err(f"{name}: truncated file ({len(header)} bytes)")
    magic, digest, length = HEADER.unpack_from(header)
    if magic not in (MAGIC, MAGIC_BLAKE2):
        raise err(f"{name}: bad magic {magic!r}")
    if len(payload) != length:
        raise err(f"{name}: length {len(payload)} != recorded {length}")
    if magic == MAGIC:
        ok = checksum128(payload) == digest
    else:
        ok = hashlib.blake2b(payload, digest_size=16).digest() == digest
    if not ok:
        raise err(f"{name}: checksum mismatch")
    return payload


def _pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock_payload(token: str) -> bytes:
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "time": time.time(),
        "token": token,
    }
    return json.dumps(info).encode()


def _is_stale(info: dict[str, Any]) -> bool:
    """A lock is stale when it was taken on this host by a process that no longer exists."""
    return info.get("host") == socket.gethostname() and not _pid_alive(int(info.get("pid", -1)))


def _parse_lock(raw: bytes) -> dict[str, Any]:
    try:
        info = json.loads(raw.decode())
        return info if isinstance(info, dict) else {}
    except (UnicodeDecodeError, ValueError):
        return {}


class Store:
    """Abstract store of checksummed, atomically written files."""

    url: str
    epoch: int | None = None  # the writer epoch of the lock held (fsspec leases), else None

    def write(
        self, name: str, payload: bytes, *, sync_dir: bool = True, create: bool = False
    ) -> None:
        """Atomically write ``payload`` (framed with a checksum) under ``name``.

        With ``sync_dir=False`` the rename is not yet durable: call :meth:`sync_dirs` on the
        file's folder before relying on it (batches one directory fsync over many files).
        With ``create=True`` the write fails with ``FileExistsError`` if ``name`` exists
        (a commit never replaces another writer's).
        """
        raise NotImplementedError

    def sync_dirs(self, folders: set[str]) -> None:
        """Make the renames done in ``folders`` durable (no-op where there is no fsync)."""

    def read(self, name: str) -> bytes:
        """Read and verify ``name``; ``CorruptDataError`` if it fails its checksum."""
        return unframe(self.read_raw(name), name)

    def read_raw(self, name: str) -> bytes:
        """The file's bytes as stored (framing included)."""
        raise NotImplementedError

    def read_frame(self, name: str) -> tuple[bytes, bytes]:
        """The file's frame header and payload as stored, unchecked (a store that can read
        them apart spares a copy of the payload: a keyframe's files are tensor-sized)."""
        raw = self.read_raw(name)
        return raw[: HEADER.size], raw[HEADER.size :]

    def exists(self, name: str) -> bool:
        """Whether a committed file ``name`` exists."""
        raise NotImplementedError

    def list(self, prefix: str = "") -> list[str]:
        """Committed file names under the folder ``prefix`` (recursive, sorted, no temporaries)."""
        return sorted(n for n in self._list_all(prefix) if TMP_MARKER not in n.rsplit("/", 1)[-1])

    def _list_all(self, prefix: str) -> list[str]:
        raise NotImplementedError

    def delete(self, name: str) -> None:
        """Remove ``name`` if it exists."""
        raise NotImplementedError

    def size(self, name: str) -> int:
        """Stored size of ``name`` in bytes."""
        raise NotImplementedError

    def allocated(self, name: str) -> int | None:
        """Bytes the file system allocates to ``name`` (whole blocks), or None where the
        store cannot tell (object stores bill the stored size)."""
        return None

    def remove_temporaries(self) -> int:
        """Delete leftovers of unfinished writes; return how many. Writers only."""
        leftovers = [n for n in self._list_all("") if TMP_MARKER in n.rsplit("/", 1)[-1]]
        for name in leftovers:
            self.delete(name)
        return len(leftovers)

    def acquire_lock(self) -> None:
        """Take the writer lock or raise :class:`LockedError`."""
        raise NotImplementedError

    def release_lock(self) -> None:
        """Release the writer lock if this object holds it."""
        raise NotImplementedError

    def lock_info(self) -> dict[str, Any] | None:
        """Content of the lock file, or None when the chain is not locked."""
        try:
            return _parse_lock(self.read_raw(LOCK_NAME))
        except FileNotFoundError:
            return None

    def _tmp_name(self, name: str) -> str:
        head, _, base = name.rpartition("/")
        tmp = f".{base}{TMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}"
        return f"{head}/{tmp}" if head else tmp


def _refuse(url: str, info: dict[str, Any]) -> LockedError:
    try:
        since = time.ctime(float(info.get("time", 0)))
    except (TypeError, ValueError):
        since = "?"
    return LockedError(
        f"chain {url} is locked by another writer (pid {info.get('pid')} on host "
        f"{info.get('host')!r} since {since}); readers may open it "
        f"with mode='r'; if that writer is gone for good, remove the file {LOCK_NAME}"
    )


_HOLDERS: weakref.WeakSet[LocalStore] = weakref.WeakSet()
# How long a new writer retries a busy kernel lock before refusing: a process forked from the
# last writer (a DataLoader worker) holds a copy of its descriptor until the child runs its
# at-fork handler, which a loaded machine may schedule after the parent has closed and reopened.
_FLOCK_PATIENCE = 2.0


def _drop_locks_in_child() -> None:
    """A forked child (a DataLoader worker) is not the writer: close its copies of the kernel
    lock descriptors, so that the lock is released when the writer itself ends."""
    for store in list(_HOLDERS):
        if store._held is not None:
            with contextlib.suppress(OSError):
                os.close(store._held)
        store._held, store._token = None, None
    _HOLDERS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_locks_in_child)


class LocalStore(Store):
    """A directory on the local file system, with fsync-based crash safety."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.url = self.root
        self._token: str | None = None
        self._held: int | None = None  # the descriptor holding flock(LOCK.guard)
        self._real_root = os.path.realpath(self.root)
        self._inside: set[str] = set()  # folders whose real path is inside the chain

    def _is_inside(self, real: str) -> bool:
        return real == self._real_root or real.startswith(self._real_root + os.sep)

    def _path(self, name: str) -> str:
        """The file of ``name``, which must stay inside the chain directory: no absolute name,
        no ``..`` or empty component, no symlink leading out (names may come from files)."""
        parts = name.split("/")
        if not name or any(p in ("", ".", "..") or os.sep in p or "\0" in p for p in parts):
            raise CorruptDataError(
                f"refusing the path {name!r}: it would leave the chain directory"
            )
        path = os.path.join(self.root, *parts)
        folder = os.path.dirname(path)
        if folder not in self._inside:  # one realpath per folder, then one lstat per file
            if not self._is_inside(os.path.realpath(folder)):
                raise CorruptDataError(
                    f"refusing {name!r}: a symlink leads out of the chain directory"
                )
            self._inside.add(folder)
        if os.path.islink(path) and not self._is_inside(os.path.realpath(path)):
            raise CorruptDataError(f"refusing {name!r}: a symlink leads out of the chain directory")
        return path

    def _fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _makedirs(self, path: str) -> None:
        if os.path.isdir(path):
            return
        parent = os.path.dirname(path)
        self._makedirs(parent)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path)
        self._fsync_dir(parent)

    def write(
        self, name: str, payload: bytes, *, sync_dir: bool = True, create: bool = False
    ) -> None:
        final = self._path(name)
        folder = os.path.dirname(final)
        self._makedirs(folder)
        tmp = self._path(self._tmp_name(name))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            for part in (frame_header(payload), payload):  # no copy of the payload
                view = memoryview(part)
                while view:
                    view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.close(fd)
        if create:
            try:
                os.link(tmp, final)  # atomic, and never over an existing file
            finally:
                os.unlink(tmp)
        else:
            os.replace(tmp, final)
        if sync_dir:
            self._fsync_dir(folder)

    def sync_dirs(self, folders: set[str]) -> None:
        for folder in sorted(folders):
            self._fsync_dir(self._path(folder))

    def read_raw(self, name: str) -> bytes:
        with open(self._path(name), "rb") as f:
            return f.read()

    def read_frame(self, name: str) -> tuple[bytes, bytes]:
        with open(self._path(name), "rb") as f:
            return f.read(HEADER.size), f.read()

    def exists(self, name: str) -> bool:
        return os.path.isfile(self._path(name))

    def _list_all(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.root
        out: list[str] = []
        for dirpath, _dirs, files in os.walk(base):
            rel = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            for f in files:
                out.append(f if rel == "." else f"{rel}/{f}")
        return out

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(name))

    def size(self, name: str) -> int:
        return os.path.getsize(self._path(name))

    def allocated(self, name: str) -> int | None:
        return os.stat(self._path(name)).st_blocks * 512

    def _hold_kernel_lock(self) -> int | None:
        """Take ``flock(LOCK.guard)`` without waiting; the open descriptor (held for the
        writer's life) or None when another live writer holds it. The kernel releases it when
        its holder dies, whatever pid namespace that holder ran in."""
        import fcntl

        fd = os.open(self._path(LOCK_NAME + ".guard"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def acquire_lock(self) -> None:
        """Hold the kernel lock for the writer's life, then (re)write ``LOCK``. While the
        kernel lock is held, a ``LOCK`` left by a writer of this host is stale whatever its pid
        says (its writer died: the kernel released its flock); one from another host is never
        broken (its file system may not share flocks)."""
        self._makedirs(self.root)
        fd = self._hold_kernel_lock()
        deadline = time.monotonic() + _FLOCK_PATIENCE
        while fd is None and time.monotonic() < deadline:
            time.sleep(0.02)
            fd = self._hold_kernel_lock()
        if fd is None:
            raise _refuse(self.url, self.lock_info() or {})
        try:
            self._write_lock_file()
        except BaseException:
            os.close(fd)
            raise
        self._held = fd
        _HOLDERS.add(self)

    def _write_lock_file(self) -> None:
        token = secrets.token_hex(8)
        lock = self._path(LOCK_NAME)
        info = self.lock_info()
        if info and info.get("host") not in (None, socket.gethostname()):
            raise _refuse(self.url, info)
        if info is not None:
            os.unlink(lock)  # a dead writer's (we hold the kernel lock)
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, _lock_payload(token))
            os.fsync(fd)
        finally:
            os.close(fd)
        self._fsync_dir(self.root)
        self._token = token

    def release_lock(self) -> None:
        if self._token is not None:
            info = self.lock_info() or {}
            if info.get("token") == self._token:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._path(LOCK_NAME))
            self._token = None
        if self._held is not None:
            os.close(self._held)  # releases the kernel lock, last
            self._held = None


class FsspecStore(Store):
    """Any fsspec file system (``memory://``, ``file://``, object stores, ...)."""

    def __init__(self, url: str, *, lease: float | None = None, **storage_options: Any) -> None:
        import fsspec

        self.url = url
        self.fs, root = fsspec.core.url_to_fs(url, **storage_options)
        self.root = root.rstrip("/")
        self.ops = conditional_ops(self.fs)
        self.lease_seconds = lease_seconds(lease)
        self._lease: Lease | None = None

    @property
    def epoch(self) -> int | None:  # type: ignore[override]
        return None if self._lease is None else self._lease.epoch

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}" if name else self.root

    def write(
        self, name: str, payload: bytes, *, sync_dir: bool = True, create: bool = False
    ) -> None:
        del sync_dir  # no fsync on fsspec file systems
        if self._lease is not None:
            self._lease.check()  # fencing: a writer that lost its lease writes nothing
        final = self._path(name)
        if create and self.ops.atomic:  # one conditional PUT: whole, and only if absent
            if self.ops.create(final, frame(payload)) is None:
                raise FileExistsError(f"{self.url}/{name} exists (written by another writer)")
            return
        folder = final.rsplit("/", 1)[0]
        self.fs.makedirs(folder, exist_ok=True)
        tmp = self._path(self._tmp_name(name))
        with self.fs.open(tmp, "wb") as f:
            f.write(frame(payload))
        try:
            if create and self.fs.exists(final):  # two steps: no server-side condition here
                raise FileExistsError(f"{self.url}/{name} exists (written by another writer)")
            self.fs.mv(tmp, final)
        except BaseException:
            with contextlib.suppress(Exception):
                self.fs.rm(tmp)
            raise

    def read_raw(self, name: str) -> bytes:
        try:
            return bytes(self.fs.cat_file(self._path(name)))
        except FileNotFoundError:
            raise
        except OSError as e:
            if e.errno == errno.ENOENT:
                raise FileNotFoundError(name) from e
            raise

    def exists(self, name: str) -> bool:
        return bool(self.fs.isfile(self._path(name)))

    def _list_all(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not self.fs.exists(base):
            return []
        strip = self.root.lstrip("/")
        out = []
        for p in self.fs.find(base):
            rel = p.lstrip("/")[len(strip) :].lstrip("/")
            out.append(rel)
        return out

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self._path(name))

    def size(self, name: str) -> int:
        return int(self.fs.size(self._path(name)))

    def acquire_lock(self) -> None:
        """Take the lock as a lease (:mod:`deltackpt.lease`): refused while another writer
        renews it, taken over once it expired, with a writer epoch one above the last."""
        if self._lease is not None:
            return
        self.fs.makedirs(self.root, exist_ok=True)
        try:
            last = int(json.loads(self.read(EPOCH_NAME))["epoch"])
        except FileNotFoundError:
            last = 0
        except (CorruptDataError, KeyError, TypeError, ValueError):
            last = 0  # a torn count: the lock's own epoch still orders takeovers
        lease = Lease(self.ops, self._path(LOCK_NAME), self.url, self.lease_seconds)
        lease.acquire(last)
        self._lease = lease
        try:
            self.write(EPOCH_NAME, json.dumps({"epoch": lease.epoch}).encode())
        except BaseException:
            self.release_lock()
            raise

    def release_lock(self) -> None:
        if self._lease is not None:
            lease, self._lease = self._lease, None
            lease.release()

    def lock_info(self) -> dict[str, Any] | None:
        seen = self.ops.read(self._path(LOCK_NAME))
        return None if seen is None else parse_lock(seen[0])


def open_store(path_or_url: str | os.PathLike[str] | Store, **storage_options: Any) -> Store:
    """A :class:`LocalStore` for plain paths, an :class:`FsspecStore` for ``scheme://`` URLs."""
    if isinstance(path_or_url, Store):
        return path_or_url
    text = os.fspath(path_or_url)
    if "://" in text:
        return FsspecStore(text, **storage_options)
    return LocalStore(text)
