"""Background saves (``async_save=True``): bounded, failures named by step and never leaving
a half-updated reference (chain/background.py)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import deltackpt as dk
from deltackpt.chain import records as records_mod


def _state(i: int) -> dict[str, Any]:
    rng = np.random.default_rng(i)
    base = np.linspace(-1, 1, 20000, dtype=np.float32)
    return {"w": base + 0.01 * i + 1e-3 * rng.standard_normal(20000).astype(np.float32)}


def _fail_commit_of(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """The record write (the commit, after every tensor was coded and references were updated
    in place) of ``step`` fails as a full disk would."""
    real = records_mod.Records.put

    def put(self: Any, rec: Any, **kw: Any) -> None:
        if rec.step == step:
            raise OSError(28, "No space left on device")
        real(self, rec, **kw)

    monkeypatch.setattr(records_mod.Records, "put", put)


def test_a_failed_background_save_is_named_and_the_next_is_coded_on_committed_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fail_commit_of(monkeypatch, 2)
    with dk.CheckpointChain(
        tmp_path / "c", anchor_every=10, async_save=True, rel_error=1e-3
    ) as chain:
        for i in range(4):
            try:
                chain.save(i, _state(i))
            except dk.SaveError as e:  # the next call may already report it
                failure = e
        try:
            chain.wait()
        except dk.SaveError as e:
            failure = e
        assert failure.step == 2 and "step 2" in str(failure)
        assert isinstance(failure.__cause__, OSError)
        chain.wait()  # raised once
        assert chain.steps() == [0, 1, 3]
        assert tuple(chain.info(3)["base"]) == ("main", 1)  # coded against what was committed
        assert chain.verify(decode_all=True) == {}
        r3 = chain.restore(3)["w"]
        u3 = _state(3)["w"]
        assert np.linalg.norm(r3 - u3) <= 1e-3 * np.linalg.norm(u3)


def test_close_raises_the_failure_of_the_last_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fail_commit_of(monkeypatch, 1)
    chain = dk.CheckpointChain(tmp_path / "c", async_save=True)
    chain.save(0, _state(0))
    chain.save(1, _state(1))
    with pytest.raises(dk.SaveError, match="step 1"):
        chain.close()
    with dk.CheckpointChain(tmp_path / "c", mode="r") as reader:  # the lock was released
        assert reader.steps() == [0]


def test_no_more_than_max_pending_saves_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    started: list[int] = []
    real = records_mod.Records.put

    def put(self: Any, rec: Any, **kw: Any) -> None:
        started.append(rec.step)
        assert gate.wait(60)
        real(self, rec, **kw)

    monkeypatch.setattr(records_mod.Records, "put", put)
    chain = dk.CheckpointChain(tmp_path / "c", async_save=True, max_pending=2, rel_error=1e-3)
    chain.save(0, _state(0))
    chain.save(1, _state(1))  # two in flight: returns
    third = threading.Thread(target=chain.save, args=(2, _state(2)))
    third.start()
    third.join(1.0)
    assert third.is_alive()  # the third waits for room
    gate.set()
    third.join(60)
    chain.close()
    with dk.CheckpointChain(tmp_path / "c", mode="r") as reader:
        assert reader.steps() == [0, 1, 2]
        for i in range(3):
            u = _state(i)["w"]
            assert np.linalg.norm(reader.restore(i)["w"] - u) <= 1e-3 * np.linalg.norm(u)


def test_max_pending_is_checked(tmp_path: Path) -> None:
    with pytest.raises(dk.InvalidArgumentError, match="max_pending"):
        dk.CheckpointChain(tmp_path / "c", async_save=True, max_pending=0)
    assert not (tmp_path / "c" / "LOCK").exists()


def test_cuda_state_is_copied_into_pinned_host_buffers(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no GPU on this machine: the pinned device-to-host path is not run here")
    w = torch.linspace(-1, 1, 20000, device="cuda")
    with dk.CheckpointChain(tmp_path / "c", async_save=True) as chain:
        chain.save(0, {"w": w})
        w.add_(0.01)  # queued after the copy on the same stream: the save keeps step 0
        chain.save(1, {"w": w})
        held = chain._refs.latest
        chain.wait()
        assert chain._refs.latest is not None and chain._refs.latest.leaves[0].value.is_pinned()
        del held
        assert torch.equal(chain.restore(0)["w"], torch.linspace(-1, 1, 20000))
