"""The commit log: what was committed, so that a lost file is detected instead of silently
changing what a restore returns or which branch a writer continues.

``log/<seq:012d>.json`` is ``{"seq", "op", "time", "head", "tips"}``: after each change (a
save, a rollback, a branch deleted) the writer appends the chain's state — ``head`` the branch
``HEAD.json`` names (None while there is none), ``tips`` each live branch's newest own step
(None: no own record yet). Only the latest :data:`KEEP` entries are kept. Everything the latest
entry says exists must exist: a missing newest record, branch file or ``HEAD.json`` is
reported by ``verify`` and refused by a writer; ``HEAD.json`` itself is only trusted when it
agrees with the log. Moves of HEAD are logged before ``HEAD.json`` is written (an interrupted
rollback is completed on the next open); saves after their record (a record newer than the
log is a save interrupted before its entry, adopted on the next open). Chains written before
the log get one on their first writer's open.
"""

from __future__ import annotations

import time
from typing import Any

from ..errors import CorruptDataError
from ..store import Store
from .branches import DEFAULT_BRANCH, HEAD_FILE, branch_file, branch_names, write_head
from .parsing import disk_name
from .records import dumps, listed_steps, own_steps, read_json, record_name

LOG_DIR = "log"
KEEP = 2  # entries read back
PRUNE_ABOVE = 16  # entries on disk before the old ones are deleted (one unlink per 14 saves)


def _name(seq: int) -> str:
    return f"{LOG_DIR}/{seq:012d}.json"


def _entry(store: Store, seq: int) -> dict[str, Any]:
    name = _name(seq)
    d = read_json(store, name)
    tips = d.get("tips") if isinstance(d, dict) else None
    if not isinstance(tips, dict) or d.get("seq") != seq:
        raise CorruptDataError(f"{name}: malformed commit log entry")
    head = d.get("head")
    return {
        "seq": seq,
        "op": str(d.get("op")),
        "head": None if head is None else disk_name(head, "branch", name),
        "tips": {
            disk_name(b, "branch", name): (None if s is None else int(s)) for b, s in tips.items()
        },
    }


def entries(store: Store) -> list[dict[str, Any]]:
    """The kept entries, oldest first (empty for a chain written before the log)."""
    return [_entry(store, s) for s in listed_steps(store, LOG_DIR)[-KEEP:]]


def _disk_head(store: Store) -> str | None:
    if not store.exists(HEAD_FILE):
        return None
    d = read_json(store, HEAD_FILE)
    return disk_name(d.get("branch") if isinstance(d, dict) else None, "branch", HEAD_FILE)


def disk_state(store: Store) -> dict[str, Any]:
    """``head`` and ``tips`` as the files on disk say (one listing per branch)."""
    tips = {}
    for b in branch_names(store):
        own = own_steps(store, b)
        tips[b] = own[-1] if own else None
    return {"head": _disk_head(store), "tips": tips}


def append(store: Store, op: str, state: dict[str, Any]) -> None:
    """Writer only: log ``state`` (``head``, ``tips``) as the next entry; drop old ones. A
    save's entry needs no directory fsync (lost in a crash, the save is adopted on the next
    open); a HEAD move's does (it must be durable before ``HEAD.json`` moves)."""
    seqs = listed_steps(store, LOG_DIR)
    seq = seqs[-1] + 1 if seqs else 1
    doc = {"seq": seq, "op": op, "time": time.time(), **state}
    store.write(_name(seq), dumps(doc), sync_dir=op != "save")
    if len(seqs) + 1 > PRUNE_ABOVE:
        for old in seqs[: len(seqs) + 1 - KEEP]:
            store.delete(_name(old))


def after(store: Store, op: str, **changes: Any) -> None:
    """Log the latest entry's state with ``changes``: ``head=``, ``tip=(branch, step)``,
    ``drop=branch``; the full disk state when there is no entry yet."""
    log = entries(store)
    state = disk_state(store) if not log else {"head": log[-1]["head"], "tips": log[-1]["tips"]}
    if "head" in changes:
        state["head"] = changes["head"]
    if "tip" in changes:
        branch, step = changes["tip"]
        state["tips"] = {**state["tips"], branch: step}
    if "drop" in changes:
        state["tips"] = {b: s for b, s in state["tips"].items() if b != changes["drop"]}
    append(store, op, state)


def head(store: Store) -> str:
    """The branch the writer continues, proven by the log: ``HEAD.json`` when it agrees with
    the log (or there is no log), the log's head when ``HEAD.json`` was lost or a rollback was
    interrupted between its log entry and ``HEAD.json``; corrupt data when they disagree."""
    log, disk = entries(store), _disk_head(store)
    if not log or log[-1]["head"] is None:
        return disk or DEFAULT_BRANCH
    logged = log[-1]["head"]
    if disk in (None, logged):
        return logged
    if log[-1]["op"] == "rollback" and len(log) > 1 and log[-2]["head"] == disk:
        return logged
    raise CorruptDataError(
        f"HEAD.json names branch {disk!r} but the commit log says the writer continues "
        f"{logged!r}: HEAD.json was replaced or restored from an old backup; restore it as "
        f'{{"branch": "{logged}"}} or pass branch= explicitly'
    )


def problems(store: Store) -> list[str]:
    """What the latest log entry says exists and is missing (empty: nothing lost); every
    kept entry is read, so a damaged old one is reported too."""
    log = [_entry(store, s) for s in listed_steps(store, LOG_DIR)]
    if not log:
        return []
    last, out = log[-1], []
    if last["head"] is not None and not store.exists(HEAD_FILE):
        out.append(
            f"HEAD.json is missing (the commit log says the writer continues {last['head']!r})"
        )
    for b, tip in sorted(last["tips"].items()):
        if not store.exists(branch_file(b)):
            out.append(f"{branch_file(b)} is missing (the commit log lists branch {b!r})")
        elif tip is not None and not store.exists(record_name(b, tip)):
            out.append(
                f"{record_name(b, tip)} is missing: the newest committed step of {b!r} was lost"
            )
    return out


def open_writer(store: Store) -> str:
    """Writer only, under the lock: refuse a chain that lost committed files, repair what the
    log proves (a lost ``HEAD.json``, an interrupted rollback), adopt saves newer than the
    log; return the branch to continue."""
    lost = problems(store)
    lost = [p for p in lost if not p.startswith("HEAD.json")]
    if lost:
        raise CorruptDataError(
            "the chain lost committed files: " + "; ".join(lost) + ". Restore them from a "
            "backup; chain.verify() lists the damage, and readers still restore what remains"
        )
    branch = head(store)
    if _disk_head(store) != branch:
        write_head(store, branch)
    log = entries(store)
    disk = disk_state(store)
    if not log or disk["tips"] != log[-1]["tips"]:
        append(store, "open", {"head": disk["head"], "tips": disk["tips"]})
    return branch
