"""raise-gelu, raise-swish (SiLU/Swish, HardSwish, HardSigmoid), raise-softmax: decomposed forms -> one op."""

from __future__ import annotations

import kiln
import numpy as np
import pytest
from kiln.ir import DType, Graph, TensorType, verify
from rewrite_helpers import check_rewrite, model_text, op_ids, run_ort

SIG = "(float[2,3,8] x) => (float[2,3,8] y)"
C = ["float sqrt2 = {1.4142135}", "float isqrt2 = {0.70710677}", "float half = {0.5}", "float one = {1.0}",
     "float two = {2.0}", "float three = {3.0}", "float six = {6.0}", "float zero = {0.0}", "float sixth = {0.16666667}",
     "float k = {0.7978846}", "float c = {0.044715}", "float alpha = {1.702}", "float cube = {3.0}"]

# --------------------------------------------------------------------------- GELU

GELU_ERF = {
    "textbook": "t = Div(x, sqrt2)\ne = Erf(t)\na = Add(e, one)\nh = Mul(x, half)\ny = Mul(h, a)",
    "torchscript": "t = Div(x, sqrt2)\ne = Erf(t)\na = Add(e, one)\nm = Mul(x, a)\ny = Mul(m, half)",
    "mul-inv-sqrt2": "t = Mul(isqrt2, x)\ne = Erf(t)\na = Add(one, e)\nh = Mul(a, half)\ny = Mul(h, x)",
    "div-by-two": "t = Div(x, sqrt2)\ne = Erf(t)\na = Add(e, one)\nm = Mul(a, x)\ny = Div(m, two)",
    "distributed": "t = Div(x, sqrt2)\ne = Erf(t)\nh = Mul(e, half)\na = Add(h, half)\ny = Mul(x, a)",
}


@pytest.mark.parametrize("form", sorted(GELU_ERF))
@pytest.mark.parametrize("opset, op", [(17, "kiln.Gelu"), (20, "onnx.Gelu")])
def test_gelu_erf_forms(form: str, opset: int, op: str) -> None:
    g, _ = check_rewrite(model_text(SIG, C, GELU_ERF[form], opset=opset), "raise-gelu",
                         fired_exactly={"raise-gelu": 1}, ops=[op])
    assert next(iter(g)).attr("approximate", "none") == "none"
    verify(g)


def test_gelu_whose_half_was_folded_away_keeps_a_factor() -> None:
    """x·(1 + erf(x/√2)) is 2·Gelu(x): a Gelu and one Mul (fuse-bias folds the 2 where it can)."""
    body = "t = Div(x, sqrt2)\ne = Erf(t)\na = Add(e, one)\ny = Mul(x, a)"
    check_rewrite(model_text(SIG, C, body, opset=20), "raise-gelu", fired_exactly={"raise-gelu": 1},
                  ops=["onnx.Gelu", "onnx.Mul"])


@pytest.mark.parametrize("cube", ["p = Pow(x, cube)", "xx = Mul(x, x)\np = Mul(xx, x)"])
def test_gelu_tanh_form(cube: str) -> None:
    body = f"{cube}\nq = Mul(p, c)\ns = Add(x, q)\nt = Mul(s, k)\nth = Tanh(t)\na = Add(th, one)\nh = Mul(half, x)\ny = Mul(h, a)"
    g, _ = check_rewrite(model_text(SIG, C, body, opset=20), "raise-gelu", fired_exactly={"raise-gelu": 1},
                         ops=["onnx.Gelu"], rtol=1e-4, atol=1e-5)
    assert next(iter(g)).attr("approximate") == "tanh"


@pytest.mark.parametrize("body", [
    "t = Div(x, two)\ne = Erf(t)\na = Add(e, one)\nh = Mul(x, half)\ny = Mul(h, a)",  # erf(x/2): not GELU
    "t = Div(x, sqrt2)\ne = Erf(t)\na = Add(e, two)\nh = Mul(x, half)\ny = Mul(h, a)",  # 0.5·x·(2 + erf): α ≠ β
])
def test_not_a_gelu(body: str) -> None:
    check_rewrite(model_text(SIG, C, body, opset=20), "raise-gelu", fired_exactly={})


