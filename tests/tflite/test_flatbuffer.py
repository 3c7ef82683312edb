"""ModelBuilder: hand-built models run on LiteRT and agree with numpy; the file's structure is right."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert.interpreter", reason="ai-edge-litert is not installed")

from ai_edge_litert import schema_py_generated as fb
from kiln.codegen.tflite import flatbuffer
from kiln.codegen.tflite.flatbuffer import ModelBuilder, Quant
from kiln.runtime import litert

RNG = np.random.default_rng(7)


@pytest.fixture(autouse=True)
def _no_runtime_warnings(capfd: pytest.CaptureFixture[str]):
    """LiteRT must load and run every file without a warning or error on stderr."""
    yield
    err = capfd.readouterr().err
    assert not [line for line in err.splitlines() if "WARN" in line.upper() or "ERROR" in line.upper()], err


def _run(tmp_path: Path, data: bytes, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    path = tmp_path / "m.tflite"
    path.write_bytes(data)
    return litert.run(path, inputs)


def _conv_ref(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int = 1, pad: int = 0) -> np.ndarray:
    """NHWC input, OHWI filter."""
    x = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = w.shape[1:3]
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::stride, ::stride]
    return np.einsum("nhwcij,oijc->nhwo", win, w.astype(np.float64)) + b


def _model(data: bytes) -> fb.Model:
    return fb.Model.GetRootAs(data, 0)


def _opcodes(data: bytes) -> dict[int, tuple[int, int]]:
    """builtin code -> (deprecated code, version)."""
    m = _model(data)
    codes = [m.OperatorCodes(i) for i in range(m.OperatorCodesLength())]
    return {c.BuiltinCode(): (c.DeprecatedBuiltinCode(), c.Version()) for c in codes}


def _conv_relu_model(w: np.ndarray, b: np.ndarray, metadata: dict[str, str] | None = None) -> bytes:
    builder = ModelBuilder("kiln test", metadata=metadata)
    x = builder.add_tensor("x", (1, 6, 6, 3), "float32")
    wt = builder.add_tensor("w", w.shape, "float32", data=w)
    bt = builder.add_tensor("b", b.shape, np.float32, data=b)
    c = builder.add_tensor("c", (1, 6, 6, 4), "float32")
    y = builder.add_tensor("y", (1, 6, 6, 4), "float32")
    builder.add_operator("CONV_2D", [x, wt, bt], [c], {"padding": "SAME"})
    builder.add_operator("RELU", [c], [y])
    builder.set_io([x], [y], ["input.1"], ["relu_out"])
    return builder.finish()


def test_conv_relu_matches_numpy(tmp_path: Path) -> None:
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(4).astype(np.float32)
    x = RNG.standard_normal((1, 6, 6, 3)).astype(np.float32)
    got = _run(tmp_path, _conv_relu_model(w, b), {"input.1": x})["relu_out"]
    np.testing.assert_allclose(got, np.maximum(_conv_ref(x, w, b, pad=1), 0), rtol=1e-4, atol=1e-4)


def test_strided_valid_depthwise_and_pool(tmp_path: Path) -> None:
    w = RNG.standard_normal((1, 3, 3, 4)).astype(np.float32)  # depthwise: 1HW(C*M)
    b = np.zeros(4, np.float32)
    builder = ModelBuilder()
    x = builder.add_tensor("x", (1, 9, 9, 4), "float32")
    wt = builder.add_tensor("w", w.shape, "float32", data=w)
    bt = builder.add_tensor("b", (4,), "float32", data=b)
    d = builder.add_tensor("d", (1, 4, 4, 4), "float32")
    p = builder.add_tensor("p", (1, 2, 2, 4), "float32")
    builder.add_operator("DEPTHWISE_CONV_2D", [x, wt, bt], [d],
                         {"padding": "VALID", "stride_w": 2, "stride_h": 2, "depth_multiplier": 1})
    builder.add_operator("MAX_POOL_2D", [d], [p], {"padding": "VALID", "stride_w": 2, "stride_h": 2,
                                                   "filter_width": 2, "filter_height": 2})
    builder.set_io([x], [p], ["x"], ["p"])
    xv = RNG.standard_normal((1, 9, 9, 4)).astype(np.float32)
    got = _run(tmp_path, builder.finish(), {"x": xv})["p"]
    win = np.lib.stride_tricks.sliding_window_view(xv, (3, 3), axis=(1, 2))[:, ::2, ::2]
    dw = np.einsum("nhwcij,ijc->nhwc", win, w[0])
    ref = dw.reshape(1, 2, 2, 2, 2, 4).max(axis=(2, 4))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_add_fused_activation_broadcast(tmp_path: Path) -> None:
    builder = ModelBuilder()
    a = builder.add_tensor("a", (1, 4, 4, 8), "float32")
    c = builder.add_tensor("c", (8,), "float32", data=np.linspace(-3, 3, 8, dtype=np.float32))
    y = builder.add_tensor("y", (1, 4, 4, 8), "float32")
    builder.add_operator("ADD", [a, c], [y], {"fused_activation_function": "RELU6"})
    builder.set_io([a], [y], ["a"], ["y"])
    av = (RNG.standard_normal((1, 4, 4, 8)) * 4).astype(np.float32)
    got = _run(tmp_path, builder.finish(), {"a": av})["y"]
    np.testing.assert_allclose(got, np.clip(av + np.linspace(-3, 3, 8), 0, 6), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bias", ["none", "absent", "given"])
def test_fully_connected(tmp_path: Path, bias: str) -> None:
    w = RNG.standard_normal((5, 12)).astype(np.float32)
    b = RNG.standard_normal(5).astype(np.float32)
    builder = ModelBuilder()
    x = builder.add_tensor("x", (2, 12), "float32")
    wt = builder.add_tensor("w", w.shape, "float32", data=w)
    bias_slot = {"none": [], "absent": [-1], "given": [builder.add_tensor("b", (5,), "float32", data=b)]}
    ins = [x, wt] + bias_slot[bias]
    y = builder.add_tensor("y", (2, 5), "float32")
    builder.add_operator("FULLY_CONNECTED", ins, [y])
    builder.set_io([x], [y], ["x"], ["y"])
    data = builder.finish()
    xv = RNG.standard_normal((2, 12)).astype(np.float32)
    ref = xv @ w.T + (b if bias == "given" else 0)
    np.testing.assert_allclose(_run(tmp_path, data, {"x": xv})["y"], ref, rtol=1e-4, atol=1e-4)
    # Two operands (no bias slot at all) needs version 6; an absent (-1) bias is version 1.
    assert _opcodes(data)[fb.BuiltinOperator.FULLY_CONNECTED][1] == (6 if bias == "none" else 1)


def test_int8_per_channel_conv(tmp_path: Path) -> None:
    """QUANTIZE -> int8 CONV_2D (per-channel weights, int32 bias) -> DEQUANTIZE, against float numpy."""
    spread = np.linspace(0.1, 2, 6, dtype=np.float32)[:, None, None, None]  # channels of different ranges
    w = RNG.standard_normal((6, 3, 3, 4)).astype(np.float32) * spread
    b = RNG.standard_normal(6).astype(np.float32)
    x = RNG.uniform(-1, 1, (1, 5, 5, 4)).astype(np.float32)
    sx, zx = 2 / 255, -1
    sw = np.abs(w).reshape(6, -1).max(axis=1) / 127
    wq = np.round(w / sw[:, None, None, None]).astype(np.int8)
    bq = np.round(b / (sx * sw)).astype(np.int32)
    xq_f = (np.clip(np.round(x / sx) + zx, -128, 127) - zx) * sx
    ref = np.maximum(_conv_ref(xq_f, wq * sw[:, None, None, None], bq * sx * sw, pad=1), 0)
    so = float(ref.max()) / 255
    zo = -128

    builder = ModelBuilder()
    xt = builder.add_tensor("x", x.shape, "float32")
    xq = builder.add_tensor("xq", x.shape, "int8", quant=Quant(np.array([sx]), np.array([zx])))
    wt = builder.add_tensor("w", wq.shape, "int8", data=wq, quant=Quant(sw, np.zeros(6, np.int64), 0))
    bt = builder.add_tensor("b", (6,), "int32", data=bq, quant=Quant(sx * sw, np.zeros(6, np.int64), 0))
    yq = builder.add_tensor("yq", (1, 5, 5, 6), "int8", quant=Quant(np.array([so]), np.array([zo])))
    y = builder.add_tensor("y", (1, 5, 5, 6), "float32")
    builder.add_operator("QUANTIZE", [xt], [xq])
    builder.add_operator("CONV_2D", [xq, wt, bt], [yq],
                         {"padding": "SAME", "fused_activation_function": "RELU"})
    builder.add_operator("DEQUANTIZE", [yq], [y])
    builder.set_io([xt], [y], ["x"], ["y"])
    data = builder.finish()
    got = _run(tmp_path, data, {"x": x})["y"]
    assert np.abs(got - ref).max() <= 1.01 * so
    codes = _opcodes(data)
    assert codes[fb.BuiltinOperator.CONV_2D][1] == 3
    assert codes[fb.BuiltinOperator.QUANTIZE][1] == 1
    assert codes[fb.BuiltinOperator.DEQUANTIZE][1] == 2
    tensor = _model(data).Subgraphs(0).Tensors(wt)
    assert tensor.Quantization().ScaleLength() == 6 and tensor.Quantization().QuantizedDimension() == 0


def test_float16_weights_dequantized(tmp_path: Path) -> None:
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float16)
    b = RNG.standard_normal(4).astype(np.float16)
    builder = ModelBuilder()
    x = builder.add_tensor("x", (1, 6, 6, 3), "float32")
    w16 = builder.add_tensor("w16", w.shape, "float16", data=w)
    b16 = builder.add_tensor("b16", b.shape, "float16", data=b)
    w32 = builder.add_tensor("w", w.shape, "float32")
    b32 = builder.add_tensor("b", b.shape, "float32")
    y = builder.add_tensor("y", (1, 6, 6, 4), "float32")
    builder.add_operator("DEQUANTIZE", [w16], [w32])
    builder.add_operator("DEQUANTIZE", [b16], [b32])
    builder.add_operator("CONV_2D", [x, w32, b32], [y], {"padding": "SAME"})
    builder.set_io([x], [y], ["x"], ["y"])
    data = builder.finish()
    xv = RNG.standard_normal((1, 6, 6, 3)).astype(np.float32)
    ref = _conv_ref(xv, w.astype(np.float32), b.astype(np.float32), pad=1)
    np.testing.assert_allclose(_run(tmp_path, data, {"x": xv})["y"], ref, rtol=1e-4, atol=1e-4)
    assert _opcodes(data)[fb.BuiltinOperator.DEQUANTIZE][1] == 3
    assert _model(data).Subgraphs(0).Tensors(w16).Type() == fb.TensorType.FLOAT16


def test_opcode_past_127_and_softmax_default_beta(tmp_path: Path) -> None:
    builder = ModelBuilder()
    x = builder.add_tensor("x", (2, 6), "float32")
    g = builder.add_tensor("g", (2, 6), "float32")
    s = builder.add_tensor("s", (2, 6), "float32")
    builder.add_operator("GELU", [x], [g], {"approximate": False})
    builder.add_operator("SOFTMAX", [g], [s])
    builder.set_io([x], [s], ["x"], ["s"])
    data = builder.finish()
    gelu_code = fb.BuiltinOperator.GELU
    assert gelu_code > 127 and _opcodes(data)[gelu_code][0] == 127
    assert _opcodes(data)[fb.BuiltinOperator.SOFTMAX][0] == fb.BuiltinOperator.SOFTMAX
    xv = RNG.standard_normal((2, 6)).astype(np.float32)
    gelu = xv * 0.5 * (1 + np.vectorize(math.erf)(xv / math.sqrt(2)))
    e = np.exp(gelu - gelu.max(axis=1, keepdims=True))
    want = e / e.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(_run(tmp_path, data, {"x": xv})["s"], want, rtol=1e-4, atol=1e-5)


def test_buffers_deduplicated_and_aligned() -> None:
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    builder = ModelBuilder(metadata={"a": "x"})
    for i in range(3):
        builder.add_tensor(f"w{i}", w.shape, "float32", data=w.copy())
    builder.add_tensor("as_int", w.shape, "int32", data=w.view(np.int32))  # same bytes, other dtype
    builder.add_tensor("other", (3,), "int8", data=np.array([1, 2, 3]))
    builder.add_tensor("odd", (5,), "uint8", data=np.arange(5))
    x = builder.add_tensor("x", (1,), "float32")
    builder.set_io([x], [x], ["x"], ["x"])
    data = builder.finish()
    model = _model(data)
    graph = model.Subgraphs(0)
    assert {graph.Tensors(i).Buffer() for i in range(4)} == {graph.Tensors(0).Buffer()}
    assert graph.Tensors(6).Buffer() == 0 and model.Buffers(0).DataLength() == 0
    # empty + weights + int8 + uint8 + one metadata buffer
    assert model.BuffersLength() == 5
    for i in range(1, model.BuffersLength()):
        tab = model.Buffers(i)._tab
        start = tab.Vector(tab.Offset(4))
        assert start % flatbuffer.ALIGNMENT == 0, f"buffer {i} data at {start}"
    assert bytes(model.Buffers(1).DataAsNumpy()) == w.tobytes()


def test_rebuild_is_byte_identical_and_metadata_readable() -> None:
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = np.zeros(4, np.float32)
    meta = {"kiln_version": "0.1.0", "kiln_pipeline": "O2,tflite-layout"}
    first = _conv_relu_model(w, b, meta)
    assert first == _conv_relu_model(w, b, dict(reversed(list(meta.items()))))
    assert first[4:8] == b"TFL3"
    model = _model(first)
    assert model.Version() == 3 and model.Description() == b"kiln test"
    assert litert.read_metadata(first) == {k: v.encode() for k, v in meta.items()}
    sig = model.SignatureDefs(0)
    assert sig.SignatureKey() == b"serving_default"
    assert [sig.Inputs(0).Name(), sig.Outputs(0).Name()] == [b"input.1", b"relu_out"]
    assert model.SignatureDefsLength() == 1


def test_opcodes_shared_with_highest_version() -> None:
    builder = ModelBuilder()
    f = builder.add_tensor("f", (1, 4, 4, 2), "float32")
    q = Quant(np.array([0.1]), np.array([0]))
    i8 = builder.add_tensor("i", (1, 4, 4, 2), "int8", quant=q)
    f2 = builder.add_tensor("f2", (1, 4, 4, 2), "float32")
    i2 = builder.add_tensor("i2", (1, 4, 4, 2), "int8", quant=q)
    builder.add_operator("RELU", [f], [f2])
    builder.add_operator("RELU", [i8], [i2])
    builder.add_operator("RELU", [f2], [f])
    builder.set_io([f], [i2], ["f"], ["i2"])
    model = _model(builder.finish())
    assert model.OperatorCodesLength() == 1 and model.OperatorCodes(0).Version() == 2
    assert all(model.Subgraphs(0).Operators(k).OpcodeIndex() == 0 for k in range(3))


def test_out_of_line_buffers_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past INLINE_LIMIT the data follows the flatbuffer (Buffer.offset/size); LiteRT reads it so."""
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(4).astype(np.float32)
    inline = _conv_relu_model(w, b, {"kiln_version": "0"})
    monkeypatch.setattr(flatbuffer, "INLINE_LIMIT", 0)
    data = _conv_relu_model(w, b, {"kiln_version": "0"})
    model = _model(data)
    offsets = [model.Buffers(i).Offset() for i in range(1, model.BuffersLength())]
    assert all(o > 1 and o % flatbuffer.ALIGNMENT == 0 for o in offsets)
    assert model.Buffers(1).DataLength() == 0
    assert data[offsets[0] : offsets[0] + w.nbytes] == w.tobytes()
    assert litert.read_metadata(data) == {"kiln_version": b"0"}
    x = RNG.standard_normal((1, 6, 6, 3)).astype(np.float32)
    want = _run(tmp_path, inline, {"input.1": x})["relu_out"]
    np.testing.assert_array_equal(_run(tmp_path, data, {"input.1": x})["relu_out"], want)


