"""Checks kiln's shape/indexing and NN numpy references against ONNX's backend node tests.

Every ONNX backend test case whose model is a single node of one of the ops
below is run through kiln's registered reference, and each output is compared
with the expected output: same dtype, same shape, values close for floats
(NaNs equal) and exact for ints and bools.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import onnx
import pytest
from kiln.ops.reference import RefContext, get_reference
from onnx import helper, numpy_helper

SHAPE_OPS = {
    "Shape", "Size", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Expand", "Tile",
    "Concat", "Split", "Slice", "Gather", "GatherElements", "GatherND", "ScatterElements", "ScatterND",
    "Scatter", "Pad", "ConstantOfShape", "Range", "NonZero", "OneHot", "EyeLike", "Compress",
    "DepthToSpace", "SpaceToDepth", "ReverseSequence", "Unique", "CenterCropPad", "Constant", "Dropout",
}  # fmt: skip
NN_OPS = {
    "Conv", "ConvTranspose", "ConvInteger", "AveragePool", "MaxPool", "GlobalAveragePool",
    "GlobalMaxPool", "LpPool", "GlobalLpPool", "BatchNormalization", "InstanceNormalization",
    "LayerNormalization", "GroupNormalization", "RMSNormalization", "LpNormalization",
    "MeanVarianceNormalization", "LRN", "Resize", "Upsample", "GridSample", "AffineGrid", "RoiAlign",
    "MaxUnpool", "Col2Im", "NonMaxSuppression",
}  # fmt: skip
OPS = SHAPE_OPS | NN_OPS

# Cases whose expected output comes from a random number generator: the
# reference refuses to fold them (raises NotImplementedError) instead.
RANDOM_CASES = {
    "test_training_dropout": "Dropout in training mode with ratio > 0 is random",
    "test_training_dropout_default": "Dropout in training mode with ratio > 0 is random",
    "test_training_dropout_default_mask": "Dropout in training mode with ratio > 0 is random",
    "test_training_dropout_mask": "Dropout in training mode with ratio > 0 is random",
}

# Cases whose expected values are written out rounded (to 4 decimals) in ONNX's test source.
TOLERANCE = {
    "test_averagepool_2d_ceil_last_window_starts_on_pad": (1e-4, 1e-4),
    "test_gridsample_bicubic": (1e-4, 1e-4),
    "test_roialign_aligned_false": (1e-4, 1e-4),
    "test_roialign_aligned_true": (1e-4, 1e-4),
}


def _collect() -> list[Any]:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    return [
        c
        for c in cases
        if c.model is not None and len(c.model.graph.node) == 1 and c.model.graph.node[0].op_type in OPS
    ]


CASES = _collect()


def _attr_value(attr: onnx.AttributeProto) -> Any:
    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode("utf-8") for v in value]
    return value


def _opset(model: onnx.ModelProto, domain: str) -> int:
    for imp in model.opset_import:
        if imp.domain == domain or {imp.domain, domain} <= {"", "ai.onnx"}:
            return imp.version
    raise AssertionError(f"model imports no opset for domain {domain!r}")


def _assert_same(
    actual: np.ndarray, expected: np.ndarray, what: str, tol: tuple[float, float] = (1e-4, 1e-5)
) -> None:
    assert isinstance(actual, np.ndarray), f"{what}: got {type(actual).__name__}, not an ndarray"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != expected {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != expected {expected.shape}"
    if expected.dtype.kind in "iub" or expected.dtype == object:
        np.testing.assert_array_equal(actual, expected, err_msg=what)
    else:
        np.testing.assert_allclose(
            actual.astype(np.float64),
            expected.astype(np.float64),
            rtol=tol[0],
            atol=tol[1],
            equal_nan=True,
            err_msg=what,
        )


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_backend_node_case(case: Any) -> None:
    node = case.model.graph.node[0]
    fn = get_reference(node.domain, node.op_type)
    assert fn is not None, f"no reference registered for {node.op_type}"
    attrs = {a.name: _attr_value(a) for a in node.attribute}
    out_names = [name for name in node.output if name]
    ctx = RefContext(version=_opset(case.model, node.domain), num_outputs=len(out_names))
    assert case.data_sets, "case has no data sets"
    for inputs, expected in case.data_sets:
        # Inputs named "" are omitted optional inputs: the data set skips them.
        it = iter(inputs)
        args = [next(it) if name else None for name in node.input]
        if case.name in RANDOM_CASES:
            with pytest.raises(NotImplementedError):
                fn(args, attrs, ctx)
            pytest.skip(RANDOM_CASES[case.name])
        outputs = fn(args, attrs, ctx)
        assert len(outputs) == len(expected), f"{len(outputs)} outputs, expected {len(expected)}"
        tol = TOLERANCE.get(case.name, (1e-4, 1e-5))
        for i, (act, exp) in enumerate(zip(outputs, expected)):
            _assert_same(act, np.asarray(exp), f"{node.op_type} output {i}", tol)


def test_every_op_is_registered() -> None:
    missing = sorted(op for op in OPS if get_reference("", op) is None)
    assert not missing, f"ops without a reference: {missing}"


# --------------------------------------------------------------------------- older opsets


def _ref(
    op: str, inputs: list[Any], attrs: dict[str, Any], version: int, num_outputs: int = 1
) -> list[np.ndarray]:
    fn = get_reference("", op)
    assert fn is not None
    return fn(inputs, attrs, RefContext(version=version, num_outputs=num_outputs))


def test_legacy_attribute_forms() -> None:
    """Inputs that older opsets carried as attributes (not in ONNX's node tests)."""
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)

    def i64(*v: int) -> np.ndarray:
        return np.array(v, dtype=np.int64)

    (y,) = _ref("Slice", [x], {"starts": [1, -3], "ends": [2, 100], "axes": [0, 2]}, 1)
    np.testing.assert_array_equal(y, x[1:2, :, 1:])
    (y,) = _ref("Pad", [x], {"pads": [0, 1, 0, 0, 0, 2], "value": 7.0}, 2)
    assert y.dtype == np.float32 and y.shape == (2, 4, 6) and y[0, 0, 0] == 7
    outs = _ref("Split", [x], {"axis": 2, "split": [1, 3]}, 2, num_outputs=2)
    assert [o.shape for o in outs] == [(2, 3, 1), (2, 3, 3)]
    assert _ref("Squeeze", [x[:1]], {"axes": [0]}, 11)[0].shape == (3, 4)
    assert _ref("Unsqueeze", [x], {"axes": [0, -1]}, 11)[0].shape == (1, 2, 3, 4, 1)
    assert _ref("Reshape", [x], {"shape": [0, -1]}, 1)[0].shape == (2, 12)
    assert _ref("Tile", [x, i64(3), i64(1)], {}, 1)[0].shape == (2, 9, 4)
    assert _ref("Concat", [x, x], {}, 1)[0].shape == (2, 6, 4)
    (y,) = _ref("Upsample", [x[None]], {"scales": [1.0, 1.0, 2.0, 1.5], "mode": "nearest"}, 7)
    np.testing.assert_array_equal(y[0][:, ::2][:, :, [0, 2, 3, 5]], x)  # columns 0,0,1,2,2,3: truncation
    (y,) = _ref("Resize", [x[None], np.array([1, 1, 0.5, 0.5], np.float32)], {"mode": "nearest"}, 10)
    np.testing.assert_array_equal(y[0], x[:, :1, ::2])  # Resize-10 downsampling takes ceil(x / scale)
    y, mask = _ref("Dropout", [x], {"ratio": 0.5}, 7, num_outputs=2)
    np.testing.assert_array_equal(y, x)
    assert mask.dtype == np.float32 and np.all(mask == 1)  # the mask had the data's type before opset 10
    y, mask = _ref("Dropout", [x, np.array(0.0, np.float32), np.array(True)], {}, 13, num_outputs=2)
    assert mask.dtype == np.bool_ and mask.all()
    with pytest.raises(NotImplementedError):
        _ref("Dropout", [x, np.array(0.2, np.float32), np.array(True)], {}, 13)


