"""What the command line shows besides its results: progress bars on stderr (tqdm if installed,
nothing with --quiet) and byte sizes for people."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any


def progress(items: Iterable[Any], quiet: bool, desc: str, total: int | None = None) -> Any:
    """``items`` with a tqdm bar on stderr (plain iteration with --quiet or without tqdm)."""
    if quiet:
        return items
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional (the cli and demo extras have it)
        return items
    return tqdm(
        items, desc=desc, total=total, file=sys.stderr, leave=False, mininterval=0.2, delay=1.0
    )


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def bar(quiet: bool, desc: str, total: int) -> Any:
    """A manual tqdm bar (``update``/``close``), or a no-op one with --quiet or without tqdm."""
    if quiet:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(
        desc=desc, total=total or None, file=sys.stderr, leave=False, mininterval=0.2, delay=1.0
    )


def waiting(fn: Any, quiet: bool, desc: str) -> Any:
    """Run ``fn()`` in a worker thread, showing an elapsed-time bar until it returns."""
    if quiet:
        return fn()
    import concurrent.futures as cf

    shown = bar(quiet, desc, 0)
    with cf.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(fn)
        try:
            while True:
                try:
                    return fut.result(timeout=0.2)
                except cf.TimeoutError:
                    if hasattr(shown, "refresh"):
                        shown.refresh()
        finally:
            shown.close()


def human(n: float) -> str:
    """Bytes as B, kB, MB or GB (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover
