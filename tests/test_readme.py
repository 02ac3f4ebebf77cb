"""The README's examples run as written (issue 15).

* every ```python block runs in a fresh subprocess, in a temporary directory of its own (so
  nothing it writes, such as ``run.dk/``, lands in the repository), and exits 0;
* the ```sh blocks that use the command line on a chain (inspect, verify, stats, restore) run,
  with ``deltackpt`` as ``python -m deltackpt``, in the directory where the Checkpoint chains
  example left its ``run.dk``;
* the resume recipe the README documents: ``resume`` on a new chain, after a crash, after a
  rollback, and the error a re-run script gets when it saves step 0 again.

The Rust block is compiled and run by ``cargo test`` (rust/src/lib.rs includes the README).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import deltackpt as dk

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
PKG_ROOT = str(Path(dk.__file__).resolve().parent.parent)
CLI_COMMANDS = ("inspect", "verify", "stats", "restore")


def _blocks(lang: str) -> list[tuple[int, str]]:
    """(line number, code) of every fenced block in ``lang``."""
    out = []
    for m in re.finditer(rf"^```{lang}\n(.*?)^```", README, re.S | re.M):
        out.append((README.count("\n", 0, m.start()) + 1, m.group(1)))
    return out


PYTHON = _blocks("python")
SHELL = [
    (line, code)
    for line, code in _blocks("sh")
    if re.search(rf"^deltackpt ({'|'.join(CLI_COMMANDS)})\b", code, re.M)
]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = PKG_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    # one torch thread: on a shared 2-core CI machine, two threads of a tiny LeNet-5 step
    # contend and run ~10x slower; the examples are the same code either way
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


_RUNS: dict[int, tuple[subprocess.CompletedProcess[str], Path]] = {}


def _run_python(index: int, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Run README python block ``index`` once (cached): its process and its directory."""
    if index not in _RUNS:
        line, code = PYTHON[index]
        cwd = tmp_path_factory.mktemp(f"readme-line{line}")
        before = sorted(os.listdir(ROOT))
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=cwd,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert sorted(os.listdir(ROOT)) == before, "the example wrote into the repository"
        _RUNS[index] = (proc, cwd)
    return _RUNS[index]


def test_the_readme_has_the_blocks_this_file_runs() -> None:
    assert len(PYTHON) >= 4 and SHELL
    assert any('CheckpointChain("run.dk")' in code for _, code in PYTHON)
    fences = [line for line in README.splitlines() if line.startswith("```")]
    assert all(len(f) > 3 for f in fences[0::2]), "an untagged block (rustdoc compiles it)"


@pytest.mark.parametrize("index", range(len(PYTHON)), ids=[f"line{n}" for n, _ in PYTHON])
def test_python_block_runs_as_written(index: int, tmp_path_factory: pytest.TempPathFactory) -> None:
    proc, _ = _run_python(index, tmp_path_factory)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _chain_example_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    (index,) = [i for i, (_, code) in enumerate(PYTHON) if 'CheckpointChain("run.dk")' in code]
    proc, cwd = _run_python(index, tmp_path_factory)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd


@pytest.mark.parametrize("index", range(len(SHELL)), ids=[f"line{n}" for n, _ in SHELL])
def test_cli_block_runs_on_the_readme_chain(
    index: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    cwd = _chain_example_dir(tmp_path_factory)
    script = 'set -euo pipefail\ndeltackpt() { "$PYTHON" -m deltackpt "$@"; }\n' + SHELL[index][1]
    env = _env()
    env["PYTHON"] = sys.executable
    proc = subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for m in re.finditer(r"--(?:plot|out) (\S+)", SHELL[index][1]):
        assert (cwd / m.group(1)).stat().st_size > 0, m.group(1)
    for m in re.finditer(r"--out (\S+\.pt)\b", SHELL[index][1]):
        _check_resumable(cwd / m.group(1))


def _check_resumable(path: Path) -> None:
    """A ``restore --out X.pt`` file loads with weights_only and into LeNet-5 and its SGD."""
    import torch

    from deltackpt._realdata import lenet5

    state = torch.load(path, weights_only=True)
    model = lenet5()
    model.load_state_dict(state["model"])
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    opt.load_state_dict(state["optimizer"])
    assert opt.state_dict()["state"][0]["momentum_buffer"].shape == model[0].weight.shape


# --------------------------------------------------------------------------- the resume recipe


class _Obj:
    """The smallest thing with state_dict() / load_state_dict()."""

    def __init__(self, w: np.ndarray) -> None:
        self.w = w

    def state_dict(self) -> dict[str, Any]:
        return {"w": self.w}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.w = np.array(state["w"])


def _script(path: Path, stop: int) -> tuple[int, _Obj]:
    """A training script: resume, then save steps up to ``stop`` (exclusive)."""
    obj = _Obj(np.zeros(5000, np.float32))
    with dk.CheckpointChain(path) as chain:
        start = chain.resume(model=obj)
        for step in range(start, stop):
            obj.w = obj.w + np.float32(0.01)
            chain.save(step, {"model": obj, "epoch": step // 4})
    return start, obj


def test_resume_continues_after_the_latest_step(tmp_path: Path) -> None:
    path = tmp_path / "run"
    assert _script(path, 6)[0] == 0  # a new chain: nothing loaded
    start, obj = _script(path, 10)  # the re-run: loads step 5, continues at 6
    assert start == 6
    with dk.CheckpointChain(path, mode="r") as chain:
        assert chain.steps() == list(range(10))
        assert chain.restore()["epoch"] == 2
        assert chain.resume() == 10  # a reader can ask too
    np.testing.assert_allclose(obj.w, 0.1, atol=5e-3)


def test_resume_after_rollback_loads_the_branch_point_exactly(tmp_path: Path) -> None:
    path = tmp_path / "run"
    w = np.linspace(-1, 1, 5000, dtype=np.float32)
    with dk.CheckpointChain(path) as chain:
        for step in range(4):
            chain.save(step, {"model": _Obj(w + np.float32(0.01 * step))})
        chain.branch_point("p")
        chain.save(4, {"model": _Obj(w + 1)})
        chain.rollback("p")
        obj = _Obj(np.zeros(5000, np.float32))
        assert chain.resume(model=obj) == 4
        assert np.array_equal(obj.w, w + np.float32(0.03))


def test_saving_step_0_again_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "run"
    _script(path, 5)
    with dk.CheckpointChain(path) as chain, pytest.raises(ValueError) as err:
        chain.save(0, {"model": _Obj(np.zeros(5000, np.float32))})
    msg = str(err.value)
    assert "step 0 <= latest step 4 of branch 'main'" in msg
    assert "chain.resume(" in msg and "returns 5" in msg and "new path" in msg
    assert "rollback" in msg


def test_restore_into_names_what_the_state_has(tmp_path: Path) -> None:
    path = tmp_path / "run"
    _script(path, 2)
    with dk.CheckpointChain(path, mode="r") as chain, pytest.raises(KeyError) as err:
        chain.restore_into(optimizer=_Obj(np.zeros(1)))
    assert "no entry 'optimizer'" in str(err.value) and "'epoch', 'model'" in str(err.value)
