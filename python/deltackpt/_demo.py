"""`deltackpt demo`: real weights and a real training run, with a chain kept for the other
commands to try.

It codes the pretrained all-MiniLM-L6-v2 weights losslessly beside zstd, then trains LeNet-5 on
the bundled digits (3 epochs, a save of model and optimizer at every step) into a chain in the
directory it is given, restores the last step and a mid-run step, checks the error-feedback bound
on that step and prints the tables. The command line (:mod:`deltackpt.cli`) chooses the
directory and reports errors.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from . import _api
from ._console import bar, human, progress

Say = Callable[..., None]

HEADER = "| what | raw | stored | ratio | encode MB/s | decode MB/s |\n|---|---|---|---|---|---|"


class DemoCheckFailed(Exception):
    """A check the demo makes on its own results failed (a bug: please report it)."""


def timed(f: Any, reps: int = 3) -> tuple[float, Any]:
    """The best wall time of ``reps`` calls of ``f`` and the last result."""
    best, out = float("inf"), None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = f()
        best = min(best, time.perf_counter() - t0)
    return best, out


def row(name: str, raw: int, size: int, secs: float, dsecs: float) -> str:
    """One line of a size and speed table."""
    return (
        f"| {name} | {raw / 1e6:.1f} MB | {size / 1e6:.2f} MB | {raw / size:.2f}x "
        f"| {raw / secs / 1e6:.0f} | {raw / dsecs / 1e6:.0f} |"
    )


def run(out: str, say: Say, quiet: bool) -> _DemoRun:
    """The whole demo, its chain written to the (empty or new) directory ``out``."""
    say("deltackpt demo: real weights (all-MiniLM-L6-v2) and a real training run\n")
    say("\n".join(codec_rows(quiet)))
    result = train(out, quiet)
    ok, worst = within_bound(result)
    delta_rows = step_delta_rows(result.before, result.after)
    say(
        "\n| one LeNet-5 step delta | raw | stored | ratio | encode MB/s | decode MB/s |\n"
        "|---|---|---|---|---|---|"
    )
    for line in delta_rows:
        say(line)
    report(say, result, ok, worst)
    if not ok:
        raise DemoCheckFailed("a restored step exceeds the LC error bound")
    return result


def codec_rows(quiet: bool) -> list[str]:
    """The MiniLM weights coded losslessly (fp32 and bf16) beside zstd -3."""
    import torch
    import zstandard

    from . import _realdata

    weights = _realdata.minilm_weights()
    flat = np.concatenate([w.reshape(-1) for w in weights.values() if w.dtype == np.float32])
    bf16 = torch.from_numpy(flat).to(torch.bfloat16)
    lines = [HEADER]
    zc, zd = zstandard.ZstdCompressor(level=3), zstandard.ZstdDecompressor()
    for name, x in progress(
        [("MiniLM fp32, lossless", flat), ("MiniLM bf16, lossless", bf16)], quiet, "codec"
    ):
        raw = x.numel() * x.element_size() if isinstance(x, torch.Tensor) else x.nbytes
        secs, blob = timed(lambda x=x: _api.encode(x, quantizer="none"))
        dsecs, got = timed(lambda blob=blob: _api.decode(blob))
        exact = (
            torch.equal(got.view(torch.int16), x.view(torch.int16))
            if isinstance(x, torch.Tensor)
            else got.tobytes() == x.tobytes()
        )
        if not exact:
            raise DemoCheckFailed("a lossless round trip differs")
        lines.append(row(name, raw, len(blob), secs, dsecs))
        rb = x.view(torch.int16).numpy().tobytes() if isinstance(x, torch.Tensor) else x.tobytes()
        zsecs, z = timed(lambda rb=rb: zc.compress(rb))
        zdsecs, _ = timed(lambda z=z: zd.decompress(z))
        lines.append(row(name.replace("lossless", "zstd -3"), raw, len(z), zsecs, zdsecs))
    return lines


@dataclass
class _DemoRun:
    """What the demo's training run left to check and report."""

    total: int  # steps saved
    mid: int  # a lossy step between anchors, restored and checked
    stats: dict[str, Any]
    trained_acc: float
    restored_acc: float
    mid_true: dict[str, Any]  # the true state_dict at ``mid``
    mid_state: dict[str, Any]  # ``mid`` restored from the chain
    base: tuple[str, int]  # the record ``mid`` is coded against
    base_state: dict[str, Any]
    before: Any  # flat parameters before and after the last step
    after: Any
    xv: Any
    yv: Any


