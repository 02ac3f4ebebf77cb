"""A chain that defends itself against damaged, mixed-up and forged files (issue 14): every
probe either gets the right state or a typed error, and verify() reports the damage."""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import deltackpt as dk
from deltackpt.store import LocalStore


def _state(s: int) -> dict[str, Any]:
    return {"w": torch.linspace(0, 1, 5000) + s * 0.01, "i": torch.arange(3) + s}


def _chain(root: Path, steps: int = 5, **kw: Any) -> None:
    with dk.CheckpointChain(root, **kw) as chain:
        for s in range(steps):
            chain.save(s, _state(s))


def _record(store: LocalStore, name: str) -> dict[str, Any]:
    return json.loads(zlib.decompress(store.read(name)))


def _put_record(store: LocalStore, name: str, doc: dict[str, Any]) -> None:
    store.write(name, zlib.compress(json.dumps(doc).encode()))


def _group_file(root: Path, step: int) -> Path:
    (path,) = (root / "data" / "main").glob(f"{step:012d}-*.grp")
    return path


def test_a_swapped_data_file_is_corrupt_naming_it(tmp_path: Path) -> None:
    # A backup restore or sync tool copies step 3's group file over step 4's (same size, a
    # valid frame): restore(4) must not return step 3's integers.
    root = tmp_path / "c"
    _chain(root)
    three, four = _group_file(root, 3), _group_file(root, 4)
    assert three.stat().st_size == four.stat().st_size
    shutil.copyfile(three, four)
    reader = dk.CheckpointChain(root, mode="r")
    with pytest.raises(dk.CorruptDataError, match=four.name):
        reader.restore(4)
    assert reader.restore(3)["i"].tolist() == [3, 4, 5]
    bad = reader.verify()
    assert list(bad) == ["main/4"] and four.name in bad["main/4"]


def test_records_without_digests_still_read(tmp_path: Path) -> None:
    # Version 1 records (written before records bound their files) restore as before.
    root = tmp_path / "c"
    _chain(root, steps=3)
    store = LocalStore(root)
    for s in range(3):
        name = f"records/main/{s:012d}.json"
        doc = _record(store, name)
        assert doc["version"] == 2 and len(doc["digests"]) == doc["nfiles"]
        del doc["digests"]
        _put_record(store, name, {**doc, "version": 1})
    reader = dk.CheckpointChain(root, mode="r")
    assert reader.restore(2)["i"].tolist() == [2, 3, 4]
    assert reader.verify() == {}


def test_a_version_2_record_without_digests_is_corrupt(tmp_path: Path) -> None:
    root = tmp_path / "c"
    _chain(root, steps=2)
    store = LocalStore(root)
    name = "records/main/000000000001.json"
    doc = _record(store, name)
    del doc["digests"]
    _put_record(store, name, doc)
    with pytest.raises(dk.CorruptDataError, match="digests"):
        dk.CheckpointChain(root, mode="r").restore(1)


BASE_PROBE = """
import json
import deltackpt as dk
from deltackpt.cli import main
root = {root!r}
chain = dk.CheckpointChain(root, mode="r")
out = {{}}
for what, call in [
    ("restore", lambda: chain.restore(4)),
    ("info", lambda: chain.info(4)),
    ("stats", lambda: chain.stats()),
]:
    try:
        call()
        out[what] = "ok"
    except dk.CorruptDataError as e:
        out[what] = "corrupt: " + str(e)
out["verify"] = chain.verify()
out["cli_verify"] = main(["verify", root])
out["cli_inspect"] = main(["inspect", root])
print(json.dumps(out))
"""


