"""Delta-LoRA: wrappers, update rule, telescoping, merge, targets, PEFT files, chain restore.

Real training: LeNet-5 on the scikit-learn digits (deltackpt._realdata).
"""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from torch import nn  # noqa: E402

from deltackpt._realdata import accuracy, lenet5, load_digits_32, train_steps  # noqa: E402
from deltackpt.lora import LoraLayer, apply_delta_lora, find_target_modules  # noqa: E402

LAM, RANK, ALPHA = 2.0, 4, 2.0  # s = 0.5 as in the source


@pytest.fixture(scope="module")
def digits():
    return load_digits_32()


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return lenet5()


def _ba(layer: LoraLayer) -> torch.Tensor:
    a = layer.lora_A.weight.detach().reshape(layer.rank, -1)
    b = layer.lora_B.weight.detach().reshape(-1, layer.rank)
    return (b @ a).reshape(layer.base_layer.weight.shape)


def _lora_keys(names) -> set[str]:
    return {f"{n}.lora_{p}.weight" for n in names for p in "AB"}


def _randomize_b(ctl) -> None:
    with torch.no_grad():
        for lyr in ctl.layers.values():
            lyr.lora_B.weight.normal_(0, 0.1)


def test_forward_is_base_plus_scaled_low_rank():
    m = _model()
    ctl = apply_delta_lora(m, r".*", rank=RANK, alpha=ALPHA)
    _randomize_b(ctl)
    assert set(ctl.layers) == {"0", "3", "7", "9", "11"}
    x = torch.randn(5, 1, 32, 32)
    conv = ctl.layers["0"]
    lin = ctl.layers["7"]
    s = ALPHA / RANK
    assert conv.scaling == lin.scaling == s
    with torch.no_grad():
        w = conv.base_layer.weight + s * _ba(conv)
        want = nn.functional.conv2d(x, w, conv.base_layer.bias)
        torch.testing.assert_close(conv(x), want, rtol=1e-5, atol=1e-5)
        h = torch.randn(5, 400)
        want = h @ (lin.base_layer.weight + s * _ba(lin)).T + lin.base_layer.bias
        torch.testing.assert_close(lin(h), want, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(lin(h), lin.base_layer(h))  # the low-rank path is live


def test_reachable_as_dk_lora():
    import deltackpt as dk

    assert dk.lora.apply_delta_lora is apply_delta_lora


def test_peft_init_and_default_alpha():
    m = _model()
    ctl = apply_delta_lora(m, ["7"], rank=8)
    lyr = ctl.layers["7"]
    assert ctl.scaling == 1.0 and lyr.scaling == 1.0  # alpha defaults to rank: s = 1
    assert torch.count_nonzero(lyr.lora_B.weight) == 0
    bound = 1.0 / math.sqrt(400)  # kaiming_uniform(a=sqrt(5)) on fan_in 400
    a = lyr.lora_A.weight
    assert a.abs().max() <= bound and a.abs().max() > 0.5 * bound
    assert tuple(a.shape) == (8, 400) and tuple(lyr.lora_B.weight.shape) == (120, 8)
    conv = apply_delta_lora(_model(), ["3"], rank=8).layers["3"]
    assert conv.lora_A.kernel_size == (5, 5) and conv.lora_B.kernel_size == (1, 1)


def test_frozen_base_has_no_grad_and_no_optimizer_state(digits):
    xt, yt, _, _ = digits
    m = _model()
    opt = torch.optim.Adam(m.parameters(), lr=0.01)
    ctl = apply_delta_lora(m, "all-linear", rank=RANK, alpha=ALPHA, optimizer=opt)
    bases = [lyr.base_layer.weight for lyr in ctl.layers.values()]
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(w) not in held for w in bases)
    assert all(id(p) in held for p in ctl.lora_parameters())
    before = [w.clone() for w in bases]
    train_steps(m, opt, xt[:128], yt[:128], epochs=1)
    assert ctl.step_count == 4  # the post-step hook ran once per optimizer step
    for w, w0 in zip(bases, before):
        assert not w.requires_grad and w.grad is None
        assert w not in opt.state
        assert not torch.equal(w, w0)  # changed by Delta-LoRA, not by the optimizer
    assert all(p in opt.state for p in ctl.lora_parameters())


