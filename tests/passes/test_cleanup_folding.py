"""The cleanup and folding passes: each case fires on a minimal model and keeps outputs equal on onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest

import kiln


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def _check(text: str, pipeline: str, feeds: dict[str, np.ndarray]) -> kiln.ir.Graph:
    model = onnx.parser.parse_model(text)
    graph = kiln.load(model)
    kiln.optimize(graph, pipeline=pipeline)
    for want, got in zip(_run(model, feeds), _run(kiln.to_onnx(graph), feeds)):
        np.testing.assert_array_equal(want, got)
    return graph


X = {"x": np.arange(-6, 6, dtype=np.float32).reshape(1, 3, 2, 2)}


def test_round_trip_cast_through_slice_cancels() -> None:
    graph = _check(
        """<ir_version: 8, opset_import: ["" : 13]>
        g (float[N,3,2,2] x) => (int64[1] y) {
            s = Shape(x)
            c = Cast<to = 6>(s)
            st = Constant<value = int64[1] {1}>()
            en = Constant<value = int64[1] {2}>()
            sl = Slice(c, st, en)
            y = Cast<to = 7>(sl)
        }""",
        "remove-noops,dce",
        X,
    )
    assert [n.op for n in graph] == ["Shape", "Slice"]


def test_lossy_round_trip_cast_stays() -> None:
    graph = _check(
        """<ir_version: 8, opset_import: ["" : 13]>
        g (float[1,3,2,2] x) => (float[1,3,2,2] y) {
            c = Cast<to = 6>(x)
            y = Cast<to = 1>(c)
        }""",
        "remove-noops,dce",
        {"x": X["x"] + 0.5},
    )
    assert [n.op for n in graph] == ["Cast", "Cast"]


def test_reshape_piece_copying_input_dims_becomes_zero() -> None:
    graph = _check(
        """<ir_version: 8, opset_import: ["" : 13]>
        g (float[N,3,2,2] x) => (float[N,12] y) {
            s = Shape(x)
            st = Constant<value = int64[1] {0}>()
            en = Constant<value = int64[1] {1}>()
            n = Slice(s, st, en)
            rest = Constant<value = int64[1] {12}>()
            shape = Concat<axis = 0>(n, rest)
            y = Reshape(x, shape)
        }""",
        "O2",
        X,
    )
    assert [n.op for n in graph] == ["Reshape"]
    assert graph.outputs[0].producer.input(1).numpy().tolist() == [0, 12]


@pytest.mark.parametrize("cond", [True, False])
def test_fold_if_inlines_the_taken_branch(cond: bool) -> None:
    flag = 1 if cond else 0
    graph = _check(
        f"""<ir_version: 8, opset_import: ["" : 13]>
        g (float[1,3,2,2] x) => (float[1,3,2,2] y) {{
            c = Constant<value = bool {{{flag}}}>()
            y = If(c) <
                then_branch = t () => (float[1,3,2,2] a) {{ a = Relu(x) }},
                else_branch = e () => (float[1,3,2,2] b) {{ b = Neg(x) }}
            >
        }}""",
        "fold-if,dce",
        X,
    )
    assert [n.op for n in graph] == (["Relu"] if cond else ["Neg"])


def test_fold_respects_the_byte_limit() -> None:
    text = """<ir_version: 8, opset_import: ["" : 13]>
        g (float[1] x) => (float[1] y) {
            s = Constant<value = int64[1] {4096}>()
            big = ConstantOfShape(s)
            m = ReduceMax<keepdims = 0>(big)
            y = Add(x, m)
        }"""
    graph = _check(text, "fold{limit=1024},dce", {"x": np.ones(1, np.float32)})
    assert "ConstantOfShape" in [n.op for n in graph]
    graph = _check(text, "fold,dce", {"x": np.ones(1, np.float32)})
    assert [n.op for n in graph] == ["Add"]


def test_cse_merges_equal_constants_and_nodes() -> None:
    graph = _check(
        """<ir_version: 8, opset_import: ["" : 13]>
        g (float[1,3,2,2] x) => (float[1,3,2,2] y) {
            a = Constant<value = float[1] {2.0}>()
            b = Constant<value = float[1] {2.0}>()
            p = Mul(x, a)
            q = Mul(x, b)
            y = Add(p, q)
        }""",
        "cse,dce",
        X,
    )
    assert [n.op for n in graph] == ["Mul", "Add"]