@pytest.mark.parametrize(
    "base",
    [["main", 4], ["main", 5]],  # itself; a later step (step 5's base is 4: a loop)
    ids=["self", "loop"],
)
def test_forged_bases_never_hang(tmp_path: Path, base: list[Any]) -> None:
    from conftest import run_limited

    root = tmp_path / "c"
    _chain(root, steps=6, anchor_every=2, keyframe_every=100)
    store = LocalStore(root)
    name = "records/main/000000000004.json"
    _put_record(store, name, {**_record(store, name), "base": base})
    out = run_limited(BASE_PROBE.format(root=str(root)), mem_mb=2048, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    for what in ("restore", "info", "stats"):
        assert res[what].startswith("corrupt") and "base" in res[what], res
    assert "main/4" in res["verify"]
    assert res["cli_verify"] != 0


def test_a_base_of_a_lower_level_is_corrupt(tmp_path: Path) -> None:
    # anchor_every=2: step 2 is an anchor (level 1) over the keyframe; step 3 a level-0 step
    # on step 2. Rebasing the anchor onto step 1 (level 0) breaks the level order.
    root = tmp_path / "c"
    _chain(root, steps=4, anchor_every=2, keyframe_every=100)
    store = LocalStore(root)
    name = "records/main/000000000002.json"
    doc = _record(store, name)
    assert doc["level"] == 1 and doc["base"] == ["main", 0]
    _put_record(store, name, {**doc, "base": ["main", 1]})
    reader = dk.CheckpointChain(root, mode="r")
    with pytest.raises(dk.CorruptDataError, match="level"):
        reader.restore(2)
    assert "main/2" in reader.verify()


def _forge(store: LocalStore, name: str, payload: bytes) -> None:
    """Write ``payload`` as ``name`` with a valid frame, as a forger would."""
    store.write(name, payload)


PARSE_PROBE = """
import json
import deltackpt as dk
chain = dk.CheckpointChain({root!r}, mode="r")
try:
    chain.restore(2)
    print("restored")
except dk.CorruptDataError as e:
    print("corrupt", e)
print(json.dumps(chain.verify()))
"""


def _probe_forged_record(tmp_path: Path, payload: bytes) -> list[str]:
    from conftest import run_limited

    root = tmp_path / "c"
    _chain(root, steps=3)
    _forge(LocalStore(root), "records/main/000000000002.json", payload)
    out = run_limited(PARSE_PROBE.format(root=str(root)), mem_mb=1024, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("corrupt"), lines
    assert "main/2" in json.loads(lines[1])
    return lines


def test_a_record_with_ten_million_files_is_corrupt(tmp_path: Path) -> None:
    root = tmp_path / "src"
    _chain(root, steps=3)
    doc = _record(LocalStore(root), "records/main/000000000002.json")
    forged = zlib.compress(json.dumps({**doc, "nfiles": 10**7}).encode())
    assert len(forged) < 4096
    lines = _probe_forged_record(tmp_path, forged)
    assert "data files" in lines[0]


def test_a_zlib_bomb_record_is_corrupt(tmp_path: Path) -> None:
    # ~300 KB inflating to 300 MiB: refused at the record size limit, not inflated.
    bomb = zlib.compress(b'{"format": "deltackpt-chain", "pad": "' + b" " * (300 << 20), 9)
    lines = _probe_forged_record(tmp_path, bomb)
    assert "inflates beyond" in lines[0]


def test_json_nested_100000_deep_is_corrupt(tmp_path: Path) -> None:
    deep = zlib.compress(b"[" * 100_000 + b"]" * 100_000)
    _probe_forged_record(tmp_path, deep)


def test_a_state_nested_deeper_than_readers_parse_is_refused_before_writing(
    tmp_path: Path,
) -> None:
    state: Any = {"w": torch.ones(4)}
    for _ in range(300):
        state = {"x": state}
    root = tmp_path / "c"
    with dk.CheckpointChain(root) as chain:
        with pytest.raises(dk.InvalidArgumentError, match="nested"):
            chain.save(0, state)
        assert not [p for p in root.rglob("*") if p.is_file() and "data" in p.parts]
        chain.save(0, {"w": torch.ones(4)})
    assert dk.CheckpointChain(root, mode="r").restore(0)["w"].tolist() == [1.0] * 4


def _outside_files(tmp_path: Path, root: Path) -> list[Path]:
    return [p for p in tmp_path.rglob("*") if root not in p.parents and p != root]


def test_a_forged_head_branch_never_leaves_the_chain_directory(tmp_path: Path) -> None:
    root = tmp_path / "deep" / "er" / "c"
    _chain(root, steps=2)
    before = _outside_files(tmp_path, root)
    LocalStore(root).write("HEAD.json", json.dumps({"branch": "../../../../x/evil"}).encode())
    with pytest.raises(dk.CorruptDataError, match="HEAD.json"):
        dk.CheckpointChain(root, mode="r").restore()
    with pytest.raises(dk.CorruptDataError, match="HEAD.json"):
        dk.CheckpointChain(root).save(5, _state(5))
    assert _outside_files(tmp_path, root) == before


@pytest.mark.parametrize(
    "change",
    [
        {"base": ["../../../x", 0]},
        {"prefix": "data/../../../etc/x"},
        {"schema": "../../../../etc/passwd"},
        {"branch": "../main"},
    ],
    ids=["base", "prefix", "schema", "branch"],
)
def test_forged_names_in_records_are_corrupt(tmp_path: Path, change: dict[str, Any]) -> None:
    root = tmp_path / "c"
    _chain(root, steps=2)
    store = LocalStore(root)
    name = "records/main/000000000001.json"
    _put_record(store, name, {**_record(store, name), **change})
    with pytest.raises(dk.CorruptDataError):
        dk.CheckpointChain(root, mode="r").restore(1)


def test_forged_branch_and_point_files_are_corrupt(tmp_path: Path) -> None:
    root = tmp_path / "c"
    _chain(root, steps=2)
    store = LocalStore(root)
    store.write(
        "branches/main.json",
        json.dumps({"name": "main", "parent": {"branch": "/etc", "step": 0}}).encode(),
    )
    with pytest.raises(dk.CorruptDataError):
        dk.CheckpointChain(root, mode="r").restore(1)


def test_the_local_store_refuses_paths_that_leave_it(tmp_path: Path) -> None:
    root = tmp_path / "c"
    _chain(root, steps=1)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"x")
    store = LocalStore(root)
    for name in ["../secret.bin", "/etc/passwd", "data//x", "data/./x"]:
        with pytest.raises(dk.CorruptDataError):
            store.read_raw(name)
    (root / "data" / "link").symlink_to(secret)
    with pytest.raises(dk.CorruptDataError, match="symlink"):
        store.read_raw("data/link")
    with pytest.raises(dk.CorruptDataError, match="symlink"):
        store.write("data/link", b"y")
    assert secret.read_bytes() == b"x"


@pytest.mark.parametrize(
    "value",
    [
        np.array(["a", "bc"]),
        np.array([object(), 1], dtype=object),
        np.zeros(3, dtype=[("a", "i4"), ("b", "f4")]),
        torch.quantize_per_tensor(torch.ones(4), 0.1, 3, torch.qint8),
        torch.empty(4, device="meta"),
        torch.eye(3).to_sparse(),
    ],
    ids=["str", "object", "structured", "qint8", "meta", "sparse"],
)
def test_save_refuses_what_it_cannot_restore_before_writing(tmp_path: Path, value: Any) -> None:
    root = tmp_path / "c"
    with dk.CheckpointChain(root) as chain:
        with pytest.raises(dk.InvalidArgumentError, match="cannot store"):
            chain.save(0, {"w": torch.ones(4), "bad": value})
        assert not (root / "data").exists() and not (root / "records").exists()
        chain.save(0, {"w": torch.ones(4)})


def test_big_endian_arrays_come_back_equal(tmp_path: Path) -> None:
    x = np.arange(6, dtype=">i4")
    root = tmp_path / "c"
    with dk.CheckpointChain(root) as chain:
        chain.save(0, {"x": x})
    assert dk.CheckpointChain(root, mode="r").restore(0)["x"].tolist() == x.tolist()


@pytest.mark.parametrize("bits", [-1, 256, 2.5])
def test_bad_bits_are_typed(bits: Any) -> None:
    with pytest.raises(dk.InvalidArgumentError, match="bits"):
        dk.encode(np.ones(100, np.float32), bits=bits)


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_decode_takes_bytearray_and_memoryview(kind: Any) -> None:
    x = np.linspace(0, 1, 100, dtype=np.float32)
    blob = kind(dk.encode(x, quantizer="none"))
    assert dk.decode(blob).tolist() == x.tolist()
    assert dk.inspect(blob)["shape"] == [100]
    with pytest.raises(dk.InvalidArgumentError):
        dk.decode("not a blob")


def _rolled_back_chain(root: Path) -> None:
    """main: steps 0-4 with a branch point at 2; HEAD then moves to p.1, which saves 3."""
    with dk.CheckpointChain(root) as chain:
        for s in range(3):
            chain.save(s, _state(s))
        chain.branch_point("p")
        for s in (3, 4):
            chain.save(s, _state(s))
        chain.rollback("p")
        chain.save(3, _state(30))


def test_a_lost_head_is_reported_and_the_writer_keeps_the_logged_branch(tmp_path: Path) -> None:
    root = tmp_path / "c"
    _rolled_back_chain(root)
    (root / "HEAD.json").unlink()
    reader = dk.CheckpointChain(root, mode="r")
    assert "HEAD.json" in reader.verify()["log"]
    assert reader.branch == "p.1" and reader.restore()["i"].tolist() == [30, 31, 32]
    with dk.CheckpointChain(root) as writer:  # not main, the rolled-back (poisoned) branch
        assert writer.branch == "p.1"
        writer.save(4, _state(40))
    assert dk.CheckpointChain(root, mode="r").verify() == {}


def test_an_old_head_put_back_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "c"
    _rolled_back_chain(root)
    LocalStore(root).write("HEAD.json", json.dumps({"branch": "main"}).encode())
    with pytest.raises(dk.CorruptDataError, match="commit log"):
        dk.CheckpointChain(root)
    reader = dk.CheckpointChain(root, mode="r")
    assert "commit log" in reader.verify()["log"]
    with pytest.raises(dk.CorruptDataError, match="commit log"):
        reader.restore()
    assert reader.restore(branch="p.1")["i"].tolist() == [30, 31, 32]


@pytest.mark.parametrize(
    "lost", ["records/p.1/000000000003.json", "branches/p.1.json"], ids=["record", "branch"]
)
def test_a_lost_newest_record_or_branch_file_is_detected(tmp_path: Path, lost: str) -> None:
    root = tmp_path / "c"
    _rolled_back_chain(root)
    (root / lost).unlink()
    assert lost in dk.CheckpointChain(root, mode="r").verify()["log"]
    with pytest.raises(dk.CorruptDataError, match="lost committed files"):
        dk.CheckpointChain(root)


def test_an_interrupted_save_is_adopted_not_reported(tmp_path: Path) -> None:
    # Killed between the record's rename (the commit) and its log entry: the save stands.
    root = tmp_path / "c"
    _chain(root, steps=3)
    log = sorted((root / "log").iterdir())
    log[-1].unlink()
    assert dk.CheckpointChain(root, mode="r").verify() == {}
    with dk.CheckpointChain(root) as chain:
        assert chain.latest_step() == 2
        chain.save(3, _state(3))
    assert dk.CheckpointChain(root, mode="r").verify() == {}


def test_a_step_retired_while_read_is_step_not_found(tmp_path: Path, monkeypatch) -> None:
    import deltackpt.chain.restore as restore_mod

    root = tmp_path / "c"
    writer = dk.CheckpointChain(root, max_to_keep=2, keyframe_every=1)
    for s in range(3):
        writer.save(s, _state(s))
    reader = dk.CheckpointChain(root, mode="r")
    assert reader.steps() == [1, 2]
    decode = restore_mod.decode_tensors

    def racing(*args: Any, **kw: Any) -> Any:  # retention runs between resolve and read
        writer.save(3, _state(3))
        monkeypatch.setattr(restore_mod, "decode_tensors", decode)
        return decode(*args, **kw)

    monkeypatch.setattr(restore_mod, "decode_tensors", racing)
    with pytest.raises(dk.StepNotFoundError, match="retired") as err:
        reader.restore(1)
    assert isinstance(err.value, KeyError) and not isinstance(err.value, dk.CorruptDataError)
    writer.close()
    with pytest.raises(dk.StepNotFoundError):
        reader.restore(1)  # and afterwards, simply not there


READER_LOOP = """
import time, torch
import deltackpt as dk
chain = dk.CheckpointChain({root!r}, mode="r")
ok = gone = corrupt = 0
end = time.time() + 6
while time.time() < end:
    try:
        steps = chain.steps()
        chain.restore(steps[0])
        ok += 1
    except dk.StepNotFoundError:
        gone += 1
    except dk.CorruptDataError as e:
        corrupt += 1
        print("corrupt:", e)
print(ok, gone, corrupt)
"""


def test_readers_beside_retention_never_see_corrupt_data(tmp_path: Path) -> None:
    import subprocess
    import sys

    from conftest import package_parent

    root = tmp_path / "c"
    writer = dk.CheckpointChain(root, max_to_keep=2, keyframe_every=1)
    writer.save(0, _state(0))
    path = f"import sys; sys.path.insert(0, {package_parent()!r})\n"
    code = path + READER_LOOP.format(root=str(root))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    step = 1
    while proc.poll() is None:
        writer.save(step, _state(step))
        step += 1
    writer.close()
    out = proc.stdout.read().strip().splitlines() if proc.stdout else []
    ok, gone, corrupt = map(int, out[-1].split())
    assert corrupt == 0, out[:5]
    assert ok > 0 and step > 20


def test_a_damaged_old_record_does_not_stop_the_writer(tmp_path: Path) -> None:
    # keyframe_every=2: step 3 needs only the keyframe at 2; a flipped bit in step 0's record
    # must not stop the writer, nor make it delete step 0's data (verify reports it).
    root = tmp_path / "c"
    _chain(root, steps=4, keyframe_every=2)
    rec = root / "records" / "main" / f"{0:012d}.json"
    raw = bytearray(rec.read_bytes())
    raw[-1] ^= 1
    rec.write_bytes(bytes(raw))
    data = sorted((root / "data" / "main").glob(f"{0:012d}-*"))
    with dk.CheckpointChain(root, keyframe_every=2) as chain:
        chain.save(4, _state(4))
    assert sorted((root / "data" / "main").glob(f"{0:012d}-*")) == data and data
    reader = dk.CheckpointChain(root, mode="r")
    assert list(reader.verify()) == ["main/0", "main/1"]  # step 1 is coded on step 0
    assert reader.restore(4)["i"].tolist() == [4, 5, 6]
