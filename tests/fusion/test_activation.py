"""fuse-act and the kiln dialect: kiln.ConvAct / kiln.GemmAct, inference, decompositions on onnxruntime."""

from __future__ import annotations

import kiln
import numpy as np
import pytest
from kiln.ir import DType, Graph, TensorType, verify
from kiln.ops.inference import infer_node
from kiln.ops.registry import kiln_ops
from rewrite_helpers import (
    apply,
    assert_close,
    check_rewrite,
    const_text,
    fired,
    model_text,
    op_ids,
    parse_model,
    random_feed,
    run_ort,
)

W = const_text("w", (4, 3, 3, 3), 1)
B = const_text("b", (4,), 2)
SLOPE = const_text("slope", (4, 1, 1), 3)

# (activation node text, opsets where the ONNX op exists)
ACTIVATIONS = {
    "Relu": ("y = Relu(c)", 9),
    "LeakyRelu": ("y = LeakyRelu<alpha=0.2>(c)", 9),
    "Sigmoid": ("y = Sigmoid(c)", 9),
    "HardSigmoid": ("y = HardSigmoid<alpha=0.3, beta=0.4>(c)", 9),
    "Tanh": ("y = Tanh(c)", 9),
    "Elu": ("y = Elu<alpha=0.7>(c)", 9),
    "PRelu": ("y = PRelu(c, slope)", 9),
    "HardSwish": ("y = HardSwish(c)", 14),
    "Mish": ("y = Mish(c)", 18),
    "Gelu": ("y = Gelu(c)", 20),
    "GeluTanh": ('y = Gelu<approximate="tanh">(c)', 20),
}


@pytest.mark.parametrize(
    "name, opset", [(n, v) for n in sorted(ACTIVATIONS) for v in (9, 13, 17, 20) if v >= ACTIVATIONS[n][1]]
)
def test_conv_activation(name: str, opset: int) -> None:
    body, _ = ACTIVATIONS[name]
    text = model_text(
        "(float[1,3,8,8] x) => (float[1,4,8,8] y)", [W, B, SLOPE], f"c = Conv<pads=[1,1,1,1]>(x, w, b)\n{body}", opset=opset
    )
    g, _ = check_rewrite(text, "fuse-act", fired_exactly={"fuse-conv-act": 1}, ops=["kiln.ConvAct"])
    node = next(iter(g))
    assert node.attr("activation") == ("Gelu" if name == "GeluTanh" else name)
    assert node.outputs[0].type == TensorType(DType.FLOAT, (1, 4, 8, 8))
    verify(g)


@pytest.mark.parametrize("opset", [9, 13])
def test_conv_clip(opset: int) -> None:
    body = "y = Clip<min=0.0, max=6.0>(c)" if opset < 11 else "y = Clip(c, lo, hi)"
    text = model_text(
        "(float[1,3,8,8] x) => (float[1,4,8,8] y)",
        [W, B, "float lo = {0.0}", "float hi = {6.0}"],
        f"c = Conv<pads=[1,1,1,1]>(x, w, b)\n{body}",
        opset=opset,
    )
    g, _ = check_rewrite(text, "fuse-act", fired_exactly={"fuse-conv-act": 1}, ops=["kiln.ConvAct"])
    assert next(iter(g)).attr("activation_params") == [0.0, 6.0]


def test_clip_with_runtime_bound_stays() -> None:
    text = model_text(
        "(float[1,3,8,8] x, float hi) => (float[1,4,8,8] y)",
        [W, B, "float lo = {0.0}"],
        "c = Conv<pads=[1,1,1,1]>(x, w, b)\ny = Clip(c, lo, hi)",
        opset=13,
    )
    check_rewrite(text, "fuse-act", fired_exactly={}, ops=["onnx.Conv", "onnx.Clip"],
                  feed={"x": np.ones((1, 3, 8, 8), np.float32), "hi": np.array(1.0, np.float32)})


