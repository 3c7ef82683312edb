"""Checks kiln's numpy references against ONNX's backend node test data.

Every ONNX node test whose model is a single node of an op covered by
``kiln.ops.reference.{elementwise,reduce,quantize}`` runs that node through
the reference registered for it and compares with the expected outputs:
same dtype, same shape, values within rtol 1e-4 / atol 1e-5 for floats (NaNs
equal), exact for integers, bools and strings.

The node tests only exercise each op's latest opset, so the tests at the end
pin the opset-dependent behaviour (attributes that became inputs, Softmax's
2-D coercion, legacy broadcasting, float8 saturation) and the dtype rules.
"""

from __future__ import annotations

import warnings
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from kiln.ops.reference import RefContext, get_reference
from onnx import TensorProto, helper, numpy_helper
from onnx.backend.test.case.node import collect_testcases

ELEMENTWISE_OPS = [
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Mod",
    "Pow",
    "Neg",
    "Abs",
    "Reciprocal",
    "Sqrt",
    "Exp",
    "Log",
    "Floor",
    "Ceil",
    "Round",
    "Sign",
    "Erf",
    "Sin",
    "Cos",
    "Tan",
    "Asin",
    "Acos",
    "Atan",
    "Sinh",
    "Cosh",
    "Asinh",
    "Acosh",
    "Atanh",
    "Max",
    "Min",
    "Sum",
    "Mean",
    "BitShift",
    "BitwiseAnd",
    "BitwiseOr",
    "BitwiseXor",
    "BitwiseNot",
    "And",
    "Or",
    "Xor",
    "Not",
    "Equal",
    "Greater",
    "GreaterOrEqual",
    "Less",
    "LessOrEqual",
    "Where",
    "IsNaN",
    "IsInf",
    "Clip",
    "Relu",
    "LeakyRelu",
    "PRelu",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Elu",
    "Selu",
    "Celu",
    "Softplus",
    "Softsign",
    "ThresholdedRelu",
    "Mish",
    "Gelu",
    "Swish",
    "Shrink",
    "Identity",
    "Cast",
    "CastLike",
    "BitCast",
]
REDUCE_OPS = [
    "ReduceSum",
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
    "ArgMax",
    "ArgMin",
    "CumSum",
    "CumProd",
    "Softmax",
    "LogSoftmax",
    "Hardmax",
    "TopK",
    "Einsum",
    "MatMul",
    "MatMulInteger",
    "Gemm",
    "Det",
    "Trilu",
]
QUANTIZE_OPS = ["QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"]
OPS = frozenset(ELEMENTWISE_OPS + REDUCE_OPS + QUANTIZE_OPS)

RTOL, ATOL = 1e-4, 1e-5

# Cases deliberately not run, with the reason (none at the moment).
SKIPS: dict[str, str] = {}


def _cases() -> list[Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    picked = []
    for case in cases:
        nodes = case.model.graph.node
        if len(nodes) == 1 and nodes[0].op_type in OPS and nodes[0].domain in ("", "ai.onnx"):
            picked.append(case)
    return sorted(picked, key=lambda c: c.name)


CASES = _cases()


def _value(v: Any) -> Any:
    """Test data as numpy: TensorProto -> ndarray; sequences element by element."""
    if isinstance(v, TensorProto):
        return numpy_helper.to_array(v)
    if isinstance(v, list):
        return [_value(e) for e in v]
    return v


def _attrs(node: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, TensorProto):
            v = numpy_helper.to_array(v)
        elif isinstance(v, list):
            v = [e.decode() if isinstance(e, bytes) else e for e in v]
        attrs[a.name] = v
    return attrs


def _assert_same(name: str, got: Any, want: Any) -> None:
    if isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{name}: sequence mismatch"
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_same(f"{name}[{i}]", g, w)
        return
    if want is None:
        assert got is None, f"{name}: expected None"
        return
    got = np.asarray(got)
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    if want.dtype == object or want.dtype == np.bool_ or want.dtype.kind in "iu":
        np.testing.assert_array_equal(got, want, err_msg=name)
        return
    if want.dtype.kind not in "fc":  # ml_dtypes: bfloat16, float8, int4, ...
        kind = np.float32 if "float" in want.dtype.name else np.int64
        got, want = got.astype(kind), want.astype(kind)
        if kind is np.int64:
            np.testing.assert_array_equal(got, want, err_msg=name)
            return
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, equal_nan=True, err_msg=name)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_node_case(case: Any) -> None:
    if case.name in SKIPS:
        pytest.skip(SKIPS[case.name])
    graph = case.model.graph
    node = graph.node[0]
    domain = node.domain or ""
    versions = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in case.model.opset_import}
    ctx = RefContext(version=versions[domain], num_outputs=len(node.output))
    ref = get_reference(domain, node.op_type)
    assert ref is not None, f"no reference registered for {node.op_type}"
    attrs = _attrs(node)

    for inputs, outputs in case.data_sets:
        values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        values.update({vi.name: _value(v) for vi, v in zip(graph.input, inputs)})
        args = [values[n] if n else None for n in node.input]
        got = ref(args, attrs, ctx)
        expected = [_value(v) for v in outputs]
        assert len(got) >= len(expected), f"{len(got)} outputs, expected {len(expected)}"
        by_name = dict(zip(node.output, got))
        for vi, want in zip(graph.output, expected):
            _assert_same(vi.name, by_name[vi.name], want)


