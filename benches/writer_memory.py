"""Writer memory and time of a chain for a ~100M-parameter fp32 state (issue 17).

Each configuration runs in a fresh child process, which builds the state (``--tensors`` fp32
tensors of ``--side`` x ``--side``; 24 x 2048 x 2048 = 100.7M parameters, 403 MB), resets the
kernel's peak-RSS counter (``/proc/self/clear_refs``), then saves ``--saves`` steps, each after
an in-place update of every tensor (a training step: ``w += 1e-3 * noise``). Reported:

* peak RSS beyond the state: ``VmHWM`` after the saves minus ``VmRSS`` right after the reset
  (the state, the interpreter, torch), in MB and in multiples of the state; the ``none`` row
  runs the same loop without a chain: what the updates' own temporaries hold;
* blocked time per save (what the training loop waits in ``save()``; with ``async_save`` the
  host copy, the wait for room included) against a ``clone()`` of the state in the same run;
* save and restore time, local directory vs S3 (moto's server in a separate process on
  loopback, through s3fs).

Usage: ``nice -n 10 python benches/writer_memory.py [--saves 12] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _status(field: str) -> int:
    """A ``/proc/self/status`` size in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One configuration, in this process: the figures as a dict."""
    import torch

    import deltackpt as dk

    torch.manual_seed(0)
    state = {f"layer{i}.w": torch.randn(args.side, args.side) for i in range(args.tensors)}
    noise = torch.Generator().manual_seed(1)
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    base_rss = _status("VmRSS")
    opts = {} if not args.s3 else {"storage_options": {"endpoint_url": args.s3}}
    blocked, saves = [], 0.0
    t_all = time.perf_counter()
    chain = (
        None
        if args.mode == "none"
        else dk.CheckpointChain(args.url, async_save=args.mode == "async", **opts)
    )
    for step in range(args.saves):
        for t in state.values():
            t.add_(torch.randn(t.shape, generator=noise), alpha=1e-3)
        t0 = time.perf_counter()
        if chain is not None:
            chain.save(step, state)
        blocked.append(time.perf_counter() - t0)
        time.sleep(args.compute)  # the training step the background save overlaps
    if chain is not None:
        chain.close()
    saves = time.perf_counter() - t_all - args.compute * args.saves
    peak = _status("VmHWM") - base_rss
    # after the peak is read: memory freed by the clones stays in the allocator's heap and,
    # counted in the baseline, would hide up to a state of the writer's later allocations
    t0 = time.perf_counter()
    for _ in range(3):
        copy = {k: v.clone() for k, v in state.items()}
        del copy
    clone_s = (time.perf_counter() - t0) / 3
    t0 = time.perf_counter()
    if chain is not None:
        with dk.CheckpointChain(args.url, mode="r", **opts) as reader:
            got = reader.restore(args.saves - 1)
        del got
    restore_s = time.perf_counter() - t0
    return {
        "mode": args.mode + (f"+{args.compute:g}s compute" if args.compute else ""),
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
        "store": "s3" if args.s3 else "local",
        "params": args.tensors * args.side * args.side,
        "state_mb": nbytes / 1e6,
        "peak_beyond_state_mb": peak / 1e6,
        "peak_beyond_state_x": peak / nbytes,
        "blocked_s_mean": sum(blocked[1:]) / max(1, len(blocked) - 1),
        "blocked_s_max": max(blocked[1:] or blocked),
        "clone_s": clone_s,
        "saves_s_per_save": saves / args.saves,
        "restore_s": restore_s,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _moto() -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, endpoint
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto's server did not start")


def _run_child(extra: list[str], env: dict[str, str]) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--saves", type=int, default=12)
    p.add_argument("--tensors", type=int, default=24)
    p.add_argument("--side", type=int, default=2048)
    p.add_argument("--mode", default="sync", choices=("none", "sync", "async"))
    p.add_argument("--url", default="")
    p.add_argument("--s3", default="")
    p.add_argument("--child", action="store_true")
    p.add_argument("--compute", type=float, default=0.0, help="seconds between saves")
    p.add_argument("--no-s3", action="store_true", help="skip the S3 rows")
    p.add_argument("--json", default="")
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "python") + os.pathsep + env.get("PYTHONPATH", "")
    shape = ["--saves", str(args.saves), "--tensors", str(args.tensors), "--side", str(args.side)]
    rows = []
    mmap_env = {**env, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    local = [
        ("none", 0.0, env),  # the loop without a chain: what the updates themselves hold
        ("sync", 0.0, env),
        ("async", 0.0, env),
        ("async", 5.0, env),  # a training step longer than a save: blocked = the copy
        ("sync", 0.0, mmap_env),
        ("async", 0.0, mmap_env),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for n, (mode, compute, run_env) in enumerate(local):
            url = os.path.join(tmp, f"{mode}{n}")
            extra = ["--mode", mode, "--url", url, "--compute", str(compute)]
            rows.append(_run_child([*shape, *extra], run_env))
            print(json.dumps(rows[-1]), flush=True)
    if not args.no_s3:
        proc, endpoint = _moto()
        try:
            s3env = {**env, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}
            s3env["AWS_DEFAULT_REGION"] = "us-east-1"
            import fsspec

            fs = fsspec.filesystem("s3", endpoint_url=endpoint, key="x", secret="x")
            fs.mkdir("bench")
            for mode in ("sync", "async"):
                extra = ["--mode", mode, "--url", f"s3://bench/{mode}", "--s3", endpoint]
                rows.append(_run_child([*shape, *extra], s3env))
                print(json.dumps(rows[-1]), flush=True)
        finally:
            proc.kill()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
