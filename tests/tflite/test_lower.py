"""TFLite lowering on small nets: each compiles with ``kiln.compile(..., "tflite")`` and LiteRT matches
onnxruntime on the original; bad input fails with one clear error and writes nothing."""

from __future__ import annotations

from pathlib import Path

import kiln
import numpy as np
import onnx
import pytest
from kiln.errors import UnsupportedOpError, UsageError
from kiln.runtime.onnxruntime import run as run_ort
from nets import Net, rel_err

pytest.importorskip("ai_edge_litert.interpreter", reason="ai-edge-litert is not installed")

from kiln.runtime import litert


def _compile(model: onnx.ModelProto, tmp_path: Path, **kwargs: object) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    src = tmp_path / "net.onnx"
    onnx.save(model, src)
    result = kiln.compile(str(src), "tflite", str(tmp_path / "out"), **kwargs)  # type: ignore[arg-type]
    assert result.artifacts[0].name == "net.tflite"
    return result.artifacts[0]


def _ops(path: Path) -> list[str]:
    from ai_edge_litert import schema_py_generated as fb

    model = fb.ModelT.InitFromObj(fb.Model.GetRootAs(path.read_bytes(), 0))
    names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    return [names[codes[op.opcodeIndex]] for op in model.subgraphs[0].operators]


def _check(net: Net, outputs: list[str], tmp_path: Path, tol: float = 1e-4, **kwargs: object) -> list[str]:
    model = net.model(*outputs)
    feed = net.feed()
    path = _compile(model, tmp_path, **kwargs)
    expected = run_ort(model, feed)
    actual = litert.run(path, feed)
    for name, e in expected.items():
        assert rel_err(e, actual[name]) <= tol, name
    return _ops(path)


def test_conv_paddings_depthwise_and_fused_relu(tmp_path: Path) -> None:
    net = Net((1, 3, 13, 13))
    same = net.node("Conv", ["x", net.w((8, 3, 3, 3)), net.w((8,))], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    same = net.node("Relu", [same])
    # asymmetric pads that TensorFlow's SAME would split the other way: explicit PAD + VALID
    dw = net.node("Conv", [same, net.w((16, 1, 3, 3))], kernel_shape=[3, 3], group=8, strides=[2, 2],
                  pads=[1, 1, 0, 0])
    dw = net.node("Clip", [dw, net.const(np.array(0, np.float32)), net.const(np.array(6, np.float32))])
    grouped = net.node("Conv", [dw, net.w((8, 4, 1, 1))], kernel_shape=[1, 1], group=4)
    ops = _check(net, [grouped], tmp_path)
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "PAD"} <= set(ops)
    assert "RELU" not in ops and "RELU6" not in ops  # fused into the convolutions


