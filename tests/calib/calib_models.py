"""Small ONNX models for the calibration and quantization tests (deterministic weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _w(rng: np.random.Generator, *shape: int, gain: float = 1.0) -> np.ndarray:
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    return (rng.standard_normal(shape) * gain / np.sqrt(fan_in)).astype(np.float32)


def conv_net(opset: int = 13, seed: int = 0, batch: int | str = "N", size: int = 8) -> onnx.ModelProto:
    """x[N,3,8,8] -> Conv+Relu -> MaxPool -> Conv -> Add(residual) -> Transpose -> Reshape -> Gemm -> Softmax.

    Exercises every placement rule: conv input and per-channel weight, pooling, the residual Add,
    moving a pair through Transpose/Reshape, Gemm with a constant B, and a Softmax left in float.
    """
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(_w(rng, 8, 3, 3, 3, gain=2.0), "w1"),
        numpy_helper.from_array((rng.standard_normal(8) * 0.1).astype(np.float32), "b1"),
        numpy_helper.from_array(_w(rng, 8, 8, 3, 3, gain=2.0), "w2"),
        numpy_helper.from_array(np.array([0, 32], dtype=np.int64), "shape"),
        numpy_helper.from_array(_w(rng, 32, 10), "fc_w"),
        numpy_helper.from_array(np.zeros(10, dtype=np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "p1"], ["a1"], name="add1"),
        helper.make_node("Relu", ["a1"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g1"], name="gap"),
        helper.make_node("Transpose", ["g1"], ["t1"], name="transpose1", perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["t1", "shape"], ["f1"], name="flatten1"),
        helper.make_node("Gemm", ["f1", "fc_w", "fc_b"], ["logits"], name="fc"),
        helper.make_node("Softmax", ["logits"], ["prob"], name="softmax", axis=1 if opset < 13 else -1),
    ]
    # GlobalAveragePool of 8 channels gives 8 features; widen to 32 with a Concat of 4 copies.
    nodes[7:8] = [
        helper.make_node("Transpose", ["g1"], ["t0"], name="transpose1", perm=[0, 2, 3, 1]),
        helper.make_node("Concat", ["t0", "t0", "t0", "t0"], ["t1"], name="concat1", axis=3),
    ]
    graph = helper.make_graph(
        nodes, "conv_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [batch, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="kiln-tests")
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model


def squeeze_net(opset: int = 11, seed: int = 0) -> onnx.ModelProto:
    """Ops whose signature changed at opset 13 (Squeeze/Unsqueeze axes, Split, ReduceSum, Softmax on a middle axis)."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(_w(rng, 4, 2, 1, 1), "w")]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Split", ["c"], ["s1", "s2"], name="split", axis=1, split=[1, 3]),
        helper.make_node("ReduceSum", ["s2"], ["rs"], name="rsum", axes=[1], keepdims=1),
        helper.make_node("Add", ["s1", "rs"], ["a"], name="add"),
        helper.make_node("Squeeze", ["a"], ["sq"], name="squeeze", axes=[1]),
        helper.make_node("Unsqueeze", ["sq"], ["us"], name="unsqueeze", axes=[1]),
        helper.make_node("Softmax", ["us"], ["y"], name="softmax", axis=2),
    ]
    graph = helper.make_graph(
        nodes, "squeeze_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def samples(n: int, seed: int = 1, shape: tuple[int, ...] = (3, 8, 8)) -> np.ndarray:
    """``n`` input samples ``[n, *shape]``: smooth images with a few bright spots (not Gaussian noise)."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 1, (n, *shape)).astype(np.float32)
    base[:, :, ::3, ::3] *= 3.0
    return base


def one_conv(w: np.ndarray) -> onnx.ModelProto:
    """x[N, C, 3, 3] -> a bias-free 1x1 Conv named ``conv`` with weight ``w`` [O, C, 1, 1] (opset 13)."""
    return helper.make_model(helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "m",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", w.shape[1], 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", w.shape[0], 3, 3])],
        [numpy_helper.from_array(w, "w")]), opset_imports=[helper.make_opsetid("", 13)])
