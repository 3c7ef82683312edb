"""``--onnx-contrib``: the onnx target writes kiln ops as onnxruntime's com.microsoft fused ops.

Each lowering is checked on onnxruntime against the original model with graph
optimizations off (so onnxruntime runs the contrib kernel itself, not its own
rewrite of it), and the BERT encoder of the zoo end to end.
"""

from __future__ import annotations

import collections
from pathlib import Path

import kiln
import numpy as np
import onnx
import pytest
import zoo
from kiln.codegen import onnx as target
from kiln.errors import UsageError
from rewrite_helpers import const_text, model_text, parse_model, random_feed, run_ort

STANDARD = {"fp16": False, "int8": False, "input_shapes": {}}
CONTRIB = {**STANDARD, "onnx_contrib": True}


def _emit(graph: kiln.ir.Graph, tmp_path: Path, options: dict = CONTRIB) -> onnx.ModelProto:
    files = target.emit(graph, tmp_path, "m", options)
    assert files == [tmp_path / "m.onnx"]
    return onnx.load(str(files[0]))


def _lowered(text: str, tmp_path: Path, pipeline: str = "fuse-act") -> list[str]:
    """Fuses, emits with --onnx-contrib, checks onnxruntime's outputs; returns domain.op of every node."""
    model = parse_model(text)
    graph = kiln.load(model)
    kiln.optimize(graph, pipeline=pipeline)
    out = _emit(graph, tmp_path)
    feed = random_feed(model)
    for e, a in zip(run_ort(model, feed), run_ort(out, feed)):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)
    if any(n.domain == "com.microsoft" for n in out.graph.node):
        assert {o.domain: o.version for o in out.opset_import}["com.microsoft"] == 1
    return [f"{n.domain or 'onnx'}.{n.op_type}" for n in out.graph.node]


CONV = "(float[1,3,8,8] x) => (float[1,4,8,8] y)"
CONV_INITS = [const_text("w", (4, 3, 3, 3), 1), const_text("b", (4,), 2), "float lo = {-0.5}", "float hi = {0.7}"]
ACTS = {
    "Relu": "Relu(c)", "LeakyRelu": "LeakyRelu<alpha=0.2>(c)", "Sigmoid": "Sigmoid(c)", "Tanh": "Tanh(c)",
    "HardSigmoid": "HardSigmoid<alpha=0.3, beta=0.4>(c)", "Clip": "Clip(c, lo, hi)",
}


@pytest.mark.parametrize("act", sorted(ACTS))
def test_conv_act_becomes_fused_conv(act: str, tmp_path: Path) -> None:
    text = model_text(CONV, CONV_INITS, f"c = Conv<pads=[1,1,1,1]>(x, w, b)\ny = {ACTS[act]}")
    assert _lowered(text, tmp_path) == ["com.microsoft.FusedConv"]


@pytest.mark.parametrize("act", sorted(set(ACTS) - {"Clip"}))
def test_gemm_act_becomes_fused_gemm(act: str, tmp_path: Path) -> None:
    text = model_text("(float[3,6] x) => (float[3,5] y)", [const_text("w", (5, 6), 1), const_text("b", (5,), 2)],
                      f"c = Gemm<alpha=0.5, transB=1>(x, w, b)\ny = {ACTS[act]}")
    assert _lowered(text, tmp_path) == ["com.microsoft.FusedGemm"]


def test_activation_without_a_contrib_kernel_stays_a_function(tmp_path: Path) -> None:
    """Near miss: FusedConv has no HardSwish and FusedGemm no Clip; both stay kiln local functions."""
    text = model_text("(float[1,3,8,8] x, float[3,6] u) => (float[1,4,8,8] y, float[3,5] z)",
                      [*CONV_INITS, const_text("v", (6, 5), 3)],
                      "c = Conv<pads=[1,1,1,1]>(x, w, b)\ny = HardSwish(c)\ng = Gemm(u, v)\nz = Clip(g, lo, hi)")
    assert _lowered(text, tmp_path) == ["kiln.ConvAct", "kiln.GemmAct"]


