"""The TFLite tests import the zoo (tests/zoo.py) and the small nets of tests/layout/nets.py."""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parent.parent
for folder in (_TESTS, _TESTS / "layout"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
