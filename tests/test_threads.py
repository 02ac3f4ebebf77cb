"""Thread pool: capped by DELTACKPT_NUM_THREADS, and usable in a forked child."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys

import numpy as np

import deltackpt as dk

X = np.random.default_rng(3).standard_normal(1 << 20).astype(np.float32)


def _child(q) -> None:
    y = dk.decode(dk.encode(X, quantizer="none"))
    q.put(bool(y.tobytes() == X.tobytes()))


def test_forked_child_can_encode_after_the_parent_used_the_pool():
    # The parent's pool threads do not exist in a forked child: the pool must be rebuilt.
    assert dk.decode(dk.encode(X, quantizer="none")).tobytes() == X.tobytes()
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q,))
    p.start()
    p.join(timeout=120)
    alive = p.is_alive()
    if alive:
        p.kill()
    assert not alive, "forked child hung"
    assert p.exitcode == 0 and q.get(timeout=5) is True


def test_thread_cap_is_read_from_the_environment():
    code = "import deltackpt._core as c; print(c.num_threads())"
    env = dict(os.environ, DELTACKPT_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "1"
    env["DELTACKPT_NUM_THREADS"] = "3"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "3"
