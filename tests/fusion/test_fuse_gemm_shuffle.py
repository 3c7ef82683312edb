"""fuse-gemm (2-D MatMul + runtime bias, transposed operands -> Gemm) and raise-channel-shuffle."""

from __future__ import annotations

import kiln
import numpy as np
import pytest
from kiln.ir import DType, Graph, TensorType, verify
from rewrite_helpers import check_rewrite, const_text, model_text, run_ort

W = const_text("w", (5, 4), 1)


def test_matmul_plus_runtime_bias() -> None:
    text = model_text("(float[3,5] x, float[3,4] c) => (float[3,4] y)", [W], "m = MatMul(x, w)\ny = Add(c, m)")
    check_rewrite(text, "fuse-gemm", fired_exactly={"matmul-add-to-gemm": 1}, ops=["onnx.Gemm"])


def test_row_bias_broadcasts() -> None:
    text = model_text("(float[3,5] x, float[1,4] c) => (float[3,4] y)", [W], "m = MatMul(x, w)\ny = Add(m, c)")
    check_rewrite(text, "fuse-gemm", fired_exactly={"matmul-add-to-gemm": 1}, ops=["onnx.Gemm"])


@pytest.mark.parametrize("sig, body", [
    ("(float[2,3,5] x, float[4] c) => (float[2,3,4] y)", "m = MatMul(x, w)\ny = Add(m, c)"),  # N-D: Gemm is 2-D
    ("(float[3,5] x) => (float[3,4] y)", "m = MatMul(x, w)\ny = Add(m, b)"),  # constant bias: fuse-bias's
    ("(float[3,5] x, float[2,3,4] c) => (float[2,3,4] y)", "m = MatMul(x, w)\ny = Add(m, c)"),  # the bias widens
])
def test_stays(sig: str, body: str) -> None:
    check_rewrite(model_text(sig, [W, const_text("b", (4,), 2)], body), "fuse-gemm", fired_exactly={})


def test_transposes_into_gemm_then_bias() -> None:
    text = model_text("(float[5,3] x, float[4,5] v, float[3,4] c) => (float[3,4] y)", [],
                      "a = Transpose(x)\nb = Transpose<perm=[1,0]>(v)\nm = MatMul(a, b)\ny = Add(m, c)")
    g, _ = check_rewrite(text, "fuse-gemm",
                         fired_exactly={"transpose-a-into-gemm": 1, "transpose-b-into-gemm": 1, "matmul-add-to-gemm": 1},
                         ops=["onnx.Gemm"])
    gemm = next(iter(g))
    assert gemm.attr("transA") == 1 and gemm.attr("transB") == 1


def test_transpose_flips_an_existing_gemm_flag() -> None:
    text = model_text("(float[3,5] x) => (float[3,4] y)", [const_text("v", (5, 4), 3)],
                      "t = Transpose(x)\ny = Gemm<transA=1>(t, v)")
    g, _ = check_rewrite(text, "fuse-gemm", fired_exactly={"transpose-a-into-gemm": 1}, ops=["onnx.Gemm"])
    assert next(iter(g)).attr("transA") == 0


SHUFFLE = "(float[1,6,4,4] x) => (float[1,6,4,4] y)"
SHAPES = ["int64[5] grouped = {1, 2, 3, 4, 4}", "int64[4] back = {1, 6, 4, 4}"]


def test_channel_shuffle() -> None:
    body = "r = Reshape(x, grouped)\nt = Transpose<perm=[0,2,1,3,4]>(r)\ny = Reshape(t, back)"
    g, _ = check_rewrite(model_text(SHUFFLE, SHAPES, body), "raise-channel-shuffle",
                         fired_exactly={"raise-channel-shuffle": 1}, ops=["kiln.ChannelShuffle"])
    assert next(iter(g)).attr("group") == 2


def test_other_transposes_are_not_a_shuffle() -> None:
    body = "r = Reshape(x, grouped)\nt = Transpose<perm=[0,1,2,4,3]>(r)\ny = Reshape(t, back)"
    check_rewrite(model_text(SHUFFLE, SHAPES, body), "raise-channel-shuffle", fired_exactly={})


@pytest.mark.parametrize("opset", [9, 17])
def test_channel_shuffle_decomposition(opset: int) -> None:
    g = Graph()
    g.opsets = {"": opset}
    x = g.add_input("x", TensorType(DType.FLOAT, (2, 6, 3, 5)))
    node = g.create_node("ChannelShuffle", [x], {"group": 3}, domain="kiln")
    assert node.outputs[0].type is None or node.outputs[0].type == x.type
    node.outputs[0].type = x.type
    g.outputs.append(node.outputs[0])
    verify(g)
    data = np.arange(2 * 6 * 15, dtype=np.float32).reshape(2, 6, 3, 5)
    want = data.reshape(2, 3, 2, 3, 5).transpose(0, 2, 1, 3, 4).reshape(2, 6, 3, 5)
    np.testing.assert_array_equal(run_ort(kiln.to_onnx(g), {"x": data})[0], want)
