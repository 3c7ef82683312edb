"""TensorRT target tests: tests/ (zoo.py) and tests/tensorrt/ (trt_double.py, trt_helpers.py) on sys.path."""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
for folder in (_HERE, _HERE.parent):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
