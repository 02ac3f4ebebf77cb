"""The memory-light writer: one reconstruction in RAM, the others decoded from disk when an
anchor is coded against them (chain/references.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import deltackpt as dk
from deltackpt.chain import references


def _state(i: int) -> dict[str, Any]:
    rng = np.random.default_rng(i)
    base = np.linspace(-1, 1, 30000, dtype=np.float32).reshape(300, 100)
    return {
        "w": base + 0.01 * i + 1e-3 * rng.standard_normal(base.shape).astype(np.float32),
        "v": np.full(5000, 0.5 + 0.001 * i, dtype=np.float32),
        "step": i,
    }


def _in_ram(chain: dk.CheckpointChain) -> list[bool]:
    return [lv.recon is not None for lv in chain._refs.levels]


def test_only_the_latest_reconstruction_is_held(tmp_path: Path) -> None:
    with dk.CheckpointChain(tmp_path / "c", anchor_every=3, rel_error=1e-3) as chain:
        for i in range(14):
            chain.save(i, _state(i))
            held = _in_ram(chain)
            assert held[-1] and not any(held[:-1]), (i, held)
        assert len(chain._refs.levels) >= 3  # keyframe, anchors of two levels, a step
        assert chain.verify(decode_all=True) == {}
        for i in range(14):
            u, r = _state(i)["w"], chain.restore(i)["w"]
            assert np.linalg.norm(r - u) <= 1e-3 * np.linalg.norm(u), i
    with dk.CheckpointChain(tmp_path / "c", anchor_every=3) as chain:  # reopened: the same
        held = _in_ram(chain)
        assert held[-1] and not any(held[:-1])
        chain.save(14, _state(14))
        assert chain.verify() == {}


def test_a_failed_decode_of_an_anchor_base_leaves_a_writer_that_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = references.decode_into_buffers
    calls = {"n": 0}

    def flaky(*a: Any, **k: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(5, "Input/output error")
        return real(*a, **k)

    with dk.CheckpointChain(tmp_path / "c", anchor_every=3, rel_error=1e-3) as chain:
        for i in range(3):
            chain.save(i, _state(i))
        monkeypatch.setattr(references, "decode_into_buffers", flaky)
        with pytest.raises(OSError):
            chain.save(3, _state(3))  # an anchor: its base (the keyframe) is read from disk
        assert not _in_ram(chain)[-1]  # the top was partly freed: evicted, not half-held
        chain.save(3, _state(3))
        chain.save(4, _state(4))
        assert chain.steps() == [0, 1, 2, 3, 4]
        assert chain.verify(decode_all=True) == {}
        for i in (3, 4):
            u, r = _state(i)["w"], chain.restore(i)["w"]
            assert np.linalg.norm(r - u) <= 1e-3 * np.linalg.norm(u), i
