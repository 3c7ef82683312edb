"""Helpers for the frontend/exporter tests: model paths, onnxruntime runs, a test kiln op."""

from __future__ import annotations

import glob
import os
from typing import Any

import numpy as np
import onnx
import onnx.parser

RAPIDOCR_DIR = os.path.join(os.path.dirname(onnx.__file__), "..", "rapidocr_onnxruntime", "models")
LIGHT_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")

PPOCR_MODELS = sorted(glob.glob(os.path.join(RAPIDOCR_DIR, "*.onnx")))
LIGHT_MODELS = sorted(glob.glob(os.path.join(LIGHT_DIR, "*.onnx")))

TEST_KILN_OP = "FrontendTestScaleAdd"


def parse(text: str, *, check: bool = True) -> onnx.ModelProto:
    """A model from ONNX text syntax, checked by onnx's checker unless ``check=False``."""
    model = onnx.parser.parse_model(text)
    if check:
        onnx.checker.check_model(model)
    return model


def session(model: onnx.ModelProto | str) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto | str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Runs a model on onnxruntime; outputs by name."""
    sess = session(model)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds)))


def assert_same_outputs(
    original: onnx.ModelProto | str,
    exported: onnx.ModelProto,
    feeds: dict[str, np.ndarray],
    *,
    atol: float = 1e-5,
) -> None:
    """Both models run on onnxruntime, give the same output names and (nearly) the same values."""
    a = run(original, feeds)
    b = run(exported, feeds)
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].shape == b[name].shape, name
        if a[name].dtype == object:
            assert a[name].tolist() == b[name].tolist(), name
        else:
            np.testing.assert_allclose(a[name], b[name], atol=atol, rtol=1e-5, err_msg=name)


def _test_op_decompose(b: Any, node: Any) -> list[Any]:
    x, y = node.input(0), node.input(1)
    alpha = node.attr("alpha", 1.0)
    scaled = b.Mul(x, b.const(np.array(alpha, dtype=np.float32), name="alpha"))
    out = scaled if y is None else b.Add(scaled, y)
    return [out]


def register_test_op() -> str:
    """Registers ``kiln.FrontendTestScaleAdd(x, [y]) = x * alpha (+ y)`` once; returns its name."""
    from kiln.ir.core import AttrKind
    from kiln.ops.registry import AttrSpec, kiln_op, kiln_ops

    if TEST_KILN_OP not in kiln_ops():
        kiln_op(
            TEST_KILN_OP,
            inputs=(1, 2),
            attrs={"alpha": AttrSpec("alpha", AttrKind.FLOAT, default=1.0)},
            decompose=_test_op_decompose,
            doc="x * alpha + y (a frontend test op)",
        )
    return TEST_KILN_OP


BROKEN_KILN_OP = "FrontendTestBroken"


def _broken_decompose(b: Any, node: Any) -> list[Any]:
    raise RuntimeError("this decomposition always fails")


def register_broken_op() -> str:
    """Registers ``kiln.FrontendTestBroken``, whose decomposition raises (for failure tests)."""
    from kiln.ops.registry import kiln_op, kiln_ops

    if BROKEN_KILN_OP not in kiln_ops():
        kiln_op(BROKEN_KILN_OP, inputs=(1, 1), decompose=_broken_decompose, doc="fails to decompose")
    return BROKEN_KILN_OP
