"""The exception hierarchy. The Rust core maps its one error enum onto these classes."""

from __future__ import annotations

__all__ = [
    "DeltackptError",
    "CorruptDataError",
    "UnsupportedError",
    "NonFiniteError",
    "ReferenceMismatchError",
    "InvalidArgumentError",
    "InternalError",
    "StepNotFoundError",
    "LockedError",
    "SaveError",
]


class DeltackptError(Exception):
    """Base class of every error deltackpt raises on purpose."""


class CorruptDataError(DeltackptError):
    """Stored bytes are truncated, modified or forged; nothing wrong was returned."""


class UnsupportedError(DeltackptError):
    """Valid data this version cannot read (a newer format version): upgrade deltackpt."""


class NonFiniteError(DeltackptError, ValueError):
    """A lossy encode or a chain save met NaN or Inf (the message gives count and index)."""


class ReferenceMismatchError(CorruptDataError, ValueError):
    """A reference does not match the blob or tensor (shape, dtype or content)."""


class InvalidArgumentError(DeltackptError, ValueError):
    """An argument is out of range or of the wrong kind."""


class InternalError(DeltackptError, RuntimeError):
    """The core failed (a bug, or no worker thread could start); nothing was returned."""


class StepNotFoundError(DeltackptError, KeyError):
    """The step is not (or no longer) in the chain: never saved, or retired by retention
    (``max_to_keep``) or replaced while it was being read. Nothing is wrong with the data."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class LockedError(DeltackptError, RuntimeError):
    """Another live writer holds the chain's lock (open with ``mode="r"`` to read meanwhile)."""


class SaveError(DeltackptError):
    """A background save (``async_save=True``) failed: ``step`` names it, ``__cause__`` is
    the original error. Nothing of that save was committed."""

    step: int | None = None
