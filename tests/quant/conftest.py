"""Quantization tests: tests/ (zoo.py) and tests/calib/ (ocr_images.py, calib_models.py) on sys.path."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

_HERE = Path(__file__).resolve().parent
for folder in (_HERE, _HERE.parent, _HERE.parent / "calib"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


@pytest.fixture
def setup(tmp_path):
    """(folder, model path): conv_net saved as net.onnx, and 24 calibration samples in calib.npy beside it."""
    from calib_models import conv_net, samples, save

    model = save(conv_net(), tmp_path / "net.onnx")
    np.save(tmp_path / "calib.npy", samples(24))
    return tmp_path, model
