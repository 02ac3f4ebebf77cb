"""Tests of deltackpt.store: atomic checksummed files, writer lock, fsspec backends."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

import deltackpt as dk
from deltackpt.store import (
    LOCK_NAME,
    TMP_MARKER,
    FsspecStore,
    LocalStore,
    Store,
    open_store,
)

# the directory holding the deltackpt package under test (in-tree build or installed wheel)
PY_DIR = str(Path(dk.__file__).resolve().parents[1])


def _stores(tmp_path: Path) -> list[Store]:
    return [
        LocalStore(tmp_path / "local"),
        open_store(f"memory://store-{uuid.uuid4().hex}"),
        open_store(f"file://{tmp_path / 'viafsspec'}"),
    ]


def test_open_store_picks_backend(tmp_path: Path) -> None:
    assert isinstance(open_store(tmp_path), LocalStore)
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    assert isinstance(open_store("memory://x"), FsspecStore)
    s = LocalStore(tmp_path)
    assert open_store(s) is s


@pytest.mark.parametrize("backend", [0, 1, 2])
def test_roundtrip_list_delete(tmp_path: Path, backend: int) -> None:
    store = _stores(tmp_path)[backend]
    payloads = {"a/b/c.bin": os.urandom(1000), "a/d.json": b"{}", "top": b""}
    for name, data in payloads.items():
        store.write(name, data)
    for name, data in payloads.items():
        assert store.read(name) == data
        assert store.exists(name)
        assert store.size(name) == len(data) + 28
    assert store.list("a") == ["a/b/c.bin", "a/d.json"]
    assert store.list("missing") == []
    store.write("a/d.json", b'{"v": 2}')  # overwrite is atomic too
    assert store.read("a/d.json") == b'{"v": 2}'
    store.delete("a/d.json")
    store.delete("a/d.json")  # idempotent
    assert not store.exists("a/d.json")
    with pytest.raises(FileNotFoundError):
        store.read("a/d.json")


@pytest.mark.parametrize("backend", [0, 1, 2])
def test_every_flipped_byte_is_detected(tmp_path: Path, backend: int) -> None:
    store = _stores(tmp_path)[backend]
    store.write("f", b"hello checkpoint chain")
    raw = store.read_raw("f")
    local = isinstance(store, LocalStore)
    for i in range(len(raw)):
        bad = bytearray(raw)
        bad[i] ^= 0x10
        if local:
            Path(store._path("f")).write_bytes(bytes(bad))
        else:
            assert isinstance(store, FsspecStore)
            store.fs.pipe_file(store._path("f"), bytes(bad))
        with pytest.raises(dk.CorruptDataError):
            store.read("f")
    for cut in (0, 5, len(raw) - 1):
        if local:
            Path(store._path("f")).write_bytes(raw[:cut])
        else:
            assert isinstance(store, FsspecStore)
            store.fs.pipe_file(store._path("f"), raw[:cut])
        with pytest.raises(dk.CorruptDataError):
            store.read("f")


@pytest.mark.parametrize("backend", [0, 1])
def test_temporaries_ignored_and_cleaned(tmp_path: Path, backend: int) -> None:
    store = _stores(tmp_path)[backend]
    store.write("d/x", b"1")
    leftover = f"d/.y{TMP_MARKER}123-abcd"
    if isinstance(store, LocalStore):
        Path(store._path(leftover)).write_bytes(b"partial")
    else:
        assert isinstance(store, FsspecStore)
        store.fs.pipe_file(store._path(leftover), b"partial")
    assert store.list("d") == ["d/x"]
    assert store.remove_temporaries() == 1
    assert store.list("d") == ["d/x"]
    assert store.remove_temporaries() == 0


@pytest.mark.parametrize("backend", [0, 1, 2])
def test_second_writer_refused_reader_allowed(tmp_path: Path, backend: int) -> None:
    store = _stores(tmp_path)[backend]
    store.acquire_lock()
    info = store.lock_info()
    assert info is not None and info["pid"] == os.getpid() and info["host"] == socket.gethostname()
    other = open_store(store.url) if backend else LocalStore(tmp_path / "local")
    with pytest.raises(dk.LockedError, match="locked by another writer"):
        other.acquire_lock()
    store.write("x", b"data")
    assert other.read("x") == b"data"  # readers need no lock
    other.release_lock()  # not the holder: no effect
    assert store.lock_info() is not None
    store.release_lock()
    assert store.lock_info() is None
    other.acquire_lock()
    other.release_lock()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("backend", [0, 1])
def test_stale_lock_recovered_foreign_host_kept(tmp_path: Path, backend: int) -> None:
    store = _stores(tmp_path)[backend]
    store.write("keep", b"k")
    stale = {
        "pid": _dead_pid(),
        "host": socket.gethostname(),
        "time": 0.0,
        "token": "old",
    }
    foreign = {
        "pid": _dead_pid(),
        "host": "some-other-host",
        "time": 0.0,
        "token": "far",
    }

    def put_lock(info: dict[str, object]) -> None:
        raw = json.dumps(info).encode()
        if isinstance(store, LocalStore):
            Path(store._path(LOCK_NAME)).write_bytes(raw)
        else:
            assert isinstance(store, FsspecStore)
            store.fs.pipe_file(store._path(LOCK_NAME), raw)

    put_lock(stale)
    store.acquire_lock()
    info = store.lock_info()
    assert info is not None and info["pid"] == os.getpid() and info["token"] != "old"
    store.release_lock()
    put_lock(foreign)  # a live writer elsewhere cannot be checked: refused
    with pytest.raises(dk.LockedError):
        store.acquire_lock()
    assert store.read("keep") == b"k"


def test_kill_during_writes_leaves_only_complete_files(tmp_path: Path) -> None:
    """SIGKILL a process that overwrites files in a loop: every listed file verifies."""
    root = tmp_path / "killed"
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {PY_DIR!r})
        from deltackpt.store import LocalStore
        s = LocalStore({str(root)!r})
        s.acquire_lock()
        print("ready", flush=True)
        i = 0
        while True:
            s.write(f"f/{{i % 7}}", os.urandom(4096 + i % 5000))
            i += 1
        """
    )
    import random

    rng = random.Random(1234)
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        import time

        time.sleep(rng.uniform(0.05, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        store = LocalStore(root)
        names = store.list("f")
        assert names, "the writer committed nothing"
        for name in names:
            assert len(store.read(name)) >= 4096
        store.acquire_lock()  # the killed writer's lock is stale
        store.remove_temporaries()
        assert not [n for n in store._list_all("f") if TMP_MARKER in n]
        store.release_lock()


def test_empty_lock_left_by_a_writer_killed_mid_acquire_is_recovered(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "e")
    store.acquire_lock()
    store.release_lock()
    Path(store._path(LOCK_NAME)).write_bytes(b"")  # O_EXCL create done, content never written
    store.acquire_lock()
    info = store.lock_info()
    assert info is not None and info["pid"] == os.getpid()
    store.release_lock()
    garbage = LocalStore(tmp_path / "g")
    Path(tmp_path / "g").mkdir()
    Path(garbage._path(LOCK_NAME)).write_text('{"pid": 1, "host": "elsewhere", "time": "x"}')
    with pytest.raises(dk.LockedError, match="since \\?"):
        garbage.acquire_lock()


def test_files_framed_by_earlier_versions_are_read(tmp_path: Path) -> None:
    """Files written before the xxh3-128 frames (b"DKF1", blake2b-128) still read, and their
    checksum is still enforced."""
    import hashlib
    import struct

    payload = os.urandom(5000)
    digest = hashlib.blake2b(payload, digest_size=16).digest()
    old = struct.pack("<4s16sQ", b"DKF1", digest, len(payload)) + payload
    store = LocalStore(tmp_path)
    (tmp_path / "old.bin").write_bytes(old)
    assert store.read("old.bin") == payload
    bad = bytearray(old)
    bad[-1] ^= 1
    (tmp_path / "bad.bin").write_bytes(bytes(bad))
    with pytest.raises(dk.CorruptDataError, match="checksum"):
        store.read("bad.bin")
    store.write("new.bin", payload)
    assert (tmp_path / "new.bin").read_bytes()[:4] == b"DKF2"
    assert store.read("new.bin") == payload
