"""What may be deleted: retention, deleted branches and the leftovers of unfinished saves.

The one rule: a record stays while a *root* depends on it, through its chain of bases. The
roots are every live branch's own records and fork points, every branch point, and (for
retention on the writer's branch) the steps ``max_to_keep`` / ``keep_every`` keep and the
writer's references. A record is deleted record file first (uncommitted), then its data
files; files that no committed record names are leftovers of a save that never committed.
This is the only room that deletes committed records.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import CorruptDataError
from .branches import branch_file, branch_info, branch_names, point_file, read_points
from .config import ChainConfig
from .records import (
    RecId,
    Records,
    all_records,
    data_dir,
    own_steps,
    record_name,
    schema_name,
)


def roots_excluding(records: Records, branch: str | None) -> set[RecId]:
    """What every branch but ``branch`` needs directly: its records, its fork, the points."""
    store = records.store
    roots: set[RecId] = set()
    for b in branch_names(store):
        if b == branch:
            continue
        roots.update((b, s) for s in own_steps(store, b))
        parent = branch_info(store, b).get("parent")
        if parent:
            roots.add((str(parent["branch"]), int(parent["step"])))
    roots.update(read_points(store).values())
    return roots


def live_closure(records: Records, roots: set[RecId]) -> set[RecId]:
    """The roots that exist and every record they are coded against, transitively."""
    live: set[RecId] = set()
    todo = [r for r in roots if records.known(r)]
    while todo:
        rid = todo.pop()
        if rid in live:
            continue
        live.add(rid)
        base = records.base(records.record(rid))
        if base is not None:
            todo.append(base.rid)
    return live


def delete_record(records: Records, rid: RecId) -> None:
    rec = records.record(rid)
    records.store.delete(record_name(*rid))  # uncommit first, then its data
    for name in rec.files:
        records.store.delete(name)
    records.forget(rid)


def kept_steps(own: list[int], max_to_keep: int | None, keep_every: int | None) -> set[int]:
    """The steps retention keeps of a branch's own ``own`` (ascending)."""
    kept = set(own[-max_to_keep:] if max_to_keep else [])
    if keep_every:
        kept.update(s for s in own if s % keep_every == 0)
    return kept


def apply_retention(
    records: Records, branch: str, cfg: ChainConfig, pinned: Iterable[RecId]
) -> None:
    """Delete the records of ``branch`` that no kept step, other branch, branch point or
    ``pinned`` record (the writer's references) depends on."""
    if cfg.max_to_keep is None and cfg.keep_every is None:
        return
    own = own_steps(records.store, branch)
    roots = roots_excluding(records, branch)
    roots.update((branch, s) for s in kept_steps(own, cfg.max_to_keep, cfg.keep_every))
    roots.update(pinned)
    live = live_closure(records, roots)
    for s in own:
        if (branch, s) not in live:
            delete_record(records, (branch, s))


def delete_branch(records: Records, name: str) -> None:
    """Delete branch ``name``, keeping the records and points the other branches need."""
    store = records.store
    branch_info(store, name)  # KeyError if there is no such branch
    store.delete(branch_file(name))
    keep = live_closure(records, roots_excluding(records, name))
    for rid in [(name, s) for s in own_steps(store, name)]:
        if rid not in keep:
            delete_record(records, rid)
    for pname, prid in read_points(store).items():
        if prid[0] == name and prid not in keep:
            store.delete(point_file(pname))


def collect_garbage(records: Records) -> None:
    """Writer only: remove temporaries and files no committed record references."""
    store = records.store
    store.remove_temporaries()
    used_files: set[str] = set()
    used_schemas: set[str] = set()
    unreadable: list[str] = []  # data prefixes of damaged records: kept, verify reports them
    for rid in all_records(store):
        try:
            rec = records.record(rid)
        except CorruptDataError:
            unreadable.append(f"{data_dir(rid[0])}/{rid[1]:012d}-")
            continue
        used_files.update(rec.files)
        used_schemas.add(schema_name(rec.schema))
    for name in store.list("data"):
        if name not in used_files and not name.startswith(tuple(unreadable)):
            store.delete(name)
    for name in store.list("schemas"):
        if name not in used_schemas and not unreadable:  # a damaged record's is unknown
            store.delete(name)
