"""raise-norm: decomposed LayerNorm / RMSNorm -> LayerNormalization / RMSNormalization / kiln.LayerNorm / kiln.RMSNorm."""

from __future__ import annotations

import kiln
import numpy as np
import pytest
from kiln.ir import DType, Graph, TensorType, verify
from rewrite_helpers import check_rewrite, const_text, model_text, op_ids, run_ort

GAMMA = const_text("gamma", (8,), 1)
BETA = const_text("beta", (8,), 2)
CONSTS = ["float two = {2.0}", "float eps = {1e-5}", "float one = {1.0}", "float mhalf = {-0.5}", GAMMA, BETA]
SIG = "(float[2,5,8] x) => (float[2,5,8] y)"


def layernorm_body(*, twice: bool = False, square: str = "Pow", divide: str = "Div", affine: str = "both",
                   opset: int = 17) -> str:
    mean = (lambda src, dst: f"{dst} = ReduceMean({src}, axes)") if opset >= 18 else (
        lambda src, dst: f"{dst} = ReduceMean<axes=[-1]>({src})")
    lines = [mean("x", "m"), "d = Sub(x, m)"]
    lines.append("p = Pow(d, two)" if square == "Pow" else "p = Mul(d, d)")
    lines += [mean("p", "v"), "a = Add(eps, v)"]
    num = "d"
    if twice:
        lines.append("d2 = Sub(x, m)")
        num = "d2"
    if divide == "Div":
        lines += ["s = Sqrt(a)", f"n = Div({num}, s)"]
    elif divide == "Reciprocal":
        lines += ["s = Sqrt(a)", "r = Reciprocal(s)", f"n = Mul(r, {num})"]
    else:  # Pow(., -0.5)
        lines += ["r = Pow(a, mhalf)", f"n = Mul({num}, r)"]
    out = {"both": ["g = Mul(n, gamma)", "y = Add(g, beta)"], "scale": ["y = Mul(gamma, n)"],
           "bias": ["y = Add(n, beta)"], "none": ["y = Identity(n)"]}[affine]
    return "\n".join(lines + out)


def _consts(opset: int) -> list[str]:
    return CONSTS + (["int64[1] axes = {-1}"] if opset >= 18 else [])


@pytest.mark.parametrize("twice", [False, True])
@pytest.mark.parametrize("square", ["Pow", "Mul"])
@pytest.mark.parametrize("divide", ["Div", "Reciprocal", "Pow"])
def test_layernorm_variants_raise_to_onnx_at_17(twice: bool, square: str, divide: str) -> None:
    body = layernorm_body(twice=twice, square=square, divide=divide)
    g, _ = check_rewrite(model_text(SIG, _consts(17), body, opset=17), "raise-norm",
                         fired_exactly={"raise-layernorm": 1, "layernorm-scale": 1, "layernorm-bias": 1},
                         ops=["onnx.LayerNormalization"])
    node = next(iter(g))
    assert node.attr("axis") == -1 and abs(node.attr("epsilon") - 1e-5) < 1e-9
    verify(g)


@pytest.mark.parametrize("affine, fired, inputs", [
    ("none", {"raise-layernorm": 1}, 2),
    ("scale", {"raise-layernorm": 1, "layernorm-scale": 1}, 2),
    ("bias", {"raise-layernorm": 1, "layernorm-bias": 1}, 3),
])
def test_layernorm_affine_parts(affine: str, fired: dict[str, int], inputs: int) -> None:
    g, _ = check_rewrite(model_text(SIG, _consts(17), layernorm_body(affine=affine), opset=17), "raise-norm",
                         fired_exactly=fired)
    norm = next(n for n in g if n.op == "LayerNormalization")
    assert len(norm.inputs) == inputs


@pytest.mark.parametrize("opset", [13, 18])
def test_layernorm_below_17_is_kiln_layernorm(opset: int) -> None:
    text = model_text(SIG, _consts(opset), layernorm_body(opset=opset), opset=opset)
    fired = {"raise-layernorm": 1, "kiln-norm-scale": 1, "kiln-norm-bias": 1} if opset < 17 else {
        "raise-layernorm": 1, "layernorm-scale": 1, "layernorm-bias": 1}
    g, _ = check_rewrite(text, "raise-norm", fired_exactly=fired)
    assert op_ids(g) == (["kiln.LayerNorm"] if opset < 17 else ["onnx.LayerNormalization"])


def test_onnx_only_leaves_the_pattern_below_17() -> None:
    text = model_text(SIG, _consts(13), layernorm_body(), opset=13)
    g, _ = check_rewrite(text, "raise-norm{onnx-only=true}", fired_exactly={})
    assert "kiln.LayerNorm" not in op_ids(g)