def test_gelu_intermediate_read_elsewhere_stays() -> None:
    text = model_text("(float[2,3,8] x) => (float[2,3,8] y, float[2,3,8] e)", C,
                      "t = Div(x, sqrt2)\ne = Erf(t)\na = Add(e, one)\nh = Mul(x, half)\ny = Mul(h, a)", opset=20)
    check_rewrite(text, "raise-gelu", fired_exactly={})


def test_gelu_onnx_only_below_20() -> None:
    check_rewrite(model_text(SIG, C, GELU_ERF["textbook"], opset=17), "raise-gelu{onnx-only=true}", fired_exactly={})


# --------------------------------------------------------------------------- Swish, HardSwish, HardSigmoid

GATES = {
    "silu": ("s = Sigmoid(x)\ny = Mul(x, s)", "raise-swish", "Swish"),
    "swish-alpha": ("t = Mul(x, alpha)\ns = Sigmoid(t)\ny = Mul(s, x)", "raise-swish", "Swish"),
    "hardswish-clip": ("a = Add(x, three)\nr = Clip(a, zero, six)\nm = Mul(x, r)\ny = Div(m, six)", "raise-hardswish", "HardSwish"),
    "hardswish-minmax": ("a = Add(three, x)\nr = Max(a, zero)\nq = Min(r, six)\nm = Mul(x, q)\ny = Mul(m, sixth)",
                         "raise-hardswish", "HardSwish"),
    "hardswish-relu": ("a = Add(x, three)\nr = Relu(a)\nq = Min(r, six)\nm = Mul(x, q)\ny = Mul(m, sixth)",
                       "raise-hardswish", "HardSwish"),
    "hardswish-gate": ("h = HardSigmoid<alpha=0.16666667, beta=0.5>(x)\ny = Mul(x, h)", "raise-hardswish", "HardSwish"),
    "hardsigmoid": ("a = Add(x, three)\nr = Clip(a, zero, six)\ny = Div(r, six)", "raise-hardsigmoid", "HardSigmoid"),
}


@pytest.mark.parametrize("form", sorted(GATES))
@pytest.mark.parametrize("opset", [13, 24])
def test_gates(form: str, opset: int) -> None:
    body, rule, op = GATES[form]
    since = {"Swish": 24, "HardSwish": 14, "HardSigmoid": 6}[op]
    want = f"onnx.{op}" if opset >= since else f"kiln.{op}"
    g, _ = check_rewrite(model_text(SIG, C, body, opset=opset), "raise-swish", fired_exactly={rule: 1}, ops=[want])
    if form == "swish-alpha":
        assert abs(next(iter(g)).attr("alpha") - 1.702) < 1e-6


def test_hardsigmoid_then_hardswish() -> None:
    """x · (relu6(x + 3) / 6): the inner product is a HardSigmoid first, then x times it a HardSwish."""
    body = "a = Add(x, three)\nr = Clip(a, zero, six)\nd = Div(r, six)\ny = Mul(x, d)"
    check_rewrite(model_text(SIG, C, body, opset=14), "raise-swish",
                  fired_exactly={"raise-hardsigmoid": 1, "raise-hardswish": 1}, ops=["onnx.HardSwish"])


@pytest.mark.parametrize("body", [
    "h = HardSigmoid(x)\ny = Mul(x, h)",  # Paddle's HardSigmoid (alpha 0.2) is not HardSwish's
    "a = Add(x, three)\nr = Clip(a, zero, three)\nm = Mul(x, r)\ny = Div(m, six)",  # relu3
    "s = Sigmoid(x)\ny = Mul(s, s)",  # not x times the gate
])
def test_not_a_gate(body: str) -> None:
    check_rewrite(model_text(SIG, C, body, opset=24), "raise-swish", fired_exactly={})


