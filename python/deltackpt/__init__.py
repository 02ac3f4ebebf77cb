"""deltackpt: compressed, crash-safe, branchable training checkpoints.

Placeholder on branch ``chain`` until the core package lands on main: it uses ``deltackpt._core``
when built, else the pure-numpy stand-in of ``_fallback``.
"""

from __future__ import annotations

try:
    from ._core import (  # type: ignore[attr-defined]
        CorruptDataError,
        DeltackptError,
        NonFiniteError,
        ReferenceMismatchError,
        UnsupportedError,
        decode,
        encode,
    )
except ImportError:
    from ._fallback import (
        CorruptDataError,
        DeltackptError,
        NonFiniteError,
        ReferenceMismatchError,
        UnsupportedError,
        decode,
        encode,
    )

from .chain import CheckpointChain
from .store import LockedError

__all__ = [
    "CheckpointChain",
    "CorruptDataError",
    "DeltackptError",
    "LockedError",
    "NonFiniteError",
    "ReferenceMismatchError",
    "UnsupportedError",
    "decode",
    "encode",
]
