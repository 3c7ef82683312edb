"""Q/DQ placement (TensorRT's explicit-quantization rules), checked in the IR."""

from __future__ import annotations

import kiln
import numpy as np
from calib_models import conv_net, samples
from kiln.calib import CalibrationConfig
from kiln.ir.core import Graph, Value
from kiln.passes.quantize.placement import plan_quantization
from kiln.passmanager import PassContext, PassManager
from onnx import TensorProto, helper, numpy_helper


def quantize(graph: Graph, pipeline: str = "quantize{calibrator=minmax}", data=None) -> PassContext:
    ctx = PassContext(calibration=CalibrationConfig(samples(8) if data is None else data))
    PassManager(pipeline).run(graph, ctx)
    return ctx


def pair_of(v: Value) -> Value | None:
    """The DequantizeLinear output of ``v``'s Q/DQ pair, if it has one."""
    for node in v.users():
        if node.op == "QuantizeLinear":
            return node.outputs[0].users()[0].outputs[0]
    return None


def reads(graph: Graph, node_name: str) -> list[str]:
    node = layer(graph, node_name)
    return [v.name if v is not None else "" for v in node.inputs]


def layer(graph: Graph, node_name: str):
    return next(n for n in graph if (n.name == node_name or n.loc.name == node_name) and n.op not in ("QuantizeLinear", "DequantizeLinear"))


def weight_dq(graph: Graph, node_name: str, index: int = 1):
    node = layer(graph, node_name)
    dq = node.input(index).producer
    assert dq is not None and dq.op == "DequantizeLinear"
    return dq


def test_conv_net_placement():
    g = kiln.load(conv_net())
    ctx = quantize(g)
    quantized = {n.input(0).name for n in g if n.op == "QuantizeLinear"}
    # x (conv1), r1 (MaxPool input; MaxPool's output p1 shares it), c2 (residual Add), r2 (pooling),
    # g1 (Concat's input moved up through Transpose), t1 (Gemm's input moved up through Reshape).
    assert quantized == {"x", "r1", "c2", "r2", "g1", "t1"}
    assert ctx.stats["quantize.moved"] == 3
    assert reads(g, "conv1")[0] == pair_of(g.value_by_name()["x"]).name
    assert reads(g, "pool1")[0] == pair_of(g.value_by_name()["r1"]).name
    assert reads(g, "conv2")[0] == "p1" and reads(g, "add1") == [pair_of(g.value_by_name()["c2"]).name, "p1"]
    assert reads(g, "softmax") == ["logits"]  # never quantized
    assert [o.name for o in g.outputs] == ["prob"]
    # Weights: int8 constants, per output channel, zero points int8 zeros.
    for layer, axis, channels in (("conv1", 0, 8), ("conv2", 0, 8), ("fc", 1, 10)):
        dq = weight_dq(g, layer)
        q, scale, zp = (v.numpy() for v in dq.inputs)
        assert q.dtype == np.int8 and np.abs(q).max() == 127 and dq.attr("axis") == axis
        assert scale.shape == (channels,) and zp.dtype == np.int8 and not zp.any()
    # The float weights are gone; biases stay float.
    assert {"w1", "w2", "fc_w"}.isdisjoint(g.constants) and "b1" in g.constants
    result = ctx.extra["calibration"]
    assert set(result.weights) == {"w1", "w2", "fc_w"} and result.layers["conv1"].inputs == ("x",)


def test_weights_quantize_exactly():
    model = conv_net()
    w1 = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w1"))
    g = kiln.load(model)
    quantize(g)
    q, scale, _ = (v.numpy() for v in weight_dq(g, "conv1").inputs)
    np.testing.assert_allclose(scale, np.abs(w1).reshape(8, -1).max(axis=1) / 127, rtol=1e-6)
    np.testing.assert_array_equal(q, np.clip(np.rint(w1 / scale[:, None, None, None]), -127, 127))


def test_no_moving():
    g = kiln.load(conv_net())
    ctx = quantize(g, "quantize{calibrator=minmax move=false}")
    quantized = {n.input(0).name for n in g if n.op == "QuantizeLinear"}
    assert quantized == {"x", "r1", "p1", "c2", "r2", "t0", "f1"}
    assert "quantize.moved" not in ctx.stats


