"""Chains, DCP chains and the command line on a real S3 API (moto's server on loopback,
through s3fs): round trips exact, the second writer refused (tests/s3_server.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
from s3_server import S3, s3_endpoint_fixture, s3_fixture  # noqa: F401  (fixtures)
from test_distributed_fsspec import check, dcp_error, empty_like, trained_states

import deltackpt as dk
from deltackpt.distributed import ChainReader, ChainWriter, committed_steps
from deltackpt.store import FsspecStore, open_store

PKG_ROOT = str(Path(dk.__file__).resolve().parent.parent)


def _states(n: int) -> list[dict[str, Any]]:
    """A random walk of float tensors beside an integer tensor and plain values."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((300, 70)).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    out = []
    for i in range(n):
        w = w + 0.01 * rng.standard_normal(w.shape).astype(np.float32)
        b = b + 0.01 * rng.standard_normal(b.shape).astype(np.float32)
        ids = torch.arange(i, i + 10)
        out.append({"w": w.copy(), "b": torch.from_numpy(b.copy()), "ids": ids, "epoch": i})
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    return bool(a == b)


def _save(target: Any, states: list[dict[str, Any]], **opts: Any) -> None:
    with dk.CheckpointChain(target, anchor_every=3, rel_error=1e-3, **opts) as chain:
        for i, st in enumerate(states):
            chain.save(i, st, exact=i == 4)


def test_chain_round_trip_on_s3_matches_a_local_chain(s3: S3, tmp_path: Path) -> None:
    states = _states(7)
    url = s3.url("run")
    _save(url, states)
    _save(tmp_path / "run", states)
    assert isinstance(open_store(url), FsspecStore)
    with dk.CheckpointChain(url, mode="r") as remote, dk.CheckpointChain(tmp_path / "run") as local:
        assert remote.steps() == local.steps() == list(range(7))
        assert remote.verify(decode_all=True) == {}
        for i in range(7):
            got = remote.restore(i)
            assert _same(got, local.restore(i)), i  # bit for bit what a local chain gives
            assert got["epoch"] == i and torch.equal(got["ids"], states[i]["ids"])
        for i in (0, 4):  # the keyframes: the first save and exact=True
            assert _same(remote.restore(i), states[i])
        lossy = remote.restore(5)["w"]
        assert not np.array_equal(lossy, states[5]["w"])  # a delta, within its bound
        assert np.linalg.norm(lossy - states[5]["w"]) <= 1e-3 * np.linalg.norm(states[5]["w"])


def test_chain_on_s3_through_storage_options(s3: S3, monkeypatch: pytest.MonkeyPatch) -> None:
    """The endpoint given to the chain, not the environment (credentials still from it)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    states = _states(3)
    _save(s3.url("opts"), states, storage_options=s3.storage_options)
    with dk.CheckpointChain(s3.url("opts"), mode="r", storage_options=s3.storage_options) as chain:
        assert _same(chain.restore(0), states[0])
        assert chain.steps() == [0, 1, 2]


def test_second_writer_refused_on_s3(s3: S3) -> None:
    url = s3.url("locked")
    with dk.CheckpointChain(url) as chain:
        chain.save(0, _states(1)[0])
        with pytest.raises(dk.LockedError, match="locked by another writer"):
            dk.CheckpointChain(url)
        with dk.CheckpointChain(url, mode="r") as reader:  # readers need no lock
            assert reader.steps() == [0]
    with dk.CheckpointChain(url) as chain:  # released on close
        chain.save(1, _states(2)[1])


def _quiet(f: Any, *a: Any, **k: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return f(*a, **k)


def test_dcp_round_trip_on_s3(s3: S3, tmp_path: Path) -> None:
    states = trained_states(4)
    url = s3.url("dcp")
    with ChainWriter(url) as w:
        for i, sd in enumerate(states):
            _quiet(dcp.save, sd, storage_writer=w, checkpoint_id=str(i))
        with ChainWriter(url) as second:  # a second coordinator on the same chain
            err = dcp_error(_quiet, dcp.save, states[0], storage_writer=second, checkpoint_id="9")
        assert isinstance(err, dk.LockedError)
    assert committed_steps(open_store(url)) == [0, 1, 2, 3]
    doc = json.loads(open_store(url).read("dcp/main/000000000003.json"))
    assert doc["epoch"] == 1  # the coordinator's lease epoch, in the commit
    with ChainWriter(tmp_path / "dcp") as w:
        for i, sd in enumerate(states):
            _quiet(dcp.save, sd, storage_writer=w, checkpoint_id=str(i))
    loaded = []
    for i in range(4):
        remote, local = empty_like(states[0]), empty_like(states[0])
        with ChainReader(url, step=i) as r:
            _quiet(dcp.load, remote, storage_reader=r)
        with ChainReader(tmp_path / "dcp", step=i) as r:
            _quiet(dcp.load, local, storage_reader=r)
        assert _same(remote["model"], local["model"]), i
        loaded.append(remote)
    check(states, loaded)


def _cli(s3: S3, *args: str) -> subprocess.CompletedProcess[str]:
    """The command line as a user runs it against an S3-compatible endpoint: the endpoint
    and credentials in the environment (``AWS_ENDPOINT_URL``, read by botocore and s3fs)."""
    return _cli_with(s3.env, *args)


def _cli_with(aws_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The command line with ``aws_env`` as its only AWS/fsspec settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FSSPEC_"))}
    env.update(aws_env)
    env["PYTHONPATH"] = PKG_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "deltackpt", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_cli_verify_inspect_restore_on_s3(s3: S3, tmp_path: Path) -> None:
    states = _states(5)
    url = s3.url("cli")
    _save(url, states)
    done = _cli(s3, "verify", url)
    assert done.returncode == 0, done.stderr
    done = _cli(s3, "inspect", url)
    assert done.returncode == 0, done.stderr
    assert "main" in done.stdout and "keyframe" in done.stdout
    out = tmp_path / "last.pt"
    done = _cli(s3, "restore", url, "--step", "3", "--out", str(out))
    assert done.returncode == 0, done.stderr
    got = torch.load(out, weights_only=True)
    with dk.CheckpointChain(url, mode="r") as chain:
        want = chain.restore(3)
    assert torch.equal(got["w"], torch.from_numpy(want["w"]))
    assert torch.equal(got["b"], want["b"]) and got["epoch"] == 3
    # a damaged file is found through S3 too (exit 1, the file named)
    name = open_store(url).list("data")[0]
    open_store(url).fs.pipe_file(f"{s3.bucket}/cli/{name}", b"garbage")
    done = _cli(s3, "verify", url)
    assert done.returncode == 1 and name.rsplit("/", 1)[-1] in done.stdout + done.stderr


def test_cli_names_an_unreachable_endpoint_without_a_traceback() -> None:
    """A wrong endpoint is the user's setup, not a bug: one line naming the store and what to
    check, exit 2 (usage), no 'internal error'. Port 9 (discard) refuses at once on loopback;
    one attempt, so botocore does not retry for a minute."""
    aws = {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_MAX_ATTEMPTS": "1",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
    }
    done = _cli_with(aws, "inspect", "s3://no-such-bucket/run")
    assert done.returncode == 2, done.stderr
    assert "cannot reach the store of s3://no-such-bucket/run" in done.stderr
    assert "AWS_ENDPOINT_URL" in done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
