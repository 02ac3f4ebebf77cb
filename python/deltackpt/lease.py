"""The writer lock of an fsspec store: a lease renewed by its holder, and a writer epoch.

``LOCK`` holds ``{"pid", "host", "time", "token", "epoch", "lease", "renewed"}``. It is
created only if absent (:meth:`~.conditional.PlainOps.create`; ``If-None-Match: *`` on S3).
While the writer lives, a daemon thread rewrites it every ``lease / 3`` seconds with a new
``renewed`` time, compare-and-swap on the version it wrote last (``If-Match`` on S3), so a
writer that lost the lock finds out at its next renewal.

Taking over: a lock is *expired* when its ``renewed + lease`` is in the past by the taker's
clock (or its pid is dead on this host); a new writer then replaces it by compare-and-swap on
the version it read, with ``epoch`` one above the last one (``LOCK.epoch`` keeps the count
across clean releases). Two takers of the same expired lock cannot both win on S3; the loser
gets :class:`LockedError`.

Fencing: the holder checks before every write (:meth:`Lease.check`) that it has not lost the
lock and that its last renewal was confirmed less than ``3/4`` of the lease ago by its own
monotonic clock; otherwise the write raises :class:`LockedError`. A taker waits the whole lease
by its wall clock, so clocks may disagree by up to a quarter of the lease. The epoch is written
into every record the holder commits (``Record.epoch``), and commits are create-if-absent, so a
writer that resumed after a pause never overwrites the commit of the writer that took over.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from typing import Any

from .conditional import PlainOps
from .errors import LockedError

LEASE_ENV = "DELTACKPT_LEASE_SECONDS"
DEFAULT_LEASE = 60.0
SAFETY = 0.25  # the holder stops writing this fraction of the lease before a taker may start


def lease_seconds(given: float | None = None) -> float:
    """The lease: ``given``, else ``$DELTACKPT_LEASE_SECONDS``, else 60 seconds."""
    value = given if given is not None else float(os.environ.get(LEASE_ENV, DEFAULT_LEASE))
    if not value > 0:
        raise ValueError(f"the lock's lease must be > 0 seconds, not {value!r} (${LEASE_ENV})")
    return float(value)


def parse_lock(raw: bytes) -> dict[str, Any]:
    try:
        info = json.loads(raw.decode())
        return info if isinstance(info, dict) else {}
    except (UnicodeDecodeError, ValueError):
        return {}


def _pid_dead_here(info: dict[str, Any]) -> bool:
    if info.get("host") != socket.gethostname():
        return False
    try:
        pid = int(info.get("pid", -1))
        if pid <= 0:
            return True
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, TypeError, ValueError, OverflowError):
        return False
    return False


def expired(info: dict[str, Any], now: float) -> bool:
    """Whether a lock may be taken over: its lease ran out, or its pid died on this host.
    Locks written without a lease (earlier versions) expire only with their pid."""
    if _pid_dead_here(info):
        return True
    try:
        return now > float(info["renewed"]) + float(info["lease"])
    except (KeyError, TypeError, ValueError):
        return False


def refusal(url: str, info: dict[str, Any]) -> LockedError:
    """The error of a writer refused by a live lock: who holds it, what to do."""
    try:
        since = time.ctime(float(info.get("time", 0)))
    except (TypeError, ValueError):
        since = "?"
    lease = ""
    if "lease" in info and "renewed" in info:
        lease = f", lease of {info['lease']:g} s renewed at {time.ctime(float(info['renewed']))}"
    return LockedError(
        f"chain {url} is locked by another writer (pid {info.get('pid')} on host "
        f"{info.get('host')!r} since {since}{lease}); readers may open it with mode='r'; "
        f"if that writer is gone for good, wait for its lease to expire or remove the file LOCK"
    )


class Lease:
    """One writer's hold on ``LOCK`` of a store: acquire, renew in the background, check
    before each write, release."""

    def __init__(self, ops: PlainOps, path: str, url: str, seconds: float) -> None:
        self.ops, self.path, self.url, self.seconds = ops, path, url, seconds
        self.token = secrets.token_hex(8)
        self.epoch = 0
        self._tag: str | None = None
        self._confirmed = 0.0  # monotonic time a successful write of the lock started
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()

    def _payload(self, started: float) -> bytes:
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "time": started,
            "token": self.token,
            "epoch": self.epoch,
            "lease": self.seconds,
            "renewed": time.time(),
        }
        return json.dumps(info).encode()

    def acquire(self, last_epoch: int) -> None:
        """Take the lock (fresh, or over an expired one) or raise :class:`LockedError`."""
        started = time.time()
        for _ in range(3):
            seen = self.ops.read(self.path)
            info = {} if seen is None else parse_lock(seen[0])
            self.epoch = max(last_epoch, int(info.get("epoch", 0) or 0)) + 1
            t0 = time.monotonic()
            if seen is None:
                tag = self.ops.create(self.path, self._payload(started))
            elif info and expired(info, time.time()):
                tag = self.ops.replace(self.path, self._payload(started), seen[1])
            else:
                raise refusal(self.url, info)
            if tag is not None:
                self._tag, self._confirmed = tag, t0
                self._start_renewing()
                return
        raise refusal(self.url, parse_lock((self.ops.read(self.path) or (b"", ""))[0]))

    def _start_renewing(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, name="deltackpt-lease")
        self._thread.daemon = True
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                if not self.renew():
                    return
            except Exception:  # noqa: BLE001 - unreachable store: check() fences on age
                continue

    def renew(self) -> bool:
        """Rewrite the lock with a new ``renewed`` time; False once it is lost."""
        with self._mutex:
            if self._lost is not None or self._tag is None:
                return False
            t0 = time.monotonic()
            info = parse_lock((self.ops.read(self.path) or (b"", ""))[0])
            tag = self.ops.replace(self.path, self._payload(float(info.get("time", 0))), self._tag)
            if tag is None:
                self._lost = (
                    f"it was taken over by pid {info.get('pid')} on host {info.get('host')!r} "
                    f"(epoch {info.get('epoch')}) after this writer's lease expired"
                    if info
                    else "the file LOCK was removed"
                )
                return False
            self._tag, self._confirmed = tag, t0
            return True

    def check(self) -> None:
        """Raise :class:`LockedError` unless this writer may still write (fencing)."""
        if self._lost is not None:
            raise LockedError(
                f"this writer (epoch {self.epoch}) lost the lock of {self.url}: {self._lost}; "
                "nothing more is written; reopen the chain to continue from its latest commit"
            )
        age = time.monotonic() - self._confirmed
        if age > self.seconds * (1 - SAFETY):
            raise LockedError(
                f"this writer (epoch {self.epoch}) could not renew its {self.seconds:g} s lease "
                f"on {self.url} for {age:.1f} s (store unreachable?): it stops writing before "
                "another writer may take over; reopen the chain once the store answers"
            )

    def release(self) -> None:
        """Stop renewing and remove the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._mutex:
            if self._lost is None and self._tag is not None:
                self.ops.delete(self.path, self._tag)
            self._tag = None
