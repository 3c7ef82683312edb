"""Tensor (horizontal) fusion: sibling Conv/MatMul/Gemm merging, Concat/Split cancelling, Slice merging."""

from __future__ import annotations

import pytest
from rewrite_helpers import check_rewrite, const_text, model_text, op_ids

# --------------------------------------------------------------------------- fuse-sibling-conv

X = "float[1,3,8,8] x"
W1, W2, W3 = const_text("w1", (4, 3, 3, 3), 1), const_text("w2", (2, 3, 3, 3), 2), const_text("w3", (5, 3, 3, 3), 3)
B1, B3 = const_text("b1", (4,), 4), const_text("b3", (5,), 5)


def test_three_sibling_convs_with_relus() -> None:
    body = ("a = Conv<pads=[1,1,1,1]>(x, w1, b1)\np = Relu(a)\nb = Conv<pads=[1,1,1,1], kernel_shape=[3,3]>(x, w2)\n"
            "q = Relu(b)\nc = Conv<pads=[1,1,1,1]>(x, w3, b3)\nr = Relu(c)")
    text = model_text(f"({X}) => (float[1,4,8,8] p, float[1,2,8,8] q, float[1,5,8,8] r)", [W1, W2, W3, B1, B3], body)
    g, _ = check_rewrite(text, "fuse-sibling-conv", fired_exactly={"merge-sibling-convs": 1, "hoist-unary-above-split": 1},
                         ops=["onnx.Conv", "onnx.Relu", "onnx.Split"])
    conv = next(iter(g))
    assert conv.inputs[1].shape == (11, 3, 3, 3) and conv.inputs[2].shape == (11,)


@pytest.mark.parametrize("second", [
    "b = Conv<pads=[0,0,0,0]>(x, w2)",  # other pads
    "b = Conv<pads=[1,1,1,1], strides=[2,2]>(x, w2)",  # other strides
    "b = Conv<pads=[1,1,1,1], dilations=[2,2]>(x, w2)",  # other dilations
])
def test_convs_that_differ_do_not_merge(second: str) -> None:
    text = model_text(f"({X}) => (float[1,4,8,8] a, float[1,2,?,?] b)", [W1, W2, B1],
                      f"a = Conv<pads=[1,1,1,1]>(x, w1, b1)\n{second}")
    check_rewrite(text, "fuse-sibling-conv", fired_exactly={})


def test_grouped_convs_do_not_merge() -> None:
    text = model_text("(float[1,4,8,8] x) => (float[1,4,8,8] a, float[1,4,8,8] b)",
                      [const_text("w1", (4, 2, 3, 3), 1), const_text("w2", (4, 2, 3, 3), 2)],
                      "a = Conv<pads=[1,1,1,1], group=2>(x, w1)\nb = Conv<pads=[1,1,1,1], group=2>(x, w2)")
    check_rewrite(text, "fuse-sibling-conv", fired_exactly={})


def test_min_siblings_option() -> None:
    text = model_text(f"({X}) => (float[1,4,8,8] a, float[1,2,8,8] b)", [W1, W2, B1],
                      "a = Conv<pads=[1,1,1,1]>(x, w1, b1)\nb = Conv<pads=[1,1,1,1]>(x, w2)")
    check_rewrite(text, "fuse-sibling-conv{min-siblings=3}", fired_exactly={})
    check_rewrite(text, "fuse-sibling-conv", fired_exactly={"merge-sibling-convs": 1}, ops=["onnx.Conv", "onnx.Split"])


# --------------------------------------------------------------------------- fuse-sibling-matmul

QKV = [const_text("wq", (8, 8), 1), const_text("wk", (8, 8), 2), const_text("wv", (8, 4), 3),
       const_text("bq", (8,), 4), const_text("bk", (8,), 5), const_text("bv", (4,), 6)]


def test_qkv_projections_with_biases() -> None:
    body = "a = MatMul(x, wq)\nq = Add(a, bq)\nb = MatMul(x, wk)\nk = Add(bk, b)\nc = MatMul(x, wv)\nv = Add(c, bv)"
    text = model_text("(float[2,5,8] x) => (float[2,5,8] q, float[2,5,8] k, float[2,5,4] v)", QKV, body)
    g, _ = check_rewrite(text, "fuse-sibling-matmul",
                         fired_exactly={"merge-sibling-matmuls": 1, "hoist-affine-above-split": 1},
                         ops=["onnx.MatMul", "onnx.Add", "onnx.Split"])
    assert next(iter(g)).inputs[1].shape == (8, 20)


def test_gemm_siblings_mixing_trans_b() -> None:
    inits = [const_text("wq", (8, 8), 1), const_text("wk", (8, 6), 2), const_text("bq", (8,), 4)]
    body = "q = Gemm<transB=1, alpha=0.5>(x, wq, bq)\nk = Gemm<alpha=0.5>(x, wk)"
    text = model_text("(float[5,8] x) => (float[5,8] q, float[5,6] k)", inits, body)
    g, _ = check_rewrite(text, "fuse-sibling-matmul", fired_exactly={"merge-sibling-matmuls": 1},
                         ops=["onnx.Gemm", "onnx.Split"])
    gemm = next(iter(g))
    assert gemm.attr("transB") == 0 and gemm.inputs[1].shape == (8, 14) and gemm.inputs[2].shape == (14,)