@pytest.mark.parametrize("gate", ["Sigmoid(c)", "HardSigmoid<alpha=0.16666667, beta=0.5>(c)"])
def test_conv_swish_and_hardswish_gates(gate: str) -> None:
    text = model_text(
        "(float[1,3,8,8] x) => (float[1,4,8,8] y)", [W, B], f"c = Conv<pads=[1,1,1,1]>(x, w, b)\ns = {gate}\ny = Mul(s, c)"
    )
    g, _ = check_rewrite(text, "fuse-act", fired_exactly={"fuse-conv-swish": 1}, ops=["kiln.ConvAct"])
    assert next(iter(g)).attr("activation") == ("Swish" if gate.startswith("Sigmoid") else "HardSwish")


def test_shared_conv_output_is_not_fused() -> None:
    text = model_text(
        "(float[1,3,8,8] x) => (float[1,4,8,8] y, float[1,4,8,8] c)", [W, B], "c = Conv<pads=[1,1,1,1]>(x, w, b)\ny = Relu(c)"
    )
    check_rewrite(text, "fuse-act", fired_exactly={}, ops=["onnx.Conv", "onnx.Relu"])


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_activation(trans_b: int) -> None:
    w_shape = (5, 6) if trans_b else (6, 5)
    text = model_text(
        "(float[3,6] x) => (float[3,5] y)",
        [const_text("w", w_shape, 1), const_text("b", (5,), 2)],
        f"c = Gemm<transB={trans_b}, alpha=0.5, beta=2.0>(x, w, b)\ny = LeakyRelu(c)",
    )
    check_rewrite(text, "fuse-act", fired_exactly={"fuse-gemm-act": 1}, ops=["kiln.GemmAct"])


def test_matmul_bias_gelu_nd() -> None:
    text = model_text(
        "(float[2,3,6] x) => (float[2,3,5] y)",
        [const_text("w", (6, 5), 1), const_text("b", (5,), 2)],
        "m = MatMul(x, w)\nc = Add(m, b)\ny = Gelu(c)",
        opset=20,
    )
    g, _ = check_rewrite(text, "fuse-act", fired_exactly={"fuse-matmul-bias-act": 1}, ops=["kiln.GemmAct"])
    assert next(iter(g)).outputs[0].type == TensorType(DType.FLOAT, (2, 3, 5))


def test_matmul_act_and_swish_on_gemm() -> None:
    text = model_text(
        "(float[3,6] x) => (float[3,5] y, float[3,5] z)",
        [const_text("w", (6, 5), 1), const_text("v", (6, 5), 2)],
        "m = MatMul(x, w)\ny = Tanh(m)\ng = Gemm(x, v)\ns = Sigmoid(g)\nz = Mul(g, s)",
    )
    check_rewrite(text, "fuse-act", fired_exactly={"fuse-matmul-act": 1, "fuse-gemm-swish": 1},
                  ops=["kiln.GemmAct", "kiln.GemmAct"])


def test_fused_model_exports_a_local_function() -> None:
    text = model_text("(float[1,3,8,8] x) => (float[1,4,8,8] y)", [W, B], "c = Conv<pads=[1,1,1,1]>(x, w, b)\ny = Relu(c)")
    g, _ = check_rewrite(text, "fuse-act")
    model = kiln.to_onnx(g)
    assert [(n.domain, n.op_type) for n in model.graph.node] == [("kiln", "ConvAct")]
    assert [f.name for f in model.functions] == ["ConvAct"]
    inlined = kiln.to_onnx(g, kiln_ops="inline")
    assert [n.op_type for n in inlined.graph.node] == ["Conv", "Relu"]


def test_kiln_ops_are_registered_with_decompositions() -> None:
    ops = kiln_ops()
    for name in ("ConvAct", "GemmAct"):
        assert ops[name].decompose is not None and ops[name].infer is not None


def test_gemm_act_inference_nd_with_transposes() -> None:
    g = Graph()
    g.opsets = {"": 17}
    a = g.add_input("a", TensorType(DType.FLOAT, ("N", 4, 6)))
    b = g.add_input("b", TensorType(DType.FLOAT, (5, 6)))
    c = g.add_input("c", TensorType(DType.FLOAT, (5,)))
    node = g.create_node("GemmAct", [a, b, c], {"transB": 1, "activation": "Relu"}, domain="kiln")
    assert infer_node(node) == [TensorType(DType.FLOAT, ("N", 4, 5))]


