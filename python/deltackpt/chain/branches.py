"""Branches and branch points: which records a branch sees, and the files that say so.

``branches/<name>.json`` is ``{"name", "parent": null | {"branch", "step"}}`` (the fork point,
always a keyframe), ``points/<name>.json`` ``{"name", "branch", "step"}`` (a named exact
keyframe) and ``HEAD.json`` ``{"branch"}`` the branch the writer continues. A branch sees its
ancestors' records up to each fork point, then its own: its *history*, in step order.
"""

from __future__ import annotations

from typing import Any

from ..store import Store
from .parsing import check_name
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
        return str(read_json(store, HEAD_FILE)["branch"])
    return DEFAULT_BRANCH


def write_head(store: Store, branch: str) -> None:
    write_json(store, HEAD_FILE, {"branch": branch})


def branch_names(store: Store) -> list[str]:
    """Names of the live branches."""
    return sorted(n.rsplit("/", 1)[-1][:-5] for n in store.list("branches"))


def branch_info(store: Store, branch: str) -> dict[str, Any]:
    """The branch file's content (``parent``: the fork point or None); KeyError if none."""
    name = branch_file(branch)
    if not store.exists(name):
        raise KeyError(f"no branch {branch!r} in {store.url}")
    return dict(read_json(store, name))


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
        raise KeyError(f"branch {branch!r} has no saved step")
    if step is None:
        return hist[-1]
    for rid in reversed(hist):
        if rid[1] == step:
            return rid
    raise KeyError(f"step {step} is not in branch {branch!r}")


def read_points(store: Store) -> dict[str, RecId]:
    """Branch point name -> (branch, step)."""
    out = {}
    for n in store.list("points"):
        d = read_json(store, n)
        out[str(d["name"])] = (str(d["branch"]), int(d["step"]))
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