def test_misuse_is_reported() -> None:
    builder = ModelBuilder()
    x = builder.add_tensor("x", (2,), "float32")
    with pytest.raises(ValueError, match="not a TFLite builtin"):
        builder.add_operator("CONV_3D_FANCY", [x], [x])
    with pytest.raises(ValueError, match="no field 'strides'.*stride_h"):
        builder.add_operator("CONV_2D", [x, x, -1], [x], {"strides": 2})
    with pytest.raises(ValueError, match="'SAMEISH' is not one of"):
        builder.add_operator("CONV_2D", [x, x, -1], [x], {"padding": "SAMEISH"})
    with pytest.raises(ValueError, match="takes no options"):
        builder.add_operator("RELU", [x], [x], {"alpha": 1})
    with pytest.raises(ValueError, match="index 5 does not exist"):
        builder.add_operator("RELU", [5], [x])
    with pytest.raises(ValueError, match="float64"):
        builder.add_tensor("d", (1,), "float64")
    with pytest.raises(ValueError, match="3 values for shape"):
        builder.add_tensor("d", (2,), "float32", data=[1, 2, 3])


def test_option_enums_and_types_by_name() -> None:
    builder = ModelBuilder()
    x = builder.add_tensor("x", (2,), "float32")
    y = builder.add_tensor("y", (2,), "int32")
    builder.add_operator("CAST", [x], [y], {"in_data_type": "float32", "out_data_type": np.int32})
    builder.set_io([x], [y], ["x"], ["y"])
    op = _model(builder.finish()).Subgraphs(0).Operators(0)
    assert op.BuiltinOptionsType() == fb.BuiltinOptions.CastOptions
    table = fb.CastOptions()
    table.Init(op.BuiltinOptions().Bytes, op.BuiltinOptions().Pos)
    assert (table.InDataType(), table.OutDataType()) == (fb.TensorType.FLOAT32, fb.TensorType.INT32)