def test_gemm_siblings_with_other_alpha_stay() -> None:
    inits = [const_text("wq", (8, 8), 1), const_text("wk", (8, 6), 2)]
    text = model_text("(float[5,8] x) => (float[5,8] q, float[5,6] k)", inits, "q = Gemm<alpha=0.5>(x, wq)\nk = Gemm(x, wk)")
    check_rewrite(text, "fuse-sibling-matmul", fired_exactly={})


def test_runtime_weights_stay() -> None:
    text = model_text("(float[5,8] x, float[8,3] w) => (float[5,3] a, float[5,8] b)", [const_text("wk", (8, 8), 2)],
                      "a = MatMul(x, w)\nb = MatMul(x, wk)")
    check_rewrite(text, "fuse-sibling-matmul", fired_exactly={})


# --------------------------------------------------------------------------- fuse-concat-split

SIG = "(float[2,3] a, float[2,2] b, float[2,4] x)"


def test_split_of_concat_on_its_boundaries() -> None:
    text = model_text(f"{SIG} => (float[2,3] p, float[2,2] q)", ["int64[2] cut = {3, 2}"],
                      "c = Concat<axis=1>(a, b)\nu, v = Split<axis=1>(c, cut)\np = Relu(u)\nq = Relu(v)")
    check_rewrite(text, "fuse-concat-split", fired_exactly={"split-of-concat": 1}, ops=["onnx.Relu", "onnx.Relu"])


def test_split_of_concat_with_one_group() -> None:
    text = model_text(f"{SIG} => (float[2,5] p, float[2,4] q)", ["int64[2] cut = {5, 4}"],
                      "c = Concat<axis=1>(a, b, x)\nu, v = Split<axis=1>(c, cut)\np = Relu(u)\nq = Sigmoid(v)")
    check_rewrite(text, "fuse-concat-split", fired_exactly={"split-of-concat": 1},
                  ops=["onnx.Concat", "onnx.Relu", "onnx.Sigmoid"])


def test_split_off_the_boundaries_stays() -> None:
    text = model_text(f"{SIG} => (float[2,2] p, float[2,3] q)", ["int64[2] cut = {2, 3}"],
                      "c = Concat<axis=1>(a, b)\nu, v = Split<axis=1>(c, cut)\np = Relu(u)\nq = Sigmoid(v)")
    check_rewrite(text, "fuse-concat-split", fired_exactly={})


def test_concat_of_a_whole_split_and_nested_concats() -> None:
    text = model_text(f"{SIG} => (float[2,12] y)", ["int64[2] cut = {1, 3}"],
                      "s0, s1 = Split<axis=1>(x, cut)\ninner = Concat<axis=1>(a, b)\ny = Concat<axis=1>(s0, s1, inner, a)")
    check_rewrite(text, "fuse-concat-split", fired_exactly={"concat-of-split": 1, "flatten-concat": 1}, ops=["onnx.Concat"])


def test_concat_of_part_of_a_split_stays() -> None:
    text = model_text("(float[2,4] x) => (float[2,4] y, float[2,2] z)", ["int64[3] cut = {1, 1, 2}"],
                      "s0, s1, s2 = Split<axis=1>(x, cut)\ny = Concat<axis=1>(s1, s0, s2)\nz = Concat<axis=1>(s0, s1)")
    check_rewrite(text, "fuse-concat-split", fired_exactly={})


def test_nested_concat_on_another_axis_stays() -> None:
    text = model_text("(float[2,3] a, float[2,3] b) => (float[4,6] y)", [],
                      "inner = Concat<axis=0>(a, b)\ny = Concat<axis=1>(inner, inner)")
    check_rewrite(text, "fuse-concat-split", fired_exactly={})


def test_slice_of_concat() -> None:
    text = model_text(f"{SIG} => (float[2,2] y)", ["int64[1] s = {3}", "int64[1] e = {5}", "int64[1] ax = {1}"],
                      "c = Concat<axis=1>(a, b)\nt = Slice(c, s, e, ax)\ny = Relu(t)")
    g, _ = check_rewrite(text, "fuse-concat-split", fired_exactly={"slice-of-concat": 1}, ops=["onnx.Relu"])
    assert next(iter(g)).inputs[0].name == "b"


