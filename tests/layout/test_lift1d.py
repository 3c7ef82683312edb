"""``lift-1d``: 1-D convolutions and pools become 2-D ones over a height of 1, exactly (onnxruntime on both)."""

from __future__ import annotations

import kiln
import numpy as np
import pytest
from kiln.runtime.onnxruntime import run
from nets import Net, rel_err


def _lifted(net: Net, outputs: list[str], pipeline: str = "lift-1d,remove-noops,dce") -> kiln.ir.Graph:
    model = net.model(*outputs)
    feed = net.feed()
    graph = kiln.load(model)
    kiln.optimize(graph, pipeline=pipeline)
    expected, actual = run(model, feed), run(kiln.to_onnx(graph), feed)
    for name, e in expected.items():
        assert rel_err(e, actual[name]) <= 1e-5, name
    return graph


def _spatial_ranks(graph: kiln.ir.Graph) -> list[int]:
    return [len(n.attr("kernel_shape")) for n in graph if n.attr("kernel_shape") is not None]


@pytest.mark.parametrize("op,attrs,weight", [
    ("Conv", {"kernel_shape": [3], "pads": [2, 1], "strides": [2], "dilations": [2]}, (6, 4, 3)),
    ("Conv", {"kernel_shape": [3], "auto_pad": "SAME_LOWER", "group": 2}, (6, 2, 3)),
    ("ConvTranspose", {"kernel_shape": [3], "strides": [2], "pads": [1, 0], "output_padding": [1]}, (4, 3, 3)),
    ("MaxPool", {"kernel_shape": [3], "strides": [2], "ceil_mode": 1}, None),
    ("AveragePool", {"kernel_shape": [2], "pads": [1, 0], "count_include_pad": 1}, None),
    ("LpPool", {"kernel_shape": [3], "p": 2}, None),
])
def test_each_op_lifts_exactly(op, attrs, weight):
    net = Net((1, 4, 13))
    inputs = ["x"] + ([net.w(weight)] if weight else [])
    graph = _lifted(net, [net.node(op, inputs, **attrs)])
    assert _spatial_ranks(graph) == [2]


def test_a_chain_keeps_no_reshape_pairs_between_lifted_ops():
    net = Net((1, 4, 16))
    a = net.node("Conv", ["x", net.w((8, 4, 3))], kernel_shape=[3], pads=[1, 1])
    b = net.node("MaxPool", [a], kernel_shape=[2], strides=[2])
    c = net.node("Conv", [b, net.w((8, 1, 3))], kernel_shape=[3], group=8)
    graph = _lifted(net, [c])
    assert [n.op for n in graph] == ["Reshape", "Conv", "MaxPool", "Conv", "Reshape"]


def test_quantized_weight_lifts_with_its_scales():
    net = Net((1, 4, 16))
    y = net.node("Conv", ["x", net.w((8, 4, 3)), net.w((8,))], kernel_shape=[3], pads=[1, 1])
    model = net.model(y)
    graph = kiln.load(model)
    calib = np.concatenate([net.feed(seed=s)["x"] for s in range(2, 10)])
    ctx = kiln.PassContext(calibration=calib)
    kiln.optimize(graph, pipeline="quantize{report=false},lift-1d,dce", ctx=ctx)
    dq = [n for n in graph if n.op == "DequantizeLinear" and n.input(0).is_constant]
    assert len(dq) == 1 and dq[0].input(0).numpy().shape == (8, 4, 1, 3) and dq[0].attr("axis") == 0
    quantized_ref = kiln.load(model)
    kiln.optimize(quantized_ref, pipeline="quantize{report=false}", ctx=kiln.PassContext(calibration=calib))
    feed = net.feed()
    got, want = run(kiln.to_onnx(graph), feed)[y], run(kiln.to_onnx(quantized_ref), feed)[y]
    assert rel_err(want, got) <= 1e-5


def test_dynamic_width_and_2d_ops_are_left_alone():
    net = Net((1, 4, 6, 6))
    y = net.node("Conv", ["x", net.w((4, 4, 3, 3))], kernel_shape=[3, 3])
    graph = _lifted(net, [y])
    assert _spatial_ranks(graph) == [2] and [n.op for n in graph] == ["Conv"]
    dynamic = Net((1, 4, "W"))
    z = dynamic.node("Conv", ["x", dynamic.w((4, 4, 3))], kernel_shape=[3])
    graph = kiln.load(dynamic.model(z))
    kiln.optimize(graph, pipeline="lift-1d")
    assert _spatial_ranks(graph) == [1]


def test_fused_prelu_slope_broadcasts_over_the_new_height():
    net = Net((1, 4, 12))
    c = net.node("Conv", ["x", net.w((6, 4, 3)), net.w((6,))], kernel_shape=[3], pads=[1, 1])
    y = net.node("PRelu", [c, net.const(np.abs(np.random.default_rng(3).standard_normal((6, 1))).astype(np.float32))])
    graph = _lifted(net, [y], pipeline="target-fusions,lift-1d,remove-noops,dce")
    assert [n.op for n in graph].count("ConvAct") == 1 and _spatial_ranks(graph) == [2]
