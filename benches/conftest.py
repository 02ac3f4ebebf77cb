"""Real data for the benchmarks, computed once and cached under $DELTACKPT_BENCH_CACHE."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest

CACHE = pathlib.Path(os.environ.get("DELTACKPT_BENCH_CACHE", "/tmp/deltackpt-bench"))


@pytest.fixture(scope="session")
def minilm_delta() -> tuple[np.ndarray, np.ndarray]:
    """(before, after) of one real AdamW step of all-MiniLM-L6-v2 (22.7M fp32 parameters)."""
    f = CACHE / "minilm_step.npz"
    if not f.exists():
        from deltackpt._realdata import minilm_finetune_delta

        CACHE.mkdir(parents=True, exist_ok=True)
        before, after = minilm_finetune_delta(steps=2)
        np.savez(f, before=before, after=after)
    z = np.load(f)
    return z["before"], z["after"]


@pytest.fixture(scope="session")
def minilm_weights() -> np.ndarray:
    """Every fp32 weight of the pretrained all-MiniLM-L6-v2, concatenated."""
    from deltackpt._realdata import minilm_weights

    w = minilm_weights()
    return np.concatenate([v.reshape(-1) for v in w.values() if v.dtype == np.float32])


def throughput(benchmark, nbytes: int) -> float:
    """MB/s of input from the fastest round (recorded in the benchmark's extra_info)."""
    mbs = nbytes / benchmark.stats.stats.min / 1e6
    benchmark.extra_info["MB_per_s"] = round(mbs, 1)
    return mbs
