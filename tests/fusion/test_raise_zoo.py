"""The raising and tensor-fusion passes on zoo models, their registration and their place in the presets.

ViT-S/16 from both torch exporters must come out with LayerNorm, GELU and attention as single
ops: the TorchScript export (opset 17) spells attention with Split + Squeeze and GELU as
``x·(1 + erf(x/√2))·0.5``, the dynamo export (opset 18) with Slice + Squeeze, a Kᵀ through
Reshape-Transpose-Reshape and GELU as ``x·(erf(x/√2)·0.5 + 0.5)`` once fuse-bias distributed it.
"""

from __future__ import annotations

import collections
import functools

import kiln
import numpy as np
import onnx
import pytest
import zoo
from kiln.passmanager import PRESETS, PassContext, Pipeline, lookup_pass
from rewrite_helpers import run_ort

NEW_PASSES = (
    "raise-norm", "raise-gelu", "raise-swish", "raise-softmax", "raise-attention", "fuse-gemm", "raise-patterns",
    "raise-channel-shuffle", "fuse-sibling-conv", "fuse-sibling-matmul", "fuse-concat-split", "merge-slices",
    "fold-elementwise",
)


def test_passes_are_registered_with_summaries() -> None:
    for name in NEW_PASSES:
        info = lookup_pass(name)
        assert info.kind == "pass" and info.summary and info.cls is not None, name
        assert info.cls.__module__.startswith("kiln.passes.fusion."), name


def test_o2_raises_to_onnx_ops_only_and_runs_no_horizontal_merging() -> None:
    expanded = str(Pipeline.parse("O2").expand())
    for name in ("raise-patterns{onnx-only=true}", "fold-elementwise", "merge-slices", "fuse-concat-split"):
        assert name in expanded
    assert expanded.index("raise-patterns") < expanded.index("fuse-bias")
    for name in ("fuse-sibling-conv", "fuse-sibling-matmul", "raise-channel-shuffle", "fuse-act"):
        assert name not in expanded


def test_target_fusions_bundle() -> None:
    expanded = str(Pipeline.parse("target-fusions").expand())
    for name in ("fuse-act", "raise-patterns", "raise-channel-shuffle", "fuse-sibling-conv", "fuse-sibling-matmul"):
        assert name in expanded
    assert "onnx-only" not in expanded and PRESETS["target-fusions"][1]


def test_onnx_only_option_round_trips() -> None:
    assert str(Pipeline.parse("raise-gelu{onnx-only=true}")) == "raise-gelu{onnx-only=true}"
    assert [o.key for o in lookup_pass("raise-patterns").options()] == ["max-rewrites-per-node", "onnx-only"]
    assert [o.key for o in lookup_pass("fuse-sibling-conv").options()] == ["max-rewrites-per-node", "min-siblings"]


# --------------------------------------------------------------------------- zoo


def _path(name: str) -> str:
    ok, why = zoo.available(name)
    if not ok:
        pytest.skip(why)
    return str(zoo.get_model(name))


@functools.cache
def _compiled(name: str, pipeline: str) -> tuple[kiln.ir.Graph, dict[str, int]]:
    graph = kiln.load(_path(name))
    ctx = PassContext()
    kiln.optimize(graph, pipeline=pipeline, ctx=ctx)
    return graph, {k.removeprefix("rules."): v for k, v in ctx.stats.items() if k.startswith("rules.")}


def _ops(graph: kiln.ir.Graph) -> collections.Counter[str]:
    return collections.Counter(n.op_id for n in graph)


def _close_to_original(name: str, graph: kiln.ir.Graph, tolerance: float = 1e-4) -> None:
    feed = zoo.example_inputs(name)
    expected = run_ort(onnx.load(_path(name)), feed)
    actual = run_ort(kiln.to_onnx(graph), feed)
    for e, a in zip(expected, actual):
        scale = max(float(np.abs(e).max()), 1e-30)
        assert float(np.abs(e.astype(np.float64) - a).max()) / scale <= tolerance


VIT = ["timm_vit_small_patch16_224_ts", "timm_vit_small_patch16_224_dynamo"]


@pytest.mark.slow
@pytest.mark.parametrize("name", VIT)
def test_vit_gets_layernorm_gelu_and_attention_raised(name: str) -> None:
    graph, fired = _compiled(name, "O2,target-fusions")
    ops = _ops(graph)
    assert ops["onnx.LayerNormalization"] == 25  # the exporters' own, kept
    # each kiln.Gelu joins the MLP's fc1 (timm's zero-initialized bias was removed) as a GemmAct
    assert fired["raise-gelu"] == 12 and fired["fuse-matmul-kiln-act"] == 12 and ops["kiln.Gelu"] == 0
    assert ops["kiln.GemmAct"] == 12 and {n.attr("activation") for n in graph if n.op == "GemmAct"} == {"Gelu"}
    assert fired["raise-attention"] == 12 and ops["kiln.Attention"] == 12
    for gone in ("onnx.Erf", "onnx.Softmax", "onnx.Squeeze", "onnx.Slice", "onnx.Transpose"):
        assert ops[gone] <= 1, (gone, ops)  # the patch embedding's one Transpose stays
    assert ops["onnx.Split"] == 12  # one per block: the packed QKV projection into Q, K, V
    assert len(graph) == 128
    attention = next(n for n in graph if n.op == "Attention")
    assert attention.attr("q_num_heads") == 6 and abs(attention.attr("scale") - 64 ** -0.5) < 1e-6
    _close_to_original(name, graph)