def test_dtypes_are_preserved() -> None:
    """float16 / float64 / bfloat16 data keep their dtype through computing ops."""
    import ml_dtypes

    rng = np.random.default_rng(0)
    for dt in (np.dtype(np.float16), np.dtype(np.float64), np.dtype(ml_dtypes.bfloat16)):
        x = rng.standard_normal((1, 2, 5, 5)).astype(dt)
        w = rng.standard_normal((2, 2, 3, 3)).astype(dt)
        c = rng.standard_normal(2).astype(dt)
        results = {
            "Conv": _ref("Conv", [x, w, c], {"pads": [1, 1, 1, 1]}, 11),
            "ConvTranspose": _ref("ConvTranspose", [x, w, c], {"strides": [2, 2]}, 11),
            "AveragePool": _ref("AveragePool", [x], {"kernel_shape": [2, 2]}, 19),
            "BatchNormalization": _ref("BatchNormalization", [x, c, c, c, np.abs(c)], {}, 15),
            "LayerNormalization": _ref("LayerNormalization", [x, c[:1], c[:1]], {}, 17),
            "Resize": _ref(
                "Resize", [x, None, np.array([1, 1, 1.5, 1.5], np.float32)], {"mode": "cubic"}, 19
            ),
            "GridSample": _ref("GridSample", [x, np.zeros((1, 2, 2, 2), dt)], {}, 20),
            "Range": _ref("Range", [np.array(0, dt), np.array(2, dt), np.array(0.5, dt)], {}, 11),
        }
        for op, (y, *_rest) in results.items():
            assert y.dtype == dt, f"{op} turned {dt} into {y.dtype}"


# --------------------------------------------------------------------------- onnxruntime cross-checks


