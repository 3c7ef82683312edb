"""The quantize pass's output on onnxruntime: accuracy, exactness of moved pairs, reuse, mixed precision."""

from __future__ import annotations

import kiln
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from calib_models import conv_net, one_conv, samples
from kiln.calib import CalibrationConfig, CalibrationStats, read_json
from kiln.ir import print_ir
from kiln.passmanager import PassContext, PassManager
from kiln.quant import fake_quantize, quantize_activation, sqnr_db
from onnx import TensorProto, helper, numpy_helper


def run(model, x: np.ndarray) -> np.ndarray:
    blob = model if isinstance(model, bytes) else (model.SerializeToString() if isinstance(model, onnx.ModelProto) else kiln.to_onnx(model).SerializeToString())
    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def quantized(pipeline: str, data=None, model=None) -> tuple[kiln.ir.Graph, PassContext]:
    g = kiln.load(model or conv_net())
    ctx = PassContext(calibration=data if data is not None and not isinstance(data, np.ndarray) else CalibrationConfig(samples(32) if data is None else data))
    PassManager(pipeline).run(g, ctx)
    return g, ctx


@pytest.mark.parametrize("calibrator", ["minmax", "entropy", "percentile", "mse"])
def test_quantized_model_tracks_float(calibrator):
    g, _ = quantized(f"quantize{{calibrator={calibrator}}}")
    test = samples(64, seed=7)
    ref = run(conv_net(), test)
    got = run(g, test)
    assert sqnr_db(ref, got) > 20
    assert (ref.argmax(1) == got.argmax(1)).mean() >= 0.9


def test_matches_a_numpy_simulation():
    """Conv -> Relu with Q/DQ equals numpy's fake quantization of input and weights, then float conv."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 2, 1, 1)).astype(np.float32)
    model = one_conv(w)
    data = rng.standard_normal((8, 2, 3, 3)).astype(np.float32)
    g, ctx = quantized("quantize{calibrator=minmax}", data, model)
    scale = ctx.extra["calibration"].ranges["x"].scale
    assert scale == pytest.approx(np.abs(data).max() / 127, rel=1e-6)
    x = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    xq = quantize_activation(x, np.float32(scale))
    wq = fake_quantize(w, 0)
    want = np.einsum("nchw,oc->nohw", xq, wq[:, :, 0, 0])
    np.testing.assert_allclose(run(g, x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op,attrs,shape_in,extra", [
    ("Relu", {}, [2, 3, 4, 4], []),
    ("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2]}, [2, 3, 4, 4], []),
    ("Transpose", {"perm": [0, 2, 3, 1]}, [2, 3, 4, 4], []),
    ("Reshape", {}, [2, 3, 4, 4], [np.array([2, -1], dtype=np.int64)]),
    ("Flatten", {"axis": 1}, [2, 3, 4, 4], []),
    ("Squeeze", {}, [2, 1, 4, 4], [np.array([1], dtype=np.int64)]),
    ("Unsqueeze", {}, [2, 3, 4, 4], [np.array([0], dtype=np.int64)]),
])
def test_moving_a_pair_through_an_op_is_exact(op, attrs, shape_in, extra):
    """op(DQ(Q(x))) == DQ(Q(op(x))) bit for bit on onnxruntime, for a per-tensor scale and zero point 0."""
    inits = [numpy_helper.from_array(np.array(0.0371, dtype=np.float32), "s"),
             numpy_helper.from_array(np.array(0, dtype=np.int8), "z")]
    extra_names = []
    for i, arr in enumerate(extra):
        inits.append(numpy_helper.from_array(arr, f"e{i}"))
        extra_names.append(f"e{i}")
    qdq = lambda a, b: [helper.make_node("QuantizeLinear", [a, "s", "z"], [a + "_q"]),
                        helper.make_node("DequantizeLinear", [a + "_q", "s", "z"], [b])]
    before = qdq("x", "xd") + [helper.make_node(op, ["xd", *extra_names], ["y"], **attrs)]
    after = [helper.make_node(op, ["x", *extra_names], ["t"], **attrs)] + qdq("t", "y")
    x = (np.random.default_rng(1).standard_normal(shape_in) * 3).astype(np.float32)
    outs = []
    for nodes in (before, after):
        graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape_in)],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
        outs.append(run(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), x))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_table_reuse_gives_the_same_model(tmp_path):
    g1, ctx = quantized("quantize{calibrator=entropy}")
    path = tmp_path / "t.calib.json"
    path.write_text(ctx.extra["calibration"].to_json())
    g2, _ = quantized("quantize{calibrator=entropy}", read_json(path))
    assert print_ir(g1) == print_ir(g2)
    stats = ctx.extra["calibration_stats"]
    assert isinstance(stats, CalibrationStats)
    g3, _ = quantized("quantize{calibrator=entropy}", stats)
    assert print_ir(g3) == print_ir(g1)


def test_table_for_another_model_is_refused():
    from kiln.calib import CalibrationResult

    with pytest.raises(kiln.errors.KilnError, match="no range for tensor"):
        quantized("quantize", CalibrationResult("entropy", 1))


def test_deterministic():
    a, _ = quantized("O2,quantize{calibrator=mse}")
    b, _ = quantized("O2,quantize{calibrator=mse}")
    assert kiln.to_onnx(a).SerializeToString() == kiln.to_onnx(b).SerializeToString()


def test_keep_float_keeps_the_most_sensitive_layers():
    g, ctx = quantized("quantize{calibrator=minmax keep-float=2 sensitivity-samples=8}")
    result = ctx.extra["calibration"]
    assert len(result.sensitivity) == 7 and len(result.kept_float) == 2
    worst = sorted(result.sensitivity, key=result.sensitivity.get)[:2]
    assert result.kept_float == worst
    assert set(worst).isdisjoint(result.layers)
    full, _ = quantized("quantize{calibrator=minmax}")
    test = samples(64, seed=9)
    ref = run(conv_net(), test)
    assert sqnr_db(ref, run(g, test)) >= sqnr_db(ref, run(full, test)) - 0.5


def test_keep_float_needs_data(tmp_path):
    _, ctx = quantized("quantize")
    with pytest.raises(kiln.errors.KilnError, match="calibration table is not enough"):
        quantized("quantize{keep-float=1}", ctx.extra["calibration"])


def test_bad_options():
    with pytest.raises(kiln.errors.KilnError, match="unknown calibrator"):
        quantized("quantize{calibrator=kl}")
    with pytest.raises(kiln.errors.KilnError, match="needs calibration data"):
        PassManager("quantize").run(kiln.load(conv_net()), PassContext())
