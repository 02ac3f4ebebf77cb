"""The `deltackpt` command line: demo, inspect, verify, stats, restore.

``PATH`` is a chain directory or fsspec URL: either a :class:`deltackpt.CheckpointChain` or the
root of a ``torch.distributed.checkpoint`` chain written by
:class:`deltackpt.distributed.ChainWriter` (``dcp.json`` plus one chain per rank).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _api
from .errors import CorruptDataError

NOT_FRAMED = {"LOCK", "LOCK.guard"}  # the writer lock files are plain, by design


# --------------------------------------------------------------------------- helpers


def _progress(items: Iterable[Any], quiet: bool, desc: str, total: int | None = None) -> Any:
    """A tqdm progress bar on stderr (plain iteration with --quiet or without tqdm)."""
    if quiet:
        return items
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is in the demo/test extras
        return items
    return tqdm(
        items, desc=desc, total=total, file=sys.stderr, leave=False, mininterval=0.2, delay=1.0
    )


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(quiet: bool, desc: str, total: int) -> Any:
    """A manual tqdm bar (``update``/``close``), or a no-op one with --quiet."""
    if quiet:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return _NoBar()
    return tqdm(
        desc=desc, total=total or None, file=sys.stderr, leave=False, mininterval=0.2, delay=1.0
    )


def _waiting(fn: Any, quiet: bool, desc: str) -> Any:
    """Run ``fn()`` in a worker thread, showing an elapsed-time bar until it returns."""
    if quiet:
        return fn()
    import concurrent.futures as cf

    bar = _bar(quiet, desc, 0)
    with cf.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(fn)
        while True:
            try:
                result = fut.result(timeout=0.2)
                break
            except cf.TimeoutError:
                if hasattr(bar, "refresh"):
                    bar.refresh()
    bar.close()
    return result


def _timed(f: Any, reps: int = 3) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = f()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _row(name: str, raw: int, size: int, secs: float, dsecs: float) -> str:
    return (
        f"| {name} | {raw / 1e6:.1f} MB | {size / 1e6:.2f} MB | {raw / size:.2f}x "
        f"| {raw / secs / 1e6:.0f} | {raw / dsecs / 1e6:.0f} |"
    )


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


def _is_dcp(store: Any) -> bool:
    return bool(store.exists("dcp.json"))


def _sub(path: str, name: str) -> str:
    from .distributed import _sub_url

    return _sub_url(path, name)


def _rank_dirs(store: Any) -> list[str]:
    ranks = set()
    for name in store.list(""):
        head = name.split("/", 1)[0]
        if head.startswith("rank-") and head[5:].isdigit():
            ranks.add(head)
    return sorted(ranks, key=lambda h: int(h[5:]))


def _records(chain: Any) -> list[tuple[str, int]]:
    """Every record of a chain as (branch, step), each once, in step order."""
    seen: dict[tuple[str, int], None] = {}
    for b in chain.branches():
        for s in chain.steps(b):
            seen[(chain.info(s, b)["branch"], s)] = None
    return sorted(seen, key=lambda r: (r[1], r[0]))


def _record_sizes(chain: Any, rid: tuple[str, int]) -> tuple[int, int]:
    """(stored bytes, raw fp bytes) of one record: its record file plus its data files."""
    from .chain.inspect import stored_bytes

    rec = chain.records.record(rid)
    return stored_bytes(chain.records, rec), int(rec.raw_bytes)


def _open_chain(path: str) -> Any:
    from .chain import CheckpointChain

    return CheckpointChain(path, mode="r")


def _per_step_rows(path: str, quiet: bool = True) -> list[dict[str, Any]]:
    """One row per record (per step summed over ranks for a DCP chain)."""
    from .store import open_store

    store = open_store(path)
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    subs = [_sub(path, d) for d in _rank_dirs(store)] if _is_dcp(store) else [path]
    for sub in subs:
        with _open_chain(sub) as chain:
            for rid in _progress(_records(chain), quiet, "reading records"):
                stored, raw = _record_sizes(chain, rid)
                info = chain.info(rid[1], rid[0])
                row = rows.setdefault(
                    rid,
                    {
                        "branch": rid[0],
                        "step": rid[1],
                        "kind": info["kind"],
                        "depth": info["depth"],
                        "stored": 0,
                        "raw": 0,
                    },
                )
                row["stored"] += stored
                row["raw"] += raw
    return [rows[k] for k in sorted(rows, key=lambda r: (r[1], r[0]))]


# --------------------------------------------------------------------------- inspect


def inspect_cmd(path: str, quiet: bool = False) -> int:
    """Print branches, branch points, and every step's kind, depth and sizes."""
    from .store import open_store

    store = open_store(path)
    if not store.exists("chain.json") and not _is_dcp(store):
        print(f"error: no deltackpt chain at {path}", file=sys.stderr)
        return 2
    if _is_dcp(store):
        from .distributed import committed_steps

        ranks = _rank_dirs(store)
        branches = sorted({n.split("/")[1] for n in store.list("dcp") if n.count("/") == 2})
        print(f"torch.distributed.checkpoint chain at {path}: {len(ranks)} rank chain(s)")
        for b in branches:
            print(f"branch {b}: committed steps {committed_steps(store, b)}")
    else:
        from .chain.branches import branch_info

        with _open_chain(path) as chain:
            cfg = json.loads(store.read("chain.json"))
            print(
                f"chain at {path}: bits {cfg.get('bits')}, anchor_every "
                f"{cfg.get('anchor_every')}, keyframe_every {cfg.get('keyframe_every')}"
            )
            for b in chain.branches():
                parent = branch_info(chain.store, b).get("parent")
                where = f" (from {parent['branch']} @ {parent['step']})" if parent else ""
                print(
                    f"branch {b}{where}: {len(chain.steps(b))} steps"
                    + ("  <- HEAD" if b == chain.branch else "")
                )
            for name, (b, s) in sorted(chain.branch_points().items()):
                print(f"branch point {name}: {b} @ {s}")
    rows = _per_step_rows(path, quiet)
    print("\n| branch | step | kind | restore depth | stored | raw fp |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['branch']} | {r['step']} | {r['kind']} | {r['depth']} | "
            f"{_human(r['stored'])} | {_human(r['raw'])} |"
        )
    stored = sum(r["stored"] for r in rows)
    raw = sum(r["raw"] for r in rows)
    total = sum(store.size(n) for n in store.list("") if n.rsplit("/", 1)[-1] not in NOT_FRAMED)
    ratio = raw / total if total else math.inf
    print(
        f"\n{len(rows)} records, {_human(stored)} in records, {_human(total)} on disk in all, "
        f"{_human(raw)} raw: ratio {ratio:.1f}x"
    )
    return 0


