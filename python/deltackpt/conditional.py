"""Conditional writes on fsspec file systems: create-if-absent and compare-and-swap.

The writer lock's lease (:mod:`deltackpt.lease`) and the commit of a record need two
operations that a plain file system API does not give atomically:

* ``create(path, data)``: write ``data`` only if ``path`` does not exist;
* ``replace(path, data, tag)``: overwrite ``path`` only if it still is the version ``tag``
  (read with :meth:`read`), and ``delete(path, tag)`` likewise.

:class:`S3Ops` has the server decide (S3 conditional writes: ``If-None-Match: *`` and
``If-Match: <ETag>`` on ``PutObject``/``DeleteObject``, honoured by AWS S3 and by moto; other
S3-compatible servers may ignore them, see docs/CHAIN.md). :class:`PlainOps`, for every other
fsspec file system, creates with mode ``"xb"`` (exclusive on local and memory file systems)
and compares-then-swaps in two steps: correct against a dead writer, racy between two live
takers (``atomic = False`` says so).
"""

from __future__ import annotations

import contextlib
from typing import Any

from ._core import checksum128


class PlainOps:
    """Conditional writes on a file system without server-side conditions."""

    atomic = False

    def __init__(self, fs: Any) -> None:
        self.fs = fs

    def read(self, path: str) -> tuple[bytes, str] | None:
        """``(content, tag)`` of ``path``, or None if it does not exist."""
        try:
            data = bytes(self.fs.cat_file(path))
        except FileNotFoundError:
            return None
        return data, checksum128(data).hex()

    def create(self, path: str, data: bytes) -> str | None:
        """Write ``data`` if ``path`` does not exist: its tag, or None if it exists."""
        try:
            with self.fs.open(path, "xb") as f:
                f.write(data)
        except FileExistsError:
            return None
        return checksum128(data).hex()

    def replace(self, path: str, data: bytes, tag: str) -> str | None:
        """Overwrite ``path`` if it still is version ``tag``: the new tag, or None."""
        now = self.read(path)
        if now is None or now[1] != tag:
            return None
        self.fs.pipe_file(path, data)
        return checksum128(data).hex()

    def delete(self, path: str, tag: str) -> bool:
        """Remove ``path`` if it still is version ``tag``."""
        now = self.read(path)
        if now is None or now[1] != tag:
            return False
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(path)
        return True


class S3Ops(PlainOps):
    """Conditional writes decided by the S3 server (``If-None-Match`` / ``If-Match``)."""

    atomic = True

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        bucket, key, _ = self.fs.split_path(path)
        return self.fs.call_s3(method, Bucket=bucket, Key=key, **kwargs)

    def read(self, path: str) -> tuple[bytes, str] | None:
        # the tag first: content newer than its tag only makes a later swap fail (safe);
        # content older than its tag could make a swap succeed on what was not read
        self.fs.invalidate_cache(path)
        try:
            tag = str(self.fs.info(path)["ETag"])
            data = bytes(self.fs.cat_file(path))
        except FileNotFoundError:
            return None
        return data, tag

    def create(self, path: str, data: bytes) -> str | None:
        try:
            out = self._call("put_object", path, Body=data, IfNoneMatch="*")
        except FileExistsError:  # s3fs's name for 412 Precondition Failed here
            return None
        finally:
            self.fs.invalidate_cache(path)
        return str(out["ETag"])

    def replace(self, path: str, data: bytes, tag: str) -> str | None:
        try:
            out = self._call("put_object", path, Body=data, IfMatch=tag)
        except OSError:
            if self._changed(path, tag):  # 412: someone else's version is there now
                return None
            raise
        finally:
            self.fs.invalidate_cache(path)
        return str(out["ETag"])

    def delete(self, path: str, tag: str) -> bool:
        try:
            self._call("delete_object", path, IfMatch=tag)
        except OSError:
            if self._changed(path, tag):
                return False
            raise
        finally:
            self.fs.invalidate_cache(path)
        return True

    def _changed(self, path: str, tag: str) -> bool:
        now = self.read(path)
        return now is None or now[1] != tag


def conditional_ops(fs: Any) -> PlainOps:
    """The conditional writes of ``fs``: server-side on S3, two-step elsewhere."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    if any(p in ("s3", "s3a") for p in protocols) and hasattr(fs, "call_s3"):
        return S3Ops(fs)
    return PlainOps(fs)
