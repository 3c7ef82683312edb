"""The fusion tests share the rewrite tests' helpers (tests/rewrite/rewrite_helpers.py)."""

from __future__ import annotations

import sys
from pathlib import Path

_REWRITE = str(Path(__file__).resolve().parent.parent / "rewrite")
if _REWRITE not in sys.path:
    sys.path.insert(0, _REWRITE)
_TESTS = str(Path(__file__).resolve().parent.parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)  # zoo.py