@pytest.mark.parametrize("form, fired", [("hardswish-clip", 1), ("hardswish-relu", 1), ("hardswish-gate", 0)])
def test_hardswish_below_14_onnx_only_is_x_times_hardsigmoid(form: str, fired: int) -> None:
    """No HardSwish before opset 14: x · HardSigmoid(x; 1/6, 1/2), when that is fewer nodes than the pattern."""
    g, _ = check_rewrite(model_text(SIG, C, GATES[form][0], opset=13), "raise-swish{onnx-only=true}",
                         fired_exactly={"raise-hardswish": fired})
    if fired:
        assert op_ids(g) == ["onnx.HardSigmoid", "onnx.Mul"]


def test_gate_onnx_only_keeps_what_the_opset_lacks() -> None:
    body = "s = Sigmoid(x)\ny = Mul(x, s)\n"
    check_rewrite(model_text(SIG, C, body, opset=17), "raise-swish{onnx-only=true}", fired_exactly={})


@pytest.mark.parametrize("op, attrs, ref", [
    ("Gelu", {}, lambda x: 0.5 * x * (1 + np.vectorize(__import__("math").erf)(x / np.sqrt(2)))),
    ("Gelu", {"approximate": "tanh"}, lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))),
    ("Swish", {"alpha": 1.5}, lambda x: x / (1 + np.exp(-1.5 * x))),
    ("HardSwish", {}, lambda x: x * np.clip(x / 6 + 0.5, 0, 1)),
])
@pytest.mark.parametrize("opset", [11, 24])
def test_kiln_activation_decompositions(op: str, attrs: dict, ref, opset: int) -> None:
    g = Graph()
    g.opsets = {"": opset}
    x = g.add_input("x", TensorType(DType.FLOAT, (2, 9)))
    node = g.create_node(op, [x], attrs, domain="kiln", output_types=[TensorType(DType.FLOAT, (2, 9))])
    g.outputs.append(node.outputs[0])
    verify(g)
    data = np.linspace(-5, 5, 18, dtype=np.float32).reshape(2, 9)
    got = run_ort(kiln.to_onnx(g), {"x": data})[0]
    np.testing.assert_allclose(got, ref(data.astype(np.float64)), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- Softmax


@pytest.mark.parametrize("body", [
    "m = ReduceMax<axes=[-1]>(x)\nz = Sub(x, m)\ne = Exp(z)\ns = ReduceSum(e, axes)\ny = Div(e, s)",
    "e = Exp(x)\ns = ReduceSum(e, axes)\ny = Div(e, s)",
    "e = Exp(x)\ns = ReduceSum(e, axes)\nr = Reciprocal(s)\ny = Mul(r, e)",
])
def test_softmax_forms(body: str) -> None:
    g, _ = check_rewrite(model_text(SIG, ["int64[1] axes = {-1}"], body, opset=13), "raise-softmax",
                         fired_exactly={"raise-softmax": 1}, ops=["onnx.Softmax"])
    assert next(iter(g)).attr("axis") == 2


def test_softmax_over_a_middle_axis() -> None:
    body = "e = Exp(x)\ns = ReduceSum(e, axes)\ny = Div(e, s)"
    g, _ = check_rewrite(model_text(SIG, ["int64[1] axes = {1}"], body, opset=13), "raise-softmax",
                         fired_exactly={"raise-softmax": 1}, ops=["onnx.Softmax"])
    assert next(iter(g)).attr("axis") == 1


def test_softmax_before_13_only_over_the_last_axis() -> None:
    last = "e = Exp(x)\ns = ReduceSum<axes=[2]>(e)\ny = Div(e, s)"
    check_rewrite(model_text(SIG, [], last, opset=11), "raise-softmax", fired_exactly={"raise-softmax": 1},
                  ops=["onnx.Softmax"])
    middle = "e = Exp(x)\ns = ReduceSum<axes=[1]>(e)\ny = Div(e, s)"
    check_rewrite(model_text(SIG, [], middle, opset=11), "raise-softmax", fired_exactly={})


def test_softmax_max_over_another_axis_keeps_the_sub() -> None:
    body = "m = ReduceMax<axes=[1]>(x)\nz = Sub(x, m)\ne = Exp(z)\ns = ReduceSum(e, axes)\ny = Div(e, s)"
    g, _ = check_rewrite(model_text(SIG, ["int64[1] axes = {-1}"], body, opset=13), "raise-softmax",
                         fired_exactly={"raise-softmax": 1})
    assert op_ids(g) == ["onnx.ReduceMax", "onnx.Sub", "onnx.Softmax"]


def test_float16_gelu_and_hardswish_constants() -> None:
    """float16 spells 1/√2 as 0.70703 and 1/6 as 0.16663: matched to float16's precision, no factor left."""
    from onnx import TensorProto, numpy_helper
    from rewrite_helpers import parse_model

    consts = ["float isqrt2 = {0.70710677}", "float half = {0.5}", "float one = {1.0}", "float three = {3.0}",
              "float zero = {0.0}", "float six = {6.0}", "float sixth = {0.16666667}"]
    body = ("t = Mul(x, isqrt2)\ne = Erf(t)\na = Add(e, one)\nh = Mul(x, half)\ny = Mul(h, a)\n"
            "s = Add(x, three)\nr = Clip(s, zero, six)\nm = Mul(x, r)\nz = Mul(m, sixth)")
    model = parse_model(model_text("(float[2,8] x) => (float[2,8] y, float[2,8] z)", consts, body, opset=20))
    for init in model.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.elem_type = TensorProto.FLOAT16
    check_rewrite(model, "raise-patterns", fired_exactly={"raise-gelu": 1, "raise-hardswish": 1},
                  ops=["onnx.Gelu", "onnx.HardSwish"], rtol=1e-2, atol=1e-2)


def _if_model(outer: str, inner: str) -> str:
    return f'''<ir_version: 8, opset_import: ["" : 20]>
g (bool cond, float[2,8] x) => (float[2,8] y) <float sqrt2 = {{1.4142135}}, float half = {{0.5}}, float one = {{1.0}}> {{
{outer}
y = If(cond) <then_branch = then_g () => (float[2,8] yt) {{
{inner}
}}, else_branch = else_g () => (float[2,8] ye) {{
ye = Identity(x)
}}>
}}
'''


def test_gelu_inside_an_if_branch() -> None:
    from rewrite_helpers import parse_model

    inner = "t = Div(x, sqrt2)\ne = Erf(t)\na = Add(e, one)\nh = Mul(x, half)\nyt = Mul(h, a)"
    model = parse_model(_if_model("", inner))
    feed = {"cond": np.array(True), "x": np.linspace(-3, 3, 16, dtype=np.float32).reshape(2, 8)}
    g, _ = check_rewrite(model, "raise-gelu", fired_exactly={"raise-gelu": 1}, feed=feed)
    branch = next(iter(g)).subgraphs()[0]
    assert [n.op_id for n in branch] == ["onnx.Gelu"]


def test_gelu_reaching_into_the_enclosing_graph_stays() -> None:
    """The Div outside the branch: raising would move its work into the branch."""
    from rewrite_helpers import parse_model

    inner = "e = Erf(t)\na = Add(e, one)\nh = Mul(x, half)\nyt = Mul(h, a)"
    model = parse_model(_if_model("t = Div(x, sqrt2)", inner))
    feed = {"cond": np.array(True), "x": np.linspace(-3, 3, 16, dtype=np.float32).reshape(2, 8)}
    check_rewrite(model, "raise-gelu", fired_exactly={}, feed=feed)
