"""Hugging Face ``transformers`` integration: save a Trainer's state to a deltackpt chain.

>>> from deltackpt.integrations.hf import DeltackptCallback          # doctest: +SKIP
>>> trainer = Trainer(..., callbacks=[DeltackptCallback("run.dk", every_n_steps=1)])

The callback saves ``{"model": model.state_dict(), "optimizer": optimizer.state_dict(),
"lr_scheduler": ..., "trainer": {"global_step", "epoch"}}`` at ``state.global_step`` every
``every_n_steps`` optimizer steps and whenever the Trainer saves (``on_save``), on the main
process only. Restore with ``CheckpointChain(path, mode="r").restore_into(step, model=model,
optimizer=optimizer)``.
"""

from __future__ import annotations

import os
from typing import Any

from transformers import TrainerCallback

from ..chain import CheckpointChain


class DeltackptCallback(TrainerCallback):  # type: ignore[misc]
    """Save the model (and optimizer / scheduler) to a :class:`CheckpointChain`.

    ``every_n_steps``: save every n optimizer steps (None: only when the Trainer saves);
    ``save_optimizer`` / ``save_scheduler``: include those states; other keywords configure the
    chain (``bits``, ``anchor_every``, ``keyframe_every``, ``async_save``, ...).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        every_n_steps: int | None = None,
        save_optimizer: bool = True,
        save_scheduler: bool = True,
        **chain_options: Any,
    ) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError("every_n_steps must be >= 1 or None")
        self.path = path
        self.every_n_steps = every_n_steps
        self.save_optimizer = save_optimizer
        self.save_scheduler = save_scheduler
        self.chain_options = chain_options
        self.chain: CheckpointChain | None = None
        self.saved_steps: list[int] = []

    def _save(self, state: Any, kwargs: dict[str, Any]) -> None:
        if not state.is_world_process_zero:
            return
        step = int(state.global_step)
        if self.saved_steps and step <= self.saved_steps[-1]:
            return  # already saved (e.g. on_step_end and on_save of the same step)
        model = kwargs.get("model")
        if model is None:
            return
        if self.chain is None:
            self.chain = CheckpointChain(self.path, **self.chain_options)
        snap: dict[str, Any] = {"model": model.state_dict()}
        opt = kwargs.get("optimizer")
        if self.save_optimizer and opt is not None:
            snap["optimizer"] = opt.state_dict()
        sched = kwargs.get("lr_scheduler")
        if self.save_scheduler and sched is not None and hasattr(sched, "state_dict"):
            snap["lr_scheduler"] = _plain(sched.state_dict())
        snap["trainer"] = {"global_step": step, "epoch": float(state.epoch or 0.0)}
        self.chain.save(step, snap)
        self.saved_steps.append(step)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.every_n_steps and state.global_step % self.every_n_steps == 0:
            self._save(state, kwargs)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._save(state, kwargs)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.close()

    def close(self) -> None:
        """Finish pending saves and release the chain's writer lock."""
        if self.chain is not None:
            self.chain.close()
            self.chain = None


def _plain(obj: Any) -> Any:
    """Keep JSON-able scheduler state; drop callables (lambda schedules are code, not state)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items() if not callable(v)}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj if not callable(v))
    return obj
