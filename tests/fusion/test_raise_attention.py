"""raise-attention: softmax(Q Kᵀ · scale + mask) V, with its head split/merge, -> Attention / kiln.Attention."""

from __future__ import annotations

import kiln
import numpy as np
import pytest
from kiln.ir import DType, Graph, TensorType, verify
from rewrite_helpers import check_rewrite, model_text, op_ids, run_ort

SIG4 = "(float[1,2,4,3] q, float[1,2,4,3] k, float[1,2,4,3] v) => (float[1,2,4,3] y)"
CORE = "kt = Transpose<perm=[0,1,3,2]>(k)\ns = MatMul(q, kt)\nt = Div(s, d)\np = Softmax<axis=-1>(t)\ny = MatMul(p, v)"
CONSTS = ["float d = {1.7320508}"]


@pytest.mark.parametrize("opset, op", [(17, "kiln.Attention"), (23, "onnx.Attention")])
def test_core_4d(opset: int, op: str) -> None:
    g, _ = check_rewrite(model_text(SIG4, CONSTS, CORE, opset=opset), "raise-attention",
                         fired_exactly={"raise-attention": 1}, ops=[op])
    node = next(iter(g))
    assert abs(node.attr("scale") - 1 / np.sqrt(3)) < 1e-6 and node.attr("q_num_heads") is None
    verify(g)


def test_additive_mask_after_the_scale() -> None:
    sig = "(float[1,2,4,3] q, float[1,2,4,3] k, float[1,2,4,3] v, float[1,1,4,4] mask) => (float[1,2,4,3] y)"
    body = CORE.replace("p = Softmax<axis=-1>(t)", "u = Add(mask, t)\np = Softmax<axis=-1>(u)")
    g, _ = check_rewrite(model_text(sig, CONSTS, body, opset=17), "raise-attention", fired_exactly={"raise-attention": 1},
                         ops=["kiln.Attention"])
    assert [v.name for v in next(iter(g)).inputs] == ["q", "k", "v", "mask"]


def test_mask_before_the_scale_stays() -> None:
    sig = "(float[1,2,4,3] q, float[1,2,4,3] k, float[1,2,4,3] v, float[1,1,4,4] mask) => (float[1,2,4,3] y)"
    body = "kt = Transpose<perm=[0,1,3,2]>(k)\ns = MatMul(q, kt)\nu = Add(s, mask)\nt = Div(u, d)\np = Softmax<axis=-1>(t)\ny = MatMul(p, v)"
    check_rewrite(model_text(sig, CONSTS, body, opset=17), "raise-attention", fired_exactly={})


def test_transposed_key_given_directly_gets_a_transpose() -> None:
    sig = "(float[1,2,4,3] q, float[1,2,3,4] kt, float[1,2,4,3] v) => (float[1,2,4,3] y)"
    body = "s = MatMul(q, kt)\nt = Mul(s, c)\np = Softmax<axis=3>(t)\ny = MatMul(p, v)"
    check_rewrite(model_text(sig, ["float c = {0.125}"], body, opset=17), "raise-attention",
                  fired_exactly={"raise-attention": 1}, ops=["onnx.Transpose", "kiln.Attention"])


@pytest.mark.parametrize("body", [
    CORE.replace("Softmax<axis=-1>", "Softmax<axis=2>"),  # softmax over the queries
    CORE.replace("y = MatMul(p, v)", "y = MatMul(p, v)\nz = Identity(s)"),  # scores read elsewhere
])
def test_not_attention(body: str) -> None:
    outs = "(float[1,2,4,3] y, float[1,2,4,4] z)" if "z =" in body else "(float[1,2,4,3] y)"
    sig = SIG4.split("=>")[0] + "=> " + outs
    check_rewrite(model_text(sig, CONSTS, body, opset=17), "raise-attention", fired_exactly={})


def test_onnx_only_below_23() -> None:
    check_rewrite(model_text(SIG4, CONSTS, CORE, opset=17), "raise-attention{onnx-only=true}", fired_exactly={})


SPLIT3 = ["int64[4] heads = {1, 4, 2, 3}", "int64[3] merged = {1, 4, 6}", "float c = {0.57735026}"]
SEPARATE = """rq = Reshape(q3, heads)
q = Transpose<perm=[0,2,1,3]>(rq)
rk = Reshape(k3, heads)
kt = Transpose<perm=[0,2,3,1]>(rk)
rv = Reshape(v3, heads)
v = Transpose<perm=[0,2,1,3]>(rv)
s = MatMul(q, kt)
t = Mul(s, c)
p = Softmax<axis=-1>(t)
o = MatMul(p, v)
ot = Transpose<perm=[0,2,1,3]>(o)
y = Reshape(ot, merged)"""


@pytest.mark.parametrize("opset, op", [(17, "kiln.Attention"), (23, "onnx.Attention")])
def test_head_split_and_merge_join_the_op(opset: int, op: str) -> None:
    sig = "(float[1,4,6] q3, float[1,4,6] k3, float[1,4,6] v3) => (float[1,4,6] y)"
    g, _ = check_rewrite(model_text(sig, SPLIT3, SEPARATE, opset=opset), "raise-attention",
                         fired_exactly={"raise-attention": 1}, ops=[op])
    node = next(iter(g))
    assert node.attr("q_num_heads") == 2 and node.attr("kv_num_heads") == 2
    assert [v.name for v in node.inputs] == ["q3", "k3", "v3"]


