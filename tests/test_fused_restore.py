"""The fused restore (all the deltas of a chunk applied while it is in cache) gives bit for bit
what restoring link by link gives: chains of every default codec, dtypes, second moments and
numpy states; and a chain whose delta meets the wrong reference is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import deltackpt as dk
from deltackpt.chain import blobs, restore
from deltackpt.errors import ReferenceMismatchError


def _link_by_link(x, links, cache):
    for link in links:
        x = blobs.apply_delta(x, link, cache)
    return x


def _bits(t):
    if isinstance(t, np.ndarray):
        return t.view(np.uint8).tobytes()
    return t.contiguous().view(torch.uint8).numpy().tobytes()


def _leaves(state, prefix=""):
    if isinstance(state, dict):
        for k, v in state.items():
            yield from _leaves(v, f"{prefix}/{k}")
    else:
        yield prefix, state


def _chain(tmp_path, options, make, steps=14):
    g = torch.Generator().manual_seed(3)
    cur = make(g)
    with dk.CheckpointChain(tmp_path, **options) as chain:
        for step in range(steps):
            cur = {
                k: v + (1e-3 * torch.randn(v.shape, generator=g)).to(v.dtype)
                for k, v in cur.items()
            }
            m = cur["w"].float()
            opt = {"exp_avg": 0.1 * m, "exp_avg_sq": (m * m * 1e-2 - 1e-4).clamp(min=0)}
            chain.save(step, {"model": cur, "opt": opt})
    return dk.CheckpointChain(tmp_path, mode="r")


def _torch_state(g):
    return {
        "w": torch.randn(700, 600, generator=g),
        "h": torch.randn(300, 257, generator=g).half(),
        "b": torch.randn(1000, 300, generator=g).bfloat16(),
    }


@pytest.mark.parametrize("options", [{}, {"quantizer": "exponent"}, {"anchor_every": 3}])
def test_fused_restore_equals_link_by_link(tmp_path, monkeypatch, options) -> None:
    reader = _chain(tmp_path, options, _torch_state)
    assert reader.info()["depth"] >= 3
    for step in reader.steps()[-4:]:
        fused = reader.restore(step)
        reader.records.clear()
        with monkeypatch.context() as m:
            m.setattr(restore, "apply_deltas", _link_by_link)
            linked = reader.restore(step)
        reader.records.clear()
        a, b = dict(_leaves(fused)), dict(_leaves(linked))
        assert a.keys() == b.keys()
        for path in a:
            assert _bits(a[path]) == _bits(b[path]), (step, path)


def test_the_fused_path_is_taken(tmp_path, monkeypatch) -> None:
    reader = _chain(tmp_path, {}, _torch_state, steps=6)
    calls = []
    real = blobs.decode_chain

    def spy(bs, out, clamp0):
        calls.append((len(bs), list(clamp0)))
        return real(bs, out, clamp0)

    monkeypatch.setattr(blobs, "decode_chain", spy)
    reader.restore()
    assert calls and max(n for n, _ in calls) >= 2
    assert any(any(c) for _, c in calls)  # the second moments' clamps go through the core


def test_numpy_states_restore_alike(tmp_path, monkeypatch) -> None:
    rng = np.random.default_rng(1)
    cur = {"w": rng.standard_normal((500, 300)).astype(np.float32)}
    with dk.CheckpointChain(tmp_path) as chain:
        for step in range(8):
            cur = {"w": cur["w"] + 1e-3 * rng.standard_normal((500, 300)).astype(np.float32)}
            chain.save(step, {"m": cur, "v": {"sq": np.maximum(cur["w"] * 1e-2, 0)}})
    reader = dk.CheckpointChain(tmp_path, mode="r")
    fused = reader.restore()
    reader.records.clear()
    monkeypatch.setattr(restore, "apply_deltas", _link_by_link)
    linked = reader.restore()
    assert _bits(fused["m"]["w"]) == _bits(linked["m"]["w"])
    assert _bits(fused["v"]["sq"]) == _bits(linked["v"]["sq"])


def test_decode_chain_refuses_a_wrong_reference() -> None:
    g = torch.Generator().manual_seed(0)
    s0 = torch.randn(5000, generator=g)
    s1 = s0 + 0.01 * torch.randn(5000, generator=g)
    s2 = s1 + 0.01 * torch.randn(5000, generator=g)
    r1 = torch.empty_like(s1)
    b1 = dk.encode(s1, reference=s0, quantizer="exponent", reconstruction=r1)
    b2 = dk.encode(s2, reference=r1, quantizer="exponent")
    out = s0.clone()
    dk._api.decode_chain([b1, b2], out, [False, False])
    want = dk.decode(b2, reference=dk.decode(b1, reference=s0))
    assert torch.equal(out, want)
    with pytest.raises(ReferenceMismatchError):
        dk._api.decode_chain([b2], s0.clone(), [False])
