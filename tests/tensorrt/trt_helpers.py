"""Shared helpers of the TensorRT tests: compiling zoo models and measuring errors."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
import zoo
from kiln.calib import CalibrationConfig
from kiln.driver.compile import compile

CALIB_SAMPLES = 4


def zoo_model(name: str) -> Path:
    """The zoo model, or a skip saying why it cannot be had here."""
    ok, why = zoo.available(name)
    if not ok:
        pytest.skip(f"{name}: {why}")
    return zoo.get_model(name)


def compile_zoo(name: str, out: Path, *, int8: bool = False, fp16: bool = False
                ) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """Compiles a zoo model for tensorrt at its example input shape; (program, model, feed)."""
    path = zoo_model(name)
    feed = zoo.example_inputs(name)
    shapes = {k: v.shape for k, v in feed.items()}
    calibration = None
    if int8:
        data = {k: np.concatenate([zoo.example_inputs(name, seed=s)[k] for s in range(1, 1 + CALIB_SAMPLES)])
                for k in feed}
        calibration = CalibrationConfig(data, progress=False)
    logging.getLogger("kiln.codegen.tensorrt").setLevel(logging.ERROR)
    result = compile(str(path), "tensorrt", out, input_shapes=shapes, int8=int8, fp16=fp16,
                     calibration=calibration)
    program = next(p for p in result.artifacts if p.name.endswith(".trt.py"))
    return program, path, feed


def output_names(path: Path) -> list[str]:
    return [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]


def rel_error(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| over max |ref| (the figure the issue states its tolerances in)."""
    assert got.shape == ref.shape, f"shape {got.shape} != {ref.shape}"
    return float(np.abs(got.astype(np.float64) - ref).max() / max(float(np.abs(ref).max()), 1e-12))
