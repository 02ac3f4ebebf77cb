"""Single-thread speed of decode + apply and encode of one big fp32 delta, beside a memcpy of
the same bytes in the same run (interleaved, best of ``--reps``).

Usage: ``DELTACKPT_NUM_THREADS=1 python benches/decode_speed.py [--mb 64] [--reps 7]``.
Codecs: the chain's default (``rel_error=0.03``) and LC (``quantizer="exponent", bits=3``);
``decode`` is ``dk.decode(blob, reference=out, out=out)`` (a delta applied in place),
``chain x9`` is ``decode_chain`` of 9 such deltas (the fused restore's inner loop, per delta),
``encode`` is the whole ``dk.encode(x, reference=ref, ...)``. memcpy is ``torch`` ``copy_``
into an already written buffer.
"""

from __future__ import annotations

import argparse
import time

import torch

import deltackpt as dk


def best(f, reps: int) -> float:  # type: ignore[no-untyped-def]
    out = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        out = min(out, time.perf_counter() - t0)
    return out


def _interleaved(reps, x, ref, dst, blob, blobs, kw):  # type: ignore[no-untyped-def]
    """Best times of memcpy, one decode + apply, a fused chain per delta and one encode."""
    out = torch.empty_like(ref)
    mem, dec, chain, enc = [], [], [], []
    for _ in range(reps):
        mem.append(best(lambda: dst.copy_(x), 1))
        out.copy_(ref)
        dec.append(best(lambda: dk.decode(blob, reference=out, out=out), 1))
        out.copy_(ref)
        chain.append(best(lambda: dk._api.decode_chain(blobs, out, [False] * 9), 1) / 9)
        enc.append(best(lambda: dk.encode(x, reference=ref, **kw), 1))
    return min(mem), min(dec), min(chain), min(enc)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=64)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    n = args.mb * (1 << 20) // 4
    ref = torch.randn(n) * 0.05
    x = ref + 1e-4 * torch.randn(n)
    dst = torch.empty_like(ref)
    dst.copy_(ref)
    for name, kw in [
        ("rel_error=0.03", {"rel_error": 0.03}),
        ("LC b=3", {"quantizer": "exponent", "bits": 3}),
    ]:
        blob = dk.encode(x, reference=ref, **kw)
        walk = [ref.clone()]
        blobs = []
        for _ in range(9):
            nxt = walk[-1] + 1e-4 * torch.randn(n)
            rec = torch.empty_like(ref)
            blobs.append(dk.encode(nxt, reference=walk[-1], reconstruction=rec, **kw))
            walk.append(rec)
        m, dec, chain, enc = _interleaved(args.reps, x, ref, dst, blob, blobs, kw)
        print(
            f"{name}: {8 * len(blob) / n:.3f} bits/elem; memcpy {args.mb / m:.0f} MB/s; "
            f"decode+apply {m / dec:.3f}x memcpy; chain x9 per delta {m / chain:.3f}x; "
            f"encode {m / enc:.3f}x"
        )


if __name__ == "__main__":
    main()