# --------------------------------------------------------------------------- verify


def verify_cmd(path: str, quiet: bool = False) -> int:
    """Check every file's checksum and decode every step; exit 1 naming each bad file."""
    from .store import open_store

    problems: list[str] = []
    try:
        store = open_store(path)
        names = [n for n in store.list("") if n.rsplit("/", 1)[-1] not in NOT_FRAMED]
    except Exception as e:  # noqa: BLE001 - reported, never raised
        print(f"error: cannot list {path}: {e}", file=sys.stderr)
        return 2
    if not names:
        print(f"error: no deltackpt chain at {path}", file=sys.stderr)
        return 2
    bad_files: set[str] = set()
    for name in _progress(names, quiet, "checksums"):
        try:
            store.read(name)
        except Exception as e:  # noqa: BLE001
            problems.append(f"{name}: {e}")
            bad_files.add(name)
    if _is_dcp(store) or "dcp.json" in bad_files:
        problems += _verify_dcp(path, store, quiet)
    else:
        problems += _verify_chain(path, "", quiet)
    if problems:
        for p in problems:
            print(f"CORRUPT {p}")
        print(f"{path}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    if not quiet:
        print(f"{path}: OK ({len(names)} files)")
    return 0


def _verify_chain(path: str, prefix: str, quiet: bool) -> list[str]:
    """Restore every record of a chain; a failure names the record file (and the cause)."""
    problems: list[str] = []
    try:
        chain = _open_chain(path)
    except Exception as e:  # noqa: BLE001
        return [f"{prefix}chain.json: cannot open the chain: {e}"]
    with chain:
        try:
            rids = _records(chain)
        except Exception as e:  # noqa: BLE001
            return [f"{prefix}branches/ or records/: {e}"]
        for b, s in _progress(rids, quiet, f"decoding {prefix or 'steps'}"):
            try:
                chain.restore(s, b)
            except Exception as e:  # noqa: BLE001
                problems.append(f"{prefix}records/{b}/{s:012d}.json: step {s} ({b}): {e}")
    return problems


def _verify_dcp(path: str, store: Any, quiet: bool) -> list[str]:
    from .distributed import ChainReader, committed_steps, metadata_from_json

    problems: list[str] = []
    try:
        doc = json.loads(store.read("dcp.json"))
        if doc.get("format") != "deltackpt-dcp":
            problems.append("dcp.json: not a deltackpt DCP chain")
    except Exception as e:  # noqa: BLE001
        problems.append(f"dcp.json: {e}")
    for rank in _rank_dirs(store):
        problems += _verify_chain(_sub(path, rank), f"{rank}/", quiet)
    branches = sorted({n.split("/")[1] for n in store.list("dcp") if n.count("/") == 2})
    for b in branches:
        for s in committed_steps(store, b):
            name = f"dcp/{b}/{s:012d}.json"
            try:
                md = metadata_from_json(json.loads(store.read(name)))
                reader = ChainReader(path, step=s, branch=b)
                reader.set_up_storage_reader(md, True)
                for index in md.storage_data:
                    reader._item(index)  # every stored item is present in its rank chain
                reader.close()
            except Exception as e:  # noqa: BLE001
                problems.append(f"{name}: {e}")
    return problems


# --------------------------------------------------------------------------- stats


def stats_cmd(path: str, plot: str | None = None, quiet: bool = False) -> int:
    """Bytes per step and the cumulative compression ratio; optionally a PNG plot."""
    rows = _per_step_rows(path, quiet)
    if not rows:
        print(f"error: no records in {path}", file=sys.stderr)
        return 2
    print("| step | branch | kind | stored | raw fp | cumulative ratio |")
    print("|---|---|---|---|---|---|")
    cum_s = cum_r = 0
    ratios = []
    for r in rows:
        cum_s += r["stored"]
        cum_r += r["raw"]
        ratios.append(cum_r / cum_s)
        print(
            f"| {r['step']} | {r['branch']} | {r['kind']} | {_human(r['stored'])} | "
            f"{_human(r['raw'])} | {ratios[-1]:.1f}x |"
        )
    by_kind: dict[str, list[int]] = {}
    for r in rows:
        by_kind.setdefault(r["kind"], []).append(r["stored"])
    print()
    for kind, sizes in sorted(by_kind.items()):
        print(f"{kind}: {len(sizes)} records, mean {_human(sum(sizes) / len(sizes))}")
    print(f"overall ratio (records only): {ratios[-1]:.2f}x")
    if plot:
        _plot(rows, ratios, plot, path)
        print(f"plot written to {plot}")
    return 0


def _plot(rows: list[dict[str, Any]], ratios: list[float], out: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"keyframe": "tab:red", "anchor": "tab:orange", "step": "tab:blue"}
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    steps = [r["step"] for r in rows]
    for kind, color in colors.items():
        xs = [r["step"] for r in rows if r["kind"] == kind]
        ys = [r["stored"] for r in rows if r["kind"] == kind]
        if xs:
            ax1.scatter(xs, ys, s=12, color=color, label=kind)
    ax1.plot(steps, [r["raw"] for r in rows], color="gray", lw=1, label="raw fp state")
    ax1.set_yscale("log")
    ax1.set_ylabel("bytes stored per step")
    ax1.legend(loc="best", fontsize=8)
    ax1.set_title(f"deltackpt chain {title}", fontsize=9)
    ax2.plot(steps, ratios, color="tab:green")
    ax2.set_ylabel("cumulative ratio (raw / stored)")
    ax2.set_xlabel("step")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------- restore


def flatten_state(state: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors, values): a nested state flattened to dotted keys (list items by index)."""
    tensors: dict[str, Any] = {}
    values: dict[str, Any] = {}

    def walk(obj: Any, key: str) -> None:
        if isinstance(obj, np.ndarray) or type(obj).__module__.startswith("torch"):
            if key in tensors or key in values:
                raise ValueError(f"two entries flatten to the key {key!r}")
            tensors[key] = obj
        elif isinstance(obj, dict):
            if not obj and key:
                values[key] = {}
            for k, v in obj.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(obj, (list, tuple)):
            if not obj and key:
                values[key] = [] if isinstance(obj, list) else ()
            for i, v in enumerate(obj):
                walk(v, f"{key}.{i}" if key else str(i))
        else:
            if key in tensors or key in values:
                raise ValueError(f"two entries flatten to the key {key!r}")
            values[key] = obj

    walk(state, "")
    return tensors, values


def _dcp_full_state(path: str, step: int | None, branch: str | None) -> tuple[Any, int]:
    """A DCP chain's state at ``step`` as full (unsharded) tensors keyed by fqn."""
    import warnings

    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    from .distributed import ChainReader

    reader = ChainReader(path, step=step, branch=branch)
    md = reader.read_metadata()
    state: dict[str, Any] = {}
    for fqn, entry in md.state_dict_metadata.items():
        if isinstance(entry, BytesStorageMetadata):
            state[fqn] = None
        else:
            state[fqn] = torch.zeros(tuple(entry.size), dtype=entry.properties.dtype)
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(
            state,
            storage_reader=reader,
            planner=DefaultLoadPlanner(flatten_state_dict=False),
            no_dist=True,
        )
    reader.close()
    return state, reader.resolved_step()


def restore_cmd(
    path: str, step: int | None, branch: str | None, out: str, quiet: bool = False
) -> int:
    """Write one step as a safetensors file (dotted keys; non-tensor values as JSON metadata)."""
    import torch
    from safetensors.torch import save_file

    from .store import open_store

    store = open_store(path)
    if _is_dcp(store):
        state, step = _waiting(
            lambda: _dcp_full_state(path, step, branch), quiet, "restoring (all ranks)"
        )
        branch = branch or "main"
    else:
        with _open_chain(path) as chain:
            branch = branch or chain.branch
            state = _waiting(lambda: chain.restore(step, branch), quiet, "restoring")
            if step is None:
                step = chain.latest_step(branch)
    tensors, values = flatten_state(state)
    out_t = {
        k: (torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v)
        .detach()
        .contiguous()
        for k, v in tensors.items()
    }
    meta = {
        "format": "deltackpt-restore",
        "source": str(path),
        "branch": str(branch),
        "step": str(step),
        "values": json.dumps(values, allow_nan=True),
    }
    save_file(out_t, out, metadata=meta)
    if not quiet:
        n = sum(int(t.numel()) for t in out_t.values())
        print(f"step {step} ({branch}): {len(out_t)} tensors, {n} elements -> {out}")
    return 0


# --------------------------------------------------------------------------- demo


def demo(quiet: bool = False) -> int:
    """Real weights and a real training run: codec table, then a LeNet-5 chain."""
    import torch
    import zstandard

    from . import _realdata

    say = (lambda *a: None) if quiet else print
    header = (
        "| what | raw | stored | ratio | encode MB/s | decode MB/s |\n|---|---|---|---|---|---|"
    )

    say("deltackpt demo: real weights (all-MiniLM-L6-v2) and a real training run\n")
    weights = _realdata.minilm_weights()
    flat = np.concatenate([w.reshape(-1) for w in weights.values() if w.dtype == np.float32])
    bf16 = torch.from_numpy(flat).to(torch.bfloat16)
    lines = [header]
    zc, zd = zstandard.ZstdCompressor(level=3), zstandard.ZstdDecompressor()
    for name, x in _progress(
        [("MiniLM fp32, lossless", flat), ("MiniLM bf16, lossless", bf16)], quiet, "codec"
    ):
        raw = x.numel() * x.element_size() if isinstance(x, torch.Tensor) else x.nbytes
        secs, blob = _timed(lambda x=x: _api.encode(x, quantizer="none"))
        dsecs, out = _timed(lambda blob=blob: _api.decode(blob))
        exact = (
            torch.equal(out.view(torch.int16), x.view(torch.int16))
            if isinstance(x, torch.Tensor)
            else out.tobytes() == x.tobytes()
        )
        if not exact:
            print("error: lossless round trip differs", file=sys.stderr)
            return 1
        lines.append(_row(name, raw, len(blob), secs, dsecs))
        rb = x.view(torch.int16).numpy().tobytes() if isinstance(x, torch.Tensor) else x.tobytes()
        zsecs, z = _timed(lambda rb=rb: zc.compress(rb))
        zdsecs, _ = _timed(lambda z=z: zd.decompress(z))
        lines.append(_row(name.replace("lossless", "zstd -3"), raw, len(z), zsecs, zdsecs))
    say("\n".join(lines))
    return _demo_chain(say, quiet)


@dataclass
class _DemoRun:
    """What the demo's training run left to check and report."""

    total: int  # steps saved
    mid: int  # a lossy step between anchors, restored and checked
    stats: dict[str, Any]
    trained_acc: float
    restored_acc: float
    mid_true: dict[str, Any]  # the true state_dict at ``mid``
    mid_state: dict[str, Any]  # ``mid`` restored from the chain
    base: tuple[str, int]  # the record ``mid`` is coded against
    base_state: dict[str, Any]
    before: Any  # flat parameters before and after the last step
    after: Any
    xv: Any
    yv: Any


def _demo_chain(say: Any, quiet: bool) -> int:
    """Train LeNet-5 on the digits saving every step to a chain; restore and check."""
    run = _demo_train(quiet)
    ok, worst = _demo_bound(run)
    delta_rows = _demo_step_delta(run.before, run.after)
    if delta_rows is None:
        print("error: lossy error exceeds the delta", file=sys.stderr)
        return 1
    say(
        "\n| one LeNet-5 step delta | raw | stored | ratio | encode MB/s | decode MB/s |\n"
        "|---|---|---|---|---|---|"
    )
    for row in delta_rows:
        say(row)
    _demo_report(say, run, ok, worst)
    if not ok:
        print("error: a restored step exceeds the LC error bound", file=sys.stderr)
        return 1
    return 0


def _demo_train(quiet: bool) -> _DemoRun:
    """Train LeNet-5 with a save every step; restore the last step, a mid-run step and its
    base."""
    import tempfile

    import torch

    from . import _realdata
    from .chain import CheckpointChain

    torch.manual_seed(0)
    xt, yt, xv, yv = _realdata.load_digits_32()
    xt, xv = (xt - 0.1307) / 0.3081, (xv - 0.1307) / 0.3081
    model = _realdata.lenet5()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    epochs, batch = 3, 32
    total = epochs * math.ceil(len(xt) / batch)
    mid = total // 2 + 3  # a lossy step between anchors
    kept: dict[int, Any] = {}
    with tempfile.TemporaryDirectory(prefix="deltackpt-demo-") as tmp:
        chain = CheckpointChain(f"{tmp}/chain", bits=3, anchor_every=10)
        bar = _bar(quiet, "training LeNet-5, a save every step", total)

        def flat() -> Any:
            return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()

        def on_step(step: int) -> None:
            bar.update(1)
            chain.save(step, {"model": model, "optimizer": opt})
            if step == total - 1:
                kept["before"] = flat()
            if step == total:
                kept["after"] = flat()
            if step == mid:
                kept["u"] = {k: v.detach().clone() for k, v in model.state_dict().items()}

        _realdata.train_steps(model, opt, xt, yt, epochs=epochs, batch=batch, on_step=on_step)
        bar.close()
        st = chain.stats()
        trained_acc = _realdata.accuracy(model, xv, yv)
        restored = _realdata.lenet5()
        chain.restore_into(total, model=restored)
        restored_acc = _realdata.accuracy(restored, xv, yv)
        mid_state = chain.restore(mid)["model"]
        base = chain.info(mid)["base"]
        base_state = chain.restore(base[1], base[0])["model"]
        chain.close()
    return _DemoRun(
        total=total,
        mid=mid,
        stats=st,
        trained_acc=trained_acc,
        restored_acc=restored_acc,
        mid_true=kept["u"],
        mid_state=mid_state,
        base=base,
        base_state=base_state,
        before=kept["before"],
        after=kept["after"],
        xv=xv,
        yv=yv,
    )


def _demo_bound(run: _DemoRun) -> tuple[bool, float]:
    """Whether every restored float at ``mid`` is within |delta| of its base (error feedback's
    promise), and the largest error."""
    ok = True
    worst = 0.0
    for k, u in run.mid_true.items():
        if not u.is_floating_point():
            continue
        err = (run.mid_state[k] - u).abs()
        bound = (u - run.base_state[k]).abs()
        ok &= bool((err <= bound + 1e-6 * u.abs()).all())
        worst = max(worst, float(err.max()))
    return ok, worst


def _demo_step_delta(before: Any, after: Any) -> list[str] | None:
    """Table rows for one real training step delta coded alone (the building block of the
    chain) beside zstd; None if the lossy error exceeds the delta."""
    import zstandard

    raw = after.numel() * 4
    secs, blob = _timed(lambda: _api.encode(after, reference=before, bits=3))
    dsecs, rec = _timed(lambda: _api.decode(blob, reference=before))
    if not bool(((rec - after).abs() <= (after - before).abs() + 1e-6 * after.abs()).all()):
        return None
    zc, zd = zstandard.ZstdCompressor(level=3), zstandard.ZstdDecompressor()
    db = (after - before).numpy().tobytes()
    zsecs, z = _timed(lambda: zc.compress(db))
    zdsecs, _ = _timed(lambda: zd.decompress(z))
    return [
        _row("3-bit exponent buckets", raw, len(blob), secs, dsecs),
        _row("zstd -3 (lossless)", raw, len(z), zsecs, zdsecs),
    ]


def _demo_report(say: Any, run: _DemoRun, ok: bool, worst: float) -> None:
    """The chain's size table, trained vs restored accuracy, and the error-bound verdict."""
    from . import _realdata

    mid_model = _realdata.lenet5()
    mid_model.load_state_dict(run.mid_state)
    true_mid = _realdata.lenet5()
    true_mid.load_state_dict(run.mid_true)
    st, xv, yv = run.stats, run.xv, run.yv
    say(
        f"\nLeNet-5, {run.total} SGD steps on the digits, model + optimizer saved at every step "
        "(3-bit steps, anchors every 10):\n"
    )
    say("| chain | raw fp32 state_dicts | stored | ratio | space savings |")
    say("|---|---|---|---|---|")
    say(
        f"| {st['records']} saves ({st['count_by_kind']}) | {_human(st['raw_bytes'])} | "
        f"{_human(st['stored_bytes'])} | {st['ratio']:.1f}x | {100 * (1 - 1 / st['ratio']):.1f}% |"
    )
    say("\n| validation accuracy | trained | restored from the chain |\n|---|---|---|")
    say(f"| final step {run.total} | {run.trained_acc:.1f}% | {run.restored_acc:.1f}% |")
    say(
        f"| mid-run step {run.mid} | {_realdata.accuracy(true_mid, xv, yv):.1f}% | "
        f"{_realdata.accuracy(mid_model, xv, yv):.1f}% |"
    )
    verdict = "OK" if ok else "FAILED"
    say(
        f"\nrestored step {run.mid} against its true state: every |error| <= |delta| against "
        f"its base step {run.base[1]}: {verdict} (max |error| {worst:.2e})"
    )


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `deltackpt` console script."""
    p = argparse.ArgumentParser(prog="deltackpt", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--quiet", "-q", action="store_true", help="no progress bars / chatter")
        return sp

    add("demo", "compress real weights; train LeNet-5 with a chain and restore it")
    sp = add("inspect", "steps, branches, kinds and sizes of a chain")
    sp.add_argument("path")
    sp = add("verify", "check every checksum and decode every step (exit 1 on any problem)")
    sp.add_argument("path")
    sp = add("stats", "bytes per step and compression ratio over time")
    sp.add_argument("path")
    sp.add_argument("--plot", metavar="PNG", help="also plot them to this PNG file")
    sp = add("restore", "write one step to a safetensors file")
    sp.add_argument("path")
    sp.add_argument("--step", type=int, default=None, help="default: the latest step")
    sp.add_argument("--branch", default=None)
    sp.add_argument("--out", required=True, metavar="FILE.safetensors")
    args = p.parse_args(argv)
    try:
        if args.cmd == "demo":
            return demo(quiet=args.quiet)
        if args.cmd == "inspect":
            return inspect_cmd(args.path, args.quiet)
        if args.cmd == "verify":
            return verify_cmd(args.path, args.quiet)
        if args.cmd == "stats":
            return stats_cmd(args.path, args.plot, args.quiet)
        if args.cmd == "restore":
            return restore_cmd(args.path, args.step, args.branch, args.out, args.quiet)
    except BrokenPipeError:  # `deltackpt inspect run | head`
        sys.stderr.close()
        return 0
    except (CorruptDataError, KeyError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
