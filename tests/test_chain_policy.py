"""The chain's policy as pure functions: record kinds, levels and bases; bits, modes and
bucket floors per tensor; which steps retention keeps."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from deltackpt.chain import policy
from deltackpt.chain.config import ChainConfig
from deltackpt.chain.records import KEYFRAME_LEVEL
from deltackpt.chain.retention import kept_steps
from deltackpt.chain.snapshot import Leaf

CFG = ChainConfig(
    bits=3,
    anchor_every=3,
    keyframe_every=None,
    optimizer_bits=3,
    anchor_bits=4,
    max_to_keep=None,
    keep_every=None,
    group_below=4096,
    coder="auto",
    scope="state",
    threads=1,
)


def simulate(cfg: ChainConfig, steps: list[int], exact: frozenset[int] = frozenset()) -> list:
    """Plan a save at each step, keeping the reference stack as the writer does; return
    (step, kind, level, base step or None) per save."""
    stack: list[tuple[int, int]] = []  # (level, step), the keyframe first
    ordinals: dict[int, int] = {}
    out = []
    for step in steps:
        last = ordinals[stack[-1][1]] if stack else None
        plan = policy.plan_save(stack, last, step, exact=step in exact, cfg=cfg)
        base = None if plan.base is None else stack[plan.base][1]
        out.append((step, plan.kind, plan.level, base))
        ordinals[step] = plan.ordinal
        keep = policy.kept_levels([lv for lv, _ in stack], plan.level)
        stack = [*stack[:keep], (plan.level, step)]
    return out


def digit_sum(n: int, base: int) -> int:
    s = 0
    while n:
        n, r = divmod(n, base)
        s += r
    return s


def test_levels_and_bases_of_30_saves_with_anchor_every_3() -> None:
    plans = simulate(CFG, list(range(30)))
    levels = {s: lv for s, _, lv, _ in plans}
    assert plans[0] == (0, "keyframe", KEYFRAME_LEVEL, None)
    assert [s for s in range(1, 30) if levels[s] == 3] == [27]
    assert [s for s in range(1, 30) if levels[s] == 2] == [9, 18]
    assert [s for s in range(1, 30) if levels[s] == 1] == [3, 6, 12, 15, 21, 24]
    assert {s: k for s, k, _, _ in plans if k != "step"} == {
        0: "keyframe", 3: "anchor", 6: "anchor", 9: "anchor", 12: "anchor", 15: "anchor",
        18: "anchor", 21: "anchor", 24: "anchor", 27: "anchor",
    }  # fmt: skip
    bases = {s: b for s, _, _, b in plans[1:]}
    # anchors: the latest save of a level at least theirs; steps: the previous save
    assert {s: b for s, b in bases.items() if levels[s] > 0} == {
        3: 0, 6: 3, 9: 0, 12: 9, 15: 12, 18: 9, 21: 18, 24: 21, 27: 0,
    }  # fmt: skip
    assert all(bases[s] == s - 1 for s in bases if levels[s] == 0)
    # the restore depth (blobs applied per tensor) is 1 + the digit sum of n in base 3
    depth = {0: 1}
    for s, b in bases.items():
        depth[s] = depth[b] + 1
    assert all(depth[s] == 1 + digit_sum(s, 3) for s in range(30))
    assert max(depth.values()) == 1 + digit_sum(26, 3) == 7


def test_keyframe_every_counts_steps_not_saves() -> None:
    cfg = dataclasses.replace(CFG, anchor_every=10, keyframe_every=5)
    plans = simulate(cfg, [0, 2, 4, 7, 9, 11, 12, 13])
    assert [s for s, kind, _, _ in plans if kind == "keyframe"] == [0, 7, 12]
    assert [b for _, _, _, b in plans] == [None, 0, 2, None, 7, 9, None, 12]


def test_exact_saves_and_an_empty_stack_are_keyframes_that_restart_the_ordinals() -> None:
    assert policy.plan_save([], None, 5, exact=False, cfg=CFG) == policy.KEYFRAME
    plans = simulate(CFG, list(range(8)), exact=frozenset({4}))
    assert [k for _, k, _, _ in plans] == [
        "keyframe", "step", "step", "anchor", "keyframe", "step", "step", "anchor",
    ]  # fmt: skip
    assert plans[7] == (7, "anchor", 1, 4)


def test_anchor_level_is_the_largest_power_dividing_the_ordinal() -> None:
    assert [policy.anchor_level(n, 10) for n in (1, 9, 10, 20, 100, 1000, 3000, 1010)] == [
        0, 0, 1, 1, 2, 3, 3, 1,
    ]  # fmt: skip


def test_tensor_bits_for_steps_anchors_and_optimizer_state() -> None:
    cfg = dataclasses.replace(CFG, bits=3, optimizer_bits=2, anchor_bits=5)
    assert policy.tensor_bits(cfg, optimizer=False, level=0) == 3
    assert policy.tensor_bits(cfg, optimizer=True, level=0) == 2
    assert policy.tensor_bits(cfg, optimizer=False, level=1) == 5
    assert policy.tensor_bits(cfg, optimizer=True, level=2) == 4  # anchors add anchor - bits
    wide = dataclasses.replace(CFG, bits=7, optimizer_bits=8, anchor_bits=8)
    assert policy.tensor_bits(wide, optimizer=True, level=1) == 8  # never above 8


def _leaf(dtype: str, shape: list[int], optimizer: bool = False) -> Leaf:
    value = np.zeros(shape, dtype=dtype)
    return Leaf("p", value, "numpy", dtype, shape, optimizer=optimizer, nonneg=False)


def test_tensor_mode() -> None:
    w = _leaf("float32", [4, 5])
    assert policy.tensor_mode(_leaf("int64", [10]), None) == "raw"
    assert policy.tensor_mode(_leaf("float32", [1]), ("numpy", "float32", (1,))) == "raw"
    assert policy.tensor_mode(w, None) == "key"  # no base: a keyframe or a new tensor
    assert policy.tensor_mode(w, ("numpy", "float32", (5, 4))) == "key"  # reshaped
    assert policy.tensor_mode(w, ("torch", "float32", (4, 5))) == "key"
    assert policy.tensor_mode(w, ("numpy", "float32", (4, 5))) == "delta"


def test_kept_buckets_keeps_the_largest_exponents_negative_first() -> None:
    hist = np.zeros(2 << 8, np.int64)  # float32 keys: sign << 8 | biased exponent

    def put(sign: int, exp: int, n: int) -> None:
        hist[sign << 8 | exp] = n

    put(0, 130, 5)
    put(1, 130, 2)
    put(0, 129, 1)
    put(1, 129, 4)
    put(0, 120, 9)
    put(0, 0, 100)  # zeros and subnormals are never kept
    assert policy.kept_buckets(hist, 1, 8) == (130, 1)  # 1 bucket: -2^3
    assert policy.kept_buckets(hist, 2, 8) == (129, 1)  # 3: both at 130, negative at 129
    assert policy.kept_buckets(hist, 3, 8) == (120, None)  # 7 >= the 5 present: all
    zeros = np.zeros(2 << 8, np.int64)
    zeros[0] = 7
    assert policy.kept_buckets(zeros, 3, 8) == (256, None)  # nothing to keep


def test_bucket_floors_choose_model_and_optimizer_buckets_apart() -> None:
    rng = np.random.default_rng(0)
    ref = {p: rng.standard_normal(1000).astype(np.float32) for p in ("w", "m")}
    scale = {"w": 1e-1, "m": 1e-6}  # weights and moments move on very different scales
    x = {p: ref[p] + (scale[p] * rng.standard_normal(1000)).astype(np.float32) for p in ref}
    leaves = [
        Leaf("w", x["w"], "numpy", "float32", [1000], optimizer=False, nonneg=False),
        Leaf("m", x["m"], "numpy", "float32", [1000], optimizer=True, nonneg=False),
    ]
    meta = {p: ("numpy", "float32", (1000,)) for p in ref}
    lc = dataclasses.replace(CFG, quantizer="exponent")  # priority promotion is LC's scheme
    assert policy.bucket_floors(leaves, meta, ref, 0, CFG) == {}  # bounded: no buckets
    floors = policy.bucket_floors(leaves, meta, ref, 0, lc)
    for p in ("w", "m"):
        assert floors[p] == policy.global_floors([x[p]], [ref[p]], 3)[0]
    # one choice over both would keep model buckets only, above every moment's exponent
    both = policy.global_floors([x["w"], x["m"]], [ref["w"], ref["m"]], 3)[1]
    assert both[0] > floors["m"][0]
    dm = x["m"] - ref["m"]
    assert both[0] > (np.frexp(dm[dm != 0])[1] + 126).max()  # biased float32 exponents
    per_tensor = dataclasses.replace(lc, scope="tensor")
    assert policy.bucket_floors(leaves, meta, ref, 0, per_tensor) == {}
    assert policy.bucket_floors(leaves, {}, ref, 0, lc) == {}  # nothing delta-coded


def test_kept_steps_of_retention() -> None:
    own = list(range(21))
    assert kept_steps(own, 3, 10) == {0, 10, 18, 19, 20}
    assert kept_steps(own, None, 7) == {0, 7, 14}
    assert kept_steps(own, 2, None) == {19, 20}


@pytest.mark.parametrize(
    ("kw", "message"),
    [({"bits": 0}, "bits"), ({"anchor_every": 1}, "anchor_every"), ({"scope": "x"}, "scope")],
)
def test_config_refuses_bad_settings(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(CFG, **kw)


def _adam_leaves(n: int = 100) -> list[Leaf]:
    rng = np.random.default_rng(1)
    v = (10.0 ** rng.uniform(-12, -6, n)).astype(np.float32)
    m = (np.sqrt(v) * rng.standard_normal(n)).astype(np.float32)
    w = rng.standard_normal(n).astype(np.float32)

    def leaf(path: list, x: np.ndarray, opt: bool) -> Leaf:
        return Leaf(json.dumps(path), x, "numpy", "float32", [n], optimizer=opt, nonneg=False)

    return [
        leaf(["model", "w"], w, False),
        leaf(["optimizer", "state", 0, "exp_avg"], m, True),
        leaf(["optimizer", "state", 0, "exp_avg_sq"], v, True),
        leaf(["optimizer", "state", 1, "momentum_buffer"], w, True),
    ]


def test_budgets_per_kind_of_tensor() -> None:
    w, m, v, buf = _adam_leaves()
    pairs = policy.moment_pairs([w, m, v, buf])
    assert pairs == {m.path: v.path}
    budget = {
        lf.path: policy.tensor_budget(lf, CFG, 0, pairs.get(lf.path), 1e-8) for lf in (w, m, v, buf)
    }
    assert budget[w.path] == policy.Budget("rel", policy.DEFAULT_REL_ERROR)
    assert budget[v.path] == policy.Budget("pointwise", 0.01)
    assert budget[m.path] == policy.Budget("moment", 0.05, moment=v.path, eps=1e-8)
    assert budget[buf.path] == policy.Budget("rel", policy.DEFAULT_OPTIMIZER_REL_ERROR)
    user = dataclasses.replace(CFG, rel_error=1e-4)  # binds every float tensor
    assert policy.tensor_budget(buf, user, 0, None, 1e-8) == policy.Budget("rel", 1e-4)
    assert policy.tensor_budget(v, user, 0, None, 1e-8).value == 1e-4
    assert policy.tensor_budget(m, user, 0, v.path, 1e-8).cap_rel == 1e-4
    lc = dataclasses.replace(CFG, quantizer="exponent")
    assert policy.tensor_budget(w, lc, 0, None, 0).kind == "exponent"
    assert policy.tensor_budget(v, lc, 0, None, 0).kind == "pointwise"  # kept safe in LC
    off = dataclasses.replace(lc, second_moment_rel=None, first_moment_tol=None)
    assert policy.tensor_budget(v, off, 1, None, 0) == policy.Budget("exponent", bits=4)


def test_moment_caps_make_both_promises_hold() -> None:
    _, m, v, _ = _adam_leaves(10_000)
    b = policy.Budget("moment", 0.05, moment=v.path, eps=1e-8, cap_rel=1e-3, cap_abs=1e-9)
    kw = policy.encode_kwargs(b, m.value, v.value)
    scale = np.sqrt(v.value.astype(np.float64)) + 1e-8
    t = kw["tolerance"]
    assert t <= 0.05
    assert t * np.linalg.norm(scale) <= 1e-3 * np.linalg.norm(m.value.astype(np.float64))
    assert t * scale.max() <= 1e-9
    pw = policy.encode_kwargs(policy.Budget("pointwise", 0.01, cap_abs=1e-9), v.value)
    assert pw["rel_tolerance"] * float(v.value.max()) <= 1e-9


def test_optimizer_eps_is_read_from_param_groups() -> None:
    tree = {
        "D": [
            [
                "optimizer",
                {
                    "D": [
                        [
                            "param_groups",
                            {
                                "L": [
                                    {"D": [["lr", {"V": 0}], ["eps", {"V": 1}]]},
                                    {"D": [["eps", {"V": 2}]]},
                                ]
                            },
                        ]
                    ]
                },
            ]
        ]
    }
    assert policy.optimizer_eps(tree, [1e-3, 1e-6, 1e-10]) == 1e-10
    assert policy.optimizer_eps({"D": []}, []) == policy.DEFAULT_EPS