@pytest.mark.parametrize("ops, hoisted", [
    (("Clip(u, lo, hi)", "Clip(v, lo, hi)"), True),
    (("Clip(u, lo, hi)", "Clip(v, lo, lo)"), False),  # other bounds
    (("LeakyRelu<alpha=0.1>(u)", "LeakyRelu<alpha=0.1>(v)"), True),
    (("LeakyRelu<alpha=0.1>(u)", "LeakyRelu<alpha=0.2>(v)"), False),  # other alpha
    (("Relu(u)", "Sigmoid(v)"), False),
])
def test_hoist_unary_above_split(ops: tuple[str, str], hoisted: bool) -> None:
    text = model_text("(float[2,5] x) => (float[2,3] p, float[2,2] q)",
                      ["int64[2] cut = {3, 2}", "float lo = {-0.5}", "float hi = {0.5}"],
                      f"u, v = Split<axis=1>(x, cut)\np = {ops[0]}\nq = {ops[1]}")
    check_rewrite(text, "fuse-concat-split", fired_exactly={"hoist-unary-above-split": int(hoisted)})


@pytest.mark.parametrize("op", ["Add", "Mul", "Sub", "Div"])
def test_hoist_affine_above_split(op: str) -> None:
    inits = ["int64[2] cut = {3, 2}", const_text("c1", (3,), 1, low=1.0), const_text("c2", (1, 2), 2, low=1.0)]
    text = model_text("(float[4,5] x) => (float[4,3] p, float[4,2] q)", inits,
                      f"u, v = Split<axis=1>(x, cut)\np = {op}(u, c1)\nq = {op}(v, c2)")
    check_rewrite(text, "fuse-concat-split", fired_exactly={"hoist-affine-above-split": 1}, ops=[f"onnx.{op}", "onnx.Split"])


def test_hoist_affine_with_a_constant_varying_across_the_split() -> None:
    """A per-row constant on each piece, along the other axis: broadcast and concatenated to [4, 5]."""
    inits = ["int64[2] cut = {3, 2}", const_text("c1", (4, 1), 1), const_text("c2", (4, 2), 2)]
    text = model_text("(float[4,5] x) => (float[4,3] p, float[4,2] q)", inits,
                      "u, v = Split<axis=1>(x, cut)\np = Add(u, c1)\nq = Add(c2, v)")
    g, _ = check_rewrite(text, "fuse-concat-split", fired_exactly={"hoist-affine-above-split": 1})
    assert next(iter(g)).inputs[1].shape == (4, 5)


def test_constant_on_the_left_of_a_sub_stays() -> None:
    inits = ["int64[2] cut = {3, 2}", "float c = {1.0}"]
    text = model_text("(float[4,5] x) => (float[4,3] p, float[4,2] q)", inits,
                      "u, v = Split<axis=1>(x, cut)\np = Sub(c, u)\nq = Sub(c, v)")
    check_rewrite(text, "fuse-concat-split", fired_exactly={})


# --------------------------------------------------------------------------- merge-slices

SL = ["int64[1] i0 = {0}", "int64[1] i1 = {1}", "int64[1] i2 = {2}", "int64[1] i3 = {3}", "int64[1] i6 = {6}",
      "int64[1] m1 = {-1}", "int64[1] m2 = {-2}", "int64[1] big = {1000}"]


@pytest.mark.parametrize("body, shape", [
    ("a = Slice(x, i1, big, i0)\ny = Slice(a, i0, m1, i1)", "[5,5]"),  # disjoint axes
    ("a = Slice(x, i1, m1, i1)\ny = Slice(a, i1, i3, i1)", "[6,2]"),  # one axis, twice
    ("a = Slice(x, i0, big, i1, i2)\ny = Slice(a, i1, big, i1, i2)", "[6,1]"),  # steps 2 then 2
    ("a = Slice(x, m2, big, i0)\ny = Slice(a, i1, i2, i0)", "[1,6]"),  # negative starts
])
def test_slice_chains(body: str, shape: str) -> None:
    text = model_text(f"(float[6,6] x) => (float{shape} y)", SL, body, opset=13)
    check_rewrite(text, "merge-slices", fired_exactly={"merge-slice-chain": 1}, ops=["onnx.Slice"])


def test_slice_chain_with_a_negative_step_stays() -> None:
    text = model_text("(float[6,6] x) => (float[6,3] y)", SL + ["int64[1] end = {-1000}"],
                      "a = Slice(x, m1, end, i1, m1)\ny = Slice(a, i0, i3, i1)", opset=13)
    check_rewrite(text, "merge-slices", fired_exactly={})


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_sibling_slices_tiling_an_axis_become_a_split(opset: int) -> None:
    body = "a = Slice(x, i0, i1, i0)\nb = Slice(x, i1, i3, i0)\nc = Slice(x, i3, big, i0)"
    text = model_text("(float[6,4] x) => (float[1,4] a, float[2,4] b, float[3,4] c)", SL, body, opset=opset)
    check_rewrite(text, "merge-slices", fired_exactly={"slices-to-split": 1}, ops=["onnx.Split"])


def test_sibling_slices_with_a_gap_stay() -> None:
    body = "a = Slice(x, i0, i1, i0)\nb = Slice(x, i2, big, i0)"
    text = model_text("(float[6,4] x) => (float[1,4] a, float[4,4] b)", SL, body, opset=13)
    assert op_ids(check_rewrite(text, "merge-slices", fired_exactly={})[0]) == ["onnx.Slice", "onnx.Slice"]