def test_without_the_merge_the_4d_form_is_used() -> None:
    sig = "(float[1,4,6] q3, float[1,4,6] k3, float[1,4,6] v3) => (float[1,2,4,3] o)"
    body = SEPARATE.rsplit("\not = ", 1)[0]
    g, _ = check_rewrite(model_text(sig, SPLIT3, body, opset=17), "raise-attention", fired_exactly={"raise-attention": 1})
    assert op_ids(g).count("kiln.Attention") == 1 and next(n for n in g if n.domain == "kiln").attr("q_num_heads") is None


PACKED_HEAD = """r = Reshape(qkv, heads)
t5 = Transpose<perm=[2,0,3,1,4]>(r)
"""
PACKED_TAIL = """s = MatMul(q, kt)
sc = Mul(s, c)
p = Softmax<axis=-1>(sc)
o = MatMul(p, v)
ot = Transpose<perm=[0,2,1,3]>(o)
y = Reshape(ot, merged)"""
TAKERS = {
    "split": "a, b, e = Split<axis=0>(t5, ones)\nq = Squeeze(a, zero)\nk = Squeeze(b, zero)\nv = Squeeze(e, zero)\n"
             "kt = Transpose<perm=[0,1,3,2]>(k)\n",
    "slice": "a = Slice(t5, i0, i1, zero)\nq = Squeeze(a, zero)\nb = Slice(t5, i1, i2, zero)\nk = Squeeze(b, zero)\n"
             "e = Slice(t5, i2, i3, zero)\nv = Squeeze(e, zero)\n"
             "k3 = Reshape(k, bh)\nkt3 = Transpose<perm=[0,2,1]>(k3)\nkt = Reshape(kt3, bhdl)\n",
    "gather": "q = Gather<axis=0>(t5, g0)\nk = Gather<axis=0>(t5, g1)\nv = Gather<axis=0>(t5, g2)\n"
              "kt = Transpose<perm=[0,1,3,2]>(k)\n",
}
PACKED_CONSTS = ["int64[5] heads = {1, 4, 3, 2, 3}", "int64[3] merged = {1, 4, 6}", "float c = {0.57735026}",
                 "int64[3] ones = {1, 1, 1}", "int64[1] zero = {0}", "int64[1] i0 = {0}", "int64[1] i1 = {1}",
                 "int64[1] i2 = {2}", "int64[1] i3 = {3}", "int64 g0 = {0}", "int64 g1 = {1}", "int64 g2 = {2}",
                 "int64[3] bh = {2, 4, 3}", "int64[4] bhdl = {1, 2, 3, 4}"]


@pytest.mark.parametrize("taker", sorted(TAKERS))
def test_packed_qkv_becomes_one_split(taker: str) -> None:
    """TorchScript (Split + Squeeze), dynamo (Slice + Squeeze, Kᵀ via Reshape-Transpose-Reshape) and Gather."""
    sig = "(float[1,4,18] qkv) => (float[1,4,6] y)"
    body = PACKED_HEAD + TAKERS[taker] + PACKED_TAIL
    g, _ = check_rewrite(model_text(sig, PACKED_CONSTS, body, opset=17), "raise-attention",
                         fired_exactly={"raise-attention": 1}, ops=["onnx.Split", "kiln.Attention"])
    split = next(iter(g))
    assert split.inputs[0].name == "qkv" and split.attr("axis") == -1


@pytest.mark.parametrize("three_d", [False, True])
@pytest.mark.parametrize("mask", [None, "float", "bool"])
def test_kiln_attention_decomposition(three_d: bool, mask: str | None) -> None:
    rng = np.random.default_rng(0)
    b, h, s, l, d = 2, 3, 4, 5, 6
    q = rng.standard_normal((b, h, s, d)).astype(np.float32)
    k = rng.standard_normal((b, h, l, d)).astype(np.float32)
    v = rng.standard_normal((b, h, l, d)).astype(np.float32)
    m = rng.standard_normal((1, 1, s, l)).astype(np.float32) if mask == "float" else (
        rng.random((1, 1, s, l)) > 0.3 if mask == "bool" else None)
    if m is not None and mask == "bool":
        m[..., 0] = True  # every row attends somewhere
    g = Graph()
    g.opsets = {"": 17}
    to3 = (lambda t: t.transpose(0, 2, 1, 3).reshape(t.shape[0], t.shape[2], -1)) if three_d else (lambda t: t)
    feed = {"q": to3(q), "k": to3(k), "v": to3(v)}
    inputs = [g.add_input(n, TensorType(DType.FLOAT, a.shape)) for n, a in feed.items()]
    if m is not None:
        feed["mask"] = m
        inputs.append(g.add_input("mask", TensorType(DType.BOOL if mask == "bool" else DType.FLOAT, m.shape)))
    attrs = {"scale": 0.3}
    if three_d:
        attrs.update(q_num_heads=h, kv_num_heads=h)
    node = g.create_node("Attention", inputs, attrs, domain="kiln")
    out_shape = (b, s, h * d) if three_d else (b, h, s, d)
    assert node.outputs[0].type == TensorType(DType.FLOAT, out_shape) or node.outputs[0].type is None
    node.outputs[0].type = TensorType(DType.FLOAT, out_shape)
    g.outputs.append(node.outputs[0])
    verify(g)
    scores = q.astype(np.float64) @ k.astype(np.float64).transpose(0, 1, 3, 2) * 0.3
    if mask == "float":
        scores = scores + m
    elif mask == "bool":
        scores = np.where(m, scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    want = (p / p.sum(-1, keepdims=True)) @ v
    got = run_ort(kiln.to_onnx(g), feed)[0]
    np.testing.assert_allclose(got, to3(want), rtol=1e-5, atol=1e-5)
