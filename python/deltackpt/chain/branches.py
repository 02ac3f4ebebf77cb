"""Branches and branch points: which records a branch sees, and the files that say so.

``branches/<name>.json`` is ``{"name", "parent": null | {"branch", "step"}}`` (the fork point,
always a keyframe), ``points/<name>.json`` ``{"name", "branch", "step"}`` (a named exact
keyframe) and ``HEAD.json`` ``{"branch"}`` the branch the writer continues. A branch sees its
ancestors' records up to each fork point, then its own: its *history*, in step order.
"""

from __future__ import annotations

from typing import Any

from ..errors import CorruptDataError, StepNotFoundError
from ..store import Store
from .parsing import NAME_RE, check_name, disk_name
from .records import RecId, own_steps, read_json, record_name, write_json

DEFAULT_BRANCH = "main"
HEAD_FILE = "HEAD.json"


def branch_file(name: str) -> str:
    return f"branches/{name}.json"


def point_file(name: str) -> str:
    return f"points/{name}.json"


def read_head(store: Store) -> str:
    """The branch the writer continues (``main`` before any rollback)."""
    if store.exists(HEAD_FILE):
        head = _doc(store, HEAD_FILE)
        return disk_name(head.get("branch"), "branch", HEAD_FILE)
    return DEFAULT_BRANCH


def _doc(store: Store, name: str) -> dict[str, Any]:
    """A small JSON object file (HEAD, a branch or branch point file)."""
    d = read_json(store, name)
    if not isinstance(d, dict):
        raise CorruptDataError(f"{name}: not a JSON object")
    return d


def _rid(d: Any, where: str) -> RecId:
    """A ``{"branch", "step"}`` read from ``where``, checked."""
    if not isinstance(d, dict) or not isinstance(d.get("step"), int) or d["step"] < 0:
        raise CorruptDataError(f"{where}: malformed record reference {d!r}")
    return (disk_name(d.get("branch"), "branch", where), d["step"])


def write_head(store: Store, branch: str) -> None:
    write_json(store, HEAD_FILE, {"branch": branch})


def branch_names(store: Store) -> list[str]:
    """Names of the live branches."""
    names = (n.rsplit("/", 1)[-1] for n in store.list("branches"))
    return sorted(n[:-5] for n in names if n.endswith(".json") and NAME_RE.match(n[:-5]))


def branch_info(store: Store, branch: str) -> dict[str, Any]:
    """The branch file's content (``parent``: the fork point or None); KeyError if none."""
    name = branch_file(branch)
    if not store.exists(name):
        raise KeyError(f"no branch {branch!r} in {store.url}")
    d = _doc(store, name)
    if d.get("parent") is not None:
        d["parent"] = dict(zip(("branch", "step"), _rid(d["parent"], name)))
    return d


def create_branch(store: Store, name: str, parent: RecId | None) -> None:
    fork = None if parent is None else {"branch": parent[0], "step": parent[1]}
    write_json(store, branch_file(name), {"name": name, "parent": fork})


def history(store: Store, branch: str) -> list[RecId]:
    """Records visible on ``branch``: its ancestors' up to each fork point, then its own."""
    info = branch_info(store, branch)
    own = [(branch, s) for s in own_steps(store, branch)]
    parent = info.get("parent")
    if not parent:
        return own
    pb, ps = str(parent["branch"]), int(parent["step"])
    try:
        inherited = [r for r in history(store, pb) if r[1] <= ps]
    except KeyError:  # parent deleted: only the fork keyframe remains
        inherited = [(pb, ps)] if store.exists(record_name(pb, ps)) else []
    return inherited + own


def resolve(store: Store, branch: str, step: int | None) -> RecId:
    """The record holding ``step`` (the latest if None) as ``branch`` sees it."""
    hist = history(store, branch)
    if not hist:
        raise StepNotFoundError(f"branch {branch!r} has no saved step")
    if step is None:
        return hist[-1]
    for rid in reversed(hist):
        if rid[1] == step:
            return rid
    raise StepNotFoundError(
        f"step {step} is not in branch {branch!r} (never saved, or retired by max_to_keep)"
    )


def read_points(store: Store) -> dict[str, RecId]:
    """Branch point name -> (branch, step)."""
    out = {}
    for n in store.list("points"):
        d = _doc(store, n)
        out[disk_name(d.get("name"), "branch point", n)] = _rid(d, n)
    return out


def add_point(store: Store, name: str, rid: RecId) -> None:
    write_json(store, point_file(name), {"name": name, "branch": rid[0], "step": rid[1]})


def next_branch_name(point: str, existing: set[str]) -> str:
    """``<point>.<k>`` for the smallest ``k >= 1`` not taken: where a rollback continues."""
    k = 1
    while f"{point}.{k}" in existing:
        k += 1
    return f"{point}.{k}"


def new_branch_name(point: str, requested: str | None, existing: set[str]) -> str:
    """The name of the branch a rollback to ``point`` creates, checked."""
    name = next_branch_name(point, existing) if requested is None else requested
    check_name(name, "branch")
    if name in existing:
        raise ValueError(f"branch {name!r} exists")
    return name


def step_taken(step: int, last: int, branch: str, url: str) -> str:
    """The message of a save whose step is not after the branch's latest: what to do."""
    return (
        f"step {step} <= latest step {last} of branch {branch!r} in {url}: "
        "steps must increase along a branch. To continue this run, call "
        f"`start = chain.resume(model=..., optimizer=...)` (loads step {last}, returns "
        f"{last + 1}) and save from there; to start over, use a new path; to go back to an "
        "earlier point, `chain.rollback(name)` a branch point"
    )
