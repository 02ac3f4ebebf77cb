#!/usr/bin/env python3
"""Rate–distortion of error-bounded coding on real training deltas, beside SZ3 and ZFP.

The tensors are real step deltas (benches/real_deltas.py: all-MiniLM-L6-v2 fine-tuned with
AdamW, LeNet-5 on the digits with AdamW and SGD): ``after`` coded against ``before``. Every
tool codes the same tensors, one call per tensor, and bits are summed over the whole state.

1. **Same absolute tolerance** (the floor of the fidelity issue: <= 0.9x SZ3's bits): for
   t = k x rms(delta) per tensor, ``dk.encode(after, reference=before, tolerance=t)`` vs SZ3
   ABS (its default algorithm, and NOPRED) and ZFP fixed-accuracy on ``after - before``.
2. **Bits vs relative L2 error of the delta**: ``rel_error`` and ``tolerance`` modes, the
   LC-checkpoint exponent quantizer (bits 2..8), SZ3 and ZFP.

    python benches/rate_distortion.py [--runs minilm_adamw,lenet_adamw,lenet_sgd]
        [--data /work/data/deltas] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import real_deltas  # noqa: E402

import deltackpt as dk  # noqa: E402

Pair = tuple[np.ndarray, np.ndarray]


def sz3(d: np.ndarray, t: float, algo: str | None = None) -> tuple[int, np.ndarray]:
    import pysz

    c = pysz.szConfig()
    c.errorBoundMode = pysz.szErrorBoundMode.ABS
    c.absErrorBound = t
    if algo:
        c.cmprAlgo = getattr(pysz.szAlgorithm, algo)
    comp, _ = pysz.sz.compress(np.ascontiguousarray(d), c)
    out, _ = pysz.sz.decompress(comp, d.dtype, d.shape)
    return comp.size * 8, out


def zfp(d: np.ndarray, t: float) -> tuple[int, np.ndarray]:
    import zfpy

    comp = zfpy.compress_numpy(np.ascontiguousarray(d), tolerance=t)
    return len(comp) * 8, zfpy.decompress_numpy(comp)


def ours(after: np.ndarray, before: np.ndarray, **kw: Any) -> tuple[int, np.ndarray]:
    blob = dk.encode(after, reference=before, **kw)
    return len(blob) * 8, dk.decode(blob, reference=before) - before


def _rms(d: np.ndarray) -> float:
    return float(np.sqrt(np.mean(d.astype(np.float64) ** 2))) or 1e-30


def sweep(
    pairs: dict[str, Pair],
    coder: Callable[[np.ndarray, np.ndarray, np.ndarray, float], Any],
    k: float,
) -> tuple[float, float, float, float]:
    """(bits/param, rel L2 error of the delta, worst max|err|/t, seconds) of ``coder`` at
    t = k rms(delta) per tensor."""
    bits = err2 = norm2 = 0.0
    worst = 0.0
    t0 = time.perf_counter()
    n = 0
    for before, after in pairs.values():
        d = (after.astype(np.float64) - before).astype(np.float32)
        t = k * _rms(d)
        b, got = coder(after, before, d, t)
        e = got.astype(np.float64) - d
        bits += b
        err2 += float((e**2).sum())
        norm2 += float((d.astype(np.float64) ** 2).sum())
        worst = max(worst, float(np.abs(e).max(initial=0)) / t)
        n += d.size
    return bits / n, (err2 / norm2) ** 0.5, worst, time.perf_counter() - t0


TOOLS: dict[str, Callable[..., Any]] = {
    "deltackpt tolerance": lambda a, b, d, t: ours(a, b, tolerance=t),
    "SZ3 ABS (default)": lambda a, b, d, t: sz3(d, t),
    "SZ3 ABS (NOPRED)": lambda a, b, d, t: sz3(d, t, "NOPRED"),
    "ZFP accuracy": lambda a, b, d, t: zfp(d, t),
}


def same_tolerance(pairs: dict[str, Pair], ks: list[float]) -> list[str]:
    lines = [
        "| t / rms(delta) | tool | bits/param | rel L2 err of delta | max err / t | "
        "x SZ3 default |",
        "|---|---|---|---|---|---|",
    ]
    for k in ks:
        res = {name: sweep(pairs, f, k) for name, f in TOOLS.items()}
        sz = res["SZ3 ABS (default)"][0]
        for name, (bits, rel, worst, _) in res.items():
            lines.append(
                f"| {k:g} | {name} | {bits:.4f} | {rel:.4f} | {worst:.3f} | {bits / sz:.3f} |"
            )
    return lines


def exponent_curve(pairs: dict[str, Pair]) -> list[str]:
    lines = ["| LC exponent bits | bits/param | rel L2 err of delta |", "|---|---|---|"]
    for b in (2, 3, 4, 6, 8):
        bits = err2 = norm2 = n = 0.0
        for before, after in pairs.values():
            blob = dk.encode(after, reference=before, quantizer="exponent", bits=b)
            got = dk.decode(blob, reference=before).astype(np.float64)
            d = after.astype(np.float64) - before
            bits += len(blob) * 8
            err2 += float(((got - after) ** 2).sum())
            norm2 += float((d**2).sum())
            n += d.size
        lines.append(f"| {b} | {bits / n:.4f} | {(err2 / norm2) ** 0.5:.4f} |")
    return lines


def rel_curve(pairs: dict[str, Pair]) -> list[str]:
    """rel_error is relative to the tensor: express it as a fraction of the delta's norm."""
    lines = [
        "| rel_error / (norm(delta)/norm(x)) | bits/param | rel L2 err of delta |",
        "|---|---|---|",
    ]
    for k in (0.03, 0.1, 0.3, 1.0):
        bits = err2 = norm2 = n = 0.0
        for before, after in pairs.values():
            d = after.astype(np.float64) - before
            nx = float(np.linalg.norm(after.astype(np.float64))) or 1.0
            e = k * float(np.linalg.norm(d)) / nx
            if e <= 0:
                continue
            blob = dk.encode(after, reference=before, rel_error=e)
            got = dk.decode(blob, reference=before).astype(np.float64)
            bits += len(blob) * 8
            err2 += float(((got - after) ** 2).sum())
            norm2 += float((d**2).sum())
            n += d.size
        lines.append(f"| {k:g} | {bits / n:.4f} | {(err2 / norm2) ** 0.5:.4f} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default="lenet_sgd,lenet_adamw,minilm_adamw")
    ap.add_argument("--data", default="/work/data/deltas")
    ap.add_argument("--kinds", default="model", help="model, exp_avg, exp_avg_sq (comma list)")
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args(argv)
    out = [
        "## Rate–distortion on real deltas",
        "",
        f"- command: `python benches/rate_distortion.py {' '.join(argv or sys.argv[1:])}`",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"threads {dk._core.num_threads()}",
        "",
    ]
    for run in args.runs.split(","):
        all_pairs = real_deltas.load(args.data, run)
        for kind in args.kinds.split(","):
            pairs = {
                k: v
                for k, v in all_pairs.items()
                if (k.startswith("model.") if kind == "model" else k.endswith("." + kind))
            }
            if not pairs:
                continue
            n = sum(a.size for a, _ in pairs.values())
            out += [f"### {run}, {kind} ({len(pairs)} tensors, {n} params)", ""]
            out += same_tolerance(pairs, [0.1, 0.3, 1.0, 3.0]) + [""]
            out += exponent_curve(pairs) + [""] + rel_curve(pairs) + [""]
            print("\n".join(out[-40:]), flush=True)
    text = "\n".join(out)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
