"""Real models: load -> to_onnx -> onnxruntime equals onnxruntime on the original file.

The PP-OCR detection, recognition and classification models ship with
rapidocr-onnxruntime (opsets 11/12, Constant-node weights, symbolic and -1
dims); the light model zoo ships with onnx (IR 3, opset 9, initializers listed
as inputs, ConstantOfShape weights).
"""

from __future__ import annotations

import os

import kiln
import numpy as np
import onnx
import pytest
from frontend_helpers import LIGHT_MODELS, PPOCR_MODELS, assert_same_outputs, session
from kiln.ir import verify
from kiln.ir.types import TensorType

PPOCR_SHAPES = {"det": [1, 3, 64, 96], "rec": [1, 3, 48, 160], "cls": [1, 3, 48, 192]}


def _feeds(path: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for inp in session(path).get_inputs():
        shape = next((s for key, s in PPOCR_SHAPES.items() if f"_{key}_" in os.path.basename(path)), None)
        if shape is None:
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        feeds[inp.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _check_roundtrip(path: str) -> kiln.ir.Graph:
    graph = kiln.load(path)
    verify(graph)
    exported = kiln.to_onnx(graph)
    onnx.checker.check_model(exported)
    assert_same_outputs(path, exported, _feeds(path), atol=1e-4)
    return graph


@pytest.mark.skipif(not PPOCR_MODELS, reason="rapidocr_onnxruntime is not installed")
@pytest.mark.parametrize("path", PPOCR_MODELS, ids=os.path.basename)
def test_ppocr_roundtrip(path: str) -> None:
    graph = _check_roundtrip(path)
    source = onnx.load(path, load_external_data=False)
    # Constant nodes became constants; every other node kept its ONNX name and index
    n_constant = sum(1 for n in source.graph.node if n.op_type == "Constant")
    assert len(graph) == len(source.graph.node) - n_constant
    for node in graph:
        assert node.loc.file == os.path.basename(path)
        assert node.loc.index is not None and source.graph.node[node.loc.index].name == node.name
        assert node.version == graph.opsets[""]
    # every value is typed; the symbolic batch dim survives
    assert all(o.type is not None for n in graph for o in n.outputs)
    x = graph.inputs[0].type
    assert isinstance(x, TensorType) and (isinstance(x.shape[0], str) or x.shape[0] is None)
    assert graph.model.source_path == os.path.abspath(path)
    assert graph.model.ir_version == source.ir_version


@pytest.mark.parametrize("path", LIGHT_MODELS, ids=os.path.basename)
def test_light_model_zoo_roundtrip(path: str) -> None:
    graph = _check_roundtrip(path)
    source = onnx.load(path, load_external_data=False)
    # IR 3 models list their initializers as inputs: kiln makes them constants
    init_names = {t.name for t in source.graph.initializer}
    assert not any(v.name in init_names for v in graph.inputs)
    assert len(graph.inputs) == len([i for i in source.graph.input if i.name not in init_names])
    assert graph.opsets == {"": 9}
    exported = kiln.to_onnx(graph)
    assert exported.ir_version >= 4
    assert not ({i.name for i in exported.graph.input} & {t.name for t in exported.graph.initializer})
