"""fold-elementwise: Div/Neg/Sub/Clip chains with constants folded into one op."""

from __future__ import annotations

import numpy as np
import pytest
from rewrite_helpers import check_rewrite, const_text, model_text

SIG = "(float[2,4] x) => (float[2,4] y)"
C = ["float a = {3.0}", "float b = {-7.0}", "float lo = {-1.0}", "float hi = {2.0}", "float lo2 = {0.5}", "float hi2 = {5.0}",
     const_text("v", (4,), 1, low=1.0)]


@pytest.mark.parametrize("body, rule, ops", [
    ("t = Div(x, a)\ny = Div(t, v)", "merge-div-div", ["onnx.Div"]),
    ("t = Mul(x, v)\ny = Div(t, b)", "merge-mul-div", ["onnx.Mul"]),
    ("t = Div(x, a)\ny = Mul(v, t)", "merge-div-mul", ["onnx.Mul"]),
    ("t = Neg(x)\nu = Neg(t)\ny = Relu(u)", "fold-neg-neg", ["onnx.Relu"]),
    ("t = Neg(x)\ny = Mul(t, v)", "fold-neg-into-const", ["onnx.Mul"]),
    ("t = Neg(x)\ny = Div(t, a)", "fold-neg-into-const", ["onnx.Div"]),
    ("t = Mul(x, v)\ny = Neg(t)", "fold-const-into-neg", ["onnx.Mul"]),
    ("t = Neg(x)\ny = Add(v, t)", "fold-neg-add", ["onnx.Sub"]),
    ("t = Sub(a, x)\ny = Add(t, v)", "merge-rsub-add", ["onnx.Sub"]),
    ("t = Clip(x, lo, hi)\ny = Clip(t, lo2, hi2)", "merge-clip-clip", ["onnx.Clip"]),
    ("t = Relu(x)\ny = Clip(t, lo, hi)", "merge-clip-clip", ["onnx.Clip"]),
    ("t = Clip(x, lo, hi2)\ny = Relu(t)", "merge-clip-clip", ["onnx.Clip"]),
    ("t = Relu(x)\ny = Relu(t)", "merge-clip-clip", ["onnx.Relu"]),
])
def test_rules(body: str, rule: str, ops: list[str]) -> None:
    feed = {"x": np.linspace(-4, 6, 8, dtype=np.float32).reshape(2, 4)}
    check_rewrite(model_text(SIG, C, body), "fold-elementwise", fired_exactly={rule: 1}, ops=ops, feed=feed)


def test_clip_before_opset_11_uses_attributes() -> None:
    text = model_text(SIG, [], "t = Clip<min=-1.0, max=2.0>(x)\ny = Clip<min=0.5, max=5.0>(t)", opset=9)
    g, _ = check_rewrite(text, "fold-elementwise", fired_exactly={"merge-clip-clip": 1}, ops=["onnx.Clip"])
    clip = next(iter(g))
    assert clip.attr("min") == 0.5 and clip.attr("max") == 2.0


@pytest.mark.parametrize("body", [
    "t = Div(x, a)\ny = Div(t, w)",  # a constant that widens x
    "t = Div(x, a)\ny = Div(t, z)",  # runtime divisor
    "t = Neg(x)\ny = Add(t, z)",
])
def test_stays(body: str) -> None:
    sig = "(float[2,4] x, float[2,4] z) => (float[3,2,4] y)" if "w)" in body else "(float[2,4] x, float[2,4] z) => (float[2,4] y)"
    check_rewrite(model_text(sig, C + [const_text("w", (3, 1, 1), 2)], body), "fold-elementwise", fired_exactly={})


def test_inner_op_read_elsewhere_stays() -> None:
    text = model_text("(float[2,4] x) => (float[2,4] y, float[2,4] t)", C, "t = Div(x, a)\ny = Div(t, v)")
    check_rewrite(text, "fold-elementwise", fired_exactly={})
