"""ChainWriter / ChainReader on fsspec URLs (memory://, file://) and their error paths, in one
process (DCP without a process group: this process is rank 0 and the coordinator)."""

from __future__ import annotations

import json
import uuid
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("fsspec")
pytest.importorskip("sklearn")
dcp = pytest.importorskip("torch.distributed.checkpoint")

from deltackpt.chain import CheckpointChain  # noqa: E402
from deltackpt.distributed import (  # noqa: E402
    ChainReader,
    ChainWriter,
    committed_steps,
    from_tagged,
    to_tagged,
)
from deltackpt.errors import CorruptDataError  # noqa: E402
from deltackpt.store import open_store  # noqa: E402


def _quiet(f: Any, *a: Any, **k: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return f(*a, **k)


def trained_states(n: int) -> list[dict[str, Any]]:
    """States of a LeNet-5 after each of ``n`` SGD steps on the digits."""
    from deltackpt._realdata import lenet5, load_digits_32

    torch.manual_seed(0)
    x, y, _, _ = load_digits_32()
    model = lenet5()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    out = []
    for i in range(n):
        idx = slice(32 * i, 32 * i + 32)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
        sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        out.append({"model": sd, "meta": {"step": i, "tag": ("a", 1), "none": None}})
    return out


def empty_like(state: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": {k: torch.zeros_like(v) for k, v in state["model"].items()},
        "meta": {"step": None, "tag": None, "none": 0},
    }


def save_all(url: str, states: list[dict[str, Any]], **opts: Any) -> None:
    with ChainWriter(url, **opts) as w:
        for i, sd in enumerate(states):
            _quiet(dcp.save, sd, storage_writer=w, checkpoint_id=str(i))


def load(
    url: str, step: int | None, like: dict[str, Any], branch: str | None = None, **opts: Any
) -> dict[str, Any]:
    sd = empty_like(like)
    with ChainReader(url, step=step, branch=branch, **opts) as r:
        _quiet(dcp.load, sd, storage_reader=r)
    return sd


def check(states: list[dict[str, Any]], loaded: list[dict[str, Any]]) -> None:
    """Step 0 (keyframe) exact; every later step within its delta against the previous restore
    (anchor_every is larger than the run, so every base is the previous save)."""
    lossy = 0
    for i, (u, r) in enumerate(zip(states, loaded)):
        assert r["meta"] == {"step": i, "tag": ("a", 1), "none": None}
        for k, x in u["model"].items():
            if i == 0:
                assert torch.equal(r["model"][k], x), k
                continue
            prev = loaded[i - 1]["model"][k]
            err = (r["model"][k] - x).abs()
            assert bool((err <= (x - prev).abs() + 1e-6 * x.abs()).all()), (i, k)
            lossy += int((err > 0).sum())
    assert lossy > 0


@pytest.fixture(scope="module")
def states() -> list[dict[str, Any]]:
    return trained_states(4)


def test_memory_url_round_trip(states: list[dict[str, Any]]) -> None:
    url = f"memory://dk-{uuid.uuid4().hex}/run"
    save_all(url, states)
    assert committed_steps(open_store(url)) == [0, 1, 2, 3]
    loaded = [load(url, i, states[0]) for i in range(4)]
    check(states, loaded)
    latest = load(url, None, states[0])  # step=None: the latest committed step
    for k in latest["model"]:
        assert torch.equal(latest["model"][k], loaded[3]["model"][k])


def test_file_url_and_plain_path_are_the_same_chain(
    tmp_path: Path, states: list[dict[str, Any]]
) -> None:
    url = f"file://{tmp_path}/run"
    save_all(url, states[:2])
    with ChainWriter(tmp_path / "run") as w:  # continue through a plain path
        for i in (2, 3):
            _quiet(dcp.save, states[i], storage_writer=w, checkpoint_id=str(i))
    from_url = [load(url, i, states[0]) for i in range(4)]
    from_path = [load(str(tmp_path / "run"), i, states[0]) for i in range(4)]
    check(states, from_url)
    for a, b in zip(from_url, from_path):
        for k in a["model"]:
            assert torch.equal(a["model"][k], b["model"][k])
    doc = json.loads(open_store(url).read("dcp/main/000000000003.json"))
    assert doc["format"] == "deltackpt-dcp" and doc["step"] == 3


def test_checkpoint_id_selects_the_step(tmp_path: Path, states: list[dict[str, Any]]) -> None:
    save_all(str(tmp_path), states[:3])
    sd = empty_like(states[0])
    _quiet(dcp.load, sd, storage_reader=ChainReader(tmp_path), checkpoint_id="1")
    assert sd["meta"]["step"] == 1


def dcp_error(f: Any, *a: Any, **k: Any) -> BaseException:
    """The exception a rank raised inside a DCP call (DCP wraps it in CheckpointException)."""
    from torch.distributed.checkpoint.api import CheckpointException

    with pytest.raises(CheckpointException) as info:
        f(*a, **k)
    ((exc, _tb),) = info.value.failures.values()
    return exc


def test_errors(tmp_path: Path, states: list[dict[str, Any]]) -> None:
    save_all(str(tmp_path), states[:2])
    err = dcp_error(save_all, str(tmp_path), states[:1])  # step 0 again
    assert isinstance(err, ValueError) and "last committed step 1" in str(err)
    with pytest.raises(ValueError, match="checkpoint_id"):
        ChainWriter(tmp_path).reset("not-a-step")
    with ChainWriter(tmp_path) as w:
        bad = {"model": states[0]["model"], "obj": object()}
        err = dcp_error(_quiet, dcp.save, bad, storage_writer=w, checkpoint_id="5")
    assert isinstance(err, TypeError) and "no pickle" in str(err)
    assert committed_steps(open_store(tmp_path)) == [0, 1]
    err = dcp_error(load, str(tmp_path), 7, states[0])
    assert "step 7 is not committed" in str(err)  # DCP re-wraps read_metadata errors
    store = open_store(tmp_path)
    raw = bytearray(store.read_raw("dcp/main/000000000001.json"))
    raw[-3] ^= 0x20
    (tmp_path / "dcp" / "main" / "000000000001.json").write_bytes(bytes(raw))
    with pytest.raises(CorruptDataError):
        ChainReader(tmp_path, step=1).read_metadata()
    assert load(str(tmp_path), 0, states[0])["meta"]["step"] == 0  # step 0 unaffected


def test_tagged_json_round_trip() -> None:
    value = {
        "a": [1, 2.5, None, True, "x"],
        3: (1, (2, "b")),
        "bytes": b"\x00\xff",
        "size": torch.Size([2, 3]),
        "inf": float("inf"),
    }
    back = from_tagged(json.loads(json.dumps(to_tagged(value))))
    assert back == value and isinstance(back[3], tuple) and isinstance(back["size"], torch.Size)
    with pytest.raises(TypeError):
        to_tagged({"f": lambda: 0})


def test_step_defaults_to_next_committed(tmp_path: Path, states: list[dict[str, Any]]) -> None:
    with ChainWriter(tmp_path) as w:
        for sd in states[:3]:
            _quiet(dcp.save, sd, storage_writer=w)  # no checkpoint_id: last committed + 1
    assert committed_steps(open_store(tmp_path)) == [0, 1, 2]
    assert load(str(tmp_path), 2, states[0])["meta"]["step"] == 2


def test_failed_commit_is_retried_by_the_same_writer(
    tmp_path: Path, states: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rank record of step 1 is committed, then the coordinator's metadata write fails:
    step 1 does not exist, and the same writer object saves step 1 again."""
    with ChainWriter(tmp_path) as w:
        _quiet(dcp.save, states[0], storage_writer=w, checkpoint_id="0")
        real_write = w.root.write

        def failing(name: str, payload: bytes, **kw: Any) -> None:
            if name.startswith("dcp/"):
                raise OSError("disk full (simulated)")
            real_write(name, payload, **kw)

        monkeypatch.setattr(w.root, "write", failing)
        err = dcp_error(_quiet, dcp.save, states[1], storage_writer=w, checkpoint_id="1")
        assert "disk full" in str(err)
        assert committed_steps(open_store(tmp_path)) == [0]
        assert (tmp_path / "rank-0" / "records" / "main" / f"{1:012d}.json").exists()
        monkeypatch.setattr(w.root, "write", real_write)
        for i in (1, 2, 3):
            _quiet(dcp.save, states[i], storage_writer=w, checkpoint_id=str(i))
    assert committed_steps(open_store(tmp_path)) == [0, 1, 2, 3]
    check(states, [load(str(tmp_path), i, states[0]) for i in range(4)])


def test_a_second_writer_is_refused(tmp_path: Path, states: list[dict[str, Any]]) -> None:
    from deltackpt.store import LockedError

    with ChainWriter(tmp_path) as first:
        _quiet(dcp.save, states[0], storage_writer=first, checkpoint_id="0")
        with ChainWriter(tmp_path) as second:
            err = dcp_error(_quiet, dcp.save, states[1], storage_writer=second, checkpoint_id="1")
        assert isinstance(err, LockedError)
        _quiet(dcp.save, states[1], storage_writer=first, checkpoint_id="1")  # still the writer
    assert committed_steps(open_store(tmp_path)) == [0, 1]
    assert load(str(tmp_path), None, states[0])["meta"]["step"] == 1  # readers need no lock


def test_branch_point_and_rollback(tmp_path: Path, states: list[dict[str, Any]]) -> None:
    """Save 0..3 on main, branch point "slot" at 3 (an exact keyframe on every rank), save 4..5
    on main, roll back: new saves 4..5 (different states) go to "slot.1"; both branches load."""
    alt = [
        {"model": {k: v * 0.5 for k, v in sd["model"].items()}, "meta": dict(sd["meta"])}
        for sd in states
    ]
    with ChainWriter(tmp_path, anchor_every=10) as w:
        for i in range(4):
            _quiet(dcp.save, states[i], storage_writer=w, checkpoint_id=str(i))
        assert w.branch_point("slot") == 3
        for i in (4, 5):
            _quiet(dcp.save, states[i % 4], storage_writer=w, checkpoint_id=str(i))
        assert w.rollback("slot") == "slot.1"
        err = dcp_error(_quiet, dcp.save, alt[0], storage_writer=w, checkpoint_id="3")
        assert "last committed step 3" in str(err)  # the fork step belongs to the parent
        for i in (4, 5):
            _quiet(dcp.save, alt[i % 4], storage_writer=w, checkpoint_id=str(i))
    store = open_store(tmp_path)
    assert committed_steps(store, "main") == [0, 1, 2, 3, 4, 5]
    assert committed_steps(store, "slot.1") == [4, 5]
    assert ChainReader(tmp_path).branch == "slot.1"  # readers default to the writer's HEAD
    assert ChainReader(tmp_path).steps() == [0, 1, 2, 3, 4, 5]
    with CheckpointChain(tmp_path / "rank-0", mode="r") as c:
        assert c.info(3, "main")["kind"] == "keyframe"  # the branch point is exact
    at3 = load(str(tmp_path), 3, states[0], branch="slot.1")  # inherited from main
    for k, v in states[3]["model"].items():
        assert torch.equal(at3["model"][k], v), k
    for branch, truth in (("main", states), ("slot.1", alt)):
        prev = at3
        for i in (4, 5):
            got = load(str(tmp_path), i, states[0], branch=branch)
            for k in states[0]["model"]:
                u = truth[i % 4]["model"][k]
                bound = (u - prev["model"][k]).abs() + 1e-6 * u.abs()
                assert bool(((got["model"][k] - u).abs() <= bound).all()), (branch, i, k)
            prev = got
    other = load(str(tmp_path), 5, states[0], branch="main")["model"]
    mine = load(str(tmp_path), 5, states[0], branch="slot.1")["model"]
    assert any(not torch.equal(other[k], mine[k]) for k in mine)
