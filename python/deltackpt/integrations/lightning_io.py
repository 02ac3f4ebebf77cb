"""PyTorch Lightning integration: a ``CheckpointIO`` that stores checkpoints in a deltackpt chain.

>>> from deltackpt.integrations.lightning_io import ChainCheckpointIO      # doctest: +SKIP
>>> trainer = L.Trainer(plugins=[ChainCheckpointIO("run.dk", bits=3)], ...)

Every checkpoint Lightning writes (``ModelCheckpoint``, ``trainer.save_checkpoint``) becomes a
chain save at its ``global_step`` (several files at the same step, e.g. ``last.ckpt`` and
``epoch=0-step=8.ckpt``, share one save). At the requested file path a small JSON *pointer*
``{"format": "deltackpt-pointer", "chain", "branch", "step"}`` is written atomically, so
``ModelCheckpoint`` bookkeeping, ``ckpt_path=...`` resumes and ``remove_checkpoint`` work as
usual; ``load_checkpoint`` follows the pointer and restores the step. Nothing is pickled. Steps
must increase: resuming from an older checkpoint and saving again needs a new chain (or a
branch point and :meth:`CheckpointChain.rollback`).
"""

from __future__ import annotations

import json
import os
from typing import Any

from lightning.pytorch.plugins.io import CheckpointIO

from ..chain import CheckpointChain

POINTER = "deltackpt-pointer"


class ChainCheckpointIO(CheckpointIO):  # type: ignore[misc]
    """Lightning checkpoints as steps of the chain at ``path`` (keywords configure the chain)."""

    def __init__(self, path: str | os.PathLike[str], **chain_options: Any) -> None:
        super().__init__()
        text = os.fspath(path)
        self.path = text if "://" in text else os.path.abspath(text)
        self.chain_options = chain_options
        self._chain: CheckpointChain | None = None

    def _writer(self) -> CheckpointChain:
        if self._chain is None:
            self._chain = CheckpointChain(self.path, **self.chain_options)
        return self._chain

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        chain = self._writer()
        step = int(checkpoint.get("global_step", 0))
        latest = chain.latest_step()
        if latest is None or step > latest:
            chain.save(step, _wrap_nonfinite_scalars(checkpoint))
            chain.wait()
        elif step < latest:
            raise ValueError(
                f"checkpoint at step {step} after step {latest} in {self.path}: deltackpt steps "
                "must increase (use a new chain, or a branch point and rollback)"
            )
        pointer = {"format": POINTER, "chain": self.path, "branch": chain.branch, "step": step}
        _write_atomic(os.fspath(path), json.dumps(pointer).encode())

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        with open(os.fspath(path), "rb") as f:
            raw = f.read()
        try:
            pointer = json.loads(raw)
            if pointer.get("format") != POINTER:
                raise ValueError
        except (ValueError, AttributeError, UnicodeDecodeError):
            raise ValueError(f"{path} is not a deltackpt checkpoint pointer") from None
        if self._chain is not None and pointer["chain"] == self.path:
            self._chain.wait()
            state = self._chain.restore(int(pointer["step"]), str(pointer["branch"]))
        else:
            with CheckpointChain(pointer["chain"], mode="r") as chain:
                state = chain.restore(int(pointer["step"]), str(pointer["branch"]))
        state = _unwrap_nonfinite_scalars(state)
        if map_location is not None and not callable(map_location):
            state = _to(state, map_location)
        return state

    def remove_checkpoint(self, path: Any) -> None:
        """Remove the pointer file (the chain keeps the step; use retention to prune it)."""
        try:
            os.remove(os.fspath(path))
        except FileNotFoundError:
            pass

    def teardown(self) -> None:
        if self._chain is not None:
            self._chain.close()
            self._chain = None


_SCALAR = "__deltackpt_scalar__"


def _wrap_nonfinite_scalars(obj: Any) -> Any:
    """Lightning keeps ``inf`` in 0-d tensors (``ModelCheckpoint.kth_value``, best scores);
    lossy chain saves refuse non-finite floats, so such scalars travel as tagged JSON."""
    import torch

    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and obj.numel() <= 1 and not bool(torch.isfinite(obj).all()):
            vals = [repr(float(v)) for v in obj.reshape(-1).tolist()]
            dtype = str(obj.dtype).removeprefix("torch.")
            return {_SCALAR: {"values": vals, "dtype": dtype, "shape": list(obj.shape)}}
        return obj
    if isinstance(obj, dict):
        return {k: _wrap_nonfinite_scalars(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_wrap_nonfinite_scalars(v) for v in obj)
    return obj


def _unwrap_nonfinite_scalars(obj: Any) -> Any:
    import torch

    if isinstance(obj, dict):
        if set(obj) == {_SCALAR}:
            d = obj[_SCALAR]
            vals = [float(v) for v in d["values"]]
            return torch.tensor(vals, dtype=getattr(torch, d["dtype"])).reshape(d["shape"])
        return {k: _unwrap_nonfinite_scalars(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unwrap_nonfinite_scalars(v) for v in obj)
    return obj


def _write_atomic(path: str, data: bytes) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _to(obj: Any, device: Any) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(v, device) for v in obj)
    return obj