FFN_INITS = [const_text("w", (6, 5), 1), const_text("b", (5,), 2), "float k = {0.70710678}", "float one = {1.0}",
             "float half = {0.5}"]
ERF_GELU = "s = Mul(c, k)\ne = Erf(s)\np = Add(e, one)\nq = Mul(c, p)\ny = Mul(q, half)"


def test_ffn_gelu_becomes_matmul_and_bias_gelu(tmp_path: Path) -> None:
    text = model_text("(float[2,3,6] x) => (float[2,3,5] y)", FFN_INITS, f"m = MatMul(x, w)\nc = Add(m, b)\n{ERF_GELU}")
    assert _lowered(text, tmp_path, "raise-gelu,fuse-act") == ["onnx.MatMul", "com.microsoft.BiasGelu"]


def test_gelu_alone_and_swish_become_gelu_and_quick_gelu(tmp_path: Path) -> None:
    text = model_text("(float[2,3,5] c, float[2,3,5] x) => (float[2,3,5] y, float[2,3,5] z)",
                      ['float k = {0.70710678}', 'float one = {1.0}', 'float half = {0.5}', 'float a = {1.702}'],
                      f"{ERF_GELU}\nt = Mul(x, a)\ng = Sigmoid(t)\nz = Mul(x, g)")
    assert _lowered(text, tmp_path, "raise-gelu,raise-swish") == ["com.microsoft.Gelu", "com.microsoft.QuickGelu"]


def test_layernorm_below_opset_17_becomes_onnxruntimes_layernormalization(tmp_path: Path) -> None:
    """kiln.LayerNorm (opset 13 has no LayerNormalization): onnxruntime's kernel, registered from opset 1."""
    body = ("m = ReduceMean<axes=[-1]>(x)\nd = Sub(x, m)\nq = Mul(d, d)\nv = ReduceMean<axes=[-1]>(q)\n"
            "e = Add(v, eps)\nr = Sqrt(e)\ny = Div(d, r)")
    text = model_text("(float[2,3,8] x) => (float[2,3,8] y)", ["float eps = {0.00001}"], body, opset=13)
    assert _lowered(text, tmp_path, "raise-norm") == ["onnx.LayerNormalization"]


ATTENTION = """
q0 = MatMul(x, wq)
k0 = MatMul(x, wk)
v0 = MatMul(x, wv)
qh = Reshape(q0, heads)
kh = Reshape(k0, heads)
vh = Reshape(v0, heads)
q = Transpose<perm=[0,2,1,3]>(qh)
kt = Transpose<perm=[0,2,3,1]>(kh)
v = Transpose<perm=[0,2,1,3]>(vh)
s0 = MatMul(q, kt)
s1 = Div(s0, d)
s = Add(s1, mask)
p = Softmax<axis=-1>(s)
o = MatMul(p, v)
ot = Transpose<perm=[0,2,1,3]>(o)
y = Reshape(ot, merged)
"""


def test_masked_attention_becomes_multi_head_attention(tmp_path: Path) -> None:
    inits = [const_text("wq", (8, 8), 1), const_text("wk", (8, 8), 2), const_text("wv", (8, 8), 3),
             "int64[4] heads = {1, 5, 2, 4}", "float d = {2.0}", "int64[3] merged = {1, 5, 8}"]
    text = model_text("(float[1,5,8] x, float[1,1,1,5] mask) => (float[1,5,8] y)", inits, ATTENTION)
    ops = _lowered(text, tmp_path, "raise-attention,fuse-sibling-matmul")
    assert ops.count("com.microsoft.MultiHeadAttention") == 1 and "onnx.Softmax" not in ops
    assert "onnx.Expand" in ops  # the [1, 1, 1, L] padding mask expanded to [1, 1, S, L]


