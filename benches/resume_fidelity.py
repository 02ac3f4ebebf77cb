#!/usr/bin/env python3
"""Resume fidelity of checkpoint chains, as a user feels it.

For each configuration (model, optimizer, learning rate): train on the scikit-learn digits
saving {model, optimizer, scheduler} every step into a chain, then at several steps (plain
steps and anchors) resume twice — from the chain and from ``torch.save`` of the same step —
and train on with the same batches. Reported per resume: the first loss, the worst loss over
the next 20 steps, the mean loss over the next 100, the final accuracy, and the chain's
ratio (optimizer state included). Chains compared: the defaults (error-bounded) and the
LC-checkpoint scheme (``quantizer="exponent", bits=3``).

    python benches/resume_fidelity.py [--quick] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from typing import Any

import deltackpt as dk
from deltackpt._resume import Trial, describe, run_trial

CHAINS: dict[str, dict[str, Any]] = {
    "default": {},
    "LC b=3": {"quantizer": "exponent", "bits": 3},
}

CONFIGS = [
    ("lenet", "adamw", 2e-3),
    ("lenet", "adamw", 1e-3),
    ("lenet", "sgd", 0.05),
    ("lenet", "sgd", 0.01),
    ("cnn", "adamw", 2e-3),
    ("cnn", "sgd", 0.05),
]


def chain_factory(path: str, kw: dict[str, Any]) -> Any:
    return lambda: dk.CheckpointChain(path, **kw)


def row(model: str, opt: str, lr: float, chain: str, r: Any, ratio: float) -> str:
    (cm, em), (ca, ea) = r.max_spike(), r.mean_loss()
    ok = "yes" if r.meets_floor() else "**no**"
    return (
        f"| {model} | {opt} {lr:g} | {chain} | {r.step} ({r.kind}) | {ratio:.1f}x | "
        f"{r.chain_losses[0]:.4f} / {r.exact_losses[0]:.4f} | {cm:.4f} / {em:.4f} | "
        f"{ca:.4f} / {ea:.4f} | {r.chain_acc:.2f} / {r.exact_acc:.2f} | {ok} |"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="two configurations only")
    ap.add_argument("--markdown", help="write the table to this file")
    ap.add_argument("--chains", default=",".join(CHAINS), help="comma-separated chain names")
    args = ap.parse_args(argv)
    configs = CONFIGS[:1] + CONFIGS[2:3] if args.quick else CONFIGS
    lines = [
        "| model | optimizer, lr | chain | resume at | ratio | first loss chain / exact | "
        "max loss 20 steps | mean loss 100 steps | accuracy % | floor met |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, opt, lr in configs:
        for name in args.chains.split(","):
            tmp = tempfile.mkdtemp()
            t0 = time.time()
            trial = Trial(optimizer=opt, lr=lr, model=model, resume_at=(150, 200, 213))
            res, stats = run_trial(trial, chain_factory(f"{tmp}/c", CHAINS[name]))
            shutil.rmtree(tmp)
            print(
                f"{model} {opt} {lr:g} [{name}] ratio {stats['ratio']:.1f}x "
                f"({time.time() - t0:.0f} s)",
                flush=True,
            )
            for r in res:
                print("   ", describe(r), flush=True)
                lines.append(row(model, opt, lr, name, r, stats["ratio"]))
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    sys.exit(main())
