"""pytest-benchmark: a DCP save of a 2-rank sharded state, ChainWriter vs FileSystemWriter.

Run: ``pytest benches/test_bench_dcp.py --benchmark-only``. This process is rank 0 of a gloo
group; benches/dcp_rank.py runs rank 1. The state (benches/dcp_rank.py) is 45.4M real fp32
parameters (all-MiniLM-L6-v2 weights and a momentum buffer), DTensor Shard(0) over the 2 ranks.
Each timed round is one complete ``dcp.save`` (both ranks, coordinator commit included):

* ``chain``: the same ``ChainWriter`` for every round (the untimed warm-up round is the
  keyframe; timed rounds are 3-bit step deltas of a real AdamW step, error feedback included);
* ``filesystem``: DCP's ``FileSystemWriter`` into a fresh directory per round (torch.save
  format, fsync on, one file per rank).

Floor (SPEC §1 job 5, issue "Scale-out and tooling"): chain save time <= 2x FileSystemWriter.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dcp_rank  # noqa: E402

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("dcpbench")
    rdv = str(tmp / "rdv")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    follower = subprocess.Popen([sys.executable, dcp_rank.__file__, rdv], env=env)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rdv}", rank=0, world_size=2)
    state = dcp_rank.State(2)
    ctx: dict[str, Any] = {"state": state, "writers": {}, "tmp": tmp}
    try:
        yield ctx
    finally:
        dist.broadcast_object_list(["quit"], src=0)
        for w in ctx["writers"].values():
            w.close()
        dist.destroy_process_group()
        follower.wait(timeout=120)


def _save(ctx: dict[str, Any], cmd: tuple[str, str, int]) -> None:
    dist.broadcast_object_list([cmd], src=0)
    dcp_rank.save(cmd, ctx["state"], ctx["writers"])


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.mark.parametrize("kind", ["filesystem", "chain"])
def test_dcp_save_2_ranks(benchmark: Any, group: dict[str, Any], kind: str) -> None:
    path = group["tmp"] / kind
    counter = itertools.count()

    def one() -> None:
        _save(group, (kind, str(path), next(counter)))

    t0 = time.perf_counter()
    one()  # warm-up: the chain's keyframe, the file system writer's first directory
    first = time.perf_counter() - t0
    benchmark.pedantic(one, rounds=10, iterations=1)
    nbytes = group["state"].numel * 4
    saves = next(counter)
    benchmark.extra_info["params"] = group["state"].numel
    benchmark.extra_info["first_save_s"] = round(first, 3)
    benchmark.extra_info["MB_per_s"] = round(nbytes / benchmark.stats.stats.min / 1e6, 1)
    benchmark.extra_info["bytes_per_save"] = _dir_bytes(path) // saves
    if kind == "chain":
        from deltackpt.chain import CheckpointChain

        sizes = []
        for r in (0, 1):
            with CheckpointChain(path / f"rank-{r}", mode="r") as c:
                sizes.append(c.stats())
        benchmark.extra_info["keyframe_bytes"] = sum(s["bytes_by_kind"]["keyframe"] for s in sizes)
        benchmark.extra_info["step_bytes_mean"] = sum(
            s["bytes_by_kind"]["step"] // max(1, s["count_by_kind"]["step"]) for s in sizes
        )
