"""deltackpt: compressed, crash-safe, branchable training checkpoints on a Rust core.

>>> import numpy as np, deltackpt as dk
>>> x = np.linspace(-1, 1, 1000, dtype=np.float32)
>>> bool((dk.decode(dk.encode(x, quantizer="none")) == x).all())
True
"""

from __future__ import annotations

from . import codec, quant
from ._api import decode, encode, inspect
from ._core import __version__
from .chain import CheckpointChain
from .errors import (
    CorruptDataError,
    DeltackptError,
    InternalError,
    InvalidArgumentError,
    LockedError,
    NonFiniteError,
    ReferenceMismatchError,
    SaveError,
    StepNotFoundError,
    UnsupportedError,
)

__all__ = [
    "__version__",
    "encode",
    "decode",
    "inspect",
    "codec",
    "quant",
    "DeltackptError",
    "CorruptDataError",
    "UnsupportedError",
    "NonFiniteError",
    "ReferenceMismatchError",
    "InvalidArgumentError",
    "InternalError",
    "StepNotFoundError",
    "CheckpointChain",
    "LockedError",
    "SaveError",
]


def __getattr__(name: str) -> object:
    """``dk.lora`` on first use: it needs torch, which the rest of the package does not."""
    if name == "lora":
        import importlib

        try:
            return importlib.import_module(".lora", __name__)
        except ModuleNotFoundError as e:
            if e.name != "torch":
                raise
            raise ModuleNotFoundError(
                "deltackpt.lora needs torch: pip install 'deltackpt[torch]'", name="torch"
            ) from e
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