@pytest.mark.slow
@pytest.mark.parametrize("name", VIT)
def test_vit_raise_patterns_alone(name: str) -> None:
    """Without O2's fusions around it (folding first: the TorchScript export computes the scale from Shape)."""
    graph, fired = _compiled(name, "remove-noops,fold-shapes,fold,raise-patterns,dce")
    assert fired["raise-gelu"] == 12 and fired["raise-attention"] == 12
    _close_to_original(name, graph)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["timm_convnext_tiny_ts", "timm_convnext_tiny_dynamo"])
def test_convnext_gets_gelu_raised(name: str) -> None:
    graph, fired = _compiled(name, "O2,target-fusions")
    ops = _ops(graph)
    assert fired["raise-gelu"] == 18 and ops["onnx.Erf"] == 0
    assert fired["fuse-matmul-kiln-act"] == 18 and ops["kiln.GemmAct"] == 18 and ops["kiln.Gelu"] == 0
    assert len(graph) <= 168
    _close_to_original(name, graph)


@pytest.mark.slow
def test_ppocr_rec_norms_swishes_and_attention() -> None:
    graph, _ = _compiled("ppocr_rec", "O2,target-fusions")
    ops = _ops(graph)
    assert ops["kiln.LayerNorm"] == 5 and ops["kiln.Attention"] == 2 and ops["kiln.Swish"] == 0
    activations = collections.Counter(n.attr("activation") for n in graph if n.op in ("ConvAct", "GemmAct"))
    assert activations["Swish"] == 7  # the raised kiln.Swish joined their Conv (5) and MatMul + bias (2)
    assert ops["onnx.ReduceMean"] == 0 and ops["onnx.Sqrt"] == 0
    _close_to_original("ppocr_rec", graph)


@pytest.mark.slow
def test_shufflenet_channel_shuffles() -> None:
    graph, fired = _compiled("light_shufflenet", "O2,target-fusions")
    assert fired["raise-channel-shuffle"] == 16 and _ops(graph)["kiln.ChannelShuffle"] == 16
    _close_to_original("light_shufflenet", graph)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["light_inception_v1", "light_inception_v2"])
def test_inception_sibling_convs(name: str) -> None:
    graph, fired = _compiled(name, "O2,fuse-sibling-conv,O2")
    before, _ = _compiled(name, "O2")
    assert fired["merge-sibling-convs"] >= 9 and fired["hoist-unary-above-split"] >= 9
    assert len(graph) < len(before)
    _close_to_original(name, graph)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ppocr_det", "ppocr_rec", "timm_vit_small_patch16_224_dynamo", "timm_convnext_tiny_ts",
                                  "timm_efficientnet_b0_ts", "light_shufflenet"])
def test_o2_creates_no_kiln_ops(name: str) -> None:
    graph, _ = _compiled(name, "O2")
    assert not [n.op_id for n in graph if n.domain == "kiln"]


@pytest.mark.slow
def test_o2_slices_become_one_split_on_vit_dynamo() -> None:
    graph, fired = _compiled("timm_vit_small_patch16_224_dynamo", "O2")
    assert fired["slices-to-split"] == 12 and _ops(graph)["onnx.Slice"] == 0
    assert len(graph) == 356


BERT = zoo.list_models("bert")


@pytest.mark.slow
@pytest.mark.parametrize("name", BERT)
def test_bert_o2_raises_its_written_out_layernorms(name: str) -> None:
    """Embedding LayerNorm + two per layer, written as mean/var/sqrt (the dynamo export drops ε = 1e-12)."""
    graph, fired = _compiled(name, "O2")
    ops = _ops(graph)
    assert fired["raise-layernorm"] == 5 and ops["onnx.LayerNormalization"] == 5
    assert fired["layernorm-scale"] == 5 and fired["layernorm-bias"] == 5  # γ and β joined the op
    for gone in ("onnx.ReduceMean", "onnx.Sqrt", "onnx.Pow"):
        assert ops[gone] == 0, (gone, ops)
    assert not [n.op_id for n in graph if n.domain == "kiln"]
    _close_to_original(name, graph)


@pytest.mark.slow
@pytest.mark.parametrize("name", BERT)
@pytest.mark.parametrize("pipeline", ["O2,target-fusions", "O3"])
def test_bert_gets_layernorm_gelu_and_attention_raised(name: str, pipeline: str) -> None:
    """Each of the 2 layers: one LayerNorm per residual, one GELU, one masked attention on a packed QKV."""
    graph, fired = _compiled(name, pipeline)
    ops = _ops(graph)
    assert ops["onnx.LayerNormalization"] == 5
    # raise-gelu makes kiln.Gelu, which fuse-act folds with the FFN's up projection and bias
    assert fired["raise-gelu"] == 2 and fired["fuse-matmul-bias-kiln-act"] == 2 and ops["kiln.Gelu"] == 0
    assert [n.attr("activation") for n in graph if n.op == "GemmAct"] == ["Gelu", "Gelu"]
    assert fired["raise-attention"] == 2 and ops["kiln.Attention"] == 2
    assert fired["merge-sibling-matmuls"] == 2 and ops["onnx.Split"] == 2
    for gone in ("onnx.Erf", "onnx.Softmax", "onnx.Transpose", "onnx.Reshape"):
        assert ops[gone] == 0, (gone, ops)
    assert ops["onnx.MatMul"] == 6  # QKV, output and FFN down per layer (FFN up is the GemmAct)
    for attention in (n for n in graph if n.op == "Attention"):
        assert attention.attr("q_num_heads") == 4 == attention.attr("kv_num_heads")
        assert abs(attention.attr("scale") - 32 ** -0.5) < 1e-6
        mask = attention.input(3)
        assert mask is not None and mask.shape == (1, 1, 1, 32)  # the padding mask, broadcast over heads
    _close_to_original(name, graph)