def test_options_contract() -> None:
    assert target.legalize_pipeline(STANDARD) == ""
    assert target.legalize_pipeline(CONTRIB) == target.CONTRIB_PIPELINE
    assert target.legalize_pipeline({**STANDARD, "onnx_contrib": False}) == ""
    with pytest.raises(UsageError, match="target onnx has no option --nhwc-io"):
        target.legalize_pipeline({**STANDARD, "nhwc_io": True})
    graph = kiln.load(parse_model(model_text(CONV, CONV_INITS, "c = Conv<pads=[1,1,1,1]>(x, w, b)\ny = Relu(c)")))
    with pytest.raises(UsageError, match="target onnx has no option --workspace"):
        target.emit(graph, ".", "m", {**STANDARD, "workspace": 1 << 20})


# --------------------------------------------------------------------------- the zoo's BERT


def _compile_contrib(name: str, tmp_path: Path) -> tuple[str, onnx.ModelProto]:
    ok, why = zoo.available(name)
    if not ok:
        pytest.skip(why)
    path = str(zoo.get_model(name))
    graph = kiln.load(path)
    kiln.optimize(graph, pipeline="O2," + target.legalize_pipeline(CONTRIB))
    return path, _emit(graph, tmp_path)


@pytest.mark.parametrize("name", zoo.list_models("bert"))
def test_bert_with_contrib_ops(name: str, tmp_path: Path) -> None:
    import onnxruntime as ort

    path, model = _compile_contrib(name, tmp_path)
    ops = collections.Counter(f"{n.domain or 'onnx'}.{n.op_type}" for n in model.graph.node)
    assert ops["com.microsoft.MultiHeadAttention"] == 2 and ops["com.microsoft.BiasGelu"] == 2
    assert ops["onnx.LayerNormalization"] == 5 and ops["onnx.Expand"] == 1 and ops["onnx.Softmax"] == 0
    assert not model.functions  # every kiln op had a contrib form
    feed = zoo.example_inputs(name)
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        options.log_severity_level = 3
        expected = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"]).run(None, feed)
        got = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feed)
        for e, g in zip(expected, got):
            assert float(np.abs(e - g).max()) / float(np.abs(e).max()) <= 1e-4


def test_contrib_output_is_deterministic(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _compile_contrib("bert_tiny_ts", tmp_path / "a")
    _compile_contrib("bert_tiny_ts", tmp_path / "b")
    assert (tmp_path / "a" / "m.onnx").read_bytes() == (tmp_path / "b" / "m.onnx").read_bytes()


def _residual_layer_norm_model() -> onnx.ModelProto:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    vi = helper.make_tensor_value_info
    nodes = [helper.make_node("Add", ["x", "r"], ["s"]),
             helper.make_node("LayerNormalization", ["s", "g", "b"], ["y"], axis=-1, epsilon=1e-5),
             helper.make_node("Add", ["y", "r"], ["z"])]  # an Add that feeds no LayerNorm stays an Add
    inits = [numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), n) for n in ("g", "b")]
    graph = helper.make_graph(nodes, "g", [vi("x", TensorProto.FLOAT, [1, 4, 16]), vi("r", TensorProto.FLOAT, [1, 4, 16])],
                              [vi("z", TensorProto.FLOAT, [1, 4, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_residual_add_before_layer_norm_is_written_as_sum(tmp_path: Path) -> None:
    """onnxruntime would fuse Add + LayerNormalization into SkipLayerNormalization, 5-8x slower on CPU."""
    import onnxruntime as ort

    model = _residual_layer_norm_model()
    onnx.save(model, tmp_path / "m.onnx")
    out = kiln.compile(str(tmp_path / "m.onnx"), "onnx", str(tmp_path / "out")).artifacts[0]
    assert [n.op_type for n in onnx.load(str(out)).graph.node] == ["Sum", "LayerNormalization", "Add"]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "ort.onnx")
    session = ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
    assert "SkipLayerNormalization" not in {n.op_type for n in onnx.load(str(tmp_path / "ort.onnx")).graph.node}
    rng = np.random.default_rng(1)
    feed = {k: rng.standard_normal((1, 4, 16)).astype(np.float32) for k in ("x", "r")}
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
    np.testing.assert_allclose(session.run(None, feed)[0], reference[0], rtol=1e-6, atol=1e-6)
