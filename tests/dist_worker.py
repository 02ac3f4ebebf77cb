"""One rank of the multi-process DCP tests (run by tests/test_distributed.py as a subprocess).

    python dist_worker.py MODE RANK WORLD RENDEZVOUS_FILE CHAIN OUT [ARG]

MODE ``train``: train LeNet-5 on the digits (identically on every rank), save steps 0..5 as
DTensors sharded on dim 0 with ``ChainWriter``; rank 0 writes the true states to
``OUT/true-<step>.safetensors``.
MODE ``load``: load each step of the comma-separated ARG with ``ChainReader`` (WORLD 1: plain
tensors, WORLD 2: DTensors Shard(0)) and write the loaded full state to
``OUT/loaded-w<WORLD>-<step>.safetensors``.
MODE ``load-shard1``: the same into DTensors Shard(1) (vectors replicated), written to
``OUT/loaded-w2-<step>-shard1.safetensors``.
MODE ``crash-data`` / ``crash-commit``: start saving step 6 and SIGKILL this process, rank 1
just before it commits its rank record / rank 0 (the coordinator) just before it writes the
step's global metadata.
MODE ``branch``: branch point and rollback across the ranks (see ``branch``).
MODE ``resume``: save steps ARG and ARG+1 with a fresh writer (after a crash).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import warnings
from typing import Any

warnings.filterwarnings("ignore")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.distributed.checkpoint as dcp  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from deltackpt._realdata import lenet5, load_digits_32  # noqa: E402
from deltackpt.distributed import ChainReader, ChainWriter  # noqa: E402

LR = 0.05
STEPS = 6  # saves 0..5


def _model_and_opt() -> tuple[Any, Any]:
    torch.manual_seed(0)
    model = lenet5()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    return model, opt


def _true_state(model: Any, opt: Any) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    names = dict(enumerate(n for n, _ in model.named_parameters()))
    for i, st in opt.state_dict()["state"].items():
        out[f"optim.{names[i]}.momentum_buffer"] = st["momentum_buffer"].clone()
    return out


def _nested(flat: dict[str, torch.Tensor], step: int) -> dict[str, Any]:
    sd: dict[str, Any] = {"model": {}, "optim": {}}
    for k, v in flat.items():
        top, rest = k.split(".", 1)
        sd[top][rest] = v
    sd["meta"] = {"step": step, "lr": LR, "name": "lenet5"}
    sd["counter"] = torch.tensor([step], dtype=torch.int64)  # replicated plain tensor
    return sd


def _shard(sd: dict[str, Any], world: int, layout: str = "shard0") -> dict[str, Any]:
    """DTensors over a 1-D CPU mesh: Shard(0) (as saved), or ``layout="shard1"``: Shard(1)
    for matrices/kernels and Replicate() for vectors (a different sharding on load)."""
    if world == 1:
        return sd
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))

    def place(v: torch.Tensor) -> list[Any]:
        if layout == "shard0":
            return [Shard(0)]
        return [Shard(1)] if v.dim() >= 2 else [Replicate()]

    for top in ("model", "optim"):
        sd[top] = {k: distribute_tensor(v, mesh, place(v)) for k, v in sd[top].items()}
    return sd


def _template(out: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {
        k: torch.zeros_like(v)
        for k, v in load_file(os.path.join(out, "true-0.safetensors")).items()
    }


def train(rank: int, world: int, chain: str, out: str) -> None:
    x, y, _, _ = load_digits_32()
    model, opt = _model_and_opt()
    g = torch.Generator().manual_seed(1)
    with ChainWriter(chain, bits=3, anchor_every=4) as writer:
        for step in range(STEPS):
            idx = torch.randperm(len(x), generator=g)[:32]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            flat = _true_state(model, opt)
            if rank == 0:
                save_file(flat, os.path.join(out, f"true-{step}.safetensors"))
            sd = _shard(_nested(flat, step), world)
            dcp.save(sd, storage_writer=writer, checkpoint_id=str(step))


def load(rank: int, world: int, chain: str, out: str, steps: str, layout: str) -> None:
    for step in [int(s) for s in steps.split(",")]:
        load_one(rank, world, chain, out, step, layout)


def load_one(rank: int, world: int, chain: str, out: str, step: int, layout: str) -> None:
    flat = _template(out)
    sd = _shard(_nested(flat, -1), world, layout)
    sd["meta"] = {"step": None, "lr": None, "name": None}
    sd["counter"] = torch.zeros(1, dtype=torch.int64)
    dcp.load(sd, storage_reader=ChainReader(chain, step=step))
    full: dict[str, torch.Tensor] = {}
    for top in ("model", "optim"):
        for k, v in sd[top].items():
            full[f"{top}.{k}"] = v.full_tensor() if world > 1 else v
    full["counter"] = sd["counter"]
    if rank == 0:
        name = f"loaded-w{world}-{step}" + ("" if layout == "shard0" else f"-{layout}")
        save_file(full, os.path.join(out, f"{name}.safetensors"))
        with open(os.path.join(out, f"{name}.json"), "w") as f:
            json.dump(sd["meta"], f)


def crash(rank: int, world: int, chain: str, out: str, where: str) -> None:
    import deltackpt.store as store_mod

    flat = _template(out)
    for v in flat.values():
        v.add_(1.0)
    sd = _shard(_nested(flat, STEPS), world)
    if where == "data" and rank == 1:
        real_write = store_mod.LocalStore.write

        def write(self: Any, name: str, payload: bytes, **kw: Any) -> None:
            if name.startswith("records/"):
                os.kill(os.getpid(), signal.SIGKILL)  # data files written, record not yet
            real_write(self, name, payload, **kw)

        store_mod.LocalStore.write = write  # type: ignore[method-assign]
    if where == "commit" and rank == 0:

        def finish(self: Any, metadata: Any, results: Any) -> None:
            os.kill(os.getpid(), signal.SIGKILL)  # every rank record committed, no metadata

        ChainWriter.finish = finish  # type: ignore[method-assign]
    writer = ChainWriter(chain, bits=3, anchor_every=4)
    dcp.save(sd, storage_writer=writer, checkpoint_id=str(STEPS))
    raise SystemExit("the save should have been killed")


def resume(rank: int, world: int, chain: str, out: str, first: int) -> None:
    flat = _template(out)
    with ChainWriter(chain, bits=3, anchor_every=4) as writer:
        for step in (first, first + 1):
            for v in flat.values():
                v.add_(0.5)
            if rank == 0:
                save_file(flat, os.path.join(out, f"true-{step}.safetensors"))
            sd = _shard(_nested({k: v.clone() for k, v in flat.items()}, step), world)
            dcp.save(sd, storage_writer=writer, checkpoint_id=str(step))


def branch(rank: int, world: int, chain: str, out: str) -> None:
    """Save 6 and 7, branch point "slot" at 7, save 8 on main, roll back, save 8 (other
    values) on the new branch; rank 0 writes the true states."""
    flat = _template(out)
    with ChainWriter(chain, bits=3, anchor_every=4) as writer:

        def save(step: int, scale: float, name: str) -> None:
            for v in flat.values():
                v.add_(scale)
            if rank == 0:
                save_file(flat, os.path.join(out, f"true-{name}.safetensors"))
            sd = _shard(_nested({k: v.clone() for k, v in flat.items()}, step), world)
            dcp.save(sd, storage_writer=writer, checkpoint_id=str(step))

        save(6, 0.5, "6")
        save(7, 0.25, "7")
        assert writer.branch_point("slot") == 7
        save(8, 0.125, "8-main")
        assert writer.rollback("slot") == "slot.1"
        for v in flat.values():
            v.add_(-0.125)  # back to step 7's values
        save(8, -0.25, "8-slot")


def main() -> None:
    mode, rank, world, rdv, chain, out = sys.argv[1:7]
    arg = sys.argv[7] if len(sys.argv) > 7 else ""
    r, w = int(rank), int(world)
    torch.set_num_threads(1)
    if w > 1:
        dist.init_process_group("gloo", init_method=f"file://{rdv}", rank=r, world_size=w)
    finished = False
    try:
        if mode == "train":
            train(r, w, chain, out)
        elif mode == "load":
            load(r, w, chain, out, arg, "shard0")
        elif mode == "load-shard1":
            load(r, w, chain, out, arg, "shard1")
        elif mode.startswith("crash-"):
            crash(r, w, chain, out, mode.removeprefix("crash-"))
        elif mode == "branch":
            branch(r, w, chain, out)
        elif mode == "resume":
            resume(r, w, chain, out, int(arg))
        else:
            raise SystemExit(f"unknown mode {mode}")
        finished = True
    finally:
        if w > 1 and dist.is_initialized() and not finished:
            dist.destroy_process_group()
    if w > 1:
        # Leave together, then skip the interpreter's teardown: gloo's background threads
        # outliving the process group make C++ call std::terminate at exit ("terminate called
        # without an active exception", SIGABRT) when the machine is loaded. Everything this
        # rank wrote is closed by now.
        dist.barrier()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