def _run_ort(op: str, inputs: list[np.ndarray | None], attrs: dict[str, Any], opset: int) -> np.ndarray:
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto

    types = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int64): TensorProto.INT64}
    names = [f"in{i}" if a is not None else "" for i, a in enumerate(inputs)]
    node = helper.make_node(op, names, ["out"], **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [
            helper.make_tensor_value_info(n, types[a.dtype], a.shape)
            for n, a in zip(names, inputs)
            if a is not None
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {n: a for n, a in zip(names, inputs) if a is not None})[0]


def _ort_cases() -> list[tuple[str, str, list[Any], dict[str, Any], int]]:
    rng = np.random.default_rng(1)

    def f(*shape: int) -> np.ndarray:
        return rng.standard_normal(size=shape).astype(np.float32)

    cases: list[tuple[str, str, list[Any], dict[str, Any], int]] = [
        ("conv3d_group_dil", "Conv", [f(2, 4, 7, 6, 5), f(6, 2, 2, 3, 2), f(6)],
         {"group": 2, "dilations": [2, 1, 2], "strides": [1, 2, 1], "pads": [1, 0, 2, 1, 1, 0]}, 17),
        ("conv1d_same_lower", "Conv", [f(1, 3, 9), f(4, 3, 4)], {"auto_pad": "SAME_LOWER", "strides": [2]}, 17),
        ("conv2d_depthwise", "Conv", [f(1, 6, 8, 8), f(6, 1, 3, 3)], {"group": 6, "pads": [1, 1, 1, 1]}, 17),
        ("convT_group_dil_outpad", "ConvTranspose", [f(1, 4, 4, 5), f(4, 3, 3, 2), f(6)],
         {"group": 2, "strides": [3, 2], "dilations": [1, 2], "output_padding": [2, 1], "pads": [1, 0, 0, 1]}, 17),
        ("convT_output_shape_lower", "ConvTranspose", [f(1, 2, 5, 5), f(2, 1, 3, 3)],
         {"strides": [2, 2], "output_shape": [9, 10], "auto_pad": "SAME_LOWER"}, 17),
        ("maxpool_ceil_dil", "MaxPool", [f(1, 2, 9, 8)],
         {"kernel_shape": [3, 2], "strides": [2, 3], "dilations": [2, 1], "pads": [1, 0, 1, 1], "ceil_mode": 1}, 12),
        ("avgpool_ceil_pad", "AveragePool", [f(1, 2, 9, 8)],
         {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1, "count_include_pad": 1}, 19),
        ("lppool_3d", "LpPool", [f(1, 2, 5, 6, 4)], {"kernel_shape": [2, 3, 2], "p": 3, "strides": [2, 1, 2]}, 18),
        ("resize_linear_half_pixel", "Resize", [f(1, 2, 5, 7), None, np.array([1, 1, 1.6, 0.7], np.float32)],
         {"mode": "linear"}, 19),
        ("resize_cubic_antialias", "Resize", [f(1, 2, 9, 7), None, None, np.array([1, 2, 4, 3], np.int64)],
         {"mode": "cubic", "antialias": 1}, 19),
        ("resize_nearest_ceil_asym", "Resize", [f(1, 2, 5, 7), None, np.array([1, 1, 2.5, 0.6], np.float32)],
         {"mode": "nearest", "nearest_mode": "ceil", "coordinate_transformation_mode": "asymmetric"}, 19),
        ("resize_not_smaller_linear", "Resize", [f(1, 2, 5, 7), None, None, np.array([9, 4], np.int64)],
         {"mode": "linear", "axes": [2, 3], "keep_aspect_ratio_policy": "not_smaller"}, 19),
        ("upsample9_linear", "Upsample", [f(1, 2, 3, 4), np.array([1, 1, 2, 3], np.float32)], {"mode": "linear"}, 9),
        ("gridsample_cubic_reflection", "GridSample", [f(1, 2, 5, 6), (f(1, 4, 3, 2) * 1.5)],
         {"mode": "cubic", "padding_mode": "reflection", "align_corners": 0}, 20),
        ("gridsample_linear_border_3d", "GridSample", [f(1, 2, 4, 5, 3), (f(1, 2, 3, 2, 3) * 1.5)],
         {"mode": "linear", "padding_mode": "border", "align_corners": 1}, 20),
        ("roialign_avg_adaptive", "RoiAlign",
         [f(2, 3, 12, 11), np.array([[1.3, 2.2, 9.7, 10.1], [-2, -1, 14, 13]], np.float32), np.array([1, 0])],
         {"output_height": 3, "output_width": 4, "spatial_scale": 0.75}, 16),
        ("lrn_size5", "LRN", [f(2, 7, 3, 3)], {"size": 5, "alpha": 0.01, "beta": 0.6, "bias": 1.5}, 13),
    ]  # fmt: skip
    return cases


@pytest.mark.parametrize("name,op,inputs,attrs,opset", _ort_cases(), ids=[c[0] for c in _ort_cases()])
def test_matches_onnxruntime(
    name: str, op: str, inputs: list[Any], attrs: dict[str, Any], opset: int
) -> None:
    """Configurations ONNX's node tests leave out, checked against onnxruntime."""
    expected = _run_ort(op, inputs, attrs, opset)
    (actual,) = _ref(op, inputs, attrs, opset)[:1]
    _assert_same(actual, expected, op, (1e-4, 1e-4))
