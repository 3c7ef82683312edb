"""``to-nhwc``: every case runs on onnxruntime through ``kiln.to_onnx`` and matches the original, and the
Transposes left are only at the graph boundary (none at all with ``nhwc-io``)."""

from __future__ import annotations

from collections.abc import Callable

import kiln
import numpy as np
import onnx
import pytest
from kiln.passes.layout.nhwc import interior_transposes, reshape_layout
from kiln.runtime.onnxruntime import run
from nets import Net, rel_err


def _check(model: onnx.ModelProto, feed: dict[str, np.ndarray], *, nhwc_io: bool = False,
           pipeline: str = "to-nhwc,dce") -> kiln.ir.Graph:
    graph = kiln.load(model)
    if nhwc_io:
        pipeline = pipeline.replace("to-nhwc", "to-nhwc{nhwc-io=true}")
    kiln.optimize(graph, pipeline=pipeline)
    expected = run(model, feed)
    nhwc_feed = {k: (v.transpose(0, 2, 3, 1) if nhwc_io and v.ndim == 4 else v) for k, v in feed.items()}
    actual = run(kiln.to_onnx(graph), nhwc_feed)
    for name, e in expected.items():
        a = actual[name]
        if nhwc_io and a.ndim == 4:
            a = a.transpose(0, 3, 1, 2)
        assert rel_err(e, a) <= 1e-5, name
    return graph


def _ops(graph: kiln.ir.Graph) -> list[str]:
    return [n.op_id for n in graph]


