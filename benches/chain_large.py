"""Save and restore times of a large fp32 state (the restore at depth 10), beside torch.save.

Usage: ``python benches/chain_large.py [--scale K]``: K × 25.2M parameters (K = 4: 100.7M; needs
~2 GB of RAM per unit of K and ~300 MB under /tmp per unit).
The states are a random walk (dense small updates, like SGD); 19 saves with the defaults.
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
    scale = ap.parse_args().scale
    torch.manual_seed(0)
    shapes = ([(4096, 1024)] * 6 + [(1024,)] * 6) * scale  # 25.2M fp32 parameters per unit
    cur = {f"p{i}": torch.randn(s) * 0.05 for i, s in enumerate(shapes)}
    root = tempfile.mkdtemp(prefix="dk-large-")
    save_s: list[float] = []
    try:
        with dk.CheckpointChain(root) as chain:
            for step in range(19):
                cur = {k: v + 1e-4 * torch.randn(v.shape) for k, v in cur.items()}
                t0 = time.perf_counter()
                chain.save(step, {"model": cur})
                save_s.append(time.perf_counter() - t0)
            stats = chain.stats()
        torch_s = []
        for _ in range(3):
            t0 = time.perf_counter()
            with open(os.path.join(root, "torch_save.pt"), "wb") as f:
                torch.save({"model": cur}, f)
                f.flush()
                os.fsync(f.fileno())
            torch_s.append(time.perf_counter() - t0)
        os.remove(os.path.join(root, "torch_save.pt"))
        reader = dk.CheckpointChain(root, mode="r")
        restore_s = []
        for _ in range(3):
            reader.records.clear()  # re-read the records every round
            t0 = time.perf_counter()
            reader.restore()
            restore_s.append(time.perf_counter() - t0)
        n = sum(v.numel() for v in cur.values()) / 1e6
        depth = reader.info()["depth"]
        print(
            f"{n:.1f}M fp32 parameters: restore of the latest step (depth {depth}) "
            f"min {min(restore_s):.2f} s; save of a step mean {sum(save_s[1:]) / 18:.2f} s "
            f"(keyframe {save_s[0]:.2f} s); torch.save + fsync of the same state min "
            f"{min(torch_s):.2f} s; ratio {stats['ratio']:.1f}x"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