def train(out: str, quiet: bool) -> _DemoRun:
    """Train LeNet-5 with a save every step into a chain at ``out``; restore the last step,
    a mid-run step and its base."""
    import torch

    from . import _realdata
    from .chain import CheckpointChain

    torch.manual_seed(0)
    xt, yt, xv, yv = _realdata.load_digits_32()
    xt, xv = (xt - 0.1307) / 0.3081, (xv - 0.1307) / 0.3081
    model = _realdata.lenet5()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    epochs, batch = 3, 32
    total = epochs * math.ceil(len(xt) / batch)
    mid = total // 2 + 3  # a lossy step between anchors
    kept: dict[str, Any] = {}

    def flat() -> Any:
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()

    # the LC-checkpoint scheme (3-bit exponent buckets), whose bound |error| <= |delta| the
    # demo checks; the chain's default keeps error budgets instead (docs/CHAIN.md)
    with CheckpointChain(out, quantizer="exponent", bits=3, anchor_every=10) as chain:
        steps = bar(quiet, "training LeNet-5, a save every step", total)

        def on_step(step: int) -> None:
            steps.update(1)
            chain.save(step, {"model": model, "optimizer": opt})
            if step == total - 1:
                kept["before"] = flat()
            if step == total:
                kept["after"] = flat()
            if step == mid:
                kept["u"] = {k: v.detach().clone() for k, v in model.state_dict().items()}

        _realdata.train_steps(model, opt, xt, yt, epochs=epochs, batch=batch, on_step=on_step)
        steps.close()
        trained_acc = _realdata.accuracy(model, xv, yv)
        restored = _realdata.lenet5()
        chain.restore_into(total, model=restored)
        base = chain.info(mid)["base"]
        return _DemoRun(
            total=total,
            mid=mid,
            stats=chain.stats(),
            trained_acc=trained_acc,
            restored_acc=_realdata.accuracy(restored, xv, yv),
            mid_true=kept["u"],
            mid_state=chain.restore(mid)["model"],
            base=base,
            base_state=chain.restore(base[1], base[0])["model"],
            before=kept["before"],
            after=kept["after"],
            xv=xv,
            yv=yv,
        )


def within_bound(result: _DemoRun) -> tuple[bool, float]:
    """Whether every restored float at ``mid`` is within |delta| of its base (error feedback's
    promise), and the largest error."""
    ok = True
    worst = 0.0
    for k, u in result.mid_true.items():
        if not u.is_floating_point():
            continue
        err = (result.mid_state[k] - u).abs()
        limit = (u - result.base_state[k]).abs()
        ok &= bool((err <= limit + 1e-6 * u.abs()).all())
        worst = max(worst, float(err.max()))
    return ok, worst


def step_delta_rows(before: Any, after: Any) -> list[str]:
    """Table rows for one real training step delta coded alone (the building block of the
    chain) beside zstd."""
    import zstandard

    raw = after.numel() * 4
    secs, blob = timed(lambda: _api.encode(after, reference=before, bits=3))
    dsecs, rec = timed(lambda: _api.decode(blob, reference=before))
    if not bool(((rec - after).abs() <= (after - before).abs() + 1e-6 * after.abs()).all()):
        raise DemoCheckFailed("the lossy error of a step delta exceeds the delta")
    zc, zd = zstandard.ZstdCompressor(level=3), zstandard.ZstdDecompressor()
    db = (after - before).numpy().tobytes()
    zsecs, z = timed(lambda: zc.compress(db))
    zdsecs, _ = timed(lambda: zd.decompress(z))
    return [
        row("3-bit exponent buckets", raw, len(blob), secs, dsecs),
        row("zstd -3 (lossless)", raw, len(z), zsecs, zdsecs),
    ]


def report(say: Say, result: _DemoRun, ok: bool, worst: float) -> None:
    """The chain's size table, trained vs restored accuracy, and the error-bound verdict."""
    from . import _realdata

    mid_model = _realdata.lenet5()
    mid_model.load_state_dict(result.mid_state)
    true_mid = _realdata.lenet5()
    true_mid.load_state_dict(result.mid_true)
    st, xv, yv = result.stats, result.xv, result.yv
    say(
        f"\nLeNet-5, {result.total} SGD steps on the digits, model + optimizer saved at every "
        "step (the LC-checkpoint scheme: 3-bit exponent buckets, anchors every 10):\n"
    )
    say("| chain | raw fp32 state_dicts | stored | ratio | space savings |")
    say("|---|---|---|---|---|")
    kinds = ", ".join(f"{n} {k}{'s' * (n != 1)}" for k, n in st["count_by_kind"].items() if n)
    say(
        f"| {st['records']} saves ({kinds}) | {human(st['raw_bytes'])} | "
        f"{human(st['stored_bytes'])} | {st['ratio']:.1f}x | {100 * (1 - 1 / st['ratio']):.1f}% |"
    )
    say(f"\n| validation accuracy ({len(yv)} images) | trained | restored from the chain |")
    say("|---|---|---|")
    say(f"| final step {result.total} | {result.trained_acc:.1f}% | {result.restored_acc:.1f}% |")
    say(
        f"| mid-run step {result.mid} | {_realdata.accuracy(true_mid, xv, yv):.1f}% | "
        f"{_realdata.accuracy(mid_model, xv, yv):.1f}% |"
    )
    say(
        "(a lossy restore is a small perturbation of the weights: it may score above or below "
        f"the trained model; one image is {100 / len(yv):.2f} points)"
    )
    verdict = "OK" if ok else "FAILED"
    say(
        f"\nrestored step {result.mid} against its true state: every |error| <= |delta| against "
        f"its base step {result.base[1]}: {verdict} (max |error| {worst:.2e})"
    )