def conv_block() -> Net:
    net = Net((1, 3, 12, 12))
    x = net.node("Conv", ["x", net.w((8, 3, 3, 3)), net.w((8,))], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    x = net.node("Add", [x, net.w((8, 1, 1))])  # a per-channel constant, broadcast from [C, 1, 1]
    x = net.node("Relu", [x])
    dw = net.node("Conv", [x, net.w((8, 1, 3, 3))], kernel_shape=[3, 3], group=8, strides=[2, 2], pads=[0, 0, 1, 1])
    pooled = net.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    y = net.node("Concat", [dw, pooled], axis=1)
    y = net.node("Mul", [y, net.node("Sigmoid", [net.node("GlobalAveragePool", [y])])])  # squeeze-excite gate
    return net


CASES: dict[str, Callable[[], tuple[Net, list[str]]]] = {}


def case(fn: Callable[[], tuple[Net, list[str]]]) -> Callable[[], tuple[Net, list[str]]]:
    CASES[fn.__name__] = fn
    return fn


@case
def conv_concat_se() -> tuple[Net, list[str]]:
    net = conv_block()
    return net, [net.nodes[-1].output[0]]


@case
def softmax_axis1_old_opset() -> tuple[Net, list[str]]:
    """squeezenet: Softmax(axis=1) at opset < 13 flattens [N, C, H, W] from axis 1 on."""
    net = Net((1, 3, 6, 6), opset=11)
    x = net.node("Conv", ["x", net.w((10, 3, 1, 1))], kernel_shape=[1, 1])
    x = net.node("Relu", [x])
    return net, [net.node("Softmax", [x], axis=1)]


@case
def softmax_channels_new_opset() -> tuple[Net, list[str]]:
    net = Net((1, 3, 6, 6))
    x = net.node("Conv", ["x", net.w((10, 3, 1, 1))], kernel_shape=[1, 1])
    return net, [net.node("Softmax", [x], axis=1)]


@case
def flatten_gemm() -> tuple[Net, list[str]]:
    """Flatten of [N, C, H, W] into a Gemm: the Gemm's weight rows are permuted instead of a Transpose."""
    net = Net((1, 3, 8, 8))
    x = net.node("Conv", ["x", net.w((4, 3, 3, 3))], kernel_shape=[3, 3])
    x = net.node("Flatten", [x], axis=1)
    return net, [net.node("Gemm", [x, net.w((5, 4 * 6 * 6)), net.w((5,))], transB=1)]


@case
def flatten_matmul() -> tuple[Net, list[str]]:
    """The same with a MatMul (weights [K, N]) after a Reshape to [N, C*H*W]."""
    net = Net((2, 3, 6, 6))
    x = net.node("Conv", ["x", net.w((4, 3, 3, 3))], kernel_shape=[3, 3])
    x = net.node("Reshape", [x, net.const(np.array([2, -1], np.int64))])
    return net, [net.node("MatMul", [x, net.w((4 * 4 * 4, 5))])]


@case
def reshape_squeeze_transpose() -> tuple[Net, list[str]]:
    """PP-OCR rec's neck: [N, C, 1, W] squeezed and transposed to a sequence [N, W, C]."""
    net = Net((1, 3, 4, 16))
    x = net.node("Conv", ["x", net.w((6, 3, 4, 1))], kernel_shape=[4, 1])
    x = net.node("Squeeze", [x, net.const(np.array([2], np.int64))])
    x = net.node("Transpose", [x], perm=[0, 2, 1])
    x = net.node("MatMul", [x, net.w((6, 7))])
    return net, [x]


@case
def reduce_pad_slice_split() -> tuple[Net, list[str]]:
    net = Net((1, 4, 10, 10))
    x = net.node("Conv", ["x", net.w((8, 4, 3, 3))], kernel_shape=[3, 3])
    x = net.node("Pad", [x, net.const(np.array([0, 1, 2, 0, 0, 1, 0, 3], np.int64))], mode="constant")
    x = net.node("Slice", [x, net.const(np.array([1, 1], np.int64)), net.const(np.array([8, 9], np.int64)),
                           net.const(np.array([1, 3], np.int64)), net.const(np.array([2, 1], np.int64))])
    a, b = net.node("Split", [x, net.const(np.array([1, 3], np.int64))], outputs=2, axis=1)
    r = net.node("ReduceMean", [b], axes=[2, 3], keepdims=0)  # opset 17: axes are an attribute
    s = net.node("ReduceMax", [a], axes=[1], keepdims=1)
    return net, [r, net.node("AveragePool", [s], kernel_shape=[2, 2])]


@case
def resize_convtranspose() -> tuple[Net, list[str]]:
    net = Net((1, 4, 6, 6))
    x = net.node("ConvTranspose", ["x", net.w((4, 3, 2, 2))], kernel_shape=[2, 2], strides=[2, 2])
    x = net.node("Resize", [x, "", net.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    y = net.node("Conv", [x, net.w((2, 3, 3, 3))], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    return net, [net.node("Concat", [x, y], axis=1)]


@case
def layernorm_channels_last() -> tuple[Net, list[str]]:
    """ConvNeXt: Transpose to NHWC, LayerNorm over C, Linear, Transpose back: all Transposes cancel."""
    net = Net((1, 3, 8, 8))
    x = net.node("Conv", ["x", net.w((8, 3, 4, 4))], kernel_shape=[4, 4], strides=[4, 4])
    y = net.node("Transpose", [x], perm=[0, 2, 3, 1])
    y = net.node("LayerNormalization", [y, net.w((8,)), net.w((8,))], axis=-1)
    y = net.node("MatMul", [y, net.w((8, 8))])
    y = net.node("Transpose", [y], perm=[0, 3, 1, 2])
    return net, [net.node("Add", [x, y])]


@pytest.mark.parametrize("name", sorted(CASES))
def test_case_matches_and_keeps_transposes_at_the_boundary(name: str) -> None:
    net, outputs = CASES[name]()
    graph = _check(net.model(*outputs), net.feed())
    assert interior_transposes(graph) == 0
    assert any(op.startswith("kiln.Nhwc") for op in _ops(graph))


@pytest.mark.parametrize("name", ["conv_concat_se", "resize_convtranspose", "reduce_pad_slice_split"])
def test_nhwc_io_leaves_no_transpose(name: str) -> None:
    net, outputs = CASES[name]()
    graph = _check(net.model(*outputs), net.feed(), nhwc_io=True)
    assert "onnx.Transpose" not in _ops(graph)
    assert graph.inputs[0].shape == (1, *net.feed()["x"].shape[2:], net.feed()["x"].shape[1])


def test_reshape_mixing_channels_and_space_goes_back_to_nchw() -> None:
    """A Reshape that splits channels across space needs the NCHW order: one Transpose before it, still exact."""
    net = Net((1, 3, 4, 4))
    x = net.node("Conv", ["x", net.w((8, 3, 1, 1))], kernel_shape=[1, 1])
    x = net.node("Reshape", [x, net.const(np.array([1, 2, 16, 4], np.int64))])
    graph = _check(net.model(net.node("Relu", [x])), net.feed())
    assert interior_transposes(graph) == 1


def test_reshape_layout_rules() -> None:
    nhwc = (0, 2, 3, 1)
    assert reshape_layout((1, 8, 1, 1), (1, 8), nhwc) == (0, 1)  # unit axes move freely
    assert reshape_layout((1, 6, 1, 16), (1, 6, 16), nhwc) == (0, 2, 1)  # [N, W, C] stored
    assert reshape_layout((1, 8, 4, 4), (1, 128), nhwc) is None  # C*H*W in NCHW order: not the stored order
    assert reshape_layout((2, 8, 4, 4), (2, 8, 16), nhwc) == (0, 2, 1)  # H and W merge, both stored together


def test_pass_is_idempotent_on_its_output() -> None:
    net, outputs = CASES["conv_concat_se"]()
    graph = _check(net.model(*outputs), net.feed())
    before = kiln.ir.print_ir(graph)
    kiln.optimize(graph, pipeline="to-nhwc,dce")
    assert kiln.ir.print_ir(graph) == before
