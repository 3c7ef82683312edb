"""Per-layer tests: a tiny ONNX graph per op family -> ncnn -> ncnn's runtime vs onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from ncnn_helpers import compile_and_compare, make_model, param_layers, weights
from onnx import helper

pytest.importorskip("ncnn")

X4 = {"x": (1, 4, 6, 7)}
N = helper.make_node


def conv(act: list, name: str = "y", group: int = 1, cout: int = 8, **attrs):
    """Conv 3x3 (cin 4 -> cout) with bias, then the activation nodes in ``act``."""
    nodes = [N("Conv", ["x", "w", "b"], ["c"] if act else [name], kernel_shape=[3, 3], group=group, **attrs)]
    return nodes + act, {"w": weights((cout, 4 // group, 3, 3)), "b": weights((cout,), 1)}


def _act(op: str, **attrs):
    return [N(op, ["c"], ["y"], **attrs)]


CONV_CASES = {
    "relu": (_act("Relu"), "9=1"),
    "leaky": (_act("LeakyRelu", alpha=0.2), "9=2"),
    "sigmoid": (_act("Sigmoid"), "9=4"),
    "hardswish": (_act("HardSwish"), "9=6"),
    "mish": (_act("Mish"), "9=5"),
    "tanh": (_act("Tanh"), "TanH"),
    "elu": (_act("Elu", alpha=0.5), "ELU"),
    "hardsigmoid": (_act("HardSigmoid", alpha=0.25, beta=0.4), "HardSigmoid"),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv_activation(tmp_path, case):
    act, expect = CONV_CASES[case]
    nodes, consts = conv(act, pads=[1, 0, 1, 2], strides=[1, 2])
    err, param = compile_and_compare(make_model(nodes, X4, {"y": None}, consts, opset=18), tmp_path)
    assert err < 1e-4
    text = param.read_text()
    assert expect in text
    if expect.startswith("9="):  # fused: one Convolution, no separate activation layer
        assert [f[0] for f in param_layers(param)] == ["Input", "Convolution"]


def test_conv_clip_fused(tmp_path):
    nodes, consts = conv([N("Clip", ["c", "lo", "hi"], ["y"])], strides=[2, 1], auto_pad="SAME_UPPER")
    consts.update(lo=np.float32(0.0), hi=np.float32(6.0))
    err, param = compile_and_compare(make_model(nodes, X4, {"y": None}, consts), tmp_path)
    assert err < 1e-4 and "9=3" in param.read_text()


@pytest.mark.parametrize("group,cout", [(4, 4), (2, 6), (4, 8)])
def test_depthwise_and_grouped(tmp_path, group, cout):
    nodes, consts = conv([], group=group, cout=cout, pads=[1, 1, 1, 1])
    err, param = compile_and_compare(make_model(nodes, X4, {"y": None}, consts), tmp_path)
    assert err < 1e-4 and "ConvolutionDepthWise" in param.read_text()


@pytest.mark.parametrize("group,cout,act,attrs", [
    (1, 6, None, {"pads": [2, 1], "strides": [2]}),
    (1, 6, "Relu", {"dilations": [2], "pads": [2, 2]}),
    (1, 6, "Sigmoid", {"auto_pad": "SAME_UPPER"}),
    (4, 4, "HardSwish", {"pads": [1, 1]}),
    (2, 6, None, {"auto_pad": "SAME_LOWER", "strides": [2]}),
])
def test_conv1d(tmp_path, group, cout, act, attrs):
    nodes = [N("Conv", ["x", "w", "b"], ["c"] if act else ["y"], kernel_shape=[3], group=group, **attrs)]
    if act:
        nodes.append(N(act, ["c"], ["y"]))
    consts = {"w": weights((cout, 4 // group, 3)), "b": weights((cout,), 1)}
    model = make_model(nodes, {"x": (1, 4, 11)}, {"y": None}, consts, opset=18)
    err, param = compile_and_compare(model, tmp_path)
    assert err < 1e-4
    layers = [f[0] for f in param_layers(param)]
    assert layers[1] == ("Convolution1D" if group == 1 else "ConvolutionDepthWise1D")
    if act:  # fused into the convolution's activation_type
        assert len(layers) == 2
    err16, _ = compile_and_compare(model, tmp_path / "fp16", fp16=True)
    assert err16 < 1e-2
    # ncnn has no int8 1-D convolution: under --int8 it stays a float Convolution1D, within int8's error.
    err8, param8 = compile_and_compare(model, tmp_path / "int8", int8=True)
    assert err8 < 0.1 and [f[0] for f in param_layers(param8)] == layers


@pytest.mark.parametrize("group,act,fused", [(1, None, True), (1, "Relu", True), (2, "Sigmoid", True),
                                             (1, "HardSwish", False)])
def test_conv_transpose1d(tmp_path, group, act, fused):
    nodes = [N("ConvTranspose", ["x", "w", "b"], ["c"] if act else ["y"], strides=[2], pads=[1, 0],
               output_padding=[1], group=group)]
    if act:
        nodes.append(N(act, ["c"], ["y"]))
    consts = {"w": weights((4, 6 // group, 3)), "b": weights((6,), 1)}
    err, param = compile_and_compare(make_model(nodes, {"x": (1, 4, 9)}, {"y": None}, consts, opset=18), tmp_path)
    assert err < 1e-4
    layers = [f[0] for f in param_layers(param)]
    assert layers[1] == ("Deconvolution1D" if group == 1 else "DeconvolutionDepthWise1D")
    assert len(layers) == (2 if fused else 3)  # ncnn's 1-D deconvolutions apply activation types 1-4 only


@pytest.mark.parametrize("op,attrs", [
    ("MaxPool", {"kernel_shape": [3], "strides": [2], "ceil_mode": 1}),
    ("MaxPool", {"kernel_shape": [2], "pads": [1, 0]}),
    ("AveragePool", {"kernel_shape": [3], "strides": [2], "pads": [1, 1], "count_include_pad": 0}),
    ("AveragePool", {"kernel_shape": [3], "pads": [1, 1], "count_include_pad": 1}),
    ("AveragePool", {"kernel_shape": [3], "strides": [2], "auto_pad": "SAME_UPPER"}),
    ("GlobalAveragePool", {}),
    ("GlobalMaxPool", {}),
])
def test_pool1d(tmp_path, op, attrs):
    model = make_model([N(op, ["x"], ["y"], **attrs)], {"x": (1, 4, 11)}, {"y": None}, opset=18)
    err, param = compile_and_compare(model, tmp_path)
    assert err < 1e-5 and [f[0] for f in param_layers(param)] == ["Input", "Pooling1D"]


@pytest.mark.parametrize("group,cout,act,attrs", [
    (1, 6, None, {"kernel_shape": [3, 3, 3], "pads": [1, 1, 1, 1, 1, 1]}),
    (1, 6, "Relu", {"kernel_shape": [3, 2, 3], "pads": [1, 0, 2, 0, 1, 1], "strides": [2, 1, 2]}),
    (1, 6, None, {"kernel_shape": [2, 3, 1], "dilations": [1, 2, 1]}),
    (4, 4, "Sigmoid", {"kernel_shape": [3, 3, 3], "pads": [1, 1, 1, 1, 1, 1]}),
    (1, 6, None, {"kernel_shape": [3, 3, 3], "auto_pad": "SAME_UPPER", "strides": [2, 2, 1]}),
])
def test_conv3d(tmp_path, group, cout, act, attrs):
    nodes = [N("Conv", ["x", "w", "b"], ["c"] if act else ["y"], group=group, **attrs)]
    if act:
        nodes.append(N(act, ["c"], ["y"]))
    consts = {"w": weights((cout, 4 // group, *attrs["kernel_shape"])), "b": weights((cout,), 1)}
    err, param = compile_and_compare(make_model(nodes, {"x": (1, 4, 5, 6, 7)}, {"y": None}, consts, opset=18),
                                     tmp_path)
    assert err < 1e-5
    assert [f[0] for f in param_layers(param)] == ["Input", "Convolution3D" if group == 1 else "ConvolutionDepthWise3D"]


@pytest.mark.parametrize("op,attrs", [
    ("MaxPool", {"kernel_shape": [2, 3, 2], "strides": [2, 2, 1]}),
    ("MaxPool", {"kernel_shape": [3, 3, 3], "strides": [2, 2, 2], "ceil_mode": 1}),
    ("AveragePool", {"kernel_shape": [3, 2, 3], "pads": [1, 0, 1, 1, 1, 0], "count_include_pad": 0}),
    ("AveragePool", {"kernel_shape": [3, 3, 3], "pads": [1, 1, 1, 1, 1, 1], "strides": [2, 1, 2],
                     "count_include_pad": 1}),
    ("GlobalAveragePool", {}),
    ("GlobalMaxPool", {}),
])
def test_pool3d(tmp_path, op, attrs):
    model = make_model([N(op, ["x"], ["y"], **attrs)], {"x": (1, 4, 5, 6, 7)}, {"y": None}, opset=18)
    err, param = compile_and_compare(model, tmp_path)
    assert err < 1e-5 and [f[0] for f in param_layers(param)] == ["Input", "Pooling3D"]


@pytest.mark.parametrize("group,act,attrs", [
    (1, None, {"kernel_shape": [3, 3, 3], "strides": [2, 2, 2]}),
    (1, "HardSwish", {"kernel_shape": [3, 2, 3], "strides": [2, 1, 2], "pads": [1, 0, 1, 0, 0, 1],
                      "output_padding": [1, 0, 1]}),
    (2, None, {"kernel_shape": [2, 3, 2], "strides": [1, 2, 2], "pads": [0, 1, 0, 0, 1, 1],
               "output_padding": [0, 1, 1]}),
    (1, "Mish", {"kernel_shape": [3, 3, 3], "dilations": [2, 1, 1], "strides": [1, 1, 2], "output_padding": [0, 0, 1]}),
])
def test_conv_transpose3d(tmp_path, group, act, attrs):
    nodes = [N("ConvTranspose", ["x", "w", "b"], ["c"] if act else ["y"], group=group, **attrs)]
    if act:
        nodes.append(N(act, ["c"], ["y"]))
    consts = {"w": weights((4, 6 // group, *attrs["kernel_shape"])), "b": weights((6,), 1)}
    err, param = compile_and_compare(make_model(nodes, {"x": (1, 4, 3, 4, 5)}, {"y": None}, consts, opset=18),
                                     tmp_path)
    assert err < 1e-5
    expect = "Deconvolution3D" if group == 1 else "DeconvolutionDepthWise3D"
    assert [f[0] for f in param_layers(param)] == ["Input", expect]  # activations fused (3-D takes all types)


def test_conv_transpose3d_with_output_shape_is_refused_naming_the_node(tmp_path):
    from kiln.errors import KilnError

    node = N("ConvTranspose", ["x", "w"], ["y"], kernel_shape=[1, 1, 1], strides=[2, 2, 2],
             output_shape=[4, 6, 6], name="vol")
    model = make_model([node], {"x": (1, 4, 2, 3, 3)}, {"y": None}, {"w": weights((4, 2, 1, 1, 1))})
    with pytest.raises(KilnError, match="vol.*output_shape"):
        compile_and_compare(model, tmp_path)


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose(tmp_path, group):
    node = N("ConvTranspose", ["x", "w", "b"], ["y"], strides=[2, 2], pads=[1, 0, 1, 1], group=group,
             output_padding=[1, 0])
    consts = {"w": weights((4, 6 // group, 3, 3)), "b": weights((6,), 1)}
    err, param = compile_and_compare(make_model([node], X4, {"y": None}, consts), tmp_path)
    assert err < 1e-4 and "Deconvolution" in param.read_text()


@pytest.mark.parametrize("group,act,expect", [(1, "Relu", "9=1"), (2, "Sigmoid", "9=4"), (1, "HardSwish", "9=6")])
def test_conv_transpose_carries_its_activation(tmp_path, group, act, expect):
    nodes = [N("ConvTranspose", ["x", "w", "b"], ["c"], strides=[2, 2], group=group), N(act, ["c"], ["y"])]
    consts = {"w": weights((4, 6 // group, 3, 3)), "b": weights((6,), 1)}
    err, param = compile_and_compare(make_model(nodes, X4, {"y": None}, consts, opset=18), tmp_path)
    assert err < 1e-4 and expect in param.read_text()
    assert [f[0] for f in param_layers(param)][1:] == ["Deconvolution" if group == 1 else "DeconvolutionDepthWise"]


@pytest.mark.parametrize("shape", [(1, 12), (1, 5, 12), (1, 3, 5, 12)])
def test_matmul_constant_weight(tmp_path, shape):
    nodes = [N("MatMul", ["x", "w"], ["m"]), N("Add", ["m", "b"], ["r"]), N("Relu", ["r"], ["y"])]
    consts = {"w": weights((12, 10)), "b": weights((10,), 1)}
    err, param = compile_and_compare(make_model(nodes, {"x": shape}, {"y": None}, consts), tmp_path)
    types = [f[0] for f in param_layers(param)]
    # One row: InnerProduct (with the ReLU fused); several rows: Gemm, then ReLU.
    assert err < 1e-4 and types[1:] == (["InnerProduct"] if len(shape) == 2 else ["Reshape", "Gemm", "ReLU", "Reshape"]
                                        if len(shape) == 4 else ["Gemm", "ReLU"])


def test_gemm_trans_alpha_beta(tmp_path):
    node = N("Gemm", ["x", "w", "b"], ["y"], transB=1, alpha=0.5, beta=2.0)
    consts = {"w": weights((10, 12)), "b": weights((10,), 1)}
    err, _ = compile_and_compare(make_model([node], {"x": (1, 12)}, {"y": None}, consts), tmp_path)
    assert err < 1e-4


def test_matmul_two_activations(tmp_path):
    nodes = [N("MatMul", ["a", "b"], ["y"])]
    err, param = compile_and_compare(make_model(nodes, {"a": (1, 2, 5, 6), "b": (1, 2, 6, 3)}, {"y": None}), tmp_path)
    assert err < 1e-4 and "MatMul" in param.read_text()


POOLS = {
    "max": N("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    "max_ceil": N("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    "avg_pad": N("AveragePool", ["x"], ["y"], kernel_shape=[3, 2], strides=[1, 2], pads=[1, 0, 1, 1]),
    "avg_incl": N("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1),
    "avg_ceil": N("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
    "global_avg": N("GlobalAveragePool", ["x"], ["y"]),
    "global_max": N("GlobalMaxPool", ["x"], ["y"]),
    "same": N("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
}


@pytest.mark.parametrize("case", sorted(POOLS))
def test_pooling(tmp_path, case):
    err, param = compile_and_compare(make_model([POOLS[case]], X4, {"y": None}), tmp_path)
    assert err < 1e-5 and "Pooling" in param.read_text()


BINARY = {
    "same": ({"a": (1, 3, 4, 5), "b": (1, 3, 4, 5)}, {}),
    "channel": ({"a": (1, 3, 4, 5), "b": (1, 3, 1, 1)}, {}),
    "row": ({"a": (1, 3, 4, 5), "b": (1, 1, 4, 1)}, {}),
    "both_sides": ({"a": (1, 3, 1, 5), "b": (1, 1, 4, 1)}, {}),
    "lower_rank": ({"a": (1, 3, 4, 5), "b": (1, 5)}, {}),
    "const_channel": ({"a": (1, 3, 4, 5)}, {"b": weights((3, 1, 1), 2)}),
    "const_inner": ({"a": (1, 3, 4, 5)}, {"b": weights((5,), 2)}),
    "const_scalar": ({"a": (1, 3, 4, 5)}, {"b": np.float32(1.7)}),
    "2d": ({"a": (1, 6, 5), "b": (1, 6, 1)}, {}),
}


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Max", "Min"])
@pytest.mark.parametrize("case", sorted(BINARY))
def test_binary(tmp_path, op, case):
    inputs, consts = BINARY[case]
    node = N(op, ["a", "b"], ["y"])
    model = make_model([node], inputs, {"y": None}, consts, opset=13)
    if op == "Div" and "b" in inputs:  # keep the divisor away from zero
        node.input[1] = "bp"
        model.graph.node.insert(0, N("Abs", ["b"], ["ba"]))
        model.graph.node.insert(1, N("Add", ["ba", "one"], ["bp"]))
        model.graph.initializer.append(helper.make_tensor("one", 1, [], [1.0]))
    err, _ = compile_and_compare(model, tmp_path, pipeline="remove-noops")
    assert err < 1e-5


@pytest.mark.parametrize("op,rev", [("Sub", 7), ("Div", 8)])
def test_scalar_first_operand(tmp_path, op, rev):
    nodes = [N("Abs", ["x"], ["ax"]), N("Add", ["ax", "one"], ["p"]), N(op, ["s", "p"], ["y"])]
    consts = {"one": np.float32(1.0), "s": np.float32(3.0)}
    err, param = compile_and_compare(make_model(nodes, X4, {"y": None}, consts), tmp_path)
    assert err < 1e-5 and f"0={rev} 1=1" in param.read_text()


def test_sum_eltwise(tmp_path):
    nodes = [N("Relu", ["x"], ["r"]), N("Sigmoid", ["x"], ["s"]), N("Sum", ["x", "r", "s"], ["y"])]
    err, param = compile_and_compare(make_model(nodes, X4, {"y": None}), tmp_path)
    assert err < 1e-5
    types = [f[0] for f in param_layers(param)]
    assert "Eltwise" in types and "Split" in types  # x has three readers


@pytest.mark.parametrize("axis", [1, 2, 3, -1])
def test_concat(tmp_path, axis):
    nodes = [N("Relu", ["x"], ["r"]), N("Concat", ["x", "r"], ["y"], axis=axis)]
    err, _ = compile_and_compare(make_model(nodes, X4, {"y": None}), tmp_path)
    assert err == 0.0


@pytest.mark.parametrize("axis,split", [(1, [1, 3]), (2, [2, 2, 2]), (3, [3, 4])])
def test_split(tmp_path, axis, split):
    outs = [f"y{i}" for i in range(len(split))]
    nodes = [N("Split", ["x", "s"], outs, axis=axis)]
    model = make_model(nodes, X4, {o: None for o in outs}, {"s": np.array(split, np.int64)}, opset=13)
    err, param = compile_and_compare(model, tmp_path, pipeline="remove-noops")
    assert err == 0.0 and "Slice" in param.read_text()


def test_slice_crop(tmp_path):
    consts = {"st": np.array([1, -4], np.int64), "en": np.array([3, 100], np.int64), "ax": np.array([1, 3], np.int64)}
    nodes = [N("Slice", ["x", "st", "en", "ax"], ["y"])]
    err, param = compile_and_compare(make_model(nodes, X4, {"y": None}, consts, opset=13), tmp_path,
                                     pipeline="remove-noops")
    assert err == 0.0 and "Crop" in param.read_text()


@pytest.mark.parametrize("perm", [[0, 1, 3, 2], [0, 2, 3, 1], [0, 3, 1, 2], [0, 2, 1, 3], [0, 3, 2, 1]])
def test_transpose_4d(tmp_path, perm):
    err, param = compile_and_compare(make_model([N("Transpose", ["x"], ["y"], perm=perm)], X4, {"y": None}), tmp_path)
    assert err == 0.0 and "Permute" in param.read_text()


def test_transpose_5d(tmp_path):
    node = N("Transpose", ["x"], ["y"], perm=[0, 4, 2, 1, 3])
    err, _ = compile_and_compare(make_model([node], {"x": (1, 2, 3, 4, 5)}, {"y": None}), tmp_path)
    assert err == 0.0


def test_reshape_flatten_squeeze(tmp_path):
    nodes = [N("Reshape", ["x", "s"], ["r"]), N("Relu", ["r"], ["q"]), N("Flatten", ["q"], ["f"], axis=1),
             N("Unsqueeze", ["f", "ax"], ["y"])]
    consts = {"s": np.array([1, 12, 14], np.int64), "ax": np.array([2], np.int64)}
    err, param = compile_and_compare(make_model(nodes, X4, {"y": None}, consts, opset=13), tmp_path)
    assert err == 0.0 and "Reshape" in param.read_text()


@pytest.mark.parametrize("axis,opset", [(1, 13), (2, 13), (-1, 13), (1, 11), (3, 11)])
def test_softmax(tmp_path, axis, opset):
    node = N("Softmax", ["x"], ["y"], axis=axis)
    err, _ = compile_and_compare(make_model([node], X4, {"y": None}, opset=opset), tmp_path)
    assert err < 1e-5


@pytest.mark.parametrize("shape", [(1, 5, 8), (1, 3, 5, 8)])
def test_layernorm(tmp_path, shape):
    node = N("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1, epsilon=1e-5)
    consts = {"g": weights((8,), 3), "b": weights((8,), 4)}
    err, param = compile_and_compare(make_model([node], {"x": shape}, {"y": None}, consts), tmp_path)
    assert err < 1e-4 and "LayerNorm" in param.read_text()


@pytest.mark.parametrize("op,axes,keep", [("ReduceMean", [2, 3], 1), ("ReduceSum", [1], 0), ("ReduceMax", [3], 1),
                                          ("ReduceMean", [1, 2, 3], 1), ("ReduceL2", [2], 0)])
def test_reduce(tmp_path, op, axes, keep):
    node = N(op, ["x", "ax"], ["y"], keepdims=keep)
    model = make_model([node], X4, {"y": None}, {"ax": np.array(axes, np.int64)}, opset=18)
    err, _ = compile_and_compare(model, tmp_path, pipeline="remove-noops")
    assert err < 1e-5


@pytest.mark.parametrize("mode,ctm", [("nearest", "asymmetric"), ("linear", "half_pixel"),
                                      ("linear", "align_corners"), ("nearest", "half_pixel")])
def test_resize(tmp_path, mode, ctm):
    node = N("Resize", ["x", "", "sc"], ["y"], mode=mode, coordinate_transformation_mode=ctm)
    model = make_model([node], X4, {"y": None}, {"sc": np.array([1, 1, 2, 2], np.float32)}, opset=13)
    err, param = compile_and_compare(model, tmp_path)
    assert err < 1e-5 and "Interp" in param.read_text()


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad(tmp_path, mode):
    node = N("Pad", ["x", "p", "v"], ["y"], mode=mode)
    consts = {"p": np.array([0, 1, 2, 1, 0, 0, 1, 2], np.int64), "v": np.float32(0.5)}
    err, param = compile_and_compare(make_model([node], X4, {"y": None}, consts, opset=13), tmp_path,
                                     pipeline="remove-noops")
    assert err == 0.0 and "Padding" in param.read_text()


def test_lrn_batchnorm_prelu(tmp_path):
    nodes = [N("LRN", ["x"], ["l"], size=3, alpha=1e-3, beta=0.75, bias=1.5),
             N("BatchNormalization", ["l", "s", "bb", "m", "v"], ["n"]),
             N("PRelu", ["n", "slope"], ["y"])]
    consts = {"s": weights((4,), 1), "bb": weights((4,), 2), "m": weights((4,), 3),
              "v": np.abs(weights((4,), 4)) + 0.5, "slope": weights((4, 1, 1), 5)}
    err, param = compile_and_compare(make_model(nodes, X4, {"y": None}, consts), tmp_path, pipeline="remove-noops")
    text = param.read_text()
    assert err < 1e-5 and "LRN" in text and "BatchNorm" in text and "PReLU" in text


@pytest.mark.parametrize("op", ["Abs", "Neg", "Exp", "Sqrt", "Tanh", "Sigmoid", "Floor", "Erf", "Softplus"])
def test_unary(tmp_path, op):
    nodes = [N("Abs", ["x"], ["a"]), N(op, ["a"], ["y"])] if op == "Sqrt" else [N(op, ["x"], ["y"])]
    err, _ = compile_and_compare(make_model(nodes, X4, {"y": None}), tmp_path, pipeline="remove-noops")
    assert err < 1e-5


def test_gelu_decomposed_raised(tmp_path):
    # x/2 * (1 + erf(x / sqrt 2)): target-fusions raise it to one GELU layer.
    nodes = [N("Div", ["x", "r2"], ["d"]), N("Erf", ["d"], ["e"]), N("Add", ["e", "one"], ["a"]),
             N("Mul", ["x", "a"], ["m"]), N("Mul", ["m", "half"], ["y"])]
    consts = {"r2": np.float32(np.sqrt(2)), "one": np.float32(1), "half": np.float32(0.5)}
    err, param = compile_and_compare(make_model(nodes, X4, {"y": None}, consts), tmp_path)
    assert err < 1e-5 and "GELU" in param.read_text()


def test_channel_shuffle(tmp_path):
    nodes = [N("Reshape", ["x", "s1"], ["r"]), N("Transpose", ["r"], ["t"], perm=[0, 2, 1, 3, 4]),
             N("Reshape", ["t", "s2"], ["y"])]
    consts = {"s1": np.array([1, 2, 2, 6, 7], np.int64), "s2": np.array([1, 4, 6, 7], np.int64)}
    err, param = compile_and_compare(make_model(nodes, X4, {"y": None}, consts), tmp_path)
    assert err == 0.0 and "ShuffleChannel" in param.read_text()


def test_depth_to_space(tmp_path):
    node = N("DepthToSpace", ["x"], ["y"], blocksize=2, mode="CRD")
    err, param = compile_and_compare(make_model([node], X4, {"y": None}), tmp_path)
    assert err == 0.0 and "PixelShuffle" in param.read_text()


def test_gather_constant_index(tmp_path):
    node = N("Gather", ["x", "i"], ["y"], axis=2)
    model = make_model([node], X4, {"y": None}, {"i": np.array(3, np.int64)})
    err, _ = compile_and_compare(model, tmp_path, pipeline="remove-noops")
    assert err == 0.0


def test_output_also_read(tmp_path):
    # A graph output that another layer also reads gets its own Split copy.
    nodes = [N("Relu", ["x"], ["y0"]), N("Sigmoid", ["y0"], ["y1"])]
    err, param = compile_and_compare(make_model(nodes, X4, {"y0": None, "y1": None}), tmp_path)
    assert err < 1e-6 and "Split" in param.read_text()


@pytest.mark.parametrize("op", ["Sum", "Mean"])
def test_sum_mean_broadcast(tmp_path, op):
    same = op == "Mean"
    inputs = {"a": (1, 3, 4, 5), "b": (1, 3, 4, 5) if same else (1, 3, 1, 5), "c": (1, 3, 4, 5) if same else (1, 1, 4, 1)}
    err, _ = compile_and_compare(make_model([N(op, ["a", "b", "c"], ["y"])], inputs, {"y": None}), tmp_path,
                                 pipeline="remove-noops")
    assert err < 1e-5


def test_attention_sdpa(tmp_path):
    # softmax(q kᵀ * s) v on [1, heads, seq, dim]: raised to kiln.Attention, lowered to SDPA.
    nodes = [N("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]), N("MatMul", ["q", "kt"], ["s"]),
             N("Mul", ["s", "scale"], ["ss"]), N("Softmax", ["ss"], ["p"], axis=-1), N("MatMul", ["p", "v"], ["y"])]
    inputs = {"q": (1, 3, 5, 8), "k": (1, 3, 7, 8), "v": (1, 3, 7, 4)}
    model = make_model(nodes, inputs, {"y": None}, {"scale": np.float32(0.3)}, opset=17)
    err, param = compile_and_compare(model, tmp_path)
    assert err < 1e-5 and "SDPA" in param.read_text()


def _se_block(gate: str = "Mul", extra_reader: bool = False, kernel: int = 1):
    """x -> Conv -> [GlobalAveragePool -> 1x1 Conv + Relu -> 1x1 Conv -> HardSigmoid] -> gate with the map."""
    pad = [kernel // 2] * 4
    nodes = [N("Conv", ["x", "w0"], ["f"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             N("GlobalAveragePool", ["f"], ["p"]),
             N("Conv", ["p", "w1", "b1"], ["r0"], kernel_shape=[kernel, kernel], pads=pad), N("Relu", ["r0"], ["r"]),
             N("Conv", ["r", "w2", "b2"], ["e"], kernel_shape=[1, 1]), N("HardSigmoid", ["e"], ["s"]),
             N(gate, ["f", "s"], ["y"])]
    consts = {"w0": weights((8, 4, 3, 3)), "w1": weights((2, 8, kernel, kernel), 1), "b1": weights((2,), 2),
              "w2": weights((8, 2, 1, 1), 3), "b2": weights((8,), 4)}
    outputs = {"y": None}
    if extra_reader:  # the pooled vector is also a graph output: it must keep ONNX's [C, 1, 1]
        outputs["p"] = None
    return make_model(nodes, X4, outputs, consts, opset=18)


def test_squeeze_excitation_runs_on_vectors(tmp_path):
    err, param = compile_and_compare(_se_block(), tmp_path)
    assert err < 1e-5
    layers = param_layers(param)
    assert [f[0] for f in layers].count("InnerProduct") == 2 and "Convolution" in [f[0] for f in layers]
    assert any(f[0] == "Pooling" and "4=1" in f for f in layers)  # global pooling: a 1-D [C] vector
    err16, _ = compile_and_compare(_se_block(), tmp_path / "fp16", fp16=True)
    assert err16 < 1e-2


@pytest.mark.parametrize("case", ["sub", "output", "3x3"])
def test_squeeze_excitation_near_misses_keep_convolutions(tmp_path, case):
    model = {"sub": lambda: _se_block(gate="Sub"), "output": lambda: _se_block(extra_reader=True),
             "3x3": lambda: _se_block(kernel=3)}[case]()
    err, param = compile_and_compare(model, tmp_path)
    assert err < 1e-5
    assert "InnerProduct" not in [f[0] for f in param_layers(param)]


def test_kiln_op_without_a_layer_is_written_as_its_parts(tmp_path):
    """A pipeline that ran TFLite's fuse-add-act leaves kiln.AddAct, which no ncnn layer computes: the lowering
    writes its decomposition, a BinaryOp and the activation layer."""
    nodes, consts = conv([N("Add", ["c", "x"], ["s"]), N("Sigmoid", ["s"], ["y"])], cout=4, pads=[1, 1, 1, 1])
    err, param = compile_and_compare(make_model(nodes, X4, {"y": None}, consts), tmp_path,
                                     pipeline="O2,fuse-add-act")
    assert err < 1e-4
    assert [f[0] for f in param_layers(param)][-2:] == ["BinaryOp", "Sigmoid"]
