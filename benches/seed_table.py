"""Reproduce the source's result table (SPEC 3): LC and LC + Delta-LoRA checkpoint chains.

Protocol: scikit-learn digits upsampled to 32x32 (first 1000 train, 797 validate), LeNet-5,
AlexNet and VGG-16 adapted to 32x32 single-channel input, batch 32, 20 epochs, SGD lr 0.01
with momentum 0.9 (plain SGD at lr 0.01 leaves LeNet-5 at ~32% after 20 epochs), a save of the
model state at every step into a :class:`deltackpt.CheckpointChain` with bits 3 and
``anchor_every=10`` (restore never applies more than the anchors plus 9 steps, the source's
superstep budget).

Mechanisms
* ``LC``: every parameter and buffer is delta-coded by the chain.
* ``LC+dLoRA``: Delta-LoRA (rank 8, scaling s = 0.5, lambda = 2) per ``CONFIG``: LeNet-5 on
  its two hidden dense layers, AlexNet and VGG-16 also on every conv but the first; the
  first conv, the output head, biases and BatchNorm train fully. LeNet-5 and VGG-16 first
  train fully until the source's branching-point accuracy (77.75% / 72.85%, checked at the
  end of each epoch), then switch (exact keyframe at the switch); AlexNet uses Delta-LoRA
  from step 0. The checkpoint is the controller's state (A, B, the telescoping constants
  C = W_K - lambda*s*B_K A_K, the rest of the model), so W is rebuilt on restore.

Ratio = bytes of all checkpoints as raw fp32 state_dicts / bytes stored (chain ``stats()``);
space savings = 1 - 1/ratio; accuracy restored = the model restored from the chain's last
step; full = the same model as trained (before any restore).

Models: LeNet-5 (as in ``deltackpt._realdata``); AlexNet at half width (5 convs
32-96-192-128-128 with 3x3 kernels and three 2x2 max-pools, then 2048-2048-10 dense layers
with dropout 0.5; 9M parameters);
VGG-16 (13 3x3 convs in 5 blocks and 3 dense layers, channel
widths a quarter of the original: 16-32-64-128-128, dense 512-512-10). AlexNet and VGG-16
get BatchNorm after each conv (without it AlexNet does not leave chance level here).

Usage: ``nice python benches/seed_table.py [--quick] [--models lenet5,alexnet,vgg16]
[--epochs N] [--json PATH] [--markdown PATH] [--vit-study] [--rank-study]``.
``--quick``: LeNet-5 and VGG-16 only, same protocol (about 6 minutes on 2 shared cores;
fewer epochs would end before VGG-16 reaches its branching point). ``--threads`` defaults
to 1 torch thread: on 2 shared cores two threads ran several times slower.
``--vit-study``: a small ViT (4x4 patches, dim 128, 4 blocks; AdamW lr 1e-3) under LC and
LC+dLoRA on attention (qkv, proj), MLP (fc1, fc2) or both; ``--rank-study``: LeNet-5
LC+dLoRA at ranks 1, 2, 4, 8, 16 (s = 0.5 throughout). ``--models none`` runs only studies.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from typing import Any

import torch
from torch import nn

import deltackpt
from deltackpt._realdata import accuracy, lenet5, load_digits_32
from deltackpt.chain import CheckpointChain
from deltackpt.chain.records import record_name
from deltackpt.lora import apply_delta_lora

SOURCE = {  # model -> mechanism -> (ratio, space savings %, acc restored, acc full)
    "alexnet": {"LC": (8.08, 87.6, 98.4, 98.7), "LC+dLoRA": (260.0, 99.6, 95.3, 98.7)},
    "vgg16": {"LC": (8.14, 87.7, 99.1, 99.4), "LC+dLoRA": (41.9, 97.6, 98.4, 99.4)},
    "lenet5": {"LC": (5.38, 81.4, 95.9, 95.9), "LC+dLoRA": (18.9, 94.7, 93.8, 95.9)},
}
# Per model: Delta-LoRA targets ("dense": every Linear but the head, i.e. PEFT "all-linear";
# "conv+dense": also every Conv2d but the first) and the validation accuracy at which the run
# switches from full training to Delta-LoRA (the source's "Branching Point"; None: K = 0,
# Delta-LoRA from the first step). LeNet-5's convs hold 4% of its weights and train fully;
# VGG-16's and AlexNet's convs hold most of theirs, so they are wrapped too. AlexNet starts
# Delta-LoRA at step 0: its 260x floor leaves no room for a warm-up of full training.
CONFIG: dict[str, tuple[str, float | None]] = {
    "lenet5": ("dense", 77.75),
    "alexnet": ("conv+dense", None),
    "vgg16": ("conv+dense", 72.85),
    "vit": ("dense", None),
}
NAMES = {"lenet5": "LeNet-5", "alexnet": "AlexNet", "vgg16": "VGG-16", "vit": "ViT"}


def alexnet(width: int = 32, hidden: int = 2048) -> nn.Module:
    """AlexNet for 32x32x1: 5 3x3 convs with BatchNorm, three max-pools, 2 hidden dense layers.

    Without BatchNorm this network stays at chance on the digits with SGD (lr 0.01 and
    0.003, momentum 0.9) for several epochs; dropout 0.5 before each hidden dense layer.

    Defaults are half the original widths (convs 32-96-192-128-128, dense 2048-2048-10) so
    that 20 epochs with a save per step fit the 2-core budget; ``width=64, hidden=4096`` is
    the original size (36M parameters).
    """
    c = [width, 3 * width, 6 * width, 4 * width, 4 * width]

    def conv(i: int, o: int) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]

    return nn.Sequential(
        *conv(1, c[0]),
        nn.MaxPool2d(2),
        *conv(c[0], c[1]),
        nn.MaxPool2d(2),
        *conv(c[1], c[2]),
        *conv(c[2], c[3]),
        *conv(c[3], c[4]),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(c[4] * 4 * 4, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(hidden, hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, 10),
    )


def vgg16(width: int = 16) -> nn.Module:
    """VGG-16 (13 convs + 3 dense) with BatchNorm, channels ``width`` x (1, 2, 4, 8, 8)."""
    cfg = [1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M"]
    layers: list[nn.Module] = []
    c = 1
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            o = width * int(v)
            layers += [nn.Conv2d(c, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]
            c = o
    return nn.Sequential(
        *layers,
        nn.Flatten(),
        nn.Linear(c, 512),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(512, 512),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(512, 10),
    )


class _Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, -1).unbind(2)
        a = nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        )
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    """A small ViT for 32x32x1: 4x4 patches, dim 128, 4 blocks of 4 heads, a class token."""

    def __init__(self, d: int = 128, depth: int = 4, heads: int = 4) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, d, 4, stride=4)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, 65, d) * 0.02)
        self.blocks = nn.Sequential(*[_Block(d, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], 1) + self.pos
        return self.head(self.norm(self.blocks(x))[:, 0])


MODELS = {"lenet5": lenet5, "alexnet": alexnet, "vgg16": vgg16, "vit": ViT}


def lora_targets(model: nn.Module, kind: str = "conv+dense") -> list[str]:
    """``dense``: every Linear but the head; ``conv+dense``: also every Conv2d but the first."""
    lin = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][:-1]
    conv = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)][1:]
    return lin if kind == "dense" else conv + lin


VIT_TARGETS = {
    "attention": r".*\.(qkv|proj)",
    "mlp": r".*\.(fc1|fc2)",
    "both": r".*\.(qkv|proj|fc1|fc2)",
}


def run(
    model_name: str,
    mechanism: str,
    *,
    epochs: int,
    lr: float,
    rank: int = 8,
    targets: Any = None,
    branch_acc: float | None = None,
    chain_kw: dict[str, Any] | None = None,
    data: Any,
    workdir: str,
    seed: int = 0,
) -> dict[str, Any]:
    """Train one model under one mechanism with a save every step; return the table row.

    ``LC+dLoRA`` first trains the whole model (LC-coded) until the validation accuracy at the
    end of an epoch reaches ``branch_acc`` (the source's branching point; None: from the
    first step), then wraps the layers with Delta-LoRA and goes on; the first save after the
    switch is an exact keyframe (see ``DeltaLoRA.keyframe_due``). All saves of the run count.
    """
    xt, yt, xv, yv = data
    torch.manual_seed(seed)
    model = MODELS[model_name]()
    opt: torch.optim.Optimizer
    if model_name == "vit":
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    lora = mechanism == "LC+dLoRA"
    obj: Any = model
    ctl = None
    switch_step: int | None = None

    def wrap(m: nn.Module, o: torch.optim.Optimizer | None) -> Any:
        tgt = targets if targets is not None else lora_targets(m, CONFIG[model_name][0])
        return apply_delta_lora(m, tgt, rank=rank, alpha=rank / 2, optimizer=o)

    if lora and branch_acc is None:
        obj = ctl = wrap(model, opt)
        switch_step = 0
    path = os.path.join(workdir, f"{model_name}-{mechanism}-{rank}")
    shutil.rmtree(path, ignore_errors=True)
    t0 = time.time()
    g = torch.Generator().manual_seed(seed)
    step = 0
    lossf = nn.functional.cross_entropy
    with CheckpointChain(path, anchor_every=10, **(chain_kw or {})) as chain:
        for _ in range(epochs):
            model.train()
            order = torch.randperm(len(xt), generator=g)
            for i in range(0, len(xt), 32):
                idx = order[i : i + 32]
                opt.zero_grad()
                lossf(model(xt[idx]), yt[idx]).backward()
                opt.step()  # Delta-LoRA's update runs in the optimizer's post-step hook
                step += 1
                # the first Delta-LoRA save after full training is an exact keyframe: the chain
                # then holds C = W_K exactly and later deltas of C are zero (a lossy switch
                # leaves a residual of W that every later step pays for)
                chain.save(
                    step, {"model": obj}, exact=bool(switch_step) and step == switch_step + 1
                )
            model.eval()
            if lora and ctl is None and accuracy(model, xv, yv) >= float(branch_acc or 0):
                obj = ctl = wrap(model, opt)
                switch_step = step
        model.eval()
        acc_full = accuracy(model, xv, yv)
        stats = chain.stats()
        torch.manual_seed(seed + 1)
        fresh = MODELS[model_name]()
        target: Any = wrap(fresh, None) if ctl is not None else fresh
        chain.restore_into(model=target)
        fresh.eval()
        acc_restored = accuracy(fresh, xv, yv)
        lora_bytes = sum(  # the Delta-LoRA phase: data files and records
            chain.store.size(n)
            for s in chain.steps()
            if switch_step is not None and s > switch_step
            for n in [*chain.info(s)["files"], record_name("main", s)]
        )
    shutil.rmtree(path, ignore_errors=True)
    ratio = stats["raw_bytes"] / stats["stored_bytes"]
    n_lora = step - switch_step if switch_step is not None else 0
    raw_per_save = stats["raw_bytes"] / max(1, stats["records"])
    return {
        "model": model_name,
        "mechanism": mechanism,
        "ratio": ratio,
        "space_savings": 1 - 1 / ratio,
        "acc_restored": acc_restored,
        "acc_full": acc_full,
        "rank": rank,
        "steps": step,
        "epochs": epochs,
        "switch_step": switch_step,
        "dlora_phase_ratio": (raw_per_save * n_lora / lora_bytes) if lora_bytes else None,
        "params": sum(p.numel() for p in model.parameters()),
        "stored_bytes": stats["stored_bytes"],
        "raw_bytes": stats["raw_bytes"],
        "max_restore_depth": stats["max_restore_depth"],
        "seconds": round(time.time() - t0, 1),
    }


def check_floor(row: dict[str, Any], lc_full: float | None) -> str:
    """'yes'/'no': ratio above the source's and accuracy drop within the source's + 1 point.

    The drop is measured as the source does: restored accuracy against the fully trained
    (LC) model of the same architecture.
    """
    src = SOURCE.get(row["model"], {}).get(row["mechanism"])
    if src is None:
        return "-"
    full = lc_full if lc_full is not None else row["acc_full"]
    ok = row["ratio"] > src[0] and (full - row["acc_restored"]) <= (src[3] - src[2]) + 1.0
    return "yes" if ok else "no"


def markdown(rows: list[dict[str, Any]]) -> str:
    lc_full = {r["model"]: r["acc_full"] for r in rows if r["mechanism"] == "LC"}
    out = [
        "| model | mechanism | ratio (source) | space savings (source) | acc restored / full "
        "(source) | drop vs LC full (source) | floor met |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        src = SOURCE.get(r["model"], {}).get(r["mechanism"])
        full = lc_full.get(r["model"], r["acc_full"])
        s_ratio = f" ({src[0]:g}x)" if src else ""
        s_sav = f" ({src[1]:.1f}%)" if src else ""
        s_acc = f" ({src[2]:.1f} / {src[3]:.1f})" if src else ""
        s_drop = f" ({src[3] - src[2]:.1f})" if src else ""
        out.append(
            f"| {NAMES.get(r['model'], r['model'])} | {r['mechanism']} "
            f"| {r['ratio']:.1f}x{s_ratio} "
            f"| {100 * r['space_savings']:.2f}%{s_sav} | {r['acc_restored']:.1f} / "
            f"{r['acc_full']:.1f}{s_acc} | {full - r['acc_restored']:.1f}{s_drop} "
            f"| {check_floor(r, lc_full.get(r['model']))} |"
        )
    return "\n".join(out)


def details(rows: list[dict[str, Any]]) -> str:
    out = [
        "| model | mechanism | params | saves | Delta-LoRA from step | Delta-LoRA phase ratio "
        "| stored MB | max restore depth | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ph = r.get("dlora_phase_ratio")
        out.append(
            f"| {NAMES.get(r['model'], r['model'])} | {r['mechanism']} | {r['params']} "
            f"| {r['steps']} | {r.get('switch_step') if r.get('switch_step') is not None else '-'} "
            f"| {f'{ph:.1f}x' if ph else '-'} | {r['stored_bytes'] / 1e6:.2f} "
            f"| {r['max_restore_depth']} | {r['seconds']} |"
        )
    return "\n".join(out)


def study_table(rows: list[dict[str, Any]], key: str) -> str:
    out = [f"| model | {key} | ratio | acc restored / full |", "|---|---|---|---|"]
    for r in rows:
        out.append(
            f"| {NAMES.get(r['model'], r['model'])} | {r[key]} | {r['ratio']:.1f}x | "
            f"{r['acc_restored']:.1f} / {r['acc_full']:.1f} |"
        )
    return "\n".join(out)


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="LeNet-5 and VGG-16 only")
    ap.add_argument("--models", default=None, help="comma list of lenet5,alexnet,vgg16, or none")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--json", default=None, help="write the rows as JSON here")
    ap.add_argument("--markdown", default=None, help="write the report here")
    ap.add_argument("--vit-study", action="store_true", help="ViT: attention / MLP / both")
    ap.add_argument("--rank-study", action="store_true", help="LeNet-5 ranks 1, 2, 4, 8, 16")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument(
        "--from-scratch",
        action="store_true",
        help="Delta-LoRA from the first step for every model (no full-training warm-up)",
    )
    ap.add_argument(
        "--scheme",
        default="default",
        choices=["default", "lc"],
        help="the chain's defaults (error-bounded) or LC-checkpoint's scheme "
        "(quantizer='exponent', bits 3)",
    )
    ap.add_argument("--rel-error", type=float, default=None, help="default scheme: rel_error=")
    ap.add_argument(
        "--scope",
        default="state",
        help="LC scheme: priority promotion over the state (LC-checkpoint, default) or tensor",
    )
    ap.add_argument("--mechanisms", default="LC,LC+dLoRA", help="comma list")
    ap.add_argument("--rows", nargs="+", default=None, help="only render these --json files")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    models = (args.models or ("lenet5,vgg16" if args.quick else "lenet5,alexnet,vgg16")).split(",")
    models = [] if models == ["none"] else models  # only the studies
    epochs = args.epochs or 20
    data = load_digits_32()
    if args.scheme == "lc":
        chain_kw: dict[str, Any] = {"quantizer": "exponent", "bits": 3, "scope": args.scope}
        scheme = f"LC-checkpoint scheme: quantizer exponent, bits 3, scope {args.scope}"
    else:
        chain_kw = {} if args.rel_error is None else {"rel_error": args.rel_error}
        scheme = "chain defaults" + (f", rel_error {args.rel_error:g}" if args.rel_error else "")
    work = tempfile.mkdtemp(prefix="seed_table-")
    rows: list[dict[str, Any]] = []
    studies: list[str] = []
    if args.rows:
        for path in args.rows:
            with open(path) as f:
                rows += json.load(f)
        models = []
        epochs = max(r["epochs"] for r in rows)
    try:
        for name in models:
            for mech in args.mechanisms.split(","):
                row = run(
                    name,
                    mech,
                    epochs=epochs,
                    lr=args.lr,
                    rank=args.rank,
                    branch_acc=None if args.from_scratch else CONFIG[name][1],
                    chain_kw=chain_kw,
                    data=data,
                    workdir=work,
                )
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
        if args.rank_study:
            rr = []
            for r in (1, 2, 4, 8, 16):
                row = run(
                    "lenet5",
                    "LC+dLoRA",
                    epochs=epochs,
                    lr=args.lr,
                    rank=r,
                    branch_acc=None if args.from_scratch else CONFIG["lenet5"][1],
                    chain_kw=chain_kw,
                    data=data,
                    workdir=work,
                )
                rr.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
            studies.append("### Rank study (LeNet-5, LC+dLoRA)\n\n" + study_table(rr, "rank"))
            rows += [dict(r, study="rank") for r in rr]
        if args.vit_study:
            vr = [
                run(
                    "vit",
                    "LC",
                    epochs=epochs,
                    lr=args.lr,
                    chain_kw=chain_kw,
                    data=data,
                    workdir=work,
                )
            ]
            vr[0]["targets"] = "none (LC)"
            for key, pattern in VIT_TARGETS.items():
                row = run(
                    "vit",
                    "LC+dLoRA",
                    epochs=epochs,
                    lr=args.lr,
                    rank=args.rank,
                    targets=pattern,
                    chain_kw=chain_kw,
                    data=data,
                    workdir=work,
                )
                row["targets"] = key
                vr.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
            studies.append(
                "### ViT layer study (Delta-LoRA on attention / MLP / both)\n\n"
                + study_table(vr, "targets")
            )
            rows += [dict(r, study="vit") for r in vr]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    main_rows = [r for r in rows if "study" not in r]
    cmd = "python benches/seed_table.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = "\n".join(
        [
            "## Source table reproduction (SPEC 3) on the scikit-learn digits",
            "",
            f"- command: `{cmd.strip()}`",
            f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
            f"- machine: {machine()}; deltackpt {deltackpt.__version__}",
            f"- epochs {epochs}, batch 32, SGD lr {args.lr} momentum 0.9, {scheme}, "
            f"anchor_every 10, Delta-LoRA rank {args.rank}, s = 0.5, lambda = 2",
            "",
            markdown(main_rows),
            "",
            details(main_rows),
            "",
            *[s + "\n" for s in studies],
        ]
    )
    print(report)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(report + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
