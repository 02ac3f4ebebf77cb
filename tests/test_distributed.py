"""torch.distributed.checkpoint with deltackpt chains: 2 real processes on gloo, DTensor shards.

A LeNet-5 is trained on the digits and steps 0..5 are saved from 2 ranks (DTensor Shard(0) on a
1-D CPU mesh) with ``ChainWriter(bits=3, anchor_every=4)``: step 0 is a keyframe, 1-3 are steps
(base: the previous save), 4 an anchor (base: step 0), 5 a step (base: 4). Loads into 1 and 2
processes (Shard(0) as saved, and Shard(1) with replicated vectors) must agree bit for bit,
keyframes must be exact and every lossy step must satisfy the
LC bound elementwise: |r_t - u_t| <= |u_t - r_base| (the exponent quantizer never moves a value
further than its delta; a rounding slack of a few ulps is allowed). A rank SIGKILLed in the
middle of a save must leave the previous step loadable, and a new writer must resume.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import deltackpt
from deltackpt.store import open_store

pytest.importorskip("torch.distributed.checkpoint")
safetensors_torch = pytest.importorskip("safetensors.torch")
pytest.importorskip("sklearn")

WORKER = Path(__file__).with_name("dist_worker.py")
PKG_ROOT = str(Path(deltackpt.__file__).resolve().parent.parent)
BASES = {1: 0, 2: 1, 3: 2, 4: 0, 5: 4}  # anchor_every=4: record 4 is an anchor on the keyframe


def run_job(mode: str, world: int, chain: Path, out: Path, arg: str = "") -> list[int]:
    """Run one job of ``world`` ranks; return their exit codes (negative: killed by a signal).

    When a rank dies, the others are stuck in a collective: they are killed (as a launcher
    such as torchrun would do) once every other rank has exited or after a grace period.
    """
    rdv = out / f"rdv-{mode}-{world}-{time.monotonic_ns()}"
    env = dict(os.environ)
    env["PYTHONPATH"] = PKG_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env["DELTACKPT_NUM_THREADS"] = "1"
    cmd = [sys.executable, str(WORKER), mode]
    procs = [
        subprocess.Popen([*cmd, str(r), str(world), str(rdv), str(chain), str(out), arg], env=env)
        for r in range(world)
    ]
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes):
                return [int(c) for c in codes]  # type: ignore[arg-type]
            if any(c is not None and c != 0 for c in codes):
                time.sleep(0.5)
                for p in procs:
                    if p.poll() is None:
                        p.send_signal(signal.SIGKILL)
            time.sleep(0.05)
        raise TimeoutError(f"job {mode} did not finish")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def load_st(path: Path) -> dict[str, torch.Tensor]:
    return safetensors_torch.load_file(str(path))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("dcp")
    chain = out / "chain"
    assert run_job("train", 2, chain, out) == [0, 0]
    return chain, out


def load_here(
    chain: Path, out: Path, step: int, branch: str | None = None
) -> dict[str, torch.Tensor]:
    """Load ``step`` into plain tensors in this process (DCP without a process group)."""
    import warnings

    import torch.distributed.checkpoint as dcp

    from deltackpt.distributed import ChainReader

    flat = {k: torch.zeros_like(v) for k, v in load_st(out / "true-0.safetensors").items()}
    sd: dict = {"model": {}, "optim": {}}
    for k, v in flat.items():
        top, rest = k.split(".", 1)
        sd[top][rest] = v
    sd["meta"] = {"step": None, "lr": None, "name": None}
    sd["counter"] = torch.zeros(1, dtype=torch.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(sd, storage_reader=ChainReader(chain, step=step, branch=branch))
    assert sd["meta"]["step"] == step
    got = {f"{top}.{k}": v for top in ("model", "optim") for k, v in sd[top].items()}
    got["counter"] = sd["counter"]
    return got


def _steps(chain: Path) -> list[int]:
    from deltackpt.distributed import committed_steps

    return committed_steps(open_store(chain))


def test_layout_two_rank_chains(trained: tuple[Path, Path]) -> None:
    chain, _ = trained
    assert _steps(chain) == list(range(6))
    for r in (0, 1):
        with deltackpt.CheckpointChain(chain / f"rank-{r}", mode="r") as c:
            assert c.steps() == list(range(6))
            kinds = [c.info(s)["kind"] for s in range(6)]
            assert kinds == ["keyframe", "step", "step", "step", "anchor", "step"]
    doc = json.loads(open_store(chain).read("dcp/main/000000000003.json"))
    ranks = {loc[2] for loc in doc["storage"] if loc[0].startswith("model.")}
    assert ranks == {0, 1}  # every rank stored its own shards


@pytest.fixture(scope="module")
def loaded(trained: tuple[Path, Path]) -> Path:
    chain, out = trained
    steps = ",".join(str(s) for s in range(6))
    assert run_job("load", 1, chain, out, steps) == [0]
    assert run_job("load", 2, chain, out, steps) == [0, 0]
    assert run_job("load-shard1", 2, chain, out, steps) == [0, 0]
    return out


@pytest.mark.parametrize("step", range(6))
def test_load_into_one_and_two_processes(loaded: Path, step: int) -> None:
    out = loaded
    one = load_st(out / f"loaded-w1-{step}.safetensors")
    two = load_st(out / f"loaded-w2-{step}.safetensors")
    resharded = load_st(out / f"loaded-w2-{step}-shard1.safetensors")
    true = load_st(out / f"true-{step}.safetensors")
    assert set(one) == set(true) | {"counter"}
    for k in one:
        assert torch.equal(one[k], two[k]), k  # resharded loads decode the same chain
        assert torch.equal(one[k], resharded[k]), k  # Shard(1): every rank reads both chains
    assert int(one["counter"][0]) == step
    for w in (1, 2):
        meta = json.loads((out / f"loaded-w{w}-{step}.json").read_text())
        assert meta == {"step": step, "lr": 0.05, "name": "lenet5"}
    lossy = 0
    if step == 0:
        for k in true:
            assert torch.equal(one[k], true[k]), k  # keyframe: bit-exact
        return
    r_base = load_st(out / f"loaded-w1-{BASES[step]}.safetensors")
    for k, u in true.items():
        err = (one[k] - u).abs()
        bound = (u - r_base[k]).abs() + 4 * torch.finfo(torch.float32).eps * u.abs()
        assert bool((err <= bound).all()), (k, float((err - bound).max()))
        lossy += int((err > 0).sum())
    assert lossy > 0  # the steps really are lossy, so the bound is exercised


@pytest.mark.parametrize("where", ["data", "commit"])
def test_killed_save_keeps_previous_step(
    tmp_path: Path, trained: tuple[Path, Path], loaded: Path, where: str
) -> None:
    import shutil

    src, out0 = trained
    chain = tmp_path / "chain"
    shutil.copytree(src, chain)
    out = tmp_path / "out"
    out.mkdir()
    for f in out0.glob("true-*.safetensors"):
        shutil.copy(f, out / f.name)
    before = load_st(out0 / "loaded-w1-5.safetensors")

    codes = run_job(f"crash-{where}", 2, chain, out)
    victim = 1 if where == "data" else 0
    assert codes[victim] == -signal.SIGKILL
    assert _steps(chain) == list(range(6))  # step 6 never committed
    orphans = [
        r for r in (0, 1) if (chain / f"rank-{r}" / "records" / "main" / f"{6:012d}.json").exists()
    ]
    if where == "commit":
        assert orphans == [0, 1]  # both ranks had committed their records: only metadata missing

    after = load_here(chain, out, 5)
    assert set(after) == set(before)
    for k in before:
        assert torch.equal(after[k], before[k]), k

    # a fresh job re-saves step 6 (the orphan rank records are discarded) and step 7
    assert run_job("resume", 2, chain, out, "6") == [0, 0]
    assert _steps(chain) == list(range(8))
    prev = after
    for step in (6, 7):
        got = load_here(chain, out, step)
        true = load_st(out / f"true-{step}.safetensors")
        for k, u in true.items():
            bound = (u - prev[k]).abs() + 4 * torch.finfo(torch.float32).eps * u.abs()
            assert bool(((got[k] - u).abs() <= bound).all()), k
        assert int(got["counter"][0]) == step
        prev = got


def test_branch_point_and_rollback_across_ranks(
    tmp_path: Path, trained: tuple[Path, Path], loaded: Path
) -> None:
    import shutil

    from deltackpt.distributed import committed_steps

    src, out0 = trained
    chain = tmp_path / "chain"
    shutil.copytree(src, chain)
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(out0 / "true-0.safetensors", out / "true-0.safetensors")
    assert run_job("branch", 2, chain, out) == [0, 0]
    store = open_store(chain)
    assert committed_steps(store, "main") == list(range(9))
    assert committed_steps(store, "slot.1") == [8]
    for r in (0, 1):
        with deltackpt.CheckpointChain(chain / f"rank-{r}", mode="r") as c:
            assert c.info(7, "main")["kind"] == "keyframe"  # the branch point, on every rank
            assert c.branch == "slot.1"
    true7 = load_st(out / "true-7.safetensors")
    for branch in ("main", "slot.1"):
        got = load_here(chain, out, 7, branch)
        for k, v in true7.items():
            assert torch.equal(got[k], v), (branch, k)  # exact at the branch point
        got8 = load_here(chain, out, 8, branch)
        true8 = load_st(out / f"true-8-{'main' if branch == 'main' else 'slot'}.safetensors")
        for k, u in true8.items():
            bound = (u - true7[k]).abs() + 4 * torch.finfo(torch.float32).eps * u.abs()
            assert bool(((got8[k] - u).abs() <= bound).all()), (branch, k)
