"""Make the in-tree package importable when it is not installed."""

from __future__ import annotations

import os
import sys

_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python")
if _PY not in sys.path:
    sys.path.insert(0, _PY)
