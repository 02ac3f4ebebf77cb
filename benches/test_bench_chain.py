"""pytest-benchmark suite of the checkpoint chain: save one step, restore the latest step.

Run: ``pytest benches/test_bench_chain.py --benchmark-only``. States are LeNet-5-sized
(61,706 fp32 parameters) and a 4M-parameter MLP, evolving like SGD (small dense updates).
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

_PY = Path(__file__).resolve().parents[1] / "python"
if any(p.suffix in (".so", ".pyd") for p in (_PY / "deltackpt").glob("_core.*")):
    sys.path.insert(0, str(_PY))  # the in-tree package when built in place
import deltackpt as dk  # noqa: E402

SIZES = {"lenet": [(6, 1, 5, 5), (6,), (16, 6, 5, 5), (16,), (120, 400), (120,), (84, 120),
                   (84,), (10, 84), (10,)],
         "mlp4m": [(2048, 1024), (2048,), (1024, 2048), (1024,)]}  # fmt: skip


def _states(kind: str, n: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    cur = {f"p{i}": torch.randn(s, generator=g) * 0.1 for i, s in enumerate(SIZES[kind])}
    out = []
    for _ in range(n):
        cur = {k: v + 1e-3 * torch.randn(v.shape, generator=g) for k, v in cur.items()}
        out.append(cur)
    return out


@pytest.mark.parametrize("kind", ["lenet", "mlp4m"])
def test_bench_save_step(benchmark: Any, tmp_path: Path, kind: str) -> None:
    states = _states(kind, 8)
    chain = dk.CheckpointChain(tmp_path / "c", anchor_every=10)
    chain.save(0, {"model": states[0]})
    steps = itertools.count(1)

    def save() -> None:
        s = next(steps)
        chain.save(s, {"model": states[s % len(states)]})

    benchmark.pedantic(save, rounds=20, iterations=1, warmup_rounds=1)
    assert chain.latest_step() is not None and chain.latest_step() >= 20
    chain.close()


@pytest.mark.parametrize("kind", ["lenet", "mlp4m"])
def test_bench_restore_latest(benchmark: Any, tmp_path: Path, kind: str) -> None:
    states = _states(kind, 19)
    with dk.CheckpointChain(tmp_path / "c", anchor_every=10) as chain:
        for s, st in enumerate(states):
            chain.save(s, {"model": st})
    reader = dk.CheckpointChain(tmp_path / "c", mode="r")
    assert reader.info()["depth"] == 10  # keyframe + 1 anchor + 8 steps: the worst case here

    def restore() -> Any:
        reader.records.clear()  # a fresh read every round
        return reader.restore()

    got = benchmark.pedantic(restore, rounds=10, iterations=1, warmup_rounds=1)
    assert got["model"]["p0"].shape == states[-1]["p0"].shape
