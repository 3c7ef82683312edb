"""The memory tests import their helpers (memory_helpers.py) and the zoo (tests/zoo.py)."""

from __future__ import annotations

import sys
from pathlib import Path

for _path in (Path(__file__).resolve().parent, Path(__file__).resolve().parent.parent):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