def test_transpose_conv_operand_order(tmp_path: Path) -> None:
    """TRANSPOSE_CONV takes (output_shape, weights OHWI, input, bias); stride 2 VALID grows 3 -> 7."""
    w = RNG.standard_normal((2, 3, 3, 4)).astype(np.float32)
    bias = RNG.standard_normal(2).astype(np.float32)
    builder = ModelBuilder()
    shape = builder.add_tensor("shape", (4,), "int32", data=[1, 7, 7, 2])
    wt = builder.add_tensor("w", w.shape, "float32", data=w)
    x = builder.add_tensor("x", (1, 3, 3, 4), "float32")
    bt = builder.add_tensor("b", (2,), "float32", data=bias)
    y = builder.add_tensor("y", (1, 7, 7, 2), "float32")
    builder.add_operator("TRANSPOSE_CONV", [shape, wt, x, bt], [y],
                         {"padding": "VALID", "stride_w": 2, "stride_h": 2,
                          "fused_activation_function": "NONE"})
    builder.set_io([x], [y], ["x"], ["y"])
    data = builder.finish()
    xv = RNG.standard_normal((1, 3, 3, 4)).astype(np.float32)
    ref = np.zeros((1, 7, 7, 2)) + bias
    for h in range(3):
        for v in range(3):
            ref[0, 2 * h : 2 * h + 3, 2 * v : 2 * v + 3] += np.einsum("c,oijc->ijo", xv[0, h, v], w)
    np.testing.assert_allclose(_run(tmp_path, data, {"x": xv})["y"], ref, rtol=1e-4, atol=1e-4)
    assert _opcodes(data)[fb.BuiltinOperator.TRANSPOSE_CONV][1] == 3  # a bias operand