@pytest.mark.parametrize("opset, op", [(13, "kiln.RMSNorm"), (23, "onnx.RMSNormalization")])
def test_rmsnorm(opset: int, op: str) -> None:
    mean = (lambda s, d: f"{d} = ReduceMean({s}, axes)") if opset >= 18 else (lambda s, d: f"{d} = ReduceMean<axes=[-1]>({s})")
    body = f"p = Mul(x, x)\n{mean('p', 'v')}\na = Add(v, eps)\ns = Sqrt(a)\nn = Div(x, s)\ny = Mul(n, gamma)"
    fired = {"raise-rmsnorm": 1, ("kiln-norm-scale" if opset < 17 else "layernorm-scale"): 1}
    check_rewrite(model_text(SIG, _consts(opset), body, opset=opset), "raise-norm", fired_exactly=fired, ops=[op])


def test_two_trailing_axes() -> None:
    body = ("m = ReduceMean<axes=[1, 2]>(x)\nd = Sub(x, m)\np = Mul(d, d)\nv = ReduceMean<axes=[-2, -1]>(p)\n"
            "a = Add(v, eps)\ns = Sqrt(a)\ny = Div(d, s)")
    g, _ = check_rewrite(model_text(SIG, _consts(17), body, opset=17), "raise-norm", fired_exactly={"raise-layernorm": 1})
    assert next(iter(g)).attr("axis") == -2


@pytest.mark.parametrize("body, fired", [
    # eps outside the square root: not LayerNorm's formula
    (("m = ReduceMean<axes=[-1]>(x)\nd = Sub(x, m)\np = Mul(d, d)\nv = ReduceMean<axes=[-1]>(p)\ns = Sqrt(v)\n"
      "a = Add(s, eps)\ny = Div(d, a)"), {}),
    # normalized over a leading axis
    (("m = ReduceMean<axes=[1]>(x)\nd = Sub(x, m)\np = Mul(d, d)\nv = ReduceMean<axes=[1]>(p)\na = Add(v, eps)\n"
      "s = Sqrt(a)\ny = Div(d, s)"), {}),
    # the mean over the last axis, the variance over two: no LayerNorm, but d / rms(d) is an RMSNorm of d
    (("m = ReduceMean<axes=[-1]>(x)\nd = Sub(x, m)\np = Mul(d, d)\nv = ReduceMean<axes=[1, 2]>(p)\na = Add(v, eps)\n"
      "s = Sqrt(a)\ny = Div(d, s)"), {"raise-rmsnorm": 1}),
])
def test_not_a_layernorm(body: str, fired: dict[str, int]) -> None:
    check_rewrite(model_text(SIG, _consts(17), body, opset=17), "raise-norm", fired_exactly=fired)


def test_shared_intermediate_stays() -> None:
    text = model_text("(float[2,5,8] x) => (float[2,5,8] y, float[2,5,1] v)", _consts(17),
                      "m = ReduceMean<axes=[-1]>(x)\nd = Sub(x, m)\np = Mul(d, d)\nv = ReduceMean<axes=[-1]>(p)\n"
                      "a = Add(v, eps)\ns = Sqrt(a)\ny = Div(d, s)", opset=17)
    check_rewrite(text, "raise-norm", fired_exactly={})


def test_affine_after_an_exported_layernorm_folds() -> None:
    text = model_text(SIG, [GAMMA, BETA, const_text("s", (8,), 3), const_text("c", (1, 1, 8), 4)],
                      "n = LayerNormalization(x, s, beta)\nm = Mul(n, gamma)\ny = Add(m, c)", opset=17)
    check_rewrite(text, "raise-norm", fired_exactly={"layernorm-scale": 1, "layernorm-bias": 1},
                  ops=["onnx.LayerNormalization"])


def test_per_row_constant_does_not_fold() -> None:
    text = model_text(SIG, [const_text("s", (8,), 3), const_text("c", (5, 1), 4)],
                      "n = LayerNormalization(x, s)\ny = Mul(n, c)", opset=17)
    check_rewrite(text, "raise-norm", fired_exactly={})


@pytest.mark.parametrize("op, opset", [("LayerNorm", 13), ("LayerNorm", 17), ("RMSNorm", 13), ("RMSNorm", 23)])
@pytest.mark.parametrize("with_scale", [False, True])
def test_kiln_norm_decompositions(op: str, opset: int, with_scale: bool) -> None:
    g = Graph()
    g.opsets = {"": opset}
    x = g.add_input("x", TensorType(DType.FLOAT, (3, 4, 6)))
    inputs = [x]
    scale = np.linspace(0.5, 2.0, 6).astype(np.float32)
    if with_scale:
        inputs.append(g.add_constant("scale", scale))
    node = g.create_node(op, inputs, {"axis": -1, "epsilon": 1e-3}, domain="kiln")
    node.outputs[0].type = TensorType(DType.FLOAT, (3, 4, 6))
    g.outputs.append(node.outputs[0])
    verify(g)
    data = np.random.default_rng(0).standard_normal((3, 4, 6)).astype(np.float32) * 3 + 1
    got = run_ort(kiln.to_onnx(g), {"x": data})[0]
    d = data.astype(np.float64)
    if op == "LayerNorm":
        d = d - d.mean(-1, keepdims=True)
        want = d / np.sqrt((d * d).mean(-1, keepdims=True) + 1e-3)
    else:
        want = d / np.sqrt((d * d).mean(-1, keepdims=True) + 1e-3)
    if with_scale:
        want = want * scale
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