def test_unknown_activation_is_an_export_error() -> None:
    from kiln.errors import ExportError

    g = kiln.load(parse_model(model_text("(float[1,3,8,8] x) => (float[1,4,6,6] y)", [W], "y = Conv(x, w)")))
    conv = next(iter(g))
    conv.op, conv.domain = "ConvAct", "kiln"
    conv.set_attr("activation", "Swoosh")
    with pytest.raises(ExportError, match="unknown fused activation 'Swoosh'"):
        kiln.to_onnx(g)


def _erf(x: np.ndarray) -> np.ndarray:
    import math

    return np.vectorize(math.erf)(x)


REFERENCES = {
    ("Gelu", "none"): lambda x: 0.5 * x * (1 + _erf(x / np.sqrt(2))),
    ("Gelu", "tanh"): lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))),
    ("Mish", "none"): lambda x: x * np.tanh(np.log1p(np.exp(x))),
    ("HardSwish", "none"): lambda x: x * np.clip(x / 6 + 0.5, 0, 1),
    ("Swish", "none"): lambda x: x / (1 + np.exp(-1.5 * x)),
}


@pytest.mark.parametrize("activation, approximate", sorted(REFERENCES))
@pytest.mark.parametrize("opset", [11, 20])
def test_decompositions_below_the_ops_opset(activation: str, approximate: str, opset: int) -> None:
    """ConvAct with an activation whose ONNX op is newer than the model's opset decomposes into older ops."""
    from rewrite_helpers import run_ort

    g = Graph()
    g.opsets = {"": opset}
    x = g.add_input("x", TensorType(DType.FLOAT, (1, 2, 3, 3)))
    w = g.add_constant("w", np.eye(2, dtype=np.float32).reshape(2, 2, 1, 1))
    attrs: dict[str, object] = {"activation": activation}
    if approximate != "none":
        attrs["approximate"] = approximate
    if activation == "Swish":
        attrs["activation_params"] = [1.5]
    node = g.create_node("ConvAct", [x, w], attrs, domain="kiln", output_types=[TensorType(DType.FLOAT, (1, 2, 3, 3))])
    g.outputs.append(node.outputs[0])
    verify(g)
    feed = {"x": np.linspace(-4, 4, 18, dtype=np.float32).reshape(1, 2, 3, 3)}
    got = run_ort(kiln.to_onnx(g), feed)[0]
    want = REFERENCES[(activation, approximate)](feed["x"].astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- raised kiln activations


def test_raised_gelu_joins_the_matmul_bias() -> None:
    """A transformer FFN: raise-gelu makes kiln.Gelu (opset 17 has no Gelu), fuse-act folds it into GemmAct."""
    text = model_text(
        "(float[2,3,6] x) => (float[2,3,5] y)",
        [const_text("w", (6, 5), 1), const_text("b", (5,), 2), "float k = {0.70710678}", "float one = {1.0}",
         "float half = {0.5}"],
        "m = MatMul(x, w)\nc = Add(m, b)\ns = Mul(c, k)\ne = Erf(s)\np = Add(e, one)\nq = Mul(c, p)\ny = Mul(q, half)",
    )
    g, _ = check_rewrite(text, "raise-gelu,fuse-act", fired_exactly={"raise-gelu": 1, "fuse-matmul-bias-kiln-act": 1},
                         ops=["kiln.GemmAct"])
    node = next(iter(g))
    assert node.attr("activation") == "Gelu" and node.attr("approximate", "none") == "none"


def test_raised_swish_joins_the_conv() -> None:
    text = model_text(
        "(float[1,3,8,8] x) => (float[1,4,8,8] y)", [W, B, "float a = {1.5}"],
        "c = Conv<pads=[1,1,1,1]>(x, w, b)\nt = Mul(c, a)\ns = Sigmoid(t)\ny = Mul(c, s)",
    )
    g, _ = check_rewrite(text, "raise-swish,fuse-act", fired_exactly={"raise-swish": 1, "fuse-conv-kiln-act": 1},
                         ops=["kiln.ConvAct"])
    node = next(iter(g))
    assert node.attr("activation") == "Swish" and node.attr("activation_params") == [1.5]


def _check_kiln_input(text: str, fired_exactly: dict[str, int], ops: list[str]) -> kiln.ir.Graph:
    """check_rewrite for a model that already holds kiln ops: the reference is kiln's own export of it."""
    graph = kiln.load(parse_model(text))
    feed = random_feed(kiln.to_onnx(graph))
    expected = run_ort(kiln.to_onnx(graph), feed)
    assert fired(apply(graph, "fuse-act")) == fired_exactly
    assert op_ids(graph) == ops
    assert_close(expected, run_ort(kiln.to_onnx(graph), feed))
    return graph


def test_kiln_hardswish_joins_the_gemm_and_matmul() -> None:
    """kiln.HardSwish (what raising makes below opset 14) over a Gemm and over a bare MatMul."""
    text = (
        '<ir_version: 8, opset_import: ["" : 13, "kiln" : 1]>\n'
        "g (float[3,6] x) => (float[3,5] y, float[3,5] z) "
        f"<{const_text('w', (6, 5), 1)}, {const_text('v', (6, 5), 2)}> {{\n"
        "g = Gemm(x, v)\ny = kiln.HardSwish(g)\nm = MatMul(x, w)\nz = kiln.HardSwish(m)\n}\n"
    )
    g = _check_kiln_input(text, {"fuse-gemm-kiln-act": 1, "fuse-matmul-kiln-act": 1}, ["kiln.GemmAct", "kiln.GemmAct"])
    assert [n.attr("activation") for n in g] == ["HardSwish", "HardSwish"]


def test_kiln_op_that_is_no_activation_is_refused() -> None:
    """A near miss: kiln.LayerNorm after a MatMul is not an activation, so nothing fuses."""
    text = (
        '<ir_version: 8, opset_import: ["" : 13, "kiln" : 1]>\n'
        f"g (float[3,6] x) => (float[3,5] y) <{const_text('w', (6, 5), 1)}> {{\n"
        "m = MatMul(x, w)\ny = kiln.LayerNorm(m)\n}\n"
    )
    _check_kiln_input(text, {}, ["onnx.MatMul", "kiln.LayerNorm"])


# ------------------------------------------------------------------------------------------ ConvTranspose

WT = const_text("wt", (3, 2, 3, 3), 4)  # ConvTranspose weight [Cin, Cout / group, kh, kw]
BT = const_text("bt", (2,), 5)
SLOPE_T = const_text("slope", (2, 1, 1), 6)


@pytest.mark.parametrize("body", ["y = Relu(c)", "y = Sigmoid(c)", "y = LeakyRelu<alpha=0.1>(c)", "y = PRelu(c, slope)",
                                  "y = HardSigmoid(c)"])
def test_conv_transpose_activation(body: str) -> None:
    text = model_text(
        "(float[1,3,5,5] x) => (float[1,2,12,12] y)", [WT, BT, SLOPE_T],
        f"c = ConvTranspose<strides=[2,2], pads=[0,0,0,0], output_padding=[1,1]>(x, wt, bt)\n{body}",
    )
    g, _ = check_rewrite(text, "fuse-convtranspose-act", fired_exactly={"fuse-convtranspose-act": 1},
                         ops=["kiln.ConvTransposeAct"])
    node = next(iter(g))
    assert node.attr("activation") == body.split("= ")[1].split("(")[0].split("<")[0]
    assert node.attr("output_padding") == [1, 1] and node.attr("strides") == [2, 2]
    assert node.outputs[0].type == TensorType(DType.FLOAT, (1, 2, 12, 12))
    verify(g)


def test_conv_transpose_shared_output_is_a_near_miss() -> None:
    text = model_text(
        "(float[1,3,5,5] x) => (float[1,2,11,11] y, float[1,2,11,11] c)", [WT, BT],
        "c = ConvTranspose<strides=[2,2]>(x, wt, bt)\ny = Relu(c)",
    )
    check_rewrite(text, "fuse-convtranspose-act", fired_exactly={}, ops=["onnx.ConvTranspose", "onnx.Relu"])


def test_conv_transpose_is_not_in_fuse_act() -> None:
    """onnxruntime, TFLite and TensorRT run the activation as a layer of its own: only NCNN's pipeline fuses it."""
    text = model_text("(float[1,3,5,5] x) => (float[1,2,11,11] y)", [WT, BT],
                      "c = ConvTranspose<strides=[2,2]>(x, wt, bt)\ny = Relu(c)")
    check_rewrite(text, "fuse-act", fired_exactly={}, ops=["onnx.ConvTranspose", "onnx.Relu"])
    assert kiln_ops()["ConvTransposeAct"].decompose is not None


# ------------------------------------------------------------------------------------------ Add

SLOPE_ADD = const_text("slope", (4, 1, 1), 7)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_add_activation(name: str) -> None:
    """The residual block's act(x + shortcut), the shortcut broadcast over the batch: one kiln.AddAct."""
    body, opset = ACTIVATIONS[name]
    text = model_text("(float[2,4,5,5] x, float[1,4,5,5] s) => (float[2,4,5,5] y)", [SLOPE_ADD],
                      f"c = Add(x, s)\n{body}", opset=max(opset, 13))
    g, _ = check_rewrite(text, "fuse-add-act", fired_exactly={"fuse-add-act": 1}, ops=["kiln.AddAct"])
    node = next(iter(g))
    assert node.attr("activation") == ("Gelu" if name == "GeluTanh" else name)
    assert node.outputs[0].type == TensorType(DType.FLOAT, (2, 4, 5, 5))
    assert (node.input(2) is not None) == (name == "PRelu")
    verify(g)


def test_add_clip_keeps_its_bounds() -> None:
    text = model_text("(float[1,4,5,5] x, float[1,4,5,5] s) => (float[1,4,5,5] y)",
                      ["float lo = {0.0}", "float hi = {6.0}"], "c = Add(x, s)\ny = Clip(c, lo, hi)")
    g, _ = check_rewrite(text, "fuse-add-act", fired_exactly={"fuse-add-act": 1}, ops=["kiln.AddAct"])
    assert next(iter(g)).attr("activation_params") == [0.0, 6.0]


def test_add_read_by_more_than_the_activation_is_a_near_miss() -> None:
    """The sum is a graph output too: fusing would lose it, so the rule refuses and says why."""
    text = model_text("(float[1,4,5,5] x, float[1,4,5,5] s) => (float[1,4,5,5] y, float[1,4,5,5] c)", [],
                      "c = Add(x, s)\ny = Relu(c)")
    graph = kiln.load(parse_model(text))
    ctx = apply(graph, "fuse-add-act")
    assert fired(ctx) == {}
    assert op_ids(graph) == ["onnx.Add", "onnx.Relu"]


def test_add_of_integers_is_a_near_miss() -> None:
    text = model_text("(int32[4] x, int32[4] s) => (int32[4] y)", [], "c = Add(x, s)\ny = Relu(c)", opset=14)
    check_rewrite(text, "fuse-add-act", fired_exactly={}, ops=["onnx.Add", "onnx.Relu"])


def test_add_under_a_kiln_activation() -> None:
    """kiln.Gelu (what raising makes where the opset has no Gelu) over an Add."""
    text = (
        '<ir_version: 8, opset_import: ["" : 13, "kiln" : 1]>\n'
        "g (float[3,6] x, float[6] b) => (float[3,6] y) {\nc = Add(x, b)\ny = kiln.Gelu(c)\n}\n"
    )
    graph = kiln.load(parse_model(text))
    feed = random_feed(kiln.to_onnx(graph))
    expected = run_ort(kiln.to_onnx(graph), feed)
    assert fired(apply(graph, "fuse-add-act")) == {"fuse-add-kiln-act": 1}
    assert op_ids(graph) == ["kiln.AddAct"] and next(iter(graph)).attr("activation") == "Gelu"
    assert_close(expected, run_ort(kiln.to_onnx(graph), feed))


def test_add_act_is_not_in_fuse_act() -> None:
    """onnxruntime, NCNN and TensorRT run an Add and its activation as two kernels anyway: only the TFLite
    pipeline, whose ADD carries the Relu family, fuses them."""
    text = model_text("(float[1,4,5,5] x, float[1,4,5,5] s) => (float[1,4,5,5] y)", [], "c = Add(x, s)\ny = Relu(c)")
    check_rewrite(text, "fuse-act", fired_exactly={}, ops=["onnx.Add", "onnx.Relu"])
    check_rewrite(text, "O3", fired_exactly={}, ops=["onnx.Add", "onnx.Relu"])
    assert kiln_ops()["AddAct"].decompose is not None