def test_update_rule_matches_hand_computation(digits):
    xt, yt, _, _ = digits
    for start in (0, 2):
        m = _model()
        ctl = apply_delta_lora(m, ["7", "9"], rank=RANK, alpha=ALPHA, start_step=start)
        _randomize_b(ctl)
        ctl._prev = {n: _ba(lyr) for n, lyr in ctl.layers.items()}  # B changed after creation
        opt = torch.optim.SGD(ctl.lora_parameters(), lr=0.05)
        lyr = ctl.layers["7"]
        w_hist = [lyr.base_layer.weight.detach().clone()]
        ba_hist = [_ba(lyr)]

        def on_step(step: int, ctl=ctl, lyr=lyr, w_hist=w_hist, ba_hist=ba_hist) -> None:
            ctl.step()
            w_hist.append(lyr.base_layer.weight.detach().clone())
            ba_hist.append(_ba(lyr))

        train_steps(m, opt, xt[:160], yt[:160], epochs=1, on_step=on_step)
        k = LAM * ctl.scaling
        for t in range(1, len(w_hist)):
            if t <= start:
                want = w_hist[t - 1]
            else:  # the first step after start_step included
                want = w_hist[t - 1] + k * (ba_hist[t] - ba_hist[t - 1])
            torch.testing.assert_close(w_hist[t], want, rtol=0, atol=1e-7)
            assert torch.equal(w_hist[t], w_hist[t - 1]) == (t <= start)


def test_telescoping_holds_in_fp32(digits):
    xt, yt, _, _ = digits
    m = _model()
    opt = torch.optim.Adam(m.parameters(), lr=0.01)
    ctl = apply_delta_lora(m, r".*", rank=RANK, alpha=ALPHA, start_step=5, optimizer=opt)
    snap = {}

    def on_step(step: int) -> None:
        if step == 5:
            snap.update(
                {n: (lyr.base_layer.weight.clone(), _ba(lyr)) for n, lyr in ctl.layers.items()}
            )

    train_steps(m, opt, xt[:640], yt[:640], epochs=1, on_step=on_step)
    k = LAM * ctl.scaling
    for name, lyr in ctl.layers.items():
        w_k, ba_k = snap[name]
        w_t = lyr.base_layer.weight
        tol = 32 * 1.2e-7 * float(w_t.abs().max())  # a few fp32 ulps of the weights
        assert (w_t - w_k).abs().max() > 100 * tol  # W moved far more than the rounding
        tele = w_k + k * (_ba(lyr) - ba_k)
        assert (w_t - tele).abs().max() <= tol, name


def test_merge_unmerge_round_trip():
    m = _model()
    ctl = apply_delta_lora(m, r".*", rank=RANK, alpha=ALPHA)
    _randomize_b(ctl)
    x = torch.randn(8, 1, 32, 32)
    with torch.no_grad():
        y = m(x)
        w0 = {n: lyr.base_layer.weight.clone() for n, lyr in ctl.layers.items()}
        eff = ctl.effective_weights()
        ctl.merge()
        assert all(lyr.merged for lyr in ctl.layers.values())
        torch.testing.assert_close(m(x), y, rtol=1e-4, atol=1e-5)
        for n, lyr in ctl.layers.items():
            torch.testing.assert_close(lyr.base_layer.weight, eff[n], rtol=0, atol=1e-6)
        with pytest.raises(RuntimeError):
            ctl.step()
        ctl.unmerge()
        for n, lyr in ctl.layers.items():
            torch.testing.assert_close(lyr.base_layer.weight, w0[n], rtol=0, atol=1e-6)
        torch.testing.assert_close(m(x), y, rtol=1e-4, atol=1e-5)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.ModuleDict({"q_proj": nn.Linear(4, 4), "fc1": nn.Linear(4, 4)})
        self.dec = nn.ModuleDict({"q_proj": nn.Linear(4, 4), "c1": nn.Conv2d(1, 2, 3)})
        self.head = nn.Linear(4, 2)


