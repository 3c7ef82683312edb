"""Small ONNX models for the layout and TFLite tests: a chain of nodes built with numpy weights."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class Net:
    """``x = net.node("Conv", [x, net.w((8, 3, 3, 3))], kernel_shape=[3, 3])`` ... ``net.model(...)``."""

    def __init__(self, x_shape: tuple[int, ...], opset: int = 17, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))]
        self.count = 0

    def w(self, shape: tuple[int, ...], scale: float = 0.3) -> str:
        return self.const((self.rng.standard_normal(shape) * scale).astype(np.float32))

    def const(self, data: np.ndarray) -> str:
        self.count += 1
        name = f"c{self.count}"
        self.inits.append(numpy_helper.from_array(np.asarray(data), name))
        return name

    def input(self, name: str, shape: tuple[int, ...]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
        return name

    def node(self, op: str, inputs: list[str], outputs: int = 1, **attrs: Any) -> Any:
        self.count += 1
        outs = [f"t{self.count}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=f"{op.lower()}_{self.count}", **attrs))
        return outs[0] if outputs == 1 else outs

    def model(self, *outputs: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "net", self.inputs,
                                  [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                                  self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 8
        return model

    def feed(self, seed: int = 1) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        return {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
                for i in self.inputs}


def rel_err(expected: np.ndarray, actual: np.ndarray) -> float:
    e, a = expected.astype(np.float64), actual.astype(np.float64)
    assert e.shape == a.shape, (e.shape, a.shape)
    return float(np.abs(e - a).max() / max(float(np.abs(e).max()), 1e-30))
