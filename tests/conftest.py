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