def test_target_modules_conventions():
    net = _Net()
    assert find_target_modules(net, ["q_proj"]) == ["enc.q_proj", "dec.q_proj"]
    assert find_target_modules(net, ["enc.q_proj"]) == ["enc.q_proj"]
    assert find_target_modules(net, ["c1"]) == ["dec.c1"]  # suffix after a dot, not "fc1"
    assert find_target_modules(net, ["head"]) == ["head"]
    assert find_target_modules(net, r"enc\..*") == ["enc.q_proj", "enc.fc1"]
    assert find_target_modules(net, r"q_proj|.*fc1") == ["enc.fc1"]  # full match only
    assert find_target_modules(net, "all-linear") == ["enc.q_proj", "enc.fc1", "dec.q_proj"]
    with pytest.raises(ValueError):
        find_target_modules(net, ["proj"])
    with pytest.raises(ValueError):
        find_target_modules(net, r"nothing")
    apply_delta_lora(net, r".*")
    with pytest.raises(ValueError):  # the wrappers' insides are never targets
        apply_delta_lora(net, r".*")


def test_adapter_files_are_peft_layout(tmp_path):
    from safetensors.torch import load_file

    m = _model()
    ctl = apply_delta_lora(m, ["7", "9"], rank=RANK, alpha=ALPHA)
    _randomize_b(ctl)
    ctl.save_adapter(tmp_path, base_weights=True)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == RANK and cfg["lora_alpha"] == ALPHA
    assert cfg["target_modules"] == ["7", "9"] and cfg["lora_dropout"] == 0.0
    t = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert set(t) == {f"base_model.model.{n}.lora_{p}.weight" for n in "79" for p in "AB"}
    torch.testing.assert_close(t["base_model.model.9.lora_B.weight"], ctl.layers["9"].lora_B.weight)
    base = load_file(str(tmp_path / "delta_lora_base.safetensors"))
    assert set(base) == {"7.weight", "9.weight"}


