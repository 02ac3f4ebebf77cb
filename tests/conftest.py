"""Shared test settings."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", max_examples=30, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Test the in-tree package when it has a built extension (`maturin develop` or a copied
# `_core*.so`); otherwise the installed wheel is used (CI: `pip install .`).
_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python")
if any(
    n.startswith("_core.") and n.endswith((".so", ".pyd"))
    for n in os.listdir(os.path.join(_PY, "deltackpt"))
):
    import sys

    if _PY not in sys.path:
        sys.path.insert(0, _PY)


def package_parent() -> str:
    """The directory holding the `deltackpt` the tests import (in-tree or installed): child
    processes put it first on their path so they test the same build."""
    import deltackpt

    return os.path.dirname(os.path.dirname(os.path.abspath(deltackpt.__file__)))


_LIMITED_PREAMBLE = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({mem}, {mem}))
sys.path.insert(0, {py!r})
"""


def run_limited(code: str, mem_mb: int = 2048, timeout: float = 120, env=None):
    """Run `code` in a child Python with an address-space limit and a timeout (hostile inputs
    that could allocate a lot must never take the machine down); returns the completed process.
    A child still running at the timeout is killed and the test fails."""
    import subprocess
    import sys

    mem = mem_mb << 20
    src = _LIMITED_PREAMBLE.format(mem=mem, py=package_parent()) + code
    full_env = dict(os.environ, DELTACKPT_NUM_THREADS="2", **(env or {}))
    return subprocess.run(
        [sys.executable, "-c", src],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )
