"""The fp16 pass: float16 computation, float32 islands where values overflow, float32 interface."""

from __future__ import annotations

import kiln
import numpy as np
import onnxruntime as ort
from calib_models import conv_net, samples, save
from kiln.calib import CalibrationConfig
from kiln.driver.cli import main
from kiln.ir.dtypes import DType
from kiln.passmanager import PassContext, PassManager
from kiln.quant import sqnr_db
from onnx import TensorProto, helper, numpy_helper


def run(model, x):
    blob = model.SerializeToString() if hasattr(model, "SerializeToString") else kiln.to_onnx(model).SerializeToString()
    return ort.InferenceSession(blob, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_conv_net_in_half_precision():
    g = kiln.load(conv_net())
    ctx = PassContext()
    PassManager("O2,fp16").run(g, ctx)
    assert ctx.stats["fp16.nodes"] == 12
    conv = next(n for n in g if n.op == "Conv")
    assert conv.input(1).dtype == DType.FLOAT16 and conv.outputs[0].dtype == DType.FLOAT16
    assert g.inputs[0].dtype == DType.FLOAT and g.outputs[0].dtype == DType.FLOAT and g.outputs[0].name == "prob"
    x = samples(16)
    got = run(g, x)
    assert got.dtype == np.float32 and sqnr_db(run(conv_net(), x), got) > 40


def _overflowing():
    k = lambda name, v: numpy_helper.from_array(np.array(v, dtype=np.float32), name)
    nodes = [helper.make_node("Mul", ["x", "k1"], ["a"], name="up1"),
             helper.make_node("Mul", ["a", "k3"], ["b"], name="up2"),   # ~1e5: beyond float16
             helper.make_node("Mul", ["b", "k2"], ["c"], name="down"),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    return helper.make_model(helper.make_graph(
        nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [k("k1", 1000.0), k("k3", 100.0), k("k2", 1e-3)]),
        opset_imports=[helper.make_opsetid("", 13)])


def test_overflow_becomes_a_float32_island():
    x = np.random.default_rng(0).uniform(0.5, 2, (8, 4)).astype(np.float32)
    ref = run(_overflowing(), x)
    blind = kiln.load(_overflowing())
    PassManager("fp16").run(blind, PassContext())
    # Without data nothing tells that b (~1e5, float16 inf) overflows; onnxruntime's CPU kernels compute
    # float16 ops in float32 internally, so only the IR shows the difference.
    assert all(n.outputs[0].dtype == DType.FLOAT16 for n in blind if n.op == "Mul")
    g = kiln.load(_overflowing())
    ctx = PassContext(calibration=CalibrationConfig(x))
    PassManager("fp16").run(g, ctx)
    precision = {n.name: n.outputs[0].dtype for n in g if n.op != "Cast"}
    assert precision == {"up1": DType.FLOAT16, "up2": DType.FLOAT, "down": DType.FLOAT16, "relu": DType.FLOAT16}
    np.testing.assert_allclose(run(g, x), ref, rtol=2e-3)


def test_cli_fp16(tmp_path, capsys):
    model = save(conv_net(), tmp_path / "net.onnx")
    assert main(["compile", str(model), "-o", str(tmp_path / "out"), "--fp16", "-q"]) == 0
    x = samples(4)
    got = ort.InferenceSession(str(tmp_path / "out" / "net.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert sqnr_db(run(conv_net(), x), got) > 40
