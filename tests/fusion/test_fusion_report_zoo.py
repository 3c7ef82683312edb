"""The fusion report's claims, checked on the zoo after O3 (activation fusion runs in O3 and in the targets'
pipelines, not in O2, since onnxruntime fuses Conv + activation itself):

- no BatchNormalization left that could fold into the Conv/ConvTranspose/Gemm/MatMul before it;
- no Conv/ConvTranspose/Gemm left whose only reader is an activation fuse-act knows (ConvTranspose: the
  NCNN pipeline's fuse-convtranspose-act, checked with it), nor an Add (the TFLite pipeline's fuse-add-act);
- every transformer block's LayerNorm, GELU and attention one op each: no ReduceMean, Erf or Softmax left.
"""

from __future__ import annotations

import kiln
import pytest
import zoo
from kiln.passes.fusion.activation import SIMPLE_ACTIVATIONS

pytestmark = pytest.mark.slow

CNNS = ["ppocr_cls", "ppocr_det", "light_resnet50", "light_shufflenet", "light_inception_v2", "light_densenet121",
        "timm_mobilenetv3_large_100_ts", "timm_efficientnet_b0_ts", "timm_resnet50_ts", "timm_regnetx_016_ts",
        "timm_resnet50_dynamo", "timm_efficientnet_b0_dynamo"]
TRANSFORMERS = ["timm_vit_small_patch16_224_ts", "timm_vit_small_patch16_224_dynamo", "bert_tiny_ts", "bert_tiny_dynamo"]


def _optimized(name: str, pipeline: str) -> kiln.Graph:
    ok, why = zoo.available(name)
    if not ok:
        pytest.skip(why)
    feed = zoo.example_inputs(name)
    graph = kiln.load(str(zoo.get_model(name)), input_shapes={k: v.shape for k, v in feed.items()})
    kiln.optimize(graph, pipeline=pipeline)
    return graph


def _only_reader(node):
    uses = list(node.outputs[0].uses)
    return uses[0].node if len(uses) == 1 else None


@pytest.mark.parametrize("name", CNNS)
def test_cnn_after_o3_has_nothing_left_to_fuse(name: str) -> None:
    graph = _optimized(name, "O3,fuse-convtranspose-act,fuse-add-act")
    for node in graph:
        if node.op == "BatchNormalization":
            producer = node.inputs[0].producer if node.inputs[0] is not None else None
            assert producer is None or producer.op not in ("Conv", "ConvTranspose", "Gemm", "MatMul", "ConvAct"), node
        if node.domain == "" and node.op in ("Conv", "ConvTranspose", "Gemm", "Add"):
            reader = _only_reader(node)
            assert reader is None or reader.domain != "" or reader.op not in SIMPLE_ACTIVATIONS, (node, reader)


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_transformer_blocks_are_one_op_each(name: str) -> None:
    graph = _optimized(name, "O3")
    ops = [n.op_id for n in graph]
    assert "onnx.ReduceMean" not in ops and "onnx.Erf" not in ops and "onnx.Softmax" not in ops, sorted(set(ops))
    assert ops.count("kiln.Attention") >= 2
    assert ops.count("kiln.LayerNorm") + ops.count("onnx.LayerNormalization") >= 5
