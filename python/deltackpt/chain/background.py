"""Saves in the background (``async_save=True``), with a contract.

* ``save()`` returns once the caller's tensors are no longer read (:mod:`.staging`: half of
  them coded in place, the rest copied; on CUDA a device-to-host copy into pinned buffers);
  coding, writing and the commit run in one background thread, in the order of the saves.
* At most ``max_pending`` saves are handed over and not yet committed (default 1): a ``save()``
  beyond that first waits for the oldest one. Each pending save holds at most one host copy
  of the state, so this also bounds the memory.
* A failure is kept, not lost: ``wait()`` and ``close()`` (and the next ``save()``) raise the
  first failure as :class:`~deltackpt.errors.SaveError` naming its step, the original error
  as its ``__cause__``. The saves after a failed one still run, coded against the committed
  state: a failed save never advances the references, and one that had updated a reference
  in place marks them stale, so the next save rebuilds them from the committed records
  (:func:`.commit.commit`).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
from collections.abc import Callable
from typing import Any

from ..errors import InvalidArgumentError, SaveError


class BackgroundSaves:
    """One worker thread, a bounded number of saves in flight, the first failure kept."""

    def __init__(self, max_pending: int) -> None:
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            raise InvalidArgumentError(f"max_pending must be an int >= 1, not {max_pending!r}")
        self.max_pending = max_pending
        self._executor = cf.ThreadPoolExecutor(1, thread_name_prefix="deltackpt-save")
        self._inflight: collections.deque[tuple[int, cf.Future[None]]] = collections.deque()
        self._failure: SaveError | None = None

    @property
    def busy(self) -> bool:
        """Whether a save is still running or queued (its host copy is in use)."""
        self._collect(block=False)
        return bool(self._inflight)

    def make_room(self) -> None:
        """Wait until fewer than ``max_pending`` saves are in flight."""
        while len(self._inflight) >= self.max_pending:
            self._finish_oldest()

    def submit(self, step: int, job: Callable[[], Any]) -> None:
        self.make_room()
        self._inflight.append((step, self._executor.submit(job)))

    def _finish_oldest(self) -> None:
        step, fut = self._inflight.popleft()
        try:
            fut.result()
        except BaseException as e:  # noqa: BLE001 - kept, raised by raise_failure
            if self._failure is None:
                err = SaveError(
                    f"the background save of step {step} failed: {type(e).__name__}: {e}; nothing "
                    "of it was committed, later saves are coded against the "
                    "committed steps"
                )
                err.step = step
                err.__cause__ = e
                self._failure = err

    def _collect(self, block: bool) -> None:
        while self._inflight and (block or self._inflight[0][1].done()):
            self._finish_oldest()

    def raise_failure(self) -> None:
        """Raise the first failure so far (once), without waiting."""
        self._collect(block=False)
        if self._failure is not None:
            err, self._failure = self._failure, None
            raise err

    def wait(self) -> None:
        """Wait for every save in flight; raise the first failure."""
        self._collect(block=True)
        self.raise_failure()

    def shutdown(self) -> None:
        """Wait for everything, stop the thread, raise the first failure."""
        try:
            self.wait()
        finally:
            self._executor.shutdown(wait=True)
