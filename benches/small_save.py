"""What a save every step costs a small model: LeNet-5 + AdamW on the digits (issue 13).

Trains LeNet-5 (61,706 parameters, AdamW: 185K floats of state) on the scikit-learn digits
and, after every step, saves ``{"model", "optimizer"}`` to a chain with its defaults and,
in the same loop, ``torch.save``s the same state to a file (with and without ``fsync``, as
the chain fsyncs its commits). Prints the per-save times (median and mean over the saves,
warm-up excluded), their ratio, and the stored and allocated bytes per save.

Usage: ``python benches/small_save.py [--steps 200] [--profile]``; ``--profile`` prints the
chain save's cProfile (top 25 by cumulative time).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
if any(p.suffix == ".so" for p in (ROOT / "python" / "deltackpt").glob("_core.*")):
    sys.path.insert(0, str(ROOT / "python"))  # the in-tree package when built in place
from lenet_digits import LeNet5, digits  # noqa: E402

import deltackpt as dk  # noqa: E402


def _torch_save(state: dict, path: str, fsync: bool) -> float:
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        torch.save(state, f)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    return time.perf_counter() - t0


def run(steps: int, profile: bool) -> dict[str, float]:
    torch.manual_seed(0)
    x, y = digits(1000)
    model = LeNet5()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    times: dict[str, list[float]] = {"chain": [], "torch.save": [], "torch.save+fsync": []}
    prof = cProfile.Profile() if profile else None
    with tempfile.TemporaryDirectory() as tmp:
        chain = dk.CheckpointChain(os.path.join(tmp, "c"))
        for step in range(steps):
            i = torch.arange(32 * step, 32 * step + 32) % len(x)
            opt.zero_grad()
            F.cross_entropy(model(x[i]), y[i]).backward()
            opt.step()
            state = {"model": model, "optimizer": opt}
            if prof is not None and step >= 10:
                prof.enable()
            t0 = time.perf_counter()
            chain.save(step, state)
            times["chain"].append(time.perf_counter() - t0)
            if prof is not None:
                prof.disable()
            sd = {"model": model.state_dict(), "optimizer": opt.state_dict()}
            times["torch.save"].append(_torch_save(sd, os.path.join(tmp, "t.pt"), False))
            times["torch.save+fsync"].append(_torch_save(sd, os.path.join(tmp, "t.pt"), True))
        stats = chain.stats()
        chain.close()
    if prof is not None:
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(25)
        print(out.getvalue())
    res = {f"{k} median ms": 1e3 * statistics.median(v[10:]) for k, v in times.items()}
    res.update({f"{k} mean ms": 1e3 * statistics.mean(v[10:]) for k, v in times.items()})
    res["chain / torch.save (median)"] = res["chain median ms"] / res["torch.save median ms"]
    res["chain / torch.save+fsync (median)"] = (
        res["chain median ms"] / res["torch.save+fsync median ms"]
    )
    res["stored bytes per save"] = stats["stored_bytes"] / steps
    if "allocated_bytes" in stats:
        res["allocated / stored"] = stats["allocated_bytes"] / stats["stored_bytes"]
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    print(
        f"load average {os.getloadavg()[0]:.1f}, threads {os.environ.get('DELTACKPT_NUM_THREADS')}"
    )
    for k, v in run(args.steps, args.profile).items():
        print(f"{k}: {v:.3f}")


if __name__ == "__main__":
    main()
