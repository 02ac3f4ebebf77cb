"""The writer lock on fsspec stores: its error type, its lease and the writer epoch."""

from __future__ import annotations

import json
import socket
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from s3_server import S3, s3_endpoint_fixture, s3_fixture  # noqa: F401  (fixtures)

import deltackpt as dk
from deltackpt.chain.records import record_name
from deltackpt.conditional import S3Ops
from deltackpt.store import FsspecStore, LocalStore, open_store


def test_locked_error_is_a_deltackpt_error(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/c"
    holder = open_store(url)
    holder.acquire_lock()
    try:
        with pytest.raises(dk.DeltackptError) as info:  # one `except` catches every refusal
            open_store(url).acquire_lock()
        assert isinstance(info.value, dk.LockedError)
        assert isinstance(info.value, RuntimeError)  # what callers caught before
        assert "mode='r'" in str(info.value)  # says what to do
    finally:
        holder.release_lock()


# --------------------------------------------------------------------------- the lease


def _state(i: int) -> dict[str, np.ndarray]:
    return {"w": np.linspace(-1, 1, 5000, dtype=np.float32) + 0.01 * i}


def _epoch_of(store: FsspecStore, step: int) -> int | None:
    raw = zlib.decompress(store.read(record_name("main", step)))
    return json.loads(raw).get("epoch")


def _foreign_lock(store: FsspecStore, *, renewed_ago: float, lease: float, epoch: int) -> None:
    """The lock of a writer on another host, last renewed ``renewed_ago`` seconds ago."""
    now = time.time()
    info = {"pid": 4242, "host": "elsewhere", "time": now - 999, "token": "t0"}
    info.update(epoch=epoch, lease=lease, renewed=now - renewed_ago)
    store.fs.pipe_file(store._path("LOCK"), json.dumps(info).encode())


@pytest.fixture(params=["s3", "memory"])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "s3":
        return request.getfixturevalue("s3").url("lease")
    return f"memory://lease-{time.time_ns()}/c"


def test_dead_writer_on_another_host_is_taken_over_once_its_lease_expired(url: str) -> None:
    store = FsspecStore(url)
    store.fs.makedirs(store.root, exist_ok=True)
    _foreign_lock(store, renewed_ago=5, lease=30, epoch=4)  # alive as far as anyone knows
    with pytest.raises(dk.LockedError, match="lease of 30 s"):
        dk.CheckpointChain(url)
    _foreign_lock(store, renewed_ago=31, lease=30, epoch=4)  # its lease ran out
    with dk.CheckpointChain(url) as chain:
        assert chain.store.epoch == 5  # one above the dead writer's: its fencing token
        chain.save(0, _state(0))
        info = store.lock_info()
        assert info is not None and info["host"] == socket.gethostname() and info["epoch"] == 5
    assert _epoch_of(store, 0) == 5  # the epoch is written into the commit
    assert store.lock_info() is None
    with dk.CheckpointChain(url) as chain:  # epochs keep counting across clean releases
        assert chain.store.epoch == 6


def test_a_live_writer_renewing_its_lease_is_not_taken_over(url: str) -> None:
    holder = FsspecStore(url, lease=1.5)
    with dk.CheckpointChain(holder) as chain:
        chain.save(0, _state(0))
        time.sleep(4.0)  # over two leases: the holder renewed it meanwhile
        with pytest.raises(dk.LockedError, match="locked by another writer"):
            FsspecStore(url, lease=1.5).acquire_lock()
        chain.save(1, _state(1))  # still the writer
        assert chain.steps() == [0, 1]


def test_a_writer_that_lost_its_lease_is_fenced(url: str) -> None:
    first = FsspecStore(url, lease=1.0)
    a = dk.CheckpointChain(first)
    a.save(0, _state(0))
    lease = first._lease
    assert lease is not None and lease.epoch == 1
    lease._stop.set()  # the process stalls: no more renewals (a GC pause, a partition)
    time.sleep(1.2)
    with pytest.raises(dk.LockedError, match="could not renew"):  # fenced by its own clock
        a.save(1, _state(1))
    with dk.CheckpointChain(FsspecStore(url, lease=1.0), rel_error=1e-4) as b:  # epoch 2
        assert b.store.epoch == 2
        b.save(1, _state(1))
        lease._confirmed = time.monotonic()  # a clock that lies: only the commit stops it
        with pytest.raises(dk.LockedError, match="committed by another writer"):
            a.save(1, _state(7))
        assert not lease.renew()  # its next renewal finds the lock taken over
        with pytest.raises(dk.LockedError, match="lost the lock"):
            a.save(2, _state(2))
        b.save(2, _state(2))
        assert b.steps() == [0, 1, 2]
    assert [_epoch_of(first, s) for s in (0, 1, 2)] == [1, 2, 2]
    with dk.CheckpointChain(url, mode="r") as reader:
        assert np.allclose(reader.restore(1)["w"], _state(1)["w"], atol=1e-3)  # b's save
    a.close()  # the old writer's close leaves the new lock alone


def test_s3_compare_and_swap_is_decided_by_the_server(s3: S3) -> None:
    store = FsspecStore(s3.url("cas"))
    ops = store.ops
    assert isinstance(ops, S3Ops) and ops.atomic
    path = store._path("L")
    tag = ops.create(path, b"one")
    assert tag is not None and ops.create(path, b"two") is None
    seen = ops.read(path)
    assert seen == (b"one", tag)
    new = ops.replace(path, b"three", tag)  # the first of two takers that read `tag`
    assert new is not None
    assert ops.replace(path, b"four", tag) is None  # the second loses
    assert ops.delete(path, tag) is False and ops.read(path) == (b"three", new)
    assert ops.delete(path, new) and ops.read(path) is None


@pytest.mark.parametrize("backend", ["local", "memory", "s3"])
def test_a_commit_never_replaces_an_existing_file(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "local":
        store: LocalStore | FsspecStore = LocalStore(tmp_path / "c")
    elif backend == "memory":
        store = FsspecStore(f"memory://commit-{time.time_ns()}/c")
    else:
        store = FsspecStore(request.getfixturevalue("s3").url("commit"))
    store.write("records/main/000000000001.json", b"first", create=True)
    with pytest.raises(FileExistsError):
        store.write("records/main/000000000001.json", b"second", create=True)
    assert store.read("records/main/000000000001.json") == b"first"
    assert store.list("records") == ["records/main/000000000001.json"]  # no temporaries left
    store.write("records/main/000000000001.json", b"third")  # a rewrite (branch point)
    assert store.read("records/main/000000000001.json") == b"third"
