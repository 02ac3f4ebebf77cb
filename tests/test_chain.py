"""Tests of deltackpt.CheckpointChain on real training runs, real files and real process kills."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import deltackpt as dk
from deltackpt.chain.policy import DEFAULT_REL_ERROR
from deltackpt.store import HEADER, LocalStore

sys.path.insert(0, os.path.dirname(__file__))
from lenet_digits import LeNet5, accuracy, digits

# the directory holding the deltackpt package under test (in-tree build or installed wheel)
PY_DIR = str(Path(dk.__file__).resolve().parents[1])
EPS32 = float(np.finfo(np.float32).eps)


def _clone(sd: dict[str, Any]) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in sd.items()}


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Train LeNet-5 (SGD with momentum) for 3 epochs over 640 images, saving every step."""
    torch.manual_seed(0)
    x, y = digits(640)
    model = LeNet5()
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    root = tmp_path_factory.mktemp("lenet") / "chain"
    truth: dict[int, dict[str, Any]] = {}
    step = 0
    with dk.CheckpointChain(root, bits=3, anchor_every=4, keyframe_every=30) as chain:
        for _epoch in range(3):
            for i in range(0, len(x), 32):
                loss = torch.nn.functional.cross_entropy(model(x[i : i + 32]), y[i : i + 32])
                opt.zero_grad()
                loss.backward()
                opt.step()
                chain.save(step, {"model": model, "optimizer": opt, "loss": loss.item()})
                truth[step] = {
                    "model": _clone(model.state_dict()),
                    "momentum": {
                        k: v["momentum_buffer"].clone()
                        for k, v in opt.state_dict()["state"].items()
                    },
                    "loss": loss.item(),
                }
                step += 1
        stats = chain.stats()
    return {
        "root": root,
        "truth": truth,
        "stats": stats,
        "model": model,
        "x": x,
        "y": y,
    }


def test_every_step_restores_within_the_quantizer_bound(
    lenet_run: dict[str, Any],
) -> None:
    truth = lenet_run["truth"]
    rel_errors = []
    with dk.CheckpointChain(lenet_run["root"], mode="r") as chain:
        assert chain.steps() == sorted(truth)
        kinds = {chain.info(s)["kind"] for s in truth}
        assert kinds == {"keyframe", "anchor", "step"}
        levels = {chain.info(s)["level"] for s in truth if chain.info(s)["kind"] != "keyframe"}
        assert levels == {0, 1, 2}  # anchors of anchors: ordinals 16 (4^2) of each keyframe period
        for s, true in truth.items():
            st = chain.restore(s)
            info = chain.info(s)
            assert st["loss"] == true["loss"]
            assert set(st["model"]) == set(true["model"])
            base = chain.restore(info["base"][1], info["base"][0]) if info["base"] else None
            for k, u in true["model"].items():
                r = st["model"][k]
                assert r.dtype == u.dtype and r.shape == u.shape
                if info["kind"] == "keyframe" or u.numel() < 2:
                    assert torch.equal(r, u), (s, k)
                    continue
                assert base is not None
                rb = base["model"][k]
                # |d - Q(d)| <= |d| with d = u - r_base (error feedback): exponent buckets
                # and the bounded grids alike (a non-zero level needs |d| past the dead zone)
                slack = 4 * EPS32 * torch.maximum(u.abs(), rb.abs())
                assert torch.all((u - r).abs() <= (u - rb).abs() + slack), (s, k)
                rel_errors.append(float((u - r).norm() / u.norm()))
            for idx, mom in true["momentum"].items():  # optimizer moments: the same bound
                got = st["optimizer"]["state"][idx]["momentum_buffer"]
                assert got.shape == mom.shape
                if info["kind"] == "keyframe":
                    assert torch.equal(got, mom)
                    continue
                assert base is not None
                mb = base["optimizer"]["state"][idx]["momentum_buffer"]
                slack = 4 * EPS32 * torch.maximum(mom.abs(), mb.abs())
                assert torch.all((mom - got).abs() <= (mom - mb).abs() + slack), (s, idx)
        assert chain.stats()["max_restore_depth"] <= 1 + 3 * 3  # digit sum in base 4, n < 30
    assert float(np.mean(rel_errors)) < 0.03
    assert lenet_run["stats"]["ratio"] > 4.0