def _version(op: str, ins: list[tuple], outs: list[tuple], options: dict | None = None) -> int:
    """The opcode version for one use of ``op``; operands as (shape, dtype[, Quant])."""
    builder = ModelBuilder()
    index = [builder.add_tensor(f"t{i}", spec[0], spec[1], quant=spec[2] if len(spec) > 2 else None)
             if spec else -1 for i, spec in enumerate(ins + outs)]
    builder.add_operator(op, index[: len(ins)], index[len(ins) :], options)
    return _model(builder.finish()).OperatorCodes(0).Version()


PER_TENSOR = Quant(np.array([0.5]), np.array([0]))
PER_CHANNEL = Quant(np.array([0.1, 0.2]), np.array([0, 0]), 0)
F4 = ((1, 4, 4, 2), "float32")
I4 = ((1, 4, 4, 2), "int8", PER_TENSOR)


@pytest.mark.parametrize(("op", "ins", "outs", "options", "want"), [
    ("CONV_2D", [F4, ((2, 1, 1, 2), "float32"), None], [F4], None, 1),
    ("CONV_2D", [F4, ((2, 1, 1, 1), "float32"), None], [F4], None, 6),  # grouped
    ("CONV_2D", [I4, ((2, 1, 1, 2), "int8", PER_CHANNEL), ((2,), "int32")], [I4], None, 3),
    ("DEPTHWISE_CONV_2D", [F4, ((1, 3, 3, 2), "float32"), None], [F4], {"dilation_h_factor": 2}, 2),
    ("DEPTHWISE_CONV_2D", [I4, ((1, 3, 3, 2), "int8", PER_CHANNEL), None], [I4], None, 3),
    ("FULLY_CONNECTED", [((1, 2), "int8", PER_TENSOR), ((2, 2), "int8", PER_CHANNEL), ((2,), "int32")],
     [((1, 2), "int8", PER_TENSOR)], None, 4),
    ("FULLY_CONNECTED", [((1, 2), "float32"), ((2, 2), "float32"), None], [((1, 2), "float32")],
     {"keep_num_dims": True}, 5),
    ("TRANSPOSE_CONV", [((4,), "int32"), F4, F4], [F4], {"fused_activation_function": "NONE"}, 1),
    ("TRANSPOSE_CONV", [((4,), "int32"), F4, F4], [F4], {"fused_activation_function": "RELU"}, 4),
    ("DEQUANTIZE", [((2, 3), "int8", PER_CHANNEL)], [((2, 3), "float32")], None, 5),
    ("DEQUANTIZE", [((2, 3), "float16")], [((2, 3), "float32")], None, 3),
    ("QUANTIZE", [F4], [I4], None, 1),
    ("MUL", [I4, I4], [((1, 4, 4, 2), "int8", Quant(np.array([0.1]), np.array([0])))], None, 3),
    ("MUL", [I4, I4], [((1, 4, 4, 2), "int8", Quant(np.array([1.0]), np.array([0])))], None, 2),
    ("ADD", [I4, I4], [I4], None, 2),
    ("AVERAGE_POOL_2D", [I4], [I4], None, 2),
    ("MEAN", [I4, ((2,), "int32")], [I4], None, 2),
    ("SOFTMAX", [F4], [F4], None, 1),
    ("TRANSPOSE", [((1, 2, 3, 4, 5), "float32"), ((5,), "int32")], [((5, 4, 3, 2, 1), "float32")], None, 4),
    ("STRIDED_SLICE", [((1, 2, 3, 4, 5), "float32"), ((5,), "int32"), ((5,), "int32"), ((5,), "int32")],
     [((1, 2, 3, 4, 5), "float32")], None, 4),
    ("RESIZE_BILINEAR", [F4, ((2,), "int32")], [F4], {"half_pixel_centers": True}, 3),
    ("RESIZE_NEAREST_NEIGHBOR", [I4, ((2,), "int32")], [I4], None, 2),
    ("PAD", [((1, 2, 3, 4, 5), "float32"), ((5, 2), "int32")], [((1, 2, 3, 4, 5), "float32")], None, 4),
    ("GATHER", [F4, ((2,), "int32")], [F4], {"axis": 1}, 1),
    ("CAST", [((2,), "float16")], [((2,), "float32")], None, 5),
    ("BATCH_MATMUL", [I4, I4], [I4], None, 2),
    ("HARD_SWISH", [F4], [F4], None, 1),
])
def test_op_versions(op: str, ins: list, outs: list, options: dict | None, want: int) -> None:
    assert _version(op, ins, outs, options) == want