def test_skip_layers_and_ops():
    g = kiln.load(conv_net())
    ctx = quantize(g, "quantize{calibrator=minmax skip-layers=conv2,fc skip-ops=Concat}")
    assert reads(g, "conv2")[1] == "w2" and reads(g, "fc")[1] == "fc_w"  # float weights kept
    quantized = {n.input(0).name for n in g if n.op == "QuantizeLinear"}
    # c2 is still quantized (the residual Add reads it); p1 gets its own pair, since conv2 reads it in float.
    assert quantized == {"x", "r1", "p1", "c2", "r2"}
    assert set(ctx.extra["calibration"].skipped) == {"conv2", "fc", "concat1"}


def _model(nodes, inits, inputs, outputs, opset=13):
    graph = helper.make_graph(nodes, "m", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def test_gemm_matmul_convtranspose_axes():
    rng = np.random.default_rng(0)
    f = TensorProto.FLOAT
    model = _model(
        [
            helper.make_node("Gemm", ["x", "wt"], ["a"], name="gemm_t", transB=1),
            helper.make_node("MatMul", ["a", "wm"], ["b"], name="matmul_w"),
            helper.make_node("Reshape", ["b", "shape"], ["c4"], name="to4d"),
            helper.make_node("ConvTranspose", ["c4", "wd"], ["y"], name="deconv"),
        ],
        [
            numpy_helper.from_array(rng.standard_normal((6, 4)).astype(np.float32), "wt"),
            numpy_helper.from_array(rng.standard_normal((6, 5)).astype(np.float32), "wm"),
            numpy_helper.from_array(np.array([1, 2, 5, 1], dtype=np.int64), "shape"),
            numpy_helper.from_array(rng.standard_normal((2, 3, 2, 2)).astype(np.float32), "wd"),
        ],
        [helper.make_tensor_value_info("x", f, [2, 4])],
        [helper.make_tensor_value_info("y", f, [1, 3, 6, 2])],
    )
    g = kiln.load(model)
    plan = plan_quantization(g)
    by_name = {layer.name: layer for layer in plan.layers}
    assert by_name["gemm_t"].weights[0].axis == 0  # B is [N, K] with transB
    assert by_name["matmul_w"].weights[0].axis == 1
    assert by_name["deconv"].weights[0].axis == 1  # ConvTranspose W is [C_in, C_out/g, k, k]
    ctx = PassContext(calibration=CalibrationConfig(rng.standard_normal((6, 4)).astype(np.float32)))
    PassManager("quantize").run(g, ctx)
    assert ctx.stats["quantize.weights"] == 3 and ctx.extra["calibration"].samples == 6  # 3 batches of the fixed 2


def test_matmul_of_two_activations():
    f = TensorProto.FLOAT
    model = _model(
        [helper.make_node("MatMul", ["a", "b"], ["c"], name="attn")], [],
        [helper.make_tensor_value_info("a", f, ["N", 3, 4]), helper.make_tensor_value_info("b", f, ["N", 4, 5])],
        [helper.make_tensor_value_info("c", f, ["N", 3, 5])],
    )
    g = kiln.load(model)
    rng = np.random.default_rng(1)
    quantize(g, data={"a": rng.standard_normal((4, 3, 4)), "b": rng.standard_normal((4, 4, 5))})
    assert {n.input(0).name for n in g if n.op == "QuantizeLinear"} == {"a", "b"}


def test_add_of_constant_is_not_residual():
    f = TensorProto.FLOAT
    model = _model(
        [helper.make_node("Add", ["x", "k"], ["y"], name="add_const"), helper.make_node("Add", ["y", "y"], ["z"], name="double")],
        [numpy_helper.from_array(np.ones(3, np.float32), "k")],
        [helper.make_tensor_value_info("x", f, ["N", 3])],
        [helper.make_tensor_value_info("z", f, ["N", 3])],
    )
    assert plan_quantization(kiln.load(model)).layers == []