def test_restored_model_accuracy_and_restore_into(lenet_run: dict[str, Any]) -> None:
    trained = lenet_run["model"]
    model = LeNet5()
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    with dk.CheckpointChain(lenet_run["root"], mode="r") as chain:
        state = chain.restore_into(model=model, optimizer=opt)
    xv, yv = digits(797, offset=1000)  # held out
    assert abs(accuracy(model, xv, yv) - accuracy(trained, xv, yv)) <= 1.0
    assert accuracy(trained, xv, yv) > 30.0  # the run really trained (10 classes)
    assert opt.state_dict()["param_groups"][0]["momentum"] == 0.9
    assert len(opt.state_dict()["state"]) == 10
    assert isinstance(state["optimizer"]["state"], dict)
    assert all(isinstance(k, int) for k in state["optimizer"]["state"])


def test_rollback_and_branch_points_are_exact(tmp_path: Path) -> None:
    torch.manual_seed(1)
    x, y = digits(256)
    model = LeNet5()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    exact: dict[str, dict[str, Any]] = {}

    def train(chain: dk.CheckpointChain, steps: range) -> None:
        for s in steps:
            i = (s * 32) % 256
            loss = torch.nn.functional.cross_entropy(model(x[i : i + 32]), y[i : i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
            chain.save(s, {"model": model, "optimizer": opt})

    with dk.CheckpointChain(tmp_path / "c", anchor_every=3) as chain:
        train(chain, range(7))
        assert chain.branch_point("slot1") == 6
        exact["slot1"] = _clone(model.state_dict())
        train(chain, range(7, 12))
        chain.branch_point("slot2")
        exact["slot2"] = _clone(model.state_dict())
        train(chain, range(12, 15))  # the "poisoned" slot
        state = chain.rollback("slot2")
        assert chain.branch == "slot2.1"
        for k, v in exact["slot2"].items():
            assert torch.equal(state["model"][k], v)
        assert chain.info(11)["kind"] == "keyframe"
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        train(chain, range(12, 16))
        assert chain.steps() == list(range(16))
        assert chain.steps("main") == list(range(15))
        assert sorted(chain.branches()) == ["main", "slot2.1"]
        old = chain.restore(14, branch="main")
        assert old["model"]["fc1.weight"].shape == (120, 400)
        state = chain.rollback("slot1", new_branch="retry")
        for k, v in exact["slot1"].items():
            assert torch.equal(state["model"][k], v)
        chain.delete_branch("slot2.1")
        assert sorted(chain.branches()) == ["main", "retry"]
        with pytest.raises(KeyError):
            chain.restore(13, branch="slot2.1")
        for k, v in exact["slot2"].items():  # branch points survive their branch's deletion
            assert torch.equal(chain.restore(11, "main")["model"][k], v)
        with pytest.raises(ValueError, match="current branch"):
            chain.delete_branch("retry")
        with pytest.raises(ValueError, match="<= latest"):
            chain.save(6, {"model": model})
    with dk.CheckpointChain(tmp_path / "c", mode="r") as reader:  # HEAD persisted
        assert reader.branch == "retry" and reader.latest_step() == 6


def test_retention_keeps_dependencies(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(3)
    w = torch.randn(5000, generator=g)
    truth = {}
    with dk.CheckpointChain(
        tmp_path / "r", anchor_every=3, keyframe_every=20, max_to_keep=3, keep_every=10
    ) as chain:
        for s in range(45):
            w = w + 0.01 * torch.randn(5000, generator=g)
            chain.save(s, {"w": w})
            truth[s] = w.clone()
            if s == 7:
                chain.branch_point("b7")
        steps = chain.steps()
        for s in (42, 43, 44, 0, 10, 20, 30, 40, 7):
            assert s in steps
        assert len(steps) < 45
        for s in steps:  # every listed step still restores, i.e. its bases were kept
            r = chain.restore(s)["w"]
            assert float((r - truth[s]).norm() / truth[s].norm()) < 0.05
        files = set(LocalStore(tmp_path / "r").list("data"))
        used = {f for s in steps for f in chain.info(s)["files"]}
        assert files == used  # deleted records left no data behind
        assert torch.equal(chain.restore(7)["w"], truth[7])


def test_plain_values_dtypes_and_shapes_roundtrip(tmp_path: Path) -> None:
    base = torch.randn(3, 50, dtype=torch.float64)
    state = {
        "nested": {
            "a": [1, 2.5, None, "s", True],
            "t": (1, (2, 3)),
            7: {"deep": {"x": 1}},
        },
        "ints": torch.arange(10, dtype=torch.int64).reshape(2, 5),
        "mask": torch.tensor([True, False, True]),
        "u8": torch.arange(5000, dtype=torch.int32) % 256,
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
        "bf16": torch.randn(64, dtype=torch.bfloat16),
        "f16": torch.randn(64).half(),
        "f64": base,
        "view": base.t()[::2],
        "np": np.linspace(0, 1, 100, dtype=np.float32),
        "npint": np.arange(7, dtype=np.int16),
        "npscalar": np.float32(2.0),
        "nan_lr": float("inf"),
    }
    with dk.CheckpointChain(tmp_path / "v") as chain:
        chain.save(0, state)
        chain.save(1, state)
        for s in (0, 1):
            got = chain.restore(s)
            assert got["nested"] == state["nested"]
            assert isinstance(got["nested"]["t"], tuple) and 7 in got["nested"]
            for k in ("ints", "mask", "u8", "scalar", "empty"):
                assert got[k].dtype == state[k].dtype and torch.equal(got[k], state[k])
            for k in ("bf16", "f16", "f64", "view"):
                assert got[k].dtype == state[k].dtype and got[k].shape == state[k].shape
                assert torch.allclose(got[k].double(), state[k].double(), rtol=0.5, atol=0)
            assert isinstance(got["np"], np.ndarray) and got["np"].dtype == np.float32
            assert np.array_equal(got["npint"], state["npint"])
            assert got["npscalar"] == 2.0 and got["nan_lr"] == math.inf
        assert torch.equal(chain.restore(0)["view"], state["view"])  # keyframe: exact
        with pytest.raises(TypeError, match="no pickle"):
            chain.save(2, {"bad": {1, 2}})
        with pytest.raises(TypeError, match="no pickle"):
            chain.save(2, {"bad": object()})


@pytest.mark.parametrize("async_save", [False, True])
def test_non_finite_refused_unless_exact(tmp_path: Path, async_save: bool) -> None:
    w = torch.linspace(-1, 1, 8000)
    with dk.CheckpointChain(tmp_path / "n", async_save=async_save) as chain:
        chain.save(0, {"layer": {"w": w}})
        bad = w.clone()
        bad[123] = float("nan")
        bad[200] = float("inf")
        # a background save's failure comes as SaveError naming its step, the original as cause
        want = dk.SaveError if async_save else dk.NonFiniteError
        with pytest.raises(want, match=r'2 non-finite.*index 123.*\["layer", "w"\]') as info:
            chain.save(1, {"layer": {"w": bad}})
            chain.wait()
        if async_save:
            assert "step 1" in str(info.value)
            assert isinstance(info.value.__cause__, dk.NonFiniteError)
        assert chain.steps() == [0]
        chain.save(1, {"layer": {"w": bad}}, exact=True)
        chain.wait()
        assert chain.info(1)["kind"] == "keyframe"
        got = chain.restore(1)["layer"]["w"]
        assert torch.equal(got.view(torch.int32), bad.view(torch.int32))


def test_async_save_matches_sync(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(5)
    states = []
    w = torch.randn(6000, generator=g)
    for _ in range(12):
        w = w + 0.001 * torch.randn(6000, generator=g)
        states.append({"w": w.clone(), "b": torch.randn(10, generator=g)})
    out = {}
    for mode in (False, True):
        with dk.CheckpointChain(tmp_path / f"a{mode}", anchor_every=4, async_save=mode) as c:
            for s, st in enumerate(states):
                live = {k: v.clone() for k, v in st.items()}
                c.save(s, live)
                live["w"].zero_()  # the training loop mutates its tensors in place
            c.wait()
            out[mode] = [c.restore(s) for s in range(12)]
    for a, b in zip(out[False], out[True], strict=True):
        assert torch.equal(a["w"], b["w"]) and torch.equal(a["b"], b["b"])


def _pickle_like(payload: bytes) -> bool:
    return (
        (payload[:1] == b"\x80" and payload[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))
        or payload.startswith(b"PK\x03\x04")
        or b"data.pkl" in payload
    )


def _chain_files(root: Path) -> Iterator[Path]:
    return (p for p in sorted(root.rglob("*")) if p.is_file() and p.name != "LOCK.guard")


def test_no_pickle_anywhere(lenet_run: dict[str, Any], tmp_path: Path) -> None:
    probe = tmp_path / "probe.pt"
    torch.save({"w": torch.zeros(3)}, probe)
    assert _pickle_like(probe.read_bytes())  # the detector detects torch.save files
    pickled = __import__("pickle").dumps({"a": 1}, protocol=4)
    assert _pickle_like(pickled)
    n = 0
    for p in _chain_files(lenet_run["root"]):
        raw = p.read_bytes()
        payload = raw[HEADER.size :]
        assert not _pickle_like(raw) and not _pickle_like(payload), p
        if "/records/" in str(p):
            json.loads(zlib.decompress(payload))
        elif p.suffix == ".json":
            json.loads(payload)
        n += 1
    assert n > 100


def test_flipped_bytes_raise_never_wrong_tensors(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(9)
    w = torch.randn(5000, generator=g)
    root = tmp_path / "f"
    with dk.CheckpointChain(root, anchor_every=3) as chain:
        for s in range(7):
            w = w + 0.01 * torch.randn(5000, generator=g)
            chain.save(s, {"w": w, "small": w[:10] * 2, "n": s})
        good = {s: chain.restore(s) for s in range(7)}
    with dk.CheckpointChain(root, mode="r") as reader:
        assert reader.verify(decode_all=True) == {}
    rng = random.Random(42)
    files = [p for p in _chain_files(root) if p.name != "LOCK"]
    assert len(files) >= 16  # 7 records, 7 data files (one per save), schema, chain.json, ...
    for p in files:
        original = p.read_bytes()
        for pos in {0, 10, len(original) - 1, rng.randrange(len(original))}:
            bad = bytearray(original)
            bad[pos] ^= 1 << rng.randrange(8)
            p.write_bytes(bytes(bad))
            raised = 0
            try:
                reader = dk.CheckpointChain(root, mode="r")
            except dk.CorruptDataError:
                raised += 1
                continue
            for s in range(7):
                try:
                    got = reader.restore(s)
                except dk.CorruptDataError:
                    raised += 1
                    continue
                assert torch.equal(got["w"], good[s]["w"]), (p, pos, s)
                assert torch.equal(got["small"], good[s]["small"]) and got["n"] == s
            if p.parent.name == "log":  # the commit log: restores need none of it
                assert "log" in reader.verify(), f"verify missed a flip in {p}"
            elif p.parent.name != "branches" and p.name not in ("chain.json",):
                assert raised, f"flip at {pos} of {p} went unnoticed"
                if p.parent.parent.name in ("records", "data") or p.parent.name == "schemas":
                    assert reader.verify(), f"verify missed a flip in {p}"
        p.write_bytes(original)


def test_second_writer_refused_reader_allowed_stale_lock_recovered(
    tmp_path: Path,
) -> None:
    root = tmp_path / "l"
    with dk.CheckpointChain(root) as writer:
        writer.save(0, {"w": torch.ones(10)})
        with pytest.raises(dk.LockedError, match="locked by another writer"):
            dk.CheckpointChain(root)
        with dk.CheckpointChain(root, mode="r") as reader:
            assert torch.equal(reader.restore(0)["w"], torch.ones(10))
            with pytest.raises(PermissionError):
                reader.save(1, {"w": torch.ones(10)})
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    lock = {
        "pid": proc.pid,
        "host": socket.gethostname(),
        "time": time.time(),
        "token": "x",
    }
    (root / "LOCK").write_text(json.dumps(lock))
    with dk.CheckpointChain(root) as writer:  # dead pid on this host: stale, recovered
        writer.save(1, {"w": torch.ones(10)})
        assert writer.steps() == [0, 1]
    assert not (root / "LOCK").exists()


@pytest.mark.parametrize("scheme", ["memory", "file"])
def test_fsspec_chains(tmp_path: Path, scheme: str) -> None:
    url = f"memory://chain-{uuid.uuid4().hex}" if scheme == "memory" else f"file://{tmp_path}/fs"
    g = torch.Generator().manual_seed(2)
    w = torch.randn(5000, generator=g)
    with dk.CheckpointChain(url, anchor_every=3) as chain:
        for s in range(8):
            w = w + 0.01 * torch.randn(5000, generator=g)
            chain.save(s, {"w": w, "step": s})
            if s == 4:
                chain.branch_point("p")
                at4 = w.clone()
        with pytest.raises(dk.LockedError):
            dk.CheckpointChain(url)
        state = chain.rollback("p")
        assert torch.equal(state["w"], at4)
        chain.save(5, {"w": w, "step": 5})
    with dk.CheckpointChain(url, mode="r") as reader:
        assert reader.steps() == [0, 1, 2, 3, 4, 5] and reader.steps("main") == list(range(8))
        for s in range(8):
            assert reader.restore(s, "main")["step"] == s


CRASH_WRITER = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {py!r})
    import deltackpt as dk

    def state(t):
        g = torch.Generator().manual_seed(0)
        w0 = torch.randn(20000, generator=g)
        f = torch.rand(20000, generator=g)
        return {{"w": w0 + 0.05 * torch.sin(0.3 * t * f), "t": t, "ids": torch.arange(t % 7)}}

    with dk.CheckpointChain({root!r}, anchor_every=4, keyframe_every=25) as chain:
        last = chain.latest_step()
        start = 0 if last is None else last + 1
        print("start", start, flush=True)
        for t in range(start, {end}):
            chain.save(t, state(t))
            print("committed", t, flush=True)
    print("done", flush=True)
    """
)


def _crash_state(t: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(20000, generator=g)
    f = torch.rand(20000, generator=g)
    return {"w": w0 + 0.05 * torch.sin(0.3 * t * f), "t": t, "ids": torch.arange(t % 7)}


def test_sigkill_at_random_moments_loses_no_committed_step(tmp_path: Path) -> None:
    root = str(tmp_path / "crash")
    end = 60
    script = CRASH_WRITER.format(py=PY_DIR, root=root, end=end)
    rng = random.Random(20261123)
    committed = -1
    for _round in range(5):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        first = proc.stdout.readline().split()
        assert first[0] == "start" and int(first[1]) == committed + 1
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        out = proc.stdout.read().split("\n")
        proc.wait()
        for line in out:
            if line.startswith("committed"):
                committed = int(line.split()[1])
        with dk.CheckpointChain(root, mode="r") as reader:
            steps = reader.steps()
            assert steps == list(range(len(steps)))
            assert len(steps) - 1 >= committed  # a step reported committed is never lost
            committed = len(steps) - 1
            for t in steps:
                got, want = reader.restore(t), _crash_state(t)
                assert got["t"] == t and torch.equal(got["ids"], want["ids"])
                err = float((got["w"] - want["w"]).norm() / want["w"].norm())
                assert err <= DEFAULT_REL_ERROR, (t, err)  # the chain's default promise
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True
    )
    assert done.returncode == 0 and "done" in done.stdout, done.stderr
    with dk.CheckpointChain(root, mode="r") as reader:
        assert reader.steps() == list(range(end))
        assert reader.restore(end - 1)["t"] == end - 1
    store = LocalStore(root)
    assert not [n for n in store._list_all("") if ".tmp-" in n]  # the last writer cleaned up


@pytest.mark.parametrize("scope", ["state", "tensor"])
def test_scopes_keep_the_error_bound_and_threads_agree(tmp_path: Path, scope: str) -> None:
    g = torch.Generator().manual_seed(11)
    big, small = torch.randn(6000, generator=g), torch.randn(300, generator=g) * 1e-3
    truth = []
    with dk.CheckpointChain(
        tmp_path / scope, anchor_every=3, quantizer="exponent", scope=scope
    ) as chain:
        for s in range(8):
            big = big + 0.01 * torch.randn(6000, generator=g)
            small = small + 1e-5 * torch.randn(300, generator=g)  # much smaller updates
            chain.save(s, {"big": big, "small": small})
            truth.append({"big": big.clone(), "small": small.clone()})
    one = dk.CheckpointChain(tmp_path / scope, mode="r", threads=1)
    many = dk.CheckpointChain(tmp_path / scope, mode="r", threads=4)
    for s in range(1, 8):
        got, base_step = many.restore(s), many.info(s)["base"][1]
        ref = one.restore(s)
        base = one.restore(base_step)
        for k in ("big", "small"):
            assert torch.equal(got[k], ref[k])
            u, r, rb = truth[s][k], got[k], base[k]
            slack = 4 * EPS32 * torch.maximum(u.abs(), rb.abs())
            assert torch.all((u - r).abs() <= (u - rb).abs() + slack), (scope, s, k)


def test_forged_records_with_valid_checksums_raise_corrupt(tmp_path: Path) -> None:
    root = tmp_path / "forged"
    with dk.CheckpointChain(root, anchor_every=3) as chain:
        for s in range(3):
            chain.save(s, {"w": torch.linspace(0, 1, 5000) + s * 0.01, "i": torch.arange(3)})
    store = LocalStore(root)
    name = "records/main/000000000002.json"
    original = json.loads(zlib.decompress(store.read(name)))
    forgeries = [
        {"entries": [[1, 2, 3, 4]] * len(original["entries"])},
        {"entries": [["delta", 0, 10**9, 5]] * len(original["entries"])},
        {"entries": [["bogus", 0, 0, 1]] * len(original["entries"])},
        {"entries": original["entries"][:1]},
        {"base": ["main", 77]},
        {"schema": "0" * 32},
        {"prefix": "../../etc/passwd"},
        {"version": 99},
    ]
    for change in forgeries:
        store.write(name, zlib.compress(json.dumps({**original, **change}).encode()))
        reader = dk.CheckpointChain(root, mode="r")
        with pytest.raises((dk.CorruptDataError, dk.UnsupportedError)):
            reader.restore(2)
    store.write(name, zlib.compress(json.dumps(original).encode()))
    assert dk.CheckpointChain(root, mode="r").restore(2)["i"].tolist() == [0, 1, 2]


_plain = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, width=64),
    st.text(max_size=8),
)
_keys = st.one_of(st.text(max_size=6), st.integers(-5, 5))
_tensors = st.builds(
    lambda n, dt, seed: torch.randn(n, generator=torch.Generator().manual_seed(seed)).to(dt),
    st.integers(0, 40),
    st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int32]),
    st.integers(0, 1000),
)
_states = st.recursive(
    st.one_of(_plain, _tensors),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(_keys, inner, max_size=4),
    ),
    max_leaves=12,
)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and list(a) == list(b)
            and all(type(k) is type(j) for k, j in zip(a, b))
            and all(_same(a[k], b[k]) for k in a)
        )
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and a == b


@settings(max_examples=25, deadline=None)
@given(state=_states)
def test_any_nesting_roundtrips_exactly_in_a_keyframe(state: Any) -> None:
    with dk.CheckpointChain(f"memory://h-{uuid.uuid4().hex}") as chain:
        chain.save(0, {"s": state})
        assert _same(chain.restore(0)["s"], state)


def test_global_priority_promotion_matches_the_lc_rule() -> None:
    """Elements kept under the chain's state-wide floors are exactly the 2^b - 1 largest
    (sign, exponent) buckets of the whole state's delta, checked against a direct frexp
    implementation."""
    from deltackpt.chain.policy import global_floors

    rng = np.random.default_rng(4)
    for trial in range(20):
        refs = [rng.standard_normal(n).astype(np.float32) for n in (500, 37, 2000)]
        scale = [10.0 ** rng.integers(-6, -1) for _ in refs]
        xs = [r + (s * rng.standard_normal(r.size)).astype(np.float32) for r, s in zip(refs, scale)]
        xs[1][:5] = refs[1][:5]  # exact zeros in the delta
        bits = int(rng.integers(1, 4))
        floors = global_floors(xs, refs, bits)
        deltas = [x - r for x, r in zip(xs, refs)]  # the float32 deltas the encoder sees
        out = [dk.decode(dk.encode(d, bits=bits, bucket_floor=f)) for d, f in zip(deltas, floors)]
        d = np.concatenate(deltas)
        mant, e = np.frexp(d)
        buckets = sorted({(int(ei), bool(si)) for ei, si, di in zip(e, d < 0, d) if di != 0})
        kept = set(sorted(buckets, key=lambda b: (-b[0], -int(b[1])))[: (1 << bits) - 1])
        want = np.array([di != 0 and (int(ei), bool(di < 0)) in kept for ei, di in zip(e, d)])
        got = np.concatenate([o != 0 for o in out])  # kept buckets decode to non-zero values
        assert np.array_equal(got, want), trial


def test_a_failed_save_leaves_the_writer_consistent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A save that fails after coding its deltas (the writer's references are updated in
    place) must not leave later saves coded against a wrong reference."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(50_000, generator=g)
    truth = {}
    with dk.CheckpointChain(tmp_path / "c", anchor_every=100) as chain:
        for s in range(6):
            w = w + 1e-3 * torch.randn(50_000, generator=g)
            if s == 3:
                real = chain.store.write

                def disk_full(name: str, data: bytes, _real: Any = real, **kw: Any) -> None:
                    if name.endswith(".grp"):  # written after every tensor is coded
                        raise OSError(28, "No space left on device")
                    _real(name, data, **kw)

                monkeypatch.setattr(chain.store, "write", disk_full)
                with pytest.raises(OSError, match="space"):
                    chain.save(s, {"w": w.clone()})
                monkeypatch.undo()
            chain.save(s, {"w": w.clone()})
            truth[s] = w.clone()
    with dk.CheckpointChain(tmp_path / "c", mode="r") as chain:
        assert chain.steps() == list(range(6))
        for s, u in truth.items():
            r = chain.restore(s)["w"]  # a wrong reference would raise ReferenceMismatchError
            assert float((r - u).norm() / u.norm()) < 0.01


def test_stats_report_the_blocks_the_file_system_allocates(tmp_path):
    """stats()["allocated_bytes"] is what du counts for the chain's files (whole blocks), so a
    user sees the disk cost of many small files; stores that cannot tell say None."""
    rng = np.random.default_rng(0)
    state = {"w": rng.standard_normal(3000).astype(np.float32), "b": np.zeros(7, np.float32)}
    with dk.CheckpointChain(str(tmp_path / "c")) as chain:
        for step in range(5):
            state = {k: v + 0.01 for k, v in state.items()}
            chain.save(step, state)
        st = chain.stats()
    blocks = 0
    for sub in ("records", "data", "schemas"):
        for root, _, files in os.walk(tmp_path / "c" / sub):
            blocks += sum(os.stat(os.path.join(root, f)).st_blocks * 512 for f in files)
    assert st["allocated_bytes"] == blocks
    assert st["allocated_bytes"] >= st["stored_bytes"] > 0
    with dk.CheckpointChain("memory://stats-alloc") as chain:
        chain.save(0, state)
        assert chain.stats()["allocated_bytes"] is None