def test_adapter_loads_into_peft(tmp_path):
    peft = pytest.importorskip("peft")
    from safetensors.torch import load_file

    m = _model()
    ctl = apply_delta_lora(m, ["7", "9"], rank=RANK, alpha=ALPHA)
    _randomize_b(ctl)
    with torch.no_grad():
        ctl.layers["7"].base_layer.weight.add_(0.01)  # as if Delta-LoRA had moved W
    ctl.save_adapter(tmp_path, base_weights=True)
    fresh = _model()
    sd = fresh.state_dict()
    sd.update(load_file(str(tmp_path / "delta_lora_base.safetensors")))
    fresh.load_state_dict(sd)
    pm = peft.PeftModel.from_pretrained(fresh, str(tmp_path))
    x = torch.randn(6, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(pm(x), m(x), rtol=1e-5, atol=1e-5)


def test_bf16_base_is_stored_not_telescoped(digits):
    xt, yt, _, _ = digits
    m = _model()
    m[7].to(torch.bfloat16)
    m[7].forward = lambda h, _l=m[7]: nn.functional.linear(h.bfloat16(), _l.weight, _l.bias).float()
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    ctl = apply_delta_lora(m, ["7", "9"], rank=RANK, alpha=ALPHA, optimizer=opt)
    train_steps(m, opt, xt[:64], yt[:64], epochs=1)
    st = ctl.state_dict()
    assert st["delta_lora"]["telescoped"] == ["9"]
    assert torch.equal(st["7.weight"], ctl.layers["7"].base_layer.weight)
    assert not torch.equal(st["9.weight"], ctl.layers["9"].base_layer.weight)
    assert set(st) == {*lenet5().state_dict(), *_lora_keys("79"), "delta_lora"}


def _abs_ba_bound(a, b, da, db):
    """Elementwise bound on |B'A' - BA| for |A' - A| <= da, |B' - B| <= db."""
    a, b = a.reshape(a.shape[0], -1).abs(), b.reshape(b.shape[0], -1).abs()
    da, db = da.reshape(a.shape), db.reshape(b.shape)
    return db @ a + b @ da + db @ da


def test_chain_restores_effective_weights_within_bound(digits, tmp_path):
    chain_mod = pytest.importorskip("deltackpt.chain")
    xt, yt, xv, yv = digits
    m = _model()
    opt = torch.optim.Adam(m.parameters(), lr=0.01)
    ctl = apply_delta_lora(m, r".*", rank=RANK, alpha=ALPHA, start_step=3, optimizer=opt)
    consts = []
    with chain_mod.CheckpointChain(tmp_path / "c", bits=3, anchor_every=10) as ch:

        def on_step(step: int) -> None:
            assert ctl.keyframe_due() == (step == 4)
            ch.save(step, {"model": ctl}, exact=ctl.keyframe_due())
            if step > 3:
                consts.append(ctl.state_dict()["7.weight"])

        last = train_steps(m, opt, xt[:800], yt[:800], epochs=1, on_step=on_step)
        assert all(torch.equal(c, consts[0]) for c in consts)  # C is constant after K
        info = ch.info(last)
        assert info["kind"] == "step"
        base_state = ch.restore(info["base"][1])["model"]

        m2 = _model(seed=1)
        ctl2 = apply_delta_lora(m2, r".*", rank=RANK, alpha=ALPHA, start_step=3)
        ch.restore_into(model=ctl2)
        stats = ch.stats()
    assert ctl2.step_count == last
    true_eff, got_eff = ctl.effective_weights(), ctl2.effective_weights()
    k1 = (LAM + 1) * ctl.scaling
    for name, lyr in ctl.layers.items():
        a, b = lyr.lora_A.weight.detach(), lyr.lora_B.weight.detach()
        # error feedback: |r_t - u_t| <= |u_t - r_base| elementwise
        da = (a - base_state[f"{name}.lora_A.weight"]).abs()
        db = (b - base_state[f"{name}.lora_B.weight"]).abs()
        r2 = ctl2.layers[name]
        assert ((r2.lora_A.weight - a).abs() <= da + 1e-7).all()
        assert ((r2.lora_B.weight - b).abs() <= db + 1e-7).all()
        bound = k1 * _abs_ba_bound(a, b, da, db).reshape(true_eff[name].shape)
        err = (got_eff[name] - true_eff[name]).abs()
        assert (err <= bound + 1e-5).all(), name
        assert err.max() > 0  # lossy: the comparison is not vacuous
    assert abs(accuracy(m2, xv, yv) - accuracy(m, xv, yv)) <= 5.0
    # after the keyframe, a step stores only A, B, biases and zero deltas of the constants
    per_step = stats["bytes_by_kind"]["step"] / stats["count_by_kind"]["step"]
    print("raw/step bytes", stats["raw_bytes"] / stats["records"] / per_step)
    assert per_step < stats["raw_bytes"] / stats["records"] / 20


def test_switch_from_full_training_drops_frozen_state(digits):
    xt, yt, _, _ = digits
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    train_steps(m, opt, xt[:96], yt[:96], epochs=1)
    w7 = m[7].weight
    assert w7 in opt.state  # momentum from full training
    ctl = apply_delta_lora(m, "all-linear", rank=RANK, alpha=ALPHA, optimizer=opt)
    assert w7 not in opt.state and m[0].weight in opt.state
    st = ctl.state_dict()
    assert torch.equal(st["7.weight"], w7)  # C = W_K while B_K = 0: same key, same value
    train_steps(m, opt, xt[:96], yt[:96], epochs=1)
    assert w7 not in opt.state and ctl.step_count == 3
