"""ncnn target tests: tests/ (zoo.py) and tests/calib/ (ocr_images.py) on sys.path; skipped without ncnn."""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
for folder in (_HERE, _HERE.parent, _HERE.parent / "calib"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
