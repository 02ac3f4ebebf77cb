#!/usr/bin/env python3
"""Thread scaling of encode/decode on one big tensor (issue 13 item 4).

Usage: threads.py [--threads 1,2] [--rounds 3] [--reps 3]

The tensor is all-MiniLM-L6-v2's word embeddings (30522 x 384 float32, 46.9 MB); the
"reference" is that tensor and ``x`` is it plus a step-sized perturbation (N(0, 1e-3 * std)),
a stand-in for one training step's delta. Each thread count runs in its own process (the pool
size is fixed when the pool starts), alternating 1, 2, 1, 2, ... for ``--rounds`` rounds; the
best time of each operation over all rounds and ``--reps`` calls is kept.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CASES = {
    "lossless": {"quantizer": "none"},
    "exponent b=3 (ref)": {"quantizer": "exponent", "bits": 3},
    "rel_error=0.03 (ref)": {"rel_error": 0.03},
}


def child(reps: int) -> None:
    """Time every case in this process (its DELTACKPT_NUM_THREADS) and print JSON."""
    import numpy as np

    import deltackpt as dk
    from deltackpt._realdata import minilm_weights

    ref = minilm_weights()["embeddings.word_embeddings.weight"]
    rng = np.random.default_rng(0)
    x = (ref + rng.standard_normal(ref.shape).astype(np.float32) * 1e-3 * ref.std()).astype(
        np.float32
    )
    out = {}
    for name, kw in CASES.items():
        r = None if name == "lossless" else ref
        enc = dec = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            blob = dk.encode(x, reference=r, **kw)
            t1 = time.perf_counter()
            dk.decode(blob, reference=r)
            t2 = time.perf_counter()
            enc, dec = min(enc, t1 - t0), min(dec, t2 - t1)
        out[name] = {"enc": enc, "dec": dec, "bytes": x.nbytes, "blob": len(blob)}
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--child", action="store_true")
    a = ap.parse_args()
    if a.child:
        child(a.reps)
        return
    threads = [int(t) for t in a.threads.split(",")]
    best: dict[int, dict] = {}
    print(f"load before: {os.getloadavg()}")
    for _ in range(a.rounds):
        for t in threads:
            env = dict(os.environ, DELTACKPT_NUM_THREADS=str(t))
            cmd = [sys.executable, __file__, "--child", "--reps", str(a.reps)]
            got = json.loads(subprocess.check_output(cmd, env=env).decode().splitlines()[-1])
            for case, v in got.items():
                b = best.setdefault(t, {}).setdefault(case, v)
                b["enc"], b["dec"] = min(b["enc"], v["enc"]), min(b["dec"], v["dec"])
    print(f"load after: {os.getloadavg()}")
    head = "| case | threads | bit/weight | encode MB/s | decode MB/s | enc speed-up"
    print(head + " | dec speed-up |")
    print("|---|---|---|---|---|---|---|")
    for case in CASES:
        base = best[threads[0]][case]
        for t in threads:
            v = best[t][case]
            mb = v["bytes"] / 1e6
            print(
                f"| {case} | {t} | {8 * v['blob'] / (v['bytes'] / 4):.3f} | {mb / v['enc']:.0f}"
                f" | {mb / v['dec']:.0f} | {base['enc'] / v['enc']:.2f}x"
                f" | {base['dec'] / v['dec']:.2f}x |"
            )


if __name__ == "__main__":
    main()
