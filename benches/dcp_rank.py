"""The state and the follower rank of benches/test_bench_dcp.py.

The benchmark process is rank 0; it starts this script as rank 1. Both build the same 2-rank
sharded state: the real all-MiniLM-L6-v2 weights (22.7M fp32) and a momentum buffer of the same
size (45.4M parameters, 182 MB), every tensor a DTensor Shard(0) over 2 gloo ranks. Save ``k``
uses the weights before (k even) or after (k odd) one real AdamW fine-tuning step, and a
momentum of 9 (k even) or 10 (k odd) times that step's delta, so every chain save after the
first codes a real step delta in both halves of the state. Rank 0 broadcasts each command.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

_PY = Path(__file__).resolve().parents[1] / "python"
if any(p.suffix in (".so", ".pyd") for p in (_PY / "deltackpt").glob("_core.*")):
    sys.path.insert(0, str(_PY))  # the in-tree package when built in place

CACHE = Path(os.environ.get("DELTACKPT_BENCH_CACHE", "/tmp/deltackpt-bench"))


def minilm_step() -> tuple[np.ndarray, np.ndarray]:
    """(before, after) of one real AdamW step of all-MiniLM-L6-v2 (cached like conftest.py)."""
    f = CACHE / "minilm_step.npz"
    if not f.exists():
        from deltackpt._realdata import minilm_finetune_delta

        CACHE.mkdir(parents=True, exist_ok=True)
        before, after = minilm_finetune_delta(steps=2)
        np.savez(f, before=before, after=after)
    z = np.load(f)
    return z["before"], z["after"]


def shapes() -> list[tuple[str, tuple[int, ...]]]:
    from deltackpt._realdata import minilm_weights

    return [(k, tuple(v.shape)) for k, v in minilm_weights().items() if v.dtype == np.float32]


class State:
    """The sharded state of one rank, switchable between the two real weight vectors."""

    def __init__(self, world: int) -> None:
        import torch
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import Shard, distribute_tensor

        before, after = minilm_step()
        self.flat = [torch.from_numpy(before), torch.from_numpy(after)]
        self.mesh = init_device_mesh("cpu", (world,))
        self.layout: list[tuple[str, tuple[int, ...], int]] = []
        off = 0
        for name, shape in shapes():
            n = int(np.prod(shape))
            self.layout.append((name, shape, off))
            off += n
        if off != before.size:
            raise RuntimeError("MiniLM layout does not match the cached step")
        self.numel = 2 * off
        step = self.flat[1] - self.flat[0]
        self.states = []
        for j, flat in enumerate(self.flat):
            momentum = step * (9.0 + j)  # moves by one real step delta between saves too
            model, optim = {}, {}
            for name, shape, o in self.layout:
                n = int(np.prod(shape))
                w = flat[o : o + n].reshape(shape)
                m = momentum[o : o + n].reshape(shape)
                model[name] = distribute_tensor(w, self.mesh, [Shard(0)])
                optim[name + ".momentum_buffer"] = distribute_tensor(m, self.mesh, [Shard(0)])
            self.states.append({"model": model, "optim": optim})
        del torch

    def state(self, k: int) -> dict[str, Any]:
        return self.states[k % 2]


def save(cmd: tuple[str, str, int], state: State, writers: dict[str, Any]) -> None:
    import torch.distributed.checkpoint as dcp

    from deltackpt.distributed import ChainWriter

    kind, path, k = cmd
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "chain":
            if path not in writers:
                writers[path] = ChainWriter(path, bits=3, anchor_every=10)
            dcp.save(state.state(k), storage_writer=writers[path], checkpoint_id=str(k))
        else:
            writer = dcp.FileSystemWriter(f"{path}/{k}")
            dcp.save(state.state(k), storage_writer=writer)


def follower(rdv: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rdv}", rank=1, world_size=2)
    state = State(2)
    writers: dict[str, Any] = {}
    while True:
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0)
        if box[0] == "quit":
            break
        save(box[0], state, writers)
    for w in writers.values():
        w.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    follower(sys.argv[1])
