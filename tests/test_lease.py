"""The writer lock on fsspec stores: its error type, its lease and the writer epoch."""

from __future__ import annotations

from pathlib import Path

import pytest

import deltackpt as dk
from deltackpt.store import open_store


def test_locked_error_is_a_deltackpt_error(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/c"
    holder = open_store(url)
    holder.acquire_lock()
    try:
        with pytest.raises(dk.DeltackptError) as info:  # one `except` catches every refusal
            open_store(url).acquire_lock()
        assert isinstance(info.value, dk.LockedError)
        assert isinstance(info.value, RuntimeError)  # what callers caught before
        assert "mode='r'" in str(info.value)  # says what to do
    finally:
        holder.release_lock()
