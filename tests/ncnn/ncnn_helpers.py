"""Helpers for the ncnn tests: tiny ONNX models, compile to ncnn, run both sides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from kiln.driver.compile import compile as kiln_compile
from kiln.runtime import ncnn as ncnn_runtime
from kiln.runtime.onnxruntime import run as ort_run
from onnx import TensorProto, helper, numpy_helper


def make_model(nodes: list[onnx.NodeProto], inputs: dict[str, tuple[int, ...]], outputs: dict[str, Any],
               consts: dict[str, np.ndarray] | None = None, opset: int = 17) -> onnx.ModelProto:
    """A model from nodes; ``outputs`` maps names to shapes (None: inferred by onnx)."""
    graph = helper.make_graph(
        nodes, "t",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs.items()],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in (consts or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def weights(shape: tuple[int, ...], seed: int = 0, scale: float = 0.5) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def compile_and_compare(model: onnx.ModelProto, tmp: Path, *, options: dict | None = None, fp16: bool = False,
                        pipeline: str | None = None, seed: int = 0, int8: bool = False) -> tuple[float, Path]:
    """Compiles to ncnn (``int8``: calibrated on 8 random samples), runs both runtimes on the same random
    inputs; returns (max rel error, param path)."""
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "m.onnx"
    onnx.save(model, path)
    result = kiln_compile(path, "ncnn", tmp / "out", options=options, fp16=fp16, pipeline=pipeline, int8=int8,
                          calibration="random:8" if int8 else None)
    rng = np.random.default_rng(seed)
    feed = {}
    for value in model.graph.input:
        dims = tuple(d.dim_value for d in value.type.tensor_type.shape.dim)
        feed[value.name] = rng.standard_normal(dims).astype(np.float32)
    ref = ort_run(path, feed)
    got = ncnn_runtime.run(result.artifacts[0], feed)
    err = 0.0
    for name, want in ref.items():
        have = got[name]
        assert have.shape == want.shape, (name, have.shape, want.shape)
        err = max(err, float(np.abs(have - want).max() / (np.abs(want).max() + 1e-12)))
    return err, result.artifacts[0]


def param_layers(path: Path) -> list[list[str]]:
    """The layer lines of a text .param, split into fields."""
    lines = Path(path).read_text().splitlines()
    assert lines[0] == "7767517"
    return [line.split() for line in lines[2:]]