def test_every_op_is_registered() -> None:
    missing = [op for op in sorted(OPS) if get_reference("", op) is None]
    assert not missing, f"ops without a reference: {missing}"


def test_cases_cover_every_op() -> None:
    covered = {c.model.graph.node[0].op_type for c in CASES}
    assert covered == set(OPS), f"ops with no ONNX node test: {sorted(set(OPS) - covered)}"


# --- opset-dependent semantics and dtype rules the node tests (latest opsets only) miss ---


def _run(
    op: str, inputs: list[Any], attrs: dict[str, Any] | None = None, version: int = 21, n: int = 1
) -> list:
    ref = get_reference("", op)
    assert ref is not None
    return ref(inputs, attrs or {}, RefContext(version=version, num_outputs=n))


def test_clip_bounds_are_attributes_before_opset_11() -> None:
    x = np.array([-3.0, 0.5, 4.0], np.float32)
    (old,) = _run("Clip", [x], {"min": -1.0, "max": 2.0}, version=6)
    (new,) = _run("Clip", [x, np.float32(-1.0), None], {}, version=13)
    np.testing.assert_array_equal(old, [-1.0, 0.5, 2.0])
    np.testing.assert_array_equal(new, [-1.0, 0.5, 4.0])
    assert old.dtype == new.dtype == np.float32


def test_reduce_axes_attribute_then_input() -> None:
    x = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    (old,) = _run("ReduceSum", [x], {"axes": [1], "keepdims": 0}, version=11)
    (new,) = _run("ReduceSum", [x, np.array([1])], {"keepdims": 0}, version=13)
    (mean_old,) = _run("ReduceMean", [x.astype(np.float16)], {"axes": [0, 2]}, version=13)
    np.testing.assert_array_equal(old, x.sum(axis=1))
    np.testing.assert_array_equal(new, old)
    assert old.dtype == np.int32 and mean_old.dtype == np.float16 and mean_old.shape == (1, 3, 1)


def test_noop_with_empty_axes_keeps_elementwise_part() -> None:
    x = np.array([[1.0, -2.0], [3.0, 4.0]], np.float32)
    attrs = {"noop_with_empty_axes": 1}
    (square,) = _run("ReduceSumSquare", [x, np.array([], np.int64)], attrs, version=18)
    (same,) = _run("ReduceMax", [x], attrs, version=18)
    (everything,) = _run("ReduceMax", [x], {}, version=18)
    np.testing.assert_array_equal(square, x * x)
    np.testing.assert_array_equal(same, x)
    np.testing.assert_array_equal(everything, [[4.0]])


def test_softmax_flattens_to_2d_before_opset_13() -> None:
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    (old,) = _run("Softmax", [x], {"axis": 1}, version=11)
    (new,) = _run("Softmax", [x], {"axis": 1}, version=13)
    np.testing.assert_allclose(old.sum(axis=(1, 2)), 1, rtol=1e-5)
    np.testing.assert_allclose(new.sum(axis=1), 1, rtol=1e-5)
    (hard,) = _run("Hardmax", [x], {}, version=11)  # default axis 1 -> one-hot over 12 values
    np.testing.assert_array_equal(hard.reshape(2, -1).sum(axis=1), [1, 1])


def test_topk_k_attribute_and_ties() -> None:
    x = np.array([[3, 1, 3, 2, 3]], np.int64)
    values, idx = _run("TopK", [x], {"k": 2}, version=1, n=2)
    np.testing.assert_array_equal(values, [[3, 3]])
    np.testing.assert_array_equal(idx, [[0, 2]])
    values, idx = _run("TopK", [x, np.array([3])], {"largest": 0}, version=11, n=2)
    np.testing.assert_array_equal(idx, [[1, 3, 0]])


def test_legacy_broadcast_before_opset_7() -> None:
    a = np.zeros((2, 3, 4), np.float32)
    b = np.arange(3, dtype=np.float32)
    (out,) = _run("Add", [a, b], {"broadcast": 1, "axis": 1}, version=6)
    np.testing.assert_array_equal(out[1, :, 2], b)


