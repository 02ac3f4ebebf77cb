"""The chain keeps its error budgets: every float tensor of every restored step (steps,
anchors of each level, keyframes) is within its bound of the state that was saved, with the
defaults, with a user's rel_error= and tolerance=, for AdamW and SGD states; info() reports
the measured errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

import deltackpt as dk
from deltackpt._realdata import lenet5, load_digits_32
from deltackpt.chain.policy import DEFAULT_OPTIMIZER_REL_ERROR, DEFAULT_REL_ERROR

STEPS = 40


def _flat(state: Any, prefix: tuple = ()) -> dict[tuple, Any]:
    """Path -> tensor of a nested state (dicts, lists), as the chain sees it."""
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    else:
        return {}
    out: dict[tuple, Any] = {}
    for k, v in items:
        out.update(_flat(v, (*prefix, k)))
    return out


def _train(opt_name: str, path: Any, **chain_kw: Any) -> dict[int, dict[tuple, Any]]:
    """LeNet-5 on the digits, a save of model + optimizer per step; the true states."""
    torch.manual_seed(0)
    x, y, _, _ = load_digits_32()
    model = lenet5()
    if opt_name == "adamw":
        opt: Any = torch.optim.AdamW(model.parameters(), lr=2e-3)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    truth = {}
    with dk.CheckpointChain(path, anchor_every=4, **chain_kw) as chain:
        for step in range(STEPS):
            idx = torch.randint(0, len(x), (32,), generator=g)
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            state = {"model": model.state_dict(), "optimizer": opt.state_dict()}
            chain.save(step, state)
            truth[step] = {k: v.detach().clone() for k, v in _flat(state).items()}
    return truth


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    n = float(b.norm())
    return float((a - b).norm()) / n if n else float((a - b).norm())


def _check_default_budgets(got: dict[tuple, Any], want: dict[tuple, Any], step: int) -> None:
    for path, u in want.items():
        r = got[path]
        if not u.is_floating_point() or u.numel() < 2:
            assert torch.equal(r, u), (step, path)  # exact: counters, integers, scalars
            continue
        last = path[-1]
        if last == "exp_avg_sq":
            assert ((r - u).abs() <= 0.01 * u.abs()).all(), (step, path)
            assert torch.equal(r > 0, u > 0), (step, path)  # never a positive entry as 0
        elif last == "exp_avg":
            v = got[(*path[:-1], "exp_avg_sq")].double()
            err = (r.double() - u.double()).abs() / (v.sqrt() + 1e-8)
            assert float(err.max()) <= 0.05, (step, path, float(err.max()))
        elif path[0] == "optimizer":
            assert _rel(r, u) <= DEFAULT_OPTIMIZER_REL_ERROR, (step, path)
        else:
            assert _rel(r, u) <= DEFAULT_REL_ERROR, (step, path, _rel(r, u))


@pytest.mark.parametrize("opt_name", ["adamw", "sgd"])
def test_default_budgets_hold_at_every_step(tmp_path: Any, opt_name: str) -> None:
    truth = _train(opt_name, tmp_path / "c")
    with dk.CheckpointChain(tmp_path / "c", mode="r") as chain:
        kinds = {chain.info(s)["kind"] for s in truth}
        assert kinds == {"keyframe", "anchor", "step"}
        for step, want in truth.items():
            _check_default_budgets(_flat(chain.restore(step)), want, step)


def test_user_rel_error_binds_every_float_tensor(tmp_path: Any) -> None:
    e = 3e-4
    truth = _train("adamw", tmp_path / "c", rel_error=e)
    with dk.CheckpointChain(tmp_path / "c", mode="r") as chain:
        for step, want in truth.items():
            got = _flat(chain.restore(step))
            for path, u in want.items():
                if u.is_floating_point() and u.numel() >= 2:
                    assert _rel(got[path], u) <= e, (step, path, _rel(got[path], u))
                    if path[-1] == "exp_avg_sq":  # and the Adam-aware bound still holds
                        assert ((got[path] - u).abs() <= 0.01 * u.abs()).all()


def test_user_tolerance_binds_every_element(tmp_path: Any) -> None:
    t = 2e-5
    truth = _train("adamw", tmp_path / "c", tolerance=t)
    with dk.CheckpointChain(tmp_path / "c", mode="r") as chain:
        for step, want in truth.items():
            got = _flat(chain.restore(step))
            for path, u in want.items():
                if u.is_floating_point():
                    assert float((got[path].double() - u.double()).abs().max()) <= t, path


def test_info_reports_the_measured_error(tmp_path: Any) -> None:
    truth = _train("adamw", tmp_path / "c")
    with dk.CheckpointChain(tmp_path / "c", mode="r") as chain:
        step = STEPS - 1
        got = _flat(chain.restore(step))
        report = chain.info(step)["tensors"]
        for path_json, r in report.items():
            path = tuple(json.loads(path_json))
            u = truth[step][path]
            if r["mode"] == "delta":
                assert r["rel_l2_error"] == pytest.approx(_rel(got[path], u), rel=1e-5, abs=1e-12)
                err = float((got[path].double() - u.double()).abs().max())
                assert r["max_abs_error"] == pytest.approx(err, rel=1e-6, abs=1e-30)
            else:
                assert r["rel_l2_error"] == 0.0 and torch.equal(got[path], u)


def test_lc_scheme_keeps_adam_moments_safe(tmp_path: Any) -> None:
    """quantizer='exponent' (LC-checkpoint) for the weights; Adam's moments keep their
    bounds (the LC scheme alone returned positive second moments as 0)."""
    truth = _train("adamw", tmp_path / "c", quantizer="exponent", bits=3)
    with dk.CheckpointChain(tmp_path / "c", mode="r") as chain:
        for step, want in truth.items():
            got = _flat(chain.restore(step))
            for path, u in want.items():
                if path[-1] == "exp_avg_sq":
                    assert torch.equal(got[path] > 0, u > 0), (step, path)
                    assert ((got[path] - u).abs() <= 0.01 * u.abs()).all(), (step, path)


@pytest.mark.parametrize(
    "kw",
    [
        {"rel_error": 1e-3, "tolerance": 1e-3},
        {"rel_error": -1},
        {"quantizer": "uniform"},
        {"second_moment_rel": 1.0},
        {"tolerance": "small"},
    ],
)
def test_bad_budgets_are_refused(tmp_path: Any, kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        dk.CheckpointChain(tmp_path / "c", **kw)
