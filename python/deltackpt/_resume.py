"""Resume fidelity, measured as a user feels it: train, save every step into a chain, then
resume at a step from the chain and from ``torch.save`` of the same step, and compare what
training does next (loss curve, worst spike, final accuracy).

Used by the tests (tests/test_resume.py), the benchmark (benches/resume_fidelity.py) and the
demo. The data are the scikit-learn digits (:mod:`deltackpt._realdata`); every step's batch
is drawn from a generator seeded by the step, so both resumes see the same batches.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._realdata import accuracy, lenet5, load_digits_32

BATCH = 32


@dataclass
class Trial:
    """What to train and how (one configuration of the resume benchmark)."""

    optimizer: str = "adamw"  # "adamw" | "adam" | "sgd"
    lr: float = 2e-3
    steps: int = 220  # saves 0 .. steps-1
    follow: int = 100  # steps trained after each resume
    resume_at: Sequence[int] = (200,)
    model: str = "lenet"  # "lenet" | "cnn"
    seed: int = 0
    weight_decay: float = 1e-2


@dataclass
class Resumed:
    """Training after one resume, from the chain and from torch.save of the same step."""

    step: int
    kind: str  # the chain record's kind at that step
    exact_losses: list[float]
    chain_losses: list[float]
    exact_acc: float
    chain_acc: float
    extra: dict[str, Any] = field(default_factory=dict)

    def max_spike(self, n: int = 20) -> tuple[float, float]:
        """(max chain loss, max exact loss) over the first ``n`` steps after the resume."""
        return max(self.chain_losses[:n]), max(self.exact_losses[:n])

    def mean_loss(self, n: int = 100) -> tuple[float, float]:
        """(mean chain loss, mean exact loss) over the first ``n`` steps after the resume."""
        c, e = self.chain_losses[:n], self.exact_losses[:n]
        return sum(c) / len(c), sum(e) / len(e)

    def meets_floor(self) -> bool:
        """The fidelity floor: no spike (max over 20 steps <= 3x exact + 0.05), mean over
        100 steps within 20% (+0.02), accuracy at most 1 point lower."""
        (cm, em), (ca, ea) = self.max_spike(), self.mean_loss()
        return (
            cm <= 3 * em + 0.05 and ca <= 1.2 * ea + 0.02 and self.chain_acc >= self.exact_acc - 1.0
        )


def _cnn() -> Any:
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 8 * 8, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def _objects(t: Trial) -> tuple[Any, Any, Any]:
    """A fresh model, optimizer and cosine schedule (same seed: same initial weights)."""
    import torch

    torch.manual_seed(t.seed)
    model = lenet5() if t.model == "lenet" else _cnn()
    if t.optimizer == "sgd":
        opt: Any = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=0.9)
    elif t.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=t.lr)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t.steps + t.follow)
    return model, opt, sched


def _step(model: Any, opt: Any, sched: Any, data: Any, step: int, seed: int) -> float:
    """One training step on the batch of ``step``; returns its loss."""
    import torch
    import torch.nn.functional as F

    x, y = data
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    idx = torch.randint(0, len(x), (BATCH,), generator=g)
    model.train()
    loss = F.cross_entropy(model(x[idx]), y[idx])
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    return loss.item()


def _state(model: Any, opt: Any, sched: Any) -> dict[str, Any]:
    return {"model": model, "optimizer": opt, "scheduler": sched}


def _torch_save(model: Any, opt: Any, sched: Any) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save({k: v.state_dict() for k, v in _state(model, opt, sched).items()}, buf)
    return buf.getvalue()


def _follow(t: Trial, data: Any, val: Any, start: int, load: Callable[..., None]) -> Any:
    """Fresh objects, ``load(model, opt, sched)``, then ``t.follow`` steps from ``start``."""
    model, opt, sched = _objects(t)
    load(model, opt, sched)
    losses = [_step(model, opt, sched, data, s, t.seed) for s in range(start, start + t.follow)]
    model.eval()
    return losses, accuracy(model, *val)


def run_trial(t: Trial, open_chain: Callable[[], Any]) -> tuple[list[Resumed], dict[str, Any]]:
    """Train ``t.steps`` steps saving each into ``open_chain()``; resume at each of
    ``t.resume_at``; return the resumes and the chain's ``stats()``."""
    import torch

    x, y, xv, yv = load_digits_32()
    data, val = (x, y), (xv, yv)
    model, opt, sched = _objects(t)
    saved: dict[int, bytes] = {}
    with open_chain() as chain:
        for step in range(t.steps):
            _step(model, opt, sched, data, step, t.seed)
            chain.save(step, _state(model, opt, sched))
            if step in t.resume_at:
                saved[step] = _torch_save(model, opt, sched)
        stats = chain.stats()
        kinds = {s: chain.info(s)["kind"] for s in t.resume_at}
    out = []
    for s in t.resume_at:

        def exact(m: Any, o: Any, sc: Any, s: int = s) -> None:
            sd = torch.load(io.BytesIO(saved[s]), weights_only=True)
            m.load_state_dict(sd["model"])
            o.load_state_dict(sd["optimizer"])
            sc.load_state_dict(sd["scheduler"])

        def from_chain(m: Any, o: Any, sc: Any, s: int = s) -> None:
            with open_chain() as chain:
                chain.restore_into(s, model=m, optimizer=o, scheduler=sc)

        el, ea = _follow(t, data, val, s + 1, exact)
        cl, ca = _follow(t, data, val, s + 1, from_chain)
        out.append(Resumed(s, kinds[s], el, cl, ea, ca))
    return out, stats


def describe(r: Resumed) -> str:
    """One line: the spike, mean loss and accuracy after a resume, chain vs torch.save."""
    (cm, em), (ca, ea) = r.max_spike(), r.mean_loss()
    first = f"{r.chain_losses[0]:.4f} vs {r.exact_losses[0]:.4f}"
    return (
        f"step {r.step} ({r.kind}): first loss {first}; max over 20 steps {cm:.4f} vs "
        f"{em:.4f}; mean over {len(r.chain_losses)} {ca:.4f} vs {ea:.4f}; accuracy "
        f"{r.chain_acc:.2f}% vs {r.exact_acc:.2f}%{'' if r.meets_floor() else '  FAILS'}"
    )
