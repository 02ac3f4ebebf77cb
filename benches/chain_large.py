"""Save and restore times of a large fp32 state (the restore at depth 10), beside torch.save.

Usage: ``python benches/chain_large.py [--scale K] [--threads T] [--quantizer Q] [--compare]``:
K × 25.2M parameters (K = 4: 100.7M; needs ~2 GB of RAM per unit of K and ~300 MB under /tmp
per unit). The states are a random walk (dense small updates, like SGD); 19 saves with the
defaults (or ``quantizer=Q``). The restore is timed interleaved with ``torch.load`` of the
same state (same run, best of 3 each; ``T`` restore threads, run with
``DELTACKPT_NUM_THREADS=T`` for the core); ``--compare`` also times the restore link by link
(one pass over each tensor per delta, the path before the fused restore).
"""

from __future__ import annotations

import shutil
import tempfile
import time

import torch

import deltackpt as dk


def main() -> None:
    import argparse
    import os

    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quantizer", default=None)
    ap.add_argument("--compare", action="store_true")
    args = ap.parse_args()
    scale = args.scale
    opts = {} if args.quantizer is None else {"quantizer": args.quantizer}
    torch.manual_seed(0)
    shapes = ([(4096, 1024)] * 6 + [(1024,)] * 6) * scale  # 25.2M fp32 parameters per unit
    cur = {f"p{i}": torch.randn(s) * 0.05 for i, s in enumerate(shapes)}
    root = tempfile.mkdtemp(prefix="dk-large-")
    save_s: list[float] = []
    try:
        with dk.CheckpointChain(root, **opts) as chain:
            for step in range(19):
                cur = {k: v + 1e-4 * torch.randn(v.shape) for k, v in cur.items()}
                t0 = time.perf_counter()
                chain.save(step, {"model": cur})
                save_s.append(time.perf_counter() - t0)
            stats = chain.stats()
        torch_s, load_s, restore_s, linked_s = [], [], [], []
        pt = os.path.join(root, "torch_save.pt")
        for _ in range(3):
            t0 = time.perf_counter()
            with open(pt, "wb") as f:
                torch.save({"model": cur}, f)
                f.flush()
                os.fsync(f.fileno())
            torch_s.append(time.perf_counter() - t0)
        reader = dk.CheckpointChain(root, mode="r", threads=args.threads)
        for _ in range(3):
            t0 = time.perf_counter()
            torch.load(pt)
            load_s.append(time.perf_counter() - t0)
            reader.records.clear()  # re-read the records every round
            t0 = time.perf_counter()
            reader.restore()
            restore_s.append(time.perf_counter() - t0)
            if args.compare:
                linked_s.append(_restore_link_by_link(reader))
        os.remove(pt)
        n = sum(v.numel() for v in cur.values()) / 1e6
        depth = reader.info()["depth"]
        print(
            f"{n:.1f}M fp32 parameters ({args.quantizer or 'default'}, {args.threads} restore "
            f"threads): restore of the latest step (depth {depth}) min {min(restore_s):.3f} s, "
            f"torch.load of the same state min {min(load_s):.3f} s: "
            f"{min(restore_s) / min(load_s):.2f}x torch.load"
            + (
                f"; link by link min {min(linked_s):.3f} s ({min(linked_s) / min(load_s):.2f}x)"
                if linked_s
                else ""
            )
            + f"; save of a step mean {sum(save_s[1:]) / 18:.2f} s (keyframe {save_s[0]:.2f} s); "
            f"torch.save + fsync min {min(torch_s):.2f} s; ratio {stats['ratio']:.1f}x"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _restore_link_by_link(reader: dk.CheckpointChain) -> float:
    """One restore with every delta applied in its own pass (the unfused path)."""
    from deltackpt.chain import blobs, restore

    def linked(x, links, cache):  # type: ignore[no-untyped-def]
        for link in links:
            x = blobs.apply_delta(x, link, cache)
        return x

    fused, restore.apply_deltas = restore.apply_deltas, linked
    try:
        reader.records.clear()
        t0 = time.perf_counter()
        reader.restore()
        return time.perf_counter() - t0
    finally:
        restore.apply_deltas = fused


if __name__ == "__main__":
    main()