def test_dtypes_never_widen() -> None:
    i32 = np.array([2_000_000_000, 5], np.int32)
    f16 = np.array([0.5, -1.5], np.float16)
    assert _run("Add", [i32, i32])[0].dtype == np.int32
    np.testing.assert_array_equal(
        _run("Div", [np.array([-7, 7], np.int32), np.array([2, -2], np.int32)])[0], [-3, -3]
    )
    for op in ("Elu", "Selu", "LeakyRelu", "Gelu", "HardSwish", "Sigmoid", "Erf", "Mish", "Shrink"):
        assert _run(op, [f16])[0].dtype == np.float16, op
    assert _run("Mean", [f16, f16])[0].dtype == np.float16
    assert _run("Pow", [np.array([2, 3], np.int64), np.array([2.0, 0.5], np.float32)])[0].dtype == np.int64
    assert _run("Equal", [f16, f16])[0].dtype == np.bool_


def test_cast_float8_fnuz_infinity_depends_on_opset() -> None:
    x = np.array([np.inf, -np.inf, 1e6], np.float32)
    fnuz = ml_dtypes.float8_e4m3fnuz
    (v21,) = _run("Cast", [x], {"to": TensorProto.FLOAT8E4M3FNUZ}, version=21)
    (v24,) = _run("Cast", [x], {"to": TensorProto.FLOAT8E4M3FNUZ}, version=24)
    assert v21.dtype == v24.dtype == fnuz
    np.testing.assert_array_equal(v21.astype(np.float32), [np.nan, np.nan, 240])
    np.testing.assert_array_equal(v24.astype(np.float32), [240, -240, 240])


def test_cast_e8m0_round_modes() -> None:
    x = np.array([1.0, 1.4, 1.5, 3.0, 0.0], np.float32)
    expected = {
        "up": [1, 2, 2, 4, 2.0**-127],
        "down": [1, 1, 1, 2, 2.0**-127],
        "nearest": [1, 1, 2, 4, 2.0**-127],
    }
    for mode, want in expected.items():
        (got,) = _run("Cast", [x], {"to": TensorProto.FLOAT8E8M0, "round_mode": mode}, version=24)
        np.testing.assert_array_equal(got.astype(np.float32), np.array(want, np.float32), err_msg=mode)
    (strict,) = _run(
        "Cast", [x], {"to": TensorProto.FLOAT8E8M0, "saturate": 0, "round_mode": "nearest"}, version=24
    )
    assert np.isnan(strict.astype(np.float32)[-1])


def test_cast_strings() -> None:
    s = np.array(["1.5", "-1e3", "INF", "-inf", "NaN", " 7 "], dtype=object)
    (f,) = _run("Cast", [s], {"to": TensorProto.FLOAT})
    np.testing.assert_array_equal(f, np.array([1.5, -1000, np.inf, -np.inf, np.nan, 7], np.float32))
    (i,) = _run("Cast", [np.array(["300", "-2"], dtype=object)], {"to": TensorProto.UINT8})
    np.testing.assert_array_equal(i, np.array([44, 254], np.uint8))
    (t,) = _run("Cast", [np.array([1.5, np.nan, -np.inf], np.float32)], {"to": TensorProto.STRING})
    assert t.dtype == object and list(t) == ["1.5", "NaN", "-INF"]
    (b,) = _run("CastLike", [np.array([0.0, 2.0], np.float32), np.array([True])])
    np.testing.assert_array_equal(b, [False, True])


def test_quantize_rounds_half_to_even_and_saturates() -> None:
    x = np.array([0.5, 1.5, 2.5, -2.5, 1000.0, -1000.0], np.float32)
    (u8,) = _run("QuantizeLinear", [x, np.float32(1.0)], {}, version=13)
    (i4,) = _run("QuantizeLinear", [x, np.float32(1.0), np.array(0, ml_dtypes.int4)], {}, version=21)
    np.testing.assert_array_equal(u8, np.array([0, 2, 2, 0, 255, 0], np.uint8))
    assert i4.dtype == ml_dtypes.int4
    np.testing.assert_array_equal(i4.astype(np.int8), [0, 2, 2, -2, 7, -8])


def test_dynamic_quantize_all_zero_input() -> None:
    y, scale, zero_point = _run("DynamicQuantizeLinear", [np.zeros(3, np.float32)], {}, version=11, n=3)
    assert y.dtype == np.uint8 and scale.dtype == np.float32 and zero_point.dtype == np.uint8
    assert float(scale) == 1.0 and int(zero_point) == 0 and not y.any()