def test_pools_ceil_mode_and_count_include_pad(tmp_path: Path) -> None:
    net = Net((1, 4, 11, 11))
    a = net.node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)
    b = net.node("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1])
    c = net.node("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)
    d = net.node("GlobalAveragePool", ["x"])
    ops = _check(net, [a, b, c, d], tmp_path)
    assert "TRANSPOSE" in ops  # at the boundary only: NCHW in and out


def _audio_net() -> tuple[Net, str]:
    """A 1-D network: conv+relu, depthwise conv with a residual add, max pool, SAME conv+sigmoid, avg pool."""
    net = Net((1, 4, 16))
    c1 = net.node("Relu", [net.node("Conv", ["x", net.w((8, 4, 3)), net.w((8,))], kernel_shape=[3], pads=[1, 1])])
    c2 = net.node("Conv", [c1, net.w((8, 1, 3))], kernel_shape=[3], pads=[1, 1], group=8)
    pooled = net.node("MaxPool", [net.node("Add", [c2, c1])], kernel_shape=[2], strides=[2])
    c3 = net.node("Sigmoid", [net.node("Conv", [pooled, net.w((6, 8, 5)), net.w((6,))], kernel_shape=[5],
                                       auto_pad="SAME_UPPER")])
    y = net.node("AveragePool", [c3], kernel_shape=[3], pads=[1, 1], count_include_pad=0)
    return net, y


def test_1d_convolutions_and_pools_lift_to_2d(tmp_path: Path) -> None:
    net, y = _audio_net()
    ops = _check(net, [y], tmp_path)
    assert ops.count("CONV_2D") == 2 and "DEPTHWISE_CONV_2D" in ops
    assert {"MAX_POOL_2D", "AVERAGE_POOL_2D"} <= set(ops)
    inner = ops[ops.index("CONV_2D"):len(ops) - 1 - ops[::-1].index("AVERAGE_POOL_2D")]
    assert "TRANSPOSE" not in inner  # height-1 NHWC throughout: the lifted chain needs no transpose
    assert "RELU" not in ops  # fused into the lifted CONV_2D


def test_1d_network_in_full_int8(tmp_path: Path) -> None:
    net, y = _audio_net()
    model = net.model(y)
    feed = net.feed()
    calib = np.concatenate([net.feed(seed=s)["x"] for s in range(2, 18)])
    path = _compile(model, tmp_path, int8=True, calibration=calib)
    assert "CONV_2D" in _ops(path)
    assert _sqnr(run_ort(model, feed)[y], litert.run(path, feed)[y]) > 25


@pytest.mark.parametrize("x_shape,attrs", [
    ((1, 4, 3, 9), {"strides": [1, 2], "pads": [0, 1, 0, 0], "output_padding": [0, 1]}),  # crop, then a bias column
    ((1, 4, 3, 9), {"strides": [1, 2], "output_padding": [0, 1]}),  # bias-only last column, no crop
    ((1, 4, 3, 9), {"strides": [1, 2], "pads": [0, 1, 0, 1]}),
    ((1, 4, 4, 5), {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}),
    ((1, 4, 9), {"strides": [2], "pads": [1, 0], "output_padding": [1]}),  # 1-D, lifted
])
def test_conv_transpose_pads_and_output_padding(tmp_path: Path, x_shape: tuple, attrs: dict) -> None:
    net = Net(x_shape)
    kernel = (3,) * (len(x_shape) - 2)
    y = net.node("ConvTranspose", ["x", net.w((4, 6, *kernel)), net.w((6,))], **attrs)
    assert "TRANSPOSE_CONV" in _check(net, [y], tmp_path)


def test_resize_convtranspose_concat(tmp_path: Path) -> None:
    net = Net((1, 4, 6, 6))
    t = net.node("ConvTranspose", ["x", net.w((4, 3, 3, 3)), net.w((3,))], kernel_shape=[3, 3], strides=[2, 2],
                 pads=[1, 1, 1, 1])
    n = net.node("Resize", ["x", "", net.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    lin = net.node("Resize", ["x", "", net.const(np.array([1, 1, 2, 2], np.float32))], mode="linear",
                   coordinate_transformation_mode="half_pixel")
    ac = net.node("Resize", ["x", "", "", net.const(np.array([1, 4, 11, 11], np.int64))], mode="linear",
                  coordinate_transformation_mode="align_corners")
    cat = net.node("Concat", [n, lin], axis=1)
    ops = _check(net, [t, cat, ac], tmp_path)
    assert {"TRANSPOSE_CONV", "RESIZE_NEAREST_NEIGHBOR", "RESIZE_BILINEAR", "CONCATENATION"} <= set(ops)


def test_softmax_squeezenet_axes(tmp_path: Path) -> None:
    net = Net((1, 3, 5, 5), opset=11)
    x = net.node("Conv", ["x", net.w((10, 3, 1, 1))], kernel_shape=[1, 1])
    pooled = net.node("GlobalAveragePool", [x])
    old = net.node("Softmax", [pooled], axis=1)  # over [C, 1, 1]
    spatial = net.node("Softmax", [x], axis=1)  # over C*H*W jointly (opset < 13)
    _check(net, [old, spatial], tmp_path)


def test_matmul_gemm_layernorm_slice_split_pad(tmp_path: Path) -> None:
    net = Net((1, 6, 8, 8))
    x = net.node("Conv", ["x", net.w((4, 6, 3, 3))], kernel_shape=[3, 3])
    f = net.node("Flatten", [x], axis=1)
    g = net.node("Gemm", [f, net.w((10, 144)), net.w((10,))], transB=1, alpha=0.5)
    seq = net.node("Transpose", [net.node("Reshape", [x, net.const(np.array([1, 4, 36], np.int64))])], perm=[0, 2, 1])
    ln = net.node("LayerNormalization", [seq, net.w((4,)), net.w((4,))], axis=-1)
    mm = net.node("MatMul", [ln, net.w((4, 5))])
    bmm = net.node("MatMul", [mm, net.node("Transpose", [mm], perm=[0, 2, 1])])
    sl = net.node("Slice", ["x", net.const(np.array([1, 7], np.int64)), net.const(np.array([5, 0], np.int64)),
                            net.const(np.array([1, 3], np.int64)), net.const(np.array([2, -2], np.int64))])
    a, b = net.node("Split", [sl, net.const(np.array([1, 1], np.int64))], outputs=2, axis=1)
    p = net.node("Pad", [a, net.const(np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)),
                         net.const(np.array(0.5, np.float32))])
    ops = _check(net, [g, bmm, p, b], tmp_path)
    assert {"FULLY_CONNECTED", "BATCH_MATMUL", "STRIDED_SLICE", "SPLIT_V", "PADV2"} <= set(ops)


def test_activations(tmp_path: Path) -> None:
    net = Net((1, 4, 5, 5), opset=18)  # Mish is in opset 18
    outs = [net.node(op, ["x"], **attrs) for op, attrs in [
        ("Sigmoid", {}), ("Tanh", {}), ("HardSigmoid", {"alpha": 0.2, "beta": 0.5}), ("HardSwish", {}),
        ("LeakyRelu", {"alpha": 0.1}), ("Elu", {}), ("Softplus", {}), ("Mish", {})]]
    outs.append(net.node("PRelu", ["x", net.w((4, 1, 1))]))
    outs.append(net.node("Mul", ["x", net.node("Sigmoid", ["x"])]))
    _check(net, outs, tmp_path)


def test_prelu_and_hardswish_fused_into_conv(tmp_path: Path) -> None:
    """fuse-act makes kiln.ConvAct with a PRelu slope [C, 1, 1] (NCHW broadcast) read on NHWC data."""
    net = Net((1, 3, 8, 8), opset=14)
    x = net.node("PRelu", [net.node("Conv", ["x", net.w((6, 3, 3, 3))], kernel_shape=[3, 3]), net.w((6, 1, 1))])
    y = net.node("HardSwish", [net.node("Conv", [x, net.w((6, 6, 1, 1))], kernel_shape=[1, 1])])
    assert {"PRELU", "HARD_SWISH"} <= set(_check(net, [y], tmp_path))


def _add_activations(path: Path) -> list[str]:
    """The fused_activation_function of every ADD, by name."""
    from ai_edge_litert import schema_py_generated as fb

    model = fb.ModelT.InitFromObj(fb.Model.GetRootAs(path.read_bytes(), 0))
    acts = {v: k for k, v in vars(fb.ActivationFunctionType).items() if not k.startswith("_")}
    names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    return [acts[op.builtinOptions.fusedActivationFunction] for op in model.subgraphs[0].operators
            if names[codes[op.opcodeIndex]] == "ADD"]


def test_residual_add_carries_its_activation(tmp_path: Path) -> None:
    """fuse-add-act in the target's pipeline: Relu and Relu6 after a residual Add become the ADD's fused clamp;
    a Sigmoid, which ADD cannot carry, stays an op of its own."""
    net = Net((1, 4, 6, 6))
    conv = net.node("Conv", ["x", net.w((4, 4, 3, 3))], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    relu = net.node("Relu", [net.node("Add", [conv, "x"])])
    relu6 = net.node("Clip", [net.node("Add", [relu, "x"]), net.const(np.array(0, np.float32)),
                              net.const(np.array(6, np.float32))])
    gate = net.node("Sigmoid", [net.node("Add", [relu6, conv])])
    ops = _check(net, [gate], tmp_path)
    assert "RELU" not in ops and "RELU6" not in ops and "LOGISTIC" in ops
    assert _add_activations(tmp_path / "out" / "net.tflite") == ["RELU", "RELU6", "NONE"]


def test_nhwc_io_has_no_transpose(tmp_path: Path) -> None:
    net = Net((1, 3, 8, 8))
    x = net.node("Conv", ["x", net.w((8, 3, 3, 3))], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    x = net.node("MaxPool", [net.node("Relu", [x])], kernel_shape=[2, 2], strides=[2, 2])
    ops = _check(net, [x], tmp_path, options={"nhwc_io": True})
    assert "TRANSPOSE" not in ops


def test_fp16_weights_dequantized_at_load(tmp_path: Path) -> None:
    net = Net((1, 3, 8, 8))
    x = net.node("Conv", ["x", net.w((8, 3, 3, 3)), net.w((8,))], kernel_shape=[3, 3])
    ops = _check(net, [net.node("Relu", [x])], tmp_path, tol=1e-2, fp16=True)
    assert ops.count("DEQUANTIZE") == 2  # weights and bias


def test_same_input_same_bytes(tmp_path: Path) -> None:
    net = Net((1, 3, 8, 8))
    x = net.node("Conv", ["x", net.w((8, 3, 3, 3))], kernel_shape=[3, 3])
    model = net.model(net.node("Softmax", [x], axis=1))
    first = _compile(model, tmp_path / "a").read_bytes()
    assert _compile(model, tmp_path / "b").read_bytes() == first


def test_metadata_records_the_whole_pipeline(tmp_path: Path) -> None:
    net = Net((1, 3, 8, 8))
    model = net.model(net.node("Relu", [net.node("Conv", ["x", net.w((8, 3, 3, 3))], kernel_shape=[3, 3])]))
    onnx.save(model, tmp_path / "m.onnx")
    result = kiln.compile(str(tmp_path / "m.onnx"), "tflite", str(tmp_path / "out"), level=1)
    meta = litert.read_metadata(result.artifacts[0].read_bytes())
    assert meta["kiln_pipeline"].decode() == result.pipeline
    assert meta["kiln_pipeline"].decode().startswith("O1,") and b"to-nhwc" in meta["kiln_pipeline"]


def test_unsupported_op_names_the_node_and_writes_nothing(tmp_path: Path) -> None:
    net = Net((1, 3, 8, 8))
    x = net.node("Conv", ["x", net.w((8, 3, 3, 3))], kernel_shape=[3, 3])
    values, _ = net.node("TopK", [net.node("Flatten", [x]), net.const(np.array([3], np.int64))], outputs=2)
    with pytest.raises(UnsupportedOpError, match=r"topk_\d+.*onnx.TopK"):
        _compile(net.model(values), tmp_path)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_dynamic_shape_needs_input_shape(tmp_path: Path) -> None:
    net = Net((1, 3, 8, 8))
    net.inputs[0].type.tensor_type.shape.dim[2].dim_param = "H"
    x = net.node("Conv", ["x", net.w((8, 3, 3, 3))], kernel_shape=[3, 3])
    model = net.model(x)
    with pytest.raises(UsageError, match="--input-shape"):
        _compile(model, tmp_path)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    path = _compile(model, tmp_path, input_shapes={"x": (1, 3, 8, 8)})
    assert path.exists()


def test_option_for_another_target_is_refused(tmp_path: Path) -> None:
    net = Net((1, 3, 8, 8))
    with pytest.raises(UsageError, match="no option --param-bin"):
        _compile(net.model(net.node("Relu", ["x"])), tmp_path, options={"param_bin": True})


def _sqnr(reference: np.ndarray, actual: np.ndarray) -> float:
    r, a = reference.astype(np.float64), actual.astype(np.float64)
    return float(10 * np.log10((r**2).sum() / max(((r - a) ** 2).sum(), 1e-30)))


def _int8_net() -> tuple[Net, str]:
    net = Net((1, 3, 16, 16))
    x = net.node("Conv", ["x", net.w((8, 3, 3, 3)), net.w((8,), 0.05)], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    x = net.node("Relu", [x])
    y = net.node("Conv", [x, net.w((8, 1, 3, 3)), net.w((8,), 0.05)], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                 group=8)
    y = net.node("Relu", [net.node("Add", [x, y])])
    y = net.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    y = net.node("Flatten", [net.node("GlobalAveragePool", [y])])
    return net, net.node("Gemm", [y, net.w((4, 8)), net.w((4,), 0.05)], transB=1)


@pytest.mark.parametrize("int8_io", [False, True])
def test_int8_per_channel_matches_its_qdq_graph(tmp_path: Path, int8_io: bool) -> None:
    from kiln.calib import CalibrationConfig

    net, out = _int8_net()
    model = net.model(out)
    feed = net.feed()
    src = tmp_path / "net.onnx"
    onnx.save(model, src)
    calib = CalibrationConfig(data={"x": np.random.default_rng(3).standard_normal((8, 3, 16, 16)).astype(np.float32)})
    result = kiln.compile(str(src), "tflite", str(tmp_path / "out"), int8=True, calibration=calib,
                          options={"int8_io": True} if int8_io else None)
    path = result.artifacts[0]
    actual = litert.run(path, feed)
    qdq = run_ort(kiln.to_onnx(result.graph), feed)  # the Q/DQ graph the target was handed, on onnxruntime
    expected = run_ort(model, feed)
    for name, e in expected.items():
        assert _sqnr(qdq[name], actual[name]) >= 30.0
        assert _sqnr(e, actual[name]) >= 20.0
    ops = _ops(path)
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"} <= set(ops)
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    details = {d["name"]: d for d in interpreter.get_tensor_details()}
    convs = [d for d in details.values() if d["dtype"] == np.int8 and len(d["quantization_parameters"]["scales"]) == 8]
    assert convs, "per-channel int8 weights"
    assert (interpreter.get_input_details()[0]["dtype"] == np.int8) == int8_io
    assert (ops[0] == "QUANTIZE") != int8_io  # float inputs are quantized by the first operator