def test_conv_without_bias_gets_zero_bias(tmp_path: Path) -> None:
    """LiteRT refuses an absent conv bias; the builder supplies zeros (int32, scaled, for int8)."""
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    dw = RNG.standard_normal((1, 3, 3, 8)).astype(np.float32)  # depth multiplier 2
    builder = ModelBuilder()
    x = builder.add_tensor("x", (1, 6, 6, 3), "float32")
    wt = builder.add_tensor("w", w.shape, "float32", data=w)
    dwt = builder.add_tensor("dw", dw.shape, "float32", data=dw)
    c = builder.add_tensor("c", (1, 6, 6, 4), "float32")
    y = builder.add_tensor("y", (1, 6, 6, 8), "float32")
    builder.add_operator("CONV_2D", [x, wt, -1], [c], {"padding": "SAME"})
    builder.add_operator("DEPTHWISE_CONV_2D", [c, dwt], [y], {"padding": "SAME"})
    builder.set_io([x], [y], ["x"], ["y"])
    data = builder.finish()
    xv = RNG.standard_normal((1, 6, 6, 3)).astype(np.float32)
    conv = np.pad(_conv_ref(xv, w, 0, pad=1), ((0, 0), (1, 1), (1, 1), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(conv, (3, 3), axis=(1, 2))  # n h w c i j
    ref = np.einsum("nhwcij,ijcm->nhwcm", win, dw[0].reshape(3, 3, 4, 2)).reshape(1, 6, 6, 8)
    np.testing.assert_allclose(_run(tmp_path, data, {"x": xv})["y"], ref, rtol=1e-4, atol=1e-4)
    graph = _model(data).Subgraphs(0)
    assert all(graph.Operators(k).InputsLength() == 3 and graph.Operators(k).Inputs(2) >= 0 for k in range(2))

    q = ModelBuilder()
    xq = q.add_tensor("xq", (1, 6, 6, 3), "int8", quant=Quant(np.array([0.02]), np.array([0])))
    sw = np.array([0.01, 0.02, 0.03, 0.04])
    wq = q.add_tensor("wq", w.shape, "int8", data=np.clip(np.round(w / 0.04), -127, 127),
                      quant=Quant(sw, np.zeros(4), 0))
    yq = q.add_tensor("yq", (1, 6, 6, 4), "int8", quant=Quant(np.array([0.05]), np.array([0])))
    q.add_operator("CONV_2D", [xq, wq, -1], [yq], {"padding": "SAME"})
    q.set_io([xq], [yq], ["x"], ["y"])
    graph = _model(q.finish()).Subgraphs(0)
    bias = graph.Tensors(graph.Operators(0).Inputs(2))
    assert bias.Type() == fb.TensorType.INT32
    np.testing.assert_allclose(bias.Quantization().ScaleAsNumpy(), 0.02 * sw, rtol=1e-6)


def test_tensor_info() -> None:
    builder = ModelBuilder()
    q = Quant(np.array([0.5]), np.array([3]))
    a = builder.add_tensor("a", [1, 2], np.int8, quant=q)
    c = builder.add_tensor("c", (2,), "float16", data=[1, 2])
    assert builder.tensor(a) == flatbuffer.TensorInfo("a", (1, 2), "int8", q, False)
    assert builder.tensor(c).dtype == "float16" and builder.tensor(c).constant
    assert flatbuffer.type_name(fb.TensorType.INT32) == "int32"
