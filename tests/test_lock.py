"""The writer lock is a kernel lock (flock on LOCK.guard) held for the writer's life: a second
writer is refused while the first lives, whatever the pid in LOCK says, and recovered once
the first has died, even when its pid was reused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import deltackpt as dk

PY_DIR = str(Path(dk.__file__).resolve().parents[1])

WRITER = textwrap.dedent(
    """
    import sys, time, torch
    sys.path.insert(0, {py!r})
    import deltackpt as dk
    chain = dk.CheckpointChain({root!r})
    chain.save(0, {{"w": torch.ones(100)}})
    print("ready", flush=True)
    time.sleep(600)
    """
)

SECOND = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {py!r})
    import deltackpt as dk
    try:
        with dk.CheckpointChain({root!r}) as chain:
            chain.save(1, {{"w": torch.zeros(100)}})
        print("took the lock")
    except dk.LockedError:
        print("refused")
    """
)


@pytest.fixture
def live_writer(tmp_path: Path):
    root = tmp_path / "c"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER.format(py=PY_DIR, root=str(root))],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield root, proc
    finally:
        proc.kill()
        proc.wait()


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_a_writer_whose_pid_looks_dead_is_still_refused(live_writer) -> None:
    # What a writer in another PID namespace sees: LOCK names a pid that does not exist here.
    root, _ = live_writer
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    info = json.loads((root / "LOCK").read_text())
    (root / "LOCK").write_text(json.dumps({**info, "pid": dead.pid}))
    before = _files(root)
    with pytest.raises(dk.LockedError):
        dk.CheckpointChain(root)
    assert _files(root) == before  # no garbage collection of the live writer's files


@pytest.mark.skipif(not shutil.which("unshare"), reason="needs unshare(1)")
def test_a_second_writer_in_another_pid_namespace_is_refused(live_writer) -> None:
    root, _ = live_writer
    cmd = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c"]
    code = SECOND.format(py=PY_DIR, root=str(root))
    out = subprocess.run([*cmd, code], capture_output=True, text=True, timeout=120)
    if out.returncode != 0 and "unshare" in out.stderr:
        pytest.skip(f"cannot create a pid namespace here: {out.stderr.strip()}")
    assert out.stdout.strip() == "refused", out.stderr[-2000:]
    assert dk.CheckpointChain(root, mode="r").steps() == [0]


def test_a_killed_writer_is_recovered_even_when_its_pid_was_reused(live_writer) -> None:
    root, proc = live_writer
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    info = json.loads((root / "LOCK").read_text())
    (root / "LOCK").write_text(json.dumps({**info, "pid": os.getpid()}))  # a live pid
    with dk.CheckpointChain(root) as chain:
        chain.save(1, {"w": torch.zeros(100)})
    assert not (root / "LOCK").exists()


def test_a_forked_child_does_not_keep_the_lock(tmp_path: Path) -> None:
    # DataLoader workers are forked from the writer: the lock ends with the writer.
    root = tmp_path / "c"
    chain = dk.CheckpointChain(root)
    chain.save(0, {"w": torch.ones(10)})
    pid = os.fork()
    if pid == 0:  # the child outlives the writer's close
        time.sleep(3)
        os._exit(0)
    try:
        chain.close()
        with dk.CheckpointChain(root) as again:
            again.save(1, {"w": torch.ones(10)})
    finally:
        os.waitpid(pid, 0)
